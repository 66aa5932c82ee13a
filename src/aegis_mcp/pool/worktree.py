"""An isolated agent's git worktree: created on the agent's own branch with the project's
untracked .env files, then the pool's `worktree_setup` command run in it."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from aegis_mcp import procs
from aegis_mcp.pool.store import FAILED, STOPPED


def create(row: Any, log: BinaryIO, say: Callable[[str], None]) -> str | None:
    """Create the agent's git worktree on its own branch; copy untracked .env files into
    it (they are not in git, yet the project needs them). Returns an error or None."""
    root, path, branch = row["repo_root"], row["worktree_path"], row["branch"]
    git = shutil.which("git") or "git"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([git, "-C", root, "worktree", "add", "-b", branch, path, "HEAD"],
                          capture_output=True, text=True, check=False)
    log.write(proc.stdout.encode() + proc.stderr.encode())
    if proc.returncode != 0:
        return (f"git worktree add failed: {proc.stderr.strip().splitlines()[-1:]}"
                " (does the repository have a commit?)")
    listed = subprocess.run([git, "-C", root, "ls-files", "-z", "--others", "--",
                             ":(glob)**/.env", ":(glob)**/.env.*"],
                            capture_output=True, check=False)
    for rel in filter(None, listed.stdout.decode(errors="replace").split("\0")):
        dest = Path(path) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copy2(Path(root) / rel, dest)
            say(f"copied {rel} into the worktree")
    Path(row["cwd"]).mkdir(parents=True, exist_ok=True)
    say(f"worktree {path} on branch {branch}")
    return None


def run_setup(command: str, row: Any, env: dict[str, str], deadline: float | None,
              log: BinaryIO, say: Callable[[str], None], stop_requested: Callable[[], bool],
              preexec: Callable[[], None]) -> tuple[str, str] | None:
    """The pool's `worktree_setup` command in the new worktree, its output in the agent's
    log. Its failure, a stop request or the agent's timeout (which the setup counts
    against) ends the agent before it starts: (state, reason)."""
    say(f"worktree setup: {command}")
    setup_env = {**env, "AEGIS_WORKTREE": row["worktree_path"],
                 "AEGIS_REPO_ROOT": row["repo_root"]}
    proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=row["worktree_path"],
                            env=setup_env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=preexec)
    ended: tuple[str, str] | None = None
    while ended is None:
        try:
            code = proc.wait(0.2)
        except subprocess.TimeoutExpired:
            if stop_requested():
                ended = (STOPPED, "stopped by request during the worktree setup")
            elif deadline is not None and time.monotonic() >= deadline:
                ended = (FAILED, "timed out during the worktree setup; stopped by the pool")
            continue
        if code == 0:
            say("worktree setup done")
            return None
        return FAILED, (f"worktree setup failed (exit {code}): {command} (its output is in "
                        "the agent's log)")
    procs.stop_tree(proc.pid, lambda: proc.poll() is None,
                       lambda t: time.sleep(min(t, 0.05)), row["stop_grace_secs"])
    proc.wait()
    return ended
