"""The slow path's resets (slowpath/inject.py): which sequence number each
end gets, read back from the bytes the injector would send (its raw
socket replaced by one that records them)."""
from __future__ import annotations

import socket

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from slowpath.eve import FlowInfo
from slowpath.inject import Injector

CLIENT, SERVER = ("10.0.0.5", 40000), ("10.0.1.5", 80)
KEY = b"k" * 40


class FakeSock:
    def __init__(self):
        self.sent = []

    def sendto(self, data, addr):
        self.sent.append((data, addr))
        return len(data)

    def close(self):
        pass


def injector(session=None, v6=False):
    inj = Injector(session_seq=(lambda key: session) if session is not None else None)
    sock = FakeSock()
    inj._socks[socket.AF_INET6 if v6 else socket.AF_INET] = sock
    return inj, sock


def info(client=CLIENT, server=SERVER):
    return FlowInfo(flow_id=1, src_ip=client[0], src_port=client[1], dest_ip=server[0], dest_port=server[1],
                    proto=6, start=0.0)


def resets(sock, v6=False):
    """(destination, destination port, seq, flags) of each packet sent."""
    out = []
    for data, _ in sock.sent:
        pkt = (IPv6 if v6 else IP)(data)
        out.append((pkt.dst, pkt[TCP].dport, pkt[TCP].seq, str(pkt[TCP].flags)))
    return out


def test_reset_held_gives_the_server_the_first_held_byte_not_the_kernels_end():
    # the kernel's window data counted the held (dropped) request as sent:
    # client end 1101; the server never got past 1001
    inj, sock = injector(session=(False, 1101, 5001))
    assert inj.reset_held(info(), KEY, [1001, None], [1101, 5001]) == 2
    assert sorted(resets(sock)) == sorted([(SERVER[0], SERVER[1], 1001, "R"), (CLIENT[0], CLIENT[1], 5001, "R")])


def test_reset_held_uses_held_numbers_for_both_sides_when_both_were_held():
    inj, sock = injector(session=(False, 1101, 5101))
    inj.reset_held(info(), KEY, [1001, 5001], [1101, 5101])
    assert sorted(r[2] for r in resets(sock)) == [1001, 5001]


def test_reset_held_without_a_session_falls_back_to_the_records():
    inj, sock = injector()
    inj.reset_held(info(), KEY, [1001, None], [1101, 5001])
    assert sorted(r[2] for r in resets(sock)) == [1001, 5001]
    # a side with no number at all gets no reset (one that would be refused)
    inj2, sock2 = injector()
    assert inj2.reset_held(info(), KEY, [1001, None], [1101, None]) == 1
    assert resets(sock2) == [(SERVER[0], SERVER[1], 1001, "R")]


def test_reset_held_over_ipv6():
    inj, sock = injector(session=(False, 1101, 5001), v6=True)
    inj.reset_held(info(("fd77:1::2", 40000), ("fd77:2::2", 80)), KEY, [1001, None], [1101, 5001])
    assert sorted(resets(sock, v6=True)) == sorted([("fd77:2::2", 80, 1001, "R"), ("fd77:1::2", 40000, 5001, "R")])
