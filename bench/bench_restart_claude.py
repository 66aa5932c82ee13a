"""A restart of the real Claude Code against a cold start of it, both under aegis-mcp.

- restart: `aegis-mcp claude -p ...` waits at its first model turn (held by the local stand-in
  for the model API); from the restart request on the control socket to the first model request
  of the resumed conversation (`--continue`, the restart prompt).
- cold start: from starting `aegis-mcp claude -p ...` to its first model request, with the same
  MCP server (aegis-mcp's, injected).

Median of --runs (default 10) each, interleaved, and the ratio. Goal: a restart costs at most 1.2
times a cold start. Offline: the stand-in is the only API, in a loopback-only network namespace
when run as root. Needs the Claude Code CLI: $AEGIS_TEST_CLAUDE, else `claude` on PATH.

    python bench/bench_restart_claude.py [--runs 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the tests' stand-in for the model API

from aegis_mcp.supervise import control  # noqa: E402
from tests.support.fake_anthropic import FakeAnthropic  # noqa: E402
from tests.support.private_net import PrivateLoopback  # noqa: E402


def aegis() -> str:
    exe = Path(sys.executable).parent / "aegis-mcp"
    return str(exe) if exe.exists() else shutil.which("aegis-mcp") or "aegis-mcp"


@contextlib.contextmanager
def private_net() -> Iterator[PrivateLoopback | None]:
    if os.geteuid() != 0:
        yield None
        return
    with PrivateLoopback() as net:
        yield net


def one_pair(claude: str, net: PrivateLoopback | None) -> tuple[float, float]:
    """(cold start, restart) seconds, each to the first model request it leads to."""
    enter = net.enter if net is not None else (lambda argv: argv)
    bind = net.run if net is not None else None
    with tempfile.TemporaryDirectory(prefix="aegis-bench-") as tmp, \
            FakeAnthropic(default_text="ok", bind=bind) as api:
        root = Path(tmp)
        (root / "home").mkdir()
        env = {**os.environ, **api.claude_env(home=root / "home"),
               "AEGIS_RUNTIME_DIR": str(root / "run"), "AEGIS_STATE_DIR": str(root / "state"),
               "AEGIS_CONFIG": str(root / "none.toml"),
               "PATH": f"{Path(claude).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        for key in ("SUDO_UID", "SUDO_GID", "SUDO_USER", "AEGIS_CONTROL", "CLAUDECODE"):
            env.pop(key, None)
        api.queue_hold()  # the first turn waits: the agent is alive, mid-turn
        wall = time.time()
        sup = subprocess.Popen(enter([aegis(), "claude", "-p", "first task"]), env=env,
                               cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            first = api.wait_for_turns(1, timeout=120)
            if not first:
                raise SystemExit("claude never asked the model")
            cold = first[0].time - wall
            sock = next((root / "run").glob("supervisor-*.sock"))
            asked = time.time()
            answer = control.request(sock, {"op": "restart", "reason": "bench",
                                            "prompt": "go on"})
            if not answer.get("ok"):
                raise SystemExit(f"restart refused: {answer}")
            second = api.wait_for_turns(2, timeout=120)
            if len(second) < 2:
                raise SystemExit("the restarted claude never asked the model")
            restart = second[1].time - asked
            api.release()
            sup.wait(timeout=120)
        finally:
            if sup.poll() is None:
                sup.kill()
                sup.wait()
    return cold, restart


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    claude = os.environ.get("AEGIS_TEST_CLAUDE") or shutil.which("claude")
    if not claude:
        raise SystemExit("no Claude Code CLI: set AEGIS_TEST_CLAUDE or put claude on PATH")
    version = subprocess.run([claude, "--version"], capture_output=True, text=True,
                             timeout=60).stdout.strip()
    colds, restarts = [], []
    with private_net() as net:
        one_pair(claude, net)  # warm-up: file caches, the first run's own setup
        for _ in range(args.runs):
            cold, restart = one_pair(claude, net)
            colds.append(cold)
            restarts.append(restart)
    cold, restart = statistics.median(colds), statistics.median(restarts)
    print(f"Claude Code {version}, median of {args.runs}")
    print(f"cold start to first model request:      {cold:.3f} s")
    print(f"restart request to resumed first request: {restart:.3f} s")
    print(f"ratio restart / cold start: {restart / cold:.2f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
