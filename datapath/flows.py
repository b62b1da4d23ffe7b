"""Read the session table (ms_flows) into plain records for people and JSON."""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from .errors import UsageError
from .text import table

# The IP protocols the fast path keeps sessions of, by number -> the name
# people write (policy `proto`, `--proto`, listings): the one name table.
PROTO_NAMES = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_ICMP: "icmp",
               socket.IPPROTO_ICMPV6: "icmpv6"}


def parse_proto(text: str, what: str = "--proto") -> int:
    """A protocol as people write it (a PROTO_NAMES name or a number), for
    `sessions --proto` and `policy explain PROTO` alike; ``what`` names the
    argument in the one-line error."""
    t = text.strip().lower()
    for num, name in PROTO_NAMES.items():
        if name == t:
            return num
    if t.isdigit() and 0 <= int(t) <= 255:
        return int(t)
    raise UsageError(f"{what}: protocol {text!r} is not tcp, udp, icmp, icmpv6 or a number 0-255")


# The first 12 bytes of an IPv4-mapped IPv6 address (::ffff:a.b.c.d), how
# the tables hold an IPv4 one.
V4_MAPPED = bytes(10) + b"\xff\xff"


def addr_text(raw) -> str:
    """A 16-byte table address as text: an IPv4-mapped one as dotted
    decimal (inet_ntop: what str(ipv4_mapped) prints, in one C call
    instead of two ipaddress objects, 0.3 against 2.4 us; every flow of a
    replay formats its two), any other as ipaddress writes IPv6."""
    b = bytes(raw)
    if len(b) == 16 and b[:12] == V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, b[12:])
    a = ipaddress.IPv6Address(b)
    return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)


@dataclass
class FlowRecord:
    proto: str
    src: str        # the endpoint that opened the flow
    sport: int
    dst: str
    dport: int
    packets_orig: int
    bytes_orig: int
    packets_reply: int
    bytes_reply: int
    first_seen_ns: int
    last_seen_ns: int


def flow_records(table) -> list[FlowRecord]:
    out = []
    for k, v in table.items():
        lo = (addr_text(k.addr_lo), socket.ntohs(k.port_lo))
        hi = (addr_text(k.addr_hi), socket.ntohs(k.port_hi))
        src, dst = (hi, lo) if v.initiator_is_hi else (lo, hi)
        out.append(FlowRecord(PROTO_NAMES.get(k.proto, str(k.proto)), src[0], src[1], dst[0], dst[1],
                              v.packets[0], v.bytes[0], v.packets[1], v.bytes[1],
                              v.first_seen_ns, v.last_seen_ns))
    out.sort(key=lambda r: r.first_seen_ns)
    return out


def format_flows(records: list[FlowRecord]) -> str:
    if not records:
        return "  (no sessions)"
    rows = [("proto", "source", "destination", "pkts >", "bytes >", "pkts <", "bytes <")]
    for r in records:
        rows.append((r.proto, f"{r.src}:{r.sport}" if ":" not in r.src else f"[{r.src}]:{r.sport}",
                     f"{r.dst}:{r.dport}" if ":" not in r.dst else f"[{r.dst}]:{r.dport}",
                     str(r.packets_orig), str(r.bytes_orig), str(r.packets_reply), str(r.bytes_reply)))
    return table(rows)
