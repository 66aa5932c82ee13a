"""The pool's settings: the `[pool]` table of the config file, overridden by AEGIS_POOL_<KEY>."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from aegis_mcp.errors import AegisError

ISOLATIONS = ("lock", "worktree")


@dataclass(frozen=True)
class PoolSettings:
    """The `[pool]` table of the config file; env vars AEGIS_POOL_<KEY> override it."""

    max_agents: int = 4
    """Agents running at once; more spawns wait in a FIFO queue."""
    timeout_secs: float = 3600.0
    """Default time limit of one agent; 0 means none."""
    isolation: str = "lock"
    """`lock`: an agent locks its working tree; `worktree`: in a git repository, each agent
    gets its own git worktree and branch (elsewhere it falls back to `lock`)."""
    stop_grace_secs: float = 3.0
    """How long a stopping agent gets after SIGINT, then after SIGTERM, before SIGKILL."""
    worktree_setup: str = ""
    """A shell command run in each new git worktree before its agent starts (install the
    dependencies, write a .env with $AEGIS_AGENT_PORT, ...); its failure fails the agent."""
    netmon: bool = True
    """Record each agent's network connections in a log of its own (the LD_PRELOAD hooks;
    an agent that does its networking in a static binary, such as codex, cannot be seen)."""


_ENV_KEYS = {
    "max_agents": "AEGIS_POOL_MAX_AGENTS",
    "timeout_secs": "AEGIS_POOL_TIMEOUT",
    "isolation": "AEGIS_POOL_ISOLATION",
    "stop_grace_secs": "AEGIS_POOL_STOP_GRACE",
    "worktree_setup": "AEGIS_POOL_WORKTREE_SETUP",
    "netmon": "AEGIS_POOL_NETMON",
}


def load_settings(table: dict[str, Any] | None = None) -> PoolSettings:
    """Settings from `table` (default: the config file's `[pool]`), then the environment."""
    if table is None:
        from aegis_mcp.profiles.profile import load_config

        raw = load_config().settings.get("pool", {})
        if not isinstance(raw, dict):
            raise AegisError("config: `pool` must be a table ([pool])")
        table = raw
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _ENV_KEYS:
            raise AegisError(f"config: [pool] has unknown key {key!r} "
                             f"(known: {', '.join(_ENV_KEYS)})")
        values[key] = value
    for key, var in _ENV_KEYS.items():
        if os.environ.get(var):
            values[key] = os.environ[var]
    return _checked_settings(values)


def _checked_settings(values: dict[str, Any]) -> PoolSettings:
    out: dict[str, Any] = {}
    for key, value in values.items():
        try:
            if key == "max_agents":
                out[key] = int(value)
                ok = 1 <= out[key] <= 256
            elif key == "isolation":
                out[key] = str(value)
                ok = out[key] in ISOLATIONS
            elif key == "worktree_setup":
                out[key] = value
                ok = isinstance(value, str)
            elif key == "netmon":
                out[key] = value if isinstance(value, bool) else \
                    {"1": True, "true": True, "0": False, "false": False}.get(str(value).lower())
                ok = out[key] is not None
            else:
                out[key] = float(value)
                ok = 0 <= out[key] <= 7 * 86400
        except (TypeError, ValueError):
            ok = False
        if not ok:
            expected = {"max_agents": "a whole number from 1 to 256",
                        "isolation": "lock or worktree",
                        "worktree_setup": "a shell command, as a string",
                        "netmon": "true or false",
                        }.get(key, "seconds from 0 to 604800")
            raise AegisError(f"pool setting {key} = {value!r}: expected {expected}")
    return PoolSettings(**out)
