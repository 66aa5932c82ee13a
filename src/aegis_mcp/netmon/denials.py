"""What the agent and the user read of a network policy: its rules, each with where it came
from, and the recent denials, each with one sentence to act on.

Peers' agents took a denial for a proxy fault and retried around it: here a denial says it is
the user's policy, names the rule (or the allow-list) that denied it, and what to ask the user
for. The netmon_policy tool returns `report`; `aegis-mcp netmon policy` prints it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypedDict

from aegis_mcp.display import plain
from aegis_mcp.netmon.summary import Denial

NO_POLICY = (
    "no network policy is active for this agent: its connections are not restricted (only "
    "recorded, with --netmon). The user sets one at the agent's start: `aegis-mcp <agent> "
    "--allow HOST` (only the allowed, and the agent's own API, go through), `--deny HOST`, or "
    "`--policy FILE`")


class PolicyRule(TypedDict):
    rule: Annotated[str, "The rule as --allow and --deny take it (api.example.com:443, "
                    "*.example.com, 203.0.113.0/24)"]
    action: Annotated[str, "allow or deny"]
    kind: Annotated[str, "host (a name; *. for subdomains) or cidr (addresses)"]
    pattern: str
    port: Annotated[int | None, "The one port it is about; null: every port"]
    source: Annotated[str, "Where it came from: --allow/--deny, a policy file's key and index, "
                      "the config's [network] table, or implicit (the agent's API, DNS)"]
    implicit: Annotated[bool, "Allowed without asking, so the agent itself keeps working"]


class AdvisedDenial(Denial):
    advice: Annotated[str, "What this denial means and what to do, in one sentence"]


class PolicyReport(TypedDict):
    """What `netmon_policy` returns and `aegis-mcp netmon policy` prints."""

    active: Annotated[bool, "False: no network policy for this agent (see summary)"]
    summary: Annotated[str, "The policy and how far it is enforced, in words; without one, "
                       "how the user sets one"]
    policy_file: Annotated[str | None, "The compiled policy (AEGIS_NETMON_POLICY)"]
    mode: Annotated[str | None, "Network monitoring mode: preload or netns"]
    default: Annotated[str | None, "deny: only what a rule allows goes through (an "
                       "allow-list); allow: everything but what a rule denies"]
    rules: Annotated[list[PolicyRule], "Denies first (a deny beats every allow), then allows"]
    denied: Annotated[int, "Connections denied so far"]
    recent_denials: Annotated[list[AdvisedDenial], "The most recent denials, newest last"]


def report(policy_file: str | None, log: str | None, mode: str | None) -> PolicyReport:
    """The policy of `policy_file` (None: there is none) and the denials of `log`."""
    from aegis_mcp.netmon import policy as netpolicy

    policy = netpolicy.load(policy_file) if policy_file else None
    denied, recent = 0, []
    if log:
        from aegis_mcp.netmon.log import NoLog
        from aegis_mcp.netmon.summary import status

        try:
            seen = status(Path(log))
        except NoLog:
            pass
        else:
            denied, recent = seen["denied"], seen["recent_denials"]
    advised: list[AdvisedDenial] = [
        {**d, "advice": advice(d, policy)} for d in recent]  # type: ignore[typeddict-item]
    if policy is None:
        return {"active": False, "summary": NO_POLICY, "policy_file": None, "mode": mode,
                "default": None, "rules": [], "denied": denied, "recent_denials": advised}
    summary = (f"network policy: {netpolicy.describe(policy)}; "
               f"{netpolicy.enforcement(mode)}")
    return {"active": True, "summary": summary, "policy_file": policy_file, "mode": mode,
            "default": policy.default, "rules": [rule_record(r) for r in policy.rules],
            "denied": denied, "recent_denials": advised}


def rule_record(rule: Any) -> PolicyRule:
    return {"rule": rule.spelled, "action": rule.action, "kind": rule.kind,
            "pattern": rule.pattern, "port": rule.port or None, "source": rule.label,
            "implicit": rule.implicit}


def advice(denial: Mapping[str, Any], policy: Any = None) -> str:
    """One sentence on a denial: what denied it, that it is policy (not a fault to retry
    around), and what to ask the user for."""
    host, addr, port = denial.get("host"), denial.get("addr"), denial.get("port")
    where = _where(host, addr, port)
    policy_not_fault = ("this is the user's network policy, not a network fault: retrying, "
                        "or another route to it, is denied too")
    if denial.get("default") and denial.get("label"):  # the enforcer failed closed
        return plain(f"denied: {denial['label']}; {where} and every other connection are "
                     "denied until the user fixes the network policy; tell the user")
    if denial.get("default"):
        return plain(f"denied by the allow-list ({_allow_sources(policy)}): {where} is not in "
                     f"it; {policy_not_fault}; if the task needs it, ask the user to allow "
                     f"it, e.g. --allow {_suggestion(host, addr)}")
    rule = denial.get("rule") or "a deny rule"
    source = denial.get("label")
    named = f"{source} ({rule})" if source else str(rule)
    return plain(f"denied by the rule {named}: the user blocked {where}; {policy_not_fault}; "
                 "do not work around it, and if the task needs it, ask the user to lift that "
                 "rule")


def _where(host: Any, addr: Any, port: Any) -> str:
    address = f"[{addr}]" if addr and ":" in str(addr) and port is not None else str(addr)
    at = f"{address}:{port}" if port is not None else address
    return f"{host} ({at})" if host else at


def _suggestion(host: Any, addr: Any) -> str:
    """What to allow: the host name the program asked for, else its address; only ever a
    valid rule (a host name comes from the agent's process and may be anything)."""
    from aegis_mcp.netmon.policy import RuleError, parse_rule

    for candidate in (host, addr):
        if isinstance(candidate, str) and candidate:
            try:
                return parse_rule(candidate, "allow", "").spelled
            except RuleError:
                continue
    return "HOST"


def _allow_sources(policy: Any) -> str:
    """Where the allow-list came from: `--allow flags`, `policy file ./p.toml`, ..."""
    if policy is None:
        return "the user's --allow list"
    found: list[str] = []
    for rule in policy.users:
        if rule.action != "allow":
            continue
        if rule.label.startswith("--allow"):
            where = "--allow flags"
        else:  # "policy file X: allow[i]", "config X: [network]: allow[i]"
            where = rule.label.rsplit(": ", 1)[0]
        if where not in found:
            found.append(where)
    return ", ".join(found) or "the user's --allow list"
