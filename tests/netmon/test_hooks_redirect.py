"""MCP config injection through the hooks: read-only opens of a source path see its overlay
(AEGIS_MCP_REDIRECT), writes go to the real file, stat keeps working, and no process without
the variable sees anything but the real file."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.support.snippets.harness import LIB, compile_snippet, hooked_env, plain_env, run

pytestmark = pytest.mark.skipif(not Path(LIB).exists(), reason=f"{LIB} is not built")

ORIGINAL = {"mcpServers": {"project-server": {"command": "true"}}}
OVERLAY = {"mcpServers": {"project-server": {"command": "true"},
                          "aegis-mcp": {"command": "aegis-mcp", "args": ["--mcp-server"]}}}


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / ".mcp.json").write_text(json.dumps(ORIGINAL))
    overlay = tmp_path / "run" / "overlay.json"
    overlay.parent.mkdir()
    overlay.write_text(json.dumps(OVERLAY, indent=2))
    env = hooked_env(None, AEGIS_MCP_REDIRECT=f"{proj / '.mcp.json'}\t{overlay}\n")
    return proj, overlay, env


def servers(out: str) -> list[str]:
    return sorted(json.loads(out)["mcpServers"])


def test_python_reads_the_overlay(project: tuple[Path, Path, dict[str, str]]) -> None:
    proj, _, env = project
    code = "import json; print(json.dumps(json.load(open('.mcp.json'))))"
    out = run([sys.executable, "-c", code], env, cwd=proj)
    assert servers(out.stdout) == ["aegis-mcp", "project-server"], out.stderr
    plain = run([sys.executable, "-c", code], plain_env(), cwd=proj)
    assert servers(plain.stdout) == ["project-server"]


@pytest.mark.skipif(not shutil.which("node"), reason="node is not installed")
def test_node_reads_the_overlay(project: tuple[Path, Path, dict[str, str]]) -> None:
    proj, _, env = project
    code = ("const fs = require('fs');"
            "console.log(fs.readFileSync('.mcp.json', 'utf8').replace(/\\s/g, ''));"
            "fs.promises.readFile(process.cwd() + '/.mcp.json', 'utf8')"
            ".then(t => console.log(t.replace(/\\s/g, '')));")
    out = run(["node", "-e", code], env, cwd=proj)
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stderr
    assert [servers(line) for line in lines] == [["aegis-mcp", "project-server"]] * 2


def test_cat_outside_sees_the_file_unchanged(project: tuple[Path, Path, dict[str, str]]) -> None:
    proj, _, env = project
    assert servers(run(["cat", ".mcp.json"], env, cwd=proj).stdout) == [
        "aegis-mcp", "project-server"]
    assert json.loads(run(["cat", ".mcp.json"], plain_env(), cwd=proj).stdout) == ORIGINAL
    # the library alone (no AEGIS_MCP_REDIRECT) redirects nothing
    alone = hooked_env(None)
    assert json.loads(run(["cat", ".mcp.json"], alone, cwd=proj).stdout) == ORIGINAL
    assert json.loads((proj / ".mcp.json").read_text()) == ORIGINAL


def test_writes_go_to_the_real_file(project: tuple[Path, Path, dict[str, str]]) -> None:
    proj, overlay, env = project
    before = overlay.read_text()
    code = ("import json\n"
            "with open('.mcp.json', 'r+') as f: f.read(); f.seek(0); f.truncate(); "
            "f.write(json.dumps({'mcpServers': {'new': {}}}))\n"
            "with open('.mcp.json', 'a') as f: f.write(' ')\n")
    out = run([sys.executable, "-c", code], env, cwd=proj)
    assert out.returncode == 0, out.stderr
    assert json.loads((proj / ".mcp.json").read_text()) == {"mcpServers": {"new": {}}}
    assert overlay.read_text() == before


def test_stat_sees_the_real_file_when_it_exists(
        project: tuple[Path, Path, dict[str, str]]) -> None:
    proj, overlay, env = project
    code = "import os; print(os.stat('.mcp.json').st_size, os.path.exists('.mcp.json'))"
    out = run([sys.executable, "-c", code], env, cwd=proj)
    assert out.stdout.split() == [str((proj / ".mcp.json").stat().st_size), "True"]
    assert (proj / ".mcp.json").stat().st_size != overlay.stat().st_size


def test_missing_source_still_gets_the_overlay(
        project: tuple[Path, Path, dict[str, str]]) -> None:
    proj, overlay, env = project
    (proj / ".mcp.json").unlink()
    code = ("import json, os; print(os.path.exists('.mcp.json'), os.stat('.mcp.json').st_size,"
            " os.access('.mcp.json', os.R_OK), sorted(json.load(open('.mcp.json'))['mcpServers']))")
    out = run([sys.executable, "-c", code], env, cwd=proj)
    assert out.stdout.strip() == (f"True {overlay.stat().st_size} True "
                                  "['aegis-mcp', 'project-server']"), out.stderr
    if shutil.which("node"):
        js = "const fs=require('fs'); console.log(fs.existsSync('.mcp.json'))"
        assert run(["node", "-e", js], env, cwd=proj).stdout.strip() == "true"
    assert not (proj / ".mcp.json").exists()


def test_path_spellings(project: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    proj, _, env = project
    (proj / "sub").mkdir()
    link = tmp_path / "link-to-proj"
    link.symlink_to(proj)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / ".mcp.json").write_text(json.dumps(ORIGINAL))
    code = ("import json, os, sys\n"
            "def names(fd): return sorted(json.loads(os.read(fd, 65536))['mcpServers'])\n"
            "print(names(os.open(sys.argv[1] + '/.mcp.json', os.O_RDONLY)))\n"
            "print(names(os.open('sub/../.mcp.json', os.O_RDONLY)))\n"
            "d = os.open('sub', os.O_RDONLY)\n"
            "print(names(os.open('../.mcp.json', os.O_RDONLY, dir_fd=d)))\n"
            "print(names(os.open(sys.argv[2] + '/.mcp.json', os.O_RDONLY)))\n"
            "print(names(os.open(sys.argv[3] + '/.mcp.json', os.O_RDONLY)))\n")
    out = run([sys.executable, "-c", code, str(proj), str(link), str(tmp_path / "other")], env,
              cwd=proj)
    both, only = "['aegis-mcp', 'project-server']", "['project-server']"
    assert out.stdout.splitlines() == [both, both, both, both, only], out.stderr


def test_stdio_fopen_and_freopen(project: tuple[Path, Path, dict[str, str]],
                                 tmp_path: Path) -> None:
    proj, overlay, env = project
    exe = compile_snippet("fopen_read.c", tmp_path)
    out = run([str(exe), ".mcp.json"], env, cwd=proj)
    assert out.stdout == overlay.read_text() * 2


def test_malformed_redirect_variable_is_ignored(
        project: tuple[Path, Path, dict[str, str]]) -> None:
    proj, overlay, _ = project
    for value in ["", "\n\n", "relative\t/abs", f"{proj / '.mcp.json'}", "\t\t\t",
                  f"{proj / '.mcp.json'}\trelative/overlay"]:
        env = hooked_env(None, AEGIS_MCP_REDIRECT=value)
        assert json.loads(run(["cat", ".mcp.json"], env, cwd=proj).stdout) == ORIGINAL, value
    # several entries: the second one applies
    many = f"/nonexistent/a.json\t/x\n{proj / '.mcp.json'}\t{overlay}"
    env = hooked_env(None, AEGIS_MCP_REDIRECT=many)
    assert servers(run(["cat", ".mcp.json"], env, cwd=proj).stdout) == [
        "aegis-mcp", "project-server"]
