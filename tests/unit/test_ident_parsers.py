"""SSH, MySQL and Redis: identification parsers, probes and plugin declarations."""
from __future__ import annotations

import hashlib
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import mysql, redis, ssh
from protocols.api import (CERTAIN, LIKELY, NO_MATCH, POSSIBLE, Direction, Event, Malformed,
                           ProtocolError)

C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def feed(parser, *steps):
    """Feed (direction, bytes) steps; return every event."""
    events = []
    for direction, data in steps:
        events += parser.receive_data(data, direction)
    return events


def feed_bytewise(parser, *steps):
    events = []
    for direction, data in steps:
        for i in range(len(data)):
            events += parser.receive_data(data[i:i + 1], direction)
    return events


def only(events, kind):
    return [e for e in events if e.kind == kind]


def malformed(events):
    return [e for e in events if isinstance(e, Malformed)]


# --- SSH ----------------------------------------------------------------------

def name_list(names):
    raw = ",".join(names).encode()
    return struct.pack(">I", len(raw)) + raw


def ssh_packet(payload, pad=6):
    body = bytes([pad]) + payload + bytes(pad)
    return struct.pack(">I", len(body)) + body


KEX = ["curve25519-sha256", "diffie-hellman-group14-sha256"]
HOSTKEY = ["ssh-ed25519", "rsa-sha2-512"]
ENC_CS, ENC_SC = ["aes128-ctr", "aes256-gcm@openssh.com"], ["chacha20-poly1305@openssh.com"]
MAC_CS, MAC_SC = ["hmac-sha2-256"], ["hmac-sha2-512", "umac-64@openssh.com"]
COMP_CS, COMP_SC = ["none", "zlib@openssh.com"], ["none"]


def kexinit(follows=False):
    lists = [KEX, HOSTKEY, ENC_CS, ENC_SC, MAC_CS, MAC_SC, COMP_CS, COMP_SC, [], []]
    payload = bytes([20]) + bytes(range(16)) + b"".join(name_list(x) for x in lists)
    return ssh_packet(payload + bytes([follows]) + bytes(4))


SERVER_BANNER = b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n"
CLIENT_BANNER = b"SSH-2.0-APACHE-SSHD-2.5.0\r\n"


def test_ssh_banners_and_kexinit_with_hassh():
    p = ssh.SshParser()
    ev = feed(p, (S, SERVER_BANNER + kexinit()), (C, CLIENT_BANNER + kexinit(follows=True)))
    banners = only(ev, "ssh_banner")
    assert [(b.direction, b.proto_version, b.software, b.comments, b.raw) for b in banners] == [
        (S, "2.0", "OpenSSH_9.6p1", "Ubuntu-3ubuntu13", "SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13"),
        # the software version itself may contain '-': only the first one ends the protocol version
        (C, "2.0", "APACHE-SSHD-2.5.0", None, "SSH-2.0-APACHE-SSHD-2.5.0"),
    ]
    server_kex, client_kex = only(ev, "ssh_kexinit")
    assert client_kex.direction == C and server_kex.direction == S
    assert client_kex.kex_algorithms == tuple(KEX)
    assert client_kex.server_host_key_algorithms == tuple(HOSTKEY)
    assert client_kex.encryption_server_to_client == tuple(ENC_SC)
    assert client_kex.mac_server_to_client == tuple(MAC_SC)
    assert client_kex.compression_client_to_server == tuple(COMP_CS)
    assert client_kex.first_kex_packet_follows and not server_kex.first_kex_packet_follows
    # HASSH: the client's client-to-server lists; HASSH-server: the server's server-to-client lists
    want_c = ";".join(",".join(x) for x in (KEX, ENC_CS, MAC_CS, COMP_CS))
    want_s = ";".join(",".join(x) for x in (KEX, ENC_SC, MAC_SC, COMP_SC))
    assert client_kex.hassh_algorithms == want_c
    assert client_kex.hassh == hashlib.md5(want_c.encode()).hexdigest()
    assert server_kex.hassh_algorithms == want_s
    assert server_kex.hassh == hashlib.md5(want_s.encode()).hexdigest()
    assert not malformed(ev)


def test_ssh_stops_after_kexinit():
    p = ssh.SshParser()
    ev = feed(p, (C, CLIENT_BANNER + kexinit() + b"\xff" * 100000), (C, b"SSH-2.0-x\r\n" + kexinit()))
    assert [e.kind for e in ev] == ["ssh_banner", "ssh_kexinit"]


def test_ssh_1_99_is_v2_compatible_and_bare_lf_is_tolerated():
    p = ssh.SshParser()
    ev = feed(p, (S, b"SSH-1.99-OpenSSH_3.9p1\n" + kexinit()))
    banner, kex = ev
    assert (banner.proto_version, banner.software, banner.raw) == ("1.99", "OpenSSH_3.9p1",
                                                                   "SSH-1.99-OpenSSH_3.9p1")
    assert banner.speaks_v2 and kex.kind == "ssh_kexinit"


def test_ssh_1_5_stops_after_banner():
    p = ssh.SshParser()
    banner, = feed(p, (S, b"SSH-1.5-OldServer\r\n" + b"\x00\x00\x01\x04garbage v1 packet"))
    assert banner.proto_version == "1.5" and not banner.speaks_v2


def test_ssh_1_99_server_with_v1_client_is_not_parsed_as_v2():
    p = ssh.SshParser()
    ev = feed(p, (S, b"SSH-1.99-OpenSSH_3.9p1\r\n"), (C, b"SSH-1.5-OldClient\r\n"),
              (S, b"\x00\x00\x01\x04\x00\x00\x00\x00v1 public key"))
    assert [e.kind for e in ev] == ["ssh_banner", "ssh_banner"]


def test_ssh_server_lines_before_banner():
    p = ssh.SshParser()
    ev = feed(p, (S, b"Unauthorized access prohibited\r\n\r\nlogged\n" + SERVER_BANNER))
    assert [e.software for e in ev] == ["OpenSSH_9.6p1"]


def test_ssh_client_may_not_send_lines_before_banner():
    p = ssh.SshParser()
    bad, = feed(p, (C, b"hello\r\n" + CLIENT_BANNER))
    assert isinstance(bad, Malformed) and bad.direction == C and bad.offset == 0
    assert feed(p, (C, CLIENT_BANNER)) == []          # that direction is over


def test_ssh_banner_limit():
    ok = b"SSH-2.0-" + b"x" * (ssh.MAX_BANNER_BYTES - 10) + b"\r\n"
    assert len(ok) == ssh.MAX_BANNER_BYTES
    assert only(feed(ssh.SshParser(), (C, ok)), "ssh_banner")
    long = b"SSH-2.0-" + b"x" * ssh.MAX_BANNER_BYTES
    bad, = feed(ssh.SshParser(), (C, long))              # refused before any newline comes
    assert isinstance(bad, Malformed) and "255" in bad.reason


def test_ssh_prebanner_limit():
    p = ssh.SshParser()
    ev = feed(p, *[(S, b"x" * 99 + b"\n")] * (ssh.MAX_PREBANNER_BYTES // 100 + 1))
    bad, = ev
    assert isinstance(bad, Malformed) and bad.direction == S


def test_ssh_packet_limit_and_bad_padding():
    big = struct.pack(">IB", ssh.MAX_PACKET_BYTES + 1, 4)
    _, bad = feed(ssh.SshParser(), (C, CLIENT_BANNER + big))
    assert isinstance(bad, Malformed) and bad.offset == len(CLIENT_BANNER)
    _, bad = feed(ssh.SshParser(), (C, CLIENT_BANNER + struct.pack(">IB", 8, 8) + bytes(8)))
    assert isinstance(bad, Malformed) and "padding" in bad.reason


def test_ssh_first_packet_must_be_kexinit():
    _, bad = feed(ssh.SshParser(), (C, CLIENT_BANNER + ssh_packet(bytes([21]))))
    assert isinstance(bad, Malformed) and "message 21" in bad.reason
    # SSH_MSG_IGNORE before KEXINIT is allowed
    ev = feed(ssh.SshParser(), (C, CLIENT_BANNER + ssh_packet(b"\x02\x00\x00\x00\x00") + kexinit()))
    assert [e.kind for e in ev] == ["ssh_banner", "ssh_kexinit"]


def test_ssh_truncated_kexinit():
    packet = ssh_packet(bytes([20]) + bytes(16) + name_list(KEX) + b"\x00\x00\x01\x00ab")
    _, bad = feed(ssh.SshParser(), (C, CLIENT_BANNER + packet))
    assert isinstance(bad, Malformed) and "KEXINIT" in bad.reason


def test_ssh_bytewise_equals_one_feed():
    steps = [(S, b"notice\r\n" + SERVER_BANNER + kexinit()), (C, CLIENT_BANNER + kexinit(True))]
    assert feed_bytewise(ssh.SshParser(), *steps) == feed(ssh.SshParser(), *steps)


def test_ssh_eof_and_misuse():
    p = ssh.SshParser()
    assert feed(p, (C, b"SSH-2.0-trunc")) == []
    bad, = p.receive_eof(C)
    assert isinstance(bad, Malformed) and "identification" in bad.reason
    with pytest.raises(ProtocolError):
        p.receive_data(b"more", C)
    assert p.receive_eof(S) == []                       # nothing was sent: nothing wrong


def test_ssh_gap():
    p = ssh.SshParser()
    bad, = p.receive_gap(C, 10)
    assert isinstance(bad, Malformed)
    feed(p, (S, SERVER_BANNER + kexinit()))
    assert p.receive_gap(S, 10) == []                  # after KEXINIT nothing is parsed anyway


def test_ssh_probe():
    assert ssh.probe(b"SSH-2.0-OpenSSH_9.6\r\n", C) == CERTAIN
    assert ssh.probe(b"SSH-1.99-OpenSSH_3.9p1\n", S) == CERTAIN
    assert ssh.probe(b"SSH-", C) == LIKELY
    assert ssh.probe(b"Welcome\r\nSSH-2.0-x\r\n", S) == LIKELY
    assert ssh.probe(b"Welcome\r\nSSH-2.0-x\r\n", C) == NO_MATCH
    assert ssh.probe(b"GET / HTTP/1.1\r\n", C) == NO_MATCH
    assert ssh.probe(b"\x16\x03\x01\x02\x00\x01", C) == NO_MATCH


# --- MySQL --------------------------------------------------------------------

def my_packet(seq, payload):
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


GREETING_CAPS = 0x0FFFF7FF | mysql.CLIENT_PLUGIN_AUTH | mysql.CLIENT_SECURE_CONNECTION


def greeting(version=b"8.0.36", conn_id=12, caps=GREETING_CAPS, plugin=b"caching_sha2_password"):
    payload = (bytes([10]) + version + b"\x00" + struct.pack("<I", conn_id) + b"12345678\x00"
               + struct.pack("<H", caps & 0xFFFF) + b"\xff" + struct.pack("<H", 2)
               + struct.pack("<H", caps >> 16) + bytes([21]) + bytes(10) + b"123456789012\x00"
               + plugin + b"\x00")
    return my_packet(0, payload)


LOGIN_CAPS = (mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_SECURE_CONNECTION | mysql.CLIENT_PLUGIN_AUTH
              | mysql.CLIENT_CONNECT_WITH_DB | mysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA)


def login(user=b"admin", db=b"shop", caps=LOGIN_CAPS, auth=b"\x01" * 20):
    payload = (struct.pack("<IIB", caps, 1 << 24, 33) + bytes(23) + user + b"\x00"
               + bytes([len(auth)]) + auth + db + b"\x00" + b"mysql_native_password\x00")
    return my_packet(1, payload)


def ok_packet(seq, rows=0, last_id=0):
    return my_packet(seq, b"\x00" + bytes([rows, last_id]) + b"\x02\x00\x00\x00")


def query(text):
    return my_packet(0, b"\x03" + text)


def err_packet(seq, code, message, sqlstate=b"28000"):
    state = b"#" + sqlstate if sqlstate else b""
    return my_packet(seq, b"\xff" + struct.pack("<H", code) + state + message)


def test_mysql_greeting_login_query_ok():
    p = mysql.MysqlParser()
    ev = feed(p, (S, greeting()), (C, login()), (S, ok_packet(2)),
              (C, query(b"SELECT * FROM t WHERE id = 1")), (S, ok_packet(1, rows=3, last_id=9)),
              (C, my_packet(0, b"\x02shop2")))
    g, lg, ok1, q, ok2, init = ev
    assert (g.protocol_version, g.server_version, g.connection_id, g.capabilities, g.auth_plugin) == (
        10, "8.0.36", 12, GREETING_CAPS, "caching_sha2_password")
    assert (lg.username, lg.database, lg.auth_plugin, lg.capabilities) == (
        "admin", "shop", "mysql_native_password", LOGIN_CAPS)
    assert (q.query, q.length, q.truncated) == ("SELECT * FROM t WHERE id = 1", 28, False)
    assert (ok1.affected_rows, ok2.affected_rows, ok2.last_insert_id) == (0, 3, 9)
    assert (init.kind, init.name, init.argument) == ("mysql_command", "init_db", "shop2")


def test_mysql_errors_with_and_without_sqlstate():
    p = mysql.MysqlParser()
    refused, = feed(p, (S, err_packet(0, 1130, b"Host 'x' is not allowed", sqlstate=None)))
    assert (refused.code, refused.sqlstate, refused.message) == (1130, None, "Host 'x' is not allowed")
    p = mysql.MysqlParser()
    ev = feed(p, (S, greeting()), (C, login(user=b"root", db=b"")),
              (S, err_packet(2, 1045, b"Access denied for user 'root'")))
    assert ev[1].username == "root"
    err = ev[2]
    assert (err.kind, err.code, err.sqlstate, err.message) == (
        "mysql_error", 1045, "28000", "Access denied for user 'root'")


def test_mysql_result_set_rows_are_not_ok_packets():
    # a row whose first column is the empty string starts with 0x00, like OK
    rows = (my_packet(1, b"\x01") + my_packet(2, b"\x03def" + bytes(20)) + my_packet(3, b"\x00")
            + my_packet(4, b"\x00") + my_packet(5, b"\xfe\x00\x00\x02\x00"))
    p = mysql.MysqlParser()
    ev = feed(p, (S, greeting()), (C, login()), (S, ok_packet(2)), (C, query(b"select ''")), (S, rows))
    assert [e.kind for e in ev] == ["mysql_greeting", "mysql_login", "mysql_ok", "mysql_query"]


def test_mysql_query_is_capped_and_memory_bounded():
    text = b"INSERT INTO t VALUES " + b"(1)," * 2_000_000      # an 8 MB statement
    packet = query(text)
    p = mysql.MysqlParser()
    feed(p, (S, greeting()), (C, login()), (S, ok_packet(2)))
    tracemalloc.start()
    events = []
    for i in range(0, len(packet), 65536):
        events += p.receive_data(packet[i:i + 65536], C)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    q, = events
    assert q.length == len(text) and q.truncated and len(q.query) == mysql.MAX_QUERY_BYTES
    assert peak < 1_000_000


def test_mysql_continued_packet_is_not_read_as_a_command():
    # a 2^24-1 byte COM_QUERY is continued by a packet whose first byte is 0x03 again
    big = b"\x03" + b"x" * (0xFFFFFF - 1)
    stream = my_packet(0, big) + my_packet(1, b"\x03 tail") + query(b"select 2")
    p = mysql.MysqlParser()
    feed(p, (S, greeting()), (C, login()), (S, ok_packet(2)))
    ev = feed(p, *[(C, stream[i:i + (1 << 20)]) for i in range(0, len(stream), 1 << 20)])
    assert [e.query for e in ev][1:] == ["select 2"] and len(ev) == 2


def test_mysql_sslrequest_stops_both_directions():
    ssl_request = my_packet(1, struct.pack("<IIB", LOGIN_CAPS | mysql.CLIENT_SSL, 1 << 24, 33) + bytes(23))
    p = mysql.MysqlParser()
    ev = feed(p, (S, greeting()), (C, ssl_request + b"\x16\x03\x01\x02\x00\x01\x00"),
              (S, b"\x16\x03\x03\x00\x7a\x02\x00"), (C, query(b"select 1")), (S, err_packet(1, 1, b"x")))
    assert [e.kind for e in ev] == ["mysql_greeting", "mysql_tls"]
    assert ev[1].capabilities & mysql.CLIENT_SSL
    assert p.receive_eof(C) == [] and p.receive_eof(S) == []


def test_mysql_compressed_session_stops_after_auth():
    p = mysql.MysqlParser()
    ev = feed(p, (S, greeting()), (C, login(caps=LOGIN_CAPS | mysql.CLIENT_COMPRESS)),
              (S, ok_packet(2)), (C, b"\x0b\x00\x00\x00\x00\x00\x00compressed"), (S, b"\x07\x00\x00\x01zz"))
    assert [e.kind for e in ev] == ["mysql_greeting", "mysql_login", "mysql_ok"]


def test_mysql_malformed():
    bad, = feed(mysql.MysqlParser(), (S, my_packet(0, b"\x09" + b"4.0\x00" + bytes(20))))
    assert isinstance(bad, Malformed) and bad.offset == 0 and "greeting" in bad.reason
    bad, = feed(mysql.MysqlParser(), (S, my_packet(3, b"\x0a8.0\x00")))
    assert isinstance(bad, Malformed) and "sequence" in bad.reason
    p = mysql.MysqlParser()
    ev = feed(p, (S, greeting()), (C, my_packet(1, struct.pack("<IIB", LOGIN_CAPS, 0, 33) + bytes(23) + b"no-nul")))
    assert isinstance(ev[-1], Malformed) and ev[-1].direction == C and ev[-1].offset == 0
    assert feed(p, (C, query(b"select 1"))) == []
    # the server side goes on
    assert only(feed(p, (S, err_packet(2, 1045, b"denied"))), "mysql_error")


def test_mysql_split_at_every_boundary():
    server = greeting() + ok_packet(2) + ok_packet(1, 1) + err_packet(1, 1064, b"syntax", b"42000")
    client = login() + query(b"update t set a=1") + query(b"selec")
    steps = [(S, greeting()), (C, login()), (S, ok_packet(2)), (C, query(b"update t set a=1")),
             (S, ok_packet(1, 1)), (C, query(b"selec")), (S, err_packet(1, 1064, b"syntax", b"42000"))]
    whole = feed(mysql.MysqlParser(), *steps)
    assert [e.kind for e in whole] == ["mysql_greeting", "mysql_login", "mysql_ok", "mysql_query",
                                       "mysql_ok", "mysql_query", "mysql_error"]
    assert feed_bytewise(mysql.MysqlParser(), *steps) == whole
    # each direction alone, cut once at every position
    for data, d in ((server, S), (client, C)):
        one = feed(mysql.MysqlParser(), (d, data))
        for i in range(len(data) + 1):
            assert feed(mysql.MysqlParser(), (d, data[:i]), (d, data[i:])) == one


def test_mysql_eof_inside_packet():
    p = mysql.MysqlParser()
    feed(p, (S, greeting()[:20]))
    bad, = p.receive_eof(S)
    assert isinstance(bad, Malformed)


def test_mysql_probe():
    assert mysql.probe(greeting(), S) == CERTAIN
    assert mysql.probe(greeting(version=b"5.5.5-10.6.12-MariaDB-0ubuntu0.22.04.1"), S) == CERTAIN
    assert mysql.probe(greeting()[:12], S) == LIKELY                 # cut after the version
    assert mysql.probe(err_packet(0, 1130, b"Host 'h' is not allowed", None), S) == LIKELY
    assert mysql.probe(login(), C) == POSSIBLE
    assert mysql.probe(greeting(), C) == NO_MATCH
    assert mysql.probe(my_packet(1, greeting()[4:]), S) == NO_MATCH   # sequence must be 0
    assert mysql.probe(b"HTTP/1.1 200 OK\r\n\r\n", S) == NO_MATCH
    assert mysql.probe(b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03", S) == NO_MATCH


# --- Redis --------------------------------------------------------------------

def resp_command(*words):
    out = b"*%d\r\n" % len(words)
    for w in words:
        out += b"$%d\r\n%s\r\n" % (len(w), w)
    return out


PIPELINE = (resp_command(b"SET", b"k", b"hello world") + resp_command(b"get", b"k")
            + b"PING\r\n" + b"\r\n" + b"ping  extra\n" + resp_command(b"MGET", *[b"k%d" % i for i in range(10)])
            + resp_command(b"SET", b"bin", b"\x00\xff\r\n"))


def test_redis_pipelined_commands():
    ev = feed(redis.RedisParser(), (C, PIPELINE))
    assert [(e.command, e.args, e.argc, e.inline) for e in ev] == [
        ("SET", ("k", "hello world"), 3, False),
        ("GET", ("k",), 2, False),
        ("PING", (), 1, True),                      # the empty line is ignored, as Redis does
        ("PING", ("extra",), 2, True),              # bare LF ends an inline command
        ("MGET", ("k0", "k1", "k2", "k3"), 11, False),
        ("SET", ("bin", "\x00\\xff\r\n"), 3, False),   # undecodable bytes escaped
    ]


def test_redis_every_split_equals_one_feed():
    one = feed(redis.RedisParser(), (C, PIPELINE))
    for i in range(len(PIPELINE) + 1):
        assert feed(redis.RedisParser(), (C, PIPELINE[:i]), (C, PIPELINE[i:])) == one, i
    assert feed_bytewise(redis.RedisParser(), (C, PIPELINE)) == one


REPLIES = (b"+OK\r\n-ERR unknown command\r\n:-42\r\n$5\r\nhello\r\n$-1\r\n*-1\r\n*0\r\n"
           b"*2\r\n*2\r\n:1\r\n$1\r\na\r\n*1\r\n+x\r\n"        # nested arrays
           b"_\r\n,3.5\r\n#t\r\n!9\r\nERR oops!\r\n=8\r\ntxt:abcd\r\n(12345678901234567890\r\n"
           b"%2\r\n+a\r\n:1\r\n+b\r\n:2\r\n~1\r\n+m\r\n"
           b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n"                  # an attribute, then the reply
           b"*1\r\n|1\r\n+k\r\n+v\r\n:7\r\n"                   # an attribute inside an array
           b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n")


def test_redis_replies_resp2_and_resp3():
    ev = feed(redis.RedisParser(), (S, REPLIES))
    assert [(e.type, e.value, e.size) for e in ev] == [
        ("simple", "OK", None), ("error", "ERR unknown command", None), ("integer", -42, None),
        ("bulk", "hello", 5), ("null", None, None), ("null", None, None), ("array", None, 0),
        ("array", None, 2),
        ("null", None, None), ("double", 3.5, None), ("boolean", True, None),
        ("blob_error", "ERR oops!", 9), ("verbatim", "txt:abcd", 8),
        ("bignum", "12345678901234567890", None),
        ("map", None, 2), ("set", None, 1),
        ("bulk", "v", 1),
        ("array", None, 1),
        ("push", None, 3),
    ]
    assert feed_bytewise(redis.RedisParser(), (S, REPLIES)) == ev


def test_redis_big_bulk_is_summarised_in_bounded_memory():
    n = 20 * 1024 * 1024
    p = redis.RedisParser()
    tracemalloc.start()
    events = p.receive_data(b"$%d\r\n" % n, S)
    chunk = b"a" * 65536
    for _ in range(n // len(chunk)):
        events += p.receive_data(chunk, S)
    events += p.receive_data(b"\r\n+OK\r\n", S)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    big, ok = events
    assert (big.type, big.size, len(big.value)) == ("bulk", n, redis.MAX_SUMMARY_BYTES)
    assert ok.value == "OK"
    assert peak < 1_000_000


@pytest.mark.parametrize("data,direction,reason", [
    (b"$%d\r\n" % (redis.MAX_BULK_BYTES + 1), S, "out of range"),
    (b"*%d\r\n" % (redis.MAX_ELEMENTS + 1), S, "out of range"),
    (b"*1\r\n" * (redis.MAX_DEPTH + 1), S, "deeper"),
    (b"+" + b"x" * redis.MAX_LINE_BYTES, S, "line end"),
    (b"x" * redis.MAX_LINE_BYTES, C, "line end"),          # an endless inline command
    (b"*2\r\n$3\r\nGET\r\n:1\r\n", C, "bulk string"),
    (b"*1\r\n*1\r\n$1\r\na\r\n", C, "bulk string"),         # a client never nests
    (b"$3\r\nabcXY", S, "CR LF"),
    (b"$?\r\n;3\r\nabc\r\n;0\r\n", S, "streamed"),
    (b"+OK\n", S, "CR LF"),
    (b"@what\r\n", S, "bad RESP"),
    (b":12x\r\n", S, "bad RESP"),
    (b"$-2\r\n", S, "out of range"),
    (b"$99999999999999999999\r\n", S, "bad length"),
])
def test_redis_limits_and_bad_input(data, direction, reason):
    p = redis.RedisParser()
    ev = feed(p, (direction, b"+OK\r\n" if direction == S else b"PING\r\n"), (direction, data))
    assert len(ev) == 2 and isinstance(ev[1], Malformed), ev
    assert reason in ev[1].reason and ev[1].direction == direction and ev[1].offset >= 0
    assert feed(p, (direction, b"+OK\r\n")) == []           # that direction stays stopped


def test_redis_depth_limit_is_exact():
    nested = b"*1\r\n" * redis.MAX_DEPTH + b":1\r\n"
    reply, = feed(redis.RedisParser(), (S, nested))
    assert (reply.type, reply.size) == ("array", 1)


def test_redis_eof():
    p = redis.RedisParser()
    feed(p, (C, b"*2\r\n$3\r\nGET\r\n"))
    bad, = p.receive_eof(C)
    assert isinstance(bad, Malformed)
    assert p.receive_eof(S) == []


def test_redis_probe():
    assert redis.probe(resp_command(b"GET", b"k"), C) == CERTAIN
    assert redis.probe(resp_command(b"hello", b"3"), C) == CERTAIN
    assert redis.probe(resp_command(b"FROBNICATE"), C) == LIKELY
    assert redis.probe(b"*3\r\n$3\r\nSE", C) == LIKELY
    assert redis.probe(b"PING\r\n", C) == LIKELY
    assert redis.probe(b"auth secret\r\n", C) == LIKELY
    assert redis.probe(b"+OK\r\n", S) == LIKELY
    assert redis.probe(b"+PONG\r\n", S) == LIKELY
    assert redis.probe(b"-ERR unknown command 'x'\r\n", S) == LIKELY
    assert redis.probe(b"$1\r\n6\r\n", S) == POSSIBLE
    assert redis.probe(b"+OK\r\n", C) == NO_MATCH
    assert redis.probe(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", C) == NO_MATCH
    assert redis.probe(b"QUIT\r\n", C) == NO_MATCH                 # also FTP, POP3, SMTP
    assert redis.probe(b"+OK POP3 server ready\r\n", S) == NO_MATCH
    assert redis.probe(b"HTTP/1.1 200 OK\r\n", S) == NO_MATCH


# --- plugins ------------------------------------------------------------------

@pytest.mark.parametrize("module,name,parser", [(ssh, "ssh", ssh.SshParser),
                                                (mysql, "mysql", mysql.MysqlParser),
                                                (redis, "redis", redis.RedisParser)])
def test_plugins_load(module, name, parser):
    plugin = module.PLUGIN
    plugin.check()
    assert plugin.name == name and plugin.transports == frozenset({"tcp"})
    first, second = plugin.parser_factory("tcp"), plugin.parser_factory("tcp")
    assert type(first) is parser and first is not second      # one parser per connection


FIRST_PAYLOADS = {
    "ssh": [(C, CLIENT_BANNER), (S, SERVER_BANNER)],
    "mysql": [(S, greeting()), (S, err_packet(0, 1130, b"Host 'h' is not allowed", None))],
    "redis": [(C, resp_command(b"GET", b"k")), (C, resp_command(*[b"x"] * 9)), (C, b"PING\r\n")],
    "http": [(C, b"GET / HTTP/1.1\r\n"), (C, b"POST /x HTTP/1.1\r\n"), (S, b"HTTP/1.1 200 OK\r\n")],
    "tls": [(C, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), (S, b"\x16\x03\x03\x00\x7a\x02")],
}


@pytest.mark.parametrize("owner", ["ssh", "mysql", "redis"])
def test_signatures_match_their_protocol_only(owner):
    plugin = {"ssh": ssh, "mysql": mysql, "redis": redis}[owner].PLUGIN
    for proto, payloads in FIRST_PAYLOADS.items():
        for direction, payload in payloads:
            hit = any(s.direction == direction and s.matches(payload) for s in plugin.signatures)
            assert hit == (proto == owner), (proto, payload)


# --- never an exception -------------------------------------------------------

PARSERS = [ssh.SshParser, mysql.MysqlParser, redis.RedisParser]
PROBES = [ssh.probe, mysql.probe, redis.probe]

VALID = [
    [(S, b"pre\r\n" + SERVER_BANNER + kexinit()), (C, CLIENT_BANNER + kexinit(True))],
    [(S, greeting()), (C, login()), (S, ok_packet(2)), (C, query(b"select 1")),
     (S, err_packet(1, 1064, b"bad")), (C, query(b"select 2")), (S, ok_packet(1))],
    [(C, PIPELINE), (S, REPLIES)],
]

directions = st.sampled_from([C, S])
chunks = st.lists(st.tuples(directions, st.binary(max_size=300)), max_size=12)


def run_safely(parser_cls, steps, end=True):
    p = parser_cls()
    events = []
    for direction, data in steps:
        events += p.receive_data(data, direction)
    if end:
        events += p.receive_eof(C) + p.receive_eof(S)
    assert all(isinstance(e, Event) for e in events)
    for e in events:
        if isinstance(e, Malformed):
            assert e.reason and isinstance(e.offset, int)
    return events


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=chunks, which=st.integers(0, 2))
def test_random_bytes_never_raise(steps, which):
    run_safely(PARSERS[which], steps)
    for direction, data in steps:
        assert 0.0 <= PROBES[which](data, direction) <= 1.0


@st.composite
def mutated(draw):
    which = draw(st.integers(0, 2))
    steps = [list(s) for s in VALID[which]]
    for _ in range(draw(st.integers(1, 4))):
        step = steps[draw(st.integers(0, len(steps) - 1))]
        data = bytearray(step[1])
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 8))]
        else:
            del data[i:]
        step[1] = bytes(data)
    # and re-slice each direction at random points
    sliced = []
    for direction, data in steps:
        cut = draw(st.integers(0, len(data)))
        sliced += [(direction, data[:cut]), (direction, data[cut:])]
    return which, sliced


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_mutated_valid_input_never_raises(case):
    which, steps = case
    run_safely(PARSERS[which], steps)
    for direction, data in steps:
        assert 0.0 <= PROBES[which](data, direction) <= 1.0


@pytest.mark.parametrize("which", range(3))
def test_valid_transcripts_parse_cleanly(which):
    events = run_safely(PARSERS[which], VALID[which])
    assert events and not malformed(events)
