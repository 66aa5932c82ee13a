"""Shared fixtures: every test gets its own runtime, state and config directories so that
tests never see each other's supervisors, pools or profiles."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def aegis_bin() -> str:
    """The installed `aegis-mcp` of the interpreter running the tests."""
    exe = Path(sys.executable).parent / "aegis-mcp"
    return str(exe) if exe.exists() else shutil.which("aegis-mcp") or "aegis-mcp"


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
