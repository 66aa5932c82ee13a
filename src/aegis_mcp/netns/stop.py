"""Stopping processes: what is left inside a dead owner's namespace (an agent, its MCP
servers and whatever they started), found by its network namespace and signalled through
pidfds, and the capture helper, known by pid and start time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from aegis_mcp import procs
from aegis_mcp.netns.plan import NETNS_RUN

STOP_GRACE = 2.0
"""Seconds the processes left in a dead owner's namespace get between SIGTERM and SIGKILL."""
KILL_ROUNDS = 20
"""SIGKILL sweeps at most: each catches what forked since the one before."""


def stop_processes_inside(name: str, grace: float = STOP_GRACE) -> list[int]:
    """Stop every process in network namespace `name` (an agent, its MCP servers and whatever
    they started, when the supervisor that owned it was killed): SIGTERM (and SIGCONT, for a
    suspended one), up to `grace` seconds to exit, then SIGKILL until none is left. Each
    signal goes through a pidfd opened on the pid and only after checking that the process
    is still in that namespace, so a pid reused by another process is never signalled.
    Returns the pids signalled. Needs root (the processes belong to the agent's user)."""
    target = _netns_id(name)
    if target is None:
        return []
    pidfds: dict[int, int] = {}
    signalled: set[int] = set()
    try:
        for sig in (signal.SIGTERM, signal.SIGCONT):
            signalled.update(_signal_inside(target, sig, pidfds))
        _wait_exit(list(pidfds.values()), grace)
        for _ in range(KILL_ROUNDS):
            hit = _signal_inside(target, signal.SIGKILL, pidfds)
            if not hit:
                break
            signalled.update(hit)
            _wait_exit([pidfds[pid] for pid in hit if pid in pidfds], 1.0)
    finally:
        for fd in pidfds.values():
            os.close(fd)
    return sorted(signalled)


def _netns_id(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(NETNS_RUN / name)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _in_netns(pid: int, target: tuple[int, int]) -> bool:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:  # gone, or a zombie (whose namespaces are already released)
        return False
    return (st.st_dev, st.st_ino) == target


def _pids_in(target: tuple[int, int]) -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid()
            and _in_netns(int(e), target)]


def pids_inside(name: str) -> list[int]:
    """Processes still in the namespace (e.g. an agent that outlived a killed supervisor)."""
    target = _netns_id(name)
    return [] if target is None else _pids_in(target)


def _signal_inside(target: tuple[int, int], sig: int, pidfds: dict[int, int]) -> list[int]:
    """Send `sig` to every process in the namespace `target`; returns the pids it reached."""
    hit: list[int] = []
    for pid in _pids_in(target):
        for _ in range(2):  # a second time with a fresh pidfd if the kept one is of a dead pid
            fd = pidfds.get(pid)
            if fd is None:
                try:
                    fd = pidfds[pid] = os.pidfd_open(pid)
                except OSError:
                    break
            # The pidfd names one process for good: if the check below saw another one (the
            # first died and its pid was reused in between), the signal finds the first dead.
            if not _in_netns(pid, target):
                break
            try:
                signal.pidfd_send_signal(fd, sig)
            except ProcessLookupError:
                os.close(pidfds.pop(pid))
                continue
            except PermissionError:
                break
            hit.append(pid)
            break
    return hit


def _wait_exit(pidfds: list[int], timeout: float) -> None:
    """Wait up to `timeout` for all of these processes to exit (a pidfd polls readable then)."""
    import select

    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    left = len(pidfds)
    deadline = time.monotonic() + timeout
    while left and (remaining := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(remaining * 1000):
            poller.unregister(fd)
            left -= 1


def stop_process(pid: int | None, start: int | None, grace: float = 2.0) -> None:
    if not procs.alive(pid, start):
        return
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and procs.alive(pid, start):
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        if procs.alive(pid, start):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
