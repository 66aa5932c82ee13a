"""A local stand-in for the Gemini API (`models/{model}:streamGenerateContent?alt=sse`), for
running the real Gemini CLI offline: GEMINI_API_KEY, GOOGLE_GEMINI_BASE_URL=origin, and
API-key auth selected in ~/.gemini/settings.json (`settings()`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.support.scripted_api import ScriptedAPI


@dataclass(frozen=True)
class FunctionCall:
    """A model turn that calls a tool (`mcp_<server>_<tool>` for MCP tools)."""

    name: str
    args: dict[str, Any]


class FakeGemini(ScriptedAPI):
    SETTINGS = {"security": {"auth": {"selectedType": "gemini-api-key"}}}

    def is_turn(self, path: str) -> bool:
        return ":streamGenerateContent" in path or ":generateContent" in path

    def texts(self, turn: int) -> list[str]:
        """The text parts of a turn's contents, in order: the conversation sent."""
        body = self.turns()[turn].body
        return [part["text"] for content in body.get("contents", [])
                for part in content.get("parts", []) if isinstance(part.get("text"), str)]

    def function_responses(self, turn: int) -> list[dict[str, Any]]:
        """The tool results a turn sends back (`functionResponse` parts)."""
        body = self.turns()[turn].body
        return [part["functionResponse"] for content in body.get("contents", [])
                for part in content.get("parts", []) if "functionResponse" in part]

    def encode(self, path: str, body: Any, reply: object) -> tuple[str, bytes]:
        if not self.is_turn(path):  # countTokens and the like
            return "application/json", json.dumps({"totalTokens": 10}).encode()
        part = ({"functionCall": {"name": reply.name, "args": reply.args}}
                if isinstance(reply, FunctionCall) else {"text": str(reply)})
        chunk = {"candidates": [{"content": {"parts": [part], "role": "model"},
                                 "finishReason": "STOP", "index": 0}],
                 "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5,
                                   "totalTokenCount": 15}}
        if "alt=sse" in path:
            return "text/event-stream", f"data: {json.dumps(chunk)}\r\n\r\n".encode()
        return "application/json", json.dumps(chunk).encode()
