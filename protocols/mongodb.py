"""MongoDB wire protocol: OP_MSG, legacy OP_QUERY / OP_REPLY, OP_COMPRESSED.

Every message starts with a 16-byte header of little-endian int32s:
messageLength (header included), requestID, responseTo, opCode. A client's
request has responseTo 0; the server's answer names the request it answers.
Since MongoDB 3.6 drivers send OP_MSG: flag bits, then sections (kind 0: the
command document; kind 1: a document sequence, e.g. the documents of a bulk
insert, with an identifier), then a CRC-32C when checksumPresent is set.
Before that, commands went as OP_QUERY on the collection ``<db>.$cmd`` and
came back as OP_REPLY; OP_COMPRESSED wraps either (snappy, zlib or zstd).

What we report: the command (first element of the command document), the
database (``$db`` in OP_MSG, the part of fullCollectionName before the first
dot in the legacy opcodes), the collection (the command element's value when
it is a string, as in ``{find: "users"}``), and from a reply ``ok`` and
``errmsg``.

BSON: we do not use pymongo's ``bson``. It decodes whole documents into
Python objects (every nested document, array and string of a 16 MB insert)
and raises several exception types on bad input; we need four top-level keys.
``_scan_document`` below walks only element headers: each value is skipped by
its type's fixed size or its own length prefix, nested documents are never
entered, so the cost is one step per top-level element and memory is what
the message head already holds.

Memory: only the first MESSAGE_HEAD_BYTES of a message are kept; the rest is
counted past, however large the header says the message is (up to
MAX_MESSAGE_BYTES, past which it is not MongoDB).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import ClassVar

from protocols.api import (CERTAIN, LIKELY, NO_MATCH, POSSIBLE, DIRECTIONS, Direction, Event, Malformed,
                           ProtocolPlugin, Signature, StreamParser, StreamSide, event_kinds)

HEADER_BYTES = 16
# MongoDB's maxMessageSizeBytes (48,000,000: the server refuses longer
# messages). A header declaring more is not MongoDB.
MAX_MESSAGE_BYTES = 48_000_000
# The prefix of a message kept and read. The command document of OP_MSG is
# small (drivers move bulk documents into kind-1 sequences: the server caps a
# command document at 16 MiB but real ones are a few hundred bytes), and
# `$db`, which drivers append last, is in it. A longer message is read up to
# here (truncated=True) and the rest skipped unread.
MESSAGE_HEAD_BYTES = 64 * 1024
# What one direction holds between calls: at most one message head.
MAX_BUFFERED_BYTES = MESSAGE_HEAD_BYTES
# Characters kept of a string we report (command, database, collection,
# errmsg): MongoDB's own names are at most 255 bytes (namespace limit);
# errmsg can be long and a log line wants its start.
MAX_STRING_BYTES = 256
# Top-level elements of one document walked looking for $db / ok / errmsg.
# Walking is cheap (a header each) but bounded so a head of tiny elements
# costs a known amount: 64 KiB of 2-byte elements is ~32K steps.
MAX_ELEMENTS = 32 * 1024
# Sections of one OP_MSG read (a body and a few sequences in practice).
MAX_SECTIONS = 64
# Document-sequence identifiers reported per message ("documents", "updates").
MAX_SEQUENCES_KEPT = 8

OP_REPLY = 1
OP_UPDATE = 2001
OP_INSERT = 2002
OP_RESERVED = 2003
OP_QUERY = 2004
OP_GET_MORE = 2005
OP_DELETE = 2006
OP_KILL_CURSORS = 2007
OP_COMPRESSED = 2012
OP_MSG = 2013
OPCODE_NAMES = {
    OP_REPLY: "OP_REPLY", OP_UPDATE: "OP_UPDATE", OP_INSERT: "OP_INSERT",
    OP_RESERVED: "OP_RESERVED", OP_QUERY: "OP_QUERY", OP_GET_MORE: "OP_GET_MORE",
    OP_DELETE: "OP_DELETE", OP_KILL_CURSORS: "OP_KILL_CURSORS",
    OP_COMPRESSED: "OP_COMPRESSED", OP_MSG: "OP_MSG",
}
# Opcodes a client sends (OP_MSG and OP_COMPRESSED go both ways).
_CLIENT_OPCODES = frozenset({OP_UPDATE, OP_INSERT, OP_QUERY, OP_GET_MORE, OP_DELETE,
                             OP_KILL_CURSORS, OP_COMPRESSED, OP_MSG})
_SERVER_OPCODES = frozenset({OP_REPLY, OP_COMPRESSED, OP_MSG})
# responseTo of a client's request: 0 as the spec says, -1 from some old
# drivers (seen in the corpus: ndpi-mongodb.pcap, an OP_QUERY getnonce).
_CLIENT_RESPONSE_TO = (0, -1)
# Legacy client opcodes whose body is int32 (flags or ZERO), fullCollectionName.
_NAMESPACE_OPCODES = frozenset({OP_UPDATE, OP_INSERT, OP_QUERY, OP_GET_MORE, OP_DELETE})

# OP_MSG flag bits. Bits 0-15 are "required": a receiver must refuse a
# message with one it does not know; 16-31 are optional.
MSG_CHECKSUM_PRESENT = 1 << 0
MSG_MORE_TO_COME = 1 << 1
MSG_EXHAUST_ALLOWED = 1 << 16
_MSG_REQUIRED_KNOWN = MSG_CHECKSUM_PRESENT | MSG_MORE_TO_COME

# OP_COMPRESSED compressor ids.
COMPRESSORS = {0: "noop", 1: "snappy", 2: "zlib", 3: "zstd"}
_NOOP, _ZLIB = 0, 2

_I32 = struct.Struct("<i")
_HEADER = struct.Struct("<iiii")
_F64 = struct.Struct("<d")
_I64 = struct.Struct("<q")


@dataclass(frozen=True)
class MongoRequest(Event):
    kind: ClassVar[str] = "mongodb_request"
    opcode: int                     # the header's (OP_COMPRESSED: see original_opcode)
    opcode_name: str
    request_id: int
    command: str | None             # first element of the command document
    database: str | None
    collection: str | None
    full_collection_name: str | None = None     # legacy opcodes
    document_sequences: tuple[str, ...] = ()    # OP_MSG kind-1 identifiers
    flags: int = 0
    checksum_present: bool = False
    original_opcode: int | None = None          # OP_COMPRESSED
    compressor: str | None = None               # OP_COMPRESSED
    length: int = 0                             # messageLength
    truncated: bool = False         # read only up to MESSAGE_HEAD_BYTES, or compressed unread


@dataclass(frozen=True)
class MongoResponse(Event):
    kind: ClassVar[str] = "mongodb_response"
    opcode: int
    opcode_name: str
    request_id: int
    response_to: int
    ok: float | None                # the reply document's ok (None: not a command reply)
    errmsg: str | None = None
    code: int | None = None
    flags: int = 0                  # OP_MSG flag bits or OP_REPLY responseFlags
    cursor_id: int | None = None    # OP_REPLY
    starting_from: int | None = None
    number_returned: int | None = None
    original_opcode: int | None = None
    compressor: str | None = None
    length: int = 0
    truncated: bool = False


class BsonError(ValueError):
    """Bad BSON; the message says what and where."""


def _text(raw) -> str:
    return bytes(raw[:MAX_STRING_BYTES]).decode("utf-8", "backslashreplace")


def _cstring(buf, pos: int, end: int) -> tuple[bytes, int]:
    """A NUL-terminated string at ``pos``; (bytes, position after the NUL)."""
    nul = buf.find(b"\0", pos, end)
    if nul < 0:
        raise BsonError(f"string at {pos} has no terminating NUL")
    return bytes(buf[pos:nul]), nul + 1


# Fixed value sizes per BSON element type; types with a length prefix or
# cstrings are handled in _scan_document.
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8,
          0x13: 16, 0xFF: 0, 0x7F: 0}
_STRINGY = (0x02, 0x0D, 0x0E)        # string, JavaScript code, symbol: int32 length + bytes + NUL
_LENGTHY = (0x03, 0x04, 0x0F)        # document, array, code with scope: int32 total length
_WANTED_SCALARS = (0x01, 0x08, 0x10, 0x12)   # double, bool, int32, int64


def _scan_document(buf, pos: int, avail: int, want: frozenset[str],
                   cut: bool = False) -> tuple[dict, bool]:
    """Walk the top-level elements of the BSON document at ``pos``.

    ``avail`` is where the held bytes end (the document may go on past it:
    a message cut at MESSAGE_HEAD_BYTES). Returns ({"": (first name, first
    value), name: value for names in ``want``}, complete) where a value is a
    str, a number or None (any other type). ``cut``: the message goes on
    past ``avail``; otherwise a document running past ``avail`` is bad.
    Raises BsonError on bad BSON inside what is held."""
    if avail - pos < 4:
        raise BsonError(f"document at {pos} cut before its length")
    size = _I32.unpack_from(buf, pos)[0]
    if size < 5:
        raise BsonError(f"document at {pos} declares {size} bytes")
    end = pos + size
    if end > avail and not cut:
        raise BsonError(f"document at {pos} ({size} bytes) runs past its message")
    stop = min(end, avail)
    out: dict = {}
    p = pos + 4
    for _ in range(MAX_ELEMENTS):
        if p >= stop:
            break
        t = buf[p]
        if t == 0:
            if p != end - 1:
                raise BsonError(f"document at {pos} ends at {p}, declared {end}")
            return out, True
        try:
            name_b, p = _cstring(buf, p + 1, stop)
        except BsonError:
            if stop < end:
                break               # the name runs past what we hold
            raise
        value = None
        if t in _FIXED:
            n = _FIXED[t]
            if p + n > stop:
                if stop < end:
                    break
                raise BsonError(f"element {name_b[:32]!r} at {p} runs past its document")
            if t in _WANTED_SCALARS:
                if t == 0x01:
                    value = _F64.unpack_from(buf, p)[0]
                elif t == 0x08:
                    value = buf[p] != 0
                elif t == 0x10:
                    value = _I32.unpack_from(buf, p)[0]
                else:
                    value = _I64.unpack_from(buf, p)[0]
            p += n
        elif t in _STRINGY or t == 0x0C or t in _LENGTHY or t == 0x05:
            if p + 4 > stop:
                if stop < end:
                    break
                raise BsonError(f"element {name_b[:32]!r} at {p} runs past its document")
            n = _I32.unpack_from(buf, p)[0]
            if t in _LENGTHY:
                if n < 5:
                    raise BsonError(f"element {name_b[:32]!r} at {p} declares {n} bytes")
                nxt = p + n
            elif t == 0x05:
                if n < 0:
                    raise BsonError(f"binary {name_b[:32]!r} at {p} declares {n} bytes")
                nxt = p + 5 + n
            else:
                if n < 1:
                    raise BsonError(f"string {name_b[:32]!r} at {p} declares {n} bytes")
                nxt = p + 4 + n + (12 if t == 0x0C else 0)
                if t == 0x02 and nxt <= stop:
                    if buf[p + 4 + n - 1] != 0:
                        raise BsonError(f"string {name_b[:32]!r} at {p} not NUL-terminated")
                    value = _text(buf[p + 4:p + 4 + min(n - 1, MAX_STRING_BYTES)])
            if nxt > end:
                raise BsonError(f"element {name_b[:32]!r} at {p} runs past its document")
            if nxt > stop:
                # A value cut by the head cap: a string's start is still worth reporting.
                if t == 0x02:
                    value = _text(buf[p + 4:stop])
                _keep(out, name_b, value, want)
                p = stop
                break
            p = nxt
        elif t == 0x0B:             # regex: two cstrings
            try:
                _, p = _cstring(buf, p, stop)
                _, p = _cstring(buf, p, stop)
            except BsonError:
                if stop < end:
                    break
                raise
        else:
            raise BsonError(f"element {name_b[:32]!r} at {p} has unknown BSON type 0x{t:02x}")
        _keep(out, name_b, value, want)
    else:
        return out, False           # MAX_ELEMENTS walked: the rest is not looked at
    if stop == end and p >= end:
        raise BsonError(f"document at {pos} has no terminating NUL")
    return out, False


def _keep(out: dict, name_b: bytes, value, want: frozenset[str]) -> None:
    name = _text(name_b)
    if "" not in out:
        out[""] = (name, value)
    if name in want and name not in out:
        out[name] = value


_REQUEST_KEYS = frozenset({"$db"})
_REPLY_KEYS = frozenset({"ok", "errmsg", "code"})


class _Side(StreamSide):
    __slots__ = ("state", "need", "head", "skip", "msg_len", "fields")
    max_buffered = MAX_BUFFERED_BYTES

    def __init__(self, direction: Direction) -> None:
        super().__init__(direction)
        self.state = "header"       # header | body | skip | done
        self.need = HEADER_BYTES
        self.skip = 0               # bytes of the current message still to count past
        self.msg_len = 0
        self.fields = (0, 0, 0)     # requestID, responseTo, opCode

    @property
    def done(self) -> bool:
        return self.state == "done"


class MongoParser(StreamParser):
    def __init__(self) -> None:
        self._sides = {d: _Side(d) for d in DIRECTIONS}

    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        events: list[Event] = []
        if side.state == "skip" and not side.buf:
            # Count past the tail of a long message without copying it.
            side.check_open()
            n = min(side.skip, len(data))
            side.skip -= n
            side.offset += n
            data = data[n:]
            if side.skip:
                return events
            side.state, side.need = "header", HEADER_BYTES
        if not side.accept(data):
            return events
        buf = side.buf
        pos = 0
        while side.state != "done":
            if side.state == "skip":
                n = min(side.skip, len(buf) - pos)
                pos += n
                side.skip -= n
                if side.skip:
                    break
                side.state, side.need = "header", HEADER_BYTES
                continue
            if len(buf) - pos < side.need:
                break
            at = side.offset + pos
            if side.state == "header":
                length, req_id, resp_to, opcode = _HEADER.unpack_from(buf, pos)
                why = _header_problem(length, opcode)
                if why:
                    self._fail(side, events, why, at)
                    break
                side.msg_len, side.fields = length, (req_id, resp_to, opcode)
                side.state = "body"
                side.need = min(length, MESSAGE_HEAD_BYTES)
                continue
            # A message head is held: read it, then skip the rest of the message.
            head = bytes(buf[pos:pos + side.need])
            truncated = side.msg_len > side.need
            ev = self._message(direction, head, side.msg_len, side.fields, truncated, at)
            events.append(ev)
            pos += side.need
            if isinstance(ev, Malformed):
                side.state = "done"
                break
            side.skip = side.msg_len - side.need
            side.state, side.need = ("skip", 0) if side.skip else ("header", HEADER_BYTES)
        side.consume(len(buf) if side.done else pos)
        return events

    def receive_eof(self, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        side.eof = True
        if side.state == "done":
            return []
        if side.state == "header" and not side.buf:
            return []
        side.state = "done"
        side.discard()
        return [Malformed(direction, "stream ended inside a message", side.offset)]

    def receive_gap(self, direction: Direction, size: int) -> list[Event]:
        side = self._sides[direction]
        if side.state == "done":
            return []
        side.state = "done"
        side.discard()
        return [Malformed(direction, f"gap of {size} bytes in the stream", -1)]

    @staticmethod
    def _fail(side: _Side, events: list[Event], reason: str, at: int) -> None:
        events.append(Malformed(side.direction, reason, at))
        side.state = "done"

    def _message(self, d: Direction, head: bytes, length: int, fields, truncated: bool,
                 at: int) -> Event:
        req_id, resp_to, opcode = fields
        try:
            return _decode(d, head, length, req_id, resp_to, opcode, truncated)
        except BsonError as e:
            return Malformed(d, f"{OPCODE_NAMES.get(opcode, opcode)}: {e} (message at {at})", at)
        except (struct.error, IndexError) as e:     # a field cut by the message's end
            return Malformed(d, f"{OPCODE_NAMES.get(opcode, opcode)}: message too short ({e}) "
                                f"(message at {at})", at)


def _header_problem(length: int, opcode: int) -> str | None:
    if not HEADER_BYTES <= length <= MAX_MESSAGE_BYTES:
        return f"message length {length} outside {HEADER_BYTES}..{MAX_MESSAGE_BYTES}"
    if opcode not in OPCODE_NAMES:
        return f"unknown opcode {opcode}"
    return None


def _decode(d: Direction, head: bytes, length: int, req_id: int, resp_to: int, opcode: int,
            truncated: bool) -> Event:
    """One message from its head (header included, at most MESSAGE_HEAD_BYTES)."""
    original = compressor = None
    body, body_op = head, opcode
    if opcode == OP_COMPRESSED:
        if len(head) < HEADER_BYTES + 9:
            raise BsonError("OP_COMPRESSED shorter than its fixed fields")
        original, size = struct.unpack_from("<ii", head, HEADER_BYTES)
        cid = head[HEADER_BYTES + 8]
        compressor = COMPRESSORS.get(cid, f"unknown({cid})")
        if original not in OPCODE_NAMES or original == OP_COMPRESSED:
            raise BsonError(f"OP_COMPRESSED wraps opcode {original}")
        if size < 0 or size > MAX_MESSAGE_BYTES:
            raise BsonError(f"OP_COMPRESSED uncompressedSize {size} out of range")
        payload = head[HEADER_BYTES + 9:]
        inner = None
        if cid == _NOOP:
            inner = payload
        elif cid == _ZLIB and not truncated:
            inner = _inflate(payload)
        if inner is None:           # snappy/zstd (no stdlib decoder), or cut: recognised only
            return _event(d, opcode, req_id, resp_to, length, original=original,
                          compressor=compressor, truncated=True)
        truncated = truncated or len(inner) < size
        body, body_op = head[:HEADER_BYTES] + inner, original
    fields = _read_body(body_op, body, truncated)
    return _event(d, opcode, req_id, resp_to, length, original=original, compressor=compressor,
                  truncated=truncated or fields.pop("_cut", False), **fields)


def _inflate(payload: bytes) -> bytes | None:
    """zlib-compressed message body, at most MESSAGE_HEAD_BYTES of it (a
    decompression bomb stops there); None if it is not zlib."""
    try:
        z = zlib.decompressobj()
        return z.decompress(payload, MESSAGE_HEAD_BYTES - HEADER_BYTES)
    except zlib.error:
        return None


def _read_body(opcode: int, m: bytes, truncated: bool) -> dict:
    """The fields of one message's body; ``m`` is its head (header
    included), ``truncated``: the message goes on past ``m``."""
    p = HEADER_BYTES
    out: dict = {}
    if opcode == OP_MSG:
        flags = struct.unpack_from("<I", m, p)[0]
        unknown = flags & 0xFFFF & ~_MSG_REQUIRED_KNOWN
        if unknown:
            raise BsonError(f"OP_MSG sets unknown required flag bits 0x{unknown:x}")
        out["flags"] = flags
        end = len(m)
        if flags & MSG_CHECKSUM_PRESENT:
            out["checksum_present"] = True
            if not truncated:
                end -= 4        # the CRC-32C (not checked: the stdlib has no CRC-32C)
        p += 4
        seqs: list[str] = []
        body = None
        for _ in range(MAX_SECTIONS):
            if p >= end:
                break
            kind = m[p]
            if kind == 0:
                doc, complete = _scan_document(m, p + 1, end, _REQUEST_KEYS | _REPLY_KEYS,
                                               truncated)
                if body is None:
                    body = doc
                if not complete:
                    out["_cut"] = True
                    break
                p += 1 + _I32.unpack_from(m, p + 1)[0]
            elif kind == 1:
                if p + 5 > end:
                    out["_cut"] = True
                    break
                size = _I32.unpack_from(m, p + 1)[0]
                if size < 5:
                    raise BsonError(f"document sequence at {p} declares {size} bytes")
                if p + 1 + size > end and not truncated:
                    raise BsonError(f"document sequence at {p} runs past the message")
                try:
                    ident, _ = _cstring(m, p + 5, min(p + 1 + size, end))
                except BsonError:
                    if p + 1 + size <= end:
                        raise
                    out["_cut"] = True
                    break
                if len(seqs) < MAX_SEQUENCES_KEPT:
                    seqs.append(_text(ident))
                p += 1 + size
            else:
                raise BsonError(f"OP_MSG section kind {kind} at {p}")
        if p > end and not truncated:
            raise BsonError("OP_MSG section runs past the message")
        if body is None and not out.get("_cut"):
            raise BsonError("OP_MSG without a body section")
        out["document_sequences"] = tuple(seqs)
        body = body or {}
        name, value = body.get("", (None, None))
        out["command"] = name
        out["collection"] = value if isinstance(value, str) else None
        db = body.get("$db")
        out["database"] = db if isinstance(db, str) else None
        _reply_fields(out, body)
    elif opcode == OP_REPLY:
        flags, cursor, start, n = struct.unpack_from("<iqii", m, p)
        out.update(flags=flags, cursor_id=cursor, starting_from=start, number_returned=n)
        p += 20
        if n > 0 and p < len(m):
            doc, complete = _scan_document(m, p, len(m), _REPLY_KEYS, truncated)
            out["_cut"] = not complete
            _reply_fields(out, doc)
    elif opcode in _NAMESPACE_OPCODES:
        flags = _I32.unpack_from(m, p)[0]
        ns_b, p = _cstring(m, p + 4, len(m))
        ns = _text(ns_b)
        db, _, coll = ns.partition(".")
        out.update(flags=flags, full_collection_name=ns, database=db or None)
        if opcode == OP_QUERY and coll == "$cmd":
            p += 8                  # numberToSkip, numberToReturn
            if p + 4 > len(m):
                raise BsonError("OP_QUERY cut before its query document")
            doc, complete = _scan_document(m, p, len(m), frozenset(), truncated)
            out["_cut"] = not complete
            name, value = doc.get("", (None, None))
            out["command"] = name
            out["collection"] = value if isinstance(value, str) else None
        else:
            out["collection"] = coll or None
    return out


def _reply_fields(out: dict, doc: dict) -> None:
    ok = doc.get("ok")
    if isinstance(ok, (bool, int, float)):
        out["ok"] = float(ok)
    msg = doc.get("errmsg")
    if isinstance(msg, str):
        out["errmsg"] = msg
    code = doc.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        out["code"] = code


def _event(d: Direction, opcode: int, req_id: int, resp_to: int, length: int, *,
           original=None, compressor=None, truncated=False, **f) -> Event:
    name = OPCODE_NAMES[opcode]
    if d == Direction.TO_SERVER:
        return MongoRequest(opcode, name, req_id, f.get("command"), f.get("database"),
                            f.get("collection"), f.get("full_collection_name"),
                            f.get("document_sequences", ()), f.get("flags", 0),
                            f.get("checksum_present", False), original, compressor, length,
                            truncated)
    return MongoResponse(opcode, name, req_id, resp_to, f.get("ok"), f.get("errmsg"), f.get("code"),
                         f.get("flags", 0), f.get("cursor_id"), f.get("starting_from"),
                         f.get("number_returned"), original, compressor, length, truncated)


def probe(data: bytes, direction: Direction) -> float:
    """Rate the first bytes of one direction as MongoDB: a plausible header
    (length 16..MAX_MESSAGE_BYTES, a known opcode, responseTo 0 or -1
    from a client, neither from a server), CERTAIN when the body's start agrees too."""
    if len(data) < HEADER_BYTES:
        return NO_MATCH
    length, _, resp_to, opcode = _HEADER.unpack_from(data)
    if not HEADER_BYTES <= length <= MAX_MESSAGE_BYTES:
        return NO_MATCH
    if direction == Direction.TO_SERVER:
        if opcode not in _CLIENT_OPCODES or resp_to not in _CLIENT_RESPONSE_TO:
            return NO_MATCH
    elif opcode not in _SERVER_OPCODES or resp_to in _CLIENT_RESPONSE_TO:
        return NO_MATCH
    head = data[:min(length, MESSAGE_HEAD_BYTES)]
    if len(head) < length and len(head) < 64:
        return LIKELY if direction == Direction.TO_SERVER else POSSIBLE
    try:
        _decode(direction, head, length, 0, resp_to, opcode, len(head) < length)
    except (BsonError, struct.error, IndexError):
        return POSSIBLE
    return CERTAIN if opcode in (OP_MSG, OP_QUERY, OP_REPLY) else LIKELY


# responseTo then the opcode: a client's first OP_MSG, OP_QUERY or
# OP_COMPRESSED. One 8-byte shape at offset 8 (the kernel pays per shape).
_SIGNATURES = (
    *(Signature(8, b"\0\0\0\0" + struct.pack("<i", op)) for op in (OP_MSG, OP_QUERY, OP_COMPRESSED)),
    Signature(8, b"\xff\xff\xff\xff" + struct.pack("<i", OP_QUERY)),   # old drivers' -1
)

PLUGIN = ProtocolPlugin(
    name="mongodb",
    event_kinds=event_kinds(MongoRequest, MongoResponse),
    probe=probe,
    parser_factory=lambda transport: MongoParser(),
    signatures=_SIGNATURES,
    transports=frozenset({"tcp"}),
    description="MongoDB wire protocol: OP_MSG, OP_QUERY/OP_REPLY, OP_COMPRESSED",
)
