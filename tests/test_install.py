"""The README's install commands, run for real on a copy of this source tree: pipx and uv into
temporary tool directories, and the venv line without a C compiler, which installs all but
the hooks library and then says, in one line, what is missing and what to run.

They build the package and install its dependencies with no network (a namespace of their
own, as root): from the wheels scripts/test downloads beforehand ($AEGIS_TEST_WHEELS), so each
takes some seconds; everything installed is in the test's directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aegis_mcp import __version__
from tests.support.host import offline
from tests.support.paths import REPO

README = (REPO / "README.md").read_text()
QUICK_START = README[README.index("## Quick start"):README.index("\n## ", README.index(
    "## Quick start") + 1)]
PIPX = "pipx install ."
UV = "uv tool install ."
VENV = "python3 -m venv ~/.venvs/aegis-mcp && ~/.venvs/aegis-mcp/bin/pip install ."
INSTALL_TIMEOUT = 300  # a busy machine, and a registry that may be slow: generous

WHEELS = os.environ.get("AEGIS_TEST_WHEELS", "")

pytestmark = [pytest.mark.timeout(2 * INSTALL_TIMEOUT),
              pytest.mark.skipif(not os.path.isdir(WHEELS), reason="AEGIS_TEST_WHEELS (the "
                                 "installs' dependencies) is not set; scripts/test makes it")]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """What the build reads, copied: the install writes its build directory next to the
    sources, and must not race other tests or leave anything in the checkout."""
    dest = tmp_path / "aegis-mcp"
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, dest / name)
    shutil.copytree(REPO / "src", dest / "src", ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info", "*.so"))
    return dest


@pytest.fixture
def install_env(tmp_path: Path, aegis_env: dict[str, str]) -> dict[str, str]:
    """A home of the test's own (where `~` and the tools' defaults point), with the user's
    download caches kept so that a run does not fetch every dependency again."""
    home = tmp_path / "home"
    home.mkdir()
    # pip (the venv's, pipx's pip backend) and uv (uv's own, pipx's uv backend) install from
    # the wheelhouse alone; uv takes "no index" from a config file only
    uv_config = tmp_path / "uv.toml"
    uv_config.write_text(f"no-index = true\nfind-links = [{json.dumps(WHEELS)}]\n"
                         'python-downloads = "never"\n')
    return {**aegis_env, "HOME": str(home), "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS, "UV_CONFIG_FILE": str(uv_config)}


def install(command: str, cwd: Path, env: dict[str, str]) -> None:
    """Run one install line of the README as a shell would."""
    assert command in QUICK_START, f"the README's quick start no longer says {command!r}"
    out = subprocess.run(offline(["bash", "-c", command]), cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    assert out.returncode == 0, f"{command}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"


def run(exe: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


def library_of(venv: Path) -> Path:
    """The hooks library as the installed package looks for it."""
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "from aegis_mcp.paths import hooks_library; print(hooks_library())"],
                         capture_output=True, text=True, timeout=60, check=True)
    return Path(out.stdout.strip())


def assert_preload_says_how_to_fix(exe: Path, env: dict[str, str], again: str) -> None:
    """`--netmon=preload` without the library: one line with the fix, a non-zero exit."""
    out = run(exe, "--netmon=preload", "--", "/bin/true", env=env)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    said = [line for line in out.stderr.splitlines() if "hooks library" in line]
    assert len(said) == 1 and said[0].startswith("aegis-mcp: --netmon=preload: the hooks library")
    assert f"install gcc, then run `{again}`" in said[0], out.stderr


def test_pipx_install_as_the_readme_says(source: Path, install_env: dict[str, str],
                                         tmp_path: Path) -> None:
    env = {**install_env, "PIPX_HOME": str(tmp_path / "pipx"),
           "PIPX_BIN_DIR": str(tmp_path / "bin"), "PIPX_MAN_DIR": str(tmp_path / "man")}
    install(PIPX, source, env)
    exe = tmp_path / "bin" / "aegis-mcp"
    assert run(exe, "--version", env=env).stdout.strip() == f"aegis-mcp {__version__}"
    library = library_of(tmp_path / "pipx" / "venvs" / "aegis-mcp")
    assert library.is_file()  # gcc is here: it was built
    library.unlink()  # as a pipx install without a compiler leaves it
    assert_preload_says_how_to_fix(exe, env, "pipx install --force .")


def test_uv_tool_install_as_the_readme_says(source: Path, install_env: dict[str, str],
                                            tmp_path: Path) -> None:
    env = {**install_env, "UV_TOOL_DIR": str(tmp_path / "uv"),
           "UV_TOOL_BIN_DIR": str(tmp_path / "bin")}
    install(UV, source, env)
    exe = tmp_path / "bin" / "aegis-mcp"
    assert run(exe, "--version", env=env).stdout.strip() == f"aegis-mcp {__version__}"
    library = library_of(tmp_path / "uv" / "aegis-mcp")
    assert library.is_file()
    library.unlink()
    assert_preload_says_how_to_fix(exe, env, "uv tool install --reinstall .")


def test_without_a_c_compiler_the_venv_install_works_and_says_what_is_missing(
        source: Path, install_env: dict[str, str]) -> None:
    # The compiler setuptools would run, named but not there: what a machine without gcc has.
    env = {**install_env, "CC": "/nonexistent/gcc"}
    install(VENV, source, env)
    venv = Path(install_env["HOME"]) / ".venvs" / "aegis-mcp"
    exe = venv / "bin" / "aegis-mcp"
    assert not library_of(venv).exists()
    assert run(exe, "--version", env=env).stdout.strip() == f"aegis-mcp {__version__}"
    assert_preload_says_how_to_fix(exe, env, f"{venv}/bin/pip install .")

    # A generic command gets aegis-mcp's MCP server through that library: it starts without
    # it, says so once, and no LD_PRELOAD of a missing file makes ld.so complain in it.
    out = run(exe, "--", "/bin/sh", "-c", 'echo "preload=[$LD_PRELOAD]"', env=env)
    assert out.returncode == 0, out.stderr
    assert "preload=[]" in out.stdout
    lines = [line for line in out.stderr.splitlines() if "hooks library" in line]
    assert len(lines) == 1 and re.search(r"sh starts without aegis-mcp's MCP server", lines[0])
    assert "ld.so" not in out.stderr and "cannot be preloaded" not in out.stderr
