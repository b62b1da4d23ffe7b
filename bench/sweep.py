"""Seconds per million sessions of the sweeper, both ways, next to Calico's.

Loads a build whose session table holds ``--entries`` (1,000,000 by
default; flow_table_size 2^20 or the next power of two), fills ms_flows
through BPF_MAP_UPDATE_BATCH from numpy buffers, every other entry idle past
its state's timeout, and times ``Sweeper.sweep()`` with each method:
``kernel`` (bpf/lib/sweep.h: one BPF_PROG_TEST_RUN of a program that walks
the tables with bpf_for_each_map_elem and deletes in the callback) and
``batch`` (BPF_MAP_LOOKUP_BATCH into numpy, BPF_MAP_DELETE_BATCH). Wall
seconds, and CPU seconds of this process (time.process_time: user + system,
so the kernel's work inside the system calls is in it). Each round, for
each method, refills the table, sweeps it (half expire), refills it with
every entry fresh and sweeps again (nothing expires: the cost of the walk
alone). The median over rounds is reported, with min and max.

What each kernel row measures (all on the same table, same fill):

* ``kernel | half expired``: the build's own sweep with its own 2 MiB
  ms_events ring and no reader, as in a mass expiry whose reader is slow:
  the ring takes the first 16,384 end records (the first round only) and
  refuses the others, so nearly every one of the 500,000 deleted sessions
  is deleted with its record counted lost (ms_events_lost), not written.
* ``kernel | half expired, records written``: the same sweep program
  (bpf/lib/sweep.h, same build), linked to a ring of its own large enough
  for every end record of the pass (RingBuffer sizes it from --entries);
  every deleted session's record is reserved, filled and submitted. The
  bench checks that the ring holds exactly one record per deleted session
  and that none was lost, then empties the ring (moves its consumer
  position) for the next round, outside the timing.
* ``kernel | nothing expired``: the walk with the age test only.
* ``kernel floor``: the same walk of the same table with
  bpf_for_each_map_elem and a callback that does nothing.
* ``kernel floor | memory-order walk``: that walk over an ARRAY of as many
  entries of ms_flows' value size. Same helper, same callback per entry;
  only the order of the memory differs: a hash table's walk goes bucket by
  bucket, and each bucket's element lies wherever the insert took it from
  the free list, so every entry is a cache miss; an array's entries follow
  each other, so the CPU's prefetcher has them ready. The difference
  between the two floors is what the hash order costs.

Then the slot-array experiment (bench/sweep_slots.py, issue 18 item 4:
a design measured, not the datapath's): each session's {key, deadline} in
an ARRAY, in a shuffled order, walked by one program with an open-coded
loop (bpf_loop; bpf_iter_num; bpf_iter_num with the expired sessions'
lookups batched), which looks a session up in ms_flows only when its
slot is past its deadline, then writes its end record and deletes it as
sweep.h does. Passes: nothing expired, half and all expired with every
record written (each checked: deleted count, one record per deleted
session, freed slots), two parts of the all-expired pass alone, and
sweep.h on the same passes beside them. Then the established packet's
price for the slots: BPF_PROG_TEST_RUN of the hash lookup alone, with the
refresh test, and with a slot write every packet, interleaved (ns per
run). ``--slots-only`` runs only this part.

The baseline is Calico's published figure for its BPF conntrack cleaner:
about 0.8 s and up to 1.2 cores per 4,000,000 entries, i.e. 0.2 s wall and
0.24 CPU-seconds per million. The ratio columns are microseg / Calico (below
1 is faster). Calico's figure is from its own hardware, not this VM: treat
the ratio as an order of magnitude, not a race.

Also measured once: reading the whole table through BCC 0.26's own batch
API (``items_lookup_batch``, one ctypes pair per entry) against the
numpy walk the batch sweep uses, and a whole sweep written on BCC's API.

    .venv/bin/python bench/sweep.py [--entries N] [--rounds N] [--quick]

``--ab TREE`` compares instead this tree's kernel sweep with another
tree's (TREE/bpf/lib/sweep.h, e.g. an older commit's `git archive`): both
compiled on their own and loaded for the same table, each round running
them in random order on the same fill, CPU seconds of the program run only
(no Python around it). On a busy machine this is what can tell a few per
cent apart; two trees run one after the other cannot.

    .venv/bin/python bench/sweep.py --ab /tmp/base --rounds 7
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from datapath import bpfsys  # noqa: E402
from datapath.config import DatapathConfig  # noqa: E402
from datapath.enums import CtState  # noqa: E402
from datapath.errors import MicrosegError  # noqa: E402
from datapath.bpfsys import BPF_F_SLEEPABLE, BPF_MAP_TYPE_RINGBUF, BPF_PROG_TYPE_SYSCALL, BPF_RINGBUF_HDR_SZ  # noqa: E402
from datapath.compile import check_headers  # noqa: E402
from datapath.config import ring_pages  # noqa: E402
from datapath.flowevents import flow_event_type  # noqa: E402
from datapath.loader import SWEEP_MAPS, FastPath, compile_sweep, link_with_callback, syscall_test_run  # noqa: E402
from datapath.sessions import FAMILY_TABLES, BatchWalker, expiry_dtype, session_clock_ns  # noqa: E402
from datapath.sweeper import METHODS, Sweeper  # noqa: E402
from slowpath.ringbuf import RingBuffer  # noqa: E402

# The map the synthetic IPv4 sessions are written to (the sweep walks the
# IPv6 and half-open maps too, empty here).
FLOWS4 = FAMILY_TABLES["ms_flows"][0]

DEFAULT_ENTRIES = 1_000_000
QUICK_ENTRIES = 100_000
DEFAULT_ROUNDS = 3
FILL_BATCH = 65_536
# Calico: ~0.8 s, up to 1.2 cores, per 4,000,000 entries.
CALICO_WALL_PER_M = 0.8 / 4
CALICO_CPU_PER_M = 0.8 * 1.2 / 4


def synthetic(fp: FastPath, n: int, now_ns: int, expired: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct IPv4 TCP sessions, ESTABLISHED; even ones expired
    (none when ``expired`` is false). Keys of the IPv4 map (struct
    ms_flow_key4: each address its 4 wire bytes)."""
    tab = fp.table(FLOWS4)
    kdt, vdt = np.dtype(tab.Key), np.dtype(tab.Leaf)
    keys = np.zeros(n, kdt)
    i = np.arange(n, dtype=np.uint64)
    lo = np.zeros((n, 4), np.uint8)
    lo[:, 0] = 10
    lo[:, 1] = (i >> 16) & 0xFF
    lo[:, 2] = (i >> 8) & 0xFF
    lo[:, 3] = i & 0xFF
    keys["addr_lo"] = lo.view(np.uint32).reshape(n)
    keys["addr_hi"] = np.frombuffer(bytes((10, 200, 0, 1)), np.uint32)[0]
    keys["port_lo"] = (40000 + (i >> 24)).astype(np.uint16).byteswap()
    keys["port_hi"] = np.uint16(443).byteswap()
    keys["proto"] = 6
    est_ns = int(fp.config.timeouts.established * 1e9)
    vals = np.zeros(n, vdt)
    vals["state"] = int(CtState.CT_ESTABLISHED)
    # an expired entry was last seen two timeouts ago (modulo 2^64, as the
    # kernel's u64 arithmetic has it on a machine up for less than that)
    old = (now_ns - 2 * est_ns) % (1 << 64)
    vals["last_seen_ns"] = np.where((i % 2 == 0) & expired, np.uint64(old), np.uint64(now_ns))
    vals["first_seen_ns"] = vals["last_seen_ns"]
    vals["packets"] = 10
    vals["bytes"] = 1000
    return keys, vals


def fill(fp: FastPath, keys: np.ndarray, vals: np.ndarray) -> float:
    """Write every entry with BPF_MAP_UPDATE_BATCH; set ms_pressure.inserted
    to the table's size as if the kernel had inserted them. Returns seconds."""
    fd = fp.table(FLOWS4).map_fd
    t0 = time.perf_counter()
    ks, vs = keys.itemsize, vals.itemsize
    for s in range(0, len(keys), FILL_BATCH):
        k, v = keys[s:s + FILL_BATCH], vals[s:s + FILL_BATCH]
        bpfsys.map_update_batch(fd, k.ctypes.data, v.ctypes.data, len(k))
    took = time.perf_counter() - t0
    fp.table("ms_pressure").clear()
    fp.table("ms_pressure_user").clear()
    pr = fp.table("ms_pressure")
    v = pr.Leaf()
    v.inserted = len(keys)
    pr[pr.Key(0)] = v
    return took


class WrittenRing:
    """The "records written" row's ring: an ms_events-like ring buffer with
    room for ``records`` end records, created here, not by the build; the
    build's own sweep program (or another tree's sweep.h) is compiled and
    linked to it in place of the build's 2 MiB ms_events, every other map
    the build's own."""

    def __init__(self, fp: FastPath, records: int):
        # sweep.h MS_SWEEP_RECORD_BYTES: the record and the ring's header, 8-aligned
        self.record_bytes = (ctypes.sizeof(flow_event_type(fp)) + BPF_RINGBUF_HDR_SZ + 7) & ~7
        # the sweep reserves only while avail + record < size: one record more
        size = ring_pages((records + 1) * self.record_bytes) * 4096
        fd = bpfsys.create_map(BPF_MAP_TYPE_RINGBUF, 0, 0, size, name="ms_events_big")
        self.rb = RingBuffer(fd, owns_fd=True)
        self.fp = fp

    def program(self, source: Path | None = None):
        fds = {m: self.fp.table(m).map_fd for m in SWEEP_MAPS}
        fds["ms_events"] = self.rb.fd
        return compile_sweep(fds, source)

    def check_and_empty(self, run, deleted: int) -> str | None:
        """After a pass: None when the ring holds one record per deleted
        session and the run lost none; else what is wrong. Then empties
        the ring (the consumer position jumps to the producer's)."""
        pending = self.rb.pending_bytes()
        cons, prod = self.rb.position_views()
        cons[0] = prod[0]
        if pending != deleted * self.record_bytes or run.events_lost or run.deferred:
            return (f"{pending // self.record_bytes} end records in the ring for {deleted} deleted sessions, "
                    f"{run.events_lost} lost, {run.deferred} deferred")
        return None

    def close(self) -> None:
        self.rb.close()


def time_bcc_read(fp: FastPath) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(1 for _ in fp.table(FLOWS4).items_lookup_batch())
    return time.perf_counter() - t0, n


def time_numpy_read(fp: FastPath, vdt) -> tuple[float, int]:
    tab = fp.table(FLOWS4)
    t0 = time.perf_counter()
    w = BatchWalker(tab.map_fd, ctypes.sizeof(tab.Key), ctypes.sizeof(tab.Leaf))
    vals = w.values.view(vdt)
    n = 0
    for k in w:
        n += k
        _ = vals[:k]["last_seen_ns"].max()
    return time.perf_counter() - t0, n


def bcc_sweep(fp: FastPath, now_ns: int) -> tuple[float, float, int]:
    """The same sweep on BCC's table API: items_lookup_batch, a Python
    filter over the ctypes pairs, items_delete_batch."""
    tab = fp.table(FLOWS4)
    tmo = {int(k.value): v.value for k, v in fp.table("ms_timeouts").items()}
    t0, c0 = time.perf_counter(), time.process_time()
    wrap = 1 << 64  # the kernel's u64 arithmetic
    dead = [k for k, v in tab.items_lookup_batch()
            if (now_ns - v.last_seen_ns) % wrap > tmo.get(v.state, 30 * 10**9)]
    if dead:
        arr = (tab.Key * len(dead))(*dead)
        tab.items_delete_batch(arr)
    return time.perf_counter() - t0, time.process_time() - c0, len(dead)


# The kernel walk with nothing in the callback: what bpf_for_each_map_elem
# itself costs here. MARKER is replaced by ms_flows' fd (loader.link_with_callback).
FLOOR_MARKER = 0x4D530001
FLOOR_TEXT = r"""
#include <uapi/linux/bpf.h>
BPF_ARRAY(floor_out, __u64, 1);
static long (*ms_for_each_map_elem)(void *map, void *cb, void *ctx, __u64 flags) =
    (void *)BPF_FUNC_for_each_map_elem;
static noinline __attribute__((section(".bpf.fn.floor_walk")))
long floor_entry(void *map, void *key, void *value, void *ctx)
{
    return 0;
}
int floor_walk(void *ctx)
{
    __u32 z = 0;
    __u64 *out = floor_out.lookup(&z);
    long x = 0;
    if (!out)
        return 1;
    *out = ms_for_each_map_elem((void *)bpf_pseudo_fd(1, %d), floor_entry, &x, 0);
    return 0;
}
""" % FLOOR_MARKER


def time_floor(fp: FastPath, map_fd: int | None = None) -> tuple[float, float, int]:
    """(wall s, CPU s, entries visited) of one empty-callback walk of
    ms_flows, or of the map ``map_fd``."""
    from bcc import BPF

    b = BPF(text=FLOOR_TEXT.encode())
    try:
        target = fp.table(FLOWS4).map_fd if map_fd is None else map_fd
        out = b[b"floor_out"]
        fd = link_with_callback(b, "floor_walk", "floor_entry", BPF_PROG_TYPE_SYSCALL,
                                {FLOOR_MARKER: target}, {target, out.map_fd}, BPF_F_SLEEPABLE)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            syscall_test_run(fd)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            os.close(fd)
        return wall, cpu, int(out[out.Key(0)].value)
    finally:
        b.cleanup()


def time_array_floor(fp: FastPath, n: int) -> tuple[float, float, int]:
    """The empty-callback walk of an ARRAY of ``n`` entries of ms_flows'
    value size: the same walk in memory order (module docstring)."""
    value_size = ctypes.sizeof(fp.table(FLOWS4).Leaf)
    fd = bpfsys.create_map(bpfsys.BPF_MAP_TYPE_ARRAY, 4, value_size, n, name="floor_arr")
    try:
        return time_floor(fp, fd)
    finally:
        os.close(fd)


# The slot-array experiment's passes (bench/sweep_slots.py): label ->
# (which sessions expire: None, "half" or "all"; sessions found expired of
# n; what the sweep does with them: SlotSweep.MODES). The last two take
# the all-expired pass apart: the hash lookup that confirms alone, then
# with the delete (and the slot's free) but no end record.
SLOT_PASSES = {"nothing expired": (None, lambda n: 0, "end"),
               "half expired, records written": ("half", lambda n: (n + 1) // 2, "end"),
               "all expired, records written": ("all", lambda n: n, "end"),
               "all expired, confirming lookup only": ("all", lambda n: n, "lookup"),
               "all expired, lookup + delete, no record": ("all", lambda n: n, "delete")}
# The slot experiment's reference rows: bpf/lib/sweep.h on the same passes
HASH_WALK = "hash walk (bpf/lib/sweep.h, today)"
# BPF_PROG_TEST_RUN rounds of the packet A/B (each program, each case)
PACKET_ROUNDS = 9


def slot_experiment(fp: FastPath, n: int, rounds: int) -> tuple[dict, dict] | None:
    """The slot-array sweep's passes, every loop (CPU s per pass), and the
    established packet's A/B (ns per run); None after printing what failed."""
    import sweep_slots

    flows = fp.table(FLOWS4)
    ring = WrittenRing(fp, n)
    ss = hash_prog = None
    try:
        try:
            # today's sweep (bpf/lib/sweep.h) on the same passes, for reference
            hash_prog = ring.program()
            ss = sweep_slots.SlotSweep(n, flows.map_fd, ring.rb.fd,
                                       {m: fp.table(m).map_fd for m in ("ms_config", "ms_timeouts")},
                                       ctypes.sizeof(flows.Leaf))
        except MicrosegError as e:   # a compile, link or verifier refusal (or no bpf_iter_num)
            print(f"bench/sweep.py: the slot-array experiment did not load: {e}", file=sys.stderr)
            return None
        est_ns = int(fp.config.timeouts.established * 1e9)
        order = sweep_slots.slot_order(n)
        cpu = {(loop, p): [] for loop in (HASH_WALK, *ss.LOOPS) for p in SLOT_PASSES
               if loop != HASH_WALK or SLOT_PASSES[p][2] == "end"}
        for _ in range(rounds):
            for loop in (HASH_WALK, *ss.LOOPS):
                for label, (which, want_of, mode) in SLOT_PASSES.items():
                    if (loop, label) not in cpu:
                        continue
                    now = session_clock_ns()
                    keys, vals = synthetic(fp, n, now, expired=which is not None)
                    if which == "all":
                        vals["last_seen_ns"] = vals["last_seen_ns"].min()
                    fill(fp, keys, vals)
                    want = want_of(n)
                    if loop == HASH_WALK:
                        c0 = time.process_time()
                        run = hash_prog.run(session_clock_ns())
                        cpu[(loop, label)].append(time.process_time() - c0)
                        bad = ring.check_and_empty(run, want)
                        if run.expired_flows != want or run.scanned_flows != n or bad:
                            print(f"bench/sweep.py: sweep.h ({label}) deleted {run.expired_flows} of "
                                  f"{run.scanned_flows} (expected {want} of {n}): {bad or ''}", file=sys.stderr)
                            return None
                        continue
                    # a slot's deadline: its session's last packet + the timeout
                    ss.fill(keys, vals["last_seen_ns"] + np.uint64(est_ns), order)
                    c, run = ss.run(loop, session_clock_ns(), mode)
                    bad = ring.check_and_empty(run, want if mode == "end" else 0)
                    if (run.expired != want or run.scanned != n or run.refreshed or run.gone
                            or run.freed != (0 if mode == "lookup" else want) or bad):
                        print(f"bench/sweep.py: slot sweep ({loop}, {label}) deleted {run.expired} of "
                              f"{run.scanned} slots (expected {want} of {n}), {run.refreshed} refreshed, "
                              f"{run.gone} gone, {run.freed} freed: {bad or ''}", file=sys.stderr)
                        return None
                    cpu[(loop, label)].append(c)
        now = session_clock_ns()
        keys, _ = synthetic(fp, n, now, expired=False)
        ss.fill(keys, np.full(n, now + est_ns, np.uint64), order)
        pk = sweep_slots.packet_ab(ss, keys, order, now, est_ns, PACKET_ROUNDS, n)
        return cpu, pk
    finally:
        if ss is not None:
            ss.close()
        if hash_prog is not None:
            hash_prog.close()
        ring.close()


def print_slot_experiment(n: int, cpu: dict, pk: dict) -> None:
    import sweep_slots

    per_m = 1e6 / n
    print()
    print("slot array sweep (bench/sweep_slots.py, an experiment): {key, deadline} per session in an ARRAY, "
          "walked by one program; CPU s per million of the program run only")
    print("| loop | pass | slots | deleted | CPU s / M | CPU ratio to Calico |")
    print("|---|---|---|---|---|---|")
    for (loop, label), cs in cpu.items():
        _, want_of, mode = SLOT_PASSES[label]
        deleted = 0 if mode == "lookup" else want_of(n)
        rng = f" ({min(cs) * per_m:.3f}-{max(cs) * per_m:.3f})" if len(cs) > 1 else ""
        name = loop if loop == HASH_WALK else f"slot array, {loop}"
        print(f"| {name} | {label} | {n:,} | {deleted:,} | {med(cs) * per_m:.3f}{rng} | "
              f"{med(cs) * per_m / CALICO_CPU_PER_M:.2f} |")
    print()
    print(f"established packet, BPF_PROG_TEST_RUN repeat {n:,}, {PACKET_ROUNDS} interleaved rounds: "
          f"ns per run (median; min-max); refresh grain 2^{sweep_slots.SLOT_REFRESH_GRAIN_SHIFT} ns")
    print("| case | hash lookup + last-seen write | + the refresh test (grain moved?) | "
          "+ slot refresh every packet |")
    print("|---|---|---|---|")
    for case in sweep_slots.PACKET_CASES:
        cells = []
        for p in sweep_slots.PACKET_PROGS:
            xs = pk[(case, p)]
            cells.append(f"{med(xs):.1f} ({min(xs)}-{max(xs)})")
        print(f"| {case} | " + " | ".join(cells) + " |")


# --ab's passes: label -> (half the entries expired, which ring: the build's
# own 2 MiB ms_events, full after its first 16,384 records, or WrittenRing)
AB_PASSES = {"half expired": (True, "full"), "half expired, records written": (True, "written"),
             "nothing expired": (False, "full")}


def ab(fp: FastPath, n: int, rounds: int, other: Path) -> int:
    """This tree's sweep.h against ``other``'s, interleaved on one table (--ab)."""
    import random

    here = Path(__file__).resolve().parent.parent
    trees = {"this": here, "other": other.resolve()}
    fds = {m: fp.table(m).map_fd for m in SWEEP_MAPS}
    want = (n + 1) // 2
    progs = {}
    ring = WrittenRing(fp, want)
    try:
        for name, tree in trees.items():
            src = tree / "bpf" / "lib" / "sweep.h"
            if not src.is_file():
                print(f"bench/sweep.py: --ab {other}: no {src}", file=sys.stderr)
                return 2
            progs[(name, "full")] = compile_sweep(fds, src)
            progs[(name, "written")] = ring.program(src)
        cpu = {(t, p): [] for t in trees for p in AB_PASSES}
        for _ in range(rounds):
            order = list(trees)
            random.shuffle(order)
            for t in order:
                for label, (expired, which) in AB_PASSES.items():
                    fill(fp, *synthetic(fp, n, session_clock_ns(), expired=expired))
                    now = session_clock_ns()
                    c0 = time.process_time()
                    run = progs[(t, which)].run(now)
                    cpu[(t, label)].append(time.process_time() - c0)
                    if run.expired_flows != (want if expired else 0) or run.scanned_flows != n:
                        print(f"bench/sweep.py: {t} tree's sweep deleted {run.expired_flows} of "
                              f"{run.scanned_flows}", file=sys.stderr)
                        return 1
                    bad = ring.check_and_empty(run, want) if which == "written" else None
                    if bad:
                        print(f"bench/sweep.py: {t} tree's sweep: {bad}", file=sys.stderr)
                        return 1
    finally:
        for p in progs.values():
            p.close()
        ring.close()
    per_m = 1e6 / n
    print("microseg kernel sweep A/B: CPU s per million per pass, program run only, interleaved rounds")
    print(f"kernel   {os.uname().release}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end")
    print(f"entries  {n:,}, rounds {rounds} (median; min-max)")
    print(f"this     {trees['this']}")
    print(f"other    {trees['other']}")
    print()
    print("| pass | other CPU s / M | this CPU s / M | this / other |")
    print("|---|---|---|---|")
    for label in AB_PASSES:
        o, t = cpu[("other", label)], cpu[("this", label)]
        print(f"| {label} | {med(o) * per_m:.3f} ({min(o) * per_m:.3f}-{max(o) * per_m:.3f}) | "
              f"{med(t) * per_m:.3f} ({min(t) * per_m:.3f}-{max(t) * per_m:.3f}) | {med(t) / med(o):.2f} |")
    return 0


def med(xs):
    return statistics.median(xs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=None, help=f"sessions to fill (default {DEFAULT_ENTRIES:,})")
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="fill + sweep rounds (median reported)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_ENTRIES:,} entries, 1 round, no BCC comparison")
    ap.add_argument("--no-bcc", action="store_true", help="skip the BCC API comparison (slow: seconds per million)")
    ap.add_argument("--slots-only", action="store_true",
                    help="only the slot-array experiment (bench/sweep_slots.py) and its packet A/B")
    ap.add_argument("--ab", type=Path, metavar="TREE",
                    help="instead: this tree's kernel sweep against TREE's bpf/lib/sweep.h, interleaved")
    args = ap.parse_args(argv)
    n = args.entries or (QUICK_ENTRIES if args.quick else DEFAULT_ENTRIES)
    rounds = 1 if args.quick and args.rounds == DEFAULT_ROUNDS else args.rounds
    if n < 2 or rounds < 1:
        print("bench/sweep.py: --entries must be >= 2 and --rounds >= 1", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench/sweep.py loads BPF programs: run it as root", file=sys.stderr)
        return 1
    check_headers()
    size = max(1 << 20, 1 << (n - 1).bit_length())
    fp = FastPath(DatapathConfig(flow_table_size=size))
    closers = []   # what this run created beside the build, closed before it
    try:
        if fp.sweep is None:
            print(f"bench/sweep.py: the kernel sweep did not load: {fp.sweep_error}", file=sys.stderr)
            return 1
        if args.ab is not None:
            return ab(fp, n, rounds, args.ab)
        if args.slots_only:
            res = slot_experiment(fp, n, rounds)
            if res is None:
                return 1
            print(f"kernel   {os.uname().release}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end")
            print(f"entries  {n:,}, rounds {rounds} (median; min-max)")
            print_slot_experiment(n, *res)
            return 0
        methods = [m for m in METHODS if m != "auto"]
        sweepers = {m: Sweeper.for_fastpath(fp, method=m) for m in methods}
        ring = WrittenRing(fp, (n + 1) // 2)
        closers.append(ring.close)
        written_prog = ring.program()
        closers.append(written_prog.close)
        written = Sweeper.for_fastpath(fp, method="kernel", kernel=written_prog)
        half_written = []
        half = {m: [] for m in methods}
        full = {m: [] for m in methods}
        fills, floors, array_floors = [], [], []
        want = (n + 1) // 2
        for _ in range(rounds):
            keys, vals = synthetic(fp, n, session_clock_ns())
            fill(fp, keys, vals)
            st = written.sweep()
            bad = ring.check_and_empty(written_prog.runs[written_prog.runs.Key(0)], st.expired_flows)
            if st.method != "kernel" or st.expired_flows != want or st.scanned_flows != n or bad:
                print(f"bench/sweep.py: the records-written sweep deleted {st.expired_flows} of "
                      f"{st.scanned_flows} (expected {want} of {n}): {bad or ''}", file=sys.stderr)
                return 1
            half_written.append(st)
            for m in methods:
                keys, vals = synthetic(fp, n, session_clock_ns())
                fills.append(fill(fp, keys, vals))
                st = sweepers[m].sweep()
                if (st.method != m or st.expired_flows != want or st.scanned_flows != n
                        or st.entries_after != n - want):
                    print(f"bench/sweep.py: {st.method} sweep deleted {st.expired_flows} of {st.scanned_flows} "
                          f"(expected {want} of {n}), entries after {st.entries_after}", file=sys.stderr)
                    return 1
                half[m].append(st)
                keys, vals = synthetic(fp, n, session_clock_ns(), expired=False)
                fill(fp, keys, vals)
                st2 = sweepers[m].sweep()
                if st2.method != m or st2.expired_flows or st2.scanned_flows != n:
                    print(f"bench/sweep.py: {st2.method} sweep of fresh entries deleted {st2.expired_flows} of "
                          f"{st2.scanned_flows}", file=sys.stderr)
                    return 1
                full[m].append(st2)
            floors.append(time_floor(fp))   # the table is full and fresh here
            if floors[-1][2] != n:
                print(f"bench/sweep.py: the empty walk visited {floors[-1][2]} of {n}", file=sys.stderr)
                return 1
            array_floors.append(time_array_floor(fp, n))
            if array_floors[-1][2] != n:
                print(f"bench/sweep.py: the array walk visited {array_floors[-1][2]} of {n}", file=sys.stderr)
                return 1

        per_m = 1e6 / n
        print("microseg session sweeper: seconds per pass, Sweeper.sweep() on ms_flows, both methods")
        print(f"kernel   {os.uname().release}, {os.cpu_count()} CPUs")
        print(f"entries  {n:,} (table size {size:,}), rounds {rounds} (median; min-max)")
        print(f"fill     BPF_MAP_UPDATE_BATCH: {med(fills):.3f} s ({med(fills) * per_m:.3f} s per million)")
        print()
        print("| method | pass | entries scanned | deleted | wall s | wall s / M | CPU s / M "
              "| wall ratio to Calico | CPU ratio to Calico |")
        print("|---|---|---|---|---|---|---|---|---|")

        def row(method, label, scanned, deleted, w, c):
            rng = f" ({min(w):.3f}-{max(w):.3f})" if len(w) > 1 else ""
            print(f"| {method} | {label} | {scanned:,} | {deleted:,} | {med(w):.3f}{rng} | "
                  f"{med(w) * per_m:.3f} | {med(c) * per_m:.3f} | {med(w) * per_m / CALICO_WALL_PER_M:.2f} | "
                  f"{med(c) * per_m / CALICO_CPU_PER_M:.2f} |")

        for m in methods:
            for label, sts in (("half expired", half[m]), ("nothing expired", full[m])):
                row(m, label, sts[0].scanned, sts[0].expired_flows,
                    [s.seconds for s in sts], [s.cpu_seconds for s in sts])
                if m == "kernel" and label == "half expired":
                    sts = half_written
                    row(m, "half expired, records written", sts[0].scanned, sts[0].expired_flows,
                        [s.seconds for s in sts], [s.cpu_seconds for s in sts])
        row("kernel floor", "empty callback walk", n, 0, [f[0] for f in floors], [f[1] for f in floors])
        row("kernel floor", "memory-order walk (an ARRAY of as many entries)", n, 0,
            [f[0] for f in array_floors], [f[1] for f in array_floors])
        print(f"| Calico (published, 4M entries) | | 4,000,000 | | 0.8 | {CALICO_WALL_PER_M:.3f} | "
              f"{CALICO_CPU_PER_M:.3f} | 1.00 | 1.00 |")
        k, b = med([s.seconds for s in half["kernel"]]), med([s.seconds for s in half["batch"]])
        print()
        print(f"kernel / batch, half expired: {k / b:.2f} of the batch sweep's wall time")
        res = slot_experiment(fp, n, rounds)
        if res is None:
            return 1
        print_slot_experiment(n, *res)

        if not args.quick and not args.no_bcc:
            keys, vals = synthetic(fp, n, session_clock_ns())
            fill(fp, keys, vals)
            tn, cnt_n = time_numpy_read(fp, expiry_dtype(fp.table(FLOWS4).Leaf))
            tb, cnt_b = time_bcc_read(fp)
            bw, bc, bd = bcc_sweep(fp, session_clock_ns())
            print()
            print("reading / sweeping the same table another way (one run each):")
            print("| method | entries | wall s | wall s / M |")
            print("|---|---|---|---|")
            print(f"| read: bpfsys LOOKUP_BATCH into numpy, 64k per call | {cnt_n:,} | {tn:.3f} | {tn * per_m:.3f} |")
            print(f"| read: BCC items_lookup_batch (ctypes pairs) | {cnt_b:,} | {tb:.3f} | {tb * per_m:.3f} |")
            print(f"| sweep: BCC items_lookup_batch + Python filter + items_delete_batch | {bd:,} deleted | "
                  f"{bw:.3f} | {bw * per_m:.3f} (CPU {bc * per_m:.3f}) |")
    finally:
        for close in reversed(closers):
            close()
        fp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
