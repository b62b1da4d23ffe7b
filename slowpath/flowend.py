"""A session's one EVE ``flow`` record, from the kernel's end record
(datapath/flowevents.py FlowEnd) and, for an inspected session, what its
worker's engine knew of it (its flow id, app protocol, alerts, verdict).

The kernel's counters are the session's own (every packet, both ways); the
engine sees only what was copied to it. Used by the daemon for sessions no
engine held (appliance/flowlog.py), by a worker for the ones its engine
held (appliance/workers.py, Engine.session_end), and by replay.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable, Mapping

from datapath.enums import InspState, enum_list
from datapath.flowevents import FlowEnd

from . import eve

_POL_ACTIONS = {e.value: e.name.removeprefix("POL_").lower() for e in enum_list("POL_ACTION")}
POL_INSPECT = next(e.value for e in enum_list("POL_ACTION") if e.name == "POL_INSPECT")
# The kernel's inspection state of a session as the engine's verdict names.
_INSP_VERDICTS = {InspState.INSP_BLOCKED: "block", InspState.INSP_DONE: "allow",
                  InspState.INSP_RELEASED: "release", InspState.INSP_PENDING: None}
# (A module name: InspState.INSP_BLOCKED is a descriptor call, per session.)
_INSP_BLOCKED = InspState.INSP_BLOCKED
# ICMP echo sessions: the key's ports hold the echo id; the record names the
# request's type, as Suricata does for an echo flow.
_ECHO_REQUEST = {socket.IPPROTO_ICMP: 8, socket.IPPROTO_ICMPV6: 128}


@dataclass
class EngineSide:
    """What an engine knew of a session it inspected (Engine.session_end)."""
    info: eve.FlowInfo          # its flow id (shared with its alerts and app records), app protocol
    alerted: bool = False
    verdict: str | None = None
    verdict_latency_us: int | None = None


def flow_info(ev: FlowEnd, wall: Callable[[int], float], app_proto: str | None = None) -> eve.FlowInfo:
    (cip, cport), (sip, sport) = ev.client, ev.server
    if ev.proto in _ECHO_REQUEST:
        return eve.FlowInfo(eve.make_flow_id(ev.proto, cip, None, sip, None, ev.first_seen_ns), cip, None, sip,
                            None, ev.proto, app_proto, wall(ev.first_seen_ns),
                            icmp_type=_ECHO_REQUEST[ev.proto], icmp_code=0)
    return eve.FlowInfo(eve.make_flow_id(ev.proto, cip, cport, sip, sport, ev.first_seen_ns), cip, cport, sip,
                        sport, ev.proto, app_proto, wall(ev.first_seen_ns))


def flow_end_record(ev: FlowEnd, wall: Callable[[int], float], *, app_names: Mapping[int, str] | None = None,
                    engine: EngineSide | None = None) -> dict:
    """The EVE flow record of session ``ev``; ``wall`` turns its session-clock
    ns into wall-clock seconds (flowevents.WallClock)."""
    kernel_app = (app_names or {}).get(ev.app) if ev.app else None
    inspected = ev.action == POL_INSPECT
    verdict = _INSP_VERDICTS.get(ev.insp_state) if inspected else None
    alerted, latency = False, None
    if engine is not None:
        info = engine.info.with_app(engine.info.app_proto or kernel_app, start=wall(ev.first_seen_ns))
        alerted, latency = engine.alerted, engine.verdict_latency_us
        verdict = engine.verdict or verdict
    else:
        info = flow_info(ev, wall, kernel_app)
    return eve.session_flow_record(
        info, wall(ev.last_seen_ns), end_reason=ev.reason, ct_state=ev.state, pkts=ev.packets, nbytes=ev.bytes,
        alerted=alerted, blocked=inspected and ev.insp_state == _INSP_BLOCKED,
        rule_id=ev.rule_id or None, policy_generation=ev.pol_gen or None,
        policy_action=_POL_ACTIONS.get(ev.action), verdict=verdict, verdict_latency_us=latency)
