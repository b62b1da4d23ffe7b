"""Session tracking (bpf/lib/conntrack.h, icmp.h), tested on the real program.

Every packet goes through the loaded tc program with BPF_PROG_TEST_RUN and
every check looks at what the kernel reports: the TC action, the one reason
counter that moved, and the session read back from ms_halfopen / ms_flows.

The TCP transition expectations below are this file's own table, written
from RFC 9293 (793) and the close-phase rules of conntrack.h; they are not
read from datapath/tcp_fsm.py, so a wrong row there fails here.
"""
from __future__ import annotations

import ctypes
import os
import socket
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest,
                                ICMPv6ND_NS, ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPv6,
                                IPv6ExtHdrFragment)
from scapy.packet import Raw

from datapath.config import DatapathConfig, Timeouts
from datapath.enums import CtState, Reason, Stage
from datapath.loader import TC_ACT_OK
from datapath.sessions import FLOW_TABLES, map_key

from packets_ct import (FLOWS, HALFOPEN, HALFOPEN_STATES, ING, EGR, IPPROTO_ICMP,
                        IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, OFF_DPORT, OFF_IP_SRC,
                        OFF_SPORT, PatchedRunner, TcpConn, canonical, entry, ether, expect, flow_key,
                        ip, key_addrs, mapped, ringbuf_record_type, session_map, table_len, udp_frame)

S = CtState
R = Reason

V4 = ("10.0.0.1", "10.0.0.2")
V6 = ("2001:db8::1", "2001:db8::2")
FAMILIES = {"v4": V4, "v6": V6}
# Slack for comparing session timestamps with time.monotonic_ns(): the
# session clock is bpf_ktime_get_coarse_ns (conntrack.h ms_now), which
# advances once a tick (4 ms at HZ=250 on the development VM).
KTIME_SLACK_NS = 10_000_000


# ==========================================================================
# 1. Sessions: TCP, UDP, ICMP echo, IPv4 and IPv6, a map each
# ==========================================================================

@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize("initiator", ["lo", "hi"])
def test_tcp_session_key_counters_initiator(fastpath, family, initiator):
    lo, hi = FAMILIES[family]
    cli, srv = (lo, hi) if initiator == "lo" else (hi, lo)
    conn = TcpConn.make(fastpath, client=(cli, 40000), server=(srv, 443))
    t0 = time.monotonic_ns()
    sizes = [len(conn.send("c", "S")), len(conn.send("s", "SA")), len(conn.send("c", "A"))]
    sizes.append(len(conn.send("c", "PA", data=b"GET / HTTP/1.0\r\n\r\n")))
    sizes.append(len(conn.send("s", "PA", data=b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 300)))
    t1 = time.monotonic_ns()
    e = conn.assert_state(S.CT_ESTABLISHED)
    v = e.leaf
    assert table_len(fastpath, FLOWS) == 1 and table_len(fastpath, HALFOPEN) == 0
    # the key is canonical: lower endpoint first; IPv4 in its own map, the
    # addresses without their IPv4-mapped prefix
    (klo, khi, src_is_hi) = canonical(cli, 40000, srv, 443)
    key = next(iter(fastpath.table(session_map(FLOWS, cli, srv)).keys()))
    assert key_addrs(key) == (klo[0], khi[0]) and isinstance(key.addr_lo, int) == (family == "v4")
    assert key.proto == IPPROTO_TCP
    assert v.initiator_is_hi == src_is_hi == (initiator == "hi")
    # per direction: original = the client's three, reply = the server's two
    assert list(v.packets) == [3, 2]
    assert list(v.bytes) == [sizes[0] + sizes[2] + sizes[3], sizes[1] + sizes[4]]
    # CLOCK_MONOTONIC at tick resolution: allow a tick or two either side
    assert t0 - KTIME_SLACK_NS <= v.first_seen_ns <= v.last_seen_ns <= t1 + KTIME_SLACK_NS


def test_each_family_has_its_own_maps(fastpath):
    """IPv4 sessions in ms_flows4 / ms_halfopen4 (16-byte keys), IPv6 in
    ms_flows6 / ms_halfopen6. The family is the key's (both addresses
    IPv4-mapped: conntrack.h ms_key4_of, sessions.key4_of), so an IPv6
    packet between two IPv4-mapped addresses is in the IPv4 maps, where its
    IPv4 reply finds it: one flow, as when one table held both."""
    for cli, srv in (V4, V6):
        TcpConn.make(fastpath, client=(cli, 40000), server=(srv, 443)).handshake()
    expect(fastpath, udp_frame("::ffff:10.0.0.5", 5000, "::ffff:10.0.0.6", 53), R.PASS_FORWARD)
    sizes = {m: table_len(fastpath, m) for m in FLOW_TABLES}
    assert sizes == {"ms_flows4": 1, "ms_flows6": 1, "ms_halfopen4": 1, "ms_halfopen6": 0}
    expect(fastpath, udp_frame("10.0.0.6", 53, "10.0.0.5", 5000), R.PASS_FORWARD, EGR)
    e = entry(fastpath, "10.0.0.5", 5000, "10.0.0.6", 53, IPPROTO_UDP)
    assert (e.table, e.state, list(e.leaf.packets)) == (FLOWS, S.CT_UDP_REPLIED, [1, 1])
    assert table_len(fastpath, "ms_flows4") == 2 and table_len(fastpath, HALFOPEN) == 0
    # user space picks the same maps from the canonical key
    for cli, srv in (V4, V6):
        lo, hi, _ = canonical(cli, 40000, srv, 443)
        key = lo[0] + hi[0] + lo[1].to_bytes(2, "big") + hi[1].to_bytes(2, "big") + bytes([IPPROTO_TCP, 0, 0, 0])
        name, k = map_key(FLOWS, key)
        t = fastpath.table(name)
        assert name == session_map(FLOWS, cli, srv) and t[t.Key.from_buffer_copy(k)].state == S.CT_ESTABLISHED


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_udp_unreplied_then_replied(fastpath, family):
    cli, srv = FAMILIES[family]
    q = udp_frame(cli, 5353, srv, 53, b"q" * 20)
    expect(fastpath, q, R.PASS_FORWARD)
    e = entry(fastpath, cli, 5353, srv, 53, IPPROTO_UDP)
    assert (e.table, e.state) == (HALFOPEN, S.CT_UDP_UNREPLIED)
    assert list(e.leaf.packets) == [1, 0] and list(e.leaf.bytes) == [len(q), 0]
    first = e.leaf.first_seen_ns
    expect(fastpath, q, R.PASS_FORWARD)                  # a retry: still unreplied
    e = entry(fastpath, cli, 5353, srv, 53, IPPROTO_UDP)
    assert (e.table, e.state) == (HALFOPEN, S.CT_UDP_UNREPLIED)
    assert list(e.leaf.packets) == [2, 0]
    a = udp_frame(srv, 53, cli, 5353, b"a" * 60)
    expect(fastpath, a, R.PASS_FORWARD, EGR)             # the reply, at the other hook
    e = entry(fastpath, cli, 5353, srv, 53, IPPROTO_UDP)
    assert (e.table, e.state) == (FLOWS, S.CT_UDP_REPLIED)
    assert table_len(fastpath, HALFOPEN) == 0
    assert list(e.leaf.packets) == [2, 1] and list(e.leaf.bytes) == [2 * len(q), len(a)]
    assert e.leaf.first_seen_ns == first <= e.leaf.last_seen_ns
    assert e.leaf.initiator_is_hi == canonical(cli, 5353, srv, 53)[2]
    expect(fastpath, q, R.PASS_FORWARD)
    assert list(entry(fastpath, cli, 5353, srv, 53, IPPROTO_UDP).leaf.packets) == [3, 1]
    assert fastpath.table("ms_pressure")[ctypes.c_int(0)].inserted == 1


def echo(family, src, dst, ident, reply=False):
    if family == "v4":
        return bytes(ether() / IP(src=src, dst=dst) / ICMP(type=0 if reply else 8, id=ident, seq=1)
                     / Raw(b"p" * 32))
    cls = ICMPv6EchoReply if reply else ICMPv6EchoRequest
    return bytes(ether() / IPv6(src=src, dst=dst) / cls(id=ident, seq=1, data=b"p" * 32))


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_icmp_echo_request_creates_reply_promotes(fastpath, family):
    cli, srv = FAMILIES[family]
    proto = IPPROTO_ICMP if family == "v4" else IPPROTO_ICMPV6
    req = expect(fastpath, echo(family, cli, srv, 0x1234), R.PASS_FORWARD)
    e = entry(fastpath, cli, 0x1234, srv, 0x1234, proto)   # the echo id stands in for both ports
    assert (e.table, e.state) == (HALFOPEN, S.CT_ICMP)
    rep = expect(fastpath, echo(family, srv, cli, 0x1234, reply=True), R.PASS_FORWARD)
    e = entry(fastpath, cli, 0x1234, srv, 0x1234, proto)
    assert (e.table, e.state) == (FLOWS, S.CT_ICMP)
    assert list(e.leaf.packets) == [1, 1] and list(e.leaf.bytes) == [len(req), len(rep)]
    assert table_len(fastpath, HALFOPEN) == 0
    # another id is another session; its reply without request is refused
    expect(fastpath, echo(family, srv, cli, 0x9999, reply=True), R.DROP_ICMP_ECHO_UNMATCHED)
    assert entry(fastpath, cli, 0x9999, srv, 0x9999, proto) is None


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_icmp_echo_reply_without_request(fastpath, family):
    cli, srv = FAMILIES[family]
    expect(fastpath, echo(family, srv, cli, 7, reply=True), R.DROP_ICMP_ECHO_UNMATCHED)
    assert table_len(fastpath, FLOWS) == table_len(fastpath, HALFOPEN) == 0


ROUTER4, ROUTER6 = "10.0.0.254", "2001:db8::fe"

ICMP_ERRORS = {
    "v4-unreachable": ("v4", lambda: ICMP(type=3, code=3)),
    "v4-time-exceeded": ("v4", lambda: ICMP(type=11, code=0)),
    "v6-unreachable": ("v6", lambda: ICMPv6DestUnreach(code=4)),
    "v6-packet-too-big": ("v6", lambda: ICMPv6PacketTooBig(mtu=1280)),
    "v6-time-exceeded": ("v6", lambda: ICMPv6TimeExceeded(code=0)),
}


def icmp_error(family, err, quoted_src, quoted_dst, quoted_l4) -> bytes:
    """An ICMP error from a router to ``quoted_src`` about a packet it sent."""
    if family == "v4":
        return bytes(ether() / IP(src=ROUTER4, dst=quoted_src) / err
                     / IP(src=quoted_src, dst=quoted_dst) / quoted_l4)
    return bytes(ether() / IPv6(src=ROUTER6, dst=quoted_src) / err
                 / IPv6(src=quoted_src, dst=quoted_dst) / quoted_l4)


@pytest.mark.parametrize("name", ICMP_ERRORS)
@pytest.mark.parametrize("quoted", ["udp", "tcp"])
def test_icmp_error_related_or_unmatched(fastpath, name, quoted):
    family, err = ICMP_ERRORS[name]
    cli, srv = FAMILIES[family]
    if quoted == "udp":
        expect(fastpath, udp_frame(cli, 5000, srv, 53), R.PASS_FORWARD)
        known = UDP(sport=5000, dport=53) / Raw(b"q" * 8)
        unknown = UDP(sport=5001, dport=53) / Raw(b"q" * 8)
    else:
        TcpConn.make(fastpath, client=(cli, 5000), server=(srv, 443)).handshake()
        known = TCP(sport=5000, dport=443, flags="PA", seq=1001)
        unknown = TCP(sport=5000, dport=444, flags="PA", seq=1001)
    before = {n: table_len(fastpath, n) for n in (FLOWS, HALFOPEN)}
    expect(fastpath, icmp_error(family, err(), cli, srv, known), R.PASS_ICMP_RELATED)
    expect(fastpath, icmp_error(family, err(), cli, srv, unknown), R.DROP_ICMP_UNMATCHED)
    # errors create no session
    assert {n: table_len(fastpath, n) for n in (FLOWS, HALFOPEN)} == before


def test_icmp_error_about_echo_session(fastpath):
    cli, srv = V4
    expect(fastpath, echo("v4", cli, srv, 0x77), R.PASS_FORWARD)
    quoted = ICMP(type=8, id=0x77, seq=1)
    expect(fastpath, icmp_error("v4", ICMP(type=11), cli, srv, quoted), R.PASS_ICMP_RELATED)
    quoted = ICMP(type=8, id=0x78, seq=1)
    expect(fastpath, icmp_error("v4", ICMP(type=11), cli, srv, quoted), R.DROP_ICMP_UNMATCHED)


def test_icmpv6_neighbour_solicitation_is_control(fastpath):
    f = ether() / IPv6(src="fe80::1", dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt="2001:db8::2")
    expect(fastpath, f, R.PASS_ICMP_CONTROL)
    assert table_len(fastpath, FLOWS) == table_len(fastpath, HALFOPEN) == 0


@pytest.mark.parametrize("frame", [
    pytest.param(lambda: ether() / IP(src=V4[0], dst=V4[1]) / ICMP(type=13), id="v4-timestamp"),
    pytest.param(lambda: ether() / IP(src=V4[0], dst=V4[1]) / ICMP(type=5, gw="10.0.0.9"), id="v4-redirect"),
    pytest.param(lambda: ether() / IPv6(src=V6[0], dst=V6[1], nh=IPPROTO_ICMPV6)
                 / Raw(bytes([200, 0, 0, 0]) + b"\0" * 12), id="v6-private-200"),
])
def test_other_icmp_types_dropped(fastpath, frame):
    expect(fastpath, frame(), R.DROP_ICMP_TYPE)
    assert table_len(fastpath, FLOWS) == table_len(fastpath, HALFOPEN) == 0


# ==========================================================================
# 2. TCP state machine
# ==========================================================================

IGN, INV = "IGNORE", "INVALID"
EVENTS = ("SYN", "SYNACK", "FIN", "ACK", "RST")
# Flag combinations that are illegal in every state.
INVALID_FLAGS = {"FIN-no-ACK": "F", "SYN+FIN": "SF", "NULL": "", "SYN+RST": "SR", "URG-PSH-FIN": "UPF"}
O, RD = "c", "s"   # from the initiator (client), from the responder (server)

# Expected outcome of one segment per (state, direction, event), for segments
# whose sequence and acknowledgement numbers are in the window (FIN and ACK
# acknowledge everything the peer sent). A state: the segment passes
# (PASS_FORWARD) and the session moves there; IGNORE: passes as
# PASS_TCP_IGNORED, nothing changes; INVALID: dropped as DROP_TCP_INVALID,
# nothing changes.
#
# Close-phase states (maps.h / conntrack.h): FIN_WAIT1 initiator's FIN not yet
# acked; FIN_WAIT2 it was acked; CLOSE_WAIT responder sent FIN first; CLOSING
# both FINs, neither acked; LAST_ACK both FINs, one acked; TIME_WAIT both acked.
#
#                 from the initiator (O)                        from the responder (R)
#                 SYN     SYNACK  FIN     ACK     RST           SYN     SYNACK  FIN     ACK     RST
EXPECTED = {
    # Only the client's SYN seen. O: a SYN retransmits; the client has received
    # nothing, so it cannot ACK (nor SYN-ACK); it may give up with a RST.
    # R: its SYN crossing ours is a simultaneous open (RFC 9293 fig. 7); its
    # SYN-ACK answers ours; RST is "connection refused". R has not sent a SYN,
    # so a bare ACK or FIN from it belongs to no connection (nf_conntrack
    # passes a reply ACK here, for RFC 5961 challenge ACKs of a stale server
    # connection; this table refuses it).
    S.CT_SYN_SENT: ((S.CT_SYN_SENT, INV, INV, INV, S.CT_CLOSE),
                    (S.CT_SYN_SENT2, S.CT_SYN_RECV, INV, INV, S.CT_CLOSE)),
    # SYNs crossed. Each side retransmits its SYN or answers with a SYN-ACK
    # (RFC 9293 fig. 7); no plain ACK or FIN before a SYN-ACK.
    S.CT_SYN_SENT2: ((S.CT_SYN_SENT2, S.CT_SYN_RECV, INV, INV, S.CT_CLOSE),
                     (S.CT_SYN_SENT2, S.CT_SYN_RECV, INV, INV, S.CT_CLOSE)),
    # SYN and SYN-ACK seen. O: a retransmitted SYN (the SYN-ACK was lost) is
    # left alone; its SYN-ACK is the second one of a simultaneous open; its ACK
    # completes the handshake; ACK+FIN at once closes right away (FIN_WAIT1).
    # R: a bare SYN after its SYN-ACK is nonsense; the SYN-ACK retransmits;
    # an ACK (TFO data, duplicate ack) keeps waiting for the client's ACK; a
    # FIN (server closes in SYN-RECEIVED, RFC 9293 3.10.4) means CLOSE_WAIT.
    S.CT_SYN_RECV: ((IGN, S.CT_SYN_RECV, S.CT_FIN_WAIT1, S.CT_ESTABLISHED, S.CT_CLOSE),
                    (INV, S.CT_SYN_RECV, S.CT_CLOSE_WAIT, S.CT_SYN_RECV, S.CT_CLOSE)),
    # Synchronised states: a SYN or SYN-ACK is answered by the endpoint with a
    # challenge ACK (RFC 5961 4) and must not change the session.
    S.CT_ESTABLISHED: ((IGN, IGN, S.CT_FIN_WAIT1, S.CT_ESTABLISHED, S.CT_CLOSE),
                       (IGN, IGN, S.CT_CLOSE_WAIT, S.CT_ESTABLISHED, S.CT_CLOSE)),
    # O's FIN outstanding: O retransmits it or acks; R acks it (FIN_WAIT2) or
    # sends its own FIN acking O's (both FINs, one acked: LAST_ACK).
    S.CT_FIN_WAIT1: ((IGN, IGN, S.CT_FIN_WAIT1, S.CT_FIN_WAIT1, S.CT_CLOSE),
                     (IGN, IGN, S.CT_LAST_ACK, S.CT_FIN_WAIT2, S.CT_CLOSE)),
    # O's FIN acked, R still open (half close): R may still send; its FIN
    # makes LAST_ACK.
    S.CT_FIN_WAIT2: ((IGN, IGN, S.CT_FIN_WAIT2, S.CT_FIN_WAIT2, S.CT_CLOSE),
                     (IGN, IGN, S.CT_LAST_ACK, S.CT_FIN_WAIT2, S.CT_CLOSE)),
    # R closed first: O's FIN (acking R's) makes LAST_ACK.
    S.CT_CLOSE_WAIT: ((IGN, IGN, S.CT_LAST_ACK, S.CT_CLOSE_WAIT, S.CT_CLOSE),
                      (IGN, IGN, S.CT_CLOSE_WAIT, S.CT_CLOSE_WAIT, S.CT_CLOSE)),
    # Both FINs, neither acked: either side's ACK (or FIN retransmission
    # carrying that ACK) acks one FIN.
    S.CT_CLOSING: ((IGN, IGN, S.CT_LAST_ACK, S.CT_LAST_ACK, S.CT_CLOSE),
                   (IGN, IGN, S.CT_LAST_ACK, S.CT_LAST_ACK, S.CT_CLOSE)),
    # Reached as O FIN, R ACK, R FIN: O's FIN acked, R's not. O's ACK of R's
    # FIN ends it (TIME_WAIT); R can only repeat itself.
    S.CT_LAST_ACK: ((IGN, IGN, S.CT_TIME_WAIT, S.CT_TIME_WAIT, S.CT_CLOSE),
                    (IGN, IGN, S.CT_LAST_ACK, S.CT_LAST_ACK, S.CT_CLOSE)),
    # Both FINs acked. Retransmitted FINs / last ACKs stay; O may reuse the
    # ports with a new SYN (RFC 9293 3.6.1, RFC 6191): the session starts
    # over. A SYN-ACK is a stale duplicate. A new SYN from R (roles swapped)
    # is refused until TIME_WAIT ends (nf_conntrack would accept it).
    S.CT_TIME_WAIT: ((S.CT_SYN_SENT, INV, S.CT_TIME_WAIT, S.CT_TIME_WAIT, S.CT_CLOSE),
                     (INV, INV, S.CT_TIME_WAIT, S.CT_TIME_WAIT, S.CT_CLOSE)),
    # Reset. O may start over with a SYN; ACKs and RSTs still in flight pass;
    # there is nothing left to close with a FIN or to answer with a SYN-ACK.
    S.CT_CLOSE: ((S.CT_SYN_SENT, INV, INV, S.CT_CLOSE, S.CT_CLOSE),
                 (INV, INV, INV, S.CT_CLOSE, S.CT_CLOSE)),
}


def expected(state, frm, event):
    if event in INVALID_FLAGS:
        return INV
    row = EXPECTED[state][0 if frm == O else 1]
    return row[EVENTS.index(event)]


def drive(conn: TcpConn, state: CtState) -> None:
    """Bring a fresh connection into ``state`` with real segments."""
    s = S
    if state in (s.CT_SYN_SENT, s.CT_SYN_SENT2, s.CT_SYN_RECV):
        conn.send(O, "S")
        if state == s.CT_SYN_SENT2:
            conn.send(RD, "S")
        elif state == s.CT_SYN_RECV:
            conn.send(RD, "SA")
        return
    conn.handshake()
    conn.send(O, "PA", data=b"q" * 100)
    conn.send(RD, "PA", data=b"r" * 200)
    conn.send(O, "A")
    steps = {
        s.CT_ESTABLISHED: [],
        s.CT_FIN_WAIT1: [(O, "FA")],
        s.CT_FIN_WAIT2: [(O, "FA"), (RD, "A")],
        s.CT_CLOSE_WAIT: [(RD, "FA")],
        s.CT_CLOSING: [(O, "FA"), (RD, "FA", "not-acking")],
        s.CT_LAST_ACK: [(O, "FA"), (RD, "A"), (RD, "FA")],
        s.CT_TIME_WAIT: [(O, "FA"), (RD, "A"), (RD, "FA"), (O, "A")],
        s.CT_CLOSE: [(O, "RA")],
    }[state]
    for step in steps:
        if len(step) == 3:   # FIN crossing the peer's FIN: acks only up to it
            conn.send(step[0], step[1], ack=conn.c.fin_seq)
        else:
            conn.send(step[0], step[1])


def probe(conn: TcpConn, state, frm, event):
    """(flags, seq, ack) of an in-window segment of this event class."""
    me, peer = conn.sides(frm)
    if event == "SYN":
        if state in (S.CT_TIME_WAIT, S.CT_CLOSE):
            return "S", me.nxt + 1_000_000, None      # a new connection: new ISN, higher
        return "S", me.isn, None                      # the first SYN, or its retransmission
    if event == "SYNACK":
        return "SA", me.isn, peer.nxt
    if event == "FIN":
        return "FA", me.fin_seq if me.fin_seq is not None else me.nxt, peer.nxt
    if event == "ACK":
        return "A", me.nxt, peer.nxt
    if event == "RST":
        if not me.started:                           # refusing a SYN (RFC 9293 3.10.7.1)
            return "RA", 0, peer.nxt
        return ("RA", me.nxt, peer.nxt) if peer.started else ("R", me.nxt, None)
    flags = INVALID_FLAGS[event]
    return flags, me.isn if "S" in flags else me.nxt, None


def expected_table(old: CtState, new: CtState) -> str:
    """Where a session lives: half-open states in the LRU; a handshake that
    never completed (reset before ESTABLISHED) is not promoted either."""
    if new in HALFOPEN_STATES or (new == S.CT_CLOSE and old in HALFOPEN_STATES):
        return HALFOPEN
    return FLOWS


TCP_STATES = [st for st in CtState if st.name not in
              ("CT_NONE", "CT_UDP_UNREPLIED", "CT_UDP_REPLIED", "CT_ICMP")]
TRANSITION_CASES = [(st, d, ev) for st in TCP_STATES for d in (O, RD)
                    for ev in (*EVENTS, *INVALID_FLAGS)]


def test_expected_table_covers_every_tcp_state():
    assert set(EXPECTED) == set(TCP_STATES) and len(TCP_STATES) == 11


@pytest.mark.parametrize(
    "state,frm,event", TRANSITION_CASES,
    ids=[f"{st.name[3:]}-{'O' if d == O else 'R'}-{ev}" for st, d, ev in TRANSITION_CASES])
def test_tcp_transition(fastpath, state, frm, event):
    conn = TcpConn.make(fastpath)
    drive(conn, state)
    before = conn.assert_state(state)   # CLOSE: reached from ESTABLISHED, so in ms_flows
    want = expected(state, frm, event)
    flags, seq, ack = probe(conn, state, frm, event)
    frame = conn.frame(frm, flags, seq=seq, ack=ack)
    fd = 0 if frm == O else 1

    if want == INV:
        expect(fastpath, frame, R.DROP_TCP_INVALID)
        after = conn.entry()
        assert after is not None and after.table == before.table
        assert after.raw == before.raw, "an invalid segment changed the session"
    elif want == IGN:
        expect(fastpath, frame, R.PASS_TCP_IGNORED)
        after = conn.entry()
        assert (after.table, after.state) == (before.table, state)
        assert bytes(after.leaf.tcp[0]) == bytes(before.leaf.tcp[0])
        assert bytes(after.leaf.tcp[1]) == bytes(before.leaf.tcp[1])
        assert after.leaf.packets[fd] == before.leaf.packets[fd] + 1
    else:
        expect(fastpath, frame, R.PASS_FORWARD)
        reuse = state in (S.CT_TIME_WAIT, S.CT_CLOSE) and want == S.CT_SYN_SENT
        # port reuse: the new session takes the old one's entry where it is
        after = conn.assert_state(want, before.table if reuse else expected_table(state, want))
        if reuse:
            # a fresh session, only the new SYN counted
            assert list(after.leaf.packets) == [1, 0]
            assert after.leaf.initiator_is_hi == before.leaf.initiator_is_hi
            assert after.leaf.tcp[0].end == seq + 1 and after.leaf.tcp[1].flags == 0
        else:
            assert after.leaf.packets[fd] == before.leaf.packets[fd] + 1


# -- whole conversations ----------------------------------------------------

@pytest.mark.parametrize("family", ["v4", "v6"])
def test_open_and_close_by_initiator(fastpath, family):
    cli, srv = FAMILIES[family]
    conn = TcpConn.make(fastpath, client=(cli, 40001), server=(srv, 80))
    conn.handshake()
    conn.send(O, "PA", data=b"hello")
    conn.send(RD, "PA", data=b"world")
    conn.send(O, "FA")
    conn.assert_state(S.CT_FIN_WAIT1)
    conn.send(RD, "A")
    conn.assert_state(S.CT_FIN_WAIT2)
    conn.send(RD, "PA", data=b"more from the half-open side")
    conn.assert_state(S.CT_FIN_WAIT2)
    conn.send(O, "A")
    conn.send(RD, "FA")
    conn.assert_state(S.CT_LAST_ACK)
    conn.send(O, "A")
    conn.assert_state(S.CT_TIME_WAIT)
    conn.send(RD, "FA", seq=conn.s.fin_seq)               # FIN retransmitted, ACK again
    conn.send(O, "A")
    conn.assert_state(S.CT_TIME_WAIT)


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_open_and_close_by_responder(fastpath, family):
    cli, srv = FAMILIES[family]
    conn = TcpConn.make(fastpath, client=(cli, 40002), server=(srv, 80))
    conn.handshake()
    conn.send(O, "PA", data=b"req")
    conn.send(RD, "FA", data=b"resp and bye")
    conn.assert_state(S.CT_CLOSE_WAIT)
    conn.send(O, "A")
    conn.assert_state(S.CT_CLOSE_WAIT)
    conn.send(O, "FA")
    conn.assert_state(S.CT_LAST_ACK)
    conn.send(RD, "A")
    conn.assert_state(S.CT_TIME_WAIT)


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_simultaneous_open(fastpath, family):
    a, b = FAMILIES[family]
    conn = TcpConn.make(fastpath, client=(a, 5000), server=(b, 6000))
    conn.send(O, "S")
    conn.send(RD, "S")                                     # SYNs cross
    conn.assert_state(S.CT_SYN_SENT2)
    conn.send(O, "SA")                                     # each answers with SYN-ACK
    conn.assert_state(S.CT_SYN_RECV)
    conn.send(RD, "SA")
    conn.assert_state(S.CT_SYN_RECV)
    conn.send(O, "A")
    conn.assert_state(S.CT_ESTABLISHED)
    conn.send(RD, "PA", data=b"x" * 10)
    conn.send(O, "PA", data=b"y" * 10)
    conn.assert_state(S.CT_ESTABLISHED)


def test_syn_sent_new_isn_reinitialises(fastpath):
    """A client that gave up on a SYN and connects again from the same port
    uses a larger ISN (RFC 9293 3.4.1: a reinitialised TCP "must only be sure
    to use sequence numbers larger than those recently used"): the new SYN
    replaces the old one's window data, and the SYN-ACK for it passes."""
    conn = TcpConn.make(fastpath)
    conn.send(O, "S")
    again = TcpConn.make(fastpath, isn=(conn.c.isn + 3_000_000, 800_000))
    again.send(O, "S")
    e = again.assert_state(S.CT_SYN_SENT)
    assert e.leaf.tcp[0].end == again.c.isn + 1
    assert list(e.leaf.packets) == [2, 0]
    again.send(RD, "SA")
    again.send(O, "A")
    again.send(O, "PA", data=b"works")
    again.assert_state(S.CT_ESTABLISHED)


def test_simultaneous_open_synack_must_ack_the_syn(fastpath):
    conn = TcpConn.make(fastpath)
    conn.send(O, "S")
    conn.send(RD, "S")
    conn.send(O, "SA", R.DROP_TCP_BAD_SYNACK, ack=conn.s.nxt + 5)
    conn.assert_state(S.CT_SYN_SENT2)


def test_synack_must_ack_the_syn(fastpath):
    conn = TcpConn.make(fastpath)
    conn.send(O, "S")
    conn.send(RD, "SA", R.DROP_TCP_BAD_SYNACK, ack=conn.c.nxt + 1)
    conn.send(RD, "SA", R.DROP_TCP_BAD_SYNACK, ack=conn.c.nxt - 100_000)
    conn.assert_state(S.CT_SYN_SENT)
    conn.send(RD, "SA")
    conn.assert_state(S.CT_SYN_RECV)


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_simultaneous_close(fastpath, family):
    cli, srv = FAMILIES[family]
    conn = TcpConn.make(fastpath, client=(cli, 40003), server=(srv, 80))
    conn.handshake()
    o_fin_ack, r_fin_ack = conn.s.nxt, conn.c.nxt         # what each FIN acks: not the other FIN
    conn.send(O, "FA", ack=o_fin_ack)
    conn.send(RD, "FA", ack=r_fin_ack)
    conn.assert_state(S.CT_CLOSING)
    conn.send(O, "A")                                      # acks R's FIN
    conn.assert_state(S.CT_LAST_ACK)
    conn.send(RD, "A")                                     # acks O's FIN
    conn.assert_state(S.CT_TIME_WAIT)


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_connection_refused(fastpath, family):
    cli, srv = FAMILIES[family]
    conn = TcpConn.make(fastpath, client=(cli, 40004), server=(srv, 81))
    conn.send(O, "S")
    conn.send(RD, "RA", seq=0)                             # <SEQ=0><ACK=ISN+1><CTL=RST,ACK>
    # a handshake that never completed stays out of the session table
    conn.assert_state(S.CT_CLOSE, HALFOPEN)
    assert table_len(fastpath, FLOWS) == 0
    assert fastpath.table("ms_pressure")[ctypes.c_int(0)].inserted == 0
    conn.send(O, "S")                                      # the client tries again
    conn.assert_state(S.CT_SYN_SENT)


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_port_reuse_after_time_wait(fastpath, family):
    cli, srv = FAMILIES[family]
    conn = TcpConn.make(fastpath, client=(cli, 40005), server=(srv, 80))
    drive(conn, S.CT_TIME_WAIT)
    again = TcpConn.make(fastpath, client=(cli, 40005), server=(srv, 80),
                         isn=(conn.c.nxt + 100_000, 7_000_000))
    old_cookie = conn.entry().leaf.cookie
    again.send(O, "S")
    # the new session takes the old one's entry in ms_flows, in place: no
    # delete, no half-open insert, and no promotion at the handshake's end
    e = again.assert_state(S.CT_SYN_SENT, FLOWS)
    assert list(e.leaf.packets) == [1, 0]
    assert e.leaf.cookie != old_cookie                     # a new connection for the slow path
    assert (table_len(fastpath, FLOWS), table_len(fastpath, HALFOPEN)) == (1, 0)

    def counted():
        pr = fastpath.table("ms_pressure")[ctypes.c_int(0)]
        return (pr.inserted, pr.deleted, pr.halfopen_inserted, pr.halfopen_removed)
    assert counted() == (1, 0, 1, 1)       # the first connection's promotion only
    again.send(RD, "SA")
    again.send(O, "A")
    again.assert_state(S.CT_ESTABLISHED)
    assert counted() == (1, 0, 1, 1)       # one entry, counted once
    again.send(O, "PA", data=b"second life")
    again.send(RD, "A")
    # the old connection's numbers are gone with it
    again.send(O, "PA", R.DROP_TCP_OUT_OF_WINDOW, seq=conn.c.nxt, data=b"old")


def test_invalid_action_pass(fastpath):
    fastpath.apply_runtime(DatapathConfig(invalid_action="pass"))
    conn = TcpConn.make(fastpath).handshake()
    before = conn.entry()
    for flags in ("SF", "F", ""):
        expect(fastpath, conn.frame(O, flags), R.PASS_TCP_INVALID)
    after = conn.assert_state(S.CT_ESTABLISHED)
    assert after.raw == before.raw
    # and with the default again, dropped
    fastpath.apply_runtime(DatapathConfig())
    expect(fastpath, conn.frame(O, "SF"), R.DROP_TCP_INVALID)


# ==========================================================================
# 3. Window tracking
# ==========================================================================

def established(fp, **kw) -> TcpConn:
    conn = TcpConn.make(fp, **kw).handshake()
    conn.send(O, "PA", data=b"a" * 1000)
    conn.send(RD, "PA", data=b"b" * 1000)
    conn.send(O, "A")
    return conn


def test_data_inside_window_passes(fastpath):
    conn = established(fastpath)
    for _ in range(5):
        conn.send(O, "PA", data=b"c" * 1400)
    conn.send(RD, "A")
    conn.send(RD, "PA", data=b"d" * 1400)
    conn.assert_state(S.CT_ESTABLISHED)


def test_seq_far_beyond_window_dropped(fastpath):
    conn = established(fastpath)
    before = conn.entry()
    conn.send(O, "PA", R.DROP_TCP_OUT_OF_WINDOW, seq=conn.c.nxt + 10_000_000, data=b"x" * 100)
    conn.send(RD, "PA", R.DROP_TCP_OUT_OF_WINDOW, seq=conn.s.nxt + 200_000, data=b"x" * 100)
    after = conn.assert_state(S.CT_ESTABLISHED)
    assert after.raw == before.raw
    conn.send(O, "PA", data=b"still fine")


def test_seq_far_behind_window_dropped(fastpath):
    conn = established(fastpath)
    conn.send(O, "PA", R.DROP_TCP_OUT_OF_WINDOW, seq=conn.c.nxt - 3_000_000, data=b"x" * 100)
    conn.assert_state(S.CT_ESTABLISHED)


def test_ack_of_unsent_data_dropped(fastpath):
    conn = established(fastpath)
    before = conn.entry()
    conn.send(O, "A", R.DROP_TCP_OUT_OF_WINDOW, ack=conn.s.nxt + 5000)
    conn.send(RD, "A", R.DROP_TCP_OUT_OF_WINDOW, ack=conn.c.nxt + 1)
    assert conn.assert_state(S.CT_ESTABLISHED).raw == before.raw
    conn.send(O, "A")


def test_ack_older_than_the_ack_window_dropped(fastpath):
    conn = established(fastpath)
    conn.send(O, "A", ack=conn.s.nxt - 1000)               # a duplicate, old ACK: fine
    # nf_conntrack's MAXACKWINDOW: an ack may lag by the larger of the
    # sender's biggest window and 66000 bytes, no more
    conn.send(O, "A", R.DROP_TCP_OUT_OF_WINDOW, ack=conn.s.nxt - 200_000)
    conn.assert_state(S.CT_ESTABLISHED)


def test_retransmission_and_keepalive_pass(fastpath):
    conn = established(fastpath)
    old = conn.c.nxt
    conn.send(O, "PA", data=b"e" * 500)
    conn.send(O, "PA", seq=old, data=b"e" * 500)           # retransmission
    conn.send(O, "PA", seq=old + 100, data=b"e" * 200)     # part of it again
    conn.send(O, "A", seq=conn.c.nxt - 1)                  # keep-alive, no data
    conn.send(O, "A", seq=conn.c.nxt - 1, data=b"\0")      # keep-alive, one garbage byte
    conn.send(RD, "A", seq=conn.s.nxt - 1)
    conn.assert_state(S.CT_ESTABLISHED)


# Window scale (RFC 7323): the window of a SYN is never scaled; later windows
# are shifted by the scale the *sender* offered, when both offered one.
SMALL_WIN = 1000


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_window_scale_honoured(fastpath, family):
    cli, srv = FAMILIES[family]
    conn = TcpConn.make(fastpath, client=(cli, 40010), server=(srv, 80), wscale=(7, 7),
                        window=SMALL_WIN)
    conn.handshake()
    e = conn.entry()
    assert (e.leaf.tcp[0].wscale, e.leaf.tcp[1].wscale) == (7, 7)
    conn.send(RD, "A")                                     # advertises 1000 << 7
    edge = conn.c.nxt + (SMALL_WIN << 7)
    conn.send(O, "PA", R.DROP_TCP_OUT_OF_WINDOW, seq=edge + 1, data=b"z" * 100)
    conn.send(O, "PA", seq=edge - 100, data=b"z" * 100)   # ends exactly at the edge
    conn.send(O, "PA", seq=conn.c.nxt - 50_000 - 100, data=b"z" * 100)  # beyond 1000 unscaled
    # and the other way: the client's window is scaled by the client's shift
    conn.send(O, "A", seq=conn.c.nxt)
    edge_s = conn.s.nxt + (SMALL_WIN << 7)
    conn.send(RD, "PA", R.DROP_TCP_OUT_OF_WINDOW, seq=edge_s + 1, data=b"w" * 10)
    conn.send(RD, "PA", seq=edge_s - 10, data=b"w" * 10)


@pytest.mark.parametrize("missing", ["synack", "syn"])
def test_window_scale_needs_both_syns(fastpath, missing):
    ws = (7, None) if missing == "synack" else (None, 7)
    conn = TcpConn.make(fastpath, wscale=ws, window=SMALL_WIN)
    conn.handshake()
    e = conn.entry()
    assert (e.leaf.tcp[0].wscale, e.leaf.tcp[1].wscale) == (0, 0)
    conn.send(RD, "A")
    edge = conn.c.nxt + SMALL_WIN                          # 1000, unscaled
    conn.send(O, "PA", R.DROP_TCP_OUT_OF_WINDOW, seq=edge + 1, data=b"z" * 10)
    conn.send(O, "PA", seq=edge - 10, data=b"z" * 10)
    conn.send(O, "A", seq=conn.c.nxt)
    edge_s = conn.s.nxt + SMALL_WIN
    conn.send(RD, "PA", R.DROP_TCP_OUT_OF_WINDOW, seq=edge_s + 1, data=b"w" * 10)
    conn.send(RD, "PA", seq=edge_s - 10, data=b"w" * 10)


# -- RST (RFC 5961 section 3, nf_conntrack's RST checks) ---------------------
# A RST changes the session only at the sequence number its receiver
# expects: the sender's next sequence number (all it sent), or the last
# acknowledgement the receiver sent (data still in flight). Any other RST
# inside the window passes to the endpoint, which answers with a challenge
# ACK, and the session stays as it was; outside the window it drops.

RST_OFFSETS = [1, 1000, 30_000]


@pytest.mark.parametrize("flags", ["R", "RA"])
@pytest.mark.parametrize("frm", [O, RD])
def test_rst_at_the_exact_sequence_closes(fastpath, frm, flags):
    conn = established(fastpath)
    conn.send(frm, flags)
    conn.assert_state(S.CT_CLOSE, FLOWS)


def assert_unchanged_but_counted(conn: TcpConn, before, fd: int):
    after = conn.entry()
    assert after is not None and (after.table, after.state) == (before.table, before.state)
    # the window data is not advanced by a RST that did not count
    assert bytes(after.leaf.tcp[0]) == bytes(before.leaf.tcp[0])
    assert bytes(after.leaf.tcp[1]) == bytes(before.leaf.tcp[1])
    assert after.leaf.packets[fd] == before.leaf.packets[fd] + 1


@pytest.mark.parametrize("offset", RST_OFFSETS)
@pytest.mark.parametrize("flags", ["R", "RA"])
@pytest.mark.parametrize("frm", [O, RD])
def test_rst_in_window_off_the_sequence_is_challenged(fastpath, frm, flags, offset):
    conn = established(fastpath)
    me, _ = conn.sides(frm)
    before = conn.assert_state(S.CT_ESTABLISHED)
    conn.send(frm, flags, R.PASS_TCP_RST_CHALLENGE, seq=me.nxt + offset)
    assert_unchanged_but_counted(conn, before, 0 if frm == O else 1)
    # the receiver's challenge ACK and the rest of the conversation pass
    conn.send(RD if frm == O else O, "A")
    conn.send(O, "PA", data=b"still open")
    conn.send(RD, "PA", data=b"yes")
    conn.assert_state(S.CT_ESTABLISHED)
    # the peer's own RST, at its exact sequence, still ends it
    conn.send(frm, "RA")
    conn.assert_state(S.CT_CLOSE, FLOWS)


SYNCHRONISED = [S.CT_SYN_RECV, S.CT_FIN_WAIT1, S.CT_FIN_WAIT2, S.CT_CLOSE_WAIT, S.CT_CLOSING, S.CT_LAST_ACK]


# -100: behind the sender's next sequence and the receiver's last ACK (which
# is the FIN's own number while a FIN is unacknowledged: that one counts).
@pytest.mark.parametrize("offset", [-100, 1000])
@pytest.mark.parametrize("state", SYNCHRONISED, ids=[st.name[3:] for st in SYNCHRONISED])
@pytest.mark.parametrize("frm", [O, RD])
def test_rst_off_the_sequence_is_challenged_in_every_synchronised_state(fastpath, state, frm, offset):
    conn = TcpConn.make(fastpath)
    drive(conn, state)
    me, _ = conn.sides(frm)
    before = conn.assert_state(state)
    if state == S.CT_SYN_RECV and frm == RD and offset > 0:
        # the client has not acked the SYN-ACK: it opened no window for the server yet
        conn.send(frm, "R", R.DROP_TCP_OUT_OF_WINDOW, seq=me.nxt + offset)
        assert conn.entry().raw == before.raw
    else:
        conn.send(frm, "R", R.PASS_TCP_RST_CHALLENGE, seq=me.nxt + offset)
        assert_unchanged_but_counted(conn, before, 0 if frm == O else 1)
    conn.send(frm, "R")
    conn.assert_state(S.CT_CLOSE, expected_table(state, S.CT_CLOSE))


@pytest.mark.parametrize("state", [S.CT_TIME_WAIT, S.CT_CLOSE])
def test_rst_after_the_close_is_not_checked(fastpath, state):
    """Both ends are done (nf_conntrack skips the RST checks there too): any
    RST in the window just makes the session CLOSE."""
    conn = TcpConn.make(fastpath)
    drive(conn, state)
    conn.send(RD, "R", seq=conn.s.nxt + 1000)
    conn.assert_state(S.CT_CLOSE, FLOWS)


def test_rst_at_the_receivers_last_ack_closes(fastpath):
    """Data in flight: the receiver has acknowledged less than the sender
    sent. A RST at the receiver's last ACK (what its stack expects, and what
    a closed sender answers a challenge ACK with) is accepted, as
    nf_conntrack accepts a RST at the receiver's td_maxack."""
    conn = established(fastpath)
    acked = conn.c.nxt
    conn.send(O, "PA", data=b"1" * 1000)
    first = conn.c.nxt
    conn.send(O, "PA", data=b"2" * 1000)                  # not yet acknowledged
    before = conn.entry()
    # before the receiver acknowledged the first segment, that point is no one's expectation
    conn.send(O, "R", R.PASS_TCP_RST_CHALLENGE, seq=first)
    assert_unchanged_but_counted(conn, before, 0)
    conn.send(RD, "A", ack=first)                          # acks the first segment only
    conn.send(O, "R", R.PASS_TCP_RST_CHALLENGE, seq=first + 500)
    conn.send(O, "R", R.PASS_TCP_RST_CHALLENGE, seq=acked)  # an older ack of the receiver
    conn.assert_state(S.CT_ESTABLISHED)
    conn.send(O, "R", seq=first)
    conn.assert_state(S.CT_CLOSE, FLOWS)


def test_rst_answering_a_challenge_ack_closes(fastpath):
    """The sender's stack is gone and the receiver lost data: the sender's
    RST at its next sequence is challenged by the receiver's ACK (which
    acks less), and the RST the sender sends back at that ACK closes."""
    conn = established(fastpath)
    lost = conn.c.nxt
    conn.send(O, "PA", data=b"l" * 1000)                   # never reaches the receiver
    conn.send(RD, "A", ack=lost)                           # the receiver's (challenge) ACK
    conn.send(O, "R", seq=lost)                            # the sender's answer to it
    conn.assert_state(S.CT_CLOSE, FLOWS)


def test_rst_of_a_picked_up_flow(fastpath):
    """A flow picked up mid-stream (loose) knows the first packet's ACK:
    the other side's RST is checked against it."""
    fastpath.apply_runtime(DatapathConfig(loose=True))
    conn = TcpConn.make(fastpath, isn=(123456, 654321))
    conn.send(O, "PA", R.PASS_TCP_PICKED_UP, data=b"mid-stream", ack=conn.s.nxt)
    before = conn.entry()
    conn.send(RD, "R", R.PASS_TCP_RST_CHALLENGE, seq=conn.s.nxt + 1000)
    assert_unchanged_but_counted(conn, before, 1)
    conn.send(RD, "R", seq=conn.s.nxt)
    conn.assert_state(S.CT_CLOSE, FLOWS)


INSPECT_POLICY = """
groups: {clients: [10.0.0.0/24], servers: [10.0.1.0/24]}
defaults: {ingress: deny, egress: deny}
rules:
  - {name: waf, from: clients, to: servers, proto: tcp, ports: [80], action: inspect, inspect: {what: [waf]}}
"""


def test_rst_challenged_on_an_inspected_flow_is_not_handed_to_the_slow_path(fastpath):
    """A RST that does not count is not the end of the inspected stream: it
    is not copied to the slow path (a blind RST must not end inspection),
    while the exact one is."""
    from appliance.policyfile import compile_text
    from datapath.policy_maps import PolicyMaps
    from slowpath.records import VerdictWriter
    from slowpath.ringbuf import RingBuffer

    _, pol = compile_text(INSPECT_POLICY, "inspect.yaml")
    PolicyMaps.for_fastpath(fastpath).apply(pol)
    ring = RingBuffer(fastpath.table("ms_insp_ring").map_fd)
    try:
        VerdictWriter(fastpath.table("ms_verdicts").map_fd, fastpath.table("ms_slowpath").map_fd,
                      fastpath.table("ms_verdicts").Leaf, fastpath.table("ms_slowpath").Leaf).heartbeat(1)
        ring.drain()
        conn = TcpConn.make(fastpath, client=("10.0.0.5", 40000), server=("10.0.1.5", 80))
        conn.send(O, "S", R.PASS_POLICY_INSPECT)
        conn.send(RD, "SA")
        conn.send(O, "A")
        conn.send(O, "PA", R.PASS_INSPECT_COPIED, data=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert len(list(ring.drain())) == 1
        conn.send(O, "R", R.PASS_TCP_RST_CHALLENGE, seq=conn.c.nxt + 1000)
        conn.send(RD, "R", R.PASS_TCP_RST_CHALLENGE, seq=conn.s.nxt + 1000)
        assert list(ring.drain()) == []
        conn.assert_state(S.CT_ESTABLISHED)
        conn.send(O, "R")                                  # the exact one ends the stream
        assert len(list(ring.drain())) == 1
        conn.assert_state(S.CT_CLOSE)
    finally:
        ring.close()
        fastpath.apply_runtime(fastpath.config)


# RST in SYN_SENT (RFC 9293 3.10.7.3, RFC 5961 3.2): from the responder it
# is acceptable only when it acknowledges the SYN; its sequence number is
# not checked (a refusal carries 0). From the initiator, as anywhere: at
# its next sequence number.

@pytest.mark.parametrize("family", ["v4", "v6"])
def test_rst_in_syn_sent_acking_the_syn_closes(fastpath, family):
    cli, srv = FAMILIES[family]
    conn = TcpConn.make(fastpath, client=(cli, 40020), server=(srv, 81))
    conn.send(O, "S")
    conn.send(RD, "RA", seq=987654, ack=conn.c.nxt)
    conn.assert_state(S.CT_CLOSE, HALFOPEN)


def test_rst_in_syn_sent_refusing_a_syn_with_data(fastpath):
    """A refusal acks the whole SYN, its data included (RFC 9293 3.10.7.1:
    <SEQ=0><ACK=SEG.SEQ+SEG.LEN>); one acking less acks no SYN sent."""
    conn = TcpConn.make(fastpath)
    syn = conn.frame(O, "S", seq=conn.c.isn, data=b"t" * 100)   # TCP Fast Open: data in the SYN
    expect(fastpath, syn, R.PASS_FORWARD)
    conn.send(RD, "RA", R.PASS_TCP_RST_CHALLENGE, seq=0, ack=conn.c.isn + 1)
    conn.assert_state(S.CT_SYN_SENT)
    conn.send(RD, "RA", seq=0, ack=conn.c.isn + 101)
    conn.assert_state(S.CT_CLOSE, HALFOPEN)


@pytest.mark.parametrize("flags,ack", [("R", None), ("RA", "isn"), ("RA", "below")],
                         ids=["no-ack", "acks-the-isn", "acks-below"])
def test_rst_in_syn_sent_not_acking_the_syn_is_passed_unchanged(fastpath, flags, ack):
    conn = TcpConn.make(fastpath)
    conn.send(O, "S")
    before = conn.assert_state(S.CT_SYN_SENT)
    a = {None: None, "isn": conn.c.isn, "below": conn.c.isn - 1000}[ack]
    conn.send(RD, flags, R.PASS_TCP_RST_CHALLENGE, seq=0, ack=a)
    assert_unchanged_but_counted(conn, before, 1)
    assert conn.entry().leaf.tcp[1].flags == 0             # the responder's window not started by it
    # the real answer still opens the connection
    conn.send(RD, "SA")
    conn.send(O, "A")
    conn.assert_state(S.CT_ESTABLISHED)


def test_rst_in_syn_sent_acking_unsent_data_dropped(fastpath):
    conn = TcpConn.make(fastpath)
    conn.send(O, "S")
    conn.send(RD, "RA", R.DROP_TCP_OUT_OF_WINDOW, seq=0, ack=conn.c.nxt + 1)
    conn.assert_state(S.CT_SYN_SENT)


def test_rst_in_syn_sent_from_the_initiator(fastpath):
    conn = TcpConn.make(fastpath)
    conn.send(O, "S")
    # no window is open yet (the responder has not spoken): off the sequence is outside it
    conn.send(O, "R", R.DROP_TCP_OUT_OF_WINDOW, seq=conn.c.nxt + 1000)
    conn.assert_state(S.CT_SYN_SENT)
    conn.send(O, "R")                                      # at ISN + 1
    conn.assert_state(S.CT_CLOSE, HALFOPEN)


@pytest.mark.parametrize("frm", [O, RD])
def test_rst_out_of_window_dropped_session_survives(fastpath, frm):
    conn = established(fastpath)
    me, _ = conn.sides(frm)
    conn.send(frm, "R", R.DROP_TCP_OUT_OF_WINDOW, seq=me.nxt + 5_000_000)
    conn.send(frm, "RA", R.DROP_TCP_OUT_OF_WINDOW, seq=me.nxt - 3_000_000)
    conn.assert_state(S.CT_ESTABLISHED)
    conn.send(O, "PA", data=b"still here")
    conn.send(RD, "PA", data=b"me too")
    conn.assert_state(S.CT_ESTABLISHED)


@pytest.mark.parametrize("frm", [O, RD])
def test_syn_on_established_ignored(fastpath, frm):
    conn = established(fastpath)
    conn.send(frm, "S", R.PASS_TCP_IGNORED, seq=conn.sides(frm)[0].nxt + 12345)
    conn.assert_state(S.CT_ESTABLISHED)
    conn.send(O, "PA", data=b"carry on")


def test_midstream_ack_without_session(fastpath):
    conn = TcpConn.make(fastpath, isn=(123456, 654321))
    conn.send(O, "PA", R.DROP_TCP_NO_SESSION, data=b"mid-stream")
    conn.send(RD, "A", R.DROP_TCP_NO_SESSION)
    assert conn.entry() is None


def test_loose_picks_up_midstream(fastpath):
    fastpath.apply_runtime(DatapathConfig(loose=True))
    conn = TcpConn.make(fastpath, isn=(123456, 654321))
    conn.send(O, "PA", R.PASS_TCP_PICKED_UP, data=b"mid-stream")
    e = conn.assert_state(S.CT_ESTABLISHED, FLOWS)
    assert e.leaf.flags & 0x01                             # MS_FLOW_PICKED_UP
    conn.send(RD, "PA", data=b"reply")
    conn.send(O, "A")
    conn.send(O, "PA", data=b"more")
    e = conn.assert_state(S.CT_ESTABLISHED)
    assert list(e.leaf.packets) == [3, 1]
    # a RST or a SYN-less FIN alone does not pick up a flow
    other = TcpConn.make(fastpath, client=("10.0.0.1", 40999), isn=(5, 6))
    other.send(O, "R", R.DROP_TCP_NO_SESSION)
    assert other.entry() is None


def test_window_action_pass(fastpath):
    fastpath.apply_runtime(DatapathConfig(window_action="pass"))
    conn = established(fastpath)
    before = conn.entry()
    expect(fastpath, conn.frame(O, "PA", seq=conn.c.nxt + 10_000_000, data=b"x"),
           R.PASS_TCP_OUT_OF_WINDOW)
    after = conn.assert_state(S.CT_ESTABLISHED)
    assert bytes(after.leaf.tcp[0]) == bytes(before.leaf.tcp[0])


# ==========================================================================
# 4. Per-state timeouts (real sleeps)
# ==========================================================================

def test_syn_sent_expires(fastpath):
    # Timeouts long enough that "in time" holds on a busy machine; the
    # sleeps only need to outlast them.
    fastpath.apply_runtime(DatapathConfig(timeouts=Timeouts(syn_sent=1.0)))
    quick = TcpConn.make(fastpath, client=("10.0.0.1", 41000))
    quick.send(O, "S")
    quick.send(RD, "SA")                                   # answered in time
    quick.assert_state(S.CT_SYN_RECV)
    slow = TcpConn.make(fastpath, client=("10.0.0.1", 41001))
    slow.send(O, "S")
    time.sleep(1.2)
    slow.send(RD, "SA", R.DROP_TCP_NO_SESSION)
    assert slow.entry() is None


def _session_leaf(fp, table: str, conn: TcpConn):
    """(map, key, leaf or None) of conn's session in session table ``table``,
    read directly: packets_ct.entry() refuses a key in both tables."""
    t = fp.table(session_map(table, conn.c.addr, conn.s.addr))
    k = flow_key(t, conn.c.addr, conn.c.port, conn.s.addr, conn.s.port, IPPROTO_TCP)
    try:
        return t, k, t[k]
    except KeyError:
        return t, k, None


# A session entry idle this long is past every state's default timeout
# (ESTABLISHED's 3,600 s included), without sleeping.
LONG_IDLE_NS = 7_200 * 1_000_000_000


@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize("segment", ["syn", "synack"])
@pytest.mark.parametrize("case", ["flows_expired", "both_live", "halfopen_expired"])
def test_handshake_finds_its_session_in_either_table(fastpath, family, segment, case):
    """A SYN or a SYN-ACK looks its 5-tuple up in ms_flows and ms_halfopen
    at once (conntrack.h ms_ct_lookup_handshake) and is decided as with one
    lookup after the other: a live ms_flows entry first, an expired entry
    in either table deleted (counted) and read as absent, ms_halfopen's
    entry next. Entries in both tables at once happen only in a race (a
    promotion between its insert and its delete); planted here by hand."""
    cli, srv = FAMILIES[family]
    conn = TcpConn.make(fastpath, client=(cli, 40100), server=(srv, 80))
    conn.send(O, "S")
    ht, hk, half = _session_leaf(fastpath, HALFOPEN, conn)
    assert half is not None and list(half.packets) == [1, 0]
    now = time.monotonic_ns()
    if case in ("flows_expired", "both_live"):
        planted = type(half).from_buffer_copy(bytes(half))
        planted.state = int(S.CT_ESTABLISHED)
        planted.last_seen_ns = now - LONG_IDLE_NS if case == "flows_expired" else now
        ft, fk, _ = _session_leaf(fastpath, FLOWS, conn)
        ft[fk] = planted
    else:
        old = type(half).from_buffer_copy(bytes(half))
        old.last_seen_ns = now - LONG_IDLE_NS
        ht[hk] = old
    pr0 = fastpath.table("ms_pressure")[ctypes.c_int(0)]

    if case == "both_live":
        # the established session decides (RFC 5961 4.2: a SYN, or a
        # SYN-ACK, left alone); the half-open entry is not touched
        if segment == "syn":
            conn.send(O, "S", R.PASS_TCP_IGNORED, seq=conn.c.isn + 777)
        else:
            conn.send(RD, "SA", R.PASS_TCP_IGNORED)
        _, _, f = _session_leaf(fastpath, FLOWS, conn)
        assert f.state == S.CT_ESTABLISHED
        assert list(f.packets) == ([2, 0] if segment == "syn" else [1, 1])
        assert bytes(_session_leaf(fastpath, HALFOPEN, conn)[2]) == bytes(half)
        return
    if segment == "syn":
        conn.send(O, "S")                                   # the SYN again
    elif case == "flows_expired":
        conn.send(RD, "SA")
    else:
        conn.send(RD, "SA", R.DROP_TCP_NO_SESSION)          # its session expired: none
    pr1 = fastpath.table("ms_pressure")[ctypes.c_int(0)]
    _, _, h = _session_leaf(fastpath, HALFOPEN, conn)
    assert _session_leaf(fastpath, FLOWS, conn)[2] is None
    if case == "flows_expired":
        # the expired ms_flows entry went (counted), the half-open session
        # took the segment
        assert pr1.deleted - pr0.deleted == 1
        assert h.cookie == half.cookie
        assert (h.state, list(h.packets)) == ((S.CT_SYN_SENT, [2, 0]) if segment == "syn" else
                                              (S.CT_SYN_RECV, [1, 1]))
    elif segment == "syn":
        # the expired half-open entry went, a new one took its place
        assert (pr1.halfopen_removed - pr0.halfopen_removed, pr1.halfopen_inserted - pr0.halfopen_inserted) == (1, 1)
        assert h.state == S.CT_SYN_SENT and list(h.packets) == [1, 0] and h.cookie != half.cookie
    else:
        assert pr1.halfopen_removed - pr0.halfopen_removed == 1 and h is None


def test_established_expires_lazily(fastpath):
    fastpath.apply_runtime(DatapathConfig(timeouts=Timeouts(established=3.0)))
    conn = TcpConn.make(fastpath).handshake()
    time.sleep(1.5)
    conn.send(O, "PA", data=b"x")                          # refreshes last_seen
    time.sleep(1.75)                                       # 3.25 s since the handshake
    conn.send(RD, "A")
    conn.assert_state(S.CT_ESTABLISHED)
    time.sleep(3.2)
    assert conn.entry() is not None                        # nothing sweeps it but a lookup
    conn.send(O, "A", R.DROP_TCP_NO_SESSION)
    assert conn.entry() is None
    pr = fastpath.table("ms_pressure")[ctypes.c_int(0)]
    assert (pr.inserted, pr.deleted) == (1, 1)


def test_udp_unreplied_expires(fastpath):
    fastpath.apply_runtime(DatapathConfig(timeouts=Timeouts(udp_unreplied=0.2)))
    cli, srv = V4
    expect(fastpath, udp_frame(cli, 7000, srv, 53), R.PASS_FORWARD)
    time.sleep(0.35)
    # the late answer finds no session: it starts one of its own, the other way
    expect(fastpath, udp_frame(srv, 53, cli, 7000), R.PASS_FORWARD)
    e = entry(fastpath, cli, 7000, srv, 53, IPPROTO_UDP)
    assert (e.table, e.state) == (HALFOPEN, S.CT_UDP_UNREPLIED)
    assert e.leaf.initiator_is_hi == canonical(srv, 53, cli, 7000)[2]


# ==========================================================================
# 5. Fragments
# ==========================================================================

def v4_fragments(src, dst, ident, proto, l4: bytes, split: int):
    """First fragment (MF, offset 0) carrying l4[:split], then the rest."""
    assert split % 8 == 0
    first = ether() / IP(src=src, dst=dst, id=ident, flags="MF", frag=0, proto=proto) / Raw(l4[:split])
    later = ether() / IP(src=src, dst=dst, id=ident, frag=split // 8, proto=proto) / Raw(l4[split:])
    return bytes(first), bytes(later)


def v6_fragments(src, dst, ident, proto, l4: bytes, split: int):
    assert split % 8 == 0
    first = (ether() / IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(nh=proto, offset=0, m=1, id=ident)
             / Raw(l4[:split]))
    later = (ether() / IPv6(src=src, dst=dst)
             / IPv6ExtHdrFragment(nh=proto, offset=split // 8, m=0, id=ident) / Raw(l4[split:]))
    return bytes(first), bytes(later)


FRAGMENTERS = {"v4": v4_fragments, "v6": v6_fragments}


def udp_datagram(src, sport, dst, dport, size):
    return bytes(ip(src, dst) / UDP(sport=sport, dport=dport) / Raw(b"f" * size))[40 if ":" in src else 20:]


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_udp_fragments_follow_the_first(fastpath, family):
    cli, srv = FAMILIES[family]
    frag = FRAGMENTERS[family]
    first, later = frag(cli, srv, 0x4242, IPPROTO_UDP, udp_datagram(cli, 9000, srv, 9001, 3000), 1480)
    expect(fastpath, first, R.PASS_FORWARD)
    e = entry(fastpath, cli, 9000, srv, 9001, IPPROTO_UDP)
    assert (e.table, e.state) == (HALFOPEN, S.CT_UDP_UNREPLIED)
    # the first fragment's ports are remembered under the reassembly key:
    # (src, dst, proto, id) for IPv4, (src, dst, id) for IPv6 (proto 0)
    (fk, fv), = fastpath.table("ms_frags").items()
    assert (bytes(fk.saddr), bytes(fk.daddr), fk.id, fk.proto) == \
        (mapped(cli), mapped(srv), 0x4242, IPPROTO_UDP if family == "v4" else 0)
    assert (socket.ntohs(fv.sport), socket.ntohs(fv.dport), fv.proto) == (9000, 9001, IPPROTO_UDP)
    expect(fastpath, later, R.PASS_FRAGMENT)
    e = entry(fastpath, cli, 9000, srv, 9001, IPPROTO_UDP)
    assert list(e.leaf.packets) == [2, 0]
    assert list(e.leaf.bytes) == [len(first) + len(later), 0]
    # the reply, fragmented too: promotes with its first fragment, the rest follows
    rfirst, rlater = frag(srv, cli, 0x4243, IPPROTO_UDP, udp_datagram(srv, 9001, cli, 9000, 2000), 1024)
    expect(fastpath, rfirst, R.PASS_FORWARD)
    expect(fastpath, rlater, R.PASS_FRAGMENT)
    e = entry(fastpath, cli, 9000, srv, 9001, IPPROTO_UDP)
    assert (e.table, e.state) == (FLOWS, S.CT_UDP_REPLIED)
    assert list(e.leaf.packets) == [2, 2]
    assert list(e.leaf.bytes) == [len(first) + len(later), len(rfirst) + len(rlater)]


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_later_fragment_without_first(fastpath, family):
    cli, srv = FAMILIES[family]
    frag = FRAGMENTERS[family]
    first, later = frag(cli, srv, 0x5151, IPPROTO_UDP, udp_datagram(cli, 9000, srv, 9001, 100), 64)
    expect(fastpath, later, R.DROP_FRAG_NO_FIRST)
    assert table_len(fastpath, FLOWS) == table_len(fastpath, HALFOPEN) == 0
    # a first fragment of another datagram does not vouch for this one
    other_first, _ = frag(cli, srv, 0x5152, IPPROTO_UDP, udp_datagram(cli, 9000, srv, 9001, 100), 64)
    expect(fastpath, other_first, R.PASS_FORWARD)
    expect(fastpath, later, R.DROP_FRAG_NO_FIRST)


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_tcp_fragment_overlapping_header(fastpath, family):
    cli, srv = FAMILIES[family]
    frag = FRAGMENTERS[family]
    conn = TcpConn.make(fastpath, client=(cli, 40020), server=(srv, 80)).handshake()
    # a first fragment with the whole TCP header, then one at offset 1 (byte
    # 8) that would rewrite its flags and window on reassembly (RFC 1858 3.2)
    seg = bytes(ip(cli, srv) / TCP(sport=40020, dport=80, flags="A", seq=conn.c.nxt, ack=conn.s.nxt)
                / Raw(b"x" * 16))[40 if family == "v6" else 20:]
    first, _ = frag(cli, srv, 0x6161, IPPROTO_TCP, seg, 24)
    _, overlap = frag(cli, srv, 0x6161, IPPROTO_TCP, seg, 8)
    expect(fastpath, overlap, R.DROP_FRAG_OVERLAP)
    expect(fastpath, first, R.PASS_FORWARD)
    expect(fastpath, overlap, R.DROP_FRAG_OVERLAP)
    conn.assert_state(S.CT_ESTABLISHED)


# ==========================================================================
# 6. A SYN flood does not evict established sessions
# ==========================================================================

FLOOD_SESSIONS = 1000
FLOOD_SYNS = 200_000
SERVER = ("10.0.0.2", 80)
CLIENT = "10.0.0.1"
ISN_C, ISN_S = 1000, 500000


def bulk_establish(fp, client, server, sports) -> None:
    """Full handshakes for many client ports (one scapy frame each, patched)."""
    conn = TcpConn.make(fp, client=(client, 1), server=server, isn=(ISN_C, ISN_S))
    syn = PatchedRunner(fp.prog_fd(ING), conn.frame(O, "S", seq=ISN_C))
    synack = PatchedRunner(fp.prog_fd(ING), conn.frame(RD, "SA", seq=ISN_S, ack=ISN_C + 1))
    ack = PatchedRunner(fp.prog_fd(ING), conn.frame(O, "A", seq=ISN_C + 1, ack=ISN_S + 1))
    for port in sports:
        p = port.to_bytes(2, "big")
        syn.view[OFF_SPORT:OFF_SPORT + 2] = p
        synack.view[OFF_DPORT:OFF_DPORT + 2] = p
        ack.view[OFF_SPORT:OFF_SPORT + 2] = p
        assert syn.run() == TC_ACT_OK and synack.run() == TC_ACT_OK and ack.run() == TC_ACT_OK, port


def bulk_ack_all(fp, client, server, sports) -> int:
    """An in-window data ACK from the client of every session; the number passed."""
    conn = TcpConn.make(fp, client=(client, 1), server=server, isn=(ISN_C, ISN_S))
    ack = PatchedRunner(fp.prog_fd(ING), conn.frame(O, "PA", seq=ISN_C + 1, ack=ISN_S + 1, data=b"k" * 10))
    passed = 0
    for port in sports:
        ack.view[OFF_SPORT:OFF_SPORT + 2] = port.to_bytes(2, "big")
        passed += ack.run() == TC_ACT_OK
    return passed


def established_ports(fp, client, server) -> set[int]:
    """Client ports of the ESTABLISHED TCP sessions with ``server`` in ms_flows."""
    out = set()
    for k, v in fp.table(session_map(FLOWS, client, server[0])).items():
        if v.state != S.CT_ESTABLISHED or k.proto != IPPROTO_TCP:
            continue
        lo, hi = key_addrs(k)
        ends = {(lo, socket.ntohs(k.port_lo)), (hi, socket.ntohs(k.port_hi))}
        srv = (mapped(server[0]), server[1])
        if srv in ends:
            (cli,) = ends - {srv}
            if cli[0] == mapped(client):
                out.add(cli[1])
    return out


def syn_flood(fp, n: int) -> float:
    """n SYNs to SERVER from random spoofed sources and ports; seconds taken."""
    conn = TcpConn.make(fp, client=("192.0.2.1", 1), server=SERVER)
    run = PatchedRunner(fp.prog_fd(ING), conn.frame(O, "S", seq=42))
    rnd = os.urandom(6 * n)
    view, go = run.view, run.run
    t0 = time.monotonic()
    for i in range(0, 6 * n, 6):
        view[OFF_IP_SRC:OFF_IP_SRC + 4] = rnd[i:i + 4]
        view[OFF_SPORT:OFF_SPORT + 2] = rnd[i + 4:i + 6]
        go()
    return time.monotonic() - t0


FLOOD_PORTS = range(10000, 10000 + FLOOD_SESSIONS)


def possible_cpus() -> int:
    """CPUs in the kernel's possible mask (e.g. "0-1" or "0,2-5")."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def _flood_and_check(fp, capsys, label):
    bulk_establish(fp, CLIENT, SERVER, FLOOD_PORTS)
    assert established_ports(fp, CLIENT, SERVER) == set(FLOOD_PORTS)
    before = fp.counters()
    secs = syn_flood(fp, FLOOD_SYNS)
    c = fp.counters()
    moved = {r.name: c.get((ING, r), (0, 0))[0] - before.get((ING, r), (0, 0))[0] for r in R}
    moved = {k: v for k, v in moved.items() if v}
    assert sum(moved.values()) == FLOOD_SYNS
    assert table_len(fp, HALFOPEN) <= fp.config.halfopen_table_size
    before = fp.counters()
    assert bulk_ack_all(fp, CLIENT, SERVER, FLOOD_PORTS) == FLOOD_SESSIONS
    after = fp.counters()
    assert after[(ING, R.PASS_FORWARD)][0] - before[(ING, R.PASS_FORWARD)][0] == FLOOD_SESSIONS
    assert established_ports(fp, CLIENT, SERVER) == set(FLOOD_PORTS)
    with capsys.disabled():
        print(f"\n  [{label}] {FLOOD_SYNS} SYNs in {secs:.2f} s ({FLOOD_SYNS / secs:,.0f}/s): {moved}")
    return moved


def test_syn_flood_keeps_established_sessions(fastpath, capsys):
    moved = _flood_and_check(fastpath, capsys, "default SYN budget")
    # the per-destination budget (20k/s, burst 40k) refused part of the flood
    assert moved.get("DROP_SYN_BUDGET_DST", 0) > 0
    assert moved.get("PASS_FORWARD", 0) >= 40_000 - FLOOD_SESSIONS
    assert set(moved) <= {"PASS_FORWARD", "DROP_SYN_BUDGET_DST", "DROP_SYN_BUDGET_GLOBAL",
                          "PASS_TCP_IGNORED"}


def test_syn_flood_without_budget_churns_only_halfopen(fastpath, capsys):
    fastpath.apply_runtime(DatapathConfig(syn_dst_rate=0, syn_global_rate=0))
    moved = _flood_and_check(fastpath, capsys, "no SYN budget")
    assert moved.get("PASS_FORWARD", 0) >= FLOOD_SYNS - 10   # random hits on a real session: ignored
    assert "DROP_SYN_BUDGET_DST" not in moved and "DROP_SYN_BUDGET_GLOBAL" not in moved
    # the LRU took the churn: ms_flows holds exactly the sessions, and the
    # half-open table is full as far as this test could fill it. With
    # BPF_F_NO_COMMON_LRU each CPU owns max_entries / possible CPUs of the
    # nodes and evicts from its own list, so a flood arriving on one CPU (as
    # this one does, bar migrations) fills only that CPU's share.
    share = fastpath.config.halfopen_table_size // possible_cpus()
    assert share * 9 // 10 <= table_len(fastpath, HALFOPEN) <= fastpath.config.halfopen_table_size
    assert table_len(fastpath, FLOWS) == FLOOD_SESSIONS


# ==========================================================================
# 7. Capacity and pressure (a 1024-session build)
# ==========================================================================

SMALL = 1024


class Events:
    """Records from the ms_events ring buffer (struct ms_event, as BCC describes it)."""

    def __init__(self, fp):
        self.fp = fp
        self.tab = fp.table("ms_events")
        self.record = ringbuf_record_type(self.tab)
        assert ctypes.sizeof(self.record) == 32      # struct ms_event: 2 x u32, 3 x u64
        self.got = []
        self.tab.open_ring_buffer(self._cb)

    def _cb(self, ctx, data, size):
        ev = ctypes.cast(data, ctypes.POINTER(self.record)).contents
        if ev.type != 1:           # another record type (EVENT_FLOW_END: test_flow_events.py)
            return 0
        assert size == ctypes.sizeof(self.record)
        self.got.append((ev.type, ev.pct, ev.entries, ev.capacity))
        return 0

    def take(self) -> list:
        self.fp.bpf.ring_buffer_poll(timeout=100)
        out, self.got = self.got, []
        return out


@pytest.fixture(scope="module")
def small_build():
    from datapath.loader import FastPath
    fp = FastPath(DatapathConfig(flow_table_size=SMALL))
    events = Events(fp)
    yield fp, events
    fp.close()


@pytest.fixture
def small(small_build):
    fp, events = small_build
    fp.reset()
    events.take()
    return fp, events


def test_full_table_refuses_new_flows_keeps_old(small):
    fp, _ = small
    ports = range(20000, 20000 + SMALL)
    bulk_establish(fp, CLIENT, SERVER, ports)
    assert table_len(fp, FLOWS) == SMALL
    assert fp.table("ms_pressure")[ctypes.c_int(0)].inserted == SMALL
    new = TcpConn.make(fp, client=(CLIENT, 30000), server=SERVER)
    new.send(O, "S", R.DROP_FLOW_TABLE_FULL)
    assert new.entry() is None
    expect(fp, udp_frame(CLIENT, 30001, SERVER[0], 53), R.DROP_FLOW_TABLE_FULL)
    expect(fp, echo("v4", CLIENT, SERVER[0], 99), R.DROP_FLOW_TABLE_FULL)
    assert table_len(fp, HALFOPEN) == 0
    # every existing session still works
    assert bulk_ack_all(fp, CLIENT, SERVER, ports) == SMALL
    assert established_ports(fp, CLIENT, SERVER) == set(ports)


def test_full_table_allowlist(small):
    fp, _ = small
    fp.apply_runtime(DatapathConfig(flow_table_size=SMALL, full_allowlist=("10.99.0.0/16",)))
    bulk_establish(fp, CLIENT, SERVER, range(20000, 20000 + SMALL))
    allowed = TcpConn.make(fp, client=("10.99.3.4", 30000), server=SERVER)
    allowed.send(O, "S", R.PASS_TABLE_FULL_ALLOWED)
    assert allowed.entry() is None                         # passed without a session
    to_allowed = TcpConn.make(fp, client=("10.0.0.7", 30000), server=("10.99.0.1", 22))
    to_allowed.send(O, "S", R.PASS_TABLE_FULL_ALLOWED)
    other = TcpConn.make(fp, client=("10.98.3.4", 30000), server=SERVER)
    other.send(O, "S", R.DROP_FLOW_TABLE_FULL)


def test_full_table_failure_action_pass_lets_every_new_flow_through(small):
    """failure_actions.session_table_full: pass is the allow-list for
    everyone: new flows pass sessionless, existing ones keep their state."""
    from datapath.config import FailureActions
    fp, _ = small
    fp.apply_runtime(DatapathConfig(flow_table_size=SMALL,
                                    failure_actions=FailureActions(session_table_full="pass")))
    bulk_establish(fp, CLIENT, SERVER, range(20000, 20000 + SMALL))
    v4 = TcpConn.make(fp, client=("10.98.3.4", 30000), server=SERVER)
    v4.send(O, "S", R.PASS_TABLE_FULL_ALLOWED)
    assert v4.entry() is None
    expect(fp, udp_frame("10.97.0.1", 30001, SERVER[0], 53), R.PASS_TABLE_FULL_ALLOWED)


def test_full_table_allowlisted_flows_work_without_session(small):
    """"Allow-listed without a session" must carry the whole flow, not only
    its first packet: the answer and everything after it find no session
    either, and pass for the same reason."""
    fp, _ = small
    fp.apply_runtime(DatapathConfig(flow_table_size=SMALL, full_allowlist=("10.99.0.0/16",)))
    bulk_establish(fp, CLIENT, SERVER, range(20000, 20000 + SMALL))
    ok = R.PASS_TABLE_FULL_ALLOWED
    conn = TcpConn.make(fp, client=("10.99.3.4", 30000), server=SERVER)
    conn.send(O, "S", ok)
    conn.send(RD, "SA", ok)
    conn.send(O, "A", ok)
    conn.send(O, "PA", ok, data=b"GET /")
    conn.send(RD, "PA", ok, data=b"200 OK")
    conn.send(O, "FA", ok)
    assert conn.entry() is None
    expect(fp, udp_frame("10.99.3.4", 5000, SERVER[0], 53), ok)
    expect(fp, udp_frame(SERVER[0], 53, "10.99.3.4", 5000), ok)
    expect(fp, echo("v4", "10.99.3.4", SERVER[0], 5), ok)
    expect(fp, echo("v4", SERVER[0], "10.99.3.4", 5, reply=True), ok)
    assert table_len(fp, HALFOPEN) == 0
    # not allow-listed: refused at the first packet, and a stray answer too
    other = TcpConn.make(fp, client=("10.98.3.4", 30000), server=SERVER)
    other.send(O, "S", R.DROP_FLOW_TABLE_FULL)
    other.send(RD, "SA", R.DROP_TCP_NO_SESSION)
    expect(fp, echo("v4", SERVER[0], "10.98.3.4", 5, reply=True), R.DROP_ICMP_ECHO_UNMATCHED)


def test_handshake_completing_into_full_table(small):
    fp, _ = small
    pending = TcpConn.make(fp, client=(CLIENT, 30500), server=SERVER)
    pending.send(O, "S")
    pending.send(RD, "SA")
    bulk_establish(fp, CLIENT, SERVER, range(20000, 20000 + SMALL))
    pending.send(O, "A", R.DROP_FLOW_TABLE_FULL)
    assert pending.entry() is None
    pr = fp.table("ms_pressure")[ctypes.c_int(0)]
    assert (pr.inserted, pr.insert_failed) == (SMALL, 1)


def test_pressure_alert_once_per_crossing(small):
    fp, events = small
    fp.apply_runtime(DatapathConfig(flow_table_size=SMALL, pressure_pct=50))
    half = SMALL // 2
    bulk_establish(fp, CLIENT, SERVER, range(20000, 20000 + half - 1))
    assert events.take() == []
    pr = fp.table("ms_pressure")[ctypes.c_int(0)]
    assert (pr.inserted, pr.alerts) == (half - 1, 0)
    bulk_establish(fp, CLIENT, SERVER, [20000 + half - 1])   # 512 of 1024: 50 %
    got = events.take()
    assert got == [(1, 50, half, SMALL)]                   # EVENT_TABLE_PRESSURE
    bulk_establish(fp, CLIENT, SERVER, range(21000, 21100))  # still above: nothing more
    assert events.take() == []
    assert fp.table("ms_pressure")[ctypes.c_int(0)].alerts == 1
    # user space re-arms (bumps the generation); usage is still above
    pu_t = fp.table("ms_pressure_user")
    pu = pu_t[ctypes.c_int(0)]
    pu.gen += 1
    pu_t[ctypes.c_int(0)] = pu
    assert events.take() == []                             # re-arming alone sends nothing
    bulk_establish(fp, CLIENT, SERVER, [22000])
    got = events.take()
    entries = half + 100 + 1
    assert got == [(1, entries * 100 // SMALL, entries, SMALL)]
    bulk_establish(fp, CLIENT, SERVER, [22001, 22002])
    assert events.take() == []
    pr = fp.table("ms_pressure")[ctypes.c_int(0)]
    assert (pr.inserted, pr.alerts) == (entries + 2, 2)


# ==========================================================================
# 8. Tail calls
# ==========================================================================

@pytest.mark.parametrize("action,reason", [("drop", R.DROP_TAIL_CALL_MISSED),
                                           ("pass", R.PASS_TAIL_CALL_MISSED)])
def test_missing_stage_is_counted(fastpath, action, reason):
    fastpath.apply_runtime(DatapathConfig(tailcall_action=action))
    stages = fastpath.table("ms_stages")
    del stages[ctypes.c_int(int(Stage.STAGE_TCP))]
    try:
        conn = TcpConn.make(fastpath)
        conn.send(O, "S", reason)
        assert conn.entry() is None
        # the other stages are unaffected
        expect(fastpath, udp_frame(V4[0], 5000, V4[1], 53), R.PASS_FORWARD)
    finally:
        stages[ctypes.c_int(int(Stage.STAGE_TCP))] = ctypes.c_int(fastpath.stage_fns[Stage.STAGE_TCP].fd)
    TcpConn.make(fastpath, client=("10.0.0.1", 45000)).handshake()


@pytest.mark.parametrize("opts, want", [
    # NOP, NOP, window scale 7: found
    (b"\x01\x01\x03\x03\x07\x00\x00\x00", 7),
    # a SACK option whose length runs past the options: no window scale,
    # not the bytes after it read again (an index that wrapped would find
    # the "03 03 0e" below and take 14)
    (b"\x05\x42\x03\x03\x0e\x00\x00\x00", None),
    # malformed length 1: stop
    (b"\x02\x01\x03\x03\x07\x00\x00\x00", None),
])
def test_syn_window_scale_option_walk(fastpath, opts, want):
    cli, srv = V4
    syn = IP(src=cli, dst=srv) / TCP(sport=40100, dport=80, flags="S", seq=1000,
                                     options=[("NOP", None)] * 8)
    raw = bytearray(bytes(ether() / syn))
    tcp_off = 14 + 20
    raw[tcp_off + 20: tcp_off + 28] = opts
    expect(fastpath, bytes(raw), R.PASS_FORWARD)
    e = entry(fastpath, cli, 40100, srv, 80, IPPROTO_TCP)
    has_ws = bool(e.leaf.tcp[0].flags & 0x02)   # MS_SIDE_WSCALE
    assert has_ws == (want is not None)
    if want is not None:
        assert e.leaf.tcp[0].wscale == want


# The walk's answers, as a walk that loads three bytes of the packet at each
# option gives them ("none": no window scale, "unknown": not found within
# MS_TCP_MAX_OPTS options, so the flow's window is not checked).
SACKP, MSS4 = b"\x04\x02", b"\x02\x04\x05\xb4"
WALK_CASES = [
    # Linux's SYN: MSS, SACK_PERM, TS, NOP, WS 7
    (SACKP.join([MSS4, b"\x08\x0a" + bytes(8)]) + b"\x01\x03\x03\x07", b"", 7),
    # the window scale in the options' last three bytes; a shift above 14 means 14
    (b"\x01\x03\x03\x09", b"", 9),
    (b"\x01\x03\x03\x1e", b"", 14),
    # found as the tenth option; as the eleventh it is not walked to
    (b"\x01" * 9 + b"\x03\x03\x05" + b"\x00" * 4, b"", 5),
    (b"\x01" * 10 + b"\x03\x03\x05" + b"\x00" * 3, b"", "unknown"),
    # forty NOPs: the walk stops after ten, not knowing
    (b"\x01" * 40, b"", "unknown"),
    # end of options list before the window scale
    (b"\x01\x00\x03\x03\x07\x00\x00\x00", b"", "none"),
    # eight options, then two NOPs at the end of a packet without payload:
    # fewer than three bytes left, none; with payload behind them the walk
    # runs out of options first: unknown
    (SACKP * 7 + MSS4 + b"\x01\x01", b"", "none"),
    (SACKP * 7 + MSS4 + b"\x01\x01", b"xyz", "unknown"),
    # a kind at the options' last byte, its "length" in the payload
    (b"\x01\x01\x01\x05", b"\x03\x03\x07", "none"),
    (b"\x01\x01\x01\x03", b"\x03\x07", "none"),
]


@pytest.mark.parametrize("opts, payload, want", WALK_CASES)
def test_syn_window_scale_walk_edges(fastpath, opts, payload, want):
    assert len(opts) % 4 == 0 and len(opts) <= 40
    cli, srv = V4
    syn = IP(src=cli, dst=srv) / TCP(sport=40101, dport=80, flags="S", seq=1000,
                                     options=[("NOP", None)] * len(opts))
    if payload:
        syn = syn / Raw(payload)
    raw = bytearray(bytes(ether() / syn))
    tcp_off = 14 + 20
    raw[tcp_off + 20: tcp_off + 20 + len(opts)] = opts
    expect(fastpath, bytes(raw), R.PASS_FORWARD)
    e = entry(fastpath, cli, 40101, srv, 80, IPPROTO_TCP)
    has_ws = bool(e.leaf.tcp[0].flags & 0x02)       # MS_SIDE_WSCALE
    liberal = bool(e.leaf.flags & 0x02)             # MS_FLOW_LIBERAL
    got = e.leaf.tcp[0].wscale if has_ws else ("unknown" if liberal else "none")
    assert got == want


def test_halfopen_evictions_can_be_told(fastpath):
    """The kernel counts half-open inserts and its own removals, so user
    space can tell LRU evictions (inserted - removed - swept - present)."""
    fastpath.apply_runtime(DatapathConfig(syn_dst_rate=0, syn_global_rate=0))
    cli, srv = V4
    conn = TcpConn.make(fastpath, client=(cli, 40200), server=(srv, 80))
    conn.handshake()                      # 1 insert, 1 removal (promoted)
    syn = bytes(ether() / IP(src=cli, dst=srv) / TCP(sport=50000, dport=80, flags="S", seq=7))
    runner = PatchedRunner(fastpath.prog_fd(ING), syn)
    # More than the whole table holds (65,536 entries over the CPUs' LRU
    # lists): the LRU must evict, on whichever CPUs the scheduler runs the
    # test (a busy machine moves it between them mid-loop).
    n = 70000
    for i in range(n):                    # n inserts, no removals
        runner.view[OFF_SPORT:OFF_SPORT + 2] = (1024 + i % 60000).to_bytes(2, "big")
        runner.view[OFF_IP_SRC + 3] = i // 60000
        assert runner.run() == TC_ACT_OK
    t = fastpath.table("ms_pressure")
    pr = t[t.Key(0)]
    present = table_len(fastpath, "ms_halfopen")
    assert pr.halfopen_inserted == n + 1
    assert pr.halfopen_removed == 1
    evicted = pr.halfopen_inserted - pr.halfopen_removed - present
    assert evicted == n - present
    assert evicted > 0 and present < n
