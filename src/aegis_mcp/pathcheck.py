"""Paths the user or an MCP client gives (a pool agent's working directory, `--watch PATH`) and
the current directory: checked once, up front, so that what is wrong with them (too long,
deleted, a file, a NUL character) is one line saying so, never a traceback later on."""

from __future__ import annotations

import errno
import os
import stat

from aegis_mcp.display import plain
from aegis_mcp.errors import AegisError

_SHOWN_MAX = 80


def shown(path: str) -> str:
    """`path` for a one-line message: inert text, and a long one cut to its start."""
    if len(path) > _SHOWN_MAX:
        path = f"{path[:60]}... ({len(path)} characters)"
    return plain(path)


def current_directory(exit_code: int = 2) -> str:
    """The current directory, or an AegisError when it was deleted under us."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        raise AegisError("the current directory no longer exists (deleted?): cd to an existing "
                         "directory and run it again", exit_code) from None


def check_path(path: str, what: str, *, directory: bool = False, exit_code: int = 2) -> str:
    """The real absolute path of an existing `path` (a directory the caller can enter, when
    `directory`), or an AegisError like `what PATH: file name too long`. A relative `path` is
    taken from the current directory, which must still exist."""
    if not os.path.isabs(path):
        path = os.path.join(current_directory(exit_code), path)
    label = f"{what} {shown(path)}"
    try:
        st = os.stat(path)
    except ValueError:  # an embedded NUL: no path can hold one
        raise AegisError(f"{label}: contains a NUL character", exit_code) from None
    except OSError as exc:
        hint = " (give a shorter path)" if exc.errno == errno.ENAMETOOLONG else ""
        raise AegisError(f"{label}: {(exc.strerror or str(exc)).lower()}{hint}",
                         exit_code) from None
    if directory:
        if not stat.S_ISDIR(st.st_mode):
            raise AegisError(f"{label}: not a directory", exit_code)
        if not os.access(path, os.X_OK):
            raise AegisError(f"{label}: permission denied (you cannot enter it)", exit_code)
    return os.path.realpath(path)


def why_not_runnable(command: str, search: str | None = None) -> str | None:
    """Why `command` cannot be run although something of that name exists: `not executable
    (chmod +x it)`, `a directory, not a program`, ...; None when nothing of that name exists
    (then it is simply not found). A bare name is looked for in each directory of `search`
    (default: PATH), as a shell does after finding no executable of that name, and the
    message names the file it found."""
    if os.sep in command:
        candidates = [command]
    else:
        search = os.environ.get("PATH", os.defpath) if search is None else search
        candidates = [os.path.join(d, command) for d in search.split(os.pathsep) if d]
    for path in candidates:
        # whole, not cut as `shown` would: it is the file the user has to fix
        named = "" if path == command else f"{plain(path)} is "
        try:
            st = os.stat(path)
        except OSError as exc:
            if os.sep in command and exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                return f"{(exc.strerror or str(exc)).lower()}"
            continue
        if stat.S_ISDIR(st.st_mode):
            if path == command:  # on PATH, a directory of that name is skipped, as by a shell
                return "a directory, not a program"
            continue
        if os.access(path, os.X_OK):
            continue  # runnable after all (a race, or the caller did not look)
        if not st.st_mode & 0o111:
            return f"{named}not executable (chmod +x it)"
        return f"{named}not executable for you (permission denied)"
    return None
