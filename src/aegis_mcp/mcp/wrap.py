"""`python -m aegis_mcp.mcp.wrap SOCKET START NAME -- COMMAND [ARGS...]`: one of the user's own
MCP servers, run unchanged, with word to the supervisor when its `initialize` answer goes by.

Codex (0.169.0, 0.171.0) sends its first turn without the tools of a server still starting;
the supervisor makes it wait (see mcp/codex.py) and, to say which server kept it waiting past
the bound, learns from this pass-through when each server is up. Transparent by construction:
this process execs COMMAND itself, so the server keeps the pid codex started, its signals and
its exit status, and reads codex's stdin directly. Only its stdout goes through a pipe, copied
byte for byte by a small forked reader that also watches for the first JSON-RPC answer (the
one to `initialize`: a client sends nothing else before it) and reports it once.

Standard library only, and nothing of aegis-mcp imported: it runs at every start of every
server, in codex's minimal environment for MCP servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable

MAX_LINE = 1 << 20
"""Bytes of a first message looked at: a longer one is copied on, never reported on."""


def report(sock_path: str, start: str, name: str, state: str) -> None:
    """One `mcp_ready` request to the supervisor; a supervisor that is gone or slow must
    never hold up the server's output, so every failure is ignored."""
    payload = {"op": "mcp_ready", "start": int(start) if start.isdigit() else None,
               "name": name, "state": state}
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1.0)
        sock.connect(sock_path)
        sock.sendall(json.dumps(payload).encode() + b"\n")
        sock.recv(4096)


def _state_of(line: bytes) -> str | None:
    """`ready` or `failed` when `line` is a JSON-RPC answer (to `initialize`), else None."""
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    if not isinstance(msg, dict) or "id" not in msg:
        return None  # a notification (logging) before the answer
    if "result" in msg:
        return "ready"
    return "failed" if "error" in msg else None


def copy_and_watch(src: int, dst: int, on_state: Callable[[str], None]) -> None:
    """Copy `src` to `dst` until EOF or a broken `dst`; call `on_state(state)` once, when the
    first answer goes by (`exited` when the output ends before one)."""
    pending = bytearray()
    said = False
    while True:
        try:
            data = os.read(src, 65536)
        except InterruptedError:
            continue
        if not data:
            break
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view):]
        except OSError:  # codex is gone: the server finds out on its next write, as without us
            break
        if said:
            continue
        pending += data
        while b"\n" in pending and not said:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            state = _state_of(line)
            if state is not None:
                said = True
                on_state(state)
        if len(pending) > MAX_LINE:
            said = True
    if not said:
        on_state("exited")


def _usage() -> int:
    print("usage: python -m aegis_mcp.mcp.wrap SOCKET START NAME -- COMMAND [ARGS...] "
          "(started by aegis-mcp for codex's MCP servers)", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        return _usage()
    sock_path, start, name, command = argv[0], argv[1], argv[2], argv[4:]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        # A reader that is not the server's child: forked twice, it is handed to the nearest
        # subreaper (the supervisor), so the server never has a child it did not make.
        if os.fork() != 0:
            os._exit(0)
        code = 0
        try:
            os.close(w)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)  # codex's stdin is the server's alone
            os.close(null)
            copy_and_watch(r, 1, lambda state: report(sock_path, start, name, state))
        except BaseException:  # never a traceback into codex's log of the server
            code = 1
        os._exit(code)
    os.waitpid(pid, 0)
    os.close(r)
    os.dup2(w, 1)
    os.close(w)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"aegis-mcp: cannot start MCP server {name}: {command[0]}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
