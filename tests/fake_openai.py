"""A small local stand-in for the OpenAI Responses API (`POST /v1/responses`, streamed as SSE),
for running the real Codex CLI offline. Codex reaches it as a custom model provider (the
built-in OpenAI provider insists on a WebSocket), see `codex_config()`.

Each request takes the next scripted reply: a text (an assistant message), or a hold, which
keeps the request open until `release()` or the server stops, for catching the agent
mid-turn. Every request is recorded.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fake_anthropic import RecordedRequest

HOLD = object()
"""A scripted reply that answers only after release()."""


class FakeOpenAIResponses:
    def __init__(self, default_text: str = "ok",
                 bind: Callable[[Callable[[], ThreadingHTTPServer]], ThreadingHTTPServer]
                 | None = None) -> None:
        self.default_text = default_text
        self.requests: list[RecordedRequest] = []
        self._replies: deque[object] = deque()
        self._lock = threading.Condition()
        self._released = threading.Event()
        self._ids = itertools.count(1)
        self._bind = bind
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> FakeOpenAIResponses:
        def create() -> ThreadingHTTPServer:
            return ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))

        self._server = self._bind(create) if self._bind else create()
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def codex_config(self) -> str:
        """~/.codex/config.toml that makes Codex use this server."""
        return (f'model_provider = "fake"\n[model_providers.fake]\nname = "fake"\n'
                f'base_url = "{self.url}"\nwire_api = "responses"\nenv_key = "OPENAI_API_KEY"\n')

    def queue_text(self, text: str) -> None:
        with self._lock:
            self._replies.append(text)

    def queue_hold(self) -> None:
        with self._lock:
            self._replies.append(HOLD)

    def release(self) -> None:
        self._released.set()

    def wait_for_requests(self, count: int, timeout: float = 30.0) -> list[RecordedRequest]:
        with self._lock:
            self._lock.wait_for(lambda: len(self.requests) >= count, timeout)
            return list(self.requests)

    def input_texts(self, index: int) -> list[str]:
        """The texts of request `index`'s input items, in order (the conversation sent)."""
        body = self.requests[index].body
        return [part["text"] for item in body.get("input", []) if isinstance(item, dict)
                for part in item.get("content") or []
                if isinstance(part, dict) and isinstance(part.get("text"), str)]

    def _take(self, request: RecordedRequest) -> object:
        with self._lock:
            self.requests.append(request)
            self._lock.notify_all()
            return self._replies.popleft() if self._replies else self.default_text

    def _events(self, text: str) -> bytes:
        rid = f"resp_{next(self._ids)}"
        usage = {"input_tokens": 10, "input_tokens_details": None, "output_tokens": 5,
                 "output_tokens_details": None, "total_tokens": 15}
        message = {"type": "message", "role": "assistant", "id": f"msg_{rid}",
                   "content": [{"type": "output_text", "text": text}]}
        events = [{"type": "response.created", "response": {"id": rid}},
                  {"type": "response.output_item.done", "output_index": 0, "item": message},
                  {"type": "response.completed", "response": {"id": rid, "usage": usage}}]
        return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode()
                        for e in events)


def _make_handler(api: FakeOpenAIResponses) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
            reply = api._take(RecordedRequest("POST", self.path, dict(self.headers), body))
            if reply is HOLD:
                api._released.wait(120)
                reply = api.default_text
            data = api._events(str(reply))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler
