"""MCP tools of network monitoring: netmon_status, netmon_log and netmon_policy, a thin front
over `aegis_mcp.netmon.log`, `aegis_mcp.netmon.summary` and `aegis_mcp.netmon.denials`. The
output models are built from their records at the server's start; what a tool needs to run
is imported when it runs (every hot-reload pays the server's cold start).

The log is the one the supervisor gave the agent in AEGIS_NETMON_LOG; this server inherits it
from the agent. Without it, monitoring is off and both tools say how to turn it on."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field

from aegis_mcp.mcp.models import output_model
from aegis_mcp.netmon import denials, summary

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
Denial = output_model(summary.Denial)
DeniedTarget = output_model(summary.DeniedTarget)
NetmonStatus = output_model(summary.NetmonStatus, omit=("unique_addresses_capped", "bad_lines"),
                            nested={summary.HostStat: HostStat,
                                    summary.TargetStat: TargetStat,
                                    summary.OpenConnection: OpenConnection,
                                    summary.Denial: Denial,
                                    summary.DeniedTarget: DeniedTarget})
PolicyRule = output_model(denials.PolicyRule)
AdvisedDenial = output_model(denials.AdvisedDenial)
PolicyReport = output_model(denials.PolicyReport,
                            nested={denials.PolicyRule: PolicyRule,
                                    denials.AdvisedDenial: AdvisedDenial})


class NetmonLog(BaseModel):
    log_path: str
    count: int = Field(description="How many events are returned")
    events: list[dict[str, Any]] = Field(
        description="The most recent events, newest last (JSONL records: ts, event "
        "connect|accept|totals|close|dns|gap|deny, pid, exe, addr, port, host, sent, recv, "
        "...)")


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
        gaps in what could be seen, connections the network policy denied, and the log's
        path."""
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
        received, duration), DNS lookups, gaps and the network policy's denials."""
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

    @server.tool()
    def netmon_policy() -> PolicyReport:
        """The network policy the user set for this agent: its rules (denies first; each with
        where it came from, the implicit ones that keep the agent's own API reachable
        included), whether it denies by default (an allow-list), how far it is enforced, and
        the recent denials, each with one sentence on what to do. A denial is the user's
        decision, not a network fault: do not retry around it, ask the user. Says plainly when
        no policy is active."""
        from aegis_mcp.netmon.policy import ENV_VAR

        data = denials.report(os.environ.get(ENV_VAR) or None,
                              os.environ.get("AEGIS_NETMON_LOG") or None,
                              os.environ.get("AEGIS_NETMON_MODE") or None)
        return PolicyReport.model_validate(data)
