"""MySQL's and PostgreSQL's switch to TLS through the engine: on a flow
inspected only to identify it (dpi) the flow is read on past the server's
greeting / the SSLRequest while a tls_sni domain rule exists, so the
ClientHello that follows the switch meets the domain rules (as SMTP's
STARTTLS, tests/unit/test_smtp_engine.py); without such a rule the flow is
let go once identified."""
from __future__ import annotations

import struct

import pytest

from bench.fuzz_postgresql import SSL as PG_SSL_REQUEST
from datapath.enums import VerdictCode as V
from protocols import mysql
from tests.unit.test_engine import DPI, Harness, client_hello, rec
from tests.unit.test_ident_parsers import GREETING_CAPS, LOGIN_CAPS, greeting, my_packet

NO_DOMAINS = "waf:\n  sets: {sqli: block}\n"
MYSQL_SSL_REQUEST = my_packet(1, struct.pack("<IIB", LOGIN_CAPS | mysql.CLIENT_SSL, 1 << 24, 33) + bytes(23))
SESSIONS = {
    # server greeting, client SSLRequest, then the ClientHello
    "mysql": (("10.0.1.5", 3306), [(1, greeting(caps=GREETING_CAPS | mysql.CLIENT_SSL)),
                                   (0, MYSQL_SSL_REQUEST)]),
    # client SSLRequest, server 'S', then the ClientHello
    "postgresql": (("10.0.1.5", 5432), [(0, PG_SSL_REQUEST), (1, b"S")]),
}


def session(h: Harness, name: str, sni: bytes) -> None:
    server, steps = SESSIONS[name]
    seq = {0: 1001, 1: 5001}
    for side, data in [*steps, (0, client_hello(sni))]:
        h.engine.handle(rec(data, side, seq[side], inspect=DPI, server=server))
        seq[side] += len(data)


@pytest.mark.parametrize("name", sorted(SESSIONS))
def test_tls_sni_after_the_switch_blocked_on_a_dpi_only_flow(name):
    h = Harness()
    session(h, name, b"db.malware.test")
    assert h.codes() == [V.VERDICT_BLOCK]
    alert, = [r for r in h.eve if r["event_type"] == "alert"]
    assert alert["tls"]["sni"] == "db.malware.test"


@pytest.mark.parametrize("name", sorted(SESSIONS))
def test_tls_to_another_name_is_not_blocked(name):
    h = Harness()
    session(h, name, b"db.example.org")
    assert V.VERDICT_BLOCK not in h.codes()


@pytest.mark.parametrize("name", sorted(SESSIONS))
def test_without_a_tls_sni_rule_the_dpi_flow_is_let_go_when_identified(name):
    h = Harness(NO_DOMAINS)
    session(h, name, b"db.malware.test")
    assert h.codes() == [V.VERDICT_ALLOW]
