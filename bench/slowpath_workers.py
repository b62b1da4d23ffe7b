"""Payload records per second with 1 and N slow-path worker processes
(bench/slowpath.py section 1b; runs on its own too).

The real fast path (BPF_PROG_TEST_RUN) under an inspect rule (waf, dlp,
dpi) fills the workers' rings with ``--segments`` pipelined HTTP GET
segments spread over ``FLOWS`` flows; the kernel picks each flow's worker
by its session hash, as it does live. Then N forked processes, each with
its own Engine on its own ring (as `microseg run`'s workers), start at one
signal and read their rings empty. Rate: all records over the time from the
first start to the last finish (CLOCK_MONOTONIC, the same in every
process). Rounds interleave the worker counts; medians.

    .venv/bin/python bench/slowpath_workers.py [--segments N] [--rounds N] [--workers 1,2]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FLOWS = 64          # enough that a hash split of them is close to even
RING_BYTES = 64 << 20


def _child(ring_fd, rules, dec, go_r: int, out_w: int) -> None:
    from appliance.workers import RING_BATCH
    from bench.slowpath import NoVerdicts
    from slowpath.engine import Engine
    from slowpath.ringbuf import RingBuffer

    ring = RingBuffer(ring_fd)
    engine = Engine(rules, lambda r: None, NoVerdicts())
    os.read(go_r, 1)
    t0 = time.monotonic()
    n = 0
    while True:
        raws = ring.drain(RING_BATCH)
        if not raws:
            break
        n += len(raws)
        engine.handle_raw_batch(raws, dec)
    t1 = time.monotonic()
    os.write(out_w, json.dumps([n, t0, t1]).encode() + b"\n")


def bench_workers(segments: int, rounds: int, counts: tuple[int, ...]) -> dict[int, float]:
    from appliance.policyfile import compile_text
    from bench.slowpath import INSPECT_EVERYTHING, send_http_flow
    from datapath.config import DatapathConfig
    from datapath.enums import Direction
    from datapath.insp_rings import WorkerRings
    from datapath.loader import FastPath
    from datapath.policy_maps import PolicyMaps
    from datapath.sessions import WIDE_KEY_MAP, layouts_of
    from slowpath.records import RecordDecoder, VerdictWriter, record_type
    from slowpath.ringbuf import RingBuffer
    from slowpath.rulesfile import load_rules

    most = max(counts)
    fp = FastPath(DatapathConfig(inspect_budget=1 << 30, inspect_ring_bytes=RING_BYTES, heartbeat_timeout_s=3600,
                                 slowpath_workers=most))
    rings = None
    try:
        _, pol = compile_text(INSPECT_EVERYTHING, "<bench>")
        PolicyMaps.for_fastpath(fp).apply(pol)
        rules = load_rules(Path(__file__).resolve().parent.parent / "examples" / "rules.yaml")
        dec = RecordDecoder(record_type({"ms_insp_scratch": (None, fp.table("ms_insp_scratch").Leaf)}),
                            layouts_of(fp)[WIDE_KEY_MAP][0])
        rings = WorkerRings(fp, most)
        readers = [RingBuffer(fd) for fd in rings.fds]
        for i in range(most):
            VerdictWriter(fp.table("ms_verdicts").map_fd, fp.table("ms_slowpath").map_fd,
                          fp.table("ms_verdicts").Leaf, fp.table("ms_slowpath").Leaf, worker=i).heartbeat(1)
        ing = fp.prog_fd(Direction.DIR_INGRESS)
        per_flow = max(1, segments // FLOWS)
        sport = 30000

        def fill(n_workers: int) -> int:
            """FLOWS flows of per_flow segments each, fresh ports; the kernel
            spreads them over n_workers rings."""
            nonlocal sport
            fp.apply_runtime(fp.config.model_copy(update={"slowpath_workers": n_workers}))
            for f in range(FLOWS):
                sport += 1
                send_http_flow(ing, f"10.1.{f // 250}.{1 + f % 250}", sport, per_flow)
            return FLOWS * per_flow

        rates: dict[int, list[float]] = {n: [] for n in counts}
        for rnd in range(rounds):
            order = list(counts) if rnd % 2 == 0 else list(reversed(counts))
            for n in order:
                for r in readers:
                    r.drain()
                expected = fill(n)
                waiting = sum(r.pending_bytes() > 0 for r in readers[:n])
                if waiting != n:
                    raise SystemExit(f"{n} workers: only {waiting} rings got records")
                go_r, go_w = os.pipe()
                out_r, out_w = os.pipe()
                pids = []
                gc.freeze()        # as WorkerSet does: the children's collections leave the parent's pages shared
                for i in range(n):
                    pid = os.fork()
                    if pid == 0:
                        try:
                            os.close(go_w)
                            _child(rings.fds[i], rules, dec, go_r, out_w)
                        finally:
                            os._exit(0)
                    pids.append(pid)
                os.close(go_r)
                os.close(out_w)
                os.write(go_w, b"x" * n)
                with os.fdopen(out_r) as f:
                    res = [json.loads(line) for line in f]
                for pid in pids:
                    os.waitpid(pid, 0)
                os.close(go_w)
                got = sum(r[0] for r in res)
                if got != expected:
                    raise SystemExit(f"{n} workers read {got} records of {expected}")
                span = max(r[2] for r in res) - min(r[1] for r in res)
                rates[n].append(got / span)
        for r in readers:
            r.close()
        return {n: statistics.median(v) for n, v in rates.items()}
    finally:
        if rings is not None:
            rings.close()
        fp.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=40_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    args = ap.parse_args(argv)
    counts = tuple(int(x) for x in args.workers.split(","))
    if os.geteuid() != 0:
        print("bench/slowpath_workers.py loads BPF programs: run it as root", file=sys.stderr)
        return 1
    rates = bench_workers(args.segments, args.rounds, counts)
    print_table(rates, args.segments, os.cpu_count())
    return 0


def print_table(rates: dict[int, float], segments: int, cpus: int | None) -> None:
    base = rates[min(rates)]
    print(f"1b. payload records of {FLOWS} flows ({segments:,} segments), read by N worker processes "
          f"({cpus} CPUs)")
    print()
    print("| workers | records/s | ratio to one |")
    print("|---|---|---|")
    for n, rate in sorted(rates.items()):
        print(f"| {n} | {rate:,.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
