/* SPDX-License-Identifier: GPL-2.0 */
/* The session sweep in the kernel: one program run (BPF_PROG_TEST_RUN) walks
 * the session tables (ms_flows4, ms_flows6, ms_halfopen4, ms_halfopen6) with bpf_for_each_map_elem (kernel 5.13+) and
 * deletes, from inside the walk's callback, every entry idle past its
 * state's timeout. It replaces the user-space batch sweep (read a batch,
 * test it, delete it: two system calls and a copy of every entry) with one
 * system call and no copy.
 *
 * Expired means what ms_ct_expired() means: the signed age
 * (now - last_seen_ns) is over ms_timeout(state). `now` is the session
 * clock (ms_now(): CLOCK_MONOTONIC_COARSE) read by user space just before
 * the run and handed in through ms_sweep_runs: a SYSCALL program may not
 * call bpf_ktime_get_coarse_ns, and the vDSO reads the same clock.
 * ms_timeout() is read here, before the walk, for every state and for the
 * out-of-range fallback, into the walk's context: the callback cannot use
 * a map of its own (below).
 *
 * Accounting: what the walk deletes from ms_flows4 / ms_flows6 is added, atomically,
 * to ms_pressure_user.deleted, the sweeper's count (the kernel's lazy
 * expiry counts its own deletes in ms_pressure), and what it deletes from
 * ms_halfopen4 / ms_halfopen6 to ms_pressure_user.halfopen_deleted (so that LRU evictions
 * can still be told apart: inserted - removed - swept - present). A delete
 * that loses the
 * race with a packet's lazy expiry gets -ENOENT and is not counted here:
 * each entry is counted once, by whoever removed it. The alert re-arm
 * (ms_pressure_user.gen) stays in user space (datapath/sweeper.py).
 *
 * BCC 0.26 cannot link this program by itself: it loads one function per
 * section and never resolves a reference to a subprogram (the callback
 * address stays 0), and a non-static function of more than one argument is
 * rewritten as a kprobe. So:
 *   - the callback is static, not inlined, and placed in ms_sweep's own
 *     section, after it; datapath/loader.py finds it there, turns the
 *     reference into a BPF_PSEUDO_FUNC load, supplies the BTF func_info the
 *     verifier requires for a callback, and loads the program itself;
 *   - BCC patches map fds only inside the registered function, so the
 *     callback touches no map but the one it is handed: everything else
 *     it needs comes through its context;
 *   - the session tables are named by marker "fds" (MS_SWEEP_MAP_*)
 *     that the loader replaces with the real map fds: the tables of the
 *     build this program was compiled with, or those of an attached build
 *     opened by id (the other maps are remapped by name the same way).
 * The program is of type BPF_PROG_TYPE_SYSCALL (kernel 5.14+; 6.x loads
 * one only as sleepable): its test run keeps only migration disabled, so a
 * preemptible kernel may schedule during a long walk, where a SCHED_CLS
 * test run disables preemption for all of it. The walk itself costs the
 * same under both (measured: ~0.24 s per million entries, empty callback).
 */
#ifndef MS_SWEEP_H
#define MS_SWEEP_H

#include "maps.h"
#include "conntrack.h"

/* Marker map "fds", replaced by the loader (datapath/loader.py SWEEP_MARKERS). */
#define MS_SWEEP_MAP_FLOWS4    0x4d530001
#define MS_SWEEP_MAP_HALFOPEN4 0x4d530002
#define MS_SWEEP_MAP_FLOWS6    0x4d530004
#define MS_SWEEP_MAP_HALFOPEN6 0x4d530005
/* ms_events, for the callback's session-end records: a marker is the one
 * way the callback can name a map (the loader patches markers in the
 * callback too). */
#define MS_SWEEP_MAP_EVENTS   0x4d530003

/* One run: the input and what it did. Read and written by user space
 * (datapath/sweeper.py) around each run; sweeps are serialised there. */
struct ms_sweep_run {
    __u64 now_ns;             /* in: the session clock's now (ns); 0 refuses the run */
    __u64 scanned_flows;      /* out: entries the walk visited (both families) */
    __u64 expired_flows;      /* out: entries it deleted */
    __u64 scanned_halfopen;
    __u64 expired_halfopen;
    __u64 events_lost;        /* out: end records of deleted sessions the full ring refused */
    /* in: 1 keeps an expired session whose end record the full ring
     * refused, for a later sweep (the daemon, which reads the ring, asks
     * for it unless the table is under pressure); 0 deletes it and counts
     * its record in events_lost (no reader, or room for new sessions
     * comes first). */
    __u64 defer;
    __u64 deferred;           /* out: expired sessions so kept */
};
BPF_ARRAY(ms_sweep_runs, struct ms_sweep_run, 1);

/* Timeouts by state, with room for ms_timeout()'s fallback: a power of two
 * over MS_CT_STATE_COUNT, so the callback's index is bounded by a mask (a
 * compare alone the compiler may move after the address arithmetic, and
 * the verifier then refuses the read). */
#define MS_SWEEP_SLOTS 16
_Static_assert(MS_CT_STATE_COUNT < MS_SWEEP_SLOTS, "MS_SWEEP_SLOTS must exceed the state count");

/* The walk's context, on the program's stack. The count of deletes lives
 * in the run's map value, not here: the verifier walks a callback as a
 * loop until its states repeat, and a counter it knows the value of (0,
 * 1, 2, ...) never repeats ("sequence of 8193 jumps is too complex"),
 * where a map value's contents are unknown to it. */
struct ms_sweep_walk {
    __u64 now;
    __u64 *deleted;                     /* &run->expired_flows or &run->expired_halfopen */
    __u64 *lost;                        /* &run->events_lost */
    __u64 *deferred;                    /* &run->deferred */
    __u32 workers;                      /* ms_config.workers: end records name the worker */
    __u32 defer;                        /* run->defer */
    __u32 is4;                          /* walking an IPv4 table: its keys are struct ms_flow_key4 */
    /* ms_events holds this many bytes or more: the reserve of one more end
     * record fails (the producer may not run the ring's size ahead of the
     * consumer: avail + record >= size). Tested against the ring's
     * positions (bpf_ringbuf_query, no lock) before reserving, so that a
     * full ring (a mass expiry the reader cannot keep up with, or no
     * reader) costs each expired session two loads, not the reserve's
     * locked refusal. The positions may move between the test and the
     * reserve as they may inside the reserve: either way the record is
     * refused or written as if at one moment, and a refused record is
     * handled as before (deferred or counted lost). */
    __u64 ring_room;
    /* The smallest of timeout[0..MS_CT_STATE_COUNT], signed as the age
     * test takes it: an entry no older than this is live whatever its
     * state, so the callback returns before reading the state byte and
     * the timeout table (struct ms_flow keeps the state beside
     * last_seen_ns; the entry's own line is what the walk pays for). */
    __s64 min_timeout;
    /* ms_timeout(i), ns; slot MS_CT_STATE_COUNT on: its fallback for a
     * state out of range (the array lookup fails past the last state) */
    __u64 timeout[MS_SWEEP_SLOTS];
};

static long (*ms_for_each_map_elem)(void *map, void *callback, void *ctx, __u64 flags) =
    (void *)BPF_FUNC_for_each_map_elem;
/* The ring buffer helpers called directly: BCC rewrites ms_events.ringbuf_*
 * only inside the function it registers, not in the callback. */
static void *(*ms_rb_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)BPF_FUNC_ringbuf_reserve;
static void (*ms_rb_submit)(void *data, __u64 flags) = (void *)BPF_FUNC_ringbuf_submit;
static void (*ms_rb_discard)(void *data, __u64 flags) = (void *)BPF_FUNC_ringbuf_discard;
static __u64 (*ms_rb_query)(void *ringbuf, __u64 flags) = (void *)BPF_FUNC_ringbuf_query;
/* The ring bytes one end record takes: the record and the ring's header,
 * rounded up to 8 (kernel/bpf/ringbuf.c __bpf_ringbuf_reserve). */
_Static_assert(__builtin_offsetof(struct ms_flow_event, key) % 8 == 0 && sizeof(struct ms_flow_key) % 8 == 0,
               "the callback writes the record's key in 8-byte words");
#define MS_SWEEP_RECORD_BYTES ((sizeof(struct ms_flow_event) + BPF_RINGBUF_HDR_SZ + 7) & ~7UL)

/* Called for every entry of the table walked: delete it when expired.
 * Returns 0: go on. Not inlined, in ms_sweep's section (see above). */
static noinline __attribute__((section(".bpf.fn.ms_sweep")))
long ms_sweep_entry(void *map, void *key, void *value, void *ctx)
{
    struct ms_sweep_walk *w = ctx;
    struct ms_flow *f = value;
    __s64 age = (__s64)(w->now - f->last_seen_ns);
    if (age <= w->min_timeout)
        return 0;                         /* live in every state (min_timeout above) */
    __u32 st = ms_flow_state(f);
    if (st > MS_CT_STATE_COUNT)
        st = MS_CT_STATE_COUNT;           /* the fallback's slot */
    __u64 tmo = w->timeout[st & (MS_SWEEP_SLOTS - 1)];
    /* ms_ct_expired(), with ms_timeout(st) read before the walk */
    if (age <= (__s64)tmo)
        return 0;
#ifdef MS_NO_RINGBUF
    if (bpf_map_delete_elem(map, key) == 0) {
        (*w->deleted)++;
        if (!(f->flags & MS_FLOW_LOGGED))
            (*w->lost)++;                 /* no ring buffer: counted only */
    }
#else
    /* Its end record (unless a TCP close sent it), filled before the
     * delete and sent only if this delete was the one that removed it (a
     * packet's lazy expiry racing the walk sends its own). */
    struct ms_flow_event *ev = 0;
    if (!(f->flags & MS_FLOW_LOGGED)) {
        void *ring = (void *)bpf_pseudo_fd(1, MS_SWEEP_MAP_EVENTS);
        if (ms_rb_query(ring, BPF_RB_AVAIL_DATA) < w->ring_room)
            ev = ms_rb_reserve(ring, sizeof(struct ms_flow_event), 0);
        if (ev) {
            /* the record names it by its canonical key, written in place
             * in 8-byte words (the record's key and a hash map's keys are
             * 8-aligned; a memcpy of the 2-aligned struct copies it byte
             * by byte) */
            if (w->is4) {
                ms_key_of4(key, &ev->key);
            } else {
                __u64 *d = (__u64 *)&ev->key;
                const __u64 *s = key;
#pragma unroll
                for (int i = 0; i < sizeof(struct ms_flow_key) / 8; i++)
                    d[i] = s[i];
            }
            ms_flow_event_fill_keyed(ev, &ev->key, f, FLOW_END_SWEPT, w->workers);
        } else if (w->defer) {
            (*w->deferred)++;
            return 0;                     /* kept: its record goes with a later sweep */
        } else {
            (*w->lost)++;
        }
    }
    if (bpf_map_delete_elem(map, key) == 0) {
        (*w->deleted)++;
        if (ev)
            ms_rb_submit(ev, 0);
    } else if (ev) {
        ms_rb_discard(ev, 0);
    }
#endif
    return 0;
}

int ms_sweep(void *ctx)
{
    __u32 z = 0;
    struct ms_sweep_run *run = ms_sweep_runs.lookup(&z);
    struct ms_pressure_user *pu = ms_pressure_user.lookup(&z);
    if (!run || !pu)
        return 1;
    if (!run->now_ns)
        return 2;
    struct ms_sweep_walk w = {};
    w.now = run->now_ns;
    run->events_lost = 0;
    w.lost = &run->events_lost;
    run->deferred = 0;
    w.deferred = &run->deferred;
    w.defer = run->defer ? 1 : 0;
    struct ms_config *cfg = ms_cfg();
    w.workers = cfg ? cfg->workers : 0;
#ifndef MS_NO_RINGBUF
    __u64 ring_size = ms_rb_query((void *)bpf_pseudo_fd(1, MS_SWEEP_MAP_EVENTS), BPF_RB_RING_SIZE);
    w.ring_room = ring_size > MS_SWEEP_RECORD_BYTES ? ring_size - MS_SWEEP_RECORD_BYTES : 0;
#endif
#pragma unroll
    for (int i = 0; i < MS_SWEEP_SLOTS; i++)
        w.timeout[i] = ms_timeout(i);
    /* over the slots the callback can index: the states and the fallback */
    w.min_timeout = (__s64)w.timeout[0];
#pragma unroll
    for (int i = 1; i <= MS_CT_STATE_COUNT; i++)
        if ((__s64)w.timeout[i] < w.min_timeout)
            w.min_timeout = (__s64)w.timeout[i];

    run->expired_flows = 0;
    w.deleted = &run->expired_flows;
    w.is4 = 1;
    long n = ms_for_each_map_elem((void *)bpf_pseudo_fd(1, MS_SWEEP_MAP_FLOWS4), ms_sweep_entry, &w, 0);
    run->scanned_flows = n > 0 ? n : 0;
    w.is4 = 0;
    n = ms_for_each_map_elem((void *)bpf_pseudo_fd(1, MS_SWEEP_MAP_FLOWS6), ms_sweep_entry, &w, 0);
    run->scanned_flows += n > 0 ? n : 0;
    if (run->expired_flows)
        __sync_fetch_and_add(&pu->deleted, run->expired_flows);

    run->expired_halfopen = 0;
    w.deleted = &run->expired_halfopen;
    w.is4 = 1;
    n = ms_for_each_map_elem((void *)bpf_pseudo_fd(1, MS_SWEEP_MAP_HALFOPEN4), ms_sweep_entry, &w, 0);
    run->scanned_halfopen = n > 0 ? n : 0;
    w.is4 = 0;
    n = ms_for_each_map_elem((void *)bpf_pseudo_fd(1, MS_SWEEP_MAP_HALFOPEN6), ms_sweep_entry, &w, 0);
    run->scanned_halfopen += n > 0 ? n : 0;
    if (run->expired_halfopen)
        __sync_fetch_and_add(&pu->halfopen_deleted, run->expired_halfopen);
    if (run->events_lost) {
        __u32 t = EVENT_FLOW_END;
        __u64 *lost = ms_events_lost.lookup(&t);
        if (lost)
            *lost += run->events_lost;
    }
    return 0;
}

#endif
