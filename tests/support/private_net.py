"""A network namespace of the test's own with only loopback, shared by a stand-in server in this
process and the agent under test, so that a real agent CLI can reach its model API on
127.0.0.1 while nothing it tries on its own (update checks, price lists, telemetry, DNS) can
leave the machine.

    with PrivateLoopback() as net:
        with FakeAnthropic(bind=net.run) as api:          # listens inside the namespace
            subprocess.run(net.enter([aegis_bin(), "aider", ...]))

The namespace is held open by a sleeping `unshare` process; this process joins it only in a
short-lived thread (setns affects the calling thread alone) to create the server's socket,
which stays in the namespace it was created in.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


class PrivateLoopback:
    def __init__(self) -> None:
        self._holder: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrivateLoopback:
        self._holder = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", "ip link set lo up && echo up && exec sleep 3600"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != b"up":
            self.__exit__()
            raise RuntimeError("could not create a network namespace (needs root)")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._holder is not None:
            self._holder.kill()
            self._holder.wait()
            self._holder = None

    @property
    def path(self) -> str:
        assert self._holder is not None, "PrivateLoopback is not entered"
        return f"/proc/{self._holder.pid}/ns/net"

    def enter(self, command: list[str]) -> list[str]:
        """`command`, run inside the namespace (nsenter keeps the pid, user and mounts)."""
        return ["nsenter", f"--net={self.path}", "--", *command]

    def run(self, fn: Callable[[], T]) -> T:
        """fn() called in a thread that has joined the namespace."""
        return run_in_netns(self.path, fn)


def run_in_netns(path: str, fn: Callable[[], T]) -> T:
    """fn() called in a thread that has joined the network namespace at `path` (sockets it
    creates stay in that namespace, whichever thread uses them afterwards)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="in-netns")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]
