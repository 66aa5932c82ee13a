"""The real Gemini CLI (a Node program) sees aegis-mcp's server through the LD_PRELOAD redirect
of its .gemini/settings.json, and the file on disk does not change. `gemini mcp list` starts
and health-checks every configured server, so "Connected" means our server answered. A
`gemini -p` run restarted mid-turn resumes its session (`--resume latest`) against a local
stand-in for the Gemini API, and the model's call of the injected `restart_agent` tool restarts
gemini the same way."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.fake_gemini import FakeGemini, FunctionCall
from tests.support.host import NEEDS_ROOT, aegis_bin, offline, real_cli
from tests.support.pool_e2e import TASK, spawn_and_wait
from tests.support.poolkit import cleanup_pool
from tests.support.private_net import PrivateLoopback
from tests.support.restart_mid_turn import RESTART_PROMPT, restart_beside_another, restart_mid_turn

GEMINI, pytestmark = real_cli("AEGIS_TEST_GEMINI", "the npm Gemini CLI")


@pytest.fixture
def gemini_env(tmp_path: Path, aegis_env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    project, home = tmp_path / "project", tmp_path / "home"
    (project / ".gemini").mkdir(parents=True)
    (home / ".gemini").mkdir(parents=True)
    # A trusted folder, as the user's first run would have made it: gemini starts no MCP
    # server in an untrusted one.
    (home / ".gemini" / "trustedFolders.json").write_text(
        json.dumps({str(project): "TRUST_FOLDER"}))
    env = {**aegis_env, "HOME": str(home), "GEMINI_API_KEY": "x",
           "PATH": f"{Path(GEMINI).parent}{os.pathsep}{aegis_env['PATH']}"}
    return project, env


def mcp_list(project: Path, env: dict[str, str], *opts: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(offline([aegis_bin(), *opts, "gemini", "mcp", "list"]), env=env,
                          cwd=project, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_gemini_connects_to_the_injected_server(
        gemini_env: tuple[Path, dict[str, str]]) -> None:
    project, env = gemini_env
    settings = project / ".gemini" / "settings.json"
    settings.write_text(json.dumps({"mcpServers": {"mine": {"command": "true"}}}))
    before = settings.read_text()
    out = mcp_list(project, env)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr  # gemini prints the list on stderr
    lines = {line.split(":")[0].strip("✓✗○ "): line for line in text.splitlines() if ":" in line}
    assert "Connected" in lines["aegis-mcp"] and "--mcp-server" in lines["aegis-mcp"]
    assert "mine" in lines  # the project's own servers are kept
    assert settings.read_text() == before
    plain = subprocess.run(offline([GEMINI, "mcp", "list"]), env=env, cwd=project,
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert "mine" in plain.stdout + plain.stderr
    assert "aegis-mcp" not in plain.stdout + plain.stderr  # outside the supervisor: as it is


def test_gemini_without_a_project_config_and_without_injection(
        gemini_env: tuple[Path, dict[str, str]]) -> None:
    project, env = gemini_env
    out = mcp_list(project, env)
    assert out.returncode == 0, out.stderr
    assert "aegis-mcp" in out.stderr and "Connected" in out.stderr
    assert not (project / ".gemini" / "settings.json").exists()
    off = mcp_list(project, env, "--no-inject-mcp")
    assert off.returncode == 0 and "No MCP servers configured" in off.stderr



@NEEDS_ROOT  # its own network namespace
def test_a_gemini_prompt_run_restarts_with_resume_latest_and_its_conversation(
        gemini_env: tuple[Path, dict[str, str]]) -> None:
    project, env = gemini_env
    home = Path(env["HOME"])
    # API-key auth, as the user chose it; the redirect's overlay must keep it.
    (home / ".gemini" / "settings.json").write_text(json.dumps(FakeGemini.SETTINGS))
    with PrivateLoopback() as net, FakeGemini("second gemini here", bind=net.run) as api:
        env = {**env, "GOOGLE_GEMINI_BASE_URL": api.origin}
        result = restart_mid_turn(net, api, ["gemini", "-m", "gemini-2.5-flash", "-p",
                                             "first task"], env, project)
        texts = api.texts(-1)
    assert result.returncode == 0, result.err
    assert result.status["mcp_servers_seen"], "the new gemini did not start aegis-mcp's server"
    # its own session, by the id the first start named (--session-id), not the latest
    assert result.status["agent_argv"][1:] == ["--yolo", "--resume", result.status["session_id"],
                                            "-m", "gemini-2.5-flash", "-p", RESTART_PROMPT]
    assert "second gemini here" in result.out
    # The resumed session sent the first conversation on, then the restart prompt.
    assert "first task" in texts and texts[-1] == RESTART_PROMPT
    assert json.loads((home / ".gemini" / "settings.json").read_text()) == FakeGemini.SETTINGS


@NEEDS_ROOT  # its own network namespace
def test_a_background_gemini_agent_reports_its_answer_and_session(
        gemini_env: tuple[Path, dict[str, str]]) -> None:
    project, env = gemini_env
    (Path(env["HOME"]) / ".gemini" / "settings.json").write_text(json.dumps(FakeGemini.SETTINGS))
    Path(env["AEGIS_CONFIG"]).write_text(
        f'[agents.gemini]\ncommand = ["{GEMINI}", "-m", "gemini-2.5-flash"]\n')
    with PrivateLoopback() as net, FakeGemini(bind=net.run) as api, cleanup_pool():
        api.queue_text("the gemini answer")
        done = spawn_and_wait(net, "gemini", {**env, "GOOGLE_GEMINI_BASE_URL": api.origin},
                              project)
        assert api.texts(-1)[-1] == TASK
    assert done["result"] == "the gemini answer" and done["session_id"], done


@NEEDS_ROOT  # its own network namespace
def test_the_model_restarts_gemini_through_the_injected_tool(
        gemini_env: tuple[Path, dict[str, str]]) -> None:
    project, env = gemini_env
    (Path(env["HOME"]) / ".gemini" / "settings.json").write_text(json.dumps(FakeGemini.SETTINGS))
    with PrivateLoopback() as net, FakeGemini("default reply", bind=net.run) as api:
        api.queue(FunctionCall("mcp_aegis-mcp_restart_agent",
                               {"reason": "MCP server updated",
                                "prompt": "continue after restart"}))
        api.queue_text("the restart is scheduled")
        api.queue_text("second gemini here")
        out = subprocess.run(net.enter([aegis_bin(), "gemini", "-m", "gemini-2.5-flash", "-p",
                                        "first prompt"]),
                             env={**env, "GOOGLE_GEMINI_BASE_URL": api.origin}, cwd=project,
                             capture_output=True, text=True, timeout=180,
                             stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        assert "aegis-mcp: restarting gemini (reason: MCP server updated)" in out.stderr
        assert "second gemini here" in out.stdout
        # Gemini called the tool through the redirected config and sent its answer back ...
        answer = json.dumps(api.function_responses(1))
        assert "restart_agent" in answer and "stopped and started again" in answer
        # ... and the new gemini resumed the conversation with the restart prompt.
        texts = api.texts(-1)
        assert "first prompt" in texts and texts[-1] == "continue after restart"


@NEEDS_ROOT  # its own network namespace
def test_two_gemini_supervisors_in_one_project_each_resume_their_own_session(
        gemini_env: tuple[Path, dict[str, str]]) -> None:
    # A's gemini waits at the model; B's runs a session of its own in the same project after
    # it, so B's is the project's latest (`--resume latest` would take it): A's restart must
    # resume A's, by the id its first start named.
    project, env = gemini_env
    (Path(env["HOME"]) / ".gemini" / "settings.json").write_text(json.dumps(FakeGemini.SETTINGS))
    with PrivateLoopback() as net, FakeGemini("resumed reply", bind=net.run) as api:
        result = restart_beside_another(
            net, api, ["gemini", "-m", "gemini-2.5-flash", "-p", "task of terminal A"],
            ["gemini", "-m", "gemini-2.5-flash", "-p", "task of terminal B"],
            {**env, "GOOGLE_GEMINI_BASE_URL": api.origin}, project)
        texts = api.texts(-1)
    assert result.returncode == 0, result.err
    argv = result.status["agent_argv"]
    assert argv[argv.index("--resume") + 1] == result.status["session_id"]
    assert "task of terminal A" in texts and texts[-1] == "A goes on"
    assert "task of terminal B" not in texts and "B's reply" not in texts
