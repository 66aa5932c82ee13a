"""The installed version of an agent CLI, learned without running it, and whether the Node.js
that runs a Node CLI is as new as the CLI asks.

`claude --version` costs a whole start of the CLI; the npm package that the `claude` on PATH
belongs to says its version in its package.json. A native install (a bare binary) has none:
its version is then unknown, and nothing is said.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

from aegis_mcp.profiles.profile import AgentProfile

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
# npm puts the bin file at most a few levels under the package root (bin/claude.exe,
# cli.js): looking further up would only find an unrelated project's package.json.
_MAX_LEVELS = 4


def parse_version(text: str) -> tuple[int, int, int] | None:
    """`2.1.197` (a pre-release or build suffix is ignored) as numbers, or None."""
    match = _VERSION.fullmatch(text.strip().split("-")[0].split("+")[0])
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def is_older(version: str, than: str) -> bool:
    """Whether `version` comes before `than`; False when either is no version."""
    a, b = parse_version(version), parse_version(than)
    return a is not None and b is not None and a < b


def npm_package_version(executable: str) -> str | None:
    """The `version` of the npm package whose bin `executable` is (the symlink npm makes in
    node_modules/.bin followed), or None: not an npm package's bin, or unreadable. Run it
    with the agent user's identity (privileges.as_user): it reads that user's files."""
    try:
        real = os.path.realpath(executable)
        folder = os.path.dirname(real)
        for _ in range(_MAX_LEVELS):
            manifest = os.path.join(folder, "package.json")
            if os.path.isfile(manifest):
                version = _version_if_bin(manifest, folder, real)
                if version is not None:
                    return version
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    except (OSError, ValueError):
        pass
    return None


def _version_if_bin(manifest: str, folder: str, real: str) -> str | None:
    """The manifest's version when its `bin` names `real`: a package.json that merely sits
    above the file (a user's project, a home directory) says nothing of it."""
    with open(manifest, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        return None
    bins = data.get("bin")
    targets = [bins] if isinstance(bins, str) else list(bins.values()) \
        if isinstance(bins, dict) else []
    named = any(isinstance(t, str) and os.path.realpath(os.path.join(folder, t)) == real
                for t in targets)
    version = data.get("version")
    return version if named and isinstance(version, str) and parse_version(version) else None


def readiness_notice(profile: AgentProfile, version: str | None) -> str | None:
    """The line the supervisor says at its start when the installed CLI is older than the
    first version that waits for MCP servers still connecting; None when it is not, or when
    either version is unknown."""
    since = profile.mcp_waits_since
    if not since or version is None or not is_older(version, since):
        return None
    # "Claude Code (Anthropic)" -> "Claude Code": the product's own name
    cli = re.sub(r"\s*\(.*\)$", "", profile.description) or profile.name
    return (f"{cli} {version} does not wait for MCP servers still connecting on its first "
            f"turn ({since} and later do): after a restart, a slow server's tools may be "
            f"missing from the first turn; upgrade {cli}")


def node_notice(profile: AgentProfile, executable: str, search_path: str) -> str | None:
    """The line the supervisor says at its start when the Node.js that would run the CLI is
    older than the profile's `min_node`; None when it is not, or when that cannot be learned.
    The node is the one the executable's `#!` line names (npm's bin scripts say
    `#!/usr/bin/env node`: the first on `search_path`, the agent's PATH); an executable that
    is no such script (a standalone build) is not checked. Costs one `node --version`, a few
    milliseconds. Run it with the agent user's identity (privileges.as_user)."""
    if not profile.min_node.isdigit():
        return None
    node = _script_node(executable, search_path)
    if node is None:
        return None
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    version = parse_version(out.removeprefix("v"))
    if version is None or version[0] >= int(profile.min_node):
        return None
    from aegis_mcp.display import plain

    cli = re.sub(r"\s*\(.*\)$", "", profile.description) or profile.name
    return (f"{cli} asks for Node.js {profile.min_node} or newer, and the node that runs it "
            f"({plain(node)}) is {plain(out)[:40]}: if {plain(profile.command[0])} fails, put "
            f"a Node.js {profile.min_node} first on PATH")


def _script_node(executable: str, search_path: str) -> str | None:
    """The node a `#!` script runs: `#!/usr/bin/env node` looks it up on the PATH."""
    try:
        with open(executable, "rb") as f:
            first = f.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]  # env -S node ...
        return shutil.which(words[0], path=search_path) \
            if words and words[0] == "node" else None
    return words[0] if words and os.path.basename(words[0]) == "node" else None
