/* SPDX-License-Identifier: GPL-2.0 */
/* L4 policy: the decision for a new flow, from the live generation.
 *
 * Precedence (the same in datapath/policy_tables.py's decide(), which
 * `microseg policy explain` uses):
 *   1. exact overrides (source, destination, source port, destination port,
 *      protocol), then the same with source port "any";
 *   2. rules, by the groups of source and destination (most specific
 *      prefix of each address; an address in no group is the world), in
 *      this fixed order: (source group, destination group), (source
 *      group, any), (any, destination group), (any, any); within each,
 *      the most specific protocol and port match (the longest prefix of
 *      the LPM key in maps.h, found by probing a hash per prefix length);
 *   3. the default of the hook the flow was first seen on.
 * Evaluated once per flow and stored in the session with the generation;
 * a session from an older generation is decided again on its next packet.
 */
#ifndef MS_POLICY_H
#define MS_POLICY_H

#include "maps.h"
/* tunnel.h (through parse.h): the outer addresses of `tunnels.policy: outer` */
#include "parse.h"

/* Live slot and generation, read as one 8-byte word (user space flips
 * both with one write). gen 0: no policy loaded. */
static __always_inline __u64 ms_pol_live(void)
{
    __u32 z = 0;
    struct ms_pol_state *st = ms_pol_state.lookup(&z);
    return st ? *(__u64 *)st : 0;
}
#define MS_POL_SLOT(live) ((__u32)(live) & 1)
#define MS_POL_GEN(live)  ((__u32)((live) >> 32))

/* k->addr = addr with the bits past ``len`` cleared (len 0..128). Word by
 * word in place: no copies on the stack (policy.h runs deep in the TCP
 * stage, whose stack is counted: tests/datapath/test_stack.py). */
static __always_inline void ms_pol_mask(struct ms_lpm_key *k, const __u8 *addr, __u32 len)
{
    __builtin_memcpy(k->addr, addr, 16);
    __u32 *w = (__u32 *)k->addr;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int bits = (int)len - 32 * i;
        if (bits <= 0)
            w[i] = 0;
        else if (bits < 32)
            w[i] &= bpf_htonl(~0u << (32 - bits));
    }
}

/* IPv4-mapped (::ffff:0:0/96)? */
static __always_inline int ms_pol_is_mapped(const __u8 *a)
{
    return !(a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9]) &&
           a[10] == 0xff && a[11] == 0xff;
}

/* A group prefix found: its group; the source's filter kept in sc. */
static __always_inline __u32 ms_pol_group_hit(struct ms_pol_scratch *sc, const struct ms_pol_group *g, int src)
{
    if (src) {
        sc->sbloom[0] = g->bloom[0];
        sc->sbloom[1] = g->bloom[1];
    }
    return g->id;
}

_Static_assert(MS_POL_DIR_BLOCK == 256, "ms_pol_group_dir indexes a block by one address byte");
/* The group of the flow's IPv4-mapped source (src) or destination through
 * the IPv4 direct table (maps.h): the /16's entry, then up to two blocks by
 * the next bytes while the entry says a longer prefix lies inside, then the
 * group's value. The slot and the address are read where they are kept
 * (sc->live, sc->exact), the entry once per lookup: nothing but the table
 * held across the lookups (the TCP stage's stack is counted). */
static __always_inline __u32 ms_pol_group_dir(void *dir, struct ms_pol_scratch *sc, int src)
{
    const __u8 *addr = src ? sc->exact.saddr : sc->exact.daddr;
    sc->idx = ((__u32)addr[12] << 8) | addr[13];
    __u32 *e = bpf_map_lookup_elem(dir, &sc->idx);
    __u32 v = e ? *e : 0;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (v & MS_POL_DIR_NEXT) {
            addr = src ? sc->exact.saddr : sc->exact.daddr;
            sc->idx = MS_POL_DIR_ROOT + (v & ~MS_POL_DIR_NEXT) * MS_POL_DIR_BLOCK + addr[14 + i];
            e = bpf_map_lookup_elem(dir, &sc->idx);
            v = e ? *e : 0;
        }
    }
    /* A next-block entry after the last byte: none (ipv4_dir never writes one). */
    if (!v || (v & MS_POL_DIR_NEXT))
        return MS_GROUP_WORLD;
    sc->gidx = v;
    sc->idx = MS_POL_SLOT(sc->live);
    void *gv = ms_pol_gv.lookup(&sc->idx);
    struct ms_pol_group *g = gv ? bpf_map_lookup_elem(gv, &sc->gidx) : 0;
    return g ? ms_pol_group_hit(sc, g, src) : MS_GROUP_WORLD;
}

/* The group of an address (maps.h: the IPv4 direct table when the slot has
 * one and the address is IPv4-mapped; else the hash probed per prefix
 * length, or the trie, as ms_pol_glen says for the slot and the kind of
 * address).
 * ``src``: the flow's source, whose filter (struct ms_pol_group) goes to
 * sc->sbloom; all ones when the address is in no group (nothing known). */
static __always_inline __u32 ms_pol_group_find(__u32 slot, struct ms_pol_scratch *sc, const __u8 *addr, int src)
{
    struct ms_lpm_key *k = &sc->addr;
    if (src)
        sc->sbloom[0] = sc->sbloom[1] = ~0ULL;
    int mapped = ms_pol_is_mapped(addr);
    if (mapped) {
        /* A direct table in the slot: IPv4 addresses are looked up there. */
        sc->idx = slot;
        void *dir = ms_pol_dir.lookup(&sc->idx);
        if (dir)
            return ms_pol_group_dir(dir, sc, src);   /* addr: sc->exact's (ms_pol_group) */
    }
    sc->idx = slot * 2 + (mapped ? 0 : 1);
    struct ms_pol_glens *gl = ms_pol_glen.lookup(&sc->idx);
    sc->idx = slot;
    void *gh = ms_pol_gh.lookup(&sc->idx);
    if (gl && gh && gl->n != MS_GLENS_LPM) {
#pragma unroll
        for (int i = 0; i < MS_GLENS_MAX; i++) {
            if (i >= gl->n)
                break;
            __u32 len = gl->len[i];
            ms_pol_mask(k, addr, len);
            k->prefixlen = len;
            struct ms_pol_group *g = bpf_map_lookup_elem(gh, k);
            if (g)
                return ms_pol_group_hit(sc, g, src);
        }
        return MS_GROUP_WORLD;
    }
    sc->idx = slot;
    void *grp = ms_pol_grp.lookup(&sc->idx);
    if (!grp)
        return MS_GROUP_WORLD;
    k->prefixlen = 128;
    __builtin_memcpy(k->addr, addr, 16);
    struct ms_pol_group *g = bpf_map_lookup_elem(grp, k);
    return g ? ms_pol_group_hit(sc, g, src) : MS_GROUP_WORLD;
}

/* ms_pol_group_find through this CPU's last resolution of the same kind
 * (maps.h struct ms_pol_scratch gcache), under the live word sc->live (read
 * where it is kept: held in a register across the lookups, it would be
 * spilled to the TCP stage's counted stack). */
static __always_inline __u32 ms_pol_group(struct ms_pol_scratch *sc, const __u8 *addr, int src)
{
    __u32 *c = (__u32 *)sc->gcache[src ? 0 : 1].addr;
    const __u32 *a = (const __u32 *)addr;   /* 4-byte aligned in the scratch */
    if (sc->gcache[src ? 0 : 1].live == sc->live && c[0] == a[0] && c[1] == a[1] && c[2] == a[2] && c[3] == a[3]) {
        if (src) {
            sc->sbloom[0] = sc->gcache[0].bloom[0];
            sc->sbloom[1] = sc->gcache[0].bloom[1];
        }
        return sc->gcache[src ? 0 : 1].group;
    }
    __u32 g = ms_pol_group_find(MS_POL_SLOT(sc->live), sc, addr, src);
    sc->gcache[src ? 0 : 1].live = sc->live;
    c[0] = a[0];
    c[1] = a[1];
    c[2] = a[2];
    c[3] = a[3];
    sc->gcache[src ? 0 : 1].group = g;
    if (src) {
        sc->gcache[0].bloom[0] = sc->sbloom[0];
        sc->gcache[0].bloom[1] = sc->sbloom[1];
    }
    return g;
}

_Static_assert(MS_POL_BLOOM_BITS == 128, "ms_pol_bloom_maybe takes 7-bit positions in two words");
/* May the source group have a rule record for (dg, sc->proto)? No when
 * either of the pair's bits (maps.h, struct ms_pol_group) is clear. */
static __always_inline int ms_pol_bloom_maybe(const struct ms_pol_scratch *sc, __u32 dg)
{
    __u32 h = (dg ^ ((__u32)sc->proto << 24)) * (__u32)MS_POL_BLOOM_MUL;
    __u32 a = h >> 25, b = (h >> 18) & 127;
    return (sc->sbloom[a >> 6] >> (a & 63)) & (sc->sbloom[b >> 6] >> (b & 63)) & 1;
}

/* The most specific rule entry of one pair of groups for the flow's
 * protocol and port (sc->proto, sc->port): the pair's record says which
 * prefix lengths to probe (maps.h); the longest that holds the port's block
 * wins, then the pair's rule for every protocol. Protocol, port, the length
 * bits are read where they are kept, not held in registers: across the
 * lookups they would be spilled to the stack. */
static __always_inline int ms_pol_rule_find(void *rules, struct ms_pol_scratch *sc, __u32 sg, __u32 dg,
                                            struct ms_verdict *v)
{
    struct ms_rule_key *k = &sc->rule;
    __u32 *g = (__u32 *)k->sgroup;     /* 4-byte aligned in the key */
    g[0] = bpf_htonl(sg);
    g[1] = bpf_htonl(dg);
    k->prefixlen = MS_RULE_RECORD;
    k->proto = sc->proto;
    k->port[0] = k->port[1] = 0;
    k->pad = 0;
    struct ms_rule_val *rec = bpf_map_lookup_elem(rules, k);
    if (!rec)
        return 0;
#pragma unroll
    for (int b = 16; b >= 0; b--) {
        if (!(rec->lens & (1u << b)))
            continue;
        __u16 blk = b ? (__u16)(sc->port & (0xffffu << (16 - b))) : 0;
        k->prefixlen = MS_RULE_PREFIX_ANY_PORT + b;
        k->port[0] = blk >> 8;              /* big-endian */
        k->port[1] = blk & 0xff;
        struct ms_rule_val *e = bpf_map_lookup_elem(rules, k);
        if (e) {
            *v = e->v;
            return 1;
        }
    }
    if (!(rec->lens & MS_RULE_HAS_ANY))
        return 0;
    *v = rec->v;
    return 1;
}

/* Decide a flow as seen from its initiator (saddr:sport -> daddr:dport)
 * first seen on hook ``dir``. Writes the verdict and the generation.
 * ``tun``: 0, or for a tunnelled packet 1 + whether saddr/daddr are its
 * destination and source (the initiator's view of a reply): under
 * `tunnels.policy: outer` the outermost addresses, swapped alike, are
 * decided on instead (tunnel.h). */
static __always_inline void ms_policy_eval(const __u8 *saddr, const __u8 *daddr,
                                           __be16 sport, __be16 dport, __u8 proto,
                                           __u32 dir, struct ms_verdict *v, __u32 *gen, __u32 tun)
{
    /* The flow is copied into the scratch first and read from there after:
     * the caller's values need not stay live across the lookups, which
     * would spill them to the counted stack. */
    __u32 z = 0;
    struct ms_pol_scratch *sc = ms_pol_scratch.lookup(&z);
    struct ms_exact_key *ek = sc ? &sc->exact : 0;
    if (ek) {
        __builtin_memcpy(ek->saddr, saddr, 16);
        __builtin_memcpy(ek->daddr, daddr, 16);
        ek->sport = sport;
        ek->dport = dport;
        ek->proto = proto;
        ek->pad[0] = ek->pad[1] = ek->pad[2] = 0;
        if (tun)
            ms_tun_policy_addrs(ek->saddr, ek->daddr, tun - 1);
    }

    __u64 live = ms_pol_live();
    __u32 slot = MS_POL_SLOT(live);

    *gen = MS_POL_GEN(live);
    __builtin_memset(v, 0, sizeof(*v));
    if (*gen == 0)
        return;   /* POL_NONE */
    if (!sc || !ek) {
        v->action = POL_DENY;
        return;
    }
    /* No overrides: the slot holds no table (policy_maps.py), no lookups. */
    void *exact = ms_pol_exact.lookup(&slot);
    if (exact) {
        struct ms_verdict *hit = bpf_map_lookup_elem(exact, ek);
        if (!hit) {
            ek->sport = 0;
            hit = bpf_map_lookup_elem(exact, ek);
        }
        if (hit) {
            *v = *hit;
            return;
        }
    }

    void *rules = ms_pol_rule.lookup(&slot);
    if (rules) {
        sc->live = live;
        sc->sgroup = ms_pol_group(sc, sc->exact.saddr, 1);
        sc->dgroup = ms_pol_group(sc, sc->exact.daddr, 0);
        /* ICMP has no ports: its rules are keyed by port 0. */
        __u8 pr = ek->proto;
        sc->port = (pr == IPPROTO_TCP || pr == IPPROTO_UDP) ? bpf_ntohs(ek->dport) : 0;
        /* Rules are kept for the protocols of sessions; any other is 0. */
        sc->proto = (pr == IPPROTO_TCP || pr == IPPROTO_UDP || pr == IPPROTO_ICMP ||
                     pr == IPPROTO_ICMPV6) ? pr : 0;
        /* The four levels in order: (sg, dg), (sg, any), (any, dg), (any,
         * any). A loop, not four copies: the stage's stack is counted. The
         * source group's filter rules out its two levels when it has no
         * record for them (maps.h, struct ms_pol_group). */
#pragma clang loop unroll(disable)
        for (int lvl = 0; lvl < 4; lvl++) {
            __u32 dg = (lvl & 1) ? MS_GROUP_ANY : sc->dgroup;
            if (lvl < 2 && !ms_pol_bloom_maybe(sc, dg))
                continue;
            if (ms_pol_rule_find(rules, sc, lvl < 2 ? sc->sgroup : MS_GROUP_ANY, dg, v))
                return;
        }
    }

    __u32 di = slot * 2 + (dir & 1);
    struct ms_verdict *d = ms_pol_dflt.lookup(&di);
    if (d)
        *v = *d;
    else
        v->action = POL_DENY;
    v->rule_id = 0;
}

/* The reason for a new flow's first packet under verdict v. */
static __always_inline int ms_policy_reason(const struct ms_verdict *v)
{
    if (v->action == POL_NONE)
        return PASS_FORWARD;
    if (v->action == POL_DENY)
        return v->rule_id ? DROP_POLICY_DENY : DROP_POLICY_DEFAULT;
    if (v->action == POL_INSPECT)
        return PASS_POLICY_INSPECT;
    return v->rule_id ? PASS_POLICY_ALLOW : PASS_POLICY_DEFAULT;
}

#endif
