"""The packet parser (bpf/lib/parse.h), tested by running the real fast path.

Every test hands a frame built with scapy (or byte by byte where scapy would
"fix" the lie under test) to the loaded tc program through
BPF_PROG_TEST_RUN and checks two things the kernel reports:

* the TC action the program returned, and
* that exactly one reason counter moved, by one packet and the frame's byte
  count, under the direction the program ran in.

Where a packet parses, the flow it created in ``ms_flows`` is read back too:
the canonical key (lower endpoint first, IPv4 as IPv4-mapped IPv6) proves the
addresses and ports were read from the right offsets.

The last test runs ``bench/fastpath.py --quick`` as a smoke test.
"""
from __future__ import annotations

import errno
import ipaddress
import re
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import (ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert,
                               IPOption_RR, fragment)
from scapy.layers.inet6 import (ICMPv6EchoReply, ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment,
                                fragment6)
from scapy.layers.l2 import ARP, GRE, Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Raw

from datapath.enums import Direction, Reason
from datapath.loader import TC_ACT_OK, TC_ACT_SHOT

ING = Direction.DIR_INGRESS
EGR = Direction.DIR_EGRESS
R = Reason

MAC_SRC = "02:00:00:00:00:01"
MAC_DST = "02:00:00:00:00:02"

# Endpoints: in each family LO sorts before HI (the address decides).
V4_LO, V4_HI = "10.0.0.1", "10.0.0.2"
V6_LO, V6_HI = "2001:db8::1", "2001:db8::2"

# The parser's limits (bpf/lib/parse.h), restated: a test that uses them
# checks the documented value, not whatever the header says today.
MS_MAX_VLAN = 3
MS_MAX_IPV6_EXT = 8
MS_MAX_L3_HDR = 512

IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT = 0, 43, 44
IPPROTO_AH, IPPROTO_ESP, IPPROTO_NONE, IPPROTO_DSTOPTS = 51, 50, 59, 60
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6 = 6, 17, 1, 58
IPPROTO_GRE, IPPROTO_SCTP = 47, 132


# --------------------------------------------------------------------------
# Running a frame and reading what the kernel counted
# --------------------------------------------------------------------------

def action_of(reason: Reason) -> int:
    """The TC action a reason must come with (from its name, not from the
    kernel's drop mask, so a wrong mask fails here)."""
    return TC_ACT_SHOT if reason.name.startswith("DROP_") else TC_ACT_OK


def _delta(before: dict, after: dict) -> dict:
    out = {}
    for k in set(before) | set(after):
        b = before.get(k, (0, 0))
        a = after.get(k, (0, 0))
        if a != b:
            out[k] = (a[0] - b[0], a[1] - b[1])
    return out


def outcome(fp, frame: bytes, direction: Direction = ING, ingress_ifindex: int = 0):
    """(action, {(direction, reason): (packets, bytes)} of counters that moved)."""
    before = fp.counters()
    res = fp.run(frame, direction, ingress_ifindex=ingress_ifindex)
    return res.action, _delta(before, fp.counters())


def check(fp, frame, reason: Reason, direction: Direction = ING, ingress_ifindex: int = 0) -> bytes:
    """Run ``frame``; assert the action and that only ``reason`` was counted, once."""
    frame = bytes(frame)
    action, delta = outcome(fp, frame, direction, ingress_ifindex)
    got = {(d.name, r.name): v for (d, r), v in delta.items()}
    assert got == {(direction.name, reason.name): (1, len(frame))}, \
        f"counters moved: {got}, expected {reason.name} x1 ({len(frame)} bytes)"
    assert action == action_of(reason), f"action {action} for {reason.name}"
    return frame


@dataclass(frozen=True)
class FlowKey:
    lo: ipaddress.IPv6Address
    port_lo: int          # host order
    hi: ipaddress.IPv6Address
    port_hi: int
    proto: int


@dataclass(frozen=True)
class Flow:
    initiator_is_hi: int
    packets: tuple[int, int]
    bytes: tuple[int, int]
    first_seen_ns: int
    last_seen_ns: int


def flows(fp) -> dict[FlowKey, Flow]:
    out = {}
    for k, v in fp.table("ms_flows").items():
        key = FlowKey(ipaddress.IPv6Address(bytes(k.addr_lo)), socket.ntohs(k.port_lo),
                      ipaddress.IPv6Address(bytes(k.addr_hi)), socket.ntohs(k.port_hi), k.proto)
        out[key] = Flow(v.initiator_is_hi, tuple(v.packets), tuple(v.bytes),
                        v.first_seen_ns, v.last_seen_ns)
    return out


def mapped(addr: str) -> ipaddress.IPv6Address:
    """The address as the flow table stores it (IPv4 as ::ffff:a.b.c.d)."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip


def key_of(src: str, sport: int, dst: str, dport: int, proto: int) -> tuple[FlowKey, int]:
    """Expected canonical key and initiator_is_hi for a first packet src -> dst."""
    s, d = (mapped(src).packed, sport), (mapped(dst).packed, dport)
    lo, hi = (s, d) if s <= d else (d, s)
    return (FlowKey(ipaddress.IPv6Address(lo[0]), lo[1], ipaddress.IPv6Address(hi[0]), hi[1], proto),
            int(s > d))


def only_flow(fp) -> tuple[FlowKey, Flow]:
    fl = flows(fp)
    assert len(fl) == 1, f"expected one flow, found {fl}"
    return next(iter(fl.items()))


def assert_one_flow(fp, src: str, sport: int, dst: str, dport: int, proto: int) -> Flow:
    """The table holds exactly the flow of a first packet src -> dst."""
    want_key, want_hi = key_of(src, sport, dst, dport, proto)
    key, f = only_flow(fp)
    assert key == want_key
    assert f.initiator_is_hi == want_hi
    return f


# --------------------------------------------------------------------------
# Frame building
# --------------------------------------------------------------------------

def eth(ethertype: int | None = None) -> Ether:
    if ethertype is None:
        return Ether(src=MAC_SRC, dst=MAC_DST)
    return Ether(src=MAC_SRC, dst=MAC_DST, type=ethertype)


def l2_header(tpids=(), ethertype: int = 0x0800) -> bytes:
    """Ethernet header with VLAN tags (TPID, VID 100, 101, ...) spelled out."""
    out = bytes(Ether(src=MAC_SRC, dst=MAC_DST))[:12]
    for i, tpid in enumerate(tpids):
        out += struct.pack("!HH", tpid, 100 + i)
    return out + struct.pack("!H", ethertype)


def pad60(frame: bytes, fill: bytes = b"\0") -> bytes:
    """Pad to the Ethernet minimum (60 bytes without FCS), as a NIC does."""
    return frame + fill * (60 - len(frame))


# IPv6 extension headers as raw bytes, so their lengths and next-header
# fields are exactly what the test says (scapy leaves AH's length at 0).
# Zero bytes are Pad1 options, so the option headers are well formed.
def ext_opts(nh: int, length: int = 8) -> bytes:
    """Hop-by-hop or destination options header of ``length`` bytes (8k)."""
    assert length % 8 == 0 and 8 <= length <= 2048
    return bytes([nh, length // 8 - 1]) + b"\0" * (length - 2)


def ext_routing(nh: int, addresses: int = 1) -> bytes:
    """Routing header type 0, segments left 0, ``addresses`` addresses."""
    return bytes([nh, 2 * addresses, 0, 0]) + b"\0" * 4 + b"\x20\x01\x0d\xb8" + b"\0" * (16 * addresses - 4)


def ext_frag(nh: int, offset: int = 0, more: bool = False, ident: int = 0x1234) -> bytes:
    """Fragment header; ``offset`` in 8-octet units."""
    return bytes([nh, 0]) + struct.pack("!HI", (offset << 3) | int(more), ident)


def ext_ah(nh: int, icv: int = 12) -> bytes:
    """Authentication header with an ICV of ``icv`` bytes (RFC 4302)."""
    length = 12 + icv
    return bytes([nh, length // 4 - 2, 0, 0]) + struct.pack("!II", 0x1000, 1) + b"\xaa" * icv


EXT = {"hbh": (IPPROTO_HOPOPTS, ext_opts), "dst": (IPPROTO_DSTOPTS, ext_opts),
       "rt": (IPPROTO_ROUTING, ext_routing), "frag": (IPPROTO_FRAGMENT, ext_frag),
       "ah": (IPPROTO_AH, ext_ah)}


def ext_chain(exts, final_nh: int) -> tuple[int, bytes]:
    """(first next-header value, bytes) of a chain given as [(name, kwargs)]."""
    out = b""
    nh = final_nh
    for name, kw in reversed(exts):
        proto, fn = EXT[name]
        out = fn(nh, **kw) + out
        nh = proto
    return nh, out


SPORT, DPORT = 40000, 80
ECHO_ID = 0x4242
TCP_SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]


def l4_segment(l4: str, family: int, payload: bytes = b"", src=None, dst=None,
               sport=SPORT, dport=DPORT, tcp_options=TCP_SYN_OPTS):
    if l4 == "tcp":
        return TCP(sport=sport, dport=dport, flags="S", options=tcp_options) / payload
    if l4 == "udp":
        return UDP(sport=sport, dport=dport) / payload
    if l4 == "icmp":
        return (ICMP(type=8, id=ECHO_ID, seq=1) / payload if family == 4
                else ICMPv6EchoRequest(id=ECHO_ID, seq=1, data=payload))
    raise ValueError(l4)


L4_PROTO = {("tcp", 4): IPPROTO_TCP, ("tcp", 6): IPPROTO_TCP, ("udp", 4): IPPROTO_UDP,
            ("udp", 6): IPPROTO_UDP, ("icmp", 4): IPPROTO_ICMP, ("icmp", 6): IPPROTO_ICMPV6}


@dataclass(frozen=True)
class Layout:
    """Where the headers of a built frame are, for the expected-reason model."""
    l2: int                    # Ethernet + VLAN tags
    family: int
    l3: int                    # IPv4 header with options, or IPv6 header + extensions
    exts: tuple[int, ...]      # IPv6 extension header lengths, in order
    l4: str                    # tcp / udp / icmp
    l4_hdr: int                # TCP data offset in bytes; 8 for UDP and ICMP
    l4_len: int                # L4 header + payload as built
    udp_len: int               # the UDP length field as built (0 otherwise)

    @property
    def full(self) -> int:
        return self.l2 + self.l3 + self.l4_len

    @property
    def headers_end(self) -> int:
        return self.l2 + self.l3 + self.l4_hdr


def build(l4: str = "tcp", family: int = 4, *, tags=(), ip_options: int = 0, exts=(),
          payload: bytes = b"", sport=SPORT, dport=DPORT) -> tuple[bytes, Layout]:
    """A frame and its layout. ``ip_options``: bytes of NOP options (4k);
    ``exts``: IPv6 extension headers as [(name, kwargs)]."""
    src, dst = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
    seg = l4_segment(l4, family, payload, sport=sport, dport=dport)
    ipcls = IP if family == 4 else IPv6
    hdr = 20 if family == 4 else 40
    l4b = bytes(ipcls(src=src, dst=dst) / seg)[hdr:]   # checksummed over the right pseudo-header
    proto = L4_PROTO[(l4, family)]
    if family == 4:
        opts = [IPOption_NOP()] * ip_options
        l3pkt = IP(src=src, dst=dst, proto=proto, options=opts) / Raw(l4b)
        ext_lens: tuple[int, ...] = ()
        l3 = 20 + ip_options
    else:
        first, chain = ext_chain(exts, proto)
        l3pkt = IPv6(src=src, dst=dst, nh=first) / Raw(chain + l4b)
        ext_lens = tuple(len(ext_chain([e], 0)[1]) for e in exts)
        l3 = 40 + len(chain)
    frame = l2_header(tags, 0x0800 if family == 4 else 0x86DD) + bytes(l3pkt)
    l4_hdr = (l4b[12] >> 4) * 4 if l4 == "tcp" else 8
    udp_len = struct.unpack("!H", l4b[4:6])[0] if l4 == "udp" else 0
    lay = Layout(14 + 4 * len(tags), family, l3, ext_lens, l4, l4_hdr, len(l4b), udp_len)
    assert len(frame) == lay.full
    return frame, lay


# ==========================================================================
# Plain flows: TCP / UDP / ICMP echo over IPv4 and IPv6
# ==========================================================================

def _pair(kind: str, client: tuple[str, int], server: tuple[str, int]):
    """(request, reply, proto, client port, server port) for one exchange."""
    (c, cp), (s, sp) = client, server
    if kind == "tcp4":
        return (eth() / IP(src=c, dst=s) / TCP(sport=cp, dport=sp, flags="S"),
                eth() / IP(src=s, dst=c) / TCP(sport=sp, dport=cp, flags="SA"), IPPROTO_TCP, cp, sp)
    if kind == "udp4":
        return (eth() / IP(src=c, dst=s) / UDP(sport=cp, dport=sp) / b"query",
                eth() / IP(src=s, dst=c) / UDP(sport=sp, dport=cp) / b"answer!", IPPROTO_UDP, cp, sp)
    if kind == "icmp4":
        return (eth() / IP(src=c, dst=s) / ICMP(type=8, id=ECHO_ID, seq=1) / b"ping",
                eth() / IP(src=s, dst=c) / ICMP(type=0, id=ECHO_ID, seq=1) / b"ping", IPPROTO_ICMP,
                ECHO_ID, ECHO_ID)
    if kind == "tcp6":
        return (eth() / IPv6(src=c, dst=s) / TCP(sport=cp, dport=sp, flags="S"),
                eth() / IPv6(src=s, dst=c) / TCP(sport=sp, dport=cp, flags="SA"), IPPROTO_TCP, cp, sp)
    if kind == "udp6":
        return (eth() / IPv6(src=c, dst=s) / UDP(sport=cp, dport=sp) / b"query",
                eth() / IPv6(src=s, dst=c) / UDP(sport=sp, dport=cp) / b"answer!", IPPROTO_UDP, cp, sp)
    if kind == "icmp6":
        return (eth() / IPv6(src=c, dst=s) / ICMPv6EchoRequest(id=ECHO_ID, seq=1, data=b"ping"),
                eth() / IPv6(src=s, dst=c) / ICMPv6EchoReply(id=ECHO_ID, seq=1, data=b"ping"),
                IPPROTO_ICMPV6, ECHO_ID, ECHO_ID)
    raise ValueError(kind)


@pytest.mark.parametrize("initiator", ["initiator-lo", "initiator-hi"])
@pytest.mark.parametrize("kind", ["tcp4", "udp4", "icmp4", "tcp6", "udp6", "icmp6"])
def test_flow_created_and_counted_per_direction(fastpath, kind, initiator):
    lo, hi = (V4_LO, V4_HI) if kind.endswith("4") else (V6_LO, V6_HI)
    # With initiator-lo the lower address carries the higher port (40000 vs
    # 80), so a key ordered by port instead of by address would come out wrong.
    client, server = ((lo, 40000), (hi, 80)) if initiator == "initiator-lo" else ((hi, 40000), (lo, 80))
    req, rep, proto, cport, sport = _pair(kind, client, server)
    want_key, want_hi = key_of(client[0], cport, server[0], sport, proto)
    assert want_hi == (initiator == "initiator-hi")

    req = check(fastpath, req, R.PASS_FORWARD)
    key, f = only_flow(fastpath)
    assert key == want_key
    assert f.initiator_is_hi == want_hi
    assert (f.packets, f.bytes) == ((1, 0), (len(req), 0))
    assert 0 < f.first_seen_ns == f.last_seen_ns

    rep = check(fastpath, rep, R.PASS_FORWARD)
    key, f2 = only_flow(fastpath)
    assert key == want_key and f2.initiator_is_hi == want_hi
    assert (f2.packets, f2.bytes) == ((1, 1), (len(req), len(rep)))
    assert f2.first_seen_ns == f.first_seen_ns and f2.last_seen_ns >= f.last_seen_ns

    check(fastpath, req, R.PASS_FORWARD)
    _, f3 = only_flow(fastpath)
    assert (f3.packets, f3.bytes) == ((2, 1), (2 * len(req), len(rep)))


@pytest.mark.parametrize("src,sport,dst,dport", [
    # Same address: the ports decide, compared as numbers (1 < 256), which
    # a comparison of the network-order bytes as a little-endian u16 gets wrong.
    pytest.param(V4_LO, 256, V4_LO, 1, id="v4-same-addr-port-256-vs-1"),
    pytest.param(V6_LO, 256, V6_LO, 1, id="v6-same-addr-port-256-vs-1"),
    # Addresses compare byte by byte from the first: 9.255.255.255 < 10.0.0.0.
    pytest.param("10.0.0.0", 1000, "9.255.255.255", 2000, id="v4-bytewise-address"),
    pytest.param("2001:db8::1:0", 1000, "2001:db8::ffff", 2000, id="v6-bytewise-address"),
])
def test_canonical_key_order(fastpath, src, sport, dst, dport):
    ip = IP if ":" not in src else IPv6
    check(fastpath, eth() / ip(src=src, dst=dst) / UDP(sport=sport, dport=dport), R.PASS_FORWARD)
    want_key, want_hi = key_of(src, sport, dst, dport, IPPROTO_UDP)
    key, f = only_flow(fastpath)
    assert key == want_key and f.initiator_is_hi == want_hi == 1


def test_ipv4_key_is_ipv4_mapped(fastpath):
    check(fastpath, eth() / IP(src="192.0.2.7", dst="198.51.100.9") / TCP(sport=1, dport=2), R.PASS_FORWARD)
    key, _ = only_flow(fastpath)
    assert key.lo.packed == bytes(10) + b"\xff\xff" + socket.inet_aton("192.0.2.7")
    assert key.hi.packed == bytes(10) + b"\xff\xff" + socket.inet_aton("198.51.100.9")


def test_ipv4_and_ipv6_flows_are_distinct(fastpath):
    """::ffff:10.0.0.1 is IPv4-mapped; a native IPv6 flow never shares its key."""
    check(fastpath, eth() / IP(src=V4_LO, dst=V4_HI) / TCP(sport=1, dport=2), R.PASS_FORWARD)
    check(fastpath, eth() / IPv6(src=V6_LO, dst=V6_HI) / TCP(sport=1, dport=2), R.PASS_FORWARD)
    check(fastpath, eth() / IP(src=V4_LO, dst=V4_HI) / UDP(sport=1, dport=2), R.PASS_FORWARD)
    assert {(k.lo, k.proto) for k in flows(fastpath)} == {
        (mapped(V4_LO), IPPROTO_TCP), (mapped(V6_LO), IPPROTO_TCP), (mapped(V4_LO), IPPROTO_UDP)}


# ==========================================================================
# VLAN tags
# ==========================================================================

VLAN_CASES = [
    pytest.param((), R.PASS_FORWARD, id="untagged"),
    pytest.param((0x8100,), R.PASS_FORWARD, id="8021q"),
    pytest.param((0x88A8,), R.PASS_FORWARD, id="8021ad-single"),
    pytest.param((0x88A8, 0x8100), R.PASS_FORWARD, id="qinq-88a8-8100"),
    pytest.param((0x9100, 0x8100), R.PASS_FORWARD, id="qinq-9100-8100"),
    pytest.param((0x8100, 0x8100), R.PASS_FORWARD, id="double-8100"),
    pytest.param((0x88A8, 0x8100, 0x8100), R.PASS_FORWARD, id="triple"),
    pytest.param((0x88A8, 0x8100, 0x8100, 0x8100), R.DROP_VLAN_TOO_DEEP, id="four-tags"),
    pytest.param((0x9100, 0x88A8, 0x8100, 0x8100), R.DROP_VLAN_TOO_DEEP, id="four-tags-mixed"),
    pytest.param((0x8100,) * 6, R.DROP_VLAN_TOO_DEEP, id="six-tags"),
]


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("tags,reason", VLAN_CASES)
def test_vlan_tags(fastpath, tags, reason, family):
    assert (len(tags) <= MS_MAX_VLAN) == (reason == R.PASS_FORWARD)
    frame, _ = build("tcp", family, tags=tags, sport=1234, dport=443)
    check(fastpath, frame, reason)
    if reason == R.PASS_FORWARD:
        # The L3 header was found after the tags: addresses and ports right.
        lo, hi = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
        key, f = only_flow(fastpath)
        assert key == key_of(lo, 1234, hi, 443, IPPROTO_TCP)[0]
        assert f.packets == (1, 0)
    else:
        assert flows(fastpath) == {}


@pytest.mark.parametrize("tags", [(), (0x8100,), (0x88A8, 0x8100, 0x8100)],
                         ids=["untagged", "8021q", "triple"])
def test_vlan_tagged_arp_is_not_ip(fastpath, tags):
    arp = bytes(ARP(psrc=V4_LO, pdst=V4_HI, hwsrc=MAC_SRC))
    check(fastpath, l2_header(tags, 0x0806) + arp, R.PASS_NOT_IP)
    assert flows(fastpath) == {}


# ==========================================================================
# IPv4 header: options, bad headers, lengths, padding
# ==========================================================================

@pytest.mark.parametrize("ihl", range(5, 16), ids=lambda n: f"ihl{n}")
@pytest.mark.parametrize("l4", ["tcp", "udp"])
def test_ipv4_options_nop_padded(fastpath, ihl, l4):
    # NOP options are 0x01 bytes: reading the ports from inside them would
    # give port 257, so the key proves the L4 offset is IHL * 4.
    frame, lay = build(l4, 4, ip_options=4 * (ihl - 5), sport=1234, dport=53)
    assert frame[14] == 0x40 | ihl and lay.l3 == ihl * 4
    check(fastpath, frame, R.PASS_FORWARD)
    key, _ = only_flow(fastpath)
    assert key == key_of(V4_LO, 1234, V4_HI, 53, L4_PROTO[(l4, 4)])[0]


@pytest.mark.parametrize("options,ihl", [
    pytest.param([IPOption_RR(routers=["192.0.2.1"] * 9)], 15, id="record-route-9"),
    pytest.param([IPOption_RR(routers=["192.0.2.1"])], 7, id="record-route-1"),
    pytest.param([IPOption_Router_Alert()], 6, id="router-alert"),
    pytest.param([IPOption_NOP(), IPOption_RR(routers=["192.0.2.1"] * 2)], 8, id="nop-then-rr"),
])
def test_ipv4_real_options(fastpath, options, ihl):
    frame = bytes(eth() / IP(src=V4_HI, dst=V4_LO, options=options) / UDP(sport=5353, dport=53) / b"q")
    assert frame[14] & 0x0F == ihl
    check(fastpath, frame, R.PASS_FORWARD)
    key, f = only_flow(fastpath)
    assert key == key_of(V4_HI, 5353, V4_LO, 53, IPPROTO_UDP)[0] and f.initiator_is_hi == 1


def _ip_tcp(**ip):
    return eth() / IP(src=V4_LO, dst=V4_HI, **ip) / TCP(sport=SPORT, dport=DPORT)


IPV4_BAD = [
    pytest.param(_ip_tcp(ihl=0), R.DROP_IPV4_BAD_HEADER, id="ihl-0"),
    pytest.param(_ip_tcp(ihl=4), R.DROP_IPV4_BAD_HEADER, id="ihl-4"),
    pytest.param(_ip_tcp(version=0), R.DROP_IPV4_BAD_HEADER, id="version-0"),
    pytest.param(_ip_tcp(version=6), R.DROP_IPV4_BAD_HEADER, id="version-6-in-ipv4-ethertype"),
    pytest.param(_ip_tcp(version=15), R.DROP_IPV4_BAD_HEADER, id="version-15"),
    pytest.param(_ip_tcp(len=0), R.DROP_IPV4_BAD_HEADER, id="totlen-0"),
    pytest.param(_ip_tcp(len=19), R.DROP_IPV4_BAD_HEADER, id="totlen-19-lt-ihl5"),
    pytest.param(_ip_tcp(options=[IPOption_NOP()] * 8, len=27), R.DROP_IPV4_BAD_HEADER,
                 id="totlen-27-lt-ihl7"),
    pytest.param(_ip_tcp(len=41), R.DROP_IPV4_TRUNCATED, id="totlen-one-past-frame"),
    pytest.param(_ip_tcp(len=65535), R.DROP_IPV4_TRUNCATED, id="totlen-65535"),
    # IHL 15 but the frame ends after the fixed header (tot_len says 60).
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI, ihl=15, len=60), R.DROP_IPV4_TRUNCATED,
                 id="options-past-frame"),
    # tot_len 20: no L4 bytes at all.
    pytest.param(_ip_tcp(len=20), R.DROP_TCP_TRUNCATED, id="totlen-20-tcp-outside-ip"),
]


@pytest.mark.parametrize("frame,reason", IPV4_BAD)
def test_ipv4_bad_headers(fastpath, frame, reason):
    check(fastpath, frame, reason)
    assert flows(fastpath) == {}


@pytest.mark.parametrize("frame", [
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / UDP(sport=1234, dport=53) / b"x", id="udp-1-byte"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / UDP(sport=1234, dport=53), id="udp-empty"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / TCP(sport=1234, dport=53, flags="A"), id="tcp-ack"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / ICMP(id=1234), id="icmp-echo"),
])
@pytest.mark.parametrize("fill", [b"\0", b"\xa5"], ids=["zero-pad", "junk-pad"])
def test_ethernet_padding_after_totlen_passes(fastpath, frame, fill):
    raw = bytes(frame)
    assert len(raw) < 60
    padded = pad60(raw, fill)
    check(fastpath, padded, R.PASS_FORWARD)
    proto = raw[23]
    ports = (1234, 1234) if proto == IPPROTO_ICMP else (1234, 53)
    f = assert_one_flow(fastpath, V4_LO, ports[0], V4_HI, ports[1], proto)
    assert f.bytes == (60, 0)   # skb->len, the padding included


def test_ipv6_trailer_after_payload_len_passes(fastpath):
    # An IPv6 frame is never short enough for Ethernet padding (14 + 40 + 8
    # = 62 bytes), but bytes after payload_len (trailers) must pass too.
    raw = bytes(eth() / IPv6(src=V6_LO, dst=V6_HI) / UDP(sport=1234, dport=53))
    framed = check(fastpath, raw + b"\xa5" * 16, R.PASS_FORWARD)
    f = assert_one_flow(fastpath, V6_LO, 1234, V6_HI, 53, IPPROTO_UDP)
    assert f.bytes == (len(framed), 0)


# ==========================================================================
# IPv6 header and extension headers
# ==========================================================================

def _ip6(**kw):
    return eth() / IPv6(src=V6_LO, dst=V6_HI, **kw)


@pytest.mark.parametrize("frame,reason", [
    pytest.param(_ip6(version=4) / TCP(), R.DROP_IPV6_BAD_HEADER, id="version-4"),
    pytest.param(_ip6(version=0) / TCP(), R.DROP_IPV6_BAD_HEADER, id="version-0"),
    pytest.param(_ip6(version=7) / TCP(), R.DROP_IPV6_BAD_HEADER, id="version-7"),
    pytest.param(_ip6(plen=0) / TCP(), R.DROP_IPV6_BAD_HEADER, id="plen-0-jumbogram"),
    pytest.param(_ip6(plen=0), R.DROP_IPV6_BAD_HEADER, id="plen-0-no-payload"),
    pytest.param(_ip6(plen=21) / TCP(), R.DROP_IPV6_TRUNCATED, id="plen-one-past-frame"),
    pytest.param(_ip6(plen=65535) / TCP(), R.DROP_IPV6_TRUNCATED, id="plen-65535"),
    pytest.param(_ip6(plen=19) / TCP(), R.DROP_TCP_TRUNCATED, id="plen-19-tcp-past-plen"),
    pytest.param(eth(0x0800) / IPv6(src=V6_LO, dst=V6_HI) / TCP(), R.DROP_IPV4_BAD_HEADER,
                 id="ipv6-under-ipv4-ethertype"),
    pytest.param(eth(0x86DD) / IP(src=V4_LO, dst=V4_HI) / TCP() / (b"\0" * 20),
                 R.DROP_IPV6_BAD_HEADER, id="ipv4-under-ipv6-ethertype"),
])
def test_ipv6_bad_headers(fastpath, frame, reason):
    check(fastpath, frame, reason)
    assert flows(fastpath) == {}


def _chain(*names, **kw):
    return [(n, kw.get(n, {})) for n in names]


IPV6_EXT_PASS = [
    pytest.param([("hbh", {})], id="hop-by-hop"),
    pytest.param([("hbh", {"length": 64})], id="hop-by-hop-64"),
    pytest.param([("rt", {})], id="routing"),
    pytest.param([("rt", {"addresses": 3})], id="routing-3-addresses"),
    pytest.param([("dst", {})], id="destination-options"),
    pytest.param([("ah", {})], id="ah-icv12"),
    pytest.param([("ah", {"icv": 20})], id="ah-icv20"),
    pytest.param([("frag", {"offset": 0, "more": True})], id="fragment-first"),
    pytest.param([("frag", {"offset": 0, "more": False})], id="fragment-atomic"),
    pytest.param([("hbh", {}), ("dst", {}), ("rt", {}), ("frag", {"more": True}), ("ah", {}),
                  ("dst", {"length": 16})], id="rfc8200-order-chain-of-6"),
    pytest.param([("dst", {})] * MS_MAX_IPV6_EXT, id="chain-of-8-at-limit"),
    pytest.param([("hbh", {}), ("ah", {})] + [("dst", {})] * (MS_MAX_IPV6_EXT - 2),
                 id="chain-of-8-mixed"),
]


@pytest.mark.parametrize("l4", ["tcp", "udp", "icmp"])
@pytest.mark.parametrize("exts", IPV6_EXT_PASS)
def test_ipv6_extension_headers_parse(fastpath, exts, l4):
    frame, lay = build(l4, 6, exts=exts, sport=1234, dport=443, payload=b"\x01\x01\x01\x01")
    assert lay.l3 == 40 + sum(lay.exts) and len(lay.exts) == len(exts)
    check(fastpath, frame, R.PASS_FORWARD)
    key, _ = only_flow(fastpath)
    if l4 == "icmp":
        assert key == key_of(V6_LO, ECHO_ID, V6_HI, ECHO_ID, IPPROTO_ICMPV6)[0]
    else:
        assert key == key_of(V6_LO, 1234, V6_HI, 443, L4_PROTO[(l4, 6)])[0]


def _raw6(nh: int, body: bytes):
    return eth() / IPv6(src=V6_LO, dst=V6_HI, nh=nh) / Raw(body)


_TCP = bytes(TCP(sport=1234, dport=443))
# The longest hop-by-hop header (a multiple of 8) after which the L4 header
# still starts within MS_MAX_L3_HDR of the frame: 456, L4 at offset 510.
_HBH_AT_LIMIT = (MS_MAX_L3_HDR - 14 - 40) // 8 * 8
_JUNK = bytes([IPPROTO_DSTOPTS, 200]) + b"\x5a" * 62   # looks like a 1608-byte header

IPV6_EXT_OTHER = [
    # Non-first fragments: what follows the fragment header is not a header.
    pytest.param(_raw6(IPPROTO_FRAGMENT, ext_frag(IPPROTO_TCP, offset=185, more=True) + _TCP),
                 R.PASS_FRAGMENT, id="fragment-later-tcp"),
    pytest.param(_raw6(IPPROTO_FRAGMENT, ext_frag(IPPROTO_TCP, offset=185, more=False) + b"tail"),
                 R.PASS_FRAGMENT, id="fragment-last-short-tail"),
    pytest.param(_raw6(IPPROTO_FRAGMENT, ext_frag(IPPROTO_TCP, offset=4096, more=True) + _TCP),
                 R.PASS_FRAGMENT, id="fragment-offset-4096"),
    pytest.param(_raw6(IPPROTO_FRAGMENT, ext_frag(IPPROTO_UDP, offset=8191, more=False) + b"tail"),
                 R.PASS_FRAGMENT, id="fragment-offset-8191-max"),
    pytest.param(_raw6(IPPROTO_FRAGMENT, ext_frag(IPPROTO_DSTOPTS, offset=1, more=True) + _JUNK),
                 R.PASS_FRAGMENT, id="fragment-later-nh-dstopts"),
    pytest.param(_raw6(IPPROTO_FRAGMENT, ext_frag(IPPROTO_AH, offset=1, more=False) + _JUNK),
                 R.PASS_FRAGMENT, id="fragment-later-nh-ah"),
    pytest.param(_raw6(IPPROTO_HOPOPTS, ext_opts(IPPROTO_FRAGMENT)
                       + ext_frag(IPPROTO_TCP, offset=100, more=True) + _JUNK),
                 R.PASS_FRAGMENT, id="hbh-then-fragment-later"),
    # Too deep.
    pytest.param(_raw6(*ext_chain([("dst", {})] * (MS_MAX_IPV6_EXT + 1), IPPROTO_TCP)) / _TCP,
                 R.DROP_IPV6_EXT_TOO_DEEP, id="chain-of-9"),
    pytest.param(_raw6(*ext_chain([("dst", {})] * 20, IPPROTO_TCP)) / _TCP,
                 R.DROP_IPV6_EXT_TOO_DEEP, id="chain-of-20"),
    # Headers running past MS_MAX_L3_HDR are refused as too deep (documented limit).
    pytest.param(_raw6(IPPROTO_HOPOPTS, ext_opts(IPPROTO_TCP, _HBH_AT_LIMIT + 8) + _TCP),
                 R.DROP_IPV6_EXT_TOO_DEEP, id="hop-by-hop-464-just-past-l3-limit"),
    pytest.param(_raw6(IPPROTO_HOPOPTS, ext_opts(IPPROTO_TCP, 2048) + _TCP),
                 R.DROP_IPV6_EXT_TOO_DEEP, id="hop-by-hop-2048-past-l3-limit"),
    pytest.param(_raw6(*ext_chain([("dst", {"length": 256})] * 3, IPPROTO_TCP)) / _TCP,
                 R.DROP_IPV6_EXT_TOO_DEEP, id="three-256-byte-headers-past-l3-limit"),
    # Running past the payload.
    pytest.param(_raw6(IPPROTO_HOPOPTS, b"\x06\x00\x00\x00"), R.DROP_IPV6_EXT_TRUNCATED,
                 id="hop-by-hop-4-of-8-bytes"),
    pytest.param(_raw6(IPPROTO_DSTOPTS, bytes([IPPROTO_TCP, 10]) + b"\0" * 6 + _TCP),
                 R.DROP_IPV6_EXT_TRUNCATED, id="dstopts-88-bytes-in-28"),
    pytest.param(_raw6(IPPROTO_AH, bytes([IPPROTO_TCP, 50, 0, 0]) + b"\0" * 8 + _TCP),
                 R.DROP_IPV6_EXT_TRUNCATED, id="ah-208-bytes-in-32"),
    pytest.param(_raw6(IPPROTO_HOPOPTS, ext_opts(IPPROTO_DSTOPTS) + bytes([IPPROTO_TCP, 1]) + b"\0" * 6),
                 R.DROP_IPV6_EXT_TRUNCATED, id="second-header-16-bytes-in-8"),
    pytest.param(_raw6(IPPROTO_HOPOPTS, ext_opts(IPPROTO_FRAGMENT) + b"\x06\x00\x00\x01"),
                 R.DROP_IPV6_EXT_TRUNCATED, id="fragment-header-4-of-8-bytes"),
    # payload_len stops inside the headers; the frame has more bytes.
    pytest.param(_ip6(nh=IPPROTO_DSTOPTS, plen=8) / Raw(ext_opts(IPPROTO_TCP, 16) + _TCP),
                 R.DROP_IPV6_EXT_TRUNCATED, id="dstopts-past-payload-len"),
    # Nothing to parse after the chain.
    pytest.param(_raw6(IPPROTO_HOPOPTS, ext_opts(IPPROTO_NONE)), R.PASS_OTHER_L4, id="hbh-then-no-next"),
    pytest.param(_raw6(IPPROTO_NONE, b"\0" * 8), R.PASS_OTHER_L4, id="no-next-header"),
    pytest.param(_raw6(IPPROTO_ESP, struct.pack("!II", 0x1000, 1) + b"\0" * 32), R.PASS_OTHER_L4, id="esp"),
    pytest.param(_raw6(IPPROTO_AH, ext_ah(IPPROTO_ESP) + b"\0" * 16), R.PASS_OTHER_L4, id="ah-then-esp"),
]


@pytest.mark.parametrize("frame,reason", IPV6_EXT_OTHER)
def test_ipv6_extension_headers_refused_or_passed(fastpath, frame, reason):
    check(fastpath, frame, reason)
    assert flows(fastpath) == {}


def test_ipv6_extension_up_to_l3_limit_parses(fastpath):
    frame = bytes(_raw6(IPPROTO_HOPOPTS, ext_opts(IPPROTO_TCP, _HBH_AT_LIMIT) + _TCP))
    assert 14 + 40 + _HBH_AT_LIMIT <= MS_MAX_L3_HDR < 14 + 40 + _HBH_AT_LIMIT + 8
    check(fastpath, frame, R.PASS_FORWARD)
    assert_one_flow(fastpath, V6_LO, 1234, V6_HI, 443, IPPROTO_TCP)


# ==========================================================================
# Fragments
# ==========================================================================

FRAG_PAYLOAD = bytes(range(256)) * 12   # 3072 bytes


@pytest.mark.parametrize("seg,key_ports", [
    pytest.param(TCP(sport=1234, dport=80, flags="PA") / FRAG_PAYLOAD, (1234, 80), id="tcp"),
    pytest.param(UDP(sport=5353, dport=53) / FRAG_PAYLOAD, (5353, 53), id="udp-large-datagram"),
    pytest.param(ICMP(type=8, id=777) / FRAG_PAYLOAD, (777, 777), id="icmp-large-echo"),
])
def test_ipv4_fragmented_datagram(fastpath, seg, key_ports):
    pkt = IP(src=V4_LO, dst=V4_HI, id=4242) / seg
    frags = fragment(pkt, fragsize=1480)
    assert len(frags) == 3 and frags[0].flags.MF and frags[0].frag == 0
    first = check(fastpath, eth() / frags[0], R.PASS_FORWARD)
    key, f = only_flow(fastpath)
    assert key == key_of(V4_LO, key_ports[0], V4_HI, key_ports[1], pkt.proto)[0]
    for fr in frags[1:]:
        assert fr.frag > 0
        check(fastpath, eth() / fr, R.PASS_FRAGMENT)
    _, f = only_flow(fastpath)
    assert f.packets == (1, 0) and f.bytes == (len(first), 0)   # later fragments not accounted


@pytest.mark.parametrize("seg,key_ports", [
    pytest.param(TCP(sport=1234, dport=80, flags="PA") / FRAG_PAYLOAD, (1234, 80), id="tcp"),
    pytest.param(UDP(sport=5353, dport=53) / FRAG_PAYLOAD, (5353, 53), id="udp-large-datagram"),
    pytest.param(ICMPv6EchoRequest(id=777, data=FRAG_PAYLOAD), (777, 777), id="icmp6-large-echo"),
])
def test_ipv6_fragmented_datagram(fastpath, seg, key_ports):
    pkt = IPv6(src=V6_LO, dst=V6_HI) / IPv6ExtHdrFragment(id=4242) / seg
    frags = fragment6(pkt, 1280)
    assert len(frags) == 3
    first = check(fastpath, eth() / frags[0], R.PASS_FORWARD)
    proto = {TCP: IPPROTO_TCP, UDP: IPPROTO_UDP}.get(type(seg), IPPROTO_ICMPV6)
    key, _ = only_flow(fastpath)
    assert key == key_of(V6_LO, key_ports[0], V6_HI, key_ports[1], proto)[0]
    for fr in frags[1:]:
        check(fastpath, eth() / fr, R.PASS_FRAGMENT)
    _, f = only_flow(fastpath)
    assert f.packets == (1, 0) and f.bytes == (len(first), 0)


@pytest.mark.parametrize("ip,l4,reason", [
    pytest.param(dict(flags="MF", frag=0), _TCP, R.PASS_FORWARD, id="first-mf-offset-0"),
    pytest.param(dict(flags="DF", frag=0), _TCP, R.PASS_FORWARD, id="df-not-a-fragment"),
    pytest.param(dict(flags="MF", frag=185), _TCP, R.PASS_FRAGMENT, id="middle"),
    pytest.param(dict(flags=0, frag=185), _TCP, R.PASS_FRAGMENT, id="last"),
    # Offsets with the high bits of the 13-bit field set (32 KiB and more in).
    pytest.param(dict(flags="MF", frag=4096), _TCP, R.PASS_FRAGMENT, id="offset-4096"),
    pytest.param(dict(flags=0, frag=8191), _TCP, R.PASS_FRAGMENT, id="offset-8191-max"),
    pytest.param(dict(flags="DF+MF", frag=0), _TCP, R.PASS_FORWARD, id="df-and-mf-first"),
    # A later fragment's bytes are not an L4 header: 4 of them are not "TCP truncated".
    pytest.param(dict(flags=0, frag=1), b"tail", R.PASS_FRAGMENT, id="later-short-not-parsed"),
    pytest.param(dict(flags="MF", frag=1, proto=IPPROTO_UDP), b"\0" * 8, R.PASS_FRAGMENT,
                 id="later-udp-len-0-not-parsed"),
    # RFC 1858 tiny first fragment: the TCP header does not fit.
    pytest.param(dict(flags="MF", frag=0), _TCP[:8], R.DROP_TCP_TRUNCATED, id="tiny-first-fragment"),
])
def test_ipv4_fragment_flags(fastpath, ip, l4, reason):
    ip.setdefault("proto", IPPROTO_TCP)
    check(fastpath, eth() / IP(src=V4_LO, dst=V4_HI, **ip) / Raw(l4), reason)
    if reason == R.PASS_FORWARD:
        assert_one_flow(fastpath, V4_LO, 1234, V4_HI, 443, IPPROTO_TCP)
    else:
        assert flows(fastpath) == {}


# ==========================================================================
# Truncation at every layer
# ==========================================================================

def expected_reason(lay: Layout, cut: int, consistent: bool) -> Reason:
    """What the parser must say about the first ``cut`` bytes of a frame.

    ``consistent``: the IP length field was rewritten to match the cut;
    otherwise it still claims the full packet (a lying length). Other
    length fields (UDP length, TCP data offset) are left as built."""
    if cut < lay.l2:
        return R.DROP_L2_TRUNCATED
    avail = cut - lay.l2
    full_l3_len = lay.full - lay.l2
    if lay.family == 4:
        if avail < 20:
            return R.DROP_IPV4_TRUNCATED
        tot = avail if consistent else full_l3_len
        if tot < lay.l3:
            return R.DROP_IPV4_BAD_HEADER
        if avail < lay.l3 or tot > avail:
            return R.DROP_IPV4_TRUNCATED
        rem = tot - lay.l3
    else:
        if avail < 40:
            return R.DROP_IPV6_TRUNCATED
        plen = avail - 40 if consistent else full_l3_len - 40
        if plen == 0:
            return R.DROP_IPV6_BAD_HEADER
        if plen > avail - 40:
            return R.DROP_IPV6_TRUNCATED
        rem = plen
        for e in lay.exts:
            if rem < 8 or rem < e:
                return R.DROP_IPV6_EXT_TRUNCATED
            rem -= e
    if lay.l4 == "tcp":
        if rem < 20:
            return R.DROP_TCP_TRUNCATED
        return R.DROP_TCP_BAD_DOFF if rem < lay.l4_hdr else R.PASS_FORWARD
    if lay.l4 == "udp":
        if rem < 8:
            return R.DROP_UDP_TRUNCATED
        return R.DROP_UDP_BAD_LENGTH if lay.udp_len > rem else R.PASS_FORWARD
    return R.DROP_ICMP_TRUNCATED if rem < 8 else R.PASS_FORWARD


def kernel_refuses(lay: Layout, cut: int) -> bool:
    """BPF_PROG_TEST_RUN itself refuses (EINVAL) an untagged frame whose
    EtherType is IPv4 / IPv6 but whose IP header is shorter than 20 / 40
    bytes: it reads the addresses to set up the test socket. Such cuts never
    reach the program here (on a real interface they do: tc ingress runs
    before ip_rcv), so the VLAN-tagged cases are the ones that feed truncated
    IP headers to the parser."""
    return lay.l2 == 14 and lay.l2 <= cut < lay.l2 + (20 if lay.family == 4 else 40)


def cut_frame(frame: bytes, lay: Layout, cut: int, consistent: bool, keep_tail: bool = False) -> bytes:
    """The first ``cut`` bytes; ``consistent``: the IP length field rewritten
    to end at the cut; ``keep_tail``: the bytes after the cut kept, so the
    length field alone says where the packet ends (as with Ethernet padding)."""
    out = bytearray(frame if keep_tail else frame[:cut])
    if consistent:
        if lay.family == 4 and cut >= lay.l2 + 20:
            out[lay.l2 + 2:lay.l2 + 4] = struct.pack("!H", cut - lay.l2)
        elif lay.family == 6 and cut >= lay.l2 + 40:
            out[lay.l2 + 4:lay.l2 + 6] = struct.pack("!H", cut - lay.l2 - 40)
    return bytes(out)


HTTP = b"GET / HTTP/1.1\r\n"
TRUNC_CASES = {
    "tcp4": dict(l4="tcp", family=4, payload=HTTP),
    "tcp4-ip-options": dict(l4="tcp", family=4, ip_options=12, payload=HTTP),
    "tcp6": dict(l4="tcp", family=6, payload=HTTP),
    "tcp6-ext-headers": dict(l4="tcp", family=6, exts=[("hbh", {}), ("dst", {"length": 16})], payload=HTTP),
    "udp4": dict(l4="udp", family=4, payload=b"dns-query..."),
    "udp6": dict(l4="udp", family=6, payload=b"dns-query..."),
    "icmp4": dict(l4="icmp", family=4, payload=b"0123456789abcdef"),
    "icmp6": dict(l4="icmp", family=6, payload=b"0123456789abcdef"),
    "vlan-tcp4": dict(l4="tcp", family=4, tags=(0x8100,), payload=HTTP),
    "vlan-tcp4-ip-options": dict(l4="tcp", family=4, tags=(0x8100,), ip_options=12, payload=HTTP),
    "vlan-udp4": dict(l4="udp", family=4, tags=(0x8100,), payload=b"dns-query..."),
    "vlan-icmp4": dict(l4="icmp", family=4, tags=(0x8100,), payload=b"0123456789abcdef"),
    "qinq-tcp6": dict(l4="tcp", family=6, tags=(0x88A8, 0x8100), payload=HTTP),
    "qinq-icmp6-ext-headers": dict(l4="icmp", family=6, tags=(0x88A8, 0x8100),
                                   exts=[("frag", {"more": True}), ("ah", {})], payload=b"0123456789abcdef"),
}


def test_truncation_model_spot_checks():
    """The model the sweep relies on, against a few hand-worked values."""
    frame, lay = build(**TRUNC_CASES["vlan-tcp4"])
    assert (lay.l2, lay.l3, lay.l4_hdr, lay.full) == (18, 20, 40, 18 + 20 + 40 + len(HTTP))
    assert expected_reason(lay, 17, False) == R.DROP_L2_TRUNCATED
    assert expected_reason(lay, 18, False) == R.DROP_IPV4_TRUNCATED
    assert expected_reason(lay, lay.full - 1, False) == R.DROP_IPV4_TRUNCATED
    assert expected_reason(lay, 38, True) == R.DROP_TCP_TRUNCATED    # tot 20: no TCP bytes
    assert expected_reason(lay, 58, True) == R.DROP_TCP_BAD_DOFF     # 20 of 40 header bytes
    assert expected_reason(lay, 78, True) == R.PASS_FORWARD          # header whole, no payload
    _, lay6 = build(**TRUNC_CASES["udp6"])
    assert expected_reason(lay6, 54, True) == R.DROP_IPV6_BAD_HEADER  # payload_len 0
    assert expected_reason(lay6, 61, True) == R.DROP_UDP_TRUNCATED
    assert expected_reason(lay6, 62, True) == R.DROP_UDP_BAD_LENGTH


@pytest.mark.parametrize("mode", ["lying-length", "consistent-length"])
@pytest.mark.parametrize("case", list(TRUNC_CASES))
def test_truncation_at_every_length(fastpath, case, mode):
    consistent = mode == "consistent-length"
    frame, lay = build(**TRUNC_CASES[case])
    mismatches = []
    forwarded = 0
    for cut in range(14, lay.full + 1):
        want = expected_reason(lay, cut, consistent)
        if cut < lay.headers_end:
            assert want != R.PASS_FORWARD       # the model itself never passes a cut header
        data = cut_frame(frame, lay, cut, consistent)
        if kernel_refuses(lay, cut):
            with pytest.raises(OSError) as exc:
                fastpath.run(data)
            assert exc.value.errno == errno.EINVAL
            continue
        action, delta = outcome(fastpath, data)
        if delta != {(ING, want): (1, cut)} or action != action_of(want):
            got = {r.name: v for (_, r), v in delta.items()}
            mismatches.append(f"cut {cut}: expected {want.name}, action {action}, counted {got}")
        forwarded += want == R.PASS_FORWARD
    assert not mismatches, "\n".join(mismatches)
    # The full frame always parses; in lying mode nothing shorter does.
    assert expected_reason(lay, lay.full, consistent) == R.PASS_FORWARD
    if not consistent:
        assert forwarded == 1
    fl = flows(fastpath)
    assert len(fl) == 1 and next(iter(fl.values())).packets == (forwarded, 0)


@pytest.mark.parametrize("case", list(TRUNC_CASES))
def test_short_length_field_in_whole_frame(fastpath, case):
    """Every header byte is in the frame, but the IP length field ends the
    packet at each possible point: the parser must go by the length field,
    not by the bytes that happen to follow (Ethernet padding, trailers)."""
    frame, lay = build(**TRUNC_CASES[case])
    mismatches = []
    for cut in range(lay.l2 + (20 if lay.family == 4 else 40), lay.full + 1):
        want = expected_reason(lay, cut, consistent=True)
        data = cut_frame(frame, lay, cut, consistent=True, keep_tail=True)
        action, delta = outcome(fastpath, data)
        if delta != {(ING, want): (1, len(frame))} or action != action_of(want):
            got = {r.name: v for (_, r), v in delta.items()}
            mismatches.append(f"IP length ends at {cut}: expected {want.name}, action {action}, counted {got}")
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("length", [0, 1, 6, 13])
def test_frames_shorter_than_ethernet_refused_by_harness(fastpath, length):
    frame, _ = build("tcp", 4)
    with pytest.raises(ValueError, match="at least an Ethernet header"):
        fastpath.run(frame[:length])
    assert fastpath.counters() == {}


def test_bare_ethernet_header(fastpath):
    check(fastpath, l2_header((), 0x0806), R.PASS_NOT_IP)
    check(fastpath, l2_header((), 0x8100), R.DROP_L2_TRUNCATED)
    check(fastpath, l2_header((), 0x88A8) + b"\x00\x64", R.DROP_L2_TRUNCATED)
    check(fastpath, l2_header((0x8100, 0x8100), 0x88A8) + b"\x00\x64\x08", R.DROP_L2_TRUNCATED)
    check(fastpath, l2_header((0x8100,), 0x0800), R.DROP_IPV4_TRUNCATED)
    check(fastpath, l2_header((0x8100,), 0x86DD), R.DROP_IPV6_TRUNCATED)
    check(fastpath, l2_header((0x8100,), 0x0800) + b"\x45" + b"\0" * 18, R.DROP_IPV4_TRUNCATED)
    check(fastpath, l2_header((0x8100,), 0x86DD) + b"\x60" + b"\0" * 38, R.DROP_IPV6_TRUNCATED)


@pytest.mark.parametrize("ethertype,ip_bytes", [(0x0800, 0), (0x0800, 19), (0x86DD, 0), (0x86DD, 39)],
                         ids=["ipv4-0", "ipv4-19", "ipv6-0", "ipv6-39"])
def test_kernel_refuses_short_untagged_ip_header(fastpath, ethertype, ip_bytes):
    """The limit of the harness that kernel_refuses() models, pinned down:
    if a kernel stops refusing, the sweep must cover these cuts untagged."""
    frame = l2_header((), ethertype) + bytes(ip_bytes)
    with pytest.raises(OSError) as exc:
        fastpath.run(frame)
    assert exc.value.errno == errno.EINVAL
    assert fastpath.counters() == {}


# ==========================================================================
# L4 header fields
# ==========================================================================

def _tcp_frame(family, dataofs, options=(), payload=b""):
    ipl = IP(src=V4_LO, dst=V4_HI) if family == 4 else IPv6(src=V6_LO, dst=V6_HI)
    return eth() / ipl / TCP(sport=1234, dport=80, dataofs=dataofs, options=list(options)) / payload


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("dataofs,options,payload,reason", [
    pytest.param(0, (), b"", R.DROP_TCP_BAD_DOFF, id="doff-0"),
    pytest.param(4, (), b"", R.DROP_TCP_BAD_DOFF, id="doff-4"),
    pytest.param(4, (), b"x" * 40, R.DROP_TCP_BAD_DOFF, id="doff-4-with-payload"),
    pytest.param(5, (), b"", R.PASS_FORWARD, id="doff-5"),
    pytest.param(6, (), b"", R.DROP_TCP_BAD_DOFF, id="doff-6-past-20-byte-segment"),
    pytest.param(15, (), b"", R.DROP_TCP_BAD_DOFF, id="doff-15-past-20-byte-segment"),
    pytest.param(15, (), b"x" * 39, R.DROP_TCP_BAD_DOFF, id="doff-15-past-59-byte-segment"),
    pytest.param(15, (), b"x" * 40, R.PASS_FORWARD, id="doff-15-exactly-60-bytes"),
    pytest.param(None, [("NOP", None)] * 40, b"", R.PASS_FORWARD, id="doff-15-40-bytes-of-options"),
    pytest.param(None, TCP_SYN_OPTS, HTTP, R.PASS_FORWARD, id="syn-options-and-payload"),
])
def test_tcp_data_offset(fastpath, family, dataofs, options, payload, reason):
    check(fastpath, _tcp_frame(family, dataofs, options, payload), reason)
    lo, hi = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
    if reason == R.PASS_FORWARD:
        assert_one_flow(fastpath, lo, 1234, hi, 80, IPPROTO_TCP)
    else:
        assert flows(fastpath) == {}


def _udp_frame(family, ulen, payload):
    ipl = IP(src=V4_LO, dst=V4_HI) if family == 4 else IPv6(src=V6_LO, dst=V6_HI)
    return eth() / ipl / UDP(sport=1234, dport=53, len=ulen) / payload


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("ulen,payload,reason", [
    pytest.param(0, b"0123456789", R.DROP_UDP_BAD_LENGTH, id="len-0"),
    pytest.param(7, b"0123456789", R.DROP_UDP_BAD_LENGTH, id="len-7"),
    pytest.param(8, b"", R.PASS_FORWARD, id="len-8-empty"),
    pytest.param(8, b"0123456789", R.PASS_FORWARD, id="len-8-shorter-than-ip-payload"),
    pytest.param(18, b"0123456789", R.PASS_FORWARD, id="len-exact"),
    pytest.param(19, b"0123456789", R.DROP_UDP_BAD_LENGTH, id="len-one-past-ip-payload"),
    pytest.param(65535, b"0123456789", R.DROP_UDP_BAD_LENGTH, id="len-65535"),
])
def test_udp_length(fastpath, family, ulen, payload, reason):
    check(fastpath, _udp_frame(family, ulen, payload), reason)
    lo, hi = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
    if reason == R.PASS_FORWARD:
        assert_one_flow(fastpath, lo, 1234, hi, 53, IPPROTO_UDP)
    else:
        assert flows(fastpath) == {}


@pytest.mark.parametrize("frame,reason", [
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI, proto=IPPROTO_ICMP) / b"\x08\x00\0\0\0\x01\0",
                 R.DROP_ICMP_TRUNCATED, id="icmp4-7-bytes"),
    pytest.param(eth() / IPv6(src=V6_LO, dst=V6_HI, nh=IPPROTO_ICMPV6) / b"\x80\x00\0\0\0\x01\0",
                 R.DROP_ICMP_TRUNCATED, id="icmp6-7-bytes"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / ICMP(type=3, code=1) / IP() / UDP(),
                 R.PASS_FORWARD, id="icmp4-dest-unreachable"),
    pytest.param(eth() / IPv6(src=V6_LO, dst=V6_HI, nh=IPPROTO_ICMPV6) / b"\x87\x00\0\0\0\0\0\0",
                 R.PASS_FORWARD, id="icmp6-neighbour-solicitation-8-bytes"),
])
def test_icmp_headers(fastpath, frame, reason):
    check(fastpath, frame, reason)


# ==========================================================================
# Not IP, other L4 protocols
# ==========================================================================

@pytest.mark.parametrize("frame", [
    pytest.param(eth() / ARP(psrc=V4_LO, pdst=V4_HI, hwsrc=MAC_SRC), id="arp"),
    pytest.param(pad60(l2_header((), 0x88CC) + b"\x02\x07\x04" + b"\0" * 6), id="lldp"),
    pytest.param(pad60(l2_header((), 0x8863) + b"\x11\x09\0\0\0\0"), id="pppoe-discovery"),
    pytest.param(pad60(l2_header((), 0x0806)), id="arp-ethertype-empty"),
])
def test_not_ip(fastpath, frame):
    check(fastpath, frame, R.PASS_NOT_IP)
    assert flows(fastpath) == {}


@pytest.mark.parametrize("frame", [
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / GRE() / IP() / TCP(), id="gre-ipv4"),
    pytest.param(eth() / IPv6(src=V6_LO, dst=V6_HI) / GRE() / IP() / TCP(), id="gre-ipv6"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / SCTP(sport=1, dport=2), id="sctp-ipv4"),
    pytest.param(eth() / IPv6(src=V6_LO, dst=V6_HI) / SCTP(sport=1, dport=2), id="sctp-ipv6"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI, proto=IPPROTO_ESP) / (b"\0" * 16), id="esp-ipv4"),
    # An unknown protocol with nothing after the IP header is not "truncated".
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI, proto=IPPROTO_GRE), id="gre-ipv4-empty"),
    pytest.param(_raw6(IPPROTO_HOPOPTS, ext_opts(IPPROTO_SCTP)) / SCTP(sport=1, dport=2),
                 id="sctp-after-hop-by-hop"),
])
def test_other_l4(fastpath, frame):
    check(fastpath, frame, R.PASS_OTHER_L4)
    assert flows(fastpath) == {}


# ==========================================================================
# Egress of packets already seen at a managed ingress
# ==========================================================================

MANAGED_IFINDEX = 7
OTHER_IFINDEX = 8


def _manage(fp, ifindex=MANAGED_IFINDEX):
    t = fp.table("ms_ifaces")
    t[t.Key(ifindex)] = t.Leaf(0)


GOOD = eth() / IP(src=V4_LO, dst=V4_HI) / TCP(sport=1234, dport=80)
BAD = eth() / IP(src=V4_LO, dst=V4_HI, ihl=4) / TCP(sport=1234, dport=80)


@pytest.mark.parametrize("direction,iif,frame,reason,flow", [
    pytest.param(EGR, MANAGED_IFINDEX, GOOD, R.PASS_SEEN_AT_INGRESS, False, id="egress-managed-iif"),
    # The ingress program already decided on it: the egress one does not parse.
    pytest.param(EGR, MANAGED_IFINDEX, BAD, R.PASS_SEEN_AT_INGRESS, False, id="egress-managed-iif-bad-header"),
    pytest.param(EGR, OTHER_IFINDEX, GOOD, R.PASS_FORWARD, True, id="egress-unmanaged-iif"),
    pytest.param(EGR, OTHER_IFINDEX, BAD, R.DROP_IPV4_BAD_HEADER, False, id="egress-unmanaged-iif-bad-header"),
    pytest.param(EGR, 0, GOOD, R.PASS_FORWARD, True, id="egress-locally-generated"),
    pytest.param(ING, MANAGED_IFINDEX, GOOD, R.PASS_FORWARD, True, id="ingress-ignores-iif-table"),
    pytest.param(ING, MANAGED_IFINDEX, BAD, R.DROP_IPV4_BAD_HEADER, False, id="ingress-bad-header"),
])
def test_egress_seen_at_ingress(fastpath, direction, iif, frame, reason, flow):
    _manage(fastpath)
    check(fastpath, frame, reason, direction=direction, ingress_ifindex=iif)
    if flow:
        f = assert_one_flow(fastpath, V4_LO, 1234, V4_HI, 80, IPPROTO_TCP)
        assert f.packets == (1, 0)
    else:
        assert flows(fastpath) == {}


def test_egress_empty_iface_table_parses(fastpath):
    check(fastpath, GOOD, R.PASS_FORWARD, direction=EGR, ingress_ifindex=MANAGED_IFINDEX)


@pytest.mark.parametrize("tags,reason", [
    pytest.param((0x8100,) * 4, R.DROP_VLAN_TOO_DEEP, id="vlan-too-deep"),
    pytest.param((0x8100,), R.PASS_FORWARD, id="vlan"),
])
def test_egress_reasons_counted_under_egress(fastpath, tags, reason):
    frame, _ = build("udp", 4, tags=tags)
    check(fastpath, frame, reason, direction=EGR)


# ==========================================================================
# The benchmark script runs
# ==========================================================================

BENCH = Path(__file__).resolve().parents[2] / "bench" / "fastpath.py"
BENCH_CASES = ["empty", "fastpath-tcp4", "fastpath-udp4", "fastpath-tcp6"]


def test_bench_fastpath_quick_runs():
    proc = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert re.search(r"^kernel\s+\S+", out, re.M), out
    assert re.search(r"^repeat\s+20000\b", out, re.M), out
    assert re.search(r"^rounds\s+3\b", out, re.M), out
    for case in BENCH_CASES:
        rows = re.findall(rf"^\|\s*{re.escape(case)}\s*\|\s*(\d+)\s*\|\s*(\d+(?:\.\d+)?)\s*\|"
                          rf"\s*(\d+(?:\.\d+)?)\s*\|\s*(\d+(?:\.\d+)?)\s*\|\s*(\d+\.\d+)\s*\|\s*$", out, re.M)
        assert len(rows) == 1, f"{case}: {rows}\n{out}"
        frame_len, median, lo, hi, ratio = rows[0]
        assert float(lo) <= float(median) <= float(hi)
        if case == "empty":
            assert float(ratio) == 1.0
