"""The supervisor's control socket: how the MCP server and `aegis-mcp restart` reach it.

One Unix stream socket per supervisor, `supervisor-<pid>.sock` in the owner's 0700 runtime
directory, mode 0600. Only peers whose uid (SO_PEERCRED) is allowed may talk to it. The protocol
is one JSON object per line each way: a request `{"op": ...}` and one answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aegis_mcp import procs
from aegis_mcp.errors import AegisError
from aegis_mcp.paths import runtime_file, runtime_files_of
from aegis_mcp.privileges import User, as_user, fds_as_user

MAX_REQUEST = 64 * 1024


class NoSupervisorError(AegisError):
    """Nobody listens on the socket (gone, or a stale file of a dead supervisor)."""


def socket_path(runtime: Path, pid: int) -> Path:
    return runtime_file(runtime, "control", pid)


def peer_creds(conn: socket.socket) -> tuple[int, int, int]:
    """The (pid, uid, gid) of the process at the other end, as the kernel saw it connect."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def peer_uid(conn: socket.socket) -> int:
    return peer_creds(conn)[1]


def bind_socket(path: str, what: str = "the control socket", backlog: int = 16) -> list[int]:
    """The listening socket at `path`, made 0600 (no window where others could connect);
    run with the identity of the directory's owner (privileges.fds_as_user)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket of a dead supervisor with our pid
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        hint = " (a Unix socket path must be under 108 bytes: set a shorter " \
            "AEGIS_RUNTIME_DIR)" if len(path) >= 100 else ""
        why = exc.strerror or str(exc)
        raise AegisError(f"cannot create {what} {path}: {why}{hint}") from None
    finally:
        os.umask(old)
    return [sock.detach()]


def unlink_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class ControlServer:
    """Non-blocking server side, driven by the supervisor's selector loop. Under sudo the
    socket file is made and removed by the agent's user (`user`), in that user's directory;
    the listening socket itself is the supervisor's."""

    def __init__(self, path: Path, allowed_uids: set[int], user: User | None = None) -> None:
        self.path = path
        self.allowed_uids = allowed_uids
        self.user = user
        (fd,) = fds_as_user(user, bind_socket, str(path))
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self._buffers: dict[socket.socket, bytearray] = {}

    def accept(self) -> socket.socket | None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        if peer_uid(conn) not in self.allowed_uids:
            conn.close()
            return None
        conn.setblocking(False)
        self._buffers[conn] = bytearray()
        return conn

    def read(self, conn: socket.socket, handle: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
        """Read what `conn` has; when a whole request is in, answer it. True when `conn` is
        finished (answered or broken) and has been closed."""
        buf = self._buffers[conn]
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if data:
            buf += data
        if b"\n" not in buf and data and len(buf) < MAX_REQUEST:
            return False
        line = bytes(buf).split(b"\n", 1)[0]
        try:
            request = json.loads(line) if line else None
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
            answer = handle(request)
        except (ValueError, UnicodeDecodeError) as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        except AegisError as exc:
            answer = {"ok": False, "error": str(exc)}
        with contextlib.suppress(OSError):
            conn.setblocking(True)
            conn.settimeout(2)
            conn.sendall(json.dumps(answer).encode() + b"\n")
        self.drop(conn)
        return True

    def drop(self, conn: socket.socket) -> None:
        self._buffers.pop(conn, None)
        conn.close()

    def close(self) -> None:
        for conn in list(self._buffers):
            self.drop(conn)
        self.sock.close()
        with contextlib.suppress(OSError, AegisError):
            as_user(self.user, unlink_socket, str(self.path))


def request(path: str | Path, payload: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to a supervisor and return its answer; AegisError when unreachable."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = bytearray()
        while b"\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except FileNotFoundError:
        raise NoSupervisorError(f"no supervisor at {path} (it has exited)") from None
    except ConnectionRefusedError:
        raise NoSupervisorError(f"the supervisor at {path} is not running (stale socket)") \
            from None
    except PermissionError:
        raise AegisError(f"not allowed to talk to the supervisor at {path}") from None
    except TimeoutError:
        raise AegisError(f"the supervisor at {path} did not answer within {timeout:g}s") from None
    except OSError as exc:
        raise AegisError(f"cannot reach the supervisor at {path}: {exc.strerror}") from None
    finally:
        sock.close()
    try:
        answer = json.loads(bytes(data).split(b"\n", 1)[0])
    except ValueError:
        raise AegisError(f"the supervisor at {path} closed the connection without an answer") \
            from None
    if not isinstance(answer, dict):
        raise AegisError(f"the supervisor at {path} sent a malformed answer")
    return answer


def sockets(runtime: Path) -> list[tuple[int, Path]]:
    """(pid, path) of every supervisor socket in `runtime`, its supervisor alive or not."""
    return runtime_files_of(runtime, "control")


def live_sockets(runtime: Path) -> list[tuple[int, Path]]:
    """(pid, path) of the supervisor sockets in `runtime` whose supervisor is alive."""
    return [(pid, path) for pid, path in sockets(runtime) if procs.alive(pid)]
