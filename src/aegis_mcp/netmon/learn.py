"""`aegis-mcp netmon policy --from-log LOG`: what a session used, as an allow-list file.

Every outgoing connection of the log (and of its rotated predecessor) becomes an allow of its
host name (the one its process resolved) and port, or of its address when no name is known;
the counts are comments. What the session's policy denied is left out and listed in a comment.

No wildcard is written, even where several subdomains of one domain were used: a wildcard
allows what the session never reached (any bucket of a storage domain, any user's pages of a
hosting one), and a learned allow-list should allow exactly what was used. The hosts of one
domain stand together under a comment that names the wildcard, for the user to choose.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aegis_mcp.display import plain
from aegis_mcp.netmon.policy import RuleError, parse_rule
from aegis_mcp.netmon.summary import _OK_CONNECT, Summary

# Second-level labels under which a country's names are registered (example.co.uk): their
# hosts are grouped by three labels, not two.
_REGISTRIES = {"co", "com", "net", "org", "gov", "ac", "edu", "ne", "or", "go"}


@dataclass
class Used:
    rule: str
    """As --allow takes it: `api.github.com:443`, `203.0.113.7:443`, `[2001:db8::1]:443`."""
    group: str
    """The domain its host belongs to, or `addresses` when no name is known."""
    connections: int = 0
    failed: int = 0


@dataclass
class Denied:
    target: str
    denials: int = 0
    rules: list[str] = field(default_factory=list)
    """Where the rules that denied it came from (their labels)."""


class Usage(Summary):
    """The log read as the summary reads it (names per resolver, rotation), keeping each
    target's connections and denials."""

    def __init__(self) -> None:
        super().__init__()
        self.used: dict[tuple[str, int], Used] = {}
        self.denied_by: dict[tuple[str, int], Denied] = {}
        self.skipped: dict[str, int] = {}

    def add(self, ev: dict[str, Any]) -> None:
        super().add(ev)
        kind = ev.get("event")
        port = ev.get("port")
        if kind not in ("connect", "deny") or not isinstance(port, int) or \
                ev.get("family") == "unix" or ev.get("proto") == "unix":
            return
        name, rule = self._rule(ev, port)
        if rule is None:
            return
        key = (name, port)
        if kind == "deny":
            denied = self.denied_by.setdefault(key, Denied(rule))
            denied.denials += 1
            label = ev.get("label") or ev.get("rule")
            if label and str(label) not in denied.rules and len(denied.rules) < 3:
                denied.rules.append(str(label))
            return
        used = self.used.setdefault(key, Used(rule, _group(name) if name != ev.get("addr")
                                              else "addresses"))
        used.connections += 1
        if ev.get("result") not in _OK_CONNECT:
            used.failed += 1

    def _rule(self, ev: dict[str, Any], port: int) -> tuple[str, str | None]:
        """(the name or address it is keyed by, its allow rule); a host name the rules cannot
        express (any text a program resolved) falls back to the address."""
        addr = str(ev.get("addr"))
        host = self.host_of(ev)
        for target in ((host, addr) if host else (addr,)):
            spelled = f"[{target}]:{port}" if ":" in target else f"{target}:{port}"
            try:
                return target, parse_rule(spelled, "allow", "").spelled
            except RuleError:
                continue
        self.skipped[addr] = self.skipped.get(addr, 0) + 1
        return addr, None


def _group(host: str) -> str:
    labels = host.split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _REGISTRIES:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def learn(log: Path) -> Usage:
    """What the session of `log` used and was denied."""
    from aegis_mcp.netmon.log import NoLog, rotated_path

    usage = Usage()
    rotated = rotated_path(log)
    if not log.exists() and not rotated.exists():
        raise NoLog(f"no netmon log at {log}")
    for path in (rotated, log):
        if path.exists():
            usage.consume(path, 0)
    return usage


def allowed(usage: Usage) -> list[Used]:
    """The allows, by domain (most used first), each domain's hosts most used first."""
    rows = [u for key, u in usage.used.items() if key not in usage.denied_by]
    totals: dict[str, int] = {}
    for row in rows:
        totals[row.group] = totals.get(row.group, 0) + row.connections
    return sorted(rows, key=lambda u: (u.group == "addresses", -totals[u.group], u.group,
                                       -u.connections, u.rule))


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def to_toml(usage: Usage, log: Path) -> str:
    """The policy file: `allow = [...]` with counts as comments, the denials in comments."""
    rows = allowed(usage)
    hosts = len({r.rule.rsplit(":", 1)[0] for r in rows})
    span = ""
    if usage.first_ts is not None and usage.last_ts is not None:
        clock = "%Y-%m-%d %H:%M"
        span = (f" ({time.strftime(clock, time.localtime(usage.first_ts))} to "
                f"{time.strftime(clock, time.localtime(usage.last_ts))})")
    out = [f"# aegis-mcp network policy, learned from {plain(log)}{span}:",
           f"# {_count(sum(r.connections for r in rows), 'connection')} to "
           f"{_count(hosts, 'host')}. Read it, then use it: `aegis-mcp <agent> --policy FILE`.",
           "# It allows exactly these hosts (or addresses) on these ports and denies everything",
           "# else; the agent's own API and DNS stay allowed. Counts: that session's connections.",
           "allow = ["]
    group = None
    width = max((len(json.dumps(r.rule)) for r in rows), default=0) + 1
    by_group: dict[str, int] = {}
    for row in rows:
        by_group[row.group] = by_group.get(row.group, 0) + 1
    for row in rows:
        if row.group != group:
            group = row.group
            if group == "addresses":
                out.append("  # addresses, no host name known (connected to directly)")
            elif by_group[group] > 1:
                out.append(f"  # {by_group[group]} hosts of {plain(group)} (\"*.{plain(group)}\" "
                           "would allow any of its subdomains, used or not)")
        failed = f", {row.failed} failed" if row.failed else ""
        out.append(f"  {json.dumps(row.rule) + ',':<{width + 1}} # "
                   f"{_count(row.connections, 'connection')}{failed}")
    out.append("]")
    if usage.denied_by:
        out += ["", "# Denied in that session by its policy, and left out (allow what was "
                "needed):"]
        for denied in sorted(usage.denied_by.values(), key=lambda d: -d.denials):
            why = "; ".join(plain(r) for r in denied.rules) or "its policy"
            out.append(f"#   {json.dumps(denied.target)}  {_count(denied.denials, 'denial')}, "
                       f"by {why}")
    if usage.skipped:
        out += ["", f"# Left out: {_count(sum(usage.skipped.values()), 'connection')} to "
                "addresses no rule can name."]
    return "\n".join(out) + "\n"


def to_json(usage: Usage, log: Path) -> dict[str, Any]:
    return {"log": str(log),
            "allow": [{"rule": r.rule, "group": r.group, "connections": r.connections,
                       "failed": r.failed} for r in allowed(usage)],
            "denied": [{"target": d.target, "denials": d.denials, "by": d.rules}
                       for d in sorted(usage.denied_by.values(), key=lambda d: -d.denials)]}
