"""Session-end records (struct ms_flow_event on ms_events): one per session,
at its end, with its counters; never two for one session; a full ring is
counted (ms_events_lost), never silent."""
from __future__ import annotations

import ctypes
import socket
import time

import pytest

from datapath.config import DatapathConfig, Timeouts
from datapath.enums import CtState, EventType, FlowEndReason, Reason
from datapath.flowevents import FlowEnd, FlowEventDecoder, WallClock, event_type, flow_event_type, lost_counts
from datapath.loader import FastPath
from datapath.sessions import layouts_of, list_sessions, session_clock_ns
from datapath.sweeper import Sweeper
from datapath.source import program_text
from packets_ct import IPPROTO_TCP, IPPROTO_UDP, TcpConn, canonical, entry, expect, table_len, udp_frame
from slowpath.ringbuf import RingBuffer

R, S = Reason, CtState
CLI, SRV = "10.0.0.1", "10.0.0.2"
NS = 1_000_000_000
FAR = 30 * 86400 * NS   # past every default timeout


class Events:
    def __init__(self, fp):
        self.fp = fp
        self.rb = RingBuffer(fp.table("ms_events").map_fd)
        self.dec = FlowEventDecoder(flow_event_type(fp))
        self.rb.drain()          # what earlier tests of the shared build left

    def take(self):
        return [self.dec.decode(r) for r in self.rb.drain() if event_type(r) == EventType.EVENT_FLOW_END]


@pytest.fixture
def events(fastpath):
    ev = Events(fastpath)
    yield ev
    ev.rb.close()


def _data_conn(fp, port):
    conn = TcpConn.make(fp, client=(CLI, port)).handshake()
    conn.send("c", "PA", data=b"GET / HTTP/1.0\r\n\r\n")
    conn.send("s", "PA", data=b"HTTP/1.0 200 OK\r\n\r\nhello")
    return conn


def test_record_layout_is_the_kernels(fastpath):
    # one definition: BCC's type of struct ms_flow_event, 120 bytes, type first
    t = flow_event_type(fastpath)
    assert ctypes.sizeof(t) == 120 and t.type.offset == 0 and t.key.offset == 8


def test_tcp_close_sends_one_record_with_the_counters(fastpath, events):
    conn = _data_conn(fastpath, 42001)
    conn.send("c", "FA")
    conn.send("s", "FA")
    assert events.take() == []                       # not before the last packet
    conn.send("c", "A")                              # both FINs acknowledged
    conn.assert_state(S.CT_TIME_WAIT)
    got = events.take()
    assert len(got) == 1
    ev = got[0]
    assert (ev.reason, ev.state, ev.proto) == ("closed", "CT_TIME_WAIT", 6)
    assert ev.client == (CLI, 42001) and ev.server == (SRV, 80)
    # c: SYN, ACK, data, FIN, ACK; s: SYN-ACK, data, FIN
    assert ev.packets == (5, 3)
    e = conn.entry()
    assert ev.bytes == (int(e.leaf.bytes[0]), int(e.leaf.bytes[1])) and ev.bytes[0] > 0 and ev.bytes[1] > 0
    assert ev.cookie == int(e.leaf.cookie) and ev.first_seen_ns <= ev.last_seen_ns
    # the entry stays (TIME_WAIT) and its expiry sends no second record
    r = fastpath.sweep.run(session_clock_ns() + FAR)
    assert r.expired_flows == 1 and conn.entry() is None
    assert events.take() == []


def test_reset_sends_closed(fastpath, events):
    conn = _data_conn(fastpath, 42002)
    conn.send("s", "R", seq=conn.s.nxt)
    got = events.take()
    assert [(g.reason, g.state) for g in got] == [("closed", "CT_CLOSE")]


def test_refused_connection_in_the_lru_sends_closed(fastpath, events):
    conn = TcpConn.make(fastpath, client=(CLI, 42003))
    conn.send("c", "S")
    conn.send("s", "RA", seq=0)
    got = events.take()
    assert [(g.reason, g.packets) for g in got] == [("closed", (1, 1))]


def test_kernel_sweep_sends_swept_for_each_session(fastpath, events):
    conns = [_data_conn(fastpath, 42100 + i) for i in range(3)]
    expect(fastpath, udp_frame(CLI, 7000, SRV, 53), R.PASS_FORWARD)          # half-open
    r = fastpath.sweep.run(session_clock_ns() + FAR)
    assert (r.scanned_flows, r.expired_flows, r.expired_halfopen, r.events_lost) == (3, 3, 1, 0)
    got = events.take()
    assert sorted((g.reason, g.client[1], g.packets) for g in got) == \
        [("swept", 7000, (1, 0))] + [("swept", c.c.port, (3, 2)) for c in conns]
    assert all(g.state == "CT_ESTABLISHED" for g in got if g.proto == 6)
    # IPv4 sessions, walked in ms_flows4 / ms_halfopen4 (16-byte keys): each
    # record names its endpoints by the canonical key, as the lazy expiry's do
    assert all((g.client[0], g.server) == (CLI, (SRV, 53 if g.proto == 17 else 80)) for g in got), got


def _expected_swept_record(rtype, src, sport, dst, dport, proto, leaf) -> bytes:
    """The end record the kernel sweep must write for this session (entry
    ``leaf`` read before the sweep), every byte: the canonical key (IPv4
    addresses IPv4-mapped), each field of the entry, worker 0 (not
    inspected), zero padding."""
    lo, hi, _ = canonical(src, sport, dst, dport)
    ev = rtype()
    ev.type = int(EventType.EVENT_FLOW_END)
    ev.reason = int(FlowEndReason.FLOW_END_SWEPT)
    for f in ("state", "action", "insp_state", "first_seen_ns", "last_seen_ns", "rule_id", "cookie", "pol_gen",
              "inspect", "app", "app_req", "initiator_is_hi", "flags"):
        setattr(ev, f, getattr(leaf, f))
    for i in range(2):
        ev.packets[i], ev.bytes[i] = leaf.packets[i], leaf.bytes[i]
    key = lo[0] + hi[0] + lo[1].to_bytes(2, "big") + hi[1].to_bytes(2, "big") + bytes((proto, 0, 0, 0))
    raw = bytearray(ev)
    raw[rtype.key.offset:rtype.key.offset + rtype.key.size] = key
    return bytes(raw)


def test_kernel_sweep_records_are_their_entries_byte_for_byte(fastpath, events):
    # both families' session and half-open maps: the sweep writes each
    # record's key itself (IPv4 keys widened to the canonical form, IPv6
    # keys copied), in words; a wrong or missing word is a wrong byte here
    v6c, v6s = "fd00::1:2:3:4", "fd00::a:b:c:d"
    sessions = [(CLI, 42201, SRV, 80, IPPROTO_TCP), (v6c, 42202, v6s, 80, IPPROTO_TCP),
                (CLI, 7201, SRV, 53, IPPROTO_UDP), (v6c, 7202, v6s, 53, IPPROTO_UDP)]
    for src, sport, dst, dport, proto in sessions:
        if proto == IPPROTO_TCP:
            _data_conn_between(fastpath, (src, sport), (dst, dport))
        else:
            expect(fastpath, udp_frame(src, sport, dst, dport), R.PASS_FORWARD)    # half-open
    rtype = flow_event_type(fastpath)
    want = {}
    for src, sport, dst, dport, proto in sessions:
        e = entry(fastpath, src, sport, dst, dport, proto)
        assert e is not None
        want[sport] = _expected_swept_record(rtype, src, sport, dst, dport, proto, e.leaf)
    r = fastpath.sweep.run(session_clock_ns() + FAR)
    assert (r.expired_flows, r.expired_halfopen, r.events_lost) == (2, 2, 0)
    raws = [raw for raw in events.rb.drain() if event_type(raw) == EventType.EVENT_FLOW_END]
    got = {}
    for raw in raws:
        ev = events.dec.decode(raw)
        got[ev.client[1]] = raw[:ctypes.sizeof(rtype)]
    assert got.keys() == want.keys()
    for who, raw in got.items():
        assert raw == want[who], (who, raw.hex(), want[who].hex())


def _data_conn_between(fp, client, server):
    conn = TcpConn.make(fp, client=client, server=server).handshake()
    conn.send("c", "PA", data=b"GET / HTTP/1.0\r\n\r\n")
    conn.send("s", "PA", data=b"HTTP/1.0 200 OK\r\n\r\nhello")
    return conn


def _wait_expired(fp, state_timeout_s, last_seen_ns):
    deadline = time.monotonic() + 10
    while session_clock_ns() - last_seen_ns <= state_timeout_s * NS:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_lookup_expiry_sends_timeout(fastpath, events):
    fastpath.apply_runtime(DatapathConfig(timeouts=Timeouts(udp_unreplied=0.05)))
    expect(fastpath, udp_frame(CLI, 7001, SRV, 53), R.PASS_FORWARD)
    e = entry(fastpath, CLI, 7001, SRV, 53, IPPROTO_UDP)
    _wait_expired(fastpath, 0.05, int(e.leaf.last_seen_ns))
    expect(fastpath, udp_frame(CLI, 7001, SRV, 53), R.PASS_FORWARD)          # a new session
    got = events.take()
    assert [(g.reason, g.state, g.packets, g.cookie) for g in got] == \
        [("timeout", "CT_UDP_UNREPLIED", (1, 0), int(e.leaf.cookie))]


# The one-page build's session table: small enough that a few dozen
# sessions cross a pressure threshold of a few percent.
ONE_PAGE_FLOWS = 1024


@pytest.fixture(scope="module")
def one_page():
    """A build whose ms_events ring is one page: 32 records of 128 bytes."""
    fp = FastPath(DatapathConfig(flow_table_size=ONE_PAGE_FLOWS), text="#define MS_EVENTS_PAGES 1\n" + program_text())
    rb = RingBuffer(fp.table("ms_events").map_fd)
    try:
        yield fp, rb, FlowEventDecoder(flow_event_type(fp))
    finally:
        rb.close()
        fp.close()


@pytest.fixture
def small_ring(one_page):
    fp, rb, dec = one_page
    fp.reset()
    rb.drain()
    yield fp, rb, dec
    fp.reset()
    fp.apply_runtime(fp.config)


def _udp_sessions(fp, ports):
    """A request and its reply for each client port: ms_flows entries."""
    for port in ports:
        expect(fp, udp_frame(CLI, port, SRV, 53), R.PASS_FORWARD)
        expect(fp, udp_frame(SRV, 53, CLI, port), R.PASS_FORWARD)


def test_full_ring_is_counted(small_ring):
    fp, rb, dec = small_ring
    for i in range(40):
        expect(fp, udp_frame(CLI, 8000 + i, SRV, 53), R.PASS_FORWARD)
    lost0 = lost_counts(fp)["flow_end"]
    r = fp.sweep.run(session_clock_ns() + FAR)
    assert r.expired_halfopen == 40 and r.deferred == 0
    got = [dec.decode(x) for x in rb.drain()]
    assert len(got) + r.events_lost == 40 and r.events_lost > 0
    assert lost_counts(fp)["flow_end"] - lost0 == r.events_lost


# An end record takes 128 bytes of the ring (the 120-byte record and the
# ring's 8-byte header), and the kernel lets the producer run at most the
# ring's size - 1 bytes ahead of the consumer: an empty page takes 31.
ONE_PAGE_RECORDS = (4096 - 1) // 128


def test_an_empty_ring_takes_every_end_record_it_has_room_for(small_ring):
    # the kernel sweep tests the ring's room before reserving (sweep.h
    # ring_room): it must refuse no record the reserve would have taken
    fp, rb, dec = small_ring
    for i in range(40):
        expect(fp, udp_frame(CLI, 8300 + i, SRV, 53), R.PASS_FORWARD)
    r = fp.sweep.run(session_clock_ns() + FAR)
    got = [dec.decode(x) for x in rb.drain()]
    assert r.expired_halfopen == 40
    assert (len(got), r.events_lost) == (ONE_PAGE_RECORDS, 40 - ONE_PAGE_RECORDS)


def test_full_ring_keeps_the_rest_for_the_next_sweep(small_ring):
    # defer: what the ring cannot take stays, expired, for a later sweep;
    # each sweep after a drain logs and deletes another ring's worth, and
    # in the end every session has exactly one record and none is lost.
    fp, rb, dec = small_ring
    lost0 = lost_counts(fp)["flow_end"]
    ports = range(8100, 8200)
    _udp_sessions(fp, ports)
    now = session_clock_ns() + FAR
    seen, runs = [], 0
    while True:
        r = fp.sweep.run(now, defer=True)
        got = [dec.decode(x) for x in rb.drain()]
        runs += 1
        assert r.events_lost == 0
        assert len(got) == r.expired_flows          # deleted exactly those it could log
        seen += [g.client[1] for g in got]
        if not r.deferred:
            break
        assert r.deferred == len(ports) - len(seen) and runs < 10
    assert sorted(seen) == list(ports) and runs >= 3
    assert table_len(fp, "ms_flows") == 0 and lost_counts(fp)["flow_end"] == lost0


def test_sweeper_defers_only_for_a_reader_and_not_under_pressure(small_ring):
    fp, rb, dec = small_ring
    n = 60                           # more than the one-page ring's 32 records
    lost0 = lost_counts(fp)["flow_end"]
    ports = range(8300, 8300 + n)
    now = session_clock_ns() + FAR
    # 60 of 1,024 entries: under a 10 % threshold
    fp.apply_runtime(fp.config.model_copy(update={"pressure_pct": 10}))
    _udp_sessions(fp, ports)
    # no reader (the default: `microseg` commands, benchmarks): all deleted, lost counted
    st = Sweeper.for_fastpath(fp).sweep(now)
    assert (st.expired_flows, st.deferred) == (n, 0)
    logged, lost = len(rb.drain()), lost_counts(fp)["flow_end"] - lost0
    assert logged + lost == n and logged > 0 and lost > 0

    fp.reset()
    fp.apply_runtime(fp.config.model_copy(update={"pressure_pct": 10}))
    lost0 = lost_counts(fp)["flow_end"]
    _udp_sessions(fp, ports)
    sw = Sweeper.for_fastpath(fp, defer_full_ring=True)
    st = sw.sweep(now)               # the daemon's: keeps what the full ring refused
    kept = st.deferred
    assert kept > 0 and st.expired_flows + kept == n
    assert lost_counts(fp)["flow_end"] == lost0 and table_len(fp, "ms_flows") == kept
    # the ring still full, and what is left over a 1 % threshold (10.24
    # entries): room for new sessions comes first, the records counted lost
    assert kept > ONE_PAGE_FLOWS // 100
    fp.apply_runtime(fp.config.model_copy(update={"pressure_pct": 1}))
    st = sw.sweep(now)
    assert (st.expired_flows, st.deferred) == (kept, 0)
    assert lost_counts(fp)["flow_end"] - lost0 == kept and len(rb.drain()) == n - kept


def test_the_daemon_hands_inspected_ends_to_their_worker_undecoded(fastpath):
    # An inspected session's end goes to its worker as the kernel wrote it,
    # read for its action and worker only (the worker decodes it); any
    # other session's end is decoded and written here; a worker that takes
    # none leaves its records to be written here too.
    from appliance.flowlog import FlowLog
    from slowpath.flowend import POL_INSPECT
    t = flow_event_type(fastpath)

    def raw(action, worker, port):
        ev = t()
        ev.type, ev.action, ev.worker = EventType.EVENT_FLOW_END, action, worker
        ev.key.port_lo, ev.key.proto = port, 6
        return bytes(ev)

    handed, written = {}, []

    def forward(worker, raws):
        handed.setdefault(worker, []).extend(raws)
        return len(raws) if worker != 3 else 0

    log = FlowLog(fastpath, written.append, forward=forward)
    try:
        decoded = []
        real = log.decoder.decode
        log.decoder.decode = lambda r: decoded.append(r) or real(r)
        ins = [raw(POL_INSPECT, 1, 1), raw(POL_INSPECT, 0, 2), raw(POL_INSPECT, 1, 3)]
        other, refused = raw(POL_INSPECT - 1, 1, 4), raw(POL_INSPECT, 3, 5)
        log.handle([ins[0], other, ins[1], ins[2], refused])
        assert handed == {1: [ins[0], ins[2]], 0: [ins[1]], 3: [refused]}
        assert decoded == [other, refused]          # the handed ones never decoded here
        assert len(written) == 2 and log.forwarded == 3 and log.records == 2
    finally:
        log.rb.close()


def _crossing_close(fp, port):
    """A connection both of whose FINs are out, neither acknowledged: the
    server's FIN and then the client's, sent before the client read the
    server's (curl reads a Content-Length body and closes at once). The two
    ACKs that end it cross: each side acknowledges the other's FIN."""
    conn = _data_conn(fp, port)
    conn.send("s", "FA")
    conn.send("c", "FA", ack=conn.s.nxt - 1)          # not yet acknowledging the server's FIN
    conn.assert_state(S.CT_CLOSING)
    return conn


def test_crossing_last_acks_close_the_session_whatever_the_other_wrote(fastpath, events):
    conn = _crossing_close(fastpath, 42010)
    conn.send("s", "A")                                # the server acknowledges the client's FIN
    conn.assert_state(S.CT_LAST_ACK)
    # The client's ACK of the server's FIN, run on another CPU at the same
    # moment, may store its side's flag byte over what the server's ACK just
    # wrote into it (a read-modify-write of a byte both directions wrote):
    # undone here by hand, every bit the client's side did not have before.
    e = conn.entry()
    t = fastpath.table("ms_flows4")
    k = next(k for k in t.keys() if t[k].cookie == e.leaf.cookie)
    leaf = t[k]
    leaf.tcp[0].flags &= ~0x08 & 0xFF                # the bit the server's ACK once set there
    t[k] = leaf
    conn.send("c", "A")
    conn.assert_state(S.CT_TIME_WAIT)
    got = events.take()
    assert [(ev.reason, ev.state, ev.client) for ev in got] == [("closed", "CT_TIME_WAIT", (CLI, 42010))]



def test_a_closed_session_stored_as_last_ack_takes_a_new_syn(fastpath, events):
    """Of two crossing last ACKs, the one that saw only its half stores
    LAST_ACK, possibly after the other stored TIME_WAIT and sent the
    record. The session is closed all the same: a new SYN on its ports
    starts a new connection, not one ignored and judged against the old
    windows."""
    conn = _crossing_close(fastpath, 42011)
    conn.send("s", "A")
    conn.send("c", "A")
    conn.assert_state(S.CT_TIME_WAIT)
    assert len(events.take()) == 1
    e = conn.entry()
    t = fastpath.table("ms_flows4")
    k = next(k for k in t.keys() if t[k].cookie == e.leaf.cookie)
    leaf = t[k]
    leaf.state = int(S.CT_LAST_ACK)                  # the other CPU's late store
    t[k] = leaf
    again = TcpConn.make(fastpath, client=(CLI, 42011), isn=(7_000_000, 9_000_000))
    again.send("c", "S")
    again.assert_state(S.CT_SYN_SENT, table="ms_flows")   # the old entry, taken over in place
    assert int(again.entry().leaf.cookie) != int(e.leaf.cookie)
    assert events.take() == []                       # the old session's record went once, at its close


@pytest.mark.parametrize("method", ["kernel", "batch"])
def test_a_closed_session_stored_as_last_ack_lives_and_lists_as_time_wait(fastpath, events, method):
    """The same late LAST_ACK store: the entry is a closed session all the
    same, so it is kept for TIME_WAIT's timeout, not LAST_ACK's shorter one
    (by both sweeps), and `microseg sessions` lists it as TIME_WAIT."""
    conn = _crossing_close(fastpath, 42012)
    conn.send("s", "A")
    conn.send("c", "A")
    assert len(events.take()) == 1
    t = fastpath.table("ms_flows4")
    k = next(k for k in t.keys() if t[k].cookie == conn.entry().leaf.cookie)
    tmo = Timeouts()
    assert tmo.last_ack < tmo.time_wait
    now = session_clock_ns()
    leaf = t[k]
    leaf.state = int(S.CT_LAST_ACK)                      # the other CPU's late store
    leaf.last_seen_ns = now - int((tmo.last_ack + tmo.time_wait) / 2 * NS)   # past LAST_ACK's timeout only
    t[k] = leaf
    types = layouts_of(fastpath)
    fds = {n: fastpath.table(n).map_fd for n in types if n.startswith("ms_")}
    listing = list_sessions(fds, types, fastpath.table("ms_timeouts").map_fd, now_ns=now)
    assert [(s.state, s.sport) for s in listing.sessions] == [("TIME_WAIT", 42012)]
    st = Sweeper.for_fastpath(fastpath, method=method).sweep(now)
    assert (st.method, st.expired_flows) == (method, 0) and conn.entry() is not None
    st = Sweeper.for_fastpath(fastpath, method=method).sweep(now + int(tmo.time_wait * NS))
    assert st.expired_flows == 1 and conn.entry() is None
    assert events.take() == []                           # its record went at its close


def _random_entries(fp, n, seed):
    """Random bytes as ms_flow_event records (type FLOW_END) and as session
    table entries (canonical key, value): every field's every bit, IPv4-mapped
    and IPv6 addresses."""
    import random

    from datapath.flows import V4_MAPPED
    from datapath.sessions import WIDE_KEY_MAP
    rnd = random.Random(seed)
    rtype, t = flow_event_type(fp), fp.table(WIDE_KEY_MAP)
    out = []
    for i in range(n):
        raw = bytearray(rnd.randbytes(ctypes.sizeof(rtype)))
        raw[0:4] = int(EventType.EVENT_FLOW_END).to_bytes(4, "little")
        key = bytearray(rnd.randbytes(ctypes.sizeof(t.Key)))
        if i % 2:    # IPv4-mapped addresses (dotted text) in half of them
            for at in (rtype.key.offset, rtype.key.offset + 16):
                raw[at:at + 12] = V4_MAPPED
            key[0:12] = key[16:28] = V4_MAPPED
        out.append((bytes(raw), bytes(key), rnd.randbytes(ctypes.sizeof(t.Leaf))))
    return rtype, t, out


def _ctypes_end(dec, k, ev, reason, worker, key):
    """The FlowEnd of key ``k`` and session fields ``ev`` read field by field
    from the ctypes objects: what the struct readers must give."""
    from datapath.flows import addr_text

    lo = (addr_text(bytes(k.addr_lo)), socket.ntohs(k.port_lo))
    hi = (addr_text(bytes(k.addr_hi)), socket.ntohs(k.port_hi))
    client, server = (hi, lo) if ev.initiator_is_hi else (lo, hi)
    return FlowEnd(reason, dec._states.get(ev.state, f"state-{ev.state}"), int(k.proto), client, server,
                   int(ev.first_seen_ns), int(ev.last_seen_ns), (int(ev.packets[0]), int(ev.packets[1])),
                   (int(ev.bytes[0]), int(ev.bytes[1])), int(ev.rule_id), int(ev.cookie), int(ev.pol_gen),
                   int(ev.action), int(ev.inspect), int(ev.insp_state), int(ev.app), int(ev.flags), worker, key)


def test_decode_reads_every_field_as_ctypes_does(fastpath):
    # decode(), from_entry() and from_session() read with one struct unpack:
    # the same FlowEnd as the ctypes objects' fields give.
    rtype, t, entries = _random_entries(fastpath, 300, 14)
    dec = FlowEventDecoder(rtype)
    for raw, key, leaf in entries:
        ev = rtype.from_buffer_copy(raw)
        reason = dec._reasons.get(ev.reason, f"reason-{ev.reason}")
        want = _ctypes_end(dec, ev.key, ev, reason, int(ev.worker),
                           raw[rtype.key.offset:rtype.key.offset + rtype.key.size])
        assert dec.decode(raw) == want
        assert dec.decode(raw + b"\0" * 8) == want          # a ring record padded to 8 bytes
        k, v = t.Key.from_buffer_copy(key), t.Leaf.from_buffer_copy(leaf)
        want = _ctypes_end(dec, k, v, "shutdown", 0, key)
        assert dec.from_entry(t.Key, t.Leaf, key, leaf, "shutdown") == want
        assert dec.from_session(k, v, "shutdown") == want


def test_field_reader_refuses_what_it_cannot_read(fastpath):
    from datapath.flowevents import field_reader

    class Odd(ctypes.Structure):
        _fields_ = [("x", ctypes.c_double)]
    with pytest.raises(TypeError, match="c_double"):
        field_reader(Odd, ("x",))
