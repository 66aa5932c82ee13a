"""A background agent's network: the pool gives each agent the hooks library and a netmon log
of its own, and its status (the CLI's, the MCP tool's, the live view's) shows what it did."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_mcp.pool.pool import Pool
from tests.support.host import aegis_bin
from tests.support.poolkit import cleanup_pool, pool_config
from tests.support.snippets.harness import RawHTTPServer


@pytest.fixture
def server() -> Iterator[RawHTTPServer]:
    srv = RawHTTPServer()
    yield srv
    srv.close()


@pytest.fixture
def pool(aegis_env: dict[str, str]) -> Iterator[Pool]:
    Path(aegis_env["AEGIS_CONFIG"]).write_text(pool_config())
    with cleanup_pool():
        p = Pool()
        yield p
        p.close()


def test_a_background_agent_has_its_network_in_its_status(
        pool: Pool, server: RawHTTPServer, tmp_path: Path, aegis_env: dict[str, str]) -> None:
    spawned = pool.spawn(f"turns=1 fetch={server.url('/')}", "claude", str(tmp_path))
    first = spawned["network"]  # queued: none yet; starting: monitored, nothing seen yet
    assert first is None or (first["connections"] == 0 and first["error"] is None)
    done = pool.await_agent(spawned["agent_id"], 60)
    assert done["state"] == "completed", done
    net = done["network"]
    assert net is not None and net["error"] is None
    assert net["connections"] == 1 and net["failed"] == 0 and net["top_hosts"] == ["127.0.0.1"]
    assert net["recv"] >= len(server.response) and net["log_path"].endswith(".netmon.jsonl")
    assert [c.peer for c in server.connections] == ["127.0.0.1"]

    # the CLI says it in words; `aegis-mcp netmon LOG` reads the agent's log
    out = subprocess.run([aegis_bin(), "agents", "status", spawned["agent_id"]],
                         env=aegis_env, capture_output=True, text=True, timeout=60)
    line = next(x for x in out.stdout.splitlines() if x.strip().startswith("network"))
    assert "1 connection, sent" in line and "top hosts: 127.0.0.1" in line
    out = subprocess.run([aegis_bin(), "netmon", "--json", net["log_path"]], env=aegis_env,
                         capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout)["connections"] == 1

    # prune forgets the log with the agent
    pool.prune(0)
    assert not Path(net["log_path"]).exists()


def test_netmon_off_and_a_static_agent_are_said_in_the_notes(
        aegis_env: dict[str, str], tmp_path: Path) -> None:
    static = tmp_path / "static-agent"
    source = 'int puts(const char *);\nint main(void) { puts("{}"); return 0; }\n'
    subprocess.run(["gcc", "-static", "-O1", "-o", str(static), "-x", "c", "-"],
                   input=source, text=True, check=True, timeout=120)
    config = pool_config() + f'\n[agents.staticagent]\ncommand = ["{static}"]\n' \
        'headless_args = ["--", "{prompt}"]\n'
    Path(aegis_env["AEGIS_CONFIG"]).write_text(config)
    with cleanup_pool():
        pool = Pool()
        status = pool.spawn("anything", "staticagent", str(tmp_path))
        assert any("statically linked binary" in n for n in status["notes"]), status["notes"]
        assert pool.await_agent(status["agent_id"], 60)["network"] is None
        pool.close()

    Path(aegis_env["AEGIS_CONFIG"]).write_text(
        pool_config().replace("[pool]\n", "[pool]\nnetmon = false\n"))
    with cleanup_pool():
        pool = Pool()
        status = pool.spawn(f"env={tmp_path / 'env.json'}", "claude", str(tmp_path))
        done = pool.await_agent(status["agent_id"], 60)
        assert done["state"] == "completed" and done["network"] is None
        env = json.loads((tmp_path / "env.json").read_text())
        assert "AEGIS_NETMON_LOG" not in env and "aegis_hooks" not in env.get("LD_PRELOAD", "")
        pool.close()


def test_a_bad_netmon_setting_is_one_line(aegis_env: dict[str, str], tmp_path: Path) -> None:
    Path(aegis_env["AEGIS_CONFIG"]).write_text(
        pool_config().replace("[pool]\n", "[pool]\nnetmon = \"sometimes\"\n"))
    out = subprocess.run([aegis_bin(), "agents", "spawn", "-C", str(tmp_path), "x"],
                         env=aegis_env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and out.stderr.count("\n") == 1
    assert "netmon = 'sometimes': expected true or false" in out.stderr



@pytest.fixture
def two_servers() -> Iterator[tuple[RawHTTPServer, RawHTTPServer]]:
    pair = (RawHTTPServer(), RawHTTPServer())
    yield pair
    for srv in pair:
        srv.close()


def test_a_background_agent_with_its_own_policy(
        aegis_env: dict[str, str], tmp_path: Path,
        two_servers: tuple[RawHTTPServer, RawHTTPServer]) -> None:
    allowed, other = two_servers
    Path(aegis_env["AEGIS_CONFIG"]).write_text(pool_config())
    task = f"turns=1 fetch={allowed.url('/')} fetch={other.url('/')}"
    with cleanup_pool():
        out = subprocess.run([aegis_bin(), "agents", "spawn", "--json", "-C", str(tmp_path),
                              "--allow", f"127.0.0.1:{allowed.port}", "--", task],
                             env=aegis_env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        spawned = json.loads(out.stdout)
        assert any(n.startswith("network policy: deny by default") for n in spawned["notes"])
        pool = Pool()
        done = pool.await_agent(spawned["agent_id"], 60)
        pool.close()
    assert done["state"] == "completed", done
    net = done["network"]
    assert net["connections"] == 1 and net["denied"] == 1
    assert net["denied_targets"] == [f"127.0.0.1:{other.port}"]
    assert len(allowed.connections) == 1 and other.connections == []


def test_a_background_agent_keeps_its_callers_policy(
        aegis_env: dict[str, str], tmp_path: Path,
        two_servers: tuple[RawHTTPServer, RawHTTPServer]) -> None:
    """An agent under a policy spawning a helper must not get around its policy: the helper
    keeps it (and may only narrow it)."""
    from aegis_mcp.errors import AegisError
    from aegis_mcp.netmon import policy as netpolicy

    allowed, other = two_servers
    Path(aegis_env["AEGIS_CONFIG"]).write_text(pool_config())
    caller = netpolicy.effective(netpolicy.from_flags([f"127.0.0.1:{allowed.port}"], []), [])
    assert caller is not None
    compiled = tmp_path / "caller.policy"
    compiled.write_text(caller.compile())
    env = {**aegis_env, "AEGIS_NETMON_POLICY": str(compiled)}
    with cleanup_pool():
        pool = Pool()
        with pytest.raises(AegisError, match="network_allow: this agent is spawned from under"):
            pool.spawn("x", "claude", str(tmp_path), env=env, network_allow=["example.com"])
        status = pool.spawn(f"turns=1 fetch={allowed.url('/')} fetch={other.url('/')}",
                            "claude", str(tmp_path), env=env,
                            network_deny=[f"127.0.0.1:{allowed.port}"])
        done = pool.await_agent(status["agent_id"], 60)
        pool.close()
    # its own deny narrowed the caller's allow; the caller's default denied the other
    assert done["state"] == "completed" and done["network"]["denied"] == 2
    assert allowed.connections == [] and other.connections == []
