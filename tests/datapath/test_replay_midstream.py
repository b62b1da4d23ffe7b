"""Replay of flows the capture shows only from the middle (no handshake):
the real program picks them up (`loose`), and the first payload packet it
sees is inspected like every later one. Corpus sv-http2-keywords2.pcap is
such a capture: its first frame is the HTTP/1.1 request that asks for the
h2c upgrade, and replay must log it.

Needs root: replay runs the BPF program (BPF_PROG_TEST_RUN)."""
from __future__ import annotations

import dpkt
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from appliance.daemon import empty_rules
from appliance.replay import replay, replay_config

ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def run(fastpath, frames, tmp_path):
    path = tmp_path / "mid.pcap"
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f)
        for i, fr in enumerate(frames):
            w.writepkt(bytes(Ether(**ETH) / fr), ts=1_700_000_000.0 + i)
    fastpath.apply_runtime(replay_config())
    records: list = []
    try:
        res = replay(path, fastpath, empty_rules(), records.append)
    finally:
        fastpath.reset()
        fastpath.apply_runtime(fastpath.config)
    return res, records


def test_first_payload_of_a_picked_up_flow_is_inspected(fastpath, tmp_path):
    c, s = IP(src="10.0.0.1", dst="10.0.0.2"), IP(src="10.0.0.2", dst="10.0.0.1")
    req = b"GET /first HTTP/1.1\r\nHost: mid.test\r\nUser-Agent: t\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    res, records = run(fastpath, [
        c / TCP(sport=40000, dport=80, flags="PA", seq=1000, ack=5000) / Raw(req),
        s / TCP(sport=80, dport=40000, flags="PA", seq=5000, ack=1000 + len(req)) / Raw(resp),
    ], tmp_path)
    assert res.records == 2, res.reasons           # both payload packets reached the slow path
    (http,) = [r["http"] for r in records if r["event_type"] == "http"]
    assert (http.get("http_method"), http.get("url"), http.get("status")) == ("GET", "/first", 200)
