"""The agent's aegis-mcp MCP server, as the agent starts it under a supervisor: a stdio relay to
the supervisor's warm server (mcp.warm), which the official SDK serves.

Every hot-reload starts the agent's MCP servers again, and Claude Code's print mode waits for
this one at every start: a cold `aegis-mcp --mcp-server` spends about half a second importing
the SDK and holds 68 MB. This relay is a plain script of the standard library run with
`python -I -S` (no site, no user paths: nothing from the agent's project or environment is
imported), so it starts in a few milliseconds and holds a few MB of its own; the protocol is the
warm server's, unchanged, one connection per relay.

    python -I -S relay.py HOST_SOCKET -- COLD_COMMAND...

It sends one JSON line about itself (its parent, the agent's start, its working directory),
waits for the warm server's one-line welcome, then copies bytes both ways until either side
ends. If the warm server is not there (not started, ended, hung), it execs COLD_COMMAND, the
full server, with its stdin untouched: the agent never notices the difference.
"""

import json
import os
import select
import signal
import socket
import sys

WELCOME_TIMEOUT = 10.0
"""Seconds to wait for the warm server's welcome (it may still be importing the SDK when the
very first start of the agent comes up) before starting the cold server instead."""
CHUNK = 65536


def _welcome(sock: socket.socket) -> bool:
    sock.settimeout(WELCOME_TIMEOUT)
    data = b""
    try:
        while b"\n" not in data and len(data) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            data += chunk
        return json.loads(data.split(b"\n", 1)[0]).get("ok") is True
    except (OSError, ValueError, AttributeError):
        return False


def _connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hello = {"ppid": os.getppid(), "start": os.environ.get("AEGIS_AGENT_START", ""),
             "cwd": os.getcwd() if os.path.isdir(".") else "/"}
    try:
        sock.settimeout(WELCOME_TIMEOUT)
        sock.connect(path)
        sock.sendall(json.dumps(hello).encode() + b"\n")
    except OSError:
        sock.close()
        return None
    if not _welcome(sock):
        sock.close()
        return None
    sock.settimeout(None)
    return sock


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy(sock: socket.socket) -> int:
    """stdin -> socket and socket -> stdout until the warm server's side ends."""
    peer = sock.fileno()
    reading = [0, peer]
    while True:
        ready, _, _ = select.select(reading, [], [])
        if 0 in ready:
            data = os.read(0, CHUNK)
            if data:
                sock.sendall(data)
            else:  # the agent closed our stdin: the session is over once the server says so
                reading.remove(0)
                sock.shutdown(socket.SHUT_WR)
        if peer in ready:
            data = sock.recv(CHUNK)
            if not data:
                return 0
            _write_all(1, data)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -I -S relay.py HOST_SOCKET -- COLD_COMMAND...", file=sys.stderr)
        return 2
    path, cold = argv[0], argv[2:]
    # A restart's SIGINT goes to the agent's whole process group: the agent ends this relay
    # by closing its stdin (or SIGTERM), after the restart tool's answer is through.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sock = _connect(path)
    if sock is None:
        os.execv(cold[0], cold)
    try:
        return _copy(sock)
    except (BrokenPipeError, ConnectionResetError):
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
