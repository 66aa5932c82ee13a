"""The README's commands exist: every subcommand it shows answers --help, and every
subcommand the CLI has is in the README; its config example is one aegis-mcp accepts and the
pool runs; its MCP tool table is the real server's, tool for tool and argument for argument."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from aegis_mcp.cli import SUBCOMMANDS
from tests.support.host import aegis_bin
from tests.support.mcp_helpers import text, with_client
from tests.support.poolkit import cleanup_pool

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


def test_the_readme_config_example_loads_and_runs_in_the_pool(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    """The TOML example in the README is a config aegis-mcp accepts, key for key, and its
    custom agent has all the pool needs: spawned through the MCP tools it runs headless, the
    task after `--` (even one that looks like an option), the pool's flags before it."""
    from aegis_mcp.profiles.profile import load_config

    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    example = next(b for b in blocks if "[agents.myagent]" in b)
    config_path = Path(aegis_env["AEGIS_CONFIG"])
    config_path.write_text(example)
    config = load_config(config_path)
    mine = config.profiles["myagent"]
    assert mine.command == ("my-agent", "--fixed-arg") and mine.prompt_options == ("-p",)
    assert config.profiles["claude"].command == ("/opt/claude/bin/claude",)

    # A stand-in for my-agent that prints the words it was started with.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "my-agent").write_text('#!/bin/sh\nfor a in "$@"; do echo "arg:$a"; done\n')
    (bin_dir / "my-agent").chmod(0o755)
    env = {**aegis_env, "PATH": f"{bin_dir}:{aegis_env['PATH']}"}
    task = "-say hello"

    async def body(client: Client) -> dict[str, Any]:
        spawned = await client.call_tool("agent_spawn", {
            "description": task, "agent_type": "myagent", "working_directory": str(tmp_path),
            "max_iterations": 3})
        assert not spawned.is_error, text(spawned)
        done = await client.call_tool("agent_await", {
            "agent_id": spawned.structured_content["agent_id"], "timeout_secs": 90})
        assert not done.is_error, text(done)
        return done.structured_content

    with cleanup_pool():
        done = with_client(env, body, timeout=120)
    assert done["state"] == "completed", done
    argv = [line[4:] for line in done["last_output"] if line.startswith("arg:")]
    assert argv[0] == "--fixed-arg" and argv[-2:] == ["--", task], argv
    flags = argv[:argv.index("--")]
    assert "--no-input" in flags and "--yes" in flags, argv
    assert flags[flags.index("--max-turns") + 1] == "3", argv


def readme_tool_table() -> dict[str, list[tuple[str, bool, str | None]]]:
    """The MCP server section's table: each tool's arguments as (name, optional, the default
    the README states or None), in the README's order."""
    table = README[README.index("| Tool | Arguments | What it does |"):].splitlines()[2:]
    tools: dict[str, list[tuple[str, bool, str | None]]] = {}
    for line in table:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        name = re.fullmatch(r"`(\w+)`", cells[0])
        assert name and len(cells) == 3, f"not a row of the tool table: {line}"
        assert name[1] not in tools, f"{name[1]} is in the table twice"
        tools[name[1]] = [(m[1], m[2] == "?", m[3]) for m in re.finditer(
            r"`(\w+)(\??)`(?: \(default ([^)]+)\))?", cells[1])]
    return tools


# The README's row for netmon_policy comes with the merge of the network policy (the branch
# that added the tool does not edit README.md): this mark goes then, and strict makes sure it
# does (the test passing with the mark on fails).
def test_the_readme_tool_table_is_the_servers(aegis_env: dict[str, str]) -> None:
    async def body(client: Client) -> Any:
        return (await client.list_tools()).tools

    served = {tool.name: tool.input_schema for tool in with_client(aegis_env, body)}
    documented = readme_tool_table()
    assert sorted(documented) == sorted(served)
    for name, schema in served.items():
        props, required = schema.get("properties", {}), set(schema.get("required", []))
        args = documented[name]
        assert sorted(a for a, _, _ in args) == sorted(props), name
        for arg, optional, default in args:
            assert optional == (arg not in required), f"{name}: {arg}"
            real = props[arg].get("default")
            # Every default that is a value is stated, and as the server has it.
            assert default == (None if real is None else json.dumps(real).strip('"')), \
                f"{name}: {arg} (default {real})"


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
