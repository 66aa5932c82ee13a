"""What the agents aegis-mcp starts inherit of its caller's environment: one policy, for the
supervised agent and for the pool's background agents.

The caller's environment, minus:
- the marks of an agent session the caller is itself in: a nested Claude Code refuses to start
  with CLAUDECODE=1, and CURSOR_AGENT, CODEX_SANDBOX or GEMINI_CLI tell a CLI that it runs
  inside another one;
- aegis-mcp's own plumbing of that session (every AEGIS_* variable but the settings below:
  its control socket, supervisor mark, overlays, redirect, netmon log, pool runner mark, test
  seams), which belong to the agent they were made for: whoever starts the new agent gives it
  its own;
- the hooks library in LD_PRELOAD (the user's own preloads stay): the supervisor loads it
  afresh where its mode needs it;
- our server in a config variable (`config-env` injection, OPENCODE_CONFIG_CONTENT): the
  variable goes back to the user's own value, or away if they had none. Left in it, a
  background opencode would start a server that speaks to this session's supervisor.
aegis-mcp's settings stay (AEGIS_CONFIG, the state and runtime directories, the netmon limits).
Under sudo, privileges.User.agent_env then makes the result the user's.
"""

from __future__ import annotations

from collections.abc import Mapping

SESSION_MARKS = ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_SSE_PORT",
                 "CLAUDE_AGENT_SDK_VERSION", "CURSOR_AGENT", "CODEX_SANDBOX", "GEMINI_CLI")
KEPT_SETTINGS = ("AEGIS_CONFIG", "AEGIS_STATE_DIR", "AEGIS_RUNTIME_DIR",
                 "AEGIS_NETMON_MAX_BYTES", "AEGIS_NETMON_INTERVAL", "AEGIS_NETMON_BATCH_MS")


CONFIG_ENV = "AEGIS_CONFIG_ENV"
"""The name of the config variable the supervisor put our server in (mcp.injection)."""
CONFIG_ENV_ORIGINAL = "AEGIS_CONFIG_ENV_ORIGINAL"
"""The user's own value of that variable, when they had one."""


def inherited(base: Mapping[str, str], hooks_library: str) -> dict[str, str]:
    """`base` as the policy above passes it on to a new agent."""
    env = {k: v for k, v in base.items()
           if k not in SESSION_MARKS and (not k.startswith("AEGIS_") or k in KEPT_SETTINGS)}
    if name := base.get(CONFIG_ENV):
        if CONFIG_ENV_ORIGINAL in base:
            env[name] = base[CONFIG_ENV_ORIGINAL]
        else:
            env.pop(name, None)
    preload = [p for p in env.pop("LD_PRELOAD", "").split() if p and p != hooks_library]
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    return env


def for_background_agent(agent_id: str, base: Mapping[str, str]) -> dict[str, str]:
    """A pool agent's environment: the same policy, plus AEGIS_AGENT_ID, the mark by which the
    pool finds the agent's processes (an orphan's tree after its runner died)."""
    from aegis_mcp.paths import hooks_library

    env = inherited(base, str(hooks_library()))
    env["AEGIS_AGENT_ID"] = agent_id
    return env
