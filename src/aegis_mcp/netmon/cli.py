"""`aegis-mcp netmon [--follow] [--json] [PID|LOGFILE]`: the network connections an agent made.

Without --follow: the summary (totals, top targets, open connections) and the latest events.
With --follow: on a terminal, a live table redrawn as events arrive; otherwise one line per new
event (JSON lines with --json), so it can be piped. Ctrl-C ends it."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis_mcp.display import plain, text

if TYPE_CHECKING:
    from aegis_mcp.netmon.summary import NetmonStatus

POLL = 0.5


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("target", nargs="?", metavar="PID|LOGFILE",
                        help="a supervisor's or agent's pid, or a netmon log file (default: "
                        "$AEGIS_NETMON_LOG, else the newest log of your supervisors)")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep showing new events as they arrive")
    parser.add_argument("--json", action="store_true",
                        help="machine-readable output (with --follow: JSON lines)")
    parser.add_argument("-n", "--events", type=int, default=10, metavar="N",
                        help="how many recent events to show (default 10, 0-1000)")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _clock(ts: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, int | float) else "-"


def event_line(ev: dict[str, Any]) -> str:
    """One event in words, for the terminal: inert text (see `display`), as every field of an
    event may come from the agent or a peer (host names, paths, reasons)."""
    return plain(_event_words(ev))


def _event_words(ev: dict[str, Any]) -> str:
    kind = ev.get("event", "?")
    who = f"{ev.get('exe') or '-'}[{ev.get('pid') if ev.get('pid') is not None else '-'}]"
    port = ev.get("port")
    where = f"{ev.get('addr')}:{port}" if port is not None else str(ev.get("addr"))
    if ev.get("host"):
        where = f"{ev['host']} ({where})"
    head = f"{_clock(ev.get('ts'))} {kind:<7} {who:<22}"
    if kind in ("connect", "accept"):
        return f"{head} {where} {ev.get('proto') or ''} {ev.get('result') or ''}".rstrip()
    if kind in ("totals", "close"):
        dur = ev.get("duration")
        tail = f" {dur:.1f}s" if isinstance(dur, int | float) else ""
        res = ev.get("result")
        extra = f" {res}" if res not in (None, "ok") else ""
        return (f"{head} {where} sent {_size(int(ev.get('sent') or 0))} "
                f"recv {_size(int(ev.get('recv') or 0))}{tail}{extra}")
    if kind == "dns":
        return f"{head} {ev.get('host')} -> {', '.join(ev.get('answers') or []) or '-'}"
    if kind == "gap":
        return f"{head} {ev.get('target') or ''} {ev.get('reason') or ''}".rstrip()
    return f"{head} {json.dumps(ev)}"


def _render(status: NetmonStatus, events: list[dict[str, Any]]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = text(
        f"{status['log_path']}: {status['connections']} connections "
        f"({status['failed_connections']} failed, {status['accepted']} accepted), "
        f"{status['unique_addresses']} addresses, sent {_size(status['bytes_sent'])}, "
        f"received {_size(status['bytes_received'])}, {status['open_connections']} open"
        + (f", {status['gaps']} gaps" if status["gaps"] else ""))
    targets = Table(title="top targets by bytes", title_justify="left", expand=False)
    for col in ("target", "conns", "sent", "recv"):
        targets.add_column(col, justify="left" if col == "target" else "right")
    for row in status["top_by_bytes"]:
        targets.add_row(text(row["target"]), str(row["connections"]), _size(row["sent"]),
                        _size(row["recv"]))
    parts: list[Any] = [head, targets]
    if status["open"]:
        opened = Table(title="open connections", title_justify="left")
        for col in ("target", "process", "since", "sent", "recv"):
            opened.add_column(col)
        for c in status["open"][-15:]:
            opened.add_row(text(c["target"]), text(f"{c['exe']}[{c['pid']}]"),
                           _clock(c["ts"]), _size(c["sent"]), _size(c["recv"]))
        parts.append(opened)
    for gap in status["recent_gaps"][-3:]:
        parts.append(text(f"gap: {gap.get('target') or ''} {gap.get('reason')}", style="yellow"))
    if events:
        parts.append(Text("recent events:", style="bold"))
        parts.extend(Text(event_line(ev)) for ev in events)
    return Group(*parts)


class _Follower:
    """Reads lines appended to the log, following a rotation to the new file."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.ino: int | None = None
        self.offset = 0
        self.rest = b""
        try:
            st = log.stat()
            self.ino, self.offset = st.st_ino, st.st_size
        except FileNotFoundError:
            pass

    def poll(self) -> list[dict[str, Any]]:
        from aegis_mcp.netmon.log import rotated_path

        try:
            st = self.log.stat()
        except FileNotFoundError:
            return []
        data = b""
        if st.st_ino != self.ino:
            if self.ino is not None:  # finish the rotated file first
                with open(rotated_path(self.log), "rb") as f:
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
        events = []
        for line in data[:end + 1].split(b"\n") if end >= 0 else []:
            if line.strip():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events


def _status_or_empty(log: Path) -> NetmonStatus:
    from aegis_mcp.netmon.log import NoLog
    from aegis_mcp.netmon.summary import empty_status, status

    try:
        return status(log)
    except NoLog:
        return empty_status(log)


def run(args: argparse.Namespace) -> int:
    from aegis_mcp.errors import AegisError
    from aegis_mcp.netmon.log import NoLog, find_log, tail

    if not 0 <= args.events <= 1000:
        raise AegisError(f"--events {args.events}: give a number from 0 to 1000")
    log = find_log(args.target)
    if not args.follow:
        status = _status_or_empty(log)
        try:
            events = tail(log, args.events) if args.events else []
        except NoLog:
            events = []
        if args.json:
            print(json.dumps({**status, "recent_events": events}, indent=2))
            return 0
        from rich.console import Console

        Console(highlight=False, soft_wrap=True).print(_render(status, events))
        return 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    follower = _Follower(log)
    try:
        if sys.stdout.isatty() and not args.json:
            from rich.live import Live

            recent: list[dict[str, Any]] = []
            with contextlib.suppress(NoLog):
                recent = tail(log, args.events) if args.events else []
            with Live(_render(_status_or_empty(log), recent), auto_refresh=False) as live:
                while True:
                    new = follower.poll()
                    if new:
                        recent = (recent + new)[-max(args.events, 1):]
                        live.update(_render(_status_or_empty(log), recent), refresh=True)
                    time.sleep(POLL)
        else:
            while True:
                for ev in follower.poll():
                    print(json.dumps(ev) if args.json else event_line(ev), flush=True)
                time.sleep(POLL)
    except KeyboardInterrupt:
        return 0
