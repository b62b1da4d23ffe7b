"""End-to-end latency through the lab gateway, P50 / P99 / P99.9, with and
without microseg, next to plain forwarding and nftables; and the
distribution of the fast path's per-packet cost.

1. Round trips. The lab (appliance.lab.Lab: client -- gateway -- server,
   namespaces of its own) forwards between two veths. An echo server runs
   in the server namespace (TCP: one connection, TCP_NODELAY; UDP: one
   socket), and a client in the client namespace makes ``--count``
   request/response exchanges of ``--size`` bytes (after ``--warmup``
   unmeasured ones), one at a time, timing each with time.perf_counter_ns:
   send, then block until the whole answer is back. Client and server are
   pinned to one CPU (``--cpu``), as in bench/policy.py, so the gateway's
   forwarding (softirq, on the sending CPU) and both ends' wake-ups add up
   on that CPU instead of depending on where the scheduler put them. Each
   request crosses the gateway twice per round trip (request and answer).
   The cases, interleaved: every round runs each case once (the order
   rotated from round to round), TCP then UDP (swapped every other round):

   * ``no filter``: plain forwarding, nothing attached;
   * ``microseg, no policy``: a loaded datapath.loader.FastPath attached with
     datapath.attach.attach on both gateway interfaces (ingress and egress,
     as `microseg up` does, in the default mode: tcx where the kernel has
     it, else clsact; the output names it), no policy: every flow passes,
     sessions tracked;
   * ``microseg, policy``: another build, attached the same way, with a
     compiled policy written by PolicyMaps.apply (default deny both ways;
     two rules allow the client's /24 to the server's, TCP and UDP to the
     echo port);
   * ``nftables``: in the gateway namespace a forward chain (policy drop),
     ``ct state established,related accept``, then one accept rule for the
     echo traffic: bench/policy.py's nftables case with one entry (conntrack:
     only a flow's first packet walks the rules);
   * ``XDP blocklist``: the XDP blocklist (datapath/blocklist.py, the bloom
     pre-check where the kernel has it) on both gateway interfaces with
     ``--blocklist`` prefixes (/16, /24 and /32), none of which covers the
     lab: every packet is tested and passed. The TC fast path is not attached: this row is
     the XDP hook's cost alone.

   Filters are checked every round: a TCP SYN to a port no rule allows must
   be dropped (policy, nftables) or refused by the server (the rest), and
   the microseg builds' and the blocklist's counters must have seen the
   exchanges (and dropped none of them). Percentiles are over every
   exchange of every round (pooled); the ratio and the difference are to
   ``no filter`` pooled the same way. The per-round P50 spread shows the
   noise between rounds.

2. Per-packet program cost: BPF_PROG_TEST_RUN with repeat 1, ``--calls``
   calls per program, interleaved call by call, the kernel's duration of
   each call: the empty TC program, the ingress program on an established
   TCP flow's ACK (no policy; and with the policy above, allowed), the
   egress program on a forwarded packet (it came in on an interface
   microseg manages, so it is only recognised), the empty XDP program and
   the XDP blocklist on a passing packet. With repeat 1 every duration
   includes the kernel's clock reads around the run (the empty program's
   row); bench/fastpath.py's repeat-1,000,000 means are the precise
   medians, this section gives the spread (P99, P99.9).

Everything is undone in ``finally`` blocks (filters detached, nftables
flushed in the gateway namespace, the lab's namespaces removed). Root
only; traffic only inside the lab. Nothing is asserted about the numbers.

    .venv/bin/python bench/latency.py [--rounds N] [--count N] [--calls N] [--cases a,b] [--quick]
"""
from __future__ import annotations

import argparse
import ipaddress
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.lab import CLIENT_V4, GW_IFACES, SERVER_V4, Lab  # noqa: E402
from bench.policy import CONN_CPU, PROBE, PROBE_PORT  # noqa: E402

PORT = 9100
DEFAULT_ROUNDS = 7
DEFAULT_COUNT = 20_000
DEFAULT_WARMUP = 1_000
DEFAULT_SIZE = 64
DEFAULT_CALLS = 50_000
DEFAULT_BLOCKLIST = 10_000
QUICK = dict(rounds=2, count=2_000, warmup=200, calls=5_000)
PROTOS = ("tcp", "udp")
CASES = ("no filter", "microseg, no policy", "microseg, policy", "nftables", "XDP blocklist")
CASE_KEYS = {"none": "no filter", "microseg": "microseg, no policy", "policy": "microseg, policy",
             "nftables": "nftables", "xdp": "XDP blocklist"}
PCTS = (0.50, 0.99, 0.999)
# The ifindex the egress program's cost is measured with: an interface it
# manages (FastPath.set_managed), so the packet is recognised as forwarded;
# small, as a gateway's interfaces are (the direct-mapped array, maps.h).
EGRESS_IIF = 4

CLIENT_NET = str(ipaddress.IPv4Network(f"{CLIENT_V4}/24", strict=False))
SERVER_NET = str(ipaddress.IPv4Network(f"{SERVER_V4}/24", strict=False))

POLICY = f"""\
groups:
  clients: [{CLIENT_NET}]
  servers: [{SERVER_NET}]
defaults: {{ingress: deny, egress: deny}}
rules:
  - {{name: echo-tcp, from: clients, to: servers, proto: tcp, ports: [{PORT}], action: allow}}
  - {{name: echo-udp, from: clients, to: servers, proto: udp, ports: [{PORT}], action: allow}}
"""

# bench/policy.py's nftables chain (nft_linear) with one entry, for TCP and UDP.
NFT = f"""\
table inet mslat {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ip saddr {CLIENT_NET} ip daddr {SERVER_V4} meta l4proto {{ tcp, udp }} th dport {PORT} accept
  }}
}}
"""

# Echo server: "tcp" (one connection at a time, TCP_NODELAY) or "udp".
SERVER = r"""
import socket, sys
proto, port = sys.argv[1], int(sys.argv[2])
if proto == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        d, a = s.recvfrom(65536)
        s.sendto(d, a)
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", port))
ls.listen(16)
while True:
    c, _ = ls.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
"""

# Client: warm-up exchanges, then timed ones; prints the round trips in ns.
# Blocking sockets (no timeout: no poll() before each recv); the parent's
# timeout ends a run that lost a datagram.
CLIENT = r"""
import socket, sys, time
proto, host, port, warm, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
if proto == "tcp":
    s = socket.create_connection((host, port), timeout=5)
    s.settimeout(None)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, port))
msg = b"x" * size
clock = time.perf_counter_ns
send, recv = s.send, s.recv
out = []
for i in range(warm + count):
    t0 = clock()
    send(msg)
    got = 0
    while got < size:
        b = recv(size - got)
        if not b:
            sys.exit("connection closed by the server")
        got += len(b)
    t1 = clock()
    if i >= warm:
        out.append(t1 - t0)
print(" ".join(map(str, out)))
"""


def pct(xs: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted ``xs``."""
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def blocklist_prefixes(n: int) -> list[str]:
    """``n`` prefixes that stay ``n`` after the blocklist's aggregation: 80 %
    /32s of 198.18.0.0/15, the rest /24s of 100.64.0.0/10 and up to eight
    /16s of 172.16.0.0/12 (even-numbered ones only, so no two are siblings
    that would merge; the three ranges do not overlap). None covers the
    lab's 10.77.0.0/16."""
    import random

    rnd = random.Random(5)
    n16 = min(8, n // 100)
    n32 = max(0, min(n - n16, round(n * 0.8)))
    n24 = n - n16 - n32
    if n32 > 1 << 16 or n24 > 1 << 13:
        raise SystemExit(f"--blocklist {n}: at most about 80,000 prefixes")

    def even(base: str, plen: int, bits: int, k: int) -> list[str]:
        b = int(ipaddress.IPv4Address(base))
        picks = rnd.sample(range(0, 1 << bits, 2), k)
        return [str(ipaddress.IPv4Network((b + (i << (32 - plen)), plen))) for i in picks]

    return sorted(even("198.18.0.0", 32, 17, n32) + even("100.64.0.0", 24, 14, n24)
                  + even("172.16.0.0", 16, 4, n16))


# -- the round trips ------------------------------------------------------------------

@dataclass
class Series:
    rtts: list[int] = field(default_factory=list)        # ns, every round
    round_p50: list[float] = field(default_factory=list)


@dataclass
class Builds:
    plain: object = None        # FastPath, no policy
    pol: object = None          # FastPath with POLICY applied
    bl: object = None           # Blocklist with --blocklist prefixes
    empty_tc: object = None     # (BPF, fd)
    empty_xdp: object = None
    bl_state: object = None     # what Blocklist.apply reported

    def close(self) -> None:
        for fp in (self.plain, self.pol, self.bl):
            if fp is not None:
                fp.close()
        for e in (self.empty_tc, self.empty_xdp):
            if e is not None:
                e[0].cleanup()


class Rounds:
    def __init__(self, lab: Lab, builds: Builds, args):
        self.lab, self.b, self.args = lab, builds, args
        self.series: dict[tuple[str, str], Series] = {}
        self.problems: list[str] = []
        self.notes: list[str] = []

    def probe(self) -> str:
        r = self.lab.run(self.lab.client, [sys.executable, "-c", PROBE, SERVER_V4, str(PROBE_PORT), "0.5"],
                         timeout=15, check=False)
        return r.stdout.strip() or "error"

    def client(self, proto: str) -> list[int] | None:
        a = self.args
        argv = ["taskset", "-c", str(a.cpu), sys.executable, "-c", CLIENT, proto, SERVER_V4, str(PORT),
                str(a.warmup), str(a.count), str(a.size)]
        try:
            r = self.lab.run(self.lab.client, argv, timeout=60 + (a.warmup + a.count) * 0.001, check=False)
        except subprocess.TimeoutExpired:
            return None
        if r.returncode != 0:
            self.problems.append(f"{proto} client failed: {r.stderr.strip()[-200:]}")
            return None
        return [int(x) for x in r.stdout.split()]

    # -- filters: set up, check, tear down -------------------------------------
    def setup(self, case: str) -> None:
        from datapath import attach

        lab = self.lab
        if case.startswith("microseg"):
            fp = self.b.plain if case == "microseg, no policy" else self.b.pol
            modes = {a.mode for a in attach.attach(fp, list(GW_IFACES), netns=lab.gateway)}
            note = f"microseg attached with {', '.join(sorted(modes))} (attach.attach's default, `attach.mode: auto`)"
            if note not in self.notes:
                self.notes.append(note)
        elif case == "nftables":
            lab.run(lab.gateway, ["nft", "-f", "-"], input=NFT, timeout=60)
        elif case == "XDP blocklist":
            for ifc in GW_IFACES:
                a = attach.attach_xdp(self.b.bl.prog_fd, ifc, lab.gateway)
                note = f"XDP blocklist attached in {a.mode} mode ({self.b.bl.path} pre-check)"
                if note not in self.notes:
                    self.notes.append(note)

    def teardown(self, case: str) -> None:
        from datapath import attach

        lab = self.lab
        if case.startswith("microseg"):
            attach.detach(list(GW_IFACES), netns=lab.gateway)
        elif case == "nftables":
            lab.run(lab.gateway, ["nft", "flush", "ruleset"], timeout=60, check=False)
        elif case == "XDP blocklist":
            for ifc in GW_IFACES:
                attach.detach_xdp(ifc, lab.gateway)

    def counted(self, case: str):
        """A snapshot of what the case's filter counted, or None."""
        if case == "microseg, no policy":
            return self.b.plain.counters()
        if case == "microseg, policy":
            return self.b.pol.counters()
        if case == "XDP blocklist":
            return self.b.bl.counters()
        return None

    def check_counts(self, case: str, proto: str, before, after, exchanges: int) -> None:
        if before is None:
            return
        moved = {k: after[k][0] - before.get(k, (0, 0))[0] for k in after}
        if case == "XDP blocklist":
            passed = sum(v for k, v in moved.items() if k.name.startswith("BL_PASS"))
            dropped = {k.name: v for k, v in moved.items() if not k.name.startswith("BL_PASS") and v}
        else:
            passed = sum(v for (d, r), v in moved.items() if d.name == "DIR_INGRESS" and r.name.startswith("PASS"))
            dropped = {r.name: v for (d, r), v in moved.items() if not r.name.startswith("PASS") and v}
        if passed < 2 * exchanges:
            self.problems.append(f"{case} {proto}: the filter passed {passed} packets in, expected at least "
                                 f"{2 * exchanges} (it does not see the traffic)")
        if dropped:
            self.problems.append(f"{case} {proto}: dropped {dropped}")

    def run_case(self, case: str, protos: tuple[str, ...]) -> None:
        self.setup(case)
        try:
            got = self.probe()
            want = "dropped" if case in ("microseg, policy", "nftables") else "refused"
            if got != want:
                self.problems.append(f"{case}: a SYN to port {PROBE_PORT} was {got}, expected {want}")
            for proto in protos:
                before = self.counted(case)
                rtts = self.client(proto)
                if rtts is None:
                    self.problems.append(f"{case} {proto}: no measurement (client failed or timed out)")
                    continue
                self.check_counts(case, proto, before, self.counted(case), self.args.warmup + len(rtts))
                s = self.series.setdefault((case, proto), Series())
                s.rtts.extend(rtts)
                s.round_p50.append(statistics.median(rtts))
        finally:
            self.teardown(case)

    def run(self, cases: list[str]) -> None:
        for rnd in range(self.args.rounds):
            k = rnd % len(cases)
            protos = PROTOS if rnd % 2 == 0 else PROTOS[::-1]
            for case in cases[k:] + cases[:k]:
                self.run_case(case, protos)


def servers(lab: Lab, cpu: int) -> list[subprocess.Popen]:
    procs = [lab.popen(lab.server, ["taskset", "-c", str(cpu), sys.executable, "-c", SERVER, p, str(PORT)])
             for p in PROTOS]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        t = lab.run(lab.server, ["ss", "-Hltn", f"sport = :{PORT}"], check=False).stdout
        u = lab.run(lab.server, ["ss", "-Hlun", f"sport = :{PORT}"], check=False).stdout
        if t.strip() and u.strip():
            return procs
        time.sleep(0.05)
    for p in procs:
        p.kill()
    raise SystemExit("the echo servers in the lab did not start")


# -- per-packet program cost --------------------------------------------------------------

@dataclass
class Prog:
    name: str
    run: object                    # () -> TestRunResult
    want: int
    durations: list[int] = field(default_factory=list)
    problems: set[str] = field(default_factory=set)


def program_cost(b: Builds, calls: int) -> list[Prog]:
    from bench.fastpath import tcp_packets
    from datapath import bpfsys
    from datapath.blocklist import XDP_PASS
    from datapath.enums import Direction
    from datapath.loader import TC_ACT_OK

    progs = []
    frames = tcp_packets(4, CLIENT_V4, SERVER_V4, 40000, dport=PORT)
    for fp in (b.plain, b.pol):
        for what in ("syn", "synack", "ack"):
            r = fp.run(frames[what])
            if r.action != TC_ACT_OK:
                raise SystemExit(f"set-up of the established flow: {what} got action {r.action}")
        fp.set_managed([EGRESS_IIF])
    ack = frames["ack"]
    etc, exdp = b.empty_tc[1], b.empty_xdp[1]
    ing = {n: fp.prog_fd(Direction.DIR_INGRESS) for n, fp in (("plain", b.plain), ("pol", b.pol))}
    egr = b.plain.prog_fd(Direction.DIR_EGRESS)
    progs = [
        Prog("empty TC program", lambda: bpfsys.prog_test_run(etc, ack), TC_ACT_OK),
        Prog("TC ingress, established TCP ACK, no policy", lambda: bpfsys.prog_test_run(ing["plain"], ack), TC_ACT_OK),
        Prog("TC ingress, established TCP ACK, policy (allowed)",
             lambda: bpfsys.prog_test_run(ing["pol"], ack), TC_ACT_OK),
        Prog("TC egress, forwarded packet (seen at ingress)",
             lambda: bpfsys.prog_test_run(egr, ack, ingress_ifindex=EGRESS_IIF), TC_ACT_OK),
        Prog("empty XDP program", lambda: bpfsys.prog_test_run_xdp(exdp, ack), XDP_PASS),
        Prog(f"XDP blocklist, passing packet ({b.bl.path} path)", lambda: b.bl.run(ack), XDP_PASS),
    ]
    for i in range(calls):
        k = i % len(progs)
        for p in progs[k:] + progs[:k]:
            r = p.run()
            p.durations.append(r.duration_ns if hasattr(r, "duration_ns") else r.duration)
            ret = r.retval if hasattr(r, "retval") else r.action
            if ret != p.want:
                p.problems.add(f"returned {ret}, expected {p.want}")
    return progs


# -- main -------------------------------------------------------------------------------

def load_builds(args) -> Builds:
    from bcc import BPF

    from appliance.policyfile import compile_text
    from bench.fastpath import load_empty
    from datapath.blocklist import Blocklist
    from datapath.compile import check_headers
    from datapath.loader import FastPath
    from datapath.policy_maps import PolicyMaps

    check_headers()
    b = Builds()
    try:
        b.plain = FastPath()
        b.pol = FastPath()
        _, pol = compile_text(POLICY, "bench-latency.yaml")
        PolicyMaps.for_fastpath(b.pol).apply(pol)
        b.bl = Blocklist()
        b.bl_state = b.bl.apply(blocklist_prefixes(args.blocklist))
        b.empty_tc = load_empty()
        e = BPF(text=b"int xdp_empty(struct xdp_md *ctx) { return XDP_PASS; }")
        b.empty_xdp = (e, e.load_func(b"xdp_empty", BPF.XDP).fd)
    except BaseException:
        b.close()
        raise
    return b


def rtt_table(r: Rounds, cases: list[str], proto: str) -> list[str]:
    out = [f"| case | {proto.upper()} exchanges | P50 µs | P99 µs | P99.9 µs | P50 ratio | P99 ratio "
           f"| P50 diff µs | P99 diff µs | per-round P50 µs (min-max) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    base = r.series.get(("no filter", proto))
    bp = {q: pct(sorted(base.rtts), q) for q in PCTS} if base and base.rtts else None
    for case in cases:
        s = r.series.get((case, proto))
        if s is None or not s.rtts:
            out.append(f"| {case} | 0 | - | - | - | - | - | - | - | - |")
            continue
        xs = sorted(s.rtts)
        p = {q: pct(xs, q) for q in PCTS}
        ratio = (lambda q: f"{p[q] / bp[q]:.3f}") if bp else (lambda q: "-")
        diff = (lambda q: f"{(p[q] - bp[q]) / 1e3:+.2f}") if bp else (lambda q: "-")
        out.append(f"| {case} | {len(xs):,} | {p[0.5] / 1e3:.2f} | {p[0.99] / 1e3:.2f} | {p[0.999] / 1e3:.2f} "
                   f"| {ratio(0.5)} | {ratio(0.99)} | {diff(0.5)} | {diff(0.99)} "
                   f"| {min(s.round_p50) / 1e3:.2f}-{max(s.round_p50) / 1e3:.2f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help=f"rounds (default {DEFAULT_ROUNDS})")
    ap.add_argument("--count", type=int, default=None,
                    help=f"timed exchanges per case, protocol and round (default {DEFAULT_COUNT})")
    ap.add_argument("--warmup", type=int, default=None, help=f"untimed exchanges first (default {DEFAULT_WARMUP})")
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"payload bytes (default {DEFAULT_SIZE})")
    ap.add_argument("--calls", type=int, default=None,
                    help=f"BPF_PROG_TEST_RUN calls per program for the cost distribution (default {DEFAULT_CALLS})")
    ap.add_argument("--cpu", type=int, default=CONN_CPU, help=f"the CPU client and server run on (default {CONN_CPU})")
    ap.add_argument("--blocklist", type=int, default=DEFAULT_BLOCKLIST,
                    help=f"prefixes in the XDP blocklist case (default {DEFAULT_BLOCKLIST})")
    ap.add_argument("--cases", default=None,
                    help=f"a subset, comma-separated, of {','.join(CASE_KEYS)} (default all; 'none' is always run)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    args = ap.parse_args(argv)
    q = QUICK if args.quick else {}
    args.rounds = args.rounds or q.get("rounds", DEFAULT_ROUNDS)
    args.count = args.count or q.get("count", DEFAULT_COUNT)
    args.warmup = args.warmup if args.warmup is not None else q.get("warmup", DEFAULT_WARMUP)
    args.calls = args.calls or q.get("calls", DEFAULT_CALLS)
    if min(args.rounds, args.count, args.size, args.calls, args.blocklist) < 1 or args.warmup < 0:
        ap.error("--rounds, --count, --size, --calls and --blocklist must be positive")
    if args.cases:
        unknown = [c for c in args.cases.split(",") if c not in CASE_KEYS]
        if unknown:
            ap.error(f"--cases: unknown {', '.join(unknown)}; choose from {', '.join(CASE_KEYS)}")
        wanted = {CASE_KEYS[c] for c in args.cases.split(",")} | {"no filter"}
        cases = [c for c in CASES if c in wanted]
    else:
        cases = list(CASES)
    if os.geteuid() != 0:
        print("bench/latency.py builds network namespaces and attaches BPF programs: run it as root",
              file=sys.stderr)
        return 1
    if "nftables" in cases and subprocess.run(["which", "nft"], capture_output=True).returncode != 0:
        print("bench/latency.py needs nft: run `make setup`", file=sys.stderr)
        return 1

    t0 = time.monotonic()
    b = load_builds(args)
    try:
        with Lab() as lab:
            procs = servers(lab, args.cpu)
            try:
                r = Rounds(lab, b, args)
                r.run(cases)
            finally:
                for p in procs:
                    p.kill()
                    p.wait(timeout=5)
                lab.run(lab.gateway, ["nft", "flush", "ruleset"], timeout=60, check=False)
        progs = program_cost(b, args.calls)
    finally:
        b.close()

    print("end-to-end latency through the lab gateway (veth, two namespace hops each way), "
          f"kernel {os.uname().release}")
    print(f"{args.rounds} rounds, cases interleaved (order rotated); per case, protocol and round "
          f"{args.warmup} warm-up + {args.count} timed request/response exchanges of {args.size} bytes, "
          f"one at a time (Python, time.perf_counter_ns around send + receive), client and echo server "
          f"on CPU {args.cpu}; percentiles over all rounds' exchanges; ratio and diff to no filter")
    st = b.bl_state
    print(f"XDP blocklist: {st.prefixes} prefixes, IPv4 lengths {', '.join(st.lens['ipv4'])}, "
          f"pre-check {st.precheck['ipv4']}")
    for proto in PROTOS:
        print()
        print("\n".join(rtt_table(r, cases, proto)))
    print()
    print(f"per-packet program cost: BPF_PROG_TEST_RUN repeat 1, {args.calls} calls per program, interleaved; "
          f"ns per call as the kernel reports it (its clock reads around the run included)")
    print()
    print("| program | P50 ns | P99 ns | P99.9 ns | mean ns | P50 minus the empty program of its hook |")
    print("|---|---|---|---|---|---|")
    p50 = {}
    for p in progs:
        xs = sorted(p.durations)
        p50[p.name] = pct(xs, 0.5)
        empty = p50["empty XDP program" if "XDP" in p.name and "empty XDP program" in p50 else "empty TC program"]
        print(f"| {p.name} | {pct(xs, 0.5)} | {pct(xs, 0.99)} | {pct(xs, 0.999)} | {statistics.fmean(xs):.0f} "
              f"| {pct(xs, 0.5) - empty:+d} |")
        for msg in sorted(p.problems):
            r.problems.append(f"{p.name}: {msg}")
    names = [p.name for p in progs]
    e = p50[names[0]]
    per_rtt = 2 * (p50[names[1]] - e) + 2 * (p50[names[3]] - e)
    per_rtt_pol = 2 * (p50[names[2]] - e) + 2 * (p50[names[3]] - e)
    print()
    print(f"a round trip runs the ingress program twice and the egress program twice: "
          f"{per_rtt} ns of program time at P50 without a policy, {per_rtt_pol} ns with it "
          f"(the hook's own cost, the skb's trip through the tc or tcx hook, is not in these)")
    for n in r.notes:
        print(f"note: {n}")
    print(f"total {time.monotonic() - t0:.0f} s")
    for p in r.problems:
        print(f"WARNING: {p}", file=sys.stderr)
    return 1 if r.problems else 0


if __name__ == "__main__":
    sys.exit(main())
