"""Several slow-path workers in the real program: the kernel spreads
inspected flows over the workers' rings by a hash of the session, keeps all
of a flow's records on one ring, and a stale heartbeat fails only the flows
of its own worker (bpf/lib/inspect.h ms_insp_worker; datapath/insp_rings.py).
"""
from __future__ import annotations

import os
import shutil
import types
import uuid
from pathlib import Path

import pytest

from appliance.policyfile import compile_text
from datapath import bpfsys
from datapath.enums import Reason
from datapath.insp_rings import PIN_PREFIX, WorkerRings
from datapath.policy_maps import PolicyMaps
from datapath.sessions import WIDE_KEY_MAP, layouts_of
from packets_ct import TcpConn
from slowpath.records import RecordDecoder, VerdictWriter, record_type
from slowpath.ringbuf import RingBuffer

R = Reason
POLICY = """
defaults: {ingress: deny, egress: deny}
rules:
  - {name: web, from: 10.0.0.0/24, to: 10.0.1.0/24, proto: tcp, ports: [80], action: inspect, inspect: {what: [waf]}}
"""
REQUEST = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
FLOWS = 64     # every flow on one ring of two: a chance of 2 ** -63


class Workers:
    def __init__(self, fp, n: int, pin_dir: Path | None = None):
        self.fp = fp
        # A worker here is gone only when its heartbeat is 0: the longest
        # timeout keeps a busy machine's slow test run from making the
        # living one stale too.
        fp.apply_runtime(fp.config.model_copy(update={"slowpath_workers": n, "heartbeat_timeout_s": 3600}))
        self.rings_made = WorkerRings(fp, n, pin_dir)
        self.rings = [RingBuffer(fd) for fd in self.rings_made.fds]
        self.writers = [VerdictWriter(fp.table("ms_verdicts").map_fd, fp.table("ms_slowpath").map_fd,
                                      fp.table("ms_verdicts").Leaf, fp.table("ms_slowpath").Leaf, worker=i)
                        for i in range(n)]
        self.decoder = RecordDecoder(record_type({"ms_insp_scratch": (None, fp.table("ms_insp_scratch").Leaf)}),
                                     layouts_of(fp)[WIDE_KEY_MAP][0])
        for w in self.writers:
            w.heartbeat(os.getpid())

    def drained(self) -> list[list]:
        return [[self.decoder.decode(bytes(r)) for r in ring.drain()] for ring in self.rings]

    def close(self) -> None:
        for ring in self.rings:
            ring.drain()
            ring.close()
        self.rings_made.unslot(self.fp)          # the next test's build has one worker
        self.rings_made.close()
        self.fp.apply_runtime(self.fp.config)


@pytest.fixture
def workers(fastpath):
    _, pol = compile_text(POLICY, "workers.yaml")
    PolicyMaps.for_fastpath(fastpath).apply(pol)
    made = []

    def make(n, pin_dir=None):
        w = Workers(fastpath, n, pin_dir)
        made.append(w)
        return w
    yield make
    for w in made:
        w.close()


def open_flows(fp, n=FLOWS, port=30000):
    conns = []
    for i in range(n):
        c = TcpConn.make(fp, client=(f"10.0.0.{2 + i % 200}", port + i), server=("10.0.1.5", 80))
        c.send("c", "S", R.PASS_POLICY_INSPECT)
        c.send("s", "SA")
        c.send("c", "A")
        conns.append(c)
    return conns


def test_flows_spread_over_the_workers_and_each_stays_on_one(workers):
    w = workers(2)
    conns = open_flows(w.fp)
    for c in conns:
        c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
        c.send("s", "PA", R.PASS_INSPECT_COPIED, data=RESPONSE)
    per_ring = w.drained()
    keys = [{r.key for r in recs} for recs in per_ring]
    # an even split of 64 flows lands in 20..44 with probability 0.997: a
    # skewed hash (an xor of the key's words gave 1 of 64) does not
    assert all(20 <= len(k) <= 44 for k in keys), f"{FLOWS} flows split {[len(k) for k in keys]}"
    assert not keys[0] & keys[1], "a flow's records went to two workers"
    assert len(keys[0] | keys[1]) == FLOWS
    for recs in per_ring:                   # request and response of each flow: together
        sides = {}
        for r in recs:
            sides.setdefault(r.key, set()).add(r.side)
        assert all(s == {0, 1} for s in sides.values())


def test_one_worker_takes_every_flow(workers):
    w = workers(1)
    for c in open_flows(w.fp, 8):
        c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
    (recs,) = w.drained()
    assert len({r.key for r in recs}) == 8


def test_a_stale_worker_fails_only_its_own_flows(workers):
    w = workers(2)
    conns = open_flows(w.fp)
    for c in conns:
        c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
    ring_of = {}
    for i, recs in enumerate(w.drained()):
        for r in recs:
            ring_of[r.client] = i
    w.writers[1].stop()                     # worker 1 is gone: heartbeat 0
    for c in conns:
        mine = ring_of[(c.c.addr, c.c.port)]
        c.send("s", "PA", R.PASS_INSPECT_SLOWPATH_DOWN if mine == 1 else R.PASS_INSPECT_COPIED, data=RESPONSE)
    first, second = w.drained()
    assert first and not second
    w.writers[1].heartbeat(os.getpid())     # restarted: its flows are inspected again
    for c in conns:
        c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
    assert all(w.drained())


# A wakeup is an irq_work run right after the program: seen within this
# (bounded: a wait on the condition, not a sleep).
WAKE_S = 5.0
# How long a record that must not wake the reader is watched for a wakeup.
NO_WAKE_S = 0.2


def test_an_awake_worker_is_not_woken_and_a_sleeping_one_is(workers):
    # ms_insp_busy: while the worker is awake its records skip the ring's
    # wakeup (~5 us of the packet's path); once it is asleep they wake it.
    # (Before the flag the awake case was woken too: the second poll fails.)
    import select

    from appliance.workers import AwakeFlag
    w = workers(1)
    ring = w.rings[0]
    flag = AwakeFlag(w.fp.table("ms_insp_busy").map_fd, 0)
    ep = select.epoll()
    ep.register(ring.fileno(), select.EPOLLIN)
    try:
        (c,) = open_flows(w.fp, 1)
        c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
        assert ep.poll(WAKE_S), "a sleeping reader was not woken"
        assert [r.side for r in w.drained()[0]] == [0]
        assert ep.poll(0) == []                     # caught up: nothing ready

        flag.set(1)                                 # awake, reading
        c.send("s", "PA", R.PASS_INSPECT_COPIED, data=RESPONSE)
        assert ring.pending_bytes() > 0             # committed ...
        assert ep.poll(NO_WAKE_S) == [], "an awake reader was woken"
        flag.set(0)                                 # ... and found by its look before sleeping
        assert [r.side for r in w.drained()[0]] == [1]

        c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
        assert ep.poll(WAKE_S), "a reader asleep again was not woken"
        assert [r.side for r in w.drained()[0]] == [0]
    finally:
        flag.set(0)
        ep.close()


def test_a_due_poll_defers_only_records_no_verdict_waits_on(workers):
    # MS_INSP_BUSY_POLL (the worker's timer reads the ring within POLL_S):
    # a released flow's record (an async response) skips the wakeup; a
    # record of a flow still waiting for its verdict (a held request, an
    # async request) wakes the worker at once, and with the worker asleep
    # (no poll due) a released flow's record wakes it too. (Before the
    # POLL state, any non-zero state suppressed every wakeup; the values
    # were 0 and 1 and 2 meant awake: the first poll below then fails.)
    import select

    from appliance.workers import BUSY, AwakeFlag
    from datapath.enums import VerdictCode
    w = workers(1)
    ring = w.rings[0]
    flag = AwakeFlag(w.fp.table("ms_insp_busy").map_fd, 0)
    ep = select.epoll()
    ep.register(ring.fileno(), select.EPOLLIN)
    try:
        pending, released = open_flows(w.fp, 2)
        released.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
        assert ep.poll(WAKE_S)
        (req,) = w.drained()[0]
        w.writers[0].verdict(req.key, VerdictCode.VERDICT_RELEASE)
        assert ep.poll(0) == []

        flag.set(BUSY["POLL"])
        pending.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
        assert ep.poll(WAKE_S), "a request waiting for its verdict waited for the poll"
        (first,) = w.drained()[0]
        pending_key = first.key
        assert ep.poll(0) == []

        released.send("s", "PA", R.PASS_INSPECT_COPIED, data=RESPONSE)   # merges the RELEASE first
        assert ring.pending_bytes() > 0
        assert ep.poll(NO_WAKE_S) == [], "a released flow's record woke a worker with a poll due"
        # a request behind it, unread: the ring would wake its reader by
        # itself only for a record at the reader's position
        pending.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
        assert ep.poll(WAKE_S), "a request behind a deferred record waited for the poll"
        assert [(r.key, r.side) for r in w.drained()[0]] == [(req.key, 1), (pending_key, 0)]

        flag.set(BUSY["ASLEEP"])
        released.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
        assert ep.poll(WAKE_S), "a released flow's record did not wake a worker with no poll due"
        assert [r.side for r in w.drained()[0]] == [0]
    finally:
        flag.set(0)
        ep.close()


@pytest.fixture
def pin_dir():
    from datapath import pins
    pins.ensure_bpffs()
    d = Path("/sys/fs/bpf") / f"ms-test-workers-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_pinned_worker_rings_keep_unread_records_and_go_when_workers_shrink(workers, pin_dir):
    w = workers(3, pin_dir)
    assert sorted(p.name for p in pin_dir.iterdir()) == [f"{PIN_PREFIX}1", f"{PIN_PREFIX}2"]
    for c in open_flows(w.fp):
        c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
    ids = [bpfsys.map_info_by_fd(fd).id for fd in w.rings_made.fds[1:]]
    pending = [ring.pending_bytes() for ring in w.rings]
    assert all(pending)
    # a restarted daemon: the same rings, the records still there
    again = WorkerRings(w.fp, 3, pin_dir)
    try:
        assert [bpfsys.map_info_by_fd(fd).id for fd in again.fds[1:]] == ids
        assert RingBuffer(again.fds[2]).pending_bytes() == pending[2]
    finally:
        again.close()
    fewer = WorkerRings(w.fp, 2, pin_dir)
    try:
        assert sorted(p.name for p in pin_dir.iterdir()) == [f"{PIN_PREFIX}1"]
        assert any(f"{PIN_PREFIX}2" in line and f"{pending[2]} unread bytes dropped" in line
                   for line in fewer.lines), fewer.lines
    finally:
        fewer.close()


def test_more_than_one_worker_needs_ring_buffers():
    fp = types.SimpleNamespace(features=types.SimpleNamespace(ringbuf=False))
    with pytest.raises(ValueError, match="perf buffer"):
        WorkerRings(fp, 2)
    assert WorkerRings(fp, 1).fds == []
    with pytest.raises(ValueError, match="1..64"):
        WorkerRings(fp, 0)


def _close(c, fin=R.PASS_FORWARD) -> None:
    """Both FINs (``fin``: their outcome), then the last ACK: the session's
    end on that packet."""
    c.send("c", "FA", fin)
    c.send("s", "FA", fin)
    c.send("c", "A")


def test_an_inspected_sessions_end_goes_to_its_workers_ring_after_its_payload(workers):
    # MS_CFG_WORKER_ENDS (`microseg run`): the end record of an inspected
    # session is a struct ms_worker_end in its worker's ring, after its
    # payload records (the FIN's among them), not in ms_events; a session
    # whose worker's heartbeat is 0 (dead, stopping) has its end go to
    # ms_events, where the daemon logs it. (Without the change every end is
    # in ms_events and the rings hold payload records only.)
    from appliance.flowlog import worker_end
    from datapath.flowevents import FlowEventDecoder, event_type, flow_event_type
    from datapath.enums import EventType
    w = workers(2)
    fp = w.fp
    fp.apply_runtime(fp.config.model_copy(update={"slowpath_workers": 2, "heartbeat_timeout_s": 3600,
                                                  "worker_flow_ends": True}))
    dec = FlowEventDecoder(flow_event_type(fp))
    events = RingBuffer(fp.table("ms_events").map_fd)
    try:
        events.drain()
        conns = open_flows(fp, 16)
        for c in conns:
            c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
            c.send("s", "PA", R.PASS_INSPECT_COPIED, data=RESPONSE)
            _close(c)
        ring_of = {}
        for i, ring in enumerate(w.rings):
            seen = {}              # client -> what its records were, in ring order
            for raw in (bytes(r) for r in ring.drain()):
                end = worker_end(raw, dec.size)
                if end is None:
                    rec = w.decoder.decode(raw)
                    seen.setdefault(rec.client, []).append("fin" if rec.tcp_flags & 1 else "data")
                else:
                    ev = dec.decode(end)
                    assert (ev.worker, ev.reason, ev.action) == (i, "closed", 3)
                    assert int.from_bytes(raw[:8], "little") == (1 << 63) | i
                    seen.setdefault(ev.client, []).append("end")
            for client, kinds in seen.items():
                assert kinds[-1] == "end" and kinds.count("end") == 1 and "fin" in kinds, (client, kinds)
                ring_of[client] = i
        assert len(ring_of) == 16 and set(ring_of.values()) == {0, 1}
        assert [r for r in events.drain() if event_type(r) == EventType.EVENT_FLOW_END] == []

        conns = open_flows(fp, 16, port=31000)
        for c in conns:
            c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
        ring_of = {rec.client: i for i, recs in enumerate(w.drained()) for rec in recs}
        w.writers[1].stop()                     # worker 1 gone: heartbeat 0
        for c in conns:
            mine = ring_of[(c.c.addr, c.c.port)]
            _close(c, R.PASS_INSPECT_SLOWPATH_DOWN if mine == 1 else R.PASS_FORWARD)
        in_rings = [[worker_end(bytes(r), dec.size) for r in ring.drain()] for ring in w.rings]
        to_events = [dec.decode(r) for r in events.drain() if event_type(r) == EventType.EVENT_FLOW_END]
        assert not any(in_rings[1])
        ring0 = [dec.decode(e) for e in in_rings[0] if e is not None]
        assert {e.worker for e in to_events} == {1} and {e.worker for e in ring0} == {0}
        assert len(to_events) + len(ring0) == 16 and to_events and ring0
    finally:
        w.writers[1].heartbeat(os.getpid())
        events.close()


def test_ends_of_sessions_not_inspected_stay_in_ms_events(workers):
    from appliance.flowlog import worker_end
    from datapath.flowevents import FlowEventDecoder, event_type, flow_event_type
    from datapath.enums import EventType
    w = workers(1)
    fp = w.fp
    _, pol = compile_text(POLICY + "  - {name: ssh, from: 10.0.0.0/24, to: 10.0.1.0/24, proto: tcp, ports: [22], "
                          "action: allow}\n", "workers.yaml")
    PolicyMaps.for_fastpath(fp).apply(pol)
    fp.apply_runtime(fp.config.model_copy(update={"heartbeat_timeout_s": 3600, "worker_flow_ends": True}))
    dec = FlowEventDecoder(flow_event_type(fp))
    events = RingBuffer(fp.table("ms_events").map_fd)
    try:
        events.drain()
        c = TcpConn.make(fp, client=("10.0.0.9", 31000), server=("10.0.1.5", 22))
        c.send("c", "S", R.PASS_POLICY_ALLOW)
        c.send("s", "SA")
        c.send("c", "A")
        c.send("c", "PA", data=b"SSH-2.0-x\r\n")
        _close(c)
        assert [worker_end(bytes(r), dec.size) for r in w.rings[0].drain()] == []
        got = [dec.decode(r) for r in events.drain() if event_type(r) == EventType.EVENT_FLOW_END]
        assert [(e.action, e.reason) for e in got] == [(1, "closed")]
    finally:
        events.close()
