"""MongoDB against the corpus truth (../shared/corpus, "Second wave"): every
flow tshark decoded as MongoDB (truth `tshark.mongodb`), through the parsers
alone (slowpath/pcap.py -> slowpath/analyzer.py, and slowpath/offline.py
analyze_capture) and through `microseg replay` (the real BPF program and the
engine; the EVE flow record).

Compared per request: opcode, opcode name, request id, command, database,
collection, full collection name (legacy opcodes); per response: opcode,
responseTo, ok, errmsg; and the protocol (the analyzer's, the kernel
signatures' model, the offline analysis', the EVE flow record's
app_proto). Requirements as for the other protocols: 99 % per field, 95 %
protocol identity. Suricata has no MongoDB log, so through replay only
app_proto is there to compare (README, protocol table).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

from datapath import l7
from protocols import registry
from slowpath.analyzer import analyse_flow
from slowpath.offline import analyze_capture
from slowpath.pcap import read_capture
from tests.corpus.test_corpus_protocols import kernel_app, unordered
from tests.corpus.test_corpus_quic import Tally

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
FIELD_TARGET = 0.99
IDENT_TARGET = 0.95

CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(not CI and not (CORPUS / "truth").is_dir(),
                                reason=f"corpus not found at {CORPUS}")

REQUEST_FIELDS = ("opcode", "opcode_name", "request_id", "command", "database", "collection",
                  "full_collection_name")
RESPONSE_FIELDS = ("opcode", "response_to", "ok", "errmsg")


def mongodb_truths() -> list[tuple[str, str, dict]]:
    """(pcap, flow key, truth flow) for every flow with tshark MongoDB facts."""
    out = []
    for tf in sorted((CORPUS / "truth").glob("*.json")):
        truth = json.loads(tf.read_text())
        for key, flow in truth["flows"].items():
            if (flow.get("tshark") or {}).get("mongodb") or flow["label"] == "mongodb":
                out.append((truth["pcap"], key, flow))
    return out


@pytest.fixture(scope="module")
def parsers_tally():
    t = Tally()
    table = l7.compile_signatures(list(registry.default_plugins()))
    truths = mongodb_truths()
    assert len(truths) >= 6, "the corpus's MongoDB flows are missing"
    offline_by_pcap: dict[str, dict] = {}
    for pcap, key, truth in truths:
        flows = {unordered(f.key): f for f in read_capture(CORPUS / pcap).flows}
        flow = flows[unordered(key)]
        an, events = analyse_flow(flow)
        where = f"{pcap} {key}"
        t.check(where, "app", "mongodb", an.app)
        t.check(where, "app (kernel signatures)", "mongodb", kernel_app(flow, table))
        if pcap not in offline_by_pcap:
            offline_by_pcap[pcap] = {unordered(r.key): r for r in analyze_capture(CORPUS / pcap)}
        t.check(where, "app (offline)", "mongodb", offline_by_pcap[pcap][unordered(key)].app)
        t.check(where, "no malformed", [], [e for e in events if e.kind == "malformed"])
        m = truth["tshark"]["mongodb"]
        requests = [e for e in events if e.kind == "mongodb_request"]
        responses = [e for e in events if e.kind == "mongodb_response"]
        t.check(where, "requests", len(m["requests"]), len(requests))
        t.check(where, "responses", len(m["responses"]), len(responses))
        for i, w in enumerate(m["requests"]):
            g = requests[i] if i < len(requests) else None
            for f in REQUEST_FIELDS:
                if f in w:
                    t.check(f"{where} frame {w['frame']}", f"request.{f}", w[f], getattr(g, f, "<missing>"))
        for i, w in enumerate(m["responses"]):
            g = responses[i] if i < len(responses) else None
            for f in RESPONSE_FIELDS:
                t.check(f"{where} frame {w['frame']}", f"response.{f}", w.get(f), getattr(g, f, "<missing>"))
    print(t.table("MongoDB: parsers against the truth"))
    return t


PARSER_FIELDS = ["app", "app (kernel signatures)", "app (offline)", "no malformed", "requests", "responses",
                 *(f"request.{f}" for f in REQUEST_FIELDS), *(f"response.{f}" for f in RESPONSE_FIELDS)]


@pytest.mark.parametrize("field", PARSER_FIELDS)
def test_parsers_agree_with_the_truth(parsers_tally, field):
    ok, n = parsers_tally.counts[field]
    assert n > 0, f"no {field} compared"
    target = IDENT_TARGET if field.startswith("app") else FIELD_TARGET
    assert parsers_tally.rate(field) >= target, "\n".join(parsers_tally.misses[field])


def test_no_other_corpus_flow_is_called_mongodb():
    """Precision: the probe and the kernel signatures claim no flow the truth
    labels otherwise (the signatures are 8 fixed bytes, the probe a header
    shape: both could misfire on binary protocols)."""
    table = l7.compile_signatures(list(registry.default_plugins()))
    wrong, seen = [], 0
    for tf in sorted((CORPUS / "truth").glob("*.json")):
        truth = json.loads(tf.read_text())
        labels = {unordered(k): f["label"] for k, f in truth["flows"].items()}
        for flow in read_capture(CORPUS / truth["pcap"]).flows:
            label = labels.get(unordered(flow.key))
            if label is None or label == "mongodb":
                continue
            seen += 1
            an, _ = analyse_flow(flow)
            kernel = kernel_app(flow, table)
            if "mongodb" in (an.app, kernel):
                wrong.append(f"{truth['pcap']} {flow.key}: truth {label}, analyzer {an.app}, kernel {kernel}")
    assert seen > 150
    assert not wrong, "\n".join(wrong)


# --- through microseg replay ------------------------------------------------------
@pytest.fixture(scope="module")
def replay_tally(fastpath_build):
    from appliance.daemon import empty_rules
    from appliance.replay import replay, replay_config
    from tests.corpus.test_corpus_replay import flow_of, truth_flow
    from tests.eve_schemas import schema_errors

    fp = fastpath_build
    t = Tally()
    by_pcap = defaultdict(list)
    for pcap, key, truth in mongodb_truths():
        by_pcap[pcap].append((key, truth))
    try:
        for pcap, flows in sorted(by_pcap.items()):
            fp.reset()
            fp.apply_runtime(replay_config())
            records: list[dict] = []
            replay(CORPUS / pcap, fp, empty_rules(), records.append)
            ours = defaultdict(list)
            for r in records:
                if r["event_type"] == "flow":
                    errors = schema_errors(r)
                    assert not errors, (pcap, r, errors)
                    ours[flow_of(r)].append(r)
            for key, _truth in flows:
                apps = {r.get("app_proto") for r in ours.get(truth_flow(key), [])}
                t.check(f"{pcap} {key}", "app_proto", "mongodb",
                        apps.pop() if len(apps) == 1 else sorted(apps, key=str))
    finally:
        fp.reset()
        fp.apply_runtime(fp.config)
    print(t.table("MongoDB: microseg replay against the truth"))
    return t


def test_replay_agrees_with_the_truth(replay_tally):
    ok, n = replay_tally.counts["app_proto"]
    assert n >= 6
    assert replay_tally.rate("app_proto") >= IDENT_TARGET, "\n".join(replay_tally.misses["app_proto"])
