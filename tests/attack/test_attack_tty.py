"""The dropped agent cannot type into root's terminal (TIOCSTI), and its own terminal works.

The attacker is an agent running as a throwaway user under a root supervisor started the way
sudo starts it. It pushes a command with TIOCSTI into every terminal it can reach, on its way
out, for root's shell to run after aegis-mcp exits. Each attack asserts that the command never
ran and that the supervisor still did its job. The other tests check that the relayed terminal
behaves as the shared one does: Ctrl-C, Ctrl-Z and `fg`, resizing, the restart's terminal
restore, exit statuses, and bulk output, all with the agent under the dropped identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import select
import signal
import termios
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pexpect
import psutil
import pytest

from aegis_mcp.supervise import control
from tests.support.host import NEEDS_ROOT, aegis_bin
from tests.support.supervisor_helpers import FakeAgentWorld
from tests.support.wait import wait_for

pytestmark = NEEDS_ROOT


@pytest.fixture
def world(sudo_world: FakeAgentWorld) -> FakeAgentWorld:
    return sudo_world  # the sudo world, under the name the tests here use


PROMPT = "root-shell-4242# "
LEGACY_TIOCSTI = Path("/proc/sys/dev/tty/legacy_tiocsti")


def tiocsti_allowed() -> bool:
    """Whether the kernel lets a process push input into its own controlling terminal."""
    try:
        return LEGACY_TIOCSTI.read_text().strip() != "0"
    except OSError:
        return True  # kernels before 6.2 have no switch: always allowed


def session_and_tty(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[3]), int(fields[4])


@pytest.fixture
def pwned() -> Iterator[Path]:
    path = Path(f"/tmp/aegis-{uuid.uuid4().hex[:12]}-pwned")
    yield path
    path.unlink(missing_ok=True)


def root_shell(world: FakeAgentWorld, push: str) -> pexpect.spawn:
    """`sudo -s` as a test can have it: an interactive root shell with SUDO_* of the user."""
    env = {**world.env, "PS1": PROMPT, "FAKE_AGENT_PUSH": push, "TERM": "xterm"}
    sh = pexpect.spawn("bash", ["--norc", "--noprofile"], env=env, cwd=str(world.root),
                       timeout=30, encoding="utf-8", codec_errors="replace",
                       dimensions=(40, 120))
    sh.expect_exact(PROMPT)
    return sh


def restart_and_come_back(world: FakeAgentWorld, sh: pexpect.spawn) -> list[dict]:
    first = world.wait_starts(1)[0]
    answer = control.request(Path(first["env"]["AEGIS_CONTROL"]),
                             {"op": "restart", "reason": "under attack"})
    assert answer["ok"], answer
    sh.expect_exact("restarting fake (reason: under attack)")
    sh.expect("READY pid=")
    return world.wait_starts(2)


def harmless_command_runs(sh: pexpect.spawn) -> None:
    """After aegis-mcp exits: what the shell runs next is ours, and nothing pushed before it."""
    sh.expect_exact(PROMPT)
    sh.sendline("echo harmless-$((6*7))")
    sh.expect_exact("harmless-42")
    sh.expect_exact(PROMPT)
    sh.sendline("exit")
    sh.expect(pexpect.EOF)


def pushes(world: FakeAgentWorld, start: dict) -> dict[str, str]:
    return json.loads((world.state / f"tiocsti-{start['pid']}.json").read_text())


def test_tiocsti_into_roots_terminal_does_not_run_in_roots_shell(
        world: FakeAgentWorld, throwaway_user: pwd.struct_passwd, pwned: Path) -> None:
    sh = root_shell(world, f"touch {pwned}")
    shell_session, shell_tty = session_and_tty(sh.pid)
    try:
        sh.sendline(f"{aegis_bin()} fake --behaviour tiocsti; echo AEGIS-EXIT=$?")
        sh.expect("READY pid=")
        first, second = restart_and_come_back(world, sh)
        sh.sendline("exit 0")  # the agent pushes on its way out
        sh.expect_exact("AEGIS-EXIT=0")
        harmless_command_runs(sh)
    finally:
        sh.close(force=True)
    assert not pwned.exists(), "the command the agent pushed ran in root's shell"
    # The supervisor did its job: the dropped agent started, restarted and came back.
    assert {s["uid"] for s in (first, second)} == {throwaway_user.pw_uid}
    assert second["resume"] is True and second["session_count"] == 2
    # In a session of its own (its monitor leads it), with a terminal of its own, in that
    # terminal's foreground.
    for start in (first, second):
        assert start["session"] != shell_session and start["tty_nr"] not in (0, shell_tty)
        assert start["pgrp"] == start["pid"] != start["session"]
        assert start["foreground"] is True
    results = pushes(world, second)
    if not tiocsti_allowed():
        assert "ok" not in results.values()
        pytest.skip("dev.tty.legacy_tiocsti=0: the kernel refuses TIOCSTI altogether; the "
                    "agent's session and terminal were checked to be its own instead")
    assert results["fd0"] == results["/dev/tty"] == "ok"  # it did push: into its own pty


def test_the_agent_never_shares_roots_session_or_terminal(
        world: FakeAgentWorld, throwaway_user: pwd.struct_passwd, pwned: Path) -> None:
    # The check that stands in for the attack where the kernel refuses TIOCSTI.
    sh = root_shell(world, f"touch {pwned}")
    try:
        shell_session, shell_tty = session_and_tty(sh.pid)
        sh.sendline(f"{aegis_bin()} fake; echo AEGIS-EXIT=$?")
        sh.expect("READY pid=")
        start = world.wait_starts(1)[0]
        supervisor = next(p for p in psutil.Process(sh.pid).children()
                          if p.pid != start["pid"])
        assert session_and_tty(supervisor.pid) == (shell_session, shell_tty)
        assert start["session"] != shell_session and start["tty_nr"] not in (0, shell_tty)
        assert start["uid"] == throwaway_user.pw_uid
        sh.sendline("exit 3")
        sh.expect_exact("AEGIS-EXIT=3")
        harmless_command_runs(sh)
    finally:
        sh.close(force=True)


@pytest.mark.skipif(not tiocsti_allowed(), reason="dev.tty.legacy_tiocsti=0: no TIOCSTI")
def test_the_attack_is_real_where_the_agent_keeps_roots_terminal(
        world: FakeAgentWorld, pwned: Path) -> None:
    # The harness sees the attack when it works: with --keep-root the agent is root and
    # shares root's terminal (no boundary to cross), and its pushed command does run.
    sh = root_shell(world, f"touch {pwned}")
    try:
        sh.sendline(f"{aegis_bin()} --keep-root fake --behaviour tiocsti; echo AEGIS-EXIT=$?")
        sh.expect("READY pid=")
        sh.sendline("exit 0")
        sh.expect_exact("AEGIS-EXIT=0")
        harmless_command_runs(sh)
    finally:
        sh.close(force=True)
    assert pwned.exists()


def test_tiocsti_without_a_terminal_on_stdin(
        world: FakeAgentWorld, throwaway_user: pwd.struct_passwd, pwned: Path) -> None:
    # stdin a pipe, stdout and stderr still root's terminal: the agent gets no controlling
    # terminal at all, so /dev/tty fails and TIOCSTI into root's terminal is refused.
    fifo = world.root / "stdin.fifo"
    os.mkfifo(fifo, 0o600)
    feed = os.open(fifo, os.O_RDWR)  # never blocks, never gives the reader an EOF
    sh = root_shell(world, f"touch {pwned}")
    try:
        shell_session, _ = session_and_tty(sh.pid)
        sh.sendline(f"{aegis_bin()} fake --behaviour tiocsti < {fifo}; echo AEGIS-EXIT=$?")
        sh.expect("READY pid=")
        first, second = restart_and_come_back(world, sh)
        os.write(feed, b"exit 0\n")  # (a resumed agent failing at once is restarted fresh)
        sh.expect_exact("AEGIS-EXIT=0")
        harmless_command_runs(sh)
    finally:
        sh.close(force=True)
        os.close(feed)
    assert not pwned.exists(), "the command the agent pushed ran in root's shell"
    assert {s["uid"] for s in (first, second)} == {throwaway_user.pw_uid}
    assert second["resume"] is True
    for start in (first, second):
        assert start["tty_nr"] == 0 and start["session"] == start["pid"] != shell_session
    results = pushes(world, second)
    assert "ok" not in results.values(), results
    assert results["/dev/tty"] == "ENXIO"  # no controlling terminal


# -- the relayed terminal works as the shared one does ----------------------------------------


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus if child.exitstatus is not None else 128 + child.signalstatus


def relayed(world: FakeAgentWorld, *args: str) -> tuple[pexpect.spawn, dict]:
    child = world.spawn(*args)
    child.expect("READY")
    start = world.wait_starts(1)[0]
    assert session_and_tty(child.pid)[0] != start["session"]  # the relay is in use
    return child, start


def lflag(child: pexpect.spawn) -> int:
    return termios.tcgetattr(child.child_fd)[3]


def test_ctrl_c_reaches_the_dropped_agent(world: FakeAgentWorld) -> None:
    child, _ = relayed(world, "fake", "--behaviour", "ignore-sigint")
    assert not lflag(child) & termios.ICANON  # our terminal is raw while relaying
    child.sendcontrol("c")
    child.expect("GOT SIGINT")
    child.sendline("ping")
    child.expect("PONG")
    child.sendline("exit 4")
    assert finish(child) == 4


def test_ctrl_c_ends_the_dropped_agent_with_130(world: FakeAgentWorld) -> None:
    child, _ = relayed(world, "fake")
    child.sendcontrol("c")
    assert finish(child) == 130


def test_ctrl_z_stops_both_and_fg_resumes_both(world: FakeAgentWorld) -> None:
    child, start = relayed(world, "fake")
    agent, sup = psutil.Process(start["pid"]), psutil.Process(child.pid)
    for _ in range(2):  # and again after the first resume
        child.sendcontrol("z")
        wait_for(lambda: agent.status() == psutil.STATUS_STOPPED, 10, "the agent to stop")
        wait_for(lambda: sup.status() == psutil.STATUS_STOPPED, 10, "the supervisor to stop")
        assert lflag(child) & termios.ICANON  # the shell gets its terminal back as it was
        os.kill(child.pid, signal.SIGCONT)  # what the shell's `fg` does
        wait_for(lambda: agent.status() != psutil.STATUS_STOPPED, 10, "the agent to continue")
        wait_for(lambda: not lflag(child) & termios.ICANON, 10, "raw mode again")
        child.sendline("ping")
        child.expect("PONG")
    child.sendline("exit 0")
    assert finish(child) == 0


def test_a_resize_reaches_the_dropped_agent(world: FakeAgentWorld) -> None:
    child, start = relayed(world, "fake")
    assert start["size"] == [120, 40]  # the real terminal's size from the start
    child.setwinsize(30, 100)
    child.expect_exact("WINCH 30x100")
    child.setwinsize(45, 150)
    child.expect_exact("WINCH 45x150")
    child.sendline("exit 0")
    assert finish(child) == 0


def test_the_restart_restores_the_terminal_and_exit_restores_its_modes(
        world: FakeAgentWorld) -> None:
    child, _ = relayed(world, "--restart-grace", "0.3", "fake", "--behaviour",
                       "ignore-sigint")
    saved = termios.tcgetattr(child.child_fd)  # raw now: ours, for the relay
    child.sendline("raw")
    child.expect("RAW")
    restart_via = Path(world.starts()[0]["env"]["AEGIS_CONTROL"])
    control.request(restart_via, {"op": "restart", "reason": "tui"})
    child.expect_exact("\x1b[?1049l")
    child.expect("READY")
    first, second = world.wait_starts(2)
    assert second["lflag"] == first["lflag"]  # a fresh terminal in the saved modes
    assert second["lflag"] & termios.ICANON
    assert termios.tcgetattr(child.child_fd) == saved
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    assert lflag(child) & termios.ICANON and lflag(child) & termios.ECHO  # back as it was
    child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize(("args", "status"), [
    (["--exit-code", "7"], 7), (["--behaviour", "kill-self"], 128 + signal.SIGTERM)])
def test_the_dropped_agents_exit_status_passes_through(
        world: FakeAgentWorld, args: list[str], status: int) -> None:
    assert finish(world.spawn("fake", *args)) == status


def test_bulk_output_arrives_intact_and_the_relay_idles(world: FakeAgentWorld) -> None:
    child, _ = relayed(world, "fake")
    sup = psutil.Process(child.pid)
    before = sup.cpu_times()
    time.sleep(1.0)
    idle = sum(sup.cpu_times()[:2]) - sum(before[:2])
    assert idle < 0.1, f"the idle supervisor used {idle:.3f}s of CPU in 1s"
    lines = 5000  # 320 KB
    child.sendline(f"blast {lines}")
    data = b""
    deadline = time.monotonic() + 60
    while b"BLAST-END\r\n" not in data and time.monotonic() < deadline:
        if select.select([child.child_fd], [], [], 1.0)[0]:
            data += os.read(child.child_fd, 65536)
    got = data.split(b"BLAST-START\r\n", 1)[1].split(b"BLAST-END\r\n", 1)[0]
    want = "".join(f"{i:08d} {'x' * 54}\r\n" for i in range(lines)).encode()
    assert len(got) == len(want)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest()
    child.sendline("exit 0")
    assert finish(child) == 0


def test_the_relay_in_netns_mode(world: FakeAgentWorld, throwaway_user: pwd.struct_passwd
                                 ) -> None:
    # The namespace's command prefix (ip netns exec ... setpriv ...) runs under the monitor.
    child = world.spawn("--netmon=netns", "fake", timeout=60)
    child.expect("READY")
    first = world.wait_starts(1)[0]
    assert first["uid"] == throwaway_user.pw_uid and first["foreground"] is True
    assert os.readlink(f"/proc/{first['pid']}/ns/net") != os.readlink("/proc/self/ns/net")
    assert session_and_tty(child.pid)[0] != first["session"]
    control.request(Path(first["env"]["AEGIS_CONTROL"]), {"op": "restart", "reason": "ns"})
    child.expect("READY")
    assert world.wait_starts(2)[1]["resume"] is True
    child.sendcontrol("c")
    assert finish(child) == 130
