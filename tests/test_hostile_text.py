"""Text from others printed by the CLI is data: Rich markup in it is printed literally, and its
terminal escapes never reach the terminal raw. Each command gets hostile host names, reasons,
paths, task descriptions or profile names, prints them literally, exits 0, and keeps working.
(Before: `[/bold]` made these commands die with exit 70.)"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from aegis_mcp.display import lines, plain, text
from tests.netmon.test_netmon import ev, write
from tests.support.host import aegis_bin
from tests.support.poolkit import cleanup_pool, pool_config

# Markup that Rich rejects ([/bold] closes nothing) or acts on (a hyperlink), an OSC 52
# clipboard write ended by BEL, a clear screen, and a bidi override.
MARKUP = "[/bold][link=https://evil.example]x[/link][red]"
ESCAPES = "\x1b]52;c;aGkK\x07\x1b[2J\u202e"
HOSTILE = ESCAPES + MARKUP
SHOWN = "\\x1b]52;c;aGkK\\x07\\x1b[2J\\u202e" + MARKUP


def test_plain_shows_every_control_character_as_an_escape() -> None:
    assert plain(HOSTILE) == SHOWN
    assert plain("a\tb\nc\rd\x00\x7f\x9b") == "a\\tb\\nc\\rd\\x00\\x7f\\x9b"
    assert plain("naïve ünïcode → ok, 漢字, emoji 👍🏽") == "naïve ünïcode → ok, 漢字, emoji 👍🏽"
    assert text(HOSTILE, style="red").plain == SHOWN
    assert lines(["one\x1b[2J", "two"]).plain == "one\\x1b[2J\ntwo"


@pytest.fixture
def env(aegis_env: dict[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in aegis_env.items()
             if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR")}
    return {**clean, "COLUMNS": "400"}


def run(env: dict[str, str], *args: str, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([aegis_bin(), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def assert_literal(proc: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit 0, one line of nothing on stderr, the hostile text shown as text, no raw escape.
    (Not a terminal: Rich adds no escapes of its own, so none may be there at all.)"""
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert "\u202e" not in proc.stdout
    for want in expected:
        assert want in proc.stdout, proc.stdout


def hostile_log(log: Path) -> None:
    write(log,
          ev("dns", host=HOSTILE, answers=["10.0.0.1"]),
          ev("connect", fd=5, host=HOSTILE, exe="[red]node"),
          ev("close", fd=5, host=HOSTILE, exe="[red]node", sent=10, recv=20),
          ev("connect", pid=os.getpid(), fd=6, addr="10.0.0.2", host=HOSTILE, exe="[red]node"),
          ev("connect", fd=7, addr=f"/run/{HOSTILE}.sock", port=None, family="unix",
             proto="unix"),
          ev("gap", target=f"/usr/bin/{MARKUP}", reason=HOSTILE))


def test_netmon_prints_hostile_hosts_paths_and_reasons_literally(tmp_path: Path,
                                                                 env: dict[str, str]) -> None:
    log = tmp_path / "log.jsonl"
    hostile_log(log)
    proc = run(env, "netmon", "-n", "10", str(log))
    assert_literal(proc, f"{SHOWN}:443", f"/run/{SHOWN}.sock", f"gap: /usr/bin/{MARKUP} {SHOWN}",
                   "[red]node[")
    assert "connections" in proc.stdout
    as_json = json.loads(run(env, "netmon", "--json", str(log)).stdout)
    assert as_json["recent_gaps"][0]["reason"] == HOSTILE  # JSON keeps the data as it is


def test_netmon_follow_prints_hostile_events_literally(tmp_path: Path,
                                                       env: dict[str, str]) -> None:
    log = tmp_path / "log.jsonl"
    write(log, ev("connect", fd=1))
    proc = subprocess.Popen([aegis_bin(), "netmon", "--follow", str(log)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        write(log, ev("connect", fd=2, host=HOSTILE), ev("connect", fd=3, host="after.example"))
        assert proc.stdout is not None
        # the log's latest events first (as tail -f), then what is appended: the same three
        # lines whether the follower started before the write or after it
        got = [proc.stdout.readline() for _ in range(3)]
        assert "10.0.0.1:443" in got[0] and "after.example" not in got[0]
        assert f"{SHOWN} (10.0.0.1:443)" in got[1] and "\x1b" not in got[1]
        assert "after.example" in got[2]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_netmon_on_a_terminal_sends_no_escape_of_the_data(tmp_path: Path,
                                                          env: dict[str, str]) -> None:
    """On a terminal Rich styles the output with escapes of its own; the data's OSC 52 and
    clear-screen must not be among them, in the summary and in the live view."""
    log = tmp_path / "log.jsonl"
    hostile_log(log)
    tty_env = {**env, "TERM": "xterm-256color", "COLUMNS": "250", "LINES": "80"}
    for args in (["netmon", str(log)], ["netmon", "--follow", str(log)]):
        seen = io.StringIO()
        child = pexpect.spawn(aegis_bin(), args, env=tty_env, timeout=20, dimensions=(80, 250),
                              encoding="utf-8", codec_errors="replace")
        child.logfile_read = seen
        try:
            if "--follow" in args:
                child.expect_exact("recent events:")
                time.sleep(0.5)
                write(log, ev("connect", fd=9, host=HOSTILE + "-live"))
                child.expect_exact(f"{MARKUP}-live")
                child.sendintr()
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        out = seen.getvalue()
        assert "\\x1b]52;c;aGkK" in out and "[/bold][link=https://evil.example]" in out
        assert "\x1b]" not in out and "\x1b[2J" not in out and "\x07" not in out
        assert child.exitstatus == 0, out[-2000:]


@pytest.fixture
def pool_env(env: dict[str, str]) -> Iterator[dict[str, str]]:
    Path(env["AEGIS_CONFIG"]).write_text(pool_config(max_agents=2))
    with cleanup_pool():
        yield env


def test_agents_print_hostile_tasks_and_paths_literally(tmp_path: Path,
                                                        pool_env: dict[str, str]) -> None:
    workdir = Path(f"{tmp_path}/proj{ESCAPES}[/bold]")  # the `/` makes it two directories
    workdir.mkdir(parents=True)
    shown_dir = plain(workdir)
    spawned = run(pool_env, "agents", "spawn", "-C", str(workdir), "hang", HOSTILE)
    assert_literal(spawned, "starting")
    agent_id = spawned.stdout.split()[0]
    queued = run(pool_env, "agents", "spawn", "-C", str(workdir), f"result={HOSTILE}")
    assert_literal(queued, f"waiting for {agent_id}")
    queued_id = queued.stdout.split()[0]

    assert_literal(run(pool_env, "agents", "list"), agent_id, "\\x1b]52;c;", "queue #1")
    assert_literal(run(pool_env, "agents", "locks"), shown_dir, agent_id)
    assert_literal(run(pool_env, "agents", "status", agent_id), f"hang {SHOWN}", shown_dir)
    assert_literal(run(pool_env, "agents", "stop", agent_id), f"{agent_id} stopped")

    done = run(pool_env, "agents", "await", queued_id, "--timeout", "30")
    assert_literal(done, "completed", SHOWN)
    assert_literal(run(pool_env, "agents", "list"), queued_id, "completed")
    status = json.loads(run(pool_env, "agents", "status", queued_id, "--json").stdout)
    assert status["result"] == HOSTILE  # the store and JSON keep the data as it is


def test_profiles_print_hostile_profile_names_and_commands_literally(
        env: dict[str, str]) -> None:
    toml_text = json.dumps(HOSTILE)  # a TOML basic string: same escapes as JSON
    Path(env["AEGIS_CONFIG"]).write_text(
        f'[agents."x{MARKUP}"]\ncommand = [{toml_text}, "--flag"]\n')
    proc = run(env, "profiles")
    assert_literal(proc, f"x{MARKUP}", f"{SHOWN} --flag", "claude")


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_netns_list_prints_hostile_state_literally(tmp_path: Path, env: dict[str, str]) -> None:
    """State files are checked against the naming scheme (names, veth, table), but the
    addresses are free text."""
    state_dir = tmp_path / "netns-state"
    state_dir.mkdir()
    pid = dead_pid()
    name = f"aegis-{pid}"
    state: dict[str, Any] = {
        "name": name, "owner_pid": pid, "owner_start": 1, "created": time.time() - 60,
        "subnet": "10.254.254.0/30", "host_addr": HOSTILE, "ns_addr": HOSTILE, "veth": name,
        "table": f"aegis_{pid}", "dns": "copy"}
    (state_dir / f"{name}.json").write_text(json.dumps(state))
    proc = run({**env, "AEGIS_NETNS_STATE_DIR": str(state_dir)}, "netns", "list")
    assert_literal(proc, f"{name} ", f" {SHOWN} {SHOWN} ", "stale", "1 stale")
