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

from tests.support.host import aegis_bin
from tests.support.private_net import PrivateLoopback
from tests.support.scripted_api import ScriptedAPI

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
        status = request_restart(sup.pid, env, RESTART_PROMPT)
        api.release()
        out, err = sup.communicate(timeout=90)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
    assert f"aegis-mcp: restarting {agent_args[0]} (reason: {REASON})" in err
    return Restarted(status, sup.returncode, out, err)


def request_restart(pid: int, env: dict[str, str], prompt: str, reason: str = REASON,
                    wait: float = 90) -> dict[str, Any]:
    """`aegis-mcp restart --pid PID --prompt PROMPT --wait`: the status it reports."""
    restart = subprocess.run(
        [aegis_bin(), "restart", "--pid", str(pid), "--reason", reason, "--prompt", prompt,
         "--wait", f"{wait:g}", "--json"],
        env=env, capture_output=True, text=True, timeout=wait + 30)
    assert restart.returncode == 0, restart.stderr
    return json.loads(restart.stdout)["restarted"]  # type: ignore[no-any-return]


def restart_beside_another(net: PrivateLoopback, api: ScriptedAPI, a_args: list[str],
                           b_args: list[str], env: dict[str, str], cwd: Path,
                           hang: bool = False) -> Restarted:
    """Two terminals in one project: A's agent waits at the model (its first turn held), B's
    runs a conversation of its own after it (answered "B's reply"); then A is
    restarted with the prompt "A goes on". With `hang`, A's agent is stopped (SIGSTOP) first
    and so killed after the grace, without the last write an agent stopping on SIGINT makes.
    The status of A's restart and A's output."""
    import os
    import signal

    from aegis_mcp.supervise import control

    api.queue_hold()
    api.queue_text("B's reply")
    a = subprocess.Popen(net.enter([aegis_bin(), "--restart-grace", "1", *a_args]), env=env,
                         cwd=cwd, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        assert api.wait_for_turns(1, timeout=120), f"A's {a_args[0]} never asked the model"
        b = subprocess.run(net.enter([aegis_bin(), *b_args]), env=env, cwd=cwd,
                           capture_output=True, text=True, timeout=180,
                           stdin=subprocess.DEVNULL)
        assert b.returncode == 0 and "B's reply" in b.stdout, b.stderr
        if hang:
            sock = control.socket_path(Path(env["AEGIS_RUNTIME_DIR"]), a.pid)
            os.killpg(control.request(sock, {"op": "status"})["status"]["agent_pid"],
                      signal.SIGSTOP)
        status = request_restart(a.pid, env, "A goes on", reason="A's server", wait=120)
        api.release()
        out, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    return Restarted(status, a.returncode, out, err)
