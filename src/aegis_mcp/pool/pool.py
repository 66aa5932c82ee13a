"""The agent pool: background agents in one SQLite store, run by one runner process each.

There is no daemon. Every change goes through a transaction on the store (WAL), so any process
(the MCP server reborn at each hot-reload, the CLI, a runner) sees and changes the same pool,
and a `kill -9` at any moment leaves it consistent. Queued agents are started ("promoted") by
whoever touches the pool next: the spawner, the runner of an agent that just ended, or any
pool operation. Promotion claims agents inside one `BEGIN IMMEDIATE` transaction, so two
promoters never start the same agent, and a runner only runs an agent whose claim it holds.

States: queued -> starting (claimed, runner on its way) -> running -> completed | failed |
stopped | lost (its runner died). A lock on an agent's working tree is held while the agent is
starting or running, so it is released by the very transaction that ends the agent.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import select
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aegis_mcp.errors import AegisError
from aegis_mcp.launch import python_command
from aegis_mcp.pathcheck import check_path, current_directory
from aegis_mcp.profiles.argv import with_injected

QUEUED, STARTING, RUNNING = "queued", "starting", "running"
COMPLETED, FAILED, STOPPED, LOST = "completed", "failed", "stopped", "lost"
ACTIVE = (STARTING, RUNNING)
ENDED = (COMPLETED, FAILED, STOPPED, LOST)
ISOLATIONS = ("lock", "worktree")

# Variables of the caller's own agent session that must not leak into a background agent:
# a nested claude refuses to start with CLAUDECODE=1, and the supervisor's hooks, control
# socket and MCP overlay belong to the foreground agent only.
_DROPPED_ENV = (
    "CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_SSE_PORT", "CLAUDE_AGENT_SDK_VERSION",
    "AEGIS_CONTROL", "AEGIS_SUPERVISOR_PID", "AEGIS_MCP_OVERLAY", "AEGIS_MCP_REDIRECT",
    "AEGIS_NETMON_LOG", "AEGIS_NETMON_MODE", "AEGIS_POOL_CRASHPOINT", "AEGIS_POOL_RUNNER",
    "LD_PRELOAD", "CURSOR_AGENT", "CODEX_SANDBOX", "GEMINI_CLI",
)
RUNNER_MARK = "AEGIS_POOL_RUNNER"
_IDS_HINT = "the agent_list tool or `aegis-mcp agents list` shows the ids"
"""Environment variable naming the agent id in every runner's environment. Runners started by
the MCP server are descendants of the supervisor (a child subreaper); its stop of the agent's
tree must skip them and their descendants, or background agents would die at each reload."""
_RUNNER_START_TIMEOUT = 60.0
"""A claimed agent whose runner has not registered by then is queued again."""
_MAX_LAUNCHES = 3
"""Launch attempts before an agent whose runner never comes up is marked failed."""

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


# --- settings ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolSettings:
    """The `[pool]` table of the config file; env vars AEGIS_POOL_<KEY> override it."""

    max_agents: int = 4
    """Agents running at once; more spawns wait in a FIFO queue."""
    timeout_secs: float = 3600.0
    """Default time limit of one agent; 0 means none."""
    isolation: str = "lock"
    """`lock`: an agent locks its working tree; `worktree`: in a git repository, each agent
    gets its own git worktree and branch (elsewhere it falls back to `lock`)."""
    stop_grace_secs: float = 3.0
    """How long a stopping agent gets after SIGINT, then after SIGTERM, before SIGKILL."""
    worktree_setup: str = ""
    """A shell command run in each new git worktree before its agent starts (install the
    dependencies, write a .env with $AEGIS_AGENT_PORT, ...); its failure fails the agent."""


_ENV_KEYS = {
    "max_agents": "AEGIS_POOL_MAX_AGENTS",
    "timeout_secs": "AEGIS_POOL_TIMEOUT",
    "isolation": "AEGIS_POOL_ISOLATION",
    "stop_grace_secs": "AEGIS_POOL_STOP_GRACE",
    "worktree_setup": "AEGIS_POOL_WORKTREE_SETUP",
}


def load_settings(table: dict[str, Any] | None = None) -> PoolSettings:
    """Settings from `table` (default: the config file's `[pool]`), then the environment."""
    if table is None:
        from aegis_mcp.profiles.profile import load_config

        raw = load_config().settings.get("pool", {})
        if not isinstance(raw, dict):
            raise AegisError("config: `pool` must be a table ([pool])")
        table = raw
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _ENV_KEYS:
            raise AegisError(f"config: [pool] has unknown key {key!r} "
                             f"(known: {', '.join(_ENV_KEYS)})")
        values[key] = value
    for key, var in _ENV_KEYS.items():
        if os.environ.get(var):
            values[key] = os.environ[var]
    return _checked_settings(values)


def _checked_settings(values: dict[str, Any]) -> PoolSettings:
    out: dict[str, Any] = {}
    for key, value in values.items():
        try:
            if key == "max_agents":
                out[key] = int(value)
                ok = 1 <= out[key] <= 256
            elif key == "isolation":
                out[key] = str(value)
                ok = out[key] in ISOLATIONS
            elif key == "worktree_setup":
                out[key] = value
                ok = isinstance(value, str)
            else:
                out[key] = float(value)
                ok = 0 <= out[key] <= 7 * 86400
        except (TypeError, ValueError):
            ok = False
        if not ok:
            expected = {"max_agents": "a whole number from 1 to 256",
                        "isolation": "lock or worktree",
                        "worktree_setup": "a shell command, as a string",
                        }.get(key, "seconds from 0 to 604800")
            raise AegisError(f"pool setting {key} = {value!r}: expected {expected}")
    return PoolSettings(**out)


# --- small process helpers --------------------------------------------------------------------

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


def _crashpoint(name: str) -> None:
    """Fault injection for the recovery tests: die here, as `kill -9` would."""
    if os.environ.get("AEGIS_POOL_CRASHPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _paths_overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def headless_argv(profile: Any, prompt: str, max_iterations: int | None,
                  env: dict[str, str] | None = None, chat_history: Path | None = None
                  ) -> tuple[list[str], bool, list[str]]:
    """The argv of a headless run of `profile` on `prompt`, whether the pool must enforce
    `max_iterations` itself (the agent has no turn limit flag), and notes for the status.
    `{prompt}` in the profile's headless_args becomes the task, `{chat_history}` the agent's
    own transcript file (Aider's, from which the runner takes its answer). The flags added
    here go before a `--` in headless_args, so that the task can stay last, after it."""
    notes: list[str] = []
    if not profile.headless_args:
        raise AegisError(f"agent type {profile.name!r} has no headless mode (set headless_args "
                         f"in [agents.{profile.name}] of the config)")
    _check_task_is_text(profile, prompt)
    args = [a.replace("{prompt}", prompt).replace("{chat_history}", str(chat_history or ""))
            for a in profile.headless_args]
    flags = list(profile.permission_flags)
    # Claude Code accepts its permission-skipping flag as root only in a declared sandbox.
    sandbox = (env if env is not None else os.environ).get("IS_SANDBOX") == "1"
    if os.geteuid() == 0 and profile.refuses_root_flags and not sandbox:
        dropped = [f for f in flags if f in profile.refuses_root_flags]
        flags = [f for f in flags if f not in profile.refuses_root_flags]
        if dropped:
            notes.append(f"running as root: left out {' '.join(dropped)} (the agent refuses it "
                         "as root unless IS_SANDBOX=1), so it may be denied tools")
    enforce = False
    if max_iterations is not None:
        if profile.max_turns_flag:
            flags += [profile.max_turns_flag, str(max_iterations)]
        else:
            enforce = True
    argv = [profile.executable(), *profile.command[1:], *with_injected(args, flags)]
    return argv, enforce, notes


def _check_task_is_text(profile: Any, prompt: str) -> None:
    """The task is untrusted text (a description from an MCP client): it must reach the agent as
    its prompt, never as an option of the agent CLI."""
    if not prompt.strip(" -"):
        # Measured: codex exec reads its prompt from stdin for `-`, argparse (aider) drops `--`.
        raise AegisError(f"the task {prompt!r} says nothing the agent can do: describe the task")
    if not prompt.startswith("-"):
        return
    args = list(profile.headless_args)
    for i, arg in enumerate(args):
        if arg == "{prompt}" and "--" not in args[:i]:
            raise AegisError(
                f"the task starts with '-' and agent type {profile.name!r} passes it as a word "
                f"of its own, which {profile.name} would read as an option: in "
                f"[agents.{profile.name}] headless_args, put \"--\" before \"{{prompt}}\" or "
                "use the --option={prompt} form")


def agent_environment(agent_id: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The background agent's environment: the caller's, minus the variables of the caller's
    own agent session, plus AEGIS_AGENT_ID."""
    env = dict(os.environ if base is None else base)
    for key in _DROPPED_ENV:
        env.pop(key, None)
    env["AEGIS_AGENT_ID"] = agent_id
    return env


# --- inotify, for waking up on change instead of polling ----------------------------------------

_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_TO, _IN_CREATE = 0x80, 0x100
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000


class Watch:
    """An inotify watch on some paths; `wait(timeout)` returns True when something changed."""

    def __init__(self, paths: list[Path], mask: int = _IN_CREATE | _IN_CLOSE_WRITE | _IN_ATTRIB
                 | _IN_MOVED_TO | _IN_MODIFY) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise AegisError(f"inotify_init1 failed: {os.strerror(err)} (raise "
                             "fs.inotify.max_user_instances)")
        for path in paths:
            if libc.inotify_add_watch(self.fd, os.fsencode(path), mask) < 0:
                err = ctypes.get_errno()
                os.close(self.fd)
                raise AegisError(f"cannot watch {path}: {os.strerror(err)}")

    def wait(self, timeout: float, also: tuple[int, ...] = ()) -> bool:
        """Wait for a change, or for one of the `also` fds (pidfds) to become readable."""
        ready, _, _ = select.select([self.fd, *also], [], [], max(0.0, timeout))
        if not ready:
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):
                pass
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the store --------------------------------------------------------------------------------

def default_directory() -> Path:
    from aegis_mcp.paths import state_dir

    return state_dir() / "pool"


_LAUNCHED: list[subprocess.Popen[bytes]] = []
"""Runners this process started; polled so that a long-lived parent leaves no zombies."""
_LAUNCHED_LOCK = threading.Lock()


class Pool:
    """The pool store and its operations. Cheap to create; every method is one or a few short
    transactions, safe to call from any number of processes at once."""

    def __init__(self, directory: Path | None = None, settings: PoolSettings | None = None) -> None:
        from aegis_mcp.paths import ensure_private_dir

        self.dir = ensure_private_dir(directory or default_directory())
        self.logs = ensure_private_dir(self.dir / "logs")
        self.done = ensure_private_dir(self.dir / "done")
        self.worktrees = self.dir / "worktrees"
        self.db_path = self.dir / "pool.db"
        self._settings = settings
        self._conn: sqlite3.Connection | None = None

    @property
    def settings(self) -> PoolSettings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
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

    # --- spawn ---

    def spawn(self, description: str, agent_type: str = "claude",
              working_directory: str | None = None, max_iterations: int | None = None,
              isolation: str | None = None, timeout_secs: float | None = None,
              env: dict[str, str] | None = None) -> dict[str, Any]:
        """Queue a background agent and start it if a slot and its lock are free. Returns its
        status at once (state queued, starting or, rarely, already running)."""
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
            agent_env = agent_environment(agent_id, env)
            argv, enforce, notes = headless_argv(profile, description, max_iterations, agent_env,
                                                 self.chat_path(agent_id))
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
        _crashpoint("spawn-after-insert")
        self.promote()
        return self.status(agent_id, refresh=False)

    # --- promotion and recovery ---

    def promote(self) -> list[str]:
        """Recover dead runners, then claim queued agents for free slots (FIFO; an agent whose
        tree is locked waits, and so does every later agent on an overlapping tree) and start
        their runners. Returns the ids started."""
        _reap_launched()
        me = (os.getpid(), proc_start_time(os.getpid()))
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
                if path and any(_paths_overlap(path, p) for p in (*held, *waiting)):
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
        _crashpoint("promote-after-claim")
        for agent_id, claim in claimed:
            self._launch_runner(agent_id, claim)
        return [agent_id for agent_id, _ in claimed]

    def _launch_runner(self, agent_id: str, claim: str) -> None:
        # The runner starts in the spawner's directory, often an untrusted checkout.
        cmd = python_command("aegis_mcp.pool.runner", "--pool-dir", str(self.dir),
                             "--agent", agent_id, "--claim", claim)
        env = dict(os.environ)
        # The agent id marks an agent's processes (see _kill_orphaned_agent): a runner started
        # from inside a background agent must not carry that agent's mark.
        env.pop("AEGIS_POOL_CRASHPOINT", None)
        env.pop("AEGIS_AGENT_ID", None)
        # Marks the runner (and through it the agent's tree) as the pool's: a supervisor that
        # stops "every descendant" at a hot-reload must leave these alone (RUNNER_MARK).
        env[RUNNER_MARK] = agent_id
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
        start = proc_start_time(proc.pid)
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
            if alive(row["runner_pid"], row["runner_start"]):
                return None
            return STOPPED if row["stop_requested"] else LOST
        # starting: the claimer is launching the runner, or the runner is starting up.
        if row["runner_pid"] is not None:
            if alive(row["runner_pid"], row["runner_start"]) and \
                    now - row["claimed_at"] < _RUNNER_START_TIMEOUT:
                return None
        elif alive(row["claimer_pid"], row["claimer_start"]) and \
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
            _kill_orphaned_agent(row["agent_pid"], row["env"])
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
                (RUNNING, pid, proc_start_time(pid), time.time(), agent_id, claim, STARTING))
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

    # --- what users call ---

    def status(self, agent_id: str, refresh: bool = True) -> dict[str, Any]:
        """Everything known about one agent (see docs/pool.md for the fields)."""
        if refresh:
            self.refresh()
        row = self._row(agent_id)
        return self._status(row)

    def _status(self, row: sqlite3.Row, lines: int = 10) -> dict[str, Any]:
        now = time.time()
        out: dict[str, Any] = {
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
            "created_at": _iso(row["created_at"]),
            "started_at": _iso(row["started_at"]),
            "ended_at": _iso(row["ended_at"]),
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
            "queue_position": None,
            "waiting_for": [],
            "notes": json.loads(row["notes"] or "[]"),
        }
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
                    if _paths_overlap(r["lock_path"], row["lock_path"])]
        return out

    def list(self, active_only: bool = False, limit: int = 50) -> list[dict[str, Any]]:
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

    def await_agent(self, agent_id: str, timeout_secs: float | None = None) -> dict[str, Any]:
        """Block until the agent has ended (or `timeout_secs` passed: then `timed_out` is True
        and the agent keeps running). Wakes on the done file, not by polling the store."""
        if timeout_secs is not None and not 0 <= timeout_secs <= 7 * 86400:
            raise AegisError(f"timeout_secs must be from 0 to 604800 (got {timeout_secs})")
        agent_id = self.resolve_id(agent_id)
        deadline = None if timeout_secs is None else time.monotonic() + timeout_secs
        runner: tuple[int, int] | None = None  # (pid, pidfd) of the agent's runner
        try:
            with Watch([self.done]) as watch:
                while True:
                    status = self.status(agent_id)
                    if status["state"] in ENDED:
                        return {**status, "timed_out": False}
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
                        runner = _pidfd(pid, self._row(agent_id)["runner_start"])
                    watch.wait(5.0 if left is None else min(left, 5.0),
                               (runner[1],) if runner else ())
        finally:
            if runner is not None:
                os.close(runner[1])

    def stop(self, agent_id: str, wait_secs: float | None = None) -> dict[str, Any]:
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
        elif row["state"] == RUNNING and alive(row["runner_pid"], row["runner_start"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(row["runner_pid"], signal.SIGTERM)
        grace = row["stop_grace_secs"]
        status = self.await_agent(agent_id, 2 * grace + 10 if wait_secs is None else wait_secs)
        return {**status, "stopped_now": status["state"] in ENDED}

    def stats(self) -> dict[str, Any]:
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
            for path in (self.log_path(row["id"]), self.chat_path(row["id"]),
                         self.done / row["id"]):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append({"agent_id": row["id"], "state": row["state"],
                            "branch": row["branch"]})
        return {"removed": removed, "kept": kept}

    def locks(self) -> list[dict[str, Any]]:
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
            "since": _iso(h["started_at"] or h["claimed_at"]),
            "waiting": [q["id"] for q in queued if _paths_overlap(q["lock_path"], h["lock_path"])],
        } for h in held]


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _git_toplevel(path: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    proc = subprocess.run([git, "-C", path, "rev-parse", "--show-toplevel"],
                          capture_output=True, text=True, check=False)
    return os.path.realpath(proc.stdout.strip()) if proc.returncode == 0 else None


def _pidfd(pid: int, start: int | None) -> tuple[int, int] | None:
    """A pidfd of process `pid` if it is still the one that started at `start`."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if not alive(pid, start):  # checked after opening: the fd cannot name a reused pid
        os.close(fd)
        return None
    return pid, fd


def _reap_launched() -> None:
    # Tools run pool operations in worker threads: one reaper at a time.
    with _LAUNCHED_LOCK:
        _LAUNCHED[:] = [proc for proc in _LAUNCHED if proc.poll() is None]


def _kill_orphaned_agent(agent_pid: int | None, env_json: str) -> None:
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
