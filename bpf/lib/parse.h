/* SPDX-License-Identifier: GPL-2.0 */
/* Ethernet / 802.1Q / IPv4 / IPv6 / TCP / UDP / ICMP parsing.
 *
 * ms_parse() fills struct ms_pkt or returns the reason the packet cannot be
 * parsed. Every header is bounds-checked against the packet before it is
 * read, and every length field is checked against the bytes that are really
 * there, so a truncated or lying header gets a reason instead of a mis-parse.
 */
#ifndef MS_PARSE_H
#define MS_PARSE_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/icmpv6.h>

#include "reasons.h"
#include "maps.h"

/* Three stacked tags: 802.1ad QinQ plus one more, as real captures show
 * (the corpus has a triple-tagged trace); more is treated as an attack on
 * the parser. Tags the NIC or veth offloaded into skb->vlan_tci are not in
 * the packet data and do not count. */
#define MS_MAX_VLAN 3
/* Extension headers walked before giving up. RFC 8200 section 4.1 expects at
 * most one of each kind (destination options twice), i.e. 6 in a legal
 * packet; 8 leaves room and bounds the verifier's loop. */
#define MS_MAX_IPV6_EXT 8
/* Bytes made linear with bpf_skb_pull_data when the headers are not: enough
 * for Ethernet, 3 VLAN tags, IPv6 with extension headers and a TCP header
 * with options. */
#define MS_PULL_LEN 256
/* Largest offset of an L4 header the parser follows (IPv4 options make at
 * most 60 bytes of IP header; IPv6 extension chains past this are refused
 * as too deep). Bounds variable packet offsets for the verifier. */
#define MS_MAX_L3_HDR 512

#define MS_FRAG_NONE  0
#define MS_FRAG_FIRST 1
#define MS_FRAG_LATER 2
/* Or'ed into a payload record's frag (struct ms_insp_hdr, bpf/lib/maps.h)
 * when more fragments follow: the slow path reassembles up to the last. */
#define MS_FRAG_MORE  0x80

#define MS_ETH_P_PPP_SES 0x8864   /* PPPoE session stage */
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#define MS_ETH_P_QINQ1 0x9100 /* pre-standard QinQ, still seen */

struct ms_vlan_hdr {
    __be16 tci;
    __be16 encap_proto;
};

/* IPv6 extension header common prefix (RFC 8200 section 4). */
struct ms_ipv6_opt_hdr {
    __u8 nexthdr;
    __u8 hdrlen;
};

/* struct ms_pkt, what the rest of the fast path knows about a packet,
 * is in maps.h: it travels between tail-call stages in a per-CPU map. */

/* dst: a 16-byte address field at a 4-byte aligned offset of its struct
 * (struct ms_pkt, icmp.h struct ms_quoted), written as four words: through
 * a byte pointer clang stored it byte by byte, 16 stores and the shifts to
 * split the address, twice per IPv4 packet (bpftool prog dump xlated). */
static __always_inline void ms_v4_mapped(__u8 *dst, __be32 addr)
{
    __u32 *w = (__u32 *)dst;
    w[0] = 0;
    w[1] = 0;
    w[2] = bpf_htonl(0xffff);
    w[3] = addr;
}

static __always_inline int ms_parse_l4(void *data, void *data_end,
                                       struct ms_pkt *p, __u32 l4_len)
{
    __u32 off = p->l4_off;

    /* Only an IPv6 chain of long extension headers gets here. */
    if (off > MS_MAX_L3_HDR)
        return DROP_IPV6_EXT_TOO_DEEP;

    if (p->frag == MS_FRAG_LATER)
        return PASS_FRAGMENT;

    if (p->proto == IPPROTO_TCP) {
        struct tcphdr *th = data + off;
        if ((void *)(th + 1) > data_end || l4_len < sizeof(*th))
            return DROP_TCP_TRUNCATED;
        __u32 doff = th->doff * 4;
        if (doff < sizeof(*th) || doff > l4_len)
            return DROP_TCP_BAD_DOFF;
        p->sport = th->source;
        p->dport = th->dest;
        p->seq = bpf_ntohl(th->seq);
        p->ack_seq = bpf_ntohl(th->ack_seq);
        p->window = bpf_ntohs(th->window);
        p->tcp_flags = ((__u8 *)th)[13];
        p->payload_off = off + doff;
        p->payload_len = l4_len - doff;
        return PASS_FORWARD;
    }
    if (p->proto == IPPROTO_UDP) {
        struct udphdr *uh = data + off;
        if ((void *)(uh + 1) > data_end || l4_len < sizeof(*uh))
            return DROP_UDP_TRUNCATED;
        __u32 ulen = bpf_ntohs(uh->len);
        /* The UDP length covers the whole datagram; a first fragment holds
         * only part of it, so only the lower bound can be checked there. */
        if (ulen < sizeof(*uh) || (ulen > l4_len && p->frag != MS_FRAG_FIRST))
            return DROP_UDP_BAD_LENGTH;
        p->sport = uh->source;
        p->dport = uh->dest;
        p->payload_off = off + sizeof(*uh);
        p->payload_len = (ulen < l4_len ? ulen : l4_len) - sizeof(*uh);
        return PASS_FORWARD;
    }
    if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) {
        /* type, code, checksum and the 4-byte rest (echo id + sequence). */
        __u8 *ih = data + off;
        if ((void *)(ih + 8) > data_end || l4_len < 8)
            return DROP_ICMP_TRUNCATED;
        p->icmp_type = ih[0];
        p->icmp_code = ih[1];
        __builtin_memcpy(&p->sport, ih + 4, 2);
        p->dport = p->sport;
        p->payload_off = off + 8;
        p->payload_len = l4_len - 8;
        return PASS_FORWARD;
    }
    /* The protocol's own header and data: where a tunnel's header is. */
    p->payload_off = off;
    p->payload_len = l4_len;
    return PASS_OTHER_L4;
}

static __always_inline int ms_ipv6_is_ext(__u8 nh)
{
    return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
           nh == IPPROTO_FRAGMENT || nh == IPPROTO_AH;
}

static __always_inline int ms_parse_ipv6(void *data, void *data_end,
                                         struct ms_pkt *p)
{
    __u32 off = p->l3_off;
    struct ipv6hdr *ip6 = data + off;

    if ((void *)(ip6 + 1) > data_end)
        return DROP_IPV6_TRUNCATED;
    if (ip6->version != 6)
        return DROP_IPV6_BAD_HEADER;
    __u32 plen = bpf_ntohs(ip6->payload_len);
    if (plen == 0)
        return DROP_IPV6_BAD_HEADER;
    if (off + sizeof(*ip6) + plen > p->len)
        return DROP_IPV6_TRUNCATED;

    p->family = 6;
    __builtin_memcpy(p->saddr, &ip6->saddr, 16);
    __builtin_memcpy(p->daddr, &ip6->daddr, 16);

    __u8 nexthdr = ip6->nexthdr;
    __u32 ext = 0;  /* bytes of extension headers so far */
    off += sizeof(*ip6);

    /* Walk to the L4 header; the L4 parser is reached from one place
     * after the loop, so the verifier sees it once, not once per step. */
#pragma unroll
    for (int i = 0; i < MS_MAX_IPV6_EXT; i++) {
        __u32 hlen;
        if (!ms_ipv6_is_ext(nexthdr))
            break;
        if (off + ext > MS_MAX_L3_HDR)
            return DROP_IPV6_EXT_TOO_DEEP;
        __u8 *h = data + off + ext;
        if ((void *)(h + 8) > data_end || ext + 8 > plen)
            return DROP_IPV6_EXT_TRUNCATED;
        if (nexthdr == IPPROTO_FRAGMENT) {
            /* RFC 8200 4.5: offset in 8-octet units in the top 13 bits. */
            __u16 fo = ((__u16)h[2] << 8 | h[3]);
            p->frag_off = fo >> 3;
            p->frag_id = ((__u32)h[4] << 24) | ((__u32)h[5] << 16) | ((__u32)h[6] << 8) | h[7];
            if (fo & 0xfff8) {
                /* What follows a non-first fragment's header is the middle
                 * of the fragmentable part, not a header: stop walking. */
                p->frag = MS_FRAG_LATER;
                p->frag_mf = fo & 1;
                p->proto = h[0];
                p->l4_off = off + ext + 8;
                p->payload_off = p->l4_off;
                p->payload_len = plen - ext - 8;
                return PASS_FRAGMENT;
            }
            if (fo & 1) {
                p->frag = MS_FRAG_FIRST;
                p->frag_mf = 1;
            }
            hlen = 8;
        } else if (nexthdr == IPPROTO_AH) {
            hlen = ((__u32)h[1] + 2) * 4;   /* RFC 4302: 4-octet units, minus 2 */
        } else {
            hlen = ((__u32)h[1] + 1) * 8;   /* RFC 8200: 8-octet units, minus 1 */
        }
        if (ext + hlen > plen)
            return DROP_IPV6_EXT_TRUNCATED;
        nexthdr = h[0];
        ext += hlen;
    }
    if (ms_ipv6_is_ext(nexthdr))
        return DROP_IPV6_EXT_TOO_DEEP;
    p->proto = nexthdr;
    p->l4_off = off + ext;
    return ms_parse_l4(data, data_end, p, plen - ext);
}

static __always_inline int ms_parse_ipv4(void *data, void *data_end,
                                         struct ms_pkt *p)
{
    __u32 off = p->l3_off;
    struct iphdr *ip = data + off;

    if ((void *)(ip + 1) > data_end)
        return DROP_IPV4_TRUNCATED;
    if (ip->version != 4 || ip->ihl < 5)
        return DROP_IPV4_BAD_HEADER;
    __u32 hlen = ip->ihl * 4;
    __u32 tot = bpf_ntohs(ip->tot_len);
    if (tot < hlen)
        return DROP_IPV4_BAD_HEADER;
    /* Options must be in the linear data; the total length may exceed
     * what is linear but not what the packet holds (Ethernet padding makes
     * the packet longer than tot_len, which is fine). */
    if (data + off + hlen > data_end || off + tot > p->len)
        return DROP_IPV4_TRUNCATED;

    p->family = 4;
    ms_v4_mapped(p->saddr, ip->saddr);
    ms_v4_mapped(p->daddr, ip->daddr);
    p->proto = ip->protocol;

    __u16 fo = bpf_ntohs(ip->frag_off);
    p->frag_off = fo & 0x1fff;
    p->frag_id = bpf_ntohs(ip->id);
    p->frag_mf = (fo & 0x2000) != 0;
    if (fo & 0x1fff)
        p->frag = MS_FRAG_LATER;
    else if (fo & 0x2000)
        p->frag = MS_FRAG_FIRST;

    p->l4_off = off + hlen;
    p->payload_off = p->l4_off;    /* a later fragment's data; L4 parsing refines it */
    p->payload_len = tot - hlen;   /* a later fragment's data; L4 parsing refines it */
    return ms_parse_l4(data, data_end, p, tot - hlen);
}

#include "tunnel.h"

/* True when an untagged IPv4 or IPv6 frame carries TCP or UDP right after
 * its IP header and the headers ms_parse reads in place (Ethernet, IP, the
 * fixed TCP or UDP header) are already linear. A segment from a local
 * socket, or one a NIC's GRO built, has its headers linear and its payload
 * in page fragments: pulling MS_PULL_LEN bytes of it (bpf_skb_pull_data)
 * copied payload into the head on every such packet, and for the clone TCP
 * keeps for retransmission reallocated the head first. Anything else (VLAN
 * tags, IPv6 extension headers, ICMP errors whose quote icmp.h reads in
 * place) is pulled as before; tunnel.h pulls what it reads itself. TCP
 * options are read with bpf_skb_load_bytes, payload too (l7.h, inspect.h),
 * so neither needs to be linear. */
static __always_inline int ms_headers_linear(void *data, void *data_end)
{
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return 0;
    __u8 l4;
    void *l4h;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > data_end)
            return 0;
        l4 = ip->protocol;
        l4h = (void *)ip + (ip->ihl & 0xf) * 4;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > data_end)
            return 0;
        l4 = ip6->nexthdr;
        l4h = (void *)(ip6 + 1);
    } else {
        return 0;
    }
    if (l4 == IPPROTO_TCP)
        return l4h + sizeof(struct tcphdr) <= data_end;
    if (l4 == IPPROTO_UDP)
        return l4h + sizeof(struct udphdr) <= data_end;
    return 0;
}

/* What the established lane reads of the common frame (ms_parse_tcp4). */
struct ms_seg4 {
    __be32 saddr;
    __be32 daddr;
    __u32  ports;         /* source and destination port as in the header: one word */
    __u32  seq;           /* host order */
    __u32  ack_seq;
    __u32  payload_len;
    __u32  len;           /* skb->len */
    __u16  window;        /* host order, unscaled */
    __u16  payload_off;   /* first byte of the TCP payload (the lane's first-payload check, l7.h) */
    __u8   flags;
};

/* The common frame, an untagged IPv4 packet without options carrying a TCP
 * segment, not a fragment, parsed into sg (registers, once inlined) for
 * the established lane (fastpath.c ms_entry_reason), before the scratch
 * is looked up and cleared. Returns 1 only when ms_parse would find the
 * same fields and PASS_FORWARD: every check ms_parse makes on such a
 * frame is made here (the headers linear, so ms_parse pulls nothing; IP
 * version and header length, the total length against the packet, TCP
 * header bounds, data offset against the segment; TCP is no tunnel). Any
 * other frame, or one failing a check, returns 0 and ms_parse decides it
 * from the start, reason included. */
static __always_inline int ms_parse_tcp4(struct __sk_buff *skb, struct ms_seg4 *sg)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct iphdr *ip = data + sizeof(struct ethhdr);
    struct tcphdr *th = (void *)(ip + 1);

    if ((void *)(th + 1) > data_end)
        return 0;
    /* h_proto read as one 16-bit load: struct ethhdr is packed, and clang
     * reads its fields byte by byte. */
    if (*(__be16 *)(data + offsetof(struct ethhdr, h_proto)) != bpf_htons(ETH_P_IP) ||
        *(__u8 *)ip != 0x45 ||                         /* version 4, no options */
        ip->protocol != IPPROTO_TCP || (ip->frag_off & bpf_htons(0x3fff)))   /* MF, offset */
        return 0;
    __u32 tot = bpf_ntohs(ip->tot_len);
    __u32 len = skb->len;
    if (tot < sizeof(*ip) + sizeof(*th) || sizeof(struct ethhdr) + tot > len)
        return 0;
    __u32 l4_len = tot - sizeof(*ip);
    __u32 doff = th->doff * 4;
    if (doff < sizeof(*th) || doff > l4_len)
        return 0;
    sg->saddr = ip->saddr;
    sg->daddr = ip->daddr;
    __builtin_memcpy(&sg->ports, &th->source, sizeof(sg->ports));
    sg->seq = bpf_ntohl(th->seq);
    sg->ack_seq = bpf_ntohl(th->ack_seq);
    sg->window = bpf_ntohs(th->window);
    sg->flags = ((__u8 *)th)[13];
    sg->payload_len = l4_len - doff;
    sg->payload_off = sizeof(struct ethhdr) + sizeof(*ip) + doff;
    sg->len = len;
    return 1;
}

/* ms_parse for a frame ms_parse_tcp4 accepted (untagged: nothing to pull
 * or skip; TCP: no tunnel): the same fields, from the same IPv4 parser. */
static __always_inline int ms_parse_tcp4_pkt(struct __sk_buff *skb, struct ms_pkt *p)
{
    p->len = skb->len;
    p->l3_off = sizeof(struct ethhdr);
    return ms_parse_ipv4((void *)(long)skb->data, (void *)(long)skb->data_end, p);
}

/* Parse from the Ethernet header. Returns PASS_FORWARD when the packet
 * parsed fully, another reason otherwise. A tunnel is decapsulated
 * (tunnel.h): p then describes the inner packet. */
static __always_inline int ms_parse(struct __sk_buff *skb, struct ms_pkt *p)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;

    p->len = skb->len;
    if (data + MS_PULL_LEN > data_end && skb->len > (__u32)(data_end - data) &&
        !ms_headers_linear(data, data_end)) {
        bpf_skb_pull_data(skb, skb->len < MS_PULL_LEN ? skb->len : MS_PULL_LEN);
        data = (void *)(long)skb->data;
        data_end = (void *)(long)skb->data_end;
    }

    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return DROP_L2_TRUNCATED;

    __be16 proto = eth->h_proto;
    __u32 off = sizeof(*eth);

#pragma unroll
    for (int i = 0; i < MS_MAX_VLAN; i++) {
        if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD) &&
            proto != bpf_htons(MS_ETH_P_QINQ1))
            break;
        struct ms_vlan_hdr *vh = data + off;
        if ((void *)(vh + 1) > data_end)
            return DROP_L2_TRUNCATED;
        if (p->vlan_depth == 0)
            p->vlan_outer = bpf_ntohs(vh->tci) & 0x0fff;
        p->vlan_depth++;
        proto = vh->encap_proto;
        off += sizeof(*vh);
    }
    if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD) ||
        proto == bpf_htons(MS_ETH_P_QINQ1))
        return DROP_VLAN_TOO_DEEP;

    if (proto == bpf_htons(MS_ETH_P_PPP_SES)) {
        /* PPPoE session (RFC 2516): 6-byte PPPoE header, then the 2-byte
         * PPP protocol (RFC 1661); IPv4 and IPv6 are tracked like any other
         * packet, PPP control traffic passes as non-IP. */
        __u8 *ph = data + off;
        if ((void *)(ph + 8) > data_end)
            return DROP_L2_TRUNCATED;
        __u16 ppp = ((__u16)ph[6] << 8) | ph[7];
        off += 8;
        if (ppp == 0x0021)
            proto = bpf_htons(ETH_P_IP);
        else if (ppp == 0x0057)
            proto = bpf_htons(ETH_P_IPV6);
        else
            return PASS_NOT_IP;
    }

    p->l3_off = off;
    int reason;
    if (proto == bpf_htons(ETH_P_IP))
        reason = ms_parse_ipv4(data, data_end, p);
    else if (proto == bpf_htons(ETH_P_IPV6))
        reason = ms_parse_ipv6(data, data_end, p);
    else
        return PASS_NOT_IP;
    return ms_tun_decap(skb, p, reason);
}

#endif
