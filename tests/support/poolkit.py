"""Helpers for the pool tests: a config that points agent types at the fake headless agent,
and waits for the pids it records."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.support.supervisor_helpers import pid_alive  # noqa: F401 (one test copy)
from tests.support.wait import wait_for

FAKE = Path(__file__).resolve().with_name("fake_headless_agent.py")


def pool_config(max_agents: int = 4, grace: float = 0.3, timeout: float = 60,
                isolation: str = "lock", worktree_setup: str = "") -> str:
    """`claude` runs the fake agent with claude's own headless flags (incl. --max-turns);
    `fakeplain` has no turn limit flag, so the pool enforces max_iterations itself."""
    py, fake = sys.executable, FAKE
    return f"""
[agents.claude]
command = ["{py}", "{fake}"]

[agents.fakeplain]
command = ["{py}", "{fake}"]
headless_args = ["-p", "{{prompt}}"]

[pool]
max_agents = {max_agents}
stop_grace_secs = {grace}
timeout_secs = {timeout}
isolation = "{isolation}"
worktree_setup = {json.dumps(worktree_setup)}
"""


def read_pids(path: Path, count: int, timeout: float = 10) -> list[int]:
    def ready() -> list[int] | None:
        if not path.exists():
            return None
        pids = [int(x) for x in path.read_text().split()]
        return pids if len(pids) >= count else None

    return wait_for(ready, timeout, f"{count} pids in {path}")


@contextlib.contextmanager
def cleanup_pool() -> Iterator[None]:
    """After a test: stop what is still active, then SIGKILL any process left that carries an
    agent id of this test's pool, so no test leaves processes behind."""
    from aegis_mcp.pool.pool import Pool
    from aegis_mcp.pool.store import ACTIVE, QUEUED

    try:
        yield
    finally:
        pool = Pool()
        ids = [r["id"] for r in pool.conn.execute(
            "SELECT id FROM agents WHERE state IN (?, ?, ?)", (QUEUED, *ACTIVE))]
        for agent_id in ids:
            with contextlib.suppress(Exception):
                pool.stop(agent_id, wait_secs=5)
        every = {r["id"] for r in pool.conn.execute("SELECT id FROM agents")}
        pool.close()
        marks = {f"AEGIS_AGENT_ID={i}".encode() for i in every}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marks & set(f.read().split(b"\0")):
                        os.kill(int(entry), signal.SIGKILL)
            except OSError:
                continue


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=path)
    git("config", "user.email", "t@example.invalid", cwd=path)
    git("config", "user.name", "test", cwd=path)
    (path / "sub").mkdir()
    (path / "sub" / "code.py").write_text("print('hi')\n")
    (path / ".gitignore").write_text(".env\n")
    git("add", ".", cwd=path)
    git("commit", "-q", "-m", "init", cwd=path)
    (path / ".env").write_text("SECRET=1\n")
    return path
