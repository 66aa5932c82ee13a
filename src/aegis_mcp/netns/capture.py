"""The root-side capture of netns mode: `python -m aegis_mcp.netns.capture ...`, started by
`netns.create()`, records every flow of one namespace as netmon JSONL events (source "netns").

Nothing here looks at every packet in Python, so a bulk transfer pays (almost) nothing:
- Flows and byte counters come from the kernel's conntrack (netlink event groups NEW, UPDATE,
  DESTROY on one socket, a GET per long-lived flow every `--totals-interval` seconds on another).
  Conntrack counts IP bytes; UDP payload is exact from it (IP + UDP headers are fixed), TCP
  payload is estimated from it only for periodic totals.
- One AF_PACKET socket on the host end of the veth carries a classic BPF filter that passes
  only TCP SYN/FIN/RST, UDP port 53 and ICMP destination-unreachable, so Python sees a
  handful of packets per connection.
  The SYN and FIN sequence numbers give exact TCP payload totals at close, and the DNS
  answers name the peers. Both directions share the socket's one queue, so they arrive in the
  order they happened (a DNS answer before the SYN it causes, a SYN before its SYN-ACK).
- One more on the namespace's own loopback passes only the resets sent there: a connect to
  127.0.0.1 or ::1 inside, refused, never reaches the veth (the host's loopback is not the
  namespace's), and its reset is the only trace of it. A hint for the user (`--netns-forward
  PORT`) goes to the descriptor `--say-fd` names, the supervisor's terminal.

Ordering against conntrack: a packet reaches the socket before netfilter sees it, so each pass
reads conntrack first and the packets second, and processes the packets first.

This module is the process (signals, the loop, the owner's end); conntrack is read in
`capture_netlink`, the packets in `capture_packets`, flows become events in `capture_flows`.
Modules beside it rather than a package, so that `python -I -m aegis_mcp.netns.capture` stays
what netns starts; all of them import only the standard library and `aegis_mcp` itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable

from aegis_mcp import procs
from aegis_mcp.netmon.policy import parse_compiled
from aegis_mcp.netns.capture_denials import Denials, logged_packets, nflog_socket
from aegis_mcp.netns.capture_flows import EventLog, Tracker
from aegis_mcp.netns.capture_netlink import Conntrack
from aegis_mcp.netns.capture_packets import (
    SNAPLEN,
    drain_packets,
    loopback_socket,
    packet_socket,
    packets_dropped,
)
from aegis_mcp.netns.resolver import MIN_TTL, Resolver

# ---------------------------------------------------------------------------------------------
# Main loop


def run(args: argparse.Namespace) -> int:
    if not procs.die_with_parent(signal.SIGTERM):
        return 0
    owner_start = procs.start_time(args.owner_pid)
    if owner_start is None:
        return 0
    stop = False

    def on_signal(_signo: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    log = EventLog(args.log_fd)
    ct = Conntrack()
    packets = packet_socket(args.veth)
    loopback = loopback_socket(f"/run/netns/{args.name}")
    forwarded = {(args.host_addr, int(port)): ip
                 for ip, port in (f.rsplit(":", 1) for f in args.forward)}
    tracker = Tracker(args.ns_addr, log, ct, args.totals_interval, forwarded,
                      host_addr=args.host_addr, host_access=args.host_access,
                      say=_sayer(args.say_fd) if args.say_fd is not None else None)
    denials, nflog, resolver = None, None, None
    if args.nflog_group is not None:
        # The policy the supervisor holds (root's, in memory), never the file beside the log.
        policy = parse_compiled(sys.stdin.buffer.read(16 << 20).decode(), "the policy on stdin")
        nflog = nflog_socket(args.nflog_group)
        resolver = Resolver(
            socket.socket(fileno=args.resolver_fd), args.upstream, policy, args.table,
            args.nft, lambda why: tracker.gap(time.time(), why), args.min_ttl,
            listener=socket.socket(fileno=args.resolver_tcp_fd)
            if args.resolver_tcp_fd is not None else None,
            maps=args.learned_map,
            heard=lambda answer, port: tracker.dns_answer(answer, port, time.time()))
        denials = Denials(policy, args.ns_addr, log.write,
                          lambda addr, _rule: resolver.names.get(addr)
                          or tracker.names.get(addr))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)

    buf = bytearray(SNAPLEN)
    lost_reported = 0
    drops_reported = 0
    next_check = time.monotonic() + 1.0
    while not stop:
        select.select([ct.events, packets, loopback, wake_r, *([nflog] if nflog else []),
                       *(resolver.sockets() if resolver else [])],
                      resolver.writers() if resolver else [], [], 1.0)
        if resolver is not None:  # first: a client waits for it
            resolver.serve()
        with contextlib.suppress(BlockingIOError):
            os.read(wake_r, 64)
        _pass(tracker, ct, packets, buf, loopback)
        if nflog is not None and denials is not None:
            _denials(denials, nflog, tracker)
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + 1.0
            now = time.time()
            tracker.tick(now)
            if ct.lost != lost_reported:
                tracker.gap(now, f"conntrack events lost ({ct.lost - lost_reported} "
                            "overruns): some flows may be missing")
                lost_reported = ct.lost
            drops = packets_dropped(packets)
            if drops:
                drops_reported += drops
                tracker.gap(now, f"packet capture dropped {drops} control packets "
                            f"({drops_reported} so far)")
            if procs.start_time(args.owner_pid) != owner_start:
                break
    # A last look at what is queued, then totals of every flow still open.
    _pass(tracker, ct, packets, buf, loopback)
    if nflog is not None and denials is not None:
        _denials(denials, nflog, tracker)
    tracker.tick(time.time(), final=True)
    return 0


def _sayer(fd: int) -> Callable[[str], None]:
    """One line to the user on `fd` (the supervisor's stderr), as the supervisor says it."""
    end = "\r\n" if os.isatty(fd) else "\n"  # the agent's TUI may hold the terminal raw

    def say(message: str) -> None:
        with contextlib.suppress(OSError):
            os.write(fd, f"aegis-mcp: {message}{end}".encode())

    return say


def _pass(tracker: Tracker, ct: Conntrack, packets: socket.socket, buf: bytearray,
          loopback: socket.socket | None = None) -> None:
    ct_batch = ct.drain()
    frames = drain_packets(packets, buf)
    resets = drain_packets(loopback, buf) if loopback is not None else []
    now = time.time()
    for frame in resets:
        try:
            tracker.loopback_packet(frame, now)
        except (ValueError, IndexError, struct.error) as exc:
            tracker.gap(now, f"unparsable packet skipped ({type(exc).__name__})")
    # Packets come from the agent: a malformed one must cost its own event, never the capture.
    for frame in frames:
        try:
            tracker.packet(frame, now)
        except (ValueError, IndexError, struct.error, UnicodeError) as exc:
            tracker.gap(now, f"unparsable packet skipped ({type(exc).__name__})")
    for entry in ct_batch:
        tracker.conntrack(entry, now)


def _denials(denials: Denials, nflog: socket.socket, tracker: Tracker) -> None:
    try:
        logged = logged_packets(nflog)
    except OSError as exc:  # ENOBUFS: the kernel dropped some; what is queued still counts
        tracker.gap(time.time(), f"denials lost ({exc.strerror or exc})")
        return
    for prefix, packet in logged:
        try:
            denials.packet(prefix, packet)
        except (ValueError, IndexError, struct.error) as exc:
            tracker.gap(time.time(), f"unparsable denial skipped ({type(exc).__name__})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aegis_mcp.netns.capture",
                                     description="netns capture helper (started by aegis-mcp)")
    parser.add_argument("--name", required=True, help="namespace name, under /run/netns")
    parser.add_argument("--veth", required=True, help="host end of the veth pair")
    parser.add_argument("--ns-addr", required=True, help="the namespace's address")
    parser.add_argument("--host-addr", required=True, help="the host end's address")
    parser.add_argument("--log-fd", type=int, required=True,
                        help="open descriptor of the netmon JSONL log to append to")
    parser.add_argument("--owner-pid", type=int, required=True, help="exit when it dies")
    parser.add_argument("--forward", action="append", default=[], metavar="IP:PORT",
                        help="a host loopback ip:port forwarded to the host end's port: its "
                             "connections are named by that address (repeatable)")
    parser.add_argument("--host-access", action="store_true",
                        help="the agent may reach the host's services (--netns-host-access)")
    parser.add_argument("--say-fd", type=int, default=None,
                        help="open descriptor of the user's terminal, for hints (once each)")
    parser.add_argument("--nflog-group", type=int, default=None,
                        help="the nflog group the namespace's policy logs denials to; the "
                             "policy (compiled) comes on stdin")
    parser.add_argument("--resolver-fd", type=int, default=None,
                        help="the UDP socket of the namespace's resolver (with --nflog-group)")
    parser.add_argument("--resolver-tcp-fd", type=int, default=None,
                        help="the listening TCP socket of the namespace's resolver")
    parser.add_argument("--learned-map", action="store_true",
                        help="the policy's table has map `learned` (nft_policy)")
    parser.add_argument("--upstream", default="127.0.0.53", help="the resolver's upstream")
    parser.add_argument("--table", default="", help="the namespace's nft table (its sets)")
    parser.add_argument("--nft", default="nft", help="the nft program")
    parser.add_argument("--min-ttl", type=int, default=MIN_TTL,
                        help="the shortest life of a learned address, in seconds")
    parser.add_argument("--totals-interval", type=float,
                        default=float(os.environ.get("AEGIS_NETNS_TOTALS_INTERVAL", "10")),
                        help="seconds between totals events of a long flow (default 10)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except OSError as exc:
        print(f"aegis-mcp capture: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
