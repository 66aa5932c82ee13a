"""`sudo aegis-mcp top`, tested as an attack: root's live view reads what supervisors of other
users say they have, and a supervisor's socket is the user's (so the agent's) to answer. A
fake supervisor of a throwaway user names root's secret as its netmon log, directly and through
a symlink: root must neither read it nor write beside it, and the view must still show that
user's real network numbers."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_mcp.top.follow import NotTheirs, Tail
from tests.support.host import NEEDS_ROOT, aegis_bin
from tests.support.wait import wait_for

pytestmark = NEEDS_ROOT

FAKE_SUPERVISOR = textwrap.dedent("""
    import json, os, socket, sys
    runtime, log = sys.argv[1], sys.argv[2]
    path = os.path.join(runtime, f"supervisor-{os.getpid()}.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(8)
    print("LISTENING", flush=True)
    status = {"supervisor_pid": os.getpid(), "agent": "evil", "agent_pid": os.getpid(),
              "phase": "running", "supervisor_uptime_s": 1.0, "restart_count": 0,
              "netmon_mode": "preload", "netmon_log": log, "cwd": runtime,
              "control_socket": path, "mcp_servers_seen": []}
    while True:
        conn, _ = sock.accept()
        conn.recv(65536)
        conn.sendall(json.dumps({"ok": True, "status": status}).encode() + b"\\n")
        conn.close()
""")


@pytest.fixture
def attacker_runtime(throwaway_user: pwd.struct_passwd) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="aegis-top-attack-"))
    os.chmod(base, 0o755)
    runtime = base / "run"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, throwaway_user.pw_uid, throwaway_user.pw_gid)
    yield runtime
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def secret() -> Iterator[Path]:
    vault = Path(tempfile.mkdtemp(prefix="aegis-root-vault-"))
    os.chmod(vault, 0o700)
    path = vault / "secret.jsonl"
    path.write_text(json.dumps({"event": "connect", "ts": 1.0, "pid": 1, "fd": 3,
                                "addr": "203.0.113.9", "port": 443, "host": "root-only-secret",
                                "proto": "tcp", "result": "ok"}) + "\n")
    os.chmod(path, 0o600)
    yield path
    shutil.rmtree(vault, ignore_errors=True)


def _fake_supervisor(user: pwd.struct_passwd, runtime: Path, log: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-I", "-c", FAKE_SUPERVISOR, str(runtime), log],
                            user=user.pw_uid, group=user.pw_gid, stdout=subprocess.PIPE,
                            text=True, cwd="/")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "LISTENING"
    return proc


def test_a_supervisor_cannot_make_root_read_or_write_its_files(
        throwaway_user: pwd.struct_passwd, attacker_runtime: Path, secret: Path,
        aegis_env: dict[str, str]) -> None:
    link = attacker_runtime / "netmon-1.jsonl"
    os.symlink(secret, link)
    os.lchown(link, throwaway_user.pw_uid, throwaway_user.pw_gid)
    # the user's own, real log: the view must still read it
    own = attacker_runtime / "netmon-2.jsonl"
    own.write_text(json.dumps({"event": "connect", "ts": 2.0, "pid": 7, "fd": 4,
                               "addr": "127.0.0.1", "port": 8080, "proto": "tcp",
                               "result": "ok"}) + "\n")
    os.chown(own, throwaway_user.pw_uid, throwaway_user.pw_gid)
    before = secret.read_bytes()
    fakes = [_fake_supervisor(throwaway_user, attacker_runtime, log)
             for log in (str(secret), str(link), str(own))]
    try:
        env = {**aegis_env, "AEGIS_RUNTIME_DIR": str(attacker_runtime)}
        out = wait_for(lambda: (o if len(json.loads((o := subprocess.run(
            [aegis_bin(), "top", "--json"], env=env, capture_output=True, text=True,
            timeout=60)).stdout or "{}").get("supervisors", [])) == 3 else None), 30,
            "the three fake supervisors listed")
        assert out.returncode == 0, out.stderr
        rows = {s["pid"]: s for s in json.loads(out.stdout)["supervisors"]}
        direct, linked, real = (rows[p.pid] for p in fakes)
        for row in (direct, linked):
            assert row["owner_uid"] == throwaway_user.pw_uid
            assert row["network"]["error"], row  # read as the user: refused
            assert "root-only-secret" not in json.dumps(row)
        assert real["network"]["error"] is None and real["network"]["connections"] == 1
        assert secret.read_bytes() == before
        assert sorted(p.name for p in secret.parent.iterdir()) == ["secret.jsonl"]
    finally:
        for proc in fakes:
            proc.kill()
            proc.wait()

    # the log screen's reader, as root, for that user's supervisor
    uid = throwaway_user.pw_uid
    with pytest.raises(NotTheirs):
        Tail(secret, owner=uid).read()
    with pytest.raises(OSError):
        Tail(link, owner=uid).read()  # a symlink is not followed
    fifo = attacker_runtime / "netmon-3.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(NotTheirs):
        Tail(fifo, owner=uid).read()  # and a FIFO does not hang it
    tail = Tail(own, owner=uid)
    assert "8080" in tail.read()[0]
    tail.close()
