"""The pool's MCP tools: agent_spawn, agent_list, agent_status, agent_await, agent_stop,
agent_pool_stats, agent_file_locks. A thin front over `aegis_mcp.pool.pool` (imported when a tool
runs, not when the server starts: every hot-reload pays the server's cold start)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from aegis_mcp.pool.pool import Pool


class AgentStatus(BaseModel):
    agent_id: str
    state: str = Field(description="queued, starting, running, completed, failed, stopped, or "
                       "lost (its runner process died)")
    description: str = Field(description="The task the agent was given")
    agent_type: str
    working_directory: str = Field(description="The directory the agent was spawned for")
    cwd: str = Field(description="Where the agent runs (inside its worktree when isolated)")
    isolation: str = Field(description="lock: it holds a lock on working_directory; worktree: "
                           "it works in its own git worktree and branch")
    worktree_path: str | None = Field(description="Its git worktree (merge its branch when done)")
    branch: str | None = Field(description="Its git branch, for isolation=worktree")
    port: int | None = Field(default=None, description="Its AEGIS_AGENT_PORT: a TCP port that "
                             "was free when it started, for its own dev server")
    pid: int | None = Field(description="The agent process while it runs")
    runner_pid: int | None = Field(description="The pool runner process that owns the agent")
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    elapsed_secs: float | None
    iterations: int = Field(description="Turns (assistant messages) seen so far")
    max_iterations: int | None
    timeout_secs: float | None
    exit_code: int | None = Field(description="The agent's exit code (128+N: killed by signal N)")
    reason: str | None = Field(description="Why it ended, when not a plain success")
    last_event: str | None = Field(description="The last event of its stream, in one line")
    last_output: list[str] = Field(description="Its last output lines (events in one line each)")
    result: str | None = Field(description="The agent's final answer (claude's and cursor's "
                               "result event, codex's and gemini's last message, Aider's last "
                               "reply in its chat history)")
    num_turns: int | None
    total_cost_usd: float | None
    session_id: str | None = Field(description="Its conversation id (claude --resume ID)")
    log_path: str = Field(description="The full output of the agent")
    chat_history_path: str | None = Field(
        default=None, description="Its own chat transcript, for agents that keep one (Aider)")
    queue_position: int | None = Field(description="1 = next to start, while queued")
    waiting_for: list[str] = Field(description="Agents whose lock this queued agent waits for")
    notes: list[str]


class AwaitResult(AgentStatus):
    timed_out: bool = Field(description="True: the wait ended first; the agent keeps running")


class StopResult(AgentStatus):
    stopped_now: bool = Field(description="False when the agent had already ended")


class AgentList(BaseModel):
    agents: list[AgentStatus]


class PoolStats(BaseModel):
    max_agents: int = Field(description="Agents that may run at once; more spawns queue")
    active: int = Field(description="queued + running")
    queued: int
    running: int = Field(description="running, including those starting")
    completed: int
    failed: int
    stopped: int
    lost: int
    total: int
    free_slots: int
    store: str = Field(description="The pool's SQLite database")


class FileLock(BaseModel):
    path: str = Field(description="The locked directory tree")
    agent_id: str = Field(description="The agent holding it")
    kind: str = Field(description="tree (a working directory) or worktree (its own worktree)")
    since: str | None
    waiting: list[str] = Field(description="Queued agents waiting for this tree, in order")


class FileLocks(BaseModel):
    locks: list[FileLock]


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
            "Agent profile: claude, cursor, aider, codex, gemini, or one from the config"))]
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
    ) -> AgentStatus:
        """Start a background agent (headless: claude -p, aider --message, codex exec, ...) on
        a task and return at once with its id and state (running, or queued when the pool is
        full or its directory is locked by another agent). Follow it with agent_status, wait
        for its result with agent_await, stop it with agent_stop."""
        from aegis_mcp.mcp.server import peer

        # the caller's directory: the relay's under a warm server, not the server's own
        working_directory = peer().directory(working_directory)
        return AgentStatus(**_call("spawn", description, agent_type, working_directory,
                                   max_iterations, isolation, timeout_secs))

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
            "Give up waiting after this many seconds (the agent keeps running); default: "
            "wait until it ends"))] = None,
    ) -> AwaitResult:
        """Wait for a background agent to end and return its final status and result (woken
        by the agent's end, not by polling). On timeout, timed_out is true and the agent keeps
        running: call again to keep waiting."""
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
