"""slowpath/records.py VerdictWriter against a real BPF hash map: the
verdict, cookie and write time land under the connection's key, though
the key, value and attribute buffers are built once and reused by every
verdict (no buffer of one verdict leaks into the next)."""
from __future__ import annotations

import ctypes
import os
import random
import time

import pytest

from datapath import bpfsys
from slowpath.records import VerdictWriter, session_ref

KEY_SIZE = 40     # struct ms_flow_key's size; any size works, the writer reads it from the map


class SlowVerdict(ctypes.Structure):
    """The shape of struct ms_slow_verdict (bpf/lib/maps.h), for a map this test makes."""
    _fields_ = [("verdict", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3), ("cookie", ctypes.c_uint32),
                ("ts_ns", ctypes.c_uint64)]


class Beat(ctypes.Structure):
    _fields_ = [("heartbeat_ns", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


@pytest.fixture
def maps():
    if os.geteuid() != 0:
        pytest.skip("creating BPF maps needs root")
    fds = [bpfsys.create_map(bpfsys.BPF_MAP_TYPE_HASH, KEY_SIZE, ctypes.sizeof(SlowVerdict), 64),
           bpfsys.create_map(bpfsys.BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(Beat), 2)]
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def read(fd: int, key: bytes) -> SlowVerdict | None:
    raw = bpfsys.map_lookup(fd, key, ctypes.sizeof(SlowVerdict))
    return None if raw is None else SlowVerdict.from_buffer_copy(raw)


def test_each_verdict_lands_under_its_own_key_with_its_cookie(maps):
    vfd, sfd = maps
    w = VerdictWriter(vfd, sfd, SlowVerdict, Beat)
    rng = random.Random(7)
    written = {}
    for i in range(40):
        key = rng.randbytes(KEY_SIZE)
        cookie = rng.getrandbits(32)
        code = rng.choice((1, 2, 3))
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        ts = w.verdict(session_ref(key, cookie), code)
        assert before <= ts <= time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        written[key] = (code, cookie, ts)
    for key, (code, cookie, ts) in written.items():      # none overwritten by a later verdict's buffers
        v = read(vfd, key)
        assert (v.verdict, v.cookie, v.ts_ns, bytes(v.pad)) == (code, cookie, ts, b"\0\0\0")
    assert len(list(bpfsys.map_keys(vfd, KEY_SIZE))) == 40


def test_a_reference_of_the_wrong_size_is_refused_not_written(maps):
    vfd, sfd = maps
    w = VerdictWriter(vfd, sfd, SlowVerdict, Beat)
    for ref in (bytes(KEY_SIZE + 3), bytes(KEY_SIZE + 40)):
        with pytest.raises(ValueError, match=f"keys are {KEY_SIZE} bytes"):
            w.verdict(ref, 1)
    assert list(bpfsys.map_keys(vfd, KEY_SIZE)) == []
