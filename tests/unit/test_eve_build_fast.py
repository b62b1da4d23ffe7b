"""The EVE builders' shortcuts give the records of the longer way, key for
key and in the same order (compared as encoded lines), on seeded random
flows and arguments: the flow id hashed in one call, a record's header from
the flow's cached parts (FlowInfo.header_parts), session_flow_record built
in one go rather than as flow_record plus its fields, FlowInfo.with_app
rather than dataclasses.replace."""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import random
import socket

import pytest

from protocols.api import Direction
from slowpath import eve
from slowpath.community_id import packed_ip


def _ref_flow_id(proto, src_ip, src_port, dest_ip, dest_port, start_ns) -> int:
    """make_flow_id as it was: one update() per part and separator."""
    h = hashlib.blake2b(digest_size=8)
    for part in (proto, packed_ip(src_ip), src_port, packed_ip(dest_ip), dest_port, start_ns):
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"|")
    return int.from_bytes(h.digest(), "big") & ((1 << 53) - 1)


def _ref_header(flow, event_type, ts, *, direction=None, tx_id=None) -> dict:
    """_header as it was: field by field from the flow."""
    rec = {"timestamp": eve.format_timestamp(ts)}
    if flow is not None and flow.flow_id is not None:
        rec["flow_id"] = int(flow.flow_id)
    if flow is not None and flow.in_iface:
        rec["in_iface"] = flow.in_iface
    rec["event_type"] = event_type
    if flow is not None:
        rec["src_ip"] = flow.src_ip
        if flow.src_port is not None:
            rec["src_port"] = int(flow.src_port)
        rec["dest_ip"] = flow.dest_ip
        if flow.dest_port is not None:
            rec["dest_port"] = int(flow.dest_port)
        rec["proto"] = flow.proto_name
        if flow.proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6):
            if flow.icmp_type is not None:
                rec["icmp_type"] = int(flow.icmp_type)
            if flow.icmp_code is not None:
                rec["icmp_code"] = int(flow.icmp_code)
        if flow.community_id:
            rec["community_id"] = flow.community_id
    if direction is not None:
        rec["direction"] = eve._direction(direction)
    if tx_id is not None:
        rec["tx_id"] = int(tx_id)
    return rec


def _ref_session_flow_record(flow, end, *, end_reason, ct_state, pkts, nbytes, alerted=False, blocked=False,
                             rule_id=None, policy_generation=None, policy_action=None, verdict=None,
                             verdict_latency_us=None) -> dict:
    """session_flow_record as it was: flow_record, then its fields."""
    rec = eve.flow_record(flow, end, pkts_toserver=pkts[0], pkts_toclient=pkts[1], bytes_toserver=nbytes[0],
                          bytes_toclient=nbytes[1], reason=eve._END_REASONS.get(end_reason, "forced"),
                          alerted=alerted or blocked, ct_state=ct_state, rule_id=rule_id,
                          policy_generation=policy_generation, verdict=verdict,
                          verdict_latency_us=verdict_latency_us)
    rec["flow"]["action"] = "drop" if blocked or end_reason in eve._DROPPING_ENDS else "pass"
    md = rec.setdefault("metadata", {}).setdefault("flowvars", [])
    md.append({"end_reason": eve._text(end_reason)})
    if policy_action is not None:
        md.append({"policy_action": eve._text(policy_action)})
    return rec


def _same(a: dict, b: dict) -> bool:
    """Equal keys, values and order, at every level."""
    return json.dumps(a) == json.dumps(b) and eve.encode(a) == eve.encode(b)


def _flow(rng: random.Random) -> eve.FlowInfo:
    v6 = rng.random() < 0.4
    src = f"2001:db8::{rng.randrange(1, 0xffff):x}" if v6 else f"10.{rng.randrange(256)}.0.{rng.randrange(1, 255)}"
    dst = f"2001:0db8:0:0::{rng.randrange(1, 0xffff):x}" if v6 else f"192.168.{rng.randrange(256)}.1"
    proto = rng.choice([6, 17, 1, 58, 132, 47])
    icmp = proto in (1, 58)
    return eve.FlowInfo(rng.choice([None, 0, rng.randrange(2 ** 53)]), src,
                        None if icmp else rng.choice([None, rng.randrange(65536)]), dst,
                        None if icmp else rng.randrange(65536), proto, rng.choice([None, "", "http", "dns"]),
                        rng.choice([None, 1_700_000_000 + rng.random() * 1000]),
                        icmp_type=rng.choice([None, 8, 0]) if icmp else None,
                        icmp_code=rng.choice([None, 0, 3]) if icmp else None,
                        in_iface=rng.choice([None, "", "eth0"]))


def test_flow_id_same_as_hashing_part_by_part():
    rng = random.Random(53)
    for _ in range(2000):
        f = _flow(rng)
        args = (f.proto, f.src_ip, f.src_port, f.dest_ip, f.dest_port, rng.randrange(2 ** 64))
        assert eve.make_flow_id(*args) == _ref_flow_id(*args), args


def test_header_same_as_field_by_field():
    rng = random.Random(225)
    for _ in range(2000):
        f = _flow(rng)
        kw = {"direction": rng.choice([None, Direction.TO_SERVER, "to_client"]),
              "tx_id": rng.choice([None, 0, 7])}
        ts = 1_700_000_000 + rng.random() * 1e6
        for flow in (f, f, None):      # twice: the second from the cached parts
            assert _same(eve._header(flow, "dns", ts, **kw), _ref_header(flow, "dns", ts, **kw))


class _Word(str):
    """A str subclass whose str() differs from it: fields that are not
    exact strs are converted as _text() converts them."""

    def __str__(self) -> str:
        return "word:" + super().__str__()


def test_session_flow_record_same_as_flow_record_and_its_fields():
    rng = random.Random(1137)
    for _ in range(3000):
        f = _flow(rng)
        end = (f.start or 1_700_000_000) + rng.random() * 100 - 5
        kw = {"end_reason": rng.choice(list(eve._END_REASONS) + ["reason-99", "caf\u00e9 \udc80"]),
              "ct_state": rng.choice([None, "CT_ESTABLISHED", "CT_SYN_SENT", "CT_CLOSE", "state-77",
                                      _Word("CT_CLOSE")]),
              "pkts": (rng.randrange(10 ** 6), rng.randrange(10)), "nbytes": (rng.randrange(2 ** 40), 0),
              "alerted": rng.random() < 0.3, "blocked": rng.random() < 0.2,
              "rule_id": rng.choice([None, 0, 5]), "policy_generation": rng.choice([None, 1, 2 ** 40]),
              "policy_action": rng.choice([None, "allow", "inspect", b"ra\xffw", _Word("drop")]),
              "verdict": rng.choice([None, "allow", "block", "release", "BLOCK", _Word("allow")]),
              "verdict_latency_us": rng.choice([None, 0, 1234])}
        assert _same(eve.session_flow_record(f, end, **kw), _ref_session_flow_record(f, end, **kw)), kw


def test_with_app_is_replace_keeping_what_the_tuple_gave():
    rng = random.Random(7)
    for _ in range(500):
        f = _flow(rng)
        before = (f.community_id, f.header_parts)
        g = f.with_app("tls", start=12.5)
        assert g == dataclasses.replace(f, app_proto="tls", start=12.5)
        assert (f.app_proto, f.start) != ("tls", 12.5) or f == g
        assert g.community_id == dataclasses.replace(f).community_id
        assert (g.community_id, g.header_parts) == before
        assert g.header_parts == dataclasses.replace(f).header_parts
        assert f.with_app(None) == dataclasses.replace(f, app_proto=None)
        for rec_f in (f, g):
            assert _same(eve._header(rec_f, "tls", 5.0), _ref_header(rec_f, "tls", 5.0))



def test_flow_info_init_is_the_dataclass_fields_checked_and_frozen():
    """FlowInfo's own __init__ (one __dict__ update, not a frozen dataclass's
    setattr per field): every field stored as given, in the fields' order,
    the addresses normalised, the same errors, still frozen and equal by
    its fields, positional or by keyword."""
    rng = random.Random(1410)
    names = [f.name for f in dataclasses.fields(eve.FlowInfo)]
    for _ in range(500):
        f = _flow(rng)
        given = dict(vars(f))
        given["src_ip"] = rng.choice([f.src_ip, f.src_ip.upper(), f.src_ip.replace("2001:db8::", "2001:0db8:0::")])
        by_kw, by_pos = eve.FlowInfo(**given), eve.FlowInfo(*given.values())
        for g in (by_kw, by_pos):
            assert list(vars(g)) == names
            assert vars(g) == {**given, "src_ip": str(ipaddress.ip_address(given["src_ip"])),
                               "dest_ip": str(ipaddress.ip_address(given["dest_ip"]))}
            assert g == f and hash(g) == hash(f) and dataclasses.replace(g) == f
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.src_port = 1
    with pytest.raises(ValueError, match="not the same address family"):
        eve.FlowInfo(1, "10.0.0.1", 1, "::1", 2, 6)
    with pytest.raises(ValueError, match="IP protocol 256 out of range"):
        eve.FlowInfo(1, "10.0.0.1", 1, "10.0.0.2", 2, 256)
    with pytest.raises(ValueError):
        eve.FlowInfo(1, "10.0.0.999", 1, "10.0.0.2", 2, 6)

def test_normal_ip_same_as_ipaddress():
    """_normal_ip's IPv4 shortcut: the spelling and version ipaddress gives,
    or a ValueError where it raises one."""
    import ipaddress
    rng = random.Random(4)
    texts = ["1.2.3.4", "0.0.0.0", "255.255.255.255", "01.2.3.4", "1.2.3.04", "1.2.3", "1.2.3.4.5", "256.1.1.1",
             " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\x00", "0x1.2.3.4", "1.2.3.-4", "::ffff:1.2.3.4", "::1", "",
             "1.2.3.4%eth0", "\u0661.2.3.4", "1..3.4"]
    texts += [".".join(str(rng.randrange(300)).zfill(rng.choice([1, 1, 1, 2, 3])) for _ in range(4))
              for _ in range(2000)]
    eve._normal_ip.cache_clear()
    for t in texts:
        try:
            ip = ipaddress.ip_address(t)
            want = (str(ip), ip.version)
        except ValueError:
            want = ValueError
        try:
            got = eve._normal_ip(t)
        except ValueError:
            got = ValueError
        assert got == want, t


def test_flow_parts_computed_once_without_a_lock(monkeypatch):
    """FlowInfo.community_id and header_parts are computed on first read,
    once, and kept on the flow (later reads are the instance's attribute),
    through a descriptor without functools.cached_property's lock (Python
    3.11 takes an RLock on every first read: ~1 us a session record)."""
    import functools
    for name in ("community_id", "header_parts"):
        assert not isinstance(eve.FlowInfo.__dict__[name], functools.cached_property)
    calls = []
    real = eve.community_id
    monkeypatch.setattr(eve, "community_id", lambda *a: calls.append(a) or real(*a))
    f = eve.FlowInfo(1, "10.0.0.1", 1234, "10.0.0.2", 80, 6)
    assert f.header_parts is f.header_parts and f.community_id == f.header_parts[1]["community_id"]
    assert len(calls) == 1 and vars(f)["header_parts"] is f.header_parts
    assert f.community_id == eve.community_id(6, "10.0.0.1", "10.0.0.2", 1234, 80)


def test_http_record_without_body_ends_skips_the_coding_metadata(monkeypatch):
    """http_record builds the coding metadata only when a body's end is
    given (without one it adds nothing): a record without ends is the same
    with the builder refusing to run; with a decoded body's end it is there."""
    from protocols.http import HttpMessageEnd, HttpRequest, HttpResponse
    f = eve.FlowInfo(1, "10.0.0.1", 1234, "10.0.0.2", 80, 6)
    req = HttpRequest(Direction.TO_SERVER, "GET", "/x", "HTTP/1.1", "a.test", None, None, (("Host", "a.test"),),
                      None, False, (), 0)
    resp = HttpResponse(Direction.TO_CLIENT, 200, "OK", "HTTP/1.1", "text/plain", (), "GET", None, False, (), 0)
    coded = HttpMessageEnd(Direction.TO_CLIENT, 10, 30, content_encoding=("gzip",), decoded_size=30)
    want = eve.http_record(f, req, resp, 5.0)
    with_end = eve.http_record(f, req, resp, 5.0, response_end=coded)
    assert "metadata" not in want
    assert with_end["metadata"]["flowvars"][0] == {"http_content_encoding": "gzip"}

    def refuse(*a, **k):
        raise AssertionError("coding metadata built without a body end")
    monkeypatch.setattr(eve, "http_coding_metadata", refuse)
    assert _same(eve.http_record(f, req, resp, 5.0), want)
