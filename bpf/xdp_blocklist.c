/* SPDX-License-Identifier: GPL-2.0 */
/* microseg XDP blocklist: drop packets from blocked prefixes at the
 * driver, before the TC fast path does any session work.
 *
 * Per packet: parse Ethernet (and up to MS_BL_MAX_VLAN tags), take the IPv4
 * or IPv6 source address (IPv4 as IPv4-mapped IPv6), then
 *   1. pre-check (builds with a bloom filter): mask the source to each
 *      distinct prefix length of the live list (at most MS_BL_MAX_LENS for
 *      its family) and test each masked key in the bloom filter. All
 *      "absent": not blocked, pass without touching the LPM -- the common
 *      case for legitimate traffic. A bloom filter never says absent for a
 *      key it holds, so this never passes a blocked source.
 *   2. the LPM trie of blocked prefixes decides (the truth): drop on a hit.
 * Every outcome is counted by reason (ms_bl_counters).
 *
 * Maps and layouts: bpf/lib/blocklist.h. Compiled by BCC at load time
 * (datapath/blocklist.py), with -DMS_BL_BLOOM_FD=<fd> or -DMS_BL_NO_BLOOM.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#include "blocklist.h"

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#define MS_BL_ETH_P_QINQ1 0x9100 /* pre-standard QinQ, as parse.h accepts */

struct ms_bl_vlan_hdr {
    __be16 tci;
    __be16 encap_proto;
};

static __always_inline int bl_finish(struct xdp_md *ctx, __u32 reason)
{
    struct ms_bl_counter *c = ms_bl_counters.lookup(&reason);
    if (c) {
        c->packets++;
        c->bytes += ctx->data_end - ctx->data;
    }
    return ((MS_BL_DROPMASK >> (reason & 63)) & 1) ? XDP_DROP : XDP_PASS;
}

#ifndef MS_BL_NO_BLOOM
/* dst = src masked to its first plen bits (plen 0..128). Word by word in
 * network order; the address is 4-byte aligned in struct ms_bl_key. */
static __always_inline void bl_mask(struct ms_bl_key *dst, const struct ms_bl_key *src, __u32 plen)
{
    const __u32 *s = (const __u32 *)src->addr;
    __u32 *d = (__u32 *)dst->addr;

    dst->prefixlen = plen;
#pragma unroll
    for (int w = 0; w < 4; w++) {
        int bits = (int)plen - 32 * w;
        __u32 m;
        if (bits <= 0)
            m = 0;
        else if (bits >= 32)
            m = 0xffffffff;
        else
            m = 0xffffffffU << (32 - bits);
        d[w] = s[w] & bpf_htonl(m);
    }
}

/* 1: some masked source may be in the bloom filter (the LPM must decide);
 * 0: none is, so the source is in no blocked prefix. */
static __always_inline int bl_bloom_maybe(void *bloom, const struct ms_bl_meta *meta,
                                          __u32 fam, const struct ms_bl_key *src)
{
    struct ms_bl_key probe;
    __u32 n = meta->nlens[fam & 1];

#pragma unroll
    for (int i = 0; i < MS_BL_MAX_LENS; i++) {
        if (i >= n)
            break;
        __u32 plen = meta->lens[(fam & 1) * MS_BL_MAX_LENS + i];
        if (plen > 128)
            return 1;   /* never written so by user space; let the LPM decide */
        bl_mask(&probe, src, plen);
        if (bpf_map_peek_elem(bloom, &probe) == 0)
            return 1;
    }
    return 0;
}
#endif

int xdp_blocklist(struct xdp_md *ctx)
{
    __u32 z = 0;
    struct ms_bl_state *st = ms_bl_state.lookup(&z);
    if (!st || st->gen == 0)
        return bl_finish(ctx, BL_PASS_NO_LIST);
    __u32 slot = st->slot & 1;

    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return bl_finish(ctx, BL_DROP_MALFORMED);

    __be16 proto = eth->h_proto;
    __u32 off = sizeof(*eth);
#pragma unroll
    for (int i = 0; i < MS_BL_MAX_VLAN; i++) {
        if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD) &&
            proto != bpf_htons(MS_BL_ETH_P_QINQ1))
            break;
        struct ms_bl_vlan_hdr *vh = data + off;
        if ((void *)(vh + 1) > data_end)
            return bl_finish(ctx, BL_DROP_MALFORMED);
        proto = vh->encap_proto;
        off += sizeof(*vh);
    }
    if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD) ||
        proto == bpf_htons(MS_BL_ETH_P_QINQ1))
        return bl_finish(ctx, BL_DROP_MALFORMED);   /* the fast path drops these too */

    struct ms_bl_key key;
    __u32 *a = (__u32 *)key.addr;
    key.prefixlen = 128;
    if (proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = data + off;
        if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5)
            return bl_finish(ctx, BL_DROP_MALFORMED);
        a[0] = 0;
        a[1] = 0;
        a[2] = bpf_htonl(0xffff);
        a[3] = ip->saddr;
    } else if (proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = data + off;
        if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
            return bl_finish(ctx, BL_DROP_MALFORMED);
        __builtin_memcpy(key.addr, &ip6->saddr, 16);
    } else {
        return bl_finish(ctx, BL_PASS_NOT_IP);
    }

    __u32 reason_miss = BL_PASS_NOT_BLOCKED;
#ifndef MS_BL_NO_BLOOM
    struct ms_bl_meta *meta = ms_bl_meta.lookup(&slot);
    if (meta) {
        __u32 fam = (a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff))
                    ? MS_BL_FAM_V4MAPPED : MS_BL_FAM_V6;
        __u32 want = fam == MS_BL_FAM_V4MAPPED ? MS_BL_F_BLOOM_V4 : MS_BL_F_BLOOM_V6;
        if (meta->flags & want) {
            void *bloom = bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, MS_BL_BLOOM_FD), &slot);
            if (bloom) {
                if (!bl_bloom_maybe(bloom, meta, fam, &key))
                    return bl_finish(ctx, BL_PASS_BLOOM_MISS);
                reason_miss = BL_PASS_BLOOM_FALSE_HIT;
            }
        }
    }
#endif

    void *lpm = ms_bl_lpm.lookup(&slot);
    if (!lpm)
        return bl_finish(ctx, BL_PASS_NO_LIST);   /* a slot made live without its trie: a bug */
    if (bpf_map_lookup_elem(lpm, &key))
        return bl_finish(ctx, BL_DROP_BLOCKED);
    return bl_finish(ctx, reason_miss);
}
