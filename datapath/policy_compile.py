"""The policy compiler: a checked policy model into kernel tables.

A policy file (YAML; loaded with line numbers by appliance/policyfile.py)
names groups of networks, per-hook defaults, rules between groups and exact
overrides; datapath/policy_model.py is its model and datapath/policy_check.py
finds every error with the line it is on (``check_policy()``).
``compile_policy()`` turns a checked model into a CompiledPolicy
(datapath/policy_tables.py): the group LPM, the rule LPM entries, the exact
overrides and the defaults, in the kernel's own terms (bpf/lib/maps.h), so
PolicyMaps.apply can load it and policy_tables.decide() can explain it.

Precedence
----------
A new flow (source address and port -> destination address and port,
protocol) is decided once, by the first of these that matches:
  1. an override: exactly this source, destination, protocol, destination
     port and source port; then the same with source port 0 (any);
  2. a rule, by the groups of the two addresses. An address is in the
     group of its most specific prefix (the prefixes are the groups'
     members and the CIDRs written in rules, each such CIDR a group of its
     own); an address in no prefix is in the world, which only `any`
     matches. Rules are looked up at four levels, and the first level
     with a match decides:
       (source group, destination group), (source group, any),
       (any, destination group), (any, any).
     A rule written for a group also applies to every group nested in it
     (every prefix of the nested group inside one of the group's), unless
     the nested group has a rule of its own for that destination group,
     protocol and port: the closer group wins, the source side first,
     then the destination side (of two enclosing groups neither nested in
     the other: the one nested in more groups, then the one written
     first). Among the rules of one pair of groups, a rule for the flow's
     protocol beats a rule for any protocol; two rules of one pair of
     groups and one protocol may not share a port (an error). `icmp`
     means ICMP and ICMPv6 echo; its rules have no ports;
  3. the default of the hook the flow was first seen on (ingress, egress).
The decision is kept in the session; a policy applied later decides every
existing session again on its next packet, and a session it denies is
dropped and removed. TCP, UDP and ICMP echo flows are decided once and
kept in a session; other IP protocols (GRE, ESP, SCTP, ...) have no
session and are decided packet by packet, as seen from each packet's
sender, with ports 0 (a rule for `any` protocol or an override matches).

Compilation
-----------
Group ids: named groups 1.. in file order, then one anonymous group
"cidr:<net>" per distinct CIDR written in a rule (a CIDR that is exactly a
one-member group's member means that group). Every prefix is an LPM entry
to its group id. An IPv6 prefix wide enough to hold ::ffff:0:0/96 (where the
kernel keeps IPv4 addresses) gets that /96 added as the world, so IPv4
addresses never fall into an IPv6 group.

Rules: a rule for all protocols is one entry of prefix 64, a protocol with
all ports 72, ports 72 + the bits of each prefix-aligned block of a range
(policy_tables.port_blocks). Nesting is compiled, not looked up: for every
pair of groups a flow can have, the entries of that pair's own rules come
first and then, in the order above, those of the enclosing groups' rules
that no earlier entry covers (an entry of a less specific pair covered by a
more specific one is left out; one that covers part of an earlier entry is
kept, and the earlier, more specific entry wins in the LPM where they
overlap). The kernel's four-level lookup then gives exactly the precedence
above. Rule ids are 1-based: rules in file order, then overrides in file
order; RuleInfo keeps each one's line and text for `explain`.

"LPM" above is the meaning of the tables: the longest prefix wins. The
kernel keeps the rule entries (and, when that is cheaper, the group
prefixes) in hashes, each under its own prefix length, and probes the
lengths present longest first, which finds the same entry
(bpf/lib/maps.h; datapath/policy_maps.py writes them).
"""
from __future__ import annotations

import socket
from collections import defaultdict

from .policy_check import MAPPED_V4, Analysis, check_policy, net_text, without_gc
from .policy_model import InspectSpec, Override, PolicyError, PolicyFile, Rule
from .policy_tables import (GROUP_ANY, GROUP_WORLD, POL, PREFIX_ANY_PORT, PREFIX_ANY_PROTO, CompiledPolicy,
                            ExactEntry, RuleEntry, RuleInfo, Verdict, mapped, port_blocks)

PRECEDENCE = __doc__.split("Precedence\n----------\n")[1].split("\n\nCompilation")[0]

# `proto` in a rule -> the IP protocol numbers it stands for (None: every protocol).
PROTOS: dict[str, tuple[int, ...] | None] = {
    "tcp": (socket.IPPROTO_TCP,), "udp": (socket.IPPROTO_UDP,),
    "icmp": (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6), "any": None,
}


LpmKey = tuple[int, int, int]          # (prefixlen, proto, port), proto/port 0 past the prefix


def rule_keys(proto: str, ranges: list[tuple[int, int]] | None) -> list[LpmKey]:
    """The rule-LPM keys of one rule's protocol and ports."""
    protos = PROTOS[proto]
    if protos is None:
        return [(PREFIX_ANY_PROTO, 0, 0)]
    out = []
    for p in protos:
        if ranges is None:
            out.append((PREFIX_ANY_PORT, p, 0))
            continue
        for lo, hi in ranges:
            out += [(PREFIX_ANY_PORT + bits, p, start) for start, bits in port_blocks(lo, hi)]
    return out


def _covering_keys(k: LpmKey):
    """Every key whose prefix contains ``k`` (itself included)."""
    pl, proto, port = k
    yield (PREFIX_ANY_PROTO, 0, 0)
    if pl >= PREFIX_ANY_PORT:
        yield (PREFIX_ANY_PORT, proto, 0)
        for bits in range(1, pl - PREFIX_ANY_PORT + 1):
            yield (PREFIX_ANY_PORT + bits, proto, port >> (16 - bits) << (16 - bits))


def rule_text(r: Rule) -> str:
    def ends(side):
        e = r.ends(side)
        return e[0] if len(e) == 1 else "[" + ", ".join(e) + "]"
    parts = [f"{ends('from')} -> {ends('to')}", r.proto]
    if r.ports:
        parts.append(",".join(str(p) for p in r.ports))
    parts.append(r.action)
    i = r.effective_inspect()
    if i is not None:
        parts.append(f"({','.join(i.what)}, {i.mode})")
    if r.l7 is not None:
        parts.append("l7 " + " ".join(f"{p}[{len(getattr(r.l7, p))}]" for p in r.l7.protocols()))
    if r.app:
        parts.append(f"app {r.app}")
    if r.log:
        parts.append("log")
    return " ".join(parts)


def override_text(o: Override) -> str:
    def ep(a, p):
        return (f"[{a}]" if ":" in a else a) + f":{p if p else '*'}"
    parts = [f"{ep(o.src, o.sport)} -> {ep(o.dst, o.dport)}", o.proto, o.action]
    if o.action == "inspect":
        i = o.inspect or InspectSpec()
        parts.append(f"({','.join(i.what)}, {i.mode})")
    if o.app:
        parts.append(f"app {o.app}")
    if o.log:
        parts.append("log")
    return " ".join(parts)


@without_gc
def compile_policy(model: PolicyFile, source: str = "", analysis: Analysis | None = None) -> CompiledPolicy:
    """The kernel tables of a policy model; PolicyError if it does not check.
    ``analysis``: check_policy(model), when the caller has it already."""
    a = analysis if analysis is not None else check_policy(model)
    if a.errors:
        raise PolicyError(a.errors)
    pol = CompiledPolicy(source=source)
    pol.warnings = sorted(a.warnings)
    pol.blocklist = list(model.blocklist)

    # Group LPM.
    for g in a.groups:
        for n in g.nets:
            pol.groups.append((n, g.gid))
    prefixes = {n for n, _ in pol.groups}
    if MAPPED_V4 not in prefixes and any(MAPPED_V4.subnet_of(n) for n in prefixes):
        pol.groups.append((MAPPED_V4, GROUP_WORLD))
    pol.group_names = {GROUP_WORLD: "world", GROUP_ANY: "any"} | {g.gid: g.name for g in a.groups}
    pol.group_prefixes = {g.gid: [net_text(n) for n in g.nets] for g in a.groups}

    # Nesting: ancestors of each group, closest first.
    anc: dict[int, list[int]] = {gid: list(lst) for gid, lst in a.ancestors.items()}
    for gid, lst in anc.items():
        lst.sort(key=lambda x: (-len(anc[x]), x))
    desc: dict[int, set[int]] = {g.gid: {g.gid} for g in a.groups}
    for gid, lst in anc.items():
        for x in lst:
            desc[x].add(gid)

    def chain(gid: int) -> list[int]:
        return [gid] if gid == GROUP_ANY else [gid, *anc[gid]]

    def below(gid: int) -> set[int]:
        return {GROUP_ANY} if gid == GROUP_ANY else desc[gid]

    # Each pair of groups' own entries.
    own: dict[tuple[int, int], list[tuple[LpmKey, Verdict]]] = defaultdict(list)
    for rr in a.rules:
        vd = rr.rule.verdict(rr.rule_id)
        keys = rule_keys(rr.rule.proto, rr.ranges)
        for s in rr.src:
            for d in rr.dst:
                own[(s, d)] += [(k, vd) for k in keys]
        pol.rule_info[rr.rule_id] = RuleInfo(rr.rule_id, rr.line, rule_text(rr.rule), rr.rule.name or "",
                                             kind="rule", src_groups=tuple(rr.src), dst_groups=tuple(rr.dst))

    targets: set[tuple[int, int]] = set()
    for s, d in own:
        targets |= {(s0, d0) for s0 in below(s) for d0 in below(d)}
    add = pol.rules.append
    for s0, d0 in sorted(targets):
        kept: dict[LpmKey, Verdict] = {}
        for si in chain(s0):
            for dj in chain(d0):
                entries = own.get((si, dj))
                if not entries:
                    continue
                if not kept:             # the closest pair with rules: nothing earlier covers its entries
                    kept.update(entries)
                    continue
                earlier = set(kept)
                for k, vd in entries:
                    if not any(c in earlier for c in _covering_keys(k)):
                        kept[k] = vd
        for (pl, proto, port), vd in kept.items():
            add(RuleEntry(s0, d0, proto, port, pl, vd))

    # Overrides, numbered after the rules.
    next_id = len(model.rules) + 1
    for i, o in enumerate(model.overrides):
        rid = next_id + i
        pol.exact.append(ExactEntry(mapped(o.src).packed, mapped(o.dst).packed, o.sport, o.dport,
                                    PROTOS[o.proto][0], o.verdict(rid)))
        pol.rule_info[rid] = RuleInfo(rid, model.line("overrides", i), override_text(o), o.name or "",
                                      kind="override")

    for hook in ("ingress", "egress"):
        pol.defaults[hook] = Verdict(POL["POL_" + getattr(model.defaults, hook).upper()], 0)
        pol.default_lines[hook] = model.line("defaults", hook) if hook in model.defaults.model_fields_set \
            else 0
    return pol


def group_of(pol: CompiledPolicy, addr: str) -> tuple[int, str | None]:
    """(group id, matching prefix as written) of an address: the most specific prefix."""
    m = mapped(addr)
    best = None
    for n, gid in pol.groups:
        if m in n and (best is None or n.prefixlen > best[0].prefixlen):
            best = (n, gid)
    if best is None:
        return GROUP_WORLD, None
    return best[1], net_text(best[0])
