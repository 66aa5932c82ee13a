"""What a background agent is started with: its headless command line and its environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aegis_mcp import agentenv
from aegis_mcp.errors import AegisError
from aegis_mcp.paths import hooks_library
from aegis_mcp.profiles.argv import root_permission_flags, with_injected


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
    """The background agent's environment: what agentenv passes on of the caller's, plus
    AEGIS_AGENT_ID, its mark."""
    env = agentenv.inherited(os.environ if base is None else base, str(hooks_library()))
    env["AEGIS_AGENT_ID"] = agent_id
    return env
