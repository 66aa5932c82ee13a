"""Running `aegis-mcp` with the scripted fake agent in a real pseudo-terminal."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pexpect

from tests.support.host import aegis_bin
from tests.support.paths import AGENTS
from tests.support.wait import wait_for

FAKE_AGENT = AGENTS / "fake_agent.py"


def fake_profile(python: str = sys.executable, script: Path = FAKE_AGENT,
                 injection: str = "mcp-config") -> str:
    return f"""
[agents.fake]
command = ["{python}", "{script}"]
install_hint = "it is the test suite's fake agent"
permission_flags = ["--yolo"]
resume_flags = ["--continue"]
drop_on_resume = ["--continue", "-c"]
value_options = ["--model", "--exit-code", "--behaviour"]
variadic_options = ["--mcp-config"]
injection = "{injection}"
"""


@dataclass
class FakeAgentWorld:
    root: Path
    state: Path
    env: dict[str, str]

    def starts(self) -> list[dict]:
        path = self.state / "starts.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def wait_starts(self, n: int, timeout: float = 20) -> list[dict]:
        return wait_for(lambda: (s if len(s := self.starts()) >= n else None), timeout,
                        f"{n} agent starts")

    def spawn(self, *args: str, timeout: float = 20) -> pexpect.spawn:
        child = pexpect.spawn(aegis_bin(), list(args), env=self.env, cwd=str(self.root),
                              timeout=timeout, encoding="utf-8", codec_errors="replace",
                              dimensions=(40, 120))
        return child


def fake_world(root: Path, env: dict[str, str], **extra: str) -> FakeAgentWorld:
    """The fake agent's world under `root`, with the fake profile in env's AEGIS_CONFIG."""
    state = root / "agent-state"
    state.mkdir()
    Path(env["AEGIS_CONFIG"]).write_text(fake_profile())
    return FakeAgentWorld(root, state, {**env, "FAKE_AGENT_STATE": str(state), **extra})


def inotify_watches(pid: int) -> int:
    """How many inotify watches `pid` holds (/proc/PID/fdinfo): its --watch watcher is ready."""
    count = 0
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            count += info.read_text().count("inotify wd:")
    return count


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    return True
