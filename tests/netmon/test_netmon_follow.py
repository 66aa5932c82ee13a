"""`aegis-mcp netmon --follow` as a user meets it: real supervisors (preload mode) whose agents
make real requests to a loopback server, followed by the real command, piped and on a
terminal. Without a target it follows the live supervisor, waits for one, says when it ended
and moves to the next; an explicit target stays; each event comes out as it is written."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pexpect
import pytest

from tests.support.host import aegis_bin
from tests.support.wait import wait_for

# The agent: `count` requests to the URL, `gap` seconds apart, after `delay` seconds.
AGENT = """
import sys, time, urllib.request
url, count, gap, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
time.sleep(delay)
for i in range(count):
    urllib.request.urlopen(url, timeout=10).read()
    time.sleep(gap)
"""


class Quiet(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def supervisor(env: dict[str, str], cwd: Path, url: str, count: int = 3, gap: float = 0.4,
               delay: float = 0.0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [aegis_bin(), "--netmon=preload", "--no-inject-mcp", "--", sys.executable, "-c", AGENT,
         url, str(count), str(gap), str(delay)],
        env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)


class Follower:
    """`aegis-mcp netmon --follow --json ...` piped, its lines collected as they arrive."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([aegis_bin(), "netmon", "--follow", "--json", *args],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.events: list[tuple[float, dict]] = []  # (arrival time, event)
        self.said: list[str] = []
        threading.Thread(target=self._events, daemon=True).start()
        threading.Thread(target=self._said, daemon=True).start()

    def _events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append((time.time(), json.loads(line)))

    def _said(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.said.append(line.rstrip("\n"))

    def wait_said(self, text: str, timeout: float = 20) -> str:
        return wait_for(lambda: next((s for s in self.said if text in s), None), timeout,
                        f"the follower to say {text!r} (it said {self.said})")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(10)


def agent_events(follower: Follower, sup: subprocess.Popen[str]) -> list[dict]:
    """The events of the agent of supervisor `sup` (its child)."""
    return [ev for _, ev in follower.events if ev.get("ppid") == sup.pid]


def test_follow_waits_for_a_supervisor_says_it_ended_and_moves_to_the_next(
        aegis_env: dict[str, str], tmp_path: Path, url: str) -> None:
    follow = Follower(aegis_env)
    try:
        follow.wait_said("waiting for a supervisor with network monitoring")
        first = supervisor(aegis_env, tmp_path, url)
        follow.wait_said(f"following supervisor {first.pid}:")
        assert first.wait(60) == 0, first.stderr.read() if first.stderr else ""
        follow.wait_said(f"supervisor {first.pid} has ended; waiting for a supervisor")
        wait_for(lambda: len(agent_events(follow, first)) >= 6, 10, "the first agent's events")
        # every one of them, from its first, each out within moments of being written
        evs = agent_events(follow, first)
        assert [e["event"] for e in evs] == ["connect", "close"] * 3
        late = [arrived - ev["ts"] for arrived, ev in follow.events if ev.get("ppid") == first.pid]
        assert max(late) < 1.0, late

        second = supervisor(aegis_env, tmp_path, url, count=2)
        follow.wait_said(f"following supervisor {second.pid}:")
        assert second.wait(60) == 0
        follow.wait_said(f"supervisor {second.pid} has ended")
        wait_for(lambda: len(agent_events(follow, second)) >= 4, 10, "the second's events")
    finally:
        assert follow.stop() == 0
    assert len(agent_events(follow, first)) == 6  # nothing read twice


def test_follow_started_just_after_a_supervisor_misses_nothing(
        aegis_env: dict[str, str], tmp_path: Path, url: str) -> None:
    sup = supervisor(aegis_env, tmp_path, url, count=2, gap=1.0)
    try:
        log = wait_for(lambda: next(Path(aegis_env["AEGIS_RUNTIME_DIR"]).glob("netmon-*.jsonl"),
                                    None), 20, "the supervisor's log")
        wait_for(lambda: log.stat().st_size > 0, 20, "the agent's first event")
        follow = Follower(aegis_env)
        try:
            wait_for(lambda: len(agent_events(follow, sup)) >= 4, 20, "both requests")
            evs = agent_events(follow, sup)
            assert [e["event"] for e in evs] == ["connect", "close", "connect", "close"]
        finally:
            assert follow.stop() == 0
    finally:
        sup.wait(60)


def test_follow_of_an_explicit_supervisor_stays_on_it(aegis_env: dict[str, str],
                                                      tmp_path: Path, url: str) -> None:
    first = supervisor(aegis_env, tmp_path, url, count=1, delay=1.5)
    wait_for(lambda: next(Path(aegis_env["AEGIS_RUNTIME_DIR"]).glob("netmon-*.jsonl"), None),
             20, "the supervisor's log")
    follow = Follower(aegis_env, "-n", "0", str(first.pid))
    try:
        assert first.wait(60) == 0
        follow.wait_said(f"supervisor {first.pid} has ended")
        assert [e["event"] for e in agent_events(follow, first)] == ["connect", "close"]
        second = supervisor(aegis_env, tmp_path, url, count=1)
        assert second.wait(60) == 0
        time.sleep(1.5)
        assert not agent_events(follow, second)
        assert not any("following" in s or "waiting" in s for s in follow.said), follow.said
    finally:
        assert follow.stop() == 0


def test_follow_on_a_terminal_shows_the_wait_and_the_table(aegis_env: dict[str, str],
                                                           tmp_path: Path, url: str) -> None:
    import pyte

    screen = pyte.Screen(160, 50)
    stream = pyte.ByteStream(screen)
    child = pexpect.spawn(aegis_bin(), ["netmon", "--follow"], env=aegis_env, timeout=30,
                          dimensions=(50, 160))

    def shown(text: str) -> bool:
        with contextlib.suppress(pexpect.TIMEOUT):
            stream.feed(child.read_nonblocking(65536, timeout=0.2))
        return text in "\n".join(screen.display)

    try:
        wait_for(lambda: shown("waiting for a supervisor with network monitoring"), 20,
                 "the waiting line")
        sup = supervisor(aegis_env, tmp_path, url, count=2)
        wait_for(lambda: shown(f"following supervisor {sup.pid}"), 20, "the switch")
        port = url.rsplit(":", 1)[1].strip("/")
        wait_for(lambda: shown(f"127.0.0.1:{port}") and shown("2 connections ("), 20,
                 "the table of its connections")
        assert sup.wait(60) == 0
        wait_for(lambda: shown(f"supervisor {sup.pid} has ended"), 20, "the end")
    finally:
        child.sendintr()
        child.expect(pexpect.EOF, timeout=10)
        child.close()
    assert child.exitstatus == 0
