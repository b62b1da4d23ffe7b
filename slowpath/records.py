"""Payload records from the kernel (struct ms_insp_rec, bpf/lib/maps.h),
decoded; and the verdicts and heartbeat the slow path writes back.

The record layout is the one BCC compiled: the ``h`` field of the
ms_insp_scratch map's value type (struct ms_insp_buf), so nothing here
restates the C struct.
"""
from __future__ import annotations

import ctypes
import socket
import struct
import time
from operator import itemgetter
from typing import Collection, NamedTuple, Sequence

from datapath import bpfsys
from datapath.enums import VerdictCode
from datapath.flows import addr_text

CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)


def record_type(layouts: dict[str, tuple[type, type]]) -> type:
    """ctypes type of struct ms_insp_rec, from the compiled layouts
    (datapath.sessions.layouts() or layouts_of(fastpath))."""
    leaf = layouts["ms_insp_scratch"][1]
    if issubclass(leaf, ctypes.Array):   # BCC types a per-CPU value as one slot per CPU
        leaf = leaf._type_
    return dict(leaf._fields_)["h"]


# A record's 16-byte address as text (the session table's formatting).
_addr = addr_text


class InspRecord(NamedTuple):
    """One payload record. A tuple (one C call builds it, no per-field
    setattr as a frozen dataclass has): decoding runs once per record."""
    ts_ns: int            # kernel bpf_ktime_get_ns (CLOCK_MONOTONIC) when copied
    key: bytes            # the connection: session_ref() of its session key and cookie, which
                          # VerdictWriter.verdict and session_lookup take (a new connection on
                          # the same 5-tuple is another key)
    client: tuple[str, int]
    server: tuple[str, int]
    side: int             # 0: from the client (initiator), 1: from the server
    seq: int
    ack_seq: int          # TCP: the next byte expected from the other side
    tcp_flags: int
    l4: int               # 6 or 17
    app: int              # enum ms_app the kernel identified
    inspect: int          # MS_INSPECT_* bits of the rule
    rule_id: int
    hook: int
    orig_len: int         # payload bytes of the packet (> len(data): truncated)
    data: bytes
    frag: int = 0         # 0; or MS_FRAG_FIRST / MS_FRAG_LATER, | MS_FRAG_MORE when more follow (enums.FRAG)
    frag_id: int = 0
    frag_off: int = 0     # in 8-byte units of the IP payload

    @property
    def transport(self) -> str:
        return "tcp" if self.l4 == socket.IPPROTO_TCP else "udp"


# struct ms_flow.cookie is a __u32 (bpf/lib/maps.h).
COOKIE_BYTES = 4


def session_ref(key: bytes, cookie: int) -> bytes:
    """One connection, as the slow path names it: the session key (struct
    ms_flow_key) followed by the session's cookie (struct ms_flow.cookie,
    4 bytes little-endian as the kernel stores it). The 5-tuple alone is
    not enough: a client reuses its port for the next connection."""
    return key + cookie.to_bytes(COOKIE_BYTES, "little")


def split_ref(ref: bytes) -> tuple[bytes, int]:
    """(session key, cookie) of a session_ref()."""
    return ref[:-COOKIE_BYTES], int.from_bytes(ref[-COOKIE_BYTES:], "little")


# Connections whose formatted addresses the decoder keeps (formatting an
# address costs more than decoding the rest of a record); past it the cache
# starts over. The engine's flow table (engine.MAX_FLOWS) holds as many.
MAX_CACHED_PEERS = 65_536
# The fields of struct ms_insp_rec that decode_many() reads, in the order it unpacks their indices.
_HEADER_FIELDS = ("ts_ns", "seq", "ack_seq", "len", "orig_len", "rule_id", "side", "tcp_flags", "l4", "app", "inspect",
                  "hook", "initiator_is_hi", "frag", "frag_id", "frag_off", "cookie")
# struct format characters of the ctypes scalar types, by size.
_UNSIGNED = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _header_struct(rec_type: type, read: Collection[str] | None = None) -> tuple[struct.Struct, dict[str, int]]:
    """A struct.Struct reading the header of a record in one call, built
    from the ctypes type's own field offsets and sizes (so the layout keeps
    its one definition, the compiled C struct): scalars as integers, arrays
    and nested structs as bytes; and each field's index in the tuple.
    ``read``: the fields to read (the others are skipped as padding, no
    object made for them); all when None."""
    fmt, at, index = ["="], 0, {}
    for f in rec_type._fields_:
        if len(f) != 2:
            raise ValueError(f"struct ms_insp_rec field {f[0]!r} is a bit field: the record decoder reads bytes")
        name, ftype = f
        desc = getattr(rec_type, name)
        if read is not None and name not in read:
            continue                  # (the gap before the next field read, or the tail, skips it)
        if desc.offset > at:
            fmt.append(f"{desc.offset - at}x")
        code = getattr(ftype, "_type_", None)
        if isinstance(code, str) and desc.size in _UNSIGNED:
            fmt.append(_UNSIGNED[desc.size].lower() if code in "bhilq" else _UNSIGNED[desc.size])
        else:
            fmt.append(f"{desc.size}s")
        index[name] = len(index)
        at = desc.offset + desc.size
    if ctypes.sizeof(rec_type) > at:
        fmt.append(f"{ctypes.sizeof(rec_type) - at}x")
    st = struct.Struct("".join(fmt))
    if st.size != ctypes.sizeof(rec_type):
        raise ValueError(f"struct ms_insp_rec: format {st.format!r} reads {st.size} bytes of {ctypes.sizeof(rec_type)}")
    return st, index


class RecordDecoder:
    def __init__(self, rec_type: type, key_type: type):
        self.rec_type = rec_type
        self.hsize = ctypes.sizeof(rec_type)
        self.key_size = ctypes.sizeof(key_type)
        # Only the fields decode_many reads (the 40-byte key is sliced from
        # the record as the connection's reference instead: no bytes object
        # made for it, nor for padding), as a tuple in _HEADER_FIELDS' order,
        # which decode_many unpacks into names (a fixed unpacking costs less
        # than a subscript per field). The C struct lays them out in that
        # order; if it ever does not, one itemgetter puts them in it.
        self._header, self._index = _header_struct(rec_type, _HEADER_FIELDS)
        order = tuple(self._index[name] for name in _HEADER_FIELDS)
        if order == tuple(range(len(order))):
            self._read = self._header.unpack_from
        else:
            unpack, get = self._header.unpack_from, itemgetter(*order)
            self._read = lambda raw: get(unpack(raw))
        key_at = rec_type.key.offset
        cookie = rec_type.cookie
        if cookie.size != COOKIE_BYTES:
            raise ValueError(f"struct ms_insp_rec cookie is {cookie.size} bytes, session_ref() takes {COOKIE_BYTES}")
        # session_ref() from the record's bytes: the key as the kernel laid it out
        self._key = slice(key_at, key_at + self.key_size)
        self._key_type = dict(rec_type._fields_)["key"]
        self._peers: dict[bytes, tuple[tuple[str, int], tuple[str, int]]] = {}

    def short(self, raw) -> str:
        """What is wrong with a raw record shorter than the header."""
        return f"payload record of {len(raw)} bytes, header alone is {self.hsize}"

    def _peers_of(self, ref: bytes, raw: bytes, initiator_is_hi: int) -> tuple[tuple[str, int], tuple[str, int]]:
        """(client, server) of a connection, formatted once per connection."""
        k = self._key_type.from_buffer_copy(raw, self._key.start)
        lo = (_addr(k.addr_lo), socket.ntohs(k.port_lo))
        hi = (_addr(k.addr_hi), socket.ntohs(k.port_hi))
        peers = (hi, lo) if initiator_is_hi else (lo, hi)
        if len(self._peers) >= MAX_CACHED_PEERS:
            self._peers.clear()
        self._peers[ref] = peers
        return peers

    def decode(self, raw: bytes) -> InspRecord:
        rec = self.decode_one(raw)
        if rec is None:
            raise ValueError(self.short(raw))
        return rec

    def decode_many(self, raws: Sequence[bytes]) -> tuple[list[InspRecord], list[str]]:
        """The records of ``raws`` in order, and a message per raw record
        skipped as bad (shorter than the header)."""
        out: list[InspRecord] = []
        bad: list[str] = []
        read = self._read
        hsize, kslice, peers, new = self.hsize, self._key, self._peers, tuple.__new__
        append = out.append
        for raw in raws:
            if len(raw) < hsize:
                bad.append(self.short(raw))
                continue
            # (the names and order of _HEADER_FIELDS)
            ts, seq, ack, n, orig, rule, side, flags, l4, app, insp, hook, hi, frag, fid, foff, cookie = read(raw)
            ref = raw[kslice] + cookie.to_bytes(COOKIE_BYTES, "little")   # session_ref()
            p = peers.get(ref)
            if p is None:
                p = self._peers_of(ref, raw, hi)
            append(new(InspRecord, (ts, ref, p[0], p[1], side, seq, ack, flags, l4, app, insp, rule, hook, orig,
                                    raw[hsize:hsize + n], frag, fid, foff)))
        return out, bad

    def decode_one(self, raw: bytes) -> InspRecord | None:
        """decode_many's record for one raw record, without its two lists
        (None: shorter than the header, which short() describes). For a
        caller that gets records one at a time (replay: the ring is drained
        after every frame and a frame writes one record). The same fields
        and the same peers cache as decode_many (tests/unit/test_records.py
        checks the two decode alike)."""
        hsize = self.hsize
        if len(raw) < hsize:
            return None
        ts, seq, ack, n, orig, rule, side, flags, l4, app, insp, hook, hi, frag, fid, foff, cookie = self._read(raw)
        ref = raw[self._key] + cookie.to_bytes(COOKIE_BYTES, "little")   # session_ref()
        p = self._peers.get(ref)
        if p is None:
            p = self._peers_of(ref, raw, hi)
        return tuple.__new__(InspRecord, (ts, ref, p[0], p[1], side, seq, ack, flags, l4, app, insp, rule, hook,
                                          orig, raw[hsize:hsize + n], frag, fid, foff))


class VerdictWriter:
    """Writes verdicts (ms_verdicts) and the heartbeat (ms_slowpath) of one build."""

    def __init__(self, verdicts_fd: int, slowpath_fd: int, verdict_leaf: type, slowpath_leaf: type,
                 worker: int = 0):
        self.verdicts_fd = verdicts_fd
        self.slowpath_fd = slowpath_fd
        self.verdict_leaf = verdict_leaf
        self.slowpath_leaf = slowpath_leaf
        # The heartbeat slot (ms_slowpath index) of the worker this writer
        # beats for: the kernel fails only that worker's flows when it is stale.
        self.slot = worker.to_bytes(4, "little")
        # One BPF_MAP_UPDATE_ELEM's key, value and attribute buffers, built
        # once and reused by every verdict: a verdict is on the path a held
        # request waits on, and building them per call (bpfsys.map_update:
        # two ctypes buffers, the value's bytes copied, the attribute) was
        # ~4 us of its ~11 us on this VM (the syscall itself is the rest).
        self.key_size = bpfsys.map_info_by_fd(verdicts_fd).key_size
        self._kbuf = ctypes.create_string_buffer(self.key_size)
        self._value = verdict_leaf()
        self._update = bpfsys._MapElemAttr(verdicts_fd, 0, ctypes.addressof(self._kbuf),
                                           ctypes.addressof(self._value), bpfsys.BPF_ANY)

    @staticmethod
    def now_ns() -> int:
        """The clock the kernel's coarse ms_now() reads."""
        return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)

    def verdict(self, ref: bytes, code: VerdictCode) -> int:
        """Write a verdict for the connection ``ref`` (InspRecord.key);
        returns its CLOCK_MONOTONIC write time (ns)."""
        n = len(ref) - COOKIE_BYTES
        if n != self.key_size:      # memmove below must not write past the key buffer
            raise ValueError(f"verdict for a connection reference of {len(ref)} bytes: "
                             f"ms_verdicts keys are {self.key_size} bytes, plus the {COOKIE_BYTES}-byte cookie")
        ctypes.memmove(self._kbuf, ref, n)
        v = self._value
        v.verdict = int(code)
        v.cookie = int.from_bytes(ref[n:], "little")   # the kernel merges it into this connection only
        v.ts_ns = ts = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        bpfsys.sys_bpf(bpfsys.BPF_MAP_UPDATE_ELEM, self._update)
        return ts

    def heartbeat(self, pid: int) -> None:
        v = self.slowpath_leaf()
        v.heartbeat_ns = self.now_ns()
        v.pid = pid
        bpfsys.map_update(self.slowpath_fd, self.slot, bytes(v))

    def stop(self) -> None:
        """Say the slow path is gone (heartbeat 0): the kernel applies the
        slow-path-down action at once instead of after the timeout."""
        bpfsys.map_update(self.slowpath_fd, self.slot, bytes(self.slowpath_leaf()))


def session_lookup(fastpath):
    """ref (session_ref: InspRecord.key) -> the kernel's session of that
    connection (its BCC leaf), from whichever table holds it, or None once
    it is gone (a new connection on the 5-tuple is not it)."""
    from datapath.sessions import FAMILY_TABLES, map_key

    def read(ref: bytes):
        key, cookie = split_ref(ref)
        for table in FAMILY_TABLES:
            name, k = map_key(table, key)   # the map of the session's family
            t = fastpath.table(name)
            try:
                v = t[t.Key.from_buffer_copy(k)]
            except KeyError:
                continue
            return v if v.cookie == cookie else None
        return None
    return read


def session_stats(fastpath):
    """key -> ((packets to server, to client), (bytes ...)) of the kernel's
    session, or None: what the EVE flow record reports (the slow path sees
    only the inspected packets)."""
    lookup = session_lookup(fastpath)

    def read(key: bytes):
        v = lookup(key)
        return None if v is None else ((int(v.packets[0]), int(v.packets[1])), (int(v.bytes[0]), int(v.bytes[1])))
    return read


def session_seq(fastpath):
    """key -> (blocked, client's next sequence number, server's) from the
    kernel session's window data (struct ms_tcp_side.end), or None."""
    from datapath.enums import InspState
    lookup = session_lookup(fastpath)

    def read(key: bytes):
        v = lookup(key)
        return None if v is None else (v.insp_state == InspState.INSP_BLOCKED, int(v.tcp[0].end), int(v.tcp[1].end))
    return read


def open_payload_channel(fastpath):
    """(source, reader class) of the payload records of a build: the ring
    buffer, or its perf buffer fallback (fastpath.features.ringbuf)."""
    if fastpath.features.ringbuf:
        from slowpath.ringbuf import RingBuffer, RingBufferReader
        return RingBuffer(fastpath.table("ms_insp_ring").map_fd), RingBufferReader
    from slowpath.perfbuf import PerfBuffer, PerfBufferReader
    return PerfBuffer(fastpath.table("ms_insp_ring")), PerfBufferReader
