"""Sans-IO TCP stream reassembly for one flow (both directions).

A :class:`StreamReassembler` takes TCP segments as the kernel's ring buffer or
a capture file gives them (direction, sequence number, flags, payload) and
returns what the protocol parsers need, in stream order:

* :class:`Data` - the next in-order bytes of one direction,
* :class:`Gap` - bytes of one direction that reassembly gave up waiting for,
* :class:`Eof` - the direction's FIN, once every byte before it was delivered
  (or given up as a gap).

It does no I/O and keeps no clock: "too old" is measured in segments waiting
behind a hole, not in seconds, so a pcap and the live ring buffer reassemble
the same way.

Sequence numbers become *stream offsets* (byte 0 is the first byte after the
SYN, or the first byte seen on a mid-stream pickup) held as unbounded Python
ints, so 32-bit wraparound is handled once, in :meth:`_offset`, and every
other comparison is plain integer arithmetic.

Overlap policy: **first wins** - when two segments carry the same stream
bytes, the bytes that arrived first are kept. Why, and where this matches
what the receiving host does:

* Bytes that were already delivered in order: every TCP stack has handed them
  to the application, so a later copy cannot change what the target sees.
  RFC 9293 3.10.7.4 has the receiver trim a segment to the part that starts at
  RCV.NXT ("only the new parts are processed"). This is by far the commonest
  overlap (retransmissions), and first-wins is exactly right for it.
* Overlaps inside the out-of-order queue are where stacks differ; that is why
  Snort (stream5 / stream_tcp "policy": first, last, bsd, linux, windows,
  solaris, ...) and Suricata (stream.reassembly host-os-policy) model each
  target OS separately (Novak and Sturges, "Target-Based TCP Stream
  Reassembly", 2007). Linux keeps a queued segment when a newer one lies
  inside it or starts inside it (first wins), but replaces a queued segment
  that a newer one starts at or before and fully covers (tcp_data_queue_ofo
  in net/ipv4/tcp_input.c), so for that one shape Linux is "last wins".
* We cannot know the target OS, so we pick the deterministic policy that
  Snort 3 itself normalises to in inline IPS mode ("overlaps are always
  resolved to the first copy seen", Snort 3 stream_tcp inspector reference),
  and we *count* every overlapping byte that differs
  (:attr:`ReassemblyCounters.overlap_conflicts`). Honest TCP never sends two
  different bytes for one sequence number, so a non-zero count is itself the
  signal (Suricata raises its "reassembly_overlap_different_data" event on the
  same condition) and a rule can drop the flow on it rather than trust either
  copy.

Conflicts are counted against bytes still held in the out-of-order buffer;
bytes already delivered are not kept for comparison (see the first point:
they can no longer change what the target sees).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import ClassVar, Union

from protocols.api import Direction

# TCP header flag bits (RFC 9293 3.1), the same values as bpf/lib/maps.h.
FIN = 0x01
SYN = 0x02
RST = 0x04
ACK = 0x10

_SEQ_MOD = 1 << 32
_HALF = 1 << 31

# Out-of-order bytes one flow may hold, both directions together. 1 MiB holds
# ~720 full-size (1448-byte) segments: a whole window of a connection with a
# bandwidth-delay product of 1 Gbit/s x 8 ms, enough to bridge one loss while
# the sender retransmits. DPI needs the first kilobytes of a flow (headers,
# handshakes), so a gap deep in a bulk transfer costs little; a larger cap
# would only let 64 flows, rather than 64 slow-path-starving ones, fill the
# total budget below.
PER_FLOW_BUFFER_BYTES = 1 << 20

# Out-of-order bytes all flows of one slow path may hold together (the shared
# ReassemblyBudget). 64 MiB keeps the worst case (64 flows at their cap) well
# inside the memory of a small gateway's Python process; past it, the flow
# that needs more gives up its oldest hole instead of growing.
TOTAL_BUFFER_BYTES = 64 << 20

# A hole is given up ("too old") once this many segments of its direction wait
# behind it. A lost segment is normally retransmitted after three duplicate
# ACKs (RFC 5681 3.2) or one RTO, during which at most a window of segments
# arrives: ~720 full-size ones at the 1 MiB cap, so 1024 does not bite before
# the byte cap on real traffic. It bounds the per-segment overhead (a bytes
# object and a list slot, ~100 bytes each) that 1-byte segments would
# otherwise multiply a thousandfold inside the byte cap. It also ends a hole
# that will never fill: when the kernel dropped a ring-buffer record, the
# receiver still got the packet and nobody retransmits it.
MAX_SEGMENTS_AHEAD_OF_HOLE = 1024

# A segment more than this past the next expected byte cannot be in the
# receiver's window: the largest window TCP can advertise is 65535 << 14
# (window scale at most 14, RFC 7323 2.3). Such a segment belongs to another
# connection on the same 5-tuple or is garbage; buffering it would only make
# a giant gap later.
MAX_WINDOW = 65535 << 14


@dataclass(frozen=True)
class ReassemblyLimits:
    """Per-flow limits (the total cap lives in the shared :class:`ReassemblyBudget`)."""
    per_flow_bytes: int = PER_FLOW_BUFFER_BYTES
    max_segments_ahead: int = MAX_SEGMENTS_AHEAD_OF_HOLE
    max_window: int = MAX_WINDOW


class ReassemblyBudget:
    """Out-of-order bytes buffered by every reassembler that shares this object.

    The slow path is one thread (asyncio), so a plain counter is enough.
    """

    def __init__(self, total_bytes: int = TOTAL_BUFFER_BYTES) -> None:
        self.total_bytes = total_bytes
        self.used = 0

    def fits(self, n: int) -> bool:
        return self.used + n <= self.total_bytes

    def charge(self, n: int) -> None:
        self.used += n

    def release(self, n: int) -> None:
        self.used -= n


@dataclass
class ReassemblyCounters:
    """What one flow's reassembly did. Units are segments unless named bytes."""
    segments: int = 0             # segments given to segment(), any flags
    bytes_delivered: int = 0      # bytes in Data events
    retransmits: int = 0          # segments with payload and not one new byte
    overlaps: int = 0             # segments with new bytes and some already seen
    overlap_conflicts: int = 0    # BYTES seen twice with different values (first kept)
    gaps: int = 0                 # Gap events
    gap_bytes: int = 0            # bytes given up in those gaps
    per_flow_cap_hits: int = 0    # times ReassemblyLimits.per_flow_bytes forced a gap
    total_cap_hits: int = 0       # times the shared ReassemblyBudget forced a gap
    stale_holes: int = 0          # times max_segments_ahead forced a gap
    out_of_window: int = 0        # segments dropped as beyond any possible window


@dataclass(frozen=True)
class Data:
    """In-order bytes of ``direction``; ``stream_offset`` is the offset of ``data[0]``."""
    kind: ClassVar[str] = "data"
    direction: Direction
    data: bytes
    stream_offset: int


@dataclass(frozen=True)
class Gap:
    """``size`` bytes of ``direction`` starting at ``stream_offset`` were given up."""
    kind: ClassVar[str] = "gap"
    direction: Direction
    size: int
    stream_offset: int = -1


@dataclass(frozen=True)
class Eof:
    """``direction`` ended with a FIN and every byte before it was delivered or gapped."""
    kind: ClassVar[str] = "eof"
    direction: Direction


StreamEvent = Union[Data, Gap, Eof]


def _new_data(direction: Direction, data: bytes, stream_offset: int) -> Data:
    """Data(direction, data, stream_offset), built by filling the frozen
    instance's __dict__ instead of the dataclass __init__'s object.__setattr__
    per field (the same object: equal, same repr; half the time). One is
    built per in-order segment."""
    ev = _object_new(Data)
    ev.__dict__.update(direction=direction, data=data, stream_offset=stream_offset)
    return ev


_object_new = object.__new__
# A direction's Eof (a frozen value: one serves every flow).
_EOF = {d: Eof(d) for d in Direction}
# Flags that take segment() off its in-order shortcut.
_SYN_FIN_RST = SYN | FIN | RST


def _differing_bytes(a: bytes, b: bytes) -> int:
    """How many positions of two equal-length byte strings differ (no per-byte loop)."""
    if a == b:
        return 0
    n = len(a)
    x = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    return n - x.to_bytes(n, "big").count(0)


class _Side:
    """Reassembly state of one direction."""
    __slots__ = ("base", "next", "starts", "segs", "buffered", "fin", "eof")

    def __init__(self) -> None:
        self.base: int | None = None    # sequence number of stream offset 0
        self.next = 0                   # stream offset of the next byte to deliver
        # Out-of-order data: disjoint [start, start + len) runs, all > next.
        self.starts: list[int] = []     # sorted
        self.segs: dict[int, bytes] = {}
        self.buffered = 0
        self.fin: int | None = None     # stream offset the FIN occupies
        self.eof = False


class StreamReassembler:
    """Reassembles both directions of one TCP connection. See the module docstring."""
    # segment() delivers the next bytes in order without the general path
    # (same events and counters); tests turn it off to compare the two.
    in_order_shortcut = True

    def __init__(self, limits: ReassemblyLimits | None = None,
                 budget: ReassemblyBudget | None = None) -> None:
        self.limits = limits or ReassemblyLimits()
        # A private budget when none is shared: then only the per-flow cap applies.
        self.budget = budget if budget is not None else ReassemblyBudget()
        self.counters = ReassemblyCounters()
        self._sides = (_Side(), _Side())

    @property
    def finished(self) -> bool:
        """Both directions ended (Eof given): nothing more can come out."""
        return self._sides[0].eof and self._sides[1].eof

    @property
    def buffered_bytes(self) -> int:
        """Out-of-order bytes held now (both directions)."""
        return self._sides[0].buffered + self._sides[1].buffered

    # ------------------------------------------------------------------ input
    def in_order(self, d: Direction, seq: int, flags: int, payload: bytes) -> bytes | None:
        """segment()'s common case, as _data's first branch takes it: when
        ``payload`` is the next bytes of ``d`` (a Direction) in order, nothing
        buffered, no FIN yet and no SYN, FIN or RST on it, it is delivered as
        segment() would (same state and counters) and returned: the data of
        the one Data event segment() would give. A side's first segment
        without a SYN is one (it starts the stream): every inspected TCP
        flow's first record of each side. Else None, nothing changed:
        segment() takes it. (The engine calls this first: no event object
        per in-order record.)"""
        side = self._sides[d]
        if payload and not flags & _SYN_FIN_RST and not side.starts \
                and side.fin is None and self.in_order_shortcut:
            if side.base is None:
                # A side's first segment, no SYN seen (the slow path sees a
                # connection from its first payload): it starts the stream,
                # as segment()'s mid-stream pickup does; one that segment()
                # would refuse as past the window is left to it.
                if len(payload) > self.limits.max_window:
                    return None
                side.base = seq % _SEQ_MOD
            nxt = side.next
            if (seq - side.base - nxt + _HALF) % _SEQ_MOD == _HALF and len(payload) <= self.limits.max_window:
                c = self.counters
                c.segments += 1
                side.next = nxt + len(payload)
                c.bytes_delivered += len(payload)
                return payload if payload.__class__ is bytes else bytes(payload)
        return None

    def segment(self, direction: Direction, seq: int, flags: int,
                payload: bytes = b"") -> list[StreamEvent]:
        """Feed one TCP segment; return the events it completes (possibly none)."""
        d = direction if direction.__class__ is Direction else Direction(direction)
        if not payload:
            # (in_order takes payload only.) A bare FIN at the next expected
            # byte of a side with nothing buffered (both of every connection
            # that ends cleanly): the general path below sets fin there and,
            # every byte before it delivered, ends the side; done here.
            side = self._sides[d]
            if (flags & _SYN_FIN_RST == FIN and side.base is not None and side.fin is None and not side.starts
                    and (seq - side.base - side.next) % _SEQ_MOD == 0 and self.in_order_shortcut):
                self.counters.segments += 1
                side.fin = side.next
                side.eof = True
                return [_EOF[d]]
        else:
            got = self.in_order(d, seq, flags, payload)
            if got is not None:
                return [_new_data(d, got, self._sides[d].next - len(got))]
        side = self._sides[d]
        self.counters.segments += 1
        events: list[StreamEvent] = []
        if flags & RST:
            # Payload of a RST is a diagnostic, never stream data (RFC 9293
            # 3.5.3); and a RST must not set the initial sequence.
            return events
        if side.base is None:
            # The first SYN fixes the initial sequence number; the SYN itself
            # occupies it, so data carried in the SYN (TCP Fast Open, RFC 7413)
            # starts at ISN + 1 = offset 0. Without a SYN (mid-stream pickup)
            # the first segment seen starts the stream.
            side.base = (seq + 1) % _SEQ_MOD if flags & SYN else seq % _SEQ_MOD
        start = seq + 1 if flags & SYN else seq
        off = self._offset(side, start)
        if payload:
            self._data(d, side, off, bytes(payload), events)
        if flags & FIN:
            self._fin(side, off + len(payload))
        self._check_eof(d, side, events)
        return events

    def flush(self) -> list[StreamEvent]:
        """The input ended: give up every hole, deliver what is buffered, end FIN'd sides."""
        events: list[StreamEvent] = []
        for d in (Direction.TO_SERVER, Direction.TO_CLIENT):
            side = self._sides[d]
            while side.starts:
                self._skip_hole(d, side, side.starts[0], events)
            if side.fin is not None and side.next < side.fin:
                self._gap(d, side, side.fin - side.next, events)
            self._check_eof(d, side, events)
        return events

    def close(self) -> None:
        """Drop every buffered byte without events (the flow is gone); returns the budget."""
        for side in self._sides:
            self.budget.release(side.buffered)
            side.starts.clear()
            side.segs.clear()
            side.buffered = 0

    # --------------------------------------------------------------- internals
    @staticmethod
    def _offset(side: _Side, seq: int) -> int:
        """Stream offset of ``seq``: the one nearest to the next expected byte.

        Sequence space is modulo 2^32 (RFC 9293 3.4); any seq within 2^31 of
        the next expected byte maps to one offset, on either side of a wrap.
        """
        delta = (seq - side.base - side.next + _HALF) % _SEQ_MOD - _HALF
        return side.next + delta

    def _data(self, d: Direction, side: _Side, off: int, data: bytes,
              events: list[StreamEvent]) -> None:
        c = self.counters
        end = off + len(data)
        if side.fin is not None and end > side.fin:
            # Nothing follows a FIN (RFC 9293 3.10.7.4, eighth step).
            data = data[:max(0, side.fin - off)]
            end = off + len(data)
            if not data:
                c.out_of_window += 1
                return
        if end - side.next > self.limits.max_window:
            c.out_of_window += 1
            return
        if end <= side.next:
            c.retransmits += 1
            return

        seen = 0   # bytes of this segment that were already delivered
        while True:
            if off < side.next:
                seen += side.next - off
                data = data[side.next - off:]
                off = side.next
            if not data:
                # A forced gap delivered buffered data that covered it all.
                c.retransmits += 1
                return
            if off == side.next:
                if not side.starts:
                    # The common case: in order, nothing buffered, no copy.
                    if seen:
                        c.overlaps += 1
                    side.next = off + len(data)
                    c.bytes_delivered += len(data)
                    events.append(_new_data(d, data, off))
                    return
                break
            pieces, _, _ = self._uncovered(side, off, data)
            need = sum(len(p) for _, p in pieces)
            if len(side.starts) + len(pieces) > self.limits.max_segments_ahead:
                c.stale_holes += 1
            elif self.buffered_bytes + need > self.limits.per_flow_bytes:
                c.per_flow_cap_hits += 1
            elif not self.budget.fits(need):
                c.total_cap_hits += 1
            else:
                break
            # A cap bit: give up the first hole (before the oldest buffered
            # run or before this segment, whichever starts first) and try again.
            self._skip_hole(d, side, off, events)

        pieces, overlapped, conflicts = self._uncovered(side, off, data)
        new = sum(len(p) for _, p in pieces)
        if new == 0:
            c.retransmits += 1
        elif seen or overlapped:
            c.overlaps += 1
        c.overlap_conflicts += conflicts
        if off == side.next and not side.starts:
            # The common case: in order, nothing buffered, no copy.
            side.next = off + len(data)
            c.bytes_delivered += len(data)
            events.append(_new_data(d, data, off))
            return
        for start, piece in pieces:
            bisect.insort(side.starts, start)
            side.segs[start] = piece
        side.buffered += new
        self.budget.charge(new)
        self._drain(d, side, events)

    @staticmethod
    def _uncovered(side: _Side, off: int, data: bytes):
        """Parts of ``data`` (at ``off``) not already buffered, first copy winning.

        Returns (pieces, overlapped_bytes, differing_bytes); pieces are
        (offset, bytes) runs not yet held. Walks only the buffered runs that
        intersect the segment.
        """
        end = off + len(data)
        starts, segs = side.starts, side.segs
        pieces: list[tuple[int, bytes]] = []
        overlapped = conflicts = 0
        cur = off
        i = bisect.bisect_right(starts, off) - 1
        if i < 0:
            i = 0
        while cur < end and i < len(starts):
            s = starts[i]
            if s >= end:
                break
            old = segs[s]
            e = s + len(old)
            if e <= cur:
                i += 1
                continue
            if s > cur:
                pieces.append((cur, data[cur - off:s - off]))
                cur = s
            o_end = min(e, end)
            overlapped += o_end - cur
            conflicts += _differing_bytes(old[cur - s:o_end - s], data[cur - off:o_end - off])
            cur = o_end
            i += 1
        if cur < end:
            pieces.append((cur, data[cur - off:]))
        return pieces, overlapped, conflicts

    def _drain(self, d: Direction, side: _Side, events: list[StreamEvent]) -> None:
        """Deliver the buffered runs that start at the next expected byte, as one Data."""
        starts, segs = side.starts, side.segs
        first = side.next
        out = []
        k = 0
        while k < len(starts) and starts[k] == side.next:
            piece = segs.pop(starts[k])
            out.append(piece)
            side.next += len(piece)
            k += 1
        if not k:
            return
        del starts[:k]
        n = side.next - first
        side.buffered -= n
        self.budget.release(n)
        self.counters.bytes_delivered += n
        events.append(_new_data(d, out[0] if k == 1 else b"".join(out), first))

    def _gap(self, d: Direction, side: _Side, size: int, events: list[StreamEvent]) -> None:
        events.append(Gap(d, size, side.next))
        self.counters.gaps += 1
        self.counters.gap_bytes += size
        side.next += size

    def _skip_hole(self, d: Direction, side: _Side, upto: int,
                   events: list[StreamEvent]) -> None:
        """Give up the hole at the next expected byte: jump to the first data after it.

        The first data is the oldest buffered run or ``upto`` (the segment in
        hand), whichever starts first, so no byte that arrived is thrown away.
        """
        target = min(upto, side.starts[0]) if side.starts else upto
        if target > side.next:
            self._gap(d, side, target - side.next, events)
        self._drain(d, side, events)

    def _fin(self, side: _Side, fin: int) -> None:
        # The first FIN wins, like the bytes; a FIN before bytes already
        # delivered contradicts them and is ignored.
        if side.fin is not None or fin < side.next or fin - side.next > self.limits.max_window:
            return
        side.fin = fin
        # Drop anything buffered past the FIN (it can never be stream data).
        while side.starts and side.starts[-1] + len(side.segs[side.starts[-1]]) > fin:
            s = side.starts[-1]
            old = side.segs[s]
            keep = max(0, fin - s)
            side.buffered -= len(old) - keep
            self.budget.release(len(old) - keep)
            if keep:
                side.segs[s] = old[:keep]
                break
            del side.segs[s]
            side.starts.pop()

    def _check_eof(self, d: Direction, side: _Side, events: list[StreamEvent]) -> None:
        if side.fin is not None and not side.eof and side.next >= side.fin:
            side.eof = True
            events.append(Eof(d))
