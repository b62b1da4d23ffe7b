"""protocols/dns.py: wire decoding, limits, TCP framing, probe, signatures."""
from __future__ import annotations

import socket
import struct

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.api import CERTAIN, LIKELY, NO_MATCH, POSSIBLE, Direction, Malformed, ProtocolError
from protocols.dns import (
    MAX_NAME_LEN,
    MAX_POINTER_HOPS,
    MAX_TCP_BUFFER,
    PLUGIN,
    DnsMessage,
    DnsParser,
    probe,
)

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
D = dpkt.dns.DNS


# --- building messages ----------------------------------------------------

def name(text: str) -> bytes:
    out = b""
    for label in text.split(".") if text else []:
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def header(id=0x1234, flags=0x8180, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!6H", id, flags, qd, an, ns, ar)


def question(qname=b"\x07example\x03com\x00", qtype=1, qclass=1) -> bytes:
    return qname + struct.pack("!HH", qtype, qclass)


def rr(owner: bytes, rtype: int, rdata: bytes, ttl=60, rclass=1) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


PTR_QNAME = b"\xc0\x0c"  # pointer to the question name at offset 12


def dpkt_rr(**kw):
    r = D.RR(**kw)
    r.cls, r.ttl = 1, 300
    return r


def big_response(id=0x4242) -> bytes:
    """One record of every common type, compressed by dpkt."""
    m = D(id=id, op=0x8180)
    m.qd = [D.Q(name="example.com", type=255)]
    m.an = [
        dpkt_rr(name="example.com", type=1, ip=socket.inet_aton("192.0.2.1")),
        dpkt_rr(name="example.com", type=28, ip6=socket.inet_pton(socket.AF_INET6, "2001:db8::1")),
        dpkt_rr(name="www.example.com", type=5, cname="example.com"),
        dpkt_rr(name="example.com", type=15, preference=10, mxname="mail.example.com"),
        dpkt_rr(name="example.com", type=16, text=[b"v=spf1 ", b"-all"]),
        dpkt_rr(name="example.com", type=2, nsname="ns1.example.com"),
        dpkt_rr(name="1.2.0.192.in-addr.arpa", type=12, ptrname="example.com"),
        dpkt_rr(name="example.com", type=6, mname="ns1.example.com", rname="hostmaster.example.com",
                serial=2024010101, refresh=7200, retry=3600, expire=1209600, minimum=300),
        dpkt_rr(name="_sip._tcp.example.com", type=33, priority=10, weight=60, port=5060,
                srvname="sip.example.com"),
    ]
    return bytes(m)


def query(qname="example.com", qtype=1, id=0x1111) -> bytes:
    return bytes(D(id=id, op=0x0100, qd=[D.Q(name=qname, type=qtype)]))


def udp(msg: bytes, direction=S) -> list:
    return DnsParser("udp").receive_data(msg, direction)


def one(msg: bytes, direction=S) -> DnsMessage:
    events = udp(msg, direction)
    assert len(events) == 1 and isinstance(events[0], DnsMessage), events
    return events[0]


def malformed(msg: bytes) -> Malformed:
    events = udp(msg)
    assert len(events) == 1 and isinstance(events[0], Malformed), events
    return events[0]


def framed(*msgs: bytes) -> bytes:
    return b"".join(struct.pack("!H", len(m)) + m for m in msgs)


# --- header and records ---------------------------------------------------

def test_every_common_record_type_decodes():
    m = one(big_response())
    assert (m.id, m.response, m.opcode, m.opcode_name) == (0x4242, True, 0, "QUERY")
    assert m.questions[0].name == "example.com" and m.questions[0].type_name == "ANY"
    assert [(r.name, r.type_name, r.data) for r in m.answers] == [
        ("example.com", "A", "192.0.2.1"),
        ("example.com", "AAAA", "2001:db8::1"),
        ("www.example.com", "CNAME", "example.com"),
        ("example.com", "MX", "10 mail.example.com"),
        ("example.com", "TXT", "v=spf1 -all"),
        ("example.com", "NS", "ns1.example.com"),
        ("1.2.0.192.in-addr.arpa", "PTR", "example.com"),
        ("example.com", "SOA", "ns1.example.com hostmaster.example.com 2024010101 7200 3600 1209600 300"),
        ("_sip._tcp.example.com", "SRV", "10 60 5060 sip.example.com"),
    ]
    assert all(r.ttl == 300 and r.rclass == 1 for r in m.answers)
    assert m.authority == () and m.additional_count == 0


# Addresses whose text is easy to get wrong: every compressible run and
# position, ties between runs, single zero groups (never "::"), and the
# first-80-bits-zero forms glibc's inet_ntop writes dotted.
AAAA_EDGES = ["::", "::1", "::2:3", "1::", "1:0:0:2::3", "1::2:0:0:3", "1:0:2:0:3:0:4:0", "0:1:2:3:4:5:6:7",
              "2001:db8::1", "2001:db8:0:0:1::1", "fe80::1:0:0:0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
              "::ffff:1.2.3.4", "::1.2.3.4", "::ffff:0:0", "::ffff:0:1.2.3.4", "::0:ffff:1.2.3.4",
              "0:0:0:0:1:ffff:102:304", "::a:b"]


def test_address_records_read_as_ipaddress_writes_them_without_its_objects(monkeypatch):
    """A and AAAA answers: the same text as str(ipaddress...) (RFC 5952 for
    IPv6, each edge above and random ones), with no ipaddress object made
    for an ordinary address (one per answer was a quarter of a reply's
    decoding; protocols/dns.py _a_text, _aaaa_text)."""
    import ipaddress
    import random
    rng = random.Random(5952)
    v6 = [ipaddress.IPv6Address(a).packed for a in AAAA_EDGES]
    for _ in range(400):     # random groups, many zero, so that runs of every length appear
        v6.append(b"".join(rng.choice([b"\0\0", b"\0\0", rng.randbytes(2)]) for _ in range(8)))
    v4 = [bytes(4), b"\xff" * 4, bytes([10, 0, 0, 1])] + [rng.randbytes(4) for _ in range(100)]
    answers = [rr(PTR_QNAME, 28, a) for a in v6] + [rr(PTR_QNAME, 1, a) for a in v4]
    msg = header(an=len(answers)) + question() + b"".join(answers)
    want = [str(ipaddress.IPv6Address(a)) for a in v6] + [str(ipaddress.IPv4Address(a)) for a in v4]
    assert [r.data for r in one(msg).answers] == want

    ordinary = header(an=2) + question() + rr(PTR_QNAME, 1, bytes([192, 0, 2, 1])) + \
        rr(PTR_QNAME, 28, ipaddress.IPv6Address("2001:db8::1").packed)
    made = []
    for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        monkeypatch.setattr(cls, "__init__", lambda self, a, _i=cls.__init__: (made.append(a), _i(self, a))[1])
    assert [r.data for r in one(ordinary).answers] == ["192.0.2.1", "2001:db8::1"]
    assert made == []


def test_flags_and_rcode_names():
    # QR, opcode 4 (NOTIFY), AA, TC, RD | RA, Z=0, AD, CD, rcode 5
    m = one(header(flags=0x8000 | (4 << 11) | 0x0400 | 0x0200 | 0x0100 | 0x80 | 0x20 | 0x10 | 5)
            + question())
    assert (m.response, m.opcode, m.opcode_name) == (True, 4, "NOTIFY")
    assert (m.aa, m.tc, m.rd, m.ra, m.ad, m.cd) == (True,) * 6
    assert (m.rcode, m.rcode_name) == (5, "REFUSED")
    q = one(header(flags=0x0100) + question())
    assert (q.response, q.aa, q.tc, q.rd, q.ra, q.ad, q.cd) == (False, False, False, True, False, False, False)
    assert one(header(flags=0x8183) + question()).rcode_name == "NXDOMAIN"
    assert one(header(flags=0x818F) + question()).rcode_name == "RCODE15"


def test_https_record_with_every_known_param():
    params = (
        struct.pack("!HH", 0, 4) + struct.pack("!HH", 1, 4)            # mandatory=alpn,ipv4hint
        + struct.pack("!HH", 1, 6) + b"\x02h2\x02h3"                    # alpn
        + struct.pack("!HH", 2, 0)                                      # no-default-alpn
        + struct.pack("!HH", 3, 2) + struct.pack("!H", 8443)            # port
        + struct.pack("!HH", 4, 8) + socket.inet_aton("192.0.2.1") + socket.inet_aton("192.0.2.2")
        + struct.pack("!HH", 5, 3) + b"abc"                             # ech (base64 shown)
        + struct.pack("!HH", 6, 16) + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
        + struct.pack("!HH", 9, 1) + b"x"                               # unknown key
    )
    https = struct.pack("!H", 1) + name("svc.example.com") + params
    alias = struct.pack("!H", 0) + name("pool.example.net")
    msg = header(an=3) + question(qtype=65) + rr(PTR_QNAME, 65, https) + rr(PTR_QNAME, 65, alias) \
        + rr(PTR_QNAME, 64, struct.pack("!H", 1) + b"\x00")
    m = one(msg)
    assert m.answers[0].data == (
        '1 svc.example.com mandatory=alpn,ipv4hint alpn="h2,h3" no-default-alpn port=8443 '
        'ipv4hint=192.0.2.1,192.0.2.2 ech=YWJj ipv6hint=2001:db8::1 key9="x"')
    assert m.answers[1].data == "0 pool.example.net"
    assert (m.answers[2].type_name, m.answers[2].data) == ("SVCB", "1 .")


@pytest.mark.parametrize("params", [
    struct.pack("!HH", 3, 2) + b"\x01\xbb" + struct.pack("!HH", 1, 3) + b"\x02h2",  # keys out of order
    struct.pack("!HH", 3, 2) + b"\x01\xbb" + struct.pack("!HH", 3, 2) + b"\x01\xbb",  # key repeated
    struct.pack("!HH", 3, 3) + b"\x01\xbb\x00",                                     # port of 3 bytes
    struct.pack("!HH", 4, 5) + b"\x01\x02\x03\x04\x05",                             # ipv4hint not /4
    struct.pack("!HH", 1, 3) + b"\x05h2",                                           # alpn id overruns
    struct.pack("!HH", 1, 9),                                                       # value past RDATA
])
def test_bad_svc_params_are_malformed(params):
    rdata = struct.pack("!H", 1) + b"\x00" + params
    assert "SvcParam" in malformed(header(an=1) + question(qtype=65) + rr(PTR_QNAME, 65, rdata)).reason


def test_unknown_types_keep_type_and_length_only():
    m = one(header(an=2) + question() + rr(PTR_QNAME, 46, b"\x01" * 40) + rr(PTR_QNAME, 65280, b"zz"))
    assert [(r.type, r.type_name, r.rdlength, r.data) for r in m.answers] == [
        (46, "RRSIG", 40, ""), (65280, "TYPE65280", 2, "")]
    # An empty TXT (RFC 1035 wants one string) is shown, not rejected.
    assert one(header(an=1) + question() + rr(PTR_QNAME, 16, b"")).answers[0].data == ""


@pytest.mark.parametrize("rtype,rdata,why", [
    (1, b"\x01\x02\x03", "A RDATA is 3 bytes"),
    (28, b"\x00" * 4, "AAAA RDATA is 4 bytes"),
    (5, name("a.example") + b"\x00", "CNAME RDATA is 12 bytes but its fields take 11"),
    (16, b"\x05abc", "runs past the RDATA"),
    (15, b"\x00", "MX RDATA"),
])
def test_rdata_inconsistent_with_rdlength(rtype, rdata, why):
    assert why in malformed(header(an=1) + question() + rr(PTR_QNAME, rtype, rdata)).reason


def test_nxdomain_with_soa_in_authority():
    soa = name("ns1.example.com") + name("hostmaster.example.com") + struct.pack("!5I", 7, 1800, 900, 604800, 86400)
    m = one(header(flags=0x8183, ns=1) + question(qtype=28) + rr(b"\xc0\x14", 6, soa, ttl=900))
    assert (m.rcode, m.rcode_name, m.answers) == (3, "NXDOMAIN", ())
    [auth] = m.authority
    assert (auth.name, auth.type_name, auth.ttl) == ("com", "SOA", 900)
    assert auth.data == "ns1.example.com hostmaster.example.com 7 1800 900 604800 86400"


def test_additional_section_is_checked_and_counted():
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    assert one(header(ar=1) + question() + opt).additional_count == 1
    assert "ends inside" in malformed(header(ar=1) + question() + opt[:-3]).reason


# --- names ----------------------------------------------------------------

def test_awkward_labels_are_escaped_and_root_is_a_dot():
    weird = b"\x03a.b\x04\x00x \\\x03com\x00"
    m = one(header() + question(weird))
    assert m.questions[0].name == "a\\.b.\\000x\\032\\\\.com"
    assert one(header() + question(b"\x00", qtype=2)).questions[0].name == "."


def test_pointer_loop_is_malformed():
    # The question name points at itself.
    bad = malformed(header() + question(b"\x01a\xc0\x0c"))
    assert "does not point backwards" in bad.reason and bad.offset == 14
    # Two names pointing at each other: the second one's target is after it.
    msg = header(an=1) + question(b"\x01a\xc0\x1d") + rr(b"\x01b\xc0\x0c", 1, b"\x00" * 4)
    assert "backwards" in malformed(msg).reason


def test_forward_pointer_and_pointer_into_header_are_malformed():
    assert "backwards" in malformed(header(an=1) + question(b"\xc0\x20") + rr(name("x"), 1, b"\0" * 4)).reason
    assert "header" in malformed(header() + question(b"\xc0\x02")).reason


def test_name_length_limit_is_255_octets_on_the_wire():
    def long_name(last: int) -> bytes:
        return b"".join(bytes([63]) + b"a" * 63 for _ in range(3)) + bytes([last]) + b"b" * last + b"\x00"
    assert len(long_name(61)) == MAX_NAME_LEN
    assert len(one(header() + question(long_name(61))).questions[0].name) == 253
    assert "longer than 255" in malformed(header() + question(long_name(62))).reason
    # The same limit when the name is only too long once decompressed: 242
    # octets of labels + the 13 of "example.com" is 255, one more is too many.
    def prefixed(last: int) -> bytes:
        prefix = b"".join(bytes([63]) + b"c" * 63 for _ in range(3)) + bytes([last]) + b"d" * last
        return header(an=1) + question() + rr(prefix + PTR_QNAME, 1, b"\0" * 4)
    assert len(one(prefixed(49)).answers[0].name) == 253
    assert "longer than 255" in malformed(prefixed(50)).reason


def test_bad_label_type_is_malformed():
    assert "label length byte 0x41" in malformed(header() + question(b"\x41abc\x00")).reason


def pointer_chain(hops: int) -> bytes:
    """A CNAME whose RDATA reaches the name "chain.example" through ``hops`` pointers.

    The name and the chain (pointers to pointers) sit in the RDATA of a
    private-type record, which the decoder skips, so it meets them first when
    it follows the CNAME.
    """
    base = header(an=2) + question()
    target = len(base) + 2 + 10
    links, prev = name("chain.example"), target
    for _ in range(hops - 1):
        here = target + len(links)
        links += struct.pack("!H", 0xC000 | prev)
        prev = here
    carrier = rr(PTR_QNAME, 65280, links)
    return base + carrier + rr(PTR_QNAME, 5, struct.pack("!H", 0xC000 | prev))


def test_pointer_chain_is_bounded():
    ok = pointer_chain(MAX_POINTER_HOPS)
    assert one(ok).answers[1].data == "chain.example"
    too_many = f"more than {MAX_POINTER_HOPS} compression pointers"
    assert too_many in malformed(pointer_chain(MAX_POINTER_HOPS + 1)).reason
    # One more hop onto the chain the decoder has already walked (and
    # remembered) must count the remembered hops too.
    cname_rdata = len(ok) - 2
    again = ok[:7] + b"\x03" + ok[8:] + rr(PTR_QNAME, 5, struct.pack("!H", 0xC000 | cname_rdata))
    assert too_many in malformed(again).reason


def test_many_records_through_one_chain_stay_correct():
    # Many owners share one long compressed suffix: every name must be right
    # (the decoder remembers suffixes it has walked).
    recs = [dpkt_rr(name=f"h{i}.a.b.c.d.e.example.com", type=1, ip=bytes([10, 0, 0, i])) for i in range(50)]
    m = one(bytes(D(id=1, op=0x8180, qd=[D.Q(name="e.example.com")], an=recs)))
    assert [r.name for r in m.answers] == [f"h{i}.a.b.c.d.e.example.com" for i in range(50)]


# --- truncation -----------------------------------------------------------

def test_every_truncation_is_malformed_never_an_exception():
    full = big_response()
    for cut in range(len(full)):
        [event] = udp(full[:cut])
        assert isinstance(event, Malformed), cut
        assert 0 <= event.offset <= cut
    assert "shorter than the 12-byte header" in malformed(b"\x00" * 11).reason


def test_truncated_flag_tolerates_missing_records():
    msg = header(flags=0x8380, an=3) + question() + rr(PTR_QNAME, 1, socket.inet_aton("192.0.2.7"))
    m = one(msg + b"\xc0")           # TC set: cut inside the second record
    assert m.tc and [r.data for r in m.answers] == ["192.0.2.7"]
    assert isinstance(udp(msg.replace(b"\x83\x80", b"\x81\x80", 1) + b"\xc0")[0], Malformed)


def test_header_counts_impossible_for_the_length():
    bad = malformed(header(an=5000) + question())
    assert "header counts" in bad.reason and bad.offset == 4


# --- UDP framing ----------------------------------------------------------

def test_udp_bad_datagram_does_not_stop_the_flow():
    p = DnsParser("udp")
    first = header() + question(b"\x01a\xc0\x0c")
    [bad] = p.receive_data(first, C)
    assert isinstance(bad, Malformed) and bad.offset == 14
    [good] = p.receive_data(query(), C)
    assert isinstance(good, DnsMessage)
    [bad2] = p.receive_data(b"\x01\x02", C)
    # Offsets run over the direction's datagrams one after another.
    assert isinstance(bad2, Malformed) and bad2.offset == len(first) + len(query())
    assert p.receive_gap(C, 100) == []


# --- TCP framing ----------------------------------------------------------

THREE = [query("a.example", id=1), big_response(id=2), query("c.example", qtype=28, id=3)]


def summary(events):
    return [(e.id, e.questions, e.answers) for e in events]


def test_tcp_three_messages_split_anywhere_equal_one_feed():
    stream = framed(*THREE)
    whole = DnsParser("tcp").receive_data(stream, C)
    assert [e.id for e in whole] == [1, 2, 3] and all(isinstance(e, DnsMessage) for e in whole)
    for cut in range(len(stream) + 1):
        p = DnsParser("tcp")
        events = p.receive_data(stream[:cut], C) + p.receive_data(stream[cut:], C)
        assert summary(events) == summary(whole), cut
        assert p.receive_eof(C) == []
    p = DnsParser("tcp")
    bytewise = [e for i in range(len(stream)) for e in p.receive_data(stream[i:i + 1], C)]
    assert summary(bytewise) == summary(whole)


def test_tcp_directions_are_independent():
    p = DnsParser("tcp")
    q, r = framed(query(id=9)), framed(big_response(id=9))
    assert p.receive_data(q[:5], C) == [] and p.receive_data(r, S)[0].response
    assert p.receive_data(q[5:], C)[0].id == 9


def test_tcp_bad_length_stops_the_direction():
    p = DnsParser("tcp")
    events = p.receive_data(framed(THREE[0]) + b"\x00\x05hello" + framed(THREE[2]), C)
    assert isinstance(events[0], DnsMessage)
    assert isinstance(events[1], Malformed) and events[1].offset == 2 + len(THREE[0])
    assert "length prefix 5" in events[1].reason and len(events) == 2
    assert p.receive_data(framed(THREE[2]), C) == []
    assert p.receive_eof(C) == []
    assert isinstance(p.receive_data(framed(THREE[1]), S)[0], DnsMessage)


def test_tcp_bad_message_stops_the_direction_with_stream_offset():
    p = DnsParser("tcp")
    bad = header() + question(b"\x01a\xc0\x0c")
    events = p.receive_data(framed(THREE[0], bad, THREE[2]), C)
    assert [type(e) for e in events] == [DnsMessage, Malformed]
    assert events[1].offset == 2 + len(THREE[0]) + 2 + 14
    assert p.receive_data(framed(THREE[2]), C) == []


def test_tcp_eof_inside_a_message_and_data_after_eof():
    p = DnsParser("tcp")
    stream = framed(THREE[0])
    p.receive_data(stream[:-3], C)
    [bad] = p.receive_eof(C)
    assert isinstance(bad, Malformed) and "stream ended inside a message" in bad.reason
    assert bad.offset == len(stream) - 3
    with pytest.raises(ProtocolError):
        p.receive_data(b"\x00", C)
    p = DnsParser("tcp")
    p.receive_data(b"\x00", S)
    assert "length prefix" in p.receive_eof(S)[0].reason


def test_tcp_gap_ends_the_direction():
    p = DnsParser("tcp")
    p.receive_data(framed(THREE[0])[:5], C)
    [gap] = p.receive_gap(C, 10)
    assert isinstance(gap, Malformed) and gap.offset == 5 and p.buffered(C) == 0
    assert p.receive_data(framed(THREE[0]), C) == []


def test_tcp_buffer_stays_bounded():
    p = DnsParser("tcp")
    big = header(an=1) + question() + rr(PTR_QNAME, 65280, b"\x00" * (65535 - 12 - 17 - 12))
    assert len(big) == 65535
    stream = framed(big) * 20 + framed(big)[:40000]
    events = p.receive_data(stream, C)
    assert len(events) == 20 and p.buffered(C) <= MAX_TCP_BUFFER
    for i in range(0, len(stream), 7000):
        p.receive_data(stream[i:i + 7000], S)
        assert p.buffered(S) <= MAX_TCP_BUFFER


# --- probe and signatures -------------------------------------------------

def test_probe_rates_both_framings():
    q, r = query(), big_response()
    assert probe(q, C) == CERTAIN and probe(r, S) == CERTAIN
    assert probe(framed(q), C) == CERTAIN and probe(framed(r) + framed(q), S) == CERTAIN
    assert probe(framed(r)[:40], S) == LIKELY           # first segment of a longer message
    assert probe(q[:-1], C) == NO_MATCH                 # a datagram must be whole
    assert probe(framed(q)[:2], C) == POSSIBLE          # a TCP length sent on its own
    assert probe(b"\x00\x05", C) == NO_MATCH           # ... too short for a header


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.6\r\n",
    bytes.fromhex("160301020001000200030379") + b"\x00" * 40,  # TLS ClientHello start
    b"*1\r\n$4\r\nPING\r\n",
    b"",
    b"\x00" * 64,
])
def test_probe_rejects_other_protocols(payload):
    assert probe(payload, C) == NO_MATCH


def test_probe_checks_opcode_z_and_question():
    assert probe(header(flags=0x1800) + question(), C) == NO_MATCH      # opcode 3 unassigned
    assert probe(header(flags=0x0140) + question(), C) == NO_MATCH      # Z bit
    assert probe(header(flags=0x0103) + question(), C) == NO_MATCH      # query with an rcode
    assert probe(header() + question(qclass=77), C) == NO_MATCH
    assert probe(header() + question(qclass=0x8001), C) == CERTAIN     # mDNS unicast-response bit


def test_plugin_declaration_and_signatures():
    PLUGIN.check()
    assert PLUGIN.name == "dns" and PLUGIN.transports == {"udp", "tcp"}
    assert isinstance(PLUGIN.parser_factory("tcp"), DnsParser)
    assert PLUGIN.parser_factory("tcp").transport == "tcp"

    def hits(payload, direction):
        return [s for s in PLUGIN.signatures if s.direction == direction and s.matches(payload)]
    assert hits(query(), C) and hits(framed(query()), C)
    assert hits(big_response(), S) and hits(framed(big_response()), S)
    assert not hits(big_response(), C) and not hits(query(), S)
    assert not hits(b"GET / HTTP/1.1\r\n\r\n", C)


# --- never raise ----------------------------------------------------------

SEEDS = [query(), big_response(), framed(query()),
         header(flags=0x8183, ns=1) + question() + rr(PTR_QNAME, 6, name("a.b") + name("c.d") + b"\0" * 20),
         pointer_chain(5)]


def feed_all(transport: str, chunks: list[bytes]) -> None:
    p = DnsParser(transport)
    dead = False
    for chunk in chunks:
        for e in p.receive_data(chunk, C):
            assert isinstance(e, (DnsMessage, Malformed))
            if transport == "tcp":
                assert not dead, "events after Malformed on TCP"
                dead = dead or isinstance(e, Malformed)
    p.receive_eof(C)
    p.receive_gap(S, 3)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_random_bytes_never_raise(chunks):
    feed_all("udp", chunks)
    feed_all("tcp", chunks)
    for c in chunks:
        probe(c, C)


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if not data:
            break
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0x3F, 0x40, 0xC0, 0xFF, i & 0xFF]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[i]
        else:
            del data[i:]
    return bytes(data)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.integers(1, 40))
def test_mutated_real_messages_never_raise(data, split):
    feed_all("udp", [data])
    framed_data = framed(data) if len(data) <= 65535 else data
    feed_all("tcp", [framed_data[i:i + split] for i in range(0, len(framed_data), split)])
    probe(data, S)
    probe(framed_data, S)
