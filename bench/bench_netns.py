"""netns mode's costs, as root.

1. Setup plus teardown of a namespace with its capture helper (create() .. teardown()):
   median of 20 (--cycles).
2. Bulk TCP transfer across the veth between a client inside the namespace and a server on
   the host end, with the capture on over the same without it, each direction (upload: the
   agent sends; download: the agent receives). Goal: at least 0.9.

    sudo python bench/bench_netns.py [--cycles 20] [--mib 1024] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aegis_mcp import netns

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


def serve(sock: socket.socket, mode: str, total: int) -> None:
    conn, _ = sock.accept()
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


def transfer(ns: netns.Namespace, mode: str, total: int) -> float:
    """Seconds for `total` bytes in direction `mode`, timed by the client inside."""
    sock = socket.socket()
    sock.bind((ns.state.host_addr, 0))
    sock.listen(1)
    thread = threading.Thread(target=serve, args=(sock, mode, total))
    thread.start()
    out = subprocess.run([*ns.exec_prefix(0, 0), sys.executable, "-c", CLIENT,
                          ns.state.host_addr, str(sock.getsockname()[1]), mode, str(total)],
                         capture_output=True, text=True, check=True, timeout=300)
    thread.join()
    sock.close()
    return float(out.stdout)


def setup_teardown(cycles: int, work: Path, resolv: Path) -> list[float]:
    times = []
    for _ in range(cycles):
        t0 = time.perf_counter()
        ns = netns.create(os.getpid(), work / "cycle.jsonl", resolv_conf=resolv)
        ns.teardown()
        times.append(time.perf_counter() - t0)
    return times


def throughput(capture: bool, mode: str, total: int, rounds: int, work: Path,
               resolv: Path) -> float:
    """Median MiB/s over `rounds` transfers in a namespace with or without capture."""
    ns = netns.create(os.getpid(), work / "bulk.jsonl", resolv_conf=resolv, capture=capture)
    try:
        transfer(ns, mode, 64 * CHUNK)  # warm-up
        rates = [total / CHUNK / transfer(ns, mode, total) for _ in range(rounds)]
    finally:
        ns.teardown()
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--mib", type=int, default=1024, help="MiB per transfer")
    parser.add_argument("--rounds", type=int, default=5, help="transfers per measurement")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_netns: needs root (sudo)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        resolv = work / "resolv.conf"
        resolv.write_text("nameserver 192.0.2.53\n")
        times = setup_teardown(args.cycles, work, resolv)
        print(f"setup+teardown: median {statistics.median(times) * 1000:.1f} ms "
              f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}, n={len(times)})")
        total = args.mib * CHUNK
        ratios = []
        for mode in ("up", "down"):
            # Alternate the order so neither side always runs on a warmer machine.
            on1 = throughput(True, mode, total, args.rounds, work, resolv)
            off = throughput(False, mode, total, args.rounds, work, resolv)
            on2 = throughput(True, mode, total, args.rounds, work, resolv)
            on = (on1 + on2) / 2
            ratios.append(on / off)
            print(f"bulk {mode:<4} {args.mib} MiB: capture on {on:.0f} MiB/s, off {off:.0f} "
                  f"MiB/s, ratio {on / off:.3f} (goal >= 0.9)")
            events = (work / "bulk.jsonl").read_text().count('"event":"close"')
            print(f"  close events recorded so far: {events}")
        print(f"throughput ratio (worst direction): {min(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
