"""protocols/content_coding.py: every coding, stacks, splits, failures, bombs."""

import gzip
import random
import tracemalloc
import zlib

import brotli
import pytest

from protocols import content_coding as cc
from protocols.content_coding import CodingError, ContentDecoder, parse_codings

BODY = b"".join(b"line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(400))


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
}


def decode(coding, data: bytes, cuts=()) -> tuple[bytes, ContentDecoder]:
    d = ContentDecoder(coding)
    out = []
    prev = 0
    for c in list(cuts) + [len(data)]:
        out.append(d.feed(data[prev:c]))
        prev = c
    out.append(d.finish())
    return b"".join(out), d


def test_parse_codings():
    assert parse_codings("GZip, identity ,BR") == ("gzip", "br")
    assert parse_codings([b"x-gzip", "deflate"]) == ("gzip", "deflate")
    assert parse_codings(None) == () and parse_codings(" , ") == ()


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_each_coding(name):
    out, d = decode(name, ENCODERS[name](BODY))
    assert out == BODY and d.error is None
    assert d.decoded == (cc._ALIASES.get(name, name),) and d.undecoded == ()
    assert d.decoded_bytes == len(BODY) and d.encoded_bytes == len(ENCODERS[name](BODY))


@pytest.mark.parametrize("name", ["gzip", "deflate", "br", "raw"])
def test_split_at_every_byte_boundary(name):
    body = BODY[:3000]
    enc = raw_deflate(body) if name == "raw" else ENCODERS[name](body)
    coding = "deflate" if name == "raw" else name
    for cut in range(len(enc) + 1):
        out, d = decode(coding, enc, [cut])
        assert out == body and d.error is None, cut
    # and one byte per feed
    out, d = decode(coding, enc, range(1, len(enc)))
    assert out == body and d.error is None


def test_raw_and_zlib_deflate():
    for enc in (zlib.compress(BODY), raw_deflate(BODY), zlib.compress(b""), raw_deflate(b"x")):
        out, d = decode("deflate", enc)
        assert d.error is None
    assert decode("Deflate", raw_deflate(BODY))[0] == BODY
    assert decode("deflate", zlib.compress(BODY, 9))[0] == BODY


def test_concatenated_gzip_members():
    enc = gzip.compress(BODY[:100]) + gzip.compress(BODY[100:5000]) + gzip.compress(BODY[5000:])
    out, d = decode("gzip", enc, [5, 150, 151])
    assert out == BODY and d.error is None


def test_stacked_codings_undone_in_reverse():
    enc = brotli.compress(gzip.compress(BODY))   # gzip applied first, then br
    out, d = decode("gzip, br", enc, [3, 10])
    assert out == BODY and d.decoded == ("gzip", "br") and d.error is None
    enc = gzip.compress(zlib.compress(BODY))
    assert decode(["deflate", "identity", "GZIP"], enc)[0] == BODY
    # wrong order claimed: a failure, not an exception
    out, d = decode("br, gzip", brotli.compress(gzip.compress(BODY)))
    assert d.error is CodingError.INVALID


def test_unknown_coding_passes_through():
    out, d = decode("compress", BODY)
    assert out == BODY and not d.active and d.undecoded == ("compress",) and d.error is None
    # the known outer layer is undone, the unknown inner one stays
    out, d = decode("foo, gzip", gzip.compress(BODY))
    assert out == BODY and d.decoded == ("gzip",) and d.undecoded == ("foo",)
    # an unknown outer layer hides the known inner one
    out, d = decode("gzip, foo", b"opaque")
    assert out == b"opaque" and d.decoded == () and d.undecoded == ("gzip", "foo")


def test_identity_and_empty():
    out, d = decode("identity", BODY)
    assert out == BODY and not d.active
    out, d = decode("gzip", b"")
    assert out == b"" and d.error is None    # HEAD / 304: no body, not truncated


@pytest.mark.parametrize("name", ["gzip", "deflate", "br"])
def test_truncated(name):
    enc = ENCODERS[name](BODY)
    out, d = decode(name, enc[: len(enc) // 2])
    assert d.error is CodingError.TRUNCATED and BODY.startswith(out)
    assert name in d.detail


@pytest.mark.parametrize("name", ["gzip", "br", "gzip, gzip"])
def test_wrong_claimed_coding(name):
    out, d = decode(name, BODY, [10])
    # brotli has no magic bytes: text can read as the start of a long
    # meta-block, and only the body's end tells it never finished
    assert d.error in ((CodingError.INVALID, CodingError.TRUNCATED) if name == "br"
                       else (CodingError.INVALID,)) and out == b""
    assert "after" in d.detail
    # after the failure the decoder stops and stays quiet
    assert d.feed(gzip.compress(b"more")) == b"" and d.finish() == b""


def test_deflate_garbage_is_invalid():
    out, d = decode("deflate", b"\xff" * 50)
    assert d.error is CodingError.INVALID


def test_decoded_so_far_stays_after_failure():
    enc = gzip.compress(BODY)
    bad = enc[:-8] + bytes(b ^ 0xFF for b in enc[-8:])     # a wrong CRC-32 and size
    out, d = decode("gzip", bad, [len(enc) - 8])
    assert d.error is CodingError.INVALID and out == BODY


def test_trailing_bytes_after_gzip_ignored():
    out, d = decode("gzip", gzip.compress(BODY) + b"\0\0\0\0")
    assert out == BODY and d.error is None


def test_too_many_layers():
    out, d = decode(", ".join(["gzip"] * (cc.MAX_LAYERS + 1)), b"x")
    assert d.error is CodingError.LAYERS and out == b""


def _bomb(encoded: bytes, coding: str):
    tracemalloc.start()
    try:
        d = ContentDecoder(coding)
        total = 0
        for i in range(0, len(encoded), 1000):
            total += len(d.feed(encoded[i:i + 1000]))
        total += len(d.finish())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return d, total, peak


def test_gzip_bomb_stopped_at_size_cap():
    enc = gzip.compress(b"\0" * 10_000_000)
    d, total, peak = _bomb(enc, "gzip")
    assert d.error is CodingError.TOO_LARGE
    assert total == d.decoded_bytes == cc.MAX_DECODED_BYTES
    # returned pieces are freed by the caller: the decoder itself holds ~one step
    assert peak < cc.MAX_DECODED_BYTES * 2 + 1_000_000


def test_brotli_bomb_stopped_by_ratio():
    enc = brotli.compress(b"\0" * 10_000_000)
    d, total, peak = _bomb(enc, "br")
    assert d.error is CodingError.RATIO
    assert cc.RATIO_MIN_DECODED < total < cc.RATIO_MIN_DECODED + 4 * cc.DECODE_STEP
    # one feed call: its pieces and their join
    assert peak < 2 * (cc.RATIO_MIN_DECODED + 4 * cc.DECODE_STEP)


def test_stacked_bomb_bounded_in_memory():
    # gzip of gzip of 50 MB of zeros: each layer ~1000x; nothing may hold it whole
    inner = gzip.compress(b"\0" * 50_000_000)
    enc = gzip.compress(inner)
    d, total, peak = _bomb(enc, "gzip, gzip")
    assert d.error is CodingError.RATIO and total <= cc.MAX_DECODED_BYTES
    assert peak < 4 * 1024 * 1024


def test_size_cap_and_ratio_parameters():
    d = ContentDecoder("gzip", max_decoded=1000)
    out = d.feed(gzip.compress(BODY)) + d.finish()
    assert out == BODY[:1000] and d.error is CodingError.TOO_LARGE
    # ratio applies only past RATIO_MIN_DECODED: small repetitive bodies pass
    d = ContentDecoder("br", max_ratio=2)
    assert d.feed(brotli.compress(b"a" * 100_000)) + d.finish() == b"a" * 100_000
    assert d.error is None


def test_random_splits_and_noise_never_raise():
    rng = random.Random(1616)
    streams = [(n, ENCODERS[n](BODY[: rng.randrange(1, len(BODY))])) for n in ("gzip", "deflate", "br")]
    for _ in range(300):
        name, enc = rng.choice(streams)
        enc = bytearray(enc)
        for _ in range(rng.randrange(0, 4)):
            enc[rng.randrange(len(enc))] = rng.randrange(256)
        cuts = sorted(rng.sample(range(len(enc) + 1), min(len(enc), rng.randrange(0, 6))))
        out, d = decode(rng.choice([name, "gzip, br", "deflate", "br"]), bytes(enc), cuts)
        assert d.error in (None, *CodingError)
        assert len(out) == d.decoded_bytes
