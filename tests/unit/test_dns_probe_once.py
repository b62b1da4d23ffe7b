"""A DNS message that detection decoded is not decoded again by the flow's
parser (protocols/dns.py _probed / _decode_once), and probe() rates as
before: seeded messages, their TCP framing and mutations of both rated as
by 51dab8f's protocols/dns.py (the version before these changes), and the
parser's events after a probe equal to a fresh decoding.
"""
from __future__ import annotations

import random
from dataclasses import astuple

import pytest

from protocols import dns
from protocols.api import CERTAIN, Direction
from tests.unit.test_dns_parser import big_response, query
from tests.unit.test_tls_hello_fast import load_module_at

OLD_COMMIT = "51dab8f"
SEED = 1408


@pytest.fixture(scope="module")
def old_dns(tmp_path_factory):
    mod = load_module_at(OLD_COMMIT, "protocols/dns.py", tmp_path_factory.mktemp("dns_old"))
    if mod is None:
        pytest.skip(f"git history with {OLD_COMMIT} not available")
    return mod


def counting(monkeypatch) -> list[bytes]:
    calls: list[bytes] = []
    real = dns.decode_message

    def decode(msg, direction):
        calls.append(msg)
        return real(msg, direction)
    monkeypatch.setattr(dns, "decode_message", decode)
    return calls


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_probed_query_is_decoded_once(monkeypatch, transport):
    msg = query("once.example", id=0x5151)
    wire = msg if transport == "udp" else len(msg).to_bytes(2, "big") + msg
    calls = counting(monkeypatch)
    assert dns.probe(wire, Direction.TO_SERVER) == CERTAIN
    events = dns.DnsParser(transport).receive_data(wire, Direction.TO_SERVER)
    assert calls == [msg]                    # before: [msg, msg]
    monkeypatch.undo()
    assert events == [dns.decode_message(msg, Direction.TO_SERVER)]


def test_other_bytes_or_direction_are_decoded_afresh(monkeypatch):
    probed, other = query("a.example", id=1), query("b.example", id=2)
    calls = counting(monkeypatch)
    dns.probe(probed, Direction.TO_SERVER)
    parser = dns.DnsParser("udp")
    [ev_other] = parser.receive_data(other, Direction.TO_SERVER)
    [ev_back] = parser.receive_data(probed, Direction.TO_CLIENT)
    assert calls == [probed, other, probed]
    assert ev_other.questions[0].name == "b.example"
    assert ev_back.direction is Direction.TO_CLIENT and ev_back.questions[0].name == "a.example"


def test_probe_rates_and_parser_decodes_as_before(old_dns):
    rng = random.Random(SEED)
    bases = [query(f"h{i}.example", qtype=rng.choice([1, 28, 16, 65]), id=i) for i in range(40)]
    bases += [big_response(i) for i in range(10)]
    for i in range(3000):
        msg = bytearray(rng.choice(bases))
        for _ in range(rng.choice([0, 0, 1, 2])):
            msg[rng.randrange(len(msg))] = rng.randrange(256)
        if rng.random() < 0.15:
            msg[2] |= 0x02                     # TC: decoding keeps what is complete
        if rng.random() < 0.2:
            msg = msg[:rng.randrange(len(msg))]
        msg = bytes(msg)
        wire = len(msg).to_bytes(2, "big") + msg if rng.random() < 0.4 else msg
        d = rng.choice([Direction.TO_SERVER, Direction.TO_CLIENT])
        assert dns.probe(wire, d) == old_dns.probe(wire, d), wire.hex()
        transport = "tcp" if wire is not msg else "udp"
        got = dns.DnsParser(transport).receive_data(wire, d)
        want = old_dns.DnsParser(transport).receive_data(wire, d)
        # As tuples: the old module's DnsQuestion is a class of its own.
        assert [(e.kind, astuple(e)) for e in got] == [(e.kind, astuple(e)) for e in want], wire.hex()
