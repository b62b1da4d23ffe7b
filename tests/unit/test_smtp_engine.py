"""SMTP through the engine: after STARTTLS the TLS ClientHello's SNI is read
and domain rules on tls_sni apply, also on a flow inspected only to
identify it (dpi); each message is an EVE smtp record."""
from __future__ import annotations

from datapath.enums import VerdictCode as V
from tests.unit.test_engine import DLP, DPI, WAF, Harness, client_hello, rec

SERVER = ("10.0.1.5", 25)
NO_DOMAINS = "waf:\n  sets: {sqli: block}\n"


def session(h: Harness, inspect: int, tail: list[tuple[int, bytes]]) -> None:
    seq = {0: 1001, 1: 5001}
    steps = [(1, b"220 mx.example.org ESMTP\r\n"), (0, b"EHLO c\r\n"), (1, b"250-mx\r\n250 STARTTLS\r\n")] + tail
    for side, data in steps:
        h.engine.handle(rec(data, side, seq[side], inspect=inspect, server=SERVER))
        seq[side] += len(data)


STARTTLS = [(0, b"STARTTLS\r\n"), (1, b"220 go ahead\r\n")]


def test_starttls_sni_blocked_on_a_dpi_only_flow():
    h = Harness()
    session(h, DPI, STARTTLS + [(0, client_hello(b"www.malware.test"))])
    assert h.codes() == [V.VERDICT_BLOCK]
    alert, = [r for r in h.eve if r["event_type"] == "alert"]
    assert alert["tls"]["sni"] == "www.malware.test"


def test_starttls_to_another_name_is_not_blocked():
    for inspect in (DPI, WAF | DLP | DPI):
        h = Harness()
        session(h, inspect, STARTTLS + [(0, client_hello(b"mail.example.org"))])
        assert V.VERDICT_BLOCK not in h.codes()


def test_without_a_tls_sni_rule_the_dpi_flow_is_let_go_at_the_greeting():
    h = Harness(NO_DOMAINS)
    session(h, DPI, STARTTLS + [(0, client_hello(b"www.malware.test"))])
    assert h.codes() == [V.VERDICT_ALLOW]


def test_a_message_is_an_smtp_record():
    h = Harness()
    session(h, WAF | DLP | DPI, [(0, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"),
                                 (1, b"250 ok\r\n250 ok\r\n354 go\r\n"),
                                 (0, b"Subject: hello\r\n\r\nbody\r\n.\r\n"), (1, b"250 queued\r\n")])
    smtp, = [r for r in h.eve if r["event_type"] == "smtp"]
    assert smtp["smtp"] == {"helo": "c", "mail_from": "<a@example.org>", "rcpt_to": ["<b@example.net>"]}
    assert smtp["email"]["subject"] == "hello" and smtp["app_proto"] == "smtp"
