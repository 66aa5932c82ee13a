"""A stdio MCP server (standard library only) for readiness tests: `slow_mcp_server.py DELAY
NAME` answers `initialize` after DELAY seconds, `fail` exits at it, `never` never answers.
Its one tool is `NAME_ping`, so a model request that lists it names the server."""

from __future__ import annotations

import json
import sys
import time


def send(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(mode: str, name: str) -> None:
    for line in sys.stdin:
        msg = json.loads(line)
        method, mid = msg.get("method"), msg.get("id")
        if method == "initialize":
            if mode == "fail":
                sys.exit(3)
            time.sleep(3600 if mode == "never" else float(mode))
            send({"jsonrpc": "2.0", "id": mid, "result": {
                "protocolVersion": msg["params"].get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}}, "serverInfo": {"name": name, "version": "1"}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": mid, "result": {"tools": [{
                "name": f"{name}_ping", "description": f"Answers with {name}'s word.",
                "inputSchema": {"type": "object", "properties": {}}}]}})
        elif method == "tools/call":
            send({"jsonrpc": "2.0", "id": mid,
                  "result": {"content": [{"type": "text", "text": f"pong-from-{name}"}]}})
        elif mid is not None:
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": method}})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
