"""slowpath.eve.encode writes a record as it is and cleans it (_clean) only
when the write shows it needed it: the line must be byte for byte the one
of the cleaning path (json.dumps of _clean(record), as encode always was),
on seeded random records shaped like the builders' (flow, alert, dns,
pgsql, kafka metadata...) whose leaves and keys include what needs
cleaning: non-UTF-8 bytes, lone surrogates, characters past U+FFFF,
control characters, NaN and infinities, huge ints (past the 4300-digit
str() limit too), enums, str/int subclasses, sets, bool/None keys, nested
plugin metadata, nesting on both sides of MAX_DEPTH with few and with many
containers. A clean record must not be cleaned at all (the point of it)."""
from __future__ import annotations

import enum
import json
import math
import random

import pytest

from slowpath import eve

from tests.unit.test_eve_clean import _ref_encode


def _old_encode(record) -> bytes | None:
    """encode before the fast path: every record cleaned (test_eve_clean's
    copy of the cleaner, independent of slowpath/eve.py), then dumped."""
    try:
        return _ref_encode(record)
    except Exception:
        return None


class Verdict(enum.Enum):
    BLOCK = "block"


class Level(enum.IntEnum):
    HIGH = 7


class Name(str):
    pass


ODD_STRINGS = ["plain", "caf\u00e9", "\u4e2d\u6587", "\U0001f600 emoji", "lone \udc80 surrogate",
               "\ud800", "ctl \x00\x01\x1f\x7f tab\t nl\n", 'quote " back \\ slash', "\\ud800 text",
               "true", "null", '"true":', "", "x" * 300]
ODD_SCALARS = [lambda: math.nan, lambda: math.inf, lambda: -math.inf, lambda: 2 ** 70, lambda: -(2 ** 200),
               lambda: 10 ** 5000, lambda: b"\xff\xfe bytes", lambda: bytearray(b"\x80"), lambda: Verdict.BLOCK,
               lambda: Level.HIGH, lambda: Name("sub"), lambda: Name("sub \udcff"), lambda: {1, 2},
               lambda: (1, "t"), lambda: 0.1, lambda: 1e300, lambda: True, lambda: None, lambda: -0.0]


def _leaf(rng: random.Random, odd: bool):
    if odd and rng.random() < 0.3:
        return rng.choice(ODD_SCALARS)()
    r = rng.random()
    if r < 0.55:
        return rng.choice(ODD_STRINGS) if odd else rng.choice(["GET", "example.com", "to_server", "TLS 1.3"])
    if r < 0.85:
        return rng.randrange(-2 ** 63, 2 ** 64)
    if r < 0.95:
        return rng.random() * 1e6
    return rng.choice([True, False, None])


def _key(rng: random.Random, odd: bool):
    if odd and rng.random() < 0.15:
        return rng.choice([True, False, None, 3, 2.5, Level.HIGH, Name("k"), "\udcff", "h\u00e9", "true", ("t",)])
    return rng.choice(["rrname", "rdata", "ttl", "value", "name", "x"])


def _nested(rng: random.Random, odd: bool, depth: int):
    """Plugin-supplied metadata: dicts and lists, up to depth levels."""
    if depth <= 0 or rng.random() < 0.3:
        return _leaf(rng, odd)
    if rng.random() < 0.5:
        return {_key(rng, odd): _nested(rng, odd, depth - 1) for _ in range(rng.randrange(0, 4))}
    return [_nested(rng, odd, depth - 1) for _ in range(rng.randrange(0, 4))]


def _record(rng: random.Random, odd: bool) -> dict:
    """A record shaped like a builder's: the header, an event object, metadata."""
    rec = {"timestamp": "2026-12-07T04:22:01.123456+0000", "flow_id": rng.randrange(2 ** 53),
           "event_type": rng.choice(eve.EVENT_TYPES), "src_ip": "10.0.0.1", "src_port": rng.randrange(65536),
           "dest_ip": "2001:db8::1", "dest_port": 443, "proto": "TCP",
           "community_id": "1:LQU9qZlK+B5F3KDmev6m5PMibrg="}
    kind = rng.randrange(5)
    if kind == 0:       # flow: counters and metadata
        rec["flow"] = {"pkts_toserver": _leaf(rng, odd), "bytes_toclient": rng.randrange(2 ** 40),
                       "start": "2026-12-07T04:22:01.123456+0000", "state": "closed", "alerted": False}
        rec["metadata"] = {"flowints": {"rule_id": _leaf(rng, odd)},
                           "flowvars": [{"inspection_verdict": _leaf(rng, odd)}, {"ct_state": "CT_CLOSE"}]}
    elif kind == 1:     # dns: many containers, shallow
        n = rng.randrange(0, 30)
        rec["dns"] = {"version": 3, "type": "response", "queries": [{"rrname": _leaf(rng, odd), "rrtype": "A"}],
                      "answers": [{"rrname": _leaf(rng, odd), "rrtype": "A", "ttl": 60, "rdata": _leaf(rng, odd)}
                                  for _ in range(n)],
                      "grouped": {"A": [_leaf(rng, odd) for _ in range(n)]}}
    elif kind == 2:     # pgsql / plugin objects: nested, odd keys
        rec["pgsql"] = {"request": _nested(rng, odd, 5), "response": {_key(rng, odd): _nested(rng, odd, 4)}}
    elif kind == 3:     # alert: metadata lists of strings, an app-layer object
        rec["alert"] = {"signature": _leaf(rng, odd), "metadata": {"matched": [_leaf(rng, odd)],
                                                                   "field": [_leaf(rng, odd)]}}
        rec["http"] = {"hostname": _leaf(rng, odd), "url": _leaf(rng, odd), "status": _leaf(rng, odd)}
    else:               # nesting around MAX_DEPTH, in a chain (few containers) or a bushy one
        deep = _leaf(rng, odd)
        for _ in range(eve.MAX_DEPTH - 3 + rng.randrange(6)):
            deep = {"d": [deep] * rng.choice([1, 1, 3])} if rng.random() < 0.5 else [deep, {"e": 1}]
        rec["metadata"] = {"plugin": deep}
    return rec


@pytest.mark.parametrize("odd", [False, True], ids=["plain", "odd"])
def test_encode_equals_the_cleaning_path(odd):
    rng = random.Random(1414 + odd)
    for _ in range(4000):
        rec = _record(rng, odd)
        assert eve.encode(rec) == _old_encode(rec), rec


def test_records_of_the_builders_are_equal_and_not_cleaned(monkeypatch):
    """Real builder records (flow, alert with an http object, dns, drop,
    anomaly, stats) with odd text in them: the same line, and the clean
    ones never go through _clean."""
    info = eve.FlowInfo(123, "10.0.0.1", 4242, "10.0.0.2", 80, 6, "http", start=1_700_000_000.25)
    recs = [eve.flow_record(info, 1_700_000_005.5, pkts_toserver=3, verdict="allow", ct_state="CT_ESTABLISHED",
                            rule_id=7, policy_generation=2, verdict_latency_us=80),
            eve.alert_record(info, {"rule_id": 9, "rule_name": "no \udc80 admin", "category": "waf",
                                    "action": "block", "field": "uri", "matched": b"/adm\xffin"},
                             1_700_000_001.0, app_layer={"http": {"hostname": "h\u00e9.example", "url": "/"}}),
            eve.anomaly_record(info, "METHOD_UNKNOWN", 1_700_000_002.0),
            eve.drop_record(info, "DROP_TCP_NO_SESSION", 1_700_000_003.0, hook="ingress", rule_id=4),
            eve.stats_record({"decoder.pkts": 5, "flow.active": 2.0, "detect.alert": math.nan}, 1_700_000_004.0)]
    for rec in recs:
        assert eve.encode(rec) == _old_encode(rec), rec
    cleaned = []
    real_clean = eve._clean
    monkeypatch.setattr(eve, "_clean", lambda v, depth=0: cleaned.append(v) or real_clean(v, depth))
    clean_ones = [r for r in recs if _old_encode(r) == json.dumps(r, separators=(",", ":")).encode() + b"\n"]
    assert len(clean_ones) >= 3
    cleaned.clear()
    for rec in clean_ones:
        eve.encode(rec)
    assert cleaned == []
    eve.encode(recs[1])             # a lone surrogate in the signature: cleaned
    assert cleaned and cleaned[0] is recs[1]


def test_what_needs_cleaning_is_cleaned():
    """Each case alone: the fast write would differ from the cleaning path."""
    deep: object = 1
    for _ in range(eve.MAX_DEPTH):
        deep = [deep]
    cases = [{"s": "a\udc80b"}, {"\udcff": 1}, {True: 1}, {None: 1, "k": False}, {"f": math.nan},
             {"b": b"\xff"}, {"e": Verdict.BLOCK}, {"t": {1, 2}}, {"d": deep}, {"x": 10 ** 5000}]
    for rec in cases:
        assert eve.encode(rec) == _old_encode(rec), rec
    assert eve.encode({"d": deep}) != json.dumps({"d": deep}, separators=(",", ":")).encode() + b"\n"
    assert eve.encode({True: 1}) == b'{"True":1}\n'
    assert eve.encode({"x": 10 ** 5000}) is None
    cyc: dict = {"a": 1}
    cyc["self"] = cyc
    assert eve.encode(cyc) == _old_encode(cyc)
