"""Kafka in EVE (slowpath/eve.py kafka_record; Suricata has no kafka
object): a request and its response as `kafka` records whose fields sit in
metadata, valid against Suricata's schema and the project's overlay; and
through the engine: each request and response of an inspected flow logged."""
from __future__ import annotations

from protocols.api import Direction
from protocols.kafka import KafkaParser
from slowpath import eve
from tests.eve_schemas import schema_errors
from tests.unit.test_kafka import (metadata_body, metadata_response_body, produce_body,
                                   produce_response_body, request, response, string)

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
FLOW = eve.FlowInfo(9, "10.1.0.5", 40816, "10.1.0.7", 9092, 6, "kafka")
TS = 1_700_000_000.0


def _vars(rec):
    md = rec["metadata"]
    out = dict(md.get("flowints", {}))
    for item in md.get("flowvars", []):
        out.update(item)
    return out


def test_request_and_response_records():
    p = KafkaParser()
    (req,) = p.receive_data(request(0, 9, 7, "app", produce_body(9, ["orders", "audit"])), C)
    (resp,) = p.receive_data(response(0, 9, 7, produce_response_body(9, ["orders", "audit"], error=-1)), S)
    (stray,) = p.receive_data(response(0, 9, 8, b""), S)
    recs = [eve.kafka_record(FLOW, ev, TS) for ev in (req, resp, stray)]
    for r in recs:
        assert not schema_errors(r), (r, schema_errors(r))
        assert r["event_type"] == "kafka" and r["app_proto"] == "kafka"
    assert recs[0]["direction"] == "to_server" and recs[1]["direction"] == "to_client"
    assert _vars(recs[0]) == {"kafka_api_key": 0, "kafka_api_version": 9, "kafka_correlation_id": 7,
                              "kafka_message": "request", "kafka_api": "Produce", "kafka_client_id": "app",
                              "kafka_topics": "orders,audit"}
    assert _vars(recs[1]) == {"kafka_api_key": 0, "kafka_api_version": 9, "kafka_correlation_id": 7,
                              "kafka_message": "response", "kafka_api": "Produce",
                              "kafka_topics": "orders,audit", "kafka_error_codes": "-1"}
    assert _vars(recs[2]) == {"kafka_correlation_id": 8, "kafka_message": "response_unmatched"}


def test_group_and_null_client_id():
    p = KafkaParser()
    (ev,) = p.receive_data(request(11, 5, 1, None, string("payments") + b"\0" * 12), C)
    rec = eve.kafka_record(FLOW, ev, TS)
    assert not schema_errors(rec)
    v = _vars(rec)
    assert v["kafka_consumer_group"] == "payments" and "kafka_client_id" not in v and "kafka_topics" not in v


def test_engine_logs_each_request_and_response():
    """Through the slow path's engine, as `microseg run` / `replay` feed it."""
    from tests.unit.test_engine import Harness, rec
    h = Harness()
    q = request(3, 9, 1, "rdkafka", metadata_body(9, ["t"]))
    h.engine.handle(rec(q))
    h.engine.handle(rec(response(3, 9, 1, metadata_response_body(9, ["t"])), side=1))
    recs = [r for r in h.eve if r["event_type"] == "kafka"]
    assert [(_vars(r)["kafka_message"], _vars(r)["kafka_topics"]) for r in recs] == [
        ("request", "t"), ("response", "t")]
    assert h.kinds() == ["kafka", "kafka"]        # each valid against both schemas
