"""Where aegis-mcp keeps its files.

Runtime files (control sockets, MCP overlays, netmon logs) live in a per-user directory of
mode 0700, never at a guessable path in a world-writable directory. The pool store lives in
the user's state directory, the user's profiles in the config directory.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from aegis_mcp.errors import AegisError


class UnsafeDirectoryError(AegisError):
    """A private directory exists but is not ours or is open to others."""


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) or check that the existing one is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectoryError(f"{path} is not a directory; remove it and try again")
    if st.st_uid != os.geteuid():
        raise UnsafeDirectoryError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}); remove it"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def runtime_base(uid: int) -> Path:
    """Where the runtime directory of `uid` lives, the same answer for that user's own
    processes and for a root supervisor started through sudo on its behalf: `/run/user/<uid>`
    when the system made one, else /tmp. Not $TMPDIR: sudo drops it from the environment, and
    Python's temp dir depends on what the caller may write, so the user and root would look
    in different places."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if uid == os.geteuid() and xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return Path(xdg) / "aegis-mcp"
    if os.path.isdir(f"/run/user/{uid}"):
        return Path(f"/run/user/{uid}/aegis-mcp")
    tmp = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    return Path(tmp) / f"aegis-mcp-{uid}"


def runtime_dir() -> Path:
    """The per-user 0700 runtime directory: `$AEGIS_RUNTIME_DIR`, `$XDG_RUNTIME_DIR/aegis-mcp`,
    `/run/user/<uid>/aegis-mcp`, else `<tmp>/aegis-mcp-<uid>`."""
    explicit = os.environ.get("AEGIS_RUNTIME_DIR")
    return ensure_private_dir(Path(explicit) if explicit else runtime_base(os.geteuid()))


def control_dirs() -> list[Path]:
    """Where the control sockets of the caller's supervisors are, to find them (never to write):
    its runtime directory; as root, also the sudo user's, where `sudo aegis-mcp <agent>` puts
    them for the dropped agent to reach. Root may look into another user's directory."""
    explicit = os.environ.get("AEGIS_RUNTIME_DIR")
    if os.geteuid() != 0:
        return [runtime_dir()]
    found = [Path(explicit)] if explicit else [runtime_base(0)]
    sudo_uid = os.environ.get("SUDO_UID", "")
    if not explicit and sudo_uid.isdigit() and int(sudo_uid) != 0:
        found.append(runtime_base(int(sudo_uid)))
    return [d for d in dict.fromkeys(found) if d.is_dir()]


def state_dir() -> Path:
    """Durable per-user state (the agent pool store): `$AEGIS_STATE_DIR`,
    `$XDG_STATE_HOME/aegis-mcp`, else `~/.local/state/aegis-mcp`."""
    explicit = os.environ.get("AEGIS_STATE_DIR")
    if explicit:
        return ensure_private_dir(Path(explicit))
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return ensure_private_dir(Path(base) / "aegis-mcp")


def config_file() -> Path:
    """The user's TOML config: `$AEGIS_CONFIG`, else `$XDG_CONFIG_HOME/aegis-mcp/config.toml`."""
    explicit = os.environ.get("AEGIS_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "aegis-mcp" / "config.toml"


def hooks_library() -> Path:
    """The LD_PRELOAD library built next to the package by `pip install`."""
    return Path(__file__).resolve().parent / "libaegis_hooks.so"
