"""The parsers against real traffic: every capture of ../shared/corpus
through the pcap reader, TCP reassembly, protocol detection and the parsers
(slowpath/pcap.py -> slowpath/analyzer.py), compared with the truth that
tshark and nDPI made (truth/<pcap>.json; never edited here).

Agreement is counted per field and printed as a table (run with -s to see
it). Requirements: 99 % for the HTTP, TLS and DNS fields, 95 % for the
application protocol of the flows labelled with one of ours. Where the
truth itself is wrong, the case is listed with its reason in
truth_exceptions.yaml next to this file and left out of the count.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from datapath import l7
from protocols import registry
from protocols.api import Direction
from slowpath.analyzer import FlowAnalyzer, analyse_flow
from slowpath.pcap import Datagram, read_capture
from slowpath.reassembly import Data

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus"
EXCEPTIONS = Path(__file__).with_name("truth_exceptions.yaml")
OURS = {"http", "tls", "dns", "ssh", "mysql", "redis", "http2", "grpc", "quic", "smtp", "postgresql",
        "kafka", "mongodb", "mqtt"}
# The protocols the kernel's signature stage can name: those whose plugin
# gives it signatures (Kafka has none, README: nothing fixed in a frame's
# first bytes; the slow path's probe names it).
KERNEL_SIGNED = {p.name for p in registry.default_plugins() if p.signatures}
# What the kernel can tell from a first payload: gRPC is HTTP/2 to it (the
# content-type that makes a stream gRPC is in an HPACK block, user space's job),
# and an h2c upgrade starts as HTTP/1 (the 101 and the preface come later).
KERNEL_LABEL = {"grpc": "http2"}


def kernel_label(flow: dict) -> str:
    h2 = (flow.get("tshark") or {}).get("http2") or {}
    if h2.get("start") == "h2c-upgrade":
        return "http"
    return KERNEL_LABEL.get(flow["label"], flow["label"])
FIELD_TARGET = 0.99
IDENT_TARGET = 0.95

# Without the corpus these tests skip on a developer's machine, but under CI
# (CI=true, as CI services set it) a missing corpus fails the run: a green
# CI must mean the corpus was checked.
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(not CI and not (CORPUS / "truth").is_dir(),
                                reason=f"corpus not found at {CORPUS}")


def test_corpus_is_present():
    assert (CORPUS / "truth").is_dir() and any((CORPUS / "truth").glob("*.json")), \
        f"corpus not found at {CORPUS}"


def kernel_app(flow, table) -> str | None:
    """What the kernel's L7 stage would say (datapath/l7.py's model of it,
    tests/datapath/test_l7_kernel.py checks the two agree): the first
    payload of each side, the initiator's first."""
    names = {i: n for n, i in table.ids.items()}
    firsts = {}
    for ev in flow.events:
        payload = ev.data if isinstance(ev, Data) else ev.payload if isinstance(ev, Datagram) else None
        if payload and ev.direction not in firsts:
            firsts[ev.direction] = payload
    l4 = 6 if flow.proto == "tcp" else 17
    for d in (Direction.TO_SERVER, Direction.TO_CLIENT):
        if d in firsts:
            app = l7.identify(table, firsts[d], int(d), l4)
            if app:
                return names.get(app)
    return None


def analyse(pcap: Path) -> dict[str, tuple[FlowAnalyzer, list, str | None]]:
    """flow key (the truth's format) -> (analyzer, events, the kernel's app)."""
    out = {}
    table = l7.compile_signatures(list(registry.default_plugins()))
    for flow in read_capture(pcap).flows:
        an, events = analyse_flow(flow)
        out[flow.key] = (an, events, kernel_app(flow, table))
    return out


def unordered(key: str) -> tuple:
    proto, a, _, b = key.split()
    return proto, frozenset((a, b))


class Tally:
    def __init__(self, exceptions: list[dict]):
        self.counts = defaultdict(lambda: [0, 0])
        self.misses = defaultdict(list)
        self.excused = {(e["pcap"], e["flow"], e["field"]) for e in exceptions}
        self.used = set()

    def check(self, pcap: str, flow: str, field: str, want, got) -> None:
        if (pcap, flow, field) in self.excused:
            self.used.add((pcap, flow, field))
            return
        c = self.counts[field]
        c[1] += 1
        if want == got:
            c[0] += 1
        else:
            self.misses[field].append(f"{pcap} {flow}: truth {want!r}, ours {got!r}")

    def rate(self, field: str) -> float:
        ok, n = self.counts[field]
        return ok / n if n else 1.0

    def table(self) -> str:
        rows = ["| field | agree | of | rate |", "|---|---|---|---|"]
        for f in sorted(self.counts):
            ok, n = self.counts[f]
            rows.append(f"| {f} | {ok} | {n} | {100 * ok / n:.1f} % |")
        return "\n".join(rows)


def _pairs(want: list, got: list):
    """Items compared in order; a missing one on our side compares as None."""
    for i, w in enumerate(want):
        yield w, (got[i] if i < len(got) else None)


def compare_flow(t: Tally, pcap: str, key: str, truth: dict, an: FlowAnalyzer, events: list,
                 kapp: str | None) -> None:
    label = truth["label"]
    if label in OURS:
        t.check(pcap, key, "app", label, an.app)
        if kernel_label(truth) in KERNEL_SIGNED:
            t.check(pcap, key, "app (kernel signatures)", kernel_label(truth), kapp)
    else:
        t.check(pcap, key, "app (other: none of ours)", None, an.app if an.app in OURS else None)
    ts = truth.get("tshark") or {}
    by_kind = defaultdict(list)
    for ev in events:
        by_kind[ev.kind].append(ev)

    http = ts.get("http") or {}
    h1_requests = [e for e in by_kind["http_request"] if not e.stream_id]
    for w, g in _pairs(http.get("requests", []), h1_requests):
        for f in ("method", "uri", "host", "user_agent"):
            t.check(pcap, key, f"http.{f}", w.get(f), getattr(g, f, None) if g else None)
    for w, g in _pairs(http.get("responses", []), [e for e in by_kind["http_response"] if not e.stream_id]):
        t.check(pcap, key, "http.status", w.get("code"), getattr(g, "status", None) if g else None)

    compare_http2(t, pcap, key, ts, an, by_kind, h1_requests)

    tls = ts.get("tls") or {}
    for w, g in _pairs(tls.get("client_hellos", []), by_kind["tls_client_hello"]):
        t.check(pcap, key, "tls.sni", w.get("sni"), g.sni if g else None)
        t.check(pcap, key, "tls.alpn", list(w.get("alpn") or []), list(g.alpn) if g else None)
        if w.get("ja3"):
            t.check(pcap, key, "tls.ja3", w["ja3"], g.ja3 if g else None)
        t.check(pcap, key, "tls.supported_versions",
                [int(v, 16) for v in w.get("supported_versions") or []], list(g.versions) if g else None)
    for w, g in _pairs(tls.get("server_hellos", []), by_kind["tls_server_hello"]):
        if w.get("ja3s"):
            t.check(pcap, key, "tls.ja3s", w["ja3s"], g.ja3s if g else None)
        t.check(pcap, key, "tls.cipher_suite", int(w["cipher_suite"], 16), g.cipher_suite if g else None)
        sel = w.get("selected_version")
        t.check(pcap, key, "tls.selected_version", int(sel, 16) if sel else None,
                g.selected_version if g else None)

    dns = ts.get("dns") or {}
    for w, g in _pairs(dns.get("messages", []), by_kind["dns_message"]):
        t.check(pcap, key, "dns.id", int(w["id"], 16), g.id if g else None)
        t.check(pcap, key, "dns.response", w["response"], g.response if g else None)
        t.check(pcap, key, "dns.queries", [(q["name"], q["type"]) for q in w.get("queries", [])],
                [(q.name, q.type) for q in g.questions] if g else None)
        if w["response"]:
            t.check(pcap, key, "dns.rcode", w.get("rcode"), g.rcode if g else None)
            t.check(pcap, key, "dns.answer_types", w.get("answer_types", []),
                    [a.type_name for a in g.answers] if g else None)


H2_REQUEST_FIELDS = (("method", "method"), ("path", "uri"), ("authority", "host"),
                     ("user_agent", "user_agent"))
GRPC_FIELDS = ("path", "service", "method", "authority", "user_agent", "request_content_type",
               "response_content_type", "grpc_encoding", "grpc_timeout", "http_status", "grpc_status",
               "grpc_message")


def compare_http2(t: Tally, pcap: str, key: str, ts: dict, an: FlowAnalyzer, by_kind: dict,
                  h1_requests: list) -> None:
    """HTTP/2 per stream (the request's pseudo-headers and user-agent, the
    final status) and gRPC per call, matched by stream id; an h2c upgrade's
    stream 1 request is the HTTP/1 request that asked for it."""
    h2 = ts.get("http2") or {}
    if h2:
        t.check(pcap, key, "http2.start", h2.get("start"), getattr(an.parser, "start", None))
    reqs = {e.stream_id: e for e in by_kind["http_request"] if e.stream_id}
    resps: dict = {}
    for e in by_kind["http_response"]:
        if e.stream_id and not 100 <= e.status < 200:
            resps.setdefault(e.stream_id, e)
    upgrade = next((e for e in h1_requests if (e.header("upgrade") or "").lower() == "h2c"), None)
    for s in h2.get("streams", []):
        w = s.get("request")
        if w:
            g = upgrade if w.get("via_http1_upgrade") else reqs.get(s["stream_id"])
            for f, attr in H2_REQUEST_FIELDS:
                t.check(pcap, key, f"http2.{f}", w.get(f), getattr(g, attr, None) if g else None)
        w = s.get("response")
        if w:
            g = resps.get(s["stream_id"])
            t.check(pcap, key, "http2.status", w.get("status"), g.status if g else None)
    grpc = ts.get("grpc") or {}
    calls = {e.stream_id: e for e in by_kind["grpc_call"]}
    for w in grpc.get("calls", []):
        g = calls.get(w["stream_id"])
        for f in GRPC_FIELDS:
            t.check(pcap, key, f"grpc.{f}", w.get(f), getattr(g, f, None) if g else None)
    if grpc.get("messages"):
        got = list(calls.values())
        t.check(pcap, key, "grpc.messages", grpc["messages"],
                {"client_to_server": sum(c.request_messages for c in got),
                 "server_to_client": sum(c.response_messages for c in got)})


@pytest.fixture(scope="module")
def tally():
    exceptions = yaml.safe_load(EXCEPTIONS.read_text()) or []
    for e in exceptions:
        assert e.get("reason"), f"{EXCEPTIONS}: exception without a reason: {e}"
    t = Tally(exceptions)
    assert (CORPUS / "truth").is_dir(), f"corpus not found at {CORPUS}"
    for tf in sorted((CORPUS / "truth").glob("*.json")):
        truth = json.loads(tf.read_text())
        pcap = truth["pcap"]
        ours = analyse(CORPUS / pcap)   # "pcap" is the path under the corpus
        ours_unordered = {unordered(k): v for k, v in ours.items()}
        for key, flow in truth["flows"].items():
            found = ours_unordered.get(unordered(key))
            assert found is not None, f"{pcap}: flow {key} not found by the pcap reader"
            compare_flow(t, pcap, key, flow, *found)
    print("\ncorpus agreement per field\n" + t.table())
    return t


FIELDS = ["http.method", "http.uri", "http.host", "http.user_agent", "http.status",
          "tls.sni", "tls.alpn", "tls.ja3", "tls.supported_versions", "tls.ja3s", "tls.cipher_suite",
          "tls.selected_version", "dns.id", "dns.response", "dns.queries", "dns.rcode", "dns.answer_types",
          "http2.start", *(f"http2.{f}" for f, _ in H2_REQUEST_FIELDS), "http2.status",
          *(f"grpc.{f}" for f in GRPC_FIELDS), "grpc.messages"]


@pytest.mark.parametrize("field", FIELDS)
def test_field_agreement(tally, field):
    assert tally.counts[field][1] > 0, f"no {field} compared: the corpus check is not running"
    assert tally.rate(field) >= FIELD_TARGET, "\n".join(tally.misses[field][:20])


@pytest.mark.parametrize("field", ["app", "app (kernel signatures)"])
def test_protocol_identification(tally, field):
    assert tally.counts[field][1] >= 100
    assert tally.rate(field) >= IDENT_TARGET, "\n".join(tally.misses[field])


def test_every_exception_is_still_needed(tally):
    """An exception that no longer excuses anything is stale: remove it."""
    stale = tally.excused - tally.used
    assert not stale, f"stale entries in {EXCEPTIONS.name}: {sorted(stale)}"
