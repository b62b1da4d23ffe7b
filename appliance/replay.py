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
from dataclasses import dataclass, field
from pathlib import Path

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


def replay_config(base: DatapathConfig | None = None, budget: int | None = None) -> DatapathConfig:
    base = base or DatapathConfig()
    return base.model_copy(update={"loose": True, "invalid_action": "pass", "window_action": "pass",
                                   "inspect_budget": budget if budget is not None else REPLAY_BUDGET,
                                   "heartbeat_timeout_s": 3600.0})


# Payload bytes per segment when a captured super-packet is cut up: the
# Ethernet MSS with timestamps, what the wire carried before the capturing
# host's GRO merged it.
RESEGMENT_MSS = 1448


def resegment(frame: bytes, limit: int) -> list[bytes] | None:
    """A TCP frame larger than ``limit`` (a GRO / TSO super-packet, as a
    capture on a host shows it) as the segments the wire carried: same
    headers, consecutive sequence numbers, FIN and PSH on the last only.
    None for anything else (no TCP, or headers alone too large)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    pkt = Ether(frame)
    tcp = pkt.getlayer(TCP)
    if tcp is None:
        return None
    payload = bytes(tcp.payload)
    mss = min(RESEGMENT_MSS, limit - (len(frame) - len(payload)))
    if mss <= 0 or not payload:
        return None
    out = []
    for i in range(0, len(payload), mss):
        seg = pkt.copy()
        t = seg[TCP]
        t.remove_payload()
        t.seq = (tcp.seq + i) % 2**32
        if i + mss < len(payload):
            t.flags = t.flags & ~0x09          # FIN, PSH: on the last segment only
        t.add_payload(payload[i:i + mss])
        del t.chksum
        if seg.haslayer(IP):
            del seg[IP].len
            del seg[IP].chksum
        if seg.haslayer(IPv6):
            del seg[IPv6].plen
        out.append(bytes(seg))
    return out


@dataclass
class ReplayResult:
    frames: int = 0
    not_ethernet: int = 0
    too_short: int = 0     # frames shorter than an Ethernet header (empty or cut records)
    too_big: int = 0       # frames BPF_PROG_TEST_RUN cannot take and resegment() could not cut
    resegmented: int = 0   # TCP super-packets cut into wire-sized segments
    reasons: collections.Counter = field(default_factory=collections.Counter)
    records: int = 0
    eve_records: int = 0
    engine: object = None
    # The capture ended in a record cut short or corrupt: the PcapError,
    # whose ``offset`` is where reading stopped. Every frame before it ran.
    cut: object = None


def replay(pcap: str | Path, fastpath, rules, emit, *, policy_text: str | None = None,
           policy_path: str = "<built-in: inspect everything>") -> ReplayResult:
    """Run ``pcap`` through ``fastpath`` (loaded with replay_config()) and an
    Engine with ``rules``; EVE records go to ``emit``."""
    from appliance.policyfile import compile_text
    from datapath.policy_maps import PolicyMaps
    from datapath.sessions import layouts_of
    from slowpath.engine import Engine
    from slowpath.pcap import ETH_HEADER_LEN, PcapError, ethernet_frames
    from slowpath.records import RecordDecoder, VerdictWriter, open_payload_channel, record_type, session_stats

    fp = fastpath
    _, pol = compile_text(policy_text if policy_text is not None else INSPECT_ALL, policy_path)
    PolicyMaps.for_fastpath(fp).apply(pol)
    types = layouts_of(fp)
    decoder = RecordDecoder(record_type({"ms_insp_scratch": (None, fp.table("ms_insp_scratch").Leaf)}),
                            types["ms_flows"][0])
    writer = VerdictWriter(fp.table("ms_verdicts").map_fd, fp.table("ms_slowpath").map_fd,
                           fp.table("ms_verdicts").Leaf, fp.table("ms_slowpath").Leaf)
    result = ReplayResult()
    now = [0.0]

    def count_emit(rec):
        result.eve_records += 1
        emit(rec)

    engine = Engine(rules, count_emit, writer, failure_actions=fp.runtime.failure_actions,
                    simulate=fp.runtime.simulate, plugins=fp.protocols,
                    app_names={i: n for n, i in fp.l7.ids.items()}, session_stats=session_stats(fp),
                    inspect_budget=fp.runtime.inspect_budget,
                    clock=lambda: now[0], wallclock=lambda: now[0])
    result.engine = engine
    ring, _ = open_payload_channel(fp)
    try:
        ring.drain()
        before = fp.counters()
        frames = ethernet_frames(pcap)
        while True:
            try:
                frame, ts, eth = next(frames)
            except StopIteration:
                break
            except PcapError as e:
                if e.frame is None:
                    raise              # not a capture at all (its file header): a failure
                # A record cut short or corrupt: finish the frames before it.
                result.cut = e
                break
            result.frames += 1
            now[0] = ts
            if eth is None:
                result.not_ethernet += 1
                continue
            if len(eth) < ETH_HEADER_LEN:
                result.too_short += 1
                continue
            writer.heartbeat(0)
            pieces = [eth]
            if len(eth) > MAX_TEST_RUN_FRAME:
                pieces = resegment(eth, MAX_TEST_RUN_FRAME)
                if pieces is None:
                    result.too_big += 1
                    continue
                result.resegmented += 1
            for piece in pieces:
                fp.run(piece, Direction.DIR_INGRESS)
                for raw in ring.drain():
                    result.records += 1
                    engine.handle(decoder.decode(raw))
        engine.close_all("shutdown")
        after = fp.counters()
        for (d, r), (pk, _) in after.items():
            moved = pk - before.get((d, r), (0, 0))[0]
            if moved:
                result.reasons[Reason(r).name] += moved
    finally:
        ring.close()
    return result
