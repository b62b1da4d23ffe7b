"""Fuzz the Kafka parser through the plugin API (issue 17 items 2 and 6).

The parser is the one the appliance uses: ``registry.by_name()['kafka']
.parser_factory('tcp')``, a fresh one per input. An input is a short
conversation, both directions, cut into chunks at random places, built
from:

- the corpus's Kafka flows (../shared/corpus: librdkafka, the Java console
  producer's flexible versions, kafka-python), their bytes mutated (bit
  flips, byte sets, truncation, insertion, deletion, duplication, splicing,
  frame-length and header-field edits) and re-chunked;
- crafted requests and responses of random APIs and versions, old and
  flexible, with structured bodies (topics, partitions, records, tagged
  fields) for Produce, Fetch, ListOffsets, Metadata, OffsetCommit,
  OffsetFetch, FindCoordinator and the group calls, then mutated;
- hostile ones: lengths near 2^31, frames just over the kept head,
  thousands of tiny frames, a flood of requests never answered, runaway
  varints, array and tagged-field counts near 2^32, string lengths past
  the frame;
- random bytes, some behind a plausible length prefix.

What must hold: no exception (bad input is a Malformed event, never a
raise); no hang (an input running past MAX_INPUT_SECONDS is interrupted by
SIGALRM and counted); bounded memory (each side's buffer within
MAX_BUFFERED_BYTES and the pending requests within MAX_PENDING after every
chunk, tracemalloc's peak on a sample of inputs, RSS growth over the run).
Prints counts and rates; exits 1 on any violation. Input i of a run is
reproducible: ``--seed S --only i``.

    .venv/bin/python bench/fuzz_kafka.py                     # 1,000,000 inputs
    .venv/bin/python bench/fuzz_kafka.py --inputs 5000 --seed 7
"""
from __future__ import annotations

import random
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fuzzrun  # noqa: E402
from protocols import kafka  # noqa: E402
from protocols.api import Direction  # noqa: E402

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
CORPUS_PCAPS = ("ndpi-kafka.pcapng", "deepflow-kafka-produce-v2.pcap", "deepflow-kafka-produce-v7-sw8.pcap")

# One input may take this long before it counts as a hang: an input is a few
# dozen frames of at most a few hundred KiB.
MAX_INPUT_SECONDS = 5.0
# tracemalloc peak while the parser reads one input: a frame head per side
# (64 KiB each), the pending table, the input's own bytes; generous.
MAX_PEAK_MB = 4.0
# RSS the whole run may add (interpreter arenas, caches).
MAX_RSS_GROWTH_MB = 64.0
# Every Nth input is traced with tracemalloc (it slows the run ~3x).
TRACE_EVERY = 200


# --- encoders ---------------------------------------------------------------------
def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _str(s: bytes | None, flex: bool) -> bytes:
    if s is None:
        return b"\0" if flex else b"\xff\xff"
    return (uvarint(len(s) + 1) if flex else struct.pack(">h", len(s))) + s


def _arr(items: list[bytes], flex: bool) -> bytes:
    return (uvarint(len(items) + 1) if flex else struct.pack(">i", len(items))) + b"".join(items)


def _tags(flex: bool, rng: random.Random) -> bytes:
    if not flex:
        return b""
    n = rng.choice((0, 0, 0, 1, 2))
    return uvarint(n) + b"".join(uvarint(rng.randrange(8)) + uvarint(k) + bytes(k)
                                 for k in (rng.randrange(6) for _ in range(n)))


def _topic(rng: random.Random) -> bytes:
    return rng.choice((b"orders", b"LB_MAIN_LOG_INPUT", b"t", b"quickstart-events", b"", b"x" * 249))


def _body(key: int, v: int, flex: bool, rng: random.Random) -> bytes:
    """A structured body for the APIs whose topics or group we read, random bytes otherwise."""
    t = lambda: _tags(flex, rng)   # noqa: E731
    topics = [_topic(rng) for _ in range(rng.randrange(0, 4))]
    i32 = struct.pack(">i", 0)
    if key == kafka.PRODUCE:
        recs = bytes(rng.choice((0, 10, 200, 5000)))
        recs = (uvarint(len(recs) + 1) if flex else struct.pack(">i", len(recs))) + recs
        part = i32 + recs + t()
        return ((_str(None, flex) if v >= 3 else b"") + struct.pack(">hi", rng.choice((-1, 0, 1)), 1000)
                + _arr([_str(n, flex) + _arr([part] * rng.randrange(1, 3), flex) + t() for n in topics], flex) + t())
    if key == kafka.METADATA:
        return _arr([(bytes(16) if v >= 10 else b"") + _str(n, flex) + t() for n in topics], flex) + bytes(3) + t()
    if key in (kafka.FETCH, kafka.LIST_OFFSETS):
        part = bytes(rng.randrange(4, 40)) + t()
        return bytes(rng.randrange(4, 30)) + _arr([_str(n, flex) + _arr([part], flex) + t() for n in topics], flex) + t()
    if key in (kafka.OFFSET_COMMIT, kafka.OFFSET_FETCH, kafka.FIND_COORDINATOR, *kafka._GROUP_CALLS):
        return _str(b"group-" + bytes([97 + rng.randrange(26)]), flex) + bytes(rng.randrange(0, 30)) + \
            _arr([_str(n, flex) + bytes(rng.randrange(0, 20)) for n in topics], flex) + t()
    return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))


def request(key: int, v: int, corr: int, rng: random.Random) -> bytes:
    hv = kafka.request_header_version(key, v)
    head = struct.pack(">hhi", key, v, corr)
    if hv >= 1:
        head += _str(rng.choice((b"rdkafka", b"console-producer", b"", None, b"c" * 300)), False)
    if hv >= 2:
        head += _tags(True, rng)
    body = head + _body(key, v, kafka.is_flexible(key, v), rng)
    return struct.pack(">i", len(body)) + body


def response(key: int, v: int, corr: int, rng: random.Random) -> bytes:
    body = struct.pack(">i", corr)
    if kafka.response_header_version(key, v):
        body += _tags(True, rng)
    body += _body(key, v, kafka.is_flexible(key, v), rng)
    return struct.pack(">i", len(body)) + body


# --- inputs --------------------------------------------------------------------------
def corpus_flows() -> list[list[tuple[Direction, bytes]]]:
    """The TCP streams of the corpus's Kafka captures, as (direction, bytes) lists."""
    from slowpath.reassembly import Data
    out = []
    for f in fuzzrun.corpus_flows(CORPUS_PCAPS):
        chunks = [(ev.direction, ev.data) for ev in f.events if isinstance(ev, Data)]
        if chunks:
            out.append(chunks)
    return out


def crafted(rng: random.Random) -> list[tuple[Direction, bytes]]:
    keys = [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 17, 18, 22, rng.choice(list(kafka.API_NAMES))]
    out = []
    for corr in range(rng.randrange(1, 8)):
        key = rng.choice(keys)
        v = rng.randrange(0, 14)
        out.append((C, request(key, v, corr, rng)))
        if rng.random() < 0.8:
            out.append((S, response(key, v, corr if rng.random() < 0.9 else rng.randrange(1 << 31), rng)))
    return out


def hostile(rng: random.Random) -> list[tuple[Direction, bytes]]:
    pick = rng.randrange(7)
    if pick == 0:       # lengths near 2^31, then bytes that never fill them
        return [(C, struct.pack(">I", rng.choice((0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 30))) + bytes(70000))]
    if pick == 1:       # a frame just over the kept head
        body = struct.pack(">hhi", 0, 3, 1) + _str(b"c", False) + bytes(kafka.FRAME_HEAD_BYTES + rng.randrange(1, 9))
        return [(C, struct.pack(">i", len(body)) + body)]
    if pick == 2:       # thousands of tiny frames
        return [(C, (struct.pack(">i", 10) + struct.pack(">hhih", 18, 0, 1, 0)) * 3000)]
    if pick == 3:       # a flood of requests never answered
        return [(C, b"".join(request(18, 0, i, rng) for i in range(kafka.MAX_PENDING + 100)))]
    if pick == 4:       # runaway varints in a flexible header
        body = struct.pack(">hhi", 3, 12, 1) + _str(b"c", False) + b"\xff" * 40
        return [(C, struct.pack(">i", len(body)) + body)]
    if pick == 5:       # huge counts in a flexible body
        body = struct.pack(">hhi", 0, 9, 1) + _str(b"c", False) + b"\0" + b"\0" + bytes(6) + b"\xff\xff\xff\xff\x0f" * 4
        return [(C, struct.pack(">i", len(body)) + body)]
    body = struct.pack(">hhi", 3, 1, 1) + _str(b"c", False) + struct.pack(">i", 0x7FFFFFFF) + struct.pack(">h", 32767)
    return [(C, struct.pack(">i", len(body)) + body), (S, struct.pack(">ii", 4, 1))]


def random_bytes(rng: random.Random) -> list[tuple[Direction, bytes]]:
    out = []
    for _ in range(rng.randrange(1, 5)):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
        if rng.random() < 0.5:
            blob = struct.pack(">i", len(blob)) + blob
        out.append((rng.choice((C, S)), blob))
    return out


def mutate(data: bytes, rng: random.Random, other: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(8)
        if not b:
            b += bytes(rng.randrange(1, 8))
            continue
        i = rng.randrange(len(b))
        if fuzzrun.edit_at(b, i, op, rng, other, (0, 0xFF, 0x7F, 0x80)):
            continue
        if op == 3:
            b[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 16)))
        else:           # a frame length or a header field
            at = rng.choice((0, 4, 6, 8, 12))
            if at + 4 <= len(b):
                b[at:at + 4] = struct.pack(">I", rng.choice((0, 1, 8, len(b), 0xFFFF, 0x7FFFFFFF,
                                                              rng.getrandbits(32))))
    return bytes(b)


def from_corpus(flows: list, rng: random.Random) -> list[tuple[Direction, bytes]]:
    flow = rng.choice(flows)
    plan = list(flow)
    for _ in range(rng.randrange(1, 3)):
        k = rng.randrange(len(plan))
        other = rng.choice(rng.choice(flows))[1]
        plan[k] = (plan[k][0], mutate(plan[k][1], rng, other))
    return plan


def build_input(index: int, seed: int, flows: list) -> tuple[str, list]:
    rng = fuzzrun.input_rng(seed, index)
    r = rng.random()
    if r < 0.02:
        kind, plan = "hostile", hostile(rng)
    elif flows and r < 0.45:
        kind, plan = "corpus", from_corpus(flows, rng)
    elif r < 0.9:
        plan = crafted(rng)
        if rng.random() < 0.7:
            k = rng.randrange(len(plan))
            plan[k] = (plan[k][0], mutate(plan[k][1], rng, plan[rng.randrange(len(plan))][1]))
        kind = "crafted"
    else:
        kind, plan = "random", random_bytes(rng)
    return kind, fuzzrun.rechunk(plan, rng, (1, 3, 7, 64, 1500))


# --- running -------------------------------------------------------------------------
@dataclass
class Stats(fuzzrun.Stats):
    chunks: int = 0


class KafkaTarget(fuzzrun.Target):
    name = "fuzz_kafka"
    stats = Stats
    max_input_seconds = MAX_INPUT_SECONDS
    max_peak_mb = MAX_PEAK_MB
    max_rss_growth_mb = MAX_RSS_GROWTH_MB
    trace_every = TRACE_EVERY
    protocol = "kafka"
    corpus = staticmethod(corpus_flows)
    build_input = staticmethod(build_input)

    def feed(self, ctx, plan: list, st: Stats, index: int, verbose: bool = False) -> None:
        parser = ctx[0]("tcp")
        for d, data in plan:
            st.chunks += 1
            events = parser.receive_data(data, d)
            if verbose:
                print(d.name, data[:48].hex(), events)
            st.count(events, index)
            for side in Direction:
                if parser.buffered(side) > kafka.MAX_BUFFERED_BYTES:
                    st.violations.append(f"input {index}: {side.name} holds {parser.buffered(side)} bytes")
            if len(parser._pending) > kafka.MAX_PENDING:
                st.violations.append(f"input {index}: {len(parser._pending)} pending requests")
        for side in Direction:
            st.count(parser.receive_eof(side), index)

    def report(self, st: Stats, seed: int) -> str:
        return "\n".join([
            f"fuzz_kafka: seed {seed}, {st.inputs:,} inputs ({dict(st.kinds)}), {st.chunks:,} chunks "
            f"in {st.seconds:.1f} s: {st.inputs / max(st.seconds, 1e-9):,.0f} inputs/s",
            f"  events: {dict(st.events.most_common())}",
            f"  malformed {st.malformed:,}",
            *fuzzrun.outcome_lines(st)])


def run(inputs: int, seed: int, *, flows: list | None = None, **kw) -> Stats:
    """Inputs of ``seed``'s run (fuzzrun.run's options)."""
    return fuzzrun.run(KafkaTarget(flows), inputs, seed, **kw)


def main(argv=None) -> int:
    return fuzzrun.main(KafkaTarget(), __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
