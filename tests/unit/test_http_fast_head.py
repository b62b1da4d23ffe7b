"""protocols/http.py's fast path for plain heads (_fast_head): it must give
exactly what the llhttp path (_parse_head) gives, or step aside (None).

Seeded random heads close to plain ones (one byte inserted, replaced or
removed anywhere; the fields that steer framing and upgrades; odd statuses
and reasons) are parsed both ways, and whole streams of them are fed at
random splits: the events must not depend on where the bytes were cut."""
from __future__ import annotations

import dataclasses
import random

import httptools
import pytest

from protocols import http
from protocols.api import Direction, Malformed
from protocols.http import HttpParser

C, S = Direction.TO_SERVER, Direction.TO_CLIENT

# Random cases per property: enough to reach every branch of _fast_head
# many times (a few seconds on a busy 2-core machine).
CASES = 4000
SEED = 20261206

_NAMES = ["Host", "host", "HOST", "User-Agent", "Accept", "Content-Length", "content-length",
          "Connection", "Content-Type", "X-Forwarded-For", "Cookie", "Upgrade",
          "Transfer-Encoding", "Proxy-Connection", "Keep-Alive", "Date", "Server"]
_VALUES = ["a.example", "keep-alive", "close", "Upgrade", "keep-alive, upgrade", "0", "3", "03",
           "15", "123456789012345", "1234567890123456", "text/html; charset=utf-8",
           "  spaced  ", "", "a\tb", "\xe9t\xe9", "chunked", "websocket", "x,y", "  ", "1, 1"]


def _near_plain(r: random.Random, request: bool, mutate: bool = True) -> bytes:
    if request:
        method = r.choice(sorted(http.METHODS) + ["CONNECT", "PRI", "get"])
        target = r.choice(["/", "/a?b=c&d=%20#f", "*", "x.example:443", "http://h/p",
                           "/" + "".join(chr(r.randrange(0x21, 0x7f)) for _ in range(r.randrange(12)))])
        first = f"{method} {target} HTTP/1.{r.choice('0111')}"
    else:
        status = r.choice(["200", "204", "304", "100", "101", "199", "102", "404", "999", "099",
                           "1000", "20"])
        first = f"HTTP/1.{r.choice('0111')} {status}" + r.choice(
            [" OK", "", " ", " Not Found", " OK ", "  OK", " \xe9", " a\tb"])
    fields = [f"{r.choice(_NAMES)}:{r.choice(['', ' ', '  ', chr(9)])}{r.choice(_VALUES)}"
              f"{r.choice(['', ' ', chr(9)])}" for _ in range(r.randrange(7))]
    head = bytearray(("\r\n".join([first, *fields]) + "\r\n\r\n").encode("latin-1"))
    if mutate and r.random() < 0.5:
        pos, byte = r.randrange(len(head)), r.randrange(256)
        op = r.randrange(3)
        if op == 0:
            head[pos:pos] = bytes([byte])
        elif op == 1:
            head[pos] = byte
        else:
            del head[pos]
    return bytes(head)


def _as_tuple(h):
    if isinstance(h, str):
        return h
    return (h.method, h.uri, h.status, h.reason, h.version, h.fields, h.anomalies, h.upgrade,
            h.error, h.names)


def test_fast_head_equals_llhttp_path_or_steps_aside():
    r = random.Random(SEED)
    taken = 0
    for _ in range(CASES):
        request = r.random() < 0.5
        raw = _near_plain(r, request)
        end = raw.find(b"\r\n\r\n")
        if end < 0 or b"\n\n" in raw[:end + 4] or b"\n\r\n" in raw[:end + 2]:
            continue        # not one complete head ending at its first empty line
        head = raw[:end + 4]
        fast = http._fast_head(head.decode("latin-1"), request)
        if fast is None:
            continue
        taken += 1
        assert _as_tuple(fast) == _as_tuple(http._parse_head(head, request)), head
    assert taken > CASES // 10      # the property was exercised


def _events(ops):
    p = HttpParser()
    out = []
    for d, data in ops:
        out += p.receive_data(data, d)
    out += p.receive_eof(C) + p.receive_eof(S)
    # HttpBody events follow how the bytes were cut; everything else may not,
    # but a Malformed's reason quotes the bytes it had (where, not why, counts),
    # and a tunnel hands over what was held when it opened (where it starts counts).
    got = []
    for e in out:
        if isinstance(e, http.HttpTunnel):
            got.append((e.via, e.target, e.status, e.to_server_offset, e.to_client_offset))
            break
        if isinstance(e, Malformed):
            got.append((e.direction, e.offset))
        elif not isinstance(e, http.HttpBody):
            got.append(dataclasses.astuple(e))
    return got


def _cut(r: random.Random, data: bytes) -> list[bytes]:
    if len(data) < 2:
        return [data] if data else []
    cuts = sorted(r.sample(range(1, len(data)), min(len(data) - 1, r.randrange(1, 8))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def test_events_do_not_depend_on_splits():
    r = random.Random(SEED + 1)
    for _ in range(CASES // 4):
        # Not mutated: a request line without a version is read as HTTP/0.9
        # as soon as its line is complete, so where such a line is cut counts.
        reqs = b"".join(_near_plain(r, True, mutate=False) + (b"abc" if r.random() < 0.3 else b"")
                        for _ in range(r.randrange(1, 4)))
        resps = b"".join(_near_plain(r, False, mutate=False) for _ in range(r.randrange(0, 3)))
        whole = _events([(C, reqs), (S, resps)] if resps else [(C, reqs)])
        split = _events([(C, part) for part in _cut(r, reqs)] + [(S, part) for part in _cut(r, resps)])
        assert whole == split, (reqs, resps)


def test_plain_heads_do_not_need_llhttp(monkeypatch):
    """The per-message work of a plain request or response: no llhttp parser."""
    def refuse(*a, **k):
        raise AssertionError("llhttp used for a plain head")
    monkeypatch.setattr(httptools, "HttpRequestParser", refuse)
    monkeypatch.setattr(httptools, "HttpResponseParser", refuse)
    p = HttpParser()
    ev = p.receive_data(b"GET /catalog/item?id=000001&sort=price HTTP/1.1\r\nHost: shop.example\r\n"
                        b"User-Agent: bench\r\n\r\n" * 2, C)
    assert [e.kind for e in ev] == ["http_request", "http_message_end"] * 2
    req = ev[0]
    assert (req.method, req.uri, req.version, req.host, req.user_agent, req.anomalies) == (
        "GET", "/catalog/item?id=000001&sort=price", "HTTP/1.1", "shop.example", "bench", ())
    ev = p.receive_data(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
                        b"Connection: keep-alive\r\nHost: a\r\nhost: b\r\n\r\nhi", S)
    assert [e.kind for e in ev] == ["http_response", "http_body", "http_message_end"]
    assert (ev[0].status, ev[0].reason, ev[0].content_length, ev[0].request_method,
            ev[0].anomalies) == (200, "OK", 2, "GET", (http.A.HOST_HEADER_AMBIGUOUS,))


@pytest.mark.parametrize("head, to_server", [
    (b"GET / HTTP/1.1\nHost: a\n\n", True),                      # bare LF
    (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", True),             # obs-fold
    (b"GET /\xe9 HTTP/1.1\r\n\r\n", True),                      # non-ASCII target
    (b"CONNECT a:443 HTTP/1.1\r\n\r\n", True),
    (b"get / HTTP/1.1\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * http.MAX_FIELD_LINE_BYTES + b"\r\n\r\n", True),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", False),
    (b"HTTP/1.1 200  OK\r\n\r\n", False),
])
def test_other_heads_take_the_llhttp_or_lenient_path(head, to_server):
    # Longer than a line may be: _st_head does not ask _fast_head at all.
    if len(head) <= http.MAX_FIELD_LINE_BYTES:
        assert http._fast_head(head.decode("latin-1"), to_server) is None


@pytest.mark.parametrize("cls, build, values", [
    (http.HttpRequest, http._new_request,
     (C, "GET", "/", "HTTP/1.1", "a", None, None, (("Host", "a"),), None, False, (), 7)),
    (http.HttpResponse, http._new_response,
     (S, 200, "OK", "HTTP/1.1", None, (), "GET", 3, False, ("X",), 9)),
    (http.HttpMessageEnd, http._new_message_end, (C, 3, 3, (("T", "v"),))),
])
def test_event_builders_make_the_same_events(cls, build, values):
    made, built = cls(*values), build(*values)
    assert type(built) is cls
    assert (built == made, hash(built), repr(built)) == (True, hash(made), repr(made))
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.direction = S


# -- the whole parser: plain heads (and their cached fields blocks) vs the llhttp path ----

def _stream(r: random.Random, request: bool) -> bytes:
    """Messages of one direction: near-plain heads (mutated half the time),
    some with a body of the length they announce, some with an odd one."""
    out = b""
    for _ in range(r.randrange(1, 5)):
        head = _near_plain(r, request)
        if r.random() < 0.4 and head.endswith(b"\r\n\r\n"):
            n = r.randrange(0, 12)
            head = head[:-2] + b"Content-Length: %d\r\n\r\n" % n + bytes(r.randrange(256) for _ in range(n))
        out += head
    return out


def _parse(monkeypatch, fast: bool, ops, taken: list | None = None, ends=(C, S)) -> list:
    """The events of ``ops`` (direction, bytes) and then the ends of
    ``ends``, with the fast head path on (``taken`` collects what it
    returned) or off."""
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(http, "_fast_head", lambda text, request, side=None: None)
        elif taken is not None:
            real = http._fast_head
            m.setattr(http, "_fast_head", lambda text, request, side=None: taken.append(real(text, request, side)) or taken[-1])
        p = HttpParser()
        out = []
        for d, data in ops:
            out += p.receive_data(data, d)
        for d in ends:
            out += p.receive_eof(d)
    return out


def _all_events(monkeypatch, fast: bool, ops, taken: list | None = None) -> list:
    return [dataclasses.astuple(e) for e in _parse(monkeypatch, fast, ops, taken)]


def test_parser_events_equal_with_and_without_the_fast_path(monkeypatch):
    """Seeded streams of near-plain and mutated requests and responses, cut at
    random points: every event (heads, bodies, ends, anomalies, Malformed)
    is the same whether plain heads take the fast path or llhttp; each
    stream is parsed twice with the fast path, so the second time its
    fields blocks come from the cache."""
    r = random.Random(SEED + 2)
    taken: list = []
    for case in range(CASES // 4):
        reqs, resps = _stream(r, True), _stream(r, False)
        ops = [(C, part) for part in _cut(r, reqs)] + [(S, part) for part in _cut(r, resps)]
        want = _all_events(monkeypatch, False, ops)
        assert _all_events(monkeypatch, True, ops, taken) == want, (reqs, resps)
        assert _all_events(monkeypatch, True, ops) == want, (reqs, resps)     # cached blocks
    fast = sum(h is not None for h in taken)
    assert fast > CASES // 20 and len(taken) - fast > CASES // 20     # both ways taken often


def test_fields_block_cache_is_bounded():
    http._blocks.clear()
    p = HttpParser()
    for i in range(http.MAX_CACHED_BLOCKS + 10):
        ev = p.receive_data(b"GET / HTTP/1.1\r\nX-N: %d\r\n\r\n" % i, C)
        assert ev[0].headers == (("X-N", str(i)),)
    assert 0 < len(http._blocks) <= http.MAX_CACHED_BLOCKS
    long = b"GET / HTTP/1.1\r\nCookie: " + b"c" * http.MAX_CACHED_BLOCK_CHARS + b"\r\n\r\n"
    http._blocks.clear()
    assert p.receive_data(long, C)[0].headers[0][1] == "c" * http.MAX_CACHED_BLOCK_CHARS
    assert not http._blocks


# -- where a head ends: the fast path's CRLF CRLF find vs _HEAD_END's "\n\r?\n" ----

def _mixed_head(r: random.Random) -> bytes:
    """A request head whose lines end in CRLF or a bare LF, sometimes with an
    empty line (CRLF, LF, or LF CR LF) inside: where it ends is the first
    "\\n\\r?\\n", which a CRLF CRLF find alone would place later."""
    lines = [b"GET /p?q=%d HTTP/1.1" % r.randrange(100), b"Host: a.example"]
    lines += [b"X-%d: v" % k for k in range(r.randrange(3))]
    out = b""
    for line in lines:
        out += line + r.choice([b"\r\n"] * 4 + [b"\n"])
        if r.random() < 0.15:
            out += r.choice([b"\r\n", b"\n", b"\r\n"])
    return out + r.choice([b"\r\n", b"\r\n", b"\n"])


def test_head_end_is_the_first_empty_line_whatever_the_endings(monkeypatch):
    """Seeded streams of plain and mixed-ending heads (some with a short
    body), fed whole, cut at random points and cut at every byte: the same
    events as with the fast path off (where _HEAD_END alone finds each
    head's end), and the fast path is taken for the plain ones."""
    def events(fast, ops, taken=None):
        out = _parse(monkeypatch, fast, ops, taken, ends=(C,))
        # Bodies come as the bytes were cut, and a Malformed's reason quotes
        # the bytes it had: their bytes and where it is count, not the pieces.
        body = b"".join(e.data for e in out if isinstance(e, http.HttpBody))
        return body, [(e.direction, e.offset) if isinstance(e, Malformed) else dataclasses.astuple(e)
                      for e in out if not isinstance(e, http.HttpBody)]
    r = random.Random(SEED + 3)
    taken: list = []
    for case in range(CASES // 8):
        reqs = b""
        for _ in range(r.randrange(1, 4)):
            head = _mixed_head(r)
            if r.random() < 0.3 and head.endswith(b"\r\n\r\n"):
                head = head[:-2] + b"Content-Length: 2\r\n\r\nab"
            reqs += head
        want = events(False, [(C, reqs)])
        assert events(True, [(C, reqs)], taken) == want, reqs
        assert events(True, [(C, part) for part in _cut(r, reqs)]) == want, reqs
        if case % 16 == 0:
            for k in range(1, len(reqs)):
                assert events(True, [(C, reqs[:k]), (C, reqs[k:])]) == want, (reqs, k)
    fast = sum(h is not None for h in taken)
    assert fast > CASES // 40 and len(taken) - fast > CASES // 40


def test_a_message_without_body_ends_with_the_event_it_always_had():
    p = HttpParser()
    ev = p.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", C) + p.receive_data(b"HTTP/1.1 204 No\r\n\r\n", S)
    ends = [e for e in ev if e.kind == "http_message_end"]
    assert ends == [http.HttpMessageEnd(C, 0, 0), http.HttpMessageEnd(S, 0, 0)]
    assert [dataclasses.astuple(e) for e in ends] == [(C, 0, 0, (), (), None, None, 0), (S, 0, 0, (), (), None, None, 0)]
    ev = p.receive_data(b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", C)
    assert ev[-1] == http.HttpMessageEnd(C, 1, 1)


def test_head_defaults_are_not_shared_state():
    """_Head's defaults are class attributes: heads parsed one way or the
    other never leave anything on a later fresh head."""
    for raw in (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
                b"GET / HTTP/1.1\nHost: a\n\n", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"):
        h = http._parse_head(raw, True)
        assert h.names and h.fields
        fast = http._fast_head(raw.decode("latin-1"), True)
        assert fast is None or fast.names == ["host"]
    fresh = http._Head()
    assert (fresh.method, fresh.uri, fresh.status, fresh.reason, fresh.version, fresh.fields, tuple(fresh.names),
            fresh.anomalies, fresh.upgrade, fresh.error, fresh.block) == ("", "", 0, "", "", (), (), (), False, None, None)


def test_bytes_after_the_end_or_on_a_done_side():
    """receive_data takes an open side's bytes itself (StreamSide.accept's
    work inline): after receive_eof they are refused, and a side the parser
    gave up on (Malformed) or handed to a tunnel holds none of them."""
    from protocols.api import ProtocolError
    p = HttpParser()
    p.receive_data(b"GET / HTTP/1.1\r\n\r\n", C)
    p.receive_eof(C)
    with pytest.raises(ProtocolError):
        p.receive_data(b"GET / HTTP/1.1\r\n\r\n", C)
    p = HttpParser()
    assert [e.kind for e in p.receive_data(b"\x16\x03\x01 not http\r\n\r\n", C)] == ["malformed"]
    assert p.receive_data(b"GET / HTTP/1.1\r\n\r\n" * 3, C) == [] and p.buffered(C) == 0
    p = HttpParser()
    p.receive_data(b"CONNECT a.example:443 HTTP/1.1\r\n\r\n", C)
    assert [e.kind for e in p.receive_data(b"HTTP/1.1 200 OK\r\n\r\n", S)][-1] == "http_tunnel"
    assert p.receive_data(b"\x16\x03\x01" * 100, C) == [] and p.buffered(C) == 0


def test_a_side_reuses_its_last_fields_block_only_when_the_text_is_the_same():
    """_fast_head tries the side's last fields block first (_Side.last_block):
    seeded runs of requests and responses on one connection whose blocks
    repeat, or differ from the last by one byte at the same length (a field
    that is not plain, Transfer-Encoding or Upgrade, among them), give each
    message the events a new parser gives it alone. (Fails when the block is
    reused on the length alone.)"""
    r = random.Random(SEED + 5)
    blocks = [b"Host: a.example\r\nUser-Agent: bench\r\n", b"Host: b.example\r\nUser-Agent: bench\r\n",
              b"Host: a.example\r\nUser-Agent: bencH\r\n", b"Host: a.example\r\nUpgrade: xbench\r\n",
              b"Host: a.example\r\nContent-Type: ab\r\n", b"Host: a.example\r\nContent-Length: 3\r\n",
              b"Host: a.example\r\nUser-Agent: be\tch\r\n", b"Host: a.example\r\nUser-Agent: bench \r\n"]

    def alone(d, msg):
        p = HttpParser()
        if d == S:
            p.receive_data(b"GET / HTTP/1.1\r\n\r\n", C)
        return [dataclasses.replace(e, offset=0) if hasattr(e, "offset") else e
                for e in p.receive_data(msg, d)]

    for _ in range(300):
        p = HttpParser()
        for _ in range(r.randrange(1, 12)):
            b = r.choice(blocks[:2] if r.random() < 0.4 else blocks)
            if "Content-Length" in b.decode():
                b = b.replace(b"Content-Length: 3", b"Content-Length: 0")   # no body to wait for
            req = b"GET /i?id=%d HTTP/1.1\r\n" % r.randrange(1000) + b + b"\r\n"
            # (framed: an answer without a length would run to the end of the stream)
            resp = b"HTTP/1.1 200 OK\r\n" + b + (b"" if b"Content-Length" in b else b"Content-Length: 0\r\n") + b"\r\n"
            got = p.receive_data(req, C)
            if any(isinstance(e, (Malformed, http.HttpTunnel)) for e in got) or p.pending_requests() != 1:
                break          # an upgrade request waits for its answer: this run ends here
            want = alone(C, req)
            assert [dataclasses.replace(e, offset=0) if hasattr(e, "offset") else e for e in got] == want, req
            got = p.receive_data(resp, S)
            want = alone(S, resp)
            assert [dataclasses.replace(e, offset=0) if hasattr(e, "offset") else e for e in got] == want, resp
