"""Tunnelled copies of real corpus captures (issue 17 item 5: the corpus has
no tunnel capture): every frame of an Ethernet capture whose flows' truth is
known, put inside a tunnel between two endpoints of the documentation ranges
(192.0.2.1 / 192.0.2.2, 2001:db8::1 / 2001:db8::2), so that what is read
inside can be compared with what is read from the original.

``wrap(src, dst, encap)`` writes ``dst`` (classic pcap, Ethernet): each IP
frame of ``src`` becomes outer Ethernet + outer IP + the tunnel + the
original's IP packet (or, for the tunnels that carry Ethernet, the whole
original frame), with the original's timestamp. A frame that is not IP is
copied as it is, so frame numbers stay the original's. The outer source is
the endpoint on the side of the inner packet's sender (the first packet's
sender is endpoint 1), as a tunnel between two sites carries them.

Headers are packed here with struct from the RFCs' layouts (scapy's Ether()
looks up routes and MACs per packet, far slower); ``tunnel`` builds one
packet, for tests that craft malformed or nested ones.
"""
from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import dpkt

from slowpath.pcap import ethernet_frames

ETH_IPV4, ETH_IPV6, ETH_TEB = 0x0800, 0x86DD, 0x6558
ETH_VLAN = {0x8100, 0x88A8, 0x9100, 0x9200}
OUTER4 = (ipaddress.ip_address("192.0.2.1").packed, ipaddress.ip_address("192.0.2.2").packed)
OUTER6 = (ipaddress.ip_address("2001:db8::1").packed, ipaddress.ip_address("2001:db8::2").packed)
MAC = bytes.fromhex("020000000aa2" "020000000aa1")          # destination, source
VXLAN_PORT, GENEVE_PORT = 4789, 6081
TUNNEL_SPORT = 49152                                        # outer UDP source port (endpoint 1; 2: +1)

# encapsulation -> (outer IP version, what it carries: "ip" or "ethernet",
# the header builder's keyword arguments). "ipip4" is Linux's ipip/sit pair
# (IP protocol 4 for an IPv4 packet, 41 for IPv6: IPIP and 6in4), "ipip6"
# the same over IPv6 (4in6, 6in6).
ENCAPS = {
    "ipip4": (4, "ip", {}),
    "ipip6": (6, "ip", {}),
    "gre": (4, "ip", {}),
    "gre-key": (4, "ip", {"key": 0x01020304, "seq": True, "csum": True}),
    "gre6-key": (6, "ip", {"key": 7}),
    "gre-teb": (4, "ethernet", {"key": 5001}),               # gretap / NVGRE
    "vxlan": (4, "ethernet", {"vni": 42}),
    "vxlan6": (6, "ethernet", {"vni": 43}),
    "geneve": (4, "ethernet", {"vni": 44, "options": True}),
    "geneve-ip": (6, "ip", {"vni": 45}),
}


def _csum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + payload


def ipv6(src: bytes, dst: bytes, nh: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, 64, src, dst) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    # Checksum 0: none (IPv4), and allowed for tunnels over IPv6 (RFC 6935).
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def gre(ptype: int, payload: bytes, *, key: int | None = None, seq: bool = False,
        csum: bool = False, flags: int = 0) -> bytes:
    """RFC 2784 / 2890; ``flags`` adds raw bits (for malformed ones)."""
    f = flags | (0x8000 if csum else 0) | (0x2000 if key is not None else 0) | (0x1000 if seq else 0)
    out = struct.pack("!HH", f, ptype)
    if csum:
        out += b"\x00\x00\x00\x00"          # checksum, reserved1 (not checked by a reader)
    if key is not None:
        out += struct.pack("!I", key)
    if seq:
        out += struct.pack("!I", 1)
    return out + payload


def vxlan(vni: int, frame: bytes, *, flags: int = 0x08) -> bytes:
    """RFC 7348 5: flags (I = 0x08), 24 reserved bits, VNI, 8 reserved bits."""
    return struct.pack("!B3xI", flags, vni << 8) + frame


def geneve(ptype: int, payload: bytes, *, vni: int = 0, options: bool = False,
           version: int = 0, opt_len: int | None = None) -> bytes:
    """RFC 8926 3.4; ``options``: two TLVs (class 0x0102 type 0x80 with 8
    bytes, class 0xffff type 1 with 4), skipped by the header's length."""
    opts = b""
    if options:
        opts = (struct.pack("!HBB", 0x0102, 0x80, 2) + b"abcdefgh"
                + struct.pack("!HBB", 0xFFFF, 0x01, 1) + b"wxyz")
    n = len(opts) // 4 if opt_len is None else opt_len
    return struct.pack("!BBHI", (version << 6) | n, 0, ptype, vni << 8) + opts + payload


def ethernet(et: int, payload: bytes) -> bytes:
    return MAC + struct.pack("!H", et) + payload


def tunnel(encap: str, inner: bytes, *, inner_is_ethernet: bool, reverse: bool = False) -> bytes:
    """One frame: ``inner`` (an IP packet, or an Ethernet frame when
    ``inner_is_ethernet``) inside ``encap`` (a key of ENCAPS). An IP-carrying
    encapsulation given an Ethernet frame carries its IP packet; an
    Ethernet-carrying one given an IP packet gets it framed."""
    version, carries, kw = ENCAPS[encap]
    a, b = OUTER4 if version == 4 else OUTER6
    if reverse:
        a, b = b, a
    if carries == "ip" and inner_is_ethernet:
        et, off = struct.unpack_from("!H", inner, 12)[0], 14
        while et in ETH_VLAN:
            et, off = struct.unpack_from("!H", inner, off + 2)[0], off + 4
        inner = inner[off:]
    elif carries == "ethernet" and not inner_is_ethernet:
        inner = ethernet(ETH_IPV4 if inner[0] >> 4 == 4 else ETH_IPV6, inner)
    ip_et = ETH_IPV4 if carries == "ethernet" or inner[0] >> 4 == 4 else ETH_IPV6
    sport = TUNNEL_SPORT + reverse
    if encap.startswith("ipip"):
        proto, body = (4 if inner[0] >> 4 == 4 else 41), inner
    elif encap.startswith("gre"):
        proto, body = 47, gre(ETH_TEB if carries == "ethernet" else ip_et, inner, **kw)
    elif encap.startswith("vxlan"):
        proto, body = 17, udp(sport, VXLAN_PORT, vxlan(kw["vni"], inner))
    else:
        proto, body = 17, udp(sport, GENEVE_PORT,
                              geneve(ETH_TEB if carries == "ethernet" else ip_et, inner, **kw))
    if version == 4:
        return ethernet(ETH_IPV4, ipv4(a, b, proto, body))
    return ethernet(ETH_IPV6, ipv6(a, b, proto, body))


def _inner_source(frame: bytes) -> bytes | None:
    """The IP source address of an Ethernet frame (after VLAN tags); None: not IP."""
    et, off = struct.unpack_from("!H", frame, 12)[0], 14
    while et in ETH_VLAN and len(frame) >= off + 4:
        et, off = struct.unpack_from("!H", frame, off + 2)[0], off + 4
    if et == ETH_IPV4 and len(frame) >= off + 20:
        return frame[off + 12:off + 16]
    if et == ETH_IPV6 and len(frame) >= off + 40:
        return frame[off + 8:off + 24]
    return None


def wrap(src: Path, dst: Path, encap: str, *, outer: tuple[str, ...] = ()) -> Path:
    """Write ``src``'s frames, each IP one inside ``encap``, to ``dst``.
    ``outer``: more encapsulations around that one, innermost first (a
    tunnel in a tunnel)."""
    first: bytes | None = None
    with open(dst, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=1, snaplen=262144)
        for _, ts, frame in ethernet_frames(src):
            assert frame is not None, f"{src}: a frame without an Ethernet form"
            s = _inner_source(frame)
            if s is not None:
                first = s if first is None else first
                frame = tunnel(encap, frame, inner_is_ethernet=True, reverse=s != first)
                for e in outer:
                    frame = tunnel(e, frame, inner_is_ethernet=True, reverse=s != first)
            w.writepkt(frame, ts=ts)
    return dst
