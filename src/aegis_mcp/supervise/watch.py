"""--watch: the files whose change restarts the agent, watched by watchfiles in a thread of the
supervisor's, which wakes its event loop through a pipe."""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field


@dataclass
class FileWatch:
    fd: int
    """The read end of the pipe: readable when files changed (the event loop selects on it)."""
    _stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, paths: list[str]) -> FileWatch:
        """Start watching `paths`. Only once the supervisor has made its namespace: pyroute2
        makes it in forks of this process, which must not copy a second thread mid-lock."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        watch = cls(r)

        def run() -> None:
            from watchfiles import watch as wf_watch

            for changes in wf_watch(*paths, stop_event=watch._stop, debounce=300, step=50,
                                    raise_interrupt=False):
                names = sorted({os.path.relpath(p) for _, p in changes})
                with contextlib.suppress(OSError):
                    os.write(w, ("\n".join(names) + "\0").encode())

        threading.Thread(target=run, name="aegis-watch", daemon=True).start()
        return watch

    def changed(self) -> str:
        """What changed since the last call, for the restart's reason (the first three)."""
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.fd, 65536):
                data += chunk
        names = sorted({n for part in data.decode(errors="replace").split("\0") for n in
                        part.split("\n") if n})
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return shown or "?"

    def stop(self) -> None:
        """The thread ends within a step (50 ms); it may still write into the pipe until then,
        so the pipe stays open: it goes with the supervisor."""
        self._stop.set()
