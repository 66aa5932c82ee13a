"""`agents spawn --wait` and `agents await` as a user meets them: on a terminal (a real pty,
its screen rendered by pyte) the id at once and a live line, and Ctrl-C that stops the waiting
but not the agent; piped and --json, output a program can read."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.support.host import aegis_bin
from tests.support.poolkit import cleanup_pool, pid_alive, pool_config
from tests.support.tui import Screen
from tests.support.wait import wait_for

ROWS, COLS = 60, 100


@pytest.fixture
def env(aegis_env: dict[str, str]) -> Iterator[dict[str, str]]:
    Path(aegis_env["AEGIS_CONFIG"]).write_text(pool_config(max_agents=2))
    with cleanup_pool():
        yield aegis_env


def on_terminal(env: dict[str, str], *args: str, cwd: Path) -> tuple[pexpect.spawn, Screen]:
    """`aegis-mcp agents ARGS` in a pty of ROWS x COLS, as from an interactive shell."""
    tty_env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    tty_env["TERM"] = "xterm-256color"
    child = pexpect.spawn(aegis_bin(), ["agents", *args], env=tty_env, cwd=str(cwd),
                          dimensions=(ROWS, COLS), encoding="utf-8", codec_errors="replace",
                          timeout=30)
    return child, Screen(child, ROWS, COLS)


def exit_status(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    return child.exitstatus if child.exitstatus is not None else 128 + child.signalstatus


def status_of(env: dict[str, str], agent_id: str) -> dict:
    proc = subprocess.run([aegis_bin(), "agents", "status", agent_id, "--json"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_spawn_wait_on_a_terminal_shows_the_id_then_live_progress_and_ctrl_c_leaves_it_running(
        env: dict[str, str], tmp_path: Path) -> None:
    child, screen = on_terminal(env, "spawn", "--wait", "turns=300", "sleep=0.2", cwd=tmp_path)
    try:
        agent_id = screen.wait_for(r"(?m)^([0-9a-f]{8})  (queued|starting|running)", 20)[1]
        # The live line follows the agent as it works: its state, the clock, the turns and
        # the last event, redrawn at each new turn.
        first = int(screen.wait_for(
            rf"(?m)^{agent_id}  running  0:\d\d  (\d+) turns?  last: assistant: working", 20)[1])
        screen.wait_for(rf"(?m)^{agent_id}  running  0:\d\d  ({first + 3}|{first + 4}|"
                        rf"{first + 5}) turns", 20)
        assert screen.text().count("\n" + agent_id) == 1  # one line, redrawn in place

        child.sendintr()
        code = exit_status(child)
        shown = screen.text()
    finally:
        child.close(force=True)
    assert code == 130, shown
    message = (f"stopped waiting; agent {agent_id} keeps running: follow it with `aegis-mcp "
               f"agents await {agent_id}` or stop it with `aegis-mcp agents stop {agent_id}`")
    assert message in shown.replace("\n", ""), shown
    assert "^C" not in shown and "Traceback" not in shown, shown
    assert "turns" not in shown, shown  # the live line is gone, the id line stays
    assert shown.startswith(agent_id), shown

    # The agent did not notice: it is still running, and still working.
    status = status_of(env, agent_id)
    assert status["state"] == "running" and pid_alive(status["pid"])
    turns = status["iterations"]
    wait_for(lambda: status_of(env, agent_id)["iterations"] > turns + 2, 20, "more turns")


def test_await_on_a_terminal_ticks_the_clock_and_ends_with_the_result(
        env: dict[str, str], tmp_path: Path) -> None:
    spawned = subprocess.run([aegis_bin(), "agents", "spawn", "--json", "-C", str(tmp_path),
                              "hang"], env=env, capture_output=True, text=True, timeout=30)
    agent_id = json.loads(spawned.stdout)["agent_id"]
    child, screen = on_terminal(env, "await", agent_id[:4], cwd=tmp_path)
    try:
        # Nothing changes in the store while it hangs: the clock still moves, once a second.
        secs = int(screen.wait_for(
            rf"(?m)^{agent_id}  running  0:(\d\d)  0 turns  last: system \(init\)")[1])
        screen.wait_for(rf"(?m)^{agent_id}  running  0:({secs + 2:02d}|{secs + 3:02d})  0 turns",
                        20)
        subprocess.run([aegis_bin(), "agents", "stop", agent_id], env=env, capture_output=True,
                       timeout=30, check=True)
        screen.wait_for(r"(?m)^ reason +stopped by request", 20)
        code = exit_status(child)
        shown = screen.text()
    finally:
        child.close(force=True)
    assert code == 1, shown  # stopped: not a success
    assert "stopped by request" in shown and "turns" not in shown, shown


def test_ctrl_c_while_queued_says_it_stays_queued(env: dict[str, str], tmp_path: Path) -> None:
    first = subprocess.run([aegis_bin(), "agents", "spawn", "--json", "-C", str(tmp_path),
                            "hang"], env=env, capture_output=True, text=True, timeout=30)
    blocker = json.loads(first.stdout)["agent_id"]
    child, screen = on_terminal(env, "spawn", "--wait", "result=later", cwd=tmp_path)
    try:
        agent_id = screen.wait_for(r"(?m)^([0-9a-f]{8})  queued, position 1 in the queue")[1]
        screen.wait_for(rf"(?m)^{agent_id}  queued  0:0\d  position 1, waiting for {blocker}")
        child.sendintr()
        code = exit_status(child)
        shown = screen.text().replace("\n", "")
    finally:
        child.close(force=True)
    assert code == 130
    assert (f"stopped waiting; agent {agent_id} stays queued (position 1, waiting for "
            f"{blocker}) and starts by itself: follow it with `aegis-mcp agents await "
            f"{agent_id}` or take it off the queue with `aegis-mcp agents stop {agent_id}`"
            ) in shown, shown
    assert "running" not in shown and "^C" not in shown
    assert status_of(env, agent_id)["state"] == "queued"


def test_piped_spawn_wait_prints_the_id_first_and_json_stays_one_document(
        env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run([aegis_bin(), "agents", "spawn", "--wait", "-C", str(tmp_path),
                           "turns=2", "result=piped-ok"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    first, *rest = proc.stdout.splitlines()
    assert re.fullmatch(r"[0-9a-f]{8}  (queued|starting|running).*", first), first
    agent_id = first.split()[0]
    assert "\x1b" not in proc.stdout and "  last: " not in proc.stdout  # no live line
    assert any(re.fullmatch(rf" agent_id +{agent_id}", line) for line in rest)
    assert any(re.fullmatch(r" result +piped-ok", line) for line in rest)

    as_json = subprocess.run([aegis_bin(), "agents", "spawn", "--wait", "--json", "-C",
                              str(tmp_path), "result=json-ok"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)  # the whole output is one document
    assert (data["state"], data["result"], data["timed_out"]) == ("completed", "json-ok", False)


@pytest.mark.parametrize("json_output", [False, True])
def test_piped_wait_interrupted_says_so_on_stderr_and_exits_130(
        env: dict[str, str], tmp_path: Path, json_output: bool) -> None:
    args = ["spawn", "--wait", *(["--json"] if json_output else []), "-C", str(tmp_path), "hang"]
    proc = subprocess.Popen([aegis_bin(), "agents", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if json_output:  # stdout stays empty until the one document: find the agent in the store
        agent_id = wait_for(lambda: [a["agent_id"] for a in json.loads(subprocess.run(
            [aegis_bin(), "agents", "list", "--json"], env=env, capture_output=True,
            text=True, timeout=30).stdout) if a["state"] == "running"], 20, "a running agent")[0]
    else:
        agent_id = proc.stdout.readline().split()[0]
        wait_for(lambda: status_of(env, agent_id)["state"] == "running", 20, "running")
    time.sleep(0.3)  # into the wait
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err == (f"stopped waiting; agent {agent_id} keeps running: follow it with "
                   f"`aegis-mcp agents await {agent_id}` or stop it with "
                   f"`aegis-mcp agents stop {agent_id}`\n")
    assert out == ""  # nothing after the id line; with --json no partial document
    assert status_of(env, agent_id)["state"] == "running"


def test_await_timeout_says_what_is_true_of_a_queued_and_a_running_agent(
        env: dict[str, str], tmp_path: Path) -> None:
    def spawn(*words: str) -> str:
        proc = subprocess.run([aegis_bin(), "agents", "spawn", "-C", str(tmp_path), *words],
                              env=env, capture_output=True, text=True, timeout=30)
        return proc.stdout.split()[0]

    running, queued = spawn("hang"), spawn("result=later")
    wait_for(lambda: status_of(env, running)["state"] == "running", 20, "running")
    for agent_id, words in [
        (running, f"stopped waiting (--timeout passed); agent {running} keeps running\n"),
        (queued, f"stopped waiting (--timeout passed); agent {queued} stays queued "
                 f"(position 1, waiting for {running}) and starts by itself\n"),
    ]:
        proc = subprocess.run([aegis_bin(), "agents", "await", agent_id, "--timeout", "0.3"],
                              env=env, capture_output=True, text=True, timeout=30)
        assert (proc.returncode, proc.stdout) == (124, words), proc.stderr


def test_ctrl_c_with_the_output_piped_leaves_no_caret_c_before_the_line(
        env: dict[str, str], tmp_path: Path) -> None:
    """`aegis-mcp agents await ... | tee log` on a terminal: no live line there to draw over the
    `^C` the terminal would echo, so it must not echo it at all."""
    tty_env = {**env, "TERM": "xterm-256color"}
    child = pexpect.spawn("sh", ["-c", f"{aegis_bin()} agents spawn --wait hang | cat"],
                          env=tty_env, cwd=str(tmp_path), dimensions=(ROWS, COLS),
                          encoding="utf-8", codec_errors="replace", timeout=30)
    screen = Screen(child, ROWS, COLS)
    try:
        agent_id = screen.wait_for(r"(?m)^([0-9a-f]{8})  (queued|starting|running)", 20)[1]
        wait_for(lambda: status_of(env, agent_id)["state"] == "running", 20, "running")
        time.sleep(0.3)
        child.sendintr()
        child.expect(pexpect.EOF, timeout=30)
        shown = screen.text()
    finally:
        child.close(force=True)
    assert re.search(rf"(?m)^stopped waiting; agent {agent_id} keeps running", shown), shown
    assert "^C" not in shown, shown
    assert status_of(env, agent_id)["state"] == "running"
