"""A real agent CLI as a background agent of the pool, in the test's own loopback namespace."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.support.host import aegis_bin
from tests.support.private_net import PrivateLoopback

# Starts like options on purpose: the pool must hand it to each real CLI as its prompt, never
# as options (before, claude and codex printed their help for it and gemini failed; argparse,
# Aider's parser, takes a word with a space for a value, so Aider needs one without: ONE_WORD).
TASK = "--help -v --model x: what is in this project?"
ONE_WORD = "--help"


def spawn_and_wait(net: PrivateLoopback, agent: str, env: dict[str, str],
                   cwd: Path, task: str = TASK) -> dict[str, Any]:
    """`aegis-mcp agents spawn --type AGENT --wait --json TASK`: the agent's final status, which
    must be a completed run."""
    out = subprocess.run(net.enter([aegis_bin(), "agents", "spawn", "--type", agent, "--wait",
                                    "--json", "--", task]),
                         env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    done = json.loads(out.stdout)
    assert done["state"] == "completed" and done["exit_code"] == 0, done
    return done
