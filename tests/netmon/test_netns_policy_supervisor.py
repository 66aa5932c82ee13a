"""A real supervisor in netns mode with a network policy and a generic agent command: the
kernel lets the allowed address:port through and refuses the rest at once (TCP and UDP), each
denial is a `deny` event of the log, and `aegis-mcp netmon policy LOG` lists it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_mcp.netmon import policy as netpolicy
from tests.support.host import NEEDS_ROOT, aegis_bin
from tests.support.netns_helpers import Outside, TcpServer, UdpEcho, read_events

pytestmark = [
    NEEDS_ROOT,
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft"),
]

AGENT = """
import json, os, socket, sys
addr, allowed, denied, udp, out = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]

def tcp(port):
    try:
        s = socket.create_connection((addr, port), timeout=20)
        s.sendall(b"0123456789")
        s.shutdown(socket.SHUT_WR)
        return f"ok {len(s.recv(100))}"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"

def datagram(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(20)
    s.connect((addr, port))
    try:
        s.send(b"hello")
        s.send(b"hello")
        return f"ok {len(s.recv(100))}"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"

info = {"allowed": tcp(allowed), "denied": tcp(denied), "udp": datagram(udp),
        "log": os.environ.get("AEGIS_NETMON_LOG")}
open(out, "w").write(json.dumps(info))
"""


@pytest.fixture
def place() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="aegis-nspolicy-"))
    os.chmod(path, 0o777)
    (path / "agent.py").write_text(AGENT)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_kernel_enforces_the_policy_of_a_netns_supervisor(
        aegis_env: dict[str, str], place: Path) -> None:
    with Outside() as out:
        allowed = out.run(lambda: TcpServer(out.addr, expect=10, reply=5))
        denied = out.run(lambda: TcpServer(out.addr, expect=10, reply=5))
        udp = out.run(lambda: UdpEcho(out.addr, reply_size=3, replies=4))
        try:
            run = subprocess.run(
                [aegis_bin(), "--netmon=netns", "--allow", f"{out.addr}:{allowed.port}", "--",
                 sys.executable, str(place / "agent.py"), out.addr, str(allowed.port),
                 str(denied.port), str(udp.port), str(place / "info.json")],
                env=aegis_env, cwd=place, capture_output=True, text=True, timeout=120,
                stdin=subprocess.DEVNULL)
        finally:
            allowed.close()
            denied.close()
            udp.close()
    assert run.returncode == 0, run.stderr
    line = next(ln for ln in run.stderr.splitlines() if "network policy (" in ln)
    assert line.endswith(netpolicy.enforcement("netns"))
    info = json.loads((place / "info.json").read_text())
    assert (info["allowed"], info["denied"], info["udp"]) == ("ok 5", "refused", "refused")
    assert allowed.received == [10] and denied.received == [] and udp.received == []
    log = Path(info["log"])
    # the supervisor stopped the capture before it exited: every denial is in the log now
    denials = [e for e in read_events(log) if e["event"] == "deny"]
    assert sorted((e["proto"], e["port"]) for e in denials) == sorted(
        [("tcp", denied.port), ("udp", udp.port)])
    for event in denials:
        assert event["addr"] == out.addr and event["mode"] == "netns"
        assert event["rule"] == "default deny" and event["default"] is True
    listed = subprocess.run([aegis_bin(), "netmon", "policy", str(log), "--json"],
                            env=aegis_env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    assert report["active"] is True and report["mode"] == "netns"
    assert report["denied"] == 2
    assert {(d["addr"], d["port"]) for d in report["recent_denials"]} == {
        (out.addr, denied.port), (out.addr, udp.port)}
    assert all("allow" in d["advice"] for d in report["recent_denials"])
    text = subprocess.run([aegis_bin(), "netmon", "policy", str(log)], env=aegis_env,
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and f"{out.addr}:{denied.port}" in text.stdout
