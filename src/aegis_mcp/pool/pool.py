"""The agent pool: background agents in one SQLite store, run by one runner process each.

`Pool` is what users call (the tools, the CLI, tests). It is the top of a chain of classes, one
module each, so that every operation stays a method of one object: `Store` (store.py: schema,
transactions, status), `Scheduler` (scheduler.py: promotion, recovery, the runner's side).
Settings, the agent's command line, inotify and process identity have modules of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aegis_mcp import agentenv, procs
from aegis_mcp.errors import AegisError
from aegis_mcp.pathcheck import check_path, current_directory
from aegis_mcp.pool.scheduler import Scheduler
from aegis_mcp.pool.settings import ISOLATIONS, load_settings
from aegis_mcp.pool.store import (
    ACTIVE,
    COMPLETED,
    ENDED,
    FAILED,
    LOST,
    QUEUED,
    RUNNING,
    STARTING,
    STOPPED,
    AgentStatus,
    AwaitResult,
    FileLock,
    PoolStats,
    StopResult,
    iso_time,
    paths_overlap,
)
from aegis_mcp.pool.watch import Watch
from aegis_mcp.profiles.argv import headless_argv

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aegis_mcp.netmon.policy import Policy
    from aegis_mcp.profiles.profile import AgentProfile

_PROGRESS_READ_EVERY = 0.1
"""`await_agent` with progress reads the store at most this often however busy the pool is."""


class Pool(Scheduler):
    """The pool store and its operations. Cheap to create; every method is one or a few short
    transactions, safe to call from any number of processes at once."""

    def spawn(self, description: str, agent_type: str = "claude",
              working_directory: str | None = None, max_iterations: int | None = None,
              isolation: str | None = None, timeout_secs: float | None = None,
              env: dict[str, str] | None = None, network_allow: list[str] | None = None,
              network_deny: list[str] | None = None) -> AgentStatus:
        """Queue a background agent and start it if a slot and its lock are free. Returns its
        status at once (state queued, starting or, rarely, already running).

        `network_allow`/`network_deny` give it a network policy of its own (with the config's
        [network] rules), enforced by the hooks library; an agent spawned from under a policy
        (the caller's AEGIS_NETMON_POLICY) gets that policy too, never less."""
        from aegis_mcp.profiles.profile import get_profile, load_config

        if not isinstance(description, str) or not description.strip():
            raise AegisError("description must say what the agent should do (it was empty)")
        if max_iterations is not None and not 1 <= max_iterations <= 100_000:
            raise AegisError(f"max_iterations must be from 1 to 100000 (got {max_iterations})")
        if timeout_secs is not None and not 0 <= timeout_secs <= 7 * 86400:
            raise AegisError(f"timeout_secs must be from 0 to 604800 (got {timeout_secs})")
        if isolation is not None and isolation not in ISOLATIONS:
            raise AegisError(f"isolation must be lock or worktree (got {isolation!r})")
        config = load_config()
        if self._settings is None:
            raw = config.settings.get("pool", {})
            self._settings = load_settings(raw if isinstance(raw, dict) else None)
        settings = self.settings
        profile = get_profile(agent_type, config)
        caller = os.environ if env is None else env
        policy = agent_policy(profile, caller, network_allow or [], network_deny or [],
                              config.settings, config.source)
        # Checked before anything is stored: a bad path is one line, and no agent.
        wd = check_path(os.path.expanduser(working_directory) if working_directory
                        else current_directory(), "working directory", directory=True)

        repo_root = _git_toplevel(wd) if (isolation or settings.isolation) == "worktree" else None
        if isolation == "worktree" and repo_root is None:
            raise AegisError(f"isolation=worktree needs a git repository, and {wd} is not in one "
                             "(use isolation=lock)")
        chosen = "worktree" if repo_root else "lock"

        for _ in range(5):
            agent_id = secrets.token_hex(4)
            agent_env = agentenv.for_background_agent(agent_id, os.environ if env is None else env)
            argv, enforce, notes = headless_argv(profile, description, max_iterations, agent_env,
                                                 self.chat_path(agent_id))
            if settings.netmon or policy is not None:
                unseen = self._monitor(agent_env, profile, argv[0], agent_id)
                if unseen and policy is not None:
                    raise AegisError(f"{profile.name}: a network policy cannot bind it: "
                                     f"{unseen[0].removeprefix('network not monitored: ')}")
                notes += unseen
            if policy is not None:
                from aegis_mcp.netmon.policy import describe, write_compiled

                path = self.policy_path(agent_id)
                write_compiled(str(path), policy.compile())
                agent_env["AEGIS_NETMON_POLICY"] = str(path)
                notes.append(f"network policy: {describe(policy)}, enforced by the LD_PRELOAD "
                             "connect hook (advisory: static binaries and raw system calls "
                             "pass by it)")
            if chosen == "worktree":
                assert repo_root is not None
                worktree = str(self.worktrees / agent_id)
                branch = f"aegis/{agent_id}"
                sub = os.path.relpath(wd, repo_root)
                cwd = os.path.normpath(os.path.join(worktree, sub))
                lock_path = worktree
            else:
                worktree = branch = None
                cwd = lock_path = wd
            try:
                with self.transaction() as conn:
                    conn.execute(
                        "INSERT INTO agents (id, state, description, agent_type, working_directory,"
                        " cwd, isolation, lock_path, repo_root, worktree_path, branch,"
                        " worktree_setup, argv, env, max_iterations, enforce_iterations,"
                        " timeout_secs, stop_grace_secs, created_at, notes)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (agent_id, QUEUED, description, agent_type, wd, cwd, chosen, lock_path,
                         repo_root, worktree, branch,
                         (settings.worktree_setup or None) if worktree else None,
                         json.dumps(argv), json.dumps(agent_env),
                         max_iterations, int(enforce),
                         settings.timeout_secs if timeout_secs is None else timeout_secs,
                         settings.stop_grace_secs, time.time(), json.dumps(notes)))
                break
            except sqlite3.IntegrityError:
                continue
        else:  # pragma: no cover - 5 collisions of 32 random bits
            raise AegisError("could not pick a fresh agent id")
        procs.crashpoint("spawn-after-insert")
        self.promote()
        return self.status(agent_id, refresh=False)

    def _monitor(self, env: dict[str, str], profile: AgentProfile, executable: str,
                 agent_id: str) -> list[str]:
        """Give the agent's processes the hooks library and a netmon log of their own (in
        `env`), as `--netmon=preload` does for a supervisor's agent; the note that says why
        not, when LD_PRELOAD cannot see this agent."""
        from aegis_mcp.netmon.elf import is_preload_visible
        from aegis_mcp.paths import hooks_library, hooks_library_missing

        if missing := hooks_library_missing():
            return [f"network not monitored: {missing}"]
        if profile.static_binary or not is_preload_visible(executable):
            return [f"network not monitored: {profile.name} does its networking in a "
                    "statically linked binary, which LD_PRELOAD cannot see"]
        lib = str(hooks_library())
        env["LD_PRELOAD"] = " ".join([lib, *env.get("LD_PRELOAD", "").split()])
        env["AEGIS_NETMON_LOG"] = str(self.netmon_path(agent_id))
        return []

    def status(self, agent_id: str, refresh: bool = True) -> AgentStatus:
        """Everything known about one agent (see docs/pool.md for the fields)."""
        if refresh:
            self.refresh()
        row = self._row(agent_id)
        return self._status(row)

    def list(self, active_only: bool = False, limit: int = 50) -> list[AgentStatus]:
        """The most recent agents first (queued and running ones always included)."""
        if not 1 <= limit <= 10_000:
            raise AegisError(f"limit must be from 1 to 10000 (got {limit})")
        self.refresh()
        rows = self.conn.execute(
            "SELECT * FROM agents WHERE state NOT IN (?, ?, ?, ?) ORDER BY seq", ENDED).fetchall()
        if not active_only:
            ended = self.conn.execute(
                "SELECT * FROM agents WHERE state IN (?, ?, ?, ?) ORDER BY seq DESC LIMIT ?",
                (*ENDED, max(0, limit - len(rows)))).fetchall()
            rows = sorted([*rows, *ended], key=lambda r: r["seq"])
        return [self._status(r, lines=1) for r in rows]

    def await_agent(self, agent_id: str, timeout_secs: float | None = None,
                    on_progress: Callable[[AgentStatus], None] | None = None) -> AwaitResult:
        """Block until the agent has ended (or `timeout_secs` passed: then `timed_out` is True
        and the agent goes on, running or queued). Wakes on the done file, not by polling the
        store. With `on_progress`, it also wakes on every write to the store (turns, the last
        event, a queued agent starting) and calls `on_progress` with the status each time
        the agent's status changed, and once at the start."""
        if timeout_secs is not None and not 0 <= timeout_secs <= 7 * 86400:
            raise AegisError(f"timeout_secs must be from 0 to 604800 (got {timeout_secs})")
        agent_id = self.resolve_id(agent_id)
        deadline = None if timeout_secs is None else time.monotonic() + timeout_secs
        runner: tuple[int, int] | None = None  # (pid, pidfd) of the agent's runner
        shown: dict[str, Any] | None = None
        try:
            with self.watch_changes() if on_progress else Watch([self.done]) as watch:
                while True:
                    status = self.status(agent_id)
                    if status["state"] in ENDED:
                        return {**status, "timed_out": False}
                    if on_progress is not None:
                        # elapsed_secs changes at every read: the caller ticks it itself.
                        seen = {k: v for k, v in status.items() if k != "elapsed_secs"}
                        if seen != shown:
                            shown = seen
                            on_progress(status)
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return {**status, "timed_out": True}
                    # The done file wakes us when the runner records the end; a pidfd on the
                    # runner wakes us when it dies without a word (kill -9). The bounded wait
                    # only backs these up.
                    pid = status["runner_pid"]
                    if pid and (runner is None or runner[0] != pid):
                        if runner is not None:
                            os.close(runner[1])
                        runner = procs.pidfd(pid, self._row(agent_id)["runner_start"])
                    woke = time.monotonic()
                    watch.wait(5.0 if left is None else min(left, 5.0),
                               (runner[1],) if runner else ())
                    if on_progress is not None:
                        # Other agents write to the store too: at most this many reads a second.
                        time.sleep(max(0.0, woke + _PROGRESS_READ_EVERY - time.monotonic()))
        finally:
            if runner is not None:
                os.close(runner[1])

    def watch_changes(self) -> Watch:
        """An inotify watch that wakes on any change to the pool: a write to the store (a
        spawn, a runner's progress, an end) and the done files. For views that follow the
        pool (`await` with progress, `aegis-mcp top`): `with pool.watch_changes() as w:
        w.wait(timeout)`."""
        return Watch([self.dir, self.done])

    def stop(self, agent_id: str, wait_secs: float | None = None) -> StopResult:
        """Stop the agent's whole process tree (SIGINT, SIGTERM, then SIGKILL, each after the
        grace time) and record it as stopped. Waits for the runner to confirm."""
        agent_id = self.resolve_id(agent_id)
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM agents WHERE id = ?", (agent_id,)).fetchone()
            if row["state"] in ENDED:
                return {**self._status(row), "stopped_now": False}
            if row["state"] == QUEUED:
                conn.execute("UPDATE agents SET state = ?, stop_requested = 1, ended_at = ?,"
                             " reason = ? WHERE id = ?",
                             (STOPPED, time.time(), "stopped by request while queued", agent_id))
            else:
                conn.execute("UPDATE agents SET stop_requested = 1 WHERE id = ?", (agent_id,))
        if row["state"] == QUEUED:
            self.notify(agent_id)
            self.promote()
        # A starting agent's runner sees the request when it registers, and ends it unstarted.
        elif row["state"] == RUNNING and procs.alive(row["runner_pid"], row["runner_start"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(row["runner_pid"], signal.SIGTERM)
        grace = row["stop_grace_secs"]
        status = self.await_agent(agent_id, 2 * grace + 10 if wait_secs is None else wait_secs)
        return {**status, "stopped_now": status["state"] in ENDED}

    def stats(self) -> PoolStats:
        self.refresh()
        counts = dict.fromkeys((QUEUED, STARTING, RUNNING, *ENDED), 0)
        for state, n in self.conn.execute("SELECT state, COUNT(*) FROM agents GROUP BY state"):
            counts[state] = n
        running = counts[STARTING] + counts[RUNNING]
        return {
            "max_agents": self.settings.max_agents,
            "active": running + counts[QUEUED],
            "queued": counts[QUEUED],
            "running": running,
            "completed": counts[COMPLETED],
            "failed": counts[FAILED],
            "stopped": counts[STOPPED],
            "lost": counts[LOST],
            "total": sum(counts.values()),
            "free_slots": max(0, self.settings.max_agents - running),
            "store": str(self.db_path),
        }

    def prune(self, older_than_secs: float, worktrees: bool = False) -> dict[str, Any]:
        """Forget agents that ended more than `older_than_secs` ago: their rows, logs and done
        files. An agent whose git worktree still exists is kept (its work may not be merged
        yet) unless `worktrees`: then the worktree is removed with `git worktree remove`, which
        refuses a worktree with uncommitted changes; the branch always stays."""
        from aegis_mcp.netmon.log import rotated_path
        from aegis_mcp.netmon.summary import summary_path

        if not 0 <= older_than_secs <= 10 * 365 * 86400:
            raise AegisError(f"older_than_secs must be from 0 to ten years (got {older_than_secs})")
        self.refresh()
        cutoff = time.time() - older_than_secs
        rows = self.conn.execute(
            "SELECT * FROM agents WHERE state IN (?, ?, ?, ?) AND ended_at IS NOT NULL"
            " AND ended_at <= ? ORDER BY seq", (*ENDED, cutoff)).fetchall()
        removed, kept = [], []
        for row in rows:
            tree = row["worktree_path"]
            if tree and os.path.isdir(tree):
                why = None
                if not worktrees:
                    why = "its worktree is still there (pass --worktrees to remove it)"
                else:
                    done = subprocess.run(
                        ["git", "-C", row["repo_root"], "worktree", "remove", tree],
                        capture_output=True, text=True, check=False)
                    if done.returncode != 0:
                        why = f"git worktree remove refused: {done.stderr.strip()[:200]}"
                if why:
                    kept.append({"agent_id": row["id"], "worktree_path": tree,
                                 "branch": row["branch"], "why": why})
                    continue
            with self.transaction() as conn:
                conn.execute("DELETE FROM agents WHERE id = ?", (row["id"],))
            net = self.netmon_path(row["id"])
            for path in (self.log_path(row["id"]), self.chat_path(row["id"]), net,
                         rotated_path(net), summary_path(net), self.policy_path(row["id"]),
                         self.done / row["id"]):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append({"agent_id": row["id"], "state": row["state"],
                            "branch": row["branch"]})
        return {"removed": removed, "kept": kept}

    def locks(self) -> list[FileLock]:
        """Every held lock: the locked tree, its agent, since when, and who waits for it."""
        self.refresh()
        held = self.conn.execute(
            "SELECT id, lock_path, isolation, claimed_at, started_at FROM agents WHERE state IN"
            " (?, ?) AND lock_path IS NOT NULL ORDER BY seq", ACTIVE).fetchall()
        queued = self.conn.execute(
            "SELECT id, lock_path FROM agents WHERE state = ? AND lock_path IS NOT NULL"
            " ORDER BY seq", (QUEUED,)).fetchall()
        return [{
            "path": h["lock_path"],
            "agent_id": h["id"],
            "kind": "worktree" if h["isolation"] == "worktree" else "tree",
            "since": iso_time(h["started_at"] or h["claimed_at"]),
            "waiting": [q["id"] for q in queued if paths_overlap(q["lock_path"], h["lock_path"])],
        } for h in held]



def _git_toplevel(path: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    proc = subprocess.run([git, "-C", path, "rev-parse", "--show-toplevel"],
                          capture_output=True, text=True, check=False)
    return os.path.realpath(proc.stdout.strip()) if proc.returncode == 0 else None


def agent_policy(profile: AgentProfile, caller: Mapping[str, str], allow: list[str],
                 deny: list[str], settings: Mapping[str, Any], source: Any) -> Policy | None:
    """A background agent's network policy: the config's [network] rules and its own, with
    the implicit allows its profile needs. Spawned from under a policy (an agent started with
    --allow/--deny spawning helpers), it gets that policy with its own denies added: a
    background agent must never be a way around its caller's policy, so an allow of its own
    is refused there (an allow cannot narrow what the caller's rules let through)."""
    from aegis_mcp.netmon import policy as netpolicy

    inherited = caller.get(netpolicy.ENV_VAR)
    if inherited:
        parent = netpolicy.load(inherited)
        if allow:
            raise AegisError("network_allow: this agent is spawned from under a network policy "
                             f"({netpolicy.describe(parent)}), which it keeps; give "
                             "network_deny to narrow it")
        return netpolicy.narrowed(parent, netpolicy.from_flags([], deny))
    users = netpolicy.user_rules(allow, deny, settings=settings, source=source)
    implicit = netpolicy.implicit_rules(profile, caller, netpolicy.resolvers())
    return netpolicy.effective(users, implicit)
