"""PostgreSQL in EVE: the parser's events paired into Suricata's pgsql
transactions (slowpath/eve.py PgsqlLog) and written as records that pass
Suricata's schema and the project's overlay; through the engine, each
transaction is logged when the server is ready for the next query."""
from __future__ import annotations

import json

from protocols.api import Direction
from protocols.postgresql import PostgresParser
from slowpath import eve
from tests.eve_schemas import schema_errors
from tests.unit.test_postgresql import (AUTH_MD5, ERROR, LOGIN, ROWS, SSL_REQUEST, WELCOME, cstr, msg)

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
TS = 1_795_000_000.5
FLOW = eve.FlowInfo(flow_id=77, src_ip="10.0.0.1", src_port=40816, dest_ip="10.0.0.2", dest_port=5432,
                    proto=6, app_proto="postgresql")


def transactions(chunks) -> list[dict]:
    p, log, out = PostgresParser(), eve.PgsqlLog(), []
    for d, b in chunks:
        for ev in p.receive_data(b, d):
            out += log.feed(ev)
    return out + log.flush()


SESSION = [(C, SSL_REQUEST), (S, b"N"), (C, LOGIN), (S, AUTH_MD5), (C, msg(b"p", cstr("md5" + "0" * 32))),
           (S, WELCOME), (C, msg(b"Q", cstr("select * from t"))), (S, ROWS),
           (C, msg(b"Q", cstr("select * from nope"))), (S, ERROR + msg(b"Z", b"I")),
           (C, msg(b"X", b""))]


def test_a_session_as_suricata_transactions():
    txs = transactions(SESSION)
    assert [t["tx_id"] for t in txs] == [0, 1, 2, 3, 4]
    ssl, login, select, error, bye = txs
    assert ssl == {"tx_id": 0, "request": {"message": "SSL Request"}, "response": {"ssl_accepted": False}}
    assert login["request"] == {"protocol_version": "3.0", "startup_parameters": {
        "user": "alice", "optional_parameters": [{"database": "shop"}, {"application_name": "psql"},
                                                 {"client_encoding": "UTF8"}]}}
    assert login["response"]["parameter_status"] == [{"server_version": "16.4 (Debian)"}]
    assert (login["response"]["process_id"], login["response"]["secret_key"]) == (132, 77)
    assert select == {"tx_id": 2, "request": {"simple_query": "select * from t"},
                      "response": {"field_count": 2, "command_completed": "SELECT 2", "data_rows": 2,
                                   "data_size": 34}}
    assert error["response"]["code"] == "42P01" and error["response"]["severity_localizable"] == "ERROR"
    assert error["response"]["message"] == 'relation "nope" does not exist'
    assert bye == {"tx_id": 4, "request": {"message": "termination_message"}}


def test_records_pass_both_schemas():
    for obj in transactions(SESSION):
        rec = json.loads(eve.encode(eve.pgsql_record(FLOW, obj, TS)))
        assert rec["event_type"] == "pgsql" and rec["app_proto"] == "postgresql"
        assert not schema_errors(rec), (rec, schema_errors(rec))


def test_an_unanswered_query_is_flushed():
    txs = transactions([(C, LOGIN), (S, WELCOME), (C, msg(b"Q", cstr("select pg_sleep(100)")))])
    assert txs[-1] == {"tx_id": 1, "request": {"simple_query": "select pg_sleep(100)"}}


def test_the_engine_logs_pgsql_records():
    """Through the engine (the WAF/DLP rules of tests/unit/test_engine.py
    read the flow): one pgsql record per transaction, each valid."""
    from tests.unit.test_engine import Harness, rec
    h = Harness()
    seq = {C: 1001, S: 5001}
    for d, b in SESSION:
        h.engine.handle(rec(b, side=int(d), seq=seq[d], server=("10.0.1.5", 5432)))
        seq[d] += len(b)
    h.engine.close_all()
    kinds = h.kinds()                      # validates every record against both schemas
    pg = [r for r in h.eve if r["event_type"] == "pgsql"]
    assert kinds.count("pgsql") == len(pg) and len(pg) >= 3, kinds
    assert pg[0]["pgsql"]["request"] == {"message": "SSL Request"}
    assert pg[1]["pgsql"]["request"]["startup_parameters"]["user"] == "alice"
    assert all(r["app_proto"] == "postgresql" and r["dest_port"] == 5432 for r in pg)
    assert [r["pgsql"]["tx_id"] for r in pg] == list(range(len(pg)))
