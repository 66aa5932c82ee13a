"""Where aegis-mcp keeps its files.

Runtime files (control sockets, MCP overlays, netmon logs) live in a per-user directory of
mode 0700, never at a guessable path in a world-writable directory. The pool store lives in
the user's state directory, the user's profiles in the config directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import tempfile
from pathlib import Path

from aegis_mcp.errors import AegisError
from aegis_mcp.privileges import User, as_user


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
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}), so aegis-mcp "
            f"will not use it; {_what_to_do(path)}"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def _what_to_do(path: Path) -> str:
    """What the user can actually do about a directory of someone else's at `path`: remove it
    when its parent lets them, else use another one (in /tmp, another user may have made it
    first, and the sticky bit keeps it theirs)."""
    try:
        parent = path.parent.stat()
    except OSError:
        parent = None
    sticky_foreign = parent is not None and bool(parent.st_mode & stat.S_ISVTX) \
        and parent.st_uid != os.geteuid()
    if parent is not None and not sticky_foreign and os.access(path.parent, os.W_OK):
        return "remove it"
    return ("set AEGIS_RUNTIME_DIR to a directory of your own (e.g. "
            "AEGIS_RUNTIME_DIR=~/.cache/aegis-mcp-run), or ask an administrator to remove it")


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


def user_runtime_dir(user: User) -> Path:
    """The runtime directory of the user a root supervisor runs the agent as (the agent's MCP
    server must reach the control socket there), made and checked with that user's identity:
    root never creates or chowns a path there. Only when the user may not create it (an
    explicit AEGIS_RUNTIME_DIR in a root-owned directory) does root make it, and then only
    inside a directory that nobody but root can write, where no name can be swapped."""
    explicit = os.environ.get("AEGIS_RUNTIME_DIR")
    path = Path(explicit) if explicit else runtime_base(user.uid)
    try:
        return Path(as_user(user, _ensure_private_dir_str, str(path)))
    except PermissionError:
        _root_makes_dir_for(path, user)
    try:
        return Path(as_user(user, _ensure_private_dir_str, str(path)))
    except PermissionError:
        raise AegisError(
            f"user {user.name} cannot reach {path} (a directory on the way is closed to it), "
            "and the agent's MCP server and network log live there: set AEGIS_RUNTIME_DIR to "
            "a directory that user can reach, or leave it unset") from None


def _ensure_private_dir_str(path: str) -> str:
    return str(ensure_private_dir(Path(path)))


def _root_makes_dir_for(path: Path, user: User) -> None:
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise AegisError(f"cannot create {path}: {exc.strerror}") from None
    try:
        st = os.fstat(parent)
        if st.st_uid != 0 or st.st_mode & 0o022:
            raise UnsafeDirectoryError(
                f"user {user.name} may not create {path}, and {path.parent} is writable by "
                "others: set AEGIS_RUNTIME_DIR to a directory that user may create")
        with contextlib.suppress(FileExistsError):
            os.mkdir(path.name, 0o700, dir_fd=parent)
        fd = os.open(path.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=parent)
        try:
            if os.fstat(fd).st_uid == 0:
                os.fchown(fd, user.uid, user.gid)
                os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    except OSError as exc:
        raise AegisError(f"cannot create {path} for {user.name}: {exc.strerror}") from None
    finally:
        os.close(parent)


# Every file a supervisor (pid {pid}) keeps in its runtime directory, by what it is. Those in
# GOES_WITH_SUPERVISOR are its working files, removed when it ends (and, when it was killed, by
# the next supervisor's cleanup); the netmon log and policy stay: they are the record of what
# the agent did, and under which rules.
RUNTIME_FILES = {
    "control": "supervisor-{pid}.sock",       # the control socket (supervise.control)
    "warm": "mcp-{pid}.sock",                 # the warm MCP server's socket (mcp.warm)
    "mcp_overlay": "mcp-overlay-{pid}.json",  # Claude Code's --mcp-config (mcp.injection)
    "config_overlay": "config-overlay-{pid}-{n}.json",  # preload-redirected configs
    "history": "{agent}-history-{pid}.md",    # a chat history of the supervisor's own (Aider)
    "netmon_log": "netmon-{pid}.jsonl",       # netmon.log; its summary sits beside it
    "netmon_policy": "netmon-{pid}.policy",   # the compiled network policy (netmon.policy)
}
GOES_WITH_SUPERVISOR = ("control", "warm", "mcp_overlay", "config_overlay")


def runtime_file(runtime: Path, kind: str, pid: int, **parts: object) -> Path:
    """The path of a supervisor's runtime file of this kind (RUNTIME_FILES)."""
    return runtime / RUNTIME_FILES[kind].format(pid=pid, **parts)


def _pattern(kind: str) -> re.Pattern[str]:
    template = re.escape(RUNTIME_FILES[kind])
    for name, rx in (("pid", r"(?P<pid>\d+)"), ("n", r"\d+"), ("agent", r"[\w.-]+")):
        template = template.replace(re.escape("{" + name + "}"), rx)
    return re.compile(f"^{template}$")


def runtime_files_of(runtime: Path, kind: str) -> list[tuple[int, Path]]:
    """(supervisor pid, path) of every file of this kind in `runtime`, sorted by path."""
    rx = _pattern(kind)
    found = []
    for path in sorted(runtime.iterdir()) if runtime.is_dir() else ():
        if m := rx.match(path.name):
            found.append((int(m.group("pid")), path))
    return found


def working_file_owner(name: str) -> int | None:
    """The supervisor pid a working file (GOES_WITH_SUPERVISOR) of this name belongs to."""
    for kind in GOES_WITH_SUPERVISOR:
        if m := _pattern(kind).match(name):
            return int(m.group("pid"))
    return None


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
    """The LD_PRELOAD library built next to the package when aegis-mcp is installed."""
    return Path(__file__).resolve().parent / "netmon" / "libaegis_hooks.so"


def hooks_library_missing() -> str | None:
    """What is wrong and what to do when the hooks library is not there (aegis-mcp was
    installed without a C compiler: setup.py goes on without it), or None when it is."""
    lib = hooks_library()
    if lib.exists():
        return None
    # The same installer again: a pip install into pipx's or uv's venv would be undone by
    # their next upgrade, and pipx leaves an installed package alone without --force.
    prefix = Path(sys.prefix)
    if (prefix / "pipx_metadata.json").exists():
        again = "pipx install --force ."
    elif (prefix / "uv-receipt.toml").exists():
        again = "uv tool install --reinstall ."
    else:
        again = f"{Path(sys.executable).parent / 'pip'} install ."
    return (f"the hooks library {lib} is missing: aegis-mcp was installed without a C "
            f"compiler; install gcc, then run `{again}` in aegis-mcp's source directory")
