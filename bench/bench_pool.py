"""The agent pool at scale: N fake headless agents spawned at once (default 50, each in its own
directory so no lock serialises them, a pool as large as N so all run together).

Prints, in one run:
  - spawn latency (one `Pool.spawn` call, what agent_spawn does): median and p95;
  - all complete, none lost;
  - await wake-up delay: from the fake agent's own last instant (a timestamp in its result
    text) to the return of an `await_agent` blocked on it, one awaiting thread per agent, the
    agents' ends spread over a few seconds: median and p95 (goal: median under 100 ms), and
    the same for one agent alone;
  - CPU seconds used by the pool's own processes (the runners) during a window while every
    agent sleeps (goal: close to zero), and by the awaiting threads over the same window.

    python bench/bench_pool.py [--agents 50] [--quiet-window 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FAKE = Path(__file__).resolve().parents[1] / "tests" / "support" / "fake_headless_agent.py"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_secs(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--quiet-window", type=float, default=3.0,
                        help="seconds of the CPU measurement while all agents sleep")
    args = parser.parse_args()
    n = args.agents

    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ.update(AEGIS_STATE_DIR=str(tmp / "state"), AEGIS_RUNTIME_DIR=str(tmp / "run"),
                          AEGIS_CONFIG=str(tmp / "config.toml"))
        os.environ.pop("CLAUDECODE", None)
        (tmp / "config.toml").write_text(
            f'[agents.claude]\ncommand = ["{sys.executable}", "{FAKE}"]\n\n'
            f"[pool]\nmax_agents = {n}\nstop_grace_secs = 1\n")
        from aegis_mcp.pool.pool import Pool

        pool = Pool()
        workdirs = []
        for i in range(n):
            (tmp / f"w{i}").mkdir()
            workdirs.append(str(tmp / f"w{i}"))

        # Agents sleep long enough for every runner to be up and quiet, then end one after
        # the other, 60 ms apart.
        base = 6.0 + n * 0.08
        latencies: list[float] = []
        ids: list[str] = []
        t_spawn = time.monotonic()
        for i in range(n):
            t0 = time.perf_counter()
            ids.append(pool.spawn(f"sleep={base + i * 0.06:.2f} stamp", "claude",
                                  workdirs[i])["agent_id"])
            latencies.append(time.perf_counter() - t0)

        woke: dict[str, float] = {}
        results: dict[str, dict[str, Any]] = {}

        def waiter(agent_id: str) -> None:
            p = Pool()
            status = p.await_agent(agent_id, 600)
            woke[agent_id] = time.time()
            results[agent_id] = status
            p.close()

        threads = [threading.Thread(target=waiter, args=(i,)) for i in ids]
        for t in threads:
            t.start()

        def running() -> list[dict[str, Any]]:
            return [a for a in pool.list(limit=n) if a["state"] == "running" and a["iterations"]
                    == 0 and a["last_event"]]
        # Wait (bounded) until every agent has started and written its init event.
        deadline = time.monotonic() + base - args.quiet_window - 0.5
        while len(up := running()) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        all_up = time.monotonic() - t_spawn
        runner_pids = [a["runner_pid"] for a in up]
        quiet_ok = len(up) == n
        time.sleep(0.3)  # let the last runner finish its start-up
        before = {p: cpu_secs(p) for p in runner_pids}
        self_before = time.process_time()
        time.sleep(args.quiet_window)
        runner_cpu = sum(cpu_secs(p) - before[p] for p in runner_pids)
        waiter_cpu = time.process_time() - self_before

        for t in threads:
            t.join(600)
        states = [results[i]["state"] for i in ids]
        delays = [woke[i] - float(results[i]["result"].rsplit("t=", 1)[1]) for i in ids
                  if results[i]["state"] == "completed"]
        stats = pool.stats()

        solo_delays, solo_spawns = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            solo = pool.spawn("sleep=0.5 stamp", "claude", workdirs[0])["agent_id"]
            solo_spawns.append(time.perf_counter() - t0)
            s = pool.await_agent(solo, 60)
            solo_delays.append(time.time() - float(s["result"].rsplit("t=", 1)[1]))

    print(f"agents: {n} spawned at once on {os.cpu_count()} cores (pool size {n})")
    print(f"  completed {states.count('completed')}/{n}, lost {states.count('lost')}, "
          f"failed {states.count('failed')}  (store: {stats['completed']} completed, "
          f"{stats['lost']} lost)")
    print(f"  spawn latency: median {statistics.median(latencies) * 1000:.1f} ms, "
          f"p95 {pct(latencies, 0.95) * 1000:.1f} ms; all {n} runners up after {all_up:.1f} s; "
          f"one spawn on an idle pool: median {statistics.median(solo_spawns) * 1000:.1f} ms")
    med = statistics.median(delays)
    print(f"  await wake-up after the agent's end ({len(delays)} agents ending 60 ms apart): "
          f"median {med * 1000:.1f} ms, p95 {pct(delays, 0.95) * 1000:.1f} ms, "
          f"max {max(delays) * 1000:.1f} ms  -> {med / 0.1:.2f}x the 100 ms goal")
    print(f"  await wake-up, one agent alone (5 runs): median "
          f"{statistics.median(solo_delays) * 1000:.1f} ms")
    print(f"  CPU while {len(runner_pids)} agents sleep, over {args.quiet_window:g} s: runners "
          f"{runner_cpu:.3f} s in all ({runner_cpu / max(1, len(runner_pids)) * 1000:.2f} ms "
          f"each, {runner_cpu / args.quiet_window * 100:.2f}% of one core); the {n} awaiting "
          f"threads {waiter_cpu:.3f} s" + ("" if quiet_ok else
                                          "  [not all agents were up: window shortened]"))
    ok = states.count("completed") == n and med < 0.1
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
