/* SPDX-License-Identifier: GPL-2.0 */
/* Every map and every struct stored in a map: the kernel ABI of microseg.
 *
 * Python never re-declares these layouts: it takes them from BCC's table
 * types (table.Key / table.Leaf), which BCC builds from this file.
 * Sizes come from configuration as -D flags (datapath/config.py); the
 * defaults below only serve a bare compile.
 */
#ifndef MS_MAPS_H
#define MS_MAPS_H

#include "enums.h"
#include "reasons.h"

#define MS_ENUM_DIR(X) \
    X(DIR_INGRESS, 0, HOOK, "tc clsact ingress") \
    X(DIR_EGRESS,  1, HOOK, "tc clsact egress")

enum ms_dir {
    MS_ENUM_DIR(MS_ENUM_MEMBER)
};
#define MS_DIR_COUNT (0 MS_ENUM_DIR(MS_ENUM_COUNT))

#ifndef MS_FLOW_MAX
#define MS_FLOW_MAX 524288
#endif
#ifndef MS_IFACE_MAX
#define MS_IFACE_MAX 64
#endif

/* Per-CPU packet and byte counts, indexed by dir * MS_REASON_COUNT + reason. */
struct ms_counter {
    __u64 packets;
    __u64 bytes;
};
BPF_PERCPU_ARRAY(ms_counters, struct ms_counter, MS_DIR_COUNT * MS_REASON_COUNT);

/* Canonical flow key: the lower (address, port) endpoint first, so both
 * directions of a flow find one entry. IPv4 is stored IPv4-mapped
 * (::ffff:a.b.c.d) so one table serves both families. Ports are in network
 * byte order, as on the wire. For ICMP echo, port_lo/port_hi hold the echo id. */
struct ms_flow_key {
    __u8  addr_lo[16];
    __u8  addr_hi[16];
    __be16 port_lo;
    __be16 port_hi;
    __u8  proto;
    __u8  pad[3];
};

/* One session. Index 0 of the per-direction arrays is the original
 * direction (from the endpoint that opened the flow), 1 the reply. */
struct ms_flow {
    __u64 first_seen_ns;
    __u64 last_seen_ns;
    __u64 packets[2];
    __u64 bytes[2];
    __u8  initiator_is_hi;  /* 1 when addr_hi/port_hi opened the flow */
    __u8  pad[7];
};
BPF_TABLE("lru_hash", struct ms_flow_key, struct ms_flow, ms_flows, MS_FLOW_MAX);

/* Interfaces the control plane attached to, by ifindex. The egress program
 * uses it to skip packets already handled at a managed ingress. */
struct ms_iface {
    __u32 flags;
};
BPF_HASH(ms_ifaces, __u32, struct ms_iface, MS_IFACE_MAX);

#endif
