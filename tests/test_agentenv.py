"""The one policy of what a new agent inherits (agentenv), as the supervisor applies it."""

from __future__ import annotations

from aegis_mcp.agentenv import inherited

LIB = "/site/aegis_mcp/netmon/libaegis_hooks.so"


def test_session_marks_and_plumbing_go_settings_and_the_users_preloads_stay() -> None:
    base = {"PATH": "/bin", "HOME": "/home/u", "CLAUDECODE": "1", "GEMINI_CLI": "1",
            "AEGIS_CONTROL": "/run/s.sock", "AEGIS_SUPERVISOR_PID": "9",
            "AEGIS_POOL_RUNNER": "a1", "AEGIS_TEST_CRASHPOINT": "x", "AEGIS_CONFIG": "/c.toml",
            "AEGIS_RUNTIME_DIR": "/run/a", "LD_PRELOAD": f"{LIB} /usr/lib/libmine.so"}
    assert inherited(base, LIB) == {"PATH": "/bin", "HOME": "/home/u", "AEGIS_CONFIG": "/c.toml",
                                    "AEGIS_RUNTIME_DIR": "/run/a",
                                    "LD_PRELOAD": "/usr/lib/libmine.so"}
    assert "LD_PRELOAD" not in inherited({"LD_PRELOAD": LIB}, LIB)

