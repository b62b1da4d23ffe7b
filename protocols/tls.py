"""TLS handshake parser: hellos, fingerprints, alerts; silent once encrypted.

Sans-IO like every parser here: bytes and a direction in, events out. One
:class:`TlsParser` follows both directions of a connection. Each direction is
read at the record layer (RFC 8446 section 5.1, RFC 5246 section 6.2) and the
handshake messages inside are reassembled across records and TCP segments, so
a ClientHello split over several records, or fed one byte at a time, gives the
same event as one sent whole.

What comes out:

* :class:`TlsClientHello` with SNI, ALPN, offered versions, cipher suites,
  extension types in order, groups, EC point formats, signature algorithms,
  JA3 (string and MD5) and JA4. A second ClientHello (after a
  HelloRetryRequest) is reported too, with ``hrr_retry`` set.
* :class:`TlsServerHello` with legacy and selected version, cipher suite,
  extensions, ALPN and JA3S; ``hello_retry_request`` marks an HRR.
* :class:`Ssl2ClientHello` for an SSLv2-format (often v3-compatible) hello.
* :class:`TlsAlert` for alerts sent in the clear.
* :class:`~protocols.api.Malformed` when a direction is not TLS or breaks the
  grammar; that direction is ignored from then on.

Once a direction is encrypted (its ChangeCipherSpec in TLS 1.2 and older; the
server after a TLS 1.3 ServerHello; any application_data record) the parser
stops reading it: further data returns ``[]`` without being looked at.

Lists in events hold values exactly as sent, GREASE included (RFC 8701); the
fingerprints drop GREASE where JA3 and JA4 say so. Only the JA4 TLS client
fingerprint is implemented: the rest of the JA4+ family (JA4S, JA4H, JA4X, ...)
is under a licence that forbids use in products.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import ClassVar

from protocols.api import (CERTAIN, LIKELY, NO_MATCH, POSSIBLE, Direction, Event, Malformed,
                           Parser, ProtocolError, ProtocolPlugin, Signature, event_builder, event_kinds)

# --- Limits ---------------------------------------------------------------
# A record longer than this is not TLS: RFC 5246 section 6.2.3 caps
# TLSCiphertext at 2^14 + 2048 bytes (TLS 1.3 is tighter, 2^14 + 256).
MAX_RECORD_LEN = 2**14 + 2048
# Largest ClientHello/ServerHello body we buffer. Real hellos are under 4 KiB
# even with a post-quantum key share (X25519Kyber768 adds 1216 bytes) or a
# 350-suite list; the only other buffered bytes are a few header bytes, so
# this bounds a direction's memory. 64 KiB leaves room for several PQ shares
# and is still small per connection.
MAX_HELLO_LEN = 64 * 1024
# The IANA cipher suite registry has fewer than 400 entries; a longer list is
# a fuzzer or an attack on us, not a client. (The corpus has a 350-suite one.)
MAX_CIPHER_SUITES = 1024
# About 60 extension types are assigned and duplicates are forbidden
# (RFC 8446 section 4.2); real hellos carry about 20.
MAX_EXTENSIONS = 128
# Cap for the other lists we keep (groups, signature algorithms, versions,
# point formats, ALPN names): each registry is well under this, and it keeps
# events and fingerprint strings small whatever the input.
MAX_LIST_ITEMS = 256
# RFC 8446 section 4.1.4: a client sends at most two ClientHellos in the
# clear (the second only after a HelloRetryRequest); a server at most an HRR
# and a ServerHello. More than that is not a TLS handshake.
MAX_HELLOS = 2
# The session ID is at most 32 bytes (RFC 5246 section 7.4.1.2).
MAX_SESSION_ID = 32
# Alerts in the clear per direction. TLS 1.3 makes every alert but
# close_notify/user_canceled fatal and TLS 1.2 peers send one or two warnings
# at most; the cap stops a stream of tiny alert records from turning into an
# unbounded stream of events.
MAX_ALERTS = 8

# --- Protocol constants -----------------------------------------------------
CT_CHANGE_CIPHER_SPEC = 20
CT_ALERT = 21
CT_HANDSHAKE = 22
CT_APPLICATION_DATA = 23
CT_HEARTBEAT = 24
HS_CLIENT_HELLO = 1
HS_SERVER_HELLO = 2
HS_CLIENT_KEY_EXCHANGE = 16

EXT_SERVER_NAME = 0
EXT_SUPPORTED_GROUPS = 10
EXT_EC_POINT_FORMATS = 11
EXT_SIGNATURE_ALGORITHMS = 13
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43

TLS13 = 0x0304
# RFC 8446 section 4.1.3: an HRR is a ServerHello whose random is
# SHA-256("HelloRetryRequest").
HRR_RANDOM = hashlib.sha256(b"HelloRetryRequest").digest()

# Smallest hello bodies: version, random, empty session id, one suite (or the
# chosen one), one compression method (RFC 5246 section 7.4.1.2).
_MIN_CLIENT_HELLO = 2 + 32 + 1 + 2 + 2 + 1 + 1
_MIN_SERVER_HELLO = 2 + 32 + 1 + 2 + 1
# SSLv2 CLIENT-HELLO: type, version, three 2-byte lengths, one 3-byte cipher
# spec and a 16-byte challenge at least.
_MIN_SSL2_HELLO = 1 + 2 + 6 + 3 + 16


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values: 0x0a0a, 0x1a1a, ... 0xfafa."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


# The same 16 values as a set: the fingerprints test every list entry, and
# a set lookup is cheaper than a call per entry.
_GREASE = frozenset(v for v in range(0x10000) if is_grease(v))
_ext_head = struct.Struct(">HH").unpack_from


# --- Events -----------------------------------------------------------------
@dataclass(frozen=True)
class TlsClientHello(Event):
    kind: ClassVar[str] = "tls_client_hello"
    direction: Direction
    record_version: int                  # version in the record header carrying the hello
    legacy_version: int                  # ClientHello.legacy_version (what JA3 uses)
    versions: tuple[int, ...]            # supported_versions as sent; () if absent
    cipher_suites: tuple[int, ...]
    extensions: tuple[int, ...]          # extension types, in order
    groups: tuple[int, ...]
    ec_point_formats: tuple[int, ...]
    sig_algs: tuple[int, ...]
    sni: str | None                      # first host_name; None if there is none
    alpn: tuple[str, ...]
    ja3_string: str
    ja3: str
    ja4: str
    hrr_retry: bool                      # the second ClientHello, after an HRR


@dataclass(frozen=True)
class TlsServerHello(Event):
    kind: ClassVar[str] = "tls_server_hello"
    direction: Direction
    legacy_version: int                  # ServerHello.legacy_version (what JA3S uses)
    selected_version: int | None         # from supported_versions (TLS 1.3), else None
    cipher_suite: int
    extensions: tuple[int, ...]
    alpn: str | None
    ja3s_string: str
    ja3s: str
    hello_retry_request: bool

    @property
    def version(self) -> int:
        """The version this hello settles on."""
        return self.selected_version if self.selected_version is not None else self.legacy_version



# The hellos as the parser makes them: a frozen dataclass's __init__ costs
# ~2.5 us for a ClientHello's 16 fields (event_builder: the same objects in
# 0.4 of that); every TLS flow makes one of each.
_new_client_hello = event_builder(TlsClientHello)
_new_server_hello = event_builder(TlsServerHello)

@dataclass(frozen=True)
class Ssl2ClientHello(Event):
    """A ClientHello in SSLv2 record format (old clients offering SSLv3/TLS)."""
    kind: ClassVar[str] = "ssl2_client_hello"
    direction: Direction
    version: int                         # 0x0002 for SSLv2 itself, 0x03xx if v3-compatible
    cipher_specs: tuple[int, ...]        # 3-byte SSLv2 cipher kinds
    session_id_len: int
    challenge_len: int


@dataclass(frozen=True)
class TlsAlert(Event):
    """An alert sent in the clear (encrypted ones are never seen)."""
    kind: ClassVar[str] = "tls_alert"
    direction: Direction
    level: int                           # 1 warning, 2 fatal
    description: int                     # RFC 8446 section 6 AlertDescription


# --- Fingerprints -----------------------------------------------------------
def _dash(values) -> str:
    if _GREASE.isdisjoint(values):       # the usual list: no copy, no test per entry
        return "-".join(map(str, values))
    return "-".join([str(v) for v in values if v not in _GREASE])


def ja3_string(legacy_version: int, ciphers, extensions, groups, point_formats) -> str:
    """SSLVersion,Ciphers,Extensions,EllipticCurves,EllipticCurvePointFormats
    in decimal, '-'-joined, GREASE dropped from every list."""
    return ",".join((str(legacy_version), _dash(ciphers), _dash(extensions),
                     _dash(groups), _dash(point_formats)))


def ja3s_string(legacy_version: int, cipher: int, extensions) -> str:
    """SSLVersion,Cipher,Extensions of a ServerHello (same rules as JA3)."""
    return f"{legacy_version},{cipher},{_dash(extensions)}"


def md5_hex(text: str) -> str:
    # A fingerprint, not security: say so, or FIPS builds refuse MD5.
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


_JA4_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3",
                 0x0002: "s2", 0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3"}


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _ja4_alpn(first: bytes | None) -> str:
    if not first:
        return "00"

    def alnum(b: int) -> bool:
        return 0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A

    if alnum(first[0]) and alnum(first[-1]):
        return chr(first[0]) + chr(first[-1])
    hexed = first.hex()
    return hexed[0] + hexed[-1]


def _hex_list(values) -> str:
    """Entries as 4-digit lowercase hex, ','-joined: packed big-endian and
    hexed with a separator every 2 bytes, in C. Values past 16 bits (only
    callers of ja4() other than the parser pass any) are formatted one by
    one, as wide as they need."""
    try:
        return struct.pack(f">{len(values)}H", *values).hex(",", 2)
    except struct.error:
        return ",".join([f"{v:04x}" for v in values])


# The two extensions JA4's third part leaves out (they are in its first).
_JA4_UNHASHED = frozenset((EXT_SERVER_NAME, EXT_ALPN))


def ja4(*, legacy_version: int, versions, ciphers, extensions, sig_algs,
        first_alpn: bytes | None, transport: str = "t") -> str:
    """JA4 (FoxIO, BSD-3-Clause spec), e.g. ``t13d1516h2_8daaf6152771_e5627efa2ab1``.
    The lists are sequences (each is looked at more than once)."""
    grease = _GREASE
    offered = [v for v in versions if v not in grease]
    # The highest supported_versions entry wins; without the extension (or
    # with only GREASE in it) the hello's own version is what it offers.
    version = max(offered) if offered else legacy_version
    if not grease.isdisjoint(ciphers):
        ciphers = [c for c in ciphers if c not in grease]
    exts = extensions if grease.isdisjoint(extensions) else [e for e in extensions if e not in grease]
    a = (f"{transport}{_JA4_VERSIONS.get(version, '00')}"
         f"{'d' if EXT_SERVER_NAME in exts else 'i'}"
         f"{min(len(ciphers), 99):02d}{min(len(exts), 99):02d}{_ja4_alpn(first_alpn)}")
    b = _sha12(_hex_list(sorted(ciphers))) if ciphers else "0" * 12
    sorted_exts = sorted([e for e in exts if e not in _JA4_UNHASHED])
    if sorted_exts:
        text = _hex_list(sorted_exts)
        algs = sig_algs if grease.isdisjoint(sig_algs) else [s for s in sig_algs if s not in grease]
        if algs:
            text += "_" + _hex_list(algs)
        c = _sha12(text)
    else:
        c = "0" * 12
    return f"{a}_{b}_{c}"


# --- Hello decoding ---------------------------------------------------------
class _Bad(Exception):
    """Internal: a message does not parse. Becomes a Malformed event."""


class _Reader:
    """Bounds-checked big-endian reads over one message."""
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise _Bad(f"{what} runs past its end ({n} bytes, {self.left} left)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def vec(self, len_bytes: int, what: str) -> bytes:
        return self.take(int.from_bytes(self.take(len_bytes, what + " length"), "big"), what)

    def end(self, what: str) -> None:
        if self.left:
            raise _Bad(f"{self.left} stray bytes after {what}")


def _u16_list(data: bytes, what: str, limit: int = MAX_LIST_ITEMS) -> tuple[int, ...]:
    if len(data) % 2:
        raise _Bad(f"{what}: odd length {len(data)}")
    if len(data) // 2 > limit:
        raise _Bad(f"{what}: {len(data) // 2} entries, limit {limit}")
    return struct.unpack(f">{len(data) // 2}H", data)


def _one_vec(body: bytes, len_bytes: int, what: str) -> bytes:
    """An extension body that is exactly one length-prefixed vector."""
    r = _Reader(body)
    out = r.vec(len_bytes, what)
    r.end(what)
    return out


def _names(data: bytes, what: str) -> list[bytes]:
    """ALPN ProtocolNameList entries (RFC 7301: 1-byte length, never empty)."""
    r, out = _Reader(data), []
    while r.left:
        name = r.vec(1, what)
        if not name:
            raise _Bad(f"{what}: empty protocol name")
        if len(out) == MAX_LIST_ITEMS:
            raise _Bad(f"{what}: more than {MAX_LIST_ITEMS} names")
        out.append(name)
    return out


def _text(raw: bytes) -> str:
    # Names should be ASCII; anything else is kept visible rather than dropped.
    return raw.decode("ascii", "backslashreplace")


def _extensions(r: _Reader) -> tuple[tuple[int, ...], dict[int, bytes]]:
    if not r.left:                       # TLS 1.2 and older may omit the block
        return (), {}
    block = r.vec(2, "extensions")
    r.end("the extensions")
    types: list[int] = []
    bodies: dict[int, bytes] = {}
    # Walked by offset, one unpack per extension (type, length); the
    # messages are _Reader's.
    pos, end = 0, len(block)
    while pos < end:
        left = end - pos
        if left < 4:
            if left < 2:
                raise _Bad(f"extension type runs past its end (2 bytes, {left} left)")
            ext = (block[pos] << 8) | block[pos + 1]
            raise _Bad(f"extension {ext:#06x} length runs past its end (2 bytes, {left - 2} left)")
        ext, n = _ext_head(block, pos)
        pos += 4
        if n > end - pos:
            raise _Bad(f"extension {ext:#06x} runs past its end ({n} bytes, {end - pos} left)")
        if ext in bodies:
            raise _Bad(f"extension {ext:#06x} appears twice")
        if len(types) == MAX_EXTENSIONS:
            raise _Bad(f"more than {MAX_EXTENSIONS} extensions")
        types.append(ext)
        bodies[ext] = block[pos:pos + n]
        pos += n
    return tuple(types), bodies


def _session_id(r: _Reader) -> None:
    if len(r.vec(1, "session id")) > MAX_SESSION_ID:
        raise _Bad(f"session id longer than {MAX_SESSION_ID} bytes")


def _client_hello(body: bytes, direction: Direction, record_version: int,
                  retry: bool, transport: str = "t") -> TlsClientHello:
    """The ClientHello event of one hello body; _Bad when it does not parse.

    Decoded by offset (one unpack per run of entries, no reader object per
    vector). Whatever that walk finds out of the ordinary, including every
    way the hello can be malformed, goes to _client_hello_checked instead,
    which reads it with _Reader's bounds checks and says what is wrong: so
    the error messages have one definition, and a hello the walk accepts is
    one the checked reader accepts with the same fields
    (tests/unit/test_tls_hello_fast.py compares them)."""
    fields = _client_hello_fields(body)
    if fields is None:
        return _client_hello_checked(body, direction, record_version, retry, transport)
    legacy, ciphers, exts, sni, alpn, groups, formats, sig_algs, versions = fields
    j3 = ja3_string(legacy, ciphers, exts, groups, formats)
    return _new_client_hello(
        direction=direction, record_version=record_version, legacy_version=legacy,
        versions=versions, cipher_suites=ciphers, extensions=exts, groups=groups,
        ec_point_formats=formats, sig_algs=sig_algs, sni=sni,
        alpn=tuple([_text(a) for a in alpn]), ja3_string=j3, ja3=md5_hex(j3),
        ja4=ja4(legacy_version=legacy, versions=versions, ciphers=ciphers, extensions=exts,
                sig_algs=sig_algs, first_alpn=alpn[0] if alpn else None, transport=transport),
        hrr_retry=retry)


# Extensions whose bodies the ClientHello event reads.
_CLIENT_WANTED = frozenset((EXT_SERVER_NAME, EXT_ALPN, EXT_SUPPORTED_GROUPS,
                            EXT_EC_POINT_FORMATS, EXT_SIGNATURE_ALGORITHMS,
                            EXT_SUPPORTED_VERSIONS))


def _u16_run(body: bytes, where: dict[int, tuple[int, int]], ext: int, len_bytes: int,
             limit: int):
    """The 2-byte entries of an extension that is one vector of them; () if
    the extension is absent, None if it is not well formed."""
    at = where.get(ext)
    if at is None:
        return ()
    p, n = at
    if len_bytes == 2:
        if n < 2 or (body[p] << 8 | body[p + 1]) != n - 2:
            return None
    elif n < 1 or body[p] != n - 1:
        return None
    count, odd = divmod(n - len_bytes, 2)
    if odd or count > limit:
        return None
    return struct.unpack_from(f">{count}H", body, p + len_bytes)


def _vector_span(body: bytes, where: dict[int, tuple[int, int]], ext: int):
    """(start, end) of the items of an extension that is one vector with a
    2-byte length; (0, 0) if the extension is absent (nothing to walk), None
    if the length does not fill the extension."""
    at = where.get(ext)
    if at is None:
        return 0, 0
    p, size = at
    if size < 2 or (body[p] << 8 | body[p + 1]) != size - 2:
        return None
    return p + 2, p + size


def _client_hello_fields(body: bytes):
    """A ClientHello's fields by offset, or None for anything the checked
    reader should look at (a malformed hello, or one past a limit)."""
    n = len(body)
    if n < _MIN_CLIENT_HELLO:
        return None
    legacy = body[0] << 8 | body[1]
    sid = body[34]                        # after version (2) and random (32)
    if sid > MAX_SESSION_ID:
        return None
    pos = 35 + sid
    if pos + 2 > n:
        return None
    size = body[pos] << 8 | body[pos + 1]
    pos += 2
    count, odd = divmod(size, 2)
    if not size or odd or count > MAX_CIPHER_SUITES or pos + size > n:
        return None
    ciphers = struct.unpack_from(f">{count}H", body, pos)
    pos += size
    if pos >= n or not body[pos] or pos + 1 + body[pos] > n:   # compression methods
        return None
    pos += 1 + body[pos]
    types: list[int] = []
    where: dict[int, tuple[int, int]] = {}
    if pos < n:                           # TLS 1.2 and older may omit the block
        if n - pos < 2 or (body[pos] << 8 | body[pos + 1]) != n - pos - 2:
            return None
        pos += 2
        wanted = _CLIENT_WANTED
        append = types.append
        # At most MAX_HELLO_LEN / 4 rounds; the count is checked after.
        while pos < n:
            if pos + 4 > n:
                return None
            ext, size = _ext_head(body, pos)
            pos += 4
            if pos + size > n:
                return None
            append(ext)
            if ext in wanted:
                where[ext] = (pos, size)
            pos += size
        if len(types) > MAX_EXTENSIONS or len(set(types)) != len(types):  # or one twice
            return None

    sni = None
    span = _vector_span(body, where, EXT_SERVER_NAME)
    if span is None:
        return None
    p, end = span
    while p < end:
        if end - p < 3:
            return None
        name_len = body[p + 1] << 8 | body[p + 2]
        if name_len > end - p - 3:
            return None
        if body[p] == 0 and sni is None:
            sni = _text(body[p + 3:p + 3 + name_len])
        p += 3 + name_len
    alpn: list[bytes] = []
    span = _vector_span(body, where, EXT_ALPN)
    if span is None:
        return None
    p, end = span
    while p < end:
        name_len = body[p]
        if not name_len or name_len > end - p - 1 or len(alpn) == MAX_LIST_ITEMS:
            return None
        alpn.append(body[p + 1:p + 1 + name_len])
        p += 1 + name_len
    groups = _u16_run(body, where, EXT_SUPPORTED_GROUPS, 2, MAX_LIST_ITEMS)
    sig_algs = _u16_run(body, where, EXT_SIGNATURE_ALGORITHMS, 2, MAX_LIST_ITEMS)
    versions = _u16_run(body, where, EXT_SUPPORTED_VERSIONS, 1, MAX_LIST_ITEMS)
    if groups is None or sig_algs is None or versions is None:
        return None
    formats = ()
    at = where.get(EXT_EC_POINT_FORMATS)
    if at is not None:
        p, size = at
        # One byte of length, so never past MAX_LIST_ITEMS.
        if size < 1 or body[p] != size - 1:
            return None
        formats = tuple(body[p + 1:p + size])
    return legacy, ciphers, tuple(types), sni, alpn, groups, formats, sig_algs, versions


def _client_hello_checked(body: bytes, direction: Direction, record_version: int,
                          retry: bool, transport: str = "t") -> TlsClientHello:
    r = _Reader(body)
    legacy = r.u16("version")
    r.take(32, "random")
    _session_id(r)
    suites = r.vec(2, "cipher suites")
    if not suites:
        raise _Bad("no cipher suites")
    ciphers = _u16_list(suites, "cipher suites", MAX_CIPHER_SUITES)
    if not r.vec(1, "compression methods"):
        raise _Bad("no compression methods")
    exts, bodies = _extensions(r)

    sni = None
    if EXT_SERVER_NAME in bodies:
        names = _Reader(_one_vec(bodies[EXT_SERVER_NAME], 2, "server_name"))
        while names.left:
            name_type = names.u8("server_name type")
            name = names.vec(2, "server_name")
            if name_type == 0 and sni is None:
                sni = _text(name)
    alpn: list[bytes] = []
    if EXT_ALPN in bodies:
        alpn = _names(_one_vec(bodies[EXT_ALPN], 2, "ALPN"), "ALPN")
    groups = _u16_list(_one_vec(bodies[EXT_SUPPORTED_GROUPS], 2, "supported_groups"),
                       "supported_groups") if EXT_SUPPORTED_GROUPS in bodies else ()
    formats = _one_vec(bodies[EXT_EC_POINT_FORMATS], 1, "ec_point_formats") \
        if EXT_EC_POINT_FORMATS in bodies else b""
    if len(formats) > MAX_LIST_ITEMS:
        raise _Bad(f"ec_point_formats: more than {MAX_LIST_ITEMS} entries")
    sig_algs = _u16_list(_one_vec(bodies[EXT_SIGNATURE_ALGORITHMS], 2, "signature_algorithms"),
                         "signature_algorithms") if EXT_SIGNATURE_ALGORITHMS in bodies else ()
    versions = _u16_list(_one_vec(bodies[EXT_SUPPORTED_VERSIONS], 1, "supported_versions"),
                         "supported_versions") if EXT_SUPPORTED_VERSIONS in bodies else ()

    j3 = ja3_string(legacy, ciphers, exts, groups, formats)
    return _new_client_hello(
        direction=direction, record_version=record_version, legacy_version=legacy,
        versions=versions, cipher_suites=ciphers, extensions=exts, groups=groups,
        ec_point_formats=tuple(formats), sig_algs=sig_algs, sni=sni,
        alpn=tuple(_text(a) for a in alpn), ja3_string=j3, ja3=md5_hex(j3),
        ja4=ja4(legacy_version=legacy, versions=versions, ciphers=ciphers, extensions=exts,
                sig_algs=sig_algs, first_alpn=alpn[0] if alpn else None, transport=transport),
        hrr_retry=retry)


def _server_hello(body: bytes, direction: Direction) -> TlsServerHello:
    r = _Reader(body)
    legacy = r.u16("version")
    random = r.take(32, "random")
    _session_id(r)
    cipher = r.u16("cipher suite")
    r.u8("compression method")
    exts, bodies = _extensions(r)
    selected = None
    if EXT_SUPPORTED_VERSIONS in bodies:
        sv = bodies[EXT_SUPPORTED_VERSIONS]
        if len(sv) != 2:
            raise _Bad(f"supported_versions in a ServerHello is {len(sv)} bytes, not 2")
        selected = int.from_bytes(sv, "big")
    alpn = None
    if EXT_ALPN in bodies:
        names = _names(_one_vec(bodies[EXT_ALPN], 2, "ALPN"), "ALPN")
        if len(names) != 1:
            raise _Bad(f"server ALPN carries {len(names)} names, not 1")
        alpn = _text(names[0])
    j3s = ja3s_string(legacy, cipher, exts)
    return _new_server_hello(
        direction=direction, legacy_version=legacy, selected_version=selected,
        cipher_suite=cipher, extensions=exts, alpn=alpn, ja3s_string=j3s, ja3s=md5_hex(j3s),
        hello_retry_request=random == HRR_RANDOM)


class HelloError(ValueError):
    """A hello handed to :func:`parse_hello` does not parse (the message says why)."""


def parse_hello(msg_type: int, body: bytes, direction: Direction, *,
                transport: str = "t") -> TlsClientHello | TlsServerHello:
    """A ClientHello (``msg_type`` 1) or ServerHello (2) body that did not come
    in TLS records: QUIC carries the handshake in CRYPTO frames (RFC 9001
    section 4; protocols/quic.py). The same events as over TCP, decoded by the
    same code; ``transport`` is JA4's first character ("q" for QUIC). Raises
    HelloError naming what is wrong."""
    try:
        if msg_type == HS_CLIENT_HELLO:
            if len(body) < _MIN_CLIENT_HELLO:
                raise _Bad(f"ClientHello of {len(body)} bytes is too short")
            # QUIC has no record layer: the record version JA3 ignores is TLS 1.2's.
            return _client_hello(body, direction, 0x0303, retry=False, transport=transport)
        if msg_type == HS_SERVER_HELLO:
            if len(body) < _MIN_SERVER_HELLO:
                raise _Bad(f"ServerHello of {len(body)} bytes is too short")
            return _server_hello(body, direction)
        raise _Bad(f"handshake message type {msg_type} is not a hello")
    except _Bad as e:
        raise HelloError(str(e)) from None


def _ssl2_client_hello(msg: bytes, direction: Direction) -> Ssl2ClientHello:
    # SSLv2 CLIENT-HELLO (draft-hickman-netscape-ssl-00, RFC 6101 appendix E):
    # type, version, cipher-specs length, session-id length, challenge length,
    # then the three fields.
    r = _Reader(msg)
    r.u8("message type")
    version = r.u16("version")
    spec_len = r.u16("cipher specs length")
    sid_len = r.u16("session id length")
    challenge_len = r.u16("challenge length")
    if spec_len == 0 or spec_len % 3:
        raise _Bad(f"SSLv2 cipher specs length {spec_len} is not a positive multiple of 3")
    if sid_len not in (0, 16) or not 16 <= challenge_len <= 32:
        raise _Bad(f"SSLv2 session id {sid_len} / challenge {challenge_len} bytes out of range")
    specs = r.take(spec_len, "cipher specs")
    if spec_len // 3 > MAX_CIPHER_SUITES:
        raise _Bad(f"more than {MAX_CIPHER_SUITES} cipher specs")
    r.take(sid_len, "session id")
    r.take(challenge_len, "challenge")
    r.end("the SSLv2 ClientHello")
    return Ssl2ClientHello(direction, version,
                           tuple(int.from_bytes(specs[i:i + 3], "big") for i in range(0, spec_len, 3)),
                           sid_len, challenge_len)


def _ssl2_header(data: bytes) -> bool:
    """Bytes start like an SSLv2 CLIENT-HELLO: 2-byte header with the high bit
    set, message type 1, version 0x0002 or 0x03xx."""
    return (len(data) >= 5 and data[0] & 0x80 and data[2] == HS_CLIENT_HELLO
            and (data[3:5] == b"\x00\x02" or (data[3] == 3 and data[4] <= 4)))


# --- The parser -------------------------------------------------------------
class _Half:
    """Parsing state of one direction."""
    __slots__ = ("direction", "pos", "done", "eof", "role", "started", "hdr", "rec_type",
                 "rec_version", "rec_len", "rec_left", "ssl2", "small", "hs_hdr", "hs_left",
                 "hs_body", "hs_start", "hs_record_version", "hellos", "offers_tls13",
                 "saw_key_exchange", "hrr", "final_hello", "tentative", "alerts")

    def __init__(self, direction: Direction):
        self.direction = direction
        self.pos = 0                 # bytes of this direction consumed so far
        self.done = False            # encrypted, malformed or finished: ignore the rest
        self.eof = False
        self.role: str | None = None  # "client" or "server", fixed by the first hello
        self.started = False         # a TLS record header has been read (no SSLv2 after it)
        self.hdr = bytearray()       # partial 5-byte record header
        self.rec_type = 0
        self.rec_version = 0
        self.rec_len = 0
        self.rec_left = 0            # body bytes of the current record still to come
        self.ssl2: bytearray | None = None  # SSLv2 hello being buffered (at most 32 KiB)
        self.small = bytearray()     # alert / ChangeCipherSpec body (at most 2 bytes kept)
        self.hs_hdr = bytearray()    # partial 4-byte handshake header
        self.hs_left = 0             # body bytes of the current handshake message to come
        self.hs_body: bytearray | None = None  # buffered hello; None while skipping a message
        self.hs_start = 0
        self.hs_record_version = 0
        self.hellos = 0
        self.offers_tls13 = False    # client: TLS 1.3 in supported_versions
        self.saw_key_exchange = False  # client: sent a ClientKeyExchange, so TLS <= 1.2
        self.hrr = False             # server: sent a HelloRetryRequest
        self.final_hello = False     # server: sent its (non-HRR) ServerHello
        # Client after a ChangeCipherSpec when we cannot tell yet whether the
        # server asked for a retry: the next record is either a second
        # ClientHello (TLS 1.3 middlebox-compatible HRR flow) or encrypted.
        self.tentative = False
        self.alerts = 0

    @property
    def in_message(self) -> bool:
        return bool(self.hs_hdr) or self.hs_left > 0


class TlsParser(Parser):
    """TLS handshake parser for one TCP connection (both directions)."""

    def __init__(self) -> None:
        self._halves = (_Half(Direction.TO_SERVER), _Half(Direction.TO_CLIENT))

    def finished(self, direction: Direction) -> bool:
        """True once ``direction`` is encrypted or given up: feeding it is pointless."""
        return self._halves[direction].done

    # -- Parser API --
    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        half = self._halves[direction]
        if half.eof:
            raise ProtocolError(f"data after end of stream ({direction.name})")
        if half.done or not data:
            return []
        events: list[Event] = []
        try:
            self._feed(half, memoryview(data), events)
        except _Bad as bad:
            self._give_up(half, str(bad), events)
        return events

    def receive_eof(self, direction: Direction) -> list[Event]:
        half = self._halves[direction]
        half.eof = True
        if half.done:
            return []
        half.done = True
        if half.tentative:
            return []
        # A close in the middle of something we were reading is a truncated
        # hello or header; a close between records is just the end.
        if half.hs_body is not None:
            return [Malformed(direction, "stream ended inside a hello", half.hs_start)]
        if half.ssl2 is not None:
            return [Malformed(direction, "stream ended inside an SSLv2 hello", 0)]
        if half.hdr:
            return [Malformed(direction, f"stream ended inside a record header: {bytes(half.hdr)!r}",
                              half.pos - len(half.hdr))]
        return []

    def receive_gap(self, direction: Direction, size: int) -> list[Event]:
        half = self._halves[direction]
        if half.done:
            return []
        # A gap inside bytes we skip anyway (a heartbeat record, or a
        # handshake message other than a hello) is harmless: the record layer
        # stays in step. Anything else loses our place.
        skippable = (half.rec_type == CT_HEARTBEAT
                     or half.rec_type == CT_HANDSHAKE and half.hs_body is None and size <= half.hs_left)
        if 0 < size <= half.rec_left and skippable and not half.tentative:
            events: list[Event] = []
            half.rec_left -= size
            half.pos += size
            if half.rec_type == CT_HANDSHAKE:
                half.hs_left -= size
                if half.hs_left == 0:
                    self._message_end(half, events)
            return events
        half.done = True
        return [Malformed(direction, f"gap of {size} bytes in the stream", half.pos)]

    # -- Internals --
    def _give_up(self, half: _Half, reason: str, events: list[Event], offset: int | None = None) -> None:
        if half.tentative:
            # Was probably encrypted data after all: stop quietly.
            half.done = True
            return
        half.done = True
        events.append(Malformed(half.direction, reason, half.hs_start if offset is None else offset))

    def _other(self, half: _Half) -> _Half:
        return self._halves[1 - half.direction]

    def _feed(self, half: _Half, data: memoryview, events: list[Event]) -> None:
        i, n = 0, len(data)
        while i < n and not half.done:
            if half.rec_left == 0:
                i = self._read_header(half, data, i, events)
                continue
            take = min(half.rec_left, n - i)
            chunk = data[i:i + take]
            half.rec_left -= take
            if half.rec_type == CT_HANDSHAKE:
                self._handshake(half, chunk, events)
            elif half.rec_type in (CT_ALERT, CT_CHANGE_CIPHER_SPEC):
                if len(half.small) < 2:
                    half.small += chunk[:2 - len(half.small)]
            # heartbeat records are skipped
            half.pos += take
            i += take
            if half.rec_left == 0 and not half.done:
                self._record_end(half, events)

    def _read_header(self, half: _Half, data: memoryview, i: int, events: list[Event]) -> int:
        """Collect a record header from data[i:]; returns the new index."""
        if not half.started and (half.ssl2 is not None or not half.hdr and data[i] & 0x80):
            return self._ssl2(half, data, i, events)
        got = bytes(data[i:i + 5 - len(half.hdr)])
        half.hdr += got
        half.pos += len(got)
        i += len(got)
        if len(half.hdr) < 5:
            return i
        hdr, half.hdr = bytes(half.hdr), bytearray()
        ctype, major, minor, length = hdr[0], hdr[1], hdr[2], int.from_bytes(hdr[3:5], "big")
        start = half.pos - 5
        if half.tentative and ctype != CT_HANDSHAKE:
            half.done = True             # encrypted from here on, as it turned out
            return i
        if not CT_CHANGE_CIPHER_SPEC <= ctype <= CT_HEARTBEAT or major != 3 or minor > 4:
            what = "bad TLS record header" if half.started else "not a TLS record"
            self._give_up(half, f"{what}: {hdr!r}", events, start)
            return i
        if length > MAX_RECORD_LEN:
            self._give_up(half, f"record of {length} bytes, limit {MAX_RECORD_LEN}", events, start)
            return i
        if ctype != CT_HANDSHAKE and half.in_message:
            self._give_up(half, f"record type {ctype} inside a fragmented handshake message",
                          events, start)
            return i
        half.started = True
        if ctype == CT_APPLICATION_DATA:
            half.done = True             # encrypted data: nothing more to read here
            return i
        half.rec_type, half.rec_version = ctype, major << 8 | minor
        half.rec_len = half.rec_left = length
        half.small = bytearray()
        if length == 0 and ctype != CT_HANDSHAKE:
            self._record_end(half, events)
        return i

    def _ssl2(self, half: _Half, data: memoryview, i: int, events: list[Event]) -> int:
        """An SSLv2-format ClientHello at the very start of the direction.

        Always consumes at least one byte or gives up, so _feed progresses.
        """
        if half.ssl2 is None:
            half.ssl2 = bytearray()
        buf = half.ssl2
        if len(buf) < 5:
            # First the 2-byte length and the 3 bytes that say "CLIENT-HELLO,
            # version": checked before buffering more, so non-TLS fails fast.
            got = bytes(data[i:i + 5 - len(buf)])
            buf += got
            half.pos += len(got)
            i += len(got)
            if len(buf) < 5:
                return i
            length = ((buf[0] & 0x7F) << 8) | buf[1]
            if not _ssl2_header(bytes(buf)) or length < _MIN_SSL2_HELLO:
                self._give_up(half, f"not a TLS record: {bytes(buf)!r}", events, 0)
            return i
        total = 2 + (((buf[0] & 0x7F) << 8) | buf[1])
        got = bytes(data[i:i + total - len(buf)])
        buf += got
        half.pos += len(got)
        i += len(got)
        if len(buf) < total:
            return i
        half.ssl2, half.started, half.role, half.hellos = None, True, "client", 1
        events.append(_ssl2_client_hello(bytes(buf[2:]), half.direction))
        return i

    def _record_end(self, half: _Half, events: list[Event]) -> None:
        if half.rec_type == CT_ALERT:
            # A clear alert is exactly level + description; other lengths are
            # encrypted alerts (or several at once, which nobody sends).
            if half.rec_len == 2:
                half.alerts += 1
                if half.alerts > MAX_ALERTS:
                    self._give_up(half, f"more than {MAX_ALERTS} alerts", events, half.pos - 7)
                    return
                events.append(TlsAlert(half.direction, half.small[0], half.small[1]))
        elif half.rec_type == CT_CHANGE_CIPHER_SPEC:
            self._change_cipher_spec(half)

    def _change_cipher_spec(self, half: _Half) -> None:
        other = self._other(half)
        if half.role == "server":
            # TLS 1.3 servers send a dummy CCS right after an HRR (RFC 8446
            # appendix D.4) and the real ServerHello follows in the clear.
            # Otherwise this CCS starts encryption.
            if not (half.hrr and not half.final_hello):
                half.done = True
        elif half.role == "client":
            if half.hellos >= MAX_HELLOS or not half.offers_tls13 or half.saw_key_exchange:
                half.done = True         # TLS <= 1.2 (or retry already sent): encrypted now
            elif other.role == "server" and other.hrr:
                # One hello sent and the server asked for a retry: the second
                # ClientHello follows in the clear (checked before final_hello,
                # which the server side may already show if it was fed first).
                pass
            elif other.role == "server" and other.final_hello:
                half.done = True         # TLS 1.3 compat CCS before the encrypted flight
            else:
                half.tentative = True    # server side not seen yet: decide on the next record
        else:
            half.done = True             # CCS before any hello: nothing left to learn

    def _handshake(self, half: _Half, chunk: memoryview, events: list[Event]) -> None:
        j, n = 0, len(chunk)
        while j < n and not half.done:
            if half.hs_left == 0:        # between messages: read a header
                need = 4 - len(half.hs_hdr)
                if not half.hs_hdr:
                    half.hs_start = half.pos + j
                    half.hs_record_version = half.rec_version
                half.hs_hdr += chunk[j:j + need]
                j += min(need, n - j)
                if len(half.hs_hdr) < 4:
                    return
                self._message_start(half, events)
                if half.hs_left == 0 and not half.done:
                    self._message_end(half, events)
                continue
            take = min(half.hs_left, n - j)
            if half.hs_body is not None:
                half.hs_body += chunk[j:j + take]
            half.hs_left -= take
            j += take
            if half.hs_left == 0:
                self._message_end(half, events)

    def _message_start(self, half: _Half, events: list[Event]) -> None:
        msg_type = half.hs_hdr[0]
        length = int.from_bytes(half.hs_hdr[1:4], "big")
        half.hs_left = length
        hello = msg_type in (HS_CLIENT_HELLO, HS_SERVER_HELLO)
        if half.tentative:
            # After the client's CCS only a second ClientHello is readable;
            # anything else is the encrypted Finished of TLS 1.2.
            if msg_type != HS_CLIENT_HELLO or length > MAX_HELLO_LEN:
                half.done = True
                return
        if half.role is None and not hello:
            raise _Bad(f"handshake starts with message type {msg_type}, not a hello")
        if hello:
            role = "client" if msg_type == HS_CLIENT_HELLO else "server"
            if half.role not in (None, role):
                raise _Bad(f"{'ClientHello' if role == 'client' else 'ServerHello'} "
                           f"from the {half.role} side")
            if half.hellos >= MAX_HELLOS:
                raise _Bad(f"more than {MAX_HELLOS} hellos in the clear")
            if length > MAX_HELLO_LEN:
                raise _Bad(f"hello of {length} bytes, limit {MAX_HELLO_LEN}")
            half.role = role
            half.hs_body = bytearray()
        else:
            if msg_type == HS_CLIENT_KEY_EXCHANGE and half.role == "client":
                half.saw_key_exchange = True
            half.hs_body = None          # not interesting: skip its bytes unbuffered

    def _message_end(self, half: _Half, events: list[Event]) -> None:
        msg_type = half.hs_hdr[0]
        body, half.hs_body, half.hs_hdr = half.hs_body, None, bytearray()
        if body is None:
            return
        body = bytes(body)
        half.hellos += 1
        if msg_type == HS_CLIENT_HELLO:
            if len(body) < _MIN_CLIENT_HELLO:
                raise _Bad(f"ClientHello of {len(body)} bytes is too short")
            ev = _client_hello(body, half.direction, half.hs_record_version, retry=half.hellos > 1)
            half.offers_tls13 = TLS13 in ev.versions
            half.tentative = False
            events.append(ev)
        else:
            if len(body) < _MIN_SERVER_HELLO:
                raise _Bad(f"ServerHello of {len(body)} bytes is too short")
            ev = _server_hello(body, half.direction)
            events.append(ev)
            if ev.hello_retry_request:
                if half.hrr:
                    raise _Bad("second HelloRetryRequest")
                half.hrr = True
            else:
                half.final_hello = True
                # supported_versions in a ServerHello means TLS 1.3 (or a
                # draft of it): everything after is encrypted.
                if ev.selected_version is not None:
                    half.done = True


# --- Detection --------------------------------------------------------------
def probe(data: bytes, direction: Direction) -> float:
    """Rate the first bytes of a direction as TLS, on any port."""
    if len(data) >= 1 and data[0] & 0x80:
        if not _ssl2_header(data):
            return NO_MATCH
        length = ((data[0] & 0x7F) << 8) | data[1]
        if length < _MIN_SSL2_HELLO:
            return NO_MATCH
        if len(data) >= 9:
            spec_len = int.from_bytes(data[5:7], "big")
            if spec_len == 0 or spec_len % 3 or 9 + spec_len > length:
                return NO_MATCH
        return LIKELY
    if not data or not CT_CHANGE_CIPHER_SPEC <= data[0] <= CT_HEARTBEAT:
        return NO_MATCH
    if len(data) >= 2 and data[1] != 3 or len(data) >= 3 and data[2] > 4:
        return NO_MATCH
    if len(data) < 5:
        return POSSIBLE
    length = int.from_bytes(data[3:5], "big")
    if length == 0 or length > MAX_RECORD_LEN:
        return NO_MATCH
    if data[0] != CT_HANDSHAKE:
        return POSSIBLE                  # a record mid-stream: plausible, not distinctive
    body = data[5:5 + length]            # what this record holds of the hello
    if not body:
        return LIKELY
    if body[0] not in (HS_CLIENT_HELLO, HS_SERVER_HELLO):
        return POSSIBLE
    if len(body) < 4:
        # Header and message type fit, but the rest is cut off (short capture,
        # or a hello deliberately split into tiny records).
        return LIKELY
    hs_len = int.from_bytes(body[1:4], "big")
    smallest = _MIN_CLIENT_HELLO if body[0] == HS_CLIENT_HELLO else _MIN_SERVER_HELLO
    # The hello may continue in later records, so its length is only checked
    # against what a hello can be, not against this record's length.
    if not smallest <= hs_len <= MAX_HELLO_LEN:
        return NO_MATCH
    if len(body) >= 5 and body[4] != 3:    # the hello's own version: 3.x
        return NO_MATCH
    return CERTAIN


PLUGIN = ProtocolPlugin(
    name="tls",
    event_kinds=event_kinds(TlsClientHello, TlsServerHello, Ssl2ClientHello, TlsAlert),
    probe=probe,
    parser_factory=lambda transport: TlsParser(),
    signatures=(
        # Record header (handshake, 3.x, any length) then ClientHello/ServerHello.
        Signature(0, b"\x16\x03\x00\x00\x00\x01", b"\xff\xff\x00\x00\x00\xff", Direction.TO_SERVER),
        Signature(0, b"\x16\x03\x00\x00\x00\x02", b"\xff\xff\x00\x00\x00\xff", Direction.TO_CLIENT),
        # SSLv2-format ClientHello offering SSLv3/TLS: length with the top bit
        # set, message type 1, version 3.x.
        Signature(0, b"\x80\x00\x01\x03", b"\x80\x00\xff\xff", Direction.TO_SERVER),
    ),
    transports=frozenset({"tcp"}),
    description="TLS/SSL handshake: SNI, ALPN, versions, JA3/JA3S/JA4",
)
