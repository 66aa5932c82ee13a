"""The `config-env` injection: the agent's whole config in one environment variable, in the
CLI's own schema (opencode's OPENCODE_CONFIG_CONTENT, Kilo's KILO_CONFIG_CONTENT). The user's
own value of it is kept with our server added; a value that is not a JSON object is one clear
error. A stand-in agent starts the server from its entry exactly as written and talks real MCP
to it with the SDK's client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aegis_mcp.errors import AegisError
from aegis_mcp.mcp import injection
from aegis_mcp.profiles.profile import BUILTIN_PROFILES
from tests.support.host import aegis_bin

VAR = "MY_AGENT_CONFIG"
# Starts each `local` server of its config as opencode does (command list, environment added),
# lists its tools over MCP, and prints the servers it was given and those tools.
AGENT = f"""
import asyncio, json, os, sys
from mcp import Client, StdioServerParameters
config = json.loads(os.environ[{VAR!r}])
entry = config["mcp"]["aegis-mcp"]
assert entry["type"] == "local" and entry["enabled"] is True, entry
async def main():
    params = StdioServerParameters(command=entry["command"][0], args=entry["command"][1:],
                                   env={{**os.environ, **entry["environment"]}})
    async with Client(params) as client:
        return sorted(t.name for t in (await client.list_tools()).tools)
tools = asyncio.run(asyncio.wait_for(main(), 60))
print(json.dumps({{"servers": sorted(config["mcp"]), "theme": config.get("theme"),
                  "tools": tools}}))
"""


def profile_toml(script: Path) -> str:
    return (f'[agents.envagent]\ncommand = ["{sys.executable}", "{script}"]\n'
            f'injection = "config-env"\nconfig_env = "{VAR}"\nmcp_servers_key = "mcp"\n'
            'mcp_entry = "opencode"\nprompt = "none"\n')


def run_agent(tmp_path: Path, aegis_env: dict[str, str], own: str | None
              ) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    Path(aegis_env["AEGIS_CONFIG"]).write_text(profile_toml(script))
    env = {**aegis_env, **({VAR: own} if own is not None else {})}
    return subprocess.run([aegis_bin(), "envagent"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_the_agent_gets_our_server_and_keeps_its_own_config(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    own = json.dumps({"theme": "dark", "mcp": {"theirs": {"type": "local", "command": ["x"]}}})
    out = run_agent(tmp_path, aegis_env, own)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["servers"] == ["aegis-mcp", "theirs"] and seen["theme"] == "dark"
    assert "restart_agent" in seen["tools"]


def test_without_a_value_of_the_users_the_variable_has_our_server_alone(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    out = run_agent(tmp_path, aegis_env, None)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["servers"] == ["aegis-mcp"]


@pytest.mark.parametrize("own", ["{not json", "[1, 2]", '"text"'])
def test_a_value_that_is_not_a_json_object_is_one_clear_error(
        tmp_path: Path, aegis_env: dict[str, str], own: str) -> None:
    out = run_agent(tmp_path, aegis_env, own)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert f"{VAR} is set but is not a JSON object" in out.stderr, out.stderr
    assert out.stdout == ""  # the agent never started


def test_the_value_of_the_opencode_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.setenv("OPENCODE_CONFIG_CONTENT", json.dumps({"mcp": {"aegis-mcp": "old"},
                                                             "plugin": ["p"]}))
    inj = injection.prepare(BUILTIN_PROFILES["opencode"], tmp_path, 42,
                            {"AEGIS_CONTROL": "/run/x.sock"}, tmp_path, "/home/u", None)
    assert inj.args == [] and inj.files == [] and inj.mechanism.startswith(
        "OPENCODE_CONFIG_CONTENT")
    value = json.loads(inj.env["OPENCODE_CONFIG_CONTENT"])
    assert value["plugin"] == ["p"]
    entry = value["mcp"]["aegis-mcp"]  # ours replaces an entry of that name
    assert entry["command"] == [sys.executable, "-P", "-m", "aegis_mcp", "--mcp-server"]
    assert entry["environment"] == {"AEGIS_CONTROL": "/run/x.sock"}
    assert entry["timeout"] >= 30_000  # opencode's 5 s default is too short on a busy machine
    with pytest.raises(AegisError, match="OPENCODE_CONFIG_CONTENT is set but"):
        injection.config_env_value("OPENCODE_CONFIG_CONTENT", "null", "mcp", entry)


@pytest.mark.parametrize("own", [None, '{"theme": "dark"}'], ids=["none", "theirs"])
def test_agents_started_from_inside_get_the_users_value_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own: str | None) -> None:
    # A background opencode the agent spawns must not start a server that speaks to this
    # session's supervisor; a supervisor started inside adds its own server to the user's value.
    from aegis_mcp.agentenv import for_background_agent

    var = "OPENCODE_CONFIG_CONTENT"
    if own is None:
        monkeypatch.delenv(var, raising=False)
    else:
        monkeypatch.setenv(var, own)
    inj = injection.prepare(BUILTIN_PROFILES["opencode"], tmp_path, 42,
                            {"AEGIS_CONTROL": "/run/outer.sock"}, tmp_path, "/home/u", None)
    agent_env = {"PATH": "/bin", **({var: own} if own else {}), **inj.env}
    assert "/run/outer.sock" in agent_env[var]
    child = for_background_agent("a1", agent_env)
    assert child.get(var) == own and "AEGIS_CONFIG_ENV" not in child
    for key, value in agent_env.items():
        monkeypatch.setenv(key, value)
    inner = injection.prepare(BUILTIN_PROFILES["opencode"], tmp_path, 43,
                              {"AEGIS_CONTROL": "/run/inner.sock"}, tmp_path, "/home/u", None)
    value = json.loads(inner.env[var])
    assert "outer" not in inner.env[var] and value.get("theme") == (
        "dark" if own else None)
    assert inner.env.get("AEGIS_CONFIG_ENV_ORIGINAL") == own
