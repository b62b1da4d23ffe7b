/* SPDX-License-Identifier: GPL-2.0 */
/* Light L7: which application protocol a flow speaks, from the first
 * payload packet of each direction, and the policy's `app` requirement.
 *
 * Signatures come from the protocol plugins (protocols/api.py Signature:
 * offset, up to 8 bytes, mask, side). datapath/l7.py groups them by shape
 * (offset and mask) and fills ms_l7_shapes and ms_l7_sigs (maps.h): the
 * stage makes one masked 8-byte load and one hash lookup per shape, so its
 * cost is bounded by MS_L7_SHAPES, not by the number of signatures, and a
 * new plugin needs no C change.
 */
#ifndef MS_L7_H
#define MS_L7_H

#include "maps.h"

/* Application protocols the kernel and Python both name. Plugins outside
 * this list get ids from MS_APP_PLUGIN_FIRST up, assigned at load
 * (datapath/l7.py). */
#define MS_ENUM_APP(X) \
    X(APP_UNKNOWN, 0, APP, "not identified") \
    X(APP_HTTP,    1, APP, "HTTP/1.x") \
    X(APP_TLS,     2, APP, "TLS") \
    X(APP_SSH,     3, APP, "SSH") \
    X(APP_DNS,     4, APP, "DNS") \
    X(APP_MYSQL,   5, APP, "MySQL classic protocol") \
    X(APP_REDIS,   6, APP, "Redis RESP")

enum ms_app {
    MS_ENUM_APP(MS_ENUM_MEMBER)
};
#define MS_APP_PLUGIN_FIRST 32

/* The application protocol whose signature matches the first payload
 * bytes (``len`` of them at ``off`` in the packet, an ``l4`` payload), or
 * APP_UNKNOWN. ``side`` 0: from the initiator. */
static __always_inline __u32 ms_l7_identify_at(struct __sk_buff *skb, __u32 off, __u32 len, __u8 l4,
                                               __u32 side)
{
    __u32 z = 0;
    struct ms_l7_buf *buf = ms_l7_scratch.lookup(&z);
    if (!buf)
        return APP_UNKNOWN;
    __u64 *w = (__u64 *)buf->b;
#pragma unroll
    for (int i = 0; i < MS_L7_WINDOW / 8; i++)
        w[i] = 0;
    __u32 n = len;
    if (n > MS_L7_WINDOW)
        n = MS_L7_WINDOW;
    if (n < 1)
        return APP_UNKNOWN;
    /* n is 1..MS_L7_WINDOW here, but with the length given as a value
     * (not read from the scratch) clang tests copies of it, not the
     * register the load takes, and the verifier sees an unbounded or
     * possibly zero length: bounded again where clang cannot drop it. */
    _Static_assert((MS_L7_WINDOW & (MS_L7_WINDOW - 1)) == 0, "MS_L7_WINDOW: a power of two (a mask)");
    __u64 m = n - 1;
    asm volatile("" : "+r"(m));
    n = (m & (MS_L7_WINDOW - 1)) + 1;
    if (bpf_skb_load_bytes(skb, off, buf->b, n) < 0)
        return APP_UNKNOWN;

    struct ms_l7_sig_key k = {};
    k.side = side;
    k.l4 = l4;
    /* The shape index the lookup takes by address lives apart from the
     * loop counter: with one variable the verifier sees the counter as a
     * stack slot and loses track of its progress ("infinite loop"). */
    __u32 idx;
#pragma clang loop unroll(disable)
    for (__u32 i = 0; i < MS_L7_SHAPES; i++) {
        idx = i;
        struct ms_l7_shape *sh = ms_l7_shapes.lookup(&idx);
        if (!sh || !sh->used)
            break;
        if (sh->end > n)
            continue;
        __u32 at = sh->offset;
        if (at > MS_L7_WINDOW - 8)
            continue;
        __u64 v;
        __builtin_memcpy(&v, buf->b + at, 8);
        k.value = v & sh->mask;
        k.shape = i;
        struct ms_l7_sig *s = ms_l7_sigs.lookup(&k);
        if (s)
            return s->app;
    }
    return APP_UNKNOWN;
}

/* The application protocol of a parsed packet's first payload. */
static __always_inline __u32 ms_l7_identify(struct __sk_buff *skb, const struct ms_pkt *p, __u32 side)
{
    return ms_l7_identify_at(skb, p->payload_off, p->payload_len, p->proto, side);
}

/* Is session f's protocol known already, and the one its rule's `app`
 * wants (if any)? Then a side's first payload has nothing to decide. */
static __always_inline int ms_l7_settled(const struct ms_flow *f)
{
    return f->app && (!f->app_req || f->app == f->app_req);
}

/* Does the rule's `app` refuse a side's first payload that showed ``app``:
 * another protocol, or nothing on a side where the required protocol
 * always shows itself? */
static __always_inline int ms_l7_refused(const struct ms_flow *f, __u32 side, __u32 app)
{
    __u32 req = f->app_req;
    if (!req || app == req)
        return 0;
    __u8 *sides = ms_l7_sides.lookup(&req);
    return app || (sides && (*sides & (1 << side)));
}

/* Application protocol of session f from the first payload packet of a
 * side (session tracking marks it in p->l7_side), which tracking passed
 * with ``reason``. Records what the flow speaks; enforces the rule's
 * `app`: a flow whose bytes show another protocol, or show nothing on a
 * side where the required protocol always shows itself, is dropped and
 * its session removed. */
static __always_inline int ms_l7_check(struct __sk_buff *skb, struct ms_pkt *p, struct ms_flow *f,
                                       struct ms_flow_key *kp, int in_flows, int reason)
{
    __u32 side = (p->l7_side - 1) & 1;
    f->l7_seen |= 1 << side;
    if (ms_l7_settled(f))
        return reason;

    __u32 app = ms_l7_identify(skb, p, side);
    if (app && !f->app)
        f->app = app;
    if (ms_l7_refused(f, side, app)) {
        ms_ct_remove(kp, in_flows ? MS_IN_FLOWS : MS_IN_HALFOPEN, f, FLOW_END_APP_MISMATCH);
        return DROP_L7_APP_MISMATCH;
    }
    return reason;
}

/* The established lane's side's first payload (conntrack.h MS_LANE_PAYLOAD:
 * a segment of session f, side ``side``, that passed every other check of
 * the lane, the window included, nothing changed yet): ms_l7_check's work,
 * done in the entry program on the session the lane found, instead of a
 * tail call into the TCP stage and a second lookup of the session
 * (docs/performance.md 4.1.2). Returns 1 when the payload passes: its
 * side is marked seen and what it showed recorded, as ms_l7_check does,
 * and the caller then advances and accounts the segment
 * (ms_ct_lane_pass). Returns 0, changing nothing, when the rule's `app`
 * refuses it: the TCP stage then decides the segment from the start and
 * drops it with ms_l7_check (the session's end record, the drop event
 * with its rule), one place for that path. */
static __always_inline int ms_l7_lane(struct __sk_buff *skb, struct ms_flow *f, __u32 side, __u32 off,
                                      __u32 len)
{
    if (!ms_l7_settled(f)) {
        __u32 app = ms_l7_identify_at(skb, off, len, IPPROTO_TCP, side);
        if (ms_l7_refused(f, side, app))
            return 0;
        if (app && !f->app)
            f->app = app;
    }
    f->l7_seen |= 1 << side;
    return 1;
}

#endif
