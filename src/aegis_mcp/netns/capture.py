"""The root-side capture of netns mode: `python -m aegis_mcp.netns.capture ...`, started by
`netns.create()`, records every flow of one namespace as netmon JSONL events (source "netns").

Nothing here looks at every packet in Python, so a bulk transfer pays (almost) nothing:
- Flows and byte counters come from the kernel's conntrack (netlink event groups NEW, UPDATE,
  DESTROY on one socket, a GET per long-lived flow every `--totals-interval` seconds on another).
  Conntrack counts IP bytes; UDP payload is exact from it (IP + UDP headers are fixed), TCP
  payload is estimated from it only for periodic totals.
- One AF_PACKET socket on the host end of the veth carries a classic BPF filter that passes
  only TCP SYN/FIN/RST and UDP port 53, so Python sees a handful of packets per connection.
  The SYN and FIN sequence numbers give exact TCP payload totals at close, and the DNS
  answers name the peers. Both directions share the socket's one queue, so they arrive in the
  order they happened (a DNS answer before the SYN it causes, a SYN before its SYN-ACK).

Ordering against conntrack: a packet reaches the socket before netfilter sees it, so each pass
reads conntrack first and the packets second, and processes the packets first.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aegis_mcp import procs as proctree

# netlink / nfnetlink / ctnetlink constants (linux/netlink.h, linux/netfilter/nfnetlink*.h)
NETLINK_NETFILTER = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x200, 0x400
CT_NEW, CT_GET, CT_DELETE = 0x100, 0x101, 0x102  # NFNL_SUBSYS_CTNETLINK << 8 | msg
GROUPS = 0b111  # NFNLGRP_CONNTRACK_NEW, _UPDATE, _DESTROY
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_PROTOINFO = 1, 2, 4
CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_ID = 9, 10, 12
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
NLA_F_NESTED = 0x8000
TCP_ESTABLISHED_STATES = {3, 4, 5, 6, 7}  # ESTABLISHED .. TIME_WAIT
SO_RCVBUFFORCE = 33
ETH_P_IP, ETH_P_ALL = 0x0800, 0x0003
SOL_PACKET, PACKET_STATISTICS = 263, 6
SO_ATTACH_FILTER = 26
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
IPPROTO_TCP, IPPROTO_UDP = 6, 17
SNAPLEN = 4096
RCODES = {0: "ok", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}

# Classic BPF over an Ethernet frame: accept unfragmented IPv4 TCP with SYN, FIN or RST set,
# and UDP from or to port 53; drop everything else in the kernel.
BPF_PROGRAM = [
    (0x28, 0, 0, 12),        # 0  ldh [12]            ethertype
    (0x15, 0, 14, ETH_P_IP),  # 1  jeq #0x800, else -> 16
    (0x28, 0, 0, 20),        # 2  ldh [20]            flags + fragment offset
    (0x45, 12, 0, 0x1FFF),   # 3  jset #0x1fff -> 16  a later fragment: drop
    (0x30, 0, 0, 23),        # 4  ldb [23]            IP protocol
    (0x15, 6, 0, 6),         # 5  jeq #6 -> 12        TCP
    (0x15, 0, 9, 17),        # 6  jeq #17, else -> 16 UDP
    (0xB1, 0, 0, 14),        # 7  ldxb 4*([14]&0xf)   IP header length
    (0x48, 0, 0, 14),        # 8  ldh [x+14]          source port
    (0x15, 5, 0, 53),        # 9  jeq #53 -> 15
    (0x48, 0, 0, 16),        # 10 ldh [x+16]          destination port
    (0x15, 3, 4, 53),        # 11 jeq #53 -> 15, else -> 16
    (0xB1, 0, 0, 14),        # 12 ldxb 4*([14]&0xf)
    (0x50, 0, 0, 27),        # 13 ldb [x+27]          TCP flags
    (0x45, 0, 1, FIN | SYN | RST),  # 14 jset -> 15, else -> 16
    (0x06, 0, 0, SNAPLEN),   # 15 accept
    (0x06, 0, 0, 0),         # 16 drop
]


# ---------------------------------------------------------------------------------------------
# Output


class EventLog:
    """Appends one JSON line per event with a single write() (O_APPEND), like the hooks."""

    def __init__(self, fd: int) -> None:
        # A descriptor, not a path: the log lives in the user's directory, and root (this
        # helper) never opens a path there (netns.open_log, run as that user, opened it).
        self.fd = fd

    def write(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with contextlib.suppress(OSError):
            os.write(self.fd, line.encode())


# ---------------------------------------------------------------------------------------------
# Netlink


def _attrs(data: bytes | memoryview, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    end = len(data) if end is None else end
    off = start
    while off + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & ~0xC000] = bytes(data[off + 4: off + length])
        off += (length + 3) & ~3
    return out


@dataclass
class CtEntry:
    kind: str  # "new", "update", "destroy", "get"
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    ct_id: int | None
    tcp_state: int | None
    orig: tuple[int, int]  # (packets, bytes) initiator -> responder
    reply: tuple[int, int]


def _counters(raw: bytes | None) -> tuple[int, int]:
    if not raw:
        return (0, 0)
    attrs = _attrs(raw)
    packets = attrs.get(CTA_COUNTERS_PACKETS, b"\0" * 8)
    nbytes = attrs.get(CTA_COUNTERS_BYTES, b"\0" * 8)
    return (int.from_bytes(packets, "big"), int.from_bytes(nbytes, "big"))


def parse_ct(msg: memoryview, kind: str) -> CtEntry | None:
    """One ctnetlink message (after the nlmsghdr) as a CtEntry; None unless IPv4 TCP/UDP."""
    if len(msg) < 4 or msg[0] != socket.AF_INET:
        return None
    attrs = _attrs(msg, 4)
    orig = attrs.get(CTA_TUPLE_ORIG)
    if orig is None:
        return None
    tuple_attrs = _attrs(orig)
    ip = _attrs(tuple_attrs.get(CTA_TUPLE_IP, b""))
    proto = _attrs(tuple_attrs.get(CTA_TUPLE_PROTO, b""))
    num = proto.get(CTA_PROTO_NUM, b"\0")[0]
    if num not in (IPPROTO_TCP, IPPROTO_UDP) or CTA_IP_V4_SRC not in ip:
        return None
    state = None
    if CTA_PROTOINFO in attrs:
        tcp = _attrs(_attrs(attrs[CTA_PROTOINFO]).get(1, b""))
        state = tcp[1][0] if 1 in tcp else None
    ct_id = attrs.get(CTA_ID)
    return CtEntry(
        kind, num, socket.inet_ntoa(ip[CTA_IP_V4_SRC]), socket.inet_ntoa(ip[CTA_IP_V4_DST]),
        int.from_bytes(proto.get(CTA_PROTO_SRC_PORT, b"\0\0"), "big"),
        int.from_bytes(proto.get(CTA_PROTO_DST_PORT, b"\0\0"), "big"),
        int.from_bytes(ct_id, "big") if ct_id else None, state,
        _counters(attrs.get(CTA_COUNTERS_ORIG)), _counters(attrs.get(CTA_COUNTERS_REPLY)),
    )


def _nla(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _netlink_messages(data: bytes) -> list[tuple[int, int, memoryview]]:
    """(type, flags, payload) of each message in one netlink datagram."""
    view = memoryview(data)
    out = []
    off = 0
    while off + 16 <= len(data):
        length, kind, flags = struct.unpack_from("=IHH", data, off)
        if length < 16:
            break
        out.append((kind, flags, view[off + 16: off + length]))
        off += (length + 3) & ~3
    return out


class Conntrack:
    """Conntrack events (one socket) and single-entry queries (another)."""

    def __init__(self) -> None:
        self.events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        with contextlib.suppress(OSError):
            self.events.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        self.events.bind((0, GROUPS))
        self.events.setblocking(False)
        self.query = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.query.bind((0, 0))
        self.query.settimeout(1.0)
        self.seq = 0
        self.lost = 0

    def drain(self) -> list[CtEntry]:
        out: list[CtEntry] = []
        for _ in range(10000):
            try:
                data = self.events.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.lost += 1
                    continue
                raise
            for kind, flags, payload in _netlink_messages(data):
                if kind == CT_NEW:
                    name = "new" if flags & (NLM_F_CREATE | NLM_F_EXCL) else "update"
                elif kind == CT_DELETE:
                    name = "destroy"
                else:
                    continue
                entry = parse_ct(payload, name)
                if entry is not None:
                    out.append(entry)
        return out

    def get(self, proto: int, src: str, dst: str, sport: int, dport: int) -> CtEntry | None:
        """The current entry (with counters) of one flow, by its original tuple."""
        self.seq += 1
        tup = _nla(CTA_TUPLE_IP | NLA_F_NESTED,
                   _nla(CTA_IP_V4_SRC, socket.inet_aton(src))
                   + _nla(CTA_IP_V4_DST, socket.inet_aton(dst)))
        tup += _nla(CTA_TUPLE_PROTO | NLA_F_NESTED,
                    _nla(CTA_PROTO_NUM, bytes([proto]))
                    + _nla(CTA_PROTO_SRC_PORT, sport.to_bytes(2, "big"))
                    + _nla(CTA_PROTO_DST_PORT, dport.to_bytes(2, "big")))
        body = struct.pack("=BBH", socket.AF_INET, 0, 0) + _nla(CTA_TUPLE_ORIG | NLA_F_NESTED,
                                                                  tup)
        msg = struct.pack("=IHHII", 16 + len(body), CT_GET, NLM_F_REQUEST, self.seq, 0) + body
        try:
            self.query.send(msg)
            for _ in range(8):
                data = self.query.recv(65536)
                for kind, _flags, payload in _netlink_messages(data):
                    seq = struct.unpack_from("=I", data, 8)[0]
                    if seq != self.seq:
                        continue
                    if kind in (NLMSG_ERROR, NLMSG_DONE):
                        return None
                    if kind == CT_NEW:
                        return parse_ct(payload, "get")
        except OSError:
            return None
        return None


# ---------------------------------------------------------------------------------------------
# Packets


def _attach_filter(sock: socket.socket) -> None:
    prog = b"".join(struct.pack("=HBBI", *ins) for ins in BPF_PROGRAM)
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("@HP", len(BPF_PROGRAM), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def packet_socket(ifname: str) -> socket.socket:
    """An AF_PACKET socket seeing both directions on `ifname` in the order they happened,
    filtered in the kernel. The filter is attached before bind so no unfiltered packet is
    ever queued."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    _attach_filter(sock)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    sock.bind((ifname, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def drain_packets(sock: socket.socket, buf: bytearray, limit: int = 4096) -> list[bytes]:
    out = []
    view = memoryview(buf)
    for _ in range(limit):
        try:
            size = sock.recv_into(view, len(buf), socket.MSG_TRUNC)
        except BlockingIOError:
            break
        # The real length rides along so a truncated GSO frame still gives its payload size.
        out.append(size.to_bytes(4, "big") + bytes(view[: min(size, len(buf))]))
    return out


def parse_dns(data: bytes) -> tuple[int, bool, int, str, list[str]] | None:
    """(id, is_response, rcode, first question name, A/AAAA answers) of a DNS message."""
    if len(data) < 12:
        return None
    ident, flags, qd, an = struct.unpack_from("!HHHH", data, 0)

    def name_at(off: int) -> tuple[str, int]:
        labels: list[str] = []
        end = -1
        for _ in range(128):  # bounded: compression loops cannot hang us
            if off >= len(data):
                raise ValueError("truncated name")
            length = data[off]
            if length & 0xC0 == 0xC0:
                if end < 0:
                    end = off + 2
                off = ((length & 0x3F) << 8) | data[off + 1]
                continue
            if length == 0:
                return ".".join(labels), (end if end >= 0 else off + 1)
            labels.append(data[off + 1: off + 1 + length].decode("ascii", "replace"))
            off += 1 + length
        raise ValueError("name too long")

    qname = ""
    answers: list[str] = []
    try:
        off = 12
        for i in range(min(qd, 8)):
            name, off = name_at(off)
            off += 4
            if i == 0:
                qname = name
        for _ in range(min(an, 64)):
            _, off = name_at(off)
            rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", data, off)
            off += 10
            rdata = data[off: off + rdlen]
            if rtype == 1 and rdlen == 4:
                answers.append(socket.inet_ntop(socket.AF_INET, rdata))
            elif rtype == 28 and rdlen == 16:
                answers.append(socket.inet_ntop(socket.AF_INET6, rdata))
            off += rdlen
    except (ValueError, struct.error, IndexError):
        if not qname:
            return None
    return ident, bool(flags & 0x8000), flags & 0xF, qname, answers


# ---------------------------------------------------------------------------------------------
# Flow tracking

Key = tuple[int, str, int, str, int]  # proto, local addr, local port, remote addr, remote port


@dataclass
class Flow:
    key: Key
    initiator_local: bool
    start: float
    host: str | None
    ct_id: int | None = None
    isn: dict[str, int] = field(default_factory=dict)  # "l"/"r" -> initial sequence number
    done: dict[str, int] = field(default_factory=dict)  # "l"/"r" -> payload bytes at FIN
    established: bool = False
    timestamps: bool = False
    reported: tuple[int, int] = (0, 0)
    last_totals: float = 0.0


class Tracker:
    def __init__(self, ns_addr: str, log: EventLog, ct: Conntrack | None,
                 totals_interval: float,
                 forwarded: dict[tuple[str, int], str] | None = None) -> None:
        self.ns_addr = ns_addr
        self.forwarded = forwarded or {}
        """(host end address, port) -> the host loopback address it is forwarded to: the
        name the agent used for it."""
        self.log = log
        self.ct = ct
        self.totals_interval = totals_interval
        self.flows: dict[Key, Flow] = {}
        self.recently_closed: OrderedDict[Key, float] = OrderedDict()
        self.names: OrderedDict[str, str] = OrderedDict()  # address -> host name
        self.queries: OrderedDict[tuple[int, int], tuple[str, float, str]] = OrderedDict()

    # -- output --------------------------------------------------------------------------
    def _event(self, event: str, flow: Flow, now: float, sent: int = 0, recv: int = 0,
               result: str | None = None, **extra: Any) -> None:
        proto, laddr, lport, raddr, rport = flow.key
        self.log.write({
            "ts": round(now, 6), "event": event, "source": "netns", "pid": None, "ppid": None,
            "exe": None, "fd": None, "family": "ipv4",
            "proto": "tcp" if proto == IPPROTO_TCP else "udp", "addr": raddr, "port": rport,
            "host": flow.host, "local_addr": laddr, "local_port": lport, "sent": sent,
            "recv": recv, "duration": round(now - flow.start, 6) if event != "connect"
            and event != "accept" else None, "result": result, **extra,
        })

    def _open(self, key: Key, initiator_local: bool, now: float) -> Flow:
        old = self.flows.pop(key, None)
        if old is not None:
            self._close_from_counters(old, now, None)
        flow = Flow(key, initiator_local, now,
                    self.forwarded.get((key[3], key[4])) or self.names.get(key[3]))
        self.flows[key] = flow
        self.recently_closed.pop(key, None)
        result = ("EINPROGRESS" if key[0] == IPPROTO_TCP else "ok") if initiator_local else "ok"
        self._event("connect" if initiator_local else "accept", flow, now, result=result)
        return flow

    def _close(self, flow: Flow, now: float, sent: int, recv: int, result: str | None) -> None:
        self.flows.pop(flow.key, None)
        self.recently_closed[flow.key] = now
        while len(self.recently_closed) > 4096:
            self.recently_closed.popitem(last=False)
        self._event("close", flow, now, sent, recv, result)

    # -- packets ---------------------------------------------------------------------------
    def packet(self, frame: bytes, now: float) -> None:
        real_len = int.from_bytes(frame[:4], "big")
        data = frame[4:]
        if len(data) < 34 or data[14] >> 4 != 4:
            return
        ihl = (data[14] & 0x0F) * 4
        tot_len = int.from_bytes(data[16:18], "big") or (real_len - 14)
        proto = data[23]
        src, dst = socket.inet_ntoa(data[26:30]), socket.inet_ntoa(data[30:34])
        l4 = 14 + ihl
        if len(data) < l4 + 8:
            return
        sport, dport = struct.unpack_from("!HH", data, l4)
        outbound = src == self.ns_addr  # leaving the namespace
        if outbound:
            key: Key = (proto, src, sport, dst, dport)
        elif dst == self.ns_addr:
            key = (proto, dst, dport, src, sport)
        else:
            return
        if proto == IPPROTO_UDP:
            self._dns(data[l4 + 8:], key, outbound, now)
        elif proto == IPPROTO_TCP and len(data) >= l4 + 20:
            self._tcp(data, l4, tot_len - ihl, key, outbound, now)

    def _tcp(self, data: bytes, l4: int, seg_len: int, key: Key, outbound: bool,
             now: float) -> None:
        seq, ack = struct.unpack_from("!II", data, l4 + 4)
        doff = (data[l4 + 12] >> 4) * 4
        flags = data[l4 + 13]
        payload = max(0, seg_len - doff)
        side, other = ("l", "r") if outbound else ("r", "l")
        flow = self.flows.get(key)
        if flags & SYN:
            has_ts = _has_timestamps(data[l4 + 20: l4 + doff])
            if not flags & ACK:
                if flow is not None and flow.isn.get(side) == seq:
                    return  # a retransmitted SYN
                flow = self._open(key, initiator_local=outbound, now=now)
                flow.isn[side] = seq
                flow.timestamps = has_ts
            elif flow is not None:
                flow.isn[side] = seq
                flow.established = True
                flow.timestamps = flow.timestamps and has_ts
            return
        if flow is None:
            return
        if flags & RST:
            if side in flow.isn and side not in flow.done:
                flow.done[side] = (seq - flow.isn[side] - 1) & 0xFFFFFFFF
            if other in flow.isn and other not in flow.done and flags & ACK:
                flow.done[other] = (ack - flow.isn[other] - 1) & 0xFFFFFFFF
            refused = not flow.established and (side == "r") == flow.initiator_local
            self._close(flow, now, flow.done.get("l", 0), flow.done.get("r", 0),
                        "ECONNREFUSED" if refused else ("ok" if flow.established else
                                                        "ECONNRESET"))
            return
        if side not in flow.isn:
            return
        if flags & FIN and side not in flow.done:
            flow.done[side] = (seq + payload - flow.isn[side] - 1) & 0xFFFFFFFF
        if "l" in flow.done and "r" in flow.done:
            self._close(flow, now, flow.done["l"], flow.done["r"], "ok")

    def _dns(self, payload: bytes, key: Key, outbound: bool, now: float) -> None:
        parsed = parse_dns(payload)
        if parsed is None:
            return
        ident, response, rcode, qname, answers = parsed
        qkey = (ident, key[2])
        if not response:
            if outbound and key[4] == 53:
                self.queries[qkey] = (qname, now, key[3])
                while len(self.queries) > 1024:
                    self.queries.popitem(last=False)
            return
        if outbound or key[4] != 53:
            return
        self.queries.pop(qkey, None)
        for addr in answers:
            self.names[addr] = qname
            self.names.move_to_end(addr)
        while len(self.names) > 8192:
            self.names.popitem(last=False)
        self._dns_event(now, qname, key, answers, RCODES.get(rcode, f"RCODE{rcode}"))

    def _dns_event(self, now: float, qname: str, key: Key, answers: list[str],
                   result: str) -> None:
        self.log.write({
            "ts": round(now, 6), "event": "dns", "source": "netns", "pid": None, "ppid": None,
            "exe": None, "fd": None, "family": "ipv4", "proto": "udp", "addr": key[3],
            "port": key[4], "host": qname, "answers": answers, "local_addr": key[1],
            "local_port": key[2], "sent": 0, "recv": 0, "duration": None, "result": result,
        })

    # -- conntrack -------------------------------------------------------------------------
    def _key_of(self, entry: CtEntry) -> tuple[Key, bool] | None:
        if entry.src == self.ns_addr:
            return (entry.proto, entry.src, entry.sport, entry.dst, entry.dport), True
        if entry.dst == self.ns_addr:
            return (entry.proto, entry.dst, entry.dport, entry.src, entry.sport), False
        return None

    def conntrack(self, entry: CtEntry, now: float) -> None:
        found = self._key_of(entry)
        if found is None:
            return
        key, local = found
        flow = self.flows.get(key)
        if entry.kind == "new":
            if flow is None and key not in self.recently_closed:
                flow = self._open(key, local, now)
            if flow is not None:
                flow.ct_id = entry.ct_id
        elif entry.kind == "update":
            if flow is not None and entry.tcp_state in TCP_ESTABLISHED_STATES:
                flow.established = True
        elif entry.kind == "destroy" and flow is not None and (
                flow.ct_id is None or flow.ct_id == entry.ct_id):
            self._close_from_counters(flow, now, entry)

    def _payload(self, flow: Flow, entry: CtEntry) -> tuple[int, int]:
        """(sent, recv) payload bytes from conntrack's IP byte counters: exact for UDP, an
        estimate for TCP: 20 bytes of IP header and 32 of TCP header with timestamps (20
        without) per packet, and the SYN's options (8 or 12 bytes more) once per direction."""
        if flow.key[0] == IPPROTO_UDP:
            overhead, syn = 28, 0
        else:
            overhead, syn = (52, 8) if flow.timestamps else (40, 12)

        def one(packets: int, nbytes: int) -> int:
            return max(0, nbytes - packets * overhead - (syn if packets else 0))

        orig, reply = one(*entry.orig), one(*entry.reply)
        return (orig, reply) if flow.initiator_local else (reply, orig)

    def _close_from_counters(self, flow: Flow, now: float, entry: CtEntry | None) -> None:
        sent, recv = self._payload(flow, entry) if entry else flow.reported
        if flow.key[0] == IPPROTO_TCP and not flow.established:
            sent, recv = 0, 0  # no payload moves before the handshake
        sent, recv = flow.done.get("l", sent), flow.done.get("r", recv)
        if flow.key[0] == IPPROTO_UDP or flow.established:
            result = "ok"
        else:
            answered = entry is not None and (entry.reply if flow.initiator_local
                                              else entry.orig)[0] > 0
            result = "ECONNREFUSED" if answered else "ETIMEDOUT"
        self._close(flow, now, sent, recv, result)

    # -- periodic --------------------------------------------------------------------------
    def tick(self, now: float, final: bool = False) -> None:
        """Totals for flows open longer than the interval (all open flows when final), and
        DNS queries that never got an answer."""
        for qkey, (qname, asked, server) in list(self.queries.items()):
            if final or now - asked > 5.0:
                del self.queries[qkey]
                self._dns_event(now, qname, (IPPROTO_UDP, self.ns_addr, qkey[1], server, 53),
                                [], "ETIMEDOUT")
        if self.ct is None:
            return
        for flow in list(self.flows.values()):
            if not final and (now - max(flow.start, flow.last_totals) < self.totals_interval):
                continue
            proto, laddr, lport, raddr, rport = flow.key
            entry = (self.ct.get(proto, laddr, raddr, lport, rport) if flow.initiator_local
                     else self.ct.get(proto, raddr, laddr, rport, lport))
            flow.last_totals = now
            if entry is None:
                continue
            sent, recv = self._payload(flow, entry)
            sent, recv = max(sent, flow.reported[0]), max(recv, flow.reported[1])
            if (sent, recv) != flow.reported or final:
                flow.reported = (sent, recv)
                self._event("totals", flow, now, sent, recv)

    def gap(self, now: float, reason: str) -> None:
        self.log.write({"ts": round(now, 6), "event": "gap", "source": "netns", "pid": None,
                        "reason": reason})


def _has_timestamps(options: bytes) -> bool:
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            return False
        if kind == 1:
            i += 1
            continue
        if kind == 8:
            return True
        if i + 1 >= len(options) or options[i + 1] < 2:
            return False
        i += options[i + 1]
    return False


def _dropped(sock: socket.socket) -> int:
    with contextlib.suppress(OSError):
        _packets, drops = struct.unpack("=II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        return drops
    return 0


# ---------------------------------------------------------------------------------------------
# Main loop


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def run(args: argparse.Namespace) -> int:
    if not proctree.die_with_parent(signal.SIGTERM):
        return 0
    owner_start = _start_time(args.owner_pid)
    if owner_start is None:
        return 0
    stop = False

    def on_signal(_signo: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    log = EventLog(args.log_fd)
    ct = Conntrack()
    packets = packet_socket(args.veth)
    forwarded = {(args.host_addr, int(port)): ip
                 for ip, port in (f.rsplit(":", 1) for f in args.forward)}
    tracker = Tracker(args.ns_addr, log, ct, args.totals_interval, forwarded)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)

    buf = bytearray(SNAPLEN)
    lost_reported = 0
    drops_reported = 0
    next_check = time.monotonic() + 1.0
    while not stop:
        select.select([ct.events, packets, wake_r], [], [], 1.0)
        with contextlib.suppress(BlockingIOError):
            os.read(wake_r, 64)
        _pass(tracker, ct, packets, buf)
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + 1.0
            now = time.time()
            tracker.tick(now)
            if ct.lost != lost_reported:
                tracker.gap(now, f"conntrack events lost ({ct.lost - lost_reported} "
                            "overruns): some flows may be missing")
                lost_reported = ct.lost
            drops = _dropped(packets)
            if drops:
                drops_reported += drops
                tracker.gap(now, f"packet capture dropped {drops} control packets "
                            f"({drops_reported} so far)")
            if _start_time(args.owner_pid) != owner_start:
                break
    # A last look at what is queued, then totals of every flow still open.
    _pass(tracker, ct, packets, buf)
    tracker.tick(time.time(), final=True)
    return 0


def _pass(tracker: Tracker, ct: Conntrack, packets: socket.socket, buf: bytearray) -> None:
    ct_batch = ct.drain()
    frames = drain_packets(packets, buf)
    now = time.time()
    # Packets come from the agent: a malformed one must cost its own event, never the capture.
    for frame in frames:
        try:
            tracker.packet(frame, now)
        except (ValueError, IndexError, struct.error, UnicodeError) as exc:
            tracker.gap(now, f"unparsable packet skipped ({type(exc).__name__})")
    for entry in ct_batch:
        tracker.conntrack(entry, now)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aegis_mcp.netns.capture",
                                     description="netns capture helper (started by aegis-mcp)")
    parser.add_argument("--name", required=True, help="namespace name, under /run/netns")
    parser.add_argument("--veth", required=True, help="host end of the veth pair")
    parser.add_argument("--ns-addr", required=True, help="the namespace's address")
    parser.add_argument("--host-addr", required=True, help="the host end's address")
    parser.add_argument("--log-fd", type=int, required=True,
                        help="open descriptor of the netmon JSONL log to append to")
    parser.add_argument("--owner-pid", type=int, required=True, help="exit when it dies")
    parser.add_argument("--forward", action="append", default=[], metavar="IP:PORT",
                        help="a host loopback ip:port forwarded to the host end's port: its "
                             "connections are named by that address (repeatable)")
    parser.add_argument("--totals-interval", type=float,
                        default=float(os.environ.get("AEGIS_NETNS_TOTALS_INTERVAL", "10")),
                        help="seconds between totals events of a long flow (default 10)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except OSError as exc:
        print(f"aegis-mcp capture: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
