"""microseg's parsers alone: a capture file through the pcap reader, TCP
reassembly, protocol detection and the parsers, no kernel.

This is what `bench/peers.py` sets beside ``ndpiReader -i``: one result per
transport flow, naming the application protocol the way the slow path does
(slowpath/analyzer.py). With ``identify_only`` a flow is parsed only until
it is identified (FlowAnalyzer.identified: its protocol and naming fields,
Host / SNI / DNS name, are known), as nDPI stops after identification and
as the engine releases a `what: [dpi]` flow; its later packets are only
counted. Without it every byte of every flow is parsed.

Flows are the pcap reader's: inside a tunnel (IPIP, 6in4, GRE, VXLAN,
GENEVE; slowpath/pcap.py) a flow is the innermost IP header's, its result
named by the inner addresses and ports.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from socket import IPPROTO_TCP

from protocols import registry
from protocols.api import Direction
from slowpath.analyzer import FlowAnalyzer
from slowpath.pcap import _ip_text, flow_packets
from slowpath.reassembly import ACK, SYN, ReassemblyBudget, ReassemblyLimits, StreamReassembler


@dataclass
class FlowResult:
    """One transport flow of the capture, as the parsers saw it."""
    proto: str                        # "tcp" or "udp"
    client: tuple[str, int]           # (ip, port); IPv6 compressed
    server: tuple[str, int]
    app: str | None                   # protocol as microseg names it ("http", "tls", ...)
    names: dict[str, str] = field(default_factory=dict)   # "host", "sni", "dns_query", ...
    packets: int = 0
    identified: bool = False          # naming fields found (FlowAnalyzer.identified)
    events: int = 0                   # parser events produced

    @property
    def key(self) -> str:
        """The corpus truth's key: ``"tcp 10.0.0.1:51000 -> 10.0.0.2:80"``."""
        return f"{self.proto} {_endpoint(self.client)} -> {_endpoint(self.server)}"


def _endpoint(ep: tuple[str, int]) -> str:
    ip, port = ep
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class _Flow:
    """One flow while the capture is read. Side 0 sent the flow's first
    packet; ``client`` is the side the orientation rule of slowpath/pcap.py
    (read_capture) makes the client, None while a TCP flow without a SYN so
    far may still be turned round by one (its events wait in ``pending``)."""
    __slots__ = ("result", "an", "reasm", "client", "syn_from", "synack_from", "pending", "done")

    def __init__(self, result: FlowResult, an: FlowAnalyzer, reasm: StreamReassembler | None,
                 client: int | None) -> None:
        self.result = result
        self.an = an
        self.reasm = reasm
        self.client = client
        self.syn_from: int | None = None
        self.synack_from: int | None = None
        self.pending: list = []
        self.done = False          # identified (identify_only): later packets are only counted


_DIRS = (Direction.TO_SERVER, Direction.TO_CLIENT)


def _feed(an: FlowAnalyzer, client: int, events) -> int:
    """Reassembly's events (relative to side 0) into the analyzer, relative
    to the client; returns how many parser events came out."""
    n = 0
    for ev in events:
        d = _DIRS[ev.direction ^ client]
        kind = ev.kind
        if kind == "data":
            n += len(an.data(d, ev.data))
        elif kind == "gap":
            n += len(an.gap(d, ev.size))
        else:
            n += len(an.eof(d))
    return n


def analyze_capture(path: str | os.PathLike, *, identify_only: bool = True,
                    plugins=None) -> list[FlowResult]:
    """Every TCP/UDP flow of a pcap / pcapng file, ordered by first frame.
    Raises slowpath.pcap.PcapError on a bad file.

    One pass over the packets with a flow table keyed by each direction's
    5-tuple (one lookup per packet); a flow that is identified (with
    identify_only) drops its reassembly and costs one lookup and a count per
    packet from then on. The results are read_capture's flows through
    analyse_flow, stopped at identification: the same orientation rule (a
    TCP flow whose first packet is not a SYN keeps its events until a SYN
    or the end of the capture says which side is the client), the same
    reassembly and the same detection."""
    plugins = list(plugins) if plugins is not None else list(registry.default_plugins())
    _, packets = flow_packets(path)
    budget = ReassemblyBudget()
    limits = ReassemblyLimits()
    table: dict[tuple, tuple[_Flow, int]] = {}
    flows: list[_Flow] = []
    for _, p in packets:
        hit = table.get(p[:5])                    # (proto, src, sport, dst, dport)
        if hit is not None:
            st, side = hit
            st.result.packets += 1
            if st.done:
                continue
        else:
            proto, src, sport, dst, dport = p[:5]
            tcp = proto == IPPROTO_TCP
            res = FlowResult("tcp" if tcp else "udp", (_ip_text(src), sport),
                             (_ip_text(dst), dport), None, packets=1)
            st = _Flow(res, FlowAnalyzer(res.proto, plugins),
                       StreamReassembler(limits, budget) if tcp else None, None if tcp else 0)
            flows.append(st)
            table[(proto, dst, dport, src, sport)] = (st, 1)
            table[p[:5]] = (st, 0)                # a flow to itself: side 0, as read_capture
            side = 0
        an = st.an
        reasm = st.reasm
        if reasm is None:                         # UDP: oriented by its first packet
            st.result.events += len(an.datagram(_DIRS[side], p[7]))
        else:
            flags = p[6]
            if flags & SYN and st.client is None:
                if not flags & ACK:
                    st.syn_from = side
                elif st.synack_from is None:
                    st.synack_from = side
            events = reasm.segment(_DIRS[side], p[5], flags, p[7])
            if st.client is None:
                st.pending += events
                if st.syn_from is None:
                    continue
                # A SYN without ACK: its sender is the client whatever comes later.
                st.client = st.syn_from
                events, st.pending = st.pending, []
            if events:
                st.result.events += _feed(an, st.client, events)
        if (identify_only and an.identified) or (reasm is not None and reasm.finished
                                                 and st.client is not None):
            # Identified, or both directions ended (reassembly ignores what
            # may still come: retransmissions, bytes past a FIN): keep only
            # what the result needs, as a capture has many flows and what
            # they hold is what the garbage collector walks.
            st.done = True
            res = st.result
            if not an.identified:
                res.events += len(an.settle())
            res.app, res.names, res.identified = an.app, an.names, an.identified
            st.an = None
            if reasm is not None:
                reasm.close()
                st.reasm = None
    out = []
    for st in flows:
        res, an = st.result, st.an
        if st.client is None:
            st.client = 1 - st.synack_from if st.synack_from is not None else 0
        if not st.done:
            events = st.pending
            if st.reasm is not None:
                events += st.reasm.flush()
                st.reasm.close()
            for ev in events:
                if identify_only and an.identified:
                    break
                res.events += _feed(an, st.client, (ev,))
            if not (identify_only and an.identified):
                res.events += len(an.settle())
            res.app, res.names, res.identified = an.app, an.names, an.identified
        if st.client == 1:
            res.client, res.server = res.server, res.client
        out.append(res)
    return out
