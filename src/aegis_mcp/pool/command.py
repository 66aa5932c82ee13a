"""What a background agent is started with: its headless command line and its environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aegis_mcp.errors import AegisError
from aegis_mcp.profiles.argv import with_injected

# Variables of the caller's own agent session that must not leak into a background agent:
# a nested claude refuses to start with CLAUDECODE=1, and the supervisor's hooks, control
# socket and MCP overlay belong to the foreground agent only.
_DROPPED_ENV = (
    "CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_SSE_PORT", "CLAUDE_AGENT_SDK_VERSION",
    "AEGIS_CONTROL", "AEGIS_SUPERVISOR_PID", "AEGIS_MCP_OVERLAY", "AEGIS_MCP_REDIRECT",
    "AEGIS_NETMON_LOG", "AEGIS_NETMON_MODE", "AEGIS_POOL_CRASHPOINT", "AEGIS_POOL_RUNNER",
    "LD_PRELOAD", "CURSOR_AGENT", "CODEX_SANDBOX", "GEMINI_CLI",
)


def headless_argv(profile: Any, prompt: str, max_iterations: int | None,
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
    flags = list(profile.permission_flags)
    # Claude Code accepts its permission-skipping flag as root only in a declared sandbox.
    sandbox = (env if env is not None else os.environ).get("IS_SANDBOX") == "1"
    if os.geteuid() == 0 and profile.refuses_root_flags and not sandbox:
        dropped = [f for f in flags if f in profile.refuses_root_flags]
        flags = [f for f in flags if f not in profile.refuses_root_flags]
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


def _check_task_is_text(profile: Any, prompt: str) -> None:
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


def agent_environment(agent_id: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The background agent's environment: the caller's, minus the variables of the caller's
    own agent session, plus AEGIS_AGENT_ID."""
    env = dict(os.environ if base is None else base)
    for key in _DROPPED_ENV:
        env.pop(key, None)
    env["AEGIS_AGENT_ID"] = agent_id
    return env
