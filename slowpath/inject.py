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

Packets are built here with struct (headers) and dpkt's checksum (the
Internet checksum over an array of 16-bit words): a hold-mode request
waits for its injection, and scapy took ~480 us to build one segment,
dpkt's packet objects ~13 us on a quiet machine (73 us busy), this a few
(the same bytes: tests/unit/test_inject.py compares them with dpkt's for
both families and both protocols).
"""
from __future__ import annotations

import errno
import socket
import struct

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


# Headers, network byte order: IPv4 without options (version 4, IHL 5,
# TOS, total length, id, flags/fragment offset, TTL, protocol, checksum,
# addresses); IPv6 (version 6 and no traffic class or flow label, payload
# length, next header, hop limit, addresses); TCP without options (data
# offset 5, flags, window, checksum, urgent pointer); UDP. Each pseudo
# header (RFC 793 / RFC 768 for IPv4, RFC 8200 section 8.1 for IPv6) is
# what the L4 checksum covers besides the segment.
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_PSEUDO4 = struct.Struct("!4s4sxBH")
_PSEUDO6 = struct.Struct("!16s16sIxxxB")
_IP4_VER_IHL = 0x45
_IP6_VER = 6 << 28
_TCP_OFF = 5 << 4
_CSUM = struct.Struct("!H")
_in_cksum = dpkt.in_cksum


def packet(src: str, dst: str, l4: int, sport: int, dport: int, data: bytes = b"", *, flags: int = 0,
           seq: int = 0, ack: int = 0, window: int = 65535) -> tuple[bytes, bool]:
    """An IPv4 or IPv6 packet (by the addresses) carrying a TCP segment or a
    UDP datagram (``l4``), checksums filled in; returns (bytes, is IPv6)."""
    ip6 = ":" in dst
    family = socket.AF_INET6 if ip6 else socket.AF_INET
    s, d = socket.inet_pton(family, src), socket.inet_pton(family, dst)
    size = (20 if l4 == socket.IPPROTO_TCP else 8) + len(data)
    pseudo = _PSEUDO6.pack(s, d, size, l4) if ip6 else _PSEUDO4.pack(s, d, l4, size)
    if l4 == socket.IPPROTO_TCP:
        hdr = _TCP.pack(sport, dport, seq, ack, _TCP_OFF, flags, window, 0, 0)
        csum = _in_cksum(pseudo + hdr + data)
        hdr = hdr[:16] + _CSUM.pack(csum) + hdr[18:]
    else:
        hdr = _UDP.pack(sport, dport, size, 0)
        # 0 means "no checksum" in UDP (and is not allowed over IPv6): a sum
        # of 0 is sent as its ones' complement twin, 0xFFFF (RFC 768)
        csum = _in_cksum(pseudo + hdr + data) or 0xFFFF
        hdr = hdr[:6] + _CSUM.pack(csum)
    if ip6:
        ip = _IP6.pack(_IP6_VER, size, l4, TTL, s, d)
    else:
        ip = _IP4.pack(_IP4_VER_IHL, 0, 20 + size, 0, 0, TTL, l4, 0, s, d)
        ip = ip[:10] + _CSUM.pack(_in_cksum(ip)) + ip[12:]
    return ip + hdr + data, ip6


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
