#!/usr/bin/env python3
"""A fake headless agent for the pool tests: takes claude's headless arguments
(`-p --output-format stream-json --verbose [--max-turns N] [permission flags] -- PROMPT`) and
writes claude-like stream-json: a system init event, one assistant event per turn, and a final
result event (result text, num_turns, total_cost_usd, session_id).

What it does is told by words in the prompt (so that a test can say it through agent_spawn):
  turns=N        assistant turns before the result (default 1)
  sleep=S        seconds to sleep before each turn (default 0)
  fail           end with an error result and exit code 1;  exit=N  exit with N
  hang           after init, sleep (up to an hour) and never finish
  ignore-term    ignore SIGINT and SIGTERM (only SIGKILL stops it)
  grandchild     start a child that ignores SIGINT/SIGTERM and sleeps
  double-fork    start a daemon (fork, setsid, fork) that sleeps
  pids=FILE      write the pids of the agent and of those children to FILE, one per line
  touch=NAME     create file NAME (relative to the working directory) with the prompt in it
  env=FILE       write the agent's environment to FILE as JSON
  result=TEXT    the result text (default "done: <prompt>")
  stamp          add "t=<unix time at the end>" to the result text (for wake-up timing)
  noresult       end without a result event
  plain          write plain text lines instead of stream-json
  fetch=URL      GET URL before the first turn (repeatable; a refusal is reported, not fatal)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid


def _sleeper(ignore: bool) -> None:
    if ignore:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Exec a fresh sleeper so the test sees a real separate program.
    os.execv(sys.executable, [sys.executable, "-c",
                              "import signal,time\n"
                              f"if {ignore}:\n"
                              " signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                              " signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                              "time.sleep(3600)"])


def spawn_grandchild() -> int:
    pid = os.fork()
    if pid == 0:
        _sleeper(True)
    return pid


def spawn_double_fork() -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        pid2 = os.fork()
        if pid2 == 0:
            os.close(r)
            os.close(w)
            for fd in (0, 1, 2):
                os.dup2(os.open(os.devnull, os.O_RDWR), fd)
            _sleeper(True)
        os.write(w, str(pid2).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    grandchild = int(os.read(r, 64))
    os.close(r)
    return grandchild


def emit(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def parse(argv: list[str]) -> argparse.Namespace:
    """Claude's own headless command line, parsed the way its parser does: -p is --print (no
    value), the prompt is positional, `--` ends the options, and an unknown option is an error
    (so a task that leaked into the options fails loudly, as with the real CLI)."""
    parser = argparse.ArgumentParser(prog="fake-claude")
    parser.add_argument("-p", "--print", action="store_true")
    parser.add_argument("--output-format")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--max-turns", type=int)
    parser.add_argument("--dangerously-skip-permissions", action="store_true")
    parser.add_argument("prompt", nargs="?", default="")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    prompt, max_turns = args.prompt, args.max_turns
    words = prompt.split()
    opts = dict(w.split("=", 1) for w in words if "=" in w)
    flags = {w for w in words if "=" not in w}
    plain = "plain" in flags
    if "ignore-term" in flags:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    pids = [os.getpid()]
    if "grandchild" in flags:
        pids.append(spawn_grandchild())
    if "double-fork" in flags:
        pids.append(spawn_double_fork())
    if "pids" in opts:
        with open(opts["pids"] + ".tmp", "w") as f:
            f.write("".join(f"{p}\n" for p in pids))
        os.rename(opts["pids"] + ".tmp", opts["pids"])
    if "env" in opts:
        with open(opts["env"], "w") as f:
            json.dump(dict(os.environ), f)
    if "touch" in opts:
        with open(opts["touch"], "w") as f:
            f.write(prompt)

    session = str(uuid.uuid4())
    if plain:
        print(f"fake agent starting: {prompt}", flush=True)
    else:
        emit({"type": "system", "subtype": "init", "session_id": session, "cwd": os.getcwd(),
              "tools": [], "model": "fake"})
    for url in [v for k, v in (w.split("=", 1) for w in words if "=" in w) if k == "fetch"]:
        import urllib.error
        import urllib.request

        try:  # a refusal (a network policy's) is reported, and the agent goes on
            with urllib.request.urlopen(url, timeout=30) as answer:
                answer.read()
        except urllib.error.URLError as exc:
            print(json.dumps({"type": "system", "subtype": "fetch_error",
                              "error": str(exc.reason)}), flush=True)
    if "hang" in flags:
        time.sleep(3600)
        return 0
    turns = int(opts.get("turns", "1"))
    pause = float(opts.get("sleep", "0"))
    done = 0
    for n in range(turns):
        if max_turns is not None and done >= max_turns:
            break
        time.sleep(pause)
        done += 1
        if plain:
            print(f"turn {n + 1}", flush=True)
        else:
            emit({"type": "assistant", "session_id": session,
                  "message": {"id": f"msg_{n}", "role": "assistant",
                              "content": [{"type": "text", "text": f"working, turn {n + 1}"}]}})
    hit_limit = max_turns is not None and done < turns
    failed = "fail" in flags or hit_limit
    text = opts.get("result", f"done: {prompt}")
    if "stamp" in flags:
        text += f" t={time.time():.6f}"
    if not plain and "noresult" not in flags:
        emit({"type": "result", "subtype": "error_max_turns" if hit_limit else
              ("error_during_execution" if failed else "success"), "is_error": failed,
              "result": text, "num_turns": done, "total_cost_usd": round(0.001 * done, 6),
              "session_id": session, "duration_ms": 1})
    elif plain:
        print(text, flush=True)
    return int(opts.get("exit", "1" if failed else "0"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
