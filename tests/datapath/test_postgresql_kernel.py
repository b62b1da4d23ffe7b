"""The kernel's L7 stage identifies PostgreSQL from a client's first message
(protocols/postgresql.py signatures: the SSLRequest's 8 bytes, and a
startup message's protocol 3.0 at offset 4 under any length below 64 KiB),
in the real program; a GSSENCRequest, an old protocol 2 startup and a
MySQL greeting on port 5432 are not identified by it."""
from __future__ import annotations

import struct

import pytest

from bench.fuzz_postgresql import GSS, LOGIN, SSL, startup
from packets_ct import TcpConn

FIRST = {
    "ssl_request": SSL,
    "startup": LOGIN,
    "startup_long": startup(user="u", database="d" * 60, options="-c " + "x" * 2000),
    "startup_no_params": startup(),
}


@pytest.mark.parametrize("name", sorted(FIRST))
def test_client_first_message_identifies_postgresql(fastpath, name):
    conn = TcpConn.make(fastpath, server=("10.0.0.2", 5432)).handshake()
    conn.send("c", "PA", data=FIRST[name])
    assert conn.entry().leaf.app == fastpath.l7.ids["postgresql"]


@pytest.mark.parametrize("data", [
    GSS,                                                              # not a signature
    startup(version=0x00020000, user="old"),                          # protocol 2
    struct.pack(">II", 0x10000, 0x00030000) + bytes(64),             # length past 64 KiB
    bytes.fromhex("4a0000000a") + b"8.0.35\0" + bytes(20),            # MySQL's greeting
])
def test_other_bytes_are_not_postgresql(fastpath, data):
    conn = TcpConn.make(fastpath, server=("10.0.0.2", 5432)).handshake()
    conn.send("c", "PA", data=data)
    assert conn.entry().leaf.app != fastpath.l7.ids["postgresql"]
