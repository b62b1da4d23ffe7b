"""Fuzz the QUIC parser through the plugin API (issue 17 items 1 and 6).

The parser is the one the appliance uses: ``registry.by_name()['quic']
.parser_factory('udp')``, a fresh one per input. An input is a short flow
of datagrams, both directions, built from:

- the corpus's QUIC flows (../shared/corpus: Chromium's scrambled CRYPTO
  frames, curl, out-of-order CRYPTO, a Retry, Google QUIC), one or more of
  their datagrams mutated (bit flips, byte sets, truncation, insertion,
  deletion, duplication, splicing, header-field edits: first byte, version,
  connection ID lengths, length fields), datagrams dropped, repeated or
  reordered;
- crafted Initials that decrypt (protocols/quic.py protect_initial): the
  RFC 9001 ClientHello and ServerHello cut into CRYPTO frames in any order
  and across packets, coalesced, version 1 and 2, with ACK, PING, PADDING,
  CONNECTION_CLOSE and frames an Initial cannot carry, whose plaintext is
  then mutated before encryption (so the frame parser, the reassembly and
  the TLS hello decoder see damaged input, not only the AEAD's rejection);
- hostile ones: thousands of one-byte CRYPTO pieces, offsets near 2^62,
  ACK frames claiming 2^62 ranges, oversized hellos, Retry and version
  negotiation storms, many coalesced tiny packets;
- random datagrams, some with a plausible long header.

What must hold: no exception (bad input is a Malformed event, a dropped
packet or nothing, never a raise); no hang (an input running past
MAX_INPUT_SECONDS is interrupted by SIGALRM and counted); bounded memory
(the parser's CRYPTO buffers within MAX_CRYPTO_BYTES / MAX_CRYPTO_PIECES
after every datagram, tracemalloc's peak on a sample of inputs, RSS growth
over the run). Prints counts, rates and the slowest input; exits 1 on any
violation. Input i of a run is reproducible: ``--seed S --only i``.

    .venv/bin/python bench/fuzz_quic.py                     # 1,000,000 inputs
    .venv/bin/python bench/fuzz_quic.py --inputs 5000 --seed 7
"""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fuzzrun  # noqa: E402
from protocols import quic  # noqa: E402
from protocols.api import Direction  # noqa: E402
from protocols.quic import QUIC_V1, QUIC_V2, crypto_frame, initial_keys, protect_initial  # noqa: E402

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
CORPUS_PCAPS = ("zeek-quic-chromium-115-api-cirrus-com.pcap", "zeek-quic-curl-8.1.2-http3-www-google-de.pcap",
                "sv-quic-frag-unordered.pcap", "tcpdump-quic_retry.pcap", "ndpi-http_ipv6.pcap")

# One input may take this long before it counts as a hang: an input is at
# most a few dozen datagrams, each at most MAX_INITIAL_PACKETS decryptions.
MAX_INPUT_SECONDS = 5.0
# tracemalloc peak while the parser reads one input: its CRYPTO buffers
# (16 KiB and 256 pieces per side), keys, events; generous for a busy run.
MAX_PEAK_MB = 4.0
# RSS the whole run may add (interpreter arenas, caches): a parser kept
# per input would pass it within a few thousand inputs.
MAX_RSS_GROWTH_MB = 64.0
# Every Nth input is traced with tracemalloc (it slows the run ~3x).
TRACE_EVERY = 200

# RFC 9001 appendix A: the client's DCID, and the CRYPTO streams of the
# client's and the server's Initial (their ClientHello and ServerHello).
RFC_DCID = bytes.fromhex("8394c8f03e515708")
RFC_CLIENT_STREAM = bytes.fromhex(
    "010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e86804fe3a47f06a2b69484c0000041301130201"
    "0000c000000010000e00000b6578616d706c652e636f6dff01000100000a00080006001d0017001800100007000504"
    "616c706e000500050100000000003300260024001d00209370b2c9caa47fbabaf4559fedba753de171fa71f50f1ce1"
    "5d43e994ec74d748002b0003020304000d0010000e0403050306030203080408050806002d00020101001c00024001"
    "003900320408ffffffffffffffff05048000ffff07048000ffff0801100104800075300901100f088394c8f03e5157"
    "0806048000ffff")
RFC_SERVER_STREAM = bytes.fromhex(
    "020000560303eefce7f7b37ba1d1632e96677825ddf73988cfc79825df566dc5430b9a045a1200130100002e0033"
    "0024001d00209d3c940d89690b84d08a60993c144eca684d1081287c834d5311bcf32bb9da1a002b00020304")


def corpus_flows() -> list[list[tuple[Direction, bytes]]]:
    """The UDP flows of the corpus's QUIC captures, as (direction, datagram) lists."""
    from slowpath.pcap import Datagram
    out = []
    for f in fuzzrun.corpus_flows(CORPUS_PCAPS):
        if f.proto == "udp":
            dgrams = [(ev.direction, ev.payload) for ev in f.events if isinstance(ev, Datagram)]
            if dgrams:
                out.append(dgrams)
    return out


# --- building blocks ------------------------------------------------------------
def _v(n: int) -> bytes:
    return quic._encode_varint(n)


def _frames_for(stream: bytes, rng: random.Random) -> list[bytes]:
    """``stream`` as CRYPTO frames cut at random places, shuffled, with
    other frames an Initial may carry in between."""
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(0, 12))))
    bounds = [0, *cuts, len(stream)]
    frames = [crypto_frame(a, stream[a:b]) for a, b in zip(bounds, bounds[1:])]
    if rng.random() < 0.7:
        rng.shuffle(frames)
    extra = [b"\x01", b"\x02" + _v(rng.randrange(1 << 20)) + _v(5) + _v(0) + _v(2),
             b"\x03" + _v(9) + _v(0) + _v(1) + _v(0) + _v(1) + _v(2) + _v(1) + _v(2) + _v(3),
             bytes(rng.randrange(1, 40))]
    for _ in range(rng.randrange(0, 3)):
        frames.insert(rng.randrange(len(frames) + 1), rng.choice(extra))
    if rng.random() < 0.05:
        frames.append(b"\x1c" + _v(0x0A) + _v(6) + _v(5) + b"bye!!")
    if rng.random() < 0.05:
        frames.insert(rng.randrange(len(frames) + 1), b"\x08" + _v(0) + b"stream")   # not for an Initial
    return frames


def _seal(dcid: bytes, frames: bytes, *, server: bool, version: int, pn: int, rng: random.Random) -> bytes:
    keys = initial_keys(dcid, version)[1 if server else 0]
    if len(frames) < 24:
        frames += bytes(24 - len(frames))      # room for the header-protection sample
    return protect_initial(keys, version=version, dcid=b"\xc1\xc2\xc3\xc4" if server else dcid,
                           scid=b"\xaa" * 8 if server else b"\x01\x02\x03\x04", pn=pn, frames=frames,
                           token=b"t" * rng.randrange(0, 3) if not server else b"",
                           pn_len=rng.choice((1, 2, 4)))


def crafted(rng: random.Random) -> list[tuple[Direction, bytes]]:
    """A handshake whose Initials decrypt, its plaintext maybe damaged."""
    version = QUIC_V2 if rng.random() < 0.2 else QUIC_V1
    dcid = RFC_DCID if rng.random() < 0.5 else bytes(rng.randrange(256) for _ in range(rng.choice((8, 8, 0, 20))))
    out: list[tuple[Direction, bytes]] = []
    pn = 0
    for server, stream in ((False, RFC_CLIENT_STREAM), (True, RFC_SERVER_STREAM)):
        frames = _frames_for(stream, rng)
        groups: list[list[bytes]] = [[]]
        for f in frames:
            if groups[-1] and rng.random() < 0.3:
                groups.append([])
            groups[-1].append(f)
        packets = []
        for g in groups:
            plain = b"".join(g)
            if rng.random() < 0.3:
                plain = mutate(plain, rng, stream)
            packets.append(_seal(dcid, plain, server=server, version=version, pn=pn, rng=rng))
            pn += 1
        d = S if server else C
        while packets:                       # coalesce some into one datagram
            k = rng.randrange(1, len(packets) + 1)
            dg = b"".join(packets[:k])
            if not server and rng.random() < 0.8:
                dg += bytes(max(0, 1200 - len(dg)))
            out.append((d, dg))
            packets = packets[k:]
    if rng.random() < 0.1:                   # a Retry, then the client starts over
        new = bytes(rng.randrange(256) for _ in range(8))
        retry = (bytes([0xF0 if version == QUIC_V1 else 0xC0]) + version.to_bytes(4, "big") + b"\x04\xc1\xc2\xc3\xc4"
                 + b"\x08" + new + b"tok" + bytes(16))
        out.insert(rng.randrange(1, len(out) + 1), (S, retry))
        out.append((C, _seal(new, crypto_frame(0, RFC_CLIENT_STREAM), server=False, version=version, pn=pn,
                             rng=rng)))
    return out


def hostile(rng: random.Random) -> list[tuple[Direction, bytes]]:
    kind = rng.randrange(7)
    v = QUIC_V1
    seal = lambda plain, server=False, pn=0: _seal(RFC_DCID, plain, server=server, version=v, pn=pn, rng=rng)  # noqa: E731
    if kind == 0:   # one-byte CRYPTO pieces with holes: the piece cap
        plain = b"".join(crypto_frame(4 + 2 * i, b"x") for i in range(400))
        return [(C, seal(plain))]
    if kind == 1:   # offsets near 2^62 and past the cap
        plain = crypto_frame((1 << 62) - 10, b"y" * 9) + crypto_frame(quic.MAX_CRYPTO_BYTES - 3, b"z" * 50)
        return [(C, seal(plain))]
    if kind == 2:   # an ACK claiming ranges it does not hold
        return [(C, seal(b"\x02" + _v(1) + _v(0) + _v((1 << 62) - 1) + _v(0)))]
    if kind == 3:   # a hello longer than anything held
        return [(C, seal(crypto_frame(0, b"\x01\xff\xff\xff" + bytes(900))))]
    if kind == 4:   # Retry and version negotiation storms
        out = [(C, seal(crypto_frame(0, RFC_CLIENT_STREAM[:100])))]
        for i in range(30):
            if i % 2:
                out.append((S, b"\x80\0\0\0\0\x04abcd\x08" + RFC_DCID + rng.randbytes(4) * rng.randrange(0, 300)))
            else:
                out.append((S, b"\xf0\0\0\0\x01\x04abcd\x08" + rng.randbytes(8) + b"tok" + bytes(16)))
                out.append((C, seal(crypto_frame(0, RFC_CLIENT_STREAM[:50]), pn=i)))
        return out
    if kind == 5:   # many tiny coalesced packets, and Initials past the limit
        pk = seal(b"\x01" + bytes(30))
        return [(C, pk * 40)] * 3
    # undecryptable Initials, one after another, then a good one
    bad = bytearray(seal(crypto_frame(0, RFC_CLIENT_STREAM)))
    bad[-1] ^= 1
    return [(C, bytes(bad))] * (quic.MAX_INITIAL_PACKETS + 2) + [(C, seal(crypto_frame(0, RFC_CLIENT_STREAM)))]


def random_datagrams(rng: random.Random) -> list[tuple[Direction, bytes]]:
    out = []
    for _ in range(rng.randrange(1, 4)):
        data = bytearray(rng.randrange(256) for _ in range(rng.choice((0, 1, 5, 20, 60, 300, 1250))))
        if data and rng.random() < 0.6:       # a plausible long header
            data[0] = 0xC0 | rng.randrange(0x40)
            data[1:5] = rng.choice((QUIC_V1, QUIC_V2, 0, 0xFF00001D, rng.randrange(1 << 32))).to_bytes(4, "big")
        out.append((rng.choice((C, S)), bytes(data)))
    return out


def mutate(data: bytes, rng: random.Random, other: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(9)
        n = len(b)
        if op == 0 and n:
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            b[rng.randrange(n)] = rng.choice((0, 0xFF, 0x40, 0x80, 0xC0, rng.randrange(256)))
        elif op == 2 and n:
            del b[rng.randrange(n + 1):]
        elif op == 3:
            at = rng.randrange(n + 1)
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif op == 4 and n:
            at = rng.randrange(n)
            del b[at:at + rng.randrange(1, 32)]
        elif op == 5 and n:
            at = rng.randrange(n)
            b[at:at] = b[at:at + rng.randrange(1, 64)]
        elif op == 6 and other:
            at = rng.randrange(len(other))
            b[rng.randrange(n + 1):] = other[at:at + rng.randrange(1, 200)]
        elif op == 7 and n >= 6:             # header fields: first byte, version, DCID length
            field_at = rng.choice((0, 1, 4, 5))
            b[field_at] = rng.randrange(256)
        elif op == 8 and n > 8:              # a length varint made huge or zero
            at = rng.randrange(6, min(n, 60))
            b[at] = rng.choice((0x00, 0x7F, 0xBF, 0xFF))
    return bytes(b)


def from_corpus(flows: list, rng: random.Random) -> list[tuple[Direction, bytes]]:
    flow = list(rng.choice(flows))[:rng.randrange(1, 12)]
    other = rng.choice(flows)[0][1]
    for _ in range(rng.randrange(1, 3)):
        i = rng.randrange(len(flow))
        d, dg = flow[i]
        flow[i] = (d, mutate(dg, rng, other))
    if rng.random() < 0.2:
        rng.shuffle(flow)
    if rng.random() < 0.1:
        flow.insert(rng.randrange(len(flow) + 1), rng.choice(flow))
    return flow


# --- the run ----------------------------------------------------------------------
@dataclass
class Stats(fuzzrun.Stats):
    datagrams: int = 0
    undecryptable: int = 0


def build_input(index: int, seed: int, flows: list) -> tuple[str, list]:
    rng = fuzzrun.input_rng(seed, index)
    r = rng.random()
    if r < 0.02:
        return "hostile", hostile(rng)
    if flows and r < 0.55:
        return "corpus", from_corpus(flows, rng)
    if r < 0.85:
        return "crafted", crafted(rng)
    return "random", random_datagrams(rng)


def _check_bounds(parser, st: Stats, index: int) -> None:
    for side in parser._sides:
        c = side.crypto
        if len(c.prefix) > quic.MAX_CRYPTO_BYTES or c.held > quic.MAX_CRYPTO_BYTES \
                or len(c.pieces) > quic.MAX_CRYPTO_PIECES or side.initials > quic.MAX_INITIAL_PACKETS + 1:
            st.violations.append(f"input {index}: bounds: prefix {len(c.prefix)} held {c.held} "
                                         f"pieces {len(c.pieces)} initials {side.initials}")
    if parser.handshakes > quic.MAX_HANDSHAKES + 1 or len(parser._server_cids) > quic.MAX_SERVER_CIDS:
        st.violations.append(f"input {index}: {parser.handshakes} handshakes, "
                             f"{len(parser._server_cids)} server CIDs")


class QuicTarget(fuzzrun.Target):
    name = "fuzz_quic"
    stats = Stats
    max_input_seconds = MAX_INPUT_SECONDS
    max_peak_mb = MAX_PEAK_MB
    max_rss_growth_mb = MAX_RSS_GROWTH_MB
    trace_every = TRACE_EVERY
    protocol = "quic"
    corpus = staticmethod(corpus_flows)
    build_input = staticmethod(build_input)

    def feed(self, ctx, plan: list, st: Stats, index: int, verbose: bool = False) -> None:
        parser = ctx[0]("udp")
        for d, dg in plan:
            st.datagrams += 1
            events = parser.receive_data(dg, d)
            if verbose:
                print(d.name, dg[:48].hex(), events)
            st.count(events, index)
            _check_bounds(parser, st, index)
        st.undecryptable += parser.undecryptable

    def report(self, st: Stats, seed: int) -> str:
        return "\n".join([
            f"fuzz_quic: seed {seed}, {st.inputs:,} inputs ({dict(st.kinds)}), {st.datagrams:,} datagrams "
            f"in {st.seconds:.1f} s: {st.inputs / max(st.seconds, 1e-9):,.0f} inputs/s, "
            f"{st.datagrams / max(st.seconds, 1e-9):,.0f} datagrams/s",
            f"  events: {dict(st.events.most_common())}",
            f"  malformed {st.malformed:,}, undecryptable packets {st.undecryptable:,}",
            *fuzzrun.outcome_lines(st)])


def run(inputs: int, seed: int, *, flows: list | None = None, **kw) -> Stats:
    """Inputs of ``seed``'s run (fuzzrun.run's options)."""
    return fuzzrun.run(QuicTarget(flows), inputs, seed, **kw)


def main(argv=None) -> int:
    return fuzzrun.main(QuicTarget(), __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
