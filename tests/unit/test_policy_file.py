"""Policy files: every check names its line; the compiler's tables mean what
the precedence paragraph (datapath/policy_compile.py) says.

The compile tests check the tables entry by entry for the cases that are
easy to get wrong (port ranges, nesting, CIDRs in rules), and then, on
random policies with deep nesting, compare decide() over the compiled
tables with a reference written straight from the precedence paragraph
(no LPM, no merging: a walk over the rules as written).
"""
from __future__ import annotations

import ipaddress
import random
import socket

import pytest

from datapath.configfile import FileErrors
from appliance.policyfile import compile_text, diff, load_text
from datapath.policy_check import check_policy
from datapath.policy_compile import PRECEDENCE, PROTOS, compile_policy, rule_keys
from datapath.enums import INSPECT, INSPECT_BITS
from datapath.policy_tables import GROUP_ANY, GROUP_WORLD, POL, decide, ipv4_dir, mapped, port_blocks


def errors_of(text: str) -> list[str]:
    with pytest.raises(FileErrors) as ei:
        compile_text(text, "p.yaml")
    return ei.value.lines()


def one_error(text: str, line: int, *needles: str) -> str:
    errs = errors_of(text)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"p.yaml:{line}: "), errs
    for n in needles:
        assert n in errs[0], errs
    return errs[0]


G = "groups:\n  web: [10.0.1.0/24, \"2001:db8:1::/64\"]\n  db: [10.0.2.0/24]\n"


# -- every check, with its line -------------------------------------------------

@pytest.mark.parametrize("text, line, needles", [
    # unknown group (the line of the rule's `to`)
    (G + "rules:\n  - from: web\n    to: dbb\n    action: allow\n", 6, ["unknown group 'dbb'", "did you mean 'db'"]),
    (G + "rules:\n  - {from: [web, nosuch], to: db, action: allow}\n", 5, ["unknown group 'nosuch'"]),
    # bad CIDRs, in a group and in a rule
    (G + "  x: [10.0.3.0/33]\n", 4, ["bad CIDR '10.0.3.0/33'"]),
    (G + "  x:\n    - 10.0.3.0/24\n    - 10.0.4.1/24\n", 6, ["bad CIDR '10.0.4.1/24'", "host bits", "10.0.4.0/24"]),
    (G + "rules:\n  - {from: 10.300.0.0/16, to: db, action: allow}\n", 5, ["bad CIDR '10.300.0.0/16'"]),
    # ports: 0, above 65535, a range the wrong way round, not a port
    (G + "rules:\n  - from: web\n    to: db\n    proto: tcp\n    ports:\n      - 80\n      - 0\n    action: allow\n",
     10, ["ports[2]", "port 0"]),
    (G + "rules:\n  - {from: web, to: db, proto: udp, ports: [65536], action: allow}\n", 5, ["port 65536", "1-65535"]),
    (G + "rules:\n  - {from: web, to: db, proto: tcp, ports: [\"9000-8000\"], action: allow}\n", 5,
     ["bad range 9000-8000"]),
    (G + "rules:\n  - {from: web, to: db, proto: tcp, ports: [http], action: allow}\n", 5, ["not a port or a range"]),
    # ports where the protocol has none
    (G + "rules:\n  - {from: web, to: db, proto: icmp, ports: [1], action: allow}\n", 5, ["only tcp and udp", "icmp"]),
    (G + "rules:\n  - {from: web, to: db, ports: [1], action: allow}\n", 5, ["only tcp and udp", "proto is any"]),
    # inspect settings on a rule that does not inspect
    (G + "rules:\n  - from: web\n    to: db\n    action: allow\n    inspect: {what: [waf]}\n", 8,
     ["inspect: only with action inspect"]),
    # groups: empty, a network in two groups, a network twice in one group
    (G + "  empty: []\n", 4, ["group 'empty' is empty"]),
    (G + "  nothing:\n", 4, ["group 'nothing' is empty"]),
    (G + "  app: [10.0.9.0/24, 10.0.1.0/24]\n", 4, ["group 'web' (line 2)", "group 'app' (line 4)"]),
    (G + "  app: [10.0.9.0/24, 10.0.9.0/24]\n", 4, ["listed twice in group 'app'"]),
    # a rule's CIDR that is a member of a group with other members
    (G + "rules:\n  - {from: 10.0.1.0/24, to: db, action: allow}\n", 5, ["member of group 'web' (line 2)"]),
    # 'any' with others
    (G + "rules:\n  - {from: [web, any], to: db, action: allow}\n", 5, ["'any' stands alone"]),
    # names identify rules
    (G + "rules:\n  - {name: a, from: web, to: db, proto: tcp, action: allow}\n"
         "  - {name: a, from: web, to: db, proto: udp, action: allow}\n", 6, ["name 'a'"]),
    # overrides
    (G + "overrides:\n  - {src: 10.0.1.5, dst: 10.0.2.0/24, proto: tcp, dport: 22, action: deny}\n", 5,
     ["not a network"]),
    (G + "overrides:\n  - {src: 10.0.1.5, dst: 10.0.2.9, proto: tcp, dport: 0, action: deny}\n", 5, ["dport", "port 0"]),
    (G + "overrides:\n  - {src: 10.0.1.5, dst: 10.0.2.9, proto: icmp, dport: 1, action: deny}\n", 5,
     ["icmp cannot be an override"]),
    (G + "overrides:\n  - {src: 10.0.1.5, dst: \"2001:db8::1\", proto: tcp, dport: 1, action: deny}\n", 5,
     ["different IP versions"]),
    # schema errors: a wrong value, an unknown key, a missing field
    (G + "rules:\n  - {from: web, to: db, proto: sctp, action: allow}\n", 5, ["proto", "'sctp'"]),
    (G + "rules:\n  - from: web\n    to: db\n    action: allow\n    colour: red\n", 8, ["colour", "unknown key"]),
    (G + "rules:\n  - {from: web, action: allow}\n", 5, ["to", "required"]),
    (G + "defaults: {ingress: drop}\n", 4, ["defaults.ingress", "'drop'"]),
    ("groups: [1, 2\n", 2, ["not valid YAML"]),
])
def test_check_errors_name_their_line(text, line, needles):
    one_error(text, line, *needles)


def test_overlapping_rules_name_both_lines():
    text = (G + "rules:\n"
            "  - {from: web, to: db, proto: tcp, ports: [5432, \"8000-8100\"], action: allow}\n"   # line 5
            "  - {from: web, to: db, proto: udp, ports: [8050], action: allow}\n"                  # other proto
            "  - {from: web, to: any, proto: tcp, ports: [8050], action: allow}\n"                 # other pair
            "  - {from: web, to: db, proto: any, action: deny}\n"                                  # any: its own key
            "  - {from: [db, web], to: db, proto: tcp, ports: [\"8090-8200\"], action: deny}\n")   # line 9
    err = one_error(text, 9, "rule 5 (line 9)", "rule 1 (line 5)", "from web to db", "tcp ports 8090-8100")
    assert "line 5" in err and "line 9" in err
    # all ports (ports omitted) overlaps any port
    one_error(G + "rules:\n  - {from: web, to: db, proto: tcp, action: allow}\n"
                  "  - {from: web, to: db, proto: tcp, ports: [22], action: deny}\n", 6, "(line 5)", "ports 22")
    # two icmp (or two any-protocol) rules of one pair
    one_error(G + "rules:\n  - {from: web, to: db, proto: icmp, action: allow}\n"
                  "  - {from: web, to: db, proto: icmp, action: deny}\n", 6, "(line 5)", "proto icmp")


def test_duplicate_group_names_both_lines():
    err = one_error("groups:\n  web: [10.0.1.0/24]\n  db: [10.0.2.0/24]\n  web: [10.0.3.0/24]\n", 4,
                    "duplicate group name 'web'", "line 2")
    assert err.startswith("p.yaml:4:")


def test_every_error_is_reported_at_once():
    text = ("groups:\n  web: [10.0.1.0/24]\n  e: []\n"
            "rules:\n"
            "  - {from: web, to: nope, action: allow}\n"
            "  - {from: web, to: any, proto: tcp, ports: [0], action: allow}\n"
            "  - {from: web, to: any, proto: icmp, ports: [1], action: allow, inspect: {}}\n")
    errs = errors_of(text)
    assert [e.split(":")[1] for e in errs] == ["3", "5", "6", "7", "7"], errs


def test_block_style_lines():
    text = ("# a comment\n"
            "groups:\n"
            "  web:\n"
            "    - 10.0.1.0/24\n"
            "  db:\n"
            "    - 10.0.2.0/24\n"
            "\n"
            "rules:\n"
            "  - name: first\n"           # line 9
            "    from: web\n"
            "    to: db\n"
            "    action: allow\n"
            "  - name: second\n"          # line 13
            "    from: web\n"
            "    proto: tcp\n"
            "    to:\n"
            "      - db\n"
            "      - dbb\n"               # line 18
            "    action: allow\n")
    one_error(text, 18, "unknown group 'dbb'")
    _, pol = compile_text(text.replace("      - dbb\n", ""), "p.yaml")
    assert pol.rule_info[1].line == 9 and pol.rule_info[2].line == 13
    assert pol.rule_info[1].name == "first"


def test_precedence_is_in_the_docstring():
    assert "(source group, destination group), (source group, any)" in PRECEDENCE
    assert "nested" in PRECEDENCE and "override" in PRECEDENCE


# -- compiled tables ---------------------------------------------------------------

def entries(pol, sg=None, dg=None):
    return sorted((e.sgroup, e.dgroup, e.proto, e.port, e.prefixlen, e.verdict.rule_id) for e in pol.rules
                  if (sg is None or e.sgroup == sg) and (dg is None or e.dgroup == dg))


def test_port_ranges_become_aligned_blocks():
    assert port_blocks(8000, 8100) == [(8000, 10), (8064, 11), (8096, 14), (8100, 16)]
    assert port_blocks(1, 65535)[0] == (1, 16) and len(port_blocks(1, 65535)) == 16
    assert rule_keys("tcp", [(5432, 5432), (8000, 8100)]) == [
        (88, 6, 5432), (82, 6, 8000), (83, 6, 8064), (86, 6, 8096), (88, 6, 8100)]
    assert rule_keys("any", None) == [(64, 0, 0)]
    assert rule_keys("udp", None) == [(72, 17, 0)]
    assert rule_keys("icmp", None) == [(72, 1, 0), (72, 58, 0)]
    _, pol = compile_text(G + "rules:\n  - {from: web, to: db, proto: tcp, ports: [5432, \"8000-8100\"], "
                          "action: allow}\n", "p.yaml")
    assert entries(pol) == sorted([(1, 2, 6, 5432, 88, 1), (1, 2, 6, 8000, 82, 1), (1, 2, 6, 8064, 83, 1),
                                   (1, 2, 6, 8096, 86, 1), (1, 2, 6, 8100, 88, 1)])
    for port, hit in ((7999, False), (8000, True), (8063, True), (8064, True), (8099, True), (8100, True),
                      (8101, False), (5432, True), (5433, False)):
        d = decide(pol, "10.0.1.1", "10.0.2.1", 6, port)
        assert (d.verdict.rule_id == 1) == hit, port


def test_groups_ids_cidrs_and_world():
    text = (G + "defaults: {egress: allow}\n"
            "rules:\n"
            "  - {from: 10.9.0.0/16, to: [db, \"2001:db8:9::/48\"], proto: udp, action: allow}\n"
            "  - {from: any, to: 10.9.0.0/16, proto: any, action: deny}\n"
            "  - {from: 10.0.2.0/24, to: any, proto: tcp, action: inspect, inspect: {what: [waf, dlp], mode: hold},"
            " app: tls, log: true}\n")
    _, pol = compile_text(text, "p.yaml")
    assert pol.group_names == {0: "world", GROUP_ANY: "any", 1: "web", 2: "db", 3: "cidr:10.9.0.0/16",
                               4: "cidr:2001:db8:9::/48"}
    assert sorted((str(n), g) for n, g in pol.groups) == sorted([
        ("::ffff:a00:100/120", 1), ("2001:db8:1::/64", 1), ("::ffff:a00:200/120", 2),
        ("::ffff:a09:0/112", 3), ("2001:db8:9::/48", 4)])
    # the CIDR of db's only member is db itself (id 2), not a group of its own
    assert entries(pol, sg=2) == [(2, GROUP_ANY, 6, 0, 72, 3)]
    assert entries(pol, dg=3) == [(GROUP_ANY, 3, 0, 0, 64, 2)]
    v = next(e.verdict for e in pol.rules if e.verdict.rule_id == 3)
    assert v.action == POL["POL_INSPECT"] and v.inspect == INSPECT_BITS["waf"] | INSPECT_BITS["dlp"] | INSPECT["HOLD"]
    assert (v.app, v.log) == (2, 1)
    assert pol.defaults["ingress"].action == POL["POL_DENY"] and pol.defaults["egress"].action == POL["POL_ALLOW"]
    assert pol.defaults["ingress"].rule_id == pol.defaults["egress"].rule_id == 0
    assert pol.default_lines == {"ingress": 0, "egress": 4}
    d = decide(pol, "8.8.8.8", "1.1.1.1", 6, 80, hook="egress")
    assert (d.sgroup, d.dgroup, d.how, d.verdict.action) == (GROUP_WORLD, GROUP_WORLD, "default egress", POL["POL_ALLOW"])


def test_wide_ipv6_prefix_does_not_catch_ipv4():
    _, pol = compile_text("rules:\n  - {from: \"::/0\", to: any, action: allow}\n", "p.yaml")
    assert (ipaddress.IPv6Network("::ffff:0:0/96"), GROUP_WORLD) in pol.groups
    assert decide(pol, "10.1.1.1", "10.2.2.2", 6, 80).verdict.rule_id == 0
    assert decide(pol, "2001:db8::1", "2001:db8::2", 6, 80).verdict.rule_id == 1


def _random_v4_groups(rng: random.Random, n: int) -> str:
    """A policy of ``n`` groups of random IPv4 prefixes of every length
    (in a few /8s, so they nest and overlap) and one IPv6 prefix each."""
    lines, used = ["groups:"], set()
    for i in range(n):
        nets = set()
        for _ in range(3):
            plen = rng.randrange(0, 33)
            a = rng.choice([10, 11, 192]) << 24 | rng.getrandbits(24)
            net = str(ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{plen}", strict=False))
            if net not in used:         # a prefix is in one group only
                used.add(net)
                nets.add(net)
        v6 = f'"fd00:{i:x}::/48"'
        lines.append(f"  g{i}: [{', '.join([*sorted(nets), v6])}]")
    return "\n".join(lines) + "\nrules:\n  - {from: g0, to: any, action: allow}\n"


def test_ipv4_direct_table_holds_each_address_longest_prefix():
    """policy_tables.ipv4_dir (bpf/lib/maps.h, read as policy.h reads it):
    for addresses at, inside and just outside every prefix, the group is
    decide()'s (the longest prefix holding the address)."""
    rng = random.Random(3)
    for _ in range(5):
        _, pol = compile_text(_random_v4_groups(rng, 40), "p.yaml")
        d = ipv4_dir(pol)
        assert d is not None and d.blocks > 0
        for net, _g in pol.groups:
            if not net.subnet_of(ipaddress.IPv6Network("::ffff:0:0/96")):
                continue
            first, last = int(net.network_address), int(net.broadcast_address)
            for a in {first, last, rng.randint(first, last), first - 1, last + 1}:
                ip = ipaddress.IPv6Address(a)
                if ip.ipv4_mapped is None:
                    continue
                assert d.group_of(ip) == decide(pol, str(ip.ipv4_mapped), "2.2.2.2", 6, 80).sgroup, ip


def test_ipv4_direct_table_only_when_it_fits():
    """No IPv4 prefix: no table; more blocks than allowed: none either (the
    kernel probes the hash instead)."""
    _, pol = compile_text('groups: {a: ["fd00::/16"]}\nrules:\n  - {from: a, to: any, action: allow}\n', "p.yaml")
    assert ipv4_dir(pol) is None
    # /32s in three distinct /24s of distinct /16s: two blocks each
    text = "groups:\n  a: [10.1.1.1/32, 10.2.1.1/32, 10.3.1.1/32]\nrules:\n  - {from: a, to: any, action: allow}\n"
    _, pol = compile_text(text, "p.yaml")
    assert ipv4_dir(pol).blocks == 6
    assert ipv4_dir(pol, most_blocks=6) is not None and ipv4_dir(pol, most_blocks=5) is None


def test_overrides_exact_after_rules():
    text = (G + "rules:\n  - {from: web, to: db, proto: tcp, ports: [22], action: allow}\n"
            "overrides:\n"
            "  - {src: 10.0.1.5, dst: 10.0.2.9, proto: tcp, dport: 22, sport: 0, action: deny}\n"
            "  - {name: one, src: \"2001:db8:1::5\", dst: \"2001:db8:1::9\", proto: udp, dport: 53, sport: 5353,"
            " action: inspect}\n")
    _, pol = compile_text(text, "p.yaml")
    e1, e2 = pol.exact
    assert (e1.saddr, e1.daddr, e1.sport, e1.dport, e1.proto) == (
        mapped("10.0.1.5").packed, mapped("10.0.2.9").packed, 0, 22, 6)
    assert (e1.verdict.rule_id, e1.verdict.action) == (2, POL["POL_DENY"])
    assert (e2.verdict.rule_id, e2.verdict.inspect, e2.sport) == (3, INSPECT_BITS["dpi"], 5353)
    assert pol.rule_info[2].kind == "override" and pol.rule_info[2].line == 7
    assert pol.rule_info[3].name == "one"
    assert decide(pol, "10.0.1.5", "10.0.2.9", 6, 22, sport=1234).how == "override"
    assert decide(pol, "10.0.1.6", "10.0.2.9", 6, 22).verdict.rule_id == 1
    assert decide(pol, "2001:db8:1::5", "2001:db8:1::9", 17, 53, sport=5353).verdict.rule_id == 3
    assert decide(pol, "2001:db8:1::5", "2001:db8:1::9", 17, 53, sport=5354).verdict.rule_id == 0


NEST = """
groups:
  corp: [10.0.0.0/8]
  web: [10.1.0.0/16]
  canary: [10.1.1.0/24]
  db: [10.2.0.0/16]
  db_primary: [10.2.0.0/24]
rules:
  - {from: corp, to: db, proto: tcp, ports: ["5000-5999"], action: allow}       # 1
  - {from: web, to: db, proto: tcp, ports: ["5400-5499"], action: deny}         # 2
  - {from: canary, to: db, proto: tcp, ports: [5432], action: inspect}          # 3
  - {from: web, to: db_primary, proto: udp, action: allow}                      # 4
  - {from: corp, to: any, proto: any, action: deny}                             # 5
  - {from: canary, to: any, proto: icmp, action: allow}                         # 6
"""


def test_nested_groups_inherit_with_their_own_rules_first():
    _, pol = compile_text(NEST, "p.yaml")
    ids = {v: k for k, v in pol.group_names.items()}
    corp, web, canary, db, dbp = (ids[n] for n in ("corp", "web", "canary", "db", "db_primary"))

    def rid(src, dst, proto, port):
        return decide(pol, src, dst, proto, port).verdict.rule_id

    # canary -> db: its own 5432, web's 5400-5499 around it, corp's 5000-5999 around that
    assert [rid("10.1.1.1", "10.2.9.9", 6, p) for p in (4999, 5000, 5399, 5400, 5431, 5432, 5433, 5499, 5500, 5999)] \
        == [5, 1, 1, 2, 2, 3, 2, 2, 1, 1]
    # web -> db: no canary rule
    assert rid("10.1.2.1", "10.2.9.9", 6, 5432) == 2
    # corp -> db
    assert rid("10.3.0.1", "10.2.9.9", 6, 5432) == 1
    # destination nesting: db_primary inherits db's rules for web and canary and corp
    assert rid("10.1.2.1", "10.2.0.9", 6, 5432) == 2
    assert rid("10.1.1.1", "10.2.0.9", 6, 5432) == 3
    assert rid("10.3.0.1", "10.2.0.9", 6, 5001) == 1
    assert rid("10.1.1.1", "10.2.0.9", 17, 53) == 4        # web's rule to db_primary, for canary too
    assert rid("10.1.2.1", "10.2.9.9", 17, 53) == 5        # db is not nested in db_primary
    # (source group, any): canary's own icmp, then corp's any
    assert rid("10.1.1.1", "8.8.8.8", 1, 0) == 6
    assert rid("10.1.1.1", "8.8.8.8", 6, 80) == 5
    assert rid("10.1.2.1", "8.8.8.8", 1, 0) == 5
    # canary -> db icmp: the (group, group) level has rules for canary/db (tcp only), no match there;
    # then canary's own (canary, any) icmp rule
    assert rid("10.1.1.1", "10.2.9.9", 1, 0) == 6
    # the tables: canary's entries towards db are its own plus what web and corp add around them
    own = [e for e in pol.rules if (e.sgroup, e.dgroup) == (canary, db)]
    assert {e.verdict.rule_id for e in own} == {1, 2, 3}
    assert not [e for e in own if e.verdict.rule_id == 2 and e.port == 5432 and e.prefixlen == 88]
    assert entries(pol, sg=web, dg=dbp) and entries(pol, sg=canary, dg=dbp)
    info = pol.rule_info[2]
    assert (info.src_groups, info.dst_groups, info.line) == ((web,), (db,), 10)


def test_a_group_partly_inside_another_is_not_nested_and_warned():
    text = ("groups:\n  corp: [10.0.0.0/8]\n  mixed: [10.5.0.0/16, 192.168.0.0/16]\n"
            "rules:\n  - {from: corp, to: any, proto: tcp, action: allow}\n")
    _, pol = compile_text(text, "p.yaml")
    assert decide(pol, "10.5.0.1", "1.1.1.1", 6, 80).verdict.rule_id == 0
    assert decide(pol, "10.6.0.1", "1.1.1.1", 6, 80).verdict.rule_id == 1
    (w,) = pol.warnings
    assert w[0] == 3 and "mixed" in w[1] and "corp" in w[1]


# -- compiled tables vs the precedence paragraph, on random policies ------------

def reference(a, model, src: str, dst: str, proto: int, port: int, sport: int, hook: str):
    """(rule id, action name) by the precedence paragraph, from the rules as written."""
    for want_sport in (sport, 0):
        for i, o in enumerate(model.overrides):
            if (ipaddress.ip_address(o.src), ipaddress.ip_address(o.dst), PROTO_NUM[o.proto], o.dport, o.sport) == \
                    (ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, port, want_sport):
                return len(model.rules) + i + 1, o.action
    nets = {g.gid: [ipaddress.ip_network(t) for t in g.texts] for g in a.groups}

    def group(addr):
        ip = ipaddress.ip_address(addr)
        best = (-1, GROUP_WORLD)
        for gid, ns in nets.items():
            for n in ns:
                if n.version == ip.version and ip in n and n.prefixlen > best[0]:
                    best = (n.prefixlen, gid)
        return best[1]

    def inside(b, c):       # every prefix of b inside one of c's (same version)
        return b != c and all(any(n.version == m.version and n.subnet_of(m) for m in nets[c]) for n in nets[b])

    def chain(g):
        if g == GROUP_WORLD:
            return []
        anc = [c for c in nets if inside(g, c)]
        depth = {c: sum(inside(c, x) for x in nets) for c in anc}
        return [g] + sorted(anc, key=lambda c: (-depth[c], c))

    port_l4 = port if proto in (6, 17) else 0

    def match(si, dj):
        best = None
        for rr in a.rules:
            if si not in rr.src or dj not in rr.dst:
                continue
            protos = PROTOS[rr.rule.proto]
            if protos is None:
                spec = 0
            elif proto in protos and (rr.ranges is None or any(lo <= port_l4 <= hi for lo, hi in rr.ranges)):
                spec = 1
            else:
                continue
            if best is None or spec > best[0]:
                best = (spec, rr)
        return best[1] if best else None

    sg, dg = group(src), group(dst)
    levels = ([(s, d) for s in chain(sg) for d in chain(dg)], [(s, GROUP_ANY) for s in chain(sg)],
              [(GROUP_ANY, d) for d in chain(dg)], [(GROUP_ANY, GROUP_ANY)])
    for level in levels:
        for si, dj in level:
            rr = match(si, dj)
            if rr:
                return rr.rule_id, rr.rule.action
    return 0, getattr(model.defaults, hook)


PROTO_NUM = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "icmp": socket.IPPROTO_ICMP}


def random_policy(rng: random.Random) -> str:
    """Groups over a small address space (so they nest), rules between them,
    CIDRs and lists in rules; rules whose ports would overlap are dropped."""
    v4 = set()
    while len(v4) < 14:
        plen = rng.choice([8, 12, 16, 18, 20, 24, 26, 28])
        base = int(ipaddress.IPv4Address("10.0.0.0")) + (rng.randrange(1 << 12) << 12)
        v4.add(str(ipaddress.IPv4Network((base, plen), strict=False)))
    v6 = set()
    while len(v6) < 6:
        plen = rng.choice([32, 40, 48, 56, 64])
        v6.add(str(ipaddress.IPv6Network((int(ipaddress.IPv6Address("fd00::")) + (rng.randrange(1 << 8) << 88),
                                          plen), strict=False)))
    pool = sorted(v4) + sorted(v6)
    rng.shuffle(pool)
    groups, i = {}, 0
    while pool and len(groups) < 7:
        k = rng.choice([1, 1, 2, 3])
        groups[f"g{i}"], pool = pool[:k], pool[k:]
        i += 1
    free = pool                                   # CIDRs no group lists: for rules
    ends = list(groups) + free + ["any"]
    lines = ["groups:"] + [f"  {n}: [{', '.join(repr(m) for m in ms)}]" for n, ms in groups.items()]
    lines.append(f"defaults: {{ingress: {rng.choice(['allow', 'deny'])}, egress: {rng.choice(['allow', 'deny'])}}}")
    lines.append("rules:")
    used = {}
    for _ in range(rng.randrange(8, 30)):
        src = rng.choice(ends) if rng.random() < 0.85 else rng.sample(list(groups), 2)
        dst = rng.choice(ends) if rng.random() < 0.85 else rng.sample(list(groups), 2)
        proto = rng.choice(["tcp", "tcp", "udp", "icmp", "any"])
        ports = None
        if proto in ("tcp", "udp") and rng.random() < 0.8:
            ports = []
            for _ in range(rng.randrange(1, 3)):
                lo = rng.choice([22, 80, 443, 1000, 5000, 5432, 8000, 8080]) + rng.randrange(0, 40)
                ports.append(lo if rng.random() < 0.5 else f"{lo}-{lo + rng.randrange(1, 300)}")
        # skip a rule that would overlap one already written (same ends, same proto)
        keys = [(s, d, proto) for s in ([src] if isinstance(src, str) else src)
                for d in ([dst] if isinstance(dst, str) else dst)]
        if any(k in used for k in keys):
            continue
        for k in keys:
            used[k] = True
        action = rng.choice(["allow", "deny", "inspect"])
        f = lambda e: repr(e) if isinstance(e, str) else "[" + ", ".join(repr(x) for x in e) + "]"  # noqa: E731
        p = f", ports: [{', '.join(repr(x) for x in ports)}]" if ports else ""
        lines.append(f"  - {{from: {f(src)}, to: {f(dst)}, proto: {proto}{p}, action: {action}}}")
    lines.append("overrides: []")
    return "\n".join(lines) + "\n"


def random_addr(rng, text):
    n = ipaddress.ip_network(text)
    return str(n.network_address + rng.randrange(n.num_addresses))


# A generated policy can fail its own check (a ports list overlapping itself,
# ...): the seed's generator then draws another, at most this many times.
MAX_DRAWS = 10
SEEDS = range(12)


def decide_randomly(seed: int) -> tuple[int, int, int]:
    """Seed ``seed``'s random policy, 2000 decisions of the compiled tables
    each asserted against the reference; returns (rules hit, rules,
    decisions that came from a rule of an enclosing group)."""
    rng = random.Random(seed)
    for _ in range(MAX_DRAWS):
        text = random_policy(rng)
        try:
            model, pol = compile_text(text, f"random{seed}.yaml")
            break
        except FileErrors:
            continue
    else:
        raise AssertionError(f"seed {seed}: no generated policy checked in {MAX_DRAWS} draws")
    a = check_policy(model)
    prefixes = [t for g in a.groups for t in g.texts]
    texts = {g.gid: g.texts for g in a.groups}
    hits, inherited = set(), 0
    for _ in range(2000):
        if rng.random() < 0.7:
            # aimed at a rule: addresses in (or under) its groups, ports at its edges
            rr = rng.choice(a.rules)
            s_g, d_g = rng.choice(rr.src), rng.choice(rr.dst)
            v6 = rng.random() < 0.3
            sc = [t for t in texts.get(s_g, prefixes) if (":" in t) == v6] or [t for t in prefixes if (":" in t) == v6]
            dc = [t for t in texts.get(d_g, prefixes) if (":" in t) == v6] or [t for t in prefixes if (":" in t) == v6]
            src, dst = random_addr(rng, rng.choice(sc)), random_addr(rng, rng.choice(dc))
            protos = PROTOS[rr.rule.proto] or (6, 17, 1)
            proto = rng.choice(protos)
            proto = {1: 58}.get(proto, proto) if v6 else {58: 1}.get(proto, proto)
            lo, hi = rng.choice(rr.ranges or [(1, 65535)])
            port = rng.choice([lo - 1, lo, hi, hi + 1, rng.randrange(lo, hi + 1)]) % 65536
        else:
            v6 = rng.random() < 0.3
            cands = [p for p in prefixes if (":" in p) == v6] + (["fd00::/16", "::/0"] if v6 else ["10.0.0.0/8", "0.0.0.0/0"])
            src, dst = random_addr(rng, rng.choice(cands)), random_addr(rng, rng.choice(cands))
            proto = rng.choice([6, 6, 17, 58 if v6 else 1])
            port = rng.choice([22, 80, 443, 1000, 5000, 5432, 8000, 8080]) + rng.randrange(-2, 320)
        hook = rng.choice(["ingress", "egress"])
        d = decide(pol, src, dst, proto, port, 1234, hook)
        rid, action = reference(a, model, src, dst, proto, port, 1234, hook)
        assert (d.verdict.rule_id, d.verdict.action) == (rid, POL["POL_" + action.upper()]), \
            (text, src, dst, proto, port, hook, d)
        hits.add(rid)
        info = pol.rule_info.get(rid)
        if info and not ({d.sgroup, GROUP_ANY} & set(info.src_groups) and {d.dgroup, GROUP_ANY} & set(info.dst_groups)):
            inherited += 1
    return len(hits), len(a.rules), inherited


@pytest.mark.parametrize("seed", SEEDS)
def test_compiled_tables_follow_the_precedence(seed):
    hits, rules, _ = decide_randomly(seed)
    assert hits > rules // 3, (hits, rules)


def test_random_policies_exercise_nesting():
    """Across the seeds, many decisions came from a rule of an enclosing
    group (its own policies and decisions: it depends on no other test)."""
    inherited = [decide_randomly(seed)[2] for seed in SEEDS]
    assert sum(inherited) > 200 and sum(1 for n in inherited if n) >= 8, inherited


def test_random_policies_mostly_check():
    ok = 0
    for seed in SEEDS:
        try:
            compile_text(random_policy(random.Random(seed)), "r.yaml")
            ok += 1
        except FileErrors:
            pass
    assert ok >= 9


# -- diff ---------------------------------------------------------------------------

def test_diff_names_added_removed_changed():
    old = load_text(NEST, "old.yaml")
    new_text = (NEST.replace("  db_primary: [10.2.0.0/24]\n", "  db_primary: [10.2.0.0/24, 10.2.1.0/24]\n")
                .replace("  canary: [10.1.1.0/24]\n", "  ops: [10.9.0.0/16]\n")
                .replace("ports: [\"5400-5499\"], action: deny", "ports: [\"5400-5499\"], action: allow")
                .replace("  - {from: canary, to: db, proto: tcp, ports: [5432], action: inspect}          # 3\n", "")
                .replace("  - {from: canary, to: any, proto: icmp, action: allow}                         # 6\n",
                         "  - {name: ops-all, from: ops, to: any, action: allow}\n"))
    new_text += "defaults: {ingress: allow}\n"
    new = load_text(new_text, "new.yaml")
    lines = diff(old, new)
    assert "+ group ops: 10.9.0.0/16 (line 5)" in lines
    assert "- group canary: 10.1.1.0/24" in lines
    assert any(ln.startswith("~ group db_primary: +10.2.1.0/24") for ln in lines)
    assert "~ default ingress: deny -> allow" in lines
    assert any(ln.startswith("~ rule (line 10): web -> db tcp 5400-5499 deny  ->  web -> db tcp 5400-5499 allow")
               for ln in lines), lines
    assert any(ln.startswith("- rule (was line 11): canary -> db tcp 5432 inspect") for ln in lines), lines
    assert any(ln.startswith("+ rule ops-all (line 13): ops -> any any allow") for ln in lines), lines
    assert diff(old, old) == []
    assert all(ln.startswith("+") for ln in diff(None, old))


@pytest.mark.parametrize("seed", range(40))
def test_nesting_index_equals_the_pairwise_definition(seed):
    """check_policy finds nesting and partly-inside warnings through a prefix
    index (linear in the prefixes); the definition is pairwise: every
    prefix of b inside a prefix of a (_nested), warned when some are."""
    from datapath.policy_check import _nested, _within, net_text

    text = random_policy(random.Random(seed))
    a = check_policy(load_text(text, "r.yaml"))
    assert {g.gid: sorted(x.gid for x in a.groups if _nested(g, x)) for g in a.groups} == \
        {gid: sorted(lst) for gid, lst in a.ancestors.items()}, text
    want = []
    named = [g for g in a.groups if g.nets]
    for g in named:
        for h in named:
            if g is h or _nested(h, g):
                continue
            inside = [n for n, r in zip(h.nets, h.spans()) if any(_within(r, q) for q in g.spans())]
            if inside:
                want.append((h.line, f"{net_text(inside[0])} of {h.name} lies inside {g.name}"))
    got = [(ln, m.split(", but")[0]) for ln, m in a.warnings if " lies inside " in m]
    assert got == want, text
