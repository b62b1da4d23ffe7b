"""Tunnels in the real program (bpf/lib/tunnel.h): IPIP, 6in4, IPv4 and IPv6
in IPv6, GRE (keyed or not, sequence numbers, checksum field, IP or
Ethernet inside), VXLAN and GENEVE (options skipped, Ethernet or IP
inside) are decapsulated, and the inner flow is the session.

A TCP conversation is run whole through each tunnel (handshake, a request,
its acknowledgement, the reply packets tunnelled back with the outer
addresses swapped): the session must be the inner 5-tuple's, and must be
the only one (no session of the outer UDP or GRE packet), and the
acknowledgement of the request must fall in the window, which it only does
if the payload length was read from the inner packet. Then the depth
bound, malformed headers, what is left encapsulated, the `tunnels`
settings (decap off, policy on inner or outer addresses), and the payload
records the slow path gets (inner addresses, inner payload).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from appliance.policyfile import compile_text
from datapath.config import DatapathConfig, Tunnels
from datapath.enums import CtState, Reason
from datapath.policy_maps import PolicyMaps
from packets_ct import FLOWS, HALFOPEN, TcpConn, ether, expect, table_len

R = Reason

# The limits of bpf/lib/tunnel.h, restated (a test checks the documented value).
MS_TUN_MAX_DEPTH = 2
VXLAN_PORT, GENEVE_PORT = 4789, 6081
ETH_P_IP, ETH_P_IPV6, ETH_P_TEB, ETH_P_MPLS, ETH_P_ARP = 0x0800, 0x86DD, 0x6558, 0x8847, 0x0806

# Outer (tunnel endpoint) and inner (the hosts that talk) addresses.
OUT4 = ("192.0.2.1", "192.0.2.2")
OUT6 = ("2001:db8:ff::1", "2001:db8:ff::2")
IN4 = (("10.0.0.5", 40000), ("10.0.1.5", 80))
IN6 = (("fd00::5", 40000), ("fd00:1::5", 80))


# --------------------------------------------------------------------------
# Encapsulations: inner IP packet (bytes) -> the L3 packet on the wire
# --------------------------------------------------------------------------

def _outer(ends, reverse, **kw):
    src, dst = (ends[1], ends[0]) if reverse else ends
    return IPv6(src=src, dst=dst, **{"nh" if k == "proto" else k: v for k, v in kw.items()}) \
        if ":" in src else IP(src=src, dst=dst, **kw)


def _eth(inner: bytes, vlan: int | None = None, tpid: int = 0x8100) -> bytes:
    et = ETH_P_IPV6 if inner[0] >> 4 == 6 else ETH_P_IP
    head = bytes(ether())[:12]
    if vlan is not None:
        head += struct.pack("!HH", tpid, vlan)
    return head + struct.pack("!H", et) + inner


def _ip_proto(inner: bytes) -> int:
    return 41 if inner[0] >> 4 == 6 else 4


def ipip(ends=OUT4):
    return lambda inner, rev: _outer(ends, rev, proto=_ip_proto(inner)) / Raw(inner)


def gre_header(proto: int, *, csum=False, key=None, seq=None, flags_extra=0, version=0) -> bytes:
    flags = (0x8000 if csum else 0) | (0x2000 if key is not None else 0) | (0x1000 if seq is not None else 0)
    out = struct.pack("!HH", flags | flags_extra | version, proto)
    if csum:
        out += b"\0\0\0\0"        # checksum + reserved1 (not verified)
    if key is not None:
        out += struct.pack("!I", key)
    if seq is not None:
        out += struct.pack("!I", seq)
    return out


def gre(ends=OUT4, teb=False, **kw):
    def enc(inner, rev):
        if teb:
            body = gre_header(ETH_P_TEB, **kw) + _eth(inner)
        else:
            body = gre_header(ETH_P_IPV6 if inner[0] >> 4 == 6 else ETH_P_IP, **kw) + inner
        return _outer(ends, rev, proto=47) / Raw(body)
    return enc


def vxlan_header(vni=42, flags=0x08) -> bytes:
    return struct.pack("!B3xI", flags, vni << 8)


def _udp(ends, rev, dport, body):
    return _outer(ends, rev) / UDP(sport=50000 + rev, dport=dport) / Raw(body)


def vxlan(ends=OUT4, vlan=None, tpid=0x8100):
    return lambda inner, rev: _udp(ends, rev, VXLAN_PORT, vxlan_header() + _eth(inner, vlan, tpid))


def geneve_header(proto: int, options: bytes = b"", version=0, vni=7) -> bytes:
    assert len(options) % 4 == 0
    return struct.pack("!BBH", (version << 6) | len(options) // 4, 0, proto) + struct.pack("!I", vni << 8) + options


# A GENEVE option TLV (RFC 8926 3.5): class, type, length in 4-byte words.
GENEVE_OPTS = struct.pack("!HBB", 0x0102, 0x80, 2) + b"\xaa" * 8 + struct.pack("!HBB", 0x0103, 1, 0)


def geneve(ends=OUT4, ethernet=True, options=GENEVE_OPTS):
    def enc(inner, rev):
        if ethernet:
            body = geneve_header(ETH_P_TEB, options) + _eth(inner)
        else:
            body = geneve_header(ETH_P_IPV6 if inner[0] >> 4 == 6 else ETH_P_IP, options) + inner
        return _udp(ends, rev, GENEVE_PORT, body)
    return enc


def nested(outer_enc, inner_enc):
    """inner_enc's packet carried by outer_enc (two levels)."""
    return lambda inner, rev: outer_enc(bytes(inner_enc(inner, rev)), rev)


@dataclass
class TunConn(TcpConn):
    """A TcpConn whose every segment travels through ``encap`` (the reply
    with the outer addresses swapped, as the far tunnel end sends it)."""
    encap: object = None

    def frame(self, frm: str, flags: str, **kw) -> bytes:
        inner = super().frame(frm, flags, **kw)[14:]
        return bytes(ether() / self.encap(inner, frm == "s"))


def tun_conn(fp, encap, family=4) -> TunConn:
    client, server = IN4 if family == 4 else IN6
    c = TunConn.make(fp, client=client, server=server)
    c.encap = encap
    return c


def all_flows(fp) -> int:
    return table_len(fp, FLOWS) + table_len(fp, HALFOPEN)


REQUEST = b"GET /?q=1 HTTP/1.1\r\nHost: shop.example\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

ENCAPS = [
    pytest.param(ipip(), 4, id="ipip"),
    pytest.param(ipip(), 6, id="6in4"),
    pytest.param(ipip(OUT6), 4, id="4in6"),
    pytest.param(ipip(OUT6), 6, id="6in6"),
    pytest.param(gre(), 4, id="gre"),
    pytest.param(gre(), 6, id="gre-ipv6-inside"),
    pytest.param(gre(OUT6), 4, id="gre-over-ipv6"),
    pytest.param(gre(key=0x1234), 4, id="gre-key"),
    pytest.param(gre(key=0x1234, seq=7), 4, id="gre-key-seq"),
    pytest.param(gre(csum=True, key=1, seq=2), 6, id="gre-csum-key-seq"),
    pytest.param(gre(seq=9), 4, id="gre-seq"),
    pytest.param(gre(teb=True, key=5), 4, id="gre-ethernet"),
    pytest.param(vxlan(), 4, id="vxlan"),
    pytest.param(vxlan(), 6, id="vxlan-ipv6-inside"),
    pytest.param(vxlan(OUT6), 4, id="vxlan-over-ipv6"),
    pytest.param(vxlan(vlan=100), 4, id="vxlan-tagged-inner"),
    # the TPIDs the outer parse takes (parse.h), found by bench/fuzz_tunnels.py
    pytest.param(vxlan(vlan=100, tpid=0x88A8), 4, id="vxlan-8021ad-tagged-inner"),
    pytest.param(vxlan(vlan=100, tpid=0x9100), 6, id="vxlan-9100-tagged-inner"),
    pytest.param(geneve(), 4, id="geneve-ethernet-options"),
    pytest.param(geneve(options=b""), 6, id="geneve-ethernet"),
    pytest.param(geneve(ethernet=False), 4, id="geneve-ipv4"),
    pytest.param(geneve(OUT6, ethernet=False), 6, id="geneve-ipv6"),
    pytest.param(nested(ipip(OUT6), vxlan()), 4, id="vxlan-in-4in6"),
    pytest.param(nested(gre(key=3), geneve()), 6, id="geneve-in-gre"),
]


@pytest.mark.parametrize("encap, family", ENCAPS)
def test_the_inner_flow_is_the_session(fastpath, encap, family):
    c = tun_conn(fastpath, encap, family)
    c.handshake()
    c.send("c", "PA", data=REQUEST)
    c.send("s", "A")                       # in the window only if the request's length was the inner one
    c.send("s", "PA", data=RESPONSE)
    c.send("c", "A")
    e = c.assert_state(CtState.CT_ESTABLISHED, FLOWS)
    assert tuple(e.leaf.packets) == (4, 3)
    assert all_flows(fastpath) == 1        # no session of the outer packet


def test_two_levels_and_no_more(fastpath):
    two = nested(gre(), vxlan())
    c = tun_conn(fastpath, two)
    c.send("c", "S")
    c.assert_state(CtState.CT_SYN_SENT)
    fastpath.reset()
    assert MS_TUN_MAX_DEPTH == 2
    three = nested(ipip(), nested(gre(), vxlan()))
    c = tun_conn(fastpath, three)
    c.send("c", "S", R.DROP_TUNNEL_TOO_DEEP)
    assert all_flows(fastpath) == 0


def _syn(family=4) -> bytes:
    (cl, cp), (sv, sp) = IN4 if family == 4 else IN6
    l3 = IP(src=cl, dst=sv) if family == 4 else IPv6(src=cl, dst=sv)
    return bytes(l3 / TCP(sport=cp, dport=sp, flags="S", seq=1000))


SYN = _syn()


def _gre_raw(body: bytes) -> bytes:
    return bytes(ether() / IP(src=OUT4[0], dst=OUT4[1], proto=47) / Raw(body))


def _udp_raw(dport: int, body: bytes, ends=OUT4) -> bytes:
    return bytes(ether() / _outer(ends, False) / UDP(sport=50000, dport=dport) / Raw(body))


def _short_inner() -> bytes:
    """An IPv4 header whose total length runs past the GRE packet carrying it."""
    ip = bytearray(SYN)
    struct.pack_into("!H", ip, 2, len(SYN) + 40)
    return bytes(ip)


@pytest.mark.parametrize("frame, reason", [
    pytest.param(_gre_raw(b"\x00\x00"), R.DROP_TUNNEL_MALFORMED, id="gre-cut-short"),
    pytest.param(_gre_raw(gre_header(ETH_P_IP, flags_extra=0x4000) + SYN), R.DROP_TUNNEL_MALFORMED,
                 id="gre-routing-bit"),
    pytest.param(_gre_raw(gre_header(ETH_P_IP, flags_extra=0x0800) + SYN), R.DROP_TUNNEL_MALFORMED,
                 id="gre-strict-source-route"),
    pytest.param(_gre_raw(gre_header(ETH_P_IP, version=2) + SYN), R.DROP_TUNNEL_MALFORMED, id="gre-version-2"),
    pytest.param(_gre_raw(gre_header(ETH_P_IP, key=1)[:6]), R.DROP_TUNNEL_MALFORMED, id="gre-key-cut-short"),
    pytest.param(_gre_raw(gre_header(ETH_P_TEB) + bytes(ether())[:10]), R.DROP_TUNNEL_MALFORMED,
                 id="gre-ethernet-cut-short"),
    pytest.param(_udp_raw(VXLAN_PORT, vxlan_header(flags=0) + _eth(SYN)), R.DROP_TUNNEL_MALFORMED,
                 id="vxlan-no-i-flag"),
    pytest.param(_udp_raw(VXLAN_PORT, b"\x08\0\0"), R.DROP_TUNNEL_MALFORMED, id="vxlan-cut-short"),
    pytest.param(_udp_raw(VXLAN_PORT, vxlan_header() + _eth(SYN)[:12]), R.DROP_TUNNEL_MALFORMED,
                 id="vxlan-inner-ethernet-cut-short"),
    pytest.param(_udp_raw(GENEVE_PORT, geneve_header(ETH_P_IP, version=1) + SYN), R.DROP_TUNNEL_MALFORMED,
                 id="geneve-version-1"),
    pytest.param(_udp_raw(GENEVE_PORT, bytes([0x3f, 0]) + struct.pack("!H", ETH_P_IP) + b"\0" * 4 + SYN[:20]),
                 R.DROP_TUNNEL_MALFORMED, id="geneve-options-past-the-packet"),
    # The inner packet is checked against its outer packet's end, not the frame's.
    pytest.param(_gre_raw(gre_header(ETH_P_IP) + _short_inner()), R.DROP_IPV4_TRUNCATED,
                 id="inner-length-past-the-tunnel"),
    pytest.param(_gre_raw(gre_header(ETH_P_IP) + SYN[:12]), R.DROP_IPV4_TRUNCATED, id="inner-ip-cut-short"),
    pytest.param(_gre_raw(gre_header(ETH_P_IPV6) + SYN), R.DROP_IPV6_BAD_HEADER, id="gre-says-ipv6-carries-ipv4"),
])
def test_malformed_tunnel(fastpath, frame, reason):
    expect(fastpath, frame, reason)
    assert all_flows(fastpath) == 0


ARP = bytes(ether())[:12] + struct.pack("!H", ETH_P_ARP) + b"\0\x01\x08\0\x06\x04\0\x01" + b"\0" * 20


@pytest.mark.parametrize("frame, reason, outer_flows", [
    # PPTP's enhanced GRE (version 1) carries PPP: the GRE packet is the flow.
    pytest.param(_gre_raw(gre_header(0x880B, key=1, version=1) + b"\xff\x03\0\x21" + SYN), R.PASS_OTHER_L4, 0,
                 id="gre-v1-pptp"),
    pytest.param(_gre_raw(gre_header(ETH_P_MPLS) + b"\0\0\x21\xff" + SYN), R.PASS_OTHER_L4, 0, id="gre-mpls"),
    pytest.param(_gre_raw(gre_header(ETH_P_TEB) + ARP), R.PASS_OTHER_L4, 0, id="gre-ethernet-arp"),
    # The overlay's ARP: the outer UDP datagram is the flow.
    pytest.param(_udp_raw(VXLAN_PORT, vxlan_header() + ARP), R.PASS_FORWARD, 1, id="vxlan-arp"),
    pytest.param(_udp_raw(GENEVE_PORT, geneve_header(ETH_P_MPLS) + SYN), R.PASS_FORWARD, 1, id="geneve-mpls"),
    # A fragmented outer packet may hold its inner headers in another fragment.
    pytest.param(bytes(ether() / IP(src=OUT4[0], dst=OUT4[1], proto=4, flags="MF", id=9) / Raw(SYN)),
                 R.PASS_OTHER_L4, 0, id="ipip-first-fragment"),
])
def test_left_encapsulated(fastpath, frame, reason, outer_flows):
    expect(fastpath, frame, reason)
    assert all_flows(fastpath) == outer_flows


@pytest.mark.parametrize("encap, reason, outer_flows", [
    pytest.param(ipip(), R.PASS_OTHER_L4, 0, id="ipip"),
    pytest.param(gre(key=1), R.PASS_OTHER_L4, 0, id="gre"),
    pytest.param(vxlan(), R.PASS_FORWARD, 1, id="vxlan"),
])
def test_decap_off_the_outer_packet_is_the_flow(fastpath, encap, reason, outer_flows):
    fastpath.apply_runtime(DatapathConfig(tunnels=Tunnels(decap=False)))
    c = tun_conn(fastpath, encap)
    c.send("c", "S", reason)
    assert c.entry() is None
    assert all_flows(fastpath) == outer_flows


# Rules on the inner hosts and on the tunnel's endpoints.
POLICY = """
groups:
  clients: [10.0.0.0/24]
  servers: [10.0.1.0/24]
  tunnel_ends: [192.0.2.0/24]
defaults: {ingress: deny, egress: deny}
rules:
  - {name: inner-web, from: clients, to: servers, proto: tcp, ports: [80], action: allow}
  - {name: tunnel-ssh, from: tunnel_ends, to: tunnel_ends, proto: tcp, ports: [22], action: allow}
"""


@pytest.mark.parametrize("policy, dport, reason", [
    pytest.param("inner", 80, R.PASS_POLICY_ALLOW, id="inner-allowed"),
    pytest.param("inner", 22, R.DROP_POLICY_DEFAULT, id="inner-not-allowed"),
    pytest.param("outer", 80, R.DROP_POLICY_DEFAULT, id="outer-not-allowed"),
    pytest.param("outer", 22, R.PASS_POLICY_ALLOW, id="outer-allowed"),
])
def test_policy_on_inner_or_outer_addresses(fastpath, policy, dport, reason):
    fastpath.apply_runtime(DatapathConfig(tunnels=Tunnels(policy=policy)))
    PolicyMaps.for_fastpath(fastpath).apply(compile_text(POLICY, "tunnel.yaml")[1])
    c = TunConn.make(fastpath, client=IN4[0], server=(IN4[1][0], dport))
    c.encap = vxlan()
    c.send("c", "S", reason)
    if reason == R.PASS_POLICY_ALLOW:
        # The reply comes through the tunnel the other way: the session's.
        c.c.started, c.c.nxt = True, c.c.isn + 1
        c.send("s", "SA")
        c.send("c", "A")
        c.assert_state(CtState.CT_ESTABLISHED, FLOWS)
    else:
        assert all_flows(fastpath) == 0


def test_outer_policy_applies_to_protocols_without_sessions(fastpath):
    """An inner protocol without sessions is decided on the outer addresses too."""
    fastpath.apply_runtime(DatapathConfig(tunnels=Tunnels(policy="outer")))
    PolicyMaps.for_fastpath(fastpath).apply(compile_text(
        "groups: {ends: [192.0.2.0/24]}\ndefaults: {ingress: deny, egress: deny}\n"
        "rules: [{from: ends, to: ends, proto: any, action: allow}]\n", "t.yaml")[1])
    sctp = bytes(IP(src=IN4[0][0], dst=IN4[1][0], proto=132) / Raw(b"\0" * 16))
    expect(fastpath, bytes(ether() / ipip()(sctp, False)), R.PASS_OTHER_L4)
    expect(fastpath, bytes(ether() / ipip(("198.51.100.1", "192.0.2.2"))(sctp, False)), R.DROP_POLICY_DEFAULT)


INSPECT_POLICY = """
groups:
  clients: [10.0.0.0/24]
  servers: [10.0.1.0/24]
defaults: {ingress: deny, egress: deny}
rules:
  - {name: async, from: clients, to: servers, proto: tcp, ports: [80], action: inspect, inspect: {what: [waf]}}
"""


@pytest.mark.parametrize("encap", [pytest.param(geneve(), id="geneve"), pytest.param(gre(key=9), id="gre")])
def test_payload_records_are_the_inner_packets(fastpath, encap):
    from test_inspect_kernel import Handoff

    PolicyMaps.for_fastpath(fastpath).apply(compile_text(INSPECT_POLICY, "inspect.yaml")[1])
    h = Handoff(fastpath)
    try:
        h.records()
        h.writer.heartbeat(1)
        c = tun_conn(fastpath, encap)
        c.send("c", "S", R.PASS_POLICY_INSPECT)
        c.c.started, c.c.nxt = True, c.c.isn + 1
        c.send("s", "SA")
        c.send("c", "A")
        c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
        c.send("s", "PA", R.PASS_INSPECT_COPIED, data=RESPONSE)
        req, resp = h.records()
        assert (req.client, req.server, req.side, req.data) == (IN4[0], IN4[1], 0, REQUEST)
        assert req.seq == c.c.isn + 1 and req.app == fastpath.l7.ids["http"]
        assert (resp.side, resp.data, resp.seq) == (1, RESPONSE, c.s.isn + 1)
    finally:
        h.records()
        h.ring.close()
