"""A local stand-in for the OpenAI Responses API (`POST /v1/responses`, streamed as SSE), for
running the real Codex CLI offline. Codex reaches it as a custom model provider (its built-in
OpenAI provider insists on a WebSocket), see `codex_config()`."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from tests.support.scripted_api import Bind, ScriptedAPI


@dataclass(frozen=True)
class CustomToolCall:
    """A model turn that calls a custom tool. Codex reaches MCP tools through its `exec` tool:
    JavaScript that awaits `tools.mcp__<server>__<tool>(args)`."""

    name: str
    input: str


class FakeOpenAIResponses(ScriptedAPI):
    def __init__(self, default_text: str = "ok", bind: Bind | None = None) -> None:
        super().__init__(default_text, bind)
        self._ids = itertools.count(1)

    def codex_config(self) -> str:
        """~/.codex/config.toml that makes Codex use this server."""
        return (f'model_provider = "fake"\n[model_providers.fake]\nname = "fake"\n'
                f'base_url = "{self.origin}/v1"\nwire_api = "responses"\n'
                'env_key = "OPENAI_API_KEY"\n')

    def is_turn(self, path: str) -> bool:
        return path.split("?")[0] == "/v1/responses"

    def input_texts(self, turn: int) -> list[str]:
        """The texts of a turn's input items, in order: the conversation sent."""
        body = self.turns()[turn].body
        return [part["text"] for item in body.get("input", []) if isinstance(item, dict)
                for part in item.get("content") or []
                if isinstance(part, dict) and isinstance(part.get("text"), str)]

    def tool_outputs(self, turn: int) -> list[Any]:
        """The tool results a turn sends back (`*_call_output` items)."""
        body = self.turns()[turn].body
        return [item.get("output") for item in body.get("input", [])
                if isinstance(item, dict) and str(item.get("type")).endswith("call_output")]

    def encode(self, path: str, body: Any, reply: object) -> tuple[str, bytes]:
        rid = f"resp_{next(self._ids)}"
        usage = {"input_tokens": 10, "input_tokens_details": None, "output_tokens": 5,
                 "output_tokens_details": None, "total_tokens": 15}
        if isinstance(reply, CustomToolCall):
            message = {"type": "custom_tool_call", "id": f"ctc_{rid}", "call_id": f"call_{rid}",
                       "name": reply.name, "input": reply.input, "status": "completed"}
        else:
            message = {"type": "message", "role": "assistant", "id": f"msg_{rid}",
                       "content": [{"type": "output_text", "text": str(reply)}]}
        events = [{"type": "response.created", "response": {"id": rid}},
                  {"type": "response.output_item.done", "output_index": 0, "item": message},
                  {"type": "response.completed", "response": {"id": rid, "usage": usage}}]
        return "text/event-stream", b"".join(
            f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
