"""The README's commands exist: every subcommand it shows answers --help, and every
subcommand the CLI has is in the README; its config example is one aegis-mcp accepts."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from aegis_mcp.cli import SUBCOMMANDS
from tests.support.host import aegis_bin

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SHOWN = sorted(set(re.findall(r"^aegis-mcp (?!-)([a-z]+)\b", README, re.M)) & set(SUBCOMMANDS))


def test_readme_shows_every_subcommand() -> None:
    assert sorted(SUBCOMMANDS) == SHOWN


@pytest.mark.parametrize("name", SHOWN)
def test_subcommand_help(name: str, aegis_env: dict[str, str]) -> None:
    out = subprocess.run([aegis_bin(), name, "--help"], env=aegis_env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert f"usage: aegis-mcp {name}" in out.stdout and len(out.stdout) > 200


def test_top_level_help_and_version(aegis_env: dict[str, str]) -> None:
    out = subprocess.run([aegis_bin(), "--help"], env=aegis_env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0
    for name in [*SUBCOMMANDS, "--netmon", "--watch", "--restart-grace", "--mcp-server"]:
        assert name in out.stdout
    version = subprocess.run([aegis_bin(), "--version"], capture_output=True, text=True,
                             timeout=30)
    assert version.stdout.startswith("aegis-mcp ")


def test_the_readme_config_example_loads(tmp_path: Path) -> None:
    """The TOML example in the README is a config aegis-mcp accepts, key for key."""
    from aegis_mcp.profiles.profile import load_config

    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    example = next(b for b in blocks if "[agents.myagent]" in b)
    (tmp_path / "config.toml").write_text(example)
    config = load_config(tmp_path / "config.toml")
    mine = config.profiles["myagent"]
    assert mine.command == ("my-agent", "--fixed-arg") and mine.prompt_options == ("-p",)
    assert config.profiles["claude"].command == ("/opt/claude/bin/claude",)


def test_the_pool_docs_config_example_loads(tmp_path: Path) -> None:
    from aegis_mcp.pool.settings import load_settings
    from aegis_mcp.profiles.profile import load_config

    docs = (Path(__file__).resolve().parents[1] / "docs" / "pool.md").read_text()
    example = next(b for b in re.findall(r"```toml\n(.*?)```", docs, re.S) if "[pool]" in b)
    (tmp_path / "config.toml").write_text(example)
    config = load_config(tmp_path / "config.toml")
    settings = load_settings(config.settings["pool"])
    assert settings.max_agents == 6 and settings.worktree_setup.startswith("npm ci")
    assert "myagent" in config.profiles
