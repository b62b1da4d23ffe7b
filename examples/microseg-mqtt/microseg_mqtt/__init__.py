"""MQTT for microseg: CONNECT and PUBLISH, enough to identify and log.

MQTT control packets (MQTT 3.1.1 section 2, 5.0 section 2): a fixed header
byte (type in the high nibble), a "remaining length" of 1 to 4 bytes (7 bits
each), then the packet. A client's first packet is CONNECT (type 1), whose
variable header starts with the protocol name as a length-prefixed string:
"MQTT" (3.1.1, 5.0) or "MQIsdp" (3.1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocols.api import (CERTAIN, LIKELY, NO_MATCH, Direction, Event, Malformed, Parser,
                           ProtocolPlugin, Signature)

# A remaining length is at most 4 bytes (MQTT 5.0 section 1.5.5).
MAX_LENGTH_BYTES = 4
# Bytes of one packet kept for parsing. CONNECT and PUBLISH headers fit in
# far less; bigger packets are skipped past their first bytes, not buffered.
MAX_KEPT = 4096
CONNECT, PUBLISH = 1, 3


@dataclass(frozen=True)
class MqttConnect(Event):
    kind: ClassVar[str] = "mqtt_connect"
    protocol: str
    level: int
    client_id: str
    username: str | None


@dataclass(frozen=True)
class MqttPublish(Event):
    kind: ClassVar[str] = "mqtt_publish"
    direction: Direction
    topic: str


def _varlen(buf: bytes, at: int) -> tuple[int, int] | None:
    """(remaining length, bytes it took) or None when incomplete; -1 when bad."""
    value = 0
    for i in range(MAX_LENGTH_BYTES):
        if at + i >= len(buf):
            return None
        b = buf[at + i]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value, i + 1
    return -1, 0


def _string(buf: bytes, at: int) -> tuple[str, int]:
    n = int.from_bytes(buf[at:at + 2], "big")
    if at + 2 + n > len(buf):
        raise ValueError("string past the end of the packet")
    return buf[at + 2:at + 2 + n].decode("utf-8", "replace"), at + 2 + n


class MqttParser(Parser):
    def __init__(self) -> None:
        self._buf = {d: bytearray() for d in Direction}
        self._skip = {d: 0 for d in Direction}
        self._offset = {d: 0 for d in Direction}
        self._dead = set()

    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        if direction in self._dead:
            return []
        out: list[Event] = []
        skip = min(self._skip[direction], len(data))
        self._skip[direction] -= skip
        data = data[skip:]
        buf = self._buf[direction]
        buf += data
        while buf:
            ln = _varlen(buf, 1)
            if ln is None:
                break
            length, used = ln
            if length < 0:
                self._dead.add(direction)
                return out + [Malformed(direction, "remaining length longer than 4 bytes",
                                        self._offset[direction])]
            total = 1 + used + length
            if len(buf) < total and len(buf) < MAX_KEPT:
                break
            packet = bytes(buf[:min(total, MAX_KEPT)])
            ev = self._packet(direction, packet, 1 + used)
            if isinstance(ev, Malformed):
                self._dead.add(direction)
                return out + [ev]
            if ev is not None:
                out.append(ev)
            taken = min(total, len(buf))
            self._skip[direction] = total - taken
            del buf[:taken]
            self._offset[direction] += total
        return out

    def _packet(self, d: Direction, p: bytes, at: int) -> Event | None:
        kind = p[0] >> 4
        try:
            if kind == CONNECT and d == Direction.TO_SERVER:
                proto, at = _string(p, at)
                level, flags = p[at], p[at + 1]
                at += 4                                  # level, flags, keep-alive
                if level >= 5:                           # MQTT 5: properties first
                    ln = _varlen(p, at)
                    if not ln or ln[0] < 0:
                        raise ValueError("bad properties length")
                    at += ln[1] + ln[0]
                client_id, at = _string(p, at)
                if flags & 0x04:                         # will: properties (v5), topic, payload
                    if level >= 5:
                        ln = _varlen(p, at)
                        if not ln or ln[0] < 0:
                            raise ValueError("bad will properties length")
                        at += ln[1] + ln[0]
                    _, at = _string(p, at)
                    _, at = _string(p, at)
                user = _string(p, at)[0] if flags & 0x80 else None
                return MqttConnect(proto, level, client_id, user)
            if kind == PUBLISH:
                topic, _ = _string(p, at)
                return MqttPublish(d, topic)
        except (ValueError, IndexError) as e:
            return Malformed(d, f"MQTT packet type {kind}: {e}", self._offset[d])
        return None


def probe(data: bytes, direction: Direction) -> float:
    if direction != Direction.TO_SERVER or len(data) < 8 or data[0] >> 4 != CONNECT:
        return NO_MATCH
    ln = _varlen(data, 1)
    if not ln or ln[0] < 0:
        return NO_MATCH
    at = 1 + ln[1]
    if data[at:at + 6] == b"\x00\x04MQTT" or data[at:at + 8] == b"\x00\x06MQIsdp":
        return CERTAIN
    return LIKELY if data[at:at + 2] in (b"\x00\x04", b"\x00\x06") else NO_MATCH


# CONNECT with a one-byte remaining length (< 128: nearly every CONNECT):
# type 1 at byte 0, the protocol name from byte 2.
PLUGIN = ProtocolPlugin(
    name="mqtt",
    probe=probe,
    parser_factory=lambda transport: MqttParser(),
    signatures=(
        Signature(0, b"\x10\x00\x00\x04MQTT", b"\xff\x00\xff\xff\xff\xff\xff\xff"),
        Signature(0, b"\x10\x00\x00\x06MQIs", b"\xff\x00\xff\xff\xff\xff\xff\xff"),
    ),
    description="MQTT 3.1 / 3.1.1 / 5.0",
)
