"""The kernel's L7 stage and SMTP (protocols/smtp.py signatures), in the real
program: the client's EHLO/HELO names SMTP, the server's 220 greeting does
not (FTP greets with 220 too), so an `app: smtp` rule passes a real SMTP
session and drops an FTP one at the client's first command."""
from __future__ import annotations

import pytest

from appliance.policyfile import compile_text
from datapath.enums import Reason
from datapath.policy_maps import PolicyMaps
from packets_ct import TcpConn

SMTP_GREETING = b"220 mx.example.org ESMTP Postfix (Debian/GNU)\r\n"
FTP_GREETING = b"220 ProFTPD 1.3.8 Server (Debian) [10.0.1.5]\r\n"
FTP_GREETING_MULTI = b"220-Welcome to the FTP service.\r\n220 Please log in.\r\n"

POLICY = """
groups:
  clients: [10.0.0.0/24]
  servers: [10.0.1.0/24]
defaults: {ingress: deny, egress: deny}
rules:
  - {name: mail-only, from: clients, to: servers, proto: tcp, ports: [25, 21], action: allow, app: smtp}
"""


@pytest.fixture
def smtp_policy(fastpath):
    _, pol = compile_text(POLICY, "smtp.yaml")
    PolicyMaps.for_fastpath(fastpath).apply(pol)
    return fastpath


def opened(fp, port, cport):
    conn = TcpConn.make(fp, client=("10.0.0.5", cport), server=("10.0.1.5", port))
    conn.send("c", "S", Reason.PASS_POLICY_ALLOW)
    conn.send("s", "SA")
    conn.send("c", "A")
    return conn


@pytest.mark.parametrize("greeting", [FTP_GREETING, FTP_GREETING_MULTI, SMTP_GREETING])
def test_a_220_greeting_alone_names_nothing(fastpath, greeting):
    conn = TcpConn.make(fastpath, server=("10.0.0.2", 2121)).handshake()
    conn.send("s", "PA", data=greeting)
    assert conn.entry().leaf.app == 0


def test_smtp_is_named_on_the_client_hello_after_the_greeting(fastpath):
    conn = TcpConn.make(fastpath, server=("10.0.0.2", 25)).handshake()
    conn.send("s", "PA", data=SMTP_GREETING)
    conn.send("c", "PA", data=b"EHLO client.example.org\r\n")
    e = conn.entry()
    assert e.leaf.app == fastpath.l7.ids["smtp"] and e.leaf.l7_seen == 3


def test_smtp_rule_passes_a_mail_session(smtp_policy):
    conn = opened(smtp_policy, 25, 41000)
    conn.send("s", "PA", data=SMTP_GREETING)
    conn.send("c", "PA", data=b"ehlo client.example.org\r\n")
    conn.send("s", "PA", data=b"250-mx.example.org\r\n250 STARTTLS\r\n")
    e = conn.entry()
    assert e.leaf.app == smtp_policy.l7.ids["smtp"] == e.leaf.app_req


@pytest.mark.parametrize("greeting", [FTP_GREETING, FTP_GREETING_MULTI])
def test_smtp_rule_drops_an_ftp_session(smtp_policy, greeting):
    conn = opened(smtp_policy, 21, 41001)
    conn.send("s", "PA", data=greeting)           # ambiguous: not judged
    conn.send("c", "PA", Reason.DROP_L7_APP_MISMATCH, data=b"USER anonymous\r\n")
    assert conn.entry() is None
