"""The user-space sweeper against the real kernel program.

Sessions are made by running real packets through the loaded program
(BPF_PROG_TEST_RUN): a UDP request creates an ms_halfopen entry, its reply
promotes it into ms_flows. Short UDP timeouts and a real sleep make some of
them expire; the sweeper must delete exactly those, account for what it
deleted from ms_flows in ms_pressure_user, and re-arm the kernel's pressure
alert once usage is back under the threshold.
"""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from datapath import bpfsys
from datapath.config import DatapathConfig, Timeouts
from datapath.enums import Direction
from datapath.loader import TC_ACT_OK
from datapath.pressure import read_pressure
from datapath.sessions import AttachedBuild, layouts
from datapath.sweeper import Sweeper

CLIENT, SERVER = "10.9.0.1", "10.9.0.2"
SERVER_PORT = 53
MACS = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
# The UDP header starts after Ethernet (14) and a 20-byte IPv4 header.
UDP_OFF = 34


def frame(src: str, sport: int, dst: str, dport: int) -> bytearray:
    # checksum 0: "no checksum" in IPv4 UDP, so ports can be patched in place
    return bytearray(bytes(Ether(**MACS) / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport, chksum=0)
                           / Raw(b"q" * 16)))


REQUEST = frame(CLIENT, 1, SERVER, SERVER_PORT)
REPLY = frame(SERVER, SERVER_PORT, CLIENT, 1)


def run(fp, pkt: bytearray) -> None:
    assert fp.run(bytes(pkt), Direction.DIR_INGRESS).action == TC_ACT_OK


def request(fp, client_port: int) -> None:
    REQUEST[UDP_OFF:UDP_OFF + 2] = client_port.to_bytes(2, "big")
    run(fp, REQUEST)


def reply(fp, client_port: int) -> None:
    REPLY[UDP_OFF + 2:UDP_OFF + 4] = client_port.to_bytes(2, "big")
    run(fp, REPLY)


def open_flow(fp, client_port: int) -> None:
    """A request and its reply: an ms_flows entry."""
    request(fp, client_port)
    reply(fp, client_port)


def client_ports(fp, table: str) -> set[int]:
    out = set()
    for k in fp.table(table).keys():
        ports = {socket.ntohs(k.port_lo), socket.ntohs(k.port_hi)}
        out |= ports - {SERVER_PORT}
    return out


def pressure(fp):
    t = fp.table
    return read_pressure(t("ms_pressure").map_fd, t("ms_pressure_user").map_fd, t("ms_pressure").Leaf,
                         t("ms_pressure_user").Leaf, fp.config.flow_table_size, fp.runtime.pressure_pct)


def short_udp(seconds: float, **kw) -> DatapathConfig:
    return DatapathConfig(timeouts=Timeouts(udp_unreplied=seconds, udp_replied=seconds), **kw)


def make_old_and_fresh(fp, timeout: float = 0.4):
    """Three flows and three half-open entries past their timeout, two of
    each fresh. Returns the fresh ports (flows, half-open)."""
    fp.apply_runtime(short_udp(timeout))
    for p in (1000, 1001, 1002):
        open_flow(fp, p)
    for p in (2000, 2001, 2002):
        request(fp, p)
    time.sleep(timeout + 0.2)
    for p in (1100, 1101):
        open_flow(fp, p)
    for p in (2100, 2101):
        request(fp, p)
    assert client_ports(fp, "ms_flows") == {1000, 1001, 1002, 1100, 1101}
    assert client_ports(fp, "ms_halfopen") == {2000, 2001, 2002, 2100, 2101}
    return {1100, 1101}, {2100, 2101}


def test_sweep_deletes_exactly_the_expired_entries(fastpath):
    fresh_flows, fresh_half = make_old_and_fresh(fastpath)
    assert pressure(fastpath).inserted == 5

    st = Sweeper.for_fastpath(fastpath).sweep()

    assert (st.scanned, st.scanned_flows, st.scanned_halfopen) == (10, 5, 5)
    assert (st.expired_flows, st.expired_halfopen) == (3, 3)
    assert client_ports(fastpath, "ms_flows") == fresh_flows
    assert client_ports(fastpath, "ms_halfopen") == fresh_half
    p = pressure(fastpath)
    # what the sweeper took out of ms_flows, and only that, is in ms_pressure_user
    assert (p.deleted_user, p.deleted_kernel) == (3, 0)
    assert p.entries == st.entries_after == len(fastpath.table("ms_flows")) == 2
    # no alert was ever sent: nothing to re-arm
    assert not st.rearmed and p.gen == 0

    again = Sweeper.for_fastpath(fastpath).sweep()
    assert (again.expired_flows, again.expired_halfopen, again.scanned) == (0, 0, 4)
    assert pressure(fastpath).deleted_user == 3


def test_swept_flow_starts_over_in_the_kernel(fastpath):
    fastpath.apply_runtime(short_udp(0.3))
    open_flow(fastpath, 3000)
    time.sleep(0.5)
    assert Sweeper.for_fastpath(fastpath).sweep().expired_flows == 1
    # the next request of that 5-tuple is a new flow: half-open again, and
    # the kernel's count of entries agrees with the table
    request(fastpath, 3000)
    assert client_ports(fastpath, "ms_halfopen") == {3000}
    reply(fastpath, 3000)
    p = pressure(fastpath)
    assert (p.inserted, p.deleted_user, p.deleted_kernel, p.entries) == (2, 1, 0, 1)


def test_small_batches_walk_and_delete_the_same(fastpath):
    fresh_flows, fresh_half = make_old_and_fresh(fastpath)
    st = Sweeper.for_fastpath(fastpath, batch=3).sweep()
    assert (st.expired_flows, st.expired_halfopen, st.scanned) == (3, 3, 10)
    assert client_ports(fastpath, "ms_flows") == fresh_flows
    assert client_ports(fastpath, "ms_halfopen") == fresh_half


def test_sweeper_on_maps_found_by_id(fastpath):
    """The CLI's way: program id -> map ids -> fds, layouts from a compile."""
    types = layouts()  # compiles (a second or so): before the clock matters
    prog_id = bpfsys.prog_info_by_fd(fastpath.prog_fd(Direction.DIR_INGRESS)).id
    with AttachedBuild(prog_id) as build:
        sw = Sweeper.for_build(build, types)
        assert sw.capacity == fastpath.config.flow_table_size
        fresh_flows, fresh_half = make_old_and_fresh(fastpath)
        st = sw.sweep()
    assert (st.expired_flows, st.expired_halfopen) == (3, 3)
    assert client_ports(fastpath, "ms_flows") == fresh_flows
    assert pressure(fastpath).deleted_user == 3


def test_delete_goes_on_past_a_key_already_gone(fastpath):
    for p in (4000, 4001, 4002):
        open_flow(fastpath, p)
    tab = fastpath.table("ms_flows")
    keys = sorted(tab.keys(), key=lambda k: bytes(k))
    missing = tab.Key()
    missing.proto = 17  # an all-zero key: no such session
    buf = np.frombuffer(b"".join(bytes(k) for k in (keys[0], missing, keys[1], keys[2])),
                        dtype=np.dtype((np.void, len(bytes(missing)))))
    assert Sweeper.for_fastpath(fastpath)._delete(tab.map_fd, buf.copy()) == 3
    assert len(tab) == 0


def test_alert_is_rearmed_when_usage_falls_under_the_threshold(fastpath):
    cap = fastpath.config.flow_table_size
    # pressure_pct 1: the alert fires at the first insert that makes the
    # table 1% full (the kernel's test: entries * 100 >= capacity * pct)
    crossing = -(-cap // 100)
    fastpath.apply_runtime(short_udp(30, pressure_pct=1))

    def fill(base):
        for i in range(crossing):
            open_flow(fastpath, base + i)

    fill(10_000)
    p = pressure(fastpath)
    assert p.entries == crossing and p.over_threshold
    assert (p.alerts, p.alert_gen, p.gen) == (1, 1, 0)
    # more inserts over the threshold: no second alert in the same crossing
    open_flow(fastpath, 9_000)
    assert pressure(fastpath).alerts == 1

    sw = Sweeper.for_fastpath(fastpath)
    st = sw.sweep()
    assert st.expired_flows == 0 and not st.rearmed  # still over: not re-armed
    assert pressure(fastpath).gen == 0

    # shorter timeouts take effect at once (a runtime setting); all expire
    fastpath.apply_runtime(short_udp(0.2, pressure_pct=1))
    time.sleep(0.4)
    st = sw.sweep()
    assert st.expired_flows == crossing + 1 and st.entries_after == 0 and st.rearmed
    p = pressure(fastpath)
    assert (p.gen, p.deleted_user, p.alert_armed) == (1, crossing + 1, True)
    # a sweep under the threshold with the alert already armed bumps nothing
    assert not sw.sweep().rearmed and pressure(fastpath).gen == 1

    # the next crossing alerts again
    fastpath.apply_runtime(short_udp(30, pressure_pct=1))
    fill(30_000)
    p = pressure(fastpath)
    assert (p.alerts, p.alert_gen, p.gen) == (2, 2, 1)


def test_sweeper_needs_a_threshold():
    with pytest.raises(ValueError):
        Sweeper(0, 0, 0, 0, 0, None, None, 1024, None, pressure_type=None, pressure_user_type=None)


def test_bench_sweep_quick_runs():
    """bench/sweep.py checks its own sweeps (half deleted, counts agree)."""
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "bench" / "sweep.py"
    r = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| half expired | 100,000 | 50,000 |" in r.stdout
    assert "| nothing expired | 100,000 | 0 |" in r.stdout
    assert "Calico" in r.stdout
