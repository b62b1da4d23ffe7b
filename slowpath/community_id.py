"""Community ID v1 of a flow (https://github.com/corelight/community-id-spec),
the ID EVE records carry so other tools' records of the same flow can be
joined to them.

SHA-1 over the seed, the two addresses, the protocol, a pad byte and the
two ports (ICMP: type and the counterpart type, or type and code), the
endpoints in canonical order, base64. Computed with hashlib over one packed
string: the reference implementation (the communityid package) builds five
tuple objects and parses each address up to four times per call (~35 us a
call here, the largest per-flow cost of a replay); this takes ~2 us.
tests/unit/test_community_id.py holds it to the package on many tuples.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import socket
import struct
from functools import lru_cache

_CID_VERSION = "1:"
# Protocols hashed with their ports (the spec's port-enabled ones:
# ICMP, TCP, UDP, ICMPv6, SCTP).
_CID_PORT_PROTOS = frozenset({1, 6, 17, 58, 132})
# ICMP / ICMPv6 message types that have a counterpart (request/reply), as
# the spec maps them after Zeek: such a message hashes as the "ports" (type,
# counterpart type) and is ordered like a two-way flow; any other type is
# one-way, hashed as (type, code) in the order it was seen.
_CID_ICMP_PAIRS = {
    1: {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17},
    58: {128: 129, 129: 128, 130: 131, 131: 130, 133: 134, 134: 133, 135: 136, 136: 135,
         139: 140, 140: 139, 144: 145, 145: 144},
}
_CID_HEAD = struct.Struct("!H")
_CID_TAIL = struct.Struct("!BBHH")     # proto, pad, source port, destination port
_CID_TAIL_NOPORTS = struct.Struct("!BB")


def packed_ip(addr: str) -> bytes:
    """An address's network-order bytes: inet_pton, or ipaddress for what it
    does not take (a scope id, an ipaddress object), which raises ValueError
    for a bad one."""
    if type(addr) is str:
        try:
            return socket.inet_pton(socket.AF_INET, addr)
        except OSError:
            pass
        try:
            return socket.inet_pton(socket.AF_INET6, addr)
        except OSError:
            pass
    return ipaddress.ip_address(addr).packed


# Flows whose Community ID is kept: a session's ID is asked for by every
# record of it (the engine's flow, the kernel's session end, its alerts and drops).
COMMUNITY_ID_CACHE = 16_384


@lru_cache(maxsize=COMMUNITY_ID_CACHE)
def community_id(proto: int, saddr: str, daddr: str, sport: int | None = None,
                 dport: int | None = None, *, seed: int = 0) -> str | None:
    """Community ID v1 of a flow, e.g. ``1:wCb3OG7yAFWelaUydu0D+125CLM=``.

    For ICMP (1) and ICMPv6 (58) ``sport``/``dport`` are the type and code.
    None when the protocol needs ports and they are missing (the spec lets a
    monitor omit what it cannot compute). Raises ValueError for addresses of
    different families or out-of-range values.
    """
    a, b = packed_ip(saddr), packed_ip(daddr)
    if len(a) != len(b):
        raise ValueError(f"community_id: {saddr} and {daddr} are not the same address family")
    if not 0 <= proto <= 255 or not 0 <= seed <= 0xFFFF:
        raise ValueError(f"community_id: proto {proto} or seed {seed} out of range")
    if proto in _CID_PORT_PROTOS:
        if sport is None or dport is None:
            return None
        if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
            raise ValueError(f"community_id: port {sport} or {dport} out of range")
        pairs = _CID_ICMP_PAIRS.get(proto)
        one_way = False
        if pairs is not None:
            peer = pairs.get(sport)
            if peer is None:
                one_way = True
            else:
                dport = peer
        if not one_way and (b < a or (a == b and dport < sport)):
            a, b, sport, dport = b, a, dport, sport
        tail = _CID_TAIL.pack(proto, 0, sport, dport)
    else:
        if b < a:                       # the spec hashes no ports for other protocols
            a, b = b, a
        tail = _CID_TAIL_NOPORTS.pack(proto, 0)
    digest = hashlib.sha1(_CID_HEAD.pack(seed) + a + b + tail).digest()
    return _CID_VERSION + base64.b64encode(digest).decode("ascii")
