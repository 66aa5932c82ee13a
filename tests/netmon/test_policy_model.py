"""The network policy's model (netmon/policy.py): every rule kind and how it is written back,
every bad rule and the line that names its place, the decision on a table of cases, the
implicit allows, and the compiled file read back as it was written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aegis_mcp.netmon import policy as netpolicy
from aegis_mcp.netmon.policy import PolicyError, RuleError, parse_rule
from aegis_mcp.profiles.profile import BUILTIN_PROFILES, AgentProfile, generic_profile

# text -> (kind, compiled pattern, port, as --allow spells it back)
RULES = {
    "api.example.com": ("host", "api.example.com", 0, "api.example.com"),
    "API.Example.COM.:443": ("host", "api.example.com", 443, "api.example.com:443"),
    "*.github.com": ("host", "*.github.com", 0, "*.github.com"),
    "*.github.com:22": ("host", "*.github.com", 22, "*.github.com:22"),
    "localhost:8080": ("host", "localhost", 8080, "localhost:8080"),
    "bücher.example": ("host", "xn--bcher-kva.example", 0, "xn--bcher-kva.example"),
    "203.0.113.7": ("cidr", "203.0.113.7/32", 0, "203.0.113.7"),
    "203.0.113.7:8080": ("cidr", "203.0.113.7/32", 8080, "203.0.113.7:8080"),
    "203.0.113.0/24": ("cidr", "203.0.113.0/24", 0, "203.0.113.0/24"),
    "203.0.113.0/24:443": ("cidr", "203.0.113.0/24", 443, "203.0.113.0/24:443"),
    "[203.0.113.0/24]:443": ("cidr", "203.0.113.0/24", 443, "203.0.113.0/24:443"),
    "10.1.2.3/8": ("cidr", "10.0.0.0/8", 0, "10.0.0.0/8"),  # host bits: the range they name
    "2001:db8::1": ("cidr", "2001:db8::1/128", 0, "2001:db8::1"),
    "[2001:db8::1]:443": ("cidr", "2001:db8::1/128", 443, "[2001:db8::1]:443"),
    "2001:db8::/32": ("cidr", "2001:db8::/32", 0, "2001:db8::/32"),
    "[2001:db8::/32]:443": ("cidr", "2001:db8::/32", 443, "[2001:db8::/32]:443"),
    "::1": ("cidr", "::1/128", 0, "::1"),
    "::ffff:203.0.113.7": ("cidr", "203.0.113.7/32", 0, "203.0.113.7"),  # mapped: as IPv4
}


@pytest.mark.parametrize("text", RULES)
def test_every_rule_kind_parses_and_spells_back(text: str) -> None:
    kind, pattern, port, spelled = RULES[text]
    rule = parse_rule(text, "allow", f"--allow {text}")
    assert (rule.kind, rule.pattern, rule.port, rule.spelled) == (kind, pattern, port, spelled)
    assert rule.line() == f"allow {kind} {pattern} {port} --allow {text}"
    again = parse_rule(rule.spelled, "allow", "x")  # what the tools show is a valid rule
    assert (again.kind, again.pattern, again.port) == (kind, pattern, port)


BAD = {
    "a.*.com": "bad wildcard \"a.*.com\": a wildcard is allowed only as a leading \"*.\"",
    "*github.com": "bad wildcard",
    "*": "a bare \"*\" is not a rule",
    "10.0.0.0/33": "prefix length must be a number from 0 to 32 for IPv4",
    "2001:db8::/129": "prefix length must be a number from 0 to 128 for IPv6",
    "10.0.0/8": "bad CIDR range \"10.0.0/8\": \"10.0.0\" is not an IP address",
    "300.1.1.1": "bad IP address \"300.1.1.1\"",
    "api.example.com:0": "port 0 is out of range (1-65535)",
    "api.example.com:70000": "port 70000 is out of range (1-65535)",
    "[2001:db8::1]:99999": "port 99999 is out of range",
    "api.example.com:https": "port \"https\" is not a number",
    "api.example.com:": "nothing after the \":\"",
    "https://api.example.com/v1": "is a URL: give its host name (\"api.example.com\")",
    "[api.example.com]:443": "brackets are for IPv6 addresses",
    "-bad.example": "is not a host name",
    "two words": "is not a host name",
    "": "empty rule",
}


@pytest.mark.parametrize("text", BAD)
def test_every_bad_rule_says_why(text: str) -> None:
    with pytest.raises(RuleError, match=None) as caught:
        parse_rule(text, "deny", "x")
    assert BAD[text] in str(caught.value), str(caught.value)


def test_a_bad_rule_names_its_place() -> None:
    with pytest.raises(PolicyError) as flag:
        netpolicy.from_flags(["ok.example"], ["a.*.com"])
    assert str(flag.value).startswith("--deny a.*.com: bad wildcard") and flag.value.exit_code == 2
    with pytest.raises(PolicyError) as key:
        netpolicy.parse_file('allow = ["x.example"]\nalow = []\n', "./p.toml")
    assert str(key.value) == "./p.toml: unknown key \"alow\" (known: allow, deny)"
    with pytest.raises(PolicyError) as index:
        netpolicy.parse_file('deny = ["ok.example", "10.0.0.0/40"]\n', "./p.toml")
    assert str(index.value).startswith("./p.toml: deny[1]: bad CIDR range \"10.0.0.0/40\"")
    with pytest.raises(PolicyError) as kind:
        netpolicy.parse_file('allow = "x.example"\n', "./p.toml")
    assert "allow must be a list of strings: allow = [\"x.example\"]" in str(kind.value)
    with pytest.raises(PolicyError) as number:
        netpolicy.parse_file("allow = [443]\n", "./p.toml")
    assert str(number.value) == "./p.toml: allow[0]: 443 is not a string"
    with pytest.raises(PolicyError) as syntax:
        netpolicy.parse_file("allow = [\n", "./p.toml")
    assert str(syntax.value).startswith("./p.toml: not a valid TOML policy file")
    with pytest.raises(PolicyError) as table:
        netpolicy.from_config({"network": {"allow": ["x:70000"]}}, Path("/c/config.toml"))
    assert str(table.value).startswith("/c/config.toml: [network]: allow[0]: port 70000")
    with pytest.raises(PolicyError) as hostile:  # one line, whatever the text holds
        netpolicy.from_flags(["evil\n\x1b[2Jexample"], [])
    assert "\n" not in str(hostile.value) and "\x1b" not in str(hostile.value)


def test_labels_say_where_each_rule_came_from() -> None:
    rules = netpolicy.user_rules(
        ["a.example"], ["b.example"], ["./p.toml"],
        {"network": {"deny": ["c.example"]}}, Path("/c/config.toml"),
        read=lambda path: 'allow = ["d.example", "e.example"]\n')
    assert [(r.pattern, r.label) for r in rules] == [
        ("c.example", "config /c/config.toml: [network]: deny[0]"),
        ("d.example", "policy file ./p.toml: allow[0]"),
        ("e.example", "policy file ./p.toml: allow[1]"),
        ("a.example", "--allow a.example"),
        ("b.example", "--deny b.example")]


def _policy(allow: list[str], deny: list[str], implicit: list[str] = ()) -> netpolicy.Policy:
    users = netpolicy.from_flags(allow, deny)
    extra = [parse_rule(t, "allow", f"{netpolicy.IMPLICIT}test") for t in implicit]
    policy = netpolicy.effective(users, extra)
    assert policy is not None
    return policy


ALLOW = ["api.github.com:443", "*.githubusercontent.com", "198.51.100.0/24:5432",
         "2001:db8::/32", "[2001:db8:1::5]:8443", "localhost"]
DENY = ["*.pastebin.com", "203.0.113.0/24", "evil.githubusercontent.com", "[2001:db8::66]:443"]
IMPLICIT = ["api.anthropic.com", "127.0.0.1:8080", "2001:db8::66"]

# (addr, port, host) -> (allowed, the rule that decided, as a deny event names it)
DECISIONS = [
    (("140.82.1.1", 443, "api.github.com"), True, "allow host api.github.com 443"),
    (("140.82.1.1", 443, "API.GitHub.com."), True, "allow host api.github.com 443"),
    (("140.82.1.1", 80, "api.github.com"), False, "default deny"),      # the port is not
    (("140.82.1.1", 443, None), False, "default deny"),                 # the name is not known
    (("140.82.1.1", 443, "github.com"), False, "default deny"),         # not a subdomain
    (("185.1.1.1", 443, "raw.githubusercontent.com"), True,
     "allow host *.githubusercontent.com 0"),
    (("185.1.1.1", 443, "a.b.githubusercontent.com"), True,
     "allow host *.githubusercontent.com 0"),
    (("185.1.1.1", 443, "githubusercontent.com"), False, "default deny"),
    (("185.1.1.1", 443, "evil.githubusercontent.com"), False,
     "deny host evil.githubusercontent.com 0"),                         # deny beats allow
    (("1.2.3.4", 443, "x.pastebin.com"), False, "deny host *.pastebin.com 0"),
    (("198.51.100.9", 5432, None), True, "allow cidr 198.51.100.0/24 5432"),
    (("198.51.100.9", 5433, None), False, "default deny"),
    (("::ffff:198.51.100.9", 5432, None), True, "allow cidr 198.51.100.0/24 5432"),  # mapped
    (("203.0.113.5", 443, "api.github.com"), False, "deny cidr 203.0.113.0/24 0"),
    (("2001:db8:77::1", 22, None), True, "allow cidr 2001:db8::/32 0"),
    (("2001:db8:1::5", 8443, None), True, "allow cidr 2001:db8::/32 0"),
    (("2001:db9::1", 22, None), False, "default deny"),
    (("2001:db8::66", 443, None), False, "deny cidr 2001:db8::66/128 443"),  # beats implicit
    (("2001:db8::66", 80, None), True, "allow cidr 2001:db8::/32 0"),
    (("127.0.0.1", 8080, None), True, "allow cidr 127.0.0.1/32 8080"),       # implicit
    (("127.0.0.1", 8081, None), False, "default deny"),
    (("127.0.0.1", 3000, "localhost"), True, "allow host localhost 0"),
    (("160.79.104.10", 443, "api.anthropic.com"), True, "allow host api.anthropic.com 0"),
]


@pytest.mark.parametrize(("target", "allowed", "rule"), DECISIONS)
def test_the_decision(target: tuple[str, int, str | None], allowed: bool, rule: str) -> None:
    decision = _policy(ALLOW, DENY, IMPLICIT).decide(*target)
    assert (decision.allowed, decision.rule_text) == (allowed, rule)
    assert decision.default == (rule == "default deny")


def test_an_implicit_allow_loses_to_an_explicit_deny() -> None:
    policy = _policy(["x.example"], ["api.anthropic.com", "127.0.0.0/8"],
                     ["api.anthropic.com", "127.0.0.1:8080"])
    assert policy.decide("160.79.104.10", 443, "api.anthropic.com").rule_text == \
        "deny host api.anthropic.com 0"
    assert not policy.decide("127.0.0.1", 8080).allowed


def test_the_default_is_deny_with_an_allow_and_allow_with_only_denies() -> None:
    assert netpolicy.effective([], []) is None  # no rule of the user's: no policy at all
    only_denies = _policy([], ["*.pastebin.com"], ["api.anthropic.com"])
    assert only_denies.default == "allow" and only_denies.decide("9.9.9.9", 443).allowed
    assert all(not r.implicit for r in only_denies.rules)  # they would change nothing
    allow_list = _policy(["x.example"], [], ["api.anthropic.com"])
    assert allow_list.default == "deny" and not allow_list.decide("9.9.9.9", 443).allowed
    assert netpolicy.describe(allow_list) == "deny by default, 1 rule of yours, 1 implicit allow"


def test_the_compiled_file_reads_back_as_written(tmp_path: Path) -> None:
    policy = _policy(ALLOW, DENY, IMPLICIT)
    text = policy.compile()
    lines = text.splitlines()
    assert lines[:3] == ["aegis-policy 1", "default deny", "deny host *.pastebin.com 0 --deny "
                         "*.pastebin.com"]
    assert "allow cidr 2001:db8:1::5/128 8443 --allow [2001:db8:1::5]:8443" in lines
    assert "allow cidr 127.0.0.1/32 8080 implicit: test" in lines
    assert all(len(line.encode()) < 512 for line in lines)
    path = tmp_path / "netmon-1.policy"
    netpolicy.write_compiled(str(path), text)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == text
    assert netpolicy.load(path) == policy
    assert sorted(os.listdir(tmp_path)) == ["netmon-1.policy"]  # no temporary left behind
    (tmp_path / "bad").write_text("aegis-policy 1\ndefault deny\nallow host a.*.b 0 x\n")
    with pytest.raises(Exception, match=r"bad:3: not a rule of a compiled policy"):
        netpolicy.load(tmp_path / "bad")


def test_implicit_allows_keep_the_agent_working() -> None:
    env = {"ANTHROPIC_BASE_URL": "http://localhost:8080/v1", "OPENAI_BASE_URL":
           "https://gw.example:9443", "HTTPS_PROXY": "proxy.corp.example:3128",
           "GOOGLE_GEMINI_BASE_URL": "not a url"}
    claude = netpolicy.implicit_rules(BUILTIN_PROFILES["claude"], env, ["10.0.0.53", "::1"])
    lines = [r.line() for r in claude]
    assert lines == [
        "allow host api.anthropic.com 0 implicit: claude's API (api_hosts[0])",
        "allow host platform.claude.com 0 implicit: claude's API (api_hosts[1])",
        "allow host claude.ai 0 implicit: claude's API (api_hosts[2])",
        "allow host localhost 8080 implicit: ANTHROPIC_BASE_URL",
        "allow cidr 127.0.0.1/32 8080 implicit: ANTHROPIC_BASE_URL",
        "allow cidr ::1/128 8080 implicit: ANTHROPIC_BASE_URL",
        "allow host proxy.corp.example 3128 implicit: HTTPS_PROXY",
        "allow cidr 10.0.0.53/32 53 implicit: DNS resolver (/etc/resolv.conf)",
        "allow cidr ::1/128 53 implicit: DNS resolver (/etc/resolv.conf)",
    ]  # OPENAI_BASE_URL is not claude's
    policy = netpolicy.effective(netpolicy.from_flags(["x.example"], []), claude)
    assert policy is not None and netpolicy.proxies(policy) == ["HTTPS_PROXY"]
    generic = netpolicy.implicit_rules(generic_profile(["my-agent"]), env)
    assert {r.label for r in generic} == {"implicit: ANTHROPIC_BASE_URL",
                                         "implicit: OPENAI_BASE_URL", "implicit: HTTPS_PROXY"}
    assert "allow host gw.example 9443 implicit: OPENAI_BASE_URL" in [r.line() for r in generic]
    for name, profile in BUILTIN_PROFILES.items():  # each built-in names its API
        assert profile.api_hosts, name
        for host in profile.api_hosts:
            parse_rule(host, "allow", "")
    custom = AgentProfile(name="mine", command=("mine",), api_hosts=("api.mine.example:443",),
                          api_env=("MINE_URL",))
    assert [r.line() for r in netpolicy.implicit_rules(custom, {
        "MINE_URL": "https://[2001:db8::9]", "ANTHROPIC_BASE_URL": "http://x.example"})] == [
        "allow host api.mine.example 443 implicit: mine's API (api_hosts[0])",
        "allow cidr 2001:db8::9/128 443 implicit: MINE_URL"]


def test_the_policy_file_sits_beside_the_log() -> None:
    from aegis_mcp.paths import runtime_file

    log = runtime_file(Path("/run/x"), "netmon_log", 42)
    assert netpolicy.path_for_log(log) == runtime_file(Path("/run/x"), "netmon_policy", 42)


def test_the_docs_examples_are_policies_aegis_mcp_reads() -> None:
    """docs/netmon.md's policy file and compiled policy are what the code reads and writes."""
    import re

    docs = (Path(__file__).resolve().parents[2] / "docs" / "netmon.md").read_text()
    section = docs[docs.index("## Network policy"):docs.index("## Where the code lives")]
    tomls = re.findall(r"```toml\n(.*?)```", section, re.S)
    file_rules = netpolicy.parse_file(tomls[0], "./agent-policy.toml")
    assert [r.spelled for r in file_rules] == [
        "api.github.com:443", "*.githubusercontent.com", "registry.npmjs.org",
        "gist.githubusercontent.com"]
    assert netpolicy.parse_file(tomls[1].replace("(...)", ""), "learned")
    compiled_text = re.findall(r"```\n(aegis-policy 1\n.*?)```", section, re.S)[0]
    policy = netpolicy.parse_compiled(compiled_text, "docs")
    assert policy.compile() == compiled_text
    assert policy.decide("203.0.113.9", 443, "paste.pastebin.com").rule_text == \
        "deny host *.pastebin.com 0"
