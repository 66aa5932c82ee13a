"""Which process is which: a pid is only trusted together with its start time, because pids
are reused, and an agent's processes are found by the agent id in their environment."""

from __future__ import annotations

import json
import os
import signal


def proc_start_time(pid: int | None) -> int | None:
    """The start time (clock ticks since boot) of a live process, None when it is gone or a
    zombie. Comparing it with a recorded value tells a reused pid from the original process."""
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


def alive(pid: int | None, start: int | None) -> bool:
    """True when process `pid` still runs and is the one that started at `start`."""
    now = proc_start_time(pid)
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



def kill_orphaned_agent(agent_pid: int | None, env_json: str) -> None:
    """After a runner died: SIGKILL what is left of its agent (the processes whose environment
    names the agent id), so that no one keeps editing a tree whose lock was just freed."""
    if not agent_pid:
        return
    agent_id = json.loads(env_json).get("AEGIS_AGENT_ID", "")
    marker = f"AEGIS_AGENT_ID={agent_id}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker not in f.read().split(b"\0"):
                    continue
            os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError):
            continue
