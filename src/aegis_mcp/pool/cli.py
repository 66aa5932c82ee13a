"""`aegis-mcp agents ...`: the agent pool for people (tables) and scripts (`--json`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from aegis_mcp.display import lines, plain, text
from aegis_mcp.errors import AegisError

if TYPE_CHECKING:
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
    p.add_argument("-t", "--type", dest="agent_type", default="claude",
                   help="agent profile: claude (default), cursor, aider, codex, gemini, or one "
                   "of your config's [agents.NAME]")
    p.add_argument("-C", "--cwd", dest="working_directory", metavar="DIR",
                   help="directory to work in (default: the current one)")
    p.add_argument("--max-iterations", type=_positive_int, metavar="N",
                   help="stop after N turns (claude: --max-turns)")
    p.add_argument("--timeout", type=_seconds, metavar="SECS", dest="timeout_secs",
                   help="stop the agent after SECS seconds (0: never; default from config)")
    p.add_argument("--isolation", choices=("lock", "worktree"),
                   help="lock: lock the directory tree (the default); worktree: work in a new "
                   "git worktree on branch aegis/<id> so agents never share files")
    p.add_argument("--wait", action="store_true",
                   help="wait for the agent to end and print its result")

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
            "keeps running).")
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


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


_STATE_STYLE = {"queued": "yellow", "starting": "cyan", "running": "cyan", "completed": "green",
                "failed": "red", "stopped": "magenta", "lost": "red"}


def _state(s: AgentStatus) -> Any:
    return text(s["state"], style=_STATE_STYLE.get(s["state"], ""))


def _spawn(pool: Pool, args: argparse.Namespace) -> int:
    status = pool.spawn(" ".join(args.task), args.agent_type, args.working_directory,
                        args.max_iterations, args.isolation, args.timeout_secs)
    if args.wait:
        return _print_await(pool.await_agent(status["agent_id"]), args)
    if args.json:
        _print_json(status)
    else:
        where = f" in worktree {status['worktree_path']} (branch {status['branch']})" \
            if status["worktree_path"] else ""
        queued = f", position {status['queue_position']} in the queue" \
            if status["state"] == "queued" else ""
        waits = f", waiting for {', '.join(status['waiting_for'])}" \
            if status["waiting_for"] else ""
        print(plain(f"{status['agent_id']}  {status['state']}{queued}{waits}{where}"))
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

    table = Table(box=box.SIMPLE_HEAD)
    # Fixed columns keep their width; the task and the last event share the rest.
    for name, width in (("id", 8), ("state", 9), ("type", 6), ("turns", 5), ("elapsed", 7)):
        table.add_column(name, no_wrap=True, min_width=width)
    table.add_column("task", no_wrap=True, overflow="ellipsis", min_width=8, max_width=30)
    table.add_column("last event", no_wrap=True, overflow="ellipsis", min_width=12)
    for a in agents:
        last = a["reason"] if a["state"] in ("failed", "stopped", "lost") else a["last_event"]
        if a["state"] == "queued":
            last = f"queue #{a['queue_position']}" + (
                f", waits for {', '.join(a['waiting_for'])}" if a["waiting_for"] else "")
        table.add_row(text(a["agent_id"]), _state(a), text(a["agent_type"]),
                      str(a["iterations"]),
                      f"{a['elapsed_secs']:.0f}s" if a["elapsed_secs"] is not None else "-",
                      text(a["description"]), text((last or "").replace("\n", " ")))
    _console().print(table)
    return 0


def _status_table(s: AgentStatus) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    skip = {"last_output", "notes", "waiting_for"}
    for key, value in s.items():
        if key in skip or value is None or value == []:
            continue
        table.add_row(key, _state(s) if key == "state" else text(value))
    if s["waiting_for"]:
        table.add_row("waiting_for", text(", ".join(s["waiting_for"])))
    for note in s["notes"]:
        table.add_row("note", text(note))
    if s["last_output"]:
        table.add_row("last_output", lines(s["last_output"]))
    _console().print(table)


def _status(pool: Pool, args: argparse.Namespace) -> int:
    status = pool.status(args.agent_id)
    if args.json:
        _print_json(status)
    else:
        _status_table(status)
    return 0


def _print_await(status: AwaitResult, args: argparse.Namespace) -> int:
    if args.json:
        _print_json(status)
    elif status["timed_out"]:
        print(plain(f"{status['agent_id']} is still {status['state']} (stopped waiting; it "
                    "keeps running)"))
    else:
        _status_table(status)
    if status["timed_out"]:
        return 124
    return 0 if status["state"] == "completed" else 1


def _await(pool: Pool, args: argparse.Namespace) -> int:
    return _print_await(pool.await_agent(args.agent_id, args.timeout_secs), args)


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
    _console().print(table)
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

    table = Table("path", "agent", "kind", "since", "waiting")
    for lock in locks:
        table.add_row(text(lock["path"]), text(lock["agent_id"]), text(lock["kind"]),
                      text(lock["since"] or "-"), text(", ".join(lock["waiting"]) or "-"))
    _console().print(table)
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
