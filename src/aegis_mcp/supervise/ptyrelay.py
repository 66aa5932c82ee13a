"""A terminal of the agent's own, relayed to the user's (what sudo's `use_pty` does).

An agent left in the supervisor's session, with the supervisor's terminal as its controlling
terminal, can push input into that terminal with TIOCSTI (where dev.tty.legacy_tiocsti=1), and
under sudo that is root's shell, which runs it after aegis-mcp exits. So an agent running under
another identity gets a pseudo-terminal per start instead: a new session (ptymonitor.py) whose
controlling terminal is the pty's slave, starting with the real terminal's saved modes and
size. The supervisor copies bytes both ways between the real terminal (raw while relaying) and
the pty's master. Whatever the agent pushes lands in its own pty, which ends with it.

Driven by the caller's selector: `fileno()` is an epoll descriptor that is readable when the
relay has work, and `pump()` does that work without blocking. Each way has a bounded buffer;
a full one stops the reading on its side (backpressure: the agent blocks on a full terminal,
nothing is dropped), and each descriptor is polled only for what it can make progress on, so
nothing spins. EIO or a hang-up on the master means no slave is open any more.

Not tied to sudo: any caller that wants to own the agent's terminal (to watch what it shows,
say) can use it.
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import time

from aegis_mcp.errors import AegisError
from aegis_mcp.supervise.terminal import Terminal

LIMIT = 64 * 1024
"""Bytes buffered each way before the relay stops reading that way."""
_CHUNK = 16 * 1024


def _same_terminal(fd: int, terminal_fd: int) -> bool:
    try:
        return os.isatty(fd) and os.path.samestat(os.fstat(fd), os.fstat(terminal_fd))
    except OSError:
        return False


class PtyRelay:
    def __init__(self, terminal: Terminal) -> None:
        if terminal.fd is None:
            raise ValueError("a relay needs an interactive terminal")
        self.terminal = terminal
        try:
            # A description of our own, so O_NONBLOCK never reaches the shell sharing stdin's.
            self._real = os.open(f"/proc/self/fd/{terminal.fd}",
                                 os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise AegisError(f"cannot open this terminal a second time ({exc.strerror}) to "
                             "give the agent a terminal of its own; run aegis-mcp from a "
                             "terminal under /dev/pts, or with --keep-root") from None
        self.master, self.slave = os.openpty()
        os.set_blocking(self.master, False)
        if terminal.saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self.slave, termios.TCSANOW, terminal.saved)
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetwinsize(self.slave, termios.tcgetwinsize(self._real))
        self._epoll = select.epoll()
        self._masks: dict[int, int] = {}
        self._to_agent = bytearray()
        self._to_user = bytearray()
        self._input_open = True  # False once the agent ended: keys stay for whoever is next
        self._slave_gone = False  # nothing can be written to the agent any more
        self._output_done = False  # the master read EIO: every slave is closed
        self._user_gone = False  # the real terminal hung up
        self._update()

    def stdio(self) -> dict[str, int | None]:
        """The agent's stdin, stdout, stderr for Popen: the slave for those that are the
        supervisor's terminal, the others passed through as they are (a file, a pipe: never
        a controlling terminal, so no TIOCSTI through them)."""
        assert self.terminal.fd is not None
        return {"stdin": self.slave,
                **{name: self.slave if _same_terminal(fd, self.terminal.fd) else None
                   for name, fd in (("stdout", 1), ("stderr", 2))}}

    def started(self) -> None:
        """The agent has the slave: ours closes, so the master sees EIO when the agent's
        side is gone."""
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1

    def fileno(self) -> int:
        return self._epoll.fileno()

    def resize(self) -> None:
        """The real terminal's size to the agent's (the kernel sends it SIGWINCH)."""
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetwinsize(self.master, termios.tcgetwinsize(self._real))

    def stop_input(self) -> None:
        """The agent ended: input it did not read is dropped, and the real terminal is not
        read any more (what is typed now is for the next agent or the shell)."""
        self._input_open = False
        self._to_agent.clear()
        self._update()

    def pump(self, timeout: float = 0) -> bool:
        """Move what can be moved now (waiting up to `timeout` for something); whether the
        agent's side produced output."""
        got = False
        for fd, events in self._epoll.poll(timeout):
            if fd == self.master:
                got |= self._master_ready(events)
            else:
                self._real_ready(events)
        self._update()
        return got

    def flush(self, timeout: float = 1.0, quiet: float = 0.05, until_eof: bool = False
              ) -> None:
        """Show what the agent printed: relay until its output is written out and nothing
        more came for `quiet` seconds (with `until_eof`, until every slave is closed), at
        most `timeout` seconds."""
        now = time.monotonic()
        deadline, calm = now + timeout, now + quiet
        while not self._user_gone and (self._to_user or not self._output_done):
            now = time.monotonic()
            if now >= deadline or (not self._to_user and not until_eof and now >= calm):
                return
            limit = deadline if self._to_user or until_eof else min(deadline, calm)
            if self.pump(limit - now):
                calm = time.monotonic() + quiet

    def close(self) -> None:
        """After flush(): release the pty (an agent's leftover still holding the slave gets
        a hang-up)."""
        self._epoll.close()
        for fd in (self.master, self._real, self.slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self._real = self.slave = -1

    # -- one side each ------------------------------------------------------------------------

    def _real_ready(self, events: int) -> None:
        if events & select.EPOLLIN:
            try:
                data = os.read(self._real, _CHUNK)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._hang_up()
                return
            if data:
                self._to_agent += data
        if events & select.EPOLLOUT and self._to_user:
            try:
                written = os.write(self._real, self._to_user)
            except BlockingIOError:
                written = 0
            except OSError:
                self._hang_up()
                return
            del self._to_user[:written]
        if events & (select.EPOLLHUP | select.EPOLLERR):
            self._hang_up()

    def _hang_up(self) -> None:
        self._user_gone = True
        self._to_user.clear()

    def _master_ready(self, events: int) -> bool:
        got = False
        reading = bool(self._masks.get(self.master, 0) & select.EPOLLIN)
        if reading and events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            # on a hang-up too: data written before the last close is still to be read
            try:
                data = os.read(self.master, LIMIT - len(self._to_user))
            except BlockingIOError:
                data = None
            except OSError:  # EIO: no slave open any more, and nothing left to read
                data = b""
            if data == b"":
                self._output_done = self._slave_gone = True
                self._to_agent.clear()
            elif data:
                got = True
                if not self._user_gone:
                    self._to_user += data
        if events & select.EPOLLOUT and self._to_agent and not self._slave_gone:
            try:
                written = os.write(self.master, self._to_agent)
            except BlockingIOError:
                written = 0
            except OSError:
                written = len(self._to_agent)
                self._slave_gone = True
            del self._to_agent[:written]
        if events & (select.EPOLLHUP | select.EPOLLERR):
            self._slave_gone = True
            self._to_agent.clear()
        return got

    def _update(self) -> None:
        """Poll each descriptor for what it can make progress on, and nothing else: an
        epoll descriptor always reports a hang-up, so one with no interest is removed."""
        want_real = 0
        if not self._user_gone:
            if self._input_open and not self._slave_gone and len(self._to_agent) < LIMIT:
                want_real |= select.EPOLLIN
            if self._to_user:
                want_real |= select.EPOLLOUT
        want_master = 0
        if not self._output_done and len(self._to_user) < LIMIT:
            want_master |= select.EPOLLIN
        if self._to_agent and not self._slave_gone:
            want_master |= select.EPOLLOUT
        self._watch(self._real, want_real)
        self._watch(self.master, want_master)

    def _watch(self, fd: int, mask: int) -> None:
        old = self._masks.get(fd, 0)
        if mask == old:
            return
        if not mask:
            self._epoll.unregister(fd)
            del self._masks[fd]
        elif not old:
            self._epoll.register(fd, mask)
            self._masks[fd] = mask
        else:
            self._epoll.modify(fd, mask)
            self._masks[fd] = mask
