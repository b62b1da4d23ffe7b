"""Kernel drop events as EVE `drop` records (appliance/droplog.py,
slowpath/eve.py kernel_drop_record): Suricata's own schema and the
project's overlay (tests/eve_schemas.py) accept each
shape (TCP, UDP, ICMP echo, IPv6, no addresses), the packet's fields are
Suricata's, microseg's reason, rule and suppressed count are where the
schema leaves room."""
from __future__ import annotations

import ctypes
import socket
from dataclasses import replace

import pytest

from appliance import droplog
from datapath.enums import Direction, Reason
from tests.eve_schemas import require_suricata, schema_errors

TS = 1_790_000_000.25


@pytest.fixture
def schema():
    require_suricata()

    class Both:
        @staticmethod
        def validate(rec):
            assert schema_errors(rec) == []
    return Both


def event(**kw) -> droplog.DropEvent:
    base = dict(ts=TS, reason=Reason.DROP_POLICY_DENY, hook=Direction.DIR_INGRESS, src_ip="10.1.1.10",
                dest_ip="10.2.0.10", src_port=40000, dest_port=22, proto=socket.IPPROTO_TCP, length=74,
                tcp_flags=0x12, tcpseq=1000, tcpack=2000, tcpwin=64240, icmp_type=0, icmp_code=0, vlan=0,
                ifindex=3, rule_id=1, suppressed=0)
    return droplog.DropEvent(**{**base, **kw})


def pktvars(rec) -> dict:
    return {k: v for item in rec["metadata"]["pktvars"] for k, v in item.items()}


def test_a_policy_deny_of_a_tcp_packet(schema):
    rec = droplog.drop_record(event(suppressed=995), "eth1", {1: "no-ssh"})
    schema.validate(rec)
    assert rec["event_type"] == "drop" and rec["timestamp"].endswith(".250000+0000")
    assert (rec["src_ip"], rec["src_port"], rec["dest_ip"], rec["dest_port"], rec["proto"], rec["in_iface"]) == \
        ("10.1.1.10", 40000, "10.2.0.10", 22, "TCP", "eth1")
    d = rec["drop"]
    assert d["reason"] == "DROP_POLICY_DENY" and d["len"] == 74
    assert (d["tcpseq"], d["tcpack"], d["tcpwin"]) == (1000, 2000, 64240)
    assert (d["syn"], d["ack"], d["fin"], d["rst"], d["psh"], d["urg"]) == (True, True, False, False, False, False)
    assert rec["verdict"] == {"action": "drop"} and rec["community_id"].startswith("1:")
    pv = pktvars(rec)
    assert (pv["hook"], pv["rule_id"], pv["rule"], pv["suppressed"]) == ("ingress", "1", "no-ssh", "995")


@pytest.mark.parametrize("ev", [
    event(proto=socket.IPPROTO_UDP, dest_port=53, reason=Reason.DROP_POLICY_DEFAULT, rule_id=0),
    event(proto=socket.IPPROTO_ICMP, src_port=77, dest_port=77, icmp_type=8, reason=Reason.DROP_ICMP_TYPE,
          rule_id=0),
    event(src_ip="fd00:1::5", dest_ip="fd00:2::9", hook=Direction.DIR_EGRESS, reason=Reason.DROP_TCP_OUT_OF_WINDOW),
    event(proto=47, src_port=None, dest_port=None, vlan=100),
    event(src_ip=None, dest_ip=None, src_port=None, dest_port=None, proto=0, reason=Reason.DROP_IPV4_TRUNCATED,
          rule_id=0),
], ids=["udp", "icmp-echo", "ipv6-egress", "gre-vlan", "no-addresses"])
def test_every_shape_is_suricatas(schema, ev):
    rec = droplog.drop_record(ev, "eth1")
    schema.validate(rec)
    assert rec["drop"]["reason"] == ev.reason.name and pktvars(rec)["suppressed"] == "0"
    if ev.src_ip is None:
        assert "src_ip" not in rec and rec["in_iface"] == "eth1"
    if ev.proto == socket.IPPROTO_ICMP:
        assert (rec["icmp_type"], rec["drop"]["icmp_id"]) == (8, 77) and "src_port" not in rec
    if ev.vlan:
        assert rec["vlan"] == [100]
    if not ev.rule_id:
        assert "rule_id" not in pktvars(rec)


def test_every_kernel_drop_reason_is_a_valid_record(schema):
    for r in Reason:
        if r.name.startswith("DROP_"):
            schema.validate(droplog.drop_record(event(reason=r)))


def test_decoder_reads_the_kernel_layout():
    """A record laid out as BCC describes struct ms_drop_event (its fields
    by name; the order and types here are only this test's)."""
    class Rec(ctypes.Structure):
        _fields_ = [("ts_ns", ctypes.c_uint64), ("saddr", ctypes.c_uint8 * 16), ("daddr", ctypes.c_uint8 * 16),
                    ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16), ("len", ctypes.c_uint32),
                    ("seq", ctypes.c_uint32), ("ack_seq", ctypes.c_uint32), ("rule_id", ctypes.c_uint32),
                    ("suppressed", ctypes.c_uint32), ("ifindex", ctypes.c_uint32), ("window", ctypes.c_uint16),
                    ("vlan", ctypes.c_uint16), ("reason", ctypes.c_uint8), ("hook", ctypes.c_uint8),
                    ("family", ctypes.c_uint8), ("proto", ctypes.c_uint8), ("tcp_flags", ctypes.c_uint8),
                    ("icmp_type", ctypes.c_uint8), ("icmp_code", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 5)]
    r = Rec(ts_ns=5_000_000_000, sport=socket.htons(40000), dport=socket.htons(22), len=60, rule_id=3,
            suppressed=7, reason=int(Reason.DROP_POLICY_DENY), hook=1, family=4, proto=6, tcp_flags=2)
    r.saddr[10:16] = [0xff, 0xff, 10, 1, 1, 10]
    r.daddr[10:16] = [0xff, 0xff, 10, 2, 0, 10]
    dec = droplog.DropDecoder(Rec)
    ev = dec.decode(bytes(r))
    assert ev == replace(ev, reason=Reason.DROP_POLICY_DENY, hook=Direction.DIR_EGRESS, src_ip="10.1.1.10",
                         dest_ip="10.2.0.10", src_port=40000, dest_port=22, length=60, rule_id=3, suppressed=7)
    assert ev.ts == pytest.approx(dec.wall_offset + 5.0)
    r.family, r.proto = 0, 0
    ev = dec.decode(bytes(r))
    assert (ev.src_ip, ev.src_port) == (None, None)
    with pytest.raises(ValueError, match="record of 10 bytes"):
        dec.decode(b"\0" * 10)


def test_a_bad_record_is_counted_not_raised(caplog):
    class Rec(ctypes.Structure):
        _fields_ = [("ts_ns", ctypes.c_uint64)]
    log = droplog.DropLog.__new__(droplog.DropLog)
    log.decoder, log.emit, log.records, log.bad, log._ifnames, log.rule_names = \
        droplog.DropDecoder(Rec), [].append, 0, 0, {}, {}
    log.handle(b"\1")
    log.handle(b"\1")
    assert (log.bad, log.records) == (2, 0)
    assert sum("record not decoded" in r.message for r in caplog.records) == 1
