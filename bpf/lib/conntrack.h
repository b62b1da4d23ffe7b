/* SPDX-License-Identifier: GPL-2.0 */
/* Session tracking: canonical keys, the two session tables, TCP state
 * machine and window tracking, UDP / ICMP echo sessions, table pressure,
 * SYN budget.
 *
 * Tables. A new flow starts in ms_halfopen (LRU): TCP until its handshake
 * completes, UDP and ICMP echo until the first reply. Then it is promoted
 * into ms_flows (plain hash). Each is two tables, one per family
 * (ms_flows4 / ms_flows6, ms_halfopen4 / ms_halfopen6: maps.h), reached
 * only through the ms_flows_* and ms_halfopen_* helpers below, which pick
 * the table from the key (ms_key4_of). A SYN flood therefore only churns the LRU of
 * unreplied flows and can never evict an established session; when
 * ms_flows is full, new flows are refused at their first packet (or pass
 * without a session when allow-listed) and established ones keep working.
 *
 * TCP. The handshake and resets are a transition table (ms_tcp_fsm, filled
 * from datapath/tcp_fsm.py) over (state, flow direction, event). Once the
 * handshake is done, FIN / ACK events are legal and the closing state
 * follows from per-side FIN bookkeeping (sent a FIN? was it acknowledged?),
 * which is unambiguous where a table of flag classes is not. Every segment
 * of a known flow is checked against the nf_conntrack window model
 * (tcp_in_window: four bounds on seq / ack), a RST included; a RST changes
 * the session only at the exact sequence its receiver expects, any other in
 * the window passes for the endpoint to challenge (RFC 5961 3,
 * ms_tcp_rst_counts); a SYN on an established flow leaves it alone
 * (RFC 5961 4), unless the slow path blocked that connection and reset
 * both ends: then a SYN from its initiator opens a new one (ms_ct_tcp).
 *
 * Concurrency: two CPUs may update one session at once (the two directions
 * of a flow); like Cilium's conntrack this is lock-free, with each field
 * written whole, and counters per direction so the directions do not share
 * a word.
 */
#ifndef MS_CONNTRACK_H
#define MS_CONNTRACK_H

#include "maps.h"
#include "parse.h"
#include "policy.h"
#include "worker.h"

#define MS_NSEC 1000000000ULL

/* The session clock: CLOCK_MONOTONIC at tick resolution (kernel 5.11+).
 * Timeouts are seconds; the precise bpf_ktime_get_ns costs ~27 ns a read
 * on these VMs (measured, a third of an established packet's cost), the
 * coarse one is a helper call too (7-16 ns; ms_pkt_now below calls it once
 * a tick). User space compares against CLOCK_MONOTONIC. */
#ifdef MS_NO_COARSE_CLOCK
/* Before 5.11 (datapath/compat.py): the precise clock, same time base
 * (CLOCK_MONOTONIC); the user-space sweeper reads the coarse one, which
 * lags it by at most a tick. */
#define ms_now() bpf_ktime_get_ns()
#else
#define ms_now() bpf_ktime_get_coarse_ns()
#endif

/* The session clock for a packet (the entry program's lane and first
 * fragments, the tracking stages), without a helper call per packet:
 * the coarse clock moves only at the tick, as jiffies does, and
 * bpf_jiffies64() is inlined by the verifier (a load; 64-bit JITs), where
 * bpf_ktime_get_coarse_ns stays a call (7-15 ns, bench/fastpath_steps.py).
 * So the helper is called only when jiffies moved since this CPU's last
 * reading (ms_clock), and the value is exactly the helper's. One care:
 * the timekeeper advances jiffies a moment before the clock, so a reading
 * taken in between still shows the previous tick's time. Such a reading,
 * equal to the one kept, is not stored with the new jiffies: the next
 * packet asks again. Only when this CPU missed a tick's update and read in
 * that moment is an old time kept, until jiffies moves again: a lag of the
 * ticks of that one update (one, or the few an idle timekeeper catches up
 * at once), where the sweeper and the timeouts count seconds. */
static __always_inline __u64 ms_pkt_now(void)
{
#ifdef MS_NO_COARSE_CLOCK
    return ms_now();
#else
    __u32 z = 0;
    struct ms_clock *c = ms_clock.lookup(&z);
    __u64 j = bpf_jiffies64();
    if (c && c->jiffies == j)
        return c->ns;
    __u64 now = ms_now();
    if (c && c->ns != now) {
        c->ns = now;
        c->jiffies = j;
    }
    return now;
#endif
}
/* nf_conntrack's MAXACKWINDOW floor: acks may lag the peer's data by this
 * much even when the advertised windows were small. */
#define MS_MIN_ACK_WINDOW 66000
/* Most data a SYN can carry (TCP Fast Open): one segment. */
#define MS_MAX_SYN_DATA 65535
/* Longest idle gap the token bucket credits, so a bucket unused for hours
 * does not overflow the refill arithmetic. */
#define MS_BUCKET_MAX_GAP_NS (10 * MS_NSEC)

#define MS_EEXIST 17

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* seq arithmetic modulo 2^32 (RFC 793 3.3) */
static __always_inline int ms_before(__u32 a, __u32 b) { return (__s32)(a - b) < 0; }
static __always_inline int ms_after(__u32 a, __u32 b) { return (__s32)(b - a) < 0; }

static __always_inline struct ms_config *ms_cfg(void)
{
    __u32 z = 0;
    return ms_config.lookup(&z);
}

/* ------------------------------------------------------------------ */
/* Keys and lookup                                                     */

/* Compare (addr, port) endpoints; < 0 when a sorts before b. */
static __always_inline int ms_ep_cmp(const __u8 *a, __be16 ap,
                                     const __u8 *b, __be16 bp)
{
#pragma unroll
    for (int i = 0; i < 16; i += 4) {
        __u32 x = bpf_ntohl(*(__u32 *)(a + i)), y = bpf_ntohl(*(__u32 *)(b + i));
        if (x != y)
            return x < y ? -1 : 1;
    }
    __u16 ha = bpf_ntohs(ap), hb = bpf_ntohs(bp);
    if (ha != hb)
        return ha < hb ? -1 : 1;
    return 0;
}

/* Copy a 16-byte address between fields at 4-byte aligned offsets of
 * their structs (struct ms_pkt, struct ms_flow_key, icmp.h struct
 * ms_quoted; ms_ep_cmp reads them as words too) as four words: through
 * byte pointers clang loaded each byte on its own and shifted them back
 * together, 16 loads an address (bpftool prog dump xlated). */
static __always_inline void ms_addr_copy(__u8 *dst, const __u8 *src)
{
    const __u32 *s = (const __u32 *)src;
    __u32 *d = (__u32 *)dst;
    d[0] = s[0];
    d[1] = s[1];
    d[2] = s[2];
    d[3] = s[3];
}

/* Fill the canonical key from addresses and ports; return 1 when the
 * source is the "hi" endpoint. */
static __always_inline int ms_key_fill(struct ms_flow_key *k, const __u8 *saddr, __be16 sport,
                                       const __u8 *daddr, __be16 dport, __u8 proto)
{
    int src_is_hi = ms_ep_cmp(saddr, sport, daddr, dport) > 0;

    if (src_is_hi) {
        ms_addr_copy(k->addr_lo, daddr);
        ms_addr_copy(k->addr_hi, saddr);
        k->port_lo = dport;
        k->port_hi = sport;
    } else {
        ms_addr_copy(k->addr_lo, saddr);
        ms_addr_copy(k->addr_hi, daddr);
        k->port_lo = sport;
        k->port_hi = dport;
    }
    k->proto = proto;
    return src_is_hi;
}

/* The flow key of the packet being handled, in per-CPU scratch. */
static __always_inline struct ms_flow_key *ms_flow_key_scratch(void)
{
    __u32 z = 0;
    struct ms_pol_scratch *sc = ms_pol_scratch.lookup(&z);
    if (!sc)
        return 0;
    __builtin_memset(&sc->flow, 0, sizeof(sc->flow));
    return &sc->flow;
}

static __always_inline int ms_flow_key_of(const struct ms_pkt *p, struct ms_flow_key *k)
{
    return ms_key_fill(k, p->saddr, p->sport, p->daddr, p->dport, p->proto);
}

/* ------------------------------------------------------------------ */
/* The session tables by family                                        */

/* The one place the kernel decides a session's family: a key whose two
 * addresses are both IPv4-mapped is an IPv4 session, kept in ms_flows4 /
 * ms_halfopen4 under *k4 (filled, returns 1); any other in ms_flows6 /
 * ms_halfopen6 under the key itself (returns 0). Decided from the key, not
 * the packet's family, so that every reader holding only a key (the payload
 * stage, ICMP errors, the sweep's records, user space: datapath/sessions.py
 * key4_of) finds the same table; an IPv6 packet between two IPv4-mapped
 * addresses had the IPv4 flow's key before the split and still has. */
static __always_inline int ms_key4_of(const struct ms_flow_key *k, struct ms_flow_key4 *k4)
{
    const __u32 *lo = (const __u32 *)k->addr_lo, *hi = (const __u32 *)k->addr_hi;
    if ((lo[0] | lo[1] | hi[0] | hi[1]) || lo[2] != bpf_htonl(0xffff) || hi[2] != bpf_htonl(0xffff))
        return 0;
    k4->addr_lo = lo[3];
    k4->addr_hi = hi[3];
    k4->port_lo = k->port_lo;
    k4->port_hi = k->port_hi;
    k4->proto = k->proto;
    return 1;
}

/* The canonical key of IPv4 session key k4 (ms_key4_of's inverse): what
 * the session's end record names it by (the kernel sweep writes it
 * straight into the record). k must be 8-byte aligned (a struct
 * ms_flow_event's key is): written as five 8-byte words and two 4-byte
 * ones, where the byte-wise form (memset, then each address byte: struct
 * ms_flow_key is only 2-aligned, so clang stores it 1 and 2 bytes at a
 * time) took 33 stores. Byte for byte the same key: each address
 * IPv4-mapped (::ffff:a.b.c.d: 10 zero bytes, 0xff 0xff, the address's 4
 * wire bytes), the ports, the protocol and 3 zero bytes of padding. */
static __always_inline void ms_key_of4(const struct ms_flow_key4 *k4, struct ms_flow_key *k)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    __u64 *w = (__u64 *)k;
    __u32 *h = (__u32 *)k;
    w[0] = 0;
    w[1] = 0xffff0000ULL | ((__u64)k4->addr_lo << 32);   /* bytes 8-15: 0 0 ff ff a b c d */
    w[2] = 0;
    w[3] = 0xffff0000ULL | ((__u64)k4->addr_hi << 32);
    h[8] = *(const __u32 *)&k4->port_lo;                  /* port_lo, port_hi: as in k4 */
    h[9] = k4->proto;                                     /* proto, then 3 zero bytes */
#else
    __builtin_memset(k, 0, sizeof(*k));
    k->addr_lo[10] = 0xff;
    k->addr_lo[11] = 0xff;
    k->addr_hi[10] = 0xff;
    k->addr_hi[11] = 0xff;
    __builtin_memcpy(k->addr_lo + 12, &k4->addr_lo, 4);
    __builtin_memcpy(k->addr_hi + 12, &k4->addr_hi, 4);
    k->port_lo = k4->port_lo;
    k->port_hi = k4->port_hi;
    k->proto = k4->proto;
#endif
}
_Static_assert(sizeof(struct ms_flow_key) == 40 && __builtin_offsetof(struct ms_flow_key, port_lo) == 32 &&
               __builtin_offsetof(struct ms_flow_key, proto) == 36, "ms_key_of4: the key's word layout");
_Static_assert(__builtin_offsetof(struct ms_flow_key4, port_lo) == 8 &&
               __builtin_offsetof(struct ms_flow_key4, port_hi) == 10, "ms_key_of4: k4's ports as one word");

/* Keep each table's map call a call instruction of its own: an empty asm
 * (a comment, no instruction) naming the table after it. Merged (clang
 * sinks the like calls of two branches into one, the map chosen in a
 * register; the nomerge attribute did not stop it), the verifier sees two
 * maps at one call and neither inlines the lookup nor calls the map's own
 * function directly: measured, an established tcp4 packet +5 ns, tcp6 +16
 * (bench/fastpath_ab.py). Asm statements are never merged. */
#define MS_OWN_CALL(table, ret) asm volatile("# " #table : "+r"(ret))

static __always_inline struct ms_flow *ms_flows_lookup(const struct ms_flow_key *k)
{
    struct ms_flow_key4 k4 = {};
    struct ms_flow *f;
    if (ms_key4_of(k, &k4)) {
        f = ms_flows4.lookup(&k4);
        MS_OWN_CALL(ms_flows4, f);
    } else {
        f = ms_flows6.lookup((struct ms_flow_key *)k);
        MS_OWN_CALL(ms_flows6, f);
    }
    return f;
}

/* 0, or the map update's error (-EEXIST for an entry already there). */
static __always_inline int ms_flows_insert(const struct ms_flow_key *k, struct ms_flow *f)
{
    struct ms_flow_key4 k4 = {};
    int r;
    if (ms_key4_of(k, &k4)) {
        r = ms_flows4.insert(&k4, f);
        MS_OWN_CALL(ms_flows4, r);
    } else {
        r = ms_flows6.insert((struct ms_flow_key *)k, f);
        MS_OWN_CALL(ms_flows6, r);
    }
    return r;
}

static __always_inline int ms_flows_update(const struct ms_flow_key *k, struct ms_flow *f)
{
    struct ms_flow_key4 k4 = {};
    int r;
    if (ms_key4_of(k, &k4)) {
        r = ms_flows4.update(&k4, f);
        MS_OWN_CALL(ms_flows4, r);
    } else {
        r = ms_flows6.update((struct ms_flow_key *)k, f);
        MS_OWN_CALL(ms_flows6, r);
    }
    return r;
}

static __always_inline int ms_flows_delete(const struct ms_flow_key *k)
{
    struct ms_flow_key4 k4 = {};
    int r;
    if (ms_key4_of(k, &k4)) {
        r = ms_flows4.delete(&k4);
        MS_OWN_CALL(ms_flows4, r);
    } else {
        r = ms_flows6.delete((struct ms_flow_key *)k);
        MS_OWN_CALL(ms_flows6, r);
    }
    return r;
}

/* An IPv4 session's key from a packet's addresses and ports (network
 * order; the ports as they lie in the TCP or UDP header, source first, one
 * word), in ms_key_fill's endpoint order. Returns whether the source is the
 * high end. The ports are swapped as a word, a rotation by 16 in either
 * byte order: selected port by port, clang chose between the two fields'
 * addresses and loaded each again. */
static __always_inline int ms_key4_build(struct ms_flow_key4 *k4, __be32 s, __be32 d, __u32 ports,
                                         __u8 proto)
{
    __u32 hs = bpf_ntohl(s), hd = bpf_ntohl(d);
    __be16 sport, dport;
    __builtin_memcpy(&sport, &ports, sizeof(sport));
    __builtin_memcpy(&dport, (__u8 *)&ports + sizeof(sport), sizeof(dport));
    int hi = hs != hd ? hs > hd : bpf_ntohs(sport) > bpf_ntohs(dport);
    k4->addr_lo = hi ? d : s;
    k4->addr_hi = hi ? s : d;
    if (hi)
        ports = ports >> 16 | ports << 16;
    __builtin_memcpy(&k4->port_lo, &ports, sizeof(ports));
    k4->proto = proto;
    return hi;
}

/* ms_flows_lookup for the session of a packet, with the side of its source
 * endpoint (*src_is_hi): the established lane's one lookup. An IPv4
 * packet's 16-byte key is built from its addresses directly, without the
 * canonical key (parse.h stores them IPv4-mapped, so ms_key4_of would pick
 * ms_flows4 for it too, with the same endpoint order as ms_key_fill). */
static __always_inline struct ms_flow *ms_flows_lookup_pkt(const struct ms_pkt *p, int *src_is_hi)
{
    if (p->family == 4) {
        struct ms_flow_key4 k4 = {};
        __u32 ports;
        __builtin_memcpy(&ports, &p->sport, sizeof(ports));   /* sport, dport: adjacent */
        *src_is_hi = ms_key4_build(&k4, *(const __be32 *)(p->saddr + 12),
                                   *(const __be32 *)(p->daddr + 12), ports, p->proto);
        struct ms_flow *f = ms_flows4.lookup(&k4);
        MS_OWN_CALL(ms_flows4, f);
        return f;
    }
    struct ms_flow_key k = {};
    *src_is_hi = ms_flow_key_of(p, &k);
    return ms_flows_lookup(&k);
}

static __always_inline struct ms_flow *ms_halfopen_lookup(const struct ms_flow_key *k)
{
    struct ms_flow_key4 k4 = {};
    struct ms_flow *f;
    if (ms_key4_of(k, &k4)) {
        f = ms_halfopen4.lookup(&k4);
        MS_OWN_CALL(ms_halfopen4, f);
    } else {
        f = ms_halfopen6.lookup((struct ms_flow_key *)k);
        MS_OWN_CALL(ms_halfopen6, f);
    }
    return f;
}

static __always_inline int ms_halfopen_update(const struct ms_flow_key *k, struct ms_flow *f)
{
    struct ms_flow_key4 k4 = {};
    int r;
    if (ms_key4_of(k, &k4)) {
        r = ms_halfopen4.update(&k4, f);
        MS_OWN_CALL(ms_halfopen4, r);
    } else {
        r = ms_halfopen6.update((struct ms_flow_key *)k, f);
        MS_OWN_CALL(ms_halfopen6, r);
    }
    return r;
}

static __always_inline int ms_halfopen_delete(const struct ms_flow_key *k)
{
    struct ms_flow_key4 k4 = {};
    int r;
    if (ms_key4_of(k, &k4)) {
        r = ms_halfopen4.delete(&k4);
        MS_OWN_CALL(ms_halfopen4, r);
    } else {
        r = ms_halfopen6.delete((struct ms_flow_key *)k);
        MS_OWN_CALL(ms_halfopen6, r);
    }
    return r;
}

static __always_inline __u64 ms_timeout(__u8 state)
{
    __u32 k = state;
    __u64 *t = ms_timeouts.lookup(&k);
    return t ? *t : 30 * MS_NSEC;
}

#define MS_IN_FLOWS    1
#define MS_IN_HALFOPEN 2

/* Half-open table bookkeeping, so user space can tell LRU evictions. */
static __always_inline void ms_halfopen_count(int inserted)
{
    __u32 z = 0;
    struct ms_pressure *pr = ms_pressure.lookup(&z);
    if (pr) {
        if (inserted)
            __sync_fetch_and_add(&pr->halfopen_inserted, 1);
        else
            __sync_fetch_and_add(&pr->halfopen_removed, 1);
    }
}

static __always_inline void ms_halfopen_del(struct ms_flow_key *k)
{
    if (ms_halfopen_delete(k) == 0)
        ms_halfopen_count(0);
}

static __always_inline void ms_halfopen_put(struct ms_flow_key *k, struct ms_flow *nf)
{
    if (ms_halfopen_update(k, nf) == 0)
        ms_halfopen_count(1);
}

static __always_inline void ms_pressure_add(int field_deleted)
{
    __u32 z = 0;
    struct ms_pressure *pr = ms_pressure.lookup(&z);
    if (pr) {
        if (field_deleted)
            __sync_fetch_and_add(&pr->deleted, 1);
        else
            __sync_fetch_and_add(&pr->insert_failed, 1);
    }
}

/* ------------------------------------------------------------------ */
/* Session-end records (struct ms_flow_event on ms_events)              */

/* A record that could not be written, counted by event type. */
static __always_inline void ms_event_lost(__u32 type)
{
    __u64 *n = ms_events_lost.lookup(&type);
    if (n)
        (*n)++;
}

/* Fill a session's end record from its entry, all but ev->key, which the
 * caller writes (wk: the same key, the worker is chosen by it). No map is
 * touched here: the kernel sweep's callback (sweep.h), which may use none
 * but the ones its loader patches, fills its records with this too, the
 * key converted straight into the record (no copy on the stack). Every
 * byte is written (a ring's reserved memory is not zeroed). */
static __always_inline void ms_flow_event_fill_keyed(struct ms_flow_event *ev, const struct ms_flow_key *wk,
                                                     const struct ms_flow *f, __u8 reason, __u32 workers)
{
    ev->type = EVENT_FLOW_END;
    ev->reason = reason;
    ev->state = f->state;
    ev->action = f->action;
    ev->insp_state = f->insp_state;
    ev->first_seen_ns = f->first_seen_ns;
    ev->last_seen_ns = f->last_seen_ns;
    ev->packets[0] = f->packets[0];
    ev->packets[1] = f->packets[1];
    ev->bytes[0] = f->bytes[0];
    ev->bytes[1] = f->bytes[1];
    ev->rule_id = f->rule_id;
    ev->cookie = f->cookie;
    ev->pol_gen = f->pol_gen;
    ev->inspect = f->inspect;
    ev->app = f->app;
    ev->app_req = f->app_req;
    ev->initiator_is_hi = f->initiator_is_hi;
    ev->flags = f->flags;
    ev->worker = f->action == POL_INSPECT ? ms_worker_of(wk, workers) : 0;
    __builtin_memset(ev->pad, 0, sizeof(ev->pad));
}

/* The same, the key copied from k. Copied after the rest, as the
 * fields were stored before the split: with the copy first, clang gave
 * ms_stage_tcp 320 bytes of stack, over the budget (tests/datapath/test_stack.py). */
static __always_inline void ms_flow_event_fill(struct ms_flow_event *ev, const struct ms_flow_key *k,
                                               const struct ms_flow *f, __u8 reason, __u32 workers)
{
    ms_flow_event_fill_keyed(ev, k, f, reason, workers);
    __builtin_memcpy(&ev->key, k, sizeof(*k));
}

/* The ring of the worker that holds inspected session f (key k), and that
 * worker in *worker, when its end record goes there (MS_CFG_WORKER_ENDS),
 * or 0: ms_events. In the worker's ring the record comes after the
 * session's payload records, and the worker logs it when it reads it, in
 * order, with no message from the daemon (which read, decoded and
 * forwarded the ms_events record; handling that message was 54 us of a
 * worker's ~450 per inspected connection in the lab, docs/performance.md
 * 4.6). A worker whose heartbeat is 0 (dead: the daemon zeroes it at
 * once; stopping: the worker does) or stale has its ends go to ms_events,
 * whose reader logs them itself or forwards them. */
static __always_inline void *ms_flow_end_ring(const struct ms_flow_key *k, const struct ms_flow *f,
                                              const struct ms_config *cfg, __u32 *worker)
{
#ifdef MS_NO_RINGBUF
    return 0;
#else
    if (f->action != POL_INSPECT || !(cfg->flags & MS_CFG_WORKER_ENDS))
        return 0;
    __u32 w = ms_insp_worker(k, cfg);
    struct ms_slowpath *sp = ms_slowpath.lookup(&w);
    if (!sp || !sp->heartbeat_ns || ms_now() - sp->heartbeat_ns > cfg->hb_timeout_ns)
        return 0;
    *worker = w;
    return ms_insp_rings.lookup(&w);
#endif
}

/* Reserve and fill the end record of session f (key k), or 0: its record
 * was sent already (MS_FLOW_LOGGED), or the ring is full (counted). The
 * record is a struct ms_worker_end in the worker's ring of an inspected
 * session (ms_flow_end_ring), or a struct ms_flow_event in ms_events (also
 * when the worker's ring is full). The caller removes the session, then
 * commits: submitted when the removal was its own, discarded when another
 * CPU removed it first (that one sends it). */
static __always_inline void *ms_flow_end_begin(const struct ms_flow_key *k, const struct ms_flow *f, __u8 reason)
{
    if (f->flags & MS_FLOW_LOGGED)
        return 0;
#ifdef MS_NO_RINGBUF
    ms_event_lost(EVENT_FLOW_END);   /* no ring buffer on this kernel: counted only */
    return 0;
#else
    struct ms_config *cfg = ms_cfg();
    void *rec = 0;
    struct ms_flow_event *ev = 0;
    __u32 w = 0;
    void *ring = cfg ? ms_flow_end_ring(k, f, cfg, &w) : 0;
    if (ring) {
        struct ms_worker_end *we = bpf_ringbuf_reserve(ring, sizeof(struct ms_worker_end), 0);
        if (we) {
            we->mark = MS_WORKER_END_MARK | w;
            rec = we;
            ev = &we->ev;
        }
    }
    if (!rec) {
        rec = ev = ms_events.ringbuf_reserve(sizeof(struct ms_flow_event));
        if (!rec) {
            ms_event_lost(EVENT_FLOW_END);
            return 0;
        }
    }
    ms_flow_event_fill(ev, k, f, reason, cfg ? cfg->workers : 0);
    return rec;
#endif
}

/* Send or drop record ``rec`` of ms_flow_end_begin. One in a worker's ring
 * (MS_WORKER_END_MARK in its first word) wakes the worker as a payload
 * record no verdict waits on does (inspect.h ms_insp_packet): not while it
 * reads, nor while its poll is due (the poll reads it within
 * appliance/workers.py POLL_S), the state read again after the commit and
 * a forced wakeup if the worker went to sleep meanwhile (it may have
 * looked at the ring before this record was in it). A session end waits
 * for no verdict: its flow record is at most POLL_S later, and the worker
 * reads it with the records around it instead of waking for it. */
static __always_inline void ms_flow_end_commit(void *rec, int ended)
{
#ifndef MS_NO_RINGBUF
    if (!rec)
        return;
    if (!ended) {
        bpf_ringbuf_discard(rec, 0);
        return;
    }
    __u64 mark = *(__u64 *)rec;
    if (!(mark & MS_WORKER_END_MARK)) {
        bpf_ringbuf_submit(rec, 0);      /* ms_events */
        return;
    }
    __u32 w = (__u32)mark;
    __u64 *busy = ms_insp_busy.lookup(&w);   /* u64: BPF fetch atomics are 64-bit here */
    __u64 state = busy ? __sync_fetch_and_add(busy, 0) : MS_INSP_BUSY_ASLEEP;
    if (state == MS_INSP_BUSY_ASLEEP) {
        bpf_ringbuf_submit(rec, 0);
        return;
    }
    bpf_ringbuf_submit(rec, BPF_RB_NO_WAKEUP);
    if (__sync_fetch_and_add(busy, 0) == MS_INSP_BUSY_ASLEEP) {
        void *ring = ms_insp_rings.lookup(&w);
        void *nudge = ring ? bpf_ringbuf_reserve(ring, 8, 0) : 0;
        if (nudge)
            bpf_ringbuf_discard(nudge, BPF_RB_FORCE_WAKEUP);
    }
#endif
}

/* The state a session is in. One whose end record went (MS_FLOW_LOGGED,
 * set only on TIME_WAIT or CLOSE) is closed, whatever state was stored
 * after: of a close's two crossing last ACKs (ms_fin_acked), the one that
 * saw only its own half stores LAST_ACK, and that store may land after the
 * other's TIME_WAIT. Read as LAST_ACK, a new SYN reusing the ports would be
 * ignored, the entry would expire on LAST_ACK's timeout and be listed so.
 * datapath/sessions.py effective_states() is the same rule for user space. */
static __always_inline __u8 ms_flow_state(const struct ms_flow *f)
{
    __u8 st = f->state;
    return ((f->flags & MS_FLOW_LOGGED) && st != CT_CLOSE) ? CT_TIME_WAIT : st;
}

/* Has the flow been idle past the timeout of ``state``? Signed: another
 * CPU may have stamped last_seen a moment after this CPU read the clock. */
static __always_inline int ms_ct_idle_past(const struct ms_flow *f, __u8 state, __u64 now)
{
    return (__s64)(now - f->last_seen_ns) > (__s64)ms_timeout(state);
}

/* Has the flow been idle past its state's timeout? */
static __always_inline int ms_ct_expired(const struct ms_flow *f, __u64 now)
{
    return ms_ct_idle_past(f, ms_flow_state(f), now);
}

/* The flow in ms_flows, or NULL. An entry idle past its state's timeout
 * is deleted here (lazy expiry) and reported as absent. */
static __always_inline struct ms_flow *ms_ct_lookup_flows(struct ms_flow_key *k, __u64 now)
{
    struct ms_flow *f = ms_flows_lookup(k);
    if (f && ms_ct_expired(f, now)) {
        void *rec = ms_flow_end_begin(k, f, FLOW_END_TIMEOUT);
        int gone = ms_flows_delete(k) == 0;
        if (gone)
            ms_pressure_add(1);
        ms_flow_end_commit(rec, gone);
        return 0;
    }
    return f;
}

/* What the established lane's lookups already found missing (struct
 * ms_pkt lane_absent; fastpath.c, from conntrack.h ms_ct_tcp4_lane). */
#define MS_ABSENT_FLOWS 1   /* no entry in ms_flows */
#define MS_ABSENT_BOTH  2   /* none in ms_halfopen either */

/* Find the flow in either table. An entry idle past its state's timeout
 * is deleted here (lazy expiry) and reported as absent. ``flows_absent``:
 * this packet's ms_flows lookup already missed (the established lane's,
 * just before the tail call; MS_ABSENT_*): ms_halfopen is looked in first,
 * where a handshake's last ACK finds its session, and ms_flows only when
 * that misses too (an entry another CPU promoted in between is still
 * found), so such an ACK costs one lookup, not two; when the lane missed
 * in ms_halfopen too (MS_ABSENT_BOTH: a segment without a session) only
 * that last ms_flows lookup is made. */
static __always_inline struct ms_flow *ms_ct_lookup_from(struct ms_flow_key *k, __u64 now, int *where,
                                                         int flows_absent)
{
    struct ms_flow *f;
    if (!flows_absent) {
        f = ms_ct_lookup_flows(k, now);
        if (f) {
            *where = MS_IN_FLOWS;
            return f;
        }
    }
    f = flows_absent == MS_ABSENT_BOTH ? 0 : ms_halfopen_lookup(k);
    if (f) {
        if (!ms_ct_expired(f, now)) {
            *where = MS_IN_HALFOPEN;
            return f;
        }
        void *rec = ms_flow_end_begin(k, f, FLOW_END_TIMEOUT);
        int gone = ms_halfopen_delete(k) == 0;
        if (gone)
            ms_halfopen_count(0);
        ms_flow_end_commit(rec, gone);
    }
    if (flows_absent) {
        f = ms_ct_lookup_flows(k, now);
        if (f) {
            *where = MS_IN_FLOWS;
            return f;
        }
    }
    *where = 0;
    return 0;
}

static __always_inline struct ms_flow *ms_ct_lookup(struct ms_flow_key *k, __u64 now, int *where)
{
    return ms_ct_lookup_from(k, now, where, 0);
}

static __always_inline void ms_ct_account(struct ms_flow *f, int fd, __u32 len, __u64 now)
{
    f->last_seen_ns = now;
    if (fd) {
        f->packets[1]++;
        f->bytes[1] += len;
    } else {
        f->packets[0]++;
        f->bytes[0] += len;
    }
}

/* A zeroed new session in per-CPU scratch (a struct ms_flow on the stack
 * per creation site would cost the stage a quarter of its stack). */
static __always_inline struct ms_flow *ms_flow_new(const struct ms_pkt *p, int src_is_hi,
                                                   __u8 state, __u8 flags, __u64 now)
{
    __u32 z = 0;
    struct ms_flow *nf = ms_flow_scratch.lookup(&z);
    if (!nf)
        return 0;
    __builtin_memset(nf, 0, sizeof(*nf));
    nf->first_seen_ns = now;
    nf->last_seen_ns = now;
    nf->initiator_is_hi = src_is_hi;
    nf->state = state;
    nf->flags = flags | (p->dir == DIR_EGRESS ? MS_FLOW_EGRESS_OPENED : 0);
    nf->packets[0] = 1;
    nf->bytes[0] = p->len;
    /* Which connection of this 5-tuple (maps.h struct ms_slow_verdict).
     * Random, not the creation time: the coarse clock's tick is longer
     * than a reset and a reconnect from the same port; not the ISN: UDP
     * and picked-up flows have none. One helper call per new session. */
    nf->cookie = bpf_get_prandom_u32();
    return nf;
}

static __always_inline void ms_flow_set_verdict(struct ms_flow *f, const struct ms_verdict *v,
                                                __u32 gen)
{
    f->action = v->action;
    f->inspect = v->inspect;
    f->rule_id = v->rule_id;
    f->pol_gen = gen;
    f->app_req = v->app;
}

/* Does the L7 stage want this side's payload (its first), and the
 * inspection hand-off this packet? ms_l7_mark's two conditions, asked by
 * the established lane too (which marks nothing: it lets such a packet go
 * to the TCP stage). */
static __always_inline int ms_l7_side_wanted(const struct ms_flow *f, int side, __u32 payload_len)
{
    return payload_len && !(f->l7_seen & (1 << side));
}

static __always_inline int ms_insp_wanted(const struct ms_flow *f, __u32 payload_len, int fin_or_rst)
{
    return f->action == POL_INSPECT && f->insp_state < INSP_DONE && (payload_len || fin_or_rst);
}

/* Hand a side's first payload to the L7 stage (l7.h) after this one, and
 * every packet of an inspected flow that carries payload or ends it to the
 * handoff (inspect.h). */
static __always_inline void ms_l7_mark(struct ms_pkt *p, const struct ms_flow *f, int side)
{
    if (ms_l7_side_wanted(f, side, p->payload_len))
        p->l7_side = 1 + side;
    if (ms_insp_wanted(f, p->payload_len,
                       p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST))))
        p->insp = 1 + side;
}

/* ------------------------------------------------------------------ */
/* Capacity                                                            */

static __always_inline __u64 ms_flows_entries(struct ms_pressure *pr, struct ms_pressure_user *pu)
{
    __u64 gone = pr->deleted + pu->deleted;
    return pr->inserted > gone ? pr->inserted - gone : 0;
}

/* Is ms_flows full? Counted from inserts and deletes (kernel's and the
 * sweeper's), since a hash map has no cheap size. */
static __always_inline int ms_flows_full(void)
{
    __u32 z = 0;
    struct ms_pressure *pr = ms_pressure.lookup(&z);
    struct ms_pressure_user *pu = ms_pressure_user.lookup(&z);
    if (!pr || !pu)
        return 0;
    return ms_flows_entries(pr, pu) >= MS_FLOW_MAX;
}

/* After an insert: alert user space once per crossing of the threshold. */
static __always_inline void ms_pressure_inserted(__u64 now)
{
    __u32 z = 0;
    struct ms_pressure *pr = ms_pressure.lookup(&z);
    struct ms_pressure_user *pu = ms_pressure_user.lookup(&z);
    struct ms_config *cfg = ms_cfg();
    if (!pr || !pu || !cfg)
        return;
    __sync_fetch_and_add(&pr->inserted, 1);
    __u64 entries = ms_flows_entries(pr, pu);
    if (entries * 100 < (__u64)MS_FLOW_MAX * cfg->pressure_pct)
        return;
    __u64 armed_for = pu->gen + 1;
    __u64 seen = pr->alert_gen;
    if (seen == armed_for)
        return;
    if (__sync_val_compare_and_swap(&pr->alert_gen, seen, armed_for) != seen)
        return;  /* another CPU sent it */
    __sync_fetch_and_add(&pr->alerts, 1);
#ifdef MS_NO_RINGBUF
    /* No ring buffer (and no packet context here for a perf buffer): the
     * alert is counted in ms_pressure, which status and metrics read. */
    return;
#else
    struct ms_event *ev = ms_events.ringbuf_reserve(sizeof(struct ms_event));
    if (!ev)
        return;
    ev->type = EVENT_TABLE_PRESSURE;
    ev->pct = entries * 100 / MS_FLOW_MAX;
    ev->ts_ns = now;
    ev->entries = entries;
    ev->capacity = MS_FLOW_MAX;
    ms_events.ringbuf_submit(ev, 0);
#endif
}

/* Remove session f from the table it is in (policy revoked it, a new
 * connection replaces it), with its end record. */
static __always_inline void ms_ct_remove(struct ms_flow_key *k, int where, const struct ms_flow *f,
                                         __u8 reason)
{
    void *rec = ms_flow_end_begin(k, f, reason);
    int gone;
    if (where == MS_IN_FLOWS) {
        gone = ms_flows_delete(k) == 0;
        if (gone)
            ms_pressure_add(1);
    } else {
        gone = ms_halfopen_delete(k) == 0;
        if (gone)
            ms_halfopen_count(0);
    }
    ms_flow_end_commit(rec, gone);
}

/* The session of a handshake segment, a SYN or a SYN-ACK (ms_ct_tcp):
 * looked up in ms_flows and in ms_halfopen, as ms_ct_lookup does, with the
 * same answer (an entry in ms_flows first; one idle past its state's
 * timeout deleted and reported as absent), but both lookups are made
 * before either answer is used. A new connection's SYN misses in both
 * tables, its SYN-ACK misses in ms_flows and finds ms_halfopen's entry,
 * and their buckets are cold (the SYN's: a new key; the SYN-ACK's: a round
 * trip later, on a busy gateway). In ms_ct_lookup_from the second lookup
 * waits on the first (by all signs the CPU, taught by the other packets
 * that ms_flows has the session, runs ahead down the found path, which
 * has no second lookup); here the two bucket reads overlap. Measured,
 * bench/fastpath_conn.py, builds interleaved in one run: a new tuple's SYN
 * ~150-230 ns cheaper (of ~1,000); with --phased (entries cold) the
 * SYN-ACK ~200-290 ns cheaper (of ~850); a reused port's SYN and SYN-ACK,
 * found in ms_flows, the same within noise (the extra ms_halfopen lookup
 * overlaps the ms_flows one). Not for other segments: one of an
 * established session would pay a lookup it never needs. */
static __always_inline struct ms_flow *ms_ct_lookup_handshake(struct ms_flow_key *k, __u64 now, int *where)
{
    struct ms_flow_key4 k4 = {};
    struct ms_flow *ff, *fh;
    if (ms_key4_of(k, &k4)) {
        ff = ms_flows4.lookup(&k4);
        MS_OWN_CALL(ms_flows4, ff);
        fh = ms_halfopen4.lookup(&k4);
        MS_OWN_CALL(ms_halfopen4, fh);
    } else {
        ff = ms_flows6.lookup(k);
        MS_OWN_CALL(ms_flows6, ff);
        fh = ms_halfopen6.lookup(k);
        MS_OWN_CALL(ms_halfopen6, fh);
    }
    /* ms_flows, then ms_halfopen: one copy of the expiry (its end record)
     * for both tables, not two in the TCP stage's image. */
#pragma clang loop unroll(disable)
    for (int i = 0; i < 2; i++) {
        struct ms_flow *f = i ? fh : ff;
        int w = i ? MS_IN_HALFOPEN : MS_IN_FLOWS;
        if (!f)
            continue;
        if (!ms_ct_expired(f, now)) {
            *where = w;
            return f;
        }
        ms_ct_remove(k, w, f, FLOW_END_TIMEOUT);
    }
    *where = 0;
    return 0;
}

static __always_inline int ms_allowlisted(const struct ms_pkt *p)
{
    struct ms_lpm_key k = {.prefixlen = 128};
    __builtin_memcpy(k.addr, p->saddr, 16);
    if (ms_full_allow.lookup(&k))
        return 1;
    __builtin_memcpy(k.addr, p->daddr, 16);
    return ms_full_allow.lookup(&k) != 0;
}

/* Reason for a new flow that finds the session table full. */
static __always_inline int ms_full_reason(const struct ms_pkt *p)
{
    return ms_allowlisted(p) ? PASS_TABLE_FULL_ALLOWED : DROP_FLOW_TABLE_FULL;
}

/* Move a flow that saw its reply / completed its handshake into ms_flows.
 * Returns 0, or the full-table reason when it cannot be inserted. */
static __always_inline int ms_ct_promote(struct ms_flow_key *k, struct ms_flow *f,
                                         const struct ms_pkt *p, __u64 now)
{
    int ret = ms_flows_insert(k, f);   /* straight from the half-open entry */
    if (ret == -MS_EEXIST) {
        /* the other direction's CPU promoted it first */
        ms_halfopen_del(k);
        return 0;
    }
    if (ret != 0) {
        ms_pressure_add(0);
        int r = ms_full_reason(p);
        if (r != PASS_TABLE_FULL_ALLOWED)
            ms_ct_remove(k, MS_IN_HALFOPEN, f, FLOW_END_TABLE_FULL);
        return r;
    }
    ms_halfopen_del(k);
    ms_pressure_inserted(now);
    return 0;
}

/* ------------------------------------------------------------------ */
/* SYN budget: token buckets per destination and global                */

static __always_inline int ms_bucket_take(struct ms_bucket *b, __u64 rate, __u64 burst, __u64 now)
{
    __u64 gap = now - b->last_ns;
    if (gap > MS_BUCKET_MAX_GAP_NS)
        gap = MS_BUCKET_MAX_GAP_NS;
    /* rate tokens/s = rate * 1000 milli-tokens per 1e9 ns */
    __u64 tokens = b->tokens_milli + gap * rate / 1000000;
    if (tokens > burst * 1000)
        tokens = burst * 1000;
    b->last_ns = now;
    if (tokens < 1000) {
        b->tokens_milli = tokens;
        return 0;
    }
    b->tokens_milli = tokens - 1000;
    return 1;
}

/* 0 when a new half-open flow to p->daddr may start, else the drop reason. */
static __always_inline int ms_syn_budget(const struct ms_pkt *p, struct ms_config *cfg, __u64 now)
{
    if (cfg->syn_dst_rate) {
        struct ms_addr_key dk = {};
        __builtin_memcpy(dk.addr, p->daddr, 16);
        struct ms_bucket *b = ms_syn_dst.lookup(&dk);
        if (!b) {
            struct ms_bucket nb = {.tokens_milli = cfg->syn_dst_burst * 1000, .last_ns = now};
            ms_syn_dst.update(&dk, &nb);
            b = ms_syn_dst.lookup(&dk);
        }
        if (b && !ms_bucket_take(b, cfg->syn_dst_rate, cfg->syn_dst_burst, now))
            return DROP_SYN_BUDGET_DST;
    }
    if (cfg->syn_global_rate) {
        __u32 z = 0;
        struct ms_bucket *g = ms_syn_global.lookup(&z);
        if (g && !ms_bucket_take(g, cfg->syn_global_rate, cfg->syn_global_burst, now))
            return DROP_SYN_BUDGET_GLOBAL;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* TCP                                                                 */

/* TCP options a SYN carries run to at most 40 bytes (doff 15). */
#define MS_TCP_MAX_OPT_BYTES 40
/* Options walked looking for the window scale. Real stacks put it within
 * the first five (Linux: MSS, SACK_PERM, TS, NOP, WS; Windows: MSS, NOP,
 * WS, ...); a longer walk costs the verifier exponentially more states.
 * A SYN whose options are not fully walked makes the flow's window
 * tracking liberal (MS_WSCALE_UNKNOWN) rather than risk wrong windows. */
#define MS_TCP_MAX_OPTS 10
#define MS_TCPOPT_EOL 0
#define MS_TCPOPT_NOP 1
#define MS_TCPOPT_WSCALE 3
#define MS_WSCALE_NONE 0xff
#define MS_WSCALE_UNKNOWN 0xfe

/* Window scale option of a SYN or SYN-ACK (RFC 7323 2.2): the shift,
 * MS_WSCALE_NONE if absent, MS_WSCALE_UNKNOWN if not found in time.
 * The options are read in one bpf_skb_load_bytes into the per-CPU L7
 * buffer (ms_l7_scratch: free until the payload check, which clears and
 * loads it itself; not the stack, where 42 bytes would take ms_stage_tcp
 * past tests/datapath/test_stack.py's budget) and walked there: one
 * helper call per SYN instead of one per option (five for Linux's SYN).
 * Same answers as a walk that loads three
 * bytes at each option: where fewer than three bytes of packet are left
 * (that load would fail) the answer is MS_WSCALE_NONE, checked against
 * skb->len as that load would; the only byte such a walk read past the
 * options (an option's length at the options' last byte) decided
 * MS_WSCALE_NONE whatever its value, as the zero here does. */
static __always_inline __u8 ms_tcp_wscale(struct __sk_buff *skb, const struct ms_pkt *p)
{
    __u32 base = p->l4_off + 20;
    __u32 len = p->payload_off - base;
    __u32 i = 0;
    __u32 z = 0;

    if (len > MS_TCP_MAX_OPT_BYTES || len == 0)
        return MS_WSCALE_NONE;
    struct ms_l7_buf *buf = ms_l7_scratch.lookup(&z);
    if (!buf)
        return MS_WSCALE_UNKNOWN;   /* cannot happen (an array's slot 0); not walked: liberal */
    /* Two bytes more than the longest options, zeroed: an option's kind,
     * length and shift are read at i, i + 1, i + 2 for any i < len. */
    _Static_assert(MS_L7_WINDOW == 64 && MS_TCP_MAX_OPT_BYTES + 8 <= 64, "the walk's masks assume 64 bytes");
    __u64 *w = (__u64 *)buf->b;
#pragma unroll
    for (int k = 0; k < (MS_TCP_MAX_OPT_BYTES + 8) / 8; k++)
        w[k] = 0;
    __u8 *o = buf->b;
    if (bpf_skb_load_bytes(skb, base & 0xffff, o, len) < 0)
        return MS_WSCALE_NONE;
#pragma clang loop unroll(disable)
    for (int n = 0; n < MS_TCP_MAX_OPTS; n++) {
        if (i >= len)
            return MS_WSCALE_NONE;
        if (base + i + 3 > p->len)
            return MS_WSCALE_NONE;          /* fewer than 3 bytes left: only EOL / NOP fit */
        /* The masks are no-ops (i < len <= 40, the buffer is 64): they
         * bound the offsets for the verifier. */
        __u8 kind = o[i & 0x3f], olen = o[(i + 1) & 0x3f];
        if (kind == MS_TCPOPT_EOL)
            return MS_WSCALE_NONE;
        if (kind == MS_TCPOPT_WSCALE && olen == 3 && i + 3 <= len)
            return o[(i + 2) & 0x3f] > 14 ? 14 : o[(i + 2) & 0x3f];   /* RFC 7323: larger shifts mean 14 */
        if (kind != MS_TCPOPT_NOP && olen < 2)
            return MS_WSCALE_NONE;          /* malformed length */
        __u32 next = i + (kind == MS_TCPOPT_NOP ? 1 : olen);
        if (next > len)
            return MS_WSCALE_NONE;          /* option runs past the header */
        i = next & 0x3f;                    /* no-op (next <= 40); bounds i for the verifier */
    }
    return MS_WSCALE_UNKNOWN;
}

static __always_inline __u8 ms_tcp_event(__u8 fl)
{
    if (fl & TCP_RST)
        return (fl & TCP_SYN) ? EV_INVALID : EV_RST;
    if (fl & TCP_SYN) {
        if (fl & TCP_FIN)
            return EV_INVALID;
        return (fl & TCP_ACK) ? EV_SYNACK : EV_SYN;
    }
    if (!(fl & TCP_ACK))
        return EV_INVALID;   /* FIN without ACK, NULL, ... */
    return (fl & TCP_FIN) ? EV_FIN : EV_ACK;
}

static __always_inline __u8 ms_tcp_next(__u8 state, int fd, __u8 ev)
{
    __u32 idx = ((__u32)state * 2 + fd) * MS_TCP_EVENT_COUNT + ev;
    __u8 *n = ms_tcp_fsm.lookup(&idx);
    return n ? *n : TV_INVALID;
}

/* Whether side s's FIN is acknowledged: its peer's highest ACK reaches
 * past it. Read from the peer's maxack, a 4-byte field only the peer's own
 * segments write, not kept as a bit the peer's segments would set in this
 * side's flag byte: the two last ACKs of a close cross (each side acks the
 * other's FIN) and run on two CPUs at once, and with a bit each one's
 * read-modify-write of the other side's flag byte could undo the other's,
 * or each could read the other's bit before it was stored; either way
 * neither saw both FINs acknowledged, the session stayed in LAST_ACK and
 * its record went out only at the timeout (seen in the workers lab test,
 * ~1 close in 1,000). ms_ct_tcp orders the store and the read
 * (ms_close_barrier), and reads a closed session's state as closed. */
static __always_inline int ms_fin_acked(const struct ms_tcp_side *s, const struct ms_tcp_side *peer)
{
    return (s->flags & MS_SIDE_FIN) && (peer->flags & MS_SIDE_MAXACK) && !ms_before(peer->maxack, s->fin_end);
}

/* A full memory barrier between this segment's window update (its side's
 * maxack, ms_tcp_advance_fl) and the read of the peer's (ms_fin_acked):
 * two crossing last ACKs each store, then load what the other stored; a
 * CPU may let its load pass its own earlier store (x86-64 does), and both
 * would then miss the other's. A locked instruction (a BPF atomic, fully
 * ordered) on the session between them: at least one of the two sees
 * both. Only segments of a flow with a FIN pay it. Adding 0 to
 * first_seen_ns (8 bytes: BPF's fetching atomics here are 64-bit) changes
 * nothing. */
static __always_inline void ms_close_barrier(struct ms_flow *f)
{
    __sync_fetch_and_add(&f->first_seen_ns, 0);
}

/* Set MS_FLOW_LOGGED; 1 for the caller that set it. One atomic OR on the
 * 8-byte word that holds f->flags (BPF's fetching atomics here are 64-bit):
 * both crossing last ACKs of a close can find the session closed
 * (ms_close_barrier), and exactly one of them must send its record. The
 * other bytes of the word are left as they are. */
#define MS_FLOW_FLAGS_WORD (__builtin_offsetof(struct ms_flow, flags) & ~7UL)
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define MS_FLOW_FLAGS_SHIFT ((__builtin_offsetof(struct ms_flow, flags) & 7) * 8)
#else
#define MS_FLOW_FLAGS_SHIFT ((7 - (__builtin_offsetof(struct ms_flow, flags) & 7)) * 8)
#endif
static __always_inline int ms_flow_claim_logged(struct ms_flow *f)
{
    __u64 bit = (__u64)MS_FLOW_LOGGED << MS_FLOW_FLAGS_SHIFT;
    __u64 old = __sync_fetch_and_or((__u64 *)((char *)f + MS_FLOW_FLAGS_WORD), bit);
    return !(old & bit);
}

/* State after the handshake, from who sent a FIN and whether it was acked. */
static __always_inline __u8 ms_close_phase_state(const struct ms_flow *f)
{
    __u8 o = f->tcp[0].flags, r = f->tcp[1].flags;
    int ofin = o & MS_SIDE_FIN, rfin = r & MS_SIDE_FIN;
    int oack = ms_fin_acked(&f->tcp[0], &f->tcp[1]), rack = ms_fin_acked(&f->tcp[1], &f->tcp[0]);

    if (!ofin && !rfin)
        return CT_ESTABLISHED;
    if (ofin && !rfin)
        return oack ? CT_FIN_WAIT2 : CT_FIN_WAIT1;
    if (!ofin)
        return CT_CLOSE_WAIT;
    if (oack && rack)
        return CT_TIME_WAIT;
    if (oack || rack)
        return CT_LAST_ACK;
    return CT_CLOSING;
}

/* Initialise one side's window data from its SYN (or first packet). */
static __always_inline void ms_side_init(struct ms_tcp_side *s, const struct ms_pkt *p, __u32 end)
{
    s->end = end;
    s->maxend = end;
    s->maxwin = p->window ? p->window : 1;
    s->fin_end = 0;
    s->wscale = p->wscale >= MS_WSCALE_UNKNOWN ? 0 : p->wscale;
    s->flags = MS_SIDE_SEEN | (p->wscale < MS_WSCALE_UNKNOWN ? MS_SIDE_WSCALE : 0);
}

/* nf_conntrack's tcp_in_window bounds, without changing anything: is the
 * segment inside the window? A side not seen yet starts at this segment,
 * so its sequence bounds hold trivially and only the ack is checked. */
static __always_inline int ms_tcp_in_window_fl(const struct ms_flow *f, int fd, __u32 seq,
                                               __u32 ack_seq, __u8 fl, __u32 end)
{
    const struct ms_tcp_side *snd = &f->tcp[fd != 0];
    const struct ms_tcp_side *rcv = &f->tcp[fd == 0];
    /* nothing acknowledged: the ack checks hold trivially */
    __u32 ack = (fl & TCP_ACK) ? ack_seq : rcv->end;
    int seen = snd->flags & MS_SIDE_SEEN;
    /* an unseen side's maxwin would be this segment's unscaled window,
     * never above the floor */
    __u32 maxwin = seen ? snd->maxwin : 0;
    __u32 ackwin = maxwin > MS_MIN_ACK_WINDOW ? maxwin : MS_MIN_ACK_WINDOW;

    return (!seen || (!ms_after(seq, snd->maxend) &&              /* I: not past what the peer allowed */
                      ms_after(end, snd->end - rcv->maxwin - 1))) && /* II: not older than a window */
           !ms_after(ack, rcv->end) &&                          /* III: no ack of unsent data */
           ms_after(ack, rcv->end - ackwin - 1);                /* IV: ack not too old */
}

/* The window advance of a segment found in window (ms_tcp_window, and
 * the established lane, ms_ct_tcp_lane). */
static __always_inline void ms_tcp_advance_fl(struct ms_flow *f, int fd, __u32 ack, __u32 win,
                                              __u8 fl, __u32 end)
{
    struct ms_tcp_side *snd = &f->tcp[fd != 0];
    struct ms_tcp_side *rcv = &f->tcp[fd == 0];

    if (!(fl & TCP_SYN))
        win <<= snd->wscale;
    if (snd->maxwin < win)
        snd->maxwin = win;
    if (ms_after(end, snd->end))
        snd->end = end;
    if (ms_after(end, snd->maxend))
        snd->maxend = end;
    if (fl & TCP_ACK) {
        if (!(snd->flags & MS_SIDE_MAXACK) || ms_after(ack, snd->maxack)) {
            snd->maxack = ack;
            if (!(snd->flags & MS_SIDE_MAXACK))   /* once: each write is a read-modify-write of the byte */
                snd->flags |= MS_SIDE_MAXACK;
        }
        if (ms_after(ack + win, rcv->maxend - 1))
            rcv->maxend = ack + (win ? win : 1);
    }
    if ((fl & TCP_FIN) && !(snd->flags & MS_SIDE_FIN)) {
        snd->flags |= MS_SIDE_FIN;
        snd->fin_end = end;
    }
}

static __always_inline int ms_tcp_in_window(const struct ms_flow *f, int fd,
                                            const struct ms_pkt *p, __u32 end)
{
    return ms_tcp_in_window_fl(f, fd, p->seq, p->ack_seq, p->tcp_flags, end);
}

static __always_inline void ms_tcp_advance(struct ms_flow *f, int fd, const struct ms_pkt *p, __u32 end)
{
    ms_tcp_advance_fl(f, fd, p->ack_seq, p->window, p->tcp_flags, end);
}

/* nf_conntrack's tcp_in_window: is the segment inside the window, and if
 * so, advance both sides' window data. Returns 1 when in window. */
static __always_inline int ms_tcp_window(struct ms_flow *f, int fd, const struct ms_pkt *p,
                                         __u32 end, int liberal)
{
    struct ms_tcp_side *snd = fd ? &f->tcp[1] : &f->tcp[0];

    if (!(snd->flags & MS_SIDE_SEEN))
        ms_side_init(snd, p, end);

    if (!ms_tcp_in_window(f, fd, p, end) && !liberal)
        return 0;
    ms_tcp_advance(f, fd, p, end);
    return 1;
}

/* Does this RST end the session (RFC 5961 3.2, nf_conntrack's RST checks)?
 * Only at the sequence number its receiver expects: the sender's next one
 * (everything it sent arrived), or the receiver's own last ACK (data was
 * in flight; also what a closed sender answers a challenge ACK with). Any
 * other RST, even inside the window, may be blind: the endpoint answers it
 * with a challenge ACK, and the session must stay as it is.
 * In SYN_SENT the responder has no sequence yet: its RST counts when it
 * acknowledges the SYN, all of it (RFC 9293 3.10.7.3; a refusal acks
 * SEG.SEQ + SEG.LEN). After both FINs were acked (TIME_WAIT) or a reset
 * (CLOSE) there is nothing left to protect, and nf_conntrack skips the
 * checks there too. */
static __always_inline int ms_tcp_rst_counts_fl(const struct ms_flow *f, int fd, __u32 seq, __u32 ack_seq,
                                                __u8 fl, __u8 state)
{
    const struct ms_tcp_side *snd = fd ? &f->tcp[1] : &f->tcp[0];
    const struct ms_tcp_side *rcv = fd ? &f->tcp[0] : &f->tcp[1];

    if (state == CT_TIME_WAIT || state == CT_CLOSE)
        return 1;
    if (state == CT_SYN_SENT && fd == FD_REPLY)
        return (fl & TCP_ACK) && ack_seq == rcv->end;
    if ((snd->flags & MS_SIDE_SEEN) && seq == snd->end)
        return 1;
    return (rcv->flags & MS_SIDE_MAXACK) && seq == rcv->maxack;
}

static __always_inline int ms_tcp_rst_counts(const struct ms_flow *f, int fd,
                                             const struct ms_pkt *p, __u8 state)
{
    return ms_tcp_rst_counts_fl(f, fd, p->seq, p->ack_seq, p->tcp_flags, state);
}

/* Is inspected session f (key kp) a connection the slow path blocked? Its
 * block verdict may be merged already, or still wait in ms_verdicts: in
 * hold mode the resets end both ends at once, and the client may send
 * nothing more on it. A pending block is taken out of the map here. Only
 * for a SYN on a session that is inspected and undecided: no lookup for
 * any other packet. */
static __always_inline int ms_ct_insp_blocked(const struct ms_flow *f, struct ms_flow_key *kp)
{
    if (f->insp_state == INSP_BLOCKED)
        return 1;
    if (f->action != POL_INSPECT || f->insp_state >= INSP_DONE)
        return 0;
    struct ms_slow_verdict *sv = ms_verdicts.lookup(kp);
    if (!sv || sv->verdict != VERDICT_BLOCK || sv->cookie != f->cookie)
        return 0;
    ms_verdicts.delete(kp);
    return 1;
}

/* The policy step ms_ct_tcp and ms_ct_datagram share, for a new flow (f
 * NULL) or a session whose verdict is from an older policy generation (one
 * inlined evaluation serves both): evaluated from the initiator's side and
 * the hook that opened the flow. Returns the new flow's reason (v and gen
 * filled for ms_flow_set_verdict), DROP_POLICY_REVOKED when the policy now
 * denies the session (the caller removes it), else PASS_FORWARD with the
 * session's verdict updated. Whether to decide stays with the callers:
 * tested in here it cost ms_stage_tcp 8 more bytes of stack (264, over
 * tests/datapath/test_stack.py's budget of 256). */
static __always_inline int ms_ct_policy(const struct ms_pkt *p, struct ms_flow *f, int fd,
                                        struct ms_verdict *v, __u32 *gen)
{
    __u32 odir = f ? ((f->flags & MS_FLOW_EGRESS_OPENED) ? DIR_EGRESS : DIR_INGRESS) : p->dir;
    /* A tunnelled packet's 1 + fd: its outer addresses, swapped alike, may
     * be what policy decides on (tunnel.h, `tunnels.policy: outer`). */
    __u32 tun = p->tun_depth ? 1 + fd : 0;
    if (fd)
        ms_policy_eval(p->daddr, p->saddr, p->dport, p->sport, p->proto, odir, v, gen, tun);
    else
        ms_policy_eval(p->saddr, p->daddr, p->sport, p->dport, p->proto, odir, v, gen, tun);
    if (!f)
        return ms_policy_reason(v);
    if (v->action == POL_DENY)
        return DROP_POLICY_REVOKED;
    ms_flow_set_verdict(f, v, *gen);
    return PASS_FORWARD;
}

/* Reason for a TCP segment; creates, advances, promotes its session. */
/* *l7f: the session the payload stage would look up again for this
 * packet's first-payload check (ms_l7_mark set p->l7_side), when it is
 * still where tracking found it (*l7_in_flows: ms_flows); else left 0 and
 * the packet goes to the payload stage as before (fastpath.c ms_stage_tcp). */
static __always_inline int ms_ct_tcp(struct ms_pkt *p, __u64 now, struct ms_flow **l7f, int *l7_in_flows)
{
    struct ms_config *cfg = ms_cfg();
    if (!cfg)
        return DROP_TCP_INVALID;
    struct ms_flow_key *kp = ms_flow_key_scratch();
    if (!kp)
        return DROP_TCP_INVALID;
    int src_is_hi = ms_flow_key_of(p, kp);
    int where;
    __u8 fl = p->tcp_flags;
    int is_syn = (fl & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN)) == TCP_SYN;
    /* A SYN or a SYN-ACK (no RST, no FIN): both tables at once. */
    int handshake = (fl & (TCP_SYN | TCP_RST | TCP_FIN)) == TCP_SYN;
    struct ms_flow *f = handshake ? ms_ct_lookup_handshake(kp, now, &where)
                                  : ms_ct_lookup_from(kp, now, &where, p->lane_absent);
    MS_BENCH_STEP(3, MS_BENCH_REASON);   /* the session looked up */
    __u32 end = p->seq + p->payload_len + ((fl & TCP_SYN) ? 1 : 0) + ((fl & TCP_FIN) ? 1 : 0);

    int pickup = !f && !is_syn && (cfg->flags & MS_CFG_LOOSE) && !(fl & (TCP_RST | TCP_SYN)) &&
                 (fl & TCP_ACK);
    int fd = f ? src_is_hi != f->initiator_is_hi : FD_ORIGINAL;

    /* A blocked connection is over: the slow path reset both ends (its
     * resets bypass tracking). A new SYN from its initiator is a new
     * connection reusing the ports (a retry, ephemeral port reuse), as
     * after a RST in nf_conntrack: the old session goes, and the SYN is
     * decided by policy and inspected as any new flow. Everything else of
     * the old connection is still dropped below (DROP_INSPECT_BLOCKED). */
    if (f && is_syn && fd == FD_ORIGINAL && ms_ct_insp_blocked(f, kp)) {
        ms_ct_remove(kp, where, f, FLOW_END_REPLACED);
        f = 0;
    }

    /* Policy: decided for a new flow, and again for a session from an
     * older policy generation. */
    struct ms_verdict v = {};
    __u32 gen = 0;
    int pol_reason = PASS_FORWARD;
    if (!f ? (is_syn || pickup) : f->pol_gen != MS_POL_GEN(ms_pol_live())) {
        pol_reason = ms_ct_policy(p, f, fd, &v, &gen);
        if (pol_reason == DROP_POLICY_REVOKED)
            ms_ct_remove(kp, where, f, FLOW_END_REVOKED);
        if (ms_reason_is_drop(pol_reason)) {
            p->rule_id = v.rule_id;   /* a drop event names the rule (fastpath.c ms_drop_log) */
            return pol_reason;
        }
    }

    if (f && f->insp_state == INSP_BLOCKED)
        return DROP_INSPECT_BLOCKED;

    if (!f) {
        if (is_syn) {
            if (ms_flows_full())
                return ms_full_reason(p);
            int r = ms_syn_budget(p, cfg, now);
            if (r)
                return r;
            struct ms_flow *nf = ms_flow_new(p, src_is_hi, CT_SYN_SENT,
                                             p->wscale == MS_WSCALE_UNKNOWN ? MS_FLOW_LIBERAL : 0, now);
            if (!nf)
                return DROP_TCP_INVALID;
            ms_side_init(&nf->tcp[0], p, end);
            ms_flow_set_verdict(nf, &v, gen);
            ms_l7_mark(p, nf, 0);   /* data in the SYN (TCP Fast Open) */
            ms_halfopen_put(kp, nf);
            return pol_reason;
        }
        if (pickup) {
            /* Pick up a flow seen mid-stream (after a restart without
             * pinned state): trust this packet, track liberally. */
            if (ms_flows_full())
                return ms_full_reason(p);
            struct ms_flow *nf = ms_flow_new(p, src_is_hi, CT_ESTABLISHED,
                                             MS_FLOW_PICKED_UP | MS_FLOW_LIBERAL, now);
            if (!nf)
                return DROP_TCP_INVALID;
            ms_side_init(&nf->tcp[0], p, end);
            nf->tcp[0].maxend = end + (p->window ? p->window : 1);
            nf->tcp[0].maxack = p->ack_seq;   /* an ACK picks up: where the peer's RST is expected */
            nf->tcp[0].flags |= MS_SIDE_MAXACK;
            ms_flow_set_verdict(nf, &v, gen);
            ms_l7_mark(p, nf, 0);   /* its payload is identified and inspected like any first payload */
            if (ms_flows_update(kp, nf) != 0) {
                ms_pressure_add(0);
                return ms_full_reason(p);
            }
            ms_pressure_inserted(now);
            return PASS_TCP_PICKED_UP;
        }
        /* Full table: an allow-listed flow passed its SYN without a
         * session, so its SYN-ACK and every later packet land here too. */
        if (ms_flows_full() && ms_allowlisted(p))
            return PASS_TABLE_FULL_ALLOWED;
        return DROP_TCP_NO_SESSION;
    }

    __u8 state = ms_flow_state(f);
    __u8 ev = ms_tcp_event(fl);
    __u8 next = ms_tcp_next(state, fd, ev);
    MS_BENCH_STEP(4, MS_BENCH_REASON);   /* policy generation and state machine checked */

    if (next == TV_INVALID) {
        if (!(cfg->flags & MS_CFG_INVALID_PASS))
            return DROP_TCP_INVALID;
        ms_l7_mark(p, f, fd);   /* what passes is inspected too: no way around by breaking TCP */
        return PASS_TCP_INVALID;
    }
    if (next == TV_IGNORE) {
        ms_ct_account(f, fd, p->len, now);
        ms_l7_mark(p, f, fd);
        return PASS_TCP_IGNORED;
    }
    if (next == CT_SYN_SENT && state != CT_SYN_SENT) {
        /* A new SYN from the initiator after TIME_WAIT / CLOSE: port reuse
         * starts the flow over (nf_conntrack does the same). */
        struct ms_flow *nf = ms_flow_new(p, src_is_hi, CT_SYN_SENT,
                                         p->wscale == MS_WSCALE_UNKNOWN ? MS_FLOW_LIBERAL : 0, now);
        if (!nf)
            return DROP_TCP_INVALID;
        ms_side_init(&nf->tcp[0], p, end);
        nf->action = f->action;
        nf->inspect = f->inspect;
        nf->rule_id = f->rule_id;
        nf->pol_gen = f->pol_gen;
        nf->app_req = f->app_req;
        /* The new session takes the old one's entry, in place, in the
         * table it is in: the old session ended (its record went when it
         * closed) and its slot is the new one's. Moving it (a delete from
         * ms_flows, an insert into ms_halfopen, then at the handshake's end
         * an insert into ms_flows and a delete from ms_halfopen, four
         * atomic adds on ms_pressure) is work a reused port does not need
         * (measured: docs/performance.md 4.3). Nothing is decided differently: the
         * handshake is checked the same in either table, the entry counts
         * once as before, and in ms_flows it takes no slot the old session
         * did not hold (a reset before ESTABLISHED leaves it in CLOSE there,
         * as the old one was). Written over like every other change to a
         * session here, not updated through the map: an update is a bucket
         * walk, and would recreate, uncounted, an entry another CPU removed
         * meanwhile. The new cookie keeps the old connection's pending
         * slow-path verdicts off it (maps.h struct ms_flow). */
        __builtin_memcpy(f, nf, sizeof(*nf));
        return PASS_FORWARD;
    }
    if (ev == EV_SYNACK && (state == CT_SYN_SENT || state == CT_SYN_SENT2)) {
        /* The responder's SYN-ACK must acknowledge the initiator's SYN: at
         * most all of it, and less only by what a SYN can carry (a TCP
         * Fast Open server may decline the SYN's data, RFC 7413 4.2). The
         * SYN's own sequence number is not kept, so the lower bound is
         * one maximal segment below the end, not the SYN exactly. */
        struct ms_tcp_side *peer = fd ? &f->tcp[0] : &f->tcp[1];
        if (ms_after(p->ack_seq, peer->end) || ms_before(p->ack_seq, peer->end - MS_MAX_SYN_DATA - 1))
            return DROP_TCP_BAD_SYNACK;
    }
    if ((ev == EV_SYN || ev == EV_SYNACK) && !(f->tcp[fd].flags & MS_SIDE_SEEN)) {
        /* First SYN from this side (the SYN-ACK, or the crossing SYN of a
         * simultaneous open): its window data starts here. */
        ms_side_init(&f->tcp[fd], p, end);
        if (p->wscale == MS_WSCALE_UNKNOWN)
            f->flags |= MS_FLOW_LIBERAL;
        if (f->tcp[0].flags & f->tcp[1].flags & MS_SIDE_WSCALE) {
            /* both offered window scaling (RFC 7323 2.2): keep the shifts */
        } else {
            f->tcp[0].wscale = 0;
            f->tcp[1].wscale = 0;
        }
    }
    /* A RST that does not end the session is only checked against the
     * window (outside it, as any segment; a liberal flow has none), never
     * advances it, and is not the end of an inspected stream. */
    int rst_held = ev == EV_RST && !ms_tcp_rst_counts(f, fd, p, state);
    if (state == CT_SYN_SENT && fd == FD_ORIGINAL && ev == EV_SYN) {
        /* A SYN again before any answer: a retransmission, or a new
         * attempt with a new ISN (the client gave up on the old one).
         * Either way this SYN defines the initiator's window, as
         * nf_conntrack does. */
        ms_side_init(&f->tcp[0], p, end);
    } else if (rst_held ? !((f->flags & MS_FLOW_LIBERAL) || ms_tcp_in_window(f, fd, p, end))
                        : !ms_tcp_window(f, fd, p, end, f->flags & MS_FLOW_LIBERAL)) {
        if (!(cfg->flags & MS_CFG_WINDOW_PASS))
            return DROP_TCP_OUT_OF_WINDOW;
        ms_l7_mark(p, f, fd);
        return PASS_TCP_OUT_OF_WINDOW;
    }
    if (rst_held) {
        ms_ct_account(f, fd, p->len, now);
        return PASS_TCP_RST_CHALLENGE;
    }

    if (next == TV_CLOSE_PHASE && ((f->tcp[0].flags | f->tcp[1].flags) & MS_SIDE_FIN))
        ms_close_barrier(f);
    f->state = next == TV_CLOSE_PHASE ? ms_close_phase_state(f) : next;
    ms_ct_account(f, fd, p->len, now);
    /* Closed (both FINs acknowledged, or reset): the session's record goes
     * now, on its last packet, not when the entry expires after its
     * state's timeout (TIME_WAIT's is minutes). The entry stays for late
     * segments and port reuse, flagged so its expiry sends no second one.
     * Both crossing last ACKs may see the close (ms_fin_acked): the one
     * that sets the flag sends the record, the other discards its copy.
     * A full ring leaves the flag unset: the expiry tries again. */
    if ((f->state == CT_TIME_WAIT || f->state == CT_CLOSE) && !(f->flags & MS_FLOW_LOGGED)) {
        void *rec = ms_flow_end_begin(kp, f, FLOW_END_CLOSED);
        if (rec)
            ms_flow_end_commit(rec, ms_flow_claim_logged(f));
    }

    /* Promote once the handshake is done. A reset before that (connection
     * refused, a scanner's probe) stays in the LRU: promoted, every SYN that
     * draws a RST would hold an ms_flows slot for the CLOSE timeout. */
    if (where == MS_IN_HALFOPEN && f->state != CT_SYN_SENT && f->state != CT_SYN_RECV &&
        f->state != CT_SYN_SENT2 && f->state != CT_CLOSE) {
        int r = ms_ct_promote(kp, f, p, now);
        if (r)
            return r;
    } else {
        *l7f = f;   /* not moved: f is the entry the payload stage would find */
        *l7_in_flows = where == MS_IN_FLOWS;
    }
    ms_l7_mark(p, f, fd);
    return PASS_FORWARD;
}

/* The established lane (fastpath.c ms_entry_reason): what ms_ct_tcp does
 * with the common packet, done in the entry program with one lookup and no
 * tail call. The packet: no SYN, FIN or RST, ACK set. Its session: in
 * ms_flows, ESTABLISHED, not idle past its timeout, its verdict from the
 * policy generation in force (else it is evaluated again), not blocked by
 * the slow path, no FIN sent by either side, the sending side's window data
 * set up; the packet inside the window (the liberal flows excepted, as in
 * ms_tcp_window), and no inspection hand-off (ms_l7_mark). For such a
 * packet ms_ct_tcp's outcome is fixed: the window advances, the state
 * machine (ms_tcp_fsm, asked here too) keeps the session ESTABLISHED, the
 * session is accounted, PASS_FORWARD. A side's first payload (ms_l7_mark's
 * other mark) is decided in the entry program too, when the caller can
 * check it (hit given): MS_LANE_PAYLOAD, and the caller runs the
 * application check (l7.h ms_l7_lane) before the segment is passed
 * (ms_ct_lane_pass), as ms_stage_tcp does after ms_ct_tcp. So is, for the
 * IPv4 lane (hit given), a FIN with ACK that starts closing such a
 * session, and a RST at the sequence its receiver expects (RFC 5961; a
 * RST that would be challenged goes to the stage) on it or on a session
 * closing after a FIN: MS_LANE_CLOSE, and the caller closes it as
 * ms_ct_tcp does (ms_ct_lane_close). Any other
 * packet returns MS_LANE_MISS before anything is changed and goes to the
 * TCP stage, which decides it from the start (an out-of-window segment
 * included: its reason and action are the stage's). The key is on the
 * stack: the payload stage, which reads the scratch key, never follows a
 * packet the lane decides. */
#define MS_LANE_MISS (-1)
/* A miss because ms_flows has no entry for the segment (ms_ct_tcp4_lane):
 * the TCP stage then need not look there first (ms_ct_lookup_from). */
#define MS_LANE_ABSENT (-2)
/* A side's first payload that passed every other check of the lane but
 * the window's (its caller's, ms_ct_lane_in_window), nothing changed yet:
 * the session and side are in struct ms_lane_hit. */
#define MS_LANE_PAYLOAD (-3)
/* A miss in ms_flows and in ms_halfopen (ms_ct_lane_promote): the TCP
 * stage need not look in either first. */
#define MS_LANE_NONE (-4)
/* A FIN or a RST that passed every check of the lane, nothing changed
 * yet: the session and side are in struct ms_lane_hit. */
#define MS_LANE_CLOSE (-5)

/* The session and side of a segment the lane leaves to its caller. */
struct ms_lane_hit {
    struct ms_flow *f;
    int side;             /* the sender's side, 0: the initiator's */
};

/* Is an ACK-only segment of side fd of session f (``end`` its sequence
 * end) inside the window, or the session liberal? The lane's window check
 * for a segment with ACK and without SYN, FIN or RST. */
static __always_inline int ms_ct_lane_in_window(struct ms_flow *f, int fd, __u32 seq, __u32 ack_seq, __u32 end)
{
    return ms_tcp_in_window_fl(f, fd, seq, ack_seq, TCP_ACK, end) || (f->flags & MS_FLOW_LIBERAL);
}

/* Pass a segment the lane decided (ACK, no SYN, FIN or RST; ``end`` its
 * sequence end): the window advances, the session is accounted. */
static __always_inline int ms_ct_lane_pass(struct ms_flow *f, int fd, __u32 ack_seq, __u32 window,
                                           __u32 end, __u32 len, __u64 now)
{
    /* The window helpers are given the flags as the lane knows them
     * (ACK; no SYN, FIN or RST; they read no other bit), so the branches
     * on the others are compiled out here. */
    ms_tcp_advance_fl(f, fd, ack_seq, window, TCP_ACK, end);
    /* The state stays ESTABLISHED, not written: ms_close_phase_state(f)
     * is ESTABLISHED while neither side has a FIN (tested by the lane), and
     * a segment without FIN sets none (ms_tcp_advance); a FIN counts as
     * acknowledged only on a side that sent one (ms_fin_acked). */
    ms_ct_account(f, fd, len, now);
    return PASS_FORWARD;
}

/* The lane's decision once the session is found (f, NULL if none), for a
 * segment given by its fields; ``fl`` its SYN, FIN, RST and ACK bits: ACK
 * (a constant for callers that take nothing else, so the branches on the
 * others are compiled out), ACK and FIN, RST, or RST and ACK. */
static __always_inline int ms_ct_lane_session(struct ms_flow *f, int src_is_hi, __u32 seq,
                                              __u32 ack_seq, __u32 window, __u32 payload_len,
                                              __u32 len, __u64 now, __u8 fl, struct ms_lane_hit *hit)
{
    if (!f)
        return MS_LANE_MISS;
    /* Its state. For an ACK or a FIN: ESTABLISHED, stored (a closed
     * session, ms_flow_state, has a side's FIN, which the test below sends
     * to the stage). For a RST: any state of the close phase, where one
     * that counts closes the session (ESTABLISHED to LAST_ACK, datapath/
     * tcp_fsm.py _CLOSING_STATES), its record not sent yet (without
     * MS_FLOW_LOGGED the stored state is ms_flow_state's). */
    int rst = fl & TCP_RST;
    __u8 state = rst ? f->state : CT_ESTABLISHED;
    if (rst ? state < CT_ESTABLISHED || state > CT_LAST_ACK || (f->flags & MS_FLOW_LOGGED)
            : f->state != CT_ESTABLISHED)
        return MS_LANE_MISS;
    if (ms_ct_idle_past(f, state, now))
        return MS_LANE_MISS;
    MS_BENCH_STEP(3, MS_BENCH_REASON);   /* the session looked up */
    int fd = src_is_hi != f->initiator_is_hi;
    int closing = fl != TCP_ACK;
    /* ms_ct_tcp's transition for the segment: the close phase for an ACK or
     * a FIN (ESTABLISHED while neither side has a FIN), CLOSE for a RST. */
    __u8 want = rst ? CT_CLOSE : TV_CLOSE_PHASE;
    if (f->pol_gen != MS_POL_GEN(ms_pol_live()) || f->insp_state == INSP_BLOCKED ||
        ms_tcp_next(state, fd, ms_tcp_event(fl)) != want || !(f->tcp[fd].flags & MS_SIDE_SEEN) ||
        (!rst && ((f->tcp[0].flags | f->tcp[1].flags) & MS_SIDE_FIN)))
        return MS_LANE_MISS;
    /* No inspection hand-off (ms_l7_mark would not mark it); a side's first
     * payload, and a FIN or RST, only for a caller that finishes them, and
     * not both in one segment. */
    int first = ms_l7_side_wanted(f, fd, payload_len);
    if (((first || closing) && !hit) || (first && closing) || ms_insp_wanted(f, payload_len, closing))
        return MS_LANE_MISS;
    MS_BENCH_STEP(4, MS_BENCH_REASON);   /* policy generation, state machine, payload stage checked */
    /* A first payload leaves here, its window checked by the caller
     * (ms_ct_lane_in_window, before its application check): the plain
     * ACK's path keeps no flag for it across the window check
     * (tcp4-established ~0.5 ns faster, bench/fastpath_ab.py; the
     * ms_insp_wanted test split in two for each case cost the verifier
     * 17,000 more instructions for no more). */
    if (first) {
        hit->f = f;
        hit->side = fd;
        return MS_LANE_PAYLOAD;
    }
    __u32 end = seq + payload_len + ((fl & TCP_FIN) ? 1 : 0);
    /* A RST that does not end the session (ms_tcp_rst_counts: it would be
     * challenged) is the stage's; one that does is checked against the
     * window as any segment. */
    if (rst && !ms_tcp_rst_counts_fl(f, fd, seq, ack_seq, fl, state))
        return MS_LANE_MISS;
    if (!ms_tcp_in_window_fl(f, fd, seq, ack_seq, fl, end) && !(f->flags & MS_FLOW_LIBERAL))
        return MS_LANE_MISS;
    if (closing) {
        hit->f = f;
        hit->side = fd;
        return MS_LANE_CLOSE;
    }
    return ms_ct_lane_pass(f, fd, ack_seq, window, end, len, now);
}

/* Close session f (key k4) on the lane's FIN or RST (MS_LANE_CLOSE), as
 * ms_ct_tcp does: the window advances; a FIN's state comes from both
 * sides' FINs (after ms_close_barrier, as there), a RST's is CLOSE; the
 * session is accounted; closed (CLOSE, or TIME_WAIT when the peer's FIN
 * was set and acknowledged by another CPU meanwhile), its end record goes
 * now, claimed once (ms_ct_tcp's record at close, the same calls). */
static __always_inline int ms_ct_lane_close(const struct ms_flow_key4 *k4, struct ms_flow *f, int fd,
                                            const struct ms_seg4 *sg, __u8 fl, __u64 now)
{
    __u32 end = sg->seq + sg->payload_len + ((fl & TCP_FIN) ? 1 : 0);
    ms_tcp_advance_fl(f, fd, sg->ack_seq, sg->window, fl, end);
    if (fl & TCP_FIN) {
        ms_close_barrier(f);
        f->state = ms_close_phase_state(f);
    } else {
        f->state = CT_CLOSE;
    }
    ms_ct_account(f, fd, sg->len, now);
    if ((f->state == CT_TIME_WAIT || f->state == CT_CLOSE) && !(f->flags & MS_FLOW_LOGGED)) {
        struct ms_flow_key k __attribute__((aligned(8)));   /* ms_key_of4 writes it in words */
        ms_key_of4(k4, &k);
        struct ms_flow_event *ev = ms_flow_end_begin(&k, f, FLOW_END_CLOSED);
        if (ev)
            ms_flow_end_commit(ev, ms_flow_claim_logged(f));
    }
    return PASS_FORWARD;
}

/* The handshake's last ACK on the IPv4 lane (a segment with ACK and
 * without SYN, FIN, RST or payload, ms_flows4 missed): what ms_ct_tcp does
 * with it, in the entry program, with no tail call, the scratch not
 * cleared and the packet not parsed again (docs/performance.md 4.1.2).
 * Its session: in ms_halfopen, SYN_RECV, not idle past its timeout, its
 * verdict from the policy generation in force, not blocked, neither side
 * with a FIN, the initiator's window data set up, and the state machine
 * (ms_tcp_fsm) saying the initiator's ACK ends the handshake; the segment
 * inside the window (liberal flows excepted). ms_ct_tcp then advances the
 * window, accounts the segment, makes the session ESTABLISHED and moves it
 * into ms_flows (ms_ct_promote). Here that is done on a copy (the per-CPU
 * ms_flow_scratch) inserted into ms_flows4, so when the insert fails
 * (another CPU promoted it first, or the table is full: ms_ct_promote's
 * own cases, with their reasons and counts) nothing has changed and the
 * TCP stage decides the segment from the start; after the insert, the
 * half-open entry goes as in ms_ct_promote. Any other segment: a miss
 * before anything is changed, MS_LANE_NONE when ms_halfopen4 has no
 * entry either. */
static __always_inline int ms_ct_lane_promote(const struct ms_flow_key4 *k4, int src_is_hi,
                                              const struct ms_seg4 *sg, __u64 now)
{
    struct ms_flow *h = ms_halfopen4.lookup(k4);
    MS_OWN_CALL(ms_halfopen4, h);
    if (!h)
        return MS_LANE_NONE;
    int fd = src_is_hi != h->initiator_is_hi;
    /* Stored SYN_RECV without MS_FLOW_LOGGED is its state (ms_flow_state). */
    if (h->state != CT_SYN_RECV || (h->flags & MS_FLOW_LOGGED) || ms_ct_idle_past(h, CT_SYN_RECV, now) ||
        h->pol_gen != MS_POL_GEN(ms_pol_live()) || h->insp_state == INSP_BLOCKED ||
        ms_tcp_next(CT_SYN_RECV, fd, EV_ACK) != TV_CLOSE_PHASE || !(h->tcp[fd].flags & MS_SIDE_SEEN) ||
        ((h->tcp[0].flags | h->tcp[1].flags) & MS_SIDE_FIN))
        return MS_LANE_ABSENT;
    /* No payload: nothing for the payload stage (ms_l7_mark), and the
     * segment ends where it starts. */
    __u32 end = sg->seq;
    if (!ms_tcp_in_window_fl(h, fd, sg->seq, sg->ack_seq, TCP_ACK, end) && !(h->flags & MS_FLOW_LIBERAL))
        return MS_LANE_ABSENT;
    __u32 z = 0;
    struct ms_flow *nf = ms_flow_scratch.lookup(&z);
    if (!nf)
        return MS_LANE_ABSENT;
    __builtin_memcpy(nf, h, sizeof(*nf));
    /* TV_CLOSE_PHASE with no FIN on either side: ms_close_phase_state is
     * ESTABLISHED. */
    nf->state = CT_ESTABLISHED;
    ms_ct_lane_pass(nf, fd, sg->ack_seq, sg->window, end, sg->len, now);
    int r = ms_flows4.insert(k4, nf);
    MS_OWN_CALL(ms_flows4, r);
    if (r != 0)
        return MS_LANE_ABSENT;
    r = ms_halfopen4.delete(k4);
    MS_OWN_CALL(ms_halfopen4, r);
    if (r == 0)
        ms_halfopen_count(0);
    ms_pressure_inserted(now);
    return PASS_FORWARD;
}

/* The lane for a packet parsed into the scratch (IPv6, VLAN-tagged, IP
 * options, ...). */
static __always_inline int ms_ct_tcp_lane(struct ms_pkt *p, __u64 now)
{
    if ((p->tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK)) != TCP_ACK)
        return MS_LANE_MISS;
    MS_BENCH_STEP(2, MS_BENCH_REASON);   /* in the lane */
    int src_is_hi;
    struct ms_flow *f = ms_flows_lookup_pkt(p, &src_is_hi);
    return ms_ct_lane_session(f, src_is_hi, p->seq, p->ack_seq, p->window, p->payload_len,
                              p->len, now, TCP_ACK, 0);
}

/* The lane for the common frame, parsed into registers by parse.h
 * ms_parse_tcp4 (untagged IPv4 without options, TCP, not a fragment),
 * before the scratch is looked up or cleared: such a segment of an
 * established session needs neither. */
static __always_inline int ms_ct_tcp4_lane(const struct ms_seg4 *sg, __u64 now, struct ms_lane_hit *hit)
{
    __u8 fl = sg->flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK);
    if (fl != TCP_ACK && fl != (TCP_ACK | TCP_FIN) && fl != TCP_RST && fl != (TCP_RST | TCP_ACK))
        return MS_LANE_MISS;
    MS_BENCH_STEP(2, MS_BENCH_REASON);   /* in the lane */
    struct ms_flow_key4 k4 = {};
    int src_is_hi = ms_key4_build(&k4, sg->saddr, sg->daddr, sg->ports, IPPROTO_TCP);
    struct ms_flow *f = ms_flows4.lookup(&k4);
    MS_OWN_CALL(ms_flows4, f);
    if (!f)
        return sg->payload_len || fl != TCP_ACK ? MS_LANE_ABSENT : ms_ct_lane_promote(&k4, src_is_hi, sg, now);
    /* The common segment (ACK only) with its flags as a constant: its
     * window checks stay as short as before the closing segments came in. */
    if (fl == TCP_ACK)
        return ms_ct_lane_session(f, src_is_hi, sg->seq, sg->ack_seq, sg->window, sg->payload_len,
                                  sg->len, now, TCP_ACK, hit);
    int r = ms_ct_lane_session(f, src_is_hi, sg->seq, sg->ack_seq, sg->window, sg->payload_len,
                               sg->len, now, fl, hit);
    return r == MS_LANE_CLOSE ? ms_ct_lane_close(&k4, hit->f, hit->side, sg, fl, now) : r;
}

/* ------------------------------------------------------------------ */
/* UDP, ICMP echo                                                      */

static __always_inline int ms_icmp_is_echo_request(const struct ms_pkt *p)
{
    return (p->proto == IPPROTO_ICMP && p->icmp_type == 8) ||
           (p->proto == IPPROTO_ICMPV6 && p->icmp_type == 128);
}

/* UDP and ICMP echo: a session per flow, promoted on the first reply. */
static __always_inline int ms_ct_datagram(struct ms_pkt *p, __u64 now)
{
    struct ms_flow_key *kp = ms_flow_key_scratch();
    if (!kp)
        return DROP_TCP_INVALID;
    int src_is_hi = ms_flow_key_of(p, kp);
    int where;
    struct ms_flow *f = ms_ct_lookup(kp, now, &where);
    int is_udp = p->proto == IPPROTO_UDP;
    int opens = is_udp || ms_icmp_is_echo_request(p);
    int fd = f ? src_is_hi != f->initiator_is_hi : FD_ORIGINAL;

    /* Policy for a new flow, or a session from an older generation. */
    struct ms_verdict v = {};
    __u32 gen = 0;
    int pol_reason = PASS_FORWARD;
    if (!f ? opens : f->pol_gen != MS_POL_GEN(ms_pol_live())) {
        pol_reason = ms_ct_policy(p, f, fd, &v, &gen);
        if (pol_reason == DROP_POLICY_REVOKED)
            ms_ct_remove(kp, where, f, FLOW_END_REVOKED);
        if (ms_reason_is_drop(pol_reason)) {
            p->rule_id = v.rule_id;   /* a drop event names the rule (fastpath.c ms_drop_log) */
            return pol_reason;
        }
    }

    if (f && f->insp_state == INSP_BLOCKED)
        return DROP_INSPECT_BLOCKED;

    if (!f) {
        /* An echo reply without its request; with the table full, maybe
         * the reply to an allow-listed request that passed sessionless. */
        if (!opens)
            return ms_flows_full() && ms_allowlisted(p) ? PASS_TABLE_FULL_ALLOWED
                                                        : DROP_ICMP_ECHO_UNMATCHED;
        if (ms_flows_full())
            return ms_full_reason(p);
        struct ms_flow *nf = ms_flow_new(p, src_is_hi, is_udp ? CT_UDP_UNREPLIED : CT_ICMP, 0, now);
        if (!nf)
            return DROP_ICMP_ECHO_UNMATCHED;
        ms_flow_set_verdict(nf, &v, gen);
        if (is_udp)
            ms_l7_mark(p, nf, 0);
        ms_halfopen_put(kp, nf);
        return pol_reason;
    }
    ms_ct_account(f, fd, p->len, now);
    if (fd && where == MS_IN_HALFOPEN) {
        if (is_udp)
            f->state = CT_UDP_REPLIED;
        int r = ms_ct_promote(kp, f, p, now);
        if (r)
            return r;
    }
    if (is_udp)
        ms_l7_mark(p, f, fd);
    return PASS_FORWARD;
}

static __always_inline void ms_frag_key_of(const struct ms_pkt *p, struct ms_frag_key *fk)
{
    __builtin_memcpy(fk->saddr, p->saddr, 16);
    __builtin_memcpy(fk->daddr, p->daddr, 16);
    fk->id = p->frag_id;
    fk->proto = p->family == 4 ? p->proto : 0;
}

/* A later fragment: the flow of its first fragment decides. */
static __always_inline int ms_ct_fragment(struct ms_pkt *p, __u64 now)
{
    struct ms_frag_key fk = {};
    ms_frag_key_of(p, &fk);
    struct ms_frag_val *fv = ms_frags.lookup(&fk);
    if (!fv)
        return DROP_FRAG_NO_FIRST;
    p->proto = fv->proto;
    if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP &&
        p->proto != IPPROTO_ICMP && p->proto != IPPROTO_ICMPV6)
        return PASS_FRAGMENT;   /* GRE, ESP, ...: no session, the first fragment passed */
    p->sport = fv->sport;
    p->dport = fv->dport;
    /* The scratch key: the payload stage finds the session with it. */
    struct ms_flow_key *kp = ms_flow_key_scratch();
    if (!kp)
        return DROP_FRAG_NO_FIRST;
    int src_is_hi = ms_flow_key_of(p, kp);
    int where;
    struct ms_flow *f = ms_ct_lookup(kp, now, &where);
    if (!f)
        return DROP_FRAG_NO_FIRST;
    int fd = src_is_hi != f->initiator_is_hi;
    if (p->proto == IPPROTO_UDP && f->action == POL_INSPECT && f->insp_state < INSP_DONE &&
        p->payload_len)
        p->insp = 1 + fd;   /* the slow path reassembles the datagram */
    if (p->proto == IPPROTO_TCP) {
        /* The segment's data continues in this fragment: advance the
         * sender's end so the peer's ACK of the whole segment is in window
         * (fragments in order; a duplicate only over-estimates). */
        struct ms_tcp_side *snd = fd ? &f->tcp[1] : &f->tcp[0];
        snd->end += p->payload_len;
        if (ms_after(snd->end, snd->maxend))
            snd->maxend = snd->end;
    }
    ms_ct_account(f, fd, p->len, now);
    return PASS_FRAGMENT;
}

/* A first fragment: remember its ports for the fragments that follow. */
static __always_inline int ms_ct_first_fragment(const struct ms_pkt *p, __u64 now)
{
    struct ms_frag_key fk = {};
    ms_frag_key_of(p, &fk);
    struct ms_frag_val fv = {.sport = p->sport, .dport = p->dport, .proto = p->proto, .seen_ns = now};
    ms_frags.update(&fk, &fv);
    return 0;
}

/* A protocol without sessions (GRE, ESP, SCTP, ...): the policy decides
 * each packet as seen from its sender, with ports 0. An allowed first
 * fragment is remembered so that its later fragments follow it. */
static __always_inline int ms_ct_other(struct ms_pkt *p, __u64 now)
{
    struct ms_verdict v = {};
    __u32 gen;
    ms_policy_eval(p->saddr, p->daddr, 0, 0, p->proto, p->dir, &v, &gen, p->tun_depth ? 1 : 0);
    int r = ms_policy_reason(&v);
    if (ms_reason_is_drop(r)) {
        p->rule_id = v.rule_id;
        return r;
    }
    if (p->frag == MS_FRAG_FIRST)
        ms_ct_first_fragment(p, now);
    return PASS_OTHER_L4;
}

#endif
