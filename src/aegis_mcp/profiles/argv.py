"""The agent's command line: the first start, every restart, and a headless run of the pool.

The user's arguments survive restarts (model, print mode, ...); only the first prompt is
replaced by the restart prompt, and resume flags the user gave are replaced by the profile's.
Telling the prompt from option values needs the profile's lists of options that take values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from aegis_mcp.errors import AegisError
from aegis_mcp.mcp.name import SERVER_NAME
from aegis_mcp.profiles.profile import AgentProfile


def _takes_value(profile: AgentProfile, arg: str) -> str:
    """'one', 'many' or '' for an option word (`--model`, but not `--model=x`)."""
    if "=" in arg:
        return ""
    if arg in profile.variadic_options:
        return "many"
    if arg in profile.value_options or arg in profile.prompt_options:
        return "one"
    return ""


def _prompt_option_index(profile: AgentProfile, args: list[str]) -> int | None:
    """Index of the word holding the value of a prompt option (`-p TEXT`, `--prompt=TEXT`)."""
    for i, arg in enumerate(args):
        if arg == "--":
            return None
        if arg.split("=", 1)[0] in profile.prompt_options:
            return i if "=" in arg else (i + 1 if i + 1 < len(args) else None)
    return None


def prompt_index(profile: AgentProfile, args: list[str]) -> int | None:
    """Index in `args` of the first positional argument (the prompt), if any; a leading mode
    word (`codex exec`) is not one."""
    i = 1 if args and args[0] in profile.modes else 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return i + 1 if i + 1 < len(args) else None
        if arg.startswith("-") and len(arg) > 1:
            kind = _takes_value(profile, arg)
            i += 1
            if kind == "one" and i < len(args):
                i += 1
            elif kind == "many":
                while i < len(args) and not args[i].startswith("-"):
                    i += 1
            continue
        return i
    return None


def _without_resume_flags(profile: AgentProfile, args: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if name in profile.drop_on_resume:
            i += 1
            # `--resume <id>` takes an id; `--continue` takes none.
            if "=" not in arg and _takes_value(profile, arg) == "one" and i < len(args) \
                    and not args[i].startswith("-") and i != prompt_index(profile, args):
                i += 1
            continue
        out.append(arg)
        i += 1
    return out


def without_options(profile: AgentProfile, args: list[str], names: tuple[str, ...]
                    ) -> list[str]:
    """`args` without the options `names` (`--mcp-config X`, `--mcp-config=X`) and their
    values, before a `--`: what the injected arguments take the place of."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return [*out, *args[i:]]
        name, eq, _ = arg.partition("=")
        if name in names:
            i += 1 if eq or _takes_value(profile, arg) != "one" else 2
            continue
        out.append(arg)
        i += 1
    return out


def with_injected(args: list[str], inject_args: list[str]) -> list[str]:
    """Injected options go last (before a `--`): put first, a variadic option such as
    `--mcp-config` would swallow the user's prompt; put after a `--`, they would be
    positional words."""
    if "--" in args:
        i = args.index("--")
        return [*args[:i], *inject_args, *args[i:]]
    return [*args, *inject_args]


def root_permission_flags(profile: AgentProfile, env: Mapping[str, str], as_root: bool
                          ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The profile's permission flags for an agent that runs as root or not, and those left
    out: Claude Code refuses --dangerously-skip-permissions as root (measured), unless its
    environment declares a sandbox (IS_SANDBOX=1); started with it, it would only fail."""
    flags = profile.permission_flags
    if not as_root or not profile.refuses_root_flags or env.get("IS_SANDBOX") == "1":
        return flags, ()
    return (tuple(f for f in flags if f not in profile.refuses_root_flags),
            tuple(f for f in flags if f in profile.refuses_root_flags))


def allow_tools_flags(profile: AgentProfile) -> list[str]:
    """The profile's flags that allow aegis-mcp's own tools, for this server's name."""
    return [f.replace("{server}", SERVER_NAME) for f in profile.allow_tools_flags]


def _start_flags(profile: AgentProfile, args: list[str]) -> list[str]:
    """The flags every start adds (permission, then our tools allowed), unless given; no
    permission flags when the user chose the permission mode with an option of its own."""
    options = args[:args.index("--")] if "--" in args else args
    chosen = any(a.split("=", 1)[0] in profile.permission_options for a in options)
    flags = [*(() if chosen else profile.permission_flags), *allow_tools_flags(profile)]
    return [f for f in flags if f not in args]


def is_subcommand(profile: AgentProfile, user_args: list[str]) -> bool:
    """`claude mcp list` and the like: a management command, not an agent session."""
    return bool(user_args) and user_args[0] in profile.subcommands


def is_mcp_check(profile: AgentProfile, user_args: list[str]) -> bool:
    """The CLI's own MCP health check (`amp mcp doctor`), which gets the injected server."""
    check = list(profile.mcp_check)
    return bool(check) and user_args[:len(check)] == check


def first_argv(profile: AgentProfile, executable: str, user_args: list[str],
               inject_args: list[str], session: str | None = None) -> list[str]:
    """The command line of the first start; `session` names its new session (the caller
    checked session.names_own_session)."""
    if is_subcommand(profile, user_args):
        extra = inject_args if is_mcp_check(profile, user_args) else []
        return [executable, *profile.command[1:], *with_injected(user_args, extra)]
    flags = _start_flags(profile, user_args)
    return [executable, *profile.command[1:],
            *_after_mode(profile, [*flags, *_naming(profile, session)],
                         with_injected(user_args, inject_args))]


def _after_mode(profile: AgentProfile, flags: list[str], args: list[str]) -> list[str]:
    """`flags` then `args`, but after a leading mode word: `opencode --auto run` is the TUI
    with a project named "run" (measured), `opencode run --auto` the one-shot run."""
    if args and args[0] in profile.modes:
        return [args[0], *flags, *args[1:]]
    return [*flags, *args]


def _naming(profile: AgentProfile, session: str | None) -> list[str]:
    return [profile.session_id_flag, session] if session and profile.session_id_flag else []


def resume_words(profile: AgentProfile, session: str | None) -> tuple[list[str], list[str]]:
    """The (prefix, flags) a restart resumes with: the known session's own when the profile
    can resume by id, else the profile's "latest" words."""
    if session and profile.resume_session:
        words = [w.replace("{session}", session) for w in profile.resume_session]
        return (words, []) if profile.resume_prefix else ([], words)
    return list(profile.resume_prefix), list(profile.resume_flags)


def restart_argv(profile: AgentProfile, executable: str, user_args: list[str],
                 inject_args: list[str], prompt: str | None, resume: bool = True,
                 session: str | None = None) -> list[str]:
    """The command line of a restart: resume flags plus the restart prompt, if any, in place of
    the user's first prompt. `session` is the session to resume (its id), or with
    `resume=False` (a fresh start with the same arguments) the name of the new one."""
    if is_subcommand(profile, user_args):
        return first_argv(profile, executable, user_args, inject_args)
    args = _without_resume_flags(profile, user_args) if resume else list(user_args)
    if resume and args and args[0] in profile.modes:
        return _mode_restart_argv(profile, executable, args, inject_args, prompt, session)
    if prompt is not None and takes_restart_prompt(profile, args):
        args = _with_prompt(profile, args, prompt)
    flags = _start_flags(profile, args)
    prefix, resume_flags = resume_words(profile, session) if resume else (
        [], _naming(profile, session))
    return [executable, *profile.command[1:], *prefix,
            *_after_mode(profile, [*flags, *resume_flags], with_injected(args, inject_args))]


def takes_restart_prompt(profile: AgentProfile, user_args: list[str]) -> bool:
    """Whether a restart of these arguments carries its prompt: a mode's resume form takes it
    (`opencode run ... PROMPT`), and so does a prompt option the user gave (`amp -x TEXT`),
    even where the profile's interactive form takes none."""
    return (bool(user_args) and user_args[0] in profile.modes) or profile.prompt != "none" \
        or _prompt_option_index(profile, user_args) is not None


def _with_prompt(profile: AgentProfile, args: list[str], prompt: str) -> list[str]:
    """`args` with `prompt` in place of the user's first prompt, or added."""
    at = _prompt_option_index(profile, args)
    if at is not None:  # `-p TEXT` or `--prompt=TEXT`
        name, eq, _ = args[at].partition("=")
        return [*args[:at], f"{name}={prompt}" if eq else prompt, *args[at + 1:]]
    if profile.prompt == "positional":
        at = prompt_index(profile, args)
        if at is None and profile.interactive_prompt:  # the interactive UI: it stays so
            return [*(w.replace("{prompt}", prompt) for w in profile.interactive_prompt), *args]
        if at is None:  # first: after an array option (`--add-dir a b`) it would become a value
            return [prompt, *args]
        return [*args[:at], prompt, *args[at + 1:]]
    flag = profile.prompt.split(":", 1)[1]  # option:<flag>
    if flag in args and args.index(flag) + 1 < len(args):
        at = args.index(flag) + 1
        return [*args[:at], prompt, *args[at + 1:]]
    return [*args, flag, prompt]


def _mode_restart_argv(profile: AgentProfile, executable: str, args: list[str],
                       inject_args: list[str], prompt: str | None,
                       session: str | None) -> list[str]:
    """`codex exec [opts] resume --last [flags] PROMPT [injected]`: the mode's own options stay
    before the resume words (its resume form does not take them all), and the prompt (the
    restart prompt, else the first one again) comes after them."""
    mode, rest = args[0], args[1:]
    idx = prompt_index(profile, rest)
    first = rest.pop(idx) if idx is not None else None
    if rest and rest[-1] == "--":
        rest.pop()
    again = prompt if prompt is not None else first
    flags = _start_flags(profile, rest)
    tail = [] if again is None else ["--", again] if again.startswith("-") else [again]
    prefix, resume_flags = resume_words(profile, session)
    return [executable, *profile.command[1:], mode, *rest, *prefix, *flags, *resume_flags,
            *inject_args, *tail]


def headless_argv(profile: AgentProfile, prompt: str, max_iterations: int | None,
                  env: dict[str, str] | None = None, chat_history: Path | None = None
                  ) -> tuple[list[str], bool, list[str]]:
    """The argv of a headless run of `profile` on `prompt`, whether the pool must enforce
    `max_iterations` itself (the agent has no turn limit flag), and notes for the status.
    `{prompt}` in the profile's headless_args becomes the task, `{chat_history}` the agent's
    own transcript file (Aider's, from which the runner takes its answer). The flags added
    here go before a `--` in headless_args, so that the task can stay last, after it."""
    notes: list[str] = []
    if not profile.headless_args:
        raise AegisError(f"agent type {profile.name!r} has no headless mode (set headless_args "
                         f"in [agents.{profile.name}] of the config)")
    _check_task_is_text(profile, prompt)
    args = [a.replace("{prompt}", prompt).replace("{chat_history}", str(chat_history or ""))
            for a in profile.headless_args]
    kept, dropped = root_permission_flags(profile, env if env is not None else os.environ,
                                          as_root=os.geteuid() == 0)
    flags = list(kept)
    if dropped:
        notes.append(f"running as root: left out {' '.join(dropped)} (the agent refuses it "
                     "as root unless IS_SANDBOX=1), so it may be denied tools")
    enforce = False
    if max_iterations is not None:
        if profile.max_turns_flag:
            flags += [profile.max_turns_flag, str(max_iterations)]
        else:
            enforce = True
    argv = [profile.executable(), *profile.command[1:], *with_injected(args, flags)]
    return argv, enforce, notes


def _check_task_is_text(profile: AgentProfile, prompt: str) -> None:
    """The task is untrusted text (a description from an MCP client): it must reach the agent as
    its prompt, never as an option of the agent CLI."""
    if not prompt.strip(" -"):
        # Measured: codex exec reads its prompt from stdin for `-`, argparse (aider) drops `--`.
        raise AegisError(f"the task {prompt!r} says nothing the agent can do: describe the task")
    if not prompt.startswith("-"):
        return
    args = list(profile.headless_args)
    for i, arg in enumerate(args):
        if arg == "{prompt}" and "--" not in args[:i]:
            raise AegisError(
                f"the task starts with '-' and agent type {profile.name!r} passes it as a word "
                f"of its own, which {profile.name} would read as an option: in "
                f"[agents.{profile.name}] headless_args, put \"--\" before \"{{prompt}}\" or "
                "use the --option={prompt} form")
