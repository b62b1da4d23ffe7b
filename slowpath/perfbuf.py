"""The payload records' fallback channel: a perf buffer (one ring per CPU),
for kernels without the BPF ring buffer (before 5.8) or a build with
`compat: {ringbuf: off}` (datapath/compat.py).

Same surface as slowpath/ringbuf.py (``drain()``, ``close()``, and a reader
that registers with the asyncio loop), so the engine does not care which
one it is fed from. BCC opens the per-CPU rings (perf_event_open with
PERF_COUNT_SW_BPF_OUTPUT, mmap'd); each ring's fd goes to the event loop,
and a readable fd is read with libbcc's perf_reader_event_read, which runs
the callback per sample. Lost samples (a ring full) are counted.
"""
from __future__ import annotations

import ctypes

from bcc.libbcc import lib

lib.perf_reader_event_read.argtypes = [ctypes.c_void_p]
lib.perf_reader_event_read.restype = None
# Pages per CPU ring (a power of two): 256 x 4 KiB = 1 MiB a CPU, about the
# same total as the ring buffer's default on a few CPUs.
PAGES_PER_CPU = 256


class PerfBuffer:
    def __init__(self, table, page_cnt: int = PAGES_PER_CPU):
        self.table = table
        self._pending: list[bytes] = []
        self.records = 0
        self.lost = 0
        table.open_perf_buffer(self._sample, page_cnt=page_cnt, lost_cb=self._lost)
        self.readers = [r for (tid, _cpu), r in table.bpf.perf_buffers.items() if tid == id(table)]

    def _sample(self, cpu, data, size):
        self._pending.append(ctypes.string_at(data, size))
        self.records += 1

    def _lost(self, n):
        self.lost += n

    def fds(self) -> list[int]:
        return [lib.perf_reader_fd(r) for r in self.readers]

    def read(self, reader) -> list[bytes]:
        lib.perf_reader_event_read(reader)
        out, self._pending = self._pending, []
        return out

    def drain(self, max_records=None) -> list[bytes]:
        for r in self.readers:
            lib.perf_reader_event_read(r)
        out, self._pending = self._pending, []
        return out

    def pending_bytes(self) -> int:
        return 0      # a perf ring does not say without reading it

    def close(self) -> None:
        """Close the rings before their BPF object goes (BCC would try to
        after the map is closed, and complain)."""
        for key in list(getattr(self.table, "_open_key_fds", {})):
            try:
                del self.table[key]   # BCC keys its open rings by CPU number
            except (KeyError, OSError):
                pass


# uvloop (libuv) does not report perf event fds as readable here (the
# standard asyncio loop does), so the reader also drains on a timer of the
# event loop: a sample waits at most this long. It is the fallback; the
# ring buffer path has no such delay.
DRAIN_INTERVAL_S = 0.02


class PerfBufferReader:
    """Each CPU ring's fd on the event loop, and a drain timer on the same
    loop (no thread); ``callback(record)`` per sample."""

    def __init__(self, pb: PerfBuffer, callback):
        self.pb, self.callback = pb, callback
        self.loop = None
        self._timer = None

    def start(self, loop=None):
        import asyncio
        self.loop = loop or asyncio.get_event_loop()
        for reader, fd in zip(self.pb.readers, self.pb.fds()):
            self.loop.add_reader(fd, self._ready, reader)
        self._tick()

    def _ready(self, reader):
        for raw in self.pb.read(reader):
            self.callback(raw)

    def _tick(self):
        for raw in self.pb.drain():
            self.callback(raw)
        self._timer = self.loop.call_later(DRAIN_INTERVAL_S, self._tick)

    def stop(self):
        if self.loop is not None:
            if self._timer is not None:
                self._timer.cancel()
            for fd in self.pb.fds():
                self.loop.remove_reader(fd)
