"""slowpath/ringbuf.py against the real kernel ring buffer.

A tiny BCC program copies the bytes of the packet it is run on (with
BPF_PROG_TEST_RUN) into a ring-buffer record, so every record's size and
content come from the test. The packet's first 14 bytes (the Ethernet
header the test run insists on) carry the control: u16 record length, u8
mode (0: bpf_ringbuf_output of the bytes after the header; 1: reserve a
fixed-size record and discard it). The program returns the helper's result,
so a full ring shows as -EAGAIN.

Some tests write the consumer position themselves (through their own mmap
of the consumer page) to point the reader into a record's payload, where
the test placed a header of its choosing: that is how a still-busy record and
a corrupt length are shown to a real mapping. They put the position back
(at the producer's) afterwards.
"""
from __future__ import annotations

import asyncio
import errno
import mmap
import os
import random
import select
import struct
import threading
import time

import pytest

from datapath import bpfsys
from datapath.bpfsys import BPF_RINGBUF_BUSY_BIT
from slowpath.ringbuf import (RingBuffer, RingBufferError, RingBufferReader,
                              consume)

RB_PAGES = 4          # 16 KiB: small, so wrap-around and a full ring are quick to reach
BIG_PAGES = 1024      # 4 MiB: for the drain-rate measurement
MAX_REC = 4096        # the program's scratch buffer
MAX_PAYLOAD = 3000    # what a test run takes: the packet must fit one page with skb head- and tailroom
DISCARD_SZ = 56       # the discarded record's size (64 bytes with its header)

SRC = r"""
#include <uapi/linux/bpf.h>

#define MAX_REC %(max_rec)d
BPF_RINGBUF_OUTPUT(rb, %(rb_pages)d);
BPF_RINGBUF_OUTPUT(big, %(big_pages)d);

struct scratch_t { u8 buf[MAX_REC]; };
BPF_PERCPU_ARRAY(scratch, struct scratch_t, 1);
struct discard_t { u8 b[%(discard)d]; };

/* The record of this packet in the scratch buffer; its length, or < 0. */
static __always_inline int fill(struct __sk_buff *skb, struct scratch_t **out, u8 *mode)
{
    u8 ctl[4] = {};
    if (bpf_skb_load_bytes(skb, 0, ctl, sizeof(ctl)) < 0)
        return -1;
    u32 len = ctl[0] | ((u32)ctl[1] << 8);
    *mode = ctl[2];
    int zero = 0;
    struct scratch_t *s = scratch.lookup(&zero);
    if (!s)
        return -2;
    *out = s;
    if (len == 0)
        return 0;
    if (len > MAX_REC)
        return -3;
    if (bpf_skb_load_bytes(skb, 14, s->buf, len) < 0)
        return -4;
    return len;
}

int emit(struct __sk_buff *skb)
{
    struct scratch_t *s = 0;
    u8 mode = 0;
    int len = fill(skb, &s, &mode);
    if (len < 0 || !s)
        return len < 0 ? len : -2;
    if (mode == 1) {
        struct discard_t *d = rb.ringbuf_reserve(sizeof(struct discard_t));
        if (!d)
            return -11;  /* -EAGAIN, as ringbuf_output says a full ring */
        __builtin_memset(d, 0xAB, sizeof(*d));
        rb.ringbuf_discard(d, 0);
        return 0;
    }
    /* BCC wants a struct pointer here (the record type), not the array. */
    return rb.ringbuf_output(s, len & (2 * MAX_REC - 1), 0);
}

int emit_big(struct __sk_buff *skb)
{
    struct scratch_t *s = 0;
    u8 mode = 0;
    int len = fill(skb, &s, &mode);
    if (len < 0 || !s)
        return len < 0 ? len : -2;
    return big.ringbuf_output(s, len & (2 * MAX_REC - 1), 0);
}
""" % {"max_rec": MAX_REC, "rb_pages": RB_PAGES, "big_pages": BIG_PAGES, "discard": DISCARD_SZ}


def frame(payload: bytes, mode: int = 0) -> bytes:
    return len(payload).to_bytes(2, "little") + bytes([mode, 0]) + bytes(10) + payload


def total(length: int) -> int:
    """Ring bytes a record of ``length`` takes: header, payload, padding to 8."""
    return (length + 8 + 7) & ~7


class Prog:
    def __init__(self):
        from bcc import BPF
        self.bpf = BPF(text=SRC.encode())
        self.emit_fd = self.bpf.load_func(b"emit", BPF.SCHED_CLS).fd
        self.big_fd = self.bpf.load_func(b"emit_big", BPF.SCHED_CLS).fd
        self.rb_fd = self.bpf[b"rb"].map_fd
        self.big_map_fd = self.bpf[b"big"].map_fd

    def run(self, payload: bytes, mode: int = 0, *, big: bool = False, repeat: int = 1) -> int:
        r = bpfsys.prog_test_run(self.big_fd if big else self.emit_fd, frame(payload, mode), repeat=repeat)
        return r.retval - (1 << 32) if r.retval >= 1 << 31 else r.retval

    def emit(self, payload: bytes) -> None:
        assert self.run(payload) == 0, f"ringbuf_output of {len(payload)} bytes failed"

    def discard(self) -> int:
        return self.run(b"", mode=1)


@pytest.fixture(scope="module")
def prog():
    if os.geteuid() != 0:
        pytest.fail("ring buffer tests load BPF programs and need root (CAP_BPF)")
    p = Prog()
    yield p
    p.bpf.cleanup()


@pytest.fixture
def rb(prog):
    r = RingBuffer(prog.rb_fd)
    r.drain()  # whatever an earlier test left
    yield r
    r.close()


@pytest.fixture
def cons_page(prog):
    """The consumer position, written the way a corrupt or second consumer would."""
    m = mmap.mmap(prog.rb_fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def set_pos(v: int) -> None:
        struct.pack_into("<Q", m, 0, v)
    yield set_pos
    m.close()


def payloads(sizes, seed=1):
    rnd = random.Random(seed)
    return [rnd.randbytes(n) for n in sizes]


# -- records -----------------------------------------------------------------

def test_records_in_order_with_exact_bytes(prog, rb):
    sizes = [1, 7, 8, 9, 13, 0, 64, 100, 255, 1000, 3, MAX_PAYLOAD]
    want = payloads(sizes)
    c0 = rb.consumer_pos()
    for p in want:
        prog.emit(p)
    assert rb.pending_bytes() == sum(total(n) for n in sizes)
    got = rb.drain()
    assert got == want
    assert all(type(r) is bytes for r in got)
    assert rb.consumer_pos() - c0 == sum(total(n) for n in sizes)
    assert rb.pending_bytes() == 0
    assert (rb.records, rb.bytes, rb.discarded) == (len(sizes), sum(sizes), 0)
    assert rb.drain() == []


def test_max_records_and_consume(prog, rb):
    want = payloads([10, 20, 30, 40, 50])
    for p in want:
        prog.emit(p)
    assert rb.drain(max_records=2) == want[:2]
    assert rb.drain(max_records=0) == []
    seen = []
    assert rb.consume(seen.append) == 3
    assert seen == want[2:]


def test_position_views_show_when_the_kernel_wrote(prog, rb):
    # replay reads a ring only when prod[0] != cons[0] after a test run:
    # the views must be the live positions, not a copy taken once.
    cons, prod = rb.position_views()
    assert prod[0] == cons[0] == rb.consumer_pos()
    prog.emit(b"x" * 10)
    assert prod[0] != cons[0] and prod[0] - cons[0] == total(10) == rb.pending_bytes()
    prog.discard()                       # a discarded record moves the producer too
    assert rb.drain() == [b"x" * 10]
    assert prod[0] == cons[0] == rb.consumer_pos()


def test_callback_that_raises_does_not_see_its_record_again(prog, rb):
    want = payloads([5, 6, 7])
    for p in want:
        prog.emit(p)
    seen = []

    def cb(rec):
        seen.append(rec)
        if len(seen) == 2:
            raise ValueError("parser failed")
    with pytest.raises(ValueError):
        rb.consume(cb)
    assert rb.records == 2
    rb.consume(cb)
    assert seen == want


def test_discarded_records_are_skipped(prog, rb):
    a, b, c = payloads([11, 1, 300])
    c0 = rb.consumer_pos()
    prog.emit(a)
    assert prog.discard() == 0
    prog.emit(b)
    assert prog.discard() == 0
    assert prog.discard() == 0
    prog.emit(c)
    assert rb.drain() == [a, b, c]
    assert rb.discarded == 3 and rb.records == 3
    assert rb.consumer_pos() - c0 == total(11) + total(1) + total(300) + 3 * total(DISCARD_SZ)
    # only discarded records: readable, nothing to deliver, space given back
    prog.discard()
    assert rb.pending_bytes() == total(DISCARD_SZ)
    assert rb.drain() == [] and rb.pending_bytes() == 0


def test_take_gives_drains_records_one_at_a_time(prog, rb):
    """take(): the next record as drain() gives it (discarded ones skipped,
    counters kept), None when none is there; replay takes a frame's one
    record this way."""
    a, b, c = payloads([11, 0, MAX_PAYLOAD], seed=9)
    c0 = rb.consumer_pos()
    assert rb.take() is None
    prog.emit(a)
    prog.discard()
    prog.emit(b)
    prog.emit(c)
    prog.discard()
    assert [rb.take(), rb.take(), rb.take()] == [a, b, c]
    assert rb.take() is None and rb.pending_bytes() == 0    # the trailing discard given back
    assert (rb.records, rb.bytes, rb.discarded) == (3, 11 + MAX_PAYLOAD, 2)
    assert rb.consumer_pos() - c0 == total(11) + total(0) + total(MAX_PAYLOAD) + 2 * total(DISCARD_SZ)
    rnd = random.Random(11)        # round the ring a few times: records across its end too
    for _ in range(4 * rb.size // MAX_PAYLOAD):
        p = rnd.randbytes(rnd.randint(0, MAX_PAYLOAD))
        prog.emit(p)
        got = rb.take()
        assert got == p and type(got) is bytes


def test_take_stops_and_fails_as_drain_does(prog, rb, cons_page):
    c = rb.consumer_pos()
    prog.emit(struct.pack("<II", 16 | BPF_RINGBUF_BUSY_BIT, 0) + b"z" * 16)
    cons_page(c + 8)
    try:
        assert rb.take() is None and rb.consumer_pos() == c + 8     # reserved: waits
    finally:
        cons_page(rb.producer_pos())
    c = rb.consumer_pos()
    prog.emit(struct.pack("<II", 5000, 0) + bytes(16))
    cons_page(c + 8)
    try:
        with pytest.raises(RingBufferError, match=f"position {c + 8}"):
            rb.take()
        assert rb.consumer_pos() == c + 8
        cons_page(c + 12)
        with pytest.raises(RingBufferError, match="inconsistent"):
            rb.take()
    finally:
        cons_page(rb.producer_pos())


def test_wrap_around_and_a_record_straddling_the_end(prog, rb):
    rnd = random.Random(7)
    size, mask = rb.size, rb.size - 1
    sent = got = 0
    straddled = []
    while sent < 4 * size or not straddled:
        # a few records, then a drain; each burst fits the ring
        burst = []
        room = size - rb.pending_bytes()
        while True:
            n = rnd.choice([rnd.randint(0, 64), rnd.randint(65, 1500), rnd.randint(1501, MAX_PAYLOAD)])
            if total(n) > room // 2 or len(burst) == 6:
                break
            room -= total(n)
            burst.append(rnd.randbytes(n))
        # and once in a while one that is made to cross the end of the ring
        off = (rb.consumer_pos() + size - room) & mask   # where the next record starts
        n = size - off + 100 - 8                         # 100 bytes past the end
        if not straddled and n <= MAX_PAYLOAD and total(n) <= room:
            burst.append(rnd.randbytes(n))
        pos = rb.consumer_pos()
        for p in burst:
            start = pos & mask
            if start + 8 < size < start + 8 + len(p):   # payload on both sides of the end
                straddled.append(len(p))
            pos += total(len(p))
            prog.emit(p)
        assert rb.drain() == burst
        sent += sum(total(len(p)) for p in burst)
        got += len(burst)
    assert straddled, "no record crossed the end of the ring"
    assert rb.records == got and rb.pending_bytes() == 0


def test_full_ring_fails_in_bpf_then_drains_and_is_usable(prog, rb):
    big = payloads([1000] * 64, seed=3)
    want = []
    for p in big:                       # 1000-byte records until one does not fit
        if prog.run(p) == -errno.EAGAIN:
            break
        want.append(p)
    assert len(want) == rb.size // total(1000)
    for p in payloads([8] * 64, seed=4):  # then 8-byte ones into the tail
        if prog.run(p) == -errno.EAGAIN:
            break
        want.append(p)
    # the kernel keeps producer - consumer below the ring size, so the record
    # that would fill it to the last byte is refused too
    assert rb.size - rb.pending_bytes() == total(8)
    assert prog.discard() == -errno.EAGAIN            # ringbuf_reserve fails too
    assert rb.drain() == want
    assert rb.pending_bytes() == 0
    again = payloads([1000, 2000, MAX_PAYLOAD], seed=5)
    for p in again:
        prog.emit(p)
    assert rb.drain() == again


# -- readiness -----------------------------------------------------------------

def test_epoll_readiness(prog, rb):
    ep = select.epoll()
    try:
        ep.register(rb.fileno(), select.EPOLLIN)
        assert ep.poll(0) == []
        prog.emit(b"wake up")
        assert ep.poll(2.0) == [(rb.fileno(), select.EPOLLIN)]
        assert rb.drain() == [b"wake up"]
        assert ep.poll(0) == []
    finally:
        ep.close()


def test_sync_poll(prog, rb):
    t0 = time.monotonic()
    assert rb.poll(0.05) == []
    assert time.monotonic() - t0 >= 0.04
    prog.emit(b"replayed")
    assert rb.poll(2.0) == [b"replayed"]
    prog.discard()
    assert rb.poll(0.02) == []  # readable, but only a discarded record


def _run_uvloop(coro_fn):
    import uvloop
    return uvloop.run(coro_fn())


def test_asyncio_reader_on_uvloop_without_threads(prog, rb):
    threads = threading.active_count()
    early = payloads([3, 30, 300], seed=5)
    later = payloads([random.Random(i).randint(0, 2000) for i in range(60)], seed=6)
    for p in early:       # waiting before the reader starts: delivered at once
        prog.emit(p)
    got, where = [], set()

    async def main():
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        done = asyncio.Event()

        def cb(rec):
            got.append(rec)
            where.add(threading.get_ident())
            if len(got) == len(early) + len(later):
                done.set()
        reader = RingBufferReader(rb, cb, batch=7)
        reader.start()
        try:
            await asyncio.sleep(0)
            for p in later:
                while rb.pending_bytes() > rb.size // 2:
                    await asyncio.sleep(0)  # the loop reads, 7 records a turn
                prog.emit(p)
            await asyncio.wait_for(done.wait(), 5)
            assert threading.active_count() == threads
        finally:
            reader.stop()
        return reader.wakeups

    wakeups = _run_uvloop(main)
    assert got == early + later
    assert where == {threading.get_ident()}
    assert wakeups >= (len(early) + len(later)) // 7
    assert threading.active_count() == threads


def test_consume_task_until_cancelled(prog, rb):
    want = payloads([8, 16, 24], seed=8)

    async def main():
        got = []
        task = asyncio.create_task(consume(rb, got.append))
        await asyncio.sleep(0)
        for p in want:
            prog.emit(p)
        for _ in range(200):
            if len(got) == len(want):
                break
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        prog.emit(b"after stop")      # the reader is gone: nobody takes it
        await asyncio.sleep(0.02)
        return got

    assert _run_uvloop(main) == want
    assert rb.drain() == [b"after stop"]


def test_a_callback_that_raises_does_not_stop_the_reader(prog, rb):
    want = payloads([4, 5, 6, 7], seed=9)
    got, handled = [], []

    def cb(rec):
        got.append(rec)
        if len(got) == 2:
            raise ValueError("parser failed")

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda lp, ctx: handled.append(ctx.get("exception")))
        reader = RingBufferReader(rb, cb)
        reader.start()
        for p in want:
            prog.emit(p)
        for _ in range(200):
            if len(got) == len(want):
                break
            await asyncio.sleep(0.005)
        reader.stop()

    _run_uvloop(main)
    assert got == want
    assert [type(e) for e in handled] == [ValueError]


def test_paused_reader_takes_what_came_meanwhile_in_one_batch(prog, rb):
    # pause_s: after a wakeup the reader leaves the fd alone; records
    # committed meanwhile wait in the ring (none lost) and come together.
    first, meanwhile, after = payloads([10], seed=11), payloads([20] * 20, seed=12), payloads([5] * 5, seed=13)

    async def wait_for(cond):
        deadline = time.monotonic() + 5
        while not cond() and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    async def paused_for_good():
        batches = []
        reader = RingBufferReader(rb, None, many=batches.append, pause_s=3600)
        reader.start()
        prog.emit(first[0])
        await wait_for(lambda: batches)
        for p in meanwhile:
            prog.emit(p)
        for _ in range(20):
            await asyncio.sleep(0.002)
        reader.stop()               # cancels the pause: nothing runs later
        await asyncio.sleep(0.01)
        return batches, reader.wakeups

    batches, wakeups = _run_uvloop(paused_for_good)
    assert batches == [first] and wakeups == 1
    assert rb.drain() == meanwhile      # still in the ring: the paused reader did not take them

    async def resumed():
        batches = []
        for p in meanwhile:         # waiting before start: one wakeup, one batch
            prog.emit(p)
        reader = RingBufferReader(rb, None, many=batches.append, pause_s=0.02)
        reader.start()
        await wait_for(lambda: batches)
        for p in after:             # during or after the pause: read when it ends
            prog.emit(p)
        await wait_for(lambda: sum(map(len, batches)) == len(meanwhile) + len(after))
        reader.stop()
        return batches

    batches = _run_uvloop(resumed)
    assert batches[0] == meanwhile
    assert [r for b in batches[1:] for r in b] == after


# -- stop conditions and corruption ------------------------------------------------

def test_busy_record_stops_the_drain(prog, rb, cons_page):
    # A record whose payload starts with a header saying "reserved, 16 bytes,
    # not committed", and the consumer position pointed at that payload.
    c = rb.consumer_pos()
    prog.emit(struct.pack("<II", 16 | BPF_RINGBUF_BUSY_BIT, 0) + b"z" * 16)
    prog.emit(b"committed after it")
    cons_page(c + 8)
    try:
        assert rb.drain() == []
        assert rb.consumer_pos() == c + 8 and rb.pending_bytes() > 0
    finally:
        cons_page(rb.producer_pos())


def test_headers_are_followed_from_the_consumer_position(prog, rb, cons_page):
    # The same trick with a committed 16-byte record inside the payload: the
    # reader takes it, then lands exactly on the real next record.
    c = rb.consumer_pos()
    inner = b"0123456789abcdef"
    prog.emit(struct.pack("<II", 16, 0) + inner)   # 24 bytes: ends where the inner one does
    prog.emit(b"next")
    cons_page(c + 8)
    assert rb.drain() == [inner, b"next"]


@pytest.mark.parametrize("length", [0x3FFFFFF0, 5000, 1000])
def test_corrupt_length_raises_and_does_not_move(prog, rb, cons_page, length):
    # 0x3FFFFFF0: larger than the ring; 5000: fits the ring, not the data
    # produced; 1000: past the producer position by a little.
    c = rb.consumer_pos()
    prog.emit(struct.pack("<II", length, 0) + bytes(16))
    cons_page(c + 8)
    try:
        with pytest.raises(RingBufferError) as e:
            rb.drain()
        msg = str(e.value)
        assert "'rb'" in msg and f"position {c + 8}" in msg and str(rb.producer_pos()) in msg
        assert rb.consumer_pos() == c + 8
    finally:
        cons_page(rb.producer_pos())


@pytest.mark.parametrize("where", ["misaligned", "ahead of the producer", "a ring and more behind"])
def test_inconsistent_positions_raise(prog, rb, cons_page, where):
    while rb.producer_pos() < 2 * rb.size:   # room to point a ring size behind
        prog.emit(bytes(MAX_PAYLOAD))
        rb.drain()
    prog.emit(b"a" * 40)
    c, prod = rb.consumer_pos(), rb.producer_pos()
    cons_page({"misaligned": c + 4, "ahead of the producer": prod + 8,
               "a ring and more behind": prod - rb.size - 8}[where])
    try:
        with pytest.raises(RingBufferError, match="inconsistent"):
            rb.drain()
    finally:
        cons_page(prod)


def test_readers_stop_on_a_corrupt_ring(prog, rb, cons_page):
    c = rb.consumer_pos()
    prog.emit(struct.pack("<II", 0x3FFFFFF0, 0) + bytes(16))
    handled = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda lp, ctx: handled.append(ctx.get("exception")))
        cons_page(c + 8)
        with pytest.raises(RingBufferError):       # the task form ends with the error
            await asyncio.wait_for(consume(rb, lambda r: None), 2)
        reader = RingBufferReader(rb, lambda r: None)
        reader.start()
        for _ in range(20):                         # the loop's handler gets it once
            await asyncio.sleep(0)
        return reader.wakeups

    try:
        assert _run_uvloop(main) == 1
        assert len(handled) == 1 and isinstance(handled[0], RingBufferError)
    finally:
        cons_page(rb.producer_pos())


# -- opening -----------------------------------------------------------------------

def test_open_by_id_owns_its_fd(prog, rb):
    map_id = bpfsys.map_info_by_fd(prog.rb_fd).id
    prog.emit(b"by id")
    with RingBuffer.from_id(map_id) as other:
        fd = other.fileno()
        assert fd != prog.rb_fd and other.size == rb.size
        assert other.drain() == [b"by id"]
    with pytest.raises(OSError):
        os.fstat(fd)
    assert rb.pending_bytes() == 0   # the same ring: one consumer position
    os.fstat(prog.rb_fd)             # the borrowed fd stays open


def test_not_a_ring_buffer():
    fd = bpfsys.create_map(2, 4, 4, 1, name="not_a_ring")   # ARRAY
    try:
        with pytest.raises(ValueError, match="not RINGBUF"):
            RingBuffer(fd)
    finally:
        os.close(fd)


# -- measurement (printed, not asserted) ----------------------------------------------

def fill(prog, rb, body: bytes, n: int) -> None:
    """``n`` records of ``body`` in the big ring, from one test run.

    A test run that repeats stops with EINTR when a signal arrives (a stray
    SIGCHLD has been seen here) after an unknown number of runs: empty the
    ring and start again."""
    for _ in range(5):
        try:
            assert prog.run(body, big=True, repeat=n) == 0
            return
        except bpfsys.BpfError as e:
            if e.errno != errno.EINTR:
                raise
            rb.drain()
    raise AssertionError("test run interrupted five times")


def test_drain_rate(prog, capsys):
    rb = RingBuffer(prog.big_map_fd)
    lines = []
    try:
        rb.drain()
        for size in (64, 1500):
            per_fill = min(50_000, rb.size // total(size) - 1)
            body = random.Random(size).randbytes(size)
            for how in ("drain", "consume"):
                best = 0.0
                for _ in range(3):
                    fill(prog, rb, body, per_fill)
                    assert rb.pending_bytes() == per_fill * total(size)
                    t0 = time.perf_counter()
                    if how == "drain":
                        n = len(rb.drain())
                    else:
                        n = rb.consume(lambda r: None)
                    dt = time.perf_counter() - t0
                    assert n == per_fill
                    best = max(best, n / dt)
                lines.append(f"ringbuf {how:7s} {size:5d}-byte records: {best / 1e6:5.2f} M records/s, "
                             f"{best * size / 1e9:5.2f} GB/s ({per_fill} per fill, best of 3)")
    finally:
        rb.close()
    with capsys.disabled():
        print("\n" + "\n".join(lines))
