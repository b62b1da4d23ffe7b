"""Parser throughput over the real-traffic corpus, next to a copy-only baseline.

The flows of ../shared/corpus that the analyzer identifies as HTTP, TLS or
DNS are read once (slowpath/pcap.py). Their in-order payload becomes TCP
segments again (one per delivered chunk, the sequence numbers they had in the
stream), so each measurement starts from segments, as the slow path does
with ring-buffer records:

* ``copy``: segments through reassembly (slowpath/reassembly.py) and the
  delivered bytes copied into a buffer; no parsing. UDP: the datagrams copied.
* ``parse``: the same reassembly, the bytes into the protocol's parser.

Each case runs the whole set ``--loops`` times per round, ``--rounds``
rounds, cases interleaved within a round, on one CPU; the median round is
reported. Units: HTTP requests (request heads parsed), TLS ClientHellos, DNS
messages. The ratio is parse rate / copy rate: the share of the pure
reassembly-and-copy speed that parsing keeps.

    .venv/bin/python bench/protocols.py [--rounds N] [--loops N] [--cpu N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocols import registry  # noqa: E402
from protocols.api import Direction  # noqa: E402
from slowpath.analyzer import FlowAnalyzer  # noqa: E402
from slowpath.pcap import Datagram, read_capture  # noqa: E402
from slowpath.reassembly import ACK, SYN, Data, StreamReassembler  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "pcaps"
UNITS = {"http": "http_request", "tls": "tls_client_hello", "dns": "dns_message"}
ISN = (1000, 900000)


def load_flows() -> dict[str, list[tuple[str, list]]]:
    """app -> [(transport, items)]: TCP items (direction, seq, flags, payload), UDP (direction, payload)."""
    out: dict[str, list] = {a: [] for a in UNITS}
    for pcap in sorted(CORPUS.iterdir()):
        for flow in read_capture(pcap).flows:
            an = FlowAnalyzer(flow.proto)
            items, nxt = [], {d: None for d in Direction}
            for ev in flow.events:
                if isinstance(ev, Datagram):
                    an.datagram(ev.direction, ev.payload)
                    items.append((ev.direction, ev.payload))
                elif isinstance(ev, Data):
                    an.data(ev.direction, ev.data)
                    d = ev.direction
                    if nxt[d] is None:
                        items.append((d, ISN[d], SYN, b""))
                    items.append((d, (ISN[d] + 1 + ev.stream_offset) % 2**32, ACK, ev.data))
                    nxt[d] = ev.stream_offset + len(ev.data)
            if an.app in out and items:
                out[an.app].append((flow.proto, items))
    return out


def run_copy(flows) -> int:
    total = 0
    for transport, items in flows:
        buf = bytearray()
        if transport == "udp":
            for _, payload in items:
                buf += payload
        else:
            r = StreamReassembler()
            for d, seq, flags, payload in items:
                for ev in r.segment(d, seq, flags, payload):
                    if isinstance(ev, Data):
                        buf += ev.data
        total += len(buf)
    return total


def run_parse(flows, plugin, unit: str) -> int:
    n = 0
    for transport, items in flows:
        parser = plugin.parser_factory(transport)
        if transport == "udp":
            for d, payload in items:
                n += sum(1 for e in parser.receive_data(payload, d) if e.kind == unit)
        else:
            r = StreamReassembler()
            for d, seq, flags, payload in items:
                for ev in r.segment(d, seq, flags, payload):
                    if isinstance(ev, Data):
                        n += sum(1 for e in parser.receive_data(ev.data, ev.direction) if e.kind == unit)
    return n


def timed(fn, loops: int) -> float:
    t0 = time.perf_counter()
    for _ in range(loops):
        fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--loops", type=int, default=20, help="passes over the corpus set per round and case")
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last one)")
    args = ap.parse_args(argv)
    if not CORPUS.is_dir():
        print(f"bench/protocols.py: corpus not found at {CORPUS}", file=sys.stderr)
        return 1
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    plugins = registry.by_name()
    flows = load_flows()
    units, nbytes = {}, {}
    for app, fl in flows.items():
        units[app] = run_parse(fl, plugins[app], UNITS[app])
        nbytes[app] = run_copy(fl)
    samples = {app: {"copy": [], "parse": []} for app in flows}
    for rnd in range(args.rounds):
        for app, fl in flows.items():
            pair = [("copy", lambda: run_copy(fl)),
                    ("parse", lambda: run_parse(fl, plugins[app], UNITS[app]))]
            for name, fn in (pair if rnd % 2 == 0 else pair[::-1]):
                samples[app][name].append(timed(fn, args.loops))

    print("microseg protocol parsers over the corpus: one CPU "
          f"(cpu {cpu}), {args.rounds} rounds x {args.loops} passes, median round")
    print()
    print("| protocol | flows | bytes | units | parse, units/s | copy only, units/s | ratio | parse, MB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for app in flows:
        tp = statistics.median(samples[app]["parse"]) / args.loops
        tc = statistics.median(samples[app]["copy"]) / args.loops
        u = units[app]
        print(f"| {app} ({UNITS[app]}) | {len(flows[app])} | {nbytes[app]} | {u} | {u / tp:,.0f} | {u / tc:,.0f} "
              f"| {tc / tp:.2f} | {nbytes[app] / tp / 1e6:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
