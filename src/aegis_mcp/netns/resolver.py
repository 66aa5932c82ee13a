"""The namespace's resolver under a network policy: a small DNS forwarder, root-side, that
the namespace's port 53, UDP and TCP, is DNAT-ed to. It forwards each query to the host's
nameserver (over the protocol it came by: a client asks over TCP when a UDP answer was
truncated), and before it hands the answer on, puts the A addresses of every name a host
rule matches into that rule's nft set, with the answer's TTL (bounded) as their timeout: an
allowed name's address is open before the program can connect to it, a denied name's is
closed. With the policy's maps (`nft_policy`), it also sends each such address, in map
`learned`, to a chain of the rules that can match it.

Queries and answers are untrusted bytes: parsed defensively, sizes and counts bounded. At most
MAX_PENDING UDP queries in flight (the oldest is dropped: its client asks again); at most
MAX_TCP_CLIENTS TCP connections (the oldest is closed for a new one), each closed after
TCP_IDLE seconds without a query or an answer, with MAX_TCP_INFLIGHT queries in flight and
queries of MAX_MESSAGE bytes at most.
"""

from __future__ import annotations

import contextlib
import errno
import math
import socket
import struct
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from aegis_mcp.netmon.policy import Policy
from aegis_mcp.netns.capture_packets import read_name
from aegis_mcp.netns.nft_policy import (
    LINEAR,
    MAX_CLASSES,
    class_chain,
    covering,
    host_set,
    regions,
)

MIN_TTL, MAX_TTL = 30, 3600
"""Bounds of a learned address's life in a set, in seconds: a TTL of 0 must not close the
address before the program's connect; a week-long one must not keep it open for a week."""
MAX_PENDING = 256
QUERY_TIMEOUT = 5.0
MAX_MESSAGE = 4096
"""The largest UDP message read, and the largest query taken over TCP."""
MAX_TCP_CLIENTS = 16
MAX_TCP_INFLIGHT = 4
TCP_IDLE = 10.0
GRACE = 5
"""Seconds an address stays in `learned` after the last of its sets' timeouts: the kernel's
timeouts start when nft commits, a little after the resolver's clock read."""
MAX_HELD = 16384
"""Addresses whose host rules the resolver remembers; beyond, new ones go to the chain of
every rule (exact, slower) until the answers it could not remember have run out."""


def answers(data: bytes) -> tuple[int, str, list[tuple[str, int]]] | None:
    """(id, first question name, [(IPv4 address, TTL)]) of a DNS response; None for anything
    else. Every A record counts (a CNAME chain's end names no other owner we trust more)."""
    if len(data) < 12:
        return None
    ident, flags, qd, an = struct.unpack_from("!HHHH", data, 0)
    if not flags & 0x8000 or qd != 1:
        return None

    found: list[tuple[str, int]] = []
    try:
        qname, off = read_name(data, 12, strict=True)
        qname = qname.lower()
        off += 4
        for _ in range(min(an, 64)):
            _, off = read_name(data, off, strict=True)
            rtype, _cls, ttl, rdlen = struct.unpack_from("!HHIH", data, off)
            off += 10
            if rtype == 1 and rdlen == 4 and off + 4 <= len(data):
                found.append((socket.inet_ntoa(data[off:off + 4]), ttl))
            off += rdlen
    except (ValueError, IndexError, struct.error, UnicodeError):
        return None
    return ident, qname, found


@dataclass(eq=False)
class _Client:
    """A TCP connection from the namespace: length-prefixed queries in, answers out."""

    sock: socket.socket
    deadline: float
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    waiting: int = 0
    eof: bool = False


@dataclass(eq=False)
class _Upstream:
    """One TCP query to the upstream resolver, for `client`."""

    sock: socket.socket
    client: _Client
    ident: int
    out: bytes
    deadline: float
    inbuf: bytearray = field(default_factory=bytearray)


class Resolver:
    """Serves the namespace's queries on `sock` (UDP) and `listener` (TCP), both bound by the
    supervisor. `maps`: the policy's table has map `learned` (`nft_policy`)."""

    def __init__(self, sock: socket.socket, upstream: str, policy: Policy, table: str,
                 nft: str, gap: Callable[[str], None], min_ttl: int = MIN_TTL,
                 listener: socket.socket | None = None, maps: bool = False,
                 heard: Callable[[bytes, int], None] | None = None) -> None:
        self.sock = sock
        self.min_ttl = min_ttl
        self.sock.setblocking(False)
        self.listener = listener
        if listener is not None:
            listener.setblocking(False)
        self.upstream = upstream
        self.table = table
        self.nft = nft
        self.gap = gap
        self.heard = heard
        """Told each answer handed on over TCP, with the client's port (the capture sees UDP
        answers on the veth itself)."""
        self.policy = policy
        self.host_rules = [(i, r) for i, r in enumerate(policy.rules) if r.kind == "host"]
        self.pending: OrderedDict[socket.socket, tuple[tuple[str, int], int, float]] = \
            OrderedDict()
        self.clients: OrderedDict[socket.socket, _Client] = OrderedDict()
        self.uplinks: dict[socket.socket, _Upstream] = {}
        self.names: OrderedDict[str, str] = OrderedDict()
        """The last name each address was learned for (what a deny event names)."""
        self.maps = maps and bool(self.host_rules)
        self.regions = regions(policy.rules)
        self.held: OrderedDict[str, dict[int, float]] = OrderedDict()
        """Address -> {host rule index: when its set's timeout ends} (monotonic), for every
        address in `learned` but those sent to LINEAR when this was full."""
        self.written: dict[str, str] = {}
        """Address -> the chain `learned` sends it to, as last committed."""
        self.classes: dict[tuple[int, ...], str] = {}
        """The chains made so far, by the rules they hold."""
        self.unheld_until = 0.0
        """Until then, answers this could not remember may still be in the sets."""
        self.next_prune = 0.0

    def sockets(self) -> list[socket.socket]:
        listener = [self.listener] if self.listener is not None else []
        return [self.sock, *listener, *self.pending, *self.uplinks,
                *(c.sock for c in self.clients.values() if self._readable(c))]

    def writers(self) -> list[socket.socket]:
        """The sockets waiting to write (a connect under way, a slow reader)."""
        return [*(c.sock for c in self.clients.values() if c.outbuf),
                *(u.sock for u in self.uplinks.values() if u.out)]

    def serve(self, now: float | None = None) -> None:
        """Take the queries waiting, hand on the answers that came, forget stale queries."""
        now = time.monotonic() if now is None else now
        for _ in range(64):
            try:
                query, client = self.sock.recvfrom(MAX_MESSAGE)
            except BlockingIOError:
                break
            if len(query) >= 12 and not query[2] & 0x80:
                self._forward(query, client, now)
        ready: list[tuple[bytes, tuple[str, int]]] = []
        for up in list(self.pending):
            try:
                data = up.recv(MAX_MESSAGE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            client, ident, _ = self.pending.pop(up)
            up.close()
            if len(data) >= 12 and struct.unpack_from("!H", data)[0] == ident:
                ready.append((data, client))
        by_tcp = [(data, up.client) for up in list(self.uplinks.values())
                  if (data := self._upstream(up)) is not None]
        if ready or by_tcp:
            self._learn([data for data, _ in [*ready, *by_tcp]], now)
            for data, client in ready:
                with contextlib.suppress(OSError):
                    self.sock.sendto(data, client)
            for data, conn in by_tcp:
                conn.waiting -= 1
                if conn.sock in self.clients:
                    conn.outbuf += struct.pack("!H", len(data)) + data
                    if self.heard is not None:
                        with contextlib.suppress(OSError):
                            self.heard(data, conn.sock.getpeername()[1])
        # After the answers: a client they took below MAX_TCP_INFLIGHT forwards the queries
        # it sent meanwhile.
        self._accept(now)
        for conn in list(self.clients.values()):
            self._read_client(conn, now)
        for conn in list(self.clients.values()):
            self._write_client(conn, now)
        for up, (_, _, deadline) in list(self.pending.items()):
            if deadline < now:
                del self.pending[up]
                up.close()
        for up in list(self.uplinks.values()):
            if up.deadline < now:
                self._drop_upstream(up)
        for conn in list(self.clients.values()):
            if conn.deadline < now:
                self._close_client(conn)

    # -- UDP -------------------------------------------------------------------------------
    def _forward(self, query: bytes, client: tuple[str, int], now: float) -> None:
        while len(self.pending) >= MAX_PENDING:
            old, _ = self.pending.popitem(last=False)
            old.close()
        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        up.setblocking(False)
        try:
            up.connect((self.upstream, 53))
            up.send(query)
        except OSError:
            up.close()
            return
        self.pending[up] = (client, struct.unpack_from("!H", query)[0], now + QUERY_TIMEOUT)

    # -- TCP: RFC 7766 framing, queries may follow one another on a connection ------------
    def _accept(self, now: float) -> None:
        if self.listener is None:
            return
        for _ in range(MAX_TCP_CLIENTS):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ECONNABORTED and kin: that client is gone already
                continue
            sock.setblocking(False)
            while len(self.clients) >= MAX_TCP_CLIENTS:
                self._close_client(next(iter(self.clients.values())))
            self.clients[sock] = _Client(sock, now + TCP_IDLE)

    def _read_client(self, conn: _Client, now: float) -> None:
        """Reads what `sockets` said may be read, and forwards each whole query; a client with
        MAX_TCP_INFLIGHT queries out is not read from until one is answered."""
        if self._readable(conn):
            try:
                data = conn.sock.recv(MAX_MESSAGE + 2 - len(conn.inbuf))
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                conn.eof = True  # a client may half-close once its queries are sent
            elif data:
                conn.inbuf += data
        while len(conn.inbuf) >= 2 and conn.waiting < MAX_TCP_INFLIGHT:
            size = struct.unpack_from("!H", conn.inbuf)[0]
            if not 12 <= size <= MAX_MESSAGE:
                self._close_client(conn)
                return
            if len(conn.inbuf) < 2 + size:
                break
            query = bytes(conn.inbuf[2:2 + size])
            del conn.inbuf[:2 + size]
            conn.deadline = now + TCP_IDLE
            if not query[2] & 0x80:
                self._forward_tcp(conn, query, now)
        if conn.eof and not conn.waiting and not conn.outbuf:
            self._close_client(conn)

    @staticmethod
    def _readable(conn: _Client) -> bool:
        return not conn.eof and conn.waiting < MAX_TCP_INFLIGHT and \
            len(conn.inbuf) < MAX_MESSAGE + 2

    def _forward_tcp(self, conn: _Client, query: bytes, now: float) -> None:
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        up.setblocking(False)
        if up.connect_ex((self.upstream, 53)) not in (0, errno.EINPROGRESS):
            up.close()
            return
        conn.waiting += 1
        self.uplinks[up] = _Upstream(up, conn, struct.unpack_from("!H", query)[0],
                                     struct.pack("!H", len(query)) + query,
                                     now + QUERY_TIMEOUT)

    def _upstream(self, up: _Upstream) -> bytes | None:
        """Moves one upstream query on; its answer once it is whole."""
        try:
            if up.out:
                up.out = up.out[up.sock.send(up.out):]
                if up.out:
                    return None
            data = up.sock.recv(2 + 65535 - len(up.inbuf))
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self._drop_upstream(up)
            return None
        up.inbuf += data
        if len(up.inbuf) < 2 or len(up.inbuf) < 2 + struct.unpack_from("!H", up.inbuf)[0]:
            return None
        answer = bytes(up.inbuf[2:2 + struct.unpack_from("!H", up.inbuf)[0]])
        del self.uplinks[up.sock]
        up.sock.close()
        if len(answer) < 12 or struct.unpack_from("!H", answer)[0] != up.ident:
            up.client.waiting -= 1
            return None
        return answer

    def _drop_upstream(self, up: _Upstream) -> None:
        """No answer: the client's own timeout makes it ask again."""
        if self.uplinks.pop(up.sock, None) is not None:
            up.sock.close()
            up.client.waiting -= 1

    def _write_client(self, conn: _Client, now: float) -> None:
        if conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except BlockingIOError:
                return
            except OSError:
                self._close_client(conn)
                return
            del conn.outbuf[:sent]
            conn.deadline = now + TCP_IDLE
        if conn.eof and not conn.waiting and not conn.outbuf:
            self._close_client(conn)

    def _close_client(self, conn: _Client) -> None:
        if self.clients.pop(conn.sock, None) is None:
            return
        for up in [u for u in self.uplinks.values() if u.client is conn]:
            self._drop_upstream(up)
        conn.sock.close()

    # -- learning --------------------------------------------------------------------------
    def _learn(self, messages: list[bytes], now: float) -> None:
        """One nft transaction for the answers of this pass, before any is handed on."""
        learned: dict[tuple[int, str], int] = {}
        for data in messages:
            parsed = answers(data)
            if parsed is None or not parsed[2]:
                continue
            _, qname, found = parsed
            for addr, _ in found:
                self.names[addr] = qname
                self.names.move_to_end(addr)
            while len(self.names) > 8192:
                self.names.popitem(last=False)
            for index, rule in self.host_rules:
                if rule.matches(None, rule.port, qname):
                    for addr, ttl in found:
                        learned[(index, addr)] = min(max(ttl, self.min_ttl), MAX_TTL)
        if not learned:
            return
        lines: list[str] = []
        for (index, addr), timeout in learned.items():
            element = f"ip {self.table} {host_set(index)} {{ {addr} "
            # add, delete, add: one transaction that (re)sets the timeout whether or not
            # the address was there already
            lines += [f"add element {element}timeout {timeout}s }}",
                      f"delete element {element}}}",
                      f"add element {element}timeout {timeout}s }}"]
        written, made = self._route(learned, now, lines) if self.maps else ({}, {})
        try:
            proc = subprocess.run([self.nft, "-f", "-"], input="\n".join(lines) + "\n",
                                  text=True, capture_output=True, timeout=5)
            failed = proc.returncode != 0
        except (OSError, subprocess.TimeoutExpired):
            failed = True
        if failed:
            self.gap("the policy's address sets could not be updated: names just resolved "
                     "stay closed")
            return
        self.written.update(written)
        self.classes.update(made)

    def _route(self, learned: dict[tuple[int, str], int], now: float, lines: list[str]
               ) -> tuple[dict[str, str], dict[tuple[int, ...], str]]:
        """Adds to `lines` what sends each address just learned to the chain of the rules
        that can match it: the host rules whose sets may hold it (all of them that learned
        it and whose timeout has not run out) and the CIDR rules that cover it. Returns what
        is then written, and the chains made."""
        for (index, addr), timeout in learned.items():
            held = self.held.get(addr)
            if held is None:
                if len(self.held) >= MAX_HELD:
                    self._prune(now)
                if len(self.held) >= MAX_HELD or now < self.unheld_until:
                    self.unheld_until = max(self.unheld_until, now + timeout + GRACE)
                    continue
                held = self.held[addr] = {}
            held[index] = now + timeout
            self.held.move_to_end(addr)
        written: dict[str, str] = {}
        made: dict[tuple[int, ...], str] = {}
        for addr in dict.fromkeys(addr for _, addr in learned):
            held = self.held.get(addr)
            if held is None:
                chain, ends = LINEAR, now + MAX_TTL
            else:
                for index in [i for i, end in held.items() if end + GRACE < now]:
                    del held[index]
                ends = max(held.values())
                key = tuple(sorted({*held, *covering(self.regions, addr)}))
                chain = self.classes.get(key) or made.get(key) or LINEAR
                if chain == LINEAR and len(self.classes) + len(made) < MAX_CLASSES:
                    chain = made[key] = f"learned_{len(self.classes) + len(made)}"
                    lines += class_chain(self.table, chain, self.policy.rules,
                                         self.policy.default, key)
            # What an address not remembered here can be in `learned`: nothing, or LINEAR.
            before = self.written.get(addr, LINEAR)
            element = f"ip {self.table} learned {{ {addr} "
            lines += [f"add element {element}timeout 1s : goto {before} }}",
                      f"delete element {element}}}",
                      f"add element {element}timeout {math.ceil(ends - now) + GRACE}s : "
                      f"goto {chain} }}"]
            if held is not None:
                written[addr] = chain
        return written, made

    def _prune(self, now: float) -> None:
        """Forget the addresses whose `learned` entry has surely expired (at most once a
        second: a full table of live ones is not scanned again at each answer)."""
        if now < self.next_prune:
            return
        self.next_prune = now + 1.0
        for addr in [a for a, held in self.held.items()
                     if not held or max(held.values()) + 2 * GRACE < now]:
            del self.held[addr]
            self.written.pop(addr, None)
