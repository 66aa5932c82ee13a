"""MCP tools of network monitoring: netmon_status and netmon_log, a thin front over
`aegis_mcp.netmon.log` and `aegis_mcp.netmon.summary` (imported when a tool runs: every
hot-reload pays the server's cold start).

The log is the one the supervisor gave the agent in AEGIS_NETMON_LOG; this server inherits it
from the agent. Without it, monitoring is off and both tools say how to turn it on."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

MONITORING_OFF = (
    "network monitoring is off for this agent (no AEGIS_NETMON_LOG): start the agent with "
    "`aegis-mcp <agent> --netmon` (or --netmon=netns as root) to record its connections"
)
MAX_COUNT = 1000


class HostStat(BaseModel):
    host: str = Field(description="Host name the program resolved, else the address")
    connections: int
    sent: int = Field(description="Bytes sent")
    recv: int = Field(description="Bytes received")


class TargetStat(BaseModel):
    target: str = Field(description="host:port (or address:port, or a unix socket path)")
    host: str | None
    addr: str | None
    port: int | None
    connections: int
    sent: int
    recv: int


class OpenConnection(BaseModel):
    target: str | None
    addr: str | None
    port: int | None
    host: str | None
    pid: int | None = Field(description="Process that holds it (null in netns mode)")
    exe: str | None
    direction: str = Field(description="out (connect) or in (accept)")
    ts: float | None = Field(description="When it was opened (unix seconds)")
    sent: int = Field(description="Bytes sent as of its last totals event")
    recv: int


class NetmonStatus(BaseModel):
    log_path: str
    log_files: list[str] = Field(description="The log and its rotated predecessor, if any")
    log_bytes: int
    events: int
    connections: int = Field(description="Outgoing connections made (not refused)")
    accepted: int = Field(description="Incoming connections accepted")
    failed_connections: int = Field(description="Connects that failed (refused, unreachable...)")
    unique_addresses: int
    bytes_sent: int
    bytes_received: int
    dns_lookups: int
    top_hosts: list[HostStat] = Field(description="Top targets by host name (connections)")
    top_by_bytes: list[TargetStat] = Field(description="Top targets by bytes sent + received")
    open_connections: int = Field(description="Connections still open in live processes")
    open: list[OpenConnection] = Field(description="Up to 50 of them, oldest first")
    ended_without_close: int = Field(
        description="Connections whose process ended without a close being recorded")
    gaps: int = Field(description="Things monitoring could not see (e.g. a child started "
                      "without LD_PRELOAD, a static binary)")
    recent_gaps: list[dict[str, Any]]
    events_lost_to_rotation: bool
    first_event: float | None
    last_event: float | None
    note: str | None = None


class NetmonLog(BaseModel):
    log_path: str
    count: int = Field(description="How many events are returned")
    events: list[dict[str, Any]] = Field(
        description="The most recent events, newest last (JSONL records: ts, event "
        "connect|accept|totals|close|dns|gap, pid, exe, addr, port, host, sent, recv, ...)")


def _log_path() -> str:
    from aegis_mcp.errors import AegisError

    path = os.environ.get("AEGIS_NETMON_LOG")
    if not path:
        raise AegisError(MONITORING_OFF)
    return path


def register(server: MCPServer) -> None:
    @server.tool()
    def netmon_status() -> NetmonStatus:
        """Network monitoring statistics of this agent: total connections, unique addresses,
        bytes sent and received, top targets by host name and by bytes, connections still open,
        gaps in what could be seen, and the log's path."""
        from pathlib import Path

        from aegis_mcp.netmon.log import NoLog
        from aegis_mcp.netmon.summary import status

        path = _log_path()
        try:
            data = status(Path(path))
        except NoLog:
            return NetmonStatus(
                log_path=path, log_files=[], log_bytes=0, events=0, connections=0, accepted=0,
                failed_connections=0, unique_addresses=0, bytes_sent=0, bytes_received=0,
                dns_lookups=0, top_hosts=[], top_by_bytes=[], open_connections=0, open=[],
                ended_without_close=0, gaps=0, recent_gaps=[], events_lost_to_rotation=False,
                first_event=None, last_event=None,
                note="monitoring is on but nothing has been recorded yet")
        return NetmonStatus.model_validate(data)

    @server.tool()
    def netmon_log(
        count: Annotated[int, Field(ge=1, le=MAX_COUNT,
                                    description="How many recent events to return (1-1000)")]
        = 20,
    ) -> NetmonLog:
        """The most recent network events of this agent from the monitoring log, newest last:
        connects (with host name and result), accepts, periodic totals, closes (bytes sent and
        received, duration), DNS lookups and gaps."""
        from pathlib import Path

        from aegis_mcp.errors import AegisError
        from aegis_mcp.netmon.log import NoLog, tail

        if isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
            raise AegisError(f"count must be between 1 and {MAX_COUNT}, got {count}")
        path = _log_path()
        try:
            events = tail(Path(path), count)
        except NoLog:
            events = []
        return NetmonLog(log_path=path, count=len(events), events=events)
