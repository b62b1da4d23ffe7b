"""Policy in the kernel: the compiled tables loaded into the real program,
checked against policy_tables.decide() (what `microseg policy explain` says).

A policy with nested groups, CIDRs written in rules, port ranges, rules for
any protocol, overrides and both defaults is applied to the fast path's
maps; thousands of random new flows then go through BPF_PROG_TEST_RUN, and
for each the reason the kernel counted and the rule id it stored in the new
session must be what decide() says. Hot reload: sessions follow a new
generation, and one the new policy denies is dropped and removed.
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import random
import socket

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

from appliance.policyfile import compile_text, expected_reason
from datapath import bpfsys, policy_maps
from datapath.config import DatapathConfig
from datapath.enums import CtState, Direction, Reason
from datapath.errors import MicrosegError
from datapath.policy_maps import PolicyMaps
from datapath.policy_tables import POL, decide, group_lengths
from packets_ct import (EGR, FLOWS, HALFOPEN, ING, TcpConn, entry, ether, expect, run_counted)

POLICY = """
groups:
  corp: [10.1.0.0/16, "fd00:1::/48"]
  web: [10.1.1.0/24, "fd00:1:1::/64"]          # nested in corp
  web_canary: [10.1.1.128/27]                   # nested in web (and corp)
  db: [10.2.0.0/16, "fd00:2::/48"]
  db_primary: [10.2.0.0/24]                     # nested in db
  partner: [192.168.0.0/16, 10.1.200.0/24]      # inside corp in part: not nested
  ops: ["fd00:9::/64", 10.9.0.0/24]
defaults: {ingress: deny, egress: allow}
rules:
  - {name: corp-dns, from: corp, to: any, proto: udp, ports: [53], action: allow}
  - {name: web-db, from: web, to: db, proto: tcp, ports: [5432, "8000-8100"], action: allow, log: true}
  - {from: web, to: db, proto: udp, ports: ["1000-1999"], action: deny}
  - {from: web_canary, to: db, proto: tcp, ports: ["8050-8060"], action: deny}
  - {from: web_canary, to: db_primary, proto: any, action: inspect, inspect: {what: [dpi], mode: async}}
  - {from: web, to: db_primary, proto: tcp, ports: ["8090-9000"], action: inspect, inspect: {what: [waf], mode: hold}}
  - {from: corp, to: db, proto: any, action: deny}
  - {from: any, to: db, proto: icmp, action: allow}
  - {from: any, to: any, proto: tcp, ports: [22], action: deny}
  - {from: ops, to: any, proto: any, action: allow}
  - {from: 10.1.1.7/32, to: [db, 10.3.0.0/16], proto: tcp, action: allow}
  - {from: [partner, 172.16.0.0/12], to: web, proto: tcp, ports: [443, "10000-10100"], action: allow}
  - {from: "::/0", to: ops, proto: udp, action: deny}
  - {from: 0.0.0.0/1, to: ops, proto: tcp, ports: ["1-1023"], action: deny}
  - {from: any, to: 10.3.0.0/16, proto: udp, ports: ["5000-5999"], action: allow}
overrides:
  - {src: 10.1.1.5, dst: 10.2.0.9, proto: tcp, dport: 5432, action: deny}
  - {src: 10.1.1.5, dst: 10.2.0.9, proto: tcp, dport: 5432, sport: 40001, action: allow}
  - {src: "fd00:1:1::5", dst: "fd00:2::9", proto: udp, dport: 53, action: deny}
  - {src: 8.8.8.8, dst: 10.2.0.9, proto: tcp, dport: 80, action: allow}
"""

# Where random addresses come from: every prefix of the policy, and the world.
POOLS = ["10.1.0.0/16", "10.1.1.0/24", "10.1.1.128/27", "10.2.0.0/16", "10.2.0.0/24", "192.168.0.0/16",
         "10.1.200.0/24", "10.9.0.0/24", "10.3.0.0/16", "172.16.0.0/12", "10.1.1.7/32", "10.1.1.5/32",
         "10.2.0.9/32", "8.8.8.8/32", "0.0.0.0/0", "200.0.0.0/8",
         "fd00:1::/48", "fd00:1:1::/64", "fd00:2::/48", "fd00:9::/64", "fd00:1:1::5/128", "fd00:2::9/128",
         "2001:db8::/32", "::/0"]
PORTS = [22, 53, 80, 443, 999, 1000, 1023, 1024, 1999, 2000, 4999, 5000, 5432, 5999, 6000, 7999, 8000,
         8049, 8050, 8060, 8061, 8063, 8064, 8089, 8090, 8100, 8101, 9000, 9001, 9999, 10000, 10100, 10101]

OVERRIDE_FLOWS = [("10.1.1.5", "10.2.0.9", "tcp", 5432), ("fd00:1:1::5", "fd00:2::9", "udp", 53),
                  ("8.8.8.8", "10.2.0.9", "tcp", 80)]

REASON_BY_NAME = {r.name: r for r in Reason}
DIRS = {"ingress": ING, "egress": EGR}


def compiled(text: str = POLICY):
    return compile_text(text, "policy.yaml")[1]


def rand_addr(rng: random.Random, net: str) -> str:
    n = ipaddress.ip_network(net)
    return str(n.network_address + rng.randrange(n.num_addresses))


def first_packet(src: str, dst: str, proto: str, sport: int, dport: int) -> bytes:
    v6 = ":" in src
    l3 = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    if proto == "tcp":
        l4 = TCP(sport=sport, dport=dport, flags="S", seq=1000, window=65535)
    elif proto == "udp":
        l4 = UDP(sport=sport, dport=dport) / Raw(b"q" * 8)
    else:  # echo request; the kernel keys it by its id, in both port fields
        l4 = (ICMPv6EchoRequest(id=sport, seq=1, data=b"p" * 8) if v6
              else ICMP(type=8, id=sport, seq=1) / Raw(b"p" * 8))
    return bytes(ether() / l3 / l4)


PROTO_NUM = {"tcp": 6, "udp": 17}


def proto_num(proto: str, v6: bool) -> int:
    return PROTO_NUM.get(proto, 58 if v6 else 1)


@pytest.fixture
def unlimited(fastpath):
    """The fast path without SYN budgets (thousands of SYNs to few destinations)."""
    fastpath.apply_runtime(DatapathConfig(syn_dst_rate=0, syn_global_rate=0))
    return fastpath


def test_policy_compiles_with_every_feature():
    pol = compiled()
    names = set(pol.group_names.values())
    assert {"cidr:10.1.1.7/32", "cidr:10.3.0.0/16", "cidr:172.16.0.0/12", "cidr:::/0", "cidr:0.0.0.0/1"} <= names
    # ::/0 holds the IPv4-mapped range: IPv4 addresses must not fall into it
    assert (ipaddress.IPv6Network("::ffff:0:0/96"), 0) in pol.groups
    assert {e.prefixlen for e in pol.rules} >= {64, 72, 88} and any(72 < e.prefixlen < 88 for e in pol.rules)
    assert len(pol.exact) == 4
    assert [w for _, w in pol.warnings if "partner" in w]


# How the kernel finds a group (policy_tables.group_lengths): this policy's
# few prefixes make "auto" the trie; "hash" probes its 8 (IPv4-mapped) and
# 3 (IPv6) prefix lengths.
GROUP_LOOKUPS = ["auto", "hash", "lpm"]


def kernel_reason(d, proto: str) -> str:
    """The reason the kernel counts for a flow's first packet under decision d.
    A datagram's payload goes straight on to the inspection handoff, whose
    reason the packet ends with; no slow path runs in these tests, so that
    is the default slow-path-down action, pass."""
    want = expected_reason(d)
    if want == "PASS_POLICY_INSPECT" and proto == "udp":
        return "PASS_INSPECT_SLOWPATH_DOWN"
    return want


@pytest.mark.parametrize("group_lookup", GROUP_LOOKUPS)
def test_random_flows_kernel_equals_explain(unlimited, group_lookup):
    fp = unlimited
    pol = compiled()
    if group_lookup == "hash":
        assert all(group_lengths(pol, 8, "hash").values())
    st = PolicyMaps.for_fastpath(fp).apply(pol, group_lookup)
    assert st.gen == 1
    rng = random.Random(20240607)
    seen_flows = set()
    by_reason: dict[str, int] = {}
    by_how: dict[str, int] = {}
    n = 0
    next_sport = 20000
    mismatches = []
    while n < 3000:
        if rng.random() < 0.08:    # an override's addresses (its ports, or others)
            src, dst, proto, dport = rng.choice(OVERRIDE_FLOWS)
            fam = ":" in src
            if rng.random() < 0.3:
                dport = rng.choice(PORTS)
        else:
            fam = rng.random() < 0.3
            pools = [p for p in POOLS if (":" in p) == fam]
            src, dst = rand_addr(rng, rng.choice(pools)), rand_addr(rng, rng.choice(pools))
            if src == dst:
                continue
            proto = rng.choice(["tcp", "tcp", "udp", "udp", "icmp"])
            dport = rng.choice(PORTS) if rng.random() < 0.8 else rng.randrange(1, 65536)
        if rng.random() < 0.05:   # the source port of the override for one
            sport = 40001
        else:
            sport, next_sport = next_sport, next_sport + 1
        if proto == "icmp":
            dport = sport
        pnum = proto_num(proto, fam)
        key = (min((src, sport), (dst, dport)), max((src, sport), (dst, dport)), pnum)
        if key in seen_flows:
            continue
        seen_flows.add(key)
        hook = rng.choice(["ingress", "egress"])
        d = decide(pol, src, dst, pnum, dport, sport, hook)
        want = kernel_reason(d, proto)
        action, moved = run_counted(fp, first_packet(src, dst, proto, sport, dport), DIRS[hook])
        got = {r for (_, r) in moved}
        flow = f"{src}:{sport} -> {dst}:{dport} {proto} on {hook}"
        if got != {want}:
            mismatches.append(f"{flow}: kernel {sorted(got)}, explain {want} ({d.how})")
        elif not want.startswith("DROP_"):
            e = entry(fp, src, sport, dst, dport, pnum)
            if e is None or e.table != HALFOPEN:
                mismatches.append(f"{flow}: passed without a half-open session ({e})")
            elif (e.leaf.rule_id, e.leaf.action, e.leaf.inspect, e.leaf.pol_gen) != \
                    (d.verdict.rule_id, d.verdict.action, d.verdict.inspect, 1):
                mismatches.append(f"{flow}: session rule {e.leaf.rule_id} action {e.leaf.action} inspect "
                                  f"{e.leaf.inspect} gen {e.leaf.pol_gen}; explain {d.verdict}")
        else:
            assert entry(fp, src, sport, dst, dport, pnum) is None, flow
        by_reason[want] = by_reason.get(want, 0) + 1
        by_how[d.how] = by_how.get(d.how, 0) + 1
        n += 1
    print(f"\n  [{n} random new flows] kernel == explain; outcomes {by_reason}; found by {by_how}")
    assert not mismatches, f"{len(mismatches)} of {n} differ:\n" + "\n".join(mismatches[:20])
    # The sample reached every outcome and every way of finding it.
    assert set(by_reason) == {"PASS_POLICY_ALLOW", "PASS_POLICY_DEFAULT", "PASS_POLICY_INSPECT",
                              "DROP_POLICY_DENY", "DROP_POLICY_DEFAULT", "PASS_INSPECT_SLOWPATH_DOWN"}, by_reason
    assert set(by_how) == {"override", "default ingress", "default egress",
                           "rule (source group, destination group)", "rule (source group, any)",
                           "rule (any, destination group)", "rule (any, any)"}, by_how


@pytest.mark.parametrize("group_lookup", GROUP_LOOKUPS)
def test_every_rule_and_override_decides_some_flow_in_the_kernel(unlimited, group_lookup):
    """One flow per rule and override, chosen to be decided by it."""
    fp = unlimited
    pol = compiled()
    PolicyMaps.for_fastpath(fp).apply(pol, group_lookup)
    flows = {
        1: ("10.1.5.5", "8.8.4.4", "udp", 53),        # corp -> any udp 53
        2: ("10.1.1.9", "10.2.7.7", "tcp", 8000),     # web -> db
        3: ("10.1.1.9", "10.2.7.7", "udp", 1500),
        4: ("10.1.1.130", "10.2.7.7", "tcp", 8055),   # canary's own rule wins over web's
        5: ("10.1.1.130", "10.2.0.7", "udp", 7),      # canary -> db_primary any
        6: ("10.1.1.9", "10.2.0.7", "tcp", 8095),     # db_primary's own rule wins over db's
        7: ("10.1.5.5", "10.2.7.7", "tcp", 3306),
        8: ("200.1.1.1", "10.2.7.7", "icmp", 0),
        9: ("200.1.1.1", "200.2.2.2", "tcp", 22),
        10: ("10.9.0.5", "200.2.2.2", "udp", 9),
        11: ("10.1.1.7", "10.3.1.1", "tcp", 1),
        12: ("192.168.3.3", "10.1.1.9", "tcp", 10050),
        13: ("fd00:5::1", "fd00:9::1", "udp", 9),
        14: ("10.1.1.130", "10.9.0.1", "tcp", 1023),  # canary (IPv4 only) is nested in 0.0.0.0/1
        15: ("200.1.1.1", "10.3.0.1", "udp", 5999),
        16: ("10.1.1.5", "10.2.0.9", "tcp", 5432),    # override, any source port
        18: ("fd00:1:1::5", "fd00:2::9", "udp", 53),
        19: ("8.8.8.8", "10.2.0.9", "tcp", 80),
    }
    sport = 30000
    for rid, (src, dst, proto, dport) in flows.items():
        sport += 1
        if proto == "icmp":
            dport = sport
        pnum = proto_num(proto, ":" in src)
        d = decide(pol, src, dst, pnum, dport, sport, "ingress")
        assert d.verdict.rule_id == rid, (rid, d)
        expect(fp, first_packet(src, dst, proto, sport, dport), REASON_BY_NAME[kernel_reason(d, proto)], ING)
    # 17: the override for one source port beats the one for any.
    d = decide(pol, "10.1.1.5", "10.2.0.9", 6, 5432, 40001)
    assert d.verdict.rule_id == 17 and d.verdict.action == POL["POL_ALLOW"]
    expect(fp, first_packet("10.1.1.5", "10.2.0.9", "tcp", 40001, 5432), Reason.PASS_POLICY_ALLOW, ING)
    assert entry(fp, "10.1.1.5", 40001, "10.2.0.9", 5432, 6).leaf.rule_id == 17


def test_no_policy_passes_everything(fastpath):
    assert PolicyMaps.for_fastpath(fastpath).state().gen == 0
    expect(fastpath, first_packet("10.1.1.9", "10.2.7.7", "tcp", 1234, 22), Reason.PASS_FORWARD, ING)
    assert decide(None, "10.1.1.9", "10.2.7.7", 6, 22).how == "no policy"


# -- hot reload --------------------------------------------------------------------

ALLOW = """
groups: {web: [10.1.1.0/24], db: [10.2.0.0/16]}
rules:
  - {name: web-db, from: web, to: db, proto: tcp, ports: [5432], action: allow}
  - {name: dns, from: web, to: db, proto: udp, ports: [53], action: allow}
"""
ALLOW_OTHER_RULE = """
groups: {web: [10.1.1.0/24], db: [10.2.0.0/16]}
rules:
  - {name: ssh, from: web, to: db, proto: tcp, ports: [22], action: allow}
  - {name: web-db-wide, from: web, to: db, proto: tcp, ports: ["5000-5999"], action: allow}
  - {name: dns, from: web, to: db, proto: udp, ports: [53], action: allow}
"""
DENY = """
groups: {web: [10.1.1.0/24], db: [10.2.0.0/16]}
defaults: {ingress: allow}
rules:
  - {from: web, to: db, proto: tcp, ports: [5432], action: deny}
  - {from: web, to: db, proto: udp, ports: [53], action: deny}
"""


def established_under_policy(fp) -> TcpConn:
    conn = TcpConn.make(fp, client=("10.1.1.10", 40000), server=("10.2.0.10", 5432))
    conn.send("c", "S", Reason.PASS_POLICY_ALLOW)
    conn.c.started, conn.c.nxt = True, conn.c.isn + 1   # what send() does for PASS_FORWARD
    conn.send("s", "SA")
    conn.send("c", "A")
    conn.assert_state(CtState.CT_ESTABLISHED, FLOWS)
    return conn


def group_filters(fp) -> dict[int, int]:
    """Group id -> the filter its prefixes carry in the live ms_pol_gh
    (struct ms_pol_group), checked the same on every prefix of the group."""
    pm = PolicyMaps.for_fastpath(fp)
    slot = pm.state().slot
    inner_id = int.from_bytes(bpfsys.map_lookup(pm.fds["ms_pol_gh"], slot.to_bytes(4, "little"), 4), "little")
    fd = bpfsys.map_fd_by_id(inner_id)
    k, v = pm.types["ms_pol_gh_t"]
    out: dict[int, int] = {}
    try:
        for key in bpfsys.map_keys(fd, ctypes.sizeof(k)):
            g = v.from_buffer_copy(bpfsys.map_lookup(fd, key, ctypes.sizeof(v)))
            bloom = g.bloom[0] | g.bloom[1] << 64
            assert out.setdefault(g.id, bloom) == bloom
    finally:
        os.close(fd)
    return out


def test_group_filter_holds_the_pairs_of_its_rules_as_source(fastpath):
    """Each group's filter (bpf/lib/maps.h struct ms_pol_group) has the bits
    of every (destination group, protocol) it has a rule record for as a
    source and no other; a group that is no rule's source has none, so the
    kernel skips its (source, destination) and (source, any) lookups. The
    decisions stay those of explain (the kernel reads the same bits)."""
    pol = compiled(ALLOW)
    PolicyMaps.for_fastpath(fastpath).apply(pol)
    web = next(g for n, g in pol.groups if n.prefixlen == 120)      # ::ffff:10.1.1.0/120
    db = next(g for n, g in pol.groups if n.prefixlen == 112)       # ::ffff:10.2.0.0/112
    assert web != db
    filters = group_filters(fastpath)
    assert filters[web] == policy_maps.bloom_bits(db, 6) | policy_maps.bloom_bits(db, 17)
    assert filters[db] == 0
    expect(fastpath, first_packet("10.1.1.9", "10.2.7.7", "tcp", 1234, 5432), Reason.PASS_POLICY_ALLOW, ING)
    expect(fastpath, first_packet("10.2.7.7", "10.1.1.9", "tcp", 1235, 5432), Reason.DROP_POLICY_DEFAULT, ING)


def test_policy_without_overrides_leaves_no_exact_table(fastpath):
    """A generation without overrides puts no exact table in its slot (so a
    new flow makes no exact lookups, bpf/lib/policy.h), and takes out the
    one an older generation left there: the override it held decides
    nothing any more."""
    pm = PolicyMaps.for_fastpath(fastpath)
    fd = pm.fds["ms_pol_exact"]

    def exact_table(slot: int) -> bool:
        return bpfsys.map_lookup(fd, bytes(ctypes.c_uint32(slot)), 4) is not None

    first = pm.apply(compiled(POLICY))            # with an override
    assert exact_table(first.slot)
    override = first_packet("10.1.1.5", "10.2.0.9", "tcp", 1000, 5432)
    expect(fastpath, override, Reason.DROP_POLICY_DENY, ING)
    second = pm.apply(compiled(ALLOW))
    assert not exact_table(second.slot)
    third = pm.apply(compiled(ALLOW))             # into the first one's slot
    assert third.slot == first.slot and not exact_table(third.slot)
    expect(fastpath, first_packet("10.1.1.5", "10.2.0.9", "tcp", 1001, 5432), Reason.PASS_POLICY_ALLOW, ING)


MOVED_SOURCE = """
groups: {web: [10.1.2.0/24], db: [10.2.0.0/16]}
rules:
  - {name: web-db, from: web, to: db, proto: tcp, ports: [5432], action: allow}
"""


def test_group_cache_follows_a_reload(fastpath):
    """The kernel keeps each CPU's last group resolution (bpf/lib/maps.h
    struct ms_pol_scratch gcache): a new generation that moves the same
    client out of its group decides that client's next new flow by the new
    groups (the default), not by the cached ones; and back again. The test
    runs on one CPU, so each flow meets the cache the one before it left."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        pm = PolicyMaps.for_fastpath(fastpath)
        pm.apply(compiled(ALLOW))
        expect(fastpath, first_packet("10.1.1.9", "10.2.7.7", "tcp", 2000, 5432), Reason.PASS_POLICY_ALLOW, ING)
        pm.apply(compiled(MOVED_SOURCE))
        expect(fastpath, first_packet("10.1.1.9", "10.2.7.7", "tcp", 2002, 5432), Reason.DROP_POLICY_DEFAULT, ING)
        pm.apply(compiled(ALLOW))       # the first one's slot again, a later generation
        expect(fastpath, first_packet("10.1.1.9", "10.2.7.7", "tcp", 2003, 5432), Reason.PASS_POLICY_ALLOW, ING)
    finally:
        os.sched_setaffinity(0, cpus)


def test_reload_keeps_allowed_flows_and_revokes_denied(fastpath):
    pm = PolicyMaps.for_fastpath(fastpath)
    assert pm.apply(compiled(ALLOW)).gen == 1
    conn = established_under_policy(fastpath)
    e = conn.entry()
    assert (e.leaf.pol_gen, e.leaf.rule_id) == (1, 1)

    # A new generation that still allows the flow (by another rule): it keeps
    # passing as an ordinary packet, and the session takes the new verdict.
    st = pm.apply(compiled(ALLOW_OTHER_RULE))
    assert (st.gen, st.slot) == (2, 1)
    conn.send("c", "PA", data=b"x" * 20)
    e = conn.entry()
    assert (e.leaf.pol_gen, e.leaf.rule_id, e.table) == (2, 2, FLOWS)
    conn.send("s", "A")
    assert conn.entry().leaf.pol_gen == 2

    # A generation that denies it: the next packet (from either side) is
    # dropped as revoked and the session is removed.
    st = pm.apply(compiled(DENY))
    assert (st.gen, st.slot) == (3, 0)
    conn.send("s", "PA", Reason.DROP_POLICY_REVOKED, data=b"y" * 10)
    assert conn.entry() is None
    # ... and the flow is now a new one the new policy denies by its rule.
    expect(fastpath, first_packet("10.1.1.10", "10.2.0.10", "tcp", 40000, 5432), Reason.DROP_POLICY_DENY)


def test_reload_revokes_half_open_udp(fastpath):
    pm = PolicyMaps.for_fastpath(fastpath)
    pm.apply(compiled(ALLOW))
    expect(fastpath, first_packet("10.1.1.10", "10.2.0.10", "udp", 5353, 53), Reason.PASS_POLICY_ALLOW)
    e = entry(fastpath, "10.1.1.10", 5353, "10.2.0.10", 53, 17)
    assert (e.table, e.leaf.pol_gen) == (HALFOPEN, 1)
    pm.apply(compiled(DENY))
    # the reply, seen on the other hook, finds a session of an older generation
    expect(fastpath, first_packet("10.2.0.10", "10.1.1.10", "udp", 53, 5353), Reason.DROP_POLICY_REVOKED, EGR)
    assert entry(fastpath, "10.1.1.10", 5353, "10.2.0.10", 53, 17) is None


def test_defaults_follow_the_hook_a_flow_was_first_seen_on(fastpath):
    pm = PolicyMaps.for_fastpath(fastpath)
    pm.apply(compiled("defaults: {ingress: deny, egress: allow}\n"))
    expect(fastpath, first_packet("10.5.5.5", "10.6.6.6", "tcp", 1111, 80), Reason.DROP_POLICY_DEFAULT, ING)
    expect(fastpath, first_packet("10.5.5.5", "10.6.6.6", "tcp", 1112, 80), Reason.PASS_POLICY_DEFAULT, EGR)
    # the reply of the egress-opened flow arrives on ingress: the session's hook decides after a reload
    pm.apply(compiled("defaults: {ingress: deny, egress: allow}\nrules: []\n"))
    conn = TcpConn.make(fastpath, client=("10.5.5.5", 1112), server=("10.6.6.6", 80))
    conn.c.started, conn.c.nxt = True, conn.c.isn + 1
    conn.direction_of = {"c": EGR, "s": ING}
    conn.send("s", "SA")
    assert conn.entry().leaf.pol_gen == 2


def test_failed_apply_leaves_the_running_policy(fastpath, monkeypatch):
    pm = PolicyMaps.for_fastpath(fastpath)
    pm.apply(compiled(ALLOW))
    before = pm.state()
    calls = {"n": 0}
    real = policy_maps.bpfsys.map_update

    def failing(fd, key, value, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(fd, key, value, *a, **kw)

    monkeypatch.setattr(policy_maps.bpfsys, "map_update", failing)
    with pytest.raises(MicrosegError, match="unchanged"):
        pm.apply(compiled(DENY))
    monkeypatch.setattr(policy_maps.bpfsys, "map_update", real)
    assert pm.state() == before
    expect(fastpath, first_packet("10.1.1.10", "10.2.0.10", "tcp", 41000, 5432), Reason.PASS_POLICY_ALLOW)


GRE_POLICY = """
groups:
  tunnel-ends: [10.50.0.0/24]
defaults: {ingress: deny, egress: deny}
rules:
  - {from: tunnel-ends, to: tunnel-ends, proto: any, action: allow}
"""


@pytest.mark.parametrize("src, want", [
    ("10.50.0.1", Reason.PASS_OTHER_L4),        # allowed by the proto-any rule
    ("10.60.0.1", Reason.DROP_POLICY_DEFAULT),  # nobody allowed it
])
def test_protocols_without_sessions_follow_the_policy(fastpath, src, want):
    """GRE has no session, but the policy still decides every packet."""
    _, pol = compile_text(GRE_POLICY, "gre.yaml")
    PolicyMaps.for_fastpath(fastpath).apply(pol)
    gre = bytes(ether() / IP(src=src, dst="10.50.0.2", proto=47) / Raw(b"\0" * 24))
    expect(fastpath, gre, want)


def test_denied_first_fragment_is_not_remembered(fastpath):
    """A later fragment of a denied GRE datagram must not pass on its own."""
    _, pol = compile_text(GRE_POLICY, "gre.yaml")
    PolicyMaps.for_fastpath(fastpath).apply(pol)
    first = IP(src="10.60.0.1", dst="10.50.0.2", proto=47, id=77, flags="MF", frag=0) / Raw(b"\0" * 24)
    later = IP(src="10.60.0.1", dst="10.50.0.2", proto=47, id=77, frag=3) / Raw(b"\0" * 24)
    expect(fastpath, bytes(ether() / first), Reason.DROP_POLICY_DEFAULT)
    expect(fastpath, bytes(ether() / later), Reason.DROP_FRAG_NO_FIRST)


# -- the IPv4 direct table ------------------------------------------------------

# IPv4 prefixes of every level of the direct table (bpf/lib/maps.h): /0 to
# /16 in the /16 entries, /17 to /24 in a first block, /25 to /32 in a
# second; nested down one chain (all4 > ten > t15 > t16 > t17 > ... > t32),
# groups with prefixes of several lengths and families, an IPv4-mapped
# prefix written in IPv6 and ::/0 (which holds the IPv4-mapped range but
# catches no IPv4 address). Each group is the source of one TCP rule and the
# destination of one UDP rule: the rule that decides tells the group found.
DIR_GROUPS = {
    "all4": ["0.0.0.0/0"], "half": ["128.0.0.0/1"], "ten": ["10.0.0.0/8"],
    "t12": ["10.16.0.0/12", '"fd00::/16"'], "t15": ["10.20.0.0/15"], "t16": ["10.20.0.0/16", "192.168.0.0/16"],
    "t17": ["10.20.128.0/17"], "t20": ["10.20.144.0/20", '"fd00:1::/32"'], "t23": ["10.20.146.0/23"],
    "t24": ["10.20.147.0/24", "172.16.5.0/24"], "t25": ["10.20.147.128/25"],
    "t28": ["10.20.147.160/28", '"::ffff:10.99.0.0/112"'], "t31": ["10.20.147.170/31"],
    "t32": ["10.20.147.171/32", "10.20.0.1/32", '"fd00:1::1/128"'], "m104": ['"::ffff:11.0.0.0/104"'],
    "v6all": ['"::/0"'],
}


def dir_policy(without: tuple[str, ...] = ()) -> str:
    groups = {n: p for n, p in DIR_GROUPS.items() if n not in without}
    out = ["groups:", *[f"  {n}: [{', '.join(p)}]" for n, p in groups.items()],
           "defaults: {ingress: deny, egress: allow}", "rules:"]
    for n in groups:
        out.append(f"  - {{from: {n}, to: any, proto: tcp, ports: [80], action: allow}}")
        out.append(f"  - {{from: any, to: {n}, proto: udp, ports: [53], action: allow}}")
    return "\n".join(out) + "\n"


def edge_addresses(pol, rng: random.Random) -> list[str]:
    """Of every prefix: its first and last address, one inside, and the two
    just outside it; in text form (IPv4-mapped ones as IPv4)."""
    out = set()
    for net, _ in pol.groups:
        first, last = int(net.network_address), int(net.broadcast_address)
        for a in (first, last, rng.randint(first, last), first - 1, last + 1):
            if 0 <= a < 1 << 128:
                ip = ipaddress.IPv6Address(a)
                out.add(str(ip.ipv4_mapped or ip))
    return sorted(out)


@pytest.mark.parametrize("without", [(), ("all4",), ("all4", "half", "ten")], ids=["all4", "no-all4", "few"])
def test_ipv4_direct_table_finds_what_explain_finds(unlimited, without):
    """With the direct table in use (auto, IPv4 prefixes), every address at
    and around each prefix's edges, as a flow's source and as its
    destination, is decided by the kernel as explain decides it."""
    fp = unlimited
    pol = compiled(dir_policy(without))
    pm = PolicyMaps.for_fastpath(fp)
    st = pm.apply(pol)
    assert bpfsys.map_lookup(pm.fds["ms_pol_dir"], st.slot.to_bytes(4, "little"), 4) is not None
    rng = random.Random(7)
    sport, mismatches, found = 20000, [], set()
    for addr in edge_addresses(pol, rng):
        v6 = ":" in addr
        peer = "2001:db8::7" if v6 else "203.0.113.7"
        for src, dst, proto, dport in ((addr, peer, "tcp", 80), (peer, addr, "udp", 53)):
            if src == dst:
                continue
            sport += 1
            d = decide(pol, src, dst, proto_num(proto, v6), dport, sport, "ingress")
            want = kernel_reason(d, proto)
            _, moved = run_counted(fp, first_packet(src, dst, proto, sport, dport), ING)
            got = {r for (_, r) in moved}
            e = entry(fp, src, sport, dst, dport, proto_num(proto, v6))
            rid = e.leaf.rule_id if e is not None else None
            if got != {want} or (not want.startswith("DROP_") and rid != d.verdict.rule_id):
                mismatches.append(f"{src}:{sport} -> {dst}:{dport} {proto}: kernel {sorted(got)} rule {rid}, "
                                  f"explain {want} rule {d.verdict.rule_id} ({d.how})")
            found.add(d.sgroup if proto == "tcp" else d.dgroup)
    assert not mismatches, f"{len(mismatches)} differ:\n" + "\n".join(mismatches[:20])
    # Every group was found for some address (names are the groups' ids here).
    named = {g for g, n in pol.group_names.items() if n in DIR_GROUPS}
    assert named - {g for g, n in pol.group_names.items() if n == "v6all"} <= found


def test_no_direct_table_without_ipv4_prefixes_or_unless_auto(unlimited):
    """The direct table is made for IPv4 prefixes under auto only; a policy
    without any, or another group lookup, leaves the slot empty (the
    kernel then probes the hash or walks the trie as before)."""
    fp = unlimited
    pm = PolicyMaps.for_fastpath(fp)
    for text, how in ((dir_policy(), "hash"), (dir_policy(), "lpm"),
                      ("groups: {a: [\"fd00::/16\"]}\nrules:\n  - {from: a, to: any, proto: tcp, action: allow}\n",
                       "auto")):
        st = pm.apply(compiled(text), how)
        assert bpfsys.map_lookup(pm.fds["ms_pol_dir"], st.slot.to_bytes(4, "little"), 4) is None, how
    expect(fp, first_packet("fd00::1", "2001:db8::1", "tcp", 1000, 80), Reason.PASS_POLICY_ALLOW, ING)
    expect(fp, first_packet("10.0.0.1", "10.0.0.2", "tcp", 1000, 80), Reason.DROP_POLICY_DEFAULT, ING)
