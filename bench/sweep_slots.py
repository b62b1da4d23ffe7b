"""The "slot array" sweep, measured (issue 18 item 4): an experiment for
bench/sweep.py, not the datapath's design (bpf/lib/sweep.h is).

The sweep of bpf/lib/sweep.h walks the session hash table with
bpf_for_each_map_elem: bucket by bucket, each element wherever its insert
took it from the free list, so a cache miss per entry (~0.23 s per million
on this VM, against 0.012 for the same walk over an ARRAY). The design
measured here keeps, beside the hash table, an ARRAY of slots, one per
session: {the session's key, its deadline}, in memory order. The hash
value would hold the slot's index; a packet would write its slot's deadline
only when the coarse clock moved into another grain (SLOT_REFRESH_GRAIN_SHIFT)
since the session's last packet. One program walks the slots with an
open-coded loop and, for each slot past its deadline only, looks the session
up in the hash table to confirm (the slot's deadline may lag by a grain),
then deletes it and writes its end record as sweep.h does, or moves the
slot's deadline when the entry is live, or frees the slot when the entry
is gone.

Three loops, the same per-slot code (sl_visit):

* ``bpf_loop``: the helper with a callback, one call for every slot (its
  limit is 2^23 iterations, BPF_MAX_LOOPS); the verifier inlines the helper
  into a plain loop with a direct call per slot (no indirect call, no
  retpoline), as it does for any bpf_loop whose callback is a constant.
* ``bpf_iter_num``: the open-coded iterator kfuncs (bpf_iter_num_new /
  _next / _destroy, kernel 6.4+; libbpf's bpf_for). BCC 0.26 cannot call a
  kfunc: the code calls three marker "helpers" (SL_KF_*) that the loader
  below turns into kfunc calls (BPF_PSEUDO_KFUNC_CALL, the function's id in
  the kernel's BTF, /sys/kernel/btf/vmlinux).
* ``bpf_iter_num, batched``: the same loop, the expired sessions ended
  SL_BATCH at a time after their lookups were all issued (sl_sweep_batch).

The packet's side (``packet_ab``): three SCHED_CLS programs on a table of
their own, run by BPF_PROG_TEST_RUN in interleaved rounds: the hash lookup
with the last-seen write (what an established packet does today), the
same plus the conditional slot refresh, and the same plus an unconditional
refresh (every packet writes its slot: the worst case, a session whose
packets come further apart than the grain).
"""
from __future__ import annotations

import ctypes
import os
import struct
import time
from pathlib import Path

import numpy as np

from datapath import bpfsys
from datapath.compile import compile_text
from datapath.config import DatapathConfig
from datapath.loader import _SWEEP_COMPILE_SIZES, LinkError, _decode, _encode, _prog_load, link_with_callback
from datapath.source import LIB_DIR, inline_includes

# Marker "fds" (replaced by real map fds when linking) and marker helper
# ids (replaced by kfunc calls); apart from sweep.h's 0x4d5300xx.
SL_MAP_SLOTS = 0x4D530101
SL_MAP_FLOWS = 0x4D530102
SL_MAP_EVENTS = 0x4D530103
SL_MAP_FREE = 0x4D530104
SL_KF_NEW = 0x4D5301F1
SL_KF_NEXT = 0x4D5301F2
SL_KF_DESTROY = 0x4D5301F3
KFUNCS = {SL_KF_NEW: "bpf_iter_num_new", SL_KF_NEXT: "bpf_iter_num_next", SL_KF_DESTROY: "bpf_iter_num_destroy"}
_BPF_PSEUDO_MAP_FD = 1
_BPF_PSEUDO_KFUNC_CALL = 2
_LD_IMM64 = 0x18
_CALL = 0x85
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

# A packet writes its slot when the coarse clock (ns) is in another grain
# of 2^30 ns (~1.07 s) than the session's last packet: at most one slot
# write per session per grain, and a slot's deadline lags the session's by
# less than a grain (the sweep confirms in the hash table before deleting).
# The sweep runs every few seconds; a second of lag is inside its period.
SLOT_REFRESH_GRAIN_SHIFT = 30

# Due slots ended together by the batched loop (sl_sweep_batch): a power
# of two (the index is masked). Enough lookups to fill the CPU's
# out-of-order window with their misses: 16 measured the same as 8, and 32
# is past the verifier's 1,000,000 instructions (the batch is unrolled).
SL_BATCH = 8

# Test-run packet: the programs read nothing of it (a minimal Ethernet frame).
_PACKET = bytes(64)

SLOT_TEXT = r"""
/* One slot per session: its key and its deadline (0: a free slot). */
struct sl_slot {
    struct ms_flow_key4 key;
    __u64 deadline_ns;
};
BPF_ARRAY(sl_slots, struct sl_slot, SL_SLOTS);
/* Freed slots' indices, for the inserts to take (a stack: sl_run.freed is
 * its top in this experiment; the design's allocator is in the report). */
BPF_ARRAY(sl_free, __u32, SL_SLOTS);

struct sl_run {
    __u64 now_ns;       /* in */
    __u64 scanned;      /* out: slots visited */
    __u64 expired;      /* out: sessions deleted */
    __u64 refreshed;    /* out: slots past their deadline whose session was live (deadline moved) */
    __u64 gone;         /* out: slots whose session was no longer in the table (freed) */
    __u64 events_lost;  /* out: end records the ring refused */
    __u64 deferred;     /* out: always 0 (no deferral in this experiment) */
    __u64 freed;        /* out: slots freed (the free stack's top) */
    __u64 mode;         /* in: SL_MODE_* (what is done with an expired session) */
};
/* What the sweep does with a session it found expired: the whole job, or
 * a part of it, to tell the parts' costs apart (bench/sweep.py's
 * breakdown rows). */
#define SL_MODE_END 0          /* end record, delete, free the slot */
#define SL_MODE_LOOKUP 1       /* nothing: counted in `expired`, left in the table */
#define SL_MODE_DELETE 2       /* delete and free the slot, no record */
BPF_ARRAY(sl_runs, struct sl_run, 1);

struct sl_walk {
    __u64 now;
    struct sl_run *run;
    __u64 ring_room;
    __u32 workers;
    __u32 mode;
    __u64 timeout[MS_SWEEP_SLOTS];
};

static void *(*sl_rb_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)BPF_FUNC_ringbuf_reserve;
static void (*sl_rb_submit)(void *data, __u64 flags) = (void *)BPF_FUNC_ringbuf_submit;
static void (*sl_rb_discard)(void *data, __u64 flags) = (void *)BPF_FUNC_ringbuf_discard;
static __u64 (*sl_rb_query)(void *ringbuf, __u64 flags) = (void *)BPF_FUNC_ringbuf_query;
static long (*sl_loop)(__u32 nr, void *cb, void *ctx, __u64 flags) = (void *)BPF_FUNC_loop;
/* kfunc markers (see the Python module) */
static int (*sl_iter_new)(void *it, int start, int end) = (void *)SL_KF_NEW;
static int *(*sl_iter_next)(void *it) = (void *)SL_KF_NEXT;
static void (*sl_iter_destroy)(void *it) = (void *)SL_KF_DESTROY;

static __always_inline void sl_free_slot(struct sl_walk *w, struct sl_slot *s, __u32 i)
{
    s->deadline_ns = 0;
    __u32 top = w->run->freed;
    __u32 *f = bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, SL_MAP_FREE), &top);
    if (f) {
        *f = i;
        w->run->freed = top + 1;
    }
}

/* One slot: skip it unless past its deadline; then confirm in the hash
 * table with the entry's own last-seen time (sweep.h's test), and end the
 * session (record, delete) or move the slot's deadline or free the slot. */
static __always_inline long sl_visit(struct sl_walk *w, __u32 i)
{
    struct sl_slot *s = bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, SL_MAP_SLOTS), &i);
    if (!s)
        return 1;
    __u64 dl = s->deadline_ns;
    if (!dl || (__s64)(w->now - dl) <= 0)
        return 0;                            /* free, or not due */
    void *flows = (void *)bpf_pseudo_fd(1, SL_MAP_FLOWS);
    struct ms_flow *f = bpf_map_lookup_elem(flows, &s->key);
    if (!f) {
        w->run->gone++;                      /* ended elsewhere (lazy expiry, close) */
        sl_free_slot(w, s, i);
        return 0;
    }
    __u32 st = ms_flow_state(f);
    if (st > MS_CT_STATE_COUNT)
        st = MS_CT_STATE_COUNT;
    __u64 tmo = w->timeout[st & (MS_SWEEP_SLOTS - 1)];
    __u64 seen = f->last_seen_ns;
    if ((__s64)(w->now - seen) <= (__s64)tmo) {
        s->deadline_ns = seen + tmo;         /* the slot lagged: live */
        w->run->refreshed++;
        return 0;
    }
    if (w->mode == SL_MODE_LOOKUP) {
        w->run->expired++;
        return 0;
    }
    struct ms_flow_event *ev = 0;
    if (w->mode == SL_MODE_END && !(f->flags & MS_FLOW_LOGGED)) {
        void *ring = (void *)bpf_pseudo_fd(1, SL_MAP_EVENTS);
        if (sl_rb_query(ring, BPF_RB_AVAIL_DATA) < w->ring_room)
            ev = sl_rb_reserve(ring, sizeof(struct ms_flow_event), 0);
        if (ev) {
            ms_key_of4(&s->key, &ev->key);
            ms_flow_event_fill_keyed(ev, &ev->key, f, FLOW_END_SWEPT, w->workers);
        } else {
            w->run->events_lost++;
        }
    }
    if (bpf_map_delete_elem(flows, &s->key) == 0) {
        w->run->expired++;
        if (ev)
            sl_rb_submit(ev, 0);
    } else if (ev) {
        sl_rb_discard(ev, 0);
    }
    sl_free_slot(w, s, i);
    return 0;
}

static __always_inline int sl_begin(struct sl_walk *w)
{
    __u32 z = 0;
    struct sl_run *run = sl_runs.lookup(&z);
    if (!run || !run->now_ns)
        return 1;
    w->now = run->now_ns;
    w->run = run;
    w->mode = run->mode;
    run->scanned = run->expired = run->refreshed = run->gone = 0;
    run->events_lost = run->deferred = run->freed = 0;
    struct ms_config *cfg = ms_cfg();
    w->workers = cfg ? cfg->workers : 0;
    __u64 ring_size = sl_rb_query((void *)bpf_pseudo_fd(1, SL_MAP_EVENTS), BPF_RB_RING_SIZE);
    w->ring_room = ring_size > MS_SWEEP_RECORD_BYTES ? ring_size - MS_SWEEP_RECORD_BYTES : 0;
#pragma unroll
    for (int i = 0; i < MS_SWEEP_SLOTS; i++)
        w->timeout[i] = ms_timeout(i);
    return 0;
}

static noinline __attribute__((section(".bpf.fn.sl_sweep_loop")))
long sl_loop_entry(__u64 i, void *ctx)
{
    return sl_visit(ctx, i);
}

int sl_sweep_loop(void *ctx)
{
    struct sl_walk w = {};
    if (sl_begin(&w))
        return 1;
    long n = sl_loop(SL_SLOTS, sl_loop_entry, &w, 0);
    w.run->scanned = n > 0 ? n : 0;
    return 0;
}

int sl_sweep_iter(void *ctx)
{
    struct sl_walk w = {};
    if (sl_begin(&w))
        return 1;
    __u64 it;
    int *i;
    __u64 n = 0;
    sl_iter_new(&it, 0, SL_SLOTS);
    while ((i = sl_iter_next(&it))) {
        if (sl_visit(&w, *i))
            break;
        n++;
    }
    sl_iter_destroy(&it);
    w.run->scanned = n;
    return 0;
}

/* The same walk, the expired sessions ended in batches: a due slot's
 * confirming lookup is issued when the walk meets it (its result unused:
 * only its cache misses matter), and every SL_BATCH due slots are then
 * visited in full (sl_visit: the lookup again, now from the cache, the
 * record and the delete). The delete's bucket lock is a locked
 * instruction, which waits for every load before it: one delete per slot
 * leaves each lookup's misses (bucket, then element) alone in flight; the
 * batch lets SL_BATCH lookups' misses overlap before the first lock. */
int sl_sweep_batch(void *ctx)
{
    struct sl_walk w = {};
    if (sl_begin(&w))
        return 1;
    void *slots = (void *)bpf_pseudo_fd(1, SL_MAP_SLOTS);
    void *flows = (void *)bpf_pseudo_fd(1, SL_MAP_FLOWS);
    __u32 due[SL_BATCH];
    __u32 nd = 0;
    __u64 it;
    int *i;
    __u64 n = 0;
    sl_iter_new(&it, 0, SL_SLOTS);
    while ((i = sl_iter_next(&it))) {
        __u32 k = *i;
        struct sl_slot *s = bpf_map_lookup_elem(slots, &k);
        if (!s)
            break;
        n++;
        __u64 dl = s->deadline_ns;
        if (!dl || (__s64)(w.now - dl) <= 0)
            continue;
        bpf_map_lookup_elem(flows, &s->key);       /* its misses, now */
        due[nd & (SL_BATCH - 1)] = k;
        nd++;
        if (nd >= SL_BATCH) {
#pragma unroll
            for (int j = 0; j < SL_BATCH; j++)
                sl_visit(&w, due[j]);
            nd = 0;
        }
    }
    sl_iter_destroy(&it);
#pragma unroll
    for (int j = 0; j < SL_BATCH; j++)
        if (j < nd)
            sl_visit(&w, due[j]);
    w.run->scanned = n;
    return 0;
}

/* ---- the established packet's side (packet_ab) ---- */

/* ms_flow's size, the slot index where the packet reads it: beside
 * last_seen_ns, in the line the packet reads anyway. */
struct pk_flow {
    __u64 first_seen_ns;
    __u64 last_seen_ns;
    __u32 state_etc;
    __u32 slot;
    __u8 rest[PK_REST];   /* sizeof(struct ms_flow) - 24, from user space (BCC cannot describe the expression) */
};
_Static_assert(sizeof(struct pk_flow) == sizeof(struct ms_flow), "pk_flow: ms_flow's size");
BPF_HASH(pk_flows, struct ms_flow_key4, struct pk_flow, SL_SLOTS);
struct pk_cfg {
    __u32 rotate;      /* 1: each run takes the next session (all of them in turn); 0: always the first */
    __u32 next;
    __u64 timeout_ns;
    __u64 grain_shift;  /* pk_refresh's grain: SLOT_REFRESH_GRAIN_SHIFT, or 63 (never crossed) */
};
BPF_ARRAY(pk_cfgs, struct pk_cfg, 1);

/* the key bench/sweep.py's synthetic() gives session i */
static __always_inline struct pk_flow *pk_find(struct pk_cfg **cp)
{
    __u32 z = 0;
    struct pk_cfg *c = pk_cfgs.lookup(&z);
    if (!c)
        return 0;
    *cp = c;
    __u32 i = 0;
    if (c->rotate) {
        i = c->next;
        c->next = i + 1 >= SL_SLOTS ? 0 : i + 1;
    }
    struct ms_flow_key4 k = {};
    k.addr_lo = bpf_htonl(0x0a000000 | (i & 0xffffff));
    k.addr_hi = bpf_htonl(0x0ac80001);
    k.port_lo = bpf_htons(40000 + (i >> 24));
    k.port_hi = bpf_htons(443);
    k.proto = 6;
    return pk_flows.lookup(&k);
}

int pk_lookup(struct __sk_buff *skb)
{
    struct pk_cfg *c;
    struct pk_flow *f = pk_find(&c);
    if (!f)
        return 2;
    f->last_seen_ns = bpf_ktime_get_coarse_ns();
    return 0;
}

int pk_refresh(struct __sk_buff *skb)
{
    struct pk_cfg *c;
    struct pk_flow *f = pk_find(&c);
    if (!f)
        return 2;
    __u64 now = bpf_ktime_get_coarse_ns();
    if ((now ^ f->last_seen_ns) >> (c->grain_shift & 63)) {
        __u32 si = f->slot;
        struct sl_slot *s = sl_slots.lookup(&si);
        if (s)
            s->deadline_ns = now + c->timeout_ns;
    }
    f->last_seen_ns = now;
    return 0;
}

int pk_refresh_always(struct __sk_buff *skb)
{
    struct pk_cfg *c;
    struct pk_flow *f = pk_find(&c);
    if (!f)
        return 2;
    __u64 now = bpf_ktime_get_coarse_ns();
    __u32 si = f->slot;
    struct sl_slot *s = sl_slots.lookup(&si);
    if (s)
        s->deadline_ns = now + c->timeout_ns;
    f->last_seen_ns = now;
    return 0;
}
"""


def _vmlinux_func_ids(names: set[str], path: Path = VMLINUX_BTF) -> dict[str, int]:
    """BTF type ids of the FUNCs ``names`` in the kernel's BTF."""
    blob = path.read_bytes()
    magic, _ver, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from("<HBBIIIII", blob)
    if magic != 0xEB9F:
        raise LinkError(f"{path}: not BTF")
    types = hdr_len + type_off
    strings = hdr_len + str_off
    # bytes after each kind's 12-byte header: fixed, or per member (vlen)
    fixed = {1: 4, 3: 12, 14: 4, 17: 4}
    per_member = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
    found: dict[str, int] = {}
    off, tid = types, 1
    while off < types + type_len:
        name_off, info, _ = struct.unpack_from("<III", blob, off)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind == 12:   # FUNC
            end = blob.index(b"\0", strings + name_off)
            name = blob[strings + name_off:end].decode()
            if name in names:
                found[name] = tid
        off += 12 + fixed.get(kind, 0) + per_member.get(kind, 0) * vlen
        tid += 1
    missing = names - set(found)
    if missing:
        raise LinkError(f"{path}: no kfunc {', '.join(sorted(missing))} (bpf_iter_num needs kernel 6.4+)")
    return found


def _load_with_kfuncs(bpf, main: str, fd_map: dict[int, int], flags: int) -> int:
    """Load BCC function ``main`` (no callback) as a SYSCALL program after
    turning its marker map fds into ``fd_map``'s and its marker helper calls
    into kfunc calls."""
    from bcc import lib

    start = lib.bpf_function_start(bpf.module, main.encode())
    size = lib.bpf_function_size(bpf.module, main.encode())
    if not start or not size:
        raise LinkError(f"the compiled program has no function {main}")
    prog = _decode(ctypes.string_at(start, size))
    ids = _vmlinux_func_ids(set(KFUNCS.values()))
    for ins in prog:
        if ins[0] == _CALL and ins[1] >> 4 == 0 and ins[3] in KFUNCS:
            ins[1] = _BPF_PSEUDO_KFUNC_CALL << 4
            ins[2] = 0
            ins[3] = ids[KFUNCS[ins[3]]]
        elif ins[0] == _LD_IMM64 and ins[1] >> 4 == _BPF_PSEUDO_MAP_FD and ins[3] in fd_map:
            ins[3] = fd_map[ins[3]]
    return _prog_load(_encode(prog), bpfsys.BPF_PROG_TYPE_SYSCALL, main, 0, [], flags)


# Seed of slot_order(): the same shuffle every run.
SLOT_ORDER_SEED = 18

def slot_order(n: int) -> np.ndarray:
    """Which session each slot holds: a fixed shuffle. A live table's slots
    and hash elements are each taken from their own free list as sessions
    come and go, so slot order and element order are unrelated; slots in
    session order would meet a fresh table's elements in their allocation
    order (neighbours in memory) and measure a walk of the hash table's
    memory in order, which a real table does not have."""
    return np.random.default_rng(SLOT_ORDER_SEED).permutation(n).astype(np.uint32)


class SlotSweep:
    """The slot array and both sweeps of it, for ``n`` sessions of the IPv4
    session table ``flows_fd`` (a build's ms_flows4), writing end records to
    the ring ``ring_fd``. ``fill`` writes the slots of synthetic() sessions."""

    LOOPS = ("bpf_loop", "bpf_iter_num", "bpf_iter_num, batched")
    # SL_MODE_*: the whole job; the lookup that confirms only; the delete without the record
    MODES = {"end": 0, "lookup": 1, "delete": 2}

    def __init__(self, n: int, flows_fd: int, ring_fd: int, build_fds: dict[str, int], flow_size: int):
        # flow_size: sizeof(struct ms_flow), pk_flow's size
        cflags = DatapathConfig(**_SWEEP_COMPILE_SIZES).cflags() + [
            f"-DSL_SLOTS={n}", f"-DSL_BATCH={SL_BATCH}", f"-DSLOT_REFRESH_GRAIN_SHIFT={SLOT_REFRESH_GRAIN_SHIFT}", f"-DPK_REST={flow_size - 24}"]
        defs = "".join(f"#define {k} {v:#x}\n" for k, v in (
            ("SL_MAP_SLOTS", SL_MAP_SLOTS), ("SL_MAP_FLOWS", SL_MAP_FLOWS), ("SL_MAP_EVENTS", SL_MAP_EVENTS),
            ("SL_MAP_FREE", SL_MAP_FREE), ("SL_KF_NEW", SL_KF_NEW), ("SL_KF_NEXT", SL_KF_NEXT),
            ("SL_KF_DESTROY", SL_KF_DESTROY)))
        # sweep.h for MS_SWEEP_SLOTS and MS_SWEEP_RECORD_BYTES (one definition each)
        text = inline_includes(LIB_DIR / "sweep.h") + defs + SLOT_TEXT
        self.n = n
        self.bpf = compile_text(text, cflags, what="BPF compile (slot sweep)")
        self.fds: dict[str, int] = {}
        try:
            b = self.bpf
            self.slots, self.free, self.runs = b[b"sl_slots"], b[b"sl_free"], b[b"sl_runs"]
            self.pk_flows, self.pk_cfgs = b[b"pk_flows"], b[b"pk_cfgs"]
            # the build's maps in place of this module's copies of maps.h's
            own = {name: b[name.encode()].map_fd for name in build_fds}
            fd_map = {own[name]: fd for name, fd in build_fds.items()}
            fd_map.update({SL_MAP_SLOTS: self.slots.map_fd, SL_MAP_FLOWS: flows_fd, SL_MAP_EVENTS: ring_fd,
                           SL_MAP_FREE: self.free.map_fd})
            allowed = set(fd_map.values()) | {self.runs.map_fd}
            self.fds["bpf_loop"] = link_with_callback(
                b, "sl_sweep_loop", "sl_loop_entry", bpfsys.BPF_PROG_TYPE_SYSCALL, fd_map, allowed,
                bpfsys.BPF_F_SLEEPABLE, markers=frozenset((SL_MAP_SLOTS, SL_MAP_FLOWS, SL_MAP_EVENTS, SL_MAP_FREE)))
            self.fds["bpf_iter_num"] = _load_with_kfuncs(b, "sl_sweep_iter", fd_map, bpfsys.BPF_F_SLEEPABLE)
            self.fds["bpf_iter_num, batched"] = _load_with_kfuncs(b, "sl_sweep_batch", fd_map,
                                                                  bpfsys.BPF_F_SLEEPABLE)
        except Exception:
            self.close()
            raise
        self.slot_dtype = None

    def fill(self, keys: np.ndarray, deadlines: np.ndarray, order: np.ndarray) -> None:
        """Slot j: session order[j]'s key and deadline. ``order``: a
        permutation (slot_order()): a slot's index says nothing of where the
        allocator put its session's hash element."""
        n = len(keys)
        vdt = np.dtype([("key", keys.dtype), ("deadline_ns", np.uint64)], align=True)
        if vdt.itemsize != ctypes.sizeof(self.slots.Leaf):
            raise LinkError(f"slot of {vdt.itemsize} bytes here, {ctypes.sizeof(self.slots.Leaf)} in BPF")
        vals = np.zeros(n, vdt)
        vals["key"] = keys[order]
        vals["deadline_ns"] = deadlines[order]
        idx = np.arange(n, dtype=np.uint32)
        step = 65_536
        for s in range(0, n, step):
            bpfsys.map_update_batch(self.slots.map_fd, idx[s:s + step].ctypes.data, vals[s:s + step].ctypes.data,
                                    len(idx[s:s + step]))

    def run(self, loop: str, now_ns: int, mode: str = "end"):
        """One sweep of every slot with ``loop``, doing ``mode`` (MODES) with
        each expired session; (CPU s, the run's record)."""
        from datapath.loader import syscall_test_run

        key = self.runs.Key(0)
        v = self.runs.Leaf()
        v.now_ns = now_ns
        v.mode = self.MODES[mode]
        self.runs[key] = v
        c0 = time.process_time()
        ret = syscall_test_run(self.fds[loop])
        cpu = time.process_time() - c0
        if ret != 0:
            raise RuntimeError(f"slot sweep ({loop}) returned {ret}")
        return cpu, self.runs[key]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None


# --- the established packet: lookup, with and without the slot refresh ----

PACKET_PROGS = ("pk_lookup", "pk_refresh", "pk_refresh_always")
# packet_ab's cases: name -> (each run the next session (1) or the same one
# (0), pk_refresh's grain shift). The same session's packets come ~30 ns
# apart: the grain moves once per 2^30 ns, its refresh is nearly never
# taken. Sessions in turn come back after a whole pass over the table
# (about a third of a second here), so with the real grain a part of the
# packets, depending on the moment, would refresh: the grain is made
# infinite there (63) to measure the test alone, and the column "every
# packet" prices a refresh.
NEVER_CROSSED = 63
PACKET_CASES = {"one session": (0, SLOT_REFRESH_GRAIN_SHIFT),
                "all sessions in turn (grain never crossed)": (1, NEVER_CROSSED)}


def packet_ab(ss: SlotSweep, keys: np.ndarray, order: np.ndarray, now_ns: int, timeout_ns: int, rounds: int,
              repeat: int) -> dict[tuple[str, str], list[float]]:
    """ns per run of each PACKET_PROGS program, ``rounds`` interleaved rounds
    (order shuffled each round), for two cases: ``one session`` (the same
    entry every run: its lines stay in the cache) and ``all sessions in
    turn`` (each run the next of the table's: a cache miss per lookup, as
    in a busy box's established traffic; PACKET_CASES). ``keys``: synthetic()'s, filled
    into pk_flows, session order[j] with slot j, last seen ``now_ns``."""
    import random

    from bcc import BPF

    n = len(keys)
    fd = ss.pk_flows.map_fd
    vsize = ctypes.sizeof(ss.pk_flows.Leaf)
    vdt = np.dtype([("first_seen_ns", np.uint64), ("last_seen_ns", np.uint64), ("state_etc", np.uint32),
                    ("slot", np.uint32), ("rest", np.uint8, (vsize - 24,))])
    vals = np.zeros(n, vdt)
    vals["first_seen_ns"] = now_ns
    vals["last_seen_ns"] = now_ns
    vals["slot"][order] = np.arange(n, dtype=np.uint32)
    step = 65_536
    for s in range(0, n, step):
        bpfsys.map_update_batch(fd, keys[s:s + step].ctypes.data, vals[s:s + step].ctypes.data, len(keys[s:s + step]))
    fds = {p: ss.bpf.load_func(p.encode(), BPF.SCHED_CLS).fd for p in PACKET_PROGS}
    out: dict[tuple[str, str], list[float]] = {}
    for case, (rotate, shift) in PACKET_CASES.items():
        for _ in range(rounds):
            order = list(PACKET_PROGS)
            random.shuffle(order)
            for p in order:
                c = ss.pk_cfgs.Leaf()
                c.rotate, c.next, c.timeout_ns, c.grain_shift = rotate, 0, timeout_ns, shift
                ss.pk_cfgs[ss.pk_cfgs.Key(0)] = c
                r = bpfsys.prog_test_run(fds[p], _PACKET, repeat=repeat)
                if r.retval != 0:
                    raise RuntimeError(f"{p}: session not found (retval {r.retval})")
                out.setdefault((case, p), []).append(r.duration_ns)
    return out
