"""MQTT 3.1 / 3.1.1 / 5.0: the sans-IO parser (protocols/mqtt.py), its probe and signatures."""
from __future__ import annotations

import pytest

from protocols import mqtt, registry
from protocols.api import CERTAIN, NO_MATCH, Direction, Malformed

C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pkt(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return len(b).to_bytes(2, "big") + b


def connect(level=4, client_id="sensor-7", user="ops", password=b"pw", will=None, props=b""):
    name = "MQIsdp" if level == 3 else "MQTT"
    flags = 0x02 | (0x80 if user else 0) | (0x40 if password else 0) | (0x04 | 0x20 if will else 0)
    body = s(name) + bytes([level, flags]) + (60).to_bytes(2, "big")
    if level == 5:
        body += varint(len(props)) + props
    body += s(client_id)
    if will:
        if level == 5:
            body += b"\x00"
        body += s(will[0]) + s(will[1])
    if user:
        body += s(user)
    if password:
        body += s(password)
    return pkt(0x10, body)


V311 = [
    (C, connect(will=("dev/status", b"offline"))), (S, pkt(0x20, b"\x01\x00")),
    (C, pkt(0x82, b"\x00\x07" + s("plant/+/temp") + b"\x01" + s("alarms/#") + b"\x02")),
    (S, pkt(0x90, b"\x00\x07\x01\x80")),
    (C, pkt(0x32, s("plant/1/temp") + b"\x00\x09" + b"21.5")), (S, pkt(0x40, b"\x00\x09")),
    (S, pkt(0x31, s("alarms/fire") + b"none")),
    (C, pkt(0xA2, b"\x00\x08" + s("alarms/#"))), (S, pkt(0xB0, b"\x00\x08")),
    (C, pkt(0xC0, b"")), (S, pkt(0xD0, b"")), (C, pkt(0xE0, b"")),
]


def feed(parser, steps):
    out = []
    for d, data in steps:
        out += parser.receive_data(data, d)
    return out


def test_v311_session():
    p = mqtt.MqttParser()
    events = feed(p, V311)
    assert not [e for e in events if isinstance(e, Malformed)]
    assert [e.type_name for e in events] == ["CONNECT", "CONNACK", "SUBSCRIBE", "SUBACK", "PUBLISH", "PUBACK",
                                             "PUBLISH", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP",
                                             "DISCONNECT"]
    c = events[0]
    assert (c.protocol_name, c.protocol_version, c.client_id, c.username, c.has_password, c.clean_session,
            c.will, c.will_retain, c.will_topic, c.keep_alive) == (
        "MQTT", 4, "sensor-7", "ops", True, True, True, True, "dev/status", 60)
    assert "pw" not in repr(events)                     # the password is never read
    assert (events[1].session_present, events[1].return_code) == (True, 0)
    assert events[2].topics == (("plant/+/temp", 1), ("alarms/#", 2)) and events[2].packet_id == 7
    assert events[3].codes == (1, 0x80)
    pub = events[4]
    assert (pub.topic, pub.qos, pub.packet_id, pub.payload_length, pub.retain) == ("plant/1/temp", 1, 9, 4, False)
    assert (events[6].topic, events[6].qos, events[6].retain, events[6].packet_id) == ("alarms/fire", 0, True, None)
    assert events[7].topics == (("alarms/#", None),)
    assert (p.client_id, p.username, p.connack_code, p.topics_published, p.topics_subscribed) == (
        "sensor-7", "ops", 0, ["plant/1/temp", "alarms/fire"], ["plant/+/temp", "alarms/#"])


def test_every_split_gives_the_same_events():
    whole = feed(mqtt.MqttParser(), V311)
    for k, (d, data) in enumerate(V311):
        for i in range(len(data) + 1):
            steps = V311[:k] + [(d, data[:i]), (d, data[i:])] + V311[k + 1:]
            assert feed(mqtt.MqttParser(), steps) == whole, (k, i)
    # everything at once, one byte at a time
    p = mqtt.MqttParser()
    got = []
    for d, data in V311:
        for i in range(len(data)):
            got += p.receive_data(data[i:i + 1], d)
    assert got == whole


def test_v5_properties_skipped_and_reason_codes_read():
    props = b"\x11\x00\x00\x0e\x10" + b"\x21\x00\x14"        # session expiry, receive maximum
    steps = [
        (C, connect(level=5, client_id="v5-client", user=None, password=None, props=props)),
        (S, pkt(0x20, b"\x00\x00\x03\x22\x00\x0a")),          # CONNACK + topic alias maximum
        (C, pkt(0x34, s("a/b") + b"\x00\x02" + b"\x02\x01\x01" + b"payload")),   # QoS 2, format indicator
        (S, pkt(0x50, b"\x00\x02\x10")),                     # PUBREC, reason 0x10
        (C, pkt(0x82, b"\x00\x03" + b"\x00" + s("x/#") + b"\x01")),
        (S, pkt(0x90, b"\x00\x03\x00\x01")),
        (C, pkt(0xA2, b"\x00\x04\x00" + s("x/#"))), (S, pkt(0xB0, b"\x00\x04\x00\x11")),
        (C, pkt(0xE0, b"\x04\x00")), (S, pkt(0xF0, b"\x18\x00")),
    ]
    events = feed(mqtt.MqttParser(), steps)
    assert not [e for e in events if isinstance(e, Malformed)], events
    c, ack, pub, rec, sub, suback, unsub, unsuback, disc, auth = events
    assert (c.protocol_version, c.client_id, c.username, c.has_username) == (5, "v5-client", None, False)
    assert ack.return_code == 0
    assert (pub.topic, pub.qos, pub.packet_id, pub.payload_length) == ("a/b", 2, 2, 7)
    assert (rec.type_name, rec.packet_id, rec.reason_code) == ("PUBREC", 2, 0x10)
    assert sub.topics == (("x/#", 1),) and suback.codes == (1,)
    assert unsuback.type_name == "UNSUBACK" and unsuback.codes == (0x11,)
    assert (disc.type_name, disc.reason_code) == ("DISCONNECT", 4)
    assert auth.type_name == "AUTH"


def test_v31_connect():
    c, = feed(mqtt.MqttParser(), [(C, connect(level=3, client_id="paho/1", user=None, password=None))])
    assert (c.protocol_name, c.protocol_version, c.client_id, c.username) == ("MQIsdp", 3, "paho/1", None)


def test_large_publish_counted_not_held():
    p = mqtt.MqttParser()
    size = 3_000_000
    head = bytes([0x30]) + varint(2 + 5 + size) + s("bulk/")
    events = p.receive_data(head + b"x" * 1000, C)
    chunk = b"y" * 65536
    sent = 1000
    while sent < size:
        n = min(len(chunk), size - sent)
        events += p.receive_data(chunk[:n], C)
        sent += n
        assert p.buffered(C) <= mqtt.MAX_BUFFERED_BYTES
    events += p.receive_data(pkt(0xC0, b""), C)
    pub, ping = events
    assert (pub.topic, pub.payload_length) == ("bulk/", size) and ping.type_name == "PINGREQ"


@pytest.mark.parametrize("data,why", [
    (b"\x00\x00", "reserved packet type"),
    (b"\x30\xff\xff\xff\xff\x01", "remaining length"),
    (pkt(0x36, s("t") + b"\x00\x01"), "QoS 3"),
    (pkt(0x80, b"\x00\x01" + s("t") + b"\x00"), "flags"),       # SUBSCRIBE must have flags 0b0010
    (pkt(0x10, s("HTTP") + b"\x04\x02\x00\x3c" + s("x")), "protocol name"),
    (pkt(0x10, s("MQTT") + b"\x07\x02\x00\x3c" + s("x")), "protocol level"),
    (pkt(0x10, s("MQTT") + b"\x04\x02\x00"), "past the end"),
    (pkt(0xC0, b"\x01"), "must be 0"),
    (pkt(0xF0, b""), "AUTH before"),
])
def test_garbage_is_malformed(data, why):
    p = mqtt.MqttParser()
    events = p.receive_data(data, C)
    assert len(events) == 1 and isinstance(events[0], Malformed) and why in events[0].reason, events
    assert p.buffered(C) == 0
    assert p.receive_data(pkt(0xC0, b""), C) == []       # the direction is ignored from then on


def test_eof_inside_a_packet():
    p = mqtt.MqttParser()
    p.receive_data(connect()[:10], C)
    assert [e.kind for e in p.receive_eof(C)] == ["malformed"]
    assert mqtt.MqttParser().receive_eof(S) == []


def test_probe_and_signatures():
    assert mqtt.probe(connect(), C) == CERTAIN
    assert mqtt.probe(connect(level=3), C) == CERTAIN
    assert mqtt.probe(b"GET / HTTP/1.1\r\n", C) == NO_MATCH
    assert registry.detect(connect(level=5), C)[0] == "mqtt"
    sigs = mqtt.PLUGIN.signatures
    assert any(sg.matches(connect()) for sg in sigs)
    assert any(sg.matches(connect(level=3)) for sg in sigs)
    assert not any(sg.matches(pkt(0x30, s("MQTT") + b"x")) for sg in sigs)
