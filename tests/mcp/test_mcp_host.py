"""The warm MCP server (mcp_host) and the agent's relay to it (mcp_relay), under a real
supervisor with the fake agent, talked to with the official SDK's client over the relay's stdio."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pexpect
import psutil
from mcp import Client, StdioServerParameters

from aegis_mcp.supervise import control
from tests.support.host import NEEDS_ROOT
from tests.support.supervisor_helpers import FakeAgentWorld, pid_alive
from tests.support.wait import wait_for

RELAY_MAX_USS = 15 * 1024 * 1024


def _entry(start: dict[str, Any]) -> dict[str, Any]:
    """The aegis-mcp server entry of the overlay this start of the fake agent was given."""
    path = start["argv"][start["argv"].index("--mcp-config") + 1]
    return json.loads(Path(path).read_text())["mcpServers"]["aegis-mcp"]


def _status(start: dict[str, Any]) -> dict[str, Any]:
    answer = control.request(start["env"]["AEGIS_CONTROL"], {"op": "status"})
    assert answer["ok"], answer
    return answer["status"]


def _client(entry: dict[str, Any], cwd: Path, calls: list[tuple[str, dict[str, Any]]],
            env: dict[str, str] | None = None) -> list[Any]:
    """Start the entry's command as the agent would, and make `calls` with the SDK's client."""
    params = StdioServerParameters(command=entry["command"], args=entry["args"],
                                   env={**os.environ, **(env or {}), **entry["env"]},
                                   cwd=str(cwd))

    async def main() -> list[Any]:
        async with Client(params) as client:
            return [await client.call_tool(name, args) for name, args in calls]

    return asyncio.run(asyncio.wait_for(main(), 60))


def _mcp_child(start: dict[str, Any]) -> int:
    return next(c["pid"] for c in start["children"] if c["name"] == "aegis-mcp")


def test_the_agents_server_is_a_small_relay_to_one_warm_server_across_restarts(
        world: FakeAgentWorld) -> None:
    child = world.spawn("fake")
    child.expect("READY")
    first = world.starts()[0]
    entry = _entry(first)
    assert entry["args"][:2] == ["-I", "-S"] and entry["args"][2].endswith("mcp/relay.py")
    relay = _mcp_child(first)
    status = wait_for(lambda: (s if (s := _status(first))["mcp_servers_seen"] else None), 20,
                      "the relay's hello")
    warm = status["warm_mcp_server"]["pid"]
    assert status["mcp_servers_seen"][0]["pid"] == relay
    assert status["mcp_servers_seen"][0]["warm"] is True
    # The relay's own memory: a few MB, not the SDK's 68.
    assert psutil.Process(relay).memory_full_info().uss < RELAY_MAX_USS
    assert psutil.Process(warm).ppid() == child.pid
    assert os.getsid(warm) == warm  # a session of its own: no signal to the agent reaches it

    child.sendline("restart new server|go on")
    child.expect_exact("restarting fake (reason: new server)")
    child.expect("READY")
    second = world.wait_starts(2)[1]
    relay2 = _mcp_child(second)
    status = wait_for(lambda: (s if (s := _status(second))["mcp_servers_seen"] else None), 20,
                      "the new relay's hello")
    assert [s["pid"] for s in status["mcp_servers_seen"]] == [relay2]
    assert status["warm_mcp_server"]["pid"] == warm  # the same warm server, not reborn
    assert not pid_alive(relay)  # the old agent's relay went with the old agent
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    wait_for(lambda: not pid_alive(warm), 10, "the warm server to end with its supervisor")
    assert not Path(status["warm_mcp_server"]["socket"]).exists()


def test_the_sdk_client_through_the_relay_gets_the_warm_servers_tools_as_its_own(
        world: FakeAgentWorld, tmp_path: Path) -> None:
    child = world.spawn("fake")
    child.expect("READY")
    first = world.starts()[0]
    elsewhere = Path(tempfile.mkdtemp(prefix="w-"))  # short: an error shows it whole
    big = "x" * 1_000_000  # one message far bigger than a pipe or socket buffer
    status, spawn, big_call = _client(_entry(first), elsewhere, [
        ("server_status", {}),
        ("agent_spawn", {"description": "t", "working_directory": "missing-dir"}),
        ("agent_spawn", {"description": big})])
    assert not status.is_error
    got = status.structured_content
    assert got["mcp_server_warm"] is True and got["supervised"] is True
    assert got["mcp_server_pid"] != got["supervisor"]["warm_mcp_server"]["pid"]
    # A relative directory is the caller's (the relay's), not the warm server's.
    assert spawn.is_error and str(elsewhere / "missing-dir") in spawn.content[0].text
    # the whole megabyte went through and was read: its one argument is judged too long
    assert big_call.is_error and "argument description should have at most" in \
        big_call.content[0].text
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    elsewhere.rmdir()


def test_a_dead_warm_server_means_a_cold_server_then_a_new_warm_one(
        world: FakeAgentWorld) -> None:
    child = world.spawn("fake")
    child.expect("READY")
    first = world.starts()[0]
    status = wait_for(lambda: (s if (s := _status(first))["mcp_servers_seen"] else None), 20,
                      "the relay's hello")
    warm = status["warm_mcp_server"]["pid"]
    os.kill(warm, signal.SIGKILL)
    wait_for(lambda: _status(first)["warm_mcp_server"] is None, 10, "the supervisor to see it")
    (result,) = _client(_entry(first), world.root, [("server_status", {})])
    assert result.structured_content["mcp_server_warm"] is False  # the relay went cold
    assert result.structured_content["supervised"] is True

    child.sendline("restart after the crash|")
    child.expect_exact("the warm MCP server ended")
    child.expect("READY")
    second = world.wait_starts(2)[1]
    status = wait_for(lambda: (s if (s := _status(second))["mcp_servers_seen"] else None), 20,
                      "the new relay's hello")
    assert status["warm_mcp_server"]["pid"] != warm
    assert status["mcp_servers_seen"][0]["warm"] is True
    child.sendline("exit 0")
    child.expect(pexpect.EOF)


def test_a_hung_warm_server_is_given_up_for_the_cold_server(tmp_path: Path) -> None:
    """A socket that accepts and never answers (a warm server stopped with SIGSTOP): the
    relay starts the cold server after its welcome bound, and the client never notices."""
    from aegis_mcp.mcp import relay as mcp_relay
    from aegis_mcp.mcp.injection import server_command

    path = tmp_path / "hung.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    cmd = server_command(path)
    started = time.monotonic()
    (result,) = _client({"command": cmd[0], "args": cmd[1:], "env": {}}, tmp_path,
                        [("server_status", {})])
    assert result.structured_content["mcp_server_warm"] is False
    assert time.monotonic() - started >= mcp_relay.WELCOME_TIMEOUT
    listener.close()


def test_a_relay_with_bad_arguments_says_its_usage(tmp_path: Path) -> None:
    from aegis_mcp.mcp.injection import server_command

    relay = server_command(tmp_path / "x.sock")[:4]
    out = subprocess.run(relay, capture_output=True, text=True, timeout=10)
    assert out.returncode == 2 and "usage: python -I -S relay.py" in out.stderr
    assert "Traceback" not in out.stderr


@NEEDS_ROOT
def test_the_warm_server_runs_as_the_agent_in_its_namespace(
        world: FakeAgentWorld) -> None:
    child = world.spawn("--netmon=netns", "fake", timeout=60)
    child.expect("READY")
    first = world.starts()[0]
    status = wait_for(lambda: (s if (s := _status(first))["mcp_servers_seen"] else None), 30,
                      "the relay's hello")
    warm = status["warm_mcp_server"]["pid"]
    # Inside the agent's network namespace: what it starts (pool agents) is monitored too.
    assert os.readlink(f"/proc/{warm}/ns/net") == os.readlink(f"/proc/{first['pid']}/ns/net")
    assert os.readlink(f"/proc/{warm}/ns/net") != os.readlink("/proc/self/ns/net")
    assert "LD_PRELOAD" not in psutil.Process(warm).environ()
    child.sendline("exit 0")
    child.expect(pexpect.EOF, timeout=60)
    assert not pid_alive(warm)


@NEEDS_ROOT
def test_a_warm_server_left_by_a_killed_supervisor_is_swept(world: FakeAgentWorld) -> None:
    child = world.spawn("fake")
    child.expect("READY")
    first = world.starts()[0]
    status = wait_for(lambda: (s if (s := _status(first))["warm_mcp_server"] else None), 20,
                      "the warm server")
    warm = status["warm_mcp_server"]["pid"]
    os.kill(child.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(warm) and not pid_alive(first["pid"]), 20,
             "the warm server and the agent to be swept")
    child.close()


def test_relay_is_the_standard_library_only() -> None:
    """-I -S: nothing but the standard library may be imported by the relay."""
    from aegis_mcp.mcp.injection import server_command

    relay = server_command(Path("/nonexistent/x.sock"))
    probe = ("import runpy, sys; sys.argv = ['r']; "
             "import importlib.util as u; "
             f"spec = u.spec_from_file_location('r', {relay[3]!r}); m = u.module_from_spec(spec); "
             "spec.loader.exec_module(m); "
             "print(sorted(n for n in sys.modules if n.startswith(('aegis', 'mcp', 'pydantic', "
             "'anyio'))))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True,
                         text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
