"""One snapshot of everything `aegis-mcp top` shows: the caller's supervisors (each with its
network), the background agents of the pool (with their locks) and the pool's counts.

`aegis-mcp top --json` prints one; the live view takes one whenever something it watches
changes. Every part is read through its job's own API (the supervisors' control sockets,
the pool's store, netmon's incremental summary), so the view never learns a file format.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

# At the top, not in the function: a dropped, forked helper runs it (see `network`), and a
# fork of the view's threaded process must not be the first to import anything.
from aegis_mcp.netmon.log import NoLog
from aegis_mcp.netmon.summary import empty_status, status

if TYPE_CHECKING:
    from aegis_mcp.pool.pool import Pool
    from aegis_mcp.pool.store import AgentStatus, PoolStats

TOP_HOSTS = 3


class Network(TypedDict):
    """What netmon saw of one supervisor's agent, in the few numbers a row has room for."""

    mode: Annotated[str, "preload or netns"]
    connections: int
    failed: int
    open: int
    sent: int
    recv: int
    top_hosts: Annotated[list[str], "The most used hosts, most connections first"]
    denied: Annotated[int, "Connections the network policy denied"]
    denied_targets: Annotated[list[str], "What it denied most often (host:port)"]
    error: Annotated[str | None, "Why the log could not be read"]


class SupervisorView(TypedDict):
    """A supervisor as the view shows it: `aegis-mcp ps`'s row, plus its network."""

    pid: int
    stale: bool
    agent: str | None
    agent_pid: int | None
    phase: str | None
    uptime_s: float | None
    restarts: int
    last_restart_reason: str | None
    session_id: str | None
    mcp_servers_up: Annotated[int, "aegis-mcp MCP servers that said hello for this start"]
    netmon_mode: str | None
    netmon_log: str | None
    cwd: str | None
    control_socket: str | None
    owner_uid: Annotated[int, "Whose it is: its files are read with this identity"]
    leftovers: Annotated[list[dict[str, Any]], "Processes a dead supervisor left running"]
    network: Network | None


class AgentView(TypedDict):
    """A background agent as the view shows it: its pool status and what it holds."""

    status: AgentStatus
    lock: Annotated[str | None, "The directory tree it has locked"]


class Snapshot(TypedDict):
    taken_at: float
    supervisors: list[SupervisorView]
    agents: list[AgentView]
    pool: PoolStats | None
    pool_error: str | None


def supervisor_view(row: dict[str, Any]) -> SupervisorView:
    """`row` (one of `aegis-mcp ps --json`'s) as the view's record."""
    if row.get("stale"):
        return {"pid": row["supervisor_pid"], "stale": True, "agent": None, "agent_pid": None,
                "phase": "stale", "uptime_s": None, "restarts": 0, "last_restart_reason": None,
                "session_id": None, "mcp_servers_up": 0, "netmon_mode": None,
                "netmon_log": None, "cwd": None,
                "control_socket": row.get("control_socket"),
                "owner_uid": owner_of(row.get("control_socket")),
                "leftovers": row.get("leftovers", []), "network": None}
    log = row.get("netmon_log")
    owner = owner_of(row.get("control_socket"))
    return {
        "pid": row["supervisor_pid"], "stale": False, "agent": row.get("agent"),
        "agent_pid": row.get("agent_pid"), "phase": row.get("phase"),
        "uptime_s": row.get("supervisor_uptime_s"), "restarts": row.get("restart_count", 0),
        "last_restart_reason": row.get("last_restart_reason"),
        "session_id": row.get("session_id"),
        "mcp_servers_up": len(row.get("mcp_servers_seen") or []),
        "netmon_mode": row.get("netmon_mode"), "netmon_log": log, "cwd": row.get("cwd"),
        "control_socket": row.get("control_socket"), "owner_uid": owner, "leftovers": [],
        "network": network(Path(log), row.get("netmon_mode") or "?", owner) if log else None,
    }


def owner_of(control_socket: str | None) -> int:
    """Whose a supervisor's files are: the owner of its control socket (the agent's user;
    under sudo the socket is made as that user). Everything the supervisor says it has, its
    netmon log's path included, is read with that identity, never more."""
    try:
        return os.lstat(control_socket).st_uid if control_socket else os.geteuid()
    except OSError:
        return os.geteuid()


def network(log: Path, mode: str, owner: int) -> Network:
    """The few numbers of a netmon log. Run as root (`sudo aegis-mcp top`), a supervisor of
    another user's is read as that user: the log's path comes from that supervisor (so from
    whatever runs as that user), and netmon writes its summary file next to the log."""
    from aegis_mcp.errors import AegisError

    try:
        if os.geteuid() == 0 and owner != 0:
            from aegis_mcp.privileges import User, as_user

            s = as_user(User.from_uid(owner), _status_or_empty, str(log))
        else:
            s = _status_or_empty(str(log))
    except (AegisError, OSError, ValueError) as exc:
        return _no_network(mode, str(exc))
    return {"mode": mode, "connections": s["connections"], "failed": s["failed_connections"],
            "open": s["open_connections"], "sent": s["bytes_sent"], "recv": s["bytes_received"],
            "top_hosts": [h["host"] for h in s["top_hosts"][:TOP_HOSTS]],
            "denied": s["denied"],
            "denied_targets": [d["target"] for d in s["top_denied"][:TOP_HOSTS]], "error": None}


def _status_or_empty(log: str) -> dict[str, Any]:
    try:
        return dict(status(Path(log)))
    except NoLog:
        return dict(empty_status(Path(log)))


def _no_network(mode: str, why: str) -> Network:
    return {"mode": mode, "connections": 0, "failed": 0, "open": 0, "sent": 0, "recv": 0,
            "top_hosts": [], "denied": 0, "denied_targets": [], "error": why}


def supervisors(previous: list[SupervisorView] | None = None) -> list[SupervisorView]:
    """Every supervisor, the dead ones with what they left running. With `previous` (the
    supervisors of an earlier snapshot), only the live ones are asked again and the dead ones
    are taken from `previous`: finding leftovers means a look at every process of the system,
    worth it only when a supervisor came or went."""
    from aegis_mcp.supervise.cli import supervisors as ps_rows

    if previous is None:
        return [supervisor_view(row) for row in ps_rows()]
    live = [supervisor_view(row) for row in ps_rows(stale=False)]
    return live + [s for s in previous if s["stale"]]


def agents(pool: Pool, limit: int) -> tuple[list[AgentView], PoolStats]:
    """The pool's agents (active ones always, then the most recent ended ones, up to `limit`),
    each with the tree it locks, and the pool's counts."""
    rows = pool.list(False, limit)
    locks = {lock["agent_id"]: lock["path"] for lock in pool.locks()}
    return [{"status": s, "lock": locks.get(s["agent_id"])} for s in rows], pool.stats()


def take(pool: Pool | None, limit: int = 50, previous: Snapshot | None = None) -> Snapshot:
    """Everything, now (the dead supervisors from `previous`, when given: see `supervisors`).
    A pool that cannot be read (its directory refused, a database error) is one line in
    `pool_error`, not the end of the view."""
    from aegis_mcp.errors import AegisError

    found, stats, error = [], None, None
    if pool is not None:
        try:
            found, stats = agents(pool, limit)
        except (AegisError, OSError) as exc:
            error = str(exc)
        except Exception as exc:  # sqlite3.Error: imported lazily by the store
            if type(exc).__module__ != "sqlite3":
                raise
            error = f"the pool's store cannot be read: {exc}"
    sups = supervisors(previous["supervisors"] if previous is not None else None)
    return {"taken_at": time.time(), "supervisors": sups, "agents": found,
            "pool": stats, "pool_error": error}
