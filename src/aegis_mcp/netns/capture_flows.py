"""The capture's flows: `Tracker` joins conntrack entries and control packets into netmon
events (connect, totals, close, dns, gap), written by `EventLog`.

A connect that fails is an event, as in preload mode: refused by a peer or by the namespace's
guard (a reset on the veth), unreachable (an ICMP error on the veth), refused on the
namespace's own loopback (its reset seen there: 127.0.0.1 inside is not the host's). When the
refused port is one this host listens on, the event carries a `hint` naming
`--netns-forward PORT`, said once per port on the supervisor's terminal too.

Names: a DNS answer seen on the veth names that address for every connection of the
namespace. The packets carry no process, so the namespace (the agent and its children) is
the one that resolved it, as a process is in preload mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aegis_mcp.netns.capture_netlink import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP_ESTABLISHED_STATES,
    Conntrack,
    CtEntry,
)
from aegis_mcp.netns.capture_packets import (
    ACK,
    ETH_P_IP,
    ETH_P_IPV6,
    FIN,
    ICMP_UNREACH,
    RCODES,
    RST,
    SYN,
    listening_ports,
    parse_dns,
)

IPPROTO_ICMP = 1
# ICMP destination-unreachable codes as the kernel reports them to a connect (icmp_err_convert)
_UNREACH = {0: "ENETUNREACH", 1: "EHOSTUNREACH", 2: "ENOPROTOOPT", 3: "ECONNREFUSED",
            4: "EMSGSIZE", 5: "EOPNOTSUPP", 6: "ENETUNREACH", 7: "EHOSTDOWN",
            9: "ENETUNREACH", 10: "ENETUNREACH", 11: "ENETUNREACH", 12: "ENETUNREACH",
            13: "EHOSTUNREACH", 14: "EHOSTUNREACH", 15: "EHOSTUNREACH"}
LISTEN_RECHECK = 2.0
"""Seconds a look at the host's listening ports is good for (refusals can come in bursts)."""


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
                 forwarded: dict[tuple[str, int], str] | None = None,
                 host_addr: str | None = None, say: Callable[[str], None] | None = None,
                 host_access: bool = False) -> None:
        self.ns_addr = ns_addr
        self.forwarded = forwarded or {}
        """(host end address, port) -> the host loopback address it is forwarded to: the
        name the agent used for it."""
        self.host_addr = host_addr
        self.host_access = host_access
        """The agent may reach the host's services: a refusal there is the host's own, or
        the network policy's, and a forward would change nothing."""
        self.say = say
        """Tells the user (the supervisor's terminal) a hint, once per port."""
        self.hinted: set[int] = set()
        self._listening: tuple[float, set[int]] = (float("-inf"), set())
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

    def _close(self, flow: Flow, now: float, sent: int, recv: int, result: str | None,
               **extra: Any) -> None:
        self.flows.pop(flow.key, None)
        self.recently_closed[flow.key] = now
        while len(self.recently_closed) > 4096:
            self.recently_closed.popitem(last=False)
        self._event("close", flow, now, sent, recv, result, **extra)

    # -- hints -----------------------------------------------------------------------------
    def hint(self, addr: str, port: int, now: float) -> dict[str, str]:
        """`{"hint": ...}` for a refused connect to `addr`:`port` that a forward would let
        through (this host listens on that port and it is not forwarded yet), else {}."""
        if (self.host_addr, port) in self.forwarded or (
                self.host_access and addr == self.host_addr):
            return {}
        checked, ports = self._listening
        if port not in self.hinted and now - checked > LISTEN_RECHECK:
            ports = listening_ports()
            self._listening = (now, ports)
        if port not in self.hinted and port not in ports:
            return {}
        what = ("this host's end of its link, closed but for forwarded ports"
                if addr == self.host_addr else "its loopback is its own, not this host's")
        text = (f"{_hostport(addr, port)} refused in the agent's network namespace ({what}); "
                f"this host listens on port {port}: --netns-forward {port} lets the agent "
                "reach it")
        if port not in self.hinted:
            self.hinted.add(port)
            if self.say is not None:
                self.say(text)
        return {"hint": text}

    def loopback_packet(self, frame: bytes, now: float) -> None:
        """A reset sent on the namespace's loopback: a refused connect when it answers a SYN
        (RST+ACK with sequence number 0, RFC 793), written as a failed connect event."""
        data = frame[4:]
        if len(data) < 34:
            return
        ethertype = int.from_bytes(data[12:14], "big")
        if ethertype == ETH_P_IP:
            ihl = (data[14] & 0x0F) * 4
            family, src, dst, l4 = ("ipv4", socket.inet_ntoa(data[26:30]),
                                    socket.inet_ntoa(data[30:34]), 14 + ihl)
        elif ethertype == ETH_P_IPV6 and len(data) >= 54:
            family, src, dst, l4 = ("ipv6", socket.inet_ntop(socket.AF_INET6, data[22:38]),
                                    socket.inet_ntop(socket.AF_INET6, data[38:54]), 54)
        else:
            return
        if len(data) < l4 + 14:
            return
        sport, dport, seq = struct.unpack_from("!HHI", data, l4)
        flags = data[l4 + 13]
        if not (flags & RST and flags & ACK) or seq != 0:
            return  # the reset of a connection, not the refusal of a connect
        # It answers the SYN that dst:dport sent to src:sport.
        self.log.write({
            "ts": round(now, 6), "event": "connect", "source": "netns", "pid": None,
            "ppid": None, "exe": None, "fd": None, "family": family, "proto": "tcp",
            "addr": src, "port": sport, "host": None, "local_addr": dst, "local_port": dport,
            "sent": 0, "recv": 0, "duration": None, "result": "ECONNREFUSED",
            **self.hint(src, sport, now),
        })

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
        if proto == IPPROTO_ICMP:
            self._icmp(data, l4, now)
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
            hint = (self.hint(flow.key[3], flow.key[4], now)
                    if refused and flow.key[3] == self.host_addr else {})
            self._close(flow, now, flow.done.get("l", 0), flow.done.get("r", 0),
                        "ECONNREFUSED" if refused else ("ok" if flow.established else
                                                        "ECONNRESET"), **hint)
            return
        if side not in flow.isn:
            return
        if flags & FIN and side not in flow.done:
            flow.done[side] = (seq + payload - flow.isn[side] - 1) & 0xFFFFFFFF
        if "l" in flow.done and "r" in flow.done:
            self._close(flow, now, flow.done["l"], flow.done["r"], "ok")

    def _icmp(self, data: bytes, l4: int, now: float) -> None:
        """Destination unreachable for a packet of the namespace's: the connect (or the UDP
        flow) it belonged to failed, with the error the agent's connect got."""
        if len(data) < l4 + 8 + 20 or data[l4] != ICMP_UNREACH:
            return
        inner = l4 + 8
        ihl = (data[inner] & 0x0F) * 4
        proto = data[inner + 9]
        src, dst = socket.inet_ntoa(data[inner + 12:inner + 16]), \
            socket.inet_ntoa(data[inner + 16:inner + 20])
        if src != self.ns_addr or len(data) < inner + ihl + 4:
            return
        sport, dport = struct.unpack_from("!HH", data, inner + ihl)
        flow = self.flows.get((proto, src, sport, dst, dport))
        if flow is None or flow.established or proto != IPPROTO_TCP:
            return  # (a UDP flow has no connect to fail: its replies may have come already)
        result = _UNREACH.get(data[l4 + 1], "EHOSTUNREACH")
        hint = (self.hint(dst, dport, now) if result == "ECONNREFUSED"
                and dst == self.host_addr else {})
        self._close(flow, now, 0, 0, result, **hint)

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

    def dns_answer(self, payload: bytes, local_port: int, now: float) -> None:
        """An answer the namespace's resolver sent over TCP, which the veth's packet filter
        does not pass: it names addresses as one over UDP does."""
        self._dns(payload, (IPPROTO_TCP, self.ns_addr, local_port, self.host_addr or "", 53),
                  False, now)

    def _dns_event(self, now: float, qname: str, key: Key, answers: list[str],
                   result: str) -> None:
        self.log.write({
            "ts": round(now, 6), "event": "dns", "source": "netns", "pid": None, "ppid": None,
            "exe": None, "fd": None, "family": "ipv4",
            "proto": "tcp" if key[0] == IPPROTO_TCP else "udp", "addr": key[3],
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


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
