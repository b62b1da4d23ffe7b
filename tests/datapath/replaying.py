"""Replay a handful of crafted packets through the session's fast path:
written to a pcap with an Ethernet header each, one second apart, replayed
with replay_config() in force and the fast path's own config put back
after (also when the replay fails)."""
from __future__ import annotations

import dpkt
from scapy.layers.l2 import Ether

from appliance.daemon import empty_rules
from appliance.replay import replay, replay_config

ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def replay_packets(fastpath, packets, tmp_path, name: str = "frames.pcap"):
    """(ReplayResult, the EVE records it emitted) of ``packets`` (scapy IP
    layers), replayed by ``fastpath`` from ``tmp_path``/``name``."""
    path = tmp_path / name
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f)
        for i, p in enumerate(packets):
            w.writepkt(bytes(Ether(**ETH) / p), ts=1_700_000_000.0 + i)
    fastpath.apply_runtime(replay_config())
    records: list = []
    try:
        res = replay(path, fastpath, empty_rules(), records.append)
    finally:
        fastpath.reset()
        fastpath.apply_runtime(fastpath.config)
    return res, records
