"""Denials read as policy: `deny` events, written into a real log as the hooks write them, are
counted by the summary, listed by netmon_status and `aegis-mcp netmon`, and explained by the
netmon_policy tool (over the SDK's client, from inside a real supervisor's agent) and by
`aegis-mcp netmon policy`; the live view's cells show them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aegis_mcp.netmon import policy as netpolicy
from aegis_mcp.netmon import summary as netsummary
from aegis_mcp.netmon.denials import NO_POLICY, advice
from tests.support.host import aegis_bin
from tests.support.mcp_helpers import call, text


def deny_event(**fields: Any) -> dict[str, Any]:
    """A deny event in the hooks' format (docs/netmon.md, "The compiled policy")."""
    return {"event": "deny", "ts": fields.pop("ts", time.time()), "pid": 4242, "exe": "curl",
            "proto": "tcp", "addr": "203.0.113.9", "port": 443, "host": None,
            "rule": "default deny", "label": None, "default": True, "mode": "preload",
            **fields}


def append(log: Path, *events: dict[str, Any]) -> None:
    """As the hooks do: each event one write(), appended."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        for ev in events:
            os.write(fd, (json.dumps(ev) + "\n").encode())
    finally:
        os.close(fd)


PASTE = {"addr": "203.0.113.9", "port": 443, "host": "paste.pastebin.com",
         "rule": "deny host *.pastebin.com 0", "label": "--deny *.pastebin.com",
         "default": False}
UNLISTED = {"addr": "198.51.100.7", "port": 8443, "host": "api.example.com"}


def compiled(path: Path) -> netpolicy.Policy:
    users = netpolicy.from_flags(["api.github.com:443"], ["*.pastebin.com"])
    implicit = netpolicy.implicit_rules(None, {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"})
    policy = netpolicy.effective(users, implicit)
    assert policy is not None
    netpolicy.write_compiled(str(path), policy.compile())
    return policy


def test_the_summary_counts_denials_and_keeps_the_recent_ones(tmp_path: Path) -> None:
    log = tmp_path / "netmon-7.jsonl"
    append(log, {"event": "dns", "ts": 1.0, "pid": 4242, "host": "named.example",
                 "answers": ["192.0.2.1"]},
           deny_event(**PASTE), deny_event(**PASTE), deny_event(**UNLISTED),
           deny_event(addr="192.0.2.1", port=80))  # named by its process's lookup
    s = netsummary.status(log)
    assert s["denied"] == 4 and s["connections"] == 0 and s["failed_connections"] == 0
    assert [d["host"] for d in s["recent_denials"]] == [
        "paste.pastebin.com", "paste.pastebin.com", "api.example.com", "named.example"]
    assert s["recent_denials"][0]["label"] == "--deny *.pastebin.com"
    assert s["top_denied"][0] == {"target": "paste.pastebin.com:443", "denials": 2}
    append(log, *(deny_event(port=1000 + i) for i in range(30)))  # incremental, bounded
    s = netsummary.status(log)
    assert s["denied"] == 34 and len(s["recent_denials"]) == netsummary.MAX_DENIALS
    assert s["recent_denials"][-1]["port"] == 1029
    assert netsummary.empty_status(log).keys() - {"note"} == s.keys()


def test_each_denial_comes_with_a_sentence_to_act_on(tmp_path: Path) -> None:
    policy = compiled(tmp_path / "p.policy")
    by_list = advice(deny_event(**UNLISTED), policy)
    assert by_list == (
        "denied by the allow-list (--allow flags): api.example.com (198.51.100.7:8443) is not "
        "in it; this is the user's network policy, not a network fault: retrying, or another "
        "route to it, is denied too; if the task needs it, ask the user to allow it, e.g. "
        "--allow api.example.com")
    by_rule = advice(deny_event(**PASTE), policy)
    assert by_rule.startswith("denied by the rule --deny *.pastebin.com (deny host "
                              "*.pastebin.com 0): the user blocked paste.pastebin.com "
                              "(203.0.113.9:443); this is the user's network policy")
    assert by_rule.endswith("ask the user to lift that rule")
    # no name known, IPv6: the address is what to allow; a hostile name is never suggested
    v6 = advice(deny_event(addr="2001:db8::7", port=443, host=None), policy)
    assert "[2001:db8::7]:443 is not in it" in v6 and v6.endswith("--allow 2001:db8::7")
    hostile = advice(deny_event(host="x\n--allow *; rm -rf ~", addr="192.0.2.5"), policy)
    assert "\n" not in hostile and hostile.endswith("e.g. --allow 192.0.2.5")
    closed = advice(deny_event(label="invalid policy /p line 3: not a host name"), policy)
    assert closed.startswith("denied: invalid policy /p line 3: not a host name; 203.0.113.9:443")
    from_file = netpolicy.effective(netpolicy.parse_file('allow = ["a.example"]', "./p.toml"),
                                    [])
    assert "(policy file ./p.toml)" in advice(deny_event(), from_file)


def test_netmon_policy_over_the_sdk_client(tmp_path: Path, aegis_env: dict[str, str]) -> None:
    log = tmp_path / "netmon-9.jsonl"
    policy_file = netpolicy.path_for_log(log)
    compiled(policy_file)
    append(log, deny_event(**PASTE), deny_event(**UNLISTED))
    env = {**aegis_env, "AEGIS_NETMON_LOG": str(log), "AEGIS_NETMON_MODE": "preload",
           netpolicy.ENV_VAR: str(policy_file)}
    result = call(env, "netmon_policy")
    assert not result.is_error, text(result)
    data = result.structured_content
    assert data["active"] is True and data["default"] == "deny" and data["mode"] == "preload"
    assert data["summary"] == (
        "network policy: deny by default, 2 rules of yours, 1 implicit allow; enforced by the "
        "LD_PRELOAD connect hook, which is advisory: statically linked programs and raw "
        "system calls pass by it")
    assert [(r["rule"], r["action"], r["source"], r["implicit"]) for r in data["rules"]] == [
        ("*.pastebin.com", "deny", "--deny *.pastebin.com", False),
        ("api.github.com:443", "allow", "--allow api.github.com:443", False),
        ("127.0.0.1:9", "allow", "implicit: ANTHROPIC_BASE_URL", True)]
    assert data["rules"][0]["port"] is None and data["rules"][1]["port"] == 443
    assert data["denied"] == 2
    first, second = data["recent_denials"]
    assert first["host"] == "paste.pastebin.com" and first["label"] == "--deny *.pastebin.com"
    assert "denied by the rule --deny *.pastebin.com" in first["advice"]
    assert second["default"] is True and second["advice"].endswith("--allow api.example.com")
    # netmon_status lists them too
    status = call(env, "netmon_status").structured_content
    assert status["denied"] == 2 and status["top_denied"][0]["denials"] == 1
    # in netns mode: said to be the kernel's
    netns = call({**env, "AEGIS_NETMON_MODE": "netns"}, "netmon_policy").structured_content
    assert "enforced by the kernel (nftables)" in netns["summary"]


def test_netmon_policy_says_plainly_when_there_is_none(aegis_env: dict[str, str]) -> None:
    env = {k: v for k, v in aegis_env.items()
           if k not in (netpolicy.ENV_VAR, "AEGIS_NETMON_LOG")}
    result = call(env, "netmon_policy")
    assert not result.is_error, text(result)
    data = result.structured_content
    assert data["active"] is False and data["rules"] == [] and data["summary"] == NO_POLICY
    assert data["summary"].startswith("no network policy is active for this agent")
    broken = call({**env, netpolicy.ENV_VAR: "/nonexistent/netmon-1.policy"}, "netmon_policy")
    assert broken.is_error and "cannot read the network policy" in text(broken)


AGENT = """
import asyncio, json, os, sys
from mcp import Client, StdioServerParameters

log = os.environ["AEGIS_NETMON_LOG"]
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
for line in sys.argv[3:]:
    os.write(fd, (line + "\\n").encode())
os.close(fd)

async def ask():
    server = StdioServerParameters(command=sys.argv[2], args=["--mcp-server"],
                                   env=dict(os.environ))
    async with Client(server) as client:
        result = await client.call_tool("netmon_policy", {})
        return result.structured_content

open(sys.argv[1], "w").write(json.dumps(asyncio.run(ask())))
"""


def test_a_supervisors_agent_reads_its_policy_and_denials(
        aegis_env: dict[str, str], tmp_path: Path) -> None:
    """End to end: the supervisor compiles the policy and gives its agent the variables; the
    agent's aegis-mcp MCP server (started by the agent, as an agent does) reads them; after
    the session `aegis-mcp netmon` and `aegis-mcp netmon policy` still show it all."""
    (tmp_path / "agent.py").write_text(AGENT)
    events = [json.dumps(deny_event(**PASTE)), json.dumps(deny_event(**UNLISTED))]
    out = subprocess.run(
        [aegis_bin(), "--netmon=preload", "--allow", "api.github.com", "--deny",
         "*.pastebin.com", "--", sys.executable, str(tmp_path / "agent.py"),
         str(tmp_path / "seen.json"), aegis_bin(), *events],
        env=aegis_env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["active"] and seen["denied"] == 2
    assert {r["source"] for r in seen["rules"]} >= {"--allow api.github.com",
                                                    "--deny *.pastebin.com"}
    log = Path(seen["policy_file"]).with_suffix(".jsonl")
    netmon = subprocess.run([aegis_bin(), "netmon", str(log)], env=aegis_env,
                            capture_output=True, text=True, timeout=60)
    assert netmon.returncode == 0, netmon.stderr
    assert "2 denied by the network policy" in netmon.stdout
    assert "denied by --deny *.pastebin.com" in netmon.stdout
    assert "api.example.com (198.51.100.7:8443) tcp denied by the allow-list" in netmon.stdout
    shown = subprocess.run([aegis_bin(), "netmon", "policy", str(log)], env=aegis_env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "network policy: deny by default, 2 rules of yours" in shown.stdout
    assert "ask the user to allow it, e.g. --allow api.example.com" in shown.stdout.replace(
        "\n", " ")
    data = json.loads(subprocess.run([aegis_bin(), "netmon", "policy", "--json", str(log)],
                                     env=aegis_env, capture_output=True, text=True,
                                     timeout=60).stdout)
    assert data["policy_file"] == seen["policy_file"] and data["mode"] == "preload"
    assert [d["host"] for d in data["recent_denials"]] == ["paste.pastebin.com",
                                                           "api.example.com"]


def test_the_live_views_cells_highlight_denials(tmp_path: Path) -> None:
    from aegis_mcp.top import render, snapshot

    log = tmp_path / "netmon-11.jsonl"
    append(log, deny_event(**PASTE))
    net = snapshot.network(log, os.getuid())
    assert net["denied"] == 1 and net["denied_targets"] == ["paste.pastebin.com:443"]
    cells = render._network_cells(net)
    assert cells["denied"].plain == "1" and "red" in str(cells["denied"].style)
    quiet = render._network_cells({**net, "denied": 0, "denied_targets": []})
    assert quiet["denied"].plain == "0" and "red" not in str(quiet["denied"].style)
    assert [key for key, _ in render.SUPERVISOR_COLUMNS].count("denied") == 1


@pytest.mark.parametrize("args", [["policy", "--from-log", "/nonexistent/log.jsonl"],
                                  ["policy", "--from-log", "x", "123"],
                                  ["policy", "/nonexistent/log.jsonl"]])
def test_policy_cli_errors_are_one_line(args: list[str], aegis_env: dict[str, str]) -> None:
    out = subprocess.run([aegis_bin(), "netmon", *args], env=aegis_env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("aegis-mcp: ")
