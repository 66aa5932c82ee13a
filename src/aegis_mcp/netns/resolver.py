"""The namespace's resolver under a network policy: a small DNS forwarder, root-side, that
the namespace's UDP port 53 is DNAT-ed to. It forwards each query to the host's nameserver,
and before it hands the answer on, puts the A addresses of every name a host rule matches
into that rule's nft set, with the answer's TTL (bounded) as their timeout: an allowed name's
address is open before the program can connect to it, a denied name's is closed. With the
policy's maps (`nft_policy`), it also sends each such address, in map `learned`, to a chain
of the rules that can match it.

Queries and answers are untrusted bytes: parsed defensively, sizes and counts bounded, and at
most MAX_PENDING queries in flight (the oldest is dropped: its client asks again).
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable

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


class Resolver:
    """Serves the namespace's UDP queries on `sock` (bound by the supervisor). `maps`: the
    policy's table has map `learned` (`nft_policy`)."""

    def __init__(self, sock: socket.socket, upstream: str, policy: Policy, table: str,
                 nft: str, gap: Callable[[str], None], min_ttl: int = MIN_TTL,
                 maps: bool = False) -> None:
        self.sock = sock
        self.min_ttl = min_ttl
        self.sock.setblocking(False)
        self.upstream = upstream
        self.table = table
        self.nft = nft
        self.gap = gap
        self.policy = policy
        self.host_rules = [(i, r) for i, r in enumerate(policy.rules) if r.kind == "host"]
        self.pending: OrderedDict[socket.socket, tuple[tuple[str, int], int, float]] = \
            OrderedDict()
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
        return [self.sock, *self.pending]

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
        if ready:
            self._learn([data for data, _ in ready], now)
            for data, client in ready:
                with contextlib.suppress(OSError):
                    self.sock.sendto(data, client)
        for up, (_, _, deadline) in list(self.pending.items()):
            if deadline < now:
                del self.pending[up]
                up.close()

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
