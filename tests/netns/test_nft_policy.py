"""The policy's verdict maps against the policy's model (no root needed): whatever the rules,
overlapping CIDRs of any prefix length, ports or none, the map's verdict for an address and
port is the decision of `Policy.decide`, naming the same rule. The kernel's side of it is
tested for real in test_netns_policy.py."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_mcp.netmon.policy import Policy, Rule
from aegis_mcp.netns.nft_policy import covering, deny_chain, regions, static_map

# Few addresses, so that rules overlap and probes land on their edges.
BASES = ["10.0.0.0", "10.0.0.128", "10.0.1.0", "10.1.0.0", "0.0.0.0", "255.255.255.255",
         "203.0.113.7"]
PORTS = [0, 22, 443, 8080]


@st.composite
def cidr_rules(draw: st.DrawFn) -> Rule:
    if draw(st.integers(0, 9)) == 0:  # an IPv6 rule: never in the IPv4 maps
        return Rule(draw(st.sampled_from(["allow", "deny"])), "cidr", "2001:db8::/32",
                    draw(st.sampled_from(PORTS)), "v6")
    net = ipaddress.ip_network(f"{draw(st.sampled_from(BASES))}/{draw(st.integers(0, 32))}",
                               strict=False)
    return Rule(draw(st.sampled_from(["allow", "deny"])), "cidr", str(net),
                draw(st.sampled_from(PORTS)), "test")


def probes(policy: Policy) -> list[int]:
    """Every address where a rule begins or ends, and its neighbours."""
    out = {0, 2**32 - 1}
    for rule in policy.rules:
        net = ipaddress.ip_network(rule.pattern)
        if net.version == 4:
            for edge in (int(net.network_address), int(net.broadcast_address)):
                out.update(a for a in (edge - 1, edge, edge + 1) if 0 <= a < 2**32)
    return sorted(out)


def in_the_map(policy: Policy, address: int, port: int) -> str:
    """What the kernel does with the map's data: the run that holds the address, then its
    port chain for TCP/UDP (port 0 here: a protocol without ports), else the default."""
    runs, chains = static_map(policy.rules, policy.default)
    verdict = "accept" if policy.default == "allow" else f"goto {deny_chain(None)}"
    for first, last, run_verdict in runs:
        if first <= address <= last:
            verdict = run_verdict
    if verdict.startswith("goto ports_"):
        other, by_port = chains[verdict.removeprefix("goto ")]
        verdict = dict(by_port).get(port, other) if port else other
    return verdict


def by_the_model(policy: Policy, address: int, port: int) -> str:
    decision = policy.decide(str(ipaddress.IPv4Address(address)), port)
    if decision.allowed:
        return "accept"
    index = None if decision.rule is None else policy.rules.index(decision.rule)
    return f"goto {deny_chain(index)}"


@settings(max_examples=300, deadline=None)
@given(st.lists(cidr_rules(), min_size=1, max_size=12), st.sampled_from(["allow", "deny"]))
def test_the_map_decides_as_the_model_does(rules: list[Rule], default: str) -> None:
    policy = Policy(default, tuple(rules))  # type: ignore[arg-type]
    runs, _ = static_map(policy.rules, policy.default)
    for (_, last, _), (first, _, _) in zip(runs, runs[1:], strict=False):
        assert last < first  # an interval map takes no overlapping elements
    for address in probes(policy):
        for port in PORTS:
            assert in_the_map(policy, address, port) == by_the_model(policy, address, port), (
                ipaddress.IPv4Address(address), port, [r.text for r in rules])


def test_the_first_deny_is_named_whatever_the_prefix_lengths() -> None:
    """A wide deny listed first beats a narrower one of the same address, and a narrower
    allow of a port beats neither (a deny beats every allow)."""
    rules = (Rule("deny", "cidr", "10.0.0.0/8", 443, "--deny 10.0.0.0/8:443"),
             Rule("deny", "cidr", "10.1.2.3/32", 0, "--deny 10.1.2.3"),
             Rule("allow", "cidr", "10.1.2.3/32", 443, "--allow 10.1.2.3:443"),
             Rule("allow", "cidr", "0.0.0.0/0", 0, "--allow 0.0.0.0/0"))
    policy = Policy("deny", rules)
    address = int(ipaddress.IPv4Address("10.1.2.3"))
    assert in_the_map(policy, address, 443) == "goto deny_0"
    assert in_the_map(policy, address, 80) == "goto deny_1"
    assert in_the_map(policy, address + 1, 80) == "accept"
    assert covering(regions(rules), "10.1.2.3") == (0, 1, 2, 3)
    assert covering(regions(rules), "11.0.0.1") == (3,)
    assert covering(regions(rules[:2]), "11.0.0.1") == ()
