"""The real Claude Code CLI under the supervisor, offline, against a local stand-in for the
model API. As root (CI), the supervisor is started the way sudo starts it and drops to a
throwaway user: Claude Code refuses --dangerously-skip-permissions as root."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import aegis_bin
from tests.fake_anthropic import FakeAnthropic

CLAUDE = os.environ.get("AEGIS_TEST_CLAUDE", "")
pytestmark = [
    pytest.mark.skipif(not CLAUDE or not os.access(CLAUDE, os.X_OK),
                       reason="AEGIS_TEST_CLAUDE (the npm Claude Code CLI) not set; "
                              "scripts/test installs it"),
    pytest.mark.skipif(os.geteuid() != 0, reason="runs claude as a throwaway user (needs root)"),
]


@pytest.fixture
def project(throwaway_user: pwd.struct_passwd) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="aegis-claude-"))
    os.chmod(path, 0o755)
    os.chown(path, throwaway_user.pw_uid, throwaway_user.pw_gid)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def run_claude(api: FakeAnthropic, user: pwd.struct_passwd, cwd: Path, aegis_env: dict[str, str],
               *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**aegis_env, **api.claude_env(home=user.pw_dir), "SUDO_UID": str(user.pw_uid),
           "SUDO_GID": str(user.pw_gid), "SUDO_USER": user.pw_name}
    env["PATH"] = f"{Path(CLAUDE).parent}{os.pathsep}{env['PATH']}"
    # The runtime dir must be reachable by the user: the supervisor creates and chowns it.
    env["AEGIS_RUNTIME_DIR"] = str(cwd / ".aegis-run")
    return subprocess.run([aegis_bin(), "claude", *args], env=env, cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def offered_tools(request_body: dict) -> str:
    """Claude Code 2.1 offers MCP tools either in `tools` or, deferred, by name in a system
    reminder (loaded through its ToolSearch tool): both are in the request body."""
    return json.dumps(request_body)


def test_print_mode_runs_with_injected_server_and_forwards_exit_status(
        throwaway_user: pwd.struct_passwd, project: Path, aegis_env: dict[str, str]) -> None:
    with FakeAnthropic(default_text="hello from the stand-in") as api:
        out = run_claude(api, throwaway_user, project, aegis_env, "-p", "say hi")
        assert out.returncode == 0, out.stderr
        assert "hello from the stand-in" in out.stdout
        first = api.message_requests()[0].body
        assert "mcp__aegis-mcp__restart_claude" in offered_tools(first)
        assert "mcp__aegis-mcp__server_status" in offered_tools(first)
        bad = run_claude(api, throwaway_user, project, aegis_env, "--no-such-flag-xyz")
        assert bad.returncode not in (0, None) and "Traceback" not in bad.stderr
    # The overlay lived in the private runtime dir and is gone; no file in the project changed.
    assert not list((project / ".aegis-run").glob("mcp-overlay-*"))
    assert not (project / ".mcp.json").exists()


def test_restart_tool_restarts_claude_with_continue_and_prompt(
        throwaway_user: pwd.struct_passwd, project: Path, aegis_env: dict[str, str]) -> None:
    with FakeAnthropic(default_text="default reply") as api:
        api.queue_tool_use("mcp__aegis-mcp__restart_claude",
                           {"reason": "MCP server updated", "prompt": "continue after restart"})
        api.queue_text("the restart is scheduled")
        api.queue_text("second claude here")
        out = run_claude(api, throwaway_user, project, aegis_env, "-p", "first prompt")
        assert out.returncode == 0, out.stderr
        assert "aegis-mcp: restarting claude (reason: MCP server updated)" in out.stderr
        assert "second claude here" in out.stdout
        requests = [r.body for r in api.message_requests()]
        # The tool's answer reached the old claude, which sent it back to the model.
        results = [b for b in json.dumps(requests[1]["messages"]).split('"tool_result"')[1:]]
        assert results and "stopped and started again" in json.dumps(requests[1]["messages"])
        # The new claude resumed the conversation (--continue) and got the restart prompt.
        last = json.dumps(requests[-1]["messages"])
        assert "first prompt" in last and "continue after restart" in last
