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
    __u8   frag;       /* an IPv4 fragment (MF or an offset): never decapsulated */
    __u16  l4_off;     /* where its L4 header is in the error */
    __u32  end;        /* where the packet ended, by its IP length (the quote may stop before) */
};

/* ms_quote_ip's answers. */
#define MS_QUOTE_OK     0
#define MS_QUOTE_BAD   -1   /* not an IP header of the family expected */
#define MS_QUOTE_SHORT -2   /* the quote stops before the header and 8 bytes after it */

/* Read the IP header at ``off`` of an ICMP error's quote ending at ``end``
 * and the 8 bytes after it (RFC 792: IP header + 8 bytes; RFC 4443: as
 * much of the invoking packet as fits): addresses, protocol, ports. */
static __always_inline int ms_quote_ip(struct __sk_buff *skb, __u32 off, __u32 end, int v6,
                                       struct ms_quoted *q)
{
    __u8 l4[8];
    __u32 hlen, len;

    if (!v6) {
        struct iphdr ip;
        if (off + sizeof(ip) > end || bpf_skb_load_bytes(skb, off & 0xffff, &ip, sizeof(ip)) < 0)
            return MS_QUOTE_SHORT;
        if (ip.version != 4 || ip.ihl < 5)
            return MS_QUOTE_BAD;
        ms_v4_mapped(q->saddr, ip.saddr);
        ms_v4_mapped(q->daddr, ip.daddr);
        q->proto = ip.protocol;
        q->frag = (bpf_ntohs(ip.frag_off) & 0x3fff) != 0;   /* MF and the offset, as ms_parse_ipv4 */
        hlen = ip.ihl * 4;
        len = bpf_ntohs(ip.tot_len);
    } else {
        struct ipv6hdr ip6;
        if (off + sizeof(ip6) > end || bpf_skb_load_bytes(skb, off & 0xffff, &ip6, sizeof(ip6)) < 0)
            return MS_QUOTE_SHORT;
        if (ip6.version != 6)
            return MS_QUOTE_BAD;
        __builtin_memcpy(q->saddr, &ip6.saddr, 16);
        __builtin_memcpy(q->daddr, &ip6.daddr, 16);
        q->proto = ip6.nexthdr;   /* quoted extension headers are not walked */
        q->frag = 0;
        hlen = sizeof(ip6);
        len = sizeof(ip6) + bpf_ntohs(ip6.payload_len);
    }
    off = (off + hlen) & 0xffff;
    q->l4_off = off;
    q->end = off - hlen + len;
    if (off + sizeof(l4) > end || bpf_skb_load_bytes(skb, off, l4, sizeof(l4)) < 0)
        return MS_QUOTE_SHORT;
    if (q->proto == IPPROTO_ICMP || q->proto == IPPROTO_ICMPV6) {
        __builtin_memcpy(&q->sport, l4 + 4, 2);   /* echo id */
        q->dport = q->sport;
    } else {
        __builtin_memcpy(&q->sport, l4, 2);
        __builtin_memcpy(&q->dport, l4 + 2, 2);
    }
    return MS_QUOTE_OK;
}

/* Whether the quoted packet is a tunnel the fast path decapsulated
 * (tunnel.h's ms_tun_candidate, for a quote). */
static __always_inline int ms_quote_is_tunnel(const struct ms_quoted *q)
{
    if (q->frag)
        return 0;
    return q->proto == IPPROTO_UDP ? ms_tun_udp_port(q->dport) : ms_tun_ip_proto(q->proto);
}

/* A quoted tunnel packet (ms_quote_is_tunnel) whose outer flow no session
 * has: q becomes the innermost packet's flow, its session the one the
 * tunnel's packets were tracked as (tunnel.h). The tunnel headers are read
 * by tunnel.h's own ms_tun_header, the inner IP headers as the outer one.
 * MS_QUOTE_SHORT: the quote stops before the inner flow's ports while the
 * quoted packet went on (a router quoting RFC 792's IP header + 8 bytes);
 * MS_QUOTE_BAD: a packet the fast path did not decapsulate or dropped
 * (not an inner flow it tracks). */
static __always_inline int ms_quote_tunnel(struct __sk_buff *skb, struct ms_quoted *q, __u32 quote_end)
{
    ms_tun_pull(skb);
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    __u32 lim = q->end;   /* the innermost quoted packet's end */

    /* One level a turn, as ms_tun_decap; a deeper quote was never a flow. */
#pragma clang loop unroll(disable)
    for (int i = 0; i < MS_TUN_MAX_DEPTH; i++) {
        /* Cut at the quote's end, the quote is short; at the packet's own, malformed. */
        __u32 end = quote_end < lim ? quote_end : lim;
        int cut = quote_end < lim ? MS_QUOTE_SHORT : MS_QUOTE_BAD;
        __u32 start = q->l4_off + (q->proto == IPPROTO_UDP ? sizeof(struct udphdr) : 0);
        __u32 off = 0;
        int r = ms_tun_header(data, data_end, q->proto, q->dport, start, end, &off);
        if (r == MS_TUN_CUT)
            return cut;
        if ((r != MS_TUN_IP4 && r != MS_TUN_IP6) || off > MS_TUN_MAX_INNER_OFF)
            return MS_QUOTE_BAD;
        r = ms_quote_ip(skb, off, end, r == MS_TUN_IP6, q);
        if (r != MS_QUOTE_OK)
            return r == MS_QUOTE_SHORT ? cut : r;
        if (!ms_quote_is_tunnel(q))
            return MS_QUOTE_OK;
        if (q->end < lim)
            lim = q->end;
    }
    return MS_QUOTE_BAD;
}

static __always_inline int ms_quote_tracked(const struct ms_quoted *q, __u64 now)
{
    struct ms_flow_key k = {};
    ms_key_fill(&k, q->saddr, q->sport, q->daddr, q->dport, q->proto);
    int where;
    return ms_ct_lookup(&k, now, &where) != 0;
}

/* An ICMP error passes only when it is about a flow we track: the flow it
 * quotes, or when that is a tunnel packet decapsulated (so no session of
 * its own), the inner flow the quote shows.
 *
 * A quote too short to show the inner flow passes by default
 * (PASS_ICMP_TUNNEL_QUOTE; `tunnels.short_quote_action: drop` drops it):
 * routers that quote only RFC 792's IP header + 8 bytes are still met
 * (RFC 1812 asks for 576 bytes), and dropping their "fragmentation
 * needed" would black-hole path MTU discovery over every tunnel crossing
 * them, large packets vanishing with no error. What it lets through is an
 * error naming a tunnel endpoint pair, which the endpoint's own stack
 * still checks against its tunnels before it acts on it. */
static __always_inline int ms_icmp_error(struct __sk_buff *skb, struct ms_pkt *p, __u64 now)
{
    struct ms_quoted q = {};
    __u32 quote_end = p->payload_off + p->payload_len;
    if (ms_quote_ip(skb, p->payload_off, quote_end, p->proto == IPPROTO_ICMPV6, &q) != MS_QUOTE_OK)
        return DROP_ICMP_UNMATCHED;
    if (ms_quote_tracked(&q, now))
        return PASS_ICMP_RELATED;
    if (!ms_quote_is_tunnel(&q))
        return DROP_ICMP_UNMATCHED;
    __u32 z = 0;
    struct ms_config *cfg = ms_config.lookup(&z);
    if (cfg && (cfg->flags & MS_CFG_TUN_NO_DECAP))
        return DROP_ICMP_UNMATCHED;
    int r = ms_quote_tunnel(skb, &q, quote_end);
    if (r == MS_QUOTE_SHORT)
        return cfg && (cfg->flags & MS_CFG_TUN_SHORT_QUOTE_DROP) ? DROP_ICMP_TUNNEL_QUOTE
                                                                 : PASS_ICMP_TUNNEL_QUOTE;
    if (r != MS_QUOTE_OK)
        return DROP_ICMP_UNMATCHED;
    return ms_quote_tracked(&q, now) ? PASS_ICMP_RELATED : DROP_ICMP_UNMATCHED;
}

#endif
