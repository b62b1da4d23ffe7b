"""HTTP/2 (RFC 9113) in the clear: h2c by prior knowledge, after an HTTP/1.1
Upgrade, or picked up mid-stream.

Sans-IO like the other parsers: bytes and a direction in, events out. Each
stream's messages come out as the SAME events as HTTP/1 (protocols/http.py
HttpRequest, HttpResponse, HttpBody, HttpMessageEnd with its trailers,
HttpAnomalyEvent), each carrying its ``stream_id`` and version "HTTP/2", so
the WAF, DLP and domain rules read an HTTP/2 stream exactly as an HTTP/1
message: ``method``, ``uri`` and ``host`` are ``:method``, ``:path`` and
``:authority`` (else the Host field), ``headers`` the regular fields
(pseudo-headers are in those attributes, not repeated). Connection-level
frames have their own events (Http2Settings, Http2RstStream, Http2GoAway,
Http2PushPromise); a stream whose content-type is application/grpc* also
ends with a GrpcCall (protocols/grpc.py).

Frames: the 9-byte header is read here (it decides how much to buffer);
the bodies of the other frame types are parsed by python-hyper's
``hyperframe`` (padding, priority fields, SETTINGS pairs, their length
rules), header blocks decoded by its ``hpack`` with the limits below. DATA
payloads are not buffered: they go out as they arrive (padding stripped).

Starts. A client direction that begins with the connection preface is
prior knowledge (or the preface after an h2c Upgrade: the analyzer builds
this parser with the upgraded HTTP/1 request as stream 1,
``HttpTwoParser(upgrade_request=...)``). A direction that starts with
anything else was picked up mid-stream: the parser looks for a plausible
frame header (a known type, its flags, stream and length rules, and the
next header plausible too) and reads on from there, and so after a gap.
Header blocks of such a direction may name HPACK dynamic-table entries
added before the capture: the fields it can decode are reported, the
others are left out and named by a HEADER_UNKNOWN_INDEX anomaly on the
message. Bad input never raises: a violation the parser cannot read past
(an HPACK error in a connection seen from its start, a limit) is a
Malformed event and the direction is ignored from there.
"""
from __future__ import annotations

import base64
import enum
from dataclasses import dataclass
from typing import ClassVar

import hpack
import hyperframe.frame as hf
from hpack.exceptions import (HPACKDecodingError, InvalidTableIndex, InvalidTableSizeError,
                              OversizedHeaderListError)
from hpack.table import HeaderTable
from hyperframe.exceptions import HyperframeError

from protocols.api import (CERTAIN, LIKELY, NO_MATCH, POSSIBLE, DIRECTIONS, Direction, Event, Malformed, ProtocolPlugin,
                           Signature, StreamParser, StreamSide, event_kinds)
from protocols.content_coding import ContentDecoder
from protocols.grpc import GrpcCall, MessageFramer, is_grpc, split_path
from protocols.http import _CODING_ANOMALY  # the anomaly each decoding failure is (one table)
from protocols.http import (MAX_BODY_EMIT_BYTES, HttpAnomalyEvent, HttpBody, HttpMessageEnd, HttpRequest, HttpResponse,
                            _new_body)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_BYTES = 9
VERSION = "HTTP/2"

# --- Limits -------------------------------------------------------------------

# Compressed header block (HEADERS or PUSH_PROMISE plus its CONTINUATIONs)
# held until END_HEADERS. Same as HTTP/1's largest head (protocols/http.py
# MAX_HEAD_BYTES, above every common server's default): nginx refuses a
# header block over its large_client_header_buffers (32 KiB), Go over 1 MiB
# of decoded fields. Longer is a Malformed direction (CONTINUATION floods,
# CVE-2024-27316 and kin, are exactly this).
MAX_HEADER_BLOCK_BYTES = 64 * 1024
# Decoded header list (RFC 7541 4.1 sizes: name + value + 32 per field) of
# one block. An HPACK bomb (a short block naming one large table entry
# again and again) decodes to far more than it weighs; hpack stops at this
# (its own default, 64 KiB, matches HTTP/1's MAX_HEAD_BYTES here).
MAX_HEADER_LIST_BYTES = 64 * 1024
# Largest HPACK dynamic table a peer may make the decoder keep, per
# direction. The default is 4096 (RFC 9113 6.5.2) and nginx, Go, h2o and
# Envoy keep it; 64 KiB allows a peer that advertised more while bounding
# what one connection holds. A table size update above it is Malformed.
MAX_HPACK_TABLE_BYTES = 64 * 1024
# Streams tracked at once (opened, not yet closed both ways). Servers
# advertise SETTINGS_MAX_CONCURRENT_STREAMS of 100 (nginx 128, Go 250);
# 1024 is far above what a server lets a client open, so more streams still
# sending is a flood (e.g. CVE-2023-44487 and kin) and ends the direction as
# Malformed after a TOO_MANY_STREAMS anomaly. Streams only waiting for an
# answer (a capture without the server's side) make room instead (_room).
MAX_STREAMS = 1024
# Bytes of a frame other than DATA held until the frame is complete. Such
# frames are small except header fragments (bounded by MAX_HEADER_BLOCK_BYTES)
# and unknown extension frames, which are skipped unbuffered when longer.
MAX_BUFFERED_FRAME_BYTES = MAX_HEADER_BLOCK_BYTES
# A frame's largest length when the peer's SETTINGS are unknown (RFC 9113
# 4.2: 2^14 until SETTINGS_MAX_FRAME_SIZE raises it): what resynchronising
# accepts as a plausible header.
DEFAULT_MAX_FRAME_SIZE = 16384
# Bytes searched for a plausible frame header when a direction was picked
# up mid-stream or after a gap. Four default-size frames: a real stream
# shows a frame boundary well within it; garbage fails the direction.
MAX_RESYNC_BYTES = 4 * DEFAULT_MAX_FRAME_SIZE
# GOAWAY debug data kept in the event (the rest is counted, not copied).
MAX_DEBUG_DATA_BYTES = 256
# What one direction holds between calls: a buffered frame (with its
# header) or the window searched for a frame header.
MAX_BUFFERED_BYTES = max(MAX_BUFFERED_FRAME_BYTES + FRAME_HEADER_BYTES, MAX_RESYNC_BYTES)

# Frame types (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
FRAME_NAMES = ("DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING",
               "GOAWAY", "WINDOW_UPDATE", "CONTINUATION")
# Per type: (flags defined, stream id: 1 nonzero / 0 zero / None any,
# exact length or None). What a plausible frame header looks like.
_RULES = {
    DATA: (0x09, 1, None), HEADERS: (0x2D, 1, None), PRIORITY: (0x00, 1, 5),
    RST_STREAM: (0x00, 1, 4), SETTINGS: (0x01, 0, None), PUSH_PROMISE: (0x0C, 1, None),
    PING: (0x01, 0, 8), GOAWAY: (0x00, 0, None), WINDOW_UPDATE: (0x00, None, 4),
    CONTINUATION: (0x04, 1, None),
}
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x01, 0x04, 0x08, 0x20

# RFC 9113 section 7 error codes, by name as Suricata logs them.
ERROR_NAMES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
               "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL",
               "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY",
               "HTTP_1_1_REQUIRED")
SETTINGS_NAMES = {1: "SETTINGS_HEADER_TABLE_SIZE", 2: "SETTINGS_ENABLE_PUSH",
                  3: "SETTINGS_MAX_CONCURRENT_STREAMS", 4: "SETTINGS_INITIAL_WINDOW_SIZE",
                  5: "SETTINGS_MAX_FRAME_SIZE", 6: "SETTINGS_MAX_HEADER_LIST_SIZE",
                  8: "SETTINGS_ENABLE_CONNECT_PROTOCOL", 9: "SETTINGS_NO_RFC7540_PRIORITIES"}


def error_name(code: int) -> str:
    return ERROR_NAMES[code] if 0 <= code < len(ERROR_NAMES) else f"0x{code:x}"


class Http2Anomaly(enum.StrEnum):
    """Deviations the parser read past. Names are Suricata's HTTP/2 event
    names (rust/src/http2/http2.rs, HTTP2Event) where it has one; ours are
    named the same way."""
    INVALID_FRAME_HEADER = "INVALID_FRAME_HEADER"     # a frame breaking its type's rules
    INVALID_FRAME_DATA = "INVALID_FRAME_DATA"         # a body hyperframe refuses (bad padding...)
    INVALID_HEADER = "INVALID_HEADER"                 # missing/odd pseudo-headers, upper case names
    INVALID_FRAME_LENGTH = "INVALID_FRAME_LENGTH"     # over the peer's SETTINGS_MAX_FRAME_SIZE
    AUTHORITY_HOST_MISMATCH = "AUTHORITY_HOST_MISMATCH"
    STREAM_ID_REUSE = "STREAM_ID_REUSE"               # HEADERS on a stream that ended
    INVALID_HTTP1_SETTINGS = "INVALID_HTTP1_SETTINGS"   # an h2c upgrade's HTTP2-Settings unreadable
    TOO_MANY_STREAMS = "TOO_MANY_STREAMS"
    DATA_STREAM_ZERO = "DATA_STREAM_ZERO"             # ours: DATA without a stream
    CONTINUATION_UNEXPECTED = "CONTINUATION_UNEXPECTED"   # ours: not after an open header block
    HEADER_UNKNOWN_INDEX = "HEADER_UNKNOWN_INDEX"     # ours: HPACK entries from before the capture
    RESYNCHRONISED = "RESYNCHRONISED"                 # ours: bytes skipped to find a frame
    GRPC_INVALID_MESSAGE_FLAG = "GRPC_INVALID_MESSAGE_FLAG"   # ours: prefix flag not 0/1
    GRPC_MESSAGE_TOO_LARGE = "GRPC_MESSAGE_TOO_LARGE"        # ours: over grpc.MAX_MESSAGE_BYTES


A = Http2Anomaly

# --- Events ---------------------------------------------------------------------


@dataclass(frozen=True)
class Http2Settings(Event):
    """A SETTINGS frame (not an ACK): (name, value) pairs as sent."""
    kind: ClassVar[str] = "http2_settings"
    direction: Direction
    settings: tuple[tuple[str, int], ...]
    offset: int


@dataclass(frozen=True)
class Http2RstStream(Event):
    """RST_STREAM: ``direction``'s side ended ``stream_id`` with ``error``."""
    kind: ClassVar[str] = "http2_rst_stream"
    direction: Direction
    stream_id: int
    error_code: int
    error: str
    offset: int


@dataclass(frozen=True)
class Http2GoAway(Event):
    """GOAWAY: ``direction``'s side closes the connection; streams above
    ``last_stream_id`` were not processed."""
    kind: ClassVar[str] = "http2_goaway"
    direction: Direction
    last_stream_id: int
    error_code: int
    error: str
    debug_data: bytes           # at most MAX_DEBUG_DATA_BYTES
    offset: int


@dataclass(frozen=True)
class Http2PushPromise(Event):
    """PUSH_PROMISE: the server will answer, on ``promised_stream_id``, a
    request it made up (``method``, ``uri``, ``host``) for ``stream_id``."""
    kind: ClassVar[str] = "http2_push_promise"
    direction: Direction
    stream_id: int
    promised_stream_id: int
    method: str
    uri: str
    host: str | None
    offset: int


# --- HPACK ----------------------------------------------------------------------


class _LenientTable(HeaderTable):
    """hpack's table, except that an index past what it knows (an entry added
    before a mid-stream capture began) reads as an empty field, counted, so
    the rest of the block still decodes. Only used on directions picked up
    mid-stream or after a gap: a connection seen whole never names one."""

    def __init__(self) -> None:
        super().__init__()
        self.unknown = 0

    def get_by_index(self, index: int) -> tuple[bytes, bytes]:
        try:
            return super().get_by_index(index)
        except InvalidTableIndex:
            self.unknown += 1
            return b"", b""


def _decoder(lenient: bool) -> hpack.Decoder:
    d = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST_BYTES)
    if lenient:
        d.header_table = _LenientTable()
    # A mid-stream direction never saw the SETTINGS that sized its table.
    d.max_allowed_table_size = MAX_HPACK_TABLE_BYTES if lenient else d.header_table.maxsize
    return d


# --- Streams ----------------------------------------------------------------------


class _Message:
    """One direction of a stream: a message once its head came."""
    __slots__ = ("open", "ended", "size", "emitted", "data_frames", "framer", "decoder")

    def __init__(self) -> None:
        self.open = False          # head seen, end not yet
        self.ended = False
        self.size = 0              # DATA payload bytes (padding excluded)
        self.emitted = 0
        self.data_frames = 0       # DATA frames with payload
        self.framer: MessageFramer | None = None
        # The body's Content-Encoding, undone as DATA arrives (as HTTP/1's,
        # protocols/content_coding.py): HttpBody carries the decoded bytes.
        self.decoder: ContentDecoder | None = None


class _Stream:
    __slots__ = ("sid", "method", "path", "authority", "user_agent", "req_ctype", "resp_ctype",
                 "status", "grpc", "grpc_encoding", "grpc_timeout", "grpc_status", "grpc_message",
                 "msgs", "final", "priority", "pushed")

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.method: str | None = None
        self.path: str | None = None
        self.authority: str | None = None
        self.user_agent: str | None = None
        self.req_ctype: str | None = None
        self.resp_ctype: str | None = None
        self.status: int | None = None
        self.grpc = False
        self.grpc_encoding: str | None = None
        self.grpc_timeout: str | None = None
        self.grpc_status: int | None = None
        self.grpc_message: str | None = None
        self.msgs = (_Message(), _Message())     # by Direction
        self.final = False          # a final (non-1xx) response head came
        self.priority: int | None = None
        self.pushed = False


# --- Sides --------------------------------------------------------------------------

_PREFACE_STATE, _FRAMES, _DATA, _SKIP, _SYNC, _DEAD = range(6)


class _Side(StreamSide):
    __slots__ = ("state", "decoder", "lenient", "block", "data", "skip", "max_frame", "started",
                 "skipped")
    max_buffered = MAX_BUFFERED_BYTES

    def __init__(self, direction: Direction) -> None:
        super().__init__(direction)
        self.state = _PREFACE_STATE if direction == Direction.TO_SERVER else _FRAMES
        self.decoder = _decoder(False)
        self.lenient = False        # picked up mid-stream or after a gap
        # An open header block: [type, stream id, flags, fragments, offset, promised id]
        self.block: list | None = None
        # The DATA frame being read: [stream id, content left, padding left, end_stream]
        self.data: list | None = None
        self.skip = 0               # bytes of an oversized extension frame still to skip
        # The most a frame of this side may carry: the peer's SETTINGS_MAX_FRAME_SIZE.
        self.max_frame = DEFAULT_MAX_FRAME_SIZE
        self.started = False        # a first frame (or the preface) was read
        self.skipped = 0            # bytes passed over looking for a frame header

    @property
    def done(self) -> bool:
        return self.state == _DEAD


class HttpTwoParser(StreamParser):
    """Both directions of one HTTP/2 connection.

    ``upgrade_request``: the HTTP/1.1 request that carried ``Upgrade: h2c``
    (already reported by the HTTP/1 parser): it is stream 1, whose response
    comes in HTTP/2 (RFC 9113 3.2 of RFC 7540)."""

    def __init__(self, upgrade_request: HttpRequest | None = None,
                 offsets: tuple[int, int] = (0, 0)) -> None:
        self._sides = {d: _Side(d) for d in DIRECTIONS}
        for d in Direction:         # where each direction's HTTP/2 starts in its TCP stream
            self._sides[d].offset = offsets[d]
        self._streams: dict[int, _Stream] = {}
        self._closed_max = 0       # highest client stream id closed (reuse check)
        self.start = "h2c-upgrade" if upgrade_request is not None else None
        self.frame_counts: dict[str, int] = {}
        self._early: list[Event] = []   # what the upgrade request said wrong, out with the first events
        if upgrade_request is not None:
            s = self._streams[1] = _Stream(1)
            s.method, s.path = upgrade_request.method, upgrade_request.uri
            s.authority, s.user_agent = upgrade_request.host, upgrade_request.user_agent
            s.req_ctype = upgrade_request.content_type
            s.msgs[0].ended = True  # the HTTP/1 request was complete before the 101
            self._upgrade_settings(upgrade_request)

    def _upgrade_settings(self, req: HttpRequest) -> None:
        """The client's SETTINGS sent in HTTP2-Settings (RFC 7540 3.2.1:
        base64url of a SETTINGS payload) apply as if sent in a frame."""
        value = req.header("http2-settings")
        if value is None:
            return
        try:
            text = value.strip()
            payload = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
            frame = hf.SettingsFrame(0)
            frame.parse_body(memoryview(payload))
        except (ValueError, HyperframeError):
            self._early.append(HttpAnomalyEvent(Direction.TO_SERVER, A.INVALID_HTTP1_SETTINGS,
                                                req.offset, stream_id=1))
            return
        self._apply_settings(self._sides[Direction.TO_SERVER], frame.settings)

    # -- API -------------------------------------------------------------------------
    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        if not side.accept(data):
            return []
        events: list[Event] = self._early
        self._early = []
        side.consume(self._run(side, events))
        return events

    def receive_eof(self, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        side.check_open()
        side.eof = True
        events: list[Event] = []
        if side.state != _DEAD and (side.block is not None or side.data is not None
                                    or (side.buf and side.state != _SYNC)):
            events.append(Malformed(direction, "connection ended inside a frame", side.offset))
        side.state = _DEAD
        side.discard()
        if all(s.eof for s in self._sides.values()):
            # The connection is over: calls that did not end are reported as far as seen.
            for s in list(self._streams.values()):
                self._close_stream(s, direction, events)
        return events

    def receive_gap(self, direction: Direction, size: int) -> list[Event]:
        side = self._sides[direction]
        if side.state == _DEAD:
            return []
        if side.data is not None and side.state == _DATA and size <= side.data[1]:
            # Inside a DATA payload: count the lost bytes, the framing is intact.
            sid = side.data[0]
            side.data[1] -= size
            st = self._streams.get(sid)
            if st is not None:
                m = st.msgs[direction]
                m.size += size
                if m.framer is not None:
                    m.framer.gap(size)
                if m.decoder is not None:     # a coded stream cannot be followed past a hole
                    m.decoder.abandon()
            return []
        # Framing lost: look for the next frame; header blocks may now name
        # table entries whose insertion was lost.
        side.discard()
        side.block = side.data = None
        side.skip = 0
        side.state = _SYNC
        self._go_lenient(side)
        return [HttpAnomalyEvent(direction, A.RESYNCHRONISED, side.offset)]

    # -- framing -----------------------------------------------------------------------
    def _go_lenient(self, side: _Side) -> None:
        if not side.lenient:
            side.lenient = True
            old = side.decoder
            new = _decoder(True)
            # Keep what the table knew (entries are newest first).
            for name, value in reversed(old.header_table.dynamic_entries):
                new.header_table.add(name, value)
            side.decoder = new

    def _run(self, side: _Side, events: list[Event]) -> int:
        buf = side.buf
        i, n = 0, len(buf)
        while i < n:
            st = side.state
            if st == _FRAMES:
                if n - i < FRAME_HEADER_BYTES:
                    break
                got = self._frame(side, buf, i, n, events)
                if got is None:
                    break
                i = got
            elif st == _DATA:
                i = self._data(side, buf, i, n, events)
            elif st == _SKIP:
                take = min(side.skip, n - i)
                side.skip -= take
                i += take
                if not side.skip:
                    side.state = _FRAMES
            elif st == _PREFACE_STATE:
                k = min(n - i, len(PREFACE))
                if buf[i:i + k] == PREFACE[:k]:
                    if k < len(PREFACE):
                        break
                    i += len(PREFACE)
                    side.state, side.started = _FRAMES, True
                    if self.start is None:
                        self.start = "prior-knowledge"
                else:
                    side.state = _SYNC         # a connection picked up mid-stream
                    self._go_lenient(side)
                    if self.start is None:
                        self.start = "mid-stream"
            elif st == _SYNC:
                got = self._resync(side, buf, i, n, events)
                if got is None:
                    return n - min(n - i, FRAME_HEADER_BYTES - 1) if side.state == _SYNC else n
                if got < 0:
                    return -got - 1    # a candidate needs more bytes: keep from there
                i = got
            else:   # _DEAD
                return n
        return i

    def _resync(self, side: _Side, buf, i: int, n: int, events: list[Event]) -> int | None:
        """Look for a plausible frame header at or after ``i``: its index (and
        read frames from there); minus the index of one whose check needs
        more bytes, minus one; None: none can start before the last 8 bytes held."""
        j = i
        while j <= n - FRAME_HEADER_BYTES:
            end = _plausible(buf, j, n)
            if end is not None:
                if end + FRAME_HEADER_BYTES <= n and _plausible(buf, end, n) is None:
                    j += 1          # the frame after it is not one: a false start
                    continue
                if end != n and end + FRAME_HEADER_BYTES > n:
                    side.skipped += j - i
                    if side.skipped > MAX_RESYNC_BYTES:
                        break
                    return -j - 1   # wait for what follows it
                side.skipped += j - i
                if side.skipped:
                    events.append(HttpAnomalyEvent(side.direction, A.RESYNCHRONISED, side.offset + j))
                side.skipped = 0
                side.state, side.started = _FRAMES, True
                if side.direction == Direction.TO_SERVER and self.start is None:
                    self.start = "mid-stream"
                return j
            j += 1
        side.skipped += max(0, j - i)
        if side.skipped > MAX_RESYNC_BYTES:
            self._fail(side, f"no HTTP/2 frame header in {MAX_RESYNC_BYTES} bytes", i, events)
        return None

    def _frame(self, side: _Side, buf, i: int, n: int, events: list[Event]) -> int | None:
        length = int.from_bytes(buf[i:i + 3], "big")
        ftype, flags = buf[i + 3], buf[i + 4]
        sid = int.from_bytes(buf[i + 5:i + 9], "big") & 0x7FFFFFFF
        at = side.offset + i
        if not side.started:
            side.started = True
            if side.direction == Direction.TO_CLIENT and self.start not in ("prior-knowledge",
                                                                            "h2c-upgrade"):
                self._go_lenient(side)      # no preface seen: entries may predate the capture
            if side.direction == Direction.TO_CLIENT and _plausible(buf, i, n) is None:
                # The server's first bytes are not its SETTINGS: mid-stream.
                side.state = _SYNC
                self._go_lenient(side)
                return i
        name = FRAME_NAMES[ftype] if ftype < len(FRAME_NAMES) else "UNKNOWN"
        self.frame_counts[name] = self.frame_counts.get(name, 0) + 1
        if side.block is not None and ftype != CONTINUATION:
            events.append(HttpAnomalyEvent(side.direction, A.INVALID_FRAME_HEADER, at, stream_id=side.block[1]))
            side.block = None      # RFC 9113 6.10: a header block must not be interrupted
        if length > side.max_frame and ftype != DATA:
            events.append(HttpAnomalyEvent(side.direction, A.INVALID_FRAME_LENGTH, at, stream_id=sid))
        if ftype == DATA:
            return self._data_header(side, buf, i, n, length, flags, sid, events)
        if length > MAX_BUFFERED_FRAME_BYTES:
            if ftype in _RULES:
                return self._fail(side, f"{name} frame of {length} bytes, more than "
                                  f"{MAX_BUFFERED_FRAME_BYTES}", i, events)
            side.skip, side.state = length, _SKIP      # an extension frame: not ours to read
            return i + FRAME_HEADER_BYTES
        end = i + FRAME_HEADER_BYTES + length
        if end > n:
            return None
        if ftype not in _RULES:
            return end                                  # unknown types are ignored (RFC 9113 5.5)
        try:
            frame, _ = hf.Frame.parse_frame_header(memoryview(bytes(buf[i:i + FRAME_HEADER_BYTES])))
            frame.parse_body(memoryview(bytes(buf[i + FRAME_HEADER_BYTES:end])))
        except (HyperframeError, ValueError) as e:
            return self._violation(side, A.INVALID_FRAME_DATA, f"{name} frame: {e}", i, end, sid, events)
        rule = _RULES[ftype]
        if (rule[1] == 1 and sid == 0) or (rule[1] == 0 and sid != 0):
            return self._violation(side, A.INVALID_FRAME_HEADER,
                                   f"{name} frame on stream {sid}", i, end, sid, events)
        handler = _HANDLERS.get(ftype)
        if handler is not None:
            if handler(self, side, frame, at, events) is False:
                return n
        return end

    def _violation(self, side: _Side, anomaly: A, reason: str, i: int, end: int, sid: int,
                   events: list[Event]) -> int:
        """A frame that breaks its rules: a mid-stream direction may have
        resynchronised on a false header, so it looks again; one read from its
        start is Malformed (the peer would end the connection)."""
        if side.lenient:
            events.append(HttpAnomalyEvent(side.direction, anomaly, side.offset + i, stream_id=sid))
            side.state = _SYNC
            return i + 1
        return self._fail(side, reason, i, events)

    def _fail(self, side: _Side, reason: str, i: int, events: list[Event]) -> int:
        events.append(Malformed(side.direction, reason, side.offset + i))
        side.state = _DEAD
        side.block = side.data = None
        return len(side.buf)

    # -- DATA ---------------------------------------------------------------------------
    def _data_header(self, side: _Side, buf, i: int, n: int, length: int, flags: int, sid: int,
                     events: list[Event]) -> int | None:
        if sid == 0:
            return self._violation(side, A.DATA_STREAM_ZERO, "DATA frame on stream 0", i,
                                   i + FRAME_HEADER_BYTES + length, 0, events)
        head = FRAME_HEADER_BYTES
        pad = 0
        if flags & PADDED:
            if n - i < FRAME_HEADER_BYTES + 1:
                return None
            pad = buf[i + FRAME_HEADER_BYTES]
            head += 1
            if length < 1 or pad > length - 1:
                return self._violation(side, A.INVALID_FRAME_DATA, f"DATA frame padding {pad} "
                                       f"longer than its {length} bytes", i, i + head, sid, events)
        content = length - pad - (1 if flags & PADDED else 0)
        side.data = [sid, content, pad, bool(flags & END_STREAM)]
        side.state = _DATA
        st = self._streams.get(sid)
        if st is not None and content:
            m = st.msgs[side.direction]
            m.data_frames += 1
            if m.framer is not None:
                m.framer.frame_start()
        if not content and not pad:             # nothing follows the header: done now
            side.data, side.state = None, _FRAMES
            if flags & END_STREAM:
                self._end_stream_side(side.direction, sid, (), events)
        return i + head

    def _data(self, side: _Side, buf, i: int, n: int, events: list[Event]) -> int:
        d = side.data
        sid = d[0]
        if d[1]:
            take = min(d[1], n - i)
            d[1] -= take
            st = self._streams.get(sid)
            if st is not None:
                m = st.msgs[side.direction]
                m.size += take
                chunk = bytes(buf[i:i + take])
                self._emit_body(side.direction, sid, m, chunk, side.offset + i + take, events)
                if m.framer is not None:
                    m.framer.feed(chunk)
            i += take
            if d[1]:
                return i
        if d[2]:
            take = min(d[2], n - i)
            d[2] -= take
            i += take
            if d[2]:
                return i
        side.data = None
        side.state = _FRAMES
        if d[3]:
            self._end_stream_side(side.direction, sid, (), events)
        return i

    @staticmethod
    def _emit_body(d: Direction, sid: int, m: _Message, chunk: bytes | None, at: int,
                   events: list[Event]) -> None:
        """Body bytes ``chunk`` (None: the body's end) out as HttpBody, decoded
        when the message has a Content-Encoding, up to MAX_BODY_EMIT_BYTES."""
        dec = m.decoder
        if dec is not None:
            failed = dec.error is not None
            chunk = dec.finish() if chunk is None else dec.feed(chunk)
            if dec.error is not None and not failed:
                events.append(HttpAnomalyEvent(d, _CODING_ANOMALY[dec.error], at, stream_id=sid))
        room = MAX_BODY_EMIT_BYTES - m.emitted
        if chunk and room > 0:
            part = chunk[:room]
            m.emitted += len(part)
            events.append(_new_body(d, part, stream_id=sid))

    def _coding(self, d: Direction, sid: int, m: _Message, headers: tuple, at: int,
                events: list[Event]) -> None:
        values = [v for k, v in headers if k.lower() == "content-encoding"]
        if not values:
            return
        dec = ContentDecoder(values)
        if not dec.decoded:       # identity, or only codings we do not know: as sent
            return
        m.decoder = dec
        if dec.error is not None:
            events.append(HttpAnomalyEvent(d, _CODING_ANOMALY[dec.error], at, stream_id=sid))

    # -- header blocks -------------------------------------------------------------------
    def _on_headers(self, side: _Side, f, at: int, events: list[Event]):
        if "PRIORITY" in f.flags:
            st = self._streams.get(f.stream_id)
            if st is not None:
                st.priority = f.stream_weight
        side.block = [HEADERS, f.stream_id, "END_STREAM" in f.flags, bytearray(f.data), at, 0,
                      f.stream_weight if "PRIORITY" in f.flags else None]
        if "END_HEADERS" in f.flags:
            return self._block_done(side, events)
        return self._check_block(side, events)

    def _on_push_promise(self, side: _Side, f, at: int, events: list[Event]):
        side.block = [PUSH_PROMISE, f.stream_id, False, bytearray(f.data), at, f.promised_stream_id,
                      None]
        if "END_HEADERS" in f.flags:
            return self._block_done(side, events)
        return self._check_block(side, events)

    def _on_continuation(self, side: _Side, f, at: int, events: list[Event]):
        b = side.block
        if b is None or b[1] != f.stream_id:
            events.append(HttpAnomalyEvent(side.direction, A.CONTINUATION_UNEXPECTED, at, stream_id=f.stream_id))
            side.block = None
            return None
        b[3] += f.data
        if "END_HEADERS" in f.flags:
            return self._block_done(side, events)
        return self._check_block(side, events)

    def _check_block(self, side: _Side, events: list[Event]):
        if len(side.block[3]) > MAX_HEADER_BLOCK_BYTES:
            self._fail(side, f"header block longer than {MAX_HEADER_BLOCK_BYTES} bytes",
                       side.block[4] - side.offset, events)
            return False
        return None

    def _block_done(self, side: _Side, events: list[Event]):
        if self._check_block(side, events) is False:
            return False
        ftype, sid, end_stream, frags, at, promised, weight = side.block
        side.block = None
        table = side.decoder.header_table
        before = getattr(table, "unknown", 0)
        try:
            fields = side.decoder.decode(bytes(frags), raw=True)
        except OversizedHeaderListError:
            self._fail(side, f"header list over {MAX_HEADER_LIST_BYTES} bytes (HPACK)",
                       at - side.offset, events)
            return False
        except InvalidTableSizeError:
            self._fail(side, f"HPACK table size update over {side.decoder.max_allowed_table_size} "
                       "bytes", at - side.offset, events)
            return False
        except (HPACKDecodingError, ValueError, IndexError) as e:
            self._fail(side, f"HPACK: {e}", at - side.offset, events)
            return False
        unknown = getattr(table, "unknown", 0) - before
        pseudo: dict[str, str] = {}
        regular: list[tuple[str, str]] = []
        anomalies: list[str] = []
        for name, value in fields:
            if not name:
                continue                    # an entry from before the capture
            n_, v_ = name.decode("latin-1"), value.decode("latin-1")
            if n_.startswith(":"):
                if n_ in pseudo or regular:
                    anomalies.append(A.INVALID_HEADER)
                pseudo.setdefault(n_, v_)
            else:
                if n_ != n_.lower():
                    anomalies.append(A.INVALID_HEADER)
                regular.append((n_, v_))
        if unknown:
            anomalies.append(A.HEADER_UNKNOWN_INDEX)
        self._headers(side, ftype, sid, end_stream, pseudo, tuple(regular),
                      tuple(dict.fromkeys(anomalies)), at, promised, weight, events)
        return None

    def _headers(self, side: _Side, ftype: int, sid: int, end_stream: bool, pseudo: dict,
                 headers: tuple, anomalies: tuple, at: int, promised: int, weight,
                 events: list[Event]) -> None:
        d = side.direction

        first: dict[str, str] = {}          # the first value of each field (names are lower case)
        for k, v in headers:
            first.setdefault(k.lower(), v)
        get = first.get
        if ftype == PUSH_PROMISE:
            if promised not in self._streams and self._room(d, at, events):
                s = self._streams[promised] = _Stream(promised)
                s.method, s.path, s.authority = pseudo.get(":method"), pseudo.get(":path"), \
                    pseudo.get(":authority") or get("host")
                s.pushed = True
                s.msgs[0].ended = True
            events.append(Http2PushPromise(d, sid, promised, pseudo.get(":method", ""),
                                           pseudo.get(":path", ""),
                                           pseudo.get(":authority") or get("host"), at))
            return
        st = self._streams.get(sid)
        m = st.msgs[d] if st is not None else None
        if d == Direction.TO_SERVER:
            if m is not None and (m.open or m.ended):
                if m.ended:
                    events.append(HttpAnomalyEvent(d, A.STREAM_ID_REUSE, at, stream_id=sid))
                    return
                self._end_stream_side(d, sid, headers, events)       # trailers
                return
            if st is None:
                if sid <= self._closed_max and sid % 2 == 1:
                    events.append(HttpAnomalyEvent(d, A.STREAM_ID_REUSE, at, stream_id=sid))
                if not self._room(d, at, events):
                    return
                st = self._streams[sid] = _Stream(sid)
            st.priority = weight
            method, path = pseudo.get(":method"), pseudo.get(":path")
            authority = pseudo.get(":authority")
            host = get("host")
            anomalies = list(anomalies)
            if method is None or (path is None and method != "CONNECT"):
                anomalies.append(A.INVALID_HEADER)
            if authority is not None and host is not None and authority.lower() != host.lower():
                anomalies.append(A.AUTHORITY_HOST_MISMATCH)
            st.method, st.path = method, path
            st.authority, st.user_agent = authority or host, get("user-agent")
            st.req_ctype = get("content-type")
            st.grpc_encoding, st.grpc_timeout = get("grpc-encoding"), get("grpc-timeout")
            if is_grpc(st.req_ctype):
                self._grpc(st)
            cl = get("content-length")
            m = st.msgs[0]
            m.open = True
            pending: list[Event] = []
            self._coding(d, sid, m, headers, at, pending)
            events.append(HttpRequest(
                d, method or "", path if path is not None else (authority or ""), VERSION,
                authority or host, st.user_agent, st.req_ctype, headers,
                int(cl) if cl and cl.isdigit() else None, False,
                tuple(dict.fromkeys(anomalies)), at, stream_id=sid))
            events += pending
            if end_stream:
                self._end_stream_side(d, sid, (), events)
            return
        # TO_CLIENT
        if st is None:
            if not self._room(d, at, events):
                return
            st = self._streams[sid] = _Stream(sid)   # its request is not in the capture
            st.msgs[0].ended = True     # nothing to wait for on that side: the answer's end closes it
            m = st.msgs[1]
        status_text = pseudo.get(":status")
        if st.final or (status_text is None and m.open):
            # Trailers (or a trailers-only response's end).
            self._grpc_status(st, headers)
            self._end_stream_side(d, sid, headers, events)
            return
        status = int(status_text) if status_text and status_text.isdigit() else None
        anomalies = list(anomalies)
        if status is None:
            anomalies.append(A.INVALID_HEADER)
        ctype = get("content-type")
        interim = status is not None and 100 <= status < 200
        if not interim:
            st.final = True
            st.status = status
            st.resp_ctype = ctype
            if st.grpc_encoding is None:
                st.grpc_encoding = get("grpc-encoding")
            if is_grpc(ctype):
                self._grpc(st)
            self._grpc_status(st, headers)          # trailers-only responses
        cl = get("content-length")
        events.append(HttpResponse(
            d, status if status is not None else 0, "", VERSION, ctype, headers, st.method,
            int(cl) if cl and cl.isdigit() else None, False, tuple(dict.fromkeys(anomalies)), at,
            stream_id=sid))
        if not interim:
            m.open = True
            self._coding(d, sid, m, headers, at, events)
        if end_stream:
            self._end_stream_side(d, sid, (), events)

    def _room(self, d: Direction, at: int, events: list[Event]) -> bool:
        """Room for one more stream. At MAX_STREAMS the oldest stream whose
        request is complete and whose answer has not started goes (a capture
        missing the server's side, as HTTP/1's MAX_PENDING_REQUESTS: its
        answer, if it comes, is paired with an unknown request); streams
        still sending are a flood: TOO_MANY_STREAMS and Malformed."""
        if len(self._streams) < MAX_STREAMS:
            return True
        for sid, st in self._streams.items():
            req, resp = st.msgs
            if req.ended and not resp.open and not resp.ended:
                del self._streams[sid]
                return True
        events.append(HttpAnomalyEvent(d, A.TOO_MANY_STREAMS, at))
        side = self._sides[d]
        self._fail(side, f"more than {MAX_STREAMS} streams open at once", at - side.offset, events)
        return False

    # -- gRPC ------------------------------------------------------------------------------
    @staticmethod
    def _grpc(st: _Stream) -> None:
        if not st.grpc:
            st.grpc = True
            for m in st.msgs:
                m.framer = MessageFramer()

    @staticmethod
    def _grpc_status(st: _Stream, headers: tuple) -> None:
        for k, v in headers:
            k = k.lower()
            if k == "grpc-status":
                st.grpc_status = int(v) if v.strip().isdigit() else None
            elif k == "grpc-message":
                st.grpc_message = v

    # -- stream ends -------------------------------------------------------------------------
    def _end_stream_side(self, d: Direction, sid: int, trailers: tuple, events: list[Event]) -> None:
        st = self._streams.get(sid)
        if st is None:
            return
        m = st.msgs[d]
        if not m.ended:
            m.ended = True
            m.open = False
            events.append(self._message_end(d, sid, m, trailers, events))
            if m.framer is not None:
                if m.framer.bad_flag:
                    events.append(HttpAnomalyEvent(d, A.GRPC_INVALID_MESSAGE_FLAG, -1, stream_id=sid))
                if m.framer.too_large:
                    events.append(HttpAnomalyEvent(d, A.GRPC_MESSAGE_TOO_LARGE, -1, stream_id=sid))
        if st.msgs[0].ended and st.msgs[1].ended:
            self._close_stream(st, d, events)

    def _close_stream(self, st: _Stream, d: Direction, events: list[Event], reset: bool = False) -> None:
        for md in Direction:
            m = st.msgs[md]
            if m.open:            # cut short (reset, or the connection ended)
                m.open = False
                m.ended = True
                events.append(self._message_end(md, st.sid, m, (), events))
        if st.grpc:
            req, resp = st.msgs
            service, method = split_path(st.path)
            events.append(GrpcCall(
                d, st.sid, st.path, service, method, st.authority, st.user_agent, st.req_ctype,
                st.resp_ctype, st.grpc_encoding, st.grpc_timeout, st.status, st.grpc_status,
                st.grpc_message, req.framer.messages, resp.framer.messages,
                req.framer.compressed + resp.framer.compressed, req.data_frames, resp.data_frames,
                reset))
        self._streams.pop(st.sid, None)
        if st.sid % 2 == 1:
            self._closed_max = max(self._closed_max, st.sid)

    def _message_end(self, d: Direction, sid: int, m: _Message, trailers: tuple,
                     events: list[Event]) -> HttpMessageEnd:
        dec = m.decoder
        if dec is None:
            return HttpMessageEnd(d, m.size, m.emitted, trailers, stream_id=sid)
        self._emit_body(d, sid, m, None, -1, events)
        m.decoder = None
        return HttpMessageEnd(d, m.size, m.emitted, trailers, dec.decoded, dec.decoded_bytes,
                              dec.error, stream_id=sid)

    # -- other frames ----------------------------------------------------------------------
    def _on_rst(self, side: _Side, f, at: int, events: list[Event]):
        # The stream's open messages end first (HttpMessageEnd), then the
        # reset: after it, nothing more of the stream comes.
        st = self._streams.get(f.stream_id)
        if st is not None:
            self._close_stream(st, side.direction, events, reset=True)
        events.append(Http2RstStream(side.direction, f.stream_id, f.error_code,
                                     error_name(f.error_code), at))

    def _on_goaway(self, side: _Side, f, at: int, events: list[Event]):
        events.append(Http2GoAway(side.direction, f.last_stream_id, f.error_code,
                                  error_name(f.error_code),
                                  bytes(f.additional_data[:MAX_DEBUG_DATA_BYTES]), at))

    def _on_settings(self, side: _Side, f, at: int, events: list[Event]):
        if "ACK" in f.flags:
            return
        self._apply_settings(side, f.settings)
        events.append(Http2Settings(side.direction, tuple(
            (SETTINGS_NAMES.get(k, f"0x{k:x}"), v) for k, v in f.settings.items()), at))

    def _apply_settings(self, side: _Side, settings) -> None:
        """``side``'s SETTINGS bound what its peer may send: the HPACK table
        its encoder may use (up to MAX_HPACK_TABLE_BYTES) and its frame size."""
        other = self._sides[Direction(1 - side.direction)]
        for key, value in settings.items():
            if key == 1:      # HEADER_TABLE_SIZE: what the peer's encoder may use
                dec = other.decoder
                dec.max_allowed_table_size = max(dec.max_allowed_table_size,
                                                 min(value, MAX_HPACK_TABLE_BYTES))
            elif key == 5 and 16384 <= value < 1 << 24:
                other.max_frame = value


_HANDLERS = {
    HEADERS: HttpTwoParser._on_headers,
    PUSH_PROMISE: HttpTwoParser._on_push_promise,
    CONTINUATION: HttpTwoParser._on_continuation,
    RST_STREAM: HttpTwoParser._on_rst,
    GOAWAY: HttpTwoParser._on_goaway,
    SETTINGS: HttpTwoParser._on_settings,
}


def _plausible(buf, i: int, n: int) -> int | None:
    """End of the frame whose header is at ``buf[i]`` when that header
    follows its type's rules (a known type, only its flags, its stream and
    length rules, at most DEFAULT_MAX_FRAME_SIZE); else None."""
    if n - i < FRAME_HEADER_BYTES:
        return None
    ftype = buf[i + 3]
    rule = _RULES.get(ftype)
    if rule is None:
        return None
    flags_ok, stream_rule, fixed = rule
    length = int.from_bytes(buf[i:i + 3], "big")
    if length > DEFAULT_MAX_FRAME_SIZE or buf[i + 4] & ~flags_ok & 0xFF or buf[i + 5] & 0x80:
        return None
    sid = int.from_bytes(buf[i + 5:i + 9], "big")
    if (stream_rule == 1 and sid == 0) or (stream_rule == 0 and sid != 0):
        return None
    if fixed is not None and length != fixed:
        return None
    if ftype == SETTINGS and (length % 6 or (buf[i + 4] & 1 and length)):
        return None
    if ftype == GOAWAY and length < 8:
        return None
    return i + FRAME_HEADER_BYTES + length


# --- Detection ------------------------------------------------------------------------


def _chain(data: bytes) -> int:
    """Plausible frame headers in a row from the start of ``data`` (the last
    frame may be cut short); 0 when the first is not one or a later one breaks."""
    i, n, count = 0, len(data), 0
    while i + FRAME_HEADER_BYTES <= n:
        end = _plausible(data, i, n)
        if end is None:
            return 0
        count += 1
        i = end
    return count


def probe(data: bytes, direction: Direction) -> float:
    """The client preface is certain. Without it (a server's first frames,
    or a connection picked up mid-stream), frames whose headers all follow
    their type's rules: likely from two of them or one HEADERS/SETTINGS frame,
    possible from one other."""
    data = bytes(data[:4096])
    if direction == Direction.TO_SERVER and len(data) >= 3:
        k = min(len(data), len(PREFACE))
        if data[:k] == PREFACE[:k]:
            return CERTAIN
    frames = _chain(data)
    if frames >= 2 or (frames == 1 and data[3] in (HEADERS, SETTINGS)):
        return LIKELY
    return POSSIBLE if frames else NO_MATCH


# The kernel compares the first 8 bytes of the client's first payload with
# the preface: "PRI * HT" is what no HTTP/1 method starts with.
SIGNATURES = (Signature(0, PREFACE[:8], direction=Direction.TO_SERVER),)

PLUGIN = ProtocolPlugin(
    name="http2",
    event_kinds=event_kinds(HttpRequest, HttpResponse, HttpBody, HttpMessageEnd, HttpAnomalyEvent, GrpcCall, Http2Settings,
                            Http2RstStream, Http2GoAway, Http2PushPromise),
    # CONNECT (RFC 9113 8.5, extended CONNECT: WebSocket) carries another protocol in a stream.
    switches=True,
    probe=probe,
    parser_factory=lambda transport: HttpTwoParser(),
    signatures=SIGNATURES,
    transports=frozenset({"tcp"}),
    description="HTTP/2 in the clear (prior knowledge, h2c upgrade, mid-stream): streams as "
                "HTTP messages, HPACK (bounded), gRPC calls",
)
