"""Codex's first turn with every configured MCP server's tools (issue 11, "Readiness").

Measured on 0.169.0 and 0.171.0, `codex exec` and the TUI alike, offline: codex waits for a
`required` server (up to its `startup_timeout_sec`; one that does not answer in time fails
the whole start), but gives the others a shared grace of 1 s from the first turn
(`mcp_optional_startup_grace_ms`, default 1000): a server 3 s slow to answer `initialize` is
left out of that turn. Making the user's servers `required` would turn one failing server
into a failed start, so instead:

- the grace is raised to the supervisor's bound (`--mcp-ready-timeout`, 30 s by default):
  codex then waits for each optional server until it is up, has failed, hit its own
  `startup_timeout_sec`, or the bound is over (measured: a 3 s server is in the first turn,
  a failing one is not waited for, one that never answers holds the turn for the bound);
  unless the user chose a grace of their own (config.toml or `-c`);
- each of the user's stdio servers (from codex's config.toml and the `-c` arguments) is
  started through the pass-through `mcp.wrap`, which tells the supervisor when its
  `initialize` answer goes by, so the supervisor can say in one line which server is not up
  when the bound is over.

Project `.codex/config.toml` servers are waited for by codex but not wrapped: whether codex
loads that file depends on the project's trust, and wrapping a server codex would not load
would start it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aegis_mcp.launch import python_command
from aegis_mcp.mcp.name import SERVER_NAME

DEFAULT_READY_TIMEOUT = 30.0
GRACE_KEY = "mcp_optional_startup_grace_ms"
CONFIG_OPTIONS = ("-c", "--config")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # what codex accepts as a server name


@dataclass(frozen=True)
class StdioServer:
    name: str
    command: str
    args: tuple[str, ...] = ()


def read_text(path: str) -> str | None:
    """A config file's text, or None when it cannot be read (run as the agent's user)."""
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def config_path(home: str, codex_home: str | None) -> str:
    return os.path.join(codex_home or os.path.join(home, ".codex"), "config.toml")


def _toml_value(text: str) -> object:
    """A `-c` value as codex reads it: TOML, else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def overrides(user_args: list[str]) -> list[tuple[list[str], object]]:
    """The (dotted key, value) of each `-c key=value` the user gave, in order."""
    found: list[tuple[list[str], object]] = []
    i = 0
    while i < len(user_args):
        arg = user_args[i]
        if arg == "--":
            break
        name, eq, inline = arg.partition("=")
        if arg in CONFIG_OPTIONS and i + 1 < len(user_args):
            text, i = user_args[i + 1], i + 2
        elif eq and name in CONFIG_OPTIONS:
            text, i = inline, i + 1
        else:
            i += 1
            continue
        key, sep, value = text.partition("=")
        if sep and key.strip():
            found.append(([p.strip() for p in key.strip().split(".")], _toml_value(value)))
    return found


def effective_config(config_text: str | None, user_args: list[str]) -> dict[str, Any]:
    """codex's config file with the user's `-c` overrides applied, as codex merges them (a
    later one wins). An unreadable or broken file counts as empty: codex says so itself."""
    data: dict[str, Any] = {}
    if config_text:
        with contextlib.suppress(tomllib.TOMLDecodeError):
            data = tomllib.loads(config_text)
    for path, value in overrides(user_args):
        table = data
        for part in path[:-1]:
            nxt = table.get(part)
            if not isinstance(nxt, dict):
                nxt = table[part] = {}
            table = nxt
        table[path[-1]] = value
    return data


def stdio_servers(config: dict[str, Any]) -> list[StdioServer]:
    """The enabled stdio servers of an effective config (not ours, not URL servers)."""
    servers = config.get("mcp_servers")
    found = []
    for name, entry in (servers.items() if isinstance(servers, dict) else ()):
        if name == SERVER_NAME or not _NAME.match(name) or not isinstance(entry, dict):
            continue
        command, args = entry.get("command"), entry.get("args", [])
        if entry.get("enabled", True) is False or "url" in entry or not isinstance(command, str) \
                or not command or not isinstance(args, list) \
                or not all(isinstance(a, str) for a in args):
            continue
        found.append(StdioServer(name, command, tuple(args)))
    return found


@dataclass
class Readiness:
    """What one start of codex gets so that its first turn has every server's tools."""

    args: list[str] = field(default_factory=list)
    awaited: list[str] = field(default_factory=list)
    """The wrapped servers the supervisor hears from (their `initialize` answer, or end)."""


def readiness(config: dict[str, Any], timeout: float, control: str, start: str) -> Readiness:
    """The `-c` arguments that make codex wait for its optional servers up to `timeout` s
    (unless the user set a grace) and wrap each stdio server to report to `control`."""
    if timeout <= 0:
        return Readiness()
    args: list[str] = []
    if GRACE_KEY not in config:
        args += ["-c", f"{GRACE_KEY}={round(timeout * 1000)}"]
    awaited = []
    for server in stdio_servers(config):
        wrap = python_command("aegis_mcp.mcp.wrap", control, start, server.name, "--",
                              server.command, *server.args)
        args += ["-c", f"mcp_servers.{server.name}.command={json.dumps(wrap[0])}",
                 "-c", f"mcp_servers.{server.name}.args={json.dumps(wrap[1:])}"]
        awaited.append(server.name)
    return Readiness(args, awaited)


@dataclass
class ReadinessWatch:
    """The supervisor's side: which awaited servers of one start have answered, and the one
    line once the bound is over with some still silent."""

    start: int
    awaited: tuple[str, ...]
    due: float
    """time.monotonic() at which the bound is over."""
    states: dict[str, str] = field(default_factory=dict)
    said: bool = False

    def report(self, start: object, name: object, state: object) -> bool:
        if start != self.start or name not in self.awaited or not isinstance(state, str) \
                or state not in ("ready", "failed", "exited"):
            return False
        self.states.setdefault(str(name), state)  # the first word counts: its answer
        return True

    def overdue(self, now: float) -> list[str] | None:
        """Once, when the bound is over: the awaited servers not heard from (maybe none)."""
        if self.said or now < self.due:
            return None
        self.said = True
        return [n for n in self.awaited if n not in self.states]

    def pending(self) -> bool:
        return not self.said and any(n not in self.states for n in self.awaited)
