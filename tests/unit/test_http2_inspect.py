"""WAF, DLP and domain rules on HTTP/2 streams (slowpath/inspector.py): a
stream reads exactly as an HTTP/1 message, and interleaved streams keep
their bodies apart (a body is collected per stream, not per direction)."""
from __future__ import annotations

from functools import lru_cache

import h2.config
import h2.connection

from protocols.api import Direction
from protocols.http2 import HttpTwoParser
from slowpath.rulesfile import load_rules_text

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
RULES = ("waf:\n  sets: {sqli: block, xss: block, traversal: alert, cmdi: block}\n"
         "dlp:\n  - {name: leak, detectors: [credit_card], direction: both}\n"
         "domains:\n  - {name: bad, id: 900100, match: [evil.example], action: block}\n")


def pair():
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    return client, server


@lru_cache(maxsize=1)
def rules():
    return load_rules_text(RULES, "r.yaml")


def hits(chunks, what=frozenset({"waf", "dlp", "dpi"})):
    insp = rules().flow(what)
    p = HttpTwoParser()
    out = []
    for d, data in chunks:
        for ev in p.receive_data(data, d):
            out += insp.feed(ev)
    return out + insp.close()


def post(c, sid, path="/form", host="app.example"):
    c.send_headers(sid, [(":method", "POST"), (":path", path), (":authority", host), (":scheme", "http"),
                         ("content-type", "application/x-www-form-urlencoded")])


def test_attack_in_a_stream_uri_and_host_rule():
    c, _ = pair()
    c.send_headers(1, [(":method", "GET"), (":path", "/?id=1' union select username, password from users--"),
                       (":authority", "app.example"), (":scheme", "http")], end_stream=True)
    c.send_headers(3, [(":method", "GET"), (":path", "/"), (":authority", "evil.example"),
                       (":scheme", "http")], end_stream=True)
    got = hits([(C, c.data_to_send())])
    assert {h.category for h in got} >= {"sqli", "domain"}


def test_interleaved_request_bodies_are_scanned_per_stream():
    c, _ = pair()
    post(c, 1)
    post(c, 3)
    c.send_data(1, b"q=1' union se")
    c.send_data(3, b"note=harmless")
    c.send_data(1, b"lect username, password from users--", end_stream=True)
    c.send_data(3, b"&more=fine", end_stream=True)
    got = hits([(C, c.data_to_send())], frozenset({"waf"}))
    assert [h.category for h in got if h.field == "http.request_body"] == ["sqli"]


def test_interleaved_response_bodies_dlp_per_stream():
    c, s = pair()
    for sid in (1, 3):
        c.send_headers(sid, [(":method", "GET"), (":path", f"/{sid}"), (":authority", "a"), (":scheme", "http")],
                       end_stream=True)
    cb = c.data_to_send()
    s.receive_data(cb)
    for sid in (1, 3):
        s.send_headers(sid, [(":status", "200"), ("content-type", "text/plain")])
    s.send_data(1, b"card 4111 1111 ")
    s.send_data(3, b"0000 2222 ")            # digits of another stream in between
    s.send_data(1, b"1111 1111 end", end_stream=True)
    s.send_data(3, b"nothing", end_stream=True)
    got = hits([(C, cb), (S, s.data_to_send())], frozenset({"dlp"}))
    assert [(h.category, h.matched[-4:]) for h in got] == [("credit_card", "1111")]


def test_stream_state_is_dropped_when_streams_end():
    c, s = pair()
    rs = rules()
    insp = rs.flow({"waf", "dlp"})
    p = HttpTwoParser()
    for sid in range(1, 400, 2):
        post(c, sid)
        c.send_data(sid, b"a=1", end_stream=True)
        cb = c.data_to_send()
        s.receive_data(cb)
        s.send_headers(sid, [(":status", "200")])
        s.send_data(sid, b"ok", end_stream=True)
        for d, data in ((C, cb), (S, s.data_to_send())):
            for ev in p.receive_data(data, d):
                insp.feed(ev)
    assert insp._parked == {} and insp._ended == {}     # 200 streams came and went
    c2, s2 = pair()
    c2.send_headers(1, [(":method", "GET"), (":path", "/"), (":authority", "a"), (":scheme", "http")],
                    end_stream=True)
    cb = c2.data_to_send()
    s2.receive_data(cb)
    s2.reset_stream(1)
    insp = rs.flow({"waf", "dlp"})
    p = HttpTwoParser()
    for d, data in ((C, cb), (S, s2.data_to_send())):
        for ev in p.receive_data(data, d):
            insp.feed(ev)
    assert insp._parked == {} and insp._ended == {}
