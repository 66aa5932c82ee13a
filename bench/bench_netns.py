"""netns mode's costs, as root.

1. Setup plus teardown of a namespace with its capture helper (create() .. teardown()):
   median of 20 (--cycles).
2. Bulk TCP transfer across the veth between a client inside the namespace and a server on
   the host end, with the capture on over the same without it, each direction (upload: the
   agent sends; download: the agent receives). Goal: at least 0.9. Printed twice: MiB/s of
   wall-clock time, and MiB per CPU second of client + server + capture helper (the kernel's
   veth and conntrack work is charged to them), which a busy shared machine disturbs less.

3. Connection churn across the veth (bench/_churn.c: connect, 64 bytes each way, close,
   5,000 times, from inside the namespace to a server on the host end), with the capture on,
   without a policy, with a 1-rule policy and with a 1,000-rule one (the connection allowed by
   its last rule), that one both as the policy's verdict maps and as one chain of every rule
   (what an nft without the maps gets, and what every policy was before them): microseconds
   per connection, and the ratios to the capture-off run and to the 1-rule policy.

    sudo python bench/bench_netns.py [--cycles 20] [--mib 512] [--rounds 21] [--churn 5000]
                                     [--churn-only]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aegis_mcp.netmon import policy as netpolicy
from aegis_mcp.netns import namespace as netns

CHUNK = 1 << 20
CLIENT = """
import socket, sys, time
addr, port, mode, total = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.create_connection((addr, port))
buf = bytearray(1 << 20)
t0 = time.perf_counter()
if mode == "up":
    left = total
    while left:
        n = s.send(memoryview(buf)[:min(left, len(buf))])
        left -= n
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
else:
    got = 0
    while got < total:
        n = s.recv_into(buf)
        if not n:
            break
        got += n
print(time.perf_counter() - t0)
"""


def serve(sock: socket.socket, mode: str, total: int, cpu: list[float]) -> None:
    conn, _ = sock.accept()
    start = time.thread_time()
    buf = bytearray(CHUNK)
    with conn:
        if mode == "up":
            got = 0
            while got < total:
                n = conn.recv_into(buf)
                if not n:
                    break
                got += n
            conn.send(b"k")
        else:
            left = total
            while left:
                left -= conn.send(memoryview(buf)[:min(left, CHUNK)])
    cpu.append(time.thread_time() - start)


def helper_cpu(ns: netns.Namespace) -> float:
    total = 0.0
    for pid in ns.helper_pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def transfer(ns: netns.Namespace, mode: str, total: int) -> tuple[float, float]:
    """(wall seconds timed by the client inside, CPU seconds of client + server + capture
    helper, the kernel's share of the veth included) for `total` bytes in direction `mode`."""
    sock = socket.socket()
    sock.bind((ns.state.host_addr, 0))
    sock.listen(1)
    server_cpu: list[float] = []
    thread = threading.Thread(target=serve, args=(sock, mode, total, server_cpu))
    thread.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    helper_before = helper_cpu(ns)
    out = subprocess.run([*ns.exec_prefix(0, 0), sys.executable, "-c", CLIENT,
                          ns.state.host_addr, str(sock.getsockname()[1]), mode, str(total)],
                         capture_output=True, text=True, check=True, timeout=300)
    thread.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sock.close()
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return float(out.stdout), client_cpu + server_cpu[0] + helper_cpu(ns) - helper_before


def setup_teardown(cycles: int, work: Path, resolv: Path) -> list[float]:
    times = []
    for _ in range(cycles):
        t0 = time.perf_counter()
        ns = netns.create(os.getpid(), work / "cycle.jsonl", resolv_conf=resolv)
        ns.teardown()
        times.append(time.perf_counter() - t0)
    return times


def one_transfer(capture: bool, mode: str, total: int, work: Path, resolv: Path
                 ) -> tuple[float, float]:
    """(MiB/s, MiB per CPU second) of one transfer in a fresh namespace with or without
    capture (and without conntrack accounting, which only the capture turns on)."""
    # The server is the host end itself, which the agent may reach only with host access.
    ns = netns.create(os.getpid(), work / "bulk.jsonl", resolv_conf=resolv, capture=capture,
                      host_access=True)
    try:
        transfer(ns, mode, 16 * CHUNK)  # warm-up: TCP window, page cache of the interpreter
        wall, cpu = transfer(ns, mode, total)
        return total / CHUNK / wall, total / CHUNK / cpu
    finally:
        ns.teardown()


def throughput(mode: str, total: int, rounds: int, work: Path, resolv: Path
               ) -> dict[str, float]:
    """Medians of MiB/s and of MiB per CPU second with and without capture, and the medians
    of the on/off ratios of back-to-back pairs. On and off alternate round by round (and which
    goes first alternates too), so drifts of a shared machine hit both alike; a pair's ratio
    compares two runs a second apart, so the pair medians are the steadiest figure."""
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for i in range(rounds):
        for capture in ((True, False) if i % 2 == 0 else (False, True)):
            runs[capture].append(one_transfer(capture, mode, total, work, resolv))
    out = {f"{name}_{'on' if capture else 'off'}": statistics.median(r[k] for r in runs[capture])
           for capture in (True, False) for k, name in ((0, "rate"), (1, "per_cpu"))}
    pairs = list(zip(runs[True], runs[False], strict=True))
    out["pair_wall"] = statistics.median(on[0] / off[0] for on, off in pairs)
    out["pair_cpu"] = statistics.median(on[1] / off[1] for on, off in pairs)
    out["pair_min"] = min(min(on[0] / off[0], on[1] / off[1]) for on, off in pairs)
    out["pair_max"] = max(max(on[0] / off[0], on[1] / off[1]) for on, off in pairs)
    return out


def churn_binary(work: Path) -> Path:
    exe = work / "_churn"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(Path(__file__).with_name("_churn.c"))],
                   check=True)
    os.chmod(exe, 0o755)
    return exe


def some_rules(allowed: str, port: int, count: int) -> netpolicy.Policy:
    """`count` - 1 rules that do not match (CIDRs of TEST-NET-3 and host names), then the
    allow of the churn's server: the worst case for a linear chain."""
    filler = count - 1
    allow = [f"203.0.113.{i % 250}:{1000 + i}" for i in range((filler + 1) // 2)]
    allow += [f"host{i}.example.test" for i in range(filler // 2)]
    allow.append(f"{allowed}:{port}")
    policy = netpolicy.effective(netpolicy.from_flags(allow, []), [])
    assert policy is not None and len(policy.rules) == count
    return policy


def one_churn(exe: Path, n: int, work: Path, resolv: Path, capture: bool,
              rules: int, maps: bool = True) -> tuple[float, float]:
    """(wall, CPU) microseconds per connection of the churn client inside a fresh namespace,
    to a server of the host's (every address: its port goes into the policy's last rule)."""
    server = subprocess.Popen([str(exe), "serve", "0.0.0.0"], stdout=subprocess.PIPE,
                              text=True)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    ns = None
    try:
        ns = netns.create(os.getpid(), work / "churn.jsonl", resolv_conf=resolv,
                          capture=capture, host_access=True,
                          policy=(lambda state: some_rules(state.host_addr, port, rules))
                          if rules else None, policy_maps=maps)
        assert ns.policy_maps == (maps and rules > 0), "nft refused the policy's maps"
        out = subprocess.run([*ns.exec_prefix(0, 0), str(exe), "churn", str(port), str(n),
                              ns.state.host_addr], capture_output=True, text=True, check=True)
        wall, cpu = (float(x) for x in out.stdout.split())
        return wall, cpu
    finally:
        server.kill()
        server.wait()
        if ns is not None:
            ns.teardown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--mib", type=int, default=512, help="MiB per transfer")
    parser.add_argument("--rounds", type=int, default=21, help="on/off pairs per direction")
    parser.add_argument("--churn", type=int, default=5000, help="connections per churn run")
    parser.add_argument("--churn-rounds", type=int, default=5)
    parser.add_argument("--churn-only", action="store_true", help="skip setup and bulk")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_netns: needs root (sudo)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        resolv = work / "resolv.conf"
        resolv.write_text("nameserver 192.0.2.53\n")
        exe = churn_binary(work)
        cases = {"capture off": (False, 0, True), "capture on": (True, 0, True),
                 "capture on, 1-rule policy": (True, 1, True),
                 "capture on, 1,000-rule policy, one chain": (True, 1000, False),
                 "capture on, 1,000-rule policy": (True, 1000, True)}
        got: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for _ in range(args.churn_rounds):
            for name, (capture, rules, maps) in cases.items():
                got[name].append(one_churn(exe, args.churn, work, resolv, capture, rules,
                                           maps))
        medians = {name: [statistics.median(r[k] for r in got[name]) for k in (0, 1)]
                   for name in cases}
        base, one = medians["capture off"], medians["capture on, 1-rule policy"]
        for name, (wall, cpu) in medians.items():
            print(f"churn {args.churn} x {args.churn_rounds}, {name}: {wall:.1f} us wall, "
                  f"{cpu:.1f} us CPU per connection; ratio to capture off: wall "
                  f"{wall / base[0]:.3f}, CPU {cpu / base[1]:.3f}"
                  + (f"; to the 1-rule policy: wall {wall / one[0]:.3f}, CPU "
                     f"{cpu / one[1]:.3f}" if cases[name][1] > 1 else ""))
        if args.churn_only:
            return 0
        times = setup_teardown(args.cycles, work, resolv)
        print(f"setup+teardown: median {statistics.median(times) * 1000:.1f} ms "
              f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}, n={len(times)})")
        total = args.mib * CHUNK
        ratios = []
        for mode in ("up", "down"):
            m = throughput(mode, total, args.rounds, work, resolv)
            wall, cpu = m["rate_on"] / m["rate_off"], m["per_cpu_on"] / m["per_cpu_off"]
            ratios += [m["pair_wall"], m["pair_cpu"]]
            print(f"bulk {mode:<4} {args.mib} MiB x {args.rounds}: capture on {m['rate_on']:.0f} "
                  f"MiB/s, off {m['rate_off']:.0f} MiB/s, ratio of medians {wall:.3f}; per CPU "
                  f"second: on {m['per_cpu_on']:.0f} MiB, off {m['per_cpu_off']:.0f} MiB, "
                  f"ratio of medians {cpu:.3f}")
            print(f"     median of {args.rounds} back-to-back pairs: wall ratio "
                  f"{m['pair_wall']:.3f}, CPU ratio {m['pair_cpu']:.3f} (goal >= 0.9; pair "
                  f"ratios range {m['pair_min']:.2f}-{m['pair_max']:.2f})")
        closes = (work / "bulk.jsonl").read_text().count('"event":"close"')
        print(f"close events recorded by the capture: {closes} "
              f"(expected {2 * args.rounds * 2}: warm-up + measured, per round and direction)")
        print(f"throughput ratio, worst of directions and measures (pair medians): "
              f"{min(ratios):.3f} (single runs swing with other load on the machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
