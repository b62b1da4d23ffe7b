/* SPDX-License-Identifier: GPL-2.0 */
/* The session sweep in the kernel: one program run (BPF_PROG_TEST_RUN) walks
 * ms_flows and ms_halfopen with bpf_for_each_map_elem (kernel 5.13+) and
 * deletes, from inside the walk's callback, every entry idle past its
 * state's timeout. It replaces the user-space batch sweep (read a batch,
 * test it, delete it: two system calls and a copy of every entry) with one
 * system call and no copy.
 *
 * Expired means what ms_ct_expired() means: the signed age
 * (now - last_seen_ns) is over ms_timeout(state); `now` is ms_now(), the
 * session clock, read once per run (or given by user space in
 * ms_sweep_runs, for tests). ms_timeout() is read here, before the walk,
 * for every state and for the out-of-range fallback, into the walk's
 * context: the callback cannot use a map of its own (below).
 *
 * Accounting: what the walk deletes from ms_flows is added, atomically,
 * to ms_pressure_user.deleted, the sweeper's count (the kernel's lazy
 * expiry counts its own deletes in ms_pressure). A delete that loses the
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
 *   - ms_flows and ms_halfopen are named by marker "fds" (MS_SWEEP_MAP_*)
 *     that the loader replaces with the real map fds: the tables of the
 *     build this program was compiled with, or those of an attached build
 *     opened by id (the other maps are remapped by name the same way).
 * The program is of type BPF_PROG_TYPE_SYSCALL (kernel 5.14+): a test run
 * of it is preemptible, where a SCHED_CLS test run keeps preemption off
 * for the whole walk.
 */
#ifndef MS_SWEEP_H
#define MS_SWEEP_H

#include "maps.h"
#include "conntrack.h"

/* Marker map "fds", replaced by the loader (datapath/loader.py SWEEP_MARKERS). */
#define MS_SWEEP_MAP_FLOWS    0x4d530001
#define MS_SWEEP_MAP_HALFOPEN 0x4d530002

/* One run: the input and what it did. Read and written by user space
 * (datapath/sweeper.py) around each run; sweeps are serialised there. */
struct ms_sweep_run {
    __u64 now_ns;             /* in: the time to judge by, 0 = ms_now(); out: the time used */
    __u64 scanned_flows;      /* out: entries the walk visited */
    __u64 expired_flows;      /* out: entries it deleted */
    __u64 scanned_halfopen;
    __u64 expired_halfopen;
};
BPF_ARRAY(ms_sweep_runs, struct ms_sweep_run, 1);

/* The walk's context, on the program's stack. */
struct ms_sweep_walk {
    __u64 now;
    __u64 deleted;
    __u64 fallback;                     /* ms_timeout() of a state out of range */
    __u64 timeout[MS_CT_STATE_COUNT];   /* ms_timeout(state), ns */
};

static long (*ms_for_each_map_elem)(void *map, void *callback, void *ctx, __u64 flags) =
    (void *)BPF_FUNC_for_each_map_elem;

/* Called for every entry of the table walked: delete it when expired.
 * Returns 0: go on. Not inlined, in ms_sweep's section (see above). */
static noinline __attribute__((section(".bpf.fn.ms_sweep")))
long ms_sweep_entry(void *map, void *key, void *value, void *ctx)
{
    struct ms_sweep_walk *w = ctx;
    struct ms_flow *f = value;
    __u32 st = f->state;
    __u64 tmo = w->fallback;
    if (st < MS_CT_STATE_COUNT)
        tmo = w->timeout[st];
    /* ms_ct_expired(), with ms_timeout(st) read before the walk */
    if ((__s64)(w->now - f->last_seen_ns) > (__s64)tmo && bpf_map_delete_elem(map, key) == 0)
        w->deleted++;
    return 0;
}

int ms_sweep(void *ctx)
{
    __u32 z = 0;
    struct ms_sweep_run *run = ms_sweep_runs.lookup(&z);
    struct ms_pressure_user *pu = ms_pressure_user.lookup(&z);
    if (!run || !pu)
        return 1;
    struct ms_sweep_walk w = {};
    w.now = run->now_ns ? run->now_ns : ms_now();
    w.fallback = ms_timeout(MS_CT_STATE_COUNT);
#pragma unroll
    for (int i = 0; i < MS_CT_STATE_COUNT; i++)
        w.timeout[i] = ms_timeout(i);

    long n = ms_for_each_map_elem((void *)bpf_pseudo_fd(1, MS_SWEEP_MAP_FLOWS), ms_sweep_entry, &w, 0);
    if (w.deleted)
        __sync_fetch_and_add(&pu->deleted, w.deleted);
    run->now_ns = w.now;
    run->scanned_flows = n > 0 ? n : 0;
    run->expired_flows = w.deleted;

    w.deleted = 0;
    n = ms_for_each_map_elem((void *)bpf_pseudo_fd(1, MS_SWEEP_MAP_HALFOPEN), ms_sweep_entry, &w, 0);
    run->scanned_halfopen = n > 0 ? n : 0;
    run->expired_halfopen = w.deleted;
    return 0;
}

#endif
