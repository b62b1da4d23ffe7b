"""The common-frame decoder (slowpath/pcap.py _plain_ethernet) against the
general one: for every frame it takes, the same packet; every frame it
declines is left to the general path. Frames: real ones from the corpus,
crafted shapes, and random corruptions of both."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from slowpath import pcap

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "pcaps"
ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def general(buf: bytes):
    """_Decoder without the fast path: the packet, or the reason it is none."""
    d = pcap._Decoder(pcap.LINKTYPE_ETHERNET, Counter())
    if len(buf) < pcap.ETH_HEADER_LEN:
        return "short"
    try:
        return tuple(d._ethertype(buf, int.from_bytes(buf[12:14], "big"), pcap.ETH_HEADER_LEN, 0.0))
    except (pcap._NotFlow, pcap._Undecodable) as e:
        return str(e)


def crafted() -> list[bytes]:
    body = Raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return [bytes(f) for f in (
        Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=80, flags="PA", seq=7) / body,
        Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01\x01\x01\x00") / TCP() / body,
        Ether(**ETH) / IP() / TCP(options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]) / body,
        Ether(**ETH) / IP() / UDP(sport=5353, dport=53) / Raw(b"\x12\x34" + b"\x00" * 10),
        Ether(**ETH) / IP(flags="MF") / UDP() / Raw(b"x" * 40),
        Ether(**ETH) / IP(frag=3) / Raw(b"x" * 40),
        Ether(**ETH) / Dot1Q(vlan=5) / IP() / TCP() / body,
        Ether(**ETH) / Dot1Q(vlan=5) / Dot1Q(vlan=6) / IP() / UDP() / body,
        Ether(**ETH) / Dot1Q(vlan=5) / Dot1Q(vlan=6) / Dot1Q(vlan=7) / IP() / TCP() / body,
        Ether(**ETH) / IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=9, dport=443) / body,
        Ether(**ETH) / IPv6() / UDP() / body,
        Ether(**ETH) / IPv6() / IPv6ExtHdrFragment() / UDP() / body,
        Ether(**ETH) / IP(len=0) / TCP() / body,
        Ether(**ETH) / IP() / TCP() / body / Raw(b"\x00" * 12),            # link padding
    )]


def test_fast_decoder_agrees_with_the_general_one():
    frames = crafted()
    for f in sorted(CORPUS.glob("*.pcap*")) if CORPUS.is_dir() else []:
        frames += [b for _, _, b in pcap.ethernet_frames(f) if b is not None][:200]
    rnd = random.Random(7)
    taken = declined = 0
    for base in list(frames):
        variants = [base, base[:rnd.randrange(len(base) + 1)]]
        for _ in range(20):
            b = bytearray(base)
            for _ in range(rnd.randint(1, 3)):
                i = rnd.randrange(min(len(b), 80))         # headers, where it matters
                b[i] = rnd.choice((0, 0xFF, 0x45, 0x60, 0x06, 0x11, 0x08, 0x81, rnd.randrange(256)))
            variants.append(bytes(b))
        for v in variants:
            fast = pcap._plain_ethernet(v)
            if fast is None:
                declined += 1
                continue
            taken += 1
            assert tuple(fast) == general(v), v.hex()
    assert taken > 1000 and declined > 100
