"""The real Claude Code under a network policy the kernel enforces (namespace mode), offline
against a local stand-in for its model API: the allow-list names only the stand-in; the model
has claude run curl to another server of the test's (reachable but for the policy) and then
asks the injected netmon_policy tool why. Everything runs in a network namespace of the test's
own."""

from __future__ import annotations

import json
import pwd
from pathlib import Path

from tests.e2e.test_claude_e2e import needs_claude, run_claude
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.host import NEEDS_ROOT
from tests.support.private_net import PrivateLoopback
from tests.support.snippets.harness import RawHTTPServer

pytestmark = [needs_claude, NEEDS_ROOT]


def test_claude_under_an_allow_list_is_denied_at_once_and_told_why(
        throwaway_user: pwd.struct_passwd, project: Path, aegis_env: dict[str, str],
        net: PrivateLoopback) -> None:
    # Another server of the test's, on every address of the test's namespace: the agent's
    # namespace reaches it through its gateway (--netns-host-access), so only the policy
    # stands between them.
    other = net.run(lambda: RawHTTPServer(host="0.0.0.0", body=b"the secret\n"))
    fetch = ("curl -sS --max-time 30 http://$(ip route show default | awk '{print $3}'):"
             f"{other.port}/ 2>&1; echo exit=$?")
    try:
        with FakeAnthropic(default_text="default reply", bind=net.run) as api:
            api.queue_tool_use("Bash", {"command": fetch, "description": "fetch a page"})
            api.queue_tool_use("mcp__aegis-mcp__netmon_policy", {})
            api.queue_text("the page was denied; going on without it")
            out = run_claude(net, api, throwaway_user, project, aegis_env, "--netmon=netns",
                             "--netns-host-access", "--allow", f"127.0.0.1:{api.port}", "-p",
                             "fetch the page")
            requests = [json.dumps(r.body["messages"]) for r in api.message_requests()]
    finally:
        other.close()
    assert out.returncode == 0, out.stderr
    assert "the page was denied; going on without it" in out.stdout  # the turn went on
    assert "enforced by the kernel" in out.stderr
    # curl failed to connect at once (7), not by its timeout (28); nothing reached the server
    assert "exit=7" in requests[1] and "the secret" not in requests[1], requests[1][-2000:]
    assert other.connections == []
    # what the agent's own netmon_policy call answered: the rule of the stand-in, the denial
    answer = requests[2]
    assert f"127.0.0.1:{api.port}" in answer and "default deny" in answer
    assert str(other.port) in answer and "--allow" in answer
    log = next((project / ".aegis-run").rglob("netmon-*.jsonl"))
    denies = [e for e in map(json.loads, log.read_text().splitlines())
              if e.get("event") == "deny" and e.get("port") == other.port]
    assert denies and all(e["mode"] == "netns" and e["default"] is True for e in denies)
