"""What an agent CLI's event stream says: its turns, its answer, its session and its failures,
in the shapes the CLIs print (claude and cursor stream-json, `codex exec --json`, `gemini
--output-format stream-json`, `opencode run --format json` and Kilo's alike, `copilot
--output-format json`), and the answer in
an Aider chat history. Nothing here touches the store: the runner writes what this reads.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import deque
from pathlib import Path
from typing import Any

_LINES_KEPT = 20


class EventStream:
    """The agent's output read so far. `feed` takes raw bytes as they come; `_progress` is
    what the store keeps of it."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=_LINES_KEPT)
        self.partial = b""
        self.iterations = 0
        self.seen_messages: set[str] = set()
        self.last_event: str | None = None
        self.result: dict[str, Any] = {}
        self.reply = ""
        """The agent's last answer as its messages stream in (codex, gemini), for agents whose
        final event carries no result text."""
        self.in_reply = False
        self.session_id: str | None = None
        self.steps = 0
        """Model turns that say they ended (opencode's `step_finish`, Copilot's
        `assistant.turn_end`)."""
        self.cost: float | None = None
        """The steps' cost summed, where they give one (opencode)."""
        self.dirty = False

    def on_turn(self) -> None:
        """Called after a turn of claude, cursor or codex is counted, where a limit is checked
        (Gemini's messages count as turns too, but were never held to the limit)."""

    def on_line(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r\n")
        if not line.strip():
            return
        event = None
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
        if not isinstance(event, dict):
            self.lines.append(line[:500])
            self.dirty = True
            return
        summary = summarize(event)
        self.last_event = summary
        self.lines.append(summary)
        self.dirty = True
        kind = event.get("type")
        if isinstance(event.get("session_id"), str):
            self.session_id = event["session_id"]
        elif isinstance(event.get("sessionID"), str):  # opencode, an error event too
            self.session_id = event["sessionID"]
        elif isinstance(event.get("sessionId"), str):  # copilot's `result`
            self.session_id = event["sessionId"]
        if isinstance(event.get("part"), dict):
            self._follow_part(kind, event)
        elif isinstance(kind, str) and kind.startswith("assistant.") \
                and isinstance(event.get("data"), dict):
            self._follow_copilot(kind, event["data"])
        self._follow_reply(kind, event)
        if kind == "assistant" or kind == "turn.completed":
            message = event.get("message") if isinstance(event.get("message"), dict) else {}
            msg_id = message.get("id")
            if not msg_id or msg_id not in self.seen_messages:
                if msg_id:
                    self.seen_messages.add(msg_id)
                self.iterations += 1
                self.on_turn()
        elif kind == "result":
            said = self.result.get("result") if self.result.get("is_error") else None
            self.result = event
            if event.get("status") not in (None, "success"):  # gemini's failed run
                self.result = {**event, "is_error": True, "subtype": event.get("status")}
            elif event.get("exitCode") not in (None, 0):  # copilot's, after its session.error
                self.result = {**event, "is_error": True, "result": said,
                               "subtype": f"exit code {event['exitCode']}"}
        elif kind in ("turn.failed", "error", "session.error"):  # codex; opencode; copilot
            error = event.get("error") or event.get("data")
            message = _error_message(error) if isinstance(error, dict) else event.get("message")
            self.result = {"is_error": True, "subtype": kind, "result": message}

    def _follow_part(self, kind: object, event: dict[str, Any]) -> None:
        """opencode's shape (Kilo's alike): every event has the `sessionID` and a `part`; a
        `text` part is a whole text (not a delta), a `step_finish` part ends one model turn
        with its tokens and cost. There is no final event: the last text is the answer."""
        part = event["part"]
        if kind == "text" and isinstance(part.get("text"), str):
            self.reply = part["text"]
        elif kind == "step_finish":
            self.steps += 1
            self.iterations += 1
            cost = part.get("cost")
            if isinstance(cost, int | float) and not isinstance(cost, bool):
                self.cost = (self.cost or 0.0) + cost
            self.on_turn()

    def _follow_copilot(self, kind: str, data: dict[str, Any]) -> None:
        """Copilot's shape (`--output-format json`, 1.0.102): each model response is an
        `assistant.message` with its whole `content` (empty when it only calls tools) and
        ends an `assistant.turn_end`; the final `result` has the `sessionId`, no text."""
        if kind == "assistant.message":
            self.iterations += 1
            if isinstance(data.get("content"), str) and data["content"]:
                self.reply = data["content"]
            self.on_turn()
        elif kind == "assistant.turn_end":
            self.steps += 1

    def _follow_reply(self, kind: object, event: dict[str, Any]) -> None:
        """Codex (`item.completed` agent_message, `thread.started`) and Gemini (`message`
        events, streamed in deltas) shapes: the last answer and the session."""
        item = event.get("item")
        if kind == "thread.started" and isinstance(event.get("thread_id"), str):
            self.session_id = event["thread_id"]
        elif kind == "item.completed" and isinstance(item, dict) \
                and item.get("type") == "agent_message" and isinstance(item.get("text"), str):
            self.reply = item["text"]
        elif kind == "message" and event.get("role") == "assistant" \
                and isinstance(event.get("content"), str):
            if not self.in_reply:
                self.iterations += 1
            self.reply = self.reply + event["content"] if self.in_reply and event.get("delta") \
                else event["content"]
            self.in_reply = True
            return
        self.in_reply = False

    def feed(self, data: bytes) -> None:
        self.partial += data
        *lines, self.partial = self.partial.split(b"\n")
        for line in lines:
            self.on_line(line)

    def _progress(self) -> dict[str, Any]:
        r = self.result
        return {
            "iterations": self.iterations,
            "last_event": self.last_event,
            "last_output": json.dumps(list(self.lines)),
            "session_id": r.get("session_id") or self.session_id,
            "result": r.get("result") if isinstance(r.get("result"), str) else self.reply or None,
            "num_turns": r.get("num_turns") if isinstance(r.get("num_turns"), int)
            else self.steps or None,
            "total_cost_usd": r.get("total_cost_usd")
            if isinstance(r.get("total_cost_usd"), int | float) else self.cost,
        }


def _error_message(error: dict[str, Any]) -> object:
    """Codex's `{"message"}`, opencode's `{"name", "data": {"message"}}`."""
    data = error.get("data")
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"]
    return error.get("message") or error.get("name")


def last_chat_reply(path: Path) -> str | None:
    """The last answer in an Aider chat history: the text after the last `#### ` block (the
    user's message), without the `> ` lines that are Aider's own output (tokens, applied
    edits). Aider's plain-text stdout mixes those with the answer; this file keeps them apart."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - (1 << 20)))  # the last answer is near the end
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("#### ")]
    if not starts:
        return None
    reply = [line for line in lines[starts[-1] + 1:] if not line.startswith("> ")]
    answer = "\n".join(reply).strip()
    return answer or None


def summarize(event: dict[str, Any]) -> str:
    """One line for a stream-json event (claude, cursor, codex, gemini shapes)."""
    kind = str(event.get("type", "event"))
    if kind == "result":
        if "status" in event:  # gemini
            return f"result ({event['status']}): {json.dumps(event.get('stats'))[:300]}"
        text = event.get("result")
        return f"result ({event.get('subtype', '')}): {str(text)[:300]}"
    message = event.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), list):
        parts = []
        for block in message["content"]:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                parts.append(f"[tool {block.get('name')}]")
            elif block.get("type") == "tool_result":
                parts.append("[tool result]")
        return f"{kind}: {' '.join(parts)[:300]}"
    if kind == "system":
        return f"system ({event.get('subtype', '')})"
    data = event.get("data")
    if kind == "assistant.message" and isinstance(data, dict):  # copilot
        tools = [str(t.get("name")) for t in data.get("toolRequests") or []
                 if isinstance(t, dict)]
        said = " ".join([str(data.get("content") or ""), *(f"[tool {t}]" for t in tools)])
        return f"{kind}: {said.strip()[:300]}"
    part = event.get("part")
    if isinstance(part, dict):  # opencode, Kilo
        if kind == "text":
            return f"text: {str(part.get('text', ''))[:300]}"
        if kind == "tool_use":
            state = part.get("state") if isinstance(part.get("state"), dict) else {}
            return f"tool_use: {part.get('tool')} ({state.get('status', '')})"
        if kind == "step_finish":
            return f"step_finish ({part.get('reason', '')})"
        if kind == "step_start":
            return "step_start"
    return f"{kind}: {json.dumps(event)[:300]}"
