"""`aegis-mcp agents ...` as a user runs it: the installed command, tables and --json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.host import aegis_bin
from tests.support.poolkit import FAKE, cleanup_pool, pool_config

ACTIONS = ("spawn", "list", "status", "await", "stop", "stats", "locks", "logs")


@pytest.fixture
def env(aegis_env: dict[str, str]) -> Iterator[dict[str, str]]:
    Path(aegis_env["AEGIS_CONFIG"]).write_text(pool_config(max_agents=2))
    with cleanup_pool():
        yield {**aegis_env, "COLUMNS": "160"}


def agents(env: dict[str, str], *args: str, cwd: Path | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([aegis_bin(), "agents", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def as_json(env: dict[str, str], *args: str) -> object:
    proc = agents(env, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_every_action_has_help_a_newcomer_understands(env: dict[str, str]) -> None:
    top = agents(env, "--help")
    assert top.returncode == 0
    for action in ACTIONS:
        assert action in top.stdout
    for action in ACTIONS:
        proc = agents(env, action, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "--json" in proc.stdout and len(proc.stdout) > 200, action


def test_spawn_list_status_await_logs_stats(env: dict[str, str], tmp_path: Path) -> None:
    spawned = agents(env, "spawn", "turns=2", "sleep=0.2", "result=cli-ok", cwd=tmp_path)
    assert spawned.returncode == 0, spawned.stderr
    agent_id, state = spawned.stdout.split()[:2]
    assert len(agent_id) == 8 and state in ("starting", "running", "queued")

    table = agents(env, "list")
    assert agent_id in table.stdout and "claude" in table.stdout
    status = agents(env, "status", agent_id[:4])
    assert "working_directory" in status.stdout and str(tmp_path) in status.stdout

    done = agents(env, "await", agent_id, "--timeout", "30")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "completed" in done.stdout and "cli-ok" in done.stdout
    data = as_json(env, "status", agent_id)
    assert isinstance(data, dict)
    assert (data["state"], data["result"], data["num_turns"]) == ("completed", "cli-ok", 2)
    listed = as_json(env, "list")
    assert isinstance(listed, list) and listed[0]["agent_id"] == agent_id

    logs = agents(env, "logs", agent_id)
    assert logs.returncode == 0 and '"type": "result"' in logs.stdout
    last = agents(env, "logs", agent_id, "-n", "1")
    assert last.stdout.count("\n") == 1 and "completed" in last.stdout
    as_lines = as_json(env, "logs", agent_id, "-n", "2")
    assert isinstance(as_lines, dict) and len(as_lines["lines"]) == 2
    assert as_lines["lines"][-1] == last.stdout.rstrip("\n")

    stats = as_json(env, "stats")
    assert isinstance(stats, dict) and (stats["completed"], stats["max_agents"]) == (1, 2)
    assert "completed" in agents(env, "stats").stdout


def test_await_timeout_stop_locks_and_follow(env: dict[str, str], tmp_path: Path) -> None:
    hang = as_json(env, "spawn", "-C", str(tmp_path), "hang")
    assert isinstance(hang, dict)
    agent_id = hang["agent_id"]
    second = agents(env, "spawn", "-C", str(tmp_path), "--max-iterations", "3", "result=next")
    assert "queued" in second.stdout and f"waiting for {agent_id}" in second.stdout

    waited = agents(env, "await", agent_id, "--timeout", "0.3")
    assert waited.returncode == 124 and "keeps running" in waited.stdout
    locks = as_json(env, "locks")
    assert isinstance(locks, list) and locks[0]["path"] == str(tmp_path)
    assert agent_id in agents(env, "locks").stdout

    follower = subprocess.Popen([aegis_bin(), "agents", "logs", "-f", agent_id], env=env,
                                stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    stopped = agents(env, "stop", agent_id)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    out, _ = follower.communicate(timeout=10)  # --follow ends when the agent ends
    assert '"init"' in out and "stopped" in out
    assert follower.returncode == 0

    next_id = second.stdout.split()[0]
    assert agents(env, "await", next_id, "--timeout", "30").returncode == 0
    assert agents(env, "locks").stdout.startswith("no locks")
    assert "already ended" in agents(env, "stop", agent_id).stdout


def test_failed_agent_await_exit_status_and_bad_input(env: dict[str, str],
                                                      tmp_path: Path) -> None:
    failed = agents(env, "spawn", "--wait", "-C", str(tmp_path), "fail")
    assert failed.returncode == 1 and "failed" in failed.stdout
    for args, message in [
        (("status", "nope"), "unknown agent id 'nope'"),
        (("stop", "nope"), "unknown agent id"),
        (("spawn", "-C", str(tmp_path / "missing"), "x"), "no such file or directory"),
        (("spawn", "-t", "nosuch", "x"), "unknown agent 'nosuch'"),
        (("spawn", "--isolation", "worktree", "-C", str(tmp_path), "x"), "git repository"),
    ]:
        proc = agents(env, *args)
        assert proc.returncode != 0
        assert proc.stderr.startswith("aegis-mcp: ") and message in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    for args in (("spawn", "--max-iterations", "0", "x"), ("await", "x", "--timeout", "-1")):
        proc = agents(env, *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_the_runner_never_imports_modules_planted_in_the_project(env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    """An untrusted checkout shadows standard modules the runner imports at start; spawned
    from there (the runner starts in the spawner's directory), the runner must not run them."""
    project = tmp_path / "project"
    project.mkdir()
    marker = tmp_path / "planted-module-ran"
    for name in ("contextlib", "json", "signal"):
        (project / f"{name}.py").write_text(
            f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n")
    done = agents(env, "spawn", "--wait", "result=still-works", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "completed" in done.stdout and "still-works" in done.stdout
    assert not marker.exists(), marker.read_text()


def bad_directories(tmp_path: Path) -> list[tuple[str, str]]:
    """Working directories that are no place to work, and the words their error says."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return [
        ("/" + "a" * 4094, "file name too long"),  # 4,095 characters: one name too long
        # 4,096 characters of short names: the whole path is too long (PATH_MAX counts the NUL)
        (str(tmp_path / "/".join(["b" * 200] * 21))[:4096], "file name too long"),
        (str(tmp_path / "missing"), "no such file or directory"),
        (str(a_file), "not a directory"),
        (str(a_file / "below"), "not a directory"),
    ]


def test_a_bad_working_directory_is_one_line_and_nothing_is_stored(env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    for path, words in bad_directories(tmp_path):
        proc = agents(env, "spawn", "-C", path, "x")
        assert proc.returncode == 2, (path[:80], proc.stderr)
        assert proc.stderr.startswith("aegis-mcp: working directory ") and words in proc.stderr
        assert proc.stderr.count("\n") == 1 and len(proc.stderr) < 200, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert as_json(env, "list") == []
    logs = Path(env["AEGIS_STATE_DIR"]) / "pool" / "logs"
    assert not logs.exists() or not list(logs.iterdir())
    # A spawn from a deleted current directory, without -C: the same kind of line.
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = subprocess.run(["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "$0" agents spawn x',
                           aegis_bin()], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "the current directory no longer exists" in proc.stderr
    # And the pool still works.
    done = agents(env, "spawn", "--wait", "-C", str(tmp_path), "result=fine")
    assert done.returncode == 0 and "fine" in done.stdout, done.stderr


def test_piped_tables_are_never_cut(env: dict[str, str], tmp_path: Path) -> None:
    """Piped, Rich would lay tables out in 80 columns (or $COLUMNS) and end long values in "…":
    every value must come whole, on its line, whatever the width says."""
    deep = tmp_path / ("d" * 70) / ("e" * 70) / ("f" * 70)
    deep.mkdir(parents=True)
    other = tmp_path / "other"
    other.mkdir()
    task = "hang " + " ".join(f"word{i:03d}" for i in range(50))
    answer = "answer-" + "x" * 150
    running = as_json(env, "spawn", "-C", str(deep), task)
    assert isinstance(running, dict)
    agent_id = running["agent_id"]
    queued = agents(env, "spawn", "-C", str(deep), "result=later").stdout.split()[0]
    done = agents(env, "spawn", "--wait", "-C", str(other), f"result={answer}")
    finished = done.stdout.split()[0]
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"

    for columns in ("80", "40", None):
        piped = {k: v for k, v in env.items() if k != "COLUMNS"}
        if columns:
            piped["COLUMNS"] = columns
        outputs = {args: agents(piped, *args) for args in [
            ("list",), ("status", agent_id), ("status", finished), ("locks",), ("stats",),
            ("await", finished)]}
        for args, proc in outputs.items():
            assert proc.returncode == 0, (args, proc.stderr)
            assert "…" not in proc.stdout and "..." not in proc.stdout, (args, proc.stdout)
            assert all(line == line.rstrip() for line in proc.stdout.splitlines()), args
        lines = outputs[("list",)].stdout.splitlines()
        row = next(line for line in lines if line.lstrip().startswith(agent_id))
        assert task in row and "system (init)" in row
        row = next(line for line in lines if line.lstrip().startswith(finished))
        assert f"result (success): {answer}" in row
        row = next(line for line in lines if line.lstrip().startswith(queued))
        assert f"queue #1, waits for {agent_id}" in row

        status = outputs[("status", agent_id)].stdout.splitlines()
        assert any(re.fullmatch(rf" working_directory +{re.escape(str(deep))}", line)
                   for line in status)
        assert any(re.fullmatch(rf" description +{re.escape(task)}", line) for line in status)
        assert any(re.fullmatch(rf" created_at +{iso}", line) for line in status)
        for args in (("status", finished), ("await", finished)):
            assert any(re.fullmatch(rf" result +{answer}", line)
                       for line in outputs[args].stdout.splitlines()), outputs[args].stdout

        locks = outputs[("locks",)].stdout
        assert re.search(rf"{re.escape(str(deep))} +. {agent_id} +. tree +. {iso} +. {queued}",
                         locks), locks
        stats = outputs[("stats",)].stdout
        for key in ("max_agents", "active", "queued", "running", "completed", "failed",
                    "stopped", "lost"):
            assert key in stats


def test_an_agent_program_that_cannot_run_is_named_for_what_it_is(
        env: dict[str, str], tmp_path: Path) -> None:
    """At the spawn (one line, nothing stored) and, when its x bit goes while it waits in the
    queue, in the reason it failed with."""
    no_x = tmp_path / "my-agent"
    no_x.write_text("#!/bin/sh\necho hi\n")  # mode 0644
    a_dir = tmp_path / "agent-dir"
    a_dir.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "lazy-agent-xyz").write_text("#!/bin/sh\necho hi\n")
    later = tmp_path / "later-agent"
    later.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    later.chmod(0o755)
    config = Path(env["AEGIS_CONFIG"])
    config.write_text(config.read_text() + "".join(
        f'\n[agents.{name}]\ncommand = ["{command}"]\nheadless_args = ["-p", "{{prompt}}"]\n'
        for name, command in [("noexec", no_x), ("isdir", a_dir), ("gone", tmp_path / "gone"),
                              ("onpath", "lazy-agent-xyz"), ("later", later)]))
    on_path = {**env, "PATH": f"{bindir}{os.pathsep}{env['PATH']}"}
    for agent_type, line in [
        ("noexec", f"noexec: {no_x}: not executable (chmod +x it)"),
        ("isdir", f"isdir: {a_dir}: a directory, not a program"),
        ("gone", f"gone: executable not found (looked for {tmp_path / 'gone'})"),
        ("onpath", f"onpath: {bindir}/lazy-agent-xyz is not executable (chmod +x it)"),
    ]:
        proc = agents(on_path, "spawn", "-t", agent_type, "-C", str(tmp_path), "x")
        assert (proc.returncode, proc.stderr) == (1, f"aegis-mcp: {line}\n"), agent_type
    assert as_json(env, "list") == []

    blocker = agents(env, "spawn", "-C", str(tmp_path), "hang").stdout.split()[0]
    waiting = agents(env, "spawn", "-t", "later", "-C", str(tmp_path), "result=never")
    assert "queued" in waiting.stdout
    later.chmod(0o644)
    agents(env, "stop", blocker)
    proc = agents(env, "await", waiting.stdout.split()[0], "--timeout", "30", "--json")
    ended = json.loads(proc.stdout)
    assert (proc.returncode, ended["state"]) == (1, "failed")
    assert ended["reason"] == f"cannot start {later}: not executable (chmod +x it)"
