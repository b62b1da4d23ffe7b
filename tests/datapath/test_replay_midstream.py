"""Replay of flows the capture shows only from the middle (no handshake):
the real program picks them up (`loose`), and the first payload packet it
sees is inspected like every later one. Corpus sv-http2-keywords2.pcap is
such a capture: its first frame is the HTTP/1.1 request that asks for the
h2c upgrade, and replay must log it.

Needs root: replay runs the BPF program (BPF_PROG_TEST_RUN)."""
from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from tests.datapath.replaying import replay_packets


def run(fastpath, frames, tmp_path):
    return replay_packets(fastpath, frames, tmp_path, "mid.pcap")


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
