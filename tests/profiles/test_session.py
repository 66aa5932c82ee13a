"""Session identity: which conversation is the agent's own (session.py), and its hook."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from aegis_mcp.profiles import session
from aegis_mcp.profiles.profile import BUILTIN_PROFILES

CLAUDE = BUILTIN_PROFILES["claude"]
SID = "3f2c1a9e-7b6d-4e5f-8a9b-0c1d2e3f4a5b"


def test_a_session_id_is_never_an_option_or_a_path() -> None:
    assert session.valid_id(SID) and session.valid_id(session.new_id())
    for bad in ("", "-p", "--resume", "../x", "a b", "a/b", "x" * 200, None, 7):
        assert not session.valid_id(bad), bad


def test_a_fresh_start_names_its_session_unless_the_user_chose_one() -> None:
    assert session.names_own_session(CLAUDE, ["-p", "task"])
    assert session.names_own_session(CLAUDE, ["--", "--continue"])  # a prompt, not a flag
    for chosen in (["--continue"], ["-c", "hi"], ["--resume", SID], [f"--session-id={SID}"],
                   ["--resume"]):
        assert not session.names_own_session(CLAUDE, chosen), chosen
    assert session.user_id(CLAUDE, ["--resume", SID, "hi"]) == SID
    assert session.user_id(CLAUDE, [f"--session-id={SID}"]) == SID
    assert session.user_id(CLAUDE, ["--resume", "-p"]) is None
    gemini = BUILTIN_PROFILES["gemini"]
    assert session.names_own_session(gemini, ["-p", "task"])
    assert not session.names_own_session(gemini, ["--resume", "latest", "-p", "task"])
    assert not session.names_own_session(BUILTIN_PROFILES["codex"], ["exec", "task"])


def test_the_hook_is_left_out_when_the_user_gives_settings_of_their_own() -> None:
    (flag, value) = session.hook_args(CLAUDE, ["-p", "x"])
    hook = json.loads(value)["hooks"]["SessionStart"][0]["hooks"][0]
    assert flag == "--settings" and "aegis_mcp.profiles.session" in hook["command"]
    assert session.hook_args(CLAUDE, ["--settings", "mine.json"]) == []
    # a print run cannot change sessions: with its id known it needs no hook
    assert session.hook_args(CLAUDE, ["-p", "x"], known=True) == []
    assert session.hook_args(CLAUDE, ["x"], known=True)
    assert session.hook_args(BUILTIN_PROFILES["codex"], []) == []


def _serve_once(path: Path, got: list[dict]) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(20)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                got.append(json.loads(conn.makefile().readline()))
                conn.sendall(b'{"ok": true}\n')

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_the_hook_reports_the_session_and_stays_silent(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    got: list[dict] = []
    thread = _serve_once(path, got)
    event = {"session_id": SID, "source": "clear", "hook_event_name": "SessionStart"}
    command = json.loads(session.hook_args(CLAUDE, [])[1])["hooks"]["SessionStart"][0][
        "hooks"][0]["command"]
    out = subprocess.run(command, shell=True, input=json.dumps(event), text=True,
                         capture_output=True, env={**os.environ, "AEGIS_CONTROL": str(path)},
                         timeout=30)
    thread.join(20)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == ""
    assert got == [{"op": "session", "session_id": SID, "source": "clear"}]


def test_the_hook_never_fails_the_agent(tmp_path: Path) -> None:
    for stdin, control in (("not json", str(tmp_path / "none.sock")),
                           (json.dumps({"session_id": "--evil"}), str(tmp_path / "x.sock")),
                           (json.dumps({"session_id": SID}), str(tmp_path / "gone.sock"))):
        out = subprocess.run([sys.executable, "-m", "aegis_mcp.profiles.session"], input=stdin,
                             text=True, capture_output=True, timeout=30,
                             env={**os.environ, "AEGIS_CONTROL": control})
        assert (out.returncode, out.stdout) == (0, "")


def test_the_supervisor_names_the_session_follows_the_hook_and_resumes_exactly_it(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    import pexpect

    from aegis_mcp.supervise import control
    from tests.support.host import aegis_bin
    from tests.support.supervisor_helpers import fake_profile, fake_world

    world = fake_world(tmp_path, aegis_env)
    profile = fake_profile().replace('"-c"]', '"-c", "--session-id"]').replace(
        '"--behaviour"]', '"--behaviour", "--session-id", "--resume"]')
    Path(aegis_env["AEGIS_CONFIG"]).write_text(
        profile + 'resume_session = ["--resume", "{session}"]\n'
        'session_id_flag = "--session-id"\n')
    child = world.spawn("fake", "--model", "big", "first")
    try:
        child.expect("READY")
        first = world.wait_starts(1)[0]
        named = first["argv"][first["argv"].index("--session-id") + 1]
        assert session.valid_id(named)
        sock = first["env"]["AEGIS_CONTROL"]
        assert control.request(sock, {"op": "status"})["status"]["session_id"] == named
        # what the session hook says after a /clear: a new conversation, the one to resume
        assert control.request(sock, {"op": "session", "session_id": SID})["ok"]
        bad = control.request(sock, {"op": "session", "session_id": "--continue"})
        assert not bad["ok"]
        answer = control.request(sock, {"op": "restart", "reason": "r", "prompt": "go on"})
        assert f"with --resume {SID}" in answer["message"]
        child.expect("READY pid=")
        argv = world.wait_starts(2)[1]["argv"]
        assert argv[argv.index("--resume") + 1] == SID
        assert "--continue" not in argv and "--session-id" not in argv
        assert argv[argv.index("--model") + 1] == "big" and "go on" in argv
        status = control.request(sock, {"op": "status"})["status"]
        assert status["session_id"] == SID and status["restart_count"] == 1
        ps = [subprocess.run([aegis_bin(), "ps", *args], env={**world.env, "COLUMNS": "250"},
                             capture_output=True, text=True, timeout=30) for args in
              (["--json"], [])]
        assert [r["session_id"] for r in json.loads(ps[0].stdout)] == [SID]
        assert SID[:8] in ps[1].stdout and "session" in ps[1].stdout
        child.sendline("exit 0")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_a_profile_that_resumes_only_the_latest_says_so_once(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    import io

    import pexpect

    from aegis_mcp.supervise import control
    from tests.support.supervisor_helpers import fake_world

    world = fake_world(tmp_path, aegis_env)
    child = world.spawn("fake", "first")
    child.logfile_read = seen = io.StringIO()
    try:
        child.expect("READY")
        sock = world.wait_starts(1)[0]["env"]["AEGIS_CONTROL"]
        assert control.request(sock, {"op": "status"})["status"]["session_id"] is None
        for n in (2, 3):
            control.request(sock, {"op": "restart", "reason": f"r{n}"})
            child.expect_exact(f"restarting fake (reason: r{n})")
            child.expect("READY pid=")
            world.wait_starts(n)
        child.sendline("exit 0")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert "--continue" in world.starts()[2]["argv"]
    notice = ("fake resumes its latest conversation in this directory (it cannot resume a "
              "session by id)")
    assert seen.getvalue().count(notice) == 1
