"""`microseg deploy` and `microseg rollback` in the lab, with traffic.

Each gate is made to fail on purpose; the rollback must leave the previous
build (the same program ids) on every interface and the previous policy
applied, and traffic must flow as before. A deploy that passes its gates
leaves the new build everywhere, and `microseg rollback` brings the old one
back on demand.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from appliance.lab import GW_IFACES, SERVER_V4, Lab

pytestmark = pytest.mark.lab

MICROSEG = [sys.executable, "-m", "appliance.cli"]
ALLOW = """
groups:
  clients: [10.77.1.0/24]
  servers: [10.77.2.0/24]
defaults: {ingress: deny, egress: deny}
rules:
  - {name: ping, from: clients, to: servers, proto: icmp, action: allow}
  - {name: web, from: clients, to: servers, proto: tcp, ports: [8080], action: allow}
"""
NO_PING = ALLOW.replace("action: allow}\n  - {name: web", "action: deny}\n  - {name: web", 1)


def cli(*args, run_dir, check=True):
    r = subprocess.run([*MICROSEG, *args], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, MICROSEG_RUN=str(run_dir)))
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def builds(lab, run):
    st = json.loads(cli("status", "--netns", lab.gateway, "--json", run_dir=run).stdout)
    return {(a["iface"], a["direction"]): a["prog_id"] for a in st["attached"]}


@pytest.fixture
def lab_up(tmp_path):
    run = tmp_path / "run"
    (tmp_path / "allow.yaml").write_text(ALLOW)
    (tmp_path / "no-ping.yaml").write_text(NO_PING)
    with Lab() as lab:
        try:
            cli("up", "--netns", lab.gateway, "--iface", *GW_IFACES, "--policy", str(tmp_path / "allow.yaml"),
                run_dir=run)
            yield lab, run, tmp_path
        finally:
            cli("down", "--netns", lab.gateway, "--iface", *GW_IFACES, run_dir=run, check=False)


def pinging(lab, seconds):
    return lab.popen(lab.client, ["ping", "-q", "-i", "0.01", "-w", str(seconds), SERVER_V4],
                     stdout=subprocess.PIPE, text=True)


def ping_ok(lab):
    return lab.run(lab.client, ["ping", "-c", "3", "-i", "0.2", "-W", "1", SERVER_V4], check=False).returncode == 0


def deploy(lab, run, *extra):
    return cli("deploy", "--netns", lab.gateway, "--iface", *GW_IFACES, "--soak", "2", *extra,
               run_dir=run, check=False)


def assert_rolled_back(lab, run, before, policy_text):
    assert builds(lab, run) == before
    assert (run / lab.gateway / "policy.yaml").read_text() == policy_text
    assert ping_ok(lab)


def test_drop_gate_fails_and_rolls_back(lab_up):
    lab, run, tmp = lab_up
    before = builds(lab, run)
    p = pinging(lab, 30)
    try:
        r = deploy(lab, run, "--policy", str(tmp / "no-ping.yaml"))
    finally:
        p.kill()
    assert r.returncode == 3, r.stdout + r.stderr
    assert "gate failed: drops:" in r.stdout and "rolled back" in r.stderr and "Traceback" not in r.stderr
    assert_rolled_back(lab, run, before, ALLOW)


def test_traffic_gate_fails_and_rolls_back(lab_up):
    lab, run, tmp = lab_up
    before = builds(lab, run)
    r = deploy(lab, run, "--min-packets", "1000")
    assert r.returncode == 3 and "gate failed: traffic:" in r.stdout, r.stdout + r.stderr
    assert_rolled_back(lab, run, before, ALLOW)


class _Metrics(http.server.BaseHTTPRequestHandler):
    """A slow path whose verdicts got slow: every scrape reports 100 more
    verdicts, all in the 1 s bucket."""
    scrapes = 0

    def do_GET(self):
        type(self).scrapes += 1
        n = 100 * type(self).scrapes
        lines = ["# TYPE microseg_verdict_latency_seconds histogram"]
        for le in ("0.001", "0.01", "0.1"):
            lines.append(f'microseg_verdict_latency_seconds_bucket{{le="{le}"}} 5.0')
        for le in ("1.0", "+Inf"):
            lines.append(f'microseg_verdict_latency_seconds_bucket{{le="{le}"}} {n + 5}.0')
        lines += [f"microseg_verdict_latency_seconds_count {n + 5}.0", "microseg_verdict_latency_seconds_sum 1.0"]
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_verdict_latency_gate_fails_and_rolls_back(lab_up):
    lab, run, tmp = lab_up
    before = builds(lab, run)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    p = pinging(lab, 30)
    try:
        r = deploy(lab, run, "--max-verdict-p99-ms", "50", "--metrics", f"http://127.0.0.1:{srv.server_port}/")
    finally:
        p.kill()
        srv.shutdown()
    assert r.returncode == 3 and "gate failed: verdict latency: p99 1000 ms" in r.stdout, r.stdout + r.stderr
    assert_rolled_back(lab, run, before, ALLOW)


def test_deploy_passes_then_rollback_on_demand(lab_up):
    lab, run, tmp = lab_up
    before = builds(lab, run)
    p = pinging(lab, 40)
    try:
        r = deploy(lab, run, "--canary", "gw-s")
        out = r.stdout
        assert r.returncode == 0, out + r.stderr
        assert "4/5 canary on gw-s" in out and "5/5 rollout 1/1 on gw-c" in out and "done:" in out
        after = builds(lab, run)
        assert set(after.values()).isdisjoint(before.values())          # a new build everywhere
        assert len({after[(i, "DIR_INGRESS")] for i in GW_IFACES}) == 1
        assert ping_ok(lab)
        r = cli("rollback", "--netns", lab.gateway, run_dir=run)
        assert "rolled back gw-c ingress" in r.stdout
        assert builds(lab, run) == before and ping_ok(lab)
    finally:
        p.kill()


def modes(lab, run):
    st = json.loads(cli("status", "--netns", lab.gateway, "--json", run_dir=run).stdout)
    return {(a["iface"], a["direction"]): a["mode"] for a in st["attached"]}


def test_deploy_moves_a_clsact_deployment_to_tcx_and_rollback_moves_it_back(tmp_path):
    """A deployment made with `attach: {mode: clsact}` deployed with the
    default setting (tcx on this kernel): a failed gate at the canary puts
    the old build back in clsact mode (no link of ours left); a passing
    deploy leaves tcx everywhere, and `rollback` returns to the old build
    in clsact mode."""
    from datapath import attach, pins, probes
    if not probes.tcx()[0]:
        pytest.skip("the kernel has no tcx hooks (6.6+)")
    run = tmp_path / "run"
    (tmp_path / "allow.yaml").write_text(ALLOW)
    (tmp_path / "clsact.yaml").write_text("attach: {mode: clsact}\n")
    with Lab() as lab:
        links = pins.ns_dir(lab.gateway) / attach.LINKS_DIR
        try:
            cli("up", "--netns", lab.gateway, "--iface", *GW_IFACES, "--policy", str(tmp_path / "allow.yaml"),
                "--config", str(tmp_path / "clsact.yaml"), run_dir=run)
            before = builds(lab, run)
            assert set(modes(lab, run).values()) == {"clsact"}

            r = deploy(lab, run, "--min-packets", "1000000", "--canary", "gw-s")
            assert r.returncode == 3 and "4/5 canary on gw-s: gate failed: traffic:" in r.stdout, r.stdout + r.stderr
            assert builds(lab, run) == before and set(modes(lab, run).values()) == {"clsact"}
            assert not links.exists() and ping_ok(lab)

            p = pinging(lab, 40)
            try:
                r = deploy(lab, run)
                assert r.returncode == 0, r.stdout + r.stderr
                assert set(modes(lab, run).values()) == {"tcx"}
                assert set(builds(lab, run).values()).isdisjoint(before.values()) and ping_ok(lab)
                cli("rollback", "--netns", lab.gateway, run_dir=run)
                assert builds(lab, run) == before and set(modes(lab, run).values()) == {"clsact"}
                assert not links.exists() and ping_ok(lab)
            finally:
                p.kill()
        finally:
            cli("down", "--netns", lab.gateway, "--iface", *GW_IFACES, run_dir=run, check=False)
