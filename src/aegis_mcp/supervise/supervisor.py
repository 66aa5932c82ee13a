"""The supervisor: runs one agent in the user's terminal and restarts it on request.

Reads like tini's main: resolve the agent and who runs it, become a child subreaper, open the
control socket, start the agent, then loop on one event at a time (a child changed state, a
control request, a watched file, a signal) until the agent ends for good. Every way out (the
agent exits, Ctrl-C of a non-interactive run, SIGTERM or SIGHUP of the supervisor, a restart
storm) goes through one shutdown path that stops the tree and restores the terminal.

Longer than the house's 400 lines on purpose: the loop, the start and restart of the agent,
the control requests it answers meanwhile and the shutdown share one state (the run, the
phase, the pending restart) whose transitions read best in one place. What is not that state
machine lives elsewhere: the options (options), file watching (watch), the netmon mode
(netmon.mode), the namespace's forwards (netns.plan), what a start can verify
(mcp.injection), the agent's environment policy (agentenv).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis_mcp import __version__, agentenv, procs
from aegis_mcp.errors import AegisError
from aegis_mcp.launch import python_command
from aegis_mcp.mcp import injection
from aegis_mcp.mcp.warm import WarmServer
from aegis_mcp.mcp.warm import socket_path as warm_socket_path
from aegis_mcp.netmon.mode import resolve_mode
from aegis_mcp.paths import (
    hooks_library,
    hooks_library_missing,
    runtime_dir,
    runtime_file,
    user_runtime_dir,
    working_file_owner,
)
from aegis_mcp.privileges import (
    User,
    agent_user,
    as_user,
    check_user_can_run,
    fds_as_user,
    root_notice,
)
from aegis_mcp.profiles import argv as agentargs
from aegis_mcp.profiles import session
from aegis_mcp.profiles import version as agentversion
from aegis_mcp.profiles.profile import (
    AgentProfile,
    Config,
    generic_profile,
    get_profile,
    load_config,
    user_bin_dirs,
)
from aegis_mcp.signals import SignalInbox
from aegis_mcp.supervise import control, ptymonitor
from aegis_mcp.supervise.options import SupervisorOptions
from aegis_mcp.supervise.ptyrelay import PtyRelay
from aegis_mcp.supervise.terminal import Terminal
from aegis_mcp.supervise.watchdog import Watchdog

if TYPE_CHECKING:  # imported when their feature is on: every start pays for the rest
    from aegis_mcp.mcp.codex import ReadinessWatch
    from aegis_mcp.netmon import policy as netpolicy
    from aegis_mcp.netns.namespace import Namespace
    from aegis_mcp.netns.state import State as NetnsState
    from aegis_mcp.supervise.watch import FileWatch

# Variables never passed through to the agent: another supervisor's, or an agent session's
# (an inherited CLAUDECODE=1 makes claude refuse to start as a nested session).
NETMON_REFRESH_SECONDS = 5.0
"""How often the supervisor brings the netmon summary up to date (when the log grew), so that
netmon_status stays fast however long the log gets."""
# A resumed agent that fails this soon had nothing to resume (claude --continue exits at once
# in a directory without a conversation, with status 1): start it fresh instead. Not when it
# ended by a signal or with 128+N: that is the user's Ctrl-C, to be honoured.
RESUME_CHECK_SECONDS = 5.0
_FORWARDED = (signal.SIGINT, signal.SIGQUIT)
_SHUTDOWN = (signal.SIGTERM, signal.SIGHUP)


def say(message: str) -> None:
    """One line to the user, on stderr, prefixed like every aegis-mcp message."""
    with contextlib.suppress(OSError):
        sys.stderr.write(f"aegis-mcp: {message}\r\n" if sys.stderr.isatty() else
                         f"aegis-mcp: {message}\n")
        sys.stderr.flush()


@dataclass
class RestartRequest:
    reason: str
    prompt: str | None
    due: float


@dataclass
class AgentRun:
    """One start of the agent."""

    proc: subprocess.Popen[bytes]
    """The child the supervisor waits for: the agent, or its terminal's session leader
    (ptymonitor.py), which mirrors the agent's stops and end."""
    argv: list[str]
    started: float
    resumed: bool
    prompt: str | None
    pgid: int
    """The agent's pid and process group: what signals go to."""
    status: int | None = None  # raw wait status once reaped
    mcp_servers: list[dict[str, Any]] = field(default_factory=list)
    """aegis-mcp MCP servers that said hello during this start: the injection worked."""
    session_id: str | None = None
    """The agent's own conversation: the id this start named or resumed, then what its
    session hook last reported (a `/clear` starts a new one); None when not known."""


@dataclass
class Supervisor:
    profile: AgentProfile
    executable: str
    opts: SupervisorOptions
    user: User | None = None
    cwd: Path = field(default_factory=Path.cwd)
    network_rules: list[netpolicy.Rule] = field(default_factory=list)
    """The user's network policy rules (flags, config, policy files); none: no policy."""
    # Made by _setup, before anything that needs cleaning up (main runs _shutdown only once
    # _setup has succeeded):
    pid: int = field(init=False)
    runtime: Path = field(init=False)
    control: control.ControlServer = field(init=False)
    terminal: Terminal = field(init=False)
    selector: selectors.BaseSelector = field(init=False)
    inbox: SignalInbox = field(init=False)
    watch: FileWatch | None = None
    """Restarts the agent when files change (--watch), while on."""
    restart_times: deque[float] = field(default_factory=deque)
    restart_count: int = 0
    last_reason: str | None = None
    last_restart_at: float | None = None
    started_at: float = field(default_factory=time.time)
    netmon_mode: str | None = None
    netmon_log: Path | None = None
    namespace: Namespace | None = None
    """The agent's network namespace (--netmon=netns); made in main, before the first start."""
    policy: netpolicy.Policy | None = None
    policy_file: Path | None = None
    """The compiled network policy, beside the netmon log; written in main, before the first
    start (its implicit allows need the namespace's resolver in netns mode)."""
    run: AgentRun | None = None
    pending: RestartRequest | None = None
    injection: injection.Injection | None = None
    warm: WarmServer | None = None
    """The warm MCP server that the agent's aegis-mcp servers relay to (see _start_warm)."""
    relay: PtyRelay | None = None
    """The agent's own terminal, while one is relayed (see _uses_pty)."""
    watchdog: Watchdog | None = None
    agent_start: int = 0
    """Which start of the agent this is (1, 2, ...): its MCP servers get it as
    AEGIS_AGENT_START and say it in their hello, so a late hello of an older start's server
    is never counted for this one."""
    phase: str = "running"
    """What the supervisor is doing besides running the agent: `restarting` (the stop and the
    start of a restart), `ending` (the agent ended on its own; its leftovers are stopped) or
    `shutdown` (the supervisor ends). The control socket answers in every phase."""
    restarting: RestartRequest | None = None
    """The restart in progress (phase `restarting`): later requests join it."""
    readiness: ReadinessWatch | None = None
    """This start's wait for the user's MCP servers (codex), while one is on."""
    _said_latest: bool = False
    _netmon_seen: tuple[int, int] = (0, 0)
    _netmon_next: float = 0.0

    # -- setup ------------------------------------------------------------------------------

    def _setup(self) -> None:
        """Everything before the first start; all checks that can fail come before anything
        that would need cleaning up (the socket, the signal handlers)."""
        from aegis_mcp.pathcheck import check_path

        for path in self.opts.watch:
            check_path(path, "--watch", exit_code=1)
        self.pid = os.getpid()
        self.runtime = runtime_dir() if self.user is None else user_runtime_dir(self.user)
        self.netmon_mode = resolve_mode(self.opts.netmon, self.profile, self.executable,
                                        self.user, say, policy=bool(self.network_rules))
        if self.netmon_mode is not None:
            self.netmon_log = runtime_file(self.runtime, "netmon_log", self.pid)
        if self.network_rules:
            self.policy_file = runtime_file(self.runtime, "netmon_policy", self.pid)
        missing = hooks_library_missing() if self.profile.injection == "preload" else None
        if self.opts.inject_mcp and missing:
            # An LD_PRELOAD of a missing file would only make ld.so complain in every process.
            say(f"{self.profile.name} starts without aegis-mcp's MCP server (it is given to "
                f"{self.profile.name} through LD_PRELOAD): {missing}")
            self.opts = replace(self.opts, inject_mcp=False)
        if self.user is not None and (self.opts.inject_mcp or self.netmon_mode == "preload"):
            check_user_can_run(self.user, [hooks_library()] if self._needs_preload() else [])
        if self.user is not None and not as_user(self.user, _can_enter, str(self.cwd)):
            raise AegisError(f"user {self.user.name} cannot enter {self.cwd}, where the agent "
                             "would run: start aegis-mcp from a directory that user can reach")
        as_user(self.user, _remove_stale_files, str(self.runtime))
        if self.netmon_mode == "preload":  # the hooks append to it: a fresh file of the user's
            from aegis_mcp.netmon.log import open_log

            for fd in fds_as_user(self.user, open_log, str(self.netmon_log)):
                os.close(fd)
        procs.set_child_subreaper()
        allowed = {os.geteuid(), 0} | ({self.user.uid} if self.user else set())
        self.control = control.ControlServer(control.socket_path(self.runtime, self.pid),
                                             allowed, self.user)
        try:  # now: before any thread and the agent, after what can fail
            self.watchdog = Watchdog.start(self.pid, self.control.path, self.opts.restart_grace,
                                           netns=self.netmon_mode == "netns")
        except AegisError as exc:
            say(f"{exc}: a kill -9 of aegis-mcp would leave the agent running")
        self.terminal = Terminal.from_stdin()
        self.selector = selectors.DefaultSelector()
        self.inbox = SignalInbox((*_FORWARDED, *_SHUTDOWN, signal.SIGWINCH),
                                 wake_only=(signal.SIGCHLD,))
        self.selector.register(self.inbox, selectors.EVENT_READ, "signal")
        self.selector.register(self.control.sock, selectors.EVENT_READ, "accept")

    def _needs_preload(self) -> bool:
        return self.netmon_mode == "preload" or (
            self.opts.inject_mcp and self.profile.injection == "preload")

    # -- the agent ----------------------------------------------------------------------------

    def _agent_env(self) -> tuple[dict[str, str], dict[str, str]]:
        """The environment of the agent's processes (the warm server's too), and the part of
        it that aegis-mcp's MCP server needs."""
        env = agentenv.inherited(os.environ, str(hooks_library()))
        if self.user is not None:
            env = self.user.agent_env(env)
            env["AEGIS_RUNTIME_DIR"] = str(self.runtime)
        server_env = {"AEGIS_CONTROL": str(self.control.path),
                      "AEGIS_SUPERVISOR_PID": str(self.pid)}
        env.update(server_env)
        env["AEGIS_AGENT"] = self.profile.name
        path = agent_path(env.get("PATH", os.defpath), self.executable, self.user)
        if path != env.get("PATH", os.defpath):
            env["PATH"] = path
        if self.netmon_log is not None:
            env["AEGIS_NETMON_LOG"] = str(self.netmon_log)
            server_env["AEGIS_NETMON_LOG"] = str(self.netmon_log)
            # netns: the hooks (loaded for the config redirect only) must not record as well
            env["AEGIS_NETMON_MODE"] = server_env["AEGIS_NETMON_MODE"] = str(self.netmon_mode)
        if self.policy_file is not None:
            from aegis_mcp.netmon.policy import ENV_VAR

            env[ENV_VAR] = server_env[ENV_VAR] = str(self.policy_file)
        return env, server_env

    def _prepare_start(self) -> dict[str, str]:
        """Make ready one start of the agent: count it, write its MCP overlays (the last
        start's go) and return its environment."""
        env, server_env = self._agent_env()
        self.agent_start += 1
        env["AEGIS_AGENT_START"] = server_env["AEGIS_AGENT_START"] = str(self.agent_start)
        if self.injection is not None:
            self.injection.cleanup()
        self.injection = None
        if self.opts.inject_mcp:
            try:
                self.injection = injection.prepare(
                    self.profile, self.runtime, self.pid, server_env, self.cwd,
                    env.get("HOME", str(Path.home())), self.user,
                    warm=self.warm.path if self.warm is not None else None,
                    agent_args=self.opts.agent_args, ready_timeout=self.opts.mcp_ready_timeout,
                    codex_home=env.get("CODEX_HOME"))
            except OSError as exc:
                raise AegisError(f"cannot write the MCP overlay in {self.runtime}: "
                                 f"{exc.strerror or exc}; check that it is your own private "
                                 "directory, or pass --no-inject-mcp") from None
            env.update(self.injection.env)
        self.readiness = None
        if self.injection is not None and self.injection.awaited \
                and not agentargs.is_subcommand(self.profile, self.opts.agent_args):
            from aegis_mcp.mcp.codex import ReadinessWatch

            self.readiness = ReadinessWatch(self.agent_start, tuple(self.injection.awaited),
                                            time.monotonic() + self.opts.mcp_ready_timeout)
        if self._needs_preload():
            lib = str(hooks_library())
            env["LD_PRELOAD"] = " ".join([lib, *env.get("LD_PRELOAD", "").split()])
        return env

    def _session_for(self, resume: bool) -> str | None:
        """The session a start resumes (the last one's own) or, fresh, names: a new id when
        the profile can name one and the user chose none, else the one the user chose."""
        user_args = self.opts.agent_args
        if resume:
            return self.run.session_id if self.run else None
        if session.names_own_session(self.profile, user_args):
            return session.new_id()
        return session.user_id(self.profile, user_args)

    def _spawn(self, resume: bool, prompt: str | None) -> None:
        self._start_warm()
        env = self._prepare_start()
        user_args = self.opts.agent_args
        subcommand = agentargs.is_subcommand(self.profile, user_args)
        if self.injection is not None and self.injection.replaces and not subcommand:
            user_args = agentargs.without_options(self.profile, user_args,
                                                  self.injection.replaces)
        sid = None if subcommand else self._session_for(resume)
        inject_args = [*(self.injection.args if self.injection else []),
                       *session.hook_args(self.profile, user_args, known=sid is not None),
                       *self._history_args()]
        named = sid if not resume and session.names_own_session(self.profile, user_args) \
            else None
        if resume:
            argv = agentargs.restart_argv(self.profile, self.executable, user_args,
                                          inject_args, prompt, session=sid)
        elif prompt is not None:  # a fresh start after a failed resume keeps the prompt
            argv = agentargs.restart_argv(self.profile, self.executable, user_args,
                                          inject_args, prompt, resume=False, session=named)
        else:
            argv = agentargs.first_argv(self.profile, self.executable, user_args,
                                        inject_args, session=named)
        command, cwd, drop = self._as_agent(argv, env)
        if self._uses_pty():
            self.relay = PtyRelay(self.terminal)
            try:
                proc, pgid = ptymonitor.start(command, env, cwd, drop, self.relay.stdio(),
                                              idle=self._serve_ready)
            except BaseException:
                self.relay.close()
                self.relay = None
                raise
            self.relay.started()
            self.selector.register(self.relay, selectors.EVENT_READ, "relay")
            self.terminal.set_raw()
            self.run = AgentRun(proc, argv, time.monotonic(), resume, prompt, pgid,
                                session_id=sid)
            return
        kwargs: dict[str, Any] = {}
        if drop is not None:
            kwargs = {"user": drop.uid, "group": drop.gid, "extra_groups": list(drop.groups)}
        # Under another identity and with no terminal to relay: a session of its own, with
        # no controlling terminal at all (no /dev/tty, no TIOCSTI into ours).
        if self.user is not None:
            kwargs["start_new_session"] = True
        else:
            kwargs["process_group"] = 0
        try:
            proc = subprocess.Popen(command, env=env, cwd=cwd, close_fds=True, **kwargs)
        except OSError as exc:
            raise AegisError(f"cannot start {argv[0]}: {exc.strerror}",
                             126 if isinstance(exc, PermissionError) else 127) from None
        # The child is in its own group before exec; giving it the terminal here, right after,
        # leaves a window where an early tcsetattr stops it with SIGTTOU: the reaper sees that
        # stop and continues it (see _child_stopped).
        self.terminal.give_to(proc.pid)
        self.run = AgentRun(proc, argv, time.monotonic(), resume, prompt, proc.pid,
                            session_id=sid)

    def _as_agent(self, argv: list[str], env: dict[str, str]
                  ) -> tuple[list[str], Path, User | None]:
        """How `argv` runs as the agent does (its identity, directory and namespace): the
        command, the directory to start it from, and the user the spawn drops to (None when
        the command drops by itself). `env` loses what must be set only after the drop."""
        drop = self.user
        # What `env` does once the identity is the user's. The working directory: entered as
        # root, a symlink swapped in at its path would hand the agent a directory it could
        # not reach itself. In netns mode the hooks library too: `ip netns exec` and `setpriv`
        # run as root without it.
        after_drop = [f"--chdir={self.cwd}"] if self.user is not None else []
        cwd = Path("/") if self.user is not None else self.cwd
        prefix: list[str] = []
        if self.namespace is not None:
            user = self.user
            if "LD_PRELOAD" in env:
                after_drop.append(f"LD_PRELOAD={env.pop('LD_PRELOAD')}")
            prefix = self.namespace.exec_prefix(
                user.uid if user else 0, user.gid if user else 0,
                list(user.groups) if user else [0])
            drop = None
        command = [*prefix, *([shutil.which("env") or "/usr/bin/env", *after_drop]
                              if after_drop else []), *argv]
        return command, cwd, drop

    def _start_warm(self) -> None:
        """The warm MCP server (mcp.warm) for the agent's starts, when it gets ours at all;
        again at a start after it ended. Without it, relays start the server cold."""
        if not self.opts.inject_mcp or self.profile.injection == "none":
            return
        if self.warm is not None:
            if self.warm.alive:
                return
            say(f"the warm MCP server ended (status {self.warm.status}): starting it again")
            self._forget_warm()
        env, _ = self._agent_env()
        path = warm_socket_path(self.runtime, self.pid)
        # Bound here, as the agent's user, and handed over: the socket is there before the
        # agent starts, so its relay never finds it missing (it waits in the backlog while
        # the server imports), however slowly the server's Python starts on a busy machine.
        try:
            (fd,) = fds_as_user(self.user, control.bind_socket, str(path),
                                "the warm MCP server's socket", 64)
        except AegisError as exc:
            say(f"{exc}: the agent's aegis-mcp server starts cold")
            return
        command, cwd, drop = self._as_agent(
            python_command("aegis_mcp.mcp.warm", str(path), str(fd)), env)
        try:
            self.warm = WarmServer.start(command, env, cwd, drop, path, fd)
        except OSError as exc:
            say(f"cannot start the warm MCP server ({exc.strerror or exc}): the agent's "
                "aegis-mcp server starts cold")
            with contextlib.suppress(OSError, AegisError):
                as_user(self.user, control.unlink_socket, str(path))
        finally:
            os.close(fd)

    def _forget_warm(self) -> None:
        warm, self.warm = self.warm, None
        if warm is None:
            return
        warm.stop()
        with contextlib.suppress(OSError, AegisError):  # the server removes it, unless killed
            as_user(self.user, control.unlink_socket, str(warm.path))

    def _uses_pty(self) -> bool:
        """A terminal of its own for an agent under another identity (sudo's use_pty): in
        ours it could push input to root's shell (TIOCSTI)."""
        return self.user is not None and self.terminal.interactive

    def _end_relay(self) -> None:
        """The agent's terminal goes, after what it printed on its way out; ours back to its
        saved modes."""
        relay, self.relay = self.relay, None
        if relay is None:
            return
        relay.flush(timeout=2.0, quiet=0.1, until_eof=True)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(relay)
        relay.close()
        self.terminal.restore_modes()

    def _agent_alive(self) -> bool:
        return self.run is not None and self.run.status is None

    # -- events -------------------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | os.WUNTRACED)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.warm is not None and pid == self.warm.proc.pid:
                self.warm.status = status
                continue
            run = self.run
            if run is None or pid != run.proc.pid:
                continue  # an orphan of the agent's tree, re-parented to us
            if os.WIFSTOPPED(status):
                self._child_stopped(os.WSTOPSIG(status))
                continue
            run.status = status
            run.proc.returncode = os.waitstatus_to_exitcode(status)
            if self.relay is not None:
                self.relay.stop_input()  # its unread input is never anyone else's

    def _child_stopped(self, sig: int) -> None:
        assert self.run is not None
        pgid = self.run.pgid
        if self.relay is not None:
            # Ctrl-Z in the agent's own terminal (its monitor stopped with it): the same as
            # below, with our terminal back in its own modes while we are stopped.
            self.relay.flush(timeout=0.5)
            self.terminal.restore_modes()
            os.kill(os.getpid(), signal.SIGSTOP)
            self.terminal.set_raw()
            self.relay.resize()  # it may have changed while we were stopped
            procs.killpg(pgid, signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.run.proc.pid, signal.SIGCONT)
            return
        if sig in (signal.SIGTTOU, signal.SIGTTIN):  # touched the terminal before it was given
            self.terminal.give_to(pgid)
            procs.killpg(pgid, signal.SIGCONT)
            return
        if not self.terminal.interactive:
            return  # stopped by someone else's SIGSTOP/SIGTSTP: theirs to continue
        # Ctrl-Z: the agent stopped; stop ourselves too so the shell sees the job stopped,
        # and when it continues us (`fg`), hand the terminal back and continue the agent.
        self.terminal.take_back()
        os.kill(os.getpid(), signal.SIGSTOP)
        self.terminal.give_to(pgid)
        procs.killpg(pgid, signal.SIGCONT)

    def _wait(self, timeout: float) -> None:
        """Block up to `timeout` for a signal (kept in the inbox for the loop), reap. What must
        go on at every moment goes on meanwhile: the relay, so an agent printing on its way
        out is not blocked, and the control socket, so a stop's grace periods never leave a
        request unanswered."""
        for key, _ in self.selector.select(timeout):
            self._serve(key)
        self._reap()

    def _serve_ready(self) -> None:
        """Serve what is ready now, without waiting (a connection takes two rounds: accept,
        then its request)."""
        for _ in range(64):  # bounded: a flood of connections must not hold up the restart
            ready = self.selector.select(0)
            if not ready:
                return
            for key, _ in ready:
                self._serve(key)

    def _serve(self, key: selectors.SelectorKey) -> None:
        """One ready event of the selector, in the loop or inside a stop (_wait). Signals stay
        in the inbox for the loop."""
        kind = key.data
        if kind == "signal":
            self.inbox.clear()
        elif kind == "accept":
            conn = self.control.accept()
            if conn is not None:
                self.selector.register(conn, selectors.EVENT_READ, "conn")
        elif kind == "conn":
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            fd = conn.fileno()
            if self.control.read(conn, self._handle_control):
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(fd)
        elif kind == "relay":
            if self.relay is not None:
                self.relay.pump()
        elif kind == "watch":
            assert self.watch is not None
            changed = self.watch.changed()
            # A change during a restart is seen by the agent it starts; once the supervisor
            # ends, there is nothing to restart.
            if self.pending is None and self.phase == "running":
                self.pending = RestartRequest(f"files changed: {changed}", None,
                                              time.monotonic())

    def _handle_control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            self._learn_session()
            return {"ok": True, "status": self.status()}
        if op == "restart":
            reason = str(request.get("reason") or "requested")[:500]
            prompt = request.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                return {"ok": False, "error": "prompt must be a string"}
            delay = request.get("delay", 0)
            if not isinstance(delay, int | float) or isinstance(delay, bool) \
                    or not 0 <= delay <= 10:
                return {"ok": False, "error": "delay must be a number of seconds from 0 to 10"}
            return self._request_restart(reason, prompt or None, float(delay))
        if op == "hello":
            return {"ok": True, "counted": self._hello(request)}
        if op == "session":  # from the agent's session hook (session.py)
            sid = request.get("session_id")
            if not session.valid_id(sid):
                return {"ok": False, "error": "session_id must be a session id"}
            if self.run is not None and self.run.status is None:
                self.run.session_id = sid
            return {"ok": True}
        if op == "mcp_ready":  # from a wrapped MCP server of codex's (mcp/wrap.py)
            counted = self.readiness is not None and self._agent_alive() and \
                self.readiness.report(request.get("start"), request.get("name"),
                                      request.get("state"))
            return {"ok": True, "counted": counted}
        if op == "ping":
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r} (known: status, restart, hello, "
                "session, mcp_ready, ping)"}

    def _request_restart(self, reason: str, prompt: str | None, delay: float
                         ) -> dict[str, Any]:
        """Record a restart request (it is acknowledged only once recorded): a new one, or
        joined to the one pending or in progress, so that requests that cross are one
        restart, never lost and never run twice."""
        if self.phase == "shutdown":
            raise AegisError(f"aegis-mcp is shutting down, and {self.profile.name} with it: "
                             f"start it again with `aegis-mcp {self.profile.name}`")
        joined = self.restarting if self.phase == "restarting" else self.pending
        note = ""
        if prompt is not None and not agentargs.takes_restart_prompt(self.profile,
                                                                     self.opts.agent_args):
            note = f" ({self.profile.name} takes no prompt on restart; the prompt is dropped)"
        elif prompt is not None and joined is not None and joined.prompt not in (None, prompt):
            # The agent starts with one prompt: the first one given
            note = " (that restart has a prompt of its own; this prompt is dropped)"
        if joined is None:
            self._learn_session()
            self.pending = RestartRequest(reason, prompt, time.monotonic() + delay)
            prefix, flags = agentargs.resume_words(
                self.profile, self.run.session_id if self.run else None)
            how = " ".join([*prefix, *flags])
            message = (f"{self.profile.name} will be stopped and started again"
                       f"{' with ' + how if how else ''} in {delay:g}s (reason: {reason})")
        else:
            joined.prompt = joined.prompt or prompt
            if joined is self.pending:  # every requester's delay is honoured (up to 10 s)
                joined.due = max(joined.due, time.monotonic() + delay)
            when = "in progress" if joined is self.restarting else "pending"
            message = (f"a restart of {self.profile.name} is already {when} (reason: "
                       f"{joined.reason}): this request (reason: {reason}) is part of it")
        # restart_count is raised only once the restart's stop is over: this is the next one
        return {"ok": True, "message": message + note, "restart_count": self.restart_count + 1,
                "coalesced": joined is not None, **self._verifiable()}

    def _hello(self, request: dict[str, Any]) -> bool:
        """An aegis-mcp MCP server is up: counted for the running start only when it carries
        that start's id (a late hello of the stopped agent's server, or one of a server that
        predates start ids, is not)."""
        run = self.run
        if run is None or not isinstance(request.get("pid"), int):
            return False
        if request.get("start") != self.agent_start or run.status is not None:
            return False
        run.mcp_servers.append({"pid": request["pid"], "ppid": request.get("ppid"),
                                "warm": request.get("warm") is True,
                                "after_s": round(time.monotonic() - run.started, 3)})
        del run.mcp_servers[:-20]
        return True

    def _verifiable(self) -> dict[str, Any]:
        """What `restart --wait` can verify of a start of this agent: always that it runs
        again; the aegis-mcp MCP server's hello only when the injection can make this agent
        start it. `cannot_verify` says why not, per item."""
        why = injection.unverifiable(self.profile, self.opts.inject_mcp)
        return {"verifiable": ["restarted"] + ([] if why else ["mcp_server"]),
                "cannot_verify": {"mcp_server": why} if why else {}}

    def status(self) -> dict[str, Any]:
        run = self.run
        now = time.monotonic()
        return {
            "supervisor_pid": self.pid,
            "supervisor_version": __version__,
            "supervisor_uptime_s": round(time.time() - self.started_at, 3),
            "agent": self.profile.name,
            "agent_pid": run.pgid if run and run.status is None else None,
            "agent_argv": run.argv if run else [],
            "agent_uptime_s": round(now - run.started, 3) if run and run.status is None
            else None,
            "agent_user": self.user.name if self.user else _current_user(),
            "cwd": str(self.cwd),
            "restart_count": self.restart_count,
            "last_restart_reason": self.last_reason,
            "last_restart_at": self.last_restart_at,
            "injection": self.injection.mechanism if self.injection else "disabled",
            "warm_mcp_server": {"pid": self.warm.proc.pid, "socket": str(self.warm.path)}
            if self.warm is not None and self.warm.alive else None,
            "agent_start": self.agent_start,
            "mcp_servers_seen": run.mcp_servers if run else [],
            # the user's own servers this start waits for (codex), and what each said
            "mcp_servers_awaited": {n: self.readiness.states.get(n) for n in
                                    self.readiness.awaited} if self.readiness else {},
            **self._verifiable(),
            "phase": "restart-pending" if self.phase == "running" and self.pending
            else self.phase,
            "session_id": run.session_id if run else None,
            "history_file": str(path) if (path := self._history_file()) else None,
            "netmon_mode": self.netmon_mode,
            "netmon_log": str(self.netmon_log) if self.netmon_log else None,
            # the compiled network policy (AEGIS_NETMON_POLICY), None when there is none
            "netmon_policy": str(self.policy_file) if self.policy else None,
            "netns": self.namespace.name if self.namespace else None,
            # host loopback services reachable from inside the namespace, at the same address
            "netns_forwards": self.namespace.state.forwards if self.namespace else [],
            # whether the agent may reach the host's own services (--netns-host-access)
            "netns_host_access": self.namespace.state.host_access if self.namespace else None,
            "watch": self.opts.watch,
            "control_socket": str(self.control.path),
        }

    # -- restart and shutdown -----------------------------------------------------------------

    def _helper_pids(self) -> tuple[int, ...]:
        """The supervisor's own children that are not the agent's (capture, watchdog, the
        warm MCP server)."""
        return (*(self.namespace.helper_pids if self.namespace else ()),
                *((self.warm.proc.pid,) if self.warm and self.warm.alive else ()),
                *(self.watchdog.pids if self.watchdog else ()))

    def _stop_agent(self, first_signal: int = signal.SIGINT) -> None:
        run = self.run
        procs.stop_tree(
            run.pgid if run else None, self._agent_alive, self._wait,
            self.opts.restart_grace, exclude=self._helper_pids(),
            log=say, first_signal=first_signal, interrupts=self.profile.interrupts)

    def _stop_and_reclaim(self) -> None:
        """Stop the agent's tree and put the terminal back as it was before the first start."""
        self._stop_agent()
        self._end_relay()
        self.terminal.take_back()
        self.terminal.restore()

    def _restart(self, req: RestartRequest) -> int | None:
        """Stop the agent and start it again; an exit status when the supervisor must end.
        Requests that arrive meanwhile join this restart (see _request_restart)."""
        now = time.monotonic()
        while self.restart_times and now - self.restart_times[0] > 60:
            self.restart_times.popleft()
        if len(self.restart_times) >= self.opts.max_restarts_per_minute:
            self.phase = "shutdown"
            self._stop_and_reclaim()
            say(f"restart storm: more than {self.opts.max_restarts_per_minute} restarts in a "
                f"minute (last reason: {req.reason}); stopping. Raise --max-restarts if this "
                "is expected.")
            return 1
        self.restart_times.append(now)
        self.phase, self.restarting = "restarting", req
        self._learn_session()  # while the agent still holds its session open
        try:
            self._stop_and_reclaim()
            # What came in while the terminal was reclaimed joins this restart too: the rule
            # is that requests received before the new agent starts are part of it.
            self._serve_ready()
            say(f"restarting {self.profile.name} (reason: {req.reason})")
            self.restart_count += 1
            self.last_reason = req.reason
            self.last_restart_at = time.time()
            resume = bool(self.profile.resume_flags or self.profile.resume_prefix)
            if resume:
                self._say_if_latest()
            self._spawn(resume=resume, prompt=req.prompt)  # the prompt joined requests left
        finally:
            self.phase, self.restarting = "running", None
        return None

    def _learn_session(self) -> None:
        """For a CLI that cannot be told its session id (Codex), read it off the session file
        its processes hold open (profile.session_file), while the agent runs."""
        run = self.run
        if run is None or run.status is not None or not self.profile.session_file:
            return
        pids = [run.pgid, *(p.pid for p in procs.tree(self._helper_pids()))]
        found = session.from_open_files(self.profile, pids)
        if found is not None:
            run.session_id = found

    def _history_file(self) -> Path | None:
        """The agent's own conversation record (profile.own_history), unless the user chose
        one (then the profile's words are not added, and a restart resumes by "latest")."""
        words = self.profile.own_history
        if not words or agentargs.is_subcommand(self.profile, self.opts.agent_args) or any(
                arg.split("=", 1)[0] == words[0] for arg in self.opts.agent_args):
            return None
        return runtime_file(self.runtime, "history", self.pid, agent=self.profile.name)

    def _history_args(self) -> list[str]:
        path = self._history_file()
        if path is None:
            return []
        if self.run is None:
            say(f"{self.profile.name} keeps this terminal's conversation in {path}: a restart "
                "restores exactly it")
        return [w.replace("{history}", str(path)) for w in self.profile.own_history]

    def _say_if_latest(self) -> None:
        """Once: a resume by "latest" may take another session of this directory."""
        sid = self.run.session_id if self.run else None
        if self._said_latest or (sid and self.profile.resume_session) or \
                self._history_file() is not None:
            return
        self._said_latest = True
        why = "its session id is not known" if self.profile.resume_session else \
            "it cannot resume a session by id"
        say(f"{self.profile.name} resumes its latest conversation in this directory ({why}): "
            "with another session here, that one may be taken")

    def _agent_ended(self) -> int | None:
        """The agent exited on its own: restart when one was asked for, start fresh when a
        resume failed at once, else the supervisor's exit status (128+N for a signal)."""
        run = self.run
        assert run is not None and run.status is not None
        code = run.proc.returncode
        exit_status = 128 - code if code < 0 else code
        if self.pending is not None:
            req, self.pending = self.pending, None
            return self._restart(req)
        quick = time.monotonic() - run.started < RESUME_CHECK_SECONDS
        if run.resumed and 0 < code < 128 and quick:
            self._stop_and_reclaim()
            say(f"{self.profile.name} exited at once ({exit_status}) when resuming: no "
                "conversation to resume? starting a new one")
            self._spawn(resume=False, prompt=run.prompt)
            return None
        self.phase = "ending"
        self._stop_agent(signal.SIGTERM)  # what the agent left behind (MCP servers, ...)
        self.phase = "running"
        if self.pending is not None:  # asked for while that stop went on: still honoured
            req, self.pending = self.pending, None
            return self._restart(req)
        return exit_status

    def _say_if_not_ready(self) -> None:
        """Once a start's bound is over: which of the user's servers codex stopped waiting
        for (one line; nothing when all answered or failed in time)."""
        watch = self.readiness
        missing = watch.overdue(time.monotonic()) if watch and self._agent_alive() else None
        if missing:
            names = ", ".join(missing)
            say(f"MCP server{'s' if len(missing) > 1 else ''} {names} not up "
                f"{self.opts.mcp_ready_timeout:g}s after {self.profile.name} started: its first "
                f"turn goes on without {'their' if len(missing) > 1 else 'its'} tools "
                "(--mcp-ready-timeout)")

    def _refresh_netmon(self) -> None:
        """Fold what the netmon log gained into its summary file (a stat when nothing did)."""
        self._netmon_next = time.monotonic() + NETMON_REFRESH_SECONDS
        log = self.netmon_log
        if log is None:
            return
        try:
            st = log.stat()
        except OSError:
            return
        if (st.st_ino, st.st_size) == self._netmon_seen:
            return
        import aegis_mcp.netmon.summary  # noqa: F401 - imported here, not in the forked child

        with contextlib.suppress(Exception):  # a broken log must never stop the agent
            # As the agent's user: the log and its summary live in that user's directory,
            # and the agent's MCP server reads and updates the summary too.
            as_user(self.user, _refresh_summary, str(log))
            self._netmon_seen = (st.st_ino, st.st_size)

    def _loop(self) -> int:
        while True:
            deadlines = [self.pending.due] if self.pending is not None else []
            if self.netmon_log is not None:
                deadlines.append(self._netmon_next)
            if self.readiness is not None and self.readiness.pending():
                deadlines.append(self.readiness.due)
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for key, _ in self.selector.select(timeout):
                self._serve(key)
            self._reap()
            self._say_if_not_ready()
            for sig in self.inbox.drain():
                if sig in _SHUTDOWN:
                    say(f"received {signal.Signals(sig).name}: stopping {self.profile.name}")
                    self.phase = "shutdown"
                    self._stop_agent(sig)
                    return 128 + sig
                if sig in _FORWARDED and self._agent_alive():
                    assert self.run is not None
                    procs.killpg(self.run.pgid, sig)
                if sig == signal.SIGWINCH and self.relay is not None:
                    self.relay.resize()
            if self.netmon_log is not None and time.monotonic() >= self._netmon_next:
                self._refresh_netmon()
            if not self._agent_alive():
                result = self._agent_ended()
                if result is not None:
                    return result
                continue
            if self.pending is not None and time.monotonic() >= self.pending.due:
                req, self.pending = self.pending, None
                result = self._restart(req)
                if result is not None:
                    return result

    def main(self) -> int:
        """Set up, start the agent, loop, and always clean up."""
        self._setup()
        try:
            if self.netmon_mode == "netns":
                from aegis_mcp.netmon.log import open_log
                from aegis_mcp.netns import namespace as netns

                assert self.netmon_log is not None
                from aegis_mcp.netns import plan

                forwards, unreachable = plan.loopback_forwards(dict(os.environ),
                                                          self.opts.netns_forward)
                (log_fd,) = fds_as_user(self.user, open_log, str(self.netmon_log))
                try:
                    self.namespace = netns.create(
                        self.pid, self.netmon_log, log_fd=log_fd,
                        forwards=tuple(forwards.values()),
                        host_access=self.opts.netns_host_access, say_fd=sys.stderr.fileno(),
                        policy=self._netns_policy if self.network_rules else None)
                finally:
                    os.close(log_fd)
                self._say_forwards(forwards, unreachable)
                if self.opts.netns_host_access:
                    say("warning: --netns-host-access: the agent can reach every service of "
                        "this machine, not only the internet, DNS and the forwarded ports")
            else:
                for flag, given in (("--netns-forward", self.opts.netns_forward),
                                    ("--netns-host-access", self.opts.netns_host_access)):
                    if given:
                        say(f"{flag} is for --netmon=netns only: ignored")
            # Only now: pyroute2 made the namespace in forks of this process, which must not
            # copy a process with a second thread running (a lock it held stays locked there).
            if self.opts.watch:
                from aegis_mcp.supervise.watch import FileWatch

                self.watch = FileWatch.start(self.opts.watch)
                self.selector.register(self.watch.fd, selectors.EVENT_READ, "watch")
            if self.network_rules:
                self._write_policy()
            self._spawn(resume=False, prompt=None)
            return self._loop()
        finally:
            self._shutdown()

    def _write_policy(self) -> None:
        """The effective network policy (the user's rules and the implicit allows), compiled
        into the file the enforcers read, written as the agent's user; one line says what it
        is and, honestly, how far it is enforced."""
        from aegis_mcp.netmon import policy as netpolicy

        assert self.policy_file is not None
        if self.namespace is not None and self.namespace.policy is not None:
            policy = self.namespace.policy  # the one the kernel enforces, written as it is
        else:
            env, _ = self._agent_env()
            implicit = netpolicy.implicit_rules(self.profile, env, netpolicy.resolvers())
            policy = netpolicy.effective(self.network_rules, implicit)
        assert policy is not None
        try:
            as_user(self.user, netpolicy.write_compiled, str(self.policy_file),
                    policy.compile())
        except OSError as exc:
            raise AegisError(f"cannot write the network policy {self.policy_file}: "
                             f"{exc.strerror or exc}; the agent is not started without it") \
                from None
        self.policy = policy
        say(f"network policy ({netpolicy.describe(policy)}, in {self.policy_file}): "
            f"{netpolicy.enforcement(self.netmon_mode)}")
        if proxies := netpolicy.proxies(policy):
            say(f"the agent's connections go through {' and '.join(proxies)}, which the "
                "network policy allows: it sees the proxy, not the hosts behind it")

    def _netns_policy(self, state: NetnsState) -> netpolicy.Policy:
        """The policy the namespace's kernel enforces (made here, in root's memory: never read
        back from the file the agent's user could rewrite). Inside, DNS goes to the
        namespace's resolv.conf."""
        from aegis_mcp.netmon import policy as netpolicy

        env, _ = self._agent_env()
        servers = [state.host_addr] if state.dns.startswith(("dnat:", "resolver:")) else \
            list(state.nameservers)
        implicit = netpolicy.implicit_rules(self.profile, env, servers,
                                            "the network namespace's resolv.conf")
        implicit += [netpolicy.parse_rule(f"127.0.0.1:{port}", "allow",
                                          f"{netpolicy.IMPLICIT}--netns-forward {port}")
                     for port in self.opts.netns_forward]
        policy = netpolicy.effective(self.network_rules, implicit)
        assert policy is not None
        return policy

    def _say_forwards(self, forwards: dict[str, tuple[str, int]], unreachable: list[str]
                      ) -> None:
        """Inside the namespace the host's loopback is out of reach (httptap #19): the ports
        the agent's URLs name are forwarded; say which, and what could not be."""
        for what, (ip, port) in forwards.items():
            say(f"{what}: the host's {ip}:{port} is forwarded into the network namespace")
        host = self.namespace.state.host_addr
        for what in unreachable:
            say(f"{what} points at this host's IPv6 loopback, which the agent cannot reach "
                f"from its network namespace: use 127.0.0.1 (forwarded), or {host} (the "
                "host's end of the namespace's link), or --netmon=preload")

    def _shutdown(self) -> None:
        # The terminal comes back to us now, and a user quitting the agent may still be
        # pressing Ctrl-C: ignored from here on (SIG_IGN, which Python keeps through its
        # exit, unlike a handler), so the exit status stays the agent's.
        for sig in _FORWARDED:
            signal.signal(sig, signal.SIG_IGN)
        self.phase = "shutdown"
        with contextlib.suppress(Exception):
            if self._agent_alive() or procs.tree(self._helper_pids()):
                self._stop_agent(signal.SIGTERM)
        if self.watch is not None:
            self.watch.stop()
        with contextlib.suppress(Exception):
            self._end_relay()
        self.terminal.take_back()
        with contextlib.suppress(Exception):
            self._forget_warm()
        if self.injection is not None:
            self.injection.cleanup()
        if self.namespace is not None:
            with contextlib.suppress(Exception):
                self.namespace.teardown()  # the capture writes its final totals first
        self._refresh_netmon()
        self.control.close()
        self.inbox.close()
        if self.watchdog is not None:  # last: a kill -9 during the cleanup above is covered
            self.watchdog.stop()


def _can_enter(path: str) -> bool:
    return os.access(path, os.X_OK) and os.path.isdir(path)


def _refresh_summary(log: str) -> None:
    from aegis_mcp.netmon.summary import refresh

    refresh(Path(log))


def _remove_stale_files(runtime: str) -> None:
    """Sockets and overlays of supervisors that were killed (no chance to clean up) go; netmon
    logs stay, they are the record of what an agent did. Run as the directory's owner."""
    for path in Path(runtime).iterdir():
        owner = working_file_owner(path.name)
        if owner is None or procs.alive(owner):
            continue
        with contextlib.suppress(OSError):
            path.unlink()


def _current_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def resolve_agent(opts: SupervisorOptions, user: User | None = None,
                  config: Config | None = None) -> tuple[AgentProfile, str]:
    """The profile and the executable; under sudo the user's own bin directories are searched
    after PATH."""
    extra = user_bin_dirs(user.home) if user is not None else ()
    if opts.agent is None:
        profile = generic_profile(opts.agent_args)
        command = opts.agent_args[0]
        search = os.pathsep.join([os.environ.get("PATH", os.defpath), *extra])
        found = shutil.which(command, path=search)
        if found is None:
            from aegis_mcp.pathcheck import why_not_runnable

            # As a shell says it: 126 for a file that is there but cannot run, 127 for none.
            if why := why_not_runnable(command, search):
                raise AegisError(f"{command}: {why}", 126)
            if os.sep in command:
                raise AegisError(f"{command}: no such file", 127)
            raise AegisError(f"{command}: command not found (check the name or give its path)",
                             127)
        opts.agent_args = opts.agent_args[1:]
        return profile, found
    profile = get_profile(opts.agent, config or load_config())
    return profile, profile.executable(extra)


def network_rules(opts: SupervisorOptions, user: User | None, config: Config
                  ) -> list[netpolicy.Rule]:
    """The user's network policy rules: the config file's [network] table, the --policy
    files (read as the agent's user: a file the user names is never root's to read), the
    --allow and --deny flags. A bad one is one line naming its place, exit status 2."""
    if not (opts.allow or opts.deny or opts.policy or "network" in config.settings):
        return []  # no policy: a start without one does not import the policy's model
    from aegis_mcp.netmon import policy as netpolicy

    return netpolicy.user_rules(
        opts.allow, opts.deny, opts.policy, config.settings, config.source,
        read=lambda path: as_user(user, netpolicy.read_policy_file, path))


def agent_path(path: str, executable: str, user: User | None) -> str:
    """The agent's PATH: under sudo, with the executable's directory first when it is not
    on it (the user's own bin dir, which sudo's secure_path has not)."""
    exe_dir = os.path.dirname(executable)
    dirs = path.split(os.pathsep)
    return os.pathsep.join([exe_dir, *dirs]) if user is not None and exe_dir not in dirs \
        else path


def run_supervisor(opts: SupervisorOptions) -> int:
    """`aegis-mcp [OPTIONS] AGENT [ARGS]`: returns the agent's exit status."""
    user = agent_user(opts.keep_root)
    config = load_config()
    profile, executable = resolve_agent(opts, user, config)
    rules = network_rules(opts, user, config)
    if notice := root_notice(opts.keep_root):
        say(notice)
    kept, dropped = agentargs.root_permission_flags(
        profile, os.environ, as_root=user is None and os.geteuid() == 0)
    if dropped:
        profile = replace(profile, permission_flags=kept)
        allowed = agentargs.allow_tools_flags(profile)
        with_ours = f", with aegis-mcp's own tools allowed ({' '.join(allowed)})" if allowed \
            else ""
        say(f"{profile.name} refuses {' '.join(dropped)} as root: starting it without"
            f"{with_ours}; run `sudo aegis-mcp ...` from your own account to keep it (or set "
            "IS_SANDBOX=1 in a sandbox)")
    if profile.mcp_waits_since:  # once per supervisor: restarts run the same executable
        installed = None
        with contextlib.suppress(OSError, AegisError):  # only a warning: never in the way
            installed = as_user(user, agentversion.npm_package_version, executable)
        if notice := agentversion.readiness_notice(profile, installed):
            say(notice)
    if profile.min_node:  # once per supervisor, a few ms: restarts run the same node
        path = os.environ.get("PATH", os.defpath)
        if user is not None:
            path = user.agent_env({"PATH": path})["PATH"]
        with contextlib.suppress(OSError, AegisError):  # only a warning: never in the way
            if notice := as_user(user, agentversion.node_notice, profile, executable,
                                 agent_path(path, executable, user)):
                say(notice)
    sup = Supervisor(profile=profile, executable=executable, opts=opts, user=user,
                     network_rules=rules)
    return sup.main()
