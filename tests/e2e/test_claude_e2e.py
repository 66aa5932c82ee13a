"""The real Claude Code CLI under the supervisor, offline, against a local stand-in for the
model API. As root (CI), the supervisor is started the way sudo starts it and drops to a
throwaway user: Claude Code refuses --dangerously-skip-permissions as root. Everything runs in
a loopback-only network namespace of the test's own: nothing claude tries by itself leaves."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import pexpect

from aegis_mcp.supervise import control
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.host import NEEDS_ROOT, aegis_bin, real_cli
from tests.support.private_net import PrivateLoopback
from tests.support.restart_mid_turn import RESTART_PROMPT, restart_mid_turn
from tests.support.tui import Screen, quit_tui, status_once_servers_seen, type_prompt

CLAUDE, needs_claude = real_cli("AEGIS_TEST_CLAUDE", "the npm Claude Code CLI")
pytestmark = [needs_claude, NEEDS_ROOT]  # root: runs claude as a throwaway user


def sudo_env(api: FakeAnthropic, user: pwd.struct_passwd, cwd: Path,
             aegis_env: dict[str, str]) -> dict[str, str]:
    """The supervisor's environment as `sudo aegis-mcp claude` gives it, claude on PATH and
    pointed at the stand-in."""
    return {**aegis_env, **api.claude_env(home=user.pw_dir), "SUDO_UID": str(user.pw_uid),
            "SUDO_GID": str(user.pw_gid), "SUDO_USER": user.pw_name,
            "PATH": f"{Path(CLAUDE).parent}{os.pathsep}{aegis_env['PATH']}",
            # reachable by the user: the supervisor creates and chowns it
            "AEGIS_RUNTIME_DIR": str(cwd / ".aegis-run")}


def run_claude(net: PrivateLoopback, api: FakeAnthropic, user: pwd.struct_passwd, cwd: Path,
               aegis_env: dict[str, str], *args: str, timeout: float = 120
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(net.enter([aegis_bin(), "claude", *args]),
                          env=sudo_env(api, user, cwd, aegis_env), cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def offered_tools(request_body: dict) -> str:
    """Claude Code 2.1 offers MCP tools either in `tools` or, deferred, by name in a system
    reminder (loaded through its ToolSearch tool): both are in the request body."""
    return json.dumps(request_body)


def test_print_mode_runs_with_injected_server_and_forwards_exit_status(
        throwaway_user: pwd.struct_passwd, project: Path, aegis_env: dict[str, str],
        net: PrivateLoopback) -> None:
    with FakeAnthropic(default_text="hello from the stand-in", bind=net.run) as api:
        out = run_claude(net, api, throwaway_user, project, aegis_env, "-p", "say hi")
        assert out.returncode == 0, out.stderr
        assert "hello from the stand-in" in out.stdout
        first = api.message_requests()[0].body
        assert "mcp__aegis-mcp__restart_claude" in offered_tools(first)
        assert "mcp__aegis-mcp__server_status" in offered_tools(first)
        bad = run_claude(net, api, throwaway_user, project, aegis_env, "--no-such-flag-xyz")
        assert bad.returncode not in (0, None) and "Traceback" not in bad.stderr
    # The overlay lived in the private runtime dir and is gone; no file in the project changed.
    assert not list((project / ".aegis-run").glob("mcp-overlay-*"))
    assert not (project / ".mcp.json").exists()


def test_restart_tool_restarts_claude_with_continue_and_prompt(
        throwaway_user: pwd.struct_passwd, project: Path, aegis_env: dict[str, str],
        net: PrivateLoopback) -> None:
    with FakeAnthropic(default_text="default reply", bind=net.run) as api:
        api.queue_tool_use("mcp__aegis-mcp__restart_claude",
                           {"reason": "MCP server updated", "prompt": "continue after restart"})
        api.queue_text("the restart is scheduled")
        api.queue_text("second claude here")
        out = run_claude(net, api, throwaway_user, project, aegis_env, "-p", "first prompt")
        assert out.returncode == 0, out.stderr
        assert "aegis-mcp: restarting claude (reason: MCP server updated)" in out.stderr
        assert "second claude here" in out.stdout
        requests = [r.body for r in api.message_requests()]
        # The tool's answer reached the old claude, which sent it back to the model.
        results = [b for b in json.dumps(requests[1]["messages"]).split('"tool_result"')[1:]]
        assert results and "stopped and started again" in json.dumps(requests[1]["messages"])
        # The new claude resumed its own conversation (--resume <id>) and got the restart
        # prompt.
        last = json.dumps(requests[-1]["messages"])
        assert "first prompt" in last and "continue after restart" in last


def trust_project(user: pwd.struct_passwd, project: Path, api_key: str) -> None:
    """What a user's first interactive run would have answered: onboarding done, the API key
    and the project trusted, the bypass-permissions warning accepted."""
    home = Path(user.pw_dir)
    (home / ".claude").mkdir(exist_ok=True)
    (home / ".claude.json").write_text(json.dumps({
        "hasCompletedOnboarding": True, "theme": "dark",
        "customApiKeyResponses": {"approved": [api_key[-20:]], "rejected": []},
        "projects": {str(project): {"hasTrustDialogAccepted": True, "allowedTools": []}}}))
    (home / ".claude" / "settings.json").write_text(
        json.dumps({"skipDangerousModePermissionPrompt": True}))
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(home)], check=True)


TUI_KEY = "sk-ant-test-0123456789abcdefghijklmnop"


def spawn_tui(api: FakeAnthropic, user: pwd.struct_passwd, project: Path,
              aegis_env: dict[str, str], net: PrivateLoopback, timeout: float = 60
              ) -> tuple[pexpect.spawn, Screen, dict[str, str]]:
    """`aegis-mcp claude` (the TUI, under sudo) in a 40x120 pty, with the environment it got."""
    env = {**sudo_env(api, user, project, aegis_env), "ANTHROPIC_API_KEY": TUI_KEY,
           "TERM": "xterm-256color"}
    command = net.enter([aegis_bin(), "claude"])
    child = pexpect.spawn(command[0], command[1:], env=env, cwd=str(project), timeout=timeout,
                          encoding="utf-8", codec_errors="replace", dimensions=(40, 120))
    return child, Screen(child, rows=40, cols=120), env


def test_interactive_tui_restarts_in_the_same_terminal(
        throwaway_user: pwd.struct_passwd, project: Path, aegis_env: dict[str, str],
        net: PrivateLoopback) -> None:
    trust_project(throwaway_user, project, TUI_KEY)
    with FakeAnthropic(default_text="default reply", bind=net.run) as api:
        api.queue_tool_use("mcp__aegis-mcp__restart_claude",
                           {"reason": "MCP server updated", "prompt": "continue after restart"})
        api.queue_text("restart scheduled")
        api.queue_text("second claude here")
        child, screen, env = spawn_tui(api, throwaway_user, project, aegis_env, net,
                                       timeout=60)
        try:
            # The TUI is up and owns the terminal: its mode line and its input box are drawn.
            screen.wait_for(r"bypass permissions on")
            screen.wait_for(r"❯")
            type_prompt(child, screen, "first prompt")
            child.expect_exact("\x1b[?1049l")  # the supervisor's terminal reset ...
            # ... and its one-line notice: our own output, written in one piece
            child.expect_exact("aegis-mcp: restarting claude (reason: MCP server updated)")
            assert api.wait_for_messages(3, timeout=60)
            last = json.dumps(api.message_requests()[-1].body["messages"])
            assert "first prompt" in last and "continue after restart" in last  # resumed
            sock = control.socket_path(project / ".aegis-run", child.pid)
            status = control.request(sock, {"op": "status"})["status"]
            assert status["restart_count"] == 1
            # the TUI's own session, named at the first start, resumed by its id
            argv = status["agent_argv"]
            assert argv[argv.index("--resume") + 1] == status["session_id"]
            assert "--continue" not in argv
            # The new claude is the foreground process group of a terminal of its own (under
            # sudo the supervisor relays a pty): keys reach it, and it cannot reach ours.
            agent_stat = Path(f"/proc/{status['agent_pid']}/stat").read_text()
            session, tty_nr, tpgid = agent_stat.rsplit(")", 1)[1].split()[3:6]
            ours = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            assert int(tpgid) == status["agent_pid"]
            assert (session, tty_nr) != (ours[3], ours[4]) and tty_nr != "0"
            assert os.tcgetpgrp(child.child_fd) == child.pid  # ours stays the supervisor's
            # ... and it started aegis-mcp's server again (the injection of this start works).
            status = status_once_servers_seen(sock, timeout=30)
            assert status["mcp_servers_seen"]
        finally:
            status = quit_tui(child)
        # claude's own exit status, forwarded (its Ctrl-C exit)
        assert status is not None and status < 128 + 64, (status, child.signalstatus)


def test_claude_in_netns_mode_reaches_its_api_on_the_host_loopback_and_is_recorded(
        throwaway_user: pwd.struct_passwd, project: Path, aegis_env: dict[str, str],
        net: PrivateLoopback) -> None:
    # The stand-in listens on the host's 127.0.0.1 only; claude runs in its own network
    # namespace, where that address is its own loopback: the supervisor forwards the port of
    # ANTHROPIC_BASE_URL, and the capture on the veth records claude's connection.
    with FakeAnthropic(default_text="hello from inside the namespace", bind=net.run) as api:
        out = run_claude(net, api, throwaway_user, project, aegis_env, "--netmon=netns", "-p",
                         "say hi")
        assert out.returncode == 0, out.stderr
        assert "hello from inside the namespace" in out.stdout
        url, port = api.url, api.port
    assert f"ANTHROPIC_BASE_URL={url}: the host's 127.0.0.1:{port} is forwarded" in out.stderr
    log = next((project / ".aegis-run").rglob("netmon-*.jsonl"))
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    closes = [e for e in events if e["event"] == "close" and e.get("port") == port]
    assert closes and all(e["source"] == "netns" and e["host"] == "127.0.0.1" for e in closes)
    assert sum(e["sent"] for e in closes) > 1000 and sum(e["recv"] for e in closes) > 100


def test_a_print_run_restarted_mid_turn_continues_its_conversation(
        throwaway_user: pwd.struct_passwd, project: Path, aegis_env: dict[str, str],
        net: PrivateLoopback) -> None:
    # `aegis-mcp restart` from another terminal while claude -p waits at the model: the new
    # claude resumes its own session and gets the restart prompt in place of the first.
    with FakeAnthropic(default_text="second claude here", bind=net.run) as api:
        result = restart_mid_turn(net, api, ["claude", "-p", "first task"],
                                  sudo_env(api, throwaway_user, project, aegis_env), project)
        last = json.dumps(api.message_requests()[-1].body["messages"])
    assert result.returncode == 0, result.err
    assert result.status["mcp_servers_seen"], "the new claude did not start aegis-mcp's server"
    argv = result.status["agent_argv"]
    assert argv[argv.index("--resume") + 1] == result.status["session_id"]
    assert argv[argv.index("-p") + 1] == RESTART_PROMPT
    assert "first task" not in argv
    assert "second claude here" in result.out
    assert "first task" in last and RESTART_PROMPT in last


def _transcripts(user: pwd.struct_passwd) -> set[str]:
    """The session ids of the user's Claude Code transcripts (~/.claude/projects/*/<id>.jsonl)."""
    return {p.stem for p in Path(user.pw_dir, ".claude", "projects").glob("*/*.jsonl")}


def test_two_supervisors_in_one_directory_each_resume_their_own_conversation(
        throwaway_user: pwd.struct_passwd, project: Path, aegis_env: dict[str, str],
        net: PrivateLoopback) -> None:
    # Terminal A's claude waits at the model; terminal B's claude runs a conversation of its
    # own in the same directory and writes after A; A's claude then hangs (SIGSTOP: it
    # ignores SIGINT and SIGTERM) and is killed after the grace, without the transcript write
    # a stopping claude makes on its way out. "The directory's newest conversation" is B's
    # now (`--continue` takes it: measured): A's restart must resume A's, by its id.
    with FakeAnthropic(default_text="resumed reply", bind=net.run) as api:
        api.queue_hold()  # A's first turn
        api.queue_text("B's reply")
        env = sudo_env(api, throwaway_user, project, aegis_env)
        earlier = _transcripts(throwaway_user)  # the user's other tests' conversations
        a = subprocess.Popen(net.enter([aegis_bin(), "--restart-grace", "1", "claude", "-p",
                                        "task of terminal A"]),
                             env=env, cwd=project, text=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert api.wait_for_messages(1, timeout=90), "A's claude never asked the model"
            sock = control.socket_path(project / ".aegis-run", a.pid)
            before = control.request(sock, {"op": "status"})["status"]
            a_session = before["session_id"]
            b = run_claude(net, api, throwaway_user, project, aegis_env, "-p",
                           "task of terminal B")
            assert b.returncode == 0 and "B's reply" in b.stdout, b.stderr
            b_sessions = _transcripts(throwaway_user) - earlier - {a_session}
            assert len(b_sessions) == 1  # B's own, written after A's
            os.killpg(before["agent_pid"], signal.SIGSTOP)  # A's claude hangs
            restart = subprocess.run(
                [aegis_bin(), "restart", "--pid", str(a.pid), "--reason", "A's MCP server",
                 "--prompt", "A goes on", "--wait", "90", "--json"],
                env=env, capture_output=True, text=True, timeout=120)
            assert restart.returncode == 0, restart.stderr
            status = json.loads(restart.stdout)["restarted"]
            out, err = a.communicate(timeout=90)
        finally:
            if a.poll() is None:
                a.kill()
                a.wait()
        assert a.returncode == 0, err
        assert "resumed reply" in out
        resumed = api.message_requests()[-1].body
        last = json.dumps(resumed["messages"])
        assert "task of terminal A" in last and "A goes on" in last
        assert "task of terminal B" not in last and "B's reply" not in last
    argv = status["agent_argv"]
    assert status["session_id"] == a_session and argv[argv.index("--resume") + 1] == a_session
    assert "resumes its latest conversation" not in err
    assert _transcripts(throwaway_user) - earlier == {a_session, *b_sessions}


def test_a_session_the_user_chose_is_learned_from_claudes_hook_and_resumed(
        throwaway_user: pwd.struct_passwd, project: Path, aegis_env: dict[str, str],
        net: PrivateLoopback) -> None:
    # `--continue` chooses the session: only claude knows which, and its SessionStart hook
    # tells the supervisor, whose restart then resumes that id.
    with FakeAnthropic(default_text="default reply", bind=net.run) as api:
        earlier = _transcripts(throwaway_user)
        first = run_claude(net, api, throwaway_user, project, aegis_env, "-p", "first run")
        assert first.returncode == 0, first.stderr
        (chosen,) = _transcripts(throwaway_user) - earlier
        api.queue_tool_use("mcp__aegis-mcp__restart_claude", {"reason": "r", "prompt": "on"})
        api.queue_text("scheduled")
        again = run_claude(net, api, throwaway_user, project, aegis_env, "--continue", "-p",
                           "second run")
        assert again.returncode == 0, again.stderr
        requests = [json.dumps(r.body["messages"]) for r in api.message_requests()]
    assert any(f"with --resume {chosen}" in r for r in requests)  # the tool's answer
    assert "first run" in requests[-1] and "on" in requests[-1]
    assert _transcripts(throwaway_user) - earlier == {chosen}


def test_as_plain_root_the_model_restarts_claude_through_the_tool(
        tmp_path: Path, aegis_env: dict[str, str], net: PrivateLoopback) -> None:
    # Plain root (no SUDO_UID): claude refuses --dangerously-skip-permissions, so it starts
    # without; aegis-mcp's own tools must still be allowed, or the restart is refused.
    home = tmp_path / "home"
    home.mkdir()
    with FakeAnthropic(default_text="default reply", bind=net.run) as api:
        api.queue_tool_use("mcp__aegis-mcp__restart_claude",
                           {"reason": "MCP server updated", "prompt": "continue after restart"})
        api.queue_text("the restart is scheduled")
        api.queue_hold()  # the new claude's first turn: held while its status is read
        env = {**aegis_env, **api.claude_env(home=home),
               "PATH": f"{Path(CLAUDE).parent}{os.pathsep}{aegis_env['PATH']}"}
        env = {k: v for k, v in env.items() if not k.startswith("SUDO_")}
        sup = subprocess.Popen(net.enter([aegis_bin(), "claude", "-p", "first prompt"]),
                               env=env, cwd=tmp_path, text=True, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 90
            while len(api.message_requests()) < 3 and sup.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(api.message_requests()) == 3, (sup.poll(), api.message_requests())
            sock = control.socket_path(Path(aegis_env["AEGIS_RUNTIME_DIR"]), sup.pid)
            status = control.request(sock, {"op": "status"})["status"]
            api.release()
            out, err = sup.communicate(timeout=90)
        finally:
            if sup.poll() is None:
                sup.kill()
                sup.communicate()
        requests = [r.body for r in api.message_requests()]
    assert sup.returncode == 0, err
    assert "--dangerously-skip-permissions" not in status["agent_argv"]
    argv = status["agent_argv"]
    assert status["restart_count"] == 1 and argv[argv.index("--resume") + 1] == \
        status["session_id"]  # its own session, by id
    assert "aegis-mcp: restarting claude (reason: MCP server updated)" in err
    assert err.count("with aegis-mcp's own tools allowed (--allowedTools=mcp__aegis-mcp)") == 1
    # The tool ran (not refused) and the new claude resumed that conversation.
    assert "stopped and started again" in json.dumps(requests[1]["messages"])
    last = json.dumps(requests[2]["messages"])
    assert "first prompt" in last and "continue after restart" in last
    assert "default reply" in out


def test_after_clear_in_the_tui_a_restart_resumes_the_new_session(
        throwaway_user: pwd.struct_passwd, project: Path, aegis_env: dict[str, str],
        net: PrivateLoopback) -> None:
    # `/clear` starts a new session in the same claude: its SessionStart hook (source "clear")
    # tells the supervisor, and the restart resumes that one, not the first.
    trust_project(throwaway_user, project, TUI_KEY)
    with FakeAnthropic(default_text="default reply", bind=net.run) as api:
        child, screen, env = spawn_tui(api, throwaway_user, project, aegis_env, net,
                                       timeout=90)
        sock = control.socket_path(project / ".aegis-run", child.pid)
        try:
            screen.wait_for(r"bypass permissions on", timeout=90)
            screen.wait_for(r"❯")
            first = control.request(sock, {"op": "status"})["status"]["session_id"]
            assert first
            type_prompt(child, screen, "before the clear")
            assert api.wait_for_messages(1, timeout=90)
            type_prompt(child, screen, "/clear")
            deadline = time.monotonic() + 60
            now = first
            while now == first and time.monotonic() < deadline:
                time.sleep(0.2)
                now = control.request(sock, {"op": "status"})["status"]["session_id"]
            assert now and now != first, "the hook never reported the cleared session"
            type_prompt(child, screen, "after the clear")
            assert api.wait_for_messages(2, timeout=90)
            status = subprocess.run(
                [aegis_bin(), "restart", "--pid", str(child.pid), "--reason", "r", "--prompt",
                 "go on", "--wait", "90", "--json"], env=env, capture_output=True, text=True,
                timeout=150)
            assert status.returncode == 0, status.stderr
            argv = json.loads(status.stdout)["restarted"]["agent_argv"]
            assert argv[argv.index("--resume") + 1] == now
            assert api.wait_for_messages(3, timeout=90)
            last = json.dumps(api.message_requests()[-1].body["messages"])
            assert "after the clear" in last and "go on" in last
            assert "before the clear" not in last  # the cleared conversation stays behind
        finally:
            quit_tui(child)
