"""Apache Kafka wire protocol: request and response headers, topics, groups.

Every message is a frame: a 4-byte big-endian length, then the message. A
request starts with its header (api key, api version, correlation id, and
from header v1 on the client id; header v2, used by the "flexible" versions
of each API, adds tagged fields); the response starts with the same
correlation id (header v1 adds tagged fields) and is read by the request it
answers, since nothing in a response names its API. Flexible versions
(KIP-482) encode strings and arrays compactly (unsigned-varint length + 1)
and end each structure with tagged fields; which versions are flexible is
per API (FLEXIBLE_FROM, from Apache Kafka's message definitions,
clients/src/main/resources/common/message/*.json).

From the body we read what an allow-list or a log wants: the topics of
Produce, Fetch, ListOffsets, Metadata, OffsetCommit and OffsetFetch, the
group of OffsetCommit / OffsetFetch / FindCoordinator and the consumer-group
calls, and, in responses, topics and error codes where cheap (Produce,
Fetch, ListOffsets, Metadata, OffsetCommit, OffsetFetch; error codes of
ApiVersions, FindCoordinator and the group calls). Only the first
FRAME_HEAD_BYTES of a frame are kept; the rest is skipped by counting, so
a 50 MB Fetch response costs FRAME_HEAD_BYTES of memory.
"""
from __future__ import annotations

import re
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar

from protocols.api import (CERTAIN, LIKELY, NO_MATCH, POSSIBLE, DIRECTIONS, Direction, Event, Malformed,
                           ProtocolPlugin, StreamParser, StreamSide, event_kinds)

# What we keep of one frame. A request's header and its topic list sit at
# the start of the frame (Produce's records come after each topic's name),
# and 64 KiB holds the header and the topics of any request a client builds
# except a Produce of many large batches, whose later topics are then not
# seen (topics_complete=False). Kafka frames run to 100 MiB (the broker's
# socket.request.max.bytes) and Fetch responses to fetch.max.bytes (50 MiB):
# the rest of a frame is skipped by counting, never held.
FRAME_HEAD_BYTES = 64 * 1024
# What one direction holds between calls: a length prefix (under 4 bytes) or
# the head of the frame being read.
MAX_BUFFERED_BYTES = FRAME_HEAD_BYTES
# The frame length is an int32; a length with the sign bit set is not Kafka.
MAX_FRAME_BYTES = 0x7FFFFFFF
# The largest request a broker accepts by default (socket.request.max.bytes,
# 100 MiB). Only the probe uses it: a first frame longer than this is far
# more likely another protocol's bytes than a Kafka request.
PROBE_MAX_FRAME_BYTES = 100 * 1024 * 1024
# Requests waiting for their response, per connection. Clients pipeline up
# to max.in.flight.requests.per.connection (default 5) and brokers answer in
# order; 1024 leaves room for any client while bounding a flood of
# requests whose answers never come (the oldest is forgotten first).
MAX_PENDING = 1024
# Topics and error codes kept per event: a Metadata or Fetch of a whole
# cluster lists thousands; a log line wants the first ones.
MAX_TOPICS = 64
MAX_ERROR_CODES = 16
# Bytes kept of a client id, topic or group name. Kafka caps topic names at
# 249 characters; client ids and group ids are not capped by Kafka, but a
# longer one is cut for the log (an int16 string is at most 32767 bytes).
MAX_NAME_BYTES = 256
# Tagged fields per structure and the elements of one array we walk: a
# sanity bound on declared counts (each element costs at least a byte, so
# the frame head bounds the work anyway).
MAX_TAGGED_FIELDS = 1024
# Api versions the probe accepts: Kafka's newest version of any API is
# under 20 (Fetch 17 in Kafka 4.0); room for a few releases more.
PROBE_MAX_API_VERSION = 24

# API names (Kafka's protocol guide) and the first flexible version of each
# (None: never flexible). The flexible version decides the header version
# and the body's string/array encoding.
API_NAMES = {
    0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 4: "LeaderAndIsr",
    5: "StopReplica", 6: "UpdateMetadata", 7: "ControlledShutdown", 8: "OffsetCommit",
    9: "OffsetFetch", 10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat", 13: "LeaveGroup",
    14: "SyncGroup", 15: "DescribeGroups", 16: "ListGroups", 17: "SaslHandshake",
    18: "ApiVersions", 19: "CreateTopics", 20: "DeleteTopics", 21: "DeleteRecords",
    22: "InitProducerId", 23: "OffsetForLeaderEpoch", 24: "AddPartitionsToTxn",
    25: "AddOffsetsToTxn", 26: "EndTxn", 27: "WriteTxnMarkers", 28: "TxnOffsetCommit",
    29: "DescribeAcls", 30: "CreateAcls", 31: "DeleteAcls", 32: "DescribeConfigs",
    33: "AlterConfigs", 34: "AlterReplicaLogDirs", 35: "DescribeLogDirs", 36: "SaslAuthenticate",
    37: "CreatePartitions", 38: "CreateDelegationToken", 39: "RenewDelegationToken",
    40: "ExpireDelegationToken", 41: "DescribeDelegationToken", 42: "DeleteGroups",
    43: "ElectLeaders", 44: "IncrementalAlterConfigs", 45: "AlterPartitionReassignments",
    46: "ListPartitionReassignments", 47: "OffsetDelete", 48: "DescribeClientQuotas",
    49: "AlterClientQuotas", 50: "DescribeUserScramCredentials", 51: "AlterUserScramCredentials",
    52: "Vote", 53: "BeginQuorumEpoch", 54: "EndQuorumEpoch", 55: "DescribeQuorum",
    56: "AlterPartition", 57: "UpdateFeatures", 58: "Envelope", 59: "FetchSnapshot",
    60: "DescribeCluster", 61: "DescribeProducers", 62: "BrokerRegistration",
    63: "BrokerHeartbeat", 64: "UnregisterBroker", 65: "DescribeTransactions",
    66: "ListTransactions", 67: "AllocateProducerIds", 68: "ConsumerGroupHeartbeat",
    69: "ConsumerGroupDescribe", 70: "ControllerRegistration", 71: "GetTelemetrySubscriptions",
    72: "PushTelemetry", 73: "AssignReplicasToDirs", 74: "ListClientMetricsResources",
    75: "DescribeTopicPartitions", 76: "ShareGroupHeartbeat", 77: "ShareGroupDescribe",
    78: "ShareFetch", 79: "ShareAcknowledge", 80: "AddRaftVoter", 81: "RemoveRaftVoter",
    82: "UpdateRaftVoter", 83: "InitializeShareGroupState", 84: "ReadShareGroupState",
    85: "WriteShareGroupState", 86: "DeleteShareGroupState", 87: "ReadShareGroupStateSummary",
}
_FLEX = {0: 9, 1: 12, 2: 6, 3: 9, 4: 4, 5: 2, 6: 6, 7: 3, 8: 8, 9: 6, 10: 3, 11: 6, 12: 4,
         13: 4, 14: 4, 15: 5, 16: 3, 17: None, 18: 3, 19: 5, 20: 4, 21: 2, 22: 2, 23: 4, 24: 3,
         25: 3, 26: 3, 27: 1, 28: 3, 29: 2, 30: 2, 31: 2, 32: 4, 33: 2, 34: 2, 35: 2, 36: 2,
         37: 2, 38: 2, 39: 2, 40: 2, 41: 2, 42: 2, 43: 2, 44: 1, 47: None, 48: 1, 49: 1,
         53: 1, 54: 1}
FLEXIBLE_FROM = {k: _FLEX.get(k, 0) for k in API_NAMES}   # 45, 46, 50+: flexible from v0

PRODUCE, FETCH, LIST_OFFSETS, METADATA = 0, 1, 2, 3
OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR = 8, 9, 10
JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP = 11, 12, 13, 14
SASL_HANDSHAKE, API_VERSIONS = 17, 18
# Calls whose body starts with the group id (and, in responses, whose error
# code sits after an optional throttle time: from the version given here).
_GROUP_CALLS = {JOIN_GROUP: 2, HEARTBEAT: 1, LEAVE_GROUP: 1, SYNC_GROUP: 1}


# Cilium's Kafka roles (PortRuleKafka.role): the APIs a producer or a
# consumer needs, for allow-lists (slowpath/l7allow.py).
ROLES = {
    "produce": frozenset({PRODUCE, METADATA, API_VERSIONS}),
    "consume": frozenset({FETCH, LIST_OFFSETS, METADATA, OFFSET_COMMIT, OFFSET_FETCH,
                          FIND_COORDINATOR, JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP,
                          API_VERSIONS}),
}
# The APIs whose requests name topics (in their body, read by _request_body):
# an allow-list entry's topic applies to them.
TOPIC_APIS = frozenset({PRODUCE, FETCH, LIST_OFFSETS, METADATA, OFFSET_COMMIT, OFFSET_FETCH})
# Kafka's own rule for topic names (kafka.common.internals.Topic).
TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_BY_NAME = {n.lower(): k for k, n in API_NAMES.items()}


def api_key_of(name: str | int) -> int | None:
    """An API's key from its name (any case: "Produce", "fetch") or number; None if unknown."""
    if isinstance(name, bool):
        return None
    if isinstance(name, int):
        return name if name in API_NAMES else None
    return _BY_NAME.get(str(name).strip().lower())


def is_flexible(api_key: int, api_version: int) -> bool:
    first = FLEXIBLE_FROM.get(api_key)
    return first is not None and api_version >= first


def request_header_version(api_key: int, api_version: int) -> int:
    """0, 1 or 2 (ControlledShutdown v0 alone has no client id)."""
    if api_key == 7 and api_version == 0:
        return 0
    return 2 if is_flexible(api_key, api_version) else 1


def response_header_version(api_key: int, api_version: int) -> int:
    """1 (tagged fields) for flexible versions, except ApiVersions, whose
    response header stays v0 so any client can read it (KIP-511)."""
    return 1 if is_flexible(api_key, api_version) and api_key != API_VERSIONS else 0


@dataclass(frozen=True)
class KafkaRequest(Event):
    kind: ClassVar[str] = "kafka_request"
    direction: Direction           # the client's (TO_CLIENT on a flow picked up the other way round)
    api_key: int
    api_name: str
    api_version: int
    correlation_id: int
    client_id: str | None          # None: header v0, or a null client id
    topics: tuple[str, ...] = ()
    consumer_group: str | None = None
    topics_complete: bool = True   # False: the body was cut (frame head) or not understood
    length: int = 0                # of the frame, without its length prefix


@dataclass(frozen=True)
class KafkaResponse(Event):
    kind: ClassVar[str] = "kafka_response"
    direction: Direction
    correlation_id: int
    decoded: bool                  # False: its request was not seen
    api_key: int | None = None
    api_name: str | None = None
    api_version: int | None = None
    topics: tuple[str, ...] = ()
    error_codes: tuple[int, ...] = ()   # distinct non-zero codes, in order seen
    length: int = 0


class _Short(Exception):
    """The frame head ended before the structure: what was read stands."""


class _Bad(Exception):
    """A value no Kafka peer sends (a negative length, a runaway varint)."""


def _text(raw: bytes) -> str:
    return bytes(raw[:MAX_NAME_BYTES]).decode("utf-8", "backslashreplace")


class _Reader:
    """Big-endian reads over one frame head. ``flex`` switches strings and
    arrays to their compact forms."""
    __slots__ = ("buf", "pos", "flex", "names_done")

    def __init__(self, buf: bytes, pos: int = 0, flex: bool = False) -> None:
        self.buf = buf
        self.pos = pos
        self.flex = flex
        # A Produce's last topic name was read: what the head cut after it
        # (that topic's records) names no topic.
        self.names_done = False

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise _Short
        out = self.buf[self.pos:end]
        self.pos = end
        return out

    def skip(self, n: int) -> None:
        if n < 0:
            raise _Bad("negative length")
        self.pos += n
        if self.pos > len(self.buf):
            raise _Short

    def int8(self) -> int:
        return struct.unpack(">b", self.take(1))[0]

    def int16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def int32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 28:          # Kafka's unsigned varints are 32-bit
                raise _Bad("unsigned varint longer than 5 bytes")

    def _length(self) -> int:
        """A string's or bytes' length; -1 for null."""
        if self.flex:
            return self.uvarint() - 1
        return self.int16()

    def string(self) -> str | None:
        n = self._length()
        if n < -1:
            raise _Bad(f"string length {n}")
        return None if n == -1 else _text(self.take(n))

    def skip_string(self) -> None:
        n = self._length()
        if n > 0:
            self.skip(n)

    def skip_bytes(self) -> None:
        """A bytes/records field: int32 length in old versions."""
        n = self.uvarint() - 1 if self.flex else self.int32()
        if n > 0:
            self.skip(n)

    def array(self) -> int:
        """An array's element count; -1 for null."""
        n = self.uvarint() - 1 if self.flex else self.int32()
        if n < -1:
            raise _Bad(f"array length {n}")
        return n

    def tags(self) -> None:
        """The tagged fields ending a structure (flexible versions only)."""
        if not self.flex:
            return
        n = self.uvarint()
        if n > MAX_TAGGED_FIELDS:
            raise _Bad(f"{n} tagged fields")
        for _ in range(n):
            self.uvarint()
            self.skip(self.uvarint())


def _add(out: list, item, cap: int) -> None:
    if item is not None and item not in out and len(out) < cap:
        out.append(item)


# --- request bodies ----------------------------------------------------------

def _request_body(r: _Reader, key: int, v: int, topics: list, group: list) -> None:
    """Read topics / group of one request body into ``topics`` / ``group``.
    Raises _Short where the head ends, _Bad on nonsense."""
    if key == PRODUCE:
        if v >= 3:
            r.skip_string()                     # transactional_id
        r.skip(6)                               # acks, timeout_ms
        n = r.array()
        for i in range(n):
            _add(topics, r.string(), MAX_TOPICS + 1)
            r.names_done = i == n - 1
            for _ in range(r.array()):
                r.skip(4)                       # partition index
                r.skip_bytes()                  # records
                r.tags()
            r.tags()
    elif key == FETCH:
        if v >= 13:
            raise _Short                        # topics by id (uuid), no names
        r.skip(12)                              # replica_id, max_wait_ms, min_bytes
        if v >= 3:
            r.skip(4)                           # max_bytes
        if v >= 4:
            r.skip(1)                           # isolation_level
        if v >= 7:
            r.skip(8)                           # session_id, session_epoch
        part = 4 + 8 + 4 + (4 if v >= 9 else 0) + (4 if v >= 12 else 0) + (8 if v >= 5 else 0)
        for _ in range(r.array()):
            _add(topics, r.string(), MAX_TOPICS + 1)
            for _ in range(r.array()):
                r.skip(part)
                r.tags()
            r.tags()
    elif key == LIST_OFFSETS:
        r.skip(4)                               # replica_id
        if v >= 2:
            r.skip(1)                           # isolation_level
        part = 4 + (4 if v >= 4 else 0) + 8 + (4 if v == 0 else 0)
        for _ in range(r.array()):
            _add(topics, r.string(), MAX_TOPICS + 1)
            for _ in range(r.array()):
                r.skip(part)
                r.tags()
            r.tags()
    elif key == METADATA:
        for _ in range(r.array()):              # null (-1): all topics
            if v >= 10:
                r.skip(16)                      # topic_id
            _add(topics, r.string(), MAX_TOPICS + 1)
            r.tags()
    elif key == OFFSET_COMMIT:
        _add(group, r.string(), 1)
        if v >= 1:
            r.skip(4)                           # generation_id
            r.skip_string()                     # member_id
        if v >= 7:
            r.skip_string()                     # group_instance_id
        if 2 <= v <= 4:
            r.skip(8)                           # retention_time_ms
        for _ in range(r.array()):
            _add(topics, r.string(), MAX_TOPICS + 1)
            for _ in range(r.array()):
                r.skip(4 + 8 + (4 if v >= 6 else 0) + (8 if v == 1 else 0))
                r.skip_string()                 # committed_metadata
                r.tags()
            r.tags()
    elif key == OFFSET_FETCH:
        if v >= 10:
            raise _Short                        # topics by id
        groups = r.array() if v >= 8 else 1
        for _ in range(groups):
            _add(group, r.string(), 1)
            if v >= 9:
                r.skip_string()                 # member_id
                r.skip(4)                       # member_epoch
            for _ in range(r.array()):          # null (-1): all topics
                _add(topics, r.string(), MAX_TOPICS + 1)
                n = r.array()
                r.skip(4 * max(n, 0))           # partition indexes
                r.tags()
            if v >= 8:
                r.tags()
    elif key == FIND_COORDINATOR:
        if v <= 3:
            k = r.string()
            key_type = r.int8() if v >= 1 else 0
            if key_type == 0:
                _add(group, k, 1)
        else:
            key_type = r.int8()
            n = r.array()
            for _ in range(n):
                k = r.string()
                if key_type == 0:
                    _add(group, k, 1)
    elif key in _GROUP_CALLS:
        _add(group, r.string(), 1)
    else:
        return
    r.tags()


# --- response bodies ---------------------------------------------------------

def _response_body(r: _Reader, key: int, v: int, topics: list, errors: list) -> None:
    def err(code: int) -> None:
        if code:
            _add(errors, code, MAX_ERROR_CODES)

    if key == PRODUCE:
        for _ in range(r.array()):
            _add(topics, r.string(), MAX_TOPICS)
            for _ in range(r.array()):
                r.skip(4)                       # index
                err(r.int16())
                r.skip(8 + (8 if v >= 2 else 0) + (8 if v >= 5 else 0))
                if v >= 8:
                    for _ in range(r.array()):  # record_errors
                        r.skip(4)
                        r.skip_string()
                        r.tags()
                    r.skip_string()             # error_message
                r.tags()
            r.tags()
    elif key == METADATA:
        if v >= 3:
            r.skip(4)                           # throttle_time_ms
        for _ in range(r.array()):              # brokers
            r.skip(4)
            r.skip_string()
            r.skip(4)
            if v >= 1:
                r.skip_string()                 # rack
            r.tags()
        if v >= 2:
            r.skip_string()                     # cluster_id
        if v >= 1:
            r.skip(4)                           # controller_id
        for _ in range(r.array()):
            err(r.int16())
            _add(topics, r.string(), MAX_TOPICS)
            if v >= 10:
                r.skip(16)                      # topic_id
            if v >= 1:
                r.skip(1)                       # is_internal
            for _ in range(r.array()):
                err(r.int16())
                r.skip(8 + (4 if v >= 7 else 0))
                for _ in range(3 if v >= 5 else 2):
                    n = r.array()               # replicas, isr, offline replicas
                    r.skip(4 * max(n, 0))
                r.tags()
            if v >= 8:
                r.skip(4)                       # topic_authorized_operations
            r.tags()
    elif key == FETCH:
        if v >= 13:
            raise _Short                        # topics by id
        if v >= 1:
            r.skip(4)                           # throttle_time_ms
        if v >= 7:
            err(r.int16())
            r.skip(4)                           # session_id
        for _ in range(r.array()):
            _add(topics, r.string(), MAX_TOPICS)
            for _ in range(r.array()):
                r.skip(4)                       # partition_index
                err(r.int16())
                r.skip(8 + (8 if v >= 4 else 0) + (8 if v >= 5 else 0))
                if v >= 4:
                    for _ in range(r.array()):  # aborted_transactions (null: -1)
                        r.skip(16)
                        r.tags()
                if v >= 11:
                    r.skip(4)                   # preferred_read_replica
                r.skip_bytes()                  # records
                r.tags()
            r.tags()
    elif key == LIST_OFFSETS:
        if v >= 2:
            r.skip(4)                           # throttle_time_ms
        for _ in range(r.array()):
            _add(topics, r.string(), MAX_TOPICS)
            for _ in range(r.array()):
                r.skip(4)
                err(r.int16())
                if v == 0:
                    r.skip(8 * max(r.array(), 0))   # old_style_offsets
                else:
                    r.skip(16 + (4 if v >= 4 else 0))
                r.tags()
            r.tags()
    elif key == OFFSET_COMMIT:
        if v >= 3:
            r.skip(4)                           # throttle_time_ms
        for _ in range(r.array()):
            _add(topics, r.string(), MAX_TOPICS)
            for _ in range(r.array()):
                r.skip(4)
                err(r.int16())
                r.tags()
            r.tags()
    elif key == OFFSET_FETCH:
        if v >= 3:
            r.skip(4)                           # throttle_time_ms
        for _ in range(r.array() if v >= 8 else 1):
            if v >= 8:
                r.skip_string()                 # group_id
            for _ in range(r.array()):
                _add(topics, r.string(), MAX_TOPICS)
                for _ in range(r.array()):
                    r.skip(12 + (4 if v >= 5 else 0))   # index, offset, leader epoch
                    r.skip_string()             # metadata
                    err(r.int16())
                    r.tags()
                r.tags()
            if v >= 2:
                err(r.int16())
            if v >= 8:
                r.tags()
    elif key == API_VERSIONS:
        err(r.int16())
    elif key == FIND_COORDINATOR and v <= 3:
        if v >= 1:
            r.skip(4)
        err(r.int16())
    elif key in _GROUP_CALLS:
        if v >= _GROUP_CALLS[key]:
            r.skip(4)                           # throttle_time_ms
        err(r.int16())


class _Side(StreamSide):
    __slots__ = ("state", "frame_len", "skip", "frame_offset", "sasl_raw")
    max_buffered = MAX_BUFFERED_BYTES

    def __init__(self, direction: Direction) -> None:
        super().__init__(direction)
        self.state = "length"       # length -> head -> (skip) -> length ...; done
        self.frame_len = 0
        self.skip = 0               # bytes of the current frame still to skip
        self.frame_offset = 0
        self.sasl_raw = False       # after SaslHandshake v0: raw SASL tokens follow

    @property
    def done(self) -> bool:
        return self.state == "done"


class KafkaParser(StreamParser):
    def __init__(self) -> None:
        self._sides = {d: _Side(d) for d in DIRECTIONS}
        # correlation id -> (api key, api version), oldest first
        self._pending: OrderedDict[int, tuple[int, int]] = OrderedDict()
        # The side sending requests: the initiator, unless the flow was
        # picked up mid-stream the other way round (a capture whose first
        # packet is the broker's): decided at the first frame (_frame).
        self._client: Direction | None = None

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
                side.state = "length"
            elif side.state == "length":
                if len(buf) - pos < 4:
                    break
                n = int.from_bytes(buf[pos:pos + 4], "big")
                if n > MAX_FRAME_BYTES:
                    events.append(Malformed(direction, f"frame length {n} over {MAX_FRAME_BYTES}",
                                            side.offset + pos))
                    side.state = "done"
                    break
                side.frame_offset = side.offset + pos
                side.frame_len = n
                pos += 4
                side.state = "head"
            else:   # head: wait for the whole frame, or FRAME_HEAD_BYTES of it
                want = min(side.frame_len, FRAME_HEAD_BYTES)
                if len(buf) - pos < want:
                    break
                head = bytes(buf[pos:pos + want])
                pos += want
                side.skip = side.frame_len - want
                side.state = "skip" if side.skip else "length"
                ev = self._frame(side, direction, head)
                if ev is not None:
                    events.append(ev)
                    if ev.kind == "malformed":
                        side.state = "done"
        side.consume(len(buf) if side.done else pos)
        return events

    def receive_eof(self, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        side.eof = True
        if side.state == "done":
            return []
        if side.state == "length" and not side.buf:
            return []
        side.state = "done"
        return [Malformed(direction, "stream ended inside a frame", side.offset)]

    def receive_gap(self, direction: Direction, size: int) -> list[Event]:
        side = self._sides[direction]
        if side.state == "done":
            return []
        side.state = "done"
        return [Malformed(direction, f"gap of {size} bytes in the stream", -1)]

    # --- one frame -------------------------------------------------------------

    def _frame(self, side: _Side, d: Direction, head: bytes) -> Event | None:
        if self._client is None:
            # A request header on the first frame names its side the
            # client; anything else names the other side.
            looks = _plausible_request(head)
            self._client = d if looks else Direction(1 - d)
        if d == self._client:
            if side.sasl_raw:
                side.sasl_raw = False           # one raw token, then Kafka framing again
                return None
            return self._request(side, head)
        return self._response(side, head)

    def _request(self, side: _Side, head: bytes) -> Event:
        at = side.frame_offset
        if len(head) < 8:
            return Malformed(side.direction, f"request of {len(head)} bytes, shorter than a header", at)
        key, v, corr = struct.unpack_from(">hhi", head)
        name = API_NAMES.get(key)
        if name is None:
            return Malformed(side.direction, f"unknown api key {key}", at)
        if not 0 <= v <= PROBE_MAX_API_VERSION:
            return Malformed(side.direction, f"api version {v} of {name} out of range", at)
        r = _Reader(head, 8)
        hv = request_header_version(key, v)
        client_id = None
        topics: list[str] = []
        group: list[str] = []
        complete = True
        try:
            if hv >= 1:
                client_id = r.string()          # a nullable int16 string even in header v2
            if hv >= 2:
                r.flex = True
                r.tags()
        except _Short:
            return Malformed(side.direction, "request header runs past its frame", at)
        except _Bad as e:
            return Malformed(side.direction, f"request header: {e}", at)
        try:
            _request_body(r, key, v, topics, group)
        except (_Short, _Bad, struct.error):
            complete = r.names_done         # a big Produce: cut in its last topic's records
        if len(topics) > MAX_TOPICS:        # one more than kept was read: the list is cut
            del topics[MAX_TOPICS:]
            complete = False
        if key == SASL_HANDSHAKE and v == 0:
            side.sasl_raw = True                # KIP-43: the token goes unframed by a header
        acks_zero = key == PRODUCE and self._acks(head, v, hv) == 0
        if not acks_zero:
            if len(self._pending) >= MAX_PENDING:
                self._pending.popitem(last=False)
            self._pending[corr] = (key, v)
        return KafkaRequest(side.direction, key, name, v, corr, client_id, tuple(topics),
                            group[0] if group else None, complete, side.frame_len)

    @staticmethod
    def _acks(head: bytes, v: int, hv: int) -> int | None:
        """A Produce's acks (0: no response will come)."""
        try:
            rr = _Reader(head, 8, flex=False)
            if hv >= 1:
                rr.string()
            if hv >= 2:
                rr.flex = True
                rr.tags()
            if v >= 3:
                rr.skip_string()
            return rr.int16()
        except (_Short, _Bad, struct.error):
            return None

    def _response(self, side: _Side, head: bytes) -> Event:
        at = side.frame_offset
        if len(head) < 4:
            return Malformed(side.direction, f"response of {len(head)} bytes, shorter than a header", at)
        corr = struct.unpack_from(">i", head)[0]
        req = self._pending.pop(corr, None)
        if req is None:
            return KafkaResponse(side.direction, corr, False, length=side.frame_len)
        key, v = req
        r = _Reader(head, 4)
        topics: list[str] = []
        errors: list[int] = []
        try:
            if response_header_version(key, v) >= 1:
                r.flex = True
                r.tags()
            r.flex = is_flexible(key, v)
            _response_body(r, key, v, topics, errors)
        except (_Short, _Bad, struct.error):
            pass                                # what was read stands
        return KafkaResponse(side.direction, corr, True, key, API_NAMES[key], v, tuple(topics), tuple(errors),
                             side.frame_len)


def _plausible_request(head: bytes) -> bool:
    """A request header with a known api key, a version in range and a
    printable client id inside the frame (the probe's test, on a frame)."""
    if len(head) < 10:
        return False
    key, v, corr, cid_len = struct.unpack_from(">hhih", head)
    if key not in API_NAMES or not 0 <= v <= PROBE_MAX_API_VERSION or corr < 0:
        return False
    if request_header_version(key, v) == 0:
        return True
    cid = head[10:10 + cid_len] if cid_len >= 0 else b""
    return cid_len >= -1 and len(cid) == max(cid_len, 0) and all(0x20 <= c < 0x7F for c in cid)


def probe(data: bytes, direction: Direction) -> float:
    """Rate the first bytes of one direction as Kafka. A request header is
    checked: a plausible length, a known api key, a version in range, a
    non-negative correlation id and a printable client id inside the frame.
    A response shows only a length and a correlation id: too little to
    claim. Requests coming from the responder (a flow picked up mid-stream
    the other way round) rate at most LIKELY."""
    if len(data) < 14:
        return NO_MATCH
    if direction == Direction.TO_CLIENT:
        return min(probe(data, Direction.TO_SERVER), LIKELY)
    n, key, v, corr, cid_len = struct.unpack_from(">ihhih", data)
    if not 10 <= n <= PROBE_MAX_FRAME_BYTES or key not in API_NAMES:
        return NO_MATCH
    if not 0 <= v <= PROBE_MAX_API_VERSION or corr < 0:
        return NO_MATCH
    if request_header_version(key, v) == 0:
        return POSSIBLE
    if cid_len == -1:
        return POSSIBLE if n == len(data) - 4 else NO_MATCH
    if not 0 <= cid_len <= n - 10:
        return NO_MATCH
    whole = n == len(data) - 4
    if cid_len == 0:                    # nothing to read but the numbers
        return LIKELY if whole else POSSIBLE
    cid = data[14:14 + cid_len]
    if not cid:
        return POSSIBLE                 # the client id is still to come
    if not all(0x20 <= c < 0x7F for c in cid):
        return NO_MATCH
    return CERTAIN if whole else LIKELY


PLUGIN = ProtocolPlugin(
    name="kafka",
    event_kinds=event_kinds(KafkaRequest, KafkaResponse),
    probe=probe,
    parser_factory=lambda transport: KafkaParser(),
    # No kernel signature: a Kafka frame starts with its length and an api
    # key that vary per request; nothing fixed sits in the first 64 bytes
    # (the client id is free text). The slow path's probe identifies it.
    signatures=(),
    transports=frozenset({"tcp"}),
    description="Apache Kafka requests and responses: api, version, correlation id, client id, topics, groups",
)
