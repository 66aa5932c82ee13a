"""The capture's parsers and flow logic on synthetic input (no root needed): sequence-number
wrap-around, netlink attributes, and agent-controlled bytes that must never crash it."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_mcp.netmon.log import open_log
from aegis_mcp.netns import capture_netlink, capture_packets
from aegis_mcp.netns.capture_flows import EventLog, Tracker
from aegis_mcp.netns.capture_netlink import NLA_F_NESTED, _nla
from aegis_mcp.netns.capture_packets import ACK, FIN, RST, SYN

NS, PEER = "10.200.0.2", "198.51.100.7"


def frame(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
          payload: int = 0, options: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      ((20 + len(options)) // 4) << 4, flags, 65535, 0, 0) + options
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + payload, 0, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    data = b"\0" * 12 + b"\x08\x00" + ip + tcp  # payload bytes are not captured (snaplen)
    return (len(data) + payload).to_bytes(4, "big") + data


def tracker(tmp_path: Path) -> tuple[Tracker, Path]:
    log = tmp_path / "log.jsonl"
    return Tracker(NS, EventLog(open_log(str(log))[0]), None, 10.0), log


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_tcp_totals_across_sequence_wraparound(tmp_path: Path) -> None:
    t, log = tracker(tmp_path)
    isn_l, isn_r = 0xFFFFFF00, 0xFFFFFFF0  # both sides wrap past 2**32
    ts = bytes([1, 1, 8, 10]) + b"\0" * 8
    t.packet(frame(NS, PEER, 40000, 443, isn_l, 0, SYN, options=ts), 1.0)
    t.packet(frame(PEER, NS, 443, 40000, isn_r, isn_l + 1, SYN | ACK, options=ts), 1.1)
    t.packet(frame(NS, PEER, 40000, 443, isn_l + 1 + 70_000, isn_r + 1, FIN | ACK, 1000), 2.0)
    t.packet(frame(PEER, NS, 443, 40000, isn_r + 1 + 5_000_000, isn_l + 71_002, FIN | ACK), 2.5)
    connect, close = events(log)
    assert connect["event"] == "connect" and connect["result"] == "EINPROGRESS"
    assert (close["event"], close["sent"], close["recv"]) == ("close", 71_000, 5_000_000)
    assert close["result"] == "ok" and close["duration"] == 1.5
    assert t.flows == {} and t.flows.get((6, NS, 40000, PEER, 443)) is None


def test_reset_after_data_and_accepted_connection(tmp_path: Path) -> None:
    t, log = tracker(tmp_path)
    # The peer connects to a server in the namespace, sends 10 bytes, the agent resets.
    t.packet(frame(PEER, NS, 5555, 8080, 100, 0, SYN), 1.0)
    t.packet(frame(NS, PEER, 8080, 5555, 900, 101, SYN | ACK), 1.0)
    t.packet(frame(NS, PEER, 8080, 5555, 901 + 3, 111, RST | ACK), 1.2)
    accept, close = events(log)
    assert accept["event"] == "accept" and accept["local_port"] == 8080
    assert (close["sent"], close["recv"], close["result"]) == (3, 10, "ok")


def test_dns_answer_names_later_connections(tmp_path: Path) -> None:
    from tests.support.netns_helpers import DnsResponder

    responder = DnsResponder.__new__(DnsResponder)
    responder.records, responder.questions = {"example.test": PEER}, []
    query = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x07example\x04test\x00" + \
        struct.pack("!HH", 1, 1)
    answer = responder._answer(query)
    assert answer is not None
    assert capture_packets.parse_dns(answer) == (7, True, 0, "example.test", [PEER])
    t, log = tracker(tmp_path)

    def udp(src: str, dst: str, sport: int, dport: int, body: bytes) -> bytes:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(body), 0, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
        data = b"\0" * 12 + b"\x08\x00" + ip + struct.pack("!HHHH", sport, dport,
                                                           8 + len(body), 0) + body
        return len(data).to_bytes(4, "big") + data

    t.packet(udp(NS, "10.200.0.1", 33333, 53, query), 1.0)
    t.packet(udp("10.200.0.1", NS, 53, 33333, answer), 1.01)
    t.packet(frame(NS, PEER, 40001, 443, 1, 0, SYN), 1.02)
    dns, connect = events(log)
    assert dns["event"] == "dns" and dns["host"] == "example.test" and dns["answers"] == [PEER]
    assert connect["host"] == "example.test"


def test_conntrack_message_round_trip() -> None:
    tup = _nla(capture_netlink.CTA_TUPLE_IP | NLA_F_NESTED,
               _nla(capture_netlink.CTA_IP_V4_SRC, socket.inet_aton(NS))
               + _nla(capture_netlink.CTA_IP_V4_DST, socket.inet_aton(PEER)))
    tup += _nla(capture_netlink.CTA_TUPLE_PROTO | NLA_F_NESTED,
                _nla(capture_netlink.CTA_PROTO_NUM, b"\x11")
                + _nla(capture_netlink.CTA_PROTO_SRC_PORT, (5000).to_bytes(2, "big"))
                + _nla(capture_netlink.CTA_PROTO_DST_PORT, (53).to_bytes(2, "big")))
    counters = _nla(capture_netlink.CTA_COUNTERS_PACKETS, (3).to_bytes(8, "big")) + _nla(
        capture_netlink.CTA_COUNTERS_BYTES, (3 * 128).to_bytes(8, "big"))
    body = (struct.pack("=BBH", socket.AF_INET, 0, 0)
            + _nla(capture_netlink.CTA_TUPLE_ORIG | NLA_F_NESTED, tup)
            + _nla(capture_netlink.CTA_COUNTERS_ORIG | NLA_F_NESTED, counters)
            + _nla(capture_netlink.CTA_ID, (77).to_bytes(4, "big")))
    entry = capture_netlink.parse_ct(memoryview(body), "destroy")
    assert entry is not None
    assert (entry.proto, entry.src, entry.dst, entry.sport, entry.dport) == (17, NS, PEER,
                                                                              5000, 53)
    assert entry.ct_id == 77 and entry.orig == (3, 384) and entry.reply == (0, 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_dns_parser_never_raises(data: bytes) -> None:
    capture_packets.parse_dns(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.booleans(), st.sampled_from([6, 17]))
def test_crafted_packets_never_crash_the_tracker(tmp_path_factory: object, body: bytes,
                                                 outbound: bool, proto: int) -> None:
    log = Path(str(tmp_path_factory.mktemp("fuzz"))) / "log.jsonl"  # type: ignore[attr-defined]
    t = Tracker(NS, EventLog(open_log(str(log))[0]), None, 10.0)
    src, dst = (NS, PEER) if outbound else (PEER, NS)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    data = b"\0" * 12 + b"\x08\x00" + ip + body
    t.packet(len(data).to_bytes(4, "big") + data, 1.0)
    t.packet(len(data).to_bytes(4, "big") + data[: len(data) // 2], 1.0)


def test_a_reset_on_the_loopback_is_a_refused_connect_only_when_it_answers_a_syn(
        tmp_path: Path) -> None:
    """On the namespace's loopback, a refused connect leaves one reset: RST+ACK with sequence
    number 0 (RFC 793). The reset of an established connection is not a refusal."""
    t, log = tracker(tmp_path)
    t.loopback_packet(frame("127.0.0.1", "127.0.0.1", 8080, 40000, 0, 1001, RST | ACK), 1.0)
    t.loopback_packet(frame("127.0.0.1", "127.0.0.1", 9090, 40001, 5555, 77, RST | ACK), 1.1)
    t.loopback_packet(frame("127.0.0.1", "127.0.0.1", 9090, 40001, 0, 0, RST), 1.2)
    (refused,) = events(log)
    assert (refused["event"], refused["result"], refused["addr"], refused["port"]) == (
        "connect", "ECONNREFUSED", "127.0.0.1", 8080)
    assert refused["local_port"] == 40000 and refused["source"] == "netns"


def test_icmp_unreachable_ends_a_pending_connect(tmp_path: Path) -> None:
    t, log = tracker(tmp_path)
    syn = frame(NS, PEER, 40000, 443, 1000, 0, SYN)
    t.packet(syn, 1.0)
    inner = syn[4 + 14: 4 + 14 + 28]  # the SYN's IP header and first 8 bytes, as ICMP quotes it
    icmp = bytes([3, 1, 0, 0, 0, 0, 0, 0]) + inner  # destination unreachable: host
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                     socket.inet_aton("192.0.2.1"), socket.inet_aton(NS))
    data = b"\0" * 12 + b"\x08\x00" + ip + icmp
    t.packet(len(data).to_bytes(4, "big") + data, 1.5)
    connect, close = events(log)
    assert (close["event"], close["result"], close["port"]) == ("close", "EHOSTUNREACH", 443)
    assert t.flows == {}
