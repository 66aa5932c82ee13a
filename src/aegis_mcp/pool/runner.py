"""The runner of one background agent: `python -P -m aegis_mcp.pool.runner --pool-dir DIR --agent
ID --claim TOKEN`, started detached (own session, stdio on the agent's log) by `Pool.promote`.

It takes over its claimed agent in the store, sets up the git worktree when the agent is
isolated, starts the agent CLI headless in its own session, copies the agent's output to the
log, reads its event stream (claude stream-json: turns, and the final `result` event), enforces
the timeout and, for agents without a turn limit flag, max_iterations; on a stop request
(SIGTERM from `Pool.stop`) it stops the agent's whole tree: SIGINT, grace, SIGTERM, grace,
SIGKILL. It is a child subreaper, so grandchildren that double-forked away are still its own
to stop. Its last transaction records the result and thereby frees the agent's lock; then it
starts the next queued agents and exits. It sleeps in select() while the agent works.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aegis_mcp import procs
from aegis_mcp.pool import worktree
from aegis_mcp.pool.pool import Pool
from aegis_mcp.pool.store import COMPLETED, FAILED, STOPPED
from aegis_mcp.pool.stream import EventStream, last_chat_reply
from aegis_mcp.signals import SignalInbox

_FLUSH_EVERY = 0.25
"""Progress is written to the store at most this often (and at the end)."""


def _die_with_runner() -> None:
    """In the agent, before exec: if the runner is killed, the agent gets SIGKILL too (and
    the next pool operation kills the rest of its tree by the agent id in its environment)."""
    procs.prctl(procs.PR_SET_PDEATHSIG, signal.SIGKILL)


# --- the process tree (stopping it is proctree's job) ----------------------------------------

def reap() -> dict[int, int]:
    """Collect every exited child (ours, and orphans handed to us as subreaper)."""
    statuses: dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        statuses[pid] = status
    return statuses


class Runner(EventStream):
    """One agent's run. It is the agent's event stream too, so that the turn limit is checked
    on the very line that counts the turn, before the next line is read."""

    def __init__(self, pool: Pool, row: Any) -> None:
        super().__init__()
        self.pool = pool
        self.id: str = row["id"]
        self.row = row
        self.log = open(pool.log_path(self.id), "ab", buffering=0)  # noqa: SIM115
        self.agent_pid: int | None = None
        self.agent_status: int | None = None
        self.stop_reason: tuple[str, str] | None = None
        """(state, reason) once the runner decided to stop the agent."""

    def say(self, text: str) -> None:
        self.log.write(f"[aegis-runner {time.strftime('%H:%M:%S')}] {text}\n".encode())

    # --- event stream ---

    def on_turn(self) -> None:
        limit = self.row["max_iterations"]
        if self.row["enforce_iterations"] and limit and self.iterations > limit \
                and self.stop_reason is None:
            self.stop_reason = (STOPPED, f"max_iterations ({limit}) reached; stopped by "
                                         "the pool")

    def feed(self, data: bytes) -> None:
        self.log.write(data)
        super().feed(data)

    def flush(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        self.pool.record_progress(self.id, **self._progress())

    # --- lifecycle ---

    def run(self) -> None:
        inbox = SignalInbox((signal.SIGTERM, signal.SIGINT, signal.SIGHUP),
                            wake_only=(signal.SIGCHLD,))
        try:
            self._run(inbox)
        finally:
            inbox.close()

    def _run(self, inbox: SignalInbox) -> None:
        sel = selectors.DefaultSelector()
        sel.register(inbox, selectors.EVENT_READ, "signal")

        timeout = self.row["timeout_secs"] or None
        deadline = time.monotonic() + timeout if timeout else None
        argv = json.loads(self.row["argv"])
        env = json.loads(self.row["env"])
        # A port for the agent's own servers: parallel agents' dev servers must not collide.
        port = _free_port()
        env["AEGIS_AGENT_PORT"] = str(port)
        if self.row["worktree_path"]:
            error = worktree.create(self.row, self.log, self.say)
            if error:
                self.finish(FAILED, error, None)
                return
            if self.row["worktree_setup"]:
                ended = worktree.run_setup(
                    self.row["worktree_setup"], self.row, env, deadline, self.log, self.say,
                    lambda: self.pool.stop_requested(self.id), _die_with_runner)
                if ended:
                    self.finish(*ended, None)
                    return
        self.say(f"starting {' '.join(argv[:1])} in {self.row['cwd']}")
        try:
            proc = subprocess.Popen(argv, cwd=self.row["cwd"], env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_die_with_runner)
        except OSError as exc:
            from aegis_mcp.pathcheck import why_not_runnable

            # Both were fine at the spawn (the pool checked them): say which one changed.
            why = (exc.strerror or str(exc)).lower()
            if exc.filename == self.row["cwd"]:
                why = f"its directory {self.row['cwd']}: {why}"
            else:
                why = why_not_runnable(argv[0]) or why
            self.finish(FAILED, f"cannot start {argv[0]}: {why}", None)
            return
        self.agent_pid = proc.pid
        assert proc.stdout is not None
        out_fd = proc.stdout.fileno()
        os.set_blocking(out_fd, False)
        sel.register(out_fd, selectors.EVENT_READ, "output")
        self.pool.record_progress(self.id, agent_pid=proc.pid, agent_port=port)
        procs.crashpoint("runner-running")

        next_flush = time.monotonic()
        eof = False
        while self.agent_status is None or not eof:
            now = time.monotonic()
            if self.stop_reason is None and deadline is not None and now >= deadline:
                self.stop_reason = (FAILED, f"timed out after {timeout:g} s; stopped by the pool")
            if self.stop_reason is not None:
                break
            if self.agent_status is not None and not eof:
                # The agent exited but something it left behind still holds the output pipe:
                # keep nothing waiting on it, the leftovers are stopped below.
                self._drain(out_fd)
                break
            waits = [next_flush - now if self.dirty else 3600.0]
            if deadline is not None:
                waits.append(deadline - now)
            for key, _ in sel.select(max(0.0, min(waits))):
                if key.data == "output":
                    eof = self._drain(out_fd) or eof
                    if eof:
                        sel.unregister(out_fd)
                else:
                    self._on_signals(inbox)
            if self.dirty and time.monotonic() >= next_flush:
                self.flush()
                next_flush = time.monotonic() + _FLUSH_EVERY

        leftovers = procs.tree()
        if self.stop_reason is not None or leftovers:
            if self.stop_reason is None:
                self.say(f"the agent exited and left {len(leftovers)} process(es): stopping them")
            self.stop_tree(self.row["stop_grace_secs"])
        self._drain(out_fd)
        if self.agent_status is None:
            self.agent_status = reap().get(proc.pid, self.agent_status)
        proc.returncode = 0  # reaped by us, not by Popen
        if self.partial:
            self.on_line(self.partial)
            self.partial = b""
        self.finish(*self._verdict())

    def _drain(self, fd: int) -> bool:
        """Copy what the agent wrote; True at end of file."""
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not data:
                return True
            self.feed(data)

    def _on_signals(self, inbox: SignalInbox) -> None:
        for signum in inbox.drain():
            if self.stop_reason is None:
                why = ("stopped by request" if self.pool.stop_requested(self.id)
                       else f"the runner got {signal.Signals(signum).name}")
                self.stop_reason = (STOPPED, why)
        for pid, status in reap().items():
            if pid == self.agent_pid:
                self.agent_status = status

    def stop_tree(self, grace: float) -> None:
        """SIGINT to the agent's group, then SIGTERM, then SIGKILL to every descendant, each
        after up to `grace` seconds (procs.stop_tree); returns when none is left."""
        procs.stop_tree(
            self.agent_pid, lambda: self.agent_pid is not None and self.agent_status is None,
            self._wait, grace, log=self.say)

    def _wait(self, secs: float) -> None:
        time.sleep(min(secs, 0.02))
        for pid, status in reap().items():
            if pid == self.agent_pid:
                self.agent_status = status

    def _verdict(self) -> tuple[str, str | None, int | None]:
        status = self.agent_status
        code: int | None = None
        if status is not None:
            code = os.waitstatus_to_exitcode(status)
            if code < 0:
                code = 128 - code
        if self.stop_reason is not None:
            return (*self.stop_reason, code)
        if code == 0 and not self.result.get("is_error"):
            return COMPLETED, None, code
        if self.result.get("is_error"):
            why = f"the agent reported an error ({self.result.get('subtype') or 'error'})"
        elif code is not None and code > 128:
            why = f"killed by {signal.Signals(code - 128).name}"
        else:
            why = f"exit code {code}"
        return FAILED, why, code

    def finish(self, state: str, reason: str | None, code: int | None) -> None:
        self.say(f"{state}" + (f": {reason}" if reason else ""))
        if not self.reply and not isinstance(self.result.get("result"), str):
            self.reply = last_chat_reply(self.pool.chat_path(self.id)) or ""
        self.pool.record_end(self.id, state, reason=reason, exit_code=code, **self._progress())


def _free_port() -> int:
    """A TCP port free on this machine right now (the kernel's pick for port 0)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aegis_mcp.pool.runner",
                                     description="Run one claimed background agent of the pool "
                                                 "(started by the pool, not by hand).")
    parser.add_argument("--pool-dir", required=True, type=Path)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--claim", required=True)
    args = parser.parse_args(argv)
    # Until the signal handlers are in place a SIGTERM kills us; the store then says "stopped"
    # (a stop was requested) or re-queues the agent, so nothing is lost either way.
    procs.set_child_subreaper()
    pool = Pool(args.pool_dir)
    row = pool.register_runner(args.agent, args.claim)
    if row is None:
        return 0
    runner = Runner(pool, row)
    try:
        runner.run()
    except BaseException as exc:
        # Whatever went wrong, leave no agent process behind and no agent "running".
        runner.say(f"runner error: {exc!r}")
        runner.stop_tree(row["stop_grace_secs"])
        with contextlib.suppress(Exception):
            runner.finish(FAILED, f"runner error: {exc}", None)
        raise
    # Orphans of the runners we start next must not be handed to us: we exit right away.
    procs.set_child_subreaper(False)
    pool.promote()
    return 0


if __name__ == "__main__":
    sys.exit(main())

