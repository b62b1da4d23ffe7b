"""Packets the slow path sends itself, from a raw socket in the gateway's
network namespace with SO_MARK set to MS_RESET_MARK, which the egress
program lets through (bpf/lib/maps.h):

* TCP resets to both ends of a blocked flow, in either mode. The kernel
  drops every later packet of a blocked flow, but the two ends would each
  wait for a timeout (and a server that takes one connection at a time
  would serve no one else meanwhile); a reset tells them now (Suricata's
  "reject"). A reset carries exactly the receiver's next expected byte
  (RCV.NXT), which RFC 5961 section 3.2 requires for it to be accepted at
  once rather than answered with a challenge ACK. Where that number comes
  from depends on what reached the receiver: see ``reset_flow`` (the
  flow's packets passed) and ``reset_held`` (its payload was held).
* The held payload of a hold-mode flow, once the verdict lets it go: sent
  on to its destination as the client sent it (same addresses, ports,
  sequence and acknowledgment numbers), so the first request does not wait
  for the client's retransmission timer (200 ms or more on Linux).

Packets are built with dpkt, not scapy: a hold-mode request waits for its
injection, and scapy took ~480 us to build one segment where dpkt takes
~13 us (the same bytes, checksums included).
"""
from __future__ import annotations

import errno
import ipaddress
import socket

import dpkt

from datapath.source import header_defines

RESET_MARK = header_defines("MS_")["RESET_MARK"]
SO_MARK = getattr(socket, "SO_MARK", 36)


# After a block verdict is written, the kernel merges it on the flow's next
# packet. Resets wait for that (polling the session), because only then are
# both sides' next sequence numbers final: the kernel drops every later
# packet, so the receivers' RCV.NXT stays where the session's window data
# says. Polled every RESET_POLL_S, at most RESET_POLL_TRIES times (a flow
# that stays silent that long gets resets with the best numbers known).
RESET_POLL_S = 0.005
RESET_POLL_TRIES = 40
# Hop limit of the packets sent (what a Linux host sends with).
TTL = 64
TCP_FLAGS_MASK = 0x3F   # FIN SYN RST PSH ACK URG: the flags a record's segment may carry on
TCP_PSH_ACK = 0x18      # a payload record without flags (UDP-looking) goes as PSH|ACK
# A held TCP record larger than the link takes (a record carries up to 4 KiB
# of a GRO/TSO packet) goes in pieces of this many bytes: the IPv6 minimum
# link MTU (RFC 8200, 1280) less the IPv6 and TCP headers crosses any link.
PIECE_BYTES = 1280 - 40 - 20


def packet(src: str, dst: str, l4: int, sport: int, dport: int, data: bytes = b"", *, flags: int = 0,
           seq: int = 0, ack: int = 0, window: int = 65535) -> tuple[bytes, bool]:
    """An IPv4 or IPv6 packet (by the addresses) carrying a TCP segment or a
    UDP datagram (``l4``), checksums filled in; returns (bytes, is IPv6)."""
    ip6 = ipaddress.ip_address(dst).version == 6
    if l4 == socket.IPPROTO_TCP:
        seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=window, data=data)
    else:
        seg = dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(data), data=data)
    if ip6:
        pkt = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                           nxt=l4, hlim=TTL, plen=len(seg), data=seg)
    else:
        pkt = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=l4, ttl=TTL, data=seg)
    return bytes(pkt), ip6


class Injector:
    """``session_seq(key)`` -> (blocked, next seq of the client, of the
    server) from the kernel session, or None when it is gone;
    ``call_later(delay, fn)`` schedules a retry (the event loop's). Without
    them the sequence numbers from the payload records are used at once."""

    def __init__(self, session_seq=None, call_later=None) -> None:
        self._socks: dict[int, socket.socket] = {}
        self.session_seq = session_seq
        self.call_later = call_later
        self.sent = 0
        self.injected = 0
        self.errors = 0

    def inject(self, info, side: int, rec) -> bool:
        """Send payload record ``rec`` (from ``side``: 0 client) on to the
        other end, as its sender sent it."""
        c, s = (info.src_ip, info.src_port), (info.dest_ip, info.dest_port)
        (src, sport), (dst, dport) = (c, s) if side == 0 else (s, c)
        tcp = rec.l4 == socket.IPPROTO_TCP
        flags = ((rec.tcp_flags & TCP_FLAGS_MASK) or TCP_PSH_ACK) if tcp else 0
        data, v6 = packet(src, dst, socket.IPPROTO_TCP if tcp else socket.IPPROTO_UDP, sport, dport, rec.data,
                          flags=flags, seq=rec.seq, ack=rec.ack_seq)
        sock = self._sock(socket.AF_INET6 if v6 else socket.AF_INET)
        try:
            sock.sendto(data, (dst, 0))
        except OSError as e:
            if not (e.errno == errno.EMSGSIZE and tcp and len(rec.data) > PIECE_BYTES):
                self.errors += 1
                return False
            # Larger than the link's MTU: as segments of the same stream
            # (the FIN, if any, on the last).
            for at in range(0, len(rec.data), PIECE_BYTES):
                last = at + PIECE_BYTES >= len(rec.data)
                piece, _ = packet(src, dst, socket.IPPROTO_TCP, sport, dport, rec.data[at:at + PIECE_BYTES],
                                  flags=flags if last else flags & ~dpkt.tcp.TH_FIN,
                                  seq=(rec.seq + at) & 0xFFFFFFFF, ack=rec.ack_seq)
                try:
                    sock.sendto(piece, (dst, 0))
                except OSError:
                    self.errors += 1
                    return False
        self.injected += 1
        return True

    def reset_flow(self, info, key: bytes, next_seq, tries: int = 0) -> None:
        """Reset both ends of a flow just blocked whose packets passed
        (async mode, or hold mode after a release): the receivers got
        everything tracking counted, so the kernel session's window data
        are their RCV.NXT once the block is merged (see RESET_POLL_S)."""
        if self.session_seq is None or self.call_later is None:
            self.reset(info, next_seq)
            return
        got = self.session_seq(key)
        if got is None:
            self.reset(info, next_seq)
            return
        blocked, c_next, s_next = got
        if blocked or tries >= RESET_POLL_TRIES:
            self.reset(info, [c_next, s_next])
            return
        self.call_later(RESET_POLL_S, lambda: self.reset_flow(info, key, next_seq, tries + 1))

    def reset_held(self, info, key: bytes, held_from, next_seq) -> int:
        """Reset both ends of a flow blocked while hold mode still held its
        payload (no verdict had let it go). The kernel dropped every held
        segment, so a receiver's RCV.NXT is the first held byte of its peer
        (``held_from``, per side: 0 client), whatever the kernel's window
        data say (tracking counted the held segments as sent). A side that
        had nothing held sent only what passed: its next sequence number
        is the kernel session's, or ``next_seq`` (from the records) without
        one. Nothing of the flow reaches the other end before the verdict
        is merged either way, so no wait for the merge: the resets go now
        (waiting would cost the client's retransmission timer)."""
        got = self.session_seq(key) if self.session_seq is not None else None
        kernel = (None, None) if got is None else got[1:]
        seqs = [h if h is not None else (k if k is not None else n)
                for h, k, n in zip(held_from, kernel, next_seq)]
        return self.reset(info, seqs)

    def _sock(self, family: int) -> socket.socket:
        s = self._socks.get(family)
        if s is None:
            s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, RESET_MARK)
            self._socks[family] = s
        return s

    def reset(self, info, next_seq) -> int:
        """Reset both ends of ``info``'s flow (eve.FlowInfo: src = client).
        ``next_seq``: per side (0 client, 1 server), the next sequence number
        that side would send, or None when unknown (no reset that way).
        Returns how many resets were sent."""
        n = 0
        ends = ((info.src_ip, info.src_port, info.dest_ip, info.dest_port, next_seq[0]),
                (info.dest_ip, info.dest_port, info.src_ip, info.src_port, next_seq[1]))
        for src, sport, dst, dport, seq in ends:
            if seq is None:
                continue
            pkt, v6 = packet(src, dst, socket.IPPROTO_TCP, sport, dport, flags=dpkt.tcp.TH_RST, seq=seq, window=0)
            try:
                self._sock(socket.AF_INET6 if v6 else socket.AF_INET).sendto(pkt, (dst, 0))
                n += 1
            except OSError:
                self.errors += 1
        self.sent += n
        return n

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()
