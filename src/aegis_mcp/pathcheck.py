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
