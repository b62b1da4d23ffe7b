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
    X(PASS_FRAGMENT,            4, PASS, "non-first IP fragment of a known flow") \
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
    X(DROP_FLOW_TABLE_FULL,    19, DROP, "session table full and the flow is not allow-listed") \
    X(PASS_TABLE_FULL_ALLOWED, 20, PASS, "session table full; allow-listed flow passed without a session") \
    X(DROP_TCP_INVALID,        21, DROP, "TCP flags illegal in the session's state") \
    X(PASS_TCP_INVALID,        22, PASS, "TCP flags illegal in the session's state (passed: invalid_action=pass)") \
    X(DROP_TCP_OUT_OF_WINDOW,  23, DROP, "TCP sequence or acknowledgement outside the window") \
    X(PASS_TCP_OUT_OF_WINDOW,  24, PASS, "TCP segment outside the window (passed: window_action=pass)") \
    X(DROP_TCP_NO_SESSION,     25, DROP, "TCP packet other than SYN for an unknown flow") \
    X(PASS_TCP_PICKED_UP,      26, PASS, "mid-stream TCP flow picked up (loose option)") \
    X(PASS_TCP_IGNORED,        27, PASS, "legal, leaves the state alone (SYN on an established flow, RFC 5961 4)") \
    X(DROP_TCP_BAD_SYNACK,     28, DROP, "SYN-ACK that does not acknowledge the SYN") \
    X(DROP_SYN_BUDGET_DST,     29, DROP, "new half-open flows to this destination over budget") \
    X(DROP_SYN_BUDGET_GLOBAL,  30, DROP, "new half-open flows over the global budget") \
    X(PASS_ICMP_RELATED,       31, PASS, "ICMP error about a known flow") \
    X(DROP_ICMP_UNMATCHED,     32, DROP, "ICMP error quoting no known flow") \
    X(PASS_ICMP_CONTROL,       33, PASS, "ICMPv6 neighbour discovery / MLD (link control)") \
    X(DROP_ICMP_TYPE,          34, DROP, "ICMP type neither echo, error nor link control") \
    X(DROP_FRAG_NO_FIRST,      35, DROP, "non-first fragment with no first fragment seen") \
    X(DROP_FRAG_OVERLAP,       36, DROP, "fragment that would overlap the L4 header (RFC 1858)") \
    X(DROP_TAIL_CALL_MISSED,   37, DROP, "a tail call to a stage failed (stage not loaded)") \
    X(PASS_TAIL_CALL_MISSED,   38, PASS, "a tail call failed (passed: tailcall_action=pass)") \
    X(DROP_ICMP_ECHO_UNMATCHED, 39, DROP, "ICMP echo reply with no request seen") \
    X(PASS_POLICY_ALLOW,       40, PASS, "new flow allowed by a policy rule or override") \
    X(PASS_POLICY_DEFAULT,     41, PASS, "new flow allowed by the default action") \
    X(DROP_POLICY_DENY,        42, DROP, "new flow denied by a policy rule or override") \
    X(DROP_POLICY_DEFAULT,     43, DROP, "new flow denied by the default action") \
    X(DROP_POLICY_REVOKED,     44, DROP, "flow denied by a policy applied after it started") \
    X(PASS_POLICY_INSPECT,     45, PASS, "new flow allowed for inspection by a policy rule") \
    X(DROP_L7_APP_MISMATCH,    46, DROP, "flow does not speak the application protocol its rule requires") \
    X(PASS_INSPECT_COPIED,     47, PASS, "payload copied to the slow path and passed (async)") \
    X(DROP_INSPECT_HOLD,       48, DROP, "payload copied to the slow path and held until its verdict (hold)") \
    X(DROP_INSPECT_BLOCKED,    49, DROP, "flow blocked by the slow path's verdict") \
    X(PASS_INSPECT_RINGBUF_FULL, 50, PASS, "ring buffer full: passed uninspected (failure action pass / bypass)") \
    X(DROP_INSPECT_RINGBUF_FULL, 51, DROP, "ring buffer full: dropped (failure action drop)") \
    X(PASS_INSPECT_BUDGET,     52, PASS, "inspection budget used up without a verdict: passed (pass / bypass)") \
    X(DROP_INSPECT_BUDGET,     53, DROP, "inspection budget used up without a verdict: dropped") \
    X(PASS_INSPECT_SLOWPATH_DOWN, 54, PASS, "slow path down or stalled: passed uninspected (pass / bypass)") \
    X(DROP_INSPECT_SLOWPATH_DOWN, 55, DROP, "slow path down or stalled: dropped") \
    X(PASS_INSPECT_ALLOWED,    56, PASS, "slow path's allow verdict merged: the flow is no longer inspected") \
    X(PASS_SLOWPATH_SENT,      57, PASS, "a packet the slow path sent: a reset of a blocked flow, or held payload let go") \
    X(PASS_TCP_RST_CHALLENGE,  58, PASS, "RST in the window but not at the expected sequence: passed, session unchanged (RFC 5961 3: the endpoint answers with a challenge ACK)") \
    X(DROP_TUNNEL_MALFORMED,   59, DROP, "tunnel header (GRE, VXLAN, GENEVE, inner Ethernet) truncated, past its outer packet or with fields RFC 2784 / 7348 / 8926 reject") \
    X(DROP_TUNNEL_TOO_DEEP,    60, DROP, "tunnel inside more tunnels than MS_TUN_MAX_DEPTH, or its inner packet starts past MS_TUN_MAX_INNER_OFF") \
    X(PASS_ICMP_TUNNEL_QUOTE,  61, PASS, "ICMP error quoting a tunnel packet too short to name its inner flow (passed: path MTU discovery over the tunnel)") \
    X(DROP_ICMP_TUNNEL_QUOTE,  62, DROP, "ICMP error quoting a tunnel packet too short to name its inner flow (dropped: tunnels.short_quote_action=drop)")

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
