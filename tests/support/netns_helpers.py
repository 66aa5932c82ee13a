"""Shared pieces of the netns tests: host snapshots, log polling, servers on the host end."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.support.private_net import run_in_netns

T = TypeVar("T")
SYSCTLS = ("net/ipv4/ip_forward", "net/netfilter/nf_conntrack_acct")


def pids_in(inode: os.stat_result) -> list[int]:
    """The live (not zombie) processes in the network namespace whose file (/run/netns/NAME)
    had this stat: it names the namespace even after the file is gone."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
            if (st.st_dev, st.st_ino) != (inode.st_dev, inode.st_ino):
                continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        pids.append(int(entry))
    return pids


def host_snapshot() -> dict[str, Any]:
    """What a namespace may change on the host; teardown/cleanup must restore all of it."""

    def run(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    links = sorted(line.split(":")[1].strip().split("@")[0]
                   for line in run("ip", "-o", "link").splitlines())
    sysctls = {}
    for key in SYSCTLS:
        path = Path("/proc/sys") / key
        sysctls[key] = path.read_text().strip() if path.exists() else None
    return {
        "netns": sorted(line.split()[0] for line in run("ip", "netns", "list").splitlines()
                        if line.strip()),
        "links": links,
        "nft": sorted(run("nft", "list", "tables").splitlines()),
        "etc_netns": sorted(p.name for p in Path("/etc/netns").glob("*"))
        if Path("/etc/netns").is_dir() else [],
        "sysctls": sysctls,
    }


def normalise(snapshot: dict[str, Any]) -> dict[str, Any]:
    """nf_conntrack_acct only exists once nf_conntrack is loaded (our first nft table loads
    it); absent and "0" mean the same."""
    out = dict(snapshot)
    out["sysctls"] = {k: (v if v is not None else "0") for k, v in snapshot["sysctls"].items()}
    return out


def read_events(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def wait_event(log: Path, predicate: Callable[[dict[str, Any]], bool],
               timeout: float = 10.0) -> dict[str, Any]:
    """The first event in the capture's log at `log` that `predicate` accepts, waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in read_events(log):
            if predicate(event):
                return event
        time.sleep(0.05)
    raise AssertionError(f"no matching event in {timeout}s; log:\n"
                         + "\n".join(json.dumps(e) for e in read_events(log)))


class TcpServer:
    """Accepts connections on `addr`, reads until the client half-closes or `expect` bytes,
    answers `reply` bytes, closes. Counts what it got per connection."""

    def __init__(self, addr: str, expect: int, reply: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, 0))
        self.sock.listen(8)
        self.sock.settimeout(15)
        self.port = self.sock.getsockname()[1]
        self.expect, self.reply = expect, reply
        self.received: list[int] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(15)
            got = 0
            while got < self.expect:
                data = conn.recv(65536)
                if not data:
                    break
                got += len(data)
            self.received.append(got)
            conn.sendall(b"r" * self.reply)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the thread before its fd is closed (harness.py)
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        self.sock.close()


class UdpEcho:
    """Answers each datagram with `reply_size` bytes, `replies` times at most."""

    def __init__(self, addr: str, reply_size: int, replies: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, 0))
        self.sock.settimeout(15)
        self.port = self.sock.getsockname()[1]
        self.reply_size, self.replies = reply_size, replies
        self.received: list[int] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        sent = 0
        while len(self.received) < 16:
            try:
                data, peer = self.sock.recvfrom(65536)
            except OSError:
                return
            self.received.append(len(data))
            if sent < self.replies:
                self.sock.sendto(b"u" * self.reply_size, peer)
                sent += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the thread before its fd is closed (harness.py)
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        self.sock.close()


class DnsResponder:
    """A tiny DNS server: A queries for names in `records` get that address, anything else an
    empty NOERROR answer. With `tcp`, it answers over TCP too (RFC 7766 framing, queries one
    after another on a connection); a name in `truncated` then gets over UDP an empty answer
    with the TC bit (too big for UDP: ask again over TCP), its record over TCP only."""

    truncated: tuple[str, ...] = ()

    def __init__(self, addr: str, records: dict[str, str], port: int = 53, tcp: bool = False,
                 truncated: tuple[str, ...] = ()) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, port))
        self.sock.settimeout(0.2)
        self.records = records
        self.truncated = truncated
        self.questions: list[str] = []
        self.tcp_questions: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._serve, daemon=True)]
        self.listener: socket.socket | None = None
        if tcp:
            self.listener = socket.socket()
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((addr, port))
            self.listener.listen(8)
            self.listener.settimeout(0.2)
            self.threads.append(threading.Thread(target=self._serve_tcp, daemon=True))
        for thread in self.threads:
            thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            answer = self._answer(data)
            if answer:
                self.sock.sendto(answer, peer)

    def _serve_tcp(self) -> None:
        assert self.listener is not None
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                for _ in range(16):  # queries on one connection
                    try:
                        query = self._read_message(conn)
                    except OSError:
                        break
                    answer = self._answer(query, tcp=True) if query else None
                    if not answer:
                        break
                    conn.sendall(struct.pack("!H", len(answer)) + answer)

    @staticmethod
    def _read_message(conn: socket.socket) -> bytes:
        data = b""
        while len(data) < 2 or len(data) < 2 + struct.unpack_from("!H", data)[0]:
            chunk = conn.recv(4096)
            if not chunk:
                return b""
            data += chunk
        return data[2:2 + struct.unpack_from("!H", data)[0]]

    def _answer(self, query: bytes, tcp: bool = False) -> bytes | None:
        if len(query) < 12:
            return None
        ident, _flags, qdcount = struct.unpack_from("!HHH", query)
        off, labels = 12, []
        while off < len(query) and query[off]:
            labels.append(query[off + 1: off + 1 + query[off]].decode())
            off += 1 + query[off]
        qtype = struct.unpack_from("!H", query, off + 1)[0]
        question = query[12: off + 5]
        name = ".".join(labels)
        (self.tcp_questions if tcp else self.questions).append(name)
        address = self.records.get(name) if qtype == 1 else None
        flags = 0x8180
        if address and name in self.truncated and not tcp:
            address, flags = None, flags | 0x0200
        header = struct.pack("!HHHHHH", ident, flags, 1, 1 if address else 0, 0, 0)
        body = question
        if address:
            body += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
        return header + body

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
        self.sock.close()
        if self.listener is not None:
            self.listener.close()


class Outside:
    """A stand-in for the internet: a network namespace of the test's own behind a veth of its
    own, that an aegis namespace reaches through the host's routing and NAT like any other
    machine (the host itself is off limits to the agent). Servers made by `run` listen in it.

        with Outside() as out:
            server = out.run(lambda: TcpServer(out.addr, expect=10, reply=5))
    """

    def __init__(self) -> None:
        n = os.getpid()
        self.name, self.link = f"aegistest-{n}", f"aegt{n % 10**9}"
        self.host_addr = self.addr = ""

    def __enter__(self) -> Outside:
        used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                              check=True).stdout
        # TEST-NET-2, one /30 per concurrent test run on this machine
        for net in ipaddress.ip_network("198.51.100.0/24").subnets(new_prefix=30):
            host, addr = (str(a) for a in net.hosts())
            if f" {host}/" not in used:
                self.host_addr, self.addr = host, addr
                break
        run = ["ip", "netns", "exec", self.name]
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            for cmd in (["ip", "link", "add", self.link, "type", "veth", "peer", "name", "eth0",
                         "netns", self.name],
                        ["ip", "addr", "add", f"{self.host_addr}/30", "dev", self.link],
                        ["ip", "link", "set", self.link, "up"],
                        [*run, "ip", "addr", "add", f"{self.addr}/30", "dev", "eth0"],
                        [*run, "ip", "link", "set", "eth0", "up"],
                        [*run, "ip", "link", "set", "lo", "up"]):
                subprocess.run(cmd, check=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "link", "del", self.link], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)

    def run(self, fn: Callable[[], T]) -> T:
        """fn() in a thread inside the outside namespace."""
        return run_in_netns(f"/run/netns/{self.name}", fn)

    def exec(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]
