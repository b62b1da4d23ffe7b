"""SMTP: the sans-IO parser (protocols/smtp.py), its probe and signatures,
and STARTTLS handing the flow over to TLS in the analyzer."""
from __future__ import annotations

import pytest

from protocols import registry, smtp
from protocols.api import CERTAIN, NO_MATCH, POSSIBLE, Direction, Malformed
from slowpath.analyzer import FlowAnalyzer
from tests.unit.test_engine import client_hello

C, S = Direction.TO_SERVER, Direction.TO_CLIENT

GREETING = b"220 mx.example.org ESMTP Postfix\r\n"
EHLO_REPLY = (b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
              b"250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n")
MESSAGE = (b"Subject: quarterly\r\n numbers\r\nFrom: Alice <alice@example.org>\r\n"
           b"To: bob@example.net\r\nMessage-Id: <1@example.org>\r\n\r\n"
           b"Hello Bob,\r\n..dot-stuffed line\r\n.not the end\r\n")
SESSION = [
    (S, GREETING), (C, b"EHLO client.example.org\r\n"), (S, EHLO_REPLY),
    (C, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"), (S, b"235 2.7.0 Authentication successful\r\n"),
    # pipelined: MAIL, two RCPT and DATA in one segment
    (C, b"MAIL FROM:<alice@example.org> SIZE=200\r\nRCPT TO:<bob@example.net>\r\n"
        b"RCPT TO:<carol@example.net>\r\nDATA\r\n"),
    (S, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <carol@example.net>: unknown\r\n"
        b"354 End data with <CR><LF>.<CR><LF>\r\n"),
    (C, MESSAGE + b".\r\n"), (S, b"250 2.0.0 Ok: queued as 4F3A1\r\n"),
    (C, b"QUIT\r\n"), (S, b"221 2.0.0 Bye\r\n"),
]


def feed(parser, steps):
    out = []
    for d, data in steps:
        out += parser.receive_data(data, d)
    return out


def feed_bytewise(parser, steps):
    out = []
    for d, data in steps:
        for i in range(len(data)):
            out += parser.receive_data(data[i:i + 1], d)
    return out


def test_session_fields_and_replies_matched_in_order():
    p = smtp.SmtpParser()
    events = feed(p, SESSION)
    assert not [e for e in events if isinstance(e, Malformed)]
    replies = [(e.code, e.command) for e in events if e.kind == "smtp_reply"]
    assert replies == [(220, None), (250, "EHLO"), (235, "AUTH"), (250, "MAIL"), (250, "RCPT"),
                       (550, "RCPT"), (354, "DATA"), (250, "."), (221, "QUIT")]
    greeting = events[0]
    assert greeting.greeting and greeting.text == "mx.example.org ESMTP Postfix"
    ehlo_reply = events[2]
    assert ehlo_reply.extensions == ("PIPELINING", "SIZE 10240000", "STARTTLS", "AUTH PLAIN LOGIN", "8BITMIME")
    cmds = [(e.command, e.parameter, e.address) for e in events if e.kind == "smtp_command"]
    assert cmds == [("EHLO", "client.example.org", None), ("AUTH", "PLAIN", None),
                    ("MAIL", "FROM:<alice@example.org> SIZE=200", "alice@example.org"),
                    ("RCPT", "TO:<bob@example.net>", "bob@example.net"),
                    ("RCPT", "TO:<carol@example.net>", "carol@example.net"),
                    ("DATA", None, None), ("QUIT", None, None)]
    msg, = [e for e in events if e.kind == "smtp_message"]
    assert msg.size == len(MESSAGE)
    assert (msg.subject, msg.from_, msg.to, msg.message_id) == (
        "quarterly numbers", "Alice <alice@example.org>", "bob@example.net", "<1@example.org>")
    assert (p.banner, p.helo, p.mail_from, p.rcpt_to, p.auth_mechanism) == (
        "mx.example.org ESMTP Postfix", "client.example.org", ["alice@example.org"],
        ["bob@example.net", "carol@example.net"], "PLAIN")
    assert "STARTTLS" in p.extensions


def test_every_split_gives_the_same_events():
    whole = feed(smtp.SmtpParser(), SESSION)
    assert feed_bytewise(smtp.SmtpParser(), SESSION) == whole
    # each step cut once at every position, the others whole
    for k, (d, data) in enumerate(SESSION):
        for i in range(len(data) + 1):
            steps = SESSION[:k] + [(d, data[:i]), (d, data[i:])] + SESSION[k + 1:]
            assert feed(smtp.SmtpParser(), steps) == whole, (k, i)


def test_auth_credentials_never_in_any_event():
    steps = [(S, GREETING), (C, b"EHLO x\r\n"), (S, b"250 ok\r\n"), (C, b"AUTH LOGIN\r\n"),
             (S, b"334 VXNlcm5hbWU6\r\n"), (C, b"dXNlcm5hbWU=\r\n"), (S, b"334 UGFzc3dvcmQ6\r\n"),
             (C, b"c2VjcmV0cGFzcw==\r\n"), (S, b"235 ok\r\n"), (C, b"MAIL FROM:<a@b>\r\n"),
             (C, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")]
    events = feed(smtp.SmtpParser(), steps)
    text = repr(events)
    for secret in ("dXNlcm5hbWU", "c2VjcmV0cGFzcw", "AGFsaWNlAHNlY3JldA"):
        assert secret not in text
    assert [e.command for e in events if e.kind == "smtp_command"] == ["EHLO", "AUTH", "MAIL", "AUTH"]


def test_message_sent_before_the_354_waits_for_it():
    """A client that does not wait for 354 (or a feed order that puts its
    message first): the message is read once DATA is answered."""
    p = smtp.SmtpParser()
    events = feed(p, [(S, GREETING), (C, b"HELO h\r\nMAIL FROM:<>\r\nRCPT TO:<r@x>\r\nDATA\r\n"
                                          b"Subject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n"),
                      (S, b"250 h\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n221 bye\r\n")])
    assert not [e for e in events if isinstance(e, Malformed)]
    assert [(e.code, e.command) for e in events if e.kind == "smtp_reply"][-3:] == [
        (354, "DATA"), (250, "."), (221, "QUIT")]
    msg, = [e for e in events if e.kind == "smtp_message"]
    assert msg.subject == "s" and msg.size == len(b"Subject: s\r\n\r\nbody\r\n")
    assert p.mail_from == [""]


def test_data_refused_goes_back_to_commands():
    events = feed(smtp.SmtpParser(), [(S, GREETING), (C, b"DATA\r\nQUIT\r\n"),
                                      (S, b"503 5.5.1 need RCPT\r\n221 bye\r\n")])
    assert [(e.code, e.command) for e in events if e.kind == "smtp_reply"] == [
        (220, None), (503, "DATA"), (221, "QUIT")]
    assert not [e for e in events if e.kind == "smtp_message"]


def test_large_message_counted_not_held():
    p = smtp.SmtpParser()
    feed(p, [(S, GREETING), (C, b"DATA\r\n"), (S, b"354 go\r\n")])
    line = b"x" * 70 + b"\r\n"
    total = 0
    for _ in range(20000):                   # ~1.4 MB
        assert p.receive_data(line * 10, C) == []
        total += len(line) * 10
        assert p.buffered(C) <= smtp.MAX_BUFFERED_BYTES
    huge = b"y" * (3 * smtp.MAX_LINE_BYTES)  # a text line longer than any limit: counted
    p.receive_data(huge + b"\r\n", C)
    msg, = p.receive_data(b".\r\n", C)
    assert msg.size == total + len(huge) + 2 and msg.subject is None and msg.headers_truncated


def test_bdat_chunks_skipped_by_length():
    events = feed(smtp.SmtpParser(), [
        (S, GREETING), (C, b"BDAT 14\r\nSubject: b\r\n\r\nBDAT 4 LAST\r\nab\r\nQUIT\r\n"),
        (S, b"250 ok\r\n250 ok\r\n221 bye\r\n")])
    assert not [e for e in events if isinstance(e, Malformed)]
    msg, = [e for e in events if e.kind == "smtp_message"]
    assert (msg.size, msg.subject) == (18, "b")
    assert [e.command for e in events if e.kind == "smtp_reply"] == [None, "BDAT", "BDAT", "QUIT"]


@pytest.mark.parametrize("direction,data", [
    (C, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n"),       # TLS where a command belongs
    (S, b"hello there\r\n"),
    (S, b"2501 x\r\n"),
    (C, b"BDAT lots\r\n"),
    (C, "BDAT ²\r\n".encode()),                              # a digit to str.isdigit, not to int()
    (C, b"A" * (smtp.MAX_LINE_BYTES + 10)),                  # no line end within the cap
    (S, b"250-" + b"x" * smtp.MAX_LINE_BYTES),
])
def test_garbage_and_oversize_are_malformed(direction, data):
    p = smtp.SmtpParser()
    feed(p, [(S, GREETING)])
    events = feed(p, [(direction, data)])
    bad = [e for e in events if isinstance(e, Malformed)]
    assert len(bad) == 1 and bad[0].direction == direction
    assert p.buffered(direction) == 0
    assert p.receive_data(b"EHLO x\r\n", direction) == []      # that direction is ignored from then on


def test_reply_code_changing_inside_a_reply_is_malformed():
    events = feed(smtp.SmtpParser(), [(S, b"220-a\r\n250 b\r\n")])
    assert [e.kind for e in events] == ["malformed"]


def test_eof_inside_the_message_is_malformed():
    p = smtp.SmtpParser()
    feed(p, [(S, GREETING), (C, b"DATA\r\n"), (S, b"354 go\r\n"), (C, b"partial\r\n")])
    assert [e.kind for e in p.receive_eof(C)] == ["malformed"]
    assert smtp.SmtpParser().receive_eof(C) == []


def starttls_steps(hello: bytes):
    return [(S, GREETING), (C, b"EHLO c\r\n"), (S, EHLO_REPLY), (C, b"STARTTLS\r\n"),
            (S, b"220 2.0.0 Ready to start TLS\r\n"), (C, hello)]


def test_starttls_then_tls_is_detected():
    hello = client_hello(b"mail.example.org")
    an = FlowAnalyzer("tcp")
    events = []
    for d, data in starttls_steps(hello):
        events += an.data(d, data)
    kinds = [e.kind for e in events]
    assert "smtp_starttls" in kinds and "tls_client_hello" in kinds, kinds
    assert (an.app, an.inner_app) == ("smtp", "tls")
    sni, = [e.sni for e in events if e.kind == "tls_client_hello"]
    assert sni == "mail.example.org"
    assert not [e for e in events if isinstance(e, Malformed)]


def test_starttls_with_the_hello_fed_before_the_220():
    """The ClientHello held while STARTTLS waits is handed on, not parsed as commands."""
    hello = client_hello(b"mail.example.org")
    p = smtp.SmtpParser()
    events = feed(p, [(S, GREETING), (C, b"STARTTLS\r\n" + hello), (S, b"220 go ahead\r\n")])
    tls, = [e for e in events if e.kind == "smtp_starttls"]
    assert tls.rest == ((C, hello),) and p.starttls
    assert not [e for e in events if isinstance(e, Malformed)]


def test_starttls_refused_stays_smtp():
    events = feed(smtp.SmtpParser(), [(S, GREETING), (C, b"STARTTLS\r\nQUIT\r\n"),
                                      (S, b"454 4.7.0 TLS not available\r\n221 bye\r\n")])
    assert "smtp_starttls" not in [e.kind for e in events]
    assert [e.command for e in events if e.kind == "smtp_reply"] == [None, "STARTTLS", "QUIT"]


def test_probe_and_signatures():
    assert smtp.probe(GREETING, S) == CERTAIN
    assert smtp.probe(b"220 ProFTPD Server ready\r\n", S) == POSSIBLE      # FTP greets with 220 too
    assert smtp.probe(b"ehlo x\r\n", C) == CERTAIN
    assert smtp.probe(b"GET / HTTP/1.1\r\n", C) == NO_MATCH
    assert registry.detect(GREETING, S)[0] == "smtp"
    sigs = smtp.PLUGIN.signatures
    assert any(s.matches(b"EHLO x\r\n") for s in sigs if s.direction == C)
    assert any(s.matches(b"ehlo x\r\n") for s in sigs if s.direction == C)
    # The greeting is no kernel signature: FTP's "220 " would be named SMTP.
    assert not any(s.matches(GREETING) or s.matches(b"220 ProFTPD Server ready\r\n") for s in sigs)
    assert not any(s.matches(b"HTTP/1.1 220 x") for s in sigs)
