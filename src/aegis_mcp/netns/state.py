"""The state files of the namespaces (/run/aegis-mcp/netns, root's only): what proves a
namespace is ours and what to remove, the shared sysctl baseline, and the lock that serialises
subnet choice and that baseline between aegis processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aegis_mcp.errors import AegisError
from aegis_mcp.netns.plan import NAME_RE, PREFIX, forward_pairs

STATE_DIR = Path(os.environ.get("AEGIS_NETNS_STATE_DIR", "/run/aegis-mcp/netns"))
BASELINE = "sysctl-baseline.json"


@dataclass
class State:
    name: str
    owner_pid: int
    owner_start: int | None
    created: float
    subnet: str
    host_addr: str
    ns_addr: str
    veth: str
    table: str
    dns: str
    """How DNS works inside: "copy" (host resolvers reachable through NAT) or "dnat:<ip>"
    (port 53 of the host end forwarded to a loopback resolver)."""
    nameservers: list[str] = field(default_factory=list)
    forwards: list[str] = field(default_factory=list)
    """Host loopback `ip:port`s reachable from inside at the same address."""
    host_access: bool = False
    """The agent may reach the host's own services (--netns-host-access); by default only
    DNS and the forwards."""
    log_path: str | None = None
    capture_pid: int | None = None
    capture_start: int | None = None
    baseline: dict[str, str] = field(default_factory=dict)

    def path(self) -> Path:
        return STATE_DIR / f"{self.name}.json"

    def forward_pairs(self) -> list[tuple[str, str]]:
        """The forwards as (loopback ip, port)."""
        return forward_pairs(self.forwards)

    def save(self) -> None:
        write_private(self.path().name, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> State | None:
        try:
            data = json.loads(read_private(path))
            known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
            state = cls(**known)
        except (OSError, ValueError, TypeError):
            return None
        # A state file names only things we create under our own naming scheme; anything else
        # is not trusted (cleanup never removes what a tampered file points at).
        m = NAME_RE.match(state.name)
        if (not m or path.name != f"{state.name}.json" or state.veth != state.name
                or state.table != f"aegis_{m.group(1)}"):
            return None
        return state


def _open_state_dir() -> int:
    """The state directory, opened: root's own and private (0700), never through a symlink.
    What it holds (owners, subnets, log paths, the sysctl baseline) is for root; `netns list`
    as another user shows the names under /run/netns instead."""
    STATE_DIR.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(STATE_DIR, 0o700)
    try:
        fd = os.open(STATE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise AegisError(f"cannot use {STATE_DIR} for the namespace state ({exc.strerror}): "
                         f"if it is a symlink or a file, remove it and try again") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        os.close(fd)
        raise AegisError(f"{STATE_DIR} belongs to uid {st.st_uid}, not to root: someone else "
                         f"made it; remove it (`sudo rm -r {STATE_DIR}`) and try again")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.fchmod(fd, 0o700)  # made 0755 by an earlier version
    return fd


def write_private(name: str, text: str) -> None:
    """Write state file `name` (0600) atomically, relative to the directory's fd, through a
    temporary name created with O_EXCL|O_NOFOLLOW: a symlink planted at either name is never
    written through (rename replaces a symlink, it does not follow it)."""
    dfd = _open_state_dir()
    try:
        tmp = f".{name}.tmp"
        for attempt in range(2):
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=dfd)
                break
            except FileExistsError:
                if attempt:
                    raise
                # Left by a crash mid-write, or planted: unlink removes the name itself,
                # never what it points at.
                os.unlink(tmp, dir_fd=dfd)
        with os.fdopen(fd, "w") as out:
            os.fchmod(fd, 0o600)  # whatever the umask
            out.write(text)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)


def read_private(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd) as f:
        return f.read()


_lock_depth = 0


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Serialise subnet choice and the shared sysctl baseline between aegis processes.
    Re-entrant within a process (a second flock on a new descriptor would deadlock)."""
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    dfd = _open_state_dir()
    try:
        fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dfd)
    finally:
        os.close(dfd)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _lock_depth = 1
        yield
    finally:
        _lock_depth = 0
        os.close(fd)


def load_states() -> list[State]:
    try:
        names = sorted(n for n in os.listdir(STATE_DIR)
                       if n.startswith(PREFIX) and n.endswith(".json"))
    except OSError:  # none yet, or not root
        return []
    return [s for n in names if (s := State.load(STATE_DIR / n))]


def state_readable() -> bool:
    """False for a user who may not read the state (not root)."""
    return not STATE_DIR.exists() or os.access(STATE_DIR, os.R_OK | os.X_OK)
