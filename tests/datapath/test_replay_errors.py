"""`microseg replay` on damaged captures and with an existing --eve file.

Replay runs the real BPF program (BPF_PROG_TEST_RUN), so these need root;
the capture reader's own handling of the same files is tested without the
kernel in tests/unit/test_pcap_reader.py.

Each case: one clear line (or a summary plus one warning line), never a
traceback, and an existing EVE file replaced only by a replay that worked.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

MICROSEG = [sys.executable, "-m", "appliance.cli"]
ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
OLD_EVE = '{"event_type": "old", "note": "from an earlier replay"}\n'


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.fail("microseg replay loads the BPF program and needs root (CAP_BPF)")


def replay(*args, cwd=None):
    return subprocess.run([*MICROSEG, "replay", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def http_frames() -> list[bytes]:
    """One HTTP request and its response, with the handshake: replay logs it."""
    c, s = IP(src="10.0.0.1", dst="10.0.0.2"), IP(src="10.0.0.2", dst="10.0.0.1")
    req = b"GET /index.html HTTP/1.1\r\nHost: example.test\r\nUser-Agent: t\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    pkts = [c / TCP(sport=40000, dport=80, flags="S", seq=100),
            s / TCP(sport=80, dport=40000, flags="SA", seq=900, ack=101),
            c / TCP(sport=40000, dport=80, flags="A", seq=101, ack=901),
            c / TCP(sport=40000, dport=80, flags="PA", seq=101, ack=901) / Raw(req),
            s / TCP(sport=80, dport=40000, flags="PA", seq=901, ack=101 + len(req)) / Raw(resp),
            c / TCP(sport=40000, dport=80, flags="FA", seq=101 + len(req), ack=901 + len(resp)),
            s / TCP(sport=80, dport=40000, flags="FA", seq=901 + len(resp), ack=102 + len(req))]
    return [bytes(Ether(**ETH) / p) for p in pkts]


def write_pcap(path: Path, frames: list[bytes]) -> Path:
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, snaplen=262144)
        for i, fr in enumerate(frames):
            w.writepkt(fr, ts=1_700_000_000.0 + i)
    return path


def eve_types(path: Path) -> list[str]:
    return [json.loads(line)["event_type"] for line in path.read_text().splitlines()]


def no_part_files(d: Path) -> bool:
    return not [p for p in d.iterdir() if p.name.endswith(".part")]


def assert_no_traceback(r):
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr


@pytest.mark.parametrize("bad", [b"", b"\x01\x02\x03\x04\x05"], ids=["empty", "5-byte"])
def test_empty_or_tiny_frame_is_counted_and_the_rest_runs(tmp_path, bad):
    frames = http_frames()
    frames.insert(3, bad)
    pcap = write_pcap(tmp_path / "tiny.pcap", frames)
    out = tmp_path / "eve.json"
    r = replay(pcap, "--eve", out)
    assert_no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert "1 shorter than an Ethernet header" in r.stdout
    assert "http" in eve_types(out)                       # the good frames were all run
    j = replay(pcap, "--eve", out, "--json")
    summary = json.loads(j.stdout)
    assert (summary["frames"], summary["too_short"], summary["cut"]) == (len(frames), 1, None)
    # The frame loop's own CPU time (start-up excluded), and no record the engine could not read.
    assert summary["cpu_s"] > 0 and summary["bad_records"] == 0


def test_capture_cut_mid_record_prints_summary_and_the_offset(tmp_path):
    data = write_pcap(tmp_path / "whole.pcap", http_frames() + [http_frames()[0]]).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:-20])                           # the last record loses 20 bytes
    last_record = len(data) - 16 - len(http_frames()[0])  # where the last record header starts
    out = tmp_path / "eve.json"
    out.write_text(OLD_EVE)
    r = replay(cut, "--eve", out)
    assert_no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{cut}: 7 frames")         # the summary
    (warning,) = r.stderr.splitlines()
    assert warning.startswith("warning: ") and f"byte offset {last_record + 16}" in warning
    assert "frame 8" in warning
    types = eve_types(out)
    assert "old" not in types and "http" in types          # what was read ran and was written
    j = json.loads(replay(cut, "--eve", out, "--json").stdout)
    assert j["cut"]["offset"] == last_record + 16 and j["cut"]["frame"] == 8


def test_failed_replay_leaves_an_existing_eve_file_alone(tmp_path):
    out = tmp_path / "eve.json"
    out.write_text(OLD_EVE)
    notpcap = tmp_path / "notes.pcap"
    notpcap.write_bytes(b"this is not a capture file")
    r = replay(notpcap, "--eve", out)
    assert_no_traceback(r)
    assert r.returncode != 0
    (line,) = r.stderr.splitlines()
    assert line.startswith("microseg: error: ") and "not a pcap or pcapng file" in line
    assert out.read_text() == OLD_EVE
    assert no_part_files(tmp_path)

    # pcapng whose first block claims a length smaller than a block: a failure too
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(b"\x0a\x0d\x0d\x0a" + struct.pack("<I", 8) + b"\x4d\x3c\x2b\x1a")
    r = replay(bad, "--eve", out)
    assert_no_traceback(r)
    assert r.returncode != 0 and out.read_text() == OLD_EVE and no_part_files(tmp_path)


def test_successful_replay_replaces_the_eve_file(tmp_path):
    out = tmp_path / "eve.json"
    out.write_text(OLD_EVE)
    r = replay(write_pcap(tmp_path / "ok.pcap", http_frames()), "--eve", "eve.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    types = eve_types(out)
    assert "old" not in types and "http" in types
    assert no_part_files(tmp_path)
