"""Agent profiles from the user's TOML config, and the stop they ask for."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aegis_mcp import procs
from aegis_mcp.errors import AegisError
from aegis_mcp.profiles.profile import BUILTIN_PROFILES, load_config

# Exits 0 on its second SIGINT, as Aider does ("^C again to exit"); SIGTERM kills it.
TWICE = (
    "import signal, sys, time\n"
    "seen = []\n"
    "def on_int(*_):\n"
    "    seen.append(1)\n"
    "    if len(seen) == 2: sys.exit(0)\n"
    "signal.signal(signal.SIGINT, on_int)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def stop(interrupts: int, grace: float) -> int:
    proc = subprocess.Popen([sys.executable, "-c", TWICE], start_new_session=True,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    procs.stop_tree(proc.pid, lambda: proc.poll() is None,
                       lambda t: time.sleep(min(t, 0.02)), grace=grace, interrupts=interrupts)
    return proc.wait(5)


def test_a_second_interrupt_lets_an_agent_exit_on_its_own() -> None:
    assert stop(interrupts=2, grace=30) == 0  # its own clean exit, no SIGTERM
    assert BUILTIN_PROFILES["aider"].interrupts == 2


def test_config_overrides_a_builtin_and_adds_an_agent(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[agents.aider]\ninterrupts = 1\n'
                    '[agents.mine]\ncommand = ["my-agent", "--tui"]\nresume_flags = "--resume"\n')
    config = load_config(path)
    assert config.profiles["aider"].interrupts == 1
    assert config.profiles["aider"].permission_flags == ("--yes-always",)  # the rest is kept
    assert config.profiles["mine"].command == ("my-agent", "--tui")
    assert config.profiles["mine"].resume_flags == ("--resume",)


@pytest.mark.parametrize(("body", "message"), [
    ('[agents.aider]\ninterrupts = 0\n', "interrupts must be a number from 1 to 5"),
    ('[agents.aider]\ninterrupts = "2"\n', "interrupts must be a number from 1 to 5"),
    ('[agents.aider]\nstatic_binary = "yes"\n', "static_binary must be true or false"),
    ('[agents.aider]\nnot_a_key = 1\n', "unknown key 'not_a_key'"),
    ('[agents.new]\nresume_flags = ["-r"]\n', "needs command"),
    ('[agents.new]\ncommand = ["x"]\nprompt = "stdin"\n', "prompt must be"),
    ('[agents\n', "cannot read config"),
    ('[agents.new]\ncommand = ["x"]\ninjection = "config-env"\n', "needs config_env"),
    ('[agents.opencode]\nconfig_env = "A-B"\n', "needs config_env"),
    ('[agents.opencode]\nmcp_entry = "yaml"\n', "mcp_entry must be one of stdio, opencode, amp"),
    ('[agents.amp]\nmcp_config_last_wins = "yes"\n', "mcp_config_last_wins must be true or"),
    ('[agents.amp]\nmcp_check = ["doctor"]\n', "mcp_check must begin with one of its subc"),
    ('[agents.claude]\nmcp_config_flag = ["--mcp-config"]\n', "must have a word with {file}"),
    ('[agents.new]\ncommand = ["x"]\ninjection = "env"\n', "injection must be one of"),
])
def test_bad_config_is_one_clear_error(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(body)
    with pytest.raises(AegisError, match=message):
        load_config(path)


def test_one_interrupt_leaves_such_an_agent_to_sigterm() -> None:
    assert stop(interrupts=1, grace=1) == -signal.SIGTERM


def test_allow_tools_flags_are_one_word_each() -> None:
    # given apart from its value, a variadic option (`--allowedTools a b`) would take the
    # user's prompt as one more tool name
    for profile in BUILTIN_PROFILES.values():
        for flag in profile.allow_tools_flags:
            assert flag.startswith("--") and "=" in flag and "{server}" in flag, profile.name
    assert BUILTIN_PROFILES["claude"].allow_tools_flags


def test_profiles_say_what_each_agent_waits_for(aegis_env: dict[str, str]) -> None:
    import json
    import subprocess

    from tests.support.host import aegis_bin

    out = subprocess.run([aegis_bin(), "profiles", "--json"], env=aegis_env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    for name in ("claude", "codex", "gemini"):  # measured; the others say so
        assert rows[name]["mcp_readiness"], name
    assert "2.1.331" in rows["claude"]["mcp_readiness"]
    # the first waiting version, bisected: the supervisor warns below it (version.py)
    assert rows["claude"]["mcp_waits_since"] == "2.1.284"
    assert rows["codex"]["mcp_waits_since"] == ""
    assert rows["codex"]["resume_session"] == ["resume", "{session}"]
    table = subprocess.run([aegis_bin(), "profiles"], env={**aegis_env, "COLUMNS": "250"},
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "not measured" in table.stdout
    assert "--resume {session}" in table.stdout
    assert "waits since" in table.stdout


def test_profiles_say_how_injection_resume_and_headless_work(aegis_env: dict[str, str]) -> None:
    import json
    import subprocess

    from tests.support.host import aegis_bin

    out = subprocess.run([aegis_bin(), "profiles", "--json"], env=aegis_env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    how = {r["name"]: r["how"] for r in json.loads(out.stdout)}
    verified = {r["name"]: r["verified"] for r in json.loads(out.stdout)}
    assert how["opencode"]["injection"] == "config-env: $OPENCODE_CONFIG_CONTENT (key 'mcp')"
    assert how["kilo"]["injection"] == "config-env: $KILO_CONFIG_CONTENT (key 'mcp')"
    assert how["claude"]["injection"] == "mcp-config: --mcp-config {file}"
    assert how["opencode"]["resume"] == ("--session {session} (when you name it: --session -s); "
                                         "else --continue")
    assert how["codex"]["resume"].startswith("resume {session} (read from its open files)")
    assert how["opencode"]["headless"] == "run --format json -- {prompt}"
    assert how["aider"]["resume"] == "latest: --restore-chat-history"
    assert how["qwen"]["injection"] == "mcp-config: --mcp-config {file}"
    assert how["qwen"]["resume"] == ("--resume {session} (named at start: --session-id); "
                                     "else --continue")
    assert how["qwen"]["headless"] == "--prompt={prompt} --output-format stream-json"
    # every built-in CLI this project runs end to end says what was checked, on which version
    for name in ("claude", "codex", "gemini", "qwen", "opencode", "kilo", "copilot"):
        assert {v.split(":")[0] for v in verified[name]} == {"injection", "resume", "headless"}
    # Amp's model turns run on its service: what runs offline is its MCP side
    assert verified["amp"] == ["injection: 0.0.1790142911-g7618fb"]
    assert how["copilot"]["injection"] == "mcp-config: --additional-mcp-config @{file}"
    assert how["copilot"]["resume"] == ("--resume={session} (named at start: --session-id); "
                                        "else --continue")
    assert how["amp"]["resume"] == "latest: threads continue --last"
    assert verified["cursor"] == []
    table = subprocess.run([aegis_bin(), "profiles"], env={**aegis_env, "COLUMNS": "400"},
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "OPENCODE_CONFIG_CONTENT" in table.stdout, table.stderr
    assert "verified with the real CLI" in table.stdout and "headless: 1.18.33" in table.stdout
