"""MCP tools of netns mode: netmon_namespace_list and netmon_namespace_cleanup, a thin front
over `aegis_mcp.netns.namespace` (imported when a tool runs: every hot-reload pays the server's cold
start)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer


class NamespaceInfo(BaseModel):
    name: str = Field(description="The namespace, aegis-<supervisor pid>")
    ours: bool | None = Field(description="False: named aegis-* but without aegis-mcp's state "
                              "file, so never cleaned up by aegis-mcp; None: unknown (the "
                              "state is readable by root only, see note)")
    exists: bool = Field(description="The namespace itself is still mounted under /run/netns")
    owner_pid: int | None = Field(description="The supervisor that created it")
    alive: bool = Field(description="That supervisor is still running")
    stale: bool | None = Field(description="Ours and its owner is gone: "
                               "netmon_namespace_cleanup removes it; None: unknown (not root)")
    subnet: str | None = None
    ns_addr: str | None = Field(None, description="The agent's address inside")
    host_addr: str | None = Field(None, description="The host end of the veth (gateway)")
    veth: str | None = None
    table: str | None = Field(None, description="Its nftables table (family ip)")
    dns: str | None = Field(None, description="copy (host resolvers through NAT) or "
                            "dnat:<loopback resolver>")
    host_access: bool | None = Field(None, description="True: the agent may reach the host's "
                                     "own services (--netns-host-access); False: only the "
                                     "internet, DNS and the forwarded loopback ports")
    age: float | None = Field(None, description="Seconds since it was created")
    log_path: str | None = Field(None, description="Its netmon JSONL log")
    capture_alive: bool | None = Field(None, description="Its capture helper is running")
    note: str | None = Field(None, description="Why some fields are missing")


class NamespaceList(BaseModel):
    namespaces: list[NamespaceInfo]
    stale: int = Field(description="How many netmon_namespace_cleanup would remove")


class RemovedNamespace(BaseModel):
    name: str
    owner_pid: int
    subnet: str
    veth: str
    table: str
    processes_stopped: list[int] = Field(
        description="Pids of the processes that were still running inside (an agent that "
        "outlived its supervisor): stopped with SIGTERM, then SIGKILL")
    processes_left_inside: list[int] = Field(
        description="Processes that would not stop (normally none): they lost their network")


class CleanupResult(BaseModel):
    removed: list[RemovedNamespace]
    message: str


def register(server: MCPServer) -> None:
    @server.tool()
    def netmon_namespace_list() -> NamespaceList:
        """List every aegis network namespace on this machine (from --netmon=netns
        supervisors): its owner pid and whether that owner is alive (stale when not), the
        agent's and the host end's addresses, subnet, nftables table, age and netmon log."""
        from aegis_mcp.netns import namespace as netns

        rows = [NamespaceInfo(**{k: v for k, v in row.items() if k in NamespaceInfo.model_fields})
                for row in netns.list_namespaces()]
        return NamespaceList(namespaces=rows, stale=sum(1 for r in rows if r.stale))

    @server.tool()
    def netmon_namespace_cleanup() -> CleanupResult:
        """Remove the stale aegis network namespaces (their supervisor died, e.g. killed):
        stop the processes still running inside, then remove the namespace with its veth,
        nftables table and /etc/netns directory. Requires root; live namespaces and ones not
        created by aegis-mcp are never touched."""
        import os

        from aegis_mcp.errors import AegisError
        from aegis_mcp.netns import namespace as netns

        if os.geteuid() != 0:
            raise AegisError("netmon_namespace_cleanup requires root: this MCP server runs as "
                             f"uid {os.geteuid()}; run `sudo aegis-mcp netns cleanup` in a "
                             "terminal instead")
        removed = [RemovedNamespace(**row) for row in netns.cleanup_stale()]
        names = ", ".join(r.name for r in removed)
        return CleanupResult(removed=removed, message=f"removed {len(removed)} stale "
                             f"namespace(s){': ' + names if names else ''}")
