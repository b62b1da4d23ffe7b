"""QUIC in the kernel's L7 stage (protocols/quic.py's signatures, run in the
real program): a client's first Initial names the flow `quic`, a rule's
`app: quic` lets QUIC through on UDP and drops other bytes, and a server
whose first packet is a Retry or a version negotiation is not judged by a
client-only signature."""
from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, UDP

from appliance.policyfile import compile_text
from datapath import l7
from datapath.enums import Reason
from datapath.policy_maps import PolicyMaps
from packets_ct import IPPROTO_UDP, entry, ether, expect
from protocols.quic import QUIC_V1, QUIC_V2, crypto_frame, initial_keys, protect_initial

DCID = bytes.fromhex("8394c8f03e515708")


def initial(version: int = QUIC_V1) -> bytes:
    keys = initial_keys(DCID, version)[0]
    return protect_initial(keys, version=version, dcid=DCID, scid=b"\x01\x02", pn=0,
                           frames=crypto_frame(0, b"\x01\x00\x00\x10" + bytes(16)) + bytes(1100))


def udp(src, sport, dst, dport, data):
    return ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / data


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_client_initial_identified_as_quic(fastpath, version):
    expect(fastpath, udp("10.0.0.1", 5555, "10.0.0.2", 443, initial(version)), Reason.PASS_FORWARD)
    e = entry(fastpath, "10.0.0.1", 5555, "10.0.0.2", 443, IPPROTO_UDP)
    assert e.leaf.app == fastpath.l7.ids["quic"]


def test_other_long_header_types_and_short_headers_are_not_quic_initials(fastpath):
    base = initial()
    for i, first in enumerate((0xE0, 0xF0, 0x41)):      # Handshake, Retry, short header
        data = bytes([first]) + base[1:]
        expect(fastpath, udp("10.0.0.1", 6000 + i, "10.0.0.2", 443, data), Reason.PASS_FORWARD)
        assert entry(fastpath, "10.0.0.1", 6000 + i, "10.0.0.2", 443, IPPROTO_UDP).leaf.app == 0


def test_kernel_equals_the_model_on_mutated_initials(fastpath):
    """Initial headers with one byte of the first 8 changed: the kernel's
    app id is what datapath/l7.identify() says, QUIC or not."""
    rng = random.Random(17)
    base = initial()
    seen = set()
    for i in range(300):
        data = bytearray(base[:80])
        if i % 4:
            j = rng.randrange(8)
            data[j] = rng.randrange(256)
        f = udp("10.9.0.1", 2000 + i, "10.9.0.2", 443, bytes(data))
        fastpath.run(bytes(f))
        want = l7.identify(fastpath.l7, bytes(data), 0, IPPROTO_UDP)
        got = entry(fastpath, "10.9.0.1", 2000 + i, "10.9.0.2", 443, IPPROTO_UDP).leaf.app
        assert got == want, f"payload {bytes(data[:8]).hex()}: kernel {got}, model {want}"
        seen.add(want)
    assert fastpath.l7.ids["quic"] in seen and 0 in seen


QUIC_POLICY = """
groups:
  clients: [10.0.0.0/24]
  servers: [10.0.1.0/24]
defaults: {ingress: deny, egress: deny}
rules:
  - {name: quic-only, from: clients, to: servers, proto: udp, ports: [443], action: allow, app: quic}
"""


@pytest.fixture
def quic_policy(fastpath):
    _, pol = compile_text(QUIC_POLICY, "quic.yaml")
    PolicyMaps.for_fastpath(fastpath).apply(pol)
    return fastpath


def test_app_quic_requirement_on_udp(quic_policy):
    fp = quic_policy
    expect(fp, udp("10.0.0.5", 5000, "10.0.1.5", 443, initial()), Reason.PASS_POLICY_ALLOW)
    e = entry(fp, "10.0.0.5", 5000, "10.0.1.5", 443, IPPROTO_UDP)
    assert e.leaf.app == e.leaf.app_req == fp.l7.ids["quic"]
    # The server answers with a Retry: no server-side signature, not judged.
    retry = bytes([0xF0]) + QUIC_V1.to_bytes(4, "big") + b"\x02\x01\x02\x08" + bytes(8) + b"tok" + bytes(16)
    expect(fp, udp("10.0.1.5", 443, "10.0.0.5", 5000, retry), Reason.PASS_FORWARD)
    assert entry(fp, "10.0.0.5", 5000, "10.0.1.5", 443, IPPROTO_UDP) is not None
    # Something else on the QUIC port is dropped and its session forgotten.
    dns = bytes.fromhex("abcd01000001000000000000") + b"\x01a\x00\x00\x01\x00\x01"
    expect(fp, udp("10.0.0.5", 5001, "10.0.1.5", 443, dns), Reason.DROP_L7_APP_MISMATCH)
    assert entry(fp, "10.0.0.5", 5001, "10.0.1.5", 443, IPPROTO_UDP) is None
