"""The policy file's checks: every error and warning of a validated model,
each with its line, and the model resolved to group ids for the compiler.

``check_policy()`` runs the checks in the file's order (blocklist, repeated
keys, groups, rules, overlapping rules, overrides, nesting) and returns an
Analysis: the groups (named ones, then one anonymous group per CIDR written
in a rule), the rules with their ends as group ids and their ports as
merged ranges, which group is nested in which, and the errors and warnings.
The model is datapath/policy_model.py; datapath/policy_compile.py compiles
an Analysis into kernel tables.
"""
from __future__ import annotations

import difflib
import functools
import ipaddress
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from protocols import kafka

from .policy_model import PolicyFile, Rule, field_name
from .policy_tables import GROUP_ANY, mapped, mapped_net, no_gc

# Protocols whose rules may have ports (and require an application protocol).
PORTED = ("tcp", "udp")
# Where the kernel keeps IPv4 addresses among the IPv6 ones (mapped()).
MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")
GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def without_gc(fn):
    """``fn`` run with the garbage collector off (policy_tables.no_gc)."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        with no_gc():
            return fn(*a, **kw)
    return wrapper


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


def net_text(net: ipaddress.IPv6Network) -> str:
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


@dataclass
class _Known:
    """What a rule's ends resolve against: the named groups, the owner of
    each prefix, and the anonymous groups of CIDRs written in rules (by
    first appearance; ids -1, -2, ... until they are numbered after the
    named groups)."""
    by_name: dict[str, Group] = field(default_factory=dict)
    owner: dict[ipaddress.IPv6Network, tuple[str, int]] = field(default_factory=dict)
    anon: dict[ipaddress.IPv6Network, Group] = field(default_factory=dict)


@without_gc
def check_policy(model: PolicyFile) -> Analysis:
    """Every error (and warning) of a validated model, with its line; and
    the groups and rules resolved to group ids for the compiler."""
    a = Analysis()
    _check_blocklist(model, a)
    _check_repeated_keys(model, a)
    known = _check_groups(model, a)
    names: dict[str, int] = {}        # rule and override names -> number, for repeats
    pending = _check_rules(model, a, known, names)
    _number_anonymous(a, known, pending)
    _check_overlaps(a)
    _check_overrides(model, a, names)
    _check_nesting(a)
    return a


def _check_blocklist(model: PolicyFile, a: Analysis) -> None:
    """Each blocklist entry is a network."""
    for i, text in enumerate(model.blocklist):
        if _net(text)[0] is None:
            a.errors.append((model.line("blocklist", i), f"blocklist: {_net(text)[1]}"))


def _check_repeated_keys(model: PolicyFile, a: Analysis) -> None:
    """Keys written twice in one mapping (the YAML loader keeps the last)."""
    err = a.errors.append
    for loc, key, line, first in model._dup_keys:
        if loc == ("groups",):
            err((line, f"duplicate group name {key!r} (first defined at line {first})"))
        else:
            where = field_name(loc) + ": " if loc else ""
            err((line, f"{where}key {key!r} written twice (first at line {first})"))


def _check_groups(model: PolicyFile, a: Analysis) -> _Known:
    """Groups and their prefixes: the named groups, in file order."""
    err = a.errors.append
    known = _Known()
    owner, by_name = known.owner, known.by_name
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
    return known


def _rule_ends(model: PolicyFile, a: Analysis, known: _Known, i: int, r: Rule, side: str) -> list[int] | None:
    """Rule ends: group names, CIDRs (anonymous groups) or any, as group ids;
    None (and errors) if one is bad."""
    err = a.errors.append
    by_name, owner, anon = known.by_name, known.owner, known.anon
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
                if net not in anon:      # id -1 - its index until numbered after the named groups
                    anon[net] = Group(-1 - len(anon), f"cidr:{net_text(net)}", [net], [text], line(),
                                      anonymous=True)
                gid = anon[net].gid
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


def _check_rules(model: PolicyFile, a: Analysis, known: _Known, names: dict[str, int]) -> list[tuple]:
    """Each rule's own errors; (index, rule, line, from ids, to ids, merged
    port ranges) of each, the ids None where an end or a port is bad."""
    err, warn = a.errors.append, a.warnings.append
    pending = []
    for i, r in enumerate(model.rules):
        line = model.line("rules", i)
        src, dst = _rule_ends(model, a, known, i, r, "from"), _rule_ends(model, a, known, i, r, "to")
        if r.ports is not None and r.proto not in PORTED:
            err((model.line("rules", i, "ports"), f"rule {i + 1}: ports: only tcp and udp rules have ports "
                                                  f"(proto is {r.proto})"))
        if r.ports is not None and not r.ports:
            err((model.line("rules", i, "ports"), f"rule {i + 1}: ports: empty list (omit `ports` for all ports)"))
        if r.inspect is not None and r.action != "inspect" and not (r.l7 is not None and r.action == "allow"):
            err((model.line("rules", i, "inspect"), f"rule {i + 1}: inspect: only with action inspect, or "
                                                    f"allow with an l7 allow-list (action is {r.action})"))
        if r.l7 is not None:
            _check_l7(model, a, i, r)
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
    return pending


# -- L7 allow-lists ----------------------------------------------------------------
# The patterns and names of a rule's `l7:` list (policy_model.L7Spec). The
# regexes (method, path) are compiled by Hyperscan (slowpath/l7allow.py),
# which never backtracks: a request cannot make a match slow. Checked here
# with the same compiler, so `policy check` refuses what the slow path could
# not load.

# Characters of one method or path regex, and entries of one list: a policy
# is written by hand; past these it is generated, and its compile time (all
# a rule's regexes in one database) would grow without bound.
MAX_L7_PATTERN_CHARS = 1024
MAX_L7_ENTRIES = 1024
# Hyperscan flags of an allow-list regex: a match is yes or no (one report
# is enough); `.` matches any byte; an empty path or method never reaches
# the matcher, but a pattern that accepts it is not wrong.
L7_HS_FLAGS = ("SINGLEMATCH", "DOTALL", "ALLOWEMPTY")
# A DNS name or HTTP host pattern: labels of letters, digits, '-', '_' and
# '*' (Cilium's matchPattern characters), separated by dots.
L7_NAME = re.compile(r"^(\*|[A-Za-z0-9_*-]+(\.[A-Za-z0-9_*-]+)*)\.?$")
# What `*` stands for in a name pattern: any run of the characters of one
# label (as Cilium's matchpattern: it never crosses a dot).
L7_LABEL_CHARS = "[-a-z0-9_]*"
# An HTTP field name (RFC 9110 token).
L7_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# gRPC names: a fully qualified service ("package.Service") and a method.
L7_GRPC_SERVICE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
L7_GRPC_METHOD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def l7_expression(pattern: str) -> bytes:
    """A method or path regex as the matcher compiles it: anchored at both
    ends (the whole value must match, as Cilium's and Envoy's do)."""
    return b"^(?:" + pattern.encode("utf-8") + b")\\z"


def l7_regex_error(pattern: str) -> str | None:
    """Why a method or path regex cannot be used (None: it can)."""
    import hyperscan

    if len(pattern) > MAX_L7_PATTERN_CHARS:
        return f"{len(pattern)} characters (at most {MAX_L7_PATTERN_CHARS})"
    flags = 0
    for f in L7_HS_FLAGS:
        flags |= getattr(hyperscan, "HS_FLAG_" + f)
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    try:
        db.compile(expressions=[l7_expression(pattern)], ids=[0], flags=[flags])
    except hyperscan.error as e:
        # Hyperscan's positions count the anchoring added around the pattern.
        return f"not a regular expression the matcher takes: {re.sub(r' *(started )?at index [0-9]+', '', str(e))}"
    return None


def l7_name_regex(pattern: str) -> str:
    """A name pattern (`api.example.com`, `*.example.com`, `*`) as a
    Python regex over lower-cased names without a trailing dot. Built from
    literal labels and one-label runs only: linear to match."""
    p = pattern.lower().rstrip(".")
    if p == "*":
        return r"[-a-z0-9_]+(\.[-a-z0-9_]+)*"          # every name (Cilium: "*" alone)
    return r"\.".join(L7_LABEL_CHARS.join(re.escape(part) for part in label.split("*"))
                       for label in p.split("."))


def _name_error(text) -> str | None:
    if not isinstance(text, str) or not text:
        return "not a name"
    if not L7_NAME.match(text):
        return "a name of letters, digits, '-', '_' and '*' in dot-separated labels"
    return None


def _check_l7(model: PolicyFile, a: Analysis, i: int, r: Rule) -> None:
    """A rule's `l7:` list: on a rule that lets flows through, on a protocol
    that carries what it names, every pattern one the matcher takes."""
    err = a.errors.append
    base = ("rules", i, "l7")
    l7 = r.l7
    if r.action == "deny":
        err((model.line(*base, key=True), f"rule {i + 1}: l7: an allow-list on a rule that denies "
                                           f"(use action allow or inspect)"))
    if not l7.protocols():
        err((model.line(*base), f"rule {i + 1}: l7: empty (list http, grpc, dns, tls or kafka; omit `l7` to allow all)"))
    for proto in ("http", "grpc", "kafka"):
        if getattr(l7, proto) is not None and r.proto != "tcp":
            err((model.line(*base, proto, key=True), f"rule {i + 1}: l7.{proto}: needs proto tcp "
                                                      f"(proto is {r.proto})"))
    for proto in ("dns", "tls"):             # tls: over TCP, or QUIC over UDP
        if getattr(l7, proto) is not None and r.proto not in PORTED:
            err((model.line(*base, proto, key=True), f"rule {i + 1}: l7.{proto}: needs proto udp or tcp "
                                                      f"(proto is {r.proto})"))
    for proto in l7.protocols():
        entries = getattr(l7, proto)
        if not entries:
            err((model.line(*base, proto, key=True), f"rule {i + 1}: l7.{proto}: empty list (it would "
                                                      f"allow nothing; omit it to block {proto})"))
        elif len(entries) > MAX_L7_ENTRIES:
            err((model.line(*base, proto, key=True), f"rule {i + 1}: l7.{proto}: {len(entries)} entries "
                                                      f"(at most {MAX_L7_ENTRIES})"))
    for j, e in enumerate(l7.http or ()):
        where = f"rule {i + 1}: l7.http[{j + 1}]"
        if e.method is None and e.path is None and e.host is None and not e.headers:
            err((model.line(*base, "http", j), f"{where}: no method, path, host or headers (it would allow "
                                                f"every request)"))
        for fld in ("method", "path"):
            v = getattr(e, fld)
            if v is not None:
                why = "empty" if not v else l7_regex_error(v)
                if why:
                    err((model.line(*base, "http", j, fld), f"{where}.{fld}: {v!r}: {why}"))
        if e.host is not None:
            why = _name_error(e.host)
            if why:
                err((model.line(*base, "http", j, "host"), f"{where}.host: {e.host!r}: {why} (no port)"))
        for k, h in enumerate(e.headers or ()):
            name = h.split(":", 1)[0].strip()
            if not L7_HEADER_NAME.match(name):
                err((model.line(*base, "http", j, "headers", k),
                     f"{where}.headers[{k + 1}]: {h!r}: write \"Name\" (present) or \"Name: value\""))
    for j, g in enumerate(l7.grpc or ()):
        where = f"rule {i + 1}: l7.grpc[{j + 1}]"
        if not L7_GRPC_SERVICE.match(g.service):
            err((model.line(*base, "grpc", j, "service"), f"{where}.service: {g.service!r}: a fully "
                                                           f"qualified service name (package.Service)"))
        if g.method is not None and not L7_GRPC_METHOD.match(g.method):
            err((model.line(*base, "grpc", j, "method"), f"{where}.method: {g.method!r}: a method name "
                                                          f"(omit it for every method of the service)"))
    for proto in ("dns", "tls"):
        for j, n in enumerate(getattr(l7, proto) or ()):
            why = _name_error(n)
            if why:
                err((model.line(*base, proto, j), f"rule {i + 1}: l7.{proto}[{j + 1}]: {n!r}: {why}"))
    for j, k in enumerate(l7.kafka or ()):
        _check_kafka_entry(model, err, (*base, "kafka", j), f"rule {i + 1}: l7.kafka[{j + 1}]", k)


def _check_kafka_entry(model: PolicyFile, err, at: tuple, where: str, k) -> None:
    """One `l7.kafka` entry: Cilium's fields, each a value Kafka can carry."""
    if k.role is None and k.api_key is None and k.api_version is None and k.client_id is None \
            and k.topic is None:
        err((model.line(*at), f"{where}: no role, api_key, api_version, client_id or topic (it would "
                              f"allow every request)"))
    if k.role is not None and k.api_key is not None:
        err((model.line(*at, "api_key"), f"{where}: role and api_key together (role stands for a set "
                                         f"of api keys: give one of them)"))
    if k.api_key is not None and kafka.api_key_of(k.api_key) is None:
        err((model.line(*at, "api_key"), f"{where}.api_key: {k.api_key!r}: not a Kafka API name or "
                                         f"number (e.g. Produce, Fetch, Metadata, 0)"))
    if k.api_version is not None and not 0 <= k.api_version <= kafka.PROBE_MAX_API_VERSION:
        err((model.line(*at, "api_version"), f"{where}.api_version: {k.api_version}: out of range "
                                             f"0..{kafka.PROBE_MAX_API_VERSION}"))
    if k.client_id is not None and not k.client_id:
        err((model.line(*at, "client_id"), f"{where}.client_id: empty (omit it for any client)"))
    if k.topic is not None and not kafka.TOPIC_NAME.fullmatch(k.topic):
        err((model.line(*at, "topic"), f"{where}.topic: {k.topic!r}: a Kafka topic name (1 to 249 "
                                       f"letters, digits, '.', '_', '-')"))


def _number_anonymous(a: Analysis, known: _Known, pending: list[tuple]) -> None:
    """Anonymous groups get ids after the named ones, in order of appearance;
    the rules whose ends resolved, with those ids, are the Analysis's rules."""
    base = len(a.groups)
    for k, (net, g) in enumerate(known.anon.items()):
        g.gid = base + 1 + k
        a.groups.append(g)

    def real(gid: int) -> int:
        return base + 1 + (-1 - gid) if gid < 0 else gid

    for i, r, line, src, dst, ranges in pending:
        if src is None or dst is None:
            continue
        a.rules.append(_ResolvedRule(i + 1, i, r, line, [real(g) for g in src], [real(g) for g in dst], ranges))


def _check_overlaps(a: Analysis) -> None:
    """Two rules of one (from group, to group, proto) may not share a port."""
    err = a.errors.append
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


def _check_overrides(model: PolicyFile, a: Analysis, names: dict[str, int]) -> None:
    """Overrides: addresses, ports, one of each (addresses, protocol, ports), names not used twice."""
    err = a.errors.append
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


def _check_nesting(a: Analysis) -> None:
    """Nesting, and warnings: addresses that leave a group's rules because a
    more specific prefix belongs to a group not nested in it."""
    warn = a.warnings.append
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
        warn((h.line, f"{net_text(h.nets[first])} of {h.name} lies inside {g.name}, but {h.name} is not "
                      f"nested in {g.name} (not all its prefixes are inside): addresses there follow "
                      f"{h.name}'s rules, not {g.name}'s"))
    for lst in a.ancestors.values():
        lst.sort(key=order.__getitem__)


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
