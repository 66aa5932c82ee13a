"""The pool's MCP tools over real stdio (`aegis-mcp --mcp-server`, the SDK's client), with the
fake headless agent standing in for claude."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from tests.pool.test_pool_cli import bad_directories
from tests.support.host import aegis_bin
from tests.support.mcp_helpers import text, with_client
from tests.support.poolkit import cleanup_pool, pid_alive, pool_config

POOL_TOOLS = {"agent_spawn", "agent_list", "agent_status", "agent_await", "agent_stop",
              "agent_pool_stats", "agent_file_locks"}


@pytest.fixture
def env(aegis_env: dict[str, str]) -> Iterator[dict[str, str]]:
    Path(aegis_env["AEGIS_CONFIG"]).write_text(pool_config(max_agents=2))
    with cleanup_pool():
        yield aegis_env


async def ok(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, text(result)
    return result.structured_content


async def err(client: Client, tool: str, **args: Any) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error, result
    return text(result)


def test_the_pool_tools_are_listed_with_typed_bounded_parameters(
        env: dict[str, str]) -> None:
    async def body(client: Client) -> Any:
        return (await client.list_tools()).tools

    tools = {t.name: t for t in with_client(env, body) if t.name in POOL_TOOLS}
    assert set(tools) == POOL_TOOLS
    spawn = tools["agent_spawn"].input_schema
    assert spawn["required"] == ["description"]
    assert set(spawn["properties"]) == {"description", "agent_type", "working_directory",
                                        "max_iterations", "isolation", "timeout_secs",
                                        "network_allow", "network_deny"}
    assert "worktree" in str(spawn["properties"]["isolation"])
    # every built-in profile that runs headless is named to the model that picks one
    from aegis_mcp.profiles.profile import BUILTIN_PROFILES

    named = spawn["properties"]["agent_type"]["description"]
    assert all(f" {name}," in named for name, p in BUILTIN_PROFILES.items() if p.headless_args)
    assert "minimum" in str(spawn["properties"]["max_iterations"])
    assert "minimum" in str(tools["agent_await"].input_schema["properties"]["timeout_secs"])
    for tool in tools.values():
        assert tool.description and len(tool.description) > 40, tool.name
        assert tool.output_schema, f"{tool.name} has no structured output"


def test_every_tool_end_to_end(env: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)

    async def body(client: Client) -> None:
        hang = await ok(client, "agent_spawn", description="hang",
                        working_directory=str(work))
        agent_id = hang["agent_id"]
        assert hang["state"] in ("starting", "running")
        waiting = await ok(client, "agent_spawn", description="turns=2 result=fine",
                           working_directory=str(work / "sub"), max_iterations=5)
        assert waiting["state"] == "queued" and waiting["waiting_for"] == [agent_id]

        status = await ok(client, "agent_status", agent_id=agent_id[:6])
        assert status["agent_id"] == agent_id and status["description"] == "hang"
        listed = await ok(client, "agent_list")
        assert [a["agent_id"] for a in listed["agents"]] == [agent_id, waiting["agent_id"]]
        stats = await ok(client, "agent_pool_stats")
        assert (stats["max_agents"], stats["active"], stats["queued"]) == (2, 2, 1)
        locks = (await ok(client, "agent_file_locks"))["locks"]
        assert locks[0]["path"] == str(work) and locks[0]["agent_id"] == agent_id
        assert locks[0]["waiting"] == [waiting["agent_id"]]

        timed = await ok(client, "agent_await", agent_id=agent_id, timeout_secs=0.2)
        assert timed["timed_out"] is True and timed["state"] == "running"
        assert pid_alive(timed["pid"])
        assert 1024 <= timed["port"] < 65536  # its AEGIS_AGENT_PORT reaches the agent too
        # Every field of the pool's status reaches the MCP client, none dropped by the model.
        cli = subprocess.run([aegis_bin(), "agents", "status", agent_id, "--json"], env=env,
                             capture_output=True, text=True, timeout=30, check=True)
        assert set(json.loads(cli.stdout)) <= set(timed)
        stopped = await ok(client, "agent_stop", agent_id=agent_id)
        assert stopped["state"] == "stopped" and stopped["stopped_now"] is True

        done = await ok(client, "agent_await", agent_id=waiting["agent_id"], timeout_secs=30)
        assert done["state"] == "completed" and done["timed_out"] is False
        assert (done["result"], done["num_turns"]) == ("fine", 2)
        assert done["session_id"] and done["total_cost_usd"] == pytest.approx(0.002)
        stats = await ok(client, "agent_pool_stats")
        assert (stats["completed"], stats["stopped"], stats["active"]) == (1, 1, 0)
        assert (await ok(client, "agent_file_locks"))["locks"] == []

    with_client(env, body)


def test_bad_input_comes_back_as_a_tool_error(env: dict[str, str], tmp_path: Path) -> None:
    async def body(client: Client) -> None:
        assert "unknown agent id 'nope'" in await err(client, "agent_status", agent_id="nope")
        assert "unknown agent id" in await err(client, "agent_stop", agent_id="nope")
        assert "unknown agent id" in await err(client, "agent_await", agent_id="nope")
        assert "timeout_secs" in await err(client, "agent_await", agent_id="nope",
                                           timeout_secs=-1)
        assert "no such file or directory" in await err(
            client, "agent_spawn", description="x", working_directory=str(tmp_path / "missing"))
        for path, words in bad_directories(tmp_path):
            message = await err(client, "agent_spawn", description="x", working_directory=path)
            assert words in message and len(message) < 200, message
        assert "NUL character" in await err(client, "agent_spawn", description="x",
                                            working_directory=f"{tmp_path}/a\0b")
        assert (await ok(client, "agent_list"))["agents"] == []  # nothing half-created
        assert "unknown agent 'nosuch'" in await err(client, "agent_spawn", description="x",
                                                     agent_type="nosuch",
                                                     working_directory=str(tmp_path))
        assert "max_iterations" in await err(client, "agent_spawn", description="x",
                                             max_iterations=0)
        assert "needs a git repository" in await err(
            client, "agent_spawn", description="x", working_directory=str(tmp_path),
            isolation="worktree")

    with_client(env, body)


def test_agents_outlive_the_mcp_server_and_default_to_its_directory(
        env: dict[str, str], tmp_path: Path) -> None:
    params = StdioServerParameters(command=aegis_bin(), args=["--mcp-server"], env=env,
                                   cwd=str(tmp_path))

    async def first() -> dict[str, Any]:
        async with Client(params) as client:
            return await ok(client, "agent_spawn", description="sleep=1 result=survived")

    async def second(agent_id: str) -> dict[str, Any]:
        async with Client(params) as client:
            return await ok(client, "agent_await", agent_id=agent_id, timeout_secs=30)

    spawned = asyncio.run(asyncio.wait_for(first(), 60))  # this server is gone afterwards
    assert spawned["working_directory"] == str(tmp_path.resolve())
    done = asyncio.run(asyncio.wait_for(second(spawned["agent_id"]), 60))
    assert done["state"] == "completed" and done["result"] == "survived"


def test_kill9_of_the_mcp_server_in_the_middle_of_a_spawn(env: dict[str, str],
                                                          tmp_path: Path) -> None:
    crashing = {**env, "AEGIS_TEST_CRASHPOINT": "promote-after-claim"}

    async def spawn_and_die() -> None:
        async with Client(StdioServerParameters(command=aegis_bin(), args=["--mcp-server"],
                                                env=crashing)) as client:
            await client.call_tool("agent_spawn", {"description": "result=recovered",
                                                   "working_directory": str(tmp_path)})

    with pytest.raises(BaseException):  # noqa: B017 - the server died under the call
        asyncio.run(asyncio.wait_for(spawn_and_die(), 30))
    # The server died between claiming the agent and starting its runner.
    from aegis_mcp.pool.pool import Pool

    pool = Pool()
    assert [tuple(r) for r in pool.conn.execute("SELECT state, runner_pid FROM agents")] == [
        ("starting", None)]
    pool.close()

    async def recover(client: Client) -> dict[str, Any]:
        (agent,) = (await ok(client, "agent_list"))["agents"]
        return await ok(client, "agent_await", agent_id=agent["agent_id"], timeout_secs=30)

    done = with_client(env, recover)
    assert done["state"] == "completed" and done["result"] == "recovered"
