"""Fuzz the PostgreSQL parser through the plugin API (issue 17 items 4 and 6).

The parser is the one the appliance uses: ``registry.by_name()['postgresql']
.parser_factory('tcp')``, a fresh one per input. An input is a conversation:
a list of (direction, bytes) chunks, built from:

- the corpus's PostgreSQL flows (../shared/corpus: SCRAM, SSLRequest 'N' and
  MD5, simple queries) and crafted sessions (SSLRequest 'S' then TLS,
  GSSENCRequest, CancelRequest, the extended protocol, errors and notices,
  COPY), each direction's stream mutated (bit flips, byte sets, truncation,
  insertion, deletion, duplication, splicing, length-field edits), then cut
  into chunks at random points and interleaved;
- hostile ones: lengths near 2^31, a DataRow of a gigabyte fed in pieces,
  thousands of tiny messages, startup parameter floods, SSL answers before
  their request, a client flooding bytes before the answer;
- random bytes, some behind a valid startup.

Some inputs end with an EOF or a gap on a direction.

What must hold: no exception (bad input is a Malformed event, never a
raise); no hang (an input running past MAX_INPUT_SECONDS is interrupted by
SIGALRM and counted); bounded memory (each direction's buffer within the
parser's MAX_BUFFERED_BYTES after every chunk, tracemalloc's peak on a
sample of inputs, RSS growth over the run). Prints counts, rates and the
slowest input; exits 1 on any violation. Input i of a run is reproducible:
``--seed S --only i``.

    .venv/bin/python bench/fuzz_postgresql.py                    # 1,000,000 inputs
    .venv/bin/python bench/fuzz_postgresql.py --inputs 5000 --seed 7
"""
from __future__ import annotations

import random
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fuzzrun  # noqa: E402
from protocols.api import Direction  # noqa: E402
from protocols.postgresql import (CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_BUFFERED_BYTES,  # noqa: E402
                                  SSL_REQUEST_CODE)

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
CORPUS_PCAPS = ("zeek-postgresql-psql-create-insert-select-delete-drop.pcap",
                "sv-pgsql-ssl-rejected-md5-auth-simple-query.pcap")

# One input may take this long before it counts as a hang: an input is at
# most a few hundred KiB plus one skipped message fed in 1 MiB pieces.
MAX_INPUT_SECONDS = 5.0
# tracemalloc peak while the parser reads one input: its buffers
# (MAX_BUFFERED_BYTES per side), the input's chunks and events.
MAX_PEAK_MB = 4.0
# RSS the whole run may add (interpreter arenas, caches): a parser kept
# per input would pass it within a few thousand inputs.
MAX_RSS_GROWTH_MB = 64.0
# Every Nth input is traced with tracemalloc (it slows the run ~3x).
TRACE_EVERY = 200
# tracemalloc hooks every allocation: an input of 16,000 tiny messages takes
# 0.16 s plain and ~5 s traced, so a traced input gets this many times the
# time before it counts as a hang.
TRACED_TIME_FACTOR = 40


def startup(version=0x00030000, **params) -> bytes:
    body = struct.pack(">I", version) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack(">I", len(body) + 4) + body


def msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack(">I", len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


SSL = struct.pack(">II", 8, SSL_REQUEST_CODE)
GSS = struct.pack(">II", 8, GSSENC_REQUEST_CODE)
LOGIN = startup(user="alice", database="shop", application_name="psql", client_encoding="UTF8")
WELCOME = (msg(b"R", b"\0\0\0\0") + msg(b"S", cstr("server_version") + cstr("16.4"))
           + msg(b"K", struct.pack(">II", 7, 8)) + msg(b"Z", b"I"))
ROWS = (msg(b"T", b"\0\1" + cstr("a") + bytes(18)) + msg(b"D", b"\0\1\0\0\0\1x")
        + msg(b"C", cstr("SELECT 1")) + msg(b"Z", b"I"))
ERROR = msg(b"E", cstr("SERROR") + cstr("VERROR") + cstr("C42601") + cstr("Msyntax error") + b"\0")
HELLO = bytes.fromhex("16030100c8010000c40303") + bytes(32) + b"\0\0\2\x13\1\1\0\0\x99" + bytes(0x99)

# Crafted sessions: (client stream, server stream).
CRAFTED = [
    (LOGIN + msg(b"Q", cstr("select 1")) + msg(b"X", b""), WELCOME + ROWS),
    (SSL + LOGIN + msg(b"p", cstr("md5" + "0" * 32)) + msg(b"Q", cstr("bad sql")),
     b"N" + msg(b"R", b"\0\0\0\5salt") + WELCOME + ERROR + msg(b"Z", b"I")),
    (SSL + HELLO, b"S" + bytes.fromhex("160303003a020000360303") + bytes(50)),
    (GSS + SSL + LOGIN, b"NN" + WELCOME),
    (GSS + bytes(64), b"S" + bytes(64)),
    (struct.pack(">IIII", 16, CANCEL_REQUEST_CODE, 1, 2), b""),
    (LOGIN + msg(b"p", cstr("SCRAM-SHA-256") + b"\0\0\0\x08n,,n=,r=") + msg(b"p", b"c=biws")
     + msg(b"P", cstr("s1") + cstr("select $1") + b"\0\0") + msg(b"B", cstr("") + cstr("s1") + bytes(6))
     + msg(b"D", b"S" + cstr("s1")) + msg(b"E", cstr("") + bytes(4)) + msg(b"S", b""),
     msg(b"R", b"\0\0\0\x0a" + cstr("SCRAM-SHA-256") + b"\0") + msg(b"R", b"\0\0\0\x0br=x")
     + msg(b"R", b"\0\0\0\x0cv=y") + WELCOME + msg(b"1", b"") + msg(b"2", b"") + msg(b"t", b"\0\0")
     + ROWS + msg(b"N", cstr("SNOTICE") + cstr("Mhi") + b"\0")),
    (LOGIN + msg(b"Q", cstr("copy t from stdin")) + msg(b"d", b"1\t2\n" * 50) + msg(b"c", b""),
     WELCOME + msg(b"G", b"\0\0\2\0\0\0\0") + msg(b"H", b"\0\0\1\0\0") + msg(b"d", b"x" * 300)
     + msg(b"C", cstr("COPY 50"))),
]


def corpus_flows() -> list[tuple[bytes, bytes]]:
    """Each corpus PostgreSQL flow as (client stream, server stream)."""
    from slowpath.pcap import Data
    out = []
    for flow in fuzzrun.corpus_flows(CORPUS_PCAPS):
        streams = {C: bytearray(), S: bytearray()}
        for ev in flow.events:
            if isinstance(ev, Data):
                streams[ev.direction] += ev.data
        out.append((bytes(streams[C]), bytes(streams[S])))
    return out


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        op = rng.randrange(9)
        n = len(b)
        if op == 0 and n:
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            b[rng.randrange(n)] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256), ord("S"), ord("N")))
        elif op == 2 and n:
            del b[rng.randrange(n):]
        elif op == 3:
            i = rng.randrange(n + 1)
            b[i:i] = rng.randbytes(rng.randrange(1, 16)) if rng.random() < 0.5 else rng.choice(pool)[:64]
        elif op == 4 and n:
            i = rng.randrange(n)
            del b[i:i + rng.randrange(1, 32)]
        elif op == 5 and n:
            i = rng.randrange(n)
            j = min(n, i + rng.randrange(1, 64))
            b[j:j] = b[i:j]
        elif op == 6:
            other = rng.choice(pool)
            if other:
                i, j = rng.randrange(n + 1), rng.randrange(len(other))
                b = b[:i] + bytearray(other[j:j + rng.randrange(1, 256)]) + b[i:]
        elif op == 7 and n >= 5:
            # a length field: find a type byte's length and set it to an edge value
            i = rng.randrange(n - 4)
            b[i:i + 4] = struct.pack(">I", rng.choice((0, 3, 4, 5, 8, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 30,
                                                      10000, 10001, rng.randrange(1 << 32))))
        elif op == 8 and n:
            i = rng.randrange(n)
            b[i:i] = b[i:i + 1] * rng.randrange(1, 100)
    return bytes(b)


def interleave(rng: random.Random, client: bytes, server: bytes) -> list[tuple[Direction, bytes]]:
    def cuts(data: bytes) -> list[bytes]:
        if not data:
            return []
        mode = rng.randrange(4)
        if mode == 0:
            return [data]
        if mode == 1:        # byte by byte (short streams only)
            step = 1 if len(data) < 400 else 7
            return [data[i:i + step] for i in range(0, len(data), step)]
        points = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(1, 12)))) \
            if len(data) > 1 else []
        out, last = [], 0
        for p in points + [len(data)]:
            out.append(data[last:p])
            last = p
        return out
    cs, ss = cuts(client), cuts(server)
    out = []
    while cs or ss:
        pick = cs if (cs and (not ss or rng.random() < 0.5)) else ss
        out.append((C if pick is cs else S, pick.pop(0)))
    return out


def hostile(rng: random.Random) -> tuple[str, list]:
    k = rng.randrange(7)
    if k == 0:   # a huge DataRow and a huge CopyData, in pieces
        size = rng.choice((1 << 20, 50 << 20, (1 << 30) - 5))
        chunks = [(C, LOGIN), (S, WELCOME + b"D" + struct.pack(">I", size + 4))]
        left = min(size, 8 << 20)
        while left:
            n = min(left, 1 << 20)
            chunks.append((S, bytes(n)))
            left -= n
        return "huge-row", chunks
    if k == 1:   # thousands of tiny messages
        return "tiny-messages", [(C, LOGIN), (S, WELCOME + msg(b"1", b"") * rng.randrange(1000, 20000))]
    if k == 2:   # a startup parameter flood
        params = {f"p{i}": "v" * rng.randrange(0, 50) for i in range(rng.randrange(50, 400))}
        return "param-flood", [(C, startup(**params)[:10000])]
    if k == 3:   # answers before their request, repeated
        return "answer-first", [(S, b"N" * rng.randrange(1, 5)), (C, SSL), (C, LOGIN), (S, WELCOME)]
    if k == 4:   # the client floods bytes before the answer
        return "flood-before-answer", [(C, SSL)] + [(C, rng.randbytes(4096)) for _ in range(rng.randrange(1, 6))] \
            + [(S, b"N")]
    if k == 5:   # lengths near 2^31 on every message type
        t = bytes([rng.choice(b"QPBEDSHCXpdcfFRKZTIN123stAGHWVv")])
        return "edge-length", [(C, LOGIN + t + struct.pack(">I", rng.choice((0x7FFFFFFF, 1 << 30, 0x40000003))))]
    # long query heads cut at the head limit
    return "long-query", [(C, LOGIN + msg(b"Q", b"select '" + b"x" * rng.randrange(4000, 20000) + b"'\0"))]


def build_input(index: int, seed: int, flows: list) -> tuple[str, list]:
    rng = fuzzrun.input_rng(seed, index)
    pool = [c for f in flows for c in f if c]
    r = rng.random()
    if r < 0.05:
        kind, chunks = hostile(rng)
    elif r < 0.12:
        head = LOGIN if rng.random() < 0.5 else b""
        chunks = [(C, head + rng.randbytes(rng.randrange(0, 200))), (S, rng.randbytes(rng.randrange(0, 200)))]
        kind = "random"
    else:
        client, server = rng.choice(flows)
        kind = "mutated"
        if rng.random() < 0.7:
            client = mutate(rng, client, pool)
        if rng.random() < 0.7:
            server = mutate(rng, server, pool)
        chunks = interleave(rng, client, server)
    if rng.random() < 0.1:
        chunks.append((rng.choice((C, S)), "eof"))
    elif rng.random() < 0.03:
        chunks.append((rng.choice((C, S)), "gap"))
    return kind, chunks


@dataclass
class Stats(fuzzrun.Stats):
    chunks: int = 0


class PostgresqlTarget(fuzzrun.Target):
    name = "fuzz_postgresql"
    stats = Stats
    max_input_seconds = MAX_INPUT_SECONDS
    traced_time_factor = TRACED_TIME_FACTOR
    max_peak_mb = MAX_PEAK_MB
    max_rss_growth_mb = MAX_RSS_GROWTH_MB
    trace_every = TRACE_EVERY
    protocol = "postgresql"
    corpus = staticmethod(corpus_flows)
    build_input = staticmethod(build_input)

    def setup(self, seed: int):
        factory, flows = super().setup(seed)
        return factory, flows + CRAFTED

    def feed(self, ctx, chunks, st: Stats, index: int, verbose: bool = False) -> None:
        parser = ctx[0]("tcp")
        for d, b in chunks:
            if b == "eof":
                evs = parser.receive_eof(d)
            elif b == "gap":
                evs = parser.receive_gap(d, 100)
            else:
                if parser._sides[d].eof:
                    continue
                evs = parser.receive_data(b, d)
                st.chunks += 1
            st.count(evs, index)
            for side in (C, S):
                if parser.buffered(side) > MAX_BUFFERED_BYTES:
                    st.violations.append(f"input {index}: {side.name} holds {parser.buffered(side)} bytes")

    def report(self, st: Stats, seed: int) -> str:
        lines = [f"fuzz_postgresql: {st.inputs:,} inputs (seed {seed}, from #{st.start}), {st.chunks:,} chunks, "
                 f"{st.seconds:.0f} s ({st.inputs / max(st.seconds, 1e-9):,.0f} inputs/s)",
                 f"  kinds: {dict(st.kinds)}",
                 f"  events: {dict(st.events.most_common())}",
                 f"  malformed: {st.malformed:,}; exceptions: {sum(st.exceptions.values())}; hangs: {len(st.hangs)}; "
                 f"violations: {len(st.violations)}",
                 f"  slowest input {st.slowest[0] * 1000:.1f} ms (#{st.slowest[1]}), tracemalloc peak "
                 f"{st.peak_mb:.2f} MB over {st.traced_inputs} traced inputs, RSS growth {st.rss_growth_mb:.1f} MB"]
        lines += [f"  {what}" for what in st.examples]
        if st.violations:
            lines.append(f"  violations: {st.violations[:5]}")
        if st.hangs:
            lines.append(f"  hangs (inputs): {st.hangs[:10]}")
        lines.append(fuzzrun.verdict(st))
        return "\n".join(lines)


def run(inputs: int, seed: int, *, flows: list | None = None, **kw) -> Stats:
    """Inputs of ``seed``'s run (fuzzrun.run's options)."""
    return fuzzrun.run(PostgresqlTarget(flows), inputs, seed, **kw)


def main(argv=None) -> int:
    return fuzzrun.main(PostgresqlTarget(), __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
