"""HTTP/2 through the live appliance: curl (with prior knowledge, and with an
h2c Upgrade) against a real h2c server (tests/e2e/servers/h2c_server.py) in
the lab's server namespace, `microseg run` inline in its gateway.

The server logs every request the moment its headers arrive: a request
blocked in hold mode must never appear there. One lab and one daemon serve
the module; each test uses its own URLs, so any one runs alone.
"""
from __future__ import annotations

import json

import pytest

from appliance.lab import SERVER_V4, Lab
from tests.e2e.labrun import running_daemon, wait_for
from tests.e2e.servers import lab_server, log_lines

pytestmark = pytest.mark.lab

ALLOW_PORT, HOLD_PORT, ASYNC_PORT = 8180, 8181, 8182
BIG = 20_000_000        # a response far larger than any socket buffer: a reset cuts it short
SQLI = "1%27%20UNION%20SELECT%20password%20FROM%20users--"

POLICY = f"""
groups:
  clients: [10.77.1.0/24]
  servers: [10.77.2.0/24]
defaults: {{ingress: deny, egress: deny}}
rules:
  - {{name: h2-allow, from: clients, to: servers, proto: tcp, ports: [{ALLOW_PORT}], action: allow}}
  - {{name: h2-hold, from: clients, to: servers, proto: tcp, ports: [{HOLD_PORT}], action: inspect,
     inspect: {{what: [waf, dlp, dpi], mode: hold}}}}
  - {{name: h2-async, from: clients, to: servers, proto: tcp, ports: [{ASYNC_PORT}], action: inspect,
     inspect: {{what: [waf, dlp, dpi], mode: async}}}}
"""
RULES = """
waf:
  sets: {sqli: block, xss: block, traversal: block, cmdi: block}
dlp:
  - {name: no-cards-out, detectors: [credit_card], direction: response, action: block}
"""


class H2Lab:
    def __init__(self, lab: Lab, tmp, daemon):
        self.lab, self.tmp, self.daemon = lab, tmp, daemon

    def access(self, port: int) -> list[str]:
        return log_lines(self.tmp / f"access-{port}.log")

    def records(self, event_type: str) -> list[dict]:
        eve = self.tmp / "eve.json"
        out = [json.loads(x) for x in eve.read_text().splitlines() if x.strip()] if eve.exists() else []
        return [r for r in out if r["event_type"] == event_type]

    def curl(self, *urls: str, mode: str = "--http2-prior-knowledge", timeout: float = 10) -> list[tuple]:
        """curl in the client namespace; one (http code, bytes, HTTP version)
        per URL (curl's own exit code in ``self.rc``)."""
        argv = ["curl", "-sS", mode, "--max-time", str(timeout),
                "-w", "%{http_code} %{size_download} %{http_version}\\n"]
        for u in urls:
            argv += ["-o", "/dev/null", u]
        r = self.lab.run(self.lab.client, argv, check=False, timeout=timeout + 10)
        self.rc, self.stderr = r.returncode, r.stderr
        return [tuple(line.split()) for line in r.stdout.splitlines()]

    def alerts(self, port: int, what: str) -> list[dict]:
        return [a for a in self.records("alert") if a["dest_port"] == port and what in json.dumps(a)]


@pytest.fixture(scope="module")
def h2lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http2-lab")
    www = tmp / "www"
    www.mkdir()
    (www / "index.html").write_text("hello\n")
    (www / "big.bin").write_bytes(b"x" * BIG)
    (tmp / "policy.yaml").write_text(POLICY)
    (tmp / "rules.yaml").write_text(RULES)
    with Lab() as lab:
        with lab_server(lab, tmp, "h2c_server.py", SERVER_V4, str(ALLOW_PORT), str(www),
                        str(tmp / f"access-{ALLOW_PORT}.log"), port=ALLOW_PORT), \
             lab_server(lab, tmp, "h2c_server.py", SERVER_V4, str(HOLD_PORT), str(www),
                        str(tmp / f"access-{HOLD_PORT}.log"), port=HOLD_PORT), \
             lab_server(lab, tmp, "h2c_server.py", SERVER_V4, str(ASYNC_PORT), str(www),
                        str(tmp / f"access-{ASYNC_PORT}.log"), port=ASYNC_PORT), \
             running_daemon(lab, tmp) as daemon:
            yield H2Lab(lab, tmp, daemon)


def url(port: int, path: str) -> str:
    return f"http://{SERVER_V4}:{port}{path}"


def test_h2c_through_an_allow_rule_prior_knowledge_and_upgrade(h2lab):
    """The lab itself: curl speaks HTTP/2 to the server through the gateway
    both ways (no inspection on this port)."""
    assert h2lab.curl(url(ALLOW_PORT, "/index.html?t=pk")) == [("200", "6", "2")]
    assert h2lab.curl(url(ALLOW_PORT, "/index.html?t=up1"), url(ALLOW_PORT, "/big.bin?t=up2"),
                      mode="--http2") == [("200", "6", "2"), ("200", str(BIG), "2")]
    assert {"h2 GET /index.html?t=pk", "h2c-upgrade GET /index.html?t=up1", "h2 GET /big.bin?t=up2"} \
        <= set(h2lab.access(ALLOW_PORT))


def test_hold_clean_h2_request_is_served_and_logged_as_http2(h2lab):
    assert h2lab.curl(url(HOLD_PORT, "/index.html?q=shoes")) == [("200", "6", "2")]
    assert "h2 GET /index.html?q=shoes" in h2lab.access(HOLD_PORT)

    def logged():
        return [r for r in h2lab.records("http") if r["http"].get("url") == "/index.html?q=shoes"]
    (rec,) = wait_for("the http record of the HTTP/2 request", logged)
    assert rec["dest_port"] == HOLD_PORT and rec["http"]["http_method"] == "GET"
    assert rec["http"]["status"] == 200
    assert "http2" in rec["http"], rec          # Suricata's http.http2 object
    assert not h2lab.alerts(HOLD_PORT, "shoes")


def test_hold_sqli_in_an_h2_request_never_reaches_the_server(h2lab):
    got = h2lab.curl(url(HOLD_PORT, f"/index.html?id={SQLI}"), timeout=5)
    assert h2lab.rc != 0 and got != [("200", "6", "2")], (h2lab.rc, got, h2lab.stderr)
    assert not [x for x in h2lab.access(HOLD_PORT) if "UNION" in x.upper()], h2lab.access(HOLD_PORT)
    (alert,) = wait_for("the SQL injection's alert", lambda: h2lab.alerts(HOLD_PORT, "UNION"))
    assert alert["alert"]["category"] == "sqli" and alert["verdict"]["action"] == "drop", alert
    assert "UNION" in alert["http"]["url"], alert
    # the port still serves a clean request afterwards, on a new connection
    assert h2lab.curl(url(HOLD_PORT, "/index.html?q=after")) == [("200", "6", "2")]


def test_hold_sqli_in_the_h2c_upgrade_request_never_reaches_the_server(h2lab):
    """The Upgrade request is HTTP/1.1: the attack in it is stopped before
    the protocol switches."""
    h2lab.curl(url(HOLD_PORT, f"/index.html?up={SQLI}"), mode="--http2", timeout=5)
    assert h2lab.rc != 0, h2lab.stderr
    assert not [x for x in h2lab.access(HOLD_PORT) if "?up=" in x], h2lab.access(HOLD_PORT)
    wait_for("the alert on the Upgrade request", lambda: h2lab.alerts(HOLD_PORT, "?up=1"))


def test_upgraded_connection_clean_first_request_then_sqli_on_stream_3_is_reset(h2lab):
    """curl --http2 with two URLs: the first rides the Upgrade (stream 1), the
    second goes as an HTTP/2 stream on the upgraded connection. The second
    carries the attack (and asks for the large file): the connection is
    reset before it completes, and the alert names it."""
    got = h2lab.curl(url(HOLD_PORT, "/index.html?t=clean-first"), url(HOLD_PORT, f"/big.bin?s3={SQLI}"),
                     mode="--http2", timeout=10)
    assert got[0] == ("200", "6", "2"), (got, h2lab.stderr)
    assert h2lab.rc != 0 and (len(got) < 2 or int(got[1][1]) < BIG), (h2lab.rc, got)
    alerts = wait_for("the alert on stream 3", lambda: h2lab.alerts(HOLD_PORT, "?s3=1"))
    assert alerts[0]["alert"]["category"] == "sqli", alerts


def test_async_sqli_in_an_h2_request_resets_the_connection(h2lab):
    got = h2lab.curl(url(ASYNC_PORT, f"/big.bin?id={SQLI}"), timeout=10)
    assert h2lab.rc != 0, (got, h2lab.stderr)
    assert not got or int(got[0][1]) < BIG, got
    (alert,) = wait_for("the async alert", lambda: h2lab.alerts(ASYNC_PORT, "UNION"))
    assert alert["alert"]["category"] == "sqli", alert
    # a clean request on a new connection is still served
    assert h2lab.curl(url(ASYNC_PORT, "/index.html?q=async-clean")) == [("200", "6", "2")]
