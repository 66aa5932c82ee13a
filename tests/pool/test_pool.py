"""The agent pool with real runner processes and the fake headless agent: results, queueing,
await, stop of a whole tree, locks, worktrees, limits, and recovery after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aegis_mcp.errors import AegisError
from aegis_mcp.pool.pool import Pool
from tests.support.host import aegis_bin
from tests.support.poolkit import cleanup_pool, git, make_repo, pid_alive, pool_config, read_pids
from tests.support.wait import wait_for


@pytest.fixture
def pool(aegis_env: dict[str, str], tmp_path: Path) -> Iterator[Pool]:
    Path(aegis_env["AEGIS_CONFIG"]).write_text(pool_config())
    with cleanup_pool():
        p = Pool()
        yield p
        p.close()


def configure(aegis_env: dict[str, str], **kwargs: Any) -> Pool:
    Path(aegis_env["AEGIS_CONFIG"]).write_text(pool_config(**kwargs))
    return Pool()


def dirs(tmp_path: Path, n: int) -> list[str]:
    out = []
    for i in range(n):
        d = tmp_path / f"w{i}"
        d.mkdir()
        out.append(str(d))
    return out


def test_spawn_returns_at_once_and_await_gets_the_claude_result(pool: Pool,
                                                                tmp_path: Path) -> None:
    (wd,) = dirs(tmp_path, 1)
    t0 = time.monotonic()
    spawned = pool.spawn("turns=3 sleep=0.3 result=all-good", working_directory=wd)
    assert time.monotonic() - t0 < 1.0
    assert spawned["state"] in ("queued", "starting", "running")
    agent_id = spawned["agent_id"]

    live = wait_for(lambda: (s := pool.status(agent_id))["iterations"] >= 1 and s, 10,
                    "a first turn")
    assert live["state"] == "running" and pid_alive(live["pid"]) and live["runner_pid"]
    assert live["started_at"] and live["ended_at"] is None
    assert any("working, turn 1" in line for line in live["last_output"])
    # The runner carries the mark a supervisor uses to leave pool processes alone.
    runner_env = Path(f"/proc/{live['runner_pid']}/environ").read_bytes().split(b"\0")
    assert f"AEGIS_POOL_RUNNER={agent_id}".encode() in runner_env

    done = pool.await_agent(agent_id, 20)
    assert done["timed_out"] is False
    assert done["state"] == "completed", done
    assert (done["result"], done["num_turns"], done["iterations"]) == ("all-good", 3, 3)
    assert done["total_cost_usd"] == pytest.approx(0.003)
    log = Path(done["log_path"]).read_text()
    init = json.loads(next(line for line in log.splitlines() if '"init"' in line))
    assert done["session_id"] == init["session_id"]
    assert done["exit_code"] == 0 and done["ended_at"] and done["pid"] is None
    assert done["last_event"].startswith("result (success): all-good")


def test_failures_are_recorded_with_exit_code_and_reason(pool: Pool, tmp_path: Path) -> None:
    a, b = dirs(tmp_path, 2)
    failed = pool.await_agent(pool.spawn("fail", working_directory=a)["agent_id"], 20)
    assert failed["state"] == "failed" and failed["exit_code"] == 1
    assert "error_during_execution" in failed["reason"]
    plain = pool.await_agent(pool.spawn("plain exit=3 result=bye", working_directory=b)
                             ["agent_id"], 20)
    assert plain["state"] == "failed" and plain["exit_code"] == 3
    assert plain["reason"] == "exit code 3" and plain["last_output"][-1] == "bye"


def test_spawns_past_the_pool_size_queue_and_start_in_order(aegis_env: dict[str, str],
                                                            tmp_path: Path) -> None:
    pool = configure(aegis_env, max_agents=2)
    with cleanup_pool():
        ids = [pool.spawn("sleep=0.4", working_directory=d)["agent_id"]
               for d in dirs(tmp_path, 5)]
        stats = pool.stats()
        assert stats["max_agents"] == 2 and stats["running"] <= 2 and stats["queued"] >= 3
        queued = [pool.status(i) for i in ids[2:]]
        assert [s["queue_position"] for s in queued] == [1, 2, 3]
        assert all(s["state"] == "queued" for s in queued)
        done = [pool.await_agent(i, 30) for i in ids]
        assert [d["state"] for d in done] == ["completed"] * 5
        spans = [(pool._row(i)["started_at"], pool._row(i)["ended_at"]) for i in ids]
        for start, _ in spans:  # never more than 2 running at once
            assert sum(1 for s, e in spans if s <= start < e) <= 2
        ends = sorted(e for _, e in spans)
        assert spans[2][0] >= ends[0] and spans[4][0] >= ends[2]
        # FIFO: the claims went out in spawn order.
        claims = [pool._row(i)["claimed_at"] for i in ids]
        assert claims == sorted(claims)


def test_concurrent_spawners_never_exceed_the_pool_or_start_twice(aegis_env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    pool = configure(aegis_env, max_agents=2)
    with cleanup_pool():
        script = ("import sys; from aegis_mcp.pool.pool import Pool; p = Pool(); "
                  "[print(p.spawn('sleep=0.2', working_directory=d)['agent_id']) "
                  "for d in sys.argv[1:]]")
        workdirs = dirs(tmp_path, 12)
        procs = [subprocess.Popen([os.sys.executable, "-c", script, *workdirs[i::4]],
                                  stdout=subprocess.PIPE, text=True) for i in range(4)]
        ids = [line for p in procs for line in p.communicate(timeout=30)[0].split()]
        assert len(ids) == 12
        done = [pool.await_agent(i, 60) for i in ids]
        assert all(d["state"] == "completed" for d in done)
        spans = [(pool._row(i)["started_at"], pool._row(i)["ended_at"]) for i in ids]
        for start, _ in spans:
            assert sum(1 for s, e in spans if s <= start < e) <= 2
        for d in done:  # one runner, one start per agent
            assert Path(d["log_path"]).read_text().count("] starting ") == 1


def test_await_wakes_on_the_end_and_a_timeout_leaves_the_agent_running(
        pool: Pool, tmp_path: Path) -> None:
    a, b = dirs(tmp_path, 2)
    agent_id = pool.spawn("sleep=0.5 stamp", working_directory=a)["agent_id"]
    done = pool.await_agent(agent_id, 20)
    woke = time.time()
    ended = float(done["result"].rsplit("t=", 1)[1])
    assert 0 <= woke - ended < 0.5, f"woke {woke - ended:.3f}s after the agent's end"

    hanging = pool.spawn("hang", working_directory=b)["agent_id"]
    wait_for(lambda: pool.status(hanging)["state"] == "running", 10, "running")
    t0 = time.monotonic()
    waited = pool.await_agent(hanging, 0.3)
    assert 0.3 <= time.monotonic() - t0 < 1.5
    assert waited["timed_out"] is True and waited["state"] == "running"
    assert pid_alive(waited["pid"])


def test_stop_takes_down_the_whole_tree_even_processes_ignoring_sigterm(
        pool: Pool, tmp_path: Path) -> None:
    (wd,) = dirs(tmp_path, 1)
    pids_file = tmp_path / "pids"
    agent_id = pool.spawn(f"hang ignore-term grandchild double-fork pids={pids_file}",
                          working_directory=wd)["agent_id"]
    pids = read_pids(pids_file, 3)
    assert all(pid_alive(p) for p in pids)
    t0 = time.monotonic()
    stopped = pool.stop(agent_id)
    assert time.monotonic() - t0 < 5
    assert stopped["state"] == "stopped" and stopped["stopped_now"]
    assert stopped["reason"] == "stopped by request"
    assert stopped["exit_code"] == 128 + signal.SIGKILL
    wait_for(lambda: not any(pid_alive(p) for p in pids), 5, "the tree to be gone")
    assert "SIGKILL" in Path(stopped["log_path"]).read_text()
    again = pool.stop(agent_id)
    assert again["stopped_now"] is False and again["state"] == "stopped"


def test_leftovers_of_a_finished_agent_are_stopped(pool: Pool, tmp_path: Path) -> None:
    (wd,) = dirs(tmp_path, 1)
    pids_file = tmp_path / "pids"
    agent_id = pool.spawn(f"grandchild pids={pids_file}", working_directory=wd)["agent_id"]
    done = pool.await_agent(agent_id, 20)
    assert done["state"] == "completed"
    assert not any(pid_alive(p) for p in read_pids(pids_file, 2))


def test_stop_of_a_queued_agent_takes_it_off_the_queue(aegis_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    pool = configure(aegis_env, max_agents=1)
    with cleanup_pool():
        a, b = dirs(tmp_path, 2)
        first = pool.spawn("hang", working_directory=a)["agent_id"]
        second = pool.spawn("touch=ran", working_directory=b)["agent_id"]
        assert pool.status(second)["state"] == "queued"
        stopped = pool.stop(second)
        assert stopped["state"] == "stopped" and "queued" in stopped["reason"]
        pool.stop(first)
        time.sleep(0.3)
        assert not (Path(b) / "ran").exists()
        assert pool.status(second)["started_at"] is None


def test_overlapping_trees_wait_for_the_lock_in_order(pool: Pool, tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "proj" / "sub").mkdir(parents=True)
    (other,) = dirs(tmp_path, 1)
    holder = pool.spawn("hang", working_directory=str(top / "proj"))["agent_id"]
    child = pool.spawn("sleep=0.3", working_directory=str(top / "proj" / "sub"))["agent_id"]
    parent = pool.spawn("sleep=0.1", working_directory=str(top))["agent_id"]
    free = pool.spawn("sleep=0.1", working_directory=other)["agent_id"]

    assert pool.status(child)["state"] == "queued"
    assert pool.status(child)["waiting_for"] == [holder]
    assert pool.status(parent)["waiting_for"] == [holder, child]
    assert pool.await_agent(free, 20)["state"] == "completed"
    assert pool.status(child)["state"] == "queued"

    locks = {lock["agent_id"]: lock for lock in pool.locks()}
    assert locks[holder]["path"] == str(top / "proj")
    assert locks[holder]["waiting"] == [child, parent]
    assert locks[holder]["since"] and locks[holder]["kind"] == "tree"

    pool.stop(holder)
    assert pool.await_agent(child, 20)["state"] == "completed"
    assert pool.await_agent(parent, 20)["state"] == "completed"
    assert pool._row(parent)["started_at"] >= pool._row(child)["ended_at"]
    assert pool.locks() == []


def test_worktree_isolation_runs_at_once_in_its_own_branch(aegis_env: dict[str, str],
                                                           tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    pool = configure(aegis_env)
    with cleanup_pool():
        holder = pool.spawn("hang", working_directory=str(repo), isolation="lock")["agent_id"]
        wait_for(lambda: pool.status(holder)["state"] == "running", 10, "holder running")
        iso = pool.spawn(f"touch=made.txt env={tmp_path / 'env.json'}",
                         working_directory=str(repo / "sub"), isolation="worktree")
        assert iso["state"] != "queued" and iso["isolation"] == "worktree"
        done = pool.await_agent(iso["agent_id"], 30)
        assert done["state"] == "completed", done
        worktree = Path(done["worktree_path"])
        assert done["branch"] == f"aegis/{done['agent_id']}"
        assert done["cwd"] == str(worktree / "sub")
        assert (worktree / "sub" / "made.txt").exists()
        assert not (repo / "sub" / "made.txt").exists()
        assert (worktree / ".env").read_text() == "SECRET=1\n"
        assert done["branch"] in git("branch", "--list", done["branch"], cwd=repo)
        assert str(worktree) in git("worktree", "list", cwd=repo)
        assert pool.status(holder)["state"] == "running"


def test_worktree_setup_runs_in_the_new_worktree_with_the_agents_port(
        aegis_env: dict[str, str], tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    setup = ('echo "PORT=$AEGIS_AGENT_PORT" > .env.local && '
             'echo "setup in $PWD for $AEGIS_AGENT_ID from $AEGIS_REPO_ROOT"')
    pool = configure(aegis_env, worktree_setup=setup)
    with cleanup_pool():
        spawned = pool.spawn(f"env={tmp_path / 'env.json'}", working_directory=str(repo),
                             isolation="worktree")
        done = pool.await_agent(spawned["agent_id"], 30)
    assert done["state"] == "completed", done
    port = json.loads((tmp_path / "env.json").read_text())["AEGIS_AGENT_PORT"]
    assert done["port"] == int(port)  # the status tells where its dev server listens
    worktree = Path(done["worktree_path"])
    assert (worktree / ".env.local").read_text() == f"PORT={port}\n"
    log = Path(done["log_path"]).read_text()
    assert f"setup in {worktree} for {done['agent_id']} from {repo}" in log


def test_a_failed_or_stopped_worktree_setup_ends_the_agent_before_it_starts(
        aegis_env: dict[str, str], tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    pool = configure(aegis_env, worktree_setup="echo installing; exit 3")
    with cleanup_pool():
        failed = pool.await_agent(pool.spawn("touch=never.txt", working_directory=str(repo),
                                             isolation="worktree")["agent_id"], 30)
        assert failed["state"] == "failed" and failed["exit_code"] is None, failed
        assert failed["reason"].startswith("worktree setup failed (exit 3)")
        assert "installing" in Path(failed["log_path"]).read_text()
        assert not (Path(failed["worktree_path"]) / "never.txt").exists()
        pool = configure(aegis_env, worktree_setup="sleep 60")
        slow = pool.spawn("touch=never.txt", working_directory=str(repo), isolation="worktree")
        wait_for(lambda: "worktree setup: sleep" in Path(slow["log_path"]).read_text(), 10,
                 "the setup running")
        pool.stop(slow["agent_id"], wait_secs=10)
        stopped = pool.status(slow["agent_id"])
    assert stopped["state"] == "stopped", stopped
    assert stopped["reason"] == "stopped by request during the worktree setup"


def test_config_can_make_worktrees_the_default_in_git_repositories(
        aegis_env: dict[str, str], tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (plain,) = dirs(tmp_path, 1)
    pool = configure(aegis_env, isolation="worktree")
    with cleanup_pool():
        in_repo = pool.spawn("sleep=0", working_directory=str(repo))
        outside = pool.spawn("sleep=0", working_directory=plain)
        assert in_repo["isolation"] == "worktree" and outside["isolation"] == "lock"
        assert pool.await_agent(in_repo["agent_id"], 30)["state"] == "completed"
        with pytest.raises(AegisError, match="needs a git repository"):
            pool.spawn("x", working_directory=plain, isolation="worktree")


def test_max_iterations_uses_the_agent_flag_or_the_event_stream(pool: Pool,
                                                                tmp_path: Path) -> None:
    a, b = dirs(tmp_path, 2)
    flagged = pool.await_agent(pool.spawn("turns=5", working_directory=a, max_iterations=2)
                               ["agent_id"], 20)
    assert flagged["num_turns"] == 2 and "error_max_turns" in flagged["reason"]
    argv = json.loads(pool._row(flagged["agent_id"])["argv"])
    assert argv[-4:] == ["--max-turns", "2", "--", "turns=5"] and flagged["iterations"] == 2
    enforced = pool.await_agent(pool.spawn("turns=50 sleep=0.1", agent_type="fakeplain",
                                           working_directory=b, max_iterations=2)["agent_id"], 20)
    assert enforced["state"] == "stopped"
    assert "max_iterations (2) reached" in enforced["reason"]
    assert enforced["iterations"] == 3


OPTION_LIKE_TASKS = ("--help", "-v --model x", "--max-turns 1 turns=2",
                     "-p --dangerously-skip-permissions --output-format text")


def test_a_task_that_looks_like_options_reaches_the_agent_as_its_prompt(
        pool: Pool, tmp_path: Path) -> None:
    """The task is untrusted text: whatever it starts with, the agent gets it as its prompt
    and none of it as an option (the fake agent parses like claude: a leaked `--help` would
    print help, `-v` would fail as unknown, `--max-turns 1` would cut the run short)."""
    ids = {task: pool.spawn(task, working_directory=wd)["agent_id"]
           for task, wd in zip(OPTION_LIKE_TASKS, dirs(tmp_path, len(OPTION_LIKE_TASKS)),
                               strict=True)}
    for task, agent_id in ids.items():
        done = pool.await_agent(agent_id, 30)
        assert done["state"] == "completed", done
        assert done["result"] == f"done: {task}"
        argv = json.loads(pool._row(agent_id)["argv"])
        assert argv[-2:] == ["--", task]
    assert pool.status(ids["--max-turns 1 turns=2"])["num_turns"] == 2
    # The pool still runs ordinary tasks afterwards.
    plain = pool.spawn("result=fine", working_directory=str(tmp_path))
    assert pool.await_agent(plain["agent_id"], 30)["result"] == "fine"


def test_every_built_in_profile_passes_the_task_where_it_cannot_be_an_option() -> None:
    """The forms measured on the real CLIs (claude, codex, gemini, qwen, aider, opencode,
    kilo, copilot, amp; cursor-agent uses claude's): after a `--` that the CLI honours, or as
    the value in an `--option=TASK` word (Qwen Code drops a positional prompt after `--`,
    measured). The pool's own flags stay before the `--`."""
    import dataclasses
    import sys

    from aegis_mcp.profiles.argv import headless_argv
    from aegis_mcp.profiles.profile import BUILTIN_PROFILES

    task = "-v --model x"
    expected = {"claude": ["--", task], "cursor": ["--", task], "codex": ["--", task],
                "gemini": [f"--prompt={task}"], "qwen": [f"--prompt={task}"],
                "aider": [f"--message={task}"],
                "opencode": ["--", task], "kilo": ["--", task],
                "copilot": [f"--prompt={task}"], "amp": [f"--execute={task}"]}
    assert set(expected) == {n for n, p in BUILTIN_PROFILES.items() if p.headless_args}
    for name, want in expected.items():
        profile = dataclasses.replace(BUILTIN_PROFILES[name], command=(sys.executable,))
        argv, _, _ = headless_argv(profile, task, 3, {"IS_SANDBOX": "1"}, Path("/chat.md"))
        found = [i for i, a in enumerate(argv) if task in a]
        assert len(found) == 1, argv
        at = found[0]
        assert argv[at:at + len(want)] == want or argv[at - 1:at + 1] == want, (name, argv)
        if "--" in argv:
            assert argv.index("--") == len(argv) - 2, (name, argv)  # flags all before it
        assert set(profile.permission_flags) <= set(argv), (name, argv)


def test_a_task_a_profile_would_pass_as_an_option_is_refused(pool: Pool, tmp_path: Path) -> None:
    """A config's headless_args with a bare `{prompt}` word (`fakeplain`: `-p {prompt}`): a task
    starting with `-` is refused with what to change, never run as options; tasks of dashes
    alone mean stdin (codex) or nothing (aider's argparse drops `--`): refused for every type."""
    wd = str(tmp_path)
    with pytest.raises(AegisError, match=r"put \"--\" before \"\{prompt\}\""):
        pool.spawn("--help", agent_type="fakeplain", working_directory=wd)
    for task in ("-", "--", " -- "):
        with pytest.raises(AegisError, match="says nothing the agent can do"):
            pool.spawn(task, working_directory=wd)
    assert pool.list(False, 10) == []  # nothing was queued
    ok = pool.spawn("result=plain-ok", agent_type="fakeplain", working_directory=wd)
    assert pool.await_agent(ok["agent_id"], 30)["result"] == "plain-ok"


def test_timeout_stops_the_agent(pool: Pool, tmp_path: Path) -> None:
    (wd,) = dirs(tmp_path, 1)
    t0 = time.monotonic()
    done = pool.await_agent(pool.spawn("hang ignore-term", working_directory=wd,
                                       timeout_secs=0.5)["agent_id"], 20)
    assert done["state"] == "failed" and "timed out after 0.5 s" in done["reason"]
    assert time.monotonic() - t0 < 5


def test_the_agent_environment_is_built_on_purpose(pool: Pool, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (wd,) = dirs(tmp_path, 1)
    monkeypatch.setenv("CLAUDECODE", "1")
    monkeypatch.setenv("AEGIS_CONTROL", "/nonexistent.sock")
    monkeypatch.setenv("KEEP_ME", "yes")
    out = tmp_path / "env.json"
    agent_id = pool.spawn(f"env={out}", working_directory=wd)["agent_id"]
    assert pool.await_agent(agent_id, 20)["state"] == "completed"
    env = json.loads(out.read_text())
    assert "CLAUDECODE" not in env and "AEGIS_CONTROL" not in env
    assert env["KEEP_ME"] == "yes" and env["AEGIS_AGENT_ID"] == agent_id


def test_bad_input_is_one_clear_error(pool: Pool, tmp_path: Path) -> None:
    (wd,) = dirs(tmp_path, 1)
    cases = [
        (lambda: pool.status("nope"), "unknown agent id 'nope'"),
        (lambda: pool.await_agent("nope", 1), "unknown agent id"),
        (lambda: pool.stop("nope"), "unknown agent id"),
        (lambda: pool.spawn("x", working_directory=str(tmp_path / "missing")),
         "no such file or directory"),
        (lambda: pool.spawn("x", agent_type="nosuch", working_directory=wd), "unknown agent"),
        (lambda: pool.spawn("  ", working_directory=wd), "description"),
        (lambda: pool.spawn("x", working_directory=wd, max_iterations=0), "max_iterations"),
        (lambda: pool.spawn("x", working_directory=wd, isolation="box"), "isolation"),
        (lambda: pool.spawn("x", working_directory=wd, timeout_secs=-1), "timeout_secs"),
    ]
    for fn, message in cases:
        with pytest.raises(AegisError, match=message):
            fn()
    agent_id = pool.spawn("sleep=0", working_directory=wd)["agent_id"]
    with pytest.raises(AegisError, match="timeout_secs must be"):
        pool.await_agent(agent_id, -1)
    assert pool.status(agent_id[:5])["agent_id"] == agent_id  # a unique prefix is enough


def test_bad_pool_settings_are_reported(aegis_env: dict[str, str]) -> None:
    Path(aegis_env["AEGIS_CONFIG"]).write_text("[pool]\nmax_agents = 0\n")
    with pytest.raises(AegisError, match="max_agents"):
        Pool().stats()
    Path(aegis_env["AEGIS_CONFIG"]).write_text("[pool]\nmax_agent = 3\n")
    with pytest.raises(AegisError, match="unknown key 'max_agent'"):
        Pool().stats()
    Path(aegis_env["AEGIS_CONFIG"]).write_text("[pool]\nworktree_setup = ['npm', 'ci']\n")
    with pytest.raises(AegisError, match="worktree_setup .* expected a shell command"):
        Pool().stats()


def test_kill9_of_a_runner_marks_the_agent_lost_and_frees_its_lock(
        pool: Pool, tmp_path: Path) -> None:
    (wd,) = dirs(tmp_path, 1)
    pids_file = tmp_path / "pids"
    victim = pool.spawn(f"hang grandchild pids={pids_file}", working_directory=wd)["agent_id"]
    waiter = pool.spawn("result=after", working_directory=wd)["agent_id"]
    pids = read_pids(pids_file, 2)
    runner = wait_for(lambda: pool.status(victim)["runner_pid"], 10, "runner pid")

    awaited: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: awaited.update(Pool().await_agent(victim, 20)))
    thread.start()
    time.sleep(0.2)
    os.kill(runner, signal.SIGKILL)
    thread.join(10)
    assert awaited["state"] == "lost" and "runner process died" in awaited["reason"]
    wait_for(lambda: not any(pid_alive(p) for p in pids), 5, "the orphaned agent tree to die")
    done = pool.await_agent(waiter, 20)
    assert done["state"] == "completed" and done["result"] == "after"


@pytest.mark.parametrize("crashpoint", ["spawn-after-insert", "promote-after-claim"])
def test_kill9_in_the_middle_of_a_spawn_leaves_a_consistent_store(
        pool: Pool, tmp_path: Path, aegis_env: dict[str, str], crashpoint: str) -> None:
    (wd,) = dirs(tmp_path, 1)
    proc = subprocess.run([aegis_bin(), "agents", "spawn", "-C", wd, "result=recovered"],
                          env={**aegis_env, "AEGIS_TEST_CRASHPOINT": crashpoint},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (row,) = pool.conn.execute("SELECT id, state FROM agents").fetchall()
    assert row["state"] == ("queued" if crashpoint == "spawn-after-insert" else "starting")
    # Any later pool operation settles it; the agent runs once and completes.
    done = pool.await_agent(row["id"], 20)
    assert done["state"] == "completed" and done["result"] == "recovered"
    assert Path(done["log_path"]).read_text().count("] starting ") == 1


def test_kill9_of_a_runner_right_after_it_started_the_agent(
        pool: Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (wd,) = dirs(tmp_path, 1)
    monkeypatch.setenv("AEGIS_TEST_CRASHPOINT", "runner-running")
    pids_file = tmp_path / "pids"
    agent_id = pool.spawn(f"hang pids={pids_file}", working_directory=wd)["agent_id"]
    done = pool.await_agent(agent_id, 20)
    assert done["state"] == "lost"
    if pids_file.exists():
        wait_for(lambda: not any(pid_alive(p) for p in read_pids(pids_file, 1)), 5, "agent gone")
    assert pool.stats()["lost"] == 1 and pool.locks() == []


def _runner_pids(ids: set[str]) -> list[int]:
    marks = {f"AEGIS_POOL_RUNNER={i}".encode() for i in ids}
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marks & set(env):
                found.append(int(entry))
    return found


@pytest.mark.parametrize("seed", [1, 2])
def test_kill9_of_runners_at_random_moments_leaves_a_consistent_pool(
        aegis_env: dict[str, str], tmp_path: Path, seed: int) -> None:
    import random

    rng = random.Random(seed)
    pool = configure(aegis_env, max_agents=3)
    with cleanup_pool():
        workdirs = dirs(tmp_path, 4)
        ids = [pool.spawn("turns=3 sleep=0.2", working_directory=workdirs[i % 4])["agent_id"]
               for i in range(10)]
        killed = 0
        end = time.monotonic() + 2.5
        while time.monotonic() < end:  # runners die while starting, running, ending, promoting
            time.sleep(rng.uniform(0.05, 0.3))
            victims = _runner_pids(set(ids))
            if victims:
                os.kill(rng.choice(victims), signal.SIGKILL)
                killed += 1
        assert killed >= 3
        final = [pool.await_agent(i, 30) for i in ids]
        assert all(f["state"] in ("completed", "lost") for f in final), final
        assert all(f["ended_at"] for f in final)
        lost = [f for f in final if f["state"] == "lost"]
        assert lost and all(f["result"] is None or f["num_turns"] for f in lost)
        stats = pool.stats()
        assert stats["total"] == 10 and stats["active"] == 0
        assert pool.locks() == []
        wait_for(lambda: not _runner_pids(set(ids)), 5, "every runner to be gone")


def test_a_store_of_the_first_release_is_upgraded_in_place(aegis_env: dict[str, str],
                                                           tmp_path: Path) -> None:
    import sqlite3

    from aegis_mcp.pool import store as pool_module

    configure(aegis_env)
    directory = tmp_path / "old-pool"
    directory.mkdir(mode=0o700)
    old = sqlite3.connect(directory / "pool.db")
    first_release = pool_module._SCHEMA.replace("    worktree_setup TEXT,\n", "").replace(
        "    agent_port INTEGER,\n", "")
    old.executescript(first_release + "PRAGMA user_version = 1;")
    old.execute("INSERT INTO agents (id, state, description, agent_type, working_directory,"
                " cwd, isolation, argv, env, stop_grace_secs, created_at) VALUES"
                " ('0ld0ld00', 'completed', 'old task', 'claude', '/', '/', 'lock', '[]', '{}',"
                " 3, 0)")
    old.commit()
    old.close()
    upgraded = Pool(directory)
    with cleanup_pool():
        assert upgraded.status("0ld0ld00")["description"] == "old task"
        assert upgraded.status("0ld0ld00")["port"] is None
        (wd,) = dirs(tmp_path, 1)
        new = upgraded.spawn("sleep=0", working_directory=wd)
        assert upgraded.await_agent(new["agent_id"], 30)["state"] == "completed"
    assert upgraded.conn.execute("PRAGMA user_version").fetchone()[0] == 2
    upgraded.close()


def test_a_new_store_opened_by_many_processes_at_once(aegis_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    # The first open switches the store to WAL; SQLite answers "database is locked" at once,
    # without waiting, to the others that open it at that moment (seen in CI).
    script = ("import sys; from pathlib import Path; from aegis_mcp.pool.pool import Pool; "
              "print(Pool(Path(sys.argv[1])).stats()['max_agents'])")
    for round_ in range(8):
        directory = tmp_path / f"pool{round_}"
        procs = [subprocess.Popen([os.sys.executable, "-c", script, str(directory)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
