"""How aegis-mcp starts Python processes of its own (MCP server, pool runner, netns capture).

`python -m pkg.mod` puts the working directory first on `sys.path`: run in an untrusted
checkout, a `contextlib.py` there would run before a line of ours (as root, for the netns
capture). Every command built here has an import path that never starts with the working
directory:
- user-side processes (the MCP server, the pool runner) get `-P`: no working directory on the
  path, but the user's own PYTHONPATH and site-packages still apply, as for any program of
  theirs (a `pip install --user` aegis-mcp keeps working);
- root-side processes get `-I` (isolated: no working directory, no PYTHON* variables, no user
  site-packages), and their callers start them from `/` with `root_env()`. When this package
  itself lives in root's user site-packages, `-I` would not find it: `-E -P` then (root's own
  site directory is root's, not the user's).
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _in_user_site() -> bool:
    user_site = site.getusersitepackages() if site.ENABLE_USER_SITE is not None else ""
    return bool(user_site) and _PACKAGE_DIR.is_relative_to(Path(user_site).resolve())


def python_command(module: str, *args: str, root_side: bool = False) -> list[str]:
    """`[python, <flags>, -m, module, *args]` with a safe import path (see the module doc)."""
    flags = ["-P"]
    if root_side:
        flags = ["-E", "-P"] if _in_user_site() else ["-I"]
    return [sys.executable, *flags, "-m", module, *args]


ROOT_ENV_KEEP = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "AEGIS_DEBUG", "AEGIS_NETMON_MAX_BYTES",
                 "AEGIS_NETMON_INTERVAL", "AEGIS_NETNS_STATE_DIR", "AEGIS_NETNS_TOTALS_INTERVAL")


def root_env() -> dict[str, str]:
    """The scrubbed environment of a root-side helper: a fixed PATH and only what aegis-mcp
    itself reads; nothing the caller's environment could use to steer it (PYTHON*, LD_*)."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    env.update({k: os.environ[k] for k in ROOT_ENV_KEEP if k in os.environ})
    return env
