"""A local stand-in for the OpenAI Chat Completions API (`POST /v1/chat/completions`, streamed
as SSE), for running OpenAI-compatible agent CLIs offline (opencode and Kilo through a custom
provider with this server's base URL, see `opencode_provider()`; Qwen Code through
OPENAI_BASE_URL)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from tests.support.scripted_api import Bind, RecordedRequest, ScriptedAPI


@dataclass(frozen=True)
class ToolCall:
    """A model turn that calls a tool by its name as the CLI offered it."""

    name: str
    arguments: dict[str, Any]


class FakeChatCompletions(ScriptedAPI):
    MODEL = "fake-model"

    def __init__(self, default_text: str = "ok", bind: Bind | None = None) -> None:
        super().__init__(default_text, bind)
        self._ids = itertools.count(1)

    def is_turn(self, path: str) -> bool:
        return path.split("?")[0].endswith("/chat/completions")

    def _is_turn(self, request: RecordedRequest) -> bool:
        # A request that offers no tools is one the CLI makes on the side (opencode asks for
        # the session's title alongside the first turn): it gets the default text, not the
        # scripted reply meant for the agent's turn.
        body = request.body
        return super()._is_turn(request) and isinstance(body, dict) and bool(body.get("tools"))

    def opencode_provider(self) -> dict[str, Any]:
        """The `provider` and `model` keys of an opencode (or Kilo) config that make it use
        this server: a custom provider on the OpenAI-compatible SDK it bundles."""
        return {"provider": {"fake": {
            "npm": "@ai-sdk/openai-compatible", "name": "fake",
            "options": {"baseURL": f"{self.origin}/v1", "apiKey": "x"},
            "models": {self.MODEL: {"name": self.MODEL, "tool_call": True}}}},
            "model": f"fake/{self.MODEL}"}

    def messages(self, turn: int) -> list[dict[str, Any]]:
        body = self.turns()[turn].body
        return [m for m in body.get("messages", []) if isinstance(m, dict)]

    def texts(self, turn: int, role: str = "user") -> list[str]:
        """The text of each of a turn's messages of `role`, in order: the conversation sent.
        Of a message in parts, its first text part: what was typed (Kilo adds a part of its own
        after it, `<environment_details>`)."""
        out = []
        for m in self.messages(turn):
            content = m.get("content")
            if m.get("role") != role:
                continue
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out += [p["text"] for p in content
                        if isinstance(p, dict) and isinstance(p.get("text"), str)][:1]
        return out

    def typed(self, turn: int) -> list[str]:
        """Every text part of a turn's user messages that is no `<system-reminder>`, in order:
        what was typed, in Qwen Code's shape (its reminders come before the text, in the same
        message; a message cut off by a restart and the restart prompt after it are one)."""
        return [p["text"] for m in self.messages(turn) if m.get("role") == "user"
                and isinstance(m.get("content"), list) for p in m["content"]
                if isinstance(p, dict) and isinstance(p.get("text"), str)
                and not p["text"].startswith("<system-reminder>")]

    def tool_names(self, turn: int) -> list[str]:
        body = self.turns()[turn].body
        return [t["function"]["name"] for t in body.get("tools") or []
                if isinstance(t, dict) and isinstance(t.get("function"), dict)]

    def tool_outputs(self, turn: int) -> list[Any]:
        """The tool results a turn sends back (`tool` messages)."""
        return [m.get("content") for m in self.messages(turn) if m.get("role") == "tool"]

    def encode(self, path: str, body: Any, reply: object) -> tuple[str, bytes]:
        cid = f"chatcmpl-{next(self._ids)}"
        base = {"id": cid, "object": "chat.completion.chunk", "created": 1, "model": self.MODEL}
        if isinstance(reply, ToolCall):
            delta: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": f"call_{cid}", "type": "function",
                 "function": {"name": reply.name, "arguments": json.dumps(reply.arguments)}}]}
            finish = "tool_calls"
        else:
            delta, finish = {"role": "assistant", "content": str(reply)}, "stop"
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        chunks = [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                  {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                   "usage": usage}]
        if not (isinstance(body, dict) and body.get("stream")):
            message = {"role": "assistant", **{k: v for k, v in delta.items() if k != "role"}}
            return "application/json", json.dumps(
                {"id": cid, "object": "chat.completion", "created": 1, "model": self.MODEL,
                 "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                 "usage": usage}).encode()
        data = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return "text/event-stream", data.encode()
