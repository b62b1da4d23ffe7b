"""Upgrades under load: ten `microseg up` runs (each a new build loaded,
verified and put in place of the running one with a netlink replace,
reusing the pinned sessions) while an iperf3 stream and a ping flood cross
the lab gateway. No connection may be lost, and no more pings than in a
run of the same length without upgrades.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from appliance.lab import GW_IFACES, SERVER_V4, Lab

pytestmark = pytest.mark.lab

MICROSEG = [sys.executable, "-m", "appliance.cli"]
UPGRADES = 10
POLICY = """
groups:
  clients: [10.77.1.0/24]
  servers: [10.77.2.0/24]
defaults: {ingress: deny, egress: deny}
rules:
  - {name: iperf, from: clients, to: servers, proto: tcp, ports: [5201], action: allow}
  - {name: ping, from: clients, to: servers, proto: icmp, action: allow}
"""


def cli(*args, run_dir, check=True):
    r = subprocess.run([*MICROSEG, *args], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, MICROSEG_RUN=str(run_dir)))
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def load(lab, seconds: float):
    """Start an iperf3 stream and a ping flood lasting ``seconds``."""
    iperf = lab.popen(lab.client, ["iperf3", "-c", SERVER_V4, "-t", str(int(seconds)), "-J", "-b", "2G"],
                      stdout=subprocess.PIPE, text=True)
    # -i 0.01 (what an unprivileged flood would be) keeps the rate the same
    # in both runs; -f adapts its rate to the replies and would not.
    ping = lab.popen(lab.client, ["ping", "-q", "-i", "0.002", "-w", str(int(seconds)), SERVER_V4],
                     stdout=subprocess.PIPE, text=True)
    return iperf, ping


def finish(iperf, ping, seconds):
    out, _ = iperf.communicate(timeout=seconds + 60)
    pout, _ = ping.communicate(timeout=seconds + 60)
    res = json.loads(out)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", pout)
    assert m, pout
    return iperf.returncode, res, int(m.group(1)), int(m.group(2))


def test_ten_upgrades_under_load_lose_nothing(tmp_path):
    run = tmp_path / "run"
    pol = tmp_path / "policy.yaml"
    pol.write_text(POLICY)
    with Lab() as lab:
        server = lab.popen(lab.server, ["iperf3", "-s", "-B", SERVER_V4])
        try:
            time.sleep(0.5)
            t = time.monotonic()
            cli("up", "--netns", lab.gateway, "--iface", *GW_IFACES, "--policy", str(pol), run_dir=run)
            # The load lasts as long as the upgrades take (one timed above),
            # with a margin; the baseline then runs just as long.
            took = int((time.monotonic() - t) * UPGRADES * 1.3) + 5
            iperf, ping = load(lab, took)
            time.sleep(1)
            outputs = []
            for _ in range(UPGRADES):
                outputs.append(cli("up", "--netns", lab.gateway, "--iface", *GW_IFACES, run_dir=run).stdout)
            rc, res, sent, got = finish(iperf, ping, took)
            assert all("state: reused" in o for o in outputs), outputs[0]
            assert rc == 0 and "error" not in res, res.get("error")
            assert res["end"]["sum_received"]["bytes"] > 0
            upgrade_loss = (sent - got) / sent

            iperf, ping = load(lab, took)
            rc_b, res_b, sent_b, got_b = finish(iperf, ping, took)
            assert rc_b == 0, res_b.get("error")
            base_loss = (sent_b - got_b) / sent_b
            print(f"\n  pings lost: {sent - got} of {sent} during {UPGRADES} upgrades, "
                  f"{sent_b - got_b} of {sent_b} without; iperf3 {res['end']['sum_received']['bits_per_second']/1e9:.2f}"
                  f" vs {res_b['end']['sum_received']['bits_per_second']/1e9:.2f} Gbit/s")
            # "no more than 0 % beyond the baseline": every ping the baseline
            # got through, the upgrade run got through too (rounding to the
            # ping a run of this length sends in a millisecond).
            assert upgrade_loss <= base_loss + 1 / sent, (sent - got, sent, sent_b - got_b, sent_b)
        finally:
            server.kill()
            server.wait(5)
            cli("down", "--netns", lab.gateway, "--iface", *GW_IFACES, run_dir=run, check=False)
