"""The supervisor's own share of a restart, and its CPU use while idle.

1. From the restart request (sent on the control socket) to the new agent's exec, with an agent
   (a tiny C program) that exits at once on SIGINT: median of 20. Goal: under 100 ms.
2. CPU seconds the supervisor uses over 60 s (--idle-seconds) with an idle agent. Goal: none
   measurable (no busy polling).

    python bench/bench_supervisor.py [--restarts 20] [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from aegis_mcp import control

HERE = Path(__file__).resolve().parent


def build_agent(tmp: Path) -> Path:
    exe = tmp / "bench-agent"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "_agent.c")], check=True)
    return exe


def starts(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def wait_starts(log: Path, n: int, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(s := starts(log)) >= n:
            return s
        time.sleep(0.001)
    raise SystemExit(f"agent did not start {n} times")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        agent = build_agent(tmp)
        log = tmp / "starts"
        env = {**os.environ, "AEGIS_RUNTIME_DIR": str(tmp / "run"),
               "AEGIS_CONFIG": str(tmp / "none.toml"), "BENCH_AGENT_LOG": str(log)}
        env.pop("SUDO_UID", None)
        aegis = Path(sys.executable).parent / "aegis-mcp"
        sup = subprocess.Popen([str(aegis), "--max-restarts", "1000", "--", str(agent)],
                               env=env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_starts(log, 1)
            sock = control.socket_path(tmp / "run", sup.pid)
            shares = []
            for i in range(args.restarts):
                time.sleep(0.05)
                t0 = time.time_ns()
                control.request(sock, {"op": "restart", "reason": "bench"})
                exec_ns = wait_starts(log, i + 2)[-1]
                shares.append((exec_ns - t0) / 1e6)
            proc = psutil.Process(sup.pid)
            time.sleep(1)
            before = proc.cpu_times()
            time.sleep(args.idle_seconds)
            after = proc.cpu_times()
            idle_cpu = (after.user - before.user) + (after.system - before.system)
        finally:
            sup.terminate()
            sup.wait(10)
    print(f"restart share (request -> new agent exec), {args.restarts} restarts:")
    print(f"  median {statistics.median(shares):.1f} ms, min {min(shares):.1f} ms, "
          f"max {max(shares):.1f} ms   goal < 100 ms")
    print(f"idle supervisor CPU over {args.idle_seconds:g} s: {idle_cpu:.3f} s "
          f"({idle_cpu / args.idle_seconds * 100:.3f}% of a core)   goal: not measurable")


if __name__ == "__main__":
    main()
