"""The agent's command lines: first start and restart, per built-in profile."""

from __future__ import annotations

from dataclasses import replace

from aegis_mcp.profiles.argv import allow_tools_flags, first_argv, prompt_index, restart_argv
from aegis_mcp.profiles.profile import BUILTIN_PROFILES
from aegis_mcp.profiles.session import user_id

CLAUDE = BUILTIN_PROFILES["claude"]
INJECT = ["--mcp-config", "/run/overlay.json"]
ALLOW = "--allowedTools=mcp__aegis-mcp"


def test_claude_first_start_puts_injection_after_the_prompt() -> None:
    argv = first_argv(CLAUDE, "/bin/claude", ["fix the tests"], INJECT)
    assert argv == ["/bin/claude", "--dangerously-skip-permissions", ALLOW,
                    "fix the tests", *INJECT]


def test_claude_restart_replaces_only_the_prompt_and_keeps_options() -> None:
    user = ["--model", "opus", "-p", "first prompt", "--allowedTools", "Bash", "Read"]
    argv = restart_argv(CLAUDE, "claude", user, INJECT, "go on")
    assert argv == ["claude", "--dangerously-skip-permissions", ALLOW,
                    "--continue", "--model", "opus",
                    "-p", "go on", "--allowedTools", "Bash", "Read", *INJECT]


def test_claude_restart_without_prompt_keeps_the_first_prompt() -> None:
    argv = restart_argv(CLAUDE, "claude", ["-p", "first"], [], None)
    assert argv == ["claude", "--dangerously-skip-permissions", ALLOW, "--continue",
                    "-p", "first"]


def test_claude_users_resume_flags_are_replaced_by_continue() -> None:
    argv = restart_argv(CLAUDE, "claude", ["--resume", "abc123", "--continue", "hi"], [], "p")
    assert argv == ["claude", "--dangerously-skip-permissions", ALLOW, "--continue", "p"]


def test_prompt_after_a_variadic_option_is_what_claude_would_take_too() -> None:
    assert prompt_index(CLAUDE, ["--add-dir", "a", "b"]) is None
    assert prompt_index(CLAUDE, ["--model=opus", "hello"]) == 1
    assert prompt_index(CLAUDE, ["--", "-starts-with-dash"]) == 1


def test_codex_resumes_with_its_subcommand() -> None:
    codex = BUILTIN_PROFILES["codex"]
    argv = restart_argv(codex, "codex", ["-m", "o3"], ["-c", "x=1"], "continue")
    assert argv == ["codex", "resume", "--last", "--dangerously-bypass-approvals-and-sandbox",
                    "continue", "-m", "o3", "-c", "x=1"]


def test_codex_exec_resumes_with_exec_resume_and_keeps_its_options_before_it() -> None:
    codex = BUILTIN_PROFILES["codex"]
    user = ["exec", "--skip-git-repo-check", "-s", "read-only", "first task"]
    assert restart_argv(codex, "codex", user, ["-c", "x=1"], "go on") == [
        "codex", "exec", "--skip-git-repo-check", "-s", "read-only", "resume", "--last",
        "--dangerously-bypass-approvals-and-sandbox", "-c", "x=1", "go on"]
    # no restart prompt: the first one is sent again, as `claude -p` gets it again
    assert restart_argv(codex, "codex", ["exec", "--json", "task"], [], None)[-1] == "task"
    # a fresh start after a failed resume keeps `exec` and replaces only the prompt; the
    # permission flag follows the mode word, as on a resume
    assert restart_argv(codex, "codex", user, [], "go on", resume=False) == [
        "codex", "exec", "--dangerously-bypass-approvals-and-sandbox", "--skip-git-repo-check",
        "-s", "read-only", "go on"]
    assert restart_argv(codex, "codex", ["exec", "--", "-dash task"], [], "-dash again") == [
        "codex", "exec", "resume", "--last", "--dangerously-bypass-approvals-and-sandbox",
        "--", "-dash again"]


def test_aider_takes_no_restart_prompt_and_restores_history() -> None:
    aider = BUILTIN_PROFILES["aider"]
    argv = restart_argv(aider, "aider", ["--model", "gpt-4"], [], "ignored")
    assert argv == ["aider", "--yes-always", "--restore-chat-history", "--model", "gpt-4"]


def test_cursor_approves_the_injected_server_and_continues() -> None:
    cursor = BUILTIN_PROFILES["cursor"]
    first = first_argv(cursor, "cursor-agent", ["--model", "sonnet-4", "fix it"], [])
    assert first == ["cursor-agent", "--force", "--approve-mcps", "--model", "sonnet-4", "fix it"]
    argv = restart_argv(cursor, "cursor-agent", ["--resume", "chat1", "fix it"], [], "go on")
    assert argv == ["cursor-agent", "--force", "--approve-mcps", "--continue", "go on"]


def test_gemini_resumes_latest() -> None:
    gemini = BUILTIN_PROFILES["gemini"]
    argv = restart_argv(gemini, "gemini", ["-m", "pro", "first"], [], "next")
    assert argv == ["gemini", "--yolo", "--resume", "latest", "-m", "pro", "next"]


def test_gemini_restart_prompt_replaces_the_value_of_its_prompt_option() -> None:
    gemini = BUILTIN_PROFILES["gemini"]
    argv = restart_argv(gemini, "gemini", ["-p", "first", "-m", "pro"], [], "next")
    assert argv == ["gemini", "--yolo", "--resume", "latest", "-p", "next", "-m", "pro"]
    argv = restart_argv(gemini, "gemini", ["--prompt-interactive=first"], [], "next")
    assert argv[-1] == "--prompt-interactive=next"
    # no restart prompt: the first one is kept; a session id gives way to --resume latest
    argv = restart_argv(gemini, "gemini", ["--session-id", "u-1", "-p", "first"], [], None)
    assert argv == ["gemini", "--yolo", "--resume", "latest", "-p", "first"]
    # an array option takes every following word: a new prompt goes before it
    argv = restart_argv(gemini, "gemini", ["--include-directories", "a", "b"], [], "next")
    assert argv == ["gemini", "--yolo", "--resume", "latest", "next",
                    "--include-directories", "a", "b"]


def test_fresh_start_after_failed_resume_has_no_resume_flag() -> None:
    argv = restart_argv(CLAUDE, "claude", ["first"], [], "again", resume=False)
    assert argv == ["claude", "--dangerously-skip-permissions", ALLOW, "again"]


def test_management_subcommands_pass_through_untouched() -> None:
    assert first_argv(CLAUDE, "claude", ["mcp", "list"], INJECT) == ["claude", "mcp", "list"]
    gemini = BUILTIN_PROFILES["gemini"]
    assert restart_argv(gemini, "gemini", ["mcp", "list"], [], "p") == ["gemini", "mcp", "list"]
    # a prompt that happens to start with another word is still a session
    assert first_argv(CLAUDE, "claude", ["mcpx"], [])[1] == "--dangerously-skip-permissions"


SID = "3f2c1a9e-7b6d-4e5f-8a9b-0c1d2e3f4a5b"


def test_claude_first_start_names_its_session_and_a_restart_resumes_exactly_it() -> None:
    first = first_argv(CLAUDE, "claude", ["-p", "task"], INJECT, session=SID)
    assert first == ["claude", "--dangerously-skip-permissions", ALLOW, "--session-id", SID, "-p",
                     "task", *INJECT]
    # the user's own --session-id is dropped: claude refuses it next to --resume
    user = ["--session-id", SID, "-p", "task", "--model", "opus"]
    assert restart_argv(CLAUDE, "claude", user, INJECT, "go on", session=SID) == [
        "claude", "--dangerously-skip-permissions", ALLOW, "--resume", SID, "-p", "go on",
        "--model", "opus", *INJECT]
    # not known: the directory's latest, as before
    assert "--continue" in restart_argv(CLAUDE, "claude", ["-p", "task"], [], "go on")
    # a fresh start after a failed resume names a new session
    fresh = restart_argv(CLAUDE, "claude", ["-p", "task"], [], "go on", resume=False,
                         session="new-id")
    assert fresh == ["claude", "--dangerously-skip-permissions", ALLOW, "--session-id", "new-id",
                     "-p", "go on"]


def test_without_a_known_session_the_latest_words_stay() -> None:
    codex = BUILTIN_PROFILES["codex"]
    gemini = BUILTIN_PROFILES["gemini"]
    assert restart_argv(codex, "codex", ["exec", "t"], [], "p")[:4] == [
        "codex", "exec", "resume", "--last"]
    assert restart_argv(gemini, "gemini", ["t"], [], "p")[2:4] == ["--resume", "latest"]


def test_gemini_names_its_session_and_resumes_exactly_it() -> None:
    gemini = BUILTIN_PROFILES["gemini"]
    assert first_argv(gemini, "gemini", ["-p", "t"], [], session=SID) == [
        "gemini", "--yolo", "--session-id", SID, "-p", "t"]
    assert restart_argv(gemini, "gemini", ["--session-id", SID, "-p", "t"], [], "go on",
                        session=SID) == ["gemini", "--yolo", "--resume", SID, "-p", "go on"]


def test_codex_resumes_its_own_session_by_id_in_place_of_resume_last() -> None:
    codex = BUILTIN_PROFILES["codex"]
    assert restart_argv(codex, "codex", ["exec", "--json", "task"], [], "go on",
                        session=SID) == [
        "codex", "exec", "--json", "resume", SID,
        "--dangerously-bypass-approvals-and-sandbox", "go on"]
    assert restart_argv(codex, "codex", ["-m", "o3"], [], "go on", session=SID)[:3] == [
        "codex", "resume", SID]


def test_codex_session_is_read_off_its_open_rollout_file() -> None:
    import re

    pattern = re.compile(BUILTIN_PROFILES["codex"].session_file)
    sid = "01a233b7-2b63-7001-bfec-f782093914c5"
    found = pattern.search(f"/home/u/.codex/sessions/2026/12/01/rollout-2026-12-01T22-26-11-"
                           f"{sid}.jsonl")
    assert found and found.group(1) == sid
    assert not pattern.search(f"/home/u/.codex/thread-writer-locks/{sid}.lock")
    assert not pattern.search(f"/tmp/x/rollout-{sid}.jsonl")  # not codex's sessions


def test_aegis_tools_stay_allowed_when_the_permission_flag_is_left_out() -> None:
    # as plain root the supervisor starts claude without its permission flag
    root = replace(CLAUDE, permission_flags=())
    assert allow_tools_flags(root) == [ALLOW]
    argv = first_argv(root, "claude", ["fix it"], INJECT)
    assert argv == ["claude", ALLOW, "fix it", *INJECT]
    # one word: claude's variadic --allowedTools does not take the prompt as a tool
    assert prompt_index(root, argv[1:]) == 1
    argv = restart_argv(root, "claude", ["-p", "first"], INJECT, "go on")
    assert argv == ["claude", ALLOW, "--continue", "-p", "go on", *INJECT]
    codex = restart_argv(BUILTIN_PROFILES["codex"], "codex", ["exec", "task"], [], "p")
    assert not [a for a in codex if "allowed" in a.lower()]  # its bypass flag covers them


def test_aegis_tools_allowed_once_when_the_user_allowed_them_too() -> None:
    argv = first_argv(CLAUDE, "claude", [ALLOW, "hi"], [])
    assert argv.count(ALLOW) == 1
    assert first_argv(CLAUDE, "claude", ["mcp", "list"], [])[1:] == ["mcp", "list"]


def test_the_permission_flag_claude_refuses_as_root_is_left_out_unless_in_a_sandbox() -> None:
    from aegis_mcp.profiles.argv import root_permission_flags

    claude = BUILTIN_PROFILES["claude"]
    flag = "--dangerously-skip-permissions"
    assert root_permission_flags(claude, {}, as_root=True) == ((), (flag,))
    assert root_permission_flags(claude, {"IS_SANDBOX": "1"}, as_root=True) == ((flag,), ())
    assert root_permission_flags(claude, {}, as_root=False) == ((flag,), ())
    codex = BUILTIN_PROFILES["codex"]  # refuses nothing as root
    assert root_permission_flags(codex, {}, as_root=True) == (codex.permission_flags, ())


def test_opencode_flags_follow_the_run_word_and_resume_the_session_or_the_latest() -> None:
    for name in ("opencode", "kilo"):
        p = BUILTIN_PROFILES[name]
        # `opencode --auto run` would be the TUI in a project named "run" (measured)
        assert first_argv(p, name, ["run", "-m", "fake/m", "task"], []) == [
            name, "run", "--auto", "-m", "fake/m", "task"]
        assert restart_argv(p, name, ["run", "-m", "fake/m", "task"], [], "go on") == [
            name, "run", "-m", "fake/m", "--auto", "--continue", "go on"]
        # the session the user named is resumed by its id, their -s replaced
        user = ["run", "-s", "ses_1", "task"]
        assert user_id(p, user) == "ses_1"
        assert restart_argv(p, name, user, [], "-go on", session="ses_1") == [
            name, "run", "--auto", "--session", "ses_1", "--", "-go on"]
        # the TUI ignores --prompt in a resumed session (measured): no restart prompt there
        assert restart_argv(p, name, ["-m", "x/y"], [], "go on") == [
            name, "--auto", "--continue", "-m", "x/y"]
        assert restart_argv(p, name, ["proj"], [], "go on", session="ses_2") == [
            name, "--auto", "--session", "ses_2", "proj"]
        # management commands pass through
        assert first_argv(p, name, ["mcp", "list"], []) == [name, "mcp", "list"]


def test_a_mode_takes_the_restart_prompt_where_the_tui_takes_none() -> None:
    from aegis_mcp.profiles.argv import takes_restart_prompt

    opencode = BUILTIN_PROFILES["opencode"]
    assert takes_restart_prompt(opencode, ["run", "task"])
    assert not takes_restart_prompt(opencode, ["-m", "x/y"])
    assert not takes_restart_prompt(BUILTIN_PROFILES["aider"], [])
    assert takes_restart_prompt(BUILTIN_PROFILES["claude"], [])


def test_qwen_names_its_session_and_resumes_exactly_it_with_the_restart_prompt() -> None:
    qwen = BUILTIN_PROFILES["qwen"]
    assert first_argv(qwen, "qwen", ["fix it"], INJECT, session=SID) == [
        "qwen", "--yolo", "--session-id", SID, "fix it", *INJECT]
    # a one-shot run: the restart prompt in place of the first, positional
    assert restart_argv(qwen, "qwen", ["-m", "m", "fix it"], INJECT, "go on", session=SID) == [
        "qwen", "--yolo", "--resume", SID, "-m", "m", "go on", *INJECT]
    # the user's own -p or -i: its value replaced, the mode kept
    assert restart_argv(qwen, "qwen", ["-i", "fix it"], [], "go on", session=SID) == [
        "qwen", "--yolo", "--resume", SID, "-i", "go on"]
    # no session known (the user's --continue): the directory's latest
    assert restart_argv(qwen, "qwen", ["-c", "fix it"], [], "go on") == [
        "qwen", "--yolo", "--continue", "go on"]
    assert user_id(qwen, ["-r", SID, "fix it"]) == SID


def test_a_qwen_tui_restart_stays_interactive() -> None:
    # A positional prompt is a one-shot run even in a terminal (measured on 0.24.4): the TUI,
    # started without one, gets the restart prompt as -i's value, in one word whatever it is.
    qwen = BUILTIN_PROFILES["qwen"]
    assert restart_argv(qwen, "qwen", ["--add-dir", "a", "b"], INJECT, "-go on",
                        session=SID) == [
        "qwen", "--yolo", "--resume", SID, "--prompt-interactive=-go on", "--add-dir", "a", "b",
        *INJECT]
    assert restart_argv(qwen, "qwen", [], [], None, session=SID) == [
        "qwen", "--yolo", "--resume", SID]
    # a fresh start after a failed resume keeps the prompt, interactive too
    assert restart_argv(qwen, "qwen", [], [], "go on", resume=False, session=SID) == [
        "qwen", "--yolo", "--session-id", SID, "--prompt-interactive=go on"]
    # gemini's positional prompt is interactive already: no such words there
    gemini = BUILTIN_PROFILES["gemini"]
    assert restart_argv(gemini, "gemini", [], [], "go on")[-1] == "go on"


def test_options_an_injection_stands_in_for_are_left_out() -> None:
    from aegis_mcp.profiles.argv import without_options

    qwen = BUILTIN_PROFILES["qwen"]
    flag = ("--mcp-config",)
    assert without_options(qwen, ["--mcp-config", "a.json", "-m", "x", "task"], flag) == [
        "-m", "x", "task"]
    assert without_options(qwen, ["--mcp-config={}", "task", "--", "--mcp-config", "b"],
                           flag) == ["task", "--", "--mcp-config", "b"]
    assert without_options(qwen, ["task"], ()) == ["task"]


def test_a_permission_mode_the_user_chose_replaces_the_permission_flag() -> None:
    # Qwen Code refuses --yolo with --approval-mode (measured on 0.24.4): the user's choice wins
    qwen = BUILTIN_PROFILES["qwen"]
    assert first_argv(qwen, "qwen", ["--approval-mode", "plan", "t"], []) == [
        "qwen", "--approval-mode", "plan", "t"]
    assert restart_argv(qwen, "qwen", ["--approval-mode=auto-edit", "t"], [], "go on",
                        session=SID) == [
        "qwen", "--resume", SID, "--approval-mode=auto-edit", "go on"]
    # a prompt that says so is no choice of the user's
    assert first_argv(qwen, "qwen", ["--", "--approval-mode"], [])[1] == "--yolo"
    # Gemini CLI refuses them together too (measured on 0.61.0, the registry's latest)
    gemini = BUILTIN_PROFILES["gemini"]
    assert "--yolo" not in first_argv(gemini, "gemini", ["--approval-mode", "plan"], [])
    assert "--yolo" in first_argv(gemini, "gemini", ["-p", "hi"], [])
