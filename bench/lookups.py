"""Nanoseconds per map lookup inside a BPF program: HASH, LPM_TRIE and
BLOOM_FILTER at 10, 10,000 and 100,000 entries, next to the seed review's
figures (hash ~50 ns, LPM trie ~200-500 ns, bloom filter ~30 ns).

Every map is created with the bpf() system call (datapath/bpfsys.py
create_map, as the policy and blocklist maps are) with microseg's own
layouts:

* ``hash, 20 B key``: struct ms_lpm_key (prefix length + 16-byte address,
  IPv4 as IPv4-mapped IPv6) -> u32, BPF_F_NO_PREALLOC: the policy's exact
  group table ms_pol_gh. Members: /32 host keys.
* ``hash, 40 B key``: struct ms_flow_key (two addresses, two ports,
  protocol) -> a 64-byte value, preallocated: the session table ms_flows.
* ``hash, 16 B key``: what an IPv4-only session table's key would be (two
  IPv4 addresses, two ports, protocol, padding) -> the same 64-byte value,
  preallocated: not a microseg map, the measure of what a compact session
  key would save against the 40-byte one (issue 18 item 1).
* ``LPM trie``: struct ms_lpm_key -> u32 (ms_pol_grp, ms_bl_lpm); prefixes
  /16 (10 %), /24 (40 %) and /32 (50 %), spread over the IPv4 unicast space.
* ``bloom filter``: 20-byte values (struct ms_bl_key), 3 hash functions and
  four times the entries, as datapath/blocklist.py sizes the blocklist's
  pre-check. BCC 0.26 has no bloom table type: the program reaches the map
  by fd (bpf_pseudo_fd), as bpf/xdp_blocklist.c does.

Each lookup runs in a small TC program, run with BPF_PROG_TEST_RUN
``--repeat`` times per measurement (the kernel reports the mean per run).
Each program reads a per-CPU counter, reads its key from an array of
65,536 prepared keys (hot: always entry 0; new: entry counter mod 65,536,
so every run a different key), copies it to the stack, looks it up, and
adds the result to the counter's sink. Its baseline is the same program
without the lookup (same key work), measured in the same round; the
lookup's cost is the difference, per round, median over rounds. The empty
program (return TC_ACT_OK) shows the harness's own floor. Programs are
interleaved within a round, the order rotated each round.

Access patterns, per map:

* ``hot``: the same member key every run (everything in cache);
* ``new, hit``: a different member every run (a 10-entry map cycles its 10);
  LPM: an address inside a different prefix every run;
* ``new, miss``: a different key every run that is not a member (LPM: an
  address no prefix covers). A bloom filter stops at the first clear bit
  of a key it does not hold, so its miss is its cheap case; a false
  positive (about 0.4 % of misses at this sizing) tests all three bits.

The "new" keys are not cold from memory: the VM's caches hold a whole
100,000-entry map; a different key each run defeats only the L1/L2 reuse
of the hot case. Nothing is attached anywhere; every map and program is
closed at the end. A measurement: nothing is asserted about the numbers.

    .venv/bin/python bench/lookups.py [--sizes 10,10000,100000] [--kinds hash20,hash16,hash40,lpm,bloom]
                                      [--repeat N] [--rounds N] [--quick]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datapath import bpfsys  # noqa: E402
from datapath.blocklist import BLOOM_HASHES, BLOOM_MIN_ENTRIES, BLOOM_OVERSIZE  # noqa: E402
from datapath.bpfsys import (BPF_F_NO_PREALLOC, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_BLOOM_FILTER,  # noqa: E402
                             BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LPM_TRIE)

DEFAULT_SIZES = (10, 10_000, 100_000)
DEFAULT_REPEAT = 1_000_000
DEFAULT_ROUNDS = 7
QUICK = dict(sizes=(10, 10_000), repeat=50_000, rounds=3)
KEYS = 1 << 16            # prepared keys per (map, pattern); a power of two
FLOW_VALUE = 64           # a session value's size, about struct ms_flow's
ACCESS = ("hot", "new, hit", "new, miss")
KINDS = ("hash20", "hash16", "hash40", "lpm", "bloom")
# The seed review's table (section 6): lookup -> its figure.
REVIEW = {"hash": "~50 ns", "lpm": "~200-500 ns", "bloom": "~30 ns"}
# One Ethernet frame: the programs do not look at it.
FRAME = bytes(14) + bytes(50)

PROLOGUE = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

struct lk_ctr { __u64 n; __u64 sink; };
BPF_PERCPU_ARRAY(lk_ctr, struct lk_ctr, 1);

int empty(struct __sk_buff *skb)
{
    return TC_ACT_OK;
}
"""

# One program: KEYS_FD an array of prepared keys; MAP_FD the map looked up
# (0: the baseline, no lookup). INDEX: which prepared key this run uses.
BODY = r"""
int {name}(struct __sk_buff *skb)
{{
    __u32 z = 0;
    struct lk_ctr *c = lk_ctr.lookup(&z);
    if (!c)
        return TC_ACT_OK;
    __u32 i = {index};
    __u8 *src = bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, {keys_fd}), &i);
    if (!src)
        return TC_ACT_OK;
    __u8 key[{ksize}];
    __builtin_memcpy(key, src, {ksize});
    c->n++;
    {lookup}
    return TC_ACT_OK;
}}
"""
LOOKUP = {
    None: "c->sink += key[{ksize} - 1];",
    "elem": "c->sink += bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, {map_fd}), key) != 0;",
    "peek": "c->sink += bpf_map_peek_elem((void *)bpf_pseudo_fd(1, {map_fd}), key) == 0;",
}
INDEX = {"hot": "0", "new": f"(__u32)c->n & {KEYS - 1}"}


# -- keys ------------------------------------------------------------------------

def k20(plen: int, v4: int) -> bytes:
    """struct ms_lpm_key for an IPv4 address (IPv4-mapped, length + 96)."""
    return (96 + plen).to_bytes(4, "little") + bytes(10) + b"\xff\xff" + v4.to_bytes(4, "big")


def k40(rnd: random.Random) -> bytes:
    """A struct ms_flow_key: two IPv4-mapped addresses, two ports, TCP."""
    a = b"".join(bytes(10) + b"\xff\xff" + rnd.getrandbits(32).to_bytes(4, "big") for _ in range(2))
    return a + rnd.getrandbits(16).to_bytes(2, "big") + (80).to_bytes(2, "big") + b"\x06" + bytes(3)


def k16(rnd: random.Random) -> bytes:
    """A compact IPv4 session key: two IPv4 addresses, two ports, TCP, padding."""
    return (rnd.getrandbits(64).to_bytes(8, "big") + rnd.getrandbits(16).to_bytes(2, "big")
            + (80).to_bytes(2, "big") + b"\x06" + bytes(3))


def unicast(rnd: random.Random) -> int:
    return rnd.randrange(1 << 24, 224 << 24)


PLENS = ((16, 0.1), (24, 0.4), (32, 0.5))


@dataclass
class MapSpec:
    """One map to measure: its members and its prepared keys."""
    kind: str            # hash20 | hash16 | hash40 | lpm | bloom
    size: int
    label: str
    ksize: int
    helper: str          # elem | peek
    fd: int = -1
    keys: dict[str, list[bytes]] = field(default_factory=dict)   # pattern -> keys
    notes: list[str] = field(default_factory=list)


def lpm_prefixes(rnd: random.Random, n: int) -> list[tuple[int, int]]:
    """``n`` distinct (length, network) IPv4 prefixes."""
    out: set[tuple[int, int]] = set()
    weights = [w for _, w in PLENS]
    while len(out) < n:
        plen = rnd.choices([p for p, _ in PLENS], weights)[0]
        net = unicast(rnd) & (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
        out.add((plen, net))
    return sorted(out)


def lpm_covers(prefixes: list[tuple[int, int]]):
    by_len: dict[int, set[int]] = {}
    for plen, net in prefixes:
        by_len.setdefault(plen, set()).add(net)

    def covered(a: int) -> bool:
        return any((a & (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF) in nets for plen, nets in by_len.items())
    return covered


def prepare(kind: str, n: int, rnd: random.Random) -> MapSpec:
    """Members (written into a new map) and the keys each pattern uses."""
    if kind == "hash20":
        s = MapSpec(kind, n, "hash, 20 B key (ms_pol_gh)", 20, "elem")
        addrs: set[int] = set()
        while len(addrs) < n:
            addrs.add(unicast(rnd))
        members = [k20(32, a) for a in sorted(addrs)]
        rnd.shuffle(members)
        s.fd = bpfsys.create_map(BPF_MAP_TYPE_HASH, 20, 4, n, flags=BPF_F_NO_PREALLOC, name="lk_hash20")
        for k in members:
            bpfsys.map_update(s.fd, k, bytes(4))
        mset = set(members)
        miss = []
        while len(miss) < KEYS:
            k = k20(32, unicast(rnd))
            if k not in mset:
                miss.append(k)
    elif kind in ("hash40", "hash16"):
        ksize, make = (40, k40) if kind == "hash40" else (16, k16)
        label = "hash, 40 B key (ms_flows6)" if kind == "hash40" else "hash, 16 B key (ms_flows4, IPv4 sessions)"
        s = MapSpec(kind, n, label, ksize, "elem")
        mset: set[bytes] = set()
        while len(mset) < n:
            mset.add(make(rnd))
        members = list(mset)
        rnd.shuffle(members)
        s.fd = bpfsys.create_map(BPF_MAP_TYPE_HASH, ksize, FLOW_VALUE, n, name=f"lk_{kind}")
        for k in members:
            bpfsys.map_update(s.fd, k, bytes(FLOW_VALUE))
        miss = []
        while len(miss) < KEYS:
            k = make(rnd)
            if k not in mset:
                miss.append(k)
    elif kind == "lpm":
        s = MapSpec(kind, n, "LPM trie (ms_pol_grp, ms_bl_lpm)", 20, "elem")
        prefixes = lpm_prefixes(rnd, n)
        s.fd = bpfsys.create_map(BPF_MAP_TYPE_LPM_TRIE, 20, 4, n, flags=BPF_F_NO_PREALLOC, name="lk_lpm")
        for plen, net in prefixes:
            bpfsys.map_update(s.fd, k20(plen, net), bytes(4))
        order = list(prefixes)
        rnd.shuffle(order)
        # Lookups are of full addresses (length 128), as a packet's.
        members = [k20(32, net | rnd.getrandbits(32 - plen)) if plen < 32 else k20(32, net)
                   for plen, net in order]
        covered = lpm_covers(prefixes)
        miss = []
        while len(miss) < KEYS:
            a = unicast(rnd)
            if not covered(a):
                miss.append(k20(32, a))
        lens = sorted({p for p, _ in prefixes})
        s.notes.append(f"LPM {n}: prefix lengths {', '.join(f'/{p}' for p in lens)}")
    elif kind == "bloom":
        s = MapSpec(kind, n, "bloom filter (ms_bl_bloom)", 20, "peek")
        prefixes = lpm_prefixes(rnd, n)
        members = [k20(plen, net) for plen, net in prefixes]
        rnd.shuffle(members)
        s.fd = bpfsys.create_map(BPF_MAP_TYPE_BLOOM_FILTER, 0, 20, max(BLOOM_MIN_ENTRIES, n * BLOOM_OVERSIZE),
                                 map_extra=BLOOM_HASHES, name="lk_bloom")
        for k in members:
            bpfsys.map_update(s.fd, None, k)
        mset = set(members)
        miss = []
        while len(miss) < KEYS:
            k = k20(24, unicast(rnd) & 0xFFFFFF00)
            if k not in mset:
                miss.append(k)
    else:
        raise ValueError(kind)
    s.keys = {"hot": members[:1], "new, hit": members, "new, miss": miss}
    return s


def key_array(keys: list[bytes], ksize: int) -> int:
    """An ARRAY of KEYS prepared keys (``keys`` repeated to fill it)."""
    fd = bpfsys.create_map(BPF_MAP_TYPE_ARRAY, 4, ksize, KEYS, name="lk_keys")
    idx = (ctypes.c_uint32 * KEYS)(*range(KEYS))
    vals = ctypes.create_string_buffer(b"".join(keys[i % len(keys)] for i in range(KEYS)), KEYS * ksize)
    done = 0
    while done < KEYS:
        done += bpfsys.map_update_batch(fd, ctypes.addressof(idx) + 4 * done,
                                        ctypes.addressof(vals) + ksize * done, KEYS - done)
    return fd


# -- programs ----------------------------------------------------------------------

@dataclass
class Prog:
    name: str
    spec: MapSpec | None = None
    access: str = ""
    base: str = ""                 # the baseline program's name ("" for baselines)
    fd: int = -1
    samples: list[int] = field(default_factory=list)


def build(specs: list[MapSpec], fds: list[int]) -> tuple[str, list[Prog]]:
    """The program text and the programs: per map and pattern, the lookup,
    and per key array the baseline (same key work, no lookup)."""
    text = [PROLOGUE]
    progs = [Prog("empty")]
    for si, s in enumerate(specs):
        for ai, access in enumerate(ACCESS):
            kfd = key_array(s.keys[access], s.ksize)
            fds.append(kfd)
            index = INDEX["hot" if access == "hot" else "new"]
            base = f"base_{si}_{ai}"
            look = f"look_{si}_{ai}"
            text.append(BODY.format(name=base, index=index, keys_fd=kfd, ksize=s.ksize,
                                    lookup=LOOKUP[None].format(ksize=s.ksize)))
            text.append(BODY.format(name=look, index=index, keys_fd=kfd, ksize=s.ksize,
                                    lookup=LOOKUP[s.helper].format(map_fd=s.fd)))
            progs.append(Prog(base, s, access))
            progs.append(Prog(look, s, access, base=base))
    return "".join(text), progs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=None, help="entries per map, comma-separated (default 10,10000,100000)")
    ap.add_argument("--repeat", type=int, default=None, help=f"BPF_PROG_TEST_RUN repeat (default {DEFAULT_REPEAT})")
    ap.add_argument("--rounds", type=int, default=None, help=f"rounds, median reported (default {DEFAULT_ROUNDS})")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"maps to measure (default {','.join(KINDS)})")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    args = ap.parse_args(argv)
    q = QUICK if args.quick else {}
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else list(q.get("sizes", DEFAULT_SIZES))
    repeat = args.repeat or q.get("repeat", DEFAULT_REPEAT)
    rounds = args.rounds or q.get("rounds", DEFAULT_ROUNDS)
    if min(sizes) < 1 or repeat < 1 or rounds < 1:
        ap.error("--sizes, --repeat and --rounds must be positive")
    kinds = args.kinds.split(",")
    if not set(kinds) <= set(KINDS):
        ap.error(f"--kinds: {', '.join(sorted(set(kinds) - set(KINDS)))} not one of {', '.join(KINDS)}")
    if os.geteuid() != 0:
        print("bench/lookups.py creates BPF maps and programs: run it as root", file=sys.stderr)
        return 1
    from bcc import BPF

    from datapath.compile import check_headers
    check_headers()

    rnd = random.Random(args.seed)
    fds: list[int] = []
    specs: list[MapSpec] = []
    bpf = None
    t0 = time.monotonic()
    try:
        for kind in kinds:
            for n in sizes:
                s = prepare(kind, n, rnd)
                fds.append(s.fd)
                specs.append(s)
        fill_s = time.monotonic() - t0
        text, progs = build(specs, fds)
        bpf = BPF(text=text.encode())
        for p in progs:
            p.fd = bpf.load_func(p.name.encode(), BPF.SCHED_CLS).fd
        by_name = {p.name: p for p in progs}
        for p in progs:   # warm-up, and every program returns what it should
            r = bpfsys.prog_test_run(p.fd, FRAME, repeat=1000)
            if r.retval != 0:
                raise SystemExit(f"{p.name}: returned {r.retval}")
        # What each lookup program found, over one pass of its keys: hits
        # must be hits and misses misses (a bloom filter's false positives
        # are counted, not an error).
        ctr = bpf[b"lk_ctr"]
        checks: dict[str, float] = {}
        for p in progs:
            if not p.base:
                continue
            ctr.clear()
            n = min(KEYS, len(p.spec.keys[p.access]))
            bpfsys.prog_test_run(p.fd, FRAME, repeat=n)
            found = sum(v.sink for v in ctr[ctypes.c_int(0)])
            checks[p.name] = found / n
        for rnd_i in range(rounds):
            k = rnd_i % len(progs)
            for p in progs[k:] + progs[:k]:
                p.samples.append(bpfsys.prog_test_run(p.fd, FRAME, repeat=repeat).duration_ns)
    finally:
        if bpf is not None:
            bpf.cleanup()
        for fd in fds:
            os.close(fd)

    problems = []
    print("BPF map lookups: ns per lookup inside a TC program, BPF_PROG_TEST_RUN, next to the seed review")
    print(f"kernel   {os.uname().release}")
    print(f"repeat   {repeat} per measurement; {rounds} rounds, programs interleaved (order rotated); "
          f"lookup = program - its baseline (same key work, no lookup), per round, median over rounds (min-max)")
    empty = by_name["empty"]
    print(f"empty TC program: {statistics.median(empty.samples):g} ns per run (the harness); maps filled in "
          f"{fill_s:.1f} s")
    print()
    head = " | ".join(f"{a}, ns" for a in ACCESS)
    print(f"| map | entries | {head} | baseline hot / new, ns | review |")
    print("|---|---|" + "---|" * len(ACCESS) + "---|---|")
    for s in specs:
        cells, bases = [], []
        for access in ACCESS:
            p = next(x for x in progs if x.spec is s and x.access == access and x.base)
            b = by_name[p.base]
            diffs = [a - c for a, c in zip(p.samples, b.samples)]
            med = statistics.median(diffs)
            cells.append(f"{med:g} ({min(diffs)}-{max(diffs)})")
            if access != "new, miss":
                bases.append(f"{statistics.median(b.samples):g}")
            want = {"hot": 1.0, "new, hit": 1.0, "new, miss": 0.0}[access]
            got = checks[p.name]
            if s.kind == "bloom" and access == "new, miss":
                if got > 0.05:
                    problems.append(f"{s.label} {s.size}: {got:.1%} of misses were bloom hits")
                elif got:
                    s.notes.append(f"bloom {s.size}: {got:.2%} of the misses were false positives")
            elif got != want:
                problems.append(f"{s.label} {s.size} {access}: found {got:.3f} of the keys, expected {want:g}")
        review = REVIEW["hash" if s.kind.startswith("hash") else s.kind]
        print(f"| {s.label} | {s.size:,} | {' | '.join(cells)} | {' / '.join(bases)} | {review} |")
    print()
    notes = [n for s in specs for n in s.notes]
    for n in notes:
        print(f"note: {n}")
    print(f"total {time.monotonic() - t0:.0f} s")
    for p in problems:
        print(f"WARNING: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
