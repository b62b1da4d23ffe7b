"""The engine at a flow's end, on payload records built here (no kernel):
a flow seen only mid-stream names its protocol when it closes, as the
offline analysis does; an HTTP request answered by 101 Switching Protocols
is logged with that answer whatever the connection speaks next."""
from __future__ import annotations

from datapath.enums import INSPECT
from slowpath.analyzer import FlowAnalyzer
from slowpath.engine import Engine
from slowpath.records import InspRecord
from slowpath.rulesfile import load_rules_text

CLIENT, SERVER = ("10.0.0.5", 40000), ("10.0.1.5", 443)
KEY = b"c" * 40


class Verdicts:
    def verdict(self, key, code):
        return 1_000


def engine(records: list) -> Engine:
    return Engine(load_rules_text("{}\n", "<no rules>"), records.append, Verdicts(),
                  clock=lambda: 0.0, wallclock=lambda: 1_700_000_000.0)


# A dpi-only flow is let go (ALLOW) once identified, so the tests that
# follow a flow past its request head inspect it for the WAF as well.
WAF_DPI = INSPECT["WAF"] | INSPECT["DPI"]


def rec(data: bytes, side: int, seq: int, *, server=SERVER, flags=0x18, inspect=INSPECT["DPI"]) -> InspRecord:
    return InspRecord(ts_ns=1_000, key=KEY, client=CLIENT, server=server, side=side, seq=seq, ack_seq=0,
                      tcp_flags=flags, l4=6, app=0, inspect=inspect, rule_id=1, hook=0, orig_len=len(data),
                      data=data)


# TLS 1.2 application data records, as a capture that starts after the
# handshake shows them (corpus zeek-smtp.pcap, zeek-tls-tls13-ech.pcap).
APP_DATA = bytes.fromhex("1703030020") + bytes(range(32))


def test_mid_stream_flow_settles_its_protocol_at_close():
    records: list = []
    e = engine(records)
    e.handle(rec(APP_DATA, side=1, seq=9000))
    e.handle(rec(APP_DATA, side=1, seq=9000 + len(APP_DATA)))
    e.close_all("shutdown")
    (flow,) = [r for r in records if r["event_type"] == "flow"]
    assert flow["app_proto"] == "tls"

    # The offline analysis of the same bytes says the same, through the same step.
    an = FlowAnalyzer("tcp")
    assert an.data(1, APP_DATA + APP_DATA) == [] and not an.decided
    an.settle()
    assert an.app == "tls"


def test_request_answered_by_101_is_logged_with_it():
    req = (b"GET /robots.txt HTTP/1.1\r\nHost: nghttp2.org\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nUser-Agent: curl/7.61.0\r\n\r\n")
    resp = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
    server = ("10.0.1.5", 80)
    records: list = []
    e = engine(records)
    e.handle(rec(req, side=0, seq=100, server=server, inspect=WAF_DPI))
    e.handle(rec(resp, side=1, seq=500, server=server, inspect=WAF_DPI))
    e.handle(rec(preface, side=0, seq=100 + len(req), server=server, inspect=WAF_DPI))
    e.close_all("shutdown")
    http = [r["http"] for r in records if r["event_type"] == "http"]
    assert len(http) == 1
    assert (http[0].get("http_method"), http[0].get("url"), http[0].get("hostname"), http[0].get("status")) == \
        ("GET", "/robots.txt", "nghttp2.org", 101)


def test_retransmitted_fin_after_close_opens_no_empty_flow():
    """corpus ndpi-no_sni.pcap: both FINs close the flow, then the client's
    FIN comes again; that must not log a second, empty flow."""
    req = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"
    server = ("10.0.1.5", 80)
    records: list = []
    e = engine(records)
    e.handle(rec(req, side=0, seq=100, server=server, inspect=WAF_DPI))
    e.handle(rec(b"", side=0, seq=100 + len(req), server=server, flags=0x11, inspect=WAF_DPI))
    e.handle(rec(b"", side=1, seq=500, server=server, flags=0x11, inspect=WAF_DPI))
    assert not e.flows                                          # closed by the two FINs
    e.handle(rec(b"", side=0, seq=100 + len(req), server=server, flags=0x11, inspect=WAF_DPI))   # retransmitted
    e.close_all("shutdown")
    flows = [r for r in records if r["event_type"] == "flow"]
    assert len(flows) == 1 and flows[0]["app_proto"] == "http"
