"""Nanoseconds per packet of the fast path, next to an empty TC program.

Runs each program on one packet with BPF_PROG_TEST_RUN, ``--repeat`` times
per measurement; the kernel reports the mean duration of one run. The
machine is noisy, so the measurement is taken in several rounds, the
programs interleaved within each round (empty, tcp4, udp4, tcp6, empty, ...)
so that a slow stretch hits every case alike, and the median over rounds is
reported, with the minimum and maximum to show the spread. The ratio is to
the empty program measured in the same run: the harness cost (skb set-up,
the call) is in every number, and the ratio is what compares across machines.

The fast path cases measure an established flow: the first repetition
creates the flow entry (a warm-up run does it before the rounds), every
later one finds it and updates its counters in place.

    .venv/bin/python bench/fastpath.py [--repeat N] [--rounds N] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from datapath import bpfsys  # noqa: E402
from datapath.enums import Direction  # noqa: E402
from datapath.loader import TC_ACT_OK, FastPath, check_headers  # noqa: E402

DEFAULT_REPEAT = 1_000_000
DEFAULT_ROUNDS = 7
QUICK_REPEAT = 20_000
QUICK_ROUNDS = 3

EMPTY_PROGRAM = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

int empty(struct __sk_buff *skb)
{
    return TC_ACT_OK;
}
"""

MACS = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
# A TCP SYN's options (MSS, SACK permitted, timestamps, window scale) make
# the classic 74-byte frame; the UDP packet carries 32 bytes to match it.
SYN_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]


def packets() -> dict[str, bytes]:
    return {
        "tcp4": bytes(Ether(**MACS) / IP(src="10.0.0.1", dst="10.0.0.2")
                      / TCP(sport=40000, dport=80, flags="S", options=SYN_OPTIONS)),
        "udp4": bytes(Ether(**MACS) / IP(src="10.0.0.1", dst="10.0.0.2")
                      / UDP(sport=40000, dport=53) / (b"\0" * 32)),
        "tcp6": bytes(Ether(**MACS) / IPv6(src="2001:db8::1", dst="2001:db8::2")
                      / TCP(sport=40000, dport=80, flags="A")),
    }


def load_empty():
    from bcc import BPF

    b = BPF(text=EMPTY_PROGRAM)
    return b, b.load_func("empty", BPF.SCHED_CLS).fd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=None,
                    help=f"BPF_PROG_TEST_RUN repetitions per measurement (default {DEFAULT_REPEAT})")
    ap.add_argument("--rounds", type=int, default=None,
                    help=f"rounds; the median is reported (default {DEFAULT_ROUNDS})")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: repeat {QUICK_REPEAT}, {QUICK_ROUNDS} rounds")
    args = ap.parse_args(argv)
    repeat = args.repeat or (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    if repeat < 1 or rounds < 1:
        ap.error("--repeat and --rounds must be at least 1")
    if os.geteuid() != 0:
        print("bench/fastpath.py loads BPF programs: run it as root", file=sys.stderr)
        return 1
    check_headers()

    empty_bpf, empty_fd = load_empty()
    fp = FastPath()
    try:
        pkts = packets()
        ingress = fp.prog_fd(Direction.DIR_INGRESS)
        # (case, program fd, frame); the empty program runs on the TCP/IPv4 frame.
        cases = [("empty", empty_fd, pkts["tcp4"])]
        cases += [(f"fastpath-{name}", ingress, data) for name, data in pkts.items()]

        for name, fd, data in cases:  # warm-up; creates the flow entries
            r = bpfsys.prog_test_run(fd, data, repeat=1)
            if r.retval != TC_ACT_OK:
                print(f"{name}: program returned {r.retval}, not TC_ACT_OK", file=sys.stderr)
                return 1

        samples: dict[str, list[int]] = {name: [] for name, _, _ in cases}
        for rnd in range(rounds):
            # Rotate the order too, so no case always runs first in a round.
            order = cases[rnd % len(cases):] + cases[:rnd % len(cases)]
            for name, fd, data in order:
                samples[name].append(bpfsys.prog_test_run(fd, data, repeat=repeat).duration_ns)
    finally:
        fp.close()
        empty_bpf.cleanup()

    med = {name: statistics.median(v) for name, v in samples.items()}
    base = med["empty"] or 1
    print("microseg fast path: ns per packet, BPF_PROG_TEST_RUN (tc ingress program)")
    print(f"kernel   {os.uname().release}")
    print(f"repeat   {repeat}")
    print(f"rounds   {rounds}  (median reported; programs interleaved within each round)")
    print()
    print("| case | frame bytes | ns/packet (median) | min | max | ratio to empty |")
    print("|---|---|---|---|---|---|")
    for name, _, data in cases:
        v = samples[name]
        print(f"| {name} | {len(data)} | {med[name]:g} | {min(v)} | {max(v)} | {med[name] / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
