"""The common part of the local stand-ins for model APIs that serve one scripted reply per
request: a threaded HTTP server on loopback (or in a namespace of the test's own, through
`bind`), the record of requests, and the queue of replies (texts, or HOLD, which keeps a
request open until release() or the end, to catch an agent mid-turn). A subclass says which
requests take a reply and how a reply is encoded, and may answer the other requests."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

HOLD = object()
"""A scripted reply that answers only after release()."""

Bind = Callable[[Callable[[], ThreadingHTTPServer]], ThreadingHTTPServer]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    """The parsed JSON body, the raw text if it was not JSON, or None."""
    time: float = field(default_factory=time.time)


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
        """(content type, body) of the answer to a model turn: `reply` is a text, or a reply
        object of the subclass's own (a tool call)."""
        raise NotImplementedError

    def other(self, method: str, path: str, body: Any) -> tuple[int, str, bytes]:
        """(status, content type, body) of the answer to a request that is not a model turn:
        a POST gets the default text encoded as a turn's answer, anything else a 404."""
        if method == "POST":
            return (200, *self.encode(path, body, self.default_text))
        return 404, "application/json", b"{}"

    def headers(self) -> dict[str, str]:
        """Extra headers of every answer."""
        return {}

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        def create() -> ThreadingHTTPServer:
            return _QuietServer(("127.0.0.1", 0), _make_handler(self))

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

    def pending_replies(self) -> int:
        with self._lock:
            return len(self._replies)

    def turns(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if self._is_turn(r)]

    def wait_for_turns(self, count: int, timeout: float = 30.0) -> list[RecordedRequest]:
        with self._lock:
            self._lock.wait_for(lambda: len(self.turns()) >= count, timeout)
        return self.turns()

    def _is_turn(self, request: RecordedRequest) -> bool:
        return request.method == "POST" and self.is_turn(request.path)

    def _answer(self, request: RecordedRequest) -> tuple[int, str, bytes]:
        with self._lock:
            self.requests.append(request)
            self._lock.notify_all()
            if not self._is_turn(request):
                reply: object = None
            else:
                reply = self._replies.popleft() if self._replies else self.default_text
        if reply is None:
            return self.other(request.method, request.path, request.body)
        if reply is HOLD:
            self._released.wait(120)
            reply = self.default_text
        return (200, *self.encode(request.path, request.body, reply))


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # An agent killed mid-turn (a restart) closes its connection before its held answer
        # goes out: expected, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


def _make_handler(api: ScriptedAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs

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

        def _handle(self) -> None:
            request = RecordedRequest(self.command, self.path, dict(self.headers.items()),
                                      self._body())
            status, content_type, data = api._answer(request)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in api.headers().items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return Handler
