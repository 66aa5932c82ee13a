"""What the pool's runner reads from GitHub Copilot CLI's `--output-format json` events (1.0.102,
captured from a real run against the local Chat Completions stand-in, trimmed to the keys
read): the answer, the session, the model turns, and a failed run's error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.pool.test_runner_events import read

SESSION = "7407e917-07b1-4b42-ae4b-36c598c66579"
RESULT = {"type": "result", "sessionId": SESSION, "exitCode": 0,
          "usage": {"premiumRequests": 0, "totalApiDurationMs": 74}}
# a tool call, then the answer: two model turns
RUN: list[dict[str, Any]] = [
    {"type": "session.mcp_servers_loaded", "data": {"servers": [
        {"name": "aegis-mcp", "status": "connected"}]}},
    {"type": "user.message", "data": {"content": "--help -v --model x: what"}},
    {"type": "assistant.turn_start", "data": {"turnId": "0"}},
    {"type": "assistant.message", "data": {"content": "", "toolRequests": [
        {"toolCallId": "call_1", "name": "slow-ping", "arguments": {"text": "a"}}]}},
    {"type": "tool.execution_complete", "data": {"toolCallId": "call_1", "success": True}},
    {"type": "assistant.turn_end", "data": {"turnId": "0"}},
    {"type": "assistant.turn_start", "data": {"turnId": "1"}},
    {"type": "assistant.message_delta", "data": {"deltaContent": "done after tool"}},
    {"type": "assistant.message", "data": {"content": "done after tool", "toolRequests": []}},
    {"type": "assistant.turn_end", "data": {"turnId": "1"}},
    RESULT,
]


def test_copilot_answer_session_and_turns(tmp_path: Path) -> None:
    got = read(tmp_path, RUN)
    assert got["result"] == "done after tool" and got["session_id"] == SESSION
    assert got["iterations"] == 2 and got["num_turns"] == 2 and not got["is_error"]
    assert got["last_event"].startswith("result")
    assert "assistant.message: [tool slow-ping]" in got["last_output"]


def test_a_failed_copilot_run_says_why(tmp_path: Path) -> None:
    # the model API unreachable (measured: its port closed)
    message = "Could not connect to local model provider at http://127.0.0.1:9/v1."
    got = read(tmp_path, [
        {"type": "user.message", "data": {"content": "hi"}},
        {"type": "assistant.turn_end", "data": {"turnId": "0"}},
        {"type": "session.error", "data": {"errorType": "query", "message": message}},
        {**RESULT, "exitCode": 1}])
    assert got["is_error"] and got["result"] == message and got["session_id"] == SESSION
