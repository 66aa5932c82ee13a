"""libaegis_hooks.so under real programs against loopback servers: each program's output is the
same as without the hook, and the log has the right events with byte counts that match what
the server saw, to the byte."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.host import aegis_bin
from tests.support.snippets.harness import (
    LIB,
    RawHTTPServer,
    compile_snippet,
    conns_to,
    events,
    hooked_env,
    plain_env,
    run,
)

pytestmark = pytest.mark.skipif(not Path(LIB).exists(), reason=f"{LIB} is not built")


@pytest.fixture
def server() -> Iterator[RawHTTPServer]:
    srv = RawHTTPServer()
    yield srv
    srv.close()


def same_output(cmd: list[str], log: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """Runs `cmd` without and with the hook; asserts identical stdout and exit status."""
    plain = run(cmd, plain_env(**extra))
    hooked = run(cmd, hooked_env(log, **extra))
    assert plain.returncode == hooked.returncode, (plain.stderr, hooked.stderr)
    assert plain.stdout == hooked.stdout
    return hooked


def check_exact(log: Path, srv: RawHTTPServer, runs: int = 1) -> list[dict]:
    """The hooked run's connection(s) carried exactly what the server saw (the plain run's
    connections are the first `runs` ones the server recorded)."""
    served = srv.wait(2 * runs)
    closes = conns_to(log, srv.port)
    assert len(closes) == runs, events(log)
    hooked_side = sorted((s.received, s.sent) for s in served[runs:])
    assert sorted((c["sent"], c["recv"]) for c in closes) == hooked_side
    return closes


def test_curl(tmp_path: Path, server: RawHTTPServer) -> None:
    log = tmp_path / "log.jsonl"
    out = same_output(["curl", "-sS", server.url("/x")], log)
    assert out.stdout == server.body.decode()
    (close,) = check_exact(log, server)
    connects = [e for e in events(log, "connect") if e["port"] == server.port]
    assert len(connects) == 1
    c = connects[0]
    assert (c["family"], c["proto"], c["addr"], c["exe"]) == ("ipv4", "tcp", "127.0.0.1", "curl")
    assert c["result"] in ("ok", "EINPROGRESS") and c["source"] == "preload"
    assert close["result"] == "ok" and close["duration"] >= 0 and close["pid"] == c["pid"]


def test_python_urllib_names_the_host(tmp_path: Path, server: RawHTTPServer) -> None:
    log = tmp_path / "log.jsonl"
    code = ("import urllib.request,sys;"
            f"sys.stdout.write(urllib.request.urlopen('http://localhost:{server.port}/').read()"
            ".decode())")
    out = same_output([sys.executable, "-c", code], log)
    assert out.stdout == server.body.decode()
    (close,) = check_exact(log, server)
    assert close["host"] == "localhost"
    dns = events(log, "dns")
    assert dns and dns[0]["host"] == "localhost" and "127.0.0.1" in dns[0]["answers"]


def test_python_asyncio(tmp_path: Path, server: RawHTTPServer) -> None:
    log = tmp_path / "log.jsonl"
    code = textwrap.dedent(f"""
        import asyncio, sys
        async def main():
            r, w = await asyncio.open_connection('127.0.0.1', {server.port})
            w.write(b'GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n')
            await w.drain()
            data = await r.read()
            w.close()
            await w.wait_closed()
            sys.stdout.write(data.decode())
        asyncio.run(main())
    """)
    out = same_output([sys.executable, "-c", code], log)
    assert out.stdout.endswith(server.body.decode())
    check_exact(log, server)


@pytest.mark.skipif(not shutil.which("node"), reason="node is not installed")
def test_node_http_and_fetch(tmp_path: Path, server: RawHTTPServer) -> None:
    # libuv closes sockets with syscall(SYS_close): the close events prove that hook.
    log = tmp_path / "log.jsonl"
    code = textwrap.dedent(f"""
        const http = require('http');
        http.get('http://127.0.0.1:{server.port}/a', res => {{
          let body = '';
          res.on('data', c => body += c);
          res.on('end', async () => {{
            process.stdout.write('http:' + body);
            const r = await fetch('http://localhost:{server.port}/b');
            process.stdout.write('fetch:' + await r.text());
          }});
        }});
    """)
    out = same_output(["node", "-e", code], log)
    assert out.stdout == f"http:{server.body.decode()}fetch:{server.body.decode()}"
    closes = check_exact(log, server, runs=2)
    assert {c["exe"] for c in closes} == {"node"}
    assert any(c["host"] == "localhost" for c in closes)


@pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")
def test_git_clone_over_git_daemon(tmp_path: Path) -> None:
    repo = tmp_path / "srv" / "repo.git"
    work = tmp_path / "work"
    env = plain_env(GIT_CONFIG_GLOBAL="/dev/null", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
                    GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(["git", "init", "-q", str(work)], check=True, env=env)
    (work / "file.txt").write_bytes(os.urandom(6000).hex().encode())
    subprocess.run(["git", "-C", str(work), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "one"], check=True, env=env)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(repo)], check=True, env=env)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={tmp_path / 'srv'}",
         "--listen=127.0.0.1", f"--port={port}", str(tmp_path / "srv")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # bounded wait for the daemon's socket
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            subprocess.run(["sleep", "0.05"], check=True)
        log = tmp_path / "log.jsonl"
        url = f"git://127.0.0.1:{port}/repo.git"
        plain = run(["git", "clone", "-q", url, str(tmp_path / "a")], env)
        hooked = run(["git", "clone", "-q", url, str(tmp_path / "b")],
                     {**hooked_env(log), **{k: v for k, v in env.items() if "GIT" in k}})
        assert plain.returncode == hooked.returncode == 0, hooked.stderr
        cloned = [(tmp_path / d / "file.txt").read_text() for d in ("a", "b")]
        assert cloned[0] == cloned[1]
    finally:
        daemon.terminate()
        daemon.wait(10)
    # git writes on a dup() of the socket: both fds report, one connection
    closes = conns_to(log, port)
    assert len([e for e in events(log, "connect") if e["port"] == port]) == 1
    assert sum(c["sent"] for c in closes) > 100
    assert sum(c["recv"] for c in closes) > 1000  # the pack carries the file
    assert any(c.get("dup_of") == closes[0]["fd"] or "dup_of" in c for c in closes)

    from aegis_mcp.netmon import summary as netsummary

    status = netsummary.status(log)
    assert status["connections"] == 1
    assert status["bytes_sent"] == sum(c["sent"] for c in closes)


def test_multithreaded_client_counts_every_byte(tmp_path: Path, server: RawHTTPServer) -> None:
    log = tmp_path / "log.jsonl"
    code = textwrap.dedent(f"""
        import socket, threading
        def worker(i):
            for j in range(10):
                with socket.create_connection(('127.0.0.1', {server.port})) as s:
                    s.sendall(b'GET /%d/%d HTTP/1.0\\r\\n\\r\\n' % (i, j))
                    while s.recv(65536):
                        pass
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        print('done')
    """)
    out = run([sys.executable, "-c", code], hooked_env(log))
    assert out.stdout == "done\n", out.stderr
    served = server.wait(80)
    closes = conns_to(log, server.port)
    assert len(closes) == 80
    assert sum(c["sent"] for c in closes) == sum(s.received for s in served)
    assert sum(c["recv"] for c in closes) == sum(s.sent for s in served)


def test_fork_exec_and_a_child_without_the_hook(tmp_path: Path, server: RawHTTPServer) -> None:
    log = tmp_path / "log.jsonl"
    curl = shutil.which("curl")
    code = textwrap.dedent(f"""
        import os, socket, subprocess, sys
        s = socket.create_connection(('127.0.0.1', {server.port}))
        s.sendall(b'GET /parent HTTP/1.0\\r\\n\\r\\n')
        pid = os.fork()
        if pid == 0:
            c = socket.create_connection(('127.0.0.1', {server.port}))
            c.sendall(b'GET /child HTTP/1.0\\r\\n\\r\\n')
            while c.recv(65536):
                pass
            c.close()
            os.execv({curl!r}, ['curl', '-s', '-o', '/dev/null', '{server.url('/exec')}'])
        os.waitpid(pid, 0)
        while s.recv(65536):
            pass
        s.close()
        subprocess.run([{curl!r}, '-s', '-o', '/dev/null', '{server.url('/bare')}'],
                       env={{'PATH': '/usr/bin:/bin'}}, check=True)
        print('parent', os.getpid(), 'child', pid)
    """)
    out = run([sys.executable, "-c", code], hooked_env(log))
    assert out.returncode == 0, out.stderr
    _, parent, _, child = out.stdout.split()
    served = server.wait(4)
    closes = conns_to(log, server.port)
    # the parent's connection once (not again from the child that inherited it), the child's
    # own, curl exec'd in the child (same pid, new exe), and nothing from the curl without
    # the hook: that one is a gap
    assert len(closes) == 3, closes
    assert sorted(c["pid"] for c in closes) == sorted([int(parent), int(child), int(child)])
    assert any(c["pid"] == int(child) and c["exe"] == "curl" for c in closes)
    hooked_paths = ("/parent", "/child", "/exec")
    assert sum(c["sent"] for c in closes) == sum(
        s.received for s in served if s.path in hooked_paths)
    assert sum(c["recv"] for c in closes) == sum(s.sent for s in served if s.path in hooked_paths)
    gaps = events(log, "gap")
    # written by the exec hook in the (v)fork child that subprocess starts
    assert len(gaps) == 1 and int(parent) in (gaps[0]["pid"], gaps[0]["ppid"])
    assert "LD_PRELOAD" in gaps[0]["reason"] and gaps[0]["target"].endswith("curl")
    assert len(served) == 4


def test_ipv6_loopback(tmp_path: Path) -> None:
    try:
        srv = RawHTTPServer(family=socket.AF_INET6, host="::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        log = tmp_path / "log.jsonl"
        out = same_output(["curl", "-sS", "-g", srv.url("/")], log)
        assert out.stdout == srv.body.decode()
        (close,) = check_exact(log, srv)
        assert (close["family"], close["addr"]) == ("ipv6", "::1")
    finally:
        srv.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connections(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "log.jsonl"
    # curl connects non-blocking: EINPROGRESS, then the refusal via SO_ERROR
    out = same_output(["curl", "-sS", f"http://127.0.0.1:{port}/"], log)
    assert out.returncode == 7
    code = (f"import socket\ntry:\n socket.create_connection(('127.0.0.1', {port}))\n"
            "except ConnectionRefusedError as e:\n print('refused', e.errno)")
    out = same_output([sys.executable, "-c", code], log)
    assert out.stdout.startswith("refused")
    evs = [e for e in events(log) if e.get("port") == port]
    py = [e for e in evs if e["exe"].startswith("python")]
    assert [e["event"] for e in py] == ["connect"] and py[0]["result"] == "ECONNREFUSED"
    cu = [e for e in evs if e["exe"] == "curl"]
    assert cu[-1]["event"] == "close" and cu[-1]["result"] == "ECONNREFUSED"
    assert cu[-1]["sent"] == cu[-1]["recv"] == 0

    from aegis_mcp.netmon import summary as netsummary

    status = netsummary.status(log)
    assert status["failed_connections"] == 2 and status["connections"] == 0


def test_nonblocking_connect(tmp_path: Path, server: RawHTTPServer) -> None:
    log = tmp_path / "log.jsonl"
    code = textwrap.dedent(f"""
        import errno, select, socket
        s = socket.socket()
        s.setblocking(False)
        rc = s.connect_ex(('127.0.0.1', {server.port}))
        select.select([], [s], [], 5)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        s.setblocking(True)
        s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
        data = b''
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        print(errno.errorcode.get(rc, rc), err, len(data))
    """)
    out = same_output([sys.executable, "-c", code], log)
    assert out.stdout.split()[:2] == ["EINPROGRESS", "0"]
    (close,) = check_exact(log, server)
    connect = [e for e in events(log, "connect") if e["port"] == server.port][0]
    assert connect["result"] == "EINPROGRESS" and close["result"] == "ok"


def test_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "srv.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    log = tmp_path / "log.jsonl"
    code = (f"import socket\ns=socket.socket(socket.AF_UNIX)\ns.connect({str(path)!r})\n"
            "s.sendall(b'x'*1234)\nprint(len(s.recv(100)))\ns.close()")
    proc = subprocess.Popen([sys.executable, "-c", code], env=hooked_env(log),
                            stdout=subprocess.PIPE, text=True)
    conn, _ = srv.accept()
    got = b""
    while len(got) < 1234:
        got += conn.recv(4096)
    conn.sendall(b"y" * 77)
    assert proc.communicate(timeout=20)[0] == "77\n"
    conn.close()
    srv.close()
    (close,) = events(log, "close")
    assert (close["family"], close["proto"], close["addr"], close["port"]) == (
        "unix", "unix", str(path), None)
    assert (close["sent"], close["recv"]) == (1234, 77)


def test_aegis_mcps_own_sockets_are_not_the_agents_traffic(tmp_path: Path) -> None:
    """The unix sockets in aegis-mcp's runtime directory (that of AEGIS_CONTROL: the control
    socket, the warm MCP server's) are its plumbing: neither a connect to them nor an accept
    on them is recorded. A socket elsewhere, even one named alike, is."""
    run_dir, other = tmp_path / "run", tmp_path / "elsewhere"
    run_dir.mkdir()
    other.mkdir()
    paths = [run_dir / "supervisor-1.sock", run_dir / "mcp-1.sock", other / "supervisor-1.sock"]
    servers = []
    for path in paths:
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(str(path))
        srv.listen(4)
        servers.append(srv)
    log = tmp_path / "log.jsonl"
    client = ("import socket, sys\n"
              "for p in sys.argv[1:]:\n"
              "    s = socket.socket(socket.AF_UNIX); s.connect(p); s.sendall(b'hi'); s.close()\n")
    env = hooked_env(log, AEGIS_CONTROL=str(paths[0]))
    out = run([sys.executable, "-c", client, *map(str, paths)], env)
    assert out.returncode == 0, out.stderr
    # a server of aegis-mcp's own under the hooks (as the warm server would be): no accept
    server = ("import socket, sys\n"
              "srv = socket.socket(socket.AF_UNIX); srv.bind(sys.argv[1]); srv.listen(1)\n"
              "print('ready', flush=True)\n"
              "c, _ = srv.accept(); c.recv(10); c.close()\n")
    listening = run_dir / "warm.sock"
    proc = subprocess.Popen([sys.executable, "-c", server, str(listening)], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(listening))
        s.sendall(b"x")
    assert proc.wait(20) == 0
    for srv in servers:
        srv.close()
    assert {e["addr"] for e in events(log)} == {str(paths[2])}
    assert [e["event"] for e in events(log)] == ["connect", "close"]


def test_a_name_belongs_to_the_process_that_resolved_it(tmp_path: Path,
                                                        server: RawHTTPServer) -> None:
    """10 curl requests to 127.0.0.1 and 10 Python requests to localhost, interleaved, into one
    log: curl's connections stay 127.0.0.1 (it resolved nothing), Python's are localhost."""
    log = tmp_path / "log.jsonl"
    fetch = f"import urllib.request; urllib.request.urlopen('http://localhost:{server.port}/')"
    # a pair at a time: interleaved in the log, without twenty programs starting at once on
    # a busy machine
    for _ in range(10):
        pair = [subprocess.Popen([sys.executable, "-c", fetch], env=hooked_env(log),
                                 stderr=subprocess.PIPE, text=True),
                subprocess.Popen(["curl", "-sS", "-o", "/dev/null", server.url("/")],
                                 env=hooked_env(log), stderr=subprocess.PIPE, text=True)]
        for p in pair:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, (p.args, err)
    from aegis_mcp.netmon import summary as netsummary

    status = netsummary.status(log)
    hosts = {h["host"]: h["connections"] for h in status["top_hosts"]}
    assert hosts == {"localhost": 10, "127.0.0.1": 10}, hosts
    out = subprocess.run([aegis_bin(), "netmon", str(log)], capture_output=True, text=True,
                         timeout=60)
    assert f"localhost:{server.port}" in out.stdout and f"127.0.0.1:{server.port}" in out.stdout
    assert "20 connections (" in out.stdout


@pytest.mark.parametrize("ending", ["sys.exit(0)", "os._exit(0)"])
def test_open_sockets_are_reported_at_exit(tmp_path: Path, server: RawHTTPServer,
                                            ending: str) -> None:
    log = tmp_path / "log.jsonl"
    code = (f"import os, socket, sys\ns = socket.create_connection(('127.0.0.1', {server.port}))\n"
            "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nd = b''\n"
            "while len(d) < 10: d += s.recv(65536)\n"
            "s.detach()\n" + ending)  # the fd stays open: nothing closes it before the exit
    out = run([sys.executable, "-c", code], hooked_env(log))
    assert out.returncode == 0, out.stderr
    (close,) = conns_to(log, server.port)
    assert close["reason"] == "exit" and close["sent"] == 18 and close["recv"] >= 10


def test_periodic_totals_on_a_long_connection(tmp_path: Path, server: RawHTTPServer) -> None:
    log = tmp_path / "log.jsonl"
    code = textwrap.dedent(f"""
        import socket, time
        s = socket.create_connection(('127.0.0.1', {server.port}))
        s.sendall(b'GET / HTTP/1.0\\r\\n')
        for i in range(25):  # 2.5 s of small writes
            s.sendall(b'X-A: b\\r\\n')
            time.sleep(0.1)
        s.sendall(b'\\r\\n')
        while s.recv(65536):
            pass
        s.close()
    """)
    out = run([sys.executable, "-c", code], hooked_env(log, AEGIS_NETMON_INTERVAL="1"))
    assert out.returncode == 0, out.stderr
    totals = [e for e in events(log, "totals") if e["port"] == server.port]
    assert len(totals) >= 1
    assert all(t["sent"] > 0 and t["duration"] > 0.9 for t in totals)
    sents = [t["sent"] for t in totals] + [conns_to(log, server.port)[0]["sent"]]
    assert sents == sorted(sents)  # totals so far: never decreasing
    assert sents[-1] == server.wait(1)[0].received


def test_unwritable_log_changes_nothing(tmp_path: Path, server: RawHTTPServer) -> None:
    out = same_output(["curl", "-sS", server.url("/")], tmp_path / "no" / "such" / "dir" / "log")
    assert out.stdout == server.body.decode() and out.stderr == ""


def test_rotation_keeps_the_log_bounded_and_the_summary_whole(tmp_path: Path,
                                                              server: RawHTTPServer) -> None:
    from aegis_mcp.netmon import log as netlog
    from aegis_mcp.netmon import summary as netsummary

    log = tmp_path / "log.jsonl"
    code = textwrap.dedent(f"""
        import socket
        for i in range(60):
            with socket.create_connection(('127.0.0.1', {server.port})) as s:
                s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
                while s.recv(65536):
                    pass
    """)
    out = run([sys.executable, "-c", code], hooked_env(log, AEGIS_NETMON_MAX_BYTES="15000"))
    assert out.returncode == 0, out.stderr
    rotated = netlog.rotated_path(log)
    assert rotated.exists()
    # 60 connections x 2 events x ~240 bytes: exactly one rotation at 15000 bytes
    assert 15000 <= rotated.stat().st_size < 15000 + 1000 and log.stat().st_size < 15000
    status = netsummary.status(log)
    assert status["connections"] == 60 and not status["events_lost_to_rotation"]
    assert status["bytes_sent"] == 60 * 18 and status["bytes_received"] == 60 * 104
    tail = netlog.tail(log, 120)
    assert len(tail) == 120 and tail[0]["event"] == "connect" and tail[-1]["event"] == "close"


def test_library_alone_is_silent_and_harmless(tmp_path: Path, server: RawHTTPServer) -> None:
    """LD_PRELOAD without AEGIS_NETMON_LOG (injection only): records nothing, changes nothing."""
    env = hooked_env(None)
    out = run(["curl", "-sS", server.url("/")], env, cwd=tmp_path)
    assert out.stdout == server.body.decode()
    assert list(tmp_path.iterdir()) == []


def test_errno_and_return_values_are_untouched(tmp_path: Path, server: RawHTTPServer) -> None:
    exe = compile_snippet("errno_check.c", tmp_path)
    args = [str(exe), "127.0.0.1", str(server.port), str(free_port())]
    plain = run(args, plain_env())
    hooked = run(args, hooked_env(tmp_path / "log.jsonl"))
    assert plain.returncode == hooked.returncode == 0, hooked.stderr
    assert plain.stdout == hooked.stdout
    assert "connect refused -1 ECONNREFUSED" in hooked.stdout
    assert events(tmp_path / "log.jsonl", "connect")


def test_exec_of_a_static_binary_is_a_gap(tmp_path: Path) -> None:
    src = tmp_path / "static.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts("static"); return 0; }\n')
    exe = tmp_path / "static-prog"
    subprocess.run(["gcc", "-static", "-o", str(exe), str(src)], check=True, timeout=60)
    log = tmp_path / "log.jsonl"
    out = same_output(["sh", "-c", f"{exe}; {exe}"], log)
    assert out.stdout == "static\nstatic\n"
    gaps = events(log, "gap")
    assert len(gaps) == 2 and all(g["target"] == str(exe) for g in gaps)
    assert all("statically linked" in g["reason"] and "netns" in g["reason"] for g in gaps)


def test_exec_of_a_setuid_program_is_a_gap(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a program another owner")
    prog = tmp_path / "suid-true"
    shutil.copy("/bin/true", prog)
    os.chown(prog, 65534, 65534)
    prog.chmod(0o4755)
    tmp_path.chmod(0o755)
    log = tmp_path / "log.jsonl"
    out = same_output(["sh", "-c", str(prog)], log)
    assert out.returncode == 0
    (gap,) = events(log, "gap")
    assert gap["target"] == str(prog) and "set-user-ID" in gap["reason"]


def test_spawning_children_leaves_the_parents_sockets_alone(tmp_path: Path,
                                                            server: RawHTTPServer) -> None:
    """subprocess (vfork + close_range in the child, sharing the parent's memory) and
    posix_spawn while a socket is open: the parent's counts stay whole and only it reports."""
    log = tmp_path / "log.jsonl"
    code = textwrap.dedent(f"""
        import os, socket, subprocess
        s = socket.create_connection(('127.0.0.1', {server.port}))
        s.sendall(b'GET / HTTP/1.0\\r\\n')
        for i in range(3):
            subprocess.run(['true'], check=True, close_fds=True)
            os.waitpid(os.posix_spawn('/bin/true', ['true'], dict(os.environ)), 0)
            s.sendall(b'X-A: 1\\r\\n')
        s.sendall(b'\\r\\n')
        while s.recv(65536):
            pass
        s.close()
        print(os.getpid())
    """)
    out = run([sys.executable, "-c", code], hooked_env(log))
    assert out.returncode == 0, out.stderr
    (close,) = conns_to(log, server.port)
    assert close["pid"] == int(out.stdout) and "reason" not in close
    assert (close["sent"], close["recv"]) == (server.wait(1)[0].received, server.wait(1)[0].sent)


def test_threads_fds_reused_dups_and_forks(tmp_path: Path, server: RawHTTPServer) -> None:
    from aegis_mcp.netmon import summary as netsummary

    exe = compile_snippet("stress.c", tmp_path)
    log = tmp_path / "log.jsonl"
    out = run([str(exe), str(server.port), "6", "50"], hooked_env(log), timeout=120)
    assert out.returncode == 0, out.stderr
    sent, recv = map(int, out.stdout.split())
    server.wait(300)
    connects = [e for e in events(log, "connect") if e["port"] == server.port]
    closes = conns_to(log, server.port)
    assert len(connects) == 300 and len({e["pid"] for e in closes}) == 1  # not the children
    assert sum(c["sent"] for c in closes) == sent and sum(c["recv"] for c in closes) == recv
    status = netsummary.status(log)
    assert (status["connections"], status["bytes_sent"], status["bytes_received"]) == (
        300, sent, recv)
    assert status["open_connections"] == 0


def test_zero_copy_sendfile_and_splice(tmp_path: Path, server: RawHTTPServer) -> None:
    # Bytes that cross a socket without a send or recv call: Python's socket.sendfile (glibc's
    # sendfile64), and a C program's sendfile and splice (a proxy's way to move data).
    request = tmp_path / "request"
    request.write_bytes(b"GET /zero-copy HTTP/1.0\r\n" + b"X-Pad: abcdefgh\r\n" * 4000 + b"\r\n")
    code = textwrap.dedent(f"""
        import socket, sys
        with socket.create_connection(('127.0.0.1', {server.port})) as s, \\
                open(sys.argv[1], 'rb') as f:
            s.sendfile(f)
            data = b''
            while chunk := s.recv(65536):
                data += chunk
        print(data.split(b'\\r\\n\\r\\n', 1)[1].decode())
    """)
    log = tmp_path / "py.jsonl"
    same_output([sys.executable, "-c", code, str(request)], log)
    (close,) = check_exact(log, server)
    assert close["sent"] == request.stat().st_size

    exe = compile_snippet("zero_copy.c", tmp_path)
    log = tmp_path / "c.jsonl"
    same_output([str(exe), str(server.port), str(request)], log)
    (close,) = conns_to(log, server.port)
    hooked = server.wait(4)[3]  # after the Python pair and the C program's plain run
    assert (close["sent"], close["recv"]) == (hooked.received, hooked.sent)
    assert close["sent"] == request.stat().st_size and close["recv"] > 0
