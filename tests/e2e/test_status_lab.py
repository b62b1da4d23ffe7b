"""`microseg status` with a live `microseg run` of two slow-path workers:
the daemon (pid, config), each worker (pid, heartbeat age, ring use),
where the metrics listen and in which namespace, and each map once with
its type by name. `microseg sessions` on the same daemon: each inspected
session's verdict by name and its rule's name."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from appliance.lab import SERVER_V4, HttpServer
from labrun import MICROSEG, running_daemon, wait_for, workers_running

pytestmark = pytest.mark.lab

METRICS = "127.0.0.1:19479"      # inside the lab gateway's namespace
POLICY = """
groups:
  clients: [10.77.1.0/24]
  servers: [10.77.2.0/24]
defaults: {ingress: deny, egress: deny}
rules:
  - {name: web, from: clients, to: servers, proto: tcp, ports: [8080], action: inspect,
     inspect: {what: [waf], mode: hold}}
"""
SQLI = "/?id=1%27%20UNION%20SELECT%20password%20FROM%20users--"


def status(netns: str, *extra: str, cmd: str = "status") -> subprocess.CompletedProcess:
    r = subprocess.run([*MICROSEG, cmd, "--netns", netns, *extra], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def test_status_shows_the_daemon_its_workers_and_each_map_once(lab, tmp_path: Path):
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "rules.yaml").write_text("waf:\n  sets: {sqli: block}\n")
    log = tmp_path / "run.log"
    with running_daemon(lab, tmp_path, slowpath={"workers": 2}, metrics={"listen": METRICS}) as run:
        started = wait_for("two workers", lambda: len(workers_running(log)) == 2 and workers_running(log))

        def two_beating():
            st = json.loads(status(lab.gateway, "--json").stdout)
            w = st["slowpath"]["workers"]
            return st if len(w) == 2 and all(x["pid"] == started[x["worker"]] for x in w) else None
        st = wait_for("both workers in status", two_beating)

        d = st["slowpath"]["daemon"]
        assert d["pid"] == run.pid and d["config"] == str(tmp_path / "run.yaml") and d["workers"] == 2
        assert d["metrics"]["listen"] == METRICS and d["metrics"]["netns"] == lab.gateway
        for w in st["slowpath"]["workers"]:
            assert w["started_pid"] == started[w["worker"]]
            assert 0 <= w["heartbeat_age_s"] < 60         # beating (its period is a third of the timeout)
            assert w["ring"]["size_bytes"] > 0 and 0 <= w["ring"]["pending_bytes"] <= w["ring"]["size_bytes"]
        # each map once (the ingress and egress programs share them), types by name
        ids = [m["id"] for m in st["maps"]]
        assert len(ids) == len(set(ids))
        assert len({m["name"] for m in st["maps"]}) == len(ids)
        assert all(not m["type"].isdigit() for m in st["maps"])
        types = {m["name"]: m["type"] for m in st["maps"]}
        assert types["ms_insp_rings"] == "array_of_maps"
        assert types["ms_flows4"] == "hash" and types["ms_slowpath"] == "array"
        assert {len(m["prog_ids"]) for m in st["maps"] if m["name"] == "ms_flows4"} == {2}

        text = status(lab.gateway).stdout
        assert f"microseg run: pid {run.pid}, config {tmp_path / 'run.yaml'}" in text
        assert f"metrics: http://{METRICS}/metrics (in network namespace {lab.gateway})" in text
        for i, pid in started.items():
            assert re.search(rf"^\s+{i}\s+{pid}\s+\d+\.\d s\s+", text, re.M), text
        maps_text = text.split("\nmaps, each once")[1]
        assert len(re.findall(r"^\s+ms_flows4\s", maps_text, re.M)) == 1
        assert re.search(r"^\s+ms_insp_rings\s+\d+\s+array_of_maps\s", maps_text, re.M)

        # sessions: the inspected flows' verdicts by name, the rule by name
        with HttpServer(lab):
            for sport, path in ((43000, "/"), (43001, SQLI)):
                lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "--max-time", "3", "--local-port", str(sport),
                                     f"http://{SERVER_V4}:8080{path}"], check=False)

            def inspected():
                got = json.loads(status(lab.gateway, "--json", "--port", "8080", cmd="sessions").stdout)
                by_port = {x["sport"]: x for x in got["sessions"]}
                return by_port if {43000, 43001} <= set(by_port) and by_port[43001]["inspection"] == "BLOCKED" \
                    else None
            by_port = wait_for("the blocked session", inspected)
            for x in by_port.values():
                assert (x["rule"], x["rule_id"]) == ("web", by_port[43001]["rule_id"]) and x["rule_id"] > 0
            assert by_port[43000]["inspection"] in ("PENDING", "RELEASED", "DONE")
            text = status(lab.gateway, "--port", "8080", cmd="sessions").stdout
            line = next(ln for ln in text.splitlines() if "sport=43001" in ln)
            assert f"rule=web({by_port[43001]['rule_id']}) inspect=BLOCKED" in line
            # held, reset by the slow path: the client sent nothing after, so the block waits in ms_verdicts
            assert by_port[43001]["verdict_waiting"] == ("verdict waiting" in line)
    # the daemon gone: status says so, and its workers' heartbeats are stopped
    # (running_daemon detached the programs on the way out, so nothing is attached)
    st = json.loads(status(lab.gateway, "--json").stdout)
    assert st["slowpath"]["daemon"] is None
