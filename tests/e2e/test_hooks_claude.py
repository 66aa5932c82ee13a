"""The real Claude Code CLI under the hooks, offline against tests/support/fake_anthropic.py: its
connection to the stand-in and its byte counts appear in the log.

Claude Code 2.1.x (Bun) connects, sends and receives through libc (connect, send, recv), closes
with syscall(SYS_close) and leaves through quick_exit(), which skips destructors: the hooks
cover all three."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_anthropic import FakeAnthropic
from tests.support.snippets.harness import LIB, events, hooked_env

CLAUDE = os.environ.get("AEGIS_TEST_CLAUDE")

needs_claude = pytest.mark.skipif(
    not CLAUDE or not os.path.exists(CLAUDE),
    reason="AEGIS_TEST_CLAUDE is not set to a Claude Code CLI (scripts/test installs it; or "
    "`npm install --prefix /tmp/cc @anthropic-ai/claude-code@2.1.331` and export "
    "AEGIS_TEST_CLAUDE=/tmp/cc/node_modules/.bin/claude)")


def test_fake_anthropic_answers_as_the_api_does() -> None:
    with FakeAnthropic(default_text="fallback") as api:
        api.queue_tool_use("mcp__x__y", {"a": 1}, id="toolu_fixed", text="calling")
        api.queue_text("second")

        def post(body: dict[str, Any]) -> bytes:
            req = urllib.request.Request(f"{api.url}/v1/messages?beta=true",
                                         data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.read()

        stream = post({"model": "m", "stream": True, "messages": []}).decode()
        kinds = [line.split(": ", 1)[1] for line in stream.splitlines()
                 if line.startswith("event: ")]
        assert kinds == ["message_start"] + ["content_block_start", "content_block_delta",
                                             "content_block_stop"] * 2 + [
            "message_delta", "message_stop"]
        datas = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data:")]
        assert datas[4]["content_block"] == {"type": "tool_use", "id": "toolu_fixed",
                                             "name": "mcp__x__y", "input": {}}
        assert json.loads(datas[5]["delta"]["partial_json"]) == {"a": 1}
        assert datas[-2]["delta"]["stop_reason"] == "tool_use"
        plain = json.loads(post({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
        assert plain["content"] == [{"type": "text", "text": "second"}]
        assert plain["stop_reason"] == "end_turn" and plain["model"] == "m"
        assert json.loads(post({"stream": False}))["content"][0]["text"] == "fallback"
        assert api.wait_for_messages(3, timeout=1) and not api.wait_for_messages(4, timeout=0.2)
        assert api.message_requests()[1].body["messages"][0]["content"] == "x"
        assert api.pending_replies() == 0


@needs_claude
@pytest.mark.skipif(not Path(LIB).exists(), reason=f"{LIB} is not built")
def test_claude_code_connection_and_bytes_are_recorded(tmp_path: Path) -> None:
    from aegis_mcp.netmon import summary as netsummary

    assert CLAUDE is not None
    log = tmp_path / "netmon.jsonl"
    home = tmp_path / "home"
    home.mkdir()
    with FakeAnthropic(default_text="hello from the stand-in") as api:
        env = {**hooked_env(log), **api.claude_env(home)}
        env.pop("CLAUDECODE", None)
        out = subprocess.run([CLAUDE, "-p", "hi"], env=env, cwd=home, capture_output=True,
                             text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == "hello from the stand-in"
        (request,) = api.message_requests()
        assert request.path.startswith("/v1/messages") and request.body["stream"] is True
        port = api.port

    closes = [e for e in events(log, "close") if e.get("port") == port]
    connects = [e for e in events(log, "connect") if e.get("port") == port]
    assert len(connects) == 1, events(log)
    assert connects[0]["exe"].startswith("claude") and connects[0]["addr"] == "127.0.0.1"
    assert len(closes) == 1
    # the request body (the whole conversation and tool list) is tens of kB; the SSE reply ~1 kB
    content_length = int(request.headers["Content-Length"])
    assert closes[0]["sent"] > content_length
    assert closes[0]["recv"] > 500
    status = netsummary.status(log)
    target = f"127.0.0.1:{port}"
    row = next(r for r in status["top_by_bytes"] if r["target"] == target)
    assert row["connections"] == 1 and row["sent"] == closes[0]["sent"]
