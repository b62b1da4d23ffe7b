"""The established packet, this tree's fast path against a git revision's.

An A/B of bench/fastpath.py's ``tcp4-established``, ``tcp6-established``
and ``udp4-established`` rows: the fast path is built from this tree's bpf/ and from ``--base``'s
(``git archive``; the Python loader is this tree's, so the base must load
with it), each runs its handshakes, and the two builds' ACKs and the empty
TC program are measured interleaved within each round (order rotated),
median over rounds, as bench/fastpath.py does. The verdict and counter of
every measurement are checked.

    .venv/bin/python bench/fastpath_ab.py --base REV [--repeat N] [--rounds N] [--quick]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fastpath import (V4_CLIENT, repeat_rounds, repeat_rounds_options,  # noqa: E402
                      V4_SERVER, V6_CLIENT, V6_SERVER, Case, load_empty, must, run_checked, tcp_packets,
                      udp_packets)

from datapath.compile import check_headers  # noqa: E402
from datapath.enums import Direction, Reason  # noqa: E402
from datapath.loader import FastPath  # noqa: E402
from datapath.source import MAIN_SOURCE, inline_includes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def base_text(rev: str, into: Path) -> str:
    """The fast path's source at ``rev`` (its bpf/ unpacked under ``into``)."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "bpf"], check=True,
                         capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into)   # our own repository's tree
    return inline_includes(into / "bpf" / "fastpath.c", search=(into / "bpf" / "lib",))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare against (e.g. HEAD~1)")
    repeat_rounds_options(ap)
    args = ap.parse_args(argv)
    repeat, rounds = repeat_rounds(ap, args)
    if os.geteuid() != 0:
        print("bench/fastpath_ab.py loads BPF programs: run it as root", file=sys.stderr)
        return 1
    check_headers()

    empty_bpf, empty_fd = load_empty()
    builds: dict[str, FastPath] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="fastpath-ab-") as tmp:
            builds["base"] = FastPath(text=base_text(args.base, Path(tmp)))
        builds["this"] = FastPath(text=inline_includes(MAIN_SOURCE))
        pk4 = tcp_packets(4, V4_CLIENT, V4_SERVER, 40000)
        pk6 = tcp_packets(6, V6_CLIENT, V6_SERVER, 40000)
        udp4 = udp_packets()
        cases = [Case("empty", empty_fd, pk4["ack"], path="the floor")]
        for name, fp in builds.items():
            for fam, pk in (("tcp4", pk4), ("tcp6", pk6)):
                for what in ("syn", "synack", "ack"):
                    must(fp, pk[what], f"{name} {fam} {what}")
                cases.append(Case(f"{fam}-established {name}", fp.prog_fd(Direction.DIR_INGRESS), pk["ack"],
                                  fp, reason=Reason.PASS_FORWARD))
            for what in ("request", "reply"):
                must(fp, udp4[what], f"{name} udp4 {what}")
            cases.append(Case(f"udp4-established {name}", fp.prog_fd(Direction.DIR_INGRESS), udp4["request"],
                              fp, reason=Reason.PASS_FORWARD))
        for c in cases:
            run_checked(c, c.frame, 1)
        for rnd in range(rounds):
            order = cases[rnd % len(cases):] + cases[:rnd % len(cases)]
            for c in order:
                c.samples.append(run_checked(c, c.frame, repeat))
    finally:
        for fp in builds.values():
            fp.close()
        empty_bpf.cleanup()

    print(f"microseg fast path A/B: this tree against {args.base}, established flows")
    print(f"kernel   {os.uname().release}")
    print(f"repeat   {repeat}")
    print(f"rounds   {rounds}  (median reported; programs interleaved within each round)")
    print(f"load     {' '.join(f'{x:.2f}' for x in os.getloadavg())} (after the run)")
    print()
    print("| case | ns/packet (median) | min | max | ratio to empty (median of per-round ratios) |")
    print("|---|---|---|---|---|")
    empty = cases[0].samples
    bad = 0
    for c in cases:
        ratio = statistics.median(s / e for s, e in zip(c.samples, empty) if e)
        print(f"| {c.name} | {statistics.median(c.samples):g} | {min(c.samples)} | {max(c.samples)} | {ratio:.2f} |")
        if c.problems:
            print(f"| WARNING {c.name} | {'; '.join(sorted(set(c.problems))[:3])} |")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
