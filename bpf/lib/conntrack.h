/* SPDX-License-Identifier: GPL-2.0 */
/* Session table: canonical flow keys and per-flow accounting.
 *
 * One entry per flow in ms_flows, found from either direction through the
 * canonical key (lower endpoint first). This is the frame that the TCP state
 * machine and window tracking build on.
 */
#ifndef MS_CONNTRACK_H
#define MS_CONNTRACK_H

#include "maps.h"
#include "parse.h"

/* Compare (addr, port) endpoints; < 0 when a sorts before b. */
static __always_inline int ms_ep_cmp(const __u8 *a, __be16 ap,
                                     const __u8 *b, __be16 bp)
{
#pragma unroll
    for (int i = 0; i < 16; i++) {
        if (a[i] != b[i])
            return a[i] < b[i] ? -1 : 1;
    }
    __u16 ha = bpf_ntohs(ap), hb = bpf_ntohs(bp);
    if (ha != hb)
        return ha < hb ? -1 : 1;
    return 0;
}

/* Fill the canonical key; return 1 when the packet's source is the "hi"
 * endpoint, 0 when it is the "lo" one. */
static __always_inline int ms_flow_key_of(const struct ms_pkt *p,
                                          struct ms_flow_key *k)
{
    int src_is_hi = ms_ep_cmp(p->saddr, p->sport, p->daddr, p->dport) > 0;

    if (src_is_hi) {
        __builtin_memcpy(k->addr_lo, p->daddr, 16);
        __builtin_memcpy(k->addr_hi, p->saddr, 16);
        k->port_lo = p->dport;
        k->port_hi = p->sport;
    } else {
        __builtin_memcpy(k->addr_lo, p->saddr, 16);
        __builtin_memcpy(k->addr_hi, p->daddr, 16);
        k->port_lo = p->sport;
        k->port_hi = p->dport;
    }
    k->proto = p->proto;
    return src_is_hi;
}

/* Account the packet to its flow, creating the flow on first sight.
 * Returns PASS_FORWARD, or DROP_FLOW_TABLE_FULL when a new flow cannot be
 * inserted. */
static __always_inline int ms_flow_account(const struct ms_pkt *p, __u64 now)
{
    struct ms_flow_key k = {};
    int src_is_hi = ms_flow_key_of(p, &k);

    struct ms_flow *f = ms_flows.lookup(&k);
    if (!f) {
        struct ms_flow nf = {};
        nf.first_seen_ns = now;
        nf.last_seen_ns = now;
        nf.initiator_is_hi = src_is_hi;
        nf.packets[0] = 1;
        nf.bytes[0] = p->len;
        if (ms_flows.update(&k, &nf) != 0)
            return DROP_FLOW_TABLE_FULL;
        return PASS_FORWARD;
    }
    int d = (src_is_hi != f->initiator_is_hi);
    f->last_seen_ns = now;
    if (d) {
        __sync_fetch_and_add(&f->packets[1], 1);
        __sync_fetch_and_add(&f->bytes[1], p->len);
    } else {
        __sync_fetch_and_add(&f->packets[0], 1);
        __sync_fetch_and_add(&f->bytes[0], p->len);
    }
    return PASS_FORWARD;
}

#endif
