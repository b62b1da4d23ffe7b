"""QUIC through the slow path's engine (records built as the fast path writes
them for UDP): a domain rule on the TLS SNI blocks a QUIC flow naming that
server, other flows get the ServerHello's ALLOW, EVE `quic` records and the
alert's quic context pass Suricata's schema and the project's overlay."""
from __future__ import annotations

from datapath.enums import INSPECT
from datapath.enums import VerdictCode as V
from protocols.quic import QUIC_V1, crypto_frame
from slowpath.analyzer import FlowAnalyzer
from tests.unit.test_engine import Harness, rec
from tests.unit.test_quic import (RFC_DCID, RFC_SERVER_PROTECTED, client_initial, hello_with_sni,
                                  server_initial)

RULES = """
domains:
  - {name: blocked, match: [blocked.org], fields: [tls_sni], action: block}
"""
DPI, HOLD = INSPECT["DPI"], INSPECT["HOLD"]
SERVER_HELLO = bytes.fromhex(
    "020000560303eefce7f7b37ba1d1632e96677825ddf73988cfc79825df566dc5430b9a045a1200130100002e0033"
    "0024001d00209d3c940d89690b84d08a60993c144eca684d1081287c834d5311bcf32bb9da1a002b00020304")


def udp(data: bytes, side: int = 0, key: bytes = b"q" * 40, inspect: int = DPI):
    return rec(data, side=side, l4=17, key=key, seq=0, ack=0, flags=0, inspect=inspect,
               server=("10.0.1.5", 443))


def test_quic_sni_blocked_by_a_tls_sni_domain_rule():
    h = Harness(RULES)
    h.engine.handle(udp(client_initial(RFC_DCID, crypto_frame(0, hello_with_sni("blocked.org")))))
    assert h.codes(b"q" * 40) == [V.VERDICT_BLOCK]
    alert = next(r for r in h.eve if r["event_type"] == "alert")
    assert alert["alert"]["metadata"]["field"] == ["tls.sni"]
    assert alert["quic"]["sni"] == "blocked.org" and alert["app_proto"] == "quic"
    h.kinds()                                             # every record valid against both schemas


def test_other_sni_released_then_allowed_at_the_server_hello_with_quic_records():
    h = Harness(RULES)
    h.engine.handle(udp(client_initial(RFC_DCID, crypto_frame(0, hello_with_sni("allowed.org")))))
    assert h.codes(b"q" * 40) == [V.VERDICT_RELEASE]
    h.engine.handle(udp(server_initial(RFC_DCID, crypto_frame(0, SERVER_HELLO)), side=1))
    assert h.codes(b"q" * 40) == [V.VERDICT_RELEASE, V.VERDICT_ALLOW]
    assert h.kinds() == ["quic", "quic"]
    ch, sh = (r["quic"] for r in h.eve)
    assert ch["version"] == "1" and ch["sni"] == "allowed.org" and ch["ja4"].startswith("q13d")
    assert ch["ja3"]["hash"] and {"type": 16, "name": "alpn", "values": ["alpn"]} in ch["extensions"]
    assert sh["ja3s"]["string"].startswith("771,4865,")
    assert [r["direction"] for r in h.eve] == ["to_server", "to_client"]


def test_identify_only_flow_reads_on_past_the_hello_when_sni_rules_exist():
    """A Retry makes the client send its hello again (maybe naming another
    server): a dpi-only flow is not let go at its first hello while a
    tls_sni rule exists, so the retried hello's SNI is checked too."""
    h = Harness(RULES)
    new_dcid = b"\x22" * 8
    h.engine.handle(udp(client_initial(b"\x11" * 8, crypto_frame(0, hello_with_sni("allowed.org")))))
    assert h.codes(b"q" * 40) == [V.VERDICT_RELEASE]
    retry = (bytes([0xF0]) + QUIC_V1.to_bytes(4, "big") + bytes([4]) + b"\x01\x02\x03\x04"
             + bytes([8]) + new_dcid + b"tok" + bytes(16))
    h.engine.handle(udp(retry, side=1))
    h.engine.handle(udp(client_initial(new_dcid, crypto_frame(0, hello_with_sni("blocked.org")), pn=1)))
    assert h.codes(b"q" * 40) == [V.VERDICT_RELEASE, V.VERDICT_BLOCK]


def test_analyzer_names_the_flow_quic_with_its_sni():
    an = FlowAnalyzer("udp")
    from protocols.api import Direction
    from tests.unit.test_quic import RFC_CLIENT_PROTECTED
    an.datagram(Direction.TO_SERVER, RFC_CLIENT_PROTECTED)
    assert an.app == "quic" and an.names == {"sni": "example.com"} and an.identified
    assert RFC_SERVER_PROTECTED
