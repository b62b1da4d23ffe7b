"""What `microseg replay` runs per frame: bpfsys.TestRunner (one
BPF_PROG_TEST_RUN per packet with the attr, context and buffers made once)
and one heartbeat per replay, not one per frame.

Needs root: programs are loaded and run."""
from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from datapath import bpfsys
from tests.datapath.replaying import replay_packets
# r0 = skb->len (struct __sk_buff's first field); exit: the program returns
# the length of the packet it was given, so a run on the wrong bytes shows.
LEN_PROG = bpfsys.insn(0x61, dst=0, src=1, off=0) + bpfsys.insn(0x95)
SIZES = [1500, 60, 3000, 14, 200, 3000, 15]


@pytest.fixture
def len_prog():
    if os.geteuid() != 0:
        pytest.fail("loading a BPF program needs root (CAP_BPF)")
    fd = bpfsys.prog_load(LEN_PROG, bpfsys.BPF_PROG_TYPE_SCHED_CLS, name="ms_test_len")
    try:
        yield fd
    finally:
        os.close(fd)


def frame(n: int) -> bytes:
    return bytes((i * 7 + n) & 0xFF for i in range(n))


def test_runner_agrees_with_prog_test_run(len_prog):
    """Same retval and packet back as prog_test_run, packet after packet,
    a small one after a large one included (the size the kernel wrote back
    for the last packet must not limit the next)."""
    runner = bpfsys.TestRunner(len_prog)
    for n in SIZES:
        data = frame(n)
        want = bpfsys.prog_test_run(len_prog, data)
        assert runner.run(data) == want.retval == n
        assert runner.data_out == want.data_out == data


@pytest.mark.parametrize("in_place", [True, False])
def test_runner_reads_bytes_in_place_or_copies(len_prog, monkeypatch, in_place):
    """bytes go to the kernel from their own buffer (no copy; a bytearray or
    memoryview made bytes first), or, where that buffer cannot be found, are
    copied into the runner's input buffer: the kernel gets the same packet
    either way, in any order of kinds and sizes."""
    assert bpfsys._BYTES_DATA_OFFSET is not None     # CPython: the in-place path is the one taken
    if not in_place:
        monkeypatch.setattr(bpfsys, "_BYTES_DATA_OFFSET", None)
    runner = bpfsys.TestRunner(len_prog)
    for i, n in enumerate(SIZES * 2):
        data = frame(n)
        arg = (data, bytearray(data), memoryview(data))[i % 3]
        assert runner.run(arg) == n
        assert runner.data_out == data


def test_runner_without_copy_out(len_prog):
    runner = bpfsys.TestRunner(len_prog, copy_out=False)
    for n in SIZES:
        assert runner.run(frame(n)) == n
    assert runner.data_out == b""


def test_runner_refuses_short_packet(len_prog):
    with pytest.raises(ValueError, match="at least an Ethernet header"):
        bpfsys.TestRunner(len_prog).run(b"\0" * 13)


def test_runner_error_is_a_bpf_error(len_prog):
    """A packet larger than the kernel's test-run page: BpfError (EMSGSIZE
    or EINVAL, by kernel), as prog_test_run raises, not a crash."""
    with pytest.raises(bpfsys.BpfError):
        bpfsys.TestRunner(len_prog, copy_out=False).run(frame(70000))


@pytest.mark.parametrize("ctx", [True, False])
def test_bound_runner_agrees_with_run(len_prog, ctx):
    """TestRunner.bound() (replay's per-frame call) runs the same packets
    to the same retval as run(), with and without a __sk_buff context (replay
    passes none): a large packet after a small one included, which fails
    with ENOSPC unless the size the kernel wrote back is cleared each time;
    short packets and other kinds go through run()'s checks and copy."""
    runner = bpfsys.TestRunner(len_prog, copy_out=False, tc=ctx)
    run = runner.bound()
    assert run != runner.run                       # the closure, not the method
    for i, n in enumerate(SIZES[:3] + [n for n in SIZES if n >= 14] * 2):
        data = frame(n)
        arg = (data, data, bytearray(data), memoryview(data))[i % 4]
        assert run(arg) == n
    with pytest.raises(ValueError, match="at least an Ethernet header"):
        run(b"\0" * 13)
    with pytest.raises(bpfsys.BpfError):
        run(frame(70000))
    assert run(frame(60)) == 60                     # still usable after a failure


def test_bound_runner_sets_the_attr_through_memoryviews(len_prog):
    """bound() stores the sizes and the packet's address and reads the
    retval through memoryviews of the attr, not ctypes' field descriptors
    (~0.1 us a frame): the closure names no attr field; the attr holds what
    run() would have put there (data_size_out: the size the kernel wrote
    back) and the retval is the program's."""
    runner = bpfsys.TestRunner(len_prog, copy_out=False, tc=False)
    run = runner.bound()
    assert not {"data_size_in", "data_size_out", "data_in", "retval"} & set(run.__code__.co_names)
    for n in (3000, 60, 1500):
        data = frame(n)
        assert run(data) == n
        a = runner._attr
        assert (a.data_size_in, a.data_size_out, a.retval, a.data_out) == (n, n, n, 0)
        assert a.data_in == id(data) + bpfsys._BYTES_DATA_OFFSET


def test_bound_runner_with_copy_out_is_run(len_prog):
    """A runner that copies the packet back keeps its method (data_out and
    duration_ns stay right)."""
    runner = bpfsys.TestRunner(len_prog)
    assert runner.bound() == runner.run
    assert runner.bound()(frame(200)) == 200 and runner.data_out == frame(200)


def test_replay_writes_the_heartbeat_once(fastpath, tmp_path, monkeypatch):
    """replay_config()'s heartbeat timeout is an hour: one write covers a
    replay (it was one map write per frame)."""
    from slowpath import records as recmod
    beats = []
    orig = recmod.VerdictWriter.heartbeat
    monkeypatch.setattr(recmod.VerdictWriter, "heartbeat", lambda self, pid: (beats.append(pid), orig(self, pid)))
    c, s = IP(src="10.0.0.1", dst="10.0.0.2"), IP(src="10.0.0.2", dst="10.0.0.1")
    req = b"GET /x HTTP/1.1\r\nHost: hb.test\r\n\r\n"
    pkts = [c / TCP(sport=40000, dport=80, flags="S", seq=100),
            s / TCP(sport=80, dport=40000, flags="SA", seq=900, ack=101),
            c / TCP(sport=40000, dport=80, flags="A", seq=101, ack=901),
            c / TCP(sport=40000, dport=80, flags="PA", seq=101, ack=901) / Raw(req)]
    pkts += [c / TCP(sport=40000, dport=80, flags="A", seq=101 + len(req), ack=901)] * 20
    res, records = replay_packets(fastpath, pkts, tmp_path, "hb.pcap")
    assert res.frames == len(pkts) and res.records == 1
    assert any(r["event_type"] == "http" for r in records)
    assert len(beats) == 1


def _get_exchange(sport: int, host: str) -> list:
    """A handshake, a GET for ``host`` and its 200 response: one payload
    record a frame for the last two."""
    c, s = IP(src="10.0.0.1", dst="10.0.0.2"), IP(src="10.0.0.2", dst="10.0.0.1")
    req = f"GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    return [c / TCP(sport=sport, dport=80, flags="S", seq=100),
            s / TCP(sport=80, dport=sport, flags="SA", seq=900, ack=101),
            c / TCP(sport=sport, dport=80, flags="A", seq=101, ack=901),
            c / TCP(sport=sport, dport=80, flags="PA", seq=101, ack=901) / Raw(req),
            s / TCP(sport=80, dport=sport, flags="PA", seq=901, ack=101 + len(req)) / Raw(resp)]


def test_replay_hands_a_frames_one_record_to_handle_raw(fastpath, tmp_path, monkeypatch):
    """A frame writes one payload record, and replay hands it over alone
    (Engine.handle_raw), not as a batch of one (handle_raw_batch: its lists,
    loop and run check per record); the records and EVE are the same."""
    from slowpath.engine import Engine
    calls = {"one": 0, "batch": 0}
    one, batch = Engine.handle_raw, Engine.handle_raw_batch
    monkeypatch.setattr(Engine, "handle_raw", lambda self, *a: (calls.__setitem__("one", calls["one"] + 1),
                                                                 one(self, *a))[1])
    monkeypatch.setattr(Engine, "handle_raw_batch", lambda self, *a: (
        calls.__setitem__("batch", calls["batch"] + 1), batch(self, *a))[1])
    res, records = replay_packets(fastpath, _get_exchange(40000, "one.test"), tmp_path, "one.pcap")
    assert res.records == 2 and res.engine.counters.records == 2 and res.bad_record is None
    assert calls == {"one": 2, "batch": 0}
    (http,) = [r for r in records if r["event_type"] == "http"]
    assert http["http"]["hostname"] == "one.test" and http["http"]["status"] == 200


def test_replay_takes_a_frames_one_record_from_the_ring(fastpath, tmp_path, monkeypatch):
    """A frame's one payload record is taken from the ring alone
    (RingBuffer.take), not by a drain (its list and loop per record); the
    ring is drained only before the first frame (what an earlier user of
    the fast path left); the records and EVE are the same."""
    from slowpath.ringbuf import RingBuffer
    drains = []
    drain = RingBuffer.drain
    monkeypatch.setattr(RingBuffer, "drain", lambda self, *a: (drains.append(self.name), drain(self, *a))[1])
    res, records = replay_packets(fastpath, _get_exchange(40001, "take.test"), tmp_path, "take.pcap")
    assert res.records == 2 and res.engine.counters.records == 2 and res.bad_record is None
    assert drains.count("ms_insp_ring") == 1
    (http,) = [r for r in records if r["event_type"] == "http"]
    assert http["http"]["hostname"] == "take.test" and http["http"]["status"] == 200
