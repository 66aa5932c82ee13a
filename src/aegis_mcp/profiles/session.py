"""Which conversation is the agent's own, so that a restart resumes exactly it.

Claude Code's `--continue` takes the directory's newest conversation: with two terminals in one
project, a restart could resume the other terminal's. So each start of the agent has a session
id the supervisor knows, and a restart resumes that id (`--resume <id>`). Measured on Claude
Code 2.1.331 and 2.1.332, offline, print mode and the TUI alike:

- `--session-id <uuid>` names the new session: its transcript is
  `~/.claude/projects/<cwd with / as ->/<uuid>.jsonl` (issue #44607 reports the TUI ignoring
  it: not so in these versions). An id already used exits 1 ("Session ID ... is already in
  use").
- `--resume <id>` and `--resume <id> -p` resume that conversation under the same id (the
  model gets its earlier messages, none of another session's); an unknown id exits 1 at once
  ("No conversation found with session ID"), which the supervisor's fresh-start fallback
  catches.
- A SessionStart hook gets `{"session_id", "transcript_path", "source": "startup" | "resume" |
  "clear" | "compact", ...}` on stdin, also after `/clear` in the TUI, which starts a new
  session id: the hook is how the supervisor follows the conversation the user is in now. Both
  modes wait for SessionStart hooks before the first model request (a `sleep 2` hook adds 2 s;
  `"async": true` hooks are killed unrun when a print run ends), so the hook is this small
  module, not the MCP server. Only the last `--settings` counts, so the hook is left out when
  the user gives `--settings` of their own (the id given with `--session-id` still holds), and
  in a print run whose id is known: it cannot change sessions, and the hook costs its start
  137 ms (median of 6, 0.54 s without, load 6 on two cores).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import uuid

from aegis_mcp.launch import python_command
from aegis_mcp.profiles.profile import AgentProfile

# A session id becomes a word of the agent's command line: never an option, never a path.
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
MAX_HOOK_INPUT = 1 << 20


def valid_id(value: object) -> bool:
    return isinstance(value, str) and _SESSION_ID.fullmatch(value) is not None


def from_open_files(profile: AgentProfile, pids: list[int]) -> str | None:
    """The session id in a path one of `pids` holds open, by the profile's `session_file`
    pattern (Codex's rollout file); None when there is none. Reads only the processes'
    descriptor table (/proc/PID/fd), never the files."""
    if not profile.session_file:
        return None
    import psutil

    pattern = re.compile(profile.session_file)
    for pid in pids:
        try:
            paths = [f.path for f in psutil.Process(pid).open_files()]
        except psutil.Error:
            continue
        for path in paths:
            match = pattern.search(path)
            if match and valid_id(match.group(1)):
                return match.group(1)
    return None


def new_id() -> str:
    return str(uuid.uuid4())


def user_id(profile: AgentProfile, user_args: list[str]) -> str | None:
    """The session the user named themselves (`--session-id X`, `--resume X`), if any."""
    names = {profile.session_id_flag, *profile.session_id_options} - {""}
    for i, arg in enumerate(user_args):
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if name in names:
            value = value if eq else (user_args[i + 1] if i + 1 < len(user_args) else "")
            return value if valid_id(value) else None
    return None


def names_own_session(profile: AgentProfile, user_args: list[str]) -> bool:
    """Whether a fresh start may name its session: the profile can, and the user chose no
    session of their own (`--continue`, `--resume`, `--session-id` all conflict with it)."""
    if not profile.session_id_flag:
        return False
    return not any(arg.split("=", 1)[0] in profile.drop_on_resume
                   for arg in _options(user_args))


def hook_args(profile: AgentProfile, user_args: list[str], known: bool = False) -> list[str]:
    """The agent options that install the session hook for one process, or none. `known`:
    the start names or resumes a session id; a print run then needs no hook (it cannot
    change sessions), and skips its cost (137 ms a start, measured on two busy cores)."""
    if profile.session_hook != "claude-settings":
        return []
    options = [arg.split("=", 1)[0] for arg in _options(user_args)]
    if "--settings" in options:
        return []  # only the last --settings counts: the user's own wins
    if known and ("-p" in options or "--print" in options):
        return []
    command = shlex.join(python_command("aegis_mcp.profiles.session"))
    settings = {"hooks": {"SessionStart": [{"hooks": [
        {"type": "command", "command": command, "timeout": 10}]}]}}
    return ["--settings", json.dumps(settings, separators=(",", ":"))]


def _options(user_args: list[str]) -> list[str]:
    return user_args[:user_args.index("--")] if "--" in user_args else user_args


def main() -> int:
    """The hook: report the session id on stdin to the supervisor. It prints nothing (a
    SessionStart hook's output would become context for the model) and always exits 0 (a
    failing hook must never stop the agent)."""
    path = os.environ.get("AEGIS_CONTROL")
    try:
        event = json.loads(sys.stdin.read(MAX_HOOK_INPUT))
        session_id = event.get("session_id") if isinstance(event, dict) else None
        if path and valid_id(session_id):
            from aegis_mcp.supervise import control

            control.request(path, {"op": "session", "session_id": session_id,
                                   "source": str(event.get("source") or "")[:40]}, timeout=3)
    except Exception:  # noqa: BLE001 - see above: never the agent's problem
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
