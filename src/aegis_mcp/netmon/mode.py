"""Which network-monitoring mode a supervisor runs in (`--netmon[=MODE]`), and whether it can:
each mode's limits as measured (LD_PRELOAD sees only dynamically linked programs)."""

from __future__ import annotations

import os
from collections.abc import Callable

from aegis_mcp.errors import AegisError
from aegis_mcp.paths import hooks_library_missing
from aegis_mcp.privileges import User, as_user
from aegis_mcp.profiles.profile import AgentProfile


def resolve_mode(asked: str | None, profile: AgentProfile, executable: str, user: User | None,
                 say: Callable[[str], None], policy: bool = False) -> str | None:
    """`preload`, `netns` or None (off) for what the user asked; AegisError, with what to do
    instead, when the mode cannot see this agent's connections or cannot run here. A network
    policy (`policy`) turns monitoring on as a bare --netmon does: it is the monitoring that
    enforces it, and its denials land in the netmon log."""
    mode = asked if asked is not None or not policy else "auto"
    if mode is None:
        return None
    if mode == "auto":
        mode = "netns" if os.geteuid() == 0 else "preload"
        why = "root" if mode == "netns" else "not root"
        say(f"--netmon: using {mode} mode ({why})" if asked else
            f"the network policy turns network monitoring on: {mode} mode ({why})")
    # What preload mode cannot see, it cannot enforce a policy on either.
    cannot = "see its connections, nor enforce a network policy on them" if policy else \
        "see its connections"
    if mode == "netns":
        from aegis_mcp.netns import namespace

        namespace.require_root()
    elif mode == "preload":
        missing = hooks_library_missing()
        if missing:
            raise AegisError(f"--netmon=preload: {missing}")
        from aegis_mcp.netmon.elf import is_preload_visible

        if profile.static_binary:  # e.g. codex: a Node launcher that execs a static one
            raise AegisError(
                f"{profile.name} does its networking in a statically linked binary: "
                f"LD_PRELOAD cannot {cannot}; use `sudo aegis-mcp "
                f"{profile.name} --netmon=netns` instead")
        if not as_user(user, is_preload_visible, executable):  # a file they chose
            raise AegisError(
                f"{executable} is statically linked: LD_PRELOAD cannot {cannot}; use "
                "`sudo aegis-mcp ... --netmon=netns` instead")
    return mode
