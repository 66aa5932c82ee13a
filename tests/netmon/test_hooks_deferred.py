"""A connection's connect line is deferred: written with its close in one write when the
connection is short, and on its own once the connection has lived a quarter second and the
program does anything more with it or with the network (docs/netmon.md, "The log")."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.snippets.harness import LIB, RawHTTPServer, events, hooked_env, run

pytestmark = pytest.mark.skipif(not Path(LIB).exists(), reason=f"{LIB} is not built")


@pytest.fixture
def server() -> Iterator[RawHTTPServer]:
    srv = RawHTTPServer()
    yield srv
    srv.close()


class Holder:
    """A loopback server that accepts and keeps every connection open, reading what comes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accept before the fd goes (harness.py)
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def holder() -> Iterator[Holder]:
    h = Holder()
    yield h
    h.close()


def test_a_short_connection_writes_connect_and_close_together(tmp_path: Path,
                                                              server: RawHTTPServer) -> None:
    log = tmp_path / "log.jsonl"
    code = textwrap.dedent(f"""
        import socket
        for i in range(5):
            with socket.create_connection(('127.0.0.1', {server.port})) as s:
                s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
                while s.recv(65536):
                    pass
    """)
    out = run([sys.executable, "-c", code], hooked_env(log))
    assert out.returncode == 0, out.stderr
    mine = [e for e in events(log) if e.get("port") == server.port]
    assert [e["event"] for e in mine] == ["connect", "close"] * 5
    for connect, close in zip(mine[::2], mine[1::2], strict=True):
        assert (connect["pid"], connect["fd"]) == (close["pid"], close["fd"])
        assert connect["result"] == "ok" and connect["duration"] is None
        assert connect["sent"] == connect["recv"] == 0
        # the connect line keeps the time of the connect, not of its writing
        assert connect["ts"] <= close["ts"] and close["duration"] >= 0
        assert close["sent"] == 18 and close["recv"] == len(server.response)


def wait_line(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """The program's next line of stdout, waiting at most `timeout` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the program said nothing"
    return proc.stdout.readline().strip()


@pytest.mark.parametrize("then", ["send", "connect elsewhere", "close elsewhere"])
def test_a_long_lived_connection_shows_its_connect_while_open(
        tmp_path: Path, holder: Holder, server: RawHTTPServer, then: str) -> None:
    """Connection A stays open and idle; a quarter second later the program sends on it, or
    makes (or closes) another connection: A's connect line is in the log while A is still open,
    and stays there when the program is killed with SIGKILL."""
    log = tmp_path / "log.jsonl"
    action = {
        "send": "a.sendall(b'ping')",
        "connect elsewhere": f"b = socket.create_connection(('127.0.0.1', {server.port}))",
        "close elsewhere": "b.close()",
    }[then]
    code = textwrap.dedent(f"""
        import socket, sys, time
        a = socket.create_connection(('127.0.0.1', {holder.port}))
        b = socket.socket()
        b.connect(('127.0.0.1', {holder.port}))
        time.sleep(0.6)
        {action}
        print('ready', a.fileno(), flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=hooked_env(log), text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        word, fd = wait_line(proc).split()
        assert word == "ready"

        def of_a(kind: str) -> list[dict]:
            return [e for e in events(log, kind) if e["port"] == holder.port
                    and e["fd"] == int(fd)]

        # The line is written before the call that triggered it returns: no wait needed.
        connects = of_a("connect")
        assert len(connects) == 1, events(log)
        assert connects[0]["result"] == "ok" and connects[0]["pid"] == proc.pid
        assert not of_a("close")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert of_a("connect") == connects and not of_a("close")


def test_a_quiet_program_writes_nothing_until_it_acts(tmp_path: Path, holder: Holder) -> None:
    """The limit, as documented: a connection opened less than a quarter second before the
    program acted last, and idle since, has no line yet; its close (or the exit) writes it."""
    log = tmp_path / "log.jsonl"
    code = textwrap.dedent(f"""
        import socket, sys
        a = socket.create_connection(('127.0.0.1', {holder.port}))
        print('ready', flush=True)
        sys.stdin.readline()
        a.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=hooked_env(log), text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert wait_line(proc) == "ready"
        time.sleep(0.5)  # past the deferral: still nothing, the program did nothing more
        assert not [e for e in events(log) if e.get("port") == holder.port]
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    mine = [e["event"] for e in events(log) if e.get("port") == holder.port]
    assert mine == ["connect", "close"]
