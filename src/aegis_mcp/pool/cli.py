"""`aegis-mcp agents ...`: the agent pool for people (tables) and scripts (`--json`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from aegis_mcp.display import console, lines, plain, print_table, text
from aegis_mcp.errors import AegisError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aegis_mcp.pool.pool import Pool
    from aegis_mcp.pool.store import AgentStatus, AwaitResult

DESCRIPTION = """\
Background agents: each runs an agent CLI headless (claude -p, aider --message, codex exec,
...) on one task, in the background, and keeps running when this command, the MCP server or
the supervisor exits. The pool lives in one SQLite store in your state directory; settings
come from the [pool] table of the config file (see docs/pool.md)."""

EPILOG = """\
examples:
  aegis-mcp agents spawn "fix the failing tests in tests/test_api.py"
  aegis-mcp agents spawn --isolation worktree -C ~/src/app "add a --verbose flag"
  aegis-mcp agents list
  aegis-mcp agents await 3f9c --timeout 600
  aegis-mcp agents logs 3f9c --follow
  aegis-mcp agents stop 3f9c
  aegis-mcp agents prune --older-than 7d

Agent ids may be shortened to any unique prefix."""


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description)
        p.add_argument("--json", action="store_true", help="print JSON for scripts instead of "
                       "a table")
        return p

    p = add("spawn", "start a background agent on a task",
            "Start a background agent on TASK and print its id at once. It runs when a slot is "
            "free and no other agent holds a lock on an overlapping directory tree; until then "
            "it is queued.")
    p.add_argument("task", nargs="+", help="what the agent should do (its prompt)")
    from aegis_mcp.profiles.profile import BUILTIN_PROFILES

    headless = [n for n, prof in BUILTIN_PROFILES.items() if prof.headless_args and n != "claude"]
    p.add_argument("-t", "--type", dest="agent_type", default="claude",
                   help=f"agent profile: claude (default), {', '.join(headless)}, or one of "
                   "your config's [agents.NAME]")
    p.add_argument("-C", "--cwd", dest="working_directory", metavar="DIR",
                   help="directory to work in (default: the current one)")
    p.add_argument("--max-iterations", type=_positive_int, metavar="N",
                   help="stop after N turns (claude: --max-turns)")
    p.add_argument("--timeout", type=_seconds, metavar="SECS", dest="timeout_secs",
                   help="stop the agent after SECS seconds (0: never; default from config)")
    p.add_argument("--isolation", choices=("lock", "worktree"),
                   help="lock: lock the directory tree (the default); worktree: work in a new "
                   "git worktree on branch aegis/<id> so agents never share files")
    p.add_argument("--allow", action="append", default=[], metavar="RULE",
                   help="network policy: let the agent connect to RULE (a host, *.domain, an "
                   "address or CIDR, with an optional :port) and deny everything else but its "
                   "own model API (repeatable)")
    p.add_argument("--deny", action="append", default=[], metavar="RULE",
                   help="network policy: deny the agent's connections to RULE (repeatable)")
    p.add_argument("--wait", action="store_true",
                   help="then wait for the agent to end and print its result, as `await` "
                   "does (Ctrl-C stops the waiting, not the agent)")

    p = add("list", "list background agents",
            "List background agents, oldest first: queued and running ones, then the most "
            "recent finished ones.")
    p.add_argument("--active", action="store_true", help="only queued and running agents")
    p.add_argument("-n", "--limit", type=_positive_int, default=50,
                   help="show at most this many (default 50)")

    p = add("status", "show everything about one agent",
            "Show an agent's state, pid, times, turns, last output, and at the end its "
            "result, cost and session id.")
    p.add_argument("agent_id", help="agent id (or a unique prefix)")

    p = add("await", "wait for an agent to end and print its result",
            "Wait until the agent ends and print its result. Exit status: 0 if it completed, "
            "1 if it failed, was stopped or lost, 124 if --timeout passed first (the agent "
            "goes on: it keeps running, or stays queued). On a terminal a live line shows its "
            "state, time, turns and last event; Ctrl-C stops the waiting, not the agent.")
    p.add_argument("agent_id", help="agent id (or a unique prefix)")
    p.add_argument("--timeout", type=_seconds, metavar="SECS", dest="timeout_secs",
                   help="stop waiting after SECS seconds")

    p = add("stop", "stop an agent and its whole process tree",
            "Stop the agent and every process it started (SIGINT, then SIGTERM, then SIGKILL, "
            "each after the grace time) and record it as stopped; a queued agent just leaves "
            "the queue.")
    p.add_argument("agent_id", help="agent id (or a unique prefix)")

    add("stats", "pool counts: max agents, queued, running, completed, failed ...",
        "Show the pool size and how many agents are queued, running, completed, failed, "
        "stopped and lost.")
    add("locks", "directory trees locked by running agents, and who waits",
        "Show every directory tree locked by a running agent, since when, and the queued "
        "agents waiting for it.")

    p = add("prune", "forget agents that ended long ago (rows, logs)",
            "Forget agents that ended more than --older-than ago: their records, logs and done "
            "files. Agents whose git worktree still exists are kept, so unmerged work is not "
            "lost; --worktrees removes those worktrees too (git refuses one with uncommitted "
            "changes; branches are always kept).")
    p.add_argument("--older-than", type=_duration, default=7 * 86400.0, metavar="AGE",
                   help="e.g. 30m, 12h, 7d (default), or 0 for every ended agent")
    p.add_argument("--worktrees", action="store_true",
                   help="also remove the git worktrees of those agents (not their branches)")

    p = add("logs", "print an agent's output log",
            "Print the agent's full output log (its stream-json events for claude), or the last "
            "lines of it; --follow keeps printing until the agent ends.")
    p.add_argument("agent_id", help="agent id (or a unique prefix)")
    p.add_argument("-n", "--lines", type=_positive_int, metavar="N",
                   help="only the last N lines")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new output until the agent ends")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 7 * 86400:
        raise argparse.ArgumentTypeError(f"{text} must be from 0 to 604800 seconds")
    return value


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age like 30m, 12h or 7d") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def _prune(pool: Pool, args: argparse.Namespace) -> int:
    result = pool.prune(args.older_than, worktrees=args.worktrees)
    if args.json:
        _print_json(result)
        return 0
    print(f"removed {len(result['removed'])} ended agent(s)")
    for kept in result["kept"]:
        print(plain(f"kept {kept['agent_id']} (branch {kept['branch']}): {kept['why']}"))
    return 0


def run(args: argparse.Namespace) -> int:
    from aegis_mcp.pool.pool import Pool

    pool = Pool()
    try:
        return _ACTIONS[args.action](pool, args)
    finally:
        pool.close()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


_STATE_STYLE = {"queued": "yellow", "starting": "cyan", "running": "cyan", "completed": "green",
                "failed": "red", "stopped": "magenta", "lost": "red"}


def _state(s: AgentStatus) -> Any:
    return text(s["state"], style=_STATE_STYLE.get(s["state"], ""))


def _spawn(pool: Pool, args: argparse.Namespace) -> int:
    status = pool.spawn(" ".join(args.task), args.agent_type, args.working_directory,
                        args.max_iterations, args.isolation, args.timeout_secs,
                        network_allow=args.allow, network_deny=args.deny)
    if args.json and not args.wait:
        _print_json(status)
    elif not args.json:
        # With --wait too: the id first, at once (--json keeps to one document at the end).
        where = f" in worktree {status['worktree_path']} (branch {status['branch']})" \
            if status["worktree_path"] else ""
        queued = f", position {status['queue_position']} in the queue" \
            if status["state"] == "queued" else ""
        waits = f", waiting for {', '.join(status['waiting_for'])}" \
            if status["waiting_for"] else ""
        print(plain(f"{status['agent_id']}  {status['state']}{queued}{waits}{where}"), flush=True)
    if args.wait:
        return _wait(pool, status["agent_id"], None, args)
    return 0


def _list(pool: Pool, args: argparse.Namespace) -> int:
    agents = pool.list(args.active, args.limit)
    if args.json:
        _print_json(agents)
        return 0
    if not agents:
        print("no background agents (start one with `aegis-mcp agents spawn TASK`)")
        return 0
    from rich import box
    from rich.table import Table

    out = console()
    # On a terminal the fixed columns keep their width and the task and the last event share
    # the rest (2:3), cut to one line each; piped, every value is there in full.
    fit = out.is_terminal
    table = Table(box=box.SIMPLE_HEAD, expand=fit)
    for name, width in (("id", 8), ("state", 9), ("type", 6), ("turns", 5), ("elapsed", 7)):
        table.add_column(name, no_wrap=True, min_width=width)
    table.add_column("task", no_wrap=True, overflow="ellipsis", min_width=8,
                     ratio=2 if fit else None)
    table.add_column("last event", no_wrap=True, overflow="ellipsis", min_width=12,
                     ratio=3 if fit else None)
    for a in agents:
        last = a["reason"] if a["state"] in ("failed", "stopped", "lost") else a["last_event"]
        if a["state"] == "queued":
            last = f"queue #{a['queue_position']}" + (
                f", waits for {', '.join(a['waiting_for'])}" if a["waiting_for"] else "")
        table.add_row(text(a["agent_id"]), _state(a), text(a["agent_type"]),
                      str(a["iterations"]),
                      f"{a['elapsed_secs']:.0f}s" if a["elapsed_secs"] is not None else "-",
                      text(a["description"]), text((last or "").replace("\n", " ")))
    print_table(table, out)
    return 0


def _status_table(s: AgentStatus) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # on a terminal a long path folds, never ends in "…"
    skip = {"last_output", "notes", "waiting_for", "network"}
    for key, value in s.items():
        if key in skip or value is None or value == []:
            continue
        table.add_row(key, _state(s) if key == "state" else text(value))
    if s["network"] is not None:
        from aegis_mcp.netmon.digest import describe

        table.add_row("network", text(describe(s["network"])))
    if s["waiting_for"]:
        table.add_row("waiting_for", text(", ".join(s["waiting_for"])))
    for note in s["notes"]:
        table.add_row("note", text(note))
    if s["last_output"]:
        table.add_row("last_output", lines(s["last_output"]))
    print_table(table)


def _status(pool: Pool, args: argparse.Namespace) -> int:
    status = pool.status(args.agent_id)
    if args.json:
        _print_json(status)
    else:
        _status_table(status)
    return 0


def _goes_on(s: AgentStatus) -> str:
    """What an agent does without anyone waiting for it, as the end of a sentence."""
    if s["state"] == "queued":
        waits = f", waiting for {', '.join(s['waiting_for'])}" if s["waiting_for"] else ""
        return f"stays queued (position {s['queue_position']}{waits}) and starts by itself"
    if s["state"] in ("starting", "running"):
        return "keeps running"
    return f"has ended meanwhile ({s['state']})"


def _print_await(status: AwaitResult, args: argparse.Namespace) -> int:
    if args.json:
        _print_json(status)
    elif status["timed_out"]:
        print(plain(f"stopped waiting (--timeout passed); agent {status['agent_id']} "
                    f"{_goes_on(status)}"))
    else:
        _status_table(status)
    if status["timed_out"]:
        return 124
    return 0 if status["state"] == "completed" else 1


def _await(pool: Pool, args: argparse.Namespace) -> int:
    return _wait(pool, pool.resolve_id(args.agent_id), args.timeout_secs, args)


def _wait(pool: Pool, agent_id: str, timeout_secs: float | None,
          args: argparse.Namespace) -> int:
    """`await` and `spawn --wait` (`agent_id` is a full id): on a terminal a live line (state,
    elapsed time, turns, last event) redrawn when the agent's status changes, else nothing
    until the end. Ctrl-C stops the waiting, never the agent (it runs in a session of its
    own): exit 130 and one line on what goes on and how to follow it, wherever in the wait it
    lands."""
    progress = _Progress(agent_id)
    try:
        out = console()
        with _no_echoed_interrupt():
            if out.is_terminal and not args.json:
                from rich.live import Live

                # Redrawn at each change (on_progress) and once a second for the clock; gone
                # at the end, where the result takes its place.
                with Live(progress, console=out, transient=True, refresh_per_second=1,
                          redirect_stdout=False, redirect_stderr=False) as live:
                    def on_progress(status: AgentStatus) -> None:
                        progress.update(status)
                        live.refresh()

                    result = pool.await_agent(agent_id, timeout_secs, on_progress)
            else:
                result = pool.await_agent(agent_id, timeout_secs)
    except KeyboardInterrupt:
        print(plain(_stopped_waiting(pool, agent_id, progress.status)), file=sys.stderr)
        return 130
    return _print_await(result, args)


def _stopped_waiting(pool: Pool, agent_id: str, last: AgentStatus | None) -> str:
    """The line for a Ctrl-C during a wait: the agent's state now, what it does next, and the
    commands to follow or stop it."""
    from aegis_mcp.pool.pool import Pool
    from aegis_mcp.pool.store import ENDED

    status = last
    # A connection of its own: the interrupt may have hit the wait's one inside a transaction.
    with contextlib.suppress(Exception):
        fresh = Pool(pool.dir)
        try:
            status = fresh.status(agent_id, refresh=False)
        finally:
            fresh.close()
    if status is not None and status["state"] in ENDED:
        return (f"stopped waiting; agent {agent_id} {_goes_on(status)}: see `aegis-mcp agents "
                f"status {agent_id}`")
    goes_on = "goes on in the background" if status is None else _goes_on(status)
    stop = "take it off the queue" if status and status["state"] == "queued" else "stop it"
    return (f"stopped waiting; agent {agent_id} {goes_on}: follow it with `aegis-mcp agents "
            f"await {agent_id}` or {stop} with `aegis-mcp agents stop {agent_id}`")


@contextlib.contextmanager
def _no_echoed_interrupt() -> Iterator[None]:
    """While waiting: the terminal does not echo `^C` (ECHOCTL off), so the line that Ctrl-C
    leads to is not preceded by it. Only when we are the terminal's foreground process:
    changing it from the background would stop us (SIGTTOU)."""
    import termios

    fd: int | None = None
    saved: list[Any] | None = None
    with contextlib.suppress(OSError, ValueError, AttributeError, termios.error):
        if sys.stdin is not None and sys.stdin.isatty() \
                and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp():
            fd = sys.stdin.fileno()
            saved = termios.tcgetattr(fd)
            quiet = termios.tcgetattr(fd)
            quiet[3] &= ~termios.ECHOCTL
            termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        if fd is not None and saved is not None:
            with contextlib.suppress(OSError, termios.error):
                termios.tcsetattr(fd, termios.TCSANOW, saved)


def _clock(secs: float) -> str:
    secs = int(max(0.0, secs))
    h, rest = divmod(secs, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class _Progress:
    """The live line of a wait: `3f9c1a2b  running  1:02  3 turns  last: ...`. The clock runs
    between two status reads: Live draws it once a second, without reading the store."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.status: AgentStatus | None = None
        self.read_at = time.monotonic()

    def update(self, status: AgentStatus) -> None:
        self.status, self.read_at = status, time.monotonic()

    def __rich__(self) -> Any:
        from datetime import datetime

        from rich.text import Text

        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(plain(self.agent_id))
        s = self.status
        if s is None:
            line.append("  waiting for its status ...")
            return line
        line.append("  ")
        line.append(_state(s))
        since = time.monotonic() - self.read_at
        if s["elapsed_secs"] is not None:  # running: since it started
            line.append(f"  {_clock(s['elapsed_secs'] + since)}")
        elif s["created_at"]:  # queued or starting: since it was spawned
            created = datetime.fromisoformat(s["created_at"]).timestamp()
            line.append(f"  {_clock(time.time() - created)}")
        if s["state"] == "queued":
            line.append(f"  position {s['queue_position']}")
            if s["waiting_for"]:
                line.append(plain(f", waiting for {', '.join(s['waiting_for'])}"))
            return line
        turns = s["iterations"]
        line.append(f"  {turns} turn{'' if turns == 1 else 's'}")
        if s["last_event"]:
            line.append("  last: ", style="dim")
            line.append(plain(s["last_event"]))
        return line


def _stop(pool: Pool, args: argparse.Namespace) -> int:
    status = pool.stop(args.agent_id)
    if args.json:
        _print_json(status)
    elif status["stopped_now"]:
        print(plain(f"{status['agent_id']} stopped" + (f": {status['reason']}"
                                                        if status["reason"] else "")))
    else:
        print(plain(f"{status['agent_id']} had already ended ({status['state']})"))
    return 0


def _stats(pool: Pool, args: argparse.Namespace) -> int:
    stats = pool.stats()
    if args.json:
        _print_json(stats)
        return 0
    from rich.table import Table

    keys = ("max_agents", "active", "queued", "running", "completed", "failed", "stopped", "lost")
    table = Table(*keys)
    table.add_row(*(str(stats[k]) for k in keys))
    print_table(table)
    return 0


def _locks(pool: Pool, args: argparse.Namespace) -> int:
    locks = pool.locks()
    if args.json:
        _print_json(locks)
        return 0
    if not locks:
        print("no locks held (no agent is running)")
        return 0
    from rich.table import Table

    table = Table()
    table.add_column("path", overflow="fold")
    for name in ("agent", "kind", "since"):
        table.add_column(name, no_wrap=True)
    table.add_column("waiting", overflow="fold")
    for lock in locks:
        table.add_row(text(lock["path"]), text(lock["agent_id"]), text(lock["kind"]),
                      text(lock["since"] or "-"), text(", ".join(lock["waiting"]) or "-"))
    print_table(table)
    return 0


def _logs(pool: Pool, args: argparse.Namespace) -> int:
    from aegis_mcp.pool.store import ENDED
    from aegis_mcp.pool.watch import Watch

    agent_id = pool.resolve_id(args.agent_id)
    path = pool.log_path(agent_id)
    if args.json:
        if args.follow:
            raise AegisError("--follow prints the raw log as it grows; leave out --json")
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        _print_json({"agent_id": agent_id, "log_path": str(path),
                     "lines": lines[-args.lines:] if args.lines else lines})
        return 0
    out = sys.stdout.buffer
    try:
        with open(path, "rb") as f:
            data = f.read()
            if args.lines:
                data = b"".join(data.splitlines(keepends=True)[-args.lines:])
            out.write(data)
            out.flush()
            if not args.follow:
                return 0
            with Watch([path, pool.done]) as watch:
                while True:
                    ended = pool.status(agent_id)["state"] in ENDED
                    chunk = f.read()
                    if chunk:
                        out.write(chunk)
                        out.flush()
                    if ended:
                        return 0
                    watch.wait(2.0)
    except FileNotFoundError:
        if args.follow:
            # Not started yet: its runner creates the log. Wait for it, bounded by the agent.
            deadline = time.monotonic() + 3600
            while not os.path.exists(path) and time.monotonic() < deadline:
                if pool.status(agent_id)["state"] in ENDED:
                    return 0
                time.sleep(0.2)
            return _logs(pool, args)
        print(plain(f"{agent_id} has no output yet (state {pool.status(agent_id)['state']})"))
        return 0
    except BrokenPipeError:
        return 0


_ACTIONS = {"spawn": _spawn, "list": _list, "status": _status, "await": _await, "stop": _stop,
            "stats": _stats, "locks": _locks, "logs": _logs, "prune": _prune}
