"""The supervisor's warm MCP server: aegis-mcp's MCP server imported and built once per
supervisor, serving every start of the agent through that start's relay (mcp.relay).

The server holds no state of its own, so nothing is lost by sharing it: each relay is one
connection and one MCP session of the official SDK, with the relay's process as the "server"
the agent and the supervisor see (its pid in the hello and in server_status, its working
directory for the pool's default). Started by the supervisor before the agent, with the
agent's identity, environment and (netns mode) network namespace, in a session of its own; it
binds its socket before it imports the SDK, so a relay that comes early waits in the backlog
instead of starting cold. It ends with its supervisor (PR_SET_PDEATHSIG; after a kill -9 of
the supervisor the watchdog's sweep finds it by the supervisor's mark in its environment).

    python -P -m aegis_mcp.mcp.warm SOCKET
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis_mcp import procs
from aegis_mcp.paths import runtime_file
from aegis_mcp.privileges import User

if TYPE_CHECKING:
    from anyio.abc import SocketStream
    from anyio.streams.buffered import BufferedByteReceiveStream
    from mcp.server.mcpserver import MCPServer

GREETING_TIMEOUT = 5.0
"""Seconds a connection has to say who it is before it is dropped."""
MAX_LINE = 64 * 1024 * 1024
"""The longest JSON-RPC message accepted from a relay (a tool call carrying a big prompt)."""


def socket_path(runtime: Path, supervisor_pid: int) -> Path:
    return runtime_file(runtime, "warm", supervisor_pid)


class WarmServer:
    """The supervisor's handle on its warm server process."""

    def __init__(self, proc: subprocess.Popen[bytes], path: Path) -> None:
        self.proc = proc
        self.path = path
        self.status: int | None = None
        """Its exit status once the supervisor reaped it (the supervisor reaps every child)."""

    @classmethod
    def start(cls, command: list[str], env: dict[str, str], cwd: Path, user: User | None,
              path: Path, listening: int) -> WarmServer:
        """Run `command` (`python -m aegis_mcp.mcp.warm PATH FD`, as the agent runs: see
        Supervisor._as_agent) with the socket `listening` bound at `path` as its FD, dropping
        to `user` when given; OSError when it cannot start."""
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
        debug = bool(os.environ.get("AEGIS_DEBUG"))
        proc = subprocess.Popen(
            command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=None if debug else subprocess.DEVNULL,
            close_fds=True, pass_fds=(listening,), start_new_session=True, **kwargs)
        return cls(proc, path)

    @property
    def alive(self) -> bool:
        return self.status is None

    def stop(self, timeout: float = 2.0) -> None:
        if self.status is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
                self.proc.wait(timeout)
        except ChildProcessError:
            pass  # reaped by the supervisor's own waitpid(-1)
        self.status = self.proc.returncode if self.proc.returncode is not None else 0


# -- the server process ---------------------------------------------------------------------


class _Lines:
    """The relay's side of the connection as the SDK's stdio transport reads a file: lines."""

    def __init__(self, stream: BufferedByteReceiveStream) -> None:
        self.stream = stream

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        import anyio

        try:
            line = await self.stream.receive_until(b"\n", MAX_LINE)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound,
                anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        return line.decode("utf-8", "replace")


class _Writer:
    """...and as it writes one: each message is one send."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream

    async def write(self, text: str) -> None:
        await self.stream.send(text.encode())

    async def flush(self) -> None:
        return None


async def _session(server: MCPServer, stream: SocketStream) -> None:
    import anyio
    from anyio.streams.buffered import BufferedByteReceiveStream
    from mcp.server.stdio import stdio_server

    from aegis_mcp.mcp import server as mcp_server
    from aegis_mcp.supervise.control import peer_creds

    async with stream:
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        pid, uid, _gid = peer_creds(raw)
        if uid != os.getuid():
            return
        reader = BufferedByteReceiveStream(stream)
        try:
            with anyio.fail_after(GREETING_TIMEOUT):
                greeting = json.loads(await reader.receive_until(b"\n", 64 * 1024))
            peer = mcp_server.Peer.from_greeting(pid, greeting)
            await stream.send(b'{"ok": true}\n')
        except (TimeoutError, ValueError, TypeError, AttributeError, anyio.EndOfStream,
                anyio.IncompleteRead, anyio.DelimiterNotFound, anyio.BrokenResourceError):
            return
        mcp_server.PEER.set(peer)  # this task's context: the session's tasks inherit it
        await anyio.to_thread.run_sync(mcp_server.say_hello, peer)
        # The SDK's own stdio transport over the relay's connection (it takes explicit
        # streams); the SDK's in-memory client reaches its low-level server the same way.
        lowlevel = server._lowlevel_server  # noqa: SLF001
        try:
            async with stdio_server(_Lines(reader), _Writer(stream)) as (read, write):  # type: ignore[arg-type]
                await lowlevel.run(read, write, lowlevel.create_initialization_options())
        except Exception as exc:  # one session's end (a relay killed mid-write) is not ours
            if os.environ.get("AEGIS_DEBUG"):
                print(f"aegis-mcp warm server: session of pid {pid} ended: {exc!r}",
                      file=sys.stderr)


async def _serve(sock: socket.socket, server: MCPServer) -> None:
    from anyio.abc import SocketListener

    listener = await SocketListener.from_socket(sock)

    async def handle(stream: SocketStream) -> None:
        await _session(server, stream)

    async with listener:
        await listener.serve(handle)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or (len(argv) == 2 and not argv[1].isdigit()):
        print("usage: python -m aegis_mcp.mcp.warm SOCKET [FD] (started by the supervisor, "
              "which binds SOCKET and hands it over as FD)", file=sys.stderr)
        return 2
    if not procs.die_with_parent(signal.SIGTERM):
        return 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    path = argv[0]
    if len(argv) == 2:
        fd = int(argv[1])
    else:
        from aegis_mcp.supervise.control import bind_socket

        (fd,) = bind_socket(path, "the warm MCP server's socket", backlog=64)
    sock = socket.socket(fileno=fd)
    bound = os.stat(path).st_ino
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        import anyio

        from aegis_mcp.mcp.server import build_server

        anyio.run(_serve, sock, build_server())
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == bound:  # still ours, not a later supervisor's
                os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
