#!/usr/bin/env python3
"""A scripted stand-in for an interactive agent CLI, at the process level.

Like Claude Code it takes permission flags, `--continue`, `--mcp-config FILE...` and a
positional prompt; it starts the MCP servers of its config as children, reads the terminal,
and exits at once on `--continue` when there is no conversation to resume. Each start appends a
JSON record to $FAKE_AGENT_LOG (pid, argv, uid, gids, prompt, resume, terminal modes, env), so
tests see what the supervisor did. Lines typed on the terminal are commands:
  exit N | restart REASON [| PROMPT] | restart-exit REASON | forget | raw | ping | blast N
With the behaviour `tiocsti` it plays the attacker on its way out: it pushes $FAKE_AGENT_PUSH
into every terminal it can reach with TIOCSTI, for whoever reads the terminal next.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import termios
import time
from pathlib import Path

STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "time.sleep(600)\n"
)
DAEMON = (
    "import os, sys, time\n"
    "if os.fork(): sys.exit(0)\n"
    "os.setsid()\n"
    "middle = os.getpid()\n"
    "if os.fork(): os._exit(0)\n"
    "for _ in range(500):  # report once re-parented, not while the middle one still exits\n"
    "    if os.getppid() != middle: break\n"
    "    time.sleep(0.01)\n"
    "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
    "time.sleep(600)\n"
)


def parse(argv: list[str]) -> dict:
    opts: dict = {"flags": [], "mcp_config": [], "prompt": None, "resume": False,
                  "options": {}}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--mcp-config":
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                opts["mcp_config"].append(argv[i])
                i += 1
            continue
        if arg in ("--continue", "-c"):
            opts["resume"] = True
        elif arg in ("--model", "--exit-code", "--sleep-on-sigint", "--behaviour"):
            opts["options"][arg] = argv[i + 1]
            i += 1
        elif arg.startswith("-"):
            opts["flags"].append(arg)
        elif opts["prompt"] is None:
            opts["prompt"] = arg
        i += 1
    return opts


def session_and_tty() -> tuple[int, int]:
    """Fields `session` and `tty_nr` of /proc/self/stat."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[3]), int(fields[4])


def push_everywhere(text: str) -> dict[str, str]:
    """TIOCSTI `text` into stdin, stdout, stderr, /dev/tty and a fresh open of stdout's
    terminal; what each attempt gave ("ok" or the errno's name)."""
    results = {}
    targets: list[tuple[str, object]] = [("fd0", 0), ("fd1", 1), ("fd2", 2),
                                         ("/dev/tty", "/dev/tty"),
                                         ("reopened fd1", "/proc/self/fd/1")]
    for name, target in targets:
        fd = target if isinstance(target, int) else None
        try:
            if fd is None:
                fd = os.open(str(target), os.O_RDWR | os.O_NOCTTY)
            for ch in text.encode():
                fcntl.ioctl(fd, termios.TIOCSTI, bytes([ch]))
            results[name] = "ok"
        except OSError as exc:
            results[name] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        finally:
            if fd is not None and not isinstance(target, int):
                os.close(fd)
    return results


def control(payload: dict) -> dict:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(os.environ["AEGIS_CONTROL"])
    sock.sendall(json.dumps(payload).encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return json.loads(data)


def main() -> int:
    state = Path(os.environ["FAKE_AGENT_STATE"])
    opts = parse(sys.argv[1:])
    behaviour = set(filter(None, opts["options"].get("--behaviour", "").split(",")))
    session = state / "session"
    if opts["resume"] and not session.exists():
        print("No conversation found to continue", flush=True)
        return 1
    count = int(session.read_text()) + 1 if opts["resume"] else 1
    session.write_text(str(count))

    children = []
    for config in opts["mcp_config"]:
        for name, server in json.loads(Path(config).read_text())["mcpServers"].items():
            env = {**os.environ, **server.get("env", {})}
            proc = subprocess.Popen([server["command"], *server.get("args", [])], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            children.append({"name": name, "pid": proc.pid})
    if "stubborn-child" in behaviour:
        children.append({"name": "stubborn", "pid": subprocess.Popen(
            [sys.executable, "-c", STUBBORN]).pid})
    if "pool-runner" in behaviour:  # what agent_spawn starts: a detached, marked runner
        runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                  env={**os.environ, "AEGIS_POOL_RUNNER": "a1"},
                                  start_new_session=True, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        children.append({"name": "pool-runner", "pid": runner.pid})
    if "daemon" in behaviour:
        pidfile = state / f"daemon-{os.getpid()}"
        subprocess.run([sys.executable, "-c", DAEMON, str(pidfile)], check=True)
        for _ in range(500):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.02)
        children.append({"name": "daemon", "pid": int(pidfile.read_text())})

    mcp_json = None
    if "read-mcp-json" in behaviour:  # like a Node/Python agent reading its config via libc
        try:
            with open(".mcp.json") as f:
                mcp_json = sorted(json.load(f)["mcpServers"])
        except FileNotFoundError:
            mcp_json = "missing"

    tty = sys.stdin.isatty()
    sid, tty_nr = session_and_tty()
    record = {
        "pid": os.getpid(), "argv": sys.argv[1:], "uid": os.getuid(), "gid": os.getgid(),
        "groups": sorted(os.getgroups()), "prompt": opts["prompt"], "resume": opts["resume"],
        "session_count": count, "flags": opts["flags"], "options": opts["options"],
        "children": children, "cwd": os.getcwd(), "mcp_json": mcp_json,
        "lflag": termios.tcgetattr(0)[3] if tty else None,
        "foreground": os.tcgetpgrp(0) == os.getpgrp() if tty else None,
        "session": sid, "tty_nr": tty_nr, "pgrp": os.getpgrp(),
        "size": list(os.get_terminal_size(0)) if tty else None,
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("AEGIS_", "HOME", "USER", "LOGNAME", "CLAUDECODE", "SUDO_",
                                 "LD_PRELOAD"))},
    }
    with open(state / "starts.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")

    def on_sigint(_sig: int, _frame: object) -> None:
        print("GOT SIGINT", flush=True)
        if "ignore-sigint" not in behaviour:
            sys.exit(130)

    signal.signal(signal.SIGINT, on_sigint)
    if "ignore-sigterm" in behaviour:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "--exit-code" in opts["options"]:
        return int(opts["options"]["--exit-code"])
    if "restart-on-start" in behaviour:
        control({"op": "restart", "reason": "restart-on-start"})
    if "kill-self" in behaviour:
        os.kill(os.getpid(), signal.SIGTERM)

    if tty:
        signal.signal(signal.SIGWINCH, lambda *_: print(
            "WINCH {1}x{0}".format(*os.get_terminal_size(0)), flush=True))

    def leave(code: int) -> int:
        if "tiocsti" in behaviour:
            results = push_everywhere(os.environ["FAKE_AGENT_PUSH"] + "\n")
            (state / f"tiocsti-{os.getpid()}.json").write_text(json.dumps(results))
        return code

    print(f"READY pid={os.getpid()} session={count} prompt={opts['prompt']}", flush=True)
    for line in sys.stdin:
        words = line.strip().split(" ", 1)
        cmd, rest = words[0], (words[1] if len(words) > 1 else "")
        if cmd == "exit":
            return leave(int(rest or 0))
        if cmd in ("restart", "restart-exit"):
            reason, _, prompt = rest.partition("|")
            answer = control({"op": "restart", "reason": reason.strip() or "asked",
                              "prompt": prompt.strip() or None})
            print(f"ANSWER {json.dumps(answer)}", flush=True)
            if cmd == "restart-exit":
                return 0
        elif cmd == "forget":
            session.unlink()
            print("FORGOT", flush=True)
        elif cmd == "raw":
            mode = termios.tcgetattr(0)
            mode[3] &= ~(termios.ICANON | termios.ECHO)
            termios.tcsetattr(0, termios.TCSANOW, mode)
            sys.stdout.write("\x1b[?1049h\x1b[?25l")
            print("RAW", flush=True)
            # raw mode: read the next bytes by hand until a newline
            buf = b""
            while not buf.endswith(b"\n"):
                ch = os.read(0, 1)
                if not ch:
                    return 0
                buf += ch
        elif cmd == "ping":
            print("PONG", flush=True)
        elif cmd == "blast":  # N numbered 64-byte lines, in one go: the terminal must keep up
            sys.stdout.write("BLAST-START\n" + blast(int(rest)) + "BLAST-END\n")
            sys.stdout.flush()
    return leave(0)


def blast(lines: int) -> str:
    return "".join(f"{i:08d} {'x' * 54}\n" for i in range(lines))


if __name__ == "__main__":
    sys.exit(main())
