"""protocols/http.py: the sans-IO HTTP/1.x parser, its probe and its plugin."""
from __future__ import annotations

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import http
from protocols.api import (CERTAIN, LIKELY, NO_MATCH, POSSIBLE, Direction, Malformed,
                           ProtocolError)
from protocols.http import (HttpBody, HttpMessageEnd, HttpParser, HttpRequest, HttpResponse,
                            HttpTunnel, probe)

C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def merged(events):
    """Events with adjacent HttpBody of one direction joined: how a body is cut
    into HttpBody events follows how it was fed, nothing else may."""
    out = []
    for e in events:
        if isinstance(e, HttpBody) and out and isinstance(out[-1], HttpBody) \
                and out[-1].direction == e.direction:
            out[-1] = HttpBody(e.direction, out[-1].data + e.data)
        else:
            out.append(e)
    return out


def feed(*steps, parser=None):
    """Feed (direction, bytes) steps (bytes alone: to the server); all events."""
    p = parser or HttpParser()
    events = []
    for step in steps:
        d, data = step if isinstance(step, tuple) else (C, step)
        events += p.receive_data(data, d)
    return events


def of(events, cls):
    return [e for e in events if isinstance(e, cls)]


def body(events, direction):
    return b"".join(e.data for e in events if isinstance(e, HttpBody) and e.direction == direction)


# --- requests ---------------------------------------------------------------------

def test_request_fields_and_case_insensitive_lookups():
    ev = feed(b"POST /upload?x=1 HTTP/1.1\r\nHost: example.com:8081\r\n"
              b"User-Agent: curl/8.0\r\ncontent-TYPE: text/plain\r\nX-A: 1\r\nx-a: 2\r\n"
              b"Content-Length: 5\r\n\r\nhello")
    req, b, end = ev
    assert isinstance(req, HttpRequest) and req.kind == "http_request"
    assert (req.method, req.uri, req.version) == ("POST", "/upload?x=1", "HTTP/1.1")
    assert (req.host, req.user_agent, req.content_type) == ("example.com:8081", "curl/8.0", "text/plain")
    assert req.headers[2] == ("content-TYPE", "text/plain")      # case as sent
    assert req.header("CONTENT-type") == "text/plain"
    assert req.header_values("X-A") == ("1", "2")
    assert req.header("missing", "dflt") == "dflt"
    assert (req.content_length, req.chunked, req.offset, req.anomalies) == (5, False, 0, ())
    assert b == HttpBody(C, b"hello")
    assert end == HttpMessageEnd(C, 5, 5)


PIPELINE = (b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"
            b"\r\n"        # a stray CRLF between messages, tolerated (RFC 9112 2.2)
            b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nabcd\r\n2;ext=1\r\nef\r\n0\r\nT: v\r\n\r\n"
            b"HEAD /d HTTP/1.1\r\nHost: h\r\n\r\n")


def test_pipelined_requests():
    ev = feed(PIPELINE)
    reqs = of(ev, HttpRequest)
    assert [(r.method, r.uri) for r in reqs] == [("GET", "/a"), ("POST", "/b"), ("PUT", "/c"), ("HEAD", "/d")]
    assert [r.offset for r in reqs] == [PIPELINE.index(m) for m in (b"GET", b"POST", b"PUT", b"HEAD")]
    ends = of(ev, HttpMessageEnd)
    assert [(e.body_size, e.trailers) for e in ends] == [(0, ()), (3, ()), (6, (("T", "v"),)), (0, ())]
    assert body(ev, C) == b"xyzabcdef"
    assert not of(ev, Malformed)


@pytest.mark.parametrize("direction,stream,answer", [
    (C, PIPELINE, None),
    (S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"      # answers HEAD: no body
        b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
     b"GET / HTTP/1.1\r\n\r\n" * 2 + b"HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
])
def test_split_at_every_byte_boundary_gives_the_same_events(direction, stream, answer):
    def run(*chunks):
        p = HttpParser()
        ev = feed(answer, parser=p) if answer else []
        ev += feed(*((direction, c) for c in chunks), parser=p)
        return merged(ev + p.receive_eof(direction))

    whole = run(stream)
    assert not of(whole, Malformed)
    for k in range(len(stream) + 1):
        assert run(stream[:k], stream[k:]) == whole, k
    assert run(*(stream[i:i + 1] for i in range(len(stream)))) == whole


def test_chunked_with_extensions_and_trailers():
    ev = feed(b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
              b"5;name=value;quoted=\"a b\"\r\nhello\r\n"
              b"A  ;x\r\n0123456789\r\n"
              b"0;last\r\nChecksum: abc\r\nX-Folded: a\r\n b\r\n\r\n")
    req = of(ev, HttpRequest)[0]
    assert req.chunked and req.content_length is None
    assert body(ev, C) == b"hello0123456789"
    assert of(ev, HttpMessageEnd) == [HttpMessageEnd(C, 15, 15, (("Checksum", "abc"), ("X-Folded", "a b")))]


@pytest.mark.parametrize("bad,why", [
    (b"zz\r\n", "invalid chunk-size line"),
    (b"-1\r\n", "invalid chunk-size line"),
    (b"5\r\nhelloXX\r\n", "invalid chunk-size line"),    # read on after the missing CRLF
    (b"0\r\nno colon\r\n\r\n", "invalid trailer field"),
    (b"1" * (http.MAX_CHUNK_LINE_BYTES + 1), "longer than"),
])
def test_bad_chunked_framing_is_malformed(bad, why):
    ev = feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + bad)
    [m] = of(ev, Malformed)
    assert why in m.reason and m.direction == C


# --- responses and pairing ----------------------------------------------------------

def test_head_response_has_no_body_and_the_next_response_parses():
    p = HttpParser()
    feed(b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\nGET /small HTTP/1.1\r\nHost: h\r\n\r\n", parser=p)
    ev = feed((S, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: video/mp4\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), parser=p)
    r1, e1, r2, b2, e2 = ev
    assert (r1.request_method, r1.status, r1.content_length, r1.content_type) == \
        ("HEAD", 200, 1000, "video/mp4")
    assert e1 == HttpMessageEnd(S, 0, 0)
    assert (r2.request_method, r2.status) == ("GET", 200)
    assert b2.data == b"ok" and e2.body_size == 2


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(status):
    p = HttpParser()
    feed(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", parser=p)
    ev = feed((S, f"HTTP/1.1 {status} X\r\nContent-Length: 7\r\n\r\n".encode()
                  + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), parser=p)
    assert [(type(e).__name__, getattr(e, "status", None)) for e in ev] == [
        ("HttpResponse", status), ("HttpMessageEnd", None), ("HttpResponse", 200), ("HttpMessageEnd", None)]


def test_expect_100_continue():
    p = HttpParser()
    ev = feed(b"POST /f HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n", parser=p)
    assert [type(e) for e in ev] == [HttpRequest]           # the body has not come yet
    ev = feed((S, b"HTTP/1.1 100 Continue\r\n\r\n"), (C, b"data"),
              (S, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"), parser=p)
    cont, cont_end, b, req_end, final, final_end = ev
    assert (cont.status, cont.reason, cont.request_method) == (100, "Continue", "POST")
    assert cont_end == HttpMessageEnd(S, 0, 0)
    assert b == HttpBody(C, b"data") and req_end == HttpMessageEnd(C, 4, 4)
    assert (final.status, final.request_method) == (201, "POST")  # the 100 did not use up the pairing
    assert p.pending_requests() == 0


def test_response_without_a_request_has_unknown_method():
    [r, _] = feed((S, b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"))
    assert r.request_method is None and r.status == 408


def test_http10_response_without_length_ends_at_eof():
    p = HttpParser()
    feed(b"GET / HTTP/1.0\r\n\r\n", parser=p)
    ev = feed((S, b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>"), (S, b"</html>"), parser=p)
    assert [type(e) for e in ev] == [HttpResponse, HttpBody, HttpBody]
    assert ev[0].version == "HTTP/1.0" and ev[0].content_type == "text/html"
    assert p.receive_eof(S) == [HttpMessageEnd(S, 13, 13)]


def test_response_transfer_encoding_without_chunked_ends_at_eof():
    p = HttpParser()
    feed(b"GET / HTTP/1.1\r\n\r\n", parser=p)
    ev = feed((S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b"), parser=p)
    assert body(ev, S) == b"\x1f\x8b" and p.receive_eof(S) == [HttpMessageEnd(S, 2, 2)]


def test_response_chunked_not_last_is_read_until_eof():
    p = HttpParser()
    feed(b"GET / HTTP/1.1\r\n\r\n", parser=p)
    ev = feed((S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nabcde"), parser=p)
    assert ev[0].chunked is False and body(ev, S) == b"5\r\nabcde"     # not decoded: RFC 9112 6.3
    assert p.receive_eof(S) == [HttpMessageEnd(S, 8, 8)]


# --- tunnels --------------------------------------------------------------------

def test_connect_2xx_becomes_a_tunnel_on_both_directions():
    p = HttpParser()
    connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    hello = b"\x16\x03\x01\x00\x05hello"       # sent before the answer: held, not parsed
    ev = feed(connect + hello, parser=p)
    assert [type(e) for e in ev] == [HttpRequest, HttpMessageEnd]
    assert p.buffered(C) == len(hello)
    answer = b"HTTP/1.1 200 Connection Established\r\n\r\n"
    ev = feed((S, answer + b"\x16\x03\x03"), parser=p)
    r, end, t = ev
    assert r.request_method == "CONNECT" and end.body_size == 0
    assert t == HttpTunnel(S, "connect", "example.com:443", 200,
                           to_server_offset=len(connect), to_client_offset=len(answer),
                           to_server_data=hello, to_client_data=b"\x16\x03\x03")
    assert t.rest == ((C, hello), (S, b"\x16\x03\x03"))
    # HTTP is over on both directions: TLS bytes are not parsed, nor reported.
    assert feed(b"\x16\x03\x01 anything", (S, b"HTTP/1.1 200 OK\r\n\r\n"), parser=p) == []
    assert p.receive_eof(C) == [] and p.receive_eof(S) == []
    assert p.buffered(C) == p.buffered(S) == 0


def test_connect_refused_goes_on_with_http():
    p = HttpParser()
    feed(b"CONNECT a:443 HTTP/1.1\r\n\r\nGET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", parser=p)
    ev = feed((S, b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 2\r\n\r\nno"), parser=p)
    assert [(type(e).__name__, e.direction) for e in ev] == [
        ("HttpResponse", S), ("HttpRequest", C), ("HttpMessageEnd", C),
        ("HttpBody", S), ("HttpMessageEnd", S)]
    assert ev[1].uri == "http://a/" and not of(ev, HttpTunnel)


def test_websocket_upgrade_101_is_a_tunnel_and_ignored_upgrade_is_not():
    up = b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    p = HttpParser()
    feed(up, parser=p)
    ev = feed((S, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n\r\n\x81\x05"), parser=p)
    [t] = of(ev, HttpTunnel)
    assert (t.via, t.target, t.status, t.to_client_data) == ("upgrade", "websocket", 101, b"\x81\x05")
    p = HttpParser()
    feed(up + b"GET /next HTTP/1.1\r\n\r\n", parser=p)
    ev = feed((S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), parser=p)
    assert [r.uri for r in of(ev, HttpRequest)] == ["/next"] and not of(ev, HttpTunnel)


def test_too_much_data_before_the_connect_answer_is_malformed():
    ev = feed(b"CONNECT a:443 HTTP/1.1\r\n\r\n" + b"x" * (http.MAX_TUNNEL_PENDING_BYTES + 1))
    [m] = of(ev, Malformed)
    assert "before the answer" in m.reason


# --- tolerance -------------------------------------------------------------------

def test_obs_fold_is_joined():
    ev = feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: first\r\n  second\r\n\tthird\r\n"
              b"User-Agent: ua\r\n\r\n")
    [r] = of(ev, HttpRequest)
    assert r.header("x-long") == "first second third" and r.user_agent == "ua"
    assert r.anomalies == ("INVALID_REQUEST_FIELD_FOLDING",)
    p = HttpParser()
    feed(b"GET / HTTP/1.1\r\n\r\n", parser=p)
    [r, _] = feed((S, b"HTTP/1.1 204 No Content\r\nX: a\r\n b\r\n\r\n"), parser=p)
    assert r.header("X") == "a b" and "INVALID_RESPONSE_FIELD_FOLDING" in r.anomalies


def test_whitespace_before_the_first_field_is_read_as_a_field_and_named():
    # RFC 9112 2.2: whitespace before the first field is not obs-fold (smuggling vector).
    [r, _] = feed(b"GET / HTTP/1.1\r\n Host: h\r\n\r\n")
    assert r.host == "h" and r.anomalies == ("REQUEST_HEADER_INVALID",)


def test_bare_lf_line_ends():
    p = HttpParser()
    ev = feed(b"GET /lf HTTP/1.1\nHost: h\nUser-Agent: u\n\n"
              b"POST /mix HTTP/1.1\r\nHost: h\nTransfer-Encoding: chunked\r\n\n3\nabc\n0\n\n", parser=p)
    a, _, b, body_ev, end = ev
    assert (a.uri, a.host, a.user_agent, a.anomalies) == ("/lf", "h", "u", ("LINE_TERMINATOR_BARE_LF",))
    assert (b.uri, b.chunked, "LINE_TERMINATOR_BARE_LF" in b.anomalies) == ("/mix", True, True)
    assert body_ev.data == b"abc" and end.body_size == 3
    ev = feed((S, b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"), parser=p)
    assert ev[0].status == 200 and ev[0].anomalies == ("LINE_TERMINATOR_BARE_LF",) and body(ev, S) == b"ok"


def test_bare_cr_reads_as_a_space_and_is_named():
    [r, _] = feed(b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n")
    assert r.header("x") == "a b" and r.anomalies == ("LINE_TERMINATOR_BARE_CR",)


def test_non_ascii_target_is_reported_as_sent():
    [r, _] = feed("GET /caf\u00e9?q=\u00fc HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert r.uri == "/caf\u00c3\u00a9?q=\u00c3\u00bc"        # UTF-8 bytes, latin-1 decoded
    assert r.anomalies == ("REQUEST_URI_NON_ASCII",)


def test_duplicate_host_is_flagged():
    [r, _] = feed(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert r.host == "a" and r.anomalies == ("HOST_HEADER_AMBIGUOUS",)


# --- limits and garbage -----------------------------------------------------------------

def test_header_count_limit():
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(http.MAX_HEADERS + 1))
    ev = feed(b"GET / HTTP/1.1\r\n" + fields + b"\r\n")
    assert ev == [Malformed(C, f"{http.MAX_HEADERS + 1} header fields, more than {http.MAX_HEADERS}", 0)]
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(http.MAX_HEADERS))
    [r, _] = feed(b"GET / HTTP/1.1\r\n" + fields + b"\r\n")
    assert len(r.headers) == http.MAX_HEADERS


def test_header_size_limit_bounds_the_buffer():
    p = HttpParser()
    ev = feed(b"GET / HTTP/1.1\r\nCookie: " + b"a" * 1000, parser=p)
    assert ev == [] and p.buffered(C) < 1100
    ev = []
    for _ in range(http.MAX_HEAD_BYTES // 1000 + 1):
        ev += feed(b"a" * 1000, parser=p)
        assert p.buffered(C) <= http.MAX_HEAD_BYTES
    [m] = ev
    assert m.reason == f"message head longer than {http.MAX_HEAD_BYTES} bytes" and m.offset == 0
    assert feed(b"GET / HTTP/1.1\r\n\r\n", parser=p) == []       # the direction stays given up
    # Just under the limit still parses.
    pad = http.MAX_HEAD_BYTES - len(b"GET / HTTP/1.1\r\nCookie: \r\n\r\n")
    [r, _] = feed(b"GET / HTTP/1.1\r\nCookie: " + b"a" * pad + b"\r\n\r\n")
    assert len(r.header("cookie")) == pad


@pytest.mark.parametrize("garbage,direction,why", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", C, "not an HTTP request line"),
    (b"\x00\x00\x00\x00", C, "not an HTTP request line"),
    (b"G\x00ET / HTTP/1.1\r\n\r\n", C, "not an HTTP request line"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", C, "HTTP/2"),
    (b"A" * (http.MAX_LENIENT_METHOD + 1) + b" / HTTP/1.1\r\n\r\n", C, "not an HTTP request line"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", S, "not an HTTP status line"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", S, "invalid response head"),
])
def test_garbage_is_malformed_with_a_reason(garbage, direction, why):
    p = HttpParser()
    ev = p.receive_data(garbage, direction)
    [m] = ev
    assert isinstance(m, Malformed) and m.direction == direction and why in m.reason
    assert p.receive_data(b"GET / HTTP/1.1\r\n\r\n", direction) == []


@pytest.mark.parametrize("head", [
    b"POST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: ,\tchunked,\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 10\r\n\r\n",
])
def test_content_length_with_transfer_encoding_is_read_as_chunked_and_named(head):
    ev = feed(head + b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n")
    r, end, smuggled, _ = ev
    assert isinstance(r, HttpRequest) and r.method == "POST" and r.chunked
    assert r.anomalies == ("CONTENT_LENGTH_WITH_TRANSFER_ENCODING",)
    assert end.body_size == 0 and smuggled.uri == "/smuggled" and not of(ev, Malformed)


def test_request_transfer_encoding_must_end_with_chunked():
    r, m = feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n")
    assert r.method == "POST" and "chunked" in m.reason


def test_body_past_the_emit_cap_is_framed_not_emitted():
    cap = http.MAX_BODY_EMIT_BYTES
    size = cap + 100_000
    p = HttpParser()
    ev = feed(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % size, parser=p)
    for i in range(0, size, 65536):
        ev += feed(b"x" * min(65536, size - i), parser=p)
        assert p.buffered(C) == 0
    ev += feed(b"GET /after HTTP/1.1\r\n\r\n", parser=p)
    assert len(body(ev, C)) == cap
    assert of(ev, HttpMessageEnd)[0] == HttpMessageEnd(C, size, cap)
    assert of(ev, HttpRequest)[1].uri == "/after"


def test_gap_inside_a_body_is_skipped_elsewhere_malformed():
    p = HttpParser()
    feed(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nab", parser=p)
    assert p.receive_gap(C, 5) == []
    ev = feed(b"cde", b"GET /next HTTP/1.1\r\n\r\n", parser=p)
    assert of(ev, HttpMessageEnd)[0] == HttpMessageEnd(C, 10, 5)
    assert of(ev, HttpRequest)[0].offset == len(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n") + 10
    [m] = p.receive_gap(C, 3)          # between messages: cannot resynchronise
    assert isinstance(m, Malformed) and "gap" in m.reason


def test_eof_inside_a_message_is_malformed_and_data_after_eof_is_misuse():
    p = HttpParser()
    feed(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nab", parser=p)
    [m] = p.receive_eof(C)
    assert "stream ended inside the body (8 bytes missing)" == m.reason
    with pytest.raises(ProtocolError):
        p.receive_data(b"x", C)
    p = HttpParser()
    feed(b"GET / HTT", parser=p)
    [m] = p.receive_eof(C)
    assert "message head" in m.reason
    assert HttpParser().receive_eof(S) == []


# --- property tests -------------------------------------------------------------------

VALID_CLIENT = (b"GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: x\r\n\r\n"
                b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;e\r\nabc\r\n0\r\nT: 1\r\n\r\n"
                b"CONNECT h:443 HTTP/1.1\r\n\r\n\x16\x03\x01")
VALID_SERVER = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                b"HTTP/1.1 204 No\r\nX: a\r\n b\r\n\r\n"
                b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03")

LIMIT = max(http.MAX_HEAD_BYTES, http.MAX_TUNNEL_PENDING_BYTES) + 1


def check_run(steps):
    """Feed (direction, bytes) steps, then EOF: only events, bounded state."""
    p = HttpParser()
    for d, data in steps:
        ev = p.receive_data(data, d)
        assert all(isinstance(e, http.Event) for e in ev)
        assert len(ev) <= len(data) + 2
        assert p.buffered(d) <= LIMIT
        assert p.pending_requests() <= http.MAX_PENDING_REQUESTS
    for d in Direction:
        assert len(p.receive_eof(d)) <= 2


directions = st.sampled_from(list(Direction))


# Random bytes, some after a valid start so that more than the first check runs.
starts = st.sampled_from([b"", b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n",
                          b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                          b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\n"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(directions, starts, st.binary(max_size=200)), max_size=8))
def test_random_bytes_never_raise(steps):
    check_run([(d, start + data) for d, start, data in steps])


@st.composite
def mutated(draw, valid):
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.sampled_from([b"\r\n", b"\n", b" ", b"\t", b":", b";", b"0",
                                                b"\x00", b"\xff", b"chunked", b"HTTP/1.1 "]))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 40))]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return [bytes(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)])]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(VALID_CLIENT), mutated(VALID_SERVER), st.randoms(use_true_random=False))
def test_mutated_valid_streams_never_raise(client, server, rnd):
    steps = [(C, c) for c in client] + [(S, s) for s in server]
    rnd.shuffle(steps)
    # keep each direction's pieces in order, interleave the two directions
    c_iter, s_iter = iter(client), iter(server)
    check_run([(d, next(c_iter) if d == C else next(s_iter)) for d, _ in steps])


class _LlhttpStream:
    """llhttp parsing a whole stream itself (httptools callbacks): the reference
    for framing, on streams without HEAD or CONNECT where it can frame alone."""

    def __init__(self, request: bool):
        self.parser = (httptools.HttpRequestParser if request else httptools.HttpResponseParser)(self)
        self.msgs: list[list] = []

    def on_message_begin(self):
        self.msgs.append([False, b"", b"", None])

    def on_url(self, b):
        self.msgs[-1][1] += b

    def on_headers_complete(self):
        self.msgs[-1][3] = self.parser.get_http_version()
        if isinstance(self.parser, httptools.HttpResponseParser):
            self.msgs[-1][1] = self.parser.get_status_code()

    def on_body(self, b):
        self.msgs[-1][2] += b

    def on_message_complete(self):
        self.msgs[-1][0] = True

    def messages(self, data):
        """[(uri or status, body)], or None unless llhttp took every message whole."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            return None
        if not self.msgs or not all(m[0] for m in self.msgs) or any(m[3] == "0.9" for m in self.msgs):
            return None              # refused, cut short, or HTTP/0.9 (refused here on purpose)
        return [(m[1].decode("latin-1") if isinstance(m[1], bytes) else m[1], m[2]) for m in self.msgs]


DIFF_CLIENT = (b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
               b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
               b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3;e\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n"
               b"DELETE /d?x=1 HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
DIFF_SERVER = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
               b"HTTP/1.1 100 Continue\r\n\r\n"
               b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
               b"HTTP/1.1 204 No\r\n\r\n"
               b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([C, S]).flatmap(
    lambda d: st.tuples(st.just(d), mutated(DIFF_CLIENT if d == C else DIFF_SERVER))))
def test_framing_agrees_with_llhttp_wherever_llhttp_frames_alone(case):
    """Framing is done here, not by llhttp: on every (mutated) stream llhttp
    parses whole by itself, both must find the same messages and bodies."""
    direction, pieces = case
    data = b"".join(pieces)
    want = _LlhttpStream(direction == C).messages(data)
    if want is None:
        return
    p = HttpParser()
    if direction == S:
        p.receive_data(b"GET / HTTP/1.1\r\n\r\n" * 20, C)
    got, cur = [], None
    for e in p.receive_data(data, direction):
        assert not isinstance(e, Malformed), e
        if isinstance(e, (HttpRequest, HttpResponse)) and e.direction == direction:
            cur = [e.uri if direction == C else e.status, b""]
        elif isinstance(e, HttpBody):
            cur[1] += e.data
        elif isinstance(e, HttpMessageEnd) and e.direction == direction:
            got.append(tuple(cur))
    assert got == want and p.buffered(direction) == 0


def test_unanswered_requests_keep_memory_bounded():
    p = HttpParser()
    n = http.MAX_PENDING_REQUESTS + 10
    feed(b"GET / HTTP/1.1\r\n\r\n" * n, parser=p)
    assert p.pending_requests() == http.MAX_PENDING_REQUESTS
    ev = feed((S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * n), parser=p)
    methods = [r.request_method for r in of(ev, HttpResponse)]
    assert methods == ["GET"] * http.MAX_PENDING_REQUESTS + [None] * 10
    ev = feed(b"HEAD / HTTP/1.1\r\n\r\n", (S, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), parser=p)
    [r, _] = ev[2:]
    assert r.request_method == "HEAD"       # pairing is exact again once caught up


# --- probe, signatures, plugin ----------------------------------------------------------

@pytest.mark.parametrize("data,direction,want", [
    (b"GET / HTTP/1.1\r\nHost: toni.lan:31337\r\n", C, CERTAIN),
    (b"PROPFIND /webdav HTTP/1.1\r\n", C, CERTAIN),
    (b"M-SEARCH * HTTP/1.1\r\n", C, CERTAIN),
    (b"\r\nGET / HTTP/1.0\r\n", C, CERTAIN),
    (b"GET /a-very-long-url-cut-by-the-segm", C, LIKELY),
    (b"GET key\r\n", C, POSSIBLE),              # a Redis inline command, or HTTP/0.9
    (b"GE", C, POSSIBLE),
    (b"GET ", C, POSSIBLE),
    (b"GET \x00", C, NO_MATCH),
    (b"FOO / HTTP/1.1\r\n", C, LIKELY),        # an extension method, as a lenient server reads it
    (b"get\t/ http/1.1\r\n", C, LIKELY),
    (b"GET /etc/passwd\r\n", C, LIKELY),       # HTTP/0.9 style
    (b"FOO bar baz\r\n", C, NO_MATCH),
    (b"\x16\x03\x01\x02\x00", C, NO_MATCH),
    (b"SSH-2.0-OpenSSH\r\n", C, NO_MATCH),
    (b"*1\r\n$4\r\nPING\r\n", C, NO_MATCH),
    (b"", C, NO_MATCH),
    (b"HTTP/1.1 200 OK\r\n", S, CERTAIN),
    (b"HTTP/1.0 302 Moved\r\n", S, CERTAIN),
    (b"HTTP/1.1", S, LIKELY),
    (b"HTT", S, POSSIBLE),
    (b"HTTP/1.1 200 OK\r\n", C, NO_MATCH),      # a status line from the client is not HTTP
    (b"GET / HTTP/1.1\r\n", S, NO_MATCH),
    (b"SSH-2.0-x\r\n", S, NO_MATCH),
])
def test_probe(data, direction, want):
    assert probe(data, direction) == want


def test_plugin_and_signatures():
    http.PLUGIN.check()
    assert http.PLUGIN.name == "http" and http.PLUGIN.transports == frozenset({"tcp"})
    assert isinstance(http.PLUGIN.parser_factory("tcp"), HttpParser)
    sigs = http.PLUGIN.signatures
    assert len(sigs) < 16
    for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "PROPFIND",
              "PROPPATCH", "MKCOL", "MOVE", "COPY", "LOCK", "UNLOCK"):
        line = f"{m} /x HTTP/1.1\r\n".encode()
        assert [s.direction for s in sigs if s.matches(line)] == [C], m
        assert probe(line, C) == CERTAIN
    assert [s.direction for s in sigs if s.matches(b"HTTP/1.1 200 OK\r\n")] == [S]
    for other in (b"\x16\x03\x01\x02\x00\x01\x00\x01", b"SSH-2.0-OpenSSH_9", b"*1\r\n$4\r\nPING"):
        assert not any(s.matches(other) for s in sigs)


def test_probe_methods_are_the_ones_llhttp_parses():
    class Sink:
        pass

    for m in http.METHODS:
        p = httptools.HttpRequestParser(Sink())
        try:
            p.feed_data(f"{m} / HTTP/1.1\r\n\r\n".encode())
        except httptools.HttpParserUpgrade:
            assert m == "CONNECT"
        [r, _] = feed(f"{m} / HTTP/1.1\r\n\r\n".encode())
        assert r.method == m


# --- lenient reading of what llhttp refuses (issue 12 item 6) ----------------------------

@pytest.mark.parametrize("raw,method,uri,version,field,anomalies", [
    (b"FOO /a HTTP/1.1\r\nHost: h\r\n\r\n", "FOO", "/a", "HTTP/1.1", None, ("METHOD_UNKNOWN",)),
    (b"get /a HTTP/1.1\r\n\r\n", "get", "/a", "HTTP/1.1", None, ("METHOD_UNKNOWN",)),
    (b"GET\t/a HTTP/1.1\r\n\r\n", "GET", "/a", "HTTP/1.1", None, ("METHOD_DELIM_NON_COMPLIANT",)),
    (b"GET /a\t HTTP/1.1\r\n\r\n", "GET", "/a", "HTTP/1.1", None, ("URI_DELIM_NON_COMPLIANT",)),
    (b" GET /a HTTP/1.1\r\n\r\n", "GET", "/a", "HTTP/1.1", None, ("REQUEST_LINE_LEADING_WHITESPACE",)),
    (b"GET /a b HTTP/1.1\r\n\r\n", "GET", "/a b", "HTTP/1.1", None, ("URI_DELIM_NON_COMPLIANT",)),
    (b"GET /a HTTP/1.2\r\n\r\n", "GET", "/a", "HTTP/1.2", None, ("REQUEST_INVALID_PROTOCOL",)),
    (b"GET /a http/1.1\r\n\r\n", "GET", "/a", "http/1.1", None, ("REQUEST_INVALID_PROTOCOL",)),
    (b"GET /a\r\n", "GET", "/a", "HTTP/0.9", None, ("REQUEST_LINE_MISSING_PROTOCOL",)),
    (b"GET /a\r\nHost: h\r\n\r\n", "GET", "/a", "HTTP/0.9", ("host", "h"), ("REQUEST_LINE_MISSING_PROTOCOL",)),
    (b"GET /a\x00b HTTP/1.1\r\n\r\n", "GET", "/a\x00b", "HTTP/1.1", None, ("REQUEST_URI_INVALID_CHARS",)),
    (b"GET / HTTP/1.1\r\nUser-Agent : x\r\n\r\n", "GET", "/", "HTTP/1.1", ("user-agent", "x"),
     ("REQUEST_HEADER_INVALID",)),
    (b"GET / HTTP/1.1\r\nUser-Agent x y\r\n\r\n", "GET", "/", "HTTP/1.1", ("user-agent", "x y"),
     ("REQUEST_FIELD_MISSING_COLON",)),
    (b"GET / HTTP/1.1\r\nUser-Agent: a\x01b\r\n\r\n", "GET", "/", "HTTP/1.1", ("user-agent", "a\x01b"),
     ("REQUEST_HEADER_INVALID",)),
    (b"GET / HTTP/1.1\r\nX(y): 1\r\n\r\n", "GET", "/", "HTTP/1.1", ("x(y)", "1"), ("REQUEST_HEADER_INVALID",)),
    (b"POST / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", "POST", "/", "HTTP/1.1", None,
     ("DUPLICATE_CONTENT_LENGTH_FIELD_IN_REQUEST",)),
    (b"POST / HTTP/1.1\r\nContent-Length: +0\r\n\r\n", "POST", "/", "HTTP/1.1", None,
     ("INVALID_CONTENT_LENGTH_FIELD_IN_REQUEST",)),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * http.MAX_FIELD_LINE_BYTES + b"\r\n\r\n", "GET", "/", "HTTP/1.1", None,
     ("REQUEST_FIELD_TOO_LONG",)),
])
def test_lenient_request_heads_are_recovered_and_each_deviation_named(raw, method, uri, version, field,
                                                                        anomalies):
    ev = feed(raw)
    assert not of(ev, Malformed), ev
    [r] = of(ev, HttpRequest)
    assert (r.method, r.uri, r.version, r.anomalies) == (method, uri, version, anomalies)
    assert all(a in http.HttpAnomaly.__members__ for a in r.anomalies)
    if field:
        assert r.header(field[0]) == field[1]
    assert of(ev, HttpMessageEnd)


def test_duplicate_content_lengths_that_differ_frame_the_largest_as_body():
    ev = feed(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 8\r\n\r\nabcGET /x")
    [r] = of(ev, HttpRequest)
    assert r.content_length == 8 and body(ev, C) == b"abcGET /x"[:8]
    assert r.anomalies == ("DUPLICATE_CONTENT_LENGTH_FIELD_IN_REQUEST",)


@pytest.mark.parametrize("size_line", [b"0x5", b" 5", b"5 zz", b"00000000000000000005"])
def test_lenient_chunk_sizes_are_read_and_named(size_line):
    ev = feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\nhello\r\n0\r\n\r\n")
    assert body(ev, C) == b"hello" and not of(ev, Malformed)
    assert [a.name for a in of(ev, http.HttpAnomalyEvent)] == ["INVALID_REQUEST_CHUNK_LEN"]


def test_lenient_status_line_and_response_fields():
    p = HttpParser()
    feed(b"GET / HTTP/1.1\r\n\r\n", parser=p)
    ev = feed((S, b"HTTP/1.1  200 OK\r\nX : y\r\nContent-Length: 2\r\n\r\nok"), parser=p)
    [r] = of(ev, HttpResponse)
    assert (r.status, r.header("x"), body(ev, S)) == (200, "y", b"ok")
    assert r.anomalies == ("RESPONSE_INVALID_STATUS", "RESPONSE_HEADER_INVALID")


def test_valid_messages_have_no_anomalies():
    ev = feed(DIFF_CLIENT, (S, DIFF_SERVER))
    assert of(ev, HttpRequest) and all(not e.anomalies for e in ev if isinstance(e, (HttpRequest, HttpResponse)))
    assert not of(ev, http.HttpAnomalyEvent) and not of(ev, Malformed)
