"""Every byte-stream parser holds at most its named cap per direction.

The parsers share one per-direction buffer (protocols/api.py StreamSide);
each names the most one direction may hold between calls
(``MAX_BUFFERED_BYTES`` in http, ssh, mysql and redis, ``MAX_TCP_BUFFER``
in dns). Here hostile and random streams are fed in pieces and the buffer
is checked after every call.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import dns, http, mysql, redis, ssh
from protocols.api import Direction, Malformed, StreamParser

C, S = Direction.TO_SERVER, Direction.TO_CLIENT

# (name, parser factory, its cap)
PARSERS = [
    ("http", http.HttpParser, http.MAX_BUFFERED_BYTES),
    ("ssh", ssh.SshParser, ssh.MAX_BUFFERED_BYTES),
    ("mysql", mysql.MysqlParser, mysql.MAX_BUFFERED_BYTES),
    ("redis", redis.RedisParser, redis.MAX_BUFFERED_BYTES),
    ("dns-tcp", lambda: dns.DnsParser("tcp"), dns.MAX_TCP_BUFFER),
]
# Bytes fed per call in the long-unit tests: smaller than every cap, so the
# parser sees the unit grow past its cap over several calls.
PIECE = 1000


def feed(parser: StreamParser, cap: int, direction: Direction, data: bytes, piece: int) -> list:
    events = []
    for i in range(0, len(data), piece):
        events += parser.receive_data(data[i:i + piece], direction)
        assert parser.buffered(direction) <= cap, (len(data), i)
    return events


@pytest.mark.parametrize("name,factory,cap", PARSERS, ids=[p[0] for p in PARSERS])
def test_each_side_declares_the_parsers_cap(name, factory, cap):
    p = factory()
    assert isinstance(p, StreamParser)
    assert {type(p._sides[d]).max_buffered for d in Direction} == {cap}


# A unit (line, head, packet) that never ends, per parser and direction, and
# whether the parser must give up on it (a length-framed unit is skipped instead).
ENDLESS = [
    ("http", http.HttpParser, http.MAX_BUFFERED_BYTES, C, b"GET /" + b"a" * (3 * http.MAX_HEAD_BYTES), True),
    ("http", http.HttpParser, http.MAX_BUFFERED_BYTES, S, b"HTTP/1.1 200 OK\r\nX: " + b"b" * (3 * http.MAX_HEAD_BYTES), True),
    ("http", http.HttpParser, http.MAX_BUFFERED_BYTES, C,
     b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1" + b"0" * (3 * http.MAX_CHUNK_LINE_BYTES), True),
    ("ssh", ssh.SshParser, ssh.MAX_BUFFERED_BYTES, S, b"SSH-2.0-" + b"x" * 3000, True),
    ("ssh", ssh.SshParser, ssh.MAX_BUFFERED_BYTES, S, b"notice " * 3000, True),
    ("ssh", ssh.SshParser, ssh.MAX_BUFFERED_BYTES, C,
     b"SSH-2.0-x\r\n" + struct.pack(">IB", ssh.MAX_PACKET_BYTES, 4) + b"\x14" * (ssh.MAX_PACKET_BYTES - 2), False),
    # a 16 MiB first packet: its head is held (and is no greeting), the rest is not
    ("mysql", mysql.MysqlParser, mysql.MAX_BUFFERED_BYTES, S,
     b"\xff\xff\xff\x00" + b"\x0a" * (3 * mysql.PACKET_HEAD_BYTES), True),
    ("redis", redis.RedisParser, redis.MAX_BUFFERED_BYTES, C, b"*1\r\n+" + b"a" * (3 * redis.MAX_LINE_BYTES), True),
    ("dns-tcp", lambda: dns.DnsParser("tcp"), dns.MAX_TCP_BUFFER, C, b"\xff\xff" + b"\x00" * 65000, False),
]


@pytest.mark.parametrize("name,factory,cap,direction,data,gives_up", ENDLESS,
                         ids=[f"{e[0]}-{i}" for i, e in enumerate(ENDLESS)])
def test_a_unit_that_never_ends_stays_under_the_cap(name, factory, cap, direction, data, gives_up):
    p = factory()
    events = feed(p, cap, direction, data, PIECE)
    assert any(isinstance(e, Malformed) for e in events) == gives_up, events[-3:]
    if gives_up:                         # the rest of the direction is counted, not held
        p.receive_data(b"z" * (2 * cap), direction)
        assert p.buffered(direction) == 0


# Starts a parser accepts, so that random bytes after them reach the
# parser's later states (bodies, packets, bulk strings), not just its first check.
PREFIXES = {
    "http": (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
    "ssh": (b"SSH-2.0-c\r\n", b"SSH-2.0-s\r\n"),
    "mysql": (b"", b""),
    "redis": (b"*2\r\n$3\r\nGET\r\n", b"$5\r\n"),
    "dns-tcp": (b"\x00\x20", b"\x01\x00"),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.sampled_from(PARSERS), steps=st.lists(
    st.tuples(st.sampled_from(list(Direction)), st.binary(max_size=3000), st.integers(1, 700)),
    max_size=12))
def test_random_streams_stay_under_the_cap(which, steps):
    name, factory, cap = which
    p = factory()
    for d, prefix in zip(Direction, PREFIXES[name]):
        p.receive_data(prefix, d)
        assert p.buffered(d) <= cap
    for d, data, piece in steps:
        feed(p, cap, d, data, piece)
