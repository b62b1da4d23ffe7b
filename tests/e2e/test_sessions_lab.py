"""Session tracking end to end: real clients through the lab gateway."""
from __future__ import annotations

import socket
import sys
import time

import pytest

from appliance.lab import CLIENT_V4, GW_IFACES, SERVER_V4, HttpServer, Lab
from datapath import attach
from datapath.enums import CtState, Direction, Reason
from datapath.flows import addr_text

pytestmark = pytest.mark.lab

IPERF_PORT = 5201


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
    for name in ("ms_flows", "ms_halfopen"):
        for k, v in fp.table(name).items():
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
    time.sleep(0.2)
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


def test_iperf3_survives_out_of_window_rst(lab_attached):
    lab, fp = lab_attached
    server = lab.popen(lab.server, ["iperf3", "-s", "-1", "-B", SERVER_V4, "-p", str(IPERF_PORT)])
    try:
        time.sleep(0.3)
        client = lab.popen(lab.client, ["iperf3", "-c", SERVER_V4, "-p", str(IPERF_PORT), "-t", "3"])
        # Wait for the data connection (the one carrying the bytes).
        deadline = time.monotonic() + 5
        data = None
        while time.monotonic() < deadline and data is None:
            time.sleep(0.3)
            est = [s for s in tcp_sessions(fp, IPERF_PORT)
                   if s[0] == "ms_flows" and s[2].state == CtState.CT_ESTABLISHED]
            if len(est) >= 2:
                data = max(est, key=lambda s: s[2].bytes[0] + s[2].bytes[1])
        assert data is not None, "iperf3 data connection never reached ESTABLISHED"
        _, k, v = data
        lo, hi = (addr_text(k.addr_lo), socket.ntohs(k.port_lo)), (addr_text(k.addr_hi), socket.ntohs(k.port_hi))
        cli_ep = lo if lo[0] == CLIENT_V4 else hi
        srv_ep = hi if cli_ep is lo else lo
        # The client's side of the window: seq far outside it.
        side = v.tcp[1] if v.initiator_is_hi != (cli_ep is hi) else v.tcp[0]
        bogus = (side.end + (1 << 30)) & 0xFFFFFFFF
        lab.run(lab.client, [sys.executable, "-c", INJECT, cli_ep[0], srv_ep[0], str(cli_ep[1]),
                             str(srv_ep[1]), str(bogus)])
        time.sleep(0.2)
        assert fp.counters()[(Direction.DIR_INGRESS, Reason.DROP_TCP_OUT_OF_WINDOW)][0] >= 1
        # Still established after the RST (iperf3 itself may end the data
        # connection with a RST when the test is over, so look now).
        after = [s for s in tcp_sessions(fp, IPERF_PORT)
                 if s[1].port_lo == k.port_lo and s[1].port_hi == k.port_hi]
        assert after and after[0][2].state == CtState.CT_ESTABLISHED
        assert client.wait(timeout=20) == 0, "iperf3 failed: the RST got through"
    finally:
        for p in (server,):
            if p.poll() is None:
                p.kill()
