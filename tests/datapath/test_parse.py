"""The packet parser (bpf/lib/parse.h), tested by running the real fast path.

Every test hands a frame built with scapy (or byte by byte where scapy would
"fix" the lie under test) to the loaded tc program through
BPF_PROG_TEST_RUN and checks two things the kernel reports:

* the TC action the program returned, and
* that exactly one reason counter moved, by one packet and the frame's byte
  count, under the direction the program ran in.

Since the fast path tracks sessions, a packet the parser accepts is handed
(by tail call) to the stage of its protocol, which has the last word: a bare
TCP segment of an unknown flow is DROP_TCP_NO_SESSION, an ICMP echo reply
without its request DROP_ICMP_ECHO_UNMATCHED, and so on. So the parse paths
here are driven with packets that open a session (a TCP SYN, a UDP datagram,
an ICMP echo request), whose fully parsed outcome is PASS_FORWARD and a new
entry in ``ms_halfopen``; and the stages' first-packet outcomes are part of
the expected-reason model (``first_packet_reason``), so the truncation sweeps
also run packets that parse fully and are then refused, and prove that the
parser, not the stage, answers for every cut short of the whole packet.

Where a packet parses, the session it created is read back too: the
canonical key (lower endpoint first, IPv4 as IPv4-mapped IPv6) proves the
addresses and ports were read from the right offsets, and the TCP window
checks (a SYN-ACK must acknowledge exactly the SYN's sequence space, an ACK
may not acknowledge unsent data) prove the sequence numbers and payload
lengths were.

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

from datapath.enums import IFINDEX_DIRECT, CtState, Direction, Reason
from datapath.loader import TC_ACT_OK, TC_ACT_SHOT
from datapath.sessions import FAMILY_TABLES
from packets_ct import key_addrs

ING = Direction.DIR_INGRESS
EGR = Direction.DIR_EGRESS
R = Reason
S = CtState

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

from socket import (IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_ESP, IPPROTO_FRAGMENT,  # noqa: E402
                    IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_NONE, IPPROTO_ROUTING, IPPROTO_SCTP,
                    IPPROTO_TCP, IPPROTO_UDP)

# The two session tables (bpf/lib/maps.h): a flow starts half-open and is
# promoted when its handshake completes / its first reply is seen.
HALF, EST = "ms_halfopen", "ms_flows"
# The state a flow's first packet leaves it in, by protocol.
OPEN_STATE = {IPPROTO_TCP: S.CT_SYN_SENT, IPPROTO_UDP: S.CT_UDP_UNREPLIED,
              IPPROTO_ICMP: S.CT_ICMP, IPPROTO_ICMPV6: S.CT_ICMP}


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
    table: str            # HALF or EST
    state: CtState
    initiator_is_hi: int
    packets: tuple[int, int]
    bytes: tuple[int, int]
    first_seen_ns: int
    last_seen_ns: int


def flows(fp) -> dict[FlowKey, Flow]:
    """Every session, from both tables; a key in both is a bug."""
    out = {}
    for table in (EST, HALF):
        for m in FAMILY_TABLES[table]:
            for k, v in fp.table(m).items():
                lo, hi = key_addrs(k)
                key = FlowKey(ipaddress.IPv6Address(lo), socket.ntohs(k.port_lo),
                              ipaddress.IPv6Address(hi), socket.ntohs(k.port_hi), k.proto)
                # an IPv4 session in the IPv4 map, none elsewhere
                assert (m == FAMILY_TABLES[table][0]) == (key.lo.ipv4_mapped is not None
                                                          and key.hi.ipv4_mapped is not None), (m, key)
                assert key not in out, f"{key} in both session tables"
                out[key] = Flow(table, CtState(v.state), v.initiator_is_hi, tuple(v.packets),
                                tuple(v.bytes), v.first_seen_ns, v.last_seen_ns)
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


def assert_one_flow(fp, src: str, sport: int, dst: str, dport: int, proto: int,
                    table: str = HALF, state: CtState | None = None) -> Flow:
    """The tables hold exactly the flow of a first packet src -> dst, in
    ``table`` and ``state`` (default: the state a first packet opens)."""
    want_key, want_hi = key_of(src, sport, dst, dport, proto)
    key, f = only_flow(fp)
    assert key == want_key
    assert f.initiator_is_hi == want_hi
    assert f.table == table
    assert f.state == (OPEN_STATE[proto] if state is None else state)
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
ISN, RISN = 1000, 5000      # initiator's and responder's initial sequence numbers
TCP_SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
TCP_ACK_OPTS = [("NOP", None), ("NOP", None), ("Timestamp", (2, 1))]
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


def icmp_echo_type(family: int, reply: bool = False) -> int:
    return (0 if reply else 8) if family == 4 else (129 if reply else 128)


def l4_segment(l4: str, family: int, payload: bytes = b"", *, sport=SPORT, dport=DPORT,
               tcp_flags="S", seq=ISN, ack=0, tcp_options=None, icmp_type=None):
    """An L4 segment. TCP carries SYN options on a SYN, timestamps otherwise;
    ICMP is an echo request unless ``icmp_type`` says otherwise (the echo id
    and sequence are in bytes 4-7 whatever the type)."""
    if l4 == "tcp":
        if tcp_options is None:
            tcp_options = TCP_SYN_OPTS if "S" in str(tcp_flags) else TCP_ACK_OPTS
        return TCP(sport=sport, dport=dport, flags=tcp_flags, seq=seq, ack=ack,
                   options=tcp_options) / payload
    if l4 == "udp":
        return UDP(sport=sport, dport=dport) / payload
    if l4 == "icmp":
        t = icmp_echo_type(family) if icmp_type is None else icmp_type
        return (ICMP(type=t, id=ECHO_ID, seq=1) / payload if family == 4
                else ICMPv6EchoRequest(type=t, id=ECHO_ID, seq=1, data=payload))
    raise ValueError(l4)


L4_PROTO = {("tcp", 4): IPPROTO_TCP, ("tcp", 6): IPPROTO_TCP, ("udp", 4): IPPROTO_UDP,
            ("udp", 6): IPPROTO_UDP, ("icmp", 4): IPPROTO_ICMP, ("icmp", 6): IPPROTO_ICMPV6}


def icmp_class(family: int, icmp_type: int) -> str:
    """bpf/lib/icmp.h ms_icmp_class, restated: echo, error, control, other."""
    if family == 4:
        if icmp_type in (0, 8):
            return "echo"
        return "error" if icmp_type in (3, 4, 11, 12) else "other"
    if icmp_type in (128, 129):
        return "echo"
    if 1 <= icmp_type <= 4:
        return "error"
    if 130 <= icmp_type <= 137 or icmp_type == 143:
        return "control"
    return "other"


def first_packet_reason(l4: str, family: int, tcp_flags: int = TCP_SYN,
                        icmp_type: int | None = None) -> tuple[Reason, bool]:
    """What the fast path says about a fully parsed packet of a flow it has
    never seen, and whether that opens a session: the model of the stages
    (conntrack.h, icmp.h) that the parse tests rely on. ICMP errors here
    never quote a known flow."""
    if l4 == "tcp":
        if tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN:
            return R.PASS_FORWARD, True
        return R.DROP_TCP_NO_SESSION, False
    if l4 == "udp":
        return R.PASS_FORWARD, True
    t = icmp_echo_type(family) if icmp_type is None else icmp_type
    cls = icmp_class(family, t)
    if cls == "echo":
        if t == icmp_echo_type(family):
            return R.PASS_FORWARD, True
        return R.DROP_ICMP_ECHO_UNMATCHED, False
    return {"error": R.DROP_ICMP_UNMATCHED, "control": R.PASS_ICMP_CONTROL,
            "other": R.DROP_ICMP_TYPE}[cls], False


def _flag_bits(flags) -> int:
    return int(TCP(flags=flags).flags)


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
    parsed: Reason             # the outcome once the whole packet parses (first packet of its flow)
    opens: bool                # ... and whether that opens a session

    @property
    def full(self) -> int:
        return self.l2 + self.l3 + self.l4_len

    @property
    def headers_end(self) -> int:
        return self.l2 + self.l3 + self.l4_hdr


def build(l4: str = "tcp", family: int = 4, *, tags=(), ip_options: int = 0, exts=(),
          payload: bytes = b"", sport=SPORT, dport=DPORT, reply: bool = False,
          tcp_flags="S", seq=ISN, ack=0, icmp_type=None) -> tuple[bytes, Layout]:
    """A frame and its layout. ``ip_options``: bytes of NOP options (4k);
    ``exts``: IPv6 extension headers as [(name, kwargs)]; ``reply``: from
    the (dst, dport) endpoint back to (src, sport), same layout."""
    src, dst = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
    if reply:
        src, dst, sport, dport = dst, src, dport, sport
    seg = l4_segment(l4, family, payload, sport=sport, dport=dport, tcp_flags=tcp_flags,
                     seq=seq, ack=ack, icmp_type=icmp_type)
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
    parsed, opens = first_packet_reason(l4, family, _flag_bits(tcp_flags), l4b[0] if l4 == "icmp" else None)
    lay = Layout(14 + 4 * len(tags), family, l3, ext_lens, l4, l4_hdr, len(l4b), udp_len, parsed, opens)
    assert len(frame) == lay.full
    return frame, lay


def tcp_handshake(fp, client=(V4_LO, SPORT), server=(V4_HI, DPORT), direction=ING):
    """SYN, SYN-ACK, ACK; returns the three frames. Leaves an ESTABLISHED
    flow whose next sequence numbers are ISN + 1 and RISN + 1."""
    (c, cp), (s, sp) = client, server
    ipc = IP if ":" not in c else IPv6
    syn = check(fp, eth() / ipc(src=c, dst=s) / TCP(sport=cp, dport=sp, flags="S", seq=ISN), R.PASS_FORWARD,
                direction)
    synack = check(fp, eth() / ipc(src=s, dst=c) / TCP(sport=sp, dport=cp, flags="SA", seq=RISN, ack=ISN + 1),
                   R.PASS_FORWARD, direction)
    ack = check(fp, eth() / ipc(src=c, dst=s) / TCP(sport=cp, dport=sp, flags="A", seq=ISN + 1, ack=RISN + 1),
                R.PASS_FORWARD, direction)
    return syn, synack, ack


# ==========================================================================
# Plain flows: TCP / UDP / ICMP echo over IPv4 and IPv6
# ==========================================================================

def _exchange(kind: str, client: tuple[str, int], server: tuple[str, int]):
    """(proto, client port, server port, [(frame, from client, table, state)])
    for one exchange: each step's frame and where the flow is after it."""
    (c, cp), (s, sp) = client, server
    ip = IP if kind.endswith("4") else IPv6
    up = eth() / ip(src=c, dst=s)
    down = eth() / ip(src=s, dst=c)
    if kind.startswith("tcp"):
        return IPPROTO_TCP, cp, sp, [
            (up / TCP(sport=cp, dport=sp, flags="S", seq=ISN), True, HALF, S.CT_SYN_SENT),
            (down / TCP(sport=sp, dport=cp, flags="SA", seq=RISN, ack=ISN + 1), False, HALF, S.CT_SYN_RECV),
            (up / TCP(sport=cp, dport=sp, flags="A", seq=ISN + 1, ack=RISN + 1), True, EST, S.CT_ESTABLISHED),
            (down / TCP(sport=sp, dport=cp, flags="PA", seq=RISN + 1, ack=ISN + 1) / b"hello",
             False, EST, S.CT_ESTABLISHED),
            (up / TCP(sport=cp, dport=sp, flags="A", seq=ISN + 1, ack=RISN + 6), True, EST, S.CT_ESTABLISHED),
        ]
    if kind.startswith("udp"):
        return IPPROTO_UDP, cp, sp, [
            (up / UDP(sport=cp, dport=sp) / b"query", True, HALF, S.CT_UDP_UNREPLIED),
            (down / UDP(sport=sp, dport=cp) / b"answer!", False, EST, S.CT_UDP_REPLIED),
            (up / UDP(sport=cp, dport=sp) / b"query", True, EST, S.CT_UDP_REPLIED),
        ]
    if kind == "icmp4":
        req = up / ICMP(type=8, id=ECHO_ID, seq=1) / b"ping"
        rep = down / ICMP(type=0, id=ECHO_ID, seq=1) / b"ping"
        proto = IPPROTO_ICMP
    else:
        req = up / ICMPv6EchoRequest(id=ECHO_ID, seq=1, data=b"ping")
        rep = down / ICMPv6EchoReply(id=ECHO_ID, seq=1, data=b"ping")
        proto = IPPROTO_ICMPV6
    return proto, ECHO_ID, ECHO_ID, [(req, True, HALF, S.CT_ICMP), (rep, False, EST, S.CT_ICMP),
                                     (req, True, EST, S.CT_ICMP)]


@pytest.mark.parametrize("initiator", ["initiator-lo", "initiator-hi"])
@pytest.mark.parametrize("kind", ["tcp4", "udp4", "icmp4", "tcp6", "udp6", "icmp6"])
def test_flow_created_and_counted_per_direction(fastpath, kind, initiator):
    lo, hi = (V4_LO, V4_HI) if kind.endswith("4") else (V6_LO, V6_HI)
    # With initiator-lo the lower address carries the higher port (40000 vs
    # 80), so a key ordered by port instead of by address would come out wrong.
    client, server = ((lo, 40000), (hi, 80)) if initiator == "initiator-lo" else ((hi, 40000), (lo, 80))
    proto, cport, sport, steps = _exchange(kind, client, server)
    want_key, want_hi = key_of(client[0], cport, server[0], sport, proto)
    assert want_hi == (initiator == "initiator-hi")

    packets, nbytes = [0, 0], [0, 0]
    first_seen = last_seen = None
    for i, (frame, from_client, table, state) in enumerate(steps):
        frame = check(fastpath, frame, R.PASS_FORWARD)
        d = 0 if from_client else 1
        packets[d] += 1
        nbytes[d] += len(frame)
        key, f = only_flow(fastpath)
        assert key == want_key and f.initiator_is_hi == want_hi, f"step {i}"
        assert (f.table, f.state) == (table, state), f"step {i}"
        assert (f.packets, f.bytes) == (tuple(packets), tuple(nbytes)), f"step {i}"
        if first_seen is None:
            first_seen = f.first_seen_ns
            assert 0 < f.first_seen_ns == f.last_seen_ns
        # Promotion from ms_halfopen to ms_flows keeps the history.
        assert f.first_seen_ns == first_seen and f.last_seen_ns >= (last_seen or 0), f"step {i}"
        last_seen = f.last_seen_ns


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
    assert (f.table, f.state) == (HALF, S.CT_UDP_UNREPLIED)
    # The reply finds the same entry from the other side and promotes it.
    check(fastpath, eth() / ip(src=dst, dst=src) / UDP(sport=dport, dport=sport), R.PASS_FORWARD)
    key, f = only_flow(fastpath)
    assert key == want_key and (f.table, f.state, f.packets) == (EST, S.CT_UDP_REPLIED, (1, 1))


def test_ipv4_key_is_ipv4_mapped(fastpath):
    check(fastpath, eth() / IP(src="192.0.2.7", dst="198.51.100.9") / TCP(sport=1, dport=2, flags="S"),
          R.PASS_FORWARD)
    key, _ = only_flow(fastpath)
    assert key.lo.packed == bytes(10) + b"\xff\xff" + socket.inet_aton("192.0.2.7")
    assert key.hi.packed == bytes(10) + b"\xff\xff" + socket.inet_aton("198.51.100.9")


def test_ipv4_and_ipv6_flows_are_distinct(fastpath):
    """::ffff:10.0.0.1 is IPv4-mapped; a native IPv6 flow never shares its key."""
    check(fastpath, eth() / IP(src=V4_LO, dst=V4_HI) / TCP(sport=1, dport=2, flags="S"), R.PASS_FORWARD)
    check(fastpath, eth() / IPv6(src=V6_LO, dst=V6_HI) / TCP(sport=1, dport=2, flags="S"), R.PASS_FORWARD)
    check(fastpath, eth() / IP(src=V4_LO, dst=V4_HI) / UDP(sport=1, dport=2), R.PASS_FORWARD)
    fl = flows(fastpath)
    assert {(k.lo, k.proto) for k in fl} == {
        (mapped(V4_LO), IPPROTO_TCP), (mapped(V6_LO), IPPROTO_TCP), (mapped(V4_LO), IPPROTO_UDP)}
    assert {f.table for f in fl.values()} == {HALF}


# ==========================================================================
# After the parser: the stage of each protocol (first packet of a flow)
# ==========================================================================

def _tcp(family, flags, **kw):
    ipl = IP(src=V4_LO, dst=V4_HI) if family == 4 else IPv6(src=V6_LO, dst=V6_HI)
    return eth() / ipl / TCP(sport=1234, dport=80, flags=flags, **kw)


# The flags byte (TCP header byte 13) decides between "opens a session" and
# "no session": read from the wrong offset, these come out wrong.
TCP_FIRST_FLAGS = [
    pytest.param("S", R.PASS_FORWARD, id="syn"),
    pytest.param("SEC", R.PASS_FORWARD, id="syn-ecn-setup"),      # ECE + CWR (RFC 3168)
    pytest.param("SP", R.PASS_FORWARD, id="syn-psh"),
    pytest.param("SU", R.PASS_FORWARD, id="syn-urg"),
    pytest.param("A", R.DROP_TCP_NO_SESSION, id="ack"),
    pytest.param("PA", R.DROP_TCP_NO_SESSION, id="psh-ack"),
    pytest.param("SA", R.DROP_TCP_NO_SESSION, id="syn-ack"),
    pytest.param("FA", R.DROP_TCP_NO_SESSION, id="fin-ack"),
    pytest.param("R", R.DROP_TCP_NO_SESSION, id="rst"),
    pytest.param("RA", R.DROP_TCP_NO_SESSION, id="rst-ack"),
    pytest.param("SF", R.DROP_TCP_NO_SESSION, id="syn-fin"),
    pytest.param("SR", R.DROP_TCP_NO_SESSION, id="syn-rst"),
    pytest.param("", R.DROP_TCP_NO_SESSION, id="null"),
    pytest.param("FPU", R.DROP_TCP_NO_SESSION, id="xmas"),
]


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("flags,reason", TCP_FIRST_FLAGS)
def test_tcp_first_packet_by_flags(fastpath, family, flags, reason):
    assert first_packet_reason("tcp", family, _flag_bits(flags))[0] == reason
    check(fastpath, _tcp(family, flags), reason)
    lo, hi = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
    if reason == R.PASS_FORWARD:
        assert_one_flow(fastpath, lo, 1234, hi, 80, IPPROTO_TCP)
    else:
        assert flows(fastpath) == {}


def _icmp_error_quote(family: int, src: str, dst: str, sport: int = 5353, dport: int = 53) -> bytes:
    """The start of a UDP datagram src -> dst, as an ICMP error quotes it."""
    ipl = IP(src=src, dst=dst) if family == 4 else IPv6(src=src, dst=dst)
    return bytes(ipl / UDP(sport=sport, dport=dport) / b"query")[:(28 if family == 4 else 48)]


def _icmp_frame(family: int, icmp_type: int, code: int = 0, body: bytes | None = None):
    if body is None:
        # Errors quote a datagram of a flow nobody opened.
        body = (_icmp_error_quote(family, "192.0.2.1", "198.51.100.1") if family == 4
                else _icmp_error_quote(family, "2001:db8:1::1", "2001:db8:2::1"))
        if icmp_class(family, icmp_type) != "error":
            body = b"\0" * 16
    if family == 4:
        return eth() / IP(src=V4_HI, dst=V4_LO) / ICMP(type=icmp_type, code=code, id=ECHO_ID, seq=1) / body
    return eth() / IPv6(src=V6_HI, dst=V6_LO) / ICMPv6EchoRequest(type=icmp_type, code=code, id=ECHO_ID,
                                                                  seq=1, data=body)


ICMP_TYPES = [
    # IPv4: echo, errors, everything else.
    (4, 8), (4, 0), (4, 3), (4, 4), (4, 11), (4, 12), (4, 5), (4, 9), (4, 10), (4, 13), (4, 14),
    (4, 17), (4, 255),
    # ICMPv6: errors 1-4, echo 128/129, MLD 130-132 and 143, ND 133-137, the rest.
    (6, 128), (6, 129), (6, 1), (6, 2), (6, 3), (6, 4), (6, 0), (6, 5), (6, 127),
    (6, 130), (6, 131), (6, 132), (6, 133), (6, 134), (6, 135), (6, 136), (6, 137), (6, 143),
    (6, 138), (6, 139), (6, 142), (6, 144), (6, 200), (6, 255),
]


@pytest.mark.parametrize("family,icmp_type", ICMP_TYPES,
                         ids=[f"icmp{f}-type{t}" for f, t in ICMP_TYPES])
def test_icmp_first_packet_by_type(fastpath, family, icmp_type):
    """The type byte the parser read decides the class (echo, error, link
    control, other) and so the reason of a packet of no known flow."""
    reason, opens = first_packet_reason("icmp", family, icmp_type=icmp_type)
    check(fastpath, _icmp_frame(family, icmp_type), reason)
    if opens:
        lo, hi = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
        assert_one_flow(fastpath, hi, ECHO_ID, lo, ECHO_ID, L4_PROTO[("icmp", family)])
    else:
        assert flows(fastpath) == {}


def test_first_packet_model_spot_checks():
    assert first_packet_reason("icmp", 6, icmp_type=135) == (R.PASS_ICMP_CONTROL, False)
    assert first_packet_reason("icmp", 4, icmp_type=0) == (R.DROP_ICMP_ECHO_UNMATCHED, False)
    assert first_packet_reason("icmp", 4, icmp_type=3) == (R.DROP_ICMP_UNMATCHED, False)
    assert first_packet_reason("icmp", 6, icmp_type=3) == (R.DROP_ICMP_UNMATCHED, False)
    assert first_packet_reason("icmp", 6, icmp_type=13) == (R.DROP_ICMP_TYPE, False)
    assert first_packet_reason("icmp", 6) == (R.PASS_FORWARD, True)
    assert first_packet_reason("tcp", 4, _flag_bits("SEC")) == (R.PASS_FORWARD, True)
    assert first_packet_reason("tcp", 4, _flag_bits("SA")) == (R.DROP_TCP_NO_SESSION, False)
    assert first_packet_reason("udp", 6) == (R.PASS_FORWARD, True)


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
        f = assert_one_flow(fastpath, lo, 1234, hi, 443, IPPROTO_TCP)
        assert f.packets == (1, 0)
        # ... and the sequence number: the tagged SYN-ACK must acknowledge it.
        synack, _ = build("tcp", family, tags=tags, sport=1234, dport=443, reply=True,
                          tcp_flags="SA", seq=RISN, ack=ISN + 1)
        check(fastpath, synack, R.PASS_FORWARD)
        assert only_flow(fastpath)[1].state == S.CT_SYN_RECV
    else:
        assert flows(fastpath) == {}


@pytest.mark.parametrize("tags", [(), (0x8100,), (0x88A8, 0x8100, 0x8100)],
                         ids=["untagged", "8021q", "triple"])
def test_vlan_tagged_arp_is_not_ip(fastpath, tags):
    arp = bytes(ARP(psrc=V4_LO, pdst=V4_HI, hwsrc=MAC_SRC))
    check(fastpath, l2_header(tags, 0x0806) + arp, R.PASS_NOT_IP)
    assert flows(fastpath) == {}


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("tags", [(), (0x8100, 0x8100)], ids=["plain", "two-vlans"])
def test_pppoe_session(fastpath, tags, family):
    """IP inside a PPPoE session (RFC 2516; behind VLAN tags as on a DSL
    access network) is tracked like untagged IP; PPP control (LCP) is not IP."""
    frame, _ = build("udp", family, sport=5353, dport=53)
    ip = frame[14:]
    ppp = 0x0021 if family == 4 else 0x0057
    pppoe = struct.pack("!BBHHH", 0x11, 0, 0x1234, len(ip) + 2, ppp)
    check(fastpath, l2_header(tags, 0x8864) + pppoe + ip, R.PASS_FORWARD)
    lo, hi = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
    assert assert_one_flow(fastpath, lo, 5353, hi, 53, IPPROTO_UDP).packets == (1, 0)
    lcp = struct.pack("!BBHHH", 0x11, 0, 0x1234, 6, 0xC021) + bytes(4)
    check(fastpath, pad60(l2_header(tags, 0x8864) + lcp), R.PASS_NOT_IP)
    check(fastpath, l2_header(tags, 0x8864) + pppoe[:5], R.DROP_L2_TRUNCATED)


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
    assert_one_flow(fastpath, V4_LO, 1234, V4_HI, 53, L4_PROTO[(l4, 4)])


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
    f = assert_one_flow(fastpath, V4_HI, 5353, V4_LO, 53, IPPROTO_UDP)
    assert f.initiator_is_hi == 1


def _ip_tcp(**ip):
    return eth() / IP(src=V4_LO, dst=V4_HI, **ip) / TCP(sport=SPORT, dport=DPORT, flags="S")


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


@pytest.mark.parametrize("frame,reason", [
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / UDP(sport=1234, dport=53) / b"x", R.PASS_FORWARD,
                 id="udp-1-byte"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / UDP(sport=1234, dport=53), R.PASS_FORWARD, id="udp-empty"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / TCP(sport=1234, dport=53, flags="S"), R.PASS_FORWARD,
                 id="tcp-syn"),
    # Parsed to the end, then refused by session tracking (not by the parser).
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / TCP(sport=1234, dport=53, flags="A"),
                 R.DROP_TCP_NO_SESSION, id="tcp-ack"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / ICMP(id=1234), R.PASS_FORWARD, id="icmp-echo"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / ICMP(type=0, id=1234), R.DROP_ICMP_ECHO_UNMATCHED,
                 id="icmp-echo-reply"),
])
@pytest.mark.parametrize("fill", [b"\0", b"\xa5"], ids=["zero-pad", "junk-pad"])
def test_ethernet_padding_after_totlen_passes(fastpath, frame, reason, fill):
    raw = bytes(frame)
    assert len(raw) < 60
    padded = pad60(raw, fill)
    check(fastpath, padded, reason)
    proto = raw[23]
    ports = (1234, 1234) if proto == IPPROTO_ICMP else (1234, 53)
    if reason == R.PASS_FORWARD:
        f = assert_one_flow(fastpath, V4_LO, ports[0], V4_HI, ports[1], proto)
        assert f.bytes == (60, 0)   # skb->len, the padding included
    else:
        assert flows(fastpath) == {}


@pytest.mark.parametrize("fill", [b"\0", b"\xa5"], ids=["zero-pad", "junk-pad"])
def test_ethernet_padding_is_not_tcp_payload(fastpath, fill):
    """The TCP payload length comes from the IP total length: the 6 bytes
    of padding after a bare SYN are not sequence space, so the SYN-ACK must
    acknowledge ISN + 1 exactly (ISN + 7 would ack unsent data)."""
    syn = pad60(bytes(eth() / IP(src=V4_LO, dst=V4_HI) / TCP(sport=1234, dport=80, flags="S", seq=ISN)), fill)
    check(fastpath, syn, R.PASS_FORWARD)

    def synack(ack):
        return pad60(bytes(eth() / IP(src=V4_HI, dst=V4_LO)
                           / TCP(sport=80, dport=1234, flags="SA", seq=RISN, ack=ack)), fill)
    check(fastpath, synack(ISN + 1 + 6), R.DROP_TCP_BAD_SYNACK)
    check(fastpath, synack(ISN + 1), R.PASS_FORWARD)
    ack = pad60(bytes(eth() / IP(src=V4_LO, dst=V4_HI)
                      / TCP(sport=1234, dport=80, flags="A", seq=ISN + 1, ack=RISN + 1)), fill)
    check(fastpath, ack, R.PASS_FORWARD)
    f = assert_one_flow(fastpath, V4_LO, 1234, V4_HI, 80, IPPROTO_TCP, EST, S.CT_ESTABLISHED)
    assert f.packets == (2, 1) and f.bytes == (120, 60)


def test_ipv6_trailer_after_payload_len_passes(fastpath):
    # An IPv6 frame is never short enough for Ethernet padding (14 + 40 + 8
    # = 62 bytes), but bytes after payload_len (trailers) must pass too.
    raw = bytes(eth() / IPv6(src=V6_LO, dst=V6_HI) / UDP(sport=1234, dport=53))
    framed = check(fastpath, raw + b"\xa5" * 16, R.PASS_FORWARD)
    f = assert_one_flow(fastpath, V6_LO, 1234, V6_HI, 53, IPPROTO_UDP)
    assert f.bytes == (len(framed), 0)


def test_ipv6_trailer_is_not_tcp_payload(fastpath):
    syn = bytes(eth() / IPv6(src=V6_LO, dst=V6_HI) / TCP(sport=1234, dport=80, flags="S", seq=ISN))
    check(fastpath, syn + b"\xa5" * 16, R.PASS_FORWARD)
    synack = eth() / IPv6(src=V6_HI, dst=V6_LO) / TCP(sport=80, dport=1234, flags="SA", seq=RISN, ack=ISN + 17)
    check(fastpath, bytes(synack) + b"\xa5" * 16, R.DROP_TCP_BAD_SYNACK)
    synack[TCP].ack = ISN + 1
    check(fastpath, bytes(synack) + b"\xa5" * 16, R.PASS_FORWARD)
    assert only_flow(fastpath)[1].state == S.CT_SYN_RECV


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
    assert lay.parsed == R.PASS_FORWARD and lay.opens
    check(fastpath, frame, R.PASS_FORWARD)
    if l4 == "icmp":
        assert_one_flow(fastpath, V6_LO, ECHO_ID, V6_HI, ECHO_ID, IPPROTO_ICMPV6)
    else:
        assert_one_flow(fastpath, V6_LO, 1234, V6_HI, 443, L4_PROTO[(l4, 6)])
    # The reply through the same chain finds the flow and promotes it; for
    # TCP that also proves the SYN's sequence space (ISN + 4 bytes + SYN).
    reply, _ = build(l4, 6, exts=exts, sport=1234, dport=443, reply=True, tcp_flags="SA", seq=RISN,
                     ack=ISN + 5, icmp_type=icmp_echo_type(6, reply=True))
    check(fastpath, reply, R.PASS_FORWARD)
    _, f = only_flow(fastpath)
    assert f.packets == (1, 1)
    assert (f.table, f.state) == ((HALF, S.CT_SYN_RECV) if l4 == "tcp" else
                                  (EST, S.CT_ICMP if l4 == "icmp" else S.CT_UDP_REPLIED))


def _raw6(nh: int, body: bytes):
    return eth() / IPv6(src=V6_LO, dst=V6_HI, nh=nh) / Raw(body)


_TCP = bytes(TCP(sport=1234, dport=443, flags="S"))
# The longest hop-by-hop header (a multiple of 8) after which the L4 header
# still starts within MS_MAX_L3_HDR of the frame: 456, L4 at offset 510.
_HBH_AT_LIMIT = (MS_MAX_L3_HDR - 14 - 40) // 8 * 8
_JUNK = bytes([IPPROTO_DSTOPTS, 200]) + b"\x5a" * 62   # looks like a 1608-byte header

IPV6_EXT_OTHER = [
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
#
# A first fragment is parsed like any packet (its L4 header is there) and
# its ports are remembered (ms_frags, keyed by addresses, IP id and
# protocol); a later fragment is not parsed past the IP layer (what follows
# is the middle of a datagram) and goes by its first fragment's flow:
# PASS_FRAGMENT when that flow exists, DROP_FRAG_NO_FIRST when no first
# fragment (or no flow) was seen, DROP_FRAG_OVERLAP for a TCP fragment at
# offset 1, which would overwrite the ports and flags (RFC 1858).

FRAG_PAYLOAD = bytes(range(256)) * 12   # 3072 bytes
FRAG_ID = 4242


def _udp_hdr(sport=1234, dport=443, length=1000) -> bytes:
    """A UDP header of a datagram longer than the first fragment holds."""
    return struct.pack("!HHHH", sport, dport, length, 0)


# First fragments (offset 0, MF) of flows 10.0.0.1:1234 -> 10.0.0.2:443.
FIRST4 = {
    IPPROTO_TCP: (IPPROTO_TCP, _TCP + b"x" * 16),
    IPPROTO_UDP: (IPPROTO_UDP, _udp_hdr() + b"x" * 16),
    IPPROTO_ICMP: (IPPROTO_ICMP, bytes(ICMP(type=8, id=1234, seq=1)) + b"x" * 16),
}


def _frag4(proto: int, body: bytes, flags="MF", frag: int = 0, ident: int = FRAG_ID,
           src: str = V4_LO, dst: str = V4_HI):
    return eth() / IP(src=src, dst=dst, id=ident, proto=proto, flags=flags, frag=frag) / Raw(body)


def _first4(proto: int, **kw):
    return _frag4(*FIRST4[proto], **kw)


def _ports4(proto: int) -> tuple[int, int]:
    return (1234, 1234) if proto == IPPROTO_ICMP else (1234, 443)


@pytest.mark.parametrize("ip,l4,reason", [
    pytest.param(dict(flags="MF", frag=0), _TCP, R.PASS_FORWARD, id="first-mf-offset-0"),
    pytest.param(dict(flags="DF", frag=0), _TCP, R.PASS_FORWARD, id="df-not-a-fragment"),
    pytest.param(dict(flags="DF+MF", frag=0), _TCP, R.PASS_FORWARD, id="df-and-mf-first"),
    # RFC 1858 tiny first fragment: the TCP header does not fit.
    pytest.param(dict(flags="MF", frag=0), _TCP[:8], R.DROP_TCP_TRUNCATED, id="tiny-first-fragment"),
    # A first fragment of a segment that opens nothing: parsed, then refused.
    pytest.param(dict(flags="MF", frag=0), bytes(TCP(sport=1234, dport=443, flags="A")), R.DROP_TCP_NO_SESSION,
                 id="first-fragment-ack-no-session"),
])
def test_ipv4_first_fragment_flags(fastpath, ip, l4, reason):
    check(fastpath, eth() / IP(src=V4_LO, dst=V4_HI, proto=IPPROTO_TCP, **ip) / Raw(l4), reason)
    if reason == R.PASS_FORWARD:
        assert_one_flow(fastpath, V4_LO, 1234, V4_HI, 443, IPPROTO_TCP)
    else:
        assert flows(fastpath) == {}


# (proto, IP flags, offset, body) of later fragments; bodies that would be
# refused as an L4 header if they were parsed as one.
LATER4 = [
    pytest.param(IPPROTO_TCP, "MF", 185, _TCP, id="tcp-middle"),
    pytest.param(IPPROTO_TCP, 0, 185, _TCP, id="tcp-last"),
    pytest.param(IPPROTO_TCP, "MF", 4096, _TCP, id="tcp-offset-4096"),      # high bits of the field
    pytest.param(IPPROTO_TCP, 0, 8191, _TCP, id="tcp-offset-8191-max"),
    pytest.param(IPPROTO_TCP, 0, 2, b"tail", id="tcp-later-short-not-parsed"),
    # Offset 1 is an overlap only for TCP: UDP's 8-byte header is past it.
    pytest.param(IPPROTO_UDP, "MF", 1, b"\0" * 8, id="udp-offset-1-len-0-not-parsed"),
    pytest.param(IPPROTO_UDP, 0, 185, b"tail", id="udp-last-short"),
    pytest.param(IPPROTO_ICMP, 0, 3, b"xy", id="icmp-last-short"),
]


@pytest.mark.parametrize("first_seen", [True, False], ids=["after-first", "no-first"])
@pytest.mark.parametrize("proto,flags,offset,body", LATER4)
def test_ipv4_later_fragment(fastpath, proto, flags, offset, body, first_seen):
    if first_seen:
        first = check(fastpath, _first4(proto), R.PASS_FORWARD)
    later = check(fastpath, _frag4(proto, body, flags=flags, frag=offset),
                  R.PASS_FRAGMENT if first_seen else R.DROP_FRAG_NO_FIRST)
    if first_seen:
        # Later fragments are accounted to their first fragment's flow.
        sport, dport = _ports4(proto)
        f = assert_one_flow(fastpath, V4_LO, sport, V4_HI, dport, proto)
        assert f.packets == (2, 0) and f.bytes == (len(first) + len(later), 0)
    else:
        assert flows(fastpath) == {}


@pytest.mark.parametrize("first_seen", [True, False], ids=["after-first", "no-first"])
@pytest.mark.parametrize("flags", ["MF", 0], ids=["middle", "last"])
def test_ipv4_tcp_fragment_at_offset_1_overlaps(fastpath, flags, first_seen):
    """RFC 1858: a TCP fragment at offset 1 (8 bytes in) would rewrite the
    flags and more of the header the first fragment showed."""
    if first_seen:
        check(fastpath, _first4(IPPROTO_TCP), R.PASS_FORWARD)
    check(fastpath, _frag4(IPPROTO_TCP, b"\0" * 16, flags=flags, frag=1), R.DROP_FRAG_OVERLAP)
    if first_seen:
        assert assert_one_flow(fastpath, V4_LO, 1234, V4_HI, 443, IPPROTO_TCP).packets == (1, 0)
    else:
        assert flows(fastpath) == {}


@pytest.mark.parametrize("first,later", [
    pytest.param(_first4(IPPROTO_UDP), _frag4(IPPROTO_UDP, b"tail", flags=0, frag=185, ident=FRAG_ID + 1),
                 id="other-ip-id"),
    # The 16-bit id is read whole: ids that differ in either byte differ.
    pytest.param(_first4(IPPROTO_UDP), _frag4(IPPROTO_UDP, b"tail", flags=0, frag=185, ident=FRAG_ID ^ 0x100),
                 id="other-ip-id-high-byte"),
    pytest.param(_first4(IPPROTO_UDP), _frag4(IPPROTO_TCP, b"tail", flags=0, frag=185), id="other-protocol"),
    pytest.param(_first4(IPPROTO_UDP), _frag4(IPPROTO_UDP, b"tail", flags=0, frag=185, src="10.0.0.3"),
                 id="other-source"),
    pytest.param(_first4(IPPROTO_UDP), _frag4(IPPROTO_UDP, b"tail", flags=0, frag=185, src=V4_HI, dst=V4_LO),
                 id="other-direction"),
])
def test_ipv4_later_fragment_of_another_datagram(fastpath, first, later):
    check(fastpath, first, R.PASS_FORWARD)
    check(fastpath, later, R.DROP_FRAG_NO_FIRST)
    assert assert_one_flow(fastpath, V4_LO, 1234, V4_HI, 443, IPPROTO_UDP).packets == (1, 0)


@pytest.mark.parametrize("first,reason", [
    pytest.param(_frag4(IPPROTO_TCP, _TCP[:8]), R.DROP_TCP_TRUNCATED, id="first-refused-by-parser"),
    pytest.param(_frag4(IPPROTO_UDP, struct.pack("!HHHH", 1234, 443, 7, 0) + b"x" * 8), R.DROP_UDP_BAD_LENGTH,
                 id="first-udp-length-7"),
    pytest.param(_frag4(IPPROTO_TCP, bytes(TCP(sport=1234, dport=443, flags="A"))), R.DROP_TCP_NO_SESSION,
                 id="first-refused-by-session-tracking"),
    pytest.param(_frag4(IPPROTO_ICMP, bytes(ICMP(type=0, id=1234)) + b"x" * 8), R.DROP_ICMP_ECHO_UNMATCHED,
                 id="first-echo-reply-unmatched"),
])
def test_ipv4_later_fragment_after_refused_first(fastpath, first, reason):
    """A first fragment that was dropped leaves its later fragments nothing
    to follow."""
    check(fastpath, first, reason)
    proto = bytes(first)[23]
    check(fastpath, _frag4(proto, b"\0" * 16, flags=0, frag=185), R.DROP_FRAG_NO_FIRST)
    assert flows(fastpath) == {}


@pytest.mark.parametrize("seg,key_ports", [
    pytest.param(UDP(sport=5353, dport=53) / FRAG_PAYLOAD, (5353, 53), id="udp-large-datagram"),
    pytest.param(ICMP(type=8, id=777) / FRAG_PAYLOAD, (777, 777), id="icmp-large-echo"),
])
def test_ipv4_fragmented_datagram(fastpath, seg, key_ports):
    pkt = IP(src=V4_LO, dst=V4_HI, id=FRAG_ID) / seg
    frags = fragment(pkt, fragsize=1480)
    assert len(frags) == 3 and frags[0].flags.MF and frags[0].frag == 0
    sizes = [len(check(fastpath, eth() / frags[0], R.PASS_FORWARD))]
    f = assert_one_flow(fastpath, V4_LO, key_ports[0], V4_HI, key_ports[1], pkt.proto)
    for fr in frags[1:]:
        assert fr.frag > 0
        sizes.append(len(check(fastpath, eth() / fr, R.PASS_FRAGMENT)))
    f = assert_one_flow(fastpath, V4_LO, key_ports[0], V4_HI, key_ports[1], pkt.proto)
    assert f.packets == (3, 0) and f.bytes == (sum(sizes), 0)


def _fragmented_segment(family: int):
    """A 3072-byte data segment of an established flow, fragmented in three."""
    seg = TCP(sport=1234, dport=80, flags="PA", seq=ISN + 1, ack=RISN + 1) / FRAG_PAYLOAD
    if family == 4:
        return [eth() / fr for fr in fragment(IP(src=V4_LO, dst=V4_HI, id=FRAG_ID) / seg, fragsize=1480)]
    pkt = IPv6(src=V6_LO, dst=V6_HI) / IPv6ExtHdrFragment(id=FRAG_ID) / seg
    return [eth() / fr for fr in fragment6(pkt, 1280)]


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_fragmented_tcp_segment(fastpath, family):
    lo, hi = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
    tcp_handshake(fastpath, (lo, 1234), (hi, 80))
    frags = _fragmented_segment(family)
    assert len(frags) == 3
    check(fastpath, frags[0], R.PASS_FORWARD)
    for fr in frags[1:]:
        check(fastpath, fr, R.PASS_FRAGMENT)
    f = assert_one_flow(fastpath, lo, 1234, hi, 80, IPPROTO_TCP, EST, S.CT_ESTABLISHED)
    assert f.packets == (2 + 3, 1)


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_fragmented_tcp_segment_acknowledged(fastpath, family):
    lo, hi = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
    ipl = IP if family == 4 else IPv6
    tcp_handshake(fastpath, (lo, 1234), (hi, 80))
    frags = _fragmented_segment(family)
    check(fastpath, frags[0], R.PASS_FORWARD)
    for fr in frags[1:]:
        check(fastpath, fr, R.PASS_FRAGMENT)
    ack = eth() / ipl(src=hi, dst=lo) / TCP(sport=80, dport=1234, flags="A", seq=RISN + 1,
                                            ack=ISN + 1 + len(FRAG_PAYLOAD))
    check(fastpath, ack, R.PASS_FORWARD)


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_fragmented_other_l4_datagram(fastpath, family):
    inner = GRE() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=2) / FRAG_PAYLOAD
    if family == 4:
        frags = fragment(IP(src=V4_LO, dst=V4_HI, id=FRAG_ID) / inner, fragsize=1480)
    else:
        frags = fragment6(IPv6(src=V6_LO, dst=V6_HI) / IPv6ExtHdrFragment(id=FRAG_ID) / inner, 1280)
    check(fastpath, eth() / frags[0], R.PASS_OTHER_L4)
    for fr in frags[1:]:
        # A pass, whichever of the two pass reasons a fix settles on.
        frame = bytes(eth() / fr)
        action, delta = outcome(fastpath, frame)
        assert action == TC_ACT_OK
        assert delta in ({(ING, R.PASS_OTHER_L4): (1, len(frame))},
                         {(ING, R.PASS_FRAGMENT): (1, len(frame))}), \
            {r.name: v for (_, r), v in delta.items()}


# IPv6: the fragment header (RFC 8200 4.5) carries the offset and the next
# header of the fragmentable part.
def _frag6(body: bytes, before: bytes = b"", first_nh: int = IPPROTO_FRAGMENT):
    return _raw6(first_nh, before + body)


FIRST6 = {
    IPPROTO_TCP: ext_frag(IPPROTO_TCP, 0, True, FRAG_ID) + _TCP + b"x" * 16,
    IPPROTO_UDP: ext_frag(IPPROTO_UDP, 0, True, FRAG_ID) + _udp_hdr() + b"x" * 16,
    IPPROTO_ICMPV6: ext_frag(IPPROTO_ICMPV6, 0, True, FRAG_ID)
    + bytes(ICMPv6EchoRequest(id=1234, seq=1, data=b"x" * 16)),
}

# (proto of the first fragment, later fragment's body after the IPv6 header,
# first next-header). Bodies that would be refused if walked as headers.
LATER6 = [
    pytest.param(IPPROTO_TCP, ext_frag(IPPROTO_TCP, 185, True, FRAG_ID) + _TCP, IPPROTO_FRAGMENT,
                 id="tcp-middle"),
    pytest.param(IPPROTO_TCP, ext_frag(IPPROTO_TCP, 185, False, FRAG_ID) + b"tail", IPPROTO_FRAGMENT,
                 id="tcp-last-short-tail"),
    pytest.param(IPPROTO_TCP, ext_frag(IPPROTO_TCP, 4096, True, FRAG_ID) + _TCP, IPPROTO_FRAGMENT,
                 id="tcp-offset-4096"),
    pytest.param(IPPROTO_UDP, ext_frag(IPPROTO_UDP, 8191, False, FRAG_ID) + b"tail", IPPROTO_FRAGMENT,
                 id="udp-offset-8191-max"),
    pytest.param(IPPROTO_UDP, ext_frag(IPPROTO_UDP, 1, True, FRAG_ID) + b"\0" * 8, IPPROTO_FRAGMENT,
                 id="udp-offset-1-len-0-not-parsed"),
    pytest.param(IPPROTO_ICMPV6, ext_frag(IPPROTO_ICMPV6, 3, False, FRAG_ID) + b"xy", IPPROTO_FRAGMENT,
                 id="icmp6-last-short"),
    pytest.param(IPPROTO_TCP, ext_opts(IPPROTO_FRAGMENT) + ext_frag(IPPROTO_TCP, 100, True, FRAG_ID) + _JUNK,
                 IPPROTO_HOPOPTS, id="hbh-then-fragment-later"),
    pytest.param(IPPROTO_TCP, ext_opts(IPPROTO_ROUTING) + ext_routing(IPPROTO_FRAGMENT)
                 + ext_frag(IPPROTO_TCP, 100, False, FRAG_ID) + _JUNK, IPPROTO_HOPOPTS,
                 id="hbh-routing-then-fragment-later"),
]


def _ports6(proto: int) -> tuple[int, int]:
    return (1234, 1234) if proto == IPPROTO_ICMPV6 else (1234, 443)


@pytest.mark.parametrize("first_seen", [True, False], ids=["after-first", "no-first"])
@pytest.mark.parametrize("proto,body,nh", LATER6)
def test_ipv6_later_fragment(fastpath, proto, body, nh, first_seen):
    """What follows a later fragment's header is the middle of the datagram,
    not a header: walked, the junk there would be refused as truncated."""
    if first_seen:
        first = check(fastpath, _frag6(FIRST6[proto]), R.PASS_FORWARD)
    later = check(fastpath, _frag6(body, first_nh=nh), R.PASS_FRAGMENT if first_seen else R.DROP_FRAG_NO_FIRST)
    if first_seen:
        sport, dport = _ports6(proto)
        f = assert_one_flow(fastpath, V6_LO, sport, V6_HI, dport, proto)
        assert f.packets == (2, 0) and f.bytes == (len(first) + len(later), 0)
    else:
        assert flows(fastpath) == {}


@pytest.mark.parametrize("body", [
    # (A later fragment whose next header differs from the first's, e.g.
    # destination options, still belongs to it: RFC 8200 4.5 reassembles by
    # (source, destination, identification); see
    # test_ipv6_fragment_with_headers_in_fragmentable_part.)
] + [
    # The 32-bit identification is read whole: ids that differ in any byte differ.
    pytest.param(ext_frag(IPPROTO_TCP, 185, True, FRAG_ID ^ (1 << (8 * b))) + _TCP,
                 id=f"other-fragment-id-byte-{b}")
    for b in range(4)
])
def test_ipv6_later_fragment_without_its_first(fastpath, body):
    check(fastpath, _frag6(FIRST6[IPPROTO_TCP]), R.PASS_FORWARD)
    check(fastpath, _frag6(body), R.DROP_FRAG_NO_FIRST)
    assert assert_one_flow(fastpath, V6_LO, 1234, V6_HI, 443, IPPROTO_TCP).packets == (1, 0)


@pytest.mark.parametrize("name,nh", [("dst", IPPROTO_DSTOPTS), ("ah", IPPROTO_AH)])
def test_ipv6_fragment_with_headers_in_fragmentable_part(fastpath, name, nh):
    _, inner = ext_chain([(name, {})], IPPROTO_UDP)
    first = ext_frag(nh, 0, True, FRAG_ID) + inner + _udp_hdr() + b"x" * 16
    check(fastpath, _frag6(first), R.PASS_FORWARD)
    assert_one_flow(fastpath, V6_LO, 1234, V6_HI, 443, IPPROTO_UDP)
    check(fastpath, _frag6(ext_frag(nh, 8, False, FRAG_ID) + b"x" * 16), R.PASS_FRAGMENT)


@pytest.mark.parametrize("first_seen", [True, False], ids=["after-first", "no-first"])
def test_ipv6_tcp_fragment_at_offset_1_overlaps(fastpath, first_seen):
    if first_seen:
        check(fastpath, _frag6(FIRST6[IPPROTO_TCP]), R.PASS_FORWARD)
    check(fastpath, _frag6(ext_frag(IPPROTO_TCP, 1, True, FRAG_ID) + b"\0" * 16), R.DROP_FRAG_OVERLAP)
    if first_seen:
        assert assert_one_flow(fastpath, V6_LO, 1234, V6_HI, 443, IPPROTO_TCP).packets == (1, 0)
    else:
        assert flows(fastpath) == {}


@pytest.mark.parametrize("seg,key_ports", [
    pytest.param(UDP(sport=5353, dport=53) / FRAG_PAYLOAD, (5353, 53), id="udp-large-datagram"),
    pytest.param(ICMPv6EchoRequest(id=777, data=FRAG_PAYLOAD), (777, 777), id="icmp6-large-echo"),
])
def test_ipv6_fragmented_datagram(fastpath, seg, key_ports):
    pkt = IPv6(src=V6_LO, dst=V6_HI) / IPv6ExtHdrFragment(id=FRAG_ID) / seg
    frags = fragment6(pkt, 1280)
    assert len(frags) == 3
    sizes = [len(check(fastpath, eth() / frags[0], R.PASS_FORWARD))]
    proto = IPPROTO_UDP if isinstance(seg, UDP) else IPPROTO_ICMPV6
    assert_one_flow(fastpath, V6_LO, key_ports[0], V6_HI, key_ports[1], proto)
    for fr in frags[1:]:
        sizes.append(len(check(fastpath, eth() / fr, R.PASS_FRAGMENT)))
    f = assert_one_flow(fastpath, V6_LO, key_ports[0], V6_HI, key_ports[1], proto)
    assert f.packets == (3, 0) and f.bytes == (sum(sizes), 0)


# ==========================================================================
# Truncation at every layer
# ==========================================================================

def expected_reason(lay: Layout, cut: int, consistent: bool) -> Reason:
    """What the fast path must say about the first ``cut`` bytes of a frame.

    ``consistent``: the IP length field was rewritten to match the cut;
    otherwise it still claims the full packet (a lying length). Other
    length fields (UDP length, TCP data offset) are left as built. A cut
    the parser accepts reaches the stage of its protocol, whose answer for
    a first packet is ``lay.parsed`` (see first_packet_reason)."""
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
        return R.DROP_TCP_BAD_DOFF if rem < lay.l4_hdr else lay.parsed
    if lay.l4 == "udp":
        if rem < 8:
            return R.DROP_UDP_TRUNCATED
        return R.DROP_UDP_BAD_LENGTH if lay.udp_len > rem else lay.parsed
    return R.DROP_ICMP_TRUNCATED if rem < 8 else lay.parsed


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
ICMP_DATA = b"0123456789abcdef"
# What an ICMP error quotes: the start of a datagram of no known flow.
QUOTE4 = bytes(IP(src="192.0.2.1", dst="198.51.100.1") / UDP(sport=5353, dport=53) / b"query")[:28]
QUOTE6 = bytes(IPv6(src="2001:db8:1::1", dst="2001:db8:2::1") / UDP(sport=5353, dport=53) / b"query")[:48]
TRUNC_CASES = {
    # Packets that open a session: parsed whole, they pass.
    "tcp4": dict(l4="tcp", family=4, payload=HTTP),
    "tcp4-ip-options": dict(l4="tcp", family=4, ip_options=12, payload=HTTP),
    "tcp6": dict(l4="tcp", family=6, payload=HTTP),
    "tcp6-ext-headers": dict(l4="tcp", family=6, exts=[("hbh", {}), ("dst", {"length": 16})], payload=HTTP),
    "udp4": dict(l4="udp", family=4, payload=b"dns-query..."),
    "udp6": dict(l4="udp", family=6, payload=b"dns-query..."),
    "icmp4": dict(l4="icmp", family=4, payload=ICMP_DATA),
    "icmp6": dict(l4="icmp", family=6, payload=ICMP_DATA),
    "vlan-tcp4": dict(l4="tcp", family=4, tags=(0x8100,), payload=HTTP),
    "vlan-tcp4-ip-options": dict(l4="tcp", family=4, tags=(0x8100,), ip_options=12, payload=HTTP),
    "vlan-udp4": dict(l4="udp", family=4, tags=(0x8100,), payload=b"dns-query..."),
    "vlan-icmp4": dict(l4="icmp", family=4, tags=(0x8100,), payload=ICMP_DATA),
    "qinq-tcp6": dict(l4="tcp", family=6, tags=(0x88A8, 0x8100), payload=HTTP),
    "qinq-icmp6-ext-headers": dict(l4="icmp", family=6, tags=(0x88A8, 0x8100),
                                   exts=[("frag", {"more": True}), ("ah", {})], payload=ICMP_DATA),
    # Packets the parser accepts whole and a stage then refuses or passes
    # without a session: every shorter cut must still get the parser's reason.
    "vlan-tcp4-ack-no-session": dict(l4="tcp", family=4, tags=(0x8100,), tcp_flags="PA", payload=HTTP),
    "qinq-tcp6-ext-headers-ack-no-session": dict(l4="tcp", family=6, tags=(0x88A8, 0x8100),
                                                 exts=[("dst", {})], tcp_flags="A", payload=HTTP),
    "vlan-icmp4-echo-reply-unmatched": dict(l4="icmp", family=4, tags=(0x8100,), icmp_type=0,
                                            payload=ICMP_DATA),
    "vlan-icmp6-echo-reply-unmatched": dict(l4="icmp", family=6, tags=(0x8100,), icmp_type=129,
                                            payload=ICMP_DATA),
    "vlan-icmp4-error-unmatched": dict(l4="icmp", family=4, tags=(0x8100,), icmp_type=3, payload=QUOTE4),
    "vlan-icmp6-error-unmatched": dict(l4="icmp", family=6, tags=(0x8100,), icmp_type=2, payload=QUOTE6),
    "vlan-icmp4-timestamp-type": dict(l4="icmp", family=4, tags=(0x8100,), icmp_type=13, payload=b"\0" * 12),
    "vlan-icmp6-neighbour-solicitation": dict(l4="icmp", family=6, tags=(0x8100,), icmp_type=135,
                                              payload=bytes(16)),
}


def test_truncation_model_spot_checks():
    """The model the sweep relies on, against a few hand-worked values."""
    frame, lay = build(**TRUNC_CASES["vlan-tcp4"])
    assert (lay.l2, lay.l3, lay.l4_hdr, lay.full) == (18, 20, 40, 18 + 20 + 40 + len(HTTP))
    assert (lay.parsed, lay.opens) == (R.PASS_FORWARD, True)
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
    _, ack = build(**TRUNC_CASES["vlan-tcp4-ack-no-session"])
    assert (ack.l4_hdr, ack.parsed, ack.opens) == (32, R.DROP_TCP_NO_SESSION, False)
    assert expected_reason(ack, 18 + 20 + 31, True) == R.DROP_TCP_BAD_DOFF
    assert expected_reason(ack, 18 + 20 + 32, True) == R.DROP_TCP_NO_SESSION
    _, ns = build(**TRUNC_CASES["vlan-icmp6-neighbour-solicitation"])
    assert expected_reason(ns, 18 + 40 + 7, True) == R.DROP_ICMP_TRUNCATED
    assert expected_reason(ns, 18 + 40 + 8, True) == R.PASS_ICMP_CONTROL
    _, err = build(**TRUNC_CASES["vlan-icmp4-error-unmatched"])
    assert expected_reason(err, err.full, False) == R.DROP_ICMP_UNMATCHED


@pytest.mark.parametrize("mode", ["lying-length", "consistent-length"])
@pytest.mark.parametrize("case", list(TRUNC_CASES))
def test_truncation_at_every_length(fastpath, case, mode):
    consistent = mode == "consistent-length"
    frame, lay = build(**TRUNC_CASES[case])
    mismatches = []
    parsed = 0
    for cut in range(14, lay.full + 1):
        want = expected_reason(lay, cut, consistent)
        if cut < lay.headers_end:
            assert want != lay.parsed       # the model itself never accepts a cut header
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
        parsed += want == lay.parsed
    assert not mismatches, "\n".join(mismatches)
    # The full frame always parses; in lying mode nothing shorter does.
    assert expected_reason(lay, lay.full, consistent) == lay.parsed
    if not consistent:
        assert parsed == 1
    if lay.opens:
        # Every accepted cut was the same flow's first packet or its repeat.
        key, f = only_flow(fastpath)
        assert (f.table, f.packets) == (HALF, (parsed, 0))
        assert f.state == OPEN_STATE[L4_PROTO[(lay.l4, lay.family)]]
    else:
        assert flows(fastpath) == {}


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


TCP_LAYOUTS = [c for c, kw in TRUNC_CASES.items() if kw["l4"] == "tcp" and "tcp_flags" not in kw]


@pytest.mark.parametrize("case", TCP_LAYOUTS)
def test_tcp_sequence_space_through_layouts(fastpath, case):
    """Sequence numbers and payload lengths read through each layout are
    what the TCP window checks see: a SYN-ACK may acknowledge all of the
    SYN's sequence space (its payload included) but not one byte more, and
    the ACK of the next data segment may reach the end of that segment and
    not one byte past it. Read one byte short or long, one of the four
    checks fails."""
    kw = {k: v for k, v in TRUNC_CASES[case].items() if k != "payload"}
    n = len(HTTP)
    syn, _ = build(**kw, payload=HTTP)
    check(fastpath, syn, R.PASS_FORWARD)
    for ack, reason in ((ISN + n + 2, R.DROP_TCP_BAD_SYNACK), (ISN + n + 1, R.PASS_FORWARD)):
        synack, _ = build(**kw, reply=True, tcp_flags="SA", seq=RISN, ack=ack)
        check(fastpath, synack, reason)
    data, _ = build(**kw, tcp_flags="PA", seq=ISN + 1 + n, ack=RISN + 1, payload=HTTP)
    check(fastpath, data, R.PASS_FORWARD)
    assert only_flow(fastpath)[1].state == S.CT_ESTABLISHED
    for ack, reason in ((ISN + 1 + 2 * n + 1, R.DROP_TCP_OUT_OF_WINDOW), (ISN + 1 + 2 * n, R.PASS_FORWARD)):
        reply, _ = build(**kw, reply=True, tcp_flags="A", seq=RISN + 1, ack=ack)
        check(fastpath, reply, reason)
    _, f = only_flow(fastpath)
    assert (f.table, f.packets) == (EST, (2, 2))


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

def _tcp_frame(family, dataofs, options=(), payload=b"", flags="S"):
    ipl = IP(src=V4_LO, dst=V4_HI) if family == 4 else IPv6(src=V6_LO, dst=V6_HI)
    tcp = TCP(sport=1234, dport=80, flags=flags, dataofs=dataofs, options=list(options))
    return eth() / ipl / tcp / payload


@pytest.mark.parametrize("flags", ["S", "A"], ids=["syn", "ack"])
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("dataofs,options,payload,parses", [
    pytest.param(0, (), b"", False, id="doff-0"),
    pytest.param(4, (), b"", False, id="doff-4"),
    pytest.param(4, (), b"x" * 40, False, id="doff-4-with-payload"),
    pytest.param(5, (), b"", True, id="doff-5"),
    pytest.param(6, (), b"", False, id="doff-6-past-20-byte-segment"),
    pytest.param(15, (), b"", False, id="doff-15-past-20-byte-segment"),
    pytest.param(15, (), b"x" * 39, False, id="doff-15-past-59-byte-segment"),
    pytest.param(15, (), b"x" * 40, True, id="doff-15-exactly-60-bytes"),
    pytest.param(None, [("NOP", None)] * 40, b"", True, id="doff-15-40-bytes-of-options"),
    pytest.param(None, TCP_SYN_OPTS, HTTP, True, id="syn-options-and-payload"),
])
def test_tcp_data_offset(fastpath, family, dataofs, options, payload, parses, flags):
    """A bad data offset is the parser's reason whatever the flags; a good
    one hands the segment on: a SYN opens a session, an ACK finds none."""
    reason = first_packet_reason("tcp", family, _flag_bits(flags))[0] if parses else R.DROP_TCP_BAD_DOFF
    check(fastpath, _tcp_frame(family, dataofs, options, payload, flags), reason)
    lo, hi = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
    if reason == R.PASS_FORWARD:
        assert_one_flow(fastpath, lo, 1234, hi, 80, IPPROTO_TCP)
    else:
        assert flows(fastpath) == {}


def _udp_frame(family, ulen, payload, reply=False):
    ipl = IP(src=V4_LO, dst=V4_HI) if family == 4 else IPv6(src=V6_LO, dst=V6_HI)
    if reply:
        ipl.src, ipl.dst = ipl.dst, ipl.src
        return eth() / ipl / UDP(sport=53, dport=1234, len=ulen) / payload
    return eth() / ipl / UDP(sport=1234, dport=53, len=ulen) / payload


UDP_LENGTHS = [
    pytest.param(0, b"0123456789", R.DROP_UDP_BAD_LENGTH, id="len-0"),
    pytest.param(7, b"0123456789", R.DROP_UDP_BAD_LENGTH, id="len-7"),
    pytest.param(8, b"", R.PASS_FORWARD, id="len-8-empty"),
    pytest.param(8, b"0123456789", R.PASS_FORWARD, id="len-8-shorter-than-ip-payload"),
    pytest.param(18, b"0123456789", R.PASS_FORWARD, id="len-exact"),
    pytest.param(19, b"0123456789", R.DROP_UDP_BAD_LENGTH, id="len-one-past-ip-payload"),
    pytest.param(65535, b"0123456789", R.DROP_UDP_BAD_LENGTH, id="len-65535"),
]


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("ulen,payload,reason", UDP_LENGTHS)
def test_udp_length(fastpath, family, ulen, payload, reason):
    check(fastpath, _udp_frame(family, ulen, payload), reason)
    lo, hi = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
    if reason == R.PASS_FORWARD:
        assert_one_flow(fastpath, lo, 1234, hi, 53, IPPROTO_UDP)
    else:
        assert flows(fastpath) == {}


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("ulen,payload,reason", UDP_LENGTHS)
def test_udp_length_of_reply(fastpath, family, ulen, payload, reason):
    """A reply with a bad length is the parser's drop: it neither reaches
    the session nor promotes it."""
    check(fastpath, _udp_frame(family, 18, b"0123456789"), R.PASS_FORWARD)
    check(fastpath, _udp_frame(family, ulen, payload, reply=True), reason)
    lo, hi = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
    if reason == R.PASS_FORWARD:
        f = assert_one_flow(fastpath, lo, 1234, hi, 53, IPPROTO_UDP, EST, S.CT_UDP_REPLIED)
        assert f.packets == (1, 1)
    else:
        assert assert_one_flow(fastpath, lo, 1234, hi, 53, IPPROTO_UDP).packets == (1, 0)


@pytest.mark.parametrize("frame,reason", [
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI, proto=IPPROTO_ICMP) / b"\x08\x00\0\0\0\x01\0",
                 R.DROP_ICMP_TRUNCATED, id="icmp4-echo-7-bytes"),
    pytest.param(eth() / IPv6(src=V6_LO, dst=V6_HI, nh=IPPROTO_ICMPV6) / b"\x80\x00\0\0\0\x01\0",
                 R.DROP_ICMP_TRUNCATED, id="icmp6-echo-7-bytes"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI, proto=IPPROTO_ICMP) / b"\x08\x00\0\0\0\x01\0\x01",
                 R.PASS_FORWARD, id="icmp4-echo-8-bytes"),
    pytest.param(eth() / IPv6(src=V6_LO, dst=V6_HI, nh=IPPROTO_ICMPV6) / b"\x80\x00\0\0\0\x01\0\x01",
                 R.PASS_FORWARD, id="icmp6-echo-8-bytes"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / ICMP(type=3, code=1) / IP() / UDP(),
                 R.DROP_ICMP_UNMATCHED, id="icmp4-dest-unreachable-unknown-flow"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI, proto=IPPROTO_ICMP) / b"\x03\x01\0\0\0\0\0\0",
                 R.DROP_ICMP_UNMATCHED, id="icmp4-dest-unreachable-nothing-quoted"),
    pytest.param(eth() / IPv6(src=V6_LO, dst=V6_HI, nh=IPPROTO_ICMPV6) / b"\x87\x00\0\0\0\0\0\0",
                 R.PASS_ICMP_CONTROL, id="icmp6-neighbour-solicitation-8-bytes"),
    pytest.param(eth() / IPv6(src=V6_LO, dst=V6_HI, nh=IPPROTO_ICMPV6) / b"\x87\x00\0\0\0\0\0",
                 R.DROP_ICMP_TRUNCATED, id="icmp6-neighbour-solicitation-7-bytes"),
])
def test_icmp_headers(fastpath, frame, reason):
    check(fastpath, frame, reason)
    if reason == R.PASS_FORWARD:
        lo, hi = (V4_LO, V4_HI) if IP in frame else (V6_LO, V6_HI)
        proto = IPPROTO_ICMP if IP in frame else IPPROTO_ICMPV6
        assert_one_flow(fastpath, lo, 1, hi, 1, proto)    # the echo id (bytes 4-5) as both ports
    else:
        assert flows(fastpath) == {}


# --------------------------------------------------------------------------
# ICMP errors: the quoted header is read at the payload offset the parser
# found, so an error about a known flow is related through every layout.
# --------------------------------------------------------------------------

ICMP_ERR_LAYOUTS = {
    "ipv4": dict(family=4),
    "ipv4-options": dict(family=4, ip_options=12),
    "vlan-ipv4": dict(family=4, tags=(0x8100,)),
    "qinq-ipv4-options": dict(family=4, tags=(0x88A8, 0x8100), ip_options=40),
    "ipv6": dict(family=6),
    "ipv6-ext-headers": dict(family=6, exts=[("hbh", {}), ("dst", {"length": 16})]),
    "qinq-ipv6-ext-headers": dict(family=6, tags=(0x88A8, 0x8100), exts=[("rt", {}), ("dst", {})]),
}


def _quoted(kind: str, family: int, client: str, server: str, sport: int = SPORT) -> tuple[bytes, bytes]:
    """(the client's first packet of a ``kind`` flow, as a frame; the start
    of that packet as an ICMP error quotes it: IP header + 8 bytes for
    IPv4, as much as fits for IPv6 (here 40 + 8 + a little))."""
    ipl = IP(src=client, dst=server) if family == 4 else IPv6(src=client, dst=server)
    if kind == "udp":
        pkt = ipl / UDP(sport=sport, dport=53) / b"query"
    elif kind == "tcp":
        pkt = ipl / TCP(sport=sport, dport=443, flags="S", seq=ISN)
    else:
        echo = ICMP(type=8, id=sport, seq=1) if family == 4 else ICMPv6EchoRequest(id=sport, seq=1)
        pkt = ipl / echo / b"ping"
    raw = bytes(pkt)
    return bytes(eth() / pkt), raw[:28] if family == 4 else raw[:52]


def _icmp_error(family: int, quote: bytes, *, tags=(), ip_options: int = 0, exts=(),
                router: str | None = None):
    """An error (port unreachable / ICMPv6 port unreachable) from ``router``
    (default: the server) to the client, quoting ``quote``."""
    client, server = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
    src = router or server
    if family == 4:
        icmp = bytes(IP(src=src, dst=client) / ICMP(type=3, code=3) / quote)[20:]
        l3 = IP(src=src, dst=client, proto=IPPROTO_ICMP, options=[IPOption_NOP()] * ip_options) / Raw(icmp)
        return l2_header(tags, 0x0800) + bytes(l3)
    icmp = bytes(IPv6(src=src, dst=client) / ICMPv6EchoRequest(type=1, code=4, id=0, seq=0, data=quote))[40:]
    first, chain = ext_chain(exts, IPPROTO_ICMPV6)
    return l2_header(tags, 0x86DD) + bytes(IPv6(src=src, dst=client, nh=first) / Raw(chain + icmp))


@pytest.mark.parametrize("kind", ["udp", "tcp", "icmp"])
@pytest.mark.parametrize("layout", list(ICMP_ERR_LAYOUTS))
def test_icmp_error_about_known_flow(fastpath, layout, kind):
    kw = ICMP_ERR_LAYOUTS[layout]
    family = kw["family"]
    client, server = (V4_LO, V4_HI) if family == 4 else (V6_LO, V6_HI)
    first, quote = _quoted(kind, family, client, server)
    check(fastpath, first, R.PASS_FORWARD)
    before = only_flow(fastpath)
    router = "192.0.2.254" if family == 4 else "2001:db8:ffff::1"
    for src in (None, router):     # from the server, from a router on the way
        check(fastpath, _icmp_error(quote=quote, router=src, **kw), R.PASS_ICMP_RELATED)
    assert only_flow(fastpath) == before     # an error neither creates nor advances a session
    # The same error about another flow (another client port) is refused.
    _, other = _quoted(kind, family, client, server, sport=SPORT + 1)
    check(fastpath, _icmp_error(quote=other, **kw), R.DROP_ICMP_UNMATCHED)
    # ... and so is one that quotes the known flow's IP header without its ports.
    check(fastpath, _icmp_error(quote=quote[:20 if family == 4 else 40], **kw), R.DROP_ICMP_UNMATCHED)


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
    # GRE carrying what is not decapsulated (MPLS here); GRE carrying IP is
    # the inner flow's (tests/datapath/test_tunnel_kernel.py).
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / GRE(proto=0x8847) / (b"\0" * 24), id="gre-ipv4"),
    pytest.param(eth() / IPv6(src=V6_LO, dst=V6_HI) / GRE(proto=0x8847) / (b"\0" * 24), id="gre-ipv6"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI) / SCTP(sport=1, dport=2), id="sctp-ipv4"),
    pytest.param(eth() / IPv6(src=V6_LO, dst=V6_HI) / SCTP(sport=1, dport=2), id="sctp-ipv6"),
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI, proto=IPPROTO_ESP) / (b"\0" * 16), id="esp-ipv4"),
    # An unknown protocol with nothing after the IP header is not "truncated".
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI, proto=IPPROTO_ESP), id="esp-ipv4-empty"),
    pytest.param(_raw6(IPPROTO_HOPOPTS, ext_opts(IPPROTO_SCTP)) / SCTP(sport=1, dport=2),
                 id="sctp-after-hop-by-hop"),
    # A first fragment of one: the parser has nothing to read either.
    pytest.param(eth() / IP(src=V4_LO, dst=V4_HI, flags="MF", id=FRAG_ID) / GRE() / IP() / TCP(),
                 id="gre-ipv4-first-fragment"),
])
def test_other_l4(fastpath, frame):
    check(fastpath, frame, R.PASS_OTHER_L4)
    assert flows(fastpath) == {}


# ==========================================================================
# Egress of packets already seen at a managed ingress
# ==========================================================================

MANAGED_IFINDEX = 7
OTHER_IFINDEX = 8
# Past the direct-mapped array (maps.h MS_IFINDEX_DIRECT): the hash answers.
HIGH_MANAGED_IFINDEX = IFINDEX_DIRECT + 7
HIGH_OTHER_IFINDEX = IFINDEX_DIRECT + 8


def _manage(fp, ifindexes=(MANAGED_IFINDEX, HIGH_MANAGED_IFINDEX)):
    fp.set_managed(ifindexes)


GOOD = eth() / IP(src=V4_LO, dst=V4_HI) / TCP(sport=1234, dport=80, flags="S")
BAD = eth() / IP(src=V4_LO, dst=V4_HI, ihl=4) / TCP(sport=1234, dport=80, flags="S")
NO_SESSION = eth() / IP(src=V4_LO, dst=V4_HI) / TCP(sport=1234, dport=80, flags="A")


@pytest.mark.parametrize("direction,iif,frame,reason,flow", [
    pytest.param(EGR, MANAGED_IFINDEX, GOOD, R.PASS_SEEN_AT_INGRESS, False, id="egress-managed-iif"),
    # The ingress program already decided on it: the egress one does not
    # parse, nor look the session up.
    pytest.param(EGR, MANAGED_IFINDEX, BAD, R.PASS_SEEN_AT_INGRESS, False, id="egress-managed-iif-bad-header"),
    pytest.param(EGR, MANAGED_IFINDEX, NO_SESSION, R.PASS_SEEN_AT_INGRESS, False,
                 id="egress-managed-iif-no-session"),
    pytest.param(EGR, HIGH_MANAGED_IFINDEX, GOOD, R.PASS_SEEN_AT_INGRESS, False, id="egress-managed-high-iif"),
    pytest.param(EGR, HIGH_MANAGED_IFINDEX, NO_SESSION, R.PASS_SEEN_AT_INGRESS, False,
                 id="egress-managed-high-iif-no-session"),
    pytest.param(EGR, HIGH_OTHER_IFINDEX, NO_SESSION, R.DROP_TCP_NO_SESSION, False,
                 id="egress-unmanaged-high-iif-no-session"),
    pytest.param(EGR, IFINDEX_DIRECT - 1, NO_SESSION, R.DROP_TCP_NO_SESSION, False,
                 id="egress-unmanaged-last-direct-iif-no-session"),
    pytest.param(EGR, OTHER_IFINDEX, GOOD, R.PASS_FORWARD, True, id="egress-unmanaged-iif"),
    pytest.param(EGR, OTHER_IFINDEX, BAD, R.DROP_IPV4_BAD_HEADER, False, id="egress-unmanaged-iif-bad-header"),
    pytest.param(EGR, OTHER_IFINDEX, NO_SESSION, R.DROP_TCP_NO_SESSION, False,
                 id="egress-unmanaged-iif-no-session"),
    pytest.param(EGR, 0, GOOD, R.PASS_FORWARD, True, id="egress-locally-generated"),
    pytest.param(EGR, 0, NO_SESSION, R.DROP_TCP_NO_SESSION, False, id="egress-locally-generated-no-session"),
    pytest.param(ING, MANAGED_IFINDEX, GOOD, R.PASS_FORWARD, True, id="ingress-ignores-iif-table"),
    pytest.param(ING, MANAGED_IFINDEX, BAD, R.DROP_IPV4_BAD_HEADER, False, id="ingress-bad-header"),
    pytest.param(ING, MANAGED_IFINDEX, NO_SESSION, R.DROP_TCP_NO_SESSION, False, id="ingress-no-session"),
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
    assert_one_flow(fastpath, V4_LO, 1234, V4_HI, 80, IPPROTO_TCP)


def test_session_spans_hooks(fastpath):
    """One session table for both hooks: a flow opened at egress (a local
    client) is answered at ingress."""
    tcp_handshake(fastpath, direction=EGR)     # all three at egress: counted there
    c = fastpath.counters()
    assert c == {(EGR, R.PASS_FORWARD): (3, c[(EGR, R.PASS_FORWARD)][1])}
    data = eth() / IP(src=V4_HI, dst=V4_LO) / TCP(sport=DPORT, dport=SPORT, flags="PA", seq=RISN + 1,
                                                  ack=ISN + 1) / b"hello"
    check(fastpath, data, R.PASS_FORWARD, direction=ING)
    f = assert_one_flow(fastpath, V4_LO, SPORT, V4_HI, DPORT, IPPROTO_TCP, EST, S.CT_ESTABLISHED)
    assert f.packets == (2, 2)


@pytest.mark.parametrize("frame,reason", [
    pytest.param(build("udp", 4, tags=(0x8100,) * 4)[0], R.DROP_VLAN_TOO_DEEP, id="vlan-too-deep"),
    pytest.param(build("udp", 4, tags=(0x8100,))[0], R.PASS_FORWARD, id="vlan"),
    # Stage reasons are counted under the hook the packet came through too.
    pytest.param(NO_SESSION, R.DROP_TCP_NO_SESSION, id="tcp-no-session"),
    pytest.param(_icmp_frame(4, 0), R.DROP_ICMP_ECHO_UNMATCHED, id="icmp-echo-reply-unmatched"),
    pytest.param(_icmp_frame(4, 3), R.DROP_ICMP_UNMATCHED, id="icmp-error-unmatched"),
    pytest.param(_icmp_frame(4, 13), R.DROP_ICMP_TYPE, id="icmp-type"),
    pytest.param(_icmp_frame(6, 135), R.PASS_ICMP_CONTROL, id="icmp6-control"),
    pytest.param(_frag4(IPPROTO_UDP, b"tail", flags=0, frag=185), R.DROP_FRAG_NO_FIRST, id="frag-no-first"),
    pytest.param(_frag4(IPPROTO_TCP, b"\0" * 16, flags=0, frag=1), R.DROP_FRAG_OVERLAP, id="frag-overlap"),
])
def test_egress_reasons_counted_under_egress(fastpath, frame, reason):
    check(fastpath, frame, reason, direction=EGR)


# ==========================================================================
# The benchmark script runs
# ==========================================================================

BENCH = Path(__file__).resolve().parents[2] / "bench" / "fastpath.py"
BENCH_CASES = ["empty", "tcp4-established", "tcp4-syn-halfopen", "udp4-established", "tcp6-established",
               "tcp4-syn-table-full", "empty-repeat1", "tcp4-syn-new-flow",
               "tcp4-vxlan-established", "tcp4-gre-established"]


def test_bench_fastpath_quick_runs():
    proc = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert re.search(r"^kernel\s+\S+", out, re.M), out
    assert re.search(r"^repeat\s+20000\b", out, re.M), out
    assert re.search(r"^rounds\s+3\b", out, re.M), out
    assert re.search(r"^new flows\s+2000\b", out, re.M), out
    # Every case took the path it claims to measure (action and reason checked).
    assert "WARNING" not in out, out
    for case in BENCH_CASES:
        rows = re.findall(rf"^\|\s*{re.escape(case)}\s*\|\s*(\d+)\s*\|\s*(\d+(?:\.\d+)?)\s*\|"
                          rf"\s*(\d+(?:\.\d+)?)\s*\|\s*(\d+(?:\.\d+)?)\s*\|\s*(\d+\.\d+)\s*\|"
                          rf"\s*(\S.*?)\s*\|\s*$",
                          out, re.M)
        assert len(rows) == 1, f"{case}: {rows}\n{out}"
        frame_len, median, lo, hi, ratio, _ = rows[0]
        assert float(lo) <= float(median) <= float(hi)
        if case.startswith("empty"):
            assert float(ratio) == 1.0
