"""HTTP/2 and gRPC through the engine (slowpath/engine.py): an attack in one
stream blocks the flow (reset), interleaved responses are logged with their
own stream's request, a gRPC call's http record is written at the call's
end with its status, and every record passes both EVE schemas."""
from __future__ import annotations

import h2.config
import h2.connection

from datapath.enums import VerdictCode as V
from tests.unit.test_engine import Harness, rec


def pair():
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    c.initiate_connection()
    s.initiate_connection()
    return c, s


class Conv:
    """Both sides' bytes through the engine as one TCP flow's records."""

    def __init__(self, h: Harness):
        self.h, self.seq = h, [1001, 5001]

    def send(self, side: int, data: bytes) -> None:
        if data:
            self.h.engine.handle(rec(data, side=side, seq=self.seq[side], ack=self.seq[1 - side]))
            self.seq[side] += len(data)


def test_attack_in_one_stream_blocks_the_flow():
    h = Harness()
    c, _ = pair()
    c.send_headers(1, [(":method", "GET"), (":path", "/ok"), (":authority", "shop.example"), (":scheme", "http")],
                   end_stream=True)
    c.send_headers(3, [(":method", "GET"), (":path", "/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--"),
                       (":authority", "shop.example"), (":scheme", "http")], end_stream=True)
    Conv(h).send(0, c.data_to_send())
    assert h.codes()[-1] == V.VERDICT_BLOCK      # stream 1 was clean (released), stream 3 is not
    alert = next(r for r in h.eve if r["event_type"] == "alert")
    assert alert["http"]["url"].startswith("/search") and alert["http"]["http2"] == {"stream_id": 3}
    assert h.resets.calls
    h.kinds()


def test_interleaved_responses_pair_with_their_streams():
    h = Harness()
    c, s = pair()
    conv = Conv(h)
    for sid, path in ((1, "/one"), (3, "/three")):
        c.send_headers(sid, [(":method", "GET"), (":path", path), (":authority", "a.example"),
                             (":scheme", "http")], end_stream=True)
    cb = c.data_to_send()
    conv.send(0, cb)
    s.receive_data(cb)
    s.send_headers(3, [(":status", "404")], end_stream=True)      # the second answered first
    s.send_headers(1, [(":status", "200")], end_stream=True)
    conv.send(1, s.data_to_send())
    http = [(r["http"]["url"], r["http"]["status"], r["http"]["http2"]["stream_id"], r["app_proto"])
            for r in h.eve if r["event_type"] == "http"]
    assert http == [("/three", 404, 3, "http2"), ("/one", 200, 1, "http2")]
    h.kinds()


def test_grpc_call_logged_at_its_end_with_status():
    h = Harness()
    c, s = pair()
    conv = Conv(h)
    c.send_headers(1, [(":method", "POST"), (":path", "/shop.Cart/Add"), (":authority", "cart:50051"),
                       (":scheme", "http"), ("content-type", "application/grpc")])
    c.send_data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    cb = c.data_to_send()
    conv.send(0, cb)
    s.receive_data(cb)
    s.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    conv.send(1, s.data_to_send())
    assert [r for r in h.eve if r["event_type"] == "http"] == []      # the status is still to come
    s.send_data(1, b"\x00\x00\x00\x00\x00")
    s.send_headers(1, [("grpc-status", "0")], end_stream=True)
    conv.send(1, s.data_to_send())
    rec_, = [r for r in h.eve if r["event_type"] == "http"]
    assert rec_["app_proto"] == "http2" and rec_["http"]["url"] == "/shop.Cart/Add"
    assert rec_["metadata"]["flowints"]["grpc_status"] == 0
    assert {"grpc_service": "shop.Cart"} in rec_["metadata"]["flowvars"]
    h.kinds()


def test_http2_anomaly_record_names_http2():
    h = Harness()
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                                             normalize_outbound_headers=False))
    c.initiate_connection()
    c.send_headers(1, [(":method", "GET"), (":path", "/"), (":authority", "a.example"), (":scheme", "http"),
                       ("host", "b.example")], end_stream=True)
    Conv(h).send(0, c.data_to_send())
    an, = [r for r in h.eve if r["event_type"] == "anomaly"]
    assert an["anomaly"]["event"] == "AUTHORITY_HOST_MISMATCH" and an["anomaly"]["app_proto"] == "http2"
    h.kinds()
