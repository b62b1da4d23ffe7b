"""Session tracking end to end: real clients through the lab gateway."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from appliance.lab import CLIENT_V4, GW_IFACES, SERVER_V4, HttpServer, Lab
from datapath import attach
from datapath.enums import CtState, Direction, Reason
from datapath.flows import addr_text
from datapath.sessions import session_items

pytestmark = pytest.mark.lab

ECHO_PORT = 5201


@pytest.fixture
def lab_attached(fastpath):
    with Lab() as lab:
        attach.attach(fastpath, list(GW_IFACES), lab.gateway)
        try:
            yield lab, fastpath
        finally:
            attach.detach(list(GW_IFACES), lab.gateway)


def tcp_sessions(fp, port: int) -> list[tuple[str, object, object]]:
    """(table, key, value) of TCP sessions with ``port`` at either end."""
    out = []
    for name, k, v in session_items(fp):
        if k.proto == 6 and port in (socket.ntohs(k.port_lo), socket.ntohs(k.port_hi)):
            out.append((name, k, v))
    return out


def test_curl_walks_the_states(lab_attached):
    lab, fp = lab_attached
    # A SYN to an address nobody answers stays half-open: SYN_SENT.
    lab.run(lab.client, ["curl", "-s", "--max-time", "1", "http://10.77.2.99:8081/"], check=False)
    (half,) = tcp_sessions(fp, 8081)
    assert half[0] == "ms_halfopen" and half[2].state == CtState.CT_SYN_SENT

    with HttpServer(lab):
        r = lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                 f"http://{SERVER_V4}:8080/"])
        assert r.stdout == "200"
    # curl returned; the last ACK of the close may still be in flight.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not [
            s for s in tcp_sessions(fp, 8080) if s[2].state in (CtState.CT_TIME_WAIT, CtState.CT_CLOSE)]:
        time.sleep(0.05)
    (done,) = tcp_sessions(fp, 8080)
    table, k, v = done
    # Handshake completed (promoted out of the half-open table), then a
    # clean close: both FINs acknowledged.
    assert table == "ms_flows"
    assert v.state in (CtState.CT_TIME_WAIT, CtState.CT_CLOSE)
    ends = {addr_text(k.addr_lo), addr_text(k.addr_hi)}
    assert ends == {CLIENT_V4, SERVER_V4}
    assert v.packets[0] >= 4 and v.packets[1] >= 4
    # The L7 stage saw both sides' first payload and named the protocol.
    assert v.l7_seen == 3 and v.app == fp.l7.ids["http"]
    counts = fp.counters()
    assert not [r for (_, r) in counts if Reason(r).name.startswith("DROP_TCP")], counts


INJECT = r"""
import sys
from scapy.all import IP, TCP, send
src, dst, sport, dport, seq = sys.argv[1:6]
send(IP(src=src, dst=dst) / TCP(sport=int(sport), dport=int(dport), flags="R", seq=int(seq)),
     iface="eth0", verbose=False)
"""


# One echo connection whose life the test holds: it stays open until the
# test ends it, so nothing but the injected RST could end it early (iperf3
# ends its data connection with a RST of its own, which raced the check).
ECHO_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
while True:
    b = c.recv(4096)
    if not b:
        break
    c.sendall(b)
"""
ECHO_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
print("connected", c.getsockname()[1], flush=True)
for n, _ in enumerate(sys.stdin):
    msg = b"%015d\n" % n
    try:
        c.sendall(msg)
        got = b""
        while len(got) < len(msg):
            b = c.recv(len(msg) - len(got))
            if not b:
                raise ConnectionError("closed by peer")
            got += b
        print("ok" if got == msg else "mismatch", flush=True)
    except (OSError, ConnectionError) as e:
        print("fail", type(e).__name__, flush=True)
"""


def test_connection_survives_out_of_window_rst(lab_attached):
    lab, fp = lab_attached
    server = lab.popen(lab.server, [sys.executable, "-c", ECHO_SERVER, SERVER_V4, str(ECHO_PORT)],
                       stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert server.stdout.readline().strip() == "listening"
        client = lab.popen(lab.client, [sys.executable, "-c", ECHO_CLIENT, SERVER_V4, str(ECHO_PORT)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = client.stdout.readline().split()
        assert hello and hello[0] == "connected", hello
        cport = int(hello[1])

        def echo() -> str:
            client.stdin.write("x\n")
            client.stdin.flush()
            return client.stdout.readline().strip()

        assert echo() == "ok"
        (table, k, v), = [s for s in tcp_sessions(fp, ECHO_PORT)
                          if cport in (socket.ntohs(s[1].port_lo), socket.ntohs(s[1].port_hi))]
        assert table == "ms_flows" and v.state == CtState.CT_ESTABLISHED
        lo, hi = (addr_text(k.addr_lo), socket.ntohs(k.port_lo)), (addr_text(k.addr_hi), socket.ntohs(k.port_hi))
        cli_ep = lo if lo[0] == CLIENT_V4 else hi
        srv_ep = hi if cli_ep is lo else lo
        # The client's side of the window: seq far outside it.
        side = v.tcp[1] if v.initiator_is_hi != (cli_ep is hi) else v.tcp[0]
        bogus = (side.end + (1 << 30)) & 0xFFFFFFFF
        key = (Direction.DIR_INGRESS, Reason.DROP_TCP_OUT_OF_WINDOW)
        before = fp.counters().get(key, (0, 0))[0]
        lab.run(lab.client, [sys.executable, "-c", INJECT, cli_ep[0], srv_ep[0], str(cli_ep[1]),
                             str(srv_ep[1]), str(bogus)])
        # The gateway handles the RST in softirq, maybe after the send
        # returned: wait for its count (bounded), then it must be exactly one.
        deadline = time.monotonic() + 30
        while fp.counters().get(key, (0, 0))[0] == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fp.counters()[key][0] == before + 1
        after = [s for s in tcp_sessions(fp, ECHO_PORT)
                 if s[1].port_lo == k.port_lo and s[1].port_hi == k.port_hi]
        assert after and after[0][2].state == CtState.CT_ESTABLISHED
        # The server never saw the RST: the same connection still echoes.
        assert echo() == "ok", "the RST got through"
    finally:
        for p in (client, server):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)

