"""Running real programs under libaegis_hooks.so, and loopback servers that know exactly how
many bytes each connection carried (so the hooks' counts can be checked to the byte)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aegis_mcp.paths import hooks_library

SNIPPETS = Path(__file__).resolve().parent
LIB = str(hooks_library())


def hooked_env(log: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("AEGIS_NETMON_LOG", "AEGIS_MCP_REDIRECT", "LD_PRELOAD")}
    env["LD_PRELOAD"] = LIB
    if log is not None:
        env["AEGIS_NETMON_LOG"] = str(log)
    env.update(extra)
    return env


def plain_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("AEGIS_NETMON_LOG", "AEGIS_MCP_REDIRECT", "LD_PRELOAD")}
    env.update(extra)
    return env


def run(cmd: Sequence[str], env: dict[str, str], timeout: float = 60,
        **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout,
                          check=False, **kw)


def events(log: Path, kind: str | None = None) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    out = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e for e in out if kind is None or e["event"] == kind]


def conns_to(log: Path, port: int) -> list[dict[str, Any]]:
    """close events of connections to `port`."""
    return [e for e in events(log, "close") if e.get("port") == port]


def compile_snippet(name: str, out_dir: Path, *flags: str) -> Path:
    exe = out_dir / name.removesuffix(".c")
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(exe), str(SNIPPETS / name), *flags],
                   check=True, capture_output=True, timeout=60)
    return exe


@dataclass
class Served:
    peer: str
    received: int = 0
    sent: int = 0
    path: str = ""


@dataclass
class RawHTTPServer:
    """An HTTP/1.0-style server on loopback: reads one request, answers `body`, closes.
    Records how many bytes each connection carried in each direction."""

    body: bytes = b"hello from loopback\n"
    family: int = socket.AF_INET
    host: str = "127.0.0.1"
    connections: list[Served] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(self.family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.host, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.done = threading.Condition(self.lock)
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def response(self) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(self.body)).encode() + b"\r\n\r\n" + self.body)

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn, peer), daemon=True).start()

    def _one(self, conn: socket.socket, peer: Any) -> None:
        served = Served(str(peer[0]))
        conn.settimeout(20)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            while len(rest) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                rest += chunk
                data += chunk
            served.received = len(data)
            served.path = head.split(b" ")[1].decode() if head.count(b" ") >= 2 else ""
            if data:
                conn.sendall(self.response)
                served.sent = len(self.response)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):  # until the client closed: its close comes first
                pass
        except OSError:
            pass
        finally:
            conn.close()
            with self.done:
                self.connections.append(served)
                self.done.notify_all()

    def wait(self, count: int, timeout: float = 10) -> list[Served]:
        with self.done:
            self.done.wait_for(lambda: len(self.connections) >= count, timeout)
            return list(self.connections)

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        # Wake the accept first, then close: a listening socket closed under a thread still in
        # accept() leaves that thread owning an fd number the next socket of this process gets
        # (a later test's server, whose connections it then answered: measured, 1 run in 7).
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        self.sock.close()
