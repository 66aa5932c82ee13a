"""The view's one reader: a thread that takes a snapshot when something it watches changes.

It wakes on inotify, not on a clock: the pool's directory (its database's write-ahead log
changes at every recorded event, a done file at every end) and the runtime directories (a
supervisor's control socket appears or goes, its netmon log grows, its overlays are
rewritten at each start). Bursts are coalesced to at most one snapshot per `min_gap`
seconds, so a chatty agent costs the view a few snapshots a second, not one per event. The
only timed wake is the backstop: what a supervisor says only when asked (a restart in
progress, an MCP server's hello) is asked for every `backstop` seconds while one runs.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aegis_mcp.top import snapshot

if TYPE_CHECKING:
    from aegis_mcp.pool.pool import Pool
    from aegis_mcp.pool.watch import Watch


class Collector(threading.Thread):
    """Calls `deliver(snapshot)` with a first snapshot at once, then after each change."""

    def __init__(self, deliver: Callable[[snapshot.Snapshot], None],
                 fail: Callable[[str], None], limit: int = 50, backstop: float = 5.0,
                 min_gap: float = 0.5) -> None:
        super().__init__(name="aegis-top-collector", daemon=True)
        self.deliver = deliver
        self.fail = fail
        self.limit = limit
        self.backstop = backstop
        self.min_gap = min_gap
        self.stopping = threading.Event()
        # a pipe, so that the user's wake-ups and the watch are one select
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def refresh_now(self) -> None:
        """Take a snapshot soon (after an action of the user's: a stop, a restart)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    def stop(self) -> None:
        self.stopping.set()
        self.refresh_now()

    def run(self) -> None:
        from aegis_mcp.errors import AegisError

        pool: Pool | None = None
        watch: Watch | None = None
        watched: list[Path] = []
        snap: snapshot.Snapshot | None = None
        sockets: set[Path] = set()
        full_at = 0.0
        try:
            pool = _open_pool(self.fail)
            woken = True
            while not self.stopping.is_set():
                dirs = [d for d in [*_runtime_dirs(), *([pool.dir, pool.done] if pool else [])]
                        if d.is_dir()]
                if dirs != watched:
                    if watch is not None:
                        watch.close()
                    watch, watched = _watch(dirs), dirs
                taken = time.monotonic()
                now_sockets = _sockets()
                # The dead supervisors' leftovers need a look at every process: only when
                # a supervisor came or went, when the user acted, or once a minute.
                full = woken or snap is None or now_sockets != sockets \
                    or taken - full_at > FULL_EVERY
                try:
                    snap = snapshot.take(pool, self.limit, None if full else snap)
                except AegisError as exc:
                    self.fail(str(exc))
                else:
                    if full:
                        full_at, sockets = taken, now_sockets
                    self.deliver(snap)
                woken = self._wait(watch, self.backstop if snap and snap["supervisors"]
                                   else FULL_EVERY)
                # coalesce a burst: what changed meanwhile is in the next snapshot
                rest = self.min_gap - (time.monotonic() - taken)
                if rest > 0:
                    self.stopping.wait(rest)
        finally:
            if watch is not None:
                watch.close()
            if pool is not None:
                pool.close()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)

    def _wait(self, watch: Watch | None, backstop: float) -> bool:
        """Until a watched change, a `refresh_now`, a stop or the backstop; True when it was
        `refresh_now`."""
        if watch is None:
            select.select([self._wake_r], [], [], backstop)
        else:
            watch.wait(backstop, (self._wake_r,))
        woken = False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                woken = True
        return woken


FULL_EVERY = 60.0
"""Seconds between two looks for dead supervisors' leftovers when nothing came or went."""


def _open_pool(fail: Callable[[str], None]) -> Pool | None:
    from aegis_mcp.errors import AegisError
    from aegis_mcp.pool.pool import Pool

    try:
        return Pool()
    except AegisError as exc:
        fail(f"the pool cannot be opened: {exc}")
        return None


def _runtime_dirs() -> list[Path]:
    from aegis_mcp.paths import control_dirs

    return list(control_dirs())


def _sockets() -> set[Path]:
    """Every supervisor's control socket, its supervisor alive or not."""
    from aegis_mcp.supervise import control

    return {path for d in _runtime_dirs() for _, path in control.sockets(d)}


def _watch(dirs: list[Path]) -> Watch | None:
    from aegis_mcp.errors import AegisError
    from aegis_mcp.pool.watch import Watch

    with contextlib.suppress(AegisError):
        return Watch(dirs)
    return None  # no inotify (instances used up): the backstop alone keeps the view fresh
