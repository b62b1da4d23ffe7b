"""The EVE flow record of a kernel session end (slowpath/flowend.py):
Suricata-shaped, valid against Suricata's schema, counters and times from
the kernel's record, one flow id shared with the engine's records when an
engine held the session."""
from __future__ import annotations

import socket

import pytest

from datapath.enums import InspState
from datapath.flowevents import FlowEnd
from slowpath import eve
from slowpath.flowend import POL_INSPECT, EngineSide, flow_end_record
from tests.eve_schemas import require_suricata, schema_errors

NS = 1_000_000_000
POL_ALLOW = 1


def wall(ns: int) -> float:
    return 1_700_000_000 + ns / NS        # a fixed offset, as WallClock takes once


def end(**kw) -> FlowEnd:
    base = dict(reason="closed", state="CT_TIME_WAIT", proto=socket.IPPROTO_TCP, client=("10.0.0.1", 40000),
                server=("10.0.0.2", 80), first_seen_ns=5 * NS, last_seen_ns=12 * NS + NS // 2,
                packets=(5, 3), bytes=(400, 1200), rule_id=2, cookie=77, pol_gen=1, action=POL_ALLOW,
                inspect=0, insp_state=0, app=0, flags=0, worker=0, key=b"\0" * 40)
    base.update(kw)
    return FlowEnd(**base)


def test_allowed_tcp_session():
    require_suricata()
    rec = flow_end_record(end(), wall)
    assert schema_errors(rec) == []
    f = rec["flow"]
    assert (f["pkts_toserver"], f["pkts_toclient"], f["bytes_toserver"], f["bytes_toclient"]) == (5, 3, 400, 1200)
    assert (f["state"], f["reason"], f["action"], f["alerted"], f["age"]) == ("closed", "timeout", "pass", False, 7)
    assert f["start"] == eve.format_timestamp(wall(5 * NS)) and f["end"] == eve.format_timestamp(wall(12.5 * NS))
    assert rec["timestamp"] == f["end"]
    assert (rec["src_ip"], rec["src_port"], rec["dest_ip"], rec["dest_port"], rec["proto"]) == \
        ("10.0.0.1", 40000, "10.0.0.2", 80, "TCP")
    assert rec["community_id"] == eve.community_id(6, "10.0.0.1", "10.0.0.2", 40000, 80)
    md = rec["metadata"]
    assert md["flowints"]["rule_id"] == 2
    assert {"end_reason": "closed"} in md["flowvars"] and {"policy_action": "allow"} in md["flowvars"]


@pytest.mark.parametrize("reason,state,suricata_reason,suricata_state,action", [
    ("swept", "CT_ESTABLISHED", "timeout", "established", "pass"),
    ("timeout", "CT_UDP_UNREPLIED", "timeout", "new", "pass"),
    ("table_full", "CT_SYN_RECV", "forced", "new", "drop"),
    ("revoked", "CT_ESTABLISHED", "forced", "established", "drop"),
    ("shutdown", "CT_ESTABLISHED", "shutdown", "established", "pass"),
])
def test_end_reasons(reason, state, suricata_reason, suricata_state, action):
    require_suricata()
    rec = flow_end_record(end(reason=reason, state=state), wall)
    assert schema_errors(rec) == []
    assert (rec["flow"]["reason"], rec["flow"]["state"], rec["flow"]["action"]) == \
        (suricata_reason, suricata_state, action)
    assert {"end_reason": reason} in rec["metadata"]["flowvars"]


def test_icmp_echo_and_ipv6():
    require_suricata()
    rec = flow_end_record(end(proto=socket.IPPROTO_ICMPV6, state="CT_ICMP", client=("fd00::1", 7),
                              server=("fd00::2", 7)), wall)
    assert schema_errors(rec) == []
    assert "src_port" not in rec and rec["icmp_type"] == 128 and rec["proto"] == "IPV6-ICMP"


def test_inspected_blocked_without_engine():
    require_suricata()
    rec = flow_end_record(end(action=POL_INSPECT, insp_state=InspState.INSP_BLOCKED, app=3), wall,
                          app_names={3: "http"})
    assert schema_errors(rec) == []
    assert (rec["flow"]["action"], rec["flow"]["alerted"], rec["app_proto"]) == ("drop", True, "http")
    assert {"inspection_verdict": "block"} in rec["metadata"]["flowvars"]


def test_engine_side_keeps_its_flow_id():
    require_suricata()
    info = eve.FlowInfo(flow_id=1234, src_ip="10.0.0.1", src_port=40000, dest_ip="10.0.0.2", dest_port=80,
                        proto=6, app_proto="http", start=0.0)
    rec = flow_end_record(end(action=POL_INSPECT, insp_state=InspState.INSP_DONE), wall,
                          engine=EngineSide(info, alerted=True, verdict="allow", verdict_latency_us=40))
    assert schema_errors(rec) == []
    assert (rec["flow_id"], rec["app_proto"], rec["flow"]["alerted"], rec["flow"]["pkts_toserver"]) == \
        (1234, "http", True, 5)
    assert rec["flow"]["start"] == eve.format_timestamp(wall(5 * NS))    # the kernel's first packet
    assert rec["metadata"]["flowints"]["verdict_latency_us"] == 40
