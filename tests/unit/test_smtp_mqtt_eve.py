"""EVE smtp and mqtt records (slowpath/eve.py smtp_record, mqtt_record) from
the parsers' events: valid against Suricata 8's schema and the project's
overlay, with the fields Suricata's loggers write; and through the engine."""
from __future__ import annotations

from protocols import mqtt, smtp
from slowpath import eve
from tests.eve_schemas import require_suricata, schema_errors
from tests.unit.test_mqtt_parser import V311, connect, pkt, s
from tests.unit.test_mqtt_parser import feed as mqtt_feed
from tests.unit.test_smtp_parser import SESSION
from tests.unit.test_smtp_parser import feed as smtp_feed

TS = 1_700_000_000.0
SMTP_FLOW = eve.FlowInfo(11, "10.1.0.5", 51000, "10.1.0.25", 25, 6, "smtp", start=TS)
MQTT_FLOW = eve.FlowInfo(12, "2001:db8::5", 40000, "2001:db8::1883", 1883, 6, "mqtt", start=TS)


def test_smtp_record_per_message():
    require_suricata()
    msg, = [e for e in smtp_feed(smtp.SmtpParser(), SESSION) if e.kind == "smtp_message"]
    rec = eve.smtp_record(SMTP_FLOW, msg, TS, tx_id=0)
    assert not schema_errors(rec), schema_errors(rec)
    assert rec["event_type"] == "smtp" and rec["app_proto"] == "smtp"
    assert rec["smtp"] == {"helo": "client.example.org", "mail_from": "<alice@example.org>",
                           "rcpt_to": ["<bob@example.net>", "<carol@example.net>"]}
    assert rec["email"] == {"status": "PARSE_DONE", "from": "Alice <alice@example.org>", "to": ["bob@example.net"],
                            "subject": "quarterly numbers", "message_id": "<1@example.org>"}
    assert eve.encode(rec)


def test_smtp_second_transaction_has_its_own_envelope():
    steps = SESSION[:-2] + [(smtp.Direction.TO_SERVER, b"MAIL FROM:<>\r\nRCPT TO:<d@x>\r\nDATA\r\n"),
                            (smtp.Direction.TO_CLIENT, b"250 ok\r\n250 ok\r\n354 go\r\n"),
                            (smtp.Direction.TO_SERVER, b"\r\nno headers\r\n.\r\n")]
    msgs = [e for e in smtp_feed(smtp.SmtpParser(), steps) if e.kind == "smtp_message"]
    rec = eve.smtp_record(SMTP_FLOW, msgs[1], TS)
    assert not schema_errors(rec), schema_errors(rec)
    assert rec["smtp"] == {"helo": "client.example.org", "mail_from": "<>", "rcpt_to": ["<d@x>"]}
    assert rec["email"] == {"status": "PARSE_DONE"}


def test_mqtt_records_per_packet():
    require_suricata()
    v5 = [(mqtt.Direction.TO_SERVER, connect(level=5, client_id="v5", user=None, password=None)),
          (mqtt.Direction.TO_CLIENT, pkt(0x20, b"\x00\x00\x00")),
          (mqtt.Direction.TO_SERVER, pkt(0xA2, b"\x00\x04\x00" + s("x/#"))),
          (mqtt.Direction.TO_CLIENT, pkt(0xB0, b"\x00\x04\x00\x11")),
          (mqtt.Direction.TO_SERVER, pkt(0xE0, b"\x04\x00")), (mqtt.Direction.TO_CLIENT, pkt(0xF0, b"\x18\x00"))]
    records = []
    for steps in (V311, v5):
        for ev in mqtt_feed(mqtt.MqttParser(), steps):
            rec = eve.mqtt_record(MQTT_FLOW, ev, TS)
            if rec is None:
                assert ev.type == mqtt.AUTH            # Suricata's schema has no key for AUTH
                continue
            assert not schema_errors(rec), (rec, schema_errors(rec))
            records.append(rec)
    keys = [next(iter(r["mqtt"])) for r in records]
    assert keys == ["connect", "connack", "subscribe", "suback", "publish", "puback", "publish", "unsubscribe",
                    "unsuback", "pingreq", "pingresp", "disconnect",
                    "connect", "connack", "unsubscribe", "unsuback", "disconnect"]
    c = records[0]["mqtt"]["connect"]
    assert (c["client_id"], c["username"], c["protocol_version"], c["protocol_string"], c["will"]) == (
        "sensor-7", "ops", 4, "MQTT", {"topic": "dev/status"})
    assert c["flags"] == {"username": True, "password": True, "will": True, "will_retain": True,
                          "clean_session": True} and "password" not in c
    assert records[2]["mqtt"]["subscribe"]["topics"] == [{"topic": "plant/+/temp", "qos": 1},
                                                         {"topic": "alarms/#", "qos": 2}]
    pub = records[4]
    assert pub["direction"] == "to_server" and pub["mqtt"]["publish"] == {
        "qos": 1, "retain": False, "dup": False, "topic": "plant/1/temp", "message_id": 9, "skipped_length": 4}
    assert records[15]["mqtt"]["unsuback"]["reason_codes"] == [0x11]
    assert records[16]["mqtt"]["disconnect"]["reason_code"] == 4
