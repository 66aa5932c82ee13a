"""`aegis-mcp --mcp-server`: the stdio MCP server the supervisor injects into its agent.

It is what the agent sees of aegis-mcp: a thin front that holds no state of its own (it dies
and is reborn at every hot-reload). Restart and status go to its supervisor's control socket
($AEGIS_CONTROL); the pool, netmon and namespace tools are registered by their own modules.
Tool modules are imported when the server is built, their heavy imports only when a tool runs:
every hot-reload pays this server's cold start.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import inspect
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from aegis_mcp import __version__
from aegis_mcp.errors import AegisError

# The agent stops this server by closing its stdin (or SIGTERM); a restart's SIGINT to the
# agent's process group must not kill it before its answer is out.
RESTART_DELAY = 0.5
"""Seconds between the restart tool's answer and the agent's stop, so the answer reaches it."""

TOOL_MODULES = ("aegis_mcp.pool.tools", "aegis_mcp.netmon.tools", "aegis_mcp.netns.tools")
"""Each registers its own tools (`register(server)`); their heavy imports wait for a call."""

NO_SUPERVISOR = (
    "this MCP server is not running under an aegis-mcp supervisor (no AEGIS_CONTROL), so there "
    "is no agent to restart: start the agent with `aegis-mcp claude` (or `aegis-mcp <agent>`) "
    "instead of configuring `aegis-mcp --mcp-server` by hand"
)


@dataclass(frozen=True)
class Peer:
    """The process the agent started as its aegis-mcp server: this one (a cold server), or a
    relay of the supervisor's warm server (mcp.warm), one per session."""

    pid: int
    ppid: int | None
    start: int | None
    """Which start of the agent it belongs to (AEGIS_AGENT_START)."""
    cwd: str | None
    """Its working directory: the agent's, the pool's default; None for this process's own."""
    relayed: bool = False

    @classmethod
    def own(cls) -> Peer:
        start = os.environ.get("AEGIS_AGENT_START", "")
        return cls(os.getpid(), os.getppid(), int(start) if start.isdigit() else None, None)

    @classmethod
    def from_greeting(cls, pid: int, greeting: dict[str, Any]) -> Peer:
        """From a relay's first line (mcp.relay); `pid` is the kernel's word, not the
        relay's. ValueError or TypeError when it is not one."""
        start, ppid, cwd = greeting["start"], greeting["ppid"], greeting["cwd"]
        if not isinstance(ppid, int) or not isinstance(cwd, str) or not isinstance(start, str):
            raise TypeError("malformed greeting")
        return cls(pid, ppid, int(start) if start.isdigit() else None, cwd, relayed=True)

    def directory(self, path: str | None) -> str | None:
        """`path` (None: the peer's working directory) as the peer means it: a relative one
        is taken from the peer's working directory."""
        if self.cwd is None:
            return path
        return os.path.join(self.cwd, os.path.expanduser(path or ""))


PEER: contextvars.ContextVar[Peer | None] = contextvars.ContextVar("aegis_mcp_peer",
                                                                  default=None)
"""The session's peer, set by the warm server for each relay's session."""


def peer() -> Peer:
    return PEER.get() or Peer.own()


class RestartResult(BaseModel):
    scheduled: bool = Field(description="True: the supervisor accepted the restart")
    message: str = Field(description="What will happen, in words")
    restart_count: int = Field(description="The restart count once this restart is done")
    delay_seconds: float = Field(description="Seconds before the agent is stopped")


class ServerStatus(BaseModel):
    mcp_server_version: str
    mcp_server_pid: int = Field(description="The process the agent started as this server")
    mcp_server_warm: bool = Field(
        description="True: served by the supervisor's warm server, through a relay (the "
        "pid above); False: a server process of its own")
    supervised: bool = Field(description="False when started by hand, outside aegis-mcp")
    supervisor: dict[str, Any] | None = Field(
        description="The supervisor's view: pids, agent command line, uptime, restart count "
        "and last reason, what it is doing (phase: running, restart-pending, restarting, "
        "ending, shutdown), injection mechanism, the aegis-mcp servers seen up in this start "
        "of the agent, what a restart can verify, netmon mode and log, and in netns mode the "
        "host loopback ip:ports reachable from inside (netns_forwards) and whether the "
        "agent may reach the host's own services (netns_host_access)")


# What each tool does to the world, for clients that decide by it what to confirm (MCP tool
# annotations): the one place these hints are written.
_READS = {"read_only_hint": True, "open_world_hint": False}
TOOL_HINTS: dict[str, dict[str, bool]] = {
    # stops this agent (and starts it again): the turn ends
    "restart_claude": {"destructive_hint": True, "idempotent_hint": False,
                       "open_world_hint": False},
    "restart_agent": {"destructive_hint": True, "idempotent_hint": False,
                      "open_world_hint": False},
    "server_status": _READS,
    # a background agent with its permission flag: it may reach anything
    "agent_spawn": {"destructive_hint": False, "idempotent_hint": False,
                    "open_world_hint": True},
    "agent_list": _READS, "agent_status": _READS, "agent_await": _READS,
    "agent_pool_stats": _READS, "agent_file_locks": _READS,
    "agent_stop": {"destructive_hint": True, "idempotent_hint": True, "open_world_hint": False},
    "netmon_status": _READS, "netmon_log": _READS, "netmon_policy": _READS,
    "netmon_namespace_list": _READS,
    "netmon_namespace_cleanup": {"destructive_hint": True, "idempotent_hint": True,
                                 "open_world_hint": False},
}


def flowing(text: str) -> str:
    """A docstring as one paragraph: clients show a tool's description as it is, and a
    docstring's indentation and line breaks are layout for the source, not for them."""
    return " ".join(inspect.cleandoc(text).split())


class AegisMCPServer(MCPServer):
    """MCPServer whose tools may raise AegisError: the SDK hides the text of unexpected
    exceptions from the client, so an AegisError becomes a ToolError whose message (what is
    wrong and what to do) reaches the agent as an is_error result. Each tool gets its hints
    from TOOL_HINTS and its docstring as a flowing description."""

    def tool(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            from mcp.types import ToolAnnotations

            name = kwargs.get("name") or fn.__name__
            options = dict(kwargs)
            if options.get("description") is None and fn.__doc__:
                options["description"] = flowing(fn.__doc__)
            if options.get("annotations") is None and name in TOOL_HINTS:
                options["annotations"] = ToolAnnotations(**TOOL_HINTS[name])
            register = super(AegisMCPServer, self).tool(*args, **options)
            if inspect.iscoroutinefunction(fn):
                @functools.wraps(fn)
                async def wrapped_async(*a: Any, **kw: Any) -> Any:
                    try:
                        return await fn(*a, **kw)
                    except AegisError as exc:
                        raise ToolError(str(exc)) from None

                register(wrapped_async)
                return fn

            @functools.wraps(fn)
            def wrapped(*a: Any, **kw: Any) -> Any:
                try:
                    return fn(*a, **kw)
                except AegisError as exc:
                    raise ToolError(str(exc)) from None

            register(wrapped)
            return fn

        return decorate

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None
                        ) -> Any:
        tool = self._tool_manager.get_tool(name)
        if tool is not None:
            check_arguments(name, tool.fn_metadata, arguments or {})
        return await super().call_tool(name, arguments, context)


def check_arguments(name: str, metadata: Any, arguments: dict[str, Any]) -> None:
    """One line naming the argument and what is allowed, instead of the SDK's pydantic dump
    (with its URL); an argument the tool does not take is refused, not silently dropped."""
    from pydantic import ValidationError

    fields = metadata.arg_model.model_fields
    known = sorted(f.alias or key for key, f in fields.items())
    unknown = sorted(set(arguments) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "no arguments"
        raise ToolError(f"{name}: unknown argument{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(map(repr, unknown))} (it takes {takes})")
    try:
        metadata.validate_arguments(arguments)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        where = ".".join(str(part) for part in first["loc"]) or "arguments"
        msg = str(first["msg"])
        for subject in ("String ", "Input ", "Value "):  # pydantic's: the argument is ours
            msg = msg.removeprefix(subject)
        what = "is required" if first["type"] == "missing" else msg[0].lower() + msg[1:]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ToolError(f"{name}: argument {where} {what}{more}") from None


def _control() -> str:
    path = os.environ.get("AEGIS_CONTROL")
    if not path:
        raise AegisError(NO_SUPERVISOR)
    return path


def restart(reason: str | None, prompt: str | None) -> RestartResult:
    from aegis_mcp.supervise import control

    answer = control.request(_control(), {
        "op": "restart", "reason": reason or "requested by the agent", "prompt": prompt,
        "delay": RESTART_DELAY})
    if not answer.get("ok"):
        raise AegisError(answer.get("error", "the supervisor refused the restart"))
    return RestartResult(scheduled=True, message=answer["message"],
                         restart_count=answer["restart_count"], delay_seconds=RESTART_DELAY)


Reason = Annotated[str | None, Field(
    max_length=500, description="Why the agent restarts; shown in the terminal and in "
    "server_status (e.g. 'MCP server updated')")]
Prompt = Annotated[str | None, Field(
    max_length=20000, description="A prompt the restarted agent starts with, as its "
    "command-line prompt (e.g. 'Continue where we left off')")]

RESTART_DOC = (
    "Restart this coding agent so it reconnects to every MCP server (new or changed servers "
    "are only seen after a restart). The supervisor stops the agent about half a second after "
    "this answer and starts it again resuming this same conversation (e.g. claude --continue); "
    "the optional prompt becomes the resumed agent's first message. Call it after adding or "
    "changing an MCP server; expect the current turn to end."
)


def _register_core(server: MCPServer) -> None:
    @server.tool(name="restart_claude", description=RESTART_DOC)
    def restart_claude(reason: Reason = None, prompt: Prompt = None) -> RestartResult:
        return restart(reason, prompt)

    @server.tool(name="restart_agent",
                 description=RESTART_DOC + " (Same tool as restart_claude, for any agent.)")
    def restart_agent(reason: Reason = None, prompt: Prompt = None) -> RestartResult:
        return restart(reason, prompt)

    @server.tool(name="server_status")
    def server_status() -> ServerStatus:
        """Status of aegis-mcp: the supervisor's pid, the agent's name, pid, command line,
        uptime, restart count and last restart reason, the MCP injection mechanism, network
        monitoring mode and log, and this MCP server's version and pid."""
        from aegis_mcp.supervise import control

        path = os.environ.get("AEGIS_CONTROL")
        supervisor = None
        if path:
            answer = control.request(path, {"op": "status"})
            if not answer.get("ok"):
                raise AegisError(answer.get("error", "the supervisor refused the status"))
            supervisor = answer["status"]
        me = peer()
        return ServerStatus(mcp_server_version=__version__, mcp_server_pid=me.pid,
                            mcp_server_warm=me.relayed, supervised=supervisor is not None,
                            supervisor=supervisor)


def build_server() -> MCPServer:
    server = AegisMCPServer(
        name="aegis-mcp", version=__version__, log_level="WARNING",
        instructions=(
            "aegis-mcp supervises this agent: restart_claude/restart_agent restart it keeping "
            "the conversation (do it after MCP servers change); agent_* run background agents; "
            "netmon_* show the network connections this agent made."))
    _register_core(server)
    for module in TOOL_MODULES:
        mod = importlib.import_module(module)
        mod.register(server)
    return server


def serve(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print("usage: aegis-mcp --mcp-server\n\nRun aegis-mcp's MCP server on stdin/stdout. "
              "`aegis-mcp <agent>` injects it into the agent it starts; to configure it by hand:\n"
              '  {"mcpServers": {"aegis-mcp": {"command": "aegis-mcp", "args": ["--mcp-server"]}}}')
        return 0
    if argv:
        print(f"aegis-mcp: --mcp-server takes no arguments (got {' '.join(argv)})",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    say_hello(Peer.own())
    build_server().run("stdio")
    return 0


def say_hello(me: Peer) -> None:
    """Tell the supervisor this server is up (its injection worked, in this agent); a
    supervisor that is gone or slow must not keep the agent's MCP client waiting."""
    path = os.environ.get("AEGIS_CONTROL")
    if not path:
        return
    from aegis_mcp.supervise import control

    # which start of the agent this server belongs to: only those count for it
    hello = {"op": "hello", "pid": me.pid, "ppid": me.ppid, "start": me.start,
             "warm": me.relayed}
    with contextlib.suppress(AegisError):
        control.request(path, hello, timeout=0.5)
