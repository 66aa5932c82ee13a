"""Network-namespace mode for real: namespaces, veths, nftables and the capture helper, with
clients inside the namespace talking to servers in a namespace of the test's own that stands in
for the internet (no traffic ever leaves this machine's loopback and the test's own
namespaces), and attacking the host's own services, which must stay out of reach."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_mcp.errors import AegisError
from aegis_mcp.netns import namespace as netns
from aegis_mcp.netns import plan, stop
from aegis_mcp.netns import state as netns_state
from tests.support.host import NEEDS_ROOT, aegis_bin
from tests.support.netns_helpers import (
    DnsResponder,
    Outside,
    TcpServer,
    UdpEcho,
    host_snapshot,
    normalise,
    pids_in,
    read_events,
    wait_event,
)

pytestmark = [
    NEEDS_ROOT,
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (scripts/test installs "
                       "nftables)"),
]

PY = "/usr/bin/python3"  # a Python the dropped user can run (see DESIGN.md)
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def ns_dir(tmp_path: Path) -> Iterator[Path]:
    """A 0755 directory the dropped user can read, with a loopback-free resolv.conf."""
    root = Path(tempfile.mkdtemp(prefix="aegis-netns-"))
    os.chmod(root, 0o755)
    (root / "resolv.conf").write_text("nameserver 192.0.2.53\nsearch example.test\n")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def ns(ns_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[netns.Namespace]:
    """A namespace owned by this test process; afterwards the host must be as before."""
    monkeypatch.setenv("AEGIS_NETNS_TOTALS_INTERVAL", "1")
    before = normalise(host_snapshot())
    namespace = netns.create(os.getpid(), ns_dir / "netmon.jsonl",
                             resolv_conf=ns_dir / "resolv.conf")
    try:
        yield namespace
    finally:
        namespace.teardown()
        assert normalise(host_snapshot()) == before


@pytest.fixture
def outside() -> Iterator[Outside]:
    with Outside() as out:
        yield out


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


def test_tcp_connection_and_exact_totals(ns: netns.Namespace, outside: Outside) -> None:
    server = outside.run(lambda: TcpServer(outside.addr, expect=123_457, reply=345_679))
    try:
        out = run_inside(ns, [PY, "-c", CLIENT, outside.addr, str(server.port), "123457"])
    finally:
        server.close()
    assert out.stdout.strip() == "345679" and server.received == [123_457]
    port = server.port

    def mine(e: dict) -> bool:
        return e.get("port") == port and e.get("proto") == "tcp"

    close = wait_event(log_of(ns), lambda e: mine(e) and e["event"] == "close")
    connect = next(e for e in read_events(log_of(ns)) if mine(e) and e["event"] == "connect")
    assert (close["sent"], close["recv"], close["result"]) == (123_457, 345_679, "ok")
    assert connect["result"] == "EINPROGRESS" and connect["ts"] <= close["ts"]
    for event in (connect, close):
        assert event["source"] == "netns" and event["pid"] is None and event["fd"] is None
        assert event["addr"] == outside.addr and event["family"] == "ipv4"
        assert event["local_addr"] == ns.state.ns_addr
        assert event["local_port"] == connect["local_port"]
    assert close["duration"] >= 0


def test_refused_connection_is_recorded(ns: netns.Namespace, outside: Outside) -> None:
    probe = outside.run(socket.socket)
    probe.bind((outside.addr, 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    code = ("import socket,sys\ntry:\n socket.create_connection(sys.argv[1:3] and "
            "(sys.argv[1], int(sys.argv[2])), timeout=5)\nexcept ConnectionRefusedError:\n "
            "print('refused')")
    assert run_inside(ns, [PY, "-c", code, outside.addr, str(port)]).stdout == "refused\n"
    close = wait_event(log_of(ns), lambda e: e.get("port") == port and e["event"] == "close")
    assert close["result"] == "ECONNREFUSED" and (close["sent"], close["recv"]) == (0, 0)


REFUSED = textwrap.dedent("""\
    import socket, sys
    for target in sys.argv[1:]:
        host, port = target.rsplit(":", 1)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as s:
            s.settimeout(10)
            print(target, s.connect_ex((host.strip("[]"), int(port))))
""")


def test_a_refused_port_of_the_host_is_an_event_and_names_the_forward(
        ns_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent connects to 127.0.0.1:PORT where this host listens: inside the namespace
    that is its own loopback, so it is refused there and nothing crosses the veth. It is
    still a failed connect event, with a hint naming --netns-forward PORT, said once on the
    supervisor's terminal (here a pipe); as is the guard's refusal of the host end's PORT.
    A port the host does not listen on either gets the event, and no hint."""
    import errno

    from aegis_mcp.netmon import summary as netsummary

    before = normalise(host_snapshot())
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens there once the probe is gone
    said_r, said_w = os.pipe()
    os.set_blocking(said_r, False)
    ipv6 = Path("/proc/sys/net/ipv6").exists()
    try:
        ns = netns.create(os.getpid(), ns_dir / "netmon.jsonl",
                          resolv_conf=ns_dir / "resolv.conf", say_fd=said_w)
        try:
            targets = [f"127.0.0.1:{port}", f"127.0.0.1:{closed}",
                       f"{ns.state.host_addr}:{port}", *([f"[::1]:{port}"] if ipv6 else [])]
            out = run_inside(ns, [PY, "-c", REFUSED, *targets]).stdout.split("\n")
            assert [line.split()[1] for line in out if line] == \
                [str(errno.ECONNREFUSED)] * len(targets)
            log = log_of(ns)
            wait_event(log, lambda e: e.get("addr") == ns.state.host_addr
                       and e["event"] == "close")
            for target in targets[:2] + targets[3:]:
                host, p = target.rsplit(":", 1)
                addr = host.strip("[]")
                wait_event(log, lambda e, a=addr, p=int(p): e["event"] == "connect"
                           and e.get("addr") == a and e.get("port") == p)
        finally:
            ns.teardown()
        evs = [e for e in read_events(log) if e.get("port") in (port, closed)]
        refused = [e for e in evs if e.get("result") == "ECONNREFUSED"]
        assert len(refused) == len(targets)
        hinted = [e for e in refused if e.get("hint")]
        assert {e["port"] for e in hinted} == {port}
        assert all(f"--netns-forward {port}" in e["hint"] for e in hinted)
        guarded = next(e for e in refused if e["addr"] == ns.state.host_addr)
        assert guarded["event"] == "close" and "end of its link" in guarded["hint"]
        lo = next(e for e in refused if e["addr"] == "127.0.0.1" and e["port"] == port)
        assert (lo["event"], lo["source"], lo["proto"], lo["local_addr"]) == (
            "connect", "netns", "tcp", "127.0.0.1")
        said = os.read(said_r, 65536).decode()
        assert said.count("aegis-mcp: ") == 1 and f"--netns-forward {port} " in said, said
        status = netsummary.status(log)
        assert status["failed_connections"] == len(targets) and status["connections"] == 0
        assert len(status["hints"]) == 1 and f"--netns-forward {port}" in status["hints"][0]
        shown = subprocess.run([aegis_bin(), "netmon", str(log)], capture_output=True,
                               text=True, timeout=60).stdout
        assert f"hint: 127.0.0.1:{port} refused in the agent's network namespace" in shown
        assert f"({len(targets)} failed" in shown
    finally:
        listener.close()
        os.close(said_r)
        os.close(said_w)
    assert normalise(host_snapshot()) == before


def test_an_unreachable_peer_is_a_failed_connect(ns: netns.Namespace,
                                                  outside: Outside) -> None:
    """An ICMP destination-unreachable on the way (here the outside's firewall answering
    host-unreachable) ends the connect at once; the capture says so with the same error."""
    port = 7777
    rule = (f"add table ip t\nadd chain ip t input {{ type filter hook input priority 0; }}\n"
            f"add rule ip t input tcp dport {port} reject with icmp type host-unreachable\n")
    subprocess.run(outside.exec(["nft", "-f", "-"]), input=rule, text=True, check=True)
    out = run_inside(ns, [PY, "-c", REFUSED, f"{outside.addr}:{port}"]).stdout
    import errno

    assert out.split() == [f"{outside.addr}:{port}", str(errno.EHOSTUNREACH)]
    close = wait_event(log_of(ns), lambda e: e.get("port") == port and e["event"] == "close")
    assert close["result"] == "EHOSTUNREACH" and close["addr"] == outside.addr
    assert "hint" not in close


def test_udp_flow_totals(ns: netns.Namespace, outside: Outside) -> None:
    echo = outside.run(lambda: UdpEcho(outside.addr, reply_size=50, replies=2))
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
        out = run_inside(ns, [PY, "-c", code, outside.addr, str(echo.port)])
    finally:
        echo.close()
    assert out.stdout.strip() == "100"
    port = echo.port
    connect = wait_event(log_of(ns), lambda e: e.get("port") == port and e["event"] == "connect")
    assert connect["proto"] == "udp" and connect["result"] == "ok"
    # The flow is still open for conntrack (UDP has no close): the periodic totals (1 s here)
    # carry its exact payload bytes.
    totals = wait_event(log_of(ns), lambda e: e.get("port") == port and e["event"] == "totals"
                      and e["sent"] == 300)
    assert totals["recv"] == 100 and totals["proto"] == "udp"


def test_long_tcp_flow_gets_periodic_totals(ns: netns.Namespace, outside: Outside) -> None:
    server = outside.run(socket.socket)
    server.bind((outside.addr, 0))
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
                             outside.addr, str(server.getsockname()[1])])
    try:
        conn, _ = server.accept()
        got = 0
        while got < 40000 and (data := conn.recv(65536)):
            got += len(data)
        port = server.getsockname()[1]
        totals = wait_event(log_of(ns), lambda e: e.get("port") == port and e["event"] == "totals")
        # Mid-flow totals come from conntrack's IP byte counters minus estimated headers.
        assert 39000 <= totals["sent"] <= 41000 and totals["recv"] == 0
        assert proc.wait(10) == 0
        conn.close()
        close = wait_event(log_of(ns), lambda e: e.get("port") == port and e["event"] == "close")
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


def test_static_binary_traffic_is_recorded(ns: netns.Namespace, ns_dir: Path,
                                           outside: Outside) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc (scripts/test installs gcc and libc6-dev)")
    (ns_dir / "client.c").write_text(STATIC_CLIENT)
    binary = ns_dir / "client"
    build = subprocess.run([gcc, "-static", "-O2", "-o", str(binary), str(ns_dir / "client.c")],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"static build failed (libc6-dev missing?): {build.stderr}"
    os.chmod(binary, 0o755)
    assert b"ld-linux" not in binary.read_bytes()[:4096]  # no program interpreter: static
    server = outside.run(lambda: TcpServer(outside.addr, expect=50_000, reply=7_777))
    try:
        out = run_inside(ns, [str(binary), outside.addr, str(server.port), "50000"])
    finally:
        server.close()
    assert out.stdout.strip() == "7777"
    port = server.port
    close = wait_event(log_of(ns), lambda e: e.get("port") == port and e["event"] == "close")
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


def test_dns_names_the_peer_through_a_loopback_resolver(ns_dir: Path, outside: Outside) -> None:
    """The host uses a loopback resolver (as with systemd-resolved): the namespace asks the
    host end of its veth, which is DNAT-ed to it; the answer is logged and names the peer."""
    resolver = "127.83.0.1"
    (ns_dir / "resolv.conf").write_text(f"nameserver {resolver}\noptions edns0\n")
    before = normalise(host_snapshot())
    ns = netns.create(os.getpid(), ns_dir / "dns.jsonl", resolv_conf=ns_dir / "resolv.conf")
    try:
        assert ns.state.dns == f"dnat:{resolver}"
        dns = DnsResponder(resolver, {"api.example.test": outside.addr})
        server = outside.run(lambda: TcpServer(outside.addr, expect=10, reply=5))
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
        assert out.stdout.split() == [outside.addr, "5"]
        assert "api.example.test" in dns.questions
        log = log_of(ns)
        answer = wait_event(log, lambda e: e["event"] == "dns" and e["answers"])
        assert answer["host"] == "api.example.test"
        assert answer["answers"] == [outside.addr] and answer["result"] == "ok"
        assert (answer["addr"], answer["port"]) == (ns.state.host_addr, 53)
        port = server.port
        connect = wait_event(log, lambda e: e.get("port") == port and e["event"] == "connect")
        assert connect["host"] == "api.example.test"
        assert read_events(log).index(answer) < read_events(log).index(connect)
    finally:
        ns.teardown()
    assert normalise(host_snapshot()) == before


def test_dns_plan_copies_reachable_resolvers(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nnameserver 192.0.2.53\nnameserver 2001:db8::1\nsearch a.test\n")
    assert plan.dns_plan(conf, "10.200.0.1") == (
        "copy", "# written by aegis-mcp: the host's resolvers, reached through NAT\n"
        "nameserver 192.0.2.53\nsearch a.test\n")
    conf.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.53\n")
    mode, text = plan.dns_plan(conf, "10.200.0.1")
    assert mode == "dnat:127.0.0.53" and "nameserver 10.200.0.1\n" in text
    conf.unlink()  # no resolv.conf at all: systemd-resolved's stub is the best guess
    assert plan.dns_plan(conf, "10.200.0.1")[0] == "dnat:127.0.0.53"


def test_subnets_avoid_host_routes_and_each_other(ns_dir: Path) -> None:
    before = normalise(host_snapshot())
    sleeper = subprocess.Popen(["sleep", "60"])
    first = netns.create(os.getpid(), ns_dir / "a.jsonl", resolv_conf=ns_dir / "resolv.conf")
    try:
        second = netns.create(sleeper.pid, ns_dir / "b.jsonl", resolv_conf=ns_dir / "resolv.conf")
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
            assert ping.stdout.strip() == "111"  # ECONNREFUSED: the host is off limits
        finally:
            second.teardown()
    finally:
        first.teardown()
        sleeper.kill()
        sleeper.wait()
    assert normalise(host_snapshot()) == before
    # A route the host already has rules its subnet out.
    taken = netns.ipaddress.ip_network("10.200.0.0/24")
    chosen = plan.pick_subnet([taken])
    assert not chosen.overlaps(taken)
    whole = plan.pick_subnet([netns.ipaddress.ip_network("10.0.0.0/8")])
    assert str(whole).startswith("172.30.200.")


OWNER = textwrap.dedent("""\
    import os, subprocess, sys, time
    from pathlib import Path
    from aegis_mcp.netns import namespace as netns
    ns = netns.create(os.getpid(), Path(sys.argv[1]), resolv_conf=Path(sys.argv[2]))
    # What an agent leaves behind when its supervisor is killed: a process that obeys SIGTERM,
    # one that ignores it with a child that does too, and an orphan in a session of its own.
    agent = ns.exec_prefix(65534, 65534, [])
    subprocess.Popen([*agent, "sleep", "300"])
    subprocess.Popen([*agent, "sh", "-c", "trap '' TERM; sleep 300 & setsid sleep 300 & wait"])
    print(ns.name, ns.helper_pids[0], flush=True)
    time.sleep(120)
""")


def test_kill9_leaves_a_stale_namespace_that_cleanup_removes(ns_dir: Path,
                                                             aegis_env: dict[str, str]) -> None:
    before = normalise(host_snapshot())
    foreign = f"aegis-{_dead_pid()}"  # an aegis-* namespace aegis-mcp did not create
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        owner = subprocess.Popen([sys.executable, "-c", OWNER, str(ns_dir / "k.jsonl"),
                                  str(ns_dir / "resolv.conf")], stdout=subprocess.PIPE,
                                 text=True)
        assert owner.stdout is not None
        name, capture = owner.stdout.readline().split()
        listing = {r["name"]: r for r in _cli_json(aegis_env, "list")["namespaces"]}
        assert listing[name]["alive"] and not listing[name]["stale"]
        assert listing[name]["owner_pid"] == owner.pid and listing[name]["capture_alive"]
        assert listing[name]["ns_addr"] and listing[name]["age"] >= 0
        assert not listing[foreign]["ours"] and not listing[foreign]["stale"]

        # cleanup with the owner alive touches nothing. (Only this test's namespaces are
        # looked at: other runs on the machine may leave stale ones of their own.)
        assert name not in cleaned(aegis_env)
        assert Path(f"/run/netns/{name}").exists()

        bystander = subprocess.Popen(["sleep", "60"])  # on the host: never signalled
        inode = os.stat(f"/run/netns/{name}")
        left = wait_for_pids(inode, 4)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        listing = {r["name"]: r for r in _cli_json(aegis_env, "list")["namespaces"]}
        assert listing[name]["stale"] and not listing[name]["alive"]
        text = subprocess.run([aegis_bin(), "netns", "list"], capture_output=True, text=True,
                              env=aegis_env).stdout
        assert f"{name}" in text and "stale" in text and "netns cleanup" in text
        _wait_gone(int(capture))  # the capture helper follows its owner

        started = time.monotonic()
        removed = [r for r in _cli_json(aegis_env, "cleanup")["removed"] if r["name"] == name]
        took = time.monotonic() - started
        assert len(removed) == 1
        # All of them were stopped, the ones that ignore SIGTERM after the grace with SIGKILL,
        # and nothing else was.
        assert set(left) <= set(removed[0]["processes_stopped"])
        assert removed[0]["processes_left_inside"] == []
        assert pids_in(inode) == [] and not Path(f"/run/netns/{name}").exists()
        assert bystander.poll() is None
        assert stop.STOP_GRACE <= took < stop.STOP_GRACE + 10
        assert name not in cleaned(aegis_env)
        assert Path(f"/run/netns/{foreign}").exists()
    finally:
        subprocess.run(["ip", "netns", "delete", foreign], check=False)
        with contextlib.suppress(NameError):
            bystander.kill()
            bystander.wait()
    assert normalise(host_snapshot()) == before


def wait_for_pids(inode: os.stat_result, n: int, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(pids := pids_in(inode)) < n:
        assert time.monotonic() < deadline, f"only {pids} in the namespace"
        time.sleep(0.05)
    return pids


def test_stop_processes_inside_is_quick_when_they_obey(ns: netns.Namespace) -> None:
    inode = os.stat(f"/run/netns/{ns.name}")
    procs = [subprocess.Popen([*ns.exec_prefix(NOBODY.pw_uid, NOBODY.pw_gid, []), "sleep",
                               "300"]) for _ in range(3)]
    pids = wait_for_pids(inode, 3)
    started = time.monotonic()
    stopped = stop.stop_processes_inside(ns.name)
    took = time.monotonic() - started
    assert stopped == sorted(pids) and pids_in(inode) == []
    assert took < stop.STOP_GRACE  # a pidfd wakes the wait at the exit, no grace to sit out
    assert [p.wait(5) for p in procs] == [-signal.SIGTERM] * 3
    assert stop.stop_processes_inside(ns.name) == []
    with pytest.raises(AegisError, match="not the name of an aegis namespace"):
        netns.cleanup_one("../etc")
    assert netns.cleanup_one(ns.name) is None  # its owner (this process) is alive
    assert Path(f"/run/netns/{ns.name}").exists()


NOT_ROOT = textwrap.dedent("""\
    import asyncio
    from mcp import Client
    from aegis_mcp.netns import namespace as netns
    from aegis_mcp.errors import AegisError
    from aegis_mcp.mcp.server import build_server
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


def test_cleanup_and_create_refuse_without_root(ns_dir: Path) -> None:
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
            netns.create(os.getpid(), ns_dir / "x.jsonl", resolv_conf=ns_dir / "resolv.conf")
        finally:
            subprocess.run(["ip", "netns", "delete", f"aegis-{os.getpid()}"], check=True)


def test_mcp_tools_in_memory(ns: netns.Namespace) -> None:
    from mcp import Client
    from mcp.server.mcpserver import MCPServer

    from aegis_mcp.netns import tools as netns_tools

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


def cleaned(env: dict[str, str]) -> list[str]:
    return [r["name"] for r in _cli_json(env, "cleanup")["removed"]]


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
    import socket, sys
    s = socket.socket()
    s.bind((sys.argv[1], 8080))
    s.listen(1)
    print("listening", flush=True)
    s.settimeout(20)
    conn, peer = s.accept()
    data = conn.recv(100)
    conn.sendall(b"hello " + peer[0].encode())
    conn.close()
""")


def test_traffic_is_forwarded_and_masqueraded(ns: netns.Namespace, outside: Outside) -> None:
    """The agent's connection to the outside is forwarded (ip_forward on, the guard table lets
    aegis traffic through), masqueraded (the server sees the host's address), and recorded."""
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"table ip {ns.state.table}" in tables
    server = subprocess.Popen(outside.exec([PY, "-c", OUTSIDE_SERVER, outside.addr]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "listening\n"
        code = (f"import socket;s=socket.create_connection(('{outside.addr}',8080),timeout=10);"
                "s.sendall(b'ping');print(s.recv(100).decode())")
        answer = run_inside(ns, [PY, "-c", code]).stdout.strip()
        assert answer == f"hello {outside.host_addr}"  # the source was rewritten to the host's
        server.wait(10)
    finally:
        server.kill()
        server.wait()
    close = wait_event(log_of(ns), lambda e: e.get("addr") == outside.addr
                     and e["event"] == "close")
    assert (close["sent"], close["recv"], close["port"]) == (4, len(answer), 8080)


def test_teardown_writes_final_totals_of_open_flows(ns: netns.Namespace,
                                                   outside: Outside) -> None:
    server = outside.run(socket.socket)
    server.bind((outside.addr, 0))
    server.listen(1)
    server.settimeout(10)
    code = ("import socket,sys,time;s=socket.create_connection((sys.argv[1],int(sys.argv[2])));"
            "s.sendall(b'z'*3000);time.sleep(30)")
    proc = subprocess.Popen([*ns.exec_prefix(NOBODY.pw_uid, NOBODY.pw_gid, []), PY, "-c", code,
                             outside.addr, str(server.getsockname()[1])])
    try:
        conn, _ = server.accept()
        got = 0
        while got < 3000 and (data := conn.recv(65536)):
            got += len(data)
        port = server.getsockname()[1]
        wait_event(log_of(ns), lambda e: e.get("port") == port and e["event"] == "connect")
        ns.teardown()  # the agent is still connected: the capture's last word is its totals
        assert not ns.helper_pids
        final = [e for e in read_events(log_of(ns)) if e.get("port") == port]
        assert [e["event"] for e in final][0] == "connect" and final[-1]["event"] == "totals"
        assert 2900 <= final[-1]["sent"] <= 3100
    finally:
        proc.kill()
        proc.wait()
        server.close()


# ---------------------------------------------------------------------------------------------
# The agent as an attacker of the host: only the outside (through NAT), DNS and the forwarded
# loopback ports may be reachable.

PROBE = textwrap.dedent("""\
    import json, socket, sys
    out = {}
    for label, proto, addr, port in json.loads(sys.argv[1]):
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
        s.settimeout(3)
        try:
            target = socket.getaddrinfo(addr, port, family)[0][4]
            if proto == "tcp":
                s.connect(target)
                s.sendall(b"hi")
                out[label] = "connected"
            else:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                s.sendto(b"hi", target)
                out[label] = "sent"
        except OSError as exc:
            out[label] = type(exc).__name__
        finally:
            s.close()
    print(json.dumps(out))
""")


def probe(ns: netns.Namespace, targets: list[tuple[str, str, str, int]]) -> dict[str, str]:
    """What an agent (nobody) inside gets for each (label, tcp|udp, address, port)."""
    return json.loads(run_inside(ns, [PY, "-c", PROBE, json.dumps(targets)]).stdout)


def listener(family: int, addr: str, kind: int = socket.SOCK_STREAM,
             v6only: bool = True) -> socket.socket:
    sock = socket.socket(family, kind)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    sock.bind((addr, 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(16)
    sock.setblocking(False)
    return sock


def reached(sock: socket.socket) -> bool:
    """Whether anything got through to this host-side socket (a queued connection or a
    datagram)."""
    try:
        if sock.type == socket.SOCK_STREAM:
            sock.accept()[0].close()
        else:
            sock.recv(100)
    except BlockingIOError:
        return False
    return True


def link_local_of(link: str) -> str:
    """The IPv6 link-local address the kernel would give `link` (EUI-64 of its MAC)."""
    mac = bytearray.fromhex(Path(f"/sys/class/net/{link}/address").read_text().strip()
                            .replace(":", ""))
    mac[0] ^= 2
    eui = mac[:3] + b"\xff\xfe" + mac[3:]
    return "fe80::" + ":".join(f"{eui[i] << 8 | eui[i + 1]:x}" for i in range(0, 8, 2))


@pytest.fixture
def host_services() -> Iterator[dict[str, object]]:
    """Services on the host that the agent must not reach: TCP and UDP on 0.0.0.0, TCP on
    another of the host's addresses (on a link of the test's own: a veth pair, since not every
    kernel has the dummy driver), TCP on an unforwarded 127.0.0.1 port, and TCP on [::] (IPv6
    only, and dual stack)."""
    n = os.getpid()
    dummy, other = f"aegd{n % 10**7}", f"203.0.113.{n % 250 + 1}"
    subprocess.run(["ip", "link", "add", dummy, "type", "veth", "peer", "name", f"{dummy}p"],
                   check=True)
    subprocess.run(["ip", "addr", "add", f"{other}/32", "dev", dummy], check=True)
    subprocess.run(["ip", "link", "set", dummy, "up"], check=True)
    socks = {
        "any4": listener(socket.AF_INET, "0.0.0.0"),
        "udp_any4": listener(socket.AF_INET, "0.0.0.0", socket.SOCK_DGRAM),
        "other": listener(socket.AF_INET, other),
        "loopback": listener(socket.AF_INET, "127.0.0.1"),
        "any6": listener(socket.AF_INET6, "::"),
        "dual": listener(socket.AF_INET6, "::", v6only=False),
    }
    try:
        yield {"other": other, "socks": socks,
               "port": {k: s.getsockname()[1] for k, s in socks.items()}}
    finally:
        for sock in socks.values():
            sock.close()
        subprocess.run(["ip", "link", "del", dummy], check=False)


def host_addresses() -> list[str]:
    """The host's own non-loopback IPv4 addresses, but not those of test or aegis links."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()
            if not line.split()[1].startswith(("aegis-", "aegt", "aegd"))]


def attacks(ns: netns.Namespace, services: dict[str, object]) -> list[tuple[str, str, str, int]]:
    port: dict[str, int] = services["port"]  # type: ignore[assignment]
    net = netns.ipaddress.ip_network(ns.state.subnet)
    targets = [
        ("0.0.0.0 via the host end", "tcp", ns.state.host_addr, port["any4"]),
        ("0.0.0.0 via another host address", "tcp", str(services["other"]), port["any4"]),
        ("bound on another host address", "tcp", str(services["other"]), port["other"]),
        ("unforwarded 127.0.0.1 port", "tcp", "127.0.0.1", port["loopback"]),
        ("unforwarded 127.0.0.1 port via the host end", "tcp", ns.state.host_addr,
         port["loopback"]),
        ("dual-stack [::] via the host end", "tcp", ns.state.host_addr, port["dual"]),
        ("[::] via the host end's link-local", "tcp", f"{link_local_of(ns.state.veth)}%eth0",
         port["any6"]),
        ("UDP 0.0.0.0 via the host end", "udp", ns.state.host_addr, port["udp_any4"]),
        ("UDP 0.0.0.0 via the broadcast", "udp", str(net.broadcast_address), port["udp_any4"]),
    ]
    targets += [(f"0.0.0.0 via the host's {addr}", "tcp", addr, port["any4"])
                for addr in host_addresses()]
    return targets


def test_the_agent_cannot_reach_the_hosts_services(ns_dir: Path, outside: Outside,
                                                   host_services: dict[str, object]) -> None:
    resolver = f"127.84.0.{os.getpid() % 250 + 1}"
    (ns_dir / "resolv.conf").write_text(f"nameserver {resolver}\n")
    api = listener(socket.AF_INET, "127.0.0.1")  # a forwarded loopback service (an API proxy)
    api_port = api.getsockname()[1]
    before = normalise(host_snapshot())
    ns = netns.create(os.getpid(), ns_dir / "attack.jsonl", resolv_conf=ns_dir / "resolv.conf",
                      forwards=(("127.0.0.1", api_port),))
    try:
        assert not ns.state.host_access
        v6 = subprocess.run(["ip", "-6", "addr", "show", "dev", ns.state.veth],
                            capture_output=True, text=True).stdout
        assert "inet6" not in v6  # no link-local on the host end
        inside_v6 = subprocess.run(["ip", "netns", "exec", ns.name, "ip", "-6", "addr", "show",
                                    "dev", "eth0"], capture_output=True, text=True).stdout
        assert "inet6" not in inside_v6
        targets = attacks(ns, host_services)
        # A port a container engine publishes: DNAT of a host address to a container (here
        # the outside namespace), as docker's rules do, in a table of the test's own.
        container = outside.run(lambda: listener(socket.AF_INET, outside.addr))
        published = 40000 + os.getpid() % 20000
        publish = f"aegistest_publish_{os.getpid()}"
        to = f"{outside.addr}:{container.getsockname()[1]}"
        subprocess.run(["nft", "-f", "-"], check=True, text=True, input=f"""
            table ip {publish} {{
              chain prerouting {{
                type nat hook prerouting priority dstnat; policy accept;
                fib daddr type local tcp dport {published} dnat to {to}
              }}
            }}""")
        targets.append(("a container's published port", "tcp", ns.state.host_addr, published))
        try:
            started = time.monotonic()
            got = probe(ns, targets)
            elapsed = time.monotonic() - started
        finally:
            subprocess.run(["nft", "delete", "table", "ip", publish], check=True)
        assert not reached(container)
        container.close()
        # Every TCP attempt is refused at once (a reset, not a hang); UDP sends, but nothing
        # arrives (checked below).
        for label, proto, _, _ in targets:
            assert got[label] != "connected", f"{label}: reached the host ({got})"
            if proto == "tcp" and "link-local" not in label:
                assert got[label] == "ConnectionRefusedError", (label, got)
        assert elapsed < 10, f"refusals took {elapsed:.1f}s: a drop, not a reset?"
        socks: dict[str, socket.socket] = host_services["socks"]  # type: ignore[assignment]
        time.sleep(0.2)  # a datagram in flight
        assert [k for k, s in socks.items() if reached(s)] == []

        # And the product still works: the forwarded port, DNS, the outside through NAT.
        dns = DnsResponder(resolver, {"api.example.test": outside.addr})
        server = outside.run(lambda: TcpServer(outside.addr, expect=4, reply=3))
        code = textwrap.dedent("""\
            import socket, sys
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
            s.sendall(b"api")
            addr = socket.getaddrinfo("api.example.test", None, socket.AF_INET)[0][4][0]
            t = socket.create_connection((addr, int(sys.argv[2])), timeout=10)
            t.sendall(b"ping")
            t.shutdown(socket.SHUT_WR)
            print(addr, len(t.recv(100)))
        """)
        try:
            out = run_inside(ns, [PY, "-c", code, str(api_port), str(server.port)])
        finally:
            server.close()
            dns.close()
        assert out.stdout.split() == [outside.addr, "3"]
        api.setblocking(True)
        api.settimeout(5)
        conn, _ = api.accept()
        assert conn.recv(10) == b"api"
        conn.close()
        # The refused attempts are recorded like any other: the log shows what the agent tried.
        log = log_of(ns)
        any4 = host_services["port"]["any4"]  # type: ignore[index]
        refused = wait_event(log, lambda e: e.get("addr") == ns.state.host_addr
                           and e.get("port") == any4 and e["event"] == "close")
        assert refused["result"] == "ECONNREFUSED" and refused["sent"] == 0
        wait_event(log, lambda e: e.get("addr") == outside.addr and e["event"] == "close")
    finally:
        ns.teardown()
        api.close()
    assert normalise(host_snapshot()) == before


def test_without_reject_in_prerouting_the_host_is_still_off_limits(
        ns_dir: Path, host_services: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels before 5.9 refuse `reject` in a prerouting chain: the guard drops instead."""
    real = netns._nft

    def old_kernel(nft: str, script: str, enter: tuple[str, ...] = ()) -> None:
        if "reject" in script:
            raise AegisError("nft failed: Error: Could not process rule: Operation not supported")
        real(nft, script, enter)

    monkeypatch.setattr(netns, "_nft", old_kernel)
    port: dict[str, int] = host_services["port"]  # type: ignore[assignment]
    ns = netns.create(os.getpid(), ns_dir / "old.jsonl", resolv_conf=ns_dir / "resolv.conf")
    try:
        got = probe(ns, [("any4", "tcp", ns.state.host_addr, port["any4"])])
        assert got == {"any4": "TimeoutError"}
        socks: dict[str, socket.socket] = host_services["socks"]  # type: ignore[assignment]
        assert not reached(socks["any4"])
    finally:
        ns.teardown()


def test_netns_host_access_lets_the_agent_reach_the_host_again(
        ns_dir: Path, host_services: dict[str, object]) -> None:
    port: dict[str, int] = host_services["port"]  # type: ignore[assignment]
    ns = netns.create(os.getpid(), ns_dir / "open.jsonl", resolv_conf=ns_dir / "resolv.conf",
                      host_access=True)
    try:
        assert ns.state.host_access
        saved = json.loads(ns.state.path().read_text())
        assert saved["host_access"] is True
        got = probe(ns, [("any4", "tcp", ns.state.host_addr, port["any4"]),
                         ("other", "tcp", str(host_services["other"]), port["other"])])
        assert got == {"any4": "connected", "other": "connected"}
        rows = {r["name"]: r for r in netns.list_namespaces()}
        assert rows[ns.name]["host_access"] is True
    finally:
        ns.teardown()


def test_aegis_namespaces_cannot_reach_each_other(ns_dir: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    first = netns.create(os.getpid(), ns_dir / "a.jsonl", resolv_conf=ns_dir / "resolv.conf")
    try:
        second = netns.create(sleeper.pid, ns_dir / "b.jsonl", resolv_conf=ns_dir / "resolv.conf")
        try:
            # a service of the other agent, on every address of its namespace
            serve = ("import socket;s=socket.socket();s.bind(('0.0.0.0',7777));s.listen(8);"
                     "print('up',flush=True);s.settimeout(5);"
                     "print('accepted' if s.accept() else '')")
            victim = subprocess.Popen([*second.exec_prefix(NOBODY.pw_uid, NOBODY.pw_gid, []),
                                       PY, "-c", serve], stdout=subprocess.PIPE, text=True,
                                      stderr=subprocess.DEVNULL)
            assert victim.stdout is not None and victim.stdout.readline() == "up\n"
            got = probe(first, [("agent", "tcp", second.state.ns_addr, 7777),
                                ("host end", "tcp", second.state.host_addr, 7777)])
            assert got["agent"] in ("TimeoutError", "ConnectionRefusedError"), got
            assert got["host end"] == "ConnectionRefusedError", got
            assert victim.wait(15) != 0 or "accepted" not in victim.stdout.read()
        finally:
            second.teardown()
    finally:
        first.teardown()
        sleeper.kill()
        sleeper.wait()


# ---------------------------------------------------------------------------------------------
# The namespace state: root's own, private, never written through a symlink.


def test_state_files_are_private_and_never_written_through_a_symlink(ns_dir: Path) -> None:
    state_dir = netns_state.STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o755)  # as an earlier version left it
    victims = {}
    for name in (f".aegis-{os.getpid()}.json.tmp", f".{netns_state.BASELINE}.tmp"):
        victim = ns_dir / f"victim-{name}"
        victim.write_text("precious\n")
        os.chmod(victim, 0o644)
        with contextlib.suppress(FileNotFoundError):
            (state_dir / name).unlink()
        (state_dir / name).symlink_to(victim)
        victims[name] = victim
    baseline = netns_state.BASELINE
    private = ["lock"] if (state_dir / baseline).exists() else ["lock", baseline]
    ns = netns.create(os.getpid(), ns_dir / "s.jsonl", resolv_conf=ns_dir / "resolv.conf")
    try:
        for victim in victims.values():
            st = os.lstat(victim)
            assert victim.read_text() == "precious\n" and stat.S_IMODE(st.st_mode) == 0o644
        st = os.lstat(ns.state.path())
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
        assert json.loads(ns.state.path().read_text())["name"] == ns.name
        st = os.lstat(state_dir)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == 0
        for name in private:  # the baseline if this namespace made it (the first one)
            st = os.lstat(state_dir / name)
            assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, name
        assert not (state_dir / f".aegis-{os.getpid()}.json.tmp").is_symlink()
        # /etc/netns/<name>/resolv.conf stays world-readable: the agent reads it as itself.
        resolv = Path(f"/etc/netns/{ns.name}/resolv.conf")
        assert stat.S_IMODE(resolv.stat().st_mode) == 0o644
        assert "nameserver 192.0.2.53" in run_inside(ns, ["cat", "/etc/resolv.conf"]).stdout
    finally:
        ns.teardown()
        for name in victims:
            with contextlib.suppress(FileNotFoundError):
                (state_dir / name).unlink()


def test_netns_list_as_another_user_names_the_namespaces(ns: netns.Namespace) -> None:
    cmd = ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
           aegis_bin(), "netns", "list"]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    text = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=60, env=env)
    assert text.returncode == 0, text.stderr
    assert ns.name in text.stdout and "sudo aegis-mcp netns list" in text.stdout
    assert ns.state.ns_addr not in text.stdout  # the details are root's
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, cwd="/", timeout=60,
                         env=env)
    assert out.returncode == 0, out.stderr
    row = next(r for r in json.loads(out.stdout)["namespaces"] if r["name"] == ns.name)
    assert row["ours"] is None and row["owner_pid"] == os.getpid() and row["alive"]
    assert "sudo" in row["note"]
