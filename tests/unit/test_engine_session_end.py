"""One flow record per inspected session (Engine kernel_flow_records): the
engine writes none when it closes a flow itself; the kernel's session end
(Engine.session_end) writes the one record, with the kernel's counters and
the engine's flow id, app protocol, alerts and verdict."""
from __future__ import annotations

import socket

from datapath.enums import INSPECT
from datapath.flowevents import FlowEnd
from slowpath.engine import Engine
from slowpath.flowend import POL_INSPECT
from slowpath.records import InspRecord, session_ref
from slowpath.rulesfile import load_rules_text

CLIENT, SERVER = ("10.0.0.5", 40000), ("10.0.1.5", 80)
SKEY, COOKIE = b"k" * 40, 99
REF = session_ref(SKEY, COOKIE)
NS = 1_000_000_000
REQ = b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


class Verdicts:
    def verdict(self, key, code):
        return 1_000


def engine(out: list, kernel: bool = True) -> Engine:
    return Engine(load_rules_text("{}\n", "<no rules>"), out.append, Verdicts(), clock=lambda: 0.0,
                  wallclock=lambda: 1_700_000_000.0, kernel_flow_records=kernel)


def rec(data: bytes, side: int, seq: int, flags=0x18) -> InspRecord:
    return InspRecord(ts_ns=1_000, key=REF, client=CLIENT, server=SERVER, side=side, seq=seq, ack_seq=0,
                      tcp_flags=flags, l4=6, app=0, inspect=INSPECT["DPI"] | INSPECT["WAF"], rule_id=3, hook=0,
                      orig_len=len(data), data=data)


def end(**kw) -> FlowEnd:
    base = dict(reason="closed", state="CT_TIME_WAIT", proto=socket.IPPROTO_TCP, client=CLIENT, server=SERVER,
                first_seen_ns=5 * NS, last_seen_ns=6 * NS, packets=(7, 6), bytes=(900, 1500), rule_id=3,
                cookie=COOKIE, pol_gen=1, action=POL_INSPECT, inspect=INSPECT["DPI"] | INSPECT["WAF"],
                insp_state=2, app=0, flags=0, worker=0, key=SKEY)
    base.update(kw)
    return FlowEnd(**base)


def wall(ns):
    return 1_700_000_000 + ns / NS


def flows(out):
    return [r for r in out if r["event_type"] == "flow"]


def test_flow_closed_by_the_engine_first_is_logged_once_at_the_session_end():
    out: list = []
    e = engine(out)
    e.handle(rec(REQ, 0, 100))
    e.handle(rec(RESP, 1, 500))
    e.handle(rec(b"", 0, 100 + len(REQ), flags=0x11))     # FIN
    e.handle(rec(b"", 1, 500 + len(RESP), flags=0x11))    # FIN: both sides done, the engine closes it
    assert REF not in e.flows and flows(out) == []
    http_id = next(r["flow_id"] for r in out if r["event_type"] == "http")
    e.session_end(end(), wall)
    (f,) = flows(out)
    assert f["flow_id"] == http_id and f["app_proto"] == "http"
    assert (f["flow"]["pkts_toserver"], f["flow"]["bytes_toclient"]) == (7, 1500)
    assert REF not in e.ended


def test_open_flow_is_closed_by_the_session_end():
    out: list = []
    e = engine(out)
    e.handle(rec(REQ, 0, 100))
    e.session_end(end(reason="swept", state="CT_ESTABLISHED"), wall)
    (f,) = flows(out)
    assert REF not in e.flows and f["flow"]["reason"] == "timeout"
    # a second end for the same connection (none is sent; if it were) has no engine side left
    e.close_all()
    assert len(flows(out)) == 1


def test_session_the_engine_never_saw_is_logged_from_the_kernel():
    out: list = []
    e = engine(out)
    e.session_end(end(), wall)
    (f,) = flows(out)
    assert f["flow"]["pkts_toserver"] == 7 and f["src_port"] == 40000


def test_shutdown_writes_no_flow_record_in_kernel_mode():
    out: list = []
    e = engine(out)
    e.handle(rec(REQ, 0, 100))
    e.close_all("shutdown")
    assert flows(out) == []          # the session lives on in the kernel: its end is logged then
    old: list = []
    e2 = engine(old, kernel=False)
    e2.handle(rec(REQ, 0, 100))
    e2.close_all("shutdown")
    assert len(flows(old)) == 1      # without kernel records, as before
