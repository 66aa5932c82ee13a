"""The real Aider (from PyPI) under the supervisor, in a pty, against the local stand-in for the
model API (litellm's Anthropic provider honours ANTHROPIC_API_BASE).

Aider has no MCP, so its restarts come from `aegis-mcp restart`; it resumes with
`--restore-chat-history` and stops on its second Ctrl-C. As a background agent of the pool it
runs headless (`--message`). It fetches a price list and checks
for updates on its own, so it and the stand-in share a network namespace of the test's own
with only loopback: nothing leaves the machine."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pexpect

from aegis_mcp.supervise import control
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.host import NEEDS_ROOT, aegis_bin, real_cli
from tests.support.pool_e2e import ONE_WORD, spawn_and_wait
from tests.support.poolkit import cleanup_pool
from tests.support.private_net import PrivateLoopback
from tests.support.tui import Screen

AIDER, needs_aider = real_cli("AEGIS_TEST_AIDER", "Aider from PyPI")
pytestmark = [needs_aider, NEEDS_ROOT]  # root: its own network namespace
PROMPT = r"(?m)^>\s*$"  # Aider's empty input line


def prompt_after(text: str) -> str:
    """Aider's empty input line below `text`: earlier empty ones stay on the screen."""
    return rf"(?ms){re.escape(text)}.*^>\s*$"


def test_restart_restores_aiders_chat_history(tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    with PrivateLoopback() as net, FakeAnthropic("default reply", bind=net.run) as api:
        api.queue_text("first answer from the model")
        api.queue_text("second answer from the model")
        env = {**aegis_env, "HOME": str(home), "TERM": "xterm-256color",
               "ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_API_BASE": api.url,
               "PATH": f"{Path(AIDER).parent}{os.pathsep}{aegis_env['PATH']}"}
        argv = net.enter([aegis_bin(), "aider", "--model", "anthropic/claude-sonnet-4-5",
                          "--no-git", "--no-check-update", "--analytics-disable",
                          "--no-show-model-warnings"])
        child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=str(project), timeout=60,
                              encoding="utf-8", codec_errors="replace", dimensions=(50, 120))
        screen = Screen(child, rows=50, cols=120)
        try:
            screen.wait_for(PROMPT)
            child.send("first prompt\r")
            screen.wait_for(prompt_after("first answer from the model"))

            restart = subprocess.run(
                [aegis_bin(), "restart", "--pid", str(child.pid), "--reason", "config changed",
                 "--wait", "90", "--json"], env=env, capture_output=True, text=True,
                timeout=120)
            assert restart.returncode == 0, restart.stderr
            new = json.loads(restart.stdout)["restarted"]
            assert "--restore-chat-history" in new["agent_argv"]
            # a conversation record of this terminal's own, not the directory's shared one
            history = Path(new["history_file"])
            argv = new["agent_argv"]
            assert argv[argv.index("--chat-history-file") + 1] == str(history)
            assert history.parent == Path(env["AEGIS_RUNTIME_DIR"])
            assert "--yes-always" in new["agent_argv"]
            assert new["agent_argv"][-6:-2] == ["--no-git", "--no-check-update",
                                                "--analytics-disable",
                                                "--no-show-model-warnings"]
            screen.wait_for(r"aegis-mcp: restarting aider \(reason: config changed\)")
            screen.wait_for(prompt_after("Restored previous conversation history"))
            # Two SIGINTs ended it the way Ctrl-C twice does: no SIGTERM was needed.
            assert "still running" not in screen.text()

            child.send("second prompt\r")
            screen.wait_for("second answer from the model")
            turns = json.dumps(api.message_requests()[-1].body["messages"])
            assert "first prompt" in turns and "first answer from the model" in turns
            assert "second prompt" in turns
            sock = control.socket_path(Path(env["AEGIS_RUNTIME_DIR"]), child.pid)
            assert control.request(sock, {"op": "status"})["status"]["restart_count"] == 1
            screen.wait_for(prompt_after("second answer from the model"))
            child.send("/exit\r")
            child.expect(pexpect.EOF, timeout=30)
        finally:
            if child.isalive():
                child.kill(9)
            child.close()
        assert child.exitstatus == 0, screen.dump()  # Aider's own exit status, forwarded
    assert "first prompt" in history.read_text() and "second prompt" in history.read_text()
    assert not (project / ".aider.chat.history.md").exists()


def test_a_background_aider_agent_completes_with_its_answer(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    # The user's own Aider settings (model, no git) come from Aider's config file, as usual.
    (home / ".aider.conf.yml").write_text(
        "model: anthropic/claude-sonnet-4-5\ngit: false\ncheck-update: false\n"
        "analytics-disable: true\nshow-model-warnings: false\n")
    Path(aegis_env["AEGIS_CONFIG"]).write_text(f'[agents.aider]\ncommand = ["{AIDER}"]\n')
    with PrivateLoopback() as net, FakeAnthropic("default reply", bind=net.run) as api, \
            cleanup_pool():
        api.queue_text("The notes say hello.")
        done = spawn_and_wait(net, "aider", {**aegis_env, "HOME": str(home),
                                             "ANTHROPIC_API_KEY": "sk-ant-test",
                                             "ANTHROPIC_API_BASE": api.url}, work,
                              task=ONE_WORD)
        assert "The notes say hello." in done["last_output"]
        # The answer alone, from the agent's own chat history (not the project's).
        assert done["result"] == "The notes say hello."
        assert done["chat_history_path"] and Path(done["chat_history_path"]).is_file()
        assert not (work / ".aider.chat.history.md").exists()
        user = [m for m in api.message_requests()[-1].body["messages"] if m["role"] == "user"]
        content = user[-1]["content"]
        sent = content if isinstance(content, str) else content[0]["text"]
        assert sent.split("\n")[0] == ONE_WORD  # the task, then Aider's own instructions
