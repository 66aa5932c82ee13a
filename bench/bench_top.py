"""The live view's cost: CPU of `aegis-mcp top` in a real terminal (tmux) while nothing happens.

Sets up, in a private temp world: one supervisor (the test suite's scripted fake agent) and N
background agents (default 50, the fake headless agent), then runs `aegis-mcp top` in a tmux
window and measures its CPU over a window (its own process: the collector thread included).

Prints, in one run:
  - idle CPU with N agents listed, all ended, and a supervisor (goal: under 1 % of a core);
  - the same with `--running` of them running but quiet (their elapsed clocks tick);
  - a bare Textual app in the same terminal, for scale: what the framework costs alone;
  - what one snapshot costs (supervisors, pool, netmon), the work behind every refresh.

    python bench/bench_top.py [--agents 50] [--running 10] [--window 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_HEADLESS = ROOT / "tests" / "support" / "fake_headless_agent.py"
FAKE_AGENT = ROOT / "tests" / "support" / "agents" / "fake_agent.py"
TICK = os.sysconf("SC_CLK_TCK")
BARE_APP = """
from textual.app import App
from textual.widgets import DataTable, Footer
class Bare(App):
    def compose(self):
        yield DataTable()
        yield Footer()
    def on_mount(self):
        t = self.query_one(DataTable)
        t.add_columns(*"abcdefghij")
        for i in range(50):
            t.add_row(*(str(i * j) for j in range(10)))
Bare().run()
"""


def cpu_secs(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Tmux:
    def __init__(self, socket: str) -> None:
        self.base = ["tmux", "-L", socket]

    def run(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], capture_output=True, text=True,
                              check=True).stdout

    def start(self, name: str, command: list[str], env: dict[str, str]) -> int:
        exports = " ".join(f"{k}={shlex_quote(v)}" for k, v in env.items())
        self.run("new-session", "-d", "-s", name, "-x", "160", "-y", "50",
                 f"env {exports} {' '.join(shlex_quote(c) for c in command)}")
        return int(self.run("display", "-p", "-t", name, "#{pane_pid}").strip())

    def screen(self, name: str) -> str:
        return self.run("capture-pane", "-p", "-t", name)

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


def shlex_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def wait_for(what: str, check, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := check()):
            return value
        time.sleep(0.2)
    raise SystemExit(f"bench_top: timed out waiting for {what}")


def measure(pid: int, window: float) -> float:
    """Percent of one core used by `pid` over `window` seconds."""
    before, start = cpu_secs(pid), time.monotonic()
    time.sleep(window)
    return 100 * (cpu_secs(pid) - before) / (time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--running", type=int, default=10)
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args()
    if not shutil.which("tmux"):
        raise SystemExit("bench_top: needs tmux (apt-get install tmux)")
    aegis = str(Path(sys.executable).parent / "aegis-mcp")
    tmux = Tmux(f"bench-top-{os.getpid()}")
    with tempfile.TemporaryDirectory(prefix="bench-top-") as tmpdir:
        tmp = Path(tmpdir)
        env = {"AEGIS_STATE_DIR": str(tmp / "state"), "AEGIS_RUNTIME_DIR": str(tmp / "run"),
               "AEGIS_CONFIG": str(tmp / "config.toml"), "FAKE_AGENT_STATE": str(tmp / "fake"),
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "TERM": "xterm-256color", "HOME": os.environ.get("HOME", "/root")}
        (tmp / "fake").mkdir()
        py = sys.executable
        (tmp / "config.toml").write_text(f"""
[agents.claude]
command = ["{py}", "{FAKE_HEADLESS}"]

[agents.fake]
command = ["{py}", "{FAKE_AGENT}"]
permission_flags = ["--yolo"]
resume_flags = ["--continue"]
variadic_options = ["--mcp-config"]
injection = "mcp-config"

[pool]
max_agents = {max(args.running, 4)}
stop_grace_secs = 0.3
""")
        os.environ.update(env)
        try:
            tmux.start("sup", [aegis, "fake"], env)
            from aegis_mcp.pool.pool import Pool

            pool = Pool()
            for i in range(args.agents):
                work = tmp / f"w{i}"
                work.mkdir()
                pool.spawn(f"turns=1 task {i}", "claude", str(work))
            wait_for("the agents to end",
                     lambda: pool.stats()["active"] == 0 and pool.stats()["total"]
                     == args.agents, timeout=300)
            wait_for("the supervisor", lambda: "READY" in tmux.screen("sup"))

            from aegis_mcp.top.snapshot import take

            costs = []
            for _ in range(20):
                start = time.perf_counter()
                take(pool, 50)
                costs.append(1000 * (time.perf_counter() - start))

            top_pid = tmux.start("top", [aegis, "top"], env)
            wait_for("top's screen", lambda: "turns=1 task" in tmux.screen("top"))
            time.sleep(3)
            ended = measure(top_pid, args.window)

            ids = [pool.spawn("hang", "claude", str(tmp / f"w{i}"))["agent_id"]
                   for i in range(args.running)]
            wait_for("the running agents",
                     lambda: pool.stats()["running"] == args.running, timeout=120)
            time.sleep(3)
            running = measure(top_pid, args.window)
            for agent_id in ids:
                pool.stop(agent_id, wait_secs=10)

            bare_pid = tmux.start("bare", [py, "-c", BARE_APP], env)
            time.sleep(3)
            bare = measure(bare_pid, args.window)
        finally:
            tmux.kill()

    print(f"aegis-mcp top, {args.agents} agents listed, all ended, 1 supervisor: "
          f"{ended:.2f} % of a core (goal < 1 %)")
    print(f"  with {args.running} of them running (their clocks tick): {running:.2f} % of a core")
    print(f"  a bare Textual app with a 50-row table: {bare:.2f} % of a core "
          f"(top / bare: {ended / bare if bare else float('inf'):.1f}x)")
    print(f"  one snapshot ({args.agents} agents, 1 supervisor): median "
          f"{statistics.median(costs):.1f} ms, max {max(costs):.1f} ms")
    print("PASS" if ended < 1.0 else "FAIL")
    return 0 if ended < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
