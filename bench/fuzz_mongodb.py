"""Fuzz the MongoDB parser through the plugin API (issue 17 items 3 and 6).

The parser is the one the appliance uses: ``registry.by_name()['mongodb']
.parser_factory('tcp')``, a fresh one per input. An input is a short
conversation (client and server byte streams, each cut into random slices
and interleaved), built from:

- the corpus's MongoDB flows (../shared/corpus: OP_QUERY commands, an
  OP_MSG find and its reply) and crafted messages (OP_MSG with body and
  document-sequence sections, checksums, moreToCome; OP_QUERY / OP_REPLY;
  OP_COMPRESSED noop / zlib / snappy / zstd; the other legacy opcodes),
  mutated: bit flips, byte sets, truncation, insertion, deletion,
  duplication, splicing, header and BSON length edits;
- hostile ones: declared lengths at and past MAX_MESSAGE_BYTES, a message
  longer than the kept head (its tail counted past), zlib bombs, thousands
  of tiny BSON elements, deep nesting, unterminated names;
- random bytes, some behind a plausible header.

What must hold: no exception (bad input is a Malformed event, never a
raise), no hang (an input running past MAX_INPUT_SECONDS is interrupted
by SIGALRM and counted), bounded memory (each side's held bytes within
MAX_BUFFERED_BYTES after every slice, tracemalloc's peak on a sample of
inputs, RSS growth over the run). Prints counts and rates; exits 1 on any
violation. Input i of a run is reproducible: ``--seed S --only i``.

    .venv/bin/python bench/fuzz_mongodb.py                  # 1,000,000 inputs
    .venv/bin/python bench/fuzz_mongodb.py --inputs 5000 --seed 7
"""
from __future__ import annotations

import random
import struct
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fuzzrun  # noqa: E402
from protocols import mongodb  # noqa: E402
from protocols.api import Direction  # noqa: E402

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
CORPUS_PCAPS = ("ndpi-mongodb.pcap", "deepflow-mongo-msg.pcap")

# One input is a few messages of at most a few hundred KB: far under a second.
MAX_INPUT_SECONDS = 5.0
# tracemalloc peak while the parser reads one input: the input itself (up to
# ~1 MB for the long-message case) plus one 64 KiB head per side.
MAX_PEAK_MB = 8.0
# RSS the whole run may add: a parser kept per input would pass it quickly.
MAX_RSS_GROWTH_MB = 64.0
TRACE_EVERY = 200


# --- a small BSON and message writer (crafting only; the parser never uses it) ---
def _cstr(s: str | bytes) -> bytes:
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def bson(items) -> bytes:
    """A BSON document from (name, value) pairs: str, float, bool, int
    (int32 if it fits, else int64), None, bytes (binary), dict/list (nested)."""
    body = b""
    for name, v in (items.items() if isinstance(items, dict) else items):
        if isinstance(v, bool):
            body += b"\x08" + _cstr(name) + bytes([v])
        elif isinstance(v, float):
            body += b"\x01" + _cstr(name) + struct.pack("<d", v)
        elif isinstance(v, int):
            if -2**31 <= v < 2**31:
                body += b"\x10" + _cstr(name) + struct.pack("<i", v)
            else:
                body += b"\x12" + _cstr(name) + struct.pack("<q", v)
        elif isinstance(v, str):
            b = v.encode()
            body += b"\x02" + _cstr(name) + struct.pack("<i", len(b) + 1) + b + b"\0"
        elif v is None:
            body += b"\x0a" + _cstr(name)
        elif isinstance(v, bytes):
            body += b"\x05" + _cstr(name) + struct.pack("<i", len(v)) + b"\x00" + v
        elif isinstance(v, dict):
            body += b"\x03" + _cstr(name) + bson(v)
        elif isinstance(v, list):
            body += b"\x04" + _cstr(name) + bson([(str(i), x) for i, x in enumerate(v)])
        else:
            raise TypeError(type(v))
    return struct.pack("<i", len(body) + 5) + body + b"\0"


def message(opcode: int, body: bytes, request_id: int = 1, response_to: int = 0) -> bytes:
    return struct.pack("<iiii", 16 + len(body), request_id, response_to, opcode) + body


def op_msg(command: dict, sequences=(), *, flags: int = 0, checksum: bool = False,
           request_id: int = 1, response_to: int = 0) -> bytes:
    body = struct.pack("<I", flags | (mongodb.MSG_CHECKSUM_PRESENT if checksum else 0))
    body += b"\x00" + bson(command)
    for ident, docs in sequences:
        payload = _cstr(ident) + b"".join(bson(d) for d in docs)
        body += b"\x01" + struct.pack("<i", 4 + len(payload)) + payload
    if checksum:
        body += struct.pack("<I", zlib.crc32(body))      # any 4 bytes: the parser does not check
    return message(mongodb.OP_MSG, body, request_id, response_to)


def op_query(ns: str, query: dict, *, request_id: int = 1, flags: int = 0, skip: int = 0,
             ret: int = -1) -> bytes:
    return message(mongodb.OP_QUERY, struct.pack("<i", flags) + _cstr(ns) + struct.pack("<ii", skip, ret)
                   + bson(query), request_id)


def op_reply(docs, *, response_to: int, flags: int = 0, cursor: int = 0, request_id: int = 2) -> bytes:
    return message(mongodb.OP_REPLY, struct.pack("<iqii", flags, cursor, 0, len(docs))
                   + b"".join(bson(d) for d in docs), request_id, response_to)


def op_compressed(inner: bytes, compressor: int = 2, *, level: int = 6) -> bytes:
    """``inner`` (a whole message) wrapped in OP_COMPRESSED; zlib really
    compressed, noop as is, snappy/zstd with stand-in bytes."""
    _, req, resp, op = struct.unpack_from("<iiii", inner)
    payload = inner[16:]
    data = zlib.compress(payload, level) if compressor == 2 else payload if compressor == 0 \
        else b"\xff\x06\x00\x00sNaPpY" + payload[:20]
    return message(mongodb.OP_COMPRESSED, struct.pack("<iiB", op, len(payload), compressor) + data, req, resp)


# --- inputs ---------------------------------------------------------------------------
def corpus_conversations() -> list[list[tuple[Direction, bytes]]]:
    from slowpath.pcap import Data
    out = []
    for f in fuzzrun.corpus_flows(CORPUS_PCAPS):
        conv = [(ev.direction, ev.data) for ev in f.events if isinstance(ev, Data) and ev.data]
        if conv:
            out.append(conv)
    return out


_NAMES = ["find", "insert", "update", "delete", "aggregate", "hello", "isMaster", "ping", "getMore",
          "saslStart", "listCollections", "createIndexes", "count"]


def crafted(rng: random.Random) -> list[tuple[Direction, bytes]]:
    out = []
    for i in range(rng.randrange(1, 4)):
        rid = rng.randrange(1, 1 << 31)
        name = rng.choice(_NAMES)
        cmd = {name: rng.choice(["users", "orders", 1, 1.0, True]), "filter": {"a": rng.randrange(9)},
               "$db": rng.choice(["admin", "shop", "x" * rng.randrange(1, 300)])}
        kind = rng.randrange(6)
        if kind == 0:
            seqs = [("documents", [{"_id": j, "v": "x" * rng.randrange(50)} for j in range(rng.randrange(4))])]
            out.append((C, op_msg(cmd, seqs, checksum=rng.random() < 0.3, request_id=rid)))
            out.append((S, op_msg({"n": 1, "ok": rng.choice([1.0, 0.0]), "errmsg": "boom", "code": 11000},
                                  request_id=rid + 1, response_to=rid, checksum=rng.random() < 0.3)))
        elif kind == 1:
            out.append((C, op_query(rng.choice(["admin.$cmd", "shop.$cmd", "shop.users"]), cmd, request_id=rid)))
            out.append((S, op_reply([{"ismaster": True, "ok": 1.0}], response_to=rid)))
        elif kind == 2:
            cid = rng.choice((0, 1, 2, 3, 9))
            out.append((C, op_compressed(op_msg(cmd, request_id=rid), cid if cid < 4 else 7)))
            out.append((S, op_compressed(op_msg({"ok": 1}, request_id=rid + 1, response_to=rid), 2)))
        elif kind == 3:
            op = rng.choice((mongodb.OP_INSERT, mongodb.OP_UPDATE, mongodb.OP_DELETE, mongodb.OP_GET_MORE))
            out.append((C, message(op, struct.pack("<i", 0) + _cstr("shop.users") + struct.pack("<i", 0)
                                   + bson({"a": 1}), rid)))
        elif kind == 4:
            out.append((C, message(mongodb.OP_KILL_CURSORS, struct.pack("<iiq", 0, 1, 42), rid)))
        else:
            out.append((C, op_msg(cmd, flags=mongodb.MSG_MORE_TO_COME | mongodb.MSG_EXHAUST_ALLOWED,
                                  request_id=rid)))
    return out


def mutate(data: bytes, rng: random.Random, other: bytes = b"") -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(9)
        if not b:
            b += bytes([rng.randrange(256)])
        i = rng.randrange(len(b))
        if fuzzrun.edit_at(b, i, op, rng, other, (0, 0xFF, 0x7F, 0x80, 1, 2, 3, 4, 5, 0x10, 0x13)):
            continue
        if op == 3:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif op == 7 and len(b) >= 4:           # an int32 somewhere (a length) set to an edge
            j = rng.randrange(len(b) - 3)
            b[j:j + 4] = struct.pack("<i", rng.choice((0, 1, 4, 5, 15, 16, 17, -1, -2**31, 2**31 - 1,
                                                        mongodb.MAX_MESSAGE_BYTES,
                                                        mongodb.MAX_MESSAGE_BYTES + 1, len(b), len(b) + 1)))
        elif op == 8 and len(b) >= 16:          # the header's opcode / responseTo
            b[8 + 4 * rng.randrange(2):12 + 4 * rng.randrange(2)] = struct.pack(
                "<i", rng.choice((0, -1, 1, 2004, 2013, 2012, 2001, 2007, 2003, 2010)))
    return bytes(b)


def hostile(rng: random.Random) -> list[tuple[Direction, bytes]]:
    kind = rng.randrange(7)
    if kind == 0:       # lengths at and past the cap
        n = rng.choice((mongodb.MAX_MESSAGE_BYTES, mongodb.MAX_MESSAGE_BYTES + 1, 2**31 - 1, -5, 15))
        return [(C, struct.pack("<iiii", n, 1, 0, 2013) + bytes(rng.randrange(200)))]
    if kind == 1:       # a message much longer than the kept head, then another
        big = op_msg({"insert": "users", "$db": "shop"}, [("documents", [{"b": b"x" * 300_000}])])
        return [(C, big + op_msg({"ping": 1, "$db": "admin"}))]
    if kind == 2:       # a zlib bomb
        inner = op_msg({"find": "x", "$db": "y", "pad": "a" * 2_000_000})
        return [(C, op_compressed(inner, 2, level=9))]
    if kind == 3:       # thousands of tiny elements
        return [(C, op_msg([(str(i), None) for i in range(rng.randrange(1000, 20000))] + [("$db", "z")]))]
    if kind == 4:       # deep nesting (never entered)
        d: dict = {"x": 1}
        for _ in range(rng.randrange(10, 500)):
            d = {"d": d}
        return [(C, op_msg({"find": "c", "filter": d, "$db": "db"}))]
    if kind == 5:       # unterminated names and strings
        return [(C, message(2004, struct.pack("<i", 0) + b"a" * rng.randrange(1, 3000)))]
    return [(C, message(2013, struct.pack("<I", 0) + b"\x00" + struct.pack("<i", 2**30) + b"\x02abc"))]


def random_input(rng: random.Random) -> list[tuple[Direction, bytes]]:
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    if rng.random() < 0.5:
        data = struct.pack("<iiii", 16 + len(data), 1, 0, rng.choice((2013, 2004, 1, 2012))) + data
    return [(rng.choice((C, S)), data)]


def make_input(i: int, seed: int, corpus) -> tuple[str, list[tuple[Direction, bytes]]]:
    rng = fuzzrun.input_rng(seed, i)
    r = rng.random()
    if r < 0.35 and corpus:
        kind, conv = "corpus", list(rng.choice(corpus))
    elif r < 0.8:
        kind, conv = "crafted", crafted(rng)
    elif r < 0.9:
        return "hostile", hostile(rng)
    else:
        return "random", random_input(rng)
    if rng.random() < 0.9:
        pool = b"".join(d for _, d in conv)
        for _ in range(rng.randrange(1, 3)):
            j = rng.randrange(len(conv))
            conv[j] = (conv[j][0], mutate(conv[j][1], rng, pool))
    return kind, conv


# Sizes an input's messages are cut into (then the whole rest): byte by
# byte through a few segments' worth.
SLICES = (1, 2, 3, 7, 16, 100, 1500)


# --- the run --------------------------------------------------------------------------
class MongoTarget(fuzzrun.Target):
    name = "fuzz_mongodb"
    max_input_seconds = MAX_INPUT_SECONDS
    max_peak_mb = MAX_PEAK_MB
    max_rss_growth_mb = MAX_RSS_GROWTH_MB
    trace_every = TRACE_EVERY
    protocol = "mongodb"
    corpus = staticmethod(corpus_conversations)

    def build(self, ctx, index: int, seed: int):
        kind, conv = make_input(index, seed, ctx[1])
        # the cuts come from a generator of their own (the input's stays as it was)
        return kind, fuzzrun.rechunk(conv, random.Random(seed ^ (index * 7919)), SLICES)

    def feed(self, ctx, pieces, st: fuzzrun.Stats, index: int, verbose: bool = False) -> None:
        p = ctx[0]("tcp")
        for d, piece in pieces:
            st.count(p.receive_data(piece, d), index)
            for side in Direction:
                if p.buffered(side) > mongodb.MAX_BUFFERED_BYTES:
                    st.violations.append(f"input {index}: {side.name} holds {p.buffered(side)} bytes")
        for d in Direction:
            st.count(p.receive_eof(d), index)

    def report(self, st: fuzzrun.Stats, seed: int) -> str:
        lines = [f"inputs {st.inputs} in {st.seconds:.1f} s ({st.inputs / max(st.seconds, 1e-9):.0f}/s), "
                 f"kinds {dict(st.kinds)}",
                 f"events {dict(st.events)}",
                 f"malformed {st.malformed}  exceptions {sum(st.exceptions.values())}  hangs {len(st.hangs)}  "
                 f"buffer violations {len(st.violations)}",
                 f"tracemalloc peak {st.peak_mb:.2f} MB over {st.traced_inputs} traced inputs; "
                 f"RSS growth {st.rss_growth_mb:.1f} MB; slowest input {st.slowest[1]} "
                 f"({st.slowest[0] * 1000:.1f} ms)"]
        lines += [f"example {ex}" for ex in (st.examples + [f"hang: input {i}" for i in st.hangs]
                                             + st.violations)[:10]]
        return "\n".join(lines)


def run(n: int, seed: int = 0, **kw) -> fuzzrun.Stats:
    """Inputs of ``seed``'s run (fuzzrun.run's options)."""
    return fuzzrun.run(MongoTarget(), n, seed, **kw)


def main(argv=None) -> int:
    return fuzzrun.main(MongoTarget(), __doc__, argv, seed_default=0)


if __name__ == "__main__":
    sys.exit(main())
