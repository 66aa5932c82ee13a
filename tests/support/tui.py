"""What a terminal user would see of a full-screen program in a pexpect pty.

Claude Code's renderer writes only the cells that changed between frames, so a phrase on the
screen need not appear as one run of bytes in the output: it can be split by cursor moves, or
be half left over from an earlier frame. Tests that wait for a TUI therefore look at a rendered
screen (pyte), not at the byte stream, and show that screen when the wait fails.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any

import pexpect
import pyte

from aegis_mcp.supervise import control

_PRESENTATION_SELECTORS = dict.fromkeys((0xFE0E, 0xFE0F))


class _PyteScreen(pyte.Screen):
    def report_device_status(self, mode: int, private: bool = False) -> None:
        # pyte knows only the plain status reports: a private one (`CSI ? 6 n`, which
        # Copilot's TUI sends) would stop the stream with a TypeError. Not answered.
        if not private:
            super().report_device_status(mode)


class Screen:
    """Feeds everything `child` prints into a pyte screen of the pty's size."""

    def __init__(self, child: pexpect.spawn, rows: int, cols: int) -> None:
        self.child = child
        self.screen = _PyteScreen(cols, rows)
        self.stream = pyte.Stream(self.screen)
        child.logfile_read = self  # pexpect hands every chunk it reads to write()

    def write(self, data: str) -> None:
        # pyte stops drawing a run of text at a zero-width character that does not combine,
        # such as the variation selectors some TUIs put after a symbol (Qwen Code's "◆\ufe0e
        # answer" under CI=true): they only choose how the symbol looks, so they go first.
        self.stream.feed(data.translate(_PRESENTATION_SELECTORS))

    def flush(self) -> None:
        pass

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """Read output until `pattern` (a regex) matches the rendered screen."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.text())
            if match:
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not on the screen after {timeout:.0f} s; "
                                     f"the screen:\n{self.dump()}")
            try:
                self.child.read_nonblocking(65536, timeout=min(0.2, left))
            except pexpect.TIMEOUT:
                pass
            except pexpect.EOF as exc:
                raise AssertionError(f"the program exited before {pattern!r} showed; "
                                     f"the screen:\n{self.dump()}") from exc

    def drain(self, seconds: float) -> None:
        """Read what the program prints for up to `seconds`: a pty nobody reads stops it."""
        with contextlib.suppress(pexpect.TIMEOUT, pexpect.EOF):
            self.child.read_nonblocking(65536, timeout=seconds)

    def dump(self) -> str:
        lines = self.text().splitlines()
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(f"  |{line}" for line in lines)


def type_prompt(child: pexpect.spawn, screen: Screen, text: str, attempts: int = 5,
                marker: str = "❯") -> None:
    """Type `text` into a TUI's input box and submit it: keys typed before the box is ready
    are dropped, so it is typed again (after clearing the line) until the screen shows it
    after the box's `marker` (Claude Code's ❯, Qwen Code's *)."""
    for attempt in range(attempts):
        time.sleep(0.5)
        child.send(text)
        try:
            screen.wait_for(rf"{re.escape(marker)}\s*{re.escape(text)}", timeout=5)
            break
        except AssertionError:
            if attempt == attempts - 1:
                raise
        child.sendcontrol("u")
    time.sleep(0.3)
    child.send("\r")


def quit_tui(child: pexpect.spawn) -> int | None:
    """End a TUI the way its user does: Ctrl-C until it is gone (Claude Code asks twice);
    its exit status."""
    for _ in range(3):
        child.sendcontrol("c")
        time.sleep(0.5)
    child.expect(pexpect.EOF, timeout=30)
    return child.wait()


def status_once_servers_seen(sock: Path, timeout: float = 60,
                             screen: Screen | None = None) -> dict[str, Any]:
    """The supervisor's status once its (restarted) agent's aegis-mcp server has said hello,
    or at the bound (the caller asserts what it needs). With `screen`, the agent's terminal is
    read on meanwhile."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = control.request(sock, {"op": "status"})["status"]
    while not status["mcp_servers_seen"] and time.monotonic() < deadline:
        if screen is not None:
            screen.drain(0.2)
        else:
            time.sleep(0.2)
        status = control.request(sock, {"op": "status"})["status"]
    return status
