"""What `aegis-mcp [OPTIONS] AGENT [ARGS]` asks the supervisor for, read off the command line.

Kept apart from the supervisor so the command line can parse without importing it, and the
supervisor can take its options without importing the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SupervisorOptions:
    """Everything `aegis-mcp [OPTIONS] AGENT [ARGS]` asks for; maps 1:1 to the flags."""

    agent: str | None = None
    """Profile name, or None for a generic command given after `--`."""
    agent_args: list[str] = field(default_factory=list)
    netmon: str | None = None
    allow: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    policy: list[str] = field(default_factory=list)
    """Network policy: --allow and --deny rules, --policy files (netmon.policy)."""
    netns_forward: list[int] = field(default_factory=list)
    netns_host_access: bool = False
    inject_mcp: bool = True
    keep_root: bool = False
    watch: list[str] = field(default_factory=list)
    restart_grace: float = 3.0
    max_restarts_per_minute: int = 10
    mcp_ready_timeout: float = 30.0
    """Seconds codex's first turn waits for the user's MCP servers (mcp/codex.py)."""


class UsageError(Exception):
    pass


def _value(argv: list[str], i: int, arg: str) -> tuple[str, int]:
    if "=" in arg:
        return arg.split("=", 1)[1], i + 1
    if i + 1 >= len(argv) or argv[i + 1] == "--":
        raise UsageError(f"{arg} needs a value")
    return argv[i + 1], i + 2


def _check_rule(flag: str, value: str) -> None:
    from aegis_mcp.netmon.policy import PolicyError, from_flags

    try:
        from_flags([value], []) if flag == "--allow" else from_flags([], [value])
    except PolicyError as exc:
        raise UsageError(str(exc)) from None


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
        elif name in ("--allow", "--deny"):
            value, i = _value(argv, i, arg)
            _check_rule(name, value)
            (opts.allow if name == "--allow" else opts.deny).append(value)
        elif name == "--policy":
            value, i = _value(argv, i, arg)
            opts.policy.append(value)
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
