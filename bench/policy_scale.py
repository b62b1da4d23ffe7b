"""A policy at scale: how long 100,000 rules and 50,000 prefixes take to
load, and what they cost a new flow's first packet in the kernel.

The policy is generated, seeded, in the shape a large site has: ``--zones``
zone groups (10 prefixes each: five IPv4 /16s, five IPv6 /48s) and in them
leaf groups (10 prefixes each: five IPv4 /24s and five IPv6 /64s inside
their zone's prefixes, so every leaf is nested in its zone), 5,000 groups
and 50,000 prefixes in all by default. Rules: mostly leaf -> leaf (TCP or
UDP; one port, a few ports, ranges such as 8000-8100 or 30000-32767, some
from two groups at once), and a few of the other kinds: zone -> any (DNS),
zone -> zone (inherited by every pair of their leaves), leaf -> a CIDR
written in the rule. The last rule allows the measured flows.

Load, timed step by step:

* ``parse``: the YAML text to the validated model (appliance.policyfile.load_text);
* ``check``: every error and warning (check_policy);
* ``compile``: the kernel tables (compile_policy, given the check's analysis);
* ``apply``: PolicyMaps.apply into a loaded fast path (inner maps made and
  filled, the generation flipped).

The requirement: parse + check + compile + apply under 30 s.

Kernel cost of a new flow's first packet, with a ``--small``-rule policy
(the same shape, ``--small`` rules) and with the large one, each in its own
build, call for call interleaved (as bench/fastpath.py's
tcp4-syn-new-flow row): ``--new-flows`` distinct SYNs run once each
(repeat 1; a repeated SYN would be a retransmission of a half-open flow,
not a new flow), the median of the kernel's per-call durations, per
round, and the median over rounds. The half-open table is emptied before
each round. Two kinds of new flow, each counted and checked
(PASS_POLICY_ALLOW, every SYN):

* ``same-hosts``: one client and one server, a new source port per SYN
  (bench/fastpath.py's method); decided by the (source group, destination
  group) rule; what it looks up stays in cache.
* ``new-host``: a different client address per SYN, each in another leaf
  group (with the small policy: in no group), decided by the (any,
  destination group) rule after two levels that miss; the client's group
  and the missing levels' table slots are cold (not in cache).

The empty TC program, run the same way (repeat 1, interleaved), is the
floor.

    .venv/bin/python bench/policy_scale.py [--rules N] [--groups N] [--new-flows N] [--rounds N]
                                           [--quick] [--no-kernel] [--profile FILE]
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance import policyfile  # noqa: E402
from datapath.policy_check import check_policy  # noqa: E402
from datapath.policy_compile import compile_policy  # noqa: E402
from datapath.policy_tables import no_gc  # noqa: E402

DEFAULT_RULES = 100_000
DEFAULT_GROUPS = 5_000
DEFAULT_ZONES = 50
PER_GROUP = 10                # 5 IPv4 + 5 IPv6 prefixes
DEFAULT_SMALL = 10
DEFAULT_NEW_FLOWS = 10_000
DEFAULT_ROUNDS = 7
QUICK = dict(rules=2_000, groups=500, zones=10, new_flows=1_000, rounds=3)
LIMIT_S = 30.0

# The measured flows: client and server in two leaf groups, TCP to this port.
BENCH_PORT = 80
PORT_CHOICES = [["443"], ["5432"], ["8080", "8443"], ['"8000-8100"'], ['"30000-32767"'],
                ["22", '"2000-2999"'], ["6379"], ["9092", '"9100-9110"'], ["53"], ['"1024-2047"']]


def zone_prefixes(z: int) -> list[str]:
    v4 = [f"10.{z * 5 + k}.0.0/16" for k in range(5)]
    v6 = [f'"fd00:{z:x}:{k:x}::/48"' for k in range(5)]
    return v4 + v6


def leaf_prefixes(z: int, j: int) -> list[str]:
    v4 = [f"10.{z * 5 + k}.{j}.0/24" for k in range(5)]
    v6 = [f'"fd00:{z:x}:{k:x}:{j:x}::/64"' for k in range(5)]
    return v4 + v6


def leaf_host(z: int, j: int, host: int = 1) -> str:
    """An IPv4 address of leaf (z, j)."""
    return f"10.{z * 5}.{j}.{host}"


class Shape:
    """The groups of a generated policy: ``zones`` zones, the rest leaves."""

    def __init__(self, groups: int, zones: int):
        if zones < 1 or groups <= zones:
            raise SystemExit("need at least one zone and more groups than zones")
        self.zones = zones
        self.leaves = groups - zones
        self.per_zone = -(-self.leaves // zones)
        if zones * 5 > 256 or self.per_zone > 256:
            raise SystemExit(f"{groups} groups in {zones} zones do not fit the address plan "
                             f"(at most 51 zones of 256 leaves)")

    def leaf(self, i: int) -> tuple[int, int]:
        return i % self.zones, i // self.zones

    def leaf_name(self, i: int) -> str:
        z, j = self.leaf(i)
        return f"svc-{z:02d}-{j:03d}"


def generate(n_rules: int, groups: int, zones: int, seed: int = 1) -> tuple[str, dict]:
    """(policy text, facts the measurement needs)."""
    rng = random.Random(seed)
    sh = Shape(groups, zones)
    out = ["# generated by bench/policy_scale.py", "groups:"]
    for z in range(sh.zones):
        out.append(f"  zone-{z:02d}: [{', '.join(zone_prefixes(z))}]")
    for i in range(sh.leaves):
        out.append(f"  {sh.leaf_name(i)}: [{', '.join(leaf_prefixes(*sh.leaf(i)))}]")
    out += ["defaults: {ingress: deny, egress: allow}", "rules:"]

    # The measured flows' groups: leaf 0 -> leaf 1 (different zones when there are two).
    client_leaf, server_leaf = 0, 1
    used: set[tuple[str, str, str]] = set()
    rules: list[str] = []

    def add(src: list[str], dst: list[str], proto: str, ports: list[str] | None, action: str) -> bool:
        keys = [(s, d, proto) for s in src for d in dst]
        if any(k in used for k in keys):
            return False
        used.update(keys)
        frm = src[0] if len(src) == 1 else "[" + ", ".join(src) + "]"
        to = dst[0] if len(dst) == 1 else "[" + ", ".join(dst) + "]"
        p = f", ports: [{', '.join(ports)}]" if ports else ""
        rules.append(f"  - {{from: {frm}, to: {to}, proto: {proto}{p}, action: {action}}}")
        return True

    # Reserved for the measured flows (below): nothing else from the client's
    # leaf to the server's, nor from any to the server's.
    used.add((sh.leaf_name(client_leaf), sh.leaf_name(server_leaf), "tcp"))
    used.add(("any", sh.leaf_name(server_leaf), "tcp"))
    # A few of the wider kinds first (they count towards n_rules).
    extra = min(n_rules // 50, 2 * sh.zones + 100)
    for z in range(min(sh.zones, extra // 4)):
        add([f"zone-{z:02d}"], ["any"], "udp", ["53"], "allow")
    # zone -> zone: every pair of their leaves inherits it (a zone of 100
    # groups: 10,000 pairs of groups), so a few.
    for z in range(min(sh.zones, extra // 4, 5)):
        add([f"zone-{z:02d}"], [f"zone-{(z + 1) % sh.zones:02d}"], "tcp", ['"9000-9009"'], "deny")
    k = 0
    while len(rules) < extra:
        src = sh.leaf_name(rng.randrange(sh.leaves))
        add([src], [f"198.18.{k % 256}.0/24"], "tcp", ["443"], "allow")
        k += 1
    while len(rules) < n_rules - 2:
        a = rng.randrange(sh.leaves)
        src = [sh.leaf_name(a)]
        if rng.random() < 0.05:
            src.append(sh.leaf_name(rng.randrange(sh.leaves)))
            if src[0] == src[1]:
                continue
        dst = [sh.leaf_name(rng.randrange(sh.leaves))]
        proto = "tcp" if rng.random() < 0.8 else "udp"
        action = "allow" if rng.random() < 0.9 else "deny"
        add(src, dst, proto, rng.choice(PORT_CHOICES), action)
    # Last: the measured flows' rules.
    rules.append(f"  - {{name: bench-any, from: any, to: {sh.leaf_name(server_leaf)}, proto: tcp, "
                 f"ports: [{BENCH_PORT}], action: allow}}")
    rules.append(f"  - {{name: bench, from: {sh.leaf_name(client_leaf)}, to: {sh.leaf_name(server_leaf)}, "
                 f"proto: tcp, ports: [{BENCH_PORT}], action: allow}}")
    out += rules
    facts = {
        "client": leaf_host(*sh.leaf(client_leaf)),
        "server": leaf_host(*sh.leaf(server_leaf), 2),
        # one client per leaf (not the measured client's nor the server's leaf)
        "new_hosts": [leaf_host(*sh.leaf(i), 7) for i in range(2, sh.leaves)],
        "prefixes": PER_GROUP * groups,
    }
    return "\n".join(out) + "\n", facts


# -- load timing ---------------------------------------------------------------

def time_load(text: str, fastpath=None, profile: str | None = None) -> dict:
    """Seconds per step, the steps run as `microseg policy apply` runs them
    (appliance.policyfile.compile_text: the garbage collector off until the
    policy is compiled; its first collection after is the ``gc`` row)."""
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    t = {}
    t0 = time.perf_counter()
    with no_gc():
        model = policyfile.load_text(text, "generated.yaml")
        t["parse"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        analysis = check_policy(model)
        t["check"] = time.perf_counter() - t0
        if analysis.errors:
            raise SystemExit(f"generated policy does not check: {analysis.errors[:3]}")
        t0 = time.perf_counter()
        pol = compile_policy(model, source="generated.yaml", analysis=analysis)
        t["compile"] = time.perf_counter() - t0
        t0 = time.perf_counter()
    # The first allocations after: the collection they start (a full one,
    # the first time a large policy was made) is part of the load's cost.
    [[] for _ in range(2 * gc.get_threshold()[0])]
    t["gc"] = time.perf_counter() - t0
    if fastpath is not None:
        from datapath.policy_maps import PolicyMaps
        t0 = time.perf_counter()
        PolicyMaps.for_fastpath(fastpath).apply(pol)
        t["apply"] = time.perf_counter() - t0
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    t["total"] = sum(t.values())
    t["model"], t["pol"] = model, pol
    return t


# -- kernel timing ---------------------------------------------------------------

def syn(src: str, dst: str, sport: int) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst=dst)
                 / TCP(sport=sport, dport=BENCH_PORT, flags="S", seq=1000,
                       options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
                                ("WScale", 7)]))


def measure_kernel(builds: dict, facts: dict, n_new: int, rounds: int) -> dict:
    """{(case, build name): [median ns per round]}, checked."""
    from bench.fastpath import load_empty
    from datapath import bpfsys
    from datapath.enums import Direction, Reason
    from datapath.loader import TC_ACT_OK

    hosts = facts["new_hosts"]
    cases = {
        "same-hosts": [syn(facts["client"], facts["server"], 1024 + i) for i in range(n_new)],
        "new-host": [syn(hosts[i % len(hosts)], facts["server"], 1024 + i // len(hosts)) for i in range(n_new)],
    }
    empty_bpf, empty_fd = load_empty()
    empty_frame = cases["same-hosts"][0]
    out: dict[tuple[str, str], list[float]] = {}
    problems: list[str] = []
    try:
        for rnd in range(rounds):
            for case, frames in cases.items():
                names = list(builds)
                for fp in builds.values():
                    for m in ("ms_halfopen4", "ms_halfopen6"):
                        fp.table(m).clear()
                before = {n: fp.counters() for n, fp in builds.items()}
                d = {n: [] for n in [*names, "empty"]}
                calls = [(n, builds[n].prog_fd(Direction.DIR_INGRESS)) for n in names] + [("empty", empty_fd)]
                for i, frame in enumerate(frames):
                    k = (i + rnd) % len(calls)
                    for n, fd in calls[k:] + calls[:k]:
                        r = bpfsys.prog_test_run(fd, empty_frame if n == "empty" else frame, repeat=1)
                        d[n].append(r.duration_ns)
                        if r.retval != TC_ACT_OK:
                            problems.append(f"{case} {n}: action {r.retval}")
                for n, fp in builds.items():
                    after = fp.counters()
                    moved = {k[1]: after[k][0] - before[n].get(k, (0, 0))[0] for k in after
                             if k[0] == Direction.DIR_INGRESS and after[k][0] != before[n].get(k, (0, 0))[0]}
                    if moved != {Reason.PASS_POLICY_ALLOW: len(frames)}:
                        got = ", ".join(f"{r.name} x{c}" for r, c in sorted(moved.items()))
                        problems.append(f"{case} {n} round {rnd}: counted {got}, expected "
                                        f"PASS_POLICY_ALLOW x{len(frames)}")
                for n in d:
                    out.setdefault((case, n), []).append(statistics.median(d[n]))
    finally:
        empty_bpf.cleanup()
    out["problems"] = problems
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=None, help=f"rules of the large policy (default {DEFAULT_RULES})")
    ap.add_argument("--groups", type=int, default=None, help=f"groups, 10 prefixes each (default {DEFAULT_GROUPS})")
    ap.add_argument("--zones", type=int, default=None, help=f"of the groups, zones (default {DEFAULT_ZONES})")
    ap.add_argument("--small", type=int, default=DEFAULT_SMALL, help="rules of the small policy (default 10)")
    ap.add_argument("--new-flows", type=int, default=None, help=f"SYNs per case and round (default {DEFAULT_NEW_FLOWS})")
    ap.add_argument("--rounds", type=int, default=None, help=f"rounds, median reported (default {DEFAULT_ROUNDS})")
    ap.add_argument("--quick", action="store_true", help="a small run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    ap.add_argument("--no-kernel", action="store_true", help="parse, check and compile only (no root needed)")
    ap.add_argument("--profile", metavar="FILE", help="cProfile the load of the large policy into FILE")
    ap.add_argument("--write", metavar="FILE", help="also write the large policy's text to FILE")
    args = ap.parse_args(argv)
    q = QUICK if args.quick else {}
    n_rules = args.rules or q.get("rules", DEFAULT_RULES)
    groups = args.groups or q.get("groups", DEFAULT_GROUPS)
    zones = args.zones or q.get("zones", DEFAULT_ZONES)
    n_new = args.new_flows or q.get("new_flows", DEFAULT_NEW_FLOWS)
    rounds = args.rounds or q.get("rounds", DEFAULT_ROUNDS)
    kernel = not args.no_kernel
    if kernel and os.geteuid() != 0:
        print("bench/policy_scale.py loads BPF programs: run it as root (or --no-kernel)", file=sys.stderr)
        return 1

    t0 = time.perf_counter()
    text, facts = generate(n_rules, groups, zones)
    gen_s = time.perf_counter() - t0
    # The small policy: the same shape, and the same measured flows (client
    # and server are leaves 0 and 1 in both, with the same addresses).
    small_text, small_facts = generate(args.small, groups=max(4, args.small), zones=2, seed=2)
    assert (small_facts["client"], small_facts["server"]) == (facts["client"], facts["server"])
    if args.write:
        Path(args.write).write_text(text)

    builds = {}
    try:
        if kernel:
            from datapath.config import DatapathConfig
            from datapath.compile import check_headers
            from datapath.loader import FastPath
            check_headers()
            cfg = DatapathConfig(syn_dst_rate=0, syn_global_rate=0)   # thousands of SYNs to one server
            for name in ("small", "large"):
                builds[name] = FastPath(cfg)
        big = time_load(text, builds.get("large"), args.profile)
        small = time_load(small_text, builds.get("small"))
        res = measure_kernel(builds, facts, n_new, rounds) if kernel else None
    finally:
        for fp in builds.values():
            fp.close()

    s = policyfile.summary(big["model"], big["pol"])
    print("microseg policy at scale: load time and a new flow's first packet")
    print(f"kernel   {os.uname().release}")
    print(f"policy   {s['rules']} rules, {s['groups']} groups + {s['cidr_groups']} from CIDRs, "
          f"{s['prefixes']} prefixes -> {s['rule_entries']} rule entries; {len(text) / 1e6:.1f} MB of YAML "
          f"(generated in {gen_s:.1f} s)")
    print()
    print("| step | large policy, s | small policy, s |")
    print("|---|---|---|")
    for step in ("parse", "check", "compile", "gc", "apply", "total"):
        if step in big:
            print(f"| {step} | {big[step]:.2f} | {small[step]:.3f} |")
    verdict = "within" if big["total"] < LIMIT_S else "OVER"
    print(f"\nload of the large policy: {big['total']:.1f} s ({verdict} the {LIMIT_S:.0f} s requirement)")
    if res is None:
        return 0 if big["total"] < LIMIT_S else 1
    problems = res.pop("problems")
    print(f"\nnew flow's first packet (SYN), BPF_PROG_TEST_RUN repeat 1: {n_new} distinct SYNs per case "
          f"and round, {rounds} rounds; median of per-call ns per round, median over rounds (min-max)")
    print()
    print(f"| case | empty program | {args.small} rules | {s['rules']} rules | large / small | "
          f"large - small, ns |")
    print("|---|---|---|---|---|---|")
    for case in ("same-hosts", "new-host"):
        e, sm, lg = (res[(case, n)] for n in ("empty", "small", "large"))
        ms, ml = statistics.median(sm), statistics.median(lg)
        print(f"| {case} | {statistics.median(e):g} | {ms:g} ({min(sm):g}-{max(sm):g}) | "
              f"{ml:g} ({min(lg):g}-{max(lg):g}) | {ml / ms:.2f} | {ml - ms:+g} |")
    if problems:
        print(f"\nWARNING: flows took another path than measured: {'; '.join(sorted(set(problems))[:4])}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
