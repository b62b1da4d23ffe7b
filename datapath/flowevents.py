"""Session-end records from the kernel: struct ms_flow_event on the ms_events
ring buffer (bpf/lib/maps.h), one per session when it ends (a TCP close, a
timeout found by a packet's lookup or by the sweeper, a table-full refusal, a
policy revocation, ...; enum ms_flow_end says which).

The layout is BCC's ctypes type of the struct (the value type of the
never-written ms_flow_event_t map): nothing here re-declares it. Records of
other types share the ring (EVENT_TABLE_PRESSURE); every record starts with
its __u32 type, which ``event_type`` reads.

Times in a record are the session clock (CLOCK_MONOTONIC, ns);
``WallClock`` turns them into wall-clock seconds with an offset taken once.
"""
from __future__ import annotations

import ctypes
import operator
import struct
import time
from functools import lru_cache
from typing import Callable, NamedTuple

from .enums import CtState, EventType, FlowEndReason
from .flows import addr_text

# Session addresses whose text is kept: ipaddress formats one in ~3 us, a
# session end has two and clients and servers recur across sessions.
ADDR_TEXT_CACHE = 16_384
_addr_text = lru_cache(maxsize=ADDR_TEXT_CACHE)(addr_text)

# Slots of ms_events_lost (maps.h MS_EVENT_TYPE_SLOTS): indexed by event type.
_TYPE = struct.Struct("<I")
# The map whose value type is struct ms_flow_event (maps.h).
TYPE_MAP = "ms_flow_event_t"
LOST_MAP = "ms_events_lost"


class FlowEnd(NamedTuple):
    """One session's end, as the kernel reported it. ``client`` opened the
    session (the key's initiator); index 0 of packets/bytes is its side
    (to the server), 1 the responder's (to the client)."""
    reason: str             # FLOW_END_* name without the prefix, lower case ("closed", "swept", ...)
    state: str              # CT_* name of the session's state at its end
    proto: int              # IP protocol number
    client: tuple[str, int]
    server: tuple[str, int]
    first_seen_ns: int      # session clock
    last_seen_ns: int
    packets: tuple[int, int]
    bytes: tuple[int, int]
    rule_id: int
    cookie: int
    pol_gen: int
    action: int             # enum ms_pol_action
    inspect: int            # MS_INSPECT_* bits
    insp_state: int         # enum ms_insp_state
    app: int                # enum ms_app (the L7 stage's identification; 0: none)
    flags: int              # MS_FLOW_*
    worker: int             # slow-path worker of an inspected session
    key: bytes              # struct ms_flow_key as the kernel stores it


def event_type(raw: bytes) -> int:
    """The type of any ms_events record (its first __u32)."""
    return _TYPE.unpack_from(raw)[0] if len(raw) >= 4 else 0


def flow_event_type(fp) -> type:
    """ctypes type of struct ms_flow_event from a loaded FastPath."""
    return fp.table(TYPE_MAP).Leaf


def _ntohs(v: int) -> int:
    return ((v & 0xFF) << 8) | (v >> 8)


# The integer struct codes by size (struct's standard sizes: ctypes' own
# codes follow the platform's, where "L" is 8 bytes and struct's "<L" 4).
_INT_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}


def _field_code(t: type) -> tuple[str, int]:
    """(struct code, values it reads) of a ctypes field type: an integer,
    an array of bytes (one bytes value) or an array of integers (one value
    per element)."""
    if issubclass(t, ctypes.Array):
        elem = t._type_
        if ctypes.sizeof(elem) == 1:
            return f"{t._length_}s", 1
        code, _ = _field_code(elem)
        return f"{t._length_}{code}", t._length_
    code = _INT_CODES.get(ctypes.sizeof(t)) if issubclass(t, ctypes._SimpleCData) else None
    if code is None or t._type_ not in "bBhHiIlLqQ":
        raise TypeError(f"{t.__name__}: not an integer or an array of integers")
    return (code if t._type_.islower() else code.upper()), 1


def field_reader(ctype: type, names: tuple[str, ...]) -> Callable[[bytes], tuple]:
    """A function reading the fields ``names`` of ctypes structure
    ``ctype`` (BCC's type of a kernel struct: the layout keeps its one
    definition) from a buffer of it: one struct unpack and one reordering,
    where a ctypes copy of the buffer and an attribute read per field cost
    ~2 us a session end. "a.b" names field b of the nested structure a; an
    array of integers reads as its elements, in order, an array of bytes
    as one bytes value. The values come in the order of ``names``, each
    field's at the position its name has (arrays expanded), as int() of
    the ctypes field would give them."""
    fields = []
    for name in names:
        off, t = 0, ctype
        for part in name.split("."):
            off += getattr(t, part).offset
            t = dict(t._fields_)[part]
        fields.append((off, name, t))
    fmt, at, pos = ["<"], 0, {}
    n = 0
    for off, name, t in sorted(fields, key=lambda f: f[0]):
        if off < at:
            raise ValueError(f"{ctype.__name__}.{name}: overlaps the field before it")
        code, count = _field_code(t)
        fmt.append(f"{off - at}x{code}" if off > at else code)
        at = off + ctypes.sizeof(t)
        pos[name] = range(n, n + count)
        n += count
    unpack = struct.Struct("".join(fmt)).unpack_from
    order = operator.itemgetter(*[i for name in names for i in pos[name]])
    return lambda buf: order(unpack(buf))


# The fields of a session end that struct ms_flow_event and a session
# table's entry (struct ms_flow) both have, in the order FlowEventDecoder
# reads them, and the key's (struct ms_flow_key).
_KEY_FIELDS = ("addr_lo", "addr_hi", "port_lo", "port_hi", "proto")
_END_FIELDS = ("state", "initiator_is_hi", "first_seen_ns", "last_seen_ns", "packets", "bytes", "rule_id",
               "cookie", "pol_gen", "action", "inspect", "insp_state", "app", "flags")


class FlowEventDecoder:
    """Raw ring records -> FlowEnd. One per process (the type's offsets are
    read once)."""

    def __init__(self, rtype: type):
        self.rtype = rtype
        self.size = ctypes.sizeof(rtype)
        self._key_off = rtype.key.offset
        self._key_size = rtype.key.size
        self._action_off = rtype.action.offset     # both __u8 (bpf/lib/maps.h)
        self._worker_off = rtype.worker.offset
        self._reasons = {m.value: m.name.removeprefix("FLOW_END_").lower() for m in FlowEndReason}
        self._states = {m.value: m.name for m in CtState}
        # A record's fields: the key's, the session's (_END_FIELDS), its reason and worker.
        self._read = field_reader(rtype, (*(f"key.{k}" for k in _KEY_FIELDS), *_END_FIELDS, "reason", "worker"))
        self._entry_readers: dict[tuple[type, type], tuple[Callable, Callable]] = {}

    def decode(self, raw: bytes) -> FlowEnd | None:
        """None for a record of another type; ValueError for a flow-end
        record of the wrong size (a build with another layout)."""
        if event_type(raw) != EventType.EVENT_FLOW_END:
            return None
        if len(raw) < self.size:
            raise ValueError(f"ms_events: flow-end record of {len(raw)} bytes, struct ms_flow_event "
                             f"has {self.size}")
        v = self._read(raw)
        reason, worker = v[-2], v[-1]
        return self._end_values(v, self._reasons.get(reason, f"reason-{reason}"), worker,
                                raw[self._key_off:self._key_off + self._key_size])

    def from_entry(self, key_type: type, leaf_type: type, key: bytes, leaf: bytes, reason: str) -> FlowEnd:
        """from_session() of a session table's entry as bytes (``key`` a
        canonical struct ms_flow_key, ``leaf`` its value; their ctypes types
        name the layouts), read without ctypes objects: a replay's end
        reads the thousands of sessions still open this way."""
        readers = self._entry_readers.get((key_type, leaf_type))
        if readers is None:
            readers = self._entry_readers[key_type, leaf_type] = (field_reader(key_type, _KEY_FIELDS),
                                                                  field_reader(leaf_type, _END_FIELDS))
        return self._end_values(readers[0](key) + readers[1](leaf), reason, 0, bytes(key))

    def _end_values(self, v: tuple, reason: str, worker: int, key: bytes) -> FlowEnd:
        """_end() from the values of _KEY_FIELDS and _END_FIELDS, in that order."""
        (addr_lo, addr_hi, port_lo, port_hi, proto, state, hi_first, first, last, p0, p1, b0, b1, rule_id,
         cookie, pol_gen, action, inspect, insp_state, app, flags) = v[:21]
        lo = (_addr_text(addr_lo), _ntohs(port_lo))
        hi = (_addr_text(addr_hi), _ntohs(port_hi))
        client, server = (hi, lo) if hi_first else (lo, hi)
        return FlowEnd(reason, self._states.get(state, f"state-{state}"), proto, client, server, first, last,
                       (p0, p1), (b0, b1), rule_id, cookie, pol_gen, action, inspect, insp_state, app, flags,
                       worker, key)

    def route(self, raw: bytes) -> tuple[int, int] | None:
        """(action, worker) of a flow-end record, read without decoding the
        rest: all the daemon needs to hand an inspected session's end to
        its worker, which decodes it. None when it is not a flow-end
        record of this layout (decode() says what is wrong with it)."""
        if len(raw) < self.size or event_type(raw) != EventType.EVENT_FLOW_END:
            return None
        return raw[self._action_off], raw[self._worker_off]

    def from_session(self, key, leaf, reason: str) -> FlowEnd:
        """The end of a session user space removes or finds still open (a
        replay's end: reason "shutdown"), from its ms_flows / ms_halfopen
        entry (BCC's Key and Leaf), as the kernel would have reported it."""
        return self.from_entry(type(key), type(leaf), bytes(key), bytes(leaf), reason)


class WallClock:
    """Session-clock ns -> wall-clock seconds. The offset between
    CLOCK_REALTIME and CLOCK_MONOTONIC is taken once (the tightest of a few
    paired reads), so records of one run are on one time base; a later
    change of the wall clock (NTP step) is not followed."""

    PAIRS = 5   # paired reads; the one with the shortest gap wins

    def __init__(self):
        best = None
        for _ in range(self.PAIRS):
            m0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            r = time.time_ns()
            m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            if best is None or m1 - m0 < best[0]:
                best = (m1 - m0, r - (m0 + m1) // 2)
        self.offset_ns = best[1]

    def __call__(self, mono_ns: int) -> float:
        return (mono_ns + self.offset_ns) / 1e9


def lost_counts(fp) -> dict[str, int]:
    """ms_events records that could not be written, summed over CPUs, by
    event type name (EVENT_* without the prefix, lower case)."""
    t = fp.table(LOST_MAP)
    out = {}
    for m in EventType:
        v = t[t.Key(m.value)]
        out[m.name.removeprefix("EVENT_").lower()] = sum(int(x) for x in v)
    return out


__all__ = ["FlowEnd", "FlowEndReason", "EventType", "FlowEventDecoder", "WallClock", "event_type",
           "flow_event_type", "lost_counts"]
