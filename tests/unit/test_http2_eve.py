"""EVE http records of HTTP/2 streams and gRPC calls (slowpath/eve.py):
``http.http2.stream_id`` and app_proto "http2" as Suricata writes them, a
call's service, method and status in metadata; every record passes
Suricata's schema and the project's overlay."""
from __future__ import annotations

import json

import h2.config
import h2.connection

from protocols.api import Direction
from protocols.grpc import GrpcCall
from protocols.http2 import HttpTwoParser
from slowpath import eve
from tests.eve_schemas import require_suricata, schema_errors

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
FLOW = eve.FlowInfo(flow_id=99, src_ip="10.1.0.5", src_port=51000, dest_ip="10.1.0.9", dest_port=50051,
                    proto=6, app_proto="grpc", start=1_700_000_000.0)


def valid(rec: dict) -> dict:
    errors = schema_errors(json.loads(eve.encode(rec)))
    assert not errors, errors
    return rec


def events(grpc: bool):
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    c.initiate_connection()
    s.initiate_connection()
    extra = [("content-type", "application/grpc")] if grpc else []
    c.send_headers(3, [(":method", "POST"), (":path", "/pkg.Cart/Get"), (":authority", "cart:7070"),
                       (":scheme", "http"), ("user-agent", "grpc-go/1")] + extra)
    c.send_data(3, b"\x00\x00\x00\x00\x01x", end_stream=True)
    cb = c.data_to_send()
    s.receive_data(cb)
    s.send_headers(3, [(":status", "200")] + extra)
    s.send_data(3, b"\x00\x00\x00\x00\x00")
    s.send_headers(3, [("grpc-status", "7"), ("grpc-message", "denied")], end_stream=True)
    p = HttpTwoParser()
    return p.receive_data(cb, C) + p.receive_data(s.data_to_send(), S)


def test_http2_stream_record():
    require_suricata()
    ev = events(grpc=False)
    req = next(e for e in ev if e.kind == "http_request")
    resp = next(e for e in ev if e.kind == "http_response")
    rec = valid(eve.http_record(FLOW, req, resp, 1_700_000_001.0))
    assert rec["app_proto"] == "http2"
    assert rec["http"]["http2"] == {"stream_id": 3} and rec["http"]["version"] == "2"
    assert (rec["http"]["hostname"], rec["http"]["http_port"], rec["http"]["url"], rec["http"]["protocol"],
            rec["http"]["status"]) == ("cart", 7070, "/pkg.Cart/Get", "HTTP/2", 200)
    assert "metadata" not in rec


def test_grpc_call_record():
    require_suricata()
    ev = events(grpc=True)
    req = next(e for e in ev if e.kind == "http_request")
    resp = next(e for e in ev if e.kind == "http_response")
    call, = [e for e in ev if isinstance(e, GrpcCall)]
    rec = valid(eve.http_record(FLOW, req, resp, 1_700_000_001.0, grpc=call))
    md = rec["metadata"]
    assert md["flowints"] == {"grpc_status": 7, "grpc_request_messages": 1, "grpc_response_messages": 1}
    assert md["flowvars"] == [{"grpc_service": "pkg.Cart"}, {"grpc_method": "Get"}, {"grpc_message": "denied"}]
    # A call whose end was not seen: what its request says.
    rec = valid(eve.http_record(FLOW, req, None, 1_700_000_001.0))
    assert rec["metadata"] == {"flowvars": [{"grpc_service": "pkg.Cart"}, {"grpc_method": "Get"}]}


def test_http1_record_is_unchanged():
    from protocols.http import HttpParser
    ev = HttpParser().receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", C)
    rec = valid(eve.http_record(FLOW, ev[0], None, 1_700_000_001.0))
    assert rec["app_proto"] == "http" and "http2" not in rec["http"]
