"""MySQL classic protocol: greeting, login, queries, OK and error replies.

Every message is a packet: a 3-byte little-endian payload length, a 1-byte
sequence number, the payload. The server speaks first with a greeting
(protocol 10: server version, connection id, capabilities, auth plugin); the
client answers with its login (user name, database, auth plugin) or, to
start TLS, with a short SSLRequest, after which nothing is readable. A
command is a client packet with sequence number 0 (COM_QUERY carries SQL
text); the first server packet after it is an OK, an error or the start of a
result set, which we skip without buffering it.

Only the first PACKET_HEAD_BYTES of a packet are ever kept, so memory stays
bounded whatever the peers send.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocols.api import (CERTAIN, LIKELY, NO_MATCH, POSSIBLE, DIRECTIONS, Direction, Event, Malformed,
                           ProtocolPlugin, Signature, StreamParser, StreamSide, event_kinds)

# The longest prefix of a packet we keep. It holds a whole greeting (~100
# bytes), a login up to its user, database and plugin names (names are at most
# 32 / 64 characters, auth data at most 255 bytes; connection attributes come
# last and may be cut), an error message (the server caps them at 512 bytes)
# and a query up to MAX_QUERY_BYTES. The rest of a packet is skipped unread.
PACKET_HEAD_BYTES = 8192
# What one direction holds between calls: a packet header (under 4 bytes) or
# the head of a packet being read (at most PACKET_HEAD_BYTES); the rest of a
# packet is skipped as it arrives.
MAX_BUFFERED_BYTES = PACKET_HEAD_BYTES
# Query text reported per COM_QUERY. Enough for the statement shape a SIEM or a
# rule looks at; bulk INSERTs run to megabytes and are cut (truncated=True).
MAX_QUERY_BYTES = 4096
# A payload of exactly 2^24-1 bytes means "continued in the next packet".
_CONTINUED = 0xFFFFFF
# Server version strings are short ("8.0.36", "5.5.5-10.6.12-MariaDB-...");
# MySQL's own buffer for it is 60 bytes. Probing allows some slack.
MAX_VERSION_BYTES = 100

PROTOCOL_10 = 10

# Capability flags (both greeting and login).
CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_COMPRESS = 0x20
CLIENT_PROTOCOL_41 = 0x200
CLIENT_SSL = 0x800
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
CLIENT_ZSTD_COMPRESSION = 1 << 26
CLIENT_QUERY_ATTRIBUTES = 1 << 27

COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_BINLOG_DUMP = 0x12
COM_STMT_PREPARE = 0x16
COM_BINLOG_DUMP_GTID = 0x1E

# Names of the commands a log line may want (others are reported by number).
_COMMANDS = {
    0x01: "quit", 0x02: "init_db", 0x03: "query", 0x04: "field_list", 0x05: "create_db",
    0x06: "drop_db", 0x07: "refresh", 0x08: "shutdown", 0x09: "statistics",
    0x0A: "process_info", 0x0C: "process_kill", 0x0D: "debug", 0x0E: "ping",
    0x11: "change_user", 0x12: "binlog_dump", 0x16: "stmt_prepare", 0x17: "stmt_execute",
    0x18: "stmt_send_long_data", 0x19: "stmt_close", 0x1A: "stmt_reset",
    0x1B: "set_option", 0x1C: "stmt_fetch", 0x1E: "binlog_dump_gtid", 0x1F: "reset_connection",
}


@dataclass(frozen=True)
class MysqlGreeting(Event):
    kind: ClassVar[str] = "mysql_greeting"
    protocol_version: int
    server_version: str
    connection_id: int | None
    capabilities: int             # lower and (when sent) upper 16 bits
    auth_plugin: str | None


@dataclass(frozen=True)
class MysqlLogin(Event):
    kind: ClassVar[str] = "mysql_login"
    username: str
    database: str | None
    auth_plugin: str | None
    capabilities: int


@dataclass(frozen=True)
class MysqlTls(Event):
    """The client asked for TLS (SSLRequest): the rest of the flow is encrypted."""
    kind: ClassVar[str] = "mysql_tls"
    capabilities: int


@dataclass(frozen=True)
class MysqlQuery(Event):
    kind: ClassVar[str] = "mysql_query"
    query: str                    # at most MAX_QUERY_BYTES of it
    length: int                   # of the whole statement, in bytes
    truncated: bool


@dataclass(frozen=True)
class MysqlCommand(Event):
    """A command other than COM_QUERY."""
    kind: ClassVar[str] = "mysql_command"
    code: int
    name: str
    argument: str | None          # the schema name for init_db, else None


@dataclass(frozen=True)
class MysqlError(Event):
    kind: ClassVar[str] = "mysql_error"
    code: int
    sqlstate: str | None          # absent before protocol 4.1 and in connect-time errors
    message: str


@dataclass(frozen=True)
class MysqlOk(Event):
    kind: ClassVar[str] = "mysql_ok"
    affected_rows: int
    last_insert_id: int


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _cstring(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """A NUL-terminated string at pos and the position after the NUL."""
    end = buf.find(b"\x00", pos)
    if end < 0:
        return None
    return buf[pos:end], end + 1


def _lenenc(buf: bytes, pos: int) -> tuple[int, int] | None:
    """A length-encoded integer at pos and the position after it."""
    if pos >= len(buf):
        return None
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if size is None or pos + 1 + size > len(buf):      # 0xFB is NULL, 0xFF undefined
        return None
    return int.from_bytes(buf[pos + 1:pos + 1 + size], "little"), pos + 1 + size


class _Side(StreamSide):
    __slots__ = ("state", "skip", "continued", "head_len", "packet_len", "seq", "packet_offset")
    max_buffered = MAX_BUFFERED_BYTES

    def __init__(self, direction: Direction) -> None:
        super().__init__(direction)
        self.state = "header"       # header -> head -> (skip) -> header ...; done
        self.skip = 0               # payload bytes still to skip
        self.continued = False      # this packet continues a 2^24-1 byte one
        self.head_len = 0
        self.packet_len = 0
        self.seq = 0
        self.packet_offset = 0

    @property
    def done(self) -> bool:
        return self.state == "done"


class MysqlParser(StreamParser):
    def __init__(self) -> None:
        self._sides = {d: _Side(d) for d in DIRECTIONS}
        self._server_phase = "greeting"     # greeting -> auth -> command
        self._client_phase = "login"        # login -> command
        self._awaiting_reply = False        # a client packet came; the next server one answers it
        self._last_command: int | None = None
        self._compressed = False
        self._client_caps = 0               # from the login: query attributes change COM_QUERY

    # --- framing -------------------------------------------------------------

    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        if not side.accept(data):
            return []
        events: list[Event] = []
        buf = side.buf
        pos = 0
        while side.state != "done":
            if side.state == "skip":
                n = min(side.skip, len(buf) - pos)
                pos += n
                side.skip -= n
                if side.skip:
                    break
                side.state = "header"
            elif side.state == "header":
                if len(buf) - pos < 4:
                    break
                side.packet_len = int.from_bytes(buf[pos:pos + 3], "little")
                side.seq = buf[pos + 3]
                side.packet_offset = side.offset + pos
                side.head_len = min(side.packet_len, PACKET_HEAD_BYTES)
                pos += 4
                side.state = "head"
            else:   # head
                if len(buf) - pos < side.head_len:
                    break
                head = bytes(buf[pos:pos + side.head_len])
                pos += side.head_len
                side.skip = side.packet_len - side.head_len
                side.state = "skip"
                continued, side.continued = side.continued, side.packet_len == _CONTINUED
                if not continued:
                    self._packet(side, direction, head, events)
        side.consume(len(buf) if side.done else pos)
        return events

    def receive_eof(self, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        side.eof = True
        if side.state == "done" or (side.state == "header" and not side.buf):
            return []
        side.state = "done"
        return [Malformed(direction, "stream ended inside a packet", side.offset)]

    def receive_gap(self, direction: Direction, size: int) -> list[Event]:
        side = self._sides[direction]
        if side.state == "done":
            return []
        side.state = "done"
        return [Malformed(direction, f"gap of {size} bytes in the stream", -1)]

    def _stop_both(self) -> None:
        for side in self._sides.values():
            side.state = "done"

    def _fail(self, side: _Side, direction: Direction, events: list[Event], reason: str) -> None:
        events.append(Malformed(direction, reason, side.packet_offset))
        side.state = "done"

    # --- packets -------------------------------------------------------------

    def _packet(self, side: _Side, direction: Direction, head: bytes, events: list[Event]) -> None:
        truncated = side.packet_len > len(head)
        if direction == Direction.TO_CLIENT:
            self._server_packet(side, head, events)
        else:
            self._awaiting_reply = True
            if self._client_phase == "login":
                self._login(side, head, truncated, events)
            elif side.seq == 0:
                self._command(side, head, events)
            # other client packets: auth exchange, LOAD DATA contents

    def _server_packet(self, side: _Side, head: bytes, events: list[Event]) -> None:
        d = Direction.TO_CLIENT
        if self._server_phase == "greeting":
            if side.seq != 0:
                return self._fail(side, d, events, f"greeting has sequence number {side.seq}")
            if head[:1] == b"\xff":              # refused before any greeting
                self._server_phase = "command"
                return self._error(side, head, events)
            greeting = _greeting(head)
            if greeting is None:
                return self._fail(side, d, events, "not a protocol 10 greeting")
            events.append(greeting)
            self._server_phase = "auth"
            return
        answers = self._awaiting_reply
        self._awaiting_reply = False
        first = head[:1]
        if first == b"\xff":
            # 0xFF cannot start a row or column definition, so this is an error
            # wherever it appears.
            self._error(side, head, events)
        elif first == b"\x00" and answers and self._last_command not in (
                COM_STMT_PREPARE, COM_BINLOG_DUMP, COM_BINLOG_DUMP_GTID):
            # (those commands answer with 0x00-led packets that are not OK)
            ok = _ok(head)
            if ok is None:
                return self._fail(side, Direction.TO_CLIENT, events, "OK packet truncated")
            events.append(ok)
        else:
            return
        if self._server_phase == "auth":
            self._server_phase = "command"
            if self._compressed:   # compressed framing from here on: not parsed
                side.state = "done"

    def _error(self, side: _Side, head: bytes, events: list[Event]) -> None:
        if len(head) < 3:
            return self._fail(side, Direction.TO_CLIENT, events, "error packet truncated")
        code = int.from_bytes(head[1:3], "little")
        sqlstate = None
        rest = head[3:]
        if rest[:1] == b"#" and len(rest) >= 6:
            sqlstate, rest = _text(rest[1:6]), rest[6:]
        events.append(MysqlError(code, sqlstate, _text(rest)))

    def _login(self, side: _Side, head: bytes, truncated: bool, events: list[Event]) -> None:
        d = Direction.TO_SERVER
        if side.seq != 1:
            return self._fail(side, d, events, f"login has sequence number {side.seq}, not 1")
        if len(head) < 2:
            return self._fail(side, d, events, "login packet truncated")
        caps = int.from_bytes(head[:2], "little")
        if caps & CLIENT_PROTOCOL_41:
            if len(head) < 32:
                return self._fail(side, d, events, "login packet truncated")
            caps = int.from_bytes(head[:4], "little")
            fixed = 32              # caps, max packet, charset, 23 reserved bytes
        else:
            fixed = 5               # HandshakeResponse320: caps (2), max packet (3)
        if len(head) == fixed and caps & CLIENT_SSL:
            events.append(MysqlTls(caps))
            self._stop_both()
            return
        login = _login(head, caps, fixed)
        if login is None:
            reason = "login cut at the packet head limit" if truncated else "login packet malformed"
            return self._fail(side, d, events, reason)
        events.append(login)
        self._client_phase = "command"
        self._client_caps = caps
        if caps & (CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION):
            # After authentication both sides switch to compressed framing,
            # which we do not unpack: stop at the server's final OK.
            self._compressed = True
            side.state = "done"

    def _command(self, side: _Side, head: bytes, events: list[Event]) -> None:
        if not head:
            return self._fail(side, Direction.TO_SERVER, events, "empty command packet")
        code = head[0]
        self._last_command = code
        if code == COM_QUERY:
            pos = 1
            if self._client_caps & CLIENT_QUERY_ATTRIBUTES:
                # MySQL 8.0.23+: parameter count and set count precede the text.
                count = _lenenc(head, pos)
                sets = _lenenc(head, count[1]) if count else None
                if count is None or sets is None:
                    return self._fail(side, Direction.TO_SERVER, events,
                                      "query attributes malformed")
                if count[0]:
                    return      # typed attribute values before the text: not decoded
                pos = sets[1]
            length = side.packet_len - pos
            text = head[pos:pos + MAX_QUERY_BYTES]
            events.append(MysqlQuery(_text(text), length, length > len(text)))
            return
        arg = _text(head[1:65]) if code == COM_INIT_DB else None
        events.append(MysqlCommand(code, _COMMANDS.get(code, f"0x{code:02x}"), arg))


def _greeting(head: bytes) -> MysqlGreeting | None:
    if head[:1] != bytes([PROTOCOL_10]):
        return None
    s = _cstring(head, 1)
    if s is None:
        return None
    version, pos = s
    conn_id = caps = None
    plugin = None
    if pos + 4 <= len(head):
        conn_id = int.from_bytes(head[pos:pos + 4], "little")
    pos += 4 + 8 + 1                              # connection id, scramble part 1, filler
    if pos + 2 <= len(head):
        caps = int.from_bytes(head[pos:pos + 2], "little")
        pos += 2
        if pos + 5 <= len(head):
            # charset (1), status (2), upper capabilities (2), scramble length (1)
            caps |= int.from_bytes(head[pos + 3:pos + 5], "little") << 16
            scramble_len = head[pos + 5] if pos + 5 < len(head) else 0
            pos += 6 + 10                         # ... and 10 reserved bytes
            pos += max(13, scramble_len - 8) if caps & CLIENT_SECURE_CONNECTION else 0
            if caps & CLIENT_PLUGIN_AUTH and pos < len(head):
                # Some servers omit the final NUL (a known MySQL 5.5 bug).
                name = _cstring(head, pos)
                plugin = _text(name[0] if name else head[pos:])
    return MysqlGreeting(PROTOCOL_10, _text(version), conn_id, caps or 0, plugin)


def _login(head: bytes, caps: int, pos: int) -> MysqlLogin | None:
    user = _cstring(head, pos)
    if user is None:
        return None
    username, pos = user
    database = plugin = None
    # Auth response: length-encoded, or one length byte, or NUL-terminated.
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        n = _lenenc(head, pos)
        if n is None:
            return None
        pos = n[1] + n[0]
    elif caps & CLIENT_SECURE_CONNECTION:
        if pos >= len(head):
            return None
        pos += 1 + head[pos]
    else:
        auth = _cstring(head, pos)
        pos = auth[1] if auth else len(head)
    if pos > len(head):
        return None
    if caps & CLIENT_CONNECT_WITH_DB and pos < len(head):
        db = _cstring(head, pos)
        if db is None:
            return None
        database, pos = _text(db[0]), db[1]
    if caps & CLIENT_PLUGIN_AUTH and pos < len(head):
        name = _cstring(head, pos)
        if name is None:
            return None
        plugin = _text(name[0])
    return MysqlLogin(_text(username), database, plugin, caps)


def _ok(head: bytes) -> MysqlOk | None:
    rows = _lenenc(head, 1)
    if rows is None:
        return None
    last_id = _lenenc(head, rows[1])
    if last_id is None:
        return None
    return MysqlOk(rows[0], last_id[0])


def _printable(b: bytes) -> bool:
    return all(0x20 <= c < 0x7F for c in b)


def probe(data: bytes, direction: Direction) -> float:
    """Rate the first bytes of one direction as MySQL."""
    if len(data) < 5:
        return NO_MATCH
    length = int.from_bytes(data[:3], "little")
    payload = data[4:4 + length]
    if not payload:
        return NO_MATCH
    whole = len(data) >= 4 + length
    if direction == Direction.TO_CLIENT:
        if data[3] != 0:            # the server's first packet has sequence number 0
            return NO_MATCH
        # Smallest greeting: protocol, 1-character version, NUL, id, scramble, filler.
        if payload[0] == PROTOCOL_10 and 16 <= length <= 1024:
            # Greeting: printable version, NUL, connection id, 8 scramble bytes, NUL filler.
            end = payload.find(b"\x00", 1, 1 + MAX_VERSION_BYTES)
            if end < 2 or not _printable(payload[1:end]) or not payload[1:2].isdigit():
                return NO_MATCH
            if len(payload) > end + 13:
                return CERTAIN if payload[end + 13] == 0 else NO_MATCH
            return LIKELY
        if payload[0] == 0xFF and whole and len(payload) > 3 and length == len(data) - 4:
            # Refused at connect ("Host ... is not allowed"): an error packet,
            # code in the server's range, printable text filling the packet.
            code = int.from_bytes(payload[1:3], "little")
            if 1000 <= code < 5000 and _printable(payload[3:]):
                return LIKELY
        return NO_MATCH
    # Login: sequence 1, the 4.1 layout with its 23 reserved bytes zero (MariaDB
    # puts its own capabilities in the last 4 of them).
    if data[3] == 1 and 32 <= length <= 65536 and len(payload) >= 32:
        if payload[9:28] == bytes(19) and int.from_bytes(payload[:4], "little") & CLIENT_PROTOCOL_41:
            return POSSIBLE
    return NO_MATCH


PLUGIN = ProtocolPlugin(
    name="mysql",
    event_kinds=event_kinds(MysqlGreeting, MysqlLogin, MysqlTls, MysqlQuery, MysqlCommand, MysqlError, MysqlOk),
    # An SSLRequest turns the connection into TLS (mysql_tls).
    switches=True,
    probe=probe,
    parser_factory=lambda transport: MysqlParser(),
    # One (offset, mask) shape for both: the kernel pays per distinct shape
    # (bpf/lib/maps.h MS_L7_SHAPES), not per signature.
    signatures=(
        # Greeting: payload length < 64 KiB (third length byte 0), sequence 0,
        # protocol 10.
        Signature(2, b"\x00\x00\x0a", direction=Direction.TO_CLIENT),
        # Refused at connect (too many connections, host not allowed): an
        # error packet (0xFF) with sequence 0 instead of the greeting.
        Signature(2, b"\x00\x00\xff", direction=Direction.TO_CLIENT),
    ),
    transports=frozenset({"tcp"}),
    description="MySQL classic protocol: greeting, login, queries, OK/error (not TLS or compressed)",
)
