"""Redis commands and replies and HTTP bodies (HTTP/1 and HTTP/2) are made
with protocols.api.event_builder (no frozen-dataclass __init__ per event),
and they are the objects the dataclasses' own constructors make."""
from __future__ import annotations

import dataclasses

import pytest

from protocols.api import Direction
from protocols.http import HttpBody, HttpParser
from protocols.redis import RedisCommand, RedisParser, RedisReply

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
REDIS = [(C, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n" b"PING\r\n" b"*1\r\n$4\r\nPING\r\n"),
         (S, b"+OK\r\n" b"$2\r\nvv\r\n" b"*2\r\n*1\r\n:1\r\n$3\r\nabc\r\n" b":7\r\n" b"-ERR x\r\n")]
HTTP = [(C, b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"),
        (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")]


def _events(parser, feeds):
    out = []
    for d, data in feeds:
        out += parser.receive_data(data, d)
    return out


def _counting(monkeypatch, classes):
    calls = []
    for cls in classes:
        real = cls.__init__
        monkeypatch.setattr(cls, "__init__", lambda self, *a, _real=real, **k: (calls.append(type(self).__name__),
                                                                                 _real(self, *a, **k))[1])
    return calls


def test_parsing_calls_no_dataclass_init(monkeypatch):
    calls = _counting(monkeypatch, (RedisCommand, RedisReply, HttpBody))
    redis = _events(RedisParser(), REDIS)
    http = _events(HttpParser(), HTTP)
    assert sum(isinstance(e, RedisCommand) for e in redis) == 3 and sum(isinstance(e, RedisReply) for e in redis) == 5
    assert sum(isinstance(e, HttpBody) for e in http) == 2
    assert calls == []


@pytest.mark.parametrize("parser,feeds", [(RedisParser, REDIS), (HttpParser, HTTP)])
def test_built_events_equal_the_constructed_ones(parser, feeds):
    events = [e for e in _events(parser(), feeds) if isinstance(e, (RedisCommand, RedisReply, HttpBody))]
    assert events
    for obj in events:
        made = type(obj)(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
        assert (obj == made, hash(obj), repr(obj)) == (True, hash(made), repr(made))
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.direction = S
