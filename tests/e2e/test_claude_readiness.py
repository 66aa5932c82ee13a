"""After a restart, the agent's MCP servers are usable on its first turn: the real Claude Code
TUI, restarted through the MCP tool and through `aegis-mcp restart --prompt`, is asked by the
model (the stand-in) to call a tool of a second MCP server that takes 3 s to answer
`initialize`, and gets its answer. Measured: Claude Code itself waits for a server that is
still connecting when a tool of it is called from 2.1.284 on (2.1.284, 2.1.286, 2.1.290,
2.1.299, 2.1.331, 2.1.332); 2.1.197 to 2.1.283 do not ("No such tool available:
mcp__second__ping. The MCP server 'second' is still connecting"). To measure another version:
AEGIS_TEST_CLAUDE=/path/to/node_modules/.bin/claude pytest tests/e2e/test_claude_readiness.py"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aegis_mcp.supervise import control
from tests.e2e.test_claude_e2e import TUI_KEY, needs_claude, spawn_tui, trust_project
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.host import NEEDS_ROOT, aegis_bin
from tests.support.private_net import PrivateLoopback
from tests.support.scripted_api import RecordedRequest
from tests.support.tui import quit_tui, type_prompt

pytestmark = [needs_claude, NEEDS_ROOT]

SLOW_SERVER = '''
import sys, time
time.sleep(3)  # slow to come up: initialize waits in the pipe meanwhile
from mcp.server.mcpserver import MCPServer
server = MCPServer(name="second")

@server.tool()
def ping() -> str:
    """Answer with the second server's word."""
    return "pong-from-the-slow-second-server"

server.run("stdio")
'''
ANSWER = "pong-from-the-slow-second-server"


class TurnsOnlyAnthropic(FakeAnthropic):
    """The stand-in, with Claude Code's side requests set apart: up to 2.1.299 at least (not
    2.1.331) the TUI asks /v1/messages for a session title from the first prompt, a request
    without tools, which would take the next scripted reply (the restart tool call) and make
    an older version fail for a reason other than readiness. Such a request gets the default
    text and is no turn."""

    def _is_turn(self, request: RecordedRequest) -> bool:
        body = request.body if isinstance(request.body, dict) else {}
        return super()._is_turn(request) and bool(body.get("tools"))

    def other(self, method: str, path: str, body: Any) -> tuple[int, str, bytes]:
        if method == "POST" and path.split("?")[0] == "/v1/messages":
            return (200, *self.encode(path, body, self.default_text))
        return super().other(method, path, body)


def add_slow_server(user: pwd.struct_passwd, project: Path) -> None:
    """A user-scope MCP server (no approval prompt) that answers `initialize` after 3 s."""
    script = project / "slow_server.py"
    script.write_text(SLOW_SERVER)
    os.chmod(script, 0o644)
    config_path = Path(user.pw_dir) / ".claude.json"
    config = json.loads(config_path.read_text())
    config["mcpServers"] = {"second": {"type": "stdio", "command": sys.executable,
                                       "args": [str(script)]}}
    config_path.write_text(json.dumps(config))
    os.chown(config_path, user.pw_uid, user.pw_gid)


def tool_result_of(api: FakeAnthropic, tool_use_id: str, timeout: float) -> str:
    """The content Claude Code sent back for `tool_use_id`, once a request carries it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for request in api.message_requests():
            for message in request.body.get("messages", []):
                content = message.get("content")
                if not isinstance(content, list):
                    continue
                for block in content:
                    if block.get("type") == "tool_result" and block.get("tool_use_id") == \
                            tool_use_id:
                        return json.dumps(block.get("content"))
        time.sleep(0.2)
    raise AssertionError(f"no tool_result for {tool_use_id} within {timeout}s")


def run_tui(throwaway_user: pwd.struct_passwd, project: Path, aegis_env: dict[str, str],
            net: PrivateLoopback, via_tool: bool) -> None:
    trust_project(throwaway_user, project, TUI_KEY)
    add_slow_server(throwaway_user, project)
    with TurnsOnlyAnthropic(default_text="default reply", bind=net.run) as api:
        if via_tool:
            api.queue_tool_use("mcp__aegis-mcp__restart_claude",
                               {"reason": "new MCP server", "prompt": "use the second server"})
            api.queue_text("restart scheduled")
        else:
            api.queue_text("first answer")
        api.queue_tool_use("mcp__second__ping", {}, id="toolu_second_ping")
        api.queue_text("the second server answered")
        child, screen, env = spawn_tui(api, throwaway_user, project, aegis_env, net,
                                       timeout=90)
        try:
            screen.wait_for(r"bypass permissions on", timeout=90)
            screen.wait_for(r"❯")
            type_prompt(child, screen, "first prompt")
            if not via_tool:
                assert api.wait_for_messages(1, timeout=90)
                restart = subprocess.run(
                    [aegis_bin(), "restart", "--pid", str(child.pid), "--reason",
                     "new MCP server", "--prompt", "use the second server", "--wait", "90",
                     "--json"], env=env, capture_output=True, text=True, timeout=150)
                assert restart.returncode == 0, restart.stderr
            child.expect_exact("aegis-mcp: restarting claude (reason: new MCP server)",
                               timeout=90)
            # The resumed claude's first turn calls the slow server's tool and gets its answer.
            assert ANSWER in tool_result_of(api, "toolu_second_ping", timeout=120)
            sock = control.socket_path(project / ".aegis-run", child.pid)
            status = control.request(sock, {"op": "status"})["status"]
            assert status["restart_count"] == 1
            last = json.dumps(api.message_requests()[-1].body["messages"])
            assert "first prompt" in last and "use the second server" in last
        finally:
            quit_tui(child)


def test_the_first_turn_after_a_tool_restart_uses_a_slow_mcp_server(
        throwaway_user: pwd.struct_passwd, project: Path, aegis_env: dict[str, str],
        net: PrivateLoopback) -> None:
    run_tui(throwaway_user, project, aegis_env, net, via_tool=True)


def test_the_first_turn_after_aegis_mcp_restart_uses_a_slow_mcp_server(
        throwaway_user: pwd.struct_passwd, project: Path, aegis_env: dict[str, str],
        net: PrivateLoopback) -> None:
    run_tui(throwaway_user, project, aegis_env, net, via_tool=False)
