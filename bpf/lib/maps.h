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

/* Cut points for bench/fastpath_steps.py, which measures what each step
 * of a packet costs: a build with MS_BENCH_STOP n stops at step n (the
 * program returns TC_ACT_OK there, nothing counted), and a step's cost is
 * the difference between the builds that stop before and after it.
 * Compiled out of every other build. */
#ifdef MS_BENCH_STOP
#define MS_BENCH_REASON 0xff   /* a reason no enum has: ms_finish returns on it */
#define MS_BENCH_STEP(n, ret) do { if (MS_BENCH_STOP == (n)) return (ret); } while (0)
#else
#define MS_BENCH_STEP(n, ret) do { } while (0)
#endif

/* State that must outlive a program build -- sessions, counters, the SYN
 * budget, the policy generation, verdicts, the payload ring -- is declared
 * with these. When the loader passes MS_PIN_DIR (datapath/state.py), BCC
 * opens the maps pinned there, or creates and pins them: an upgrade or a
 * restart reuses them, and established connections keep their sessions.
 * Everything else (configuration, policy tables, signatures, scratch) is
 * made fresh by each build and written at load. */
#ifdef MS_PIN_DIR
#define MS_STATE_TABLE(type, k, v, name, max, flags) \
    BPF_TABLE_PINNED7(type, k, v, name, max, MS_PIN_DIR "/" #name, flags)
#define MS_STATE_SECTION(type, name) "maps/" type ":" MS_PIN_DIR "/" #name
#else
#define MS_STATE_TABLE(type, k, v, name, max, flags) BPF_F_TABLE(type, k, v, name, max, flags)
#define MS_STATE_SECTION(type, name) "maps/" type
#endif
/* BCC's BPF_RINGBUF_OUTPUT, with the section MS_STATE_SECTION gives (BCC
 * has no pinned form of it); the members are the ones BCC's front end
 * rewrites into ring buffer helper calls. */
#define MS_STATE_RINGBUF(_name, _num_pages) \
struct _name##_table_t { \
    int key; \
    u32 leaf; \
    int (*ringbuf_output) (void *, u64, u64); \
    void *(*ringbuf_reserve) (u64); \
    void (*ringbuf_discard) (void *, u64); \
    void (*ringbuf_submit) (void *, u64); \
    u32 max_entries; \
}; \
__attribute__((section(MS_STATE_SECTION("ringbuf", _name)))) \
struct _name##_table_t _name = { .max_entries = ((_num_pages) * PAGE_SIZE) }

#define MS_ENUM_DIR(X) \
    X(DIR_INGRESS, 0, HOOK, "tc clsact ingress") \
    X(DIR_EGRESS,  1, HOOK, "tc clsact egress")

enum ms_dir {
    MS_ENUM_DIR(MS_ENUM_MEMBER)
};
#define MS_DIR_COUNT (0 MS_ENUM_DIR(MS_ENUM_COUNT))

/* Session states. TCP states are named as `ss` on the flow's initiator
 * would show them (FIN_WAIT1/2 when the initiator closes first, CLOSE_WAIT
 * when the responder does), observed from the middle; see conntrack.h. */
#define MS_ENUM_CT_STATE(X) \
    X(CT_NONE,        0, ANY,  "no state yet") \
    X(CT_SYN_SENT,    1, TCP,  "initiator's SYN seen") \
    X(CT_SYN_RECV,    2, TCP,  "responder's SYN-ACK seen") \
    X(CT_ESTABLISHED, 3, TCP,  "handshake completed") \
    X(CT_FIN_WAIT1,   4, TCP,  "initiator sent FIN, not yet acknowledged") \
    X(CT_FIN_WAIT2,   5, TCP,  "initiator's FIN acknowledged, responder still open") \
    X(CT_CLOSING,     6, TCP,  "both sent FIN before either was acknowledged") \
    X(CT_CLOSE_WAIT,  7, TCP,  "responder sent FIN first, initiator still open") \
    X(CT_LAST_ACK,    8, TCP,  "both sent FIN, the last one not yet acknowledged") \
    X(CT_TIME_WAIT,   9, TCP,  "both FINs acknowledged") \
    X(CT_CLOSE,      10, TCP,  "reset") \
    X(CT_SYN_SENT2,  11, TCP,  "simultaneous open: SYNs crossed") \
    X(CT_UDP_UNREPLIED, 12, UDP, "UDP, nothing seen from the responder") \
    X(CT_UDP_REPLIED,   13, UDP, "UDP, both directions seen") \
    X(CT_ICMP,       14, ICMP, "ICMP echo exchange")

enum ms_ct_state {
    MS_ENUM_CT_STATE(MS_ENUM_MEMBER)
};
#define MS_CT_STATE_COUNT (0 MS_ENUM_CT_STATE(MS_ENUM_COUNT))

/* What a TCP packet is, for the state machine: its flags, classified. */
#define MS_ENUM_TCP_EVENT(X) \
    X(EV_SYN,     0, TCP, "SYN without ACK") \
    X(EV_SYNACK,  1, TCP, "SYN with ACK") \
    X(EV_FIN,     2, TCP, "FIN with ACK") \
    X(EV_ACK,     3, TCP, "ACK, with or without data") \
    X(EV_RST,     4, TCP, "RST") \
    X(EV_INVALID, 5, TCP, "no SYN/RST/ACK, or SYN with FIN or RST")

enum ms_tcp_event {
    MS_ENUM_TCP_EVENT(MS_ENUM_MEMBER)
};
#define MS_TCP_EVENT_COUNT (0 MS_ENUM_TCP_EVENT(MS_ENUM_COUNT))

/* Outcomes in the TCP transition table beyond "go to state N". */
#define MS_ENUM_TCP_VERDICT(X) \
    X(TV_CLOSE_PHASE, 253, TCP, "legal; the state follows from the FIN bookkeeping (conntrack.h)") \
    X(TV_INVALID,     254, TCP, "illegal in this state: counted, configured action (drop)") \
    X(TV_IGNORE,      255, TCP, "legal but leaves the state alone (e.g. SYN on ESTABLISHED)")

enum ms_tcp_verdict {
    MS_ENUM_TCP_VERDICT(MS_ENUM_MEMBER)
};

/* Direction of a packet within its flow. */
#define MS_ENUM_FLOW_DIR(X) \
    X(FD_ORIGINAL, 0, FLOW, "from the endpoint that opened the flow") \
    X(FD_REPLY,    1, FLOW, "from the responder")

enum ms_flow_dir {
    MS_ENUM_FLOW_DIR(MS_ENUM_MEMBER)
};

/* Events sent to user space on the ring buffer. */
#define MS_ENUM_EVENT(X) \
    X(EVENT_TABLE_PRESSURE, 1, EVENT, "session table crossed the pressure threshold") \
    X(EVENT_FLOW_END,       2, EVENT, "a session ended (struct ms_flow_event)")

enum ms_event_type {
    MS_ENUM_EVENT(MS_ENUM_MEMBER)
};

#ifndef MS_FLOW_MAX
#define MS_FLOW_MAX 524288
#endif
#ifndef MS_HALFOPEN_MAX
#define MS_HALFOPEN_MAX 65536
#endif
/* The IPv6 session tables' sizes (datapath/config.py flow6_table_size,
 * halfopen6_table_size): by default an eighth and a quarter of the IPv4
 * ones, which the session limit sizes. */
#ifndef MS_FLOW6_MAX
#define MS_FLOW6_MAX (MS_FLOW_MAX / 8)
#endif
#ifndef MS_HALFOPEN6_MAX
#define MS_HALFOPEN6_MAX (MS_HALFOPEN_MAX / 4)
#endif
#ifndef MS_IFACE_MAX
#define MS_IFACE_MAX 64
#endif
#ifndef MS_FRAG_MAX
#define MS_FRAG_MAX 8192
#endif
#ifndef MS_SYN_DST_MAX
#define MS_SYN_DST_MAX 65536
#endif
#ifndef MS_ALLOW_MAX
#define MS_ALLOW_MAX 1024
#endif
/* ms_events: 2 MiB. A session end is a 128-byte record (struct
 * ms_flow_event and the ring's 8-byte header), so 16,384 ends wait for the
 * reader: a sweep that expires a burst of idle sessions in one run
 * (sweep.h) fills the ring faster than a reader drains it; past this they
 * are counted (ms_events_lost), not written. */
#ifndef MS_EVENTS_PAGES
#define MS_EVENTS_PAGES 512
#endif

/* ------------------------------------------------------------------ */
/* Counters                                                            */

/* Per-CPU packet and byte counts, indexed by dir * MS_REASON_COUNT + reason. */
struct ms_counter {
    __u64 packets;
    __u64 bytes;
};
MS_STATE_TABLE("percpu_array", int, struct ms_counter, ms_counters, MS_DIR_COUNT * MS_REASON_COUNT, 0);

/* ------------------------------------------------------------------ */
/* Parsed packet: scratch state handed between tail-call stages.       */

struct ms_pkt {
    __u8   saddr[16];     /* IPv4 as IPv4-mapped IPv6 */
    __u8   daddr[16];
    __be16 sport;         /* network order; ICMP echo: the echo id */
    __be16 dport;
    __u32  len;           /* skb->len */
    __u32  seq;           /* TCP, host order */
    __u32  ack_seq;
    __u32  frag_id;       /* IPv4 id or IPv6 fragment identification */
    __u16  window;
    __u16  l3_off;
    __u16  l4_off;
    __u16  payload_off;   /* first byte of L4 payload */
    __u32  payload_len;
    __u16  vlan_outer;    /* first VLAN id seen (0: untagged) */
    __u16  frag_off;      /* fragment offset in 8-byte units */
    __u8   family;        /* 4 or 6 */
    __u8   proto;         /* IPPROTO_* of the L4 header */
    __u8   tcp_flags;     /* FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 ECE 0x40 CWR 0x80 */
    __u8   frag;          /* MS_FRAG_* */
    __u8   icmp_type;
    __u8   icmp_code;
    __u8   vlan_depth;
    __u8   wscale;        /* TCP window scale option on a SYN, 0xff if absent */
    __u8   dir;           /* enum ms_dir of the hook */
    __u8   l7_side;       /* set by session tracking: 1 + side (0 original, 1 reply) of a
                           * first payload the L7 stage must see; 0: none */
    __u8   l7_reason;     /* the tracking stage's reason, which the payload stage finishes with */
    __u8   insp;          /* set by session tracking: 1 + side of a packet of an inspected
                           * flow the payload stage must hand off; 0: none */
    __u8   frag_mf;       /* a fragment with more after it (IPv4 MF, IPv6 M) */
    __u8   tun_depth;     /* tunnels decapsulated (bpf/lib/tunnel.h): the fields above are the
                           * innermost packet's; the outermost addresses are in ms_tun_outer */
    __u8   lane_absent;   /* the established lane (conntrack.h ms_ct_tcp4_lane) found no entry
                           * in ms_flows for this segment (MS_ABSENT_FLOWS: the TCP stage
                           * looks in ms_halfopen first), or in neither table
                           * (MS_ABSENT_BOTH: not in ms_halfopen again) */
    __u8   pad2;
    __u32  rule_id;       /* the policy rule that decided this packet, when one did (0: none,
                           * or the default): a drop event carries it (struct ms_drop_event) */
};
BPF_PERCPU_ARRAY(ms_scratch, struct ms_pkt, 1);

/* The outermost packet's addresses when a tunnel was decapsulated
 * (ms_pkt.tun_depth > 0), for policy on the outer addresses
 * (MS_CFG_TUN_POLICY_OUTER). A map of its own, written only for tunnelled
 * packets, so struct ms_pkt, cleared for every packet, does not grow. */
struct ms_tun_outer {
    __u8 saddr[16];       /* IPv4 as IPv4-mapped IPv6 */
    __u8 daddr[16];
};
BPF_PERCPU_ARRAY(ms_tun_outer, struct ms_tun_outer, 1);

/* The session clock as this CPU last read it (conntrack.h ms_pkt_now):
 * the entry program reads jiffies, which the verifier inlines as a load,
 * and calls the clock helper only when jiffies moved since the reading
 * kept here. Both clocks move together at the tick, so the kept reading is
 * what the helper would return now. */
struct ms_clock {
    __u64 jiffies;        /* bpf_jiffies64() when ns was read */
    __u64 ns;             /* ms_now() then (CLOCK_MONOTONIC_COARSE) */
};
BPF_PERCPU_ARRAY(ms_clock, struct ms_clock, 1);

/* ------------------------------------------------------------------ */
/* Sessions                                                            */

/* Canonical flow key: the lower (address, port) endpoint first, so both
 * directions of a flow find one entry. IPv4 is stored IPv4-mapped
 * (::ffff:a.b.c.d), so every key of either family has this one form: the
 * session-end records, ms_verdicts, the worker hash and the stages use it.
 * The session tables themselves are per family (below): an IPv4 session is
 * stored under struct ms_flow_key4. Ports are in network byte order, as on
 * the wire. For ICMP echo, port_lo/port_hi hold the echo id. */
struct ms_flow_key {
    __u8  addr_lo[16];
    __u8  addr_hi[16];
    __be16 port_lo;
    __be16 port_hi;
    __u8  proto;
    __u8  pad[3];
};

/* The key of an IPv4 session (ms_flows4, ms_halfopen4): struct ms_flow_key
 * with both addresses IPv4-mapped, without the 12-byte prefixes. The same
 * endpoint order (the prefixes are equal, so the 16-byte compare of
 * ms_ep_cmp orders them by these 4 bytes). 16 bytes instead of 40: the
 * hash of a lookup reads and compares less than half (bench/lookups.py
 * hash16 vs hash40), as Cilium's separate IPv4 CT tables. Which table a key
 * belongs in is decided in one place, conntrack.h ms_key4_of (and
 * datapath/sessions.py for user space). */
struct ms_flow_key4 {
    __be32 addr_lo;
    __be32 addr_hi;
    __be16 port_lo;
    __be16 port_hi;
    __u8  proto;
    __u8  pad[3];
};

/* Per-direction TCP window data, the nf_conntrack model (ip_ct_tcp_state):
 * end = highest seq + len sent; maxend = highest ack + window the peer
 * allowed (the most this side may send up to); maxwin = largest window
 * this side advertised (scaled); maxack = highest ack this side sent
 * (td_maxack: where it expects the peer's RST, RFC 5961 3). */
struct ms_tcp_side {
    __u32 end;
    __u32 maxend;
    __u32 maxwin;
    __u32 fin_end;        /* seq just past this side's FIN (valid when MS_SIDE_FIN) */
    __u32 maxack;         /* valid when MS_SIDE_MAXACK */
    __u8  wscale;
    __u8  flags;          /* MS_SIDE_* */
    __u8  pad[2];
};
#define MS_SIDE_SEEN   0x01   /* window data initialised */
#define MS_SIDE_WSCALE 0x02   /* sent a window scale option on its SYN */
#define MS_SIDE_FIN    0x04   /* sent a FIN */
#define MS_SIDE_MAXACK 0x10   /* sent an ACK: maxack holds the highest */

/* One session. Index 0 of per-direction arrays is the original direction
 * (from the endpoint that opened the flow), 1 the reply. */
struct ms_flow {
    __u64 first_seen_ns;
    __u64 last_seen_ns;
    /* The state and flags right after last_seen_ns, in its cache line: the
     * sweep (sweep.h) reads the state of every entry older than the
     * shortest timeout, and an established packet reads them with it. */
    __u8  state;            /* enum ms_ct_state */
    __u8  initiator_is_hi;  /* 1 when addr_hi/port_hi opened the flow */
    __u8  flags;            /* MS_FLOW_* */
    __u8  action;           /* enum ms_pol_action the policy gave the flow */
    __u8  inspect;          /* MS_INSPECT_* of that verdict */
    __u8  app_req;          /* enum ms_app the verdict requires (0: any) */
    __u8  app;              /* enum ms_app the L7 stage identified (0: not yet / unknown) */
    __u8  l7_seen;          /* bit per side: its first payload went through the L7 stage */
    __u32 pol_gen;          /* policy generation the verdict is from */
    __u32 rule_id;          /* rule that decided (0: default or no policy) */
    __u64 packets[2];
    __u64 bytes[2];
    struct ms_tcp_side tcp[2];
    __u32 insp_sent[2];     /* payload bytes copied to the slow path, per side */
    __u8  insp_state;       /* enum ms_insp_state (inspected flows) */
    __u8  pad2[3];
    __u32 cookie;           /* this session instance (random at creation): the slow
                             * path's verdicts carry it back (struct ms_slow_verdict),
                             * so a verdict never lands on a later connection that
                             * reuses the 5-tuple (conntrack.h ms_flow_new) */
};
#define MS_FLOW_PICKED_UP 0x01  /* created mid-stream under the `loose` option */
#define MS_FLOW_LIBERAL   0x02  /* window not checked (picked up, or SYN options not walked) */
#define MS_FLOW_EGRESS_OPENED 0x04  /* first seen on the egress hook (its policy default) */
#define MS_FLOW_LOGGED    0x08  /* its end record was sent (a TCP close): the entry
                                 * stays for its state's timeout, its expiry sends none */

/* A session being created: built here, not on the 512-byte stack. */
BPF_PERCPU_ARRAY(ms_flow_scratch, struct ms_flow, 1);

/* Flows that saw a reply (TCP past the handshake, UDP both ways). Plain
 * HASH, not LRU: a full table must never evict an established session;
 * new flows then follow the full-table policy instead. One table per
 * family: IPv4 sized by the session limit (flow_table_size, which counts
 * the sessions of both: conntrack.h ms_flows_full), IPv6 by its own
 * flow6_table_size (default an eighth: preallocated memory for a family
 * most deployments carry little of). */
MS_STATE_TABLE("hash", struct ms_flow_key4, struct ms_flow, ms_flows4, MS_FLOW_MAX, 0);
MS_STATE_TABLE("hash", struct ms_flow_key, struct ms_flow, ms_flows6, MS_FLOW6_MAX, 0);
/* Half-open and unreplied flows. LRU with per-CPU lists: a SYN flood
 * churns this table only, and the oldest unreplied flows go first
 * (nf_conntrack's early drop, by construction). */
/* Per-CPU LRU lists (BPF_F_NO_COMMON_LRU, 4.10) unless the loader says the
 * kernel lacks them or `compat: {lru_per_cpu: off}` (MS_LRU_COMMON). */
#ifdef MS_LRU_COMMON
#define MS_LRU_FLAGS 0
#else
#define MS_LRU_FLAGS BPF_F_NO_COMMON_LRU
#endif
MS_STATE_TABLE("lru_hash", struct ms_flow_key4, struct ms_flow, ms_halfopen4, MS_HALFOPEN_MAX, MS_LRU_FLAGS);
MS_STATE_TABLE("lru_hash", struct ms_flow_key, struct ms_flow, ms_halfopen6, MS_HALFOPEN6_MAX, MS_LRU_FLAGS);

/* ------------------------------------------------------------------ */
/* Configuration written by the control plane at load                 */

/* Per-state idle timeouts in nanoseconds, indexed by enum ms_ct_state. */
BPF_ARRAY(ms_timeouts, __u64, MS_CT_STATE_COUNT);

/* TCP transition table: next state (or enum ms_tcp_verdict), indexed by
 * (state * 2 + flow direction) * MS_TCP_EVENT_COUNT + event. Filled from
 * datapath/tcp_fsm.py, the one readable copy of the state machine. */
BPF_ARRAY(ms_tcp_fsm, __u8, MS_CT_STATE_COUNT * 2 * MS_TCP_EVENT_COUNT);

/* Inspection handoff failures the kernel sees, and what it does about
 * each (configured; a rule may override: MS_INSPECT_FAIL_*). */
#define MS_ENUM_FAIL(X) \
    X(FAIL_RINGBUF_FULL,   0, FAIL, "ring buffer full: a payload could not be copied") \
    X(FAIL_BUDGET,         1, FAIL, "inspection budget of a side used up without a verdict") \
    X(FAIL_SLOWPATH_DOWN,  2, FAIL, "slow path heartbeat missing or stale")
enum ms_fail {
    MS_ENUM_FAIL(MS_ENUM_MEMBER)
};
#define MS_FAIL_COUNT (0 MS_ENUM_FAIL(MS_ENUM_COUNT))

#define MS_ENUM_FAIL_ACTION(X) \
    X(FAIL_PASS,   0, FAIL_ACTION, "pass the packet uninspected; keep trying with the next") \
    X(FAIL_DROP,   1, FAIL_ACTION, "drop the packet") \
    X(FAIL_BYPASS, 2, FAIL_ACTION, "pass the packet and stop inspecting the flow")
enum ms_fail_action {
    MS_ENUM_FAIL_ACTION(MS_ENUM_MEMBER)
};

struct ms_config {
    __u32 flags;                 /* MS_CFG_* */
    __u32 pressure_pct;          /* alert when the session table is this full */
    __u64 syn_dst_rate;          /* new half-open flows per second per destination */
    __u64 syn_dst_burst;
    __u64 syn_global_rate;       /* ... and for all destinations together */
    __u64 syn_global_burst;
    __u64 hb_timeout_ns;         /* slow path down when its heartbeat is older than this */
    __u32 insp_budget;           /* payload bytes copied per side of an inspected flow */
    __u8  fail_action[MS_FAIL_COUNT]; /* enum ms_fail_action per enum ms_fail */
    __u8  pad[4 - MS_FAIL_COUNT];
    __u32 workers;               /* slow-path workers reading payload records (0 and 1: one) */
    __u32 drop_ev_rate;          /* drop events per (source, reason) per second (0: none) */
    __u32 drop_ev_cpu_rate;      /* drop events per CPU per second, all keys together */
    __u32 pad3;
};
#define MS_CFG_LOOSE            0x01  /* pick up mid-stream TCP flows */
#define MS_CFG_INVALID_PASS     0x02  /* illegal TCP transitions pass (counted) */
#define MS_CFG_WINDOW_PASS      0x04  /* out-of-window segments pass (counted) */
#define MS_CFG_TAILCALL_PASS    0x08  /* a missed tail call passes (counted) */
/* Failures simulated on purpose (`simulate` in the configuration), so an
 * operator sees what each one does before it happens. */
#define MS_CFG_SIM_RINGBUF_FULL  0x10
#define MS_CFG_SIM_BUDGET        0x20
#define MS_CFG_SIM_SLOWPATH_DOWN 0x40
/* Payload records wake no reader (BPF_RB_NO_WAKEUP): `microseg replay`
 * reads the ring itself after every packet, and a wakeup (an irq_work,
 * a self-IPI on a VM) cost 10 us of the 11 a recorded packet took. */
#define MS_CFG_RING_NO_WAKEUP    0x80
/* Tunnels (bpf/lib/tunnel.h): not decapsulated, the outer packet is the
 * flow (`tunnels.decap: false`); or decapsulated and tracked as the inner
 * flow with policy decided on the outer addresses (`tunnels.policy: outer`). */
#define MS_CFG_TUN_NO_DECAP      0x100
#define MS_CFG_TUN_POLICY_OUTER  0x200
/* An ICMP error quoting a tunnel packet too short to show its inner flow
 * drops (`tunnels.short_quote_action: drop`; icmp.h says why it passes). */
#define MS_CFG_TUN_SHORT_QUOTE_DROP 0x400
/* An inspected session's end record goes into its worker's ring, after the
 * session's payload records (struct ms_worker_end, conntrack.h
 * ms_flow_end_begin), not to ms_events: set by `microseg run`, whose
 * workers read their rings and log those sessions (appliance/workers.py).
 * Unset (replay, tests, `microseg up` alone): every end goes to ms_events. */
#define MS_CFG_WORKER_ENDS       0x800
BPF_ARRAY(ms_config, struct ms_config, 1);

/* Interfaces the control plane attached to, by ifindex. The egress program
 * uses them to skip packets already handled at a managed ingress: every
 * forwarded packet asks, so an ifindex below MS_IFINDEX_DIRECT is answered
 * by ms_iface_direct, an array indexed by ifindex whose lookup the verifier
 * inlines (no helper call, no hash: docs/performance.md 4.3); ms_ifaces
 * holds the managed ones at or above it (ifindexes only grow while
 * interfaces come and go in a namespace). datapath.loader writes both. */
struct ms_iface {
    __u32 flags;
};
#define MS_IFACE_MANAGED 1         /* ms_iface.flags: the interface is managed */
/* 1,024 entries (4 KiB): every ifindex of a gateway that has not seen
 * a thousand interfaces come and go. */
#define MS_IFINDEX_DIRECT 1024
BPF_HASH(ms_ifaces, __u32, struct ms_iface, MS_IFACE_MAX);
BPF_ARRAY(ms_iface_direct, struct ms_iface, MS_IFINDEX_DIRECT);

/* Addresses whose new flows still pass when the session table is full
 * (without a session). */
struct ms_lpm_key {
    __u32 prefixlen;
    __u8  addr[16];
};
BPF_F_TABLE("lpm_trie", struct ms_lpm_key, __u8, ms_full_allow, MS_ALLOW_MAX, BPF_F_NO_PREALLOC);

/* ------------------------------------------------------------------ */
/* SYN budget                                                          */

struct ms_bucket {
    __u64 tokens_milli;   /* tokens * 1000, so slow rates still refill */
    __u64 last_ns;
};
struct ms_addr_key {
    __u8 addr[16];
};
MS_STATE_TABLE("lru_hash", struct ms_addr_key, struct ms_bucket, ms_syn_dst, MS_SYN_DST_MAX, 0);
MS_STATE_TABLE("array", int, struct ms_bucket, ms_syn_global, 1, 0);

/* ------------------------------------------------------------------ */
/* Fragments (the first fragment's ports, for the later ones)          */

/* The reassembly key: IPv4 (src, dst, protocol, id), RFC 791; IPv6
 * (src, dst, id), RFC 8200 4.5, with proto 0 -- a later IPv6 fragment's
 * next header may be an extension header, not the L4 protocol. */
struct ms_frag_key {
    __u8  saddr[16];
    __u8  daddr[16];
    __u32 id;
    __u8  proto;
    __u8  pad[3];
};
struct ms_frag_val {
    __be16 sport;
    __be16 dport;
    __u8  proto;          /* L4 protocol (an IPv6 key leaves it out) */
    __u8  pad[3];
    __u64 seen_ns;
};
MS_STATE_TABLE("lru_hash", struct ms_frag_key, struct ms_frag_val, ms_frags, MS_FRAG_MAX, 0);

/* ------------------------------------------------------------------ */
/* Table pressure                                                      */

/* Written by the kernel only (atomic adds). LRU evictions of ms_halfopen
 * are not reported by the kernel; user space derives them as
 * halfopen_inserted - halfopen_removed - halfopen_deleted - entries. */
struct ms_pressure {
    __u64 inserted;         /* sessions added to ms_flows */
    __u64 deleted;          /* sessions the kernel removed (expired on lookup) */
    __u64 insert_failed;    /* ms_flows inserts refused (full) */
    __u64 alerts;           /* pressure alerts sent */
    __u64 alert_gen;        /* user generation at the last alert */
    __u64 halfopen_inserted; /* entries added to ms_halfopen */
    __u64 halfopen_removed;  /* ... and removed by the kernel (promoted, expired, replaced) */
};
MS_STATE_TABLE("array", int, struct ms_pressure, ms_pressure, 1, 0);
/* Written by user space only: what the sweeper deleted, and a generation
 * bumped when usage falls back under the threshold (re-arms the alert). */
struct ms_pressure_user {
    __u64 deleted;
    __u64 gen;
    __u64 halfopen_deleted; /* ms_halfopen entries the sweeper deleted */
};
MS_STATE_TABLE("array", int, struct ms_pressure_user, ms_pressure_user, 1, 0);

struct ms_event {
    __u32 type;             /* enum ms_event_type */
    __u32 pct;              /* table use in percent */
    __u64 ts_ns;
    __u64 entries;
    __u64 capacity;
};
#ifndef MS_NO_RINGBUF
BPF_RINGBUF_OUTPUT(ms_events, MS_EVENTS_PAGES);
#endif

/* ------------------------------------------------------------------ */
/* Drop events (fastpath.c ms_drop_log): what the policy denied, and why */

/* One dropped packet, as parsed (its own direction: saddr is the packet's
 * source, not the flow's initiator). A packet dropped before its IP header
 * was read (L2 / IP truncation) has family 0 and zero addresses. */
struct ms_drop_event {
    __u64 ts_ns;          /* ms_now() when dropped (CLOCK_MONOTONIC) */
    __u8  saddr[16];      /* IPv4 as IPv4-mapped IPv6 */
    __u8  daddr[16];
    __be16 sport;         /* network order; ICMP echo: the echo id */
    __be16 dport;
    __u32 len;            /* skb->len */
    __u32 seq;            /* TCP, host order */
    __u32 ack_seq;
    __u32 rule_id;        /* rule that decided (0: default, none, or not a policy drop) */
    __u32 suppressed;     /* drops of this (source, reason) not reported since its last event */
    __u32 ifindex;        /* interface of the hook (EVE in_iface) */
    __u16 window;         /* TCP window, unscaled */
    __u16 vlan;           /* first VLAN id (0: untagged) */
    __u8  reason;         /* enum ms_reason (a DROP_* one) */
    __u8  hook;           /* enum ms_dir */
    __u8  family;         /* 4 or 6; 0: no IP header parsed */
    __u8  proto;
    __u8  tcp_flags;
    __u8  icmp_type;
    __u8  icmp_code;
    __u8  pad[5];
};

/* The rate limiter: one entry per (source address, reason) seen dropping
 * lately. The first cfg->drop_ev_rate drops of a key in its one-second
 * window are sent; the rest are counted in `suppressed`, which the key's
 * next event carries (and takes back to 0). */
struct ms_drop_key {
    __u8  saddr[16];
    __u8  reason;
    __u8  pad[3];
};
struct ms_drop_limit {
    __u64 window_ns;      /* start of the key's current one-second window */
    __u32 sent;           /* events sent in it */
    __u32 suppressed;     /* drops not reported since the key's last event */
};
/* Keys followed at once. LRU: a scan from many sources evicts the quietest
 * keys, whose next drop then starts a fresh window (at most one more event
 * each, and the per-CPU cap below still bounds the total). 8,192 entries
 * of 20 + 16 bytes: ~0.8 MiB with the kernel's per-entry overhead. */
#ifndef MS_DROP_LIMIT_MAX
#define MS_DROP_LIMIT_MAX 8192
#endif
/* Per build, not pinned: a restart forgets the windows, at most one more
 * second of events per key. */
BPF_F_TABLE("lru_hash", struct ms_drop_key, struct ms_drop_limit, ms_drop_limit, MS_DROP_LIMIT_MAX, MS_LRU_FLAGS);

/* Per CPU: its own one-second window of events sent (the cap over all
 * keys, so random-source floods, one new key per packet, stay bounded),
 * and what the drop log did. Per CPU, so a flood on every CPU does not
 * bounce one cache line between them. */
struct ms_drop_stats {
    __u64 window_ns;      /* start of this CPU's current one-second window */
    __u64 window_sent;    /* events sent in it */
    __u64 events;         /* events written to ms_drop_ring */
    __u64 suppressed;     /* drops not written: over a key's rate or the CPU's cap */
    __u64 cpu_capped;     /* ... of which over the CPU's cap (a new key's then gets no
                           * limiter entry: counted here only) */
    __u64 ring_full;      /* drops whose event found ms_drop_ring full (each also
                           * counted in its key's suppressed, so the next event says so) */
    __u64 untracked;      /* drops with no limiter entry (insert failed): not reported */
};
BPF_PERCPU_ARRAY(ms_drop_stats, struct ms_drop_stats, 1);

/* Events to user space (appliance/droplog.py). 64 pages (256 KiB) hold
 * ~2,700 events of 96 bytes with their headers: five seconds of the
 * default per-CPU cap (250/s) on two CPUs, while the reader is stalled. */
#ifndef MS_DROP_RING_PAGES
#define MS_DROP_RING_PAGES 64
#endif
#ifndef MS_NO_RINGBUF
BPF_RINGBUF_OUTPUT(ms_drop_ring, MS_DROP_RING_PAGES);
#endif

/* Why a session ended (struct ms_flow_event.reason). LRU evictions of
 * ms_halfopen (unreplied flows pushed out by newer ones) are silent in the
 * kernel and have no record: user space counts them (struct ms_pressure). */
#define MS_ENUM_FLOW_END(X) \
    X(FLOW_END_CLOSED,     1, FLOW_END, "TCP closed: both FINs acknowledged, or a reset") \
    X(FLOW_END_TIMEOUT,    2, FLOW_END, "idle past its state's timeout, found so by a packet's lookup") \
    X(FLOW_END_SWEPT,      3, FLOW_END, "idle past its state's timeout, deleted by the sweeper") \
    X(FLOW_END_TABLE_FULL, 4, FLOW_END, "its reply came with the session table full: it could not be kept") \
    X(FLOW_END_REVOKED,    5, FLOW_END, "the policy in force now denies it: removed") \
    X(FLOW_END_REPLACED,   6, FLOW_END, "a new connection reused its 5-tuple after the slow path blocked it") \
    X(FLOW_END_SHUTDOWN,   7, FLOW_END, "still open when user space flushed the tables (end of a replay)") \
    X(FLOW_END_APP_MISMATCH, 8, FLOW_END, "it spoke another application protocol than its rule requires: removed")
enum ms_flow_end {
    MS_ENUM_FLOW_END(MS_ENUM_MEMBER)
};

/* A session's end record (ms_events, type EVENT_FLOW_END): built straight
 * in the ring from the session entry (nothing on the stack), once per
 * session end, never per packet. Per-direction arrays: index 0 is the
 * initiator's (struct ms_flow). Times are the session clock (ms_now(),
 * CLOCK_MONOTONIC); user space converts them to wall-clock time. */
struct ms_flow_event {
    __u32 type;             /* EVENT_FLOW_END: first, as in every ms_events record */
    __u8  reason;           /* enum ms_flow_end */
    __u8  state;            /* enum ms_ct_state at the end */
    __u8  action;           /* enum ms_pol_action of the session's verdict */
    __u8  insp_state;       /* enum ms_insp_state (meaningful when action is POL_INSPECT) */
    struct ms_flow_key key;
    __u64 first_seen_ns;
    __u64 last_seen_ns;
    __u64 packets[2];
    __u64 bytes[2];
    __u32 rule_id;          /* rule that decided (0: default or no policy) */
    __u32 cookie;           /* struct ms_flow.cookie: which connection of the 5-tuple */
    __u32 pol_gen;
    __u8  inspect;          /* MS_INSPECT_* of the verdict */
    __u8  app;              /* enum ms_app the L7 stage identified */
    __u8  app_req;
    __u8  initiator_is_hi;
    __u8  flags;            /* MS_FLOW_* */
    __u8  worker;           /* ms_insp_worker(): the slow-path worker of an inspected session */
    __u8  pad[6];
};
/* A session's end record in its worker's ring (MS_CFG_WORKER_ENDS), among
 * the payload records (struct ms_insp_rec). ``mark`` is where a payload
 * record has its ts_ns: MS_WORKER_END_MARK | the worker's index here, and
 * never bit 63 there (bpf_ktime_get_ns, ns since boot: 2^63 is 292 years).
 * The reader tells the two apart by that bit (appliance/flowlog.py
 * worker_end); the committer reads the worker from it and so needs no
 * read past the 8 bytes an ms_events record starts with too (its type
 * and reason, state, action, insp_state bytes: bit 63 clear, insp_state
 * being under 128). */
#define MS_WORKER_END_MARK 0x8000000000000000
struct ms_worker_end {
    __u64 mark;
    struct ms_flow_event ev;
};

/* ms_events records that could not be written (ring full, or no ring
 * buffer on this kernel), per CPU, by enum ms_event_type: never silent. */
#define MS_EVENT_TYPE_SLOTS 8   /* room for event types to come; index = enum ms_event_type */
_Static_assert((0 MS_ENUM_EVENT(MS_ENUM_COUNT)) < MS_EVENT_TYPE_SLOTS, "MS_EVENT_TYPE_SLOTS too small");
BPF_PERCPU_ARRAY(ms_events_lost, __u64, MS_EVENT_TYPE_SLOTS);
/* The layout of struct ms_flow_event for user space (BCC types a map's
 * value, not a ring's records; datapath/flowevents.py): never written. */
BPF_ARRAY(ms_flow_event_t, struct ms_flow_event, 1);

/* ------------------------------------------------------------------ */
/* Policy (lookups in policy.h; compiled by datapath/policy_compile.py) */

#define MS_ENUM_POL_ACTION(X) \
    X(POL_NONE,    0, POLICY, "no policy loaded: everything passes") \
    X(POL_ALLOW,   1, POLICY, "allow") \
    X(POL_DENY,    2, POLICY, "deny") \
    X(POL_INSPECT, 3, POLICY, "allow and inspect (DPI / WAF / DLP in the slow path)")

enum ms_pol_action {
    MS_ENUM_POL_ACTION(MS_ENUM_MEMBER)
};

#define MS_INSPECT_DPI  0x01
#define MS_INSPECT_WAF  0x02
#define MS_INSPECT_DLP  0x04
#define MS_INSPECT_HOLD 0x80   /* mode hold (else async) */
/* Hold every request (a rule with an L7 allow-list in hold mode): the
 * initiator's payload stays held for the flow's whole life, each request
 * sent on by the slow path once checked; a RELEASE or ALLOW verdict lets
 * only the responder's side go on, and the budget does not end the
 * initiator's copies (inspect.h). */
#define MS_INSPECT_HOLD_ALL 0x40
/* The rule's own failure action: 0 the configured one, else 1 + enum
 * ms_fail_action. */
#define MS_INSPECT_FAIL_SHIFT 4
#define MS_INSPECT_FAIL_MASK  0x30

/* What a rule, an override or a default decides. */
struct ms_verdict {
    __u32 rule_id;        /* 1-based rule number in the compiled policy; 0: default */
    __u8  action;         /* enum ms_pol_action */
    __u8  inspect;        /* MS_INSPECT_* */
    __u8  app;            /* application protocol the flow must speak (0: any) */
    __u8  log;            /* 1: log decisions of this rule */
};

/* Group of an address: the group of its longest prefix (struct ms_lpm_key,
 * IPv4-mapped IPv6). Two tables hold the same prefixes: an LPM trie, and a
 * hash keyed by (prefix length, address masked to it) that is probed once
 * per prefix length the policy uses, longest first (ms_pol_glen lists the
 * lengths). The first hit is the longest match, as the trie's answer. The
 * hash is used when the lengths are few against the prefixes: a trie of N
 * prefixes is walked about log2(N) nodes deep, one cache miss each when
 * cold (50,000 prefixes: ~300 ns cold, ~130 ns hot), a probe costs one or
 * two (see datapath/policy_tables.py group_lengths()). IPv4 addresses are
 * looked up in a third form instead when the slot has it, the IPv4 direct
 * table (below). */
#define MS_GROUP_WORLD 0          /* an address in no group */

/* The value of a group prefix (ms_pol_grp_t, ms_pol_gh_t): the group, and
 * what it has rules for as a source: a Bloom filter of the (destination
 * group, protocol) of its rule records (below; protocol as the record key
 * has it, MS_GROUP_ANY for "any" destination), two bits per pair,
 * h = (dgroup ^ protocol << 24) * MS_POL_BLOOM_MUL (32-bit), bits h >> 25
 * and (h >> 18) & 127 (datapath/policy_maps.py sets them). A clear bit
 * says the (source group, destination group) and (source group, any)
 * levels have no record, so a new flow skips those two lookups: at 100,000
 * rules they are cold hash misses and most of a new client's first packet
 * (bench/policy_scale.py). The filter comes with the group lookup's own
 * element. 128 bits, 2 per pair: about 7 % false "maybe" for a group with
 * 20 pairs, a lookup then as before; a group with hundreds saturates and
 * is looked up as before. */
#define MS_POL_BLOOM_BITS 128
#define MS_POL_BLOOM_MUL  0x9E3779B1   /* 2^32 / golden ratio, odd: a multiplicative hash */
struct ms_pol_group {
    __u32 id;             /* the group */
    __u32 pad;
    __u64 bloom[MS_POL_BLOOM_BITS / 64];
};
#define MS_GROUP_ANY   0xffffffff /* "any" in a rule: every group, the world too */
#define MS_GLENS_MAX   8          /* prefix lengths the hash way probes at most */
#define MS_GLENS_LPM   0xff       /* ms_pol_glens.n: use the trie */

/* The lengths to probe for one kind of address, longest first: index
 * slot * 2 + 0 for IPv4-mapped addresses, slot * 2 + 1 for the others. */
struct ms_pol_glens {
    __u8  n;              /* lengths in len[]; MS_GLENS_LPM: look up the trie */
    __u8  pad[3];
    __u8  len[MS_GLENS_MAX];
};

/* IPv4 direct table (for IPv4-mapped addresses, when the slot has one:
 * ms_pol_dir, else ms_pol_glen says): the longest group prefix of an IPv4 address
 * in at most three array reads indexed by its bytes, no hashing. A new
 * client's group was one cold probe of the group hash: a bucket in a
 * 1 MB array and an element somewhere in ~5 MB (50,000 prefixes), two
 * pages and three cache lines that a client never seen before finds in
 * neither cache nor TLB: ~520 ns on this memory-latency-bound VM (issue 18
 * item 3, bench/policy_scale.py new-host). For those prefixes these
 * arrays are ~0.6 MB against the hash's ~6 MB, and a client's reads are
 * one line of the /16 level, one of its block and its group's value, so
 * what a new client reads of them is usually still cached.
 *
 * ms_pol_dir_t: entries [0, MS_POL_DIR_ROOT) by the address's first two
 * bytes (its /16); then blocks of MS_POL_DIR_BLOCK entries, block b at
 * MS_POL_DIR_ROOT + b * MS_POL_DIR_BLOCK, indexed by the next byte. An
 * entry is either MS_POL_DIR_NEXT | b (a longer prefix lies inside: read
 * block b with the next byte; /17../24 in the first block, /25../32 in a
 * second) or the index of the group's value in ms_pol_gv_t (0: no group).
 * Filled by datapath/policy_tables.py ipv4_dir(), prefixes shortest first,
 * so each entry holds the longest prefix covering it. */
#define MS_POL_DIR_ROOT   65536
#define MS_POL_DIR_BLOCK  256
#define MS_POL_DIR_NEXT   0x80000000
/* Blocks at most: 8 MB of entries per slot. Past it (many /17../32
 * prefixes in distinct /16s or /24s) the policy uses the hash instead. */
#define MS_POL_DIR_BLOCKS_MAX 8192

/* Rule key: (prefix length, source group, destination group, protocol,
 * port), all big-endian. As an LPM key: a rule for every protocol has
 * prefix 64, for one protocol and every port 72, one port 88; a port range
 * is split into prefix-aligned blocks (73..88); the most specific match
 * wins. The kernel keeps these entries in a hash, each under its own
 * prefix length with the bits past it zero, and finds the most specific
 * one by probing the lengths present, longest first (policy.h). As a trie
 * (as it was), 400,000 entries cost a new flow ~230 ns per lookup hot and
 * 1.3 us cold: a walk down a binary trie about log2(N) nodes deep, each
 * node a dependent load; the hash costs one probe per length the pair of
 * groups uses, usually one or two (bench/policy_scale.py).
 *
 * Beside the entries, one record per (source group, destination group,
 * protocol) with entries (key: prefixlen MS_RULE_RECORD, port 0): which
 * prefix lengths 72..88 that protocol's entries have (lens bit n: 72 + n),
 * and, with MS_RULE_HAS_ANY, the verdict of the pair's rule for every
 * protocol (prefix 64), the least specific. A pair with such a rule has a
 * record for each protocol the fast path keeps sessions of (TCP, UDP,
 * ICMP, ICMPv6) and one under protocol 0 for the others, so one lookup
 * tells whether the level can match at all. */
struct ms_rule_key {
    __u32 prefixlen;
    __u8  sgroup[4];
    __u8  dgroup[4];
    __u8  proto;
    __u8  port[2];
    __u8  pad;
};
#define MS_RULE_PREFIX_ANY_PROTO 64
#define MS_RULE_PREFIX_ANY_PORT  72
#define MS_RULE_PREFIX_PORT      88
#define MS_RULE_RECORD           0
#define MS_RULE_HAS_ANY          (1u << 17)

struct ms_rule_val {
    struct ms_verdict v;  /* an entry's verdict; a record's: the rule for every protocol */
    __u32 lens;           /* a record's: bit n: entries of prefix 72 + n; MS_RULE_HAS_ANY */
};

/* Exact overrides, directional: (source, destination, source port or 0
 * for any, destination port, protocol). */
struct ms_exact_key {
    __u8  saddr[16];
    __u8  daddr[16];
    __be16 sport;
    __be16 dport;
    __u8  proto;
    __u8  pad[3];
};

/* Lookup keys of session tracking and policy evaluation, off the stack. */
struct ms_pol_scratch {
    struct ms_flow_key flow;
    struct ms_exact_key exact;
    struct ms_lpm_key addr;
    struct ms_rule_key rule;
    __u32 idx;            /* policy.h: a key for array lookups (not on the stack), */
    __u32 gidx;           /* the value index of the IPv4 direct table (ms_pol_group_dir), */
    __u32 sgroup, dgroup; /* the flow's groups, */
    __u16 port;           /* destination port, host order (0: no ports) */
    __u8  proto;          /* and protocol, as rule keys have it (0: one without sessions) */
    __u8  pad;
    __u64 sbloom[MS_POL_BLOOM_BITS / 64]; /* the source group's filter (all ones: none known) */
    __u64 live;           /* the ms_pol_live() word the flow is decided under */
    /* This CPU's last group resolution, [0] of a source, [1] of a
     * destination (policy.h ms_pol_group): new connections between the same
     * hosts skip the prefix probes. Keyed by the live word (slot and
     * generation), which every policy load changes: a load's inner maps are
     * never written after it, so an entry of the live word is still true.
     * (FastPath.reset, which zeroes the word, clears this map too.) */
    struct {
        __u64 live;       /* ms_pol_live() it was found under (0: empty) */
        __u8  addr[16];
        __u32 group;
        __u32 pad;
        __u64 bloom[MS_POL_BLOOM_BITS / 64];   /* [0]: the group's filter */
    } gcache[2];
};
BPF_PERCPU_ARRAY(ms_pol_scratch, struct ms_pol_scratch, 1);

/* The tables of one policy generation are inner maps, made and filled by
 * user space beside the running ones, each sized to its policy; these
 * templates only give the kernel their type (an inner map's size need not
 * match), so they hold one entry. Two slots per outer array: the active
 * one, and the one the next policy is written into. */
BPF_F_TABLE("lpm_trie", struct ms_lpm_key, struct ms_pol_group, ms_pol_grp_t, 1, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct ms_lpm_key, struct ms_pol_group, ms_pol_gh_t, 1, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct ms_rule_key, struct ms_rule_val, ms_pol_rule_t, 1, BPF_F_NO_PREALLOC);
BPF_TABLE("hash", struct ms_exact_key, struct ms_verdict, ms_pol_exact_t, 1);
/* The IPv4 direct table and its group values (above): arrays sized to
 * the policy, which BPF_F_INNER_MAP lets differ from the template's. */
BPF_F_TABLE("array", __u32, __u32, ms_pol_dir_t, 1, BPF_F_INNER_MAP);
BPF_F_TABLE("array", __u32, struct ms_pol_group, ms_pol_gv_t, 1, BPF_F_INNER_MAP);
BPF_ARRAY_OF_MAPS(ms_pol_grp, "ms_pol_grp_t", 2);
BPF_ARRAY_OF_MAPS(ms_pol_gh, "ms_pol_gh_t", 2);
BPF_ARRAY_OF_MAPS(ms_pol_rule, "ms_pol_rule_t", 2);
BPF_ARRAY_OF_MAPS(ms_pol_exact, "ms_pol_exact_t", 2);
BPF_ARRAY_OF_MAPS(ms_pol_dir, "ms_pol_dir_t", 2);
BPF_ARRAY_OF_MAPS(ms_pol_gv, "ms_pol_gv_t", 2);
/* Defaults per slot and hook: index slot * 2 + enum ms_dir. */
BPF_ARRAY(ms_pol_dflt, struct ms_verdict, 4);
/* Group prefix lengths per slot and kind of address (struct ms_pol_glens). */
BPF_ARRAY(ms_pol_glen, struct ms_pol_glens, 4);

/* Which slot is live. One 8-byte value, so a reload flips in one write:
 * user space fills the other slot, then writes {slot, gen + 1}. */
struct ms_pol_state {
    __u32 slot;           /* 0 or 1 */
    __u32 gen;            /* 0: no policy loaded */
};
/* Per build, not pinned: two builds can run side by side (a canary), each
 * with its own policy tables; a new build continues the generations from
 * the applied policy's record (PolicyMaps.seed_generation). */
BPF_ARRAY(ms_pol_state, struct ms_pol_state, 1);

/* ------------------------------------------------------------------ */
/* Light L7 signatures (matching in l7.h; filled by datapath/l7.py from
 * the protocol plugins, so a new plugin needs no C change)             */

/* Payload bytes the L7 stage reads from a direction's first packet. A
 * signature lies inside it: protocols/api.py MAX_SIGNATURE_OFFSET +
 * MAX_SIGNATURE_BYTES = 64. */
#define MS_L7_WINDOW 64
/* Distinct (offset, mask) shapes among all signatures: the stage does one
 * hash lookup per shape (on two packets per flow), so this bounds its cost
 * whatever the number of signatures. The built-in protocols use 12; the
 * rest is room for plugins (datapath/l7.py refuses a table past it). */
#define MS_L7_SHAPES 24
#define MS_L7_SIG_MAX 512

struct ms_l7_shape {
    __u64 mask;           /* little-endian load of payload[offset..offset+8) & mask */
    __u8  offset;
    __u8  end;            /* offset + signature length: shorter payloads cannot match */
    __u8  used;
    __u8  pad[5];
};
BPF_ARRAY(ms_l7_shapes, struct ms_l7_shape, MS_L7_SHAPES);

struct ms_l7_sig_key {
    __u64 value;          /* masked bytes */
    __u8  shape;          /* index in ms_l7_shapes */
    __u8  side;           /* 0: from the initiator, 1: from the responder */
    __u8  l4;             /* IPPROTO_TCP or IPPROTO_UDP */
    __u8  pad[5];
};
struct ms_l7_sig {
    __u8  app;            /* enum ms_app */
    __u8  pad[7];
};
BPF_HASH(ms_l7_sigs, struct ms_l7_sig_key, struct ms_l7_sig, MS_L7_SIG_MAX);

/* Per application protocol: bit per side that has signatures (a required
 * protocol that should have shown itself on this side and did not is a
 * mismatch; on a side without signatures the stage waits for the other). */
BPF_ARRAY(ms_l7_sides, __u8, 256);

/* The first payload bytes of the packet being identified. */
struct ms_l7_buf {
    __u8 b[MS_L7_WINDOW];
};
BPF_PERCPU_ARRAY(ms_l7_scratch, struct ms_l7_buf, 1);

/* ------------------------------------------------------------------ */
/* Inspection handoff (inspect.h): payload to the slow path, verdicts back */

#define MS_ENUM_INSP_STATE(X) \
    X(INSP_PENDING,  0, INSP, "payload copied to the slow path, no verdict yet") \
    X(INSP_RELEASED, 1, INSP, "slow path let it go on: copied (async) up to the budget, then passed until its verdict") \
    X(INSP_DONE,     2, INSP, "allowed or bypassed: no more copies") \
    X(INSP_BLOCKED,  3, INSP, "blocked by the slow path: every packet dropped")
enum ms_insp_state {
    MS_ENUM_INSP_STATE(MS_ENUM_MEMBER)
};
/* ms_flow_end_commit tells an ms_events record from a worker's (struct
 * ms_worker_end) by bit 63 of its first 8 bytes: in struct ms_flow_event
 * that bit is insp_state's top bit, so every state stays under 128. */
#define MS_INSP_STATE_UNDER_128(sym, val, kind, desc) && (val) < 128
_Static_assert(__builtin_offsetof(struct ms_flow_event, insp_state) == 7 &&
               (1 MS_ENUM_INSP_STATE(MS_INSP_STATE_UNDER_128)),
               "struct ms_flow_event's first 8 bytes must keep bit 63 clear (MS_WORKER_END_MARK)");

/* Payload bytes one record carries at most. A larger packet (GRO on veth,
 * TSO) is copied in part; the record's orig_len tells the slow path, whose
 * reassembly then sees a gap (but the held side of a flow that holds every
 * request: MS_INSP_HOLD_SLICES records). 4 KiB covers an MTU-sized segment twice. */
#ifndef MS_INSP_SLICE
#define MS_INSP_SLICE 4096   /* a power of two (inspect.h bounds a length with it) */
#endif
/* Records one packet of a flow that holds every request (MS_INSPECT_HOLD_ALL)
 * is copied in at most: the slow path sends on only what it read, so a
 * packet copied in part would go on in part and its rest wait for the
 * sender's retransmission timer (an upload through GRO/TSO-sized packets
 * stalled). 64 KiB: the largest GSO/GRO packet without BIG TCP. */
#define MS_INSP_HOLD_SLICES 16

/* One payload record (the ring buffer ms_insp_ring). */
struct ms_insp_rec {
    __u64 ts_ns;          /* bpf_ktime_get_ns() when copied (verdict latency starts here) */
    struct ms_flow_key key;
    __u32 seq;            /* TCP sequence number of the first byte (host order) */
    __u32 ack_seq;        /* TCP acknowledgment number (host order): the peer's next byte */
    __u32 len;            /* payload bytes in this record */
    __u32 orig_len;       /* payload bytes of the packet */
    __u32 rule_id;
    __u8  side;           /* 0: from the initiator, 1: from the responder */
    __u8  tcp_flags;
    __u8  l4;             /* IPPROTO_TCP / IPPROTO_UDP */
    __u8  app;            /* enum ms_app the L7 stage identified */
    __u8  inspect;        /* MS_INSPECT_* of the rule */
    __u8  hook;           /* enum ms_dir */
    __u8  initiator_is_hi; /* the key's addr_hi/port_hi opened the flow */
    __u8  frag;           /* MS_FRAG_* of the packet, | MS_FRAG_MORE when more fragments follow */
    __u32 frag_id;        /* IP identification of a fragment */
    __u16 frag_off;       /* a fragment's offset in 8-byte units */
    __u8  pad[2];
    __u32 cookie;         /* the session instance's (struct ms_flow.cookie) */
};

/* skb->mark of the packets the slow path sends itself (SO_MARK on its raw
 * socket: the resets to both ends of a blocked flow, the held payload of a
 * flow it lets go): the egress program passes them, though the flow's own
 * packets may be dropped. Setting a mark takes
 * CAP_NET_ADMIN, so no unprivileged process can borrow it. ("MS" = 0x4d53.) */
#define MS_RESET_MARK 0x4d530001
struct ms_insp_buf {
    struct ms_insp_rec h;
    __u8 data[MS_INSP_SLICE];
};
BPF_PERCPU_ARRAY(ms_insp_scratch, struct ms_insp_buf, 1);
#ifndef MS_INSP_RING_PAGES
#define MS_INSP_RING_PAGES 2048   /* 8 MiB */
#endif
/* Slow-path workers (appliance/workers.py): each reads a ring buffer of its
 * own and beats a heartbeat of its own. A flow's records all go to one
 * worker, chosen by a hash of its session key (inspect.h), so the flow's
 * reassembly and parser state live in one process. 64: more cores than a
 * gateway host gives its slow path, and a 64-entry array costs 1 KiB. */
#define MS_SLOWPATH_WORKERS_MAX 64
#ifndef MS_NO_RINGBUF
/* Worker 0's ring, and the template of the others: user space creates a
 * ring of the same size per further worker (datapath/insp_rings.py) and
 * puts each in ms_insp_rings by worker index (slot 0: this one). */
MS_STATE_RINGBUF(ms_insp_ring, MS_INSP_RING_PAGES);
BPF_ARRAY_OF_MAPS(ms_insp_rings, "ms_insp_ring", MS_SLOWPATH_WORKERS_MAX);
/* Per worker: non-zero while it is awake reading its ring. The worker
 * (appliance/workers.py) sets it before it drains and clears it after,
 * then its event loop looks at the ring once more before it sleeps
 * (epoll is level-triggered). Records committed meanwhile skip the ring's
 * wakeup (an irq_work: ~5 us of the packet's own path, measured with
 * BPF_PROG_TEST_RUN) that would only tell an awake reader what it reads
 * anyway (inspect.h). Mapped into the worker's memory (BPF_F_MMAPABLE):
 * two stores per drain, no system call. Not pinned: a new build's workers
 * start with it clear.
 * POLL: asleep, but the worker's timer reads the ring within
 * appliance/workers.py POLL_S: a record no verdict waits on (its flow
 * released, nothing held on its side) then skips the wakeup too and is
 * read by that poll, with the next woken record or the session's end,
 * whichever comes first; any other record wakes the worker as when ASLEEP.
 * An async connection's response and FINs then cost the worker no wakeup
 * of their own (each ~40-50 us of its CPU in the lab). */
#define MS_INSP_BUSY_ASLEEP 0
#define MS_INSP_BUSY_AWAKE  1
#define MS_INSP_BUSY_POLL   2
BPF_F_TABLE("array", __u32, __u64, ms_insp_busy, MS_SLOWPATH_WORKERS_MAX, BPF_F_MMAPABLE);
#else
/* Kernels before 5.8 (or `compat: {ringbuf: off}`): a perf buffer, one
 * ring per CPU, read by slowpath/perfbuf.py. Not pinned: its rings belong
 * to the reader that opened them. */
BPF_PERF_OUTPUT(ms_insp_ring);
#endif

#define MS_ENUM_VERDICT(X) \
    X(VERDICT_ALLOW,   1, VERDICT, "allow: stop inspecting, the kernel carries the flow") \
    X(VERDICT_BLOCK,   2, VERDICT, "block: drop every packet of the flow from now on") \
    X(VERDICT_RELEASE, 3, VERDICT, "nothing found so far: stop holding, keep copying (async) up to the budget")
enum ms_verdict_code {
    MS_ENUM_VERDICT(MS_ENUM_MEMBER)
};

/* Verdicts the slow path writes, keyed by the session key; the fast path
 * merges one into the session on the flow's next packet and deletes it, so
 * user space never writes a session value (no read-modify-write race).
 * The key names a 5-tuple, which a new connection may reuse before a
 * verdict for the old one is merged (a late verdict; a hold-mode block
 * whose resets ended both ends before another packet came): the cookie
 * names the connection, and a verdict whose cookie is not the session's
 * is dropped unmerged (inspect.h). */
struct ms_slow_verdict {
    __u8  verdict;        /* enum ms_verdict_code */
    __u8  pad[3];
    __u32 cookie;         /* struct ms_flow.cookie of the session it was written for */
    __u64 ts_ns;          /* when it was written (CLOCK_MONOTONIC) */
};
#ifndef MS_VERDICT_MAX
#define MS_VERDICT_MAX 65536
#endif
/* LRU: a verdict for a flow that sends no packet after it is never merged
 * (and never deleted); such leftovers age out instead of filling the table. */
MS_STATE_TABLE("lru_hash", struct ms_flow_key, struct ms_slow_verdict, ms_verdicts, MS_VERDICT_MAX, 0);

/* The slow path's heartbeats, one per worker: CLOCK_MONOTONIC_COARSE ns of
 * its last beat (0: never started, or stopped). A worker's stale heartbeat
 * fails only the flows hashed to it (inspect.h). */
struct ms_slowpath {
    __u64 heartbeat_ns;
    __u32 pid;
    __u32 pad;
};
MS_STATE_TABLE("array", int, struct ms_slowpath, ms_slowpath, MS_SLOWPATH_WORKERS_MAX, 0);

/* ------------------------------------------------------------------ */
/* Tail calls                                                          */

#define MS_ENUM_STAGE(X) \
    X(STAGE_TCP,   0, STAGE, "TCP session tracking") \
    X(STAGE_OTHER, 1, STAGE, "UDP, ICMP echo and other protocols") \
    X(STAGE_ICMP_ERR, 2, STAGE, "ICMP errors matched to the flow they quote") \
    X(STAGE_L7,    3, STAGE, "payload: application protocol signatures, inspection handoff")

enum ms_stage {
    MS_ENUM_STAGE(MS_ENUM_MEMBER)
};
#define MS_STAGE_COUNT (0 MS_ENUM_STAGE(MS_ENUM_COUNT))
/* Stages are shared by both hooks; the hook travels in ms_pkt.dir. */
BPF_PROG_ARRAY(ms_stages, MS_STAGE_COUNT);

#endif
