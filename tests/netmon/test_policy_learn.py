"""`aegis-mcp netmon policy --from-log LOG`: a session's log, written as the hooks write it,
becomes an allow-list file that loads back as a policy allowing exactly what was used; and the
word `policy` never takes the place of a log file of that name."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from aegis_mcp.netmon import policy as netpolicy
from tests.support.host import aegis_bin


def ev(kind: str, **kw: Any) -> dict[str, Any]:
    base = {"ts": 1795567788.0, "event": kind, "source": "preload", "pid": 100, "ppid": 1,
            "exe": "node", "fd": 5, "family": "ipv4", "proto": "tcp", "addr": "192.0.2.10",
            "port": 443, "host": None, "sent": 0, "recv": 0, "duration": None, "result": "ok"}
    base.update(kw)
    return base


def write(log: Path, *events: dict[str, Any]) -> None:
    with open(log, "a") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")


# What a session did: (addr, port, host the process resolved or None) -> connections
USED = {
    ("192.0.2.10", 443, "api.github.com"): 3,
    ("192.0.2.11", 443, "codeload.github.com"): 1,
    ("192.0.2.12", 22, "github.com"): 2,
    ("192.0.2.20", 443, "registry.npmjs.org"): 5,
    ("198.51.100.5", 8443, None): 1,          # connected to by address
    ("2001:db8::5", 443, None): 1,
    ("127.0.0.1", 8080, "localhost"): 2,
}


def session(log: Path) -> None:
    """The session's log: a lookup per name, the connections (one refused), a denial, a
    unix socket, an accept and a name no rule can express."""
    fd = 10
    for (addr, port, host), count in USED.items():
        if host:
            write(log, ev("dns", host=host, answers=[addr]))
        for i in range(count):
            fd += 1
            result = "ECONNREFUSED" if addr == "198.51.100.5" else "EINPROGRESS" if i else "ok"
            family = "ipv6" if ":" in addr else "ipv4"
            write(log, ev("connect", fd=fd, addr=addr, port=port, family=family,
                          result=result),
                  ev("close", fd=fd, addr=addr, port=port, family=family, sent=10, recv=20))
    write(log,
          ev("deny", addr="203.0.113.9", port=443, host="paste.pastebin.com",
             rule="deny host *.pastebin.com 0", label="--deny *.pastebin.com", default=False,
             mode="preload"),
          ev("connect", fd=90, addr="/run/x.sock", port=None, family="unix", proto="unix"),
          ev("accept", fd=91, addr="127.0.0.1", port=5555),
          ev("dns", pid=101, host="bad name\n]", answers=["192.0.2.99"]),
          ev("connect", pid=101, fd=92, addr="192.0.2.99", port=443))


def learn(log: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([aegis_bin(), "netmon", "policy", "--from-log", str(log), *extra],
                          env=env, capture_output=True, text=True, timeout=60)


def test_the_learned_file_allows_exactly_what_was_used(tmp_path: Path,
                                                      aegis_env: dict[str, str]) -> None:
    log = tmp_path / "netmon-5.jsonl"
    session(log)
    out = learn(log, aegis_env)
    assert out.returncode == 0, out.stderr
    (tmp_path / "agent-policy.toml").write_text(out.stdout)
    data = tomllib.loads(out.stdout)
    assert set(data) == {"allow"}  # nothing else: no deny, no wildcard
    assert data["allow"] == [  # by domain, most used first; addresses last
        "api.github.com:443", "github.com:22", "codeload.github.com:443",
        "registry.npmjs.org:443", "localhost:8080", "192.0.2.99:443", "198.51.100.5:8443",
        "[2001:db8::5]:443"]
    lines = out.stdout.splitlines()
    assert any(re.fullmatch(r'  "api.github.com:443", +# 3 connections', ln) for ln in lines)
    assert any('"198.51.100.5:8443",' in ln and "# 1 connection, 1 failed" in ln for ln in lines)
    assert any("3 hosts of github.com" in ln and '"*.github.com"' in ln for ln in lines)
    assert '#   "paste.pastebin.com:443"  1 denial, by --deny *.pastebin.com' in lines
    assert "bad name" not in out.stdout  # a name no rule can express: its address instead

    # It loads back as a policy (with --policy, as the supervisor reads it)...
    policy = netpolicy.effective(netpolicy.from_files([str(tmp_path / "agent-policy.toml")]),
                                 [])
    assert policy is not None and policy.default == "deny"
    # ...that allows each connection that was made, as it was made
    for (addr, port, host) in USED:
        assert policy.decide(addr, port, host).allowed, (addr, port, host)
    assert policy.decide("192.0.2.99", 443).allowed
    # and nothing else: another port, another subdomain, the denied host, a new address
    for target in [("192.0.2.10", 80, "api.github.com"), ("192.0.2.13", 443, "gist.github.com"),
                   ("203.0.113.9", 443, "paste.pastebin.com"), ("192.0.2.10", 443, None),
                   ("198.51.100.6", 8443, None), ("127.0.0.1", 5555, None)]:
        assert not policy.decide(*target).allowed, target


def test_learning_as_json_and_from_a_pid(tmp_path: Path, aegis_env: dict[str, str]) -> None:
    runtime = Path(aegis_env["AEGIS_RUNTIME_DIR"])
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = runtime / "netmon-424242.jsonl"
    session(log)
    out = subprocess.run([aegis_bin(), "netmon", "policy", "--from-log", "424242", "--json"],
                         env=aegis_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["log"] == str(log)
    assert {"rule": "api.github.com:443", "group": "github.com", "connections": 3,
            "failed": 0} in data["allow"]
    assert data["denied"] == [{"target": "paste.pastebin.com:443", "denials": 1,
                               "by": ["--deny *.pastebin.com"]}]


def test_policy_is_a_word_and_a_log_named_policy_is_still_a_log(
        tmp_path: Path, aegis_env: dict[str, str]) -> None:
    """`aegis-mcp netmon policy` is the policy view; a log file named `policy` is read as
    `./policy` (or given to --from-log); `aegis-mcp netmon LOGFILE` is as it was."""
    log = tmp_path / "policy"
    session(log)
    env = {k: v for k, v in aegis_env.items() if k != "AEGIS_NETMON_LOG"}
    as_file = subprocess.run([aegis_bin(), "netmon", "--json", "./policy"], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert as_file.returncode == 0, as_file.stderr
    assert json.loads(as_file.stdout)["log_path"] == "policy"
    as_path = subprocess.run([aegis_bin(), "netmon", "--json", str(log)], env=env,
                             capture_output=True, text=True, timeout=60)
    # 17 connects: one refused, and a unix socket among the 16 counted
    assert json.loads(as_path.stdout)["connections"] == 16
    learned = subprocess.run([aegis_bin(), "netmon", "policy", "--from-log", "policy"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert learned.returncode == 0 and '"api.github.com:443",' in learned.stdout
    word = subprocess.run([aegis_bin(), "netmon", "policy", "--json", "./policy"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert word.returncode == 0, word.stderr
    shown = json.loads(word.stdout)  # no policy file beside that log: none was in force
    assert shown["active"] is False and shown["denied"] == 1
    helps = subprocess.run([aegis_bin(), "netmon", "policy", "--help"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert helps.returncode == 0 and "usage: aegis-mcp netmon policy" in helps.stdout
    assert "--from-log" in helps.stdout


@pytest.mark.parametrize("name", ["nothing.jsonl"])
def test_an_empty_session_learns_an_empty_allow_list(tmp_path: Path, name: str,
                                                     aegis_env: dict[str, str]) -> None:
    log = tmp_path / name
    log.write_text("")
    out = learn(log, aegis_env)
    assert out.returncode == 0, out.stderr
    assert tomllib.loads(out.stdout) == {"allow": []}
    assert os.path.getsize(log) == 0
