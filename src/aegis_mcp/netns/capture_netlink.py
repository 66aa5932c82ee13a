"""The capture's view of conntrack: ctnetlink messages parsed into `CtEntry`s, and `Conntrack`,
the event socket (NEW, UPDATE, DESTROY) plus the GET socket for a long flow's counters.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from dataclasses import dataclass

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
IPPROTO_TCP, IPPROTO_UDP = 6, 17


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
