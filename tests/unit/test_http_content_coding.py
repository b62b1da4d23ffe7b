"""Compressed HTTP/1 bodies: the parser decodes them, the WAF and DLP read the
decoded text, a decoding failure is an anomaly and a counted failure."""
from __future__ import annotations

import gzip
import zlib

import brotli
import pytest

from datapath.config import FailureActions
from datapath.enums import VerdictCode as V
from protocols.api import Direction
from protocols.content_coding import MAX_DECODED_BYTES
from protocols.http import MAX_BODY_EMIT_BYTES, HttpParser
from tests.unit.test_engine import Harness, rec

REQ = b"GET /account HTTP/1.1\r\nHost: shop.example\r\n\r\n"
CARD_PAGE = b"<html>" + b"filler text " * 200 + b"card=4111 1111 1111 1111 exp=12/30</html>"


def chunked(data: bytes, size: int = 7) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size])
                    for i in range(0, len(data), size)) + b"0\r\n\r\n"


def response(body: bytes, coding: str, chunk: bool = False) -> bytes:
    framing = b"Transfer-Encoding: chunked" if chunk else b"Content-Length: %d" % len(body)
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: %s\r\n%s\r\n\r\n"
            % (coding.encode(), framing)) + (chunked(body) if chunk else body)


def parse(stream: bytes, step: int, direction=Direction.TO_CLIENT) -> list:
    p = HttpParser()
    events = p.receive_data(REQ, Direction.TO_SERVER) if direction == Direction.TO_CLIENT else []
    for i in range(0, len(stream), step):
        events += p.receive_data(stream[i:i + step], direction)
    return events + p.receive_eof(direction)


ENCODED = {
    "gzip": gzip.compress(CARD_PAGE),
    "deflate": zlib.compress(CARD_PAGE),
    "br": brotli.compress(CARD_PAGE),
    "gzip, br": brotli.compress(gzip.compress(CARD_PAGE)),
}


@pytest.mark.parametrize("coding", sorted(ENCODED))
@pytest.mark.parametrize("chunk", [False, True])
@pytest.mark.parametrize("step", [1, 13, 100_000])
def test_parser_emits_decoded_body(coding, chunk, step):
    events = parse(response(ENCODED[coding], coding, chunk), step)
    body = b"".join(e.data for e in events if e.kind == "http_body" and e.direction == Direction.TO_CLIENT)
    assert body == CARD_PAGE
    end = [e for e in events if e.kind == "http_message_end" and e.direction == Direction.TO_CLIENT][-1]
    assert end.content_encoding == tuple(c.strip() for c in coding.split(","))
    assert end.body_size == len(ENCODED[coding]) and end.decoded_size == len(CARD_PAGE)
    assert end.body_emitted == len(CARD_PAGE) and end.encoding_error is None
    assert not [e for e in events if e.kind in ("http_anomaly", "malformed")]


def test_plain_and_unknown_codings_unchanged():
    events = parse(response(b"plain text", "identity"), 3)
    assert b"".join(e.data for e in events if e.kind == "http_body") == b"plain text"
    end = events[-1]
    assert end.content_encoding == () and end.decoded_size is None
    events = parse(response(b"opaque", "compress"), 3)
    assert b"".join(e.data for e in events if e.kind == "http_body") == b"opaque"


def test_wrong_claim_is_an_anomaly_and_the_next_message_still_parses():
    p = HttpParser()
    p.receive_data(REQ + REQ, Direction.TO_SERVER)
    bad = response(b"this is not gzip at all", "gzip")
    good = response(ENCODED["gzip"], "gzip")
    events = p.receive_data(bad + good, Direction.TO_CLIENT)
    kinds = [e.kind for e in events]
    assert "malformed" not in kinds
    (anomaly,) = [e for e in events if e.kind == "http_anomaly"]
    assert anomaly.name == "GZIP_DECOMPRESSION_FAILED"
    ends = [e for e in events if e.kind == "http_message_end"]
    assert [e.encoding_error for e in ends] == ["invalid", None]
    assert b"".join(e.data for e in events if e.kind == "http_body") == CARD_PAGE


def test_bomb_response_is_cut_at_the_cap():
    bomb = gzip.compress(b"A" * (MAX_DECODED_BYTES + 1_000_000))
    events = parse(response(bomb, "gzip", chunk=True), 4096)
    (anomaly,) = [e for e in events if e.kind == "http_anomaly"]
    assert anomaly.name == "COMPRESSION_BOMB"
    end = [e for e in events if e.kind == "http_message_end"][-1]
    assert end.encoding_error == "too-large" and end.decoded_size == MAX_DECODED_BYTES
    assert end.body_emitted == MAX_BODY_EMIT_BYTES and end.body_size == len(bomb)


def test_gap_in_a_coded_body_stops_decoding_quietly():
    enc = gzip.compress(CARD_PAGE * 20)
    p = HttpParser()
    p.receive_data(REQ, Direction.TO_SERVER)
    head = response(enc, "gzip")[:-len(enc)]
    events = p.receive_data(head + enc[:100], Direction.TO_CLIENT)
    events += p.receive_gap(Direction.TO_CLIENT, 50)
    events += p.receive_data(enc[150:], Direction.TO_CLIENT)
    assert not [e for e in events if e.kind in ("http_anomaly", "malformed")]
    end = events[-1]
    assert end.kind == "http_message_end" and end.encoding_error is None and end.body_size == len(enc)


# -- through the engine: the WAF and DLP see the decoded text --------------------

def test_card_number_in_gzip_response_is_caught_by_dlp():
    for coding in ("gzip", "br", "deflate"):
        h = Harness()
        h.engine.handle(rec(REQ))
        h.engine.handle(rec(response(ENCODED[coding], coding, chunk=True), side=1))
        assert h.codes() == [V.VERDICT_RELEASE, V.VERDICT_BLOCK], coding
        alert = next(r for r in h.eve if r["event_type"] == "alert")
        assert alert["alert"]["category"] == "credit_card" or "1111" in alert["alert"]["metadata"]["matched"][0]
        h.kinds()


def test_sql_injection_in_gzip_request_body_is_caught_by_waf():
    form = b"user=bob&comment=1%27%20UNION%20SELECT%20password%20FROM%20users--"
    enc = gzip.compress(form)
    req = (b"POST /comment HTTP/1.1\r\nHost: shop.example\r\n"
           b"Content-Type: application/x-www-form-urlencoded\r\nContent-Encoding: gzip\r\n"
           b"Content-Length: %d\r\n\r\n" % len(enc)) + enc
    h = Harness()
    h.engine.handle(rec(req))
    assert h.codes() == [V.VERDICT_BLOCK]
    alert = next(r for r in h.eve if r["event_type"] == "alert")
    assert alert["alert"]["metadata"]["field"][0] in ("http.request_body", "http.args")
    h.kinds()
    # the same body sent plain is caught the same way (the control)
    h2 = Harness()
    h2.engine.handle(rec(req.replace(b"Content-Encoding: gzip\r\n", b"")
                         .replace(b"%d\r\n\r\n" % len(enc), b"%d\r\n\r\n" % len(form))
                         .replace(enc, form)))
    assert h2.codes() == [V.VERDICT_BLOCK]


@pytest.mark.parametrize("action, code", [("pass", V.VERDICT_RELEASE), ("bypass", V.VERDICT_ALLOW),
                                          ("drop", V.VERDICT_BLOCK)])
def test_decoding_failure_takes_its_failure_action(action, code):
    h = Harness(failure_actions=FailureActions(decompression=action))
    h.engine.handle(rec(REQ))
    h.engine.handle(rec(response(b"not gzip", "gzip"), side=1))
    assert h.codes()[-1] == code and h.engine.counters.failures["decompression"] == 1
    anomalies = [r["anomaly"]["event"] for r in h.eve if r["event_type"] == "anomaly"]
    assert anomalies == ["GZIP_DECOMPRESSION_FAILED"]
    h.kinds()


def test_simulated_decompression_failure():
    h = Harness(simulate=("decompression",), failure_actions=FailureActions(decompression="drop"))
    h.engine.handle(rec(REQ))
    assert h.codes() == [V.VERDICT_BLOCK] and h.engine.counters.failures["decompression"] == 1


# -- EVE: the http record says which encoding was decoded ------------------------

def test_http_record_names_the_decoded_encoding():
    h = Harness()
    h.engine.handle(rec(REQ))
    h.engine.handle(rec(response(brotli.compress(gzip.compress(b"hello" * 50)), "gzip, br"), side=1))
    (http,) = [r for r in h.eve if r["event_type"] == "http"]
    assert http["http"]["status"] == 200
    assert {"http_content_encoding": "gzip, br"} in http["metadata"]["flowvars"]
    assert {"http_content_decoding": "ok"} in http["metadata"]["flowvars"]
    assert http["metadata"]["flowints"]["http_decoded_length"] == 250
    h.kinds()                       # Suricata's schema and the overlay


def test_http_record_of_a_gzip_request_and_a_failed_response():
    enc = gzip.compress(b"name=jo")
    req = (b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(enc)) + enc
    h = Harness(failure_actions=FailureActions(decompression="pass"))
    h.engine.handle(rec(req))
    h.engine.handle(rec(response(b"garbage!", "deflate"), side=1))
    (http,) = [r for r in h.eve if r["event_type"] == "http"]
    fv = http["metadata"]["flowvars"]
    assert {"http_request_content_encoding": "gzip"} in fv and {"http_request_content_decoding": "ok"} in fv
    assert {"http_content_encoding": "deflate"} in fv and {"http_content_decoding": "invalid"} in fv
    assert http["metadata"]["flowints"]["http_request_decoded_length"] == 7
    h.kinds()


def test_plain_http_record_has_no_coding_metadata():
    h = Harness()
    h.engine.handle(rec(REQ))
    h.engine.handle(rec(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", side=1))
    (http,) = [r for r in h.eve if r["event_type"] == "http"]
    assert "metadata" not in http or "flowvars" not in http.get("metadata", {})
