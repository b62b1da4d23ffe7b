"""The kernel's L7 stage: application protocol from a side's first payload,
and the policy's `app` requirement, run in the real program.

The signature table is data (datapath/l7.py fills it from the protocol
plugins), so these tests also load tables of their own into the running
build: a plugin the C code has never heard of is identified without a
rebuild.
"""
from __future__ import annotations

import random
import socket

import pytest
from scapy.layers.inet import IP, UDP

from datapath import l7
from datapath.enums import Reason
from packets_ct import CLIENT_HELLO, FLOWS, IPPROTO_UDP, TcpConn, entry, ether, expect
from protocols.api import Direction, ProtocolPlugin, Signature

UDP_L4 = socket.IPPROTO_UDP


def never(data, direction):
    return 0.0


@pytest.fixture
def table_swap(fastpath):
    """Load another signature table into the running build; the build's own
    comes back afterwards."""
    own = fastpath.l7

    def load(plugins):
        tab = l7.compile_signatures(plugins)
        fastpath.l7 = tab
        l7.load(fastpath, tab)
        return tab
    yield load
    fastpath.l7 = own
    l7.load(fastpath, own)


def app_of(fp, *tuple5):
    e = entry(fp, *tuple5)
    assert e is not None, "no session"
    return e.leaf.app


# Payloads as real clients and servers send them (first bytes only).
FIRST_PAYLOADS = {
    "http": ("c", b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"),
    "tls": ("c", CLIENT_HELLO),
    "ssh": ("s", b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"),
    "mysql": ("s", bytes.fromhex("4a0000000a") + b"8.0.35\0" + bytes(20)),
    "redis": ("c", b"*1\r\n$4\r\nPING\r\n"),
    # HTTP/2 by prior knowledge: the connection preface, then the client's SETTINGS.
    "http2": ("c", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000006040000000000000300000064")),
    # SMTP: the client's EHLO (the server's 220 greeting is FTP's too: not a
    # signature, tests/datapath/test_smtp_kernel.py).
    "smtp": ("c", b"EHLO client.example.org\r\n"),
    # MQTT 3.1.1 CONNECT, client id "c1", clean session, keep alive 60.
    "mqtt": ("c", bytes.fromhex("100e00044d5154540402003c0002") + b"c1"),
}


@pytest.mark.parametrize("name", sorted(FIRST_PAYLOADS))
def test_builtin_protocol_identified_on_its_first_payload(fastpath, name):
    side, data = FIRST_PAYLOADS[name]
    conn = TcpConn.make(fastpath, server=("10.0.0.2", 31337)).handshake()
    conn.send(side, "PA", data=data)
    e = conn.entry()
    assert e.leaf.app == fastpath.l7.ids[name]
    assert e.leaf.l7_seen == (1 if side == "c" else 2)
    # Later payload in the other direction is looked at once, and does
    # not change what the flow was identified as.
    conn.send("s" if side == "c" else "c", "PA", data=b"\0" * 40)
    e = conn.entry()
    assert e.leaf.app == fastpath.l7.ids[name] and e.leaf.l7_seen == 3


@pytest.mark.parametrize("hello", [b"EHLO client.example.org\r\n", b"helo x\r\n"])
def test_smtp_client_hello_identifies_without_the_greeting(fastpath, hello):
    """The client's EHLO/HELO (any case) names SMTP, greeting or not (a capture may miss it)."""
    conn = TcpConn.make(fastpath, server=("10.0.0.2", 2525)).handshake()
    conn.send("c", "PA", data=hello)
    assert conn.entry().leaf.app == fastpath.l7.ids["smtp"]


def test_unknown_payload_leaves_the_flow_unidentified(fastpath):
    conn = TcpConn.make(fastpath, server=("10.0.0.2", 7000)).handshake()
    conn.send("c", "PA", data=b"\x00\x01hello, nothing known")
    e = conn.entry()
    assert e.leaf.app == 0 and e.leaf.l7_seen == 1


def test_dns_query_over_udp(fastpath):
    q = bytes.fromhex("abcd01000001000000000000") + b"\x03www\x07example\x03org\x00\x00\x01\x00\x01"
    f = ether() / IP(src="10.0.0.1", dst="10.0.0.53") / UDP(sport=5555, dport=5353) / q
    expect(fastpath, f, Reason.PASS_FORWARD)
    assert app_of(fastpath, "10.0.0.1", 5555, "10.0.0.53", 5353, IPPROTO_UDP) == fastpath.l7.ids["dns"]


TEST_PLUGINS = [
    ProtocolPlugin("alpha", never, signatures=(Signature(0, b"ALPHA"), Signature(4, b"\x10\x20", b"\xf0\xf0")),
                   transports=frozenset({"tcp", "udp"})),
    ProtocolPlugin("beta", never, signatures=(Signature(2, b"\x00\x0a", direction=Direction.TO_CLIENT),
                                              Signature(0, b"BETA"), Signature(56, b"TAILTAIL")),
                   transports=frozenset({"tcp", "udp"})),
    ProtocolPlugin("gamma", never, signatures=(Signature(0, b"\x80", b"\xc0"), Signature(8, b"gm", b"\xdf\xdf")),
                   transports=frozenset({"udp"})),
]


def test_kernel_equals_the_model_on_random_payloads(fastpath, table_swap):
    """Thousands of first datagrams: signature bytes with random tails,
    mutations of them, and noise; the app id the kernel stores is what
    datapath/l7.identify() says for every one."""
    tab = table_swap(TEST_PLUGINS)
    rng = random.Random(7)
    sigs = [s for p in TEST_PLUGINS for s in p.signatures]
    seen = set()
    for i in range(2000):
        kind = i % 3
        if kind == 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
        else:
            s = rng.choice(sigs)
            head = bytearray(rng.randrange(256) for _ in range(s.offset)) + bytearray(s.value)
            if kind == 1:   # flip one bit somewhere in the signature's bytes
                j = rng.randrange(len(head))
                head[j] ^= 1 << rng.randrange(8)
            data = bytes(head) + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 20)))
            if rng.random() < 0.1:
                data = data[:rng.randrange(1, len(data) + 1)]   # cut short: must not match past the end
        sport = 1024 + i
        f = ether() / IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=sport, dport=9999) / data
        fastpath.run(bytes(f))
        want = l7.identify(tab, data, 0, UDP_L4)
        got = app_of(fastpath, "10.9.0.1", sport, "10.9.0.2", 9999, IPPROTO_UDP)
        assert got == want, f"payload {data.hex()}: kernel {got}, model {want}"
        seen.add(want)
    # the sample exercised every plugin and the no-match case
    assert seen == {0, *tab.ids.values()}


def test_a_new_plugin_is_identified_without_a_rebuild(fastpath, table_swap):
    # (MQTT-shaped, but naming a protocol "MQTX": the built-in MQTT's
    # signatures do not claim it.)
    proto = ProtocolPlugin("mqtx-test", never, signatures=(
        Signature(0, b"\x10", b"\xf0"), Signature(4, b"\x00\x04MQTX"),))
    tab = table_swap([*fastpath.protocols, proto])
    assert tab.ids["mqtx-test"] >= l7.PLUGIN_FIRST
    conn = TcpConn.make(fastpath, server=("10.0.0.2", 1883)).handshake()
    conn.send("c", "PA", data=bytes.fromhex("101000044d5154580402003c0004") + b"abcd")
    assert conn.entry().leaf.app == tab.ids["mqtx-test"]


def policy_conn(fp, port):
    conn = TcpConn.make(fp, client=("10.0.0.5", 40000), server=("10.0.1.5", port))
    conn.send("c", "S", Reason.PASS_POLICY_ALLOW)
    conn.send("s", "SA")
    conn.send("c", "A")
    return conn


def test_required_protocol_spoken_passes(app_policy):
    conn = policy_conn(app_policy, 443)
    conn.send("c", "PA", data=CLIENT_HELLO)
    conn.send("s", "PA", data=bytes.fromhex("160303005a020000560303") + bytes(40))
    e = conn.entry()
    assert e.table == FLOWS and e.leaf.app == app_policy.l7.ids["tls"] and e.leaf.app_req == e.leaf.app


def test_other_protocol_on_a_required_port_is_dropped_and_forgotten(app_policy):
    conn = policy_conn(app_policy, 443)
    conn.send("c", "PA", Reason.DROP_L7_APP_MISMATCH, data=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.entry() is None
    # its retransmission finds no session: no way around the check
    conn.send("c", "PA", Reason.DROP_TCP_NO_SESSION, data=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_unidentified_bytes_where_the_protocol_always_shows_are_dropped(app_policy):
    conn = policy_conn(app_policy, 443)
    conn.send("c", "PA", Reason.DROP_L7_APP_MISMATCH, data=b"\x00\x00\x00\x00 not tls")


def test_server_first_protocol_waits_for_the_server(app_policy):
    # MySQL: the client says nothing first; a client payload that is not
    # MySQL-shaped before the greeting is not judged (MySQL has no
    # client-side signature), the server's greeting decides.
    ok = policy_conn(app_policy, 3306)
    ok.send("s", "PA", data=FIRST_PAYLOADS["mysql"][1])
    assert ok.entry().leaf.app == app_policy.l7.ids["mysql"]

    bad = TcpConn.make(app_policy, client=("10.0.0.5", 40001), server=("10.0.1.5", 3306))
    bad.send("c", "S", Reason.PASS_POLICY_ALLOW)
    bad.send("s", "SA")
    bad.send("c", "A")
    bad.send("s", "PA", Reason.DROP_L7_APP_MISMATCH, data=b"SSH-2.0-OpenSSH_9.2\r\n")
    assert bad.entry() is None


def test_flows_without_a_requirement_are_identified_not_judged(app_policy):
    conn = policy_conn(app_policy, 8080)
    conn.send("c", "PA", data=b"SSH-2.0-OpenSSH_9.2\r\n")
    assert conn.entry().leaf.app == app_policy.l7.ids["ssh"] and conn.entry().leaf.app_req == 0


def test_udp_requirement(app_policy):
    q = bytes.fromhex("abcd01000001000000000000") + b"\x01a\x00\x00\x01\x00\x01"
    good = ether() / IP(src="10.0.0.5", dst="10.0.1.5") / UDP(sport=5000, dport=53) / q
    expect(app_policy, good, Reason.PASS_POLICY_ALLOW)
    bad = ether() / IP(src="10.0.0.5", dst="10.0.1.5") / UDP(sport=5001, dport=53) / b"SSH-2.0-x\r\n"
    expect(app_policy, bad, Reason.DROP_L7_APP_MISMATCH)
    assert entry(app_policy, "10.0.0.5", 5001, "10.0.1.5", 53, IPPROTO_UDP) is None


# The first payload's check runs in the entry program on the session the
# IPv4 lane found (fastpath.c ms_lane_first_payload), in the TCP stage on
# the session tracking holds (fastpath.c ms_stage_tcp), or in the payload
# stage when tracking moved the session (the handshake's last ACK carrying
# data: promoted to ms_flows in the same packet). Either way the check
# lands on the session as it is now, in the table it is in.

def test_first_payload_on_the_handshakes_last_ack(app_policy):
    conn = TcpConn.make(app_policy, client=("10.0.0.5", 40010), server=("10.0.1.5", 8080))
    conn.send("c", "S", Reason.PASS_POLICY_ALLOW)
    conn.send("s", "SA")
    conn.send("c", "PA", data=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")   # promoted and identified
    e = conn.entry()
    assert e.table == FLOWS and e.leaf.app == app_policy.l7.ids["http"] and e.leaf.l7_seen == 1

    bad = TcpConn.make(app_policy, client=("10.0.0.5", 40011), server=("10.0.1.5", 443))
    bad.send("c", "S", Reason.PASS_POLICY_ALLOW)
    bad.send("s", "SA")
    bad.send("c", "PA", Reason.DROP_L7_APP_MISMATCH, data=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert bad.entry() is None


def test_first_payload_of_a_reused_port(app_policy):
    """A new connection on a closed one's ports takes its entry in ms_flows
    (conntrack.h): identified there, and removed from there on a mismatch."""
    old = policy_conn(app_policy, 443)
    old.send("c", "PA", data=CLIENT_HELLO)
    old.send("c", "RA")
    assert old.entry().table == FLOWS
    again = TcpConn.make(app_policy, client=("10.0.0.5", 40000), server=("10.0.1.5", 443),
                         isn=(old.c.nxt + 100_000, 9_000_000))
    again.send("c", "S")
    again.send("s", "SA")
    again.send("c", "A")
    e = again.entry()
    assert e.table == FLOWS and e.leaf.app == 0 and e.leaf.l7_seen == 0   # a new session's L7 state
    again.send("c", "PA", Reason.DROP_L7_APP_MISMATCH, data=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert again.entry() is None
