"""The real GitHub Copilot CLI (`@github/copilot`, a Node loader that runs a native build) gets
aegis-mcp's server from `--additional-mcp-config @FILE`, beside the user's own servers of
`~/.copilot/mcp-config.json`. Offline, against a local stand-in for the Chat Completions API
(its custom provider, `COPILOT_PROVIDER_BASE_URL`, with `COPILOT_OFFLINE=true`): its first turn
waits for every server and offers our tools, a `-p` run restarted mid-turn resumes exactly the
session the supervisor named (`--session-id`, then `--resume=ID`), the model's call of the
injected `restart_agent` tool restarts it the same way, the TUI comes back in its conversation
with the restart prompt (`-i`), and it runs as a background agent of the pool. Each test runs it
in a loopback-only namespace of its own: no traffic to GitHub."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from aegis_mcp.supervise import control
from tests.support.fake_chat import FakeChatCompletions, ToolCall
from tests.support.host import NEEDS_ROOT, aegis_bin, real_cli
from tests.support.paths import AGENTS
from tests.support.pool_e2e import TASK, spawn_and_wait
from tests.support.poolkit import cleanup_pool
from tests.support.private_net import PrivateLoopback
from tests.support.restart_mid_turn import RESTART_PROMPT, request_restart, restart_mid_turn
from tests.support.tui import Screen, status_once_servers_seen, type_prompt

COPILOT, needs_copilot = real_cli("AEGIS_TEST_COPILOT", "the npm GitHub Copilot CLI")
pytestmark = [needs_copilot, NEEDS_ROOT]  # its own network namespace
TOOL = "aegis-mcp-restart_agent"  # Copilot's name for an MCP tool: <server>-<tool>
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One XDG cache for the module: the loader unpacks the CLI's package there at its first
    start (1.5 s), once instead of once a test."""
    return tmp_path_factory.mktemp("copilot-cache")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The user's HOME: a server of their own in ~/.copilot/mcp-config.json, which the
    injection must keep."""
    path = tmp_path / "home"
    (path / ".copilot").mkdir(parents=True)
    their_server(path, delay=0)
    return path


def their_server(home: Path, delay: float) -> None:
    """The user's own server, `delay` s slow to answer `initialize`."""
    theirs = {"command": sys.executable, "args": [str(AGENTS / "slow_mcp_server.py"),
                                                  str(delay), "theirs"]}
    (home / ".copilot" / "mcp-config.json").write_text(json.dumps(
        {"mcpServers": {"theirs": theirs}}))


def cli_env(aegis_env: dict[str, str], home: Path, cache: Path, api: FakeChatCompletions
            ) -> dict[str, str]:
    """Its own HOME, the npm CLI on PATH, the stand-in as its model provider, no update."""
    return {**aegis_env, "HOME": str(home), "XDG_CACHE_HOME": str(cache),
            "COPILOT_OFFLINE": "true", "COPILOT_AUTO_UPDATE": "false",
            "COPILOT_PROVIDER_BASE_URL": f"{api.origin}/v1", "COPILOT_MODEL": api.MODEL,
            "PATH": f"{Path(COPILOT).parent}{os.pathsep}{aegis_env['PATH']}"}


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def user_texts(api: FakeChatCompletions, turn: int) -> list[str]:
    """The user's messages of a turn, without the date line Copilot puts before each."""
    return [t.rsplit("</current_datetime>\n\n", 1)[-1] for t in api.texts(turn)]


def test_the_first_turn_waits_for_every_server_and_offers_ours(
        project: Path, home: Path, cache: Path, aegis_env: dict[str, str]) -> None:
    their_server(home, delay=3)
    with PrivateLoopback() as net, FakeChatCompletions("hello", bind=net.run) as api:
        env = cli_env(aegis_env, home, cache, api)
        out = subprocess.run(net.enter([aegis_bin(), "copilot", "-p", "hi", "--output-format",
                                        "json"]),
                             env=env, cwd=project, capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
        tools = api.tool_names(0)
        plain = subprocess.run(net.enter([COPILOT, "-p", "hi", "--allow-all",
                                          "--output-format", "json"]),
                               env=env, cwd=project, capture_output=True, text=True,
                               timeout=120, stdin=subprocess.DEVNULL)
        plain_tools = api.tool_names(-1)
    assert out.returncode == 0, out.stderr
    loaded = [e["data"]["servers"] for e in events(out.stdout)
              if e["type"] == "session.mcp_servers_loaded"]
    status = {s["name"]: s["status"] for s in loaded[0]}
    assert status == {"aegis-mcp": "connected", "theirs": "connected"}, loaded
    # their 3 s server is up before the first turn, whose tools are ours and theirs
    assert TOOL in tools and "theirs-theirs_ping" in tools, tools
    assert plain.returncode == 0, plain.stderr  # outside aegis-mcp: as it is
    assert TOOL not in plain_tools and "theirs-theirs_ping" in plain_tools


def test_a_run_restarted_mid_turn_resumes_the_session_it_named(
        project: Path, home: Path, cache: Path, aegis_env: dict[str, str]) -> None:
    with PrivateLoopback() as net, FakeChatCompletions("second run here", bind=net.run) as api:
        env = cli_env(aegis_env, home, cache, api)
        result = restart_mid_turn(net, api, ["copilot", "-p", "first task"], env, project)
        first, last = user_texts(api, 0), user_texts(api, -1)
    assert result.returncode == 0, result.err
    assert result.status["mcp_servers_seen"], "the new copilot did not start our server"
    argv = result.status["agent_argv"]
    sid = result.status["session_id"]
    assert sid and argv[1:5] == ["--allow-all", f"--resume={sid}", "-p", RESTART_PROMPT], argv
    assert argv[5] == "--additional-mcp-config" and argv[6].startswith("@"), argv
    assert "second run here" in result.out
    assert first == ["first task"] and last == ["first task", RESTART_PROMPT], last


def test_the_model_restarts_it_through_the_injected_tool(
        project: Path, home: Path, cache: Path, aegis_env: dict[str, str]) -> None:
    with PrivateLoopback() as net, FakeChatCompletions("second run here", bind=net.run) as api:
        api.queue(ToolCall(TOOL, {"reason": "MCP server updated",
                                  "prompt": "continue after restart"}))
        out = subprocess.run(net.enter([aegis_bin(), "copilot", "-p", "first prompt"]),
                             env=cli_env(aegis_env, home, cache, api), cwd=project,
                             capture_output=True, text=True, timeout=180,
                             stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        assert "aegis-mcp: restarting copilot (reason: MCP server updated)" in out.stderr
        assert "second run here" in out.stdout
        # the new run resumed the conversation, the tool's call in it, with the restart prompt
        last = user_texts(api, -1)
        called = [m for m in api.messages(-1) if m.get("role") == "assistant"
                  and TOOL in json.dumps(m.get("tool_calls"))]
    assert last[0] == "first prompt" and last[-1] == "continue after restart", last
    assert called, "the resumed session lost the tool call"


def test_a_background_agent_reports_its_answer_session_and_turns(
        project: Path, home: Path, cache: Path, aegis_env: dict[str, str]) -> None:
    Path(aegis_env["AEGIS_CONFIG"]).write_text(f'[agents.copilot]\ncommand = ["{COPILOT}"]\n')
    with PrivateLoopback() as net, FakeChatCompletions(bind=net.run) as api, cleanup_pool():
        api.queue_text("the background answer")
        done = spawn_and_wait(net, "copilot", cli_env(aegis_env, home, cache, api), project)
        assert user_texts(api, -1) == [TASK]  # one message, never read as options
    assert done["result"] == "the background answer", done
    assert done["session_id"] and len(done["session_id"]) == 36, done
    assert done["iterations"] == 1 and done["num_turns"] == 1, done


@contextlib.contextmanager
def tui(project: Path, home: Path, cache: Path, aegis_env: dict[str, str], *script: object
        ) -> Iterator[tuple[pexpect.spawn, Screen, FakeChatCompletions, dict[str, str]]]:
    """`aegis-mcp copilot -i "first prompt"` in a pty, the stand-in's replies `script`."""
    # the user trusted this folder before (else the TUI asks first)
    (home / ".copilot" / "config.json").write_text(json.dumps(
        {"trustedFolders": [str(project)]}))
    with PrivateLoopback() as net, FakeChatCompletions("default reply", bind=net.run) as api:
        for reply in script:
            api.queue(reply)
        env = {**cli_env(aegis_env, home, cache, api), "TERM": "xterm-256color"}
        command = net.enter([aegis_bin(), "copilot", "-i", "first prompt"])
        child = pexpect.spawn(command[0], command[1:], env=env, cwd=str(project), timeout=60,
                              encoding="utf-8", codec_errors="replace", dimensions=(40, 120))
        try:
            yield child, Screen(child, rows=40, cols=120), api, env
        finally:
            child.kill(15)
            child.expect(pexpect.EOF, timeout=60)


def wait_for_message(api: FakeChatCompletions, text: str, timeout: float = 60) -> list[str]:
    """The user messages of the first turn whose last message is `text`, once it came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for turn in range(len(api.turns())):
            texts = user_texts(api, turn)
            if texts and texts[-1] == text:
                return texts
        time.sleep(0.2)
    raise AssertionError(f"no turn with {text!r} in {timeout:g} s")


def test_the_tui_comes_back_in_its_session_with_the_restart_prompt(
        project: Path, home: Path, cache: Path, aegis_env: dict[str, str]) -> None:
    # Whether the old TUI still sends the tool's answer to the model before it is stopped is
    # a race: every turn after the tool call gets the same text, so either order ends alike.
    restart = ToolCall(TOOL, {"reason": "MCP server updated", "prompt": "go on"})
    with tui(project, home, cache, aegis_env, restart) as (child, screen, api, env):
        child.expect_exact("aegis-mcp: restarting copilot (reason: MCP server updated)",
                           timeout=90)
        # all that is drawn from here on is the new TUI's: the same conversation, the prompt
        screen.screen.reset()
        screen.wait_for(r"first prompt(.|\n)*go on", timeout=90)
        assert wait_for_message(api, "go on") == ["first prompt", "go on"]
        sock = control.socket_path(Path(env["AEGIS_RUNTIME_DIR"]), child.pid)
        status = status_once_servers_seen(sock, screen=screen)
    assert status["restart_count"] == 1 and status["mcp_servers_seen"], status
    sid = status["session_id"]
    assert status["agent_argv"][1:5] == ["--allow-all", f"--resume={sid}", "-i", "go on"]
    assert user_texts(api, 0) == ["first prompt"]


def test_after_clear_a_restart_resumes_the_session_the_tui_is_in_now(
        project: Path, home: Path, cache: Path, aegis_env: dict[str, str]) -> None:
    with tui(project, home, cache, aegis_env) as (child, screen, api, env):
        screen.wait_for(r"default reply", timeout=90)
        sock = control.socket_path(Path(env["AEGIS_RUNTIME_DIR"]), child.pid)
        named = control.request(sock, {"op": "status"})["status"]["session_id"]
        type_prompt(child, screen, "/clear")
        screen.wait_for(r"Started a fresh session", timeout=30)
        type_prompt(child, screen, "a new conversation")
        assert wait_for_message(api, "a new conversation") == ["a new conversation"]
        # the supervisor learns the session at a restart request: the one the TUI holds open
        status = request_restart(child.pid, env, "go on")
        resumed = wait_for_message(api, "go on")
    sid = status["session_id"]
    assert named and sid and sid != named, (named, status)
    assert status["agent_argv"][1:3] == ["--allow-all", f"--resume={sid}"], status["agent_argv"]
    assert resumed == ["a new conversation", "go on"]
