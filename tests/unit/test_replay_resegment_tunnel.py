"""appliance.replay.resegment() on a TCP super-packet inside a tunnel
(IPIP / 6in4 / 4in6 / 6in6, GRE with and without key, sequence and checksum,
GRE carrying Ethernet, VXLAN and GENEVE over IPv4 and IPv6, a tunnel in a
tunnel): the innermost segment is cut as in a plain frame and each piece
gets the tunnel's headers as the tunnel would build them around the plain
piece (tests/corpus/tunnel_captures.py tunnel()), lengths and checksums
included."""
from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from appliance.replay import MAX_TEST_RUN_FRAME, _csum, resegment
from slowpath.pcap import encapsulation
from tests.corpus.tunnel_captures import ENCAPS, tunnel
from tests.unit.test_replay_resegment import CASES

PLAIN = ("ipv4 options FIN+PSH", "ipv6 options FIN+PSH", "ipv4 vlan", "ipv6 hop-by-hop")
NESTED = {"vxlan-in-gre-key": ("vxlan", "gre-key"), "ipip4-in-geneve": ("ipip4", "geneve"),
          "gre6-key-in-vxlan6": ("gre6-key", "vxlan6")}


def wrapped(frame: bytes, encaps: tuple[str, ...]) -> bytes:
    for e in encaps:
        frame = tunnel(e, frame, inner_is_ethernet=True)
    return frame


def gre_csum_offsets(frame: bytes) -> list[int]:
    """Where the GRE checksums are (tunnel() writes 0 there: its readers do
    not check them; resegment computes them)."""
    return [off + 4 for kind, off in encapsulation(frame) if kind == "gre" and frame[off] & 0x80]


@pytest.mark.parametrize("plain", PLAIN)
@pytest.mark.parametrize("encaps", [(e,) for e in ENCAPS] + list(NESTED.values()), ids=lambda e: "-in-".join(e))
def test_pieces_are_the_tunnel_around_the_plain_pieces(plain, encaps):
    frame = bytes(CASES[plain])
    big = wrapped(frame, encaps)
    assert len(big) > MAX_TEST_RUN_FRAME
    got = resegment(big, MAX_TEST_RUN_FRAME)
    assert got is not None, "not cut"          # before: None (counted too big, skipped)
    # The plain frame cut to the same payload per piece (the tunnel's
    # headers take room from the limit).
    overhead = len(big) - len(frame)
    want = [wrapped(p, encaps) for p in resegment(frame, MAX_TEST_RUN_FRAME - overhead)]
    assert len(got) == len(want) > 1
    for i, (g, w) in enumerate(zip(got, want)):
        assert len(g) <= MAX_TEST_RUN_FRAME
        sums = gre_csum_offsets(g)
        for off in sums:                      # a GRE checksum over its header and payload: valid
            assert _csum(g[off - 4:]) == 0, f"piece {i}: GRE checksum at {off}"
        g = bytearray(g)
        for off in sums:
            g[off:off + 2] = b"\0\0"
        assert bytes(g) == w, f"piece {i} differs"


def test_udp_checksums_recomputed_when_the_capture_had_them():
    """VXLAN over IPv4 and IPv6 with a UDP checksum: each piece's is valid
    (scapy recomputes a deleted one; equal means valid)."""
    for encap, ip in (("vxlan", IP), ("vxlan6", IPv6)):
        big = bytearray(wrapped(bytes(CASES["ipv4 options FIN+PSH"]), (encap,)))
        p = Ether(bytes(big))
        del p[UDP].chksum
        big = bytes(p)                         # the whole with a real UDP checksum
        assert Ether(big)[UDP].chksum
        for piece in resegment(big, MAX_TEST_RUN_FRAME):
            q = Ether(piece)
            u = q[ip][UDP]
            assert u.len == len(bytes(u)) and u.chksum
            again = q.copy()
            del again[ip][UDP].chksum
            assert Ether(bytes(again))[ip][UDP].chksum == u.chksum


def test_outer_ipv4_lengths_and_checksums():
    big = wrapped(bytes(CASES["ipv6 options FIN+PSH"]), ("ipip4",))      # 6in4
    for piece in resegment(big, MAX_TEST_RUN_FRAME):
        outer = Ether(piece)[IP]
        assert outer.proto == 41 and outer.len == len(piece) - 14
        again = outer.copy()
        del again.chksum
        assert IP(bytes(again)).chksum == outer.chksum


@pytest.mark.parametrize("frame", [
    wrapped(bytes(CASES["ipv4 options FIN+PSH"]), ("gre", "gre", "gre")),    # deeper than MAX_TUNNELS
    wrapped(bytes(CASES["ipv4 options FIN+PSH"]), ("vxlan",))[:60],          # cut in the tunnel header
    # an outer fragment: what it carries is not whole
    bytes(Ether() / IP(src="192.0.2.1", dst="192.0.2.2", flags="MF", proto=4)
          / bytes(CASES["ipv4 options FIN+PSH"])[14:]),
    # GRE version 1 (PPTP): not opened
    bytes(Ether() / IP(src="192.0.2.1", dst="192.0.2.2", proto=47)
          / (struct.pack("!HH", 0x0001, 0x0800) + bytes(CASES["ipv4 options FIN+PSH"])[14:])),
])
def test_not_cut(frame):
    assert resegment(frame, MAX_TEST_RUN_FRAME) is None


def test_corrupted_tunnel_frames_never_raise():
    """3,000 tunnelled super-packets with bytes of their headers changed or
    cut: a list of pieces or None, never an exception."""
    import random
    rng = random.Random(17)
    bases = [wrapped(bytes(CASES[p]), encaps) for p in PLAIN[:2]
             for encaps in [(e,) for e in ENCAPS] + list(NESTED.values())]
    cut = 0
    for _ in range(3000):
        f = bytearray(rng.choice(bases))
        for _ in range(rng.randrange(1, 4)):
            f[rng.randrange(min(len(f), 200))] = rng.randrange(256)
        if rng.random() < 0.2:
            f = f[:rng.randrange(len(f))]
        pieces = resegment(bytes(f), MAX_TEST_RUN_FRAME)
        if pieces is not None:
            cut += 1
            assert all(len(p) <= MAX_TEST_RUN_FRAME for p in pieces)
    assert cut > 100          # most corruptions land in bytes no walk checks
