"""Giving the wrapped agent aegis-mcp's MCP server, for that process only, changing no file.

By profile, best mechanism first (measured on the real CLIs, see DESIGN.md):
- `mcp-config`: a config file named on the command line, Claude Code's own `--mcp-config
  <overlay>` (its .mcp.json read is a raw system call that LD_PRELOAD cannot redirect),
  Copilot's `--additional-mcp-config @<overlay>`, Amp's and Qwen Code's `--mcp-config
  <overlay>`; the flag's words are the profile's `mcp_config_flag`. A CLI that reads one value
  of its flag (`mcp_config_last_wins`) gets the user's own servers of it in the overlay, and
  their flag is left out;
- `codex-config`: Codex's `-c mcp_servers.aegis-mcp.*` overrides (a static binary);
- `config-env`: the whole config as JSON in the environment variable the CLI reads it from
  (opencode's `OPENCODE_CONFIG_CONTENT`, Kilo's `KILO_CONFIG_CONTENT`: Bun builds, whose reads
  the redirect never sees); the user's own value of it is kept, our server added;
- `preload`: agents that read their config through libc (Node, Python): the hooks library
  redirects read-only opens of the profile's config files to merged overlays;
- `none`: Aider has no MCP.
Overlays are written into the private runtime directory at every (re)start, so a changed
project config is seen by the restarted agent, and are removed when the supervisor exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aegis_mcp.agentenv import CONFIG_ENV, CONFIG_ENV_ORIGINAL
from aegis_mcp.errors import AegisError
from aegis_mcp.launch import python_command
from aegis_mcp.mcp.name import SERVER_NAME
from aegis_mcp.paths import hooks_library, runtime_file
from aegis_mcp.privileges import User, as_user
from aegis_mcp.profiles.profile import AgentProfile

CODEX_STARTUP_TIMEOUT_SECS = 60
"""How long Codex waits for our server's `initialize` answer before it gives up starting: its
default of 10 s against a cold start of 0.5 s idle and 0.8 s with both cores busy (measured),
room for a machine far busier than that."""


def server_command(warm: Path | None = None) -> list[str]:
    """How the agent starts aegis-mcp's MCP server: this very interpreter and package, so it
    does not depend on the agent's PATH, and never importing from the project directory.
    With `warm` (the supervisor's warm server's socket, see mcp.warm): the relay, a script of
    the standard library run isolated (-I) and without site (-S), which falls back to the
    cold server when the warm one does not answer."""
    cold = python_command("aegis_mcp", "--mcp-server")
    if warm is None:
        return cold
    relay = Path(__file__).resolve().with_name("relay.py")
    return [sys.executable, "-I", "-S", str(relay), str(warm), "--", *cold]


OPENCODE_MCP_TIMEOUT_MS = CODEX_STARTUP_TIMEOUT_SECS * 1000
"""opencode gives a server 5 s to list its tools by default: the same room as Codex's."""


def server_entry(env: dict[str, str], warm: Path | None = None,
                 shape: str = "stdio") -> dict[str, object]:
    """Our server as one entry of the CLI's config, in the profile's `mcp_entry` shape."""
    cmd = server_command(warm)
    if shape == "opencode":
        return {"type": "local", "command": cmd, "environment": env, "enabled": True,
                "timeout": OPENCODE_MCP_TIMEOUT_MS}
    if shape == "amp":
        return {"command": cmd[0], "args": cmd[1:], "env": env}
    return {"type": "stdio", "command": cmd[0], "args": cmd[1:], "env": env}


def with_server(data: dict[str, object], key: str, entry: dict[str, object]) -> dict[str, object]:
    """A config `data` with our server added to the servers under `key` (the whole of `data`
    when the key is empty: a flat map of servers), its other servers and settings kept."""
    servers = data.get(key) if key else data
    servers = dict(servers) if isinstance(servers, dict) else {}
    servers[SERVER_NAME] = entry
    return {**data, key: servers} if key else servers


def _users_own(name: str, environ: Mapping[str, str]) -> str | None:
    """The user's own value of the config variable `name`: under a supervisor started from
    inside an agent of ours, the value that agent had before we added our server to it."""
    if environ.get(CONFIG_ENV) == name:
        return environ.get(CONFIG_ENV_ORIGINAL)
    return environ.get(name)


def config_env_value(name: str, user_value: str | None, key: str,
                     entry: dict[str, object]) -> str:
    """The value of the config variable `name` that gives the agent our server: the user's own
    value (a JSON object, their servers and settings kept) with `entry` under `key`."""
    data: object = {}
    if user_value is not None and user_value.strip():
        try:
            data = json.loads(user_value)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise AegisError(f"{name} is set but is not a JSON object: fix it, or unset it, or "
                             "run with --no-inject-mcp")
    return json.dumps(with_server(data, key, entry))


def users_mcp_config(profile: AgentProfile, agent_args: list[str], cwd: Path,
                     user: User | None) -> dict[str, object] | None:
    """The config the user gave with the profile's flag themselves (the last one, which is
    the one the CLI reads): JSON text when it starts with `{`, else a file (read as the
    agent's user, relative to the working directory), as Amp tells them apart. None when they
    gave none; one clear error when it cannot be read, as the CLI would have given."""
    flag = profile.mcp_config_flag[0]
    value = None
    for i, arg in enumerate(agent_args):
        if arg == "--":
            break
        if arg == flag and i + 1 < len(agent_args):
            value = agent_args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    if value is None:
        return None
    if value.strip().startswith("{"):
        text: str | None = value
        where = f"your {flag} value"
    else:
        from aegis_mcp.mcp.codex import read_text

        source = cwd / value
        text = as_user(user, read_text, str(source))
        where = f"your {flag} file {source}"
        if text is None:
            raise AegisError(f"cannot read {where}: {profile.name} would not start with it")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise AegisError(f"{where} is not a JSON object: {profile.name} would not start with it")
    key = profile.mcp_servers_key
    if key and key not in data and all(isinstance(v, dict) for v in data.values()):
        return {key: data}  # the servers alone, which Qwen Code reads as well (0.24.4)
    return data


@dataclass
class Injection:
    mechanism: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    user: User | None = None
    replaces: tuple[str, ...] = ()
    """Options of the user's that `args` take the place of (their `--mcp-config`, whose
    servers are in ours): left out of the agent's command line (argv.without_options)."""
    awaited: list[str] = field(default_factory=list)
    """The user's MCP servers that report their `initialize` answer to the supervisor
    (readiness.py): what the readiness bound's line names when they are not up."""

    def cleanup(self) -> None:
        if self.files:
            with contextlib.suppress(OSError, AegisError):
                as_user(self.user, remove_files, [str(p) for p in self.files])
        self.files.clear()


def remove_files(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def write_overlays(jobs: list[tuple[str, str | dict[str, object] | None, str,
                                   dict[str, object]]]) -> None:
    """Write each overlay `(path, project config or None, servers key, our entry)`: the
    project's config (a file, or the config itself) with our server added. Run with the
    agent's identity (privileges.as_user): the project config is read, and the overlay
    written, only as that user could. Each overlay is written to a fresh name
    (O_EXCL|O_NOFOLLOW) and renamed into place, so a name planted in the runtime directory is
    replaced, never written through."""
    for path, source, key, entry in jobs:
        data = with_server(source if isinstance(source, dict) else
                           _read_config(Path(source)) if source else {}, key, entry)
        tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _read_config(source: Path) -> dict[str, object]:
    """The project's own config; a missing or unreadable file counts as empty."""
    try:
        data = json.loads(source.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def prepare(profile: AgentProfile, runtime: Path, supervisor_pid: int, server_env: dict[str, str],
            cwd: Path, home: str, user: User | None, warm: Path | None = None,
            agent_args: list[str] | None = None, ready_timeout: float = 0.0,
            codex_home: str | None = None) -> Injection:
    """Write the overlays for one start of the agent (as `user`, the agent's identity, when
    the supervisor is root) and return the arguments and environment that make the agent see
    them. `warm`: the supervisor's warm server (see server_command). For codex, also what
    makes its first turn wait up to `ready_timeout` s for the user's own MCP servers
    (`agent_args`: the user's, for their `-c` overrides)."""
    entry = server_entry(server_env, warm, profile.mcp_entry)
    if profile.injection == "mcp-config":
        path = runtime_file(runtime, "mcp_overlay", supervisor_pid)
        flag = profile.mcp_config_flag[0]
        own = users_mcp_config(profile, agent_args or [], cwd, user) \
            if profile.mcp_config_last_wins else None
        as_user(user, write_overlays, [(str(path), own, profile.mcp_servers_key, entry)])
        words = [w.replace("{file}", str(path)) for w in profile.mcp_config_flag]
        label = f"{flag} overlay" + (f" (with your {flag}'s servers)" if own is not None else "")
        return Injection(label, words, files=[path], user=user,
                         replaces=(flag,) if own is not None else ())
    if profile.injection == "config-env":
        # The supervisor's environment is the one the agent inherits: the user's own value
        # is there. Only text is read here, no file: nothing to do as the agent's user.
        name = profile.config_env
        own = _users_own(name, os.environ)
        value = config_env_value(name, own, profile.mcp_servers_key, entry)
        # Marked, so that agents started from inside this one get the user's value back
        # (agentenv.inherited), not a server of this session.
        marks = {CONFIG_ENV: name, **({CONFIG_ENV_ORIGINAL: own} if own is not None else {})}
        return Injection(f"{name} (config in the environment)", env={name: value, **marks})
    if profile.injection == "codex-config":
        cmd = server_command(warm)
        env_toml = ", ".join(f"{k} = {json.dumps(v)}" for k, v in server_env.items())
        args = [
            "-c", f"mcp_servers.{SERVER_NAME}.command={json.dumps(cmd[0])}",
            "-c", f"mcp_servers.{SERVER_NAME}.args={json.dumps(cmd[1:])}",
            "-c", f"mcp_servers.{SERVER_NAME}.env={{ {env_toml} }}",
            # Codex starts its first turn without waiting for MCP servers (measured on 0.169
            # and 0.171): when ours answers `initialize` after that, the model has none of its
            # tools in the turn, and a restart it asks for is lost (1 run in 2 with both cores
            # busy). A required server is waited for, and one that cannot start stops codex
            # with a message instead of leaving it without the restart tool.
            "-c", f"mcp_servers.{SERVER_NAME}.required=true",
            "-c", f"mcp_servers.{SERVER_NAME}.startup_timeout_sec={CODEX_STARTUP_TIMEOUT_SECS}",
        ]
        from aegis_mcp.mcp import codex

        # The config file as the agent's user reads it (it is theirs, see privileges.as_user).
        text = as_user(user, codex.read_text, codex.config_path(home, codex_home))
        ready = codex.readiness(codex.effective_config(text, agent_args or []),
                                    ready_timeout, server_env["AEGIS_CONTROL"],
                                    server_env.get("AEGIS_AGENT_START", ""))
        return Injection("codex -c mcp_servers override", args + ready.args,
                         awaited=ready.awaited)
    if profile.injection == "preload":
        redirects, files, jobs = [], [], []
        for i, name in enumerate(profile.config_files):
            source = Path(home, name[2:]) if name.startswith("~/") else cwd / name
            overlay = runtime_file(runtime, "config_overlay", supervisor_pid, n=i)
            jobs.append((str(overlay), str(source), profile.mcp_servers_key, entry))
            redirects.append(f"{os.path.abspath(source)}\t{overlay}")
            files.append(overlay)
        as_user(user, write_overlays, jobs)
        env = {"AEGIS_MCP_REDIRECT": "\n".join(redirects), "LD_PRELOAD": str(hooks_library())}
        return Injection("LD_PRELOAD redirect of " + ", ".join(profile.config_files), env=env,
                         files=files, user=user)
    return Injection("none (the agent has no MCP support)")


LIBC_CONFIG_READERS = ("cursor", "gemini")
"""Profiles injected by the LD_PRELOAD redirect whose CLI is known to read its MCP config
through libc (Node CLIs, measured), so that the redirect makes it start aegis-mcp's server.
Any other command may never open that file, or open it with raw system calls (Bun-built CLIs,
static binaries), which the redirect never sees."""


def unverifiable(profile: AgentProfile, inject: bool) -> str | None:
    """Why a start of this agent cannot be expected to start aegis-mcp's MCP server (so
    `restart --wait` does not wait for its hello), or None when it can."""
    if not inject:
        return "the MCP injection is off (--no-inject-mcp)"
    if profile.injection == "none":
        return f"{profile.name} has no MCP support"
    if profile.injection == "preload" and (profile.static_binary
                                           or profile.name not in LIBC_CONFIG_READERS):
        files = ", ".join(profile.config_files) or "its config"
        return (f"{profile.name} gets it only if it reads {files} through libc (the "
                "LD_PRELOAD redirect), which it is not known to do")
    return None
