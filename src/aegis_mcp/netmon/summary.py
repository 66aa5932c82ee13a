"""The summary of a netmon log: totals, top targets and open connections, kept incrementally.

It is persisted next to the log (`<log>.summary.json`, keyed by the log's device, inode and the
offset read so far), so a call reads only what was appended since the last one: the MCP server
is reborn at every hot-reload and must not re-read a million events each time. Rotation
(`<log>` renamed to `<log>.1` by the hooks at AEGIS_NETMON_MAX_BYTES) is followed: the rest of
the rotated file is read before the new one; events rotated away unread are reported as lost.

A little over 400 lines: the typed records of the status (what netmon_status and `aegis-mcp
netmon` show, with their descriptions) are declared here, beside the aggregates they are made
of, so that the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NotRequired, TypedDict

SUMMARY_VERSION = 3  # 2: names per resolver (pid), plumbing left out by the hooks; 3: denials
MAX_TARGETS = 5000
MAX_ADDRESSES = 100_000
MAX_NAMES = 10_000
MAX_HINTS = 20
MAX_DENIALS = 20
"""Recent denials kept (newest last)."""
DENIAL_KEYS = ("ts", "pid", "exe", "proto", "addr", "port", "host", "rule", "label", "default",
               "mode")
TOP = 10
_CHUNK = 8 << 20
_OK_CONNECT = {"ok", "EINPROGRESS", "EINTR", "EAGAIN", None}


@dataclass(slots=True)
class TargetRow:
    """What was seen of one target ("host:port", or addr:port); saved as a list of its fields
    in this order, the summary file's format."""

    connections: int
    sent: int
    recv: int
    host: str | None
    addr: str | None
    port: int | None

    def to_json(self) -> list[Any]:
        return [self.connections, self.sent, self.recv, self.host, self.addr, self.port]


class HostStat(TypedDict):
    host: Annotated[str, "Host name the program resolved, else the address"]
    connections: int
    sent: Annotated[int, "Bytes sent"]
    recv: Annotated[int, "Bytes received"]


class TargetStat(TypedDict):
    target: Annotated[str, "host:port (or address:port, or a unix socket path)"]
    host: str | None
    addr: str | None
    port: int | None
    connections: int
    sent: int
    recv: int


class OpenConnection(TypedDict):
    target: str | None
    addr: str | None
    port: int | None
    host: str | None
    pid: Annotated[int | None, "Process that holds it (null in netns mode)"]
    exe: str | None
    direction: Annotated[str, "out (connect) or in (accept)"]
    ts: Annotated[float | None, "When it was opened (unix seconds)"]
    sent: Annotated[int, "Bytes sent as of its last totals event"]
    recv: int
    result: str | None  # the connect's result (EINPROGRESS: still being connected)
    state: Annotated[str, "connecting (its connect is not known to have completed yet) or "
                     "open"]
    key: str  # the summary's key of the connection (pid and fd, or its addresses)


class Denial(TypedDict):
    """A connection the network policy denied: a `deny` event of the log."""

    ts: float | None
    pid: Annotated[int | None, "Process that asked (null in netns mode)"]
    exe: str | None
    proto: str | None
    addr: str | None
    port: int | None
    host: Annotated[str | None, "Host name the program asked for, when known"]
    rule: Annotated[str | None, "The rule that denied it (`deny host *.example.com 0`), or "
                    "`default deny` when none matched and the policy denies by default"]
    label: Annotated[str | None, "Where that rule came from (`--deny x`, a policy file's key "
                     "and index, the config's [network] table)"]
    default: Annotated[bool | None, "True: denied because it is not on the allow-list"]
    mode: Annotated[str | None, "The enforcer: preload (the connect hook) or netns"]


class DeniedTarget(TypedDict):
    target: Annotated[str, "host:port (or address:port) the policy denied"]
    denials: int


class NetmonStatus(TypedDict):
    """What `status` says of a log: `netmon_status` returns it (netmon/tools.py builds its
    output model from this declaration), `aegis-mcp netmon` prints it. The string in a field's
    Annotated is its description, the one place MCP clients read it from."""

    log_path: str
    log_files: Annotated[list[str], "The log and its rotated predecessor, if any"]
    log_bytes: int
    events: int
    connections: Annotated[int, "Outgoing connections made (not refused)"]
    accepted: Annotated[int, "Incoming connections accepted"]
    failed_connections: Annotated[int, "Connects that failed (refused, unreachable...)"]
    connecting: Annotated[int, "Open connections whose (non-blocking) connect is not known to "
                          "have completed yet"]
    unique_addresses: int
    unique_addresses_capped: bool  # more than MAX_ADDRESSES: unique_addresses is a floor
    bytes_sent: int
    bytes_received: int
    dns_lookups: int
    top_hosts: Annotated[list[HostStat], "Top targets by host name (connections)"]
    top_by_bytes: Annotated[list[TargetStat], "Top targets by bytes sent + received"]
    open_connections: Annotated[int, "Connections still open in live processes"]
    open: Annotated[list[OpenConnection], "Up to 50 of them, oldest first"]
    ended_without_close: Annotated[int, "Connections whose process ended without a close being "
                                   "recorded"]
    gaps: Annotated[int, "Things monitoring could not see (e.g. a child started without "
                    "LD_PRELOAD, a static binary)"]
    recent_gaps: list[dict[str, Any]]
    hints: Annotated[list[str], "What the user can do about failures seen (e.g. a port of this "
                     "host refused inside the network namespace: --netns-forward PORT)"]
    denied: Annotated[int, "Connections the network policy denied (netmon_policy says why "
                      "and what to ask the user)"]
    recent_denials: Annotated[list[Denial], "The most recent denials, newest last"]
    top_denied: Annotated[list[DeniedTarget], "Targets denied most often"]
    events_lost_to_rotation: bool
    first_event: float | None
    last_event: float | None
    bad_lines: int
    note: NotRequired[str]  # only when there is nothing to count (`empty_status`)


def summary_path(log: Path) -> Path:
    return log.with_name(log.name + ".summary.json")


def _conn_key(ev: dict[str, Any]) -> str:
    if ev.get("pid") is not None:
        return f"p:{ev['pid']}:{ev.get('fd')}"
    return (f"n:{ev.get('proto')}:{ev.get('local_addr')}:{ev.get('local_port')}:"
            f"{ev.get('addr')}:{ev.get('port')}")


def _target(addr: str | None, port: int | None) -> str:
    return f"{addr}:{port}" if port is not None else str(addr)


def _name_key(pid: Any, addr: Any) -> str:
    """The key of a resolved name: who resolved it, and the address. A name belongs to the
    connections of the one that looked it up: a process in preload mode; in netns mode,
    whose events carry no process, the namespace (the agent and its children as one)."""
    return f"{pid if pid is not None else ''}|{addr}"


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
        self.targets: dict[str, TargetRow] = {}  # by target "host:port" (or addr:port)
        self.addresses: dict[str, int] = {}
        self.addresses_capped = False
        self.names: dict[str, str] = {}  # "pid|address" -> host, from dns events (_name_key)
        self.hints: dict[str, str] = {}  # the port a hint is about -> the hint, oldest first
        # connection key -> {target, addr, port, host, pid, exe, ts, sent, recv, result}
        self.open: dict[str, dict[str, Any]] = {}
        self.recent_gaps: list[dict[str, Any]] = []
        self.denied = 0
        self.recent_denials: list[dict[str, Any]] = []
        self.denied_targets: dict[str, int] = {}  # "host:port" (or addr:port) -> denials

    # -- persistence --
    def to_json(self) -> dict[str, Any]:
        return {"version": SUMMARY_VERSION, **self.__dict__,
                "targets": {key: row.to_json() for key, row in self.targets.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        s = cls()
        if data.get("version") != SUMMARY_VERSION:
            return s
        for key, value in data.items():
            if key != "version" and hasattr(s, key):
                setattr(s, key, value)
        # A list of the wrong length is a TypeError: the caller starts a fresh summary.
        s.targets = {key: TargetRow(*row) for key, row in s.targets.items()}
        return s

    # -- events --
    def host_of(self, ev: dict[str, Any]) -> str | None:
        """The host name an event's connection is to: the one its event carries, else the
        one its resolver (the process, or the namespace) looked up for that address."""
        return ev.get("host") or self.names.get(_name_key(ev.get("pid"), ev.get("addr")))

    def _target_row(self, ev: dict[str, Any]) -> TargetRow:
        addr, port = ev.get("addr"), ev.get("port")
        host = self.host_of(ev)
        key = _target(host or addr, port)
        row = self.targets.get(key)
        if row is None:
            if len(self.targets) >= MAX_TARGETS:
                key = "(other)"
                row = self.targets.setdefault(key, TargetRow(0, 0, 0, None, None, None))
            else:
                row = self.targets[key] = TargetRow(0, 0, 0, host, addr, port)
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
        row.sent += d_sent
        row.recv += d_recv
        conn["sent"], conn["recv"] = max(sent, conn["sent"]), max(recv, conn["recv"])

    def add(self, ev: dict[str, Any]) -> None:
        self.events += 1
        ts = ev.get("ts")
        if isinstance(ts, int | float):
            if self.first_ts is None:
                self.first_ts = ts
            self.last_ts = ts
        kind = ev.get("event")
        hint = ev.get("hint")
        if hint and isinstance(hint, str):
            about = str(ev.get("port"))  # one per port: 127.0.0.1 and ::1 are one advice
            if about not in self.hints and len(self.hints) < MAX_HINTS:
                self.hints[about] = hint
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
            row.connections += 1
            key = _conn_key(ev)
            if key in self.open:  # the fd was reused without a close we saw
                self.open.pop(key)
            self.open[key] = {
                "target": _target(row.host or row.addr, row.port) if row.addr is not None
                else "(other)",
                "addr": ev.get("addr"), "port": ev.get("port"),
                "host": row.host, "pid": ev.get("pid"), "exe": ev.get("exe"),
                "direction": "in" if kind == "accept" else "out",
                "ts": ts, "sent": 0, "recv": 0, "result": ev.get("result"),
            }
        elif kind == "totals":
            key = _conn_key(ev)
            self._count(key, ev)
            conn = self.open.get(key)
            if conn is not None and conn.get("result") == "EINPROGRESS" and (
                    ev.get("sent") or ev.get("recv")):
                conn["result"] = "ok"  # data moved: the connect completed
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
                pid = ev.get("pid")
                for answer in ev.get("answers") or []:
                    key = _name_key(pid, answer)
                    if key in self.names or len(self.names) < MAX_NAMES:
                        self.names[key] = host
        elif kind == "deny":
            self._deny(ev)
        elif kind == "gap":
            self.gaps += 1
            self.recent_gaps = [*self.recent_gaps[-9:], {
                k: ev.get(k) for k in ("ts", "pid", "exe", "target", "reason")
                if ev.get(k) is not None}]

    def _deny(self, ev: dict[str, Any]) -> None:
        self.denied += 1
        denial = {key: ev.get(key) for key in DENIAL_KEYS}
        denial["host"] = self.host_of(ev)  # named as its connection would have been
        self.recent_denials = [*self.recent_denials[-(MAX_DENIALS - 1):], denial]
        key = _target(denial["host"] or denial["addr"], denial["port"])
        if key in self.denied_targets or len(self.denied_targets) < MAX_TARGETS:
            self.denied_targets[key] = self.denied_targets.get(key, 0) + 1

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
    # Here, not at the top: the MCP server imports this module's records, and the log's
    # module brings process identity (ctypes) with it.
    from aegis_mcp.netmon.log import NoLog, rotated_path

    log = Path(log)
    rotated = rotated_path(log)
    s = _load_summary(log)
    seen = (s.dev, s.ino, s.offset, s.lost)
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
    # Written only when it moved on: a reader that watches the directory (aegis-mcp top)
    # must not be woken by its own reading.
    if (s.dev, s.ino, s.offset, s.lost) != seen or not summary_path(log).exists():
        _save_summary(log, s)
    return s


def status(log: Path) -> NetmonStatus:
    """What `netmon_status` and `aegis-mcp netmon` show, as plain data."""
    from aegis_mcp import procs  # only here: the MCP server imports this module's records
    from aegis_mcp.netmon.log import rotated_path

    log = Path(log)
    s = refresh(log)
    open_now: list[OpenConnection] = []
    ended = 0
    for key, conn in s.open.items():
        pid = conn.get("pid")
        if pid is not None and not procs.alive(int(pid)):
            ended += 1  # its process ended without a close we saw (killed, or no exit hook)
            continue
        state = "connecting" if conn.get("result") == "EINPROGRESS" else "open"
        open_now.append({"key": key,  # type: ignore[typeddict-item]
                         **{k: v for k, v in conn.items() if k != "target"},
                         "target": conn.get("target"), "state": state})
    open_now.sort(key=lambda c: c.get("ts") or 0)

    by_host: dict[str, HostStat] = {}
    for key, row in s.targets.items():
        name = row.host or (str(row.addr) if row.addr is not None else key)
        agg = by_host.setdefault(name, {"host": name, "connections": 0, "sent": 0, "recv": 0})
        agg["connections"] += row.connections
        agg["sent"] += row.sent
        agg["recv"] += row.recv

    def target_stat(key: str, row: TargetRow) -> TargetStat:
        return {"target": key, "host": row.host, "addr": row.addr, "port": row.port,
                "connections": row.connections, "sent": row.sent, "recv": row.recv}

    top_bytes = sorted(s.targets.items(), key=lambda kv: -(kv[1].sent + kv[1].recv))[:TOP]
    top_hosts = sorted(by_host.values(),
                       key=lambda h: (-h["connections"], -(h["sent"] + h["recv"])))[:TOP]
    rotated = rotated_path(log)
    files = [str(p) for p in (rotated, log) if p.exists()]
    top_denied = sorted(s.denied_targets.items(), key=lambda kv: -kv[1])[:TOP]
    return {
        "log_path": str(log),
        "log_files": files,
        "log_bytes": sum(os.path.getsize(p) for p in files),
        "events": s.events,
        "connections": s.connections,
        "accepted": s.accepted,
        "failed_connections": s.failed,
        "connecting": sum(1 for c in open_now if c["state"] == "connecting"),
        "unique_addresses": len(s.addresses),
        "unique_addresses_capped": s.addresses_capped,
        "bytes_sent": s.sent,
        "bytes_received": s.recv,
        "dns_lookups": s.dns,
        "gaps": s.gaps,
        "recent_gaps": s.recent_gaps,
        "hints": list(s.hints.values()),
        "denied": s.denied,
        "recent_denials": s.recent_denials,  # type: ignore[typeddict-item]
        "top_denied": [{"target": key, "denials": n} for key, n in top_denied],
        "top_hosts": top_hosts,
        "top_by_bytes": [target_stat(k, r) for k, r in top_bytes],
        "open_connections": len(open_now),
        "open": open_now[-50:],
        "ended_without_close": ended,
        "first_event": s.first_ts,
        "last_event": s.last_ts,
        "events_lost_to_rotation": s.lost,
        "bad_lines": s.bad_lines,
    }


def empty_status(log: Path) -> NetmonStatus:
    """The status of a log not written yet (monitoring is on, nothing recorded so far)."""
    return {
        "log_path": str(log), "log_files": [], "log_bytes": 0, "events": 0, "connections": 0,
        "accepted": 0, "failed_connections": 0, "connecting": 0, "unique_addresses": 0,
        "unique_addresses_capped": False, "bytes_sent": 0, "bytes_received": 0,
        "dns_lookups": 0, "gaps": 0, "recent_gaps": [], "hints": [], "denied": 0,
        "recent_denials": [], "top_denied": [], "top_hosts": [],
        "top_by_bytes": [],
        "open_connections": 0, "open": [], "ended_without_close": 0, "first_event": None,
        "last_event": None, "events_lost_to_rotation": False, "bad_lines": 0,
        "note": "monitoring is on but nothing has been recorded yet",
    }
