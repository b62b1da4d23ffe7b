"""PostgreSQL frontend/backend protocol 3: startup, authentication, queries, results.

The client speaks first, with a message that has no type byte: a 4-byte
big-endian length (itself included) and a 4-byte code. The code is the
protocol version (3.0 = 0x00030000, then NUL-terminated name/value pairs:
user, database, application_name, ...), or one of three request codes:
SSLRequest and GSSENCRequest (8 bytes; the server answers with one byte, 'S'
to go on in TLS / GSSAPI encryption or 'N' to stay in the clear, after which
the client sends its startup) and CancelRequest (process id and secret key
of another connection; nothing follows). Every later message in either
direction is typed: 1 type byte, a 4-byte length (itself included, the type
not), the body.

After an 'S' to an SSLRequest the connection is TLS: the parser emits
:class:`PgTls` (a tunnel event, slowpath/analyzer.py TUNNEL_EVENTS) with the
bytes that followed, and the analyzer detects TLS in them, as after MySQL's
switch. After GSSAPI encryption nothing is readable and the parser stops.

Only the first MESSAGE_HEAD_BYTES of a message are kept; the rest, and the
whole of a DataRow or CopyData message, are counted and skipped as they
arrive, so memory stays bounded whatever the peers send.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocols.api import (CERTAIN, LIKELY, NO_MATCH, DIRECTIONS, Direction, Event, Malformed,
                           ProtocolPlugin, Signature, StreamParser, StreamSide, event_kinds)

# Request codes in place of a protocol version (PostgreSQL's pqcomm.h).
SSL_REQUEST_CODE = 80877103          # 0x04d2162f
GSSENC_REQUEST_CODE = 80877104       # 0x04d21630
CANCEL_REQUEST_CODE = 80877102       # 0x04d2162e
PROTOCOL_3 = 3
# The server refuses a startup packet longer than this
# (MAX_STARTUP_PACKET_LENGTH in the server's backend_startup.c), so a longer
# one is not PostgreSQL.
MAX_STARTUP_BYTES = 10000
# The longest typed message we accept the declared length of. The server
# refuses anything its allocator cannot hold (MaxAllocSize, 1 GiB - 1); a
# longer length is garbage, not a big message. It bounds a declared length,
# not memory: past MESSAGE_HEAD_BYTES a message is skipped, never held.
MAX_MESSAGE_BYTES = (1 << 30) - 1
# The longest prefix of a typed message kept for decoding. It holds an error
# report's severity, code and message (the server's own messages are short;
# a detail or hint may be cut), a ParameterStatus, an authentication request
# with its SASL mechanism list, and a query up to MAX_QUERY_BYTES with its
# statement name. The rest of a message is skipped unread.
MESSAGE_HEAD_BYTES = 8192
# Query text reported per Query or Parse. Enough for the statement shape a
# SIEM or a rule looks at; bulk INSERTs and COPY ... FROM STDIN bodies run to
# megabytes and are cut (truncated=True), as protocols/mysql.py does.
MAX_QUERY_BYTES = 4096
# Client bytes held after an SSLRequest or GSSENCRequest until the server's
# one-byte answer arrives (normally none: the client waits for it; on a
# capture both sides may come in any order). A TLS ClientHello is under
# 2 KiB, a startup under MAX_STARTUP_BYTES; more is not a well-behaved client.
MAX_HELD_BEFORE_ANSWER = MAX_STARTUP_BYTES + 8
# What one direction holds between calls: a startup message, the head of a
# typed message, or the client's bytes awaiting the server's answer.
MAX_BUFFERED_BYTES = max(MAX_STARTUP_BYTES, MESSAGE_HEAD_BYTES + 5, MAX_HELD_BEFORE_ANSWER)
# Startup parameters kept (user, database, application_name, client_encoding,
# options, ...: psql and drivers send under ten) and bytes of each value.
MAX_STARTUP_PARAMS = 32
MAX_VALUE_BYTES = 256
# SASL mechanisms kept from one authentication request (servers offer two).
MAX_SASL_MECHANISMS = 8

# Message types each side may send (the protocol's message formats).
FRONTEND_TYPES = frozenset(b"QPBEDSHCXpdcfF")
BACKEND_TYPES = frozenset(b"RSKZTDCEINn123stAGHWdcVv")
# Messages whose bodies are never decoded, only counted: they carry table data.
_COUNTED_ONLY = frozenset(b"dD")

# Authentication request codes ('R' messages) -> the names tshark gives them.
AUTH_METHODS = {0: "ok", 2: "kerberos-v5", 3: "cleartext-password", 5: "md5-password",
                6: "scm-credential", 7: "gss", 8: "gss-continue", 9: "sspi", 10: "sasl",
                11: "sasl-continue", 12: "sasl-final"}
# Extended-protocol messages reported by name (PgExtended).
_EXTENDED = {ord("B"): "bind", ord("E"): "execute", ord("D"): "describe", ord("S"): "sync",
             ord("H"): "flush", ord("C"): "close", ord("F"): "function_call",
             ord("c"): "copy_done", ord("f"): "copy_fail"}


@dataclass(frozen=True)
class PgStartup(Event):
    kind: ClassVar[str] = "pgsql_startup"
    protocol_version: str                     # "3.0"
    user: str | None
    database: str | None
    application_name: str | None
    parameters: tuple[tuple[str, str], ...]   # all of them, in order (at most MAX_STARTUP_PARAMS)


@dataclass(frozen=True)
class PgSslRequest(Event):
    """SSLRequest or GSSENCRequest: the client asks to encrypt."""
    kind: ClassVar[str] = "pgsql_ssl_request"
    gss: bool = False


@dataclass(frozen=True)
class PgSslResponse(Event):
    """The server's one-byte answer to an SSLRequest / GSSENCRequest."""
    kind: ClassVar[str] = "pgsql_ssl_response"
    accepted: bool                 # 'S' (go on encrypted) or 'N'
    gss: bool = False


@dataclass(frozen=True)
class PgTls(Event):
    """The connection goes on in TLS; ``rest`` is what followed, per direction."""
    kind: ClassVar[str] = "pgsql_tls"
    rest: tuple[tuple[Direction, bytes], ...] = ()


@dataclass(frozen=True)
class PgCancelRequest(Event):
    kind: ClassVar[str] = "pgsql_cancel_request"
    process_id: int
    secret_key: int


@dataclass(frozen=True)
class PgAuthRequest(Event):
    kind: ClassVar[str] = "pgsql_auth_request"
    code: int
    method: str                    # AUTH_METHODS name, or "unknown-<code>"
    mechanisms: tuple[str, ...] = ()   # SASL: what the server offers


@dataclass(frozen=True)
class PgAuthResponse(Event):
    """The client's password / SASL / GSS message: never its secret, only the
    SASL mechanism it chose (SASLInitialResponse)."""
    kind: ClassVar[str] = "pgsql_auth_response"
    mechanism: str | None


@dataclass(frozen=True)
class PgParameterStatus(Event):
    kind: ClassVar[str] = "pgsql_parameter_status"
    name: str
    value: str


@dataclass(frozen=True)
class PgBackendKeyData(Event):
    kind: ClassVar[str] = "pgsql_backend_key"
    process_id: int
    secret_key: int


@dataclass(frozen=True)
class PgReadyForQuery(Event):
    kind: ClassVar[str] = "pgsql_ready"
    status: str                    # I (idle), T (in a transaction), E (failed transaction)


@dataclass(frozen=True)
class PgQuery(Event):
    """A simple Query, or the statement of an extended-protocol Parse."""
    kind: ClassVar[str] = "pgsql_query"
    type: str                      # "simple" or "parse"
    query: str                     # at most MAX_QUERY_BYTES of it
    length: int                    # bytes of the whole statement
    truncated: bool
    statement: str = ""            # Parse: the prepared statement's name ("" = unnamed)


@dataclass(frozen=True)
class PgExtended(Event):
    """Bind, Execute, Describe, Sync, Flush, Close, FunctionCall, CopyDone, CopyFail."""
    kind: ClassVar[str] = "pgsql_extended"
    message: str


@dataclass(frozen=True)
class PgRowDescription(Event):
    kind: ClassVar[str] = "pgsql_row_description"
    field_count: int


@dataclass(frozen=True)
class PgCommandComplete(Event):
    kind: ClassVar[str] = "pgsql_command_complete"
    tag: str                       # "SELECT 2", "INSERT 0 1", "CREATE TABLE"
    data_rows: int                 # DataRow messages since the last completion
    data_size: int                 # bytes of their bodies


@dataclass(frozen=True)
class PgError(Event):
    kind: ClassVar[str] = "pgsql_error"
    severity: str | None           # V (untranslated) else S
    code: str | None               # SQLSTATE
    message: str | None
    fields: tuple[tuple[str, str], ...] = ()   # every field, by its one-letter code


@dataclass(frozen=True)
class PgNotice(PgError):
    kind: ClassVar[str] = "pgsql_notice"


@dataclass(frozen=True)
class PgCopy(Event):
    """CopyInResponse / CopyOutResponse / CopyBothResponse."""
    kind: ClassVar[str] = "pgsql_copy"
    mode: str                      # "in", "out", "both"
    columns: int


@dataclass(frozen=True)
class PgTerminate(Event):
    kind: ClassVar[str] = "pgsql_terminate"


_DATA_ROW = ord("D")


def _skim_rows(buf: bytearray, pos: int) -> tuple[int, int]:
    """(end, count) of the whole, well-formed DataRow messages from ``pos``:
    a DataRow split across calls, or one with a bad length, is left to the
    general path (which skips the first and fails on the second)."""
    n = 0
    size = len(buf)
    while pos + 5 <= size and buf[pos] == _DATA_ROW:
        length = int.from_bytes(buf[pos + 1:pos + 5], "big")
        if length < 4 or pos + 1 + length > size:
            break
        pos += 1 + length
        n += 1
    return pos, n


def _text(raw: bytes) -> str:
    return bytes(raw).decode("utf-8", "backslashreplace")


def _cstring(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    end = buf.find(b"\x00", pos)
    if end < 0:
        return None
    return buf[pos:end], end + 1


class _Side(StreamSide):
    __slots__ = ("state", "skip", "msg_type", "msg_len", "head_len", "msg_offset")
    max_buffered = MAX_BUFFERED_BYTES

    def __init__(self, direction: Direction) -> None:
        super().__init__(direction)
        # startup (client, untyped) | wait (client, until the SSL answer) |
        # answer (server, the one-byte SSL answer) | header | head | skip | done
        self.state = "startup" if direction == Direction.TO_SERVER else "header"
        self.skip = 0
        self.msg_type = 0
        self.msg_len = 0             # body bytes (the length field excluded)
        self.head_len = 0
        self.msg_offset = 0

    @property
    def done(self) -> bool:
        return self.state == "done"


class PostgresParser(StreamParser):
    def __init__(self) -> None:
        self._sides = {d: _Side(d) for d in DIRECTIONS}
        self._rows = 0               # DataRows since the last CommandComplete
        self._row_bytes = 0
        self._asked_gss = False      # the pending request is GSSENCRequest, not SSLRequest

    # --- framing -------------------------------------------------------------

    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        if not side.accept(data):
            return []
        events: list[Event] = []
        self._run(side, events)
        server = self._sides[Direction.TO_CLIENT]
        if direction == Direction.TO_SERVER and server.state == "answer" and server.buf:
            # The server's answer was fed before the request (a capture's order).
            self._run(server, events)
        return events

    def _run(self, side: _Side, events: list[Event]) -> None:
        buf = side.buf
        pos = 0
        d = side.direction
        while side.state != "done":
            avail = len(buf) - pos
            st = side.state
            if st == "wait":
                if avail > MAX_HELD_BEFORE_ANSWER:
                    self._fail(side, events, "client sent too much before the SSL answer",
                               side.offset + pos)
                break
            if st == "skip":
                n = min(side.skip, avail)
                pos += n
                side.skip -= n
                if side.skip:
                    break
                side.state = "header"
            elif st == "answer":
                if not avail:
                    break
                if buf[pos] in b"SN":
                    pos += 1
                    if self._answer(buf[pos - 1] == ord("S"), buf, pos, events):
                        pos = len(buf)
                        break
                else:
                    # An old server answers with an ErrorResponse: typed from here on.
                    side.state = "header"
                    self._release_client(events)
            elif st == "startup":
                if avail < 8:
                    break
                length = int.from_bytes(buf[pos:pos + 4], "big")
                if not 8 <= length <= MAX_STARTUP_BYTES:
                    self._fail(side, events, f"startup message length {length}", side.offset + pos)
                    break
                if avail < length:
                    break
                body = bytes(buf[pos + 4:pos + length])
                side.msg_offset = side.offset + pos
                pos += length
                self._startup(side, body, events)
            elif st == "header":
                if avail < 5:
                    break
                t = buf[pos]
                if t == _DATA_ROW and d == Direction.TO_CLIENT:
                    # A result set is a run of DataRows: count the whole ones
                    # here, without a trip through the states for each.
                    end, rows = _skim_rows(buf, pos)
                    if rows:
                        self._rows += rows
                        self._row_bytes += end - pos - 5 * rows
                        pos = end
                        continue
                length = int.from_bytes(buf[pos + 1:pos + 5], "big")
                allowed = FRONTEND_TYPES if d == Direction.TO_SERVER else BACKEND_TYPES
                if t not in allowed:
                    self._fail(side, events, f"unknown message type 0x{t:02x}", side.offset + pos)
                    break
                if not 4 <= length <= MAX_MESSAGE_BYTES:
                    self._fail(side, events, f"message {chr(t)!r} length {length}", side.offset + pos)
                    break
                side.msg_type = t
                side.msg_len = length - 4
                side.msg_offset = side.offset + pos
                side.head_len = 0 if t in _COUNTED_ONLY else min(side.msg_len, MESSAGE_HEAD_BYTES)
                pos += 5
                side.state = "head"
            else:   # head
                if avail < side.head_len:
                    break
                head = bytes(buf[pos:pos + side.head_len])
                pos += side.head_len
                side.skip = side.msg_len - side.head_len
                side.state = "skip"
                self._message(side, head, events)
        side.consume(len(buf) if side.done else pos)

    def receive_eof(self, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        side.eof = True
        if side.state == "done" or (side.state in ("header", "startup", "answer", "wait")
                                    and not side.buf):
            side.state = "done"
            return []
        side.state = "done"
        return [Malformed(direction, "stream ended inside a message", side.offset)]

    def receive_gap(self, direction: Direction, size: int) -> list[Event]:
        side = self._sides[direction]
        if side.state == "done":
            return []
        side.state = "done"
        return [Malformed(direction, f"gap of {size} bytes in the stream", -1)]

    def _fail(self, side: _Side, events: list[Event], reason: str, offset: int) -> None:
        events.append(Malformed(side.direction, reason, offset))
        side.state = "done"

    def _stop_both(self) -> None:
        for side in self._sides.values():
            side.state = "done"

    # --- the SSL / GSSAPI negotiation ---------------------------------------

    def _answer(self, accepted: bool, buf: bytearray, pos: int, events: list[Event]) -> bool:
        """The server's one-byte answer; True when the parser has stopped."""
        client = self._sides[Direction.TO_SERVER]
        gss = self._asked_gss
        events.append(PgSslResponse(accepted, gss))
        if accepted:
            if not gss:
                rest = []
                if client.buf:
                    rest.append((Direction.TO_SERVER, bytes(client.buf)))
                if pos < len(buf):
                    rest.append((Direction.TO_CLIENT, bytes(buf[pos:])))
                events.append(PgTls(tuple(rest)))
            self._stop_both()           # TLS goes to the analyzer; GSSAPI is unreadable
            client.discard()
            return True
        self._sides[Direction.TO_CLIENT].state = "header"
        self._release_client(events)
        return False

    def _release_client(self, events: list[Event]) -> None:
        client = self._sides[Direction.TO_SERVER]
        if client.state == "wait":
            # Called from the server's side only, so the client's is not mid-run.
            client.state = "startup"
            self._run(client, events)

    # --- messages ------------------------------------------------------------

    def _startup(self, side: _Side, body: bytes, events: list[Event]) -> None:
        code = int.from_bytes(body[:4], "big")
        if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE) and len(body) == 4:
            gss = code == GSSENC_REQUEST_CODE
            events.append(PgSslRequest(gss))
            self._asked_gss = gss
            side.state = "wait"
            server = self._sides[Direction.TO_CLIENT]
            if server.state == "header":
                # Its bytes, if any came first, are read after this call's (receive_data).
                server.state = "answer"
            return
        if code == CANCEL_REQUEST_CODE and len(body) == 12:
            events.append(PgCancelRequest(int.from_bytes(body[4:8], "big"),
                                          int.from_bytes(body[8:12], "big")))
            side.state = "done"          # nothing follows on a cancel connection
            return
        major, minor = code >> 16, code & 0xFFFF
        if major != PROTOCOL_3:
            return self._fail(side, events, f"startup protocol version {major}.{minor}", side.msg_offset)
        params: list[tuple[str, str]] = []
        pos = 4
        while pos < len(body) and body[pos] != 0:
            name = _cstring(body, pos)
            value = _cstring(body, name[1]) if name else None
            if value is None:
                return self._fail(side, events, "startup parameters not NUL-terminated", side.msg_offset)
            if len(params) < MAX_STARTUP_PARAMS:
                params.append((_text(name[0][:MAX_VALUE_BYTES]), _text(value[0][:MAX_VALUE_BYTES])))
            pos = value[1]
        if pos >= len(body):
            return self._fail(side, events, "startup message without its final NUL", side.msg_offset)
        get = dict(params).get
        events.append(PgStartup(f"{major}.{minor}", get("user"), get("database"),
                                get("application_name"), tuple(params)))
        side.state = "header"

    def _message(self, side: _Side, head: bytes, events: list[Event]) -> None:
        t = side.msg_type
        if side.direction == Direction.TO_SERVER:
            self._frontend(side, t, head, events)
        else:
            self._backend(side, t, head, events)

    def _frontend(self, side: _Side, t: int, head: bytes, events: list[Event]) -> None:
        c = chr(t)
        if c == "Q":
            end = head.find(b"\x00")
            if side.msg_len <= len(head):       # the whole message is here
                if end < 0:
                    return self._fail(side, events, "query text not NUL-terminated", side.msg_offset)
                text, length = head[:end], end
            else:                               # cut at the head limit
                text = head[:end] if end >= 0 else head
                length = end if end >= 0 else side.msg_len - 1
            events.append(PgQuery("simple", _text(text[:MAX_QUERY_BYTES]), length,
                                  length > MAX_QUERY_BYTES))
        elif c == "P":
            name = _cstring(head, 0)
            if name is None:
                return self._fail(side, events, "Parse statement name not NUL-terminated",
                                  side.msg_offset)
            rest = head[name[1]:]
            end = rest.find(b"\x00")
            if end < 0 and side.msg_len <= len(head):
                return self._fail(side, events, "Parse query not NUL-terminated", side.msg_offset)
            text = rest[:end] if end >= 0 else rest
            # Cut at the head: the whole statement is at most what remains of the message.
            length = len(text) if end >= 0 else side.msg_len - name[1] - 1
            events.append(PgQuery("parse", _text(text[:MAX_QUERY_BYTES]), length,
                                  length > MAX_QUERY_BYTES, _text(name[0][:MAX_VALUE_BYTES])))
        elif c == "X":
            events.append(PgTerminate())
        elif c == "p":
            # SASLInitialResponse starts with the mechanism name; a password or
            # a SASL / GSS continuation does not name one we report.
            mech = _cstring(head, 0)
            name = mech[0] if mech and mech[0].startswith(b"SCRAM-") else None
            events.append(PgAuthResponse(_text(name[:MAX_VALUE_BYTES]) if name else None))
        elif c == "d":
            pass                                   # CopyData: counted past
        else:
            events.append(PgExtended(_EXTENDED[t]))

    def _backend(self, side: _Side, t: int, head: bytes, events: list[Event]) -> None:
        c = chr(t)
        if c == "D":
            self._rows += 1
            self._row_bytes += side.msg_len
        elif c == "R":
            if len(head) < 4:
                return self._fail(side, events, "authentication request truncated", side.msg_offset)
            code = int.from_bytes(head[:4], "big")
            mechs: list[str] = []
            if code == 10:
                pos = 4
                while pos < len(head) and head[pos] != 0 and len(mechs) < MAX_SASL_MECHANISMS:
                    m = _cstring(head, pos)
                    if m is None:
                        break
                    mechs.append(_text(m[0][:MAX_VALUE_BYTES]))
                    pos = m[1]
            events.append(PgAuthRequest(code, AUTH_METHODS.get(code, f"unknown-{code}"), tuple(mechs)))
        elif c == "S":
            name = _cstring(head, 0)
            value = _cstring(head, name[1]) if name else None
            if value is None:
                return self._fail(side, events, "ParameterStatus not NUL-terminated", side.msg_offset)
            events.append(PgParameterStatus(_text(name[0][:MAX_VALUE_BYTES]),
                                            _text(value[0][:MAX_VALUE_BYTES])))
        elif c == "K":
            if len(head) < 8:
                return self._fail(side, events, "BackendKeyData truncated", side.msg_offset)
            # Protocol 3.2 allows a longer key; its first 4 bytes are reported.
            events.append(PgBackendKeyData(int.from_bytes(head[:4], "big"),
                                           int.from_bytes(head[4:8], "big")))
        elif c == "Z":
            if len(head) < 1:
                return self._fail(side, events, "ReadyForQuery truncated", side.msg_offset)
            events.append(PgReadyForQuery(chr(head[0])))
        elif c == "T":
            if len(head) < 2:
                return self._fail(side, events, "RowDescription truncated", side.msg_offset)
            events.append(PgRowDescription(int.from_bytes(head[:2], "big")))
            self._rows = self._row_bytes = 0
        elif c == "C":
            tag = _cstring(head, 0)
            text = tag[0] if tag else head
            events.append(PgCommandComplete(_text(text[:MAX_VALUE_BYTES]), self._rows, self._row_bytes))
            self._rows = self._row_bytes = 0
        elif c in "EN":
            fields: list[tuple[str, str]] = []
            pos = 0
            while pos < len(head) and head[pos] != 0:
                f = _cstring(head, pos + 1)
                if f is None:           # cut at the head limit: keep what is whole
                    break
                fields.append((chr(head[pos]), _text(f[0][:MESSAGE_HEAD_BYTES])))
                pos = f[1]
            get = dict(fields).get
            cls = PgError if c == "E" else PgNotice
            events.append(cls(get("V") or get("S"), get("C"), get("M"), tuple(fields)))
        elif c in "GHW":
            if len(head) < 3:
                return self._fail(side, events, "Copy response truncated", side.msg_offset)
            events.append(PgCopy({"G": "in", "H": "out", "W": "both"}[c],
                                 int.from_bytes(head[1:3], "big")))
        # other backend messages (ParseComplete, BindComplete, NoData, CopyData, ...)
        # carry nothing a log reports


def _printable(b: bytes) -> bool:
    return all(0x20 <= c < 0x7F for c in b)


def _typed_chain(data: bytes, allowed: frozenset) -> int:
    """Complete typed messages at the start of ``data`` before one that is not
    well-formed; -1 when the first is not."""
    pos = n = 0
    while pos + 5 <= len(data):
        t = data[pos]
        length = int.from_bytes(data[pos + 1:pos + 5], "big")
        if t not in allowed or not 4 <= length <= MAX_MESSAGE_BYTES:
            return n if n else -1
        if pos + 1 + length > len(data):
            break
        pos += 1 + length
        n += 1
    return n


def probe(data: bytes, direction: Direction) -> float:
    """Rate the first bytes of one direction as PostgreSQL."""
    if direction == Direction.TO_SERVER and len(data) >= 8:
        length = int.from_bytes(data[:4], "big")
        code = int.from_bytes(data[4:8], "big")
        if length == 8 and code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
            return CERTAIN
        if length == 16 and code == CANCEL_REQUEST_CODE:
            return CERTAIN
        if code >> 16 == PROTOCOL_3 and code & 0xFFFF < 16 and 9 <= length <= MAX_STARTUP_BYTES:
            # Parameter names are lowercase words ("user", "database", "options").
            name = data[8:min(len(data), length)].split(b"\x00", 1)[0]
            if name and _printable(name):
                return CERTAIN
            return NO_MATCH
    if len(data) < 5:
        return NO_MATCH
    allowed = FRONTEND_TYPES if direction == Direction.TO_SERVER else BACKEND_TYPES
    t = data[0]
    length = int.from_bytes(data[1:5], "big")
    if t not in allowed or not 4 <= length <= MAX_MESSAGE_BYTES:
        return NO_MATCH
    if direction == Direction.TO_CLIENT and t == ord("R"):
        # An authentication request (the server's first message): a known code.
        if length >= 8 and len(data) >= 9 and int.from_bytes(data[5:9], "big") in AUTH_METHODS:
            return LIKELY
        return NO_MATCH
    if t == ord("Q") and direction == Direction.TO_SERVER:
        # A simple query: SQL text (its start printable), NUL-terminated.
        if length < 6 or (len(data) > length and data[length] != 0):
            return NO_MATCH
        start = data[5:min(len(data), length, 69)].translate(None, b"\r\n\t")
        return LIKELY if start and _printable(start) else NO_MATCH
    # Any other chain: at least two whole messages followed by a valid header.
    return LIKELY if _typed_chain(data, allowed) >= 2 else NO_MATCH


PLUGIN = ProtocolPlugin(
    name="postgresql",
    event_kinds=event_kinds(PgStartup, PgSslRequest, PgSslResponse, PgTls, PgCancelRequest, PgAuthRequest, PgAuthResponse,
                            PgParameterStatus, PgBackendKeyData, PgReadyForQuery, PgQuery, PgExtended, PgRowDescription,
                            PgCommandComplete, PgError, PgNotice, PgCopy, PgTerminate),
    # An SSLRequest answered 'S' turns the connection into TLS (pgsql_tls).
    switches=True,
    probe=probe,
    parser_factory=lambda transport: PostgresParser(),
    signatures=(
        # SSLRequest: length 8, code 80877103.
        Signature(0, bytes.fromhex("0000000804d2162f")),
        # StartupMessage 3.0: a length under 64 KiB (the server caps it at
        # MAX_STARTUP_BYTES), then the version 00 03 00 00.
        Signature(0, bytes.fromhex("0000000000030000"), mask=bytes.fromhex("ffff0000ffffffff")),
    ),
    transports=frozenset({"tcp"}),
    description="PostgreSQL protocol 3: startup, SSLRequest, auth, queries, errors (not inside TLS)",
)
