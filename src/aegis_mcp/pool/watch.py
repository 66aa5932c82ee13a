"""inotify, for waking up on change instead of polling (ctypes: no dependency to install)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
from pathlib import Path

from aegis_mcp.errors import AegisError

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
