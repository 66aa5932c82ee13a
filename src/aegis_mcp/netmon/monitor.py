"""Reading the netmon log (JSONL events from the preload hooks or the netns capture).

- `summarize(log)`: totals, top targets and open connections, kept incrementally. The summary
  is persisted next to the log (`<log>.summary.json`, keyed by the log's device, inode and the
  offset read so far), so a call reads only what was appended since the last one: the MCP server
  is reborn at every hot-reload and must not re-read a million events each time. Rotation
  (`<log>` renamed to `<log>.1` by the hooks at AEGIS_NETMON_MAX_BYTES) is followed: the rest of
  the rotated file is read before the new one; events rotated away unread are reported as lost.
- `tail(log, count)`: the most recent events, newest last, read backwards from the end.
- `is_preload_visible(executable)`: whether LD_PRELOAD can see a program at all (static
  binaries, such as the Codex CLI, cannot be seen).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUMMARY_VERSION = 1
MAX_TARGETS = 5000
MAX_ADDRESSES = 100_000
MAX_NAMES = 10_000
TOP = 10
_CHUNK = 8 << 20
_OK_CONNECT = {"ok", "EINPROGRESS", "EINTR", "EAGAIN", None}


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


def summary_path(log: Path) -> Path:
    return log.with_name(log.name + ".summary.json")


def log_for_supervisor(pid: int) -> Path | None:
    """The netmon log of the supervisor of `pid`, if there is one where the caller's
    supervisors keep theirs (as root, the sudo user's included)."""
    from aegis_mcp.paths import control_dirs

    for runtime in control_dirs():
        path = runtime / f"netmon-{pid}.jsonl"
        if path.exists() or rotated_path(path).exists():
            return path
    return None


# ---- the summary --------------------------------------------------------------------------


def _conn_key(ev: dict[str, Any]) -> str:
    if ev.get("pid") is not None:
        return f"p:{ev['pid']}:{ev.get('fd')}"
    return (f"n:{ev.get('proto')}:{ev.get('local_addr')}:{ev.get('local_port')}:"
            f"{ev.get('addr')}:{ev.get('port')}")


def _target(addr: str | None, port: int | None) -> str:
    return f"{addr}:{port}" if port is not None else str(addr)


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


class Summary:
    """Aggregates of a log, updated one event at a time, saved as JSON."""

    def __init__(self) -> None:
        self.dev = 0
        self.ino = 0
        self.offset = 0
        self.events = 0
        self.bad_lines = 0
        self.connections = 0
        self.failed = 0
        self.accepted = 0
        self.dns = 0
        self.gaps = 0
        self.sent = 0
        self.recv = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.lost = False
        # target "host:port" (or addr:port) -> [connections, sent, recv, host, addr, port]
        self.targets: dict[str, list[Any]] = {}
        self.addresses: dict[str, int] = {}
        self.addresses_capped = False
        self.names: dict[str, str] = {}  # address -> host, from dns events
        # connection key -> {target, addr, port, host, pid, exe, ts, sent, recv, result}
        self.open: dict[str, dict[str, Any]] = {}
        self.recent_gaps: list[dict[str, Any]] = []

    # -- persistence --
    def to_json(self) -> dict[str, Any]:
        return {"version": SUMMARY_VERSION, **self.__dict__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        s = cls()
        if data.get("version") != SUMMARY_VERSION:
            return s
        for key, value in data.items():
            if key != "version" and hasattr(s, key):
                setattr(s, key, value)
        return s

    # -- events --
    def _target_row(self, ev: dict[str, Any]) -> list[Any]:
        addr, port = ev.get("addr"), ev.get("port")
        host = ev.get("host") or self.names.get(str(addr))
        key = _target(host or addr, port)
        row = self.targets.get(key)
        if row is None:
            if len(self.targets) >= MAX_TARGETS:
                key = "(other)"
                row = self.targets.setdefault(key, [0, 0, 0, None, None, None])
            else:
                row = self.targets[key] = [0, 0, 0, host, addr, port]
        return row

    def _count(self, key: str, ev: dict[str, Any]) -> None:
        """Adds what a totals/close event says beyond what was counted for the connection."""
        sent, recv = int(ev.get("sent") or 0), int(ev.get("recv") or 0)
        conn = self.open.get(key)
        if conn is None:  # its connect was rotated away, or it was inherited: count it all
            conn = {"target": None, "sent": 0, "recv": 0}
        d_sent, d_recv = max(0, sent - conn["sent"]), max(0, recv - conn["recv"])
        self.sent += d_sent
        self.recv += d_recv
        row = self.targets.get(conn["target"]) if conn["target"] else None
        if row is None:
            row = self._target_row(ev)
        row[1] += d_sent
        row[2] += d_recv
        conn["sent"], conn["recv"] = max(sent, conn["sent"]), max(recv, conn["recv"])

    def add(self, ev: dict[str, Any]) -> None:
        self.events += 1
        ts = ev.get("ts")
        if isinstance(ts, int | float):
            if self.first_ts is None:
                self.first_ts = ts
            self.last_ts = ts
        kind = ev.get("event")
        if kind in ("connect", "accept"):
            addr = str(ev.get("addr"))  # every address tried counts, refused ones too
            if addr in self.addresses:
                self.addresses[addr] += 1
            elif len(self.addresses) < MAX_ADDRESSES:
                self.addresses[addr] = 1
            else:
                self.addresses_capped = True
            if kind == "connect" and ev.get("result") not in _OK_CONNECT:
                self.failed += 1
                return
            if kind == "connect":
                self.connections += 1
            else:
                self.accepted += 1
            row = self._target_row(ev)
            row[0] += 1
            key = _conn_key(ev)
            if key in self.open:  # the fd was reused without a close we saw
                self.open.pop(key)
            self.open[key] = {
                "target": _target(row[3] or row[4], row[5]) if row[4] is not None else "(other)",
                "addr": ev.get("addr"), "port": ev.get("port"),
                "host": row[3], "pid": ev.get("pid"), "exe": ev.get("exe"),
                "direction": "in" if kind == "accept" else "out",
                "ts": ts, "sent": 0, "recv": 0, "result": ev.get("result"),
            }
        elif kind == "totals":
            self._count(_conn_key(ev), ev)
        elif kind == "close":
            key = _conn_key(ev)
            self._count(key, ev)
            conn = self.open.pop(key, None)
            result = ev.get("result")
            if conn is not None and conn.get("result") == "EINPROGRESS" and result not in (
                    "ok", "EINPROGRESS", None):
                # A non-blocking connect that failed later (e.g. refused).
                self.connections -= 1
                self.failed += 1
        elif kind == "dns":
            self.dns += 1
            host = ev.get("host")
            if host:
                for answer in ev.get("answers") or []:
                    if answer in self.names or len(self.names) < MAX_NAMES:
                        self.names[answer] = host
        elif kind == "gap":
            self.gaps += 1
            self.recent_gaps = [*self.recent_gaps[-9:], {
                k: ev.get(k) for k in ("ts", "pid", "exe", "target", "reason")
                if ev.get(k) is not None}]

    # -- reading --
    def consume(self, path: Path, offset: int) -> int:
        """Reads complete lines of `path` from `offset`; returns the offset after the last one."""
        with open(path, "rb") as f:
            f.seek(offset)
            rest = b""
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                data = rest + chunk
                end = data.rfind(b"\n")
                if end < 0:
                    rest = data
                    continue
                rest = data[end + 1:]
                offset += end + 1
                self._lines(data[:end])
        return offset

    def _lines(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        lines = [line for line in text.split("\n") if line.strip()]
        try:  # one parse for the whole chunk: far cheaper than a call per line
            parsed = json.loads("[" + ",".join(lines) + "]")
        except ValueError:
            parsed = None
        if parsed is None or len(parsed) != len(lines):  # a bad line somewhere: line by line
            parsed = []
            for line in lines:
                try:
                    parsed.append(json.loads(line))
                except ValueError:
                    self.bad_lines += 1
        add = self.add
        for ev in parsed:
            if isinstance(ev, dict):
                add(ev)
            else:
                self.bad_lines += 1


def _load_summary(log: Path) -> Summary:
    try:
        with open(summary_path(log), "rb") as f:
            return Summary.from_json(json.load(f))
    except (OSError, ValueError, TypeError):
        return Summary()


def _save_summary(log: Path, summary: Summary) -> None:
    """Atomic replace; a directory we cannot write just means no cache."""
    target = summary_path(log)
    try:
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(summary.to_json(), f, separators=(",", ":"))
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def refresh(log: Path) -> Summary:
    """The summary of `log` (and its rotated predecessor), brought up to date."""
    log = Path(log)
    rotated = rotated_path(log)
    s = _load_summary(log)
    try:
        st = log.stat()
    except FileNotFoundError:
        if not rotated.exists():
            raise NoLog(f"no netmon log at {log}") from None
        st = None
    if st is not None and s.ino == st.st_ino and s.dev == st.st_dev and st.st_size >= s.offset:
        s.offset = s.consume(log, s.offset)
    else:
        if st is not None and s.ino == st.st_ino and s.dev == st.st_dev:
            s = Summary()  # truncated in place: start over
        try:
            rst = rotated.stat()
        except FileNotFoundError:
            rst = None
        if s.ino and rst is not None and (rst.st_ino, rst.st_dev) == (s.ino, s.dev):
            s.consume(rotated, s.offset)  # the rest of the file that was rotated
        elif not s.ino and rst is not None:
            s.consume(rotated, 0)         # first look: the rotated file comes first
        elif s.ino:
            s.lost = True                 # rotated twice since we last looked
        if st is None:
            s.dev, s.ino, s.offset = (rst.st_dev, rst.st_ino, rst.st_size) if rst else (0, 0, 0)
        else:
            s.dev, s.ino = st.st_dev, st.st_ino
            s.offset = s.consume(log, 0)
    _save_summary(log, s)
    return s


def status(log: Path) -> dict[str, Any]:
    """What `netmon_status` and `aegis-mcp netmon` show, as plain data."""
    log = Path(log)
    s = refresh(log)
    open_now = []
    ended = 0
    for key, conn in s.open.items():
        pid = conn.get("pid")
        if pid is not None and not _pid_alive(int(pid)):
            ended += 1  # its process ended without a close we saw (killed, or no exit hook)
            continue
        open_now.append({"key": key, **{k: v for k, v in conn.items() if k != "target"},
                         "target": conn.get("target")})
    open_now.sort(key=lambda c: c.get("ts") or 0)

    by_host: dict[str, list[int]] = {}
    for key, (conns, sent, recv, host, addr, _port) in s.targets.items():
        name = host or (str(addr) if addr is not None else key)
        agg = by_host.setdefault(name, [0, 0, 0])
        agg[0] += conns
        agg[1] += sent
        agg[2] += recv

    def target_row(key: str, row: list[Any]) -> dict[str, Any]:
        return {"target": key, "host": row[3], "addr": row[4], "port": row[5],
                "connections": row[0], "sent": row[1], "recv": row[2]}

    top_bytes = sorted(s.targets.items(), key=lambda kv: -(kv[1][1] + kv[1][2]))[:TOP]
    top_hosts = sorted(by_host.items(), key=lambda kv: (-kv[1][0], -(kv[1][1] + kv[1][2])))[:TOP]
    rotated = rotated_path(log)
    files = [str(p) for p in (rotated, log) if p.exists()]
    return {
        "log_path": str(log),
        "log_files": files,
        "log_bytes": sum(os.path.getsize(p) for p in files),
        "events": s.events,
        "connections": s.connections,
        "accepted": s.accepted,
        "failed_connections": s.failed,
        "unique_addresses": len(s.addresses),
        "unique_addresses_capped": s.addresses_capped,
        "bytes_sent": s.sent,
        "bytes_received": s.recv,
        "dns_lookups": s.dns,
        "gaps": s.gaps,
        "recent_gaps": s.recent_gaps,
        "top_hosts": [{"host": h, "connections": a[0], "sent": a[1], "recv": a[2]}
                      for h, a in top_hosts],
        "top_by_bytes": [target_row(k, r) for k, r in top_bytes],
        "open_connections": len(open_now),
        "open": open_now[-50:],
        "ended_without_close": ended,
        "first_event": s.first_ts,
        "last_event": s.last_ts,
        "events_lost_to_rotation": s.lost,
        "bad_lines": s.bad_lines,
    }


# ---- the tail -----------------------------------------------------------------------------


def _tail_lines(path: Path, count: int, block: int = 65536) -> list[bytes]:
    """The last `count` complete lines of `path` (oldest first), reading backwards."""
    if not path.exists():
        return []
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
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


def tail(log: Path, count: int) -> list[dict[str, Any]]:
    """The most recent `count` events (newest last), including the rotated file if needed."""
    log = Path(log)
    rotated = rotated_path(log)
    if not log.exists() and not rotated.exists():
        raise NoLog(f"no netmon log at {log}")
    lines = _tail_lines(log, count)
    if len(lines) < count:
        lines = _tail_lines(rotated, count - len(lines)) + lines
    events = []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict):
            events.append(ev)
    return events


# ---- can LD_PRELOAD see it? ---------------------------------------------------------------


@dataclass(frozen=True)
class PreloadCheck:
    visible: bool
    path: str
    reason: str

    def __bool__(self) -> bool:
        return self.visible


def _elf_interp(header: bytes, f: Any) -> bool | None:
    """True if the ELF file has a program interpreter, None if it is not ELF."""
    if header[:4] != b"\x7fELF" or len(header) < 64:
        return None
    is64 = header[4] == 2
    order = "little" if header[5] == 1 else "big"

    def num(off: int, size: int) -> int:
        return int.from_bytes(header[off:off + size], order)

    if is64:
        phoff, phentsize, phnum = num(32, 8), num(54, 2), num(56, 2)
    else:
        phoff, phentsize, phnum = num(28, 4), num(42, 2), num(44, 2)
    f.seek(phoff)
    table = f.read(phentsize * min(phnum, 512))
    for i in range(min(phnum, 512)):
        if int.from_bytes(table[i * phentsize:i * phentsize + 4], order) == 3:  # PT_INTERP
            return True
    return False


def preload_check(executable: str | os.PathLike[str], _depth: int = 0) -> PreloadCheck:
    """Whether LD_PRELOAD reaches `executable`: a dynamically linked ELF (or a script whose
    interpreter is one) is visible; a static ELF or a set-user-ID program is not."""
    name = os.fspath(executable)
    path = name if os.sep in name else shutil.which(name)
    if path is None or not os.path.isfile(path):
        return PreloadCheck(True, name, "not found; assuming a dynamically linked program")
    path = os.path.realpath(path)
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            header = f.read(256)
            interp = _elf_interp(header, f)
    except OSError as exc:
        return PreloadCheck(True, path, f"cannot read it ({exc.strerror}); assuming visible")
    if st.st_mode & 0o6000 and st.st_uid != os.geteuid():
        return PreloadCheck(False, path, "set-user-ID/set-group-ID: the loader ignores "
                            "LD_PRELOAD for it")
    if interp is True:
        return PreloadCheck(True, path, "dynamically linked")
    if interp is False:
        return PreloadCheck(False, path, "statically linked: LD_PRELOAD cannot see it "
                            "(use --netmon=netns)")
    if header.startswith(b"#!") and _depth < 4:
        words = header[2:].split(b"\n", 1)[0].decode(errors="replace").split()
        if words:
            interp_name = words[1] if os.path.basename(words[0]) == "env" and len(words) > 1 \
                else words[0]
            inner = preload_check(interp_name, _depth + 1)
            return PreloadCheck(inner.visible, path, f"script run by {inner.path}: {inner.reason}")
    return PreloadCheck(True, path, "not an ELF program; assuming visible")


def is_preload_visible(executable: str | os.PathLike[str]) -> bool:
    """False when LD_PRELOAD cannot see `executable` (static binary, set-user-ID)."""
    return preload_check(executable).visible


# ---- finding a log --------------------------------------------------------------------------


def _environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def find_log(target: str | None = None) -> Path:
    """The log named by `target`: a file, a supervisor's or agent's pid; else this process's
    AEGIS_NETMON_LOG, else the newest log in the runtime directory."""
    from aegis_mcp.errors import AegisError
    from aegis_mcp.paths import control_dirs

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
            env_log = _environ_of(pid).get("AEGIS_NETMON_LOG")
            if env_log:
                return Path(env_log)
            raise AegisError(f"no netmon log for pid {pid}: it is not a supervisor or agent "
                             f"running with --netmon; {hint}")
        raise AegisError(f"{target}: no such netmon log file")
    env_log = os.environ.get("AEGIS_NETMON_LOG")
    if env_log:
        return Path(env_log)
    dirs = control_dirs()
    logs = sorted((log for d in dirs for log in d.glob("netmon-*.jsonl")),
                  key=lambda p: p.stat().st_mtime)
    if not logs:
        where = " or ".join(str(d) for d in dirs) or "the runtime directory"
        raise AegisError(f"no netmon log found in {where}: {hint}")
    return logs[-1]
