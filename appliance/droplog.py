"""Drop records: what the fast path dropped, and why, to the EVE sinks.

The kernel writes an event (bpf/lib/maps.h struct ms_drop_event) to its own
ring buffer, ms_drop_ring, for a dropped packet, rate-bounded in the kernel
per (source address, reason) and per CPU (fastpath.c ms_drop_log): what it
did not send is counted, and the key's next event carries that count
(``suppressed``). The daemon reads the ring on its event loop
(:meth:`DropLog.start`) and writes one Suricata ``drop`` record per event
(slowpath/eve.py kernel_drop_record). The kernel's own tallies (events
sent, suppressed, ring full) are in ms_drop_stats (:func:`read_drop_stats`).

On a kernel without BPF ring buffers (compat ringbuf off) there is no drop
ring: the drops are in the per-reason counters only.
"""
from __future__ import annotations

import ctypes
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from datapath import bpfsys
from datapath.enums import Direction, Reason
from datapath.pressure import possible_cpus
from datapath.ringrecords import ringbuf_record_type
from slowpath import eve
from slowpath.ringbuf import RingBuffer, RingBufferError, RingBufferReader

log = logging.getLogger("microseg.droplog")

RING = "ms_drop_ring"
STATS = "ms_drop_stats"
# Interface names remembered by ifindex (the managed interfaces: a handful;
# the bound only stops a bogus index from growing it).
_IFNAME_CACHE_MAX = 256
# ms_drop_stats fields summed over CPUs for status and metrics (the rest is
# the per-CPU window state).
STAT_FIELDS = ("events", "suppressed", "cpu_capped", "ring_full", "untracked")


@dataclass(frozen=True)
class DropEvent:
    """One kernel drop event, decoded (addresses None when the packet had no
    IP header parsed)."""
    ts: float                 # wall clock seconds
    reason: Reason
    hook: Direction
    src_ip: str | None
    dest_ip: str | None
    src_port: int | None
    dest_port: int | None
    proto: int
    length: int
    tcp_flags: int
    tcpseq: int
    tcpack: int
    tcpwin: int
    icmp_type: int
    icmp_code: int
    vlan: int
    ifindex: int
    rule_id: int
    suppressed: int


def _addr(raw, family: int) -> str | None:
    b = bytes(raw)
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, b[12:16])
    if family == 6:
        return str(ipaddress.IPv6Address(b))
    return None


class DropDecoder:
    """Raw ring records -> DropEvent, with the record layout BCC read from
    maps.h (datapath/ringrecords.py)."""

    def __init__(self, record_type: type):
        self.record = record_type
        self.size = ctypes.sizeof(record_type)
        # The kernel stamps events with CLOCK_MONOTONIC (bpf_ktime_get_ns or
        # its coarse form); EVE wants the wall clock.
        self.wall_offset = time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)

    def decode(self, raw: bytes) -> DropEvent:
        if len(raw) < self.size:
            raise ValueError(f"{RING}: record of {len(raw)} bytes, struct ms_drop_event has {self.size}")
        r = self.record.from_buffer_copy(raw)
        ports = r.family and r.proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_ICMP,
                                         socket.IPPROTO_ICMPV6)
        return DropEvent(
            ts=self.wall_offset + r.ts_ns / 1e9, reason=Reason(r.reason), hook=Direction(r.hook & 1),
            src_ip=_addr(r.saddr, r.family), dest_ip=_addr(r.daddr, r.family),
            src_port=socket.ntohs(r.sport) if ports else None, dest_port=socket.ntohs(r.dport) if ports else None,
            proto=r.proto, length=r.len, tcp_flags=r.tcp_flags, tcpseq=r.seq, tcpack=r.ack_seq, tcpwin=r.window,
            icmp_type=r.icmp_type, icmp_code=r.icmp_code, vlan=r.vlan, ifindex=r.ifindex, rule_id=r.rule_id,
            suppressed=r.suppressed)


def _ifname(index: int, cache: dict[int, str | None]) -> str | None:
    if index in cache:
        return cache[index]
    try:
        name = socket.if_indextoname(index) if index else None
    except OSError:
        name = None
    if len(cache) < _IFNAME_CACHE_MAX:
        cache[index] = name
    return name


def drop_record(ev: DropEvent, in_iface: str | None = None, rule_names: dict[int, str] | None = None) -> dict:
    """The EVE ``drop`` record of one event (``rule_names``: rule id -> name
    of the policy in force)."""
    return eve.kernel_drop_record(
        ev.reason, ev.ts, src_ip=ev.src_ip, dest_ip=ev.dest_ip, src_port=ev.src_port, dest_port=ev.dest_port,
        proto=ev.proto, length=ev.length, tcp_flags=ev.tcp_flags, tcpseq=ev.tcpseq, tcpack=ev.tcpack,
        tcpwin=ev.tcpwin, icmp_type=ev.icmp_type, icmp_code=ev.icmp_code, vlan=ev.vlan, hook=ev.hook,
        in_iface=in_iface, rule_id=ev.rule_id, rule_name=(rule_names or {}).get(ev.rule_id) if ev.rule_id else None,
        suppressed=ev.suppressed)


class DropLog:
    """Reads a build's ms_drop_ring on an asyncio loop and hands each event's
    EVE record to ``emit`` (the daemon's EveLog.emit). A record that cannot
    be decoded is counted and named once in the log, never raised into the
    loop."""

    def __init__(self, fp, emit: Callable[[dict], object], *, clock: Callable[[], float] | None = None,
                 ifaces: bool = True):
        table = fp.table(RING)
        stats = fp.table(STATS)
        self.stats_fd, self.stats_leaf = stats.map_fd, stats.Leaf
        self.decoder = DropDecoder(ringbuf_record_type(table, "ms_drop_event"))
        self.rb = RingBuffer(table.map_fd)            # the build keeps the fd
        self.emit = emit
        self.clock = clock      # the records' time instead of the kernel's (a replay: the capture's)
        self.ifaces = ifaces    # in_iface from the event's ifindex (not in a replay: BPF_PROG_TEST_RUN's is lo)
        self.rule_names: dict[int, str] = {}       # of the policy in force (the daemon sets them)
        self.records = 0
        self.bad = 0
        self._ifnames: dict[int, str | None] = {}
        self.reader = RingBufferReader(self.rb, self.handle, on_error=self._ring_error)

    @classmethod
    def for_fastpath(cls, fp, emit: Callable[[dict], object], *,
                     clock: Callable[[], float] | None = None, ifaces: bool = True) -> "DropLog | None":
        """None when the build has no drop ring (no BPF ring buffers)."""
        if not fp.features.ringbuf:
            return None
        return cls(fp, emit, clock=clock, ifaces=ifaces)

    def handle(self, raw: bytes) -> None:
        try:
            ev = self.decoder.decode(raw)
            if self.clock is not None:
                ev = replace(ev, ts=self.clock())
            rec = drop_record(ev, _ifname(ev.ifindex, self._ifnames) if self.ifaces else None, self.rule_names)
        except ValueError as e:      # a reason or hook this build does not know, a short record
            self.bad += 1
            if self.bad == 1:
                log.error("drop log: record not decoded (%s); further ones are counted only", e)
            return
        self.records += 1
        self.emit(rec)

    def stats(self) -> dict[str, int]:
        """The kernel's tallies (ms_drop_stats, STAT_FIELDS) and this
        reader's: ``records`` written to EVE, ``bad`` records not decoded."""
        return {**read_drop_stats(self.stats_fd, self.stats_leaf), "records": self.records, "bad": self.bad}

    def collector(self):
        """A Prometheus collector of :meth:`stats`, read at each scrape:
        microseg_drop_events_total{outcome}, every outcome present from the
        first scrape (a full ring shows as outcome="ring_full")."""
        from prometheus_client.core import CounterMetricFamily
        droplog = self

        class Collector:
            def collect(self):
                st = droplog.stats()
                m = CounterMetricFamily("microseg_drop_events",
                                        "Dropped packets by what the drop log did with them: sent (an event "
                                        "to ms_drop_ring), suppressed (over the per-source-and-reason or "
                                        "per-CPU limit; cpu_capped: of those, the CPU's), ring_full (the "
                                        "ring had no room), untracked (no limiter entry), records (EVE drop "
                                        "records written), bad (records not decoded)", labels=["outcome"])
                for label, key in (("sent", "events"), ("suppressed", "suppressed"), ("cpu_capped", "cpu_capped"),
                                   ("ring_full", "ring_full"), ("untracked", "untracked"), ("records", "records"),
                                   ("bad", "bad")):
                    m.add_metric([label], st[key])
                yield m
        return Collector()

    def _ring_error(self, e: RingBufferError) -> None:
        log.error("drop log stopped: %s: %s", RING, e)

    def start(self, loop=None) -> None:
        self.reader.start(loop)

    def drain(self) -> int:
        """Read what is in the ring now (at stop: the last events go out)."""
        return self.rb.consume(self.handle)

    def stop(self) -> None:
        """Stop reading from the loop (while it still runs)."""
        self.reader.stop()

    def close(self) -> None:
        self.reader.stop()
        self.rb.close()


def read_drop_stats(fd: int, leaf: type, ncpus: int | None = None) -> dict[str, int]:
    """ms_drop_stats summed over CPUs (STAT_FIELDS)."""
    if issubclass(leaf, ctypes.Array):   # BCC types a per-CPU value as one slot per CPU
        leaf = leaf._type_
    ncpus = ncpus or possible_cpus()
    stride = (ctypes.sizeof(leaf) + 7) // 8 * 8
    raw = bpfsys.map_lookup(fd, (0).to_bytes(4, "little"), stride * ncpus)
    out = dict.fromkeys(STAT_FIELDS, 0)
    if raw is None:
        return out
    for c in range(ncpus):
        v = leaf.from_buffer_copy(raw, c * stride)
        for k in STAT_FIELDS:
            out[k] += getattr(v, k)
    return out
