"""The real Amp CLI (`@sourcegraph/amp`, a Bun build) gets aegis-mcp's server from `--mcp-config
FILE`, a flat map of servers merged over its settings' `amp.mcpServers`, whose servers stay.

Amp runs no model turn offline: its turns run in its service's thread workers, which nothing
local can stand in for (see tests/support/fake_amp.py). What runs for real here, with a stand-in
for the service's who-is-the-user answer (`AMP_URL`): the CLI's own MCP health check, `amp mcp
doctor`, through aegis-mcp shows our server connected beside the user's own (and with the
user's own `--mcp-config`, of which Amp reads only the last, merged into ours); the TUI started
by aegis-mcp starts our server, and `aegis-mcp restart` runs its resume form, `amp threads
continue --last`, which finds no thread in this checkout (none can be made offline) and exits
at once, so the supervisor starts it anew and our server says hello again. Each test runs it in
a loopback-only namespace of its own: no traffic to ampcode.com."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from aegis_mcp.supervise import control
from tests.support.fake_amp import FakeAmpService
from tests.support.host import NEEDS_ROOT, aegis_bin, real_cli
from tests.support.paths import AGENTS
from tests.support.private_net import PrivateLoopback
from tests.support.restart_mid_turn import request_restart

AMP, needs_amp = real_cli("AEGIS_TEST_AMP", "the npm Amp CLI")
pytestmark = [needs_amp, NEEDS_ROOT]  # its own network namespace


def server(name: str) -> dict[str, object]:
    """A stdio MCP server of the user's, in Amp's shape; its one tool is NAME_ping."""
    return {"command": sys.executable, "args": [str(AGENTS / "slow_mcp_server.py"), "0", name]}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The user's HOME: a server of theirs in their settings, which the injection must keep;
    no update checks (Amp runs npm for them)."""
    path = tmp_path / "home"
    (path / ".config" / "amp").mkdir(parents=True)
    (path / ".config" / "amp" / "settings.json").write_text(json.dumps(
        {"amp.updates.mode": "disabled", "amp.mcpServers": {"theirs": server("theirs")}}))
    return path


def cli_env(aegis_env: dict[str, str], home: Path, service: FakeAmpService) -> dict[str, str]:
    return {**aegis_env, "HOME": str(home), "AMP_URL": service.origin, "AMP_API_KEY": "offline",
            "PATH": f"{Path(AMP).parent}{os.pathsep}{aegis_env['PATH']}"}


def doctor(lines: str) -> dict[str, str]:
    """`amp mcp doctor`'s lines by server: `NAME (SOURCE): STATUS`."""
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in lines.splitlines()
            if " (" in line and "): " in line}


def test_mcp_doctor_shows_our_server_connected_beside_the_users_own(
        project: Path, home: Path, aegis_env: dict[str, str]) -> None:
    (project / "own.json").write_text(json.dumps({"mine": server("mine")}))
    with PrivateLoopback() as net, FakeAmpService(bind=net.run) as service:
        env = cli_env(aegis_env, home, service)

        def run(*argv: str) -> dict[str, str]:
            out = subprocess.run(net.enter(list(argv)), env=env, cwd=project,
                                 capture_output=True, text=True, timeout=120,
                                 stdin=subprocess.DEVNULL)
            assert out.returncode == 0, out.stdout + out.stderr
            return doctor(out.stdout)

        ours = run(aegis_bin(), "amp", "mcp", "doctor")
        # Amp reads only the last --mcp-config: the user's own is merged into ours
        with_own = run(aegis_bin(), "amp", "mcp", "doctor", "--mcp-config", "own.json")
        plain = run(AMP, "mcp", "doctor")
    assert ours["aegis-mcp"].startswith("(--mcp-config flag): connected"), ours
    assert "restart_agent" in ours["aegis-mcp"], ours  # its tools listed
    assert ours["theirs"] == "(user settings): connected (1 tools: theirs_ping)", ours
    assert with_own["aegis-mcp"].startswith("(--mcp-config flag): connected"), with_own
    assert with_own["mine"] == "(--mcp-config flag): connected (1 tools: mine_ping)", with_own
    assert "theirs" in with_own
    assert "aegis-mcp" not in plain and "theirs" in plain  # outside aegis-mcp: as it is


def test_the_tui_starts_our_server_and_a_restart_runs_its_resume_form(
        project: Path, home: Path, aegis_env: dict[str, str]) -> None:
    with PrivateLoopback() as net, FakeAmpService(bind=net.run) as service:
        env = {**cli_env(aegis_env, home, service), "TERM": "xterm-256color"}
        command = net.enter([aegis_bin(), "amp"])
        child = pexpect.spawn(command[0], command[1:], env=env, cwd=str(project), timeout=60,
                              encoding="utf-8", codec_errors="replace", dimensions=(40, 120))
        try:
            sock = control.socket_path(Path(env["AEGIS_RUNTIME_DIR"]), child.pid)
            deadline = time.monotonic() + 60
            status: dict[str, object] = {}
            while time.monotonic() < deadline:
                try:
                    child.expect(pexpect.TIMEOUT, timeout=0.5)  # reads on while it waits
                    status = control.request(sock, {"op": "status"})["status"]
                except OSError:
                    continue  # the supervisor's socket is not up yet
                if status["mcp_servers_seen"]:
                    break
            assert status.get("mcp_servers_seen"), f"amp did not start our server: {status}"
            first = status["agent_argv"]
            started = time.monotonic()
            after = request_restart(child.pid, env, "go on")
            took = time.monotonic() - started
            child.expect(pexpect.TIMEOUT, timeout=1)
            seen = child.before
        finally:
            child.kill(15)
            child.expect(pexpect.EOF, timeout=60)
        assert "getUserInfo" in service.methods()
    assert first[1:3] == ["--dangerously-allow-all", "--mcp-config"], first  # type: ignore[index]
    # its resume form ran: the thread it looks for is this checkout's last, of which there is
    # none offline; it exits at once and the supervisor starts it anew, our server with it
    assert "No previously used thread found in this checkout" in seen, seen
    assert "amp exited at once (1) when resuming" in seen, seen
    # the TUI ends on the second Ctrl-C (interrupts = 2), not at the SIGTERM after the grace
    assert "still running" not in seen, seen
    assert after["restart_count"] == 1 and after["mcp_servers_seen"], after
    assert after["agent_argv"][1:3] == ["--dangerously-allow-all", "--mcp-config"], after
    assert took < 30, took
