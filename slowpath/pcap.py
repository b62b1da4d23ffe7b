"""Read a capture file (pcap or pcapng) into transport flows for offline analysis.

Used by ``microseg replay`` and by the tests that run the real-traffic corpus.
:func:`read_capture` returns a :class:`Capture`: every TCP and UDP flow of the
file, keyed by the unordered 5-tuple of the innermost IP header, each with
the events the protocol parsers consume, in capture order:

* TCP: the :class:`~slowpath.reassembly.StreamReassembler`'s Data / Gap / Eof,
* UDP: one :class:`Datagram` per packet.

Decoding: dpkt reads the file records (format chosen by the magic number, not
the file name; classic pcap in micro- or nanoseconds; pcapng block by block
with each interface's own link type, timestamp resolution and offset, see
_PcapngReader); the layers below are decoded here with ``struct``, because
dpkt's packet classes neither reassemble IP fragments nor look through every
encapsulation we meet. Link types: Ethernet, BSD loopback / NULL and
OpenBSD LOOP, raw IP, Linux cooked (SLL, SLL2). Looked through: any number of
802.1Q / 802.1ad / 0x9100 VLAN tags (up to MAX_ENCAPSULATIONS), MPLS, PPPoE
session (PPP IPv4 / IPv6), and the tunnels the fast path opens: IP-in-IP,
6in4, 4in6 and 6in6 (IP protocols 4 and 41 under IPv4 or IPv6), GRE version
0 (RFC 2784 / 2890: checksum, key and sequence number skipped; IPv4, IPv6 or
an Ethernet frame, 0x6558, inside), VXLAN (UDP destination port 4789, RFC
7348: an Ethernet frame inside) and GENEVE (UDP destination port 6081, RFC
8926: options skipped by their length; Ethernet, IPv4 or IPv6 inside).
A frame may hold MAX_TUNNELS tunnels, one in another (and MAX_ENCAPSULATIONS
layers in all); a flow is the innermost IP header's. A malformed tunnel
header makes the frame undecodable (so UDP to port 4789 or 6081 that is not
VXLAN / GENEVE is no flow either), as the fast path, which opens the same
tunnels (bpf/lib/tunnel.h), drops it. A tunnelled Ethernet frame that is
not IP (an overlay's ARP) is not a flow packet. IPv4 and IPv6 fragments are
reassembled (bounded, below); IPv6 extension headers are walked.

Counting follows Wireshark, whose output is the corpus's truth: frames are
numbered from 1; a fragmented datagram belongs to the frame that completes
it (the other fragments are outside every flow, as in tshark with its default
IP reassembly); ICMP errors quoting a TCP/UDP header are not flow packets.

Orientation: the client is the sender of a SYN without ACK if one was seen;
else the receiver of a SYN-ACK (so a capture whose first packet is the
SYN-ACK still gets it right); else the sender of the flow's first packet.
Without a handshake that last rule is a guess: a capture that starts in the
middle of a connection with a server packet gets the roles reversed (the
corpus truth then falls back on DPI and port numbers, which a capture reader
does not do; see :attr:`Flow.orientation`).

Bad input: a file that is not a capture, or is truncated or corrupt, raises
:class:`PcapError` naming the file, the byte offset and the frame number.
A frame whose headers do not decode is counted (:attr:`Capture.undecodable`)
and skipped.
"""
from __future__ import annotations

import ipaddress
import mmap
import os
import socket
import struct
from collections import Counter
from socket import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, NamedTuple, Union

import dpkt

from datapath.source import header_defines
from protocols.api import Direction
from slowpath.reassembly import (
    ACK, SYN, Data, Eof, Gap, ReassemblyBudget, ReassemblyCounters,
    ReassemblyLimits, StreamReassembler,
)

# ----------------------------------------------------------------- limits
# Encapsulation layers (VLAN tags, MPLS labels, PPPoE, IP-in-IP, GRE, VXLAN,
# GENEVE; a tunnel's inner Ethernet tags count too) looked through per frame.
# Real traffic stacks at most three or four (QinQ, QinQinQ in the corpus,
# MPLS VPNs use two or three labels, an overlay's VXLAN over a provider's GRE
# is two tunnels); the bound keeps a frame made of nothing but tags or
# tunnels inside tunnels from costing more than a few steps.
MAX_ENCAPSULATIONS = 8

# IPv6 extension headers walked per packet. RFC 8200 4.1 expects each at most
# once (destination options twice), i.e. about 8; a longer chain is malformed
# or an evasion attempt (RFC 7112), and is counted as undecodable.
MAX_IPV6_EXT_HEADERS = 10

# Fragments one datagram may have. The largest IPv4 datagram (65535 bytes)
# split at the 576-byte MTU every host must accept (RFC 791) takes 119
# fragments; at IPv6's minimum MTU (1280, RFC 8200 5) 54. More means tiny
# fragments, an attack shape, and the datagram is dropped.
MAX_FRAGMENTS_PER_DATAGRAM = 128

# Datagrams being reassembled at once. A capture rarely has more than a few
# in flight; 1024 absorbs bursts while the byte cap below bounds memory.
MAX_PENDING_DATAGRAMS = 1024

# Fragment bytes held while waiting, all datagrams together: Linux's default
# net.ipv4.ipfrag_high_thresh (4 MiB). The oldest datagrams are dropped first.
MAX_PENDING_FRAGMENT_BYTES = 4 << 20

# A datagram whose fragments are still incomplete this long (capture time)
# after its first fragment is dropped: RFC 8200 4.5 gives IPv6 60 s (Linux's
# IPv4 ipfrag_time is 30 s; the longer one keeps both families' datagrams).
FRAGMENT_TIMEOUT_S = 60.0

# A classic pcap record longer than this is corrupt: libpcap's and Wireshark's
# largest snapshot length (MAXIMUM_SNAPLEN / WTAP_MAX_PACKET_SIZE_STANDARD).
MAX_CAPLEN = 262144

# VLAN tags the common-frame decoder (_plain_ethernet) looks through; more
# (QinQinQ and deeper) take the general path, which allows MAX_ENCAPSULATIONS.
MAX_FAST_VLAN_TAGS = 2

# The tunnels' numbers are the fast path's (bpf/lib/tunnel.h), read from
# where they are written, so both open the same set.
_MS = header_defines("MS_")

# Tunnels (IP-in-IP, GRE, VXLAN, GENEVE) one frame may nest: the fast path's
# MS_TUN_MAX_DEPTH (2: an overlay, VXLAN or GENEVE, carried over a
# provider's GRE or 6in4 link), past which it drops the frame as an evasion
# attempt; counting it undecodable here keeps `microseg replay` and the
# offline analysis of a capture in agreement with the gateway.
MAX_TUNNELS = _MS["TUN_MAX_DEPTH"]

# ------------------------------------------------------------- constants
ETH_HEADER_LEN = 14         # destination, source, EtherType: the least a frame must hold
LINKTYPE_NULL = 0           # BSD loopback: 4-byte address family, host byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101          # raw IPv4/IPv6 (also DLT_RAW 12 and 14 on some systems)
LINKTYPE_LOOP = 108         # OpenBSD loopback: address family in network order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_LINKTYPES = {12, 14, LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6}

# AF_INET is 2 everywhere; AF_INET6 is 10 (Linux), 24 (NetBSD, OpenBSD),
# 28 (FreeBSD), 30 (macOS), 23 (Windows / Npcap).
_AF_INET6 = {10, 23, 24, 28, 30}

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
# 802.1Q, 802.1ad (S-tag), and the pre-standard QinQ types 0x9100 / 0x9200.
ETH_VLAN = {0x8100, 0x88A8, 0x9100, 0x9200}
ETH_MPLS = {0x8847, 0x8848}
ETH_PPPOE_SESSION = 0x8864
PPP_IPV4, PPP_IPV6 = 0x0021, 0x0057
# Transparent Ethernet bridging: the protocol type of an Ethernet frame
# inside GRE (NVGRE, gretap) and GENEVE.
ETH_TEB = _MS["ETH_P_TEB"]

IPPROTO_GRE = 47
# GRE flags word (RFC 2784 2, RFC 2890 2): checksum, key and sequence number
# present; the version in the low bits; GRE_REJECT: the bits RFC 2784 2.3
# has a receiver discard the packet for (routing, strict source route, the
# top recursion bit); version 1 is PPTP's enhanced GRE (RFC 2637).
GRE_CSUM, GRE_KEY, GRE_SEQ = _MS["GRE_CSUM"], _MS["GRE_KEY"], _MS["GRE_SEQ"]
GRE_VERSION, GRE_REJECT, GRE_VERSION_PPTP = _MS["GRE_VERSION"], _MS["GRE_REJECT"], _MS["GRE_V1_PPTP"]
GRE_HEADER_LEN = 4          # flags and protocol type; each optional field adds 4
VXLAN_PORT = _MS["UDP_PORT_VXLAN"]     # IANA's (RFC 7348 5): the UDP destination port
VXLAN_HEADER_LEN = 8        # flags, reserved, VNI, reserved
VXLAN_FLAG_VNI = _MS["VXLAN_FLAG_I"]   # RFC 7348 5: set on every packet
GENEVE_PORT = _MS["UDP_PORT_GENEVE"]   # IANA's (RFC 8926 3.3)
GENEVE_HEADER_LEN = 8       # version / option length, flags, protocol type, VNI
# UDP destination ports whose payload is a tunnel (_plain_ethernet leaves
# these to the general decoder).
TUNNEL_UDP_PORTS = frozenset({VXLAN_PORT, GENEVE_PORT})

# IPv6 extension headers with the generic (next header, length in 8-octet
# units not counting the first) layout: hop-by-hop, routing, destination
# options, mobility, HIP, shim6 (RFC 8200 4, RFC 7045).
_IPV6_EXT_GENERIC = {0, 43, 60, 135, 139, 140}
_IPV6_FRAGMENT, _IPV6_AH, _IPV6_NO_NEXT = 44, 51, 59

_PCAP_MAGICS = {b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1",    # microseconds
                b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1",    # nanoseconds
                b"\xa1\xb2\xcd\x34", b"\x34\xcd\xb2\xa1"}    # Kuznetsov's modified pcap
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from
_udp_ports_len = struct.Struct("!HHH").unpack_from
# For _plain_ethernet: version/IHL, total length, flags + fragment offset,
# protocol, source, destination; version (first byte), payload length, next
# header, source, destination; ports, sequence number, data offset, flags.
_ipv4_fields = struct.Struct("!BxH2xHxB2x4s4s").unpack_from
_ipv6_fields = struct.Struct("!B3xHBx16s16s").unpack_from
_tcp_fields = struct.Struct("!HHI4xBB").unpack_from
# Ethernet + 20-byte IPv4 header + TCP up to its flags, as one unpack:
# EtherType, version/IHL, total length, fragment word, protocol, addresses,
# ports, sequence number, data offset, flags.
_ETH_IPV4_TCP = struct.Struct("!12xHBxH2xHxB2x4s4sHHI4xBB")
_ETH_IPV4_TCP_LEN = _ETH_IPV4_TCP.size
_eth_ipv4_tcp = _ETH_IPV4_TCP.unpack_from
_L4_AT = 14 + 20             # where TCP starts in such a frame


class PcapError(Exception):
    """A capture file that cannot be read; the message names file, offset and frame.

    Raised while frames are being read (a record cut short or corrupt after
    good ones), it carries ``offset``, the byte offset where reading stopped,
    and ``frame``, the number of the frame that could not be read: every
    frame before it was delivered, so a caller can finish what it has."""

    def __init__(self, message: str, *, offset: int | None = None, frame: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.frame = frame


@dataclass(frozen=True)
class Datagram:
    """One UDP packet's payload, ``direction`` relative to the flow's client."""
    kind: ClassVar[str] = "datagram"
    direction: Direction
    payload: bytes
    frame: int


FlowEvent = Union[Data, Gap, Eof, Datagram]


@dataclass
class Flow:
    """One transport flow of a capture (all packets of one unordered 5-tuple)."""
    proto: str                        # "tcp" or "udp"
    client: tuple[str, int]           # (ip, port), IPv6 in compressed form
    server: tuple[str, int]
    first_frame: int                  # 1-based, as Wireshark numbers frames
    last_frame: int
    packets: int
    # "tcp-syn", "tcp-synack" or "first-packet": how the client was chosen.
    orientation: str = "first-packet"
    # Parser input in capture order; event_frames[i] is the frame whose
    # packet produced events[i] (reassembly's final flush: last_frame).
    events: list[FlowEvent] = field(default_factory=list)
    event_frames: list[int] = field(default_factory=list)
    counters: ReassemblyCounters | None = None     # TCP only

    @property
    def key(self) -> str:
        """The corpus truth's key: ``"tcp 10.0.0.1:51000 -> 10.0.0.2:80"``, client first."""
        return f"{self.proto} {_endpoint(self.client)} -> {_endpoint(self.server)}"


@dataclass
class Capture:
    """What :func:`read_capture` found in one file."""
    path: str
    file_format: str                  # "pcap" or "pcapng"
    link_type: int
    frames: int = 0
    flows: list[Flow] = field(default_factory=list)      # ordered by first frame
    # Frames skipped as malformed, by reason ("ipv4 header truncated", ...).
    undecodable: Counter = field(default_factory=Counter)
    # Frames decoded but not flow packets, by reason ("arp", "icmp", "fragment", ...).
    not_flow: Counter = field(default_factory=Counter)
    # IP fragment reassembly outcomes ("reassembled", "dropped overlap", ...).
    fragments: Counter = field(default_factory=Counter)

    @property
    def frames_outside_flows(self) -> int:
        return self.frames - sum(f.packets for f in self.flows)


def _endpoint(ep: tuple[str, int]) -> str:
    ip, port = ep
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# ------------------------------------------------------------ decoding
class _Undecodable(Exception):
    """A frame's headers are malformed; the message is the counted reason."""


class _NotFlow(Exception):
    """A well-formed frame that carries no TCP/UDP packet; the message is the reason."""


class L4Packet(NamedTuple):
    """A decoded TCP or UDP packet (IP addresses as packed bytes)."""
    proto: int                # IPPROTO_TCP or IPPROTO_UDP
    src: bytes
    sport: int
    dst: bytes
    dport: int
    seq: int                  # TCP only
    flags: int                # TCP only
    payload: bytes


class _Fragments:
    """One datagram being reassembled."""
    __slots__ = ("parts", "total", "first_ts", "nbytes")

    def __init__(self, ts: float) -> None:
        self.parts: dict[int, bytes] = {}     # fragment offset -> data
        self.total: int | None = None         # known once the last fragment came
        self.first_ts = ts
        self.nbytes = 0


class _Defragmenter:
    """Bounded IPv4 / IPv6 fragment reassembly (limits at the top of the module).

    Overlapping fragments drop the whole datagram: RFC 5722 requires it for
    IPv6, and Linux does the same for IPv4 since 4.19 (where an identical
    duplicate is only ignored), so the target host would not have seen the
    datagram either.
    """

    def __init__(self, stats: Counter) -> None:
        self.pending: dict[tuple, _Fragments] = {}     # insertion order = age
        self.nbytes = 0
        self.stats = stats

    def _drop(self, key: tuple, why: str) -> None:
        d = self.pending.pop(key)
        self.nbytes -= d.nbytes
        self.stats[why] += 1

    def add(self, key: tuple, ts: float, offset: int, more: bool, data: bytes) -> bytes | None:
        """Add one fragment; return the reassembled payload when it completes."""
        # Expire by age (oldest first: the dict is in arrival order).
        while self.pending:
            old_key, old = next(iter(self.pending.items()))
            if ts - old.first_ts <= FRAGMENT_TIMEOUT_S:
                break
            self._drop(old_key, "dropped timeout")
        end = offset + len(data)
        if end > 65535:
            self.stats["dropped too long"] += 1
            if key in self.pending:
                self._drop(key, "dropped too long")
            return None
        d = self.pending.get(key)
        if d is None:
            if not more and offset == 0:
                return data            # an atomic fragment (RFC 6946): nothing to wait for
            while len(self.pending) >= MAX_PENDING_DATAGRAMS:
                self._drop(next(iter(self.pending)), "dropped pending cap")
            d = self.pending[key] = _Fragments(ts)
        if offset in d.parts and d.parts[offset] == data:
            self.stats["duplicate"] += 1
            return None
        for o, part in d.parts.items():
            if o < end and offset < o + len(part):
                self._drop(key, "dropped overlap")
                return None
        if not more:
            if d.total is not None and d.total != end:
                self._drop(key, "dropped inconsistent end")
                return None
            d.total = end
        elif d.total is not None and end > d.total:
            self._drop(key, "dropped inconsistent end")
            return None
        if len(d.parts) >= MAX_FRAGMENTS_PER_DATAGRAM:
            self._drop(key, "dropped too many fragments")
            return None
        d.parts[offset] = data
        d.nbytes += len(data)
        self.nbytes += len(data)
        while self.nbytes > MAX_PENDING_FRAGMENT_BYTES and self.pending:
            oldest = next(iter(self.pending))
            self._drop(oldest, "dropped byte cap")
            if oldest == key:
                return None
        # Parts never overlap, so when their sizes add up to the total they
        # cover it exactly.
        if d.total is not None and d.nbytes == d.total:
            del self.pending[key]
            self.nbytes -= d.nbytes
            self.stats["reassembled"] += 1
            return b"".join(d.parts[o] for o in sorted(d.parts))
        return None


class _Decoder:
    """Frame bytes -> L4Packet, with the fragment state of one capture."""

    def __init__(self, link_type: int, stats: Counter) -> None:
        self.link_type = link_type
        self.defrag = _Defragmenter(stats)
        self.tunnels = 0          # tunnels opened in the frame being decoded

    def _tunnel(self) -> None:
        """Count one more tunnel in the current frame (bounded: MAX_TUNNELS)."""
        self.tunnels += 1
        if self.tunnels > MAX_TUNNELS:
            raise _Undecodable("too many tunnels")

    def decode(self, buf: bytes, ts: float, lt: int | None = None) -> L4Packet:
        """Raise _NotFlow / _Undecodable when the frame carries no TCP/UDP packet.
        ``lt``: the frame's link type when it differs from the capture's (pcapng)."""
        lt = self.link_type if lt is None else lt
        self.tunnels = 0
        if lt == LINKTYPE_ETHERNET:
            p = _plain_ethernet(buf)
            if p is not None:
                return p
            if len(buf) < ETH_HEADER_LEN:
                raise _Undecodable("ethernet header truncated")
            return self._ethertype(buf, _u16(buf, 12)[0], ETH_HEADER_LEN, ts, 0)
        if lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if len(buf) < 4:
                raise _Undecodable("loopback header truncated")
            # "Host byte order" of the machine that captured, which need not
            # be ours or the file's: accept the family in either order.
            be, le = _u32(buf, 0)[0], struct.unpack_from("<I", buf, 0)[0]
            if 2 in (be, le):
                return self._ip(buf[4:], 4, ts, 0)
            if be in _AF_INET6 or le in _AF_INET6:
                return self._ip(buf[4:], 6, ts, 0)
            raise _NotFlow("loopback family not ip")
        if lt in _RAW_LINKTYPES:
            if not buf:
                raise _Undecodable("empty frame")
            return self._ip(buf, buf[0] >> 4, ts, 0)
        if lt == LINKTYPE_LINUX_SLL:
            if len(buf) < 16:
                raise _Undecodable("sll header truncated")
            return self._ethertype(buf, _u16(buf, 14)[0], 16, ts, 0)
        if lt == LINKTYPE_LINUX_SLL2:
            if len(buf) < 20:
                raise _Undecodable("sll2 header truncated")
            return self._ethertype(buf, _u16(buf, 0)[0], 20, ts, 0)
        raise _NotFlow(f"link type {lt} not supported")

    def _ethertype(self, buf: bytes, et: int, off: int, ts: float, depth: int = 0) -> L4Packet:
        """``et`` is the EtherType whose payload starts at ``off``; ``depth``
        the encapsulation layers already looked through (a tunnel's inner
        Ethernet frame starts deeper than 0)."""
        for depth in range(depth, MAX_ENCAPSULATIONS + 1):
            if et == ETH_IPV4:
                return self._ip(buf[off:], 4, ts, depth)
            if et == ETH_IPV6:
                return self._ip(buf[off:], 6, ts, depth)
            if et in ETH_VLAN:
                # tag control (2 bytes), then the next EtherType
                if len(buf) < off + 4:
                    raise _Undecodable("vlan tag truncated")
                et = _u16(buf, off + 2)[0]
                off += 4
            elif et == ETH_PPPOE_SESSION:
                # version/type, code, session id, length (RFC 2516 4), then PPP protocol
                if len(buf) < off + 8:
                    raise _Undecodable("pppoe header truncated")
                length = _u16(buf, off + 4)[0]
                ppp = _u16(buf, off + 6)[0]
                body = buf[off + 8:off + 6 + length] if length >= 2 else b""
                if ppp == PPP_IPV4:
                    return self._ip(body, 4, ts, depth + 1)
                if ppp == PPP_IPV6:
                    return self._ip(body, 6, ts, depth + 1)
                raise _NotFlow("pppoe not ip")
            elif et in ETH_MPLS:
                # label stack entries until bottom of stack; no EtherType
                # follows, so the IP version nibble says what is inside
                for _ in range(MAX_ENCAPSULATIONS):
                    if len(buf) < off + 4:
                        raise _Undecodable("mpls label truncated")
                    bottom = buf[off + 2] & 1
                    off += 4
                    if bottom:
                        break
                else:
                    raise _Undecodable("mpls label stack too deep")
                if len(buf) <= off:
                    raise _Undecodable("mpls payload empty")
                return self._ip(buf[off:], buf[off] >> 4, ts, depth + 1)
            elif et == 0x0806:
                raise _NotFlow("arp")
            else:
                raise _NotFlow(f"ethertype 0x{et:04x}")
        raise _Undecodable("too many encapsulations")

    def _ip(self, pkt: bytes, version: int, ts: float, depth: int) -> L4Packet:
        if depth > MAX_ENCAPSULATIONS:
            raise _Undecodable("too many encapsulations")
        if version == 4:
            return self._ipv4(pkt, ts, depth)
        if version == 6:
            return self._ipv6(pkt, ts, depth)
        raise _Undecodable(f"ip version {version}")

    def _ipv4(self, pkt: bytes, ts: float, depth: int) -> L4Packet:
        if len(pkt) < 20 or pkt[0] >> 4 != 4:
            raise _Undecodable("ipv4 header truncated")
        ihl = (pkt[0] & 0x0F) * 4
        total = _u16(pkt, 2)[0]
        if total == 0:
            # Captured on the sending host before segmentation offload (TSO)
            # filled it in; Wireshark takes the captured length the same way.
            total = len(pkt)
        if ihl < 20 or total < ihl or len(pkt) < ihl:
            raise _Undecodable("ipv4 header bad length")
        # Trim link-layer padding; a snaplen-cut packet keeps what was captured.
        payload = pkt[ihl:total]
        proto = pkt[9]
        src, dst = pkt[12:16], pkt[16:20]
        frag = _u16(pkt, 6)[0]
        more, offset = bool(frag & 0x2000), (frag & 0x1FFF) * 8
        if more or offset:
            ident = _u16(pkt, 4)[0]
            whole = self.defrag.add((4, src, dst, proto, ident), ts, offset, more, payload)
            if whole is None:
                raise _NotFlow("fragment")
            payload = whole
        return self._transport(proto, src, dst, payload, ts, depth)

    def _ipv6(self, pkt: bytes, ts: float, depth: int) -> L4Packet:
        if len(pkt) < 40 or pkt[0] >> 4 != 6:
            raise _Undecodable("ipv6 header truncated")
        plen = _u16(pkt, 4)[0]
        nh = pkt[6]
        src, dst = pkt[8:24], pkt[24:40]
        # plen 0 is a jumbogram (RFC 2675): the payload is the rest of the frame
        payload = pkt[40:40 + plen] if plen else pkt[40:]
        for _ in range(MAX_IPV6_EXT_HEADERS):
            if nh in _IPV6_EXT_GENERIC:
                if len(payload) < 8:
                    raise _Undecodable("ipv6 extension header truncated")
                size = (payload[1] + 1) * 8
            elif nh == _IPV6_AH:
                if len(payload) < 8:
                    raise _Undecodable("ipv6 ah truncated")
                size = (payload[1] + 2) * 4          # AH counts 4-octet units (RFC 4302 2.2)
            elif nh == _IPV6_FRAGMENT:
                if len(payload) < 8:
                    raise _Undecodable("ipv6 fragment header truncated")
                offmf = _u16(payload, 2)[0]
                ident = _u32(payload, 4)[0]
                whole = self.defrag.add((6, src, dst, ident), ts, offmf & 0xFFF8,
                                        bool(offmf & 1), payload[8:])
                if whole is None:
                    raise _NotFlow("fragment")
                # The reassembled fragmentable part starts with the header
                # the fragment header named (RFC 8200 4.5).
                nh, payload = payload[0], whole
                continue
            elif nh == _IPV6_NO_NEXT:
                raise _NotFlow("ipv6 no next header")
            else:
                return self._transport(nh, src, dst, payload, ts, depth)
            if len(payload) < size:
                raise _Undecodable("ipv6 extension header truncated")
            nh, payload = payload[0], payload[size:]
        raise _Undecodable("ipv6 extension header chain too long")

    def _transport(self, proto: int, src: bytes, dst: bytes, seg: bytes,
                   ts: float, depth: int) -> L4Packet:
        if proto == IPPROTO_TCP:
            if len(seg) < 20:
                raise _Undecodable("tcp header truncated")
            doff = (seg[12] >> 4) * 4
            if doff < 20 or doff > len(seg):
                raise _Undecodable("tcp header bad data offset")
            sport, dport, seq = struct.unpack_from("!HHI", seg, 0)
            return L4Packet(IPPROTO_TCP, src, sport, dst, dport, seq, seg[13], seg[doff:])
        if proto == IPPROTO_UDP:
            if len(seg) < 8:
                raise _Undecodable("udp header truncated")
            sport, dport, ulen = struct.unpack_from("!HHH", seg, 0)
            # ulen trims padding; a bad or zero (jumbo) length keeps what we have
            payload = seg[8:ulen] if 8 <= ulen <= len(seg) else seg[8:]
            if dport in TUNNEL_UDP_PORTS:
                self._tunnel()
                if dport == VXLAN_PORT:
                    return self._vxlan(payload, ts, depth + 1)
                return self._geneve(payload, ts, depth + 1)
            return L4Packet(IPPROTO_UDP, src, sport, dst, dport, 0, 0, payload)
        if proto == IPPROTO_IPIP:
            self._tunnel()
            return self._ip(seg, 4, ts, depth + 1)
        if proto == IPPROTO_IPV6:
            self._tunnel()
            return self._ip(seg, 6, ts, depth + 1)
        if proto == IPPROTO_GRE:
            return self._gre(seg, ts, depth + 1)
        if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            raise _NotFlow("icmp")
        raise _NotFlow(f"ip protocol {proto}")

    def _inner_ethernet(self, frame: bytes, ts: float, depth: int, tunnel: str) -> L4Packet:
        """An Ethernet frame carried by a tunnel (GRE 0x6558, VXLAN, GENEVE)."""
        if len(frame) < ETH_HEADER_LEN:
            raise _Undecodable(f"{tunnel} inner ethernet header truncated")
        return self._ethertype(frame, _u16(frame, 12)[0], ETH_HEADER_LEN, ts, depth)

    def _gre(self, seg: bytes, ts: float, depth: int) -> L4Packet:
        """GRE (RFC 2784, with RFC 2890's key and sequence number)."""
        if len(seg) < GRE_HEADER_LEN:
            raise _Undecodable("gre header truncated")
        flags, ptype = struct.unpack_from("!HH", seg, 0)
        if flags & GRE_VERSION == GRE_VERSION_PPTP:
            # PPTP's enhanced GRE (RFC 2637), PPP inside: a well-formed packet
            # of a tunnel we do not open (nor does the fast path).
            raise _NotFlow("gre version 1")
        if flags & GRE_VERSION:
            raise _Undecodable(f"gre version {flags & GRE_VERSION}")
        if flags & GRE_REJECT:
            raise _Undecodable("gre header reserved flags set")
        self._tunnel()
        off = GRE_HEADER_LEN + 4 * ((flags & GRE_CSUM != 0) + (flags & GRE_KEY != 0)
                                    + (flags & GRE_SEQ != 0))
        if len(seg) < off:
            raise _Undecodable("gre header truncated")
        if ptype == ETH_IPV4:
            return self._ip(seg[off:], 4, ts, depth)
        if ptype == ETH_IPV6:
            return self._ip(seg[off:], 6, ts, depth)
        if ptype == ETH_TEB:
            return self._inner_ethernet(seg[off:], ts, depth, "gre")
        raise _NotFlow(f"gre protocol 0x{ptype:04x}")

    def _vxlan(self, payload: bytes, ts: float, depth: int) -> L4Packet:
        """VXLAN (RFC 7348): 8 bytes, then an Ethernet frame."""
        if len(payload) < VXLAN_HEADER_LEN:
            raise _Undecodable("vxlan header truncated")
        if not payload[0] & VXLAN_FLAG_VNI:
            raise _Undecodable("vxlan header without the vni flag")
        return self._inner_ethernet(payload[VXLAN_HEADER_LEN:], ts, depth, "vxlan")

    def _geneve(self, payload: bytes, ts: float, depth: int) -> L4Packet:
        """GENEVE (RFC 8926): 8 bytes, options of the length the header
        gives (4-byte units), then what the protocol type names."""
        if len(payload) < GENEVE_HEADER_LEN:
            raise _Undecodable("geneve header truncated")
        if payload[0] >> 6:
            # RFC 8926 3.4: a packet of an unknown version MUST be dropped.
            raise _Undecodable(f"geneve version {payload[0] >> 6}")
        off = GENEVE_HEADER_LEN + (payload[0] & 0x3F) * 4
        if len(payload) < off:
            raise _Undecodable("geneve options truncated")
        ptype = _u16(payload, 2)[0]
        if ptype == ETH_TEB:
            return self._inner_ethernet(payload[off:], ts, depth, "geneve")
        if ptype == ETH_IPV4:
            return self._ip(payload[off:], 4, ts, depth)
        if ptype == ETH_IPV6:
            return self._ip(payload[off:], 6, ts, depth)
        raise _NotFlow(f"geneve protocol 0x{ptype:04x}")


# What a GRE or GENEVE protocol type carries, for encapsulation(): 0 an
# Ethernet frame, 4 or 6 an IP packet of that version; anything else ends
# the walk (the frame is left as it is).
_TUNNEL_PAYLOAD = {ETH_TEB: 0, ETH_IPV4: 4, ETH_IPV6: 6}


def encapsulation(frame: bytes) -> list[tuple[str, int]] | None:
    """Where the headers of an Ethernet frame that rewrite touches start, for
    code that rebuilds a frame (appliance/replay.py cuts a tunnelled TCP
    super-packet and fixes the lengths and checksums around it): (kind,
    offset) from the outermost IP header in: "ipv4", "ipv6", "gre", or "udp"
    (a VXLAN or GENEVE tunnel's UDP header). The last entry is the innermost
    IP header. The same tunnels, checks and bounds as _Decoder (VLAN tags,
    IPIP / 6in4 / 4in6 / 6in6, GRE version 0, VXLAN, GENEVE; at most
    MAX_TUNNELS), offsets instead of slices. An IP fragment ends the walk
    (what it carries is not whole); None when the frame holds no IP header,
    a header is truncated or malformed, or the frame is not Ethernet-shaped
    as _Decoder's Ethernet path takes it (PPPoE and MPLS are not walked)."""
    n = len(frame)
    if n < ETH_HEADER_LEN:
        return None
    layers: list[tuple[str, int]] = []
    et, off, tunnels = _u16(frame, 12)[0], ETH_HEADER_LEN, 0
    while True:                                  # an Ethernet payload of type et at off
        for _ in range(MAX_ENCAPSULATIONS):
            if et not in ETH_VLAN:
                break
            if n < off + 4:
                return None
            et, off = _u16(frame, off + 2)[0], off + 4
        if et == ETH_IPV4:
            version = 4
        elif et == ETH_IPV6:
            version = 6
        else:
            return None
        while True:                              # an IP header of ``version`` at off
            if version == 4:
                if n < off + 20 or frame[off] >> 4 != 4 or (frame[off] & 0x0F) < 5:
                    return None
                layers.append(("ipv4", off))
                if _u16(frame, off + 6)[0] & 0x3FFF:
                    return layers                # a fragment
                proto, nxt = frame[off + 9], off + (frame[off] & 0x0F) * 4
            else:
                if n < off + 40 or frame[off] >> 4 != 6:
                    return None
                layers.append(("ipv6", off))
                proto, nxt = frame[off + 6], off + 40
                for _ in range(MAX_IPV6_EXT_HEADERS):
                    if proto not in _IPV6_EXT_GENERIC and proto != _IPV6_AH:
                        break
                    if n < nxt + 8:
                        return None
                    size = (frame[nxt + 1] + 1) * 8 if proto != _IPV6_AH else (frame[nxt + 1] + 2) * 4
                    proto, nxt = frame[nxt], nxt + size
                else:
                    return None
            if proto in (IPPROTO_IPIP, IPPROTO_IPV6):
                version = 4 if proto == IPPROTO_IPIP else 6
            elif proto == IPPROTO_GRE:
                if n < nxt + GRE_HEADER_LEN:
                    return None
                flags, ptype = struct.unpack_from("!HH", frame, nxt)
                if flags & (GRE_VERSION | GRE_REJECT):
                    return None
                layers.append(("gre", nxt))
                nxt += GRE_HEADER_LEN + 4 * ((flags & GRE_CSUM != 0) + (flags & GRE_KEY != 0)
                                             + (flags & GRE_SEQ != 0))
                version = _TUNNEL_PAYLOAD.get(ptype)
                if version is None:
                    return None
            elif proto == IPPROTO_UDP and n >= nxt + 8 and _u16(frame, nxt + 2)[0] in TUNNEL_UDP_PORTS:
                layers.append(("udp", nxt))
                head = nxt + 8
                if _u16(frame, nxt + 2)[0] == VXLAN_PORT:
                    if n < head + VXLAN_HEADER_LEN or not frame[head] & VXLAN_FLAG_VNI:
                        return None
                    nxt, version = head + VXLAN_HEADER_LEN, 0
                else:
                    if n < head + GENEVE_HEADER_LEN or frame[head] >> 6:
                        return None
                    ptype = _u16(frame, head + 2)[0]
                    nxt = head + GENEVE_HEADER_LEN + (frame[head] & 0x3F) * 4
                    version = _TUNNEL_PAYLOAD.get(ptype)
                    if version is None:
                        return None
            else:
                return layers                    # the innermost IP header's payload
            tunnels += 1
            if tunnels > MAX_TUNNELS:
                return None
            off = nxt
            if version == 0:                     # an Ethernet frame inside
                if n < off + ETH_HEADER_LEN:
                    return None
                et, off = _u16(frame, off + 12)[0], off + ETH_HEADER_LEN
                break


def _plain_ethernet(buf: bytes) -> tuple | None:
    """The common frame, decoded with offsets, a few struct unpacks and one
    copy of the payload: Ethernet, at most MAX_FAST_VLAN_TAGS VLAN tags, an
    unfragmented IPv4 or an IPv6 packet without extension headers, TCP or
    UDP. Returns a plain tuple in L4Packet's field order (building the
    NamedTuple costs a Python-level call per frame). None for anything else,
    and for anything malformed, and for a tunnel (IP-in-IP, GRE: not TCP or
    UDP; VXLAN, GENEVE: UDP to TUNNEL_UDP_PORTS): _Decoder's general path
    then decodes it (or names what is wrong), so both give the same answer."""
    n = len(buf)
    if n >= _ETH_IPV4_TCP_LEN:
        # Most frames of all: untagged IPv4 without options carrying TCP,
        # every header field in one unpack. Anything else, or any check
        # failing, goes on below.
        (et, v, total, frag, proto, src, dst, sport, dport, seq, doff,
         flags) = _eth_ipv4_tcp(buf, 0)
        if et == ETH_IPV4 and v == 0x45 and proto == IPPROTO_TCP and not frag & 0x3FFF:
            end = ETH_HEADER_LEN + (total or n - ETH_HEADER_LEN)     # 0: TSO, as in _ipv4
            if end > n:
                end = n
            doff = (doff >> 4) * 4
            if total == 0 or total >= 20:
                if end - _L4_AT >= 20 and 20 <= doff <= end - _L4_AT:
                    return (IPPROTO_TCP, src, sport, dst, dport, seq, flags, buf[_L4_AT + doff:end])
    if n < ETH_HEADER_LEN:
        return None
    et = _u16(buf, 12)[0]
    off = ETH_HEADER_LEN
    if et in ETH_VLAN:
        for _ in range(MAX_FAST_VLAN_TAGS):
            if n < off + 4:
                return None
            et = _u16(buf, off + 2)[0]
            off += 4
            if et not in ETH_VLAN:
                break
        else:
            return None
    if et == ETH_IPV4:
        if n - off < 20:
            return None
        v, total, frag, proto, src, dst = _ipv4_fields(buf, off)
        ihl = (v & 0x0F) * 4
        if total == 0:
            total = n - off                       # TSO, as in _ipv4
        if v >> 4 != 4 or ihl < 20 or total < ihl or n - off < ihl or frag & 0x3FFF:
            return None                           # odd, or a fragment (MF or an offset)
        l4 = off + ihl
        end = off + total
    elif et == ETH_IPV6:
        if n - off < 40:
            return None
        v, plen, proto, src, dst = _ipv6_fields(buf, off)
        if v >> 4 != 6:
            return None
        l4 = off + 40
        end = l4 + plen if plen else n
    else:
        return None
    if end > n:
        end = n                                   # snaplen-cut: keep what was captured
    if proto == IPPROTO_TCP:
        if end - l4 < 20:
            return None
        sport, dport, seq, doff, flags = _tcp_fields(buf, l4)
        doff = (doff >> 4) * 4
        if doff < 20 or doff > end - l4:
            return None
        return (IPPROTO_TCP, src, sport, dst, dport, seq, flags, buf[l4 + doff:end])
    if proto == IPPROTO_UDP:
        if end - l4 < 8:
            return None
        sport, dport, ulen = _udp_ports_len(buf, l4)
        if dport in TUNNEL_UDP_PORTS:
            return None
        stop = l4 + ulen if 8 <= ulen <= end - l4 else end
        return (IPPROTO_UDP, src, sport, dst, dport, 0, 0, buf[l4 + 8:stop])
    return None


# ------------------------------------------------------------ file records
class _BadBlockLength(Exception):
    """A pcapng block length field too small to be a block; arg: its byte offset."""


class _TrackedFile:
    """The file object dpkt reads through: knows the byte offset of every read.

    dpkt reports a short record at the end of a file by returning fewer bytes
    (classic pcap) or by failing to unpack a block (pcapng); remembering the
    first short read lets us say exactly where the file ends too soon.
    """

    def __init__(self, f, size: int) -> None:
        self._f = f
        self.name = f.name
        self.size = size
        self.offset = 0          # bytes consumed so far
        self.last_read_at = 0    # where the latest read started
        self.short: tuple[int, int, int] | None = None   # (offset, wanted, got)

    def read(self, n: int = -1) -> bytes:
        self.last_read_at = self.offset
        if n is None or n < 0:
            # dpkt reads "block length - 8" after a block's first 8 bytes:
            # negative means a length field smaller than a block header.
            raise _BadBlockLength(self.offset - 4)
        # Never ask the OS for more than the file holds: a corrupt 4 GiB
        # length must not become a 4 GiB allocation.
        data = self._f.read(min(n, self.size - self.offset))
        self.offset += len(data)
        # An empty read at the end is how every reader finds the end of the
        # file; whether a short read is an error depends on what was being
        # read, which the caller decides (see _records).
        if len(data) < n and self.short is None:
            self.short = (self.last_read_at, n, len(data))
        return data


class _PcapngReader:
    """pcapng blocks, decoded with dpkt's block classes, with the state a
    pcapng file keeps per interface: dpkt.pcapng.Reader reads only the
    first Interface Description Block and applies its ``if_tsresol`` /
    ``if_tsoffset`` and link type to every packet, so the packets of a
    second interface with nanosecond timestamps come out tens of thousands
    of years late (corpus ndpi-kafka.pcapng). Here each Enhanced / Packet
    Block uses its own interface's resolution, offset and link type
    (pcapng spec, draft-ietf-opsawg-pcapng, 4.2 and 4.3), a Section Header
    Block starts a new interface list (4.1), and Simple Packet Blocks (4.4,
    interface 0, no timestamp: they get the previous packet's) are frames
    too, as Wireshark counts them. Iterating yields (timestamp, bytes, link
    type); a bad block raises what _records turns into one line."""

    def __init__(self, f) -> None:
        self._f = f
        self._le = True
        self.interfaces: list[tuple[int, int, float, int]] = []   # (link type, snaplen, divisor, offset)
        self._last_ts = 0.0
        hdr = f.read(8)
        if len(hdr) < 8:
            raise ValueError("invalid pcapng header")
        self._section(hdr)
        # The first interface's link type is the capture's (tshark reports
        # that one too); read blocks until it is known.
        self._pending: list[tuple[float, bytes, int]] = []
        while not self.interfaces:
            pkt = self._next_block()
            if pkt is False:
                raise ValueError("no Interface Description Block")
            if pkt is not None:
                raise ValueError("packet block before any Interface Description Block")

    def datalink(self) -> int:
        return self.interfaces[0][0]

    def _body(self, blen: int) -> bytes:
        if blen < 12:
            raise _BadBlockLength(self._f.offset - 4)
        body = self._f.read(blen - 8)
        if len(body) < blen - 8:
            raise dpkt.NeedData(f"block of {blen} bytes")
        return body

    def _section(self, hdr: bytes) -> None:
        """A Section Header Block whose first 8 bytes (type, length) are ``hdr``."""
        bom = self._f.read(4)
        if bom == b"\x4d\x3c\x2b\x1a":
            self._le = True
        elif bom == b"\x1a\x2b\x3c\x4d":
            self._le = False
        else:
            raise ValueError(f"unknown byte-order magic {bom.hex()}")
        blen = struct.unpack_from("<I" if self._le else ">I", hdr, 4)[0]
        if blen < 28:
            raise _BadBlockLength(self._f.offset - 8)
        rest = self._f.read(blen - 12)
        if len(rest) < blen - 12:
            raise dpkt.NeedData(f"section header of {blen} bytes")
        cls = dpkt.pcapng.SectionHeaderBlockLE if self._le else dpkt.pcapng.SectionHeaderBlock
        shb = cls(hdr + bom + rest)
        if shb.v_major != dpkt.pcapng.PCAPNG_VERSION_MAJOR:
            raise ValueError(f"pcapng version {shb.v_major}.{shb.v_minor} not supported")
        self.interfaces = []

    def _interface(self, buf: bytes) -> None:
        idb = (dpkt.pcapng.InterfaceDescriptionBlockLE if self._le
               else dpkt.pcapng.InterfaceDescriptionBlock)(buf)
        divisor, offset = 1e6, 0                       # the spec's defaults: microseconds, no offset
        for opt in idb.opts:
            if opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL and len(opt.data) >= 1:
                # high bit clear: 10^-n seconds; set: 2^-n seconds
                v = opt.data[0]
                divisor = float((2 if v & 0x80 else 10) ** (v & 0x7F))
            elif opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSOFFSET and len(opt.data) >= 8:
                offset = struct.unpack_from("<q" if self._le else ">q", opt.data)[0]
        self.interfaces.append((idb.linktype, idb.snaplen, divisor, offset))

    def _iface(self, iface_id: int) -> tuple[int, int, float, int]:
        if iface_id >= len(self.interfaces):
            raise ValueError(f"packet of interface {iface_id}, but the section describes "
                             f"{len(self.interfaces)}")
        return self.interfaces[iface_id]

    def _next_block(self):
        """The next packet as (ts, bytes, link type); None for another
        block; False at the end of the file."""
        hdr = self._f.read(8)
        if len(hdr) < 8:
            return False
        btype = struct.unpack_from("<I" if self._le else ">I", hdr)[0]
        if btype == dpkt.pcapng.PCAPNG_BT_SHB:
            self._section(hdr)
            return None
        blen = struct.unpack_from("<I" if self._le else ">I", hdr, 4)[0]
        buf = hdr + self._body(blen)
        if btype == dpkt.pcapng.PCAPNG_BT_IDB:
            self._interface(buf)
            return None
        if btype in (dpkt.pcapng.PCAPNG_BT_EPB, dpkt.pcapng.PCAPNG_BT_PB):
            if btype == dpkt.pcapng.PCAPNG_BT_EPB:
                cls = dpkt.pcapng.EnhancedPacketBlockLE if self._le else dpkt.pcapng.EnhancedPacketBlock
            else:
                cls = dpkt.pcapng.PacketBlockLE if self._le else dpkt.pcapng.PacketBlock
            blk = cls(buf)
            lt, _, divisor, offset = self._iface(blk.iface_id)
            self._last_ts = offset + ((blk.ts_high << 32) | blk.ts_low) / divisor
            return self._last_ts, blk.pkt_data, lt
        if btype == dpkt.pcapng.PCAPNG_BT_SPB:
            lt, snaplen, _, _ = self._iface(0)
            if len(buf) < 16:
                raise ValueError("simple packet block too short")
            wire = struct.unpack_from("<I" if self._le else ">I", buf, 8)[0]
            caplen = min(wire, snaplen) if snaplen else wire
            return self._last_ts, buf[12:12 + min(caplen, len(buf) - 16)], lt
        return None                                    # name resolution, statistics, ...: not frames

    def __iter__(self) -> Iterator[tuple[float, bytes, int]]:
        while True:
            pkt = self._next_block()
            if pkt is False:
                return
            if pkt is not None:
                yield pkt


def _why(e: Exception) -> str:
    # dpkt's NeedData / UnpackError often carry no text
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


# Classic pcap with 16-byte record headers (not Kuznetsov's 24-byte ones):
# magic -> (byte order, timestamp fraction divisor).
_PCAP_PLAIN = {b"\xa1\xb2\xc3\xd4": (">", 1e6), b"\xd4\xc3\xb2\xa1": ("<", 1e6),
               b"\xa1\xb2\x3c\x4d": (">", 1e9), b"\x4d\x3c\xb2\xa1": ("<", 1e9)}
_PCAP_RECORD_HEADER = 16


def _plain_pcap(path: str, f, size: int, magic: bytes, ethernet: bool = False):
    """Classic pcap read straight from a memory map: one header unpack and
    one slice per frame (dpkt's reader builds a header object and makes two
    reads per record). The same frames and timestamps, and the same
    one-line errors, as the dpkt path in _records; ``ethernet`` as there.
    A capture of Ethernet frames (most) has its (frame number, timestamp,
    bytes) yielded here, not re-yielded by a second generator: one
    generator step a frame less (replay reads ~90,000 frames a capture)."""
    order, divisor = _PCAP_PLAIN[magic]
    try:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        f.close()
        raise PcapError(f"{path}: cannot map: {e}") from None
    link_type = struct.unpack_from(order + "I", mm, 20)[0]
    record = struct.Struct(order + "IIII").unpack_from
    bare = ethernet and link_type == LINKTYPE_ETHERNET

    def frames() -> Iterator[tuple[int, float, bytes, int]]:
        frame, off = 0, 24
        try:
            while off < size:
                if size - off < _PCAP_RECORD_HEADER:
                    raise PcapError(
                        f"{path}: truncated at byte offset {off}: frame {frame + 1}'s "
                        f"block needs {_PCAP_RECORD_HEADER} bytes, the file has {size - off} more",
                        offset=off, frame=frame + 1)
                sec, frac, caplen, _ = record(mm, off)
                frame += 1
                start, off = off, off + _PCAP_RECORD_HEADER
                if caplen > size - off:
                    raise PcapError(
                        f"{path}: truncated at byte offset {off}: frame {frame} needs "
                        f"{caplen} bytes, the file has {size - off} more", offset=off, frame=frame)
                if caplen > MAX_CAPLEN:
                    raise PcapError(
                        f"{path}: corrupt record header at byte offset {start} (frame {frame}): "
                        f"captured length {caplen} exceeds {MAX_CAPLEN}", offset=start, frame=frame)
                buf = mm[off:off + caplen]
                off += caplen
                if bare:
                    yield frame, sec + frac / divisor, buf
                else:
                    yield frame, sec + frac / divisor, buf, link_type
        finally:
            mm.close()
            f.close()

    if ethernet and not bare:
        return "pcap", link_type, _as_ethernet(frames())
    return "pcap", link_type, frames()


def _records(path: str, *, ethernet: bool = False) -> tuple[str, int, Iterator[tuple]]:
    """(format, link type of the first interface, iterator of (frame number,
    timestamp, frame bytes, the frame's link type)): a pcapng file's
    interfaces may differ in link type. ``ethernet``: the iterator yields
    ethernet_frames()' (frame number, timestamp, Ethernet bytes or None)."""
    try:
        f = open(path, "rb")
        size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise PcapError(f"{path}: cannot open: {e.strerror or e}") from None
    magic = f.read(4)
    f.seek(0)
    if magic in _PCAP_PLAIN and size >= 24:
        return _plain_pcap(path, f, size, magic, ethernet)
    if magic in _PCAP_MAGICS:
        fmt, reader_cls, header = "pcap", dpkt.pcap.Reader, 24
    elif magic == _PCAPNG_MAGIC:
        fmt, reader_cls, header = "pcapng", _PcapngReader, 28
    else:
        f.close()
        if len(magic) < 4:
            raise PcapError(f"{path}: {size} bytes, too short for a capture file header")
        raise PcapError(f"{path}: not a pcap or pcapng file (magic {magic.hex()} at byte offset 0)")
    if size < header:
        f.close()
        raise PcapError(f"{path}: truncated {fmt} file header: {size} bytes, "
                        f"the header needs {header} (byte offset 0)")
    tf = _TrackedFile(f, size)
    try:
        reader = reader_cls(tf)
    except _BadBlockLength as e:
        f.close()
        raise PcapError(f"{path}: corrupt {fmt} block length at byte offset {e.args[0]}") from None
    except (ValueError, dpkt.UnpackError, struct.error) as e:
        f.close()
        if tf.short:
            at, want, got = tf.short
            raise PcapError(f"{path}: truncated {fmt} header at byte offset {at}: needs "
                            f"{want} bytes, the file has {got} more") from None
        raise PcapError(f"{path}: bad {fmt} header near byte offset {tf.last_read_at}: "
                        f"{_why(e)}") from None
    link_type = reader.datalink()
    if fmt == "pcap":
        # Classic pcap has one link type; dpkt gives nanosecond-magic files
        # Decimal timestamps (exact, but they do not mix with floats).
        records = ((float(ts), buf, link_type) for ts, buf in reader)
    else:
        records = iter(reader)

    def frames() -> Iterator[tuple[int, float, bytes, int]]:
        frame = 0
        it = records
        try:
            while True:
                start = tf.offset
                try:
                    ts, buf, lt = next(it)
                except _BadBlockLength as e:
                    raise PcapError(f"{path}: corrupt {fmt} block length at byte offset "
                                    f"{e.args[0]} (frame {frame + 1})", offset=e.args[0], frame=frame + 1) from None
                except StopIteration:
                    if tf.short and tf.short[2]:
                        at, want, got = tf.short
                        raise PcapError(
                            f"{path}: truncated at byte offset {at}: frame {frame + 1} "
                            f"(or its block header) needs {want} bytes, the file has {got} more",
                            offset=at, frame=frame + 1)
                    return
                except (dpkt.UnpackError, struct.error, ValueError, IndexError) as e:
                    if tf.short:
                        at, want, got = tf.short
                        raise PcapError(
                            f"{path}: truncated at byte offset {at}: frame {frame + 1}'s "
                            f"block needs {want} bytes, the file has {got} more", offset=at, frame=frame + 1) from None
                    raise PcapError(
                        f"{path}: corrupt record at byte offset {start} "
                        f"(frame {frame + 1}): {_why(e)}", offset=start, frame=frame + 1) from None
                frame += 1
                if tf.short:
                    at, want, got = tf.short
                    raise PcapError(
                        f"{path}: truncated at byte offset {at}: frame {frame} needs "
                        f"{want} bytes, the file has {got} more", offset=at, frame=frame)
                if fmt == "pcap" and len(buf) > MAX_CAPLEN:
                    raise PcapError(
                        f"{path}: corrupt record header at byte offset {start} (frame {frame}): "
                        f"captured length {len(buf)} exceeds {MAX_CAPLEN}", offset=start, frame=frame)
                yield frame, ts, buf, lt
        finally:
            f.close()

    return fmt, link_type, _as_ethernet(frames()) if ethernet else frames()


# ------------------------------------------------------------- flows
class _FlowState:
    """Per-flow bookkeeping while reading; side 0 sends the flow's first packet."""
    __slots__ = ("flow", "ends", "syn_from", "synack_from", "reasm")

    def __init__(self, flow: Flow, ends: tuple, reasm: StreamReassembler | None) -> None:
        self.flow = flow
        self.ends = ends                    # ((src, sport), (dst, dport)) of the first packet
        self.syn_from: int | None = None
        self.synack_from: int | None = None
        self.reasm = reasm


def _ip_text(raw: bytes) -> str:
    # IPv4 through inet_ntop (the same dotted quad, a tenth of the cost);
    # IPv6 through ipaddress, whose compressed form the truth files use.
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    return ipaddress.ip_address(raw).compressed


def flow_packets(path: str | os.PathLike) -> tuple[Capture, Iterator[tuple[int, tuple]]]:
    """The TCP/UDP packets of a capture, in order, as (frame number, packet),
    the packet a tuple in L4Packet's field order (proto, src, sport, dst,
    dport, seq, flags, payload; an L4Packet or a plain tuple):
    the decoding that read_capture does, for a caller that keeps its own
    flow table (slowpath/offline.py). The Capture (no flows) is filled in
    while the iterator runs: frames, undecodable, not_flow, fragments.
    Raises PcapError on a bad file, at once or while iterating."""
    path = os.fspath(path)
    fmt, link_type, records = _records(path)
    cap = Capture(path=path, file_format=fmt, link_type=link_type)
    decoder = _Decoder(link_type, cap.fragments)

    def packets() -> Iterator[tuple[int, tuple]]:
        frame = 0
        try:
            for frame, ts, buf, lt in records:
                if lt == LINKTYPE_ETHERNET:
                    p = _plain_ethernet(buf)
                    if p is not None:
                        yield frame, p
                        continue
                try:
                    p = decoder.decode(buf, ts, lt)
                except _NotFlow as e:
                    cap.not_flow[str(e)] += 1
                    continue
                except _Undecodable as e:
                    cap.undecodable[str(e)] += 1
                    continue
                yield frame, p
        finally:
            cap.frames = frame

    return cap, packets()


def _turned(ev: FlowEvent) -> FlowEvent:
    """``ev`` seen from the other side (each event built directly:
    dataclasses.replace inspects the fields on every call)."""
    d = Direction.TO_CLIENT if ev.direction == Direction.TO_SERVER else Direction.TO_SERVER
    kind = ev.kind
    if kind == "data":
        return Data(d, ev.data, ev.stream_offset)
    if kind == "datagram":
        return Datagram(d, ev.payload, ev.frame)
    if kind == "gap":
        return Gap(d, ev.size, ev.stream_offset)
    return Eof(d)


def read_capture(path: str | os.PathLike, *, limits: ReassemblyLimits | None = None,
                 budget: ReassemblyBudget | None = None) -> Capture:
    """Read every TCP/UDP flow of a pcap / pcapng file. Raises PcapError on a bad file."""
    cap, packets = flow_packets(path)
    budget = budget if budget is not None else ReassemblyBudget()
    table: dict[tuple, _FlowState] = {}

    for frame, (proto, src, sport, dst, dport, seq, flags, payload) in packets:
        a, b = (src, sport), (dst, dport)
        key = (proto, a, b) if a <= b else (proto, b, a)
        state = table.get(key)
        if state is None:
            tcp = proto == IPPROTO_TCP
            flow = Flow(proto="tcp" if tcp else "udp",
                        client=(_ip_text(src), sport), server=(_ip_text(dst), dport),
                        first_frame=frame, last_frame=frame, packets=0)
            reasm = StreamReassembler(limits, budget) if tcp else None
            if reasm is not None:
                flow.counters = reasm.counters
            state = table[key] = _FlowState(flow, (a, b), reasm)
        flow = state.flow
        flow.packets += 1
        flow.last_frame = frame
        side = Direction.TO_SERVER if a == state.ends[0] else Direction.TO_CLIENT
        if state.reasm is not None:
            if flags & SYN:
                if flags & ACK:
                    if state.synack_from is None:
                        state.synack_from = side
                elif state.syn_from is None:
                    state.syn_from = side
            for ev in state.reasm.segment(side, seq, flags, payload):
                flow.events.append(ev)
                flow.event_frames.append(frame)
        else:
            flow.events.append(Datagram(side, payload, frame))
            flow.event_frames.append(frame)

    for state in table.values():
        flow = state.flow
        if state.reasm is not None:
            for ev in state.reasm.flush():
                flow.events.append(ev)
                flow.event_frames.append(flow.last_frame)
        # Events so far are relative to side 0 (first packet's sender).
        if state.syn_from is not None:
            client, flow.orientation = state.syn_from, "tcp-syn"
        elif state.synack_from is not None:
            client, flow.orientation = 1 - state.synack_from, "tcp-synack"
        else:
            client, flow.orientation = 0, "first-packet"
        if client == 1:
            flow.client, flow.server = flow.server, flow.client
            flow.events = [_turned(ev) for ev in flow.events]
        cap.flows.append(flow)
    cap.flows.sort(key=lambda fl: fl.first_frame)
    return cap


# ------------------------------------------------------------- frames as Ethernet
_ETH_FAKE = bytes.fromhex("020000000002" "020000000001")   # dst, src: locally administered


def ethernet_frames(path: str | os.PathLike) -> Iterator[tuple[int, float, bytes | None]]:
    """Every frame of a capture as an Ethernet frame, in order: (frame
    number, timestamp, bytes), with None for a frame of a link type or
    family that has no Ethernet form (counted by the caller). Loopback,
    raw-IP and Linux cooked frames get a made-up Ethernet header with the
    ethertype their own header (or IP version) gives, so the fast path,
    which parses Ethernet, can run every capture `microseg replay` reads."""
    return _records(str(path), ethernet=True)[2]


def _as_ethernet(frames: Iterator[tuple[int, float, bytes, int]]) -> Iterator[tuple[int, float, bytes | None]]:
    for frame, ts, buf, lt in frames:
        # Ethernet (most captures) as it is, without the call (one a frame).
        yield frame, ts, buf if lt == LINKTYPE_ETHERNET else _to_ethernet(lt, buf)


def _to_ethernet(lt: int, buf: bytes) -> bytes | None:
    if lt == LINKTYPE_ETHERNET:
        return buf
    if lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(buf) < 5:
            return None
        be, le = _u32(buf, 0)[0], struct.unpack_from("<I", buf, 0)[0]
        et = 0x0800 if 2 in (be, le) else 0x86DD if (be in _AF_INET6 or le in _AF_INET6) else None
        return None if et is None else _ETH_FAKE + struct.pack(">H", et) + buf[4:]
    if lt in _RAW_LINKTYPES:
        if not buf or buf[0] >> 4 not in (4, 6):
            return None
        return _ETH_FAKE + (b"\x08\x00" if buf[0] >> 4 == 4 else b"\x86\xdd") + buf
    if lt == LINKTYPE_LINUX_SLL and len(buf) >= 16:
        return _ETH_FAKE + buf[14:16] + buf[16:]
    if lt == LINKTYPE_LINUX_SLL2 and len(buf) >= 20:
        return _ETH_FAKE + buf[0:2] + buf[20:]
    return None
