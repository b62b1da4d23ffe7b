/* SPDX-License-Identifier: GPL-2.0 */
/* Why a packet was passed or dropped: one list for every decision.
 *
 * KIND is PASS or DROP and fixes the TC action that goes with the reason.
 * Counters (ms_counters, see maps.h) are indexed by direction and reason.
 */
#ifndef MS_REASONS_H
#define MS_REASONS_H

#include "enums.h"

#define MS_ENUM_REASON(X) \
    X(REASON_UNSPEC,            0, PASS, "no reason recorded (a bug if ever counted)") \
    X(PASS_FORWARD,             1, PASS, "parsed and passed; no policy decided otherwise") \
    X(PASS_NOT_IP,              2, PASS, "not IPv4/IPv6 (ARP, LLDP, ...): handed to the stack") \
    X(PASS_OTHER_L4,            3, PASS, "IP protocol without a parser (GRE, SCTP, ESP, ...)") \
    X(PASS_FRAGMENT,            4, PASS, "non-first IP fragment (no L4 header to inspect)") \
    X(PASS_SEEN_AT_INGRESS,     5, PASS, "egress of a packet already handled at a managed ingress") \
    X(DROP_L2_TRUNCATED,        6, DROP, "Ethernet or VLAN header truncated") \
    X(DROP_VLAN_TOO_DEEP,       7, DROP, "more stacked VLAN tags than MS_MAX_VLAN") \
    X(DROP_IPV4_TRUNCATED,      8, DROP, "IPv4 header or total length runs past the packet") \
    X(DROP_IPV4_BAD_HEADER,     9, DROP, "IPv4 version, IHL < 5, or total length < header length") \
    X(DROP_IPV6_TRUNCATED,     10, DROP, "IPv6 header or payload length runs past the packet") \
    X(DROP_IPV6_BAD_HEADER,    11, DROP, "IPv6 version or payload length 0 (jumbograms unsupported)") \
    X(DROP_IPV6_EXT_TRUNCATED, 12, DROP, "IPv6 extension header runs past the payload") \
    X(DROP_IPV6_EXT_TOO_DEEP,  13, DROP, "more IPv6 extension headers than MS_MAX_IPV6_EXT") \
    X(DROP_TCP_TRUNCATED,      14, DROP, "TCP header truncated") \
    X(DROP_TCP_BAD_DOFF,       15, DROP, "TCP data offset < 5 or past the IP payload") \
    X(DROP_UDP_TRUNCATED,      16, DROP, "UDP header truncated") \
    X(DROP_UDP_BAD_LENGTH,     17, DROP, "UDP length < 8 or past the IP payload") \
    X(DROP_ICMP_TRUNCATED,     18, DROP, "ICMP / ICMPv6 header truncated") \
    X(DROP_FLOW_TABLE_FULL,    19, DROP, "session could not be inserted into the flow table")

enum ms_reason {
    MS_ENUM_REASON(MS_ENUM_MEMBER)
};

#define MS_REASON_COUNT (0 MS_ENUM_REASON(MS_ENUM_COUNT))

#define MS_KIND_PASS 0
#define MS_KIND_DROP 1

/* Drop reasons as a bit set, built from the list at compile time: a switch
 * here would become a jump table, which BPF cannot execute. */
#define MS_REASON_DROPBIT(sym, val, kind, desc) \
    | ((val) < 64 ? ((__u64)MS_KIND_##kind << ((val) & 63)) : 0)
#define MS_REASON_DROPBIT_HI(sym, val, kind, desc) \
    | ((val) >= 64 ? ((__u64)MS_KIND_##kind << ((val) & 63)) : 0)
#define MS_REASON_DROPMASK_LO (0 MS_ENUM_REASON(MS_REASON_DROPBIT))
#define MS_REASON_DROPMASK_HI (0 MS_ENUM_REASON(MS_REASON_DROPBIT_HI))
_Static_assert(MS_REASON_COUNT <= 128, "reason bit set holds 128 reasons");

static __always_inline int ms_reason_is_drop(__u32 reason)
{
    if (reason < 64)
        return (MS_REASON_DROPMASK_LO >> reason) & 1;
    return (MS_REASON_DROPMASK_HI >> (reason & 63)) & 1;
}

#endif
