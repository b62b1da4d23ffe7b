"""protocols/postgresql.py on crafted streams: startup, the SSL negotiation,
authentication, simple and extended queries, results, errors, framing
(split at every byte, oversize, garbage) and the probe."""
from __future__ import annotations

import struct

import pytest

from protocols import registry
from protocols.api import CERTAIN, LIKELY, NO_MATCH, Direction
from protocols.postgresql import (CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_BUFFERED_BYTES,
                                  MAX_QUERY_BYTES, MAX_STARTUP_BYTES, MESSAGE_HEAD_BYTES, PLUGIN,
                                  SSL_REQUEST_CODE, PostgresParser, probe)
from slowpath.analyzer import FlowAnalyzer
from tests.unit.test_tls_parser import client_hello, record, sni_ext

C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def startup(version=0x00030000, **params) -> bytes:
    body = struct.pack(">I", version) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack(">I", len(body) + 4) + body


def msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack(">I", len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


SSL_REQUEST = struct.pack(">II", 8, SSL_REQUEST_CODE)
GSS_REQUEST = struct.pack(">II", 8, GSSENC_REQUEST_CODE)
LOGIN = startup(user="alice", database="shop", application_name="psql", client_encoding="UTF8")
AUTH_OK = msg(b"R", struct.pack(">I", 0))
AUTH_MD5 = msg(b"R", struct.pack(">I", 5) + b"\x01\x02\x03\x04")
SASL = msg(b"R", struct.pack(">I", 10) + cstr("SCRAM-SHA-256-PLUS") + cstr("SCRAM-SHA-256") + b"\0")
SASL_INITIAL = msg(b"p", cstr("SCRAM-SHA-256") + struct.pack(">i", 32) + b"n,,n=,r=" + b"x" * 24)
SASL_CONTINUE = msg(b"R", struct.pack(">I", 11) + b"r=xyz,s=salt,i=4096")
SASL_RESPONSE = msg(b"p", b"c=biws,r=xyz,p=proof")
SASL_FINAL = msg(b"R", struct.pack(">I", 12) + b"v=sig")
WELCOME = (AUTH_OK + msg(b"S", cstr("server_version") + cstr("16.4 (Debian)"))
           + msg(b"K", struct.pack(">II", 132, 77)) + msg(b"Z", b"I"))
ROWS = (msg(b"T", struct.pack(">H", 2) + b"x" * 36) + msg(b"D", b"\0\2" + b"r" * 10)
        + msg(b"D", b"\0\2" + b"s" * 20) + msg(b"C", cstr("SELECT 2")) + msg(b"Z", b"I"))
ERROR = msg(b"E", cstr("SERROR") + cstr("VERROR") + cstr("C42P01")
            + cstr('Mrelation "nope" does not exist') + cstr("Fparse_relation.c") + b"\0")


def feed(chunks, parser=None):
    p = parser or PostgresParser()
    out = []
    for d, b in chunks:
        out += p.receive_data(b, d)
    return out


def kinds(events):
    return [e.kind for e in events]


def test_startup_then_cleartext_session():
    ev = feed([(C, LOGIN), (S, WELCOME), (C, msg(b"Q", cstr("select * from t"))), (S, ROWS),
               (C, msg(b"X", b""))])
    st = ev[0]
    assert (st.kind, st.protocol_version, st.user, st.database, st.application_name) == \
        ("pgsql_startup", "3.0", "alice", "shop", "psql")
    assert ("client_encoding", "UTF8") in st.parameters
    assert kinds(ev)[1:] == ["pgsql_auth_request", "pgsql_parameter_status", "pgsql_backend_key",
                             "pgsql_ready", "pgsql_query", "pgsql_row_description",
                             "pgsql_command_complete", "pgsql_ready", "pgsql_terminate"]
    assert ev[1].method == "ok" and (ev[2].name, ev[2].value) == ("server_version", "16.4 (Debian)")
    assert (ev[3].process_id, ev[3].secret_key) == (132, 77)
    q = ev[5]
    assert (q.type, q.query, q.length, q.truncated) == ("simple", "select * from t", 15, False)
    assert ev[6].field_count == 2
    done = ev[7]
    assert (done.tag, done.data_rows, done.data_size) == ("SELECT 2", 2, 12 + 22)


def test_ssl_refused_then_startup_and_md5():
    ev = feed([(C, SSL_REQUEST), (S, b"N"), (C, LOGIN), (S, AUTH_MD5),
               (C, msg(b"p", cstr("md5" + "0" * 32))), (S, WELCOME)])
    assert kinds(ev)[:5] == ["pgsql_ssl_request", "pgsql_ssl_response", "pgsql_startup",
                             "pgsql_auth_request", "pgsql_auth_response"]
    assert ev[1].accepted is False and ev[2].user == "alice"
    assert ev[3].method == "md5-password" and ev[4].mechanism is None    # no secret reported
    assert "md5" not in repr(ev[4])


def test_ssl_answer_fed_before_the_request_still_pairs():
    """A capture may hand the server's 'N' over before the client's request."""
    p = PostgresParser()
    assert p.receive_data(b"N", S) == []
    ev = p.receive_data(SSL_REQUEST, C) + p.receive_data(LOGIN, C)
    assert kinds(ev) == ["pgsql_ssl_request", "pgsql_ssl_response", "pgsql_startup"]


def test_client_bytes_before_the_answer_wait_for_it():
    ev = feed([(C, SSL_REQUEST + LOGIN), (S, b"N")])
    assert kinds(ev) == ["pgsql_ssl_request", "pgsql_ssl_response", "pgsql_startup"]


def test_gss_refused_then_ssl_accepted_is_tls():
    hello = bytes.fromhex("160301020001") + bytes(40)
    ev = feed([(C, GSS_REQUEST), (S, b"N"), (C, SSL_REQUEST), (S, b"S"), (C, hello)])
    assert kinds(ev) == ["pgsql_ssl_request", "pgsql_ssl_response", "pgsql_ssl_request",
                         "pgsql_ssl_response", "pgsql_tls"]
    assert ev[0].gss and not ev[1].accepted and not ev[2].gss and ev[3].accepted


def test_ssl_accepted_then_tls_is_detected_again():
    """'S': the rest is TLS; the analyzer detects it (inner_app, the
    ClientHello's SNI) while the flow stays postgresql, as after MySQL's switch."""
    hello = record(client_hello(exts=[sni_ext(b"db.example.org")]))
    an = FlowAnalyzer("tcp")
    ev = an.data(C, SSL_REQUEST) + an.data(S, b"S") + an.data(C, hello)
    assert an.app == "postgresql" and an.inner_app == "tls"
    assert "pgsql_tls" in kinds(ev)
    assert [e.sni for e in ev if e.kind == "tls_client_hello"] == ["db.example.org"]
    # the ClientHello already held when the answer came goes to TLS detection too
    an = FlowAnalyzer("tcp")
    ev = an.data(C, SSL_REQUEST) + an.data(C, hello) + an.data(S, b"S")
    assert an.inner_app == "tls" and [e.sni for e in ev if e.kind == "tls_client_hello"] == ["db.example.org"]


def test_gss_accepted_stops_parsing():
    p = PostgresParser()
    ev = feed([(C, GSS_REQUEST), (S, b"S"), (C, b"\x00\x00\x01\x00" + bytes(256))], p)
    assert kinds(ev) == ["pgsql_ssl_request", "pgsql_ssl_response"]
    assert ev[1].accepted and ev[1].gss
    assert p.buffered(C) == 0 and p.buffered(S) == 0


def test_scram_auth():
    ev = feed([(C, LOGIN), (S, SASL), (C, SASL_INITIAL), (S, SASL_CONTINUE), (C, SASL_RESPONSE),
               (S, SASL_FINAL + WELCOME)])
    auth = [e for e in ev if e.kind == "pgsql_auth_request"]
    assert [a.method for a in auth] == ["sasl", "sasl-continue", "sasl-final", "ok"]
    assert auth[0].mechanisms == ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")
    resp = [e.mechanism for e in ev if e.kind == "pgsql_auth_response"]
    assert resp == ["SCRAM-SHA-256", None]


def test_cancel_request():
    ev = feed([(C, struct.pack(">IIII", 16, CANCEL_REQUEST_CODE, 4242, 99))])
    assert kinds(ev) == ["pgsql_cancel_request"] and (ev[0].process_id, ev[0].secret_key) == (4242, 99)


def test_extended_protocol():
    parse = msg(b"P", cstr("s1") + cstr("select $1::int") + struct.pack(">H", 1) + struct.pack(">I", 23))
    bind = msg(b"B", cstr("") + cstr("s1") + b"\0\0\0\1\0\0\0\1" + b"7" + b"\0\0")
    describe = msg(b"D", b"P" + cstr(""))
    execute = msg(b"E", cstr("") + struct.pack(">I", 0))
    sync = msg(b"S", b"")
    ev = feed([(C, LOGIN + parse + bind + describe + execute + sync),
               (S, msg(b"1", b"") + msg(b"2", b"") + ROWS)])
    q = ev[1]
    assert (q.kind, q.type, q.query, q.statement) == ("pgsql_query", "parse", "select $1::int", "s1")
    assert [e.message for e in ev if e.kind == "pgsql_extended"] == ["bind", "describe", "execute", "sync"]
    assert [e.tag for e in ev if e.kind == "pgsql_command_complete"] == ["SELECT 2"]


def test_error_and_notice():
    notice = msg(b"N", cstr("SNOTICE") + cstr("C00000") + cstr("Mskipping") + b"\0")
    ev = feed([(C, LOGIN), (S, WELCOME + notice + ERROR + msg(b"Z", b"E"))])
    n, e = [x for x in ev if x.kind in ("pgsql_notice", "pgsql_error")]
    assert (n.kind, n.severity, n.code, n.message) == ("pgsql_notice", "NOTICE", "00000", "skipping")
    assert (e.kind, e.severity, e.code, e.message) == ("pgsql_error", "ERROR", "42P01",
                                                      'relation "nope" does not exist')
    assert ("F", "parse_relation.c") in e.fields


def test_split_at_every_byte_gives_the_same_events():
    client = [LOGIN, msg(b"Q", cstr("select 1")), msg(b"X", b"")]
    server = [SASL, WELCOME, ROWS, ERROR]
    whole = feed([(C, client[0]), (S, server[0] + server[1]), (C, client[1]),
                  (S, server[2] + server[3]), (C, client[2])])
    cb, sb = b"".join(client), b"".join(server)
    for cut in range(1, len(cb)):
        p = PostgresParser()
        ev = feed([(C, cb[:cut]), (C, cb[cut:]), (S, sb)], p)
        assert sorted(map(repr, ev)) == sorted(map(repr, whole)), cut
    for cut in range(1, len(sb)):
        ev = feed([(C, cb), (S, sb[:cut]), (S, sb[cut:])])
        assert sorted(map(repr, ev)) == sorted(map(repr, whole)), cut
    # one byte at a time, both directions
    p = PostgresParser()
    ev = feed([(C, cb[i:i + 1]) for i in range(len(cb))] + [(S, sb[i:i + 1]) for i in range(len(sb))], p)
    assert sorted(map(repr, ev)) == sorted(map(repr, whole))


def test_ssl_negotiation_split_at_every_byte():
    stream = SSL_REQUEST + LOGIN
    for cut in range(1, len(stream)):
        ev = feed([(C, stream[:cut]), (S, b"N"), (C, stream[cut:])])
        assert kinds(ev) == ["pgsql_ssl_request", "pgsql_ssl_response", "pgsql_startup"], cut


def test_big_rows_and_copy_data_are_counted_not_held():
    p = PostgresParser()
    feed([(C, LOGIN), (S, WELCOME)], p)
    big = 50_000_000
    head = b"D" + struct.pack(">I", big + 4)
    ev = p.receive_data(head, S)
    sent = 0
    while sent < big:
        n = min(1 << 20, big - sent)
        ev += p.receive_data(bytes(n), S)
        sent += n
        assert p.buffered(S) <= MAX_BUFFERED_BYTES
    ev += p.receive_data(msg(b"C", cstr("SELECT 1")), S)
    assert ev[-1].data_rows == 1 and ev[-1].data_size == big
    copy = msg(b"d", b"x" * 100_000)
    assert p.receive_data(copy, C) == [] and p.buffered(C) < 10


def test_long_query_is_cut_at_the_named_cap():
    sql = "insert into t values " + ",".join(["(1)"] * 20_000)
    p = PostgresParser()
    ev = feed([(C, LOGIN + msg(b"Q", cstr(sql)))], p)
    q = ev[-1]
    assert q.truncated and len(q.query) == MAX_QUERY_BYTES and q.length == len(sql)
    assert sql.startswith(q.query) and p.buffered(C) <= MAX_BUFFERED_BYTES
    short = feed([(C, LOGIN + msg(b"Q", cstr("x" * (MESSAGE_HEAD_BYTES - 100))))])[-1]
    assert short.truncated and short.length == MESSAGE_HEAD_BYTES - 100


@pytest.mark.parametrize("data,where", [
    (struct.pack(">II", MAX_STARTUP_BYTES + 1, 0x00030000), "startup message length"),
    (struct.pack(">II", 4, 0x00030000), "startup message length"),
    (startup(version=0x00020000, user="a"), "protocol version 2.0"),
    (struct.pack(">II", 12, 0x00030000) + b"user", "not NUL-terminated"),
    (struct.pack(">II", 14, 0x00030000) + b"u\0v\0x\0", "not NUL-terminated"),
    (struct.pack(">II", 12, 0x00030000) + b"u\0v\0", "final NUL"),
    (LOGIN + b"\x7fgarbage", "unknown message type 0x7f"),
    (LOGIN + b"Q\xff\xff\xff\xff", "length"),
    (LOGIN + b"Q\x00\x00\x00\x02", "length"),
    (LOGIN + msg(b"Q", b"no nul"), "not NUL-terminated"),
])
def test_bad_client_input_is_malformed_not_an_exception(data, where):
    p = PostgresParser()
    ev = p.receive_data(data, C)
    assert ev[-1].kind == "malformed" and where in ev[-1].reason, ev
    assert p.receive_data(b"more", C) == []          # the direction is given up
    assert p.buffered(C) == 0


@pytest.mark.parametrize("data,where", [
    (b"HTTP/1.1 200 OK\r\n", "length"),     # H: CopyOutResponse
    (b"\x16\x03\x01\x00\x10", "unknown message type 0x16"),
    (msg(b"R", b"\0"), "authentication request truncated"),
    (msg(b"K", b"\0\0\0\1"), "BackendKeyData truncated"),
    (msg(b"S", b"name-only"), "ParameterStatus"),
])
def test_bad_server_input_is_malformed(data, where):
    ev = feed([(C, LOGIN), (S, data)])
    assert ev[-1].kind == "malformed" and where in ev[-1].reason, ev


def test_eof_inside_a_message_is_malformed_clean_eof_is_not():
    p = PostgresParser()
    feed([(C, LOGIN + b"Q\0\0")], p)
    assert kinds(p.receive_eof(C)) == ["malformed"]
    p = PostgresParser()
    feed([(C, LOGIN)], p)
    assert p.receive_eof(C) == [] and p.receive_eof(S) == []


def test_probe():
    assert probe(SSL_REQUEST, C) == CERTAIN and probe(GSS_REQUEST, C) == CERTAIN
    assert probe(LOGIN, C) == CERTAIN and probe(LOGIN[:12], C) == CERTAIN
    assert probe(struct.pack(">IIII", 16, CANCEL_REQUEST_CODE, 1, 2), C) == CERTAIN
    # picked up mid-stream: typed messages
    assert probe(msg(b"Q", cstr("select 1")), C) == LIKELY
    assert probe(AUTH_MD5, S) == LIKELY and probe(WELCOME, S) == LIKELY
    assert probe(msg(b"1", b"") + msg(b"2", b"") + msg(b"T", b"\0\0"), S) == LIKELY
    # not PostgreSQL
    for data, d in [(b"GET / HTTP/1.1\r\n\r\n", C), (b"SSH-2.0-OpenSSH_9\r\n", S),
                    (bytes.fromhex("4a0000000a") + b"8.0.35\0" + bytes(20), S),     # MySQL greeting
                    (bytes.fromhex("160301020001") + bytes(40), C), (b"*1\r\n$4\r\nPING\r\n", C),
                    (b"N", S), (b"S", S), (startup(version=0x00020000, user="x"), C),
                    (msg(b"Q", b"\x01\x02binary\0"), C), (msg(b"R", struct.pack(">I", 99)), S)]:
        assert probe(data, d) == NO_MATCH, data


def test_registered_and_detected_by_the_registry():
    assert registry.by_name()["postgresql"] is PLUGIN
    assert registry.BUILTIN_MODULES[-1] == "protocols.postgresql" or \
        "protocols.postgresql" in registry.BUILTIN_MODULES
    assert registry.detect(LOGIN, C)[0] == "postgresql"
    assert registry.detect(SSL_REQUEST, C)[0] == "postgresql"


def test_kernel_signatures_match_startup_and_ssl_request_only():
    ssl, start = PLUGIN.signatures
    assert ssl.matches(SSL_REQUEST) and not ssl.matches(GSS_REQUEST) and not ssl.matches(LOGIN)
    assert start.matches(LOGIN) and start.matches(startup(user="u" * 3000))
    assert not start.matches(SSL_REQUEST) and not start.matches(startup(version=0x00020000, user="a"))
    assert not start.matches(b"GET / HTTP/1.1\r\n")


def test_mysql_on_the_postgresql_port_stays_mysql():
    """Detection reads shapes, not ports: a MySQL session (the server's
    greeting, then the client's login) is not taken for PostgreSQL, and a
    PostgreSQL startup is not taken for MySQL."""
    greeting = bytes.fromhex("4a0000000a") + b"8.0.35\0" + struct.pack("<I", 9) + b"abcdefgh\0" \
        + bytes.fromhex("ffff2d0200ffdf15") + bytes(10) + b"ijklmnopqrst\0" + b"caching_sha2_password\0"
    payload = struct.pack("<I", 0x0200 | 0x8 | 0x8000 | (1 << 19)) + struct.pack("<I", 1 << 24) + b"\x21" \
        + bytes(23) + b"root\0" + b"\x00" + b"shop\0" + b"caching_sha2_password\0"
    login = struct.pack("<I", len(payload))[:3] + b"\x01" + payload
    assert probe(greeting, S) == NO_MATCH and probe(login, C) == NO_MATCH
    # a greeting whose length byte is a backend message type ('N', 'E', 'R') still is not
    for t in b"NER":
        assert probe(bytes([t]) + greeting[1:], S) == NO_MATCH
    an = FlowAnalyzer("tcp")
    an.data(S, greeting)
    an.data(C, login)
    assert an.app == "mysql"
    an = FlowAnalyzer("tcp")
    an.data(C, LOGIN)
    assert an.app == "postgresql"


def test_a_run_of_rows_is_counted_whole_or_split_and_a_bad_one_fails():
    rows = b"".join(msg(b"D", b"\0\1" + bytes(i)) for i in range(50))
    stream = msg(b"T", b"\0\1" + bytes(20)) + rows + msg(b"C", cstr("SELECT 50"))
    want = (50, sum(2 + i for i in range(50)))
    for step in (len(stream), 1460, 7, 1):
        p = PostgresParser()
        feed([(C, LOGIN)], p)
        ev = feed([(S, stream[i:i + step]) for i in range(0, len(stream), step)], p)
        done = ev[-1]
        assert (done.data_rows, done.data_size) == want, step
    ev = feed([(C, LOGIN), (S, msg(b"D", b"\0\0") + b"D\0\0\0\3" + msg(b"C", cstr("SELECT 1")))])
    assert ev[-1].kind == "malformed" and "'D' length 3" in ev[-1].reason
