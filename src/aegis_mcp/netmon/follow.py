"""`aegis-mcp netmon --follow`: which log is followed, reading what it gains, and moving on.

With no target (and no AEGIS_NETMON_LOG) it follows the live supervisor: the newest running
supervisor that has a netmon log. While none runs it waits for one; when the followed one ends
it says so and moves to the next one's log as soon as that appears, from its first event. An
explicit PID|LOGFILE stays fixed, and it too says when its supervisor has ended.

It wakes when the log's directory changes (watchfiles, inotify underneath), not on a poll: an
event is shown within a few tens of milliseconds of its write. It also wakes every second
without a change, to notice a supervisor that ended (a kill -9 changes no file).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aegis_mcp import procs
from aegis_mcp.netmon.log import (
    events_of,
    find_log,
    live_supervisor_logs,
    log_for_supervisor,
    rotated_path,
    supervisor_alive,
    supervisor_of_log,
    tail,
)

WAKE_EVERY = 1.0
"""Seconds between wakes without a change: how soon the end of a supervisor is noticed."""
DEBOUNCE_MS, STEP_MS = 100, 10
"""A burst of events is shown at most DEBOUNCE_MS after it began; a lone one STEP_MS after."""
WAITING = ("waiting for a supervisor with network monitoring (`aegis-mcp <agent> --netmon`) "
           "to start")


class LogReader:
    """Reads the lines appended to a log from an offset, following a rotation to the new
    file (the rest of the rotated one first)."""

    def __init__(self, log: Path, from_start: bool = False) -> None:
        self.log = log
        self.ino: int | None = None
        self.offset = 0
        self.rest = b""
        try:
            st = log.stat()
            self.ino, self.offset = st.st_ino, (0 if from_start else st.st_size)
        except FileNotFoundError:
            pass

    def backlog(self, count: int) -> list[dict[str, Any]]:
        """The last `count` events before where this reader starts."""
        if count <= 0:
            return []
        with contextlib.suppress(OSError, ValueError):
            return tail(self.log, count, end=self.offset) if self.ino is not None else []
        return []

    def poll(self) -> list[dict[str, Any]]:
        try:
            st = self.log.stat()
        except FileNotFoundError:
            return []
        data = b""
        if st.st_ino != self.ino:
            if self.ino is not None:  # finish the rotated file first
                with contextlib.suppress(FileNotFoundError), \
                        open(rotated_path(self.log), "rb") as f:
                    if os.fstat(f.fileno()).st_ino == self.ino:
                        f.seek(self.offset)
                        data += f.read()
            self.ino, self.offset, self.rest = st.st_ino, 0, b""
        if st.st_size < self.offset:
            self.offset = 0
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        data = self.rest + data + chunk
        end = data.rfind(b"\n")
        self.rest = data[end + 1:]
        return events_of(data[:end + 1].split(b"\n") if end >= 0 else [])


def _supervisor_of_target(target: str | None, log: Path) -> int | None:
    """The supervisor behind an explicit target: a supervisor's pid, an agent's (its
    AEGIS_SUPERVISOR_PID), else the one whose log it is."""
    if target and target.isdigit():
        pid = int(target)
        if log_for_supervisor(pid) is not None:
            return pid
        sup = procs.environ_of(pid).get("AEGIS_SUPERVISOR_PID", "")
        if sup.isdigit():
            return int(sup)
    if target is None and os.environ.get("AEGIS_SUPERVISOR_PID", "").isdigit():
        return int(os.environ["AEGIS_SUPERVISOR_PID"])
    return supervisor_of_log(log)


class Follow:
    """What `--follow` follows. `poll()` returns the new events and, through `notice`, says
    what changed (a supervisor ended, another is followed now, none is running)."""

    def __init__(self, target: str | None, notice: Callable[[str], None],
                 backlog: int = 0) -> None:
        self.notice = notice
        self.fixed = bool(target) or bool(os.environ.get("AEGIS_NETMON_LOG"))
        self.began = procs.start_time(os.getpid()) or 0
        self.reader: LogReader | None = None
        self.supervisor: int | None = None
        self.ended = False
        self.waiting = False
        self.switched = False
        """Set when another log is followed now (the live view starts its table over)."""
        self.pending: list[dict[str, Any]] = []
        if self.fixed:
            log = find_log(target)
            self.reader = LogReader(log)
            self.pending = self.reader.backlog(backlog)
            self.supervisor = _supervisor_of_target(target, log)
            if self.supervisor is not None and not self._alive():
                self.ended = True
                notice(f"supervisor {self.supervisor} has ended: showing what its log has")
        else:
            self._pick(backlog)

    @property
    def log(self) -> Path | None:
        return self.reader.log if self.reader is not None else None

    def _alive(self) -> bool:
        assert self.supervisor is not None and self.log is not None
        return supervisor_alive(self.supervisor, self.log.parent)

    def _pick(self, backlog: int) -> None:
        """Follow the newest live supervisor, or say that none runs (once)."""
        live = live_supervisor_logs()
        if not live:
            if not self.waiting:
                self.waiting = True
                self.notice(WAITING)
            return
        pid, log = live[0]
        # One started since we began: all of its log is new. One that was already running
        # (the first pick, or another that outlived the one followed): from its end, after
        # the latest events (a follower started just after its supervisor misses nothing).
        fresh = (procs.start_time(pid) or 0) > self.began
        self.reader = LogReader(log, from_start=fresh)
        self.pending += [] if fresh else self.reader.backlog(backlog)
        self.supervisor, self.ended, self.waiting = pid, False, False
        self.switched = True
        others = f" (of {len(live)} running; give a PID to choose)" if len(live) > 1 else ""
        self.notice(f"following supervisor {pid}{others}: {log}")

    def poll(self) -> list[dict[str, Any]]:
        events, self.pending = self.pending, []
        if self.reader is not None:
            with contextlib.suppress(OSError):
                events += self.reader.poll()
        if self.supervisor is not None and not self.ended and not self._alive():
            if self.reader is not None:  # what it wrote last
                with contextlib.suppress(OSError):
                    events += self.reader.poll()
            self.ended = True
            self.notice(f"supervisor {self.supervisor} has ended"
                        + ("" if self.fixed else f"; {WAITING}"))
            self.waiting = not self.fixed
        if not self.fixed and (self.reader is None or self.ended):
            self._pick(0)
            if self.reader is not None and not self.ended:
                with contextlib.suppress(OSError):
                    events += self.pending + self.reader.poll()
                self.pending = []
        return events

    def watched(self) -> list[Path]:
        """The directories whose changes wake the follower."""
        if self.fixed and self.log is not None:
            return [self.log.parent]
        from aegis_mcp.paths import control_dirs

        return control_dirs()

    def wakeups(self) -> Iterator[None]:
        """Yields at once, then when a watched directory changed, or after WAKE_EVERY without
        a change."""
        yield
        dirs = [str(d) for d in self.watched() if d.is_dir()]
        if dirs:
            try:
                from watchfiles import watch
            except ImportError:
                watch = None  # type: ignore[assignment]
            if watch is not None:
                try:
                    for _ in watch(*dirs, watch_filter=None, debounce=DEBOUNCE_MS,
                                   step=STEP_MS, rust_timeout=int(WAKE_EVERY * 1000),
                                   yield_on_timeout=True, recursive=False):
                        yield
                except OSError:
                    pass  # no inotify here (limits, a file system without it): poll below
        while True:
            time.sleep(WAKE_EVERY / 4)
            yield
