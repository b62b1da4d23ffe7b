"""bench/peers_capture.py: the replicated capture bench/peers.py (and the
replay benchmark) measure on. Built from a small corpus made here, checked
with dpkt: every copy of a flow has addresses of its own, the checksums that
were valid stay valid, a wrong one stays wrong, payload and ports are kept,
every link type comes out as Ethernet, timestamps never go back."""
from __future__ import annotations

import ipaddress
import struct
import sys
from pathlib import Path

import dpkt
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.peers_capture import build_capture  # noqa: E402

MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
V4_A, V4_B = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7])
V6_A = ipaddress.IPv6Address("2001:db8::1").packed
V6_B = ipaddress.IPv6Address("2001:db8::2").packed


def v4_tcp(payload: bytes, sport=40000, dport=80, corrupt=False) -> dpkt.ip.IP:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=1, ack=1, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH,
                       data=payload)
    ip = dpkt.ip.IP(src=V4_A, dst=V4_B, p=dpkt.ip.IP_PROTO_TCP, ttl=64, data=tcp)
    ip = dpkt.ip.IP(bytes(ip))                       # checksums computed by dpkt
    if corrupt:
        ip.data.sum ^= 0x0101
    return ip


def eth(ip, vlan: int | None = None) -> bytes:
    et = dpkt.ethernet.ETH_TYPE_IP if isinstance(ip, dpkt.ip.IP) else dpkt.ethernet.ETH_TYPE_IP6
    raw = bytes(ip)
    if vlan is None:
        return MAC_B + MAC_A + struct.pack(">H", et) + raw
    return MAC_B + MAC_A + struct.pack(">HHH", 0x8100, vlan, et) + raw


def v6_udp(payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=5353, dport=53, data=payload)
    udp.ulen = 8 + len(payload)
    ip6 = dpkt.ip6.IP6(src=V6_A, dst=V6_B, nxt=dpkt.ip.IP_PROTO_UDP, hlim=64, data=udp, plen=udp.ulen)
    return bytes(ip6)


def v4_udp_fragments(payload: bytes) -> list[bytes]:
    """One UDP datagram (valid checksum) as two IPv4 fragments."""
    udp = dpkt.udp.UDP(sport=5000, dport=53, data=payload)
    udp.ulen = 8 + len(payload)
    whole = bytes(dpkt.ip.IP(src=V4_A, dst=V4_B, p=dpkt.ip.IP_PROTO_UDP, ttl=64, data=udp))
    l4 = whole[20:]
    cut = 16                                         # multiple of 8
    out = []
    for off, chunk, mf in ((0, l4[:cut], 1), (cut, l4[cut:], 0)):
        ip = dpkt.ip.IP(src=V4_A, dst=V4_B, p=dpkt.ip.IP_PROTO_UDP, ttl=64, id=77,
                        mf=mf, offset=off // 8, data=chunk)
        out.append(bytes(ip))
    return out


def write_pcap(path: Path, linktype: int, frames: list[tuple[float, bytes]]) -> None:
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=linktype)
        for ts, buf in frames:
            w.writepkt(buf, ts=ts)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    frags = v4_udp_fragments(b"q" * 40)
    write_pcap(d / "a-eth.pcap", dpkt.pcap.DLT_EN10MB, [
        (1000.0, eth(v4_tcp(b"GET / HTTP/1.1\r\n\r\n"))),
        (1000.5, eth(v6_udp(b"\x12\x34" + b"\0" * 10))),
        (1001.0, eth(v4_tcp(b"vlan payload", sport=40001), vlan=5)),
        (1001.5, eth(v4_tcp(b"bad checksum", sport=40002, corrupt=True))),
        (1002.0, MAC_B + MAC_A + b"\x08\x00" + frags[0]),
        (1002.1, MAC_B + MAC_A + b"\x08\x00" + frags[1]),
    ])
    # BSD loopback: a 4-byte address family (2 = AF_INET, host order) then IPv4.
    write_pcap(d / "b-null.pcap", dpkt.pcap.DLT_NULL, [
        (5.0, struct.pack("<I", 2) + bytes(v4_tcp(b"loopback", sport=40003, dport=6379))),
    ])
    return d


# ------------------------------------------------------------------ checks
def l2_payload(frame: bytes) -> tuple[int, bytes]:
    """(ethertype, bytes after the Ethernet header and any VLAN tags)."""
    off = 12
    et = struct.unpack_from(">H", frame, off)[0]
    while et == 0x8100:
        off += 4
        et = struct.unpack_from(">H", frame, off)[0]
    return et, frame[off + 2:]


def v4_header_ok(ip: bytes) -> bool:
    return dpkt.in_cksum(ip[:(ip[0] & 0xF) * 4]) == 0


def l4_ok(src: bytes, dst: bytes, proto: int, seg: bytes) -> bool:
    pseudo = src + dst + (struct.pack(">BBH", 0, proto, len(seg)) if len(src) == 4
                          else struct.pack(">I3xB", len(seg), proto))
    return dpkt.in_cksum(pseudo + seg) == 0


def read(path: Path) -> tuple[int, list[tuple[float, bytes]]]:
    with open(path, "rb") as f:
        r = dpkt.pcap.Reader(f)
        return r.datalink(), list(r)


def test_copies_have_own_addresses_and_valid_checksums(corpus, tmp_path):
    out = tmp_path / "big.pcap"
    copies = 3
    got = build_capture(out, copies, corpus)
    linktype, frames = read(out)
    per_copy = 7                                     # 6 Ethernet frames + 1 loopback frame
    assert got["frames"] == len(frames) == copies * per_copy
    assert got["copies"] == copies and got["files"] == 2
    assert linktype == dpkt.pcap.DLT_EN10MB

    tss = [ts for ts, _ in frames]
    assert all(b >= a for a, b in zip(tss, tss[1:])), "timestamps went back"

    pairs: list[set] = [set() for _ in range(per_copy)]   # per original frame: address pairs seen
    for i, (_, frame) in enumerate(frames):
        et, ip = l2_payload(frame)
        k = i % per_copy
        if et == 0x0800:
            src, dst, proto = ip[12:16], ip[16:20], ip[9]
            assert v4_header_ok(ip), f"frame {i}: IPv4 header checksum"
            assert ipaddress.IPv4Address(src) in ipaddress.ip_network("10.0.0.0/8")
            frag_off = struct.unpack_from(">H", ip, 6)[0] & 0x1FFF
            more = struct.unpack_from(">H", ip, 6)[0] & 0x2000
            seg = ip[(ip[0] & 0xF) * 4:]
            if k == 4:                               # first fragment: check over the whole datagram
                nxt = l2_payload(frames[i + 1][1])[1]
                assert more and nxt[12:20] == ip[12:20], "fragments of one datagram keep one address pair"
                seg = seg + nxt[20:]
                assert l4_ok(src, dst, proto, seg), f"frame {i}: UDP checksum over the reassembled datagram"
            elif k == 5:
                assert frag_off and not more
            else:
                # the frame built with a wrong TCP checksum keeps it wrong
                assert l4_ok(src, dst, proto, seg) == (k != 3), f"frame {i}: TCP checksum"
                assert struct.unpack_from(">HH", seg) == {0: (40000, 80), 2: (40001, 80), 3: (40002, 80),
                                                          6: (40003, 6379)}[k], "ports kept"
        else:
            assert et == 0x86DD and k == 1
            src, dst = ip[8:24], ip[24:40]
            assert ipaddress.IPv6Address(src) in ipaddress.ip_network("fd00::/8")
            assert l4_ok(src, dst, ip[6], ip[40:]), f"frame {i}: UDP/IPv6 checksum"
            assert ip[48:50] == b"\x12\x34", "payload kept"
        pairs[k].add((src, dst))
        assert (src, dst) not in {(V4_A, V4_B), (V6_A, V6_B)}, "original addresses left in"
    # Every copy of a frame has an address pair of its own.
    assert all(len(p) == copies for p in pairs), pairs


def test_one_copy_keeps_payload_bytes(corpus, tmp_path):
    out = tmp_path / "one.pcap"
    build_capture(out, 1, corpus)
    _, frames = read(out)
    http = l2_payload(frames[0][1])[1]
    assert http.endswith(b"GET / HTTP/1.1\r\n\r\n")
    loop = l2_payload(frames[-1][1])
    assert loop[0] == 0x0800 and loop[1].endswith(b"loopback"), "loopback frame written as Ethernet IPv4"


def test_zero_copies_is_refused(corpus, tmp_path):
    with pytest.raises(ValueError):
        build_capture(tmp_path / "x.pcap", 0, corpus)
