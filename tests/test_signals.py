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



def test_a_process_is_named_by_its_pid_and_start_time() -> None:
    import os
    import time

    from aegis_mcp import procs

    me = procs.start_time(os.getpid())
    assert me is not None and procs.alive(os.getpid(), me)
    assert not procs.alive(os.getpid(), me + 1)  # the same pid, another process
    child = subprocess.Popen(["sleep", "30"], env={"MARK": "x"})
    try:
        for _ in range(200):  # until the exec is done and its environment is sleep's
            if procs.environ_of(child.pid).get("MARK") == "x":
                break
            time.sleep(0.01)
        assert procs.environ_of(child.pid) == {"MARK": "x"}
        child.kill()
        for _ in range(200):  # a zombie until reaped: not alive
            if not procs.alive(child.pid):
                break
            time.sleep(0.01)
        assert not procs.alive(child.pid)
    finally:
        child.wait()
    assert procs.start_time(None) is None and procs.environ_of(child.pid) == {}
