"""The capture's packets: one AF_PACKET socket on the veth's host end with a classic BPF
filter, so that only TCP SYN/FIN/RST and DNS reach Python, and the DNS answers parsed.
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import struct

from aegis_mcp.netns.capture_netlink import SO_RCVBUFFORCE

ETH_P_IP, ETH_P_ALL = 0x0800, 0x0003
SOL_PACKET, PACKET_STATISTICS = 263, 6
SO_ATTACH_FILTER = 26
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
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


def packets_dropped(sock: socket.socket) -> int:
    with contextlib.suppress(OSError):
        _packets, drops = struct.unpack("=II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        return drops
    return 0
