"""The common part of the local stand-ins for model APIs that serve one scripted reply per
request: a threaded HTTP server on loopback (or in a namespace of the test's own, through
`bind`), the record of requests, and the queue of replies (texts, or HOLD, which keeps a
request open until release() or the end, to catch an agent mid-turn). A subclass says which
requests take a reply and how a reply is encoded."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from tests.fake_anthropic import RecordedRequest

HOLD = object()
"""A scripted reply that answers only after release()."""

Bind = Callable[[Callable[[], ThreadingHTTPServer]], ThreadingHTTPServer]


class ScriptedAPI:
    def __init__(self, default_text: str = "ok", bind: Bind | None = None) -> None:
        self.default_text = default_text
        self.requests: list[RecordedRequest] = []
        self._replies: deque[object] = deque()
        self._lock = threading.Condition()
        self._released = threading.Event()
        self._bind = bind
        self._server: ThreadingHTTPServer | None = None

    # -- what a subclass provides ------------------------------------------------------------

    def is_turn(self, path: str) -> bool:
        """Whether a POST to `path` is a model turn (takes the next scripted reply)."""
        raise NotImplementedError

    def encode(self, path: str, body: Any, reply: object) -> tuple[str, bytes]:
        """(content type, body) of the answer to a request: `reply` is a text, or a reply
        object of the subclass's own (a tool call)."""
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
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
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- script and record -----------------------------------------------------------------

    def queue_text(self, text: str) -> None:
        self.queue(text)

    def queue(self, reply: object) -> None:
        with self._lock:
            self._replies.append(reply)

    def queue_hold(self) -> None:
        with self._lock:
            self._replies.append(HOLD)

    def release(self) -> None:
        self._released.set()

    def turns(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if self.is_turn(r.path)]

    def wait_for_turns(self, count: int, timeout: float = 30.0) -> list[RecordedRequest]:
        with self._lock:
            self._lock.wait_for(lambda: len(self.turns()) >= count, timeout)
        return self.turns()

    def _take(self, request: RecordedRequest) -> object:
        with self._lock:
            self.requests.append(request)
            self._lock.notify_all()
            if not self.is_turn(request.path):
                return self.default_text
            return self._replies.popleft() if self._replies else self.default_text


def _make_handler(api: ScriptedAPI) -> type[BaseHTTPRequestHandler]:
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
            content_type, data = api.encode(self.path, body, reply)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler
