"""HTTP/1.x: the requests and responses of both directions of one connection.

Sans-IO like h11: bytes and a direction in, events out. Per message the
parser emits ``HttpRequest`` or ``HttpResponse`` (the head), ``HttpBody``
events with the decoded body (chunked framing removed, at most
MAX_BODY_EMIT_BYTES per message), then ``HttpMessageEnd``. A CONNECT answered
2xx, or a 101 Switching Protocols, ends HTTP on the connection with one
``HttpTunnel`` event. Garbage gives a ``Malformed`` event, never an exception.

Who does what. llhttp (Node.js's parser, through httptools) checks the
grammar of every head: request and status line, method, target, version,
field names and values, Content-Length and Transfer-Encoding values. This
module does the framing around it: where a head ends, how long the body is,
chunked decoding, pipelining, and pairing responses with requests. The split
is forced by what httptools exposes, measured with httptools 0.9:

* It reports no byte positions (only on an upgrade), so a caller cannot learn
  where a message ended inside a buffer and llhttp must own all framing if it
  owns any.
* Its ``on_headers_complete`` cannot return llhttp's "this message has no
  body", so a response parser cannot be told that the request was HEAD:
  fed ``HTTP/1.1 200 OK / Content-Length: 5`` (a HEAD answer) followed by
  the next response, llhttp takes the next response's first 5 bytes as body
  and then fails on the rest. For the same reason it cannot stop at the head
  of a 2xx answer to CONNECT.

So each head is cut out here (up to its empty line) and given whole to a
fresh llhttp parser, and bodies are framed here (RFC 9112 section 6.3).

Tolerance. Before llhttp sees a head it gets the two normalisations RFC 9112
allows a recipient: a bare LF ends a line like CRLF (section 2.2; Tomcat, for
one, accepts that by default) and an obs-fold continuation line is joined to
the previous one with a space (section 5.2; user agents must do this in
responses). Bytes >= 0x80 in a request target (obs-text, which Apache accepts
even with HttpProtocolOptions Strict) are let through too, where llhttp
refuses them. A monitor that refuses what a server accepts goes blind on
exactly those requests: an inline WAF that gives up on a message lets it
through unread. So a head llhttp refuses is read again by a tolerant splitter
(``_lenient_head``: as lenient as servers, tshark and Zeek are: any method
token in any case, tabs and runs of blanks as delimiters, a missing or odd
version, CTL bytes, blanks before a colon, a line without a colon, duplicate
or odd Content-Length, CL with TE...), and bodies are framed as leniently
(odd chunk-size lines). Every deviation is named in the event's
``anomalies`` (or, found inside a body, an ``HttpAnomalyEvent``) with a name
from :class:`HttpAnomaly`, Suricata's HTTP event names where Suricata has
one: the slow path logs each as an EVE ``anomaly`` record and its setting
``http_anomaly`` says what it does to a WAF-inspected flow (a proxy and a
server reading such bytes differently is how header injection and
smuggling work). Only what cannot be read as HTTP at all is Malformed.

Requests and responses are paired first in, first out; the response side
needs the request's method (HEAD answers have no body; CONNECT answered 2xx
becomes a tunnel). Feed the two directions in capture order: a response fed
before its request is parsed as an answer to an unknown request.
"""
from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Sequence

import httptools

from protocols.content_coding import CodingError, ContentDecoder
from protocols.api import (CERTAIN, LIKELY, NO_MATCH, POSSIBLE, Direction, Event, Malformed,
                           ProtocolPlugin, Signature, StreamParser, StreamSide, event_builder, event_kinds)

# --- Limits -------------------------------------------------------------------

# Largest message head (start line plus header fields, or a trailer section).
# Default server limits: Tomcat 8 KiB, Node.js and http.sys 16 KiB, nginx
# 4 x 8 KiB large_client_header_buffers; 64 KiB is above all of them, so a
# head a common server accepts is parsed here too. (Go's 1 MiB and Apache's
# 100 fields x 8 KiB are higher: such heads end the direction as Malformed,
# which a policy can treat as the evasion attempt it most likely is.) It is
# also what one direction may hold buffered while a head is incomplete.
MAX_HEAD_BYTES = 64 * 1024
# Most header (or trailer) fields in one head. Browsers send 10 to 20; Apache
# refuses more than 100 by default (LimitRequestFields). 256 leaves room for
# unusual clients and bounds the Python objects one head creates (every field
# becomes a tuple of two str in the event).
MAX_HEADERS = 256
# Longest chunk-size line, extensions included. Real ones are a few hex
# digits, rarely with a short extension; this only bounds what is buffered
# while waiting for the line's end.
MAX_CHUNK_LINE_BYTES = 4096
# Body bytes emitted as HttpBody events per message, for DLP and WAF rules.
# Suricata inspects 100 KB of a body by default, ModSecurity buffers 128 KB of
# a body without files; 256 KiB covers form posts, JSON API calls and small
# documents whole. Past it the body is still framed (counted and skipped,
# never copied), and HttpMessageEnd says how much was seen (body_emitted <
# body_size).
MAX_BODY_EMIT_BYTES = 256 * 1024
# Requests whose responses have not started yet. Browsers pipeline a handful;
# 1024 only matters when the server side is missing from the capture. Past it
# further requests are still parsed, but their responses are paired with an
# unknown method (request_method None), so memory stays bounded.
MAX_PENDING_REQUESTS = 1024
# Bytes a client may send after CONNECT (or an Upgrade request) before the
# answer says whether the connection became a tunnel. A TLS ClientHello sent
# optimistically is one record (<= 16 KiB plus header); 64 KiB is generous.
MAX_TUNNEL_PENDING_BYTES = 64 * 1024
# Longest start line or header field line before it is flagged as too long:
# Apache's defaults (LimitRequestLine, LimitRequestFieldSize) are 8190, and
# nginx's large_client_header_buffers hold 8 KiB per line, so a longer line
# is refused by common servers; one sent anyway probes an inspector's limits.
MAX_FIELD_LINE_BYTES = 8190
# What one direction holds between calls: an incomplete head or trailer
# section (under MAX_HEAD_BYTES), a chunk-size line (under
# MAX_CHUNK_LINE_BYTES), or what a client sent after CONNECT/Upgrade before
# the answer (at most MAX_TUNNEL_PENDING_BYTES). Body bytes are emitted or
# skipped as they arrive.
MAX_BUFFERED_BYTES = max(MAX_HEAD_BYTES, MAX_CHUNK_LINE_BYTES, MAX_TUNNEL_PENDING_BYTES)
# Longest method token a lenient request line may start with (extension
# methods included; the longest registered one, UPDATEREDIRECTREF, has 17
# characters). Past it without a blank, the bytes are not a request line.
MAX_LENIENT_METHOD = 32


class HttpAnomaly(enum.StrEnum):
    """A deviation from RFC 9110/9112 the parser tolerated. Names are
    Suricata's HTTP app-layer event names (app-layer-htp.c,
    http_decoder_event_table) where Suricata has one; the others (marked
    "ours") are named the same way."""
    UNKNOWN_ERROR = "UNKNOWN_ERROR"                         # llhttp refused; no named cause found
    REQUEST_LINE_INVALID = "REQUEST_LINE_INVALID"           # junk in the request line
    REQUEST_LINE_LEADING_WHITESPACE = "REQUEST_LINE_LEADING_WHITESPACE"
    METHOD_DELIM_NON_COMPLIANT = "METHOD_DELIM_NON_COMPLIANT"   # not one SP after the method
    URI_DELIM_NON_COMPLIANT = "URI_DELIM_NON_COMPLIANT"     # not one SP around the target, or blanks in it
    METHOD_UNKNOWN = "METHOD_UNKNOWN"                       # ours: not a registered method (case counts)
    REQUEST_LINE_MISSING_PROTOCOL = "REQUEST_LINE_MISSING_PROTOCOL"   # HTTP/0.9 style
    REQUEST_INVALID_PROTOCOL = "REQUEST_INVALID_PROTOCOL"   # ours: version not HTTP/1.0 or HTTP/1.1
    REQUEST_URI_INVALID_CHARS = "REQUEST_URI_INVALID_CHARS"  # ours: CTL or NUL in the target
    REQUEST_URI_NON_ASCII = "REQUEST_URI_NON_ASCII"         # ours: raw bytes >= 0x80 in the target
    RESPONSE_INVALID_PROTOCOL = "RESPONSE_INVALID_PROTOCOL"
    RESPONSE_INVALID_STATUS = "RESPONSE_INVALID_STATUS"
    REQUEST_FIELD_MISSING_COLON = "REQUEST_FIELD_MISSING_COLON"
    RESPONSE_FIELD_MISSING_COLON = "RESPONSE_FIELD_MISSING_COLON"
    REQUEST_HEADER_INVALID = "REQUEST_HEADER_INVALID"       # bad name, blanks before ":", CTL in value
    RESPONSE_HEADER_INVALID = "RESPONSE_HEADER_INVALID"
    INVALID_REQUEST_FIELD_FOLDING = "INVALID_REQUEST_FIELD_FOLDING"   # obs-fold (RFC 9112 5.2)
    INVALID_RESPONSE_FIELD_FOLDING = "INVALID_RESPONSE_FIELD_FOLDING"
    REQUEST_FIELD_TOO_LONG = "REQUEST_FIELD_TOO_LONG"       # a line over MAX_FIELD_LINE_BYTES
    RESPONSE_FIELD_TOO_LONG = "RESPONSE_FIELD_TOO_LONG"
    LINE_TERMINATOR_BARE_LF = "LINE_TERMINATOR_BARE_LF"     # ours: LF without CR (RFC 9112 2.2)
    LINE_TERMINATOR_BARE_CR = "LINE_TERMINATOR_BARE_CR"     # ours: CR without LF, read as SP (2.2)
    HOST_HEADER_AMBIGUOUS = "HOST_HEADER_AMBIGUOUS"         # more than one Host
    DUPLICATE_CONTENT_LENGTH_FIELD_IN_REQUEST = "DUPLICATE_CONTENT_LENGTH_FIELD_IN_REQUEST"
    DUPLICATE_CONTENT_LENGTH_FIELD_IN_RESPONSE = "DUPLICATE_CONTENT_LENGTH_FIELD_IN_RESPONSE"
    INVALID_CONTENT_LENGTH_FIELD_IN_REQUEST = "INVALID_CONTENT_LENGTH_FIELD_IN_REQUEST"
    INVALID_CONTENT_LENGTH_FIELD_IN_RESPONSE = "INVALID_CONTENT_LENGTH_FIELD_IN_RESPONSE"
    CONTENT_LENGTH_WITH_TRANSFER_ENCODING = "CONTENT_LENGTH_WITH_TRANSFER_ENCODING"  # ours: smuggling
    INVALID_REQUEST_CHUNK_LEN = "INVALID_REQUEST_CHUNK_LEN"
    INVALID_RESPONSE_CHUNK_LEN = "INVALID_RESPONSE_CHUNK_LEN"
    INVALID_TRANSFER_ENCODING_VALUE_IN_REQUEST = "INVALID_TRANSFER_ENCODING_VALUE_IN_REQUEST"
    INVALID_TRANSFER_ENCODING_VALUE_IN_RESPONSE = "INVALID_TRANSFER_ENCODING_VALUE_IN_RESPONSE"
    CHUNK_DATA_NOT_TERMINATED = "CHUNK_DATA_NOT_TERMINATED"  # ours: no CRLF after chunk data
    # Content-Encoding (protocols/content_coding.py); Suricata's names. Added
    # last: the WAF's anomaly rule ids follow this order (slowpath/waf.py).
    GZIP_DECOMPRESSION_FAILED = "GZIP_DECOMPRESSION_FAILED"  # not the claimed coding, or cut short (any coding)
    COMPRESSION_BOMB = "COMPRESSION_BOMB"                    # decoded past the size or ratio cap
    TOO_MANY_ENCODING_LAYERS = "TOO_MANY_ENCODING_LAYERS"    # more than MAX_LAYERS codings to undo


A = HttpAnomaly


def _pick(request: bool, req: HttpAnomaly, resp: HttpAnomaly) -> HttpAnomaly:
    return req if request else resp

# --- Events -------------------------------------------------------------------

Fields = tuple[tuple[str, str], ...]


class _FieldLookup:
    """Case-insensitive access to ``headers`` (names keep the case they were sent in)."""
    __slots__ = ()

    def header(self, name: str, default: str | None = None) -> str | None:
        """Value of the first field called ``name`` (any case), else ``default``."""
        name = name.lower()
        for n, v in self.headers:          # type: ignore[attr-defined]
            if n.lower() == name:
                return v
        return default

    def header_values(self, name: str) -> tuple[str, ...]:
        """Values of every field called ``name`` (any case), in order."""
        name = name.lower()
        return tuple(v for n, v in self.headers if n.lower() == name)   # type: ignore[attr-defined]


@dataclass(frozen=True)
class HttpRequest(_FieldLookup, Event):
    """A request head. Strings are the bytes as sent, decoded as latin-1."""
    kind: ClassVar[str] = "http_request"
    direction: Direction
    method: str
    uri: str                    # the request target as sent
    version: str                # "HTTP/1.1"
    host: str | None            # first Host field
    user_agent: str | None
    content_type: str | None
    headers: Fields             # (name, value) in order; values without surrounding blanks
    content_length: int | None
    chunked: bool
    anomalies: tuple[str, ...]  # tolerated deviations (HttpAnomaly names), e.g. "METHOD_UNKNOWN"
    offset: int                 # stream offset of the request line
    # HTTP/2 stream (protocols/http2.py); 0 for HTTP/1.
    stream_id: int = 0


@dataclass(frozen=True)
class HttpResponse(_FieldLookup, Event):
    """A response head, interim (1xx) ones included."""
    kind: ClassVar[str] = "http_response"
    direction: Direction
    status: int
    reason: str
    version: str
    content_type: str | None
    headers: Fields
    request_method: str | None  # method of the paired request; None when unknown
    # What the fields say; an answer to HEAD, a 1xx, 204 or 304 has no body
    # whatever they say.
    content_length: int | None
    chunked: bool
    anomalies: tuple[str, ...]
    offset: int
    # HTTP/2 stream (protocols/http2.py); 0 for HTTP/1.
    stream_id: int = 0


@dataclass(frozen=True)
class HttpBody(Event):
    """Decoded body bytes of the current message of ``direction``, in order
    (chunked framing removed, a Content-Encoding undone).

    How a body is cut into events follows how it was fed: at most one HttpBody
    per message per receive_data call.
    """
    kind: ClassVar[str] = "http_body"
    direction: Direction
    data: bytes
    # HTTP/2 stream (protocols/http2.py); 0 for HTTP/1.
    stream_id: int = 0


@dataclass(frozen=True)
class HttpMessageEnd(Event):
    """The message of ``direction`` is complete. ``body_size`` counts every body
    byte (after chunked decoding, lost ones included); ``body_emitted`` how many
    of them went out as HttpBody (fewer past MAX_BODY_EMIT_BYTES or after a gap).

    A body with a Content-Encoding went out decoded (protocols/content_coding.py):
    ``content_encoding`` names the codings undone (header order), ``body_size``
    stays the encoded size, ``decoded_size`` is the decoded size (None: nothing
    decoded), ``body_emitted`` counts decoded bytes, and ``encoding_error`` is
    the content_coding.CodingError that stopped decoding (None: none)."""
    kind: ClassVar[str] = "http_message_end"
    direction: Direction
    body_size: int
    body_emitted: int
    trailers: Fields = ()
    content_encoding: tuple[str, ...] = ()
    decoded_size: int | None = None
    encoding_error: str | None = None
    # HTTP/2 stream (protocols/http2.py); 0 for HTTP/1.
    stream_id: int = 0


@dataclass(frozen=True)
class HttpTunnel(Event):
    """HTTP ended on the connection: a CONNECT answered 2xx (``via`` "connect")
    or a 101 Switching Protocols (``via`` "upgrade"). The parser ignores both
    directions from here on; the bytes that follow belong to the tunnelled
    protocol. Each direction's tunnel starts at its ``*_offset``; the bytes of
    it the parser already held are in ``*_data``."""
    kind: ClassVar[str] = "http_tunnel"
    direction: Direction        # of the response that opened the tunnel
    via: str
    target: str                 # CONNECT's authority, or the Upgrade field ("websocket")
    status: int
    to_server_offset: int
    to_client_offset: int
    to_server_data: bytes
    to_client_data: bytes

    @property
    def rest(self) -> tuple[tuple[Direction, bytes], ...]:
        """The held tunnel bytes as (direction, data), client first, to feed on."""
        return tuple((d, b) for d, b in ((Direction.TO_SERVER, self.to_server_data),
                                         (Direction.TO_CLIENT, self.to_client_data)) if b)


@dataclass(frozen=True)
class HttpAnomalyEvent(Event):
    """A deviation found after a head was reported (in a body's framing):
    ``name`` is an :class:`HttpAnomaly`; ``offset`` where in the stream."""
    kind: ClassVar[str] = "http_anomaly"
    direction: Direction
    name: str
    offset: int
    # HTTP/2 stream (protocols/http2.py); 0 for HTTP/1.
    stream_id: int = 0


_new_request = event_builder(HttpRequest)
_new_response = event_builder(HttpResponse)
_new_message_end = event_builder(HttpMessageEnd)
_new_body = event_builder(HttpBody)
# The end of a message without body or trailers, per direction: equal to
# what _new_message_end makes for it (events are frozen values), made once.
_EMPTY_END = {d: _new_message_end(d, 0, 0, ()) for d in Direction}
# Direction.TO_SERVER as a module name for the per-message path: on Python
# 3.11 an enum member read through its class is a descriptor call (~0.25 us).
_TO_SERVER = Direction.TO_SERVER
_TO_CLIENT = Direction.TO_CLIENT


# --- Head parsing -------------------------------------------------------------

# End of a head: the first empty line, CRLF or bare LF.
_HEAD_END = re.compile(rb"\n\r?\n")
# RFC 9110 5.1 token, for trailer field names (llhttp checks the head's).
_FIELD_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*)")
# RFC 9112 7.1.1: chunk-size [ chunk-ext ]; blanks before ";" are BWS.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")
# What a tolerant reader takes as a chunk size: hex digits after blanks or "0x".
_LENIENT_CHUNK_LINE = re.compile(rb"[ \t]*(?:0[xX])?([0-9A-Fa-f]+)")

# The methods llhttp accepts in an HTTP/1.x request (its RTSP-only ones
# refuse an HTTP version). PRI is not here: "PRI * HTTP/2.0" is HTTP/2.
METHODS = frozenset((
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    "COPY", "LOCK", "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK",
    "BIND", "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE",
    "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PURGE", "MKCALENDAR", "LINK",
    "UNLINK", "SOURCE", "QUERY",
))
_METHOD_BYTES = frozenset(m.encode() for m in METHODS)
_MAX_METHOD = max(map(len, METHODS))
# llhttp refuses bytes >= 0x80 in a target; they stand in as "x" (same length,
# so the raw target is found at the same place of the raw line).
_HIGH_TO_X = bytes(range(128)) + b"x" * 128


class _Collect:
    """httptools callbacks: gather one head."""
    __slots__ = ("url", "reason", "fields", "complete")

    def __init__(self) -> None:
        self.url = b""
        self.reason = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, b: bytes) -> None:
        self.url += b

    def on_status(self, b: bytes) -> None:
        self.reason += b

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


class _Head:
    """One head as llhttp understood it. The defaults are class attributes
    (none is ever changed in place, only replaced), so that a plain head
    (_fast_head, one per message) is made with no __init__ and sets only
    what it has."""
    method = ""
    uri = ""
    status = 0
    reason = ""
    version = ""
    fields: Fields = ()
    names: Sequence[str] = ()           # the fields' names in lower case, in order
    anomalies: tuple[str, ...] = ()
    upgrade = False
    error: str | None = None            # llhttp objected after the head was complete
    block: "_Block | None" = None       # a plain head's fields block, read once (_fast_head)

    def set_fields(self, fields: Fields) -> None:
        self.fields = fields
        self.names = [n.lower() for n, _ in fields]

    def get(self, name: str) -> str | None:
        """Value of the first field called ``name`` (lower case), else None."""
        names = self.names
        # A missing field (Content-Type of most requests) is the common miss:
        # an `in` test costs a fraction of list.index's ValueError.
        return self.fields[names.index(name)][1] if name in names else None

    def values(self, name: str) -> list[str]:
        count = self.names.count(name)
        if count <= 1:
            return [self.fields[self.names.index(name)][1]] if count else []
        return [v for (_, v), n in zip(self.fields, self.names) if n == name]


def _add(anomalies: list[str], name: HttpAnomaly) -> None:
    if name not in anomalies:
        anomalies.append(name)


def _lines(block: bytes, anomalies: list[str], first_field: int = 1, request: bool = True,
           lenient: bool = False) -> list[bytes]:
    """The lines of a head (``first_field`` 1: a start line, then fields) or a
    trailer section (0), which ends with an empty line: CR before LF dropped,
    obs-fold joined (both noted in ``anomalies``). ``lenient``: a blank-led
    line right after the start line is read as a field (noted), and a bare CR
    inside a line reads as SP (RFC 9112 2.2 allows that replacement)."""
    raw = block.split(b"\n")[:-1]        # the last item is what follows the final LF: b""
    if any(not line.endswith(b"\r") for line in raw):
        _add(anomalies, A.LINE_TERMINATOR_BARE_LF)
    raw = [line[:-1] if line.endswith(b"\r") else line for line in raw[:-1]]  # drop the empty line
    out: list[bytes] = []
    for line in raw:
        if lenient and b"\r" in line:
            _add(anomalies, A.LINE_TERMINATOR_BARE_CR)
            line = line.replace(b"\r", b" ")
        # A line starting with a blank continues the previous field (obs-fold).
        # Not right after the start line: RFC 9112 2.2 makes that an error,
        # and llhttp reports it (the lenient reading takes it as a field).
        if line[:1] in (b" ", b"\t") and len(out) > first_field:
            out[-1] = out[-1].rstrip(b" \t") + b" " + line.strip(b" \t")
            _add(anomalies, _pick(request, A.INVALID_REQUEST_FIELD_FOLDING, A.INVALID_RESPONSE_FIELD_FOLDING))
        elif line[:1] in (b" ", b"\t") and lenient and out:
            _add(anomalies, _pick(request, A.REQUEST_HEADER_INVALID, A.RESPONSE_HEADER_INVALID))
            out.append(line.lstrip(b" \t"))
        else:
            out.append(line)
    if any(len(line) > MAX_FIELD_LINE_BYTES for line in out):
        _add(anomalies, _pick(request, A.REQUEST_FIELD_TOO_LONG, A.RESPONSE_FIELD_TOO_LONG))
    return out


def _decode_fields(pairs) -> Fields:
    return tuple((n.decode("latin-1"), v.strip(b" \t").decode("latin-1")) for n, v in pairs)


def _parse_head(head: bytes, request: bool) -> _Head | str:
    """Parse a complete head (through its empty line); a str says why it is not HTTP.

    llhttp first; what it refuses is read again by ``_lenient_head``."""
    anomalies: list[str] = []
    lines = _lines(head, anomalies, request=request)
    if len(lines) - 1 > MAX_HEADERS:
        return f"{len(lines) - 1} header fields, more than {MAX_HEADERS}"
    start = lines[0]
    if request:
        # llhttp also takes "GET /" (HTTP/0.9) and RTSP/ICE versions: those
        # are left to the lenient reading, which names them.
        method = start.partition(b" ")[0]
        if method not in _METHOD_BYTES or start.rpartition(b" ")[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
            return _lenient_head(head, request, None)
        sent = start.translate(_HIGH_TO_X)
        if sent != start:
            anomalies.append(A.REQUEST_URI_NON_ASCII)
    else:
        if not start.startswith(b"HTTP/1."):
            return _lenient_head(head, request, None)
        sent = start
    collect = _Collect()
    p = (httptools.HttpRequestParser if request else httptools.HttpResponseParser)(collect)
    # Transfer-Encoding (alone or with Content-Length) is judged in
    # _framing, after the head, so that the message it came in is still
    # reported; llhttp's own checks of it stop before the head is complete.
    p.set_dangerous_leniencies(lenient_chunked_length=True, lenient_transfer_encoding=True)
    error = None
    try:
        p.feed_data(b"\r\n".join([sent, *lines[1:]]) + b"\r\n\r\n")
    except httptools.HttpParserUpgrade:
        pass                     # CONNECT, Upgrade, 101: handled by the caller
    except httptools.HttpParserError as e:
        error = str(e) or type(e).__name__
    if error and error.startswith("Pause on"):   # llhttp pauses at CONNECT/Upgrade/101
        error = None
    if error or not collect.complete:
        return _lenient_head(head, request, error or "incomplete")
    h = _Head()
    h.version = f"HTTP/{p.get_http_version()}"
    h.set_fields(_decode_fields(collect.fields))
    h.upgrade = p.should_upgrade()
    if request:
        h.method = p.get_method().decode("ascii")
        url = collect.url
        if sent != start:        # give back the bytes the stand-ins replaced
            at = sent.find(url, len(h.method))
            url = start[at:at + len(url)]
        h.uri = url.decode("latin-1")
    else:
        h.status = p.get_status_code()
        h.reason = collect.reason.decode("latin-1")
    if len(h.values("host")) > 1:
        anomalies.append(A.HOST_HEADER_AMBIGUOUS)
    h.anomalies = tuple(anomalies)
    return h


# --- The common case, without llhttp ---------------------------------------------
#
# Most heads are plain: CRLF line ends, a registered method with an
# origin-form target of printable ASCII, HTTP/1.0 or 1.1, "name: value"
# fields of tokens and visible characters, none of the fields that steer
# llhttp's framing or upgrade logic in ways that are not simply "accepted".
# For exactly those heads llhttp accepts everything and reports the bytes
# as sent, so _fast_head builds the same _Head from two regexes over the
# head decoded once (latin-1 maps each byte to one character), with no
# llhttp parser, callbacks or per-line splitting. Anything else (a bare LF, an
# obs-fold, a byte outside these sets, a long line, Transfer-Encoding,
# Upgrade...) returns None and takes the llhttp path, then the lenient one,
# as before: the fast path only ever skips work, never changes a result.

_FAST_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# A field value without its surrounding blanks: visible bytes (obs-text
# included) with blanks only inside. llhttp accepts all of them.
_FAST_VALUE = r"(?:[^\x00-\x20\x7f](?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)?"
# The field lines of a head and its empty line (cheaper to check than with
# _FAST_FIELD's split of blanks and value, and the same lines).
_FAST_FIELDS = rf"((?:{_FAST_TOKEN}:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*)\r\n"
_FAST_FIELD = re.compile(rf"({_FAST_TOKEN}):[ \t]*({_FAST_VALUE})[ \t]*\r\n")
# A plain head is a start line matching _FAST_REQUEST_LINE (or
# _FAST_RESPONSE_LINE) followed by a fields block matching
# _FAST_FIELDS_BLOCK whole. No part of a start line can hold a CR, so the
# line ends at the first CRLF however it matches: the two tests are the
# one test of the head against both patterns joined. The method is checked
# against _FAST_METHODS after the match (cheaper than an alternation of 34 names).
_FAST_REQUEST_LINE = re.compile(r"([A-Z][A-Z-]*) (/[\x21-\x7e]*) HTTP/1\.([01])\r\n")
# CONNECT is left out: its authority-form target and tunnel are the slow path's.
_FAST_METHODS = METHODS - {"CONNECT"}
# 101 is left out (upgrade), and so is a reason with blanks at its ends.
_FAST_RESPONSE_LINE = re.compile(
    r"HTTP/1\.([01]) (1(?:0[02-9]|[1-9][0-9])|[2-9][0-9][0-9])(?: (" + _FAST_VALUE + r"))?\r\n")
_FAST_FIELDS_BLOCK = re.compile(_FAST_FIELDS)
# Fields the fast path leaves to llhttp (framing and upgrade), or checks
# first (content-length, connection).
_FAST_SPECIAL = frozenset(("content-length", "transfer-encoding", "connection",
                           "proxy-connection", "upgrade"))
_FAST_NEVER = frozenset(("transfer-encoding", "proxy-connection", "upgrade"))
# Most digits of a Content-Length the fast path takes: llhttp refuses a
# length past 2**64 - 1 (20 digits); 15 digits (under a petabyte) stay far
# below that, and a longer one goes to llhttp to judge.
FAST_MAX_LENGTH_DIGITS = 15
_FAST_LENGTH = re.compile(rf"[0-9]{{1,{FAST_MAX_LENGTH_DIGITS}}}")


# Field blocks (everything after the start line) already read, per direction:
# a client sends the same fields with request after request (only the target
# changes), a server much the same with each answer, so the fields, their
# names, what they say of the framing and the values the events carry are
# worked out once per block. A block is cached only up to
# MAX_CACHED_BLOCK_CHARS (a long Cookie makes each block differ anyway);
# MAX_CACHED_BLOCKS bounds the memory (about 1024 x 1 KiB plus its
# objects); when full the cache starts over.
MAX_CACHED_BLOCKS = 1024
MAX_CACHED_BLOCK_CHARS = 1024
_blocks: dict[tuple[str, bool], "_Block | None"] = {}


class _Block:
    """One plain fields block, read: what _fast_head and _request/_response
    take from it. ``framed`` is _framing's answer for it (framing, length,
    chunked, error) with the anomalies of the head after _framing's."""
    __slots__ = ("fields", "names", "anomalies", "framed", "host", "user_agent", "content_type")


def _fast_block(rest: str, request: bool) -> "_Block | None":
    """The fields block ``rest`` of a plain head, read (None: not plain)."""
    if _FAST_FIELDS_BLOCK.fullmatch(rest) is None:
        return None
    fields = _FAST_FIELD.findall(rest, 0, len(rest) - 2)     # without the empty line
    if len(fields) > MAX_HEADERS:
        return None
    names = [n.lower() for n, _ in fields]
    if not _FAST_SPECIAL.isdisjoint(names):
        if not _FAST_NEVER.isdisjoint(names):
            return None
        count = names.count("content-length")
        if count > 1 or count and not _FAST_LENGTH.fullmatch(fields[names.index("content-length")][1]):
            return None
        for n, (_, v) in zip(names, fields):
            if n == "connection" and "upgrade" in v.lower():
                return None
    b = _Block()
    h = _Head()
    h.fields = b.fields = tuple(fields)
    h.names = b.names = names
    b.anomalies = (A.HOST_HEADER_AMBIGUOUS,) if names.count("host") > 1 else ()
    anomalies = list(b.anomalies)
    framing, cl, chunked, error = _framing(h, request, anomalies)
    b.framed = (framing, cl, chunked, error, tuple(anomalies))
    b.host, b.user_agent, b.content_type = h.get("host"), h.get("user-agent"), h.get("content-type")
    return b


def _fast_head(text: str, request: bool, side: "_Side | None" = None) -> _Head | None:
    """``text`` (a complete head, latin-1 decoded, at most MAX_FIELD_LINE_BYTES
    long so that no line is too long) parsed as _parse_head would, if it is a
    plain one (see above); None: leave it to _parse_head. ``side``: the
    direction the head came on, whose last fields block is tried first."""
    m = (_FAST_REQUEST_LINE if request else _FAST_RESPONSE_LINE).match(text)
    if m is None or request and m[1] not in _FAST_METHODS:
        return None
    at = m.end()
    last = side.last_block if side is not None else None
    if last is not None and len(text) - at == len(last[0]) and text.endswith(last[0]):
        # The same fields block as the side's last head (a side is one
        # direction, so ``request`` is the same too): the block read then,
        # with no slice, key or hash of it (a client repeats its fields
        # with every request). A comparison of the text, so whatever
        # _blocks holds or dropped since, the block is the one it would give.
        b = last[1]
    else:
        rest = text[at:]
        key = (rest, request)
        b = _blocks.get(key, False)
        if b is False:
            b = _fast_block(rest, request)
            if len(rest) <= MAX_CACHED_BLOCK_CHARS:
                if len(_blocks) >= MAX_CACHED_BLOCKS:
                    _blocks.clear()
                _blocks[key] = b
        if side is not None and len(rest) <= MAX_CACHED_BLOCK_CHARS:
            side.last_block = (rest, b)
    if b is None:
        return None
    h = _Head()
    h.fields, h.names, h.anomalies, h.block = b.fields, b.names, b.anomalies, b
    if request:
        h.method, h.uri, minor = m.groups()
    else:
        minor, status, reason = m.groups()
        h.status, h.reason = int(status), reason or ""
    h.version = "HTTP/1.1" if minor == "1" else "HTTP/1.0"
    return h


# RFC 9110 5.6.2 token: a method, a field name.
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Blanks servers take as delimiters in a start line (Apache and nginx take
# runs of SP and HTAB; VT and FF are whitespace to C's isspace()).
_BLANKS = re.compile(rb"[ \t\x0b\x0c]+")
# The last word of a request line, when it is a version of some kind.
_LOOSE_VERSION = re.compile(rb"(?i)HTTP/[0-9.]*")
_STATUS = re.compile(rb"[0-9]{3}")
# CTL bytes (HTAB aside) and DEL: never valid in a target or a field value.
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CONNECTION_UPGRADE = re.compile(r"(?i)(^|,)\s*upgrade\s*(,|$)")


def _lenient_head(head: bytes, request: bool, llhttp_error: str | None) -> _Head | str:
    """Read a head llhttp refused the way tolerant servers (and tshark and
    Zeek) do, naming each deviation; a str says why it is not HTTP at all."""
    anomalies: list[str] = []
    lines = _lines(head, anomalies, request=request, lenient=True)
    if not lines or not lines[0].strip():
        return "empty start line"
    if len(lines) - 1 > MAX_HEADERS:
        return f"{len(lines) - 1} header fields, more than {MAX_HEADERS}"
    h = _Head()
    start = lines[0]
    if start[:1] in b" \t\x0b\x0c":
        _add(anomalies, A.REQUEST_LINE_LEADING_WHITESPACE)   # Suricata names only the request's
        start = start.lstrip(b" \t\x0b\x0c")
    line = start.rstrip(b" \t\x0b\x0c")
    trailing = line != start
    if request:
        m = _TOKEN.match(line)
        if m is None or m.end() > MAX_LENIENT_METHOD:
            return f"not an HTTP request line: {start[:40]!r}"
        method = m[0]
        d = _BLANKS.match(line, m.end())
        if d is None:
            return f"no blank after the method in the request line {start[:40]!r}"
        if d[0] != b" ":
            _add(anomalies, A.METHOD_DELIM_NON_COMPLIANT)
        rest = line[d.end():]
        words = _BLANKS.split(rest)
        last = _BLANKS.search(rest[::-1])
        if len(words) > 1 and _LOOSE_VERSION.fullmatch(words[-1]) and last is not None:
            # target, blanks, version (the last blanks found from the end)
            cut = len(rest) - last.end()
            target, sep, version = rest[:cut], rest[cut:len(rest) - last.start()], words[-1]
            if sep != b" " or trailing:
                _add(anomalies, A.URI_DELIM_NON_COMPLIANT)
            if version not in (b"HTTP/1.0", b"HTTP/1.1"):
                _add(anomalies, A.REQUEST_INVALID_PROTOCOL)
        else:
            # No version: HTTP/0.9's "GET /path", or a target holding blanks.
            target, version = rest, b"HTTP/0.9"
            _add(anomalies, A.REQUEST_LINE_MISSING_PROTOCOL)
        if not target:
            return f"no request target in {start[:40]!r}"
        if _BLANKS.search(target):
            _add(anomalies, A.URI_DELIM_NON_COMPLIANT)
        if _CTL.search(target):
            _add(anomalies, A.REQUEST_URI_INVALID_CHARS)
        if target.translate(_HIGH_TO_X) != target:
            _add(anomalies, A.REQUEST_URI_NON_ASCII)
        if method not in _METHOD_BYTES:
            _add(anomalies, A.METHOD_UNKNOWN)
        h.method, h.uri = method.decode("latin-1"), target.decode("latin-1")
        h.version = version.decode("latin-1")
    else:
        words = _BLANKS.split(line, maxsplit=2)
        if not _LOOSE_VERSION.fullmatch(words[0]) or len(words) < 2 or not words[1].isdigit():
            return f"not an HTTP status line: {start[:40]!r}"
        if not words[0].startswith(b"HTTP/1."):
            _add(anomalies, A.RESPONSE_INVALID_PROTOCOL)
        if not _STATUS.fullmatch(words[1]) or _BLANKS.match(line, len(words[0]))[0] != b" ":
            _add(anomalies, A.RESPONSE_INVALID_STATUS)
        status = int(words[1])
        if not 100 <= status <= 999:
            return f"invalid response head: status {words[1][:8]!r}"
        h.version, h.status = words[0].decode("latin-1"), status
        h.reason = words[2].decode("latin-1") if len(words) > 2 else ""
    fields = []
    bad_field = _pick(request, A.REQUEST_HEADER_INVALID, A.RESPONSE_HEADER_INVALID)
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            # No colon: the first word as the name, the rest as its value
            # (what reaches an application that splits leniently).
            _add(anomalies, _pick(request, A.REQUEST_FIELD_MISSING_COLON, A.RESPONSE_FIELD_MISSING_COLON))
            parts = _BLANKS.split(line.strip(b" \t"), maxsplit=1)
            name, value = parts[0], parts[1] if len(parts) > 1 else b""
        else:
            stripped = name.strip(b" \t")
            if stripped != name or not _TOKEN.fullmatch(stripped):
                _add(anomalies, bad_field)     # blanks before ':' or a byte outside the token set
            name = stripped
        if _CTL.search(value):
            _add(anomalies, bad_field)
        fields.append((name, value))
    h.set_fields(_decode_fields(fields))
    if len(h.values("host")) > 1:
        _add(anomalies, A.HOST_HEADER_AMBIGUOUS)
    if request:
        h.upgrade = h.method == "CONNECT" or (
            h.get("upgrade") is not None and bool(_CONNECTION_UPGRADE.search(h.get("connection") or "")))
    else:
        h.upgrade = h.status == 101
    framing: list[str] = []
    if not anomalies and not isinstance(_content_length(h, request, framing), str) and not framing:
        # llhttp saw something the checks above (and _framing's) do not name.
        anomalies.append(A.UNKNOWN_ERROR)
    h.anomalies = tuple(anomalies)
    return h


def _content_length(h: _Head, request: bool, anomalies: list[str]) -> int | None | str:
    """The body length Content-Length gives (None: no field), read leniently
    (noted); a str: why no length can be read from it."""
    texts = h.values("content-length")
    if not texts:
        return None
    values = []
    for t in texts:
        for item in t.split(","):           # "5, 5" is a list of duplicates (RFC 9110 8.6)
            item = item.strip(" \t")
            digits = item.removeprefix("+")
            if not (digits.isascii() and digits.isdigit()):
                return f"invalid Content-Length {t!r}"
            if digits != item or len(item) > 1 and item.startswith("0"):
                _add(anomalies, _pick(request, A.INVALID_CONTENT_LENGTH_FIELD_IN_REQUEST,
                                      A.INVALID_CONTENT_LENGTH_FIELD_IN_RESPONSE))
            values.append(int(digits))
    if len(values) > 1:
        _add(anomalies, _pick(request, A.DUPLICATE_CONTENT_LENGTH_FIELD_IN_REQUEST,
                              A.DUPLICATE_CONTENT_LENGTH_FIELD_IN_RESPONSE))
    # Servers disagree on which of two lengths counts; the largest makes
    # the most bytes body, so what a server might take as a next
    # (smuggled) request is inspected as this one's body.
    return max(values)


def _framing(h: _Head, request: bool, anomalies: list[str]) -> tuple[str | None, int | None, bool, str | None]:
    """(how the body is framed, Content-Length, chunked, error) from the fields
    (RFC 9112 6.3). Framing is "chunked", "length", "eof" or None (no body);
    the caller overrides it where the method or status rules out a body.
    Tolerated deviations are added to ``anomalies``."""
    cl = _content_length(h, request, anomalies)
    if isinstance(cl, str):
        return None, None, False, cl
    te = h.values("transfer-encoding")
    if not te:
        if cl is not None:
            return "length", cl, False, None
        return "eof", None, False, None
    # A list (RFC 9110 5.6.1): empty elements do not count; codings are
    # case-insensitive and may carry parameters.
    codings = [c.partition(";")[0].strip(" \t").lower() for v in te for c in v.split(",")]
    codings = [c for c in codings if c]
    chunked = bool(codings) and codings[-1] == "chunked"
    if cl is not None:
        # Transfer-Encoding wins (RFC 9112 6.3), but the pair is how request
        # smuggling works and servers disagree on it: named, and read as TE.
        _add(anomalies, A.CONTENT_LENGTH_WITH_TRANSFER_ENCODING)
    if chunked and codings.count("chunked") > 1:
        return None, None, True, "chunked applied twice in Transfer-Encoding"
    if chunked:
        return "chunked", None, True, None
    if request or not codings:
        # A request body must end with chunked, or its length is unknown (RFC 9112 6.3).
        _add(anomalies, _pick(request, A.INVALID_TRANSFER_ENCODING_VALUE_IN_REQUEST,
                              A.INVALID_TRANSFER_ENCODING_VALUE_IN_RESPONSE))
        return None, None, False, f"Transfer-Encoding {', '.join(te)!r} without final chunked"
    return "eof", None, False, None     # a response: until the server closes


# --- The parser ---------------------------------------------------------------

# Direction states.
_HEAD = "head"              # waiting for a start line and header fields
_BODY = "body"              # Content-Length body: side.remaining bytes left
_CHUNK_SIZE = "chunk-size"  # chunked: waiting for a chunk-size line
_CHUNK_DATA = "chunk-data"  # chunked: side.remaining bytes of chunk data left
_CHUNK_END = "chunk-end"    # chunked: CRLF after chunk data
_TRAILERS = "trailers"      # chunked: trailer section after the last chunk
_UNTIL_EOF = "until-eof"    # response body delimited by the end of the stream
_AWAIT = "await"            # client, after CONNECT/Upgrade: holding bytes until the answer
_TUNNEL = "tunnel"          # not HTTP any more
_DEAD = "dead"              # gave up after Malformed
_DONE_STATES = (_DEAD, _TUNNEL)     # the parser reads no more of the side (_Side.done)


class _Pending:
    """A request whose response has not started."""
    __slots__ = ("method", "target", "switch")

    def __init__(self, method: str, target: str, switch: str | None):
        self.method = method
        self.target = target
        self.switch = switch    # "connect" / "upgrade": the answer may end HTTP


class _Side(StreamSide):
    __slots__ = ("state", "scan", "remaining", "body_size", "body_emitted", "parts", "after",
                 "decoder", "coding_anomaly", "last_block")
    max_buffered = MAX_BUFFERED_BYTES

    def __init__(self, direction: Direction) -> None:
        super().__init__(direction)
        self.state = _HEAD
        self.scan = 0               # stream offset from which to look for a line end again
        self.remaining = 0          # body or chunk bytes left
        self.body_size = 0
        self.body_emitted = 0
        self.parts: list[bytes] = []    # body bytes not yet emitted in this call
        self.after = _HEAD          # state after the current message
        self.decoder: ContentDecoder | None = None  # the current body's Content-Encoding
        self.coding_anomaly: HttpAnomalyEvent | None = None   # its failure, not yet emitted
        # (fields block text, its _Block or None) of this side's last plain-looking head (_fast_head)
        self.last_block: tuple[str, "_Block | None"] | None = None

    @property
    def done(self) -> bool:
        return self.state in _DONE_STATES


class HttpParser(StreamParser):
    """HTTP/1.x on one TCP connection (both directions)."""

    def __init__(self) -> None:
        # (A dict display, not a comprehension: no function call per parser, one a flow.)
        self._sides = {_TO_SERVER: _Side(_TO_SERVER), _TO_CLIENT: _Side(_TO_CLIENT)}
        self._pending: deque[_Pending] = deque()
        self._unknown_pending = 0   # requests past MAX_PENDING_REQUESTS, queued after _pending

    # -- introspection (tests, memory accounting)

    def buffered(self, direction: Direction) -> int:
        """Bytes held for ``direction`` (body parts are emitted before a call returns)."""
        side = self._sides[direction]
        return len(side.buf) + sum(map(len, side.parts))

    def pending_requests(self) -> int:
        """Requests waiting for their response (the ones paired by method)."""
        return len(self._pending)

    # -- Parser API

    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        if side.eof or side.state in _DONE_STATES:
            if not side.accept(data):     # (refused after the end; only counted when done)
                return []
        else:
            side.buf += data              # what side.accept does with an open side's bytes
        events: list[Event] = []
        self._run(side, events)
        return events

    def receive_eof(self, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        side.eof = True
        events: list[Event] = []
        if side.state != _AWAIT:    # AWAIT: decided when the answer comes
            self._finish(side, events)
        return events

    def receive_gap(self, direction: Direction, size: int) -> list[Event]:
        side = self._sides[direction]
        events: list[Event] = []
        if side.state in (_DEAD, _TUNNEL):
            side.offset += size
        elif not side.buf and (side.state == _UNTIL_EOF or
                               (side.state in (_BODY, _CHUNK_DATA) and size <= side.remaining)):
            # Lost body bytes: the framing is known, so parsing goes on.
            side.body_size += size
            if side.decoder is not None:    # a coded stream cannot be followed past a hole
                side.decoder.abandon()
            side.offset += size
            if side.state != _UNTIL_EOF:
                side.remaining -= size
                if side.remaining == 0 and side.state == _BODY:
                    self._end_message(side, events)
                elif side.remaining == 0:
                    side.state = _CHUNK_END
        else:
            self._fail(side, f"gap of {size} bytes in the stream", len(side.buf), events)
            side.discard()
            side.offset += size
        return events

    def cut_head(self, direction: Direction) -> list[Event]:
        """No more bytes of ``direction`` will be seen (the kernel's
        inspection budget ran out) while a message head is incomplete: report
        the request it starts, read leniently from its complete lines and
        named REQUEST_FIELD_TOO_LONG, so that the rules still read its
        target and fields; then give up on the direction (Malformed)."""
        side = self._sides[direction]
        if side.state != _HEAD or not side.buf.strip(b"\r\n"):
            return []
        events: list[Event] = []
        skip = len(side.buf) - len(side.buf.lstrip(b"\r\n"))
        buf = bytes(side.buf[skip:])
        if direction == Direction.TO_SERVER:
            last = buf.rfind(b"\n")
            lines = buf[:last + 1] if last >= 0 else buf + b"\r\n"   # a start line cut short
            h = _lenient_head(lines + b"\r\n", True, None)
            if not isinstance(h, str):
                anomalies = [a for a in h.anomalies if a != A.UNKNOWN_ERROR]
                _add(anomalies, A.REQUEST_FIELD_TOO_LONG)
                events.append(HttpRequest(
                    side.direction, h.method, h.uri, h.version, h.get("host"), h.get("user-agent"),
                    h.get("content-type"), h.fields, None, False, tuple(anomalies), side.offset + skip))
        self._fail(side, "message head cut by the inspection budget", skip, events)
        side.discard()
        return events

    # -- the loop

    def _run(self, side: _Side, events: list[Event]) -> None:
        """Consume what ``side.buf`` holds as far as it goes."""
        i = 0
        n = len(side.buf)
        while True:
            j = _STATES[side.state](self, side, i, events)
            if j is None:
                break
            i = j
            if i == n:
                # Every state waits (returns None) at the end of the buffer,
                # so it need not be asked. (The chunk-size state's scan
                # offset it would set equals the offset after consume.)
                break
        side.consume(i)
        if side.parts or side.coding_anomaly is not None:   # (_flush's tests, without the call when both fail)
            self._flush(side, events)

    def _finish(self, side: _Side, events: list[Event]) -> None:
        """End of stream on ``side``."""
        if side.state == _UNTIL_EOF:
            self._end_message(side, events)
        elif side.state == _HEAD and not side.buf:
            pass
        elif side.state not in (_DEAD, _TUNNEL, _AWAIT):
            what = {_HEAD: "a message head", _BODY: f"the body ({side.remaining} bytes missing)"}
            self._fail(side, f"stream ended inside {what.get(side.state, 'a chunked body')}",
                       len(side.buf), events)
            side.discard()
        if side.parts or side.coding_anomaly is not None:   # (_flush's tests, as in _run)
            self._flush(side, events)

    # -- states: each returns the new index into side.buf, or None to wait for bytes

    def _st_head(self, side: _Side, i: int, events: list[Event]) -> int | None:
        buf, n = side.buf, len(side.buf)
        start = i
        while i < n and buf[i] in b"\r\n":   # empty lines between messages (RFC 9112 2.2)
            i += 1
        if i == n:
            return i if i > start else None
        request = side.direction == _TO_SERVER
        # A plain head (_fast_head) ends at its first CRLF CRLF: all its lines
        # end with CRLF, it has no bare LF, and only its last line is empty,
        # so no earlier "\n\r?\n" (_HEAD_END) is in it. A find of the CRLF
        # CRLF (a memchr-backed search, a fraction of the regex's) is taken
        # when _fast_head takes the head it ends; anything else (no CRLF
        # CRLF, a bare LF, a head that is not plain) goes to _HEAD_END's
        # search below, as before. One byte before the scan offset: a CRLF
        # CRLF may start there (_HEAD_END's match could not).
        at = side.scan - side.offset - 1
        end = buf.find(b"\r\n\r\n", at if at > i else i, i + MAX_FIELD_LINE_BYTES) + 4
        # (A plain head starts as _lenient_bad_start wants, a method and SP
        # or "HTTP/", so it need not be asked; every line of a head this
        # short fits MAX_FIELD_LINE_BYTES.)
        if 4 <= end - i <= MAX_FIELD_LINE_BYTES:
            # (A head that is the whole buffer, as a record of one request
            # mostly is, decoded without a copy of it first.)
            head = _fast_head((buf if i == 0 and end == n else buf[i:end]).decode("latin-1"), request, side)
            if head is not None:
                if request:
                    return self._request(side, head, side.offset + i, end, events)
                return self._response(side, head, side.offset + i, end, events)
        m = _HEAD_END.search(buf, max(i, side.scan - side.offset), i + MAX_HEAD_BYTES)
        reason = _lenient_bad_start(bytes(buf[i:i + _START_PREFIX_BYTES]), request)
        if reason:
            return self._fail(side, reason, i, events)
        if m is None:
            end = _http09_end(buf, i) if request else None
            if end is None:
                if n - i >= MAX_HEAD_BYTES:
                    return self._fail(side, f"message head longer than {MAX_HEAD_BYTES} bytes", i, events)
                side.scan = side.offset + max(i, n - 2)
                return i if i > start else None
            # An HTTP/0.9-style request is its request line: the empty line
            # that ends a head is added for the parsers.
            head = _parse_head(bytes(buf[i:end]) + (b"\r\n" if buf[end - 2:end] == b"\r\n" else b"\n"),
                               request)
        else:
            end = m.end()
            head = _parse_head(bytes(buf[i:end]), request)
        if isinstance(head, str):
            return self._fail(side, head, i, events)
        at = side.offset + i
        if request:
            return self._request(side, head, at, end, events)
        return self._response(side, head, at, end, events)

    def _st_body(self, side: _Side, i: int, events: list[Event]) -> int | None:
        take = min(side.remaining, len(side.buf) - i)
        if take <= 0:
            return None
        self._body(side, i, i + take)
        side.remaining -= take
        if side.remaining == 0:
            self._end_message(side, events)
        return i + take

    def _st_chunk_size(self, side: _Side, i: int, events: list[Event]) -> int | None:
        buf, n = side.buf, len(side.buf)
        nl = buf.find(b"\n", max(i, side.scan - side.offset), i + MAX_CHUNK_LINE_BYTES)
        if nl < 0:
            if n - i >= MAX_CHUNK_LINE_BYTES:
                return self._fail(side, f"chunk-size line longer than {MAX_CHUNK_LINE_BYTES} bytes",
                                  i, events)
            side.scan = side.offset + n
            return None
        line = bytes(buf[i:nl])
        m = _CHUNK_LINE.fullmatch(line[:-1] if line.endswith(b"\r") else line)
        if m is None:
            # Read as tolerant servers do (leading blanks, "0x", more than
            # 16 digits of which the leading ones are zeros, junk after the
            # digits), and named.
            m = _LENIENT_CHUNK_LINE.match(line)
            if m is None or len(m[1].lstrip(b"0")) > 16:
                return self._fail(side, f"invalid chunk-size line {line[:40]!r}", i, events)
            request = side.direction == Direction.TO_SERVER
            events.append(HttpAnomalyEvent(side.direction, _pick(
                request, A.INVALID_REQUEST_CHUNK_LEN, A.INVALID_RESPONSE_CHUNK_LEN), side.offset + i))
        size = int(m[1], 16)
        if size:
            side.state, side.remaining = _CHUNK_DATA, size
        else:
            side.state, side.scan = _TRAILERS, 0
        return nl + 1

    def _st_chunk_data(self, side: _Side, i: int, events: list[Event]) -> int | None:
        take = min(side.remaining, len(side.buf) - i)
        if take <= 0:
            return None
        self._body(side, i, i + take)
        side.remaining -= take
        if side.remaining == 0:
            side.state = _CHUNK_END
        return i + take

    def _st_chunk_end(self, side: _Side, i: int, events: list[Event]) -> int | None:
        tail = bytes(side.buf[i:i + 2])
        if tail in (b"", b"\r"):
            return None
        if tail[:1] == b"\n" or tail == b"\r\n":      # bare LF tolerated, as in heads
            side.state, side.scan = _CHUNK_SIZE, 0
            return i + (1 if tail[:1] == b"\n" else 2)
        # Named, and read on as the next chunk-size line: where a server
        # that does not check the CRLF would go on.
        events.append(HttpAnomalyEvent(side.direction, A.CHUNK_DATA_NOT_TERMINATED, side.offset + i))
        side.state, side.scan = _CHUNK_SIZE, 0
        return i

    def _st_trailers(self, side: _Side, i: int, events: list[Event]) -> int | None:
        buf, n = side.buf, len(side.buf)
        if buf[i:i + 1] == b"\n" or buf[i:i + 2] == b"\r\n":   # no trailer fields
            self._end_message(side, events)
            return i + (1 if buf[i] == 10 else 2)
        if buf[i:n] in (b"", b"\r"):
            return None
        m = _HEAD_END.search(buf, max(i, side.scan - side.offset), i + MAX_HEAD_BYTES)
        if m is None:
            if n - i >= MAX_HEAD_BYTES:
                return self._fail(side, f"trailer section longer than {MAX_HEAD_BYTES} bytes",
                                  i, events)
            side.scan = side.offset + max(i, n - 2)
            return None
        lines = _lines(bytes(buf[i:m.end()]), [], first_field=0)
        if len(lines) > MAX_HEADERS:
            return self._fail(side, f"{len(lines)} trailer fields, more than {MAX_HEADERS}",
                              i, events)
        fields = []
        for line in lines:
            f = _FIELD_LINE.fullmatch(line)
            if f is None:
                return self._fail(side, f"invalid trailer field {line[:40]!r}", i, events)
            fields.append((f[1], f[2]))
        self._end_message(side, events, _decode_fields(fields))
        return m.end()

    def _st_until_eof(self, side: _Side, i: int, events: list[Event]) -> int | None:
        n = len(side.buf)
        if i == n:
            return None
        self._body(side, i, n)
        return n

    def _st_await(self, side: _Side, i: int, events: list[Event]) -> int | None:
        if len(side.buf) - i > MAX_TUNNEL_PENDING_BYTES:
            return self._fail(side, f"more than {MAX_TUNNEL_PENDING_BYTES} bytes sent before "
                              "the answer to CONNECT/Upgrade", i, events)
        return None

    def _st_done(self, side: _Side, i: int, events: list[Event]) -> int | None:
        n = len(side.buf)
        return n if i < n else None

    # -- messages

    def _request(self, side: _Side, h: _Head, at: int, end: int, events: list[Event]) -> int:
        b = h.block
        if b is not None:           # a plain head: its fields block was read once (_fast_block)
            framing, cl, chunked, error, anomalies = b.framed
            host, user_agent, content_type = b.host, b.user_agent, b.content_type
        else:
            anomalies = list(h.anomalies)
            framing, cl, chunked, error = _framing(h, True, anomalies)
            anomalies = tuple(anomalies)
            host, user_agent, content_type = h.get("host"), h.get("user-agent"), h.get("content-type")
        error = error or h.error
        switch = "connect" if h.method == "CONNECT" else "upgrade" if h.upgrade else None
        if h.method == "CONNECT":
            framing = None          # RFC 9110 9.3.6: CONNECT content has no meaning
        elif framing == "eof":
            framing = None          # RFC 9112 6.3: a request without length has no body
        events.append(_new_request(
            side.direction, h.method, h.uri, h.version, host, user_agent,
            content_type, h.fields, cl, chunked, anomalies, at))
        if error:
            return self._fail(side, error, at - side.offset, events)
        if len(self._pending) < MAX_PENDING_REQUESTS and not self._unknown_pending:
            self._pending.append(_Pending(h.method, h.uri if switch == "connect"
                                          else h.get("upgrade") or "", switch))
        else:
            self._unknown_pending += 1
        side.after = _AWAIT if switch else _HEAD
        side.decoder = self._coding(side, h, end) if framing and "content-encoding" in h.names else None
        return self._start_body(side, framing, cl, end, events)

    def _response(self, side: _Side, h: _Head, at: int, end: int, events: list[Event]) -> int:
        interim = 100 <= h.status < 200 and h.status != 101
        req = self._pair(pop=not interim)
        method = req.method if req else None
        b = h.block
        if b is not None:           # a plain head: its fields block was read once (_fast_block)
            framing, cl, chunked, error, anomalies = b.framed
            content_type = b.content_type
        else:
            anomalies = list(h.anomalies)
            framing, cl, chunked, error = _framing(h, False, anomalies)
            anomalies = tuple(anomalies)
            content_type = h.get("content-type")
        error = error or h.error
        events.append(_new_response(
            side.direction, h.status, h.reason, h.version, content_type, h.fields,
            method, cl, chunked, anomalies, at))
        if error:
            return self._fail(side, error, at - side.offset, events)
        if h.status == 101 or (method == "CONNECT" and 200 <= h.status < 300):
            if h.status == 101:     # the answer names the protocol chosen
                via, target = "upgrade", h.get("upgrade") or (req.target if req else "")
            else:
                via, target = "connect", req.target if req else ""
            self._end_message(side, events)
            return self._tunnel(side, via, target, h.status, end, events)
        if interim or method == "HEAD" or h.status in (204, 304):
            framing = None          # RFC 9112 6.3 rules 1 and 2
        side.after = _HEAD
        side.decoder = self._coding(side, h, end) if framing and "content-encoding" in h.names else None
        i = self._start_body(side, framing, cl, end, events)
        if req and req.switch and not interim:
            # Not switched after all: what the client sent meanwhile is HTTP.
            client = self._sides[Direction.TO_SERVER]
            if client.state == _AWAIT:
                client.state = _HEAD
                self._run(client, events)
                if client.eof:
                    self._finish(client, events)
            else:
                client.after = _HEAD
        return i

    def _pair(self, pop: bool) -> _Pending | None:
        if self._pending:
            return self._pending.popleft() if pop else self._pending[0]
        if self._unknown_pending and pop:
            self._unknown_pending -= 1
        return None

    def _start_body(self, side: _Side, framing: str | None, cl: int | None, end: int,
                    events: list[Event]) -> int:
        if framing == "chunked":
            side.state, side.scan = _CHUNK_SIZE, 0
        elif framing == "eof":
            side.state = _UNTIL_EOF
        elif framing == "length" and cl:
            side.state, side.remaining = _BODY, cl
        else:
            self._end_message(side, events)
        return end

    def _coding(self, side: _Side, h: _Head, end: int) -> ContentDecoder | None:
        """A decoder for the body ``h`` frames, if it names a coding to undo."""
        dec = ContentDecoder(h.values("content-encoding"))
        if not dec.decoded:         # identity, or only codings we do not know: as sent
            return None
        if dec.error is not None:
            side.coding_anomaly = HttpAnomalyEvent(side.direction, _CODING_ANOMALY[dec.error],
                                                   side.offset + end)
        return dec

    def _decoded(self, side: _Side, data: bytes | None, at: int) -> None:
        """Decode the next body bytes ``data`` (None: the body's end) and emit
        the result (up to MAX_BODY_EMIT_BYTES); a failure it brings is named."""
        dec = side.decoder
        failed = dec.error is not None
        out = dec.finish() if data is None else dec.feed(data)
        room = MAX_BODY_EMIT_BYTES - side.body_emitted
        if room > 0 and out:
            part = out[:room]
            side.parts.append(part)
            side.body_emitted += len(part)
        if dec.error is not None and not failed:
            side.coding_anomaly = HttpAnomalyEvent(side.direction, _CODING_ANOMALY[dec.error], at)

    def _body(self, side: _Side, a: int, b: int) -> None:
        side.body_size += b - a
        if side.decoder is not None:
            return self._decoded(side, bytes(side.buf[a:b]), side.offset + b)
        room = MAX_BODY_EMIT_BYTES - side.body_emitted
        if room > 0:
            part = bytes(side.buf[a:a + min(room, b - a)])
            side.parts.append(part)
            side.body_emitted += len(part)

    def _flush(self, side: _Side, events: list[Event]) -> None:
        if side.parts:
            events.append(_new_body(side.direction, b"".join(side.parts)))
            side.parts = []
        if side.coding_anomaly is not None:
            events.append(side.coding_anomaly)
            side.coding_anomaly = None

    def _end_message(self, side: _Side, events: list[Event], trailers: Fields = ()) -> None:
        dec = side.decoder
        if dec is None:
            if side.parts or side.coding_anomaly is not None:   # (_flush's tests, as in _run)
                self._flush(side, events)
            if side.body_size or side.body_emitted or trailers:
                events.append(_new_message_end(side.direction, side.body_size, side.body_emitted, trailers))
            else:       # most requests: no body; the event is frozen, so one serves them all
                events.append(_EMPTY_END[side.direction])
        else:
            self._decoded(side, None, side.offset + len(side.buf))
            self._flush(side, events)
            events.append(HttpMessageEnd(side.direction, side.body_size, side.body_emitted, trailers,
                                         dec.decoded, dec.decoded_bytes, dec.error))
            side.decoder = None
        side.body_size = side.body_emitted = 0
        side.state, side.scan = side.after, 0
        side.after = _HEAD

    def _tunnel(self, side: _Side, via: str, target: str, status: int, end: int,
                events: list[Event]) -> int:
        """The response on ``side`` ended HTTP: hand over what each side holds."""
        client = self._sides[Direction.TO_SERVER]
        client_data = bytes(client.buf)
        events.append(HttpTunnel(side.direction, via, target, status,
                                 client.offset, side.offset + end,
                                 client_data, bytes(side.buf[end:])))
        client.discard()
        client.state = side.state = _TUNNEL
        return len(side.buf)

    def _fail(self, side: _Side, reason: str, i: int, events: list[Event]) -> int:
        """Give up on ``side``: Malformed at index ``i`` of its buffer."""
        self._flush(side, events)
        side.decoder = None
        events.append(Malformed(side.direction, reason, side.offset + i))
        side.state = _DEAD
        return len(side.buf)


# The anomaly a decoding failure is reported as.
_CODING_ANOMALY = {
    CodingError.INVALID: A.GZIP_DECOMPRESSION_FAILED,
    CodingError.TRUNCATED: A.GZIP_DECOMPRESSION_FAILED,
    CodingError.TOO_LARGE: A.COMPRESSION_BOMB,
    CodingError.RATIO: A.COMPRESSION_BOMB,
    CodingError.LAYERS: A.TOO_MANY_ENCODING_LAYERS,
}
# The anomalies that are decoding failures (the engine's "decompression" failure kind).
CODING_ANOMALIES = frozenset(_CODING_ANOMALY.values())

_STATES = {
    _HEAD: HttpParser._st_head,
    _BODY: HttpParser._st_body,
    _CHUNK_SIZE: HttpParser._st_chunk_size,
    _CHUNK_DATA: HttpParser._st_chunk_data,
    _CHUNK_END: HttpParser._st_chunk_end,
    _TRAILERS: HttpParser._st_trailers,
    _UNTIL_EOF: HttpParser._st_until_eof,
    _AWAIT: HttpParser._st_await,
    _TUNNEL: HttpParser._st_done,
    _DEAD: HttpParser._st_done,
}


# Bytes of a message's start judged by _lenient_bad_start: leading blanks
# and the longest method a lenient request line may have, with its delimiter.
_START_PREFIX_BYTES = 2 * MAX_LENIENT_METHOD
_LEADING_BLANKS = b" \t\x0b\x0c"
# A header field line (or the start of one): what tells an HTTP/0.9-style
# request line from a versionless line with fields after it.
_FIELD_START = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]*[ \t]*(:|$)")


def _lenient_bad_start(prefix: bytes, request: bool) -> str | None:
    """Why the first bytes of a message cannot start one even read leniently
    (None: they can, so far): any method token, in any case, after blanks.

    Lets garbage fail at once instead of after MAX_HEAD_BYTES."""
    if not request:
        k = min(len(prefix), 5)
        return None if prefix[:k].upper() == b"HTTP/"[:k] else f"not an HTTP status line: {prefix[:16]!r}"
    rest = prefix.lstrip(_LEADING_BLANKS)
    if not rest:
        return None
    m = _TOKEN.match(rest)
    if m is None:
        return f"not an HTTP request line: {prefix[:16]!r}"
    if m.end() == len(rest):        # the method goes on past what is here
        return None if m.end() <= MAX_LENIENT_METHOD else f"not an HTTP request line: {prefix[:16]!r}"
    if rest[m.end()] not in _LEADING_BLANKS:
        return f"not an HTTP request line: {prefix[:16]!r}"
    if m[0] == b"PRI":              # "PRI * HTTP/2.0": prior-knowledge HTTP/2
        return "HTTP/2 connection preface, not HTTP/1.x"
    return None


def _http09_end(buf: bytearray, i: int) -> int | None:
    """End of an HTTP/0.9-style request (a request line without a version,
    no fields) starting at ``buf[i]``, or None: not one (or not yet known)."""
    nl = buf.find(b"\n", i, i + MAX_HEAD_BYTES)
    if nl < 0:
        return None
    line = bytes(buf[i:nl]).rstrip(b"\r").strip(_LEADING_BLANKS)
    words = _BLANKS.split(line)
    if len(words) < 2 or _LOOSE_VERSION.fullmatch(words[-1]):
        return None                 # a version: a head with its empty line still to come
    after = bytes(buf[nl + 1:nl + 1 + MAX_FIELD_LINE_BYTES])
    first = after.split(b"\n", 1)[0].rstrip(b"\r")
    if after and first and _FIELD_START.match(first):
        return None                 # fields follow (or may): wait for the empty line
    return nl + 1


def _bad_start(prefix: bytes, request: bool) -> str | None:
    """Why the first bytes of a message cannot start one (None: they can, so far).

    Lets garbage fail at once instead of after MAX_HEAD_BYTES."""
    if not request:
        k = min(len(prefix), 5)
        return None if prefix[:k] == b"HTTP/"[:k] else f"not an HTTP status line: {prefix[:16]!r}"
    method, sp, _ = prefix.partition(b" ")
    if method == b"PRI" and sp:     # "PRI * HTTP/2.0": prior-knowledge HTTP/2
        return "HTTP/2 connection preface, not HTTP/1.x"
    if sp:
        return None if method in _METHOD_BYTES else f"unknown HTTP method {method[:16]!r}"
    if len(prefix) <= _MAX_METHOD and any(m.startswith(prefix) for m in _METHOD_BYTES):
        return None
    return f"not an HTTP request line: {prefix[:16]!r}"


# --- Detection ------------------------------------------------------------------

_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] [0-9]{3}[ \r\n]")
_VERSION_AT_END = re.compile(rb" HTTP/[0-9]\.[0-9]\r?$")


# A complete request line as tolerant servers read it: any method token,
# blanks, a target, blanks, an HTTP version of some kind.
_LENIENT_REQUEST_LINE = re.compile(
    rb"[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}[ \t\x0b\x0c]+[^\x00-\x20][^\r\n]*[ \t\x0b\x0c](?i:HTTP)/[0-9.]+[ \t]*\r?")


def probe(data: bytes, direction: Direction) -> float:
    """Rate the first bytes of one direction as HTTP/1.x (any port)."""
    data = bytes(data[:4096]).lstrip(b"\r\n")
    got = _strict_probe(data, direction)
    if got >= LIKELY or direction == Direction.TO_CLIENT:
        return got
    # What a lenient server reads as a request (unknown or lower-case
    # method, odd blanks, odd version) is HTTP to the inspector too: such
    # a request must not slip past it as "not HTTP". So is an HTTP/0.9-style
    # "GET /path" line (a Redis "GET key" has no slash).
    eol = data.find(b"\n")
    if eol >= 0 and not data.startswith(b"PRI "):   # HTTP/2's preface is not HTTP/1.x
        line = data[:eol]
        if _LENIENT_REQUEST_LINE.fullmatch(line):
            return LIKELY
        method, sp, target = line.partition(b" ")
        if method in _METHOD_BYTES and target.startswith(b"/"):
            return LIKELY
    return got


def _strict_probe(data: bytes, direction: Direction) -> float:
    if direction == Direction.TO_CLIENT:
        if data.startswith(b"HTTP/1."):
            return CERTAIN if _STATUS_LINE.match(data) else LIKELY
        return POSSIBLE if data and b"HTTP/1.".startswith(data) else NO_MATCH
    method, sp, rest = data[:_MAX_METHOD + 1].partition(b" ")
    if not sp:      # no space yet: a first segment cut inside the method at most
        return POSSIBLE if _bad_start(data, True) is None and data else NO_MATCH
    if method not in _METHOD_BYTES:
        return NO_MATCH
    target = data[len(method) + 1:]
    if not target:
        return POSSIBLE
    if not 0x21 <= target[0] <= 0x7E:
        return NO_MATCH
    eol = data.find(b"\n")
    if eol < 0:
        return LIKELY       # a known method and a target, line not complete yet
    # A complete line without an HTTP version is HTTP/0.9, which nobody
    # speaks, or another text protocol: Redis inline commands look like
    # "GET key" and "COPY a b".
    return CERTAIN if _VERSION_AT_END.search(data[:eol]) else POSSIBLE


# Kernel signatures: the method and its space where that fits in 8 bytes (a
# longer match is a rarer false positive); "PROP" covers PROPFIND and
# PROPPATCH. 15 of the 16 allowed; one left for a later method.
SIGNATURES = (
    *(Signature(0, m, direction=Direction.TO_SERVER) for m in (
        b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ",
        b"CONNECT ", b"PROP", b"MKCOL ", b"MOVE ", b"COPY ", b"LOCK ", b"UNLOCK ")),
    Signature(0, b"HTTP/1.", direction=Direction.TO_CLIENT),
)

PLUGIN = ProtocolPlugin(
    name="http",
    event_kinds=event_kinds(HttpRequest, HttpResponse, HttpBody, HttpMessageEnd, HttpTunnel, HttpAnomalyEvent),
    # CONNECT and Upgrade (h2c, WebSocket) hand the connection to another protocol.
    switches=True,
    probe=probe,
    parser_factory=lambda transport: HttpParser(),
    signatures=SIGNATURES,
    transports=frozenset({"tcp"}),
    description="HTTP/1.x requests and responses, bodies (bounded), CONNECT/Upgrade tunnels",
)
