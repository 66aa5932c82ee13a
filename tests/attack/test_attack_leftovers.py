"""Nothing outlives the supervisor: a `kill -9` of it ends the agent's whole tree (its MCP
server, a stubborn child, a double-forked daemon), in preload and netns modes and under sudo,
while pool runners live on; `aegis-mcp ps` shows what a supervisor killed with its watchdog
left; a normal exit leaves no watchdog.

The supervisor runs under a shell in the pseudo-terminal, as from a user's shell: killing it
then hangs nothing up (a dead session leader would SIGHUP the agent's group and hide what the
watchdog does)."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pexpect
import psutil
import pytest

from tests.support.host import NEEDS_ROOT, aegis_bin
from tests.support.netns_helpers import pids_in
from tests.support.supervisor_helpers import FakeAgentWorld, pid_alive
from tests.support.wait import wait_for

TREE = "stubborn-child,daemon,pool-runner,ignore-sigint,ignore-sigterm"
"""What the fake agent starts: an MCP server, a child that ignores SIGTERM, a daemon that
double-forked into a session of its own, and a (marked) pool runner; it ignores SIGTERM too."""
SHELL = '"$@"; echo "SUPERVISOR-EXITED $?"; sleep 120'
GONE_WITHIN = 30.0
"""Generous: the grace is 1 s, but the machine may be loaded."""


class Session:
    """`aegis-mcp ARGS` started from a shell in a pseudo-terminal."""

    def __init__(self, world: FakeAgentWorld, *args: str) -> None:
        self.world = world
        self.shell = pexpect.spawn("/bin/sh", ["-c", SHELL, "sh", aegis_bin(), *args],
                                   env=world.env, cwd=str(world.root), timeout=60,
                                   encoding="utf-8", codec_errors="replace",
                                   dimensions=(40, 120))
        self.shell.expect("READY")
        self.supervisor = psutil.Process(self.shell.pid).children()[0]
        self.start = world.starts()[-1]
        by_name = {c["name"]: c["pid"] for c in self.start["children"]}
        self.runner = by_name.pop("pool-runner", None)
        self.tree = [self.start["pid"], *by_name.values()]
        self.watchdog = next(p for p in self.supervisor.children()
                             if "aegis_mcp.supervise.watchdog" in p.cmdline())

    def close(self) -> None:
        self.shell.close(force=True)
        for pid in [*self.tree, self.runner, self.watchdog.pid]:
            if pid and pid_alive(pid) and _same_test(pid, self.world):
                os.kill(pid, signal.SIGKILL)


def _same_test(pid: int, world: FakeAgentWorld) -> bool:
    """The pid is still a process of this test's world (not reused)."""
    try:
        env = psutil.Process(pid).environ()
    except psutil.Error:
        return False
    return any(v.startswith(str(world.root)) for v in env.values()) or \
        "aegis_mcp.supervise.watchdog" in " ".join(psutil.Process(pid).cmdline())


@pytest.fixture
def sessions() -> Iterator[list[Session]]:
    started: list[Session] = []
    yield started
    for session in started:
        session.close()


def wait_gone(pids: list[int], what: str) -> None:
    for pid in pids:
        wait_for(lambda pid=pid: not pid_alive(pid), GONE_WITHIN, f"{what} (pid {pid}) to end")


def still_works(world: FakeAgentWorld, *args: str) -> None:
    """After the attack the product works: a new supervisor starts the agent, which reaches
    its MCP server's supervisor, and exits cleanly."""
    child = world.spawn(*args, "fake", timeout=60)
    child.expect("READY")
    child.sendline("restart after the attack")
    child.expect("READY")
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("kill", ["the supervisor", "its process group"])
def test_kill_9_ends_the_agents_tree_and_spares_pool_runners(
        world: FakeAgentWorld, sessions: list[Session], kill: str) -> None:
    session = Session(world, "--restart-grace", "1", "fake", "--behaviour", TREE)
    sessions.append(session)
    assert len(session.tree) == 4 and all(pid_alive(p) for p in session.tree)
    daemon = psutil.Process(session.start["children"][-1]["pid"])
    assert daemon.ppid() == session.supervisor.pid  # double-forked, caught by the subreaper
    if kill == "the supervisor":
        os.kill(session.supervisor.pid, signal.SIGKILL)
    else:  # what a terminal's hangup or a job kill does: the watchdog is not in the group
        os.killpg(os.getpgid(session.supervisor.pid), signal.SIGKILL)
    wait_gone(session.tree, "the agent's tree")
    wait_gone([session.watchdog.pid], "the watchdog, its work done")
    assert session.runner is not None and pid_alive(session.runner)
    still_works(world)


def test_normal_exit_ends_the_watchdog_quietly_and_it_holds_nothing_of_the_supervisor(
        world: FakeAgentWorld, sessions: list[Session]) -> None:
    session = Session(world, "fake")
    sessions.append(session)
    wd, sup = session.watchdog, session.supervisor
    assert os.getsid(wd.pid) == wd.pid != os.getsid(sup.pid)  # a session of its own
    assert wd.cwd() == "/"
    assert not any(k.startswith("AEGIS_CONTROL") for k in wd.environ())  # never its own target
    fds = {int(fd): os.readlink(f"/proc/{wd.pid}/fd/{fd}")
           for fd in os.listdir(f"/proc/{wd.pid}/fd")}
    # No terminal, no socket, no file of the supervisor's: the pipe and /dev/null.
    assert fds == {0: fds[0], 1: "/dev/null", 2: "/dev/null"} and fds[0].startswith("pipe:")
    assert sup.terminal() is not None and wd.terminal() is None
    # The agent (and whatever it starts) does not inherit the pipe's write end.
    agent_fds = [os.readlink(f"/proc/{session.start['pid']}/fd/{fd}")
                 for fd in os.listdir(f"/proc/{session.start['pid']}/fd")]
    assert fds[0] not in agent_fds
    session.shell.sendline("exit 0")
    session.shell.expect("SUPERVISOR-EXITED 0")
    assert not pid_alive(wd.pid)  # gone by the time the supervisor has exited
    assert not any(pid_alive(p) for p in session.tree)


def _ps(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([aegis_bin(), "ps", *args], env={**env, "COLUMNS": "250"},
                          capture_output=True, text=True, timeout=60)


def test_ps_shows_what_a_supervisor_killed_with_its_watchdog_left(
        world: FakeAgentWorld, sessions: list[Session], tmp_path: Path) -> None:
    # Rich markup in the runtime directory's name (it is in the socket path) and in a restart
    # reason: ps prints both literally.
    run_dir = tmp_path / "run[/bold]x"
    env = {**world.env, "AEGIS_RUNTIME_DIR": str(run_dir)}
    world = FakeAgentWorld(world.root, world.state, env)
    live = world.spawn("fake")
    live.expect("READY")
    live.sendline("restart [/bold]oops[bold red]")
    live.expect("READY")
    session = Session(world, "--restart-grace", "1", "fake", "--behaviour", TREE)
    sessions.append(session)
    try:
        os.kill(session.watchdog.pid, signal.SIGKILL)
        os.kill(session.supervisor.pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(session.supervisor.pid), GONE_WITHIN, "the supervisor")
        assert all(pid_alive(p) for p in session.tree)  # what the watchdog is there for
        out = _ps(env, "--json")
        assert out.returncode == 0, out.stderr
        rows = {r["supervisor_pid"]: r for r in json.loads(out.stdout)}
        assert rows[live.pid]["stale"] is False
        assert rows[live.pid]["last_restart_reason"] == "[/bold]oops[bold red]"
        stale = rows[session.supervisor.pid]
        assert stale["stale"] is True
        assert stale["control_socket"] == session.start["env"]["AEGIS_CONTROL"]
        left = {p["pid"]: p["command"] for p in stale["leftovers"]}
        assert sorted(left) == sorted(session.tree)  # the pool runner is not a leftover
        assert "fake_agent.py" in left[session.start["pid"]]
        text = _ps(env)
        assert text.returncode == 0, text.stderr
        assert "[/bold]oops[bold red]" in text.stdout and "run[/bold]x" in text.stdout
        assert "stale" in text.stdout
        assert f"kill {' '.join(str(p) for p in sorted(session.tree))}" in text.stdout
    finally:
        live.sendline("exit 0")
        live.expect(pexpect.EOF)
    session.close()
    wait_gone(session.tree, "the leftovers, killed by the test")
    rows = json.loads(_ps(env, "--json").stdout)
    assert [(r["supervisor_pid"], r["leftovers"]) for r in rows] == [
        (session.supervisor.pid, [])]  # the dead one's socket is left: stale, nothing running
    still_works(world)


# -- as root, through sudo: the agent runs as the throwaway user, the watchdog as root --------


@NEEDS_ROOT
def test_under_sudo_kill_9_ends_the_users_agent_tree_and_the_agent_cannot_stop_the_watchdog(
        sudo_world: FakeAgentWorld, sessions: list[Session],
        throwaway_user: pwd.struct_passwd) -> None:
    session = Session(sudo_world, "--netmon=preload", "--restart-grace", "1", "fake",
                      "--behaviour", TREE)
    sessions.append(session)
    assert session.start["uid"] == throwaway_user.pw_uid
    assert session.watchdog.uids().real == 0
    # The agent, as an attacker, tries to get rid of the watchdog first: it may not signal it.
    attack = subprocess.run(
        ["setpriv", f"--reuid={throwaway_user.pw_uid}", f"--regid={throwaway_user.pw_gid}",
         "--clear-groups", "kill", "-9", str(session.watchdog.pid)],
        capture_output=True, text=True, timeout=30)
    assert attack.returncode != 0 and pid_alive(session.watchdog.pid)
    os.kill(session.supervisor.pid, signal.SIGKILL)
    wait_gone(session.tree, "the agent's tree")
    wait_gone([session.watchdog.pid], "the watchdog, its work done")
    assert session.runner is not None and pid_alive(session.runner)
    still_works(sudo_world, "--netmon=preload")


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          timeout=30).stdout


@NEEDS_ROOT
def test_under_sudo_in_netns_mode_kill_9_leaves_nothing_inside_and_no_namespace(
        sudo_world: FakeAgentWorld, sessions: list[Session]) -> None:
    session = Session(sudo_world, "--netmon=netns", "--restart-grace", "1", "fake",
                      "--behaviour", TREE)
    sessions.append(session)
    name = f"aegis-{session.supervisor.pid}"
    namespace = os.stat(f"/run/netns/{name}")
    inside = pids_in(namespace)
    assert set(session.tree) <= set(inside) and session.runner in inside
    os.kill(session.supervisor.pid, signal.SIGKILL)
    # Inside the namespace the pool runner goes too: its network goes with the namespace.
    wait_gone(inside, "the processes inside the namespace")
    wait_for(lambda: name not in _namespaces(), GONE_WITHIN, f"namespace {name} to be removed")
    wait_gone([session.watchdog.pid], "the watchdog, its work done")
    assert pids_in(namespace) == []
    listed = subprocess.run([aegis_bin(), "netns", "list", "--json"], env=sudo_world.env,
                            capture_output=True, text=True, timeout=60)
    assert name not in [r["name"] for r in json.loads(listed.stdout)["namespaces"]]
    still_works(sudo_world, "--netmon=netns")


def test_the_sweep_ends_only_its_supervisors_marked_processes_and_rechecks_before_a_signal(
        tmp_path: Path) -> None:
    import sys

    from aegis_mcp import procs as proctree
    from aegis_mcp.supervise import watchdog

    dead = subprocess.Popen(["true"])
    dead.wait()
    mark = (dead.pid, str(tmp_path / f"supervisor-{dead.pid}.sock"))
    env = {**os.environ, "AEGIS_SUPERVISOR_PID": str(mark[0]), "AEGIS_CONTROL": mark[1]}
    env.pop("AEGIS_POOL_RUNNER", None)
    runner_code = ("import os, subprocess, sys, time\n"
                   "env = {k: v for k, v in os.environ.items() if k != 'AEGIS_POOL_RUNNER'}\n"
                   "child = subprocess.Popen(['sleep', '120'], env=env)\n"
                   "print(child.pid, flush=True)\n"
                   "time.sleep(120)\n")
    procs = {
        "marked": subprocess.Popen(["sleep", "120"], env=env),
        "stubborn": subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 120 & wait"], env=env),
        "another supervisor's": subprocess.Popen(
            ["sleep", "120"], env={**env, "AEGIS_CONTROL": mark[1] + ".other"}),
        "unmarked": subprocess.Popen(["sleep", "120"]),
        "pool runner": subprocess.Popen([sys.executable, "-c", runner_code],
                                        env={**env, "AEGIS_POOL_RUNNER": "a1"},
                                        stdout=subprocess.PIPE, text=True),
        # Marked when the sweep looks, then the same pid becomes something else (as a reused
        # pid would): it must not be signalled.
        "changeling": subprocess.Popen(
            ["sh", "-c", "read line; exec env -u AEGIS_SUPERVISOR_PID sleep 120"], env=env,
            stdin=subprocess.PIPE),
    }
    runner_out = procs["pool runner"].stdout
    assert runner_out is not None
    runner_child = int(runner_out.readline())
    try:
        wait_for(lambda: psutil.Process(procs["stubborn"].pid).children(), 30,
                 "the stubborn shell's child")
        found = {p.pid for p in proctree.leftovers(lambda m: m == mark).get(mark, [])}
        assert found == {procs[k].pid for k in ("marked", "stubborn", "changeling")} | {
            p.pid for p in psutil.Process(procs["stubborn"].pid).children()}
        targets = watchdog._targets(mark)
        stdin = procs["changeling"].stdin
        assert stdin is not None
        stdin.write(b"go\n")
        stdin.close()
        # Until sleep runs: mid-exec (and while `env` itself still runs, marked) the
        # environment can read as empty, which is not yet the unmarked process.
        wait_for(lambda: psutil.Process(procs["changeling"].pid).name() == "sleep" and
                 "AEGIS_SUPERVISOR_PID" not in
                 psutil.Process(procs["changeling"].pid).environ(), 30, "the exec")
        assert procs["changeling"].pid not in {p.pid for p in watchdog._signal(targets, 0)}
        assert watchdog.end_leftovers(mark, grace=0.5) == 3  # sleep, sh, its sleep
        for name in ("marked", "stubborn"):
            assert procs[name].wait(GONE_WITHIN) is not None
        for name in ("another supervisor's", "unmarked", "pool runner", "changeling"):
            assert procs[name].poll() is None, f"{name} was signalled"
        assert pid_alive(runner_child)  # a pool runner's tree is spared, marked or not
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
        if pid_alive(runner_child):
            os.kill(runner_child, signal.SIGKILL)
