"""GitHub Copilot CLI's and Amp's command lines and injections, as measured on the real CLIs
(Copilot 1.0.102, Amp 0.0.1790142911-g7618fb; see docs/agents.md): first start, restart, the
health check, a headless run, and the overlay each is given."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from aegis_mcp.errors import AegisError
from aegis_mcp.mcp import injection
from aegis_mcp.profiles.argv import (
    first_argv,
    headless_argv,
    restart_argv,
    takes_restart_prompt,
)
from aegis_mcp.profiles.profile import BUILTIN_PROFILES
from aegis_mcp.profiles.session import names_own_session, user_id

COPILOT = BUILTIN_PROFILES["copilot"]
AMP = BUILTIN_PROFILES["amp"]
SID = "0cb916db-26aa-40f2-86b5-1ba81b225fd2"
INJECT = ["--additional-mcp-config", "@/run/overlay.json"]


def test_copilot_names_its_session_and_a_restart_resumes_exactly_it() -> None:
    user = ["--model", "gpt-5", "-p", "fix the tests"]
    assert names_own_session(COPILOT, user)
    assert first_argv(COPILOT, "copilot", user, INJECT, session=SID) == [
        "copilot", "--allow-all", "--session-id", SID, *user, *INJECT]
    # the restart prompt takes the place of -p's value, the session its id
    assert restart_argv(COPILOT, "copilot", user, INJECT, "go on", session=SID) == [
        "copilot", "--allow-all", f"--resume={SID}", "--model", "gpt-5", "-p", "go on",
        *INJECT]
    # a session of the user's own: theirs is resumed, their resume words replaced
    theirs = ["--resume", "abc1234", "-p", "task"]
    assert user_id(COPILOT, theirs) == "abc1234" and not names_own_session(COPILOT, theirs)
    assert restart_argv(COPILOT, "copilot", theirs, [], None, session="abc1234") == [
        "copilot", "--allow-all", "--resume=abc1234", "-p", "task"]


def test_copilots_tui_gets_the_restart_prompt_with_i_and_resumes_the_latest_unnamed() -> None:
    # no positional prompt: the TUI's is -i, sent in a resumed session too (measured)
    assert takes_restart_prompt(COPILOT, [])
    assert restart_argv(COPILOT, "copilot", ["--model", "x"], INJECT, "go on", session=SID) == [
        "copilot", "--allow-all", f"--resume={SID}", "--model", "x", "-i", "go on", *INJECT]
    assert restart_argv(COPILOT, "copilot", ["-i", "first"], [], "go on") == [
        "copilot", "--allow-all", "--continue", "-i", "go on"]
    # an array option's words are not taken for anything else
    assert restart_argv(COPILOT, "copilot", ["--allow-tool", "write", "shell", "-i", "x"], [],
                        None, session=SID) == [
        "copilot", "--allow-all", f"--resume={SID}", "--allow-tool", "write", "shell", "-i",
        "x"]
    assert first_argv(COPILOT, "copilot", ["mcp", "list"], INJECT) == ["copilot", "mcp", "list"]


def test_copilot_session_is_read_off_the_file_it_holds_in_its_session_directory() -> None:
    pattern = re.compile(COPILOT.session_file)
    found = pattern.search(f"/root/.copilot/session-state/{SID}/inuse.18149.hold")
    assert found and found.group(1) == SID
    assert not pattern.search(f"/root/.copilot/session-state/{SID}/events.jsonl")
    assert not pattern.search("/root/.copilot/logs/.copilot-log.lock")


def test_amp_resumes_the_checkouts_last_thread_and_keeps_the_users_options() -> None:
    inject = ["--mcp-config", "/run/overlay.json"]
    assert first_argv(AMP, "amp", ["-m", "ultra"], inject) == [
        "amp", "--dangerously-allow-all", "-m", "ultra", *inject]
    # the TUI takes no prompt (its first message comes only on stdin): restarted without one
    assert not takes_restart_prompt(AMP, ["-m", "ultra"])
    assert restart_argv(AMP, "amp", ["-m", "ultra"], inject, "go on") == [
        "amp", "threads", "continue", "--last", "--dangerously-allow-all", "-m", "ultra",
        *inject]
    # execute mode takes it as -x's value, in the continued thread
    user = ["--stream-json", "-x", "first task"]
    assert takes_restart_prompt(AMP, user)
    assert restart_argv(AMP, "amp", user, inject, "go on") == [
        "amp", "threads", "continue", "--last", "--dangerously-allow-all", "--stream-json",
        "-x", "go on", *inject]
    assert restart_argv(AMP, "amp", ["--execute=first"], [], "go on")[-1] == "--execute=go on"


def test_amps_mcp_doctor_gets_the_injection_its_other_commands_do_not() -> None:
    inject = ["--mcp-config", "/run/overlay.json"]
    assert first_argv(AMP, "amp", ["mcp", "doctor"], inject) == [
        "amp", "mcp", "doctor", *inject]
    assert first_argv(AMP, "amp", ["mcp", "add", "x", "--", "cmd"], inject) == [
        "amp", "mcp", "add", "x", "--", "cmd"]
    assert first_argv(AMP, "amp", ["threads", "list"], inject) == ["amp", "threads", "list"]


@pytest.mark.parametrize("profile,words", [
    (COPILOT, ["--prompt=--help -v", "--output-format", "json", "--allow-all"]),
    (AMP, ["--execute=--help -v", "--stream-json", "--dangerously-allow-all"]),
], ids=["copilot", "amp"])
def test_a_headless_task_is_one_option_value_never_options(profile: object, words: list[str]
                                                           ) -> None:
    # clap (copilot) and amp's parser take `--prompt=-x` / `--execute=-x` as the text, where
    # `-p -x` / `-x -x` are errors (measured)
    p = replace(profile, command=(sys.executable,))  # type: ignore[type-var]
    argv, enforce, _notes = headless_argv(p, "--help -v", 3, {})
    assert argv == [sys.executable, *words]
    assert enforce  # neither has a turn limit flag: the pool counts the turns


def test_copilots_overlay_is_its_mcp_servers_file_named_with_an_at(tmp_path: Path) -> None:
    inj = injection.prepare(COPILOT, tmp_path, 42, {"AEGIS_CONTROL": "/run/x.sock"}, tmp_path,
                            "/home/u", None)
    assert inj.args[0] == "--additional-mcp-config" and inj.args[1].startswith("@")
    data = json.loads(Path(inj.args[1][1:]).read_text())
    entry = data["mcpServers"]["aegis-mcp"]
    assert entry["type"] == "stdio" and entry["env"] == {"AEGIS_CONTROL": "/run/x.sock"}
    assert [entry["command"], *entry["args"]] == injection.server_command()


def amp_overlay(tmp_path: Path, agent_args: list[str]) -> dict[str, object]:
    inj = injection.prepare(AMP, tmp_path, 42, {"AEGIS_CONTROL": "/run/x.sock"}, tmp_path,
                            "/home/u", None, agent_args=agent_args)
    assert inj.args[0] == "--mcp-config"
    return json.loads(Path(inj.args[1]).read_text())  # type: ignore[no-any-return]


def test_amps_overlay_is_a_flat_map_without_a_type(tmp_path: Path) -> None:
    data = amp_overlay(tmp_path, [])
    # Amp rejects a `type` key ("Unrecognized key") and any wrapper key (measured)
    assert list(data) == ["aegis-mcp"]
    assert set(data["aegis-mcp"]) == {"command", "args", "env"}  # type: ignore[arg-type]


def test_amp_reads_only_the_last_mcp_config_so_the_users_own_is_merged_into_ours(
        tmp_path: Path) -> None:
    theirs = {"mine": {"command": "my-server"}, "aegis-mcp": {"command": "old"}}
    (tmp_path / "own.json").write_text(json.dumps(theirs))
    for args in (["--mcp-config", "own.json"], ["--mcp-config=own.json"],
                 ["--mcp-config", json.dumps(theirs)], ["--mcp-config", "x.json",
                                                         "--mcp-config", "own.json"]):
        data = amp_overlay(tmp_path, [*args, "-m", "ultra"])
        assert sorted(data) == ["aegis-mcp", "mine"], args
        assert data["aegis-mcp"]["command"] != "old"  # type: ignore[index]
    # after `--` it is no option of theirs
    assert list(amp_overlay(tmp_path, ["--", "--mcp-config", "own.json"])) == ["aegis-mcp"]


@pytest.mark.parametrize("value,message", [
    ("missing.json", "cannot read your --mcp-config file"),
    ("{not json", "your --mcp-config value is not a JSON object"),
    ("list.json", "is not a JSON object"),
])
def test_a_users_mcp_config_amp_could_not_read_is_one_clear_error(
        tmp_path: Path, value: str, message: str) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(AegisError, match=message):
        amp_overlay(tmp_path, ["--mcp-config", value])
