"""A real agent CLI's one-shot run, restarted while its first turn waits at the model.

The stand-in holds every turn until released: the first is caught mid-turn by `aegis-mcp
restart --prompt 'go on'`, the second waits until the new agent's aegis-mcp server has said
hello to the supervisor, so the restart's report can show it."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import aegis_bin
from tests.private_net import PrivateLoopback
from tests.scripted_api import ScriptedAPI

RESTART_PROMPT = "go on"
REASON = "MCP server updated"


@dataclass
class Restarted:
    status: dict[str, Any]
    """The supervisor's status after the restart (`aegis-mcp restart --wait --json`)."""
    returncode: int
    out: str
    err: str


def restart_mid_turn(net: PrivateLoopback, api: ScriptedAPI, agent_args: list[str],
                     env: dict[str, str], cwd: Path) -> Restarted:
    api.queue_hold()
    api.queue_hold()
    sup = subprocess.Popen(net.enter([aegis_bin(), *agent_args]), env=env, cwd=cwd, text=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        assert api.wait_for_turns(1, timeout=90), f"{agent_args[0]} never asked the model"
        restart = subprocess.run(
            [aegis_bin(), "restart", "--pid", str(sup.pid), "--reason", REASON,
             "--prompt", RESTART_PROMPT, "--wait", "90", "--json"],
            env=env, capture_output=True, text=True, timeout=120)
        assert restart.returncode == 0, restart.stderr
        status = json.loads(restart.stdout)["restarted"]
        api.release()
        out, err = sup.communicate(timeout=90)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
    assert f"aegis-mcp: restarting {agent_args[0]} (reason: {REASON})" in err
    return Restarted(status, sup.returncode, out, err)
