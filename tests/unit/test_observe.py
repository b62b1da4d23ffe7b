"""What the appliance says about itself without a kernel: `microseg
--version`, map types by name, the slow-path section of `microseg status`
(from an owner record and worker slots), and `microseg sessions`' rule
names and inspection verdicts."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance import policyfile as pf
from appliance.commands import observe
from datapath import attach, owner, sessions
from datapath.kernelstate import map_type_name

ROOT = Path(__file__).resolve().parents[2]
POLICY = """
groups:
  clients: [10.1.0.0/24]
  servers: [10.2.0.0/24]
defaults: {ingress: deny, egress: deny}
rules:
  - {name: web, from: clients, to: servers, proto: tcp, ports: [80], action: inspect, inspect: {what: [waf]}}
  - {from: clients, to: servers, proto: tcp, ports: [22], action: allow}
  - {name: dns, from: clients, to: servers, proto: udp, ports: [53], action: allow}
"""


def test_version_is_the_package_version_on_one_line():
    want = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "--version"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout == f"microseg {want}\n"


def test_map_types_by_name():
    assert [map_type_name(t) for t in (1, 2, 9, 12, 27, 30)] == [
        "hash", "array", "lru_hash", "array_of_maps", "ringbuf", "bloom_filter"]
    assert map_type_name(4242) == "4242"         # a type neither BCC nor bpfsys knows: its number


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(attach, "RUN_DIR", tmp_path)
    return tmp_path


def slot(i, pid, age, pending=0, size=8 << 20):
    return {"worker": i, "pid": pid, "heartbeat_age_s": age, "ring": {"pending_bytes": pending, "size_bytes": size}}


def test_slowpath_status_from_the_owner_record_and_the_slots(run_dir):
    progs = {7: {"slowpath_workers": [slot(0, 101, 0.4, 4096), slot(1, None, None), slot(2, 103, 0.1)]}}
    assert observe._daemon_status("ns1", progs) == {"daemon": None, "workers": progs[7]["slowpath_workers"]}
    with owner.NamespaceLock("ns1") as lock:
        lock.acquire(owner.DAEMON, config="/etc/microseg/run.yaml")
        lock.write(workers=2, worker_pids={"0": 101, "1": 102},
                   metrics={"listen": "127.0.0.1:9477", "url": "http://127.0.0.1:9477/metrics", "netns": "ns1"})
        sp = observe._daemon_status("ns1", progs)
    d = sp["daemon"]
    assert (d["pid"], d["config"], d["workers"]) == (os.getpid(), "/etc/microseg/run.yaml", 2)
    # slot 2 is beyond the daemon's workers: not shown as one of them
    assert [(w["worker"], w["pid"], w["started_pid"]) for w in sp["workers"]] == [(0, 101, 101), (1, None, 102)]
    text = observe.format_slowpath(sp)
    assert f"microseg run: pid {os.getpid()}, config /etc/microseg/run.yaml" in text
    assert "metrics: http://127.0.0.1:9477/metrics (in network namespace ns1)" in text
    rows = [ln.split() for ln in text.splitlines() if ln.strip()[:1].isdigit()]
    assert rows[0][:4] == ["0", "101", "0.4", "s"] and rows[0][4:6] == ["4.0", "KiB"]
    assert rows[1][:3] == ["1", "-", "stopped"]


def test_slowpath_status_without_metrics_or_daemon():
    assert "metrics: off" in observe.format_slowpath(
        {"daemon": {"pid": 1, "workers": 1, "metrics": None}, "workers": []})
    assert "no `microseg run` daemon" in observe.format_slowpath({"daemon": None, "workers": []})
    assert "cannot read the workers' maps: gone" in observe.format_slowpath(
        {"daemon": None, "workers": {"error": "gone"}})


def test_inspection_verdict_by_name_only_for_inspected_flows():
    inspect, allow = pf.POL["POL_INSPECT"], pf.POL["POL_ALLOW"]
    assert [sessions.inspection_name(inspect, s) for s in range(4)] == ["PENDING", "RELEASED", "DONE", "BLOCKED"]
    assert sessions.inspection_name(allow, 3) == ""        # insp_state means nothing on an allowed flow


def session(rule_id, inspection="", waiting=False):
    return sessions.Session("ms_flows", "tcp", 6, "ESTABLISHED", "10.1.0.2", 40000, "10.2.0.2", 80, 30.0,
                            3, 200, 2, 100, rule_id=rule_id, inspection=inspection, verdict_waiting=waiting)


def test_session_lines_name_the_rule_and_the_verdict():
    listing = sessions.Listing([session(1, "BLOCKED", True), session(2), session(0)], 3, 0, {"ms_flows": 3})
    sessions.with_rule_names(listing, {1: "web", 3: "dns"})
    a, b, c = (sessions.format_session(s) for s in listing.sessions)
    assert a.endswith(" rule=web(1) inspect=BLOCKED (verdict waiting for the next packet)")
    assert b.endswith(" rule=2")                # an unnamed rule: its id
    assert "rule=" not in c and "inspect=" not in c
    assert listing.sessions[0].as_dict()["rule"] == "web"


def test_applied_rule_names_stored_or_compiled_again(run_dir, tmp_path):
    src = tmp_path / "policy.yaml"
    src.write_text(POLICY)
    model, pol = pf.compile_text(POLICY, src)
    names = pf.rule_names(pol)
    assert sorted(names.values()) == ["dns", "web"]
    pf.store_applied("ns1", POLICY, str(src), [], pf.summary(model, pol), names)
    assert pf.applied_rule_names("ns1") == names
    pf.store_applied("ns2", POLICY, str(src), [], pf.summary(model, pol))     # a record from before names
    assert pf.applied_rule_names("ns2") == names
    assert pf.applied_rule_names("ns3") == {}                                  # nothing applied
