"""The capture's packets: one AF_PACKET socket on the veth's host end with a classic BPF
filter, so that only TCP SYN/FIN/RST, DNS and ICMP destination-unreachable reach Python; one
on the namespace's own loopback that passes only the resets it sends (a refused connect to
127.0.0.1 or ::1 there never reaches the veth); and the DNS answers parsed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct

from aegis_mcp.netns.capture_netlink import SO_RCVBUFFORCE

ETH_P_IP, ETH_P_IPV6, ETH_P_ALL = 0x0800, 0x86DD, 0x0003
SOL_PACKET, PACKET_STATISTICS = 263, 6
SO_ATTACH_FILTER = 26
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
ICMP_UNREACH = 3
CLONE_NEWNET = 0x40000000
_PKTTYPE = 0xFFFFF004  # SKF_AD_OFF + SKF_AD_PKTTYPE: the packet's direction
_OUTGOING = 4  # PACKET_OUTGOING
SNAPLEN = 4096
RCODES = {0: "ok", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}

# Classic BPF over an Ethernet frame: accept unfragmented IPv4 TCP with SYN, FIN or RST set,
# UDP from or to port 53, and ICMP destination unreachable (a connect that failed on the way);
# drop everything else in the kernel.
BPF_PROGRAM = [
    (0x28, 0, 0, 12),        # 0  ldh [12]            ethertype
    (0x15, 0, 18, ETH_P_IP),  # 1  jeq #0x800, else -> 20
    (0x28, 0, 0, 20),        # 2  ldh [20]            flags + fragment offset
    (0x45, 16, 0, 0x1FFF),   # 3  jset #0x1fff -> 20  a later fragment: drop
    (0x30, 0, 0, 23),        # 4  ldb [23]            IP protocol
    (0x15, 7, 0, 6),         # 5  jeq #6 -> 13        TCP
    (0x15, 1, 0, 17),        # 6  jeq #17 -> 8        UDP
    (0x15, 8, 12, 1),        # 7  jeq #1 -> 16, else -> 20   ICMP
    (0xB1, 0, 0, 14),        # 8  ldxb 4*([14]&0xf)   IP header length
    (0x48, 0, 0, 14),        # 9  ldh [x+14]          source port
    (0x15, 8, 0, 53),        # 10 jeq #53 -> 19
    (0x48, 0, 0, 16),        # 11 ldh [x+16]          destination port
    (0x15, 6, 7, 53),        # 12 jeq #53 -> 19, else -> 20
    (0xB1, 0, 0, 14),        # 13 ldxb 4*([14]&0xf)
    (0x50, 0, 0, 27),        # 14 ldb [x+27]          TCP flags
    (0x45, 3, 4, FIN | SYN | RST),  # 15 jset -> 19, else -> 20
    (0xB1, 0, 0, 14),        # 16 ldxb 4*([14]&0xf)
    (0x50, 0, 0, 14),        # 17 ldb [x+14]          ICMP type
    (0x15, 0, 1, ICMP_UNREACH),  # 18 jeq #3 -> 19, else -> 20
    (0x06, 0, 0, SNAPLEN),   # 19 accept
    (0x06, 0, 0, 0),         # 20 drop
]

# The same over the namespace's loopback: only the TCP resets it sends (each packet shows there
# twice, going out and coming in: the outgoing copy alone), IPv4 and IPv6.
LOOPBACK_PROGRAM = [
    (0x20, 0, 0, _PKTTYPE),  # 0  ld pkttype
    (0x15, 0, 15, _OUTGOING),  # 1  jeq #4, else -> 17
    (0x28, 0, 0, 12),        # 2  ldh [12]            ethertype
    (0x15, 0, 7, ETH_P_IP),  # 3  jeq #0x800, else -> 11
    (0x28, 0, 0, 20),        # 4  ldh [20]
    (0x45, 11, 0, 0x1FFF),   # 5  jset #0x1fff -> 17
    (0x30, 0, 0, 23),        # 6  ldb [23]            IP protocol
    (0x15, 0, 9, 6),         # 7  jeq #6, else -> 17  TCP
    (0xB1, 0, 0, 14),        # 8  ldxb 4*([14]&0xf)
    (0x50, 0, 0, 27),        # 9  ldb [x+27]          TCP flags
    (0x45, 5, 6, RST),       # 10 jset -> 16, else -> 17
    (0x15, 0, 5, ETH_P_IPV6),  # 11 jeq #0x86dd, else -> 17
    (0x30, 0, 0, 20),        # 12 ldb [20]            next header
    (0x15, 0, 3, 6),         # 13 jeq #6, else -> 17  TCP (no extension headers)
    (0x30, 0, 0, 67),        # 14 ldb [67]            TCP flags
    (0x45, 0, 1, RST),       # 15 jset -> 16, else -> 17
    (0x06, 0, 0, SNAPLEN),   # 16 accept
    (0x06, 0, 0, 0),         # 17 drop
]


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    prog = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def packet_socket(ifname: str, program: list[tuple[int, int, int, int]] = BPF_PROGRAM
                  ) -> socket.socket:
    """An AF_PACKET socket seeing both directions on `ifname` in the order they happened,
    filtered in the kernel. The filter is attached before bind so no unfiltered packet is
    ever queued."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    _attach_filter(sock, program)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    sock.bind((ifname, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def loopback_socket(netns: str) -> socket.socket:
    """A packet socket on the loopback of the network namespace at path `netns`, passing only
    the resets sent there (LOOPBACK_PROGRAM). Made inside the namespace, for which this
    (single-threaded) process steps in and back out: the socket stays in it."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns {netns}: {os.strerror(err)}")
        finally:
            os.close(target)
        try:
            return packet_socket("lo", LOOPBACK_PROGRAM)
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:  # never go on in the agent's namespace
                os._exit(1)
    finally:
        os.close(own)


def listening_ports() -> set[int]:
    """The TCP ports this host (the caller's network namespace) listens on at 127.0.0.1 or
    on every address: those a forward to the host's 127.0.0.1 would reach."""
    ports: set[int] = set()
    for path, wanted in (("/proc/net/tcp", ("0100007F", "00000000")),
                         ("/proc/net/tcp6", ("0" * 32, "0000000000000000FFFF00000100007F"))):
        with contextlib.suppress(OSError), open(path) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":
                    addr, _, port = fields[1].partition(":")
                    if addr in wanted:
                        ports.add(int(port, 16))
    return ports


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


def read_name(data: bytes, off: int, strict: bool = False) -> tuple[str, int]:
    """The DNS name at `off` of a message (compression followed, bounded: a pointer loop cannot
    hang us) and the offset after it. `strict`: a label over 63 bytes or not ASCII is an
    error (where names decide what opens: the resolver), else shown replaced."""
    labels: list[str] = []
    end = -1
    for _ in range(128):
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
        if strict and length > 63:
            raise ValueError("bad label")
        labels.append(data[off + 1: off + 1 + length].decode(
            "ascii", "strict" if strict else "replace"))
        off += 1 + length
    raise ValueError("name too long")


def parse_dns(data: bytes) -> tuple[int, bool, int, str, list[str]] | None:
    """(id, is_response, rcode, first question name, A/AAAA answers) of a DNS message."""
    if len(data) < 12:
        return None
    ident, flags, qd, an = struct.unpack_from("!HHHH", data, 0)

    qname = ""
    answers: list[str] = []
    try:
        off = 12
        for i in range(min(qd, 8)):
            name, off = read_name(data, off)
            off += 4
            if i == 0:
                qname = name
        for _ in range(min(an, 64)):
            _, off = read_name(data, off)
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


def packets_dropped(sock: socket.socket) -> int:
    with contextlib.suppress(OSError):
        _packets, drops = struct.unpack("=II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        return drops
    return 0
