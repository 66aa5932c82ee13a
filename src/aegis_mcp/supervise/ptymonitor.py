"""The session leader of an agent's own terminal (what sudo's monitor process is).

Started as root by the supervisor with a pty slave as stdin, it becomes the leader of a new
session whose controlling terminal is that slave, and runs the agent as a job of that session:
its own process group, the terminal's foreground group. Why not make the agent the session
leader itself (`setsid --ctty`)? Its group would then have no parent inside its session: an
orphaned group, for which the kernel discards the terminal's SIGTSTP, and Ctrl-Z would do
nothing (measured). With this process as the parent in the session, Ctrl-Z stops the agent.

It mirrors the agent to the supervisor, its parent: the agent's pid first; when the agent
stops, it stops itself (SIGSTOP), which the supervisor sees as the agent stopping; when the
agent ends, it ends the same way (the exit status, or death by the same signal).

Protocol on the socket whose fd is the one argument: the supervisor sends one JSON object
(argv, env, cwd, and uid/gid/groups to drop to, or null) and shuts its writing side; the
answer is `pid N\\n`, then `exec ERRNO\\n` from the agent's side if its program could not
be started. The socket closes when the agent's program is running.

It runs as root with a scrubbed environment (the agent's comes through the socket, never
through this interpreter), holds nothing but the slave, and reads nothing from it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aegis_mcp.errors import AegisError
from aegis_mcp.launch import python_command, root_env

IDLE_STEP = 0.02
"""Seconds between calls of `start`'s idle callback while the monitor comes up."""
START_TIMEOUT = 20.0
"""Seconds the supervisor waits for the monitor's answer (a Python start, under load)."""
_IGNORED = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)
"""The agent's to get, not ours: we end when it ends. SIGHUP (the supervisor gone, its end of
the terminal closed) still ends us, as it ends the agent."""


def start(argv: list[str], env: dict[str, str], cwd: Path, user: Any, stdio: dict[str, Any],
          idle: Callable[[], None] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """Start the monitor with `stdio` (stdin the slave), have it start `argv` as `user` (a
    privileges.User, or None: the command drops by itself), return it and the agent's pid.
    `idle` is called while the monitor's answer is awaited (the supervisor serves its control
    socket there: it answers at every moment)."""
    ours, theirs = socket.socketpair()
    spec = {"argv": argv, "env": env, "cwd": str(cwd),
            "drop": None if user is None else [user.uid, user.gid, list(user.groups)]}
    try:
        proc = subprocess.Popen(
            python_command("aegis_mcp.supervise.ptymonitor", str(theirs.fileno()), root_side=True),
            env=root_env(), cwd="/", pass_fds=(theirs.fileno(),), close_fds=True, **stdio)
    except OSError as exc:
        ours.close()
        raise AegisError(f"cannot start {argv[0]}'s terminal session: {exc.strerror}",
                         126) from None
    finally:
        theirs.close()
    answer = b""
    deadline = time.monotonic() + START_TIMEOUT
    try:
        with ours:
            ours.settimeout(START_TIMEOUT)
            ours.sendall(json.dumps(spec).encode())
            ours.shutdown(socket.SHUT_WR)
            while time.monotonic() < deadline:
                if not select.select([ours], [], [], IDLE_STEP)[0]:
                    if idle is not None:
                        idle()
                    continue
                chunk = ours.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except OSError:
        pass
    words = dict(line.split(" ", 1) for line in answer.decode().splitlines() if " " in line)
    if "pid" in words and "exec" not in words:
        return proc, int(words["pid"])
    with contextlib.suppress(OSError):
        proc.kill()
    proc.wait()
    if "exec" in words:
        err = int(words["exec"])
        raise AegisError(f"cannot start {argv[0]}: {os.strerror(err)}",
                         126 if err in (1, 13) else 127)  # EPERM, EACCES: found, not runnable
    raise AegisError(f"cannot start {argv[0]}: its terminal session did not come up "
                     f"(status {proc.returncode})")


def _agent(spec: dict[str, Any], answer: int) -> None:
    """In the forked child: become the foreground job, drop, exec; never returns."""
    try:
        os.setpgid(0, 0)
        os.tcsetpgrp(0, os.getpid())  # SIGTTOU is ignored in the monitor (see main)
        for sig in (*_IGNORED, signal.SIGTTOU, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)  # an ignored signal would survive the exec
        os.chdir(spec["cwd"])
        if spec["drop"] is not None:
            uid, gid, groups = spec["drop"]
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.write(answer, f"exec {exc.errno}\n".encode())
    os._exit(127)


def main(args: list[str]) -> int:
    answer = int(args[0])
    os.set_inheritable(answer, False)  # the agent's program must not get it
    data = b""
    while chunk := os.read(answer, 65536):
        data += chunk
    spec = json.loads(data)
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    for sig in (*_IGNORED, signal.SIGTTOU):  # SIGTTOU: we hand the terminal to the agent
        signal.signal(sig, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        _agent(spec, answer)
    with contextlib.suppress(OSError):  # both sides, so neither order of the two races
        os.setpgid(pid, pid)
        os.tcsetpgrp(0, pid)
    os.write(answer, f"pid {pid}\n".encode())
    os.close(answer)
    while True:
        _, status = os.waitpid(pid, os.WUNTRACED)
        if os.WIFSTOPPED(status):
            if os.WSTOPSIG(status) not in (signal.SIGTTIN, signal.SIGTTOU):
                # its own terminal's background rules are its own business; Ctrl-Z is ours
                os.kill(os.getpid(), signal.SIGSTOP)  # the supervisor continues us and it
            continue
        break
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the agent's core, not ours
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
        return 128 + sig
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
