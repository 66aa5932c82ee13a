"""A netmon log in the few numbers a row has room for: a supervisor's in `aegis-mcp top`, a
background agent's in its pool status. Its own module, light to import: the pool's status
record (which the MCP server imports at every hot-reload) declares a field of this type."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypedDict

TOP_HOSTS = 3


class NetworkDigest(TypedDict):
    """What netmon saw of one agent."""

    log_path: Annotated[str, "Its netmon log (aegis-mcp netmon LOG shows it all)"]
    connections: Annotated[int, "Outgoing connections made (not refused)"]
    failed: Annotated[int, "Connects that failed (refused, unreachable...)"]
    open: Annotated[int, "Connections open now"]
    sent: Annotated[int, "Bytes sent"]
    recv: Annotated[int, "Bytes received"]
    top_hosts: Annotated[list[str], "The most used hosts, most connections first"]
    denied: Annotated[int, "Connections the network policy denied"]
    denied_targets: Annotated[list[str], "What it denied most often (host:port)"]
    error: Annotated[str | None, "Why the log could not be read"]


def digest(log: Path) -> NetworkDigest:
    """The digest of `log`, read by the caller's identity (see top.snapshot for a root
    caller); a log not written yet is all zeros, one that cannot be read says why."""
    try:
        s = status_or_empty(str(log))
    except (OSError, ValueError) as exc:
        return failed(log, str(exc))
    return {"log_path": str(log), "connections": s["connections"],
            "failed": s["failed_connections"], "open": s["open_connections"],
            "sent": s["bytes_sent"], "recv": s["bytes_received"],
            "top_hosts": [h["host"] for h in s["top_hosts"][:TOP_HOSTS]],
            "denied": s["denied"],
            "denied_targets": [d["target"] for d in s["top_denied"][:TOP_HOSTS]], "error": None}


def failed(log: Path, why: str) -> NetworkDigest:
    return {"log_path": str(log), "connections": 0, "failed": 0, "open": 0, "sent": 0,
            "recv": 0, "top_hosts": [], "denied": 0, "denied_targets": [], "error": why}


def status_or_empty(log: str) -> dict[str, Any]:
    """netmon's whole status of `log` as plain data (a log not written yet: the empty one)."""
    from aegis_mcp.netmon.log import NoLog
    from aegis_mcp.netmon.summary import empty_status, status

    try:
        return dict(status(Path(log)))
    except NoLog:
        return dict(empty_status(Path(log)))


def size(n: int) -> str:
    """Bytes for people: 512 B, 1.5 KiB, 3.2 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def count(n: int, word: str, plural: str | None = None) -> str:
    """`1 connection`, `2 connections`."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def describe(d: NetworkDigest) -> str:
    """The digest in one line: `3 connections (1 failed, 1 open), sent 1.2 KiB, received
    4.0 KiB; top hosts: api.example.com, 127.0.0.1`."""
    if d["error"]:
        return f"cannot read {d['log_path']}: {d['error']}"
    extra = [f"{d['failed']} failed"] if d["failed"] else []
    extra += [f"{d['open']} open"] if d["open"] else []
    hosts = f"; top hosts: {', '.join(d['top_hosts'])}" if d["top_hosts"] else ""
    denied = f"; {d['denied']} denied by the policy ({', '.join(d['denied_targets'])})" \
        if d["denied"] else ""
    return (f"{count(d['connections'], 'connection')}"
            + (f" ({', '.join(extra)})" if extra else "")
            + f", sent {size(d['sent'])}, received {size(d['recv'])}{hosts}{denied}")
