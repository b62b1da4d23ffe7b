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

/* A drop event for the SIEM (struct ms_drop_event on ms_drop_ring),
 * rate-bounded here, per (source address, reason) and per CPU, so a scan or
 * a flood costs the reader a bounded number of events a second: what is
 * not sent is counted, in the key's next event and in ms_drop_stats. The
 * packet's fields come from the per-CPU scratch ms_entry filled (zeroed
 * before parsing: a packet dropped before its IP header shows no
 * addresses). A held payload (DROP_INSPECT_HOLD) is not a drop of the
 * flow: the slow path lets it go or blocks the flow, which it logs itself. */
static __always_inline void ms_drop_log(struct __sk_buff *skb, __u32 dir, __u32 reason)
{
#ifndef MS_NO_RINGBUF
    if (reason == DROP_INSPECT_HOLD)
        return;
    __u32 z = 0;
    struct ms_config *cfg = ms_config.lookup(&z);
    if (!cfg || !cfg->drop_ev_rate)
        return;
    struct ms_pkt *p = ms_scratch.lookup(&z);
    struct ms_drop_stats *st = ms_drop_stats.lookup(&z);
    if (!p || !st)
        return;
    __u64 now = ms_now();
    struct ms_drop_key k = {};
    __builtin_memcpy(k.saddr, p->saddr, 16);
    k.reason = reason;
    if (now - st->window_ns >= MS_NSEC) {
        st->window_ns = now;
        st->window_sent = 0;
    }
    struct ms_drop_limit *l = ms_drop_limit.lookup(&k);
    if (!l) {
        /* A new key while this CPU is at its cap (a flood from random
         * sources, one key per packet): counted here only, no entry made,
         * so the flood costs a lookup per packet, not an insert. */
        if (st->window_sent >= cfg->drop_ev_cpu_rate) {
            st->suppressed++;
            st->cpu_capped++;
            return;
        }
        struct ms_drop_limit nl = {.window_ns = now};
        ms_drop_limit.update(&k, &nl);
        l = ms_drop_limit.lookup(&k);
        if (!l) {
            st->untracked++;
            return;
        }
    }
    if (now - l->window_ns >= MS_NSEC) {
        l->window_ns = now;
        l->sent = 0;
    }
    if (l->sent >= cfg->drop_ev_rate) {
        __sync_fetch_and_add(&l->suppressed, 1);
        st->suppressed++;
        return;
    }
    if (st->window_sent >= cfg->drop_ev_cpu_rate) {
        __sync_fetch_and_add(&l->suppressed, 1);
        st->suppressed++;
        st->cpu_capped++;
        return;
    }
    struct ms_drop_event *ev = ms_drop_ring.ringbuf_reserve(sizeof(struct ms_drop_event));
    if (!ev) {
        __sync_fetch_and_add(&l->suppressed, 1);
        st->ring_full++;
        return;
    }
    __sync_fetch_and_add(&l->sent, 1);
    st->window_sent++;
    st->events++;
    /* What the event reports is taken off the count, not zeroed: drops
     * counted meanwhile on another CPU stay for the next event. */
    __u32 sup = l->suppressed;
    if (sup)
        __sync_fetch_and_add(&l->suppressed, -sup);
    ev->ts_ns = now;
    __builtin_memcpy(ev->saddr, p->saddr, 16);
    __builtin_memcpy(ev->daddr, p->daddr, 16);
    ev->sport = p->sport;
    ev->dport = p->dport;
    ev->len = skb->len;
    ev->seq = p->seq;
    ev->ack_seq = p->ack_seq;
    ev->rule_id = p->rule_id;
    ev->suppressed = sup;
    ev->ifindex = skb->ifindex;
    ev->window = p->window;
    ev->vlan = p->vlan_outer;
    ev->reason = reason;
    ev->hook = dir & 1;
    ev->family = p->family;
    ev->proto = p->proto;
    ev->tcp_flags = p->tcp_flags;
    ev->icmp_type = p->icmp_type;
    ev->icmp_code = p->icmp_code;
    __builtin_memset(ev->pad, 0, sizeof(ev->pad));
    ms_drop_ring.ringbuf_submit(ev, 0);
#endif
}

static __always_inline int ms_finish(struct __sk_buff *skb, __u32 dir, __u32 reason)
{
#ifdef MS_BENCH_STOP
    if (reason == MS_BENCH_REASON)
        return TC_ACT_OK;
#endif
    MS_BENCH_STEP(5, TC_ACT_OK);   /* decided: all but the counters */
    ms_count(dir & 1, reason, skb->len);
    if (!ms_reason_is_drop(reason))
        return TC_ACT_OK;
    ms_drop_log(skb, dir, reason);
    return TC_ACT_SHOT;
}

static __always_inline struct ms_pkt *ms_pkt_scratch(void)
{
    __u32 z = 0;
    return ms_scratch.lookup(&z);
}

/* Did a packet come in on an interface we manage (maps.h: the array for
 * small ifindexes, the hash for the rest)? */
static __always_inline int ms_iface_managed(__u32 ifindex)
{
    if (ifindex < MS_IFINDEX_DIRECT) {
        struct ms_iface *d = ms_iface_direct.lookup(&ifindex);
        return d && (d->flags & MS_IFACE_MANAGED);
    }
    return ms_ifaces.lookup(&ifindex) != NULL;
}

/* This packet's per-CPU scratch, cleared, with its direction set; NULL
 * when the lookup fails. A map value is 8-byte aligned (the kernel rounds
 * per-CPU values up to 8): said here, the clear is 11 word stores, not 22
 * of 4 bytes. */
static __always_inline struct ms_pkt *ms_pkt_fresh(__u32 dir)
{
    struct ms_pkt *p = ms_pkt_scratch();
    if (p) {
        __builtin_memset(__builtin_assume_aligned(p, 8), 0, sizeof(*p));
        p->dir = dir;
    }
    return p;
}

/* A side's first payload the established lane took (conntrack.h
 * MS_LANE_PAYLOAD): its window check (the lane's, ms_ct_lane_in_window:
 * before the application check, which records the protocol in the
 * session), the TCP stage's application check (l7.h ms_l7_lane), then the
 * segment passed as any other of the lane; MS_LANE_MISS, nothing changed,
 * when either refuses it (the stage decides it). */
static __always_inline int ms_lane_first_payload(struct __sk_buff *skb, const struct ms_lane_hit *hit,
                                                 __u32 seq, __u32 ack_seq, __u32 window,
                                                 __u32 payload_off, __u32 payload_len, __u32 len,
                                                 __u64 now)
{
    if (!ms_ct_lane_in_window(hit->f, hit->side, seq, ack_seq, seq + payload_len) ||
        !ms_l7_lane(skb, hit->f, hit->side, payload_off, payload_len))
        return MS_LANE_MISS;
    return ms_ct_lane_pass(hit->f, hit->side, ack_seq, window, seq + payload_len, len, now);
}

/* The entry's reason for a packet it finishes itself (a packet handed to a
 * stage never comes back). One ms_finish below, not one per return: the
 * drop log inlined once per program, not once per reason. */
static __always_inline __u32 ms_entry_reason(struct __sk_buff *skb, __u32 dir)
{
    /* Egress packets finished before the scratch lookup: they need none. */
    if (dir == DIR_EGRESS && skb->mark == MS_RESET_MARK)
        return PASS_SLOWPATH_SENT;
    /* A forwarded packet: if it came in on an interface we manage, the
     * ingress program already decided on it and accounted it. */
    if (dir == DIR_EGRESS && skb->ingress_ifindex && ms_iface_managed(skb->ingress_ifindex))
        return PASS_SEEN_AT_INGRESS;

    struct ms_pkt *p;
    int reason;
    __u32 stage;
    /* The common frame's established segment first (conntrack.h
     * ms_ct_tcp4_lane), from registers: no scratch. Besides the ACKs of an
     * established session, the lane finishes a connection's handshake (its
     * last ACK), each side's first payload (its application check here,
     * ms_lane_first_payload) and the FIN or RST that starts its close: of
     * a short connection's packets only the SYN and the SYN-ACK, and what
     * the lane declines, take the tail call into the TCP stage. */
    struct ms_seg4 sg;
    if (ms_parse_tcp4(skb, &sg)) {
        MS_BENCH_STEP(1, MS_BENCH_REASON);   /* parsed */
        __u64 now = ms_pkt_now();
        struct ms_lane_hit hit;
        /* The lane's answer: a reason (>= 0), or one of the negative
         * MS_LANE_* codes; one test for the common answer. */
        int lane = ms_ct_tcp4_lane(&sg, now, &hit);
        if (lane >= 0)
            return lane;
        if (lane == MS_LANE_PAYLOAD) {
            lane = ms_lane_first_payload(skb, &hit, sg.seq, sg.ack_seq, sg.window, sg.payload_off,
                                         sg.payload_len, sg.len, now);
            if (lane >= 0)
                return lane;
        }
        /* Missed: the TCP stage decides it, from the scratch as ms_parse
         * fills it for this frame (parse.h ms_parse_tcp4_pkt; a TCP
         * segment, not a fragment: straight to the stage, as below). Not
         * through ms_parse and the dispatch below: the verifier would walk
         * those (the tunnel parsers) once more per way the lane misses,
         * past its limit. */
        p = ms_pkt_fresh(dir);
        if (!p)
            return DROP_TAIL_CALL_MISSED;
        reason = ms_parse_tcp4_pkt(skb, p);
        if (reason != PASS_FORWARD)
            return reason;
        p->lane_absent = lane == MS_LANE_ABSENT ? MS_ABSENT_FLOWS : lane == MS_LANE_NONE ? MS_ABSENT_BOTH : 0;
        stage = STAGE_TCP;
        goto call;
    }

    p = ms_pkt_fresh(dir);
    if (!p)
        return DROP_TAIL_CALL_MISSED;
    reason = ms_parse(skb, p);
    MS_BENCH_STEP(1, MS_BENCH_REASON);   /* parsed */
    if (reason == PASS_FORWARD) {
        if (p->frag == MS_FRAG_FIRST)
            ms_ct_first_fragment(p, ms_pkt_now());
        if (p->proto == IPPROTO_TCP) {
            /* A segment of an established session in a frame of another
             * shape (IPv6, VLAN, IP options, headers pulled), decided here
             * (conntrack.h ms_ct_tcp_lane); the others go on to the TCP
             * stage, a side's first payload too: checked here, behind
             * ms_parse's tunnel parsers, it cost the verifier tc_ingress's
             * walk twice over (389,000 -> 801,000 instructions of the
             * 1,000,000 limit), for frames the lab's connections are not. */
            int lane = ms_ct_tcp_lane(p, ms_pkt_now());
            if (lane != MS_LANE_MISS)
                return lane;
            stage = STAGE_TCP;
        } else if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) {
            int c = ms_icmp_class(p);
            if (c == MS_ICMP_CLASS_CONTROL)
                return PASS_ICMP_CONTROL;
            if (c == MS_ICMP_CLASS_OTHER)
                return DROP_ICMP_TYPE;
            stage = c == MS_ICMP_CLASS_ERROR ? STAGE_ICMP_ERR : STAGE_OTHER;
        } else {
            stage = STAGE_OTHER;
        }
    } else if (reason == PASS_FRAGMENT) {
        /* RFC 1858: a later fragment whose offset lands inside the TCP
         * header could rewrite the ports or flags the first one showed. */
        if (p->proto == IPPROTO_TCP && p->frag_off == 1)
            return DROP_FRAG_OVERLAP;
        stage = STAGE_OTHER;
    } else if (reason == PASS_OTHER_L4) {
        stage = STAGE_OTHER;   /* GRE, ESP, SCTP, ...: policy decides, no session */
    } else {
        return reason;
    }

call:
    ms_stages.call(skb, stage);

    struct ms_config *cfg = ms_cfg();
    return cfg && (cfg->flags & MS_CFG_TAILCALL_PASS) ? PASS_TAIL_CALL_MISSED : DROP_TAIL_CALL_MISSED;
}

static __always_inline int ms_entry(struct __sk_buff *skb, __u32 dir)
{
    return ms_finish(skb, dir, ms_entry_reason(skb, dir));
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
    MS_BENCH_STEP(2, TC_ACT_OK);   /* in the TCP stage: the tail call done */
    p->wscale = (p->tcp_flags & TCP_SYN) ? ms_tcp_wscale(skb, p) : 0xff;
    struct ms_flow *f = 0;
    int in_flows = 0;
    int reason = ms_ct_tcp(p, ms_pkt_now(), &f, &in_flows);
    /* A side's first payload on a flow not inspected, that the IPv4 lane
     * did not check itself (another frame shape, a refused payload, a
     * payload on the handshake's last ACK, ...: ms_lane_first_payload):
     * its application check is done here, on the session tracking holds,
     * not in the payload stage after another tail call and another lookup
     * of the session (~0.1 us each time, docs/performance.md 4.3). Same
     * check, same session, same reason. */
    if (f && p->l7_side && !p->insp && !ms_reason_is_drop(reason)) {
        __u32 z = 0;
        struct ms_pol_scratch *sc = ms_pol_scratch.lookup(&z);
        if (sc) {
            p->rule_id = f->rule_id;
            reason = ms_l7_check(skb, p, f, &sc->flow, in_flows, reason);   /* tracking's key */
            p->l7_side = 0;
        }
    }
    return ms_then_payload(skb, p, reason);
}

int ms_stage_other(struct __sk_buff *skb)
{
    struct ms_pkt *p = ms_pkt_scratch();
    if (!p)
        return TC_ACT_SHOT;
    __u64 now = ms_pkt_now();
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
    return ms_finish(skb, p->dir, ms_icmp_error(skb, p, ms_pkt_now()));
}

/* The payload stage's reason (one ms_finish for the stage, as ms_entry). */
static __always_inline int ms_l7_reason(struct __sk_buff *skb, struct ms_pkt *p)
{
    int reason = p->l7_reason;
    __u32 z = 0;
    struct ms_pol_scratch *sc = ms_pol_scratch.lookup(&z);
    if (!sc)
        return reason;
    struct ms_flow_key *kp = &sc->flow;   /* the key tracking looked the session up with */
    struct ms_flow *f = ms_flows_lookup(kp);
    int in_flows = f != 0;
    if (!f)
        f = ms_halfopen_lookup(kp);
    if (!f)
        return reason;
    p->rule_id = f->rule_id;   /* the rule of an app mismatch or an inspection block */
    if (p->l7_side) {
        reason = ms_l7_check(skb, p, f, kp, in_flows, reason);
        if (ms_reason_is_drop(reason))
            return reason;
    }
    if (p->insp)
        reason = ms_insp_packet(skb, p, f, kp, p->insp - 1, reason);
    return reason;
}

int ms_stage_l7(struct __sk_buff *skb)
{
    struct ms_pkt *p = ms_pkt_scratch();
    if (!p)
        return TC_ACT_SHOT;
    return ms_finish(skb, p->dir, ms_l7_reason(skb, p));
}
