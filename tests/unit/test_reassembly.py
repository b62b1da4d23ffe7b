"""slowpath/reassembly.py: TCP stream reassembly, one flow, both directions."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.api import Direction
from slowpath.reassembly import (
    ACK, FIN, RST, SYN, Data, Eof, Gap, ReassemblyBudget, ReassemblyLimits,
    StreamReassembler,
)

C2S, S2C = Direction.TO_SERVER, Direction.TO_CLIENT
ISN = 1000


def stream_of(events, direction=C2S):
    """Concatenated Data bytes of one direction, checking offsets are contiguous."""
    out = bytearray()
    at = None
    for ev in events:
        if ev.direction != direction or isinstance(ev, Eof):
            continue
        if at is not None:
            assert ev.stream_offset == at, "events must continue where the last one ended"
        if isinstance(ev, Gap):
            at = ev.stream_offset + ev.size
        else:
            out += ev.data
            at = ev.stream_offset + len(ev.data)
    return bytes(out)


def opened(direction=C2S, isn=ISN, **kw):
    r = StreamReassembler(**kw)
    assert r.segment(direction, isn, SYN) == []
    return r


def feed(r, segs, direction=C2S, isn=ISN):
    """segs: (offset, bytes[, flags]) relative to ISN + 1."""
    events = []
    for s in segs:
        off, data = s[0], s[1]
        flags = s[2] if len(s) > 2 else ACK
        events += r.segment(direction, (isn + 1 + off) % 2**32, flags, data)
    return events


def test_in_order_delivers_each_segment_at_once():
    r = opened()
    ev1 = feed(r, [(0, b"hello ")])
    ev2 = feed(r, [(6, b"world")])
    assert ev1 == [Data(C2S, b"hello ", 0)]
    assert ev2 == [Data(C2S, b"world", 6)]
    assert r.counters.bytes_delivered == 11
    assert r.counters.segments == 3
    assert r.buffered_bytes == 0


def test_out_of_order_waits_for_the_hole_then_delivers_one_run():
    r = opened()
    assert feed(r, [(5, b"56789"), (10, b"ABC")]) == []
    assert r.buffered_bytes == 8
    ev = feed(r, [(0, b"01234")])
    assert ev == [Data(C2S, b"0123456789ABC", 0)]
    assert r.buffered_bytes == 0


def test_directions_are_independent():
    r = StreamReassembler()
    r.segment(C2S, 100, SYN)
    r.segment(S2C, 5000, SYN | ACK)
    ev = r.segment(S2C, 5001, ACK, b"220 hi")
    ev += r.segment(C2S, 101, ACK, b"EHLO")
    assert ev == [Data(S2C, b"220 hi", 0), Data(C2S, b"EHLO", 0)]


def test_mid_stream_pickup_starts_at_first_segment_seen():
    r = StreamReassembler()
    ev = r.segment(C2S, 777, ACK, b"middle")
    ev += r.segment(C2S, 783, ACK, b" end")
    ev += r.segment(C2S, 770, ACK, b"earlier")   # before pickup: already "delivered"
    assert stream_of(ev) == b"middle end"
    assert r.counters.retransmits == 1


def test_retransmission_is_dropped_and_counted():
    r = opened()
    ev = feed(r, [(0, b"abcdef"), (0, b"abcdef"), (2, b"cd")])
    assert stream_of(ev) == b"abcdef"
    assert r.counters.retransmits == 2
    assert r.counters.overlap_conflicts == 0


def test_overlap_first_wins_and_conflicting_bytes_are_counted():
    r = opened()
    # 10..20 arrives first, then 5..15 with different bytes, then the hole 0..5.
    feed(r, [(10, b"A" * 10)])
    feed(r, [(5, b"B" * 10)])
    ev = feed(r, [(0, b"C" * 5)])
    assert stream_of(ev) == b"C" * 5 + b"B" * 5 + b"A" * 10
    c = r.counters
    assert c.overlaps == 1                 # the 5..15 segment brought 5 new bytes
    assert c.overlap_conflicts == 5        # bytes 10..15: B sent after A, A kept


def test_overlap_counts_only_the_bytes_that_differ():
    r = opened()
    feed(r, [(4, b"wxyz")])
    feed(r, [(4, b"wXyZ")])                # full retransmit of buffered data, 2 bytes differ
    ev = feed(r, [(0, b"0123")])
    assert stream_of(ev) == b"0123wxyz"
    assert r.counters.retransmits == 1
    assert r.counters.overlap_conflicts == 2


def test_segment_spanning_several_buffered_runs_fills_only_the_holes():
    r = opened()
    feed(r, [(2, b"cc"), (6, b"gg")])
    feed(r, [(1, b"xXXXXXXxx")])           # covers 1..10, conflicts at 2,3 and 6,7
    ev = feed(r, [(0, b"a")])
    assert stream_of(ev) == b"axccXXggxx"
    assert r.counters.overlap_conflicts == 4


def test_in_order_segment_overlapping_buffered_data_keeps_the_buffered_bytes():
    r = opened()
    feed(r, [(3, b"DEF")])
    ev = feed(r, [(0, b"abcdefgh")])       # in order, but 3..6 arrived first as DEF
    assert ev == [Data(C2S, b"abcDEFgh", 0)]
    assert r.counters.overlap_conflicts == 3
    assert r.buffered_bytes == 0


def test_sequence_wraparound():
    isn = 2**32 - 4                         # stream offset 0 is seq 2^32 - 3
    r = opened(isn=isn)
    ev = feed(r, [(0, b"0123456789")], isn=isn)      # crosses the wrap
    # next segment at seq 7 (after the wrap), out of order first
    ev += feed(r, [(15, b"FGHIJ")], isn=isn)
    ev += feed(r, [(10, b"ABCDE")], isn=isn)
    assert stream_of(ev) == b"0123456789ABCDEFGHIJ"
    assert (isn + 1 + 15) % 2**32 == 12
    assert r.counters.retransmits == 0 and r.counters.gaps == 0


def test_wraparound_retransmission_before_the_wrap_is_recognised():
    isn = 2**32 - 2
    r = opened(isn=isn)
    ev = feed(r, [(0, b"abcdef"), (6, b"ghij")], isn=isn)
    ev += feed(r, [(0, b"abc")], isn=isn)            # seq 2^32 - 1, now behind
    assert stream_of(ev) == b"abcdefghij"
    assert r.counters.retransmits == 1


def test_tcp_fast_open_data_in_syn_is_stream_offset_zero():
    r = StreamReassembler()
    ev = r.segment(C2S, ISN, SYN, b"GET / HTTP/1.0\r\n")
    assert ev == [Data(C2S, b"GET / HTTP/1.0\r\n", 0)]
    ev = r.segment(C2S, ISN + 1 + 16, ACK, b"\r\n")
    assert ev == [Data(C2S, b"\r\n", 16)]
    # a retransmitted SYN with the same data is a retransmission
    assert r.segment(C2S, ISN, SYN, b"GET / HTTP/1.0\r\n") == []
    assert r.counters.retransmits == 1


def test_gap_after_per_flow_cap():
    r = opened(limits=ReassemblyLimits(per_flow_bytes=100))
    assert feed(r, [(10, b"a" * 50)]) == []
    ev = feed(r, [(60, b"b" * 60)])         # 110 buffered would exceed 100
    # the buffered run is delivered after the gap, then the segment in hand
    assert ev == [Gap(C2S, 10, 0), Data(C2S, b"a" * 50, 10), Data(C2S, b"b" * 60, 60)]
    assert r.counters.per_flow_cap_hits == 1
    assert r.counters.gaps == 1 and r.counters.gap_bytes == 10
    assert r.buffered_bytes == 0
    # the late hole filler is now behind: dropped, not delivered twice
    assert feed(r, [(0, b"x" * 10)]) == []


def test_cap_skips_to_the_earliest_data_even_if_it_is_the_new_segment():
    r = opened(limits=ReassemblyLimits(per_flow_bytes=20))
    feed(r, [(50, b"z" * 15)])
    ev = feed(r, [(30, b"y" * 10)])         # starts before the buffered run
    # gap 0..30, deliver 30..40; the 50.. run still waits behind the next hole
    assert ev == [Gap(C2S, 30, 0), Data(C2S, b"y" * 10, 30)]
    assert r.buffered_bytes == 15


def test_hole_given_up_after_max_segments_ahead():
    r = opened(limits=ReassemblyLimits(max_segments_ahead=3))
    feed(r, [(10, b"a"), (11, b"b"), (12, b"c")])
    ev = feed(r, [(13, b"d")])
    assert ev == [Gap(C2S, 10, 0), Data(C2S, b"abc", 10), Data(C2S, b"d", 13)]
    assert r.counters.stale_holes == 1


def test_total_cap_is_shared_by_two_flows():
    budget = ReassemblyBudget(total_bytes=100)
    a = opened(budget=budget)
    b = opened(budget=budget)
    feed(a, [(10, b"a" * 80)])
    assert budget.used == 80
    ev = feed(b, [(10, b"b" * 30)])         # 110 > 100: b cannot buffer, gives up its hole
    assert ev == [Gap(C2S, 10, 0), Data(C2S, b"b" * 30, 10)]
    assert b.counters.total_cap_hits == 1 and a.counters.total_cap_hits == 0
    assert budget.used == 80
    ev = feed(a, [(0, b"x" * 10)])          # a's hole fills: its bytes go back to the budget
    assert stream_of(ev) == b"x" * 10 + b"a" * 80
    assert budget.used == 0
    # now b has room again
    feed(b, [(50, b"c" * 60)])
    assert budget.used == 60 and b.counters.total_cap_hits == 1


def test_close_returns_the_budget():
    budget = ReassemblyBudget()
    r = opened(budget=budget)
    feed(r, [(5, b"x" * 40)])
    r.close()
    assert budget.used == 0 and r.buffered_bytes == 0


def test_eof_only_after_all_data_before_the_fin():
    r = opened()
    ev = feed(r, [(0, b"abc")])
    ev += feed(r, [(6, b"ghi", FIN | ACK)])     # FIN arrives before 3..6
    assert not any(isinstance(e, Eof) for e in ev)
    ev2 = feed(r, [(3, b"def")])
    assert ev2 == [Data(C2S, b"defghi", 3), Eof(C2S)]
    # a retransmitted FIN does not end the stream twice
    assert feed(r, [(6, b"ghi", FIN | ACK)]) == []


def test_pure_fin_in_order_gives_eof():
    r = opened()
    ev = feed(r, [(0, b"abc"), (3, b"", FIN | ACK)])
    assert ev == [Data(C2S, b"abc", 0), Eof(C2S)]


def test_data_after_fin_is_not_stream_data():
    r = opened()
    ev = feed(r, [(0, b"ab", FIN | ACK), (2, b"zz")])
    assert ev == [Data(C2S, b"ab", 0), Eof(C2S)]
    # buffered data past a FIN learned later is dropped too
    r = opened()
    feed(r, [(5, b"56789")])
    feed(r, [(3, b"", FIN | ACK)])
    assert r.buffered_bytes == 0
    assert feed(r, [(0, b"012")]) == [Data(C2S, b"012", 0), Eof(C2S)]


def test_flush_gives_up_holes_and_ends_fin_sides():
    budget = ReassemblyBudget()
    r = opened(budget=budget)
    r.segment(S2C, 9000, SYN | ACK)
    feed(r, [(4, b"efgh"), (12, b"mn", FIN | ACK)])
    r.segment(S2C, 9001 + 3, ACK, b"late")      # server side: hole 0..3, no FIN
    ev = r.flush()
    assert ev == [Gap(C2S, 4, 0), Data(C2S, b"efgh", 4), Gap(C2S, 4, 8),
                  Data(C2S, b"mn", 12), Eof(C2S),
                  Gap(S2C, 3, 0), Data(S2C, b"late", 3)]
    assert budget.used == 0


def test_rst_payload_is_ignored():
    r = opened()
    assert feed(r, [(0, b"diag", RST | ACK)]) == []
    assert feed(r, [(0, b"real")]) == [Data(C2S, b"real", 0)]


def test_segment_beyond_any_window_is_dropped():
    r = opened()
    assert feed(r, [(2**30 + 10, b"far")]) == []
    assert r.counters.out_of_window == 1 and r.buffered_bytes == 0


def test_in_order_stream_is_never_buffered():
    # 20,000 in-order 1448-byte segments: each is
    # delivered as it comes, nothing is held back. Speed is bench/'s job.
    r = opened()
    seg = b"x" * 1448
    for i in range(20_000):
        r.segment(C2S, (ISN + 1 + i * 1448) % 2**32, ACK, seg)
        assert r.buffered_bytes == 0
    assert r.counters.bytes_delivered == 20_000 * 1448


@st.composite
def shuffled_segments(draw):
    data = draw(st.binary(min_size=1, max_size=400))
    cuts = sorted(set(draw(st.lists(st.integers(1, len(data)), max_size=30))) | {len(data)})
    segs, prev = [], 0
    for cut in cuts:
        segs.append((prev, data[prev:cut]))
        prev = cut
    # retransmissions: duplicates and overlapping copies of the same bytes
    extra = draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 50)), max_size=10))
    for start, n in extra:
        segs.append((start, data[start:start + n]))
    order = draw(st.permutations(segs))
    isn = draw(st.sampled_from([0, 12345, 2**32 - 1, 2**32 - 100, 2**31]))
    # where the FIN-only segment goes among the others (None: no FIN)
    fin_at = draw(st.none() | st.integers(0, len(order)))
    return data, list(order), isn, fin_at


@settings(max_examples=300, deadline=None)
@given(shuffled_segments())
def test_any_permutation_with_duplicates_reassembles_to_the_original(case):
    data, order, isn, fin_at = case
    fin = fin_at is not None
    r = StreamReassembler()
    events = r.segment(C2S, isn, SYN)
    for i in range(len(order) + 1):
        if i == fin_at:
            events += r.segment(C2S, (isn + 1 + len(data)) % 2**32, FIN | ACK)
        if i < len(order):
            off, chunk = order[i]
            events += r.segment(C2S, (isn + 1 + off) % 2**32, ACK, chunk)
    assert stream_of(events) == data
    assert not any(isinstance(e, Gap) for e in events)
    assert r.counters.overlap_conflicts == 0
    assert r.buffered_bytes == 0
    eofs = [i for i, e in enumerate(events) if isinstance(e, Eof)]
    if fin:
        assert eofs == [len(events) - 1]        # exactly one, after every Data
    else:
        assert eofs == []
    assert r.flush() == []


def test_a_bare_fin_or_ack_takes_segment_s_own_path_not_in_order():
    """in_order() delivers payload only: segment() does not ask it about a
    segment without any (a bare FIN or ACK), and such a segment still gives
    what segment() gives it (an Eof once the bytes before it are in)."""
    class Counting(StreamReassembler):
        asked = 0

        def in_order(self, *a):
            type(self).asked += 1
            return super().in_order(*a)

    r = Counting()
    assert r.segment(C2S, ISN, SYN) == []
    Counting.asked = 0
    assert feed(r, [(0, b"", ACK)]) == [] and Counting.asked == 0
    assert feed(r, [(0, b"abc")]) == [Data(C2S, b"abc", 0)] and Counting.asked == 1
    assert feed(r, [(3, b"", FIN | ACK)]) == [Eof(C2S)] and Counting.asked == 1


def test_an_in_order_bare_fin_ends_its_side_without_the_general_path():
    """A bare FIN at the next expected byte, nothing buffered: segment()
    ends the side itself (no _fin, no _check_eof), with the general path's
    events, state and counters; anywhere else (a hole before it, after data
    buffered, a second FIN, FIN with RST, near a wrap) the two agree too."""
    class Counting(StreamReassembler):
        fins = 0

        def _fin(self, side, fin):
            type(self).fins += 1
            return super()._fin(side, fin)

    r = Counting()
    assert r.in_order(C2S, 1000, ACK, b"abc") == b"abc"
    Counting.fins = 0
    assert r.segment(C2S, 1003, FIN | ACK) == [Eof(C2S)] and Counting.fins == 0
    assert r.segment(S2C, 7, FIN) == [Eof(S2C)] and Counting.fins == 1     # S2C's first segment: general path
    cases = [
        [(0, b"abc"), (3, b"", FIN | ACK)],
        [(0, b"abc"), (5, b"", FIN | ACK), (3, b"xy")],                   # FIN after a hole
        [(0, b"abc"), (6, b"zz"), (3, b"", FIN | ACK), (3, b"xyz")],      # data buffered past it
        [(0, b"abc"), (3, b"", FIN | ACK), (3, b"", FIN | ACK), (4, b"", FIN)],
        [(0, b"abc"), (3, b"", FIN | RST), (3, b"", FIN)],
        [(0, b"abc"), (2, b"", FIN)],                                     # before bytes delivered
    ]
    for isn in (ISN, (1 << 32) - 3):
        for segs in cases:
            got = []
            for shortcut in (True, False):
                r = opened(isn=isn)
                r.in_order_shortcut = shortcut
                ev = feed(r, segs, isn=isn)
                side = r._sides[C2S]
                got.append((ev, r.counters, side.fin, side.eof, side.next, r.flush()))
            assert got[0] == got[1], (isn, segs)
