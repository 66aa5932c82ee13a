"""The supervisor's network policy, with real supervisors and a real agent process: where the
rules come from (flags, the config's [network] table, policy files), the compiled file and
AEGIS_NETMON_POLICY it gives its agent, the refusals (a bad policy, a static agent in preload
mode) and the honest word about what is enforced in each mode."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_mcp.netmon import policy as netpolicy
from tests.support.host import NEEDS_ROOT, aegis_bin

AGENT = """
import json, os, sys
path = os.environ.get("AEGIS_NETMON_POLICY")
info = {"policy": path, "uid": os.getuid(), "log": os.environ.get("AEGIS_NETMON_LOG"),
        "mode": os.environ.get("AEGIS_NETMON_MODE"), "preload": os.environ.get("LD_PRELOAD")}
if path:
    st = os.stat(path)
    info.update(text=open(path).read(), owner=st.st_uid, perms=st.st_mode & 0o777)
open(sys.argv[1], "w").write(json.dumps(info))
"""


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory anyone may use: the agent (maybe another user) writes its report there."""
    path = Path(tempfile.mkdtemp(prefix="aegis-policy-"))
    os.chmod(path, 0o777)
    (path / "agent.py").write_text(AGENT)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(env: dict[str, str], *args: str, cwd: Path,
        prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, aegis_bin(), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def agent(place: Path) -> list[str]:
    return ["--", sys.executable, str(place / "agent.py"), str(place / "info.json")]


def report(place: Path) -> dict:
    return json.loads((place / "info.json").read_text())


def test_flags_config_and_policy_file_make_one_compiled_policy(
        aegis_env: dict[str, str], place: Path) -> None:
    Path(aegis_env["AEGIS_CONFIG"]).write_text(
        '[network]\ndeny = ["*.pastebin.com"]\n')
    (place / "agent-policy.toml").write_text(
        '# learned\nallow = ["api.github.com:443", "[2001:db8::1]:8443"]\n'
        'deny = ["203.0.113.0/24"]\n')
    env = {**aegis_env, "ANTHROPIC_BASE_URL": "http://127.0.0.1:8765"}
    out = run(env, "--netmon=preload", "--allow", "*.githubusercontent.com", "--deny=evil.example",
              "--policy", "./agent-policy.toml", *agent(place), cwd=place)
    assert out.returncode == 0, out.stderr
    info = report(place)
    path = Path(info["policy"])
    # beside the log, the agent's own (0600), and the same path its MCP server gets
    assert path == netpolicy.path_for_log(Path(info["log"])) and path.exists()
    assert info["perms"] == 0o600 and info["owner"] == os.getuid()
    policy = netpolicy.parse_compiled(info["text"], "compiled")
    config = aegis_env["AEGIS_CONFIG"]
    assert [(r.action, r.spelled, r.label) for r in policy.users] == [
        ("deny", "*.pastebin.com", f"config {config}: [network]: deny[0]"),
        ("deny", "203.0.113.0/24", "policy file ./agent-policy.toml: deny[0]"),
        ("deny", "evil.example", "--deny evil.example"),
        ("allow", "api.github.com:443", "policy file ./agent-policy.toml: allow[0]"),
        ("allow", "[2001:db8::1]:8443", "policy file ./agent-policy.toml: allow[1]"),
        ("allow", "*.githubusercontent.com", "--allow *.githubusercontent.com")]
    assert policy.default == "deny"
    # the agent's API base URL (any generic command may use it) and DNS stay reachable
    assert policy.decide("127.0.0.1", 8765).rule.label == "implicit: ANTHROPIC_BASE_URL"
    for server in netpolicy.resolvers():
        assert policy.decide(server, 53).allowed
    assert not policy.decide("198.51.100.1", 443).allowed
    # said once, honestly: preload enforcement is advisory
    line = next(ln for ln in out.stderr.splitlines() if "network policy (" in ln)
    assert f"in {path})" in line and "deny by default, 6 rules of yours" in line
    assert "advisory: statically linked programs and raw system calls pass by it" in line


def test_a_policy_of_denies_only_allows_the_rest(aegis_env: dict[str, str],
                                                 place: Path) -> None:
    out = run(aegis_env, "--netmon=preload", "--deny", "*.pastebin.com", *agent(place),
              cwd=place)
    assert out.returncode == 0, out.stderr
    policy = netpolicy.parse_compiled(report(place)["text"], "compiled")
    assert policy.default == "allow" and len(policy.rules) == 1
    assert "allow by default, 1 rule of yours" in out.stderr


def test_no_rule_no_policy(aegis_env: dict[str, str], place: Path) -> None:
    out = run(aegis_env, "--netmon=preload", *agent(place), cwd=place)
    assert out.returncode == 0, out.stderr
    info = report(place)
    assert info["policy"] is None and info["log"] and "network policy" not in out.stderr
    assert not list(Path(aegis_env["AEGIS_RUNTIME_DIR"]).glob("*.policy"))


BAD_POLICIES = [
    # (the flags, the policy file's text, the config's text, the line said)
    (["--allow", "a.*.com"], None, None,
     "aegis-mcp: --allow a.*.com: bad wildcard \"a.*.com\": a wildcard is allowed only as a "
     "leading \"*.\" (e.g. *.example.com)"),
    (["--deny=10.0.0.0/33"], None, None,
     "aegis-mcp: --deny 10.0.0.0/33: bad CIDR range \"10.0.0.0/33\": the prefix length must "
     "be a number from 0 to 32 for IPv4 (e.g. 203.0.113.0/24)"),
    (["--allow", "api.example.com:70000"], None, None,
     "aegis-mcp: --allow api.example.com:70000: port 70000 is out of range (1-65535)"),
    (["--allow"], None, None, "aegis-mcp: --allow needs a value"),
    (["--policy", "p.toml"], 'allow = ["ok.example"]\ndenny = ["x.example"]\n', None,
     "aegis-mcp: p.toml: unknown key \"denny\" (known: allow, deny)"),
    (["--policy", "p.toml"], 'allow = ["ok.example", "10.0.0/8"]\n', None,
     "aegis-mcp: p.toml: allow[1]: bad CIDR range \"10.0.0/8\": \"10.0.0\" is not an IP "
     "address"),
    (["--policy", "p.toml"], 'deny = ["x.example:0"]\n', None,
     "aegis-mcp: p.toml: deny[0]: port 0 is out of range (1-65535)"),
    (["--policy", "p.toml"], 'allow = ["x.*.example"]\n', None,
     "aegis-mcp: p.toml: allow[0]: bad wildcard \"x.*.example\": a wildcard is allowed only "
     "as a leading \"*.\" (e.g. *.example.com)"),
    (["--policy", "missing.toml"], None, None, "aegis-mcp: --policy missing.toml: no such file"),
    (["--allow", "ok.example"], None, '[network]\nallow = ["ok.example"]\nports = [1]\n',
     "aegis-mcp: CONFIG: [network]: unknown key \"ports\" (known: allow, deny)"),
    (["--allow", "ok.example"], None, '[network]\ndeny = ["[2001:db8::/130]:443"]\n',
     "aegis-mcp: CONFIG: [network]: deny[0]: bad CIDR range \"2001:db8::/130\": the prefix "
     "length must be a number from 0 to 128 for IPv6 (e.g. 2001:db8::/32)"),
    ([], None, '[agents.mine]\ncommand = ["true"]\napi_hosts = ["api.mine.example:99999"]\n',
     "aegis-mcp: CONFIG: [agents.mine] api_hosts[0]: port 99999 is out of range (1-65535)"),
]


@pytest.mark.parametrize(("flags", "file", "config", "said"), BAD_POLICIES)
def test_a_bad_policy_is_one_line_naming_its_place_and_exit_2(
        aegis_env: dict[str, str], place: Path, flags: list[str], file: str | None,
        config: str | None, said: str) -> None:
    if file is not None:
        (place / "p.toml").write_text(file)
    if config is not None:
        Path(aegis_env["AEGIS_CONFIG"]).write_text(config)
    agent_words = ["mine"] if "agents.mine" in (config or "") else agent(place)
    out = run(aegis_env, *flags, *agent_words, cwd=place)
    assert out.returncode == 2, out.stderr
    assert out.stderr == said.replace("CONFIG", aegis_env["AEGIS_CONFIG"]) + "\n"
    assert not (place / "info.json").exists()  # nothing started


def test_a_static_agent_with_a_policy_in_preload_mode_is_refused(
        aegis_env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "static.c"
    src.write_text("int main(void){return 0;}\n")
    exe = tmp_path / "static-agent"
    built = subprocess.run(["gcc", "-static", "-o", str(exe), str(src)], capture_output=True)
    if built.returncode != 0:
        pytest.skip("no static libc to build a static binary")
    out = run(aegis_env, "--netmon=preload", "--allow", "api.example.com", "--", str(exe),
              cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == (
        f"aegis-mcp: {exe} is statically linked: LD_PRELOAD cannot see its connections, nor "
        "enforce a network policy on them; use `sudo aegis-mcp ... --netmon=netns` instead")
    # codex: a Node launcher that runs a static binary; its profile knows
    Path(aegis_env["AEGIS_CONFIG"]).write_text('[agents.codex]\ncommand = ["true"]\n')
    out = run(aegis_env, "--netmon=preload", "--deny", "x.example", "codex", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "nor enforce a network policy on them; use `sudo aegis-mcp codex --netmon=netns`" \
        in out.stderr
    assert not list(Path(aegis_env["AEGIS_RUNTIME_DIR"]).glob("*.policy"))


def test_a_policy_turns_preload_monitoring_on_for_a_user(aegis_env: dict[str, str],
                                                         place: Path) -> None:
    """As a normal user, a bare --allow is a bare --netmon: preload mode, the hooks loaded."""
    prefix: tuple[str, ...] = ()
    env = dict(aegis_env)
    if os.geteuid() == 0:
        user = pwd.getpwnam("nobody")
        prefix = ("setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                  "--clear-groups")
        env["AEGIS_RUNTIME_DIR"] = str(place / "run")
        env["AEGIS_CONFIG"] = "/nonexistent/config.toml"
        env["HOME"] = str(place)
    out = run(env, "--allow", "api.example.com", *agent(place), cwd=place, prefix=prefix)
    assert out.returncode == 0, out.stderr
    assert "the network policy turns network monitoring on: preload mode (not root)" \
        in out.stderr
    info = report(place)
    assert info["mode"] == "preload" and "libaegis_hooks.so" in info["preload"]
    assert info["policy"] and info["owner"] == info["uid"]


@NEEDS_ROOT
def test_netns_mode_writes_the_policy_and_says_the_kernel_enforces_it(
        aegis_env: dict[str, str], place: Path) -> None:
    """As root a policy means netns mode (a bare --netmon's choice); the policy file and the
    variable are there for the agent to read; the kernel enforces it (tests/netns and
    tests/netmon/test_netns_policy_supervisor.py), and the supervisor says so."""
    out = run(aegis_env, "--allow", "api.example.com", "--netns-forward", "8099",
              *agent(place), cwd=place)
    assert out.returncode == 0, out.stderr
    assert "the network policy turns network monitoring on: netns mode (root)" in out.stderr
    line = next(ln for ln in out.stderr.splitlines() if "network policy (" in ln)
    assert line.endswith(netpolicy.enforcement("netns"))
    assert "enforced by the kernel (nftables)" in line
    info = report(place)
    assert info["mode"] == "netns"
    policy = netpolicy.parse_compiled(info["text"], "compiled")
    labels = {r.label for r in policy.rules if r.implicit}
    # inside, DNS goes to the namespace's own resolv.conf; the forward is the user's wish
    assert "implicit: DNS resolver (the network namespace's resolv.conf)" in labels
    assert "implicit: --netns-forward 8099" in labels
    assert policy.decide("127.0.0.1", 8099).allowed


@NEEDS_ROOT
def test_under_sudo_the_policy_is_the_users_and_root_reads_no_file_for_it(
        aegis_env: dict[str, str], place: Path, throwaway_user: pwd.struct_passwd) -> None:
    """The compiled file is written as the agent's user, in that user's runtime directory;
    a --policy file is read as that user, so one only root may read is refused (the attack:
    `sudo aegis-mcp claude --policy /etc/shadow` would show root's file in its errors)."""
    env = {**aegis_env, "SUDO_UID": str(throwaway_user.pw_uid),
           "SUDO_GID": str(throwaway_user.pw_gid), "AEGIS_RUNTIME_DIR": str(place / "run")}
    secret = place / "secret.toml"
    secret.write_text('allow = ["root-only.example"]\n')
    os.chmod(secret, 0o600)
    out = run(env, "--netmon=preload", "--policy", str(secret), *agent(place), cwd=place)
    assert out.returncode == 2
    assert out.stderr == f"aegis-mcp: --policy {secret}: cannot read it: Permission denied\n"
    os.chmod(secret, 0o644)
    out = run(env, "--netmon=preload", "--policy", str(secret), *agent(place), cwd=place)
    assert out.returncode == 0, out.stderr
    info = report(place)
    assert info["uid"] == throwaway_user.pw_uid == info["owner"]
    assert stat.S_IMODE(info["perms"]) == 0o600
    assert "allow host root-only.example 0 policy file" in info["text"]
