"""`microseg replay` runs its frames with the objects made before them frozen
out of the collector and a higher young-generation threshold
(appliance/replay.py REPLAY_GC_THRESHOLD0: fewer collections, none walking
the modules and the compiled policy again), and gives both back as they
were: after a replay, after one that failed, and leaving alone a caller's
own freeze or a collector the caller turned off."""
from __future__ import annotations

import gc

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

DNS_QUERY = bytes.fromhex("abcd01000001000000000000") + b"\x01a\x00\x00\x01\x00\x01"


@pytest.fixture
def one_frame(tmp_path):
    pcap = tmp_path / "one.pcap"
    wrpcap(str(pcap), [Ether() / IP(src="10.2.0.1", dst="10.2.0.53") / UDP(sport=5000, dport=53) / DNS_QUERY])
    return pcap


def _replay(fp, pcap, emit):
    from appliance.daemon import empty_rules
    from appliance.replay import replay, replay_config
    try:
        fp.reset()
        fp.apply_runtime(replay_config())
        return replay(pcap, fp, empty_rules(), emit)
    finally:
        fp.reset()
        fp.apply_runtime(fp.config)


def test_frames_run_frozen_with_a_higher_threshold_then_all_is_restored(fastpath, one_frame):
    from appliance.replay import REPLAY_GC_THRESHOLD0
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0 and before[0] < REPLAY_GC_THRESHOLD0
    seen = []
    res = _replay(fastpath, one_frame, lambda r: seen.append((gc.get_freeze_count(), gc.get_threshold())))
    assert res.frames == 1 and seen          # records were written while the frames ran
    assert all(frozen > 0 and thr[0] == REPLAY_GC_THRESHOLD0 and thr[1:] == before[1:] for frozen, thr in seen), seen
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before


def test_a_failed_replay_restores_the_collector(fastpath, one_frame):
    before = gc.get_threshold()

    def boom(rec):
        raise RuntimeError("sink failed")
    with pytest.raises(RuntimeError, match="sink failed"):
        _replay(fastpath, one_frame, boom)
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before


def test_a_callers_freeze_and_disabled_collector_are_left_alone(fastpath, one_frame):
    before = gc.get_threshold()
    gc.freeze()
    try:
        gc.set_threshold(0)
        seen = []
        _replay(fastpath, one_frame, lambda r: seen.append(gc.get_threshold()[0]))
        assert seen and set(seen) == {0}
        # Still frozen (a few frozen objects may have been freed meanwhile).
        assert gc.get_threshold()[0] == 0 and gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
