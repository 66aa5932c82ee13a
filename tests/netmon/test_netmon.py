"""Reading the netmon log: the incremental summary (rotation, truncation, partial lines), the
tail, the preload visibility check, the MCP tools (in memory and over stdio) and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer

from aegis_mcp.netmon import elf
from aegis_mcp.netmon import log as netlog
from aegis_mcp.netmon import summary as netsummary
from aegis_mcp.netmon import tools as netmon_tools
from tests.support.host import aegis_bin


def ev(kind: str, **kw: Any) -> dict[str, Any]:
    base = {"ts": kw.pop("ts", 1000.0), "event": kind, "source": "preload", "pid": 1, "ppid": 0,
            "exe": "node", "fd": 5, "family": "ipv4", "proto": "tcp", "addr": "10.0.0.1",
            "port": 443, "host": None, "sent": 0, "recv": 0, "duration": None, "result": "ok"}
    base.update(kw)
    return base


def write(log: Path, *events: dict[str, Any], mode: str = "a") -> None:
    with open(log, mode) as f:
        for e in events:
            f.write(json.dumps(e) + "\n")


def sample(log: Path) -> None:
    """Known traffic: api (named by dns, 2 connections), a refused one, an accept, a gap,
    a netns flow, and one connection left open by this test process."""
    write(log,
          ev("dns", host="api.example.com", answers=["10.0.0.1", "10.0.0.9"]),
          ev("connect", fd=5, result="EINPROGRESS"),
          ev("totals", fd=5, sent=100, recv=1000, duration=5.0),
          ev("close", fd=5, sent=150, recv=3000, duration=9.0),
          ev("connect", fd=6, addr="10.0.0.9"),
          ev("close", fd=6, addr="10.0.0.9", sent=10, recv=20),
          ev("connect", fd=7, addr="10.0.0.2", port=80, result="ECONNREFUSED"),
          ev("connect", fd=8, addr="10.0.0.3", port=80, result="EINPROGRESS"),
          ev("close", fd=8, addr="10.0.0.3", port=80, result="ECONNREFUSED"),
          ev("accept", fd=9, addr="127.0.0.1", port=5555, direction="in"),
          ev("close", fd=9, addr="127.0.0.1", port=5555, sent=7, recv=3),
          ev("connect", fd=10, addr="/run/x.sock", port=None, family="unix", proto="unix"),
          ev("gap", target="/usr/bin/codex", reason="statically linked"),
          ev("connect", source="netns", pid=None, fd=None, addr="1.1.1.1", port=53,
             proto="udp", local_addr="10.9.0.2", local_port=4000),
          ev("close", source="netns", pid=None, fd=None, addr="1.1.1.1", port=53, proto="udp",
             local_addr="10.9.0.2", local_port=4000, sent=40, recv=80),
          ev("connect", pid=os.getpid(), fd=11, addr="10.0.0.4", host="live.example"),
          ev("totals", pid=os.getpid(), fd=11, addr="10.0.0.4", host="live.example", sent=5,
             recv=6),
          ev("connect", pid=999_999_999, fd=12, addr="10.0.0.5"))


def test_summary_of_known_traffic(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    sample(log)
    s = netsummary.status(log)
    assert s["events"] == 18 and s["bad_lines"] == 0
    # 5.0 (fd5), 6 (fd6), 10 (unix), netns, live, dead: 6; fd7 and the late-refused fd8 failed
    assert s["connections"] == 6 and s["failed_connections"] == 2 and s["accepted"] == 1
    assert s["bytes_sent"] == 150 + 10 + 7 + 40 + 5
    assert s["bytes_received"] == 3000 + 20 + 3 + 80 + 6
    assert s["unique_addresses"] == 9  # refused ones included
    assert s["dns_lookups"] == 1 and s["gaps"] == 1
    assert s["recent_gaps"][0]["target"] == "/usr/bin/codex"
    top = s["top_hosts"][0]
    assert (top["host"], top["connections"], top["sent"], top["recv"]) == (
        "api.example.com", 2, 160, 3020)
    assert s["top_by_bytes"][0]["target"] == "api.example.com:443"
    # still open: the unix one? its pid 1 is alive (init); ours; not the dead pid
    open_targets = sorted(c["target"] for c in s["open"])
    assert open_targets == ["/run/x.sock", "live.example:443"]
    assert s["open_connections"] == 2 and s["ended_without_close"] == 1
    assert s["log_files"] == [str(log)]


def test_names_are_per_resolver(tmp_path: Path) -> None:
    """A dns event names its answers for the connections of the process that looked them up
    (preload), or of the namespace (netns: its events carry no process), no one else's."""
    log = tmp_path / "log.jsonl"
    write(log,
          ev("dns", pid=7, host="localhost", answers=["127.0.0.1"]),
          ev("connect", pid=7, fd=3, addr="127.0.0.1", port=8080),   # hooks' cache missed it
          ev("connect", pid=8, fd=3, addr="127.0.0.1", port=8080),   # curl: resolved nothing
          ev("dns", source="netns", pid=None, host="api.example", answers=["10.0.0.7"]),
          ev("connect", source="netns", pid=None, fd=None, addr="10.0.0.7", local_port=5),
          ev("connect", pid=9, fd=3, addr="10.0.0.7"))
    hosts = {h["host"]: h["connections"] for h in netsummary.status(log)["top_hosts"]}
    assert hosts == {"localhost": 1, "127.0.0.1": 1, "api.example": 1, "10.0.0.7": 1}


def test_a_connect_in_progress_is_connecting_until_it_is_known(tmp_path: Path) -> None:
    from aegis_mcp.netmon.cli import event_line

    log = tmp_path / "log.jsonl"
    me = os.getpid()
    write(log, ev("connect", pid=me, fd=5, result="EINPROGRESS"),
          ev("connect", pid=me, fd=6, result="EINPROGRESS", addr="10.0.0.2"))
    s = netsummary.status(log)
    assert s["connecting"] == 2 and {c["state"] for c in s["open"]} == {"connecting"}
    write(log, ev("totals", pid=me, fd=5, sent=10, recv=20))  # data moved: it connected
    s = netsummary.status(log)
    assert s["connecting"] == 1
    assert {c["addr"]: c["state"] for c in s["open"]} == {"10.0.0.1": "open",
                                                          "10.0.0.2": "connecting"}
    line = event_line(ev("connect", result="EINPROGRESS"))
    assert line.endswith("10.0.0.1:443 tcp connecting") and "EINPROGRESS" not in line
    closed = event_line(ev("close", result="EINPROGRESS", duration=0.1))
    assert closed.endswith("closed while connecting")
    assert event_line(ev("close", result="ECONNREFUSED", duration=0.1)).endswith("ECONNREFUSED")


def test_hints_are_kept_once_per_port(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    hint = "127.0.0.1:8080 refused in the agent's network namespace: --netns-forward 8080"
    write(log, *(ev("connect", source="netns", pid=None, fd=None, addr=a, port=8080,
                    result="ECONNREFUSED", hint=hint.replace("127.0.0.1", a))
                 for a in ("127.0.0.1", "::1", "127.0.0.1")))
    s = netsummary.status(log)
    assert s["hints"] == [hint] and s["failed_connections"] == 3


def test_summary_file_keeps_target_rows_as_lists(tmp_path: Path) -> None:
    """Target rows are records in memory, but the summary file keeps its format: a summary
    written by an earlier version is read on, not rebuilt from the whole log."""
    log = tmp_path / "log.jsonl"
    write(log, ev("connect", fd=5, host="api.example.com"), ev("close", fd=5, sent=1, recv=2))
    netsummary.status(log)
    saved = json.loads(netsummary.summary_path(log).read_text())
    assert saved["targets"] == {"api.example.com:443": [1, 1, 2, "api.example.com", "10.0.0.1",
                                                        443]}
    write(log, ev("connect", fd=6, host="api.example.com"))
    s = netsummary.status(log)
    assert s["top_by_bytes"][0]["connections"] == 2 and s["top_by_bytes"][0]["recv"] == 2


def test_empty_status_has_every_key_of_a_status(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    write(log, ev("connect", fd=5))
    empty = netsummary.empty_status(log)
    assert set(empty) - {"note"} == set(netsummary.status(log)) and empty["note"]


def test_summary_is_incremental(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    write(log, ev("connect", fd=5), ev("close", fd=5, sent=1, recv=2))
    assert netsummary.status(log)["connections"] == 1
    assert netsummary.summary_path(log).exists()
    # Rewrite what was already read (same length): a re-read would count differently.
    text = log.read_text()
    log.write_text(text.replace('"sent": 1,', '"sent": 9,'))
    write(log, ev("connect", fd=6), ev("close", fd=6, sent=100, recv=200))
    s = netsummary.status(log)
    assert s["connections"] == 2 and s["bytes_sent"] == 101 and s["bytes_received"] == 202
    # a writer mid-line: the partial line waits for its end
    with open(log, "a") as f:
        f.write(json.dumps(ev("connect", fd=7))[:30])
    assert netsummary.status(log)["connections"] == 2
    with open(log, "a") as f:
        f.write(json.dumps(ev("connect", fd=7))[30:] + "\n")
    assert netsummary.status(log)["connections"] == 3


def test_summary_follows_rotation(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    write(log, ev("connect", fd=5), ev("totals", fd=5, sent=10, recv=10))
    assert netsummary.status(log)["bytes_sent"] == 10
    write(log, ev("close", fd=5, sent=30, recv=40))   # appended after our last look...
    log.rename(netlog.rotated_path(log))                # ...then rotated
    write(log, ev("connect", fd=6), ev("close", fd=6, sent=1, recv=1))
    s = netsummary.status(log)
    assert (s["connections"], s["bytes_sent"], s["bytes_received"]) == (2, 31, 41)
    assert not s["events_lost_to_rotation"]
    assert s["log_files"] == [str(netlog.rotated_path(log)), str(log)]
    # rotated twice between two looks: what was in between is gone, and it says so
    log.rename(netlog.rotated_path(log))
    write(log, ev("connect", fd=7))
    log.rename(netlog.rotated_path(log))
    write(log, ev("connect", fd=8))
    s = netsummary.status(log)
    assert s["events_lost_to_rotation"] and s["connections"] == 3


def test_first_look_reads_the_rotated_file_too(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    write(netlog.rotated_path(log), ev("connect", fd=5), ev("close", fd=5, sent=5, recv=5))
    write(log, ev("connect", fd=6))
    s = netsummary.status(log)
    assert s["connections"] == 2 and s["bytes_sent"] == 5


def test_truncated_log_starts_over(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    write(log, *[ev("connect", fd=i) for i in range(10)])
    assert netsummary.status(log)["connections"] == 10
    write(log, ev("connect", fd=1), mode="w")
    assert netsummary.status(log)["connections"] == 1


def test_bad_lines_and_a_corrupt_summary(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('not json\n[1, 2]\n\n' + json.dumps(ev("connect")) + "\n")
    netsummary.summary_path(log).write_text("{broken")
    s = netsummary.status(log)
    assert s["connections"] == 1 and s["bad_lines"] == 2
    with pytest.raises(netlog.NoLog):
        netsummary.status(tmp_path / "missing.jsonl")


def test_tail_newest_last_across_rotation(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    write(netlog.rotated_path(log), *[ev("connect", fd=i) for i in range(0, 5000)])
    write(log, *[ev("connect", fd=i) for i in range(5000, 5010)])
    with open(log, "a") as f:
        f.write('{"ts": 1, "event": "conn')  # a writer mid-line
    assert [e["fd"] for e in netlog.tail(log, 3)] == [5007, 5008, 5009]
    assert [e["fd"] for e in netlog.tail(log, 12)] == list(range(4998, 5010))
    assert len(netlog.tail(log, 10_000)) == 5010
    with pytest.raises(netlog.NoLog):
        netlog.tail(tmp_path / "none.jsonl", 5)


def test_status_of_a_million_events_answers_under_a_second(tmp_path: Path) -> None:
    """The supervisor keeps the summary current (netsummary.refresh); a status call then reads
    only what was appended since."""
    log = tmp_path / "big.jsonl"
    line = ('{{"ts":{ts},"event":"{kind}","source":"preload","pid":{pid},"ppid":1,"exe":"node",'
            '"fd":{fd},"family":"ipv4","proto":"tcp","addr":"10.1.{a}.{b}","port":443,'
            '"host":"h{a}-{b}.example","sent":{s},"recv":{r},"duration":null,"result":"ok"}}\n')
    with open(log, "w") as f:
        for i in range(250_000):
            pid, fd, a, b = 1000 + i % 50, 3 + i % 100, i % 7, i % 31
            f.write(line.format(ts=i, kind="connect", pid=pid, fd=fd, a=a, b=b, s=0, r=0)
                    + line.format(ts=i, kind="totals", pid=pid, fd=fd, a=a, b=b, s=5, r=50)
                    + line.format(ts=i, kind="totals", pid=pid, fd=fd, a=a, b=b, s=9, r=90)
                    + line.format(ts=i, kind="close", pid=pid, fd=fd, a=a, b=b, s=10, r=100))
    netsummary.refresh(log)
    with open(log, "a") as f:
        for i in range(1000):
            f.write(line.format(ts=i, kind="connect", pid=1, fd=i, a=9, b=9, s=0, r=0))
    env_before = os.environ.get("AEGIS_NETMON_LOG")
    os.environ["AEGIS_NETMON_LOG"] = str(log)
    try:
        start = time.perf_counter()
        result = asyncio.run(_call("netmon_status", {}))
        elapsed = time.perf_counter() - start
    finally:
        if env_before is None:
            del os.environ["AEGIS_NETMON_LOG"]
        else:
            os.environ["AEGIS_NETMON_LOG"] = env_before
    data = result.structured_content
    assert data["events"] == 1_001_000 and data["connections"] == 251_000
    assert data["bytes_sent"] == 2_500_000 and data["unique_addresses"] == 7 * 31 + 1
    assert elapsed < 1.0, f"netmon_status took {elapsed:.2f}s"


# ---- preload visibility -------------------------------------------------------------------


def test_preload_check(tmp_path: Path) -> None:
    src = tmp_path / "hello.c"
    src.write_text("int main(void) { return 0; }\n")
    static = tmp_path / "static-hello"
    dynamic = tmp_path / "dynamic-hello"
    subprocess.run(["gcc", "-static", "-o", str(static), str(src)], check=True)
    subprocess.run(["gcc", "-o", str(dynamic), str(src)], check=True)
    assert not elf.is_preload_visible(static)
    assert "statically linked" in elf.preload_check(static).reason
    assert elf.is_preload_visible(dynamic)
    assert elf.is_preload_visible("sh")
    script = tmp_path / "script"
    script.write_text(f"#!/usr/bin/env {static}\n")
    script.chmod(0o755)
    assert not elf.is_preload_visible(script)
    script.write_text("#!/bin/sh\necho hi\n")
    assert elf.is_preload_visible(script)
    assert elf.is_preload_visible(tmp_path / "does-not-exist")


# ---- MCP tools ----------------------------------------------------------------------------


async def _call(tool: str, args: dict[str, Any]) -> Any:
    # the real server class: it turns AegisError into an is_error result with the message
    from aegis_mcp.mcp.server import AegisMCPServer

    server: MCPServer = AegisMCPServer("netmon-test")
    netmon_tools.register(server)
    async with Client(server) as client:
        return await client.call_tool(tool, args)


def _text(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


def test_tools_say_how_to_turn_monitoring_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AEGIS_NETMON_LOG", raising=False)
    for tool, args in (("netmon_status", {}), ("netmon_log", {"count": 5})):
        result = asyncio.run(_call(tool, args))
        assert result.is_error and "--netmon" in _text(result), _text(result)


def test_tools_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("AEGIS_NETMON_LOG", str(log))
    empty = asyncio.run(_call("netmon_status", {}))
    assert not empty.is_error and empty.structured_content["note"]
    sample(log)
    status = asyncio.run(_call("netmon_status", {}))
    assert not status.is_error, _text(status)
    assert status.structured_content["connections"] == 6
    assert status.structured_content["log_path"] == str(log)
    recent = asyncio.run(_call("netmon_log", {"count": 3}))
    assert [e["event"] for e in recent.structured_content["events"]] == [
        "connect", "totals", "connect"]
    assert recent.structured_content["events"][-1]["pid"] == 999_999_999
    default = asyncio.run(_call("netmon_log", {}))
    assert default.structured_content["count"] == 18
    for bad in (0, -1, 1001, "many", 2.5):
        result = asyncio.run(_call("netmon_log", {"count": bad}))
        assert result.is_error and "count" in _text(result), (bad, _text(result))


def test_tools_over_stdio(tmp_path: Path, aegis_env: dict[str, str]) -> None:
    from tests.support.mcp_helpers import call, text

    log = tmp_path / "log.jsonl"
    sample(log)
    env = {**aegis_env, "AEGIS_NETMON_LOG": str(log)}
    result = call(env, "netmon_status")
    assert not result.is_error, text(result)
    assert result.structured_content["bytes_received"] == 3109
    result = call(env, "netmon_log", {"count": 1})
    assert result.structured_content["events"][0]["pid"] == 999_999_999
    off = {k: v for k, v in aegis_env.items() if k != "AEGIS_NETMON_LOG"}
    result = call(off, "netmon_log", {"count": 1})
    assert result.is_error and "aegis-mcp <agent> --netmon" in text(result)


# ---- CLI ----------------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([aegis_bin(), "netmon", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_cli_table_and_json(tmp_path: Path, aegis_env: dict[str, str]) -> None:
    log = tmp_path / "log.jsonl"
    sample(log)
    out = cli(str(log), env=aegis_env)
    assert out.returncode == 0, out.stderr
    assert "6 connections (2 failed, 1 accepted), 9 addresses" in out.stdout
    assert "api.example.com:443" in out.stdout and "1 gap" in out.stdout
    assert "statically linked" in out.stdout
    data = json.loads(cli("--json", "-n", "2", str(log), env=aegis_env).stdout)
    assert data["connections"] == 6 and len(data["recent_events"]) == 2


def test_cli_counts_in_words(tmp_path: Path, aegis_env: dict[str, str]) -> None:
    """"1 connection", never "1 connections"; a connect in progress reads "connecting"."""
    log = tmp_path / "log.jsonl"
    write(log, ev("connect", pid=os.getpid(), fd=5, result="EINPROGRESS"))
    out = cli(str(log), env=aegis_env)
    assert out.returncode == 0, out.stderr
    assert "1 connection (0 failed, 0 accepted, 1 connecting), 1 address," in out.stdout
    assert "EINPROGRESS" not in out.stdout and "connections" not in out.stdout.split("\n")[0]
    assert "tcp connecting" in out.stdout


def test_cli_finds_the_log_of_a_pid(tmp_path: Path, aegis_env: dict[str, str]) -> None:
    log = tmp_path / "agent.jsonl"
    sample(log)
    agent = subprocess.Popen(["sleep", "30"], env={**aegis_env, "AEGIS_NETMON_LOG": str(log)})
    try:
        out = cli("--json", str(agent.pid), env=aegis_env)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["log_path"] == str(log)
    finally:
        agent.kill()
        agent.wait()
    # a supervisor's pid: its log in the runtime dir
    runtime = Path(aegis_env["AEGIS_RUNTIME_DIR"])
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    write(runtime / "netmon-424242.jsonl", ev("connect"))
    data = json.loads(cli("--json", "424242", env=aegis_env).stdout)
    assert data["connections"] == 1
    # no argument: the newest log of the runtime dir
    assert json.loads(cli("--json", env=aegis_env).stdout)["log_path"].endswith(
        "netmon-424242.jsonl")


@pytest.mark.parametrize("args", [["999999999"], ["/no/such/log.jsonl"], ["-n", "5000"]])
def test_cli_errors_are_one_line(args: list[str], aegis_env: dict[str, str]) -> None:
    out = cli(*args, env=aegis_env)
    assert out.returncode != 0 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("aegis-mcp: ")


def test_cli_follow_prints_new_events(tmp_path: Path, aegis_env: dict[str, str]) -> None:
    log = tmp_path / "log.jsonl"
    write(log, ev("connect", fd=1))
    proc = subprocess.Popen([aegis_bin(), "netmon", "--follow", "--json", "-n", "0", str(log)],
                            env=aegis_env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        write(log, ev("connect", fd=2), ev("close", fd=2, sent=3, recv=4))
        log.rename(netlog.rotated_path(log))  # rotation: the follower moves to the new file
        write(log, ev("connect", fd=3))
        assert proc.stdout is not None
        got = [json.loads(proc.stdout.readline()) for _ in range(3)]
        assert [(e["event"], e["fd"]) for e in got] == [("connect", 2), ("close", 2),
                                                        ("connect", 3)]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
