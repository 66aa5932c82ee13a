"""The view's log screen: one agent's output, or one supervisor's network events, as they
are written.

A thread follows the file: it reads what was appended whenever inotify says the file's
directory changed (never on a clock), starts over when the file was replaced (netmon's
rotation) or cut, and hands whole lines to the screen.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, RichLog, Static

from aegis_mcp.display import text

if TYPE_CHECKING:
    from aegis_mcp.pool.store import AgentStatus
    from aegis_mcp.top.snapshot import SupervisorView

BACKLOG = 64 * 1024  # what is shown of the file's past when the screen opens
MAX_LINES = 5000


def agent_line(line: str) -> str:
    """A line of an agent's output log: its stream events in one line each, as the pool
    summarizes them; anything else (Aider's plain output) as it is."""
    from aegis_mcp.pool.stream import summarize

    try:
        event = json.loads(line)
    except ValueError:
        return line
    return summarize(event) if isinstance(event, dict) else line


def network_line(line: str) -> str:
    from aegis_mcp.netmon.cli import event_line

    try:
        event = json.loads(line)
    except ValueError:
        return line
    return event_line(event) if isinstance(event, dict) else line


class NotTheirs(Exception):
    """The file is not what it should be: not a regular file, or (read as root) not owned by
    the user whose supervisor named it."""


class Tail:
    """New whole lines of a file; at the first read, from `BACKLOG` bytes before its end.

    As root, a supervisor's log path comes from that supervisor, so from whatever runs as its
    user: the file is opened without following a symlink and without blocking (a FIFO), and
    read only if it is a regular file of that user (`owner`)."""

    def __init__(self, path: Path, owner: int | None = None) -> None:
        self.path = path
        self.owner = owner
        self.fd: int | None = None
        self.ino: int | None = None
        self.offset = 0
        self.rest = b""
        self.mid_line = False

    def _open(self) -> os.stat_result:
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (
                os.geteuid() == 0 and self.owner is not None and st.st_uid != self.owner):
            os.close(fd)
            raise NotTheirs(f"{self.path} is not a log file of the supervisor's user: not read")
        self.close()
        self.fd = fd
        return st

    def read(self) -> list[str]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if self.fd is None or st.st_ino != self.ino or st.st_size < self.offset:
            first = self.ino is None  # new, replaced (rotated) or cut: from its start
            st = self._open()
            start = max(0, st.st_size - BACKLOG) if first else 0
            self.ino, self.offset, self.rest, self.mid_line = st.st_ino, start, b"", start > 0
        assert self.fd is not None
        data = os.pread(self.fd, 8 << 20, self.offset)
        self.offset += len(data)
        if self.mid_line:  # the backlog starts inside a line: from the next one
            cut = data.find(b"\n")
            if cut < 0:
                return []
            data, self.mid_line = data[cut + 1:], False
        whole, _, self.rest = (self.rest + data).rpartition(b"\n")
        return [line.decode(errors="replace") for line in whole.split(b"\n")] if whole else []

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class LogScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,backspace", "app.pop_screen",
                                                     "back")]
    DEFAULT_CSS = """
    LogScreen > #title { height: 1; padding: 0 1; text-style: bold;
                         background: $primary-background; }
    """

    def __init__(self, title: str, path: Path, fmt: Callable[[str], str],
                 owner: int | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.path = path
        self.owner = owner
        self.fmt = fmt
        self.closing = threading.Event()

    @classmethod
    def for_agent(cls, s: AgentStatus) -> LogScreen:
        return cls(f"{s['agent_id']} ({s['agent_type']}, {s['state']}): {s['log_path']}",
                   Path(s["log_path"]), agent_line)

    @classmethod
    def for_supervisor(cls, s: SupervisorView) -> LogScreen:
        log = s["netmon_log"]
        assert log is not None
        return cls(f"network of supervisor {s['pid']} ({s['agent']}): {log}", Path(log),
                   network_line, s["owner_uid"])

    def compose(self) -> ComposeResult:
        yield Static(text(self.title_text), id="title")
        yield RichLog(max_lines=MAX_LINES, wrap=False, highlight=False, markup=False,
                      auto_scroll=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(RichLog).focus()
        self._follow()

    def on_unmount(self) -> None:
        self.closing.set()

    @work(thread=True, group="follow")
    def _follow(self) -> None:
        from aegis_mcp.errors import AegisError
        from aegis_mcp.pool.watch import Watch

        tail = Tail(self.path, self.owner)
        watch: Watch | None = None
        try:
            with contextlib.suppress(AegisError):
                watch = Watch([self.path.parent])
            if not os.path.exists(self.path):
                self._write(["(nothing written yet; waiting for it)"])
            while not self.closing.is_set():
                lines = tail.read()
                if lines:
                    self._write([self.fmt(line) for line in lines])
                # the bound only lets the thread notice that the screen closed
                if watch is None:
                    self.closing.wait(1.0)
                else:
                    watch.wait(1.0)
        except NotTheirs as exc:
            self._write([str(exc)])
        except OSError as exc:
            self._write([f"cannot read {self.path}: {exc.strerror or exc}"])
        finally:
            tail.close()
            if watch is not None:
                watch.close()

    def _write(self, lines: list[str]) -> None:
        if self.closing.is_set():
            return
        log = self.query_one(RichLog)
        with contextlib.suppress(Exception):  # the app is closing under us
            self.app.call_from_thread(lambda: [log.write(text(line)) for line in lines])
