"""The plan of a namespace, as pure functions: its name, its private subnet, how DNS works
inside, the loopback forwards and the text of its nftables rulesets (the network policy's
are in `nft_policy`). Nothing here touches the system (beyond reading the resolv.conf it is
handed), so all of it is unit-testable without root; `namespace` carries the plan out.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from aegis_mcp.errors import AegisError

PREFIX = "aegis-"
NAME_RE = re.compile(r"^aegis-(\d{1,7})$")
NETNS_ETC = Path("/etc/netns")
NETNS_RUN = Path("/run/netns")
GUARD_TABLE = "aegis_guard"

# Private ranges tried in order, split into /30s (host end .1, namespace end .2).
POOLS = ("10.200.0.0/16", "172.30.200.0/22", "192.168.254.0/24")
NS_IFNAME = "eth0"
"""The namespace's end of the veth."""


class Addresses(Protocol):
    """What the rulesets need of a namespace (a `state.State` has it all)."""

    name: str
    veth: str
    table: str
    subnet: str
    host_addr: str
    dns: str
    nameservers: list[str]
    forwards: list[str]


def pick_subnet(used: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
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


def nameservers(resolv_conf: Path) -> tuple[list[str], list[str]]:
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


def dns_plan(resolv_conf: Path, host_addr: str) -> tuple[str, str]:
    """Decide how DNS works inside: returns (dns mode for the state, resolv.conf text).

    A namespace cannot reach the host's loopback (httptap #19), and systemd-resolved's
    127.0.0.53 or a local dnsmasq/unbound on 127.0.0.1 are loopback resolvers. For those we
    DNAT port 53 of the host end of the veth to the loopback resolver (route_localnet on the
    veth only), so the agent gets exactly the host's resolution, split DNS and VPN domains
    included. Otherwise the host's own resolv.conf is copied: its servers are reached through
    NAT like any other address."""
    servers, keep = nameservers(resolv_conf)
    v4 = [s for s in servers if is_ipv4(s)]
    loop = [s for s in v4 if ipaddress.ip_address(s).is_loopback]
    if loop or not v4:
        target = loop[0] if loop else "127.0.0.53"
        lines = [f"# written by aegis-mcp: {target} (host loopback) through {host_addr}",
                 f"nameserver {host_addr}", *keep]
        return f"dnat:{target}", "\n".join(lines) + "\n"
    lines = ["# written by aegis-mcp: the host's resolvers, reached through NAT",
             *(f"nameserver {s}" for s in v4), *keep]
    return "copy", "\n".join(lines) + "\n"


def is_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def forward_pairs(forwards: list[str]) -> list[tuple[str, str]]:
    """`ip:port` forwards as (loopback ip, port)."""
    return [(ip, port) for ip, port in (f.rsplit(":", 1) for f in forwards)]


def nat_table(state: Addresses, guard: str) -> str:
    """The namespace's own table on the host: `guard` (a host_guard chain, or nothing), DNS and
    forward DNAT, masquerade for the subnet, and forwarding only for replies into it."""
    dnat = ""
    if state.dns.startswith("resolver:"):  # a policy's: aegis-mcp's resolver, UDP and TCP
        port = state.dns.split(":")[1]
        dnat = "".join(
            f'    iifname "{state.veth}" ip daddr {state.host_addr} {p} dport 53 '
            f"dnat to {state.host_addr}:{port}\n" for p in ("udp", "tcp"))
    elif state.dns.startswith("dnat:"):
        target = state.dns.split(":", 1)[1]
        dnat = "".join(
            f'    iifname "{state.veth}" ip daddr {state.host_addr} {p} dport 53 '
            f"dnat to {target}:53\n" for p in ("udp", "tcp"))
    for ip, port in forward_pairs(state.forwards):
        dnat += (f'    iifname "{state.veth}" ip daddr {state.host_addr} tcp dport {port} '
                 f"dnat to {ip}:{port}\n")
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


def host_guard(state: Addresses, reject: bool) -> str:
    """The chain that keeps the agent off the host itself: of what arrives from the namespace,
    only replies, DNS and the forwarded loopback ports may end on the host; anything else for
    one of the host's own addresses (any of them: Linux answers on every interface for each),
    a broadcast or a multicast address is refused, before any DNAT (ours or a container
    engine's port publishing) can turn it into something else. Unicast to other machines goes
    on to the NAT. A reset rather than a silent drop: the agent fails at once instead of
    hanging on a timeout, and learns nothing more (every port answers alike)."""
    veth = f'iifname "{state.veth}"'
    allow = [f"{veth} ct state established,related accept"]
    if state.dns.startswith(("dnat:", "resolver:")):
        allow += [f"{veth} ip daddr {state.host_addr} {p} dport 53 accept" for p in ("udp", "tcp")]
    else:
        # Copied resolvers may be one of the host's own addresses (dnsmasq on the LAN address).
        servers = sorted({s for s in state.nameservers if is_ipv4(s)})
        if servers:
            allow += [f"{veth} ip daddr {{ {', '.join(servers)} }} {p} dport 53 accept"
                      for p in ("udp", "tcp")]
    ports = sorted({int(port) for _, port in forward_pairs(state.forwards)})
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


def inner_forward_table(state: Addresses) -> str:
    """The table inside the namespace: connections to a forwarded loopback ip:port go out to
    the host end (output DNAT, then masquerade of the 127.x source, which route_localnet lets
    out)."""
    rules = "".join(f"    ip daddr {ip} tcp dport {port} dnat to {state.host_addr}:{port}\n"
                    for ip, port in forward_pairs(state.forwards))
    return f"""
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


def guard_table() -> str:
    """Shared by every aegis namespace while ip_forward was 0 before the first: the host must
    not start routing for anyone else because of us."""
    return f"""
table ip {GUARD_TABLE} {{
  comment "aegis-mcp: forward only for aegis namespaces while ip_forward is on for them"
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname != "{PREFIX}*" oifname != "{PREFIX}*" drop
  }}
}}
"""


def loopback_forwards(env: dict[str, str], ports: list[int]
                      ) -> tuple[dict[str, tuple[str, int]], list[str]]:
    """The host-loopback (ip, port)s a namespaced agent must reach: those its environment's
    URLs name (`ANTHROPIC_BASE_URL=http://127.0.0.1:8080`) and `--netns-forward` ports, keyed
    by what asked for them; and the URLs that cannot be forwarded (IPv6 loopback)."""
    forwards: dict[str, tuple[str, int]] = {}
    unreachable: list[str] = []
    for key, value in sorted(env.items()):
        if not _LOOPBACK_URL.search(value):
            continue
        parts = urlsplit(value)
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
        except ValueError:
            port = None
        host = (parts.hostname or "").lower()
        if host == "::1" or port is None:
            unreachable.append(f"{key}={value}")
            continue
        forwards[f"{key}={value}"] = ("127.0.0.1" if host == "localhost" else host, port)
    for port in ports:
        forwards[f"--netns-forward {port}"] = ("127.0.0.1", port)
    return forwards, unreachable


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_LOOPBACK_URL = re.compile(r"^[a-z][a-z0-9+.-]*://(localhost|127\.[0-9.]+|\[::1\])(:|/|$)",
                           re.IGNORECASE)
