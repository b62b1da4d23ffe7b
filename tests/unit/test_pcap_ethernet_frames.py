"""slowpath/pcap.py ethernet_frames(): what replay reads, frame by frame.

A classic pcap of Ethernet frames is read by one generator (the memory-mapped
reader's own, yielding (frame, timestamp, bytes)), not re-yielded by a second
one; every other capture goes through the link-type conversion. Either way
the frames, timestamps and errors are those of the reader (_records)."""
from __future__ import annotations

import struct

import dpkt
import pytest

from slowpath import pcap as pcapmod
from slowpath.pcap import PcapError, ethernet_frames

ETH_FRAME = bytes.fromhex("020000000002020000000001" "0800") + bytes(46)
RAW_IP = bytes.fromhex("4500001c0000000040110000" "0a000001" "0a000002") + bytes(8)


def _write(path, frames, linktype=dpkt.pcap.DLT_EN10MB, nano=False):
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=linktype, nano=nano)
        for i, fr in enumerate(frames):
            w.writepkt(fr, ts=1_700_000_000 + i * 0.25)
    return path


def _expected(path):
    return [(n, ts, pcapmod._to_ethernet(lt, buf)) for n, ts, buf, lt in pcapmod._records(str(path))[2]]


@pytest.mark.parametrize("nano", [False, True])
def test_ethernet_pcap_is_the_readers_own_generator(tmp_path, nano):
    path = _write(tmp_path / "e.pcap", [ETH_FRAME, ETH_FRAME[:20], ETH_FRAME + b"x"], nano=nano)
    it = ethernet_frames(path)
    # One generator a frame, not a wrapper around the reader (the cut: one
    # generator step a frame less); the old code's was _as_ethernet / a
    # generator of ethernet_frames itself.
    assert it.gi_code is pcapmod._records(str(path))[2].gi_code
    got = list(it)
    assert got == _expected(path)
    assert [len(t) for t in got] == [3, 3, 3] and [b for _, _, b in got] == [ETH_FRAME, ETH_FRAME[:20],
                                                                               ETH_FRAME + b"x"]
    assert [ts for _, ts, _ in got] == pytest.approx([1_700_000_000, 1_700_000_000.25, 1_700_000_000.5])


def test_other_link_types_still_get_an_ethernet_header(tmp_path):
    path = _write(tmp_path / "raw.pcap", [RAW_IP, b"\x00junk"], linktype=dpkt.pcap.DLT_RAW)
    got = list(ethernet_frames(path))
    assert got == _expected(path)
    assert got[0][2][12:14] == b"\x08\x00" and got[0][2][14:] == RAW_IP and got[1][2] is None


def test_a_cut_record_raises_after_the_frames_before_it(tmp_path):
    path = _write(tmp_path / "cut.pcap", [ETH_FRAME, ETH_FRAME])
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    it = ethernet_frames(path)
    assert next(it)[2] == ETH_FRAME
    with pytest.raises(PcapError, match=r"truncated at byte offset \d+: frame 2 needs") as e:
        next(it)
    assert e.value.frame == 2
    # and a header cut mid-way
    path.write_bytes(data[:24 + 16 + len(ETH_FRAME) + 5])
    with pytest.raises(PcapError, match="frame 2's block needs 16 bytes"):
        list(ethernet_frames(path))


def test_not_a_capture_is_one_error(tmp_path):
    path = tmp_path / "x.pcap"
    path.write_bytes(struct.pack("<I", 0x12345678) + bytes(40))
    with pytest.raises(PcapError, match="not a pcap or pcapng file"):
        list(ethernet_frames(path))
