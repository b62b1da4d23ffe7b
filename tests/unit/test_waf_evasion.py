"""The WAF never allows what it could not read (issue 12, item 6).

Each case is a request that llhttp refuses but that common back ends (or some
of them) accept, dressed around an attack in its target, a header or its body.
Every case goes through the real engine (reassembly, detection, the HTTP
parser, the rules) as one payload record, the way tests/unit/test_engine.py
drives it, and must end blocked with the default settings. With
``http_anomaly: pass`` the same requests must still be blocked by a WAF
signature: the WAF read what the lenient parser recovered. Anomaly records
must validate against Suricata's own EVE schema.
"""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from datapath.config import FailureActions
from datapath.enums import INSPECT
from datapath.enums import VerdictCode as V
from slowpath.engine import Engine
from slowpath.eve import load_schema
from slowpath.records import InspRecord
from slowpath.rulesfile import load_rules_text

RULES = "waf:\n  sets: {sqli: block, xss: block, traversal: block, cmdi: block}\n"
CLIENT, SERVER = ("10.0.0.5", 40000), ("10.0.1.5", 80)
WAF, HOLD = INSPECT["WAF"], INSPECT["HOLD"]
KEY = b"e" * 40
OURS = jsonschema.Draft202012Validator(load_schema(), format_checker=jsonschema.FormatChecker())
SURICATA_SCHEMA = Path(__file__).resolve().parents[3] / "shared/reference/suricata-eve-schema.json"

SQLI = b"/item?id=1%27%20UNION%20SELECT%20password%20FROM%20users--"
SQLI_RAW = b"1' UNION SELECT password FROM users--"
XSS = b"/search?q=%3Cscript%3Ealert(document.cookie)%3C/script%3E"
TRAV = b"/static/..%2f..%2f..%2f..%2fetc/passwd"
CMDI = b"/ping?host=127.0.0.1;cat%20/etc/shadow"
H = b"Host: shop.example\r\n"


def post(body: bytes, *fields: bytes, ctype=b"application/x-www-form-urlencoded") -> bytes:
    return (b"POST /form HTTP/1.1\r\n" + H + b"Content-Type: " + ctype + b"\r\n"
            + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body)


FORM = b"q=" + SQLI_RAW.replace(b" ", b"+")
CHUNK = FORM + b"&x=1"

# (name, request bytes). Names say the deviation and where the attack sits.
CASES = [
    ("unknown-method/target", b"FOO " + SQLI + b" HTTP/1.1\r\n" + H + b"\r\n"),
    ("extension-method/target", b"GETX " + XSS + b" HTTP/1.1\r\n" + H + b"\r\n"),
    ("lower-case-method/target", b"get " + SQLI + b" HTTP/1.1\r\n" + H + b"\r\n"),
    ("mixed-case-method/target", b"Post " + TRAV + b" HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n"),
    ("control-byte-in-user-agent/header",
     b"GET /ok HTTP/1.1\r\n" + H + b"User-Agent: \x01" + SQLI_RAW + b"\r\n\r\n"),
    ("nul-in-referer/header",
     b"GET /ok HTTP/1.1\r\n" + H + b"Referer: http://a/\x00<script>alert(1)</script>\r\n\r\n"),
    ("del-in-cookie/header", b"GET /ok HTTP/1.1\r\n" + H + b"Cookie: id=\x7f" + SQLI_RAW + b"\r\n\r\n"),
    ("tab-after-method/target", b"GET\t" + TRAV + b" HTTP/1.1\r\n" + H + b"\r\n"),
    ("two-spaces-after-method/target", b"GET  " + SQLI + b" HTTP/1.1\r\n" + H + b"\r\n"),
    ("tab-before-version/target", b"GET " + CMDI + b"\tHTTP/1.1\r\n" + H + b"\r\n"),
    ("leading-whitespace/target", b" GET " + XSS + b" HTTP/1.1\r\n" + H + b"\r\n"),
    ("trailing-whitespace/target", b"GET " + SQLI + b" HTTP/1.1 \r\n" + H + b"\r\n"),
    ("raw-spaces-in-target/target", b"GET /item?id=" + SQLI_RAW + b" HTTP/1.1\r\n" + H + b"\r\n"),
    ("http-0.9/target", b"GET " + TRAV + b"\r\n"),
    ("http-0.9-raw-spaces/target", b"GET /item?id=" + SQLI_RAW + b"\r\n"),
    ("version-1.2/target", b"GET " + SQLI + b" HTTP/1.2\r\n" + H + b"\r\n"),
    ("version-2.0-in-request-line/target", b"GET " + XSS + b" HTTP/2.0\r\n" + H + b"\r\n"),
    ("version-9.9/target", b"GET " + CMDI + b" HTTP/9.9\r\n" + H + b"\r\n"),
    ("lower-case-version/target", b"GET " + SQLI + b" http/1.1\r\n" + H + b"\r\n"),
    ("bare-lf/target", b"GET " + SQLI + b" HTTP/1.1\n" + b"Host: shop.example\n\n"),
    ("obs-fold/header",
     b"GET /ok HTTP/1.1\r\n" + H + b"User-Agent: Mozilla/5.0\r\n \t" + SQLI_RAW + b"\r\n\r\n"),
    ("space-before-colon/header", b"GET /ok HTTP/1.1\r\n" + H + b"User-Agent : " + SQLI_RAW + b"\r\n\r\n"),
    ("header-without-colon/target", b"GET " + SQLI + b" HTTP/1.1\r\n" + H + b"X-Junk\r\n\r\n"),
    ("header-without-colon/header", b"GET /ok HTTP/1.1\r\n" + H + b"User-Agent " + SQLI_RAW + b"\r\n\r\n"),
    ("invalid-char-in-field-name/target", b"GET " + XSS + b" HTTP/1.1\r\n" + H + b"X(y): 1\r\n\r\n"),
    ("space-inside-field-name/header", b"GET /ok HTTP/1.1\r\n" + H + b"X Forwarded: 1\r\nCookie: a="
     + SQLI_RAW + b"\r\n\r\n"),
    ("duplicate-content-length-same/body",
     post(FORM, b"Content-Length: %d" % len(FORM), b"Content-Length: %d" % len(FORM))),
    ("duplicate-content-length-differ/body",
     post(FORM, b"Content-Length: 3", b"Content-Length: %d" % len(FORM))),
    ("content-length-plus-sign/body", post(FORM, b"Content-Length: +%d" % len(FORM))),
    ("content-length-and-chunked/body",
     post(b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHUNK), CHUNK), b"Content-Length: 4", b"Transfer-Encoding: chunked")),
    ("chunk-size-0x-prefix/body", post(b"0x%x\r\n%s\r\n0\r\n\r\n" % (len(CHUNK), CHUNK),
                                       b"Transfer-Encoding: chunked")),
    ("chunk-size-trailing-junk/body", post(b"%x zz\r\n%s\r\n0\r\n\r\n" % (len(CHUNK), CHUNK),
                                           b"Transfer-Encoding: chunked")),
    ("chunk-size-17-digits/body", post(b"%017x\r\n%s\r\n0\r\n\r\n" % (len(CHUNK), CHUNK),
                                       b"Transfer-Encoding: chunked")),
    ("chunk-without-crlf/body", post(b"%x\r\n%sXX0\r\n\r\n" % (len(CHUNK), CHUNK),
                                     b"Transfer-Encoding: chunked")),
    ("transfer-encoding-space-before-colon/body",
     post(b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHUNK), CHUNK), b"Transfer-Encoding : chunked")),
    ("absolute-uri/target", b"GET http://shop.example" + TRAV + b" HTTP/1.1\r\n" + H + b"\r\n"),
    ("nul-in-target/target", b"GET /item\x00?id=" + SQLI_RAW.replace(b" ", b"%20") + b" HTTP/1.1\r\n" + H
     + b"\r\n"),
    ("overlong-field/target", b"GET " + SQLI + b" HTTP/1.1\r\n" + H + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n"),
    ("bare-cr-line-end/target", b"GET " + SQLI + b" HTTP/1.1\r" + H + b"\r\n"),
]


def rec(data: bytes, inspect: int) -> InspRecord:
    return InspRecord(ts_ns=1_000_000, key=KEY, client=CLIENT, server=SERVER, side=0, seq=1001, ack_seq=5001,
                      tcp_flags=0x18, l4=6, app=0, inspect=inspect, rule_id=7, hook=0, orig_len=len(data),
                      data=data)


class Verdicts:
    def __init__(self):
        self.written = []

    def verdict(self, key, code):
        self.written.append(code)
        return 2_000_000


def run(request: bytes, inspect: int = WAF, **actions):
    eve, verdicts = [], Verdicts()
    engine = Engine(load_rules_text(RULES, "rules.yaml"), eve.append, verdicts,
                    failure_actions=FailureActions(**actions))
    engine.handle(rec(request, inspect))
    for r in eve:
        errors = list(OURS.iter_errors(r))
        assert not errors, (r, errors[0].message)
    return verdicts.written, eve


@pytest.mark.parametrize("inspect", [WAF, WAF | HOLD], ids=["async", "hold"])
@pytest.mark.parametrize("name,request_bytes", CASES, ids=[c[0] for c in CASES])
def test_dressed_up_attack_is_blocked_with_default_settings(name, request_bytes, inspect):
    verdicts, eve = run(request_bytes, inspect)
    assert verdicts and verdicts[0] == V.VERDICT_BLOCK, (name, verdicts)
    assert any(r["event_type"] == "alert" for r in eve) or verdicts == [V.VERDICT_BLOCK]


# The deviation alone is what these show; the rest are also caught by the
# WAF's signatures when anomalies are let pass.
ONLY_PARSE_FAILURE: set[str] = set()


@pytest.mark.parametrize("name,request_bytes", [c for c in CASES if c[0] not in ONLY_PARSE_FAILURE],
                         ids=[c[0] for c in CASES if c[0] not in ONLY_PARSE_FAILURE])
def test_the_waf_reads_what_the_lenient_parser_recovered(name, request_bytes):
    verdicts, eve = run(request_bytes, http_anomaly="pass")
    assert verdicts and verdicts[0] == V.VERDICT_BLOCK, (name, verdicts)
    cats = {r["alert"]["category"] for r in eve if r["event_type"] == "alert"}
    assert cats & {"sqli", "xss", "traversal", "cmdi"}, (name, cats)


def test_anomalies_are_eve_anomaly_records_valid_for_suricata():
    suricata = jsonschema.Draft202012Validator(json.loads(SURICATA_SCHEMA.read_text()),
                                               format_checker=jsonschema.FormatChecker())
    seen = set()
    for name, request_bytes in CASES:
        _, eve = run(request_bytes)
        for r in eve:
            if r["event_type"] != "anomaly":
                continue
            errors = list(suricata.iter_errors(r))
            assert not errors, (name, r, errors[0].message)
            a = r["anomaly"]
            assert (a["type"], a["layer"], a["app_proto"], r["app_proto"]) == (
                "applayer", "proto_parser", "http", "http")
            assert a["event"].isupper()
            seen.add(a["event"])
    # Suricata's own names where it has them
    assert {"METHOD_DELIM_NON_COMPLIANT", "URI_DELIM_NON_COMPLIANT", "REQUEST_LINE_LEADING_WHITESPACE",
            "INVALID_REQUEST_CHUNK_LEN", "DUPLICATE_CONTENT_LENGTH_FIELD_IN_REQUEST",
            "REQUEST_FIELD_MISSING_COLON", "REQUEST_HEADER_INVALID", "INVALID_REQUEST_FIELD_FOLDING",
            "REQUEST_FIELD_TOO_LONG"} <= seen, seen


def test_anomaly_alert_mode_alerts_without_blocking_a_clean_request():
    verdicts, eve = run(b"get /index.html HTTP/1.1\r\nHost: shop.example\r\n\r\n", http_anomaly="alert")
    assert verdicts == [V.VERDICT_RELEASE]
    alert, = [r for r in eve if r["event_type"] == "alert"]
    assert alert["alert"]["action"] == "allowed" and alert["alert"]["category"] == "protocol"
    assert [r["anomaly"]["event"] for r in eve if r["event_type"] == "anomaly"] == ["METHOD_UNKNOWN"]


def test_anomaly_pass_mode_releases_a_clean_odd_request_and_still_logs_it():
    verdicts, eve = run(b"get /index.html HTTP/1.1\r\nHost: shop.example\r\n\r\n", http_anomaly="pass")
    assert verdicts == [V.VERDICT_RELEASE]
    assert [r["event_type"] for r in eve] == ["anomaly"]


def test_a_clean_request_has_no_anomaly():
    verdicts, eve = run(b"GET /index.html?q=shoes HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: curl/8\r\n\r\n")
    assert verdicts == [V.VERDICT_RELEASE] and eve == []


def test_unparseable_input_on_a_waf_flow_is_dropped_by_default():
    # Not HTTP at all after a valid request: the parser gives up (parser_error).
    req = b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n\x16\x03\x01\x00\x05hello"
    verdicts, _ = run(req)
    assert verdicts == [V.VERDICT_RELEASE, V.VERDICT_BLOCK]
    verdicts, _ = run(req, inspect=INSPECT["DPI"])                   # dpi only: bypassed once identified
    assert verdicts == [V.VERDICT_ALLOW]
    verdicts, _ = run(req, parser_error="bypass")            # an explicit setting wins
    assert verdicts == [V.VERDICT_RELEASE, V.VERDICT_ALLOW]


BUDGET = 16_384      # the kernel's default inspect_budget: bytes copied per side


def run_records(data: bytes, record_bytes: int = 4096, **actions):
    """``data`` as the kernel hands it off: records of ``record_bytes``, up
    to the inspection budget (the rest of the side is never copied)."""
    eve, verdicts = [], Verdicts()
    engine = Engine(load_rules_text(RULES, "rules.yaml"), eve.append, verdicts,
                    failure_actions=FailureActions(**actions), inspect_budget=BUDGET)
    for at in range(0, min(len(data), BUDGET), record_bytes):
        piece = data[at:at + record_bytes]
        engine.handle(InspRecord(ts_ns=1_000_000, key=KEY, client=CLIENT, server=SERVER, side=0, seq=1001 + at,
                                 ack_seq=5001, tcp_flags=0x18, l4=6, app=0, inspect=WAF, rule_id=7, hook=0,
                                 orig_len=len(piece), data=piece))
    for r in eve:
        errors = list(OURS.iter_errors(r))
        assert not errors, (r, errors[0].message)
    return verdicts.written, eve


@pytest.mark.parametrize("action", ["block", "pass"])
def test_a_head_longer_than_the_inspection_budget_is_read_as_far_as_it_goes(action):
    # Today the head never completes in the slow path: no verdict, and the
    # kernel passes the rest uncopied (budget_exhausted: pass).
    req = b"GET " + SQLI + b" HTTP/1.1\r\n" + H + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000)
                                                           for i in range(30)) + b"\r\n"
    verdicts, eve = run_records(req, http_anomaly=action)
    assert verdicts and verdicts[0] == V.VERDICT_BLOCK, verdicts
    cats = {r["alert"]["category"] for r in eve if r["event_type"] == "alert"}
    assert "sqli" in cats
    assert "REQUEST_FIELD_TOO_LONG" in {r["anomaly"]["event"] for r in eve if r["event_type"] == "anomaly"}


def test_a_clean_body_longer_than_the_budget_is_still_allowed():
    body = b"q=" + b"shoes+" * 5000
    req = b"POST /form HTTP/1.1\r\n" + H + b"Content-Type: application/x-www-form-urlencoded\r\n" \
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
    verdicts, eve = run_records(req)
    assert V.VERDICT_BLOCK not in verdicts and [r for r in eve if r["event_type"] == "alert"] == []


def test_the_setting_lives_in_the_run_configuration():
    from appliance.runconfig import RunConfig
    cfg = RunConfig.model_validate({"interfaces": ["eth0"],
                                    "datapath": {"failure_actions": {"http_anomaly": "alert"}}})
    assert cfg.datapath.failure_actions.http_anomaly == "alert"
    assert RunConfig.model_validate({"interfaces": ["eth0"]}).datapath.failure_actions.http_anomaly == "block"
    with pytest.raises(ValueError):
        RunConfig.model_validate({"interfaces": ["eth0"],
                                  "datapath": {"failure_actions": {"http_anomaly": "drop"}}})
