"""The `aegis-mcp` command line: a thin layer over the supervisor and the subcommands.

Imports are lazy on purpose: every hot-reload starts `aegis-mcp --mcp-server` again, so the
path to the MCP server must not pay for the supervisor's or the CLI tables' imports.
"""

from __future__ import annotations

import importlib
import sys

USAGE = """\
usage: aegis-mcp [OPTIONS] AGENT [AGENT ARGS...]
       aegis-mcp [OPTIONS] -- COMMAND [ARGS...]
       aegis-mcp SUBCOMMAND ...
       aegis-mcp --mcp-server

Run an AI coding agent in this terminal under a supervisor that can restart it (keeping the
conversation) when the agent, you, or a watched file asks; that gives the agent MCP tools for
restarts, a pool of background agents and network monitoring; and that can record every
connection the agent makes.

agents: {agents}
  Arguments after AGENT go to the agent (`aegis-mcp claude -p "fix the tests"`).
  `aegis-mcp -- my-agent --flag` runs any command as a generic agent.

options (before or after AGENT; put agent flags of the same name after `--`):
  --netmon[=MODE]         record the agent's network connections; MODE is preload (LD_PRELOAD,
                          no root needed), netns (network namespace, needs sudo) or auto
                          (netns as root, preload otherwise; the default for a bare --netmon)
  --allow RULE            network policy: allow the agent's connections to RULE and deny all
                          others (repeatable). RULE: a host name (*.example.com: its
                          subdomains), an address or a CIDR range, with an optional port:
                          api.example.com:443, 10.0.0.0/8:5432, [2001:db8::1]:443. The
                          agent's own model API and DNS stay allowed unless denied
  --deny RULE             network policy: deny connections to RULE, whatever allows them
  --policy FILE           network policy: the rules of a TOML file (allow = [...], deny = [...];
                          `aegis-mcp netmon policy --from-log LOG` writes one). A policy turns
                          --netmon on; netns mode enforces it in the kernel, preload mode
                          in the connect hook (advisory: static binaries pass by it)
  --netns-forward PORT    with --netmon=netns, let the agent reach this TCP port of the host's
                          127.0.0.1 (repeatable; ports of loopback URLs in the environment,
                          such as ANTHROPIC_BASE_URL, are forwarded without asking)
  --netns-host-access     with --netmon=netns, let the agent reach every service of this
                          machine too (databases, admin ports, ...); without it the agent
                          reaches the internet, DNS and the forwarded ports only
  --no-inject-mcp         do not give the agent aegis-mcp's MCP server
  --keep-root             under sudo, run the agent as root instead of as you (not advised)
  --watch PATH            restart the agent when a file under PATH changes (repeatable)
  --restart-grace SECS    how long the agent gets to exit after SIGINT and after SIGTERM (default 3)
  --max-restarts N        give up when restarts exceed N in one minute (default 10)
  --mcp-ready-timeout SECS  codex: how long its first turn waits for your MCP servers that
                          are still starting (default 30; 0: codex's own 1 s)

subcommands:
{subcommands}
  --mcp-server            run the stdio MCP server (the supervisor injects it; see README)
  --version               print the version

Run `aegis-mcp SUBCOMMAND --help` for a subcommand's options.
"""

# name -> (module, one-line help). Each module has `add_arguments(parser, name)` (the name: one
# module may serve several subcommands) and `run(args) -> int` (`args.subcommand` is the name).
# A module's WORDS are first words with a parser of their own: `aegis-mcp netmon policy ...` is
# the subcommand "netmon policy" (a file of that name is then spelled `./policy`).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "restart": ("aegis_mcp.supervise.cli", "restart the agent of a running supervisor"),
    "ps": ("aegis_mcp.supervise.cli", "list the supervisors running for you and their agents"),
    "profiles": ("aegis_mcp.profiles.cli", "list the agent profiles and where they come from"),
    "agents": ("aegis_mcp.pool.cli", "background agents: spawn, list, status, await, stop ..."),
    "netmon": ("aegis_mcp.netmon.cli", "show the network connections an agent made"),
    "netns": ("aegis_mcp.netns.cli", "list or clean up aegis network namespaces"),
    "top": ("aegis_mcp.top.cli", "one live view of your supervisors, background agents and "
            "their network"),
}


def _top_usage() -> str:
    from aegis_mcp.profiles.profile import BUILTIN_PROFILES

    subs = "\n".join(f"  {name:<22}  {text}" for name, (_, text) in SUBCOMMANDS.items())
    return USAGE.format(agents=", ".join(BUILTIN_PROFILES), subcommands=subs)


def _run_subcommand(name: str, argv: list[str]) -> int:
    import argparse

    module_name, text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    if argv and argv[0] in getattr(module, "WORDS", ()):
        name, argv = f"{name} {argv[0]}", argv[1:]
    parser = argparse.ArgumentParser(prog=f"aegis-mcp {name}", description=text)
    module.add_arguments(parser, name)
    args = parser.parse_args(argv)
    args.subcommand = name
    return int(module.run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `aegis-mcp`; returns the exit status (the agent's, when it ran one)."""
    from aegis_mcp.errors import AegisError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] == "--mcp-server":
            from aegis_mcp.mcp.server import serve

            return serve(argv[1:])
        if not argv or argv[0] in ("-h", "--help", "help"):
            print(_top_usage(), end="")
            return 0 if argv else 2
        if argv[0] == "--version":
            from aegis_mcp import __version__

            print(f"aegis-mcp {__version__}")
            return 0
        if argv[0] in SUBCOMMANDS:
            return _run_subcommand(argv[0], argv[1:])
        from aegis_mcp.supervise.options import UsageError, parse_supervisor_args

        try:
            opts = parse_supervisor_args(argv)
        except UsageError as exc:
            print(f"aegis-mcp: {exc}", file=sys.stderr)
            return 2
        from aegis_mcp.pathcheck import current_directory
        from aegis_mcp.supervise.supervisor import run_supervisor

        current_directory()  # the agent starts there: deleted, it is one line, not a traceback
        return run_supervisor(opts)
    except AegisError as exc:
        print(f"aegis-mcp: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug of ours: still one line, the traceback on request
        import os

        if os.environ.get("AEGIS_DEBUG"):
            raise
        print(f"aegis-mcp: unexpected error: {type(exc).__name__}: {exc} (run again with "
              "AEGIS_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 70
