"""The supervisor's start and its own share of a restart, and its CPU use while idle.

1. From the supervisor's exec to the agent's exec (a tiny C program), with and without the
   watchdog, interleaved: median of 20 (--starts). Goal: the watchdog adds under 5 ms. Also
   the watchdog's own CPU time to get ready and its memory.
2. From the restart request (sent on the control socket) to the new agent's exec, with an agent
   that exits at once on SIGINT: median of 20. Goal: under 100 ms.
3. CPU seconds the supervisor (and its watchdog) use over 60 s (--idle-seconds) with an idle
   agent. Goal: none measurable (no busy polling).

    python bench/bench_supervisor.py [--starts 20] [--restarts 20] [--idle-seconds 60]
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

from aegis_mcp.supervise import control

HERE = Path(__file__).resolve().parent
# The supervisor as `aegis-mcp` runs it, with the watchdog left out when asked ("off"): the
# start raises as a failed spawn would, and the supervisor goes on without one.
LAUNCH = (
    "import sys\n"
    "from aegis_mcp import cli\n"
    "from aegis_mcp.supervise import watchdog\n"
    "from aegis_mcp.errors import AegisError\n"
    "if sys.argv.pop(1) == 'off':\n"
    "    def off(*_args, **_kwargs):\n"
    "        raise AegisError('watchdog left out by the benchmark')\n"
    "    watchdog.Watchdog.start = off\n"
    "sys.exit(cli.main())\n"
)


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


def one_start(agent: Path, env: dict[str, str], log: Path, watchdog: bool
              ) -> tuple[float, subprocess.Popen[bytes], psutil.Process | None]:
    """ms from the supervisor's exec to the agent's; the supervisor is left running."""
    n = len(starts(log))
    cmd = [sys.executable, "-c", LAUNCH, "on" if watchdog else "off", "--", str(agent)]
    t0 = time.time_ns()
    sup = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    exec_ns = wait_starts(log, n + 1)[-1]
    dog = next((p for p in psutil.Process(sup.pid).children() if "aegis_mcp.supervise.watchdog" in
                " ".join(p.cmdline())), None)
    return (exec_ns - t0) / 1e6, sup, dog


def bench_start(agent: Path, env: dict[str, str], log: Path, n: int) -> None:
    times: dict[bool, list[float]] = {True: [], False: []}
    dog_cpu, dog_rss = [], []
    for i in range(2 * n):
        watchdog = i % 2 == 0
        ms, sup, dog = one_start(agent, env, log, watchdog)
        times[watchdog].append(ms)
        if dog is not None:
            time.sleep(0.3)  # ready: blocked in read() on its pipe
            # ns on a CPU (schedstat), finer than the clock ticks of cpu_times()
            dog_cpu.append(int(Path(f"/proc/{dog.pid}/schedstat").read_text().split()[0]) / 1e6)
            dog_rss.append(dog.memory_info().rss / 2**20)
        sup.terminate()
        sup.wait(10)
    with_dog, without = statistics.median(times[True]), statistics.median(times[False])
    print(f"supervisor start (exec -> agent exec), {n} starts each, interleaved:")
    print(f"  with the watchdog    median {with_dog:.1f} ms (min {min(times[True]):.1f})")
    print(f"  without the watchdog median {without:.1f} ms (min {min(times[False]):.1f})")
    print(f"  the watchdog adds {with_dog - without:+.1f} ms ({with_dog / without:.2f}x)   "
          "goal < 5 ms")
    print(f"  the watchdog itself: {statistics.median(dog_cpu):.1f} ms of CPU to get ready (in "
          f"parallel with the agent's start), {statistics.median(dog_rss):.1f} MB RSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=20)
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
        bench_start(agent, env, log, args.starts)
        log.unlink()
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
            procs = [psutil.Process(sup.pid), *psutil.Process(sup.pid).children()]
            procs = [p for p in procs if p.pid == sup.pid or "aegis_mcp.supervise.watchdog" in
                     " ".join(p.cmdline())]  # the supervisor and its watchdog, not the agent
            time.sleep(1)
            before = [p.cpu_times() for p in procs]
            time.sleep(args.idle_seconds)
            after = [p.cpu_times() for p in procs]
            idle_cpu = sum((a.user - b.user) + (a.system - b.system)
                           for a, b in zip(after, before, strict=True))
        finally:
            sup.terminate()
            sup.wait(10)
    print(f"restart share (request -> new agent exec), {args.restarts} restarts:")
    print(f"  median {statistics.median(shares):.1f} ms, min {min(shares):.1f} ms, "
          f"max {max(shares):.1f} ms   goal < 100 ms")
    print(f"idle supervisor and watchdog CPU over {args.idle_seconds:g} s: {idle_cpu:.3f} s "
          f"({idle_cpu / args.idle_seconds * 100:.3f}% of a core)   goal: not measurable")


if __name__ == "__main__":
    main()
