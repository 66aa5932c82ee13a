"""Started through sudo (as root with SUDO_UID/SUDO_GID), the agent runs as that user."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pexpect
import pytest

from aegis_mcp.paths import hooks_library, runtime_base
from aegis_mcp.supervise import control
from tests.support.host import NEEDS_ROOT, aegis_bin
from tests.support.supervisor_helpers import FakeAgentWorld

pytestmark = NEEDS_ROOT


def test_agent_runs_as_the_sudo_user_with_its_groups(
        sudo_world: FakeAgentWorld, throwaway_user: pwd.struct_passwd) -> None:
    child = sudo_world.spawn("fake")
    child.expect("READY")
    start = sudo_world.starts()[0]
    expected_groups = sorted(os.getgrouplist(throwaway_user.pw_name, throwaway_user.pw_gid))
    assert (start["uid"], start["gid"]) == (throwaway_user.pw_uid, throwaway_user.pw_gid)
    assert start["groups"] == expected_groups
    assert grp.getgrnam(f"{throwaway_user.pw_name}x").gr_gid in start["groups"]
    assert start["env"]["HOME"] == throwaway_user.pw_dir
    assert start["env"]["USER"] == start["env"]["LOGNAME"] == throwaway_user.pw_name
    assert not any(k.startswith("SUDO_") for k in start["env"])
    # The dropped agent reaches its supervisor's control socket (its uid is allowed).
    child.sendline("restart as user|again")
    child.expect("READY")
    second = sudo_world.wait_starts(2)[1]
    assert second["uid"] == throwaway_user.pw_uid and second["prompt"] == "again"
    mcp = next(c for c in second["children"] if c["name"] == "aegis-mcp")
    assert os.stat(f"/proc/{mcp['pid']}").st_uid == throwaway_user.pw_uid
    # The warm server the relay talks to is the agent's too, its socket the user's file.
    warm = control.request(second["env"]["AEGIS_CONTROL"], {"op": "status"})["status"][
        "warm_mcp_server"]
    assert os.stat(f"/proc/{warm['pid']}").st_uid == throwaway_user.pw_uid
    assert os.stat(warm["socket"]).st_uid == throwaway_user.pw_uid
    child.sendline("exit 0")
    child.expect(pexpect.EOF)


def test_keep_root_keeps_root_and_warns(sudo_world: FakeAgentWorld) -> None:
    child = sudo_world.spawn("--keep-root", "fake")
    child.expect("--keep-root: the agent runs as ROOT")
    child.expect("READY")
    assert sudo_world.starts()[0]["uid"] == 0
    child.sendline("exit 0")
    child.expect(pexpect.EOF)


def test_unreadable_install_stops_before_the_start(sudo_world: FakeAgentWorld) -> None:
    lib = hooks_library()
    mode = lib.stat().st_mode
    os.chmod(lib, 0o600)  # as if installed under root's home
    try:
        out = subprocess.run([aegis_bin(), "--netmon=preload", "fake"], env=sudo_world.env,
                             capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL, cwd=sudo_world.root)
    finally:
        os.chmod(lib, mode)
    assert out.returncode == 1
    assert "cannot run or read" in out.stderr and str(lib) in out.stderr
    assert "Traceback" not in out.stderr
    assert sudo_world.starts() == []


def test_plain_root_runs_as_root_and_says_so(sudo_world: FakeAgentWorld) -> None:
    env = {k: v for k, v in sudo_world.env.items() if not k.startswith("SUDO_")}
    out = subprocess.run([aegis_bin(), "fake", "--exit-code", "0"], env=env,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                         cwd=sudo_world.root)
    assert out.returncode == 0
    assert "running as root (no SUDO_UID)" in out.stderr
    assert json.loads((sudo_world.state / "starts.jsonl").read_text())["uid"] == 0


def test_control_socket_refuses_other_uids(throwaway_user: pwd.struct_passwd) -> None:
    """Defence in depth under the 0700 directory: SO_PEERCRED is checked per connection."""
    import threading

    from aegis_mcp.supervise import control

    root = Path(tempfile.mkdtemp(prefix="aegis-peer-"))
    os.chmod(root, 0o755)
    server = control.ControlServer(root / "s.sock", allowed_uids={0})
    os.chmod(root / "s.sock", 0o666)  # let the other user reach it: only the uid check is left
    stop = threading.Event()

    def serve() -> None:
        import select

        while not stop.is_set():
            if select.select([server.sock], [], [], 0.05)[0]:
                conn = server.accept()
                while conn is not None and not server.read(conn, lambda r: {"ok": True}):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ("import socket, sys\n"
              "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
              "try:\n"
              "    s.sendall(b'{\"op\": \"ping\"}\\n'); print(repr(s.recv(100)))\n"
              "except OSError as e: print('REFUSED', e)\n")
    try:
        as_user = subprocess.run(
            ["setpriv", f"--reuid={throwaway_user.pw_uid}", f"--regid={throwaway_user.pw_gid}",
             "--clear-groups", sys.executable, "-c", client, str(root / "s.sock")],
            capture_output=True, text=True, timeout=30)
        as_root = subprocess.run([sys.executable, "-c", client, str(root / "s.sock")],
                                 capture_output=True, text=True, timeout=30)
    finally:
        stop.set()
        thread.join(5)
        server.close()
        shutil.rmtree(root, ignore_errors=True)
    assert as_user.returncode == 0, as_user.stderr  # it connected (the file allows it) ...
    assert as_user.stdout.startswith(("b''", "REFUSED"))  # ... and was closed unanswered
    assert '"ok": true' in as_root.stdout


def test_sudo_finds_the_users_own_agent_install(
        sudo_world: FakeAgentWorld, throwaway_user: pwd.struct_passwd) -> None:
    """sudo's secure_path lacks ~/.local/bin, where claude's own installer puts claude."""
    bindir = Path(throwaway_user.pw_dir) / ".local" / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    agent = bindir / "my-user-agent"
    agent.write_text('#!/bin/sh\necho "uid=$(id -u) path=$PATH"\n')
    agent.chmod(0o755)
    Path(sudo_world.env["AEGIS_CONFIG"]).write_text(
        '[agents.mine]\ncommand = ["my-user-agent"]\nprompt = "none"\n')
    env = {**sudo_world.env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    try:
        out = subprocess.run([aegis_bin(), "mine"], env=env, capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL, cwd=sudo_world.root)
        missing = subprocess.run([aegis_bin(), "mine"], env={**env, "SUDO_UID": "0"},
                                 capture_output=True, text=True, timeout=60,
                                 stdin=subprocess.DEVNULL, cwd=sudo_world.root)
    finally:
        shutil.rmtree(Path(throwaway_user.pw_dir) / ".local", ignore_errors=True)
    assert out.returncode == 0, out.stderr
    assert f"uid={throwaway_user.pw_uid} path={bindir}:" in out.stdout
    assert missing.returncode == 1 and "executable not found" in missing.stderr


def test_root_and_the_sudo_user_both_find_a_supervisor_started_through_sudo(
        sudo_world: FakeAgentWorld, throwaway_user: pwd.struct_passwd) -> None:
    # No AEGIS_RUNTIME_DIR: `sudo aegis-mcp <agent>` keeps its socket in the sudo user's
    # runtime directory (the dropped agent must reach it). Both the user's own `aegis-mcp
    # restart` and root's `sudo aegis-mcp restart` must find it there.
    env = {k: v for k, v in sudo_world.env.items()
           if k not in ("AEGIS_RUNTIME_DIR", "XDG_RUNTIME_DIR")}
    env["TMPDIR"] = str(sudo_world.root)  # which sudo would drop: it must not matter
    runtime = runtime_base(throwaway_user.pw_uid)
    assert runtime.parent == Path("/tmp")  # a new user has no /run/user/<uid>
    shutil.rmtree(runtime, ignore_errors=True)  # left by an earlier throwaway user's uid
    world = FakeAgentWorld(sudo_world.root, sudo_world.state, env)
    child = world.spawn("fake")
    child.expect("READY")
    user_env = {**{k: v for k, v in env.items() if not k.startswith("SUDO_")},
                "HOME": throwaway_user.pw_dir, "USER": throwaway_user.pw_name}

    def as_user(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([aegis_bin(), *args], env=user_env, capture_output=True,
                              text=True, timeout=60, user=throwaway_user.pw_uid,
                              group=throwaway_user.pw_gid, cwd="/")

    try:
        as_root = subprocess.run([aegis_bin(), "ps", "--json"], env=env, capture_output=True,
                                 text=True, timeout=60)
        assert as_root.returncode == 0, as_root.stderr
        assert [s["supervisor_pid"] for s in json.loads(as_root.stdout)] == [child.pid]
        restarted = subprocess.run([aegis_bin(), "restart", "--pid", str(child.pid), "--wait",
                                    "30", "--json"], env=env, capture_output=True, text=True,
                                   timeout=60)
        assert restarted.returncode == 0, restarted.stderr
        assert json.loads(restarted.stdout)["restarted"]["restart_count"] == 1
        mine = as_user("ps", "--json")
        assert mine.returncode == 0, mine.stderr
        assert [s["supervisor_pid"] for s in json.loads(mine.stdout)] == [child.pid]
        # A runtime directory that is not the user's own: one clear line, no "report it".
        user_env["AEGIS_RUNTIME_DIR"] = str(sudo_world.root)
        theirs = as_user("ps")
        assert theirs.returncode == 1
        assert theirs.stderr.strip() == (
            f"aegis-mcp: {sudo_world.root} belongs to uid 0, not to you (uid "
            f"{throwaway_user.pw_uid}), so aegis-mcp will not use it; set AEGIS_RUNTIME_DIR to "
            "a directory of your own (e.g. AEGIS_RUNTIME_DIR=~/.cache/aegis-mcp-run), or ask "
            "an administrator to remove it")
    finally:
        child.sendline("exit 0")
        child.expect(pexpect.EOF)
        shutil.rmtree(runtime, ignore_errors=True)


def test_the_whole_job_as_an_ordinary_user(
        sudo_world: FakeAgentWorld, throwaway_user: pwd.struct_passwd) -> None:
    # What most users run: no root, no sudo, no AEGIS_RUNTIME_DIR. The agent in a pty, --netmon
    # picks preload, `aegis-mcp restart`, `ps` and `netmon` find the supervisor on their own.
    uid, gid = throwaway_user.pw_uid, throwaway_user.pw_gid
    env = {k: v for k, v in sudo_world.env.items()
           if not k.startswith("SUDO_") and k not in ("AEGIS_RUNTIME_DIR", "XDG_RUNTIME_DIR")}
    env.update(HOME=throwaway_user.pw_dir, USER=throwaway_user.pw_name,
               LOGNAME=throwaway_user.pw_name)
    runtime = runtime_base(uid)
    shutil.rmtree(runtime, ignore_errors=True)  # left by an earlier throwaway user's uid
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_user, aegis_bin(), *args], env=env, capture_output=True,
                              text=True, timeout=60, cwd=sudo_world.root)

    child = pexpect.spawn(as_user[0], [*as_user[1:], aegis_bin(), "--netmon", "fake"], env=env,
                          cwd=str(sudo_world.root), timeout=30, encoding="utf-8",
                          codec_errors="replace", dimensions=(40, 120))
    try:
        child.expect("--netmon: using preload mode")  # auto mode says which it picked
        child.expect("READY")
        first = sudo_world.starts()[0]
        assert first["uid"] == uid and first["foreground"] is True
        assert first["env"]["LD_PRELOAD"].endswith("libaegis_hooks.so")
        restarted = run("restart", "--reason", "new server", "--wait", "30", "--json")
        assert restarted.returncode == 0, restarted.stderr
        status = json.loads(restarted.stdout)["restarted"]
        assert status["restart_count"] == 1 and status["mcp_servers_seen"]
        child.expect("restarting fake \\(reason: new server\\)")
        child.expect("READY")
        assert sudo_world.wait_starts(2)[1]["resume"] is True
        listed = run("ps", "--json")
        assert [s["supervisor_pid"] for s in json.loads(listed.stdout)] == [child.pid]
        netmon = run("netmon", "--json", str(child.pid))
        assert netmon.returncode == 0, netmon.stderr
        assert Path(json.loads(netmon.stdout)["log_path"]).parent == runtime
        assert os.stat(runtime).st_uid == uid and os.stat(runtime).st_mode & 0o777 == 0o700
        child.sendline("exit 0")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.kill(9)
        shutil.rmtree(runtime, ignore_errors=True)


def _whoami() -> list[int]:
    return [os.getuid(), os.geteuid(), os.getgid(), *sorted(os.getgroups())]


def _open_for_reading(path: str) -> list[int]:
    return [os.open(path, os.O_RDONLY)]


def _fail_like(kind: str) -> None:
    from aegis_mcp.errors import AegisError

    if kind == "os":
        os.open("/root/.aegis-nothing-here", os.O_RDONLY)
    raise AegisError("one clear line")


def test_as_user_drops_fully_and_brings_back_results_errors_and_fds(
        throwaway_user: pwd.struct_passwd) -> None:
    from aegis_mcp.errors import AegisError
    from aegis_mcp.privileges import User, as_user, fds_as_user

    user = User.from_uid(throwaway_user.pw_uid)
    uid, gid = throwaway_user.pw_uid, throwaway_user.pw_gid
    assert as_user(user, _whoami) == [uid, uid, gid, *sorted(user.groups)]
    assert as_user(None, _whoami)[0] == 0  # no user: inline, as we are
    with pytest.raises(PermissionError):  # the kernel's check, as that user: /root is 0700
        as_user(user, _fail_like, "os")
    with pytest.raises(AegisError, match="one clear line"):
        as_user(user, _fail_like, "aegis")
    tmp_path = Path(tempfile.mkdtemp(prefix="aegis-asuser-"))
    os.chmod(tmp_path, 0o755)
    secret = tmp_path / "root-only"
    secret.write_text("s")
    os.chmod(secret, 0o600)
    with pytest.raises(PermissionError):
        fds_as_user(user, _open_for_reading, str(secret))
    readable = tmp_path / "readable"
    readable.write_text("shared")
    os.chmod(readable, 0o644)
    (fd,) = fds_as_user(user, _open_for_reading, str(readable))
    try:
        assert os.read(fd, 100) == b"shared"
    finally:
        os.close(fd)
        shutil.rmtree(tmp_path)


def test_a_runtime_directory_the_user_cannot_reach_is_one_clear_line(
        sudo_world: FakeAgentWorld, throwaway_user: pwd.struct_passwd) -> None:
    closed = Path(tempfile.mkdtemp(prefix="aegis-closed-"))  # 0700 root: no way through
    try:
        env = {**sudo_world.env, "AEGIS_RUNTIME_DIR": str(closed / "run")}
        out = subprocess.run([aegis_bin(), "fake"], env=env, capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL, cwd=sudo_world.root)
    finally:
        shutil.rmtree(closed, ignore_errors=True)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert f"user {throwaway_user.pw_name} cannot reach {closed}/run" in out.stderr
    assert sudo_world.starts() == []


def test_the_agents_environment_is_the_users_not_roots(
        sudo_world: FakeAgentWorld, throwaway_user: pwd.struct_passwd) -> None:
    env = {**sudo_world.env, "MAIL": "/var/mail/root", "XDG_CONFIG_HOME": "/root/.config",
           "PYTHONSTARTUP": "/root/.pythonrc", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/x",
           "PATH": f"/root/.local/bin:{sudo_world.env['PATH']}:/root/bin",
           "MY_API_BASE": "http://127.0.0.1:9"}
    out = subprocess.run([aegis_bin(), "--no-inject-mcp", "--", "env"], env=env,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                         cwd=sudo_world.root)
    assert out.returncode == 0, out.stderr
    seen = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert seen["MAIL"] == f"/var/mail/{throwaway_user.pw_name}"
    assert seen["HOME"] == throwaway_user.pw_dir and seen["USER"] == throwaway_user.pw_name
    assert not any(p == "/root" or p.startswith("/root/") for p in seen["PATH"].split(":"))
    for gone in ("XDG_CONFIG_HOME", "PYTHONSTARTUP", "DBUS_SESSION_BUS_ADDRESS", "SUDO_UID"):
        assert gone not in seen
    assert seen["MY_API_BASE"] == "http://127.0.0.1:9"  # what the user passed on stays


def test_a_squatted_tmp_runtime_directory_is_refused_with_what_to_do(
        throwaway_user: pwd.struct_passwd, aegis_env: dict[str, str]) -> None:
    """Another user made /tmp/aegis-mcp-<uid> first (the /tmp fallback of a user without
    /run/user/<uid>): it is never used, and the message says what the victim can do."""
    uid, gid = throwaway_user.pw_uid, throwaway_user.pw_gid
    squatted = runtime_base(uid)
    assert squatted.parent == Path("/tmp")
    shutil.rmtree(squatted, ignore_errors=True)
    nobody = pwd.getpwnam("nobody")
    subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                    "--clear-groups", "mkdir", "-m", "0777", str(squatted)], check=True)
    env = {k: v for k, v in aegis_env.items()
           if k not in ("AEGIS_RUNTIME_DIR", "XDG_RUNTIME_DIR", "SUDO_UID")}
    env.update(HOME=throwaway_user.pw_dir, USER=throwaway_user.pw_name)

    def ps(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([aegis_bin(), "ps"], env={**env, **extra}, capture_output=True,
                              text=True, timeout=60, cwd="/", user=uid, group=gid)

    own = Path(throwaway_user.pw_dir) / "aegis-run"
    try:
        out = ps({})
        assert out.returncode == 1 and out.stderr.count("\n") == 1
        assert f"{squatted} belongs to uid {nobody.pw_uid}" in out.stderr
        assert "set AEGIS_RUNTIME_DIR to a directory of your own" in out.stderr
        assert list(squatted.iterdir()) == []  # nothing of the victim's went in there
        fixed = ps({"AEGIS_RUNTIME_DIR": str(own)})  # what the message says: it works
        assert fixed.returncode == 0, fixed.stderr
    finally:
        shutil.rmtree(squatted, ignore_errors=True)
        shutil.rmtree(own, ignore_errors=True)


def test_a_working_directory_the_user_cannot_enter_is_one_clear_line(
        sudo_world: FakeAgentWorld, throwaway_user: pwd.struct_passwd) -> None:
    closed = Path(tempfile.mkdtemp(prefix="aegis-closed-cwd-"))  # 0700 root
    try:
        out = subprocess.run([aegis_bin(), "fake"], env=sudo_world.env, capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=closed)
    finally:
        shutil.rmtree(closed, ignore_errors=True)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert f"user {throwaway_user.pw_name} cannot enter {closed}" in out.stderr
    assert sudo_world.starts() == []
