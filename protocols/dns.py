"""DNS (RFC 1035) over UDP and TCP: a sans-IO parser, a probe, kernel signatures.

Over UDP each datagram is one message. Over TCP (RFC 1035 4.2.2, RFC 7766)
every message is preceded by a 2-byte length and a stream may carry several
messages, split anywhere across segments.

The wire format is decoded here rather than with dpkt.dns because the
appliance needs things dpkt does not give: a reason and an offset for every
bad message instead of assorted exceptions (dpkt raises NeedData,
UnpackError, struct.error, and UnicodeDecodeError for a non-UTF-8 label), a
bound on compression pointer chains (dpkt stops loops, not long chains),
labels containing dots or binary bytes rendered without ambiguity, and
HTTPS/SVCB records (RFC 9460) decoded.

Names are shown as tshark shows them: no trailing dot, case kept. Bytes that
are not printable ASCII, and "." or "\\" inside a label, use the RFC 1035 5.1
escapes (\\DDD, \\.), so "a.b" as one label cannot pass for two. The root
name is ".".

Malformed offsets are byte offsets in that direction's stream. Over UDP the
stream is the direction's datagrams one after another, so the offset still
says which datagram (and where in it) went wrong.
"""
from __future__ import annotations

import base64
import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable, ClassVar

from protocols.api import (
    CERTAIN,
    LIKELY,
    NO_MATCH,
    POSSIBLE,
    DIRECTIONS,
    Direction,
    Event,
    Malformed,
    ProtocolError,
    ProtocolPlugin,
    Signature,
    StreamParser,
    StreamSide,
    event_builder,
    event_kinds,
)

# --- Limits ---------------------------------------------------------------

# RFC 1035 2.3.4: a label is at most 63 octets. The wire format enforces it
# too: the top two bits of a length byte select the label type (00 = label,
# 11 = pointer, 01 and 10 are retired extended label types, RFC 6891 5), so a
# length byte above 63 is not a label at all.
MAX_LABEL_LEN = 63
# RFC 1035 2.3.4: a name is at most 255 octets in wire form (length bytes,
# label bytes and the final zero). Longer names do not exist in the DNS and
# only serve to make a decoder work harder.
MAX_NAME_LEN = 255
# Pointers may only go backwards (to before the labels being read), which
# already makes loops impossible; this bounds the chain length as well. A
# legal 255-octet name has at most 127 labels, and a compressor needs at most
# one pointer per label, so a longer chain is pointers pointing at pointers,
# which no encoder emits and which would cost one step each.
MAX_POINTER_HOPS = 127
# RFC 1035 4.1.1: the fixed header is 12 bytes; nothing shorter is a message.
HEADER_LEN = 12
# RFC 1035 4.2.2: the TCP length prefix is 16 bits, so one message is at most
# 65535 bytes. The parser buffers either the 2-byte prefix or the body of the
# message being assembled, never both and never more, so this (plus the 2
# prefix bytes) caps the memory a TCP direction can make it hold.
MAX_MESSAGE_LEN = 65535
MAX_TCP_BUFFER = 2 + MAX_MESSAGE_LEN
# Smallest wire size of a question (root name, type, class) and of a resource
# record (root name, type, class, TTL, RDLENGTH, empty RDATA): used to reject
# header counts the message length cannot hold before walking any section.
_MIN_QUESTION = 1 + 4
_MIN_RECORD = 1 + 10

# --- Names for numbers ----------------------------------------------------

# IANA "Resource Record (RR) TYPEs", common and historic ones. Unknown types
# are shown as TYPEnnn (RFC 3597 5).
TYPE_NAMES: dict[int, str] = {
    1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG",
    9: "MR", 10: "NULL", 11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO",
    15: "MX", 16: "TXT", 17: "RP", 18: "AFSDB", 19: "X25", 20: "ISDN",
    21: "RT", 22: "NSAP", 24: "SIG", 25: "KEY", 26: "PX", 27: "GPOS",
    28: "AAAA", 29: "LOC", 30: "NXT", 33: "SRV", 35: "NAPTR", 36: "KX",
    37: "CERT", 39: "DNAME", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP",
    45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID",
    50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP",
    59: "CDS", 60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD",
    64: "SVCB", 65: "HTTPS", 99: "SPF", 108: "EUI48", 109: "EUI64",
    249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR", 253: "MAILB",
    254: "MAILA", 255: "ANY", 256: "URI", 257: "CAA",
}
# IANA "DNS RCODEs" that fit the 4-bit header field.
RCODE_NAMES: dict[int, str] = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
    5: "REFUSED", 6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH",
    10: "NOTZONE", 11: "DSOTYPENI",
}
# IANA "DNS OpCodes" (3 is unassigned).
OPCODE_NAMES: dict[int, str] = {
    0: "QUERY", 1: "IQUERY", 2: "STATUS", 4: "NOTIFY", 5: "UPDATE", 6: "DSO",
}
# Question classes a real query uses: IN, CH, HS, NONE (UPDATE), ANY.
_KNOWN_CLASSES = frozenset({1, 3, 4, 254, 255})


def type_name(rtype: int) -> str:
    return TYPE_NAMES.get(rtype, f"TYPE{rtype}")


def rcode_name(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, f"RCODE{rcode}")


# --- Events ---------------------------------------------------------------

@dataclass(frozen=True)
class DnsQuestion:
    name: str
    type: int
    type_name: str
    qclass: int


@dataclass(frozen=True)
class DnsRecord:
    """One resource record; ``data`` is the RDATA in presentation form.

    A/AAAA: the address. CNAME/NS/PTR: the name. MX: "preference exchange".
    TXT: the character-strings concatenated. SOA: "mname rname serial refresh
    retry expire minimum". SRV: "priority weight port target". SVCB/HTTPS:
    "priority target key=value ...". Other types: "" (``rdlength`` says how
    many bytes were skipped).
    """
    name: str
    type: int
    type_name: str
    rclass: int
    ttl: int
    rdlength: int
    data: str


@dataclass(frozen=True)
class DnsMessage(Event):
    """One DNS message. ``answers`` is the Answer section only; ``authority``
    is kept separately (an NXDOMAIN's SOA is there); the Additional section
    is decoded for validity but only counted (``additional_count`` is the
    header's ARCOUNT). With TC set the sections may hold fewer records than
    the header counts."""
    kind: ClassVar[str] = "dns_message"
    direction: Direction
    id: int
    response: bool
    opcode: int
    opcode_name: str
    aa: bool
    tc: bool
    rd: bool
    ra: bool
    ad: bool
    cd: bool
    rcode: int
    rcode_name: str
    questions: tuple[DnsQuestion, ...]
    answers: tuple[DnsRecord, ...]
    authority: tuple[DnsRecord, ...]
    additional_count: int


# The events as decode_message makes them: a frozen dataclass's __init__ costs
# ~1 us for a record's 7 fields, ~2 for a message's 17 (event_builder: the
# same objects in 0.4 of that); a response of ten records makes eleven.
_new_question = event_builder(DnsQuestion)
_new_record = event_builder(DnsRecord)
_new_message = event_builder(DnsMessage)


# --- Wire decoding --------------------------------------------------------

class _Bad(Exception):
    """A message cannot be decoded; ``offset`` is within the message."""

    def __init__(self, reason: str, offset: int):
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


class _Short(_Bad):
    """The message ended before a field did (the TC case tolerates this)."""


# RFC 1035 5.1 presentation of one label byte: printable ASCII as is, "." and
# "\" escaped, everything else as \DDD.
_LABEL_CHAR = [
    ("\\" + chr(b)) if b in b".\\" else chr(b) if 0x21 <= b <= 0x7E else f"\\{b:03d}"
    for b in range(256)
]
# Same for character-strings (TXT, alpn ids) between quotes: a space is fine.
_TEXT_CHAR = [
    ("\\" + chr(b)) if b in b'"\\' else chr(b) if 0x20 <= b <= 0x7E else f"\\{b:03d}"
    for b in range(256)
]


# The bytes _LABEL_CHAR shows as themselves: a label made only of them (as
# nearly every real one is) is its own ASCII text, decoded in one call.
_PLAIN_LABEL_BYTES = bytes(b for b in range(256) if _LABEL_CHAR[b] == chr(b))


def _label_text(label: bytes) -> str:
    if type(label) is bytes and not label.translate(None, _PLAIN_LABEL_BYTES):
        return label.decode("ascii")
    return "".join([_LABEL_CHAR[b] for b in label])


def _char_string_text(s: bytes) -> str:
    return "".join([_TEXT_CHAR[b] for b in s])


class _Message:
    """Decoder over one complete message (bytes, no length prefix)."""

    def __init__(self, msg: bytes):
        self.msg = msg
        # Offset -> (the name read from there as text, its wire length without
        # the root byte, pointer hops in it). Each offset is walked once: a
        # thousand records pointing at one long name cost one walk, and share
        # one string.
        self._suffixes: dict[int, tuple[str, int, int]] = {}

    def need(self, pos: int, size: int, what: str) -> None:
        if pos + size > len(self.msg):
            raise _Short(f"message ends inside {what} ({size} bytes needed at "
                         f"{pos}, message is {len(self.msg)} bytes)", pos)

    def u16(self, pos: int, what: str) -> int:
        self.need(pos, 2, what)
        return (self.msg[pos] << 8) | self.msg[pos + 1]

    def u32(self, pos: int, what: str) -> int:
        self.need(pos, 4, what)
        return int.from_bytes(self.msg[pos:pos + 4], "big")

    def name(self, pos: int) -> tuple[str, int]:
        """Decode the name at ``pos``; return it and the offset after it."""
        msg = self.msg
        labels: list[str] = []
        wire = 0                 # label bytes and length bytes so far
        hops = 0
        after: int | None = None  # where the name ends in place (first pointer + 2)
        segment = pos             # start of the labels being read since the last jump
        walked = [(pos, 0, 0, 0)]  # (offset, len(labels), wire, hops) at each segment start
        while True:
            if pos >= len(msg):
                raise _Short(f"message ends inside a name (at {pos})", pos)
            n = msg[pos]
            if n == 0:
                pos += 1
                break
            if n & 0xC0 == 0xC0:
                self.need(pos, 2, "a compression pointer")
                target = ((n & 0x3F) << 8) | msg[pos + 1]
                if after is None:
                    after = pos + 2
                if target < HEADER_LEN:
                    raise _Bad(f"compression pointer at {pos} points into the header ({target})", pos)
                if target >= segment:
                    raise _Bad(f"compression pointer at {pos} to {target} does not point "
                               f"backwards (possible loop)", pos)
                hops += 1
                if hops > MAX_POINTER_HOPS:
                    raise _Bad(f"more than {MAX_POINTER_HOPS} compression pointers in one name", pos)
                known = self._suffixes.get(target)
                if known is not None:
                    if known[0]:
                        labels.append(known[0])
                    wire += known[1]
                    hops += known[2]
                    if wire + 1 > MAX_NAME_LEN:
                        raise _Bad(f"name longer than {MAX_NAME_LEN} octets", pos)
                    if hops > MAX_POINTER_HOPS:
                        raise _Bad(f"more than {MAX_POINTER_HOPS} compression pointers in one name", pos)
                    break
                pos = segment = target
                walked.append((target, len(labels), wire, hops))
                continue
            if n > MAX_LABEL_LEN:
                raise _Bad(f"label length byte 0x{n:02x} at {pos}: over {MAX_LABEL_LEN} "
                           f"(label types 01/10 are not supported)", pos)
            self.need(pos + 1, n, "a label")
            wire += 1 + n
            if wire + 1 > MAX_NAME_LEN:
                raise _Bad(f"name longer than {MAX_NAME_LEN} octets (at {pos})", pos)
            labels.append(_label_text(msg[pos + 1:pos + 1 + n]))
            pos += 1 + n
        for start, nlabels, w, h in walked:
            self._suffixes.setdefault(start, (".".join(labels[nlabels:]), wire - w, hops - h))
        return (".".join(labels) or "."), (pos if after is None else after)

    # -- RDATA -------------------------------------------------------------

    def rdata(self, rtype: int, start: int, end: int) -> str:
        decode = _RDATA.get(rtype)
        if decode is None:
            return ""
        try:
            text, used = decode(self, start, end)
        except _Short as e:
            # The RDATA itself was present (RDLENGTH checked), so this is a
            # field running past it, not a truncated message.
            raise _Bad(f"{type_name(rtype)} RDATA at {start}: {e.reason}", e.offset) from None
        if used != end:
            raise _Bad(f"{type_name(rtype)} RDATA is {end - start} bytes but its fields "
                       f"take {used - start}", start)
        return text

    def record(self, pos: int) -> tuple[DnsRecord, int]:
        owner, pos = self.name(pos)
        self.need(pos, 10, "a record header")
        msg = self.msg
        rtype = (msg[pos] << 8) | msg[pos + 1]
        rclass = (msg[pos + 2] << 8) | msg[pos + 3]
        ttl = int.from_bytes(msg[pos + 4:pos + 8], "big")
        rdlength = (msg[pos + 8] << 8) | msg[pos + 9]
        start = pos + 10
        self.need(start, rdlength, f"{type_name(rtype)} RDATA")
        data = self.rdata(rtype, start, start + rdlength)
        return _new_record(owner, rtype, type_name(rtype), rclass, ttl, rdlength, data), start + rdlength

    def question(self, pos: int) -> tuple[DnsQuestion, int]:
        qname, pos = self.name(pos)
        self.need(pos, 4, "a question's type and class")
        qtype = self.u16(pos, "qtype")
        qclass = self.u16(pos + 2, "qclass")
        return _new_question(qname, qtype, type_name(qtype), qclass), pos + 4


def _fixed(what: str, size: int, show: Callable[[bytes], str]):
    def decode(m: _Message, start: int, end: int) -> tuple[str, int]:
        if end - start != size:
            raise _Bad(f"{what} RDATA is {end - start} bytes, expected {size}", start)
        return show(m.msg[start:end]), end
    return decode


def _rd_name(m: _Message, start: int, end: int) -> tuple[str, int]:
    return m.name(start)


def _rd_mx(m: _Message, start: int, end: int) -> tuple[str, int]:
    pref = m.u16(start, "MX preference")
    exchange, pos = m.name(start + 2)
    return f"{pref} {exchange}", pos


def _rd_txt(m: _Message, start: int, end: int) -> tuple[str, int]:
    # <length><bytes> character-strings (RFC 1035 3.3.14), shown concatenated
    # as SPF/DKIM readers join them (RFC 7208 3.3). RFC 1035 wants at least
    # one, but an empty RDATA hides nothing, so it is shown as "" rather than
    # costing the flow its DNS view.
    parts = []
    pos = start
    while pos < end:
        n = m.msg[pos]
        if pos + 1 + n > end:
            raise _Bad(f"TXT string of {n} bytes at {pos} runs past the RDATA", pos)
        parts.append(_char_string_text(m.msg[pos + 1:pos + 1 + n]))
        pos += 1 + n
    return "".join(parts), pos


def _rd_soa(m: _Message, start: int, end: int) -> tuple[str, int]:
    mname, pos = m.name(start)
    rname, pos = m.name(pos)
    m.need(pos, 20, "SOA timers")
    numbers = [m.u32(pos + 4 * i, "SOA timer") for i in range(5)]
    return " ".join([mname, rname, *map(str, numbers)]), pos + 20


def _rd_srv(m: _Message, start: int, end: int) -> tuple[str, int]:
    # RFC 2782: priority, weight, port, target. Compression is not allowed in
    # the target but accepted: a backwards pointer is harmless.
    m.need(start, 6, "SRV fields")
    prio, weight, port = (m.u16(start + i, "SRV field") for i in (0, 2, 4))
    target, pos = m.name(start + 6)
    return f"{prio} {weight} {port} {target}", pos


# RFC 9460 7 / 14.3.2: SvcParamKeys and how each value is shown.
_SVC_KEYS = {0: "mandatory", 1: "alpn", 2: "no-default-alpn", 3: "port",
             4: "ipv4hint", 5: "ech", 6: "ipv6hint", 7: "dohpath", 8: "ohttp"}


def _svc_key(key: int) -> str:
    return _SVC_KEYS.get(key, f"key{key}")


def _svc_value(key: int, v: bytes, at: int) -> str | None:
    """Presentation of one SvcParam value (None: the key takes no value)."""
    def bad(why: str) -> _Bad:
        return _Bad(f"SvcParam {_svc_key(key)} at {at}: {why}", at)
    if key == 0:
        if not v or len(v) % 2:
            raise bad("length is not a positive multiple of 2")
        return ",".join(_svc_key(int.from_bytes(v[i:i + 2], "big")) for i in range(0, len(v), 2))
    if key == 1:
        ids, i = [], 0
        while i < len(v):
            n = v[i]
            if n == 0 or i + 1 + n > len(v):
                raise bad("bad alpn-id length")
            ids.append(_char_string_text(v[i + 1:i + 1 + n]).replace(",", "\\,"))
            i += 1 + n
        if not ids:
            raise bad("empty")
        return '"' + ",".join(ids) + '"'
    if key in (2, 8):
        if v:
            raise bad("takes no value")
        return None
    if key == 3:
        if len(v) != 2:
            raise bad("length is not 2")
        return str(int.from_bytes(v, "big"))
    if key in (4, 6):
        size = 4 if key == 4 else 16
        if not v or len(v) % size:
            raise bad(f"length is not a positive multiple of {size}")
        return ",".join(str(ipaddress.ip_address(v[i:i + size])) for i in range(0, len(v), size))
    if key == 5:
        return base64.b64encode(v).decode("ascii")
    return '"' + _char_string_text(v) + '"'


def _rd_svcb(m: _Message, start: int, end: int) -> tuple[str, int]:
    # RFC 9460 2.2: priority, target name, then SvcParams in strictly
    # increasing key order (anything else makes the record malformed, 2.2).
    prio = m.u16(start, "SVCB priority")
    target, pos = m.name(start + 2)
    out = [str(prio), target]
    last = -1
    while pos < end:
        if pos + 4 > end:
            raise _Bad(f"SvcParam header at {pos} runs past the RDATA", pos)
        key = m.u16(pos, "SvcParamKey")
        size = m.u16(pos + 2, "SvcParam length")
        if key <= last:
            raise _Bad(f"SvcParamKey {key} at {pos} is not in increasing order", pos)
        if pos + 4 + size > end:
            raise _Bad(f"SvcParam value at {pos} runs past the RDATA", pos)
        value = _svc_value(key, m.msg[pos + 4:pos + 4 + size], pos)
        out.append(_svc_key(key) if value is None else f"{_svc_key(key)}={value}")
        last = key
        pos += 4 + size
    return " ".join(out), pos


# An AAAA address whose first 80 bits are zero: glibc's inet_ntop writes its
# last 32 bits dotted (::1.2.3.4, ::ffff:1.2.3.4), ipaddress in hex groups.
_V6_DOTTED_PREFIX = bytes(10)


def _a_text(b: bytes) -> str:
    """An A record's address as ipaddress writes it (dotted decimal), by one
    C call: an ipaddress object per answer was ~1/4 of decoding a reply."""
    return socket.inet_ntop(socket.AF_INET, b)


def _aaaa_text(b: bytes) -> str:
    """An AAAA record's address as ipaddress writes it (RFC 5952: lower
    case, no leading zeros, the first longest run of two or more zero groups
    as "::"), which inet_ntop writes the same in one C call but for the
    dotted forms above, left to ipaddress."""
    if b[:10] == _V6_DOTTED_PREFIX:
        return str(ipaddress.IPv6Address(b))
    return socket.inet_ntop(socket.AF_INET6, b)


_RDATA: dict[int, Callable[[_Message, int, int], tuple[str, int]]] = {
    1: _fixed("A", 4, _a_text),
    28: _fixed("AAAA", 16, _aaaa_text),
    2: _rd_name,     # NS
    5: _rd_name,     # CNAME
    12: _rd_name,    # PTR
    39: _rd_name,    # DNAME
    6: _rd_soa,
    15: _rd_mx,
    16: _rd_txt,
    33: _rd_srv,
    64: _rd_svcb,    # SVCB
    65: _rd_svcb,    # HTTPS: same wire format
}


def decode_message(msg: bytes, direction: Direction) -> DnsMessage:
    """Decode one whole message. Raises _Bad (module-internal) on bad input."""
    if len(msg) < HEADER_LEN:
        raise _Short(f"message of {len(msg)} bytes is shorter than the {HEADER_LEN}-byte header", 0)
    b2, b3 = msg[2], msg[3]
    tc = bool(b2 & 0x02)
    counts = [int.from_bytes(msg[i:i + 2], "big") for i in (4, 6, 8, 10)]
    qd, an, ns, ar = counts
    least = HEADER_LEN + qd * _MIN_QUESTION + (an + ns + ar) * _MIN_RECORD
    if least > len(msg) and not tc:
        raise _Bad(f"header counts {qd}/{an}/{ns}/{ar} need at least {least} bytes, "
                   f"message is {len(msg)}", 4)
    m = _Message(msg)
    questions: list[DnsQuestion] = []
    sections: list[list[DnsRecord]] = [[], [], []]
    pos = HEADER_LEN
    try:
        for _ in range(qd):
            q, pos = m.question(pos)
            questions.append(q)
        for section, count in zip(sections, (an, ns, ar)):
            for _ in range(count):
                rr, pos = m.record(pos)
                section.append(rr)
    except _Short:
        # RFC 2181 9: a message with TC set may stop short of its counts; keep
        # what was complete. Without TC, running out of bytes is an error.
        if not tc:
            raise
    # Bytes after the last record are ignored (as tshark does): they cannot
    # change what was decoded, and over TCP the length prefix already framed
    # the message.
    opcode = (b2 >> 3) & 0x0F
    rcode = b3 & 0x0F
    return _new_message(
        direction=direction,
        id=(msg[0] << 8) | msg[1],
        response=bool(b2 & 0x80),
        opcode=opcode,
        opcode_name=OPCODE_NAMES.get(opcode, f"OPCODE{opcode}"),
        aa=bool(b2 & 0x04),
        tc=tc,
        rd=bool(b2 & 0x01),
        ra=bool(b3 & 0x80),
        ad=bool(b3 & 0x20),
        cd=bool(b3 & 0x10),
        rcode=rcode,
        rcode_name=rcode_name(rcode),
        questions=tuple(questions),
        answers=tuple(sections[0]),
        authority=tuple(sections[1]),
        additional_count=ar,
    )


# --- The parser -----------------------------------------------------------

class _Side(StreamSide):
    """One direction. Over TCP ``buf`` holds the 2 prefix bytes or the body
    being assembled; over UDP only ``eof`` is used (a datagram stands alone)."""
    __slots__ = ("body_len", "dead")
    max_buffered = MAX_TCP_BUFFER

    def __init__(self, direction: Direction) -> None:
        super().__init__(direction)
        self.body_len: int | None = None  # None: still reading a length prefix
        self.dead = False                 # gave up (Malformed): the rest is ignored

    @property
    def done(self) -> bool:
        return self.dead


class DnsParser(StreamParser):
    """DNS messages of one flow; ``transport`` is "udp" or "tcp"."""

    def __init__(self, transport: str = "udp"):
        if transport not in ("udp", "tcp"):
            raise ProtocolError(f"DNS runs over udp or tcp, not {transport!r}")
        self.transport = transport
        self._sides = {d: _Side(d) for d in DIRECTIONS}
        self._udp_pos = {d: 0 for d in DIRECTIONS}

    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        side.check_open()
        if self.transport == "udp":
            return self._datagram(bytes(data), direction)
        if side.done:
            return []
        # Not side.accept(): the stream is taken a prefix or a body at a time,
        # so the buffer never holds more than one of them.
        return self._stream(memoryview(data), direction)

    def receive_eof(self, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        side.eof = True
        if self.transport == "udp" or side.done:
            return []
        if side.body_len is None and not side.buf:
            return []
        want = 2 if side.body_len is None else side.body_len
        what = "length prefix" if side.body_len is None else "message"
        event = Malformed(direction, f"stream ended inside a {what} "
                          f"({len(side.buf)} of {want} bytes)", side.offset + len(side.buf))
        self._stop(direction)
        return [event]

    def receive_gap(self, direction: Direction, size: int) -> list[Event]:
        # Over UDP nothing spans datagrams, so a loss affects nothing after it.
        side = self._sides[direction]
        if self.transport == "udp" or side.done:
            return []
        event = Malformed(direction, f"gap of {size} bytes in the stream: message framing lost",
                          side.offset + len(side.buf))
        self._stop(direction)
        return [event]

    def _stop(self, direction: Direction) -> None:
        """The direction ends (API: nothing after a Malformed); drop its buffer."""
        side = self._sides[direction]
        side.dead = True
        side.discard()

    def _datagram(self, data: bytes, direction: Direction) -> list[Event]:
        # A bad datagram is reported and the next one is read normally: each
        # stands alone, nothing is out of step.
        base = self._udp_pos[direction]
        self._udp_pos[direction] += len(data)
        try:
            return [_decode_once(data, direction)]
        except _Bad as e:
            return [Malformed(direction, e.reason, base + e.offset)]

    def _stream(self, view: memoryview, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        events: list[Event] = []
        while view:
            want = 2 if side.body_len is None else side.body_len
            take = want - len(side.buf)
            side.buf += view[:take]
            view = view[take:]
            if len(side.buf) < want:
                break
            if side.body_len is None:
                n = int.from_bytes(side.buf, "big")
                if n < HEADER_LEN:
                    # The length is all the framing there is: after a bad one
                    # the stream cannot be followed, so the direction ends.
                    events.append(Malformed(direction, f"length prefix {n} is shorter than "
                                            f"the {HEADER_LEN}-byte header", side.offset))
                    self._stop(direction)
                    break
                side.body_len = n
                side.consume(2)
                continue
            body = bytes(side.buf)
            start = side.offset
            side.body_len = None
            side.discard()
            try:
                events.append(_decode_once(body, direction))
            except _Bad as e:
                # The framing survived, but the API ends a direction at its
                # first Malformed: what follows a broken message is suspect.
                self._stop(direction)
                events.append(Malformed(direction, e.reason, start + e.offset))
                break
        return events


# --- Detection ------------------------------------------------------------

def _rate(msg: bytes, complete: bool) -> float:
    """How much ``msg`` (one message, possibly cut short) looks like DNS."""
    if len(msg) < HEADER_LEN:
        return NO_MATCH
    b2, b3 = msg[2], msg[3]
    opcode = (b2 >> 3) & 0x0F
    if opcode not in OPCODE_NAMES or b3 & 0x40:   # unassigned opcode / Z bit set
        return NO_MATCH
    if not b2 & 0x80 and b3 & 0x0F:                 # a query carrying an rcode
        return NO_MATCH
    qd, an, ns, ar = (int.from_bytes(msg[i:i + 2], "big") for i in (4, 6, 8, 10))
    if complete and HEADER_LEN + qd * _MIN_QUESTION + (an + ns + ar) * _MIN_RECORD > len(msg):
        return NO_MATCH
    if qd != 1:
        # Other counts are legal (a FORMERR reply or a DSO message has no
        # question) but rare, and without a question name to check twelve
        # bytes of zeros would pass: not enough to call it DNS.
        return NO_MATCH
    if complete:
        # The whole message must decode, and its question is the one checked
        # (decoded once). Decoding keeps what was complete of a message with
        # TC set: a question cut short leaves none, and rates NO_MATCH as an
        # undecodable question does.
        global _probed
        try:
            decoded = decode_message(msg, Direction.TO_SERVER)
        except _Bad:
            return NO_MATCH
        if not decoded.questions or not _class_ok(decoded.questions[0].qclass):
            return NO_MATCH
        _probed = (msg, decoded)
        return CERTAIN
    try:
        q, _ = _Message(msg).question(HEADER_LEN)
    except _Bad:
        return NO_MATCH
    return LIKELY if _class_ok(q.qclass) else NO_MATCH


def _class_ok(qclass: int) -> bool:
    return qclass in _KNOWN_CLASSES or (qclass & 0x7FFF) == 1    # mDNS sets the top bit


# The last whole message probe() rated CERTAIN and its DnsMessage (direction
# TO_SERVER; set by _rate), or None. Detection probes a flow's first payload
# and then hands the same bytes to the flow's new DnsParser: with this the
# message is decoded once, not twice. One entry: it is only ever the message
# just probed; a tuple is swapped whole, so a reader sees a matching pair.
# Another direction (or a plain int for one) is decoded afresh, so the
# event's direction is always the caller's own object.
_probed: tuple[bytes, DnsMessage] | None = None


def _decode_once(msg: bytes, direction: Direction) -> DnsMessage:
    """decode_message, reusing probe()'s decoding of the same bytes (a
    frozen event: sharing it changes nothing)."""
    probed = _probed
    if probed is not None and direction is Direction.TO_SERVER and probed[0] == msg:
        return probed[1]
    return decode_message(msg, direction)


def probe(data: bytes, direction: Direction) -> float:
    """Rate the first payload of a direction as DNS, over UDP or TCP framing.

    The transport is not passed in, so both framings are tried: the payload
    as one datagram, and as a 2-byte length followed by a message (whole if
    the length fits in ``data``, else its beginning). A whole message that
    decodes with one question is CERTAIN; a plausible header with a
    well-formed first question, LIKELY.
    """
    data = bytes(data)
    as_udp = _rate(data, complete=True)
    if as_udp == CERTAIN:                # nothing rates higher: no need to try TCP's framing
        return CERTAIN
    as_tcp = NO_MATCH
    if len(data) >= 2:
        n = int.from_bytes(data[:2], "big")
        if n >= HEADER_LEN:
            body = data[2:2 + n]
            if len(data) == 2:
                as_tcp = POSSIBLE        # a client that sends the prefix on its own
            else:
                as_tcp = _rate(body, complete=len(body) == n)
    return max(as_udp, as_tcp)


# Kernel signatures. Weak on their own: the kernel only tries them on the
# first UDP/TCP payload of a direction and they say nothing beyond the
# header, so 12 bytes of anything with the right flags match; probe() and the
# parser decide. Bytes 2..9 are flags, QDCOUNT, ANCOUNT, NSCOUNT.
# A standard query: QR=0 opcode 0 (byte 2 & 0xf8 == 0; AA/TC/RD free), Z=0
# and RCODE 0 (byte 3 & 0x4f == 0; RA/AD/CD free), one question, no answers,
# no authority records.
_QUERY = (bytes([0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00]),
          bytes([0xF8, 0x4F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]))
# A response to one: QR=1 opcode 0, Z=0, any RCODE, one question.
_RESPONSE = (bytes([0x80, 0x00, 0x00, 0x01]), bytes([0xF8, 0x40, 0xFF, 0xFF]))
SIGNATURES = (
    Signature(2, *_QUERY, direction=Direction.TO_SERVER),       # UDP
    Signature(2, *_RESPONSE, direction=Direction.TO_CLIENT),
    Signature(4, *_QUERY, direction=Direction.TO_SERVER),       # TCP: after the length
    Signature(4, *_RESPONSE, direction=Direction.TO_CLIENT),
)

PLUGIN = ProtocolPlugin(
    name="dns",
    event_kinds=event_kinds(DnsMessage),
    probe=probe,
    parser_factory=lambda transport: DnsParser(transport),
    signatures=SIGNATURES,
    transports=frozenset({"udp", "tcp"}),
    description="DNS (RFC 1035) over UDP and TCP: questions, answers, authority",
)
