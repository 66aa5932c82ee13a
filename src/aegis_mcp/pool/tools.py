"""The pool's MCP tools: agent_spawn, agent_list, agent_status, agent_await, agent_stop,
agent_pool_stats, agent_file_locks. A thin front over `aegis_mcp.pool.pool` (imported when a tool
runs, not when the server starts: every hot-reload pays the server's cold start); the output
models are built from the records of `aegis_mcp.pool.store`, which is cheap to import."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field

from aegis_mcp.mcp.models import output_model
from aegis_mcp.pool import store

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from aegis_mcp.pool.pool import Pool


# What MCP clients see is built from the records the Pool API returns (pool/store.py). port and
# chat_history_path keep the default they were published with: not required in the schema.
NetworkDigest = output_model(store.NetworkDigest)
_NESTED = {store.NetworkDigest: NetworkDigest}
AgentStatus = output_model(store.AgentStatus, optional=("port", "chat_history_path", "network"),
                           nested=_NESTED)
AwaitResult = output_model(store.AwaitResult, optional=("port", "chat_history_path", "network"),
                           nested=_NESTED)
# The model never had timed_out, which a stop that waited for its runner carries too.
StopResult = output_model(store.StopResult, optional=("port", "chat_history_path", "network"),
                          omit=("timed_out",), nested=_NESTED)
PoolStats = output_model(store.PoolStats)
FileLock = output_model(store.FileLock)


class AgentList(BaseModel):
    agents: list[AgentStatus]  # type: ignore[valid-type]


class FileLocks(BaseModel):
    locks: list[FileLock]  # type: ignore[valid-type]


AgentId = Annotated[str, Field(min_length=1, max_length=64,
                               description="The agent's id (from agent_spawn or agent_list); "
                               "a unique prefix is enough")]


def _pool() -> Pool:
    from aegis_mcp.pool.pool import Pool

    return Pool()


def _call(method: str, *args: Any, **kwargs: Any) -> Any:
    """One pool operation on a fresh store connection (tools may run in worker threads)."""
    pool = _pool()
    try:
        return getattr(pool, method)(*args, **kwargs)
    finally:
        pool.close()


def register(server: MCPServer) -> None:
    @server.tool(name="agent_spawn")
    def agent_spawn(
        description: Annotated[str, Field(min_length=1, max_length=100_000, description=(
            "The task, as the prompt the background agent gets"))],
        agent_type: Annotated[str, Field(min_length=1, max_length=64, description=(
            "Agent profile: claude, cursor, aider, codex, gemini, qwen, opencode, kilo, "
            "copilot, amp, or one from the config"))]
        = "claude",
        working_directory: Annotated[str | None, Field(max_length=4096, description=(
            "Directory to work in (default: this MCP server's, i.e. the caller's)"))] = None,
        max_iterations: Annotated[int | None, Field(ge=1, le=100_000, description=(
            "Turn limit (claude --max-turns; enforced by the pool for agents without one)"))]
        = None,
        isolation: Annotated[Literal["lock", "worktree"] | None, Field(description=(
            "lock: hold a lock on the directory tree (an overlapping spawn waits in the queue); "
            "worktree: run in a new git worktree on branch aegis/<id>. Default from config."))]
        = None,
        timeout_secs: Annotated[float | None, Field(ge=0, le=604_800, description=(
            "Stop the agent after this many seconds (0: no limit; default from config)"))]
        = None,
        network_allow: Annotated[list[Annotated[str, Field(min_length=1, max_length=300)]]
                                 | None, Field(max_length=1000, description=(
            "Network policy: hosts (*.example.com for subdomains), addresses or CIDRs, each "
            "with an optional :port, that the agent may connect to; everything else is denied "
            "(its own model API stays allowed). Not allowed when you run under a policy "
            "yourself: the agent gets yours"))] = None,
        network_deny: Annotated[list[Annotated[str, Field(min_length=1, max_length=300)]]
                                | None, Field(max_length=1000, description=(
            "Network policy: what the agent may not connect to, whatever allows it"))] = None,
    ) -> AgentStatus:
        """Start a background agent (headless: claude -p, aider --message, codex exec, ...) on
        a task and return at once with its id and state (running, or queued when the pool is
        full or its directory is locked by another agent). Follow it with agent_status, wait
        for its result with agent_await, stop it with agent_stop."""
        from aegis_mcp.mcp.server import peer

        # the caller's directory: the relay's under a warm server, not the server's own
        working_directory = peer().directory(working_directory)
        return AgentStatus(**_call("spawn", description, agent_type, working_directory,
                                   max_iterations, isolation, timeout_secs,
                                   network_allow=network_allow, network_deny=network_deny))

    @server.tool(name="agent_list")
    def agent_list(
        active_only: Annotated[bool, Field(description="Only queued and running agents")]
        = False,
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many agents "
                                    "(queued and running ones always count first)")] = 50,
    ) -> AgentList:
        """List background agents, oldest first: id, state, task, times, turns, last event."""
        return AgentList(agents=[AgentStatus(**a) for a in _call("list", active_only, limit)])

    @server.tool(name="agent_status")
    def agent_status(agent_id: AgentId) -> AgentStatus:
        """Everything about one background agent, live: state, pid, times, turns so far, last
        output lines, exit code, and at the end the result text, turns, cost and session id."""
        return AgentStatus(**_call("status", agent_id))

    @server.tool(name="agent_await")
    async def agent_await(
        agent_id: AgentId,
        timeout_secs: Annotated[float | None, Field(ge=0, le=86_400, description=(
            "Give up waiting after this many seconds (the agent goes on, running or queued); "
            "default: wait until it ends"))] = None,
    ) -> AwaitResult:
        """Wait for a background agent to end and return its final status and result (woken
        by the agent's end, not by polling). On timeout, timed_out is true and the agent goes on
        (running, or still queued): call again to keep waiting."""
        import anyio

        result = await anyio.to_thread.run_sync(
            lambda: _call("await_agent", agent_id, timeout_secs), abandon_on_cancel=True)
        return AwaitResult(**result)

    @server.tool(name="agent_stop")
    async def agent_stop(agent_id: AgentId) -> StopResult:
        """Stop a background agent and its whole process tree (SIGINT, then SIGTERM, then
        SIGKILL, each after a grace time); a queued agent is just taken off the queue. Returns
        its final status (state stopped)."""
        import anyio

        result = await anyio.to_thread.run_sync(lambda: _call("stop", agent_id),
                                                abandon_on_cancel=True)
        return StopResult(**result)

    @server.tool(name="agent_pool_stats")
    def agent_pool_stats() -> PoolStats:
        """Pool counts: max agents, active, queued, running, completed, failed, stopped, lost."""
        return PoolStats(**_call("stats"))

    @server.tool(name="agent_file_locks")
    def agent_file_locks() -> FileLocks:
        """The directory trees locked by running background agents: path, agent id, since
        when, and the queued agents waiting for each (for coordination between agents)."""
        return FileLocks(locks=[FileLock(**lock) for lock in _call("locks")])
