"""NATS for microseg: INFO, CONNECT, PUB / SUB / MSG, enough to identify and log.

The NATS client protocol (docs.nats.io, "Client Protocol") is line based:
an operation name, arguments separated by spaces, CR LF. The server speaks
first with ``INFO {json}``; the client answers ``CONNECT {json}``. ``PUB
<subject> [reply-to] <#bytes>`` (client) and ``MSG <subject> <sid>
[reply-to] <#bytes>`` (server) are followed by that many payload bytes and
CR LF; ``HPUB``/``HMSG`` carry a header size too. PING, PONG, +OK and -ERR
complete the set.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from protocols.api import (CERTAIN, NO_MATCH, Direction, Event, Malformed, ProtocolPlugin, Signature,
                           StreamParser, StreamSide)

# Longest control line read. NATS servers refuse lines over max_control_line
# (4096 by default); an INFO with a long cluster URL list can pass 1 KB.
MAX_LINE = 4096
# Payloads are skipped by their declared length, never held; NATS's
# max_payload defaults to 1 MB and is at most 64 MB, so a larger number is not NATS.
MAX_PAYLOAD = 64 * 1024 * 1024
_OPS = {b"INFO", b"CONNECT", b"PUB", b"HPUB", b"SUB", b"UNSUB", b"MSG", b"HMSG", b"PING", b"PONG",
        b"+OK", b"-ERR"}


@dataclass(frozen=True)
class NatsInfo(Event):
    kind: ClassVar[str] = "nats_info"
    server_id: str | None
    version: str | None


@dataclass(frozen=True)
class NatsConnect(Event):
    kind: ClassVar[str] = "nats_connect"
    name: str | None
    user: str | None


@dataclass(frozen=True)
class NatsMessage(Event):
    """PUB/HPUB from the client, MSG/HMSG from the server, SUB/UNSUB."""
    kind: ClassVar[str] = "nats_message"
    direction: Direction
    op: str
    subject: str
    size: int | None


def _json(raw: bytes) -> dict:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):     # not JSON, or nested past the interpreter's stack
        return {}
    return doc if isinstance(doc, dict) else {}


def _str(v) -> str | None:
    return v if isinstance(v, str) else None


class _Side(StreamSide):
    __slots__ = ("skip", "dead")
    max_buffered = MAX_LINE

    def __init__(self, direction: Direction) -> None:
        super().__init__(direction)
        self.skip = 0        # payload bytes (and their CR LF) still to pass
        self.dead = False

    @property
    def done(self) -> bool:
        return self.dead


class NatsParser(StreamParser):
    def __init__(self) -> None:
        self._sides = {d: _Side(d) for d in Direction}

    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        if not side.accept(data):
            return []
        out: list[Event] = []
        buf, pos = side.buf, 0
        while not side.dead:
            if side.skip:
                n = min(side.skip, len(buf) - pos)
                pos += n
                side.skip -= n
                if side.skip:
                    break
                continue
            nl = buf.find(b"\n", pos, pos + MAX_LINE)
            if nl < 0:
                if len(buf) - pos >= MAX_LINE:
                    out.append(Malformed(direction, f"no line end within {MAX_LINE} bytes", side.offset + pos))
                    side.dead = True
                break
            line = bytes(buf[pos:nl]).rstrip(b"\r")
            at = side.offset + pos
            pos = nl + 1
            reason = self._line(direction, side, line, out)
            if reason:
                out.append(Malformed(direction, reason, at))
                side.dead = True
        side.consume(len(buf) if side.dead else pos)
        return out

    def _line(self, d: Direction, side: _Side, line: bytes, out: list[Event]) -> str | None:
        op, _, rest = line.partition(b" ")
        op = op.upper()
        if op not in _OPS:
            return f"not a NATS operation: {line[:20]!r}"
        args = rest.split()
        if op == b"INFO":
            doc = _json(rest)
            out.append(NatsInfo(_str(doc.get("server_id")), _str(doc.get("version"))))
        elif op == b"CONNECT":
            doc = _json(rest)
            out.append(NatsConnect(_str(doc.get("name")), _str(doc.get("user"))))
        elif op in (b"PUB", b"HPUB", b"MSG", b"HMSG", b"SUB", b"UNSUB"):
            if not args:
                return f"{op.decode()} without a subject"
            size = None
            if op in (b"PUB", b"HPUB", b"MSG", b"HMSG"):
                if not args[-1].isdigit() or int(args[-1]) > MAX_PAYLOAD:
                    return f"{op.decode()} payload size {args[-1][:20]!r}"
                size = int(args[-1])
                side.skip = size + 2          # the payload and its CR LF
            out.append(NatsMessage(d, op.decode(), args[0].decode("utf-8", "backslashreplace"), size))
        return None


def probe(data: bytes, direction: Direction) -> float:
    if direction == Direction.TO_CLIENT:
        return CERTAIN if data.startswith(b"INFO {") else NO_MATCH
    return CERTAIN if data.startswith(b"CONNECT {") else NO_MATCH


PLUGIN = ProtocolPlugin(
    name="nats",
    probe=probe,
    parser_factory=lambda transport: NatsParser(),
    signatures=(
        # The server speaks first. (The client's "CONNECT {" would start
        # like HTTP's CONNECT method, whose signature the kernel tries
        # first: the slow path's probe tells them apart.)
        Signature(0, b"INFO {", direction=Direction.TO_CLIENT),
    ),
    description="NATS client protocol: INFO, CONNECT, PUB/SUB/MSG subjects",
)
