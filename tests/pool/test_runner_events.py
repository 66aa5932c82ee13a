"""What the pool's runner reads from each agent CLI's event stream: the answer, the session,
the turns and failures, in the shapes the real CLIs print (claude and cursor stream-json,
`codex exec --json`, `gemini --output-format stream-json`, `opencode run --format json`), as
captured from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aegis_mcp.pool.runner import Runner
from aegis_mcp.pool.stream import last_chat_reply
from tests.support.paths import SNIPPETS


class _Pool:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def log_path(self, agent_id: str) -> Path:
        return self.tmp / f"{agent_id}.log"


def read(tmp_path: Path, events: list[dict[str, Any]]) -> dict[str, Any]:
    row = {"id": "a1", "max_iterations": None, "enforce_iterations": 0}
    runner = Runner(_Pool(tmp_path), row)  # type: ignore[arg-type]
    runner.feed(b"a line of plain text first\n")
    runner.feed("".join(json.dumps(e) + "\n" for e in events).encode())
    return {**runner._progress(), "is_error": bool(runner.result.get("is_error"))}


CODEX = [{"type": "thread.started", "thread_id": "01a2-thread"}, {"type": "turn.started"},
         {"type": "item.completed", "item": {"id": "item_0", "type": "reasoning", "text": "hm"}},
         {"type": "item.completed", "item": {"id": "item_1", "type": "agent_message",
                                             "text": "the codex answer"}},
         {"type": "turn.completed", "usage": {"input_tokens": 10, "output_tokens": 5}}]
GEMINI = [{"type": "init", "session_id": "gem-session", "model": "gemini-2.5-flash"},
          {"type": "message", "role": "user", "content": "what is up?"},
          {"type": "message", "role": "assistant", "content": "the gemini ", "delta": True},
          {"type": "message", "role": "assistant", "content": "answer", "delta": True},
          {"type": "tool_use", "tool_name": "read_file", "tool_id": "t1", "parameters": {}},
          {"type": "tool_result", "tool_id": "t1", "status": "success"},
          {"type": "message", "role": "assistant", "content": "final ", "delta": True},
          {"type": "message", "role": "assistant", "content": "words", "delta": True},
          {"type": "result", "status": "success", "stats": {"total_tokens": 15}}]


def test_codex_answer_session_and_turns(tmp_path: Path) -> None:
    got = read(tmp_path, CODEX)
    assert got["result"] == "the codex answer" and got["session_id"] == "01a2-thread"
    assert got["iterations"] == 1 and not got["is_error"]


def test_gemini_answer_is_the_last_streamed_message(tmp_path: Path) -> None:
    got = read(tmp_path, GEMINI)
    assert got["result"] == "final words" and got["session_id"] == "gem-session"
    assert got["iterations"] == 2 and not got["is_error"]
    assert got["last_event"].startswith("result (success)")


@pytest.mark.parametrize("failure", [
    {"type": "turn.failed", "error": {"message": "stream disconnected"}},
    {"type": "error", "message": "unexpected status 401"},
])
def test_codex_failures_are_errors_with_their_message(tmp_path: Path,
                                                      failure: dict[str, Any]) -> None:
    got = read(tmp_path, [*CODEX[:2], failure])
    assert got["is_error"] and got["result"] in ("stream disconnected", "unexpected status 401")


def test_gemini_failed_run_is_an_error(tmp_path: Path) -> None:
    got = read(tmp_path, [*GEMINI[:3], {"type": "result", "status": "error",
                                        "error": {"message": "quota"}}])
    assert got["is_error"] and got["result"] == "the gemini "


def test_claude_result_event_wins(tmp_path: Path) -> None:
    got = read(tmp_path, [
        {"type": "system", "subtype": "init", "session_id": "c-1"},
        {"type": "assistant", "message": {"id": "m1", "content": [{"type": "text", "text": "x"}]}},
        {"type": "result", "subtype": "success", "result": "the claude answer", "num_turns": 1,
         "session_id": "c-1", "total_cost_usd": 0.01}])
    assert got["result"] == "the claude answer" and got["num_turns"] == 1
    assert got["iterations"] == 1 and got["session_id"] == "c-1"


# Aider's chat history, as the real Aider 0.86 wrote it for a `--message` run that edited a file:
# its own output is quoted with "> ", the user's message is a "#### " line, the answer is plain
# text (a SEARCH/REPLACE block's ">>>>>>> REPLACE" included).
AIDER_HISTORY = (SNIPPETS / "aider.chat.history.md").read_text()


def test_aiders_answer_comes_from_its_chat_history(tmp_path: Path) -> None:
    history = tmp_path / "a1.chat.md"
    history.write_text("#### an earlier task  \n\nan earlier answer\n" + AIDER_HISTORY)
    answer = last_chat_reply(history)
    assert answer is not None
    assert answer.startswith("I will update the notes.")
    assert ">>>>>>> REPLACE" in answer and answer.endswith("greet the world.")
    assert "Tokens:" not in answer and "Applied edit" not in answer
    assert last_chat_reply(tmp_path / "missing.md") is None
    history.write_text("# aider chat started\n\n> Aider v0.86.2  \n")  # no answer yet
    assert last_chat_reply(history) is None


def _opencode(name: str) -> list[dict[str, Any]]:
    """Captured from the real opencode 1.18.33 (`run --format json`): a glob tool call, then
    the answer; and a run whose provider could not be reached."""
    lines = (SNIPPETS / name).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_opencode_answer_session_steps_and_cost(tmp_path: Path) -> None:
    events = _opencode("opencode.run.jsonl")
    got = read(tmp_path, events)
    assert got["result"] == "all done" and got["session_id"].startswith("ses_")
    assert got["iterations"] == 2 and got["num_turns"] == 2 and not got["is_error"]
    assert got["total_cost_usd"] == 0  # a custom provider has no price: opencode says 0
    assert got["last_event"] == "step_finish (stop)"
    priced = [{**e, "part": {**e["part"], "cost": 0.25}} if e["type"] == "step_finish" else e
              for e in events]
    assert read(tmp_path, priced)["total_cost_usd"] == 0.5  # summed over the steps
    assert "tool_use: glob (error)" in json.loads(got["last_output"])


def test_opencode_error_event_fails_the_run_with_its_message(tmp_path: Path) -> None:
    got = read(tmp_path, _opencode("opencode.error.jsonl"))
    assert got["is_error"] and got["session_id"].startswith("ses_")
    assert got["result"].startswith("Cannot connect to API")
    assert got["num_turns"] is None and got["total_cost_usd"] is None
