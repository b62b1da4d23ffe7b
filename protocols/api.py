"""The protocol plugin API. Built-in protocols use it exactly as plugins do.

A protocol is a :class:`ProtocolPlugin`: a name, up to
:data:`MAX_SIGNATURES_PER_PLUGIN` short kernel signatures, a ``probe`` that
rates the first bytes of one direction, and a factory for a sans-IO parser.

Parsers follow h11's model: bytes and a direction in, a list of events out.
They do no I/O and know nothing of BPF or asyncio, so the same parser is fed
from a pcap, a socket or the ring buffer. Bad input never raises: the parser
returns a :class:`Malformed` event saying why and where, and ignores that
direction from then on. The only exception a parser may raise is
:class:`ProtocolError`, for misuse by the caller (data after end of stream).
A parser over a byte stream is a :class:`StreamParser`: each direction is a
:class:`StreamSide`, which holds the bytes of an incomplete unit, up to the
parser's named cap.
"""
from __future__ import annotations

import abc
import dataclasses
import enum
import re
from dataclasses import dataclass, field
from typing import Callable, ClassVar

# Kernel signature limits. The fast path compares each signature against the
# first payload packet of a direction as one masked 64-bit load, so a
# signature is at most 8 bytes; the offset is bounded so the load stays inside
# the packet bytes the program reads (bpf/lib/l7.h, MS_L7_WINDOW).
MAX_SIGNATURE_BYTES = 8
MAX_SIGNATURE_OFFSET = 56
# Per protocol: enough for HTTP's common methods plus its response line, small
# enough that the kernel table (sized for every plugin at load) stays tiny.
MAX_SIGNATURES_PER_PLUGIN = 16

# probe() confidences. detection picks the highest; ties go to the protocol
# registered first (built-ins first).
NO_MATCH = 0.0
POSSIBLE = 0.3     # bytes do not contradict the protocol (e.g. printable text)
LIKELY = 0.7       # a distinctive but short marker (e.g. a RESP array header)
CERTAIN = 1.0      # a marker no other protocol here produces (e.g. "SSH-2.0-")

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,15}$")


class ProtocolError(Exception):
    """Caller misuse of a parser (not bad input: that is a Malformed event)."""


class PluginError(ValueError):
    """A plugin declaration that cannot be loaded; the message names the plugin."""


class Direction(enum.IntEnum):
    """Which way bytes travel, relative to the connection's initiator."""
    TO_SERVER = 0   # from the side that opened the flow
    TO_CLIENT = 1


# Both directions, in order, as a tuple: iterating the Enum class itself
# (``for d in Direction``) costs ~1 us more, and every parser a flow gets
# builds its per-direction state from it.
DIRECTIONS = (Direction.TO_SERVER, Direction.TO_CLIENT)


@dataclass(frozen=True)
class Event:
    """Base of every parser event. ``kind`` is stable: logs and rules key on it."""
    kind: ClassVar[str] = "event"


@dataclass(frozen=True)
class Malformed(Event):
    """The parser gave up on one direction of the stream."""
    kind: ClassVar[str] = "malformed"
    direction: Direction
    reason: str
    offset: int          # byte offset in that direction's stream


def event_builder(cls):
    """A faster constructor for the frozen event ``cls`` (its fields in
    order, trailing defaults optional; keywords too). A frozen dataclass's
    __init__ sets each field through object.__setattr__ (about 1 us for an
    HTTP request's 12, for a DNS record's 7); giving the new instance its
    __dict__ whole makes the same object (equal, same hash and repr) in 0.4
    of that. The function is generated, as dataclasses generates __init__,
    so that the dict is one literal (a zip() into update() cost a third
    more). A class with __slots__ or a __post_init__ keeps its own
    constructor."""
    if "__slots__" in cls.__dict__ or hasattr(cls, "__post_init__"):
        return cls
    fields = dataclasses.fields(cls)
    params, defaults = [], {}
    for i, f in enumerate(fields):
        if f.default is not dataclasses.MISSING:
            defaults[f"_default{i}"] = f.default
            params.append(f"{f.name}=_default{i}")
        elif f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: a default factory has no place in an event builder")
        else:
            params.append(f.name)
    items = ", ".join(f"{f.name!r}: {f.name}" for f in fields)
    space = {"_new": object.__new__, "_set": object.__setattr__, "_cls": cls, **defaults}
    exec(f"def build({', '.join(params)}):\n"
         f"    event = _new(_cls)\n"
         f"    _set(event, '__dict__', {{{items}}})\n"
         f"    return event\n", space)
    return space["build"]


class Parser(abc.ABC):
    """A sans-IO parser for one connection (both directions)."""

    @abc.abstractmethod
    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        """Feed the next in-order bytes of ``direction``; return what completed.

        Over TCP ``data`` is any slice of the reassembled stream; over UDP it
        is exactly one datagram's payload.
        """

    def receive_eof(self, direction: Direction) -> list[Event]:
        """``direction`` ended (FIN). Returns events a close completes."""
        return []

    def finished(self, direction: Direction) -> bool:
        """True once nothing more of ``direction`` can become an event: it is
        encrypted from here on (TLS after its ChangeCipherSpec, SSH after its
        KEXINIT), or the parser gave it up. A flow whose parser has finished
        both directions is let go to the kernel (slowpath/engine.py), as a
        flow no parser reads is. Default False: a parser says so only where
        no rule could see anything in the rest (no events, no body a DLP or
        WAF rule reads)."""
        return False

    def receive_gap(self, direction: Direction, size: int) -> list[Event]:
        """``size`` bytes of ``direction`` were lost (reassembly gave up).

        Default: the parser cannot resynchronise, so the direction ends as
        malformed. Parsers that can recover (e.g. at a TLS record) override it.
        """
        return [Malformed(direction, f"gap of {size} bytes in the stream", -1)]


class StreamSide:
    """One direction of a byte-stream parser: the bytes it holds until a unit
    (a line, a message head, a packet) is complete, and where they sit in the
    direction's stream. Each parser's side class adds its own state.

    ``max_buffered`` is the most bytes one direction may hold between calls:
    each parser sets it from its own limits (a unit longer than they allow
    fails the direction before more piles up), and the tests hold every
    parser to it.
    """
    __slots__ = ("direction", "buf", "offset", "eof")
    max_buffered: ClassVar[int]

    def __init__(self, direction: Direction) -> None:
        self.direction = direction
        self.buf = bytearray()      # bytes not consumed yet
        self.offset = 0             # stream offset of buf[0]
        self.eof = False            # receive_eof came: more data is caller misuse

    @property
    def done(self) -> bool:
        """The parser ignores the rest of this direction (given up, or nothing left to read)."""
        return False

    def check_open(self) -> None:
        """Data for this direction is coming: refuse it after the direction's end."""
        if self.eof:
            raise ProtocolError(f"data after end of stream ({self.direction.name})")

    def accept(self, data: bytes) -> bool:
        """Take the next in-order bytes. False when the direction is done:
        they are only counted, not held."""
        self.check_open()
        if self.done:
            self.offset += len(data)
            return False
        self.buf += data
        return True

    def consume(self, n: int) -> None:
        """The first ``n`` held bytes are parsed: let them go."""
        if n:
            del self.buf[:n]
            self.offset += n

    def discard(self) -> None:
        """Let go of everything held (the direction gave up or ended)."""
        self.consume(len(self.buf))


class StreamParser(Parser):
    """A parser over a byte stream, one :class:`StreamSide` per direction in ``_sides``."""
    _sides: dict[Direction, StreamSide]

    def buffered(self, direction: Direction) -> int:
        """Bytes held for ``direction`` (at most its side's ``max_buffered``)."""
        return len(self._sides[direction].buf)


def event_kinds(*classes: type[Event]) -> frozenset[str]:
    """A ProtocolPlugin's ``event_kinds``: the kinds of its parser's event
    classes (one definition each: the class's own ``kind``)."""
    return frozenset(c.kind for c in classes)


@dataclass(frozen=True)
class Signature:
    """A short byte pattern the kernel checks on a direction's first payload.

    ``value`` and ``mask`` have the same length (mask None: all ones); a byte
    matches when ``packet[offset + i] & mask[i] == value[i] & mask[i]``.
    """
    offset: int
    value: bytes
    mask: bytes | None = None
    direction: Direction = Direction.TO_SERVER

    def check(self, owner: str) -> None:
        where = f"protocol {owner!r}: signature at offset {self.offset}"
        if not 1 <= len(self.value) <= MAX_SIGNATURE_BYTES:
            raise PluginError(f"{where}: {len(self.value)} bytes, must be 1..{MAX_SIGNATURE_BYTES}")
        if self.mask is not None and len(self.mask) != len(self.value):
            raise PluginError(f"{where}: mask is {len(self.mask)} bytes, value {len(self.value)}")
        if not 0 <= self.offset <= MAX_SIGNATURE_OFFSET:
            raise PluginError(f"{where}: offset must be 0..{MAX_SIGNATURE_OFFSET}")
        if self.mask is not None and not any(self.mask):
            raise PluginError(f"{where}: mask is all zero, it would match everything")

    def matches(self, payload: bytes) -> bool:
        """What the kernel does, in Python (used by tests and `policy explain`)."""
        end = self.offset + len(self.value)
        if len(payload) < end:
            return False
        mask = self.mask or b"\xff" * len(self.value)
        window = payload[self.offset:end]
        return all((w & m) == (v & m) for w, v, m in zip(window, self.value, mask))


@dataclass(frozen=True)
class ProtocolPlugin:
    """Everything the appliance needs to know about one application protocol."""
    name: str
    probe: Callable[[bytes, Direction], float]
    # Called with the transport ("tcp" or "udp"): DNS frames messages by
    # datagram over UDP and by length prefix over TCP.
    parser_factory: Callable[[str], Parser] | None = None
    signatures: tuple[Signature, ...] = ()
    transports: frozenset[str] = field(default_factory=lambda: frozenset({"tcp"}))
    description: str = ""
    # The event kinds the parser can emit (each its event class's ``kind``;
    # Malformed, which every parser may emit, is implied). The slow path
    # lets a flow go to the kernel once identified when nothing it runs
    # reads any of them (slowpath/engine.py, Engine._unread_release), as
    # Suricata bypasses a flow no rule can match any more. None: not
    # declared, and such a flow is read as before (a plugin's default).
    event_kinds: frozenset[str] | None = None
    # The connection can turn into another protocol mid-flow (STARTTLS, an
    # SSLRequest, HTTP CONNECT/Upgrade): what follows is detected again and
    # read (a TLS ClientHello's SNI, its EVE record), so such a flow is never
    # let go at identification, whatever its own kinds.
    switches: bool = False

    def check(self) -> None:
        if not _NAME.match(self.name or ""):
            raise PluginError(f"protocol name {self.name!r}: must match {_NAME.pattern}")
        if len(self.signatures) > MAX_SIGNATURES_PER_PLUGIN:
            raise PluginError(f"protocol {self.name!r}: {len(self.signatures)} signatures, "
                              f"at most {MAX_SIGNATURES_PER_PLUGIN}")
        for s in self.signatures:
            s.check(self.name)
        if not callable(self.probe):
            raise PluginError(f"protocol {self.name!r}: probe is not callable")
        if self.parser_factory is not None and not callable(self.parser_factory):
            raise PluginError(f"protocol {self.name!r}: parser_factory is not callable")
        if self.event_kinds is not None and (not isinstance(self.event_kinds, frozenset) or not all(
                isinstance(k, str) and k for k in self.event_kinds)):
            raise PluginError(f"protocol {self.name!r}: event_kinds must be a frozenset of event kind names "
                              f"(protocols.api.event_kinds(EventClass, ...)), not {self.event_kinds!r}")
        bad = set(self.transports) - {"tcp", "udp"}
        if bad or not self.transports:
            raise PluginError(f"protocol {self.name!r}: transports must be tcp and/or udp, not {sorted(bad)}")
