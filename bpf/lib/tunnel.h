/* SPDX-License-Identifier: GPL-2.0 */
/* Tunnel decapsulation: IPIP and IPv6 in IP (IP protocols 4 and 41, over
 * IPv4 or IPv6 alike), GRE (IP protocol 47, RFC 2784 with RFC 2890's key
 * and sequence number; IPv4, IPv6 or Ethernet inside), VXLAN (UDP 4789,
 * RFC 7348) and GENEVE (UDP 6081, RFC 8926; options skipped by their
 * length; Ethernet or IP inside).
 *
 * ms_parse parses the outer packet as any other; when what it found is a
 * tunnel (ms_tun_candidate: a few compares, all an untunnelled packet
 * pays), ms_tun_decap parses the inner packet over it, so the inner flow
 * is the session: tracked, policed and inspected like any other, its
 * payload offset counting the outer headers. The outermost addresses are
 * kept in ms_tun_outer for `tunnels.policy: outer`.
 *
 * What is not decapsulated stays the flow it is on the wire (the GRE or
 * UDP packet, policy deciding): a fragmented outer packet (its inner
 * headers may be in another fragment), PPTP's GRE version 1 (a PPP
 * session), GRE or GENEVE carrying another protocol (MPLS, ERSPAN, ...),
 * and an inner Ethernet frame that is not IP (ARP of the overlay). A
 * header that is cut short, runs past its outer packet, or has fields its
 * RFC says a receiver discards is DROP_TUNNEL_MALFORMED, as the kernel's
 * own tunnel drivers drop it; tunnels nested past MS_TUN_MAX_DEPTH are
 * DROP_TUNNEL_TOO_DEEP. The GRE checksum is not verified (the inner
 * packet's own checksums protect what the endpoint reads).
 *
 * Included by parse.h, whose IP parsers it runs on the inner packet.
 */
#ifndef MS_TUNNEL_H
#define MS_TUNNEL_H

/* Tunnels decapsulated in one packet. Two covers an overlay carried over
 * another tunnel (VXLAN or GENEVE inside a GRE or IPsec-less 6in4 link); a
 * third level is no design anyone deploys but costs a parse per level, so
 * more is refused as an evasion attempt, as VLAN stacks past MS_MAX_VLAN are. */
#define MS_TUN_MAX_DEPTH 2
/* Largest offset of an inner IP header: two levels of outer IPv6 (40),
 * UDP (8), GENEVE with its most options (8 + 252) and Ethernet with a tag
 * (18) fit with room; it also keeps the inner L4 header within the
 * parser's MS_MAX_L3_HDR and the verifier's packet offsets bounded. */
#define MS_TUN_MAX_INNER_OFF 400
/* Bytes made linear when a tunnel is found and its inner headers may lie
 * past the part ms_parse pulled (MS_PULL_LEN): the deepest inner IP header
 * plus an IPv6 header with extensions and a TCP header with options. */
#define MS_TUN_PULL_LEN 640

#define MS_UDP_PORT_VXLAN  4789   /* IANA, RFC 7348 */
#define MS_UDP_PORT_GENEVE 6081   /* IANA, RFC 8926 */
#define MS_ETH_P_TEB       0x6558 /* transparent Ethernet bridging (GRE, GENEVE) */

#define MS_GRE_CSUM    0x8000
#define MS_GRE_ROUTING 0x4000     /* RFC 1701 routing, deprecated by RFC 2784 */
#define MS_GRE_KEY     0x2000     /* RFC 2890 */
#define MS_GRE_SEQ     0x1000     /* RFC 2890 */
/* RFC 2784 2.3: a receiver discards a packet with any of bits 1-5 set
 * unless it implements RFC 1701; bits 2 and 3 are RFC 2890's key and
 * sequence, which this one does, leaving routing, strict source route and
 * the top recursion bit. Bits 6-12 are ignored on receipt. */
#define MS_GRE_REJECT  0x4c00
#define MS_GRE_VERSION 0x0007
#define MS_GRE_V1_PPTP 1          /* RFC 2637 enhanced GRE */
#define MS_VXLAN_FLAG_I 0x08      /* RFC 7348 5: the VNI is valid */

/* ms_tun_header's answers besides a reason: where the inner packet is. */
#define MS_TUN_STOP 0             /* not decapsulated: the current level is the flow */
#define MS_TUN_IP4  1
#define MS_TUN_IP6  2
/* The header runs past its packet's end (or the frame's): a packet's is
 * DROP_TUNNEL_MALFORMED; in an ICMP error's quote (icmp.h) it may be
 * where the quote stops, not where the packet did. */
#define MS_TUN_CUT  3

/* The tunnels opened: UDP to these ports, these IP protocols. */
static __always_inline int ms_tun_udp_port(__be16 dport)
{
    return dport == bpf_htons(MS_UDP_PORT_VXLAN) || dport == bpf_htons(MS_UDP_PORT_GENEVE);
}

static __always_inline int ms_tun_ip_proto(__u8 proto)
{
    return proto == IPPROTO_IPIP || proto == IPPROTO_IPV6 || proto == IPPROTO_GRE;
}

/* Whether the level just parsed carries a tunnel to decapsulate. The UDP
 * test comes first: it is all a tracked TCP or UDP packet costs. */
static __always_inline int ms_tun_candidate(const struct ms_pkt *p, int reason)
{
    if (p->frag != MS_FRAG_NONE)
        return 0;
    if (reason == PASS_FORWARD)
        return p->proto == IPPROTO_UDP && ms_tun_udp_port(p->dport);
    return reason == PASS_OTHER_L4 && ms_tun_ip_proto(p->proto);
}

static __always_inline int ms_tun_ethertype_ip(__u16 et)
{
    return et == ETH_P_IP ? MS_TUN_IP4 : et == ETH_P_IPV6 ? MS_TUN_IP6 : MS_TUN_STOP;
}

/* An inner Ethernet frame at *off (one 802.1Q tag allowed: a tenant VLAN
 * carried whole; the TPIDs the outer parse takes, 0x9100 included),
 * ending at ``end``: *off moves to its IP header. */
static __always_inline int ms_tun_eth(void *data, void *data_end, __u32 *off, __u32 end)
{
    __u32 o = *off;
    if (o > MS_TUN_MAX_INNER_OFF)
        return DROP_TUNNEL_TOO_DEEP;
    __u8 *e = data + o;
    if ((void *)(e + 14) > data_end || o + 14 > end)
        return MS_TUN_CUT;
    __u16 et = ((__u16)e[12] << 8) | e[13];
    o += 14;
    if (et == ETH_P_8021Q || et == ETH_P_8021AD || et == MS_ETH_P_QINQ1) {
        if ((void *)(e + 18) > data_end || o + 4 > end)
            return MS_TUN_CUT;
        et = ((__u16)e[16] << 8) | e[17];
        o += 4;
    }
    *off = o;
    return ms_tun_ethertype_ip(et);
}

/* The tunnel header at ``start`` (the payload of a candidate of protocol
 * ``proto``, UDP to ``dport``), its packet ending at ``end``: MS_TUN_IP4 or
 * MS_TUN_IP6 with *off at the inner IP header, MS_TUN_STOP, MS_TUN_CUT or
 * a reason. Also reads the tunnel packets an ICMP error quotes (icmp.h). */
static __always_inline int ms_tun_header(void *data, void *data_end, __u8 proto, __be16 dport,
                                         __u32 start, __u32 end, __u32 *off)
{
    if (start > MS_TUN_MAX_INNER_OFF)
        return DROP_TUNNEL_TOO_DEEP;
    *off = start;
    if (proto == IPPROTO_IPIP)
        return MS_TUN_IP4;
    if (proto == IPPROTO_IPV6)
        return MS_TUN_IP6;

    __u8 *h = data + start;
    if (proto == IPPROTO_GRE) {
        if ((void *)(h + 4) > data_end || start + 4 > end)
            return MS_TUN_CUT;
        __u16 fl = ((__u16)h[0] << 8) | h[1];
        __u16 et = ((__u16)h[2] << 8) | h[3];
        if ((fl & MS_GRE_VERSION) == MS_GRE_V1_PPTP)
            return MS_TUN_STOP;
        if ((fl & MS_GRE_VERSION) || (fl & MS_GRE_REJECT))
            return DROP_TUNNEL_MALFORMED;
        __u32 hlen = 4 + ((fl & MS_GRE_CSUM) ? 4 : 0) + ((fl & MS_GRE_KEY) ? 4 : 0) +
                     ((fl & MS_GRE_SEQ) ? 4 : 0);
        if (start + hlen > end)
            return MS_TUN_CUT;
        *off = start + hlen;
        if (et == MS_ETH_P_TEB)
            return ms_tun_eth(data, data_end, off, end);
        return ms_tun_ethertype_ip(et);
    }
    /* UDP: VXLAN or GENEVE, an 8-byte header either way. */
    if ((void *)(h + 8) > data_end || start + 8 > end)
        return MS_TUN_CUT;
    if (dport == bpf_htons(MS_UDP_PORT_VXLAN)) {
        if (!(h[0] & MS_VXLAN_FLAG_I))
            return DROP_TUNNEL_MALFORMED;
        *off = start + 8;
        return ms_tun_eth(data, data_end, off, end);
    }
    /* GENEVE: version 0 only (RFC 8926 3.4: a receiver drops another). */
    if (h[0] >> 6)
        return DROP_TUNNEL_MALFORMED;
    __u32 hlen = 8 + (h[0] & 0x3f) * 4;
    __u16 et = ((__u16)h[2] << 8) | h[3];
    if (start + hlen > end)
        return MS_TUN_CUT;
    *off = start + hlen;
    if (et == MS_ETH_P_TEB)
        return ms_tun_eth(data, data_end, off, end);
    return ms_tun_ethertype_ip(et);
}

/* Make linear the bytes where inner headers may lie, past the part
 * ms_parse pulled (MS_PULL_LEN). Packet pointers must be read again after. */
static __always_inline void ms_tun_pull(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    if (data + MS_TUN_PULL_LEN > data_end && skb->len > (__u32)(data_end - data))
        bpf_skb_pull_data(skb, skb->len < MS_TUN_PULL_LEN ? skb->len : MS_TUN_PULL_LEN);
}

/* Decapsulate what ms_parse found (``reason`` for the outer packet): the
 * reason for the innermost packet, which p then describes. */
static __always_inline int ms_tun_decap(struct __sk_buff *skb, struct ms_pkt *p, int reason)
{
    if (!ms_tun_candidate(p, reason))
        return reason;
    __u32 z = 0;
    struct ms_config *cfg = ms_config.lookup(&z);
    if (cfg && (cfg->flags & MS_CFG_TUN_NO_DECAP))
        return reason;

    ms_tun_pull(skb);
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;

    /* One IP parse per level, in a loop the verifier walks at most
     * MS_TUN_MAX_DEPTH + 1 times rather than a copy per level. */
#pragma clang loop unroll(disable)
    for (int i = 0; i <= MS_TUN_MAX_DEPTH; i++) {
        __u32 off = 0;
        int r = ms_tun_header(data, data_end, p->proto, p->dport, p->payload_off,
                              p->payload_off + p->payload_len, &off);
        if (r == MS_TUN_STOP)
            return reason;
        if (r != MS_TUN_IP4 && r != MS_TUN_IP6)
            return r == MS_TUN_CUT ? DROP_TUNNEL_MALFORMED : r;
        if (i == MS_TUN_MAX_DEPTH || off > MS_TUN_MAX_INNER_OFF)
            return DROP_TUNNEL_TOO_DEEP;
        if (i == 0) {
            struct ms_tun_outer *o = ms_tun_outer.lookup(&z);
            if (o) {
                __builtin_memcpy(o->saddr, p->saddr, 16);
                __builtin_memcpy(o->daddr, p->daddr, 16);
            }
        }
        __u32 end = p->payload_off + p->payload_len;
        p->tun_depth = i + 1;
        p->l3_off = off;
        p->sport = p->dport = 0;   /* an inner protocol without ports has none */
        /* The inner lengths are checked against the outer packet's end,
         * not the frame's: an inner header may not claim the outer's
         * trailer (p->len is the frame's again for accounting below). */
        p->len = end;
        reason = r == MS_TUN_IP4 ? ms_parse_ipv4(data, data_end, p) : ms_parse_ipv6(data, data_end, p);
        p->len = skb->len;
        if (!ms_tun_candidate(p, reason))
            return reason;
    }
    return DROP_TUNNEL_TOO_DEEP;
}

/* The addresses policy decides a tunnelled flow on (policy.h): under
 * `tunnels.policy: outer` (MS_CFG_TUN_POLICY_OUTER) the outermost packet's
 * replace the inner ones in sa/da, swapped when ``swap`` (the initiator's
 * view of a reply). Ports and protocol stay the inner flow's: a rule names
 * the tunnel's endpoints and the service carried. */
static __always_inline void ms_tun_policy_addrs(__u8 *sa, __u8 *da, __u32 swap)
{
    __u32 z = 0;
    struct ms_config *cfg = ms_config.lookup(&z);
    if (!cfg || !(cfg->flags & MS_CFG_TUN_POLICY_OUTER))
        return;
    struct ms_tun_outer *o = ms_tun_outer.lookup(&z);
    if (!o)
        return;
    __builtin_memcpy(sa, swap ? o->daddr : o->saddr, 16);
    __builtin_memcpy(da, swap ? o->saddr : o->daddr, 16);
}

#endif
