"""A real terminal for full-screen programs: tmux, on a server of the test's own (never the
user's), with send-keys to type and capture-pane to read the screen."""

from __future__ import annotations

import os
import shlex
import subprocess
from typing import Any

from tests.support.wait import wait_for


class Tmux:
    def __init__(self, name: str) -> None:
        self.base = ["tmux", "-L", f"{name}-{os.getpid()}", "-f", "/dev/null"]
        self.session = "t"

    def _run(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    def start(self, command: list[str], env: dict[str, str], cwd: str,
              width: int = 160, height: int = 45) -> int:
        """Run `command` in a new window of that size; returns its pid. The window stays after
        the command ends, so that its last screen and exit status can be read."""
        keep = {**env, "TERM": "xterm-256color"}
        line = "env -i " + " ".join(shlex.quote(f"{k}={v}") for k, v in keep.items()) + " " \
            + shlex.join(command)
        self._run("new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height),
                  "-c", cwd, line)
        self._run("set-option", "-t", self.session, "remain-on-exit", "on")
        return int(self._run("display", "-p", "-t", self.session, "#{pane_pid}").strip())

    def screen(self) -> str:
        return self._run("capture-pane", "-p", "-t", self.session)

    def keys(self, *keys: str) -> None:
        self._run("send-keys", "-t", self.session, *keys)

    def resize(self, width: int, height: int) -> None:
        self._run("resize-window", "-t", self.session, "-x", str(width), "-y", str(height))

    def dead(self) -> bool:
        return self._run("display", "-p", "-t", self.session, "#{pane_dead}").strip() == "1"

    def wait_screen(self, check: Any, timeout: float = 30, what: str = "the screen") -> str:
        """The screen once `check(screen)` holds (a string: once it shows that text)."""
        test = (lambda s: check in s) if isinstance(check, str) else check
        try:
            return wait_for(lambda: (s if test(s := self.screen()) else None), timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen was:\n{self.screen()}") from None

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30)
