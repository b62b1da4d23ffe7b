"""protocols/kafka.py with crafted frames: request headers v0/v1/v2, the
topics and groups of old and flexible versions, responses matched by
correlation id, frames split at every byte, frames larger than the kept
head, garbage (a Malformed event, never an exception), and the probe."""
from __future__ import annotations

import struct

import pytest

from protocols import kafka, registry
from protocols.api import CERTAIN, LIKELY, NO_MATCH, Direction, Malformed
from protocols.kafka import (FRAME_HEAD_BYTES, MAX_PENDING, KafkaParser, is_flexible,
                             request_header_version, response_header_version)

C, S = Direction.TO_SERVER, Direction.TO_CLIENT


# --- encoders (old and compact forms) -------------------------------------------
def i8(n): return struct.pack(">b", n)
def i16(n): return struct.pack(">h", n)
def i32(n): return struct.pack(">i", n)
def i64(n): return struct.pack(">q", n)


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def string(s, flex=False) -> bytes:
    if s is None:
        return uvarint(0) if flex else i16(-1)
    b = s.encode()
    return (uvarint(len(b) + 1) if flex else i16(len(b))) + b


def array(items: list[bytes], flex=False) -> bytes:
    return (uvarint(len(items) + 1) if flex else i32(len(items))) + b"".join(items)


def tags(flex, fields=()) -> bytes:
    if not flex:
        return b""
    return uvarint(len(fields)) + b"".join(uvarint(t) + uvarint(len(v)) + v for t, v in fields)


def records(blob: bytes, flex=False) -> bytes:
    return (uvarint(len(blob) + 1) if flex else i32(len(blob))) + blob


def frame(body: bytes) -> bytes:
    return i32(len(body)) + body


def request(key, v, corr, client_id, body=b"", header_tags=()) -> bytes:
    hv = request_header_version(key, v)
    head = i16(key) + i16(v) + i32(corr)
    if hv >= 1:
        head += string(client_id)
    if hv >= 2:
        head += tags(True, header_tags)
    return frame(head + body)


def response(key, v, corr, body=b"") -> bytes:
    head = i32(corr)
    if response_header_version(key, v):
        head += tags(True)
    return frame(head + body)


def produce_body(v, topics, blob=b"x" * 30, acks=-1):
    f = is_flexible(0, v)
    out = b""
    if v >= 3:
        out += string(None, f)
    out += i16(acks) + i32(30000)
    parts = [i32(0) + records(blob, f) + tags(f)]
    out += array([string(t, f) + array(parts, f) + tags(f) for t in topics], f)
    return out + tags(f)


def produce_response_body(v, topics, error=0):
    f = is_flexible(0, v)
    part = i32(0) + i16(error) + i64(5)
    if v >= 2:
        part += i64(-1)
    if v >= 5:
        part += i64(0)
    if v >= 8:
        part += array([], f) + string(None, f)
    part += tags(f)
    out = array([string(t, f) + array([part], f) + tags(f) for t in topics], f)
    if v >= 1:
        out += i32(0)
    return out + tags(f)


def metadata_body(v, topics):
    f = is_flexible(3, v)
    if topics is None:
        out = uvarint(0) if f else i32(-1)
    else:
        out = array([(b"\0" * 16 if v >= 10 else b"") + string(t, f) + tags(f) for t in topics], f)
    if v >= 4:
        out += i8(1)
    if 8 <= v <= 10:
        out += i8(0)
    if v >= 8:
        out += i8(0)
    return out + tags(f)


def metadata_response_body(v, topics, error=0):
    f = is_flexible(3, v)
    out = i32(0) if v >= 3 else b""
    broker = i32(1) + string("broker1", f) + i32(9092) + (string(None, f) if v >= 1 else b"") + tags(f)
    out += array([broker], f)
    if v >= 2:
        out += string("cluster", f)
    if v >= 1:
        out += i32(1)
    part = i16(0) + i32(0) + i32(1) + (i32(0) if v >= 7 else b"")
    part += array([i32(1)], f) + array([i32(1)], f) + (array([], f) if v >= 5 else b"") + tags(f)
    t_items = []
    for t in topics:
        item = i16(error) + string(t, f) + (b"\0" * 16 if v >= 10 else b"") + (i8(0) if v >= 1 else b"")
        item += array([part], f) + (i32(0) if v >= 8 else b"") + tags(f)
        t_items.append(item)
    return out + array(t_items, f) + tags(f)


def feed(p, chunks):
    out = []
    for d, data in chunks:
        out += p.receive_data(data, d)
    return out


def kinds(events):
    return [e.kind for e in events]


# --- headers and versions -----------------------------------------------------------
def test_flexible_versions_follow_kafkas_message_definitions():
    assert not is_flexible(0, 8) and is_flexible(0, 9)          # Produce 9+
    assert not is_flexible(1, 11) and is_flexible(1, 12)        # Fetch 12+
    assert not is_flexible(3, 8) and is_flexible(3, 9)          # Metadata 9+
    assert not is_flexible(17, 1)                               # SaslHandshake: never
    assert is_flexible(68, 0)                                   # ConsumerGroupHeartbeat: 0+
    assert request_header_version(7, 0) == 0                    # ControlledShutdown v0
    assert request_header_version(18, 3) == 2 and response_header_version(18, 3) == 0
    assert response_header_version(3, 9) == 1 and response_header_version(3, 8) == 0


@pytest.mark.parametrize("v", [0, 2, 3, 7, 8, 9, 11])
def test_produce_request_and_response_every_encoding(v):
    p = KafkaParser()
    evs = feed(p, [(C, request(0, v, 7, "producer-1", produce_body(v, ["orders", "audit"]))),
                   (S, response(0, v, 7, produce_response_body(v, ["orders", "audit"], error=6)))])
    req, resp = evs
    assert (req.kind, req.api_key, req.api_name, req.api_version, req.correlation_id, req.client_id) == \
        ("kafka_request", 0, "Produce", v, 7, "producer-1")
    assert req.topics == ("orders", "audit") and req.topics_complete
    assert (resp.kind, resp.decoded, resp.api_key, resp.api_version, resp.correlation_id) == \
        ("kafka_response", True, 0, v, 7)
    assert resp.topics == ("orders", "audit") and resp.error_codes == (6,)


def test_flexible_header_with_tagged_fields_is_skipped():
    p = KafkaParser()
    body = produce_body(9, ["t1"])
    ev, = feed(p, [(C, request(0, 9, 1, "c", body, header_tags=[(0, b"abc"), (5, b"")]))])
    assert ev.client_id == "c" and ev.topics == ("t1",)


@pytest.mark.parametrize("v", [0, 1, 4, 9, 10, 12])
def test_metadata_topics_old_and_flexible(v):
    p = KafkaParser()
    evs = feed(p, [(C, request(3, v, 42, "rdkafka", metadata_body(v, ["a", "b"]))),
                   (S, response(3, v, 42, metadata_response_body(v, ["a", "b"], error=3)))])
    assert evs[0].topics == ("a", "b")
    assert evs[1].decoded and evs[1].topics == ("a", "b") and evs[1].error_codes == (3,)


def test_metadata_for_all_topics_has_none():
    p = KafkaParser()
    ev, = feed(p, [(C, request(3, 4, 1, "x", metadata_body(4, None)))])
    assert ev.topics == () and ev.topics_complete


@pytest.mark.parametrize("v", [0, 4, 7, 11, 12])
def test_fetch_topics(v):
    f = is_flexible(1, v)
    body = i32(-1) + i32(500) + i32(1)
    if v >= 3:
        body += i32(1 << 20)
    if v >= 4:
        body += i8(0)
    if v >= 7:
        body += i32(0) + i32(-1)
    part = i32(0) + (i32(-1) if v >= 9 else b"") + i64(0) + (i32(-1) if v >= 12 else b"")
    part += (i64(0) if v >= 5 else b"") + i32(1 << 20) + tags(f)
    body += array([string(t, f) + array([part, part], f) + tags(f) for t in ("logs", "metrics")], f)
    if v >= 7:
        body += array([], f)
    if v >= 11:
        body += string("", f)
    body += tags(f)
    ev, = feed(KafkaParser(), [(C, request(1, v, 3, "consumer", body))])
    assert ev.api_name == "Fetch" and ev.topics == ("logs", "metrics") and ev.topics_complete


@pytest.mark.parametrize("v", [0, 1, 2, 4, 6, 7])
def test_list_offsets_topics(v):
    f = is_flexible(2, v)
    body = i32(-1) + (i8(0) if v >= 2 else b"")
    part = i32(0) + (i32(-1) if v >= 4 else b"") + i64(-1) + (i32(1) if v == 0 else b"") + tags(f)
    body += array([string("t", f) + array([part], f) + tags(f)], f) + tags(f)
    ev, = feed(KafkaParser(), [(C, request(2, v, 3, "c", body))])
    assert ev.topics == ("t",) and ev.topics_complete


@pytest.mark.parametrize("v", [0, 1, 2, 6, 7, 8])
def test_offset_commit_group_and_topics(v):
    f = is_flexible(8, v)
    body = string("grp", f)
    if v >= 1:
        body += i32(3) + string("member", f)
    if v >= 7:
        body += string(None, f)
    if 2 <= v <= 4:
        body += i64(-1)
    part = i32(0) + i64(10) + (i32(-1) if v >= 6 else b"") + (i64(0) if v == 1 else b"")
    part += string("", f) + tags(f)
    body += array([string("t1", f) + array([part], f) + tags(f),
                   string("t2", f) + array([part], f) + tags(f)], f) + tags(f)
    ev, = feed(KafkaParser(), [(C, request(8, v, 9, "c", body))])
    assert ev.consumer_group == "grp" and ev.topics == ("t1", "t2") and ev.topics_complete


@pytest.mark.parametrize("v", [1, 6, 7, 8, 9])
def test_offset_fetch_group_and_topics(v):
    f = is_flexible(9, v)
    topics = array([string("t", f) + array([i32(0), i32(1)], f) + tags(f)], f)
    if v >= 8:
        g = string("grp", f) + (string(None, f) + i32(-1) if v >= 9 else b"") + topics + tags(f)
        body = array([g], f) + i8(0) + tags(f)
    else:
        body = string("grp", f) + topics + (i8(0) if v >= 7 else b"") + tags(f)
    ev, = feed(KafkaParser(), [(C, request(9, v, 9, "c", body))])
    assert ev.consumer_group == "grp" and ev.topics == ("t",)


@pytest.mark.parametrize("key,v", [(11, 0), (11, 6), (12, 0), (12, 4), (13, 0), (13, 4),
                                   (14, 0), (14, 5)])
def test_group_calls_name_their_group(key, v):
    f = is_flexible(key, v)
    ev, = feed(KafkaParser(), [(C, request(key, v, 1, "c", string("payments", f) + b"\0" * 20))])
    assert ev.consumer_group == "payments" and ev.api_name == kafka.API_NAMES[key]


@pytest.mark.parametrize("v", [0, 1, 3, 4])
def test_find_coordinator_group_key(v):
    f = is_flexible(10, v)
    if v <= 3:
        body = string("g1", f) + (i8(0) if v >= 1 else b"") + tags(f)
    else:
        body = i8(0) + array([string("g1", f)], f) + tags(f)
    ev, = feed(KafkaParser(), [(C, request(10, v, 1, "c", body))])
    assert ev.consumer_group == "g1"
    # a transaction coordinator's key is not a group
    if v >= 1:
        body = (string("tx", f) + i8(1) + tags(f)) if v <= 3 else i8(1) + array([string("tx", f)], f) + tags(f)
        ev, = feed(KafkaParser(), [(C, request(10, v, 1, "c", body))])
        assert ev.consumer_group is None


def test_header_v0_and_null_client_id():
    ev, = feed(KafkaParser(), [(C, request(7, 0, 5, None, i32(1)))])
    assert ev.api_name == "ControlledShutdown" and ev.client_id is None
    ev, = feed(KafkaParser(), [(C, request(18, 0, 5, None))])
    assert ev.client_id is None and ev.api_name == "ApiVersions"


def test_api_versions_v3_response_header_has_no_tagged_fields():
    p = KafkaParser()
    body = string("python", True) + string("1.0", True) + tags(True)
    evs = feed(p, [(C, request(18, 3, 3, "console-producer", body)),
                   (S, response(18, 3, 3, i16(35)))])
    assert evs[1].decoded and evs[1].error_codes == (35,)


# --- correlation ----------------------------------------------------------------------
def test_responses_matched_by_correlation_id_out_of_order_and_unknown():
    p = KafkaParser()
    feed(p, [(C, request(3, 1, 10, "c", metadata_body(1, ["m"]))),
             (C, request(0, 3, 11, "c", produce_body(3, ["p"])))])
    evs = feed(p, [(S, response(0, 3, 11, produce_response_body(3, ["p"]))),
                   (S, response(3, 1, 99, b"")),
                   (S, response(3, 1, 10, metadata_response_body(1, ["m"])))])
    assert [(e.correlation_id, e.decoded, e.api_name, e.topics) for e in evs] == [
        (11, True, "Produce", ("p",)), (99, False, None, ()), (10, True, "Metadata", ("m",))]
    # answered once: the same id again is not decoded
    ev, = feed(p, [(S, response(3, 1, 10, b""))])
    assert not ev.decoded


def test_produce_with_acks_zero_expects_no_response():
    p = KafkaParser()
    feed(p, [(C, request(0, 3, 1, "c", produce_body(3, ["t"], acks=0)))])
    assert not p._pending


def test_pending_requests_are_bounded():
    p = KafkaParser()
    for i in range(MAX_PENDING + 50):
        feed(p, [(C, request(18, 0, i, "c"))])
    assert len(p._pending) == MAX_PENDING
    assert not feed(p, [(S, response(18, 0, 0, i16(0)))])[0].decoded     # forgotten, oldest first
    assert feed(p, [(S, response(18, 0, MAX_PENDING + 49, i16(0)))])[0].decoded


def test_flow_picked_up_the_other_way_round():
    """A capture starting with the broker's packet: requests arrive as TO_CLIENT."""
    p = KafkaParser()
    evs = feed(p, [(C, response(3, 2, 140, metadata_response_body(2, ["x"]))),
                   (S, request(3, 2, 142, "rdkafka", metadata_body(2, ["x"]))),
                   (C, response(3, 2, 142, metadata_response_body(2, ["x"])))])
    assert [(e.kind, e.correlation_id, getattr(e, "decoded", None)) for e in evs] == [
        ("kafka_response", 140, False), ("kafka_request", 142, None), ("kafka_response", 142, True)]
    assert evs[2].topics == ("x",)


# --- streaming ------------------------------------------------------------------------
def _conversation():
    return [(C, request(18, 3, 1, "cli", string("x", True) + string("1", True) + tags(True))),
            (S, response(18, 3, 1, i16(0) + b"\0" * 12)),
            (C, request(0, 9, 2, "cli", produce_body(9, ["t"]))),
            (S, response(0, 9, 2, produce_response_body(9, ["t"]))),
            (C, request(3, 2, 3, "cli", metadata_body(2, ["a", "b"])))]


def _summary(evs):
    return [(e.kind, e.correlation_id, getattr(e, "topics", None), getattr(e, "decoded", None))
            for e in evs]


def test_split_at_every_byte_gives_the_same_events():
    whole = _summary(feed(KafkaParser(), _conversation()))
    assert len(whole) == 5
    for d, data in _conversation():
        for cut in range(1, len(data)):
            p = KafkaParser()
            evs = []
            for d2, data2 in _conversation():
                if data2 is data:
                    evs += p.receive_data(data2[:cut], d2) + p.receive_data(data2[cut:], d2)
                else:
                    evs += p.receive_data(data2, d2)
            assert _summary(evs) == whole, cut


def test_byte_by_byte():
    p = KafkaParser()
    evs = []
    for d, data in _conversation():
        for i in range(len(data)):
            evs += p.receive_data(data[i:i + 1], d)
            assert p.buffered(d) <= kafka.MAX_BUFFERED_BYTES
    assert _summary(evs) == _summary(feed(KafkaParser(), _conversation()))


def test_frame_larger_than_the_head_is_counted_not_held():
    p = KafkaParser()
    blob = b"r" * (3 * FRAME_HEAD_BYTES)
    data = request(0, 3, 5, "big", produce_body(3, ["t"], blob=blob))
    evs = []
    for i in range(0, len(data), 4096):
        evs += p.receive_data(data[i:i + 4096], C)
        assert p.buffered(C) <= FRAME_HEAD_BYTES
    ev, = evs
    # the header and the only topic are in the head; what was cut is records
    assert ev.topics == ("t",) and ev.topics_complete and ev.length == len(data) - 4
    # framing goes on after the skipped tail
    ev, = feed(p, [(C, request(18, 0, 6, "next"))])
    assert ev.correlation_id == 6 and ev.client_id == "next"


def test_huge_declared_length_is_skipped_by_counting():
    p = KafkaParser()
    head = request(1, 4, 1, "c", b"")[4:]
    assert p.receive_data(i32(1 << 30) + head, C) == []        # waits for the head ...
    ev, = p.receive_data(b"\0" * (FRAME_HEAD_BYTES - len(head)), C)
    assert ev.api_name == "Fetch" and ev.length == 1 << 30 and p.buffered(C) == 0
    for _ in range(10):
        assert p.receive_data(b"\0" * 65536, C) == []          # ... the rest only counted
        assert p.buffered(C) == 0


# --- garbage --------------------------------------------------------------------------
@pytest.mark.parametrize("data,why", [
    (i32(-5) + b"x", "frame length"),
    (i32(12) + b"\xff" * 12, "unknown api key"),
    (i32(4) + b"\0\0\0\0", "shorter than a header"),
    (frame(i16(999) + i16(0) + i32(1) + string("c")), "unknown api key"),
    (frame(i16(0) + i16(300) + i32(1) + string("c")), "out of range"),
    (frame(i16(0) + i16(3) + i32(1) + i16(50) + b"c"), "past its frame"),
    (frame(i16(0) + i16(9) + i32(1) + string("c") + b"\xff\xff\xff\xff\xff\xff"), "varint"),
])
def test_garbage_is_malformed_then_ignored(data, why):
    """After a first request (which settles the sides: a first frame that is
    no request is taken for the broker's, test_flow_picked_up_...)."""
    p = KafkaParser()
    assert p.receive_data(request(18, 0, 1, "c"), C)[0].kind == "kafka_request"
    evs = p.receive_data(data, C)
    assert len(evs) == 1 and isinstance(evs[0], Malformed) and why in evs[0].reason, evs
    assert p.receive_data(request(18, 0, 1, "c"), C) == []      # the direction is given up
    assert p.buffered(C) == 0


def test_short_response_is_malformed():
    p = KafkaParser()
    feed(p, [(C, request(18, 0, 1, "c"))])
    ev, = p.receive_data(i32(2) + b"\0\0", S)
    assert ev.kind == "malformed" and "shorter than a header" in ev.reason


def test_bad_body_still_reports_the_header():
    body = i16(-1) + i32(30000) + i32(1) + i16(-7)            # a topic name of length -7
    ev, = feed(KafkaParser(), [(C, request(0, 2, 1, "c", body))])
    assert ev.kind == "kafka_request" and ev.topics == () and not ev.topics_complete


def test_eof_and_gap():
    p = KafkaParser()
    assert p.receive_data(request(18, 0, 1, "c")[:7], C) == []
    assert p.receive_eof(C)[0].kind == "malformed"
    p = KafkaParser()
    assert p.receive_gap(S, 100)[0].kind == "malformed" and p.receive_gap(S, 1) == []


def test_sasl_handshake_v0_token_is_not_a_request():
    p = KafkaParser()
    evs = feed(p, [(C, request(17, 0, 1, "c", string("PLAIN"))),
                   (C, frame(b"\0user\0secret")),
                   (C, request(3, 1, 2, "c", metadata_body(1, ["t"])))])
    assert kinds(evs) == ["kafka_request", "kafka_request"] and evs[1].topics == ("t",)


# --- probe and registration -------------------------------------------------------------
def test_probe():
    probe = kafka.probe
    api_versions = request(18, 3, 0, "console-producer", string("x", True) + string("1", True) + tags(True))
    assert probe(api_versions, C) == CERTAIN
    assert probe(api_versions[:20], C) == LIKELY
    assert probe(api_versions, S) == LIKELY            # a flow picked up the other way round
    assert probe(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", C) == NO_MATCH
    assert probe(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40, C) == NO_MATCH
    assert probe(frame(i16(0) + i16(3) + i32(1) + string("c\x01")), C) == NO_MATCH
    assert probe(response(18, 0, 1, i16(0)), S) == NO_MATCH


def test_registered_without_kernel_signature():
    plugin = registry.by_name()["kafka"]
    assert plugin.signatures == () and plugin.transports == {"tcp"}
    assert isinstance(plugin.parser_factory("tcp"), KafkaParser)
    assert registry.detect(request(3, 2, 1, "rdkafka", metadata_body(2, ["t"])), C)[0] == "kafka"


def test_probe_weak_shapes_wait_for_more():
    """An empty or not-yet-arrived client id is only POSSIBLE (detection
    waits for more or the other side) unless the frame is there whole."""
    from protocols.api import POSSIBLE
    empty = request(18, 0, 1, "")
    assert kafka.probe(empty, C) == LIKELY and kafka.probe(empty + b"\0" * 8, C) == POSSIBLE
    named = request(3, 1, 1, "rdkafka", metadata_body(1, ["t"]))
    assert kafka.probe(named[:14], C) == POSSIBLE and kafka.probe(named[:16], C) == LIKELY


@pytest.mark.parametrize("v", [0, 4, 7, 11, 12])
def test_fetch_response_topics_and_errors(v):
    f = is_flexible(1, v)
    body = (i32(0) if v >= 1 else b"") + (i16(0) + i32(0) if v >= 7 else b"")
    part = i32(0) + i16(1) + i64(10) + (i64(10) if v >= 4 else b"") + (i64(0) if v >= 5 else b"")
    if v >= 4:
        part += array([i64(1) + i64(2) + tags(f)], f)
    if v >= 11:
        part += i32(-1)
    part += records(b"r" * 50, f) + tags(f)
    body += array([string(t, f) + array([part], f) + tags(f) for t in ("logs", "metrics")], f) + tags(f)
    p = KafkaParser()
    feed(p, [(C, request(1, v, 4, "c", b""))])
    ev, = feed(p, [(S, response(1, v, 4, body))])
    assert ev.topics == ("logs", "metrics") and ev.error_codes == (1,)


@pytest.mark.parametrize("key,v", [(2, 0), (2, 1), (2, 4), (2, 6), (8, 2), (8, 3), (8, 8),
                                   (9, 1), (9, 3), (9, 5), (9, 6), (9, 8)])
def test_offset_responses_topics_and_errors(key, v):
    f = is_flexible(key, v)
    body = i32(0) if (key == 2 and v >= 2) or (key in (8, 9) and v >= 3) else b""
    if key == 2:
        part = i32(0) + i16(3) + (array([i64(5)], f) if v == 0 else i64(0) + i64(5) + (i32(0) if v >= 4 else b""))
    elif key == 8:
        part = i32(0) + i16(3)
    else:
        part = i32(0) + i64(5) + (i32(0) if v >= 5 else b"") + string("", f) + i16(3)
    part += tags(f)
    topics = array([string("t1", f) + array([part], f) + tags(f)], f)
    if key == 9 and v >= 8:
        body += array([string("g", f) + topics + i16(0) + tags(f)], f)
    else:
        body += topics + (i16(0) if key == 9 and v >= 2 else b"")
    body += tags(f)
    p = KafkaParser()
    feed(p, [(C, request(key, v, 4, "c", b""))])
    ev, = feed(p, [(S, response(key, v, 4, body))])
    assert ev.topics == ("t1",) and ev.error_codes == (3,)


def test_topic_after_a_cut_is_not_seen_and_the_list_says_so():
    """Two topics, the first one's records past the kept head: the second
    name is never read, so the request's topics are not complete (an
    allow-list on topics then fails closed)."""
    f = False
    blob = b"r" * (2 * FRAME_HEAD_BYTES)
    part = i32(0) + records(blob, f)
    body = string(None, f) + i16(-1) + i32(30000) + array([string(t, f) + array([part], f) for t in ("a", "b")], f)
    ev, = feed(KafkaParser(), [(C, request(0, 3, 1, "c", body))])
    assert ev.topics == ("a",) and not ev.topics_complete
