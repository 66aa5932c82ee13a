"""`aegis-mcp restart` and `aegis-mcp ps`: talk to running supervisors from any terminal."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aegis_mcp import procs
from aegis_mcp.errors import AegisError
from aegis_mcp.paths import control_dirs
from aegis_mcp.supervise import control


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "restart":
        parser.description = (
            "Restart the agent of a running `aegis-mcp <agent>` supervisor: it stops the agent's "
            "whole process tree and starts it again resuming the same conversation. Without "
            "--pid: the supervisor of this agent session (inside one), else the only one running.")
        parser.add_argument("--pid", type=int, help="the supervisor's pid (see `aegis-mcp ps`)")
        parser.add_argument("--reason", default="requested from the command line",
                            help="why, shown in the terminal and in server_status")
        parser.add_argument("--prompt", help="a prompt the restarted agent starts with")
        parser.add_argument("--delay", type=float, default=0.0,
                            help="seconds to wait before stopping the agent (0 to 10)")
        parser.add_argument("--wait", type=float, nargs="?", const=30.0, default=None,
                            metavar="SECS",
                            help="wait (up to SECS, default 30) for what can be verified of "
                            "this agent's restart, and say each as soon as it is known: the "
                            "new agent's pid, and its aegis-mcp MCP server's hello where the "
                            "agent can start it. Exit 0 when all of it was verified, "
                            f"{NOT_RESTARTED} when the agent was not running again, "
                            f"{SERVER_NOT_SEEN} when its MCP server was not seen in time")
    else:
        parser.description = (
            "List the aegis-mcp supervisors running for you (one per `aegis-mcp <agent>` "
            "terminal): supervisor pid, agent, agent pid, restart count, uptime, last restart "
            "reason, network monitoring mode and working directory. Use a pid with "
            "`aegis-mcp restart --pid`. Supervisors that died without cleaning up are listed "
            "as stale, with the processes they left running (pid, command).")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _live_sockets() -> list[tuple[int, Path]]:
    return [found for runtime in control_dirs() for found in control.live_sockets(runtime)]


def find_supervisor(pid: int | None) -> Path:
    """The control socket to talk to: --pid, else $AEGIS_CONTROL, else the only live one."""
    if pid is not None:
        for runtime in control_dirs():
            path = control.socket_path(runtime, pid)
            if path.exists():
                return path
        raise AegisError(f"no aegis-mcp supervisor with pid {pid} is running for you "
                         "(see `aegis-mcp ps`)")
    if env := os.environ.get("AEGIS_CONTROL"):
        return Path(env)
    live = _live_sockets()
    if not live:
        raise AegisError("no aegis-mcp supervisor is running for you: start one with "
                         "`aegis-mcp <agent>`")
    if len(live) > 1:
        pids = ", ".join(str(p) for p, _ in live)
        raise AegisError(f"{len(live)} supervisors are running (pids {pids}): choose one "
                         "with --pid")
    return live[0][1]


NOT_RESTARTED = 1
SERVER_NOT_SEEN = 3
"""Exit statuses of `restart --wait` (0: everything verifiable was verified)."""
POLL_SECONDS = 0.05


def _status(path: Path, deadline: float) -> dict[str, Any] | None:
    """The supervisor's status, or None when it did not answer in time (a busy machine): the
    wait goes on until its own deadline; a supervisor that is gone ends it."""
    try:
        answer = control.request(path, {"op": "status"},
                                 timeout=max(0.1, min(5.0, deadline - time.monotonic())))
    except control.NoSupervisorError:
        raise AegisError(f"the supervisor at {path} exited before the agent ran again "
                         "(see its terminal)", NOT_RESTARTED) from None
    except AegisError:
        return None
    return answer.get("status") if answer.get("ok") else None


def wait_for_restart(path: Path, count: int, timeout: float, verifiable: list[str],
                     report: Callable[[str, dict[str, Any]], None] = lambda _w, _s: None
                     ) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """Wait for what can be verified of restart number `count`: "restarted" (an agent runs
    again after it), then, if in `verifiable`, "mcp_server" (that start's aegis-mcp server said
    hello). `report(item, status)` is called as soon as each is known. Returns the last status,
    what was verified, and what was not seen in time (item: why)."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    verified: list[str] = []
    while time.monotonic() < deadline:
        status = _status(path, deadline) or status
        if not verified and status.get("restart_count", 0) >= count and status["agent_pid"]:
            verified.append("restarted")
            report("restarted", status)
        if verified and "mcp_server" in verifiable and status["mcp_servers_seen"]:
            verified.append("mcp_server")
            report("mcp_server", status)
        if verified and all(item in verified for item in verifiable):
            return status, verified, {}
        time.sleep(POLL_SECONDS)
    if not verified:
        raise AegisError(f"the agent was not running again after {timeout:g}s (see `aegis-mcp "
                         "ps`)", NOT_RESTARTED)
    return status, verified, {"mcp_server": "the new agent's aegis-mcp MCP server did not say "
                                            f"hello within {timeout:g}s"}


def _wait_and_report(path: Path, answer: dict[str, Any], timeout: float, as_json: bool) -> int:
    """`restart --wait`: say at once what cannot be verified for this agent, then each item as
    soon as it is verified; with --json, one object at the end."""
    # A supervisor that predates "verifiable" can verify the restart only.
    verifiable = answer.get("verifiable", ["restarted"])
    cannot = answer.get("cannot_verify", {})
    started = time.monotonic()

    def say(item: str, status: dict[str, Any]) -> None:
        if as_json:
            return
        after = f"{time.monotonic() - started:.1f}s"
        if item == "restarted":
            print(f"restarted: {status['agent']} pid {status['agent_pid']} (restart "
                  f"{status['restart_count']}, after {after})", flush=True)
        else:
            server = status["mcp_servers_seen"][0]
            print(f"aegis-mcp MCP server: up (pid {server['pid']}, after {after})", flush=True)

    if not as_json:
        print(answer["message"], flush=True)
        for item, why in cannot.items():
            print(f"{_NAMES.get(item, item)}: cannot be verified: {why}", flush=True)
    try:
        status, verified, missed = wait_for_restart(path, answer["restart_count"], timeout,
                                                    verifiable, say)
    except AegisError as exc:
        if as_json:
            print(json.dumps({**answer, "verified": [], "not_verified": {
                "restarted": str(exc)}}))
        raise
    if as_json:
        print(json.dumps({**answer, "restarted": status, "verified": verified,
                          "not_verified": missed}))
    for item, why in missed.items():
        if not as_json:
            print(f"{_NAMES.get(item, item)}: not verified: {why}", flush=True)
    return SERVER_NOT_SEEN if missed else 0


_NAMES = {"restarted": "restart", "mcp_server": "aegis-mcp MCP server"}


def supervisors(stale: bool = True) -> list[dict[str, Any]]:
    """A row per supervisor: the status of each live one (`stale: false`), then one per dead
    supervisor whose socket is left or whose marked processes still run (`stale: true`, with
    `leftovers`: the processes carrying its mark, which outlived it). `stale=False` leaves the
    dead ones out, and so the look at every process of the system that finds their
    leftovers: the live view asks for those only when a supervisor came or went."""
    dirs = control_dirs()
    rows: list[dict[str, Any]] = []
    answering: set[str] = set()  # live, or alive but not answering: not stale
    dead: dict[str, int] = {}
    for pid, path in (found for runtime in dirs for found in control.sockets(runtime)):
        if not procs.alive(pid):
            dead[str(path)] = pid
            continue
        try:
            answer = control.request(path, {"op": "status"}, timeout=2)
        except control.NoSupervisorError:
            dead[str(path)] = pid  # its pid now belongs to another process
            continue
        except AegisError:
            answering.add(str(path))
            continue
        answering.add(str(path))
        if answer.get("ok"):
            rows.append({**answer["status"], "stale": False})
    if not stale:
        return rows
    roots = {str(d) for d in dirs} | {str(d.resolve()) for d in dirs}
    left = procs.leftovers(lambda mark: mark[1] not in answering
                              and str(Path(mark[1]).parent) in roots)
    for pid, path in left:
        dead.setdefault(path, pid)
    for path, pid in sorted(dead.items(), key=lambda item: item[1]):
        theirs = left.get((pid, path), [])
        rows.append({"supervisor_pid": pid, "control_socket": path, "stale": True,
                     "leftovers": [_describe(p) for p in sorted(theirs, key=lambda p: p.pid)]})
    return rows


def _describe(proc: Any) -> dict[str, Any]:
    import psutil

    try:
        command = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        command = "?"
    return {"pid": proc.pid, "command": command}


def run(args: argparse.Namespace) -> int:
    if args.subcommand == "restart":
        if not 0 <= args.delay <= 10:
            raise AegisError("--delay must be between 0 and 10 seconds", 2)
        if args.wait is not None and not 0 < args.wait <= 600:
            raise AegisError("--wait must be between 0 and 600 seconds", 2)
        path = find_supervisor(args.pid)
        answer = control.request(path, {"op": "restart", "reason": args.reason,
                                        "prompt": args.prompt, "delay": args.delay})
        if not answer.get("ok"):
            if args.json:
                print(json.dumps(answer))
            raise AegisError(answer.get("error", "the supervisor refused the restart"))
        if args.wait is None:
            print(json.dumps(answer) if args.json else answer["message"])
            return 0
        return _wait_and_report(path, answer, args.wait, args.json)
    rows = supervisors()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no aegis-mcp supervisors running", file=sys.stderr)
        return 0
    _print_rows(rows)
    return 0


def _print_rows(rows: list[dict[str, Any]]) -> None:
    # Every cell is display.text: a restart reason or a path is untrusted, never Rich markup
    # and never a terminal escape.
    from rich.table import Table

    from aegis_mcp.display import print_table, short
    from aegis_mcp.display import text as Text

    live = [r for r in rows if not r["stale"]]
    if live:
        table = Table("pid", "agent", "agent pid", "session", "restarts", "up", "last restart",
                      "netmon", "cwd")
        for row in live:
            up = time.strftime("%H:%M:%S", time.gmtime(row["supervisor_uptime_s"]))
            # the first 8 characters tell sessions apart, as a short commit id does; --json
            # has the whole id
            sid = (row.get("session_id") or "-")[:8]
            table.add_row(*(Text(str(cell)) for cell in (
                row["supervisor_pid"], row["agent"], row["agent_pid"] or "-", sid,
                row["restart_count"], up, row["last_restart_reason"] or "-",
                row["netmon_mode"] or "off", row["cwd"])))
        print_table(table)
    stale = [r for r in rows if r["stale"]]
    if not stale:
        return
    table = Table(title=Text("stale: supervisors that died without cleaning up"))
    table.add_column("pid", no_wrap=True)
    table.add_column("control socket", overflow="fold", min_width=16)
    table.add_column("left running", no_wrap=True)
    table.add_column("command", overflow="fold", min_width=16)
    for row in stale:
        first = [Text(str(row["supervisor_pid"])), Text(row["control_socket"])]
        for proc in row["leftovers"] or [{"pid": "-", "command": "-"}]:
            table.add_row(*first, Text(str(proc["pid"])), Text(short(proc["command"], 100)))
            first = [Text(""), Text("")]
    print_table(table)
    pids = " ".join(str(p["pid"]) for r in stale for p in r["leftovers"])
    if pids:
        print_table(Text(f"end what they left with: kill {pids}"))
