"""The user's terminal: who owns it, and putting it back the way it was.

The agent runs in its own process group, made the terminal's foreground group, so Ctrl-C and
Ctrl-Z reach the agent and not the supervisor. A killed TUI leaves raw mode, the alternate
screen, mouse reporting and a hidden cursor behind; before a new agent starts, the modes saved
before the first start are restored and those screen modes are switched off.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import termios

# Leave the alternate screen, show the cursor, stop mouse and focus reporting and bracketed
# paste, pop the kitty keyboard mode, reset modifyOtherKeys and colours. Terminals ignore the
# ones they do not know.
RESET_SEQUENCE = (
    "\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1015l"
    "\x1b[?1004l\x1b[?2004l\x1b[<u\x1b[>4;0m\x1b[0m"
)


class Terminal:
    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.saved: list | None = None  # type: ignore[type-arg]
        if fd is not None:
            with contextlib.suppress(termios.error):
                self.saved = termios.tcgetattr(fd)

    @classmethod
    def from_stdin(cls) -> Terminal:
        """Job control only when stdin is our controlling terminal."""
        fd = sys.stdin.fileno() if sys.stdin and sys.stdin.isatty() else None
        if fd is not None:
            try:
                os.tcgetpgrp(fd)
            except OSError:
                fd = None
        return cls(fd)

    @property
    def interactive(self) -> bool:
        return self.fd is not None

    def give_to(self, pgid: int) -> None:
        """Make `pgid` the foreground process group. A background caller gets SIGTTOU from
        tcsetpgrp unless it is blocked; it is blocked only around the call so the agent never
        inherits a blocked or ignored SIGTTOU."""
        if self.fd is None:
            return
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU, signal.SIGTTIN})
        try:
            with contextlib.suppress(OSError):
                os.tcsetpgrp(self.fd, pgid)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def take_back(self) -> None:
        self.give_to(os.getpgrp())

    def restore(self) -> None:
        """The modes of before the first start, and the screen modes off."""
        if self.fd is None:
            return
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU, signal.SIGTTIN})
        try:
            if self.saved is not None:
                with contextlib.suppress(termios.error):
                    termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            if os.isatty(1):
                with contextlib.suppress(OSError):
                    os.write(1, RESET_SEQUENCE.encode())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
