"""What the machine running the tests provides: the installed `aegis-mcp`, the real agent CLIs
that scripts/test installs, root, and a network of loopback only. Importable helpers live here
rather than in conftest.py, which pytest imports as a plugin, not as a module to import from."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def real_cli(var: str, what: str) -> tuple[str, pytest.MarkDecorator]:
    """The path of a real agent CLI that scripts/test installs (in env `var`), and the mark that
    skips a test module when it is not there (pytest run by hand)."""
    path = os.environ.get(var, "")
    return path, pytest.mark.skipif(not path or not os.access(path, os.X_OK),
                                    reason=f"{var} ({what}) is not set; scripts/test installs it")


NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


def aegis_bin() -> str:
    """The installed `aegis-mcp` of the interpreter running the tests."""
    exe = Path(sys.executable).parent / "aegis-mcp"
    return str(exe) if exe.exists() else shutil.which("aegis-mcp") or "aegis-mcp"


def offline(command: list[str]) -> list[str]:
    """`command` in a network namespace of its own with only loopback, when we are root: for
    real agent CLIs that reach for the network on their own (update checks, telemetry)."""
    if os.geteuid() != 0:
        return command
    import shlex

    return ["unshare", "--net", "sh", "-c", f"ip link set lo up; exec {shlex.join(command)}"]
