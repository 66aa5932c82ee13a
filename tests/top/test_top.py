"""`aegis-mcp top`, as a user meets it: in a real terminal (tmux), with a real supervisor (the
scripted fake agent) and real background agents (the fake headless agent) changing state."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.support.host import aegis_bin
from tests.support.poolkit import cleanup_pool, pool_config
from tests.support.supervisor_helpers import FakeAgentWorld, pid_alive
from tests.support.tmux import Tmux
from tests.support.wait import wait_for

pytestmark = pytest.mark.skipif(not shutil.which("tmux"), reason="needs tmux (scripts/test "
                                "installs it)")


@pytest.fixture
def top_world(world: FakeAgentWorld) -> Iterator[FakeAgentWorld]:
    """The fake agent's world with a pool of two slots whose `claude` is the fake headless
    agent, cleaned of every background agent afterwards."""
    config = Path(world.env["AEGIS_CONFIG"])
    config.write_text(config.read_text() + pool_config(max_agents=2, grace=0.3))
    with cleanup_pool():
        yield world


@pytest.fixture
def supervisor(top_world: FakeAgentWorld) -> Iterator[pexpect.spawn]:
    child = top_world.spawn("fake", timeout=30)
    child.expect("READY")
    yield child
    child.terminate(force=True)


def _spawn(world: FakeAgentWorld, task: str, where: str) -> str:
    directory = world.root / where
    directory.mkdir(exist_ok=True)
    out = subprocess.run([aegis_bin(), "agents", "spawn", "-C", str(directory), task],
                         env=world.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[0]


def _row(screen: str, agent_id: str) -> str:
    return next((line for line in screen.splitlines() if agent_id[:8] in line), "")


def _state(world: FakeAgentWorld, agent_id: str) -> str:
    out = subprocess.run([aegis_bin(), "agents", "status", "--json", agent_id], env=world.env,
                         capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)["state"]


def test_json_snapshot_lists_the_supervisor_and_the_agents(
        top_world: FakeAgentWorld, supervisor: pexpect.spawn) -> None:
    done = _spawn(top_world, "turns=2 first", "a")
    wait_for(lambda: _state(top_world, done) == "completed", 60, "the first agent's end")
    hanging = _spawn(top_world, "hang second", "b")
    wait_for(lambda: _state(top_world, hanging) == "running", 60, "the second agent running")
    out = subprocess.run([aegis_bin(), "top", "--json"], env=top_world.env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    (sup,) = snap["supervisors"]
    assert sup["pid"] == supervisor.pid and sup["agent"] == "fake" and not sup["stale"]
    assert sup["agent_pid"] == top_world.starts()[-1]["pid"] and sup["restarts"] == 0
    states = {a["status"]["agent_id"]: a["status"]["state"] for a in snap["agents"]}
    assert states == {done: "completed", hanging: "running"}
    held = {a["status"]["agent_id"]: a["lock"] for a in snap["agents"]}
    assert held[hanging] == str(top_world.root / "b") and held[done] is None
    assert snap["pool"]["running"] == 1 and snap["pool"]["completed"] == 1


def test_bad_input_is_one_line(top_world: FakeAgentWorld) -> None:
    out = subprocess.run([aegis_bin(), "top", "--limit", "0"], env=top_world.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--limit 0" in out.stderr
    piped = subprocess.run([aegis_bin(), "top"], env=top_world.env, capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert piped.returncode == 2 and "aegis-mcp top --json" in piped.stderr
    assert piped.stderr.count("\n") == 1


def test_the_live_view_follows_supervisor_and_agents(
        top_world: FakeAgentWorld, supervisor: pexpect.spawn) -> None:
    """One session as a user has it: a supervisor and three background agents change state
    on screen; the user follows a log, stops an agent (confirming), restarts the supervisor
    (confirming), resizes the window, and quits; the agents keep running."""
    tmux = Tmux("aegis-top")
    try:
        first = _spawn(top_world, "turns=4 sleep=1 first task", "a")
        hanging = _spawn(top_world, "hang second task", "b")
        third = _spawn(top_world, "turns=2 sleep=1 third task", "c")  # queued: two slots
        top_pid = tmux.start([aegis_bin(), "top"], top_world.env, str(top_world.root))

        screen = tmux.wait_screen(lambda s: "fake" in s and "third task" in s, 60,
                                  "the supervisor and the agents")
        assert str(supervisor.pid) in screen
        # the three change state before the user's eyes: the third waits for a slot, then runs
        tmux.wait_screen(lambda s: "queue #1" in _row(s, third) or
                         "completed" in _row(s, third), 60, "the third agent queued")
        tmux.wait_screen(lambda s: "completed" in _row(s, first), 90, "the first agent's end")
        tmux.wait_screen(lambda s: "completed" in _row(s, third), 90, "the third agent's end")
        assert "running" in _row(tmux.screen(), hanging)

        # follow the first agent's log: the cursor starts on the first row
        tmux.keys("Up", "Up", "Up")
        tmux.keys("Enter")
        log = tmux.wait_screen(f"{first} (claude", 30, "the log screen")
        tmux.wait_screen(lambda s: "assistant: working, turn 4" in s and "result" in s, 30,
                         "the first agent's events in the log")
        tmux.keys("Escape")
        tmux.wait_screen("background agents", 30, "the view again")
        del log

        # stop the hanging agent, after saying no once
        tmux.keys("Up", "Up", "Up", "Down")
        tmux.keys("s")
        tmux.wait_screen(f"Stop agent {hanging}", 30, "the stop question")
        tmux.keys("n")
        tmux.wait_screen(lambda s: "Stop agent" not in s, 30, "the question gone")
        assert _state(top_world, hanging) == "running"
        tmux.keys("s")
        tmux.wait_screen(f"Stop agent {hanging}", 30, "the stop question again")
        tmux.keys("y")
        tmux.wait_screen(lambda s: "stopped" in _row(s, hanging), 60, "the agent stopped")
        assert _state(top_world, hanging) == "stopped"

        # restart the supervisor's agent
        tmux.keys("Tab")
        tmux.keys("r")
        tmux.wait_screen(f"Restart fake of supervisor {supervisor.pid}", 30,
                         "the restart question")
        tmux.keys("y")
        starts = top_world.wait_starts(2, timeout=60)
        tmux.wait_screen(lambda s: re.search(rf"{supervisor.pid}\s+fake\s+{starts[1]['pid']}"
                                             r"\s+\S+\s+1\s", s), 60,
                         "the restart on screen (new agent pid, 1 restart)")

        # a smaller window, then a larger one: still drawn, still answering keys
        tmux.resize(90, 24)
        tmux.wait_screen(lambda s: "supervisors" in s and len(s.splitlines()[0]) <= 90, 30,
                         "the view redrawn at 90x24")
        tmux.resize(200, 50)
        tmux.wait_screen(lambda s: "third task" in s and str(supervisor.pid) in s, 30,
                         "the view redrawn at 200x50")
        tmux.keys("q")
        wait_for(tmux.dead, 30, "top to exit on q")
        assert not pid_alive(top_pid)
        assert supervisor.isalive()  # quitting the view stops nothing
    finally:
        tmux.kill()
