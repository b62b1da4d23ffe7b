"""decode_message makes its questions, records and message with
protocols.api.event_builder (no frozen-dataclass __init__ per object, ~1 us
each), and they are the objects the dataclasses' own constructors make."""
from __future__ import annotations

import dataclasses

import pytest

from protocols import dns
from protocols.api import Direction
from tests.unit.test_dns_parser import big_response, query


def test_decoding_calls_no_dataclass_init(monkeypatch):
    calls = []
    for cls in (dns.DnsQuestion, dns.DnsRecord, dns.DnsMessage):
        real = cls.__init__
        monkeypatch.setattr(cls, "__init__", lambda self, *a, _real=real, **k: (calls.append(1), _real(self, *a, **k))[1])
    msg = dns.decode_message(big_response(), Direction.TO_CLIENT)
    assert msg.answers and calls == []


@pytest.mark.parametrize("data", [big_response(), query("a.example"), query(".", 28)])
def test_built_events_equal_the_constructed_ones(data):
    msg = dns.decode_message(data, Direction.TO_CLIENT)
    for obj in (msg, *msg.questions, *msg.answers, *msg.authority):
        made = type(obj)(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
        assert (obj == made, hash(obj), repr(obj)) == (True, hash(made), repr(made))
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.name = "x"
