"""A flow whose rule asks only to identify it (inspect what: [dpi]) is let
go (ALLOW: the kernel carries it, no more copies) as soon as its protocol and
naming fields are known; WAF and DLP flows are inspected on, to their
budget. The EVE records still name the protocol and the names.
Records are built here (no kernel), as in test_engine.py."""
from __future__ import annotations

from datapath.enums import VerdictCode as V
from tests.unit.test_engine import DLP, DPI, HOLD, RULES, WAF, Harness, client_hello, dns_query, rec

# The same rules with domain rules on TLS names only: no rule could match a
# later Host or query of the same connection, so identification ends it.
SNI_ONLY = RULES.replace("fields: [http_host, tls_sni, dns_query]", "fields: [tls_sni]")

REQ = b"GET /catalog HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: t\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_dpi_only_http_flow_is_allowed_after_its_first_request_head():
    h = Harness(SNI_ONLY)
    h.engine.handle(rec(REQ[:20], inspect=DPI))
    assert h.codes() == []                                       # head incomplete: not identified yet
    h.engine.handle(rec(REQ[20:], seq=1001 + 20, inspect=DPI))
    assert h.codes() == [V.VERDICT_ALLOW]                        # one write: straight to ALLOW
    # Its response will not be read: the request is logged now, not when the flow times out.
    (http,) = [r["http"] for r in h.eve if r["event_type"] == "http"]
    assert (http["hostname"], http["url"], http["http_method"]) == ("shop.example", "/catalog", "GET")
    h.engine.close_all("shutdown")
    (flow,) = [r for r in h.eve if r["event_type"] == "flow"]
    assert flow["app_proto"] == "http" and {"inspection_verdict": "allow"} in flow["metadata"]["flowvars"]
    (http,) = [r["http"] for r in h.eve if r["event_type"] == "http"]
    assert (http["hostname"], http["url"], http["http_method"]) == ("shop.example", "/catalog", "GET")
    h.kinds()                                                    # every record fits the EVE schema


def test_waf_and_dlp_flows_are_not_let_go_after_identification():
    for what in (WAF | DPI, DLP | DPI, WAF | DLP | DPI):
        h = Harness()
        h.engine.handle(rec(REQ, inspect=what))
        h.engine.handle(rec(RESP, side=1, inspect=what))
        assert h.codes() == [V.VERDICT_RELEASE], what            # inspected on, to the budget


def test_dpi_only_tls_flow_is_allowed_on_its_client_hello_and_logs_the_sni():
    h = Harness()
    h.engine.handle(rec(client_hello(b"www.example.org"), inspect=DPI, server=("10.0.1.5", 443)))
    assert h.codes() == [V.VERDICT_ALLOW]
    (tls,) = [r["tls"] for r in h.eve if r["event_type"] == "tls"]   # logged at once
    assert tls["sni"] == "www.example.org"
    h.engine.close_all("shutdown")
    assert [r["event_type"] for r in h.eve].count("tls") == 1
    (flow,) = [r for r in h.eve if r["event_type"] == "flow"]
    assert flow["app_proto"] == "tls"


def test_dpi_only_dns_flow_is_allowed_on_its_query():
    h = Harness(SNI_ONLY)
    h.engine.handle(rec(dns_query(b"www.example.org"), inspect=DPI, l4=17, seq=0, server=("10.0.1.53", 53)))
    assert h.codes() == [V.VERDICT_ALLOW]
    assert [q["rrname"] for r in h.eve if r["event_type"] == "dns" for q in r["dns"]["queries"]] == \
        ["www.example.org"]


def test_a_domain_rule_still_blocks_a_dpi_only_flow():
    h = Harness()
    h.engine.handle(rec(REQ.replace(b"shop.example", b"evil.example"), inspect=DPI))
    assert h.codes() == [V.VERDICT_BLOCK]


def test_dpi_only_hold_flow_sends_its_held_request_on_when_allowed():
    h = Harness(SNI_ONLY)
    h.engine.handle(rec(REQ, inspect=DPI | HOLD))
    assert h.codes() == [V.VERDICT_ALLOW]
    assert h.resets.injected == [(0, 1001, REQ)]                 # the held head goes on at once


def test_records_of_an_allowed_flow_are_not_parsed():
    h = Harness(SNI_ONLY)
    h.engine.handle(rec(REQ, inspect=DPI))
    flow = h.engine.flows[b"k" * 40]
    assert flow.reasm is None                                    # its reassembly state is let go
    h.engine.handle(rec(b"\x00garbage that would be malformed", seq=1001 + len(REQ), inspect=DPI))
    assert h.codes() == [V.VERDICT_ALLOW] and h.engine.counters.failures == {}


def test_a_keep_alive_connection_is_read_on_while_a_domain_rule_checks_its_hosts():
    """A later request on the connection may name another Host: with an
    http_host domain rule the flow is not let go after its first head."""
    h = Harness()
    h.engine.handle(rec(REQ, inspect=DPI))
    assert h.codes() == [V.VERDICT_RELEASE]                      # identified, not let go
    evil = REQ.replace(b"shop.example", b"evil.example")
    h.engine.handle(rec(evil, seq=1001 + len(REQ), inspect=DPI))
    assert h.codes() == [V.VERDICT_RELEASE, V.VERDICT_BLOCK]


def test_a_dns_forwarder_is_read_on_while_a_domain_rule_checks_its_queries():
    h = Harness()
    h.engine.handle(rec(dns_query(b"www.example.org"), inspect=DPI, l4=17, seq=0, server=("10.0.1.53", 53)))
    assert h.codes() == [V.VERDICT_RELEASE]
    h.engine.handle(rec(dns_query(b"evil.example"), inspect=DPI, l4=17, seq=0, server=("10.0.1.53", 53)))
    assert h.codes()[-1] == V.VERDICT_BLOCK
