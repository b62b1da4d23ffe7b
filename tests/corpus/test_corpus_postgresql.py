"""PostgreSQL against the corpus truth (../shared/corpus, "Second wave"):
every flow tshark decoded as PostgreSQL (truth `tshark.postgresql`), through
the parsers alone (slowpath/pcap.py -> slowpath/analyzer.py, and
slowpath/offline.py analyze_capture) and through `microseg replay` (the real
BPF program and the engine; the EVE `pgsql` and flow records).

Compared: the startup's protocol version, user, database and
application_name, the SSLRequests, the authentication methods the server
asked for, the queries (type and text), the command tags, the errors
(severity, SQLSTATE, message), the server's version (ParameterStatus), and
the protocol (the analyzer's, the kernel signatures' model, the offline
result's, the EVE flow record's app_proto). Requirements as for the other
protocols: 99 % per field, 95 % protocol identity.
"""
from __future__ import annotations

import json
import os
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


def pg_truths() -> list[tuple[str, str, dict]]:
    """(pcap, flow key, truth flow) for every flow with tshark PostgreSQL facts."""
    out = []
    for tf in sorted((CORPUS / "truth").glob("*.json")):
        truth = json.loads(tf.read_text())
        for key, flow in truth["flows"].items():
            if (flow.get("tshark") or {}).get("postgresql") or flow["label"] == "postgresql":
                out.append((truth["pcap"], key, flow))
    return out


def _of(events, kind):
    return [e for e in events if e.kind == kind]


def _compare_parsed(t: Tally, where: str, pg: dict, events) -> None:
    """The truth's postgresql facts against the parser's events."""
    start = pg.get("startup")
    if start:
        got = _of(events, "pgsql_startup")
        g = got[0] if got else None
        t.check(where, "pgsql.protocol_version", start["protocol_version"], g.protocol_version if g else None)
        params = start.get("parameters", {})
        t.check(where, "pgsql.user", params.get("user"), g.user if g else None)
        t.check(where, "pgsql.database", params.get("database"), g.database if g else None)
        t.check(where, "pgsql.application_name", params.get("application_name"),
                g.application_name if g else None)
        t.check(where, "pgsql.startup_parameters", params, dict(g.parameters) if g else None)
    t.check(where, "pgsql.ssl_requests", len(pg.get("ssl_request_frames", [])),
            sum(not e.gss for e in _of(events, "pgsql_ssl_request")))
    t.check(where, "pgsql.gss_requests", len(pg.get("gss_encrypt_request_frames", [])),
            sum(e.gss for e in _of(events, "pgsql_ssl_request")))
    t.check(where, "pgsql.auth_methods", pg.get("auth_methods", []),
            [e.method for e in _of(events, "pgsql_auth_request")])
    t.check(where, "pgsql.queries", [(q["type"], q["query"]) for q in pg.get("queries", [])],
            [(e.type, e.query) for e in _of(events, "pgsql_query")])
    t.check(where, "pgsql.command_tags", [c["tag"] for c in pg.get("command_tags", [])],
            [e.tag for e in _of(events, "pgsql_command_complete")])
    t.check(where, "pgsql.errors", [(e["severity"], e["code"], e["message"]) for e in pg.get("errors", [])],
            [(e.severity, e.code, e.message) for e in _of(events, "pgsql_error")])
    server = {e.name: e.value for e in _of(events, "pgsql_parameter_status")}
    t.check(where, "pgsql.server_version", pg.get("server_parameters", {}).get("server_version"),
            server.get("server_version"))
    t.check(where, "pgsql.server_parameters", pg.get("server_parameters", {}), server)


@pytest.fixture(scope="module")
def parsers_tally():
    t = Tally()
    table = l7.compile_signatures(list(registry.default_plugins()))
    truths = pg_truths()
    assert len(truths) >= 3, "the corpus's PostgreSQL flows are missing"
    for pcap, key, truth in truths:
        flows = {unordered(f.key): f for f in read_capture(CORPUS / pcap).flows}
        flow = flows[unordered(key)]
        an, events = analyse_flow(flow)
        where = f"{pcap} {key}"
        t.check(where, "app", "postgresql", an.app)
        t.check(where, "app (kernel signatures)", "postgresql", kernel_app(flow, table))
        offline = {unordered(r.key): r for r in analyze_capture(CORPUS / pcap)}[unordered(key)]
        t.check(where, "app (offline)", "postgresql", offline.app)
        t.check(where, "malformed", [], [e.reason for e in _of(events, "malformed")])
        _compare_parsed(t, where, truth["tshark"]["postgresql"], events)
    print(t.table("PostgreSQL: parsers against the truth"))
    return t


PARSER_FIELDS = ["app", "app (kernel signatures)", "app (offline)", "malformed", "pgsql.protocol_version",
                 "pgsql.user", "pgsql.database", "pgsql.application_name", "pgsql.startup_parameters",
                 "pgsql.ssl_requests", "pgsql.gss_requests", "pgsql.auth_methods", "pgsql.queries",
                 "pgsql.command_tags", "pgsql.errors", "pgsql.server_version", "pgsql.server_parameters"]


@pytest.mark.parametrize("field", PARSER_FIELDS)
def test_parsers_agree_with_the_truth(parsers_tally, field):
    ok, n = parsers_tally.counts[field]
    assert n > 0, f"no {field} compared"
    target = IDENT_TARGET if field.startswith("app") else FIELD_TARGET
    assert parsers_tally.rate(field) >= target, "\n".join(parsers_tally.misses[field])


def test_mysql_and_other_flows_are_not_called_postgresql():
    """No flow the truth labels otherwise (MySQL among them) is named
    postgresql by the analyzer: the probe reads the startup's shape, not the port."""
    wrong = []
    for tf in sorted((CORPUS / "truth").glob("*.json")):
        truth = json.loads(tf.read_text())
        if not any(f["label"] == "mysql" for f in truth["flows"].values()):
            continue
        flows = {unordered(f.key): f for f in read_capture(CORPUS / truth["pcap"]).flows}
        for key, tflow in truth["flows"].items():
            flow = flows.get(unordered(key))
            if flow is None or tflow["label"] == "postgresql":
                continue
            an, _ = analyse_flow(flow)
            if an.app == "postgresql":
                wrong.append(f"{truth['pcap']} {key}: truth {tflow['label']}")
    assert not wrong, wrong


# --- through microseg replay ------------------------------------------------------
@pytest.fixture(scope="module")
def replay_tally(fastpath_build):
    from tests.corpus.replayed import replayed_truth_flows

    fp = fastpath_build
    t = Tally()
    for where, truth, mine in replayed_truth_flows(fp, CORPUS, pg_truths(), t, "postgresql", "pgsql"):
        pg = truth["tshark"]["postgresql"]
        txs = [r["pgsql"] for r in mine.get("pgsql", [])]
        t.check(where, "pgsql.tx_ids", list(range(len(txs))), [x["tx_id"] for x in txs])
        reqs = [x.get("request", {}) for x in txs]
        resps = [x.get("response", {}) for x in txs]
        start = next((r for r in reqs if "startup_parameters" in r), {})
        params = start.get("startup_parameters", {})
        optional = {k: v for o in params.get("optional_parameters", []) for k, v in o.items()}
        want = (pg.get("startup") or {}).get("parameters", {})
        t.check(where, "pgsql.user", want.get("user"), params.get("user"))
        t.check(where, "pgsql.database", want.get("database"), optional.get("database"))
        t.check(where, "pgsql.protocol_version", (pg.get("startup") or {}).get("protocol_version"),
                start.get("protocol_version"))
        t.check(where, "pgsql.ssl_requests", len(pg.get("ssl_request_frames", [])),
                sum(r.get("message") == "SSL Request" for r in reqs))
        t.check(where, "pgsql.queries", [q["query"] for q in pg.get("queries", []) if q["type"] == "simple"],
                [r["simple_query"] for r in reqs if "simple_query" in r])
        t.check(where, "pgsql.command_tags", [c["tag"] for c in pg.get("command_tags", [])],
                [r["command_completed"] for r in resps if "command_completed" in r])
        t.check(where, "pgsql.errors", [(e["code"], e["message"]) for e in pg.get("errors", [])],
                [(r["code"], r.get("message")) for r in resps
                 if r.get("severity_non_localizable", r.get("severity_localizable")) in
                 ("ERROR", "FATAL", "PANIC")])
        status = {k: v for r in resps for p in r.get("parameter_status", []) for k, v in p.items()}
        t.check(where, "pgsql.server_version", pg.get("server_parameters", {}).get("server_version"),
                status.get("server_version"))
    print(t.table("PostgreSQL: microseg replay against the truth"))
    return t


@pytest.mark.parametrize("field", ["app_proto", "pgsql.tx_ids", "pgsql.user", "pgsql.database",
                                   "pgsql.protocol_version", "pgsql.ssl_requests", "pgsql.queries",
                                   "pgsql.command_tags", "pgsql.errors", "pgsql.server_version"])
def test_replay_agrees_with_the_truth(replay_tally, field):
    ok, n = replay_tally.counts[field]
    assert n > 0, f"no {field} compared"
    target = IDENT_TARGET if field == "app_proto" else FIELD_TARGET
    assert replay_tally.rate(field) >= target, "\n".join(replay_tally.misses[field])
