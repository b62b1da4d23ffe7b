"""Helpers for the session-tracking tests (test_conntrack.py).

Frames are built with scapy; a ``TcpConn`` keeps both endpoints' sequence
numbers so a test reads as the conversation it is ("client sends FIN, server
acks it") and every segment carries the numbers a real stack would use.
``expect()`` runs one frame through the real program and checks the TC
action and that exactly one reason counter moved, by one packet of the
frame's length. ``entry()`` reads a session back from whichever table holds
it (ms_halfopen or ms_flows) by its canonical key, from the map of its
family (an IPv4 one under its 16-byte key), and fails when the session is
in the other family's map too.

Named ``packets_ct`` (not ``packets``): tests/ has no __init__.py, so test
helper modules share one flat namespace.
"""
from __future__ import annotations

import ctypes
import ipaddress
import socket
from dataclasses import dataclass, field

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from datapath import bpfsys
from datapath.enums import CtState, Direction, Reason
from datapath.loader import TC_ACT_OK, TC_ACT_SHOT
from datapath.sessions import FAMILY_TABLES

ING = Direction.DIR_INGRESS
EGR = Direction.DIR_EGRESS

MAC_SRC = "02:00:00:00:00:01"
MAC_DST = "02:00:00:00:00:02"

from socket import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP  # noqa: E402  (importers use these names)

# The session tables (each its IPv4 and its IPv6 map: FAMILY_TABLES).
FLOWS = "ms_flows"
HALFOPEN = "ms_halfopen"


# --------------------------------------------------------------------------
# Running frames
# --------------------------------------------------------------------------

def action_of(reason: Reason) -> int:
    """The TC action a reason must come with, from its name."""
    return TC_ACT_SHOT if reason.name.startswith("DROP_") else TC_ACT_OK


def _delta(before: dict, after: dict) -> dict:
    out = {}
    for k in set(before) | set(after):
        b, a = before.get(k, (0, 0)), after.get(k, (0, 0))
        if a != b:
            out[k] = (a[0] - b[0], a[1] - b[1])
    return out


def run_counted(fp, frame: bytes, direction: Direction = ING):
    """(action, {(direction name, reason name): (packets, bytes)} that moved)."""
    before = fp.counters()
    res = fp.run(frame, direction)
    delta = _delta(before, fp.counters())
    return res.action, {(d.name, r.name): v for (d, r), v in delta.items()}


def expect(fp, frame, reason: Reason, direction: Direction = ING) -> bytes:
    """Run ``frame``; assert its action and that only ``reason`` was counted, once."""
    frame = bytes(frame)
    action, moved = run_counted(fp, frame, direction)
    assert moved == {(direction.name, reason.name): (1, len(frame))}, \
        f"counters moved: {moved}, expected {reason.name} x1"
    assert action == action_of(reason), f"action {action} for {reason.name}"
    return frame


# --------------------------------------------------------------------------
# Keys and sessions
# --------------------------------------------------------------------------

def mapped(addr: str) -> bytes:
    """16 bytes as the session table stores an address (IPv4 as ::ffff:a.b.c.d)."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def canonical(src: str, sport: int, dst: str, dport: int):
    """((lo addr, lo port), (hi addr, hi port), src_is_hi) for a packet src -> dst."""
    s, d = (mapped(src), sport), (mapped(dst), dport)
    return (s, d, 0) if s <= d else (d, s, 1)


def is_v4(src: str, dst: str) -> bool:
    return ipaddress.ip_address(src).version == 4 and ipaddress.ip_address(dst).version == 4


def session_map(table: str, src: str, dst: str) -> str:
    """The map of session table ``table`` (FLOWS, HALFOPEN) that holds a flow src <-> dst."""
    return FAMILY_TABLES[table][0 if is_v4(src, dst) else 1]


def flow_key(table, src: str, sport: int, dst: str, dport: int, proto: int):
    """The key of a flow in map ``table`` (a BCC table): struct ms_flow_key4
    (4-byte addresses) in an IPv4 map, else the canonical key."""
    lo, hi, _ = canonical(src, sport, dst, dport)
    k = table.Key()
    if type(k).addr_lo.size == 4:
        k.addr_lo = int.from_bytes(lo[0][12:], "little")   # the wire's bytes, as the kernel stores them
        k.addr_hi = int.from_bytes(hi[0][12:], "little")
    else:
        k.addr_lo = (ctypes.c_uint8 * 16)(*lo[0])
        k.addr_hi = (ctypes.c_uint8 * 16)(*hi[0])
    k.port_lo = socket.htons(lo[1])
    k.port_hi = socket.htons(hi[1])
    k.proto = proto
    return k


def key_addrs(k) -> tuple[bytes, bytes]:
    """(addr_lo, addr_hi) of a session map's key, 16 bytes each, IPv4-mapped
    when the key is an IPv4 map's (4-byte addresses)."""
    if isinstance(k.addr_lo, int):
        return tuple(b"\0" * 10 + b"\xff\xff" + a.to_bytes(4, "little") for a in (k.addr_lo, k.addr_hi))
    return bytes(k.addr_lo), bytes(k.addr_hi)


@dataclass
class Entry:
    table: str              # FLOWS or HALFOPEN
    state: CtState
    leaf: object            # the BCC Leaf (a ctypes struct copy)

    @property
    def raw(self) -> bytes:
        return bytes(self.leaf)


def entry(fp, src: str, sport: int, dst: str, dport: int, proto: int) -> Entry | None:
    """The session of this 5-tuple, from whichever table holds it.
    Asserts it is not in both."""
    found = []
    for name in (FLOWS, HALFOPEN):
        for m in FAMILY_TABLES[name]:
            t = fp.table(m)
            try:
                leaf = t[flow_key(t, src, sport, dst, dport, proto)]
            except KeyError:
                continue
            assert m == session_map(name, src, dst), f"session {src} -> {dst} in {m}, not its family's map"
            found.append(Entry(name, CtState(leaf.state), leaf))
    assert len(found) <= 1, f"session in both tables: {found}"
    return found[0] if found else None


def table_len(fp, name: str) -> int:
    """Entries of session table ``name`` (FLOWS, HALFOPEN: both its maps) or of one map."""
    return sum(sum(1 for _ in fp.table(m).keys()) for m in FAMILY_TABLES.get(name, (name,)))


# --------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------

def ether() -> Ether:
    return Ether(src=MAC_SRC, dst=MAC_DST)


def ip(src: str, dst: str, **kw):
    if ":" in src:
        return IPv6(src=src, dst=dst, **kw)
    return IP(src=src, dst=dst, **kw)


def udp_frame(src, sport, dst, dport, data: bytes = b"x" * 16) -> bytes:
    return bytes(ether() / ip(src, dst) / UDP(sport=sport, dport=dport) / Raw(data))


# --------------------------------------------------------------------------
# A TCP conversation
# --------------------------------------------------------------------------

@dataclass
class Side:
    addr: str
    port: int
    isn: int
    wscale: int | None = None   # window scale offered on this side's SYN
    nxt: int = 0                # next sequence number (past SYN / data / FIN sent)
    started: bool = False       # has sent its SYN (or SYN-ACK)
    fin_seq: int | None = None  # sequence number of its FIN, once sent

    def __post_init__(self):
        self.nxt = self.isn


@dataclass
class TcpConn:
    """Client (the initiator, "c") and server (the responder, "s")."""
    fp: object
    c: Side = field(default_factory=lambda: Side("10.0.0.1", 40000, 1000))
    s: Side = field(default_factory=lambda: Side("10.0.0.2", 80, 500000))
    window: int = 65535
    direction_of: dict = field(default_factory=lambda: {"c": ING, "s": ING})

    @classmethod
    def make(cls, fp, client=("10.0.0.1", 40000), server=("10.0.0.2", 80),
             isn=(1000, 500000), wscale=(None, None), window=65535) -> TcpConn:
        return cls(fp, Side(client[0], client[1], isn[0], wscale[0]),
                   Side(server[0], server[1], isn[1], wscale[1]), window)

    def sides(self, frm: str) -> tuple[Side, Side]:
        return (self.c, self.s) if frm == "c" else (self.s, self.c)

    def frame(self, frm: str, flags: str, *, seq: int | None = None, ack: int | None = None,
              data: bytes = b"", window: int | None = None, options=None) -> bytes:
        """A segment from ``frm`` ("c" or "s"). Defaults: seq = the sender's next
        sequence number, ack = everything the peer sent (when flags has A),
        window = the connection's, window scale option on a SYN when the
        sender offers one."""
        me, peer = self.sides(frm)
        if seq is None:
            seq = me.nxt
        if ack is None:
            ack = peer.nxt if "A" in flags else 0
        if options is None:
            options = [("WScale", me.wscale)] if "S" in flags and me.wscale is not None else []
        seg = TCP(sport=me.port, dport=peer.port, flags=flags or 0, seq=seq % 2**32, ack=ack % 2**32,
                  window=self.window if window is None else window, options=options)
        pkt = ether() / ip(me.addr, peer.addr) / seg
        if data:
            pkt = pkt / Raw(data)
        return bytes(pkt)

    def send(self, frm: str, flags: str, reason: Reason = Reason.PASS_FORWARD, *,
             seq: int | None = None, ack: int | None = None, data: bytes = b"",
             window: int | None = None, options=None) -> bytes:
        """Send a segment, check its outcome, and when it passed, advance the
        sender's sequence numbers as its stack would."""
        me, _ = self.sides(frm)
        if seq is None:
            seq = me.isn if "S" in flags else me.nxt
        f = self.frame(frm, flags, seq=seq, ack=ack, data=data, window=window, options=options)
        expect(self.fp, f, reason, self.direction_of[frm])
        if reason in ADVANCING:
            end = seq + len(data) + ("S" in flags) + ("F" in flags)
            if "S" in flags:
                me.started = True
            if "F" in flags and me.fin_seq is None:
                me.fin_seq = seq + len(data)
            me.nxt = max(me.nxt, end)
        return f

    # -- reading the session back ------------------------------------------
    def entry(self) -> Entry | None:
        return entry(self.fp, self.c.addr, self.c.port, self.s.addr, self.s.port, IPPROTO_TCP)

    def state(self) -> CtState | None:
        e = self.entry()
        return e.state if e else None

    def assert_state(self, state: CtState, table: str | None = None) -> Entry:
        e = self.entry()
        assert e is not None, f"no session, expected {state.name}"
        assert e.state == state, f"state {e.state.name}, expected {state.name}"
        if table is None:
            table = HALFOPEN if state in HALFOPEN_STATES else FLOWS
        assert e.table == table, f"{state.name} session in {e.table}, expected {table}"
        return e

    # -- common sequences ----------------------------------------------------
    def handshake(self) -> TcpConn:
        self.send("c", "S")
        self.assert_state(CtState.CT_SYN_SENT)
        self.send("s", "SA")
        self.assert_state(CtState.CT_SYN_RECV)
        self.send("c", "A")
        self.assert_state(CtState.CT_ESTABLISHED)
        return self


# Reasons after which the segment reached the peer and counted as sent
# (an ignored or out-of-window segment passed anyway is not the sender's
# stream: a test sends it with explicit numbers).
ADVANCING = {Reason.PASS_FORWARD, Reason.PASS_TCP_PICKED_UP, Reason.PASS_TABLE_FULL_ALLOWED,
             Reason.PASS_POLICY_ALLOW, Reason.PASS_POLICY_DEFAULT, Reason.PASS_POLICY_INSPECT,
             Reason.PASS_INSPECT_COPIED, Reason.PASS_INSPECT_ALLOWED, Reason.PASS_INSPECT_RINGBUF_FULL,
             Reason.PASS_INSPECT_BUDGET, Reason.PASS_INSPECT_SLOWPATH_DOWN}

# TCP states a session is in while it still lives in the half-open LRU.
HALFOPEN_STATES = {CtState.CT_SYN_SENT, CtState.CT_SYN_RECV, CtState.CT_SYN_SENT2}


# --------------------------------------------------------------------------
# Bulk runs (SYN flood, table fill): one frame patched in place
# --------------------------------------------------------------------------

# Offsets in an Ethernet + IPv4 (no options) + TCP frame.
OFF_IP_SRC, OFF_IP_DST = 26, 30
OFF_SPORT, OFF_DPORT, OFF_SEQ, OFF_ACK, OFF_FLAGS, OFF_WIN = 34, 36, 38, 42, 47, 48


class PatchedRunner:
    """Runs one frame again and again through BPF_PROG_TEST_RUN, with the
    caller patching bytes of it in place between runs. No checksums are
    fixed up: the fast path does not verify them. Nothing is copied back
    (data_out is NULL), which keeps a run to a few microseconds."""

    def __init__(self, prog_fd: int, template: bytes):
        self.buf = ctypes.create_string_buffer(bytes(template), len(template))
        self.view = memoryview(self.buf).cast("B")[: len(template)]
        self.attr = bpfsys._TestRunAttr()
        self.attr.prog_fd = prog_fd
        self.attr.data_size_in = len(template)
        self.attr.data_in = ctypes.addressof(self.buf)
        self.attr.repeat = 1

    def run(self) -> int:
        bpfsys.sys_bpf(bpfsys.BPF_PROG_TEST_RUN, self.attr)
        return self.attr.retval


# --------------------------------------------------------------------------
# Ring buffer records
# --------------------------------------------------------------------------

def ringbuf_record_type(table) -> type:
    """The ctypes type of a ring buffer's records, from the field list BCC
    extracted from the C source (datapath/ringrecords.py, which the daemon's
    readers use too)."""
    from datapath.ringrecords import ringbuf_record_type as record_type

    return record_type(table)


# --------------------------------------------------------------------------
# A policy with the rules' `app` (l7.h ms_l7_check / ms_l7_lane)
# --------------------------------------------------------------------------

APP_POLICY = """
groups:
  clients: [10.0.0.0/24]
  servers: [10.0.1.0/24]
defaults: {ingress: deny, egress: deny}
rules:
  - {name: tls-only, from: clients, to: servers, proto: tcp, ports: [443], action: allow, app: tls}
  - {name: mysql-only, from: clients, to: servers, proto: tcp, ports: [3306], action: allow, app: mysql}
  - {name: dns-only, from: clients, to: servers, proto: udp, ports: [53], action: allow, app: dns}
  - {name: anything, from: clients, to: servers, proto: tcp, ports: [8080], action: allow}
"""
APP_CLIENT, APP_SERVER = "10.0.0.5", "10.0.1.5"
CLIENT_HELLO = bytes.fromhex("160301020001" "0001fc0303") + bytes(32) + b"\x20" + bytes(32)
SERVER_HELLO = bytes.fromhex("160303005a020000560303") + bytes(40)


def apply_app_policy(fp):
    """APP_POLICY compiled and applied to build ``fp``; returns ``fp``."""
    from appliance.policyfile import compile_text
    from datapath.policy_maps import PolicyMaps

    _, pol = compile_text(APP_POLICY, "app.yaml")
    PolicyMaps.for_fastpath(fp).apply(pol)
    return fp
