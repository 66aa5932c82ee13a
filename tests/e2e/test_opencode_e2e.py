"""The real opencode and Kilo CLIs (Bun builds; Kilo is opencode's fork) get aegis-mcp's server
in the config they read from the environment (OPENCODE_CONFIG_CONTENT, KILO_CONFIG_CONTENT),
merged with the user's own value of it and over their config files, whose servers stay. Against
a local stand-in for the Chat Completions API (a custom OpenAI-compatible provider): a `run`
restarted mid-turn resumes its conversation (`--continue`, or `--session ID` when the user named
it), the model's call of the injected `restart_agent` tool restarts it the same way, and it
runs as a background agent of the pool. Each runs in a loopback-only namespace of the test's
own, with its update check, models list fetch and telemetry turned off by its own settings."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

from aegis_mcp.supervise import control
from tests.support.fake_chat import FakeChatCompletions, ToolCall
from tests.support.host import NEEDS_ROOT, aegis_bin, real_cli
from tests.support.pool_e2e import TASK, spawn_and_wait
from tests.support.poolkit import cleanup_pool
from tests.support.private_net import PrivateLoopback
from tests.support.restart_mid_turn import RESTART_PROMPT, restart_mid_turn
from tests.support.tui import Screen, status_once_servers_seen

OPENCODE, needs_opencode = real_cli("AEGIS_TEST_OPENCODE", "the npm opencode CLI")
KILO, needs_kilo = real_cli("AEGIS_TEST_KILO", "the npm Kilo CLI")
# Their own network namespace. With both cores busy, a restarted Kilo run now and then stays
# up two minutes after its answer (4 of 10 such runs, 35 s otherwise): Kilo itself, running
# (garbage collection and its own work: futex, madvise, sched_yield), with no request out and
# aegis-mcp waiting for it to exit. Bounds that hold that, so a slow run is no failure.
pytestmark = [NEEDS_ROOT, pytest.mark.timeout(400)]


@dataclass(frozen=True)
class Cli:
    name: str
    path: str
    config_env: str
    quiet: dict[str, str]
    """Its own settings that keep it from the network on its own."""


def _quiet(prefix: str) -> dict[str, str]:
    return {f"{prefix}_DISABLE_AUTOUPDATE": "1", f"{prefix}_DISABLE_MODELS_FETCH": "1",
            f"{prefix}_DISABLE_LSP_DOWNLOAD": "1", f"{prefix}_DISABLE_SHARE": "1"}


CLIS = [
    pytest.param(Cli("opencode", OPENCODE, "OPENCODE_CONFIG_CONTENT", _quiet("OPENCODE")),
                 marks=needs_opencode, id="opencode"),
    pytest.param(Cli("kilo", KILO, "KILO_CONFIG_CONTENT",
                     {**_quiet("KILO"), "KILO_TELEMETRY_LEVEL": "off"}),
                 marks=needs_kilo, id="kilo"),
]
TOOL = "aegis-mcp_restart_agent"  # opencode's name for an MCP tool: <server>_<tool>


def last_message(api: FakeChatCompletions) -> str:
    """The last user message the model got. `run` puts a message word that has a space in
    double quotes (measured on both): `run "go on"` sends `"go on"`."""
    return api.texts(-1)[-1].removeprefix('"').removesuffix('"')


@pytest.fixture(params=CLIS)
def cli(request: pytest.FixtureRequest) -> Cli:
    return request.param  # type: ignore[no-any-return]


def cli_env(cli: Cli, aegis_env: dict[str, str], home: Path, api: FakeChatCompletions | None,
            **extra: str) -> dict[str, str]:
    """Its own HOME, the npm CLI on PATH, and the user's own config variable: the stand-in as
    the model provider and a server of theirs (which the injection must keep)."""
    own: dict[str, object] = {"autoupdate": False, "share": "disabled",
                              "mcp": {"theirs": {"type": "local", "command": ["true"]}}}
    if api is not None:
        own.update(api.opencode_provider())
    # PWD as a shell sets it: Kilo takes its working directory from it (measured)
    return {**aegis_env, **cli.quiet, "HOME": str(home), cli.config_env: json.dumps(own),
            "PWD": str(home.parent / "project"),
            "PATH": f"{Path(cli.path).parent}{os.pathsep}{aegis_env['PATH']}", **extra}


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    return project, home


def test_the_injected_server_connects_beside_the_users_own(
        cli: Cli, tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home = dirs(tmp_path)
    (project / "opencode.json").write_text(json.dumps(
        {"mcp": {"mine": {"type": "local", "command": ["true"]}}}))
    env = cli_env(cli, aegis_env, home, None)
    with PrivateLoopback() as net:
        out = subprocess.run(net.enter([aegis_bin(), cli.name, "mcp", "list"]), env=env,
                             cwd=project, capture_output=True, text=True, timeout=300,
                             stdin=subprocess.DEVNULL)
        plain = subprocess.run(net.enter([cli.path, "mcp", "list"]), env=env, cwd=project,
                               capture_output=True, text=True, timeout=300,
                               stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    # Under CI=true the CLI colours its bullets too: the escapes go before the lines are read.
    shown = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout)
    lines = {line.split()[2]: line for line in shown.splitlines()
             if line.startswith("●") and len(line.split()) > 2}
    assert "connected" in lines["aegis-mcp"], out.stdout
    assert "mine" in lines and "theirs" in lines, out.stdout  # the user's servers stay
    assert "aegis-mcp" not in plain.stdout and "theirs" in plain.stdout  # outside: as it is


def test_a_run_restarted_mid_turn_continues_its_conversation(
        cli: Cli, tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home = dirs(tmp_path)
    with PrivateLoopback() as net, FakeChatCompletions("second run here", bind=net.run) as api:
        env = cli_env(cli, aegis_env, home, api)
        result = restart_mid_turn(net, api, [cli.name, "run", "first task"], env, project)
        texts = " ".join(api.texts(-1))
        tools = api.tool_names(0)
    assert result.returncode == 0, result.err
    assert TOOL in tools, tools  # the first turn already offers our tools
    assert result.status["mcp_servers_seen"], f"the new {cli.name} did not start our server"
    argv = result.status["agent_argv"]
    # no session named: the directory's latest, and the supervisor says so
    assert argv[1:] == ["run", "--auto", "--continue", RESTART_PROMPT], argv
    assert "second run here" in result.out
    assert "first task" in texts and last_message(api) == RESTART_PROMPT


@pytest.mark.parametrize("cli", CLIS[:1])  # the same argv for Kilo: its 7 s starts are spared
def test_a_session_the_user_named_is_resumed_by_its_id(
        cli: Cli, tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home = dirs(tmp_path)
    with PrivateLoopback() as net:
        with FakeChatCompletions("ok", bind=net.run) as earlier:
            first = subprocess.run(net.enter([cli.path, "run", "--format", "json",
                                              "earlier task"]),
                                   env=cli_env(cli, aegis_env, home, earlier), cwd=project,
                                   capture_output=True, text=True, timeout=300,
                                   stdin=subprocess.DEVNULL)
        assert first.returncode == 0, first.stderr
        sid = json.loads(first.stdout.splitlines()[0])["sessionID"]
        with FakeChatCompletions("ok", bind=net.run) as api:
            result = restart_mid_turn(net, api, [cli.name, "run", "-s", sid, "named task"],
                                      cli_env(cli, aegis_env, home, api), project)
            texts = " ".join(api.texts(-1))
            last = last_message(api)
    assert result.returncode == 0, result.err
    assert result.status["agent_argv"][1:] == ["run", "--auto", "--session", sid,
                                               RESTART_PROMPT]
    assert "earlier task" in texts and "named task" in texts and last == RESTART_PROMPT


def test_the_model_restarts_it_through_the_injected_tool(
        cli: Cli, tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home = dirs(tmp_path)
    # Whether the old run still sends the tool's answer back to the model before it is
    # stopped is a race (the restart has no delay; on a busy machine it often does not): every
    # turn after the tool call gets the same text, so either order ends the same.
    with PrivateLoopback() as net, FakeChatCompletions("second run here", bind=net.run) as api:
        api.queue(ToolCall(TOOL, {"reason": "MCP server updated",
                                  "prompt": "continue after restart"}))
        out = subprocess.run(net.enter([aegis_bin(), cli.name, "run", "first prompt"]),
                             env=cli_env(cli, aegis_env, home, api), cwd=project,
                             capture_output=True, text=True, timeout=300,
                             stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        assert f"aegis-mcp: restarting {cli.name} (reason: MCP server updated)" in out.stderr
        assert "second run here" in out.stdout
        # The tool ran in our server (reached through the config variable: the restart above
        # is its doing) and answered; the old run keeps that answer in its conversation unless
        # it was stopped before it wrote it (under load: opencode then records the call as
        # interrupted, and the restart prompt carries on).
        answer = json.dumps(api.tool_outputs(1))
        assert ("stopped and started again" in answer and "dropped" not in answer) or \
            answer == '["[Tool execution was interrupted]"]', answer
        # ... and the new run resumed the conversation with the restart prompt.
        assert "first prompt" in " ".join(api.texts(-1))
        assert last_message(api) == "continue after restart"


def test_a_background_agent_reports_its_answer_session_and_turns(
        cli: Cli, tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home = dirs(tmp_path)
    Path(aegis_env["AEGIS_CONFIG"]).write_text(f'[agents.{cli.name}]\ncommand = ["{cli.path}"]\n')
    with PrivateLoopback() as net, FakeChatCompletions(bind=net.run) as api, cleanup_pool():
        api.queue_text("the background answer")
        done = spawn_and_wait(net, cli.name, cli_env(cli, aegis_env, home, api), project)
        assert TASK in api.texts(-1)[-1]  # one message, never read as options
    assert done["result"] == "the background answer", done
    assert done["session_id"].startswith("ses_"), done
    assert done["iterations"] == 1 and done["num_turns"] == 1, done


@pytest.mark.parametrize("cli", CLIS[:1])  # the TUI: opencode's (Kilo's is its fork)
def test_the_tui_comes_back_in_its_conversation_after_the_models_restart(
        cli: Cli, tmp_path: Path, aegis_env: dict[str, str]) -> None:
    project, home = dirs(tmp_path)
    with PrivateLoopback() as net, FakeChatCompletions("default reply", bind=net.run) as api:
        api.queue(ToolCall(TOOL, {"reason": "MCP server updated", "prompt": "go on"}))
        env = {**cli_env(cli, aegis_env, home, api), "TERM": "xterm-256color"}
        # --prompt is sent in a new session (not in a resumed one: the restart's has none)
        command = net.enter([aegis_bin(), cli.name, "--prompt", "first prompt"])
        child = pexpect.spawn(command[0], command[1:], env=env, cwd=str(project), timeout=60,
                              encoding="utf-8", codec_errors="replace", dimensions=(40, 120))
        screen = Screen(child, rows=40, cols=120)
        try:
            screen.wait_for(r"restart_agent", timeout=90)  # the model called our tool ...
            # ... the old TUI is gone (the supervisor's notice comes after it), and all that
            # is drawn from here on is the new one's: the same conversation, resumed
            child.expect_exact(f"aegis-mcp: restarting {cli.name} (reason: MCP server updated)",
                               timeout=90)
            screen.screen.reset()
            screen.wait_for(r"first prompt(.|\n)*restart_agent", timeout=90)
            sock = control.socket_path(Path(env["AEGIS_RUNTIME_DIR"]), child.pid)
            status = status_once_servers_seen(sock, screen=screen)
            assert status["restart_count"] == 1 and status["mcp_servers_seen"], status
            assert status["agent_argv"][1:3] == ["--auto", "--continue"], status["agent_argv"]
            assert api.texts(0) == ["first prompt"]
        finally:
            child.kill(15)
            child.expect(pexpect.EOF, timeout=60)
