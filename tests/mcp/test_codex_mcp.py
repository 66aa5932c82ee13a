"""Codex's readiness gate without codex: which of the user's servers are wrapped, the `-c`
arguments, and the pass-through's transparency (bytes, exit status, signals, its report)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_mcp.launch import python_command
from aegis_mcp.mcp import codex
from aegis_mcp.supervise.options import UsageError, parse_supervisor_args
from tests.support.host import aegis_bin

CONFIG = """
model = "x"
[mcp_servers.docs]
command = "docs-server"
args = ["--port", "0"]
env = { TOKEN = "t" }
[mcp_servers.web]
url = "https://example.invalid/mcp"
[mcp_servers.off]
command = "off-server"
enabled = false
[mcp_servers.aegis-mcp]
command = "an-old-aegis"
"""


def test_the_users_stdio_servers_are_read_from_the_config_and_the_c_arguments() -> None:
    args = ["-c", 'mcp_servers.docs.args=["--port", "9"]', "--config=mcp_servers.extra.command=x",
            "-c", "mcp_servers.inline={command = 'y', args = ['a']}", "exec", "--", "-c",
            "mcp_servers.prompt.command=z"]
    config = codex.effective_config(CONFIG, args)
    servers = {s.name: s for s in codex.stdio_servers(config)}
    # URL servers, disabled ones, ours, and words after `--` (the prompt) are not servers
    assert set(servers) == {"docs", "extra", "inline"}
    assert servers["docs"] == codex.StdioServer("docs", "docs-server", ("--port", "9"))
    assert servers["inline"].args == ("a",)
    assert config["mcp_servers"]["docs"]["env"] == {"TOKEN": "t"}  # kept under the override


def test_a_broken_config_file_counts_as_empty() -> None:
    assert codex.stdio_servers(codex.effective_config("[mcp_servers\n", [])) == []


def test_the_readiness_arguments_raise_the_grace_and_wrap_each_server() -> None:
    config = codex.effective_config(CONFIG, [])
    ready = codex.readiness(config, 30, "/run/sock", "2")
    assert ready.awaited == ["docs"]
    assert ready.args[:2] == ["-c", "mcp_optional_startup_grace_ms=30000"]
    wrap = python_command("aegis_mcp.mcp.wrap", "/run/sock", "2", "docs", "--", "docs-server",
                          "--port", "0")
    assert ready.args[2:] == ["-c", f"mcp_servers.docs.command={json.dumps(wrap[0])}",
                              "-c", f"mcp_servers.docs.args={json.dumps(wrap[1:])}"]
    # the user's own grace is theirs; a bound of 0 is codex left alone
    own = codex.effective_config(CONFIG, ["-c", "mcp_optional_startup_grace_ms=0"])
    assert "mcp_optional_startup_grace_ms=30000" not in codex.readiness(own, 30, "s", "1").args
    assert codex.readiness(config, 0, "s", "1") == codex.Readiness()


def test_the_watch_counts_its_own_start_and_says_the_silent_ones_once() -> None:
    watch = codex.ReadinessWatch(2, ("a", "b", "c"), due=100.0)
    assert not watch.report(1, "a", "ready")  # an older start's server
    assert not watch.report(2, "zz", "ready") and not watch.report(2, "a", "bogus")
    assert watch.report(2, "a", "ready") and watch.report(2, "b", "failed")
    assert watch.pending() and watch.overdue(99.0) is None
    assert watch.overdue(100.0) == ["c"]
    assert watch.overdue(200.0) is None and not watch.pending()


@pytest.mark.parametrize("value", ["x", "-1", "601", "nan"])
def test_a_bad_ready_timeout_is_one_line(value: str) -> None:
    with pytest.raises(UsageError, match="--mcp-ready-timeout"):
        parse_supervisor_args(["--mcp-ready-timeout", value, "codex"])
    out = subprocess.run([aegis_bin(), "--mcp-ready-timeout", value, "codex"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("aegis-mcp: --mcp-ready-timeout")


# -- the pass-through ------------------------------------------------------------------------


class Reports:
    """A stand-in for the supervisor's control socket that records `mcp_ready` requests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.got: list[dict[str, object]] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.got.append(json.loads(conn.makefile().readline()))
                conn.sendall(b'{"ok": true}\n')

    def wait(self, count: int = 1, timeout: float = 10) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while len(self.got) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.got


@pytest.fixture
def reports(tmp_path: Path) -> Iterator[Reports]:
    r = Reports(tmp_path / "s.sock")
    yield r
    r.sock.close()


def wrapped(reports: Reports, code: str) -> list[str]:
    return python_command("aegis_mcp.mcp.wrap", str(reports.path), "3", "srv", "--",
                          sys.executable, "-c", code)


SERVER = r"""
import sys, os
line = sys.stdin.readline()
os.write(1, b'{"jsonrpc":"2.0","method":"notifications/message"}\n\x00\xff partial')
os.write(1, b' line\n{"jsonrpc": "2.0", "id": 0, "result": {}}\n' + sys.stdin.read().encode())
sys.exit(7)
"""


def test_the_pass_through_copies_bytes_unchanged_and_keeps_the_exit_status(
        reports: Reports) -> None:
    out = subprocess.run(wrapped(reports, SERVER), input=b'{"id": 0}\nrest of stdin',
                         capture_output=True, timeout=30)
    assert out.stdout == (b'{"jsonrpc":"2.0","method":"notifications/message"}\n\x00\xff '
                          b'partial line\n{"jsonrpc": "2.0", "id": 0, "result": {}}\n'
                          b"rest of stdin")
    assert out.returncode == 7 and out.stderr == b""
    assert reports.wait() == [{"op": "mcp_ready", "start": 3, "name": "srv", "state": "ready"}]


def test_the_server_is_the_process_codex_started_so_signals_reach_it(reports: Reports) -> None:
    code = "import os, sys, time; print(os.getpid(), flush=True); time.sleep(60)"
    proc = subprocess.Popen(wrapped(reports, code), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert int(proc.stdout.readline()) == proc.pid  # exec'd in place: the same pid
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM
    assert reports.wait()[0]["state"] == "exited"  # its output ended without an answer


def test_an_error_answer_is_a_failed_server_and_a_missing_command_one_line(
        reports: Reports, tmp_path: Path) -> None:
    code = "print('{\"jsonrpc\": \"2.0\", \"id\": 1, \"error\": {\"code\": 1}}')"
    assert subprocess.run(wrapped(reports, code), capture_output=True, timeout=30).returncode == 0
    assert reports.wait()[0]["state"] == "failed"
    missing = python_command("aegis_mcp.mcp.wrap", str(reports.path), "3", "gone", "--",
                             str(tmp_path / "no-such-server"))
    out = subprocess.run(missing, capture_output=True, text=True, timeout=30)
    assert out.returncode == 127 and out.stdout == ""
    assert out.stderr == f"aegis-mcp: cannot start MCP server gone: {tmp_path}/no-such-server: "\
        "No such file or directory\n"
    assert reports.wait(2)[1]["state"] == "exited"


def test_a_pass_through_with_a_gone_supervisor_still_serves(tmp_path: Path) -> None:
    cmd = python_command("aegis_mcp.mcp.wrap", str(tmp_path / "nobody.sock"), "1", "srv", "--",
                         sys.executable, "-c", "print('{\"id\": 0, \"result\": {}}')")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0 and out.stdout == '{"id": 0, "result": {}}\n'
    assert subprocess.run([*python_command("aegis_mcp.mcp.wrap"), "x"], capture_output=True,
                          text=True).stderr.startswith("usage: python -m aegis_mcp.mcp.wrap")
