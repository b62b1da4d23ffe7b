"""SSH identification: each side's version line and its first KEXINIT.

What a gateway can see of SSH is the clear-text start of the connection
(RFC 4253): each side sends an identification line
``SSH-protoversion-softwareversion SP comments CRLF`` (the server may send
other lines first), then a binary packet carrying SSH_MSG_KEXINIT, the lists
of algorithms it offers. Everything after that is encrypted, so the parser
stops there. The algorithm lists give HASSH fingerprints (the client's
``kex;enc;mac;comp`` offered for client-to-server, the server's for
server-to-client, MD5 of that string), which SIEMs use to recognise clients.
"""
from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from typing import ClassVar

from protocols.api import (CERTAIN, LIKELY, NO_MATCH, DIRECTIONS, Direction, Event, Malformed, ProtocolPlugin,
                           Signature, StreamParser, StreamSide, event_kinds)

# RFC 4253 4.2: the identification line is at most 255 characters including
# the CR LF. Real implementations keep to it, so a longer line is not SSH.
MAX_BANNER_BYTES = 255
# The server may send lines before its identification (RFC 4253 4.2; seen as
# "this host is monitored" notices or TCP wrappers' messages). The RFC sets no
# bound; these notices are a few lines, so 8 KiB is generous and keeps what we
# buffer while looking for "SSH-" small.
MAX_PREBANNER_BYTES = 8192
# RFC 4253 6.1: every implementation must accept packets of up to 35000 bytes
# in total, so a sender may not rely on more. KEXINIT is usually under 2 KiB
# even with post-quantum algorithm names, so this only bounds the buffer.
MAX_PACKET_BYTES = 35000
# What one direction holds between calls: a pre-banner line (under
# MAX_PREBANNER_BYTES), an identification line (under MAX_BANNER_BYTES) or
# an incomplete packet (its 4-byte length plus at most MAX_PACKET_BYTES).
MAX_BUFFERED_BYTES = max(MAX_PREBANNER_BYTES, MAX_BANNER_BYTES, 4 + MAX_PACKET_BYTES)

MSG_IGNORE = 2
MSG_DEBUG = 4
MSG_KEXINIT = 20

_KEXINIT_LISTS = 10
_BANNER_START = re.compile(rb"SSH-\d+\.\d+-")


@dataclass(frozen=True)
class SshBanner(Event):
    """One side's identification line."""
    kind: ClassVar[str] = "ssh_banner"
    direction: Direction
    proto_version: str          # as sent: "2.0", "1.99", "1.5"
    software: str               # "OpenSSH_9.6p1" (may contain '-': "APACHE-SSHD-2.5.0")
    comments: str | None        # after the first space, None when absent
    raw: str                    # the whole line without CR LF

    @property
    def speaks_v2(self) -> bool:
        # RFC 4253 5.1: a server announcing 1.99 accepts both SSH 1 and SSH 2.
        return self.proto_version in ("2.0", "1.99")


@dataclass(frozen=True)
class SshKexInit(Event):
    """One side's SSH_MSG_KEXINIT: the algorithms it offers, in preference order."""
    kind: ClassVar[str] = "ssh_kexinit"
    direction: Direction
    kex_algorithms: tuple[str, ...]
    server_host_key_algorithms: tuple[str, ...]
    encryption_client_to_server: tuple[str, ...]
    encryption_server_to_client: tuple[str, ...]
    mac_client_to_server: tuple[str, ...]
    mac_server_to_client: tuple[str, ...]
    compression_client_to_server: tuple[str, ...]
    compression_server_to_client: tuple[str, ...]
    first_kex_packet_follows: bool
    # HASSH for the client's KEXINIT, HASSH-server for the server's: the
    # algorithms used in the direction this side sends.
    hassh_algorithms: str
    hassh: str


def _text(raw: bytes) -> str:
    # The RFC asks for US-ASCII; keep any other byte visible instead of failing.
    return raw.decode("ascii", "backslashreplace")


class _Side(StreamSide):
    __slots__ = ("state", "prebanner", "banner")
    max_buffered = MAX_BUFFERED_BYTES

    def __init__(self, direction: Direction) -> None:
        super().__init__(direction)
        self.state = "banner"       # banner -> packet -> done
        self.prebanner = 0          # bytes of pre-banner lines skipped
        self.banner: SshBanner | None = None

    @property
    def done(self) -> bool:
        return self.state == "done"


class SshParser(StreamParser):
    def __init__(self) -> None:
        self._sides = {d: _Side(d) for d in DIRECTIONS}

    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        if not side.accept(data):
            return []
        events: list[Event] = []
        while side.state != "done":
            if side.state == "banner":
                progressed = self._banner(side, direction, events)
            else:
                progressed = self._packet(side, direction, events)
            if not progressed:
                break
        if side.done:
            side.discard()
        return events

    def finished(self, direction: Direction) -> bool:
        """Past its KEXINIT (the rest is key exchange, then encrypted), or given up."""
        return self._sides[direction].done

    def receive_eof(self, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        side.eof = True
        if side.state == "done" or not side.buf:
            return []
        what = "identification line" if side.state == "banner" else "binary packet"
        side.state = "done"
        return [Malformed(direction, f"stream ended inside the {what}", side.offset)]

    def receive_gap(self, direction: Direction, size: int) -> list[Event]:
        side = self._sides[direction]
        if side.state == "done":      # nothing left we would parse
            return []
        side.state = "done"
        side.buf.clear()
        return [Malformed(direction, f"gap of {size} bytes in the stream", -1)]

    # --- identification line -------------------------------------------------

    def _fail(self, side: _Side, direction: Direction, events: list[Event], reason: str,
              at: int = 0) -> bool:
        events.append(Malformed(direction, reason, side.offset + at))
        side.state = "done"
        return False

    def _banner(self, side: _Side, direction: Direction, events: list[Event]) -> bool:
        buf = side.buf
        nl = buf.find(b"\n")
        looks_ssh = buf[:4] == b"SSH-"[:len(buf)] if len(buf) < 4 else buf.startswith(b"SSH-")
        if nl < 0:
            if looks_ssh:
                if len(buf) >= MAX_BANNER_BYTES:
                    return self._fail(side, direction, events,
                                      f"identification line longer than {MAX_BANNER_BYTES} bytes")
                return False
            self._not_banner(side, direction, events, len(buf))
            return False        # allowed or not, nothing more to do until a newline
        line_len = nl + 1
        if not looks_ssh:
            if not self._not_banner(side, direction, events, line_len):
                return False
            side.consume(line_len)
            side.prebanner += line_len
            return True
        if line_len > MAX_BANNER_BYTES:
            return self._fail(side, direction, events,
                              f"identification line longer than {MAX_BANNER_BYTES} bytes")
        line = bytes(buf[:nl])
        if line.endswith(b"\r"):      # CR LF per RFC; a bare LF is tolerated (old OpenSSH)
            line = line[:-1]
        if b"\x00" in line:
            return self._fail(side, direction, events, "NUL in the identification line")
        proto, sep, rest = line[4:].partition(b"-")
        software, space, comments = rest.partition(b" ")
        if not sep or not proto or not software:
            return self._fail(side, direction, events,
                              "identification line lacks protocol or software version")
        banner = SshBanner(direction, _text(proto), _text(software),
                           _text(comments) if space else None, _text(line))
        events.append(banner)
        side.banner = banner
        side.consume(line_len)
        # After an SSH 1 line comes SSH 1's packet format, which we do not parse.
        side.state = "packet" if banner.speaks_v2 else "done"
        return True

    def _not_banner(self, side: _Side, direction: Direction, events: list[Event],
                    line_len: int) -> bool:
        """A line (or partial line) that is not the identification: allowed or not."""
        if direction == Direction.TO_SERVER:
            # RFC 4253 4.2: only the server may send lines before its version.
            return self._fail(side, direction, events,
                              "client data does not start with 'SSH-'")
        if side.prebanner + line_len > MAX_PREBANNER_BYTES:
            return self._fail(side, direction, events,
                              f"no identification line in the first {MAX_PREBANNER_BYTES} bytes")
        return True

    # --- binary packets ------------------------------------------------------

    def _peer_speaks_v1(self, direction: Direction) -> bool:
        peer = self._sides[Direction(1 - direction)].banner
        return peer is not None and not peer.speaks_v2

    def _packet(self, side: _Side, direction: Direction, events: list[Event]) -> bool:
        if self._peer_speaks_v1(direction):
            # A 1.99 server talking to an SSH 1 client continues in SSH 1.
            side.state = "done"
            return False
        buf = side.buf
        if len(buf) < 5:
            return False
        packet_len, pad_len = struct.unpack_from(">IB", buf)
        if packet_len > MAX_PACKET_BYTES:
            return self._fail(side, direction, events,
                              f"packet length {packet_len} over {MAX_PACKET_BYTES}")
        if pad_len + 2 > packet_len:      # padding byte + message number + padding
            return self._fail(side, direction, events,
                              f"padding length {pad_len} does not fit packet length {packet_len}")
        total = 4 + packet_len
        if len(buf) < total:
            return False
        payload = bytes(buf[5:4 + packet_len - pad_len])
        msg = payload[0]
        if msg in (MSG_IGNORE, MSG_DEBUG):       # allowed anywhere, carry nothing for us
            side.consume(total)
            return True
        if msg != MSG_KEXINIT:
            return self._fail(side, direction, events,
                              f"first packet is message {msg}, not KEXINIT")
        kexinit = self._kexinit(payload, direction)
        if kexinit is None:
            return self._fail(side, direction, events, "KEXINIT truncated", 5)
        events.append(kexinit)
        side.state = "done"     # the next packets are key exchange, then encrypted
        return False

    def _kexinit(self, payload: bytes, direction: Direction) -> SshKexInit | None:
        pos = 1 + 16                                  # message number, cookie
        lists: list[bytes] = []
        for _ in range(_KEXINIT_LISTS):
            if pos + 4 > len(payload):
                return None
            (n,) = struct.unpack_from(">I", payload, pos)
            pos += 4
            if pos + n > len(payload):
                return None
            lists.append(payload[pos:pos + n])
            pos += n
        if pos + 5 > len(payload):                     # boolean + reserved uint32
            return None
        follows = payload[pos] != 0
        names = [tuple(_text(x).split(",")) if x else () for x in lists]
        if direction == Direction.TO_SERVER:
            enc, mac, comp = lists[2], lists[4], lists[6]
        else:
            enc, mac, comp = lists[3], lists[5], lists[7]
        algorithms = _text(b";".join((lists[0], enc, mac, comp)))
        digest = hashlib.md5(algorithms.encode(), usedforsecurity=False).hexdigest()
        return SshKexInit(direction, *names[:8], first_kex_packet_follows=follows,
                          hassh_algorithms=algorithms, hassh=digest)


def probe(data: bytes, direction: Direction) -> float:
    """Rate the first bytes of one direction as SSH."""
    if _BANNER_START.match(data):
        return CERTAIN
    if data.startswith(b"SSH-") or (len(data) < 4 and data and b"SSH-".startswith(data)):
        return LIKELY         # cut short before the version
    if direction == Direction.TO_CLIENT:
        # Lines before the server's identification: look for it at a line start.
        if re.search(rb"\nSSH-\d+\.\d+-", data[:MAX_PREBANNER_BYTES]):
            return LIKELY
    return NO_MATCH


PLUGIN = ProtocolPlugin(
    name="ssh",
    event_kinds=event_kinds(SshBanner, SshKexInit),
    probe=probe,
    parser_factory=lambda transport: SshParser(),
    signatures=(
        Signature(0, b"SSH-", direction=Direction.TO_SERVER),
        Signature(0, b"SSH-", direction=Direction.TO_CLIENT),
    ),
    transports=frozenset({"tcp"}),
    description="SSH identification lines and KEXINIT (HASSH); encrypted after that",
)
