"""The real Qwen Code (a Node 22 program) gets aegis-mcp's server in a `--mcp-config` overlay of
its own, beside the servers of the user's settings, of the project's .mcp.json and of the
user's own `--mcp-config`, with no file on disk changed. Against a local stand-in for the Chat
Completions API (its OpenAI auth, OPENAI_BASE_URL): a one-shot run restarted mid-turn resumes
its own session by id (`--session-id` names it at the start, `--resume ID` takes it back), the
model's call of the injected `restart_agent` tool (through Qwen Code's `tool_call` bridge: it
offers MCP tools deferred) restarts the TUI, which comes back interactive in its conversation
with the restart prompt sent, and it runs as a background agent of the pool. Each runs in a
loopback-only namespace of the test's own, with Node 22 first on its PATH (scripts/test
installs it: this machine's own Node may be older than Qwen Code asks)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pexpect

from aegis_mcp.supervise import control
from tests.support.fake_chat import FakeChatCompletions, ToolCall
from tests.support.host import NEEDS_ROOT, aegis_bin, real_cli
from tests.support.pool_e2e import TASK, spawn_and_wait
from tests.support.poolkit import cleanup_pool
from tests.support.private_net import PrivateLoopback
from tests.support.restart_mid_turn import RESTART_PROMPT, restart_mid_turn
from tests.support.tui import Screen, status_once_servers_seen, type_prompt

QWEN, needs_qwen = real_cli("AEGIS_TEST_QWEN", "the npm Qwen Code CLI")
NODE22, needs_node22 = real_cli("AEGIS_TEST_NODE22", "Node.js 22 from npm")
pytestmark = [NEEDS_ROOT, needs_qwen, needs_node22]  # root: their own network namespace

SERVER = Path(__file__).parent.parent / "support" / "agents" / "slow_mcp_server.py"
RESTART_TOOL = "mcp__aegis-mcp__restart_agent"


def server(name: str) -> dict[str, Any]:
    """A stdio MCP server of the user's whose one tool is `<name>_ping`."""
    return {"command": "python3", "args": [str(SERVER), "0", name]}


def qwen_env(aegis_env: dict[str, str], home: Path, api: FakeChatCompletions) -> dict[str, str]:
    """Its own HOME, whose settings (the user's) have a server of theirs and keep it from the
    network and from model requests of its own (update check, usage statistics, memory
    extraction, follow-up suggestions); the stand-in as its OpenAI-compatible API; Node 22
    and the npm CLI first on PATH."""
    (home / ".qwen").mkdir(parents=True, exist_ok=True)
    # `$version`: as the user's first run leaves it (Qwen Code adds it to a file without one)
    (home / ".qwen" / "settings.json").write_text(json.dumps({
        "$version": 4,
        "general": {"enableAutoUpdate": False},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
        "memory": {"enableManagedAutoMemory": False, "enableManagedAutoDream": False},
        "ui": {"enableFollowupSuggestions": False, "enableUserFeedback": False},
        "mcpServers": {"theirs": server("theirs")}}))
    path = os.pathsep.join([str(Path(QWEN).parent), str(Path(NODE22).parent), aegis_env["PATH"]])
    return {**aegis_env, "HOME": str(home), "PATH": path, "OPENAI_API_KEY": "x",
            "OPENAI_BASE_URL": f"{api.origin}/v1", "OPENAI_MODEL": api.MODEL}


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    return project, home


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_the_injected_server_connects_beside_the_users_own(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home = dirs(tmp_path)
    (project / ".mcp.json").write_text(json.dumps({"mcpServers": {"mine": server("mine")}}))
    flagged = tmp_path / "flagged.json"
    flagged.write_text(json.dumps({"mcpServers": {"flagged": server("flagged")}}))
    with PrivateLoopback() as net, FakeChatCompletions("hello", bind=net.run) as api:
        env = qwen_env(aegis_env, home, api)
        files = [home / ".qwen" / "settings.json", project / ".mcp.json", flagged]
        before = digest(*files)
        # Qwen Code takes one --mcp-config: the user's own is merged into ours
        out = subprocess.run(net.enter([aegis_bin(), "qwen", "-o", "stream-json",
                                        "--mcp-config", str(flagged), "hi"]),
                             env=env, cwd=project, capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
        plain = subprocess.run(net.enter([QWEN, "-o", "stream-json", "hi"]), env=env,
                               cwd=project, capture_output=True, text=True, timeout=120,
                               stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    init = events(out.stdout)[0]
    servers = {s["name"]: s["status"] for s in init["mcp_servers"]}
    # ours, the user's settings', the project's (no approval dialog: --yolo) and their flag's
    assert servers == dict.fromkeys(["aegis-mcp", "theirs", "mine", "flagged"], "connected"), init
    assert RESTART_TOOL in init["tools"], init["tools"]
    assert digest(*files) == before  # no file on disk changed
    # Outside aegis-mcp: no server of ours, and the project's waits for its approval.
    assert plain.returncode == 0, plain.stderr
    servers = {s["name"]: s["status"] for s in events(plain.stdout)[0]["mcp_servers"]}
    assert servers == {"theirs": "connected", "mine": "disconnected"}, servers


def test_a_run_restarted_mid_turn_resumes_its_own_session(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home = dirs(tmp_path)
    with PrivateLoopback() as net, FakeChatCompletions("second run here", bind=net.run) as api:
        env = qwen_env(aegis_env, home, api)
        result = restart_mid_turn(net, api, ["qwen", "first task"], env, project)
        texts = api.typed(-1)
    assert result.returncode == 0, result.err
    assert result.status["mcp_servers_seen"], "the new qwen did not start our server"
    argv, sid = result.status["agent_argv"], result.status["session_id"]
    # the session it named at its start (--session-id), resumed by its id; the restart
    # prompt in place of the first
    assert argv[1:5] == ["--yolo", "--resume", sid, RESTART_PROMPT], argv
    assert argv[5] == "--mcp-config", argv
    assert list((home / ".qwen" / "projects").glob(f"*/chats/{sid}.jsonl"))
    assert "second run here" in result.out
    assert texts == ["first task", RESTART_PROMPT], texts


def test_the_model_restarts_the_tui_through_the_injected_tool(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home = dirs(tmp_path)
    with PrivateLoopback() as net, FakeChatCompletions("tui reply", bind=net.run) as api:
        # Qwen Code offers MCP tools deferred: the model calls ours through its bridge.
        api.queue(ToolCall("tool_call", {"name": RESTART_TOOL, "arguments": {
            "reason": "MCP server updated", "prompt": "go on"}}))
        env = {**qwen_env(aegis_env, home, api), "TERM": "xterm-256color"}
        command = net.enter([aegis_bin(), "qwen"])  # the TUI, no prompt
        child = pexpect.spawn(command[0], command[1:], env=env, cwd=str(project), timeout=60,
                              encoding="utf-8", codec_errors="replace", dimensions=(40, 120))
        screen = Screen(child, rows=40, cols=120)
        try:
            screen.wait_for(r"Type your message", timeout=90)
            type_prompt(child, screen, "first prompt", marker="*")
            # The old TUI is gone (the supervisor's notice comes after it), and all that is
            # drawn from here on is the new one's: the same conversation, resumed, and the
            # restart prompt sent in it, the TUI still up.
            child.expect_exact("aegis-mcp: restarting qwen (reason: MCP server updated)",
                               timeout=90)
            screen.screen.reset()
            screen.wait_for(r"first prompt(.|\n)*> go on(.|\n)*tui reply", timeout=90)
            sock = control.socket_path(Path(env["AEGIS_RUNTIME_DIR"]), child.pid)
            status = status_once_servers_seen(sock, screen=screen)
            assert status["restart_count"] == 1 and status["mcp_servers_seen"], status
            argv = status["agent_argv"]
            assert argv[1:5] == ["--yolo", "--resume", status["session_id"],
                                 "--prompt-interactive=go on"], argv
            assert child.isalive()  # interactive, not a one-shot run of the prompt
            texts = api.typed(-1)
            assert texts[0] == "first prompt" and texts[-1] == "go on", texts
            # the tool's answer reached the old TUI's conversation before it was stopped, or
            # the call was cut off there: either way the resumed one carries on
        finally:
            child.kill(15)
            child.expect(pexpect.EOF, timeout=60)


def test_a_background_agent_reports_its_answer_session_and_turns(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home = dirs(tmp_path)
    Path(aegis_env["AEGIS_CONFIG"]).write_text(f'[agents.qwen]\ncommand = ["{QWEN}"]\n')
    with PrivateLoopback() as net, FakeChatCompletions(bind=net.run) as api, cleanup_pool():
        api.queue_text("the background answer")
        done = spawn_and_wait(net, "qwen", qwen_env(aegis_env, home, api), project)
        assert api.typed(-1) == [TASK]  # one message, never read as options
    assert done["result"] == "the background answer", done
    assert len(done["session_id"]) == 36, done  # a UUID
    assert done["iterations"] == 1 and done["num_turns"] == 1, done
