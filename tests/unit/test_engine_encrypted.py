"""A flow whose parser can read nothing more of either direction (SSH past
both KEXINITs; TLS is let go at its ServerHello already) is let go to the
kernel (ALLOW: no more copies), even when its rule asks for WAF and DLP: no
rule sees anything in ciphertext. Not while one direction is still readable,
not a flow that holds every request.
Records are built here (no kernel), as in test_engine.py."""
from __future__ import annotations

import os

from datapath.enums import INSPECT
from datapath.enums import VerdictCode as V
from protocols.api import Direction
from protocols.ssh import SshParser
from protocols.tls import TlsParser
from tests.unit.test_engine import DLP, DPI, HOLD, WAF, Harness, client_hello, rec
from tests.unit.test_ident_parsers import CLIENT_BANNER, SERVER_BANNER, kexinit
from tests.unit.test_tls_parser import CCS, record, server_hello

EVERYTHING = WAF | DLP | DPI
SSH_SERVER = ("10.0.1.5", 22)


def _tls12_flights():
    """Client and server flights of a TLS 1.2 handshake, then application data."""
    hello = client_hello(b"www.example.org")
    cke = record(b"\x10\x00\x00\x21\x20" + bytes(32))
    sh = record(server_hello(cipher=0xC02F) + b"\x0e\x00\x00\x00")
    return hello, sh + CCS + record(os.urandom(40)), cke + CCS + record(os.urandom(40))


def _ssh_flow(h, inspect=EVERYTHING):
    """Both banners and the client's KEXINIT through h; returns (next client seq, next server seq)."""
    cs, ss = 1001, 5001
    for side, data in ((1, SERVER_BANNER), (0, CLIENT_BANNER), (0, kexinit())):
        h.engine.handle(rec(data, side=side, seq=ss if side else cs, ack=cs if side else ss, inspect=inspect,
                            server=SSH_SERVER))
        if side:
            ss += len(data)
        else:
            cs += len(data)
    return cs, ss


def test_ssh_flow_inspected_for_everything_is_let_go_once_both_kexinits_are_read():
    h = Harness()
    cs, ss = _ssh_flow(h)
    h.engine.handle(rec(os.urandom(300), seq=cs, ack=ss, inspect=EVERYTHING, server=SSH_SERVER))
    assert V.VERDICT_ALLOW not in h.codes()          # the server's KEXINIT is still to come
    server_kex = kexinit()
    h.engine.handle(rec(server_kex, side=1, seq=ss, ack=cs, inspect=EVERYTHING, server=SSH_SERVER))
    ss += len(server_kex)
    h.engine.handle(rec(os.urandom(300), side=1, seq=ss, ack=cs, inspect=EVERYTHING, server=SSH_SERVER))
    assert h.codes()[-1] == V.VERDICT_ALLOW and h.codes().count(V.VERDICT_ALLOW) == 1
    before = h.engine.counters.after_verdict
    h.engine.handle(rec(os.urandom(300), seq=cs + 300, ack=ss, inspect=EVERYTHING, server=SSH_SERVER))
    assert h.engine.counters.after_verdict == before + 1   # a record in flight: counted, not read
    h.engine.close_all("shutdown")
    (ssh,) = [r["ssh"] for r in h.eve if r["event_type"] == "ssh"]
    assert ssh["client"]["software_version"] and ssh["server"]["software_version"]
    (flow,) = [r for r in h.eve if r["event_type"] == "flow"]
    assert flow["app_proto"] == "ssh" and {"inspection_verdict": "allow"} in flow["metadata"]["flowvars"]
    h.kinds()                                          # every record fits the EVE schema


def test_an_ssh_flow_holding_every_request_is_not_let_go_by_encryption():
    hold_all = EVERYTHING | INSPECT["HOLD_ALL"] | HOLD
    h = Harness()
    cs, ss = _ssh_flow(h, hold_all)
    server_kex = kexinit()
    h.engine.handle(rec(server_kex, side=1, seq=ss, ack=cs, inspect=hold_all, server=SSH_SERVER))
    h.engine.handle(rec(os.urandom(300), seq=cs, ack=ss + len(server_kex), inspect=hold_all, server=SSH_SERVER))
    assert V.VERDICT_ALLOW not in h.codes()


def test_parsers_say_finished_only_past_the_handshake():
    tls = TlsParser()
    hello, server_flight, client_flight = _tls12_flights()
    tls.receive_data(hello, Direction.TO_SERVER)
    assert not tls.finished(Direction.TO_SERVER) and not tls.finished(Direction.TO_CLIENT)
    tls.receive_data(server_flight, Direction.TO_CLIENT)
    assert tls.finished(Direction.TO_CLIENT) and not tls.finished(Direction.TO_SERVER)
    tls.receive_data(client_flight, Direction.TO_SERVER)
    assert tls.finished(Direction.TO_SERVER)
    ssh = SshParser()
    ssh.receive_data(CLIENT_BANNER, Direction.TO_SERVER)
    assert not ssh.finished(Direction.TO_SERVER)
    ssh.receive_data(kexinit(), Direction.TO_SERVER)
    assert ssh.finished(Direction.TO_SERVER) and not ssh.finished(Direction.TO_CLIENT)


def test_ssh_ciphertext_in_a_run_of_records_lets_the_flow_go_too():
    """The same through handle_batch, whose runs of in-order records take
    their own path (_handle_run)."""
    h = Harness()
    cs, ss = _ssh_flow(h)
    server_kex = kexinit()
    h.engine.handle(rec(server_kex, side=1, seq=ss, ack=cs, inspect=EVERYTHING, server=SSH_SERVER))
    ss += len(server_kex)
    batch = [rec(os.urandom(200), seq=cs + 200 * i, ack=ss, inspect=EVERYTHING, server=SSH_SERVER)
             for i in range(6)]
    h.engine.handle_batch(batch)
    assert h.codes()[-1] == V.VERDICT_ALLOW and h.codes().count(V.VERDICT_ALLOW) == 1
    assert h.engine.counters.after_verdict >= 4            # the rest of the run: counted, not read
