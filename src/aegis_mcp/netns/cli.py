"""`aegis-mcp netns list|cleanup [--json]`: the aegis network namespaces on this machine."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from aegis_mcp.display import plain


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = (
        "List the aegis-* network namespaces of --netmon=netns supervisors (owner pid, alive or "
        "stale, addresses, age), or remove the stale ones (owner dead): the processes still "
        "running inside are stopped (SIGTERM, then SIGKILL), then the namespace goes with its "
        "veth, nftables table and /etc/netns directory. cleanup needs root; it never touches "
        "a live namespace or one aegis-mcp did not create.")
    parser.add_argument("action", choices=("list", "cleanup"), help="what to do")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _print_list(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no aegis network namespaces")
        return
    print(f"{'NAME':<16} {'OWNER':>8} {'STATUS':<8} {'NAMESPACE ADDR':<16} {'HOST END':<16} AGE")
    for row in rows:
        status = ("?" if row["ours"] is None else "foreign" if not row["ours"]
                  else "alive" if row["alive"] else "stale")
        print(plain(f"{row['name']:<16} {row.get('owner_pid') or '?':>8} {status:<8} "
                    f"{row.get('ns_addr') or '-':<16} {row.get('host_addr') or '-':<16} "
                    f"{_age(row.get('age'))}"))
    stale = sum(1 for r in rows if r.get("stale"))
    if stale:
        print(f"{stale} stale: remove with `sudo aegis-mcp netns cleanup`")
    if any(r["ours"] is None for r in rows):
        print("run `sudo aegis-mcp netns list` for owners, addresses and which ones are stale "
              "(the namespace state is readable by root only)")


def run(args: argparse.Namespace) -> int:
    from aegis_mcp.netns import namespace as netns

    if args.action == "list":
        rows = netns.list_namespaces()
        if args.json:
            print(json.dumps({"namespaces": rows, "time": time.time()}, indent=1))
        else:
            _print_list(rows)
        return 0
    removed = netns.cleanup_stale()
    if args.json:
        print(json.dumps({"removed": removed}, indent=1))
        return 0
    if not removed:
        print("nothing to clean up: no stale aegis namespace")
    for row in removed:
        stopped, left = row["processes_stopped"], row["processes_left_inside"]
        extra = f"; stopped {len(stopped)} processes left inside: {stopped}" if stopped else ""
        if left:
            extra += f"; {len(left)} would not stop: {left}"
        print(plain(f"removed {row['name']} (owner pid {row['owner_pid']} gone): namespace, "
                    f"veth {row['veth']}, nftables table {row['table']}{extra}"))
    return 0
