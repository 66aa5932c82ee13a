"""The supervisor's --netmon modes, end to end: the agent's traffic lands in the log that the
MCP server's netmon tools read (AEGIS_NETMON_LOG)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pexpect
import pytest

from aegis_mcp.netmon import summary as netsummary
from aegis_mcp.supervise import control
from tests.support.host import aegis_bin
from tests.support.netns_helpers import pids_in
from tests.support.supervisor_helpers import FakeAgentWorld, inotify_watches
from tests.support.wait import wait_for

AGENT = """
import json, os, subprocess, sys, urllib.request
info = {"uid": os.getuid(), "log": os.environ.get("AEGIS_NETMON_LOG"),
        "netns": subprocess.run(["ip", "netns", "identify", str(os.getpid())],
                                capture_output=True, text=True).stdout.strip()}
url = sys.argv[2] if len(sys.argv) > 2 else None
if url and "GATEWAY" in url:  # inside a namespace: the host is the default route's gateway
    import socket, struct
    for line in open("/proc/net/route").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            gateway = socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
    url = url.replace("GATEWAY", gateway)
    info["url"] = url
if url:
    try:
        info["body"] = urllib.request.urlopen(url, timeout=10).read().decode()
    except OSError as exc:
        info["error"] = str(exc)
if os.environ.get("AEGIS_CONTROL"):
    from aegis_mcp.supervise import control
    status = control.request(os.environ["AEGIS_CONTROL"], {"op": "status"})["status"]
    info["host_access"] = status["netns_host_access"]
open(sys.argv[1], "w").write(json.dumps(info))
"""


class Hello(BaseHTTPRequestHandler):
    requests = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).requests += 1
        body = b"hello " * 100
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[ThreadingHTTPServer]:
    # 0.0.0.0: reachable on loopback and from the test's own namespaces through their veth
    server = ThreadingHTTPServer(("0.0.0.0", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()  # its port is free again now, not when the object is collected


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="aegis-netmon-"))
    os.chmod(path, 0o777)
    shutil.copy(__file__, path / "unused")  # keeps the dir non-empty for debugging
    (path / "agent.py").write_text(AGENT)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def run(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([aegis_bin(), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_preload_mode_records_the_agents_connections(
        aegis_env: dict[str, str], shared_dir: Path, http_server: ThreadingHTTPServer) -> None:
    url = f"http://127.0.0.1:{http_server.server_address[1]}/"
    out = run(aegis_env, "--netmon=preload", "--", sys.executable, str(shared_dir / "agent.py"),
              str(shared_dir / "info.json"), url, cwd=shared_dir)
    assert out.returncode == 0, out.stderr
    info = json.loads((shared_dir / "info.json").read_text())
    assert info["body"] == "hello " * 100
    log = Path(info["log"])
    evs = [e for e in events(log) if e.get("port") == http_server.server_address[1]]
    assert any(e["event"] == "connect" and e["addr"] == "127.0.0.1" for e in evs)
    closes = [e for e in evs if e["event"] in ("close", "totals")]
    assert closes and max(e["recv"] for e in closes) >= 600
    # The supervisor left the summary current: netmon_status reads it, not the whole log.
    summary = json.loads(netsummary.summary_path(log).read_text())
    assert summary["offset"] == log.stat().st_size
    assert netsummary.status(log)["connections"] >= 1


def test_preload_mode_leaves_aegis_mcps_own_sockets_out(world: FakeAgentWorld) -> None:
    """The injected MCP server's relay to the warm server, its hello to the supervisor's
    control socket: aegis-mcp's plumbing, not the agent's traffic (netns mode never sees them
    either). Here the fake agent starts the injected server from --mcp-config, preloaded."""
    child = world.spawn("--netmon=preload", "fake")
    try:
        child.expect("READY")
        run_dir = Path(world.env["AEGIS_RUNTIME_DIR"])
        sock = next(run_dir.glob("supervisor-*.sock"))
        wait_for(lambda: control.request(sock, {"op": "status"})["status"]["mcp_servers_seen"],
                 30, "the injected MCP server's hello")
        server = next(c for c in world.starts()[0]["children"] if c["name"] == "aegis-mcp")
        log = next(run_dir.glob("netmon-*.jsonl"))
        out = run(world.env, "netmon", str(log), cwd=world.root)
    finally:
        child.sendline("exit 0")
        child.expect(pexpect.EOF)
        child.close()
    assert server["pid"]  # the server ran under the hooks (it inherited LD_PRELOAD)
    assert not [e for e in (events(log) if log.exists() else [])
                if str(e.get("addr", "")).startswith(str(run_dir))]
    assert out.returncode == 0 and ".sock" not in out.stdout and "0 connections" in out.stdout


def test_hooks_stay_silent_in_netns_mode(tmp_path: Path,
                                         http_server: ThreadingHTTPServer) -> None:
    """Loaded only for the config redirect in netns mode, the hooks must not record too (the
    capture already does: each connection would count twice)."""
    from aegis_mcp.paths import hooks_library

    url = f"http://127.0.0.1:{http_server.server_address[1]}/"
    fetch = f"import urllib.request; urllib.request.urlopen({url!r}).read()"
    logs = {}
    for mode in ("preload", "netns"):
        logs[mode] = tmp_path / f"{mode}.jsonl"
        env = {**os.environ, "LD_PRELOAD": str(hooks_library()),
               "AEGIS_NETMON_LOG": str(logs[mode]), "AEGIS_NETMON_MODE": mode}
        subprocess.run([sys.executable, "-c", fetch], env=env, check=True, timeout=60)
    assert any(e["event"] == "connect" for e in events(logs["preload"]))
    assert not logs["netns"].exists() or not events(logs["netns"])


def test_netns_forward_outside_netns_mode_is_ignored_with_a_word(
        aegis_env: dict[str, str], tmp_path: Path) -> None:
    out = run(aegis_env, "--netmon=preload", "--netns-forward", "8080", "--", "true",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "--netns-forward is for --netmon=netns only: ignored" in out.stderr
    out = run(aegis_env, "--netmon=preload", "--netns-host-access", "--", "true", cwd=tmp_path)
    assert out.returncode == 0 and "--netns-host-access is for --netmon=netns only" in out.stderr
    bad = run(aegis_env, "--netns-forward", "70000", "--", "true", cwd=tmp_path)
    assert bad.returncode == 2 and "give a TCP port from 1 to 65535" in bad.stderr


def test_preload_refuses_a_static_binary(aegis_env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "static.c"
    src.write_text("int main(void){return 0;}\n")
    exe = tmp_path / "static-agent"
    built = subprocess.run(["gcc", "-static", "-o", str(exe), str(src)], capture_output=True)
    if built.returncode != 0:
        pytest.skip("no static libc to build a static binary")
    out = run(aegis_env, "--netmon=preload", "--", str(exe), cwd=tmp_path)
    assert out.returncode == 1
    assert "statically linked" in out.stderr and "--netmon=netns" in out.stderr
    assert "Traceback" not in out.stderr


def test_preload_refuses_an_agent_known_to_be_static(aegis_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    # codex's `codex` is a Node launcher, visible to LD_PRELOAD; its work happens in the static
    # binary it starts. The profile knows; point the profile at a stand-in executable.
    Path(aegis_env["AEGIS_CONFIG"]).write_text('[agents.codex]\ncommand = ["true"]\n')
    out = run(aegis_env, "--netmon=preload", "codex", cwd=tmp_path)
    assert out.returncode == 1
    assert "codex does its networking in a statically linked binary" in out.stderr
    assert "--netmon=netns" in out.stderr


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="netns mode needs root (CI is root)")


@needs_root
def test_netns_mode_keeps_the_agent_off_the_hosts_services(
        aegis_env: dict[str, str], shared_dir: Path, throwaway_user: pwd.struct_passwd,
        http_server: ThreadingHTTPServer) -> None:
    """The attack: a host service on 0.0.0.0, reached through the namespace's gateway (the
    host end of the veth). Refused at once, the service sees nothing, and the agent (and its
    control socket) works as before."""
    env = {**aegis_env, "SUDO_UID": str(throwaway_user.pw_uid),
           "SUDO_GID": str(throwaway_user.pw_gid), "AEGIS_RUNTIME_DIR": str(shared_dir / "run")}
    Hello.requests = 0
    port = http_server.server_address[1]
    out = run(env, "--netmon=netns", "--", sys.executable, str(shared_dir / "agent.py"),
              str(shared_dir / "info.json"), f"http://GATEWAY:{port}/", cwd=shared_dir)
    assert out.returncode == 0, out.stderr
    assert "--netns-host-access" not in out.stderr
    info = json.loads((shared_dir / "info.json").read_text())
    assert info["netns"].startswith("aegis-") and info["uid"] == throwaway_user.pw_uid
    assert "body" not in info and "Connection refused" in info["error"]
    assert info["host_access"] is False and Hello.requests == 0


@needs_root
def test_netns_mode_runs_the_agent_inside_as_the_sudo_user_and_cleans_up(
        aegis_env: dict[str, str], shared_dir: Path, throwaway_user: pwd.struct_passwd,
        http_server: ThreadingHTTPServer) -> None:
    env = {**aegis_env, "SUDO_UID": str(throwaway_user.pw_uid),
           "SUDO_GID": str(throwaway_user.pw_gid), "AEGIS_RUNTIME_DIR": str(shared_dir / "run"),
           "ANTHROPIC_BASE_URL": "http://127.0.0.1:9/"}
    port = http_server.server_address[1]
    # The host's own service is out of reach unless the user says otherwise, with a warning.
    out = run(env, "--netmon", "--netns-host-access", "--", sys.executable,
              str(shared_dir / "agent.py"), str(shared_dir / "info.json"),
              f"http://GATEWAY:{port}/", cwd=shared_dir)
    assert out.returncode == 0, out.stderr
    assert "using netns mode" in out.stderr
    assert ("warning: --netns-host-access: the agent can reach every service of this machine"
            in out.stderr)
    assert ("ANTHROPIC_BASE_URL=http://127.0.0.1:9/: the host's 127.0.0.1:9 is forwarded"
            in out.stderr)
    info = json.loads((shared_dir / "info.json").read_text())
    assert info["uid"] == throwaway_user.pw_uid
    assert info["netns"].startswith("aegis-")
    assert info.get("body") == "hello " * 100, info
    assert info["host_access"] is True
    # The capture on the host end of the veth recorded the connection with its bytes, in the
    # same format (and the same summary) as preload mode.
    log = Path(info["log"])
    closes = [e for e in events(log) if e["event"] == "close" and e.get("port") == port]
    assert closes and closes[0]["source"] == "netns" and closes[0]["recv"] >= 600
    assert netsummary.status(log)["connections"] >= 1
    # torn down (only ours is looked for: other runs may have namespaces of their own now)
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert info["netns"] not in after.split()


@needs_root
def test_netns_mode_forwards_the_host_loopback_ports_the_agent_needs(
        aegis_env: dict[str, str], shared_dir: Path, throwaway_user: pwd.struct_passwd) -> None:
    # Two servers on the host's loopback only: one named by a URL in the environment (as an
    # API base URL would be), one by --netns-forward. Inside the namespace the agent reaches
    # both at 127.0.0.1, and the capture records both connections.
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Hello) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api, extra = (srv.server_address[1] for srv in servers)
        env = {**aegis_env, "SUDO_UID": str(throwaway_user.pw_uid),
               "SUDO_GID": str(throwaway_user.pw_gid),
               "AEGIS_RUNTIME_DIR": str(shared_dir / "run"),
               "MY_API_BASE_URL": f"http://localhost:{api}", "OTHER_URL": "http://[::1]:7/"}
        fetch = ("import json, os, sys, urllib.request\n"
                 "from aegis_mcp.supervise import control\n"
                 "for port in sys.argv[1:]:\n"
                 "    print(urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=10)"
                 ".read().decode()[:6])\n"
                 "status = control.request(os.environ['AEGIS_CONTROL'], {'op': 'status'})\n"
                 "print(json.dumps(status['status']['netns_forwards']))\n")
        out = run(env, "--netmon=netns", "--netns-forward", str(extra), "--",
                  sys.executable, "-c", fetch, str(api), str(extra), cwd=shared_dir)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert out.returncode == 0, out.stderr
    lines = [line.strip() for line in out.stdout.splitlines()]
    assert lines[:2] == ["hello", "hello"]
    # what server_status tells the agent about it
    assert sorted(json.loads(lines[2])) == sorted([f"127.0.0.1:{api}", f"127.0.0.1:{extra}"])
    assert (f"MY_API_BASE_URL=http://localhost:{api}: the host's 127.0.0.1:{api} is "
            "forwarded into the network namespace") in out.stderr
    assert f"--netns-forward {extra}: the host's 127.0.0.1:{extra}" in out.stderr
    assert "OTHER_URL=http://[::1]:7/ points at this host's IPv6 loopback" in out.stderr
    log = next((shared_dir / "run").rglob("netmon-*.jsonl"))
    closes = {e["port"]: e for e in events(log) if e["event"] == "close"}
    assert {api, extra} <= set(closes)
    # named by the address the agent used, not by the link's host end
    assert closes[api]["host"] == closes[extra]["host"] == "127.0.0.1"


@needs_root
def test_netns_mode_names_the_forward_for_a_refused_host_port(
        aegis_env: dict[str, str], shared_dir: Path, throwaway_user: pwd.struct_passwd) -> None:
    """The agent asks for 127.0.0.1:PORT, where this host serves, three times: inside its
    namespace that is refused. The supervisor's terminal says once which option lets it
    through, `aegis-mcp netmon` counts the failures and shows the hint."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    env = {**aegis_env, "SUDO_UID": str(throwaway_user.pw_uid),
           "SUDO_GID": str(throwaway_user.pw_gid), "AEGIS_RUNTIME_DIR": str(shared_dir / "run")}
    code = ("import socket, sys\n"
            "for _ in range(3):\n"
            "    print(socket.socket().connect_ex(('127.0.0.1', int(sys.argv[1]))))\n")
    try:
        out = run(env, "--netmon=netns", "--", sys.executable, "-c", code, str(port),
                  cwd=shared_dir)
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 0, out.stderr
    import errno

    assert out.stdout.split() == [str(errno.ECONNREFUSED)] * 3
    assert out.stderr.count(f"--netns-forward {port} lets the agent reach it") == 1, out.stderr
    log = next((shared_dir / "run").rglob("netmon-*.jsonl"))
    shown = run(env, "netmon", str(log), cwd=shared_dir)
    assert "0 connections (3 failed," in shown.stdout, shown.stdout
    assert f"hint: 127.0.0.1:{port} refused" in shown.stdout
    status = json.loads(run(env, "netmon", "--json", str(log), cwd=shared_dir).stdout)
    assert [f"--netns-forward {port}" in h for h in status["hints"]] == [True]


def test_netns_mode_without_root_says_to_use_sudo(aegis_env: dict[str, str],
                                                  tmp_path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam("nobody")
        cmd = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
               aegis_bin(), "--netmon=netns", "--", "true"]
        env = {**aegis_env, "AEGIS_RUNTIME_DIR": tempfile.mkdtemp(prefix="aegis-nobody-")}
        os.chown(env["AEGIS_RUNTIME_DIR"], user.pw_uid, user.pw_gid)
        env["AEGIS_CONFIG"] = "/nonexistent/config.toml"
    else:
        cmd = [aegis_bin(), "--netmon=netns", "--", "true"]
        env = aegis_env
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd="/",
                             stdin=subprocess.DEVNULL)
    finally:
        if env is not aegis_env:
            shutil.rmtree(env["AEGIS_RUNTIME_DIR"], ignore_errors=True)
    assert out.returncode == 1
    assert "needs root" in out.stderr and "--netmon=preload" in out.stderr
    assert "Traceback" not in out.stderr


@needs_root
def test_netns_torn_down_when_the_supervisor_is_terminated(aegis_env: dict[str, str],
                                                           tmp_path: Path) -> None:
    import signal
    import time

    sup = subprocess.Popen([aegis_bin(), "--netmon=netns", "--", "sleep", "60"], env=aegis_env,
                           cwd=tmp_path, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    name = f"aegis-{sup.pid}"
    deadline = time.monotonic() + 30
    while name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                     text=True).stdout:
        assert time.monotonic() < deadline and sup.poll() is None, "no namespace appeared"
        time.sleep(0.1)
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 128 + signal.SIGTERM
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert name not in after.split()
    assert name not in subprocess.run(["nft", "list", "tables"], capture_output=True,
                                      text=True).stdout.replace("aegis_", "aegis-")


@needs_root
def test_watch_restarts_an_agent_in_netns_mode(aegis_env: dict[str, str],
                                               tmp_path: Path) -> None:
    # The watcher starts after the namespace is made (pyroute2 forks this process then), and
    # a change still restarts the agent, in a namespace again.
    import signal

    watched = tmp_path / "watched"
    watched.mkdir()
    sup = subprocess.Popen([aegis_bin(), "--netmon=netns", "--watch", str(watched), "--", "sh",
                            "-c", "ip netns identify $$; exec sleep 60"], env=aegis_env,
                           cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        assert sup.stdout is not None
        assert sup.stdout.readline() == f"aegis-{sup.pid}\n"
        wait_for(lambda: inotify_watches(sup.pid), 20, "the supervisor's inotify watch")
        (watched / "server.py").write_text("changed")
        assert sup.stdout.readline() == f"aegis-{sup.pid}\n"  # the agent, started again
        sup.send_signal(signal.SIGTERM)
        _, err = sup.communicate(timeout=30)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
    assert sup.returncode == 128 + signal.SIGTERM
    assert "restarting" in err and "files changed: watched/server.py" in err, err


@needs_root
def test_netns_cleanup_stops_what_a_killed_supervisor_left_inside(
        aegis_env: dict[str, str], tmp_path: Path, throwaway_user: pwd.struct_passwd,
        shared_dir: Path) -> None:
    """kill -9 of the supervisor: its teardown never runs. `netns cleanup` stops the agent and
    its children still inside (here one that ignores SIGTERM), then removes the namespace."""
    import time

    env = {**aegis_env, "SUDO_UID": str(throwaway_user.pw_uid),
           "SUDO_GID": str(throwaway_user.pw_gid), "AEGIS_RUNTIME_DIR": str(shared_dir / "run")}
    sup = subprocess.Popen([aegis_bin(), "--netmon=netns", "--", "sh", "-c",
                            "trap '' TERM; sleep 300 & echo started; wait"], env=env,
                           cwd=shared_dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    name = f"aegis-{sup.pid}"
    try:
        assert sup.stdout is not None and sup.stdout.readline() == "started\n"
        inode = os.stat(f"/run/netns/{name}")

        def inside() -> list[int]:
            return pids_in(inode)

        assert len(inside()) >= 2  # the agent's shell and its sleep
        sup.kill()
        sup.wait(10)
        out = run(env, "netns", "cleanup", "--json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        deadline = time.monotonic() + 10
        while inside():  # a watchdog of the supervisor may also be at work: bounded wait
            assert time.monotonic() < deadline, f"left inside: {inside()}"
            time.sleep(0.1)
        assert not Path(f"/run/netns/{name}").exists()
        mine = [r for r in json.loads(out.stdout)["removed"] if r["name"] == name]
        if mine:  # removed by this cleanup (not already by the supervisor's own watchdog)
            assert mine[0]["processes_stopped"] and mine[0]["processes_left_inside"] == []
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
        subprocess.run([aegis_bin(), "netns", "cleanup"], env=env, capture_output=True,
                       timeout=60)
