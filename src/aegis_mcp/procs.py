"""Stopping an agent's whole process tree, and finding what a dead supervisor left.

The supervisor is a child subreaper (PR_SET_CHILD_SUBREAPER): a process the agent started that
double-forked away from its parent is re-parented to the supervisor instead of init, so "every
descendant of the supervisor" is the agent's tree, however it detached. Helpers the supervisor
starts itself (the netns capture, the watchdog) are excluded by pid, and the agent pool's
runners (marked by `AEGIS_POOL_RUNNER` in their environment) are excluded with their trees:
background agents outlive hot-reloads and the supervisor.

Once the supervisor is dead its tree is gone (the orphans went to init), so what it left is
found by the mark every process of the agent's tree inherits: `AEGIS_SUPERVISOR_PID` and
`AEGIS_CONTROL` in its environment (`leftovers`), again minus pool runners and their trees.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def prctl(option: int, value: int) -> None:
    """prctl(2) with one integer argument; OSError on failure."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def set_child_subreaper(on: bool = True) -> None:
    prctl(PR_SET_CHILD_SUBREAPER, int(on))


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """`sig` to this process when its parent dies; False when the parent is already gone
    (it died before the prctl took effect: the process was re-parented)."""
    parent = os.getppid()
    prctl(PR_SET_PDEATHSIG, sig)
    return os.getppid() == parent


# -- process identity: a pid names one process only together with its start time ------------


def start_time(pid: int | None) -> int | None:
    """The start time (clock ticks since boot) of a live process, None when it is gone or a
    zombie. Compared with a recorded value, it tells a reused pid from the original process;
    it works for every uid's processes (/proc/<pid>/stat is world-readable)."""
    if not pid or pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def alive(pid: int | None, start: int | None = None) -> bool:
    """True when process `pid` runs (not a zombie) and, given `start`, is the one that
    started then."""
    now = start_time(pid)
    return now is not None and (start is None or now == start)


def pidfd(pid: int, start: int | None) -> tuple[int, int] | None:
    """A pidfd of process `pid` if it is still the one that started at `start`."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if not alive(pid, start):  # checked after opening: the fd cannot name a reused pid
        os.close(fd)
        return None
    return pid, fd


def environ_of(pid: int) -> dict[str, str]:
    """The environment process `pid` started with; empty when it is gone or not ours."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


CRASHPOINT_VAR = "AEGIS_TEST_CRASHPOINT"
"""The one fault-injection seam, for the tests only: a process whose environment names one of
its crash points here dies at that point as `kill -9` would (the pool's recovery tests). The
points are `spawn-after-insert` and `promote-after-claim` (the pool's command) and
`runner-running` (a pool runner); a runner inherits the variable only for its own points."""


def crashpoint(name: str) -> None:
    if os.environ.get(CRASHPOINT_VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)


POOL_RUNNER_MARK = "AEGIS_POOL_RUNNER"
"""In every pool runner's environment, naming its agent id. Runners started by the MCP server
are descendants of the supervisor (a child subreaper): its stop of the agent's tree, and the
watchdog's sweep, skip them and their descendants, or background agents would die at each
reload."""
SUPERVISOR_PID_MARK = "AEGIS_SUPERVISOR_PID"
CONTROL_MARK = "AEGIS_CONTROL"

Mark = tuple[int, str]
"""(supervisor pid, control socket path): whose agent tree a process belongs to."""


def _is_pool_runner(proc: psutil.Process) -> bool:
    import psutil

    try:
        return POOL_RUNNER_MARK in proc.environ()
    except psutil.Error:
        return False


def tree(exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Every live, non-zombie descendant of this process, minus `exclude`, pool runners, and
    their descendants. (psutil is imported here: pool runners use this module and should not
    pay for it at start.)"""
    import psutil

    skip = set(exclude)
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    skip |= {p.pid for p in children if _is_pool_runner(p)}
    alive = []
    for proc in children:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.pid in skip or any(p.pid in skip for p in proc.parents()):
                continue
        except psutil.Error:
            continue
        alive.append(proc)
    return alive


def _signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    import psutil

    for proc in procs:
        try:
            proc.send_signal(sig)  # psutil checks the pid was not reused
        except psutil.NoSuchProcess:
            pass
        except psutil.AccessDenied:
            pass  # a setuid child we cannot signal; SIGKILL of its parent still ends it


def killpg(pgid: int, sig: int) -> None:
    """killpg that treats an already-gone group as success (honcho's rule)."""
    try:
        os.killpg(pgid, sig)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise


INTERRUPT_SPACING = 0.3
"""Seconds between repeated SIGINTs: long enough for an agent to handle the first (Aider then
prints "^C again to exit"), well inside the window in which it takes the second as an exit."""


def stop_tree(
    agent_pgid: int | None,
    agent_alive: Callable[[], bool],
    wait: Callable[[float], None],
    grace: float,
    exclude: Iterable[int] = (),
    log: Callable[[str], None] = lambda _msg: None,
    first_signal: int = signal.SIGINT,
    interrupts: int = 1,
) -> None:
    """SIGINT to the agent's process group (what Ctrl-C does), wait `grace` for the agent; then
    SIGTERM to every process left in the tree, wait `grace`; then SIGKILL to what is still there.
    With `interrupts` > 1 the SIGINT is repeated, INTERRUPT_SPACING apart, for agents that exit
    only on a second Ctrl-C (Aider); the grace runs from the last one.

    `agent_alive()` says whether the agent has been reaped yet; `wait(t)` blocks up to `t`
    seconds for a child event and reaps (the caller's SIGCHLD handling).
    """
    exclude = set(exclude)

    def settle(done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            wait(min(left, 0.05))
        return True

    if agent_pgid is not None and agent_alive():
        killpg(agent_pgid, first_signal)
        repeats = interrupts - 1 if first_signal == signal.SIGINT else 0
        for _ in range(repeats):
            if settle(lambda: not agent_alive(), INTERRUPT_SPACING):
                break
            killpg(agent_pgid, first_signal)
        if not settle(lambda: not agent_alive(), grace):
            log(f"agent still running {grace:g}s after {signal.Signals(first_signal).name}")
    left = tree(exclude)
    if left:
        _signal_all(left, signal.SIGTERM)
        if agent_pgid is not None:
            killpg(agent_pgid, signal.SIGTERM)
        if not settle(lambda: not tree(exclude) and not agent_alive(), grace):
            log("processes still running after SIGTERM; sending SIGKILL")
    for _ in range(50):  # new children may appear while we kill; bounded
        left = tree(exclude)
        if not left and not agent_alive():
            return
        _signal_all(left, signal.SIGKILL)
        if agent_pgid is not None:
            killpg(agent_pgid, signal.SIGKILL)
        settle(lambda: not tree(exclude) and not agent_alive(), 1.0)


def mark_of(env: dict[str, str]) -> Mark | None:
    """The supervisor mark in a process's environment, if it has one (both variables: the pid
    alone is reused; the socket path names the supervisor's runtime directory too)."""
    pid, path = env.get(SUPERVISOR_PID_MARK, ""), env.get(CONTROL_MARK, "")
    if not pid.isdigit() or not path:
        return None
    return int(pid), path


def leftovers(wanted: Callable[[Mark], bool]) -> dict[Mark, list[psutil.Process]]:
    """The live processes whose mark `wanted` picks, by mark; pool runners and their
    descendants, zombies and this process are left out. Processes whose environment we may not
    read (another uid, when not root) are not seen."""
    import psutil

    parent: dict[int, int] = {}
    runners: set[int] = set()
    marked: dict[int, tuple[Mark, psutil.Process]] = {}
    me = os.getpid()
    for proc in psutil.process_iter(["ppid", "status"]):
        if proc.pid == me or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        parent[proc.pid] = proc.info["ppid"]
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        if POOL_RUNNER_MARK in env:
            runners.add(proc.pid)
        elif (mark := mark_of(env)) is not None and wanted(mark):
            marked[proc.pid] = (mark, proc)
    found: dict[Mark, list[psutil.Process]] = {}
    for pid, (mark, proc) in marked.items():
        if not _under(pid, runners, parent):
            found.setdefault(mark, []).append(proc)
    return found


def _under(pid: int, ancestors: set[int], parent: dict[int, int]) -> bool:
    for _ in range(4096):  # a pid chain is far shorter; bounded against a ppid loop in a race
        pid = parent.get(pid, 0)
        if pid <= 1:
            return False
        if pid in ancestors:
            return True
    return False


def still_marked(proc: psutil.Process, mark: Mark) -> bool:
    """Whether `proc` is still the same live process with `mark` and not a pool runner: asked
    again right before each signal, so a pid reused meanwhile is never signalled."""
    import psutil

    try:
        env = proc.environ()
        return (proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
                and mark_of(env) == mark and POOL_RUNNER_MARK not in env)
    except psutil.Error:
        return False
