"""HttpParser hands over what a call completed with that call: _run and a
message's end flush the pending body parts and a pending coding anomaly
only when there is one (no _flush call otherwise), so an anomaly named at
the head (too many coding layers) with no body byte yet still comes with
the head's call, not with the next."""
from __future__ import annotations

import zlib

from protocols.api import Direction
from protocols.content_coding import MAX_LAYERS
from protocols.http import HttpAnomalyEvent, HttpMessageEnd, HttpParser, HttpRequest

C2S = Direction.TO_SERVER


def test_a_coding_anomaly_of_the_head_comes_with_the_head_s_call():
    body = b"abc"
    for _ in range(MAX_LAYERS + 1):
        body = zlib.compress(body)
    head = (b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Encoding: " + b", ".join([b"deflate"] * (MAX_LAYERS + 1))
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    p = HttpParser()
    first = p.receive_data(head, C2S)
    assert [type(e) for e in first] == [HttpRequest, HttpAnomalyEvent], first
    rest = p.receive_data(body, C2S)
    assert rest and type(rest[-1]) is HttpMessageEnd
    assert all(type(e) is not HttpAnomalyEvent for e in rest)


def test_an_end_of_stream_with_nothing_held_flushes_nothing():
    """receive_eof after complete messages: no body part or coding anomaly is
    held, so _flush is not called (its tests made inline); a body cut by the
    end still comes out, with the Malformed that names it."""
    class Counting(HttpParser):
        flushed = 0

        def _flush(self, side, events):
            type(self).flushed += 1
            return super()._flush(side, events)

    p = Counting()
    p.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Direction.TO_SERVER)
    Counting.flushed = 0
    assert p.receive_eof(Direction.TO_SERVER) == [] and Counting.flushed == 0
    p.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", Direction.TO_CLIENT)
    got = p.receive_eof(Direction.TO_CLIENT)
    assert [e.kind for e in got] == ["malformed"]
    assert "6 bytes missing" in got[0].reason
