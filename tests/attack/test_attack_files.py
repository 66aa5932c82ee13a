"""The root boundary, tested as an attack: a root supervisor started through sudo runs the agent
as a throwaway user, and that user (the attacker: it is what the agent can do) plants links,
swaps names and shadows modules. Each attack must fail (root writes, reads, chowns or runs
nothing it should not) and the product must still work afterwards (the agent starts, restarts,
gets its MCP server, its traffic log is kept)."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

from aegis_mcp.supervise import control
from tests.support.host import NEEDS_ROOT, aegis_bin
from tests.support.supervisor_helpers import FakeAgentWorld, fake_profile
from tests.support.wait import wait_for

pytestmark = NEEDS_ROOT


@dataclass
class Victim:
    """Root-only files the attacker wants root to write, give away or leak."""

    dir: Path
    precious: Path
    secret_json: Path
    secret: str

    def untouched(self) -> None:
        st = self.precious.stat()
        assert self.precious.read_text() == "precious\n"
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
        st = self.secret_json.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
        assert sorted(p.name for p in self.dir.iterdir()) == ["precious", "secret.json"]


@dataclass
class Attack:
    world: FakeAgentWorld
    user: pwd.struct_passwd
    run: Path
    project: Path
    victim: Victim

    def as_attacker(self, code: str, *args: str) -> None:
        """Python `code` run as the throwaway user: what the agent itself could do."""
        subprocess.run(["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}",
                        "--init-groups", sys.executable, "-c", code, *args],
                       check=True, timeout=30, cwd="/")

    def no_leak(self) -> None:
        for path in self.run.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert self.victim.secret not in path.read_text(errors="replace"), path

    def spawn(self, *args: str, plant: str | None = None) -> pexpect.spawn:
        """The supervisor in a pty, in the project directory; `plant` is attacker code run
        as the user with the supervisor's pid (known before it starts: `exec` keeps it)."""
        command = shlex.join([aegis_bin(), *args])
        if plant is not None:
            attacker = shlex.join(["setpriv", f"--reuid={self.user.pw_uid}",
                                   f"--regid={self.user.pw_gid}", "--init-groups",
                                   sys.executable, "-c", plant])
            command = f"{attacker} $$ && exec {command}"
        return pexpect.spawn("sh", ["-c", f"exec {command}" if plant is None else command],
                             env=self.world.env, cwd=str(self.project), timeout=30,
                             encoding="utf-8", codec_errors="replace", dimensions=(40, 120))

    def started(self, child: pexpect.spawn) -> None:
        """The attack failed (checked first: on a vulnerable build it is what fails), then
        the product works: the agent started."""
        started = child.expect(["READY", pexpect.EOF], timeout=60) == 0
        self.victim.untouched()
        self.no_leak()
        assert started, f"the agent did not start: {child.before[-300:]!r}"

    def status(self, pid: int) -> dict:
        return control.request(control.socket_path(self.run, pid), {"op": "status"})["status"]

    def mcp_seen(self, pid: int) -> dict:
        """Status once the current agent's aegis-mcp server said hello: the injection worked."""
        return wait_for(lambda: (s if (s := self.status(pid))["mcp_servers_seen"] else None),
                        60, "the agent's aegis-mcp MCP server")  # type: ignore[return-value]


@pytest.fixture
def attack(sudo_world: FakeAgentWorld, throwaway_user: pwd.struct_passwd
           ) -> Iterator[Attack]:
    uid, gid = throwaway_user.pw_uid, throwaway_user.pw_gid
    mine = sudo_world.root / "mine"  # the user's own space: it may rename anything in it
    mine.mkdir()
    os.chown(mine, uid, gid)
    project = mine / "project"
    project.mkdir()
    os.chown(project, uid, gid)
    run = mine / "run"
    env = {**sudo_world.env, "AEGIS_RUNTIME_DIR": str(run)}
    victim_dir = Path(tempfile.mkdtemp(prefix="aegis-victim-"))
    precious = victim_dir / "precious"
    precious.write_text("precious\n")
    secret = f"TOP-SECRET-{secrets.token_hex(8)}"
    secret_json = victim_dir / "secret.json"
    secret_json.write_text(json.dumps({"mcpServers": {"leak": {"command": secret}},
                                       "apiKey": secret}))
    for path in (precious, secret_json):
        os.chmod(path, 0o600)
    try:
        yield Attack(FakeAgentWorld(sudo_world.root, sudo_world.state, env), throwaway_user,
                     run, project, Victim(victim_dir, precious, secret_json, secret))
    finally:
        shutil.rmtree(victim_dir, ignore_errors=True)


def finish(child: pexpect.spawn) -> None:
    child.sendline("exit 0")
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == 0


# What the supervisor creates in its runtime directory, by supervisor pid: today's names and
# the temporary names of earlier versions.
NAMES = ("supervisor-{pid}.sock", "mcp-overlay-{pid}.json", "mcp-overlay-{pid}.tmp",
         "config-overlay-{pid}-0.json", "config-overlay-{pid}-0.tmp", "netmon-{pid}.jsonl",
         "netmon-{pid}.jsonl.summary.json")

PLANT_SYMLINKS = """
import os, sys
pid, run, target = sys.argv[1:]
os.makedirs(run, mode=0o700, exist_ok=True)
for name in {names!r}:
    os.symlink(target, os.path.join(run, name.format(pid=pid)))
"""


@pytest.mark.parametrize("injection", ["mcp-config", "preload"])
def test_symlinks_planted_before_the_start_lead_nowhere(attack: Attack, injection: str) -> None:
    Path(attack.world.env["AEGIS_CONFIG"]).write_text(
        fake_profile(script=Path(attack.world.root, "fake_agent.py"), injection=injection)
        + 'config_files = [".mcp.json"]\n')
    plant = PLANT_SYMLINKS.format(names=NAMES).replace(
        "pid, run, target = sys.argv[1:]",
        f"pid, run, target = sys.argv[1], {str(attack.run)!r}, {str(attack.victim.precious)!r}")
    child = attack.spawn("--netmon=preload", "fake", "--behaviour", "read-mcp-json",
                         plant=plant)
    attack.started(child)
    pid = child.pid

    def injected(start: int) -> None:
        if injection == "mcp-config":
            attack.mcp_seen(pid)
        else:  # the agent read its .mcp.json through libc and got the overlay
            assert attack.world.wait_starts(start + 1)[start]["mcp_json"] == ["aegis-mcp"]

    injected(0)
    child.sendline("restart after the attack|go on")
    child.expect("READY")
    assert attack.world.wait_starts(2)[1]["resume"] is True
    injected(1)
    attack.victim.untouched()
    for name in ("supervisor-{pid}.sock", "netmon-{pid}.jsonl"):
        st = (attack.run / name.format(pid=pid)).lstat()
        assert st.st_uid == attack.user.pw_uid and not stat.S_ISLNK(st.st_mode)
    overlay = attack.run / (f"mcp-overlay-{pid}.json" if injection == "mcp-config"
                            else f"config-overlay-{pid}-0.json")
    assert overlay.lstat().st_uid == attack.user.pw_uid and not overlay.is_symlink()
    finish(child)
    attack.victim.untouched()


def test_hard_links_planted_before_the_start_are_replaced(attack: Attack) -> None:
    """With fs.protected_hardlinks=0 a user may hard-link a root file into its directory; the
    test (root) makes those links for it."""
    attack.as_attacker(f"import os; os.makedirs({str(attack.run)!r}, mode=0o700)")
    marker = attack.run / "pid"
    # The pid is known only once the wrapper runs: it writes it, then waits for the links.
    wait = ("import sys, os, time\n"
            f"open({str(marker)!r}, 'w').write(sys.argv[1])\n"
            f"while not os.path.exists({str(attack.run / 'linked')!r}): time.sleep(0.02)\n")
    child = attack.spawn("--netmon=preload", "fake", plant=wait)
    pid = int(wait_for(lambda: marker.exists() and marker.read_text(), 20,  # type: ignore[arg-type]
                       "the pid"))
    for name in NAMES:
        os.link(attack.victim.precious, attack.run / name.format(pid=pid))
    (attack.run / "linked").touch()
    attack.started(child)
    attack.mcp_seen(pid)
    child.sendline("restart after the links|go on")
    child.expect("READY")
    attack.mcp_seen(pid)
    # The names in use were replaced, not written through.
    for name in ("supervisor-{pid}.sock", "mcp-overlay-{pid}.json", "netmon-{pid}.jsonl"):
        assert not os.path.samefile(attack.run / name.format(pid=pid), attack.victim.precious)
    attack.victim.untouched()
    finish(child)


RACE = """
import os, sys, time
run, target, pid, seconds = sys.argv[1:]
with open(os.path.join(run, f"netmon-{pid}.jsonl"), "a") as log:  # so the summary refreshes
    log.write('{"event": "connect", "t": 1.0, "pid": 1, "fd": 3, "peer": "127.0.0.1:9"}\\n')
# Swapped in under the supervisor's feet, again and again: the overlay once (a restart must
# replace it), the old temporary overlay name and the netmon summary in a loop, to win any
# check-then-use window (root chowning the summary by name after a refresh, say).
names = ["mcp-overlay-{pid}.json"] + ["mcp-overlay-{pid}.tmp",
                                      "netmon-{pid}.jsonl.summary.json"] * 1000000
end = time.monotonic() + float(seconds)
for name in names:
    if time.monotonic() > end:
        break
    path = os.path.join(run, name.format(pid=pid))
    try:
        os.symlink(target, path + ".swap")
        os.replace(path + ".swap", path)
    except OSError:
        pass
"""


def test_names_swapped_during_restarts_and_summary_refreshes(attack: Attack) -> None:
    child = attack.spawn("--netmon=preload", "fake")
    attack.started(child)
    pid = child.pid
    attack.mcp_seen(pid)
    summary = attack.run / f"netmon-{pid}.jsonl.summary.json"
    # NETMON_REFRESH_SECONDS is 5: the race spans at least one refresh, and a restart.
    attack.as_attacker(RACE, str(attack.run), str(attack.victim.precious), str(pid), "0")
    race = subprocess.Popen(
        ["setpriv", f"--reuid={attack.user.pw_uid}", f"--regid={attack.user.pw_gid}",
         "--init-groups", sys.executable, "-c", RACE.replace('["mcp-overlay-{pid}.json"] + ',
                                                             ""),
         str(attack.run), str(attack.victim.precious), str(pid), "7"], cwd="/")
    try:
        child.sendline("restart during the race|go on")
        restarted = child.expect(["READY", pexpect.EOF], timeout=60) == 0
        race.wait(timeout=60)
    finally:
        if race.poll() is None:
            race.kill()
    attack.victim.untouched()
    assert restarted, f"the agent did not restart: {child.before[-300:]!r}"
    # After the race: the product still works, with files of the user's own.
    attack.as_attacker(RACE, str(attack.run), str(attack.victim.precious), str(pid), "0")
    wait_for(lambda: summary.exists() and not summary.is_symlink(), 30,
             "the netmon summary refreshed over the swapped-in link")
    assert json.loads(summary.read_text())
    child.sendline("restart after the race|go on")
    child.expect("READY")
    attack.mcp_seen(pid)
    overlay = attack.run / f"mcp-overlay-{pid}.json"
    assert not overlay.is_symlink() and overlay.lstat().st_uid == attack.user.pw_uid
    finish(child)
    attack.victim.untouched()


def test_runtime_directory_replaced_by_a_symlink(attack: Attack) -> None:
    attack.as_attacker(f"import os; os.symlink({str(attack.victim.dir)!r}, {str(attack.run)!r})")
    out = subprocess.run([aegis_bin(), "fake"], env=attack.world.env, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=attack.project)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert str(attack.run) in out.stderr and "not a directory" in out.stderr
    attack.victim.untouched()
    assert attack.world.starts() == []
    # The user puts it right; the product works.
    attack.as_attacker(f"import os; os.unlink({str(attack.run)!r})")
    child = attack.spawn("fake")
    attack.started(child)
    attack.mcp_seen(child.pid)
    # Swapped for a symlink while the agent runs: the next start fails with one line, as
    # the user (never root) tried to write there.
    attack.as_attacker(
        "import os, sys; run, target = sys.argv[1:]; os.rename(run, run + '.old'); "
        "os.symlink(target, run)", str(attack.run), str(attack.victim.dir))
    pid = child.pid
    attack.as_attacker(  # the socket moved with the directory; it still answers there
        "import json, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        "s.sendall(json.dumps({'op': 'restart', 'reason': 'into the symlink'}).encode() + b'\\n');"
        " s.recv(4096)", str(attack.run) + f".old/supervisor-{pid}.sock")
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == 1
    assert "cannot write the MCP overlay" in child.before
    attack.victim.untouched()


def test_config_files_linked_to_root_only_files_do_not_leak(attack: Attack) -> None:
    home = Path(attack.user.pw_dir)
    Path(attack.world.env["AEGIS_CONFIG"]).write_text(
        fake_profile(script=Path(attack.world.root, "fake_agent.py"), injection="preload")
        + 'config_files = [".mcp.json", "~/.fakeagent/settings.json"]\n')
    attack.as_attacker(
        "import os, sys; project, home, target = sys.argv[1:]\n"
        "os.symlink(target, os.path.join(project, '.mcp.json'))\n"
        "os.makedirs(os.path.join(home, '.fakeagent'), exist_ok=True)\n"
        "os.symlink(target, os.path.join(home, '.fakeagent', 'settings.json'))\n",
        str(attack.project), str(home), str(attack.victim.secret_json))
    try:
        child = attack.spawn("fake", "--behaviour", "read-mcp-json")
        attack.started(child)
        start = attack.world.starts()[0]
        assert start["mcp_json"] == ["aegis-mcp"]  # our server, and nothing of root's file
        attack.no_leak()
        attack.victim.untouched()
        finish(child)
    finally:
        shutil.rmtree(home / ".fakeagent", ignore_errors=True)


SHADOWED = ("contextlib", "json", "socket", "selectors", "signal", "struct", "argparse",
            "enum", "typing", "functools", "os")


@pytest.fixture
def shadowed(attack: Attack) -> Iterator[Path]:
    """Standard-library modules shadowed in the project directory: each, if imported, leaves
    a marker named for the module and the uid that imported it."""
    markers = Path(tempfile.mkdtemp(prefix="aegis-markers-"))
    os.chmod(markers, 0o777)
    for name in SHADOWED:
        code = (f"import os\nopen(os.path.join({str(markers)!r}, '{name}-' + str(os.getuid())), "
                "'w').close()\n")
        (attack.project / f"{name}.py").write_text(code)
        os.chown(attack.project / f"{name}.py", attack.user.pw_uid, attack.user.pw_gid)
    try:
        yield markers
    finally:
        shutil.rmtree(markers, ignore_errors=True)


@pytest.mark.parametrize("mode", ["preload", "netns"])
def test_shadowed_stdlib_in_the_project_is_never_imported(attack: Attack, shadowed: Path,
                                                          mode: str) -> None:
    child = attack.spawn(f"--netmon={mode}", "fake")
    started = child.expect(["READY", pexpect.EOF], timeout=60) == 0
    assert sorted(p.name for p in shadowed.iterdir()) == []
    assert started, f"the agent did not start: {child.before[-300:]!r}"
    status = attack.mcp_seen(child.pid)
    assert status["netmon_mode"] == mode
    if mode == "netns":
        listed = subprocess.run([aegis_bin(), "netns", "list", "--json"], capture_output=True,
                                text=True, timeout=60, env=attack.world.env, cwd="/")
        rows = json.loads(listed.stdout)["namespaces"]
        row = next(r for r in rows if r["name"] == status["netns"])
        assert row["capture_alive"] is True
    child.sendline("restart shadowed|go on")
    child.expect("READY", timeout=60)
    attack.mcp_seen(child.pid)
    finish(child)
    assert sorted(p.name for p in shadowed.iterdir()) == []


def test_the_working_directory_swapped_for_a_symlink_into_roots_files(attack: Attack) -> None:
    """The agent's working directory is entered as the user: root following a symlink swapped
    in at its path would hand the agent a directory inside one closed to it (and, through
    relative paths, what lies below)."""
    closed = Path(tempfile.mkdtemp(prefix="aegis-closed-"))  # 0700, root's
    inside = closed / "open"  # itself open, but under the closed one
    inside.mkdir()
    os.chmod(inside, 0o755)
    try:
        child = attack.spawn("fake")
        attack.started(child)
        attack.as_attacker(
            "import os, sys; project, target = sys.argv[1:]; "
            "os.rename(project, project + '.old'); os.symlink(target, project)",
            str(attack.project), str(inside))
        child.sendline("restart into roots directory")
        child.expect(pexpect.EOF, timeout=60)
        child.close()
        cwds = [s["cwd"] for s in attack.world.starts()]
        assert not any(c.startswith(str(closed)) for c in cwds), cwds
        assert child.exitstatus != 0  # the user cannot enter it: the agent does not start
        # The user puts it back; the product works.
        attack.as_attacker("import os, sys; p = sys.argv[1]; os.unlink(p); "
                           "os.rename(p + '.old', p)", str(attack.project))
        again = attack.spawn("fake")
        attack.started(again)
        finish(again)
    finally:
        shutil.rmtree(closed, ignore_errors=True)
