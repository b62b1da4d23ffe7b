"""Kernel memory of the maps the fast path sizes from configuration, measured
on this kernel, next to the seed review's estimate.

For each map (key and value sizes, type and flags taken from the compiled
bpf/lib/maps.h, never typed in here) a map of N entries is created with
BPF_MAP_CREATE, filled with N distinct keys through BPF_MAP_UPDATE_BATCH, and
its memory read from two independent sources:

* ``memlock``: the kernel's own accounting, ``memlock:`` in
  /proc/self/fdinfo/<fd>, which on 6.x is the map type's ``map_mem_usage``
  callback (what ``microseg status`` shows).
* the system: /proc/meminfo before and after create + fill (with
  /proc/sys/vm/stat_refresh written first, so the per-CPU counter deltas are
  folded in). ``system`` is the change of SUnreclaim + VmallocUsed +
  Percpu, where BPF maps live: a preallocated hash or LRU and an array are
  vmalloc areas; elements allocated on insert (BPF_F_NO_PREALLOC hashes,
  LPM tries) are unreclaimable slab; per-CPU values are percpu pages. A
  ring buffer's pages are in none of them (they are allocated page by page
  and vmap'ed): for a ring, ``system`` is the drop of MemAvailable.
  ``MemAvailable``, shown for every map, is everything, but also every
  other process on the machine, and pages taken from the per-CPU free lists
  do not show in it, so it is the noisy one (meaningful at tens of MiB).
  The buffers the fill uses are allocated before the first reading.

Each (map, N) is measured ``--repeats`` times (median, with min and max of
the system deltas), the map closed and its memory seen back between
repeats (maps are freed by a deferred kernel work item, seconds later). The
machine's other processes move the same counters: a sample during which
any other BPF map was created or closed (the set of map ids changed) is
taken again, up to MAX_RETRIES times, and the output counts them.
Over the N values a line is fitted, bytes = fixed + per_entry * N, per
source. The estimate is the seed review's (section 9, and
datapath/pressure.py review_estimate, as `microseg status` prints it):
max_entries x (key + value + 64), values x possible CPUs for per-CPU maps;
none for a ring buffer.

Two more measurements:

* ring buffer records: a small program (BPF_PROG_TEST_RUN, never attached)
  writes records of sizeof(struct ms_insp_rec) + payload bytes, as the fast
  path does, into an empty ring of the configured default size until it is
  full: the bytes each record takes (the producer position over the
  records written) and the records the ring holds.
* an LRU filled from one CPU: this process pinned to one CPU inserts twice
  max_entries distinct keys into the half-open table's LRU, with and
  without BPF_F_NO_COMMON_LRU, and counts the entries kept.

Every map and program is closed at the end; nothing is attached anywhere.
This is a measurement: nothing is asserted about the numbers. It exits 1
(with a WARNING line) only when a map did not measure what it should: a
hash that holds fewer entries than were written, or no memlock in fdinfo.

    .venv/bin/python bench/memory.py [--sizes N,N,N] [--ring-sizes B,B,B] [--repeats N] [--only NAME] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import mmap
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from datapath import bpfsys  # noqa: E402
from datapath.bpfsys import (BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC, BPF_MAP_TYPE_HASH,  # noqa: E402
                             BPF_MAP_TYPE_LRU_HASH)
from datapath.config import DatapathConfig, ring_pages  # noqa: E402
from datapath.pressure import REVIEW_OVERHEAD_BYTES, possible_cpus, review_estimate  # noqa: E402
from datapath.sessions import FLOW_TABLES  # noqa: E402

DEFAULT_SIZES = (1 << 16, 1 << 18, 1 << 20)
DEFAULT_RING_SIZES = (1 << 22, 1 << 24, 1 << 26)        # 4, 16, 64 MiB
QUICK_SIZES = (1 << 14, 1 << 16, 1 << 18)
QUICK_RING_SIZES = (1 << 20, 1 << 22, 1 << 24)
DEFAULT_REPEATS = 5
QUICK_REPEATS = 3
FILL_BATCH = 65_536
# Payload of the records bench/slowpath.py's first table drains (its HTTP
# request, 90 bytes), so its records/s converts to ring bytes with a row here.
SLOWPATH_BENCH_PAYLOAD = 90
# How long a closed map may take to give its memory back before we go on
# anyway (and say so). The kernel frees maps from a work item after an RCU
# grace period: about 3 s for a 1M-entry hash on this VM.
FREE_TIMEOUT_S = 20.0
# A ring buffer's pages are seen (if at all) only through MemAvailable:
# wait this long for them, then go on.
RING_FREE_WAIT_S = 3.0
PAGE = mmap.PAGESIZE

# Map types and flags by their uapi names (numbers: datapath/bpfsys.py).
TYPE_NAMES = {getattr(bpfsys, f"BPF_MAP_TYPE_{n}"): n for n in (
    "HASH", "ARRAY", "PERCPU_HASH", "PERCPU_ARRAY", "LRU_HASH", "LRU_PERCPU_HASH", "LPM_TRIE", "RINGBUF")}
FLAG_NAMES = {BPF_F_NO_PREALLOC: "NO_PREALLOC", BPF_F_NO_COMMON_LRU: "NO_COMMON_LRU"}
HASH_TYPES = {BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH}
PERCPU_TYPES = bpfsys.PERCPU_MAP_TYPES


# -- the layouts, from the compiled maps.h -------------------------------------

@dataclass
class Layout:
    name: str
    key: type | None
    leaf: type | None     # one CPU's value (BCC's Leaf of a per-CPU map is an array of them)
    type: int
    flags: int

    @property
    def key_size(self) -> int:
        return ctypes.sizeof(self.key) if self.key is not None else 0

    @property
    def value_size(self) -> int:
        return ctypes.sizeof(self.leaf) if self.leaf is not None else 0


def compiled_maps(names: set[str]) -> dict[str, Layout]:
    """Key / Leaf types of the maps ``names`` of bpf/lib/maps.h, with the
    type and flags the kernel reports for each: maps.h compiled alone by
    BCC, as datapath.sessions.layouts() does (which keeps only the maps user
    space reads, and not their type and flags), at the same small sizes; the
    session layout is checked against layouts()'. No program is loaded;
    BCC's maps are closed before this returns."""
    from datapath.compile import compile_text
    from datapath.sessions import _LAYOUT_SIZES, layouts
    from datapath.source import LIB_DIR, inline_includes

    cfg = DatapathConfig(**_LAYOUT_SIZES, inspect_ring_bytes=1 << 16, verdict_table_size=1024)
    bpf = compile_text(inline_includes(LIB_DIR / "maps.h"), cfg.cflags(), what="BPF compile of maps.h",
                       error=SystemExit)
    try:
        out = {}
        for name in names:
            t = bpf[name.encode()]
            info = bpfsys.map_info_by_fd(t.map_fd)
            key = getattr(t, "Key", None)
            leaf = getattr(t, "Leaf", None)
            if info.type in PERCPU_TYPES and leaf is not None:
                leaf = leaf._type_
            out[name] = Layout(name, key, leaf, info.type, info.flags)
    finally:
        bpf.cleanup()
    # The session layout is the one datapath.sessions.layouts() gives user space.
    for name in FLOW_TABLES:
        k, v = layouts()[name]
        if (ctypes.sizeof(k), ctypes.sizeof(v)) != (out[name].key_size, out[name].value_size):
            raise SystemExit(f"{name} layout differs from datapath.sessions.layouts()")
    return out


# -- what is measured ----------------------------------------------------------

@dataclass
class Case:
    label: str            # what the operator knows it as
    source: str           # the map in maps.h its layout comes from
    setting: str          # the configuration that sizes it
    type: int = 0         # 0: the map's own type and flags
    flags: int | None = None
    keys: str = "hash"    # hash: distinct ids; lpm: random IPv4-mapped /128; index: 0..N-1; none
    ring: bool = False
    default: int | None = None   # its max_entries under the default configuration (session maps)


def cases() -> list[Case]:
    d = DatapathConfig()
    return [
        Case("ms_flows4", "ms_flows4", "flow_table_size", default=d.flow_table_size),
        Case("ms_flows6", "ms_flows6", "flow6_table_size", default=d.flow6_size),
        Case("ms_flows4, BPF_F_NO_PREALLOC (not used; for comparison)", "ms_flows4", "-",
             flags=BPF_F_NO_PREALLOC),
        Case("ms_halfopen4", "ms_halfopen4", "halfopen_table_size", default=d.halfopen_table_size),
        Case("ms_halfopen6", "ms_halfopen6", "halfopen6_table_size", default=d.halfopen6_size),
        Case("ms_halfopen4, common LRU (not used; for comparison)", "ms_halfopen4", "-", flags=0),
        Case("ms_verdicts", "ms_verdicts", "verdict_table_size"),
        Case("ms_frags", "ms_frags", "frag_table_size"),
        Case("ms_syn_dst", "ms_syn_dst", "syn_dst_table_size"),
        Case("ms_drop_limit", "ms_drop_limit", "drop_log_table_size"),
        Case("ms_pol_grp (policy prefixes, LPM)", "ms_pol_grp_t", "policy: prefixes", keys="lpm"),
        Case("ms_pol_gh (policy prefixes, hash)", "ms_pol_gh_t", "policy: prefixes"),
        Case("ms_pol_rule (policy rule entries)", "ms_pol_rule_t", "policy: rules"),
        Case("ms_pol_exact (policy overrides)", "ms_pol_exact_t", "policy: overrides"),
        Case("PERCPU_ARRAY of struct ms_counter", "ms_counters", "- (fixed size)", keys="index"),
        Case("ms_insp_ring", "ms_insp_ring", "inspect_ring_bytes", keys="none", ring=True),
    ]


# -- /proc/meminfo and the machine's other BPF maps ------------------------------

MEMINFO_FIELDS = ("MemAvailable", "SUnreclaim", "VmallocUsed", "Percpu")


def meminfo() -> dict[str, int]:
    with contextlib.suppress(OSError):
        with open("/proc/sys/vm/stat_refresh", "w") as f:
            f.write("1")
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in MEMINFO_FIELDS:
                out[k] = int(v.split()[0]) * 1024
    return out


def kernel_bytes(m: dict[str, int]) -> int:
    """Unreclaimable slab + vmalloc + percpu pages: where a BPF map's
    memory is, except a ring buffer's pages (see the module text)."""
    return m["SUnreclaim"] + m["VmallocUsed"] + m["Percpu"]


BPF_MAP_GET_NEXT_ID = 12


class _NextIdAttr(ctypes.Structure):
    _fields_ = [("start_id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


def map_ids() -> frozenset[int]:
    """Ids of every BPF map on the machine. Another process creating or
    closing a map while we measure would be in our system deltas, so a
    sample during which this set changed is taken again."""
    ids, start = [], 0
    while True:
        attr = _NextIdAttr(start, 0, 0)
        try:
            bpfsys.sys_bpf(BPF_MAP_GET_NEXT_ID, attr)
        except bpfsys.BpfError:
            return frozenset(ids)
        ids.append(attr.next_id)
        start = attr.next_id


# -- one measurement -------------------------------------------------------------

@dataclass
class Sample:
    memlock: int
    kernel: int          # slab + vmalloc + percpu delta
    available: int       # MemAvailable drop
    max_entries: int
    filled: int | None
    estimate: int | None
    retries: int = 0     # samples dropped because another process changed its BPF maps
    disturbed: bool = False   # ... and this one too, after MAX_RETRIES
    freed_late: bool = False

    def system(self, ring: bool) -> int:
        return self.available if ring else self.kernel


@dataclass
class Buffers:
    keys: np.ndarray | None
    values: np.ndarray | None


def lay_type(c: Case, lay: Layout) -> int:
    return c.type or lay.type


def lay_flags(c: Case, lay: Layout) -> int:
    return lay.flags if c.flags is None else c.flags


def value_stride(c: Case, lay: Layout, ncpus: int) -> int:
    """Bytes of one value in a user buffer: per-CPU maps take one 8-byte
    aligned copy per possible CPU."""
    v = lay.value_size
    if lay_type(c, lay) in PERCPU_TYPES:
        return (v + 7) // 8 * 8 * ncpus
    return v


def estimate_per_entry(c: Case, lay: Layout, ncpus: int) -> int | None:
    """The review's key + value + 64, as review_estimate counts a value."""
    if c.ring:
        return None
    return lay.key_size + value_stride(c, lay, ncpus) + REVIEW_OVERHEAD_BYTES


def make_buffers(c: Case, lay: Layout, n: int, ncpus: int) -> Buffers:
    if c.ring:
        return Buffers(None, None)
    ks = lay.key_size
    keys = np.zeros((n, ks), np.uint8)
    if c.keys == "index":
        keys[:, :4] = np.arange(n, dtype="<u4").view(np.uint8).reshape(n, 4)
    elif c.keys == "lpm":
        # struct ms_lpm_key: prefixlen, then IPv4-mapped addresses (::ffff:a.b.c.d/128),
        # distinct and random, as host entries of a policy's groups would be.
        rng = np.random.default_rng(7)
        addrs = rng.choice(1 << 32, size=n, replace=False).astype(">u4")
        keys[:, :4] = np.full(n, 128, dtype="<u4").view(np.uint8).reshape(n, 4)
        keys[:, 14:16] = 0xFF
        keys[:, 16:20] = addrs.view(np.uint8).reshape(n, 4)
    else:
        ids = np.arange(1, n + 1, dtype="<u8")
        if ks >= 16:     # spread over the key, as 5-tuples differ in addresses and ports
            keys[:, ks - 8:ks] = ids.view(np.uint8).reshape(n, 8)
        keys[:, :8] = (ids * np.uint64(0x9E3779B97F4A7C15)).view(np.uint8).reshape(n, 8)
    values = np.full((n, value_stride(c, lay, ncpus)), 0x5A, np.uint8)   # touched before the first reading
    return Buffers(keys, values)


def fill(fd: int, b: Buffers, n: int) -> None:
    done = 0
    while done < n:
        cnt = min(FILL_BATCH, n - done)
        try:
            done += bpfsys.map_update_batch(fd, b.keys[done:].ctypes.data, b.values[done:].ctypes.data, cnt)
        except bpfsys.BpfError as e:
            if e.errno not in (22, 95, 524):   # EINVAL / EOPNOTSUPP / ENOTSUPP: no batch for this type
                raise
            for i in range(done, n):
                bpfsys.map_update(fd, b.keys[i].tobytes(), b.values[i].tobytes())
            done = n


def count_entries(fd: int, b: Buffers, n: int) -> int:
    """Entries in a hash map, read with BPF_MAP_LOOKUP_BATCH into the fill
    buffers (after the memory was read)."""
    cur_in = ctypes.create_string_buffer(bpfsys.BATCH_CURSOR_BYTES)
    cur_out = ctypes.create_string_buffer(bpfsys.BATCH_CURSOR_BYTES)
    total, first = 0, True
    while total < n:
        got, done = bpfsys.map_lookup_batch(fd, b.keys[total:].ctypes.data, b.values[total:].ctypes.data,
                                            min(FILL_BATCH, n - total), 0 if first else ctypes.addressof(cur_in),
                                            ctypes.addressof(cur_out))
        first = False
        total += got
        if done:
            break
        ctypes.memmove(cur_in, cur_out, bpfsys.BATCH_CURSOR_BYTES)
    return total


def wait_freed(after: dict[str, int], delta: int, ring: bool) -> bool:
    """Wait until a closed map's memory is back: the counters have dropped
    from ``after`` (read before the close) by most of what the map added
    (the kernel frees a map later, from a work item). Other processes move
    the same counters, so this gives up after FREE_TIMEOUT_S (False)."""
    if delta < (1 << 20):
        time.sleep(0.2)
        return True
    if ring:
        back = lambda now: now["MemAvailable"] - after["MemAvailable"] >= 0.9 * delta  # noqa: E731
    else:
        back = lambda now: kernel_bytes(after) - kernel_bytes(now) >= 0.9 * delta  # noqa: E731
    deadline = time.monotonic() + (RING_FREE_WAIT_S if ring else FREE_TIMEOUT_S)
    while time.monotonic() < deadline:
        if back(meminfo()):
            return True
        time.sleep(0.1)
    # MemAvailable often does not show a ring's pages coming back (they go to
    # the per-CPU free lists first): not worth a warning.
    return ring


# Samples taken again at most when another process created or closed a BPF
# map meanwhile; the last one is kept (and counted as disturbed) after that.
MAX_RETRIES = 5


def measure(c: Case, lay: Layout, n: int, ncpus: int) -> Sample:
    mtype, flags = lay_type(c, lay), lay_flags(c, lay)
    b = make_buffers(c, lay, n, ncpus)
    ks, vs = (0, 0) if c.ring else (lay.key_size, lay.value_size)
    for attempt in range(MAX_RETRIES + 1):
        ids0 = map_ids()
        before = meminfo()
        fd = bpfsys.create_map(mtype, ks, vs, n, flags, name="ms_bench_mem")
        try:
            if not c.ring:
                fill(fd, b, n)
            after = meminfo()
            info = bpfsys.map_info_by_fd(fd)
            quiet = map_ids() - {info.id} == ids0
            filled = count_entries(fd, b, n) if mtype in HASH_TYPES else (None if c.ring else n)
        finally:
            os.close(fd)
        s = Sample(memlock=info.memlock or 0, kernel=kernel_bytes(after) - kernel_bytes(before),
                   available=before["MemAvailable"] - after["MemAvailable"], max_entries=info.max_entries,
                   filled=filled, estimate=review_estimate(info, ncpus), retries=attempt,
                   disturbed=not quiet)
        s.freed_late = not wait_freed(after, s.system(c.ring), c.ring)
        if quiet:
            break
    return s


@dataclass
class Result:
    case: Case
    lay: Layout
    n: int
    samples: list[Sample] = field(default_factory=list)

    def med(self, attr: str) -> float:
        return statistics.median(self.values(attr))

    def values(self, attr: str) -> list[int]:
        if attr == "system":
            return [s.system(self.case.ring) for s in self.samples]
        return [getattr(s, attr) for s in self.samples]

    def spread(self, attr: str) -> str:
        v = self.values(attr)
        return f"{mib(statistics.median(v))} ({mib(min(v))}..{mib(max(v))})"


# -- ring buffer records ---------------------------------------------------------

RING_PROG = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
struct rb_buf { u8 b[RB_BUF]; };
BPF_RINGBUF_OUTPUT(rb, RB_PAGES);
BPF_PERCPU_ARRAY(rb_scratch, struct rb_buf, 1);
BPF_ARRAY(rb_len, u32, 1);
BPF_ARRAY(rb_res, u64, 2);     /* [0] records written, [1] refused (ring full) */
int rb_fill(struct __sk_buff *skb)
{
    u32 z = 0;
    struct rb_buf *b = rb_scratch.lookup(&z);
    u32 *lp = rb_len.lookup(&z);
    if (!b || !lp)
        return TC_ACT_OK;
    u32 len = ((*lp - 1) & (RB_BUF - 1)) + 1;   /* bounded as inspect.h bounds a record */
    u32 i = rb.ringbuf_output(b, len, 0) == 0 ? 0 : 1;
    u64 *c = rb_res.lookup(&i);
    if (c)
        __sync_fetch_and_add(c, 1);
    return TC_ACT_OK;
}
"""


@dataclass
class RingRow:
    payload: int
    record: int           # bytes handed to bpf_ringbuf_output
    taken: float          # bytes of ring each record took
    held: int             # records an empty ring held


def ring_records(hdr_size: int, slice_max: int, ring_bytes: int, payloads: list[int]) -> list[RingRow]:
    """Records of ``hdr_size`` + payload bytes written into an empty ring
    of ``ring_bytes`` until it refuses one, for each payload size."""
    from bcc import BPF

    buf = 1 << (hdr_size + slice_max - 1).bit_length()
    bpf = BPF(text=RING_PROG.encode(), cflags=[f"-DRB_BUF={buf}", f"-DRB_PAGES={ring_pages(ring_bytes)}"])
    rows = []
    try:
        prog = bpf.load_func(b"rb_fill", BPF.SCHED_CLS).fd
        rb_fd = bpf[b"rb"].map_fd
        ln, res = bpf[b"rb_len"], bpf[b"rb_res"]
        cons = mmap.mmap(rb_fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        prod = mmap.mmap(rb_fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE)
        try:
            for p in payloads:
                rec = hdr_size + p
                pos0 = int.from_bytes(prod[:8], "little")
                cons[:8] = pos0.to_bytes(8, "little")     # consume everything: the ring is empty
                ln[ctypes.c_int(0)] = ctypes.c_uint32(rec)
                res[ctypes.c_int(0)] = ctypes.c_uint64(0)
                res[ctypes.c_int(1)] = ctypes.c_uint64(0)
                # more runs than the ring can hold records: the last ones are refused
                bpfsys.prog_test_run(prog, bytes(64), repeat=ring_bytes // 8 + 16)
                written = res[ctypes.c_int(0)].value
                pos1 = int.from_bytes(prod[:8], "little")
                rows.append(RingRow(p, rec, (pos1 - pos0) / written if written else 0.0, written))
        finally:
            cons.close()
            prod.close()
    finally:
        bpf.cleanup()
    return rows


# -- an LRU filled from one CPU -------------------------------------------------

def lru_from_one_cpu(lay: Layout, n: int, flags: int) -> tuple[int, int, int]:
    """(max_entries, keys inserted, entries kept) for an LRU of ``lay``'s
    layout filled with 2n distinct keys by this process on one CPU."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old)})
    try:
        b = make_buffers(Case("", lay.name, ""), lay, 2 * n, 1)
        fd = bpfsys.create_map(BPF_MAP_TYPE_LRU_HASH, lay.key_size, lay.value_size, n, flags,
                               name="ms_bench_lru")
        try:
            fill(fd, b, 2 * n)
            kept = count_entries(fd, b, 2 * n)
            max_entries = bpfsys.map_info_by_fd(fd).max_entries
        finally:
            os.close(fd)
    finally:
        os.sched_setaffinity(0, old)
    return max_entries, 2 * n, kept


# -- output ---------------------------------------------------------------------

def fit(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """Least squares: (per entry, fixed)."""
    if len(xs) < 2:
        return ys[0] / xs[0], 0.0
    slope, icpt = np.polyfit(np.array(xs, float), np.array(ys, float), 1)
    return float(slope), float(icpt)


def mib(x: float) -> str:
    return f"{x / (1 << 20):,.2f}"


def type_text(mtype: int, flags: int) -> str:
    names = [n for bit, n in FLAG_NAMES.items() if flags & bit]
    return TYPE_NAMES.get(mtype, str(mtype)) + (", " + ", ".join(names) if names else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", help="entries per map, comma-separated (default 65536,262144,1048576)")
    ap.add_argument("--ring-sizes", help="ring buffer bytes, comma-separated powers of two "
                                         "(default 4 MiB, 16 MiB, 64 MiB)")
    ap.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    ap.add_argument("--only", help="measure only the map of this label, or those whose label contains it "
                                   "(tables 3 and 4 run when it names ms_insp_ring / ms_halfopen)")
    ap.add_argument("--quick", action="store_true", help="sizes 2^14..2^18, rings 1..16 MiB, 3 repeats")
    args = ap.parse_args(argv)
    sizes, rings = DEFAULT_SIZES, DEFAULT_RING_SIZES
    if args.quick:
        sizes, rings, args.repeats = QUICK_SIZES, QUICK_RING_SIZES, QUICK_REPEATS
    if args.sizes:
        sizes = tuple(int(x) for x in args.sizes.split(","))
    if args.ring_sizes:
        rings = tuple(int(x) for x in args.ring_sizes.split(","))
    if os.geteuid() != 0:
        print("bench/memory.py creates BPF maps: run it as root", file=sys.stderr)
        return 1

    ncpus = possible_cpus()
    maps = compiled_maps({c.source for c in cases()} | {*FLOW_TABLES, "ms_insp_scratch"})
    todo = cases()
    if args.only:
        exact = [c for c in todo if c.label == args.only]
        todo = exact or [c for c in todo if args.only in c.label]
    print("microseg map memory, measured")
    print()
    print(f"kernel {os.uname().release}; {ncpus} possible CPUs; page {PAGE} bytes; {args.repeats} repeats: "
          f"medians (min..max)")
    print()
    print("Sources. memlock: /proc/self/fdinfo, the kernel's own accounting (map_mem_usage). "
          "system: the change of SUnreclaim + VmallocUsed + Percpu in /proc/meminfo across create + fill "
          "(for a ring buffer, whose pages none of them counts: the drop of MemAvailable). "
          "MemAvailable: its drop across the same, shown for every map (every process on the machine moves "
          "it, and pages on the per-CPU free lists hide small changes). "
          f"estimate: the seed review's max_entries x (key + value + {REVIEW_OVERHEAD_BYTES}), "
          f"per-CPU values x {ncpus} CPUs; none for a ring buffer, whose N is its size in bytes.")
    print()

    results: list[Result] = []
    for c in todo:
        lay = maps[c.source]
        for n in (rings if c.ring else sizes):
            r = Result(c, lay, n)
            t0 = time.monotonic()
            for _ in range(args.repeats):
                r.samples.append(measure(c, lay, n, ncpus))
            print(f"  {c.label}, N {n:,}: {time.monotonic() - t0:.0f} s, "
                  f"{sum(s.retries for s in r.samples)} retries, {sum(s.freed_late for s in r.samples)} late",
                  file=sys.stderr, flush=True)
            results.append(r)
    retries = sum(s.retries for r in results for s in r.samples)
    late = sum(s.freed_late for r in results for s in r.samples)
    disturbed = sum(s.disturbed for r in results for s in r.samples)

    print("1. per map and size (MiB)")
    print()
    print("| map | kernel type, flags | key B | value B | max_entries | entries after fill | memlock "
          "| system | MemAvailable | estimate | memlock / estimate | system / estimate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c, lay = r.case, r.lay
        s0 = r.samples[0]
        est = s0.estimate
        ml, sy = r.med("memlock"), r.med("system")
        ratios = ("-", "-") if est is None else (f"{ml / est:.2f}", f"{sy / est:.2f}")
        ks = "-" if c.ring else lay.key_size
        vs = "-" if c.ring else lay.value_size
        filled = "-" if s0.filled is None else f"{int(r.med('filled')):,}"
        print(f"| {c.label} | {type_text(lay_type(c, lay), lay_flags(c, lay))} | {ks} | {vs} | {s0.max_entries:,} "
              f"| {filled} | {mib(ml)} | {r.spread('system')} | {r.spread('available')} "
              f"| {'-' if est is None else mib(est)} | {ratios[0]} | {ratios[1]} |")
    print()

    print("2. bytes per entry (per ring byte for the ring) and fixed bytes, a line fitted over the sizes "
          "(bytes = fixed + per entry x N)")
    print()
    print("| map | sized by | memlock B/entry | memlock fixed KiB | system B/entry | system fixed KiB "
          "| MemAvailable B/entry | estimate B/entry | memlock / estimate | system / estimate |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    by_case: dict[str, list[Result]] = {}
    for r in results:
        by_case.setdefault(r.case.label, []).append(r)
    for label, rs in by_case.items():
        c, lay = rs[0].case, rs[0].lay
        xs = [r.n for r in rs]
        ml, mlf = fit(xs, [r.med("memlock") for r in rs])
        sy, syf = fit(xs, [r.med("system") for r in rs])
        av, _ = fit(xs, [r.med("available") for r in rs])
        est = estimate_per_entry(c, lay, ncpus)
        ratios = ("-", "-") if est is None else (f"{ml / est:.2f}", f"{sy / est:.2f}")
        print(f"| {label} | {c.setting} | {ml:,.2f} | {mlf / 1024:,.1f} | {sy:,.2f} | {syf / 1024:,.1f} "
              f"| {av:,.2f} | {'-' if est is None else est} | {ratios[0]} | {ratios[1]} |")
    defaults = []
    for label, rs in by_case.items():
        c = rs[0].case
        if c.default is not None and len(rs) > 1:
            ml, mlf = fit([r.n for r in rs], [r.med("memlock") for r in rs])
            defaults.append((label, c.default, mlf + ml * c.default))
    if defaults:
        print()
        print("session maps at the default configuration (memlock, from the fitted line): "
              + ", ".join(f"{label} {n:,} entries {mib(b)} MiB" for label, n, b in defaults)
              + f"; together {mib(sum(b for _, _, b in defaults))} MiB")
    for r in results:
        if lay_type(r.case, r.lay) in PERCPU_TYPES and r is [x for x in results if x.case is r.case][-1]:
            print()
            print(f"{r.case.label}: {ncpus} possible CPUs, a value of {r.lay.value_size} B "
                  f"({value_stride(r.case, r.lay, 1)} B aligned) per CPU.")
    print()
    if retries:
        print(f"{retries} samples were taken again: another process created or closed a BPF map meanwhile.")
    if disturbed:
        print(f"note: {disturbed} samples kept after {MAX_RETRIES} retries with another process's BPF maps "
              f"changing meanwhile: their system deltas include that (the median is robust to a few).")
    if late:
        print(f"note: {late} times the memory of a closed map was not seen back within "
              f"{FREE_TIMEOUT_S:.0f} s (other processes move the same counters); the next sample may be off.")
    # A map that does not hold what was written measured something else.
    problems = [f"{r.case.label} at {r.n:,}: {r.med('filled'):,.0f} entries after writing {r.n:,}"
                for r in results
                if lay_type(r.case, r.lay) == BPF_MAP_TYPE_HASH and r.med("filled") != r.n]
    problems += [f"{r.case.label} at {r.n:,}: no memlock in fdinfo" for r in results
                 if any(s.memlock == 0 for s in r.samples)]
    for p in problems:
        print(f"WARNING: {p}")
    if retries or late or disturbed or problems:
        print()

    if not args.only or "ring" in args.only:
        insp = maps["ms_insp_scratch"].leaf
        hdr_size = ctypes.sizeof(dict(insp._fields_)["h"])
        slice_max = insp.data.size
        ring_bytes = DatapathConfig().inspect_ring_bytes
        payloads = sorted({64, SLOWPATH_BENCH_PAYLOAD, 512, 1448, slice_max})
        rows = ring_records(hdr_size, slice_max, ring_bytes, payloads)
        print(f"3. ring buffer records: struct ms_insp_rec is {hdr_size} B, a payload up to {slice_max} B "
              f"(MS_INSP_SLICE); an empty ring of {ring_bytes >> 20} MiB (the default inspect_ring_bytes) "
              f"filled through BPF_PROG_TEST_RUN until it refuses a record")
        print()
        print("| payload B | record B (header + payload) | ring bytes per record | records the ring holds |")
        print("|---|---|---|---|")
        for rr in rows:
            print(f"| {rr.payload:,} | {rr.record:,} | {rr.taken:,.1f} | {rr.held:,} |")
        print()

    if not args.only or "halfopen" in args.only:
        lay = maps[FLOW_TABLES[2]]   # ms_halfopen4
        n = DatapathConfig().halfopen_table_size
        print(f"4. the half-open table's LRU ({n:,} entries, the default halfopen_table_size) filled from "
              f"one CPU with twice as many new keys")
        print()
        print("| LRU | max_entries | keys inserted on one CPU | entries kept | kept / max_entries |")
        print("|---|---|---|---|---|")
        for flags, name in ((lay.flags, "BPF_F_NO_COMMON_LRU (ms_halfopen4)"),
                            (lay.flags & ~BPF_F_NO_COMMON_LRU, "common LRU")):
            me, ins, kept = lru_from_one_cpu(lay, n, flags)
            print(f"| {name} | {me:,} | {ins:,} | {kept:,} | {kept / me:.2f} |")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
