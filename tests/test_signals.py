"""The signal inbox of the supervisor's and the runner's loops: a forked copy of the process
(pyroute2's namespace helpers are such copies, ended with SIGTERM) shares the wakeup fd, and
its signals must not be taken for ours. In CI this stopped codex under --netmon=netns with
"received SIGTERM" that nobody had sent to the supervisor."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, os, select, signal, time
    from aegis_mcp.signals import SignalInbox

    inbox = SignalInbox((signal.SIGTERM, signal.SIGHUP), wake_only=(signal.SIGCHLD,))
    result = {}

    pid = os.fork()
    if pid == 0:  # what pyroute2 does: a copy that keeps our handlers and wakeup fd
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.05)
        os._exit(0)
    os.waitpid(pid, 0)
    result["woken_by_the_copy"] = bool(select.select([inbox], [], [], 5)[0])
    result["after_the_copy"] = inbox.drain()

    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGHUP)
    result["woken_by_ours"] = bool(select.select([inbox], [], [], 5)[0])
    result["ours"] = inbox.drain()
    result["drained_again"] = inbox.drain()
    result["readable_after_drain"] = bool(select.select([inbox], [], [], 0)[0])
    inbox.close()
    print(json.dumps(result))
""")


def test_a_forked_copys_signals_wake_the_loop_but_are_not_ours() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=30, check=True)
    result = json.loads(out.stdout)
    assert result["woken_by_the_copy"]  # the shared fd did wake us ...
    assert result["after_the_copy"] == []  # ... but nothing was received here
    assert result["woken_by_ours"]
    assert result["ours"] == [15, 1]  # SIGTERM then SIGHUP, in order
    assert result["drained_again"] == []
    assert not result["readable_after_drain"]
