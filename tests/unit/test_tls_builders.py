"""The TLS parser makes its hellos with protocols.api.event_builder (no
frozen-dataclass __init__, ~2.5 us for a ClientHello), and they are the
objects the dataclasses' own constructors make."""
from __future__ import annotations

import dataclasses

import pytest

from protocols import tls
from protocols.api import Direction
from tests.unit.test_tls_parser import alpn_ext, client_hello, record, server_hello, sni_ext


def hellos() -> list:
    p = tls.TlsParser()
    ch = record(client_hello(exts=(sni_ext(b"a.example"), alpn_ext(b"h2", b"http/1.1"))))
    sh = record(server_hello(exts=(alpn_ext(b"h2"),)))
    return p.receive_data(ch, Direction.TO_SERVER) + p.receive_data(sh, Direction.TO_CLIENT)


def test_hellos_call_no_dataclass_init(monkeypatch):
    calls = []
    for cls in (tls.TlsClientHello, tls.TlsServerHello):
        real = cls.__init__
        monkeypatch.setattr(cls, "__init__",
                            lambda self, *a, _real=real, **k: (calls.append(1), _real(self, *a, **k))[1])
    assert [e.kind for e in hellos()] == ["tls_client_hello", "tls_server_hello"]
    assert calls == []


@pytest.mark.parametrize("i", [0, 1])
def test_built_hellos_equal_the_constructed_ones(i):
    obj = hellos()[i]
    made = type(obj)(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    assert (obj == made, hash(obj), repr(obj)) == (True, hash(made), repr(made))
    with pytest.raises(dataclasses.FrozenInstanceError):
        obj.direction = Direction.TO_CLIENT
