"""Payload records per second with 1 and N slow-path worker processes
(bench/slowpath.py section 1b; runs on its own too).

The real fast path (BPF_PROG_TEST_RUN) under an inspect rule (waf, dlp,
dpi) fills the workers' rings with ``--segments`` pipelined HTTP GET
segments spread over ``FLOWS`` flows; the kernel picks each flow's worker
by its session hash, as it does live. The bench picks which flows to send
so that each worker gets FLOWS/N of them (see fill below: a hash split of
64 flows gave the busier of two workers 52-58 % of the records, capping
the ratio at 1.73-1.94 by construction). Then N forked processes, each
with its own Engine on its own ring (as `microseg run`'s workers), start at
one signal and read their rings empty. Rate: all records over the time from
the first start to the last finish (CLOCK_MONOTONIC, the same in every
process). Also each worker's CPU time (its process's, over the same span)
and the rate if each had a CPU of its own (all records over the busiest
worker's CPU time): on a busy 2-CPU machine any other runnable process takes
a CPU from a two-worker run but not from a one-worker run, so the wall
ratio says as much about the load as about the workers; the workers never
sleep in the timed part (no voluntary context switch), so what their wall
time has above their CPU time is other processes'. Rounds interleave the
worker counts; medians.

    .venv/bin/python bench/slowpath_workers.py [--segments N] [--rounds N] [--workers 1,2]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FLOWS = 64          # enough that a hash split of them is close to even
RING_BYTES = 64 << 20
# Candidate flows tried per flow kept when picking an even split (fill): a
# fair split of 2 needs ~1 per flow kept, plus a few; more means the hash
# is not spreading flows at all, which the bench says rather than loops.
CANDIDATES_PER_FLOW = 8


def _child(ring_fd, rules, dec, go_r: int, out_w: int) -> None:
    from appliance.workers import RING_BATCH
    from bench.slowpath import NoVerdicts
    from slowpath.engine import Engine
    from slowpath.ringbuf import RingBuffer

    ring = RingBuffer(ring_fd)
    engine = Engine(rules, lambda r: None, NoVerdicts())
    os.read(go_r, 1)
    t0 = time.monotonic()
    c0 = time.process_time()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    n = 0
    while True:
        raws = ring.drain(RING_BATCH)
        if not raws:
            break
        n += len(raws)
        engine.handle_raw_batch(raws, dec)
    t1 = time.monotonic()
    cpu = time.process_time() - c0
    sleeps = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - ru0.ru_nvcsw
    os.write(out_w, json.dumps([n, t0, t1, cpu, sleeps]).encode() + b"\n")


def bench_workers(segments: int, rounds: int, counts: tuple[int, ...]) -> dict[int, dict[str, float]]:
    """Per worker count, medians over the rounds: ``rate`` (records/s, wall),
    ``cpu_rate`` (records over the busiest worker's CPU time), ``share`` (the
    busiest worker's part of the records), ``sleeps`` (voluntary context
    switches of all workers in the timed part, summed)."""
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
            """FLOWS flows of per_flow segments each, fresh ports, FLOWS /
            n_workers on each worker. The kernel spreads flows over the
            rings by their session hash; the split of a few dozen flows is
            a matter of luck (and of consecutive ports with consecutive
            addresses, which this hash spreads less evenly than random
            ones), which the bench would measure instead of the workers.
            So each candidate flow starts with its handshake and one GET,
            the ring that GET landed in names its worker, and the flow goes
            on to per_flow GETs only if that worker still needs flows; a
            flow whose worker has its share stays a one-GET flow (its
            record is read and counted like the others). Returns the
            records sent."""
            nonlocal sport
            fp.apply_runtime(fp.config.model_copy(update={"slowpath_workers": n_workers}))
            want = [FLOWS // n_workers + (i < FLOWS % n_workers) for i in range(n_workers)]
            records = 0
            for f in range(FLOWS * CANDIDATES_PER_FLOW):
                if not any(want):
                    return records
                sport += 1
                client = f"10.1.{f // 250}.{1 + f % 250}"
                before = [r.pending_bytes() for r in readers[:n_workers]]
                send_http_flow(ing, client, sport, 1)
                records += 1
                grew = [i for i, r in enumerate(readers[:n_workers]) if r.pending_bytes() != before[i]]
                if len(grew) != 1:
                    raise SystemExit(f"one GET of {client}:{sport} reached rings {grew}, not one")
                if want[grew[0]]:
                    want[grew[0]] -= 1
                    send_http_flow(ing, client, sport, per_flow, first=1)
                    records += per_flow - 1
            raise SystemExit(f"{FLOWS * CANDIDATES_PER_FLOW} flows did not give each of {n_workers} "
                             f"workers {FLOWS // n_workers}")

        rows: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
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
                rows[n].append({"rate": got / span, "cpu_rate": got / max(r[3] for r in res),
                                "share": max(r[0] for r in res) / got, "sleeps": sum(r[4] for r in res)})
        for r in readers:
            r.close()
        return {n: {k: statistics.median(row[k] for row in v) for k in v[0]} for n, v in rows.items()}
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


def print_table(rates: dict[int, dict[str, float]], segments: int, cpus: int | None) -> None:
    base = rates[min(rates)]
    print(f"1b. payload records of {FLOWS} flows ({segments:,} segments, FLOWS/N flows on each worker), "
          f"read by N worker processes ({cpus} CPUs; load average {os.getloadavg()[0]:.1f} at the end)")
    print()
    print("| workers | records/s | ratio to one | records/s, a CPU each (busiest worker's CPU time) "
          "| ratio to one | busiest worker's records | worker sleeps |")
    print("|---|---|---|---|---|---|---|")
    for n, r in sorted(rates.items()):
        print(f"| {n} | {r['rate']:,.0f} | {r['rate'] / base['rate']:.2f} | {r['cpu_rate']:,.0f} "
              f"| {r['cpu_rate'] / base['cpu_rate']:.2f} | {r['share']:.1%} | {r['sleeps']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
