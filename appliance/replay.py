"""`microseg replay`: a capture through the real fast path and the slow path.

Every frame, in order, runs through the loaded BPF program with
BPF_PROG_TEST_RUN (the ingress hook: the program decides per packet the
same way whichever side a packet comes from); after each frame the payload
records the program wrote to the ring buffer go to the same Engine the live
daemon uses, whose verdicts land in the kernel's verdict map before the next
frame runs. EVE records are written with the capture's timestamps.

Replay is offline analysis, so its defaults differ from a gateway's where a
capture needs it: flows already running when the capture starts are picked
up (``loose``), TCP segments a capture shows out of order or out of window
pass instead of being dropped, and the inspection budget is 1 MiB a side,
so whole conversations reach the parsers.
"""
from __future__ import annotations

import collections
import gc
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from datapath import bpfsys
from datapath.config import DatapathConfig
from datapath.enums import Direction, Reason

# Without --policy: inspect every flow, pass everything else.
INSPECT_ALL = """\
defaults: {ingress: allow, egress: allow}
rules:
  - {name: inspect-everything, from: any, to: any, proto: any, action: inspect,
     inspect: {what: [dpi, waf, dlp], mode: async}}
"""
REPLAY_BUDGET = 1 << 20
# BPF_PROG_TEST_RUN builds an skb in one page, less headroom and the shared
# info: larger frames (offloaded super-packets in a capture) cannot run.
MAX_TEST_RUN_FRAME = 4096 - 256 - 320


# The collector's first threshold while the frames run (CPython's is 700
# allocations): a replay allocates a handful of containers per flow (its
# Flow, parser and reassembly state) and most are gone within a few dozen
# frames; collecting every 700 promoted enough of them to run full
# collections of the older objects as well. Measured on 4.11's capture,
# identify only (with gc.freeze below): 131 young, 11 middle and 1 full
# collection a replay, 0.6 us a frame, against 9 young ones, 0.14 us.
REPLAY_GC_THRESHOLD0 = 10_000


# Frames between two looks at the clock for the heartbeat: a look per frame
# cost more than the frame's ring checks; 1,024 frames run in milliseconds.
BEAT_CHECK_FRAMES = 1024
# The positions of a ring that is not there: always equal, never read.
_NEVER = memoryview(bytes(8)).cast("Q")


# Drop events per (source, reason) per second in a replay: the most the
# configuration takes (the ring is read after every frame, so none is lost).
DROP_EVENTS_REPLAY = 1_000_000


def replay_config(base: DatapathConfig | None = None, budget: int | None = None) -> DatapathConfig:
    base = base or DatapathConfig()
    return base.model_copy(update={"loose": True, "invalid_action": "pass", "window_action": "pass",
                                   "inspect_budget": budget if budget is not None else REPLAY_BUDGET,
                                   "heartbeat_timeout_s": 3600.0,
                                   # One reader (replay) drains one ring: every flow's records to it.
                                   "slowpath_workers": 1, "ring_wakeup": False,
                                   # Every drop of the capture logged: its frames run far faster
                                   # than they were captured, and the kernel's per-second limits
                                   # would count its own seconds, not the capture's.
                                   "drop_events_per_sec": DROP_EVENTS_REPLAY, "drop_events_cpu_per_sec": 10_000_000,
                                   # The precise session clock: every frame its own timestamp,
                                   # so flow records get their frames' capture times
                                   # (appliance/flowlog.py CaptureTime).
                                   "compat": base.compat.model_copy(update={"coarse_clock": "off"})})


# Payload bytes per segment when a captured super-packet is cut up: the
# Ethernet MSS with timestamps, what the wire carried before the capturing
# host's GRO merged it.
RESEGMENT_MSS = 1448


IPPROTO_TCP, IPPROTO_UDP = 6, 17
# IPv6 extension headers walked to the TCP header: hop-by-hop, routing,
# destination options (a fragment is not cut: its TCP header is elsewhere).
IPV6_EXT_HEADERS = (0, 43, 60)
TCP_FIN_PSH = 0x09
_U16, _U32 = struct.Struct(">H"), struct.Struct(">I")


def _csum(data: bytes) -> int:
    """The Internet checksum of ``data`` (RFC 1071). The ones'-complement
    sum of 16-bit words is the number they spell modulo 0xFFFF (2**16 is 1
    modulo 0xFFFF), one big-int operation instead of a loop over words."""
    if len(data) & 1:
        data += b"\0"
    s = int.from_bytes(data, "big") % 0xFFFF
    if s == 0 and any(data):
        s = 0xFFFF
    return ~s & 0xFFFF


def _tcp_layout(frame: bytes, kind: str, l3: int) -> tuple[int, int, int] | None:
    """(TCP header offset, payload start, payload end) of the IP packet of
    ``kind`` ("ipv4" / "ipv6") at ``l3`` when it carries a whole TCP segment
    (behind IPv4 options, IPv6 extension headers), or None."""
    n = len(frame)
    if kind == "ipv4":
        ihl = (frame[l3] & 0x0F) * 4
        if ihl < 20 or frame[l3 + 9] != IPPROTO_TCP or _U16.unpack_from(frame, l3 + 6)[0] & 0x3FFF:
            return None                               # not TCP, or a fragment (MF or an offset)
        total = _U16.unpack_from(frame, l3 + 2)[0]
        l4 = l3 + ihl
        # A segmentation-offload capture may carry 0 here: the frame says how long.
        end = l3 + total if ihl < total <= n - l3 else n
    else:
        nh, l4 = frame[l3 + 6], l3 + 40
        while nh in IPV6_EXT_HEADERS and l4 + 8 <= n:
            nh, l4 = frame[l4], l4 + (frame[l4 + 1] + 1) * 8
        if nh != IPPROTO_TCP:
            return None
        plen = _U16.unpack_from(frame, l3 + 4)[0]
        end = l3 + 40 + plen if 0 < plen <= n - l3 - 40 else n
    if l4 + 20 > end:
        return None
    start = l4 + (frame[l4 + 12] >> 4) * 4
    if start < l4 + 20 or start > end:
        return None
    return l4, start, end


def _ip_addrs(frame: bytes | bytearray, kind: str, l3: int) -> bytes:
    """The source and destination addresses of the IP header at ``l3`` (a
    pseudo-header's)."""
    return bytes(frame[l3 + 8:l3 + 40]) if kind == "ipv6" else bytes(frame[l3 + 12:l3 + 20])


def _fix_outer(seg: bytearray, outer: list[tuple[str, int]], end: int) -> None:
    """The headers around a tunnelled segment made to fit it, innermost first
    (a UDP or GRE checksum covers the headers inside it): each IP and UDP
    length runs to ``end`` (the inner packet's end: a tunnel carries nothing
    after it), IPv4 header checksums; a UDP checksum the capture had is
    recomputed (a zero one stays zero: none over IPv4, RFC 6935's zero for a
    tunnel over IPv6), a GRE checksum (RFC 2784) when the header has one."""
    from slowpath.pcap import GRE_CSUM

    for i in range(len(outer) - 1, -1, -1):
        kind, off = outer[i]
        if kind == "ipv4":
            _U16.pack_into(seg, off + 2, end - off)
            ihl = (seg[off] & 0x0F) * 4
            seg[off + 10:off + 12] = b"\0\0"
            _U16.pack_into(seg, off + 10, _csum(bytes(seg[off:off + ihl])))
        elif kind == "ipv6":
            _U16.pack_into(seg, off + 4, end - off - 40)
        elif kind == "udp":
            _U16.pack_into(seg, off + 4, end - off)
            if _U16.unpack_from(seg, off + 6)[0]:
                ip_kind, ip_off = outer[i - 1]      # the IP header the UDP header follows
                seg[off + 6:off + 8] = b"\0\0"
                pseudo = _ip_addrs(seg, ip_kind, ip_off) + _U32.pack(end - off) + _U32.pack(IPPROTO_UDP)
                # RFC 768: a computed 0 is sent as all ones (0 means none).
                _U16.pack_into(seg, off + 6, _csum(pseudo + bytes(seg[off:end])) or 0xFFFF)
        elif _U16.unpack_from(seg, off)[0] & GRE_CSUM:
            seg[off + 4:off + 6] = b"\0\0"
            _U16.pack_into(seg, off + 4, _csum(bytes(seg[off:end])))


def resegment(frame: bytes, limit: int) -> list[bytes] | None:
    """A TCP frame larger than ``limit`` (a GRO / TSO super-packet, as a
    capture on a host shows it) as the segments the wire carried: same
    headers (VLAN tags, IP and TCP options), consecutive sequence numbers,
    FIN and PSH on the last only, IP lengths and the IPv4 header and TCP
    checksums recomputed (the fast path checks none of them, but the
    segments are what a wire would carry). Inside a tunnel (slowpath/pcap.py
    encapsulation(): IPIP / 6in4, GRE, VXLAN, GENEVE) the innermost TCP
    segment is cut and the tunnel's headers are rebuilt around each piece
    (_fix_outer). Bytes after the IP packet (an Ethernet trailer) are
    dropped. None for anything else (no TCP, a fragment, or headers alone
    too large)."""
    from slowpath.pcap import encapsulation

    layers = encapsulation(frame)
    if not layers:
        return None
    kind, l3 = layers[-1]
    layout = _tcp_layout(frame, kind, l3)
    if layout is None:
        return None
    v6 = kind == "ipv6"
    outer = layers[:-1]
    l4, start, end = layout
    total = end - start
    mss = min(RESEGMENT_MSS, limit - (len(frame) - total))
    if mss <= 0 or total <= 0:
        return None
    head = bytearray(frame[:start])
    # Pseudo-header: the addresses; the protocol and the TCP length are
    # added per segment (as one word sum: the checksum is position-free
    # over aligned words, and both layouts put them on word boundaries).
    addrs = _ip_addrs(frame, kind, l3)
    seq0 = _U32.unpack_from(frame, l4 + 4)[0]
    flags = frame[l4 + 13]
    tcp_hlen = start - l4
    out = []
    for i in range(0, total, mss):
        chunk = frame[start + i:start + min(i + mss, total)]
        if v6:
            _U16.pack_into(head, l3 + 4, start - l3 - 40 + len(chunk))
        else:
            _U16.pack_into(head, l3 + 2, start - l3 + len(chunk))
            head[l3 + 10:l3 + 12] = b"\0\0"
            _U16.pack_into(head, l3 + 10, _csum(bytes(head[l3:l4])))
        _U32.pack_into(head, l4 + 4, (seq0 + i) & 0xFFFFFFFF)
        head[l4 + 13] = flags if i + mss >= total else flags & ~TCP_FIN_PSH
        head[l4 + 16:l4 + 18] = b"\0\0"
        seg_len = tcp_hlen + len(chunk)
        pseudo = addrs + _U32.pack(seg_len) + _U32.pack(IPPROTO_TCP)
        tcp = bytes(head[l4:]) + chunk
        _U16.pack_into(head, l4 + 16, _csum(pseudo + tcp))
        if outer:
            seg = head + chunk
            _fix_outer(seg, outer, start + len(chunk))
            out.append(bytes(seg))
        else:
            out.append(bytes(head) + chunk)
    return out


@dataclass
class ReplayResult:
    frames: int = 0
    not_ethernet: int = 0
    too_short: int = 0     # frames shorter than an Ethernet header (empty or cut records)
    too_big: int = 0       # frames BPF_PROG_TEST_RUN cannot take and resegment() could not cut
    resegmented: int = 0   # TCP super-packets cut into wire-sized segments
    # The first payload record the engine skipped as malformed (their count:
    # engine.counters.bad_records); None when there was none.
    bad_record: str | None = None
    # CPU time (all threads) of the frame loop and the closing of the flows:
    # the replay's own cost, start-up (BPF compile and load) excluded.
    cpu_s: float = 0.0
    reasons: collections.Counter = field(default_factory=collections.Counter)
    records: int = 0
    eve_records: int = 0
    drop_records: int = 0  # of eve_records: the kernel's drops (appliance/droplog.py)
    flow_records: int = 0  # sessions ended (one EVE flow record each; appliance/flowlog.py)
    engine: object = None
    # The capture ended in a record cut short or corrupt: the PcapError,
    # whose ``offset`` is where reading stopped. Every frame before it ran.
    cut: object = None


def replay(pcap: str | Path, fastpath, rules, emit, *, policy_text: str | None = None,
           policy_path: str = "<built-in: inspect everything>") -> ReplayResult:
    """Run ``pcap`` through ``fastpath`` (loaded with replay_config()) and an
    Engine with ``rules``; EVE records go to ``emit``."""
    from appliance.policyfile import compile_text, rule_names
    from datapath.policy_maps import PolicyMaps
    from datapath.sessions import WIDE_KEY_MAP, layouts_of
    from slowpath.engine import Engine
    from slowpath.pcap import ETH_HEADER_LEN, PcapError, ethernet_frames
    from slowpath.records import RecordDecoder, VerdictWriter, open_payload_channel, record_type, session_stats

    fp = fastpath
    model, pol = compile_text(policy_text if policy_text is not None else INSPECT_ALL, policy_path)
    PolicyMaps.for_fastpath(fp).apply(pol)
    types = layouts_of(fp)
    decoder = RecordDecoder(record_type({"ms_insp_scratch": (None, fp.table("ms_insp_scratch").Leaf)}),
                            types[WIDE_KEY_MAP][0])
    writer = VerdictWriter(fp.table("ms_verdicts").map_fd, fp.table("ms_slowpath").map_fd,
                           fp.table("ms_verdicts").Leaf, fp.table("ms_slowpath").Leaf)
    result = ReplayResult()
    now = [0.0]

    def count_emit(rec):
        result.eve_records += 1
        emit(rec)

    from slowpath.l7allow import compile_lists
    engine = Engine(rules, count_emit, writer, failure_actions=fp.runtime.failure_actions, l7=compile_lists(model),
                    simulate=fp.runtime.simulate, plugins=fp.protocols,
                    app_names={i: n for n, i in fp.l7.ids.items()}, session_stats=session_stats(fp),
                    inspect_budget=fp.runtime.inspect_budget,
                    clock=lambda: now[0], wallclock=lambda: now[0],
                    kernel_flow_records=fp.features.ringbuf)
    result.engine = engine
    # One flow record per session, from the kernel's session ends (without
    # ring buffers: the engine's records of the inspected flows only).
    from appliance.flowlog import ReplayFlows
    flows = ReplayFlows(fp, engine, count_emit, engine.app_names) if fp.features.ringbuf else None
    ring, _ = open_payload_channel(fp)
    # Drop records (appliance/droplog.py), stamped with the capture's time.
    from appliance.droplog import DropLog
    drops = DropLog.for_fastpath(fp, count_emit, clock=lambda: now[0], ifaces=False)
    drain_drops = drops.drain if drops is not None else (lambda: 0)
    if drops is not None:
        drops.rule_names = rule_names(pol)
    # One reusable test run (attr, context, input buffer made once); the
    # packet that comes back is not needed, so the kernel copies none. No
    # __sk_buff context either: replay's would be all zeros (no ifindex, no
    # mark), which is what the kernel gives a packet run without one but
    # for wire_len, which the fast path does not read; without it the
    # kernel neither copies nor converts it (~0.2 us a frame: 4.58 -> 4.39
    # us, medians of 9 rounds of 40,000 corpus frames through the program).
    runner = bpfsys.TestRunner(fp.prog_fd(Direction.DIR_INGRESS), copy_out=False, tc=False)
    run, drain, take = runner.bound(), ring.drain, ring.take
    handle_raw, handle_raw_batch = engine.handle_raw, engine.handle_raw_batch
    # After each frame a ring is read only if the kernel wrote to it: its
    # producer position moved past its consumer position (read from the
    # mapped pages: two memory reads, where a drain of an empty ring is a
    # method call and ~0.4 us). Most frames write to none of the three.
    pay_cons, pay_prod = ring.position_views()
    drop_cons, drop_prod = drops.rb.position_views() if drops is not None else (_NEVER, _NEVER)
    flow_cons, flow_prod = flows.rb.position_views() if flows is not None else (_NEVER, _NEVER)
    drain_flows = flows.drain if flows is not None else None
    # The session clock read before each frame (appliance/flowlog.py
    # CaptureTime). With the precise clock replay_config() sets, that is a
    # reading and the frame's time appended to two lists: done here, in
    # the loop, instead of a method call a frame.
    precise = flows is not None and not fp.features.coarse_clock
    if precise:
        tick_ns, ticks, stamps = time.monotonic_ns, flows.times.ticks.append, flows.times.first.append
        tick = None
    else:
        tick = flows.times.frame if flows is not None else (lambda ts: None)

    def after_run() -> None:
        """What a frame's run wrote to the rings, read (the rare paths:
        frames cut up, the coarse clock; the common one is inlined below)."""
        if drop_prod[0] != drop_cons[0]:
            drain_drops()
        if flow_prod[0] != flow_cons[0]:
            drain_flows()
        if pay_prod[0] != pay_cons[0]:
            taken()

    def taken() -> None:
        """What a frame's run wrote to the payload ring, to the engine: its
        one record (every frame of 4.11's capture that wrote any) taken
        alone (RingBuffer.take: no list, no loop) and handed over as
        records() would; more (a packet held whole in pieces) as a batch."""
        nonlocal nrecords
        raw = take()
        if pay_prod[0] != pay_cons[0]:
            records([raw, *drain()] if raw is not None else drain())
        elif raw is not None:
            nrecords += 1
            bad = handle_raw(raw, decoder)
            if bad is not None and result.bad_record is None:
                result.bad_record = bad

    def records(raws: list) -> None:
        """A frame's payload records to the engine: one record (a frame
        writes one, but for a packet held whole in pieces) without the
        batch's bookkeeping (Engine.handle_raw), more as a batch."""
        nonlocal nrecords
        nrecords += len(raws)
        if len(raws) == 1:
            bad = handle_raw(raws[0], decoder)
            if bad is not None and result.bad_record is None:
                result.bad_record = bad
        elif raws:
            bad = handle_raw_batch(raws, decoder)
            if bad and result.bad_record is None:
                result.bad_record = bad[0]

    # The kernel judges the heartbeat by its own clock, not the capture's:
    # one write covers replay_config()'s timeout; a replay running longer
    # writes it again when half of it has passed (looked at every
    # BEAT_CHECK_FRAMES frames).
    beat_every = fp.runtime.heartbeat_timeout_s / 2
    nframes = nrecords = 0
    froze, thresholds = False, None
    try:
        # What the rings hold before the first frame is not this capture's
        # (a fast path that ran other packets before, as tests sharing one
        # do): read and thrown away, not logged as the capture's drops or
        # session ends.
        drain()
        for other in (drops, flows):
            if other is not None:
                other.rb.drain()
        drops_before = drops.records if drops is not None else 0
        writer.heartbeat(0)
        next_beat = time.monotonic() + beat_every
        before = fp.counters()
        # What exists before the frames (modules, the compiled policy, BCC's
        # tables: ~75,000 objects) is set aside from the collector while they
        # run (gc.freeze), or each full collection walks it all again (~40 ms
        # each, one or two a replay); and young collections run less often
        # (REPLAY_GC_THRESHOLD0). Objects the replay makes are collected as
        # before; a caller's own freeze and thresholds are left as they were.
        froze = not gc.get_freeze_count()
        if froze:
            gc.freeze()
        thresholds = gc.get_threshold()
        if thresholds[0]:           # 0: the caller turned collection off
            gc.set_threshold(max(thresholds[0], REPLAY_GC_THRESHOLD0), *thresholds[1:])
        cpu0 = time.process_time()
        try:
            for _, ts, eth in ethernet_frames(pcap):
                nframes += 1
                now[0] = ts
                if eth is None:
                    result.not_ethernet += 1
                    continue
                n = len(eth)
                if precise and ETH_HEADER_LEN <= n <= MAX_TEST_RUN_FRAME:
                    # The common frame, every step inline (after_run()'s body).
                    ticks(tick_ns())
                    stamps(ts)
                    run(eth)
                    if drop_prod[0] != drop_cons[0]:
                        drain_drops()
                    if flow_prod[0] != flow_cons[0]:
                        drain_flows()
                    if pay_prod[0] != pay_cons[0]:
                        taken()
                else:
                    if n > MAX_TEST_RUN_FRAME:
                        pieces = resegment(eth, MAX_TEST_RUN_FRAME)
                        if pieces is None:
                            result.too_big += 1
                            continue
                        result.resegmented += 1
                    elif n < ETH_HEADER_LEN:
                        result.too_short += 1
                        continue
                    else:
                        pieces = (eth,)
                    for piece in pieces:
                        if precise:
                            ticks(tick_ns())
                            stamps(ts)
                        else:
                            tick(ts)
                        run(piece)
                        after_run()
                if not nframes % BEAT_CHECK_FRAMES and time.monotonic() > next_beat:
                    writer.heartbeat(0)
                    next_beat = time.monotonic() + beat_every
        except PcapError as e:
            if e.frame is None:
                raise              # not a capture at all (its file header): a failure
            # A record cut short or corrupt: finish the frames before it.
            result.cut = e
        result.frames, result.records = nframes, nrecords
        if flows is not None:
            flows.flush()          # the sessions still open when the capture ends
            result.flow_records = flows.records
        engine.close_all("shutdown")
        if drops is not None:
            result.drop_records = drops.records - drops_before
        result.cpu_s = time.process_time() - cpu0
        after = fp.counters()
        for (d, r), (pk, _) in after.items():
            moved = pk - before.get((d, r), (0, 0))[0]
            if moved:
                result.reasons[Reason(r).name] += moved
    finally:
        if thresholds is not None:
            gc.set_threshold(*thresholds)
        if froze:
            gc.unfreeze()
        ring.close()
        if drops is not None:
            drops.close()
        if flows is not None:
            flows.close()
    return result
