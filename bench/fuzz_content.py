"""Fuzz the Content-Encoding decoder and the HTTP/1 parser's coded bodies.

Inputs are mutated valid streams of every coding (gzip, concatenated gzip
members, zlib and raw deflate, brotli, gzip under brotli, small bombs) and
random bytes, under a Content-Encoding header that is mostly the right one
and sometimes another, stacked, oddly cased or unknown; each is fed in
random splits through protocols/content_coding.py's ContentDecoder and,
every ``--http-every``-th one, inside an HTTP/1 response (Content-Length or
chunked) through protocols/http.py's HttpParser.

What must hold: no exception (a bad body is the decoder's ``error`` and the
parser's HttpAnomalyEvent, never a raise); decoded bytes returned ==
``decoded_bytes`` <= the cap; no call returns more than the cap; memory
bounded (RSS growth over the run, and tracemalloc's peak over a sample of
bombs). Prints counts and time; exits 1 on any violation.

    .venv/bin/python bench/fuzz_content.py                 # 1,000,000 inputs
    .venv/bin/python bench/fuzz_content.py --inputs 5000 --seed 7
"""
from __future__ import annotations

import gzip
import random
import sys
import time
import tracemalloc
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import brotli

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fuzzrun  # noqa: E402
from protocols.api import Direction  # noqa: E402
from protocols.content_coding import MAX_DECODED_BYTES, ContentDecoder  # noqa: E402
from protocols.http import HttpParser  # noqa: E402

# RSS the whole run may add (the interpreter's arenas, caches): a leak of
# one decoded body per input would pass this within a few thousand inputs.
MAX_RSS_GROWTH_MB = 256
# The longest one feed/receive_data call may take before it counts as a
# hang: a step decodes at most the cap (4 MiB, ~10 ms of zlib); 2 s leaves
# room for a busy shared machine.
MAX_CALL_SECONDS = 2.0
# The most one input (all its calls) may take before it is interrupted and
# counted as a hang: a few calls, each well under MAX_CALL_SECONDS.
MAX_INPUT_SECONDS = 10.0
# Bodies are small so that a million inputs take minutes, not hours.
MAX_BODY = 4096
CODINGS = ("gzip", "deflate", "raw", "br", "gzip-members", "gzip,br")
ODD_HEADERS = ("GZIP", "x-gzip", "Deflate", "BR", "identity", "gzip, identity", "compress", "gzip,gzip",
               "br, gzip", "gzip, gzip, gzip, gzip", "", "deflate, br", "foo, gzip", "gzip, foo")
REQ = b"GET / HTTP/1.1\r\nHost: fuzz\r\n\r\n"


def _raw(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def _body(rng: random.Random) -> bytes:
    n = rng.randrange(0, MAX_BODY)
    kind = rng.randrange(3)
    if kind == 0:
        return bytes(rng.randrange(32, 127) for _ in range(n))
    if kind == 1:
        return (b"card=4111 1111 1111 1111 id=%d " % rng.randrange(10**6)) * (n // 30 + 1)
    return rng.randbytes(n)


def encode(coding: str, data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """(Content-Encoding value, encoded bytes)."""
    if coding == "gzip":
        return "gzip", gzip.compress(data, rng.choice((1, 6, 9)))
    if coding == "deflate":
        return "deflate", zlib.compress(data)
    if coding == "raw":
        return "deflate", _raw(data)
    if coding == "br":
        return "br", brotli.compress(data, quality=rng.choice((0, 5, 11)) if len(data) < 1024 else 1)
    if coding == "gzip-members":
        cut = rng.randrange(len(data) + 1)
        return "gzip", gzip.compress(data[:cut]) + gzip.compress(data[cut:])
    return "gzip, br", brotli.compress(gzip.compress(data), quality=1)


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((0, 1, 1, 2, 3, 8))):
        op = rng.randrange(6)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2 and b:
            del b[rng.randrange(len(b)):]                     # truncate
        elif op == 3:
            at = rng.randrange(len(b) + 1)
            b[at:at] = rng.randbytes(rng.randrange(1, 16))
        elif op == 4 and b:
            a = rng.randrange(len(b))
            b[a:a] = b[a:a + rng.randrange(1, 64)]            # repeat a piece
        elif op == 5 and len(b) > 2:
            a = rng.randrange(len(b))
            del b[a:a + rng.randrange(1, 16)]
    return bytes(b)


def splits(n: int, rng: random.Random) -> list[int]:
    k = rng.choice((0, 1, 2, 3, 5, 8))
    return sorted(rng.randrange(n + 1) for _ in range(k)) + [n]


@dataclass
class Stats(fuzzrun.Stats):
    http_inputs: int = 0
    errors: Counter = field(default_factory=Counter)      # decoder error kinds (expected)
    anomalies: Counter = field(default_factory=Counter)   # parser anomaly names (expected)
    decoded: int = 0
    bomb_peak_mb: float = 0.0


def _decode(header: str, data: bytes, cuts: list[int], st: Stats) -> None:
    d = ContentDecoder(header)
    got = 0
    prev = 0
    for c in cuts:
        t = time.perf_counter()
        out = d.feed(data[prev:c])
        st.call(time.perf_counter() - t, -1)
        if len(out) > MAX_DECODED_BYTES:
            st.violations.append(f"one feed returned {len(out)} bytes")
        got += len(out)
        prev = c
    got += len(d.finish())
    st.decoded += got
    if d.error is not None:
        st.errors[str(d.error)] += 1
    if got != d.decoded_bytes or d.decoded_bytes > MAX_DECODED_BYTES:
        st.violations.append(f"{header!r}: returned {got}, decoded_bytes {d.decoded_bytes}")


def _http(header: str, data: bytes, cuts: list[int], rng: random.Random, st: Stats) -> None:
    if rng.random() < 0.5:
        body = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 300]), data[i:i + 300])
                        for i in range(0, len(data), 300)) + b"0\r\n\r\n"
        framing = b"Transfer-Encoding: chunked"
    else:
        body, framing = data, b"Content-Length: %d" % len(data)
    stream = (b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\n%s\r\n\r\n" % (header.encode(), framing)) + body
    stream += stream if rng.random() < 0.2 else b""           # keep-alive: a second one
    p = HttpParser()
    p.receive_data(REQ * 2, Direction.TO_SERVER)
    scale = len(stream) / max(1, len(data))
    prev = 0
    for c in [min(len(stream), int(c * scale)) for c in cuts[:-1]] + [len(stream)]:
        t = time.perf_counter()
        events = p.receive_data(stream[prev:c], Direction.TO_CLIENT)
        st.call(time.perf_counter() - t, -1)
        prev = c
        for ev in events:
            if ev.kind == "http_anomaly":
                st.anomalies[str(ev.name)] += 1
            elif ev.kind == "http_message_end" and ev.decoded_size is not None \
                    and ev.decoded_size > MAX_DECODED_BYTES:
                st.violations.append(f"HTTP decoded_size {ev.decoded_size}")
    p.receive_eof(Direction.TO_CLIENT)


def bomb_peak(rng: random.Random) -> float:
    """tracemalloc's peak (MiB) over decoding a few bombs (twice the cap
    each, decoded) in small pieces."""
    zeros = b"\0" * (2 * MAX_DECODED_BYTES)
    bombs = [("gzip", gzip.compress(zeros, 1)), ("br", brotli.compress(zeros, quality=1)),
             ("gzip, gzip", gzip.compress(gzip.compress(zeros, 1))),
             ("gzip, br", brotli.compress(gzip.compress(zeros, 1), quality=1))]
    tracemalloc.start()
    try:
        for header, enc in bombs:
            d = ContentDecoder(header)
            step = rng.choice((100, 1000, 65536))
            for i in range(0, len(enc), step):
                d.feed(enc[i:i + step])
            d.finish()
            if d.error is None:
                raise AssertionError(f"bomb {header!r} decoded whole ({d.decoded_bytes} bytes)")
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


class ContentTarget(fuzzrun.Target):
    """Inputs from one generator over the run (a pool of valid streams
    refreshed as it goes, so mutation is cheap): not replayable one by one."""
    name = "fuzz_content"
    stats = Stats
    indexed = False
    max_input_seconds = MAX_INPUT_SECONDS
    max_call_seconds = MAX_CALL_SECONDS
    max_rss_growth_mb = MAX_RSS_GROWTH_MB
    trace_every = 0

    def __init__(self, http_every: int = 10) -> None:
        super().__init__()
        self.http_every = http_every
        self.bomb_peak_mb = 0.0

    def add_arguments(self, ap) -> None:
        ap.add_argument("--http-every", type=int, default=10, help="every Nth input also through HttpParser (0: none)")

    def configure(self, args) -> None:
        self.http_every = args.http_every

    def setup(self, seed: int):
        rng = random.Random(seed)
        self.bomb_peak_mb = bomb_peak(rng)
        return rng

    def inputs(self, rng, indices, seed: int):
        pool: list[tuple[str, bytes]] = []
        for i in indices:
            if i % 64 == 0 or not pool:
                if len(pool) >= 256:
                    pool.pop(rng.randrange(len(pool)))
                pool.append(encode(rng.choice(CODINGS), _body(rng), rng))
            r = rng.random()
            if r < 0.1:
                kind, header, data = "random", rng.choice(CODINGS[:5]), rng.randbytes(rng.randrange(0, 512))
                header = "deflate" if header == "raw" else header.replace("-members", "")
            else:
                kind, (header, data) = "valid", rng.choice(pool)
                if r < 0.85:
                    kind, data = "mutated", mutate(data, rng)
            if rng.random() < 0.15:
                header = rng.choice(ODD_HEADERS)
            yield i, kind, (header, data, splits(len(data), rng))

    def feed(self, rng, plan, st: Stats, index: int, verbose: bool = False) -> None:
        header, data, cuts = plan
        _decode(header, data, cuts, st)
        if self.http_every and index % self.http_every == 0:
            st.http_inputs += 1
            _http(header, data, cuts, rng, st)

    def describe(self, plan) -> str:
        header, data, cuts = plan
        return f"{header!r} {data[:64].hex()} cuts {cuts}"

    def report(self, st: Stats, seed: int) -> str:
        lines = [f"inputs {st.inputs:,} (through HttpParser too: {st.http_inputs:,}) in {st.seconds:.1f} s "
                 f"({st.inputs / max(st.seconds, 1e-9):,.0f}/s); decoded {st.decoded / 2**20:,.1f} MiB",
                 f"decoder errors (expected): {dict(st.errors.most_common())}",
                 f"parser anomalies (expected): {dict(st.anomalies.most_common())}",
                 f"longest call {st.slowest_call[0] * 1000:.1f} ms; RSS growth {st.rss_growth_mb:.1f} MB; "
                 f"bombs' tracemalloc peak {st.bomb_peak_mb:.1f} MiB",
                 f"exceptions: {sum(st.exceptions.values())} {dict(st.exceptions)}; violations: {len(st.violations)}"]
        lines += [f"   {ex}" for ex in st.examples + [f"hang: input {i}" for i in st.hangs[:5]] + st.violations[:5]]
        return "\n".join(lines)


def _run(target: ContentTarget, inputs: int, seed: int, progress: bool = False) -> Stats:
    st = fuzzrun.run(target, inputs, seed, progress=progress)
    st.bomb_peak_mb = target.bomb_peak_mb
    return st


def run(inputs: int, seed: int, http_every: int = 10, progress: bool = False) -> Stats:
    return _run(ContentTarget(http_every), inputs, seed, progress)


def main(argv=None) -> int:
    target = ContentTarget()
    a = fuzzrun.arguments(target, __doc__).parse_args(argv)
    target.configure(a)
    print(f"fuzz_content: {a.inputs:,} inputs, seed {a.seed}, HTTP every {a.http_every}")
    st = _run(target, a.inputs, a.seed, progress=True)
    print(target.report(st, a.seed))
    return 0 if st.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
