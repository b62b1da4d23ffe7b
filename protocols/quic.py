"""QUIC (RFC 9000, 9001; version 2: RFC 9369) over UDP: the handshake in Initial packets.

Sans-IO like every parser here: one UDP datagram's payload and its direction
in, events out. A :class:`QuicParser` follows both directions of one flow
(the flow's initiator is the client).

What it reads: every long-header packet's header (version, connection IDs,
token, length), coalesced packets one after another in a datagram, version
negotiation and Retry packets, and Initial packets, which are encrypted with
keys anyone can derive from the client's Destination Connection ID (RFC 9001
section 5.2). Those are decrypted (header protection with AES-ECB, payload
with AES-128-GCM, by the ``cryptography`` package), their frames read
(PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE; any other frame ends that
packet's decoding, as it cannot occur in an Initial) and the CRYPTO frames put
back in order by offset, across packets and datagrams, whatever order they
come in (Chrome scrambles them on purpose). The first handshake message of
each side, the ClientHello or ServerHello, goes to the TLS code
(protocols/tls.py parse_hello): SNI, ALPN, versions, JA3, and JA4 with the
``q`` prefix. Handshake, 0-RTT and short-header (1-RTT) packets are counted,
never decrypted: their keys come from the TLS key exchange.

After a Retry the client's next Initial uses the DCID the server chose, and
its keys are derived from that; the client sends its ClientHello again, which
is read again (a client could name another server in it). A packet that does
not decrypt (a bad tag, a wrong key) is dropped and counted, as an endpoint
does, so a stray or forged datagram cannot end the inspection of a flow; a
side gives up (:class:`~protocols.api.Malformed`) when its first datagram is
not QUIC, when the decrypted handshake breaks the TLS grammar, or when its
hello is not complete within the bounds below.

Google QUIC (the pre-standard "Q0xx" versions) is recognised by its public
header and counted; its handshake is not decoded.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocols.api import (CERTAIN, LIKELY, NO_MATCH, Direction, Event, Malformed, Parser,
                           ProtocolError, ProtocolPlugin, Signature, event_kinds)
from protocols.tls import (HS_CLIENT_HELLO, HS_SERVER_HELLO, MAX_HELLO_LEN, HelloError,
                           TlsClientHello, TlsServerHello, parse_hello)

# --- Limits ---------------------------------------------------------------
# CRYPTO bytes held per direction while its hello is put together. A QUIC
# ClientHello is ~1.5 KiB today, ~2.7 KiB with an ML-KEM-768 key share and
# under 4 KiB with two; 16 KiB is room for what clients may add and bounds a
# flow's memory (data past the hello, or past this, is not kept).
MAX_CRYPTO_BYTES = 16 * 1024
# Separate out-of-order CRYPTO pieces held per direction: Chrome scrambles a
# hello into a dozen or two; each piece costs a dict entry, so a flood of
# one-byte frames must not grow the table.
MAX_CRYPTO_PIECES = 256
# Initial packets decrypted (or tried) per direction before its hello is
# complete. A hello needs one to three Initials (a post-quantum one spans
# several), a lost one is retransmitted; each costs an AES-GCM decryption,
# so this bounds the CPU a flow can make the slow path spend.
MAX_INITIAL_PACKETS = 16
# A version negotiation packet's list is cut here: real servers list a
# handful, and the event (and log) stays small whatever a datagram holds.
MAX_VN_VERSIONS = 64
# Characters of a CONNECTION_CLOSE reason phrase (and of a Google QUIC
# server name or user agent) kept in the event.
MAX_REASON_CHARS = 256
# Google QUIC: the CHLO message starts within the first packet's headers
# (public header, hash, frame header: under 64 bytes); a CHLO has some 25
# tags, and more than 64 is not a hello.
GQUIC_CHLO_SEARCH = 64
MAX_GQUIC_TAGS = 64
# Handshakes read per flow: the first, one after a Retry, one after a
# version negotiation, one more; a client starting more connections on one
# 5-tuple than that is not a browser, and each costs key derivations.
MAX_HANDSHAKES = 4
# Server connection IDs remembered (the client's later Initials are sent to
# them, still under the first keys): a server uses one, a few at most.
MAX_SERVER_CIDS = 8
# RFC 9000 section 17.2: in versions 1 and 2 a connection ID is at most 20
# bytes (other versions may allow up to 255, the invariants' limit).
MAX_CID_LEN = 20
# RFC 9000 section 14.1: a client's datagram carrying an Initial is at least
# 1200 bytes (the probe's "certain" needs it; shorter ones are only likely).
MIN_CLIENT_INITIAL_DATAGRAM = 1200

# Initial key sets kept across flows (initial_keys): deriving one costs
# ~150-250 us (HMACs, two AES contexts); a DCID seen again (a replayed or
# retransmitted Initial on a new 5-tuple, a flood of copies) costs a lookup.
# Each set is a few hundred bytes.
INITIAL_KEYS_CACHE = 1024

# --- Protocol constants -----------------------------------------------------
VERSION_NEGOTIATION = 0x00000000
QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF          # RFC 9369
DRAFT_29 = 0xFF00001D         # the last widely deployed draft (same keys as drafts 29-32)

# Long-header packet types as named here, whatever bits a version uses.
INITIAL, ZERO_RTT, HANDSHAKE, RETRY = "initial", "0rtt", "handshake", "retry"
_TYPES_V1 = (INITIAL, ZERO_RTT, HANDSHAKE, RETRY)
_TYPES_V2 = (RETRY, INITIAL, ZERO_RTT, HANDSHAKE)     # RFC 9369 section 3.2


@dataclass(frozen=True)
class _VersionKeys:
    salt: bytes
    key_label: bytes
    iv_label: bytes
    hp_label: bytes
    types: tuple[str, ...]


_V1_LABELS = (b"quic key", b"quic iv", b"quic hp")
# Initial salts: RFC 9001 section 5.2, RFC 9369 section 3.3.1, draft-ietf-quic-tls-29 5.2.
_VERSIONS = {
    QUIC_V1: _VersionKeys(bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), *_V1_LABELS, _TYPES_V1),
    QUIC_V2: _VersionKeys(bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
                          b"quicv2 key", b"quicv2 iv", b"quicv2 hp", _TYPES_V2),
    **{v: _VersionKeys(bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899"), *_V1_LABELS, _TYPES_V1)
       for v in range(0xFF00001D, 0xFF000021)},
}

FRAME_PADDING, FRAME_PING, FRAME_ACK, FRAME_ACK_ECN, FRAME_CRYPTO = 0x00, 0x01, 0x02, 0x03, 0x06
FRAME_CONNECTION_CLOSE, FRAME_APPLICATION_CLOSE = 0x1C, 0x1D
_AEAD_TAG = 16
_HP_SAMPLE = 16
_RETRY_TAG = 16


def version_name(version: int) -> str:
    """A QUIC version as Suricata logs it: hex without leading zeros ("1",
    "6b3343cf"), Google's as their ASCII tag ("Q046")."""
    tag = version.to_bytes(4, "big")
    if tag[:1] in (b"Q", b"T") and tag[1:].isdigit():
        return tag.decode()
    return f"{version:x}"


# --- Events -----------------------------------------------------------------
@dataclass(frozen=True)
class QuicClientHello(Event):
    """The client's hello: TLS's ClientHello put together from its Initial
    packets, or (Google QUIC) the CHLO message's server name and user agent."""
    kind: ClassVar[str] = "quic_client_hello"
    direction: Direction
    version: int
    dcid: bytes                  # of the Initial that completed the hello (its keys' source)
    scid: bytes
    sni: str | None
    alpn: tuple[str, ...]
    hello: TlsClientHello | None  # None for Google QUIC; ja4 starts with "q"
    ua: str | None = None        # Google QUIC's UAID tag


@dataclass(frozen=True)
class QuicServerHello(Event):
    kind: ClassVar[str] = "quic_server_hello"
    direction: Direction
    version: int
    dcid: bytes
    scid: bytes
    hello: TlsServerHello


@dataclass(frozen=True)
class QuicRetry(Event):
    """A server's Retry (RFC 9000 section 17.2.5): the client starts over with ``scid`` as its DCID."""
    kind: ClassVar[str] = "quic_retry"
    direction: Direction
    version: int
    dcid: bytes
    scid: bytes
    token_len: int


@dataclass(frozen=True)
class QuicVersionNegotiation(Event):
    kind: ClassVar[str] = "quic_version_negotiation"
    direction: Direction
    dcid: bytes
    scid: bytes
    versions: tuple[int, ...]    # at most MAX_VN_VERSIONS


@dataclass(frozen=True)
class QuicConnectionClose(Event):
    """A CONNECTION_CLOSE frame read from an Initial packet."""
    kind: ClassVar[str] = "quic_connection_close"
    direction: Direction
    version: int
    error_code: int
    frame_type: int | None       # None in the application variant (0x1d)
    reason: str


# --- Key derivation (RFC 9001 section 5) -----------------------------------
def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(secret: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 section 2.3) with SHA-256, on the standard
    library's HMAC: cryptography 38's HKDFExpand costs ~140 us a call here
    (a backend HMAC context per call), and a flow's Initial keys take eight.
    tests/unit/test_quic.py holds it to HKDFExpand."""
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def hkdf_expand_label(secret: bytes, label: bytes, length: int, context: bytes = b"") -> bytes:
    """TLS 1.3's HKDF-Expand-Label (RFC 8446 section 7.1) with SHA-256."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    return hkdf_expand(secret, info, length)


class InitialKeys:
    """One side's Initial packet protection: AEAD key, IV and header-protection key."""
    __slots__ = ("key", "iv", "hp", "_aead", "_hp_ecb")

    def __init__(self, secret: bytes, v: _VersionKeys):
        self.key = hkdf_expand_label(secret, v.key_label, 16)
        self.iv = hkdf_expand_label(secret, v.iv_label, 12)
        self.hp = hkdf_expand_label(secret, v.hp_label, 16)
        self._aead = AESGCM(self.key)
        # ECB keeps no state between blocks: one encryptor serves every
        # sample (making one costs ~150 us in cryptography 38; a block, ~1).
        self._hp_ecb = Cipher(algorithms.AES(self.hp), modes.ECB()).encryptor()

    def hp_mask(self, sample: bytes) -> bytes:
        return self._hp_ecb.update(sample)

    def open(self, pn: int, header: bytes, payload: bytes) -> bytes:
        """Decrypt a packet's payload; raises InvalidTag when it does not authenticate."""
        nonce = (int.from_bytes(self.iv, "big") ^ pn).to_bytes(12, "big")
        return self._aead.decrypt(nonce, payload, header)


@lru_cache(maxsize=INITIAL_KEYS_CACHE)
def initial_keys(dcid: bytes, version: int = QUIC_V1) -> tuple[InitialKeys, InitialKeys]:
    """(client, server) Initial keys from the client's Destination Connection ID.
    Cached: the objects hold no per-packet state (AES-GCM takes the nonce per
    call, ECB keeps none between blocks)."""
    v = _VERSIONS[version]
    initial = hkdf_extract(v.salt, dcid)
    return (InitialKeys(hkdf_expand_label(initial, b"client in", 32), v),
            InitialKeys(hkdf_expand_label(initial, b"server in", 32), v))


def _encode_varint(v: int) -> bytes:
    for n, prefix in ((1, 0x00), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if v < 1 << (8 * n - 2):
            return (v | prefix << (8 * n - 8)).to_bytes(n, "big")
    raise ValueError(f"{v} does not fit a QUIC variable-length integer")


def protect_initial(keys: InitialKeys, *, version: int, dcid: bytes, scid: bytes, pn: int,
                    frames: bytes, token: bytes = b"", pn_len: int = 4) -> bytes:
    """An Initial packet carrying ``frames``, protected as RFC 9001 section 5
    says: the inverse of what the parser does. Not used to parse: tests and
    bench/fuzz_quic.py build their packets with it."""
    v = _VERSIONS[version]
    first = 0xC0 | (v.types.index(INITIAL) << 4) | (pn_len - 1)
    pn_bytes = (pn & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")
    length = _encode_varint(pn_len + len(frames) + _AEAD_TAG)
    header = (bytes([first]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid
              + bytes([len(scid)]) + scid + _encode_varint(len(token)) + token + length + pn_bytes)
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = keys._aead.encrypt(nonce, frames, header)
    pn_off = len(header) - pn_len
    sample = sealed[4 - pn_len:4 - pn_len + _HP_SAMPLE]
    mask = keys.hp_mask(sample)
    out = bytearray(header)
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[pn_off + i] ^= mask[1 + i]
    return bytes(out) + sealed


def crypto_frame(offset: int, data: bytes) -> bytes:
    """A CRYPTO frame (RFC 9000 section 19.6), for protect_initial's callers."""
    return bytes([FRAME_CRYPTO]) + _encode_varint(offset) + _encode_varint(len(data)) + data


# --- Wire helpers -------------------------------------------------------------
class _Bad(Exception):
    """Internal: bytes that do not parse. Where the caller decides what it means."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """RFC 9000 section 16: (value, next position)."""
    if pos >= end:
        raise _Bad("variable-length integer runs past its end")
    first = buf[pos]
    n = 1 << (first >> 6)
    if pos + n > end:
        raise _Bad(f"{n}-byte variable-length integer runs past its end")
    v = first & 0x3F
    for i in range(1, n):
        v = (v << 8) | buf[pos + i]
    return v, pos + n


def decode_packet_number(largest: int, truncated: int, nbits: int) -> int:
    """RFC 9000 appendix A.3: the full packet number nearest the expected one."""
    expected = largest + 1
    win = 1 << nbits
    hwin, mask = win // 2, win - 1
    candidate = (expected & ~mask) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


@dataclass
class _Header:
    first: int
    version: int
    dcid: bytes
    scid: bytes
    ptype: str | None            # None: version negotiation or a version we cannot read further
    token_len: int = 0
    pn_offset: int = 0           # Initial/0-RTT/Handshake: where the packet number starts
    end: int = 0                 # end of this packet in the datagram


def _long_header(buf: bytes, pos: int) -> _Header:
    """The long header starting at ``pos``; raises _Bad when it does not fit."""
    end = len(buf)
    if end - pos < 7:
        raise _Bad("long header shorter than 7 bytes")
    first = buf[pos]
    version = int.from_bytes(buf[pos + 1:pos + 5], "big")
    at = pos + 5
    dlen = buf[at]
    known = _VERSIONS.get(version)
    if known is not None and dlen > MAX_CID_LEN:
        raise _Bad(f"destination connection ID of {dlen} bytes, limit {MAX_CID_LEN}")
    if at + 1 + dlen + 1 > end:
        raise _Bad("destination connection ID runs past the datagram")
    dcid = buf[at + 1:at + 1 + dlen]
    at += 1 + dlen
    slen = buf[at]
    if known is not None and slen > MAX_CID_LEN:
        raise _Bad(f"source connection ID of {slen} bytes, limit {MAX_CID_LEN}")
    if at + 1 + slen > end:
        raise _Bad("source connection ID runs past the datagram")
    scid = buf[at + 1:at + 1 + slen]
    at += 1 + slen
    h = _Header(first, version, dcid, scid, None, end=end)
    if version == VERSION_NEGOTIATION or known is None:
        h.pn_offset = at
        return h                 # the rest of the datagram is this packet
    if not first & 0x40:
        raise _Bad("fixed bit is 0")
    h.ptype = known.types[(first >> 4) & 3]
    if h.ptype == RETRY:
        if end - at < _RETRY_TAG:
            raise _Bad("Retry shorter than its integrity tag")
        h.token_len = end - at - _RETRY_TAG
        h.pn_offset = at
        return h
    if h.ptype == INITIAL:
        tlen, at = _varint(buf, at, end)
        if tlen > end - at:
            raise _Bad(f"token of {tlen} bytes runs past the datagram")
        h.token_len = tlen
        at += tlen
    length, at = _varint(buf, at, end)
    if length > end - at:
        raise _Bad(f"packet length {length} runs past the datagram ({end - at} bytes left)")
    if length < 1:
        raise _Bad("packet length 0")
    h.pn_offset, h.end = at, at + length
    return h


def _gquic(buf: bytes) -> bool:
    """A Google QUIC packet with its version: public flags (version bit,
    an 8-byte connection ID), then "Q0xx"."""
    return (len(buf) >= 13 and buf[0] & 0x81 == 0x01 and buf[0] & 0x08
            and buf[9:10] == b"Q" and buf[10:13].isdigit())


def _gquic_chlo(buf: bytes, direction: Direction) -> QuicClientHello | None:
    """The server name and user agent of a Google QUIC client hello sent in
    the clear (versions before Q046 put a CHLO handshake message, a tag/value
    map, in the first packet's stream 1). None when the packet holds none."""
    at = buf.find(b"CHLO", 13, GQUIC_CHLO_SEARCH)
    if at < 0 or at + 8 > len(buf):
        return None
    count = int.from_bytes(buf[at + 4:at + 6], "little")
    if count > MAX_GQUIC_TAGS:
        return None
    base = at + 8 + 8 * count
    if base > len(buf):
        return None
    values: dict[bytes, bytes] = {}
    prev = 0
    for i in range(count):
        e = at + 8 + 8 * i
        tag, end = buf[e:e + 4], int.from_bytes(buf[e + 4:e + 8], "little")
        if end < prev or base + end > len(buf):
            return None          # offsets must grow and stay inside the packet
        values[tag] = buf[base + prev:base + end]
        prev = end
    sni, ua = values.get(b"SNI\0"), values.get(b"UAID")
    text = (lambda raw: raw.decode("ascii", "backslashreplace")[:MAX_REASON_CHARS] if raw else None)
    return QuicClientHello(direction, int.from_bytes(buf[9:13], "big"), bytes(buf[1:9]), b"",
                           text(sni), (), None, text(ua))


# --- The parser -------------------------------------------------------------
class _Crypto:
    """One direction's CRYPTO stream until its first handshake message is whole."""
    __slots__ = ("prefix", "pieces", "held", "need")

    def __init__(self) -> None:
        self.prefix = bytearray()            # contiguous bytes from offset 0
        self.pieces: dict[int, bytes] = {}   # offset -> bytes past the prefix
        self.held = 0                        # bytes in pieces
        self.need = MAX_CRYPTO_BYTES         # stream bytes wanted (the hello's end once known)

    def add(self, off: int, data: bytes) -> None:
        have = len(self.prefix)
        end = min(off + len(data), self.need)
        if end <= have or off >= end:
            return                           # already held, or past what is wanted
        if off < have:
            data, off = data[have - off:end - off], have
        else:
            data = data[:end - off]
        if off == have:
            self.prefix += data
        else:
            old = self.pieces.get(off)
            if old is not None and len(old) >= len(data):
                return                       # a retransmission: the first copy wins
            if old is None and len(self.pieces) >= MAX_CRYPTO_PIECES:
                raise _Bad(f"more than {MAX_CRYPTO_PIECES} out-of-order CRYPTO pieces")
            self.held += len(data) - (len(old) if old else 0)
            if self.held > MAX_CRYPTO_BYTES:
                raise _Bad(f"more than {MAX_CRYPTO_BYTES} CRYPTO bytes held out of order")
            self.pieces[off] = data
        while self.pieces:                   # pieces the prefix reaches now
            have = len(self.prefix)
            ready = [o for o in self.pieces if o <= have]
            if not ready:
                break
            for o in sorted(ready):
                piece = self.pieces.pop(o)
                self.held -= len(piece)
                have = len(self.prefix)
                if o + len(piece) > have:
                    self.prefix += piece[have - o:]


class _Side:
    __slots__ = ("direction", "crypto", "initials", "hello_done", "dead", "seen_quic", "largest_pn",
                 "eof")

    def __init__(self, direction: Direction) -> None:
        self.direction = direction
        self.crypto = _Crypto()
        self.initials = 0            # Initial packets decrypted or tried since the last reset
        self.hello_done = False      # this side's hello was read: its Initials are only counted now
        self.dead = False            # gave up (Malformed): the rest is ignored
        self.seen_quic = False       # a QUIC packet came from this side
        self.largest_pn = -1         # Initial packet number space
        self.eof = False

    def restart(self) -> None:
        """A new handshake (after a Retry, or a new connection on the 5-tuple)."""
        self.crypto, self.hello_done, self.initials, self.largest_pn = _Crypto(), False, 0, -1


class QuicParser(Parser):
    """QUIC Initial packets of one UDP flow (both directions)."""

    def __init__(self, transport: str = "udp") -> None:
        if transport != "udp":
            raise ProtocolError(f"QUIC runs over udp, not {transport!r}")
        self._sides = (_Side(Direction.TO_SERVER), _Side(Direction.TO_CLIENT))
        # (version, DCID) the Initial keys come from (RFC 9001 section 5.2):
        # the client's first Initial's DCID, after a Retry the DCID the
        # server chose. The client keeps these keys when it moves on to the
        # server's connection ID (RFC 9000 section 7.2).
        self._initial_dcid: tuple[int, bytes] | None = None
        self._server_cids: set[bytes] = set()    # SCIDs of the server's long headers
        self.handshakes = 0                      # the client's handshakes started (restarts + 1)
        self.versions: list[int] = []    # versions seen in long headers, in order
        # Packets seen, by type (coalesced ones one each), as tshark counts them.
        self.packets = {INITIAL: 0, ZERO_RTT: 0, HANDSHAKE: 0, RETRY: 0, "version_negotiation": 0,
                        "short_header": 0, "gquic": 0}
        self.gquic = False               # Google QUIC: its packets are counted, the CHLO read
        self.undecryptable = 0           # Initial packets dropped: no keys yet, or a bad tag
        self.unexpected_frames = 0       # Initials whose decoding a non-Initial frame ended

    # -- Parser API --
    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        if side.eof:
            raise ProtocolError(f"data after end of stream ({direction.name})")
        if side.dead or not data:
            return []
        events: list[Event] = []
        self._datagram(bytes(data), side, events)
        return events

    def receive_eof(self, direction: Direction) -> list[Event]:
        self._sides[direction].eof = True
        return []

    def receive_gap(self, direction: Direction, size: int) -> list[Event]:
        return []                        # datagrams: nothing to resynchronise

    # -- Internals --
    def _give_up(self, side: _Side, reason: str, events: list[Event]) -> None:
        side.dead = True
        side.crypto = _Crypto()
        events.append(Malformed(side.direction, reason, 0))

    def _datagram(self, buf: bytes, side: _Side, events: list[Event]) -> None:
        pos, n = 0, len(buf)
        while pos < n and not side.dead:
            first = buf[pos]
            if not first & 0x80:
                if pos == 0 and (self.gquic or _gquic(buf)):
                    self.packets["gquic"] += 1
                    side.seen_quic = True
                    if not self.gquic and side.direction == Direction.TO_SERVER:
                        hello = _gquic_chlo(buf, side.direction)
                        if hello is not None:
                            side.hello_done = True
                            events.append(hello)
                    self.gquic = True
                elif first & 0x40 and (pos or side.seen_quic or self._sides[1 - side.direction].seen_quic):
                    self.packets["short_header"] += 1   # 1-RTT: runs to the end of the datagram
                elif pos == 0 and not side.seen_quic:
                    self._give_up(side, f"not a QUIC packet: first byte {first:#04x}", events)
                # else: padding or junk after coalesced packets (RFC 9000 12.2): ignored
                return
            try:
                h = _long_header(buf, pos)
            except _Bad as bad:
                if pos == 0 and not side.seen_quic:
                    self._give_up(side, f"not a QUIC packet: {bad}", events)
                return                           # a later packet cut short: the rest is lost
            side.seen_quic = True
            if side.direction == Direction.TO_CLIENT and len(self._server_cids) < MAX_SERVER_CIDS:
                self._server_cids.add(bytes(h.scid))
            if h.version not in self.versions and h.version != VERSION_NEGOTIATION \
                    and len(self.versions) < MAX_VN_VERSIONS:
                self.versions.append(h.version)
            if h.version == VERSION_NEGOTIATION:
                self.packets["version_negotiation"] += 1
                body = buf[h.pn_offset:]
                vs = tuple(int.from_bytes(body[i:i + 4], "big")
                           for i in range(0, min(len(body) // 4, MAX_VN_VERSIONS) * 4, 4))
                events.append(QuicVersionNegotiation(side.direction, h.dcid, h.scid, vs))
                return
            if h.ptype is None:
                return                           # a version we cannot read past its invariants
            self.packets[h.ptype] += 1
            if h.ptype == RETRY:
                events.append(QuicRetry(side.direction, h.version, h.dcid, h.scid, h.token_len))
                if side.direction == Direction.TO_CLIENT and self._initial_dcid is not None \
                        and not self._sides[Direction.TO_SERVER].dead:
                    # The client starts over with the server's SCID as its
                    # DCID: new keys, its hello sent again (and read again:
                    # it may name another server).
                    self._new_handshake((h.version, bytes(h.scid)), events)
                return
            if h.ptype == INITIAL:
                self._initial(buf, pos, h, side, events)
            pos = h.end

    def _new_handshake(self, ref: tuple[int, bytes], events: list[Event]) -> bool:
        """Keys from ``ref`` from now on, both sides' hellos read afresh.
        False (and the client side given up) past MAX_HANDSHAKES."""
        client = self._sides[Direction.TO_SERVER]
        if self.handshakes >= MAX_HANDSHAKES:
            if not client.dead:
                self._give_up(client, f"more than {MAX_HANDSHAKES} QUIC handshakes on one flow", events)
            return False
        self.handshakes += 1
        self._initial_dcid = ref
        self._server_cids.clear()
        for side in self._sides:
            side.restart()
        return True

    def _initial(self, buf: bytes, start: int, h: _Header, side: _Side, events: list[Event]) -> None:
        client = side.direction == Direction.TO_SERVER
        ref, new = self._initial_dcid, False
        if client:
            dcid = bytes(h.dcid)
            if ref is None or ref[0] != h.version or (dcid != ref[1] and dcid not in self._server_cids):
                # The first Initial, or one for another connection on this
                # 5-tuple (a new DCID, another version): a handshake of its
                # own, whose hello the server reads too.
                ref, new = (h.version, dcid), True
        elif ref is None or ref[0] != h.version:
            self.undecryptable += 1              # the client's Initial (its DCID) not seen
            return
        if side.hello_done and not new:
            return                               # counted only: nothing more to learn from this side
        if side.initials >= MAX_INITIAL_PACKETS:
            self._give_up(side, f"no complete {'Client' if client else 'Server'}Hello in "
                                f"{MAX_INITIAL_PACKETS} Initial packets", events)
            return
        side.initials += 1
        k = initial_keys(ref[1], ref[0])[0 if client else 1]
        largest = -1 if new else side.largest_pn
        payload = self._unprotect(buf, start, h, k, largest)
        if payload is None:
            self.undecryptable += 1
            return
        if new:
            if not self._new_handshake(ref, events):
                return
            side.initials = 1                    # this packet, of the new handshake
        side.largest_pn = max(side.largest_pn, payload[1])
        payload = payload[0]
        try:
            self._frames(payload, h, side, events)
        except _Bad as bad:
            self._give_up(side, f"Initial packet: {bad}", events)

    def _unprotect(self, buf: bytes, start: int, h: _Header, k: InitialKeys,
                   largest: int) -> tuple[bytes, int] | None:
        """RFC 9001 section 5.4: header protection off, then the AEAD:
        (plaintext, packet number), or None when the packet is too short or
        does not authenticate."""
        pn_off = h.pn_offset
        if pn_off + 4 + _HP_SAMPLE > h.end:
            return None
        mask = k.hp_mask(buf[pn_off + 4:pn_off + 4 + _HP_SAMPLE])
        first = h.first ^ (mask[0] & 0x0F)
        pn_len = (first & 0x03) + 1
        if pn_off + pn_len + _AEAD_TAG > h.end:
            return None
        pn_bytes = bytes(b ^ m for b, m in zip(buf[pn_off:pn_off + pn_len], mask[1:1 + pn_len]))
        header = bytes([first]) + buf[start + 1:pn_off] + pn_bytes
        pn = decode_packet_number(largest, int.from_bytes(pn_bytes, "big"), pn_len * 8)
        try:
            return k.open(pn, header, buf[pn_off + pn_len:h.end]), pn
        except InvalidTag:
            return None

    def _frames(self, p: bytes, h: _Header, side: _Side, events: list[Event]) -> None:
        pos, end = 0, len(p)
        while pos < end:
            ftype = p[pos]
            if ftype == FRAME_PADDING:
                # A run of PADDING (Initials are padded to 1200 bytes): skipped in one C call.
                pos = end - len(p[pos:].lstrip(b"\0"))
                continue
            ftype, pos = _varint(p, pos, end)
            if ftype == FRAME_PING:
                continue
            if ftype in (FRAME_ACK, FRAME_ACK_ECN):
                _, pos = _varint(p, pos, end)            # largest acknowledged
                _, pos = _varint(p, pos, end)            # ack delay
                count, pos = _varint(p, pos, end)
                _, pos = _varint(p, pos, end)            # first range
                if count > (end - pos) // 2:
                    raise _Bad(f"ACK frame with {count} ranges runs past the packet")
                for _ in range(2 * count + (3 if ftype == FRAME_ACK_ECN else 0)):
                    _, pos = _varint(p, pos, end)
                continue
            if ftype == FRAME_CRYPTO:
                off, pos = _varint(p, pos, end)
                length, pos = _varint(p, pos, end)
                if length > end - pos:
                    raise _Bad(f"CRYPTO frame of {length} bytes runs past the packet")
                side.crypto.add(off, p[pos:pos + length])
                pos += length
                self._hello(h, side, events)
                if side.dead or side.hello_done:
                    return
                continue
            if ftype in (FRAME_CONNECTION_CLOSE, FRAME_APPLICATION_CLOSE):
                code, pos = _varint(p, pos, end)
                frame_type = None
                if ftype == FRAME_CONNECTION_CLOSE:
                    frame_type, pos = _varint(p, pos, end)
                rlen, pos = _varint(p, pos, end)
                if rlen > end - pos:
                    raise _Bad(f"CONNECTION_CLOSE reason of {rlen} bytes runs past the packet")
                reason = p[pos:pos + min(rlen, MAX_REASON_CHARS)].decode("utf-8", "backslashreplace")
                events.append(QuicConnectionClose(side.direction, h.version, code, frame_type,
                                                  reason[:MAX_REASON_CHARS]))
                return
            # A frame an Initial cannot carry (RFC 9000 section 12.4): its
            # length is unknown to us, so decoding of this packet ends here.
            self.unexpected_frames += 1
            return

    def _hello(self, h: _Header, side: _Side, events: list[Event]) -> None:
        c = side.crypto
        if len(c.prefix) < 4:
            return
        client = side.direction == Direction.TO_SERVER
        msg_type = c.prefix[0]
        want = HS_CLIENT_HELLO if client else HS_SERVER_HELLO
        if msg_type != want:
            self._give_up(side, f"handshake starts with message type {msg_type}, not a "
                                f"{'Client' if client else 'Server'}Hello", events)
            return
        length = int.from_bytes(c.prefix[1:4], "big")
        if length > MAX_HELLO_LEN or 4 + length > MAX_CRYPTO_BYTES:
            self._give_up(side, f"hello of {length} bytes, limit {MAX_CRYPTO_BYTES - 4}", events)
            return
        c.need = 4 + length
        if len(c.prefix) < c.need:
            return
        body = bytes(c.prefix[4:c.need])
        side.crypto = _Crypto()                  # nothing more is kept
        side.hello_done = True
        try:
            hello = parse_hello(msg_type, body, side.direction, transport="q")
        except HelloError as e:
            self._give_up(side, f"{'Client' if client else 'Server'}Hello: {e}", events)
            return
        if client:
            events.append(QuicClientHello(side.direction, h.version, bytes(h.dcid), bytes(h.scid),
                                          hello.sni, hello.alpn, hello))
        else:
            events.append(QuicServerHello(side.direction, h.version, bytes(h.dcid), bytes(h.scid), hello))


# --- Detection --------------------------------------------------------------
def probe(data: bytes, direction: Direction) -> float:
    """Rate one datagram as QUIC: a long header of a version we know (an
    Initial from the client, or any long header from the server), or a
    Google QUIC packet with its version."""
    if not data:
        return NO_MATCH
    if not data[0] & 0x80:
        return LIKELY if direction == Direction.TO_SERVER and _gquic(data) else NO_MATCH
    try:
        h = _long_header(data, 0)
    except _Bad:
        return NO_MATCH
    if h.version == VERSION_NEGOTIATION:
        return LIKELY if direction == Direction.TO_CLIENT and len(data) - h.pn_offset >= 4 \
            and (len(data) - h.pn_offset) % 4 == 0 else NO_MATCH
    if h.ptype is None:
        return NO_MATCH          # an unknown version: too little to go on
    if direction == Direction.TO_SERVER and h.ptype == INITIAL:
        # RFC 9000 section 7.2: a client's first DCID is at least 8 bytes.
        if len(h.dcid) >= 8 and len(data) >= MIN_CLIENT_INITIAL_DATAGRAM:
            return CERTAIN
        return LIKELY
    return LIKELY


PLUGIN = ProtocolPlugin(
    name="quic",
    event_kinds=event_kinds(QuicClientHello, QuicServerHello, QuicRetry, QuicVersionNegotiation, QuicConnectionClose),
    probe=probe,
    parser_factory=lambda transport: QuicParser(transport),
    signatures=(
        # A client's first datagram starts with an Initial: long form and
        # fixed bits with the version's Initial type, then the version.
        # Only the client side: a server's first packet may be a Retry or a
        # version negotiation, which an app requirement must not drop.
        Signature(0, b"\xc0\x00\x00\x00\x01", b"\xf0\xff\xff\xff\xff", Direction.TO_SERVER),   # v1: type 0
        Signature(0, b"\xd0\x6b\x33\x43\xcf", b"\xf0\xff\xff\xff\xff", Direction.TO_SERVER),   # v2: type 1
    ),
    transports=frozenset({"udp"}),
    description="QUIC v1/v2 Initial packets decrypted: TLS ClientHello (SNI, ALPN, JA3, JA4 q)",
)
