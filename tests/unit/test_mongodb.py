"""protocols/mongodb.py: the MongoDB wire protocol parser, its probe and
kernel signatures, on crafted messages (bench/fuzz_mongodb.py writes them)."""
from __future__ import annotations

import struct

import pytest

from bench.fuzz_mongodb import bson, message, op_compressed, op_msg, op_query, op_reply
from protocols import mongodb, registry
from protocols.api import CERTAIN, LIKELY, NO_MATCH, Direction, Malformed
from protocols.mongodb import MongoParser, MongoRequest, MongoResponse, probe

C, S = Direction.TO_SERVER, Direction.TO_CLIENT

FIND = op_msg({"find": "users", "filter": {"age": {"$gt": 30}}, "lsid": {"id": b"\x01" * 16},
               "$db": "shop"}, request_id=7)
INSERT = op_msg({"insert": "orders", "ordered": True, "$db": "shop"},
                [("documents", [{"_id": 1, "sku": "a"}, {"_id": 2, "sku": "b"}])],
                checksum=True, request_id=8)
REPLY_ERR = op_msg({"ok": 0.0, "errmsg": "E11000 duplicate key", "code": 11000, "codeName": "DuplicateKey"},
                   request_id=99, response_to=8)
QUERY = op_query("admin.$cmd", {"isMaster": 1, "client": {"driver": "x"}}, request_id=1100)
REPLY = op_reply([{"ismaster": True, "maxWireVersion": 17, "ok": 1.0}], response_to=1100, cursor=0)


def feed(msgs, parser=None):
    p = parser or MongoParser()
    out = []
    for d, data in msgs:
        out += p.receive_data(data, d)
    return out


def test_op_msg_body_and_document_sequence_with_checksum():
    ev, = feed([(C, INSERT)])
    assert isinstance(ev, MongoRequest)
    assert (ev.opcode, ev.opcode_name, ev.request_id) == (2013, "OP_MSG", 8)
    assert (ev.command, ev.database, ev.collection) == ("insert", "shop", "orders")
    assert ev.document_sequences == ("documents",) and ev.checksum_present and not ev.truncated
    ev, = feed([(C, FIND)])
    assert (ev.command, ev.database, ev.collection, ev.checksum_present) == ("find", "shop", "users", False)


def test_op_msg_reply_ok_errmsg_code():
    ev, = feed([(S, REPLY_ERR)])
    assert isinstance(ev, MongoResponse)
    assert (ev.response_to, ev.ok, ev.errmsg, ev.code) == (8, 0.0, "E11000 duplicate key", 11000)
    ok, = feed([(S, op_msg({"cursor": {"id": 0, "firstBatch": []}, "ok": 1}, response_to=7))])
    assert ok.ok == 1.0 and ok.errmsg is None


def test_op_query_on_cmd_and_op_reply():
    q, r = feed([(C, QUERY), (S, REPLY)])
    assert (q.opcode_name, q.command, q.database, q.collection, q.full_collection_name) == \
        ("OP_QUERY", "isMaster", "admin", None, "admin.$cmd")
    assert (r.opcode_name, r.response_to, r.ok, r.number_returned, r.cursor_id) == ("OP_REPLY", 1100, 1.0, 1, 0)


def test_legacy_query_on_a_collection_and_other_opcodes_named():
    q, = feed([(C, op_query("shop.users", {"name": "bob"}))])
    assert (q.command, q.database, q.collection) == (None, "shop", "users")
    ins = message(mongodb.OP_INSERT, struct.pack("<i", 0) + b"shop.logs\0" + bson({"a": 1}))
    kill = message(mongodb.OP_KILL_CURSORS, struct.pack("<iiq", 0, 1, 5))
    a, b = feed([(C, ins), (C, kill)])
    assert (a.opcode_name, a.database, a.collection) == ("OP_INSERT", "shop", "logs")
    assert b.opcode_name == "OP_KILL_CURSORS"


@pytest.mark.parametrize("compressor,readable", [(0, True), (2, True), (1, False), (3, False)])
def test_op_compressed_recognised_and_zlib_noop_read(compressor, readable):
    ev, = feed([(C, op_compressed(FIND, compressor))])
    assert (ev.opcode_name, ev.original_opcode) == ("OP_COMPRESSED", 2013)
    assert ev.compressor == mongodb.COMPRESSORS[compressor]
    if readable:
        assert (ev.command, ev.database, ev.collection, ev.truncated) == ("find", "shop", "users", False)
    else:
        assert ev.command is None and ev.truncated


def test_zlib_bomb_inflates_only_a_head():
    inner = op_msg({"find": "x", "$db": "y", "pad": "a" * 3_000_000})
    wrapped = op_compressed(inner, 2, level=9)
    assert len(wrapped) < 20_000
    ev, = feed([(C, wrapped)])
    assert (ev.command, ev.collection) == ("find", "x") and ev.truncated


CONVERSATION = [(C, QUERY), (S, REPLY), (C, FIND), (C, INSERT), (S, REPLY_ERR),
                (C, op_compressed(FIND, 2))]


def test_split_at_every_byte_gives_the_same_events():
    whole = feed(CONVERSATION)
    assert len(whole) == 6 and not any(isinstance(e, Malformed) for e in whole)
    client = b"".join(m for d, m in CONVERSATION if d == C)
    server = b"".join(m for d, m in CONVERSATION if d == S)
    for cut in range(1, len(client)):
        p = MongoParser()
        got = p.receive_data(client[:cut], C) + p.receive_data(client[cut:], C)
        assert got == [e for e in whole if isinstance(e, MongoRequest)], cut
    p = MongoParser()
    got = [e for i in range(len(server)) for e in p.receive_data(server[i:i + 1], S)]
    assert got == [e for e in whole if isinstance(e, MongoResponse)]


def test_oversize_length_is_malformed_and_the_side_stops():
    p = MongoParser()
    bad = struct.pack("<iiii", mongodb.MAX_MESSAGE_BYTES + 1, 1, 0, 2013)
    ev, = p.receive_data(bad + bytes(100), C)
    assert isinstance(ev, Malformed) and "48000001" in ev.reason and ev.offset == 0
    assert p.receive_data(FIND, C) == [] and p.buffered(C) == 0


def test_long_message_counted_past_not_buffered():
    big = op_msg({"insert": "users", "$db": "shop"}, [("documents", [{"b": b"x" * 1_000_000}])])
    p = MongoParser()
    events = []
    for i in range(0, len(big), 9000):
        events += p.receive_data(big[i:i + 9000], C)
        assert p.buffered(C) <= mongodb.MAX_BUFFERED_BYTES
    events += p.receive_data(FIND, C)
    a, b = events
    assert (a.command, a.database, a.truncated, a.length) == ("insert", "shop", True, len(big))
    assert (b.command, b.collection) == ("find", "users")


@pytest.mark.parametrize("damage", [
    lambda m: m[:20] + b"\x00" + struct.pack("<i", 3) + m[25:],          # body length < 5
    lambda m: m[:20] + b"\x00" + struct.pack("<i", 10_000) + m[25:],     # body past the message
    lambda m: m[:25] + b"\x99" + m[26:],                                  # unknown BSON type
    lambda m: m[:20] + b"\x07" + m[21:],                                  # unknown section kind
    lambda m: m[:16] + struct.pack("<I", 1 << 5) + m[20:],               # unknown required flag bit
    lambda m: m[:-1] + b"\x01",                                           # document not NUL-ended
])
def test_bad_bson_is_malformed_not_an_exception(damage):
    bad = damage(FIND)
    p = MongoParser()
    ev, = p.receive_data(bad, C)
    assert isinstance(ev, Malformed) and ev.direction == C, ev
    assert p.receive_data(FIND, C) == []


def test_unknown_opcode_and_eof_inside_a_message():
    p = MongoParser()
    ev, = p.receive_data(struct.pack("<iiii", 20, 1, 0, 1999) + bytes(4), C)
    assert isinstance(ev, Malformed) and "opcode 1999" in ev.reason
    p = MongoParser()
    assert p.receive_data(FIND[:30], C) == []
    ev, = p.receive_eof(C)
    assert isinstance(ev, Malformed)
    assert MongoParser().receive_eof(S) == []


def test_probe():
    assert probe(FIND, C) == CERTAIN and probe(QUERY, C) == CERTAIN
    assert probe(REPLY, S) == CERTAIN and probe(REPLY_ERR, S) == CERTAIN
    assert probe(op_compressed(FIND, 1), C) == LIKELY
    # responseTo set on a client message, or 0 on a server's: not a request / reply
    assert probe(REPLY_ERR, C) == NO_MATCH and probe(FIND, S) == NO_MATCH
    assert probe(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", C) == NO_MATCH
    assert probe(struct.pack("<iiii", 15, 1, 0, 2013), C) == NO_MATCH
    assert probe(FIND[:10], C) == NO_MATCH
    assert registry.detect(FIND, C)[0] == "mongodb" and registry.detect(REPLY, S)[0] == "mongodb"


def test_kernel_signatures_match_client_requests_only():
    plugin = registry.by_name()["mongodb"]
    plugin.check()
    hits = lambda data: any(s.matches(data) for s in plugin.signatures)   # noqa: E731
    assert hits(FIND) and hits(QUERY) and hits(op_compressed(FIND, 2))
    assert hits(struct.pack("<iiii", 73, 5, -1, 2004) + bytes(57))      # old drivers' responseTo -1
    assert not hits(REPLY) and not hits(REPLY_ERR) and not hits(b"GET / HTTP/1.1\r\n\r\n")
    assert len({(s.offset, s.mask, len(s.value)) for s in plugin.signatures}) == 1
