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
exactly those requests, so they are parsed, and each deviation is named in
the event's ``anomalies``: a rule can still flag it (a proxy and a server
reading such bytes differently is how header injection and smuggling work).

Requests and responses are paired first in, first out; the response side
needs the request's method (HEAD answers have no body; CONNECT answered 2xx
becomes a tunnel). Feed the two directions in capture order: a response fed
before its request is parsed as an answer to an unknown request.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

import httptools

from protocols.api import (CERTAIN, LIKELY, NO_MATCH, POSSIBLE, Direction, Event, Malformed,
                           Parser, ProtocolError, ProtocolPlugin, Signature)

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
    anomalies: tuple[str, ...]  # tolerated deviations, e.g. "bare-lf", "obs-fold"
    offset: int                 # stream offset of the request line


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


@dataclass(frozen=True)
class HttpBody(Event):
    """Decoded body bytes of the current message of ``direction``, in order.

    How a body is cut into events follows how it was fed: at most one HttpBody
    per message per receive_data call.
    """
    kind: ClassVar[str] = "http_body"
    direction: Direction
    data: bytes


@dataclass(frozen=True)
class HttpMessageEnd(Event):
    """The message of ``direction`` is complete. ``body_size`` counts every body
    byte (after chunked decoding, lost ones included); ``body_emitted`` how many
    of them went out as HttpBody (fewer past MAX_BODY_EMIT_BYTES or after a gap)."""
    kind: ClassVar[str] = "http_message_end"
    direction: Direction
    body_size: int
    body_emitted: int
    trailers: Fields = ()


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


# --- Head parsing -------------------------------------------------------------

# End of a head: the first empty line, CRLF or bare LF.
_HEAD_END = re.compile(rb"\n\r?\n")
# RFC 9110 5.1 token, for trailer field names (llhttp checks the head's).
_FIELD_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*)")
# RFC 9112 7.1.1: chunk-size [ chunk-ext ]; blanks before ";" are BWS.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")

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
    """One head as llhttp understood it."""
    __slots__ = ("method", "uri", "status", "reason", "version", "fields", "anomalies",
                 "upgrade", "error")

    def __init__(self) -> None:
        self.method = ""
        self.uri = ""
        self.status = 0
        self.reason = ""
        self.version = ""
        self.fields: Fields = ()
        self.anomalies: tuple[str, ...] = ()
        self.upgrade = False
        self.error: str | None = None   # llhttp objected after the head was complete

    def get(self, name: str) -> str | None:
        for n, v in self.fields:
            if n.lower() == name:
                return v
        return None

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.fields if n.lower() == name]


def _lines(block: bytes, anomalies: list[str], first_field: int = 1) -> list[bytes]:
    """The lines of a head (``first_field`` 1: a start line, then fields) or a
    trailer section (0), which ends with an empty line: CR before LF dropped,
    obs-fold joined (both noted in ``anomalies``)."""
    raw = block.split(b"\n")[:-1]        # the last item is what follows the final LF: b""
    if any(not line.endswith(b"\r") for line in raw):
        anomalies.append("bare-lf")
    raw = [line[:-1] if line.endswith(b"\r") else line for line in raw[:-1]]  # drop the empty line
    out: list[bytes] = []
    for line in raw:
        # A line starting with a blank continues the previous field (obs-fold).
        # Not right after the start line: RFC 9112 2.2 makes that an error,
        # and llhttp reports it.
        if line[:1] in (b" ", b"\t") and len(out) > first_field:
            out[-1] = out[-1].rstrip(b" \t") + b" " + line.strip(b" \t")
            if "obs-fold" not in anomalies:
                anomalies.append("obs-fold")
        else:
            out.append(line)
    return out


def _decode_fields(pairs) -> Fields:
    return tuple((n.decode("latin-1"), v.strip(b" \t").decode("latin-1")) for n, v in pairs)


def _parse_head(head: bytes, request: bool) -> _Head | str:
    """Parse a complete head (through its empty line); a str says why it is not HTTP."""
    anomalies: list[str] = []
    lines = _lines(head, anomalies)
    if len(lines) - 1 > MAX_HEADERS:
        return f"{len(lines) - 1} header fields, more than {MAX_HEADERS}"
    start = lines[0]
    if request:
        # llhttp also takes "GET /" (HTTP/0.9) and RTSP/ICE versions.
        if not start.rpartition(b" ")[2].startswith(b"HTTP/"):
            return "request line does not end with an HTTP version"
        sent = start.translate(_HIGH_TO_X)
        if sent != start:
            anomalies.append("non-ascii-target")
    else:
        if not start.startswith(b"HTTP/"):
            return "status line does not start with an HTTP version"
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
    if not collect.complete:
        what = "request" if request else "response"
        return f"invalid {what} head: {error or 'incomplete'}"
    h = _Head()
    if error and not error.startswith("Pause on"):   # llhttp pauses at CONNECT/Upgrade/101
        h.error = error
    h.version = f"HTTP/{p.get_http_version()}"
    h.fields = _decode_fields(collect.fields)
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
        anomalies.append("duplicate-host")
    h.anomalies = tuple(anomalies)
    return h


def _framing(h: _Head, request: bool) -> tuple[str | None, int | None, bool, str | None]:
    """(how the body is framed, Content-Length, chunked, error) from the fields
    (RFC 9112 6.3). Framing is "chunked", "length", "eof" or None (no body);
    the caller overrides it where the method or status rules out a body."""
    cl_text = h.get("content-length")
    cl = None
    if cl_text is not None:     # llhttp checked the digits and refused duplicates
        try:
            cl = int(cl_text)
        except ValueError:
            return None, None, False, f"invalid Content-Length {cl_text!r}"
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
        # smuggling works and servers disagree on it: report it and stop.
        return None, cl, chunked, "both Content-Length and Transfer-Encoding (request smuggling?)"
    if chunked and codings.count("chunked") > 1:
        return None, None, True, "chunked applied twice in Transfer-Encoding"
    if chunked:
        return "chunked", None, True, None
    if request or not codings:
        # A request body must end with chunked, or its length is unknown (RFC 9112 6.3).
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


class _Pending:
    """A request whose response has not started."""
    __slots__ = ("method", "target", "switch")

    def __init__(self, method: str, target: str, switch: str | None):
        self.method = method
        self.target = target
        self.switch = switch    # "connect" / "upgrade": the answer may end HTTP


class _Side:
    __slots__ = ("direction", "state", "buf", "offset", "scan", "eof", "remaining",
                 "body_size", "body_emitted", "parts", "after")

    def __init__(self, direction: Direction) -> None:
        self.direction = direction
        self.state = _HEAD
        self.buf = bytearray()      # bytes not consumed yet
        self.offset = 0             # stream offset of buf[0]
        self.scan = 0               # stream offset from which to look for a line end again
        self.eof = False
        self.remaining = 0          # body or chunk bytes left
        self.body_size = 0
        self.body_emitted = 0
        self.parts: list[bytes] = []    # body bytes not yet emitted in this call
        self.after = _HEAD          # state after the current message


class HttpParser(Parser):
    """HTTP/1.x on one TCP connection (both directions)."""

    def __init__(self) -> None:
        self._sides = {d: _Side(d) for d in Direction}
        self._pending: deque[_Pending] = deque()
        self._unknown_pending = 0   # requests past MAX_PENDING_REQUESTS, queued after _pending

    # -- introspection (tests, memory accounting)

    def buffered(self, direction: Direction) -> int:
        """Bytes held for ``direction``."""
        side = self._sides[direction]
        return len(side.buf) + sum(map(len, side.parts))

    def pending_requests(self) -> int:
        """Requests waiting for their response (the ones paired by method)."""
        return len(self._pending)

    # -- Parser API

    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        if side.eof:
            raise ProtocolError(f"data after end of stream ({direction.name})")
        if side.state in (_DEAD, _TUNNEL):
            side.offset += len(data)
            return []
        side.buf += data
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
            side.offset += size
            if side.state != _UNTIL_EOF:
                side.remaining -= size
                if side.remaining == 0 and side.state == _BODY:
                    self._end_message(side, events)
                elif side.remaining == 0:
                    side.state = _CHUNK_END
        else:
            self._fail(side, f"gap of {size} bytes in the stream", len(side.buf), events)
            side.offset += len(side.buf) + size
            side.buf.clear()
        return events

    # -- the loop

    def _run(self, side: _Side, events: list[Event]) -> None:
        """Consume what ``side.buf`` holds as far as it goes."""
        i = 0
        while True:
            j = _STATES[side.state](self, side, i, events)
            if j is None:
                break
            i = j
        if i:
            del side.buf[:i]
            side.offset += i
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
            side.offset += len(side.buf)
            side.buf.clear()
        self._flush(side, events)

    # -- states: each returns the new index into side.buf, or None to wait for bytes

    def _st_head(self, side: _Side, i: int, events: list[Event]) -> int | None:
        buf, n = side.buf, len(side.buf)
        start = i
        while i < n and buf[i] in b"\r\n":   # empty lines between messages (RFC 9112 2.2)
            i += 1
        if i == n:
            return i if i > start else None
        request = side.direction == Direction.TO_SERVER
        reason = _bad_start(bytes(buf[i:i + _MAX_METHOD + 1]), request)
        if reason:
            return self._fail(side, reason, i, events)
        m = _HEAD_END.search(buf, max(i, side.scan - side.offset), i + MAX_HEAD_BYTES)
        if m is None:
            if n - i >= MAX_HEAD_BYTES:
                return self._fail(side, f"message head longer than {MAX_HEAD_BYTES} bytes", i, events)
            side.scan = side.offset + max(i, n - 2)
            return i if i > start else None
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
            return self._fail(side, f"invalid chunk-size line {line[:40]!r}", i, events)
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
        return self._fail(side, "chunk data not followed by CRLF", i, events)

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
        framing, cl, chunked, error = _framing(h, True)
        error = error or h.error
        switch = "connect" if h.method == "CONNECT" else "upgrade" if h.upgrade else None
        if h.method == "CONNECT":
            framing = None          # RFC 9110 9.3.6: CONNECT content has no meaning
        elif framing == "eof":
            framing = None          # RFC 9112 6.3: a request without length has no body
        events.append(HttpRequest(
            side.direction, h.method, h.uri, h.version, h.get("host"), h.get("user-agent"),
            h.get("content-type"), h.fields, cl, chunked, h.anomalies, at))
        if error:
            return self._fail(side, error, at - side.offset, events)
        if len(self._pending) < MAX_PENDING_REQUESTS and not self._unknown_pending:
            self._pending.append(_Pending(h.method, h.uri if switch == "connect"
                                          else h.get("upgrade") or "", switch))
        else:
            self._unknown_pending += 1
        side.after = _AWAIT if switch else _HEAD
        return self._start_body(side, framing, cl, end, events)

    def _response(self, side: _Side, h: _Head, at: int, end: int, events: list[Event]) -> int:
        interim = 100 <= h.status < 200 and h.status != 101
        req = self._pair(pop=not interim)
        method = req.method if req else None
        framing, cl, chunked, error = _framing(h, False)
        error = error or h.error
        events.append(HttpResponse(
            side.direction, h.status, h.reason, h.version, h.get("content-type"), h.fields,
            method, cl, chunked, h.anomalies, at))
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

    def _body(self, side: _Side, a: int, b: int) -> None:
        side.body_size += b - a
        room = MAX_BODY_EMIT_BYTES - side.body_emitted
        if room > 0:
            part = bytes(side.buf[a:a + min(room, b - a)])
            side.parts.append(part)
            side.body_emitted += len(part)

    def _flush(self, side: _Side, events: list[Event]) -> None:
        if side.parts:
            events.append(HttpBody(side.direction, b"".join(side.parts)))
            side.parts = []

    def _end_message(self, side: _Side, events: list[Event], trailers: Fields = ()) -> None:
        self._flush(side, events)
        events.append(HttpMessageEnd(side.direction, side.body_size, side.body_emitted, trailers))
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
        client.offset += len(client_data)
        client.buf.clear()
        client.state = side.state = _TUNNEL
        return len(side.buf)

    def _fail(self, side: _Side, reason: str, i: int, events: list[Event]) -> int:
        """Give up on ``side``: Malformed at index ``i`` of its buffer."""
        self._flush(side, events)
        events.append(Malformed(side.direction, reason, side.offset + i))
        side.state = _DEAD
        return len(side.buf)


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


def probe(data: bytes, direction: Direction) -> float:
    """Rate the first bytes of one direction as HTTP/1.x (any port)."""
    data = bytes(data[:4096]).lstrip(b"\r\n")
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
    probe=probe,
    parser_factory=lambda transport: HttpParser(),
    signatures=SIGNATURES,
    transports=frozenset({"tcp"}),
    description="HTTP/1.x requests and responses, bodies (bounded), CONNECT/Upgrade tunnels",
)
