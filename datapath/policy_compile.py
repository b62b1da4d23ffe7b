"""The policy file's model, its checks, and its compiler into kernel tables.

A policy file (YAML; loaded with line numbers by appliance/policyfile.py)
names groups of networks, per-hook defaults, rules between groups and exact
overrides. ``check_policy()`` finds every error with the line it is on;
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

import difflib
import functools
import ipaddress
import re
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator

from .enums import INSPECT, INSPECT_BITS, enum_list
from .errors import UsageError
from .policy_tables import (GROUP_ANY, GROUP_WORLD, POL, no_gc,
                            PREFIX_ANY_PORT, PREFIX_ANY_PROTO, CompiledPolicy, ExactEntry,
                            RuleEntry, RuleInfo, Verdict, mapped, mapped_net, port_blocks)

PRECEDENCE = __doc__.split("Precedence\n----------\n")[1].split("\n\nCompilation")[0]

# enum ms_fail_action order (bpf/lib/maps.h): pass, drop, bypass.
FAIL_ACTIONS = tuple(e.name.removeprefix("FAIL_").lower() for e in enum_list("FAIL_ACTION"))


def app_ids() -> dict[str, int]:
    """Application protocols a rule may require (`app:`), name -> the id the
    kernel's L7 stage stores (struct ms_verdict.app): the built-in protocols
    and the installed plugins, as datapath/l7.py numbers them."""
    from protocols import registry

    from .l7 import app_ids as ids
    return ids(list(registry.default_plugins()))


# `proto` in a rule -> the IP protocol numbers it stands for (None: every protocol).
PROTOS: dict[str, tuple[int, ...] | None] = {
    "tcp": (socket.IPPROTO_TCP,), "udp": (socket.IPPROTO_UDP,),
    "icmp": (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6), "any": None,
}
PORTED = ("tcp", "udp")
MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")
GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _without_gc(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        with no_gc():
            return fn(*a, **kw)
    return wrapper


# -- the file's model ----------------------------------------------------------

def _port_item(v: Any) -> tuple[int, int]:
    """One entry of `ports`: 443, "443" or "8000-8100" -> (lo, hi)."""
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ValueError(f"not a port or a range: {v!r}")
    if isinstance(v, int):
        lo = hi = v
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", v)
        if not m:
            raise ValueError(f"not a port or a range: {v!r} (write 443 or \"8000-8100\")")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
    for p in (lo, hi):
        if p == 0:
            raise ValueError("port 0 is not a port (ports are 1-65535; omit `ports` for all)")
        if p > 65535 or p < 0:
            raise ValueError(f"port {p} is out of range (ports are 1-65535)")
    if lo > hi:
        raise ValueError(f"bad range {lo}-{hi}: the low end is above the high end")
    return (lo, hi)


def _address(v: str) -> str:
    """An override's address, or ValueError."""
    try:
        ipaddress.ip_address(v)
    except ValueError:
        if "/" in v:
            raise ValueError(f"{v!r}: an override matches one address, not a network "
                             "(use a rule for networks)") from None
        raise ValueError(f"{v!r} is not an IPv4 or IPv6 address") from None
    return v


def _none_empty(kind):
    def conv(v):
        return kind() if v is None else v
    return conv


class InspectSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    what: list[Literal["dpi", "waf", "dlp"]] = Field(default_factory=lambda: ["dpi"], min_length=1)
    mode: Literal["async", "hold"] = "async"
    # This rule's failure action (ring buffer full, budget used up, slow
    # path down); None: the configured failure_actions.
    on_failure: Literal["pass", "drop", "bypass"] | None = None

    def bits(self) -> int:
        b = 0
        for w in self.what:
            b |= INSPECT_BITS[w]
        if self.on_failure:
            b |= (1 + FAIL_ACTIONS.index(self.on_failure)) << INSPECT["FAIL_SHIFT"]
        return b | (INSPECT["HOLD"] if self.mode == "hold" else 0)


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ingress: Literal["allow", "deny"] = "deny"
    egress: Literal["allow", "deny"] = "deny"


Action = Literal["allow", "deny", "inspect"]


class _Decision(BaseModel):
    """Fields a rule and an override share: what they decide."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = None
    action: Action
    inspect: InspectSpec | None = None
    app: str | None = None
    log: bool = False

    @field_validator("app")
    @classmethod
    def _known_app(cls, v):
        if v is not None and v not in app_ids():
            raise ValueError(f"unknown application protocol {v!r} (known: {', '.join(app_ids())})")
        return v

    def verdict(self, rule_id: int) -> Verdict:
        insp = 0
        if self.action == "inspect":
            insp = (self.inspect or InspectSpec()).bits()
        return Verdict(POL["POL_" + self.action.upper()], rule_id, insp,
                       app_ids()[self.app] if self.app else 0, int(self.log))


class Rule(_Decision):
    src: str | list[str] = Field(alias="from")
    dst: str | list[str] = Field(alias="to")
    proto: Literal["tcp", "udp", "icmp", "any"] = "any"
    # Checked by check_policy (every bad port is reported, with its line).
    ports: list[int | str] | None = None

    def ends(self, side: str) -> list[str]:
        v = self.src if side == "from" else self.dst
        return [v] if isinstance(v, str) else list(v)


class Override(_Decision):
    # Addresses and ports are checked by check_policy.
    src: str
    dst: str
    proto: Literal["tcp", "udp", "icmp"]
    dport: int
    sport: int = 0


class PolicyFile(BaseModel):
    """A policy file as written. ``line(*loc)`` finds where a value is."""
    model_config = ConfigDict(extra="forbid")

    groups: Annotated[dict[str, list[str] | None], BeforeValidator(_none_empty(dict))] = Field(default_factory=dict)
    defaults: Annotated[Defaults, BeforeValidator(_none_empty(dict))] = Field(default_factory=Defaults)
    rules: Annotated[list[Rule], BeforeValidator(_none_empty(list))] = Field(default_factory=list)
    overrides: Annotated[list[Override], BeforeValidator(_none_empty(list))] = Field(default_factory=list)
    # Sources dropped at XDP on the managed interfaces, before any session
    # or rule (datapath/blocklist.py).
    blocklist: Annotated[list[str], BeforeValidator(_none_empty(list))] = Field(default_factory=list)

    _root: Any = PrivateAttr(default=None)
    _dup_keys: list = PrivateAttr(default_factory=list)
    _keys: dict = PrivateAttr(default_factory=dict)    # id(mapping node) -> {key: (key node, value node)}

    def line(self, *loc, key: bool = False) -> int:
        """1-based line of the value at ``loc`` in the file (``key``: of its key;
        0: the model is not from a file)."""
        root = self._root         # private attributes are slow to reach: once per call
        if root is None:
            return 0
        mapping, sequence = _yaml_nodes()
        keys = self._keys
        node = root
        last = len(loc) - 1
        for n, part in enumerate(loc):
            if isinstance(node, mapping):
                # An index per mapping, made on first use: a policy's groups
                # are thousands of keys, and every member's line is asked for.
                index = keys.get(id(node))
                if index is None:
                    index = keys[id(node)] = {k.value: (k, v) for k, v in node.value}   # the last wins
                found = index.get(str(part))
                if found is None:
                    break
                node = found[0] if key and n == last else found[1]
            elif isinstance(node, sequence) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                break
        return node.start_mark.line + 1


_NODES: tuple = ()


def _yaml_nodes() -> tuple[type, type]:
    """(MappingNode, SequenceNode): a model from a file carries its YAML
    nodes; yaml is imported only when one does."""
    global _NODES
    if not _NODES:
        from yaml import MappingNode, SequenceNode
        _NODES = (MappingNode, SequenceNode)
    return _NODES


def field_name(loc: tuple) -> str:
    """A pydantic location as an operator reads it: rule 3: ports[2]."""
    if len(loc) >= 2 and loc[0] in ("rules", "overrides") and isinstance(loc[1], int):
        head = f"{'rule' if loc[0] == 'rules' else 'override'} {loc[1] + 1}"
        rest = "".join(f"[{p + 1}]" if isinstance(p, int) else f".{p}" for p in loc[2:]).lstrip(".")
        return f"{head}: {rest}" if rest else head
    return ".".join(str(p) for p in loc) or "(top level)"


# -- checks ----------------------------------------------------------------------

class PolicyError(UsageError):
    """A policy that does not check: every error as (line, message)."""

    def __init__(self, errors: list[tuple[int, str]]):
        self.errors = sorted(set(errors))
        super().__init__("\n".join(f"line {ln}: {m}" for ln, m in self.errors))


@dataclass
class Group:
    gid: int
    name: str
    nets: list[ipaddress.IPv6Network]      # mapped (IPv4 as ::ffff:a.b.c.d/96+n)
    texts: list[str]                       # as written, for text output
    line: int
    anonymous: bool = False
    _spans: list | None = None

    def spans(self) -> list[tuple[int, int, bool]]:
        """(first, last, is IPv4) of each prefix, as integers: nesting tests are many."""
        if self._spans is None:
            self._spans = [(int(n.network_address), int(n.broadcast_address), _is_v4(n)) for n in self.nets]
        return self._spans


@dataclass
class _ResolvedRule:
    rule_id: int
    index: int
    rule: Rule
    line: int
    src: list[int]                         # group ids, GROUP_ANY for any
    dst: list[int]
    ranges: list[tuple[int, int]] | None   # None: all ports (or no ports: icmp / any)


@dataclass
class Analysis:
    groups: list[Group] = field(default_factory=list)           # by gid order
    rules: list[_ResolvedRule] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[tuple[int, str]] = field(default_factory=list)
    # gid -> the groups it is nested in (every prefix inside one of theirs), in group order
    ancestors: dict[int, list[int]] = field(default_factory=dict)


def _net(text: str) -> tuple[ipaddress.IPv6Network | None, str]:
    """(mapped network, error) of a CIDR or a bare address."""
    try:
        n = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        try:
            n = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return None, f"bad CIDR {text!r}: {e}"
        return None, f"bad CIDR {text!r}: host bits set (the network is {n})"
    return mapped_net(n), ""


def _looks_like_cidr(text: str) -> bool:
    return "/" in text or ":" in text or bool(re.fullmatch(r"[\d.]+", text))


def _is_v4(net: ipaddress.IPv6Network) -> bool:
    return net.subnet_of(MAPPED_V4)


def _net_text(net: ipaddress.IPv6Network) -> str:
    if _is_v4(net):
        return str(ipaddress.IPv4Network((net.network_address.packed[12:], net.prefixlen - 96)))
    return str(net)


def _ranges_text(ranges) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for lo1, hi1 in a:
        for lo2, hi2 in b:
            lo, hi = max(lo1, lo2), min(hi1, hi2)
            if lo <= hi:
                out.append((lo, hi))
    return sorted(out)


ALL_PORTS = [(0, 65535)]


@_without_gc
def check_policy(model: PolicyFile) -> Analysis:
    """Every error (and warning) of a validated model, with its line; and
    the groups and rules resolved to group ids for the compiler."""
    a = Analysis()
    err, warn = a.errors.append, a.warnings.append

    for i, text in enumerate(model.blocklist):
        if _net(text)[0] is None:
            err((model.line("blocklist", i), f"blocklist: {_net(text)[1]}"))

    for loc, key, line, first in model._dup_keys:
        if loc == ("groups",):
            err((line, f"duplicate group name {key!r} (first defined at line {first})"))
        else:
            where = field_name(loc) + ": " if loc else ""
            err((line, f"{where}key {key!r} written twice (first at line {first})"))

    # Groups and their prefixes.
    owner: dict[ipaddress.IPv6Network, tuple[str, int]] = {}
    by_name: dict[str, Group] = {}
    for name, members in model.groups.items():
        gline = model.line("groups", name, key=True)
        g = Group(len(a.groups) + 1, name, [], [], gline)
        if not GROUP_NAME.match(name) or name == "any" or _looks_like_cidr(name):
            err((gline, f"group name {name!r}: use letters, digits, '_', '.', '-' (not 'any', "
                        f"not an address), starting with a letter"))
        if not members:
            err((gline, f"group {name!r} is empty"))
        for i, text in enumerate(members or []):
            line = model.line("groups", name, i)
            if not isinstance(text, str):
                err((line, f"groups.{name}[{i + 1}]: {text!r} is not a CIDR"))
                continue
            net, why = _net(text)
            if net is None:
                err((line, f"groups.{name}[{i + 1}]: {why}"))
                continue
            if net in owner:
                oname, oline = owner[net]
                if oname == name:
                    err((line, f"{text} is listed twice in group {name!r} (lines {oline} and {line})"))
                else:
                    err((line, f"{text} is in group {oname!r} (line {oline}) and in group {name!r} "
                               f"(line {line}): an address must have one group"))
                continue
            owner[net] = (name, line)
            g.nets.append(net)
            g.texts.append(text)
        a.groups.append(g)
        by_name[name] = g

    # Rule ends: group names, CIDRs (anonymous groups) or any.
    anon: dict[ipaddress.IPv6Network, Group] = {}
    anon_index: dict[ipaddress.IPv6Network, int] = {}

    def resolve(i: int, r: Rule, side: str) -> list[int] | None:
        ends = r.ends(side)
        base = ("rules", i, side)
        out, ok = [], True
        if not ends:
            err((model.line(*base), f"rule {i + 1}: {side}: empty list"))
            return None
        for j, text in enumerate(ends):
            loc = base if isinstance(r.src if side == "from" else r.dst, str) else (*base, j)

            def line(loc=loc) -> int:      # asked for only when needed: a policy has many rules
                return model.line(*loc)
            if text == "any":
                if len(ends) > 1:
                    err((line(), f"rule {i + 1}: {side}: 'any' stands alone (it already means every address)"))
                    ok = False
                    continue
                out.append(GROUP_ANY)
                continue
            if text in by_name:
                gid = by_name[text].gid
            elif _looks_like_cidr(text):
                net, why = _net(text)
                if net is None:
                    err((line(), f"rule {i + 1}: {side}: {why}"))
                    ok = False
                    continue
                if net in owner:
                    gname, gline = owner[net]
                    g = by_name[gname]
                    if len(g.nets) != 1:
                        err((line(), f"rule {i + 1}: {side}: {text} is a member of group {gname!r} (line "
                                   f"{gline}), which has other members too; name the group, or a "
                                   f"network no group lists"))
                        ok = False
                        continue
                    gid = g.gid
                else:
                    if net not in anon:
                        anon_index[net] = len(anon)
                        anon[net] = Group(0, f"cidr:{_net_text(net)}", [net], [text], line(), anonymous=True)
                    gid = -1 - anon_index[net]     # numbered after the named groups below
            else:
                close = difflib.get_close_matches(text, list(by_name), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else \
                    (f" (groups: {', '.join(by_name)})" if by_name else " (no groups are defined)")
                err((line(), f"rule {i + 1}: {side}: unknown group {text!r}{hint}"))
                ok = False
                continue
            if gid in out:
                err((line(), f"rule {i + 1}: {side}: {text!r} listed twice"))
                ok = False
                continue
            out.append(gid)
        return out if ok else None

    names: dict[str, int] = {}
    pending = []
    for i, r in enumerate(model.rules):
        line = model.line("rules", i)
        src, dst = resolve(i, r, "from"), resolve(i, r, "to")
        if r.ports is not None and r.proto not in PORTED:
            err((model.line("rules", i, "ports"), f"rule {i + 1}: ports: only tcp and udp rules have ports "
                                                  f"(proto is {r.proto})"))
        if r.ports is not None and not r.ports:
            err((model.line("rules", i, "ports"), f"rule {i + 1}: ports: empty list (omit `ports` for all ports)"))
        if r.inspect is not None and r.action != "inspect":
            err((model.line("rules", i, "inspect"), f"rule {i + 1}: inspect: only with action inspect "
                                                    f"(action is {r.action})"))
        if r.app is not None and r.proto not in PORTED:
            err((model.line("rules", i, "app"), f"rule {i + 1}: app: only tcp and udp rules can require an "
                                                f"application protocol (proto is {r.proto})"))
        if r.name is not None:
            if r.name in names:
                err((model.line("rules", i, "name"), f"rule {i + 1}: name {r.name!r} is already rule "
                                                     f"{names[r.name]}'s (names identify rules in `diff`)"))
            else:
                names[r.name] = i + 1
        ranges = None
        if r.ports:
            ranges = []
            for j, item in enumerate(r.ports):
                try:
                    ranges.append(_port_item(item))
                except ValueError as e:
                    err((model.line("rules", i, "ports", j), f"rule {i + 1}: ports[{j + 1}]: {e}"))
                    src = None     # not compared with other rules: its ports are not known
            ranges.sort()
            merged: list[tuple[int, int]] = []
            for x in ranges:
                if merged and x[0] <= merged[-1][1] + 1:
                    if x[0] <= merged[-1][1]:
                        warn((model.line("rules", i, "ports"), f"rule {i + 1}: ports: {_ranges_text([x])} "
                                                               f"overlaps {_ranges_text([merged[-1]])}"))
                    merged[-1] = (merged[-1][0], max(merged[-1][1], x[1]))
                else:
                    merged.append(x)
            ranges = merged
        pending.append((i, r, line, src, dst, ranges))

    # Anonymous groups get ids after the named ones, in order of appearance.
    base = len(a.groups)
    for k, (net, g) in enumerate(anon.items()):
        g.gid = base + 1 + k
        a.groups.append(g)

    def real(gid: int) -> int:
        return base + 1 + (-1 - gid) if gid < 0 else gid

    for i, r, line, src, dst, ranges in pending:
        if src is None or dst is None:
            continue
        a.rules.append(_ResolvedRule(i + 1, i, r, line, [real(g) for g in src], [real(g) for g in dst], ranges))

    # Two rules of one (from group, to group, proto) may not share a port.
    seen: dict[tuple[int, int, str], list[_ResolvedRule]] = defaultdict(list)
    gname = {g.gid: g.name for g in a.groups} | {GROUP_ANY: "any"}
    for rr in a.rules:
        ports = rr.ranges or ALL_PORTS
        reported = set()
        for s in rr.src:
            for d in rr.dst:
                key = (s, d, rr.rule.proto)
                for other in seen[key]:
                    both = _overlap(ports, other.ranges or ALL_PORTS)
                    if both and other.rule_id not in reported:
                        reported.add(other.rule_id)
                        what = (f"{rr.rule.proto} ports {_ranges_text(both)}" if rr.rule.proto in PORTED
                                and (rr.ranges or other.ranges) else f"proto {rr.rule.proto}")
                        err((rr.line, f"rule {rr.rule_id} (line {rr.line}) overlaps rule {other.rule_id} "
                                      f"(line {other.line}): both from {gname[s]} to {gname[d]}, {what}"))
                seen[key].append(rr)

    # Overrides.
    exact_seen: dict[tuple, int] = {}
    for i, o in enumerate(model.overrides):
        line = model.line("overrides", i)
        bad = False
        for fld in ("src", "dst"):
            try:
                _address(getattr(o, fld))
            except ValueError as e:
                err((model.line("overrides", i, fld), f"override {i + 1}: {fld}: {e}"))
                bad = True
        for fld, lo in (("dport", 1), ("sport", 0)):
            v = getattr(o, fld)
            if not lo <= v <= 65535:
                err((model.line("overrides", i, fld), f"override {i + 1}: {fld}: port {v} is out of range "
                                                      f"({lo}-65535{'; 0 means any' if lo == 0 else ''})"))
        if bad:
            continue
        s, d = ipaddress.ip_address(o.src), ipaddress.ip_address(o.dst)
        if s.version != d.version:
            err((line, f"override {i + 1}: src {o.src} and dst {o.dst} are of different IP versions"))
        if o.proto == "icmp":
            err((model.line("overrides", i, "proto"),
                 f"override {i + 1}: proto: icmp cannot be an override (the kernel keys ICMP flows by "
                 f"echo id, not by port); write a rule between the two addresses as /32 or /128 CIDRs"))
        if o.inspect is not None and o.action != "inspect":
            err((model.line("overrides", i, "inspect"), f"override {i + 1}: inspect: only with action inspect "
                                                        f"(action is {o.action})"))
        key = (mapped(o.src), mapped(o.dst), o.proto, o.dport, o.sport)
        if key in exact_seen:
            j = exact_seen[key]
            err((line, f"override {i + 1} repeats override {j + 1} (line {model.line('overrides', j)}): "
                       f"same addresses, protocol and ports"))
        else:
            exact_seen[key] = i
        if o.name is not None:
            if o.name in names:
                err((model.line("overrides", i, "name"), f"override {i + 1}: name {o.name!r} is already used"))
            else:
                names[o.name] = i + 1

    # Nesting, and warnings: addresses that leave a group's rules because a
    # more specific prefix belongs to a group not nested in it.
    inside = _containment(a.groups)
    a.ancestors = {g.gid: [] for g in a.groups}
    order = {g.gid: n for n, g in enumerate(a.groups)}
    found = []
    for h in a.groups:
        for gid, idx in inside.get(h.gid, {}).items():
            if len(idx) == len(h.nets):          # every prefix of h inside one of g's: nested
                a.ancestors[h.gid].append(gid)
            else:
                found.append((order[gid], order[h.gid], min(idx)))
    for gi, hi, first in sorted(found):
        g, h = a.groups[gi], a.groups[hi]
        warn((h.line, f"{_net_text(h.nets[first])} of {h.name} lies inside {g.name}, but {h.name} is not "
                      f"nested in {g.name} (not all its prefixes are inside): addresses there follow "
                      f"{h.name}'s rules, not {g.name}'s"))
    for lst in a.ancestors.values():
        lst.sort(key=order.__getitem__)
    return a


def _containment(groups: list[Group]) -> dict[int, dict[int, set[int]]]:
    """For each group h: {group g: indexes of h's prefixes inside a prefix of g}
    (g is not h; same address family). Found by looking each prefix's
    enclosing networks up, one per prefix length the groups use: linear in
    the prefixes, not quadratic in the groups."""
    owners: dict[tuple[bool, int, int], list[int]] = defaultdict(list)
    lengths: dict[bool, set[int]] = {True: set(), False: set()}
    for g in groups:
        for n, (first, _, v4) in zip(g.nets, g.spans()):
            owners[(v4, n.prefixlen, first)].append(g.gid)
            lengths[v4].add(n.prefixlen)
    lens = {v4: sorted(ls) for v4, ls in lengths.items()}
    out: dict[int, dict[int, set[int]]] = {}
    for h in groups:
        mine: dict[int, set[int]] = {}
        for i, (n, (first, _, v4)) in enumerate(zip(h.nets, h.spans())):
            for ln in lens[v4]:
                if ln > n.prefixlen:
                    break
                shift = 128 - ln
                for gid in owners.get((v4, ln, first >> shift << shift), ()):
                    if gid != h.gid:
                        mine.setdefault(gid, set()).add(i)
        if mine:
            out[h.gid] = mine
    return out


def _within(r: tuple[int, int, bool], q: tuple[int, int, bool]) -> bool:
    """Is span ``r`` inside span ``q``, both of one address family?"""
    return r[2] == q[2] and q[0] <= r[0] and r[1] <= q[1]


def _nested(b: Group, a: Group) -> bool:
    """Is every prefix of ``b`` inside a prefix of ``a`` (same address family)?"""
    if b is a or not b.nets:
        return False
    outer = a.spans()
    return all(any(_within(r, q) for q in outer) for r in b.spans())


# -- compiling ---------------------------------------------------------------------

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
    if r.action == "inspect":
        i = r.inspect or InspectSpec()
        parts.append(f"({','.join(i.what)}, {i.mode})")
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


@_without_gc
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
    pol.group_prefixes = {g.gid: [_net_text(n) for n in g.nets] for g in a.groups}

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
    return best[1], _net_text(best[0])
