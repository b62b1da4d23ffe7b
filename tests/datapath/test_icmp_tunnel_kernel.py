"""ICMP errors about tunnelled packets in the real program (bpf/lib/icmp.h).

A router on a tunnel's path quotes the packet it could not forward: the
OUTER packet, whose 5-tuple (the GRE or UDP packet between the tunnel
endpoints) has no session since the fast path tracks the inner flow
(bpf/lib/tunnel.h). The error must still pass as PASS_ICMP_RELATED when
the quote shows a tracked inner flow (routers quote up to 576 bytes for
ICMPv4, RFC 1812, and as much as fits in 1280 for ICMPv6, RFC 4443), or
path MTU discovery over a VXLAN, GENEVE or GRE link through the gateway
breaks. A quote of a tunnel packet of an unknown inner flow stays
DROP_ICMP_UNMATCHED; one too short to show the inner flow (RFC 792's IP
header + 8 bytes) is PASS_ICMP_TUNNEL_QUOTE, or DROP_ICMP_TUNNEL_QUOTE
with `tunnels.short_quote_action: drop`; with `tunnels.decap: false` the
outer flow is matched as before.
"""
from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import IPv6, ICMPv6PacketTooBig, ICMPv6TimeExceeded
from scapy.packet import Raw

from datapath.config import DatapathConfig, Tunnels
from datapath.enums import CtState, Reason
from packets_ct import FLOWS, ether, expect
from test_tunnel_kernel import (ETH_P_IP, OUT4, OUT6, REQUEST, SYN, VXLAN_PORT, all_flows, geneve, gre,
                                gre_header, ipip, nested, tun_conn, vxlan)

R = Reason

ROUTER4, ROUTER6 = "198.51.100.254", "2001:db8:fe::1"
# What a router quotes of the packet it could not forward: ICMPv4 as much
# as keeps the error within 576 bytes (RFC 1812 4.3.2.3), ICMPv6 within
# the minimum MTU, 1280 (RFC 4443 2.4 (c)); IP + ICMP headers subtracted.
QUOTE4, QUOTE6 = 576 - 20 - 8, 1280 - 40 - 8
# RFC 792: the IP header and the first 8 bytes of its payload.
RFC792 = 8
# A segment larger than the quote, as the one too big for the next hop is.
BIG = b"x" * 1300


def icmp_error(quote: bytes, *, kind: str = "too-big") -> bytes:
    """An error from a router to the quoted packet's source (the tunnel
    endpoint), quoting ``quote`` (an L3 packet, cut as the router cuts it)."""
    src = quote[12:16] if quote[0] >> 4 == 4 else quote[8:24]
    if quote[0] >> 4 == 4:
        dst = ".".join(str(b) for b in src)
        err = ICMP(type=3, code=4, nexthopmtu=1400) if kind == "too-big" else ICMP(type=11, code=0)
        return bytes(ether() / IP(src=ROUTER4, dst=dst) / err / Raw(quote[:QUOTE4]))
    dst = str(IPv6(bytes(quote[:40])).src)
    err = ICMPv6PacketTooBig(mtu=1280) if kind == "too-big" else ICMPv6TimeExceeded()
    return bytes(ether() / IPv6(src=ROUTER6, dst=dst) / err / Raw(quote[:QUOTE6]))


def outer_ip_len(l3: bytes) -> int:
    return (l3[0] & 0x0F) * 4 if l3[0] >> 4 == 4 else 40


def established(fp, encap, family=4):
    """A tunnelled TCP session, established, with a large segment each way
    sent through it: the packets whose quotes the tests send back."""
    c = tun_conn(fp, encap, family)
    c.handshake()
    c.send("c", "PA", data=REQUEST)
    c.send("s", "A")
    big = {frm: c.send(frm, "PA", data=BIG)[14:] for frm in ("c", "s")}
    c.assert_state(CtState.CT_ESTABLISHED, FLOWS)
    return c, big


TUNNELS = [
    pytest.param(vxlan(), 4, id="vxlan"),
    pytest.param(geneve(), 4, id="geneve-options"),
    pytest.param(gre(key=0x1234), 4, id="gre-key"),
    pytest.param(gre(key=1, seq=2, csum=True), 6, id="gre-csum-key-seq"),
    pytest.param(ipip(), 6, id="6in4"),
    pytest.param(vxlan(OUT6), 4, id="vxlan-over-ipv6"),
    pytest.param(geneve(OUT6, ethernet=False), 6, id="geneve-over-ipv6"),
    pytest.param(gre(teb=True, key=5), 4, id="gre-ethernet"),
    pytest.param(nested(gre(key=3), geneve()), 6, id="geneve-in-gre"),
]


@pytest.mark.parametrize("encap, family", TUNNELS)
def test_error_quoting_a_tracked_inner_flow_is_related(fastpath, encap, family):
    _, big = established(fastpath, encap, family)
    before = all_flows(fastpath)
    for frm in ("c", "s"):   # about either direction's packet, to either tunnel end
        expect(fastpath, icmp_error(big[frm]), R.PASS_ICMP_RELATED)
    expect(fastpath, icmp_error(big["c"], kind="time-exceeded"), R.PASS_ICMP_RELATED)
    assert all_flows(fastpath) == before     # an error creates no session


@pytest.mark.parametrize("encap, family", TUNNELS)
def test_error_quoting_an_unknown_inner_flow_is_unmatched(fastpath, encap, family):
    c, _ = established(fastpath, encap, family)
    c.c.port += 1          # the same tunnel, another inner flow
    other = c.frame("c", "PA", data=BIG)[14:]
    expect(fastpath, icmp_error(other), R.DROP_ICMP_UNMATCHED)


def _cut(l3: bytes, n: int) -> bytes:
    """The first ``n`` bytes past the outer IP header."""
    return l3[:outer_ip_len(l3) + n]


@pytest.mark.parametrize("encap, family", TUNNELS)
def test_short_quote_passes_or_drops_as_configured(fastpath, encap, family):
    _, big = established(fastpath, encap, family)
    q = big["c"]
    expect(fastpath, icmp_error(_cut(q, RFC792)), R.PASS_ICMP_TUNNEL_QUOTE)
    fastpath.apply_runtime(DatapathConfig(tunnels=Tunnels(short_quote_action="drop")))
    expect(fastpath, icmp_error(_cut(q, RFC792)), R.DROP_ICMP_TUNNEL_QUOTE)
    # A quote long enough is matched whatever the setting.
    expect(fastpath, icmp_error(q), R.PASS_ICMP_RELATED)


def test_short_quote_cut_anywhere_before_the_inner_ports(fastpath):
    """Every cut between the outer header + 8 and the inner flow's 8 bytes of
    L4 header is short; from there on the inner flow is named."""
    _, big = established(fastpath, vxlan())
    q = big["c"]
    # outer IPv4 20, UDP 8, VXLAN 8, Ethernet 14, inner IPv4 20, then 8 of TCP
    named = 20 + 8 + 8 + 14 + 20 + 8
    for n in range(20 + RFC792, named):
        expect(fastpath, icmp_error(q[:n]), R.PASS_ICMP_TUNNEL_QUOTE)
    expect(fastpath, icmp_error(q[:named]), R.PASS_ICMP_RELATED)


def test_a_quote_that_is_not_short_is_not_passed_as_short(fastpath):
    """The quote of a whole tunnel packet whose header runs past its own end
    (a packet the fast path dropped as malformed), or of an outer fragment
    (never decapsulated), names no flow: unmatched, not a short quote."""
    vxlan_cut = b"\x08\0\0\0\0\0\x2a\0" + bytes(ether())[:10]          # VXLAN, inner Ethernet cut
    for proto, l4 in ((47, gre_header(ETH_P_IP, key=1, seq=2)[:9]),   # key and sequence flagged, 9 bytes
                      (17, struct.pack("!HHHH", 50000, VXLAN_PORT, 8 + len(vxlan_cut), 0) + vxlan_cut)):
        whole = bytes(IP(src=OUT4[0], dst=OUT4[1], proto=proto) / Raw(l4))
        expect(fastpath, icmp_error(whole), R.DROP_ICMP_UNMATCHED)
        expect(fastpath, icmp_error(whole[:-1]), R.PASS_ICMP_TUNNEL_QUOTE)   # the same cut by the quote
    frag = IP(src=OUT4[0], dst=OUT4[1], proto=47, flags="MF", id=7) / Raw(gre_header(ETH_P_IP, key=1) + b"\0" * 40)
    expect(fastpath, icmp_error(_cut(bytes(frag), RFC792)), R.DROP_ICMP_UNMATCHED)


def test_error_about_a_plain_packet_is_unchanged(fastpath):
    """A short quote of anything but a tunnel is unmatched as before."""
    udp = bytes(IP(src=OUT4[0], dst=OUT4[1]) / struct.pack("!HHHH", 5000, 53, 16, 0) / Raw(b"q" * 8))
    expect(fastpath, icmp_error(_cut(udp, RFC792)), R.DROP_ICMP_UNMATCHED)


@pytest.mark.parametrize("encap, outer_related", [
    pytest.param(vxlan(), True, id="vxlan"),     # the outer UDP datagram's session, as before
    pytest.param(gre(key=1), False, id="gre"),   # GRE never had a session
])
def test_decap_off_matches_the_outer_flow_as_before(fastpath, encap, outer_related):
    fastpath.apply_runtime(DatapathConfig(tunnels=Tunnels(decap=False)))
    c = tun_conn(fastpath, encap)
    c.send("c", "S", R.PASS_FORWARD if outer_related else R.PASS_OTHER_L4)
    q = c.frame("c", "PA", data=BIG)[14:]
    outer = R.PASS_ICMP_RELATED if outer_related else R.DROP_ICMP_UNMATCHED
    expect(fastpath, icmp_error(q), outer)
    expect(fastpath, icmp_error(_cut(q, RFC792)), outer)
    # Nothing is decapsulated, so a short quote of a tunnel without an outer
    # session is unmatched, not PASS_ICMP_TUNNEL_QUOTE.
    other = bytes(gre(("192.0.2.9", OUT4[1]), key=1)(SYN, False))
    expect(fastpath, icmp_error(_cut(other, RFC792)), R.DROP_ICMP_UNMATCHED)
