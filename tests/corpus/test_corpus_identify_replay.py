"""`microseg replay` of the corpus with a policy that only identifies flows
(`inspect: {what: [dpi]}`): the slow path reads a flow until its protocol
and naming fields are known, then ALLOW hands it to the kernel, which copies
nothing more of it (issue 14 item 2, as nDPI stops after identification).

Measured here, through the real BPF program and engine: no payload record
of a flow reaches the engine after its verdict (replay writes each verdict
before the next frame runs, so none is in flight); the engine gets few
records a flow (1.3 on the corpus; inspecting everything, 10.7); and every
flow is named as the replay that inspects everything names it (EVE flow
records' app_proto). Needs root (BPF_PROG_TEST_RUN) and the corpus.
"""
from __future__ import annotations

import json
from collections import Counter

import pytest

from appliance.daemon import empty_rules
from appliance.replay import replay, replay_config
from tests.corpus.test_corpus_replay import CORPUS, flow_of, pytestmark  # noqa: F401  (the corpus skip)

IDENTIFY = ("defaults: {ingress: allow, egress: allow}\nrules:\n"
            "  - {name: identify, from: any, to: any, proto: any, action: inspect,\n"
            "     inspect: {what: [dpi], mode: async}}\n")
# Payload records the engine may get per flow, on average over the corpus,
# when it only identifies: 1.3 today (most flows are named by their first
# payload; HTTP/2 waits for its first HEADERS behind the preface and
# SETTINGS). Inspecting everything it gets 10.7: a flow no longer let go at
# identification lands far above this.
MAX_RECORDS_PER_FLOW = 2.0


def _replay_all(fp, policy_text):
    out = {}
    for tf in sorted((CORPUS / "truth").glob("*.json")):
        pcap = json.loads(tf.read_text())["pcap"]
        fp.reset()
        fp.apply_runtime(replay_config())
        records: list[dict] = []
        res = replay(CORPUS / pcap, fp, empty_rules(), records.append, policy_text=policy_text)
        out[pcap] = (records, res.engine.counters)
    return out


@pytest.fixture(scope="module")
def both(fastpath_build):
    fp = fastpath_build
    assert (CORPUS / "truth").is_dir(), f"corpus not found at {CORPUS}"
    try:
        return _replay_all(fp, IDENTIFY), _replay_all(fp, None)
    finally:
        fp.reset()
        fp.apply_runtime(fp.config)


def test_no_record_reaches_the_engine_after_a_verdict(both):
    identify, _ = both
    late = {pcap: c.after_verdict for pcap, (_, c) in identify.items() if c.after_verdict}
    assert not late, late


def test_an_identify_only_flow_costs_the_engine_few_records(both):
    identify, everything = both
    recs = sum(c.records for _, c in identify.values())
    flows = sum(c.flows_opened for _, c in identify.values())
    assert flows > 100
    assert recs / flows <= MAX_RECORDS_PER_FLOW, (recs, flows)
    full = sum(c.records for _, c in everything.values())
    assert full > 4 * recs        # the measure can tell: inspecting everything reads on


def test_identify_only_names_every_flow_as_full_inspection_does(both):
    identify, everything = both
    differ, named = [], 0
    for pcap, (records, _) in identify.items():
        ours, full = (Counter((flow_of(r), r.get("app_proto")) for r in recs
                              if r["event_type"] == "flow" and "src_port" in r)
                      for recs in (records, everything[pcap][0]))
        named += sum(n for (_, app), n in ours.items() if app)
        if ours != full:
            differ.append((pcap, sorted((k[0][0], sorted(k[0][1]), k[1]) for k in ours - full),
                           sorted((k[0][0], sorted(k[0][1]), k[1]) for k in full - ours)))
    assert named > 100
    assert not differ, differ
