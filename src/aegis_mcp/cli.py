"""The `aegis-mcp` command line: a thin layer over the supervisor and the subcommands.

Imports are lazy on purpose: every hot-reload starts `aegis-mcp --mcp-server` again, so the
path to the MCP server must not pay for the supervisor's or the CLI tables' imports.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field

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

# name -> (module, one-line help). Each module has `add_arguments(parser)` and `run(args) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "restart": ("aegis_mcp.control_cli", "restart the agent of a running supervisor"),
    "ps": ("aegis_mcp.control_cli", "list the supervisors running for you and their agents"),
    "profiles": ("aegis_mcp.profiles_cli", "list the agent profiles and where they come from"),
    "agents": ("aegis_mcp.pool_cli", "background agents: spawn, list, status, await, stop ..."),
    "netmon": ("aegis_mcp.netmon_cli", "show the network connections an agent made"),
    "netns": ("aegis_mcp.netns_cli", "list or clean up aegis network namespaces"),
}


@dataclass
class SupervisorOptions:
    """Everything `aegis-mcp [OPTIONS] AGENT [ARGS]` asks for; maps 1:1 to the flags."""

    agent: str | None = None
    """Profile name, or None for a generic command given after `--`."""
    agent_args: list[str] = field(default_factory=list)
    netmon: str | None = None
    netns_forward: list[int] = field(default_factory=list)
    netns_host_access: bool = False
    inject_mcp: bool = True
    keep_root: bool = False
    watch: list[str] = field(default_factory=list)
    restart_grace: float = 3.0
    max_restarts_per_minute: int = 10
    mcp_ready_timeout: float = 30.0
    """Seconds codex's first turn waits for the user's MCP servers (codex_mcp.py)."""


class UsageError(Exception):
    pass


def _value(argv: list[str], i: int, arg: str) -> tuple[str, int]:
    if "=" in arg:
        return arg.split("=", 1)[1], i + 1
    if i + 1 >= len(argv):
        raise UsageError(f"{arg} needs a value")
    return argv[i + 1], i + 2


def parse_supervisor_args(argv: list[str]) -> SupervisorOptions:
    """Pick aegis-mcp's own options out of `argv` (anywhere before `--`); the first other word
    is the agent, and every other word goes to the agent in order."""
    opts = SupervisorOptions()
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if arg == "--":
            if opts.agent is None and not rest:
                opts.agent = None
                rest = ["--", *argv[i + 1 :]]
            else:
                rest.extend(argv[i + 1 :])
            break
        if name == "--netmon":
            mode = arg.split("=", 1)[1] if "=" in arg else "auto"
            if mode not in ("auto", "preload", "netns"):
                raise UsageError(f"--netmon={mode}: the mode must be preload, netns or auto")
            opts.netmon = mode
            i += 1
        elif name == "--netns-forward":
            value, i = _value(argv, i, arg)
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise UsageError(f"--netns-forward {value!r}: give a TCP port from 1 to 65535")
            opts.netns_forward.append(int(value))
        elif arg == "--netns-host-access":
            opts.netns_host_access = True
            i += 1
        elif arg == "--no-inject-mcp":
            opts.inject_mcp = False
            i += 1
        elif arg == "--keep-root":
            opts.keep_root = True
            i += 1
        elif name == "--watch":
            value, i = _value(argv, i, arg)
            opts.watch.append(value)
        elif name == "--restart-grace":
            value, i = _value(argv, i, arg)
            try:
                opts.restart_grace = float(value)
            except ValueError:
                raise UsageError(f"--restart-grace {value!r}: give a number of seconds") from None
            if not 0 <= opts.restart_grace <= 600:
                raise UsageError("--restart-grace must be between 0 and 600 seconds")
        elif name == "--max-restarts":
            value, i = _value(argv, i, arg)
            if not value.isdigit() or int(value) < 1:
                raise UsageError(f"--max-restarts {value!r}: give a whole number of at least 1")
            opts.max_restarts_per_minute = int(value)
        elif name == "--mcp-ready-timeout":
            value, i = _value(argv, i, arg)
            try:
                opts.mcp_ready_timeout = float(value)
            except ValueError:
                raise UsageError(f"--mcp-ready-timeout {value!r}: give a number of seconds") \
                    from None
            if not 0 <= opts.mcp_ready_timeout <= 600:
                raise UsageError("--mcp-ready-timeout must be between 0 and 600 seconds")
        else:
            rest.append(arg)
            i += 1
    if rest and rest[0] == "--":
        if len(rest) < 2:
            raise UsageError("no command after `--`: use `aegis-mcp -- my-agent [args]`")
        opts.agent_args = rest[1:]
        return opts
    if not rest:
        raise UsageError("no agent given: try `aegis-mcp claude`, or `aegis-mcp --help`")
    if rest[0].startswith("-"):
        raise UsageError(f"unknown option {rest[0]!r} before the agent name (see aegis-mcp --help)")
    opts.agent = rest[0]
    opts.agent_args = rest[1:]
    return opts


def _top_usage() -> str:
    from aegis_mcp.profiles import BUILTIN_PROFILES

    subs = "\n".join(f"  {name:<22}  {text}" for name, (_, text) in SUBCOMMANDS.items())
    return USAGE.format(agents=", ".join(BUILTIN_PROFILES), subcommands=subs)


def _run_subcommand(name: str, argv: list[str]) -> int:
    import argparse

    module_name, text = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"aegis-mcp: `{name}` is not available in this build yet", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"aegis-mcp {name}", description=text)
    if hasattr(module, "add_subcommand_arguments"):
        module.add_subcommand_arguments(name, parser)
    else:
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    args.subcommand = name
    return int(module.run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `aegis-mcp`; returns the exit status (the agent's, when it ran one)."""
    from aegis_mcp.errors import AegisError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] == "--mcp-server":
            from aegis_mcp.mcp_server import serve

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
        try:
            opts = parse_supervisor_args(argv)
        except UsageError as exc:
            print(f"aegis-mcp: {exc}", file=sys.stderr)
            return 2
        from aegis_mcp.pathcheck import current_directory
        from aegis_mcp.supervisor import run_supervisor

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
