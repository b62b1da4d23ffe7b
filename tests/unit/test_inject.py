"""The slow path's resets (slowpath/inject.py): which sequence number each
end gets, read back from the bytes the injector would send (its raw
socket replaced by one that records them)."""
from __future__ import annotations

import socket
import struct

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


class Rec:
    def __init__(self, l4, data, seq=0, ack_seq=0, tcp_flags=0):
        self.l4, self.data, self.seq, self.ack_seq, self.tcp_flags = l4, data, seq, ack_seq, tcp_flags


def scapy_checksums_ok(pkt) -> bool:
    """scapy recomputes the checksums of a copy without them: equal to the sent ones."""
    from scapy.layers.inet import UDP
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    copy = pkt.copy()
    c4 = copy[TCP] if TCP in copy else copy[UDP]
    del c4.chksum
    if IP in copy:
        del copy[IP].chksum
    rebuilt = (IPv6 if IPv6 in pkt else IP)(bytes(copy))
    r4 = rebuilt[TCP] if TCP in rebuilt else rebuilt[UDP]
    return r4.chksum == l4.chksum and (IP not in pkt or rebuilt[IP].chksum == pkt[IP].chksum)


def test_inject_sends_the_held_segment_as_its_sender_sent_it_v4_and_v6():
    # a held request goes on from the client to the server with its own
    # numbers; a server's held UDP answer goes back to the client; valid
    # checksums (the receivers verify them: a raw socket's packet has none offloaded)
    from scapy.layers.inet import UDP
    for v6, (client, server) in ((False, (CLIENT, SERVER)), (True, (("fd77:1::2", 40000), ("fd77:2::2", 80)))):
        inj, sock = injector(v6=v6)
        assert inj.inject(info(client, server), 0, Rec(socket.IPPROTO_TCP, b"GET / HTTP/1.1\r\n\r\n", 1001, 5001))
        assert inj.inject(info(client, server), 1, Rec(socket.IPPROTO_UDP, b"answer"))
        assert inj.inject(info(client, server), 0, Rec(socket.IPPROTO_TCP, b"bye", 1019, 5001, tcp_flags=0x11))
        (req, addr), (ans, addr2), (fin, _) = [((IPv6 if v6 else IP)(d), a) for d, a in sock.sent]
        assert (req.src, req.dst, addr) == (client[0], server[0], (server[0], 0))
        assert (req[TCP].sport, req[TCP].dport, req[TCP].seq, req[TCP].ack) == (client[1], server[1], 1001, 5001)
        assert str(req[TCP].flags) == "PA" and bytes(req[TCP].payload) == b"GET / HTTP/1.1\r\n\r\n"
        assert str(fin[TCP].flags) == "FA"
        assert (ans.src, ans.dst, addr2) == (server[0], client[0], (client[0], 0))
        assert (ans[UDP].sport, ans[UDP].dport, ans[UDP].len, bytes(ans[UDP].payload)) == (80, 40000, 14, b"answer")
        assert all(scapy_checksums_ok(p) for p in (req, ans, fin))
        assert (req.ttl if not v6 else req.hlim) == 64


class MtuSock(FakeSock):
    """A link of MTU 1500: a larger packet is refused as the kernel refuses it."""

    def sendto(self, data, addr):
        if len(data) > 1500:
            raise OSError(__import__("errno").EMSGSIZE, "Message too long")
        return super().sendto(data, addr)


def test_inject_a_record_larger_than_the_link_in_pieces():
    """A held record of 4 KiB (part of a GRO/TSO packet) goes on as
    segments the link takes, in order, the FIN on the last. Before: the
    send failed (EMSGSIZE) and the bytes never went on: an upload through
    an l7 hold rule stalled."""
    from slowpath.inject import PIECE_BYTES
    inj = Injector()
    sock = inj._socks[socket.AF_INET] = MtuSock()
    data = bytes(range(256)) * 16
    assert inj.inject(info(), 0, Rec(socket.IPPROTO_TCP, data, 1001, 5001, tcp_flags=0x19))
    segs = [IP(d)[TCP] for d, _ in sock.sent]
    assert [s.seq - 1001 for s in segs] == list(range(0, len(data), PIECE_BYTES))
    assert b"".join(bytes(s.payload) for s in segs) == data
    assert [str(s.flags) for s in segs] == ["PA"] * (len(segs) - 1) + ["FPA"]
    assert inj.errors == 0 and inj.injected == 1


def dpkt_packet(src, dst, l4, sport, dport, data, flags, seq, ack):
    """The packet as dpkt's objects build it (inject.py built it so before)."""
    import dpkt
    v6 = ":" in dst
    if l4 == socket.IPPROTO_TCP:
        seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=65535, data=data)
    else:
        seg = dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(data), data=data)
    if v6:
        return bytes(dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                                  nxt=l4, hlim=64, plen=len(seg), data=seg))
    return bytes(dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=l4, ttl=64, data=seg))


def test_packet_is_byte_for_byte_what_dpkt_builds():
    # odd and even lengths, empty payloads, every flag, both families and
    # protocols, numbers at their limits; a UDP datagram whose checksum sums to 0
    from slowpath.inject import packet
    import random
    rnd = random.Random(14)
    cases = [("10.0.0.5", "10.0.1.5"), ("fd77:1::2", "fd77:2::2"), ("255.255.255.255", "0.0.0.0")]
    for src, dst in cases:
        for l4 in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
            for n in (0, 1, 2, 3, 63, 1260, 4096):
                data = bytes(rnd.randrange(256) for _ in range(n))
                args = (src, dst, l4, rnd.randrange(65536), rnd.choice([0, 65535, 80]), data,
                        rnd.randrange(64) if l4 == socket.IPPROTO_TCP else 0, rnd.randrange(1 << 32),
                        rnd.choice([0, (1 << 32) - 1]))
                got, v6 = packet(*args[:6], flags=args[6], seq=args[7], ack=args[8])
                assert v6 == (":" in dst)
                assert got == dpkt_packet(*args), args
    # a datagram whose checksum comes out 0 is sent with 0xFFFF (0 means no
    # checksum, which IPv6 forbids: RFC 8200 8.1). dpkt does so over IPv4
    # only: over IPv6 it wrote 0, and the receiver dropped the datagram.
    import dpkt
    for src, dst in cases[:2]:
        _, v6 = packet(src, dst, socket.IPPROTO_UDP, 53, 40000, b"\0\0")
        family = socket.AF_INET6 if v6 else socket.AF_INET
        pseudo = (socket.inet_pton(family, src) + socket.inet_pton(family, dst)
                  + (struct.pack("!IxxxB", 10, 17) if v6 else struct.pack("!xBH", 17, 10)))
        word = dpkt.in_cksum(pseudo + struct.pack("!HHHH", 53, 40000, 10, 0) + b"\0\0")
        got, _ = packet(src, dst, socket.IPPROTO_UDP, 53, 40000, struct.pack("!H", word))
        old = dpkt_packet(src, dst, 17, 53, 40000, struct.pack("!H", word), 0, 0, 0)
        assert got[-4:-2] == b"\xff\xff"
        assert got == (old[:-4] + b"\xff\xff" + old[-2:] if v6 else old)
