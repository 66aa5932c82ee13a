"""The netmon log's files: where a log is (`find_log`, `log_for_supervisor`), opening it for the
writers (`open_log`), its rotated predecessor (`<log>.1`, renamed by the hooks at
AEGIS_NETMON_MAX_BYTES), and `tail(log, count)`: the most recent events, newest last, read
backwards from the end so that a long log costs no more than a short one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from aegis_mcp import procs


class NoLog(Exception):
    """There is no netmon log at that path (monitoring is off, or nothing was recorded yet)."""


def rotated_path(log: Path) -> Path:
    return log.with_name(log.name + ".1")


def open_log(path: str) -> list[int]:
    """The log at `path` opened for appending, as a one-element list of descriptors (the
    shape privileges.fds_as_user hands across). Run with the identity of the directory's
    owner: a name planted there (a symlink, a hard link, a file of someone else's) is removed
    and replaced by a fresh file, never written through."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EACCES, errno.EPERM, errno.EISDIR):
            raise
    else:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1:
            return [fd]
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return [os.open(path, flags | os.O_EXCL, 0o600)]


def log_for_supervisor(pid: int) -> Path | None:
    """The netmon log of the supervisor of `pid`, if there is one where the caller's
    supervisors keep theirs (as root, the sudo user's included)."""
    from aegis_mcp.paths import control_dirs, runtime_file

    for runtime in control_dirs():
        path = runtime_file(runtime, "netmon_log", pid)
        if path.exists() or rotated_path(path).exists():
            return path
    return None

# ---- the tail -----------------------------------------------------------------------------


def _tail_lines(path: Path, count: int, block: int = 65536, end: int | None = None
                ) -> list[bytes]:
    """The last `count` complete lines of `path` (oldest first) before offset `end` (default:
    its end), reading backwards."""
    if not path.exists() or count <= 0:
        return []
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        end = size if end is None else min(end, size)
        pos, data = end, b""
        while pos > 0 and data.count(b"\n") <= count:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
        # drop an unfinished last line (a writer mid-way) and a cut first line
        if not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
        lines = data.split(b"\n")[:-1]
        if pos > 0:
            lines = lines[1:]
        return [line for line in lines if line.strip()][-count:]


def tail(log: Path, count: int, end: int | None = None) -> list[dict[str, Any]]:
    """The most recent `count` events (newest last), including the rotated file if needed;
    with `end`, those before that offset of the log (what a follower starting there has not
    read)."""
    log = Path(log)
    rotated = rotated_path(log)
    if not log.exists() and not rotated.exists():
        raise NoLog(f"no netmon log at {log}")
    lines = _tail_lines(log, count, end=end)
    if len(lines) < count:
        lines = _tail_lines(rotated, count - len(lines)) + lines
    return events_of(lines)


def events_of(lines: list[bytes]) -> list[dict[str, Any]]:
    """The events among log lines: each a JSON object; anything else (a line cut by a crash,
    a blank) is passed over."""
    events = []
    for line in lines:
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict):
            events.append(ev)
    return events


# ---- finding a log --------------------------------------------------------------------------


def supervisor_of_log(log: Path) -> int | None:
    """The pid of the supervisor whose log this is (its name in the runtime directory)."""
    from aegis_mcp.paths import runtime_files_of

    log = Path(log)
    with contextlib.suppress(OSError):
        for pid, path in runtime_files_of(log.parent, "netmon_log"):
            if path.name == log.name:
                return pid
    return None


def supervisor_alive(pid: int, runtime: Path) -> bool:
    """Whether supervisor `pid` of `runtime` still runs: its control socket is there, and the
    process of that pid started before the socket was made (not a later one that got the pid
    of a supervisor killed with -9)."""
    import psutil

    from aegis_mcp.paths import runtime_file

    try:
        made = runtime_file(runtime, "control", pid).stat().st_ctime
        return procs.alive(pid) and psutil.Process(pid).create_time() <= made + 1
    except (OSError, psutil.Error):
        return False


def live_supervisor_logs() -> list[tuple[int, Path]]:
    """(pid, netmon log) of the caller's running supervisors that have one, newest first."""
    from aegis_mcp.paths import control_dirs, runtime_files_of

    found = []
    for runtime in control_dirs():
        for pid, log in runtime_files_of(runtime, "netmon_log"):
            if supervisor_alive(pid, runtime):
                found.append((procs.start_time(pid) or 0, pid, log))
    return [(pid, log) for _, pid, log in sorted(found, reverse=True)]



def find_log(target: str | None = None) -> Path:
    """The log named by `target`: a file, a supervisor's or agent's pid; else this process's
    AEGIS_NETMON_LOG, else the log of the newest running supervisor, else the newest log in
    the runtime directory."""
    from aegis_mcp.errors import AegisError
    from aegis_mcp.paths import control_dirs, runtime_files_of

    hint = "start the agent with `aegis-mcp <agent> --netmon`"
    if target:
        path = Path(target)
        if path.exists() or rotated_path(path).exists():
            return path
        if target.isdigit():
            pid = int(target)
            own = log_for_supervisor(pid)
            if own is not None:
                return own
            env_log = procs.environ_of(pid).get("AEGIS_NETMON_LOG")
            if env_log:
                return Path(env_log)
            raise AegisError(f"no netmon log for pid {pid}: it is not a supervisor or agent "
                             f"running with --netmon; {hint}")
        raise AegisError(f"{target}: no such netmon log file")
    env_log = os.environ.get("AEGIS_NETMON_LOG")
    if env_log:
        return Path(env_log)
    live = live_supervisor_logs()
    if live:
        return live[0][1]
    dirs = control_dirs()
    logs = sorted((log for d in dirs for _, log in runtime_files_of(d, "netmon_log")),
                  key=lambda p: p.stat().st_mtime)
    if not logs:
        where = " or ".join(str(d) for d in dirs) or "the runtime directory"
        raise AegisError(f"no netmon log found in {where}: {hint}")
    return logs[-1]
