"""The kernel's L7 stage identifies MongoDB from a client's first message
(protocols/mongodb.py signatures: responseTo 0 or -1, then the opcode at
offset 12), in the real program; a server's reply does not (its
responseTo names a request), nor do the same bytes with another opcode."""
from __future__ import annotations

import struct

import pytest

from bench.fuzz_mongodb import op_msg, op_query, op_reply
from packets_ct import TcpConn
from protocols import mongodb

FIRST = {
    "op_msg": op_msg({"find": "users", "$db": "shop"}),
    "op_query": op_query("admin.$cmd", {"isMaster": 1}),
    "op_query_old_driver": struct.pack("<iiii", 73, 37255, -1, mongodb.OP_QUERY) + bytes(57),
    "op_compressed": struct.pack("<iiii", 40, 3, 0, mongodb.OP_COMPRESSED) + bytes(24),
}


@pytest.mark.parametrize("name", sorted(FIRST))
def test_client_first_message_identifies_mongodb(fastpath, name):
    conn = TcpConn.make(fastpath, server=("10.0.0.2", 27017)).handshake()
    conn.send("c", "PA", data=FIRST[name])
    assert conn.entry().leaf.app == fastpath.l7.ids["mongodb"]


@pytest.mark.parametrize("data", [
    op_reply([{"ok": 1.0}], response_to=5),                                   # a server's reply
    struct.pack("<iiii", 40, 3, 0, 2010) + bytes(24),                         # not an opcode
    op_msg({"find": "users", "$db": "shop"}, response_to=9),                  # responseTo set
])
def test_other_bytes_are_not_mongodb(fastpath, data):
    conn = TcpConn.make(fastpath, server=("10.0.0.2", 27017)).handshake()
    conn.send("c", "PA", data=data)
    assert conn.entry().leaf.app != fastpath.l7.ids["mongodb"]
