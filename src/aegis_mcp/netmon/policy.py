"""The network policy: its rules, where they come from, the decision, and the compiled file.

A rule allows or denies connections to a host name (`*.` wildcards), an address or a CIDR
range (IPv4 or IPv6), on one port or on all. Rules come from the command line (`--allow`,
`--deny`), the config file's `[network]` table and policy files (`--policy`); any allow makes
the policy deny by default. The agent's own model API (its profile's `api_hosts`, the base
URLs of its environment) and the supervisor's plumbing (the DNS resolvers) are allowed
implicitly, so that an allow-list never breaks the agent itself; an explicit deny still beats
them, as it beats every allow.

The enforcers (the hooks' connect path, the namespace mode) never see this module: the
supervisor compiles the policy into a small text file (`compile`, docs/netmon.md "The compiled
policy") whose path the agent's processes get in AEGIS_NETMON_POLICY. What reads a policy back
(the netmon_policy tool, `aegis-mcp netmon policy`) reads that file (`load`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from aegis_mcp.display import plain
from aegis_mcp.errors import AegisError

if TYPE_CHECKING:
    from aegis_mcp.profiles.profile import AgentProfile

ENV_VAR = "AEGIS_NETMON_POLICY"
MAGIC = "aegis-policy 1"
IMPLICIT = "implicit: "
"""How the label of an implicit allow begins."""
MAX_LABEL = 200
"""A label is cut to this many characters: a compiled line stays under 512 bytes."""
KEYS = ("allow", "deny")
"""The keys of a policy file and of the config file's [network] table."""

Action = Literal["allow", "deny"]
Kind = Literal["host", "cidr"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Through a proxy every connection of the agent goes to the proxy: without it the agent
# reaches nothing, and with it the policy sees only the proxy (the supervisor says so).
PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "socks5": 1080,
                  "socks5h": 1080, "socks4": 1080, "socks": 1080}


class PolicyError(AegisError):
    """A bad rule or policy: one line naming the place; the command exits with status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


class RuleError(ValueError):
    """Why a rule's text is not one (without the place: the caller names it)."""


# ---- rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    action: Action
    kind: Kind
    pattern: str
    """host: a lower-case DNS name, or `*.` and one (subdomains only); cidr: address/prefix."""
    port: int
    """0: every port."""
    label: str
    """Where the rule came from, in words (`--allow x`, `implicit: ANTHROPIC_BASE_URL`)."""

    @property
    def implicit(self) -> bool:
        return self.label.startswith(IMPLICIT)

    @property
    def text(self) -> str:
        """The rule as the compiled file and a deny event's `rule` name it."""
        return f"{self.action} {self.kind} {self.pattern} {self.port}"

    def line(self) -> str:
        return f"{self.text} {self.label}"

    @property
    def spelled(self) -> str:
        """The rule as `--allow` takes it (`api.example.com:443`, `[2001:db8::1]:443`)."""
        pattern = self.pattern
        if self.kind == "cidr":
            net = ipaddress.ip_network(pattern)
            if net.prefixlen == net.max_prefixlen:
                pattern = str(net.network_address)
            if net.version == 6 and self.port:
                pattern = f"[{pattern}]"
        return f"{pattern}:{self.port}" if self.port else pattern

    def matches(self, addr: Address | None, port: int, host: str | None) -> bool:
        if self.port and self.port != port:
            return False
        if self.kind == "cidr":
            return addr is not None and addr in _network(self.pattern)
        if host is None:
            return False
        if self.pattern.startswith("*."):
            return host.endswith(self.pattern[1:])
        return host == self.pattern


_NETWORKS: dict[str, Network] = {}


def _network(pattern: str) -> Network:
    net = _NETWORKS.get(pattern)
    if net is None:
        net = _NETWORKS[pattern] = ipaddress.ip_network(pattern)
    return net


_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_BRACKETED = re.compile(r"^\[(?P<addr>[^\]]*)\](?::(?P<port>.*))?$")


def parse_rule(text: object, action: Action, label: str) -> Rule:
    """`text` (`api.example.com`, `*.example.com:443`, `203.0.113.0/24`, `[2001:db8::1]:443`,
    ...) as a rule; RuleError says why it is not one."""
    if not isinstance(text, str):
        raise RuleError(f"{_shown(text)} is not a string")
    spelled = text.strip()
    if not spelled:
        raise RuleError("empty rule: give a host name, an address or a CIDR range")
    if "://" in spelled:
        host = urlsplit(spelled).hostname or "HOST"
        raise RuleError(f"{_shown(spelled)} is a URL: give its host name ({_shown(host)}), "
                        "with a port if you want one (host:port)")
    head, port_text, bracketed = spelled, None, False
    if m := _BRACKETED.match(spelled):
        head, port_text, bracketed = m["addr"], m["port"], True
    elif spelled.count(":") == 1:
        head, port_text = spelled.split(":")
    port = _port(port_text)
    if "/" in head or bracketed or _address(head) is not None or head.count(":") > 1:
        net = _cidr(head, bracketed)
        return Rule(action, "cidr", str(net), port, _label(label))
    return Rule(action, "host", _host(head), port, _label(label))


def _port(text: str | None) -> int:
    if text is None:
        return 0
    if not text:
        raise RuleError("nothing after the \":\": give a port (host:PORT, 1-65535) or none")
    if not text.isdigit():
        raise RuleError(f"port {_shown(text)} is not a number (give host:PORT, 1-65535)")
    port = int(text)
    if not 1 <= port <= 65535:
        raise RuleError(f"port {port} is out of range (1-65535)")
    return port


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _cidr(text: str, bracketed: bool = False) -> Network:
    addr, slash, prefix = text.partition("/")
    ip = _address(addr)
    if ip is None:
        if bracketed and not slash and _LABEL.match(addr.split(".")[0] or "-"):
            raise RuleError(f"brackets are for IPv6 addresses: write {_shown(addr)} without "
                            "them (host:port)")
        what = f"bad CIDR range {_shown(text)}: " if slash else "bad IP address "
        raise RuleError(f"{what}{_shown(addr)} is not an IP address")
    if slash and (not prefix.isdigit() or int(prefix) > ip.max_prefixlen):
        raise RuleError(f"bad CIDR range {_shown(text)}: the prefix length must be a number "
                        f"from 0 to {ip.max_prefixlen} for IPv{ip.version} (e.g. "
                        f"{'203.0.113.0/24' if ip.version == 4 else '2001:db8::/32'})")
    net = ipaddress.ip_network(text, strict=False)
    mapped = getattr(net.network_address, "ipv4_mapped", None)
    if mapped is not None and net.prefixlen == 128:
        return ipaddress.ip_network(mapped)  # the one address, as IPv4 (decide maps it so)
    return net


def _host(text: str) -> str:
    name = text.lower().removesuffix(".")
    wildcard = name.startswith("*.")
    rest = name[2:] if wildcard else name
    if name == "*":
        raise RuleError("a bare \"*\" is not a rule: for every address use 0.0.0.0/0 and ::/0")
    if "*" in rest:
        raise RuleError(f"bad wildcard {_shown(text)}: a wildcard is allowed only as a "
                        "leading \"*.\" (e.g. *.example.com)")
    if not rest.isascii():
        try:
            rest = rest.encode("idna").decode("ascii")
        except UnicodeError:
            raise RuleError(f"{_shown(text)} is not a host name") from None
    labels = rest.split(".")
    if len(rest) > 253 or not all(_LABEL.match(part) for part in labels):
        raise RuleError(f"{_shown(text)} is not a host name, an IP address or a CIDR range")
    if labels[-1].isdigit():
        raise RuleError(f"bad IP address {_shown(text)}")
    return f"*.{rest}" if wildcard else rest


def _shown(value: object) -> str:
    """A value of the user's in an error line: quoted, one line, inert."""
    return plain(repr(value) if not isinstance(value, str) else f'"{value}"')


def _label(label: str) -> str:
    flat = plain(label)
    return flat if len(flat) <= MAX_LABEL else flat[: MAX_LABEL - 1] + "…"


# ---- the decision -------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: Rule | None
    """The rule that decided (the first deny that matched, else an allow), None: the default."""

    @property
    def default(self) -> bool:
        return self.rule is None

    @property
    def rule_text(self) -> str:
        """As a deny event names it: the rule, or `default deny`."""
        if self.rule is not None:
            return self.rule.text
        return f"default {'allow' if self.allowed else 'deny'}"


@dataclass(frozen=True)
class Policy:
    default: Action
    rules: tuple[Rule, ...]

    def decide(self, addr: str | None, port: int, host: str | None = None) -> Decision:
        """For a connection to `addr`:`port` whose program asked for `host` (None: not known):
        a matching deny wins (the first one is named), then a matching allow, then the
        default."""
        ip = _address(addr) if addr else None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        name = host.lower().removesuffix(".") if host else None
        allowed = None
        for rule in self.rules:
            if rule.matches(ip, port, name):
                if rule.action == "deny":
                    return Decision(False, rule)
                allowed = allowed or rule
        if allowed is not None:
            return Decision(True, allowed)
        return Decision(self.default == "allow", None)

    @property
    def users(self) -> list[Rule]:
        return [r for r in self.rules if not r.implicit]

    def compile(self) -> str:
        """The file the enforcers read (docs/netmon.md, "The compiled policy")."""
        lines = [MAGIC, f"default {self.default}", *(r.line() for r in self.rules)]
        return "\n".join(lines) + "\n"


def effective(users: Sequence[Rule], implicit: Sequence[Rule]) -> Policy | None:
    """The policy of the user's rules (None: they gave none, there is no policy), with the
    implicit allows when it denies by default (where it allows by default they change
    nothing). Denies come first in the file: reading it, the user sees what is refused."""
    if not users:
        return None
    default: Action = "deny" if any(r.action == "allow" for r in users) else "allow"
    denies = [r for r in users if r.action == "deny"]
    allows = [r for r in users if r.action == "allow"]
    extra = list(implicit) if default == "deny" else []
    return Policy(default, tuple(_unique([*denies, *allows, *extra])))


def narrowed(policy: Policy, denies: Sequence[Rule]) -> Policy:
    """`policy` with more denies, first: what a background agent spawned from under a policy
    gets (it keeps its caller's policy, and may only narrow it)."""
    return Policy(policy.default, tuple(_unique([*denies, *policy.rules])))


def _unique(rules: list[Rule]) -> list[Rule]:
    seen: set[str] = set()
    out = []
    for rule in rules:
        if rule.text not in seen:  # the first source of a rule is the one named
            seen.add(rule.text)
            out.append(rule)
    return out


# ---- where rules come from ----------------------------------------------------------------


def from_flags(allow: Sequence[str], deny: Sequence[str]) -> list[Rule]:
    """`--allow`/`--deny` values as rules; PolicyError names the flag."""
    rules = []
    for action, values in (("allow", allow), ("deny", deny)):
        for value in values:
            flag = f"--{action} {value}"
            try:
                rules.append(parse_rule(value, action, flag))  # type: ignore[arg-type]
            except RuleError as exc:
                raise PolicyError(f"{_label(flag)}: {exc}") from None
    return rules


def from_table(table: object, where: str, label: str) -> list[Rule]:
    """The rules of a policy file's top level or of the config's [network] table: `where`
    names it in errors (`./agent-policy.toml`, `config.toml: [network]`), `label` in rules."""
    if not isinstance(table, dict):
        raise PolicyError(f"{where} must be a table with allow = [...] and deny = [...]")
    unknown = [key for key in table if key not in KEYS]
    if unknown:
        raise PolicyError(f"{where}: unknown key {_shown(unknown[0])} (known: allow, deny)")
    rules = []
    for action in KEYS:
        values = table.get(action, [])
        if isinstance(values, str):
            raise PolicyError(f"{where}: {action} must be a list of strings: {action} = "
                              f"[{_shown(values)}]")
        if not isinstance(values, list):
            raise PolicyError(f"{where}: {action} must be a list of strings")
        for i, value in enumerate(values):
            place = f"{action}[{i}]"
            try:
                rules.append(parse_rule(value, action, f"{label}: {place}"))  # type: ignore
            except RuleError as exc:
                raise PolicyError(f"{where}: {place}: {exc}") from None
    return rules


def parse_file(text: str, name: str) -> list[Rule]:
    """A policy file's text (TOML: allow = [...], deny = [...]) as rules."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{name}: not a valid TOML policy file: {exc}") from None
    return from_table(data, name, f"policy file {name}")


def read_policy_file(path: str) -> str:
    """The text of a policy file (run as the agent's user under sudo: the file is theirs to
    name, never root's to read); an error says why, in one line."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(1 << 20)
    except FileNotFoundError:
        raise AegisError(f"--policy {path}: no such file") from None
    except IsADirectoryError:
        raise AegisError(f"--policy {path}: is a directory, not a policy file") from None
    except OSError as exc:
        raise AegisError(f"--policy {path}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise AegisError(f"--policy {path}: not a text file") from None


def from_files(paths: Sequence[str], read: Callable[[str], str] = read_policy_file
               ) -> list[Rule]:
    rules = []
    for path in paths:
        try:
            text = read(path)
        except AegisError as exc:
            raise PolicyError(str(exc)) from None
        rules.extend(parse_file(text, path))
    return rules


def from_config(settings: Mapping[str, Any], source: Path | None) -> list[Rule]:
    """The config file's [network] table (`settings`: profile.Config.settings)."""
    if "network" not in settings:
        return []
    where = f"{source or 'config'}: [network]"
    return from_table(settings["network"], where, f"config {where}")


def user_rules(allow: Sequence[str] = (), deny: Sequence[str] = (),
               files: Sequence[str] = (), settings: Mapping[str, Any] | None = None,
               source: Path | None = None,
               read: Callable[[str], str] = read_policy_file) -> list[Rule]:
    """Every rule the user gave, in the order the policy names them: the config file's, the
    policy files', the flags'."""
    return [*from_config(settings or {}, source), *from_files(files, read),
            *from_flags(allow, deny)]


# ---- implicit allows ----------------------------------------------------------------------


def implicit_rules(profile: AgentProfile | None, env: Mapping[str, str],
                   resolvers: Sequence[str] = (), resolver_label: str = "/etc/resolv.conf"
                   ) -> list[Rule]:
    """What the agent needs to run, allowed without asking: its profile's API hosts, the
    API and proxy URLs of its environment, and the DNS resolvers."""
    rules: list[Rule] = []
    if profile is not None:
        for i, host in enumerate(profile.api_hosts):
            with contextlib.suppress(RuleError):  # checked when the profile was read
                rules.append(parse_rule(host, "allow",
                                        f"{IMPLICIT}{profile.name}'s API (api_hosts[{i}])"))
    from aegis_mcp.profiles.profile import API_URLS

    names = profile.api_env if profile is not None and profile.api_env else API_URLS
    for var in (*names, *PROXIES):
        if env.get(var):
            rules.extend(url_rules(env[var], f"{IMPLICIT}{var}"))
    for server in resolvers:
        with contextlib.suppress(RuleError):
            rules.append(parse_rule(_with_port(server, 53), "allow",
                                    f"{IMPLICIT}DNS resolver ({resolver_label})"))
    return _unique(rules)


def url_rules(url: str, label: str) -> list[Rule]:
    """The allows for one URL of the environment (`http://127.0.0.1:8080`, `proxy:3128`):
    its host at its port; `localhost` also as the loopback addresses, since a program may
    connect to them without asking for the name. Nothing for what is not a URL."""
    value = url.strip()
    parts = urlsplit(value if "://" in value else f"http://{value}")
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
        host = parts.hostname
    except ValueError:
        return []
    if not host or not port:
        return []
    targets = [host] + (["127.0.0.1", "::1"] if host.lower() == "localhost" else [])
    rules = []
    for target in targets:
        with contextlib.suppress(RuleError):
            rules.append(parse_rule(_with_port(target, port), "allow", label))
    return rules


def _with_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    from aegis_mcp.netns.plan import nameservers

    return nameservers(resolv_conf)[0]


def proxies(policy: Policy) -> list[str]:
    """The proxy variables the policy allows: through them, it sees only the proxy."""
    return sorted({r.label.removeprefix(IMPLICIT) for r in policy.rules
                   if r.implicit and r.label.removeprefix(IMPLICIT) in PROXIES})


# ---- the compiled file ----------------------------------------------------------------------


def write_compiled(path: str, text: str) -> None:
    """Write the compiled policy at `path`, mode 0600, whole or not at all (a reader never
    sees half a file): run as the agent's user, in that user's runtime directory."""
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def parse_compiled(text: str, source: str) -> Policy:
    """A compiled policy's text back as a Policy (what `compile` wrote)."""
    lines = text.splitlines()
    if not lines or lines[0] != MAGIC:
        raise AegisError(f"{source} is not a compiled aegis-mcp policy (no {MAGIC!r} line)")
    default: Action | None = None
    rules = []
    for number, line in enumerate(lines[1:], start=2):
        words = line.split(" ", 4)
        if not line.strip():
            continue
        if words[0] == "default" and len(words) == 2 and words[1] in KEYS:
            default = words[1]  # type: ignore[assignment]
            continue
        try:
            action, kind, pattern, port = words[:4]
            if action not in KEYS or kind not in ("host", "cidr") or not port.isdigit():
                raise ValueError
            rule = parse_rule(_with_port(pattern, int(port)) if int(port) else pattern,
                              action, words[4] if len(words) > 4 else "")  # type: ignore
            if rule.kind != kind:
                raise ValueError
        except (ValueError, RuleError):
            raise AegisError(f"{source}:{number}: not a rule of a compiled policy: "
                             f"{plain(line[:120])}") from None
        rules.append(rule)
    if default is None:
        raise AegisError(f"{source}: no `default allow|deny` line")
    return Policy(default, tuple(rules))


def load(path: str | Path) -> Policy:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 22)
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not text"
        raise AegisError(f"cannot read the network policy {path}: {why}") from None
    return parse_compiled(text, str(path))


def path_for_log(log: Path) -> Path:
    """Where a supervisor keeps its compiled policy: beside its netmon log, as a record of
    what was in force (`netmon-<pid>.policy` beside `netmon-<pid>.jsonl`)."""
    return log.with_suffix(".policy")


# ---- what is said of it -------------------------------------------------------------------


def enforcement(mode: str | None) -> str:
    """Whether and how the policy is enforced in a monitoring mode, in words: the one place
    that says it (the supervisor's start line, netmon_policy, `aegis-mcp netmon policy`)."""
    if mode == "preload":
        return ("enforced by the LD_PRELOAD connect hook, which is advisory: statically "
                "linked programs and raw system calls pass by it")
    if mode == "netns":
        return ("enforced by the kernel (nftables) for everything in the agent's network "
                "namespace, static binaries included; host names by the addresses "
                "aegis-mcp's resolver answers for them (IPv4; IPv6 is off inside)")
    return "not enforced: network monitoring is off"


def describe(policy: Policy) -> str:
    """The policy in a few words: `deny by default, 2 rules of yours, 4 implicit allows`."""
    users = policy.users
    implicit = len(policy.rules) - len(users)
    text = (f"{policy.default} by default, {len(users)} rule{'s' if len(users) != 1 else ''} "
            "of yours")
    if implicit:
        text += f", {implicit} implicit allow{'s' if implicit != 1 else ''}"
    return text
