"""MCP tools of network monitoring: netmon_status and netmon_log, a thin front over
`aegis_mcp.netmon.log` and `aegis_mcp.netmon.summary`. The output models are built from
summary's records at the server's start; what a tool needs to run is imported when it runs
(every hot-reload pays the server's cold start).

The log is the one the supervisor gave the agent in AEGIS_NETMON_LOG; this server inherits it
from the agent. Without it, monitoring is off and both tools say how to turn it on."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field

from aegis_mcp.mcp.models import output_model
from aegis_mcp.netmon import summary

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

MONITORING_OFF = (
    "network monitoring is off for this agent (no AEGIS_NETMON_LOG): start the agent with "
    "`aegis-mcp <agent> --netmon` (or --netmon=netns as root) to record its connections"
)
MAX_COUNT = 1000


# What MCP clients see is built from the records `status` returns (netmon/summary.py). The
# output never had the keys omitted here; publishing them is a change of the schema.
HostStat = output_model(summary.HostStat)
TargetStat = output_model(summary.TargetStat)
OpenConnection = output_model(summary.OpenConnection, omit=("result", "key"))
NetmonStatus = output_model(summary.NetmonStatus, omit=("unique_addresses_capped", "bad_lines"),
                            nested={summary.HostStat: HostStat,
                                    summary.TargetStat: TargetStat,
                                    summary.OpenConnection: OpenConnection})


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

        path = _log_path()
        try:
            data = summary.status(Path(path))
        except NoLog:
            data = summary.empty_status(Path(path))
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
