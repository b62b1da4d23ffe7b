"""appliance/flowlog.py CaptureTime: the kernel's session-clock stamps of a
replay mapped to its frames' capture times, with the precise clock (every
frame its own reading: replay_config()) and the coarse one (frames within a
tick share it)."""
from __future__ import annotations

from appliance.flowlog import CaptureTime
from datapath.flowevents import FlowEnd


def _clocked(coarse: bool, readings: list[int]) -> CaptureTime:
    t = CaptureTime(coarse)
    it = iter(readings)
    t._now = lambda: next(it)        # the clock reading taken before each frame
    return t


def _end(first: int, last: int) -> FlowEnd:
    return FlowEnd(*([0] * len(FlowEnd._fields)))._replace(first_seen_ns=first, last_seen_ns=last)


def test_precise_clock_maps_each_stamp_to_its_frame():
    t = _clocked(False, [100, 200, 300, 400])
    for ts in (10.0, 11.0, 12.5, 13.0):
        t.frame(ts)
    assert list(t.ticks) == [100, 200, 300, 400] and list(t.first) == list(t.last) == [10.0, 11.0, 12.5, 13.0]
    # A stamp belongs to the last frame whose reading is not after it.
    ev = t.convert(_end(250, 400))
    assert (ev.first_seen_ns, ev.last_seen_ns) == (11_000_000_000, 13_000_000_000)
    ev = t.convert(_end(50, 399))           # before the first frame: the first frame's time
    assert (ev.first_seen_ns, ev.last_seen_ns) == (10_000_000_000, 12_500_000_000)


def test_coarse_clock_frames_of_one_tick_share_it():
    t = _clocked(True, [100, 100, 100, 200])
    for ts in (10.0, 11.0, 12.0, 13.0):
        t.frame(ts)
    assert list(t.ticks) == [100, 200] and list(t.first) == [10.0, 13.0] and list(t.last) == [12.0, 13.0]
    ev = t.convert(_end(100, 150))          # start: the tick's first frame; end: its last
    assert (ev.first_seen_ns, ev.last_seen_ns) == (10_000_000_000, 12_000_000_000)


def test_convert_changes_the_two_times_only():
    """convert() builds the FlowEnd field by field: every other field is
    the kernel's, in its place, and the result is a FlowEnd."""
    t = _clocked(False, [100, 200])
    t.frame(10.0)
    t.frame(11.5)
    ev = FlowEnd(*(f"field{i}" for i in range(len(FlowEnd._fields))))._replace(first_seen_ns=150, last_seen_ns=250)
    got = t.convert(ev)
    assert type(got) is FlowEnd
    assert got == ev._replace(first_seen_ns=10_000_000_000, last_seen_ns=11_500_000_000)


def test_a_frame_keeps_no_object_alive():
    """A replay calls frame() for every frame of the capture and keeps the
    readings to its end: as numbers in arrays (16 bytes a frame), not as the
    int and float objects the frame's clock and timestamp were, which a list
    keeps alive (~72 bytes a frame of heap the replay grows by). (Fails with
    lists: each frame's time object is still referenced.)"""
    import weakref

    class Stamp(float):            # a float that can be watched for its release
        pass

    for coarse in (False, True):
        t = _clocked(coarse, [100, 200, 300])
        watched = []
        for ts in (10.0, 11.0, 12.5):
            s = Stamp(ts)
            watched.append(weakref.ref(s))
            t.frame(s)
            del s
        assert [w() for w in watched] == [None, None, None]
        ev = t.convert(_end(250, 300))       # the mapping reads the same values back
        assert (ev.first_seen_ns, ev.last_seen_ns) == (11_000_000_000, 12_500_000_000)
