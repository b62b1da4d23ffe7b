"""Every EVE record of every capture of the corpus passes Suricata's own schema.

Each capture in ../shared/corpus/pcaps goes through the real BPF program
(BPF_PROG_TEST_RUN) and the slow path's engine (appliance/replay.replay, as
`microseg replay` runs it), with rules that make the engine write every kind
of record it has: alerts on HTTP, TLS and DNS flows (with their context),
blocks (verdict drop), anomalies, and the http, tls, dns, ssh and flow
records. Every record, serialised as the sinks write it, is validated
strictly (Draft 2020-12) against Suricata 8.0.6's etc/schema.json (an
unknown field anywhere fails it) and against the project's overlay
(slowpath/eve_schema.json).

Measured when this test was written: 123 of 333 records passed Suricata's
schema with no rules and 109 of 454 with these rules (flow records: the
top-level ``microseg`` object; DNS requests: no ``version``; alerts: the
``microseg`` object); after: all of them.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from appliance.replay import replay, replay_config
from slowpath.eve import encode
from slowpath.rulesfile import load_rules_text
from tests.eve_schemas import require_suricata, schema_errors

PCAPS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "pcaps"
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(not CI and not PCAPS.is_dir(), reason=f"corpus not found at {PCAPS}")

# Rules that fire on the corpus's traffic: every HTTP request (a path, and a
# blocking header signature), names under common TLDs in Host, SNI and DNS
# questions, the built-in WAF sets and the DLP detectors.
RULES = """
waf:
  sets: {sqli: alert, xss: alert, traversal: alert, cmdi: alert}
  signatures:
    - {id: 900001, name: any path, pattern: "^/", fields: [uri], action: alert}
    - {id: 900003, name: any header, pattern: ".", fields: [headers], action: block, category: recon}
dlp:
  - {name: anything, detectors: [credit_card, us_ssn, aws_access_key, pem_private_key], action: alert}
domains:
  - name: common tlds
    id: 900100
    match: ["*.com", "*.org", "*.net", "*.io", "*.arpa", "*.de"]
    fields: [http_host, tls_sni, dns_query]
    action: alert
"""
# Event types the replay must produce for the check to mean something.
EXPECTED_TYPES = {"alert", "flow", "http", "tls", "dns", "ssh", "anomaly"}


@pytest.fixture(scope="module")
def replayed(fastpath_build):
    fp = fastpath_build
    rules = load_rules_text(RULES, "<schema test rules>")
    out = {}
    assert PCAPS.is_dir(), f"corpus not found at {PCAPS}"
    try:
        for pcap in sorted(p for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng")):
            fp.reset()
            fp.apply_runtime(replay_config())
            records: list[dict] = []
            replay(pcap, fp, rules, records.append)
            # As the sinks write them: one line of JSON each, read back.
            out[pcap.name] = [json.loads(encode(r)) for r in records]
    finally:
        fp.reset()
        fp.apply_runtime(fp.config)
    return out


def test_every_replayed_record_passes_suricatas_schema(replayed):
    require_suricata()
    failures, n, kinds = [], 0, Counter()
    for pcap, records in replayed.items():
        for r in records:
            n += 1
            kinds[r["event_type"]] += 1
            errors = schema_errors(r)
            if errors:
                failures.append(f"{pcap}: {r['event_type']}: {errors[0]}")
    print(f"\n{n - len(failures)} of {n} records valid; by type: {dict(sorted(kinds.items()))}")
    assert not failures, f"{len(failures)} of {n} records fail:\n" + "\n".join(failures[:20])
    assert n > 400, f"only {n} records: the replay did not run"
    assert EXPECTED_TYPES <= set(kinds), f"missing event types: {EXPECTED_TYPES - set(kinds)}"


def test_alerts_carry_their_context(replayed):
    """As Suricata's: the flow object, app_proto, the verdict, and the
    transaction's app-layer object when the flow has one."""
    alerts = [r for records in replayed.values() for r in records if r["event_type"] == "alert"]
    assert len(alerts) > 50
    by_proto = Counter()
    for a in alerts:
        assert {"flow", "verdict", "app_proto"} <= set(a), a
        assert a["flow"]["src_ip"] == a["src_ip"] and "pkts_toserver" in a["flow"], a
        if a["app_proto"] in ("http", "tls", "dns"):
            assert a["app_proto"] in a, a
            by_proto[a["app_proto"]] += 1
    assert set(by_proto) == {"http", "tls", "dns"}, by_proto
    assert any(a["verdict"]["action"] == "drop" for a in alerts)
