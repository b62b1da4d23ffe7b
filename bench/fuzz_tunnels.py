"""Fuzz the tunnel decapsulation of the capture reader and, on a sample,
compare it with the fast path's (issue 17 item 6).

An input is one Ethernet frame (two for an outer fragment pair) carrying a
TCP SYN or a UDP datagram, with random inner addresses and ports, through
one to three tunnels drawn from IPIP / 6in4 / 4in6 / 6in6, GRE (every
combination of the checksum, key and sequence flags; IPv4, IPv6 or
Ethernet inside), VXLAN and GENEVE (options of random classes and lengths;
Ethernet or IP inside); inner Ethernet frames with zero, one or two VLAN
tags, sometimes ARP or MPLS instead of IP. Then it is left valid or
mutated: bit flips and byte sets inside the tunnel headers and the length
fields (IP total / payload length, UDP length, GRE flags, GENEVE option
length), truncation at any place, trailing bytes, random edits anywhere,
or the outer packet split in two IP fragments.

Reader: slowpath.pcap's per-frame decoder (_Decoder.decode, a fresh one per
input, as read_capture makes one per capture). What must hold: no exception
besides its two outcomes (_Undecodable: counted malformed, with its reason;
_NotFlow: a well-formed frame without a TCP/UDP packet), no hang, bounded
memory (tracemalloc on a sample, RSS growth).

Kernel (``--kernel N``: the first N inputs of the run, default a few
hundred; ``--kernel -1``: every input): each frame through the real fast
path (datapath.loader.FastPath, BPF_PROG_TEST_RUN on the ingress program),
the reason counter that moved and the sessions it made (ms_flows,
ms_halfopen, emptied after every frame). A frame the reader decodes must not
be DROP_TUNNEL_MALFORMED / DROP_TUNNEL_TOO_DEEP, and a session it makes must
be the reader's inner 5-tuple; anything else is a disagreement, printed
with the frame's hex. What the kernel says of the frames the reader refuses
is tallied. Differences the two are known to have (KNOWN below) are counted
apart, not as disagreements.

    .venv/bin/python bench/fuzz_tunnels.py --jobs 2                 # 1,000,000 inputs, 300 in the kernel
    .venv/bin/python bench/fuzz_tunnels.py --inputs 200000 --kernel -1 --seed 7
"""
from __future__ import annotations

import random
import struct
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fuzzrun  # noqa: E402
from datapath.source import header_defines  # noqa: E402
from slowpath import pcap  # noqa: E402

# One input is a frame of at most a few hundred bytes: any input past this
# is a run-away loop.
MAX_INPUT_SECONDS = 2.0
# tracemalloc peak while one frame is decoded: the frame and a few slices of
# it; 1 MiB is ~1,000 times that.
MAX_PEAK_MB = 1.0
# RSS the whole run may add (interpreter arenas, the BPF object's maps
# when the kernel side runs).
MAX_RSS_GROWTH_MB = 96.0
TRACE_EVERY = 200
# Kernel inputs of a run when --kernel is not given: enough to meet every
# tunnel kind a few times in a few seconds.
DEFAULT_KERNEL_INPUTS = 300
# Disagreement examples kept (each with its frame's hex).
MAX_DISAGREE_EXAMPLES = 10

ETH_IP, ETH_IP6, ETH_TEB, ETH_VLAN, ETH_QINQ, ETH_ARP, ETH_MPLS = 0x0800, 0x86DD, 0x6558, 0x8100, 0x88A8, 0x0806, 0x8847
TCP, UDP, IPIP, IPV6, GRE = 6, 17, 4, 41, 47
VXLAN, GENEVE = 4789, 6081
MAC = bytes.fromhex("020000000002" "020000000001")

# Differences between the reader and the fast path that are by design
# (README "Tunnels"; bpf/lib/tunnel.h): counted apart from disagreements.
KNOWN = {
    "outer-fragment": "a fragmented outer packet: the reader reassembles it, the kernel keeps the outer flow",
    "inner-vlan-2": "two VLAN tags in an inner Ethernet frame: the kernel allows one",
    "non-ip-overlay": "non-IP (ARP, MPLS) inside VXLAN/GENEVE/GRE-Ethernet: the kernel keeps the outer flow",
    "mpls-inside": "MPLS inside an inner Ethernet frame: the reader reads through it, the kernel does not",
}
TUNNEL_DROPS = ("DROP_TUNNEL_MALFORMED", "DROP_TUNNEL_TOO_DEEP")


# --- frame building --------------------------------------------------------------
@dataclass
class Built:
    data: bytes
    regions: list                 # (start, end) of tunnel headers and length fields
    known: set = field(default_factory=set)

    def wrap(self, head: bytes, data: bytes | None = None, regions=()) -> None:
        """``head`` put in front (``data`` the whole new buffer if given)."""
        n = len(head)
        self.regions = [(a + n, b + n) for a, b in self.regions] + list(regions)
        self.data = data if data is not None else head + self.data


def _addr(rng: random.Random, v: int) -> bytes:
    if v == 4:
        return bytes([10, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])
    return b"\xfd\x00" + rng.randbytes(14)


def ip_header(v: int, proto: int, payload_len: int, rng: random.Random, src=None, dst=None) -> bytes:
    src, dst = src or _addr(rng, v), dst or _addr(rng, v)
    if v == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, rng.randrange(65536), 0, 64, proto, 0, src, dst)
    return struct.pack("!IHBB16s16s", 0x60000000, payload_len, proto, 64, src, dst)


def inner_packet(rng: random.Random) -> tuple[Built, tuple]:
    """An inner IPv4/IPv6 TCP SYN or UDP datagram; (built, 5-tuple)."""
    v = rng.choice((4, 6))
    src, dst = _addr(rng, v), _addr(rng, v)
    sport, dport = rng.randrange(1024, 65536), rng.choice((80, 443, 53, 8080, rng.randrange(1, 65536)))
    if dport in (VXLAN, GENEVE):
        dport = 80
    payload = rng.randbytes(rng.choice((0, 0, 4, 32, 200)))
    if rng.random() < 0.6:
        proto = TCP
        l4 = struct.pack("!HHIIBBHHH", sport, dport, rng.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0) + payload
    else:
        proto = UDP
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = ip_header(v, proto, len(l4), rng, src, dst)
    lens = [(2, 4)] if v == 4 else [(4, 6)]
    return Built(hdr + l4, lens), (proto, src, sport, dst, dport)


def ethernet(b: Built, rng: random.Random, ethertype: int, *, outer: bool) -> None:
    """An Ethernet header (with 0-2 VLAN tags) in front of ``b``."""
    tags = rng.choices((0, 1, 2), (6, 3, 1))[0]
    head = MAC
    for i in range(tags):
        head += struct.pack("!HH", ETH_QINQ if i == 0 and tags == 2 else ETH_VLAN, rng.randrange(4096))
    head += struct.pack("!H", ethertype)
    if tags == 2 and not outer:
        b.known.add("inner-vlan-2")
    b.wrap(head, regions=[(12, len(head))])


def _ethertype(data: bytes) -> int:
    return ETH_IP6 if data and data[0] >> 4 == 6 else ETH_IP


def _maybe_non_ip(b: Built, rng: random.Random) -> int:
    """What an inner Ethernet frame carries: IP mostly, sometimes ARP or MPLS."""
    r = rng.random()
    if r < 0.04:
        b.wrap(b"", data=b"\x00\x01\x08\x00\x06\x04\x00\x01" + rng.randbytes(20))
        b.regions = []
        b.known.add("non-ip-overlay")
        return ETH_ARP
    if r < 0.07:
        b.wrap(struct.pack("!I", (rng.randrange(1 << 20) << 12) | 0x100 | 64))
        b.known.add("mpls-inside")
        return ETH_MPLS
    return _ethertype(b.data)


def encap_ip(b: Built, rng: random.Random, proto: int, outer_v: int) -> None:
    hdr = ip_header(outer_v, proto, len(b.data), rng)
    b.wrap(hdr, regions=[(0, 1), (2, 4), (9, 10)] if outer_v == 4 else [(0, 1), (4, 7)])


def encap_ipip(b: Built, rng: random.Random) -> None:
    encap_ip(b, rng, IPV6 if b.data and b.data[0] >> 4 == 6 else IPIP, rng.choice((4, 6)))


def encap_gre(b: Built, rng: random.Random) -> None:
    if rng.random() < 0.3:
        ethernet(b, rng, _maybe_non_ip(b, rng), outer=False)
        ptype = ETH_TEB
    else:
        ptype = _ethertype(b.data)
    flags = rng.choice((0, 0x8000, 0x2000, 0x1000, 0xA000, 0x9000, 0x3000, 0xB000))
    if rng.random() < 0.05:
        flags |= rng.choice((0x4000, 0x0800, 0x0400, 0x0001, 0x0002, 0x00F8))   # rejected / ignored bits
    head = struct.pack("!HH", flags, ptype)
    for bit in (0x8000, 0x2000, 0x1000):
        if flags & bit:
            head += struct.pack("!I", rng.getrandbits(32))
    b.wrap(head, regions=[(0, len(head))])
    encap_ip(b, rng, GRE, rng.choice((4, 6)))


def encap_udp(b: Built, rng: random.Random, dport: int, head: bytes) -> None:
    n = len(head) + len(b.data)
    udp = struct.pack("!HHHH", rng.randrange(49152, 65536), dport, 8 + n, 0)
    b.wrap(udp + head, regions=[(2, 6), (8, 8 + min(len(head), 16))])
    encap_ip(b, rng, UDP, rng.choice((4, 6)))


def encap_vxlan(b: Built, rng: random.Random) -> None:
    ethernet(b, rng, _maybe_non_ip(b, rng), outer=False)
    flags = 0x08 if rng.random() < 0.97 else rng.randrange(256)
    encap_udp(b, rng, VXLAN, struct.pack("!B3xI", flags, rng.randrange(1 << 24) << 8))


def geneve_options(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.choices((0, 1, 2, 5), (4, 3, 2, 1))[0]):
        words = rng.choice((0, 1, 2, 7, 31))
        out += struct.pack("!HBB", rng.randrange(65536), rng.randrange(256), words) + rng.randbytes(4 * words)
    return out[:252]


def encap_geneve(b: Built, rng: random.Random) -> None:
    if rng.random() < 0.5:
        ethernet(b, rng, _maybe_non_ip(b, rng), outer=False)
        ptype = ETH_TEB
    else:
        ptype = _ethertype(b.data)
    opts = geneve_options(rng)
    version = 0 if rng.random() < 0.97 else rng.randrange(1, 4)
    head = struct.pack("!BBHI", (version << 6) | len(opts) // 4, rng.choice((0, 0x40, 0x80)), ptype,
                       rng.randrange(1 << 24) << 8) + opts
    encap_udp(b, rng, GENEVE, head)


ENCAPS = (encap_ipip, encap_gre, encap_vxlan, encap_geneve)


def fragment(b: Built, rng: random.Random) -> list[bytes]:
    """The outer IPv4 packet of frame ``b`` (no outer VLAN) split in two."""
    ip = b.data[14:]
    payload = ip[20:]
    cut = max(8, (rng.randrange(1, max(2, len(payload))) // 8) * 8)
    if cut >= len(payload):
        return [b.data]
    ident = rng.randrange(65536)
    out = []
    for off, part, more in ((0, payload[:cut], 1), (cut, payload[cut:], 0)):
        h = bytearray(ip[:20])
        struct.pack_into("!HHH", h, 2, 20 + len(part), ident, (more << 13) | off // 8)
        out.append(b.data[:14] + bytes(h) + part)
    b.known.add("outer-fragment")
    return out if rng.random() < 0.8 else out[::-1]


def mutate(b: Built, rng: random.Random, kind: str) -> None:
    d = bytearray(b.data)
    if kind == "flip" and b.regions:
        for _ in range(rng.randrange(1, 4)):
            lo, hi = rng.choice(b.regions)
            i = rng.randrange(lo, max(lo + 1, hi))
            if i >= len(d):
                continue
            if rng.random() < 0.6:
                d[i] ^= 1 << rng.randrange(8)
            else:
                d[i] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    elif kind == "truncated":
        del d[rng.randrange(1, len(d)):]
    elif kind == "padding":
        d += rng.randbytes(rng.choice((1, 4, 18, 60)))
    elif kind == "edit":
        fuzzrun.edit_anywhere(d, rng.choice((0, 1, 2, 4)), rng, (0, 0xFF, 0x08, 0x45, 0x60), True)
    b.data = bytes(d)


KINDS = ("valid", "flip", "truncated", "padding", "edit", "fragment")
KIND_WEIGHTS = (30, 35, 15, 5, 10, 5)


def build_input(index: int, seed: int) -> tuple[str, dict]:
    rng = fuzzrun.input_rng(seed, index)
    b, tup = inner_packet(rng)
    depth = rng.choices((1, 2, 3), (6, 3, 1))[0]
    for _ in range(depth):
        rng.choice(ENCAPS)(b, rng)
    kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
    if kind == "fragment" and b.data[0] >> 4 == 4:
        b.wrap(MAC + struct.pack("!H", ETH_IP))
        frames = fragment(b, rng)
    else:
        if kind == "fragment":
            kind = "valid"
        ethernet(b, rng, _ethertype(b.data), outer=True)
        if kind != "valid":
            mutate(b, rng, kind)
        frames = [b.data]
    return kind, {"frames": frames, "tuple": tup, "depth": depth, "known": b.known}


# --- the kernel side -------------------------------------------------------------
class Kernel:
    """The fast path compiled once per process, frames run one by one."""

    def __init__(self, fastpath=None) -> None:
        """``fastpath``: a loaded datapath.loader.FastPath to use (a test
        session's), else one is compiled."""
        from datapath import bpfsys
        from datapath.enums import Direction
        from datapath.loader import FastPath
        self.bpfsys = bpfsys
        self.fp = fastpath if fastpath is not None else FastPath()
        self.runner = bpfsys.TestRunner(self.fp.prog_fd(Direction.DIR_INGRESS), copy_out=False)
        from datapath.sessions import FLOW_TABLES, is_v4_map, key_of4
        self.key_of4 = key_of4
        # (fd, key size, IPv4 map?) of each session map
        self.tables = [(self.fp.table(n).map_fd, 16 if is_v4_map(n) else 40, is_v4_map(n)) for n in FLOW_TABLES]

    def run(self, frame: bytes) -> tuple[list[str], list[bytes]]:
        """(reasons counted for the frame, session keys it left), the sessions then removed."""
        before = self.fp.counters()
        if len(frame) < 14:
            return ["frame-too-short-for-test-run"], []
        try:
            self.runner.run(frame)
        except self.bpfsys.BpfError as e:
            # BPF_PROG_TEST_RUN refuses some frames before the program runs
            # (an skb whose EtherType says IP with fewer bytes than an IP
            # header): the harness's limit, not the program's answer.
            return [f"test-run-refused-errno-{e.errno}"], []
        after = self.fp.counters()
        reasons = [r.name for k, (p, _) in after.items() for r in [k[1]] if p != before.get(k, (0, 0))[0]]
        keys = []
        for fd, size, v4 in self.tables:
            for k in list(self.bpfsys.map_keys(fd, size)):
                keys.append(self.key_of4(k) if v4 else bytes(k))   # the canonical key, whichever map
                self.bpfsys.map_delete(fd, bytes(k))
        return reasons, keys


def _mapped(a: bytes) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + a if len(a) == 4 else a


def session_key(proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
    """ms_flow_key (bpf/lib/maps.h) of a packet: the lower (address, port) first."""
    s, d = (_mapped(src), sport), (_mapped(dst), dport)
    lo, hi = (s, d) if s <= d else (d, s)
    return lo[0] + hi[0] + struct.pack("!HH", lo[1], hi[1]) + bytes([proto, 0, 0, 0])


def _key_text(k: bytes) -> str:
    import ipaddress
    lo, hi = ipaddress.ip_address(k[:16]), ipaddress.ip_address(k[16:32])
    plo, phi = struct.unpack_from("!HH", k, 32)
    return f"{lo.ipv4_mapped or lo}:{plo}<->{hi.ipv4_mapped or hi}:{phi}/{k[36]}"


# The fast path's bound on where an inner IP header may start (bpf/lib/tunnel.h
# MS_TUN_MAX_INNER_OFF), read from where it is written.
MS_TUN_MAX_INNER_OFF = header_defines("MS_TUN_")["MAX_INNER_OFF"]
# The VLAN TPIDs tunnel.h's ms_tun_eth takes in an inner Ethernet frame, as
# parse.h's outer parse (the reader also takes 0x9200).
_KERNEL_INNER_TPIDS = {0x8100, 0x88A8, 0x9100}


def _decodes(frame: bytes) -> bool:
    try:
        pcap._Decoder(pcap.LINKTYPE_ETHERNET, Counter()).decode(frame, 0.0)
        return True
    except (pcap._Undecodable, pcap._NotFlow):
        return False


def cause_of(frame: bytes) -> str:
    """A disagreement's likely cause, for grouping the report: the inner IP
    header past the kernel's offset bound, a VLAN TPID the reader takes and
    the kernel's inner Ethernet parse does not (the frame decoded again
    with the reader knowing only the kernel's), or unexplained."""
    layers = pcap.encapsulation(frame)
    if layers and layers[-1][1] > MS_TUN_MAX_INNER_OFF:
        return f"inner IP header past MS_TUN_MAX_INNER_OFF {MS_TUN_MAX_INNER_OFF}"
    saved = pcap.ETH_VLAN
    pcap.ETH_VLAN = _KERNEL_INNER_TPIDS
    try:
        if not _decodes(frame):
            return "VLAN TPID 0x9200 in an inner Ethernet frame"
    finally:
        pcap.ETH_VLAN = saved
    return "unexplained"


class Refused(NamedTuple):
    """The reader's answer for a frame it does not decode."""
    kind: str          # "malformed" (_Undecodable) or "notflow" (_NotFlow)
    reason: str


# --- the target ------------------------------------------------------------------
@dataclass
class Stats(fuzzrun.Stats):
    decoded: int = 0
    undecodable: Counter = field(default_factory=Counter)     # reader's reason -> inputs
    notflow: Counter = field(default_factory=Counter)
    kernel_inputs: int = 0
    kernel_frames: int = 0
    kernel_agree: int = 0                                      # decoded, session of the same 5-tuple
    kernel_decoded_nosession: Counter = field(default_factory=Counter)   # decoded; kernel reason, no session
    kernel_refused: Counter = field(default_factory=Counter)  # "reader reason -> kernel reason"
    kernel_refused_session: Counter = field(default_factory=Counter)     # reader refused, kernel made a session
    known: Counter = field(default_factory=Counter)
    disagreements: Counter = field(default_factory=Counter)
    disagree_examples: list = field(default_factory=list)
    refused_session_examples: list = field(default_factory=list)
    kernel_seconds: float = 0.0


class TunnelTarget(fuzzrun.Target):
    name = "tunnels"
    stats = Stats
    clock = "cpu"
    max_input_seconds = MAX_INPUT_SECONDS
    traced_time_factor = 5.0
    max_peak_mb = MAX_PEAK_MB
    max_rss_growth_mb = MAX_RSS_GROWTH_MB
    trace_every = TRACE_EVERY
    kernel_inputs = DEFAULT_KERNEL_INPUTS

    def __init__(self, fastpath=None) -> None:
        super().__init__()
        self.fastpath = fastpath

    def add_arguments(self, ap) -> None:
        ap.add_argument("--kernel", type=int, default=DEFAULT_KERNEL_INPUTS,
                        help="inputs (from --start on) also run through the fast path; -1: all, 0: none")

    def configure(self, args) -> None:
        self.kernel_inputs = args.kernel

    def setup(self, seed: int):
        # compiled before the run's RSS baseline and outside any input's timer
        return {"kernel": Kernel(self.fastpath) if self.kernel_inputs else None, "start": None}

    def build(self, ctx, index: int, seed: int):
        return build_input(index, seed)

    def _wants_kernel(self, ctx, index: int) -> bool:
        if self.kernel_inputs == 0:
            return False
        if ctx["start"] is None:
            ctx["start"] = index
        return self.kernel_inputs < 0 or index - ctx["start"] < self.kernel_inputs


    def feed(self, ctx, plan: dict, st: Stats, index: int, verbose: bool = False) -> None:
        dec = pcap._Decoder(pcap.LINKTYPE_ETHERNET, Counter())
        outcome: object = None
        for frame in plan["frames"]:
            try:
                # an L4Packet, or the common-frame path's plain tuple of the same fields
                outcome = pcap.L4Packet(*dec.decode(frame, 0.0))
            except pcap._Undecodable as e:
                outcome = Refused("malformed", str(e))
            except pcap._NotFlow as e:
                outcome = Refused("notflow", str(e))
        if isinstance(outcome, pcap.L4Packet):
            st.decoded += 1
        elif outcome.kind == "malformed":
            st.undecodable[outcome.reason] += 1
            st.malformed += 1
        else:
            st.notflow[outcome.reason] += 1
        if verbose:
            print(f"  reader: {outcome!r}\n  frames: {[f.hex() for f in plan['frames']]}")
        if self._wants_kernel(ctx, index):
            self._kernel(ctx, plan, outcome, st, index, verbose)

    def _kernel(self, ctx, plan: dict, outcome, st: Stats, index: int, verbose: bool) -> None:
        import time
        k = ctx["kernel"]
        t0 = time.perf_counter()
        reasons, keys = [], []
        for frame in plan["frames"]:
            r, ks = k.run(frame)
            reasons += r
            keys += ks
        st.kernel_seconds += time.perf_counter() - t0
        st.kernel_inputs += 1
        st.kernel_frames += len(plan["frames"])
        reason = "+".join(reasons) or "none"
        if verbose:
            print(f"  kernel: {reason}, sessions {[_key_text(x) for x in keys]}")
        problem = None
        if isinstance(outcome, pcap.L4Packet):
            want = session_key(outcome.proto, outcome.src, outcome.sport, outcome.dst, outcome.dport)
            if any(r in TUNNEL_DROPS for r in reasons):
                problem = f"reader decoded, kernel {reason}"
            elif keys and keys != [want]:
                problem = "reader decoded, kernel session of another 5-tuple"
            elif keys:
                st.kernel_agree += 1
            else:
                st.kernel_decoded_nosession[reason] += 1
        else:
            st.kernel_refused[f"{outcome.kind}: {outcome.reason} -> {reason}"] += 1
            if keys:
                # A non-IP overlay's outer UDP flow is expected (the kernel
                # keeps it); a malformed frame's session is shown unless the
                # frame has one of the KNOWN differences.
                if outcome.kind == "malformed" and plan["known"]:
                    st.known["(reader malformed, kernel session) " + ",".join(sorted(plan["known"]))] += 1
                else:
                    st.kernel_refused_session[f"{outcome.kind}: {outcome.reason} -> {reason}"] += 1
                if (outcome.kind == "malformed" and not plan["known"]
                        and len(st.refused_session_examples) < MAX_DISAGREE_EXAMPLES):
                    st.refused_session_examples.append(
                        f"input {index}: reader {outcome.kind} {outcome.reason!r}; kernel {reason}, sessions "
                        f"{[_key_text(x) for x in keys]}; frames {[f.hex() for f in plan['frames']]}")
        if problem is None:
            return
        problem += f" [{cause_of(plan['frames'][-1])}]"
        if plan["known"]:
            st.known[",".join(sorted(plan["known"]))] += 1
            return
        st.disagreements[problem] += 1
        if len(st.disagree_examples) < MAX_DISAGREE_EXAMPLES:
            st.disagree_examples.append(
                f"input {index}: {problem}; reader {outcome!r}; kernel sessions "
                f"{[_key_text(x) for x in keys]}; frames {[f.hex() for f in plan['frames']]}")

    def report(self, st: Stats, seed: int) -> str:
        def top(c: Counter, n=12) -> str:
            return "; ".join(f"{k} {v:,}" for k, v in c.most_common(n)) or "-"
        lines = [
            f"tunnel fuzz: seed {seed}, inputs {st.start:,}..{st.start + st.inputs - 1:,} ({st.inputs:,}), "
            f"{st.seconds:.0f} s, {st.cpu_seconds:.0f} s CPU",
            f"  kinds {dict(st.kinds)}",
            f"  reader: decoded {st.decoded:,}, malformed {st.malformed:,}, not a flow {sum(st.notflow.values()):,}",
            f"    malformed reasons: {top(st.undecodable)}",
            f"    not-a-flow reasons: {top(st.notflow)}",
        ]
        if st.kernel_inputs:
            lines += [
                f"  kernel: {st.kernel_inputs:,} inputs ({st.kernel_frames:,} frames) in {st.kernel_seconds:.0f} s",
                f"    reader decoded, same session 5-tuple: {st.kernel_agree:,}",
                f"    reader decoded, kernel made no session: {top(st.kernel_decoded_nosession)}",
                f"    reader refused -> kernel reason: {top(st.kernel_refused, 15)}",
                f"    reader refused, kernel made a session: {top(st.kernel_refused_session)}",
                *(f"      {e}" for e in st.refused_session_examples[:4]),
                f"    known differences (not failures): {top(st.known)}",
                *(f"      {k}: {v}" for k, v in KNOWN.items()),
                f"    DISAGREEMENTS {sum(st.disagreements.values())}: {top(st.disagreements)}",
                *(f"      {e}" for e in st.disagree_examples[:MAX_DISAGREE_EXAMPLES]),   # (jobs each keep theirs)
            ]
        return "\n".join(lines + fuzzrun.outcome_lines(st))


def run(inputs: int, seed: int, *, kernel: int = 0, fastpath=None, jobs: int = 1, **kw) -> Stats:
    """Inputs of ``seed``'s run (fuzzrun.run's options); the first
    ``kernel`` of them also through the fast path (``fastpath``, or one
    compiled per process)."""
    t = TunnelTarget(fastpath)
    t.kernel_inputs = kernel
    st = fuzzrun.run(t, inputs, seed, jobs=jobs, **kw)
    if st.disagreements:
        st.violations.append(f"{sum(st.disagreements.values())} reader/kernel disagreements")
    return st


def main(argv=None) -> int:
    t = TunnelTarget()
    args = fuzzrun.arguments(t, __doc__).parse_args(argv)
    st = fuzzrun.run_args(t, args)
    if st.disagreements:
        st.violations.append(f"{sum(st.disagreements.values())} reader/kernel disagreements")
    t.print_report(st, args.seed)
    return 0 if st.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
