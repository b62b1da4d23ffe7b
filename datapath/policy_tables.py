"""Compiled policy: the tables the kernel looks up, and the same lookup in Python.

A policy file compiles (datapath/policy_compile.py) into a CompiledPolicy:
group prefixes, rule entries of the rule LPM, exact overrides and the
per-hook defaults, in the kernel's own terms (bpf/lib/maps.h, policy.h).
``decide()`` walks these tables in the order bpf/lib/policy.h does, so
`microseg policy explain` answers from exactly what the kernel will hold,
and a test checks the two agree on random tuples.
"""
from __future__ import annotations

import contextlib
import gc
import ipaddress
from array import array
from dataclasses import dataclass, field

from .enums import enum_list
from .source import header_defines

POL = {e.name: e.value for e in enum_list("POL_ACTION")}
POL_NAMES = {v: k.removeprefix("POL_").lower() for k, v in POL.items()}

GROUP_WORLD = 0
GROUP_ANY = 0xFFFFFFFF
PREFIX_ANY_PROTO = 64
PREFIX_ANY_PORT = 72
PREFIX_PORT = 88


@contextlib.contextmanager
def no_gc():
    """The cyclic garbage collector off for a bulk build of objects (a large
    policy is millions of YAML nodes, models and entries, none of them
    garbage yet): each collection would walk them all again, and did, for
    more than half of the time a 100,000-rule policy took to load. Nested
    uses are fine; the previous state comes back."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass(frozen=True)
class Verdict:
    action: int              # POL[...]
    rule_id: int = 0         # 0: a default
    inspect: int = 0         # enums.INSPECT bits: INSPECT_BITS of the rule | HOLD, failure action
    app: int = 0
    log: int = 0


@dataclass(frozen=True)
class RuleEntry:
    """One entry of the rule LPM: (sgroup, dgroup, proto, port) / prefixlen."""
    sgroup: int
    dgroup: int
    proto: int               # ignored when prefixlen == 64
    port: int                # host order; only the top (prefixlen - 72) bits count
    prefixlen: int           # 64, 72 .. 88
    verdict: Verdict


@dataclass(frozen=True)
class ExactEntry:
    saddr: bytes             # 16 bytes, IPv4-mapped for IPv4
    daddr: bytes
    sport: int               # 0: any
    dport: int
    proto: int
    verdict: Verdict


@dataclass
class RuleInfo:
    """What `explain` says about a rule: where it is written and how."""
    rule_id: int
    line: int
    text: str
    name: str = ""
    kind: str = "rule"                           # "rule" or "override"
    src_groups: tuple[int, ...] = ()             # group ids the rule names (GROUP_ANY: any)
    dst_groups: tuple[int, ...] = ()


@dataclass
class CompiledPolicy:
    groups: list[tuple[ipaddress.IPv6Network, int]] = field(default_factory=list)
    rules: list[RuleEntry] = field(default_factory=list)
    exact: list[ExactEntry] = field(default_factory=list)
    defaults: dict[str, Verdict] = field(default_factory=dict)   # "ingress" / "egress"
    group_names: dict[int, str] = field(default_factory=dict)
    rule_info: dict[int, RuleInfo] = field(default_factory=dict)
    source: str = ""
    group_prefixes: dict[int, list[str]] = field(default_factory=dict)   # as written
    default_lines: dict[str, int] = field(default_factory=dict)          # 0: not written (deny)
    warnings: list[tuple[int, str]] = field(default_factory=list)      # (line, message)
    blocklist: list[str] = field(default_factory=list)                 # sources dropped at XDP


def mapped(addr: str | ipaddress._BaseAddress) -> ipaddress.IPv6Address:
    """IPv4 as IPv4-mapped IPv6, as the kernel stores addresses."""
    a = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
    if a.version == 4:
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + a.packed)
    return a


def mapped_net(net: str | ipaddress._BaseNetwork) -> ipaddress.IPv6Network:
    n = ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net
    if n.version == 4:
        return ipaddress.IPv6Network((mapped(n.network_address), 96 + n.prefixlen))
    return n


def port_blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    """[lo, hi] as prefix-aligned blocks: (start, prefix bits of 16)."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 16 - size.bit_length() + 1))
        lo += size
    return out


MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")
GROUP_KINDS = ("mapped", "other")      # ms_pol_glen: slot * 2 + kind


def group_lengths(policy: CompiledPolicy, most: int, how: str = "auto") -> dict[str, list[int] | None]:
    """The prefix lengths the kernel probes its group hash with, longest
    first, per kind of address (IPv4-mapped, other); None: look the trie up
    instead (bpf/lib/maps.h).

    An address can only be in a prefix that meets its kind's range: an
    IPv4-mapped address in a prefix inside ::ffff:0:0/96 or holding it, any
    other address in a prefix not inside it. Probing those lengths longest
    first finds what the trie finds. ``how``: "auto" probes when the
    lengths are at most ``most`` and at most half the bits of the prefix
    count (a trie of N prefixes is walked about log2(N) nodes deep, a
    probe costs about two); "hash" whenever they are at most ``most``
    (tests); "lpm" never."""
    out: dict[str, list[int] | None] = {}
    for kind in GROUP_KINDS:
        if kind == "mapped":
            nets = [n for n, _ in policy.groups if n.subnet_of(MAPPED_V4) or MAPPED_V4.subnet_of(n)]
        else:
            nets = [n for n, _ in policy.groups if not n.subnet_of(MAPPED_V4)]
        lens = sorted({n.prefixlen for n in nets}, reverse=True)
        if how == "lpm" or len(lens) > most or (how == "auto" and 2 * len(lens) > len(nets).bit_length()):
            out[kind] = None
        else:
            out[kind] = lens
    return out


# The IPv4 direct table's shape (bpf/lib/maps.h, MS_POL_DIR_*).
_DIR = header_defines("MS_POL_DIR_")
DIR_ROOT, DIR_BLOCK, DIR_NEXT, DIR_BLOCKS_MAX = _DIR["ROOT"], _DIR["BLOCK"], _DIR["NEXT"], _DIR["BLOCKS_MAX"]
# Bits of an IPv4 address each level of the table indexes: 16, then 8, 8.
_DIR_LEVELS = ((16, 16), (24, 8), (32, 8))    # (last prefix length of the level, its bits)


@dataclass
class Ipv4Dir:
    """The IPv4 direct table of a policy (bpf/lib/maps.h): ``entries``, the
    /16 level then the blocks; ``groups``: the group id of each value index
    (index 0: no group)."""
    entries: array
    groups: list[int]

    @property
    def blocks(self) -> int:
        return (len(self.entries) - DIR_ROOT) // DIR_BLOCK

    def group_of(self, addr: ipaddress.IPv6Address) -> int:
        """The group of an IPv4-mapped address, read as policy.h reads it."""
        b = addr.packed
        e = self.entries[b[12] << 8 | b[13]]
        for byte in b[14:16]:
            if not e & DIR_NEXT:
                break
            e = self.entries[DIR_ROOT + (e & ~DIR_NEXT) * DIR_BLOCK + byte]
        return GROUP_WORLD if e & DIR_NEXT else self.groups[e]


def ipv4_dir(policy: CompiledPolicy, most_blocks: int = DIR_BLOCKS_MAX) -> Ipv4Dir | None:
    """The IPv4 direct table of ``policy``'s prefixes that IPv4-mapped
    addresses can be in (those inside ::ffff:0:0/96, and the shorter ones
    holding it, which hold every IPv4 address); None when there are none
    (nothing to look up) or it would take more than ``most_blocks`` blocks
    (the hash or the trie is used then, group_lengths()).

    Prefixes are written shortest first, each over the range it covers, so
    an entry ends with the longest prefix covering it, what the trie finds;
    a block made for a longer prefix starts as copies of the entry it
    replaces (what covered the whole block until then)."""
    nets = []
    for n, g in policy.groups:
        if n.subnet_of(MAPPED_V4):
            nets.append((n.prefixlen, int(n.network_address) & 0xFFFFFFFF, g))
        elif MAPPED_V4.subnet_of(n):
            nets.append((n.prefixlen, 0, g))      # every IPv4 address: as 0.0.0.0/0, shorter than any
    if not nets:
        return None
    nets.sort(key=lambda t: t[0])
    entries = array("I", bytes(4 * DIR_ROOT))
    values: dict[int, int] = {GROUP_WORLD: 0}
    for plen, net, g in nets:
        v4len = max(plen - 96, 0)
        val = values.setdefault(g, len(values))
        base = 0                           # the first entry of the current level
        shift = 32
        for last, bits in _DIR_LEVELS:
            shift -= bits
            idx = base + ((net >> shift) & ((1 << bits) - 1))
            if v4len <= last:
                span = 1 << (last - v4len)
                entries[idx:idx + span] = array("I", [val]) * span
                break
            e = entries[idx]
            if not e & DIR_NEXT:           # a block for the longer prefixes inside this entry
                b = (len(entries) - DIR_ROOT) // DIR_BLOCK
                if b >= most_blocks:
                    return None
                entries.extend(array("I", [e]) * DIR_BLOCK)
                e = entries[idx] = DIR_NEXT | b
            base = DIR_ROOT + (e & ~DIR_NEXT) * DIR_BLOCK
    groups = [0] * len(values)
    for g, i in values.items():
        groups[i] = g
    return Ipv4Dir(entries, groups)


@dataclass
class Decision:
    verdict: Verdict
    how: str                 # "override", "rule (src, dst)", "default ingress", "no policy"
    sgroup: int = GROUP_WORLD
    dgroup: int = GROUP_WORLD


def _group_of(policy: CompiledPolicy, addr: ipaddress.IPv6Address) -> int:
    best, gid = -1, GROUP_WORLD
    for net, g in policy.groups:
        if addr in net and net.prefixlen > best:
            best, gid = net.prefixlen, g
    return gid


def _rule_of(policy: CompiledPolicy, sg: int, dg: int, proto: int, port: int) -> Verdict | None:
    best, hit = -1, None
    for e in policy.rules:
        if e.sgroup != sg or e.dgroup != dg:
            continue
        if e.prefixlen > PREFIX_ANY_PROTO and e.proto != proto:
            continue
        if e.prefixlen > PREFIX_ANY_PORT:
            bits = e.prefixlen - PREFIX_ANY_PORT
            if (e.port >> (16 - bits)) != (port >> (16 - bits)):
                continue
        if e.prefixlen > best:
            best, hit = e.prefixlen, e.verdict
    return hit


def decide(policy: CompiledPolicy | None, src: str, dst: str, proto: int, dport: int,
           sport: int = 0, hook: str = "ingress") -> Decision:
    """The verdict for a new flow src:sport -> dst:dport, as bpf/lib/policy.h decides it."""
    if policy is None:
        return Decision(Verdict(POL["POL_NONE"]), "no policy")
    s, d = mapped(src), mapped(dst)
    for e in policy.exact:
        if (e.saddr, e.daddr, e.dport, e.proto) == (s.packed, d.packed, dport, proto) and e.sport == sport:
            return Decision(e.verdict, "override")
    for e in policy.exact:
        if (e.saddr, e.daddr, e.dport, e.proto) == (s.packed, d.packed, dport, proto) and e.sport == 0:
            return Decision(e.verdict, "override")
    sg, dg = _group_of(policy, s), _group_of(policy, d)
    port = dport if proto in (6, 17) else 0
    for a, b, how in ((sg, dg, "rule (source group, destination group)"),
                      (sg, GROUP_ANY, "rule (source group, any)"),
                      (GROUP_ANY, dg, "rule (any, destination group)"),
                      (GROUP_ANY, GROUP_ANY, "rule (any, any)")):
        v = _rule_of(policy, a, b, proto, port)
        if v is not None:
            return Decision(v, how, sg, dg)
    return Decision(policy.defaults.get(hook, Verdict(POL["POL_DENY"])), f"default {hook}", sg, dg)
