"""Who the agent runs as, and the root boundary.

Started through sudo, the supervisor keeps root only for what needs it (network namespace,
nftables, sysctls, the capture, starting the agent) and runs the agent as SUDO_UID/SUDO_GID
with that user's groups, HOME, USER and LOGNAME: Claude Code refuses
--dangerously-skip-permissions as root, and an agent should not hold root anyway.
`--keep-root` keeps root for the agent, loudly. Everything root would otherwise do on a path
the user controls (the runtime directory, the project's config files) is done with the user's
identity instead (`as_user`), like bubblewrap's privilege phases: the kernel's own checks apply.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import socket
import struct
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

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

    def agent_env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` (root's environment under sudo) made this user's: root's own session
        variables and anything that points into root's home go (MAIL=/var/mail/root, a PATH
        entry under /root), the identity variables are the user's."""
        root_home = _root_home()
        env = {k: v for k, v in base.items()
               if not k.startswith("SUDO_") and k not in _ROOT_SESSION_VARS
               and (k == "PATH" or not _points_under(v, root_home))}
        if "PATH" in env:
            env["PATH"] = os.pathsep.join(
                p for p in env["PATH"].split(os.pathsep) if not _points_under(p, root_home))
        env.update(self.env())
        if "MAIL" in base:
            env["MAIL"] = f"/var/mail/{self.name}"
        xdg = f"/run/user/{self.uid}"
        if os.path.isdir(xdg):
            env["XDG_RUNTIME_DIR"] = xdg
        return env


# Root's session, not the user's: under sudo they describe root (its mail, its D-Bus, its X
# session, its directories).
_ROOT_SESSION_VARS = frozenset((
    "MAIL", "MAILPATH", "PWD", "OLDPWD", "HISTFILE", "KRB5CCNAME", "DBUS_SESSION_BUS_ADDRESS",
    "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME",
    "XDG_SESSION_ID", "XDG_SESSION_CLASS", "XDG_SESSION_TYPE", "XDG_SEAT", "XDG_VTNR",
))


def _root_home() -> str:
    try:
        return pwd.getpwuid(0).pw_dir.rstrip("/") or "/root"
    except KeyError:
        return "/root"


def _points_under(value: str, directory: str) -> bool:
    """Whether `value`, or one element of it as a colon-separated list, is `directory` or a
    path inside it."""
    return directory != "" and any(
        part == directory or part.startswith(directory + "/") for part in value.split(":"))


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


# ---------------------------------------------------------------------------------------------
# The root boundary: file work on the user's behalf is done with the user's identity.
#
# Root never opens, creates, chowns or unlinks a path in a directory the user controls, nor
# reads a file the user names: a forked child drops to the user (groups, gid, uid) and does it,
# so the kernel's own permission checks apply and a planted symlink or hard link leads only
# where the user could go anyway. The child hands back a JSON value and, optionally, open file
# descriptors (SCM_RIGHTS). Not run as root, or with no user to drop to, the work runs inline.

_T = TypeVar("_T")


def _drop_to(user: User) -> None:
    os.setgroups(list(user.groups))
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)


def _error_payload(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, OSError):
        return {"kind": "os", "errno": exc.errno, "message": exc.strerror or str(exc),
                "filename": str(exc.filename) if exc.filename is not None else None}
    return {"kind": "aegis" if isinstance(exc, AegisError) else "other",
            "message": str(exc) or type(exc).__name__, "type": type(exc).__name__}


def _raise_payload(err: dict[str, Any]) -> NoReturn:
    if err.get("kind") == "os":
        raise OSError(err.get("errno"), err.get("message"), err.get("filename"))
    if err.get("kind") == "aegis":
        raise AegisError(str(err.get("message")))
    raise AegisError(f"as the agent's user: {err.get('type')}: {err.get('message')}")


def as_user(user: User | None, fn: Callable[..., _T], *args: Any) -> _T:
    """`fn(*args)` run with `user`'s identity; its result must be JSON (str, int, list, ...).
    An OSError or AegisError it raises is raised here as the same kind."""
    value, _fds = _run_as(user, fn, args, want_fds=False)
    return value  # type: ignore[no-any-return]


def fds_as_user(user: User | None, fn: Callable[..., list[int]], *args: Any) -> list[int]:
    """`fn(*args)` run with `user`'s identity; it returns open file descriptors, which arrive
    here as new descriptors of this process (the caller owns them)."""
    _value, fds = _run_as(user, fn, args, want_fds=True)
    return fds


def _needs_fork(user: User | None) -> bool:
    return user is not None and os.geteuid() == 0 and user.uid != 0


def _run_as(user: User | None, fn: Callable[..., Any], args: tuple[Any, ...], want_fds: bool
            ) -> tuple[Any, list[int]]:
    if not _needs_fork(user):
        result = fn(*args)
        return (None, list(result)) if want_fds else (result, [])
    assert user is not None
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # the child: drop, do the work, report, exit without running any cleanup
        status = 0
        try:
            parent.close()
            _drop_to(user)
            result = fn(*args)
            fds = list(result) if want_fds else []
            payload = {"ok": None if want_fds else result}
            data = json.dumps(payload).encode()
            socket.send_fds(child, [struct.pack("!I", len(data)) + data], fds)
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
            status = 1
            with contextlib.suppress(BaseException):
                data = json.dumps({"error": _error_payload(exc)}).encode()
                child.sendall(struct.pack("!I", len(data)) + data)
        finally:
            os._exit(status)
    child.close()
    try:
        buf, fds = bytearray(), []
        while True:
            chunk, got, _flags, _addr = socket.recv_fds(parent, 1 << 16, 16)
            fds.extend(got)
            if not chunk:
                break
            buf += chunk
    finally:
        parent.close()
        _reap(pid)
    try:
        (size,) = struct.unpack("!I", buf[:4])
        payload = json.loads(bytes(buf[4:4 + size]))
    except (struct.error, ValueError):
        for fd in fds:
            os.close(fd)
        raise AegisError(f"could not act as user {user.name}: the helper process "
                         "ended without an answer") from None
    if "error" in payload:
        for fd in fds:
            os.close(fd)
        _raise_payload(payload["error"])
    return payload.get("ok"), fds


def _reap(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:
            continue
