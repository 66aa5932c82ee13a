"""`aegis-mcp netmon [--follow] [--json] [PID|LOGFILE]`: the network connections an agent made.

Without --follow: the summary (totals, top targets, open connections, denials) and the latest
events. With --follow: on a terminal, a live table redrawn as events arrive; otherwise the
latest events, then one line per new event as it is written (JSON lines with --json), so it can
be piped; what it follows, and when that supervisor ends, is said on stderr (`follow`). Ctrl-C
ends it.

`aegis-mcp netmon policy [PID|LOGFILE]`: the network policy in force and its denials;
`aegis-mcp netmon policy --from-log LOG`: an allow-list learned from a session (learn.py).
`policy` is a word of its own (cli.py's WORDS): a log file of that name is `./policy`."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis_mcp.display import plain, text
from aegis_mcp.netmon.digest import count, size

if TYPE_CHECKING:
    from aegis_mcp.netmon.summary import NetmonStatus


WORDS = ("policy",)
"""`aegis-mcp netmon policy ...` is a subcommand of its own (see aegis_mcp.cli)."""


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "netmon policy":
        _policy_arguments(parser)
        return
    parser.epilog = ("`aegis-mcp netmon policy` shows the network policy in force and its "
                     "denials; `aegis-mcp netmon policy --from-log LOG` learns an allow-list "
                     "from a session (see its --help). A log file named `policy`: ./policy")
    parser.add_argument("target", nargs="?", metavar="PID|LOGFILE",
                        help="a supervisor's or agent's pid, or a netmon log file (default: "
                        "$AEGIS_NETMON_LOG, else the log of your newest running supervisor, "
                        "else the newest log of your supervisors)")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep showing new events as they arrive; without a target, "
                        "follow the running supervisor, waiting for one and moving to the "
                        "next when it ends")
    parser.add_argument("--json", action="store_true",
                        help="machine-readable output (with --follow: JSON lines)")
    parser.add_argument("-n", "--events", type=int, default=10, metavar="N",
                        help="how many recent events to show (default 10, 0-1000)")


def _policy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show the network policy in force for a supervisor's agent (its rules, where each "
        "came from, how far it is enforced) and the connections it denied, each with what to "
        "do; or, with --from-log, write an allow-list policy file (TOML, for --policy) that "
        "allows exactly what a past session used: each host name (or address, when none was "
        "known) with its port, the connection counts as comments, grouped by domain; what "
        "that session's policy denied is left out and listed in a comment.")
    parser.epilog = "example: aegis-mcp netmon policy --from-log LOG > agent-policy.toml"
    parser.add_argument("target", nargs="?", metavar="PID|LOGFILE",
                        help="a supervisor's or agent's pid, or its netmon log (default: as "
                        "for `aegis-mcp netmon`)")
    parser.add_argument("--from-log", metavar="LOG",
                        help="learn an allow-list from this netmon log (PID|LOGFILE: a pid "
                        "finds its supervisor's log) and print it as a policy file")
    parser.add_argument("--json", action="store_true", help="print JSON instead")




def _clock(ts: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, int | float) else "-"


def event_line(ev: dict[str, Any], hints: bool = True) -> str:
    """One event in words, for the terminal: inert text (see `display`), as every field of an
    event may come from the agent or a peer (host names, paths, reasons). `hints=False` leaves
    out an event's hint (shown apart, once)."""
    return plain(_event_words(ev, hints))


def _event_words(ev: dict[str, Any], hints: bool) -> str:
    kind = ev.get("event", "?")
    who = f"{ev.get('exe') or '-'}[{ev.get('pid') if ev.get('pid') is not None else '-'}]"
    port, addr = ev.get("port"), str(ev.get("addr"))
    if port is not None and ":" in addr:
        addr = f"[{addr}]"  # IPv6
    where = f"{addr}:{port}" if port is not None else addr
    if ev.get("host"):
        where = f"{ev['host']} ({where})"
    head = f"{_clock(ev.get('ts'))} {kind:<7} {who:<22}"
    hint = f": {ev['hint']}" if ev.get("hint") and hints else ""
    if kind in ("connect", "accept"):
        res = ev.get("result")
        # A non-blocking connect has only begun: its outcome comes with a later event.
        res = "connecting" if res == "EINPROGRESS" else res
        return f"{head} {where} {ev.get('proto') or ''} {res or ''}".rstrip() + hint
    if kind in ("totals", "close"):
        dur = ev.get("duration")
        tail = f" {dur:.1f}s" if isinstance(dur, int | float) else ""
        res = ev.get("result")
        if res == "EINPROGRESS":
            res = "still connecting" if kind == "totals" else "closed while connecting"
        extra = f" {res}" if res not in (None, "ok") else ""
        return (f"{head} {where} sent {size(int(ev.get('sent') or 0))} "
                f"recv {size(int(ev.get('recv') or 0))}{tail}{extra}")
    if kind == "dns":
        return f"{head} {ev.get('host')} -> {', '.join(ev.get('answers') or []) or '-'}"
    if kind == "gap":
        return f"{head} {ev.get('target') or ''} {ev.get('reason') or ''}".rstrip()
    if kind == "deny":
        return f"{head} {where} {ev.get('proto') or ''} denied by {_denier(ev)}"
    return f"{head} {json.dumps(ev)}"


def _denier(ev: dict[str, Any]) -> str:
    """What denied a connection: the rule's origin (`--deny x`), or the allow-list."""
    if ev.get("default"):
        return "the allow-list (not in it)"
    return str(ev.get("label") or ev.get("rule") or "the network policy")


def headline(status: NetmonStatus) -> str:
    """The totals in one line."""
    connecting = status.get("connecting", 0)
    return (
        f"{status['log_path']}: {count(status['connections'], 'connection')} "
        f"({status['failed_connections']} failed, {status['accepted']} accepted"
        + (f", {connecting} connecting" if connecting else "") + "), "
        f"{count(status['unique_addresses'], 'address', 'addresses')}, "
        f"sent {size(status['bytes_sent'])}, received {size(status['bytes_received'])}, "
        f"{status['open_connections']} open"
        + (f", {status['denied']} denied by the network policy" if status.get("denied") else "")
        + (f", {count(status['gaps'], 'gap')}" if status["gaps"] else ""))


def _render(status: NetmonStatus, events: list[dict[str, Any]],
            notices: list[str] | None = None) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = text(headline(status))
    targets = Table(title="top targets by bytes", title_justify="left", expand=False)
    for col in ("target", "conns", "sent", "recv"):
        targets.add_column(col, justify="left" if col == "target" else "right")
    for row in status["top_by_bytes"]:
        targets.add_row(text(row["target"]), str(row["connections"]), size(row["sent"]),
                        size(row["recv"]))
    parts: list[Any] = [text(n, style="bold yellow") for n in (notices or [])[-3:]]
    parts += [head, targets]
    if status["open"]:
        opened = Table(title="open connections", title_justify="left")
        for col in ("target", "process", "since", "state", "sent", "recv"):
            opened.add_column(col)
        for c in status["open"][-15:]:
            opened.add_row(text(c["target"]), text(f"{c['exe']}[{c['pid']}]"),
                           _clock(c["ts"]), c.get("state", "open"), size(c["sent"]),
                           size(c["recv"]))
        parts.append(opened)
    denials = status.get("recent_denials") or []
    if denials:
        parts.append(Text(f"denied by the network policy ({status['denied']}; "
                          "`aegis-mcp netmon policy` says why):", style="bold red"))
        parts.extend(text(event_line({**d, "event": "deny"}), style="red")
                     for d in denials[-10:])
    for gap in status["recent_gaps"][-3:]:
        parts.append(text(f"gap: {gap.get('target') or ''} {gap.get('reason')}", style="yellow"))
    for hint in status.get("hints", [])[-5:]:
        parts.append(text(f"hint: {hint}", style="yellow"))
    if events:
        parts.append(Text("recent events:", style="bold"))
        parts.extend(Text(event_line(ev, hints=False)) for ev in events)
    return Group(*parts)


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

    if args.subcommand == "netmon policy":
        return _policy(args)
    if not 0 <= args.events <= 1000:
        raise AegisError(f"--events {args.events}: give a number from 0 to 1000")
    if not args.follow:
        log = find_log(args.target)
        status = _status_or_empty(log)
        try:
            events = tail(log, args.events) if args.events else []
        except NoLog:
            events = []
        if args.json:
            print(json.dumps({**status, "recent_events": events}, indent=2))
            return 0
        from aegis_mcp.display import print_table

        print_table(_render(status, events))
        return 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        return _follow(args)
    except KeyboardInterrupt:
        return 0


def _follow(args: argparse.Namespace) -> int:
    from aegis_mcp.netmon.follow import Follow

    live = sys.stdout.isatty() and not args.json
    notices: list[str] = []

    def notice(message: str) -> None:
        if live:
            notices.append(f"{time.strftime('%H:%M:%S')} {message}")
        else:
            with contextlib.suppress(OSError):
                sys.stderr.write(f"aegis-mcp: {plain(message)}\n")
                sys.stderr.flush()

    follow = Follow(args.target, notice, backlog=args.events)
    if not live:
        for _ in follow.wakeups():
            for ev in follow.poll():
                print(json.dumps(ev) if args.json else event_line(ev), flush=True)
        return 0
    from rich.live import Live

    def view(recent: list[dict[str, Any]]) -> Any:
        log = follow.log
        if log is None:
            from rich.console import Group

            return Group(*(text(n, style="bold yellow") for n in notices[-3:]))
        return _render(_status_or_empty(log), recent, notices)

    recent: list[dict[str, Any]] = []
    shown = len(notices)
    with Live(view(recent), auto_refresh=False) as screen:
        for _ in follow.wakeups():
            if follow.switched:
                recent, follow.switched = [], False
            new = follow.poll()
            if follow.switched:  # moved to another supervisor's log during this poll
                recent, follow.switched = [], False
            if new or len(notices) != shown:
                recent = (recent + new)[-max(args.events, 1):]
                shown = len(notices)
                screen.update(view(recent), refresh=True)
    return 0


# ---- aegis-mcp netmon policy ----------------------------------------------------------------


def _policy(args: argparse.Namespace) -> int:
    from aegis_mcp.errors import AegisError
    from aegis_mcp.netmon.log import NoLog, find_log

    if args.from_log is not None:
        from aegis_mcp.netmon import learn

        if args.target is not None:
            raise AegisError(f"give either --from-log LOG or a target, not both (got "
                             f"{plain(args.target)})", 2)
        log = find_log(args.from_log)
        try:
            usage = learn.learn(log)
        except NoLog as exc:
            raise AegisError(str(exc)) from None
        if args.json:
            print(json.dumps(learn.to_json(usage, log), indent=2))
        else:
            sys.stdout.write(learn.to_toml(usage, log))
        return 0
    report = _policy_report(args.target)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from aegis_mcp.display import print_table

    print_table(_render_policy(report))
    return 0


def _policy_report(target: str | None) -> Any:
    """The policy in force for `target` (as `aegis-mcp netmon` finds a log), its denials."""
    import os

    from aegis_mcp import procs
    from aegis_mcp.netmon import policy as netpolicy
    from aegis_mcp.netmon.denials import report
    from aegis_mcp.netmon.log import NoLog, find_log, tail

    log = find_log(target)
    found = netpolicy.path_for_log(log)
    policy_file = str(found) if found.exists() else None
    if policy_file is None and target is None:
        policy_file = os.environ.get(netpolicy.ENV_VAR) or None
    if policy_file is None and target is not None and target.isdigit():
        policy_file = procs.environ_of(int(target)).get(netpolicy.ENV_VAR) or None
    try:  # the mode is the one its events were recorded in
        last = tail(log, 1)
    except NoLog:
        last = []
    mode = last[0].get("mode") or last[0].get("source") if last else None
    return report(policy_file, str(log), mode if isinstance(mode, str) else None)


def _render_policy(report: Any) -> Any:
    from rich.console import Group
    from rich.table import Table

    parts: list[Any] = [text(report["summary"], style="" if report["active"] else "yellow")]
    if report["policy_file"]:
        parts.append(text(f"rules from {report['policy_file']} (a deny beats every allow):"))
        table = Table("", "rule", "from", box=None, pad_edge=False)
        for rule in report["rules"]:
            table.add_row(text(rule["action"], style="red" if rule["action"] == "deny"
                               else "green"), text(rule["rule"]),
                          text(rule["source"], style="dim" if rule["implicit"] else ""))
        parts.append(table)
    if report["denied"]:
        parts.append(text(f"{count(report['denied'], 'connection')} denied; the latest:",
                          style="bold red"))
        for d in report["recent_denials"]:
            parts.append(text(f"{_clock(d.get('ts'))} {d.get('exe') or '-'}"
                              f"[{d.get('pid') if d.get('pid') is not None else '-'}]: "
                              f"{d['advice']}", style="red"))
    elif report["active"]:
        parts.append(text("no connection denied so far"))
    return Group(*parts)
