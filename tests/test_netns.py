"""Network-namespace mode for real: namespaces, veths, nftables and the capture helper, with
clients inside the namespace talking to servers on the host end of the veth (no traffic ever
leaves this machine's loopback and the test's own namespaces)."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_mcp import netns
from aegis_mcp.errors import AegisError
from tests.conftest import NEEDS_ROOT, aegis_bin
from tests.netns_helpers import (
    DnsResponder,
    TcpServer,
    UdpEcho,
    host_snapshot,
    normalise,
    read_events,
    wait_for,
)

pytestmark = [
    NEEDS_ROOT,
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (scripts/test installs "
                       "nftables)"),
]

PY = "/usr/bin/python3"  # a Python the dropped user can run (see DESIGN.md)
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Path]:
    """A 0755 directory the dropped user can read, with a loopback-free resolv.conf."""
    root = Path(tempfile.mkdtemp(prefix="aegis-netns-"))
    os.chmod(root, 0o755)
    (root / "resolv.conf").write_text("nameserver 192.0.2.53\nsearch example.test\n")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def ns(world: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[netns.Namespace]:
    """A namespace owned by this test process; afterwards the host must be as before."""
    monkeypatch.setenv("AEGIS_NETNS_TOTALS_INTERVAL", "1")
    before = normalise(host_snapshot())
    namespace = netns.create(os.getpid(), world / "netmon.jsonl",
                             resolv_conf=world / "resolv.conf")
    try:
        yield namespace
    finally:
        namespace.teardown()
        assert normalise(host_snapshot()) == before


def run_inside(ns: netns.Namespace, argv: list[str], user: pwd.struct_passwd = NOBODY,
               timeout: float = 20) -> subprocess.CompletedProcess[str]:
    prefix = ns.exec_prefix(user.pw_uid, user.pw_gid, [user.pw_gid])
    proc = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/"})
    assert proc.returncode == 0, proc.stderr
    return proc


CLIENT = textwrap.dedent("""\
    import socket, sys
    addr, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.create_connection((addr, port), timeout=10)
    s.sendall(b"c" * size)
    s.shutdown(socket.SHUT_WR)
    got = 0
    while data := s.recv(65536):
        got += len(data)
    print(got)
""")


def log_of(ns: netns.Namespace) -> Path:
    assert ns.state.log_path
    return Path(ns.state.log_path)


def test_tcp_connection_and_exact_totals(ns: netns.Namespace) -> None:
    server = TcpServer(ns.state.host_addr, expect=123_457, reply=345_679)
    try:
        out = run_inside(ns, [PY, "-c", CLIENT, ns.state.host_addr, str(server.port), "123457"])
    finally:
        server.close()
    assert out.stdout.strip() == "345679" and server.received == [123_457]
    port = server.port

    def mine(e: dict) -> bool:
        return e.get("port") == port and e.get("proto") == "tcp"

    close = wait_for(log_of(ns), lambda e: mine(e) and e["event"] == "close")
    connect = next(e for e in read_events(log_of(ns)) if mine(e) and e["event"] == "connect")
    assert (close["sent"], close["recv"], close["result"]) == (123_457, 345_679, "ok")
    assert connect["result"] == "EINPROGRESS" and connect["ts"] <= close["ts"]
    for event in (connect, close):
        assert event["source"] == "netns" and event["pid"] is None and event["fd"] is None
        assert event["addr"] == ns.state.host_addr and event["family"] == "ipv4"
        assert event["local_addr"] == ns.state.ns_addr
        assert event["local_port"] == connect["local_port"]
    assert close["duration"] >= 0


def test_refused_connection_is_recorded(ns: netns.Namespace) -> None:
    probe = socket.socket()
    probe.bind((ns.state.host_addr, 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    code = ("import socket,sys\ntry:\n socket.create_connection(sys.argv[1:3] and "
            "(sys.argv[1], int(sys.argv[2])), timeout=5)\nexcept ConnectionRefusedError:\n "
            "print('refused')")
    assert run_inside(ns, [PY, "-c", code, ns.state.host_addr, str(port)]).stdout == "refused\n"
    close = wait_for(log_of(ns), lambda e: e.get("port") == port and e["event"] == "close")
    assert close["result"] == "ECONNREFUSED" and (close["sent"], close["recv"]) == (0, 0)


def test_udp_flow_totals(ns: netns.Namespace) -> None:
    echo = UdpEcho(ns.state.host_addr, reply_size=50, replies=2)
    code = textwrap.dedent("""\
        import socket, sys
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.connect((sys.argv[1], int(sys.argv[2])))
        for _ in range(3):
            s.send(b"q" * 100)
        print(len(s.recv(100)) + len(s.recv(100)))
    """)
    try:
        out = run_inside(ns, [PY, "-c", code, ns.state.host_addr, str(echo.port)])
    finally:
        echo.close()
    assert out.stdout.strip() == "100"
    port = echo.port
    connect = wait_for(log_of(ns), lambda e: e.get("port") == port and e["event"] == "connect")
    assert connect["proto"] == "udp" and connect["result"] == "ok"
    # The flow is still open for conntrack (UDP has no close): the periodic totals (1 s here)
    # carry its exact payload bytes.
    totals = wait_for(log_of(ns), lambda e: e.get("port") == port and e["event"] == "totals"
                      and e["sent"] == 300)
    assert totals["recv"] == 100 and totals["proto"] == "udp"


def test_long_tcp_flow_gets_periodic_totals(ns: netns.Namespace) -> None:
    server = socket.socket()
    server.bind((ns.state.host_addr, 0))
    server.listen(1)
    server.settimeout(10)
    code = textwrap.dedent("""\
        import socket, sys, time
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
        s.sendall(b"x" * 40000)
        time.sleep(2.5)
        s.close()
    """)
    proc = subprocess.Popen([*ns.exec_prefix(NOBODY.pw_uid, NOBODY.pw_gid, []), PY, "-c", code,
                             ns.state.host_addr, str(server.getsockname()[1])])
    try:
        conn, _ = server.accept()
        got = 0
        while got < 40000 and (data := conn.recv(65536)):
            got += len(data)
        port = server.getsockname()[1]
        totals = wait_for(log_of(ns), lambda e: e.get("port") == port and e["event"] == "totals")
        # Mid-flow totals come from conntrack's IP byte counters minus estimated headers.
        assert 39000 <= totals["sent"] <= 41000 and totals["recv"] == 0
        assert proc.wait(10) == 0
        conn.close()
        close = wait_for(log_of(ns), lambda e: e.get("port") == port and e["event"] == "close")
        assert close["sent"] == 40000
    finally:
        proc.kill()
        server.close()


STATIC_CLIENT = r"""
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        perror("connect");
        return 1;
    }
    long left = atol(argv[3]);
    char buf[8192];
    memset(buf, 's', sizeof buf);
    while (left > 0) {
        ssize_t n = write(fd, buf, left < (long)sizeof buf ? (size_t)left : sizeof buf);
        if (n <= 0) return 1;
        left -= n;
    }
    shutdown(fd, SHUT_WR);
    long got = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) got += n;
    printf("%ld\n", got);
    return 0;
}
"""


def test_static_binary_traffic_is_recorded(ns: netns.Namespace, world: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc (scripts/test installs gcc and libc6-dev)")
    (world / "client.c").write_text(STATIC_CLIENT)
    binary = world / "client"
    build = subprocess.run([gcc, "-static", "-O2", "-o", str(binary), str(world / "client.c")],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"static build failed (libc6-dev missing?): {build.stderr}"
    os.chmod(binary, 0o755)
    assert b"ld-linux" not in binary.read_bytes()[:4096]  # no program interpreter: static
    server = TcpServer(ns.state.host_addr, expect=50_000, reply=7_777)
    try:
        out = run_inside(ns, [str(binary), ns.state.host_addr, str(server.port), "50000"])
    finally:
        server.close()
    assert out.stdout.strip() == "7777"
    port = server.port
    close = wait_for(log_of(ns), lambda e: e.get("port") == port and e["event"] == "close")
    assert (close["sent"], close["recv"]) == (50_000, 7_777)


@pytest.fixture
def throwaway_user() -> Iterator[pwd.struct_passwd]:
    name = f"aegisns{os.getpid() % 100000}"
    subprocess.run(["groupadd", f"{name}g"], check=True)
    subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/bin/sh", "-G", f"{name}g",
                    name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)
        subprocess.run(["groupdel", f"{name}g"], check=False)


def test_agent_runs_inside_as_the_dropped_user(ns: netns.Namespace,
                                               throwaway_user: pwd.struct_passwd) -> None:
    import grp

    extra = grp.getgrnam(f"{throwaway_user.pw_name}g").gr_gid
    user = throwaway_user
    prefix = ns.exec_prefix(user.pw_uid, user.pw_gid, [user.pw_gid, extra])
    # The child of the child is inside too, and the namespace's resolv.conf is the one seen.
    script = ("id -u; id -g; id -G; readlink /proc/self/ns/net; "
              "sh -c 'readlink /proc/self/ns/net' & wait; cat /etc/resolv.conf")
    out = subprocess.run([*prefix, "/bin/sh", "-c", script], capture_output=True, text=True,
                         timeout=20, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str(user.pw_uid) and lines[1] == str(user.pw_gid)
    assert set(lines[2].split()) == {str(user.pw_gid), str(extra)}
    host_ns = os.readlink("/proc/self/ns/net")
    inside = os.stat(f"/run/netns/{ns.name}").st_ino
    assert lines[3] == lines[4] == f"net:[{inside}]" != host_ns
    assert "nameserver 192.0.2.53" in out.stdout and "search example.test" in out.stdout


def test_dns_names_the_peer_through_a_loopback_resolver(world: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The host uses a loopback resolver (as with systemd-resolved): the namespace asks the
    host end of its veth, which is DNAT-ed to it; the answer is logged and names the peer."""
    resolver = "127.83.0.1"
    (world / "resolv.conf").write_text(f"nameserver {resolver}\noptions edns0\n")
    before = normalise(host_snapshot())
    ns = netns.create(os.getpid(), world / "dns.jsonl", resolv_conf=world / "resolv.conf")
    try:
        assert ns.state.dns == f"dnat:{resolver}"
        dns = DnsResponder(resolver, {"api.example.test": ns.state.host_addr})
        server = TcpServer(ns.state.host_addr, expect=10, reply=5)
        code = textwrap.dedent("""\
            import socket, sys
            addr = socket.getaddrinfo("api.example.test", None, socket.AF_INET)[0][4][0]
            s = socket.create_connection((addr, int(sys.argv[1])), timeout=10)
            s.sendall(b"0123456789")
            s.shutdown(socket.SHUT_WR)
            print(addr, len(s.recv(100)))
        """)
        try:
            out = run_inside(ns, [PY, "-c", code, str(server.port)])
        finally:
            server.close()
            dns.close()
        assert out.stdout.split() == [ns.state.host_addr, "5"]
        assert "api.example.test" in dns.questions
        log = log_of(ns)
        answer = wait_for(log, lambda e: e["event"] == "dns" and e["answers"])
        assert answer["host"] == "api.example.test"
        assert answer["answers"] == [ns.state.host_addr] and answer["result"] == "ok"
        assert (answer["addr"], answer["port"]) == (ns.state.host_addr, 53)
        port = server.port
        connect = wait_for(log, lambda e: e.get("port") == port and e["event"] == "connect")
        assert connect["host"] == "api.example.test"
        assert read_events(log).index(answer) < read_events(log).index(connect)
    finally:
        ns.teardown()
    assert normalise(host_snapshot()) == before


def test_dns_plan_copies_reachable_resolvers(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nnameserver 192.0.2.53\nnameserver 2001:db8::1\nsearch a.test\n")
    assert netns._dns_plan(conf, "10.200.0.1") == (
        "copy", "# written by aegis-mcp: the host's resolvers, reached through NAT\n"
        "nameserver 192.0.2.53\nsearch a.test\n")
    conf.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.53\n")
    mode, text = netns._dns_plan(conf, "10.200.0.1")
    assert mode == "dnat:127.0.0.53" and "nameserver 10.200.0.1\n" in text
    conf.unlink()  # no resolv.conf at all: systemd-resolved's stub is the best guess
    assert netns._dns_plan(conf, "10.200.0.1")[0] == "dnat:127.0.0.53"


def test_subnets_avoid_host_routes_and_each_other(world: Path) -> None:
    before = normalise(host_snapshot())
    sleeper = subprocess.Popen(["sleep", "60"])
    first = netns.create(os.getpid(), world / "a.jsonl", resolv_conf=world / "resolv.conf")
    try:
        second = netns.create(sleeper.pid, world / "b.jsonl", resolv_conf=world / "resolv.conf")
        try:
            a, b = (netns.ipaddress.ip_network(n.state.subnet) for n in (first, second))
            assert not a.overlaps(b)
            assert second.name == f"aegis-{sleeper.pid}"
            # ip_forward stays on while the second one still needs it.
            first.teardown()
            first.teardown()  # idempotent
            assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
            ping = run_inside(second, [PY, "-c", "import socket;s=socket.socket();"
                                       f"s.settimeout(2);print(s.connect_ex(('{second.state.host_addr}',9)))"])
            assert ping.stdout.strip() == "111"  # ECONNREFUSED: the host end answers
        finally:
            second.teardown()
    finally:
        first.teardown()
        sleeper.kill()
        sleeper.wait()
    assert normalise(host_snapshot()) == before
    # A route the host already has rules its subnet out.
    taken = netns.ipaddress.ip_network("10.200.0.0/24")
    chosen = netns._pick_subnet([taken])
    assert not chosen.overlaps(taken)
    whole = netns._pick_subnet([netns.ipaddress.ip_network("10.0.0.0/8")])
    assert str(whole).startswith("172.30.200.")


OWNER = textwrap.dedent("""\
    import os, sys, time
    from pathlib import Path
    from aegis_mcp import netns
    ns = netns.create(os.getpid(), Path(sys.argv[1]), resolv_conf=Path(sys.argv[2]))
    print(ns.name, ns.helper_pids[0], flush=True)
    time.sleep(120)
""")


def test_kill9_leaves_a_stale_namespace_that_cleanup_removes(world: Path,
                                                             aegis_env: dict[str, str]) -> None:
    before = normalise(host_snapshot())
    foreign = f"aegis-{_dead_pid()}"  # an aegis-* namespace aegis-mcp did not create
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        owner = subprocess.Popen([sys.executable, "-c", OWNER, str(world / "k.jsonl"),
                                  str(world / "resolv.conf")], stdout=subprocess.PIPE,
                                 text=True)
        assert owner.stdout is not None
        name, capture = owner.stdout.readline().split()
        listing = {r["name"]: r for r in _cli_json(aegis_env, "list")["namespaces"]}
        assert listing[name]["alive"] and not listing[name]["stale"]
        assert listing[name]["owner_pid"] == owner.pid and listing[name]["capture_alive"]
        assert listing[name]["ns_addr"] and listing[name]["age"] >= 0
        assert not listing[foreign]["ours"] and not listing[foreign]["stale"]

        # cleanup with the owner alive touches nothing.
        assert _cli_json(aegis_env, "cleanup")["removed"] == []
        assert Path(f"/run/netns/{name}").exists()

        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        listing = {r["name"]: r for r in _cli_json(aegis_env, "list")["namespaces"]}
        assert listing[name]["stale"] and not listing[name]["alive"]
        text = subprocess.run([aegis_bin(), "netns", "list"], capture_output=True, text=True,
                              env=aegis_env).stdout
        assert f"{name}" in text and "stale" in text and "netns cleanup" in text
        _wait_gone(int(capture))  # the capture helper follows its owner

        removed = _cli_json(aegis_env, "cleanup")["removed"]
        assert [r["name"] for r in removed] == [name]
        assert _cli_json(aegis_env, "cleanup")["removed"] == []
        assert Path(f"/run/netns/{foreign}").exists()
    finally:
        subprocess.run(["ip", "netns", "delete", foreign], check=False)
    assert normalise(host_snapshot()) == before


NOT_ROOT = textwrap.dedent("""\
    import asyncio
    from mcp import Client
    from aegis_mcp import netns
    from aegis_mcp.errors import AegisError
    from aegis_mcp.mcp_server import build_server
    for f in (netns.cleanup_stale, lambda: netns.create(1, "/tmp/x")):
        try:
            f()
        except AegisError as e:
            print(e)
    async def main():
        async with Client(build_server()) as client:
            r = await client.call_tool("netmon_namespace_cleanup", {})
            print(r.is_error, r.content[0].text)
            r = await client.call_tool("netmon_namespace_list", {})
            print(r.is_error, type(r.structured_content["namespaces"]).__name__)
    asyncio.run(main())
""")


def test_cleanup_and_create_refuse_without_root(world: Path) -> None:
    out = subprocess.run(["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}",
                          "--clear-groups", sys.executable, "-c", NOT_ROOT],
                         capture_output=True, text=True, cwd="/", timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("`aegis-mcp netns cleanup` needs root") and "sudo" in lines[0]
    assert "sudo" in lines[1] and "--netmon=preload" in lines[1]
    assert lines[2].startswith("True ") and "netmon_namespace_cleanup requires root" in lines[2]
    assert "sudo aegis-mcp netns cleanup" in lines[2]
    assert lines[3] == "False list"  # listing needs no root
    with pytest.raises(AegisError, match="already exists"):
        subprocess.run(["ip", "netns", "add", f"aegis-{os.getpid()}"], check=True)
        try:
            netns.create(os.getpid(), world / "x.jsonl", resolv_conf=world / "resolv.conf")
        finally:
            subprocess.run(["ip", "netns", "delete", f"aegis-{os.getpid()}"], check=True)


def test_mcp_tools_in_memory(ns: netns.Namespace) -> None:
    from mcp import Client
    from mcp.server.mcpserver import MCPServer

    from aegis_mcp import netns_tools

    server = MCPServer(name="t")
    netns_tools.register(server)

    async def body() -> tuple[dict, dict]:
        async with Client(server) as client:
            listed = await client.call_tool("netmon_namespace_list", {})
            cleaned = await client.call_tool("netmon_namespace_cleanup", {})
            return listed.structured_content, cleaned.structured_content

    listed, cleaned = asyncio.run(asyncio.wait_for(body(), 30))
    mine = [n for n in listed["namespaces"] if n["name"] == ns.name]
    assert mine and mine[0]["alive"] and mine[0]["ns_addr"] == ns.state.ns_addr
    assert cleaned["removed"] == [] and Path(f"/run/netns/{ns.name}").exists()


def _cli_json(env: dict[str, str], action: str) -> dict:
    out = subprocess.run([aegis_bin(), "netns", action, "--json"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still alive")


OUTSIDE_SERVER = textwrap.dedent("""\
    import socket
    s = socket.socket()
    s.bind(("198.51.100.2", 8080))
    s.listen(1)
    print("listening", flush=True)
    s.settimeout(20)
    conn, peer = s.accept()
    data = conn.recv(100)
    conn.sendall(b"hello " + peer[0].encode())
    conn.close()
""")


def test_traffic_is_forwarded_and_masqueraded(ns: netns.Namespace) -> None:
    """A stand-in for the outside world: a namespace of the test's own behind another veth.
    The agent's connection is forwarded (ip_forward on, the guard table lets aegis traffic
    through), masqueraded (the server sees the host's address), and recorded."""
    out, link = f"aegistest-{os.getpid()}", f"aegt{os.getpid() % 10**9}"
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"table ip {ns.state.table}" in tables
    run = ["ip", "netns", "exec", out]
    subprocess.run(["ip", "netns", "add", out], check=True)
    try:
        subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0",
                        "netns", out], check=True)
        subprocess.run(["ip", "addr", "add", "198.51.100.1/30", "dev", link], check=True)
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
        subprocess.run([*run, "ip", "addr", "add", "198.51.100.2/30", "dev", "eth0"], check=True)
        subprocess.run([*run, "ip", "link", "set", "eth0", "up"], check=True)
        server = subprocess.Popen([*run, PY, "-c", OUTSIDE_SERVER], stdout=subprocess.PIPE,
                                  text=True)
        assert server.stdout is not None and server.stdout.readline() == "listening\n"
        code = ("import socket;s=socket.create_connection(('198.51.100.2',8080),timeout=10);"
                "s.sendall(b'ping');print(s.recv(100).decode())")
        answer = run_inside(ns, [PY, "-c", code]).stdout.strip()
        assert answer == "hello 198.51.100.1"  # the source was rewritten to the host's
        server.wait(10)
        close = wait_for(log_of(ns), lambda e: e.get("addr") == "198.51.100.2"
                         and e["event"] == "close")
        assert (close["sent"], close["recv"], close["port"]) == (4, len(answer), 8080)
    finally:
        subprocess.run(["ip", "link", "del", link], check=False)
        subprocess.run(["ip", "netns", "delete", out], check=False)


def test_teardown_writes_final_totals_of_open_flows(ns: netns.Namespace) -> None:
    server = socket.socket()
    server.bind((ns.state.host_addr, 0))
    server.listen(1)
    server.settimeout(10)
    code = ("import socket,sys,time;s=socket.create_connection((sys.argv[1],int(sys.argv[2])));"
            "s.sendall(b'z'*3000);time.sleep(30)")
    proc = subprocess.Popen([*ns.exec_prefix(NOBODY.pw_uid, NOBODY.pw_gid, []), PY, "-c", code,
                             ns.state.host_addr, str(server.getsockname()[1])])
    try:
        conn, _ = server.accept()
        got = 0
        while got < 3000 and (data := conn.recv(65536)):
            got += len(data)
        port = server.getsockname()[1]
        wait_for(log_of(ns), lambda e: e.get("port") == port and e["event"] == "connect")
        ns.teardown()  # the agent is still connected: the capture's last word is its totals
        assert not ns.helper_pids
        final = [e for e in read_events(log_of(ns)) if e.get("port") == port]
        assert [e["event"] for e in final][0] == "connect" and final[-1]["event"] == "totals"
        assert 2900 <= final[-1]["sent"] <= 3100
    finally:
        proc.kill()
        proc.wait()
        server.close()
