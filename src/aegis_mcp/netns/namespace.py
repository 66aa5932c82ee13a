"""Network-namespace mode: the agent runs in its own network namespace, and a root-side helper
records every connection that crosses the namespace's veth.

The order of the root-only phases (all in `create`, each a small function below, as
bubblewrap names its phases):

  reserve     under a lock, pick a free private subnet and write the state file
              /run/aegis-mcp/netns/aegis-<pid>.json FIRST, so that whatever happens next,
              `cleanup` knows exactly what is ours to remove
  namespace   `aegis-<pid>` (pyroute2), loopback up
  veth        host end `aegis-<pid>` with .1, namespace end `eth0` with .2, default route .1;
              IPv6 off on both ends
  nftables    table `ip aegis_<pid>`: a host_guard chain that refuses what the agent sends to
              the host itself (but DNS and the forwards; unless host access is asked for),
              masquerade for the subnet, DNS DNAT when the host uses a loopback resolver,
              forwarding only for replies into the namespace
  forwards    host-loopback TCP ports the agent must reach (its API URLs name 127.0.0.1):
              inside the namespace 127.0.0.1:PORT is DNATed to the host end, and there to the
              host's 127.0.0.1:PORT (httptap #19: a namespace cannot reach the host's loopback)
  sysctls     net.ipv4.ip_forward=1 and net.netfilter.nf_conntrack_acct=1; the values found
              before the first aegis namespace are kept in a shared baseline file and put back
              by whichever teardown or cleanup removes the last aegis namespace
  dns         /etc/netns/aegis-<pid>/resolv.conf, which `ip netns exec` bind-mounts over
              /etc/resolv.conf for the agent
  capture     `python -m aegis_mcp.netns.capture` (root, outside the agent's process tree), ready
              before `create` returns so the agent's first packet is seen

The agent itself is then started by the supervisor with `exec_prefix()`: `ip netns exec`
enters the namespace (and a private mount namespace for the resolv.conf), `setpriv` drops to
the user. Every process the agent starts inherits the namespace.

`teardown()` undoes the phases in reverse, tolerates any of them missing, and is safe to call
twice; `cleanup_one()` does the same from the state file of a namespace whose owner died, after
stopping what still runs inside it, and `cleanup_stale()` for every such namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aegis_mcp.errors import AegisError
from aegis_mcp.launch import python_command, root_env
from aegis_mcp.netmon.log import open_log

PREFIX = "aegis-"
NAME_RE = re.compile(r"^aegis-(\d{1,7})$")
STATE_DIR = Path(os.environ.get("AEGIS_NETNS_STATE_DIR", "/run/aegis-mcp/netns"))
NETNS_ETC = Path("/etc/netns")
NETNS_RUN = Path("/run/netns")
BASELINE = "sysctl-baseline.json"
GUARD_TABLE = "aegis_guard"
# Private ranges tried in order, split into /30s (host end .1, namespace end .2).
POOLS = ("10.200.0.0/16", "172.30.200.0/22", "192.168.254.0/24")
SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.netfilter.nf_conntrack_acct": "1",
}
READY_TIMEOUT = 10.0
NO_DETAILS = ("the namespace state is readable by root only: run `sudo aegis-mcp netns list` "
              "for owners, addresses and which ones are stale")
NS_IFNAME = "eth0"
"""The namespace's end of the veth."""


def require_root(action: str | None = None) -> None:
    """Raise the one-line error the user sees when netns mode (or `action`) lacks root."""
    if os.geteuid() != 0 and action is not None:
        raise AegisError(f"{action} needs root (it removes network namespaces, links and "
                         "nftables tables): run it with sudo")
    if os.geteuid() != 0:
        raise AegisError(
            "--netmon=netns needs root to create a network namespace: run it with sudo "
            "(`sudo aegis-mcp ... --netmon=netns`), or use --netmon=preload"
        )


def _require_tools() -> dict[str, str]:
    tools = {"ip": "iproute2", "nft": "nftables", "setpriv": "util-linux"}
    found: dict[str, str] = {}
    for tool, package in tools.items():
        path = shutil.which(tool) or next(
            (p for d in ("/usr/sbin", "/sbin", "/usr/bin") if os.access(p := f"{d}/{tool}",
                                                                       os.X_OK)), None)
        if path is None:
            raise AegisError(f"--netmon=netns needs `{tool}`: install the {package} package "
                             "(e.g. `apt-get install {package}`), or use --netmon=preload"
                             .replace("{package}", package))
        found[tool] = path
    return found


# ---------------------------------------------------------------------------------------------
# State: what proves a namespace is ours, and what to remove.


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
        return [(ip, port) for ip, port in (f.rsplit(":", 1) for f in self.forwards)]

    def save(self) -> None:
        _write_private(self.path().name, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> State | None:
        try:
            data = json.loads(_read_private(path))
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


def _start_time(pid: int) -> int | None:
    """The kernel start time of `pid` (clock ticks since boot), or None if it is gone; pid and
    start time together name one process even after pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int | None, start: int | None) -> bool:
    if not pid:
        return False
    now = _start_time(pid)
    return now is not None and (start is None or now == start)


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


def _write_private(name: str, text: str) -> None:
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


def _read_private(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd) as f:
        return f.read()


_lock_depth = 0


@contextlib.contextmanager
def _locked() -> Iterator[None]:
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


def _states() -> list[State]:
    try:
        names = sorted(n for n in os.listdir(STATE_DIR)
                       if n.startswith(PREFIX) and n.endswith(".json"))
    except OSError:  # none yet, or not root
        return []
    return [s for n in names if (s := State.load(STATE_DIR / n))]


def _state_readable() -> bool:
    """False for a user who may not read the state (not root)."""
    return not STATE_DIR.exists() or os.access(STATE_DIR, os.R_OK | os.X_OK)


# ---------------------------------------------------------------------------------------------
# Phases of create().


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host routes or has an address in (all tables), plus the subnets
    of other aegis namespaces; the default route does not count."""
    from pyroute2 import IPRoute

    used: list[ipaddress.IPv4Network] = []
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=2, table=0):
            dst = route.get_attr("RTA_DST")
            if dst and route["dst_len"]:
                used.append(ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False))
        for addr in ipr.get_addr(family=2):
            used.append(ipaddress.ip_network(
                f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}", strict=False))
    used.extend(ipaddress.ip_network(s.subnet) for s in _states())
    return [n for n in used if isinstance(n, ipaddress.IPv4Network)]


def _pick_subnet(used: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    for pool in POOLS:
        pool_net = ipaddress.ip_network(pool)
        # A host route that covers the whole pool (a VPN's 10.0.0.0/8) rules it out at once.
        if any(pool_net.subnet_of(n) for n in used if n.version == 4):  # type: ignore[arg-type]
            continue
        clashing = [n for n in used if n.overlaps(pool_net)]
        for candidate in pool_net.subnets(new_prefix=30):
            if not any(candidate.overlaps(n) for n in clashing):
                return candidate
    raise AegisError("no free private subnet for the namespace (10.200.0.0/16, "
                     "172.30.200.0/22 and 192.168.254.0/24 are all in use); run "
                     "`sudo aegis-mcp netns cleanup` if stale namespaces hold them")


def _nameservers(resolv_conf: Path) -> tuple[list[str], list[str]]:
    """(nameserver addresses, other lines worth keeping: search/domain/options)."""
    servers: list[str] = []
    keep: list[str] = []
    try:
        text = resolv_conf.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) > 1:
            servers.append(words[1])
        elif words[0] in ("search", "domain", "options"):
            keep.append(line.strip())
    return servers, keep


def _dns_plan(resolv_conf: Path, host_addr: str) -> tuple[str, str]:
    """Decide how DNS works inside: returns (dns mode for the state, resolv.conf text).

    A namespace cannot reach the host's loopback (httptap #19), and systemd-resolved's
    127.0.0.53 or a local dnsmasq/unbound on 127.0.0.1 are loopback resolvers. For those we
    DNAT port 53 of the host end of the veth to the loopback resolver (route_localnet on the
    veth only), so the agent gets exactly the host's resolution, split DNS and VPN domains
    included. Otherwise the host's own resolv.conf is copied: its servers are reached through
    NAT like any other address."""
    servers, keep = _nameservers(resolv_conf)
    v4 = [s for s in servers if _is_ipv4(s)]
    loop = [s for s in v4 if ipaddress.ip_address(s).is_loopback]
    if loop or not v4:
        target = loop[0] if loop else "127.0.0.53"
        lines = [f"# written by aegis-mcp: {target} (host loopback) through {host_addr}",
                 f"nameserver {host_addr}", *keep]
        return f"dnat:{target}", "\n".join(lines) + "\n"
    lines = ["# written by aegis-mcp: the host's resolvers, reached through NAT",
             *(f"nameserver {s}" for s in v4), *keep]
    return "copy", "\n".join(lines) + "\n"


def _is_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def _reserve(owner_pid: int, log_path: Path, resolv_conf: Path) -> State:
    name = f"{PREFIX}{owner_pid}"
    existing = STATE_DIR / f"{name}.json"
    if existing.exists() or (NETNS_RUN / name).exists():
        old = State.load(existing)
        if old is not None and not _alive(old.owner_pid, old.owner_start):
            _remove_dead(old)
        else:
            raise AegisError(f"network namespace {name} already exists; if its supervisor is "
                             "gone, run `sudo aegis-mcp netns cleanup`")
    subnet = _pick_subnet(_used_networks())
    hosts = list(subnet.hosts())
    dns, _ = _dns_plan(resolv_conf, str(hosts[0]))
    try:
        baseline = json.loads(_read_private(STATE_DIR / BASELINE))
    except (OSError, ValueError):
        # nf_conntrack may not be loaded yet (our nft table loads it): its default is 0.
        baseline = {key: _sysctl(key) or "0" for key in SYSCTLS}
        baseline["guard"] = "1" if baseline.get("net.ipv4.ip_forward") == "0" else "0"
        _write_private(BASELINE, json.dumps(baseline) + "\n")
    state = State(
        name=name, owner_pid=owner_pid, owner_start=_start_time(owner_pid), created=time.time(),
        subnet=str(subnet), host_addr=str(hosts[0]), ns_addr=str(hosts[1]), veth=name,
        table=f"aegis_{owner_pid}", dns=dns, nameservers=_nameservers(resolv_conf)[0],
        log_path=str(log_path), baseline=baseline,
    )
    state.save()
    return state


def _add_namespace(state: State) -> None:
    from pyroute2 import NetNS, netns

    netns.create(state.name)
    with NetNS(state.name) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")


def _add_veth(state: State) -> None:
    from pyroute2 import IPRoute, NetNS

    with IPRoute() as ipr:
        ipr.link("add", ifname=state.veth, kind="veth",
                 peer={"ifname": NS_IFNAME, "net_ns_fd": state.name})
        index = ipr.link_lookup(ifname=state.veth)[0]
        ipr.addr("add", index=index, address=state.host_addr, prefixlen=30)
        ipr.link("set", index=index, state="up")
    with NetNS(state.name) as ns:
        index = ns.link_lookup(ifname=NS_IFNAME)[0]
        ns.addr("add", index=index, address=state.ns_addr, prefixlen=30)
        ns.link("set", index=index, state="up")
        ns.route("add", dst="0.0.0.0/0", gateway=state.host_addr)
    if state.dns.startswith("dnat:") or state.forwards:
        # Lets the DNAT to 127.x route on this interface only (and its replies leave by it).
        _write_sysctl(f"net.ipv4.conf.{state.veth}.route_localnet", "1")


def _nft(nft: str, script: str, enter: tuple[str, ...] = ()) -> None:
    """Run an nft script; `enter` is a prefix that runs it in a namespace (`ip netns exec`)."""
    proc = subprocess.run([*enter, nft, "-f", "-"], input=script, text=True,
                          capture_output=True, timeout=30)
    if proc.returncode != 0:
        where = f" in {enter[-1]}" if enter else ""
        raise AegisError(f"nft{where} failed: {proc.stderr.strip().splitlines()[-1:] or '?'}")


def _add_nft_table(state: State, nft: str) -> None:
    dnat = ""
    if state.dns.startswith("dnat:"):
        target = state.dns.split(":", 1)[1]
        dnat = "".join(
            f'    iifname "{state.veth}" ip daddr {state.host_addr} {p} dport 53 '
            f"dnat to {target}:53\n" for p in ("udp", "tcp"))
    for ip, port in state.forward_pairs():
        dnat += (f'    iifname "{state.veth}" ip daddr {state.host_addr} tcp dport {port} '
                 f"dnat to {ip}:{port}\n")

    def table(guard: str) -> str:
        return f"""
table ip {state.table} {{
  comment "aegis-mcp network namespace {state.name}"
{guard}  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
{dnat}  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {state.subnet} oifname != "{state.veth}" masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    oifname "{state.veth}" ct state established,related accept
    oifname "{state.veth}" drop
  }}
}}
"""

    if state.host_access:
        _nft(nft, table(""))
        return
    try:
        _nft(nft, table(_host_guard(state, reject=True)))
    except AegisError:
        # Kernels before 5.9 cannot reject in prerouting: drop there (a connection attempt to
        # the host then times out instead of failing at once). Anything else fails again.
        _nft(nft, table(_host_guard(state, reject=False)))


def _host_guard(state: State, reject: bool) -> str:
    """The chain that keeps the agent off the host itself: of what arrives from the namespace,
    only replies, DNS and the forwarded loopback ports may end on the host; anything else for
    one of the host's own addresses (any of them: Linux answers on every interface for each),
    a broadcast or a multicast address is refused, before any DNAT (ours or a container
    engine's port publishing) can turn it into something else. Unicast to other machines goes
    on to the NAT. A reset rather than a silent drop: the agent fails at once instead of
    hanging on a timeout, and learns nothing more (every port answers alike)."""
    veth = f'iifname "{state.veth}"'
    allow = [f"{veth} ct state established,related accept"]
    if state.dns.startswith("dnat:"):
        allow += [f"{veth} ip daddr {state.host_addr} {p} dport 53 accept" for p in ("udp", "tcp")]
    else:
        # Copied resolvers may be one of the host's own addresses (dnsmasq on the LAN address).
        servers = sorted({s for s in state.nameservers if _is_ipv4(s)})
        if servers:
            allow += [f"{veth} ip daddr {{ {', '.join(servers)} }} {p} dport 53 accept"
                      for p in ("udp", "tcp")]
    ports = sorted({int(port) for _, port in state.forward_pairs()})
    if ports:
        allow.append(f"{veth} ip daddr {state.host_addr} tcp dport "
                     f"{{ {', '.join(map(str, ports))} }} accept")
    refuse = ([f"{veth} fib daddr type != unicast meta l4proto tcp reject with tcp reset",
               f"{veth} fib daddr type != unicast reject"] if reject
              else [f"{veth} fib daddr type != unicast drop"])
    rules = "".join(f"    {rule}\n" for rule in [*allow, *refuse])
    return f"""  chain host_guard {{
    type filter hook prerouting priority mangle; policy accept;
{rules}  }}
"""


def _add_inner_forwards(state: State, tools: dict[str, str]) -> None:
    """Inside the namespace: connections to a forwarded loopback ip:port go out to the host
    end (output DNAT, then masquerade of the 127.x source, which route_localnet lets out)."""
    if not state.forwards:
        return
    enter = (tools["ip"], "netns", "exec", state.name)
    rules = "".join(f"    ip daddr {ip} tcp dport {port} dnat to {state.host_addr}:{port}\n"
                    for ip, port in state.forward_pairs())
    script = f"""
table ip aegis_forward {{
  chain output {{
    type nat hook output priority -100; policy accept;
{rules}  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{NS_IFNAME}" ip saddr 127.0.0.0/8 masquerade
  }}
}}
"""
    _nft(tools["nft"], script, enter)
    _write_inner_sysctls(state, tools, {f"net.ipv4.conf.{NS_IFNAME}.route_localnet": "1"})


def _disable_ipv6(state: State, tools: dict[str, str]) -> None:
    """No IPv6 on either end of the veth. The kernel gives both ends a link-local address of
    their own, and through the host end's the agent reached every host service bound to
    [::]; the capture and the nftables table are IPv4 only, so that traffic was not even
    recorded. The namespace's loopback keeps its ::1."""
    key = "net.ipv6.conf.{}.disable_ipv6"
    if not _sysctl_path(key.format("all")).exists():
        return  # no IPv6 in this kernel at all
    _write_sysctl(key.format(state.veth), "1")
    _write_inner_sysctls(state, tools, {key.format(NS_IFNAME): "1"})


def _write_inner_sysctls(state: State, tools: dict[str, str], values: dict[str, str]) -> None:
    """Write sysctls inside the namespace (/proc/sys/net shows the writer's namespace)."""
    script = "; ".join(f"echo {value} > {_sysctl_path(key)}" for key, value in values.items())
    subprocess.run([tools["ip"], "netns", "exec", state.name, "sh", "-c", script], check=True,
                   capture_output=True, timeout=30)


def _set_sysctls(state: State, nft: str, capture: bool) -> None:
    for key, value in SYSCTLS.items():
        if capture or key == "net.ipv4.ip_forward":
            _write_sysctl(key, value)
    if state.baseline.get("guard") == "1" and not _table_exists(nft, GUARD_TABLE):
        # ip_forward was 0: the host must not start routing for anyone else because of us.
        _nft(nft, f"""
table ip {GUARD_TABLE} {{
  comment "aegis-mcp: forward only for aegis namespaces while ip_forward is on for them"
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname != "{PREFIX}*" oifname != "{PREFIX}*" drop
  }}
}}
""")


def _write_resolv_conf(state: State, resolv_conf: Path) -> None:
    _, text = _dns_plan(resolv_conf, state.host_addr)
    directory = NETNS_ETC / state.name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "resolv.conf").write_text(text)
    os.chmod(directory / "resolv.conf", 0o644)


def _start_capture(state: State, log_path: Path, log_fd: int | None) -> subprocess.Popen[bytes]:
    """The root-side capture: isolated Python (never the user's directory on its import path),
    started from / with a scrubbed environment, writing to a log descriptor it is handed."""
    own_fd = log_fd is None
    fd = open_log(str(log_path))[0] if log_fd is None else log_fd  # root's own dir
    err_path = STATE_DIR / f"{state.name}.capture.err"
    try:
        err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        with os.fdopen(err_fd, "wb") as err:
            proc = subprocess.Popen(
                python_command(
                    "aegis_mcp.netns.capture", "--name", state.name, "--veth", state.veth,
                    "--ns-addr", state.ns_addr, "--host-addr", state.host_addr,
                    "--log-fd", str(fd), "--owner-pid", str(state.owner_pid),
                    *(arg for forward in state.forwards for arg in ("--forward", forward)),
                    root_side=True),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, cwd="/",
                env=root_env(), start_new_session=True, close_fds=True, pass_fds=(fd,),
            )
    finally:
        if own_fd:
            os.close(fd)
    assert proc.stdout is not None
    state.capture_pid = proc.pid
    state.capture_start = _start_time(proc.pid)
    state.save()
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(READY_TIMEOUT) and proc.stdout.readline().strip() == b"ready"
    proc.stdout.close()
    if not ready:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        detail = err_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no reply"]
        raise AegisError(f"the netns capture helper did not start: {detail[0]}")
    return proc


# ---------------------------------------------------------------------------------------------
# The public API.


class Namespace:
    """A live `aegis-<pid>` namespace owned by this process."""

    def __init__(self, state: State, tools: dict[str, str],
                 capture: subprocess.Popen[bytes] | None) -> None:
        self.state = state
        self._tools = tools
        self._capture = capture
        self._torn_down = False

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def helper_pids(self) -> tuple[int, ...]:
        """Root-side helpers (the capture) that are not part of the agent's tree."""
        if self._capture is None or self._capture.poll() is not None:
            return ()
        return (self._capture.pid,)

    def exec_prefix(self, uid: int, gid: int, groups: list[int] | tuple[int, ...] = ()
                    ) -> list[str]:
        """The command prefix that runs a program in the namespace as uid/gid/groups.

        `ip netns exec` enters the namespace in a private mount namespace where
        /etc/netns/<name>/resolv.conf is bind-mounted over /etc/resolv.conf; `setpriv` then
        drops root. Run as root: `Popen(ns.exec_prefix(uid, gid, groups) + argv)`. With
        uid 0 (--keep-root) there is no setpriv."""
        prefix = [self._tools["ip"], "netns", "exec", self.name]
        if uid == 0 and gid == 0:
            return prefix
        extra = list(dict.fromkeys(groups))
        group_arg = f"--groups={','.join(map(str, extra))}" if extra else "--clear-groups"
        return [*prefix, self._tools["setpriv"], f"--reuid={uid}", f"--regid={gid}",
                group_arg, "--"]

    def teardown(self) -> None:
        """Stop the capture (it writes final totals), then remove everything create() made.
        Safe to call more than once and after a partial create()."""
        if self._torn_down:
            return
        self._torn_down = True
        if self._capture is not None:
            _stop_process(self._capture.pid, self.state.capture_start)
            with contextlib.suppress(Exception):
                self._capture.wait(timeout=1)
        _remove(self.state)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()


def create(owner_pid: int, log_path: Path, *, resolv_conf: Path = Path("/etc/resolv.conf"),
           capture: bool = True, forwards: tuple[tuple[str, int], ...] = (),
           host_access: bool = False, log_fd: int | None = None) -> Namespace:
    """Set up namespace `aegis-<owner_pid>` with NAT, DNS and capture into `log_path`.

    Call from the supervisor's main thread (the capture helper exits when its parent thread
    does). Raises AegisError with one line on any failure, after undoing what was done.
    `resolv_conf` is the host's resolver configuration to follow; `capture=False` (for the
    benchmark) sets up the namespace without recording anything. `forwards` are host
    loopback (ip, port)s that stay reachable at the same address from inside. The agent
    reaches the host itself only through DNS and those forwards, unless `host_access`
    (--netns-host-access) lets it reach every service of the host as before. `log_fd`, when
    given, is `log_path` already open for appending (by the user who owns its directory):
    root then never opens a path there itself."""
    require_root()
    tools = _require_tools()
    for ip, port in forwards:
        if not ipaddress.ip_address(ip).is_loopback or ipaddress.ip_address(ip).version != 4 \
                or not 0 < port < 65536:
            raise AegisError(f"cannot forward {ip}:{port} into the namespace: only IPv4 "
                             "loopback addresses and ports 1-65535")
    with _locked():
        state = _reserve(owner_pid, Path(log_path), resolv_conf)
        state.forwards = sorted({f"{ip}:{port}" for ip, port in forwards})
        state.host_access = host_access
        state.save()
    namespace = Namespace(state, tools, None)
    try:
        _add_namespace(state)
        _add_veth(state)
        _disable_ipv6(state, tools)
        _add_nft_table(state, tools["nft"])
        _add_inner_forwards(state, tools)
        with _locked():
            _set_sysctls(state, tools["nft"], capture)
        _write_resolv_conf(state, resolv_conf)
        if capture:
            namespace._capture = _start_capture(state, Path(log_path), log_fd)
    except BaseException as exc:
        namespace.teardown()
        if isinstance(exc, AegisError | KeyboardInterrupt):
            raise
        raise AegisError(f"could not set up network namespace {state.name}: {exc}") from exc
    return namespace


def list_namespaces() -> list[dict[str, Any]]:
    """Every `aegis-*` namespace (and every aegis state file without one), with its owner pid,
    whether that owner is alive, addresses and age. Needs no root, but without it the state
    files are out of reach: the rows then say only what /run/netns and /proc show (`ours`
    and `stale` are None, and `note` says to use sudo)."""
    detailed = _state_readable()
    states = {s.name: s for s in _states()}
    names = set(states)
    with contextlib.suppress(OSError):
        names.update(n for n in os.listdir(NETNS_RUN) if n.startswith(PREFIX))
    now = time.time()
    rows: list[dict[str, Any]] = []
    for name in sorted(names):
        state = states.get(name)
        m = NAME_RE.match(name)
        row: dict[str, Any] = {"name": name, "ours": state is not None,
                               "exists": (NETNS_RUN / name).exists()}
        if state is not None:
            alive = _alive(state.owner_pid, state.owner_start)
            row.update(owner_pid=state.owner_pid, alive=alive, stale=not alive,
                       subnet=state.subnet, host_addr=state.host_addr, ns_addr=state.ns_addr,
                       veth=state.veth, table=state.table, dns=state.dns,
                       host_access=state.host_access, created=state.created,
                       age=round(now - state.created, 1), log_path=state.log_path,
                       capture_alive=_alive(state.capture_pid, state.capture_start))
        else:
            pid = int(m.group(1)) if m else None
            alive = pid is not None and _start_time(pid) is not None
            with contextlib.suppress(OSError):
                row["age"] = round(now - (NETNS_RUN / name).stat().st_mtime, 1)
            if detailed:
                row.update(owner_pid=pid, alive=alive, stale=False,
                           note="no aegis-mcp state file: not created by aegis-mcp, left alone")
            else:
                row.update(ours=None, owner_pid=pid, alive=alive, stale=None, note=NO_DETAILS)
        rows.append(row)
    return rows


def cleanup_stale() -> list[dict[str, Any]]:
    """Remove every aegis namespace whose owner is dead (see `cleanup_one`). Live ones and
    ones without our state file are left alone. Returns one row per namespace removed."""
    require_root("`aegis-mcp netns cleanup`")
    return [row for state in _states() if (row := cleanup_one(state.name)) is not None]


def cleanup_one(name: str) -> dict[str, Any] | None:
    """Remove namespace `name` if aegis-mcp made it and its owner is dead (a supervisor killed
    with -9, say): first stop every process still inside it (`stop_processes_inside`) and its
    capture helper, then the veth, nftables table, /etc/netns directory and state file. Returns
    what was removed and stopped, or None when `name` is not ours or its owner still lives.
    Needs root."""
    require_root("removing an aegis network namespace")
    if not NAME_RE.match(name):
        raise AegisError(f"{name!r} is not the name of an aegis namespace (aegis-<pid>)")
    state = State.load(STATE_DIR / f"{name}.json")
    if state is None or _alive(state.owner_pid, state.owner_start):
        return None
    stopped, left = _remove_dead(state)
    return {"name": state.name, "owner_pid": state.owner_pid, "subnet": state.subnet,
            "veth": state.veth, "table": state.table, "processes_stopped": stopped,
            "processes_left_inside": left}


def _remove_dead(state: State) -> tuple[list[int], list[int]]:
    """Take down the namespace of a dead owner: (pids stopped inside, pids that survived)."""
    stopped = stop_processes_inside(state.name)
    _stop_process(state.capture_pid, state.capture_start)
    left = _pids_inside(state.name)
    _remove(state)
    return stopped, left


# ---------------------------------------------------------------------------------------------
# Stopping what is left inside a namespace.

STOP_GRACE = 2.0
"""Seconds the processes left in a dead owner's namespace get between SIGTERM and SIGKILL."""
KILL_ROUNDS = 20
"""SIGKILL sweeps at most: each catches what forked since the one before."""


def stop_processes_inside(name: str, grace: float = STOP_GRACE) -> list[int]:
    """Stop every process in network namespace `name` (an agent, its MCP servers and whatever
    they started, when the supervisor that owned it was killed): SIGTERM (and SIGCONT, for a
    suspended one), up to `grace` seconds to exit, then SIGKILL until none is left. Each
    signal goes through a pidfd opened on the pid and only after checking that the process
    is still in that namespace, so a pid reused by another process is never signalled.
    Returns the pids signalled. Needs root (the processes belong to the agent's user)."""
    target = _netns_id(name)
    if target is None:
        return []
    pidfds: dict[int, int] = {}
    signalled: set[int] = set()
    try:
        for sig in (signal.SIGTERM, signal.SIGCONT):
            signalled.update(_signal_inside(target, sig, pidfds))
        _wait_exit(list(pidfds.values()), grace)
        for _ in range(KILL_ROUNDS):
            hit = _signal_inside(target, signal.SIGKILL, pidfds)
            if not hit:
                break
            signalled.update(hit)
            _wait_exit([pidfds[pid] for pid in hit if pid in pidfds], 1.0)
    finally:
        for fd in pidfds.values():
            os.close(fd)
    return sorted(signalled)


def _netns_id(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(NETNS_RUN / name)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _in_netns(pid: int, target: tuple[int, int]) -> bool:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:  # gone, or a zombie (whose namespaces are already released)
        return False
    return (st.st_dev, st.st_ino) == target


def _pids_in(target: tuple[int, int]) -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid()
            and _in_netns(int(e), target)]


def _pids_inside(name: str) -> list[int]:
    """Processes still in the namespace (e.g. an agent that outlived a killed supervisor)."""
    target = _netns_id(name)
    return [] if target is None else _pids_in(target)


def _signal_inside(target: tuple[int, int], sig: int, pidfds: dict[int, int]) -> list[int]:
    """Send `sig` to every process in the namespace `target`; returns the pids it reached."""
    hit: list[int] = []
    for pid in _pids_in(target):
        for _ in range(2):  # a second time with a fresh pidfd if the kept one is of a dead pid
            fd = pidfds.get(pid)
            if fd is None:
                try:
                    fd = pidfds[pid] = os.pidfd_open(pid)
                except OSError:
                    break
            # The pidfd names one process for good: if the check below saw another one (the
            # first died and its pid was reused in between), the signal finds the first dead.
            if not _in_netns(pid, target):
                break
            try:
                signal.pidfd_send_signal(fd, sig)
            except ProcessLookupError:
                os.close(pidfds.pop(pid))
                continue
            except PermissionError:
                break
            hit.append(pid)
            break
    return hit


def _wait_exit(pidfds: list[int], timeout: float) -> None:
    """Wait up to `timeout` for all of these processes to exit (a pidfd polls readable then)."""
    import select

    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    left = len(pidfds)
    deadline = time.monotonic() + timeout
    while left and (remaining := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(remaining * 1000):
            poller.unregister(fd)
            left -= 1


# ---------------------------------------------------------------------------------------------
# Removal, shared by teardown and cleanup.


def _stop_process(pid: int | None, start: int | None, grace: float = 2.0) -> None:
    if not _alive(pid, start):
        return
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid, start):
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        if _alive(pid, start):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _remove(state: State) -> None:
    """Remove what `state` names; each step on its own so one failure does not stop the rest."""
    from pyroute2 import IPRoute, netns

    nft = shutil.which("nft") or "/usr/sbin/nft"
    with contextlib.suppress(Exception), IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=state.veth):
            ipr.link("del", index=index)
    # Deleting a table that is not there just fails: cheaper than listing first.
    with contextlib.suppress(Exception):
        _nft(nft, f"delete table ip {state.table}\n")
    if (NETNS_RUN / state.name).exists():
        with contextlib.suppress(Exception):
            netns.remove(state.name)
    shutil.rmtree(NETNS_ETC / state.name, ignore_errors=True)
    with contextlib.suppress(OSError):
        if NETNS_ETC.is_dir() and not any(NETNS_ETC.iterdir()):
            NETNS_ETC.rmdir()
    with _locked():
        with contextlib.suppress(FileNotFoundError):
            state.path().unlink()
        with contextlib.suppress(FileNotFoundError):
            (STATE_DIR / f"{state.name}.capture.err").unlink()
        if not _states():
            _restore_baseline(nft)


def _restore_baseline(nft: str) -> None:
    """The last aegis namespace is gone: put the sysctls back as they were before the first."""
    path = STATE_DIR / BASELINE
    try:
        baseline = json.loads(_read_private(path))
    except (OSError, ValueError):
        return
    for key in SYSCTLS:
        if key in baseline and baseline[key] is not None:
            with contextlib.suppress(OSError):
                _write_sysctl(key, baseline[key])
    with contextlib.suppress(Exception):
        _nft(nft, f"delete table ip {GUARD_TABLE}\n")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _table_exists(nft: str, table: str) -> bool:
    try:
        proc = subprocess.run([nft, "list", "tables", "ip"], capture_output=True, text=True,
                              timeout=30)
    except OSError:
        return False
    return f"table ip {table}" in proc.stdout.splitlines()


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def _sysctl(key: str) -> str | None:
    try:
        return _sysctl_path(key).read_text().strip()
    except OSError:
        return None


def _write_sysctl(key: str, value: str) -> None:
    _sysctl_path(key).write_text(value + "\n")
