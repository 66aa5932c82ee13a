"""The hooks batch their lines (docs/netmon.md, "The log"): a run of short connections costs a
few writes of the log, not one per connection; yet the log is never behind what the program
printed, a program that goes idle (a sleep, an event loop's wait, a read of its terminal) has
its lines written before it waits, and a fork writes each line once."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.snippets.harness import LIB, RawHTTPServer, events, hooked_env

pytestmark = pytest.mark.skipif(not Path(LIB).exists(), reason=f"{LIB} is not built")

# `count` short connections to the server, one after another; then what `then` says.
CLIENT = """
import os, socket, sys, time
port, count, then = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for i in range(count):
    with socket.create_connection(('127.0.0.1', port)) as s:
        s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
        while s.recv(65536):
            pass
if then == 'print':
    print('done', flush=True)
    sys.stdin.read()
elif then == 'sleep':
    time.sleep(60)
elif then == 'poll':
    import selectors
    sel = selectors.DefaultSelector()
    r, w = os.pipe()
    sel.register(r, selectors.EVENT_READ)
    sel.select(60)
elif then == 'fork':
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
"""


@pytest.fixture
def server() -> Iterator[RawHTTPServer]:
    srv = RawHTTPServer()
    yield srv
    srv.close()


def log_writes(log: Path, env: dict[str, str], *args: str) -> tuple[int, int]:
    """Runs the client under strace: (the log's opens, its lines)."""
    trace = log.with_suffix(".strace")
    out = subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat", "-o", str(trace),
                          sys.executable, "-c", CLIENT, *args], env=env, capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    opens = sum(str(log) in line for line in trace.read_text().splitlines())
    return opens, len(events(log))


def test_a_run_of_short_connections_is_written_in_a_few_writes(
        tmp_path: Path, server: RawHTTPServer) -> None:
    log = tmp_path / "log.jsonl"
    opens, lines = log_writes(log, hooked_env(log), str(server.port), "40", "exit")
    assert lines == 80  # every connect and close, none lost
    assert opens <= 12, opens  # 40 connections: about 8 KiB of lines per write
    mine = [e for e in events(log) if e.get("port") == server.port]
    assert [e["event"] for e in mine] == ["connect", "close"] * 40  # and in order
    # AEGIS_NETMON_BATCH_MS=0: each connection written as it closes, as before batching
    log0 = tmp_path / "log0.jsonl"
    opens0, lines0 = log_writes(log0, hooked_env(log0, AEGIS_NETMON_BATCH_MS="0"),
                                str(server.port), "40", "exit")
    assert lines0 == 80 and opens0 >= 40


def test_the_log_is_never_behind_what_the_program_printed(tmp_path: Path,
                                                          server: RawHTTPServer) -> None:
    log = tmp_path / "log.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(server.port), "10", "print"],
                            env=hooked_env(log), text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline().strip() == "done"
        # read at once, while the program waits on its stdin: nothing missing
        assert [e["event"] for e in events(log)] == ["connect", "close"] * 10
    finally:
        proc.kill()
        proc.wait(30)


@pytest.mark.parametrize("then", ["sleep", "poll"])
def test_a_program_that_waits_has_written_its_lines(tmp_path: Path, server: RawHTTPServer,
                                                    then: str) -> None:
    """The program goes idle for a minute after its connections: their lines are in the log
    while it waits, long before the minute (AEGIS_NETMON_BATCH_MS made huge so that only the
    wait can have written them)."""
    log = tmp_path / "log.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(server.port), "5", then],
                            env=hooked_env(log, AEGIS_NETMON_BATCH_MS="60000"),
                            stdin=subprocess.DEVNULL)
    try:
        server.wait(5, timeout=60)
        deadline = time.monotonic() + 20
        while len(events(log)) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e["event"] for e in events(log)] == ["connect", "close"] * 5
        assert proc.poll() is None  # still waiting: the wait wrote them, not the exit
    finally:
        proc.kill()
        proc.wait(30)


def test_a_fork_writes_each_line_once(tmp_path: Path, server: RawHTTPServer) -> None:
    log = tmp_path / "log.jsonl"
    out = subprocess.run([sys.executable, "-c", CLIENT, str(server.port), "6", "fork"],
                         env=hooked_env(log, AEGIS_NETMON_BATCH_MS="60000"),
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert [e["event"] for e in events(log)] == ["connect", "close"] * 6
