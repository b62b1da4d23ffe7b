"""What an EVE record costs in user space: encoding (slowpath/eve.py
``encode``) per event type, and a session's flow record built and encoded
(slowpath/flowend.py ``flow_end_record``), CPU time per record.

* ``encode <type>``: every record of that type in an EVE file (``--eve``,
  e.g. what `microseg replay` wrote for bench/peers.py's capture), read
  back as dicts, encoded ``--repeat`` times. The records are the builders'
  (JSON's own types), so this is the cost a record pays in `microseg run`'s
  sinks (EveLog.emit) and `microseg replay`'s writer.
* ``flow_end_record``: session ends as the kernel reports them (FlowEnd),
  seeded random tuples, counters and states, turned into the EVE flow
  record and encoded: a session no engine held (the daemon's flowlog, and
  most sessions of a replay). ``flow_end_record+engine``: the same with the
  engine's side (its FlowInfo and verdict), as Engine.session_end writes it.

``--baseline TREE`` times another source tree (e.g. a ``git archive`` of
the commit before a change) in the same rounds: each round runs one child
process per tree (its modules first on PYTHONPATH), in rotated order, and
the medians are compared, so a change is measured against its baseline
under the same load (the machine is shared).

    .venv/bin/python bench/eve.py --eve EVE.json [--rounds N] [--repeat N] [--baseline TREE]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROUNDS = 5
DEFAULT_REPEAT = 3
# Session ends timed per round: about the sessions of bench/peers.py's
# 20-copy capture (3,501), so both measure the same amount of work.
FLOW_ENDS = 3500


def _flow_ends(n: int):
    from datapath.flowevents import FlowEnd
    rng = random.Random(14)
    ends = []
    for i in range(n):
        v6 = rng.random() < 0.2
        proto = rng.choice([6, 6, 6, 17, 17, 58 if v6 else 1])
        icmp = proto in (1, 58)
        client = (f"2001:db8:{i % 200:x}::{i % 250 + 1:x}" if v6 else f"10.{i % 200}.{i // 200 % 250}.{i % 250 + 1}",
                  0 if icmp else rng.randrange(1024, 65536))
        server = (f"2001:db8:ffff::{i % 7 + 1:x}" if v6 else f"192.168.{i % 50}.{i % 7 + 1}",
                  0 if icmp else rng.choice([53, 80, 443, 5432, 9092]))
        first = 10 ** 18 + i * 1_000_000
        ends.append(FlowEnd(rng.choice(["closed", "timeout", "shutdown", "swept"]),
                            rng.choice(["CT_ESTABLISHED", "CT_CLOSE", "CT_SYN_SENT", "CT_UDP_REPLIED"]), proto,
                            client, server, first, first + rng.randrange(10 ** 10),
                            (rng.randrange(1, 100), rng.randrange(100)),
                            (rng.randrange(10 ** 6), rng.randrange(10 ** 6)),
                            rng.randrange(10), 0, 1, rng.choice([1, 3]), 0, rng.choice([0, 1, 2]),
                            rng.choice([0, 1, 2]), 0, 0, b"\0" * 40))
    return ends


def _cpu_us(fn, items, repeat: int) -> float:
    t = time.process_time_ns()
    for _ in range(repeat):
        fn(items)
    return (time.process_time_ns() - t) / 1000 / repeat / max(1, len(items))


def child(eve_path: str, repeat: int) -> dict:
    """One round in this process: µs per record of every measurement."""
    # The tree's modules (PYTHONPATH), not bench/slowpath.py, which the
    # script's own directory at the head of sys.path would shadow them with.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    from slowpath import eve, flowend
    by_type: dict[str, list] = collections.defaultdict(list)
    with open(eve_path, "rb") as f:
        for line in f:
            rec = json.loads(line)
            by_type[rec.get("event_type", "?")].append(rec)
    encode = eve.encode

    def encode_all(recs):
        for r in recs:
            encode(r)
    out = {f"encode {t}": _cpu_us(encode_all, recs, repeat) for t, recs in sorted(by_type.items())}
    every = [r for recs in by_type.values() for r in recs]
    out["encode (all)"] = _cpu_us(encode_all, every, repeat)

    ends = _flow_ends(FLOW_ENDS)
    wall = lambda ns: ns / 1e9                              # noqa: E731
    names = {1: "http", 2: "dns"}

    def flows(items):
        for ev in items:
            encode(flowend.flow_end_record(ev, wall, app_names=names))
    out["flow_end_record"] = _cpu_us(flows, ends, repeat)
    sides = [(ev, flowend.EngineSide(flowend.flow_info(ev, wall, "tls"), verdict="allow", verdict_latency_us=40))
             for ev in ends]

    def engine_flows(items):
        for ev, side in items:
            encode(flowend.flow_end_record(ev, wall, app_names=names, engine=side))
    out["flow_end_record+engine"] = _cpu_us(engine_flows, sides, repeat)
    out["records"] = {t: len(recs) for t, recs in by_type.items()}
    return out


def _run_child(tree: Path, eve_path: str, repeat: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--eve", eve_path,
                          "--repeat", str(repeat)], env=env, cwd=tree, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"bench/eve.py child in {tree} failed:\n{res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout)


def bench(eve_path: str, rounds: int, repeat: int, baseline: Path | None) -> int:
    trees = [("this tree", ROOT)] + ([("baseline", baseline)] if baseline is not None else [])
    results: dict[str, list[dict]] = {name: [] for name, _ in trees}
    counts = None
    for r in range(rounds):
        order = trees[r % len(trees):] + trees[:r % len(trees)]
        for name, tree in order:
            out = _run_child(tree, eve_path, repeat)
            counts = out.pop("records")
            results[name].append(out)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{name} encode(all) {results[name][-1]['encode (all)']:.2f}" for name, _ in trees), flush=True)
    keys = list(results["this tree"][0])
    med = {name: {k: statistics.median(x[k] for x in rs) for k in keys} for name, rs in results.items()}
    head = f"{'what (us per record, CPU)':34} {'records':>8} {'this tree':>10}"
    if baseline is not None:
        head += f" {'baseline':>10} {'ratio':>7}"
    print(f"\nmedians of {rounds} rounds, {repeat} passes a round; load {os.getloadavg()[0]:.1f}")
    print(head)
    for k in keys:
        n = counts.get(k.removeprefix("encode "), FLOW_ENDS) if k.startswith("encode ") and k != "encode (all)" \
            else sum(counts.values()) if k == "encode (all)" else FLOW_ENDS
        line = f"{k:34} {n:>8} {med['this tree'][k]:>10.2f}"
        if baseline is not None:
            line += f" {med['baseline'][k]:>10.2f} {med['baseline'][k] / med['this tree'][k]:>6.2f}x"
        print(line)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eve", required=True, help="an EVE JSON lines file (e.g. microseg replay's)")
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    ap.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="passes over the records a round")
    ap.add_argument("--baseline", metavar="TREE", type=Path, help="another source tree, timed in the same rounds")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if not Path(a.eve).is_file():
        ap.error(f"--eve {a.eve}: no such file")
    if a.rounds < 1 or a.repeat < 1:
        ap.error("--rounds and --repeat: 1 or more")
    if a.child:
        print(json.dumps(child(a.eve, a.repeat)))
        return 0
    if a.baseline is not None and not (a.baseline / "slowpath" / "eve.py").is_file():
        ap.error(f"--baseline {a.baseline}: not a microseg source tree (no slowpath/eve.py)")
    return bench(a.eve, a.rounds, a.repeat, a.baseline.resolve() if a.baseline is not None else None)


if __name__ == "__main__":
    sys.exit(main())
