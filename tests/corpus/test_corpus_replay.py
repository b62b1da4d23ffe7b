"""`microseg replay` against the corpus: every capture through the real BPF
program (BPF_PROG_TEST_RUN) and the slow path's engine, the EVE records it
writes compared with the tshark truth. The requirement is the parsers'
own: 99 % per HTTP / TLS / DNS field (tests/corpus/test_corpus_protocols.py
measures the parsers alone; this measures the whole pipeline: kernel
parsing and session tracking, the handoff, reassembly from ring-buffer
records, verdicts, EVE).

Frames BPF_PROG_TEST_RUN cannot take (offloaded super-packets larger than a
page in a capture) are not run; the flows that lose bytes to them are
listed in truth_exceptions.yaml with that reason.
"""
from __future__ import annotations

import ipaddress
import json
import os
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from appliance.daemon import empty_rules
from slowpath.eve import encode
from tests.eve_schemas import schema_errors
from appliance.replay import replay, replay_config

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
EXCEPTIONS = Path(__file__).with_name("truth_exceptions.yaml")
# The requirements, as in test_corpus_protocols.py (and the README): 99 %
# per HTTP / TLS / DNS field, 95 % for the application protocol of the
# flows labelled with one of the protocols we parse.
TARGET = 0.99
IDENT_TARGET = 0.95
OURS = {"http", "tls", "dns", "ssh", "mysql", "redis", "http2", "grpc", "quic", "smtp", "postgresql",
        "kafka", "mongodb", "mqtt"}

# As in test_corpus_protocols.py: skipped without the corpus, except under
# CI (CI=true), where a missing corpus fails.
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(not CI and not (CORPUS / "truth").is_dir(),
                                reason=f"corpus not found at {CORPUS}")


def endpoint(ip: str, port) -> str:
    ip = str(ipaddress.ip_address(ip))
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def flow_of(rec: dict) -> tuple:
    return (rec["proto"].lower(), frozenset((endpoint(rec["src_ip"], rec["src_port"]),
                                             endpoint(rec["dest_ip"], rec["dest_port"]))))


def truth_flow(key: str) -> tuple:
    proto, a, _, b = key.split()
    return proto, frozenset((a, b))


@pytest.fixture(scope="module")
def replayed(fastpath_build):
    fp = fastpath_build
    rules = empty_rules()
    out = {}
    assert (CORPUS / "truth").is_dir(), f"corpus not found at {CORPUS}"
    try:
        for tf in sorted((CORPUS / "truth").glob("*.json")):
            truth = json.loads(tf.read_text())
            fp.reset()
            fp.apply_runtime(replay_config())
            records: list[dict] = []
            res = replay(CORPUS / truth["pcap"], fp, rules, records.append)
            out[truth["pcap"]] = (truth, records, res)
    finally:
        fp.reset()
        fp.apply_runtime(fp.config)
    return out


class Tally:
    def __init__(self):
        self.counts = defaultdict(lambda: [0, 0])
        self.misses = defaultdict(list)
        ex = yaml.safe_load(EXCEPTIONS.read_text()) or []
        self.excused = {(e["pcap"], e["flow"], e["field"]) for e in ex}

    def check(self, pcap, flow, field, want, got):
        if (pcap, flow, field) in self.excused or (pcap, flow, "replay:*") in self.excused:
            return
        c = self.counts[field]
        c[1] += 1
        c[0] += want == got
        if want != got:
            self.misses[field].append(f"{pcap} {flow}: truth {want!r}, replay {got!r}")


def host_port(http: dict) -> str | None:
    """The Host/:authority as sent, from EVE's hostname and http_port."""
    host = http.get("hostname")
    if host is not None and http.get("http_port") is not None:
        host = f"{host}:{http['http_port']}"
    return host


def compare_http2(t: Tally, pcap: str, key: str, ts: dict, records: list) -> None:
    """HTTP/2 streams and gRPC calls in the EVE http records (http.http2.stream_id;
    a call's service, method and status in metadata), as the parsers' test
    compares the events. An h2c upgrade's stream 1 request is the HTTP/1
    request, logged with its 101."""
    by_sid = {r["http"]["http2"]["stream_id"]: r for r in records if "http2" in r["http"]}
    upgrade = next((r["http"] for r in records if r["http"].get("status") == 101), {})
    for s in (ts.get("http2") or {}).get("streams", []):
        g = by_sid.get(s["stream_id"], {}).get("http", {})
        w = s.get("request")
        if w:
            src = upgrade if w.get("via_http1_upgrade") else g
            for fld, eve_name in (("method", "http_method"), ("path", "url"), ("user_agent", "http_user_agent")):
                t.check(pcap, key, f"http2.{fld}", w.get(fld), src.get(eve_name))
            t.check(pcap, key, "http2.authority", w.get("authority"), host_port(src))
        if s.get("response"):
            t.check(pcap, key, "http2.status", s["response"].get("status"), g.get("status"))
    for w in (ts.get("grpc") or {}).get("calls", []):
        md = by_sid.get(w["stream_id"], {}).get("metadata", {})
        flowvars = {k: v for item in md.get("flowvars", []) for k, v in item.items()}
        t.check(pcap, key, "grpc.service", w.get("service"), flowvars.get("grpc_service"))
        t.check(pcap, key, "grpc.method", w.get("method"), flowvars.get("grpc_method"))
        t.check(pcap, key, "grpc.grpc_status", w.get("grpc_status"), md.get("flowints", {}).get("grpc_status"))


@pytest.fixture(scope="module")
def tally(replayed):
    t = Tally()
    for pcap, (truth, records, _) in replayed.items():
        by_flow = defaultdict(lambda: defaultdict(list))
        for r in records:
            if "src_port" in r:
                by_flow[flow_of(r)][r["event_type"]].append(r)
        for key, f in truth["flows"].items():
            ours = by_flow.get(truth_flow(key), {})
            ts = f.get("tshark") or {}
            if f["label"] in OURS:
                # The EVE flow record's app_proto (Suricata's field), as the
                # parsers' test checks the analyzer's: a flow seen only
                # mid-stream must be named at its close too.
                got = {r.get("app_proto") for r in ours.get("flow", [])}
                t.check(pcap, key, "app_proto", f["label"], got.pop() if len(got) == 1 else sorted(got, key=str))
            http = [r["http"] for r in ours.get("http", []) if "http2" not in r["http"]]
            compare_http2(t, pcap, key, ts, ours.get("http", []))
            for i, w in enumerate((ts.get("http") or {}).get("requests", [])):
                g = http[i] if i < len(http) else {}
                for fld, eve_name in (("method", "http_method"), ("uri", "url"),
                                      ("user_agent", "http_user_agent")):
                    t.check(pcap, key, f"http.{fld}", w.get(fld), g.get(eve_name))
                # EVE splits the Host header into hostname and http_port, as Suricata does
                host = g.get("hostname")
                if host is not None and g.get("http_port") is not None:
                    host = f"{host}:{g['http_port']}"
                t.check(pcap, key, "http.host", w.get("host"), host)
            finals = [r.get("status") for r in http if r.get("status") is not None]
            want_status = [w["code"] for w in (ts.get("http") or {}).get("responses", []) if w["code"] >= 200]
            for i, w in enumerate(want_status):
                t.check(pcap, key, "http.status", w, finals[i] if i < len(finals) else None)
            tls = [r["tls"] for r in ours.get("tls", [])]
            for i, w in enumerate((ts.get("tls") or {}).get("client_hellos", [])):
                g = tls[i] if i < len(tls) else {}
                t.check(pcap, key, "tls.sni", w.get("sni"), g.get("sni"))
                if w.get("ja3"):
                    t.check(pcap, key, "tls.ja3", w["ja3"], (g.get("ja3") or {}).get("hash"))
                t.check(pcap, key, "tls.alpn", list(w.get("alpn") or []), list(g.get("client_alpns") or []))
            sh = [g for g in tls if g.get("ja3s")]
            for i, w in enumerate((ts.get("tls") or {}).get("server_hellos", [])):
                if w.get("ja3s"):
                    g = sh[i] if i < len(sh) else {}
                    t.check(pcap, key, "tls.ja3s", w["ja3s"], (g.get("ja3s") or {}).get("hash"))
            dns = [r["dns"] for r in ours.get("dns", [])]
            # EVE DNS v3: a record per message, its questions in "queries"
            queries = [(d["id"], q["rrname"], q["rrtype"]) for d in dns if d["type"] == "request"
                       for q in d.get("queries", ())]
            answers = [(d["id"], d["rcode"]) for d in dns if d["type"] == "response"]
            want_q, want_a = [], []
            for m in (ts.get("dns") or {}).get("messages", []):
                if m["response"]:
                    want_a.append((int(m["id"], 16), m.get("rcode_name")))
                else:
                    want_q += [(int(m["id"], 16), q["name"], q["type_name"]) for q in m.get("queries", [])]
            for i, w in enumerate(want_q):
                t.check(pcap, key, "dns.query", w, queries[i] if i < len(queries) else None)
            for i, w in enumerate(want_a):
                t.check(pcap, key, "dns.answer", w, answers[i] if i < len(answers) else None)
    rows = "\n".join(f"| {f} | {ok} | {n} | {100 * ok / n:.1f} % |" for f, (ok, n) in sorted(t.counts.items()))
    print("\nreplay agreement per field\n| field | agree | of | rate |\n|---|---|---|---|\n" + rows)
    return t


FIELDS = ["http.method", "http.uri", "http.host", "http.user_agent", "http.status", "tls.sni", "tls.ja3",
          "tls.alpn", "tls.ja3s", "dns.query", "dns.answer", "http2.method", "http2.path", "http2.authority",
          "http2.user_agent", "http2.status", "grpc.service", "grpc.method", "grpc.grpc_status"]


@pytest.mark.parametrize("field", FIELDS)
def test_replay_agrees_with_the_truth(tally, field):
    assert tally.counts[field][1] > 0, f"no {field} compared"
    ok, n = tally.counts[field]
    assert ok / n >= TARGET, "\n".join(tally.misses[field][:20])


def test_replay_names_the_application_protocol(tally):
    ok, n = tally.counts["app_proto"]
    assert n >= 100, "too few flows compared: the corpus check is not running"
    assert ok / n >= IDENT_TARGET, "\n".join(tally.misses["app_proto"])


def test_every_record_validates_against_the_schema(replayed):
    """Suricata's own schema, strictly, and the project's overlay
    (tests/corpus/test_corpus_eve_schema.py does the same with alerting rules)."""
    n = 0
    for pcap, (_, records, _) in replayed.items():
        for r in records:
            errors = schema_errors(json.loads(encode(r)))
            assert not errors, f"{pcap}: {r}: {errors}"
            n += 1
    assert n > 250


def test_the_kernel_ran_the_captures(replayed):
    """Every capture's frames went through the program: inspected flows were
    handed off, and nothing was dropped by policy (the replay policy inspects
    everything and drops nothing)."""
    for pcap, (_, records, res) in replayed.items():
        assert res.frames > 0 and res.records > 0, pcap
        assert not [r for r in res.reasons if r.startswith("DROP_POLICY")], (pcap, res.reasons)
