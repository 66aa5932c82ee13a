"""Who runs what: promotion (claiming queued agents for free slots and launching their
runners), recovery (settling agents whose runner died) and the runner's side of a claim.

There is no daemon. Queued agents are started ("promoted") by whoever touches the pool next:
the spawner, the runner of an agent that just ended, or any pool operation. Promotion claims
agents inside one `BEGIN IMMEDIATE` transaction, so two promoters never start the same agent,
and a runner only runs an agent whose claim it holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from aegis_mcp import procs
from aegis_mcp.launch import python_command
from aegis_mcp.pool.settings import PoolSettings, load_settings
from aegis_mcp.pool.store import (
    ACTIVE,
    FAILED,
    LOST,
    QUEUED,
    RUNNING,
    STARTING,
    STOPPED,
    Store,
    paths_overlap,
)

_RUNNER_START_TIMEOUT = 60.0
"""A claimed agent whose runner has not registered by then is queued again."""
_MAX_LAUNCHES = 3
"""Launch attempts before an agent whose runner never comes up is marked failed."""
_LAUNCHED: list[subprocess.Popen[bytes]] = []
"""Runners this process started; polled so that a long-lived parent leaves no zombies."""
_LAUNCHED_LOCK = threading.Lock()


class Scheduler(Store):
    """The store, with the operations that start and settle agents."""

    def __init__(self, directory: Path | None = None, settings: PoolSettings | None = None) -> None:
        super().__init__(directory)
        self._settings = settings

    @property
    def settings(self) -> PoolSettings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    # --- promotion and recovery ---

    def promote(self) -> list[str]:
        """Recover dead runners, then claim queued agents for free slots (FIFO; an agent whose
        tree is locked waits, and so does every later agent on an overlapping tree) and start
        their runners. Returns the ids started."""
        _reap_launched()
        me = (os.getpid(), procs.start_time(os.getpid()))
        claimed: list[tuple[str, str]] = []
        with self.transaction() as conn:
            ended = self._recover(conn)
            active = conn.execute("SELECT lock_path FROM agents WHERE state IN (?, ?)",
                                  ACTIVE).fetchall()
            slots = self.settings.max_agents - len(active)
            held = [r["lock_path"] for r in active if r["lock_path"]]
            waiting: list[str] = []
            queued = conn.execute("SELECT id, lock_path FROM agents WHERE state = ? ORDER BY seq",
                                  (QUEUED,)).fetchall() if slots > 0 else []
            now = time.time()
            for row in queued:
                path = row["lock_path"]
                if path and any(paths_overlap(path, p) for p in (*held, *waiting)):
                    waiting.append(path)
                    continue
                if slots <= 0:
                    break
                claim = secrets.token_hex(8)
                conn.execute("UPDATE agents SET state = ?, claim = ?, claimed_at = ?,"
                             " claimer_pid = ?, claimer_start = ?, runner_pid = NULL,"
                             " runner_start = NULL, launches = launches + 1 WHERE id = ?",
                             (STARTING, claim, now, me[0], me[1], row["id"]))
                claimed.append((row["id"], claim))
                if path:
                    held.append(path)
                slots -= 1
        for agent_id in ended:
            self.notify(agent_id)
        procs.crashpoint("promote-after-claim")
        for agent_id, claim in claimed:
            self._launch_runner(agent_id, claim)
        return [agent_id for agent_id, _ in claimed]

    def _launch_runner(self, agent_id: str, claim: str) -> None:
        # The runner starts in the spawner's directory, often an untrusted checkout.
        cmd = python_command("aegis_mcp.pool.runner", "--pool-dir", str(self.dir),
                             "--agent", agent_id, "--claim", claim)
        env = dict(os.environ)
        # The agent id marks an agent's processes (see kill_orphaned_agent): a runner started
        # from inside a background agent must not carry that agent's mark.
        if not env.get(procs.CRASHPOINT_VAR, "").startswith("runner-"):
            env.pop(procs.CRASHPOINT_VAR, None)  # the pool's own points are not the runner's
        env.pop("AEGIS_AGENT_ID", None)
        # Marks the runner (and through it the agent's tree) as the pool's: a supervisor that
        # stops "every descendant" at a hot-reload must leave these alone (procs.POOL_RUNNER_MARK).
        env[procs.POOL_RUNNER_MARK] = agent_id
        with open(self.log_path(agent_id), "ab") as log:
            try:
                # Own session: no terminal signals reach it, and it outlives whoever launched it.
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        env=env, start_new_session=True, close_fds=True)
            except OSError as exc:
                self._finish_unstarted(agent_id, claim, FAILED, f"cannot start runner: {exc}")
                return
        with _LAUNCHED_LOCK:
            _LAUNCHED.append(proc)
        start = procs.start_time(proc.pid)
        with self.transaction() as conn:
            conn.execute("UPDATE agents SET runner_pid = ?, runner_start = ? WHERE id = ? AND"
                         " claim = ? AND state = ? AND runner_pid IS NULL",
                         (proc.pid, start, agent_id, claim, STARTING))

    def _finish_unstarted(self, agent_id: str, claim: str, state: str, reason: str) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE agents SET state = ?, reason = ?, ended_at = ? WHERE id = ? AND"
                         " claim = ? AND state = ?",
                         (state, reason, time.time(), agent_id, claim, STARTING))
        self.notify(agent_id)

    def _stale(self, row: sqlite3.Row, now: float) -> str | None:
        """What to do with an active agent whose runner is gone: None (it is fine), 'requeue',
        'lost', 'stopped' or 'failed'."""
        if row["state"] == RUNNING:
            if procs.alive(row["runner_pid"], row["runner_start"]):
                return None
            return STOPPED if row["stop_requested"] else LOST
        # starting: the claimer is launching the runner, or the runner is starting up.
        if row["runner_pid"] is not None:
            if procs.alive(row["runner_pid"], row["runner_start"]) and \
                    now - row["claimed_at"] < _RUNNER_START_TIMEOUT:
                return None
        elif procs.alive(row["claimer_pid"], row["claimer_start"]) and \
                now - row["claimed_at"] < _RUNNER_START_TIMEOUT:
            return None
        if row["stop_requested"]:
            return STOPPED
        return FAILED if row["launches"] >= _MAX_LAUNCHES else "requeue"

    def _recover(self, conn: sqlite3.Connection) -> list[str]:
        """Inside a transaction: settle agents whose runner died. Returns the ids it ended."""
        now = time.time()
        ended: list[str] = []
        for row in conn.execute("SELECT * FROM agents WHERE state IN (?, ?)", ACTIVE).fetchall():
            verdict = self._stale(row, now)
            if verdict is None:
                continue
            if verdict == "requeue":
                conn.execute("UPDATE agents SET state = ?, claim = NULL, runner_pid = NULL,"
                             " runner_start = NULL WHERE id = ?", (QUEUED, row["id"]))
                continue
            reason = {
                LOST: "its runner process died (killed?); the agent was stopped with it",
                STOPPED: "stopped by request",
                FAILED: f"its runner did not start {_MAX_LAUNCHES} times; see the log",
            }[verdict]
            if row["state"] == STARTING and verdict != FAILED:
                reason = "stopped by request before it started" if verdict == STOPPED else reason
            conn.execute("UPDATE agents SET state = ?, reason = ?, ended_at = ? WHERE id = ?",
                         (verdict, reason, now, row["id"]))
            kill_orphaned_agent(row["agent_pid"], row["env"])
            ended.append(row["id"])
        return ended

    def refresh(self) -> None:
        """Settle dead runners and start queued agents when slots are free; a cheap read when
        there is nothing to do."""
        _reap_launched()
        conn = self.conn
        rows = conn.execute("SELECT * FROM agents WHERE state IN (?, ?)", ACTIVE).fetchall()
        now = time.time()
        stale = any(self._stale(r, now) is not None for r in rows)
        queued = conn.execute("SELECT 1 FROM agents WHERE state = ? LIMIT 1", (QUEUED,)).fetchone()
        if stale or (queued and len(rows) < self.settings.max_agents):
            self.promote()

    # --- runner side (called by aegis_mcp.pool.runner) ---

    def register_runner(self, agent_id: str, claim: str) -> sqlite3.Row | None:
        """The runner takes over its claimed agent; None when the claim is no longer valid
        (re-queued, stopped meanwhile), in which case the runner must exit without running."""
        pid = os.getpid()
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE agents SET state = ?, runner_pid = ?, runner_start = ?, started_at = ?"
                " WHERE id = ? AND claim = ? AND state = ? AND stop_requested = 0",
                (RUNNING, pid, procs.start_time(pid), time.time(), agent_id, claim, STARTING))
            if cur.rowcount == 1:
                return conn.execute("SELECT * FROM agents WHERE id = ?", (agent_id,)).fetchone()
            cur = conn.execute(
                "UPDATE agents SET state = ?, reason = ?, ended_at = ? WHERE id = ? AND claim = ?"
                " AND state = ? AND stop_requested = 1",
                (STOPPED, "stopped by request before it started", time.time(), agent_id, claim,
                 STARTING))
        if cur.rowcount == 1:
            self.notify(agent_id)
        return None

    def record_progress(self, agent_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as conn:
            conn.execute(f"UPDATE agents SET {sets} WHERE id = ? AND state = ?",
                         (*fields.values(), agent_id, RUNNING))

    def record_end(self, agent_id: str, state: str, **fields: Any) -> None:
        """The final transaction of an agent: its state, result, and (by leaving the active
        states) the release of its lock."""
        fields = {"state": state, "ended_at": time.time(), **fields}
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as conn:
            conn.execute(f"UPDATE agents SET {sets} WHERE id = ? AND state = ?",
                         (*fields.values(), agent_id, RUNNING))
        self.notify(agent_id)

    def stop_requested(self, agent_id: str) -> bool:
        row = self.conn.execute("SELECT stop_requested FROM agents WHERE id = ?",
                                (agent_id,)).fetchone()
        return bool(row and row[0])


def _reap_launched() -> None:
    # Tools run pool operations in worker threads: one reaper at a time.
    with _LAUNCHED_LOCK:
        _LAUNCHED[:] = [proc for proc in _LAUNCHED if proc.poll() is None]


def kill_orphaned_agent(agent_pid: int | None, env_json: str) -> None:
    """After a runner died: SIGKILL what is left of its agent (the processes whose environment
    names the agent id), so that no one keeps editing a tree whose lock was just freed."""
    if not agent_pid:
        return
    agent_id = json.loads(env_json).get("AEGIS_AGENT_ID", "")
    if not agent_id:
        return
    for entry in os.listdir("/proc"):
        if entry.isdigit() and procs.environ_of(int(entry)).get("AEGIS_AGENT_ID") == agent_id:
            with contextlib.suppress(OSError):
                os.kill(int(entry), signal.SIGKILL)
