"""The user's terminal: who owns it, and putting it back the way it was.

The agent runs in its own process group, made the terminal's foreground group, so Ctrl-C and
Ctrl-Z reach the agent and not the supervisor. A killed TUI leaves raw mode, the alternate
screen, mouse reporting and a hidden cursor behind; before a new agent starts, the modes saved
before the first start are restored and those screen modes are switched off.

An agent running under another identity gets a terminal of its own instead (ptyrelay.py): this
one then stays the supervisor's, in raw mode while the relay runs.
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
        self.restore_modes()
        if os.isatty(1):
            with contextlib.suppress(OSError):
                os.write(1, RESET_SEQUENCE.encode())

    def restore_modes(self) -> None:
        """The modes of before the first start (after raw mode, say), nothing written."""
        if self.saved is not None:
            self._set_modes(self.saved)

    def set_raw(self) -> None:
        """Raw mode (cfmakeraw) while the supervisor relays an agent's own terminal: every
        byte, Ctrl-C and Ctrl-Z included, goes to the agent's terminal, whose own modes
        decide what they mean."""
        if self.saved is None:
            return
        mode = [*self.saved[:6], list(self.saved[6])]
        mode[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                     | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
        mode[1] &= ~termios.OPOST
        mode[2] = (mode[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        mode[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG
                     | termios.IEXTEN)
        mode[6][termios.VMIN] = 1
        mode[6][termios.VTIME] = 0
        self._set_modes(mode)

    def _set_modes(self, mode: list) -> None:  # type: ignore[type-arg]
        if self.fd is None:
            return
        # TCSADRAIN: what was already typed stays for whoever reads next
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU, signal.SIGTTIN})
        try:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, mode)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
