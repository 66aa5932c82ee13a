"""Agent profiles: how to find, start, resume, prompt and inject each agent CLI.

Built-in profiles cover Claude Code, Cursor's CLI, Aider, Codex, Gemini CLI, Qwen Code, opencode,
Kilo, GitHub Copilot CLI and Amp. Users add or override profiles in the `[agents.<name>]` tables
of their config file (see `paths.config_file`). About 800 lines, half of them the built-in table:
each CLI's measured facts, kept together.
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from aegis_mcp.errors import AegisError
from aegis_mcp.paths import config_file

# The versions mcp_waits_since accepts: what version.parse_version reads.
_VERSION = re.compile(r"\d+\.\d+\.\d+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Injection = Literal["mcp-config", "codex-config", "config-env", "preload", "none"]
INJECTIONS: tuple[str, ...] = ("mcp-config", "codex-config", "config-env", "preload", "none")

MCP_ENTRY_SHAPES = ("stdio", "opencode", "amp")
"""How one MCP server is written in a CLI's own config schema (mcp.injection.server_entry):
`stdio` is `{"type": "stdio", "command", "args", "env"}` (Claude Code, Gemini, Cursor, Copilot);
`opencode` is `{"type": "local", "command": [argv], "environment"}` (opencode, Kilo);
`amp` is `{"command", "args", "env"}`, no `type` (Amp rejects one: "Unrecognized key")."""


# The variables that point an agent at its API somewhere else: their host and port are
# allowed implicitly by a network policy (netmon.policy). A profile names its own
# (`api_env`); a generic command gets them all.
ANTHROPIC_URLS = ("ANTHROPIC_BASE_URL", "ANTHROPIC_BEDROCK_BASE_URL",
                  "ANTHROPIC_VERTEX_BASE_URL", "ANTHROPIC_FOUNDRY_BASE_URL")
OPENAI_URLS = ("OPENAI_BASE_URL", "OPENAI_API_BASE")
GEMINI_URLS = ("GOOGLE_GEMINI_BASE_URL", "GOOGLE_VERTEX_BASE_URL", "CODE_ASSIST_ENDPOINT")
OTHER_URLS = ("OLLAMA_API_BASE", "OLLAMA_HOST")
API_URLS = (*ANTHROPIC_URLS, *OPENAI_URLS, *GEMINI_URLS, *OTHER_URLS)

@dataclass(frozen=True)
class AgentProfile:
    name: str
    command: tuple[str, ...]
    """Executable (looked up on PATH) and fixed leading arguments."""
    alternatives: tuple[str, ...] = ()
    """Other executable names tried, in order, when `command[0]` is not on PATH."""
    install_hint: str = ""
    permission_flags: tuple[str, ...] = ()
    """Added to every start so the agent does not stop to ask for permission."""
    permission_options: tuple[str, ...] = ()
    """Options with which the user chooses the permission mode themselves (Qwen Code's
    `--approval-mode`): when one is given, the permission flags are not added (the CLI
    refuses both together)."""
    resume_flags: tuple[str, ...] = ()
    """Added on restart to resume the last conversation of the working directory."""
    resume_prefix: tuple[str, ...] = ()
    """Subcommand words put right after the executable on restart (`codex resume --last`)."""
    modes: tuple[str, ...] = ()
    """First words that choose a run mode with a resume form of its own: the mode and the
    user's options for it stay before `resume_prefix` (`codex exec -s read-only resume --last
    PROMPT`)."""
    drop_on_resume: tuple[str, ...] = ()
    """User flags that are dropped on restart because the resume flags replace them."""
    resume_session: tuple[str, ...] = ()
    """Resume words for a known session, `{session}` its id (`--resume {session}`): on
    restart they take the place of `resume_prefix` when the profile has one, else of
    `resume_flags`. Empty: the CLI resumes only its latest conversation, which with two
    sessions in one directory may be the other one's (the supervisor says so once)."""
    session_id_flag: str = ""
    """The option that names a new session (`--session-id <uuid>`): each fresh start gets
    one, so the supervisor knows its agent's session from the start."""
    session_id_options: tuple[str, ...] = ()
    """Options whose value is the id of the session the user chose (`--resume <id>`)."""
    session_file: str = ""
    """A regular expression over the paths the agent's processes hold open whose group 1 is
    the session id (Codex keeps `~/.codex/sessions/.../rollout-<time>-<id>.jsonl` open while it
    runs): how the supervisor learns the session of a CLI that cannot be told one."""
    own_history: tuple[str, ...] = ()
    """Words that give each supervisor's agent a conversation record of its own, `{history}`
    its path in the runtime directory (Aider: `--chat-history-file {history}`), added unless
    the user gave that option: a restart restores exactly it, not a file of the directory's
    that another terminal's agent writes too."""
    session_hook: str = ""
    """How the agent reports the session it is in now (after a `/clear`, say): `claude-settings`
    (a SessionStart hook given with `--settings`, see session.py), or empty for none."""
    prompt: str = "positional"
    """How a restart prompt is passed: `positional`, `option:<flag>`, or `none`."""
    interactive_prompt: tuple[str, ...] = ()
    """For a CLI whose positional prompt is a one-shot run even in a terminal (Qwen Code): the
    words that start its interactive UI with a first message, `{prompt}` the text
    (`--prompt-interactive={prompt}`). A restart of a start without a prompt (the interactive
    UI) passes the restart prompt so, not positionally, and stays interactive."""
    prompt_options: tuple[str, ...] = ()
    """Options whose value is the prompt (`gemini -p TEXT`): when the user gave one, the
    restart prompt replaces its value instead of taking the positional place."""
    value_options: tuple[str, ...] = ()
    """Options that take one value (so that value is not mistaken for the prompt)."""
    variadic_options: tuple[str, ...] = ()
    """Options that take every following word up to the next option."""
    injection: Injection = "none"
    """How aegis-mcp's MCP server reaches the agent (mcp/injection.py): `mcp-config` (a file
    named by `mcp_config_flag`), `codex-config` (`-c` overrides), `config-env` (the whole
    config in the environment variable `config_env`), `preload` (the LD_PRELOAD redirect of
    `config_files`) or `none`."""
    mcp_config_flag: tuple[str, ...] = ("--mcp-config", "{file}")
    """For `mcp-config`: the words that name the overlay file, `{file}` its path."""
    mcp_config_last_wins: bool = False
    """For `mcp-config`: the CLI reads one value of `mcp_config_flag` (Amp the last it is
    given, Qwen Code refuses two): the user's own file or JSON text is merged into our overlay
    (their servers kept, ours added) and their flag left out of the command line."""
    mcp_check: tuple[str, ...] = ()
    """The words of the CLI's own MCP health check among its `subcommands` (`mcp doctor`):
    run through aegis-mcp, it gets the injection too, so that it shows our server connect."""
    config_env: str = ""
    """For `config-env`: the environment variable the CLI reads its whole config from, as
    JSON (`OPENCODE_CONFIG_CONTENT`). Our server is added to the user's own value of it, and
    the CLI merges it over its config files, keeping their servers (measured)."""
    mcp_entry: str = "stdio"
    """The shape of a server entry in the CLI's schema: one of MCP_ENTRY_SHAPES."""
    config_files: tuple[str, ...] = ()
    """MCP config files the LD_PRELOAD redirect overlays (`~` is the agent's home)."""
    mcp_servers_key: str = "mcpServers"
    """The key under which the config lists MCP servers; empty: the whole file is the map of
    servers (Amp's `--mcp-config`)."""
    static_binary: bool = False
    """Known to be statically linked: LD_PRELOAD hooks cannot see it."""
    api_hosts: tuple[str, ...] = ()
    """What the agent must reach to run at all (its model API, its sign-in), as `--allow`
    takes it (`api.anthropic.com`, `*.example.com:443`): a network policy's allow-list allows
    them without asking, unless a deny names them (`aegis-mcp profiles` shows them)."""
    api_env: tuple[str, ...] = ()
    """Variables whose URL points the agent at its API elsewhere (`ANTHROPIC_BASE_URL`): the
    host and port of each one set are allowed the same way. Empty: every such variable
    aegis-mcp knows (API_URLS)."""
    headless_args: tuple[str, ...] = ()
    """Arguments for a headless run of one task (pool); `{prompt}` is replaced by the task.
    The task is untrusted text: it must never be read as an option, so it comes after a `--`
    or in an `--option={prompt}` word, whichever the agent's parser honours (measured per CLI
    below). The permission and turn limit flags go before the `--`."""
    subcommands: tuple[str, ...] = ()
    """First words that make the run a management command (`claude mcp list`, `gemini mcp
    list`), passed through as given: no permission, resume or injected flags."""
    max_turns_flag: str = ""
    """The agent's own turn limit flag, when it has one (`--max-turns`)."""
    refuses_root_flags: tuple[str, ...] = ()
    """Permission flags the agent refuses when it runs as root."""
    allow_tools_flags: tuple[str, ...] = ()
    """Added to every start so that aegis-mcp's own tools run without asking, also when the
    permission flags are left out (as root); `{server}` is the injected server's name. Each
    flag is one word (`--allowedTools=...`): a variadic option given apart from its value
    would take the user's prompt as a second value."""
    interrupts: int = 1
    """SIGINTs sent to stop it, like Ctrl-C presses (Aider exits only on the second)."""
    mcp_readiness: str = ""
    """Whether the CLI itself waits for MCP servers that are still connecting before its first
    turn uses them, as measured, by version (`aegis-mcp profiles` shows it)."""
    mcp_waits_since: str = ""
    """The first version of the CLI that waits so (measured): the supervisor warns at its
    start when the installed one is older (see version.py). Empty: not known, no warning."""
    min_node: str = ""
    """The oldest Node.js major version the CLI asks for (its package's `engines`), for a
    Node script: the supervisor says one line at its start when the `node` that would run it
    is older (`node --version`, once; version.node_notice)."""
    verified: tuple[str, ...] = ()
    """What this project's end-to-end tests (tests/e2e) check with the real CLI, offline, on
    the versions scripts/test pins, each `what: versions` (`injection`, `resume`, `headless`):
    `aegis-mcp profiles` shows it."""
    description: str = ""

    def executable(self, extra_dirs: tuple[str, ...] = ()) -> str:
        """The absolute path of the agent's executable (on PATH, then in `extra_dirs`), or an
        AegisError that says how to install it."""
        search = os.pathsep.join([os.environ.get("PATH", os.defpath), *extra_dirs])
        for name in (self.command[0], *self.alternatives):
            found = (shutil.which(name, path=search) if os.sep not in name
                     else (name if _is_exe(name) else None))
            if found:
                return found
        from aegis_mcp.display import plain
        from aegis_mcp.pathcheck import why_not_runnable

        names = (self.command[0], *self.alternatives)
        for name in names:  # there, but it cannot run: say so, not "not found"
            if why := why_not_runnable(name, search):
                subject = f"{plain(name)}: " if os.sep in name else ""
                raise AegisError(f"{self.name}: {subject}{why}")
        hint = f"; install it with: {self.install_hint}" if self.install_hint else ""
        where = " on PATH" if any(os.sep not in n for n in names) else ""
        raise AegisError(f"{self.name}: executable not found{where} (looked for "
                         f"{', '.join(names)}){hint}")


# Where per-user installers put agent CLIs (claude's native installer, npm --prefix ~/.npm-global,
# bun, volta, pipx): sudo's secure_path does not have them, so `sudo aegis-mcp claude` would not
# find the user's own claude without this.
USER_BIN_DIRS = (".local/bin", ".claude/local", ".npm-global/bin", "bin", ".bun/bin",
                 ".volta/bin")


def user_bin_dirs(home: str) -> tuple[str, ...]:
    return tuple(os.path.join(home, d) for d in USER_BIN_DIRS)


def _is_exe(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


_CLAUDE_VALUE_OPTIONS = (
    "--model", "--fallback-model", "--output-format", "--input-format", "--permission-mode",
    "--append-system-prompt", "--system-prompt", "--system-prompt-file", "--max-turns",
    "--session-id", "--settings", "--agents", "--setting-sources", "--max-budget-usd",
    "--json-schema", "--agent", "--debug-file", "--effort", "--name", "-n",
)
_CLAUDE_VARIADIC_OPTIONS = (
    "--mcp-config", "--allowedTools", "--allowed-tools", "--disallowedTools",
    "--disallowed-tools", "--add-dir", "--tools", "--betas", "--plugin-dir",
)

_QWEN_VALUE_OPTIONS = (
    "--telemetry-target", "--telemetry-otlp-endpoint", "--telemetry-otlp-protocol",
    "--telemetry-outfile", "--proxy", "-m", "--model", "--system-prompt",
    "--append-system-prompt", "--output-style", "--sandbox-image", "--approval-mode",
    "--channel", "--mcp-config", "--openai-logging-dir", "--openai-api-key", "--openai-base-url",
    "--input-format", "-o", "--output-format", "--json-fd", "--json-file", "--json-schema",
    "--input-file", "-r", "--resume", "--session-id", "--max-session-turns", "--max-wall-time",
    "--max-tool-calls", "--max-subagent-depth", "--auth-type",
    # optional values, which its parser takes when one follows
    "--worktree",
)

# opencode and Kilo (a fork of it) share their options, resume forms, MCP schema and events.
_OPENCODE_VALUE_OPTIONS = (
    "--log-level", "--port", "--hostname", "--mdns-domain", "-m", "--model", "-s", "--session",
    "--prompt", "--agent", "--replay-limit", "--command", "--format", "--title", "--attach",
    "-p", "--password", "-u", "--username", "--dir", "--variant",
)
_OPENCODE_SUBCOMMANDS = ("completion", "acp", "mcp", "attach", "debug", "providers", "auth",
                         "agent", "upgrade", "uninstall", "serve", "web", "models", "stats",
                         "export", "import", "github", "pr", "session", "plugin", "plug", "db")

_COPILOT_VALUE_OPTIONS = (
    "-i", "--interactive", "-p", "--prompt", "--model", "--reasoning-effort", "--context",
    "--auto-tier", "--agent", "-n", "--name", "--session-id", "-C", "--log-dir",
    "--extension-sdk-path", "--log-level", "--stream", "--output-format", "--add-dir",
    "--attachment", "--disable-mcp-server", "--add-github-mcp-toolset", "--add-github-mcp-tool",
    "--plugin-dir", "--additional-mcp-config", "--mcp-github-auth", "--max-autopilot-continues",
    "--mode", "--environment-host", "--environment-compute-id", "--dynamic-retrieval",
    "--enable-mcp-server", "--max-ai-credits", "--usage-output-file",
    # optional values, which its parser takes when one follows
    "-r", "--resume", "--connect", "--share", "--bash-env", "--mouse",
)


def _opencode_like(name: str, command: str, config_env: str, **more: object) -> AgentProfile:
    """opencode's measured facts (1.18.33; Kilo 7.7.7 alike). Bun builds: their config is read
    with raw system calls (the LD_PRELOAD redirect never reaches it), so our server goes in
    the config they read from the environment, which they merge over the global and project
    files (a server of the same name from the variable wins, the others stay). `-s ID` resumes
    exactly a session; a new one cannot be named (`-s` with an unknown id: "Session not
    found"), and nothing the running CLI holds open names it (one SQLite database), so a
    restart resumes by id only a session the user named, else the directory's latest
    (`--continue`). `run` is the one-shot mode: `run [opts] --session ID PROMPT`."""
    values: dict[str, object] = dict(
        name=name,
        command=(command,),
        permission_flags=("--auto",),
        resume_flags=("--continue",),
        resume_session=("--session", "{session}"),
        session_id_options=("--session", "-s"),
        modes=("run",),
        drop_on_resume=("--continue", "-c", "--session", "-s", "--fork"),
        # The TUI's --prompt is sent only in a new session: with --continue or --session it is
        # ignored, not even typed in (measured on 1.18.33). `run` takes its message
        # positionally, the restart prompt too (a mode's restart, see argv.py).
        prompt="none",
        value_options=_OPENCODE_VALUE_OPTIONS,
        variadic_options=("--cors", "-f", "--file"),  # yargs arrays
        injection="config-env",
        config_env=config_env,
        mcp_servers_key="mcp",
        mcp_entry="opencode",
        subcommands=_OPENCODE_SUBCOMMANDS,
        # yargs honours `--`: the task stays one message, never an option (measured)
        headless_args=("run", "--format", "json", "--", "{prompt}"),
        # measured with a server that sleeps before it starts, `run`
        mcp_readiness=("waits: the first turn goes out once every server is up, its tools "
                       "offered (opencode 1.18.33: a 3 s and an 8 s server; Kilo 7.7.7: 3 s)"),
    )
    values.update(more)
    return AgentProfile(**values)  # type: ignore[arg-type]


BUILTIN_PROFILES: dict[str, AgentProfile] = {
    p.name: p
    for p in (
        AgentProfile(
            name="claude",
            command=("claude",),
            install_hint="npm install -g @anthropic-ai/claude-code",
            permission_flags=("--dangerously-skip-permissions",),
            resume_flags=("--continue",),
            # measured on 2.1.331 and 2.1.332, print mode and the TUI (see session.py)
            resume_session=("--resume", "{session}"),
            session_id_flag="--session-id",
            session_id_options=("--resume", "-r"),
            session_hook="claude-settings",
            # measured in the TUI with tests/e2e/test_claude_readiness.py, by bisection
            mcp_readiness=("waits from 2.1.284 on: a tool of a server still connecting is "
                           "called once it is up (2.1.284, 2.1.286, 2.1.290, 2.1.299, 2.1.331, "
                           "2.1.332; a 40 s server is not waited for); 2.1.197 to 2.1.283 do "
                           "not (2.1.197, 2.1.265, 2.1.282, 2.1.283: \"No such tool available "
                           "... still connecting\"), and the supervisor says so at its start"),
            mcp_waits_since="2.1.284",
            drop_on_resume=("--continue", "-c", "--resume", "-r", "--fork-session",
                            "--session-id"),
            value_options=_CLAUDE_VALUE_OPTIONS + ("--resume", "-r"),
            variadic_options=_CLAUDE_VARIADIC_OPTIONS,
            injection="mcp-config",
            subcommands=("mcp", "config", "doctor", "update", "install", "setup-token", "plugin",
                         "migrate-installer", "auth"),
            # -p is --print (no value); the prompt is positional, and commander honours `--`
            headless_args=("-p", "--output-format", "stream-json", "--verbose", "--",
                           "{prompt}"),
            max_turns_flag="--max-turns",
            refuses_root_flags=("--dangerously-skip-permissions",),
            # a whole server's tools (measured on 2.1.331 and 2.1.332): without it, as root
            # "Claude requested permissions to use mcp__aegis-mcp__restart_claude"
            allow_tools_flags=("--allowedTools=mcp__{server}",),
            # its model API (and its settings, metrics and event log), and the OAuth sign-in of
            # a subscription (TOKEN_URL platform.claude.com, origin claude.ai), read off
            # 2.1.331; its telemetry (Datadog, Sentry) is not needed and is not allowed
            api_hosts=("api.anthropic.com", "platform.claude.com", "claude.ai"),
            api_env=ANTHROPIC_URLS,
            verified=("injection: 2.1.331", "resume: 2.1.331", "headless: 2.1.331"),
            description="Claude Code (Anthropic)",
        ),
        AgentProfile(
            name="cursor",
            command=("cursor-agent",),
            alternatives=("agent",),
            install_hint="curl https://cursor.com/install -fsS | bash",
            # --force does not cover MCP servers: without --approve-mcps the injected one
            # waits for an approval.
            permission_flags=("--force", "--approve-mcps"),
            resume_flags=("--continue",),
            drop_on_resume=("--continue", "--resume"),
            value_options=("--model", "--output-format", "--api-key", "-H", "--header",
                           "--workspace", "--mode", "--sandbox", "--worktree-base", "-n",
                           "--name",
                           # optional values, which its parser takes when one follows
                           "--resume", "--worktree", "-w"),
            injection="preload",
            config_files=(".cursor/mcp.json", "~/.cursor/mcp.json"),
            subcommands=("mcp", "ls", "resume", "create-chat", "login", "logout", "status",
                         "update", "install-shell-integration"),
            # --trust: a headless run cannot answer the workspace-trust prompt; -p and the
            # prompt as for claude (the same commander-style parser; not measured here)
            headless_args=("-p", "--output-format", "stream-json", "--trust", "--",
                           "{prompt}"),
            api_hosts=("*.cursor.sh",),  # api2.cursor.sh and its agent backends
            description="Cursor CLI (cursor-agent)",
        ),
        AgentProfile(
            name="aider",
            command=("aider",),
            install_hint="python -m pip install aider-install && aider-install",
            permission_flags=("--yes-always",),
            resume_flags=("--restore-chat-history",),
            drop_on_resume=("--restore-chat-history",),
            # the project's .aider.chat.history.md is shared by every aider of that directory:
            # restored from it, a restart could take another terminal's last session
            own_history=("--chat-history-file", "{history}"),
            prompt="none",
            value_options=("--model", "--message", "-m", "--message-file", "-f", "--edit-format",
                           "--api-key", "--openai-api-key", "--anthropic-api-key",
                           "--chat-history-file", "--input-history-file", "--config", "-c"),
            injection="none",
            # argparse: `--message -x` is an error, `--message=-x` is the text
            headless_args=("--message={prompt}", "--no-pretty", "--no-stream",
                           "--chat-history-file", "{chat_history}"),
            interrupts=2,  # the first Ctrl-C only says "^C again to exit"
            # the providers of its default models (it picks by the API key it finds); others
            # through their base URL variables, or --allow
            api_hosts=("api.anthropic.com", "api.openai.com"),
            api_env=(*ANTHROPIC_URLS, *OPENAI_URLS, *OTHER_URLS),
            verified=("resume: 0.86.2", "headless: 0.86.2"),
            description="Aider (no MCP: restarts come from `aegis-mcp restart` or --watch)",
        ),
        AgentProfile(
            name="codex",
            command=("codex",),
            install_hint="npm install -g @openai/codex",
            # accepted as root too, and it covers MCP tools (without it, measured: "MCP tool
            # call requires approval, but approval policy is never"): no allow_tools_flags
            permission_flags=("--dangerously-bypass-approvals-and-sandbox",),
            resume_prefix=("resume", "--last"),
            modes=("exec",),  # non-interactive: `codex exec resume --last PROMPT`
            # measured on 0.169.0 and 0.171.0: while it runs, codex holds its session's rollout
            # file open, and `codex [exec] resume <id>` resumes exactly that session
            # measured on 0.169.0 and 0.171.0, exec and the TUI (see mcp/codex.py)
            mcp_readiness=("aegis-mcp's server: waited for (injected as required, 60 s bound); "
                           "your other servers: codex alone gives them 1 s from the first turn "
                           "(mcp_optional_startup_grace_ms), a 3 s one is missing from it, exec "
                           "and TUI alike (0.169.0, 0.171.0); aegis-mcp raises that to "
                           "--mcp-ready-timeout (30 s): a 3 s server is in the first turn, a "
                           "failing one is not waited for, a silent one holds it for the bound "
                           "and the supervisor says so"),
            resume_session=("resume", "{session}"),
            session_file=r"/\.codex/sessions/(?:.+/)?rollout-[^/]*-"
                         r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.jsonl$",
            value_options=("--model", "-m", "-c", "--config", "--profile", "-p", "--sandbox",
                           "-s", "--ask-for-approval", "-a", "--cd", "-C", "-i", "--image",
                           "--add-dir", "--enable", "--disable", "--local-provider", "--color",
                           "--output-schema", "-o", "--output-last-message"),
            injection="codex-config",
            static_binary=True,
            subcommands=("mcp", "login", "logout", "completion", "apply", "sandbox", "app-server"),
            headless_args=("exec", "--json", "--", "{prompt}"),  # clap honours `--`
            # the API with a key; with a ChatGPT sign-in its backend (chatgpt.com/backend-api)
            # and the token refresh (auth.openai.com/oauth/token), read off 0.169.0
            api_hosts=("api.openai.com", "chatgpt.com", "auth.openai.com"),
            api_env=OPENAI_URLS,
            verified=("injection: 0.169.0", "resume: 0.169.0", "headless: 0.169.0"),
            description="OpenAI Codex CLI",
        ),
        AgentProfile(
            name="gemini",
            command=("gemini",),
            install_hint="npm install -g @google/gemini-cli",
            # accepted as root too: no allow_tools_flags. Not --allowed-mcp-server-names: it
            # filters the servers that load, so the user's own would go.
            permission_flags=("--yolo",),
            # "Cannot use both --yolo (-y) and --approval-mode together" (0.61.0): the user's
            # --approval-mode is their choice, and --yolo is left out
            permission_options=("--approval-mode",),
            resume_flags=("--resume", "latest"),
            # measured on 0.61.0: --session-id names a new session, --resume <id> resumes
            # exactly it (not the project's latest), keeping its id
            resume_session=("--resume", "{session}"),
            session_id_flag="--session-id",
            session_id_options=("--resume", "-r", "--session-id"),
            mcp_readiness=("waits: the first turn goes out once every server has connected "
                           "(0.61.0, print mode: a server 3 s slow delays it 3 s, its tools "
                           "offered)"),
            drop_on_resume=("--resume", "-r", "--session-id", "--session-file"),
            prompt_options=("-p", "--prompt", "-i", "--prompt-interactive"),
            value_options=("--model", "-m", "--approval-mode", "--resume", "-r",
                           "--output-format", "-o", "-w", "--worktree", "--session-file",
                           "--session-id", "--delete-session"),
            # yargs array options take every following word, a prompt too
            variadic_options=("--include-directories", "--policy", "--admin-policy",
                              "--allowed-mcp-server-names", "--allowed-tools", "-e",
                              "--extensions"),
            injection="preload",
            config_files=(".gemini/settings.json", "~/.gemini/settings.json"),
            subcommands=("mcp", "extensions", "skills", "hooks", "update"),
            # --skip-trust: a headless run cannot answer the trusted-folder prompt. yargs takes
            # `--prompt=-x` as the text; a positional prompt after `--` is not headless.
            headless_args=("--prompt={prompt}", "--output-format", "stream-json",
                           "--skip-trust"),
            # the API with a key; with a Google sign-in Code Assist (CODE_ASSIST_ENDPOINT) and
            # the token refresh, read off 0.61.0
            api_hosts=("generativelanguage.googleapis.com", "cloudcode-pa.googleapis.com",
                       "oauth2.googleapis.com"),
            api_env=GEMINI_URLS,
            verified=("injection: 0.61.0", "resume: 0.61.0", "headless: 0.61.0"),
            description="Gemini CLI (Google)",
        ),
        AgentProfile(
            name="qwen",
            command=("qwen",),
            install_hint="npm install -g @qwen-code/qwen-code (it needs Node.js 22 or newer)",
            # --yolo covers MCP tools, as root too (measured on 0.24.4): no allow_tools_flags.
            # It also lets the project's .mcp.json servers start without their approval
            # dialog: Qwen Code's own rule in yolo mode, as with `qwen --yolo` by hand.
            permission_flags=("--yolo",),
            # "Cannot use both --yolo (-y) and --approval-mode together" (measured on 0.24.4)
            permission_options=("--approval-mode",),
            resume_flags=("--continue",),
            # measured on 0.24.4, print mode and the TUI: --session-id names a new session (a
            # UUID; one already used exits 1), --resume <id> resumes exactly it under the same
            # id (an unknown one exits 1 at once: the fresh-start fallback). It holds no file
            # open while it runs; after /clear in the TUI its new session is not followed.
            resume_session=("--resume", "{session}"),
            session_id_flag="--session-id",
            session_id_options=("--resume", "-r", "--session-id"),
            drop_on_resume=("--continue", "-c", "--resume", "-r", "--session-id",
                            "--fork-session"),
            # A positional prompt is a one-shot run, in a terminal too (measured): a restart
            # of the TUI, which had none, gives it with -i's long form and stays interactive.
            interactive_prompt=("--prompt-interactive={prompt}",),
            prompt_options=("-p", "--prompt", "-i", "--prompt-interactive"),
            value_options=_QWEN_VALUE_OPTIONS,
            # yargs array options take every following word, a prompt too
            variadic_options=("--fallback-model", "--allowed-mcp-server-names",
                              "--allowed-tools", "-e", "--extensions", "--include-directories",
                              "--add-dir", "--core-tools", "--exclude-tools",
                              "--disabled-slash-commands"),
            # Its servers from --mcp-config are above its settings' and .mcp.json's, which stay
            # (measured), and never wait for an approval. It takes one --mcp-config: the
            # user's own is merged into ours (mcp/injection.py).
            injection="mcp-config",
            mcp_config_last_wins=True,
            subcommands=("auth", "board", "channel", "extensions", "hooks", "mcp", "review",
                         "sandbox", "serve", "sessions", "update"),
            # A positional prompt after `--` is dropped ("No input provided via stdin");
            # `--prompt=-x` is the text (measured; -p is deprecated, still honoured).
            headless_args=("--prompt={prompt}", "--output-format", "stream-json"),
            max_turns_flag="--max-session-turns",  # then exit status 53, no result event
            mcp_readiness=("print mode waits: the first turn goes out once every server is up "
                           "(0.24.4: a 3 s and an 8 s server in it; a 40 s one given up at "
                           "30 s); the TUI does not: its first message (-i, a restart's "
                           "prompt) goes out at once, without a 3 s server's tools, which "
                           "come in a later turn"),
            # Node.js's version the package asks for; 0.24.4 ran the tests' flows on 20.20.2
            # and stopped at its start on 18.20.8 (a missing node:fs export)
            min_node="22",
            # the OpenAI API (its `openai` auth's default base URL) and Alibaba Cloud Model
            # Studio (DashScope), Coding Plan and Token Plan, its own providers, read off
            # 0.24.4; another provider of its /auth (OpenRouter, DeepSeek, ...) needs an
            # --allow, or its URL in OPENAI_BASE_URL
            api_hosts=("api.openai.com", "dashscope.aliyuncs.com", "*.dashscope.aliyuncs.com",
                       "dashscope-intl.aliyuncs.com", "dashscope-us.aliyuncs.com",
                       "*.maas.aliyuncs.com"),
            api_env=("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "GOOGLE_GEMINI_BASE_URL",
                     "GOOGLE_VERTEX_BASE_URL"),
            verified=("injection: 0.24.4", "resume: 0.24.4", "headless: 0.24.4"),
            description="Qwen Code (Alibaba)",
        ),
        _opencode_like(
            "opencode", "opencode", "OPENCODE_CONFIG_CONTENT",
            install_hint="npm install -g opencode-ai",
            verified=("injection: 1.18.33", "resume: 1.18.33", "headless: 1.18.33"),
            # its own gateway (Zen, the default provider) and its models list, read off
            # 1.18.33; another provider's API (set in opencode.json) needs an --allow
            api_hosts=("opencode.ai", "models.dev"),
            description="opencode (sst)",
        ),
        _opencode_like(
            "kilo", "kilo", "KILO_CONFIG_CONTENT",
            alternatives=("kilocode",),
            # 7.8.1 does not install: its platform packages stop at 7.7.9 (measured)
            install_hint="npm install -g @kilocode/cli@7.7.7",
            value_options=(*_OPENCODE_VALUE_OPTIONS, "--worktree"),
            drop_on_resume=("--continue", "-c", "--session", "-s", "--fork", "--cloud-fork"),
            subcommands=(*_OPENCODE_SUBCOMMANDS, "console", "cloud", "roll-call", "profile",
                         "remote", "daemon", "config", "worktree"),
            verified=("injection: 7.7.7", "resume: 7.7.7", "headless: 7.7.7"),
            # the Kilo Gateway, its default provider, read off 7.7.7; another provider's API
            # needs an --allow
            api_hosts=("api.kilo.ai",),
            description="Kilo CLI (Kilo Code)",
        ),
        AgentProfile(
            name="copilot",
            command=("copilot",),
            install_hint="npm install -g @github/copilot",
            # every permission, MCP tools too (measured on 1.0.102, as root: our server's tools
            # run without asking in -p and in the TUI); --yolo is its alias
            permission_flags=("--allow-all",),
            resume_flags=("--continue",),
            # measured on 1.0.102, -p and the TUI: --session-id <uuid> names a new session,
            # --resume=<id> resumes exactly it (an unknown id exits 1 at once: "No session,
            # task, or name matched"). While it runs, it holds
            # session-state/<id>/inuse.<pid>.hold open, and after /clear the new session's:
            # the supervisor follows the session the user is in now.
            resume_session=("--resume={session}",),
            session_id_flag="--session-id",
            session_id_options=("--resume", "-r", "--session-id"),
            session_file=r"/session-state/"
                         r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
                         r"/inuse\.\d+\.hold$",
            drop_on_resume=("--continue", "--resume", "-r", "--session-id", "--connect"),
            # no positional prompt: the TUI's is -i (sent in a resumed session too, measured),
            # the one-shot run's -p
            prompt="option:-i",
            prompt_options=("-p", "--prompt", "-i", "--interactive"),
            value_options=_COPILOT_VALUE_OPTIONS,
            variadic_options=("--allow-tool", "--deny-tool", "--available-tools",
                              "--excluded-tools", "--secret-env-vars", "--allow-url",
                              "--deny-url"),
            # repeatable and merged with ~/.copilot/mcp-config.json, whose servers stay; ours
            # wins over one of the same name (measured). Its .mcp.json is read only in a trusted
            # folder, so the flag is the way in.
            injection="mcp-config",
            mcp_config_flag=("--additional-mcp-config", "@{file}"),
            subcommands=("app", "login", "help", "init", "config", "update", "version",
                         "workflow", "sessions", "memories", "plugin", "mcp", "skill",
                         "instruction", "lsp", "sandbox", "completion"),
            # clap: `-p -x` is an error, `--prompt=-x` the text (measured)
            headless_args=("--prompt={prompt}", "--output-format", "json"),
            mcp_readiness=("waits: the first turn goes out once every server is up, its tools "
                           "offered (1.0.102, -p: a 3 s and an 8 s server)"),
            # GitHub's Copilot API (api.githubcopilot.com, its individual, business and
            # enterprise hosts) and the sign-in (github.com device flow, api.github.com), read
            # off 1.0.102; a custom provider (BYOK) is COPILOT_PROVIDER_BASE_URL
            api_hosts=("*.githubcopilot.com", "github.com", "api.github.com"),
            api_env=("COPILOT_PROVIDER_BASE_URL",),
            verified=("injection: 1.0.102", "resume: 1.0.102", "headless: 1.0.102"),
            description="GitHub Copilot CLI",
        ),
        AgentProfile(
            name="amp",
            command=("amp",),
            install_hint="npm install -g @sourcegraph/amp",
            permission_flags=("--dangerously-allow-all",),
            # `amp threads continue --last` resumes this checkout's last thread (this
            # terminal's, else any); `threads` is a management command of its own otherwise
            resume_prefix=("threads", "continue", "--last"),
            # the TUI takes its first message only on stdin; -x (execute) takes it as a value
            prompt="none",
            prompt_options=("-x", "--execute"),
            value_options=("--visibility", "--settings-file", "--log-level", "--log-file",
                           "--mcp-config", "-m", "--mode", "--features", "--executor",
                           "--runner-dir", "--attach", "--project", "--orb-size", "--title",
                           "-l", "--label"),
            # a Bun build: its config reads never meet the LD_PRELOAD redirect. --mcp-config
            # takes a flat {name: {command, args, env}} map and is merged over the settings'
            # servers, ours winning by name; only the last one given counts (measured)
            injection="mcp-config",
            mcp_config_last_wins=True,
            mcp_servers_key="",
            mcp_entry="amp",
            mcp_check=("mcp", "doctor"),
            subcommands=("version", "logout", "login", "orb", "orb-spawner", "portal", "net",
                         "runner", "clone", "git-setup", "files", "top", "last", "report-bug",
                         "threads", "tools", "plugins", "skill", "permissions", "mcp",
                         "config", "domains", "projects", "apps", "oauth-clients", "secrets",
                         "svc", "usage", "update", "completions"),
            # `-x -TEXT` is an unknown option and `-x -- TEXT` no message; `--execute=TEXT`
            # is the message (measured)
            headless_args=("--execute={prompt}", "--stream-json"),
            # its service (the API, its thread workers at /actors, the sign-in), read off
            # 0.0.1790142911; AMP_URL points it elsewhere
            api_hosts=("ampcode.com",),
            api_env=("AMP_URL",),
            # the TUI ends on the second SIGINT (Ctrl-C) and is still there 5 s after a
            # SIGTERM (measured on 0.0.1790142911-g7618fb)
            interrupts=2,
            # `mcp doctor` under aegis-mcp shows our server connected; no offline model turn
            verified=("injection: 0.0.1790142911-g7618fb",),
            description="Amp (Sourcegraph; no offline model turn: its threads run on its service)",
        ),
    )
}


def generic_profile(command: list[str]) -> AgentProfile:
    """A profile for `aegis-mcp -- any-command ...`: no flags added, `.mcp.json` overlaid."""
    if not command:
        raise AegisError("no command given after `--`: use `aegis-mcp -- my-agent [args]`", 2)
    name = Path(command[0]).name
    return AgentProfile(
        name=name,
        command=(command[0],),
        prompt="none",
        injection="preload",
        config_files=(".mcp.json",),
        description="any command",
    )


_FIELD_TYPES = {f.name: f.type for f in fields(AgentProfile)}


def _profile_from_table(name: str, table: dict[str, object], base: AgentProfile | None,
                        source: Path) -> AgentProfile:
    values: dict[str, object] = {}
    for key, value in table.items():
        if key not in _FIELD_TYPES or key == "name":
            known = ", ".join(k for k in _FIELD_TYPES if k != "name")
            raise AegisError(f"{source}: [agents.{name}] has unknown key {key!r} (known: {known})")
        if "tuple" in str(_FIELD_TYPES[key]):
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise AegisError(f"{source}: [agents.{name}] {key} must be a list of strings")
            value = tuple(value)
            if key == "api_hosts":
                _check_api_hosts(value, f"{source}: [agents.{name}] {key}")
        elif _FIELD_TYPES[key] == "bool":
            if not isinstance(value, bool):
                raise AegisError(f"{source}: [agents.{name}] {key} must be true or false")
        elif key == "interrupts":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
                raise AegisError(f"{source}: [agents.{name}] {key} must be a number from 1 to 5")
        elif not isinstance(value, str):
            raise AegisError(f"{source}: [agents.{name}] {key} must be a string")
        elif key == "min_node" and value and not value.isdigit():
            raise AegisError(f"{source}: [agents.{name}] {key} must be a major version such as "
                             "\"22\", or \"\" for none")
        elif key == "mcp_waits_since" and value and not _VERSION.fullmatch(value):
            raise AegisError(f"{source}: [agents.{name}] {key} must be a version such as "
                             "\"2.1.300\", or \"\" for none")
        values[key] = value
    if base is not None:
        profile = replace(base, **values)  # type: ignore[arg-type]
        _check(profile, source)
        return profile
    if "command" not in values or not values["command"]:
        raise AegisError(f"{source}: [agents.{name}] needs command = [\"executable\", ...]")
    profile = AgentProfile(name=name, **values)  # type: ignore[arg-type]
    _check(profile, source)
    return profile


def _check_api_hosts(hosts: tuple[str, ...], where: str) -> None:
    from aegis_mcp.netmon.policy import PolicyError, RuleError, parse_rule

    for i, host in enumerate(hosts):
        try:
            parse_rule(host, "allow", "")
        except RuleError as exc:
            raise PolicyError(f"{where}[{i}]: {exc}") from None


def _check(profile: AgentProfile, source: Path) -> None:
    where = f"{source}: [agents.{profile.name}]"
    if profile.injection not in INJECTIONS:
        raise AegisError(f"{where} injection must be one of {', '.join(INJECTIONS)}")
    if profile.mcp_entry not in MCP_ENTRY_SHAPES:
        raise AegisError(f"{where} mcp_entry must be one of {', '.join(MCP_ENTRY_SHAPES)}")
    if profile.injection == "config-env" and not _ENV_NAME.fullmatch(profile.config_env):
        raise AegisError(f"{where} injection \"config-env\" needs config_env, the name of the "
                         "environment variable the agent reads its config from")
    if profile.injection == "mcp-config" and "{file}" not in "".join(profile.mcp_config_flag):
        raise AegisError(f"{where} mcp_config_flag must have a word with {{file}}, where the "
                         "config file's path goes")
    if profile.mcp_check and profile.mcp_check[0] not in profile.subcommands:
        raise AegisError(f"{where} mcp_check must begin with one of its subcommands "
                         f"({', '.join(profile.subcommands) or 'it has none'})")
    if not (profile.prompt in ("positional", "none") or profile.prompt.startswith("option:")):
        raise AegisError(f"{where} prompt must be positional, none or option:<flag>")


@dataclass
class Config:
    profiles: dict[str, AgentProfile] = field(default_factory=lambda: dict(BUILTIN_PROFILES))
    settings: dict[str, object] = field(default_factory=dict)
    """Top-level settings other than `[agents]` (read by the pool and netmon)."""
    source: Path | None = None


def load_config(path: Path | None = None) -> Config:
    """The built-in profiles merged with the user's config file, if it exists."""
    path = path or config_file()
    config = Config()
    if not path.exists():
        return config
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AegisError(f"cannot read config {path}: {exc}") from None
    config.source = path
    agents = data.pop("agents", {})
    if not isinstance(agents, dict):
        raise AegisError(f"{path}: `agents` must be a table of [agents.<name>] tables")
    for name, table in agents.items():
        if not isinstance(table, dict):
            raise AegisError(f"{path}: [agents.{name}] must be a table")
        config.profiles[name] = _profile_from_table(name, table, config.profiles.get(name), path)
    config.settings = data
    return config


def get_profile(name: str, config: Config | None = None) -> AgentProfile:
    config = config or load_config()
    try:
        return config.profiles[name]
    except KeyError:
        known = ", ".join(sorted(config.profiles))
        raise AegisError(
            f"unknown agent {name!r} (known: {known}); to run any command: aegis-mcp -- {name} ...",
            2,
        ) from None
