"""Nanoseconds per packet of the fast path, next to an empty TC program.

Runs each program on one packet with BPF_PROG_TEST_RUN, ``--repeat`` times
per measurement; the kernel reports the mean duration of one run. The
machine is noisy, so the measurement is taken in several rounds, the
programs interleaved within each round (empty, tcp4, udp4, ..., empty, ...)
so that a slow stretch hits every case alike, and the median over rounds is
reported, with the minimum and maximum to show the spread. The ratio is to
the empty program measured in the same run: the harness cost (skb set-up,
the call) is in every number, and the ratio is what compares across machines.

With ``repeat`` N the same packet runs N times against the same maps, so
each case is a packet whose repetitions all take the same path:

* ``tcp4-established`` / ``tcp6-established``: a pure ACK of an ESTABLISHED
  flow in ``ms_flows`` (the handshake is completed first). Repeated, it is a
  duplicate ACK: still in window, PASS_FORWARD every time.
* ``udp4-established``: a request of a UDP flow that has seen its reply
  (CT_UDP_REPLIED, in ``ms_flows``).
* ``tcp4-vxlan-established`` / ``tcp4-gre-established``: the
  ``tcp4-established`` ACK of another flow, carried in VXLAN (outer IPv4,
  UDP 4789, inner Ethernet) or in keyed GRE: the tunnel is decapsulated
  (bpf/lib/tunnel.h) and the inner flow's session found; the difference
  to ``tcp4-established`` is the cost of the decapsulation.
* ``tcp4-syn-halfopen``: a SYN. The warm-up run creates the half-open entry;
  every measured repetition is then a retransmission of the SYN of a flow in
  SYN_SENT (lookup misses ms_flows, hits ms_halfopen, redefines the
  initiator's window). This is the SYN path of an existing half-open flow,
  not the cost of a new flow.
* ``tcp4-syn-table-full``: on a second build with ``flow_table_size`` 1024,
  filled with 1024 established flows, the SYN of a new flow: both lookups
  miss, the table is full, the allow-list is consulted, DROP_FLOW_TABLE_FULL.
* ``tcp4-syn-new-flow``: the true cost of a new flow's SYN (lookups miss,
  SYN budget buckets, window set-up, insert into ms_halfopen). It cannot be
  repeated in place, so ``--new-flows`` different SYNs (one source port
  each, built beforehand) run once each (repeat 1), and the median of the
  per-call durations the kernel reports is taken. The half-open table and
  the SYN budget are emptied before each round, so every SYN is new. With
  repeat 1 the kernel's timer (a clock read around one run) weighs more, so
  this row's baseline is ``empty-repeat1``: the empty program run the same
  way, call for call interleaved with the SYNs.

* ``tcp4-first-payload`` / ``tcp4-later-payload``: the L7 stage's cost.
  ``--l7-flows`` established flows (after their handshakes) each send an
  HTTP request: its first payload goes through the L7 signature stage (a
  tail call, the first-payload bytes loaded, one lookup per signature
  shape; identified as HTTP, checked). The same segment sent again is a
  later payload of an identified flow: tracking only. Both repeat 1, one
  call each per flow, interleaved; the ratio is first / later. The flows'
  L7 marks are cleared before each round, so every round sees first
  payloads.

* ``tcp4-close-last-ack`` / ``tcp4-close-rst``: a session's last packet,
  which ends it and writes its end record (struct ms_flow_event) to the
  ms_events ring: the final ACK after both FINs (LAST_ACK -> TIME_WAIT) and
  a RST at the expected sequence number (ESTABLISHED -> CLOSE).
  ``--close-flows`` new flows per round (set up with their handshakes and,
  for the ACK, both FINs), one call each, repeat 1; the baseline is
  ``tcp4-ack-repeat1``, an ACK of each of those flows while still
  established, measured the same way. The ring is read after each round and
  must hold one record per closed flow.

Every measurement is checked: the TC action and the reason counter (all N
repetitions counted under the expected reason, nothing else). A case that
took another path is reported in a WARNING row.

    .venv/bin/python bench/fastpath.py [--repeat N] [--rounds N] [--new-flows N] [--l7-flows N] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from datapath import bpfsys  # noqa: E402
from datapath.config import DatapathConfig  # noqa: E402
from datapath.enums import Direction, Reason  # noqa: E402
from datapath.compile import check_headers  # noqa: E402
from datapath.loader import TC_ACT_OK, TC_ACT_SHOT, FastPath  # noqa: E402
from datapath.sessions import FAMILY_TABLES  # noqa: E402

DEFAULT_REPEAT = 1_000_000
DEFAULT_ROUNDS = 7
DEFAULT_NEW_FLOWS = 20_000
DEFAULT_L7_FLOWS = 5_000
QUICK_L7_FLOWS = 500
# Flows closed per round and kind (FIN, RST) for the last-packet rows: both
# kinds' end records (128 bytes each in the ring) fit ms_events' 2 MiB.
DEFAULT_CLOSE_FLOWS = 5_000
QUICK_CLOSE_FLOWS = 500
CLOSE_SERVER = "10.0.0.5"
L7_SERVER = "10.0.0.4"
HTTP_REQUEST = b"GET /index.html HTTP/1.1\r\nHost: example.org\r\nUser-Agent: bench\r\n\r\n"
# Same length, no signature matches: every shape is looked up (the worst case).
UNKNOWN_PAYLOAD = bytes(range(7, 7 + len(HTTP_REQUEST)))
QUICK_REPEAT = 20_000
QUICK_ROUNDS = 3


def repeat_rounds_options(ap) -> None:
    """--repeat, --rounds and --quick, as bench/fastpath_steps.py and
    bench/fastpath_ab.py take them (this script's own --quick does more)."""
    ap.add_argument("--repeat", type=int, default=None,
                    help=f"BPF_PROG_TEST_RUN repetitions per measurement (default {DEFAULT_REPEAT})")
    ap.add_argument("--rounds", type=int, default=None, help=f"rounds (default {DEFAULT_ROUNDS})")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: repeat {QUICK_REPEAT}, {QUICK_ROUNDS} rounds")


def repeat_rounds(ap, args) -> tuple[int, int]:
    """(repeat, rounds) from repeat_rounds_options' arguments; ap.error when
    either is below 1."""
    repeat = args.repeat or (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    if repeat < 1 or rounds < 1:
        ap.error("--repeat and --rounds must be at least 1")
    return repeat, rounds
QUICK_NEW_FLOWS = 2_000
# One source port per new flow, from 1024; also well under the half-open
# table's default 65,536 entries, so no SYN meets an LRU eviction.
MAX_NEW_FLOWS = 60_000
# The small build for the full-table case: the smallest table the
# configuration allows, so filling it takes a moment.
FULL_TABLE_SIZE = 1024

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
# the classic 74-byte frame; established segments carry timestamps (66).
SYN_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
ACK_OPTIONS = [("NOP", None), ("NOP", None), ("Timestamp", (2, 1))]
ISN, RISN = 1000, 5000
V4_CLIENT, V4_SERVER = "10.0.0.1", "10.0.0.2"
V6_CLIENT, V6_SERVER = "2001:db8::1", "2001:db8::2"
NEW_FLOW_SERVER = "10.0.0.3"


def _ip(family: int, src: str, dst: str):
    return IP(src=src, dst=dst) if family == 4 else IPv6(src=src, dst=dst)


def tcp_packets(family: int, client: str, server: str, sport: int, dport: int = 80) -> dict[str, bytes]:
    """The handshake of one flow and the in-window ACK that follows it."""
    up = Ether(**MACS) / _ip(family, client, server)
    down = Ether(**MACS) / _ip(family, server, client)
    return {
        "syn": bytes(up / TCP(sport=sport, dport=dport, flags="S", seq=ISN, options=SYN_OPTIONS)),
        "synack": bytes(down / TCP(sport=dport, dport=sport, flags="SA", seq=RISN, ack=ISN + 1,
                                   options=SYN_OPTIONS)),
        "ack": bytes(up / TCP(sport=sport, dport=dport, flags="A", seq=ISN + 1, ack=RISN + 1,
                              options=ACK_OPTIONS)),
    }


TUNNEL_ENDS = ("192.0.2.1", "192.0.2.2")


def tunnelled(frame: bytes, kind: str) -> bytes:
    """``frame``'s IP packet in VXLAN (inner Ethernet) or keyed GRE between
    TUNNEL_ENDS, the outer addresses swapped for a packet from the server
    (as the far tunnel end sends it)."""
    inner = frame[14:]
    rev = IP(inner).src == V4_SERVER
    outer = IP(src=TUNNEL_ENDS[rev], dst=TUNNEL_ENDS[1 - rev])
    if kind == "vxlan":
        body = UDP(sport=50000, dport=4789) / (b"\x08\0\0\0\0\0\x2a\0" + frame)
    else:
        body = (b"\x20\0\x08\0" + (42).to_bytes(4, "big") + inner)   # GRE, key 42, IPv4
        outer.proto = 47
    return bytes(Ether(**MACS) / outer / body)


def udp_packets(sport: int = 40000) -> dict[str, bytes]:
    up = Ether(**MACS) / IP(src=V4_CLIENT, dst=V4_SERVER) / UDP(sport=sport, dport=53)
    down = Ether(**MACS) / IP(src=V4_SERVER, dst=V4_CLIENT) / UDP(sport=53, dport=sport)
    # 32 bytes of payload make a 74-byte frame, as the SYN.
    return {"request": bytes(up / (b"\0" * 32)), "reply": bytes(down / (b"\0" * 32))}


def new_flow_syns(n: int) -> list[bytes]:
    """``n`` SYNs of different flows (source ports 1024, 1025, ...)."""
    base = bytes(Ether(**MACS) / IP(src=V4_CLIENT, dst=NEW_FLOW_SERVER)
                 / TCP(sport=1024, dport=80, flags="S", seq=ISN, options=SYN_OPTIONS))
    out = []
    for i in range(n):
        pkt = Ether(base)
        pkt[TCP].sport = 1024 + i
        del pkt[TCP].chksum
        out.append(bytes(pkt))
    return out


def l7_flows(n: int, payload: bytes, port0: int) -> list[tuple[dict, bytes]]:
    """``n`` flows to L7_SERVER (source ports from port0): handshake packets
    and the client's first payload."""
    out = []
    for i in range(port0 - 1024, port0 - 1024 + n):
        pk = tcp_packets(4, V4_CLIENT, L7_SERVER, 1024 + i)
        req = bytes(Ether(**MACS) / IP(src=V4_CLIENT, dst=L7_SERVER)
                    / TCP(sport=1024 + i, dport=80, flags="PA", seq=ISN + 1, ack=RISN + 1,
                          options=ACK_OPTIONS) / payload)
        out.append((pk, req))
    return out


def closing_flows(n: int, client: str) -> list[dict[str, bytes]]:
    """``n`` flows to CLOSE_SERVER (source ports from 1024): handshake, an
    established ACK, both FINs, the final ACK, and a RST at the expected
    sequence number."""
    out = []
    for i in range(n):
        sport = 1024 + i
        pk = tcp_packets(4, client, CLOSE_SERVER, sport)
        up = Ether(**MACS) / IP(src=client, dst=CLOSE_SERVER)
        down = Ether(**MACS) / IP(src=CLOSE_SERVER, dst=client)
        pk["fin"] = bytes(up / TCP(sport=sport, dport=80, flags="FA", seq=ISN + 1, ack=RISN + 1, options=ACK_OPTIONS))
        pk["finack"] = bytes(down / TCP(sport=80, dport=sport, flags="FA", seq=RISN + 1, ack=ISN + 2,
                                        options=ACK_OPTIONS))
        pk["last"] = bytes(up / TCP(sport=sport, dport=80, flags="A", seq=ISN + 2, ack=RISN + 2, options=ACK_OPTIONS))
        pk["rst"] = bytes(up / TCP(sport=sport, dport=80, flags="R", seq=ISN + 1))
        out.append(pk)
    return out


def clear_l7_marks(fp: FastPath) -> int:
    """Forget what the L7 stage saw of every session: returns how many."""
    n = 0
    for t in map(fp.table, FAMILY_TABLES["ms_flows"]):
        for k, v in list(t.items()):
            if v.l7_seen or v.app:
                v.l7_seen, v.app = 0, 0
                t[k] = v
                n += 1
    return n


def load_empty():
    from bcc import BPF

    b = BPF(text=EMPTY_PROGRAM)
    return b, b.load_func("empty", BPF.SCHED_CLS).fd


@dataclass
class Case:
    name: str
    fd: int
    frame: bytes
    fp: FastPath | None = None           # whose counters to check (None: the empty program)
    action: int = TC_ACT_OK
    reason: Reason | None = None
    path: str = ""
    samples: list[float] = field(default_factory=list)
    means: list[float] = field(default_factory=list)   # repeat-1 cases: mean per call, per round
    problems: list[str] = field(default_factory=list)


def run_checked(case: Case, data: bytes, repeat: int) -> int:
    """One measurement; records a problem when the action or the counted
    reason is not the expected one. Returns the kernel's duration."""
    before = case.fp.counters() if case.fp else None
    r = bpfsys.prog_test_run(case.fd, data, repeat=repeat)
    if r.retval != case.action:
        case.problems.append(f"action {r.retval}, expected {case.action}")
    if case.fp is not None:
        after = case.fp.counters()
        moved = {k: after[k][0] - before.get(k, (0, 0))[0] for k in after
                 if after[k][0] != before.get(k, (0, 0))[0]}
        want = {(Direction.DIR_INGRESS, case.reason): repeat}
        if moved != want:
            got = ", ".join(f"{r.name} x{n}" for (_, r), n in sorted(moved.items()))
            case.problems.append(f"counted {got or 'nothing'}, expected {case.reason.name} x{repeat}")
    return r.duration_ns


def must(fp: FastPath, frame: bytes, what: str) -> None:
    """Set-up packet: must pass as PASS_FORWARD."""
    before = fp.counters()
    r = fp.run(frame)
    after = fp.counters()
    fwd = (Direction.DIR_INGRESS, Reason.PASS_FORWARD)
    if r.action != TC_ACT_OK or after.get(fwd, (0, 0))[0] != before.get(fwd, (0, 0))[0] + 1:
        moved = [r.name for (d, r), v in after.items() if v != before.get((d, r))]
        raise SystemExit(f"set-up failed: {what}: action {r.action}, counted {moved}")


def fill_table(fp: FastPath, n: int) -> None:
    """``n`` established TCP flows (three-way handshakes from 10.1.x.y)."""
    for i in range(n):
        client = f"10.1.{i // 250}.{1 + i % 250}"
        for what, frame in tcp_packets(4, client, V4_SERVER, 30000).items():
            must(fp, frame, f"filler flow {i} {what}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=None,
                    help=f"BPF_PROG_TEST_RUN repetitions per measurement (default {DEFAULT_REPEAT})")
    ap.add_argument("--rounds", type=int, default=None,
                    help=f"rounds; the median is reported (default {DEFAULT_ROUNDS})")
    ap.add_argument("--new-flows", type=int, default=None,
                    help=f"distinct SYNs per round for the new-flow case (default {DEFAULT_NEW_FLOWS})")
    ap.add_argument("--l7-flows", type=int, default=None,
                    help=f"established flows whose first payload is timed (default {DEFAULT_L7_FLOWS})")
    ap.add_argument("--close-flows", type=int, default=None,
                    help=f"flows closed per round and kind for the last-packet rows (default {DEFAULT_CLOSE_FLOWS})")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: repeat {QUICK_REPEAT}, {QUICK_ROUNDS} rounds, "
                         f"{QUICK_NEW_FLOWS} new flows")
    args = ap.parse_args(argv)
    repeat = args.repeat or (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    n_new = args.new_flows or (QUICK_NEW_FLOWS if args.quick else DEFAULT_NEW_FLOWS)
    n_l7 = args.l7_flows or (QUICK_L7_FLOWS if args.quick else DEFAULT_L7_FLOWS)
    n_close = args.close_flows or (QUICK_CLOSE_FLOWS if args.quick else DEFAULT_CLOSE_FLOWS)
    if not 1 <= n_close <= MAX_NEW_FLOWS:
        ap.error(f"--close-flows: 1 to {MAX_NEW_FLOWS} (one source port each)")
    if repeat < 1 or rounds < 1 or n_new < 1:
        ap.error("--repeat, --rounds and --new-flows must be at least 1")
    if n_new > MAX_NEW_FLOWS:
        ap.error(f"--new-flows: at most {MAX_NEW_FLOWS} (one source port each)")
    if os.geteuid() != 0:
        print("bench/fastpath.py loads BPF programs: run it as root", file=sys.stderr)
        return 1
    check_headers()

    empty_bpf, empty_fd = load_empty()
    fp = FastPath()
    fp_full = FastPath(DatapathConfig(flow_table_size=FULL_TABLE_SIZE))
    try:
        ing = fp.prog_fd(Direction.DIR_INGRESS)
        tcp4 = tcp_packets(4, V4_CLIENT, V4_SERVER, 40000)
        tcp6 = tcp_packets(6, V6_CLIENT, V6_SERVER, 40000)
        udp4 = udp_packets()
        halfopen_syn = tcp_packets(4, V4_CLIENT, V4_SERVER, 40001)["syn"]
        full_syn = tcp_packets(4, V4_CLIENT, V4_SERVER, 40002)["syn"]
        tun = {kind: {k: tunnelled(v, kind) for k, v in tcp_packets(4, V4_CLIENT, V4_SERVER, port).items()}
               for kind, port in (("vxlan", 40003), ("gre", 40004))}

        # Set-up: established flows in ms_flows, the half-open one in ms_halfopen.
        for pk in (tcp4, tcp6, tun["vxlan"], tun["gre"]):
            for what in ("syn", "synack", "ack"):
                must(fp, pk[what], what)
        must(fp, udp4["request"], "udp request")
        must(fp, udp4["reply"], "udp reply")
        must(fp, halfopen_syn, "half-open syn")
        l7 = l7_flows(n_l7, HTTP_REQUEST, 1024)
        l7u = l7_flows(n_l7, UNKNOWN_PAYLOAD, 1024 + n_l7)
        for pk, _ in l7 + l7u:
            for what in ("syn", "synack", "ack"):
                must(fp, pk[what], f"l7 flow {what}")
        fill_table(fp_full, FULL_TABLE_SIZE)

        fwd = Reason.PASS_FORWARD
        cases = [
            Case("empty", empty_fd, tcp4["syn"], path="the floor: returns TC_ACT_OK"),
            Case("tcp4-established", ing, tcp4["ack"], fp, reason=fwd,
                 path="ACK of an ESTABLISHED flow (ms_flows), in window"),
            Case("tcp4-syn-halfopen", ing, halfopen_syn, fp, reason=fwd,
                 path="SYN again of a SYN_SENT flow (ms_halfopen)"),
            Case("udp4-established", ing, udp4["request"], fp, reason=fwd,
                 path="UDP of a replied flow (ms_flows)"),
            Case("tcp6-established", ing, tcp6["ack"], fp, reason=fwd,
                 path="ACK of an ESTABLISHED IPv6 flow (ms_flows)"),
            Case("tcp4-vxlan-established", ing, tun["vxlan"]["ack"], fp, reason=fwd,
                 path="the ACK in VXLAN (inner Ethernet): decapsulated, the inner flow's session"),
            Case("tcp4-gre-established", ing, tun["gre"]["ack"], fp, reason=fwd,
                 path="the ACK in keyed GRE: decapsulated, the inner flow's session"),
            Case("tcp4-syn-table-full", fp_full.prog_fd(Direction.DIR_INGRESS), full_syn, fp_full,
                 action=TC_ACT_SHOT, reason=Reason.DROP_FLOW_TABLE_FULL,
                 path=f"new flow's SYN, {FULL_TABLE_SIZE}-entry table full: DROP_FLOW_TABLE_FULL"),
        ]
        syns = new_flow_syns(n_new)
        empty1 = Case("empty-repeat1", empty_fd, tcp4["syn"], path="the floor, repeat 1")
        newflow = Case("tcp4-syn-new-flow", ing, syns[0], fp, reason=fwd,
                       path=f"SYN of a new flow, {n_new} flows, repeat 1")
        first = Case("tcp4-first-payload", ing, l7[0][1], fp, reason=fwd,
                     path=f"first payload of an established flow: its L7 check, {n_l7} flows, repeat 1")
        later = Case("tcp4-later-payload", ing, l7[0][1], fp, reason=fwd,
                     path="the same segment again: flow identified, tracking only, repeat 1")
        first_u = Case("tcp4-first-payload-unknown", ing, l7u[0][1], fp, reason=fwd,
                       path="first payload no signature matches: every shape looked up, repeat 1")
        http_id = fp.l7.ids["http"]
        ack1 = Case("tcp4-ack-repeat1", ing, tcp4["ack"], fp, reason=fwd,
                    path=f"ACK of an ESTABLISHED flow, {n_close} flows, repeat 1 (baseline of the close rows)")
        close_ack = Case("tcp4-close-last-ack", ing, tcp4["ack"], fp, reason=fwd,
                         path="final ACK after both FINs: TIME_WAIT, end record to ms_events, repeat 1")
        close_rst = Case("tcp4-close-rst", ing, tcp4["ack"], fp, reason=fwd,
                         path="RST at the expected seq: CLOSE, end record to ms_events, repeat 1")
        from datapath.enums import EventType
        from datapath.flowevents import event_type
        from slowpath.ringbuf import RingBuffer
        events = RingBuffer(fp.table("ms_events").map_fd)
        events.drain()

        for c in cases:  # warm-up, checked like a measurement
            run_checked(c, c.frame, 1)

        for rnd in range(rounds):
            # Rotate the order too, so no case always runs first in a round.
            order = cases[rnd % len(cases):] + cases[:rnd % len(cases)]
            for c in order:
                c.samples.append(run_checked(c, c.frame, repeat))

            # New flows: an empty half-open table and SYN budget each round,
            # then one SYN per flow, each call next to an empty-program call.
            for m in FAMILY_TABLES["ms_halfopen"]:
                fp.table(m).clear()
            fp.table("ms_syn_dst").clear()
            fp.table("ms_syn_global").clear()
            before = fp.counters()
            d_empty, d_syn = [], []
            for i, frame in enumerate(syns):
                pair = ((empty_fd, d_empty, tcp4["syn"]), (ing, d_syn, frame))
                for fd, out, data in (pair if (i + rnd) % 2 == 0 else pair[::-1]):
                    r = bpfsys.prog_test_run(fd, data, repeat=1)
                    out.append(r.duration_ns)
                    if r.retval != TC_ACT_OK:
                        (newflow if fd == ing else empty1).problems.append(f"action {r.retval} on call {i}")
            after = fp.counters()
            moved = {k[1]: after[k][0] - before.get(k, (0, 0))[0] for k in after
                     if after[k][0] != before.get(k, (0, 0))[0]}
            if moved != {fwd: n_new}:
                got = ", ".join(f"{r.name} x{n}" for r, n in sorted(moved.items()))
                newflow.problems.append(f"round {rnd}: counted {got}, expected PASS_FORWARD x{n_new}")
            empty1.samples.append(statistics.median(d_empty))
            newflow.samples.append(statistics.median(d_syn))
            newflow.means.append(sum(d_syn) / len(d_syn))
            empty1.means.append(sum(d_empty) / len(d_empty))
            must(fp, halfopen_syn, "half-open syn again")   # the half-open case's flow, back

            # First payloads (L7 stage) against later ones (tracking only).
            clear_l7_marks(fp)
            d_first, d_later, d_unknown = [], [], []
            for (_, req), (_, unk) in zip(l7, l7u):
                for case, out, data in ((first, d_first, req), (later, d_later, req), (first_u, d_unknown, unk)):
                    r = bpfsys.prog_test_run(ing, data, repeat=1)
                    out.append(r.duration_ns)
                    if r.retval != TC_ACT_OK:
                        case.problems.append(f"action {r.retval}")
            ids = sorted({v.app for m in FAMILY_TABLES["ms_flows"] for v in fp.table(m).values() if v.l7_seen})
            if ids != [0, http_id]:
                first.problems.append(f"round {rnd}: sessions identified as {ids}, expected [0, {http_id}]")
            first.samples.append(statistics.median(d_first))
            later.samples.append(statistics.median(d_later))
            first_u.samples.append(statistics.median(d_unknown))

            # A session's last packet (it ends the session and writes its
            # end record) against an established ACK of the same flows.
            by_fin = closing_flows(n_close, f"10.3.{rnd % 250}.1")
            by_rst = closing_flows(n_close, f"10.4.{rnd % 250}.1")
            for pk in by_fin + by_rst:
                for what in ("syn", "synack", "ack"):
                    must(fp, pk[what], f"closing flow {what}")
            events.drain()
            # Called directly (as the L7 rows): a counters read between calls
            # would leave each run with cold caches. Checked per round instead.
            before = fp.counters()
            d_ack, d_rst, d_last = [], [], []
            for i, (a, b) in enumerate(zip(by_fin, by_rst)):
                pair = ((ack1, d_ack, a["ack"]), (close_rst, d_rst, b["rst"]))
                for case, out, data in (pair if (i + rnd) % 2 == 0 else pair[::-1]):
                    r = bpfsys.prog_test_run(ing, data, repeat=1)
                    out.append(r.duration_ns)
                    if r.retval != TC_ACT_OK:
                        case.problems.append(f"action {r.retval}")
            for a in by_fin:
                must(fp, a["fin"], "closing flow fin")
                must(fp, a["finack"], "closing flow fin-ack")
            for a in by_fin:
                r = bpfsys.prog_test_run(ing, a["last"], repeat=1)
                d_last.append(r.duration_ns)
                if r.retval != TC_ACT_OK:
                    close_ack.problems.append(f"action {r.retval}")
            after = fp.counters()
            moved = {k[1]: after[k][0] - before.get(k, (0, 0))[0] for k in after
                     if after[k][0] != before.get(k, (0, 0))[0]}
            if moved != {fwd: 5 * n_close}:        # ACK, RST, last ACK measured; both FINs set up
                got = ", ".join(f"{r.name} x{n}" for r, n in sorted(moved.items()))
                close_ack.problems.append(f"round {rnd}: counted {got}, expected PASS_FORWARD x{5 * n_close}")
            ends = [r for r in events.drain() if event_type(r) == EventType.EVENT_FLOW_END]
            if len(ends) != 2 * n_close:
                close_ack.problems.append(f"round {rnd}: {len(ends)} end records, expected {2 * n_close}")
            ack1.samples.append(statistics.median(d_ack))
            close_rst.samples.append(statistics.median(d_rst))
            close_ack.samples.append(statistics.median(d_last))
        events.close()
    finally:
        fp_full.close()
        fp.close()
        empty_bpf.cleanup()

    print("microseg fast path: ns per packet, BPF_PROG_TEST_RUN (tc ingress program)")
    print(f"kernel   {os.uname().release}")
    print(f"repeat   {repeat}")
    print(f"rounds   {rounds}  (median reported; programs interleaved within each round)")
    print(f"new flows {n_new}  (repeat-1 rows: median of per-call durations, per round)")
    print()
    print("| case | frame bytes | ns/packet (median) | min | max | ratio to empty | path |")
    print("|---|---|---|---|---|---|---|")
    warnings = []
    for group, base_case in ((cases, cases[0]), ([empty1, newflow], empty1), ([later, first, first_u], later),
                             ([ack1, close_ack, close_rst], ack1)):
        base = statistics.median(base_case.samples) or 1
        for c in group:
            med = statistics.median(c.samples)
            print(f"| {c.name} | {len(c.frame)} | {med:g} | {min(c.samples):g} | {max(c.samples):g} "
                  f"| {med / base:.2f} | {c.path} |")
            if c.problems:
                shown = "; ".join(sorted(set(c.problems))[:3])
                print(f"| WARNING {c.name} | did not take the path it measures: {shown} |")
                warnings.append(c.name)
    print()
    print(f"repeat-1 rows, mean per call (total / count), median over rounds: "
          f"tcp4-syn-new-flow {statistics.median(newflow.means):.0f} ns, "
          f"empty-repeat1 {statistics.median(empty1.means):.0f} ns")
    if warnings:
        print(f"{len(warnings)} case(s) measured another path than intended: {', '.join(warnings)}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
