"""The agent's aegis-mcp MCP server: its start as a supervisor injects it (a relay to the
supervisor's warm server), its cold start, and the time of a server_status call.

Side by side in one run, alternating, median of 20 each, the time from process start to the
answer to `initialize` of: the injected server (the relay, with the supervisor's warm server
up), `aegis-mcp --mcp-server` started cold (what the relay falls back to), and a one-tool
server written with the same SDK (the bare cost of any MCP server). Then the relay's own
memory (USS: what it alone holds; RSS) and the median round trip of 200 `server_status` calls
through it. Goals: the injected server answers within 50 ms and holds under 15 MB of its own;
the cold start is at most 1.3x the bare server's; calls under 5 ms median.

    python bench/bench_mcp_server.py [--starts 20] [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from aegis_mcp.mcp.injection import server_command

BARE = """
from mcp.server.mcpserver import MCPServer
server = MCPServer(name="bare")
@server.tool()
def ping() -> str:
    '''Answer pong.'''
    return "pong"
server.run("stdio")
"""

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "bench", "version": "0"}}}


def send(proc: subprocess.Popen[bytes], msg: dict) -> None:
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(msg).encode() + b"\n")
    proc.stdin.flush()


def receive(proc: subprocess.Popen[bytes], want_id: int) -> dict:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("server closed stdout")
        msg = json.loads(line)
        if msg.get("id") == want_id:
            return msg


def cold_start(cmd: list[str], env: dict[str, str], memory: list[tuple[int, int]] | None = None
               ) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    send(proc, INIT)
    receive(proc, 1)
    elapsed = time.perf_counter() - t0
    if memory is not None:
        info = psutil.Process(proc.pid).memory_full_info()
        memory.append((info.uss, info.rss))
    proc.stdin.close()  # type: ignore[union-attr]
    proc.wait(10)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    cold = server_command()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        bare_script = tmp / "bare.py"
        bare_script.write_text(BARE)
        bare = [sys.executable, str(bare_script)]
        env = {**os.environ, "AEGIS_RUNTIME_DIR": str(tmp / "run"),
               "AEGIS_STATE_DIR": str(tmp / "state"), "AEGIS_CONFIG": str(tmp / "none.toml")}
        env.pop("SUDO_UID", None)
        sup = subprocess.Popen([str(Path(sys.executable).parent / "aegis-mcp"), "--", "sleep",
                                "600"], env=env, stdin=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        sock = tmp / "run" / f"supervisor-{sup.pid}.sock"
        warm = tmp / "run" / f"mcp-{sup.pid}.sock"
        for _ in range(500):
            if sock.exists() and warm.exists():
                break
            time.sleep(0.02)
        ours = server_command(warm)  # what the supervisor injects
        # As injected: with a supervisor to say hello to, like every start under aegis-mcp.
        ours_env = {**env, "AEGIS_CONTROL": str(sock), "AEGIS_AGENT_START": "1"}
        for cmd in (ours, cold, bare):  # the page cache, and the warm server's own import
            cold_start(cmd, ours_env)
        t_ours, t_cold, t_bare, memory = [], [], [], []
        for _ in range(args.starts):
            t_ours.append(cold_start(ours, ours_env, memory))
            t_cold.append(cold_start(cold, ours_env))
            t_bare.append(cold_start(bare, env))

        server = subprocess.Popen(ours, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, env=ours_env)
        send(server, INIT)
        receive(server, 1)
        send(server, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        calls = []
        for i in range(args.calls):
            t0 = time.perf_counter()
            send(server, {"jsonrpc": "2.0", "id": 100 + i, "method": "tools/call",
                          "params": {"name": "server_status", "arguments": {}}})
            answer = receive(server, 100 + i)
            calls.append(time.perf_counter() - t0)
            assert not answer["result"].get("isError"), answer
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(10)
        sup.terminate()
        sup.wait(10)
    mo, mc, mb = (statistics.median(t) for t in (t_ours, t_cold, t_bare))
    uss = statistics.median(m[0] for m in memory) / 2**20
    rss = statistics.median(m[1] for m in memory) / 2**20
    print(f"start to initialize answer, median of {args.starts}:")
    print(f"  injected (relay to the warm server) {mo * 1000:.1f} ms   goal <= 50 ms")
    print(f"  cold aegis-mcp --mcp-server {mc * 1000:.0f} ms, bare one-tool server "
          f"{mb * 1000:.0f} ms, ratio {mc / mb:.2f}   goal <= 1.30")
    print(f"  injected / cold: {mo / mc:.3f}")
    print(f"injected server's own memory, median: {uss:.1f} MB USS ({rss:.1f} MB RSS)   "
          "goal < 15 MB")
    print(f"server_status call (with a supervisor), median of {args.calls}: "
          f"{statistics.median(calls) * 1000:.2f} ms   goal < 5 ms")


if __name__ == "__main__":
    main()
