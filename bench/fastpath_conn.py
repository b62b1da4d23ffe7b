"""What each packet of a new connection costs in the fast path.

bench/fastpath.py's ``tcp4-syn-new-flow`` row is a new connection's first
packet; bench/policy.py's new-connections/s is the whole connection through
the lab gateway. This runs the packets of one short connection as the
lab's client and server send them (connect, a 1-byte request, a 1-byte
answer, the server's close, the client's RST close), each once (repeat 1),
flow after flow, with a policy loaded (bench/policy.py's allow-list shape:
``--rules`` entries, the last one allowing the measured flows, default deny):

  syn      new flow: lookups miss, policy evaluated, SYN budget, insert
           into ms_halfopen
  synack   the responder's SYN-ACK: ms_flows misses, ms_halfopen hits,
           the reply side's window set up
  ack      the handshake's last ACK: ESTABLISHED, moved into ms_flows
  req      the client's 1-byte request (a side's first payload: its L7 check)
  resp     the server's 1-byte answer
  fin      the server's FIN: the closing states
  rst      the client's RST at the expected sequence: the session ends,
           its end record goes to ms_events

The empty TC program runs the same way, call for call interleaved with the
flows' packets (``empty-repeat1``, the floor). Per round: an empty
half-open table and SYN budget, ``--flows`` new flows (one source port
each), the median per packet kind; the table has the median over rounds.
Every packet is checked: TC_ACT_OK, and the round's counters moved only
under the reasons expected (PASS_POLICY_ALLOW for the SYNs, PASS_FORWARD
for the rest), one end record per flow in the ring.

``--reuse``: each flow's ports come round again, as in bench/policy.py's
lab (its client's ports cycle within CT_CLOSE's timeout): the session
tables keep the flows of the round before (one untimed round first), so
each SYN finds its 5-tuple's previous connection closed in ms_flows
(ms_ct_tcp's port-reuse branch: the old verdict, counted PASS_FORWARD).

``--phased``: the same packets, each kind for every flow before the next
kind (every SYN, then every SYN-ACK, ...), as on a gateway with many
handshakes open at once, where a flow's next packet comes a round trip
later and finds its session's buckets and entry no longer in the cache
(here: the other flows' packets, --flows of them, evicted them). Flow
after flow (the default), a flow's packets find what its previous packet
touched still cached, as in bench/policy.py's lab, whose client waits for
each connection.

Several builds can be measured side by side, interleaved call for call
(``--variant NAME=-DMACRO[,-DMACRO...]``, each a build with those macros
defined before the program's text; ``base`` is the build as it is).

    .venv/bin/python bench/fastpath_conn.py [--flows N] [--rounds N] [--rules N] [--reuse] [--phased] [--variant NAME=-DX ...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from fastpath import ACK_OPTIONS, ISN, MACS, RISN, SYN_OPTIONS, load_empty  # noqa: E402

from appliance import policyfile  # noqa: E402
from datapath import bpfsys  # noqa: E402
from datapath.compile import check_headers  # noqa: E402
from datapath.enums import Direction, EventType, Reason  # noqa: E402
from datapath.flowevents import event_type  # noqa: E402
from datapath.loader import TC_ACT_OK, FastPath  # noqa: E402
from datapath.policy_maps import PolicyMaps  # noqa: E402
from datapath.source import MAIN_SOURCE, program_text  # noqa: E402
from slowpath.ringbuf import RingBuffer  # noqa: E402

DEFAULT_FLOWS = 5_000
DEFAULT_ROUNDS = 5
DEFAULT_RULES = 10
# One source port per flow, from 1024, under the half-open table's default
# 65,536 entries (no LRU eviction) and the end records of a round (128 bytes
# each) well within ms_events' 2 MiB.
MAX_FLOWS = 10_000
CLIENT, SERVER, PORT = "10.0.0.1", "10.0.0.3", 9000
CLIENT_NET = "10.0.0.0/24"
KINDS = ("syn", "synack", "ack", "req", "resp", "fin", "rst")


def conn_packets(sport: int) -> dict[str, bytes]:
    up = Ether(**MACS) / IP(src=CLIENT, dst=SERVER)
    down = Ether(**MACS) / IP(src=SERVER, dst=CLIENT)
    return {
        "syn": bytes(up / TCP(sport=sport, dport=PORT, flags="S", seq=ISN, options=SYN_OPTIONS)),
        "synack": bytes(down / TCP(sport=PORT, dport=sport, flags="SA", seq=RISN, ack=ISN + 1,
                                   options=SYN_OPTIONS)),
        "ack": bytes(up / TCP(sport=sport, dport=PORT, flags="A", seq=ISN + 1, ack=RISN + 1,
                              options=ACK_OPTIONS)),
        "req": bytes(up / TCP(sport=sport, dport=PORT, flags="PA", seq=ISN + 1, ack=RISN + 1,
                              options=ACK_OPTIONS) / b"q"),
        "resp": bytes(down / TCP(sport=PORT, dport=sport, flags="PA", seq=RISN + 1, ack=ISN + 2,
                                 options=ACK_OPTIONS) / b"a"),
        "fin": bytes(down / TCP(sport=PORT, dport=sport, flags="FA", seq=RISN + 2, ack=ISN + 2,
                                options=ACK_OPTIONS)),
        "rst": bytes(up / TCP(sport=sport, dport=PORT, flags="RA", seq=ISN + 2, ack=RISN + 3)),
    }


def policy_text(n_rules: int) -> str:
    """bench/policy.py's allow-list shape: n - 1 entries that do not match,
    then the one that allows CLIENT's network to SERVER:PORT."""
    lines = ["defaults: {ingress: deny, egress: deny}", "rules:"]
    for i in range(n_rules - 1):
        lines.append(f"  - {{from: 172.{16 + i // 4096}.{(i // 16) % 256}.{(i % 16) * 16}/28, "
                     f"to: 192.168.{i // 256}.{i % 256}/32, proto: tcp, ports: [{1024 + i}], action: allow}}")
    lines.append(f"  - {{from: {CLIENT_NET}, to: {SERVER}/32, proto: tcp, ports: [{PORT}], action: allow}}")
    return "\n".join(lines) + "\n"


def build(defines: list[str], policy: str) -> FastPath:
    text = program_text(MAIN_SOURCE)
    for d in reversed(defines):
        name, _, value = d[2:].partition("=")
        text = f"#define {name} {value or 1}\n" + text
    fp = FastPath(text=text)
    _, pol = policyfile.compile_text(policy, "bench.yaml")
    PolicyMaps.for_fastpath(fp).apply(pol)
    return fp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=DEFAULT_FLOWS, help=f"new flows per round (default {DEFAULT_FLOWS})")
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"rounds (default {DEFAULT_ROUNDS})")
    ap.add_argument("--rules", type=int, default=DEFAULT_RULES, help=f"allow-list entries (default {DEFAULT_RULES})")
    ap.add_argument("--reuse", action="store_true",
                    help="keep ms_flows between rounds: every SYN reuses a closed connection's ports")
    ap.add_argument("--phased", action="store_true",
                    help="each packet kind for every flow before the next kind: entries cold, as on a busy gateway")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=-DMACRO[,-DMACRO...]: another build, measured beside the base one")
    args = ap.parse_args(argv)
    if not 1 <= args.flows <= MAX_FLOWS or args.rounds < 1 or args.rules < 1:
        ap.error(f"--flows 1..{MAX_FLOWS}, --rounds and --rules at least 1")
    variants = {"base": []}
    for v in args.variant:
        name, sep, defs = v.partition("=")
        if not sep or not name or any(not d.startswith("-D") for d in defs.split(",")):
            ap.error(f"--variant {v!r}: expected NAME=-DMACRO[,-DMACRO...]")
        variants[name] = defs.split(",")
    if os.geteuid() != 0:
        print("bench/fastpath_conn.py loads BPF programs: run it as root", file=sys.stderr)
        return 1
    check_headers()

    policy = policy_text(args.rules)
    flows = [conn_packets(1024 + i) for i in range(args.flows)]
    empty_bpf, empty_fd = load_empty()
    builds = {}
    try:
        for name, defs in variants.items():
            builds[name] = build(defs, policy)
        rings = {n: RingBuffer(fp.table("ms_events").map_fd) for n, fp in builds.items()}
        # (build, kind) -> median per round; "empty" the floor
        res: dict[tuple[str, str], list[float]] = {}
        if args.reuse:
            for n, fp in builds.items():   # the untimed round: every flow closed in ms_flows
                fd = fp.prog_fd(Direction.DIR_INGRESS)
                for pk in flows:
                    for kind in KINDS:
                        bpfsys.prog_test_run(fd, pk[kind], repeat=1)
        problems: list[str] = []
        for rnd in range(args.rounds):
            calls = [(n, fp.prog_fd(Direction.DIR_INGRESS)) for n, fp in builds.items()] + [("empty", empty_fd)]
            k = rnd % len(calls)
            calls = calls[k:] + calls[:k]
            before = {}
            for n, fp in builds.items():
                tables = ("ms_halfopen4", "ms_halfopen6", "ms_syn_dst", "ms_syn_global")
                for t in tables + (() if args.reuse else ("ms_flows4", "ms_flows6")):
                    fp.table(t).clear()
                rings[n].drain()
                before[n] = fp.counters()
            d = {(n, kind): [] for n, _ in calls for kind in KINDS}
            # flow after flow, or (--phased) kind after kind
            order = ([(pk, kind) for kind in KINDS for pk in flows] if args.phased else
                     [(pk, kind) for pk in flows for kind in KINDS])
            for pk, kind in order:
                for n, fd in calls:
                    r = bpfsys.prog_test_run(fd, pk[kind], repeat=1)
                    d[(n, kind)].append(r.duration_ns)
                    if r.retval != TC_ACT_OK:
                        problems.append(f"{n} {kind}: action {r.retval}")
            for n, fp in builds.items():
                after = fp.counters()
                moved = {key[1]: after[key][0] - before[n].get(key, (0, 0))[0] for key in after
                         if after[key][0] != before[n].get(key, (0, 0))[0]}
                want = ({Reason.PASS_FORWARD: len(KINDS) * args.flows} if args.reuse else
                        {Reason.PASS_POLICY_ALLOW: args.flows, Reason.PASS_FORWARD: (len(KINDS) - 1) * args.flows})
                if moved != want:
                    got = ", ".join(f"{r.name} x{c}" for r, c in sorted(moved.items()))
                    problems.append(f"{n} round {rnd}: counted {got}")
                ends = [r for r in rings[n].drain() if event_type(r) == EventType.EVENT_FLOW_END]
                if len(ends) != args.flows:
                    problems.append(f"{n} round {rnd}: {len(ends)} end records, expected {args.flows}")
            for key, v in d.items():
                res.setdefault(key, []).append(statistics.median(v))
        for r in rings.values():
            r.close()
    finally:
        for fp in builds.values():
            fp.close()
        empty_bpf.cleanup()

    floor = statistics.median(res[("empty", "syn")])
    print("a new connection's packets in the fast path: ns per packet, BPF_PROG_TEST_RUN repeat 1")
    print(f"kernel {os.uname().release}; {args.flows} flows x {args.rounds} rounds, {args.rules}-rule "
          f"allow-list{', ports reused' if args.reuse else ''}{', phased' if args.phased else ''}; median over rounds of the per-round median; empty-repeat1 {floor:g} ns")
    print()
    names = list(builds)
    print("| packet | " + " | ".join(f"{n} ns | {n} / empty" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    tot = {n: 0.0 for n in names}
    for kind in KINDS:
        cells = []
        for n in names:
            m = statistics.median(res[(n, kind)])
            tot[n] += m
            cells.append(f"{m:g} | {m / floor:.2f}")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print("| connection (sum) | " + " | ".join(f"{tot[n]:g} | {tot[n] / floor:.2f}" for n in names) + " |")
    if len(names) > 1:
        print()
        for n in names[1:]:
            diffs = [f"{kind} {statistics.median([a - b for a, b in zip(res[(n, kind)], res[('base', kind)])]):+g}"
                     for kind in KINDS]
            print(f"{n} - base, median of per-round differences (ns): " + ", ".join(diffs))
    if problems:
        print(f"{len(problems)} problem(s): " + "; ".join(sorted(set(problems))[:5]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
