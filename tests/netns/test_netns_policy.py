"""The network policy in the kernel, namespace by namespace: clients inside a real aegis
namespace (Python, and a static binary) against servers in a namespace of the test's own that
stands in for the internet; the nft rules allow, deny (fast: a reset or an ICMP error, never
a timeout) and fall back on the default; each denial is one `deny` event in the log."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import struct
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aegis_mcp.netmon import policy as netpolicy
from aegis_mcp.netns import namespace as netns
from aegis_mcp.netns.state import State
from tests.netns.test_netns import PY, STATIC_CLIENT, log_of, run_inside
from tests.support.host import NEEDS_ROOT
from tests.support.netns_helpers import (
    DnsResponder,
    Outside,
    TcpServer,
    UdpEcho,
    host_snapshot,
    read_events,
    wait_event,
)

pytestmark = [
    NEEDS_ROOT,
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (scripts/test installs "
                       "nftables)"),
]

# Each attempt says what it got: a refusal must come at once, so the generous timeout only
# ever shows as "timeout", a failure.
TCP_TRY = textwrap.dedent("""\
    import socket, sys
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
        s.sendall(b"0123456789")
        s.shutdown(socket.SHUT_WR)
        print("ok", len(s.recv(100)))
    except ConnectionRefusedError:
        print("refused")
    except TimeoutError:
        print("timeout")
""")
UDP_TRY = textwrap.dedent("""\
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(20)
    s.connect((sys.argv[1], int(sys.argv[2])))
    try:
        for _ in range(int(sys.argv[3])):
            s.send(b"quic-like datagram")
        print("ok", len(s.recv(100)))
    except ConnectionRefusedError:
        print("refused")
    except TimeoutError:
        print("timeout")
""")


def make_policy(allow: list[str], deny: list[str]) -> Callable[[State], netpolicy.Policy]:
    """The policy of these rules; `{host}` in one is the host end of the namespace's veth."""
    def build(state: State) -> netpolicy.Policy:
        policy = netpolicy.effective(netpolicy.from_flags(
            [r.format(host=state.host_addr) for r in allow],
            [r.format(host=state.host_addr) for r in deny]), [])
        assert policy is not None
        return policy
    return build


@pytest.fixture
def ns_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="aegis-nspolicy-"))
    os.chmod(root, 0o755)
    (root / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def outside() -> Iterator[Outside]:
    with Outside() as out:
        yield out


@pytest.fixture
def policed(ns_dir: Path) -> Iterator[Callable[..., netns.Namespace]]:
    """policed(allow=[...], deny=[...]): a namespace with that policy, in its verdict maps
    (`maps=False`: as one chain of every rule); afterwards the host is as before (the
    policy's chains, maps and sets went with the namespace's table)."""
    made: list[netns.Namespace] = []

    def make(allow: list[str] = (), deny: list[str] = (),  # type: ignore[assignment]
             maps: bool = True, host_access: bool = False) -> netns.Namespace:
        ns = netns.create(os.getpid(), ns_dir / "netmon.jsonl",
                          resolv_conf=ns_dir / "resolv.conf",
                          policy=make_policy(list(allow), list(deny)), policy_maps=maps,
                          host_access=host_access)
        made.append(ns)
        assert ns.policy_maps is maps  # a quiet fall-back would test the other one
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.teardown()
            assert_gone(ns)


def assert_gone(ns: netns.Namespace) -> None:
    """What this namespace made is gone (only its own: other test runs on this machine make
    and remove namespaces of their own meanwhile)."""
    snapshot = host_snapshot()
    assert ns.name not in snapshot["netns"] and ns.state.veth not in snapshot["links"]
    assert f"table ip {ns.state.table}" not in snapshot["nft"]
    assert ns.name not in snapshot["etc_netns"]


def denials(ns: netns.Namespace) -> list[dict]:
    return [e for e in read_events(log_of(ns)) if e["event"] == "deny"]


def test_allowed_cidr_port_goes_through_and_the_rest_is_refused_at_once(
        policed: Callable[..., netns.Namespace], outside: Outside) -> None:
    allowed = outside.run(lambda: TcpServer(outside.addr, expect=10, reply=5))
    other = outside.run(lambda: TcpServer(outside.addr, expect=10, reply=5))
    ns = policed(allow=[f"{outside.addr}/30:{allowed.port}"])
    try:
        assert run_inside(ns, [PY, "-c", TCP_TRY, outside.addr, str(allowed.port)]
                          ).stdout.split() == ["ok", "5"]
        assert run_inside(ns, [PY, "-c", TCP_TRY, outside.addr, str(other.port)]
                          ).stdout.strip() == "refused"
    finally:
        allowed.close()
        other.close()
    assert allowed.received == [10] and other.received == []
    port = other.port
    deny = wait_event(log_of(ns), lambda e: e["event"] == "deny" and e["port"] == port)
    assert deny == {**deny, "proto": "tcp", "addr": outside.addr, "host": None,
                    "rule": "default deny", "label": None, "default": True, "mode": "netns",
                    "source": "netns", "pid": None}
    assert [e["port"] for e in denials(ns)] == [port]  # the allowed one is not a denial


def test_a_deny_beats_an_allow_and_names_its_rule(policed: Callable[..., netns.Namespace],
                                                  outside: Outside) -> None:
    """With denies only the default is allow; an explicit deny of one port of an allowed
    range wins, and the event names the rule and where it came from."""
    server = outside.run(lambda: TcpServer(outside.addr, expect=10, reply=5))
    fine = outside.run(lambda: TcpServer(outside.addr, expect=10, reply=5))
    ns = policed(allow=[outside.addr, "198.51.100.0/24"],
                 deny=[f"{outside.addr}:{server.port}"])
    try:
        assert run_inside(ns, [PY, "-c", TCP_TRY, outside.addr, str(server.port)]
                          ).stdout.strip() == "refused"
        assert run_inside(ns, [PY, "-c", TCP_TRY, outside.addr, str(fine.port)]
                          ).stdout.split() == ["ok", "5"]
    finally:
        server.close()
        fine.close()
    assert server.received == []
    port = server.port
    deny = wait_event(log_of(ns), lambda e: e["event"] == "deny" and e["port"] == port)
    assert deny["rule"] == f"deny cidr {outside.addr}/32 {port}"
    assert deny["label"] == f"--deny {outside.addr}:{port}" and deny["default"] is False


def test_default_allow_with_denies_only(policed: Callable[..., netns.Namespace],
                                        outside: Outside) -> None:
    server = outside.run(lambda: TcpServer(outside.addr, expect=10, reply=5))
    ns = policed(deny=["203.0.113.0/24"])
    try:
        assert run_inside(ns, [PY, "-c", TCP_TRY, outside.addr, str(server.port)]
                          ).stdout.split() == ["ok", "5"]
    finally:
        server.close()
    assert denials(ns) == []


def test_udp_to_a_denied_port_errors_at_once_and_is_one_denial(
        policed: Callable[..., netns.Namespace], outside: Outside) -> None:
    """QUIC is UDP: a connected socket's send to a denied port gets ICMP port unreachable
    back, so its next call fails with ECONNREFUSED at once; nothing reaches the server, and
    five datagrams of one socket are one attempt, one event."""
    echo = outside.run(lambda: UdpEcho(outside.addr, reply_size=7, replies=8))
    ok = outside.run(lambda: UdpEcho(outside.addr, reply_size=7, replies=8))
    ns = policed(allow=[f"{outside.addr}:{ok.port}"])
    try:
        assert run_inside(ns, [PY, "-c", UDP_TRY, outside.addr, str(echo.port), "5"]
                          ).stdout.strip() == "refused"
        assert run_inside(ns, [PY, "-c", UDP_TRY, outside.addr, str(ok.port), "1"]
                          ).stdout.split() == ["ok", "7"]
    finally:
        echo.close()
        ok.close()
    assert echo.received == [] and ok.received == [18]
    port = echo.port
    deny = wait_event(log_of(ns), lambda e: e["event"] == "deny" and e["port"] == port)
    assert deny["proto"] == "udp" and deny["rule"] == "default deny"
    assert [e["port"] for e in denials(ns)] == [port]


def test_a_static_binary_is_denied_too(policed: Callable[..., netns.Namespace],
                                       outside: Outside, ns_dir: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc (scripts/test installs gcc and libc6-dev)")
    (ns_dir / "client.c").write_text(STATIC_CLIENT)
    binary = ns_dir / "client"
    build = subprocess.run([gcc, "-static", "-O2", "-o", str(binary), str(ns_dir / "client.c")],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"static build failed (libc6-dev missing?): {build.stderr}"
    os.chmod(binary, 0o755)
    server = outside.run(lambda: TcpServer(outside.addr, expect=10, reply=5))
    ns = policed(deny=[f"{outside.addr}/32"])
    try:
        prefix = ns.exec_prefix(65534, 65534, [65534])
        out = subprocess.run([*prefix, str(binary), outside.addr, str(server.port), "10"],
                             capture_output=True, text=True, timeout=20)
    finally:
        server.close()
    assert out.returncode == 1 and "Connection refused" in out.stderr
    assert server.received == []
    port = server.port
    deny = wait_event(log_of(ns), lambda e: e["event"] == "deny" and e["port"] == port)
    assert deny["rule"] == f"deny cidr {outside.addr}/32 0"


class ShortTtlDns(DnsResponder):
    """DnsResponder whose answers live `ttl` seconds."""

    ttl = 1

    def _answer(self, query: bytes, tcp: bool = False) -> bytes | None:
        answer = super()._answer(query, tcp)
        if answer and struct.unpack_from("!H", answer, 6)[0] == 1:  # TTL: 10 bytes from the end
            answer = answer[:-10] + struct.pack("!I", self.ttl) + answer[-6:]
        return answer


HOST_TRY = textwrap.dedent("""\
    import socket, sys, time
    def attempt(name, port):
        try:
            addr = socket.getaddrinfo(name, None, socket.AF_INET)[0][4][0]
        except socket.gaierror:
            return "nxdomain"
        try:
            s = socket.create_connection((addr, port), timeout=20)
            s.close()
            return "ok"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
    port = int(sys.argv[1])
    print(attempt("api.example.test", port), attempt("evil.example.test", port))
""")
LITERAL_TRY = textwrap.dedent("""\
    import socket, sys
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20).close()
        print("ok")
    except ConnectionRefusedError:
        print("refused")
    except TimeoutError:
        print("timeout")
""")


def test_host_rules_open_what_the_resolver_answers_until_the_ttl_runs_out(
        ns_dir: Path, outside: Outside) -> None:
    """The namespace's DNS goes through aegis-mcp's resolver, which opens an allowed name's
    address before it answers (the first connect is never refused by a race); a name not
    allowed on the same address (a CDN) stays closed by default; once the answer's TTL has
    run out the address is closed again for a program that connects without asking."""
    (ns_dir / "resolv.conf").write_text(f"nameserver {outside.addr}\n")
    dns = outside.run(lambda: ShortTtlDns(outside.addr, {"api.example.test": outside.addr,
                                                         "evil.example.test": outside.addr}))
    servers = [outside.run(lambda: TcpServer(outside.addr, expect=0, reply=0))
               for _ in range(3)]
    ns = netns.create(os.getpid(), ns_dir / "netmon.jsonl", resolv_conf=ns_dir / "resolv.conf",
                      policy=make_policy(["api.example.test"], ["evil.example.test"]),
                      min_ttl=1)
    try:
        assert ns.state.dns.startswith("resolver:")
        # the denied name first: its address goes into the deny rule's set
        code = HOST_TRY.replace('attempt("api.example.test", port), ', "")
        assert run_inside(ns, [PY, "-c", code, str(servers[0].port)]).stdout.split() == [
            "refused"]
        deny = wait_event(log_of(ns), lambda e: e["event"] == "deny")
        assert deny["rule"] == "deny host evil.example.test 0"
        assert deny["host"] == "evil.example.test" and deny["mode"] == "netns"
        # once the deny set's entry has gone (TTL 1 s), the allowed name opens the address
        deadline = time.monotonic() + 30
        got = []
        while time.monotonic() < deadline:
            code = HOST_TRY.replace('attempt("evil.example.test", port)', '""')
            got = run_inside(ns, [PY, "-c", code, str(servers[1].port)]).stdout.split()
            if got == ["ok"]:
                break
            time.sleep(0.5)
        assert got == ["ok"] and servers[1].received == [0]
        # no lookup, and the learned address has expired: closed again
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = run_inside(ns, [PY, "-c", LITERAL_TRY, outside.addr, str(servers[2].port)])
            if out.stdout.strip() == "refused":
                break
            time.sleep(0.5)
        assert out.stdout.strip() == "refused"
    finally:
        ns.teardown()
        dns.close()
        for server in servers:
            server.close()
    assert_gone(ns)
    assert "api.example.test" in dns.questions


@pytest.mark.parametrize("maps", [True, False], ids=["maps", "one-chain"])
def test_overlapping_ranges_name_the_first_deny(policed: Callable[..., netns.Namespace],
                                                outside: Outside, maps: bool) -> None:
    """Ranges of several prefix lengths over one address: the first deny that matches is the
    one named, a deny beats a narrower allow, and the widest allow lets the rest through; the
    same with the verdict maps as with one chain of every rule."""
    servers = [outside.run(lambda: TcpServer(outside.addr, expect=10, reply=5))
               for _ in range(3)]
    p1, p2, p3 = (s.port for s in servers)
    addr = outside.addr
    net29 = str(ipaddress.ip_network(f"{addr}/29", strict=False))
    net30 = str(ipaddress.ip_network(f"{addr}/30", strict=False))
    ns = policed(allow=["198.51.100.0/24", f"{addr}:{p1}"],
                 deny=[f"{net29}:{p1}", f"{net30}:{p2}", f"{addr}:{p1}"], maps=maps)
    try:
        got = [run_inside(ns, [PY, "-c", TCP_TRY, addr, str(p)]).stdout.split()
               for p in (p1, p2, p3)]
    finally:
        for server in servers:
            server.close()
    assert got == [["refused"], ["refused"], ["ok", "5"]]
    assert [s.received for s in servers] == [[], [], [10]]
    named = {p: wait_event(log_of(ns), lambda e, p=p: e["event"] == "deny" and e["port"] == p)
             for p in (p1, p2)}
    assert named[p1]["rule"] == f"deny cidr {net29} {p1}"
    assert named[p2]["rule"] == f"deny cidr {net30} {p2}"
    assert [e["port"] for e in denials(ns)] == [p1, p2]


RESOLVE_TRY = textwrap.dedent("""\
    import socket, sys
    name, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
    addr = socket.getaddrinfo(name, None, socket.AF_INET)[0][4][0]
    out = []
    for port in ports:
        try:
            socket.create_connection((addr, port), timeout=20).close()
            out.append("ok")
        except ConnectionRefusedError:
            out.append("refused")
        except TimeoutError:
            out.append("timeout")
    print(addr, *out)
""")


def learned(ns: netns.Namespace) -> str:
    return subprocess.run(["nft", "list", "map", "ip", ns.state.table, "learned"],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("host_first", [False, True], ids=["range-first", "host-first"])
def test_a_learned_address_is_named_by_the_first_deny_host_or_range(
        ns_dir: Path, outside: Outside, host_first: bool) -> None:
    """An address that a denied name resolved to and a denied range covers: the deny listed
    first is named, whichever kind it is; on a port only the name's deny covers, the name's.
    The address goes through map `learned` to a chain of the rules that can match it."""
    (ns_dir / "resolv.conf").write_text(f"nameserver {outside.addr}\n")
    dns = outside.run(lambda: DnsResponder(outside.addr, {"evil.example.test": outside.addr}))
    servers = [outside.run(lambda: TcpServer(outside.addr, expect=0, reply=0))
               for _ in range(2)]
    ranged, other = (s.port for s in servers)
    net = str(ipaddress.ip_network(f"{outside.addr}/30", strict=False))
    deny = ["evil.example.test", f"{net}:{ranged}"]
    ns = netns.create(os.getpid(), ns_dir / "netmon.jsonl", resolv_conf=ns_dir / "resolv.conf",
                      policy=make_policy([], deny if host_first else deny[::-1]))
    try:
        assert ns.policy_maps
        got = run_inside(ns, [PY, "-c", RESOLVE_TRY, "evil.example.test", str(ranged),
                              str(other)]).stdout.split()
        in_map = learned(ns)
    finally:
        ns.teardown()
        dns.close()
        for server in servers:
            server.close()
    assert_gone(ns)
    assert got == [outside.addr, "refused", "refused"]
    assert outside.addr in in_map and "goto learned_" in in_map
    named = {e["port"]: e for e in denials(ns)}
    assert named[ranged]["rule"] == ("deny host evil.example.test 0" if host_first
                                     else f"deny cidr {net} {ranged}")
    assert named[other]["rule"] == "deny host evil.example.test 0"
    assert named[other]["host"] == "evil.example.test"


def test_a_truncated_answer_asked_again_over_tcp_opens_the_name(
        ns_dir: Path, outside: Outside) -> None:
    """The upstream's UDP answer for an allowed name is truncated (too big for UDP), so the
    program's resolver asks again over TCP, through the namespace's resolver: the address
    comes only in the TCP answer, and that answer opens it, as a UDP one would."""
    (ns_dir / "resolv.conf").write_text(f"nameserver {outside.addr}\n")
    dns = outside.run(lambda: DnsResponder(outside.addr, {"big.example.test": outside.addr},
                                           tcp=True, truncated=("big.example.test",)))
    servers = [outside.run(lambda: TcpServer(outside.addr, expect=0, reply=0))
               for _ in range(2)]
    ns = netns.create(os.getpid(), ns_dir / "netmon.jsonl", resolv_conf=ns_dir / "resolv.conf",
                      policy=make_policy(["big.example.test"], []))
    try:
        before = run_inside(ns, [PY, "-c", LITERAL_TRY, outside.addr, str(servers[0].port)])
        after = run_inside(ns, [PY, "-c", RESOLVE_TRY, "big.example.test",
                                str(servers[1].port)])
    finally:
        ns.teardown()
        dns.close()
        for server in servers:
            server.close()
    assert_gone(ns)
    assert before.stdout.split() == ["refused"]  # not open before the name was asked
    assert after.stdout.split() == [outside.addr, "ok"]
    assert "big.example.test" in dns.questions and "big.example.test" in dns.tcp_questions
    assert servers[0].received == [] and servers[1].received == [0]
    answer = wait_event(log_of(ns), lambda e: e["event"] == "dns" and e["proto"] == "tcp")
    assert answer["host"] == "big.example.test" and answer["answers"] == [outside.addr]
    assert [e["rule"] for e in denials(ns)] == ["default deny"]


class HostileDns(DnsResponder):
    """Over TCP, `huge.example.test` gets a 65,535-byte answer of junk after a valid header,
    `liar.example.test` an answer with another id."""

    def _answer(self, query: bytes, tcp: bool = False) -> bytes | None:
        answer = super()._answer(query, tcp)
        if not tcp or answer is None:
            return answer
        if self.tcp_questions[-1] == "huge.example.test":
            head = answer[:6] + struct.pack("!H", 0xFFFF) + answer[8:]
            return head + bytes((i * 7 + 3) % 256 for i in range(65535 - len(head)))
        if self.tcp_questions[-1] == "liar.example.test":
            return struct.pack("!H", struct.unpack_from("!H", answer)[0] ^ 0xFFFF) + answer[2:]
        return answer


TCP_ATTACK = textwrap.dedent("""\
    import json, socket, struct, sys, time
    server, out = sys.argv[1], {}

    def query(name, ident):
        q = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
        q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
        q += struct.pack("!HH", 1, 1)
        return struct.pack("!H", len(q)) + q

    def connect():
        return socket.create_connection((server, 53), timeout=20)

    def answers(s, n):
        data, got = b"", []
        while len(got) < n:
            while len(data) < 2 or len(data) < 2 + struct.unpack_from("!H", data)[0]:
                chunk = s.recv(65536)
                if not chunk:
                    return got + ["closed"]
                data += chunk
            size = struct.unpack_from("!H", data)[0]
            msg, data = data[2:2 + size], data[2 + size:]
            got.append([struct.unpack_from("!H", msg)[0], struct.unpack_from("!H", msg, 6)[0],
                        len(msg)])
        return got

    def closed(s):
        try:
            return s.recv(100) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    idle = connect()
    s = connect()  # queries in one write, more than the resolver takes at once
    s.sendall(b"".join(query(("api", "nothing")[i % 2] + ".example.test", 11 + i)
                       for i in range(6)))
    out["pipelined"] = sorted(answers(s, 6))
    s.sendall(query("huge.example.test", 3))
    out["huge"] = answers(s, 1)
    s.settimeout(8)  # more than the resolver's upstream timeout
    s.sendall(query("liar.example.test", 4))
    try:
        out["liar"] = answers(s, 1)
    except TimeoutError:
        out["liar"] = "no answer"
    for name, data in (("oversized", struct.pack("!H", 65535) + b"x" * 4096),
                       ("undersized", struct.pack("!H", 3) + b"abc")):
        bad = connect()
        bad.sendall(data)
        out[name] = closed(bad)
    out["idle"] = closed(idle)
    flood = [connect() for _ in range(20)]
    flood[-1].sendall(query("api.example.test", 5))
    out["newest"] = answers(flood[-1], 1)
    out["oldest"] = closed(flood[0])
    print(json.dumps(out))
""")


def test_dns_over_tcp_is_bounded(ns_dir: Path, outside: Outside) -> None:
    """The namespace's resolver over TCP, attacked from inside and fed junk from upstream:
    queries in one write, more than it forwards at once, are answered each by its id; a
    64 KiB junk answer is handed on
    (the client's to judge) without opening anything; an answer with another id is dropped;
    a length prefix beyond the bound or below a DNS header closes the connection; an idle
    connection is closed; beyond the cap on connections the oldest is closed and the newest
    served. The resolver goes on serving throughout."""
    (ns_dir / "resolv.conf").write_text(f"nameserver {outside.addr}\n")
    dns = outside.run(lambda: HostileDns(outside.addr, {"api.example.test": outside.addr},
                                         tcp=True))
    ns = netns.create(os.getpid(), ns_dir / "netmon.jsonl", resolv_conf=ns_dir / "resolv.conf",
                      policy=make_policy(["api.example.test"], []))
    try:
        out = json.loads(run_inside(ns, [PY, "-c", TCP_ATTACK, ns.state.host_addr],
                                    timeout=90).stdout)
        helper = ns.helper_pids
        sets = learned(ns)
    finally:
        ns.teardown()
        dns.close()
    assert_gone(ns)
    # each answered by its id: api's with its A record, nothing's with none
    assert out["pipelined"] == [[11 + i, 1 - i % 2, (50, 38)[i % 2]] for i in range(6)]
    assert out["huge"] == [[3, 0xFFFF, 65535]]
    assert out["liar"] == "no answer"
    assert out["oversized"] and out["undersized"] and out["idle"] and out["oldest"]
    assert out["newest"] == [[5, 1, 50]]
    assert helper  # the capture (and its resolver) still ran at the end
    assert outside.addr in sets  # learned from the TCP answers, nothing from the junk
    assert dns.tcp_questions.count("huge.example.test") == 1


def test_host_access_under_a_policy_reaches_only_what_it_allows(
        policed: Callable[..., netns.Namespace]) -> None:
    """--netns-host-access opens the host's services to the agent, but a policy still bounds
    them: the allowed port of the host is reached, a denied one and one the allow-list leaves
    out are refused at once, each a deny event naming its rule, and no hint to forward it."""
    servers = [TcpServer("0.0.0.0", expect=10, reply=5) for _ in range(3)]
    ok, denied, other = (s.port for s in servers)
    ns = policed(allow=[f"{{host}}:{ok}"], deny=[f"{{host}}:{denied}"], host_access=True)
    host = ns.state.host_addr
    try:
        got = [run_inside(ns, [PY, "-c", TCP_TRY, host, str(p)]).stdout.split()
               for p in (ok, denied, other)]
    finally:
        for server in servers:
            server.close()
    assert got == [["ok", "5"], ["refused"], ["refused"]]
    assert [s.received for s in servers] == [[10], [], []]
    named = {p: wait_event(log_of(ns), lambda e, p=p: e["event"] == "deny" and e["port"] == p)
             for p in (denied, other)}
    assert named[denied]["rule"] == f"deny cidr {host}/32 {denied}"
    assert named[denied]["addr"] == host and named[denied]["default"] is False
    assert named[other]["rule"] == "default deny"
    closes = [e for e in read_events(log_of(ns)) if e["event"] == "close"
              and e["port"] in (denied, other)]
    assert len(closes) == 2 and all(e["result"] == "ECONNREFUSED" for e in closes)
    assert not any("hint" in e for e in closes)
