"""Payload records decoded in batches (slowpath/records.py RecordDecoder.decode_many)
and handed to the engine in batches (Engine.handle_raw_batch). The record type
here mirrors struct ms_insp_rec (bpf/lib/maps.h) as BCC types it; the kernel
tests (tests/datapath/test_inspect_kernel.py) decode the compiled one."""
from __future__ import annotations

import ctypes
import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datapath.enums import INSPECT
from slowpath import normalize, records
from slowpath.engine import Engine
from slowpath.records import InspRecord, RecordDecoder, session_ref
from slowpath.rulesfile import load_rules_text

U8, U16, U32, U64 = ctypes.c_ubyte, ctypes.c_ushort, ctypes.c_uint, ctypes.c_ulonglong


class Key(ctypes.Structure):
    _fields_ = [("addr_lo", U8 * 16), ("addr_hi", U8 * 16), ("port_lo", U16), ("port_hi", U16), ("proto", U8),
                ("pad", U8 * 3)]


class Rec(ctypes.Structure):
    _fields_ = [("ts_ns", U64), ("key", Key), ("seq", U32), ("ack_seq", U32), ("len", U32), ("orig_len", U32),
                ("rule_id", U32), ("side", U8), ("tcp_flags", U8), ("l4", U8), ("app", U8), ("inspect", U8),
                ("hook", U8), ("initiator_is_hi", U8), ("frag", U8), ("frag_id", U32), ("frag_off", U16),
                ("pad", U8 * 2), ("cookie", U32)]


def raw(lo: str, hi: str, plo: int, phi: int, *, data=b"payload", hi_first=0, seq=7, cookie=0xA1B2C3D4,
        side=0, frag=0, frag_id=0, frag_off=0, cut=0) -> bytes:
    r = Rec()
    r.ts_ns, r.seq, r.ack_seq, r.len, r.orig_len, r.rule_id = 123456789, seq, 99, len(data), len(data) + cut, 5
    r.side, r.tcp_flags, r.l4, r.app, r.inspect, r.hook = side, 0x18, socket.IPPROTO_TCP, 3, INSPECT["WAF"], 1
    r.initiator_is_hi, r.frag, r.frag_id, r.frag_off, r.cookie = hi_first, frag, frag_id, frag_off, cookie
    for field, addr in (("addr_lo", lo), ("addr_hi", hi)):
        ip = ipaddress.ip_address(addr)
        b = ip.packed if ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{addr}").packed
        ctypes.memmove(ctypes.addressof(getattr(r.key, field)), b, 16)
    r.key.port_lo, r.key.port_hi, r.key.proto = socket.htons(plo), socket.htons(phi), socket.IPPROTO_TCP
    return bytes(r) + data + b"\xee" * cut      # bytes past len: not the record's


def test_decode_many_reads_every_field_as_the_ctypes_type_does():
    dec = RecordDecoder(Rec, Key)
    raws = [raw("10.0.0.1", "10.0.0.2", 40000, 80, hi_first=0, data=b"GET /"),
            raw("10.0.0.1", "10.0.0.2", 40000, 80, hi_first=1, side=1, cookie=3, seq=0xFFFFFFFF),
            raw("2001:db8::1", "2001:db8::2", 5353, 53, frag=3, frag_id=77, frag_off=185, data=b"x" * 40, cut=8)]
    recs, bad = dec.decode_many(raws)
    assert bad == [] and len(recs) == 3
    for r, b in zip(recs, raws):
        h = Rec.from_buffer_copy(b)
        assert r.key == session_ref(bytes(h.key), h.cookie)
        assert (r.ts_ns, r.seq, r.ack_seq, r.side, r.tcp_flags, r.l4, r.app, r.inspect, r.rule_id, r.hook,
                r.orig_len, r.frag, r.frag_id, r.frag_off) == \
            (h.ts_ns, h.seq, h.ack_seq, h.side, h.tcp_flags, h.l4, h.app, h.inspect, h.rule_id, h.hook,
             h.orig_len, h.frag, h.frag_id, h.frag_off)
        assert r.data == b[ctypes.sizeof(Rec):ctypes.sizeof(Rec) + h.len]
        assert r.transport == "tcp" and dec.decode(b) == r
    assert (recs[0].client, recs[0].server) == (("10.0.0.1", 40000), ("10.0.0.2", 80))
    assert (recs[1].client, recs[1].server) == (("10.0.0.2", 80), ("10.0.0.1", 40000))   # hi opened it
    assert (recs[2].client, recs[2].server) == (("2001:db8::1", 5353), ("2001:db8::2", 53))
    assert recs[2].data == b"x" * 40 and recs[2].orig_len == 48


class Reordered(ctypes.Structure):
    """The fields of Rec in another order, with a field no record reads
    (``spare``) between them: the decoder follows the layout it is given."""
    _fields_ = [("cookie", U32), ("frag_off", U16), ("hook", U8), ("side", U8), ("spare", U64), ("ts_ns", U64),
                ("orig_len", U32), ("seq", U32), ("key", Key), ("ack_seq", U32), ("len", U32), ("rule_id", U32),
                ("tcp_flags", U8), ("l4", U8), ("app", U8), ("inspect", U8), ("initiator_is_hi", U8), ("frag", U8),
                ("pad", U8 * 2), ("frag_id", U32)]


def test_decode_many_follows_a_layout_in_any_field_order():
    """decode_many unpacks the header into names in _HEADER_FIELDS' order;
    a layout in another order is put in it (records.py RecordDecoder), and
    a field it does not read is skipped. (Fails when the header tuple is
    taken in the layout's order: every field but the first lands elsewhere.)"""
    dec = RecordDecoder(Reordered, Key)
    recs = []
    for i, (lo, hi) in enumerate((("10.0.0.1", "10.0.0.2"), ("2001:db8::1", "2001:db8::2"))):
        r = Reordered()
        r.ts_ns, r.seq, r.ack_seq, r.len, r.orig_len, r.rule_id = 5 + i, 7 + i, 99 + i, 3, 300 + i, 11 + i
        r.side, r.tcp_flags, r.l4, r.app, r.inspect, r.hook = 1, 0x18, socket.IPPROTO_TCP, 3 + i, 2, 1 + i
        r.initiator_is_hi, r.frag, r.frag_id, r.frag_off, r.cookie, r.spare = i, 1 + i, 77 + i, 185 + i, 0xA1B2C3D4, ~0
        for field, addr in (("addr_lo", lo), ("addr_hi", hi)):
            ip = ipaddress.ip_address(addr)
            b = ip.packed if ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{addr}").packed
            ctypes.memmove(ctypes.addressof(getattr(r.key, field)), b, 16)
        r.key.port_lo, r.key.port_hi, r.key.proto = socket.htons(40000), socket.htons(80), socket.IPPROTO_TCP
        b = bytes(r) + b"abcdef"
        got, bad = dec.decode_many([b])
        assert bad == [] and len(got) == 1
        rec, h = got[0], Reordered.from_buffer_copy(b)
        assert rec.key == session_ref(bytes(h.key), h.cookie)
        assert (rec.ts_ns, rec.seq, rec.ack_seq, rec.side, rec.tcp_flags, rec.l4, rec.app, rec.inspect, rec.rule_id,
                rec.hook, rec.orig_len, rec.frag, rec.frag_id, rec.frag_off, rec.data) == \
            (h.ts_ns, h.seq, h.ack_seq, h.side, h.tcp_flags, h.l4, h.app, h.inspect, h.rule_id, h.hook,
             h.orig_len, h.frag, h.frag_id, h.frag_off, b"abc")
        recs.append(rec)
    assert (recs[0].client, recs[1].client) == (("10.0.0.1", 40000), ("2001:db8::2", 80))   # hi opened the second


def test_a_short_record_is_skipped_with_one_line_and_the_rest_decoded():
    dec = RecordDecoder(Rec, Key)
    good = raw("10.0.0.1", "10.0.0.2", 1, 2)
    recs, bad = dec.decode_many([good, good[:10], good])
    assert len(recs) == 2 and bad == [f"payload record of 10 bytes, header alone is {ctypes.sizeof(Rec)}"]
    with pytest.raises(ValueError, match="header alone"):
        dec.decode(good[:10])


def test_addresses_are_formatted_once_per_connection(monkeypatch):
    calls = []
    real = records._addr
    monkeypatch.setattr(records, "_addr", lambda b: calls.append(1) or real(b))
    dec = RecordDecoder(Rec, Key)
    recs, _ = dec.decode_many([raw("10.0.0.1", "10.0.0.2", 40000, 80, seq=i) for i in range(500)])
    assert len(recs) == 500 and len(calls) == 2                 # one per address of the one connection
    dec.decode_many([raw("10.0.0.1", "10.0.0.2", 40000, 80, cookie=9)])   # next connection on the 5-tuple
    assert len(calls) == 4


def test_a_bit_field_in_the_record_is_refused():
    class Bits(ctypes.Structure):
        _fields_ = [("ts_ns", U64), ("key", Key), ("flags", U32, 3), ("cookie", U32)]
    with pytest.raises(ValueError, match="bit field"):
        RecordDecoder(Bits, Key)


class Metrics:
    def __init__(self):
        self.ringbuf = []

    def record_ringbuf(self, n):
        self.ringbuf.append(n)

    def __getattr__(self, name):          # verdicts, latencies: not what this test counts
        return lambda *a, **k: None


class Verdicts:
    def verdict(self, key, code):
        return 1


def test_handle_raw_batch_counts_records_and_bad_ones_once_per_batch():
    m = Metrics()
    e = Engine(load_rules_text("{}\n", "<none>"), lambda r: None, Verdicts(), metrics=m)
    req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    raws, seq = [], 1
    for _ in range(50):
        raws.append(raw("10.0.0.1", "10.0.0.2", 40000, 80, data=req, seq=seq))
        seq += len(req)
    bad = e.handle_raw_batch(raws + [b"\0" * 8], RecordDecoder(Rec, Key))
    assert len(bad) == 1 and e.counters.bad_records == 1
    assert m.ringbuf == [50] and e.counters.records == 50 and e.counters.bytes == 50 * len(req)
    (flow,) = e.flows.values()
    assert flow.pkts == [50, 0] and flow.info.src_ip == "10.0.0.1" and flow.analyzer.app == "http"


# Bytes the normalisation rewrites, and ordinary ones around them.
VALUE_BYTES = st.binary(max_size=24) | st.lists(
    st.sampled_from([b"%", b"2", b"5", b"c", b"0", b"/", b".", b"\\", b"+", b"\x00", b"\xc0", b"\xaf", b"a", b"="]),
    max_size=24).map(b"".join)


@given(VALUE_BYTES, st.booleans(), st.booleans())
def test_the_plain_value_shortcut_changes_no_result(data, form, path):
    assert normalize.value(data, form=form, path=path) == normalize._value(data, form, path)


@given(st.one_of(st.binary(min_size=4, max_size=4).map(lambda b: bytes(10) + b"\xff\xff" + b),   # IPv4-mapped
                 st.binary(min_size=4, max_size=4).map(lambda b: bytes(12) + b),                  # IPv4-compatible
                 st.binary(min_size=6, max_size=6).map(lambda b: bytes(10) + b),
                 st.binary(min_size=16, max_size=16)))
def test_an_address_is_written_as_ipaddress_writes_it(b):
    # datapath/flows.py addr_text writes an IPv4-mapped address with
    # inet_ntop, everything else through ipaddress: both as ipaddress would.
    ip = ipaddress.IPv6Address(b)
    want = str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)
    assert records._addr(b) == want
    assert records._addr((ctypes.c_ubyte * 16).from_buffer_copy(b)) == want      # a BCC key's array


def test_decode_one_decodes_as_decode_many():
    """RecordDecoder.decode_one (replay's one record a frame) gives the
    record decode_many gives, fields and peers alike, and None where
    decode_many skips the record as bad."""
    raws = [raw("10.0.0.1", "10.0.0.2", 40000, 80), raw("fd00::1", "fd00::2", 1, 2, hi_first=1, side=1),
            raw("10.0.0.3", "10.0.0.4", 5, 6, data=b"", frag=3, frag_id=9, frag_off=4, cut=100),
            raw("10.0.0.1", "10.0.0.2", 40000, 80, seq=99, cookie=1)]
    d1, d2 = RecordDecoder(Rec, Key), RecordDecoder(Rec, Key)
    for r in raws:
        want, _ = d2.decode_many((r,))
        assert d1.decode_one(r) == want[0]
    assert d1.decode_one(b"\0" * 8) is None
    assert d2.decode_many((b"\0" * 8,)) == ([], [d1.short(b"\0" * 8)])


def test_handle_raw_is_a_batch_of_one():
    """Engine.handle_raw (a replay's frame: one record) leaves the engine as
    handle_raw_batch of the same record alone does: counters, metrics,
    flows, what was emitted, and the message of a bad record."""
    req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    raws = [raw("10.0.0.1", "10.0.0.2", 40000, 80, data=req, seq=1),
            raw("10.0.0.1", "10.0.0.2", 40000, 80, data=resp, seq=1, side=1),
            b"\0" * 8,
            raw("10.0.0.5", "10.0.0.6", 40001, 80, data=req, seq=1)]
    out = []
    for one in (True, False):
        m, emitted = Metrics(), []
        e = Engine(load_rules_text("{}\n", "<none>"), emitted.append, Verdicts(), metrics=m, clock=lambda: 5.0,
                   wallclock=lambda: 1.7e9)
        dec = RecordDecoder(Rec, Key)
        bad = [e.handle_raw(r, dec) if one else (e.handle_raw_batch([r], dec) or [None])[0] for r in raws]
        out.append((bad, e.counters, m.ringbuf, emitted,
                    [(k, f.pkts, f.bytes, f.copied, f.next_seq, f.verdict, f.analyzer.app, f.last_seen)
                     for k, f in e.flows.items()]))
    assert out[0][0][2] is not None and out[0][0][:2] == [None, None]
    assert out[0] == out[1]
