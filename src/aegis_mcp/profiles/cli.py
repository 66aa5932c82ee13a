"""`aegis-mcp profiles`: the agent profiles this machine knows and whether each is installed."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict

from aegis_mcp.display import lines, print_table, text
from aegis_mcp.profiles.profile import BUILTIN_PROFILES, AgentProfile, load_config


def injection(profile: AgentProfile) -> str:
    """How the MCP server reaches the agent, in the words the user would check."""
    kind = profile.injection
    if kind == "mcp-config":
        return f"{kind}: {' '.join(profile.mcp_config_flag)}"
    if kind == "config-env":
        return f"{kind}: ${profile.config_env} (key {profile.mcp_servers_key!r})"
    if kind == "preload":
        return f"{kind}: {', '.join(profile.config_files)}"
    if kind == "codex-config":
        return f"{kind}: -c mcp_servers.*"
    return kind


def resume(profile: AgentProfile) -> str:
    """The restart's resume form: by session id when known, else the latest."""
    latest = " ".join([*profile.resume_prefix, *profile.resume_flags]) or "-"
    if not profile.resume_session:
        return f"latest: {latest}"
    how = ("named at start: " + profile.session_id_flag if profile.session_id_flag
           else "read from its open files" if profile.session_file
           else "reported by its hook" if profile.session_hook
           else "when you name it: " + " ".join(profile.session_id_options))
    return f"{' '.join(profile.resume_session)} ({how}); else {latest}"


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = (
        "List the agent profiles: for each agent name you can give `aegis-mcp`, the executable "
        "it runs and whether it is installed, how the MCP server is injected, how a restart "
        "resumes the conversation (by session id, or the latest), how a background agent of "
        "the pool runs it (headless), what of these this project's tests checked with the real "
        "CLI and on which versions, whether the agent itself waits for MCP servers that are still "
        "connecting (as measured, by version) and from which version on, the hosts it needs to "
        "run (its model API and sign-in, which a network policy's --allow list allows without "
        "asking; api_hosts), and whether the profile is built in or comes from your config file "
        "(~/.config/aegis-mcp/config.toml, [agents.<name>] tables).")
    parser.add_argument("--json", action="store_true", help="print the profiles as JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config()
    rows = []
    for name, profile in sorted(config.profiles.items()):
        names = (profile.command[0], *profile.alternatives)
        exe = next((found for n in names if (found := shutil.which(n))), None)
        origin = "built-in" if BUILTIN_PROFILES.get(name) == profile else str(config.source)
        how = {"injection": injection(profile), "resume": resume(profile),
               "headless": " ".join(profile.headless_args) or "none"}
        rows.append({**asdict(profile), "found": exe, "origin": origin, "how": how})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table("agent", "executable", "installed", "injection", "resume", "headless",
                  "verified with the real CLI", "MCP readiness (measured)", "waits since",
                  "API hosts", "origin")
    for row in rows:
        how = row["how"]
        table.add_row(*(text(cell) for cell in (
            row["name"], " ".join(row["command"]), row["found"] or "no", how["injection"],
            how["resume"], how["headless"], ", ".join(row["verified"]) or "no",
            row["mcp_readiness"] or "not measured", row["mcp_waits_since"] or "-")),
            lines(row["api_hosts"]) if row["api_hosts"] else text("-"), text(row["origin"]))
    print_table(table)
    return 0
