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

What is decided (subnets, names, DNS, the nft rulesets) is in `plan`, the state files in
`state`, stopping processes in `stop`; this module is only what changes the system. It is over
400 lines on purpose: each phase of `create` and its undoing in `_remove` read side by side.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis_mcp import procs
from aegis_mcp.errors import AegisError
from aegis_mcp.launch import python_command, root_env
from aegis_mcp.netmon.log import open_log
from aegis_mcp.netns.nft_policy import nflog_group, policy_table
from aegis_mcp.netns.plan import (
    GUARD_TABLE,
    NAME_RE,
    NETNS_ETC,
    NETNS_RUN,
    NS_IFNAME,
    PREFIX,
    dns_plan,
    guard_table,
    host_guard,
    inner_forward_table,
    is_ipv4,
    nameservers,
    nat_table,
    pick_subnet,
)
from aegis_mcp.netns.state import (
    BASELINE,
    STATE_DIR,
    State,
    load_states,
    locked,
    read_private,
    state_readable,
    write_private,
)
from aegis_mcp.netns.stop import pids_inside, stop_process, stop_processes_inside

if TYPE_CHECKING:
    from aegis_mcp.netmon.policy import Policy

SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.netfilter.nf_conntrack_acct": "1",
}
READY_TIMEOUT = 10.0
NO_DETAILS = ("the namespace state is readable by root only: run `sudo aegis-mcp netns list` "
              "for owners, addresses and which ones are stale")


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
    used.extend(ipaddress.ip_network(s.subnet) for s in load_states())
    return [n for n in used if isinstance(n, ipaddress.IPv4Network)]


def _reserve(owner_pid: int, log_path: Path, resolv_conf: Path) -> State:
    name = f"{PREFIX}{owner_pid}"
    existing = STATE_DIR / f"{name}.json"
    if existing.exists() or (NETNS_RUN / name).exists():
        old = State.load(existing)
        if old is not None and not procs.alive(old.owner_pid, old.owner_start):
            _remove_dead(old)
        else:
            raise AegisError(f"network namespace {name} already exists; if its supervisor is "
                             "gone, run `sudo aegis-mcp netns cleanup`")
    subnet = pick_subnet(_used_networks())
    hosts = list(subnet.hosts())
    dns, _ = dns_plan(resolv_conf, str(hosts[0]))
    try:
        baseline = json.loads(read_private(STATE_DIR / BASELINE))
    except (OSError, ValueError):
        # nf_conntrack may not be loaded yet (our nft table loads it): its default is 0.
        baseline = {key: _sysctl(key) or "0" for key in SYSCTLS}
        baseline["guard"] = "1" if baseline.get("net.ipv4.ip_forward") == "0" else "0"
        write_private(BASELINE, json.dumps(baseline) + "\n")
    state = State(
        name=name, owner_pid=owner_pid, owner_start=procs.start_time(owner_pid),
        created=time.time(),
        subnet=str(subnet), host_addr=str(hosts[0]), ns_addr=str(hosts[1]), veth=name,
        table=f"aegis_{owner_pid}", dns=dns, nameservers=nameservers(resolv_conf)[0],
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
    if state.dns.startswith("dnat:") or state.forwards:  # (the resolver is on the host end)
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
    if state.host_access:
        _nft(nft, nat_table(state, ""))
        return
    try:
        _nft(nft, nat_table(state, host_guard(state, reject=True)))
    except AegisError:
        # Kernels before 5.9 cannot reject in prerouting: drop there (a connection attempt to
        # the host then times out instead of failing at once). Anything else fails again.
        _nft(nft, nat_table(state, host_guard(state, reject=False)))


def _resolver_sockets(state: State) -> tuple[socket.socket, socket.socket]:
    """The UDP socket and the listening TCP socket of the namespace's resolver (`resolver`),
    on the host end of the veth at one free port that the namespace's port 53 is DNAT-ed to:
    a resolver of the host that holds every address's port 53 (dnsmasq) is no obstacle. Its
    upstream is what the namespace would have used: the host's loopback resolver or its
    first nameserver."""
    for _ in range(32):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((state.host_addr, 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(udp.getsockname())
            tcp.listen(16)
            break
        except OSError:  # that port is taken for TCP: another
            udp.close()
            tcp.close()
    else:
        raise AegisError(f"no port of {state.host_addr} is free for both UDP and TCP (the "
                         "namespace's resolver)")
    upstream = state.dns.split(":", 1)[1] if state.dns.startswith("dnat:") else next(
        (s for s in state.nameservers if is_ipv4(s)), "127.0.0.53")
    state.dns = f"resolver:{udp.getsockname()[1]}:{upstream}"
    state.save()
    return udp, tcp


def _add_policy(state: State, nft: str, policy: Policy, maps: bool) -> bool:
    """Loads the policy's table: with its verdict maps, else (an nft that refuses them, or
    `maps` False) as one chain of every rule. Returns whether the maps are in."""
    group = nflog_group(state.subnet)
    if maps:
        try:
            _nft(nft, policy_table(state, policy.rules, policy.default, group))
            return True
        except AegisError:
            pass
    _nft(nft, policy_table(state, policy.rules, policy.default, group, maps=False))
    return False


def _add_inner_forwards(state: State, tools: dict[str, str]) -> None:
    if not state.forwards:
        return
    enter = (tools["ip"], "netns", "exec", state.name)
    _nft(tools["nft"], inner_forward_table(state), enter)
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
        _nft(nft, guard_table())


def _write_resolv_conf(state: State, resolv_conf: Path) -> None:
    _, text = dns_plan(resolv_conf, state.host_addr)
    if state.dns.startswith("resolver:"):
        keep = [line for line in text.splitlines()[1:] if not line.startswith("nameserver")]
        text = "\n".join(["# written by aegis-mcp: its resolver, which opens the names the "
                          "network policy allows", f"nameserver {state.host_addr}", *keep]) + "\n"
    directory = NETNS_ETC / state.name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "resolv.conf").write_text(text)
    os.chmod(directory / "resolv.conf", 0o644)


def _start_capture(state: State, log_path: Path, log_fd: int | None,
                   say_fd: int | None = None, policy: Policy | None = None,
                   resolver: tuple[socket.socket, socket.socket] | None = None,
                   nft: str = "nft", min_ttl: int | None = None,
                   learned_map: bool = False) -> subprocess.Popen[bytes]:
    """The root-side capture: isolated Python (never the user's directory on its import path),
    started from / with a scrubbed environment, writing to a log descriptor it is handed. With
    a policy, it reads the denials the kernel logs, and the policy on its stdin, and serves
    the namespace's DNS on the `resolver` sockets (UDP, TCP)."""
    enforce: tuple[str, ...] = ()
    if policy is not None and resolver is not None:
        enforce = ("--nflog-group", str(nflog_group(state.subnet)), "--resolver-fd",
                   str(resolver[0].fileno()), "--resolver-tcp-fd", str(resolver[1].fileno()),
                   "--upstream", state.dns.rsplit(":", 1)[1],
                   "--table", state.table, "--nft", nft,
                   *(("--learned-map",) if learned_map else ()),
                   *(("--min-ttl", str(min_ttl)) if min_ttl is not None else ()))
    own_fd = log_fd is None
    fd = open_log(str(log_path))[0] if log_fd is None else log_fd  # root's own dir
    # A number of its own: the helper's stderr (2) is its error file.
    say = os.dup(say_fd) if say_fd is not None else None
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
                    *(("--host-access",) if state.host_access else ()),
                    *(("--say-fd", str(say)) if say is not None else ()), *enforce,
                    root_side=True),
                stdin=subprocess.PIPE if policy is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=err, cwd="/",
                env=root_env(), start_new_session=True, close_fds=True,
                pass_fds=(fd, *(() if say is None else (say,)),
                          *(() if resolver is None else (s.fileno() for s in resolver))),
            )
    finally:
        if own_fd:
            os.close(fd)
        if say is not None:
            os.close(say)
    assert proc.stdout is not None
    for sock in resolver or ():
        sock.close()  # the capture's now
    if policy is not None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died: said below
            proc.stdin.write(policy.compile().encode())
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    state.capture_pid = proc.pid
    state.capture_start = procs.start_time(proc.pid)
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
        self.policy: Policy | None = None
        """The network policy the kernel enforces for this namespace, if any."""
        self.policy_maps = False
        """Whether it is in with its verdict maps (`nft_policy`), not as one long chain."""
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
            stop_process(self._capture.pid, self.state.capture_start)
            with contextlib.suppress(Exception):
                self._capture.wait(timeout=1)
        _remove(self.state)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()


def create(owner_pid: int, log_path: Path, *, resolv_conf: Path = Path("/etc/resolv.conf"),
           capture: bool = True, forwards: tuple[tuple[str, int], ...] = (),
           host_access: bool = False, log_fd: int | None = None,
           say_fd: int | None = None,
           policy: Callable[[State], Policy] | None = None,
           min_ttl: int | None = None, policy_maps: bool = True) -> Namespace:
    """Set up namespace `aegis-<owner_pid>` with NAT, DNS and capture into `log_path`.

    Call from the supervisor's main thread (the capture helper exits when its parent thread
    does). Raises AegisError with one line on any failure, after undoing what was done.
    `resolv_conf` is the host's resolver configuration to follow; `capture=False` (for the
    benchmark) sets up the namespace without recording anything. `forwards` are host
    loopback (ip, port)s that stay reachable at the same address from inside. The agent
    reaches the host itself only through DNS and those forwards, unless `host_access`
    (--netns-host-access) lets it reach every service of the host as before. `log_fd`, when
    given, is `log_path` already open for appending (by the user who owns its directory):
    root then never opens a path there itself. `say_fd`, when given, is where the capture
    tells the user what to do about what it sees (the supervisor's stderr): a port of this
    host refused inside the namespace names `--netns-forward PORT`, once per port. `policy`,
    when given, makes the network policy for the namespace's state (its implicit allows
    name the namespace's resolver): the kernel enforces it from before the agent starts, and
    the capture writes a `deny` event for each denial. `min_ttl` (tests) lowers the bound of
    a learned address's life (`resolver.MIN_TTL`); `policy_maps` False (tests, the
    benchmark) loads the policy as one chain of every rule, as an nft without its verdict
    maps gets it."""
    require_root()
    tools = _require_tools()
    for ip, port in forwards:
        if not ipaddress.ip_address(ip).is_loopback or ipaddress.ip_address(ip).version != 4 \
                or not 0 < port < 65536:
            raise AegisError(f"cannot forward {ip}:{port} into the namespace: only IPv4 "
                             "loopback addresses and ports 1-65535")
    with locked():
        state = _reserve(owner_pid, Path(log_path), resolv_conf)
        state.forwards = sorted({f"{ip}:{port}" for ip, port in forwards})
        state.host_access = host_access
        state.save()
    namespace = Namespace(state, tools, None)
    resolver: tuple[socket.socket, socket.socket] | None = None
    try:
        _add_namespace(state)
        _add_veth(state)
        _disable_ipv6(state, tools)
        if policy is not None:
            resolver = _resolver_sockets(state)
        _add_nft_table(state, tools["nft"])
        if policy is not None:
            namespace.policy = policy(state)
            namespace.policy_maps = _add_policy(state, tools["nft"], namespace.policy,
                                                policy_maps)
        _add_inner_forwards(state, tools)
        with locked():
            _set_sysctls(state, tools["nft"], capture)
        _write_resolv_conf(state, resolv_conf)
        if capture:
            namespace._capture = _start_capture(state, Path(log_path), log_fd, say_fd,
                                                namespace.policy, resolver, tools["nft"],
                                                min_ttl, namespace.policy_maps)
    except BaseException as exc:
        namespace.teardown()
        for sock in resolver or ():
            sock.close()
        if isinstance(exc, AegisError | KeyboardInterrupt):
            raise
        raise AegisError(f"could not set up network namespace {state.name}: {exc}") from exc
    return namespace


def list_namespaces() -> list[dict[str, Any]]:
    """Every `aegis-*` namespace (and every aegis state file without one), with its owner pid,
    whether that owner is alive, addresses and age. Needs no root, but without it the state
    files are out of reach: the rows then say only what /run/netns and /proc show (`ours`
    and `stale` are None, and `note` says to use sudo)."""
    detailed = state_readable()
    states = {s.name: s for s in load_states()}
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
            alive = procs.alive(state.owner_pid, state.owner_start)
            row.update(owner_pid=state.owner_pid, alive=alive, stale=not alive,
                       subnet=state.subnet, host_addr=state.host_addr, ns_addr=state.ns_addr,
                       veth=state.veth, table=state.table, dns=state.dns,
                       host_access=state.host_access, created=state.created,
                       age=round(now - state.created, 1), log_path=state.log_path,
                       capture_alive=procs.alive(state.capture_pid, state.capture_start))
        else:
            pid = int(m.group(1)) if m else None
            alive = pid is not None and procs.start_time(pid) is not None
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
    return [row for state in load_states() if (row := cleanup_one(state.name)) is not None]


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
    if state is None or procs.alive(state.owner_pid, state.owner_start):
        return None
    stopped, left = _remove_dead(state)
    return {"name": state.name, "owner_pid": state.owner_pid, "subnet": state.subnet,
            "veth": state.veth, "table": state.table, "processes_stopped": stopped,
            "processes_left_inside": left}


def _remove_dead(state: State) -> tuple[list[int], list[int]]:
    """Take down the namespace of a dead owner: (pids stopped inside, pids that survived)."""
    stopped = stop_processes_inside(state.name)
    stop_process(state.capture_pid, state.capture_start)
    left = pids_inside(state.name)
    _remove(state)
    return stopped, left


# ---------------------------------------------------------------------------------------------
# Removal, shared by teardown and cleanup.


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
    with locked():
        with contextlib.suppress(FileNotFoundError):
            state.path().unlink()
        with contextlib.suppress(FileNotFoundError):
            (STATE_DIR / f"{state.name}.capture.err").unlink()
        if not load_states():
            _restore_baseline(nft)


def _restore_baseline(nft: str) -> None:
    """The last aegis namespace is gone: put the sysctls back as they were before the first."""
    path = STATE_DIR / BASELINE
    try:
        baseline = json.loads(read_private(path))
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
