"""Signals for a selector loop (the supervisor's, a pool runner's).

The wakeup fd only wakes the loop; which signals arrived is recorded by the Python-level
handler. The bytes CPython writes to the wakeup fd are not to be trusted: a forked copy of this
process shares that fd, and its C-level handler writes the numbers of the signals *it* gets.
pyroute2 runs its namespace helpers in such forks and ends them with SIGTERM, which the
supervisor once read as its own SIGTERM and stopped the agent (CI, codex under --netmon=netns).
The Python handler runs only in the interpreter that got the signal, so the copy's signals stay
in the copy.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections import deque


class SignalInbox:
    """Catch `recorded` (kept for drain()) and `wake_only` (they just wake the loop, e.g.
    SIGCHLD, whose children the loop reaps anyway). Register `fileno()` in the selector."""

    def __init__(self, recorded: tuple[int, ...], wake_only: tuple[int, ...] = ()) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._got: deque[int] = deque()
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for sig in recorded:
            signal.signal(sig, self._record)
        for sig in wake_only:
            signal.signal(sig, lambda *_: None)

    def _record(self, signum: int, _frame: object) -> None:
        self._got.append(signum)  # in a fork, into the fork's own copy

    def fileno(self) -> int:
        return self._read.fileno()

    def clear(self) -> None:
        """Empty the wakeup fd (the loop woke); the signals stay for drain()."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._read.recv(4096):
                pass

    def drain(self) -> list[int]:
        """The signals received since the last drain, in order; empties the wakeup fd."""
        self.clear()
        got = []
        while self._got:  # popleft: a handler may append while we copy
            got.append(self._got.popleft())
        return got

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._read.close()
        self._write.close()
