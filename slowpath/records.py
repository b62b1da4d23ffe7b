"""Payload records from the kernel (struct ms_insp_rec, bpf/lib/maps.h),
decoded; and the verdicts and heartbeat the slow path writes back.

The record layout is the one BCC compiled: the ``h`` field of the
ms_insp_scratch map's value type (struct ms_insp_buf), so nothing here
restates the C struct.
"""
from __future__ import annotations

import ctypes
import ipaddress
import socket
import time
from dataclasses import dataclass

from datapath import bpfsys
from datapath.enums import VerdictCode

CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)


def record_type(layouts: dict[str, tuple[type, type]]) -> type:
    """ctypes type of struct ms_insp_rec, from the compiled layouts
    (datapath.sessions.layouts() or layouts_of(fastpath))."""
    leaf = layouts["ms_insp_scratch"][1]
    if issubclass(leaf, ctypes.Array):   # BCC types a per-CPU value as one slot per CPU
        leaf = leaf._type_
    return dict(leaf._fields_)["h"]


def _addr(raw) -> str:
    b = bytes(raw)
    ip = ipaddress.IPv6Address(b)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)


@dataclass(frozen=True)
class InspRecord:
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


class RecordDecoder:
    def __init__(self, rec_type: type, key_type: type):
        self.rec_type = rec_type
        self.hsize = ctypes.sizeof(rec_type)
        self.key_size = ctypes.sizeof(key_type)

    def decode(self, raw: bytes) -> InspRecord:
        if len(raw) < self.hsize:
            raise ValueError(f"payload record of {len(raw)} bytes, header alone is {self.hsize}")
        h = self.rec_type.from_buffer_copy(raw[:self.hsize])
        k = h.key
        lo = (_addr(k.addr_lo), socket.ntohs(k.port_lo))
        hi = (_addr(k.addr_hi), socket.ntohs(k.port_hi))
        client, server = (hi, lo) if h.initiator_is_hi else (lo, hi)
        data = raw[self.hsize:self.hsize + h.len]
        return InspRecord(h.ts_ns, session_ref(bytes(k)[:self.key_size], h.cookie), client, server, h.side, h.seq,
                          h.ack_seq, h.tcp_flags, h.l4, h.app, h.inspect, h.rule_id, h.hook, h.orig_len, bytes(data),
                          h.frag, h.frag_id, h.frag_off)


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

    @staticmethod
    def now_ns() -> int:
        """The clock the kernel's coarse ms_now() reads."""
        return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)

    def verdict(self, ref: bytes, code: VerdictCode) -> int:
        """Write a verdict for the connection ``ref`` (InspRecord.key);
        returns its CLOCK_MONOTONIC write time (ns)."""
        key, cookie = split_ref(ref)
        v = self.verdict_leaf()
        v.verdict = int(code)
        v.cookie = cookie          # the kernel merges it into this connection only
        v.ts_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        bpfsys.map_update(self.verdicts_fd, key, bytes(v))
        return v.ts_ns

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
    tables = [fastpath.table("ms_flows"), fastpath.table("ms_halfopen")]

    def read(ref: bytes):
        key, cookie = split_ref(ref)
        for t in tables:
            try:
                v = t[t.Key.from_buffer_copy(key)]
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
