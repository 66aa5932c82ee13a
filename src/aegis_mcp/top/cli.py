"""`aegis-mcp top [--json] [-n N]`: one live view of your supervisors, background agents and
their network."""

from __future__ import annotations

import argparse
import json
import sys

from aegis_mcp.errors import AegisError

DESCRIPTION = """\
One screen for everything aegis-mcp runs for you, refreshed as it changes: every supervisor
(agent, pid, uptime, restarts and the last reason, session, aegis-mcp MCP servers up, network
monitoring with connections, bytes, failures and top hosts), and every background agent of the
pool (state, elapsed time, turns, cost, last event, queue position or lock, worktree and
branch). It works in any terminal, over ssh too.

keys:
  tab          switch between the supervisors and the background agents
  up/down      choose a row; its details show at the bottom
  enter, l     follow the chosen agent's output log, or the supervisor's network events
               (escape goes back)
  s            stop the chosen background agent and its processes (asks first)
  r            restart the chosen supervisor's agent in the same conversation (asks first)
  q            quit (the agents keep running)"""


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--json", action="store_true",
                        help="print one snapshot as JSON and exit (for scripts; no terminal "
                        "needed)")
    parser.add_argument("-n", "--limit", type=int, default=50, metavar="N",
                        help="background agents to list: the queued and running ones, then "
                        "the most recent ended ones, N in all (default 50, 1-10000)")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10_000:
        raise AegisError(f"--limit {args.limit}: give a number from 1 to 10000", 2)
    if args.json:
        from aegis_mcp.pool.pool import Pool
        from aegis_mcp.top.snapshot import take

        pool = Pool()
        try:
            print(json.dumps(take(pool, args.limit), indent=2))
        finally:
            pool.close()
        return 0
    if not (sys.stdin.isatty() and sys.stdout.isatty() and sys.stderr.isatty()):
        raise AegisError("top is a live view and needs a terminal; for a snapshot a script "
                         "can read, run `aegis-mcp top --json`", 2)
    from aegis_mcp.top.app import TopApp

    TopApp(limit=args.limit).run()
    return 0
