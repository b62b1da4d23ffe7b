/* SPDX-License-Identifier: GPL-2.0 */
/* microseg fast path: TC clsact entry points.
 *
 * Compiled by BCC at load time (datapath/loader.py) with -I bpf/lib and the
 * map sizes of the configuration as -D flags.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "maps.h"
#include "reasons.h"
#include "parse.h"
#include "conntrack.h"

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
    ms_count(dir, reason, skb->len);
    return ms_reason_is_drop(reason) ? TC_ACT_SHOT : TC_ACT_OK;
}

static __always_inline int ms_fastpath(struct __sk_buff *skb, __u32 dir)
{
    struct ms_pkt p = {};
    int reason;

    if (dir == DIR_EGRESS && skb->ingress_ifindex) {
        /* A forwarded packet: if it came in on an interface we manage, the
         * ingress program already decided on it and accounted it. */
        __u32 iif = skb->ingress_ifindex;
        if (ms_ifaces.lookup(&iif))
            return ms_finish(skb, dir, PASS_SEEN_AT_INGRESS);
    }

    reason = ms_parse(skb, &p);
    if (reason != PASS_FORWARD)
        return ms_finish(skb, dir, reason);

    reason = ms_flow_account(&p, bpf_ktime_get_ns());
    return ms_finish(skb, dir, reason);
}

int tc_ingress(struct __sk_buff *skb)
{
    return ms_fastpath(skb, DIR_INGRESS);
}

int tc_egress(struct __sk_buff *skb)
{
    return ms_fastpath(skb, DIR_EGRESS);
}
