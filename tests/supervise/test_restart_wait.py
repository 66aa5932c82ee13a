"""Restarts and the control socket: it answers at every moment (also while a stop takes its
whole grace), crossing requests are one restart, `restart --wait` says what it verified for
this agent, and only the current start's MCP servers count."""

from __future__ import annotations

import json
import pwd
import subprocess
import time
from pathlib import Path

import pexpect

from aegis_mcp.supervise import control
from tests.support.host import NEEDS_ROOT, aegis_bin
from tests.support.supervisor_helpers import FakeAgentWorld, pid_alive
from tests.support.wait import wait_for

GRACE = 3.0  # the default --restart-grace: a stop that takes it all lasts over 6 s
QUICK = 1.0  # how long any request may wait for its answer, whatever the supervisor does


def socket_of(world: FakeAgentWorld) -> Path:
    return Path(world.wait_starts(1)[-1]["env"]["AEGIS_CONTROL"])


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus if child.exitstatus is not None else 128 + child.signalstatus


def restart_cli(world: FakeAgentWorld, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([aegis_bin(), "restart", *args], env=world.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_the_socket_answers_during_a_stop_that_takes_the_whole_grace(
        world: FakeAgentWorld) -> None:
    child = world.spawn("--restart-grace", str(GRACE), "fake", "--behaviour",
                        "ignore-sigint,ignore-sigterm", timeout=60)
    child.expect("READY")
    sock = socket_of(world)
    first = world.starts()[0]
    waiting = restart_cli(world, "--reason", "slow stop", "--wait", "60", "--json")
    child.expect("GOT SIGINT")  # the stop is on; SIGKILL comes only after 2 x GRACE
    began = time.monotonic()
    status = control.request(sock, {"op": "status"}, timeout=QUICK)["status"]
    assert status["phase"] == "restarting" and status["restart_count"] == 0
    second = control.request(sock, {"op": "restart", "reason": "again", "prompt": "p"},
                             timeout=QUICK)
    assert second["ok"] and second["coalesced"] is True and second["restart_count"] == 1
    assert "already in progress (reason: slow stop)" in second["message"]
    # Answers all through the stop, each within QUICK, while the old agent is still there.
    slowest = 0.0
    while pid_alive(first["pid"]) and time.monotonic() - began < 4 * GRACE:
        asked = time.monotonic()
        assert control.request(sock, {"op": "status"}, timeout=QUICK)["ok"]
        slowest = max(slowest, time.monotonic() - asked)
        time.sleep(0.2)
    assert time.monotonic() - began > GRACE  # the requests above really crossed the stop
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    done = json.loads(out)
    starts = world.wait_starts(2)
    assert done["restarted"]["agent_pid"] == starts[1]["pid"]
    assert done["verified"] == ["restarted", "mcp_server"] and done["not_verified"] == {}
    assert starts[1]["prompt"] == "p"  # the joined request's prompt, the first one's had none
    time.sleep(1.0)  # the joined request must not become a second restart
    status = control.request(sock, {"op": "status"})["status"]
    assert len(world.starts()) == 2 and status["restart_count"] == 1
    assert status["phase"] == "running"
    print(f"slowest answer during the stop: {slowest * 1000:.0f} ms")
    child.sendline("exit 0")
    assert finish(child) == 0


def test_two_restarts_before_the_first_one_runs_are_one(world: FakeAgentWorld) -> None:
    child = world.spawn("fake")
    child.expect("READY")
    sock = socket_of(world)
    first = control.request(sock, {"op": "restart", "reason": "one", "delay": 1.5})
    second = control.request(sock, {"op": "restart", "reason": "two", "prompt": "go on",
                                    "delay": 0})
    assert first["coalesced"] is False and second["coalesced"] is True
    assert first["restart_count"] == second["restart_count"] == 1
    assert "already pending (reason: one)" in second["message"]
    assert control.request(sock, {"op": "status"})["status"]["phase"] == "restart-pending"
    child.expect_exact("restarting fake (reason: one)")
    child.expect("READY")
    assert world.wait_starts(2)[1]["prompt"] == "go on"
    time.sleep(2.0)
    assert len(world.starts()) == 2
    child.sendline("exit 0")
    assert finish(child) == 0


def test_wait_on_a_generic_agent_verifies_the_restart_only_and_at_once(
        world: FakeAgentWorld) -> None:
    child = world.spawn("--", "sh", "-c", "echo READY; exec sleep 600")
    child.expect("READY")
    began = time.monotonic()
    out = subprocess.run([aegis_bin(), "restart", "--wait", "30"], env=world.env,
                         capture_output=True, text=True, timeout=60)
    took = time.monotonic() - began
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1] == ("aegis-mcp MCP server: cannot be verified: sh gets it only if it reads "
                        ".mcp.json through libc (the LD_PRELOAD redirect), which it is not "
                        "known to do")
    assert lines[2].startswith("restarted: sh pid ") and len(lines) == 3
    assert took < 5, f"--wait took {took:.1f}s"
    child.expect("READY")  # the new sh
    print(f"restart --wait on a generic agent: {took:.2f}s")
    as_json = subprocess.run([aegis_bin(), "restart", "--wait", "30", "--json"],
                             env=world.env, capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    done = json.loads(as_json.stdout)
    assert done["verified"] == ["restarted"] and done["not_verified"] == {}
    assert list(done["cannot_verify"]) == ["mcp_server"]
    assert done["restarted"]["restart_count"] == 2
    child.sendintr()
    child.expect(pexpect.EOF)


def test_wait_without_injection_says_so(world: FakeAgentWorld) -> None:
    child = world.spawn("--no-inject-mcp", "fake")
    child.expect("READY")
    out = subprocess.run([aegis_bin(), "restart", "--wait", "30"], env=world.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert ("aegis-mcp MCP server: cannot be verified: the MCP injection is off "
            "(--no-inject-mcp)") in out.stdout
    child.expect("READY")
    child.sendline("exit 0")
    assert finish(child) == 0


def test_wait_reports_the_new_agents_server_line_by_line(world: FakeAgentWorld) -> None:
    child = world.spawn("fake")
    child.expect("READY")
    out = subprocess.run([aegis_bin(), "restart", "--wait", "30"], env=world.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    second = world.wait_starts(2)[1]
    server = next(c for c in second["children"] if c["name"] == "aegis-mcp")
    lines = out.stdout.splitlines()
    assert lines[1].startswith(f"restarted: fake pid {second['pid']} (restart 1, after ")
    assert lines[2].startswith(f"aegis-mcp MCP server: up (pid {server['pid']}, after ")
    assert len(lines) == 3
    child.sendline("exit 0")
    assert finish(child) == 0


SILENT = """
[agents.silent]
command = ["/bin/sh", "-c", "echo READY; exec sleep 600", "silent"]
injection = "mcp-config"
prompt = "none"
"""


def test_wait_exits_3_when_the_server_does_not_come(world: FakeAgentWorld) -> None:
    # Given the server (--mcp-config), this agent never starts it: verifiable, and not seen.
    Path(world.env["AEGIS_CONFIG"]).write_text(SILENT)
    child = world.spawn("silent")
    child.expect("READY")
    runtime = Path(world.env["AEGIS_RUNTIME_DIR"])
    sock = control.socket_path(runtime, child.pid)
    waiting = restart_cli(world, "--wait", "3")
    child.expect("READY")
    # The old start's server saying hello late must not pass for the new one's.
    assert control.request(sock, {"op": "hello", "pid": 999999, "start": 1}) == {
        "ok": True, "counted": False}
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 3, err
    lines = out.splitlines()
    assert lines[1].startswith("restarted: silent pid ")
    assert lines[2] == ("aegis-mcp MCP server: not verified: the new agent's aegis-mcp MCP "
                        "server did not say hello within 3s")
    as_json = subprocess.run([aegis_bin(), "restart", "--wait", "2", "--json"],
                             env=world.env, capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 3
    done = json.loads(as_json.stdout)
    assert done["verified"] == ["restarted"] and list(done["not_verified"]) == ["mcp_server"]
    assert done["cannot_verify"] == {}
    child.sendintr()
    child.expect(pexpect.EOF)


def test_a_hello_of_another_start_is_not_counted(world: FakeAgentWorld) -> None:
    child = world.spawn("fake")
    child.expect("READY")
    sock = socket_of(world)
    first = world.wait_starts(1)[0]
    assert first["env"]["AEGIS_AGENT_START"] == "1"
    wait_for(lambda: control.request(sock, {"op": "status"})["status"]["mcp_servers_seen"],
             20, "the first start's server")
    control.request(sock, {"op": "restart", "reason": "new servers"})
    child.expect("READY")
    second = world.wait_starts(2)[1]
    assert second["env"]["AEGIS_AGENT_START"] == "2"
    status = wait_for(lambda: (s if (s := control.request(sock, {"op": "status"})["status"])[
        "mcp_servers_seen"] else None), 20, "the second start's server")
    server = next(c for c in second["children"] if c["name"] == "aegis-mcp")
    # What a slow old agent's server would send after the restart, and one of a server that
    # predates start ids: answered, never counted for the new start.
    late = control.request(sock, {"op": "hello", "pid": 999999, "ppid": first["pid"],
                                  "start": 1})
    old = control.request(sock, {"op": "hello", "pid": 999998, "ppid": first["pid"]})
    assert late == old == {"ok": True, "counted": False}
    status = control.request(sock, {"op": "status"})["status"]
    assert [s["pid"] for s in status["mcp_servers_seen"]] == [server["pid"]]
    assert status["agent_start"] == 2
    child.sendline("exit 0")
    assert finish(child) == 0


def test_a_restart_asked_while_the_supervisor_shuts_down_is_refused_in_one_line(
        world: FakeAgentWorld) -> None:
    child = world.spawn("--restart-grace", "2", "fake", "--behaviour",
                        "ignore-sigint,ignore-sigterm", timeout=60)
    child.expect("READY")
    sock = socket_of(world)
    child.kill(15)
    child.expect("stopping fake")
    status = control.request(sock, {"op": "status"}, timeout=QUICK)["status"]
    assert status["phase"] == "shutdown"
    answer = control.request(sock, {"op": "restart"}, timeout=QUICK)
    assert answer == {"ok": False, "error": "aegis-mcp is shutting down, and fake with it: "
                      "start it again with `aegis-mcp fake`"}
    assert finish(child) == 128 + 15
    assert len(world.starts()) == 1


@NEEDS_ROOT
def test_under_sudo_the_relay_and_the_socket_both_run_through_a_slow_stop(
        sudo_world: FakeAgentWorld,
        throwaway_user: pwd.struct_passwd) -> None:
    child = sudo_world.spawn("--restart-grace", "2", "fake", "--behaviour",
                             "ignore-sigint,ignore-sigterm", timeout=60)
    child.expect("READY")
    sock = socket_of(sudo_world)
    waiting = restart_cli(sudo_world, "--pid", str(child.pid), "--wait", "60", "--json")
    child.expect("GOT SIGINT")  # printed in the agent's own terminal, relayed during the stop
    assert control.request(sock, {"op": "status"}, timeout=QUICK)["status"]["phase"] == \
        "restarting"
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert json.loads(out)["verified"] == ["restarted", "mcp_server"]
    child.expect("READY")
    assert sudo_world.wait_starts(2)[1]["uid"] == throwaway_user.pw_uid
    child.sendline("exit 0")
    assert finish(child) == 0
