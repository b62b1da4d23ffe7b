/* SPDX-License-Identifier: GPL-2.0 */
/* ICMP and ICMPv6 beyond echo: errors matched to the flow they quote,
 * link control (neighbour discovery, MLD) passed, everything else refused.
 */
#ifndef MS_ICMP_H
#define MS_ICMP_H

#include "maps.h"
#include "parse.h"
#include "conntrack.h"

#define MS_ICMP_CLASS_ECHO    1
#define MS_ICMP_CLASS_ERROR   2
#define MS_ICMP_CLASS_CONTROL 3
#define MS_ICMP_CLASS_OTHER   4

static __always_inline int ms_icmp_class(const struct ms_pkt *p)
{
    __u8 t = p->icmp_type;
    if (p->proto == IPPROTO_ICMP) {
        if (t == 0 || t == 8)
            return MS_ICMP_CLASS_ECHO;
        /* unreachable, source quench, time exceeded, parameter problem */
        if (t == 3 || t == 4 || t == 11 || t == 12)
            return MS_ICMP_CLASS_ERROR;
        return MS_ICMP_CLASS_OTHER;
    }
    if (t == 128 || t == 129)
        return MS_ICMP_CLASS_ECHO;
    /* unreachable, packet too big, time exceeded, parameter problem */
    if (t >= 1 && t <= 4)
        return MS_ICMP_CLASS_ERROR;
    /* MLD (130-132, 143) and neighbour discovery (133-137, RFC 4861) */
    if ((t >= 130 && t <= 137) || t == 143)
        return MS_ICMP_CLASS_CONTROL;
    return MS_ICMP_CLASS_OTHER;
}

/* The quoted packet of an ICMP error: its addresses and ports. */
struct ms_quoted {
    __u8   saddr[16];
    __u8   daddr[16];
    __be16 sport;
    __be16 dport;
    __u8   proto;
    __u8   pad[3];
};

/* Read the header an ICMP error quotes (RFC 792: IP header + 8 bytes;
 * RFC 4443: as much of the invoking packet as fits). Returns 0 or -1. */
static __always_inline int ms_icmp_quoted(struct __sk_buff *skb, const struct ms_pkt *p,
                                          struct ms_quoted *q)
{
    __u32 off = p->payload_off;
    __u8 l4[8];

    if (p->proto == IPPROTO_ICMP) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0 || ip.version != 4 || ip.ihl < 5)
            return -1;
        ms_v4_mapped(q->saddr, ip.saddr);
        ms_v4_mapped(q->daddr, ip.daddr);
        q->proto = ip.protocol;
        off += ip.ihl * 4;
    } else {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0 || ip6.version != 6)
            return -1;
        __builtin_memcpy(q->saddr, &ip6.saddr, 16);
        __builtin_memcpy(q->daddr, &ip6.daddr, 16);
        q->proto = ip6.nexthdr;   /* quoted extension headers are not walked */
        off += sizeof(ip6);
    }
    if (bpf_skb_load_bytes(skb, off & 0xffff, l4, sizeof(l4)) < 0)
        return -1;
    if (q->proto == IPPROTO_ICMP || q->proto == IPPROTO_ICMPV6) {
        __builtin_memcpy(&q->sport, l4 + 4, 2);   /* echo id */
        q->dport = q->sport;
    } else {
        __builtin_memcpy(&q->sport, l4, 2);
        __builtin_memcpy(&q->dport, l4 + 2, 2);
    }
    return 0;
}

/* An ICMP error passes only when it is about a flow we track. */
static __always_inline int ms_icmp_error(struct __sk_buff *skb, struct ms_pkt *p, __u64 now)
{
    struct ms_quoted q = {};
    if (ms_icmp_quoted(skb, p, &q) < 0)
        return DROP_ICMP_UNMATCHED;
    struct ms_flow_key k = {};
    ms_key_fill(&k, q.saddr, q.sport, q.daddr, q.dport, q.proto);
    int where;
    struct ms_flow *f = ms_ct_lookup(&k, now, &where);
    return f ? PASS_ICMP_RELATED : DROP_ICMP_UNMATCHED;
}

#endif
