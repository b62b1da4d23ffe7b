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
 *      the most specific protocol and port match (LPM, see maps.h);
 *   3. the default of the hook the flow was first seen on.
 * Evaluated once per flow and stored in the session with the generation;
 * a session from an older generation is decided again on its next packet.
 */
#ifndef MS_POLICY_H
#define MS_POLICY_H

#include "maps.h"

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

static __always_inline __u32 ms_pol_group(void *grp, struct ms_lpm_key *k, const __u8 *addr)
{
    k->prefixlen = 128;
    __builtin_memcpy(k->addr, addr, 16);
    __u32 *g = bpf_map_lookup_elem(grp, k);
    return g ? *g : MS_GROUP_WORLD;
}

static __always_inline struct ms_verdict *ms_pol_rule_find(void *rules, struct ms_rule_key *k,
                                                           __u32 sg, __u32 dg)
{
    __be32 s = bpf_htonl(sg), d = bpf_htonl(dg);
    __builtin_memcpy(k->sgroup, &s, 4);
    __builtin_memcpy(k->dgroup, &d, 4);
    return bpf_map_lookup_elem(rules, k);
}

/* Decide a flow as seen from its initiator (saddr:sport -> daddr:dport)
 * first seen on hook ``dir``. Writes the verdict and the generation. */
static __always_inline void ms_policy_eval(const __u8 *saddr, const __u8 *daddr,
                                           __be16 sport, __be16 dport, __u8 proto,
                                           __u32 dir, struct ms_verdict *v, __u32 *gen)
{
    __u64 live = ms_pol_live();
    __u32 slot = MS_POL_SLOT(live);

    *gen = MS_POL_GEN(live);
    __builtin_memset(v, 0, sizeof(*v));
    if (*gen == 0)
        return;   /* POL_NONE */

    __u32 z = 0;
    struct ms_pol_scratch *sc = ms_pol_scratch.lookup(&z);
    if (!sc) {
        v->action = POL_DENY;
        return;
    }
    void *exact = ms_pol_exact.lookup(&slot);
    if (exact) {
        struct ms_exact_key *ek = &sc->exact;
        __builtin_memcpy(ek->saddr, saddr, 16);
        __builtin_memcpy(ek->daddr, daddr, 16);
        ek->sport = sport;
        ek->dport = dport;
        ek->proto = proto;
        ek->pad[0] = ek->pad[1] = ek->pad[2] = 0;
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

    void *grp = ms_pol_grp.lookup(&slot);
    void *rules = ms_pol_rule.lookup(&slot);
    if (grp && rules) {
        __u32 sg = ms_pol_group(grp, &sc->addr, saddr);
        __u32 dg = ms_pol_group(grp, &sc->addr, daddr);
        struct ms_rule_key *rk = &sc->rule;
        rk->prefixlen = MS_RULE_PREFIX_PORT;
        rk->proto = proto;
        rk->pad = 0;
        /* ICMP has no ports: its rules are keyed by port 0. */
        __be16 port = (proto == IPPROTO_TCP || proto == IPPROTO_UDP) ? dport : 0;
        __builtin_memcpy(rk->port, &port, 2);
        struct ms_verdict *hit = ms_pol_rule_find(rules, rk, sg, dg);
        if (!hit)
            hit = ms_pol_rule_find(rules, rk, sg, MS_GROUP_ANY);
        if (!hit)
            hit = ms_pol_rule_find(rules, rk, MS_GROUP_ANY, dg);
        if (!hit)
            hit = ms_pol_rule_find(rules, rk, MS_GROUP_ANY, MS_GROUP_ANY);
        if (hit) {
            *v = *hit;
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
