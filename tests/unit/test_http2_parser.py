"""HTTP/2 parser (protocols/http2.py): byte streams made by python-hyper's
h2 (a real client and server state machine) or crafted frame by frame with
hyperframe and hpack, fed to the sans-IO parser."""
from __future__ import annotations

import random

import h2.config
import h2.connection
import hpack
import pytest
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame,
                              PriorityFrame, SettingsFrame, WindowUpdateFrame)

from protocols import http2 as h2p
from protocols.api import CERTAIN, Direction, Malformed
from protocols.grpc import GrpcCall
from protocols.http import HttpAnomalyEvent, HttpBody, HttpMessageEnd, HttpRequest, HttpResponse
from protocols.http2 import (MAX_BUFFERED_BYTES, MAX_HEADER_BLOCK_BYTES, MAX_HEADER_LIST_BYTES,
                             MAX_HPACK_TABLE_BYTES, MAX_STREAMS, PREFACE, Http2GoAway,
                             Http2PushPromise, Http2RstStream, Http2Settings, HttpTwoParser)

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
REQ = [(":method", "GET"), (":path", "/a?x=1"), (":authority", "example.com"), (":scheme", "http"),
       ("user-agent", "test/1")]


def pair():
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    return client, server


def feed(p: HttpTwoParser, chunks) -> list:
    out = []
    for d, data in chunks:
        out += p.receive_data(data, d)
    return out


def of(events, cls):
    return [e for e in events if isinstance(e, cls)]


def frames(*fs) -> bytes:
    return b"".join(f.serialize() for f in fs)


def test_prior_knowledge_request_response():
    c, s = pair()
    c.send_headers(1, REQ, end_stream=True)
    cb = c.data_to_send()
    s.receive_data(cb)
    s.send_headers(1, [(":status", "200"), ("content-type", "text/plain"), ("content-length", "5")])
    s.send_data(1, b"hello", end_stream=True)
    p = HttpTwoParser()
    ev = feed(p, [(C, cb), (S, s.data_to_send())])
    req, = of(ev, HttpRequest)
    assert (req.method, req.uri, req.host, req.user_agent, req.version, req.stream_id) == \
        ("GET", "/a?x=1", "example.com", "test/1", "HTTP/2", 1)
    assert req.header("user-agent") == "test/1" and not any(n.startswith(":") for n, _ in req.headers)
    resp, = of(ev, HttpResponse)
    assert (resp.status, resp.request_method, resp.content_length, resp.stream_id) == (200, "GET", 5, 1)
    assert [b.data for b in of(ev, HttpBody)] == [b"hello"]
    ends = of(ev, HttpMessageEnd)
    assert [(e.direction, e.body_size, e.stream_id) for e in ends] == [(C, 0, 1), (S, 5, 1)]
    assert len(of(ev, Http2Settings)) == 2 and p.start == "prior-knowledge"
    assert not of(ev, Malformed) and not of(ev, HttpAnomalyEvent)


def test_byte_at_a_time_gives_the_same_messages():
    c, s = pair()
    c.send_headers(1, REQ + [("content-type", "application/json")])
    c.send_data(1, b'{"a": 1}', end_stream=True)
    cb = c.data_to_send()
    whole = feed(HttpTwoParser(), [(C, cb)])
    p = HttpTwoParser()
    bytewise = feed(p, [(C, cb[i:i + 1]) for i in range(len(cb))])
    assert of(bytewise, HttpRequest) == of(whole, HttpRequest)
    assert b"".join(b.data for b in of(bytewise, HttpBody)) == b'{"a": 1}'
    assert of(bytewise, HttpMessageEnd) == of(whole, HttpMessageEnd)
    assert p.buffered(C) < 9


def test_interleaved_streams_keep_their_bodies_apart():
    c, s = pair()
    for sid in (1, 3):
        c.send_headers(sid, [(":method", "POST"), (":path", f"/s{sid}"), (":authority", "h"),
                             (":scheme", "http")])
    c.send_data(1, b"one-")
    c.send_data(3, b"three-")
    c.send_data(1, b"uno", end_stream=True)
    c.send_data(3, b"tres", end_stream=True)
    ev = feed(HttpTwoParser(), [(C, c.data_to_send())])
    bodies: dict[int, bytes] = {}
    for b in of(ev, HttpBody):
        bodies[b.stream_id] = bodies.get(b.stream_id, b"") + b.data
    assert bodies == {1: b"one-uno", 3: b"three-tres"}
    assert {(e.stream_id, e.body_size) for e in of(ev, HttpMessageEnd)} == {(1, 7), (3, 10)}
    assert [r.uri for r in of(ev, HttpRequest)] == ["/s1", "/s3"]


def test_continuation_and_padding():
    enc = hpack.Encoder()
    block = enc.encode(REQ + [("x-long", "v" * 3000)])
    h = HeadersFrame(1, block[:100], flags=["PADDED"], pad_length=7)
    c1 = ContinuationFrame(1, block[100:1500])
    c2 = ContinuationFrame(1, block[1500:], flags=["END_HEADERS"])
    d = DataFrame(1, b"body!", flags=["PADDED", "END_STREAM"], pad_length=20)
    p = HttpTwoParser()
    ev = feed(p, [(C, PREFACE + frames(SettingsFrame(0), h, c1, c2, d))])
    req, = of(ev, HttpRequest)
    assert req.header("x-long") == "v" * 3000 and req.uri == "/a?x=1"
    assert [b.data for b in of(ev, HttpBody)] == [b"body!"]       # padding stripped
    assert of(ev, HttpMessageEnd)[0].body_size == 5
    assert p.frame_counts["CONTINUATION"] == 2


def test_priority_window_update_ping_are_read_quietly():
    enc = hpack.Encoder()
    h = HeadersFrame(1, enc.encode(REQ), flags=["END_HEADERS", "END_STREAM", "PRIORITY"],
                     stream_weight=200, depends_on=0)
    p = HttpTwoParser()
    ev = feed(p, [(C, PREFACE + frames(SettingsFrame(0), PriorityFrame(3, depends_on=1, stream_weight=16),
                                       WindowUpdateFrame(0, window_increment=1000), PingFrame(0, b"12345678"),
                                       h))])
    assert len(of(ev, HttpRequest)) == 1 and not of(ev, Malformed) and not of(ev, HttpAnomalyEvent)
    assert {k: p.frame_counts[k] for k in ("PRIORITY", "WINDOW_UPDATE", "PING")} == \
        {"PRIORITY": 1, "WINDOW_UPDATE": 1, "PING": 1}


def test_bad_fixed_length_frame_from_the_start_is_malformed():
    bad = b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"1234567"      # PING of 7 bytes
    ev = feed(HttpTwoParser(), [(C, PREFACE + bad)])
    m, = of(ev, Malformed)
    assert "PING" in m.reason and m.offset == len(PREFACE)


def test_rst_stream_ends_open_messages():
    c, s = pair()
    c.send_headers(1, [(":method", "POST"), (":path", "/up"), (":authority", "h"), (":scheme", "http")])
    c.send_data(1, b"partial")
    cb = c.data_to_send()
    s.receive_data(cb)
    s.reset_stream(1, error_code=8)
    ev = feed(HttpTwoParser(), [(C, cb), (S, s.data_to_send())])
    rst, = of(ev, Http2RstStream)
    assert (rst.stream_id, rst.error, rst.direction) == (1, "CANCEL", S)
    end, = of(ev, HttpMessageEnd)
    assert (end.direction, end.body_size, end.stream_id) == (C, 7, 1)


def test_goaway():
    ev = feed(HttpTwoParser(), [(S, frames(SettingsFrame(0), GoAwayFrame(0, last_stream_id=5, error_code=11,
                                                                        additional_data=b"calm down")))])
    g, = of(ev, Http2GoAway)
    assert (g.last_stream_id, g.error, g.debug_data) == (5, "ENHANCE_YOUR_CALM", b"calm down")


def test_push_promise_pairs_the_pushed_response():
    c, s = pair()
    c.send_headers(1, REQ, end_stream=True)
    cb = c.data_to_send()
    s.receive_data(cb)
    s.push_stream(1, 2, [(":method", "GET"), (":path", "/style.css"), (":authority", "example.com"),
                         (":scheme", "http")])
    s.send_headers(2, [(":status", "200")], end_stream=True)
    s.send_headers(1, [(":status", "204")], end_stream=True)
    ev = feed(HttpTwoParser(), [(C, cb), (S, s.data_to_send())])
    pp, = of(ev, Http2PushPromise)
    assert (pp.stream_id, pp.promised_stream_id, pp.uri, pp.host) == (1, 2, "/style.css", "example.com")
    assert {(r.stream_id, r.status, r.request_method) for r in of(ev, HttpResponse)} == \
        {(2, 200, "GET"), (1, 204, "GET")}
    assert len(of(ev, HttpRequest)) == 1      # a pushed request is not the client's


def test_trailers_on_both_sides():
    c, s = pair()
    c.send_headers(1, [(":method", "POST"), (":path", "/t"), (":authority", "h"), (":scheme", "http")])
    c.send_data(1, b"x")
    c.send_headers(1, [("x-checksum", "abc")], end_stream=True)
    cb = c.data_to_send()
    s.receive_data(cb)
    s.send_headers(1, [(":status", "200")])
    s.send_data(1, b"y")
    s.send_headers(1, [("x-done", "1")], end_stream=True)
    ev = feed(HttpTwoParser(), [(C, cb), (S, s.data_to_send())])
    assert [(e.direction, e.trailers) for e in of(ev, HttpMessageEnd)] == \
        [(C, (("x-checksum", "abc"),)), (S, (("x-done", "1"),))]


# --- limits: each ends in Malformed (or an anomaly), never an exception -------------


def test_header_list_over_the_cap_is_malformed():
    # An HPACK bomb: one large entry put in the table, then named again and again.
    enc = hpack.Encoder()
    big = ("x-bomb", "b" * 3000)
    first = enc.encode([*REQ, big])
    again = enc.encode([*REQ] + [big] * (MAX_HEADER_LIST_BYTES // 3000 + 2))
    assert len(again) < 1000
    body = frames(SettingsFrame(0), HeadersFrame(1, first, flags=["END_HEADERS", "END_STREAM"]),
                  HeadersFrame(3, again, flags=["END_HEADERS", "END_STREAM"]))
    p = HttpTwoParser()
    ev = feed(p, [(C, PREFACE + body)])
    assert len(of(ev, HttpRequest)) == 1
    m, = of(ev, Malformed)
    assert "header list over" in m.reason
    assert p.receive_data(body, C) == []          # the direction is ignored from then on


def test_table_size_update_over_the_cap_is_malformed():
    # A dynamic table size update (RFC 7541 6.3) above what the peer allowed.
    size = MAX_HPACK_TABLE_BYTES * 4
    update = bytearray([0x3F])
    size -= 31
    while size >= 128:
        update.append((size % 128) + 128)
        size //= 128
    update.append(size)
    block = bytes(update) + hpack.Encoder().encode(REQ)
    p = HttpTwoParser()
    ev = feed(p, [(S, frames(SettingsFrame(0, settings={1: 1 << 20})))])     # the server allows 1 MiB
    ev = feed(p, [(C, PREFACE + frames(SettingsFrame(0), HeadersFrame(1, block, flags=["END_HEADERS"])))])
    m, = of(ev, Malformed)
    assert "table size update" in m.reason


def test_too_many_streams():
    enc = hpack.Encoder()
    fs = [SettingsFrame(0)] + [HeadersFrame(2 * i + 1, enc.encode(REQ), flags=["END_HEADERS"])
                               for i in range(MAX_STREAMS + 1)]
    ev = feed(HttpTwoParser(), [(C, PREFACE + frames(*fs))])
    assert len(of(ev, HttpRequest)) == MAX_STREAMS
    assert [a.name for a in of(ev, HttpAnomalyEvent)] == ["TOO_MANY_STREAMS"]
    assert len(of(ev, Malformed)) == 1


def test_continuation_flood_is_malformed_and_bounded():
    enc = hpack.Encoder()
    p = HttpTwoParser()
    ev = feed(p, [(C, PREFACE + frames(SettingsFrame(0), HeadersFrame(1, enc.encode(REQ))))])
    chunk = ContinuationFrame(1, b"\x40\x01a\x01b" * 3000).serialize()
    for _ in range(MAX_HEADER_BLOCK_BYTES // 15000 + 2):
        ev += p.receive_data(chunk, C)
        assert p.buffered(C) <= MAX_BUFFERED_BYTES
    m, = of(ev, Malformed)
    assert "header block longer" in m.reason


# --- mid-stream pickup, resynchronisation, gaps --------------------------------------


def test_mid_stream_decodes_what_it_can():
    enc = hpack.Encoder()
    enc.encode([("x-before", "from an earlier request")])    # the capture missed this block
    block = enc.encode(REQ + [("x-before", "from an earlier request"), ("x-after", "1")])
    p = HttpTwoParser()
    ev = feed(p, [(C, frames(HeadersFrame(5, block, flags=["END_HEADERS", "END_STREAM"])))])
    req, = of(ev, HttpRequest)
    assert p.start == "mid-stream" and req.uri == "/a?x=1" and req.header("x-after") == "1"
    assert req.header("x-before") is None and "HEADER_UNKNOWN_INDEX" in req.anomalies
    assert not of(ev, Malformed)


def test_resynchronises_past_garbage():
    enc = hpack.Encoder()
    good = frames(HeadersFrame(1, enc.encode(REQ), flags=["END_HEADERS", "END_STREAM"]),
                  PingFrame(0, b"abcdefgh"))
    ev = feed(HttpTwoParser(), [(C, b"\xff\xfe tail of an earlier frame" + good)])
    assert len(of(ev, HttpRequest)) == 1
    assert [a.name for a in of(ev, HttpAnomalyEvent)] == ["RESYNCHRONISED"]


def test_gap_inside_data_keeps_framing_and_gap_elsewhere_resyncs():
    c, s = pair()
    c.send_headers(1, [(":method", "POST"), (":path", "/g"), (":authority", "h"), (":scheme", "http")])
    cb = c.data_to_send()
    p = HttpTwoParser()
    ev = feed(p, [(C, cb), (C, DataFrame(1, b"A" * 100).serialize()[:30])])
    ev += p.receive_gap(C, 50)                    # inside the DATA payload
    ev += p.receive_data(b"A" * 29 + DataFrame(1, b"Z", flags=["END_STREAM"]).serialize(), C)
    end, = of(ev, HttpMessageEnd)
    assert end.body_size == 101 and end.body_emitted == 51
    ev = p.receive_gap(C, 4)                      # between frames: resynchronise
    enc_after = hpack.Encoder()
    ev += p.receive_data(b"xyz" + HeadersFrame(3, enc_after.encode(REQ),
                                               flags=["END_HEADERS", "END_STREAM"]).serialize(), C)
    assert "RESYNCHRONISED" in [a.name for a in of(ev, HttpAnomalyEvent)]
    assert [r.stream_id for r in of(ev, HttpRequest)] == [3]


def test_garbage_never_raises_and_stays_bounded():
    rng = random.Random(1234)
    c, s = pair()
    c.send_headers(1, REQ, end_stream=True)
    seed = PREFACE + c.data_to_send()
    for i in range(1500):
        p = HttpTwoParser()
        data = bytearray(seed if i % 2 else rng.randbytes(200))
        for _ in range(rng.randint(1, 10)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        for d in (C, S):
            at = 0
            while at < len(data):
                n = rng.randint(1, 64)
                p.receive_data(bytes(data[at:at + n]), d)
                assert p.buffered(d) <= MAX_BUFFERED_BYTES
                at += n
            p.receive_eof(d)


# --- gRPC ---------------------------------------------------------------------------------


def grpc_msg(payload: bytes, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload


def test_grpc_unary_call():
    c, s = pair()
    c.send_headers(1, [(":method", "POST"), (":path", "/pkg.Greeter/SayHello"), (":authority", "g:50051"),
                       (":scheme", "http"), ("content-type", "application/grpc+proto"),
                       ("grpc-encoding", "gzip"), ("grpc-timeout", "5S"), ("user-agent", "grpc-python/1")])
    c.send_data(1, grpc_msg(b"\x0a\x03bob", compressed=True)[:4])
    c.send_data(1, grpc_msg(b"\x0a\x03bob", compressed=True)[4:], end_stream=True)
    cb = c.data_to_send()
    s.receive_data(cb)
    s.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    s.send_data(1, grpc_msg(b"hi") + grpc_msg(b"there"))
    s.send_headers(1, [("grpc-status", "5"), ("grpc-message", "not found")], end_stream=True)
    ev = feed(HttpTwoParser(), [(C, cb), (S, s.data_to_send())])
    call, = of(ev, GrpcCall)
    assert (call.service, call.method, call.authority, call.grpc_status, call.grpc_message) == \
        ("pkg.Greeter", "SayHello", "g:50051", 5, "not found")
    assert (call.request_messages, call.response_messages, call.compressed_messages) == (1, 2, 1)
    assert (call.request_content_type, call.grpc_encoding, call.grpc_timeout, call.http_status) == \
        ("application/grpc+proto", "gzip", "5S", 200)
    assert not call.reset


def test_grpc_trailers_only_response():
    c, s = pair()
    c.send_headers(1, [(":method", "POST"), (":path", "/pkg.S/M"), (":authority", "g"), (":scheme", "http"),
                       ("content-type", "application/grpc")], end_stream=True)
    cb = c.data_to_send()
    s.receive_data(cb)
    s.send_headers(1, [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "12")],
                   end_stream=True)
    call, = of(feed(HttpTwoParser(), [(C, cb), (S, s.data_to_send())]), GrpcCall)
    assert (call.grpc_status, call.response_messages) == (12, 0)


# --- detection and the plugin ----------------------------------------------------------


def test_probe_and_signature():
    assert h2p.probe(PREFACE, C) == CERTAIN
    from protocols.http import probe as http_probe
    assert http_probe(PREFACE, C) == 0
    sig, = h2p.PLUGIN.signatures
    assert sig.matches(PREFACE) and not sig.matches(b"POST / HTTP/1.1\r\n")
    assert h2p.probe(b"GET / HTTP/1.1\r\n\r\n", C) == 0
    from protocols import registry
    assert registry.detect(PREFACE, C) == ("http2", CERTAIN)
    assert isinstance(registry.by_name()["http2"].parser_factory("tcp"), HttpTwoParser)


def test_http1_events_default_to_stream_zero():
    from protocols.http import HttpParser
    ev = HttpParser().receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", C)
    assert [e.stream_id for e in ev] == [0, 0]


def test_eof_inside_a_frame_is_malformed():
    p = HttpTwoParser()
    p.receive_data(PREFACE + b"\x00\x00\x10\x01\x04", C)
    m, = of(p.receive_eof(C), Malformed)
    assert "inside a frame" in m.reason


@pytest.mark.parametrize("split", [1, 7, 23, 24, 25])
def test_preface_split_anywhere(split):
    data = PREFACE + frames(SettingsFrame(0))
    p = HttpTwoParser()
    ev = feed(p, [(C, data[:split]), (C, data[split:])])
    assert len(of(ev, Http2Settings)) == 1 and p.start == "prior-knowledge"


# --- Content-Encoding (protocols/content_coding.py) on DATA bodies ----------------------


def test_gzip_response_body_is_decoded_across_data_frames():
    import gzip
    text = b"card 4111 1111 1111 1111 in a compressed page " * 20
    coded = gzip.compress(text)
    c, s = pair()
    c.send_headers(1, REQ, end_stream=True)
    cb = c.data_to_send()
    s.receive_data(cb)
    s.send_headers(1, [(":status", "200"), ("content-encoding", "gzip")])
    for i in range(0, len(coded), 50):
        s.send_data(1, coded[i:i + 50])
    s.end_stream(1)
    ev = feed(HttpTwoParser(), [(C, cb), (S, s.data_to_send())])
    assert b"".join(b.data for b in of(ev, HttpBody)) == text
    end = of(ev, HttpMessageEnd)[-1]
    assert (end.body_size, end.body_emitted, end.content_encoding, end.decoded_size, end.encoding_error) == \
        (len(coded), len(text), ("gzip",), len(text), None)
    assert not of(ev, HttpAnomalyEvent)


def test_gzip_bomb_and_false_claim_are_anomalies():
    import gzip
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))
    c, s = pair()
    c.send_headers(1, [(":method", "POST"), (":path", "/u"), (":authority", "h"), (":scheme", "http"),
                       ("content-encoding", "gzip")])
    c.send_data(1, bomb, end_stream=True)
    c.send_headers(3, [(":method", "POST"), (":path", "/v"), (":authority", "h"), (":scheme", "http"),
                       ("content-encoding", "gzip")])
    c.send_data(3, b"not gzip at all", end_stream=True)
    p = HttpTwoParser()
    ev = feed(p, [(C, c.data_to_send())])
    assert {(a.stream_id, a.name) for a in of(ev, HttpAnomalyEvent)} == \
        {(1, "COMPRESSION_BOMB"), (3, "GZIP_DECOMPRESSION_FAILED")}
    ends = {e.stream_id: e for e in of(ev, HttpMessageEnd)}
    assert ends[1].encoding_error == "too-large" and ends[3].encoding_error == "invalid"
    assert sum(len(b.data) for b in of(ev, HttpBody) if b.stream_id == 1) <= 256 * 1024


def test_empty_data_frame_ending_the_stream_at_the_buffer_end():
    enc = hpack.Encoder()
    p = HttpTwoParser()
    ev = feed(p, [(C, PREFACE + frames(SettingsFrame(0), HeadersFrame(1, enc.encode(REQ), flags=["END_HEADERS"]),
                                       DataFrame(1, b"", flags=["END_STREAM"])))])
    assert [(e.stream_id, e.body_size) for e in of(ev, HttpMessageEnd)] == [(1, 0)]


def test_one_sided_capture_with_many_complete_requests_is_not_a_flood():
    enc = hpack.Encoder()
    fs = [SettingsFrame(0)] + [HeadersFrame(2 * i + 1, enc.encode(REQ), flags=["END_HEADERS", "END_STREAM"])
                               for i in range(MAX_STREAMS + 200)]
    p = HttpTwoParser()
    ev = feed(p, [(C, PREFACE + frames(*fs))])
    assert len(of(ev, HttpRequest)) == MAX_STREAMS + 200 and not of(ev, Malformed)
    assert len(p._streams) == MAX_STREAMS


def test_answers_to_unseen_requests_close_their_streams():
    enc = hpack.Encoder()
    fs = [SettingsFrame(0)]
    for i in range(MAX_STREAMS + 50):
        fs += [HeadersFrame(2 * i + 1, enc.encode([(":status", "200")]), flags=["END_HEADERS"]),
               DataFrame(2 * i + 1, b"ok", flags=["END_STREAM"])]
    p = HttpTwoParser()
    ev = feed(p, [(S, frames(*fs))])
    assert len(of(ev, HttpResponse)) == MAX_STREAMS + 50 and not of(ev, Malformed) and p._streams == {}
