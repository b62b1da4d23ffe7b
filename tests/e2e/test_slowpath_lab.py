"""The live appliance end to end: `microseg run` in the lab gateway, real
clients (curl, openssl s_client, dig) and real servers, EVE read back.

One daemon serves the module's tests (its start costs a compile); each test
uses its own port or name and makes the traffic it checks, so any one of
them runs alone or in any order. The slow-path-down test kills a daemon: it
gets a lab and a daemon of its own.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.lab import GW_IFACES, SERVER_V4, Lab

pytestmark = pytest.mark.lab

MICROSEG = [sys.executable, "-m", "appliance.cli"]
HOLD_PORT, ASYNC_PORT, TLS_PORT, DOWN_PORT = 8080, 8081, 8443, 8082
HEARTBEAT_S = 1.0
METRICS_PORT = 19477   # inside the lab gateway's namespace
STATS_S = 2            # the daemon's stats record period

POLICY = f"""
groups:
  clients: [10.77.1.0/24]
  servers: [10.77.2.0/24]
defaults: {{ingress: deny, egress: deny}}
blocklist: [198.51.100.0/24]
rules:
  - {{name: web-hold, from: clients, to: servers, proto: tcp, ports: [{HOLD_PORT}], action: inspect,
     inspect: {{what: [waf, dlp, dpi], mode: hold}}}}
  - {{name: web-async, from: clients, to: servers, proto: tcp, ports: [{ASYNC_PORT}], action: inspect,
     inspect: {{what: [waf, dlp, dpi], mode: async}}}}
  - {{name: tls, from: clients, to: servers, proto: tcp, ports: [{TLS_PORT}], action: inspect,
     inspect: {{what: [dpi], mode: hold}}}}
  - {{name: dns, from: clients, to: servers, proto: udp, ports: [53], action: inspect,
     inspect: {{what: [dpi], mode: hold}}}}
  - {{name: strict, from: clients, to: servers, proto: tcp, ports: [{DOWN_PORT}], action: inspect,
     inspect: {{what: [waf], mode: async, on_failure: drop}}}}
"""
RULES = """
waf:
  sets: {sqli: block, xss: block, traversal: block, cmdi: block}
dlp:
  - {name: no-cards-out, detectors: [credit_card], direction: response, action: block}
domains:
  - {name: blocked, match: [blocked.example, "*.malware.test"], fields: [http_host, tls_sni, dns_query], action: block}
"""

# A DNS server for the lab: answers every A question with 10.77.2.99.
DNS_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(512)
    end = 12
    while q[end]:
        end += q[end] + 1
    question = q[12:end + 5]
    ans = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([10, 77, 2, 99])
    s.sendto(q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + ans, peer)
"""


class Daemon:
    def __init__(self, lab: Lab, tmp: Path):
        self.lab, self.tmp = lab, tmp
        # Its own run directory: what a killed daemon leaves (its sweeper's
        # lock) stays in the test's files, never in the system's /run/microseg.
        self.env = dict(os.environ, MICROSEG_RUN=str(tmp / "run"))
        (tmp / "policy.yaml").write_text(POLICY)
        (tmp / "rules.yaml").write_text(RULES)
        self.eve = tmp / "eve.json"
        (tmp / "run.yaml").write_text(json.dumps({
            "netns": lab.gateway, "interfaces": list(GW_IFACES),
            "policy": str(tmp / "policy.yaml"), "rules": str(tmp / "rules.yaml"),
            "datapath": {"heartbeat_timeout_s": HEARTBEAT_S, "failure_actions": {"slowpath_down": "pass"}},
            "eve": {"file": {"path": str(self.eve)}}, "metrics": {"listen": f"127.0.0.1:{METRICS_PORT}"},
            # Short: the module's EVE holds stats records too (the last test validates every record).
            "stats_interval_s": STATS_S}))
        self.proc = subprocess.Popen([*MICROSEG, "run", "--config", str(tmp / "run.yaml")], env=self.env,
                                     stdout=subprocess.PIPE, stderr=open(tmp / "run.log", "w"), text=True)
        line = self.proc.stdout.readline()
        assert "microseg running" in line, (tmp / "run.log").read_text()

    def records(self, event_type: str | None = None) -> list[dict]:
        time.sleep(0.3)   # the file sink writes from its own thread
        out = [json.loads(x) for x in self.eve.read_text().splitlines() if x.strip()]
        return [r for r in out if event_type is None or r["event_type"] == event_type]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        subprocess.run([*MICROSEG, "down", "--netns", self.lab.gateway, "--iface", *GW_IFACES],
                       capture_output=True, env=self.env)


@contextlib.contextmanager
def running_appliance(tmp: Path):
    """A lab, its servers, and `microseg run` in its gateway: (lab, daemon,
    tmp). Everything is stopped and removed on the way out."""
    www = tmp / "www"
    www.mkdir()
    (www / "index.html").write_text("hello\n")
    (www / "card.txt").write_text("customer card 4111 1111 1111 1111 exp 12/30\n" + "x" * 20_000_000)
    with Lab() as lab:
        servers = []
        try:
            for port in (HOLD_PORT, ASYNC_PORT, DOWN_PORT):
                log = open(tmp / f"access-{port}.log", "w")
                servers.append(lab.popen(lab.server, [sys.executable, "-m", "http.server", "--bind", SERVER_V4,
                                                      "--directory", str(www), str(port)], stderr=log))
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", "/CN=lab", "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")],
                           check=True, capture_output=True)
            servers.append(lab.popen(lab.server, ["openssl", "s_server", "-quiet", "-accept", str(TLS_PORT),
                                                  "-cert", str(tmp / "cert.pem"), "-key", str(tmp / "key.pem")],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            dns = lab.popen(lab.server, [sys.executable, "-c", DNS_SERVER, SERVER_V4], stdout=subprocess.PIPE,
                            text=True)
            servers.append(dns)
            assert dns.stdout.readline().strip() == "ready"
            for port in (HOLD_PORT, ASYNC_PORT, DOWN_PORT, TLS_PORT):
                wait_listening(lab, port)
            d = Daemon(lab, tmp)
            try:
                yield lab, d, tmp
            finally:
                d.stop()
        finally:
            for p in servers:
                p.kill()
                p.wait(5)


@pytest.fixture(scope="module")
def appliance(tmp_path_factory):
    with running_appliance(tmp_path_factory.mktemp("slowpath-lab")) as a:
        yield a


@pytest.fixture
def own_appliance(tmp_path):
    """A daemon nobody else uses, for a test that kills it."""
    with running_appliance(tmp_path) as a:
        yield a


def wait_listening(lab, port, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.run(lab.server, ["ss", "-Hltn", f"sport = :{port}"], check=False).stdout.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} in {lab.server}")


def curl(lab, url, timeout=5, out="/dev/null"):
    return lab.run(lab.client, ["curl", "-sS", "-o", out, "-w", "%{http_code} %{size_download}",
                                "--max-time", str(timeout), url], check=False)


def test_hold_sqli_never_reaches_the_server_clean_get_does(appliance):
    lab, d, tmp = appliance
    ok = curl(lab, f"http://{SERVER_V4}:{HOLD_PORT}/index.html?q=shoes")
    bad = curl(lab, f"http://{SERVER_V4}:{HOLD_PORT}/index.html?id=1%27%20UNION%20SELECT%20password%20FROM%20users--",
               timeout=3)
    assert ok.stdout.startswith("200") and bad.returncode != 0
    log = (tmp / f"access-{HOLD_PORT}.log").read_text()
    assert "GET /index.html?q=shoes" in log
    assert "UNION" not in log and "union" not in log.lower(), log     # never reached the server
    alerts = [a for a in d.records("alert") if a["dest_port"] == HOLD_PORT]
    assert alerts and alerts[0]["alert"]["category"] == "sqli" and alerts[0]["verdict"]["action"] == "drop"


def test_async_card_number_in_a_response_is_cut(appliance):
    lab, d, tmp = appliance
    r = curl(lab, f"http://{SERVER_V4}:{ASYNC_PORT}/card.txt", timeout=10)
    # curl: 56 "Connection reset by peer" (the slow path's reset), or 18
    # "partial file": either way the 20 MB did not arrive
    assert r.returncode in (18, 56), (r.returncode, r.stdout, r.stderr)
    got = int(r.stdout.split()[1])
    assert got < 20_000_000
    alerts = [a for a in d.records("alert") if a["dest_port"] == ASYNC_PORT]
    assert alerts and alerts[0]["alert"]["signature"] == "no-cards-out"
    (matched,) = alerts[0]["alert"]["metadata"]["matched"]
    assert "1111" in matched and "4111 1111 1111" not in matched
    assert alerts[0]["http"]["url"] == "/card.txt"          # the transaction, as Suricata's alerts carry it
    # a clean file on the same port still comes through whole
    assert curl(lab, f"http://{SERVER_V4}:{ASYNC_PORT}/index.html").stdout == "200 6"


def s_client(lab, sni):
    return lab.run(lab.client, ["timeout", "4", "openssl", "s_client", "-connect", f"{SERVER_V4}:{TLS_PORT}",
                                "-servername", sni, "-brief"], check=False, timeout=10)


def test_tls_with_a_blocked_sni_is_dropped(appliance):
    lab, d, tmp = appliance
    good = s_client(lab, "www.example.org")
    assert "Protocol version" in good.stderr or "CONNECTION ESTABLISHED" in good.stderr, good.stderr
    bad = s_client(lab, "cdn.malware.test")
    assert "CONNECTION ESTABLISHED" not in bad.stderr
    tls = {r["tls"].get("sni") for r in d.records("tls")}
    assert "www.example.org" in tls
    alerts = [a for a in d.records("alert") if a["dest_port"] == TLS_PORT]
    assert alerts and alerts[0]["alert"]["metadata"]["field"] == ["tls.sni"]
    assert alerts[0]["tls"]["sni"] == "cdn.malware.test"


def dig(lab, name):
    return lab.run(lab.client, ["dig", f"@{SERVER_V4}", name, "A", "+tries=2", "+timeout=2", "+short"],
                   check=False, timeout=15)


def test_dns_blocked_name_gets_no_answer_others_resolve(appliance):
    lab, d, tmp = appliance
    assert dig(lab, "www.example.org").stdout.strip() == "10.77.2.99"
    bad = dig(lab, "blocked.example")
    assert "10.77.2.99" not in bad.stdout
    names = {q["rrname"] for r in d.records("dns") for q in r["dns"].get("queries", ())}
    assert {"www.example.org", "blocked.example"} <= names
    assert any(a["alert"]["metadata"]["field"] == ["dns.rrname"] and a["dns"]["queries"][0]["rrname"] ==
               "blocked.example" for a in d.records("alert") if a["dest_port"] == 53)


def test_metrics_endpoint_counts_what_happened(appliance):
    """Scraped from inside the gateway namespace, after traffic of its own:
    a clean GET and an SQL injection on the hold port, a card number cut on
    the async port (the kernel drops the rest of that flow), a blocked SNI, a
    name that resolves and a blocked one."""
    from prometheus_client.parser import text_string_to_metric_families
    lab, d, tmp = appliance
    assert curl(lab, f"http://{SERVER_V4}:{HOLD_PORT}/index.html?q=metrics").stdout.startswith("200")
    assert curl(lab, f"http://{SERVER_V4}:{HOLD_PORT}/index.html?id=1%27%20OR%201=1--", timeout=3).returncode != 0
    assert curl(lab, f"http://{SERVER_V4}:{ASYNC_PORT}/card.txt", timeout=10).returncode in (18, 56)
    assert "CONNECTION ESTABLISHED" not in s_client(lab, "metrics.malware.test").stderr
    assert dig(lab, "www.example.org").stdout.strip() == "10.77.2.99"
    assert "10.77.2.99" not in dig(lab, "blocked.example").stdout

    def totals():
        text = lab.run(lab.gateway, ["curl", "-s", f"http://127.0.0.1:{METRICS_PORT}/metrics"]).stdout
        values = {}
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                values[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value

        def total(name, **labels):
            return sum(v for (n, lab_), v in values.items()
                       if n == name and all(dict(lab_).get(k) == w for k, w in labels.items()))
        return {"blocks": total("microseg_slowpath_verdicts_total", verdict="block"),
                "dropped": total("microseg_packets_total", reason="DROP_INSPECT_BLOCKED"),
                "records": total("microseg_ringbuf_records_total"),
                "latencies": total("microseg_verdict_latency_seconds_count"),
                "flows": total("microseg_sessions", table="ms_flows")}

    def enough(t):
        return t["blocks"] >= 3 and t["dropped"] >= 1 and t["records"] > 0 and t["latencies"] >= 4 \
            and t["flows"] >= 1
    # the verdicts are counted as the slow path gives them: wait (bounded)
    deadline = time.monotonic() + 15
    while not enough(t := totals()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert enough(t), t


def test_run_attaches_the_policys_xdp_blocklist(appliance):
    lab, d, tmp = appliance
    for iface in GW_IFACES:
        out = lab.run(lab.gateway, ["ip", "link", "show", iface]).stdout
        assert " xdp" in out, out
    # its pins are under the namespace's name, which the lab's teardown removes
    from datapath import pins
    assert any(p.name.isdigit() for p in pins.ns_dir(lab.gateway).iterdir())
    assert not (pins.ns_dir(None)).exists()


def hup(d, tmp, timeout=30.0):
    """SIGHUP, then wait for the daemon to say the next reload is done."""
    done = re.compile(r"reload \d+ done")
    n = len(done.findall((tmp / "run.log").read_text()))
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while len(done.findall((tmp / "run.log").read_text())) <= n:
        assert time.monotonic() < deadline, (tmp / "run.log").read_text()
        time.sleep(0.1)
    # "done" is logged once every worker has the new rules in force
    assert "has not confirmed the new rules" not in (tmp / "run.log").read_text()


def test_sighup_reloads_rules_and_a_bad_file_changes_nothing(appliance):
    lab, d, tmp = appliance
    assert dig(lab, "news.example").stdout.strip() == "10.77.2.99"
    (tmp / "rules.yaml").write_text(RULES.replace("[blocked.example,", "[blocked.example, news.example,"))
    hup(d, tmp)
    assert "10.77.2.99" not in dig(lab, "news.example").stdout
    # a broken file: logged, and the rules in force stay
    (tmp / "rules.yaml").write_text(RULES.replace("detectors: [credit_card]", "detectors: [no_such_detector]"))
    hup(d, tmp)
    assert "rules not loaded, the running ones stay" in (tmp / "run.log").read_text()
    assert "10.77.2.99" not in dig(lab, "news.example").stdout
    assert dig(lab, "www.example.org").stdout.strip() == "10.77.2.99"
    assert d.proc.poll() is None
    # the module's daemon goes on with the rules it started with
    (tmp / "rules.yaml").write_text(RULES)
    hup(d, tmp)
    assert dig(lab, "news.example").stdout.strip() == "10.77.2.99"


def test_killed_slowpath_failure_action_within_a_heartbeat(own_appliance):
    """Kills the daemon (its own: the module's stays up for the others). The
    strict rule's on_failure is drop: within one heartbeat period of the
    kill, its flows stop."""
    lab, d, tmp = own_appliance
    assert curl(lab, f"http://{SERVER_V4}:{DOWN_PORT}/index.html").stdout == "200 6"
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    time.sleep(HEARTBEAT_S * 1.2)
    r = curl(lab, f"http://{SERVER_V4}:{DOWN_PORT}/index.html", timeout=3)
    assert r.returncode != 0
    st = subprocess.run([*MICROSEG, "stats", "--netns", lab.gateway, "--json"], capture_output=True, text=True,
                        env=d.env)
    rows = {x["reason"]: x["packets"] for x in json.loads(st.stdout)["counters"]}
    assert rows.get("DROP_INSPECT_SLOWPATH_DOWN", 0) >= 1
    # ... while a rule without its own failure action follows the
    # configured one (pass): the hold port still serves, uninspected
    assert curl(lab, f"http://{SERVER_V4}:{HOLD_PORT}/index.html").stdout == "200 6"


def test_every_eve_record_passes_suricatas_schema(appliance):
    """Last in the module: everything the module's daemon wrote (alerts,
    http, tls, dns, flow, stats, ...) validates strictly against Suricata's
    own EVE schema and the project's overlay (tests/eve_schemas.py)."""
    from tests.eve_schemas import require_suricata, schema_errors
    require_suricata()
    lab, d, tmp = appliance
    deadline = time.monotonic() + 10 * STATS_S
    while not d.records("stats") and time.monotonic() < deadline:
        time.sleep(0.2)
    records = d.records()
    failures = [f"{r['event_type']}: {e}" for r in records for e in schema_errors(r)[:1]]
    kinds = {r["event_type"] for r in records}
    print(f"\n{len(records) - len(failures)} of {len(records)} records valid; types {sorted(kinds)}")
    assert not failures, f"{len(failures)} of {len(records)} fail:\n" + "\n".join(failures[:20])
    assert {"alert", "http", "tls", "dns", "stats"} <= kinds, kinds
    for a in (r for r in records if r["event_type"] == "alert"):
        assert "flow" in a and "verdict" in a, a
        assert a.get("app_proto") not in ("http", "tls", "dns") or a["app_proto"] in a, a
