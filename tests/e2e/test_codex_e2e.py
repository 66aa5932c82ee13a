"""The real Codex CLI (a Node launcher and a static binary) starts aegis-mcp's server from the
supervisor's `-c mcp_servers.aegis-mcp.*` overrides: the server says hello to its supervisor.
A `codex exec` run restarted mid-turn resumes its session (`codex exec ... resume --last`)
against a local stand-in for the Responses API, and so does one whose model calls the injected
`restart_agent` tool (through Codex's JavaScript `exec` tool, the way it reaches MCP tools).

Codex tries the network on its own (its API, then other hosts), so it runs in a network
namespace of the test's own with only loopback: nothing leaves the machine."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from aegis_mcp.supervise import control
from tests.support.fake_openai import CustomToolCall, FakeOpenAIResponses
from tests.support.host import NEEDS_ROOT, aegis_bin, offline, real_cli
from tests.support.pool_e2e import TASK, spawn_and_wait
from tests.support.poolkit import cleanup_pool
from tests.support.private_net import PrivateLoopback
from tests.support.restart_mid_turn import RESTART_PROMPT, restart_beside_another, restart_mid_turn

CODEX, needs_codex = real_cli("AEGIS_TEST_CODEX", "the npm Codex CLI")
pytestmark = [needs_codex, NEEDS_ROOT]  # root: its own network namespace


def codex_env(aegis_env: dict[str, str], home: Path, **extra: str) -> dict[str, str]:
    """The environment of a codex run: its own HOME, an API key, the npm codex on PATH."""
    return {**aegis_env, "HOME": str(home), "OPENAI_API_KEY": "x",
            "PATH": f"{Path(CODEX).parent}{os.pathsep}{aegis_env['PATH']}", **extra}


def test_codex_starts_the_injected_server(tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home, run = tmp_path / "project", tmp_path / "home", tmp_path / "run"
    project.mkdir()
    home.mkdir()
    env = codex_env(aegis_env, home, OPENAI_BASE_URL="http://127.0.0.1:9/v1",
                    AEGIS_RUNTIME_DIR=str(run))
    sup = subprocess.Popen(offline([aegis_bin(), "codex", "exec", "--skip-git-repo-check",
                                    "say hi"]), env=env, cwd=project, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        sock = control.socket_path(run, sup.pid)
        seen: list[dict] = []
        deadline = time.monotonic() + 60
        while not seen and time.monotonic() < deadline and sup.poll() is None:
            time.sleep(0.1)
            if sock.exists():
                status = control.request(sock, {"op": "status"})["status"]
                seen = status["mcp_servers_seen"]
        assert seen, "codex never started aegis-mcp's MCP server"
        assert status["injection"] == "codex -c mcp_servers override"
        assert "-c" in status["agent_argv"]
        assert "--dangerously-bypass-approvals-and-sandbox" in status["agent_argv"]
        parent = psutil.Process(seen[0]["ppid"])
        assert "codex" in parent.name()  # started by codex's own (static) binary
    finally:
        sup.terminate()
        sup.wait(30)


def test_a_codex_exec_run_restarts_with_exec_resume_and_its_conversation(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home, run = tmp_path / "project", tmp_path / "home", tmp_path / "run"
    project.mkdir()
    (home / ".codex").mkdir(parents=True)
    with PrivateLoopback() as net, FakeOpenAIResponses("second codex here", bind=net.run) as api:
        (home / ".codex" / "config.toml").write_text(api.codex_config())
        env = codex_env(aegis_env, home, AEGIS_RUNTIME_DIR=str(run))
        result = restart_mid_turn(net, api, ["codex", "exec", "--skip-git-repo-check",
                                             "first task"], env, project)
        texts = api.input_texts(-1)
    assert result.returncode == 0, result.err
    assert result.status["mcp_servers_seen"], "the new codex did not start aegis-mcp's server"
    argv = result.status["agent_argv"]
    at = argv.index("exec")
    # its own session, read off the rollout file codex held open, not the latest
    assert argv[at:at + 4] == ["exec", "--skip-git-repo-check", "resume",
                               result.status["session_id"]]
    assert argv[-1] == RESTART_PROMPT and "--dangerously-bypass-approvals-and-sandbox" in argv
    assert "second codex here" in result.out
    # The resumed session sent the first conversation on, then the restart prompt.
    assert "first task" in texts and texts[-1] == RESTART_PROMPT


def test_a_background_codex_agent_reports_its_answer_and_thread(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    (home / ".codex").mkdir(parents=True)
    Path(aegis_env["AEGIS_CONFIG"]).write_text(f'[agents.codex]\ncommand = ["{CODEX}"]\n')
    with PrivateLoopback() as net, FakeOpenAIResponses(bind=net.run) as api, cleanup_pool():
        (home / ".codex" / "config.toml").write_text(api.codex_config())
        api.queue_text("the codex answer")
        done = spawn_and_wait(net, "codex", {**aegis_env, "HOME": str(home),
                                             "OPENAI_API_KEY": "x"}, project)
        assert api.input_texts(-1)[-1] == TASK
    assert done["result"] == "the codex answer" and done["session_id"], done
    assert done["iterations"] == 1


def test_the_model_restarts_codex_through_the_injected_tool(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    (home / ".codex").mkdir(parents=True)
    call = ('const r = await tools.mcp__aegis_mcp__restart_agent('
            '{reason: "MCP server updated", prompt: "continue after restart"});\n'
            'text(JSON.stringify(r));')
    with PrivateLoopback() as net, FakeOpenAIResponses(bind=net.run) as api:
        (home / ".codex" / "config.toml").write_text(api.codex_config())
        api.queue(CustomToolCall("exec", call))
        api.queue_text("the restart is scheduled")
        api.queue_text("second codex here")
        out = subprocess.run(net.enter([aegis_bin(), "codex", "exec", "--skip-git-repo-check",
                                        "first prompt"]),
                             env=codex_env(aegis_env, home),
                             cwd=project, capture_output=True, text=True, timeout=180,
                             stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        assert "aegis-mcp: restarting codex (reason: MCP server updated)" in out.stderr
        assert "second codex here" in out.stdout
        # The tool ran in our server (reached through the -c injection) and answered codex ...
        assert "stopped and started again" in json.dumps(api.tool_outputs(1))
        # ... and the new codex resumed the session with the restart prompt.
        texts = api.input_texts(-1)
        assert "first prompt" in texts and texts[-1] == "continue after restart"


def test_codex_in_netns_mode_is_recorded_though_its_binary_is_static(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    # LD_PRELOAD cannot see codex's static binary; the namespace's capture can. The stand-in
    # listens on the host's 127.0.0.1 only, named in codex's config file, so its port is
    # forwarded into the namespace with --netns-forward. The "host" is itself a loopback-only
    # namespace of the test's: codex's own git and plugin fetches go nowhere.
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    (home / ".codex").mkdir(parents=True)
    with PrivateLoopback() as net, \
            FakeOpenAIResponses("hello from a static binary", bind=net.run) as api:
        (home / ".codex" / "config.toml").write_text(api.codex_config())
        out = subprocess.run(
            net.enter([aegis_bin(), "--netmon=netns", "--netns-forward", str(api.port), "codex",
                       "exec", "--skip-git-repo-check", "say hi"]),
            env=codex_env(aegis_env, home),
            cwd=project, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        port = api.port
    assert out.returncode == 0, out.stderr
    assert "hello from a static binary" in out.stdout
    log = next(Path(aegis_env["AEGIS_RUNTIME_DIR"]).rglob("netmon-*.jsonl"))
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    closes = [e for e in events if e["event"] == "close" and e.get("port") == port]
    assert closes and all(e["source"] == "netns" for e in closes)
    assert sum(e["sent"] for e in closes) > 1000 and sum(e["recv"] for e in closes) > 100


@pytest.mark.parametrize("by_id", [True, False], ids=["by-id", "latest"])
def test_two_codex_supervisors_in_one_project_each_resume_their_own_session(
        tmp_path: Path, aegis_env: dict[str, str], by_id: bool) -> None:
    # A's codex waits at the model; B's runs a session of its own in the same project after it,
    # so B's is the newest (`resume --last` takes it, the "latest" control shows): A's restart
    # must resume A's.
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    (home / ".codex").mkdir(parents=True)
    if not by_id:  # the control: a profile that resumes by "latest" takes B's session
        Path(aegis_env["AEGIS_CONFIG"]).write_text('[agents.codex]\nsession_file = ""\n')
    with PrivateLoopback() as net, FakeOpenAIResponses("resumed reply", bind=net.run) as api:
        (home / ".codex" / "config.toml").write_text(api.codex_config())
        result = restart_beside_another(
            net, api, ["codex", "exec", "--skip-git-repo-check", "task of terminal A"],
            ["codex", "exec", "--skip-git-repo-check", "task of terminal B"],
            codex_env(aegis_env, home), project, hang=True)
        texts = api.input_texts(-1)
    status = result.status
    assert result.returncode == 0, result.err
    if not by_id:
        assert status["session_id"] is None, status
        assert "task of terminal B" in texts, texts[-4:]
        assert "resumes its latest conversation" in result.err
        return
    argv = status["agent_argv"]
    assert argv[argv.index("resume") + 1] == status["session_id"]
    assert "task of terminal A" in texts and texts[-1] == "A goes on"
    assert "task of terminal B" not in texts and "B's reply" not in texts
