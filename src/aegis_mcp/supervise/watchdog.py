"""The supervisor's watchdog: when the supervisor dies without its cleanup (`kill -9`, the OOM
killer), it ends what the supervisor left running.

The supervisor's own tree stop works only while it lives (it is the child subreaper of the
agent's tree), and PR_SET_PDEATHSIG reaches only a direct child. So the supervisor starts a
small process of its own identity (root under sudo) at setup, before any thread or the agent,
from `/` with a scrubbed environment, in a session of its own (a terminal hangup or a kill of
the supervisor's process group does not reach it). Its only fd of the supervisor's is its
stdin: the read end of a pipe whose write end only the supervisor holds (O_CLOEXEC: the agent
never inherits it). It blocks in read() on it: no polling, no CPU while idle.

- The supervisor ends normally: it writes QUIT, and the watchdog exits without doing anything.
- The supervisor dies: read() returns EOF, and the watchdog ends every process carrying the
  supervisor's mark (AEGIS_SUPERVISOR_PID and AEGIS_CONTROL, see procs.leftovers), minus
  pool runners and their trees, which outlive the supervisor by design; in netns mode also every
  process inside the namespace `aegis-<pid>`, and then removes the namespace. SIGTERM, the
  supervisor's --restart-grace, SIGKILL; the mark (or the namespace) is checked again right
  before each signal, so a reused pid is never signalled.

Two stages, measured: the waiting is done by /bin/sh's `read` (0.8 ms of CPU to start, 1.7 MB),
which execs `python -I -m aegis_mcp.supervise.watchdog` for the sweep only once the supervisor
is dead.
A Python waiting from the start cost 9 ms of CPU at every supervisor start, competing with the
agent's own start (+5 ms on a loaded 2-core machine), and 9 MB for the supervisor's whole life.
Not a fork of the supervisor: a fork would carry a copy of its memory, fds and signal handlers
for as long as it lives, and show up in `ps` as a second supervisor. bench/bench_supervisor.py
measures the start with and without the watchdog.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from aegis_mcp.errors import AegisError

if TYPE_CHECKING:
    import psutil

QUIT = b"q\n"
"""What the supervisor writes before it closes the pipe on a normal exit."""
WAIT = 'IFS= read -r quit; [ -n "$quit" ] && exit 0; exec "$@"'
"""The first stage: a line (QUIT) is a normal exit; EOF without one, the supervisor died:
become the sweep, whose command follows as arguments (never part of the script)."""
STOP_WAIT = 2.0
"""How long a normal exit of the supervisor waits for the watchdog to go."""
KILL_ROUNDS = 20
"""SIGKILL sweeps after the grace: a leftover may still fork while it is being killed."""


class Watchdog:
    """The supervisor's handle on its watchdog."""

    def __init__(self, proc: subprocess.Popen[bytes], write_fd: int) -> None:
        self._proc = proc
        self._fd = write_fd

    @classmethod
    def start(cls, supervisor_pid: int, control: Path, grace: float, netns: bool = False
              ) -> Watchdog:
        """Start the watchdog of this supervisor (before any thread and before the agent);
        `netns`: the supervisor runs the agent in namespace `aegis-<supervisor_pid>`."""
        from aegis_mcp.launch import python_command, root_env

        sweep = python_command("aegis_mcp.supervise.watchdog",
                               "--supervisor-pid", str(supervisor_pid),
                               "--control", str(control), "--grace", f"{grace:g}",
                               *(["--netns"] if netns else []), root_side=True)
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", WAIT, "aegis-mcp-watchdog", *sweep], env=root_env(),
                cwd="/", stdin=read_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                close_fds=True, start_new_session=True)
        except OSError as exc:
            os.close(write_fd)
            raise AegisError(f"cannot start the watchdog: {exc.strerror or exc}") from None
        finally:
            os.close(read_fd)
        return cls(proc, write_fd)

    @property
    def pids(self) -> tuple[int, ...]:
        """The watchdog's pid while it runs: the supervisor's tree stops leave it alone."""
        if self._proc.poll() is not None:
            return ()
        return (self._proc.pid,)

    def stop(self) -> None:
        """A normal end of the supervisor (its own cleanup done): the watchdog goes quietly."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):  # it is gone already: nothing to tell
            os.write(self._fd, QUIT)
        os.close(self._fd)
        self._fd = -1
        try:
            self._proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


# ---------------------------------------------------------------------------------------------
# The sweep, once the supervisor is dead.

Target: TypeAlias = "tuple[psutil.Process, Callable[[psutil.Process], bool]]"
"""A process to end, and the check that it is still one of ours (asked before each signal)."""


def _targets(mark: tuple[int, str]) -> list[Target]:
    from aegis_mcp import procs

    return [(proc, lambda p: procs.still_marked(p, mark))
            for proc in procs.leftovers(lambda m: m == mark).get(mark, [])]


def _signal(targets: list[Target], sig: int) -> list[psutil.Process]:
    import psutil

    sent = []
    for proc, ours in targets:
        if not ours(proc):
            continue
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)  # psutil refuses a pid reused since `proc` was made
            if sig == signal.SIGTERM:
                proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            sent.append(proc)
    return sent


def _gone(proc: psutil.Process) -> bool:
    import psutil

    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _settle(procs: list[psutil.Process], timeout: float) -> None:
    """Wait up to `timeout` for `procs` to end (zombies count as ended: init reaps them, or
    not; they hold nothing)."""
    deadline = time.monotonic() + timeout
    while any(not _gone(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)


def end_leftovers(mark: tuple[int, str], grace: float, netns: str | None = None) -> int:
    """SIGTERM what the supervisor of `mark` left, wait up to `grace`, SIGKILL what is still
    there (and what appeared meanwhile); then, in netns mode, stop whatever is still inside
    its namespace (a process that cleared its environment) and remove the namespace. How many
    got a signal."""
    first = _signal(_targets(mark), signal.SIGTERM)
    _settle(first, grace)
    signalled = {p.pid for p in first}
    for _ in range(KILL_ROUNDS):
        left = _signal(_targets(mark), signal.SIGKILL)
        if not left:
            break
        signalled.update(p.pid for p in left)
        _settle(left, 1.0)
    if netns is not None:
        from aegis_mcp.netns import namespace as namespaces

        with contextlib.suppress(Exception):  # gone already, or not ours: nothing to do
            removed = namespaces.cleanup_one(netns)
            if removed is not None:
                signalled.update(removed.get("processes_stopped", []))
    return len(signalled)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aegis_mcp.supervise.watchdog",
        description="End what a dead aegis-mcp supervisor left running (its watchdog runs "
        "this once the supervisor has died; not meant to be run by hand).")
    parser.add_argument("--supervisor-pid", type=int, required=True)
    parser.add_argument("--control", required=True, help="the supervisor's control socket")
    parser.add_argument("--grace", type=float, default=3.0)
    parser.add_argument("--netns", action="store_true",
                        help="the supervisor's agent ran in namespace aegis-<supervisor pid>")
    args = parser.parse_args(argv)
    namespace = None
    if args.netns:
        from aegis_mcp.netns.plan import PREFIX

        namespace = f"{PREFIX}{args.supervisor_pid}"
    end_leftovers((args.supervisor_pid, args.control), args.grace, namespace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
