"""`microseg run`'s SIGHUP reload keeps the applied-policy record true.

The stored copy of the applied policy (appliance/policyfile.py) is what
`policy explain` / `policy diff` without a file, `status` and the next `up`
without --policy read. A reload that applies a new policy must record it as
the bring-up does; a reload whose policy file is broken applies nothing and
must leave the record alone.

The run directory is the test's own (MICROSEG_RUN in the environment the
daemon, `policy explain` and `down` inherit).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.lab import CLIENT_V4, SERVER_V4, Lab
from labrun import running_daemon

pytestmark = pytest.mark.lab

MICROSEG = [sys.executable, "-m", "appliance.cli"]
PORT = 9411
WAIT_S = 60.0   # bound of every wait on a condition (a reload compiles the policy)

HEAD = """\
groups:
  clients: [10.77.1.0/24]
  servers: [10.77.2.0/24]
defaults: {ingress: deny, egress: deny}
rules:
"""
POLICY_A = HEAD + f"  - {{name: a-allows, from: clients, to: servers, proto: tcp, ports: [{PORT}], action: allow}}\n"
POLICY_B = HEAD + f"  - {{name: b-denies, from: clients, to: servers, proto: tcp, ports: [{PORT}], action: deny}}\n"
BROKEN = HEAD + "  - {name: broken, from: nowhere, to: servers, proto: tcp, ports: [1], action: allow}\n"


def wait_for(cond, what: str):
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def explain(lab: Lab) -> dict:
    """`policy explain` of a client -> server flow on PORT from the record."""
    r = subprocess.run([*MICROSEG, "policy", "explain", CLIENT_V4, SERVER_V4, "tcp", str(PORT),
                        "--netns", lab.gateway, "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def reload(run: subprocess.Popen, tmp: Path, n: int) -> str:
    """SIGHUP, then the daemon's log once it says reload ``n`` is done."""
    run.send_signal(signal.SIGHUP)
    wait_for(lambda: f"reload {n} done" in (tmp / "run.log").read_text(), f"reload {n} done")
    return (tmp / "run.log").read_text()


def test_a_reload_records_the_policy_it_applied_and_a_failed_one_leaves_the_record(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setenv("MICROSEG_RUN", str(run_dir))
    (tmp_path / "policy.yaml").write_text(POLICY_A)
    (tmp_path / "rules.yaml").write_text("{}\n")
    with Lab() as lab, running_daemon(lab, tmp_path) as run:
        before = explain(lab)
        assert (before["action"], before["rule"]["name"]) == ("allow", "a-allows"), before
        assert before["notes"] == [], before

        (tmp_path / "policy.yaml").write_text(POLICY_B)
        log = reload(run, tmp_path, 1)
        assert "reload: policy" in log and "in force" in log, log
        after = explain(lab)
        assert (after["action"], after["rule"]["name"]) == ("deny", "b-denies"), after
        # the record names the generation the kernel holds: no "holds
        # generation N, not the stored copy's" note
        assert after["notes"] == [], after

        (tmp_path / "policy.yaml").write_text(BROKEN)
        log = reload(run, tmp_path, 2)
        assert "reload: policy not applied" in log, log
        kept = explain(lab)
        assert (kept["action"], kept["rule"]["name"]) == ("deny", "b-denies"), kept
        assert kept["notes"] == [], kept
        assert kept["policy"] == after["policy"], (kept, after)
