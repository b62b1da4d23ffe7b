"""QUIC against the corpus truth (../shared/corpus, "Second wave"): every
flow tshark decoded as QUIC (truth `tshark.quic`), through the parsers
alone (slowpath/pcap.py -> slowpath/analyzer.py, and slowpath/offline.py
analyze_capture) and through `microseg replay` (the real BPF program and the
engine; the EVE `quic` and flow records).

Compared: versions, the ClientHello's SNI, ALPN, supported_versions and JA3,
the ServerHello's cipher suite and selected version, the packet counts per
type (parsers), and the protocol (the analyzer's, the kernel signatures'
model, the EVE flow record's app_proto). Requirements as for the other
protocols: 99 % per field, 95 % protocol identity. Google QUIC, which tshark
does not decode, is checked on its own: ndpi-http_ipv6.pcap's flow nDPI
names QUIC.Google.
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

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
FIELD_TARGET = 0.99
IDENT_TARGET = 0.95
GQUIC_PCAP = "pcaps/ndpi-http_ipv6.pcap"
GQUIC_FLOW = "udp [2a00:d40:1:3:7aac:c0ff:fea7:d4c]:45931 -> [2a00:1450:4001:803::1017]:443"

CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(not CI and not (CORPUS / "truth").is_dir(),
                                reason=f"corpus not found at {CORPUS}")


def quic_truths() -> list[tuple[str, str, dict]]:
    """(pcap, flow key, truth flow) for every flow with tshark QUIC facts."""
    out = []
    for tf in sorted((CORPUS / "truth").glob("*.json")):
        truth = json.loads(tf.read_text())
        for key, flow in truth["flows"].items():
            if (flow.get("tshark") or {}).get("quic") or flow["label"] == "quic":
                out.append((truth["pcap"], key, flow))
    return out


class Tally:
    def __init__(self):
        self.counts = defaultdict(lambda: [0, 0])
        self.misses = defaultdict(list)

    def check(self, where: str, field: str, want, got) -> None:
        c = self.counts[field]
        c[1] += 1
        c[0] += want == got
        if want != got:
            self.misses[field].append(f"{where}: truth {want!r}, ours {got!r}")

    def rate(self, field: str) -> float:
        ok, n = self.counts[field]
        return ok / n if n else 1.0

    def table(self, title: str) -> str:
        rows = [f"| {f} | {ok} | {n} | {100 * ok / n:.1f} % |" for f, (ok, n) in sorted(self.counts.items())]
        return f"\n{title}\n| field | agree | of | rate |\n|---|---|---|---|\n" + "\n".join(rows)


def _hex(v: str) -> int:
    return int(v, 16)


@pytest.fixture(scope="module")
def parsers_tally():
    t = Tally()
    table = l7.compile_signatures(list(registry.default_plugins()))
    truths = quic_truths()
    assert len(truths) >= 4, "the corpus's QUIC flows are missing"
    for pcap, key, truth in truths:
        flows = {unordered(f.key): f for f in read_capture(CORPUS / pcap).flows}
        flow = flows[unordered(key)]
        an, events = analyse_flow(flow)
        where = f"{pcap} {key}"
        t.check(where, "app", "quic", an.app)
        t.check(where, "app (kernel signatures)", "quic", kernel_app(flow, table))
        offline = {unordered(r.key): r for r in analyze_capture(CORPUS / pcap)}[unordered(key)]
        t.check(where, "app (offline)", "quic", offline.app)
        q = truth["tshark"]["quic"]
        t.check(where, "quic.versions", [_hex(v) for v in q["versions"]], getattr(an.parser, "versions", None))
        counts = getattr(an.parser, "packets", {})
        for kind, n in q["packets"].items():
            t.check(where, f"quic.packets.{kind}", n, counts.get(kind))
        hellos = [e for e in events if e.kind == "quic_client_hello"]
        for i, w in enumerate(q["client_hellos"]):
            g = hellos[i] if i < len(hellos) else None
            t.check(where, "quic.sni", w.get("sni"), g.sni if g else None)
            t.check(where, "quic.alpn", w.get("alpn") or [], list(g.alpn) if g else None)
            t.check(where, "quic.supported_versions", [_hex(v) for v in w.get("supported_versions") or []],
                    list(g.hello.versions) if g else None)
            if w.get("ja3"):
                t.check(where, "quic.ja3", w["ja3"], g.hello.ja3 if g else None)
            t.check(where, "quic.dcid", w["dcid"].replace(":", ""), g.dcid.hex() if g else None)
            t.check(where, "offline.sni", w.get("sni"), offline.names.get("sni"))
        servers = [e for e in events if e.kind == "quic_server_hello"]
        for i, w in enumerate(q.get("server_hellos", [])):
            g = servers[i] if i < len(servers) else None
            t.check(where, "quic.cipher_suite", _hex(w["cipher_suite"]), g.hello.cipher_suite if g else None)
            t.check(where, "quic.selected_version", _hex(w["selected_version"]),
                    g.hello.selected_version if g else None)
        t.check(where, "quic.retry", len(q.get("retry_frames", [])),
                sum(e.kind == "quic_retry" for e in events))
    print(t.table("QUIC: parsers against the truth"))
    return t


PARSER_FIELDS = ["app", "app (kernel signatures)", "app (offline)", "quic.versions", "quic.sni", "quic.alpn",
                 "quic.supported_versions", "quic.ja3", "quic.dcid", "offline.sni", "quic.cipher_suite",
                 "quic.selected_version", "quic.retry", "quic.packets.initial", "quic.packets.handshake",
                 "quic.packets.retry", "quic.packets.short_header", "quic.packets.0rtt",
                 "quic.packets.version_negotiation"]


@pytest.mark.parametrize("field", PARSER_FIELDS)
def test_parsers_agree_with_the_truth(parsers_tally, field):
    ok, n = parsers_tally.counts[field]
    assert n > 0, f"no {field} compared"
    target = IDENT_TARGET if field.startswith("app") else FIELD_TARGET
    assert parsers_tally.rate(field) >= target, "\n".join(parsers_tally.misses[field])


def test_google_quic_flow_named_with_its_sni_and_user_agent():
    """tshark does not decode Google QUIC (Q025 here); nDPI calls the flow
    QUIC.Google. Its client hello is in the clear: server name and UAID."""
    truth = json.loads((CORPUS / "truth" / "ndpi-http_ipv6.pcap.json").read_text())
    assert truth["flows"][GQUIC_FLOW]["ndpi"]["protocol"] == "QUIC.Google"
    flows = {f.key: f for f in read_capture(CORPUS / GQUIC_PCAP).flows}
    an, events = analyse_flow(flows[GQUIC_FLOW])
    hello, = [e for e in events if e.kind == "quic_client_hello"]
    assert an.app == "quic" and (hello.sni, hello.ua) == ("www.google.it", "Chrome/46.0.2490.80 Linux x86_64")
    assert not any(e.kind == "malformed" for e in events)


# --- through microseg replay ------------------------------------------------------
@pytest.fixture(scope="module")
def replay_tally(fastpath_build):
    from tests.corpus.replayed import replayed_truth_flows

    fp = fastpath_build
    t = Tally()
    truths = quic_truths()
    for where, truth, mine in replayed_truth_flows(fp, CORPUS, truths, t, "quic", "quic"):
        q = truth["tshark"]["quic"]
        client = [r["quic"] for r in mine.get("quic", []) if r["direction"] == "to_server"]
        server = [r["quic"] for r in mine.get("quic", []) if r["direction"] == "to_client"]
        for i, w in enumerate(q["client_hellos"]):
            g = client[i] if i < len(client) else {}
            t.check(where, "quic.version", f"{_hex(w['quic_version']):x}", g.get("version"))
            t.check(where, "quic.sni", w.get("sni"), g.get("sni"))
            alpn = next((e.get("values") for e in g.get("extensions", []) if e["type"] == 16), [])
            t.check(where, "quic.alpn", w.get("alpn") or [], alpn)
            if w.get("ja3"):
                t.check(where, "quic.ja3", w["ja3"], (g.get("ja3") or {}).get("hash"))
        for i, w in enumerate(q.get("server_hellos", [])):
            g = server[i] if i < len(server) else {}
            t.check(where, "quic.cipher_suite", str(_hex(w["cipher_suite"])),
                    ((g.get("ja3s") or {}).get("string") or ",,").split(",")[1])
    print(t.table("QUIC: microseg replay against the truth"))
    return t


@pytest.mark.parametrize("field", ["app_proto", "quic.version", "quic.sni", "quic.alpn", "quic.ja3",
                                   "quic.cipher_suite"])
def test_replay_agrees_with_the_truth(replay_tally, field):
    ok, n = replay_tally.counts[field]
    assert n > 0, f"no {field} compared"
    target = IDENT_TARGET if field == "app_proto" else FIELD_TARGET
    assert replay_tally.rate(field) >= target, "\n".join(replay_tally.misses[field])
