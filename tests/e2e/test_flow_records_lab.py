"""Every session gets an EVE flow record from `microseg run`, also when no
inspection runs: a curl through an allow rule is logged when it closes,
with the kernel's counters (checked against the client's own IP counters),
and an unanswered UDP datagram is logged when the sweeper removes its
session (short timeouts in the run configuration)."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from appliance.lab import CLIENT_V4, SERVER_V4, HttpServer, Lab
from labrun import STOP_WAIT_S, running_daemon, wait_for, workers_running
from tests.eve_schemas import schema_errors

pytestmark = pytest.mark.lab

HTTP_PORT, UDP_PORT = 8080, 5353
WAIT_S = 60.0          # bound of every wait on a condition
ETH_HEADER = 14        # the kernel counts skb->len at tc: the frame, Ethernet header included

POLICY = f"""\
groups:
  clients: [10.77.1.0/24]
  servers: [10.77.2.0/24]
defaults: {{ingress: deny, egress: deny}}
rules:
  - {{name: web, from: clients, to: servers, proto: tcp, ports: [{HTTP_PORT}], action: allow}}
  - {{name: mdns, from: clients, to: servers, proto: udp, ports: [{UDP_PORT}], action: allow}}
"""
UDP_SINK = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(('{SERVER_V4}', {UDP_PORT}))\ntime.sleep(120)\n")
UDP_SEND = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(('{CLIENT_V4}', 40999))\ns.sendto(b'x' * 32, ('{SERVER_V4}', {UDP_PORT}))\n")


def flow_records(eve: Path, **match) -> list[dict]:
    if not eve.exists():
        return []
    out = []
    for line in eve.read_text().splitlines():
        r = json.loads(line)
        if r.get("event_type") == "flow" and all(r.get(k) == v for k, v in match.items()):
            out.append(r)
    return out


def wait_records(eve: Path, **match) -> list[dict]:
    deadline = time.monotonic() + WAIT_S
    while not (got := flow_records(eve, **match)):
        assert time.monotonic() < deadline, f"no flow record {match} in {eve}"
        time.sleep(0.05)
    return got


def ip_counters(lab: Lab) -> dict[str, int]:
    """The client namespace's IPv4 counters (nstat, absolute)."""
    r = lab.run(lab.client, ["nstat", "-asz", "--json"])
    kernel = json.loads(r.stdout)["kernel"]
    return {k: int(kernel[k]) for k in ("IpInReceives", "IpOutRequests", "IpExtInOctets", "IpExtOutOctets")}


def flowvar(rec: dict, name: str):
    return next((v[name] for v in rec.get("metadata", {}).get("flowvars", []) if name in v), None)


def test_sessions_through_allow_rules_are_logged(tmp_path):
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "rules.yaml").write_text("{}\n")
    eve = tmp_path / "eve.json"
    with Lab() as lab, HttpServer(lab, HTTP_PORT), \
            running_daemon(lab, tmp_path, sweep_interval_s=0.5,
                           datapath={"timeouts": {"udp_unreplied": 1.0}}):
        sink = lab.popen(lab.server, ["/usr/bin/python3", "-c", UDP_SINK])
        try:
            before = ip_counters(lab)
            r = lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                                     "--max-time", "10", f"http://{SERVER_V4}:{HTTP_PORT}/"])
            assert r.stdout.split()[0] == "200", r
            (rec,) = wait_records(eve, src_ip=CLIENT_V4, dest_port=HTTP_PORT)
            after = ip_counters(lab)
            f = rec["flow"]
            # the client's own counts of this namespace's only IPv4 traffic
            sent, got = after["IpOutRequests"] - before["IpOutRequests"], after["IpInReceives"] - before["IpInReceives"]
            assert (f["pkts_toserver"], f["pkts_toclient"]) == (sent, got), (rec, before, after)
            assert f["bytes_toserver"] == after["IpExtOutOctets"] - before["IpExtOutOctets"] + ETH_HEADER * sent
            assert f["bytes_toclient"] == after["IpExtInOctets"] - before["IpExtInOctets"] + ETH_HEADER * got
            assert (f["state"], f["reason"], f["action"], f["alerted"]) == ("closed", "timeout", "pass", False)
            assert flowvar(rec, "end_reason") == "closed" and flowvar(rec, "policy_action") == "allow"
            assert rec["metadata"]["flowints"]["rule_id"] == 1 and rec["community_id"].startswith("1:")
            assert schema_errors(rec) == []

            lab.run(lab.client, ["/usr/bin/python3", "-c", UDP_SEND])
            (udp,) = wait_records(eve, src_ip=CLIENT_V4, dest_port=UDP_PORT)
            assert flowvar(udp, "end_reason") == "swept", udp
            assert (udp["proto"], udp["src_port"], udp["flow"]["state"], udp["flow"]["reason"]) == \
                ("UDP", 40999, "new", "timeout")
            assert (udp["flow"]["pkts_toserver"], udp["flow"]["pkts_toclient"]) == (1, 0)
            assert udp["flow"]["bytes_toserver"] == ETH_HEADER + 20 + 8 + 32
            assert schema_errors(udp) == []
        finally:
            sink.kill()
            sink.wait(5)
    # one record per session, also after the daemon stopped (nothing logged twice)
    assert len(flow_records(eve, src_ip=CLIENT_V4, dest_port=HTTP_PORT)) == 1
    assert len(flow_records(eve, src_ip=CLIENT_V4, dest_port=UDP_PORT)) == 1


INSPECT_POLICY = f"""\
groups:
  clients: [10.77.1.0/24]
  servers: [10.77.2.0/24]
defaults: {{ingress: deny, egress: deny}}
rules:
  - {{name: web, from: clients, to: servers, proto: tcp, ports: [{HTTP_PORT}], action: inspect,
     inspect: {{what: [waf, dpi], mode: async}}}}
"""
INSPECTED = 12      # sessions over two workers: all on one has a chance of 2 ** -11


def test_inspected_sessions_get_one_record_each_from_their_worker(tmp_path):
    (tmp_path / "policy.yaml").write_text(INSPECT_POLICY)
    (tmp_path / "rules.yaml").write_text("{}\n")
    eve = tmp_path / "eve.json"
    ports = range(43000, 43000 + INSPECTED)
    with Lab() as lab, HttpServer(lab, HTTP_PORT), running_daemon(lab, tmp_path, slowpath={"workers": 2}):
        for p in ports:
            r = lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                                     "--local-port", str(p), f"http://{SERVER_V4}:{HTTP_PORT}/"])
            assert r.stdout == "200", r
        deadline = time.monotonic() + WAIT_S
        while {r["src_port"] for r in flow_records(eve, dest_port=HTTP_PORT)} != set(ports):
            assert time.monotonic() < deadline, flow_records(eve, dest_port=HTTP_PORT)
            time.sleep(0.05)
    records = [json.loads(line) for line in eve.read_text().splitlines()]
    http_ids = {r["src_port"]: r["flow_id"] for r in records if r["event_type"] == "http"}
    flows = [r for r in records if r["event_type"] == "flow" and r.get("dest_port") == HTTP_PORT]
    assert sorted(r["src_port"] for r in flows) == list(ports)       # one each, also after the stop
    for r in flows:
        # written by the session's worker: its engine's flow id (the http record's) and protocol
        assert (r["flow_id"], r["app_proto"]) == (http_ids[r["src_port"]], "http"), r
        assert flowvar(r, "end_reason") == "closed" and flowvar(r, "policy_action") == "inspect"
        assert r["flow"]["pkts_toserver"] >= 5 and r["flow"]["bytes_toclient"] > 0
        assert schema_errors(r) == []


HUNG = 4    # sessions whose ends wait in a hung worker's ring


def test_session_ends_left_in_a_hung_workers_ring_are_logged_at_stop(tmp_path):
    # The kernel writes an inspected session's end into its worker's ring
    # (bpf/lib/maps.h MS_CFG_WORKER_ENDS) while the worker's heartbeat is
    # fresh. A worker that stops reading (SIGSTOP here: hung) leaves them
    # there; the stopping daemon kills it (workers.STOP_TIMEOUT_S) and
    # writes the ends left in its ring itself, from the kernel's side: one
    # flow record per session, none lost. (Before, these ends went through
    # the daemon to the hung worker's socket and died with it.)
    (tmp_path / "policy.yaml").write_text(INSPECT_POLICY)
    (tmp_path / "rules.yaml").write_text("{}\n")
    eve, log = tmp_path / "eve.json", tmp_path / "run.log"
    ports = range(44000, 44000 + HUNG)
    with Lab() as lab, HttpServer(lab, HTTP_PORT), \
            running_daemon(lab, tmp_path, slowpath={"workers": 1}, datapath={"heartbeat_timeout_s": 600}) as run:
        pid = wait_for("the worker", lambda: workers_running(log).get(0))
        os.kill(pid, signal.SIGSTOP)           # a child of the daemon this test started
        try:
            for p in ports:                    # async: they pass while the worker reads nothing
                r = lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time",
                                         "10", "--local-port", str(p), f"http://{SERVER_V4}:{HTTP_PORT}/"])
                assert r.stdout == "200", r
            assert flow_records(eve, dest_port=HTTP_PORT) == []
            run.send_signal(signal.SIGTERM)
            run.wait(STOP_WAIT_S)
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    flows = flow_records(eve, dest_port=HTTP_PORT)
    assert sorted(r["src_port"] for r in flows) == list(ports), flows
    for r in flows:
        assert flowvar(r, "end_reason") == "closed" and flowvar(r, "policy_action") == "inspect"
        assert schema_errors(r) == []
