"""microseg's parsers alone: a capture file through the pcap reader, TCP
reassembly, protocol detection and the parsers, no kernel.

This is what `bench/peers.py` sets beside ``ndpiReader -i``: one result per
transport flow, naming the application protocol the way the slow path does
(slowpath/analyzer.py). With ``identify_only`` a flow is parsed only until
it is identified (FlowAnalyzer.identified: its protocol and naming fields,
Host / SNI / DNS name, are known), as nDPI stops after identification and
as the engine releases a `what: [dpi]` flow; its later packets are only
counted. Without it every byte of every flow is parsed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from slowpath.analyzer import FlowAnalyzer
from slowpath.pcap import read_capture


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


def analyze_capture(path: str | os.PathLike, *, identify_only: bool = True,
                    plugins=None) -> list[FlowResult]:
    """Every TCP/UDP flow of a pcap / pcapng file, ordered by first frame.
    Raises slowpath.pcap.PcapError on a bad file."""
    cap = read_capture(path)
    out = []
    for flow in cap.flows:
        an = FlowAnalyzer(flow.proto, plugins)
        n = 0
        for ev in flow.events:
            if identify_only and an.identified:
                break
            n += len(an.stream_event(ev))
        if not (identify_only and an.identified):
            n += len(an.settle())
        out.append(FlowResult(flow.proto, flow.client, flow.server, an.app, dict(an.names),
                              flow.packets, an.identified, n))
    return out
