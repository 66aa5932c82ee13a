"""Who the agent runs as.

Started through sudo, the supervisor keeps root only for what needs it (network namespace,
capture) and runs the agent as SUDO_UID/SUDO_GID with that user's groups, HOME, USER and
LOGNAME: Claude Code refuses --dangerously-skip-permissions as root, and an agent should not
hold root anyway. `--keep-root` keeps root for the agent, loudly.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from aegis_mcp.errors import AegisError


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str
    shell: str

    @classmethod
    def from_uid(cls, uid: int, gid: int | None = None) -> User:
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            raise AegisError(f"SUDO_UID={uid} names no user on this system") from None
        gid = pw.pw_gid if gid is None else gid
        groups = tuple(os.getgrouplist(pw.pw_name, gid))
        return cls(uid, gid, groups, pw.pw_name, pw.pw_dir, pw.pw_shell or "/bin/sh")

    def env(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name, "SHELL": self.shell}


def agent_user(keep_root: bool) -> User | None:
    """The user to drop to, or None to run the agent as we are."""
    sudo_uid = os.environ.get("SUDO_UID", "")
    if os.geteuid() != 0 or keep_root or not sudo_uid.isdigit() or int(sudo_uid) == 0:
        return None
    sudo_gid = os.environ.get("SUDO_GID", "")
    return User.from_uid(int(sudo_uid), int(sudo_gid) if sudo_gid.isdigit() else None)


def root_notice(keep_root: bool) -> str | None:
    """What to tell the user when the agent will run as root, if it will."""
    if os.geteuid() != 0:
        return None
    sudo_uid = os.environ.get("SUDO_UID", "")
    if not sudo_uid.isdigit() or int(sudo_uid) == 0:
        return "running as root (no SUDO_UID): the agent runs as root too"
    if keep_root:
        return (f"--keep-root: the agent runs as ROOT, not as uid {sudo_uid}; some agents "
                "refuse their permission flags as root")
    return None


_CHECK = (
    "import os, sys, aegis_mcp\n"
    "bad = [p for p in sys.argv[1:] if not os.access(p, os.R_OK)]\n"
    "print(' '.join(bad)); sys.exit(3 if bad else 0)\n"
)


def check_user_can_run(user: User, files: list[Path]) -> None:
    """Stop before the start when `user` cannot run this aegis-mcp (the injected MCP server)
    or read `files` (the hooks library): the agent's MCP server would otherwise fail silently.
    Checked by running this interpreter as that user, the only check that sees every reason."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHECK, *map(str, files)],
            user=user.uid, group=user.gid, extra_groups=list(user.groups),
            capture_output=True, text=True, timeout=30, cwd="/", env={"PATH": "/usr/bin:/bin"},
        )
    except PermissionError:
        proc = None
    if proc is not None and proc.returncode == 0:
        return
    if proc is not None and proc.returncode == 3:
        what = proc.stdout.strip()
    else:
        what = f"this aegis-mcp's Python ({sys.executable})"
    raise AegisError(
        f"user {user.name} cannot run or read {what}, which the agent needs: install aegis-mcp "
        "where that user can read it (a venv outside root's home, e.g. /opt), or pass "
        "--no-inject-mcp and no --netmon, or --keep-root"
    )
