/* SPDX-License-Identifier: GPL-2.0 */
/* microseg fast path: TC clsact entry points and tail-call stages.
 *
 * tc_ingress / tc_egress parse the packet into the per-CPU scratch
 * (ms_scratch) and tail-call the stage for its protocol (ms_stages):
 * keeping each program small leaves the verifier headroom as policy and
 * L7 stages grow. A failed tail call is a counted reason with a configured
 * action, never a silent pass.
 *
 * Compiled by BCC at load time (datapath/loader.py); map sizes come from
 * the configuration as -D flags. The build also carries the kernel session
 * sweep (ms_sweep, bpf/lib/sweep.h), which the loader links and loads on
 * its own: it is run from user space, never attached.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "maps.h"
#include "reasons.h"
#include "parse.h"
#include "conntrack.h"
#include "icmp.h"
#include "l7.h"
#include "inspect.h"
#include "sweep.h"

static __always_inline void ms_count(__u32 dir, __u32 reason, __u32 len)
{
    __u32 idx = dir * MS_REASON_COUNT + reason;
    struct ms_counter *c = ms_counters.lookup(&idx);
    if (c) {
        c->packets++;
        c->bytes += len;
    }
}

static __always_inline int ms_finish(struct __sk_buff *skb, __u32 dir, __u32 reason)
{
    ms_count(dir & 1, reason, skb->len);
    return ms_reason_is_drop(reason) ? TC_ACT_SHOT : TC_ACT_OK;
}

static __always_inline struct ms_pkt *ms_pkt_scratch(void)
{
    __u32 z = 0;
    return ms_scratch.lookup(&z);
}

static __always_inline int ms_entry(struct __sk_buff *skb, __u32 dir)
{
    struct ms_pkt *p = ms_pkt_scratch();
    if (!p)
        return ms_finish(skb, dir, DROP_TAIL_CALL_MISSED);

    if (dir == DIR_EGRESS && skb->mark == MS_RESET_MARK)
        return ms_finish(skb, dir, PASS_SLOWPATH_SENT);
    if (dir == DIR_EGRESS && skb->ingress_ifindex) {
        /* A forwarded packet: if it came in on an interface we manage, the
         * ingress program already decided on it and accounted it. */
        __u32 iif = skb->ingress_ifindex;
        if (ms_ifaces.lookup(&iif))
            return ms_finish(skb, dir, PASS_SEEN_AT_INGRESS);
    }

    __builtin_memset(p, 0, sizeof(*p));
    p->dir = dir;
    int reason = ms_parse(skb, p);
    __u32 stage;
    if (reason == PASS_FORWARD) {
        if (p->frag == MS_FRAG_FIRST)
            ms_ct_first_fragment(p, ms_now());
        if (p->proto == IPPROTO_TCP) {
            stage = STAGE_TCP;
        } else if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) {
            int c = ms_icmp_class(p);
            if (c == MS_ICMP_CLASS_CONTROL)
                return ms_finish(skb, dir, PASS_ICMP_CONTROL);
            if (c == MS_ICMP_CLASS_OTHER)
                return ms_finish(skb, dir, DROP_ICMP_TYPE);
            stage = c == MS_ICMP_CLASS_ERROR ? STAGE_ICMP_ERR : STAGE_OTHER;
        } else {
            stage = STAGE_OTHER;
        }
    } else if (reason == PASS_FRAGMENT) {
        /* RFC 1858: a later fragment whose offset lands inside the TCP
         * header could rewrite the ports or flags the first one showed. */
        if (p->proto == IPPROTO_TCP && p->frag_off == 1)
            return ms_finish(skb, dir, DROP_FRAG_OVERLAP);
        stage = STAGE_OTHER;
    } else if (reason == PASS_OTHER_L4) {
        stage = STAGE_OTHER;   /* GRE, ESP, SCTP, ...: policy decides, no session */
    } else {
        return ms_finish(skb, dir, reason);
    }

    ms_stages.call(skb, stage);

    struct ms_config *cfg = ms_cfg();
    return ms_finish(skb, dir, cfg && (cfg->flags & MS_CFG_TAILCALL_PASS) ?
                     PASS_TAIL_CALL_MISSED : DROP_TAIL_CALL_MISSED);
}

int tc_ingress(struct __sk_buff *skb)
{
    return ms_entry(skb, DIR_INGRESS);
}

int tc_egress(struct __sk_buff *skb)
{
    return ms_entry(skb, DIR_EGRESS);
}

/* A side's first payload, and the packets of a flow under inspection,
 * go on to the payload stage, which finishes them. If that tail call fails
 * the packet keeps tracking's verdict: identification is best effort (a
 * flow that requires a protocol is checked on that side's next payload
 * packet), and an inspected flow's packet passes uncopied, counted as a
 * missed tail call would be by the tail-call action. */
static __always_inline int ms_then_payload(struct __sk_buff *skb, struct ms_pkt *p, int reason)
{
    if ((p->l7_side || p->insp) && !ms_reason_is_drop(reason)) {
        p->l7_reason = reason;
        ms_stages.call(skb, STAGE_L7);
    }
    return ms_finish(skb, p->dir, reason);
}

int ms_stage_tcp(struct __sk_buff *skb)
{
    struct ms_pkt *p = ms_pkt_scratch();
    if (!p)
        return TC_ACT_SHOT;
    p->wscale = (p->tcp_flags & TCP_SYN) ? ms_tcp_wscale(skb, p) : 0xff;
    return ms_then_payload(skb, p, ms_ct_tcp(p, ms_now()));
}

int ms_stage_other(struct __sk_buff *skb)
{
    struct ms_pkt *p = ms_pkt_scratch();
    if (!p)
        return TC_ACT_SHOT;
    __u64 now = ms_now();
    int reason;
    if (p->frag == MS_FRAG_LATER)
        reason = ms_ct_fragment(p, now);
    else if (p->proto == IPPROTO_UDP || p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6)
        reason = ms_ct_datagram(p, now);
    else
        reason = ms_ct_other(p, now);
    return ms_then_payload(skb, p, reason);
}

int ms_stage_icmp_err(struct __sk_buff *skb)
{
    struct ms_pkt *p = ms_pkt_scratch();
    if (!p)
        return TC_ACT_SHOT;
    return ms_finish(skb, p->dir, ms_icmp_error(skb, p, ms_now()));
}

int ms_stage_l7(struct __sk_buff *skb)
{
    struct ms_pkt *p = ms_pkt_scratch();
    if (!p)
        return TC_ACT_SHOT;
    int reason = p->l7_reason;
    __u32 z = 0;
    struct ms_pol_scratch *sc = ms_pol_scratch.lookup(&z);
    if (!sc)
        return ms_finish(skb, p->dir, reason);
    struct ms_flow_key *kp = &sc->flow;   /* the key tracking looked the session up with */
    struct ms_flow *f = ms_flows.lookup(kp);
    int in_flows = f != 0;
    if (!f)
        f = ms_halfopen.lookup(kp);
    if (!f)
        return ms_finish(skb, p->dir, reason);
    if (p->l7_side) {
        reason = ms_l7_check(skb, p, f, kp, in_flows, reason);
        if (ms_reason_is_drop(reason))
            return ms_finish(skb, p->dir, reason);
    }
    if (p->insp)
        reason = ms_insp_packet(skb, p, f, kp, p->insp - 1, reason);
    return ms_finish(skb, p->dir, reason);
}
