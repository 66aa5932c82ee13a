"""MCP injection into the wrapped agent only: no file on disk changes, and a restart sees the
project's config as it is now."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pexpect
import pytest

from aegis_mcp.mcp import injection
from aegis_mcp.profiles.profile import BUILTIN_PROFILES
from tests.support.host import aegis_bin
from tests.support.supervisor_helpers import FakeAgentWorld, fake_profile

READER = "import json; print(sorted(json.load(open('.mcp.json'))['mcpServers']))"
NODE_READER = ("console.log(JSON.stringify(Object.keys(JSON.parse("
               "require('fs').readFileSync('.mcp.json'))['mcpServers']).sort()))")


@pytest.fixture
def world(world: FakeAgentWorld) -> FakeAgentWorld:
    # The shared world with preload injection, in a project with a .mcp.json of the user's own.
    Path(world.env["AEGIS_CONFIG"]).write_text(fake_profile(injection="preload")
                                               + 'config_files = [".mcp.json"]\n')
    (world.root / ".mcp.json").write_text(json.dumps({"mcpServers": {"mine": {"command": "x"}}}))
    return world


def run(world: FakeAgentWorld, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([aegis_bin(), *args], env=world.env, cwd=world.root, text=True,
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("reader", [[sys.executable, "-c", READER], ["node", "-e", NODE_READER]],
                         ids=["python", "node"])
def test_generic_agent_sees_merged_overlay_and_disk_is_unchanged(
        world: FakeAgentWorld, reader: list[str]) -> None:
    before = (world.root / ".mcp.json").read_text()
    out = run(world, "--", *reader)
    assert out.returncode == 0, out.stderr
    assert "aegis-mcp" in out.stdout and "mine" in out.stdout
    assert (world.root / ".mcp.json").read_text() == before
    assert subprocess.run(reader, cwd=world.root, capture_output=True, text=True).stdout.count(
        "aegis-mcp") == 0  # outside the supervisor: the file as it is
    assert not list(Path(world.env["AEGIS_RUNTIME_DIR"]).glob("config-overlay-*"))


def test_no_inject_mcp_leaves_the_agent_alone(world: FakeAgentWorld) -> None:
    out = run(world, "--no-inject-mcp", "--", sys.executable, "-c",
              READER + "; import os; print('PRELOAD', os.environ.get('LD_PRELOAD'))")
    assert out.returncode == 0, out.stderr
    assert "aegis-mcp" not in out.stdout.split("PRELOAD")[0]
    assert "PRELOAD None" in out.stdout


def test_restart_sees_the_changed_project_config(world: FakeAgentWorld) -> None:
    child = world.spawn("fake", "--behaviour", "read-mcp-json")
    child.expect("READY")
    assert world.starts()[0]["mcp_json"] == ["aegis-mcp", "mine"]
    (world.root / ".mcp.json").write_text(json.dumps(
        {"mcpServers": {"mine": {"command": "x"}, "new-server": {"command": "y"}}}))
    child.sendline("restart new MCP server")
    child.expect("READY")
    assert world.wait_starts(2)[1]["mcp_json"] == ["aegis-mcp", "mine", "new-server"]
    child.sendline("exit 0")
    child.expect(pexpect.EOF)


def test_project_without_config_still_gets_the_server(world: FakeAgentWorld) -> None:
    (world.root / ".mcp.json").unlink()
    out = run(world, "--", sys.executable, "-c", READER)
    assert out.returncode == 0, out.stderr
    assert "['aegis-mcp']" in out.stdout
    assert not (world.root / ".mcp.json").exists()


def test_codex_overrides_are_valid_toml(tmp_path: Path) -> None:
    inj = injection.prepare(BUILTIN_PROFILES["codex"], tmp_path, 42,
                            {"AEGIS_CONTROL": "/run/x \"quoted\".sock"}, tmp_path, "/home/u",
                            None)
    pairs = [inj.args[i + 1] for i in range(0, len(inj.args), 2)]
    assert all(inj.args[i] == "-c" for i in range(0, len(inj.args), 2))
    parsed = {k: tomllib.loads(f"v = {v}")["v"] for k, v in (p.split("=", 1) for p in pairs)}
    assert parsed["mcp_servers.aegis-mcp.command"] == sys.executable
    assert parsed["mcp_servers.aegis-mcp.args"] == ["-P", "-m", "aegis_mcp", "--mcp-server"]
    assert parsed["mcp_servers.aegis-mcp.env"] == {"AEGIS_CONTROL": "/run/x \"quoted\".sock"}
    # waited for before the first turn, with a bound that holds under load
    assert parsed["mcp_servers.aegis-mcp.required"] is True
    assert parsed["mcp_servers.aegis-mcp.startup_timeout_sec"] >= 30


def overlay_of(inj: injection.Injection) -> dict[str, object]:
    return json.loads(Path(inj.args[inj.args.index("--mcp-config") + 1]).read_text())


def test_qwens_own_mcp_config_is_merged_into_ours_in_its_place(tmp_path: Path) -> None:
    # Qwen Code takes one --mcp-config (two make an array it cannot read, measured): ours
    # carries the user's servers, read as Qwen Code reads them, and stands in for their flag.
    qwen = BUILTIN_PROFILES["qwen"]
    (tmp_path / "mine.json").write_text(json.dumps({"mcpServers": {"mine": {"command": "m"}}}))
    for value in ("mine.json", str(tmp_path / "mine.json"),  # a file, from the agent's cwd
                  '{"mcpServers": {"mine": {"command": "m"}}}', '{"mine": {"command": "m"}}'):
        inj = injection.prepare(qwen, tmp_path, 42, {}, tmp_path, "/home/u", None,
                                agent_args=["-m", "x", f"--mcp-config={value}", "task"])
        servers = overlay_of(inj)["mcpServers"]
        assert isinstance(servers, dict) and list(servers) == ["mine", "aegis-mcp"], value
        assert inj.replaces == ("--mcp-config",)
    inj = injection.prepare(qwen, tmp_path, 42, {}, tmp_path, "/home/u", None,
                            agent_args=["task", "--", "--mcp-config", "mine.json"])
    assert list(overlay_of(inj)["mcpServers"]) == ["aegis-mcp"]  # after `--`: the prompt's
    assert inj.replaces == ()
    # Claude Code's takes many: the user's stays theirs
    inj = injection.prepare(BUILTIN_PROFILES["claude"], tmp_path, 42, {}, tmp_path, "/home/u",
                            None, agent_args=["--mcp-config", "mine.json", "task"])
    assert list(overlay_of(inj)["mcpServers"]) == ["aegis-mcp"] and inj.replaces == ()


@pytest.mark.parametrize("value", ["missing.json", "[1, 2]", "{not json"])
def test_a_qwen_mcp_config_it_could_not_read_either_is_one_clear_error(
        tmp_path: Path, value: str) -> None:
    from aegis_mcp.errors import AegisError

    with pytest.raises(AegisError, match=r"your --mcp-config (value|file) .*qwen would not "
                                         r"start with it") as err:
        injection.prepare(BUILTIN_PROFILES["qwen"], tmp_path, 42, {}, tmp_path, "/home/u",
                          None, agent_args=["--mcp-config", value])
    assert "\n" not in str(err.value)
