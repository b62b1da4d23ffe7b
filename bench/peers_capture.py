"""A large capture of mixed traffic from the public corpus, for measuring
replay and its peers (ndpiReader, tshark) per frame on the same file.

`build_capture()` writes ``copies`` copies of every frame of every capture
in the corpus (../shared/corpus/pcaps), each (copy, capture) pair with its
own addresses, so every copy of a flow is a flow of its own to whoever
reads the file (the fast path, the engine, nDPI). The checksums the copied
frames carried stay valid: the IPv4 header checksum and the TCP, UDP and
ICMPv6 checksums (whose pseudo-header holds the addresses) are updated
incrementally (RFC 1624), so a checksum that was wrong stays wrong
and one that was right stays right.

Every link type is written as Ethernet (slowpath.pcap.ethernet_frames, the
reader `microseg replay` uses); frames without an Ethernet form are left
out. Timestamps increase: each capture's frames are shifted to follow the
previous capture's last frame, pauses longer than MAX_PAUSE_S cut to it.
"""
from __future__ import annotations

import argparse
import ipaddress
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from slowpath.pcap import ETH_HEADER_LEN, ETH_VLAN, PcapError, ethernet_frames  # noqa: E402

CORPUS_PCAPS = HERE.parent.parent / "shared" / "corpus" / "pcaps"
# New addresses: one per (copy, capture, original address), counted up from
# the start of these private ranges; 10/8 holds 16M, far more than any
# replication needs (the corpus has a few hundred addresses a copy).
V4_BASE = int(ipaddress.IPv4Address("10.0.0.0"))
V6_BASE = int(ipaddress.IPv6Address("fd00::"))
V4_LIMIT = 1 << 24
# Gap between one capture's last frame and the next capture's first, so no
# two captures' frames share a timestamp.
GAP_S = 0.001
# The first frame's time (2023-11-14): a real date, and far enough from 0
# that a capture whose frames go back in time stays after the epoch.
START_TS = 1_700_000_000.0
# Longest pause kept between two frames of a capture: some corpus captures
# are concatenations spanning years; cut to this, the file's flows stay as
# they were to an idle timeout of a minute or more, and the whole replicated
# capture spans hours, not decades.
MAX_PAUSE_S = 60.0
SNAPLEN = 262144
LINKTYPE_ETHERNET = 1

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 6, 17, 58
# IPv6 extension headers walked to the transport header (hop-by-hop,
# routing, destination options); the fragment header is handled apart.
IPV6_EXT = {0, 43, 60}
IPV6_FRAG = 44
# Offset of the checksum in each transport header with a pseudo-header.
CSUM_OFFSET = {IPPROTO_TCP: 16, IPPROTO_UDP: 6, IPPROTO_ICMPV6: 2}


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _words(b: bytes) -> int:
    return sum(struct.unpack(f">{len(b) // 2}H", b))


def _adjust(csum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), over the changed words."""
    n = len(old) // 2
    s = (~csum & 0xFFFF) + (0xFFFF * n - _words(old)) + _words(new)
    return ~_fold(s) & 0xFFFF


class _Addresses:
    def __init__(self):
        self.v4 = 0
        self.v6 = 0
        self.map: dict[bytes, bytes] = {}

    def reset(self):
        """A new (copy, capture): new addresses for every original one."""
        self.map = {}

    def new(self, old: bytes) -> bytes:
        got = self.map.get(old)
        if got is None:
            if len(old) == 4:
                self.v4 += 1
                if self.v4 >= V4_LIMIT:
                    raise ValueError("too many copies for 10.0.0.0/8")
                got = (V4_BASE + self.v4).to_bytes(4, "big")
            else:
                self.v6 += 1
                got = (V6_BASE + self.v6).to_bytes(16, "big")
            self.map[old] = got
        return got


def _l4_fix(frame: bytearray, l4: int, proto: int, old: bytes, new: bytes) -> None:
    off = CSUM_OFFSET.get(proto)
    if off is None or l4 + off + 2 > len(frame):
        return
    csum = struct.unpack_from(">H", frame, l4 + off)[0]
    if proto == IPPROTO_UDP and csum == 0 and len(old) == 8:
        return                                   # IPv4 UDP without a checksum
    csum = _adjust(csum, old, new)
    if proto == IPPROTO_UDP and csum == 0:
        csum = 0xFFFF                            # 0 means "none" for UDP
    struct.pack_into(">H", frame, l4 + off, csum)


def rewrite(eth: bytes, addrs: _Addresses) -> bytes:
    """``eth`` with its IP addresses replaced through ``addrs`` and the
    checksums kept as valid as they were. Anything that is not IPv4/IPv6
    (behind up to a few VLAN tags) is returned as it was."""
    f = bytearray(eth)
    off = ETH_HEADER_LEN - 2
    et = struct.unpack_from(">H", f, off)[0]
    while et in ETH_VLAN and off + 6 <= len(f):
        off += 4
        et = struct.unpack_from(">H", f, off)[0]
    ip = off + 2
    if et == ETH_IPV4 and ip + 20 <= len(f) and f[ip] >> 4 == 4:
        ihl = (f[ip] & 0x0F) * 4
        if ihl < 20 or ip + ihl > len(f):
            return eth
        old = bytes(f[ip + 12:ip + 20])
        new = addrs.new(old[:4]) + addrs.new(old[4:])
        f[ip + 12:ip + 20] = new
        struct.pack_into(">H", f, ip + 10, _adjust(struct.unpack_from(">H", f, ip + 10)[0], old, new))
        if struct.unpack_from(">H", f, ip + 6)[0] & 0x1FFF == 0:      # first (or only) fragment
            _l4_fix(f, ip + ihl, f[ip + 9], old, new)
        return bytes(f)
    if et == ETH_IPV6 and ip + 40 <= len(f) and f[ip] >> 4 == 6:
        old = bytes(f[ip + 8:ip + 40])
        new = addrs.new(old[:16]) + addrs.new(old[16:])
        f[ip + 8:ip + 40] = new
        nh, l4 = f[ip + 6], ip + 40
        while l4 + 8 <= len(f):
            if nh in IPV6_EXT:
                nh, l4 = f[l4], l4 + (f[l4 + 1] + 1) * 8
            elif nh == IPV6_FRAG:
                if struct.unpack_from(">H", f, l4 + 2)[0] & 0xFFF8:    # not the first fragment
                    return bytes(f)
                nh, l4 = f[l4], l4 + 8
            else:
                break
        _l4_fix(f, l4, nh, old, new)
        return bytes(f)
    return eth


def corpus_frames(corpus_dir: Path) -> list[list[tuple[float, bytes]]]:
    """Every capture's Ethernet frames: one list of (timestamp, frame) per file."""
    out = []
    for p in sorted(corpus_dir.iterdir()):
        if p.suffix not in (".pcap", ".pcapng", ".cap"):
            continue
        frames = []
        try:
            for _, ts, eth in ethernet_frames(p):
                if eth is not None and len(eth) >= ETH_HEADER_LEN:
                    frames.append((ts, eth))
        except PcapError:
            pass          # a capture cut short: the frames before the cut are kept
        if frames:
            out.append(frames)
    return out


def build_capture(out_path: str | Path, copies: int, corpus_dir: str | Path = CORPUS_PCAPS) -> dict:
    """Write ``copies`` copies of the corpus to ``out_path`` (see the module
    docstring); returns {"frames", "copies", "files"}."""
    if copies < 1:
        raise ValueError("copies: 1 or more")
    files = corpus_frames(Path(corpus_dir))
    addrs = _Addresses()
    clock = START_TS
    n = 0
    rec = struct.Struct("<IIII")
    with open(out_path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
        for _ in range(copies):
            for frames in files:
                addrs.reset()
                t, prev = clock + GAP_S, frames[0][0]
                for ts, eth in frames:
                    t += min(ts - prev, MAX_PAUSE_S)
                    prev = ts
                    clock = max(clock, t)
                    data = rewrite(eth, addrs)
                    usec = int(round(t * 1e6))
                    out.write(rec.pack(usec // 1_000_000, usec % 1_000_000, len(data), len(data)))
                    out.write(data)
                    n += 1
    return {"frames": n, "copies": copies, "files": len(files)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="capture to write (classic pcap, Ethernet)")
    ap.add_argument("--copies", type=int, default=13, help="copies of the corpus (default 13)")
    ap.add_argument("--corpus", default=str(CORPUS_PCAPS), help="directory of captures")
    a = ap.parse_args(argv)
    print(build_capture(a.out, a.copies, a.corpus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
