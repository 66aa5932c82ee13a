"""The installed agent CLI's version, read from its npm package.json (never by running it), and
the supervisor's one line at its start when that version does not wait for MCP servers still
connecting, or when the Node.js that runs a Node CLI is older than the CLI asks."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pexpect
import pytest

from aegis_mcp.errors import AegisError
from aegis_mcp.profiles.profile import BUILTIN_PROFILES, load_config
from aegis_mcp.profiles.version import (
    is_older,
    node_notice,
    npm_package_version,
    parse_version,
    readiness_notice,
)
from tests.support.supervisor_helpers import FAKE_AGENT, fake_profile, fake_world

CLAUDE = BUILTIN_PROFILES["claude"]


def npm_layout(prefix: Path, version: str, bin_file: str = "bin/claude.exe",
               manifest: dict | None = None) -> Path:
    """What `npm install --prefix PREFIX @anthropic-ai/claude-code@VERSION` leaves: the package
    with its package.json, and node_modules/.bin/claude, a relative symlink to its bin file
    (here a wrapper that runs the fake agent). Returns the .bin/claude path."""
    package = prefix / "node_modules" / "@anthropic-ai" / "claude-code"
    target = package / bin_file
    target.parent.mkdir(parents=True)
    target.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_AGENT} \"$@\"\n")
    target.chmod(0o755)
    (package / "package.json").write_text(json.dumps(manifest if manifest is not None else {
        "name": "@anthropic-ai/claude-code", "version": version,
        "bin": {"claude": bin_file}}))
    bin_dir = prefix / "node_modules" / ".bin"
    bin_dir.mkdir()
    link = bin_dir / "claude"
    link.symlink_to(os.path.relpath(target, bin_dir))
    return link


@pytest.mark.parametrize(("version", "than", "older"), [
    ("2.1.197", "2.1.283", True),
    ("2.1.283", "2.1.283", False),
    ("2.1.331", "2.1.283", False),
    ("2.1.99", "2.1.283", True),  # numbers, not strings: 99 < 283
    ("2.2.0", "2.1.283", False),
    ("1.99.999", "2.1.283", True),
    ("2.1.100-beta.1", "2.1.283", True),
    ("not-a-version", "2.1.283", False),  # unknown: no claim either way
    ("2.1.197", "", False),
])
def test_versions_compare_as_numbers(version: str, than: str, older: bool) -> None:
    assert is_older(version, than) is older


def test_parse_version_takes_only_dotted_numbers() -> None:
    assert parse_version("2.1.331") == (2, 1, 331)
    assert parse_version(" 2.1.331\n") == (2, 1, 331)
    assert parse_version("2.1") is None and parse_version("v2.1.3") is None


def test_the_version_comes_from_the_package_json_the_bin_symlink_leads_to(
        tmp_path: Path) -> None:
    assert npm_package_version(str(npm_layout(tmp_path / "new", "2.1.331"))) == "2.1.331"
    # older packages had a JavaScript entry point at the package root
    assert npm_package_version(str(npm_layout(tmp_path / "old", "2.1.197", "cli.js"))) == \
        "2.1.197"


def test_a_native_install_or_a_stray_package_json_gives_no_version(tmp_path: Path) -> None:
    # a native install: a bare binary, under a home that has a project's package.json
    (tmp_path / "package.json").write_text(json.dumps({"name": "proj", "version": "9.9.9"}))
    native = tmp_path / "claude" / "versions" / "2.1.331"
    native.parent.mkdir(parents=True)
    native.write_bytes(b"\x7fELF")
    native.chmod(0o755)
    assert npm_package_version(str(native)) is None
    # a package.json whose bin is another file says nothing of this one
    other = npm_layout(tmp_path / "other", "2.1.197", manifest={
        "name": "x", "version": "2.1.197", "bin": {"x": "bin/other.js"}})
    assert npm_package_version(str(other)) is None


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"bin": "bin/claude.exe"}',
                                     '{"bin": "bin/claude.exe", "version": "latest"}',
                                     '{"bin": "bin/claude.exe", "version": 3}'])
def test_a_bad_package_json_gives_no_version(tmp_path: Path, content: str) -> None:
    link = npm_layout(tmp_path, "2.1.197")
    (tmp_path / "node_modules/@anthropic-ai/claude-code/package.json").write_text(content)
    assert npm_package_version(str(link)) is None
    assert npm_package_version(str(tmp_path / "missing")) is None


def test_the_notice_names_both_versions_and_only_for_an_older_cli() -> None:
    since = CLAUDE.mcp_waits_since
    assert parse_version(since)
    notice = readiness_notice(CLAUDE, "2.1.197")
    assert notice is not None and notice.startswith("Claude Code 2.1.197 does not wait")
    assert f"({since} and later do)" in notice and notice.endswith("upgrade Claude Code")
    assert readiness_notice(CLAUDE, since) is None
    assert readiness_notice(CLAUDE, "2.1.331") is None
    assert readiness_notice(CLAUDE, None) is None  # unknown (native install): nothing said
    assert readiness_notice(BUILTIN_PROFILES["codex"], "0.1.0") is None  # no such fact


def test_mcp_waits_since_in_the_config_must_be_a_version(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[agents.claude]\nmcp_waits_since = "soon"\n')
    with pytest.raises(AegisError, match="mcp_waits_since must be a version"):
        load_config(path)
    path.write_text('[agents.claude]\nmcp_waits_since = ""\n')  # none: no warning
    assert load_config(path).profiles["claude"].mcp_waits_since == ""


@pytest.mark.parametrize(("version", "said"), [("2.1.197", True), ("2.1.331", False)])
def test_the_supervisor_says_it_once_for_an_old_claude_and_not_for_a_new_one(
        tmp_path: Path, aegis_env: dict[str, str], version: str, said: bool) -> None:
    world = fake_world(tmp_path, aegis_env, CLAUDECODE="1")
    claude = npm_layout(tmp_path / "npm", version)
    Path(world.env["AEGIS_CONFIG"]).write_text(
        fake_profile(script=FAKE_AGENT).replace(f'["{sys.executable}", "{FAKE_AGENT}"]',
                                                f'["{claude}"]')
        + 'description = "Claude Code (Anthropic)"\n'
        + f'mcp_waits_since = "{CLAUDE.mcp_waits_since}"\n')
    child = world.spawn("fake")
    seen = io.StringIO()
    child.logfile_read = seen
    child.expect("READY")
    child.sendline("restart new server|go on")  # a restart says nothing again
    child.expect("restarting fake")
    child.expect("READY")
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    child.close()
    out = seen.getvalue()
    assert len(world.starts()) == 2
    line = f"aegis-mcp: Claude Code {version} does not wait for MCP servers still connecting"
    assert out.count(line) == (1 if said else 0), out


QWEN = BUILTIN_PROFILES["qwen"]


def fake_node(folder: Path, version: str) -> Path:
    """A `node` that says `version` to --version and runs a script with this Python."""
    folder.mkdir(parents=True, exist_ok=True)
    node = folder / "node"
    node.write_text(f'#!/bin/sh\n[ "$1" = --version ] && {{ echo {version}; exit 0; }}\n'
                    f'exec {sys.executable} "$@"\n')
    node.chmod(0o755)
    return node


def node_script(path: Path, shebang: str) -> Path:
    path.write_text(f"{shebang}\nconsole.log('hi')\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(("version", "said"), [("v18.20.8", True), ("v20.20.2", True),
                                               ("v22.23.3", False), ("v24.1.0", False),
                                               ("not a version", False)])
def test_the_node_on_the_path_is_checked_against_what_the_cli_asks(
        tmp_path: Path, version: str, said: bool) -> None:
    node = fake_node(tmp_path / "bin", version)
    qwen = node_script(tmp_path / "qwen", "#!/usr/bin/env node")
    notice = node_notice(QWEN, str(qwen), f"/nonexistent{os.pathsep}{node.parent}")
    if said:
        assert notice == (f"Qwen Code asks for Node.js 22 or newer, and the node that runs it "
                          f"({node}) is {version}: if qwen fails, put a Node.js 22 first on "
                          "PATH")
    else:
        assert notice is None


def test_only_a_node_script_is_checked(tmp_path: Path) -> None:
    old = fake_node(tmp_path / "old", "v18.20.8")
    path = str(old.parent)
    # a node named in the #! line itself
    assert node_notice(QWEN, str(node_script(tmp_path / "a", f"#!{old}")), "/none")
    # a standalone build, a shell script, no node found, nothing asked: nothing said
    assert node_notice(QWEN, sys.executable, path) is None
    assert node_notice(QWEN, str(node_script(tmp_path / "b", "#!/bin/sh")), path) is None
    assert node_notice(QWEN, str(node_script(tmp_path / "c", "#!/usr/bin/env node")),
                       "/none") is None
    claude = node_script(tmp_path / "d", "#!/usr/bin/env node")
    assert node_notice(CLAUDE, str(claude), path) is None  # claude asks for no version here
    assert node_notice(QWEN, str(tmp_path / "missing"), path) is None


def test_min_node_in_the_config_must_be_a_major_version(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[agents.qwen]\nmin_node = ">=22"\n')
    with pytest.raises(AegisError, match="min_node must be a major version"):
        load_config(path)
    path.write_text('[agents.qwen]\nmin_node = ""\n')  # none: not checked
    assert load_config(path).profiles["qwen"].min_node == ""


@pytest.mark.parametrize(("version", "said"), [("v20.20.2", True), ("v22.23.3", False)])
def test_the_supervisor_says_once_that_node_is_older_than_the_cli_asks(
        tmp_path: Path, aegis_env: dict[str, str], version: str, said: bool) -> None:
    node = fake_node(tmp_path / "node-bin", version)
    agent = tmp_path / "agent"
    agent.write_text("#!/usr/bin/env node\n" + FAKE_AGENT.read_text().split("\n", 1)[1])
    agent.chmod(0o755)
    world = fake_world(tmp_path, aegis_env,
                       PATH=f"{node.parent}{os.pathsep}{aegis_env['PATH']}")
    Path(world.env["AEGIS_CONFIG"]).write_text(
        fake_profile().replace(f'["{sys.executable}", "{FAKE_AGENT}"]', f'["{agent}"]')
        + 'description = "Qwen Code (Alibaba)"\nmin_node = "22"\n')
    child = world.spawn("fake")
    seen = io.StringIO()
    child.logfile_read = seen
    child.expect("READY")
    child.sendline("restart new server|go on")  # a restart says nothing again
    child.expect("restarting fake")
    child.expect("READY")
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    child.close()
    out = seen.getvalue()
    assert len(world.starts()) == 2
    line = "aegis-mcp: Qwen Code asks for Node.js 22 or newer, and the node that runs it"
    assert out.count(line) == (1 if said else 0), out
