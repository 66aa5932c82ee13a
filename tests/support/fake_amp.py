"""A local stand-in for as much of the Amp service as the Amp CLI needs to start offline
(`AMP_URL` points it here, `AMP_API_KEY` is any word).

The CLI asks its service who the user is before anything else (`POST /api/internal?getUserInfo`,
JSON-RPC style, `{"ok": true, "result": {...}}`): without an answer it stops ("Couldn't connect
to the Amp server", measured on 0.0.1790142911-g7618fb). Given one, the TUI and `mcp doctor`
run, and start their MCP servers. Every other method gets an error the CLI reads as such
(`{"ok": false, "error": {"code", "message"}}`), and other paths a 404. There is no model here to
stand in for: Amp's turns run in its service's thread workers (`/api/thread-actors`, then a
websocket), not in a model API the CLI calls; so no thread, and no turn, exists offline."""

from __future__ import annotations

import json
from typing import Any

from tests.support.scripted_api import ScriptedAPI

USER = {"id": "user-offline", "email": "offline@example.invalid", "username": "offline",
        "features": [], "team": None}


class FakeAmpService(ScriptedAPI):
    def is_turn(self, path: str) -> bool:
        return False

    def other(self, method: str, path: str, body: Any) -> tuple[int, str, bytes]:
        route, _, query = path.partition("?")
        if route == "/api/internal":
            name = body.get("method") if isinstance(body, dict) else query
            if name == "getUserInfo":
                return 200, "application/json", json.dumps({"ok": True, "result": USER}).encode()
            return 200, "application/json", json.dumps({"ok": False, "error": {
                "code": "not-available-offline", "message": f"{name}: not in this stand-in"}}
            ).encode()
        return 404, "application/json", json.dumps({"error": {
            "code": "not-found", "message": f"{route}: not in this stand-in"}}).encode()

    def methods(self) -> list[str]:
        """The /api/internal methods the CLI called, in order."""
        return [r.body.get("method", "") for r in self.requests
                if r.path.startswith("/api/internal") and isinstance(r.body, dict)]
