"""MQTT 3.1, 3.1.1 and 5.0 control packets over TCP.

Every packet (MQTT 3.1.1 section 2, 5.0 section 2) is a fixed header byte
(packet type in the high nibble, flags in the low one), a "remaining length"
of 1 to 4 bytes (7 bits each, least significant first), then the variable
header and payload. The client opens with CONNECT, naming the protocol
("MQIsdp" level 3 = 3.1, "MQTT" level 4 = 3.1.1, level 5 = 5.0); the level
decides the rest of the connection's encoding: 5.0 adds a property block
(its own length prefix, skipped by length here) to most packets and reason
codes to the acknowledgements.

Only the first MAX_PACKET_HEAD_BYTES of a packet are held: a PUBLISH's
topic and packet id are read from them, its payload (up to 256 MB) is
counted and skipped as it arrives.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocols.api import (CERTAIN, LIKELY, NO_MATCH, POSSIBLE, DIRECTIONS, Direction, Event, Malformed,
                           ProtocolPlugin, Signature, StreamParser, StreamSide, event_kinds)

# The remaining length is at most 4 bytes (MQTT 5.0 1.5.5): 268,435,455.
MAX_LENGTH_BYTES = 4
# The first bytes of a packet held to parse it. Every header we read fits:
# a CONNECT's client id, will topic and user name (each a 2-byte-length
# string, in practice under 256 bytes; the will message and password sit
# between or after them), a PUBLISH topic with its v5 properties, a
# SUBSCRIBE's topic filters. A packet longer than this (a big PUBLISH
# payload, a huge will message) is read from its head and the rest skipped
# unheld; a field past the head is reported missing (None), not an error.
MAX_PACKET_HEAD_BYTES = 8192
MAX_BUFFERED_BYTES = MAX_PACKET_HEAD_BYTES
# Topics reported per SUBSCRIBE / UNSUBSCRIBE: brokers allow hundreds in one
# packet but a log wants the first ones; `topic_count` counts all.
MAX_TOPICS = 64
# Characters kept of a topic, client id or user name for an event (MQTT
# allows 65535-byte strings; a log wants a name).
MAX_TEXT = 512

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)
TYPE_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
              7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
              12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH"}
# Fixed-header flags the specification requires (3.1.1 2.2.2): PUBREL,
# SUBSCRIBE, UNSUBSCRIBE 0b0010, PUBLISH its own, the rest 0.
_REQUIRED_FLAGS = {PUBREL: 2, SUBSCRIBE: 2, UNSUBSCRIBE: 2}
PROTOCOL_NAMES = {b"MQTT", b"MQIsdp"}
LEVELS = (3, 4, 5)
# Before a CONNECT is seen (a capture started mid-connection), packets are
# read as 3.1.1: no property blocks.
DEFAULT_LEVEL = 4


@dataclass(frozen=True)
class MqttPacket(Event):
    """A control packet with nothing more to report (PINGREQ/PINGRESP, or a
    v5 AUTH), and the base of the others: its type and fixed-header flags."""
    kind: ClassVar[str] = "mqtt_packet"
    direction: Direction
    type: int
    flags: int

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, str(self.type))


@dataclass(frozen=True)
class MqttConnect(MqttPacket):
    kind: ClassVar[str] = "mqtt_connect"
    protocol_name: str = ""
    protocol_version: int = 0
    client_id: str | None = None
    username: str | None = None            # None: no user name (or past the head)
    has_username: bool = False
    has_password: bool = False             # the password itself is never read
    clean_session: bool = False
    will: bool = False
    will_retain: bool = False
    will_qos: int = 0
    will_topic: str | None = None
    keep_alive: int = 0


@dataclass(frozen=True)
class MqttConnack(MqttPacket):
    kind: ClassVar[str] = "mqtt_connack"
    session_present: bool = False
    return_code: int = 0                   # 3.x return code, 5.0 reason code


@dataclass(frozen=True)
class MqttPublish(MqttPacket):
    kind: ClassVar[str] = "mqtt_publish"
    topic: str | None = None
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None           # QoS 1 and 2 only
    payload_length: int = 0


@dataclass(frozen=True)
class MqttAck(MqttPacket):
    """PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK (3.x) and DISCONNECT: a
    packet id and/or a 5.0 reason code."""
    kind: ClassVar[str] = "mqtt_ack"
    packet_id: int | None = None
    reason_code: int | None = None


@dataclass(frozen=True)
class MqttSubscribe(MqttPacket):
    """SUBSCRIBE (topics with their requested QoS) or UNSUBSCRIBE (QoS None)."""
    kind: ClassVar[str] = "mqtt_subscribe"
    packet_id: int = 0
    topics: tuple[tuple[str, int | None], ...] = ()
    topic_count: int = 0


@dataclass(frozen=True)
class MqttSuback(MqttPacket):
    """SUBACK (granted QoS / reason codes) or 5.0's UNSUBACK (reason codes)."""
    kind: ClassVar[str] = "mqtt_suback"
    packet_id: int = 0
    codes: tuple[int, ...] = ()


class _Bad(Exception):
    """Inside one packet: what is wrong with it."""


class _Cut(Exception):
    """A field runs past the held head of a longer packet."""


class _Reader:
    __slots__ = ("buf", "pos", "end", "cut")

    def __init__(self, buf: bytes, pos: int, cut: bool) -> None:
        self.buf, self.pos, self.end, self.cut = buf, pos, len(buf), cut

    def need(self, n: int) -> None:
        if self.pos + n > self.end:
            raise _Cut() if self.cut else _Bad("field past the end of the packet")

    def u8(self) -> int:
        self.need(1)
        self.pos += 1
        return self.buf[self.pos - 1]

    def u16(self) -> int:
        self.need(2)
        self.pos += 2
        return int.from_bytes(self.buf[self.pos - 2:self.pos], "big")

    def raw(self) -> bytes:
        n = self.u16()
        self.need(n)
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def text(self) -> str:
        return bytes(self.raw()[:MAX_TEXT]).decode("utf-8", "backslashreplace")

    def skip_properties(self) -> None:
        n = self.varint()
        self.need(n)
        self.pos += n

    def varint(self) -> int:
        value = 0
        for i in range(MAX_LENGTH_BYTES):
            b = self.u8()
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                return value
        raise _Bad("variable byte integer longer than 4 bytes")

    @property
    def left(self) -> int:
        return self.end - self.pos


def _remaining_length(buf: bytearray, at: int) -> tuple[int, int] | None:
    """(remaining length, bytes it took) or None when incomplete; (-1, 0) when bad."""
    value = 0
    for i in range(MAX_LENGTH_BYTES):
        if at + i >= len(buf):
            return None
        b = buf[at + i]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value, i + 1
    return -1, 0


class _Side(StreamSide):
    __slots__ = ("state", "skip", "first", "length", "head_len", "packet_offset")
    max_buffered = MAX_BUFFERED_BYTES

    def __init__(self, direction: Direction) -> None:
        super().__init__(direction)
        self.state = "header"       # header -> head -> (skip) -> header ...; done
        self.skip = 0
        self.first = 0
        self.length = 0
        self.head_len = 0
        self.packet_offset = 0

    @property
    def done(self) -> bool:
        return self.state == "done"


class MqttParser(StreamParser):
    def __init__(self) -> None:
        self._sides = {d: _Side(d) for d in DIRECTIONS}
        self.level = DEFAULT_LEVEL
        self.connected = False              # a CONNECT was seen
        # What the connection said so far (logs, EVE, the corpus tests).
        self.protocol_name: str | None = None
        self.client_id: str | None = None
        self.username: str | None = None
        self.connack_code: int | None = None
        self.topics_published: list[str] = []
        self.topics_subscribed: list[str] = []

    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        if not side.accept(data):
            return []
        events: list[Event] = []
        buf = side.buf
        pos = 0
        while side.state != "done":
            if side.state == "skip":
                n = min(side.skip, len(buf) - pos)
                pos += n
                side.skip -= n
                if side.skip:
                    break
                side.state = "header"
            elif side.state == "header":
                if len(buf) - pos < 2:
                    break
                first = buf[pos]
                if not 1 <= first >> 4 <= 15:
                    self._fail(side, events, f"reserved packet type 0 (byte 0x{first:02x})", side.offset + pos)
                    break
                rl = _remaining_length(buf, pos + 1)
                if rl is None:
                    break
                if rl[0] < 0:
                    self._fail(side, events, "remaining length longer than 4 bytes", side.offset + pos)
                    break
                side.first, side.length = first, rl[0]
                side.packet_offset = side.offset + pos
                side.head_len = min(side.length, MAX_PACKET_HEAD_BYTES)
                pos += 1 + rl[1]
                side.state = "head"
            else:   # head
                if len(buf) - pos < side.head_len:
                    break
                head = bytes(buf[pos:pos + side.head_len])
                pos += side.head_len
                side.skip = side.length - side.head_len
                side.state = "skip"
                self._packet(side, head, events)
        side.consume(len(buf) if side.done else pos)
        return events

    def receive_eof(self, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        side.eof = True
        if side.state == "done" or (side.state == "header" and not side.buf):
            return []
        side.state = "done"
        side.discard()
        return [Malformed(direction, "stream ended inside a packet", side.offset)]

    def receive_gap(self, direction: Direction, size: int) -> list[Event]:
        side = self._sides[direction]
        if side.state == "done":
            return []
        side.state = "done"
        side.discard()
        return [Malformed(direction, f"gap of {size} bytes in the stream", -1)]

    def _fail(self, side: _Side, events: list[Event], reason: str, at: int) -> None:
        events.append(Malformed(side.direction, reason, at))
        side.state = "done"

    def _packet(self, side: _Side, head: bytes, events: list[Event]) -> None:
        ptype, flags = side.first >> 4, side.first & 0x0F
        name = TYPE_NAMES[ptype]
        want = _REQUIRED_FLAGS.get(ptype, 0)
        if ptype != PUBLISH and flags != want and self.level != 3:
            # (3.1 clients set QoS 1 on SUBSCRIBE/UNSUBSCRIBE/PUBREL the same
            # way; we only hold 3.1.1 and 5.0 to the rule.)
            return self._fail(side, events, f"{name} with flags 0x{flags:x}", side.packet_offset)
        r = _Reader(head, 0, side.length > len(head))
        try:
            ev = self._read(side.direction, ptype, flags, r, side.length)
        except _Bad as e:
            return self._fail(side, events, f"{name}: {e}", side.packet_offset)
        except _Cut:
            ev = MqttPacket(side.direction, ptype, flags)
        events.append(ev)

    def _read(self, d: Direction, ptype: int, flags: int, r: _Reader, length: int) -> Event:
        v5 = self.level == 5
        if ptype == CONNECT:
            return self._connect(d, flags, r)
        if ptype == CONNACK:
            session, code = r.u8() & 1, r.u8()
            self.connack_code = code
            return MqttConnack(d, ptype, flags, bool(session), code)
        if ptype == PUBLISH:
            qos = (flags >> 1) & 3
            if qos == 3:
                raise _Bad("QoS 3")
            try:
                topic = r.text()
                packet_id = r.u16() if qos else None
                if v5:
                    r.skip_properties()
            except _Cut:
                topic = packet_id = None
            if topic is not None and len(self.topics_published) < MAX_TOPICS \
                    and topic not in self.topics_published:
                self.topics_published.append(topic)
            return MqttPublish(d, ptype, flags, topic, qos, bool(flags & 1), bool(flags & 8), packet_id,
                               max(0, length - r.pos) if topic is not None else 0)
        if ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            pid = r.u16()
            code = r.u8() if v5 and r.left else None
            return MqttAck(d, ptype, flags, pid, code)
        if ptype in (SUBSCRIBE, UNSUBSCRIBE):
            pid = r.u16()
            if v5:
                r.skip_properties()
            topics = []
            count = 0
            while r.left:
                topic = r.text()
                qos = None
                if ptype == SUBSCRIBE:
                    opts = r.u8()
                    qos = opts & 3
                    if qos == 3:
                        raise _Bad("requested QoS 3")
                count += 1
                if len(topics) < MAX_TOPICS:
                    topics.append((topic, qos))
                if ptype == SUBSCRIBE and topic not in self.topics_subscribed \
                        and len(self.topics_subscribed) < MAX_TOPICS:
                    self.topics_subscribed.append(topic)
            if not count and not r.cut:
                raise _Bad("no topic filter")
            return MqttSubscribe(d, ptype, flags, pid, tuple(topics), count)
        if ptype == SUBACK or (ptype == UNSUBACK and v5):
            pid = r.u16()
            if v5:
                r.skip_properties()
            return MqttSuback(d, ptype, flags, pid, tuple(r.buf[r.pos:r.end]))
        if ptype == UNSUBACK:
            return MqttAck(d, ptype, flags, r.u16(), None)
        if ptype == DISCONNECT:
            return MqttAck(d, ptype, flags, None, r.u8() if r.left else None)
        if ptype == AUTH and not v5:
            raise _Bad("AUTH before MQTT 5.0")
        if ptype in (PINGREQ, PINGRESP) and length:
            raise _Bad(f"remaining length {length}, must be 0")
        return MqttPacket(d, ptype, flags)

    def _connect(self, d: Direction, flags: int, r: _Reader) -> MqttConnect:
        name = r.raw()
        if bytes(name) not in PROTOCOL_NAMES:
            raise _Bad(f"protocol name {bytes(name[:16])!r}")
        level = r.u8()
        if level not in LEVELS:
            raise _Bad(f"protocol level {level}")
        cflags = r.u8()
        if cflags & 1:
            raise _Bad("reserved connect flag set")
        keep_alive = r.u16()
        self.level, self.connected = level, True
        self.protocol_name = name.decode("ascii")
        has_user, has_pass, will = bool(cflags & 0x80), bool(cflags & 0x40), bool(cflags & 0x04)
        client_id = username = will_topic = None
        try:
            if level == 5:
                r.skip_properties()
            client_id = r.text()
            if will:
                if level == 5:
                    r.skip_properties()
                will_topic = r.text()
                r.raw()                         # the will message
            if has_user:
                username = r.text()
        except _Cut:
            pass
        self.client_id, self.username = client_id, username
        return MqttConnect(d, CONNECT, flags, self.protocol_name, level, client_id, username, has_user,
                           has_pass, bool(cflags & 0x02), will, bool(cflags & 0x20), (cflags >> 3) & 3,
                           will_topic, keep_alive)


def probe(data: bytes, direction: Direction) -> float:
    """Rate the first bytes of one direction as MQTT: a CONNECT naming the
    protocol from the client, a CONNACK from the server."""
    if len(data) < 4:
        return NO_MATCH
    rl = _remaining_length(bytearray(data[:5]), 1)
    if rl is None or rl[0] < 0:
        return NO_MATCH
    at = 1 + rl[1]
    if direction == Direction.TO_SERVER:
        if data[0] != 0x10:
            return NO_MATCH
        name = data[at:at + 8]
        if name.startswith(b"\x00\x04MQTT") or name.startswith(b"\x00\x06MQIsdp"):
            return CERTAIN
        return LIKELY if len(name) < 6 and (b"\x00\x04MQTT".startswith(name)
                                            or b"\x00\x06MQIsdp".startswith(name)) else NO_MATCH
    # CONNACK: 3.x is exactly 4 bytes (flags 0/1, code 0..5); 5.0 adds properties.
    if data[0] == 0x20 and data[2] <= 1:
        if rl[0] == 2 and data[3] <= 5:
            return POSSIBLE
        if rl[0] >= 3 and (data[3] == 0 or data[3] >= 0x80):
            return POSSIBLE
    return NO_MATCH


# A CONNECT with a one-byte remaining length (nearly every CONNECT is under
# 128 bytes) has the protocol name from byte 2. One (offset, mask) shape for
# both names: the kernel compares few shapes (MS_L7_SHAPES) and every
# protocol spends them; a longer CONNECT is left to the slow path's probe.
_SKIP1 = b"\xff\x00\xff\xff\xff\xff\xff\xff"

PLUGIN = ProtocolPlugin(
    name="mqtt",
    event_kinds=event_kinds(MqttPacket, MqttConnect, MqttConnack, MqttPublish, MqttAck, MqttSubscribe, MqttSuback),
    probe=probe,
    parser_factory=lambda transport: MqttParser(),
    signatures=(
        Signature(0, b"\x10\x00\x00\x04MQTT", _SKIP1),
        Signature(0, b"\x10\x00\x00\x06MQIs", _SKIP1),
    ),
    transports=frozenset({"tcp"}),
    description="MQTT 3.1 / 3.1.1 / 5.0: CONNECT (client id, user, level), CONNACK, PUBLISH and "
                "SUBSCRIBE topics, acknowledgements",
)
