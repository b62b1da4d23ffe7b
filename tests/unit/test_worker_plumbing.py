"""What carries the workers' output to the daemon: EVE lines over a
SOCK_SEQPACKET socket (ForwardSink, the workers' LoopForwardSink, WorkerSet's reader) and metric
snapshots summed into one series per name (WorkerSeries)."""
from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest
import uvloop
from prometheus_client import CollectorRegistry, generate_latest

from appliance.runconfig import RunConfig
from appliance.workers import LoopForwardSink, WorkerSet
from slowpath.eve_sinks import FORWARD_LINE_MAX, FORWARD_MESSAGE_BYTES, FORWARD_TAG_EVE, ForwardSink
from slowpath.metrics import Metrics, WorkerSeries, snapshot


def series(registry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def worker_metrics(records: int, flows: int, verdict: str | None = None) -> list:
    m = Metrics(kernel=False)
    m.record_ringbuf(records)
    m.set_flows(flows)
    if verdict:
        m.record_verdict(verdict)
    m.observe_verdict_latency(0.002)
    return snapshot(m.registry)


def summed(ws: WorkerSeries) -> dict[str, float]:
    r = CollectorRegistry()
    r.register(ws)
    return series(r)


def test_series_are_summed_and_present_at_zero_before_any_report():
    ws = WorkerSeries()
    s = summed(ws)
    assert s["microseg_ringbuf_records_total"] == 0
    assert s['microseg_slowpath_failures_total{kind="slowpath_down"}'] == 0
    assert s['microseg_ringbuf_lost_total{reason="full"}'] == 0          # the daemon's endpoint too
    assert s['microseg_ringbuf_lost_total{reason="malformed"}'] == 0
    assert s["microseg_slowpath_queue_bytes"] == 0
    ws.update(0, worker_metrics(5, 2, "allow"))
    ws.update(1, worker_metrics(7, 3, "block"))
    s = summed(ws)
    assert s["microseg_ringbuf_records_total"] == 12
    assert s["microseg_slowpath_flows"] == 5
    assert s['microseg_slowpath_verdicts_total{verdict="allow"}'] == 1
    assert s['microseg_slowpath_verdicts_total{verdict="block"}'] == 1
    assert s["microseg_verdict_latency_seconds_count"] == 2
    assert s['microseg_verdict_latency_seconds_bucket{le="0.0025"}'] == 2
    assert not any(k.endswith("_created") for k in s)


def test_a_retired_worker_keeps_its_counts_not_its_gauges():
    ws = WorkerSeries()
    ws.update(0, worker_metrics(5, 2))
    ws.update(1, worker_metrics(7, 3))
    ws.retire(1)                        # killed: its replacement starts from 0
    ws.update(1, worker_metrics(1, 1))
    s = summed(ws)
    assert s["microseg_ringbuf_records_total"] == 13      # 5 + 7 + 1: never backwards
    assert s["microseg_slowpath_flows"] == 3              # 2 + 1: the dead one's flows are gone
    assert s["microseg_verdict_latency_seconds_count"] == 3


def test_the_daemon_registry_has_one_series_per_name():
    ws = WorkerSeries()
    ws.update(0, worker_metrics(1, 1))
    m = Metrics(lambda: {}, slowpath=False, workers=ws)
    text = generate_latest(m.registry).decode()
    assert text.count("# TYPE microseg_ringbuf_records_total counter") == 1
    assert "microseg_kernel_read_errors_total" in text


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


def read_until_closed(sock) -> list[bytes]:
    out = []
    while msg := sock.recv(1 << 20):
        out.append(msg)
    return out


def test_forward_sink_sends_whole_lines_in_bounded_messages(pair):
    mine, theirs = pair
    sink = ForwardSink(mine)
    lines = [json.dumps({"event_type": "flow", "n": i, "pad": "x" * 700}).encode() + b"\n" for i in range(400)]
    big = b'{"event_type":"alert","pad":"' + b"y" * FORWARD_LINE_MAX + b'"}\n'
    msgs = []
    reader = threading.Thread(target=lambda: msgs.extend(read_until_closed(theirs)))
    reader.start()                  # the daemon reads while the worker writes (the socket holds ~200 KiB)
    for line in lines[:200] + [big] + lines[200:]:
        assert sink.submit(line)
    sink.close()
    mine.close()
    reader.join(30)
    assert all(m.startswith(FORWARD_TAG_EVE) and len(m) <= FORWARD_MESSAGE_BYTES + 1024 for m in msgs)
    got = b"".join(m[1:] for m in msgs).splitlines(keepends=True)
    assert got == lines                                   # in order, none torn, the oversize one out
    assert len(msgs) > 1 and sink.counters()["oversize"] == 1 and sink.counters()["dropped"] == 1


def lines_of(msgs: list[bytes]) -> list[bytes]:
    assert all(m.startswith(FORWARD_TAG_EVE) and len(m) <= FORWARD_MESSAGE_BYTES + 1024 for m in msgs)
    return b"".join(m[1:] for m in msgs).splitlines(keepends=True)


def recv_ready(sock) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(1 << 20, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return out


def test_loop_forward_sink_sends_after_the_batch_from_the_loop_without_a_thread(pair):
    # The worker's sink: what a batch emits leaves when the batch's callback
    # is done (its verdicts first), from the loop itself; no writer thread
    # to wake and to take the GIL. (eve_sinks.ForwardSink fails both: it
    # starts a thread, and its thread may send in the middle of the batch.)
    mine, theirs = pair
    mine.setblocking(False)
    threads = threading.active_count()
    sink = LoopForwardSink(mine)
    lines = [json.dumps({"event_type": "flow", "n": i, "pad": "x" * 700}).encode() + b"\n" for i in range(150)]
    big = b'{"event_type":"alert","pad":"' + b"y" * FORWARD_LINE_MAX + b'"}\n'
    during = []

    def batch():
        for line in lines[:75] + [big] + lines[75:]:
            sink.submit(line)
        during.extend(recv_ready(theirs))      # still inside the batch: nothing sent yet

    async def main():
        sink.attach(asyncio.get_running_loop())
        asyncio.get_running_loop().call_soon(batch)
        for _ in range(5):
            await asyncio.sleep(0)
        sink.attach(None)

    uvloop.run(main())
    assert threading.active_count() == threads
    assert during == []
    msgs = recv_ready(theirs)
    assert lines_of(msgs) == lines and len(msgs) > 1       # in order, whole, bounded messages
    c = sink.counters()
    assert (c["sent"], c["oversize"], c["dropped"], c["queued"]) == (150, 1, 1, 0)


def test_loop_forward_sink_waits_for_a_slow_daemon_then_drops_counted(pair):
    mine, theirs = pair
    mine.setblocking(False)
    sink = LoopForwardSink(mine, queue_records=600)
    line = json.dumps({"event_type": "flow", "pad": "z" * 1000}).encode() + b"\n"
    got = []

    async def main():
        loop = asyncio.get_running_loop()
        sink.attach(loop)
        for _ in range(2000):            # ~2 MB: far more than the socket holds, nobody reading
            sink.submit(line)
        for _ in range(5):
            await asyncio.sleep(0)
        assert sink.counters()["queued"] > 0 and sink.counters()["queue_full"] > 0
        deadline = loop.time() + 30      # now the daemon reads: the loop sends the rest when writable
        while sink.counters()["queued"] and loop.time() < deadline:
            got.extend(recv_ready(theirs))
            await asyncio.sleep(0.001)
        got.extend(recv_ready(theirs))
        sink.attach(None)

    uvloop.run(main())
    c = sink.counters()
    assert c["queued"] == 0 and c["sent"] + c["dropped"] == 2000 and c["dropped"] == c["queue_full"] > 0
    assert lines_of(got) == [line] * c["sent"]


def test_loop_forward_sink_sends_several_batches_lines_in_one_message(pair):
    # A send wakes the daemon: the lines of batches handled within flush_s
    # of the first go in one message (one connection's lines per batch at
    # the lab's rate were one send each); a full message goes at once.
    mine, theirs = pair
    mine.setblocking(False)
    sink = LoopForwardSink(mine, flush_s=3600)       # only a full message sends here
    small = [b'{"event_type":"http","n":%d}\n' % i for i in range(15)]
    pad = json.dumps({"event_type": "flow", "pad": "p" * 1000}).encode() + b"\n"
    fill = [pad] * (FORWARD_MESSAGE_BYTES // len(pad) + 1)
    seen = []

    async def main():
        loop = asyncio.get_running_loop()
        sink.attach(loop)
        for b in range(3):                           # three batches, loop turns between them
            loop.call_soon(lambda b=b: [sink.submit(line) for line in small[b * 5:b * 5 + 5]])
            for _ in range(3):
                await asyncio.sleep(0)
        seen.append(recv_ready(theirs))              # not yet: waiting for more
        for line in fill:
            sink.submit(line)
        for _ in range(3):
            await asyncio.sleep(0)
        seen.append(recv_ready(theirs))              # a message's worth: sent without the wait
        sink.attach(None)

    uvloop.run(main())
    assert seen[0] == []
    assert lines_of(seen[1]) == small + fill and len(seen[1]) == 2 == sink.sends
    assert sink.counters()["queued"] == 0


def test_loop_forward_sink_sends_after_flush_s_without_more_lines(pair):
    mine, theirs = pair
    mine.setblocking(False)
    sink = LoopForwardSink(mine, flush_s=0.01)
    lines = [b'{"event_type":"http","n":%d}\n' % i for i in range(3)]
    got = []

    async def main():
        loop = asyncio.get_running_loop()
        sink.attach(loop)
        for line in lines:
            sink.submit(line)
        deadline = loop.time() + 30
        while len(lines_of(got)) < 3 and loop.time() < deadline:
            await asyncio.sleep(0.005)
            got.extend(recv_ready(theirs))
        sink.attach(None)

    uvloop.run(main())
    assert lines_of(got) == lines and len(got) == 1 == sink.sends


def test_loop_forward_sink_send_soon_sends_with_the_current_wakeup(pair):
    # After the daemon's session ends woke the worker: the pending lines go
    # on the loop's next turn, not at the timer (which would wake it again).
    mine, theirs = pair
    mine.setblocking(False)
    sink = LoopForwardSink(mine, flush_s=3600)
    lines = [b'{"event_type":"flow","n":%d}\n' % i for i in range(4)]
    seen = []

    async def main():
        sink.attach(asyncio.get_running_loop())
        sink.send_soon()                     # nothing pending: nothing sent
        for line in lines:
            sink.submit(line)
        await asyncio.sleep(0)
        seen.append(recv_ready(theirs))      # waiting for the (hour-long) timer
        sink.send_soon()
        for _ in range(3):
            await asyncio.sleep(0)
        seen.append(recv_ready(theirs))
        seen.append(sink._timer)
        sink.attach(None)

    uvloop.run(main())
    assert seen[0] == [] and lines_of(seen[1]) == lines and sink.sends == 1
    assert seen[2] is None                   # the timer was cancelled: no wakeup for nothing


def test_session_ends_go_to_a_worker_in_few_messages_and_the_count_taken(pair):
    # The daemon hands a batch of kernel session-end records to the worker
    # in messages of at most FORWARD_MESSAGE_BYTES (a send costs the sender
    # a wakeup of the worker), in order; when the worker's socket is full it
    # says how many it took, and the daemon writes the rest's records itself.
    from appliance.workers import TAG_FLOW_END
    mine, theirs = pair
    mine.setblocking(False)
    ws = WorkerSet(None, [None], on_eve=lambda *a: None, on_report=lambda *a: None, on_exit=lambda *a: None)
    ws._socks[0], ws.pids[0] = mine, 1
    raws = [i.to_bytes(4, "little") * 32 for i in range(1000)]       # 128 bytes, as struct ms_flow_event
    assert ws.forward_flow_ends(0, raws) == 1000
    msgs = recv_ready(theirs)
    assert 2 <= len(msgs) <= 1000 * 128 // FORWARD_MESSAGE_BYTES + 1
    assert all(m[:1] == TAG_FLOW_END and len(m) <= FORWARD_MESSAGE_BYTES + 1 for m in msgs)
    assert b"".join(m[1:] for m in msgs) == b"".join(raws)
    many = raws * 100                                                # more than the socket holds
    taken = ws.forward_flow_ends(0, many)
    assert 0 < taken < len(many)
    assert b"".join(m[1:] for m in recv_ready(theirs)) == b"".join(many[:taken])
    ws.stopping = True
    assert ws.forward_flow_ends(0, raws) == 0


def test_loop_forward_sink_close_sends_the_rest_outside_the_loop(pair):
    mine, theirs = pair
    sink = LoopForwardSink(mine)
    lines = [b'{"event_type":"flow","n":%d}\n' % i for i in range(10)]
    for line in lines:                   # the loop has ended (a worker's finish)
        sink.submit(line)
    sink.close()
    assert lines_of(recv_ready(theirs)) == lines and sink.counters()["sent"] == 10


def test_the_daemon_reads_lines_and_their_event_types(pair):
    mine, theirs = pair
    seen = []
    ws = WorkerSet(None, [None], on_eve=lambda line, et: seen.append((line, et)),
                   on_report=lambda i, r: seen.append((i, r)), on_exit=lambda *a: None)
    ws._message(0, FORWARD_TAG_EVE + b'{"timestamp":"t","event_type":"alert"}\n{"event_type":"flow"}\n')
    ws._message(0, b'M{"metrics": [], "stats": {"slowpath.records": 3}}')
    ws._message(0, b"Mnot json")                          # logged, nothing else
    assert seen == [(b'{"timestamp":"t","event_type":"alert"}\n', "alert"), (b'{"event_type":"flow"}\n', "flow"),
                    (0, {"metrics": [], "stats": {"slowpath.records": 3}})]


def test_a_reload_returns_when_every_worker_has_confirmed_it():
    # The daemon logs a reload done only when each worker has the new rules
    # in force (or has ended: its successor starts with them); before, it
    # logged it as soon as it had asked, and traffic right after the line
    # could still meet a worker's old rules.
    from appliance.workers import TAG_RELOAD
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(3)]
    ws = WorkerSet(None, [None] * 3, on_eve=lambda *a: None, on_report=lambda *a: None, on_exit=lambda *a: None)
    for i, (mine, _) in enumerate(pairs):
        ws._socks[i], ws.pids[i] = mine, 100 + i

    async def scenario():
        first = asyncio.ensure_future(ws.reload(timeout=60))
        await asyncio.sleep(0)
        asked = [theirs.recv(64) for _, theirs in pairs]
        assert asked == [TAG_RELOAD + b"1"] * 3
        ws._message(0, TAG_RELOAD + b"1")
        ws._message(1, TAG_RELOAD + b"0")              # an older reload's answer counts for nothing
        await asyncio.sleep(0)
        assert not first.done()
        ws._message(1, TAG_RELOAD + b"1")
        ws._confirmed(2)                               # worker 2 ended (_died)
        assert await asyncio.wait_for(first, 5) == []
        # a worker that does not answer: the reload returns it after the timeout
        second = await ws.reload(timeout=0.05)
        assert [theirs.recv(64) for _, theirs in pairs] == [TAG_RELOAD + b"2"] * 3
        return second

    try:
        assert asyncio.run(scenario()) == [0, 1, 2]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.parametrize("workers", [0, 65, "two"])
def test_workers_setting_is_checked(workers):
    with pytest.raises(ValueError, match="workers"):
        RunConfig.model_validate({"interfaces": ["eth0"], "slowpath": {"workers": workers}})
    assert RunConfig.model_validate({"interfaces": ["eth0"], "slowpath": {"workers": 2}}).slowpath.workers == 2


class _Ring:
    """A worker's ring: records to drain, and records the 'kernel' commits
    right after a drain returns (before the worker stores its state)."""

    def __init__(self, records=(), after_drain=()):
        self.records = list(records)
        self.after_drain = list(after_drain)

    def drain(self, max_records=None):
        out, self.records = self.records, []
        self.records, self.after_drain = self.after_drain, []
        return out

    def pending_bytes(self):
        return 8 * len(self.records)


class _Flag:
    def __init__(self):
        self.states = []

    def set(self, value):
        self.states.append(value)


def _poll_worker(ring):
    from appliance.workers import Worker
    w = Worker.__new__(Worker)          # only what the read path uses
    w.ring, w._busy, w._poll = ring, _Flag(), None
    w.read = []
    w._records = w.read.extend
    return w


def test_a_worker_that_read_records_polls_its_ring_once_more_then_sleeps():
    # bpf/lib/maps.h MS_INSP_BUSY_POLL: after a read that found records the
    # worker says a poll is due (the kernel then skips the wakeup for
    # records no verdict waits on) and reads the ring POLL_S later; a poll
    # that finds nothing leaves it asleep, with no timer (an idle worker
    # is not woken). A record committed between a poll's drain and its
    # store is read by one more look, not left for the next wakeup.
    from appliance.workers import BUSY

    async def main():
        ring = _Ring([b"req"])
        w = _poll_worker(ring)
        w._readable()                                   # from the ring's epoll event
        assert w.read == [b"req"]
        assert w._busy.states == [BUSY["AWAKE"], BUSY["POLL"]] and w._poll is not None
        ring.records = [b"resp"]                        # no wakeup for it
        deadline = asyncio.get_running_loop().time() + 5
        while len(w.read) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.001)
        assert w.read == [b"req", b"resp"] and w._poll is not None   # found one: another poll due
        ring.after_drain = [b"fin"]                     # committed while that poll stores ASLEEP
        while len(w.read) < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.001)
        assert w.read == [b"req", b"resp", b"fin"]      # the look after the store
        while w._poll is not None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.001)
        assert w._poll is None and w._busy.states[-1] == BUSY["ASLEEP"] and not ring.pending_bytes()
        w._readable()                                   # a wakeup with nothing to read: no poll due
        assert w._poll is None and w._busy.states[-1] == BUSY["ASLEEP"]

    uvloop.run(main())


def test_each_read_that_found_records_moves_the_poll_back(monkeypatch):
    # A poll due POLL_S after the first read woke a worker asleep between
    # connections closer together than POLL_S, for deferred records the
    # next connection's read takes anyway. The poll is due POLL_S after the
    # last read that found records (the bound on a deferred record's wait
    # is kept: whatever came before that read was read by it); a read that
    # finds nothing leaves it where it was. (A recording loop: libuv's
    # timers have a millisecond's grain, too coarse to read back.)
    from appliance import workers
    from appliance.workers import BUSY, POLL_S

    class Timer:
        def __init__(self, delay):
            self.delay, self.cancelled = delay, False

        def cancel(self):
            self.cancelled = True

    class Loop:
        def __init__(self):
            self.timers = []

        def call_later(self, delay, fn):
            self.timers.append(Timer(delay))
            return self.timers[-1]

    loop = Loop()
    monkeypatch.setattr(workers.asyncio, "get_running_loop", lambda: loop)
    ring = _Ring([b"req1"])
    w = _poll_worker(ring)
    w._readable()
    assert [t.delay for t in loop.timers] == [POLL_S] and w._busy.states[-1] == BUSY["POLL"]
    ring.records = [b"resp1", b"req2"]              # the next connection's request wakes it
    w._readable()
    first, second = loop.timers                     # a new poll, POLL_S from this read ...
    assert first.cancelled and w._poll is second and second.delay == POLL_S and not second.cancelled
    assert w._busy.states[-1] == BUSY["POLL"]
    w._readable()                                   # ... and a read that finds nothing leaves it
    assert len(loop.timers) == 2 and w._poll is second and not second.cancelled
    assert w._busy.states[-1] == BUSY["POLL"]


class _Rec:
    def __init__(self, name, key, side=0, inspect=0):
        self.name, self.key, self.side, self.inspect = name, key, side, inspect

    def __repr__(self):
        return self.name


class _Flow:
    def __init__(self, verdict):
        self.verdict = verdict


def test_a_batch_handles_records_a_verdict_waits_on_before_deferred_ones_each_flow_in_order():
    # The kernel lets a released flow's records (its side not held) wait for
    # the worker's poll, so they come in one read with the next
    # connection's request: the request's flow goes first (its verdict is
    # not delayed by the others' DLP scan and close), each flow's records
    # in their order, the rest after in theirs. Before: the ring's order.
    from appliance.workers import INSPECT, Worker
    from datapath.enums import VerdictCode
    hold_all = INSPECT["HOLD_ALL"]
    released = _Flow(VerdictCode.VERDICT_RELEASE)
    flows = {b"async": released, b"async2": _Flow(VerdictCode.VERDICT_RELEASE),
             b"pending": _Flow(None), b"each": _Flow(VerdictCode.VERDICT_RELEASE)}
    batch = [_Rec("resp", b"async", 1), _Rec("req", b"new"), _Rec("fin", b"async", 0),
             _Rec("resp2", b"async2", 1), _Rec("more", b"pending"), _Rec("req2", b"new"),
             _Rec("each-resp", b"each", 1, hold_all), _Rec("each-req", b"each", 0, hold_all)]
    handled = []

    class Engine:
        def __init__(self):
            self.flows = flows
            self.counters = type("C", (), {"bad_records": 0})()

        def handle_batch(self, recs):
            handled.extend(r.name for r in recs)

    class Decoder:
        def decode_many(self, raws):
            return list(raws), []

    w = Worker.__new__(Worker)
    w.engine, w.decoder = Engine(), Decoder()
    w._records(batch)
    assert handled == ["req", "more", "req2", "each-resp", "each-req", "resp", "fin", "resp2"]
    # one kind only (all waiting, all deferred): the batch as it came
    handled.clear()
    w._records(batch[1:2] + batch[4:6])
    assert handled == ["req", "more", "req2"]
    handled.clear()
    w._records([batch[0], batch[2], batch[3]])
    assert handled == ["resp", "fin", "resp2"]


def test_session_ends_in_the_ring_are_handled_after_the_reads_payload_records():
    # MS_CFG_WORKER_ENDS: the kernel writes an inspected session's end into
    # its worker's ring (struct ms_worker_end: a mark with bit 63 where a
    # payload record has its ts_ns). The worker handles the read's payload
    # records first, in one batch (a request a verdict waits on is not
    # delayed behind a closed flow's record: with each end handled where it
    # lay, the lab's hold verdict p50 was 167 -> 389 us), then the ends in
    # ring order, each after its session's records (the FIN's before it in
    # the ring); a payload record of the end's length is still a payload
    # record. (Before, an end in the ring was decoded as a payload record.)
    import struct

    from appliance.flowlog import WORKER_END_MARK
    from appliance.workers import Worker
    size = 24
    handled = []

    class Engine:
        flows = {}
        counters = type("C", (), {"bad_records": 0})()

        def handle_batch(self, recs):
            handled.append([r.name for r in recs])

        def session_end(self, ev, wall):
            handled.append(("end", ev))

    class Decoder:
        def decode_many(self, raws):
            return [_Rec(r[8:].rstrip(b"\0").decode(), b"k") for r in raws], []

    class Ends:
        def decode(self, raw):
            assert len(raw) == size
            return raw.rstrip(b"\0").decode()

    Ends.size = size

    def payload(name, pad=0):
        return struct.pack("<Q", 123_456_789) + name.encode().ljust(pad, b"\0")

    def end(name, worker=0):
        return struct.pack("<Q", WORKER_END_MARK | worker) + name.encode().ljust(size, b"\0")

    w = Worker.__new__(Worker)
    w.engine, w.decoder, w._flow_events = Engine(), Decoder(), Ends()
    w.ctx = type("Ctx", (), {"wall": None})()
    same_len = payload("data", size)                 # a payload record as long as an end record
    w._records([payload("fin"), end("one"), same_len, end("two", 1), payload("req"), end("three")])
    assert handled == [["fin", "data", "req"], ("end", "one"), ("end", "two"), ("end", "three")]
    handled.clear()
    w._records([end("four")])                        # ends only
    assert handled == [("end", "four")]
    handled.clear()
    w._records([payload("a"), payload("b")])         # no end: one batch
    assert handled == [["a", "b"]]
