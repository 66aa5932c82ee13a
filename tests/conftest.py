"""Shared fixtures: every test gets its own runtime, state and config directories so that
tests never see each other's supervisors, pools or profiles."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.private_net import PrivateLoopback
from tests.support.supervisor_helpers import FAKE_AGENT, FakeAgentWorld, fake_profile, fake_world

# A shell without job control starts its background commands with SIGINT and SIGQUIT ignored,
# and an ignored signal stays ignored through exec: a suite run that way would hand every
# process it spawns a Ctrl-C that does nothing. The tests press Ctrl-C as a user at a terminal
# does, so they start from a terminal's defaults.
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@pytest.fixture
def aegis_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Environment for a test's aegis-mcp processes, also applied to this process."""
    dirs = {
        "AEGIS_RUNTIME_DIR": tmp_path / "run",
        "AEGIS_STATE_DIR": tmp_path / "state",
        "AEGIS_CONFIG": tmp_path / "config.toml",
    }
    for key, value in dirs.items():
        monkeypatch.setenv(key, str(value))
    for key in ("AEGIS_CONTROL", "AEGIS_SUPERVISOR_PID", "CLAUDECODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    yield dict(os.environ)


@pytest.fixture(scope="session")
def throwaway_user() -> Iterator[pwd.struct_passwd]:
    """A user (with an extra group, and a fresh home it owns) for privilege-drop tests; needs
    root, removed at the end."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user (CI runs as root)")
    name = f"aegis{os.getpid() % 100000}"
    home = Path(tempfile.mkdtemp(prefix="aegis-home-"))
    os.chmod(home, 0o755)
    subprocess.run(["groupadd", f"{name}x"], check=True)
    subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", "-G", f"{name}x", name],
                   check=True)
    user = pwd.getpwnam(name)
    os.chown(home, user.pw_uid, user.pw_gid)
    try:
        yield user
    finally:
        subprocess.run(["userdel", name], check=False)
        subprocess.run(["groupdel", f"{name}x"], check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def project(throwaway_user: pwd.struct_passwd) -> Iterator[Path]:
    """A project directory the throwaway user owns, for a real agent CLI run as that user."""
    path = Path(tempfile.mkdtemp(prefix="aegis-project-"))
    os.chmod(path, 0o755)
    os.chown(path, throwaway_user.pw_uid, throwaway_user.pw_gid)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def net() -> Iterator[PrivateLoopback]:
    """A loopback-only network namespace of the test's own, for real agent CLIs."""
    with PrivateLoopback() as private:
        yield private


@pytest.fixture
def world(tmp_path: Path, aegis_env: dict[str, str]) -> FakeAgentWorld:
    """The scripted fake agent's world under tmp_path: its profile in the test's config, its
    state directory, and the environment to start `aegis-mcp` with."""
    return fake_world(tmp_path, aegis_env)


@pytest.fixture
def sudo_world(throwaway_user: pwd.struct_passwd, aegis_env: dict[str, str]) -> Iterator[
        FakeAgentWorld]:
    """A world the dropped user can reach: everything under a 0755 directory of its own."""
    root = Path(tempfile.mkdtemp(prefix="aegis-priv-"))
    os.chmod(root, 0o755)
    script = root / "fake_agent.py"
    shutil.copy(FAKE_AGENT, script)
    os.chmod(script, 0o755)
    state = root / "state"
    state.mkdir()
    os.chown(state, throwaway_user.pw_uid, throwaway_user.pw_gid)
    config = root / "config.toml"
    config.write_text(fake_profile(python=sys.executable, script=script))
    env = {**aegis_env, "AEGIS_CONFIG": str(config), "AEGIS_RUNTIME_DIR": str(root / "run"),
           "FAKE_AGENT_STATE": str(state), "SUDO_UID": str(throwaway_user.pw_uid),
           "SUDO_GID": str(throwaway_user.pw_gid), "SUDO_USER": throwaway_user.pw_name,
           "HOME": "/root", "USER": "root"}
    try:
        yield FakeAgentWorld(root, state, env)
    finally:
        shutil.rmtree(root, ignore_errors=True)
