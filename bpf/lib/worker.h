/* SPDX-License-Identifier: GPL-2.0 */
/* Which slow-path worker a session belongs to: used by the inspection
 * handoff (inspect.h) and by the session-end records (conntrack.h,
 * sweep.h), which name the worker that holds an inspected session. */
#ifndef MS_WORKER_H
#define MS_WORKER_H

#include "maps.h"

/* The slow-path worker of a session: its records go to that worker's ring
 * and its heartbeat decides whether the slow path is up for it. Any hash of
 * the key works (the key is the same for both directions), as long as it
 * spreads flows that differ in a few bits (consecutive ports, addresses
 * in one subnet, IPv4-mapped prefixes that are equal on both sides): each
 * word is mixed in by a multiply (FNV-1a's prime), the result finished by
 * murmur3's fmix32 (every input bit reaches every output bit), and mapped
 * onto 0..n-1 by a multiply-shift instead of a division. A plain xor of the
 * words put 1 of 64 lab flows on one worker of two. */
static __always_inline __u32 ms_worker_of(const struct ms_flow_key *kp, __u32 n)
{
    if (n <= 1)
        return 0;
    if (n > MS_SLOWPATH_WORKERS_MAX)
        n = MS_SLOWPATH_WORKERS_MAX;
    const __u32 *w = (const __u32 *)kp;
    __u32 h = 2166136261u;
#pragma unroll
    for (int i = 0; i < sizeof(*kp) / 4; i++)
        h = (h ^ w[i]) * 16777619u;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return (__u32)(((__u64)h * n) >> 32);
}

/* The worker of a session under the running configuration. */
static __always_inline __u32 ms_insp_worker(const struct ms_flow_key *kp, const struct ms_config *cfg)
{
    return ms_worker_of(kp, cfg->workers);
}

#endif
