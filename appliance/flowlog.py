"""Flow records: every session's end, from the kernel, to the EVE sinks.

The kernel writes one record (bpf/lib/maps.h struct ms_flow_event) to the
ms_events ring buffer when a session ends (TCP close, timeout, sweep,
table-full refusal, revocation, ...; datapath/flowevents.py). The daemon
reads the ring on its event loop (:meth:`FlowLog.start`) and:

* a session no slow-path worker inspected: writes its EVE ``flow`` record
  here (slowpath/flowend.py), from the kernel's counters;
* an inspected session: hands the kernel's record to the worker that held it
  (``forward(worker, raws)``, struct ms_flow_event.worker), whose engine
  closes its flow and writes the one flow record with its own flow id,
  app protocol, alerts and verdict (Engine.session_end). If the worker
  cannot take it (dead, restarting, its socket full), the record is written
  here from the kernel's side alone: one record per session either way.

Under `microseg run` (datapath setting ``worker_flow_ends``, bpf/lib/maps.h
MS_CFG_WORKER_ENDS) the kernel writes an inspected session's end into its
worker's ring instead (struct ms_worker_end, after the session's payload
records): the worker logs it as it reads it (:func:`worker_end`), and none
of it passes through here. Such an end comes here only when its worker's
heartbeat is 0 or stale (dead, stopping) or its ring is full, and one left
in a ring at stop is written here (:meth:`FlowLog.worker_leftovers`).

Records that could not be written to the ring are counted by the kernel
(ms_events_lost, microseg_flow_events_lost_total). Nothing reads the ring
without `microseg run`: `microseg up` alone logs no sessions (their ends
are counted as lost once the ring is full).
"""
from __future__ import annotations

import bisect
import logging
import struct
from array import array
from collections.abc import Callable

from datapath.flowevents import FlowEnd, FlowEventDecoder, WallClock, event_type, flow_event_type, lost_counts
from datapath.enums import EventType
from datapath.source import header_defines
from slowpath.flowend import POL_INSPECT, flow_end_record
from slowpath.ringbuf import RingBuffer, RingBufferError, RingBufferReader

log = logging.getLogger("microseg.flowlog")

RING = "ms_events"
# The daemon looks at the ring at most this often: the kernel's session ends
# wait in it meanwhile and are read, decoded and handed to their workers
# together (RingBufferReader pause_s), one wakeup of the daemon and one
# message per worker for all of them. Read one by one, each session end
# woke the daemon and then, by its own message, its worker (~100 us of the
# sender's CPU per message on this VM: docs/performance.md 4.6.1). A flow
# record is this much later at most; no verdict waits for it.
FLOW_END_PAUSE_S = 0.005

# struct ms_worker_end's mark (bpf/lib/maps.h): the first 8 bytes of a record
# in a worker's ring, a payload record's ts_ns, MS_WORKER_END_MARK | the
# worker's index in a session end's.
_MARK = struct.Struct("<Q")
WORKER_END_MARK = header_defines("MS_WORKER_")["END_MARK"]


def worker_end(raw: bytes, size: int) -> bytes | None:
    """The session end (struct ms_flow_event, ``size`` bytes: the decoder's)
    that ``raw``, a record read from a worker's ring, carries; None for a
    payload record. Only records of the end's length are looked into."""
    if len(raw) != _MARK.size + size or not _MARK.unpack_from(raw)[0] & WORKER_END_MARK:
        return None
    return raw[_MARK.size:]


class FlowLog:
    def __init__(self, fp, emit: Callable[[dict], object], *, app_names: dict[int, str] | None = None,
                 forward: Callable[[int, list[bytes]], int] | None = None, wall: WallClock | None = None,
                 pause_s: float = FLOW_END_PAUSE_S):
        self.fp = fp
        self.emit = emit
        self.forward = forward
        self.app_names = app_names or {}
        self.wall = wall or WallClock()
        self.pause_s = pause_s
        self.decoder = FlowEventDecoder(flow_event_type(fp))
        self.rb = RingBuffer(fp.table(RING).map_fd)
        self.reader: RingBufferReader | None = None
        self.records = 0          # flow records written here
        self.forwarded = 0        # inspected sessions' ends handed to their worker
        self.bad = 0              # records that could not be decoded
        self.other = 0            # records of other types (table pressure: counted in ms_pressure)

    def start(self, loop) -> None:
        self.reader = RingBufferReader(self.rb, None, many=self.handle, pause_s=self.pause_s,
                                       on_error=self._ring_error)
        self.reader.start(loop)

    def _ring_error(self, e: RingBufferError) -> None:
        log.error("ms_events ring unreadable, flow records stop: %s", e)

    def drain(self) -> int:
        """Everything waiting now (before the workers stop, at stop, and
        for callers without a loop)."""
        raws = self.rb.drain()
        if raws:
            self.handle(raws)
        return len(raws)

    def handle(self, raws: list[bytes]) -> None:
        # An inspected session's end goes to its worker as it came: the
        # worker decodes it, so the daemon reads only its action and worker
        # (FlowEventDecoder.route), not the whole record twice over.
        by_worker: dict[int, list[bytes]] = {}
        route = self.decoder.route if self.forward is not None else None
        for raw in raws:
            if event_type(raw) != EventType.EVENT_FLOW_END:
                self.other += 1
                continue
            if route is not None:
                r = route(raw)
                if r is not None and r[0] == POL_INSPECT:
                    by_worker.setdefault(r[1], []).append(raw)
                    continue
            self._decode_write(raw)
        for worker, items in by_worker.items():
            taken = self.forward(worker, items)
            self.forwarded += taken
            for raw in items[taken:]:
                self._decode_write(raw)

    def _decode_write(self, raw: bytes) -> None:
        try:
            ev = self.decoder.decode(raw)
        except ValueError as e:
            self.bad += 1
            log.warning("%s", e)
            return
        self._write(ev)

    def worker_leftovers(self, ring_fds: list[int]) -> int:
        """At stop, the workers gone: the session ends still in their rings
        (committed after a worker's last read, or in the ring of a worker
        that died and was not started again), written here from the
        kernel's side alone; the payload records around them are dropped
        (nobody inspects them now). Returns how many were written."""
        n = 0
        for fd in ring_fds:
            rb = RingBuffer(fd)
            try:
                raws = rb.drain()
            finally:
                rb.close()
            for raw in raws:
                end = worker_end(raw, self.decoder.size)
                if end is not None:
                    self._decode_write(end)
                    n += 1
        return n

    def sessions_ended(self, entries: list[tuple[bytes, bytes]]) -> None:
        """Sessions the batch sweep removed (datapath/sweeper.py on_ended:
        kernels without the kernel sweep, which writes its own records):
        (canonical key, value) each. Written here from the entry; the worker
        of an inspected one is not known in user space, so its engine's side
        (flow id, alerts) is not in the record."""
        from datapath.sessions import WIDE_KEY_MAP
        t = self.fp.table(WIDE_KEY_MAP)
        for k, v in entries:
            self._write(self.decoder.from_session(t.Key.from_buffer_copy(k), t.Leaf.from_buffer_copy(v), "swept"))

    def _write(self, ev) -> None:
        self.emit(flow_end_record(ev, self.wall, app_names=self.app_names))
        self.records += 1

    def lost(self) -> int:
        """Session ends the kernel could not write (ring full)."""
        return lost_counts(self.fp).get("flow_end", 0)

    def stop(self) -> None:
        if self.reader is not None:
            self.reader.stop()
            self.reader = None
        try:
            self.drain()
        except RingBufferError:
            pass
        self.rb.close()


# CaptureTime's arrays: the session clock's ns (CLOCK_MONOTONIC, signed 64
# bits like the int64 the kernel's u64 stamps fit in for centuries) and the
# capture's times (Python floats are C doubles).
TICK_TYPECODE, TIME_TYPECODE = "q", "d"


class CaptureTime:
    """Session-clock ns -> a replayed capture's time. A replay runs frames far
    faster than they were captured, and the kernel stamps sessions with its
    own clock: the session clock is read before each frame runs, and a stamp
    belongs to the last frame whose reading is not after it. With the
    precise clock (replay_config() turns the coarse one off) every frame has
    its own reading and the mapping is exact. With the coarse one (a build
    made without replay_config(), as the tests' shared build) frames that
    ran within one tick share it: a session's start is then the tick's
    first frame, its end the tick's last."""

    def __init__(self, coarse: bool):
        import time
        # Machine arrays, not lists: a replay appends a reading and a time
        # for every frame and keeps them to its end, which in lists are an
        # int and a float object kept alive and two pointers (~72 bytes a
        # frame: ~6.5 MB of 4.11's 90,100-frame capture that the heap grows
        # by, new pages the kernel must fault in); in arrays 16 bytes a
        # frame, and the two objects are freed as the frame ends (their
        # memory reused by the next). Same values: int64 ns, C doubles
        # (what Python floats are).
        self.ticks: array[int] = array(TICK_TYPECODE)
        self.first: array[float] = array(TIME_TYPECODE)
        self.last: array[float] = array(TIME_TYPECODE)
        if coarse:
            clock = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)
            self._now = lambda: time.clock_gettime_ns(clock)
        else:
            # Every frame its own reading of CLOCK_MONOTONIC (bpf_ktime_get_ns'
            # clock): a tick's first frame is its last, one array serves both,
            # and frame() is two appends (it runs before every frame).
            self.last = self.first
            self.frame = self._frame_precise
            self._tick, self._stamp, self._now = self.ticks.append, self.first.append, time.monotonic_ns

    def _frame_precise(self, ts: float) -> None:
        self._tick(self._now())
        self._stamp(ts)

    def frame(self, ts: float) -> None:
        """Before a frame of capture time ``ts`` runs."""
        t = self._now()
        if self.ticks and self.ticks[-1] == t:
            self.last[-1] = ts
        else:
            self.ticks.append(t)
            self.first.append(ts)
            self.last.append(ts)

    def _at(self, ns: int, last: bool) -> float:
        i = bisect.bisect_right(self.ticks, ns) - 1
        if i < 0:
            return self.first[0] if self.first else 0.0
        return self.last[i] if last else self.first[i]

    def convert(self, ev):
        """``ev`` (a FlowEnd) with its times in capture ns, for wall() below.
        Its fields with the two times replaced by index, not through
        _replace() (keyword pops over every field: one of these per session)."""
        f = list(ev)
        f[_FIRST_SEEN] = round(self._at(ev.first_seen_ns, False) * 1e9)
        f[_LAST_SEEN] = round(self._at(ev.last_seen_ns, True) * 1e9)
        return tuple.__new__(FlowEnd, f)

    @staticmethod
    def wall(ns: int) -> float:
        return ns / 1e9


# Where FlowEnd holds its two session-clock times (CaptureTime.convert).
_FIRST_SEEN, _LAST_SEEN = FlowEnd._fields.index("first_seen_ns"), FlowEnd._fields.index("last_seen_ns")


class ReplayFlows:
    """Flow records in `microseg replay`: the kernel's session ends after each
    frame, and at the end every session still open (reason "shutdown"), to
    the replay's Engine (inspected sessions: one record with its side) or
    straight to EVE. One flow record per session of the capture."""

    def __init__(self, fp, engine, emit: Callable[[dict], object], app_names: dict[int, str]):
        self.fp, self.engine, self.emit, self.app_names = fp, engine, emit, app_names
        self.decoder = FlowEventDecoder(flow_event_type(fp))
        self.rb = RingBuffer(fp.table(RING).map_fd)
        self.times = CaptureTime(fp.features.coarse_clock)
        self.records = 0
        self.rb.drain()                   # ends of sessions from before this replay

    def _end(self, ev) -> None:
        ev = self.times.convert(ev)
        self.records += 1
        if ev.action == POL_INSPECT:
            self.engine.session_end(ev, CaptureTime.wall)
        else:
            self.emit(flow_end_record(ev, CaptureTime.wall, app_names=self.app_names))

    def drain(self) -> None:
        for raw in self.rb.drain():
            ev = self.decoder.decode(raw)
            if ev is not None:
                self._end(ev)

    def flush(self) -> None:
        """Every session still in the tables: ended by the replay's end.
        The tables are read a batch at a time (BPF_MAP_LOOKUP_BATCH:
        datapath/sessions.py read_map), not through BCC's iteration, a
        next-key and a lookup syscall and their ctypes objects per session
        (~5.4 against ~2.2 us a session, thousands at the end of a capture)."""
        import numpy as np

        from datapath.sessions import FLOW_FLAGS, FLOW_TABLES, WIDE_KEY_MAP, is_v4_map, read_map, widen_keys
        self.drain()
        logged = FLOW_FLAGS["LOGGED"]
        ends = []
        wide = self.fp.table(WIDE_KEY_MAP).Key
        for name in FLOW_TABLES:
            t = self.fp.table(name)
            keys, vals = read_map(t.map_fd, t.Key, t.Leaf)
            if is_v4_map(name):
                keys = widen_keys(keys, np.dtype(wide))   # records name sessions by the canonical key
            kbuf, vbuf = keys.tobytes(), vals.tobytes()
            ksize, vsize = keys.dtype.itemsize, vals.dtype.itemsize
            # Each entry read from the bytes by one struct unpack (from_entry),
            # not through a ctypes copy of its key and value (~1 us a session).
            entry = self.decoder.from_entry
            for i in np.flatnonzero((vals["flags"] & logged) == 0).tolist():
                k, v = i * ksize, i * vsize
                ends.append(entry(wide, t.Leaf, kbuf[k:k + ksize], vbuf[v:v + vsize], "shutdown"))
        for ev in sorted(ends, key=lambda e: e.first_seen_ns):
            self._end(ev)

    def close(self) -> None:
        self.rb.close()
