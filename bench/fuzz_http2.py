"""Fuzz the HTTP/2 parser through the plugin API (issue 16 item 5).

The parser is the one the appliance uses: ``registry.by_name()['http2']
.parser_factory('tcp')``, a fresh one per input. Inputs are:

- valid conversations written by python-hyper's ``h2`` (a real client and
  server connected in memory): preface, SETTINGS, HEADERS (+CONTINUATION
  for large header lists), DATA with and without padding, trailers, gRPC
  calls (length-prefixed messages, grpc-status trailers, grpc-encoding),
  gzip-coded bodies, PING, PRIORITY, WINDOW_UPDATE, RST_STREAM, GOAWAY,
  server push; some start mid-connection (no preface);
- hand-built hostile ones (hyperframe + hpack): HPACK bombs (one large
  dynamic-table entry referenced thousands of times), dynamic table size
  updates (huge, repeated, late), huge header lists, CONTINUATION floods,
  thousands of streams, oversized declared frame lengths, bad padding,
  gRPC length prefixes of 4 GiB;

each mutated (bit flips, byte sets, truncation, insertion, deletion,
duplication, splicing, frame-field edits: length/type/flags/stream id) and
fed in random splits, the two directions interleaved, with an occasional gap
and the connection's end.

What must hold: no exception (bad input is a Malformed or an anomaly event,
never a raise); no hang (each call's CPU time is measured; an input using
more than MAX_INPUT_SECONDS of CPU is interrupted and counted: CPU time, not
wall time, so that a busy shared machine descheduling the run is not taken
for a slow parser); bounded memory (tracemalloc's
peak while the parser reads each hostile input and a sample of the others;
RSS growth over the whole run). Prints counts, rates and the slowest call;
exits 1 on any violation. Input i of a run is reproducible:
``--seed S --only i`` replays it and prints the exception.

    .venv/bin/python bench/fuzz_http2.py                    # 1,000,000 inputs
    .venv/bin/python bench/fuzz_http2.py --inputs 5000 --seed 7
    .venv/bin/python bench/fuzz_http2.py --jobs 2          # the million in two processes
"""
from __future__ import annotations

import gzip
import random
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.exceptions
import h2.settings
import hpack
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame,
                              RstStreamFrame, SettingsFrame)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fuzzrun  # noqa: E402
from protocols import registry  # noqa: E402
from protocols.api import Direction  # noqa: E402

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# CPU seconds one input's feeding may take before it counts as a hang (and
# is interrupted): the largest hostile input is read in well under a second.
MAX_INPUT_SECONDS = 10.0
# The most CPU one receive_* call may take before it counts as a violation:
# the parser's per-call work is bounded by its buffers and header limits.
MAX_CALL_SECONDS = 2.0
# tracemalloc peak the parser may reach while reading one input (its
# buffers: a 64 KiB header block and list, 64 KiB HPACK table, 1,024
# streams, frame buffers per side), with room for event objects.
MAX_PEAK_MB = 24.0
# RSS the whole run may add (interpreter arenas, caches): a leak of a
# parser per input would pass this within a few thousand inputs.
MAX_RSS_GROWTH_MB = 256
# Seeds are built once per run (h2 is slow to drive); inputs mutate them.
VALID_SEEDS = 240
# Every Nth input is read under tracemalloc (it slows the reading ~3x); not
# a multiple of HOSTILE_EVERY, so ordinary inputs are sampled too.
TRACE_EVERY = 499
# Every Nth input is a hostile one (they are large: a thousand streams, a
# flood of CONTINUATION; each is read under tracemalloc).
HOSTILE_EVERY = 250
# The inputs between two progress lines (h2's inputs are slow to build).
PROGRESS_EVERY = 50_000
GRPC_SERVICES = ("lab.Shop/GetItem", "helloworld.Greeter/SayHello", "grpc.health.v1.Health/Check")


# --- valid conversations, written by h2 ---------------------------------------------

class _Pair:
    """An h2 client and server joined in memory; every byte either sends is
    recorded in order as (direction, bytes)."""

    def __init__(self, rng: random.Random, push: bool) -> None:
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.out: list[tuple[Direction, bytes]] = []
        self.c.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: int(push),
            h2.settings.SettingCodes.HEADER_TABLE_SIZE: rng.choice((4096, 0, 256, 65536)),
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        self.c.initiate_connection()
        self.flush()
        self.s.initiate_connection()
        self.flush()

    def flush(self) -> None:
        for _ in range(8):      # until neither has anything to say
            moved = False
            for src, dst, d in ((self.c, self.s, C), (self.s, self.c, S)):
                data = src.data_to_send()
                if data:
                    moved = True
                    self.out.append((d, data))
                    dst.receive_data(data)
            if not moved:
                return


def _grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", int(compressed), len(payload)) + payload


def _body(rng: random.Random, n: int) -> bytes:
    return bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 {}\":,=&") for _ in range(n))


def _stream(p: _Pair, rng: random.Random, sid: int) -> None:
    # big-headers (HEADERS + CONTINUATION) is rare: its 17-30 KB cookie would
    # dominate the run's bytes
    kind = rng.choice(("get", "get", "post", "grpc", "grpc-stream", "gzip", "reset", "trailers") * 4
                      + ("big-headers",))
    auth = rng.choice(("www.example.com", "api.test:8080", "10.0.0.1"))
    if kind.startswith("grpc"):
        svc = rng.choice(GRPC_SERVICES)
        enc = rng.choice((None, "gzip", "identity"))
        hdrs = [(":method", "POST"), (":scheme", "http"), (":path", "/" + svc), (":authority", auth),
                ("content-type", rng.choice(("application/grpc", "application/grpc+proto"))), ("te", "trailers"),
                ("grpc-timeout", "1S")] + ([("grpc-encoding", enc)] if enc else [])
        p.c.send_headers(sid, hdrs)
        msgs = [_grpc_message(gzip.compress(_body(rng, 40)) if enc == "gzip" else _body(rng, rng.randrange(60)),
                              enc == "gzip") for _ in range(rng.randrange(1, 4 if kind == "grpc-stream" else 2))]
        blob = b"".join(msgs)
        cut = rng.randrange(len(blob) + 1)     # a message split across DATA frames
        p.c.send_data(sid, blob[:cut])
        p.c.send_data(sid, blob[cut:], end_stream=True)
        p.flush()
        p.s.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
        p.s.send_data(sid, _grpc_message(_body(rng, rng.randrange(80))))
        p.s.send_headers(sid, [("grpc-status", str(rng.choice((0, 0, 5, 12)))), ("grpc-message", "fuzz%20me")],
                         end_stream=True)
        p.flush()
        return
    method = "POST" if kind in ("post", "trailers") else "GET"
    path = rng.choice(("/", "/index.html?q=shoes", "/api/v1/items/42", "/a%20b/../c?id=1%27%20OR%201=1--"))
    hdrs = [(":method", method), (":scheme", "http"), (":path", path), (":authority", auth),
            ("user-agent", "fuzz/1"), ("accept-encoding", "gzip, br")]
    if kind == "big-headers":
        # over one frame: h2 writes HEADERS + CONTINUATION
        hdrs += [("cookie", "c=" + "x" * rng.randrange(17000, 30000))]
        hdrs += [(f"x-h{i}", _body(rng, 20).decode()) for i in range(rng.randrange(10, 60))]
    end = method == "GET"
    p.c.send_headers(sid, hdrs, end_stream=end)
    if not end:
        body = _body(rng, rng.randrange(1, 600))
        p.c.send_data(sid, body, pad_length=rng.choice((None, 0, 7, 200)), end_stream=kind != "trailers")
        if kind == "trailers":
            p.c.send_headers(sid, [("x-checksum", "abc")], end_stream=True)
    p.flush()
    if kind == "reset":
        p.s.reset_stream(sid, rng.choice((0, 1, 2, 7, 8)))
        p.flush()
        return
    body = _body(rng, rng.randrange(0, 800))
    rh = [(":status", rng.choice(("200", "404", "302"))), ("server", "fuzz")]
    if kind == "gzip":
        body = gzip.compress(body)
        rh.append(("content-encoding", "gzip"))
    p.s.send_headers(sid, rh + [("content-length", str(len(body)))])
    if body:
        p.s.send_data(sid, body, pad_length=rng.choice((None, None, 3, 255)), end_stream=True)
    else:
        p.s.end_stream(sid)
    p.flush()


def valid_conversation(rng: random.Random) -> list[tuple[Direction, bytes]]:
    push = rng.random() < 0.2
    p = _Pair(rng, push)
    sid = 1
    for _ in range(rng.choice((1, 1, 2, 3))):
        try:
            _stream(p, rng, sid)
            if push and rng.random() < 0.5:
                p.s.push_stream(sid, sid + 1, [(":method", "GET"), (":scheme", "http"), (":path", "/pushed.css"),
                                               (":authority", "www.example.com")])
                p.flush()
            if rng.random() < 0.3:
                p.c.ping(rng.randbytes(8))
                p.c.prioritize(sid, weight=rng.randrange(1, 257))
                p.c.increment_flow_control_window(rng.randrange(1, 1 << 20))
                p.flush()
        except (h2.exceptions.ProtocolError, h2.exceptions.FlowControlError, KeyError):
            pass    # h2 refusing one of its own moves: keep what was written
        sid += 2
    if rng.random() < 0.5:
        p.s.close_connection(rng.choice((0, 0, 1, 11)), additional_data=rng.choice((None, b"bye")))
        p.flush()
    out = p.out
    if rng.random() < 0.15:
        # picked up mid-connection: the first client and server writes lost
        out = out[2:] if len(out) > 2 else out
    return out


# --- hostile conversations, built frame by frame -----------------------------------

def _frames(*frames) -> bytes:
    return b"".join(f.serialize() for f in frames)


def _hdrs(sid: int, block: bytes, end_headers: bool = True, end_stream: bool = True) -> HeadersFrame:
    f = HeadersFrame(sid, block)
    f.flags.add("END_HEADERS") if end_headers else None
    f.flags.add("END_STREAM") if end_stream else None
    return f


def _req_block(enc: hpack.Encoder, extra=()) -> bytes:
    return enc.encode([(":method", "GET"), (":scheme", "http"), (":path", "/bomb"), (":authority", "fuzz"),
                       *extra])


def _start() -> bytes:
    return PREFACE + _frames(SettingsFrame(0, {1: 65536, 3: 1000, 6: 1 << 20}))


def hostile(rng: random.Random) -> list[tuple[Direction, bytes]]:
    kind = rng.choice(("hpack-bomb", "table-size", "huge-list", "continuation-flood", "many-streams",
                       "frame-length", "padding", "grpc-4g", "settings-flood", "unknown-frames"))
    enc = hpack.Encoder()
    if kind == "hpack-bomb":
        # one large entry inserted into the dynamic table, then referenced
        # (one byte each) until the block decodes to ~100x the list cap
        value = "v" * rng.choice((1000, 4000, 16000))
        first = _req_block(enc, [("x-bomb", value)])
        refs = bytes([0x80 | 62]) * rng.choice((2000, 8000, 16000))
        blocks = [_hdrs(1, first), _hdrs(3, _req_block(hpack.Encoder()) + refs)]
        return [(C, _start() + _frames(*blocks))]
    if kind == "table-size":
        # size updates: huge (over any SETTINGS), many in a row, and late in the block
        huge = b"\x3f" + hpack.hpack.encode_integer(rng.choice((1 << 20, 0x7FFFFFFF, 4096)), 5)[1:]
        block = huge * rng.randrange(1, 40) + _req_block(enc)
        if rng.random() < 0.5:
            block += b"\x20"    # a size update after a field: forbidden
        return [(C, _start() + _frames(_hdrs(1, block)))]
    if kind == "huge-list":
        extra = [(f"x-{i:05d}", "y" * rng.randrange(1, 100)) for i in range(rng.randrange(500, 2500))]
        block = _req_block(enc, extra)
        chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)] or [b""]
        frames = [_hdrs(1, chunks[0], end_headers=len(chunks) == 1)]
        for j, ch in enumerate(chunks[1:], 1):
            cf = ContinuationFrame(1, ch)
            if j == len(chunks) - 1:
                cf.flags.add("END_HEADERS")
            frames.append(cf)
        return [(C, _start() + _frames(*frames))]
    if kind == "continuation-flood":
        n = rng.randrange(20, 150)
        pieces = [_hdrs(1, _req_block(enc), end_headers=False)]
        pieces += [ContinuationFrame(1, rng.randbytes(rng.choice((16, 1024, 16384)))) for _ in range(n)]
        return [(C, _start() + _frames(*pieces))]
    if kind == "many-streams":
        n = rng.randrange(1000, 1300)     # around MAX_STREAMS (1,024)
        frames = [_hdrs(2 * i + 1, _req_block(enc), end_stream=rng.random() < 0.1) for i in range(n)]
        out = [(C, _start() + _frames(*frames))]
        if rng.random() < 0.5:
            out.append((S, _frames(SettingsFrame(0, {}), *(RstStreamFrame(2 * i + 1) for i in range(0, n, 3)))))
        return out
    if kind == "frame-length":
        hdr = struct.pack(">I", rng.choice((0xFFFFFF, 16385, 1 << 20)))[1:] + bytes([rng.randrange(10), 0]) \
            + struct.pack(">I", 1)
        return [(C, _start() + hdr + rng.randbytes(rng.randrange(0, 70000)))]
    if kind == "padding":
        # PADDED with a pad length over the payload, on DATA and HEADERS
        body = bytes([rng.randrange(256)]) + rng.randbytes(rng.randrange(0, 10))
        data_hdr = struct.pack(">I", len(body))[1:] + bytes([0, 0x8 | 0x1]) + struct.pack(">I", 1)
        head_hdr = struct.pack(">I", len(body))[1:] + bytes([1, 0x8 | 0x4]) + struct.pack(">I", 3)
        return [(C, _start() + _frames(_hdrs(1, _req_block(enc), end_stream=False)) + data_hdr + body
                 + head_hdr + body)]
    if kind == "grpc-4g":
        block = enc.encode([(":method", "POST"), (":scheme", "http"), (":path", "/lab.Shop/GetItem"),
                            (":authority", "fuzz"), ("content-type", "application/grpc"), ("grpc-encoding", "gzip")])
        msg = struct.pack(">BI", rng.choice((0, 1, 2, 255)), rng.choice((0xFFFFFFFF, 5 << 20, 10))) + rng.randbytes(50)
        return [(C, _start() + _frames(_hdrs(1, block, end_stream=False), DataFrame(1, msg)))]
    if kind == "settings-flood":
        frames = [SettingsFrame(0, {rng.randrange(1, 10): rng.randrange(1 << 32)}) for _ in range(rng.randrange(100,
                                                                                                                 2000))]
        frames += [PingFrame(0, rng.randbytes(8)) for _ in range(100)]
        return [(C, _start() + _frames(*frames)), (S, _frames(GoAwayFrame(0, 0, 2, b"x" * 5000)))]
    # unknown frame types and zero-length frames of every type, on every stream
    out = bytearray(_start())
    for _ in range(rng.randrange(50, 500)):
        length = rng.choice((0, 0, 1, 8, 100))
        out += struct.pack(">I", length)[1:] + bytes([rng.randrange(0, 256), rng.randrange(256)]) \
            + struct.pack(">I", rng.randrange(0, 10)) + rng.randbytes(length)
    return [(C, bytes(out))]


# --- mutation and splitting ----------------------------------------------------------

def _frame_offsets(data: bytes) -> list[int]:
    i = len(PREFACE) if data.startswith(PREFACE) else 0
    out = []
    while i + 9 <= len(data) and len(out) < 10000:
        out.append(i)
        i += 9 + int.from_bytes(data[i:i + 3], "big")
    return out


def mutate(data: bytes, rng: random.Random, other: bytes) -> bytes:
    if not data:
        return rng.randbytes(rng.randrange(1, 64))
    b = bytearray(data)
    op = rng.randrange(10)
    if fuzzrun.edit_anywhere(b, op, rng, (0, 0xFF, 0x7F, 0x80, 0x3F, 0x20), True):
        pass
    elif op == 3:
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.randbytes(rng.randrange(1, 40))
    elif op == 5:
        at = rng.randrange(len(b))
        piece = b[at:at + rng.randrange(1, 200)]
        to = rng.randrange(len(b) + 1)
        b[to:to] = piece * rng.randrange(1, 4)
    elif op == 6 and other:
        # splice: this stream's head, another conversation's tail
        b = b[:rng.randrange(len(b) + 1)] + other[rng.randrange(len(other)):]
    else:
        offs = _frame_offsets(data)
        if not offs:
            b[rng.randrange(len(b))] ^= 0xFF
            return bytes(b)
        at = rng.choice(offs)
        field_ = rng.randrange(5)
        if field_ == 0:     # declared length
            b[at:at + 3] = struct.pack(">I", rng.choice((0, 1, 5, 8, 16384, 16385, 0xFFFFFF,
                                                         rng.randrange(1 << 24))))[1:]
        elif field_ == 1:   # type
            b[at + 3] = rng.randrange(12) if rng.random() < 0.8 else rng.randrange(256)
        elif field_ == 2:   # flags
            b[at + 4] = rng.choice((0, 1, 4, 5, 8, 0x20, 0x2D, 0xFF, rng.randrange(256)))
        elif field_ == 3:   # stream id (reserved bit too)
            b[at + 5:at + 9] = struct.pack(">I", rng.choice((0, 1, 2, 3, 0x7FFFFFFF, 0x80000001,
                                                             rng.randrange(1 << 32))))
        elif len(offs) > 1:  # two frames swapped
            a, c = sorted(rng.sample(offs, 2))
            la, lc = 9 + int.from_bytes(b[a:a + 3], "big"), 9 + int.from_bytes(b[c:c + 3], "big")
            fa, fc = bytes(b[a:a + la]), bytes(b[c:c + lc])
            if a + la <= c:
                b[c:c + lc] = fa
                b[a:a + la] = fc
    return bytes(b)


def schedule(conv: list[tuple[Direction, bytes]], rng: random.Random, other: bytes) -> list[tuple]:
    """The conversation as the parser gets it: each direction's bytes
    (mutated, mostly), cut at random points, the cuts of the two directions
    interleaved in their order; an occasional gap; ``eof`` at the end, mostly."""
    by_dir = {d: b"".join(x for dd, x in conv if dd == d) for d in (C, S)}
    if rng.random() < 0.92:
        for d in rng.sample((C, S), rng.choice((1, 1, 1, 2))):
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                by_dir[d] = mutate(by_dir[d], rng, other)
    pieces = {}
    for d, data in by_dir.items():
        style, room = rng.random(), max(len(data) - 1, 0)
        if style < 0.03 and len(data) < 600:
            ends = range(1, len(data))                  # a byte at a time
        elif style < 0.3:
            ends = sorted(rng.sample(range(1, len(data)), min(room, rng.randrange(2, 40))))
        else:                                           # a few large reads, as from a socket
            ends = sorted(rng.sample(range(1, len(data)), min(room, rng.randrange(0, 4))))
        bounds = [0, *ends, len(data)] if data else []
        pieces[d] = [("data", d, data[a:b]) for a, b in zip(bounds, bounds[1:])]
    out = []
    while pieces[C] or pieces[S]:
        d = C if not pieces[S] or (pieces[C] and rng.random() < 0.5) else S
        out.append(pieces[d].pop(0))
        if rng.random() < 0.005:
            out.append(("gap", d, rng.choice((1, 9, 100, 5000))))
    if rng.random() < 0.7:
        out += [("eof", d, None) for d in rng.sample((C, S), 2)]
    return out


# --- the run -------------------------------------------------------------------------

@dataclass
class Stats(fuzzrun.Stats):
    bytes: int = 0
    calls: int = 0
    anomalies: Counter = field(default_factory=Counter)

    @property
    def hostile_inputs(self) -> int:
        return self.kinds["hostile"]


def build_input(index: int, seed: int, seeds: list, hostile_every: int) -> tuple[bool, list[tuple]]:
    rng = fuzzrun.input_rng(seed, index)
    is_hostile = hostile_every > 0 and index % hostile_every == 0
    conv = hostile(rng) if is_hostile else rng.choice(seeds)
    other = b"".join(x for _, x in rng.choice(seeds))
    return is_hostile, schedule(conv, rng, other)


class Http2Target(fuzzrun.Target):
    name = "fuzz_http2"
    stats = Stats
    clock = "cpu"
    max_input_seconds = MAX_INPUT_SECONDS
    max_call_seconds = MAX_CALL_SECONDS
    max_peak_mb = MAX_PEAK_MB
    max_rss_growth_mb = MAX_RSS_GROWTH_MB
    trace_every = TRACE_EVERY
    trace_hostile = True
    progress_every = PROGRESS_EVERY

    def __init__(self, hostile_every: int = HOSTILE_EVERY) -> None:
        super().__init__()
        self.hostile_every = hostile_every

    def add_arguments(self, ap) -> None:
        ap.add_argument("--hostile-every", type=int, default=HOSTILE_EVERY,
                        help="every Nth input is a hostile one (0: none)")

    def configure(self, args) -> None:
        self.hostile_every = args.hostile_every

    def setup(self, seed: int):
        plugins = registry.by_name()
        if "http2" not in plugins or plugins["http2"].parser_factory is None:
            raise SystemExit("fuzz_http2: no 'http2' protocol with a parser in protocols/registry")
        seed_rng = random.Random(seed)
        return plugins["http2"].parser_factory, [valid_conversation(seed_rng) for _ in range(VALID_SEEDS)]

    def build(self, ctx, index: int, seed: int):
        is_hostile, plan = build_input(index, seed, ctx[1], self.hostile_every)
        return ("hostile" if is_hostile else "valid"), plan

    def feed(self, ctx, plan: list[tuple], st: Stats, index: int, verbose: bool = False) -> None:
        parser = ctx[0]("tcp")
        for what, d, x in plan:
            t0 = time.thread_time()
            if what == "data":
                events = parser.receive_data(x, d)
                st.bytes += len(x)
            elif what == "gap":
                events = parser.receive_gap(d, x)
            else:
                events = parser.receive_eof(d)
            st.call(time.thread_time() - t0, index)
            st.calls += 1
            st.count(events, index)
            for e in events:
                if e.kind == "http_anomaly":
                    st.anomalies[str(e.name)] += 1

    def report(self, st: Stats, seed: int) -> str:
        lines = [
            f"fuzz_http2: seed {seed}: {st.inputs:,} inputs ({st.hostile_inputs:,} hostile), {st.calls:,} calls, "
            f"{st.bytes / 2**20:,.1f} MiB in {st.seconds:.1f} s: {st.inputs / max(st.seconds, 1e-9):,.0f} inputs/s, "
            f"{st.bytes / 2**20 / max(st.seconds, 1e-9):,.1f} MiB/s",
            f"  exceptions: {sum(st.exceptions.values())}  hangs (> {MAX_INPUT_SECONDS:.0f} CPU s): {len(st.hangs)}  "
            f"malformed events: {st.malformed:,}",
            f"  slowest call: {st.slowest_call[0] * 1000:.1f} ms CPU (input {st.slowest_call[1]}); tracemalloc peak "
            f"{st.peak_mb:.2f} MB over {st.traced_inputs:,} traced inputs (input {st.peak_input}); "
            f"RSS growth {st.rss_growth_mb:.0f} MB",
            "  events: " + ", ".join(f"{k} {v:,}" for k, v in st.events.most_common()),
            "  anomalies: " + ", ".join(f"{k} {v:,}" for k, v in st.anomalies.most_common()),
        ]
        lines += [f"  exception {k}: {v}" for k, v in st.exceptions.most_common()]
        lines += [f"  e.g. {x}" for x in st.examples]
        lines += [f"  hang: input {i}" for i in st.hangs[:fuzzrun.MAX_EXAMPLES]]
        lines += [f"  VIOLATION: {v}" for v in st.violations]
        lines.append(fuzzrun.verdict(st))
        return "\n".join(lines)


def run(inputs: int, seed: int, hostile_every: int = HOSTILE_EVERY, trace_every: int = TRACE_EVERY,
        progress: bool = False, only: int | None = None, jobs: int = 1) -> Stats:
    """Inputs 0..inputs-1 of ``seed`` (or input ``only``), in ``jobs``
    processes each taking every jobs-th input; their stats merged."""
    return fuzzrun.run(Http2Target(hostile_every), inputs, seed, only=only, trace_every=trace_every, jobs=jobs,
                       progress=progress)


def main(argv=None) -> int:
    return fuzzrun.main(Http2Target(), __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
