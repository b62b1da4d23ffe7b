"""SMTP and MQTT against the corpus truth (../shared/corpus, "Second wave"):
every flow tshark labelled smtp or mqtt (truth `tshark.smtp` / `tshark.mqtt`),
through the parsers alone (slowpath/pcap.py -> slowpath/analyzer.py, and
slowpath/offline.py analyze_capture) and through `microseg replay` (the real
BPF program and the engine; the EVE flow record's app_proto and the EVE smtp
and mqtt records).

SMTP compared: the banner, EHLO/HELO and its domain, each command and its
parameter, each reply's code and first line (in order: tshark lists them
by frame), MAIL FROM and RCPT TO parameters, STARTTLS. MQTT: protocol
name and version, client id, user name, the CONNACK code, topics published
and subscribed, and each control packet (type, side, and the CONNECT /
CONNACK / PUBLISH / SUBSCRIBE fields tshark shows). Requirements as for the
other protocols: 99 % per field, 95 % protocol identity.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

from datapath import l7
from protocols import registry
from protocols.api import Direction
from slowpath.analyzer import analyse_flow
from slowpath.offline import analyze_capture
from slowpath.pcap import read_capture
from tests.corpus.test_corpus_protocols import kernel_app, unordered
from tests.corpus.test_corpus_quic import Tally

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
FIELD_TARGET = 0.99
IDENT_TARGET = 0.95
LABELS = ("smtp", "mqtt")

CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(not CI and not (CORPUS / "truth").is_dir(),
                                reason=f"corpus not found at {CORPUS}")


def truths(label: str) -> list[tuple[str, str, dict]]:
    """(pcap, flow key, truth flow) for every flow labelled ``label``."""
    out = []
    for tf in sorted((CORPUS / "truth").glob("*.json")):
        truth = json.loads(tf.read_text())
        for key, flow in truth["flows"].items():
            if flow["label"] == label:
                out.append((truth["pcap"], key, flow))
    return out


def _smtp(t: Tally, where: str, want: dict, events: list, parser) -> None:
    commands = [e for e in events if e.kind == "smtp_command"]
    replies = [e for e in events if e.kind == "smtp_reply"]
    t.check(where, "smtp.banner", want.get("banner"), getattr(parser, "banner", None))
    helo = next((c for c in commands if c.command in ("EHLO", "HELO")), None)
    t.check(where, "smtp.helo", want.get("helo"),
            {"command": helo.command, "domain": helo.parameter} if helo else None)
    for i, w in enumerate(want.get("commands", [])):
        g = commands[i] if i < len(commands) else None
        t.check(where, "smtp.command", w["command"], g.command if g else None)
        t.check(where, "smtp.command.parameter", w["parameter"], g.parameter if g else None)
    t.check(where, "smtp.command count", len(want.get("commands", [])), len(commands))
    for i, w in enumerate(want.get("responses", [])):
        g = replies[i] if i < len(replies) else None
        t.check(where, "smtp.response.code", w["code"], g.code if g else None)
        t.check(where, "smtp.response.text", w["text"], g.text if g else None)
    t.check(where, "smtp.response count", len(want.get("responses", [])), len(replies))
    t.check(where, "smtp.mail_from", want.get("mail_from"), [c.parameter for c in commands if c.command == "MAIL"])
    t.check(where, "smtp.rcpt_to", want.get("rcpt_to"), [c.parameter for c in commands if c.command == "RCPT"])
    t.check(where, "smtp.starttls", bool(want.get("starttls")), any(e.kind == "smtp_starttls" for e in events))


_FROM = {Direction.TO_SERVER: "client", Direction.TO_CLIENT: "server"}


def _mqtt(t: Tally, where: str, want: dict, events: list, parser) -> None:
    packets = [e for e in events if e.kind.startswith("mqtt_")]
    connect = next((e for e in packets if e.kind == "mqtt_connect"), None)
    t.check(where, "mqtt.protocol_name", want.get("protocol_name"), connect.protocol_name if connect else None)
    t.check(where, "mqtt.protocol_version", want.get("protocol_version"),
            connect.protocol_version if connect else None)
    t.check(where, "mqtt.client_id", want.get("client_id"), connect.client_id if connect else None)
    t.check(where, "mqtt.username", want.get("username"), connect.username if connect else None)
    t.check(where, "mqtt.connack_return_code", want.get("connack_return_code"), getattr(parser, "connack_code", None))
    t.check(where, "mqtt.topics_published", want.get("topics_published"), getattr(parser, "topics_published", None))
    t.check(where, "mqtt.topics_subscribed", want.get("topics_subscribed"),
            getattr(parser, "topics_subscribed", None))
    for i, w in enumerate(want.get("messages", [])):
        g = packets[i] if i < len(packets) else None
        t.check(where, "mqtt.message.type", (w["type"], w["type_name"], w["from"]),
                (g.type, g.type_name, _FROM[g.direction]) if g else None)
        if w["type_name"] == "CONNECT":
            t.check(where, "mqtt.message.connect", (w["protocol_name"], w["protocol_version"], w["client_id"],
                                                    w["username"]),
                    (g.protocol_name, g.protocol_version, g.client_id, g.username) if g else None)
        elif w["type_name"] == "CONNACK":
            t.check(where, "mqtt.message.return_code", w["return_code"], getattr(g, "return_code", None))
        elif w["type_name"] == "PUBLISH":
            t.check(where, "mqtt.message.publish", (w["topics"], w["qos"]),
                    ([g.topic], g.qos) if g and g.kind == "mqtt_publish" else None)
        elif "topics" in w:
            t.check(where, "mqtt.message.topics", w["topics"],
                    [x for x, _ in g.topics] if g and g.kind == "mqtt_subscribe" else None)
    t.check(where, "mqtt.message count", len(want.get("messages", [])), len(packets))


@pytest.fixture(scope="module")
def parsers_tally():
    t = Tally()
    table = l7.compile_signatures(list(registry.default_plugins()))
    for label in LABELS:
        flows = truths(label)
        assert len(flows) >= 3, f"the corpus's {label} flows are missing"
        for pcap, key, truth in flows:
            flow = {unordered(f.key): f for f in read_capture(CORPUS / pcap).flows}[unordered(key)]
            an, events = analyse_flow(flow)
            where = f"{pcap} {key}"
            t.check(where, "app", label, an.app)
            t.check(where, "app (kernel signatures)", label, kernel_app(flow, table))
            offline = {unordered(r.key): r for r in analyze_capture(CORPUS / pcap)}[unordered(key)]
            t.check(where, "app (offline)", label, offline.app)
            t.check(where, "malformed", [], [e for e in events if e.kind == "malformed"])
            want = (truth.get("tshark") or {}).get(label) or {}
            (_smtp if label == "smtp" else _mqtt)(t, where, want, events, an.parser)
    print(t.table("SMTP and MQTT: parsers against the truth"))
    return t


PARSER_FIELDS = ["app", "app (kernel signatures)", "app (offline)", "malformed",
                 "smtp.banner", "smtp.helo", "smtp.command", "smtp.command.parameter", "smtp.command count",
                 "smtp.response.code", "smtp.response.text", "smtp.response count", "smtp.mail_from",
                 "smtp.rcpt_to", "smtp.starttls",
                 "mqtt.protocol_name", "mqtt.protocol_version", "mqtt.client_id", "mqtt.username",
                 "mqtt.connack_return_code", "mqtt.topics_published", "mqtt.topics_subscribed",
                 "mqtt.message.type", "mqtt.message.connect", "mqtt.message.return_code",
                 "mqtt.message.publish", "mqtt.message.topics", "mqtt.message count"]


@pytest.mark.parametrize("field", PARSER_FIELDS)
def test_parsers_agree_with_the_truth(parsers_tally, field):
    ok, n = parsers_tally.counts[field]
    assert n > 0, f"no {field} compared"
    target = IDENT_TARGET if field.startswith("app") else FIELD_TARGET
    assert parsers_tally.rate(field) >= target, "\n".join(parsers_tally.misses[field])


# --- through microseg replay ------------------------------------------------------
@pytest.fixture(scope="module")
def replay_tally(fastpath_build):
    from tests.corpus.replayed import replay_by_flow
    from tests.corpus.test_corpus_replay import truth_flow

    fp = fastpath_build
    t = Tally()
    by_pcap = defaultdict(list)
    for label in LABELS:
        for pcap, key, truth in truths(label):
            by_pcap[pcap].append((key, label, (truth.get("tshark") or {}).get(label) or {}))
    replayed = replay_by_flow(fp, CORPUS, by_pcap, ("flow",) + LABELS)
    for pcap, flows in sorted(by_pcap.items()):
        ours = replayed[pcap]
        for key, label, want in flows:
            where = f"{pcap} {key}"
            mine = ours.get(truth_flow(key), {})
            apps = {r.get("app_proto") for r in mine.get("flow", [])}
            t.check(where, "app_proto", label, apps.pop() if len(apps) == 1 else sorted(apps, key=str))
            if label == "smtp":
                _smtp_eve(t, where, want, [r["smtp"] for r in mine.get("smtp", [])])
            else:
                _mqtt_eve(t, where, want, [r["mqtt"] for r in mine.get("mqtt", [])])
    print(t.table("SMTP and MQTT: microseg replay against the truth"))
    return t


def _address(parameter: str) -> str:
    """"FROM: <a@b>" -> "<a@b>" (tshark keeps the parameter as sent; EVE the path)."""
    return "<" + parameter.split("<", 1)[1].split(">", 1)[0] + ">"


def _smtp_eve(t: Tally, where: str, want: dict, records: list[dict]) -> None:
    """One smtp record per message: in these captures one message a session."""
    t.check(where, "eve smtp records", 1, len(records))
    got = records[0] if records else {}
    t.check(where, "eve smtp.helo", (want.get("helo") or {}).get("domain"), got.get("helo"))
    t.check(where, "eve smtp.mail_from", [_address(p) for p in want.get("mail_from", [])][:1], [got.get("mail_from")])
    t.check(where, "eve smtp.rcpt_to", [_address(p) for p in want.get("rcpt_to", [])], got.get("rcpt_to"))


def _mqtt_eve(t: Tally, where: str, want: dict, records: list[dict]) -> None:
    t.check(where, "eve mqtt records", len(want.get("messages", [])), len(records))
    t.check(where, "eve mqtt types", [m["type_name"].lower() for m in want.get("messages", [])],
            [next(iter(r)) for r in records])
    connect = next((r["connect"] for r in records if "connect" in r), {})
    t.check(where, "eve mqtt.connect", (want.get("client_id"), want.get("protocol_version"), want.get("username")),
            (connect.get("client_id"), connect.get("protocol_version"), connect.get("username")))
    t.check(where, "eve mqtt.publish.topic", [t_ for m in want.get("messages", []) if m["type_name"] == "PUBLISH"
                                              for t_ in m["topics"]],
            [r["publish"].get("topic") for r in records if "publish" in r])
    t.check(where, "eve mqtt.subscribe.topics", [t_ for m in want.get("messages", []) if m["type_name"] == "SUBSCRIBE"
                                                 for t_ in m["topics"]],
            [x["topic"] for r in records if "subscribe" in r for x in r["subscribe"].get("topics", [])])


@pytest.mark.parametrize("field", ["app_proto", "eve smtp records", "eve smtp.helo", "eve smtp.mail_from",
                                   "eve smtp.rcpt_to", "eve mqtt records", "eve mqtt types", "eve mqtt.connect",
                                   "eve mqtt.publish.topic", "eve mqtt.subscribe.topics"])
def test_replay_agrees_with_the_truth(replay_tally, field):
    ok, n = replay_tally.counts[field]
    assert n >= 3, f"only {n} {field} compared: the corpus's SMTP and MQTT flows were not all replayed"
    target = IDENT_TARGET if field == "app_proto" else FIELD_TARGET
    assert replay_tally.rate(field) >= target, "\n".join(replay_tally.misses[field])


def test_no_other_flow_is_called_smtp_or_mqtt():
    """Precision: across the whole corpus, the flows the offline analysis
    names smtp or mqtt are exactly the ones tshark labelled so (FTP also
    greets with 220; any payload may start with a 0x10 byte)."""
    wrong, named = [], 0
    for tf in sorted((CORPUS / "truth").glob("*.json")):
        truth = json.loads(tf.read_text())
        labels = {unordered(k): f["label"] for k, f in truth["flows"].items()}
        for r in analyze_capture(CORPUS / truth["pcap"]):
            label = labels.get(unordered(r.key))
            if r.app in LABELS:
                named += 1
            if (r.app in LABELS or label in LABELS) and r.app != label:
                wrong.append(f"{truth['pcap']} {r.key}: ours {r.app}, truth {label}")
    assert named >= 6 and not wrong, wrong
