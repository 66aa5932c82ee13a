"""The capture's denials: the namespace's nft policy logs each refused packet to an nflog
group (`nft_policy`), read here on a netlink socket and written as one `deny` event per denied
connection attempt, in the shape the preload hooks write (docs/netmon.md), naming the rule
from the prefix the kernel logged with it.

The policy comes from the supervisor (root) on the capture's stdin, never from the compiled
file beside the log, which the agent's user can rewrite.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aegis_mcp.netmon.policy import Policy
from aegis_mcp.netns.capture_netlink import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    NETLINK_NETFILTER,
    NLM_F_REQUEST,
    SO_RCVBUFFORCE,
    _attrs,
)
from aegis_mcp.netns.nft_policy import DENY_PREFIX

# linux/netfilter/nfnetlink_log.h
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0x400, 0x401  # NFNL_SUBSYS_ULOG << 8 | msg
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_QTHRESH = 1, 2, 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
NLM_F_ACK = 0x4
COPY_RANGE = 64
"""Bytes of each logged packet: its IPv4 header and the ports are all a denial needs."""
REPEAT_WINDOW = 10.0
"""Seconds in which the same (protocol, source port, address, port) is one attempt: a UDP
program that sends on after its first datagram was refused, a SYN sent again."""
_PROTOS = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", 1: "icmp"}


def nflog_socket(group: int) -> socket.socket:
    """A netlink socket bound to nflog `group`, copying the first bytes of each packet.
    OSError (EBUSY) when another reader holds the group."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20)
    sock.bind((0, 0))
    for attr in (struct.pack("=HHB3x", 5, NFULA_CFG_CMD, NFULNL_CFG_CMD_BIND),
                 struct.pack("=HH", 10, NFULA_CFG_MODE)
                 + struct.pack("!IB", COPY_RANGE, NFULNL_COPY_PACKET) + b"\0\0\0",
                 # each packet at once: the kernel's default batches them for a second
                 struct.pack("=HH", 8, NFULA_CFG_QTHRESH) + struct.pack("!I", 1)):
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + attr
        header = struct.pack("=IHHII", 16 + len(body), NFULNL_MSG_CONFIG,
                             NLM_F_REQUEST | NLM_F_ACK, 0, 0)
        sock.send(header + body)
        reply = sock.recv(4096)
        if len(reply) >= 20 and struct.unpack_from("=H", reply, 4)[0] == 2:
            err = -struct.unpack_from("=i", reply, 16)[0]
            if err:
                sock.close()
                raise OSError(err, f"nflog group {group}: {os.strerror(err)}")
    sock.setblocking(False)
    return sock


def logged_packets(sock: socket.socket, limit: int = 256) -> list[tuple[str, bytes]]:
    """(prefix, the packet's first bytes) of each packet the kernel logged, as queued."""
    out: list[tuple[str, bytes]] = []
    for _ in range(limit):
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            break
        off = 0
        while off + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            if kind == NFULNL_MSG_PACKET:
                attrs = _attrs(data, off + 20, off + length)
                prefix = attrs.get(NFULA_PREFIX, b"").rstrip(b"\0").decode("ascii", "replace")
                out.append((prefix, attrs.get(NFULA_PAYLOAD, b"")))
            off += (length + 3) & ~3
    return out


class Denials:
    """Turns logged packets into `deny` events: one per attempt, the rule by its index."""

    def __init__(self, policy: Policy, ns_addr: str, write: Callable[[dict[str, Any]], None],
                 name_of: Callable[[str, int | None], str | None]) -> None:
        self.policy = policy
        self.ns_addr = ns_addr
        self.write = write
        self.name_of = name_of
        """The name the namespace asked for to reach an address (for host rule `index`)."""
        self.recent: OrderedDict[tuple[int, int, str, int], float] = OrderedDict()

    def packet(self, prefix: str, packet: bytes, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if len(packet) < 20 or packet[0] >> 4 != 4 or not prefix.startswith(DENY_PREFIX):
            return
        ihl = (packet[0] & 0x0F) * 4
        proto = packet[9]
        src, dst = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
        if src != self.ns_addr:
            return
        sport = dport = 0
        if proto in (IPPROTO_TCP, IPPROTO_UDP) and len(packet) >= ihl + 4:
            sport, dport = struct.unpack_from("!HH", packet, ihl)
        key = (proto, sport, dst, dport)
        seen = self.recent.get(key)
        if seen is not None and now - seen < REPEAT_WINDOW:
            return
        self.recent[key] = now
        self.recent.move_to_end(key)
        while len(self.recent) > 4096:
            self.recent.popitem(last=False)
        which = prefix[len(DENY_PREFIX):]
        rule = None
        if which.isdigit() and int(which) < len(self.policy.rules):
            rule = self.policy.rules[int(which)]
        host = self.name_of(dst, int(which) if rule is not None else None)
        self.write({
            "ts": round(now, 6), "event": "deny", "source": "netns", "pid": None,
            "ppid": None, "exe": None, "family": "ipv4",
            "proto": _PROTOS.get(proto, f"ip{proto}"), "addr": dst, "port": dport,
            "host": host, "local_addr": src, "local_port": sport,
            "rule": rule.text if rule is not None else "default deny",
            "label": rule.label if rule is not None else None,
            "default": rule is None, "mode": "netns",
        })
