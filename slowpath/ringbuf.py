"""The consumer side of a kernel BPF ring buffer (BPF_MAP_TYPE_RINGBUF),
read straight from the map fd.

The slow path reads the ring buffer from its asyncio (uvloop) event loop:
the map fd is pollable (the kernel wakes pollers when data is committed), so
`loop.add_reader` drives the reader and no thread is involved. BCC's
ring-buffer API cannot do this (it polls through its own epoll and C
callbacks, and only for maps it created), and the daemon must also read a
ring it reopened by id or from a pin after a restart; hence this module.

Layout (Documentation/bpf/ringbuf.rst, include/uapi/linux/bpf.h):

* mmap offset 0, one page, read-write: the consumer position (u64). Only
  user space writes it; the kernel reads it to know how much space is free.
* mmap offset page_size, read-only: one page holding the producer position
  (u64), then the data area of ``max_entries`` bytes (a power of two), mapped
  twice in a row, so a record that wraps past the end of the ring is still
  contiguous in memory and can be sliced in one go.
* Positions only grow; ``pos & (size - 1)`` is the offset in the data area.
  Each record starts with an 8-byte header (BPF_RINGBUF_HDR_SZ): a u32
  length whose top two bits are BUSY (reserved, not yet committed) and
  DISCARD (committed as dropped), then a u32 the kernel uses to find its page
  (pg_off, of no use here). Records are padded to 8 bytes.

Consuming is: read the producer position, walk the headers from the
consumer position, stop at the first BUSY record (records are delivered in
reservation order, so a later committed record waits for it), skip DISCARD
ones, copy the payload out and only then advance the consumer position, which
hands the space back to the kernel.
"""
from __future__ import annotations

import asyncio
import mmap
import os
import platform
import select
import sys
import time
from typing import Callable

from datapath import bpfsys
from datapath.bpfsys import BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT, BPF_RINGBUF_HDR_SZ

_LEN_MASK = ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT) & 0xFFFFFFFF
# the only map flag that leaves the layout as described
_LAYOUT_SAFE_FLAGS = bpfsys.BPF_F_NUMA_NODE

# Records handed to the callback per wakeup of the event loop. A ring that
# fills faster than we read would otherwise keep the loop in one callback;
# the fd stays readable (epoll is level-triggered), so the rest comes on the
# loop's next turn, after other ready callbacks ran.
DEFAULT_BATCH = 4096

# Memory ordering. The kernel's producer writes a record, then commits it by
# an atomic exchange on the header (clearing BUSY); it publishes reservations
# with a store-release of the producer position. A consumer must load the
# producer position and the header with acquire semantics (so the payload
# it reads after them is the committed one), and store the consumer position
# with release semantics (so its reads of the payload are done before the
# kernel may reuse the space). Python has no atomics; what it has is plain
# loads and stores through memoryview, each an aligned 4- or 8-byte memcpy
# that the C compiler turns into a single mov, made from a separate step of
# the bytecode interpreter that the compiler cannot reorder or merge.
#
# On x86-64 that is enough: the architecture (TSO) never reorders a load
# with an older load, nor a store with an older load or store, so every plain
# load is already an acquire and every plain store a release; an aligned
# 8-byte access is single-copy atomic. The one reordering TSO allows, a store
# passing a later load, does not lose a wakeup either: after our last store
# of the consumer position the next step is epoll_wait, whose locking is a
# full barrier before the kernel's poll re-reads both positions (and epoll is
# level-triggered here, so a ready fd is re-checked on every wait).
#
# arm64, ppc64le and riscv64 are weakly ordered: loads may pass loads and
# stores may pass loads, so a plain read of the header could see the
# committed length and still read stale payload. There the loads need
# acquire (ldar; lwsync after the load; fence r,rw) and the store release
# (stlr; lwsync before it; fence rw,w): a small C helper, called through
# ctypes or an extension, doing __atomic_load_n(p, __ATOMIC_ACQUIRE) and
# __atomic_store_n(p, v, __ATOMIC_RELEASE). Until that exists the consumer
# refuses to run on anything but x86-64 rather than risk torn records.
_ORDERED_MACHINES = {"x86_64"}


class RingBufferError(RuntimeError):
    """The ring's positions or a record header make no sense (a corrupt ring,
    or a second consumer moving the consumer position under us)."""


class RingBuffer:
    """A BPF ring buffer map, consumed through its mmap'd pages.

    ``owns_fd``: close ``map_fd`` in :meth:`close` (otherwise the caller keeps
    it, e.g. BCC's table or a loader that also pins the map).
    """

    def __init__(self, map_fd: int, *, owns_fd: bool = False):
        if platform.machine() not in _ORDERED_MACHINES:
            raise RingBufferError(
                f"ring buffer consumer: {platform.machine()} is weakly ordered and this "
                f"consumer has no acquire/release accesses for it (see slowpath/ringbuf.py)")
        info = bpfsys.map_info_by_fd(map_fd)
        if info.type != bpfsys.BPF_MAP_TYPE_RINGBUF:
            raise ValueError(f"map {info.name!r} (id {info.id}) has type {info.type}, not RINGBUF")
        if info.flags & ~_LAYOUT_SAFE_FLAGS:
            raise ValueError(f"ring buffer {info.name!r} (id {info.id}) has map flags "
                             f"{info.flags:#x}, whose layout this consumer does not know")
        page = mmap.PAGESIZE
        size = info.max_entries
        if size < page or size & (size - 1):
            raise ValueError(f"ring buffer {info.name!r} (id {info.id}): size {size} "
                             f"is not a power-of-two multiple of the page size")
        self.fd = map_fd
        self.name = info.name
        self.map_id = info.id
        self.size = size
        self.owns_fd = owns_fd
        self.records = 0     # records delivered
        self.bytes = 0       # payload bytes delivered (headers and padding not counted)
        self.discarded = 0   # records the producer discarded, skipped
        self._page = page
        self._epoll: select.epoll | None = None
        self._cons_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._data_map = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED,
                                       mmap.PROT_READ, offset=page)
        except BaseException:
            self._cons_map.close()
            raise
        self._cons = memoryview(self._cons_map)[:8].cast("Q")
        self._prod = memoryview(self._data_map)[:8].cast("Q")
        # The data area (both copies) as u32s: a header's length word is
        # _hdr[offset // 4]; offsets are 8-aligned.
        self._hdr = memoryview(self._data_map)[page:].cast("I")

    @classmethod
    def from_id(cls, map_id: int) -> "RingBuffer":
        """Open the ring buffer with map id ``map_id`` (e.g. one a running
        build uses, or that a restarted daemon finds pinned); owns its fd."""
        fd = bpfsys.map_fd_by_id(map_id)
        try:
            return cls(fd, owns_fd=True)
        except BaseException:
            os.close(fd)
            raise

    def fileno(self) -> int:
        return self.fd

    def __repr__(self) -> str:
        return f"<RingBuffer {self.name!r} id={self.map_id} size={self.size}>"

    # -- positions -----------------------------------------------------------
    def consumer_pos(self) -> int:
        return self._cons[0]

    def producer_pos(self) -> int:
        return self._prod[0]

    def position_views(self) -> tuple[memoryview, memoryview]:
        """(consumer, producer) positions as one-element u64 views of the
        mapped pages, always current. A caller that looks at the ring after
        every packet (replay, after each test run) compares ``prod[0] !=
        cons[0]`` itself and calls drain() only when the kernel wrote: a
        drain of an empty ring costs ~10x the comparison."""
        return self._cons, self._prod

    def pending_bytes(self) -> int:
        """Bytes between the consumer and producer positions: committed,
        discarded and still-reserved records, headers and padding included."""
        return self._prod[0] - self._cons[0]

    # -- reading -------------------------------------------------------------
    def drain(self, max_records: int | None = None) -> list[bytes]:
        """The committed records available now, oldest first (at most
        ``max_records``), each copied out; their space goes back to the kernel."""
        out: list[bytes] = []
        self._consume(out.append, max_records)
        return out

    def take(self) -> bytes | None:
        """The next committed record, copied out and its space given back
        (discarded ones before it skipped), or None when there is none now:
        drain(1)'s record without its list, callback and loop, for a caller
        that looks at the ring after every packet and finds one record
        there (replay: a frame writes one). Same checks as drain()."""
        cons = self._cons[0]
        while True:
            prod = self._prod[0]
            if prod == cons:
                return None
            if cons & 7 or not 0 < prod - cons <= self.size:
                return self._one()      # _consume raises RingBufferError with the positions
            off = cons & (self.size - 1)
            hdr = self._hdr[off >> 2]
            if hdr & (BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT):
                return self._one()      # reserved (None) or discarded (skipped): _consume's way
            length = hdr & _LEN_MASK
            end = cons + ((length + BPF_RINGBUF_HDR_SZ + 7) & ~7)
            if end > prod:
                return self._one()      # RingBufferError: a length past the producer
            at = self._page + BPF_RINGBUF_HDR_SZ + off
            rec = self._data_map[at:at + length]     # a copy (bytes)
            self._cons[0] = end         # release: the copy is done
            self.records += 1
            self.bytes += length
            return rec

    def _one(self) -> bytes | None:
        """take()'s rare cases, by _consume: one record or None, or its error."""
        got: list[bytes] = []
        self._consume(got.append, 1)
        return got[0] if got else None

    def consume(self, callback: Callable[[bytes], object], max_records: int | None = None) -> int:
        """Call ``callback(record)`` for each available committed record, in
        order; returns how many. A record's space is given back before its
        callback runs, so a callback that raises does not see it again: the
        exception propagates and the next call goes on after it."""
        return self._consume(callback, max_records)

    def _consume(self, sink: Callable[[bytes], object], max_records: int | None) -> int:
        limit = sys.maxsize if max_records is None else max_records
        cons_v, prod_v, hdr_v, data = self._cons, self._prod, self._hdr, self._data_map
        mask = self.size - 1
        base = self._page + BPF_RINGBUF_HDR_SZ  # payload offset in _data_map, less the ring offset
        n = nbytes = ndisc = 0
        cons = cons_v[0]
        try:
            # Read the producer position again once caught up: records
            # committed while we were copying are taken in the same call.
            while n < limit:
                prod = prod_v[0]
                if prod == cons:
                    break
                if cons & 7 or not 0 < prod - cons <= self.size:
                    raise RingBufferError(
                        f"ring buffer {self.name!r} (map id {self.map_id}): consumer position "
                        f"{cons} and producer position {prod} are inconsistent (ring size {self.size})")
                while cons < prod and n < limit:
                    off = cons & mask
                    hdr = hdr_v[off >> 2]
                    if hdr & BPF_RINGBUF_BUSY_BIT:
                        return n  # reserved, not committed: everything after it waits
                    length = hdr & _LEN_MASK
                    end = cons + ((length + BPF_RINGBUF_HDR_SZ + 7) & ~7)
                    if end > prod:
                        # A length the kernel cannot have written; following it
                        # would read garbage as headers, or never stop.
                        raise RingBufferError(
                            f"ring buffer {self.name!r} (map id {self.map_id}): record at consumer "
                            f"position {cons} (offset {off}) claims {length} bytes, past the producer "
                            f"position {prod} (ring size {self.size}); header {hdr:#010x}")
                    if hdr & BPF_RINGBUF_DISCARD_BIT:
                        cons = end
                        cons_v[0] = cons
                        ndisc += 1
                        continue
                    rec = data[base + off: base + off + length]  # a copy (bytes)
                    cons = end
                    cons_v[0] = cons  # release: the copy is done, the space is the kernel's again
                    n += 1
                    nbytes += length
                    sink(rec)
            return n
        finally:
            self.records += n
            self.bytes += nbytes
            self.discarded += ndisc

    def poll(self, timeout: float | None = None, max_records: int | None = None) -> list[bytes]:
        """Wait up to ``timeout`` seconds (None: no limit) for records and
        drain them; for callers without an event loop (a replay that runs
        BPF_PROG_TEST_RUN and then reads what the program copied)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._epoll is None:
            self._epoll = select.epoll()
            self._epoll.register(self.fd, select.EPOLLIN)
        while True:
            recs = self.drain(max_records)
            if recs:
                return recs
            # Readiness may also mean only discarded or still-busy records
            # (the kernel counts producer - consumer), so wait again until the
            # deadline rather than return on the first wakeup.
            left = -1 if deadline is None else deadline - time.monotonic()
            if deadline is not None and left <= 0:
                return []
            self._epoll.poll(left)

    # -- life cycle ----------------------------------------------------------
    def close(self) -> None:
        if self._cons_map is None:
            return
        for v in (self._cons, self._prod, self._hdr):
            v.release()
        self._cons_map.close()
        self._data_map.close()
        self._cons_map = self._data_map = None
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self.owns_fd:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "RingBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RingBufferReader:
    """Deliver a ring buffer's records to ``callback`` from an asyncio event
    loop: the map fd is registered with ``loop.add_reader``, so records are
    read on the loop's own thread when the kernel signals data.

    Readiness is level-triggered: while producer != consumer the loop keeps
    calling us, so a batch limit only defers the rest to the next turn. A
    record that is reserved but not yet committed also counts as readable; the
    loop then calls us until the BPF program commits it (it is running on
    another CPU at that moment, so this is microseconds).

    A callback that raises goes to the loop's exception handler and reading
    goes on after its record. A corrupt ring (RingBufferError) stops the
    reader, since the same bytes would fail again on every turn of the loop;
    the error goes to ``on_error`` if given, else to the loop's handler.

    ``many``: given, it gets each wakeup's records as one list instead of
    ``callback`` one at a time (its caller can then act once per batch).
    ``pause_s``: after each wakeup the reader stops watching the fd for
    this long, then looks again: records committed meanwhile wait in the
    ring (nothing is lost; the fd is readable again at once when they are
    there) and come together, one wakeup of this process for all of them
    instead of one per record. For rings whose records may wait that long.
    """

    def __init__(self, rb: RingBuffer, callback: Callable[[bytes], object] | None, *,
                 batch: int = DEFAULT_BATCH,
                 on_error: Callable[[RingBufferError], object] | None = None,
                 many: Callable[[list[bytes]], object] | None = None, pause_s: float = 0.0):
        self.rb = rb
        self.callback = callback
        self.many = many
        self.batch = batch
        self.pause_s = pause_s
        self.on_error = on_error
        self.wakeups = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if self._loop is not None:
            raise RuntimeError(f"reader of {self.rb!r} already started")
        loop = loop or asyncio.get_running_loop()
        # Records already waiting make the fd readable at once: nothing is
        # missed between opening the ring and starting.
        loop.add_reader(self.rb.fileno(), self._readable)
        self._loop = loop

    def _readable(self) -> None:
        self.wakeups += 1
        try:
            if self.many is None:
                self.rb.consume(self.callback, self.batch)
            else:
                raws = self.rb.drain(self.batch)
                if raws:
                    self.many(raws)
        except RingBufferError as e:
            self.stop()
            if self.on_error is None:
                raise
            self.on_error(e)
            return
        finally:
            if self.pause_s and self._loop is not None and self._timer is None:
                self._loop.remove_reader(self.rb.fileno())
                self._timer = self._loop.call_later(self.pause_s, self._resume)

    def _resume(self) -> None:
        self._timer = None
        if self._loop is not None:
            self._loop.add_reader(self.rb.fileno(), self._readable)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is not None:
            self._loop.remove_reader(self.rb.fileno())
            self._loop = None


async def consume(rb: RingBuffer, callback: Callable[[bytes], object], *,
                  batch: int = DEFAULT_BATCH) -> None:
    """Run a :class:`RingBufferReader` on the running loop until cancelled
    (a task form, for asyncio.TaskGroup); a corrupt ring ends it with
    RingBufferError."""
    loop = asyncio.get_running_loop()
    failed = loop.create_future()
    reader = RingBufferReader(rb, callback, batch=batch, on_error=failed.set_exception)
    reader.start(loop)
    try:
        await failed
    finally:
        reader.stop()
