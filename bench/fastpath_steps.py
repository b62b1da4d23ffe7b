"""What each step of an established TCP packet costs in the fast path.

bench/fastpath.py measures the whole program; this splits its
``tcp4-established`` row (an in-window ACK of an ESTABLISHED IPv4 flow)
into steps. The fast path is built several times, each build stopping at
one cut point (``-DMS_BENCH_STOP n``: MS_BENCH_STEP in bpf/fastpath.c and
bpf/lib/conntrack.h; the program returns TC_ACT_OK there and counts
nothing), next to the full build and the empty TC program:

  1 parse        per-CPU scratch, its reset, Ethernet / IPv4 / TCP parsing
  2 dispatch     from the parsed packet to the session code (a tail call
                 into the TCP stage, or the entry's own established lane)
  3 lookup       the clock, the session key and the ms_flows lookup
                 (with the expiry check)
  4 checks       policy generation, state machine, what the packet asks of
                 the payload stage
  5 window       window tracking and the session's accounting
  6 counters     the per-reason counter (the full build)

A step's cost is the difference between the build that stops after it and
the one that stops before it, per round, median over rounds; the builds
are interleaved within each round (order rotated) as in bench/fastpath.py.
Each build has its own maps: the full build runs the handshake, and its
sessions are copied into the others. The full build's verdict and counter
are checked as bench/fastpath.py checks them.

    .venv/bin/python bench/fastpath_steps.py [--repeat N] [--rounds N] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fastpath import (V4_CLIENT, repeat_rounds, repeat_rounds_options,  # noqa: E402
                      V4_SERVER, Case, load_empty, must, run_checked, tcp_packets)

from datapath import bpfsys  # noqa: E402
from datapath.compile import check_headers  # noqa: E402
from datapath.enums import Direction, Reason  # noqa: E402
from datapath.loader import TC_ACT_OK, FastPath  # noqa: E402
from datapath.source import MAIN_SOURCE, program_text  # noqa: E402

# Cut points, in the order a packet reaches them (MS_BENCH_STEP numbers).
STEPS = {1: "parse", 2: "dispatch", 3: "lookup", 4: "checks", 5: "window"}
WHAT = {
    "parse": "per-CPU scratch, its reset, Ethernet/IPv4/TCP parsing",
    "dispatch": "to the session code: tail call to the TCP stage, or the entry's lane",
    "lookup": "clock, session key, ms_flows lookup and expiry check",
    "checks": "policy generation, state machine, payload-stage conditions",
    "window": "window tracking (seq/ack bounds, advance) and session accounting",
    "counters": "the per-reason packet and byte counter",
}


def build(stop: int | None) -> FastPath:
    text = program_text(MAIN_SOURCE)
    if stop is not None:
        text = f"#define MS_BENCH_STOP {stop}\n" + text
    return FastPath(text=text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    repeat_rounds_options(ap)
    args = ap.parse_args(argv)
    repeat, rounds = repeat_rounds(ap, args)
    if os.geteuid() != 0:
        print("bench/fastpath_steps.py loads BPF programs: run it as root", file=sys.stderr)
        return 1
    check_headers()

    empty_bpf, empty_fd = load_empty()
    builds: dict[int | None, FastPath] = {}
    try:
        full = builds[None] = build(None)
        for n in STEPS:
            builds[n] = build(n)
        pk = tcp_packets(4, V4_CLIENT, V4_SERVER, 40000)
        for what in ("syn", "synack", "ack"):
            must(full, pk[what], what)
        src = full.table("ms_flows4")   # the IPv4 flow's session
        entries = list(src.items())
        for n in STEPS:
            dst = builds[n].table("ms_flows4")
            for k, v in entries:
                dst[k] = v
        cases = [Case("empty", empty_fd, pk["ack"], path="the floor")]
        cases += [Case(STEPS[n], builds[n].prog_fd(Direction.DIR_INGRESS), pk["ack"], path=WHAT[STEPS[n]])
                  for n in STEPS]
        cases.append(Case("counters", full.prog_fd(Direction.DIR_INGRESS), pk["ack"], full,
                          reason=Reason.PASS_FORWARD, path=WHAT["counters"]))
        for c in cases:
            run_checked(c, c.frame, 1)
        for rnd in range(rounds):
            order = cases[rnd % len(cases):] + cases[:rnd % len(cases)]
            for c in order:
                c.samples.append(run_checked(c, c.frame, repeat))
        # Every cut build must still have found the session (nothing it
        # reads has changed: a stopped build advances no window).
        for n in STEPS:
            r = bpfsys.prog_test_run(builds[n].prog_fd(Direction.DIR_INGRESS), pk["ack"], repeat=1)
            if r.retval != TC_ACT_OK:
                cases[n].problems.append(f"action {r.retval}")
    finally:
        for fp in builds.values():
            fp.close()
        empty_bpf.cleanup()

    print("microseg fast path, step by step: tcp4-established (in-window ACK, IPv4, ms_flows)")
    print(f"kernel   {os.uname().release}")
    print(f"repeat   {repeat}")
    print(f"rounds   {rounds}  (median reported; builds interleaved within each round)")
    print()
    print("| step | ns/packet up to here (median) | step's own ns (median of per-round differences) "
          "| ratio to empty up to here | what |")
    print("|---|---|---|---|---|")
    base = statistics.median(cases[0].samples) or 1
    prev = cases[0]
    warnings = []
    for c in cases:
        med = statistics.median(c.samples)
        own = "" if c is prev else f"{statistics.median(a - b for a, b in zip(c.samples, prev.samples)):g}"
        print(f"| {c.name} | {med:g} | {own} | {med / base:.2f} | {c.path} |")
        if c.problems:
            print(f"| WARNING {c.name} | {'; '.join(sorted(set(c.problems))[:3])} |")
            warnings.append(c.name)
        prev = c
    if warnings:
        print(f"{len(warnings)} build(s) took another path than intended: {', '.join(warnings)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
