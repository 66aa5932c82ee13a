"""The network policy in the kernel: the nftables text of a namespace's policy (`policy_table`),
and the chains its resolver adds at run time for the addresses host rules learn
(`class_chain`). Pure functions, like `plan`; `namespace` loads the table, `resolver` the rest.

A new connection costs a fixed number of lookups however many rules there are:
- Address rules are compiled ahead into one interval verdict map, `static`: the IPv4 space is
  cut where any CIDR begins or ends, and each piece gets the policy's decision for the rules
  that cover it (the first deny by rule index, else an allow, else the default), so
  overlapping CIDRs of any prefix length need no order in the kernel. A piece whose rules
  decide by port goes to a small chain with a port verdict map; pieces with the same
  decision share one.
- A host rule's addresses are learned at run time, into its own set `h<index>` with its own
  timeouts (`resolver`). The resolver also maps each learned address, in map `learned`, to a
  chain of the few rules that can match it (the host rules that learned it, the CIDRs that
  cover it), in the policy's order: the kernel checks their sets there, so an answer whose
  timeout has run out stops counting at once, as in one long chain.
- A denial goes to chain `deny_<index>`, which logs `aegis <index>` for the capture to name
  the rule, and refuses.

`policy_table(..., maps=False)` is the same policy as one chain of every rule, which an nft
that refuses the maps falls back on.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aegis_mcp.errors import AegisError
from aegis_mcp.netns.plan import POOLS, Addresses

NFLOG_BASE = 20000
"""Denials are logged to nflog group NFLOG_BASE + the subnet's ordinal in POOLS: one group
per live namespace, since a group has one reader host-wide."""
DENY_PREFIX = "aegis "
"""An nflog prefix is `aegis <rule index>` or `aegis default`: the capture names the rule."""
LINEAR = "linear"
"""The chain of every rule, in the policy's order: what a learned address goes to when the
resolver cannot give it a chain of its own (more than MAX_CLASSES of them)."""
MAX_CLASSES = 1024


class PolicyRule(Protocol):
    """What the nft rules need of a policy rule (a `netmon.policy.Rule` has it)."""

    action: str
    kind: str
    pattern: str
    port: int


def nflog_group(subnet: str) -> int:
    net = ipaddress.ip_network(subnet)
    offset = 0
    for pool in POOLS:
        pool_net = ipaddress.ip_network(pool)
        if net.subnet_of(pool_net):  # type: ignore[arg-type]
            return NFLOG_BASE + offset + (int(net.network_address)
                                          - int(pool_net.network_address)) // 4
        offset += pool_net.num_addresses // 4
    raise AegisError(f"{subnet} is not in aegis-mcp's private ranges")


def host_set(index: int) -> str:
    """The nft set of the addresses learned for host rule `index` of the policy."""
    return f"h{index}"


def deny_chain(index: int | None) -> str:
    """The chain that logs and refuses a denial by rule `index` (None: the default)."""
    return "deny_default" if index is None else f"deny_{index}"


def _default(default: str) -> str:
    return f"goto {deny_chain(None)}" if default == "deny" else "accept"


def _ipv4(rule: PolicyRule) -> bool:
    """Whether the rule can match in the namespace (IPv6 never leaves it)."""
    return rule.kind == "host" or ipaddress.ip_network(rule.pattern).version == 4


def linear(rules: Sequence[PolicyRule], default: str, indices: Iterable[int]) -> list[str]:
    """The rules `indices` names as the rules of one chain, in the model's order: each deny
    (by rule index), then each allow, then the default."""
    denies, allows = [], []
    for index in sorted(indices):
        rule = rules[index]
        if not _ipv4(rule):
            continue
        match = (f"ip daddr @{host_set(index)}" if rule.kind == "host"
                 else f"ip daddr {rule.pattern}")
        if rule.port:
            match += f" meta l4proto {{ tcp, udp }} th dport {rule.port}"
        if rule.action == "deny":
            denies.append(f"{match} goto {deny_chain(index)}")
        else:
            allows.append(f"{match} accept")
    return [*denies, *allows, _default(default)]


@dataclass(frozen=True)
class Region:
    """A run of IPv4 addresses (as integers, both ends in it) that the same CIDR rules
    cover."""

    first: int
    last: int
    rules: tuple[int, ...]


def regions(rules: Sequence[PolicyRule]) -> list[Region]:
    """The IPv4 space cut where any IPv4 CIDR rule begins or ends, in order; runs that no rule
    covers are left out."""
    nets = [(i, ipaddress.IPv4Network(r.pattern)) for i, r in enumerate(rules)
            if r.kind == "cidr" and _ipv4(r)]
    starts: dict[int, list[int]] = {}
    ends: dict[int, list[int]] = {}
    for i, net in nets:
        starts.setdefault(int(net.network_address), []).append(i)
        ends.setdefault(int(net.broadcast_address) + 1, []).append(i)
    points = sorted(starts.keys() | ends.keys())
    out: list[Region] = []
    active: set[int] = set()
    for point, following in zip(points, points[1:], strict=False):
        active.difference_update(ends.get(point, ()))
        active.update(starts.get(point, ()))
        if active:
            out.append(Region(point, following - 1, tuple(sorted(active))))
    return out


def covering(table: list[Region], address: str) -> tuple[int, ...]:
    """The CIDR rules that cover `address`, from `regions`."""
    value = int(ipaddress.IPv4Address(address))
    at = bisect.bisect_right(table, value, key=lambda r: r.first) - 1
    return table[at].rules if at >= 0 and table[at].last >= value else ()


def _decide(rules: Sequence[PolicyRule], default: str, matching: Iterable[int]) -> str:
    """The verdict of the model for these matching rules: the first deny, else an allow,
    else the default (`Policy.decide`, hooks/policy.c)."""
    allowed = False
    for index in sorted(matching):
        if rules[index].action == "deny":
            return f"goto {deny_chain(index)}"
        allowed = True
    return "accept" if allowed else _default(default)


PortChain = tuple[str, tuple[tuple[int, str], ...]]
"""A chain that decides by port: (the verdict for other ports and for protocols without
ports, ((port, verdict), ...) where a port's differs from it)."""


def _region_verdicts(rules: Sequence[PolicyRule], default: str, active: tuple[int, ...]
                     ) -> PortChain:
    """(the verdict for a port no rule of `active` names, and for the protocols without
    ports; {port: verdict} where a port's differs from it)."""
    other = _decide(rules, default, (i for i in active if not rules[i].port))
    by_port = []
    for port in sorted({rules[i].port for i in active if rules[i].port}):
        verdict = _decide(rules, default, (i for i in active if rules[i].port in (0, port)))
        if verdict != other:
            by_port.append((port, verdict))
    return other, tuple(by_port)


def static_map(rules: Sequence[PolicyRule], default: str
               ) -> tuple[list[tuple[int, int, str]], dict[str, PortChain]]:
    """(the runs of map `static`: first and last address, verdict; the port chains they go
    to, by name). Runs the default decides are left out: the lookup falls through to it."""
    chains: dict[PortChain, str] = {}
    runs: list[tuple[int, int, str]] = []
    for region in regions(rules):
        other, by_port = _region_verdicts(rules, default, region.rules)
        verdict = other
        if by_port:
            verdict = f"goto {chains.setdefault((other, by_port), f'ports_{len(chains)}')}"
        if runs and runs[-1][1] + 1 == region.first and runs[-1][2] == verdict:
            runs[-1] = (runs[-1][0], region.last, verdict)
        else:
            runs.append((region.first, region.last, verdict))
    return ([run for run in runs if run[2] != _default(default)],
            {name: chain for chain, name in chains.items()})


def _static_text(rules: Sequence[PolicyRule], default: str) -> tuple[str, str]:
    """(map `static`, its port chains) as nft text; nothing when no CIDR rule decides."""
    runs, chains = static_map(rules, default)
    if not runs:
        return "", ""
    ip = ipaddress.IPv4Address
    elements = ", ".join(f"{ip(first)}{'' if first == last else f'-{ip(last)}'} : {verdict}"
                         for first, last, verdict in runs)
    text = "".join(
        f"  chain {name} {{\n    meta l4proto {{ tcp, udp }} th dport vmap "
        f"{{ {', '.join(f'{port} : {verdict}' for port, verdict in by_port)} }}\n"
        f"    {other}\n  }}\n" for name, (other, by_port) in chains.items())
    return (f"  map static {{\n    type ipv4_addr : verdict; flags interval;\n"
            f"    elements = {{ {elements} }}\n  }}\n", text)


def policy_table(state: Addresses, rules: Sequence[PolicyRule], default: str, group: int,
                 maps: bool = True) -> str:
    """The policy as nft rules in the namespace's table: what leaves the veth that is not a
    reply goes through chain `rules` (forwarded traffic, and with --netns-host-access what
    ends on the host but for the DNS and forwards our DNAT made). With `maps`, `rules` is the
    two lookups of the module's docstring, then the default; without, every rule in order.
    A refusal fails fast: a TCP reset, else ICMP port unreachable (the error a closed port
    gives, ECONNREFUSED for a connected UDP socket)."""
    usable = [i for i, r in enumerate(rules) if _ipv4(r)]
    sets = "".join(f"  set {host_set(i)} {{ type ipv4_addr; flags timeout; }}\n"
                   for i in usable if rules[i].kind == "host")
    denies = "".join(f"  chain {deny_chain(i)} {{\n    log group {group} prefix "
                     f'"{DENY_PREFIX}{i}" goto refuse\n  }}\n'
                     for i in usable if rules[i].action == "deny")
    if default == "deny":
        denies += (f"  chain {deny_chain(None)} {{\n    log group {group} prefix "
                   f'"{DENY_PREFIX}default" goto refuse\n  }}\n')
    everything = linear(rules, default, usable)
    extra, chain = "", everything
    if maps:
        lookups = []
        if sets:
            extra += "  map learned { type ipv4_addr : verdict; flags timeout; }\n"
            lookups.append("ip daddr vmap @learned")
        static, ports = _static_text(rules, default)
        if static:
            extra += static + ports
            lookups.append("ip daddr vmap @static")
        extra += "".join([f"  chain {LINEAR} {{\n",
                          *(f"    {rule}\n" for rule in everything), "  }\n"])
        chain = [*lookups, _default(default)]
    veth = f'iifname "{state.veth}"'
    body = "".join(f"    {rule}\n" for rule in chain)
    return f"""
table ip {state.table} {{
{sets}{extra}  chain refuse {{
    meta l4proto tcp reject with tcp reset
    reject with icmp type port-unreachable
  }}
{denies}  chain rules {{
{body}  }}
  chain rules_forward {{
    type filter hook forward priority filter; policy accept;
    {veth} ct state established,related accept
    {veth} jump rules
  }}
  chain rules_input {{
    type filter hook input priority filter; policy accept;
    {veth} ct state established,related accept
    {veth} ct status dnat accept
    {veth} jump rules
  }}
}}
"""


def class_chain(table: str, name: str, rules: Sequence[PolicyRule], default: str,
                indices: Iterable[int]) -> list[str]:
    """nft commands that make chain `name` of the rules `indices` names (`linear`): where
    map `learned` sends an address that those host rules learned and those CIDRs cover."""
    return [f"add chain ip {table} {name}",
            *(f"add rule ip {table} {name} {rule}" for rule in linear(rules, default, indices))]
