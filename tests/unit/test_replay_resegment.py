"""appliance.replay.resegment(): a captured TCP super-packet (GRO / TSO,
larger than BPF_PROG_TEST_RUN takes) cut into wire-sized segments with
struct and bytes. The segments are compared byte for byte with what the
scapy implementation it replaced produced (kept here as the reference),
over IPv4 and IPv6, IP and TCP options, VLAN tags and flag combinations."""
from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from appliance.replay import MAX_TEST_RUN_FRAME, RESEGMENT_MSS, resegment

ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
TS_OPTS = [("MSS", 1460), ("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]


def scapy_resegment(frame: bytes, limit: int) -> list[bytes] | None:
    """The scapy implementation replay used before (the reference)."""
    pkt = Ether(frame)
    tcp = pkt.getlayer(TCP)
    if tcp is None:
        return None
    payload = bytes(tcp.payload)
    mss = min(RESEGMENT_MSS, limit - (len(frame) - len(payload)))
    if mss <= 0 or not payload:
        return None
    out = []
    for i in range(0, len(payload), mss):
        seg = pkt.copy()
        t = seg[TCP]
        t.remove_payload()
        t.seq = (tcp.seq + i) % 2**32
        if i + mss < len(payload):
            t.flags = t.flags & ~0x09
        t.add_payload(payload[i:i + mss])
        del t.chksum
        if seg.haslayer(IP):
            del seg[IP].len
            del seg[IP].chksum
        if seg.haslayer(IPv6):
            del seg[IPv6].plen
        out.append(bytes(seg))
    return out


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


V4 = IP(src="10.1.2.3", dst="192.0.2.9", id=4242, ttl=61, flags="DF")
V6 = IPv6(src="2001:db8::1", dst="2001:db8::beef", hlim=60)
CASES = {
    "ipv4 options FIN+PSH": Ether(**ETH) / V4 / TCP(sport=40000, dport=80, flags="FPA", seq=1000, ack=77,
                                                     options=TS_OPTS) / Raw(payload(10000, 1)),
    "ipv4 ip-options PSH odd length": Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_Router_Alert()])
    / TCP(sport=1, dport=2, flags="PA", seq=5) / Raw(payload(7777, 2)),
    "ipv4 seq wraps": Ether(**ETH) / V4 / TCP(sport=3, dport=4, flags="A", seq=2**32 - 2000) / Raw(payload(6000, 3)),
    "ipv4 vlan": Ether(**ETH) / Dot1Q(vlan=7) / V4 / TCP(sport=5, dport=6, flags="PA", seq=9) / Raw(payload(5000, 4)),
    "ipv4 qinq": Ether(**ETH) / Dot1Q(vlan=7, type=0x8100) / Dot1Q(vlan=8) / V4 / TCP(sport=5, dport=6, flags="FA")
    / Raw(payload(4500, 5)),
    "ipv6 options FIN+PSH": Ether(**ETH) / V6 / TCP(sport=443, dport=50000, flags="FPA", seq=77, options=TS_OPTS)
    / Raw(payload(9001, 6)),
    "ipv6 hop-by-hop": Ether(**ETH) / V6 / IPv6ExtHdrHopByHop() / TCP(sport=443, dport=50000, flags="PA", seq=1)
    / Raw(payload(4000, 7)),
    "payload a multiple of the mss": Ether(**ETH) / V4 / TCP(sport=1, dport=2, flags="PA") / Raw(payload(3 * RESEGMENT_MSS, 8)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_segments_as_scapy(name):
    frame = bytes(CASES[name])
    assert len(frame) > MAX_TEST_RUN_FRAME
    want = scapy_resegment(frame, MAX_TEST_RUN_FRAME)
    got = resegment(frame, MAX_TEST_RUN_FRAME)
    assert got is not None and len(got) == len(want) > 1
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"{name}: segment {i} differs"


@pytest.mark.parametrize("name", ["ipv4 options FIN+PSH", "ipv6 options FIN+PSH"])
def test_segments_are_valid_and_fin_psh_on_last(name):
    frame = bytes(CASES[name])
    orig = Ether(frame)[TCP]
    segs = resegment(frame, MAX_TEST_RUN_FRAME)
    data = b""
    for i, s in enumerate(segs):
        assert len(s) <= MAX_TEST_RUN_FRAME
        p = Ether(s)
        t = p[TCP]
        assert t.seq == (orig.seq + len(data)) % 2**32
        last = i == len(segs) - 1
        assert bool(t.flags & 0x01) == last and bool(t.flags & 0x08) == last
        assert t.options == orig.options
        # scapy recomputes a checksum deleted from a parsed packet: equal means valid.
        again = p.copy()
        del again[TCP].chksum
        if again.haslayer(IP):
            del again[IP].chksum
            assert Ether(bytes(again))[IP].chksum == p[IP].chksum
        assert Ether(bytes(again))[TCP].chksum == t.chksum
        data += bytes(t.payload)
    assert data == bytes(orig.payload)


def test_ethernet_trailer_is_not_payload():
    """Bytes after the IP packet (an Ethernet trailer) are not TCP payload:
    the segments carry the IP packet's payload only. (The scapy version put
    them into the last segment's payload, so the stream got bytes the sender
    never sent; in every other byte the outputs agree.)"""
    clean = bytes(CASES["ipv4 vlan"])
    frame = clean + b"\0" * 6
    got = resegment(frame, MAX_TEST_RUN_FRAME)
    assert got == resegment(clean, MAX_TEST_RUN_FRAME) == scapy_resegment(clean, MAX_TEST_RUN_FRAME)
    assert b"".join(bytes(Ether(s)[TCP].payload) for s in got) == bytes(CASES["ipv4 vlan"][TCP].payload)


@pytest.mark.parametrize("frame", [
    bytes(Ether(**ETH) / V4 / UDP(sport=1, dport=2) / Raw(payload(5000, 9))),          # not TCP
    bytes(Ether(**ETH) / V4 / TCP(sport=1, dport=2, flags="A")),                         # no payload
    bytes(Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / TCP() / Raw(payload(5000, 10))),  # fragment
    bytes(Ether(**ETH, type=0x0806) / Raw(payload(5000, 11))),                          # not IP
    b"\0" * 13,
])
def test_not_cut(frame):
    assert resegment(frame, MAX_TEST_RUN_FRAME) is None


def test_headers_too_large_for_limit():
    frame = bytes(CASES["ipv4 options FIN+PSH"])
    assert resegment(frame, 60) is None


def test_no_scapy_on_the_replay_path():
    """Cutting a super-packet imports no scapy (importing it costs a replay
    about a second and its per-packet objects were 14 % of a replay)."""
    frame = bytes(CASES["ipv6 options FIN+PSH"])
    code = ("import sys; from appliance.replay import resegment, MAX_TEST_RUN_FRAME; "
            f"assert resegment(bytes.fromhex('{frame.hex()}'), MAX_TEST_RUN_FRAME); "
            "print(sorted(m for m in sys.modules if m.startswith('scapy'))[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
