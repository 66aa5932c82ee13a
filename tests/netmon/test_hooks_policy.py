"""The network policy in the preload hooks (AEGIS_NETMON_POLICY, the compiled `aegis-policy 1`
file): real curl, Python, Node and git, denied at once exactly as a refusing port refuses them,
allowed ones unchanged to the byte; host rules (with wildcards), CIDRs, ports, IPv6, UDP, the
default, deny events, and a malformed file failing closed.

Host names resolve through a hosts file of the test's own, bind-mounted on /etc/hosts in a
private mount namespace (unshare -m): the system's resolver is never touched."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.snippets.harness import LIB, RawHTTPServer, events, hooked_env, plain_env, run

pytestmark = pytest.mark.skipif(not Path(LIB).exists(), reason=f"{LIB} is not built")
needs_mount_ns = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                    reason="needs root for a private /etc/hosts (unshare -m)")

NAMES = ("paste.pastebin.test", "api.allowed.test", "github.test", "a.b.github.test")


@pytest.fixture
def server() -> Iterator[RawHTTPServer]:
    srv = RawHTTPServer()
    yield srv
    srv.close()


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_policy(path: Path, default: str, *rules: str) -> Path:
    path.write_text("aegis-policy 1\n" + f"default {default}\n" + "".join(r + "\n" for r in rules))
    path.chmod(0o600)
    return path


def in_hosts(tmp: Path, cmd: list[str]) -> list[str]:
    """cmd run with NAMES resolving to 127.0.0.1 (and v6.test to ::1), in a mount namespace."""
    hosts = tmp / "hosts"
    hosts.write_text("127.0.0.1 localhost " + " ".join(NAMES) + "\n::1 v6.test\n")
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
            str(hosts), *cmd]


def normalized(text: str, *ports: int) -> str:
    """Program output with the ports (and curl's "after N ms") made comparable."""
    for p in ports:
        text = text.replace(str(p), "PORT")
    return re.sub(r"after \d+ ms", "after N ms", text)


PY_GET = ("import sys, urllib.request\n"
          "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())")
NODE_GET = ("fetch(process.argv[1]).then(r => r.text()).then(t => process.stdout.write(t))"
            ".catch(e => { console.error(String(e), e.cause && e.cause.code,"
            " e.cause && e.cause.message); process.exit(3); })")
PROGRAMS = {
    "curl": lambda url: ["curl", "-sS", url],
    "python": lambda url: [sys.executable, "-c", PY_GET, url],
    "node": lambda url: ["node", "-e", NODE_GET, url],
    "git": lambda url: ["git", "ls-remote", url + "repo.git"],
}


@needs_mount_ns
@pytest.mark.parametrize("program", list(PROGRAMS))
def test_a_denied_host_fails_as_a_refusing_port_does(tmp_path: Path, server: RawHTTPServer,
                                                     program: str) -> None:
    make = PROGRAMS[program]
    policy = write_policy(tmp_path / "policy", "allow",
                          "deny host *.pastebin.test 0 --deny *.pastebin.test")
    log = tmp_path / "log.jsonl"
    refused = closed_port()
    plain = run(in_hosts(tmp_path, make(f"http://paste.pastebin.test:{refused}/")), plain_env())
    hooked = run(in_hosts(tmp_path, make(f"http://paste.pastebin.test:{server.port}/")),
                 hooked_env(log, AEGIS_NETMON_POLICY=str(policy)))
    assert plain.returncode != 0 and hooked.returncode == plain.returncode, hooked.stderr
    assert normalized(hooked.stderr, server.port) == normalized(plain.stderr, refused)
    assert hooked.stdout == plain.stdout
    assert server.connections == []  # nothing reached the server
    denies = events(log, "deny")
    assert denies, events(log)
    for d in denies:
        assert (d["addr"], d["port"], d["host"], d["proto"]) == (
            "127.0.0.1", server.port, "paste.pastebin.test", "tcp")
        assert d["rule"] == "deny host *.pastebin.test 0" and d["label"] == "--deny *.pastebin.test"
        assert d["default"] is False and d["mode"] == "preload" and d["source"] == "preload"
    assert not [e for e in events(log, "connect") if e["port"] == server.port]


@needs_mount_ns
@pytest.mark.parametrize("program", list(PROGRAMS))
def test_an_allowed_host_is_unchanged(tmp_path: Path, server: RawHTTPServer,
                                      program: str) -> None:
    make = PROGRAMS[program]
    policy = write_policy(tmp_path / "policy", "deny",
                          "deny host *.pastebin.test 0 --deny *.pastebin.test",
                          f"allow host api.allowed.test {server.port} --allow api.allowed.test")
    log = tmp_path / "log.jsonl"
    cmd = in_hosts(tmp_path, make(f"http://api.allowed.test:{server.port}/"))
    plain = run(cmd, plain_env())
    hooked = run(cmd, hooked_env(log, AEGIS_NETMON_POLICY=str(policy)))
    assert (hooked.returncode, hooked.stdout, hooked.stderr) == (
        plain.returncode, plain.stdout, plain.stderr)
    assert len(server.wait(2)) >= 2
    assert events(log, "deny") == []
    assert [e for e in events(log, "connect") if e["port"] == server.port][0]["host"] == \
        "api.allowed.test"


PROBE = textwrap.dedent("""
    import json, socket, sys
    out = []
    for target in json.loads(sys.argv[1]):
        host, port = target
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            s = socket.socket(info[0], socket.SOCK_STREAM)
            s.connect(info[4])
            out.append("ok")
            s.close()
        except OSError as e:
            out.append(e.errno)
    print(json.dumps(out))
""")


def probe(tmp: Path, env: dict[str, str], targets: list[tuple[str, int]],
          names: bool = False) -> list[object]:
    cmd = [sys.executable, "-c", PROBE, json.dumps(targets)]
    out = run(in_hosts(tmp, cmd) if names else cmd, env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


REFUSED = 111  # ECONNREFUSED


def test_cidrs_ports_ipv6_and_the_default(tmp_path: Path) -> None:
    a, b = RawHTTPServer(), RawHTTPServer()
    v6 = RawHTTPServer(family=socket.AF_INET6, host="::1")
    try:
        policy = write_policy(
            tmp_path / "policy", "deny",
            f"allow cidr 127.0.0.0/8 {a.port} ok-a",
            "deny cidr ::1/128 0 no-v6",
            f"allow cidr ::/0 {v6.port} every v6 on that port, but the deny wins",
            f"deny cidr 127.0.0.1/32 {b.port} no-b",
            f"allow cidr 127.0.0.1/32 {b.port} allowed too, but the deny wins")
        log = tmp_path / "log.jsonl"
        nobody = closed_port()
        env = hooked_env(log, AEGIS_NETMON_POLICY=str(policy))
        got = probe(tmp_path, env, [("127.0.0.1", a.port), ("127.0.0.1", b.port),
                                    ("::1", v6.port), ("127.0.0.1", nobody),
                                    ("127.0.0.2", a.port)])
        # a: allowed; b: denied by its rule; ::1 denied; nobody: the default; 127.0.0.2 is in
        # the allowed /8 but nothing listens there: the kernel's own refusal, no deny event.
        assert got == ["ok", REFUSED, REFUSED, REFUSED, REFUSED]
        assert len(a.wait(1)) == 1 and b.connections == [] and v6.connections == []
        denies = [(d["addr"], d["port"], d["rule"], d["label"], d["default"])
                  for d in events(log, "deny")]
        assert denies == [
            ("127.0.0.1", b.port, f"deny cidr 127.0.0.1/32 {b.port}", "no-b", False),
            ("::1", v6.port, "deny cidr ::1/128 0", "no-v6", False),
            ("127.0.0.1", nobody, "default deny", None, True),
        ]
    finally:
        for s in (a, b, v6):
            s.close()


def test_default_allow_denies_only_what_a_rule_denies(tmp_path: Path) -> None:
    a, b = RawHTTPServer(), RawHTTPServer()
    try:
        policy = write_policy(tmp_path / "policy", "allow", f"deny cidr 127.0.0.0/8 {b.port} x")
        env = hooked_env(tmp_path / "log.jsonl", AEGIS_NETMON_POLICY=str(policy))
        assert probe(tmp_path, env, [("127.0.0.1", a.port), ("127.0.0.1", b.port)]) == \
            ["ok", REFUSED]
        assert len(a.wait(1)) == 1 and b.connections == []
    finally:
        a.close()
        b.close()


@needs_mount_ns
def test_wildcards_exact_names_and_ports(tmp_path: Path, server: RawHTTPServer) -> None:
    policy = write_policy(tmp_path / "policy", "allow",
                          "deny host *.github.test 0 wild",
                          "deny host api.allowed.test 1 another port")
    log = tmp_path / "log.jsonl"
    env = hooked_env(log, AEGIS_NETMON_POLICY=str(policy))
    got = probe(tmp_path, env, [("a.b.github.test", server.port), ("github.test", server.port),
                                ("API.Allowed.Test", server.port)], names=True)
    # *.github.test: a.b.github.test yes, github.test itself no; the port rule is another port
    assert got == [REFUSED, "ok", "ok"]
    (deny,) = events(log, "deny")
    assert deny["host"] == "a.b.github.test" and deny["rule"] == "deny host *.github.test 0"


def test_a_thousand_rules(tmp_path: Path, server: RawHTTPServer) -> None:
    rules = []
    for i in range(998):
        rules.append(f"deny cidr 10.{i >> 8}.{i & 255}.0/24 0 r{i}" if i % 2 else
                     f"allow host h{i}.example.test 443 r{i}")
    rules += [f"deny cidr 127.0.0.0/30 {server.port} the one", "allow cidr 127.0.0.0/8 0 rest"]
    policy = write_policy(tmp_path / "policy", "deny", *rules)
    log = tmp_path / "log.jsonl"
    env = hooked_env(log, AEGIS_NETMON_POLICY=str(policy))
    other = RawHTTPServer(host="127.0.0.5")
    try:
        got = probe(tmp_path, env, [("127.0.0.1", server.port), ("127.0.0.5", other.port)])
        assert got == [REFUSED, "ok"]
        (deny,) = events(log, "deny")
        assert deny["rule"] == f"deny cidr 127.0.0.0/30 {server.port}"
        assert deny["label"] == "the one"
    finally:
        other.close()


UDP = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for port in map(int, sys.argv[1:]):
        try:
            s.sendto(b'ping', ('127.0.0.1', port))
            print('sent')
        except OSError as e:
            print(e.errno)
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        c.connect(('127.0.0.1', int(sys.argv[2])))
        print('connected')
    except OSError as e:
        print(e.errno)
""")


def test_udp_to_a_denied_port(tmp_path: Path) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(30)
    denied = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    denied.bind(("127.0.0.1", 0))
    denied.setblocking(False)
    try:
        ok_port, bad_port = rx.getsockname()[1], denied.getsockname()[1]
        policy = write_policy(tmp_path / "policy", "allow", f"deny cidr 127.0.0.1/32 {bad_port} q")
        log = tmp_path / "log.jsonl"
        out = run([sys.executable, "-c", UDP, str(ok_port), str(bad_port)],
                  hooked_env(log, AEGIS_NETMON_POLICY=str(policy)))
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["sent", str(REFUSED), str(REFUSED)]
        assert rx.recv(64) == b"ping"
        with pytest.raises(BlockingIOError):
            denied.recv(64)  # nothing was sent: the datagram never left
        denies = events(log, "deny")
        assert [(d["proto"], d["port"]) for d in denies] == [("udp", bad_port)] * 2
    finally:
        rx.close()
        denied.close()


def test_no_policy_file_changes_nothing(tmp_path: Path, server: RawHTTPServer) -> None:
    policy = tmp_path / "policy"  # named in no variable: the library never reads it
    write_policy(policy, "deny")
    env = hooked_env(tmp_path / "log.jsonl")
    assert "AEGIS_NETMON_POLICY" not in env
    assert probe(tmp_path, env, [("127.0.0.1", server.port)]) == ["ok"]
    assert events(tmp_path / "log.jsonl", "deny") == []


BAD = {
    "bad cidr": ("allow cidr 127.0.0.1/33 0 x", 4, "prefix length"),
    "port out of range": ("allow cidr 127.0.0.1/32 65536 x", 4, "port"),
    "unknown kind": ("allow url http://x 0 x", 4, "kind"),
    "bad host": ("allow host bad_name! 0 x", 4, "host name"),
}


@pytest.mark.parametrize("case", [*BAD, "bad magic", "missing file"])
def test_a_malformed_policy_fails_closed(tmp_path: Path, server: RawHTTPServer,
                                         case: str) -> None:
    path = tmp_path / "policy"
    if case == "bad magic":
        path.write_text("aegis-policy 2\ndefault allow\n")
        line, words = 1, "aegis-policy 1"
    elif case == "missing file":
        line, words = 0, "cannot be read"
    else:
        rule, line, words = BAD[case]
        write_policy(path, "allow", f"allow cidr 127.0.0.0/8 {server.port} fine", rule)
    log = tmp_path / "log.jsonl"
    env = hooked_env(log, AEGIS_NETMON_POLICY=str(path))
    out = run(["curl", "-sS", server.url("/")], env)
    assert out.returncode == 7 and server.connections == []
    (said,) = [x for x in out.stderr.splitlines() if x.startswith("aegis-mcp:")]
    assert str(path) in said and words in said and "denied" in said
    assert (f"line {line}:" in said) == bool(line)
    deny = events(log, "deny")[0]
    assert deny["default"] is True and str(path) in deny["label"]
    # Unix sockets are never subject to the policy, even failing closed.
    code = ("import socket, sys\nl = socket.socket(socket.AF_UNIX)\nl.bind(sys.argv[1])\n"
            "l.listen()\nc = socket.socket(socket.AF_UNIX)\nc.connect(sys.argv[1])\nprint('ok')")
    unix = run([sys.executable, "-c", code, str(tmp_path / "u.sock")], env)
    assert unix.stdout.strip() == "ok", unix.stderr


def test_a_child_without_the_policy_variable_is_a_gap(tmp_path: Path,
                                                      server: RawHTTPServer) -> None:
    """The policy is advisory: a child whose environment drops AEGIS_NETMON_POLICY is not bound
    by it, and the log says so."""
    policy = write_policy(tmp_path / "policy", "deny")
    log = tmp_path / "log.jsonl"
    code = textwrap.dedent(f"""
        import os, socket, subprocess, sys
        env = {{k: v for k, v in os.environ.items() if k != "AEGIS_NETMON_POLICY"}}
        child = ("import socket; socket.create_connection(('127.0.0.1', {server.port})).close();"
                 " print('child connected')")
        subprocess.run([sys.executable, "-c", child], env=env, check=True)
        try:
            socket.create_connection(('127.0.0.1', {server.port}))
        except ConnectionRefusedError:
            print('parent denied')
    """)
    out = run([sys.executable, "-c", code], hooked_env(log, AEGIS_NETMON_POLICY=str(policy)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["child connected", "parent denied"]
    (gap,) = events(log, "gap")
    assert "AEGIS_NETMON_POLICY" in gap["reason"]
    assert len(server.wait(1)) == 1
