"""The supervisor, end to end: real processes in a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import termios
import time
from pathlib import Path

import pexpect
import psutil
import pytest

from aegis_mcp.supervise import control
from tests.support.host import aegis_bin
from tests.support.supervisor_helpers import FakeAgentWorld, inotify_watches, pid_alive
from tests.support.wait import wait_for


@pytest.fixture
def world(world: FakeAgentWorld) -> FakeAgentWorld:
    # Started as from inside a Claude Code session: the agent must not inherit CLAUDECODE.
    world.env["CLAUDECODE"] = "1"
    return world


def socket_of(world: FakeAgentWorld) -> Path:
    return Path(world.wait_starts(1)[-1]["env"]["AEGIS_CONTROL"])


def restart_via_socket(world: FakeAgentWorld, **request: object) -> dict:
    return control.request(socket_of(world), {"op": "restart", **request})


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus if child.exitstatus is not None else 128 + child.signalstatus


def test_agent_exit_status_is_forwarded(world: FakeAgentWorld) -> None:
    assert finish(world.spawn("fake", "--exit-code", "7")) == 7


def test_signal_death_becomes_128_plus_n(world: FakeAgentWorld) -> None:
    assert finish(world.spawn("fake", "--behaviour", "kill-self")) == 128 + signal.SIGTERM


def test_agent_owns_the_terminal_and_gets_flags_and_env(world: FakeAgentWorld) -> None:
    child = world.spawn("fake", "--model", "big", "first prompt")
    child.expect("READY")
    start = world.starts()[0]
    assert start["foreground"] is True
    assert start["argv"][0] == "--yolo"
    assert start["prompt"] == "first prompt"
    assert start["options"] == {"--model": "big"}
    assert "CLAUDECODE" not in start["env"]  # never passed through to a nested agent
    assert start["env"]["AEGIS_CONTROL"].endswith(".sock")
    sock = Path(start["env"]["AEGIS_CONTROL"])
    assert oct(sock.stat().st_mode & 0o777) == "0o600"
    assert oct(sock.parent.stat().st_mode & 0o777) == "0o700"
    child.sendline("exit 0")
    assert finish(child) == 0
    assert not sock.exists()


def test_restart_through_socket_resumes_with_prompt_and_keeps_args(
        world: FakeAgentWorld) -> None:
    child = world.spawn("fake", "--model", "big", "first prompt")
    child.expect("READY")
    answer = restart_via_socket(world, reason="MCP server updated", prompt="go on")
    assert answer["ok"] and "--continue" in answer["message"]
    child.expect_exact("aegis-mcp: restarting fake (reason: MCP server updated)")
    child.expect("READY pid=")
    first, second = world.wait_starts(2)
    assert second["pid"] != first["pid"] and not pid_alive(first["pid"])
    assert second["resume"] is True and second["session_count"] == 2
    assert second["prompt"] == "go on" and "first prompt" not in second["argv"]
    assert second["options"] == {"--model": "big"}
    assert second["foreground"] is True
    status = control.request(socket_of(world), {"op": "status"})["status"]
    assert status["restart_count"] == 1
    assert status["last_restart_reason"] == "MCP server updated"
    assert status["agent_pid"] == second["pid"]
    child.sendline("exit 0")
    assert finish(child) == 0


def test_restart_from_the_cli_and_ps(world: FakeAgentWorld) -> None:
    child = world.spawn("fake")
    child.expect("READY")
    ps = subprocess.run([aegis_bin(), "ps", "--json"], env=world.env, capture_output=True,
                        text=True, timeout=30)
    rows = json.loads(ps.stdout)
    assert [r["agent"] for r in rows] == ["fake"] and rows[0]["supervisor_pid"] == child.pid
    out = subprocess.run([aegis_bin(), "restart", "--reason", "from cli", "--prompt", "p2"],
                         env=world.env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    child.expect_exact("restarting fake (reason: from cli)")
    child.expect("READY")
    assert world.wait_starts(2)[1]["prompt"] == "p2"
    child.sendline("exit 0")
    assert finish(child) == 0


def test_restart_wait_reports_the_new_agent_and_its_mcp_server(world: FakeAgentWorld) -> None:
    child = world.spawn("fake")
    child.expect("READY")
    out = subprocess.run([aegis_bin(), "restart", "--wait", "20", "--json"], env=world.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    done = json.loads(out.stdout)["restarted"]
    second = world.wait_starts(2)[1]
    assert done["agent_pid"] == second["pid"] and done["restart_count"] == 1
    server = next(c for c in second["children"] if c["name"] == "aegis-mcp")
    assert [s["pid"] for s in done["mcp_servers_seen"]] == [server["pid"]]
    child.sendline("exit 0")
    assert finish(child) == 0


def test_restart_kills_whole_tree_including_stubborn_and_double_forked(
        world: FakeAgentWorld) -> None:
    child = world.spawn("--restart-grace", "0.5", "fake", "--behaviour",
                        "stubborn-child,daemon,ignore-sigint")
    child.expect("READY")
    first = world.starts()[0]
    by_name = {c["name"]: c["pid"] for c in first["children"]}
    pids = [by_name["stubborn"], by_name["daemon"], by_name["aegis-mcp"]]
    assert all(pid_alive(p) for p in pids)
    daemon = psutil.Process(pids[1])
    assert daemon.ppid() == child.pid  # re-parented to the supervisor, a child subreaper
    restart_via_socket(world, reason="tree")
    world.wait_starts(2)
    for pid in [first["pid"], *pids]:
        wait_for(lambda pid=pid: not pid_alive(pid), 10, f"pid {pid} to be gone")
    child.sendline("exit 0")
    assert finish(child) == 0
    for c in world.starts()[1]["children"]:
        assert not pid_alive(c["pid"])  # the agent's own exit cleans its leftovers too


def test_pool_runners_outlive_restarts_and_the_supervisor(world: FakeAgentWorld) -> None:
    child = world.spawn("--restart-grace", "0.5", "fake", "--behaviour", "pool-runner")
    child.expect("READY")
    runner = next(c["pid"] for c in world.starts()[0]["children"] if c["name"] == "pool-runner")
    try:
        restart_via_socket(world, reason="hot-reload")
        child.expect("READY")
        assert pid_alive(runner) and not pid_alive(world.starts()[0]["pid"])
        child.sendline("exit 0")
        assert finish(child) == 0
        assert pid_alive(runner)
    finally:
        for start in world.starts():  # every start made one
            for c in start["children"]:
                if c["name"] == "pool-runner" and pid_alive(c["pid"]):
                    os.kill(c["pid"], signal.SIGKILL)


def test_terminal_modes_restored_after_a_killed_tui(world: FakeAgentWorld) -> None:
    child = world.spawn("--restart-grace", "0.3", "fake", "--behaviour", "ignore-sigint")
    child.expect("READY")
    child.sendline("raw")
    child.expect("RAW")
    fd = child.child_fd
    assert not termios.tcgetattr(fd)[3] & termios.ICANON
    restart_via_socket(world, reason="tui")
    child.expect_exact("\x1b[?1049l")
    child.expect("READY")
    first, second = world.wait_starts(2)
    assert second["lflag"] == first["lflag"]
    assert termios.tcgetattr(fd)[3] & termios.ICANON
    child.sendline("exit 0")
    assert finish(child) == 0


def test_ctrl_c_reaches_the_agent_not_the_supervisor(world: FakeAgentWorld) -> None:
    child = world.spawn("fake", "--behaviour", "ignore-sigint")
    child.expect("READY")
    child.sendcontrol("c")
    child.expect("GOT SIGINT")
    child.sendline("ping")
    child.expect("PONG")  # the supervisor did not stop the agent
    child.sendline("exit 4")
    assert finish(child) == 4


def test_ctrl_c_pressed_on_while_the_supervisor_exits_does_not_kill_it(
        world: FakeAgentWorld) -> None:
    # A user quitting an agent presses Ctrl-C more than once: the presses after the agent's
    # exit reach the supervisor, which has taken the terminal back to clean up. Its exit
    # status must still be the agent's, not a death by SIGINT.
    for _ in range(3):
        child = world.spawn("fake")
        child.expect("READY")
        for _ in range(25):
            child.sendcontrol("c")
            time.sleep(0.02)
        assert finish(child) == 130 and child.signalstatus is None


def test_ctrl_z_stops_agent_and_supervisor_and_fg_resumes(world: FakeAgentWorld) -> None:
    child = world.spawn("fake")
    child.expect("READY")
    agent = psutil.Process(world.starts()[0]["pid"])
    sup = psutil.Process(child.pid)
    child.sendcontrol("z")
    wait_for(lambda: agent.status() == psutil.STATUS_STOPPED, 10, "the agent to stop")
    wait_for(lambda: sup.status() == psutil.STATUS_STOPPED, 10, "the supervisor to stop")
    os.kill(child.pid, signal.SIGCONT)  # what the shell's `fg` does
    wait_for(lambda: agent.status() != psutil.STATUS_STOPPED, 10, "the agent to continue")
    child.sendline("ping")
    child.expect("PONG")
    child.sendline("exit 0")
    assert finish(child) == 0


def test_restart_asked_while_the_agent_exits_still_happens(world: FakeAgentWorld) -> None:
    child = world.spawn("fake", "-p", "task")
    child.expect("READY")
    child.sendline("restart-exit done with turn|next")
    child.expect("restarting fake")
    child.expect("READY")
    second = world.wait_starts(2)[1]
    assert second["resume"] and second["prompt"] == "next" and "-p" in second["flags"]
    child.sendline("exit 0")
    assert finish(child) == 0


def test_failed_resume_falls_back_to_a_fresh_start(world: FakeAgentWorld) -> None:
    child = world.spawn("fake")
    child.expect("READY")
    child.sendline("forget")
    child.expect("FORGOT")
    restart_via_socket(world, reason="nothing to resume", prompt="hello again")
    child.expect("no conversation to resume")
    child.expect("READY")
    starts = world.wait_starts(2)
    assert starts[-1]["resume"] is False and starts[-1]["prompt"] == "hello again"
    child.sendline("exit 0")
    assert finish(child) == 0


@pytest.mark.parametrize(("how", "status"), [("exit 130", 130), ("kill INT", 130),
                                             ("kill TERM", 128 + signal.SIGTERM)])
def test_ctrl_c_right_after_a_restart_ends_the_session(world: FakeAgentWorld, how: str,
                                                       status: int) -> None:
    # A resumed agent that ends within seconds by a signal (or with 128+N, as after Ctrl-C) was
    # quit by the user: no fresh start behind their back, the supervisor ends with that status.
    child = world.spawn("fake")
    child.expect("READY")
    restart_via_socket(world, reason="reload", prompt=None)
    child.expect("READY")
    assert world.wait_starts(2)[1]["resume"] is True
    if how.startswith("kill"):
        os.kill(world.starts()[1]["pid"], getattr(signal, f"SIG{how.split()[1]}"))
    else:
        child.sendline(how)
    assert finish(child) == status
    assert len(world.starts()) == 2


def test_restart_storm_stops_with_a_clear_message(world: FakeAgentWorld) -> None:
    child = world.spawn("--max-restarts", "3", "fake", "--behaviour", "restart-on-start")
    child.expect("restart storm")
    assert finish(child) == 1
    assert len(world.starts()) == 4
    assert not any(pid_alive(s["pid"]) for s in world.starts())


def test_watch_restarts_on_file_change(world: FakeAgentWorld, tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    child = world.spawn("--watch", str(watched), "fake")
    child.expect("READY")
    wait_for(lambda: inotify_watches(child.pid), 20, "the supervisor's inotify watch")
    (watched / "server.py").write_text("changed")
    child.expect("restarting fake \\(reason: files changed")
    child.expect("READY")
    child.sendline("exit 0")
    assert finish(child) == 0


def test_sigterm_of_the_supervisor_stops_the_agent(world: FakeAgentWorld) -> None:
    child = world.spawn("fake", "--behaviour", "stubborn-child")
    child.expect("READY")
    start = world.starts()[0]
    os.kill(child.pid, signal.SIGTERM)
    assert finish(child) == 128 + signal.SIGTERM
    for pid in [start["pid"], *(c["pid"] for c in start["children"])]:
        assert not pid_alive(pid)
    assert not Path(start["env"]["AEGIS_CONTROL"]).exists()


def run_cli(world: FakeAgentWorld, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([aegis_bin(), *args], env=world.env, capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL, cwd=world.root)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["nosuchagent"], 2, "unknown agent 'nosuchagent'"),
        (["--", "no-such-command-xyz"], 127, "no-such-command-xyz: command not found"),
        (["--netmon=bogus", "fake"], 2, "the mode must be preload, netns or auto"),
        (["--restart-grace", "x", "fake"], 2, "give a number of seconds"),
        (["--watch", "/no/such/path", "fake"], 1, "--watch /no/such/path: no such file"),
        (["--watch", "/" + "w" * 4094, "fake"], 1, "characters): file name too long"),
        (["restart"], 1, "no aegis-mcp supervisor is running"),
        (["restart", "--pid", "999999"], 1, "no aegis-mcp supervisor with pid 999999"),
        ([], 2, "usage: aegis-mcp"),
    ],
)
def test_bad_input_gets_one_clear_line(world: FakeAgentWorld, args: list[str], code: int,
                                       message: str) -> None:
    out = run_cli(world, *args)
    assert out.returncode == code
    text = out.stderr + out.stdout
    assert message in text
    assert "Traceback" not in text
    run_dir = Path(world.env["AEGIS_RUNTIME_DIR"])
    assert not run_dir.exists() or not list(run_dir.iterdir())  # nothing left behind


def test_a_program_that_is_there_but_cannot_run_is_not_called_not_found(
        world: FakeAgentWorld) -> None:
    """A file without the x bit, a directory: exit 126 and what is wrong, as a shell says it;
    127 and "no such file" / "command not found" only when nothing of that name is there."""
    (world.root / "agent.sh").write_text("#!/bin/sh\necho hi\n")  # mode 0644
    (world.root / "a-dir").mkdir()
    bindir = world.root / "bin"
    bindir.mkdir()
    (bindir / "lazy-agent-xyz").write_text("#!/bin/sh\necho hi\n")
    on_path = {**world.env, "PATH": f"{bindir}{os.pathsep}{world.env['PATH']}"}
    for args, env, code, line in [
        (["--", "./agent.sh"], world.env, 126, "./agent.sh: not executable (chmod +x it)"),
        (["--", "./a-dir"], world.env, 126, "./a-dir: a directory, not a program"),
        (["--", "./missing.sh"], world.env, 127, "./missing.sh: no such file"),
        (["--", "lazy-agent-xyz"], on_path, 126,
         f"lazy-agent-xyz: {bindir}/lazy-agent-xyz is not executable (chmod +x it)"),
    ]:
        out = subprocess.run([aegis_bin(), *args], env=env, capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL, cwd=world.root)
        assert (out.returncode, out.stderr) == (code, f"aegis-mcp: {line}\n"), args
    assert not world.starts()


def test_a_deleted_current_directory_is_one_line(world: FakeAgentWorld) -> None:
    gone = world.root / "gone"
    gone.mkdir()
    out = subprocess.run(["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "$0" fake',
                          aegis_bin()], env=world.env, capture_output=True, text=True,
                         timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(
        "aegis-mcp: the current directory no longer exists")
    assert "Traceback" not in out.stderr and not world.starts()


def test_missing_agent_binary_names_the_install_hint(world: FakeAgentWorld) -> None:
    Path(world.env["AEGIS_CONFIG"]).write_text(
        '[agents.ghost]\ncommand = ["ghost-agent-xyz"]\ninstall_hint = "pip install ghost"\n')
    out = run_cli(world, "ghost")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "aegis-mcp: ghost: executable not found on PATH (looked for ghost-agent-xyz); "
        "install it with: pip install ghost"]


def test_generic_command_runs(world: FakeAgentWorld) -> None:
    out = run_cli(world, "--", "sh", "-c", "echo hi $AEGIS_AGENT; exit 5")
    assert out.returncode == 5
    assert "hi sh" in out.stdout


def test_runtime_dir_too_long_for_a_socket_is_one_clear_line(world: FakeAgentWorld,
                                                            tmp_path: Path) -> None:
    long_dir = tmp_path / ("x" * 110)
    out = subprocess.run([aegis_bin(), "fake"], env={**world.env,
                         "AEGIS_RUNTIME_DIR": str(long_dir)}, capture_output=True, text=True,
                         timeout=30, stdin=subprocess.DEVNULL, cwd=world.root)
    assert out.returncode == 1
    assert "set a shorter AEGIS_RUNTIME_DIR" in out.stderr and "Traceback" not in out.stderr
    assert world.starts() == []


def test_files_of_killed_supervisors_are_cleaned_at_the_next_start(world: FakeAgentWorld) -> None:
    run_dir = Path(world.env["AEGIS_RUNTIME_DIR"])
    run_dir.mkdir(mode=0o700, exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [run_dir / f"supervisor-{dead.pid}.sock", run_dir / f"mcp-overlay-{dead.pid}.json",
             run_dir / f"config-overlay-{dead.pid}-0.json"]
    kept = [run_dir / f"netmon-{dead.pid}.jsonl", run_dir / f"mcp-overlay-{os.getpid()}.json"]
    for path in stale + kept:
        path.write_text("x")
    assert finish(world.spawn("fake", "--exit-code", "0")) == 0
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
