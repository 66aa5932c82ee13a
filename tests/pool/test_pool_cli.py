"""`aegis-mcp agents ...` as a user runs it: the installed command, tables and --json."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.host import aegis_bin
from tests.support.poolkit import cleanup_pool, pool_config

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
