"""slowpath/offline.py (microseg's parsers alone, as bench/peers.py runs them)
against the corpus truth: the same flows, the same application protocol as
the full analysis (test_corpus_protocols.py), and the naming fields (Host,
SNI, DNS name) of the truth's first request / hello / message, with and
without identify_only."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from slowpath.analyzer import analyse_flow
from slowpath.offline import analyze_capture
from slowpath.pcap import read_capture

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
OURS = {"http", "tls", "dns", "ssh", "mysql", "redis", "http2", "grpc", "quic", "smtp", "postgresql",
        "kafka", "mongodb", "mqtt"}
IDENT_TARGET = 0.95
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(not CI and not (CORPUS / "truth").is_dir(),
                                reason=f"corpus not found at {CORPUS}")


def unordered(key: str) -> tuple:
    proto, a, _, b = key.split()
    return proto, frozenset((a, b))


def truths():
    for tf in sorted((CORPUS / "truth").glob("*.json")):
        yield json.loads(tf.read_text())


def first_name(flow: dict) -> tuple[str, str] | None:
    ts = flow.get("tshark") or {}
    reqs = (ts.get("http") or {}).get("requests") or []
    if reqs and reqs[0].get("host"):
        return "host", reqs[0]["host"]
    hellos = (ts.get("tls") or {}).get("client_hellos") or []
    if hellos and hellos[0].get("sni"):
        return "sni", hellos[0]["sni"]
    msgs = (ts.get("dns") or {}).get("messages") or []
    if msgs and msgs[0].get("queries"):
        return "dns_query", msgs[0]["queries"][0]["name"]
    return None


@pytest.fixture(scope="module")
def results():
    out = {}
    for truth in truths():
        path = CORPUS / truth["pcap"]
        full = {}
        for f in read_capture(path).flows:
            an, events = analyse_flow(f)
            full[unordered(f.key)] = (an.app, len(events))
        out[truth["pcap"]] = (truth, full, {
            mode: {unordered(r.key): r for r in analyze_capture(path, identify_only=mode)}
            for mode in (True, False)})
    return out


@pytest.mark.parametrize("identify_only", [True, False])
def test_same_flows_and_protocols_as_the_full_analysis(results, identify_only):
    differ = []
    for pcap, (truth, full, modes) in results.items():
        got = modes[identify_only]
        assert set(got) == set(full), f"{pcap}: flows differ"
        differ += [f"{pcap} {k}: {got[k].app} vs {full[k][0]}" for k in full if got[k].app != full[k][0]]
        if not identify_only:
            # every event of the full analysis, none lost to a flow let go early
            differ += [f"{pcap} {k}: {got[k].events} events vs {full[k][1]}"
                       for k in full if got[k].events != full[k][1]]
        for key, flow in truth["flows"].items():
            assert got[unordered(key)].packets == flow["packets"], f"{pcap} {key}: packets"
    assert not differ, "\n".join(differ)


@pytest.mark.parametrize("identify_only", [True, False])
def test_protocol_and_names_agree_with_truth(results, identify_only):
    n = ok = 0
    names_n, names_bad = 0, []
    for pcap, (truth, _, modes) in results.items():
        got = modes[identify_only]
        for key, flow in truth["flows"].items():
            r = got[unordered(key)]
            if flow["label"] in OURS:
                n += 1
                ok += r.app == flow["label"]
            want = first_name(flow)
            if want is not None and r.app == flow["label"]:
                names_n += 1
                if r.names.get(want[0]) != want[1]:
                    names_bad.append(f"{pcap} {key}: {want} vs {r.names}")
    assert n >= 100 and ok / n >= IDENT_TARGET
    assert names_n >= 50 and len(names_bad) <= names_n * 0.01, "\n".join(names_bad)


def test_identify_only_parses_less(results):
    """identify_only stops at identification: fewer parser events over the
    corpus, and every flow it identified is identified in the full run too."""
    fewer = 0
    for pcap, (_, _, modes) in results.items():
        for k, r in modes[True].items():
            full = modes[False][k]
            assert r.events <= full.events, f"{pcap} {r.key}"
            fewer += r.events < full.events
            if r.identified:
                # (the full run may go on into a tunnel, HTTP CONNECT or
                # Upgrade, whose inner protocol it does not identify)
                assert r.names.items() <= full.names.items(), f"{pcap} {r.key}"
    assert fewer >= 20
