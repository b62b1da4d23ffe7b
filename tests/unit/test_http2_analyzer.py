"""HTTP/2 through the flow analyzer (slowpath/analyzer.py): detection of
prior knowledge, the h2c upgrade hand-over from the HTTP/1 parser, and a
flow becoming gRPC when one of its streams is a gRPC call."""
from __future__ import annotations

import base64

import h2.config
import h2.connection

from protocols.api import Direction
from slowpath.analyzer import FlowAnalyzer

C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def test_h2c_upgrade_continues_as_http2_with_stream_1():
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    settings = client.initiate_upgrade_connection()
    upgrade = (b"GET /robots.txt HTTP/1.1\r\nHost: example.org\r\nUser-Agent: curl/8\r\n"
               b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: "
               + base64.urlsafe_b64encode(base64.urlsafe_b64decode(settings + b"=" * (-len(settings) % 4)))
               .rstrip(b"=") + b"\r\n\r\n")
    server.initiate_upgrade_connection(settings)
    client.send_headers(3, [(":method", "GET"), (":path", "/humans.txt"), (":authority", "example.org"),
                            (":scheme", "http")], end_stream=True)
    server.send_headers(1, [(":status", "200"), ("content-type", "text/plain")])
    server.send_data(1, b"User-agent: *", end_stream=True)
    an = FlowAnalyzer("tcp")
    ev = an.data(C, upgrade)
    ev += an.data(S, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                  + server.data_to_send())
    ev += an.data(C, client.data_to_send())
    assert an.app == "http2"
    resp = [e for e in ev if e.kind == "http_response"]
    assert [(r.status, r.version, r.stream_id, r.request_method) for r in resp] == \
        [(101, "HTTP/1.1", 0, "GET"), (200, "HTTP/2", 1, "GET")]
    req = [e for e in ev if e.kind == "http_request"]
    assert [(r.uri, r.version, r.stream_id) for r in req] == \
        [("/robots.txt", "HTTP/1.1", 0), ("/humans.txt", "HTTP/2", 3)]
    assert any(e.kind == "http_body" and e.stream_id == 1 and e.data == b"User-agent: *" for e in ev)
    assert an.parser.start == "h2c-upgrade"


def test_websocket_upgrade_is_not_http2():
    an = FlowAnalyzer("tcp")
    an.data(C, b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    an.data(S, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    assert an.app == "http" and an.inner_app is None


def test_prior_knowledge_flow_becomes_grpc():
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "GET"), (":path", "/"), (":authority", "a"), (":scheme", "http")],
                        end_stream=True)
    an = FlowAnalyzer("tcp")
    an.data(C, client.data_to_send())
    assert an.app == "http2" and an.names.get("host") == "a"
    client.send_headers(3, [(":method", "POST"), (":path", "/pkg.S/M"), (":authority", "a"),
                            (":scheme", "http"), ("content-type", "application/grpc")], end_stream=True)
    an.data(C, client.data_to_send())
    assert an.app == "grpc"


def test_h2c_offsets_continue_the_tcp_stream_and_bad_settings_are_named():
    head = (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: %%%\r\n\r\n")
    answer = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    an = FlowAnalyzer("tcp")
    an.data(C, head)
    ev = an.data(S, answer + settings)
    ev += an.data(C, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings)
    assert {e.direction: e.offset for e in ev if e.kind == "http2_settings"} == \
        {S: len(answer), C: len(head) + 24}                  # after the preface's 24 bytes
    assert [e.name for e in ev if e.kind == "http_anomaly"] == ["INVALID_HTTP1_SETTINGS"]
