"""A small local stand-in for the Anthropic Messages API, for running the real Claude Code CLI
offline in tests.

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
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TextReply:
    """An assistant turn with one text block; ends the turn (stop_reason end_turn)."""

    text: str


@dataclass(frozen=True)
class ToolUseReply:
    """An assistant turn that calls a tool (stop_reason tool_use); `text` optionally precedes it."""

    name: str
    input: dict[str, Any]
    id: str | None = None
    text: str | None = None


Reply = TextReply | ToolUseReply


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    """The parsed JSON body, the raw text if it was not JSON, or None."""
    time: float = field(default_factory=time.time)


class FakeAnthropic:
    """The stand-in server: starts on a free loopback port in a background thread."""

    def __init__(self, default_text: str = "ok", host: str = "127.0.0.1",
                 bind: Callable[[Callable[[], ThreadingHTTPServer]], ThreadingHTTPServer]
                 | None = None) -> None:
        """`bind`, when given, creates the listening socket: PrivateLoopback.run puts it in a
        network namespace of the test's own."""
        self.default_text = default_text
        self.host = host
        self._bind = bind
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeAnthropic:
        handler = _make_handler(self)

        def create() -> ThreadingHTTPServer:
            return ThreadingHTTPServer((self.host, 0), handler)

        self._server = self._bind(create) if self._bind else create()
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-anthropic", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeAnthropic is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

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

    # -- script ----------------------------------------------------------------------------

    def queue_text(self, text: str) -> None:
        self.queue(TextReply(text))

    def queue_tool_use(
        self, name: str, input: dict[str, Any], id: str | None = None, text: str | None = None
    ) -> None:
        self.queue(ToolUseReply(name, input, id, text))

    def queue(self, reply: Reply) -> None:
        with self._lock:
            self._replies.append(reply)

    def pending_replies(self) -> int:
        with self._lock:
            return len(self._replies)

    # -- what was received -----------------------------------------------------------------

    def message_requests(self) -> list[RecordedRequest]:
        """The POST /v1/messages requests received so far, oldest first."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == "POST" and r.path.split("?")[0] == "/v1/messages"
            ]

    def wait_for_messages(self, count: int, timeout: float = 30.0) -> bool:
        """True once at least `count` message requests arrived, False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                n = sum(
                    1
                    for r in self.requests
                    if r.method == "POST" and r.path.split("?")[0] == "/v1/messages"
                )
                left = deadline - time.monotonic()
                if n >= count:
                    return True
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.5))

    # -- internals -------------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> Reply | None:
        with self._lock:
            self.requests.append(request)
            is_message = (
                request.method == "POST" and request.path.split("?")[0] == "/v1/messages"
            )
            reply = None
            if is_message:
                reply = self._replies.popleft() if self._replies else TextReply(self.default_text)
            self._lock.notify_all()
            return reply

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"


def _blocks(reply: Reply, ids: FakeAnthropic) -> tuple[list[dict[str, Any]], str]:
    """The content blocks of a reply and its stop reason."""
    if isinstance(reply, TextReply):
        return [{"type": "text", "text": reply.text}], "end_turn"
    blocks: list[dict[str, Any]] = []
    if reply.text:
        blocks.append({"type": "text", "text": reply.text})
    blocks.append(
        {
            "type": "tool_use",
            "id": reply.id or ids._next_id("toolu"),
            "name": reply.name,
            "input": reply.input,
        }
    )
    return blocks, "tool_use"


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
        out.append(
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": i, "content_block": start},
            )
        )
        out.append(
            _sse("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
        )
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": i}))
    out.append(
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 5},
            },
        )
    )
    out.append(_sse("message_stop", {"type": "message_stop"}))
    return b"".join(out)


def _make_handler(api: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real API

        def log_message(self, format: str, *args: Any) -> None:  # quiet in tests
            pass

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not raw:
                return None
            try:
                return json.loads(raw)
            except ValueError:
                return raw.decode("utf-8", "replace")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("request-id", api._next_id("req"))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, data: dict[str, Any]) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def _handle(self) -> None:
            body = self._body() if self.command in ("POST", "PUT", "PATCH") else None
            request = RecordedRequest(self.command, self.path, dict(self.headers.items()), body)
            reply = api._record(request)
            path = self.path.split("?")[0]
            if reply is not None:
                model = body.get("model") if isinstance(body, dict) else None
                blocks, stop = _blocks(reply, api)
                message = {
                    "id": api._next_id("msg"),
                    "type": "message",
                    "role": "assistant",
                    "model": model or "claude-test",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 10, "output_tokens": 1},
                }
                if isinstance(body, dict) and body.get("stream"):
                    self._send(200, _stream_body(message, blocks, stop), "text/event-stream")
                else:
                    message.update(content=blocks, stop_reason=stop)
                    self._json(200, message)
            elif self.command == "POST" and path == "/v1/messages/count_tokens":
                self._json(200, {"input_tokens": 10})
            else:
                self._json(
                    404,
                    {"type": "error", "error": {"type": "not_found_error", "message": "not here"}},
                )

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return Handler
