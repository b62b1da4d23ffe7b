"""`microseg replay` (inspect everything) of a Redis exchange: the flow is
let go once identified (nothing reads Redis events: Engine._unread_release),
so the kernel copies none of its later payload; its flow record says allow.

Needs root: programs are loaded and run."""
from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from tests.datapath.replaying import replay_packets


def _redis_exchange(sport: int, rounds: int) -> list:
    c, s = IP(src="10.0.0.1", dst="10.0.0.2"), IP(src="10.0.0.2", dst="10.0.0.1")
    cmd, reply = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"$5\r\nhello\r\n"
    pkts = [c / TCP(sport=sport, dport=6379, flags="S", seq=100),
            s / TCP(sport=6379, dport=sport, flags="SA", seq=900, ack=101),
            c / TCP(sport=sport, dport=6379, flags="A", seq=101, ack=901)]
    cs, ss = 101, 901
    for _ in range(rounds):
        pkts.append(c / TCP(sport=sport, dport=6379, flags="PA", seq=cs, ack=ss) / Raw(cmd))
        cs += len(cmd)
        pkts.append(s / TCP(sport=6379, dport=sport, flags="PA", seq=ss, ack=cs) / Raw(reply))
        ss += len(reply)
    return pkts


def test_a_redis_flow_is_released_at_its_first_command(fastpath, tmp_path):
    res, records = replay_packets(fastpath, _redis_exchange(40100, 3), tmp_path, "redis.pcap")
    assert res.records == 1                       # the first command; the kernel carries the rest
    (flow,) = [r for r in records if r["event_type"] == "flow"]
    assert flow["app_proto"] == "redis" and {"inspection_verdict": "allow"} in flow["metadata"]["flowvars"]
    assert (flow["flow"]["pkts_toserver"], flow["flow"]["pkts_toclient"]) == (5, 4)   # the kernel's counters
