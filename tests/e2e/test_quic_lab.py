"""QUIC through the live appliance (issue 17 items 1 and 6): an aioquic
client and echo server (tests/e2e/servers/quic_server.py, a throwaway
self-signed certificate) across the lab's gateway, `microseg run` inline,
one port per policy rule:

- an inspect rule (dpi, hold) with a domain rule of the rules file blocking
  the TLS SNI ``blocked.lab``: a client naming it never completes its
  handshake (its Initial is held and dropped; the client gives up on its
  own timeout), an EVE alert and a quic record name it; a client naming
  another server is served;
- an allow rule with an `l7:` tls allow-list: an allowed name is served,
  another is blocked the same way, the alert naming the rule and the name;
  the same list on TLS over TCP (tests/e2e/servers/tls_echo.py).

The server logs each completed handshake and each message it reads, so a
test can tell that a blocked connection never reached it.
"""
from __future__ import annotations

import datetime
import json
import subprocess
import sys

import pytest

from appliance.lab import CLIENT_V4, SERVER_V4, Lab
from tests.e2e.labrun import MICROSEG, running_daemon, wait_for
from tests.e2e.servers import HERE, lab_server, log_lines

pytestmark = pytest.mark.lab

DOMAIN_PORT, LIST_PORT, TLS_PORT = 14433, 14434, 14435
# Past one TCP segment, a window and the inspect budget: the client's side of
# an allowed TLS connection goes on through the slow path (the list's hold).
BIG_TEXT = 100_000
# quic_server.py's own bounds: 8 s to connect, 15 s for the echo.
CLIENT_TIMEOUT_S = 60

POLICY = f"""
groups:
  clients: [10.77.1.0/24]
  servers: [10.77.2.0/24]
defaults: {{ingress: deny, egress: deny}}
rules:
  - {{name: quic-inspect, from: clients, to: servers, proto: udp, ports: [{DOMAIN_PORT}], action: inspect,
     inspect: {{what: [dpi], mode: hold}}}}
  - name: quic-sites
    from: clients
    to: servers
    proto: udp
    ports: [{LIST_PORT}]
    action: allow
    l7:
      tls: [allowed.lab, "*.ok.lab"]
  - name: tls-sites
    from: clients
    to: servers
    proto: tcp
    ports: [{TLS_PORT}]
    action: allow
    l7:
      tls: [allowed.lab]
"""
RULES = """
domains:
  - {name: quic-blocked-site, match: [blocked.lab], fields: [tls_sni], action: block}
"""


def self_signed(tmp) -> tuple[str, str]:
    """A throwaway certificate and key (PEM files in ``tmp``); the client
    does not verify it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lab.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("lab.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return str(tmp / "cert.pem"), str(tmp / "key.pem")


class QuicLab:
    def __init__(self, lab: Lab, tmp):
        self.lab, self.tmp = lab, tmp

    def call(self, port: int, sni: str, text: str) -> str:
        r = self.lab.run(self.lab.client, [sys.executable, str(HERE / "quic_server.py"), "call", SERVER_V4,
                                           str(port), sni, text], check=False, timeout=CLIENT_TIMEOUT_S)
        return r.stdout.strip() or f"ERROR exit {r.returncode}: {r.stderr.strip()[-300:]}"

    def tls_call(self, sni: str, text: str) -> str:
        r = self.lab.run(self.lab.client, [sys.executable, str(HERE / "tls_echo.py"), "call", SERVER_V4,
                                           str(TLS_PORT), sni, text], check=False, timeout=CLIENT_TIMEOUT_S)
        return r.stdout.strip() or f"ERROR exit {r.returncode}: {r.stderr.strip()[-300:]}"

    def served(self, port: int) -> list[str]:
        return log_lines(self.tmp / f"quic-{port}.log")

    def eve(self, port: int, event_type: str) -> list[dict]:
        eve = self.tmp / "eve.json"
        recs = [json.loads(x) for x in eve.read_text().splitlines() if x.strip()] if eve.exists() else []
        return [r for r in recs if r["event_type"] == event_type and r.get("dest_port") == port]

    def sessions(self, port: int) -> list[dict]:
        r = subprocess.run([*MICROSEG, "sessions", "--netns", self.lab.gateway, "--json", "--port", str(port)],
                           capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
        return json.loads(r.stdout)["sessions"] if r.returncode == 0 else []


@pytest.fixture(scope="module")
def quiclab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quic-lab")
    (tmp / "policy.yaml").write_text(POLICY)
    (tmp / "rules.yaml").write_text(RULES)
    cert, key = self_signed(tmp)
    with Lab() as lab:
        with lab_server(lab, tmp, "quic_server.py", "serve", SERVER_V4, str(DOMAIN_PORT), cert, key,
                        str(tmp / f"quic-{DOMAIN_PORT}.log"), port=DOMAIN_PORT, udp=True), \
             lab_server(lab, tmp, "quic_server.py", "serve", SERVER_V4, str(LIST_PORT), cert, key,
                        str(tmp / f"quic-{LIST_PORT}.log"), port=LIST_PORT, udp=True), \
             lab_server(lab, tmp, "tls_echo.py", "serve", SERVER_V4, str(TLS_PORT), cert, key,
                        str(tmp / f"quic-{TLS_PORT}.log"), port=TLS_PORT), \
             running_daemon(lab, tmp):
            yield QuicLab(lab, tmp)


def test_domain_rule_blocks_one_sni_and_serves_another(quiclab):
    assert quiclab.call(DOMAIN_PORT, "served.lab", "a-served") == "OK a-served"
    denied = quiclab.call(DOMAIN_PORT, "blocked.lab", "a-blocked")
    assert denied.startswith("ERROR handshake"), denied      # held and dropped: no answer at all
    served = quiclab.served(DOMAIN_PORT)
    assert served == ["handshake", "data a-served"], served   # the blocked one never reached the server

    def alert():
        return [a for a in quiclab.eve(DOMAIN_PORT, "alert") if a.get("quic", {}).get("sni") == "blocked.lab"]
    a = wait_for("the domain rule's alert on blocked.lab", alert)[0]
    assert a["src_ip"] == CLIENT_V4 and a["app_proto"] == "quic", a
    assert a["alert"]["metadata"]["field"] == ["tls.sni"] and a["verdict"]["action"] == "drop", a
    snis = wait_for("quic records of both hellos", lambda: {
        q["quic"].get("sni") for q in quiclab.eve(DOMAIN_PORT, "quic")} >= {"served.lab", "blocked.lab"})
    assert snis
    assert not [x for x in quiclab.eve(DOMAIN_PORT, "alert") if x.get("quic", {}).get("sni") == "served.lab"]


def test_l7_tls_allow_list_serves_listed_names_and_blocks_the_others(quiclab):
    assert quiclab.call(LIST_PORT, "allowed.lab", "b-allowed") == "OK b-allowed"
    assert quiclab.call(LIST_PORT, "www.ok.lab", "b-pattern") == "OK b-pattern"
    denied = quiclab.call(LIST_PORT, "other.lab", "b-other")
    assert denied.startswith("ERROR handshake"), denied
    served = quiclab.served(LIST_PORT)
    assert served.count("handshake") == 2 and "data b-other" not in served, served

    def alert():
        return [a for a in quiclab.eve(LIST_PORT, "alert") if a.get("quic", {}).get("sni") == "other.lab"]
    a = wait_for("the allow-list's alert on other.lab", alert)[0]
    assert a["alert"]["signature"] == "l7 allow-list of rule quic-sites: QUIC server name other.lab not allowed", a
    assert a["alert"]["metadata"]["field"] == ["l7.tls"] and a["verdict"]["action"] == "drop", a
    assert {x["quic"].get("sni") for x in quiclab.eve(LIST_PORT, "alert")} == {"other.lab"}
    # the port goes on serving the listed names
    assert quiclab.call(LIST_PORT, "allowed.lab", "b-again") == "OK b-again"


def test_sessions_show_the_flow_as_quic(quiclab):
    assert quiclab.call(DOMAIN_PORT, "served.lab", "c-session") == "OK c-session"
    got = wait_for("a udp session to the QUIC port", lambda: [
        s for s in quiclab.sessions(DOMAIN_PORT) if s["proto"] == "udp" and s["dst"] == SERVER_V4])
    assert {s.get("app") for s in got} == {"quic"}, got


def test_l7_tls_allow_list_on_tls_over_tcp(quiclab):
    """The same list reads TLS's ClientHello: the allowed name served (a
    100 kB line each way, the client's side sent on by the slow path after
    the ServerHello), another name's ClientHello never reaches the server."""
    big = "t" * BIG_TEXT
    assert quiclab.tls_call("allowed.lab", big) == f"OK {big}"
    denied = quiclab.tls_call("other.lab", "tls-other")
    assert denied.startswith("ERROR"), denied
    served = quiclab.served(TLS_PORT)
    assert "hello allowed.lab" in served and "hello other.lab" not in served, served

    def alert():
        return [a for a in quiclab.eve(TLS_PORT, "alert") if a.get("tls", {}).get("sni") == "other.lab"]
    a = wait_for("the allow-list's alert on other.lab", alert)[0]
    assert a["alert"]["signature"] == "l7 allow-list of rule tls-sites: TLS server name other.lab not allowed", a
    assert a["alert"]["metadata"]["field"] == ["l7.tls"] and a["verdict"]["action"] == "drop", a
