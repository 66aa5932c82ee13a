"""`aegis-mcp profiles`: the agent profiles this machine knows and whether each is installed."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict

from aegis_mcp.display import lines, print_table, text
from aegis_mcp.profiles.profile import BUILTIN_PROFILES, load_config


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = (
        "List the agent profiles: for each agent name you can give `aegis-mcp`, the executable "
        "it runs and whether it is installed, how a restart resumes the conversation, how the "
        "MCP server is injected, whether the agent itself waits for MCP servers that are still "
        "connecting (as measured, by version) and from which version on, the hosts it "
        "needs to run (its model API and sign-in, which a network policy's --allow list "
        "allows without asking; api_hosts), and whether the profile is built in or comes "
        "from your config file (~/.config/aegis-mcp/config.toml, [agents.<name>] tables).")
    parser.add_argument("--json", action="store_true", help="print the profiles as JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config()
    rows = []
    for name, profile in sorted(config.profiles.items()):
        names = (profile.command[0], *profile.alternatives)
        exe = next((found for n in names if (found := shutil.which(n))), None)
        origin = "built-in" if BUILTIN_PROFILES.get(name) == profile else str(config.source)
        rows.append({**asdict(profile), "found": exe, "origin": origin})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table("agent", "executable", "installed", "resume", "injection",
                  "MCP readiness (measured)", "waits since", "API hosts", "origin")
    for row in rows:
        resume = " ".join(row["resume_session"] or [*row["resume_prefix"], *row["resume_flags"]])
        table.add_row(*(text(cell) for cell in (
            row["name"], " ".join(row["command"]), row["found"] or "no", resume or "-",
            row["injection"], row["mcp_readiness"] or "not measured",
            row["mcp_waits_since"] or "-")),
            lines(row["api_hosts"]) if row["api_hosts"] else text("-"), text(row["origin"]))
    print_table(table)
    return 0
