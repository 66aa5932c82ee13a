"""The network policy end to end in preload mode: a real supervisor compiles the rules its
flags give, its agent's hooks enforce them, a denial fails at once and reads as policy in the
log, in `aegis-mcp netmon policy` and in the `netmon_policy` tool the agent calls."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.host import aegis_bin
from tests.support.snippets.harness import RawHTTPServer

# Connects to each port given and prints what happened, then asks the injected server's
# netmon_policy tool (what the agent would do) through the official SDK client.
AGENT = """
import asyncio, errno, json, os, socket, sys, time
out = {}
for port in map(int, sys.argv[2:]):
    s = socket.socket()
    started = time.monotonic()
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        out[port] = s.recv(100).decode(errors="replace")
    except OSError as exc:
        out[port] = errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        s.close()
from mcp import Client, StdioServerParameters
params = StdioServerParameters(command=os.environ["TEST_AEGIS_MCP_BIN"], args=["--mcp-server"],
                               env=dict(os.environ))
async def ask():
    async with Client(params) as client:
        return (await client.call_tool("netmon_policy", {})).structured_content
out["tool"] = asyncio.run(asyncio.wait_for(ask(), 60))
open(sys.argv[1], "w").write(json.dumps(out))
"""


@pytest.fixture
def servers() -> Iterator[tuple[RawHTTPServer, RawHTTPServer]]:
    pair = (RawHTTPServer(), RawHTTPServer())
    yield pair
    for srv in pair:
        srv.close()


def test_preload_mode_enforces_the_policy_and_the_agent_reads_why(
        aegis_env: dict[str, str], tmp_path: Path,
        servers: tuple[RawHTTPServer, RawHTTPServer]) -> None:
    allowed, other = servers
    (tmp_path / "agent.py").write_text(AGENT)
    report = tmp_path / "report.json"
    env = {**aegis_env, "TEST_AEGIS_MCP_BIN": aegis_bin()}
    out = subprocess.run(
        [aegis_bin(), "--netmon=preload", "--allow", f"127.0.0.1:{allowed.port}", "--",
         sys.executable, str(tmp_path / "agent.py"), str(report), str(allowed.port),
         str(other.port)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180,
        stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    got = json.loads(report.read_text())
    assert got[str(allowed.port)].startswith("HTTP/1.1 200")  # allowed: it went through
    assert got[str(other.port)] == "ECONNREFUSED"  # denied: as a closed port, at once
    assert [c.peer for c in allowed.connections] == ["127.0.0.1"] and other.connections == []

    # the agent's own question: which rule, and what to ask the user
    tool = got["tool"]
    assert tool["active"] is True and tool["default"] == "deny"
    (denial,) = [d for d in tool["recent_denials"] if d["port"] == other.port]
    assert denial["addr"] == "127.0.0.1" and "--allow" in denial["advice"]

    # the log and the CLI say the same
    log = next(tmp_path.glob("run/netmon-*.jsonl"))
    denies = [json.loads(line) for line in log.read_text().splitlines()
              if '"deny"' in line]
    assert len(denies) == 1 and denies[0]["port"] == other.port
    assert denies[0]["default"] is True and denies[0]["mode"] == "preload"
    shown = subprocess.run([aegis_bin(), "netmon", "policy", str(log)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"127.0.0.1:{other.port}" in shown.stdout
