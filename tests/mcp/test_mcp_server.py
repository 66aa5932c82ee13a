"""`aegis-mcp --mcp-server` over real stdio with the SDK's client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pexpect
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from tests.support.mcp_helpers import call, text, with_client
from tests.support.supervisor_helpers import FakeAgentWorld

SPEC_TOOLS = {
    "restart_claude", "server_status", "agent_spawn", "agent_list", "agent_status",
    "agent_await", "agent_stop", "agent_pool_stats", "agent_file_locks", "netmon_status",
    "netmon_log", "netmon_namespace_list", "netmon_namespace_cleanup",
}
NEW_TOOLS = {"restart_agent", "netmon_policy"}


def test_all_spec_tools_plus_restart_agent_with_descriptions(aegis_env: dict[str, str]) -> None:
    async def body(client: Client) -> Any:
        return (await client.list_tools()).tools

    tools = with_client(aegis_env, body)
    names = {t.name for t in tools}
    assert names == SPEC_TOOLS | NEW_TOOLS
    for tool in tools:
        assert tool.description and len(tool.description) > 30, tool.name
    restart = next(t for t in tools if t.name == "restart_claude")
    props = restart.input_schema["properties"]
    assert set(props) == {"reason", "prompt"} and not restart.input_schema.get("required")


def test_every_tool_says_what_it_does_to_the_world_in_flowing_text(
        aegis_env: dict[str, str]) -> None:
    async def body(client: Client) -> Any:
        return (await client.list_tools()).tools

    tools = with_client(aegis_env, body)
    for tool in tools:
        assert "\n" not in tool.description and "  " not in tool.description, tool.name
        hints = tool.annotations
        assert hints is not None, tool.name
        assert hints.read_only_hint or hints.destructive_hint is not None, tool.name
        assert hints.open_world_hint is not None, tool.name
    by_name = {t.name: t.annotations for t in tools}
    assert by_name["server_status"].read_only_hint is True
    assert by_name["agent_list"].read_only_hint is True
    assert by_name["agent_stop"].destructive_hint is True
    assert by_name["restart_claude"].destructive_hint is True
    assert by_name["agent_spawn"].open_world_hint is True
    assert by_name["netmon_namespace_cleanup"].destructive_hint is True
    assert by_name["netmon_policy"].read_only_hint is True


def test_restart_without_a_supervisor_says_how_to_run(aegis_env: dict[str, str]) -> None:
    result = call(aegis_env, "restart_claude", {"reason": "x"})
    assert result.is_error
    assert "not running under an aegis-mcp supervisor" in text(result)
    assert "aegis-mcp claude" in text(result)
    status = call(aegis_env, "server_status")
    assert not status.is_error
    assert status.structured_content["supervised"] is False


def test_restart_and_status_reach_the_supervisor(world: FakeAgentWorld) -> None:
    child = world.spawn("fake", "first")
    child.expect("READY")
    first = world.starts()[0]
    env = {**world.env, "AEGIS_CONTROL": first["env"]["AEGIS_CONTROL"]}

    status = call(env, "server_status")
    sup = status.structured_content["supervisor"]
    assert sup["agent"] == "fake" and sup["agent_pid"] == first["pid"]
    assert sup["supervisor_pid"] == child.pid and sup["restart_count"] == 0
    assert sup["injection"] == "--mcp-config overlay"

    result = call(env, "restart_agent", {"reason": "MCP server updated", "prompt": "resume"})
    assert not result.is_error, text(result)
    assert result.structured_content["scheduled"] is True
    assert "--continue" in result.structured_content["message"]
    child.expect_exact("restarting fake (reason: MCP server updated)")
    child.expect("READY")
    second = world.wait_starts(2)[1]
    assert second["resume"] and second["prompt"] == "resume"
    status = call(env, "server_status").structured_content["supervisor"]
    assert status["restart_count"] == 1 and status["last_restart_reason"] == "MCP server updated"
    child.sendline("exit 0")
    child.expect(pexpect.EOF)


def test_bad_arguments_name_the_argument(aegis_env: dict[str, str]) -> None:
    result = call(aegis_env, "restart_claude", {"reason": "x" * 501})
    assert result.is_error and "reason" in text(result)
    result = call(aegis_env, "restart_claude", {"prompt": 12})
    assert result.is_error and "prompt" in text(result)


def test_an_argument_error_is_one_line_and_an_unknown_argument_is_refused(
        aegis_env: dict[str, str]) -> None:
    cases = [
        ("restart_claude", {"reason": "x" * 501},
         "restart_claude: argument reason should have at most 500 characters"),
        ("agent_spawn", {}, "agent_spawn: argument description is required"),
        ("agent_spawn", {"description": "t", "isolation": "nope"},
         "agent_spawn: argument isolation should be 'lock' or 'worktree'"),
        ("server_status", {"bogus": 1},
         "server_status: unknown argument 'bogus' (it takes no arguments)"),
        ("restart_agent", {"reasn": "typo"},
         "restart_agent: unknown argument 'reasn' (it takes prompt, reason)"),
    ]
    for tool, args, expected in cases:
        result = call(aegis_env, tool, args)
        assert result.is_error and text(result) == expected, (tool, text(result))
        assert "pydantic" not in text(result) and "\n" not in text(result)


hostile = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True) | st.text(max_size=50)
    | st.sampled_from(["../../etc/passwd", "/nonexistent", "\x00", "-1", "' OR 1=1 --"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8),
                                                                      children, max_size=3),
    max_leaves=6,
)
KNOWN_ARGS = ["reason", "prompt", "description", "agent_type", "working_directory",
              "max_iterations", "agent_id", "timeout_secs", "count", "isolation"]


def test_fuzz_every_tool_never_crashes_the_server(aegis_env: dict[str, str],
                                                  tmp_path: Path) -> None:
    # Spawns go to an agent that does nothing; restart has no supervisor; awaits are bounded.
    Path(aegis_env["AEGIS_CONFIG"]).write_text('[agents.claude]\ncommand = ["true"]\n')
    calls: list[tuple[str, dict[str, Any]]] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(sorted(SPEC_TOOLS | NEW_TOOLS)),
           st.dictionaries(st.sampled_from(KNOWN_ARGS) | st.text(max_size=10), hostile,
                           max_size=4))
    def collect(tool: str, args: dict[str, Any]) -> None:
        if isinstance(args.get("timeout_secs"), int | float):
            args["timeout_secs"] = min(args["timeout_secs"], 1)
        calls.append((tool, args))

    collect()

    async def body(client: Client) -> int:
        errors = 0
        for tool, args in calls:
            result = await client.call_tool(tool, args)
            errors += bool(result.is_error)
            if result.is_error:
                assert text(result), (tool, args)
                assert "Traceback" not in text(result)
        names = {t.name for t in (await client.list_tools()).tools}
        assert "server_status" in names  # still answering
        return errors

    errors = with_client(aegis_env, body, timeout=300)
    assert errors > 0  # hostile input was refused, not ignored
