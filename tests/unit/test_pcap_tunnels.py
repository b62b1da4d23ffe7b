"""slowpath/pcap.py's tunnels (issue 17 item 5) on crafted frames: GRE
(RFC 2784 / 2890 flags), VXLAN, GENEVE (options skipped), IPIP / 6in4 /
4in6 / 6in6; a malformed or truncated tunnel header, or tunnels nested past
MAX_TUNNELS (or layers past MAX_ENCAPSULATIONS), makes the frame counted as
undecodable, never an exception, and the capture's other frames are read.
The real-flow comparison (corpus flows inside every tunnel) is
tests/corpus/test_corpus_tunnels.py."""
from __future__ import annotations

import random
import struct
from collections import Counter

import dpkt
import pytest

from slowpath import pcap
from slowpath.offline import analyze_capture
from slowpath.pcap import read_capture
from tests.corpus.tunnel_captures import (
    ENCAPS, ETH_IPV4, ETH_IPV6, ETH_TEB, GENEVE_PORT, OUTER4, VXLAN_PORT, ethernet, geneve, gre,
    ipv4, ipv6, tunnel, udp, vxlan,
)

A, B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
A6, B6 = bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02")
QUERY = bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001")   # example.com A


def dns4(sport: int = 40000) -> bytes:
    """An IPv4 packet: a DNS query for example.com."""
    return ipv4(A, B, 17, udp(sport, 53, QUERY))


def dns6() -> bytes:
    return ipv6(A6, B6, 17, udp(40001, 53, QUERY))


def outer4(proto: int, body: bytes) -> bytes:
    return ethernet(ETH_IPV4, ipv4(*OUTER4, proto, body))


def read(tmp_path, frames: list[bytes]):
    path = tmp_path / "t.pcap"
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=1, snaplen=262144)
        for i, fr in enumerate(frames):
            w.writepkt(fr, ts=1.0 + i)
    return read_capture(path), analyze_capture(path)


@pytest.mark.parametrize("encap", sorted(ENCAPS))
@pytest.mark.parametrize("family", [4, 6])
def test_a_dns_query_inside_each_tunnel_is_the_inner_flow(tmp_path, encap, family):
    inner = dns4() if family == 4 else dns6()
    # ipip4 with an IPv6 packet is 6in4 (IP protocol 41), ipip6 4in6 / 6in6.
    cap, results = read(tmp_path, [tunnel(encap, inner, inner_is_ethernet=False)])
    assert not cap.undecodable and not cap.not_flow
    [flow] = cap.flows
    want = "udp 10.0.0.1:40000 -> 10.0.0.2:53" if family == 4 else "udp [fd00::1]:40001 -> [fd00::2]:53"
    assert flow.key == want
    assert flow.events[0].payload == QUERY
    [r] = results
    assert (r.key, r.app, r.names.get("dns_query")) == (want, "dns", "example.com")


def test_gre_flags_and_protocols(tmp_path):
    ip = dns4()
    good = [
        outer4(47, gre(ETH_IPV4, ip)),
        outer4(47, gre(ETH_IPV4, dns4(40002), key=9, seq=True, csum=True)),
        outer4(47, gre(ETH_IPV4, dns4(40003), flags=0x0080)),          # bits 6-12: ignored (RFC 2784 2.3)
        outer4(47, gre(ETH_TEB, ethernet(ETH_IPV4, dns4(40004)), key=1)),
        outer4(47, gre(ETH_IPV6, dns6())),
    ]
    bad = [
        outer4(47, gre(ETH_IPV4, ip)[:3]),                               # cut in the base header
        outer4(47, gre(ETH_IPV4, b"", key=1, seq=True)[:10]),            # key there, sequence cut
        outer4(47, gre(ETH_IPV4, ip, flags=0x4000)),                     # routing (RFC 1701)
        outer4(47, gre(ETH_IPV4, ip, flags=0x0800)),                     # strict source route
        outer4(47, gre(ETH_IPV4, ip, flags=0x0400)),                     # recursion
        outer4(47, gre(ETH_IPV4, ip, flags=0x0002)),                     # version 2: none
        outer4(47, gre(ETH_TEB, ethernet(ETH_IPV4, b"")[:10])),          # inner Ethernet cut
        outer4(47, gre(ETH_IPV4, ip[:12])),                              # inner IPv4 cut
        outer4(47, gre(ETH_IPV4, ipv4(A, B, 6, b"\x00" * 10))),          # inner TCP cut
    ]
    other = [
        outer4(47, gre(0x880B, b"\xff\x03\x00\x21", flags=0x2001)),     # PPTP (version 1)
        outer4(47, gre(0x8847, b"\x00" * 20)),                          # MPLS inside: not opened
    ]
    cap, results = read(tmp_path, good + bad + other)
    assert [f.key.split(" -> ")[0] for f in cap.flows] == [
        "udp 10.0.0.1:40000", "udp 10.0.0.1:40002", "udp 10.0.0.1:40003", "udp 10.0.0.1:40004",
        "udp [fd00::1]:40001"]
    assert cap.undecodable == Counter({"gre header truncated": 2, "gre header reserved flags set": 3,
                                       "gre version 2": 1,
                                       "gre inner ethernet header truncated": 1,
                                       "ipv4 header truncated": 1, "tcp header truncated": 1})
    assert cap.not_flow == Counter({"gre version 1": 1, "gre protocol 0x8847": 1})
    assert [r.app for r in results] == ["dns"] * 5


def test_vxlan_and_geneve_headers(tmp_path):
    eth = ethernet(ETH_IPV4, dns4())

    def vx(payload: bytes) -> bytes:
        return outer4(17, udp(50000, VXLAN_PORT, payload))

    def gv(payload: bytes) -> bytes:
        return outer4(17, udp(50000, GENEVE_PORT, payload))

    good = [vx(vxlan(1, eth)),
            vx(vxlan(1, eth, flags=0x88)),                               # another flag beside I
            gv(geneve(ETH_TEB, ethernet(ETH_IPV4, dns4(40002)), options=True)),
            gv(geneve(ETH_IPV6, dns6(), vni=3))]
    bad = [vx(vxlan(1, eth)[:5]),
           vx(vxlan(1, eth, flags=0x00)),                                # no I flag (RFC 7348 5)
           vx(vxlan(1, eth[:13])),
           vx(vxlan(1, ethernet(ETH_IPV4, dns4()[:19]))),
           gv(geneve(ETH_TEB, eth)[:7]),
           gv(geneve(ETH_TEB, eth, version=1)),                          # RFC 8926 3.4: dropped
           gv(geneve(ETH_TEB, b"", opt_len=10)),                         # options past the end
           gv(geneve(ETH_TEB, eth[:13]))]
    other = [vx(vxlan(1, ethernet(0x0806, b"\x00" * 28))),              # the overlay's ARP
             gv(geneve(0x8847, b"\x00" * 20))]
    cap, results = read(tmp_path, good + bad + other)
    assert [f.key for f in cap.flows] == ["udp 10.0.0.1:40000 -> 10.0.0.2:53",
                                          "udp 10.0.0.1:40002 -> 10.0.0.2:53",
                                          "udp [fd00::1]:40001 -> [fd00::2]:53"]
    assert cap.flows[0].packets == 2
    assert cap.undecodable == Counter({"vxlan header truncated": 1, "vxlan header without the vni flag": 1,
                                       "vxlan inner ethernet header truncated": 1,
                                       "ipv4 header truncated": 1, "geneve header truncated": 1,
                                       "geneve version 1": 1, "geneve options truncated": 1,
                                       "geneve inner ethernet header truncated": 1})
    assert cap.not_flow == Counter({"arp": 1, "geneve protocol 0x8847": 1})
    assert [r.app for r in results] == ["dns"] * 3


def test_the_fast_decoder_leaves_tunnel_ports_to_the_general_one():
    frame = outer4(17, udp(50000, VXLAN_PORT, vxlan(1, ethernet(ETH_IPV4, dns4()))))
    assert pcap._plain_ethernet(frame) is None
    assert pcap._plain_ethernet(outer4(17, udp(50000, GENEVE_PORT, b"x" * 20))) is None
    assert pcap._plain_ethernet(outer4(17, udp(50000, 53, QUERY)))[4] == 53
    # UDP from port 4789 (a reply to a client that used it) is not VXLAN.
    assert pcap._plain_ethernet(outer4(17, udp(VXLAN_PORT, 53, QUERY)))[4] == 53


def test_tunnel_nesting_is_bounded(tmp_path):
    two = tunnel("gre-key", tunnel("vxlan", dns4(), inner_is_ethernet=False), inner_is_ethernet=True)
    three = tunnel("ipip4", two, inner_is_ethernet=True)
    assert pcap.MAX_TUNNELS == 2
    deep_ipip = dns4(40002)
    for _ in range(pcap.MAX_TUNNELS):
        deep_ipip = ipv4(*OUTER4, 4, deep_ipip)
    too_deep_ipip = ipv4(*OUTER4, 4, deep_ipip)
    # VLAN tags inside a tunnel's Ethernet count towards MAX_ENCAPSULATIONS:
    # the VXLAN layer is one, so one tag fewer than the bound fits.
    def tagged(n: int) -> bytes:
        body = dns4(40003)
        inner = ethernet(0x8100, b"".join(struct.pack("!HH", 5, 0x8100) for _ in range(n - 1))
                         + struct.pack("!HH", 5, ETH_IPV4) + body)
        return outer4(17, udp(50000, VXLAN_PORT, vxlan(1, inner)))
    cap, _ = read(tmp_path, [two, three, ethernet(ETH_IPV4, deep_ipip), ethernet(ETH_IPV4, too_deep_ipip),
                             tagged(pcap.MAX_ENCAPSULATIONS - 1), tagged(pcap.MAX_ENCAPSULATIONS)])
    assert [f.key.split(" -> ")[0] for f in cap.flows] == [
        "udp 10.0.0.1:40000", "udp 10.0.0.1:40002", "udp 10.0.0.1:40003"]
    assert cap.flows[0].packets == 1 and cap.flows[2].packets == 1
    assert cap.undecodable == Counter({"too many tunnels": 2, "too many encapsulations": 1})


def test_corrupted_tunnel_frames_never_raise():
    """Random bytes over the tunnel headers (and cuts) of every kind of
    tunnelled frame: each decodes to a packet or a counted reason."""
    bases = [tunnel(e, dns4(), inner_is_ethernet=False) for e in ENCAPS]
    bases += [tunnel(e, dns6(), inner_is_ethernet=False) for e in ENCAPS if e != "ipip4"]
    bases.append(tunnel("gre-key", tunnel("geneve", dns4(), inner_is_ethernet=False), inner_is_ethernet=True))
    rnd = random.Random(17)
    outcomes = Counter()
    for base in bases:
        for i in range(300):
            b = bytearray(base[:rnd.randrange(15, len(base) + 1)] if i % 3 == 0 else base)
            for _ in range(rnd.randint(1, 4)):
                j = rnd.randrange(14, min(len(b), 140))
                b[j] = rnd.choice((0, 0xFF, 0x08, 0x40, 0x65, 0x58, 0x86, 0xDD, rnd.randrange(256)))
            d = pcap._Decoder(pcap.LINKTYPE_ETHERNET, Counter())
            try:
                d.decode(bytes(b), 0.0)
                outcomes["packet"] += 1
            except (pcap._NotFlow, pcap._Undecodable):
                outcomes["counted"] += 1
    assert outcomes["packet"] > 500 and outcomes["counted"] > 500
