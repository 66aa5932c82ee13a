"""After `aegis-mcp restart --prompt`, the real Codex's first turn lists the tools of the user's
MCP server that takes 3 s to answer `initialize` (exec mode and the TUI, in a real pty), a
server that fails is not waited for, and one that never answers holds the turn only for the
bound, with one line from the supervisor. The controls (`--mcp-ready-timeout 0`, codex on its
own) show what was measured on 0.169.0 and 0.171.0: without the gate the turn goes out
without the slow server's tools. Codex lists MCP tools as deferred namespaces
(`mcp__<server>`) in its first request: that is what the model sees."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from aegis_mcp.supervise import control
from tests.e2e.test_codex_e2e import codex_env, needs_codex
from tests.support.fake_openai import FakeOpenAIResponses
from tests.support.host import NEEDS_ROOT, aegis_bin
from tests.support.paths import AGENTS
from tests.support.private_net import PrivateLoopback
from tests.support.restart_mid_turn import RESTART_PROMPT, request_restart, restart_mid_turn
from tests.support.tui import Screen

pytestmark = [needs_codex, NEEDS_ROOT]  # root: its own network namespace

SERVER = AGENTS / "slow_mcp_server.py"


def codex_home(home: Path, api: FakeOpenAIResponses, project: Path | None = None,
               **servers: str) -> None:
    """~/.codex/config.toml: the stand-in as the model, and one MCP server per `name=mode`
    (a delay in seconds, `fail` or `never`, see slow_mcp_server.py)."""
    text = api.codex_config()
    if project is not None:  # the TUI asks about an untrusted folder first
        text += f'\n[projects."{project}"]\ntrust_level = "trusted"\n'
    for name, mode in servers.items():
        text += (f"\n[mcp_servers.{name}]\ncommand = {json.dumps(sys.executable)}\n"
                 f"args = {json.dumps([str(SERVER), mode, name])}\n")
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    (home / ".codex" / "config.toml").write_text(text)


def lists(api: FakeOpenAIResponses, turn: int, server: str) -> bool:
    """Whether a model request offers the tools of `server`."""
    return f"mcp__{server}" in json.dumps(api.turns()[turn].body)


@pytest.mark.parametrize("gate", [True, False], ids=["waits", "codex-alone"])
def test_the_first_turn_after_a_restart_of_codex_exec_lists_a_slow_server(
        tmp_path: Path, aegis_env: dict[str, str], gate: bool) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    bound = [] if gate else ["--mcp-ready-timeout", "0"]
    with PrivateLoopback() as net, FakeOpenAIResponses("resumed", bind=net.run) as api:
        codex_home(home, api, slow="3", broken="fail")
        result = restart_mid_turn(net, api, ["codex", *bound, "exec", "--skip-git-repo-check",
                                             "first task"], codex_env(aegis_env, home), project)
        first, resumed = api.turns()[0], api.turns()[-1]
        texts = api.input_texts(-1)
        slow_listed, broken_listed = lists(api, -1, "slow"), lists(api, -1, "broken")
    assert result.returncode == 0, result.err
    assert "first task" in texts and texts[-1] == RESTART_PROMPT  # the resumed session
    assert not broken_listed
    if not gate:  # measured: codex gives a server 1 s, this one needs 3
        assert not slow_listed
        assert "--mcp-ready-timeout" not in result.err
        return
    assert slow_listed, "the restarted codex's first turn went out without the slow server"
    # The failing server was not waited for up to the 30 s bound: the whole restart (stop,
    # start, 3 s of the slow server) took far less.
    assert resumed.time - first.time < 25
    assert "not up" not in result.err
    assert set(result.status["mcp_servers_awaited"]) == {"slow", "broken"}


def test_a_server_that_never_answers_holds_the_first_turn_for_the_bound_only(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    with PrivateLoopback() as net, FakeOpenAIResponses("went on", bind=net.run) as api:
        codex_home(home, api, silent="never", quick="0")
        started = time.time()
        out = subprocess.run(
            net.enter([aegis_bin(), "--mcp-ready-timeout", "4", "codex", "exec",
                       "--skip-git-repo-check", "say hi"]),
            env=codex_env(aegis_env, home), cwd=project, capture_output=True, text=True,
            timeout=120, stdin=subprocess.DEVNULL)
        turn = api.turns()[0]
        silent_listed, quick_listed = lists(api, 0, "silent"), lists(api, 0, "quick")
    assert out.returncode == 0, out.stderr
    assert "went on" in out.stdout
    assert quick_listed and not silent_listed
    assert turn.time - started >= 3.5  # codex waited for it ...
    assert turn.time - started < 30  # ... for the bound, not its own 30 s startup timeout
    lines = [line for line in out.stderr.splitlines() if "not up" in line]
    assert lines == ["aegis-mcp: MCP server silent not up 4s after codex started: its first "
                     "turn goes on without its tools (--mcp-ready-timeout)"], out.stderr


@pytest.mark.parametrize("gate", [True, False], ids=["waits", "codex-alone"])
def test_the_first_turn_after_a_restart_of_the_codex_tui_lists_a_slow_server(
        tmp_path: Path, aegis_env: dict[str, str], gate: bool) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    with PrivateLoopback() as net, FakeOpenAIResponses("tui reply", bind=net.run) as api:
        codex_home(home, api, project, slow="3")
        env = {**codex_env(aegis_env, home), "TERM": "xterm-256color"}
        bound = [] if gate else ["--mcp-ready-timeout", "0"]
        command = net.enter([aegis_bin(), *bound, "codex", "first prompt"])
        child = pexpect.spawn(command[0], command[1:], env=env, cwd=str(project), timeout=90,
                              encoding="utf-8", codec_errors="replace", dimensions=(40, 120))
        screen = Screen(child, rows=40, cols=120)
        try:
            screen.wait_for(r"tui reply", timeout=90)  # the first prompt's answer is drawn
            request_restart(child.pid, env, "use the slow server", reason="new MCP server")
            child.expect_exact("aegis-mcp: restarting codex (reason: new MCP server)")
            assert api.wait_for_turns(2, timeout=90)[1:], "the restarted codex never asked"
            texts = api.input_texts(-1)
            assert "first prompt" in texts and texts[-1] == "use the slow server"
            sock = control.socket_path(Path(env["AEGIS_RUNTIME_DIR"]), child.pid)
            status = control.request(sock, {"op": "status"})["status"]
            assert status["restart_count"] == 1
            assert "resume" in status["agent_argv"]
            if gate:
                assert lists(api, -1, "slow"), "the restarted TUI's first turn lacks it"
                assert status["mcp_servers_awaited"] == {"slow": "ready"}
            else:
                assert not lists(api, -1, "slow")  # measured: the TUI does not wait either
                assert status["mcp_servers_awaited"] == {}
        finally:
            child.kill(signal.SIGTERM)
            child.expect(pexpect.EOF, timeout=60)
            child.wait()
