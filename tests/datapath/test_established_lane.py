"""The established lane (bpf/lib/conntrack.h ms_ct_tcp_lane): the entry
program decides the common segment of an established session itself, and
hands every other packet to the TCP stage.

With the TCP stage taken out of ms_stages, whatever reaches the stage is
counted as DROP_TAIL_CALL_MISSED: a packet the lane decided passes, one
it handed over is dropped so. That tells, packet by packet, which of the
two decided, and shows that every check the lane does not make itself
(out-of-window segments, FIN / RST / SYN, a changed policy generation, an
expired or blocked session, a first payload or an inspection hand-off,
the handshake's last ACK) still goes to the stage.
"""
from __future__ import annotations

import ctypes
import time

import pytest

from datapath.config import Timeouts
from datapath.enums import CtState, EventType, InspState, Reason, Stage
from datapath.flowevents import FlowEventDecoder, event_type, flow_event_type
from datapath.policy_tables import POL
from datapath.sessions import CLOCK_MONOTONIC_COARSE, FLOW_FLAGS, session_clock_ns
from slowpath.ringbuf import RingBuffer

from packets_ct import (APP_CLIENT, APP_SERVER, CLIENT_HELLO, FLOWS, IPPROTO_TCP, IPPROTO_UDP, SERVER_HELLO, TcpConn,
                        entry, expect, flow_key, session_map, udp_frame)

S = CtState
R = Reason
O, RD = "c", "s"
MISSED = R.DROP_TAIL_CALL_MISSED
FAMILIES = {"v4": (("10.0.0.1", 40000), ("10.0.0.2", 80)),
            "v6": (("2001:db8::1", 40000), ("2001:db8::2", 80))}


class NoTcpStage:
    """ms_stages without the TCP stage, put back on leaving."""

    def __init__(self, fp):
        self.fp = fp
        self.stages = fp.table("ms_stages")
        self.slot = ctypes.c_int(int(Stage.STAGE_TCP))

    def __enter__(self):
        del self.stages[self.slot]
        return self

    def __exit__(self, *exc):
        self.stages[self.slot] = ctypes.c_int(self.fp.stage_fns[Stage.STAGE_TCP].fd)


def established(fp, family, port=40000) -> TcpConn:
    """A session past its handshake whose two sides' first payloads went
    through the payload stage."""
    (cli, _), srv = FAMILIES[family]
    conn = TcpConn.make(fp, client=(cli, port), server=srv).handshake()
    conn.send(O, "PA", data=b"GET / HTTP/1.1\r\n\r\n")
    conn.send(RD, "PA", data=b"HTTP/1.1 200 OK\r\n\r\n")
    conn.send(O, "A")
    return conn


def set_leaf(conn: TcpConn, **fields) -> None:
    t = conn.fp.table(session_map(FLOWS, conn.c.addr, conn.s.addr))
    k = flow_key(t, conn.c.addr, conn.c.port, conn.s.addr, conn.s.port, IPPROTO_TCP)
    v = t[k]
    for name, val in fields.items():
        setattr(v, name, val)
    t[k] = v


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_established_segments_are_decided_without_the_tcp_stage(fastpath, family):
    conn = established(fastpath, family)
    before = conn.entry().leaf
    with NoTcpStage(fastpath):
        conn.send(O, "A")
        conn.send(RD, "PA", data=b"more")                  # a later payload: tracking only
        conn.send(O, "A")
        conn.send(O, "PA", data=b"x" * 1000)
    after = conn.assert_state(S.CT_ESTABLISHED).leaf
    # accounted and the window advanced, as the stage would have
    assert (after.packets[0] - before.packets[0], after.packets[1] - before.packets[1]) == (3, 1)
    assert after.last_seen_ns >= before.last_seen_ns
    assert after.tcp[0].end == before.tcp[0].end + 1000
    assert after.tcp[1].end == before.tcp[1].end + 4
    assert after.tcp[0].maxack == before.tcp[0].maxack + 4


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_what_the_lane_hands_to_the_tcp_stage(fastpath, family):
    conn = established(fastpath, family)
    with NoTcpStage(fastpath):
        before = conn.entry().raw
        # window tracking: each of the four bounds
        conn.send(O, "PA", MISSED, seq=conn.c.nxt + 10_000_000, data=b"x")
        conn.send(O, "A", MISSED, seq=conn.c.nxt - 3_000_000)
        conn.send(O, "A", MISSED, ack=conn.s.nxt + 5000)
        conn.send(O, "A", MISSED, ack=conn.s.nxt - 200_000)
        # RST (RFC 5961: exact or challenged), FIN, SYN (RFC 5961 4), no ACK;
        # the IPv4 lane closes on an exact RST and on a FIN with ACK
        # (test_the_ipv4_lane_closes), not on a challenged RST or a bare FIN
        if family == "v6":
            conn.send(O, "R", MISSED)
            conn.send(O, "FA", MISSED)
        conn.send(O, "RA", MISSED, seq=conn.c.nxt + 10)
        conn.send(O, "F", MISSED)
        conn.send(O, "S", MISSED)
        conn.send(O, "SA", MISSED)
        conn.send(O, "P", MISSED, data=b"x")
        # nothing above changed the session
        assert conn.entry().raw == before
    # then the lane's own checks, each on a session the lane would take
    cases = {
        "policy generation": dict(pol_gen=7),
        "blocked by the slow path": dict(insp_state=int(InspState.INSP_BLOCKED)),
        # idle one minute past ESTABLISHED's timeout, by the session clock:
        # not last_seen_ns=1, which is expired only on a machine up longer
        # than that timeout (an hour; a fresh CI machine is not). A stamp
        # "before boot" wraps, as the kernel's signed difference expects.
        "expired": dict(last_seen_ns=(session_clock_ns() - (int(Timeouts().established) + 60) * 10**9) % 2**64),
    }
    for what, fields in cases.items():
        c = established(fastpath, family, port=41000 + len(what))
        set_leaf(c, **fields)
        with NoTcpStage(fastpath):
            c.send(O, "A", MISSED)
    # an inspected flow: its payload goes to the hand-off, a bare ACK does not
    c = established(fastpath, family, port=42000)
    set_leaf(c, action=POL["POL_INSPECT"], insp_state=int(InspState.INSP_PENDING))
    with NoTcpStage(fastpath):
        c.send(O, "A")
        c.send(O, "PA", MISSED, data=b"y")
    # a side's first payload: the IPv4 lane checks it itself (below,
    # test_a_first_payload_is_decided_by_the_ipv4_lane); a frame of another
    # shape (here IPv6) goes to the TCP stage for it
    c = TcpConn.make(fastpath, client=(FAMILIES[family][0][0], 42001), server=FAMILIES[family][1]).handshake()
    with NoTcpStage(fastpath):
        c.send(O, "A")
        c.send(O, "PA", R.PASS_FORWARD if family == "v4" else MISSED, data=b"first")
    # the handshake's last ACK (SYN_RECV, in ms_halfopen): the IPv4 lane
    # moves it into ms_flows itself (below, test_the_ipv4_lane_ends_a_handshake)
    c = TcpConn.make(fastpath, client=(FAMILIES[family][0][0], 42002), server=FAMILIES[family][1])
    c.send(O, "S")
    c.send(RD, "SA")
    with NoTcpStage(fastpath):
        c.send(O, "A", R.PASS_FORWARD if family == "v4" else MISSED)
    c.assert_state(S.CT_ESTABLISHED if family == "v4" else S.CT_SYN_RECV)


ETH_LEN = 14          # untagged Ethernet header
IP4_LEN = 20          # IPv4 header without options


def _ip4_tot(frame: bytes, tot: int) -> bytes:
    return frame[:ETH_LEN + 2] + tot.to_bytes(2, "big") + frame[ETH_LEN + 4:]


def _tcp_doff(frame: bytes, words: int) -> bytes:
    at = ETH_LEN + IP4_LEN + 12
    return frame[:at] + bytes([words << 4 | frame[at] & 0xf]) + frame[at + 1:]


def _ip4_byte0(frame: bytes, b: int) -> bytes:
    return frame[:ETH_LEN] + bytes([b]) + frame[ETH_LEN + 1:]


def test_a_malformed_segment_of_an_established_session_gets_the_parsers_reason(fastpath):
    """The IPv4 lane parses the common frame itself (parse.h ms_parse_tcp4)
    before ms_parse: on a session it would take, every header check of
    ms_parse must still refuse what it refuses, with its reason. (Without
    a session the lane misses and ms_parse gives the reason anyway.)"""
    conn = established(fastpath, "v4")
    ack = conn.frame(O, "A")
    tot = len(ack) - ETH_LEN
    before = conn.entry()
    bad = {
        "total length past the packet": (_ip4_tot(ack, tot + 1), R.DROP_IPV4_TRUNCATED),
        "total length below the TCP header": (_ip4_tot(ack, IP4_LEN + 19), R.DROP_TCP_TRUNCATED),
        "total length below the IP header": (_ip4_tot(ack, IP4_LEN - 1), R.DROP_IPV4_BAD_HEADER),
        "data offset past the segment": (_tcp_doff(ack, 15), R.DROP_TCP_BAD_DOFF),
        "data offset below the header": (_tcp_doff(ack, 4), R.DROP_TCP_BAD_DOFF),
        "IP header length below 5": (_ip4_byte0(ack, 0x44), R.DROP_IPV4_BAD_HEADER),
        "IP version not 4": (_ip4_byte0(ack, 0x65), R.DROP_IPV4_BAD_HEADER),
        "truncated TCP header": (ack[:ETH_LEN + IP4_LEN + 19], R.DROP_IPV4_TRUNCATED),
    }
    for what, (frame, reason) in bad.items():
        expect(fastpath, frame, reason)
    assert conn.entry().raw == before.raw, "a malformed segment changed the session"
    # frames of other shapes go through ms_parse to the lane: still decided
    # there (IP options, an 802.1Q tag), as the untouched segment is
    opt = ack[:ETH_LEN] + bytes([0x46]) + ack[ETH_LEN + 1:ETH_LEN + IP4_LEN] + b"\x01\x01\x01\x00" + \
        ack[ETH_LEN + IP4_LEN:]
    opt = _ip4_tot(opt, tot + 4)
    tagged = ack[:12] + b"\x81\x00\x00\x05" + ack[12:]
    with NoTcpStage(fastpath):
        for frame in (opt, tagged, ack):
            expect(fastpath, frame, R.PASS_FORWARD)
    assert conn.entry().leaf.packets[0] == before.leaf.packets[0] + 3


def test_a_closing_session_goes_to_the_tcp_stage(fastpath):
    conn = established(fastpath, "v4")
    conn.send(O, "FA")
    conn.assert_state(S.CT_FIN_WAIT1)
    with NoTcpStage(fastpath):
        conn.send(RD, "A", MISSED)
    conn.send(RD, "A")
    conn.assert_state(S.CT_FIN_WAIT2)


# The session clock's resolution: one tick (CLOCK_MONOTONIC_COARSE).
TICK_NS = time.clock_getres(CLOCK_MONOTONIC_COARSE) * 1e9
TICKS_TO_WAIT = 3          # the clock must move this many ticks past the lane's last reading
CLOCK_WAIT_S = 5.0         # bound on that wait: a few ticks, with a busy machine's room


def wait_clock_past(t_ns: float) -> None:
    deadline = time.monotonic() + CLOCK_WAIT_S
    while session_clock_ns() <= t_ns:
        assert time.monotonic() < deadline, "CLOCK_MONOTONIC_COARSE did not move"
        time.sleep(TICK_NS / 1e9)


def test_the_lane_stamps_the_session_clock(fastpath):
    """The lane and the stages read the clock only when jiffies moved
    (conntrack.h ms_pkt_now): a session's last_seen must still be the session clock
    (CLOCK_MONOTONIC_COARSE, which the sweeper compares against) to a tick,
    however long this CPU's last reading is past, and expiry must follow it."""
    conn = established(fastpath, "v4")          # its last ACK went through the lane: a reading kept
    for _ in range(3):
        wait_clock_past(conn.entry().leaf.last_seen_ns + TICKS_TO_WAIT * TICK_NS)
        lo = session_clock_ns()
        with NoTcpStage(fastpath):
            conn.send(O, "A")
        hi = session_clock_ns()
        seen = conn.entry().leaf.last_seen_ns
        assert lo - TICK_NS <= seen <= hi, (lo, seen, hi)
    # the tracking stages read the same clock the same way (a UDP flow's
    # packets go through ms_stage_other)
    expect(fastpath, udp_frame("10.0.0.1", 5353, "10.0.0.2", 53), R.PASS_FORWARD)
    for _ in range(2):
        udp = entry(fastpath, "10.0.0.1", 5353, "10.0.0.2", 53, IPPROTO_UDP)
        wait_clock_past(udp.leaf.last_seen_ns + TICKS_TO_WAIT * TICK_NS)
        lo = session_clock_ns()
        expect(fastpath, udp_frame("10.0.0.1", 5353, "10.0.0.2", 53), R.PASS_FORWARD)
        hi = session_clock_ns()
        seen = entry(fastpath, "10.0.0.1", 5353, "10.0.0.2", 53, IPPROTO_UDP).leaf.last_seen_ns
        assert lo - TICK_NS <= seen <= hi, (lo, seen, hi)
    # expiry on the same clock: just past the timeout, the lane hands the
    # segment over (the stage removes the session); a second inside, it keeps it
    timeout = fastpath.table("ms_timeouts")[ctypes.c_int(int(S.CT_ESTABLISHED))].value
    fresh = established(fastpath, "v4", port=43000)
    stale = established(fastpath, "v4", port=43001)
    set_leaf(fresh, last_seen_ns=session_clock_ns() - timeout + min(timeout // 2, 60_000_000_000))
    set_leaf(stale, last_seen_ns=session_clock_ns() - timeout - 2 * int(TICK_NS))
    with NoTcpStage(fastpath):
        fresh.send(O, "A")
        stale.send(O, "A", MISSED)


# A side's first payload on the IPv4 lane (fastpath.c ms_lane_first_payload,
# l7.h ms_l7_lane): its application check in the entry program, on the
# session the lane found, instead of in the TCP stage after a tail call;
# the rules with an `app` are packets_ct.APP_POLICY (fixture app_policy).

HTTP_GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
MYSQL_GREETING = bytes.fromhex("4a0000000a") + b"8.0.35\0" + bytes(20)
SSH_BANNER = b"SSH-2.0-OpenSSH_9.2\r\n"
PASS, MISMATCH = R.PASS_FORWARD, R.DROP_L7_APP_MISMATCH
# Conversations after the handshake: (server port, [(sender, flags, payload, reason)]).
CONVERSATIONS = {
    "identified, no requirement": (8080, [(O, "PA", HTTP_GET, PASS), (RD, "PA", b"HTTP/1.1 200 OK\r\n\r\n", PASS),
                                          (O, "PA", b"more", PASS), (RD, "A", b"", PASS)]),
    "the required protocol": (443, [(O, "PA", CLIENT_HELLO, PASS), (RD, "PA", SERVER_HELLO, PASS),
                                    (O, "PA", b"\x17\x03\x03", PASS)]),
    "another protocol on a required port": (443, [(O, "PA", HTTP_GET, MISMATCH)]),
    "nothing where the required protocol shows": (443, [(O, "PA", b"\0\0\0\0 not tls", MISMATCH)]),
    "server-first protocol, client first": (3306, [(O, "PA", b"hello?", PASS), (RD, "PA", MYSQL_GREETING, PASS)]),
    "server-first protocol, another greeting": (3306, [(RD, "PA", SSH_BANNER, MISMATCH)]),
    "out of window": (8080, [(O, "PA", HTTP_GET, R.DROP_TCP_OUT_OF_WINDOW)]),
}
VLAN_TAG = b"\x81\x00\x00\x05"   # 802.1Q, VLAN 5: not the IPv4 lane's frame (ms_parse_tcp4)


class Tagged(TcpConn):
    """A conversation whose frames carry an 802.1Q tag: they miss the IPv4
    lane, and the generic lane leaves a side's first payload to the TCP
    stage, so these go the stage's way (ms_stage_tcp, ms_l7_check)."""

    def frame(self, *args, **kw) -> bytes:
        f = super().frame(*args, **kw)
        return f[:12] + VLAN_TAG + f[12:]


def converse(fp, cls, port: int, sport: int, steps) -> TcpConn:
    conn = cls.make(fp, client=(APP_CLIENT, sport), server=(APP_SERVER, port))
    conn.send(O, "S", R.PASS_POLICY_ALLOW)
    conn.send(RD, "SA")
    conn.send(O, "A")
    for frm, flags, data, reason in steps:
        seq = conn.sides(frm)[0].nxt + (10_000_000 if reason == R.DROP_TCP_OUT_OF_WINDOW else 0)
        conn.send(frm, flags, reason, seq=seq, data=data)
    return conn


def pressure(fp) -> list[int]:
    """ms_pressure's session and half-open counts."""
    v = fp.table("ms_pressure")[ctypes.c_int(0)]
    return [v.inserted, v.deleted, v.insert_failed, v.halfopen_inserted, v.halfopen_removed]


def comparable(conn: TcpConn, tag_bytes: int):
    """A session's fields, less its instance (cookie, times) and the tag's
    bytes in its byte counts."""
    e = conn.entry()
    if e is None:
        return None
    v = e.leaf
    fields = {name: getattr(v, name) for name in ("state", "initiator_is_hi", "flags", "action", "inspect",
                                                  "app_req", "app", "l7_seen", "pol_gen", "rule_id", "insp_state")}
    fields["packets"] = list(v.packets)
    fields["bytes"] = [v.bytes[i] - tag_bytes * v.packets[i] for i in range(2)]
    fields["tcp"] = [bytes(v.tcp[i]) for i in range(2)]
    fields["insp_sent"] = list(v.insp_sent)
    return e.table, fields


@pytest.mark.parametrize("what", sorted(CONVERSATIONS))
def test_the_ipv4_lane_decides_a_first_payload_as_the_tcp_stage_does(app_policy, what):
    """Each conversation twice: as plain IPv4 frames (the lane ends the
    handshake and checks each side's first payload) and VLAN-tagged (the
    TCP stage does): every packet gets the same reason (expect: that one
    counter, once), the sessions end the same (identified protocol, sides
    seen, windows, counts; or removed on a mismatch, with one end record
    each), and the table counts (ms_pressure) moved the same."""
    port, steps = CONVERSATIONS[what]
    ring = RingBuffer(app_policy.table("ms_events").map_fd)
    try:
        ends, counts = [], []
        for cls, sport in ((TcpConn, 40000), (Tagged, 41000)):
            ring.drain()   # what earlier tests left
            before = pressure(app_policy)
            conn = converse(app_policy, cls, port, sport, steps)
            ends.append(sum(event_type(r) == EventType.EVENT_FLOW_END for r in ring.drain()))
            counts.append([a - b for a, b in zip(pressure(app_policy), before)])
            if cls is TcpConn:
                lane = conn
        assert comparable(lane, 0) == comparable(conn, len(VLAN_TAG))
        assert counts[0] == counts[1]
        removed = any(r == MISMATCH for *_, r in steps)
        assert (lane.entry() is None) == removed
        assert ends == [int(removed)] * 2
    finally:
        ring.close()


def test_a_first_payload_is_decided_by_the_ipv4_lane(app_policy):
    """With the TCP stage taken out, a side's first payload the lane checks
    passes (it never reached the stage) and is recorded on the session; one
    the rule's `app` refuses goes to the stage, the session untouched."""
    ok = converse(app_policy, TcpConn, 443, 40100, [])
    bad = converse(app_policy, TcpConn, 443, 40101, [])
    before = bad.entry().raw
    with NoTcpStage(app_policy):
        ok.send(O, "PA", data=CLIENT_HELLO)
        ok.send(RD, "PA", data=SERVER_HELLO)
        bad.send(O, "PA", MISSED, data=HTTP_GET)
    e = ok.entry().leaf
    assert (e.app, e.l7_seen) == (app_policy.l7.ids["tls"], 0b11)
    assert bad.entry().raw == before
    # with the stage back, the same payload is dropped there and the session goes
    bad.send(O, "PA", MISMATCH, data=HTTP_GET)
    assert bad.entry() is None


def handshake_to_last_ack(fp, cls, sport: int, **make) -> TcpConn:
    conn = cls.make(fp, client=("10.0.0.1", sport), server=("10.0.0.2", 80), **make)
    conn.send(O, "S")
    conn.send(RD, "SA")
    return conn


# What a handshake's last ACK may meet, each with its reason: (leaf fields
# set on the half-open session first, the ACK's send() arguments).
LAST_ACKS = {
    "in window": ({}, dict(flags="A")),
    "acking more than was sent": ({}, dict(flags="A", reason=R.DROP_TCP_OUT_OF_WINDOW, ack_delta=5000)),
    "an older policy generation": (dict(pol_gen=7), dict(flags="A")),
    "blocked by the slow path": (dict(insp_state=int(InspState.INSP_BLOCKED)), dict(flags="A", reason=R.DROP_INSPECT_BLOCKED)),
    "liberal, out of window": (dict(flags=FLOW_FLAGS["LIBERAL"]), dict(flags="A", ack_delta=5000)),
    "with a payload": ({}, dict(flags="PA", data=b"GET / HTTP/1.1\r\n\r\n")),
    "the responder's": ({}, dict(flags="A", frm=RD)),
}


@pytest.mark.parametrize("what", sorted(LAST_ACKS))
def test_the_ipv4_lane_ends_a_handshake_as_the_tcp_stage_does(fastpath, what):
    """A handshake's last ACK (and what comes instead of it) as plain IPv4
    frames (the lane moves the session into ms_flows itself when it may)
    and VLAN-tagged (the TCP stage does): the same reason, the same
    session in the same table, the same table counts."""
    fields, kw = LAST_ACKS[what]
    frm, reason, delta = kw.get("frm", O), kw.get("reason", R.PASS_FORWARD), kw.get("ack_delta", 0)
    got = []
    for cls, sport in ((TcpConn, 40000), (Tagged, 41000)):
        conn = handshake_to_last_ack(fastpath, cls, sport)
        if fields:
            t = fastpath.table(session_map("ms_halfopen", conn.c.addr, conn.s.addr))
            k = flow_key(t, conn.c.addr, conn.c.port, conn.s.addr, conn.s.port, IPPROTO_TCP)
            v = t[k]
            for name, val in fields.items():
                setattr(v, name, val)
            t[k] = v
        before = pressure(fastpath)
        peer = conn.sides(frm)[1]
        conn.send(frm, kw["flags"], reason, ack=peer.nxt + delta, data=kw.get("data", b""))
        e = conn.entry()
        got.append((e.table, comparable(conn, len(VLAN_TAG) if cls is Tagged else 0),
                    [a - b for a, b in zip(pressure(fastpath), before)]))
    assert got[0] == got[1]


def test_the_ipv4_lane_ends_a_handshake(fastpath):
    """With the TCP stage taken out, the handshake's last ACK passes (the
    lane decided it) and its session is ESTABLISHED in ms_flows, counted
    once as promoted; a last ACK the lane leaves (out of window) and a
    segment with no session at all reach the stage."""
    conn = handshake_to_last_ack(fastpath, TcpConn, 40000)
    late = handshake_to_last_ack(fastpath, TcpConn, 40001)
    before = pressure(fastpath)
    with NoTcpStage(fastpath):
        conn.send(O, "A")
        late.send(O, "A", MISSED, ack=late.s.nxt + 5000)
        TcpConn.make(fastpath, client=("10.0.0.1", 40002)).send(O, "A", MISSED)
    conn.assert_state(S.CT_ESTABLISHED)
    late.assert_state(S.CT_SYN_RECV)
    inserted, deleted, failed, ho_in, ho_out = (a - b for a, b in zip(pressure(fastpath), before))
    assert (inserted, deleted, failed, ho_in, ho_out) == (1, 0, 0, 0, 1)
    # the lane's segment was accounted and advanced the window, as the stage does
    e = conn.entry().leaf
    assert e.packets[0] == 2 and e.tcp[0].maxack == conn.s.nxt


# Closes after an established conversation (both first payloads seen):
# [(sender, flags, payload, reason, extra send() arguments)].
CHALLENGED = R.PASS_TCP_RST_CHALLENGE
CLOSES = {
    "the server's FIN, the client's RST (bench/policy.py's close)": [
        (RD, "FA", b"", PASS, {}), (O, "RA", b"", PASS, {})],
    "both FINs acknowledged": [
        (O, "FA", b"", PASS, {}), (RD, "FA", b"", PASS, {}), (O, "A", b"", PASS, {})],
    "a FIN with the last data": [(O, "FA", b"bye", PASS, {}), (RD, "A", b"", PASS, {})],
    "a RST without ACK": [(RD, "R", b"", PASS, {})],
    "a RST at the receiver's last ACK": [(O, "A", b"", PASS, {}), (RD, "PA", b"data", PASS, {}),
                                         (RD, "RA", b"", PASS, {"seq_delta": -4})],
    "a RST in the window, not where expected": [(O, "RA", b"", CHALLENGED, {"seq_delta": 10})],
    "a FIN past the window": [(O, "FA", b"", R.DROP_TCP_OUT_OF_WINDOW, {"seq_delta": 10_000_000})],
    "a FIN acking unsent data": [(O, "FA", b"", R.DROP_TCP_OUT_OF_WINDOW, {"ack_delta": 5000})],
    "a FIN with a first payload": [(O, "FA", b"GET / HTTP/1.1\r\n\r\n", PASS, {})],
    "a RST after the client's FIN was acknowledged": [
        (O, "FA", b"", PASS, {}), (RD, "A", b"", PASS, {}), (RD, "RA", b"", PASS, {})],
    "a RST after both FINs": [(O, "FA", b"", PASS, {}), (RD, "FA", b"", PASS, {}), (O, "RA", b"", PASS, {})],
    "a RST after the close": [(O, "FA", b"", PASS, {}), (RD, "FA", b"", PASS, {}), (O, "A", b"", PASS, {}),
                              (RD, "R", b"", PASS, {})],
}


def established_conn(fp, cls, sport: int, first_payloads: bool) -> TcpConn:
    conn = cls.make(fp, client=("10.0.0.1", sport), server=("10.0.0.2", 80)).handshake()
    if first_payloads:
        conn.send(O, "PA", data=b"GET / HTTP/1.1\r\n\r\n")
        conn.send(RD, "PA", data=b"HTTP/1.1 200 OK\r\n\r\n")
    return conn


@pytest.mark.parametrize("what", sorted(CLOSES))
def test_the_ipv4_lane_closes_as_the_tcp_stage_does(fastpath, what):
    """Each close as plain IPv4 frames (the lane takes a FIN and a RST that
    ends the session) and VLAN-tagged (the TCP stage does): the same reason
    for every segment, the same session after it (state, windows, counts),
    the same table counts, and the same end records (one per session,
    closed by its last segment), each naming its own connection."""
    steps = CLOSES[what]
    decoder = FlowEventDecoder(flow_event_type(fastpath))
    ring = RingBuffer(fastpath.table("ms_events").map_fd)
    got = []
    try:
        for cls, sport, tag in ((TcpConn, 40000, 0), (Tagged, 41000, len(VLAN_TAG))):
            conn = established_conn(fastpath, cls, sport, first_payloads="first payload" not in what)
            ring.drain()
            before = pressure(fastpath)
            for frm, flags, data, reason, kw in steps:
                me, peer = conn.sides(frm)
                conn.send(frm, flags, reason, data=data, seq=me.nxt + kw.get("seq_delta", 0),
                          ack=peer.nxt + kw.get("ack_delta", 0) if "A" in flags else None)
            ends = [decoder.decode(r) for r in ring.drain() if event_type(r) == EventType.EVENT_FLOW_END]
            assert all(e.client == (conn.c.addr, conn.c.port) for e in ends)
            records = [(e.reason, e.state, e.server, e.packets,
                        tuple(b - tag * n for b, n in zip(e.bytes, e.packets)), e.flags, e.app)
                       for e in ends]
            got.append((comparable(conn, tag), [a - b for a, b in zip(pressure(fastpath), before)], records))
    finally:
        ring.close()
    assert got[0] == got[1]


def test_the_ipv4_lane_closes(fastpath):
    """With the TCP stage taken out, the FIN and the RST of a close pass
    (the lane decided them), the session is CLOSE with its end record
    sent; a RST the endpoint would challenge, and a FIN carrying a side's
    first payload, reach the stage."""
    conn = established_conn(fastpath, TcpConn, 40000, first_payloads=True)
    other = established_conn(fastpath, TcpConn, 40001, first_payloads=False)
    ring = RingBuffer(fastpath.table("ms_events").map_fd)
    try:
        ring.drain()
        with NoTcpStage(fastpath):
            conn.send(RD, "FA")
            conn.assert_state(S.CT_CLOSE_WAIT)
            conn.send(O, "RA", MISSED, seq=conn.c.nxt + 10)   # challenged: the stage's
            conn.send(O, "RA")
            other.send(O, "FA", MISSED, data=b"first")
        conn.assert_state(S.CT_CLOSE)
        ends = [r for r in ring.drain() if event_type(r) == EventType.EVENT_FLOW_END]
        assert len(ends) == 1 and conn.entry().leaf.flags & FLOW_FLAGS["LOGGED"]
    finally:
        ring.close()
