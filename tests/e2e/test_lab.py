"""End to end in the lab: real clients through the gateway with the program attached."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

import pytest
from pyroute2 import netns as pr_netns

from appliance.lab import GW_IFACES, NS_PREFIX, SERVER_V4, SERVER_V6, HttpServer, Lab
from datapath import attach
from datapath.enums import Direction, Reason
from datapath.sessions import session_items

pytestmark = pytest.mark.lab

MICROSEG = [sys.executable, "-m", "appliance.cli"]


@pytest.fixture
def lab():
    with Lab() as lab:
        yield lab
    assert not any(n in pr_netns.listnetns() for n in lab.namespaces)


def cli(*args, check=False):
    return subprocess.run([*MICROSEG, *args], capture_output=True, text=True, timeout=120, check=check)


def tc_filters(lab, iface, hook):
    r = lab.run(lab.gateway, ["tc", "-j", "filter", "show", "dev", iface, hook])
    return [f for f in json.loads(r.stdout or "[]") if "options" in f]


def test_curl_and_ping_through_attached_gateway(lab, fastpath):
    attach.attach(fastpath, list(GW_IFACES), lab.gateway)
    try:
        with HttpServer(lab):
            for url in (f"http://{SERVER_V4}:8080/", f"http://[{SERVER_V6}]:8080/"):
                r = lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                         "--max-time", "5", url])
                assert r.stdout == "200"
        for dst in (SERVER_V4, SERVER_V6):
            lab.run(lab.client, ["ping", "-c", "2", "-i", "0.2", "-W", "2", dst])
    finally:
        attach.detach(list(GW_IFACES), lab.gateway)

    counts = fastpath.counters()
    # The program really saw the traffic: forwarded packets were parsed at
    # ingress, and their egress copy was recognised as already handled.
    assert counts[(Direction.DIR_INGRESS, Reason.PASS_FORWARD)][0] >= 20
    assert counts[(Direction.DIR_EGRESS, Reason.PASS_SEEN_AT_INGRESS)][0] >= 20
    assert not any(Reason(r).name.startswith("DROP") for (_, r) in counts)
    tcp = [(k, v) for t, k, v in session_items(fastpath) if t == "ms_flows" and k.proto == 6]
    assert len(tcp) == 2  # one IPv4 and one IPv6 connection
    for _, v in tcp:
        assert v.packets[0] >= 3 and v.packets[1] >= 3


def test_cli_up_status_down_removes_only_ours(lab, tmp_path):
    # An operator's own clsact and filter on gw-c must survive `down`.
    lab.run(lab.gateway, ["tc", "qdisc", "add", "dev", "gw-c", "clsact"])
    lab.run(lab.gateway, ["tc", "filter", "add", "dev", "gw-c", "ingress", "prio", "1",
                          "u32", "match", "u32", "0", "0"])

    # clsact forced (the default is tcx where the kernel has it: tests/e2e/test_tcx_lab.py).
    (tmp_path / "clsact.yaml").write_text("attach: {mode: clsact}\n")
    r = cli("up", "--netns", lab.gateway, "--iface", *GW_IFACES, "--config", str(tmp_path / "clsact.yaml"))
    assert r.returncode == 0, r.stderr
    for iface in GW_IFACES:
        for hook in ("ingress", "egress"):
            ours = [f for f in tc_filters(lab, iface, hook) if f.get("kind") == "bpf"]
            assert len(ours) == 1 and ours[0]["options"]["bpf_name"].startswith("microseg:")

    st = json.loads(cli("status", "--netns", lab.gateway, "--json", check=True).stdout)
    assert sorted((a["iface"], a["direction"]) for a in st["attached"]) == sorted(
        (i, d) for i in GW_IFACES for d in ("DIR_INGRESS", "DIR_EGRESS"))
    (prog,) = {a["prog_id"] for a in st["attached"] if a["direction"] == "DIR_INGRESS"}
    maps = {m["name"]: m for m in st["maps"] if prog in m["prog_ids"]}   # each map once
    assert maps["ms_flows4"]["max_entries"] == 524288
    assert maps["ms_flows4"]["memlock_bytes"] > 0 and maps["ms_flows6"]["memlock_bytes"] > 0

    # Traffic passes with the programs attached by the CLI (process gone).
    lab.run(lab.client, ["ping", "-c", "1", "-W", "2", SERVER_V4])

    r = cli("down", "--netns", lab.gateway, "--iface", *GW_IFACES)
    assert r.returncode == 0, r.stderr
    assert "removed 4" in r.stdout
    left = tc_filters(lab, "gw-c", "ingress")
    assert {f["kind"] for f in left} == {"u32"}
    assert tc_filters(lab, "gw-c", "egress") == []
    qd = lab.run(lab.gateway, ["tc", "qdisc", "show", "dev", "gw-c"]).stdout
    assert "clsact" in qd  # the operator's qdisc stays
    qd = lab.run(lab.gateway, ["tc", "qdisc", "show", "dev", "gw-s"]).stdout
    assert "clsact" not in qd  # ours, now empty, is gone
    st = json.loads(cli("status", "--netns", lab.gateway, "--json", check=True).stdout)
    assert st["attached"] == []


def test_up_again_replaces_without_a_gap(lab):
    assert cli("up", "--netns", lab.gateway, "--iface", "gw-c").returncode == 0
    first = attach.attached(lab.gateway)
    seen_counts = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen_counts.append(len([a for a in attach.attached(lab.gateway) if a.iface == "gw-c"]))

    t = threading.Thread(target=watch)
    t.start()
    try:
        for _ in range(2):
            r = cli("up", "--netns", lab.gateway, "--iface", "gw-c")
            assert r.returncode == 0, r.stderr
    finally:
        stop.set()
        t.join()
    second = attach.attached(lab.gateway)
    assert len(second) == 2
    assert {a.prog_id for a in second}.isdisjoint({a.prog_id for a in first})
    # Every look during the re-attach found both programs in place.
    assert seen_counts and min(seen_counts) == 2
    cli("down", "--netns", lab.gateway, "--iface", "gw-c", check=True)


def test_demo_runs_and_cleans_up(tmp_path):
    eve = tmp_path / "demo-eve.json"
    r = cli("lab", "demo", "--eve", str(eve))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS_FORWARD" in r.stdout and "demo finished" in r.stdout
    assert "tcp" in r.stdout  # sessions table lists the curl connections
    # inspection acting: each attack stopped, with its alert, and its session's verdict
    for what, sid in (("a SQL injection", 100001), ("a card number posted", 200001),
                      ("a blocked name (Host: evil.example)", 300001)):
        assert f"    {what}: stopped" in r.stdout
        assert re.search(rf"^    {re.escape(what)}: blocked by signature {sid} ", r.stdout, re.M), r.stdout
    assert len(re.findall(r"rule=web\(\d+\) inspect=BLOCKED", r.stdout)) == 3
    # where the EVE went: the file asked for, kept, holding those alerts
    m = re.search(r"EVE: (\d+) records went to (\S+) \(", r.stdout)
    assert m and m.group(2) == str(eve)
    records = [json.loads(line) for line in eve.read_text().splitlines()]
    assert len(records) == int(m.group(1))
    assert {x["src_port"] for x in records if x["event_type"] == "alert"} == {45001, 45002, 45003}
    # the demo's own files are gone
    files = re.search(r"files \(policy, rules, run configuration, daemon log\): (\S+)", r.stdout)
    assert files and not os.path.exists(files.group(1))
    # Only the demo's own namespaces (it prints their names) are looked at:
    # other work on the machine may create and remove its own meanwhile.
    m = re.search(r"namespaces: (.+)", r.stdout)
    assert m, r.stdout
    created = [n.strip() for n in m.group(1).split(",")]
    assert len(created) == 3 and all(n.startswith(NS_PREFIX) for n in created)
    assert not set(created) & set(pr_netns.listnetns())
