"""The corpus's TLS and QUIC hellos decode as 3fd354e's protocols/tls.py
decoded them: every ClientHello and ServerHello body the parsers meet in
the corpus's captures (TLS records and QUIC CRYPTO frames alike; the TLS,
Chrome, QUIC and JA3 captures and the HTTPS flows of the others) gives the
same event field for field, or the same error. The seeded
hellos and mutations are in tests/unit/test_tls_hello_fast.py.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from protocols import tls
from slowpath.offline import analyze_capture
from tests.unit.test_tls_hello_fast import load_old, outcome

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"


def captures() -> list[Path]:
    return sorted((CORPUS / "pcaps").glob("*")) if (CORPUS / "pcaps").is_dir() else []


pytestmark = pytest.mark.skipif(not captures(), reason=f"corpus not found at {CORPUS}")


def test_corpus_hellos_decode_as_before(tmp_path, monkeypatch):
    old = load_old(tmp_path)
    if old is None:
        pytest.skip("git history with the old protocols/tls.py not available")
    clients, servers = [], []
    real_client, real_server = tls._client_hello, tls._server_hello

    def client(body, direction, record_version, retry, transport="t"):
        clients.append((bytes(body), direction, record_version, retry, transport))
        return real_client(body, direction, record_version, retry, transport)

    def server(body, direction):
        servers.append((bytes(body), direction))
        return real_server(body, direction)

    monkeypatch.setattr(tls, "_client_hello", client)
    monkeypatch.setattr(tls, "_server_hello", server)
    for path in captures():
        analyze_capture(path, identify_only=False)
    monkeypatch.undo()
    # The captures hold 46 ClientHellos and 45 ServerHellos (QUIC's included).
    assert len(clients) >= 40 and len(servers) >= 40, (len(clients), len(servers))
    assert any(t == "q" for *_, t in clients)
    for body, direction, record_version, retry, transport in clients:
        assert outcome(tls, body, retry, transport) == outcome(old, body, retry, transport)
        assert tls._client_hello_fields(body) is not None    # all went by offset
    for body, direction in servers:
        got, want = tls._server_hello(body, direction), old._server_hello(body, direction)
        assert dataclasses.astuple(got) == dataclasses.astuple(want)
