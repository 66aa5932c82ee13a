"""The pool's SQLite store: its schema and migrations, its transactions, its files (logs, done
files) and what a row says as an agent's status.

Every change goes through a transaction on the store (WAL), so any process (the MCP server
reborn at each hot-reload, the CLI, a runner) sees and changes the same pool, and a `kill -9` at
any moment leaves it consistent.

States: queued -> starting (claimed, runner on its way) -> running -> completed | failed |
stopped | lost (its runner died). A lock on an agent's working tree is held while the agent is
starting or running, so it is released by the very transaction that ends the agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NotRequired, TypedDict

from aegis_mcp.errors import AegisError
from aegis_mcp.netmon.digest import NetworkDigest

if TYPE_CHECKING:  # sqlite3 waits for the first query: the MCP server imports AgentStatus
    import sqlite3

QUEUED, STARTING, RUNNING = "queued", "starting", "running"
COMPLETED, FAILED, STOPPED, LOST = "completed", "failed", "stopped", "lost"
ACTIVE = (STARTING, RUNNING)
ENDED = (COMPLETED, FAILED, STOPPED, LOST)
_IDS_HINT = "the agent_list tool or `aegis-mcp agents list` shows the ids"

_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    agent_type TEXT NOT NULL,
    working_directory TEXT NOT NULL,
    cwd TEXT NOT NULL,
    isolation TEXT NOT NULL,
    lock_path TEXT,
    repo_root TEXT,
    worktree_path TEXT,
    branch TEXT,
    worktree_setup TEXT,
    agent_port INTEGER,
    argv TEXT NOT NULL,
    env TEXT NOT NULL,
    max_iterations INTEGER,
    enforce_iterations INTEGER NOT NULL DEFAULT 0,
    timeout_secs REAL,
    stop_grace_secs REAL NOT NULL,
    created_at REAL NOT NULL,
    claimed_at REAL,
    started_at REAL,
    ended_at REAL,
    claim TEXT,
    claimer_pid INTEGER,
    claimer_start INTEGER,
    launches INTEGER NOT NULL DEFAULT 0,
    runner_pid INTEGER,
    runner_start INTEGER,
    agent_pid INTEGER,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    iterations INTEGER NOT NULL DEFAULT 0,
    last_event TEXT,
    last_output TEXT NOT NULL DEFAULT '[]',
    exit_code INTEGER,
    reason TEXT,
    result TEXT,
    num_turns INTEGER,
    total_cost_usd REAL,
    session_id TEXT,
    notes TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS agents_state ON agents(state, seq);
"""

class AgentStatus(TypedDict):
    """What the store says of one agent: the Pool API returns it, the CLI prints it, and the
    MCP tools' output model is built from this declaration (pool/tools.py). The string in a
    field's Annotated is its description, the one place MCP clients read it from."""

    agent_id: str
    state: Annotated[str, "queued, starting, running, completed, failed, stopped, or lost (its "
                     "runner process died)"]
    description: Annotated[str, "The task the agent was given"]
    agent_type: str
    working_directory: Annotated[str, "The directory the agent was spawned for"]
    cwd: Annotated[str, "Where the agent runs (inside its worktree when isolated)"]
    isolation: Annotated[str, "lock: it holds a lock on working_directory; worktree: it works "
                         "in its own git worktree and branch"]
    worktree_path: Annotated[str | None, "Its git worktree (merge its branch when done)"]
    branch: Annotated[str | None, "Its git branch, for isolation=worktree"]
    port: Annotated[int | None, "Its AEGIS_AGENT_PORT: a TCP port that was free when it "
                    "started, for its own dev server"]
    pid: Annotated[int | None, "The agent process while it runs"]
    runner_pid: Annotated[int | None, "The pool runner process that owns the agent"]
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    elapsed_secs: float | None
    iterations: Annotated[int, "Turns (assistant messages) seen so far"]
    max_iterations: int | None
    timeout_secs: float | None
    exit_code: Annotated[int | None, "The agent's exit code (128+N: killed by signal N)"]
    reason: Annotated[str | None, "Why it ended, when not a plain success"]
    last_event: Annotated[str | None, "The last event of its stream, in one line"]
    last_output: Annotated[list[str], "Its last output lines (events in one line each)"]
    result: Annotated[str | None, "The agent's final answer (claude's and cursor's result "
                      "event, codex's and gemini's last message, Aider's last reply in its chat "
                      "history)"]
    num_turns: int | None
    total_cost_usd: float | None
    session_id: Annotated[str | None, "Its conversation id (claude --resume ID)"]
    log_path: Annotated[str, "The full output of the agent"]
    chat_history_path: Annotated[str | None, "Its own chat transcript, for agents that keep one "
                                 "(Aider)"]
    network: Annotated[NetworkDigest | None, "Its network connections, from a log of its own "
                       "(null when not monitored: see notes)"]
    queue_position: Annotated[int | None, "1 = next to start, while queued"]
    waiting_for: Annotated[list[str], "Agents whose lock this queued agent waits for"]
    notes: list[str]


class AwaitResult(AgentStatus):
    """`Pool.await_agent`: the status when the wait ended."""

    timed_out: Annotated[bool, "True: the wait ended first; the agent goes on (it keeps "
                         "running, or stays queued)"]


class StopResult(AgentStatus):
    """`Pool.stop`: the status after the stop."""

    timed_out: NotRequired[bool]  # when it waited for the runner to confirm
    stopped_now: Annotated[bool, "False when the agent had already ended"]


class PoolStats(TypedDict):
    """`Pool.stats`: the pool's counts."""

    max_agents: Annotated[int, "Agents that may run at once; more spawns queue"]
    active: Annotated[int, "queued + running"]
    queued: int
    running: Annotated[int, "running, including those starting"]
    completed: int
    failed: int
    stopped: int
    lost: int
    total: int
    free_slots: int
    store: Annotated[str, "The pool's SQLite database"]


class FileLock(TypedDict):
    """`Pool.locks`: one held lock."""

    path: Annotated[str, "The locked directory tree"]
    agent_id: Annotated[str, "The agent holding it"]
    kind: Annotated[str, "tree (a working directory) or worktree (its own worktree)"]
    since: str | None
    waiting: Annotated[list[str], "Queued agents waiting for this tree, in order"]


def default_directory() -> Path:
    from aegis_mcp.paths import state_dir

    return state_dir() / "pool"



def paths_overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def iso_time(ts: float | None) -> str | None:
    if ts is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class Store:
    """The store of one pool directory. Cheap to create: the database is opened (and created
    or upgraded) on first use."""

    def __init__(self, directory: Path | None = None) -> None:
        from aegis_mcp.paths import ensure_private_dir

        self.dir = ensure_private_dir(directory or default_directory())
        self.logs = ensure_private_dir(self.dir / "logs")
        self.done = ensure_private_dir(self.dir / "done")
        self.worktrees = self.dir / "worktrees"
        self.db_path = self.dir / "pool.db"
        self._conn: sqlite3.Connection | None = None


    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            import sqlite3

            if not self.db_path.exists():
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(self.db_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 60000")
            # WAL: readers never block the writer; NORMAL sync survives any process crash.
            # Switching a new store to WAL needs it to itself, and SQLite reports "database is
            # locked" at once (no busy handler) when other processes open it at that moment.
            deadline = time.monotonic() + 60
            while True:
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            conn.execute("PRAGMA synchronous = NORMAL")
            self._conn = conn
            if conn.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
                with self.transaction():
                    version = conn.execute("PRAGMA user_version").fetchone()[0]
                    if version == 1:  # a store of the first release: two columns more since
                        conn.execute("ALTER TABLE agents ADD COLUMN worktree_setup TEXT")
                        conn.execute("ALTER TABLE agents ADD COLUMN agent_port INTEGER")
                    elif version != _SCHEMA_VERSION:
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: one writer at a time, all or nothing."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def notify(self, agent_id: str) -> None:
        """Touch the agent's done file: wakes every `await` watching the done directory."""
        fd = os.open(self.done / agent_id, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        os.write(fd, b"1")
        os.close(fd)

    def log_path(self, agent_id: str) -> Path:
        return self.logs / f"{agent_id}.log"

    def netmon_path(self, agent_id: str) -> Path:
        """The agent's netmon log, when the pool records its network (PoolSettings.netmon)."""
        return self.logs / f"{agent_id}.netmon.jsonl"

    def policy_path(self, agent_id: str) -> Path:
        """The agent's compiled network policy (AEGIS_NETMON_POLICY), when it has one."""
        return self.logs / f"{agent_id}.policy"

    def chat_path(self, agent_id: str) -> Path:
        """The transcript an agent keeps where its profile asks for one (Aider's chat history:
        each background agent its own, rather than all appending to the project's)."""
        return self.logs / f"{agent_id}.chat.md"

    # --- lookups ---

    def _row(self, agent_id: str) -> sqlite3.Row:
        if not isinstance(agent_id, str) or not agent_id.strip():
            raise AegisError(f"agent id must not be empty ({_IDS_HINT})")
        agent_id = agent_id.strip()
        row = self.conn.execute("SELECT * FROM agents WHERE id = ?", (agent_id,)).fetchone()
        if row is not None:
            return row
        rows = self.conn.execute("SELECT * FROM agents WHERE id LIKE ? ESCAPE '\\' LIMIT 2",
                                 (agent_id.replace("%", "\\%").replace("_", "\\_") + "%",)
                                 ).fetchall()
        if len(rows) == 1:
            return rows[0]
        if rows:
            raise AegisError(f"agent id {agent_id!r} is ambiguous: give more characters")
        raise AegisError(f"unknown agent id {agent_id!r} ({_IDS_HINT})")

    def resolve_id(self, agent_id: str) -> str:
        """The full id of `agent_id`, which may be a unique prefix."""
        return str(self._row(agent_id)["id"])

    def _status(self, row: sqlite3.Row, lines: int = 10) -> AgentStatus:
        now = time.time()
        out: AgentStatus = {
            "agent_id": row["id"],
            "state": row["state"],
            "description": row["description"],
            "agent_type": row["agent_type"],
            "working_directory": row["working_directory"],
            "cwd": row["cwd"],
            "isolation": row["isolation"],
            "worktree_path": row["worktree_path"],
            "branch": row["branch"],
            "port": row["agent_port"],
            "pid": row["agent_pid"] if row["state"] == RUNNING else None,
            "runner_pid": row["runner_pid"] if row["state"] in ACTIVE else None,
            "created_at": iso_time(row["created_at"]),
            "started_at": iso_time(row["started_at"]),
            "ended_at": iso_time(row["ended_at"]),
            "elapsed_secs": None,
            "iterations": row["iterations"],
            "max_iterations": row["max_iterations"],
            "timeout_secs": row["timeout_secs"] or None,
            "exit_code": row["exit_code"],
            "reason": row["reason"],
            "last_event": row["last_event"],
            "last_output": json.loads(row["last_output"] or "[]")[-lines:],
            "result": row["result"],
            "num_turns": row["num_turns"],
            "total_cost_usd": row["total_cost_usd"],
            "session_id": row["session_id"],
            "log_path": str(self.log_path(row["id"])),
            "chat_history_path": str(chat) if (chat := self.chat_path(row["id"])).exists()
            else None,
            "network": None,
            "queue_position": None,
            "waiting_for": [],
            "notes": json.loads(row["notes"] or "[]"),
        }
        if json.loads(row["env"] or "{}").get("AEGIS_NETMON_LOG") and row["state"] != QUEUED:
            from aegis_mcp.netmon.digest import digest

            out["network"] = digest(self.netmon_path(row["id"]))
        if row["started_at"]:
            out["elapsed_secs"] = round((row["ended_at"] or now) - row["started_at"], 3)
        if row["state"] == QUEUED:
            out["queue_position"] = self.conn.execute(
                "SELECT COUNT(*) FROM agents WHERE state = ? AND seq <= ?",
                (QUEUED, row["seq"])).fetchone()[0]
            if row["lock_path"]:
                out["waiting_for"] = [
                    r["id"] for r in self.conn.execute(
                        "SELECT id, lock_path FROM agents WHERE lock_path IS NOT NULL AND"
                        " (state IN (?, ?) OR (state = ? AND seq < ?)) ORDER BY seq",
                        (*ACTIVE, QUEUED, row["seq"]))
                    if paths_overlap(r["lock_path"], row["lock_path"])]
        return out
