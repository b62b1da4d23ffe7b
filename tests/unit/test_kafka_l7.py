"""Kafka allow-lists (a rule's `l7: kafka:`, as Cilium's Kafka policy: role
or api key, api version, client id, topic): the matcher on parser events
(slowpath/l7allow.py), the policy file's checks with their lines and
`policy explain` (datapath/policy_check.py, appliance/commands/policy.py),
and the block through the parser: a request outside the list gives one
block hit naming the rule and what did not match."""
from __future__ import annotations

import json
import types

import pytest

from appliance import policyfile as pf
from datapath.enums import INSPECT
from protocols.api import Direction
from protocols.kafka import KafkaParser, KafkaRequest
from slowpath.l7allow import L7_IDS, RuleAllow
from tests.unit.test_kafka import metadata_body, produce_body, request

C = Direction.TO_SERVER


def kreq(api_key=0, api_name="Produce", v=9, client="app", topics=("orders",), complete=True):
    return KafkaRequest(C, api_key, api_name, v, 1, client, tuple(topics), None, complete, 100)


LIST = {"kafka": [{"api_key": "produce", "topic": "orders", "client_id": "app"},
                  {"role": "consume", "topic": "events"},
                  {"api_key": 3, "api_version": 12}]}


def check(ev, spec=LIST):
    return RuleAllow(1, "bus", spec).check_kafka(ev)


def test_api_client_and_topic_must_be_allowed():
    assert check(kreq()) is None
    assert check(kreq(client="other")) == ("l7.kafka", "Kafka Produce v9 from client 'other' not allowed")
    assert check(kreq(topics=("payroll",))) == ("l7.kafka", "Kafka Produce v9 from client 'app' for topic "
                                                            "payroll not allowed")
    # every topic of a request needs an entry
    assert check(kreq(topics=("orders", "payroll")))[1].endswith("for topic payroll not allowed")
    # an api the list does not name
    assert check(kreq(19, "CreateTopics", 7, topics=()))[0] == "l7.kafka"


def test_role_stands_for_cilium_api_sets():
    fetch = kreq(1, "Fetch", 12, client="anyone", topics=("events",))
    assert check(fetch) is None
    assert check(kreq(1, "Fetch", 12, topics=("orders",))) is not None      # orders: produce only
    assert check(kreq(9, "OffsetFetch", 8, topics=("events",))) is None
    assert check(kreq(11, "JoinGroup", 6, topics=())) is None               # no topics to check
    assert check(kreq(0, "Produce", 9, client="x", topics=("events",))) is not None   # consume: no Produce


def test_api_version_and_requests_without_all_topics():
    # Metadata v12 (entry without topic: every topic); v11 not allowed
    assert check(kreq(3, "Metadata", 12, topics=())) is None
    assert check(kreq(3, "Metadata", 11, client="c", topics=("events",))) is None     # consume's Metadata
    assert check(kreq(3, "Metadata", 11, client="c", topics=())) == (
        "l7.kafka", "Kafka Metadata v11 from client 'c' for every topic not allowed")
    # topics not all read (a cut frame): only an entry without a topic passes it
    cut = kreq(topics=("orders",), complete=False)
    assert check(cut) == ("l7.kafka", "Kafka Produce v9 from client 'app' for topics not all read not allowed")
    assert check(cut, {"kafka": [{"api_key": "Produce"}]}) is None


def test_inspector_blocks_through_the_parser_with_a_named_hit():
    class Inner:
        def feed(self, ev):
            return []

    insp = RuleAllow(4, "bus", LIST).inspector(Inner())
    p = KafkaParser()
    ok = p.receive_data(request(0, 9, 1, "app", produce_body(9, ["orders"])), C)
    assert [insp.feed(ev) for ev in ok] == [[]]
    # a response, and the other kafka events, are not requests: they pass
    assert insp.feed(types.SimpleNamespace(kind="kafka_response", direction=Direction.TO_CLIENT)) == []
    bad = p.receive_data(request(0, 9, 2, "app", produce_body(9, ["orders", "payroll"])), C)
    (hit,) = insp.feed(bad[0])
    assert hit.action == "block" and hit.rule_id == L7_IDS["l7.kafka"] and hit.field == "l7.kafka"
    assert hit.rule_name == "l7 allow-list of rule bus: Kafka Produce v9 from client 'app' for topic payroll not allowed"
    assert hit.matched == "Produce orders,payroll"
    assert insp.feed(bad[0]) == []                                 # blocked once
    # another protocol on a kafka list
    (hit,) = RuleAllow(4, "bus", LIST).inspector(Inner()).feed(
        types.SimpleNamespace(kind="http_request", direction=C))
    assert hit.field == "l7.protocol" and hit.rule_name.endswith("http not allowed (the list names kafka)")
    # a kafka request on a list without kafka
    (hit,) = RuleAllow(5, "web", {"http": [{"path": "/"}]}).inspector(Inner()).feed(ok[0])
    assert hit.field == "l7.protocol" and "kafka not allowed" in hit.rule_name


def test_flood_of_topics_is_not_all_read():
    """More topics than the parser keeps: the list cannot see them all."""
    p = KafkaParser()
    names = [f"t{i}" for i in range(70)]
    ev, = p.receive_data(request(3, 4, 1, "c", metadata_body(4, names)), C)
    assert len(ev.topics) == 64 and not ev.topics_complete
    assert check(ev, {"kafka": [{"topic": t} for t in names]})[1].endswith("topics not all read not allowed")


POLICY = """\
groups:
  apps: [10.0.0.0/24]
  kafka: [10.0.3.0/24]
rules:
  - name: bus
    from: apps
    to: kafka
    proto: tcp
    ports: [9092]
    action: allow
    l7:
      kafka:
        - {api_key: produce, topic: orders, client_id: app}
        - {role: consume, topic: events}
        - {api_key: Metadata, api_version: 12}
"""
BAD = [
    (("api_key: produce, topic", "api_key: produz, topic"), 13, "l7.kafka[1].api_key: 'produz'"),
    (("topic: orders", "topic: 'or ders'"), 13, "l7.kafka[1].topic: 'or ders'"),
    (("{role: consume, topic: events}", "{role: consume, api_key: 1}"), 14, "role and api_key together"),
    (("api_version: 12", "api_version: 99"), 15, "l7.kafka[3].api_version: 99"),
    (("{api_key: Metadata, api_version: 12}", "{client_id: ''}"), 15, "client_id: empty"),
    (("{api_key: Metadata, api_version: 12}", "{}"), 15, "it would allow every request"),
    (("proto: tcp", "proto: udp"), 12, "l7.kafka: needs proto tcp"),
    (("{role: consume, topic: events}", "{role: admin}"), 14, "l7.kafka[2].role: 'admin'"),
]


def write(tmp_path, text, name="p.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return f


def test_policy_file_compiles_a_kafka_list(tmp_path):
    model, pol, _ = pf.compile_file(write(tmp_path, POLICY))
    rule = model.rules[0]
    assert rule.l7.protocols() == ("kafka",) and rule.verdict(1).inspect & INSPECT["HOLD_ALL"]
    assert "l7 kafka[3]" in pol.rule_info[1].text
    from slowpath.l7allow import compile_lists
    allow = compile_lists(model).get(1)
    assert allow.check_kafka(kreq()) is None and allow.check_kafka(kreq(client="x")) is not None


def test_policy_check_errors_name_file_line_and_field(microseg, tmp_path):
    assert microseg("policy", "check", write(tmp_path, POLICY)).returncode == 0
    for (old, new), line, words in BAD:
        assert old in POLICY, old
        f = write(tmp_path, POLICY.replace(old, new, 1))
        r = microseg("policy", "check", f)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (new, r.stderr)
        got = [ln for ln in r.stderr.splitlines() if words in ln]
        assert got and got[0].startswith(f"{f}:{line}: "), (new, r.stderr, line)


def test_explain_shows_a_kafka_list(microseg, tmp_path):
    f = write(tmp_path, POLICY)
    out = microseg("policy", "explain", "10.0.0.5", "10.0.3.5", "tcp", "9092", "--file", f, check=True).stdout
    assert "l7 allow:    kafka: api produce, any version, client app, topic orders (line 13)" in out
    assert "kafka: role consume, any version, any client, topic events (line 14)" in out
    e = json.loads(microseg("policy", "explain", "10.0.0.5", "10.0.3.5", "tcp", "9092", "--file", f, "--json",
                            check=True).stdout)
    assert [x["entry"] for x in e["l7"]["kafka"]][2] == {"api_key": "Metadata", "api_version": 12}


@pytest.mark.parametrize("name,key", [("Produce", 0), ("fetch", 1), ("OFFSETCOMMIT", 8), (3, 3),
                                      ("nope", None), (999, None), (True, None)])
def test_api_key_of(name, key):
    from protocols.kafka import api_key_of
    assert api_key_of(name) == key


# --- through the engine (as tests/unit/test_engine_l7.py does for HTTP) ---------------
def test_engine_hold_all_each_request_checked_the_disallowed_one_never_goes_on():
    """A hold rule with a kafka list (the kernel holds the client's side for
    the connection's life): an allowed Produce goes on once read, its
    response passes, a later Produce to a topic outside the list is never
    sent on and both ends are reset at its first byte; the alert names the
    rule and what did not match."""
    from datapath.enums import VerdictCode as V
    from slowpath.l7allow import L7Policy
    from tests.unit.test_engine import DPI, HOLD, Harness, rec
    from tests.unit.test_kafka import produce_response_body, response

    h = Harness("{}\n", l7=L7Policy.from_spec({"7": {"label": "bus", "l7": LIST}}))
    seq = {0: 1001, 1: 5001}

    def send(side, data):
        at = seq[side]
        h.engine.handle(rec(data, side=side, seq=at, ack=seq[1 - side], inspect=DPI | HOLD | INSPECT["HOLD_ALL"]))
        seq[side] += len(data)
        return at

    first = send(0, request(0, 9, 1, "app", produce_body(9, ["orders"])))
    send(1, response(0, 9, 1, produce_response_body(9, ["orders"])))
    assert [(s, q) for s, q, _ in h.resets.injected] == [(0, first)]
    bad = send(0, request(0, 9, 2, "app", produce_body(9, ["payroll"])))
    assert h.codes() == [V.VERDICT_RELEASE, V.VERDICT_BLOCK]
    assert len(h.resets.injected) == 1                   # the Produce to payroll never went on
    (_, _, held_from, _), = h.resets.held
    assert held_from == [bad, None]
    h.kinds()                                             # every record valid against both schemas
    (a,) = [r for r in h.eve if r["event_type"] == "alert"]
    assert a["alert"]["signature"] == ("l7 allow-list of rule bus: Kafka Produce v9 from client 'app' "
                                       "for topic payroll not allowed")
    assert a["alert"]["metadata"]["field"] == ["l7.kafka"] and a["alert"]["category"] == "l7-policy"
    assert [r["metadata"]["flowvars"][0] for r in h.eve if r["event_type"] == "kafka"] == [
        {"kafka_message": "request"}, {"kafka_message": "response"}, {"kafka_message": "request"}]


def test_engine_async_a_disallowed_client_is_reset():
    from datapath.enums import VerdictCode as V
    from slowpath.l7allow import L7Policy
    from tests.unit.test_engine import DPI, Harness, rec

    h = Harness("{}\n", l7=L7Policy.from_spec({"7": {"label": "bus", "l7": LIST}}))
    h.engine.handle(rec(request(0, 9, 1, "intruder", produce_body(9, ["orders"])), inspect=DPI))
    assert h.codes() == [V.VERDICT_BLOCK] and len(h.resets.calls) == 1


def test_a_large_produce_to_an_allowed_topic_passes():
    """A Produce larger than the parser's kept head (its records cut, its
    only topic read) is allowed by a topic entry; before, such a
    request was 'topics not all read' and blocked."""
    from protocols.kafka import FRAME_HEAD_BYTES
    p = KafkaParser()
    data = request(0, 9, 1, "app", produce_body(9, ["orders"], blob=b"r" * (FRAME_HEAD_BYTES + 1000)))
    evs = []
    for i in range(0, len(data), 1448):
        evs += p.receive_data(data[i:i + 1448], C)
    (ev,) = evs
    assert ev.topics == ("orders",) and check(ev) is None
