"""Incremental decoding of one HTTP message body's Content-Encoding (sans-IO).

Usage::

    dec = ContentDecoder("gzip")          # or ["gzip", "br"], b"deflate", ...
    text = dec.feed(chunk)                # newly decoded bytes, as chunks arrive
    text += dec.feed(next_chunk)
    text += dec.finish()                  # at the body's end
    dec.decoded      # ("gzip",): the codings undone, in header order
    dec.undecoded    # codings left as they were (unknown, or below an unknown one)
    dec.error        # None or a CodingError: INVALID, TRUNCATED, TOO_LARGE, RATIO, LAYERS
    dec.detail       # one line saying what went wrong and where
    dec.encoded_bytes, dec.decoded_bytes

``ContentDecoder(value, max_decoded=MAX_DECODED_BYTES, max_ratio=MAX_RATIO)``
takes the Content-Encoding field value(s) as sent (str, bytes, or a list of
field values: repeated fields are one comma-separated list, RFC 9110 5.3).
Coding names are case-insensitive; ``x-gzip`` is ``gzip``; ``identity`` is
dropped. The codings were applied in the order listed, so they are undone from
the last one back (RFC 9110 8.4): ``gzip, br`` is brotli-decoded, then gunzipped.

Supported: ``gzip`` (concatenated members too), ``deflate`` (zlib-wrapped or
raw DEFLATE, told apart by the first two bytes, as browsers accept both),
``br`` (the ``brotli`` package). An unknown coding stops the undoing there:
it and the codings applied before it stay in ``undecoded`` and their bytes
pass through as they are (``active`` is False when nothing is undone at all:
``feed`` then returns its input unchanged). That is not a failure.

``feed`` and ``finish`` never raise on bad data. (Brotli has no magic bytes:
some text reads as the start of a long meta-block, so a body falsely claiming
``br`` may show only at its end, as TRUNCATED rather than INVALID.) A body that is not what its
coding claims, ends early, or decodes past a cap sets ``error`` (and
``detail``); the decoder then stops: what was decoded before stays returned,
later calls return b"". Work and memory per call are bounded: the inflaters
run with an output limit (zlib's ``max_length``/``unconsumed_tail``, brotli's
``output_buffer_limit``) in steps of DECODE_STEP bytes, the caps are checked
after every step, so a bomb never allocates much past ``max_decoded``.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Iterable

import brotli

# Decoded bytes per message. What the WAF and DLP read of a body is capped much
# lower (protocols/http.py MAX_BODY_EMIT_BYTES, 256 KiB); decoding goes on past
# it only to size the body. 4 MiB lets ordinary pages, scripts and API answers
# decode to their end (16x the inspected depth), bounds the CPU spent on one
# message to about 10 ms of inflating, and stops a deflate bomb (at most
# ~1032:1, so below MAX_RATIO) after 4 MiB: 10 MB of zeros gzipped (~10 KB)
# is stopped here.
MAX_DECODED_BYTES = 4 * 1024 * 1024

# Decoded / encoded bytes beyond which a body is a bomb, checked once more
# than RATIO_MIN_DECODED bytes were decoded. Suricata's (libhtp's) defaults:
# a compression bomb is a body decoded past 1 MiB (compression-bomb-limit)
# at a ratio above 2048. One DEFLATE layer cannot exceed ~1032:1, so real
# gzip/deflate bodies never trip it; brotli bombs (10 MB of zeros is ~30
# bytes of brotli) and stacked layers (gzip of gzip) do.
MAX_RATIO = 2048
RATIO_MIN_DECODED = 1024 * 1024

# Codings undone per message (identity not counted). Suricata decodes 2
# layers by default (response-body-decompress-layer-limit), urllib3 refuses
# more than 5; each layer can multiply the size ~1000x. 3 covers the stacks
# seen in practice (a proxy gzipping an already-compressed body, "gzip, br").
MAX_LAYERS = 3

# Output bytes per inflate step: the granularity of the cap checks, so the
# most a step allocates past a cap (brotli's output buffer may grow up to
# ~1.5x its limit). 64 KiB keeps per-step overhead small next to zlib's work.
DECODE_STEP = 64 * 1024


class CodingError(enum.StrEnum):
    """Why decoding stopped (``ContentDecoder.error``)."""
    INVALID = "invalid"         # the bytes are not the claimed coding
    TRUNCATED = "truncated"     # the body ended inside a coded stream
    TOO_LARGE = "too-large"     # decoded past max_decoded (MAX_DECODED_BYTES)
    RATIO = "ratio"             # decoded/encoded above max_ratio (MAX_RATIO)
    LAYERS = "layers"           # more than MAX_LAYERS codings to undo


_ALIASES = {"x-gzip": "gzip", "x-deflate": "deflate"}
SUPPORTED = frozenset(("gzip", "deflate", "br"))

_GZIP_MAGIC = b"\x1f\x8b"


def parse_codings(value) -> tuple[str, ...]:
    """The coding names of Content-Encoding field value(s), lower-cased, in the
    order listed, aliases mapped, identity and empty items dropped."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes, bytearray)):
        values: Iterable = (value,)
    else:
        values = value
    out = []
    for v in values:
        if isinstance(v, (bytes, bytearray)):
            v = bytes(v).decode("latin-1")
        for item in v.split(","):
            name = item.strip().lower()
            name = _ALIASES.get(name, name)
            if name and name != "identity":
                out.append(name)
    return tuple(out)


class _Failed(Exception):
    """Internal: a stage found its input invalid."""


class _ZlibStage:
    """gzip (members in sequence) or deflate (zlib or raw, detected)."""
    __slots__ = ("gzip", "obj", "pending", "ended", "started", "trailing")

    def __init__(self, gzip: bool):
        self.gzip = gzip
        self.obj = None             # decompressobj of the current member
        self.pending = b""          # input not yet consumed
        self.ended = False          # a complete stream (member) ended last
        self.started = False        # any input byte seen
        self.trailing = 0           # bytes after the end that are not a member

    def add(self, data: bytes) -> None:
        if data:
            self.started = True
            self.pending = self.pending + data if self.pending else data

    def _begin(self) -> bool:
        """Start a stream on pending; False: need more bytes to tell."""
        p = self.pending
        if self.gzip:
            if len(p) < 2:
                return False
            if p[:2] != _GZIP_MAGIC:
                if self.ended:      # not another member: trailing bytes, ignored
                    self.trailing += len(p)
                    self.pending = b""
                    return False
                raise _Failed("no gzip header")
            self.obj = zlib.decompressobj(31)
        else:
            if self.ended:          # deflate has one stream: the rest is trailing
                self.trailing += len(p)
                self.pending = b""
                return False
            if len(p) < 2:
                return False
            cmf, flg = p[0], p[1]
            zlib_header = (cmf & 0x0F) == 8 and (cmf >> 4) <= 7 and (cmf * 256 + flg) % 31 == 0
            self.obj = zlib.decompressobj(15 if zlib_header else -15)
        self.ended = False
        return True

    def pull(self, limit: int) -> bytes:
        while self.pending:
            if self.obj is None and not self._begin():
                return b""
            try:
                out = self.obj.decompress(self.pending, limit)
            except zlib.error as e:
                raise _Failed(str(e)) from None
            if self.obj.eof:
                self.pending = self.obj.unused_data
                self.obj = None
                self.ended = True
            else:
                self.pending = self.obj.unconsumed_tail
            if out:
                return out
        return b""

    def complete(self) -> bool:
        return self.ended and self.obj is None


class _BrotliStage:
    __slots__ = ("obj", "pending", "started", "more")

    def __init__(self):
        self.obj = brotli.Decompressor()
        self.pending = b""
        self.started = False
        # The last call stopped at its output limit: more output may be held
        # (can_accept_more_data() can be True while it is).
        self.more = False

    def add(self, data: bytes) -> None:
        if data:
            self.started = True
            self.pending = self.pending + data if self.pending else data

    def pull(self, limit: int) -> bytes:
        obj = self.obj
        try:
            if self.more or not obj.can_accept_more_data():
                out = obj.process(b"", output_buffer_limit=limit)
                self.more = len(out) >= limit
                if out or not obj.can_accept_more_data():
                    return out
            if self.pending:
                if obj.is_finished():
                    raise _Failed("bytes after the end of the brotli stream")
                data, self.pending = self.pending, b""
                out = obj.process(data, output_buffer_limit=limit)
                self.more = len(out) >= limit
                return out
        except brotli.error as e:
            raise _Failed(str(e)) from None
        return b""

    def complete(self) -> bool:
        return self.obj.is_finished()


class ContentDecoder:
    """Undo one message's Content-Encoding as its body arrives (see module doc)."""

    def __init__(self, value, max_decoded: int = MAX_DECODED_BYTES,
                 max_ratio: float = MAX_RATIO):
        self.codings = parse_codings(value)
        self.max_decoded = max_decoded
        self.max_ratio = max_ratio
        self.error: CodingError | None = None
        self.detail = ""
        self.encoded_bytes = 0
        self.decoded_bytes = 0
        self.finished = False
        # Undo from the last coding back while it is one we know.
        n = len(self.codings)
        k = n
        while k > 0 and self.codings[k - 1] in SUPPORTED:
            k -= 1
        self.undecoded = self.codings[:k]
        self.decoded = self.codings[k:]
        self._stages: list = []
        if len(self.decoded) > MAX_LAYERS:
            self._fail(CodingError.LAYERS,
                       f"{len(self.decoded)} codings to undo ({', '.join(self.decoded)}), at most {MAX_LAYERS}")
            return
        for name in reversed(self.decoded):
            self._stages.append(_BrotliStage() if name == "br" else _ZlibStage(name == "gzip"))

    def abandon(self) -> None:
        """Body bytes were lost (a capture gap): the coded stream cannot be
        followed. Decoding stops quietly, without an error (the sender did
        nothing wrong); ``abandoned`` says so, ``decoded_bytes`` is a floor."""
        self.abandoned = True
        self._stages = []

    abandoned = False

    @property
    def active(self) -> bool:
        """Whether any coding is being undone (False: feed passes bytes through)."""
        return bool(self.decoded)

    def _fail(self, error: CodingError, detail: str) -> None:
        if self.error is None:
            self.error = error
            self.detail = detail
            self._stages = []

    def _name(self, i: int) -> str:
        return self.decoded[len(self.decoded) - 1 - i]

    def feed(self, data: bytes) -> bytes:
        """Newly decoded bytes of ``data`` (the next encoded body bytes)."""
        if not self.decoded:
            self.encoded_bytes += len(data)
            self.decoded_bytes += len(data)
            return bytes(data)
        if self.error is not None or self.finished or self.abandoned:
            self.encoded_bytes += len(data)
            return b""
        self.encoded_bytes += len(data)
        if data:
            self._stages[0].add(bytes(data))
        return self._pump()

    def finish(self) -> bytes:
        """The end of the body: what is left to decode; TRUNCATED if a coded
        stream did not end (an empty body is not truncated)."""
        if self.finished:
            return b""
        self.finished = True
        if not self.decoded or self.error is not None or self.abandoned:
            return b""
        out = self._pump()
        if self.error is not None or self.encoded_bytes == 0:
            return out
        for i, st in enumerate(self._stages):
            if not st.complete():
                self._fail(CodingError.TRUNCATED,
                           f"{self._name(i)} stream ended early after {self.encoded_bytes} encoded bytes")
                break
        return out

    def _pump(self) -> bytes:
        stages = self._stages
        last = len(stages) - 1
        out: list[bytes] = []
        try:
            while True:
                chunk = self._pull(last)
                if not chunk:
                    if self._refill(last):
                        continue
                    break
                self.decoded_bytes += len(chunk)
                if self.decoded_bytes > self.max_decoded:
                    keep = len(chunk) - (self.decoded_bytes - self.max_decoded)
                    out.append(chunk[:keep])
                    self.decoded_bytes = self.max_decoded
                    self._fail(CodingError.TOO_LARGE,
                               f"decoded body past {self.max_decoded} bytes "
                               f"({self.encoded_bytes} encoded bytes so far)")
                    break
                out.append(chunk)
                if (self.decoded_bytes > RATIO_MIN_DECODED
                        and self.decoded_bytes > self.max_ratio * max(self.encoded_bytes, 1)):
                    self._fail(CodingError.RATIO,
                               f"{self.decoded_bytes} bytes decoded from {self.encoded_bytes}: "
                               f"ratio above {self.max_ratio:g}")
                    break
        except _Failed as e:
            self._fail(CodingError.INVALID, f"not valid {e.args[0]} data "
                       f"after {self.encoded_bytes} encoded bytes: {e.args[1]}")
        return b"".join(out)

    def _pull(self, i: int) -> bytes:
        try:
            return self._stages[i].pull(DECODE_STEP)
        except _Failed as e:
            raise _Failed(self._name(i), e.args[0]) from None

    def _refill(self, i: int) -> bool:
        """Move decoded bytes from stage i-1 into stage i; False if none."""
        if i == 0:
            return False
        up = self._stages[i - 1]
        while True:
            data = self._pull(i - 1)
            if data:
                self._stages[i].add(data)
                return True
            if not self._refill(i - 1):
                return False
