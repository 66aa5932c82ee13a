"""One real Claude Code CLI background agent, offline against a local stand-in for the model
API, through the MCP tools over stdio: its result text, turns and session id reach
agent_await."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.support.fake_anthropic import FakeAnthropic
from tests.support.host import real_cli
from tests.support.mcp_helpers import text, with_client
from tests.support.poolkit import cleanup_pool

CLAUDE, pytestmark = real_cli("AEGIS_TEST_CLAUDE", "the npm Claude Code CLI")


@pytest.fixture
def api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(default_text="nothing more to say") as server:
        yield server


def test_a_real_claude_background_agent_reports_its_result(
        aegis_env: dict[str, str], api: FakeAnthropic, tmp_path: Path) -> None:
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "notes.txt").write_text("the secret word is hello\n")
    Path(aegis_env["AEGIS_CONFIG"]).write_text(f'[agents.claude]\ncommand = ["{CLAUDE}"]\n')
    # CLAUDECODE=1 as inside a claude session: the pool must not pass it on (a nested claude
    # refuses to start with it).
    env = {**aegis_env, **api.claude_env(home=home), "CLAUDECODE": "1"}
    api.queue_tool_use("Read", {"file_path": str(work / "notes.txt")})
    api.queue_text("The notes say: hello")

    async def body(client: Client) -> dict[str, Any]:
        result = await client.call_tool("agent_spawn", {
            "description": "What do the notes say?", "working_directory": str(work),
            "max_iterations": 5})
        assert not result.is_error, text(result)
        agent_id = result.structured_content["agent_id"]
        done = await client.call_tool("agent_await", {"agent_id": agent_id,
                                                      "timeout_secs": 90})
        assert not done.is_error, text(done)
        return done.structured_content

    with cleanup_pool():
        done = with_client(env, body, timeout=120)
    assert done["state"] == "completed", done
    assert done["result"] == "The notes say: hello"
    assert done["num_turns"] == 2 and done["iterations"] == 2
    assert done["exit_code"] == 0 and done["total_cost_usd"] is not None
    log = Path(done["log_path"]).read_text()
    init = json.loads(next(line for line in log.splitlines() if '"subtype":"init"' in line))
    assert done["session_id"] == init["session_id"]
    # The Read tool ran for real: its output went back to the model in the second request.
    requests = api.message_requests()
    assert len(requests) >= 2
    assert "the secret word is hello" in json.dumps(requests[-1].body)


def test_a_task_that_looks_like_options_is_the_real_claudes_prompt(
        aegis_env: dict[str, str], api: FakeAnthropic, tmp_path: Path) -> None:
    """Before, `-p --help ...` made claude print its help (exit 0, no model call) and `-v` its
    version: the task must reach the model as the user's prompt, whatever it starts with."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    Path(aegis_env["AEGIS_CONFIG"]).write_text(f'[agents.claude]\ncommand = ["{CLAUDE}"]\n')
    env = {**aegis_env, **api.claude_env(home=home)}
    task = "--help -v --model x --max-turns 1"
    api.queue_text("a prompt, not options")

    async def body(client: Client) -> dict[str, Any]:
        result = await client.call_tool("agent_spawn", {
            "description": task, "working_directory": str(work), "max_iterations": 3})
        assert not result.is_error, text(result)
        done = await client.call_tool("agent_await", {
            "agent_id": result.structured_content["agent_id"], "timeout_secs": 90})
        assert not done.is_error, text(done)
        return done.structured_content

    with cleanup_pool():
        done = with_client(env, body, timeout=120)
    assert done["state"] == "completed" and done["exit_code"] == 0, done
    assert done["result"] == "a prompt, not options"
    first = api.message_requests()[0].body
    prompts = [block.get("text", "") for m in first["messages"] if m["role"] == "user"
               for block in (m["content"] if isinstance(m["content"], list)
                             else [{"text": m["content"]}])]
    assert task in [p.strip() for p in prompts], prompts
    assert first["model"] != "x"
