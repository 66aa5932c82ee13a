"""Where aegis-mcp keeps its files: the runtime file names (paths.RUNTIME_FILES)."""

from __future__ import annotations


def test_every_runtime_file_name_has_one_home_and_the_cleanup_knows_which_go() -> None:
    from pathlib import Path

    from aegis_mcp.paths import runtime_file, working_file_owner

    run = Path("/run/a")
    assert runtime_file(run, "control", 12).name == "supervisor-12.sock"
    assert runtime_file(run, "config_overlay", 12, n=3).name == "config-overlay-12-3.json"
    assert runtime_file(run, "history", 12, agent="aider").name == "aider-history-12.md"
    for kind, parts in (("control", {}), ("warm", {}), ("mcp_overlay", {}),
                        ("config_overlay", {"n": 0})):
        assert working_file_owner(runtime_file(run, kind, 77, **parts).name) == 77
    # the record of what the agent did stays, and names of nobody's are left alone
    assert working_file_owner(runtime_file(run, "netmon_log", 77).name) is None
    assert working_file_owner("supervisor-x.sock") is None
    assert working_file_owner("notes.txt") is None
