"""protocols/tls.py: record layer, hello decoding, fingerprints, stop rules.

Hellos are built here field by field, so every expected value below is
written out by hand (or taken from the JA4 specification's worked example, or
from tshark's answer for the same hello in the shared corpus), never computed
by the code under test.
"""
from __future__ import annotations

import hashlib
import os
import random
import struct

import pytest
from hypothesis import given, settings, strategies as st

from protocols.api import CERTAIN, LIKELY, NO_MATCH, POSSIBLE, Direction, Malformed, ProtocolError
from protocols import tls
from protocols.tls import (PLUGIN, Ssl2ClientHello, TlsAlert, TlsClientHello, TlsParser,
                           TlsServerHello, probe)

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
CORPUS = "/work/shared/corpus/pcaps"


# --- Builders -----------------------------------------------------------------
def u8v(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def u16v(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def u16s(values) -> bytes:
    return b"".join(struct.pack(">H", v) for v in values)


def ext(ext_type: int, body: bytes = b"") -> bytes:
    return struct.pack(">H", ext_type) + u16v(body)


def sni_ext(name: bytes) -> bytes:
    return ext(0, u16v(b"\x00" + u16v(name)))


def alpn_ext(*names: bytes) -> bytes:
    return ext(16, u16v(b"".join(u8v(n) for n in names)))


def client_hello(*, version=0x0303, ciphers=(0x1301, 0x002F), exts=(), session_id=b"",
                 with_ext_block=True) -> bytes:
    """A ClientHello handshake message (type + length + body)."""
    body = (struct.pack(">H", version) + bytes(range(32)) + u8v(session_id)
            + u16v(u16s(ciphers)) + u8v(b"\x00"))
    if with_ext_block:
        body += u16v(b"".join(exts))
    return b"\x01" + len(body).to_bytes(3, "big") + body


def server_hello(*, version=0x0303, cipher=0x1302, exts=(), random_=None, session_id=b"",
                 with_ext_block=True) -> bytes:
    body = (struct.pack(">H", version) + (random_ or bytes(32)) + u8v(session_id)
            + struct.pack(">H", cipher) + b"\x00")
    if with_ext_block:
        body += u16v(b"".join(exts))
    return b"\x02" + len(body).to_bytes(3, "big") + body


def record(payload: bytes, ctype: int = 22, version: int = 0x0303) -> bytes:
    return struct.pack(">BHH", ctype, version, len(payload)) + payload


def records(payload: bytes, size: int, ctype: int = 22, version: int = 0x0303) -> bytes:
    """payload fragmented into records of at most ``size`` bytes."""
    return b"".join(record(payload[i:i + size], ctype, version) for i in range(0, len(payload), size))


CCS = record(b"\x01", ctype=20)

# Chrome's ClientHello from the corpus (ndpi-chrome.pcap, port 64393), rebuilt
# from its decoded fields: GREASE cipher/extension/group/version values included.
CHROME_CIPHERS = (0x9A9A, 0x1303, 0x1301, 0x1302, 0xCCA9, 0xCCA8, 0xC02B, 0xC02F, 0xC02C,
                  0xC030, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035)
CHROME_SIGALGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
CHROME_EXTS = (
    ext(0x4A4A),                                     # GREASE
    sni_ext(b"www.iit.cnr.it"),
    ext(23),                                         # extended_master_secret
    ext(0xFF01, b"\x00"),                            # renegotiation_info
    ext(10, u16v(u16s((0x6A6A, 29, 23, 24)))),       # supported_groups, GREASE first
    ext(11, u8v(b"\x00")),                           # ec_point_formats
    ext(35),                                         # session_ticket
    alpn_ext(b"h2", b"http/1.1"),
    ext(5, b"\x01\x00\x00\x00\x00"),                 # status_request
    ext(13, u16v(u16s(CHROME_SIGALGS))),
    ext(18),                                         # signed_certificate_timestamp
    ext(51, u16v(u16s((0x6A6A, 1)) + b"\x00" + u16s((29, 32)) + bytes(32))),  # key_share
    ext(45, u8v(b"\x01")),                           # psk_key_exchange_modes
    ext(43, u8v(u16s((0x6A6A, 0x0304, 0x0303, 0x0302, 0x0301)))),
    ext(27, u8v(b"\x00\x02")),                       # compress_certificate
    ext(17513, u16v(u8v(b"h2"))),                    # application_settings
    ext(0x6A6A, b"\x00"),                            # GREASE
    ext(21, bytes(200)),                             # padding
)
CHROME_HELLO = client_hello(ciphers=CHROME_CIPHERS, exts=CHROME_EXTS)
CHROME_JA3 = ("771,4867-4865-4866-52393-52392-49195-49199-49196-49200-49171-49172-156-157-47-53,"
              "0-23-65281-10-11-35-16-5-13-18-51-45-43-27-17513-21,29-23-24,0")

HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")


def feed(parser, data: bytes, direction=C, step: int | None = None):
    out = []
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        out += parser.receive_data(data[i:i + step], direction)
    return out


def only(events, cls):
    found = [e for e in events if isinstance(e, cls)]
    assert len(found) == 1, events
    return found[0]


# --- ClientHello ----------------------------------------------------------------
def test_chrome_client_hello_fields():
    ev = only(feed(TlsParser(), record(CHROME_HELLO, version=0x0301)), TlsClientHello)
    assert ev.kind == "tls_client_hello"
    assert ev.direction is C
    assert ev.record_version == 0x0301 and ev.legacy_version == 0x0303
    assert ev.sni == "www.iit.cnr.it"
    assert ev.alpn == ("h2", "http/1.1")
    assert ev.versions == (0x6A6A, 0x0304, 0x0303, 0x0302, 0x0301)   # as sent, GREASE kept
    assert ev.cipher_suites == CHROME_CIPHERS
    assert ev.extensions == (0x4A4A, 0, 23, 0xFF01, 10, 11, 35, 16, 5, 13, 18, 51, 45, 43, 27,
                             17513, 0x6A6A, 21)
    assert ev.groups == (0x6A6A, 29, 23, 24)
    assert ev.ec_point_formats == (0,)
    assert ev.sig_algs == CHROME_SIGALGS
    assert ev.hrr_retry is False


def test_chrome_ja3_matches_tshark_and_ja4_matches_the_spec_example():
    ev = only(feed(TlsParser(), record(CHROME_HELLO)), TlsClientHello)
    assert ev.ja3_string == CHROME_JA3
    # tshark 4.0's ja3 for this hello (corpus truth, ndpi-chrome.pcap)
    assert ev.ja3 == "aa50c12a5dfa717d9d6ab34e97de79d5"
    # Same cipher/extension/signature lists as the JA4 spec's worked example.
    assert ev.ja4 == "t13d1516h2_8daaf6152771_e5627efa2ab1"


def test_ja3_of_a_minimal_hello_has_empty_fields():
    hello = client_hello(version=0x0301, ciphers=(0x002F, 0x0035), with_ext_block=False)
    ev = only(feed(TlsParser(), record(hello, version=0x0301)), TlsClientHello)
    assert ev.ja3_string == "769,47-53,,,"
    assert ev.ja3 == hashlib.md5(b"769,47-53,,,").hexdigest()
    assert ev.sni is None and ev.alpn == () and ev.extensions == () and ev.versions == ()
    # no supported_versions: the hello's own version; no SNI: "i"; no extensions
    assert ev.ja4 == ("t10i020000_" + hashlib.sha256(b"002f,0035").hexdigest()[:12]
                      + "_000000000000")


def test_ja4_parts_by_hand():
    exts = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005, 0x0023,
            0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015]
    ciphers = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013,
               0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
    base = dict(legacy_version=0x0303, versions=[0x0304, 0x0303], ciphers=ciphers,
                extensions=exts, sig_algs=list(CHROME_SIGALGS), first_alpn=b"h2")
    assert tls.ja4(**base) == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    # spec: without signature algorithms the string ends without "_"
    assert tls.ja4(**{**base, "sig_algs": []}).endswith("_6d807ffa2a79")
    # GREASE anywhere changes nothing
    grease = dict(base, ciphers=[0x0A0A] + ciphers, extensions=exts + [0xFAFA],
                  versions=[0x3A3A, 0x0304])
    assert tls.ja4(**grease) == tls.ja4(**base)
    assert tls.ja4(**{**base, "ciphers": []}).split("_")[1] == "000000000000"
    assert tls.ja4(**{**base, "extensions": [0, 16]}).split("_")[2] == "000000000000"
    many = dict(base, ciphers=list(range(1, 150)), extensions=list(range(200, 310)))
    assert tls.ja4(**many)[4:8] == "9999"
    assert tls.ja4(**{**base, "versions": []})[:3] == "t12"
    assert tls.ja4(**{**base, "versions": [0x7F1C]})[:3] == "t00"


@pytest.mark.parametrize("alpn,expected", [
    (None, "00"), (b"h2", "h2"), (b"http/1.1", "h1"), (b"h", "hh"),
    # the spec's non-alphanumeric examples
    (b"\xab", "ab"), (b"\xab\xcd", "ad"), (b"\x30\xab", "3b"), (b"\x30\x31\xab\xcd", "3d"),
    (b"\x30\xab\xcd\x31", "01"),
])
def test_ja4_alpn_characters(alpn, expected):
    j = tls.ja4(legacy_version=0x0303, versions=(), ciphers=[1], extensions=[1],
                sig_algs=[], first_alpn=alpn)
    assert j[8:10] == expected


def test_grease_values():
    assert all(tls.is_grease(v) for v in range(0x0A0A, 0x10000, 0x1010))
    assert not any(tls.is_grease(v) for v in (0x0A1A, 0x1A0A, 0x0B0B, 0x0000, 0x0303))


# --- Reassembly -----------------------------------------------------------------
def test_hello_split_over_records_and_bytes_gives_identical_events():
    whole = feed(TlsParser(), record(CHROME_HELLO))
    assert len(whole) == 1
    for size in (1, 3, 4, 5, 100, 511):
        split = records(CHROME_HELLO, size)
        assert feed(TlsParser(), split) == whole, size
        assert feed(TlsParser(), split, step=1) == whole, size
    rng = random.Random(7)
    data = records(CHROME_HELLO, 37)
    parser, out, i = TlsParser(), [], 0
    while i < len(data):
        n = rng.randint(1, 50)
        out += parser.receive_data(data[i:i + n], C)
        i += n
    assert out == whole


def test_record_version_is_that_of_the_first_record():
    data = record(CHROME_HELLO[:10], version=0x0301) + record(CHROME_HELLO[10:], version=0x0303)
    assert only(feed(TlsParser(), data), TlsClientHello).record_version == 0x0301


def test_interleaved_record_in_a_fragmented_hello_is_malformed():
    data = record(CHROME_HELLO[:10]) + record(b"\x01\x00", ctype=21)
    ev = only(feed(TlsParser(), data), Malformed)
    assert "inside a fragmented handshake message" in ev.reason and ev.offset == 15


# --- ServerHello and the stop rules ----------------------------------------------
def test_tls12_server_hello_then_silence_after_change_cipher_spec():
    sh = server_hello(cipher=0xC02F, exts=(ext(0xFF01, b"\x00"), ext(0, b""), ext(11, u8v(b"\x00")),
                                           alpn_ext(b"h2")))
    certificate = b"\x0b" + (3000).to_bytes(3, "big") + bytes(3000)
    done = b"\x0e\x00\x00\x00"
    flight = records(sh + certificate + done, 1000) + CCS + record(b"\x01" + bytes(39))
    parser = TlsParser()
    events = feed(parser, flight, S, step=7)
    ev = only(events, TlsServerHello)
    assert len(events) == 1
    assert ev.kind == "tls_server_hello" and ev.direction is S
    assert (ev.legacy_version, ev.selected_version, ev.version) == (0x0303, None, 0x0303)
    assert ev.cipher_suite == 0xC02F and ev.alpn == "h2"
    assert ev.extensions == (0xFF01, 0, 11, 16)
    assert ev.ja3s_string == "771,49199,65281-0-11-16"
    assert ev.ja3s == "ae53107a2e47ea20c72ac44821a728bf"     # tshark, ndpi-443-curl.pcap
    assert not ev.hello_retry_request
    assert parser.finished(S)
    assert parser.receive_data(b"GET / HTTP/1.1\r\n", S) == []   # no Malformed: not read at all


def test_tls13_server_stops_after_server_hello():
    sh = server_hello(exts=(ext(43, u16s((0x0304,))), ext(51, bytes(36))))
    parser = TlsParser()
    ev = only(feed(parser, record(sh) + CCS + record(os.urandom(300), ctype=23), S), TlsServerHello)
    assert ev.selected_version == 0x0304 and ev.version == 0x0304
    assert ev.ja3s_string == "771,4866,43-51"
    assert ev.ja3s == "15af977ce25de452b96affa2addb1036"     # tshark, zeek-tls-hrr.pcap
    assert parser.finished(S)
    # even a well-formed "hello" after it is encrypted payload as far as we know
    assert parser.receive_data(record(sh), S) == []


def test_tls12_client_stops_after_change_cipher_spec():
    hello = client_hello(exts=(sni_ext(b"a.example"),))
    cke = b"\x10\x00\x00\x21\x20" + bytes(32)
    # an "encrypted Finished" that happens to look like a ClientHello header
    fake = record(client_hello())
    parser = TlsParser()
    events = feed(parser, record(hello) + record(cke) + CCS + fake)
    assert [type(e) for e in events] == [TlsClientHello]
    assert parser.finished(C)


def test_tls13_client_after_compat_ccs_with_server_unseen():
    parser = TlsParser()
    events = feed(parser, record(CHROME_HELLO) + CCS + record(b"\x14" + os.urandom(50)))
    assert [type(e) for e in events] == [TlsClientHello]
    assert parser.finished(C)
    parser = TlsParser()
    events = feed(parser, record(CHROME_HELLO) + CCS + record(os.urandom(50), ctype=23))
    assert [type(e) for e in events] == [TlsClientHello] and parser.finished(C)


def _hrr_flights():
    ch1 = client_hello(ciphers=(0x1302, 0x1303, 0x1301, 0x00FF),
                       exts=(ext(10, u16v(u16s((21, 23, 24)))), ext(43, u8v(u16s((0x0304,)))),
                             ext(51, u16v(b""))))
    ch2 = client_hello(ciphers=(0x1302, 0x1303, 0x1301, 0x00FF),
                       exts=(ext(10, u16v(u16s((21, 23, 24)))), ext(43, u8v(u16s((0x0304,)))),
                             ext(51, u16v(u16s((23, 65)) + bytes(65)))))
    hrr = server_hello(random_=HRR_RANDOM, exts=(ext(43, u16s((0x0304,))), ext(51, u16s((23,)))))
    sh = server_hello(exts=(ext(51, u16s((23, 65)) + bytes(65)), ext(43, u16s((0x0304,)))))
    client = [record(ch1, version=0x0301), CCS + record(ch2) + record(os.urandom(80), ctype=23)]
    server = [record(hrr) + CCS, record(sh) + record(os.urandom(90), ctype=23)]
    return client, server


@pytest.mark.parametrize("order", ["causal", "client_first", "server_first", "bytewise"])
def test_hello_retry_request(order):
    client, server = _hrr_flights()
    parser, events = TlsParser(), []
    if order == "client_first":
        plan = [(C, b"".join(client)), (S, b"".join(server))]
    elif order == "server_first":
        plan = [(S, b"".join(server)), (C, b"".join(client))]
    else:
        plan = [(C, client[0]), (S, server[0]), (C, client[1]), (S, server[1])]
    for direction, data in plan:
        events += feed(parser, data, direction, step=1 if order == "bytewise" else None)
    hellos = [e for e in events if isinstance(e, TlsClientHello)]
    servers = [e for e in events if isinstance(e, TlsServerHello)]
    assert [h.hrr_retry for h in hellos] == [False, True]
    assert [s.hello_retry_request for s in servers] == [True, False]
    assert servers[0].ja3s_string == "771,4866,43-51"
    assert servers[1].ja3s_string == "771,4866,51-43"
    assert hellos[0].record_version == 0x0301 and hellos[1].record_version == 0x0303
    assert not any(isinstance(e, Malformed) for e in events)
    assert parser.finished(C) and parser.finished(S)


def test_a_third_client_hello_is_malformed():
    data = record(CHROME_HELLO) * 3
    events = feed(TlsParser(), data)
    assert [type(e) for e in events] == [TlsClientHello, TlsClientHello, Malformed]
    assert events[1].hrr_retry and "more than 2 hellos" in events[2].reason


# --- SSLv2, non-TLS, alerts -------------------------------------------------------
def ssl2_hello(version=0x0301, specs=(0x010080, 0x000035, 0x00002F), challenge=bytes(16)):
    spec_bytes = b"".join(s.to_bytes(3, "big") for s in specs)
    body = (b"\x01" + struct.pack(">HHHH", version, len(spec_bytes), 0, len(challenge))
            + spec_bytes + challenge)
    return struct.pack(">H", 0x8000 | len(body)) + body


def test_sslv2_client_hello():
    data = ssl2_hello()
    assert probe(data, C) == LIKELY
    for step in (None, 1):
        parser = TlsParser()
        ev = only(feed(parser, data, step=step), Ssl2ClientHello)
        assert ev.kind == "ssl2_client_hello"
        assert (ev.version, ev.cipher_specs, ev.session_id_len, ev.challenge_len) == \
            (0x0301, (0x010080, 0x35, 0x2F), 0, 16)
        # the server answers in TLS records; that side parses as usual
        sh = only(feed(parser, record(server_hello(cipher=0x2F, with_ext_block=False)), S),
                  TlsServerHello)
        assert sh.ja3s_string == "771,47,"


def test_sslv2_with_bad_lengths_is_malformed():
    bad = bytearray(ssl2_hello())
    bad[6] = 4                              # cipher specs length not a multiple of 3
    assert "multiple of 3" in only(feed(TlsParser(), bytes(bad)), Malformed).reason
    # A declared length too short for any CLIENT-HELLO (found by fuzzing: this
    # used to loop forever waiting for a body that could not exist).
    tiny = bytes.fromhex("800301030100090000001066270100488000003500002f")
    for step in (None, 1, 2):
        ev = only(feed(TlsParser(), tiny, step=step), Malformed)
        assert ev.reason.startswith("not a TLS record") and ev.offset == 0
    assert probe(tiny, C) == NO_MATCH


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"\x16\x03\x09\x00\x10",                 # not a TLS version
    b"\x16\x03\x03\xff\xff",                 # record longer than TLS allows
    b"\x80\x2e\x05\x00\x02" + bytes(50),     # high bit, but not an SSLv2 CLIENT-HELLO
])
def test_non_tls_bytes_are_malformed(data):
    parser = TlsParser()
    ev = only(feed(parser, data, step=3), Malformed)
    assert ev.direction is C and ev.offset == 0 and ev.reason
    assert parser.finished(C)
    assert parser.receive_data(CHROME_HELLO, C) == []


def test_http_reason_names_the_bytes():
    ev = only(feed(TlsParser(), b"GET / HTTP/1.1\r\n\r\n"), Malformed)
    assert ev.reason == "not a TLS record: b'GET /'"
    assert probe(b"GET / HTTP/1.1\r\n\r\n", C) == NO_MATCH


def test_alerts_and_their_limit():
    events = feed(TlsParser(), record(b"\x02\x28", ctype=21), S)
    assert events == [TlsAlert(S, 2, 40)] and events[0].kind == "tls_alert"
    events = feed(TlsParser(), record(b"\x01\x70", ctype=21) * (tls.MAX_ALERTS + 5), S)
    assert len(events) == tls.MAX_ALERTS + 1 and isinstance(events[-1], Malformed)


@pytest.mark.parametrize("stream,reason", [
    (record(client_hello(exts=(ext(0, b""), ext(0, b"")))), "appears twice"),
    (record(client_hello(ciphers=())), "no cipher suites"),
    (record(client_hello(session_id=bytes(33))), "session id longer"),
    (record(client_hello(exts=(alpn_ext(b""),))), "empty protocol name"),
    (record(client_hello(exts=(ext(10, b"\x00\x03\x00\x17\x00"),))), "supported_groups"),
    (record(client_hello(exts=(sni_ext(b"x") + b"\x00",))), "extension type runs past its end"),
    (record(client_hello(exts=[ext(1000 + i) for i in range(tls.MAX_EXTENSIONS + 1)])),
     "more than 128 extensions"),
    (record(client_hello(ciphers=range(1, tls.MAX_CIPHER_SUITES + 2))), "entries, limit 1024"),
    (record(b"\x01\x00\x00\x01\x03"), "too short"),
    (record(b"\x0b\x00\x00\x00"), "not a hello"),
    (record(server_hello()) + record(client_hello()), "ClientHello from the server side"),
    (record(client_hello()) + b"junk\x00", "bad TLS record header"),
])
def test_malformed_hellos(stream, reason):
    ev = only(feed(TlsParser(), stream), Malformed)
    assert reason in ev.reason, ev


def test_oversized_hello_is_refused_before_buffering():
    header = b"\x01" + (tls.MAX_HELLO_LEN + 1).to_bytes(3, "big")
    ev = only(feed(TlsParser(), record(header)), Malformed)
    assert "limit" in ev.reason and ev.offset == 5


def test_large_skipped_messages_are_not_buffered():
    parser = TlsParser()
    feed(parser, record(server_hello()), S)
    # a 16 MB "certificate" in maximum-size records: skipped, never stored
    cert = b"\x0b\xff\xff\xff"
    feed(parser, record(cert + bytes(tls.MAX_RECORD_LEN - 4)), S)
    half = parser._halves[S]
    assert half.hs_body is None and half.hs_left == 0xFFFFFF - (tls.MAX_RECORD_LEN - 4)
    assert not parser.finished(S)


def test_truncated_hello_at_eof_is_reported():
    parser = TlsParser()
    assert feed(parser, record(CHROME_HELLO)[:100]) == []
    ev = only(parser.receive_eof(C), Malformed)
    assert "ended inside a hello" in ev.reason and ev.offset == 5
    with pytest.raises(ProtocolError):
        parser.receive_data(b"\x16", C)
    # a clean end between records says nothing
    parser = TlsParser()
    feed(parser, record(CHROME_HELLO))
    assert parser.receive_eof(C) == []


def test_gaps():
    # inside a skipped message: harmless
    parser = TlsParser()
    cert_record = record(b"\x0b\x00\x10\x00" + bytes(4096))
    feed(parser, record(server_hello()) + cert_record[:19], S)
    assert parser.receive_gap(S, 100) == []
    assert feed(parser, cert_record[119:] + CCS, S) == [] and parser.finished(S)
    # inside a hello: we lost our place
    parser = TlsParser()
    feed(parser, record(CHROME_HELLO)[:50])
    ev = only(parser.receive_gap(C, 10), Malformed)
    assert "gap of 10 bytes" in ev.reason and ev.offset == 50
    # after the direction is encrypted: nothing to say
    parser = TlsParser()
    feed(parser, record(CHROME_HELLO) + record(b"x", ctype=23))
    assert parser.receive_gap(C, 1000) == []


def test_mid_stream_application_data_is_silently_ignored():
    parser = TlsParser()
    assert feed(parser, record(os.urandom(100), ctype=23)) == []
    assert parser.finished(C)


# --- probe and plugin ------------------------------------------------------------
def test_probe():
    assert probe(record(CHROME_HELLO), C) == CERTAIN
    assert probe(record(CHROME_HELLO)[:10], C) == CERTAIN
    assert probe(record(server_hello()), S) == CERTAIN
    # a hello fragmented into tiny records is still recognised
    assert probe(records(CHROME_HELLO, 2), C) == LIKELY
    assert probe(records(CHROME_HELLO, 100), C) == CERTAIN
    assert probe(b"\x16\x03\x01", C) == POSSIBLE
    assert probe(record(b"x" * 40, ctype=23), C) == POSSIBLE
    assert probe(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x09", C) == NO_MATCH   # hello version 9.x
    assert probe(b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03", C) == NO_MATCH  # too small
    for junk in (b"", b"GET / HTTP/1.1\r\n", b"\x00" * 20, b"SSH-2.0-x\r\n", b"*1\r\n$4\r\nPING\r\n"):
        assert probe(junk, C) == NO_MATCH, junk


def test_plugin_declaration_and_signatures():
    PLUGIN.check()
    assert PLUGIN.name == "tls" and PLUGIN.transports == frozenset({"tcp"})
    assert isinstance(PLUGIN.parser_factory("tcp"), TlsParser)
    ch_sig, sh_sig = PLUGIN.signatures[:2]
    assert ch_sig.direction is C and sh_sig.direction is S
    assert ch_sig.matches(record(CHROME_HELLO, version=0x0301))
    assert ch_sig.matches(record(CHROME_HELLO, version=0x0303))
    assert not ch_sig.matches(record(server_hello()))
    assert sh_sig.matches(record(server_hello()))
    assert not any(s.matches(b"GET / HTTP/1.1\r\n") for s in PLUGIN.signatures)
    assert PLUGIN.signatures[2].matches(ssl2_hello())


# --- Real hellos from the shared corpus (skipped when it is not there) -----------
def _corpus_client_streams(name: str, limit: int = 3) -> list[bytes]:
    """Client->server payload of the first flows of a pcap, in seq order."""
    dpkt = pytest.importorskip("dpkt")
    path = os.path.join(CORPUS, name)
    if not os.path.exists(path):
        return []
    flows: dict[tuple, dict[int, bytes]] = {}
    with open(path, "rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            tcp = getattr(ip, "data", None)
            if isinstance(tcp, dpkt.tcp.TCP) and tcp.dport == 443 and tcp.data:
                flows.setdefault((ip.src, tcp.sport), {})[tcp.seq] = bytes(tcp.data)
    streams = []
    for segs in list(flows.values())[:limit]:
        streams.append(b"".join(segs[k] for k in sorted(segs))[:8192])
    return streams


REAL = [s for name in ("ndpi-chrome.pcap", "sv-tls-client-hello-frag-mtu300.pcap",
                       "zeek-tls-chrome-1250-tls-x25519-kyber.pcap")
        for s in (_corpus_client_streams(name) if os.path.isdir(CORPUS) else [])]


@pytest.mark.skipif(not REAL, reason="shared corpus not available")
def test_real_hellos_bytewise():
    for stream in REAL:
        whole = feed(TlsParser(), stream)
        assert isinstance(whole[0], TlsClientHello), whole
        assert feed(TlsParser(), stream, step=1) == whole


# --- Properties ------------------------------------------------------------------
HELLOS = [record(CHROME_HELLO), records(CHROME_HELLO, 50), ssl2_hello(),
          record(server_hello(exts=(ext(43, u16s((0x0304,))),))),
          b"".join(_hrr_flights()[0])] + REAL


def _check_all(parser, data: bytes, direction, cuts) -> None:
    pos = 0
    for cut in sorted(cuts) + [len(data)]:
        for ev in parser.receive_data(data[pos:cut], direction):
            assert ev.kind in ("tls_client_hello", "tls_server_hello", "ssl2_client_hello",
                               "tls_alert", "malformed")
        pos = max(pos, cut)
    for half in parser._halves:            # memory stays bounded whatever came in
        assert len(half.hs_body or b"") <= tls.MAX_HELLO_LEN
        assert len(half.ssl2 or b"") <= 2 + 0x7FFF and len(half.hdr) < 5
    parser.receive_gap(direction, 3)
    parser.receive_eof(direction)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([C, S]), st.lists(st.integers(0, 600), max_size=8))
def test_random_bytes_never_raise(data, direction, cuts):
    _check_all(TlsParser(), data, direction, cuts)
    probe(data, direction)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(HELLOS), st.lists(st.tuples(st.sampled_from("fid"), st.integers(0, 10**6),
                                                   st.integers(0, 255)), min_size=1, max_size=6),
       st.sampled_from([C, S]), st.lists(st.integers(0, 3000), max_size=6))
def test_mutated_hellos_never_raise(hello, edits, direction, cuts):
    data = bytearray(hello)
    for op, where, value in edits:
        where %= len(data) + 1
        if op == "f" and where < len(data):
            data[where] = value              # flip a byte
        elif op == "i":
            data[where:where] = bytes([value]) * (1 + value % 4)
        else:
            del data[where:where + 1 + value % 8]
    _check_all(TlsParser(), bytes(data), direction, cuts)
    probe(bytes(data), direction)


# Starts that steer random tails into each parsing path (the SSLv2 hang above
# hid behind an "\x80 xx 01 03 0x" start that plain random bytes rarely hit).
PREFIXES = [b"", b"\x16\x03\x01", b"\x16\x03\x03\x00\x30\x01", b"\x16\x03\x03\x00\x30\x02",
            b"\x16\x03\x03\x00\x04\x0b", b"\x15\x03\x03\x00\x02", b"\x14\x03\x03\x00\x01\x01",
            b"\x17\x03\x03", b"\x18\x03\x03", b"\x80", b"\x80\x03\x01\x03\x01", b"\x81\x00\x01\x00\x02",
            record(CHROME_HELLO) + b"\x14\x03\x03\x00\x01\x01\x16\x03\x03"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PREFIXES), st.binary(max_size=300), st.sampled_from([C, S]),
       st.lists(st.integers(0, 2000), max_size=6))
def test_structured_prefix_then_random_never_raises(prefix, tail, direction, cuts):
    _check_all(TlsParser(), prefix + tail, direction, cuts)
    probe(prefix + tail, direction)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2, 3]), st.integers(0, 10**6), st.integers(0, 255)),
                max_size=4),
       st.randoms(use_true_random=False))
def test_mutated_conversations_never_raise(edits, rnd):
    client, server = _hrr_flights()
    flights = [bytearray(client[0]), bytearray(server[0]), bytearray(client[1]), bytearray(server[1])]
    for which, where, value in edits:
        f = flights[which]
        f[where % len(f)] = value
    parser = TlsParser()
    for flight, direction in zip(flights, [C, S, C, S]):
        data = bytes(flight)
        i = 0
        while i < len(data):
            n = rnd.randint(1, 64)
            parser.receive_data(data[i:i + n], direction)
            i += n
    for half in parser._halves:
        assert len(half.hs_body or b"") <= tls.MAX_HELLO_LEN
    parser.receive_eof(C)
    parser.receive_eof(S)
