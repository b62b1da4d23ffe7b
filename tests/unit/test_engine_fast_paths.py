"""The slow path's shortcuts for the common case give what the general code
gives: the plain-target shortcut of normalize.uri_and_args, the in-order
shortcut of reassembly and the engine's use of it, and others below."""
from __future__ import annotations

import random

from slowpath import normalize

# Characters a target is drawn from: plain ones, and each one some step of
# normalisation looks at (escapes, "+", "#", NUL, backslash, dots, slashes,
# non-ASCII, control bytes, "?", "&", "=").
ALPHABET = "ab/?&=.%2e+#\\\x00\x01é~:;5A"


def _targets(n: int, seed: int):
    rnd = random.Random(seed)
    for _ in range(n):
        body = "".join(rnd.choice(ALPHABET) for _ in range(rnd.randrange(0, 24)))
        yield rnd.choice(("/", "", "http://h", "a")) + body


def test_plain_target_shortcut_matches_general_decoding(monkeypatch):
    checked = plain = 0
    general = []
    real = normalize._uri_and_args
    monkeypatch.setattr(normalize, "_uri_and_args", lambda t: general.append(t) or real(t))
    for target in _targets(20_000, 14):
        general.clear()
        assert normalize.uri_and_args(target) == real(target), target
        checked += 1
        # the shortcut is taken exactly for an ASCII origin-form target _PLAIN_TARGET finds nothing in
        is_plain = normalize._PLAIN_TARGET.search(target) is None and target[:1] == "/" and target.isascii()
        assert (not general) == is_plain, target
        plain += is_plain
    assert plain > 300 and checked - plain > 1000       # both ways taken often


def test_plain_target_examples():
    assert normalize.uri_and_args("/catalog/item?id=000123&sort=price") == \
        (b"/catalog/item?id=000123&sort=price", [b"000123", b"price"])
    assert normalize.uri_and_args("/p?") == (b"/p?", [])
    assert normalize.uri_and_args("/p?a&=v&b=") == (b"/p?a&=v&b=", [b"v"])
    many = "/p?" + "&".join(f"a{i}=v" for i in range(500))
    assert len(normalize.uri_and_args(many)[1]) == normalize.MAX_ARGS
    # not plain: decoded as before
    assert normalize.uri_and_args("/a//b?x=1+2") == (b"/a/b?x=1 2", [b"1 2"])
    assert normalize.uri_and_args("/a#frag") == (b"/a", [])


# -- reassembly: the in-order shortcut of StreamReassembler.segment ---------------

def _segments(rnd: random.Random, n: int):
    """Segments of one direction: mostly in order, with retransmissions,
    overlaps, holes, reordering, a FIN or RST now and then, near a
    sequence-number wrap sometimes."""
    from slowpath.reassembly import FIN, RST, SYN
    isn = rnd.choice((1000, (1 << 32) - 300, rnd.randrange(1 << 32)))
    out = [(isn, SYN, b"")] if rnd.random() < 0.8 else []
    at = 1 if out else 0
    for _ in range(n):
        size = rnd.randrange(0, 40) if rnd.random() < 0.9 else rnd.randrange(40, 90)
        data = bytes(rnd.randrange(256) for _ in range(size))
        r = rnd.random()
        off = at
        if r < 0.1:
            off = max(0, at - rnd.randrange(1, 60))          # retransmission / overlap
        elif r < 0.2:
            off = at + rnd.randrange(1, 60)                  # a hole
        flags = 0x10
        if rnd.random() < 0.03:
            flags |= FIN
        if rnd.random() < 0.01:
            flags |= RST
        out.append(((isn + off) % (1 << 32), flags, data))
        if r >= 0.2:
            at = off + size
    if rnd.random() < 0.3:
        rnd.shuffle(out)
    return out


def test_in_order_shortcut_gives_the_general_path_events_and_counters():
    from protocols.api import Direction
    from slowpath.reassembly import ReassemblyLimits, StreamReassembler
    rnd = random.Random(1414)
    for case in range(400):
        segs = [(rnd.choice((Direction.TO_SERVER, Direction.TO_CLIENT)), *s) for s in _segments(rnd, 60)]
        limits = ReassemblyLimits(per_flow_bytes=rnd.choice((200, 1 << 20)), max_window=rnd.choice((50, 1 << 20)))
        got = []
        for shortcut in (True, False):
            r = StreamReassembler(limits)
            r.in_order_shortcut = shortcut
            events = [r.segment(d, seq, flags, data) for d, seq, flags, data in segs]
            got.append((events, r.counters, r.flush()))
        assert got[0] == got[1], case



def test_in_order_takes_a_sides_first_segment_without_syn():
    """The slow path sees a connection from its first payload (no SYN): that
    first segment of each side is in order (it starts the stream), taken by
    in_order with segment()'s state and counters, so a short connection's
    first records skip the general path; one past the window is left to
    segment(), which refuses it."""
    from protocols.api import Direction
    from slowpath.reassembly import ReassemblyLimits, StreamReassembler
    fast, slow = StreamReassembler(), StreamReassembler()
    slow.in_order_shortcut = False
    assert fast.in_order(Direction.TO_SERVER, 5000, 0x18, b"GET /") == b"GET /"
    assert [(e.data, e.stream_offset) for e in slow.segment(Direction.TO_SERVER, 5000, 0x18, b"GET /")] == [(b"GET /", 0)]
    assert fast.in_order(Direction.TO_CLIENT, (1 << 32) - 2, 0x18, b"HTTP") == b"HTTP"    # near the wrap
    slow.segment(Direction.TO_CLIENT, (1 << 32) - 2, 0x18, b"HTTP")
    assert fast.counters == slow.counters
    # the next bytes of each side follow on from there, in both
    for r in (fast, slow):
        assert [e.data for e in r.segment(Direction.TO_SERVER, 5005, 0x18, b"x")] == [b"x"]
        assert [e.data for e in r.segment(Direction.TO_CLIENT, 2, 0x18, b"/1.1")] == [b"/1.1"]
        assert [e.data for e in r.segment(Direction.TO_CLIENT, 1, 0x18, b"late")] == []   # before: not new
    assert fast.counters == slow.counters
    small = StreamReassembler(ReassemblyLimits(max_window=4))
    assert small.in_order(Direction.TO_SERVER, 7, 0x18, b"12345") is None
    assert small.segment(Direction.TO_SERVER, 7, 0x18, b"12345") == [] and small.counters.out_of_window == 1

# -- WAF scans: one match callback for every scan --------------------------------

def test_waf_scan_stops_after_max_match_events():
    """A value matching one signature over and over stops the scan at
    MAX_MATCH_EVENTS (bounded work): a later signature's text is not reached,
    while the same text alone is found."""
    from pathlib import Path

    from slowpath.rulesfile import load_rules
    from slowpath.waf import MAX_MATCH_EVENTS
    rules = load_rules(Path(__file__).resolve().parents[2] / "examples" / "rules.yaml")
    tail = b" union select password from users"
    alone = {a.sig.id for a, _ in rules._scan("uri", tail)}
    assert alone
    flood = b"<script>" * (2 * MAX_MATCH_EVENTS)
    got = {a.sig.id for a, _ in rules._scan("uri", flood + tail)}
    assert got and not got & alone
    # and the matched text is what the signature matched, as before
    (a, text), = rules._scan("uri", b"/x?q=<script>alert(1)</script>")[:1]
    assert text and text in b"/x?q=<script>alert(1)</script>"


# -- domains.request_host: origin-form shortcut and the per-authority cache --------

def _request_host_reference(method: str, target: str, host: str | None):
    """request_host as it was before the shortcut and the cache."""
    import re
    auth = None
    if method.upper() == "CONNECT":
        auth = target
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", target):
        auth = target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if auth is None:
        auth = host
    if not auth:
        return None
    auth = auth.rsplit("@", 1)[-1].strip()
    if auth.startswith("["):
        return auth[1:].split("]", 1)[0]
    return auth.split(":", 1)[0] if auth.count(":") == 1 else auth


def test_request_host_matches_reference_cached_or_not():
    from types import SimpleNamespace

    from slowpath import domains
    rnd = random.Random(90)
    parts = ["a", "b.example", ":", "@", "[", "]", "::1", " ", "/", "?", "#", "x:y", "http://", "HTTPS://", "8080"]
    for _ in range(6000):
        method = rnd.choice(("GET", "CONNECT", "connect", "POST"))
        target = "".join(rnd.choice(parts) for _ in range(rnd.randrange(0, 6)))
        host = rnd.choice((None, "", *("".join(rnd.choice(parts) for _ in range(rnd.randrange(1, 5)))
                                        for _ in range(3))))
        ev = SimpleNamespace(method=method, uri=target, host=host)
        want = _request_host_reference(method, target, host)
        assert domains.request_host(ev) == want == domains.request_host(ev), (method, target, host)
    assert 0 < len(domains._hosts) <= domains.MAX_CACHED_HOSTS
    long = "h" * (domains.MAX_CACHED_AUTHORITY_CHARS + 1)
    assert domains.request_host(SimpleNamespace(method="GET", uri="/", host=long)) == long
    assert long not in domains._hosts


# -- the engine's per-record fast paths against the general ones ------------------

ENGINE_RULES = """
waf:
  sets: {sqli: block, xss: block, traversal: block, cmdi: block}
dlp:
  - {name: no-cards-out, detectors: [credit_card], direction: response, action: block}
domains:
  - {name: blocked, match: [evil.example], fields: [http_host], action: block}
"""


def _http_flow_records(rnd: random.Random, key: bytes, spread: int = 200):
    """Payload records of one HTTP/1 flow as the kernel copies them: pipelined
    requests (now and then an attack, a blocked Host or a body) and their
    responses, cut into segments at random points; some segments retransmitted,
    overlapping, reordered; a FIN at the end sometimes."""
    from slowpath.records import InspRecord
    from datapath.enums import INSPECT
    clean = ["/catalog/item?id=%d&sort=price", "/a//b/./c?x=1+2&n=%d", "/ok/%d"]
    attacks = ["/q?s=%%3Cscript%%3E%d", "/x?q=' or 1=1--%d", "/p%%2e%%2e/etc/passwd?%d"]
    streams = [bytearray(), bytearray()]
    for i in range(rnd.randrange(3, 12)):
        body = b"a=1&b=%d" % i if rnd.random() < 0.2 else b""
        head = "POST" if body else "GET"
        target = rnd.choice(attacks if rnd.random() < 0.04 else clean) % i
        host = "evil.example" if rnd.random() < 0.02 else "shop.example"
        streams[0] += (f"{head} {target} HTTP/1.1\r\nHost: {host}\r\n"
                       f"User-Agent: t{i % 3}\r\n").encode()
        streams[0] += (b"Content-Length: %d\r\n\r\n" % len(body) + body) if body else b"\r\n"
        out = b"card 4111 1111 1111 1111" if rnd.random() < 0.1 else b"hello %d" % i
        streams[1] += b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(out) + out
    isn = (1000, 5000) if rnd.random() < 0.7 else ((1 << 32) - 40, (1 << 32) - 90)
    segs = []
    for side in (0, 1):
        data, at = bytes(streams[side]), 0
        while at < len(data):
            n = rnd.randrange(1, 120)
            segs.append((side, at, data[at:at + n]))
            at += n
    # The two sides interleaved; a wide spread puts the client's segments
    # mostly before the server's (pipelined requests, then the answers).
    segs.sort(key=lambda s: (s[1] + rnd.randrange(0, spread) * s[0]))
    out = []
    for side, off, data in segs:
        r = rnd.random()
        if r < 0.05 and off:                       # a retransmission that overlaps the last bytes
            back = min(off, rnd.randrange(1, 30))
            out.append((side, off - back, data[:1] and bytes(back) + data))
        out.append((side, off, data))
        if r > 0.97 and len(out) > 2:              # reordered with the one before
            out[-1], out[-2] = out[-2], out[-1]
    recs = []
    for side, off, data in out:
        seq = (isn[side] + 1 + off) % (1 << 32)
        ack = (isn[1 - side] + 1) % (1 << 32)
        recs.append(InspRecord(ts_ns=1_000_000, key=key, client=("10.0.0.5", 40000), server=("10.0.1.5", 80),
                               side=side, seq=seq, ack_seq=ack, tcp_flags=0x18, l4=6, app=0,
                               inspect=INSPECT["WAF"] | INSPECT["DLP"] | INSPECT["DPI"]
                               | (INSPECT["HOLD"] if rnd.random() < 0.3 else 0),
                               rule_id=7, hook=0, orig_len=len(data), data=data))
    return recs


def _run_engine(recs, shortcut: bool, runs: bool = True, batch: int = 7, budget: int | None = None):
    from slowpath.engine import Engine
    from slowpath.reassembly import StreamReassembler
    from slowpath.rulesfile import load_rules_text

    class Writer:
        def __init__(self):
            self.written = []

        def verdict(self, key, code):
            self.written.append((key, code))
            return 2_000_000

    class Injector:
        def __init__(self):
            self.calls = []

        def inject(self, info, side, rec):
            self.calls.append(("inject", side, rec.seq, rec.data))
            return True

        def reset_flow(self, info, key, next_seq):
            self.calls.append(("reset", key, list(next_seq)))

        def reset_held(self, info, key, held_from, next_seq):
            self.calls.append(("reset_held", key, list(held_from), list(next_seq)))

        def release(self, info, recs):
            self.calls.append(("release", [(r.side, r.seq, r.data) for r in recs]))

    eve, writer, injector = [], Writer(), Injector()
    engine = Engine(load_rules_text(ENGINE_RULES, "rules.yaml"), eve.append, writer, injector=injector,
                    clock=lambda: 1.0, wallclock=lambda: 2.0, inspect_budget=budget)
    engine.record_runs = runs
    old = StreamReassembler.in_order_shortcut
    StreamReassembler.in_order_shortcut = shortcut
    try:
        for i in range(0, len(recs), batch):              # batches as the ring hands them over
            engine.handle_batch(recs[i:i + batch])
        engine.close_all()
    finally:
        StreamReassembler.in_order_shortcut = old
    c = engine.counters
    return eve, writer.written, injector.calls, (c.records, c.bytes, dict(c.verdicts), dict(c.hits),
                                                 c.after_verdict, dict(c.failures))


def test_engine_in_order_path_gives_the_general_path_eve_verdicts_and_resets():
    """Engine._parse hands in-order records straight to the analyzer
    (StreamReassembler.in_order); with the shortcut off every record goes
    through segment()'s general path. Seeded HTTP flows with attacks and
    blocked hosts mid-stream (blocks, resets, alerts with their packet
    counters), retransmissions and reordering: the same EVE, verdicts,
    resets and counters either way."""
    rnd = random.Random(1402)
    flows = blocked = 0
    for case in range(150):
        recs = []
        for f in range(rnd.randrange(1, 4)):
            recs += _http_flow_records(rnd, bytes([f]) * 40)
            flows += 1
        a, b = _run_engine(recs, True), _run_engine(recs, False)
        assert a == b, case
        blocked += a[3][2].get("VERDICT_BLOCK", 0)
    assert 0.2 < blocked / flows < 0.9     # blocked flows (mid-stream) and clean ones both taken often


def test_engine_record_runs_give_one_record_at_a_time_eve_verdicts_and_resets(monkeypatch):
    """Engine._handle_run parses a run of one flow's in-order records in one
    pass, then handles each record with its own events. Over seeded HTTP
    flows (attacks and blocked hosts mid-run, hold mode, retransmissions,
    reordering, an inspection budget reached mid-flow, batches of several
    sizes): the same EVE (alerts with their packet and byte counters), the
    same verdicts, the same resets (the sequence numbers of the record that
    completed the blocked request, not of the run's last) and the same
    counters as one record at a time."""
    from slowpath.engine import Engine
    taken, blocked_in_run = [], []
    real = Engine._handle_run

    def handle_run(self, run, *a):
        taken.append(len(run))
        flow = self.flows[run[0].key]
        before = flow.verdict
        real(self, run, *a)
        if flow.verdict != before and flow.verdict.name == "VERDICT_BLOCK":
            blocked_in_run.append(len(run))
    monkeypatch.setattr(Engine, "_handle_run", handle_run)
    rnd = random.Random(1403)
    flows = blocked = resets = 0
    truncated = interleaved = 0
    for case in range(150):
        per_flow = []
        for f in range(rnd.randrange(1, 4)):
            per_flow.append(_http_flow_records(rnd, bytes([f]) * 40, spread=rnd.choice((200, 5000))))
            flows += 1
        recs = []
        if len(per_flow) > 1 and rnd.random() < 0.4:
            # The flows' records interleaved in pieces (each flow's in order):
            # which flow was seen last decides the order close_all logs them.
            interleaved += 1
            while any(per_flow):
                f = rnd.choice([f for f in per_flow if f])
                n = rnd.randrange(1, 40)
                recs += f[:n]
                del f[:n]
        else:
            recs = [r for f in per_flow for r in f]
        # Now and then a record the kernel copied in part (orig_len > its
        # bytes): the flow's byte counters (in alerts) count the packet's.
        recs = [r._replace(orig_len=r.orig_len + 7) if rnd.random() < 0.02 and r.data else r for r in recs]
        truncated += sum(r.orig_len != len(r.data) for r in recs)
        batch = rnd.choice((1, 7, 64, 400))
        budget = rnd.choice((None, None, rnd.randrange(60, 600)))
        a = _run_engine(recs, True, runs=True, batch=batch, budget=budget)
        b = _run_engine(recs, True, runs=False, batch=batch, budget=budget)
        assert a == b, case
        blocked += a[3][2].get("VERDICT_BLOCK", 0)
        resets += sum(1 for c in a[2] if c[0].startswith("reset"))
    assert 0.2 < blocked / flows < 0.9 and resets     # blocked flows (mid-stream) and clean ones both taken often
    assert len(taken) > 150 and max(taken) > 8         # runs taken, long ones too
    assert len(blocked_in_run) > 10                    # and blocked within a run
    assert truncated > 50 and interleaved > 20


# -- the WAF's header hits: one lookup per header block ------------------------------

def test_header_block_cache_gives_the_field_by_field_hits():
    """FlowInspector._waf_request keeps a request's header hits per whole
    header block (and direction): seeded blocks of scanned and unscanned
    fields, with attacks in some values, give the hits the field-by-field
    scan gives, from the cache too (a block seen before), in field order;
    a block longer than MAX_CACHED_BLOCK_CHARS is scanned and not kept."""
    from pathlib import Path

    from protocols.api import Direction
    from protocols.http import HttpRequest
    from slowpath import inspector
    from slowpath.rulesfile import load_rules
    rules = load_rules(Path(__file__).resolve().parents[2] / "examples" / "rules.yaml")
    names = ["User-Agent", "Referer", "Cookie", "X-Forwarded-For", "Accept", "user-agent", "X-Other"]
    values = ["bench", "<script>alert(1)</script>", "' or 1=1--", "a=b; c=d", "../../etc/passwd", "", "1.2.3.4",
              "() { :; }; /bin/sh -c id"]
    rnd = random.Random(1405)
    blocks = [tuple((rnd.choice(names), rnd.choice(values)) for _ in range(rnd.randrange(0, 6)))
              for _ in range(300)]
    hit_blocks = 0
    for i in range(1200):
        headers = rnd.choice(blocks)
        d = rnd.choice((Direction.TO_SERVER, Direction.TO_CLIENT))
        ev = HttpRequest(d, "GET", "/p?x=1", "HTTP/1.1", "h", None, None, headers, None, False, (), 0)
        got = rules.flow(frozenset({"waf"}))._waf_request(ev)
        rules._header_cache.clear()
        want = rules.flow(frozenset({"waf"}))._header_hits(headers, d)
        assert got == want, (headers, d)
        hit_blocks += bool(want)
    assert 0 < len(rules._block_cache) <= 2 * len(blocks) and hit_blocks > 100
    long = (("Cookie", "a" * inspector.MAX_CACHED_BLOCK_CHARS),)
    ev = HttpRequest(Direction.TO_SERVER, "GET", "/", "HTTP/1.1", "h", None, None, long, None, False, (), 0)
    assert rules.flow(frozenset({"waf"}))._waf_request(ev) == []
    assert (long, Direction.TO_SERVER) not in rules._block_cache
    # One flow's inspector, whose requests often repeat the last block (the
    # same object, as the parser hands a repeated block over), sometimes an
    # equal copy, another block or the other direction: the last block's
    # hits are reused for the same object and direction only.
    fi, headers, d, reused = rules.flow(frozenset({"waf"})), blocks[0], Direction.TO_SERVER, 0
    for i in range(1500):
        r = rnd.random()
        if r < 0.3:
            headers = rnd.choice(blocks)
        elif r < 0.4:
            headers = tuple(list(headers))
        elif r < 0.5:
            d = Direction(1 - d)
        reused += fi._last_block[0] is headers and fi._last_block[1] == d
        ev = HttpRequest(d, "GET", "/p?x=1", "HTTP/1.1", "h", None, None, headers, None, False, (), 0)
        assert fi._waf_request(ev) == rules.flow(frozenset({"waf"}))._header_hits(headers, d), (headers, d)
    assert reused > 500


def test_plain_query_values_around_the_parameter_bound():
    """The plain path's values (one regex pass while the query has fewer
    than MAX_ARGS separators) are the general path's, whatever the parts:
    no "=", several, empty names or values, empty parts, at and around
    the bound."""
    rnd = random.Random(1404)
    parts = ["a=1", "a", "=v", "b=", "", "c==d", "x=y=z", "k=%d", "=", "n=2&"]
    for _ in range(3000):
        n = rnd.choice((1, 2, 5, normalize.MAX_ARGS - 1, normalize.MAX_ARGS, normalize.MAX_ARGS + 1,
                        normalize.MAX_ARGS + 5))
        query = "&".join(rnd.choice(parts).replace("%d", str(i)) for i in range(n))
        target = "/p?" + query
        assert normalize.uri_and_args(target) == normalize._uri_and_args(target), target


def test_request_host_memo_gives_the_domain_hits_of_each_request():
    """FlowInspector._request reuses the last request's domain hits when the
    host and direction repeat: over one flow's requests naming the same host
    mostly, now and then another one, a blocked one, a port, or the other
    direction, the hits are a fresh inspector's for each request."""
    from protocols.api import Direction
    from protocols.http import HttpRequest
    from slowpath.rulesfile import load_rules_text
    rules = load_rules_text(ENGINE_RULES, "rules.yaml")
    rnd = random.Random(1406)
    fi, host, d, blocked = rules.flow(frozenset({"dpi"})), "shop.example", Direction.TO_SERVER, 0
    for i in range(2000):
        r = rnd.random()
        if r < 0.2:
            host = rnd.choice(("shop.example", "evil.example", "EVIL.example:8080", "a.evil.example", None, ""))
        elif r < 0.25:
            d = Direction(1 - d)
        ev = HttpRequest(d, "GET", "/p", "HTTP/1.1", host, None, None, (), None, False, (), 0)
        got = fi.feed(ev)
        assert got == rules.flow(frozenset({"dpi"})).feed(ev), (host, d)
        blocked += bool(got)
    assert 200 < blocked < 1800


def test_flow_init_sets_every_field_to_its_declared_default():
    """Flow's own __init__ (no default_factory calls) gives every field the
    value its declaration says, the containers new for each flow (none
    shared between two), the arguments where given."""
    import dataclasses

    from slowpath.engine import Flow
    args = dict(key=b"k", info="info", transport="tcp", analyzer="an", reasm=None, inspector="insp", hold=True,
                first_ts_ns=5, rule_id=3, last_seen=1.5)
    a, b = Flow(**args), Flow(*args.values(), identify_only=True, l7="allow")
    for f in dataclasses.fields(Flow):
        if f.name in args:
            assert getattr(a, f.name) == getattr(b, f.name) == args[f.name], f.name
        elif f.name in ("identify_only", "l7"):
            assert (getattr(a, f.name), getattr(b, f.name)) == (f.default, {"identify_only": True, "l7": "allow"}[f.name])
        elif f.default_factory is not dataclasses.MISSING:
            want = f.default_factory()
            got = getattr(a, f.name)
            assert type(got) is type(want) and got == want, f.name
            assert getattr(got, "maxlen", None) == getattr(want, "maxlen", None), f.name
            assert got is not getattr(b, f.name), f.name       # each flow its own
        else:
            assert getattr(a, f.name) == f.default, f.name


def kinds_tested(fn) -> tuple[set, set]:
    """The event kinds function ``fn`` compares ``kind`` with (``kind ==
    "x"``, ``kind in ("x", "y")``) and the prefixes it tests with
    ``kind.startswith(...)``, read from its source."""
    import ast
    import inspect
    import textwrap
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    kinds, prefixes = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "kind":
            for c in node.comparators:
                for v in (c.elts if isinstance(c, ast.Tuple) else [c]):
                    if isinstance(v, ast.Constant):
                        kinds.add(v.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "startswith"
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "kind"):
            prefixes.update(a.value for a in node.args if isinstance(a, ast.Constant))
    return kinds, prefixes


def test_log_kinds_are_the_kinds_log_reads():
    """engine._LOG_KINDS / _LOG_PREFIXES (the events _inspect hands to
    Engine._log) are exactly the kinds _log's branches test for, read from
    its source: a branch added for another kind without it would never run."""
    from slowpath import engine
    kinds, prefixes = kinds_tested(engine.Engine._log)
    assert kinds == engine._LOG_KINDS
    assert prefixes == set(engine._LOG_PREFIXES)


def test_events_log_does_nothing_with_are_not_handed_to_it(monkeypatch):
    """An HTTP flow's body events (and any kind _log has no branch for) do
    not reach Engine._log; its requests and responses do, and the EVE, the
    verdicts and the counters are as they were (the seeded flows of
    test_engine_record_runs... with bodies)."""
    from slowpath import engine
    seen = []
    real = engine.Engine._log
    monkeypatch.setattr(engine.Engine, "_log", lambda self, flow, info, ev: (seen.append(ev.kind),
                                                                             real(self, flow, info, ev))[1])
    rnd = random.Random(1404)
    recs = [r for f in range(6) for r in _http_flow_records(rnd, bytes([f]) * 40)]
    before = _run_engine(recs, True)
    assert seen and set(seen) <= engine._LOG_KINDS and "http_response" in seen
    # Every kind handed to _log again, as before: the same records.
    class Every:
        def __contains__(self, kind):
            return True
    monkeypatch.setattr(engine, "_LOGGED", {})
    monkeypatch.setattr(engine, "_LOG_KINDS", Every())
    seen.clear()
    assert _run_engine(recs, True) == before
    assert "http_body" in seen
