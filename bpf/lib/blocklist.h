/* SPDX-License-Identifier: GPL-2.0 */
/* The XDP blocklist (bpf/xdp_blocklist.c): its reasons, its maps and every
 * struct stored in them.
 *
 * This header is the one definition of the XDP program's kernel ABI, as
 * maps.h is for the TC fast path. The XDP program is a build of its own and
 * shares no map with the fast path, so its layouts live here, apart from
 * maps.h. Python takes them from BCC's table types (table.Key / table.Leaf)
 * and the reasons from the X-macro list below (datapath/enums.py reads it).
 *
 * One generation of the blocklist is an LPM trie of blocked prefixes (the
 * truth) and, where the kernel has BLOOM_FILTER, a bloom filter of the same
 * keys (the pre-check). Both are inner maps that user space creates and
 * fills beside the live ones, puts in the spare slot of the outer arrays,
 * and makes live with one write of ms_bl_state (datapath/blocklist.py).
 */
#ifndef MS_BLOCKLIST_H
#define MS_BLOCKLIST_H

#include "enums.h"

/* What the XDP program decided. KIND fixes the XDP action (PASS / DROP).
 * Counters (ms_bl_counters) are indexed by these values: append, never
 * renumber. */
#define MS_ENUM_BL_REASON(X) \
    X(BL_PASS_NO_LIST,          0, PASS, "no blocklist applied yet: nothing looked at") \
    X(BL_PASS_NOT_IP,           1, PASS, "not IPv4/IPv6 (ARP, LLDP, ...): handed to the stack") \
    X(BL_PASS_BLOOM_MISS,       2, PASS, "bloom filter: source in no blocked prefix (no LPM lookup)") \
    X(BL_PASS_NOT_BLOCKED,      3, PASS, "LPM lookup without pre-check (fallback path, or too many prefix lengths): not blocked") \
    X(BL_PASS_BLOOM_FALSE_HIT,  4, PASS, "bloom filter said maybe, the LPM lookup said not blocked") \
    X(BL_DROP_BLOCKED,          5, DROP, "source address in a blocked prefix") \
    X(BL_DROP_MALFORMED,        6, DROP, "Ethernet, VLAN or IP header truncated or invalid, or VLAN tags past MS_BL_MAX_VLAN")

enum ms_bl_reason {
    MS_ENUM_BL_REASON(MS_ENUM_MEMBER)
};
#define MS_BL_REASON_COUNT (0 MS_ENUM_BL_REASON(MS_ENUM_COUNT))

/* Drop reasons as a bit set (no switch: it could become a jump table). */
#define MS_BL_DROPBIT(sym, val, kind, desc) | ((__u64)MS_BL_KIND_##kind << (val))
#define MS_BL_KIND_PASS 0
#define MS_BL_KIND_DROP 1
#define MS_BL_DROPMASK (0 MS_ENUM_BL_REASON(MS_BL_DROPBIT))
_Static_assert(MS_BL_REASON_COUNT <= 64, "blocklist reason bit set holds 64 reasons");

/* Blocked prefixes per generation: the LPM template's size and the most
 * a list may hold (datapath/blocklist.py refuses longer lists). From
 * configuration as -D; the default serves a bare compile. */
#ifndef MS_BL_MAX
#define MS_BL_MAX 65536
#endif

/* Distinct prefix lengths the bloom pre-check tests, per address family.
 * Each costs the packet one masked bloom lookup, so past this many the
 * pre-check would cost more than it saves: a list with more distinct
 * lengths in a family goes straight to the LPM for that family (user space
 * clears the family's MS_BL_F_BLOOM_* flag and says so). Real blocklists
 * (threat feeds, country ranges after aggregation) mostly use /32, /24 and
 * a few shorter lengths. */
#define MS_BL_MAX_LENS 8

/* Stacked VLAN tags walked before giving up: the fast path's MS_MAX_VLAN
 * (parse.h), kept equal by hand because parse.h brings the fast path's
 * maps with it. */
#define MS_BL_MAX_VLAN 3

/* Lookup key of the LPM trie, and the value stored in the bloom filter:
 * prefix length and address, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d,
 * prefix length + 96) like every address in microseg. A bloom entry is the
 * prefix exactly as the LPM holds it (host bits zero); a packet's source,
 * masked to each length the list uses, is tested against them. 20 bytes,
 * no padding: the bloom filter hashes every byte. */
struct ms_bl_key {
    __u32 prefixlen;
    __u8  addr[16];
};
#define MS_BL_KEY_SIZE 20
_Static_assert(sizeof(struct ms_bl_key) == MS_BL_KEY_SIZE, "bloom value size is part of the ABI");

/* Per-CPU packet and byte counts, indexed by enum ms_bl_reason. */
struct ms_bl_counter {
    __u64 packets;
    __u64 bytes;
};
BPF_PERCPU_ARRAY(ms_bl_counters, struct ms_bl_counter, MS_BL_REASON_COUNT);

/* Which slot is live. One 8-byte value: a new list is made live in one
 * write, {spare slot, gen + 1}. gen 0: no list applied. */
struct ms_bl_state {
    __u32 slot;
    __u32 gen;
};
BPF_ARRAY(ms_bl_state, struct ms_bl_state, 1);

/* Index of the per-family arrays of struct ms_bl_meta: by the source
 * address, not by the packet's EtherType, so that the lengths tested
 * always follow the LPM's key space (an IPv6 packet from an IPv4-mapped
 * address meets the IPv4 prefixes, in the LPM and in the pre-check). */
#define MS_BL_FAM_V4MAPPED 0
#define MS_BL_FAM_V6       1

/* What the pre-check needs to know about one generation; index: slot. */
struct ms_bl_meta {
    __u32 flags;                          /* MS_BL_F_* */
    __u32 nlens[2];                       /* distinct prefix lengths, by MS_BL_FAM_* */
    /* ... the lengths, in the LPM key space (IPv4: 96 + len), family
     * MS_BL_FAM_* at [fam * MS_BL_MAX_LENS]. Flat: BCC 0.26 describes a
     * two-dimensional array to Python as one-dimensional (wrong size). */
    __u32 lens[2 * MS_BL_MAX_LENS];
};
#define MS_BL_F_BLOOM_V4 0x01   /* pre-check IPv4(-mapped) sources with the bloom filter */
#define MS_BL_F_BLOOM_V6 0x02   /* ... and IPv6 sources */
BPF_ARRAY(ms_bl_meta, struct ms_bl_meta, 2);

/* The blocked prefixes of a generation (the value is unused; 1). The
 * template only gives the kernel the inner maps' type. */
BPF_F_TABLE("lpm_trie", struct ms_bl_key, __u8, ms_bl_lpm_t, MS_BL_MAX, BPF_F_NO_PREALLOC);
BPF_ARRAY_OF_MAPS(ms_bl_lpm, "ms_bl_lpm_t", 2);

/* The bloom filters (BPF_MAP_TYPE_BLOOM_FILTER, value struct ms_bl_key)
 * are inner maps of an ARRAY_OF_MAPS of 2 slots that user space creates
 * with bpf() -- BCC 0.26 has no BLOOM_FILTER table type -- and hands to
 * the program by fd: MS_BL_BLOOM_FD, a -D flag. A build without it
 * (MS_BL_NO_BLOOM: the kernel has no BLOOM_FILTER, or force_no_bloom) has
 * no pre-check: every IP packet costs one LPM lookup. */
#if !defined(MS_BL_NO_BLOOM) && !defined(MS_BL_BLOOM_FD)
#error "define MS_BL_BLOOM_FD (fd of the bloom ARRAY_OF_MAPS) or MS_BL_NO_BLOOM"
#endif

#endif
