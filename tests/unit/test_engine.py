"""The slow path's engine on payload records (no kernel: records are built
here as the fast path writes them; the kernel side has its own tests).
Verdicts, resets and EVE records are what is checked."""
from __future__ import annotations

import pytest

from bench.engine_conn import client_hello  # the one ClientHello builder with an SNI (the bench's)
from datapath.config import FailureActions
from datapath.enums import FRAG, INSPECT
from datapath.enums import VerdictCode as V
from slowpath.engine import Engine
from tests.eve_schemas import schema_errors
from slowpath.records import InspRecord
from slowpath.rulesfile import load_rules_text

RULES = """
waf:
  sets: {sqli: block, xss: block, traversal: block, cmdi: block}
dlp:
  - {name: no-cards-out, detectors: [credit_card], direction: response, action: block}
domains:
  - {name: blocked, match: [evil.example, "*.malware.test"], fields: [http_host, tls_sni, dns_query], action: block}
"""
CLIENT, SERVER = ("10.0.0.5", 40000), ("10.0.1.5", 80)
WAF, DLP, DPI, HOLD = INSPECT["WAF"], INSPECT["DLP"], INSPECT["DPI"], INSPECT["HOLD"]


class Verdicts:
    def __init__(self):
        self.written = []

    def verdict(self, key, code):
        self.written.append((key, code))
        return 2_000_000


class Resets:
    def __init__(self):
        self.calls = []
        self.held = []
        self.injected = []

    def inject(self, info, side, rec):
        self.injected.append((side, rec.seq, rec.data))
        return True

    def reset_flow(self, info, key, next_seq):
        self.calls.append((info.src_ip, info.dest_ip, list(next_seq)))

    def reset_held(self, info, key, held_from, next_seq):
        self.held.append((info.src_ip, info.dest_ip, list(held_from), list(next_seq)))


class Harness:
    def __init__(self, rules: str = RULES, **kw):
        self.verdicts, self.resets, self.eve = Verdicts(), Resets(), []
        self.engine = Engine(load_rules_text(rules, "rules.yaml"), self.eve.append, self.verdicts,
                             injector=self.resets, **kw)

    def codes(self, key=b"k" * 40):
        return [c for k, c in self.verdicts.written if k == key]

    def kinds(self):
        for r in self.eve:
            errors = schema_errors(r)         # Suricata's schema and the project's overlay
            assert not errors, (r, errors)
        return [r["event_type"] for r in self.eve]


def rec(data: bytes, side=0, seq=None, *, inspect=WAF | DLP | DPI, l4=6, flags=0x18, key=b"k" * 40,
        server=SERVER, ack=5001, **kw) -> InspRecord:
    seq = seq if seq is not None else (1001 if side == 0 else 5001)
    return InspRecord(ts_ns=1_000_000, key=key, client=CLIENT, server=server, side=side, seq=seq, ack_seq=ack,
                      tcp_flags=flags, l4=l4, app=0, inspect=inspect, rule_id=7, hook=0, orig_len=len(data),
                      data=data, **kw)


def test_clean_request_is_released_then_response_passes():
    h = Harness()
    req = b"GET /index.html?q=shoes HTTP/1.1\r\nHost: shop.example\r\n\r\n"
    h.engine.handle(rec(req))
    assert h.codes() == [V.VERDICT_RELEASE]
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    h.engine.handle(rec(resp, side=1))
    assert h.kinds() == ["http"] and h.eve[0]["http"]["status"] == 200
    assert h.eve[0]["http"]["hostname"] == "shop.example"


@pytest.mark.parametrize("attack", [
    b"/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--",
    b"/search?q=%253Cscript%253Ealert(1)%253C/script%253E",
    b"/static/..%2f..%2f..%2fetc/passwd",
    b"/ping?host=127.0.0.1;cat%20/etc/shadow",
])
def test_attack_blocks_alerts_and_resets_in_async_mode(attack):
    h = Harness()
    request = b"GET " + attack + b" HTTP/1.1\r\nHost: shop.example\r\n\r\n"
    h.engine.handle(rec(request))
    assert h.codes() == [V.VERDICT_BLOCK]
    alert = next(r for r in h.eve if r["event_type"] == "alert")
    assert alert["alert"]["action"] == "blocked" and alert["verdict"]["action"] == "drop"
    assert alert["alert"]["metadata"]["field"][0].startswith("http.")
    # The context a Suricata alert carries: the transaction's http object, the flow, app_proto.
    assert alert["http"]["url"] == attack.decode() and alert["http"]["hostname"] == "shop.example"
    assert alert["app_proto"] == "http" and alert["flow"]["pkts_toserver"] == 1
    assert alert["flow"]["bytes_toserver"] == len(request) and alert["flow"]["src_ip"] == CLIENT[0]
    h.kinds()
    # async: both ends are reset, each with the sequence number its peer expects
    (src, dst, seqs), = h.resets.calls
    assert (src, dst) == (CLIENT[0], SERVER[0]) and seqs == [1001 + len(request), 5001]


def test_hold_mode_block_resets_both_ends_at_the_first_held_byte():
    """Held segments never reached the server: its reset carries the first
    held byte (not the end the records reached); the client's reset the
    server's next byte, the client's ACK in its records."""
    h = Harness()
    head, tail = b"GET /?id=1%20or%201=1-- HTTP/1.1\r\n", b"Host: a\r\n\r\n"
    h.engine.handle(rec(head, inspect=WAF | HOLD))
    h.engine.handle(rec(head, inspect=WAF | HOLD))                          # the client's retransmission
    h.engine.handle(rec(tail, seq=1001 + len(head), inspect=WAF | HOLD))
    assert h.codes() == [V.VERDICT_BLOCK] and h.resets.injected == [] and h.resets.calls == []
    (src, dst, held_from, next_seq), = h.resets.held
    assert (src, dst) == (CLIENT[0], SERVER[0])
    assert held_from == [1001, None] and next_seq[1] == 5001


def test_hold_mode_block_counts_from_the_earliest_held_segment_across_wraparound():
    h = Harness()
    first = 0xFFFF_FFF0
    req = b"GET /?q=1%27%20UNION%20SELECT%20pw%20FROM%20users-- HTTP/1.1\r\nHost: a\r\n\r\n"
    h.engine.handle(rec(req[:16], seq=first, inspect=WAF | HOLD))
    h.engine.handle(rec(req[16:], seq=(first + 16) & 0xFFFF_FFFF, inspect=WAF | HOLD))   # seq 0: wrapped
    assert h.codes() == [V.VERDICT_BLOCK]
    assert h.resets.held[0][2] == [first, None]


def test_hold_mode_block_after_a_release_resets_as_async():
    """A released flow goes on as async: its later payload reached the
    server, so the kernel session's numbers apply (reset_flow)."""
    h = Harness()
    clean = b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n"
    h.engine.handle(rec(clean, inspect=WAF | HOLD))
    attack = b"GET /?id=1%20or%201=1-- HTTP/1.1\r\nHost: a\r\n\r\n"
    h.engine.handle(rec(attack, seq=1001 + len(clean), inspect=WAF | HOLD))
    assert h.codes() == [V.VERDICT_RELEASE, V.VERDICT_BLOCK] and h.resets.held == []
    (src, dst, seqs), = h.resets.calls
    assert seqs == [1001 + len(clean) + len(attack), 5001]


def test_hold_mode_simulated_drop_on_the_first_record_resets_at_its_seq():
    h = Harness(simulate=("parser_error",), failure_actions=FailureActions(parser_error="drop"))
    h.engine.handle(rec(b"GET / HTTP/1.1\r\n", seq=777, inspect=WAF | HOLD))
    assert h.codes() == [V.VERDICT_BLOCK]
    assert h.resets.held[0][2] == [777, None]


def test_hold_mode_release_sends_the_held_segments_on_once():
    h = Harness()
    head, tail = b"GET /index.html HTTP/1.1\r\n", b"Host: shop.example\r\n\r\n"
    h.engine.handle(rec(head, inspect=WAF | HOLD))
    h.engine.handle(rec(head, inspect=WAF | HOLD))                          # the client's retransmission
    assert h.codes() == [] and h.resets.injected == []                     # still held
    h.engine.handle(rec(tail, seq=1001 + len(head), inspect=WAF | HOLD))
    assert h.codes() == [V.VERDICT_RELEASE]
    assert h.resets.injected == [(0, 1001, head), (0, 1001 + len(head), tail)]


def test_an_attack_in_a_request_body_alerts_with_that_request():
    """A hit on a request's body (scanned at its end, after the head's own
    event) carries the flow's latest request as its transaction: the second
    of two, each without anomalies (Engine._inspect keeps such a request
    itself, without _log; fails when it does not make it the latest)."""
    h = Harness()
    h.engine.handle(rec(b"GET /first HTTP/1.1\r\nHost: shop.example\r\n\r\n"))
    body = b"user=admin&pass=1%27%20UNION%20SELECT%20password%20FROM%20users--"
    head = b"POST /login HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/x-www-form-urlencoded\r\n" \
           b"Content-Length: %d\r\n\r\n" % len(body)
    first = len(b"GET /first HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    h.engine.handle(rec(head, seq=1001 + first))
    assert not [r for r in h.eve if r["event_type"] == "alert"]
    h.engine.handle(rec(body, seq=1001 + first + len(head)))
    alert = next(r for r in h.eve if r["event_type"] == "alert")
    assert alert["alert"]["metadata"]["field"][0] == "http.request_body"
    assert alert["http"]["url"] == "/login" and alert["http"]["http_method"] == "POST"
    h.kinds()


def test_card_number_in_response_body_blocks():
    h = Harness()
    h.engine.handle(rec(b"GET /account HTTP/1.1\r\nHost: shop.example\r\n\r\n"))
    body = b"name=Jo card=4111 1111 1111 1111 exp=12/30"
    h.engine.handle(rec(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body, side=1))
    assert h.codes() == [V.VERDICT_RELEASE, V.VERDICT_BLOCK]
    alert = next(r for r in h.eve if r["event_type"] == "alert")
    (matched,) = alert["alert"]["metadata"]["matched"]
    assert "1111" in matched and "4111 1111" not in matched
    # The response body matched: the alert carries that transaction, request and response.
    assert alert["http"]["url"] == "/account" and alert["http"]["status"] == 200
    h.kinds()


def test_tls_sni_decides():
    h = Harness()
    h.engine.handle(rec(client_hello(b"www.malware.test"), inspect=DPI, server=("10.0.1.5", 443)))
    assert h.codes() == [V.VERDICT_BLOCK]
    ok = Harness()
    ok.engine.handle(rec(client_hello(b"www.example.org"), inspect=DPI, server=("10.0.1.5", 443)))
    assert ok.codes() == [V.VERDICT_ALLOW]        # dpi only: identified by its SNI, bypassed


def dns_query(name: bytes, qid=0x1234) -> bytes:
    labels = b"".join(len(p).to_bytes(1, "big") + p for p in name.split(b".")) + b"\0"
    return qid.to_bytes(2, "big") + bytes.fromhex("01000001000000000000") + labels + b"\x00\x01\x00\x01"


def test_dns_names_over_udp():
    h = Harness()
    key_ok, key_bad = b"a" * 40, b"b" * 40
    h.engine.handle(rec(dns_query(b"www.example.org"), inspect=DPI | HOLD, l4=17, key=key_ok, seq=0,
                        server=("10.0.1.53", 53)))
    h.engine.handle(rec(dns_query(b"evil.example"), inspect=DPI | HOLD, l4=17, key=key_bad, seq=0,
                        server=("10.0.1.53", 53)))
    # dpi only, but a dns_query domain rule: the next query on the 5-tuple is read too (not let go)
    assert h.codes(key_ok) == [V.VERDICT_RELEASE] and h.codes(key_bad) == [V.VERDICT_BLOCK]
    assert [q["rrname"] for r in h.eve if r["event_type"] == "dns" for q in r["dns"]["queries"]] == \
        ["www.example.org", "evil.example"]
    (alert,) = [r for r in h.eve if r["event_type"] == "alert"]
    assert alert["dns"]["type"] == "request" and alert["dns"]["queries"][0]["rrname"] == "evil.example"
    h.kinds()


def test_udp_datagram_from_fragment_records():
    h = Harness()
    q = dns_query(b"frag.example.org") + b"\0" * 40
    first, rest = q[:24], q[24:]
    h.engine.handle(rec(first, l4=17, seq=0, inspect=DPI, frag=FRAG["FIRST"] | FRAG["MORE"], frag_id=9, server=("10.0.1.53", 53)))
    assert h.codes() == []                                # incomplete: nothing parsed yet
    # the later fragment: its IP-payload offset counts the 8-byte UDP header
    h.engine.handle(rec(rest, l4=17, seq=0, inspect=DPI, frag=FRAG["LATER"], frag_id=9, frag_off=(24 + 8) // 8,
                        server=("10.0.1.53", 53)))
    assert h.codes() == [V.VERDICT_RELEASE]               # put together, passed; read on (a dns_query rule)
    assert [q["rrname"] for r in h.eve if r["event_type"] == "dns" for q in r["dns"]["queries"]] == \
        ["frag.example.org"]


@pytest.mark.parametrize("action, code", [("pass", V.VERDICT_RELEASE), ("bypass", V.VERDICT_ALLOW),
                                          ("drop", V.VERDICT_BLOCK)])
def test_parser_error_takes_its_failure_action(action, code):
    h = Harness(failure_actions=FailureActions(parser_error=action))
    # A request, then bytes that are not HTTP at all: the parser gives up.
    h.engine.handle(rec(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\x16\x03\x01\x00\x05hello"))
    assert h.codes()[-1] == code and h.engine.counters.failures["parser_error"] == 1


@pytest.mark.parametrize("kind", ["reassembly_cap", "parser_error"])
def test_simulated_slowpath_failures(kind):
    h = Harness(simulate=(kind,), failure_actions=FailureActions(**{kind: "drop"}))
    h.engine.handle(rec(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert h.codes() == [V.VERDICT_BLOCK] and h.engine.counters.failures[kind] == 1


def test_unknown_protocol_is_allowed_and_flow_record_at_close():
    h = Harness()
    h.engine.handle(rec(bytes(range(200)) * 30))
    assert h.codes() == [V.VERDICT_ALLOW]
    h.engine.close_all()
    (flow,) = [r for r in h.eve if r["event_type"] == "flow"]
    assert flow["flow"]["reason"] == "shutdown" and flow["metadata"]["flowints"]["rule_id"] == 7
    assert flow["flow"]["action"] == "pass" and {"inspection_verdict": "allow"} in flow["metadata"]["flowvars"]
    h.kinds()


def test_flow_table_is_bounded(monkeypatch):
    import slowpath.engine as eng
    monkeypatch.setattr(eng, "MAX_FLOWS", 3)
    h = Harness()
    for i in range(5):
        h.engine.handle(rec(b"GET / HTTP/1.1\r\n", key=bytes([i]) * 40))
    assert len(h.engine.flows) == 3
    assert [r["flow"]["reason"] for r in h.eve if r["event_type"] == "flow"] == ["forced", "forced"]
