/* SPDX-License-Identifier: GPL-2.0 */
/* Inspection handoff: the payload of flows a rule sends to inspection goes
 * to the slow path through the ms_insp_ring ring buffer, up to a budget per
 * side; the slow path's verdicts come back through ms_verdicts and are
 * merged into the session here.
 *
 * Modes (the rule's MS_INSPECT_HOLD bit):
 *   async: payload packets pass while copied; a block verdict drops the
 *          rest of the flow (the slow path resets both ends).
 *   hold:  payload packets are copied and dropped until a verdict, so
 *          nothing reaches the other end unless allowed; the senders'
 *          retransmissions carry the bytes through afterwards. A RELEASE
 *          verdict ("nothing found yet") ends the hold and continues as async.
 *   hold every request (MS_INSPECT_HOLD_ALL, a rule with an L7 allow-list):
 *          as hold, but a RELEASE or ALLOW verdict ends the hold of the
 *          responder's side only; the initiator's payload is copied and
 *          dropped for the flow's whole life, past the budget too, and the
 *          slow path sends each request on once it is checked, so a request
 *          outside the list never reaches the server.
 * Failures (ring buffer full, budget used up without a verdict, slow path
 * heartbeat stale) take the rule's failure action, or the configured one:
 * pass, drop, or bypass (pass and stop inspecting), each counted by reason.
 *
 * A verdict applies to the connection it was written for only: records
 * carry the session's cookie, the slow path writes it back with the
 * verdict, and the merge drops a verdict with another cookie (a connection
 * that reused the 5-tuple). A blocked connection ends with the slow path's
 * resets: a new SYN from its initiator opens a new session (conntrack.h).
 */
#ifndef MS_INSPECT_H
#define MS_INSPECT_H

#include "maps.h"
#include "parse.h"
#include "reasons.h"
#include "worker.h"

/* What failure ``kind`` does to this packet of flow f. */
static __always_inline int ms_insp_fail(struct ms_flow *f, const struct ms_config *cfg, __u32 kind)
{
    __u32 own = (f->inspect & MS_INSPECT_FAIL_MASK) >> MS_INSPECT_FAIL_SHIFT;
    __u32 act = own ? own - 1 : cfg->fail_action[kind & 3];
    if (act == FAIL_BYPASS)
        f->insp_state = INSP_DONE;
    int drop = act == FAIL_DROP;
    if (kind == FAIL_RINGBUF_FULL)
        return drop ? DROP_INSPECT_RINGBUF_FULL : PASS_INSPECT_RINGBUF_FULL;
    if (kind == FAIL_BUDGET)
        return drop ? DROP_INSPECT_BUDGET : PASS_INSPECT_BUDGET;
    return drop ? DROP_INSPECT_SLOWPATH_DOWN : PASS_INSPECT_SLOWPATH_DOWN;
}

/* Copy up to ``room`` payload bytes of the packet, from payload offset
 * ``off``, into one record of the worker's ring. ``whole``: the record is
 * one piece of a packet copied whole in several (MS_INSPECT_HOLD_ALL): it
 * reads as a segment of its own (its own length, the FIN only on the last
 * piece). 0 on success. */
static __always_inline int ms_insp_copy(struct __sk_buff *skb, const struct ms_pkt *p, const struct ms_flow *f,
                                        const struct ms_flow_key *kp, __u32 side, __u32 room, void *ring,
                                        __u64 rb_flags, __u32 off, int whole)
{
    __u32 z = 0;
    struct ms_insp_buf *b = ms_insp_scratch.lookup(&z);
    if (!b)
        return -1;
    __u32 left = p->payload_len - off;
    __u32 n = left;
    if (n > room)
        n = room;
    if (n > MS_INSP_SLICE)
        n = MS_INSP_SLICE;
    b->h.ts_ns = bpf_ktime_get_ns();
    __builtin_memcpy(&b->h.key, kp, sizeof(b->h.key));
    b->h.seq = p->seq + off;
    b->h.ack_seq = p->ack_seq;
    b->h.orig_len = whole ? n : left;
    b->h.rule_id = f->rule_id;
    b->h.side = side;
    b->h.tcp_flags = p->proto == IPPROTO_TCP ? p->tcp_flags : 0;
    if (whole && n < left)
        b->h.tcp_flags &= ~TCP_FIN;
    b->h.l4 = p->proto;
    b->h.app = f->app;
    b->h.inspect = f->inspect;
    b->h.hook = p->dir;
    b->h.initiator_is_hi = f->initiator_is_hi;
    b->h.frag = p->frag | (p->frag_mf ? MS_FRAG_MORE : 0);
    b->h.frag_id = p->frag_id;
    b->h.frag_off = p->frag_off;
    __builtin_memset(b->h.pad, 0, sizeof(b->h.pad));
    b->h.cookie = f->cookie;   /* the slow path's verdict names this connection with it */
    __u32 len = 0;
    if (n) {
        /* 1..MS_INSP_SLICE in a form the verifier can follow (a plain
         * range check is lost when the compiler reorders it); equals n
         * for every n in range. MS_INSP_SLICE is a power of two. */
        len = ((n - 1) & (MS_INSP_SLICE - 1)) + 1;
        if (bpf_skb_load_bytes(skb, p->payload_off + off, b->data, len) < 0)
            len = 0;
    }
    b->h.len = len;
#ifdef MS_NO_RINGBUF
    return ms_insp_ring.perf_submit(skb, b, sizeof(b->h) + len);
#else
    return bpf_ringbuf_output(ring, b, sizeof(b->h) + len, rb_flags);
#endif
}

/* The inspection part of the payload stage, for a packet of session f
 * (key kp) from ``side`` that tracking passed with ``reason``. */
static __always_inline int ms_insp_packet(struct __sk_buff *skb, struct ms_pkt *p, struct ms_flow *f,
                                          struct ms_flow_key *kp, __u32 side, int reason)
{
    struct ms_slow_verdict *sv = ms_verdicts.lookup(kp);
    if (sv) {
        /* Written for another connection of this 5-tuple (one that ended
         * before its verdict was merged): not this one's, dropped unread. */
        __u8 code = sv->cookie == f->cookie ? sv->verdict : 0;
        ms_verdicts.delete(kp);
        if (code == VERDICT_BLOCK) {
            f->insp_state = INSP_BLOCKED;
            /* Tracking counted this segment as sent; it is dropped, so the
             * receiver's next expected byte is where it started. The slow
             * path's resets take their sequence numbers from here. */
            if (p->proto == IPPROTO_TCP) {
                struct ms_tcp_side *snd = &f->tcp[side & 1];
                __u32 end = p->seq + p->payload_len + ((p->tcp_flags & TCP_FIN) ? 1 : 0);
                if (snd->end == end)
                    snd->end = p->seq;
            }
            return DROP_INSPECT_BLOCKED;
        }
        if (code == VERDICT_ALLOW && !(f->inspect & MS_INSPECT_HOLD_ALL)) {
            f->insp_state = INSP_DONE;
            return PASS_INSPECT_ALLOWED;
        }
        /* Hold every request: an ALLOW is a RELEASE (the stage goes on,
         * the initiator's side stays held below). */
        if (code != 0 && f->insp_state == INSP_PENDING)
            f->insp_state = INSP_RELEASED;
    }
    if (f->insp_state >= INSP_DONE)
        return f->insp_state == INSP_BLOCKED ? DROP_INSPECT_BLOCKED : reason;

    struct ms_config *cfg = ms_cfg();
    if (!cfg)
        return reason;
    __u32 worker = ms_insp_worker(kp, cfg);
    struct ms_slowpath *sp = ms_slowpath.lookup(&worker);
    __u64 now = ms_now();
    if ((cfg->flags & MS_CFG_SIM_SLOWPATH_DOWN) || !sp || !sp->heartbeat_ns ||
        now - sp->heartbeat_ns > cfg->hb_timeout_ns)
        return ms_insp_fail(f, cfg, FAIL_SLOWPATH_DOWN);
#ifdef MS_NO_RINGBUF
    void *ring = 0;       /* one perf buffer, one worker */
#else
    void *ring = ms_insp_rings.lookup(&worker);
    if (!ring)            /* no ring in the worker's slot: nobody would read it */
        return ms_insp_fail(f, cfg, FAIL_SLOWPATH_DOWN);
#endif

    side &= 1;
    /* The initiator's side of a flow that holds every request: held after
     * any verdict but a block, and read whole (no budget). */
    int hold_all = (f->inspect & MS_INSPECT_HOLD_ALL) && side == 0;
    __u32 sent = f->insp_sent[side];
    __u32 budget = (cfg->flags & MS_CFG_SIM_BUDGET) ? 0 : cfg->insp_budget;
    if (hold_all)
        budget = sent + MS_INSP_SLICE;   /* room for this packet's copy, whatever came before */
    else if (sent >= budget && p->payload_len) {
        /* This side is inspected to the depth. After a clean interim
         * verdict its packets pass uncopied while the slow path finishes
         * (a block verdict still cuts the flow; its allow ends the stage
         * calls). Without any verdict yet: a failure. */
        if (f->insp_state == INSP_RELEASED)
            return reason;
        return ms_insp_fail(f, cfg, FAIL_BUDGET);
    }
    __u64 rb_flags = (cfg->flags & MS_CFG_RING_NO_WAKEUP) ? BPF_RB_NO_WAKEUP : 0;
#ifndef MS_NO_RINGBUF
    /* The worker is awake (ms_insp_busy): no wakeup. Read with a full
     * barrier (a locked instruction) here and again after the commit: if
     * the worker cleared the flag in between, it may have looked at the
     * ring before this record was in it and be going to sleep, so a
     * discarded 8-byte record with a forced wakeup wakes it (it skips
     * discarded records). Either this program sees the cleared flag or
     * the worker's last look sees the record: no wakeup is lost. */
    __u64 *busy = ms_insp_busy.lookup(&worker);   /* u64: BPF fetch atomics are 64-bit here */
    /* A record no verdict waits on: the flow was released (async after its
     * interim verdict) and this side is not held. It may wait for the
     * worker's due poll (MS_INSP_BUSY_POLL, maps.h); anything else wakes a
     * worker that is not reading. The same test after the commit: if the
     * worker's state changed to one that would have woken it for this
     * record, the forced wakeup below does. */
    int deferrable = f->insp_state == INSP_RELEASED && !hold_all;
    __u64 state = !rb_flags && busy ? __sync_fetch_and_add(busy, 0) : MS_INSP_BUSY_ASLEEP;
    int awake = state == MS_INSP_BUSY_AWAKE || (state == MS_INSP_BUSY_POLL && deferrable);
    if (awake)
        rb_flags = BPF_RB_NO_WAKEUP;
    else if (state == MS_INSP_BUSY_POLL)
        /* Records that skipped their wakeup may be before this one, and a
         * ring wakes its reader by itself only for a record at the
         * reader's position (a reader caught up): forced, or this record
         * would wait for the poll too. */
        rb_flags = BPF_RB_FORCE_WAKEUP;
#endif
    if ((cfg->flags & MS_CFG_SIM_RINGBUF_FULL) || ms_insp_copy(skb, p, f, kp, side, budget - sent, ring,
                                                                   rb_flags, 0, hold_all) != 0)
        return ms_insp_fail(f, cfg, FAIL_RINGBUF_FULL);
#ifndef MS_NO_RINGBUF
    __u64 after = awake && busy ? __sync_fetch_and_add(busy, 0) : MS_INSP_BUSY_AWAKE;
    if (after != MS_INSP_BUSY_AWAKE && !(after == MS_INSP_BUSY_POLL && deferrable)) {
        void *nudge = bpf_ringbuf_reserve(ring, 8, 0);
        if (nudge)
            bpf_ringbuf_discard(nudge, BPF_RB_FORCE_WAKEUP);
    }
#endif
    /* A held packet larger than a record (GRO, TSO): its other pieces
     * (wakeup as configured: the busy flag's check above covered the first). */
#pragma clang loop unroll(disable)
    for (__u32 k = 1; hold_all && k < MS_INSP_HOLD_SLICES && k * MS_INSP_SLICE < p->payload_len; k++)
        if (ms_insp_copy(skb, p, f, kp, side, MS_INSP_SLICE, ring,
                         (cfg->flags & MS_CFG_RING_NO_WAKEUP) ? BPF_RB_NO_WAKEUP : 0, k * MS_INSP_SLICE, 1) != 0)
            return ms_insp_fail(f, cfg, FAIL_RINGBUF_FULL);
    __u32 n = p->payload_len < budget - sent ? p->payload_len : budget - sent;
    f->insp_sent[side] = sent + (n < MS_INSP_SLICE ? n : MS_INSP_SLICE);
    if ((f->inspect & MS_INSPECT_HOLD) && p->payload_len &&
        (f->insp_state == INSP_PENDING || (hold_all && f->insp_state == INSP_RELEASED)))
        return DROP_INSPECT_HOLD;
    return p->payload_len ? PASS_INSPECT_COPIED : reason;
}

#endif
