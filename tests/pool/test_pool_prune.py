"""`aegis-mcp agents prune`: ended agents are forgotten; unmerged worktrees are not lost."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from aegis_mcp.pool.pool import Pool
from tests.support.host import aegis_bin
from tests.support.poolkit import cleanup_pool, git, make_repo, pool_config


def agents_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([aegis_bin(), "agents", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_prune_forgets_ended_agents_and_keeps_worktrees_unless_asked(
        aegis_env: dict[str, str], tmp_path: Path) -> None:
    Path(aegis_env["AEGIS_CONFIG"]).write_text(pool_config())
    repo = make_repo(tmp_path / "repo")
    plain = tmp_path / "plain"
    plain.mkdir()
    with cleanup_pool():
        pool = Pool()
        done = pool.spawn("sleep=0", working_directory=str(plain))["agent_id"]
        iso = pool.spawn("touch=made.txt", working_directory=str(repo),
                         isolation="worktree")["agent_id"]
        running = pool.spawn("hang", working_directory=str(tmp_path))["agent_id"]
        for agent_id in (done, iso):
            assert pool.await_agent(agent_id, 30)["state"] == "completed"
        worktree = Path(pool.status(iso)["worktree_path"])
        log = pool.log_path(done)
        assert log.exists()

        young = json.loads(agents_cli(aegis_env, "prune", "--json").stdout)
        assert young == {"removed": [], "kept": []}  # ended just now: younger than 7 days

        first = json.loads(agents_cli(aegis_env, "prune", "--older-than", "0", "--json").stdout)
        assert [r["agent_id"] for r in first["removed"]] == [done]
        assert [k["agent_id"] for k in first["kept"]] == [iso] and worktree.is_dir()
        assert not log.exists()
        ids = {a["agent_id"] for a in json.loads(agents_cli(aegis_env, "list", "--json").stdout)}
        assert done not in ids and iso in ids and running in ids  # a running one is never pruned

        # The agent left an uncommitted file: git refuses, and the work is not lost.
        refused = agents_cli(aegis_env, "prune", "--older-than", "0", "--worktrees")
        assert refused.returncode == 0 and "removed 0 ended agent(s)" in refused.stdout
        assert "git worktree remove refused" in refused.stdout and worktree.is_dir()
        git("add", "made.txt", cwd=worktree)
        git("commit", "-q", "-m", "the agent's work", cwd=worktree)
        out = agents_cli(aegis_env, "prune", "--older-than", "0", "--worktrees")
        assert out.returncode == 0 and "removed 1 ended agent(s)" in out.stdout
        assert not worktree.exists()
        branch = f"aegis/{iso}"
        assert branch in git("branch", "--list", branch, cwd=repo)  # the work stays reachable
        assert "made.txt" in git("show", "--stat", branch, cwd=repo)
        pool.close()


def test_prune_rejects_a_bad_age(aegis_env: dict[str, str]) -> None:
    out = agents_cli(aegis_env, "prune", "--older-than", "soon")
    assert out.returncode == 2 and "is not an age like 30m, 12h or 7d" in out.stderr
