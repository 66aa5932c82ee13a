"""A small local stand-in for the Anthropic Messages API, for running the real Claude Code CLI
(and Aider, through litellm) offline in tests.

    with FakeAnthropic() as api:
        api.queue_tool_use("mcp__aegis-mcp__restart_claude", {"reason": "test"})
        api.queue_text("done")
        env = {**os.environ, **api.claude_env(home=tmp_path)}
        subprocess.run([claude, "-p", "hi"], env=env, ...)
        assert api.wait_for_messages(2)
        api.message_requests()[1].body["messages"]   # what claude sent back (the tool_result)

Each POST /v1/messages takes the next scripted reply from the queue (the default text reply when
the queue is empty) and answers it as the API does: SSE events (message_start,
content_block_start/delta/stop, message_delta, message_stop) when the request asks for
`stream: true`, else one JSON message. Every request is recorded. Other endpoints answer like
the API would without a model (count_tokens) or with a 404 JSON error.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.scripted_api import Bind, RecordedRequest, ScriptedAPI


@dataclass(frozen=True)
class ToolUseReply:
    """An assistant turn that calls a tool (stop_reason tool_use); `text` optionally precedes it."""

    name: str
    input: dict[str, Any]
    id: str | None = None
    text: str | None = None


class FakeAnthropic(ScriptedAPI):
    """The stand-in server: starts on a free loopback port in a background thread."""

    def __init__(self, default_text: str = "ok", bind: Bind | None = None) -> None:
        """`bind`, when given, creates the listening socket: PrivateLoopback.run puts it in a
        network namespace of the test's own."""
        super().__init__(default_text, bind)
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return self.origin

    def claude_env(self, home: str | Path) -> dict[str, str]:
        """The environment that points Claude Code at this server, offline, with a fresh HOME."""
        return {
            "ANTHROPIC_BASE_URL": self.url,
            "ANTHROPIC_API_KEY": "x",
            "CLAUDE_CODE_MAX_RETRIES": "0",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "HOME": str(home),
        }

    def queue_tool_use(self, name: str, input: dict[str, Any], id: str | None = None,
                       text: str | None = None) -> None:
        self.queue(ToolUseReply(name, input, id, text))

    def message_requests(self) -> list[RecordedRequest]:
        """The POST /v1/messages requests received so far, oldest first."""
        return self.turns()

    def wait_for_messages(self, count: int, timeout: float = 30.0) -> bool:
        """True once at least `count` message requests arrived, False after `timeout` seconds."""
        return len(self.wait_for_turns(count, timeout)) >= count

    # -- the API's shapes ---------------------------------------------------------------------

    def is_turn(self, path: str) -> bool:
        return path.split("?")[0] == "/v1/messages"

    def headers(self) -> dict[str, str]:
        return {"request-id": self._next_id("req")}

    def other(self, method: str, path: str, body: Any) -> tuple[int, str, bytes]:
        if method == "POST" and path.split("?")[0] == "/v1/messages/count_tokens":
            return 200, "application/json", b'{"input_tokens": 10}'
        error = {"type": "error", "error": {"type": "not_found_error", "message": "not here"}}
        return 404, "application/json", json.dumps(error).encode()

    def encode(self, path: str, body: Any, reply: object) -> tuple[str, bytes]:
        blocks, stop = self._blocks(reply)
        model = body.get("model") if isinstance(body, dict) else None
        message = {"id": self._next_id("msg"), "type": "message", "role": "assistant",
                   "model": model or "claude-test", "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}
        if isinstance(body, dict) and body.get("stream"):
            return "text/event-stream", _stream_body(message, blocks, stop)
        message.update(content=blocks, stop_reason=stop)
        return "application/json", json.dumps(message).encode()

    def _blocks(self, reply: object) -> tuple[list[dict[str, Any]], str]:
        """The content blocks of a reply and its stop reason."""
        if not isinstance(reply, ToolUseReply):
            return [{"type": "text", "text": str(reply)}], "end_turn"
        blocks: list[dict[str, Any]] = []
        if reply.text:
            blocks.append({"type": "text", "text": reply.text})
        blocks.append({"type": "tool_use", "id": reply.id or self._next_id("toolu"),
                       "name": reply.name, "input": reply.input})
        return blocks, "tool_use"

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _stream_body(message: dict[str, Any], blocks: list[dict[str, Any]], stop: str) -> bytes:
    out = [_sse("message_start", {"type": "message_start", "message": message})]
    for i, block in enumerate(blocks):
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        out.append(_sse("content_block_start",
                        {"type": "content_block_start", "index": i, "content_block": start}))
        out.append(_sse("content_block_delta",
                        {"type": "content_block_delta", "index": i, "delta": delta}))
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": i}))
    out.append(_sse("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": stop, "stop_sequence": None},
                                      "usage": {"output_tokens": 5}}))
    out.append(_sse("message_stop", {"type": "message_stop"}))
    return b"".join(out)
