"""slowpath.community_id.community_id (hashlib over one packed string) against the
reference implementation, the communityid package, on many tuples: IPv4 and
IPv6, TCP, UDP, SCTP, ICMP and ICMPv6 (every type, paired and one-way),
port-less protocols, both orders, equal addresses and ports, seeds."""
from __future__ import annotations

import ipaddress
import random

import communityid
import pytest

from slowpath.community_id import community_id


def reference(proto, saddr, daddr, sport=None, dport=None, seed=0):
    """The package's Community ID, called as slowpath.eve.community_id called it before."""
    a, b = ipaddress.ip_address(saddr), ipaddress.ip_address(daddr)
    if proto not in communityid.PORT_PROTOS:
        sport = dport = None
    elif sport is None or dport is None:
        return None
    return communityid.CommunityID(seed).calc(communityid.FlowTuple(proto, a.packed, b.packed, sport, dport))


def _addr(rng: random.Random, v6: bool) -> str:
    if rng.random() < 0.1:             # a small address space: equal addresses and near ones
        return "fd00::1" if v6 else "10.0.0.1"
    if v6:
        return str(ipaddress.IPv6Address(rng.getrandbits(128)))
    return str(ipaddress.IPv4Address(rng.getrandbits(32)))


def _port(rng: random.Random) -> int:
    return rng.choice((0, 1, 53, 80, 443, 65535, rng.randrange(65536), rng.randrange(65536)))


def test_same_as_the_package_on_random_tuples():
    rng = random.Random(1407)
    checked = 0
    for _ in range(6000):
        v6 = rng.random() < 0.5
        proto = rng.choice((6, 17, 132, 1, 58, 46, 47, 0, 255))
        a, b = _addr(rng, v6), _addr(rng, v6)
        if rng.random() < 0.05:
            b = a
        if proto in (1, 58):
            sport, dport = rng.randrange(256), rng.randrange(256)
        else:
            sport, dport = _port(rng), _port(rng)
            if rng.random() < 0.05:
                dport = sport
        seed = rng.choice((0, 0, 1, 0xFFFF, rng.randrange(65536)))
        for args in ((a, b, sport, dport), (b, a, dport, sport)):
            assert community_id(proto, *args, seed=seed) == reference(proto, *args, seed), (proto, args, seed)
            checked += 1
    assert checked == 12000


@pytest.mark.parametrize("proto,addrs", [(1, ("192.0.2.9", "198.51.100.1")),
                                         (58, ("2001:db8::9", "2001:db8::1"))])
def test_same_as_the_package_for_every_icmp_type(proto, addrs):
    for mtype in range(256):
        for code in (0, 1, 255):
            for s, d in (addrs, addrs[::-1]):
                assert community_id(proto, s, d, mtype, code) == reference(proto, s, d, mtype, code), \
                    (proto, s, d, mtype, code)


def test_address_spellings_and_bad_input():
    # Spellings inet_pton takes and ones only ipaddress takes (a scope id)
    # give the package's value for the same address.
    for s, d in (("fe80:0001:0203:0405:0607:0809:0A0B:0C0D", "::ffff:1.2.3.4"),
                 ("fe80::1%eth0", "fe80::2")):
        assert community_id(6, s, d, 1, 2) == reference(6, s.split("%")[0], d, 1, 2)
    for bad in (("1.2.3.4", "::1", 1, 2), ("1.2.3", "1.2.3.4", 1, 2), ("01.2.3.4", "1.2.3.4", 1, 2),
                ("1.2.3.4", "5.6.7.8", -1, 2), ("1.2.3.4", "5.6.7.8", 1, 65536)):
        with pytest.raises(ValueError):
            community_id(6, *bad)
    with pytest.raises(ValueError):
        community_id(256, "1.2.3.4", "5.6.7.8")
    with pytest.raises(ValueError):
        community_id(6, "1.2.3.4", "5.6.7.8", 1, 2, seed=65536)
