"""The sweeper, both ways (the kernel sweep of bpf/lib/sweep.h and the
user-space batch sweep), against the real kernel program.

Sessions are made by running real packets through the loaded program
(BPF_PROG_TEST_RUN): a UDP request creates an ms_halfopen entry, its reply
promotes it into ms_flows. Short UDP timeouts and a real sleep make some of
them expire; each sweep must delete exactly those, account for what it
deleted in ms_pressure_user (ms_flows: deleted, ms_halfopen:
halfopen_deleted), and re-arm the kernel's pressure alert once usage is back
under the threshold. Where a test needs an exact nanosecond boundary (age
equal to the timeout), entries are written into the maps instead, and both
sweeps must agree with ms_ct_expired()'s rule on every state.
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
from datapath.enums import CtState, Direction
from datapath.errors import MicrosegError
from datapath.loader import TC_ACT_OK, FastPath, LinkError, link_with_callback
from datapath.pressure import read_pressure
from datapath.sessions import FAMILY_TABLES, AttachedBuild, layouts, read_timeouts_ns, session_clock_ns
from datapath.source import MAIN_SOURCE, program_text
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


def maps_of(table: str) -> tuple[str, ...]:
    """The maps of session table ``table`` (both families), or map ``table`` alone."""
    return FAMILY_TABLES.get(table, (table,))


def client_ports(fp, table: str) -> set[int]:
    out = set()
    for m in maps_of(table):
        for k in fp.table(m).keys():
            ports = {socket.ntohs(k.port_lo), socket.ntohs(k.port_hi)}
            out |= ports - {SERVER_PORT}
    return out


def entries(fp, table: str) -> int:
    return sum(len(fp.table(m)) for m in maps_of(table))


def pressure(fp):
    t = fp.table
    return read_pressure(t("ms_pressure").map_fd, t("ms_pressure_user").map_fd, t("ms_pressure").Leaf,
                         t("ms_pressure_user").Leaf, fp.config.flow_table_size, fp.runtime.pressure_pct)


def pressure_user(fp):
    t = fp.table("ms_pressure_user")
    return t[t.Key(0)]


def halfopen_evicted(fp) -> int:
    """LRU evictions of ms_halfopen as user space derives them (maps.h):
    inserted - removed by the kernel - deleted by the sweeper - present."""
    t = fp.table("ms_pressure")
    pr = t[t.Key(0)]
    present = entries(fp, "ms_halfopen")
    return pr.halfopen_inserted - pr.halfopen_removed - pressure_user(fp).halfopen_deleted - present


@pytest.fixture(params=["kernel", "batch"])
def method(request):
    return request.param


def short_udp(seconds: float, **kw) -> DatapathConfig:
    return DatapathConfig(timeouts=Timeouts(udp_unreplied=seconds, udp_replied=seconds), **kw)


# Long enough that the fresh entries stay fresh until the caller's sweep
# even when the machine is busy with other work.
FRESH_FOR_S = 2.0


def make_old_and_fresh(fp, timeout: float = FRESH_FOR_S):
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


def test_kernel_sweep_is_loaded_and_chosen(fastpath):
    """This kernel (6.18) and BCC 0.26 with the loader's linking: the fast
    path build carries a loaded kernel sweep, and the sweeper picks it."""
    assert fastpath.sweep is not None, fastpath.sweep_error
    st = Sweeper.for_fastpath(fastpath).sweep()
    assert (st.method, st.kernel_unavailable) == ("kernel", None)
    info = bpfsys.prog_info_by_fd(fastpath.sweep.fd)
    assert info.name == "ms_sweep"
    assert Sweeper.for_fastpath(fastpath, method="batch").sweep().method == "batch"


def test_sweep_deletes_exactly_the_expired_entries(fastpath, method):
    fresh_flows, fresh_half = make_old_and_fresh(fastpath)
    assert pressure(fastpath).inserted == 5

    st = Sweeper.for_fastpath(fastpath, method=method).sweep()

    assert st.method == method
    assert (st.scanned, st.scanned_flows, st.scanned_halfopen) == (10, 5, 5)
    assert (st.expired_flows, st.expired_halfopen) == (3, 3)
    assert client_ports(fastpath, "ms_flows") == fresh_flows
    assert client_ports(fastpath, "ms_halfopen") == fresh_half
    p = pressure(fastpath)
    # what the sweep took out of ms_flows, and only that, is in ms_pressure_user
    assert (p.deleted_user, p.deleted_kernel) == (3, 0)
    assert p.entries == st.entries_after == entries(fastpath, "ms_flows") == 2
    # ... and what it took out of ms_halfopen: no eviction is made up
    assert pressure_user(fastpath).halfopen_deleted == 3
    assert halfopen_evicted(fastpath) == 0
    # no alert was ever sent: nothing to re-arm
    assert not st.rearmed and p.gen == 0

    again = Sweeper.for_fastpath(fastpath, method=method).sweep()
    assert (again.expired_flows, again.expired_halfopen, again.scanned) == (0, 0, 4)
    assert pressure(fastpath).deleted_user == 3
    assert pressure_user(fastpath).halfopen_deleted == 3


def test_swept_flow_starts_over_in_the_kernel(fastpath, method):
    fastpath.apply_runtime(short_udp(0.3))
    open_flow(fastpath, 3000)
    time.sleep(0.5)
    assert Sweeper.for_fastpath(fastpath, method=method).sweep().expired_flows == 1
    # the next request of that 5-tuple is a new flow: half-open again, and
    # the kernel's count of entries agrees with the table
    request(fastpath, 3000)
    assert client_ports(fastpath, "ms_halfopen") == {3000}
    reply(fastpath, 3000)
    p = pressure(fastpath)
    assert (p.inserted, p.deleted_user, p.deleted_kernel, p.entries) == (2, 1, 0, 1)


def test_lazy_expiry_and_the_sweep_count_each_entry_once(fastpath, method):
    """A packet of an expired flow makes the kernel delete it on lookup
    (ms_pressure.deleted) before the sweep runs: the sweep must not count it
    again, and the half-open bookkeeping must still balance."""
    fastpath.apply_runtime(short_udp(0.3))
    for p in (5000, 5001, 5002):
        open_flow(fastpath, p)
    request(fastpath, 5100)
    time.sleep(0.5)
    request(fastpath, 5000)   # lazy expiry of the 5000 flow; a new half-open entry
    request(fastpath, 5100)   # lazy expiry of the half-open 5100; a new one
    p = pressure(fastpath)
    assert (p.deleted_kernel, p.deleted_user, p.entries) == (1, 0, 2)

    st = Sweeper.for_fastpath(fastpath, method=method).sweep()

    assert st.method == method
    assert (st.expired_flows, st.expired_halfopen) == (2, 0)
    assert client_ports(fastpath, "ms_flows") == set()
    assert client_ports(fastpath, "ms_halfopen") == {5000, 5100}
    p = pressure(fastpath)
    assert (p.inserted, p.deleted_kernel, p.deleted_user, p.entries) == (3, 1, 2, 0)
    assert pressure_user(fastpath).halfopen_deleted == 0
    assert halfopen_evicted(fastpath) == 0


# Every state, and states no session should have (the kernel's fallback
# timeout applies to them).
BOUNDARY_STATES = [int(s) for s in CtState] + [len(CtState), 16, 200, 255]


def write_entries(fp, table: str, rows: list[tuple[int, int]], port_base: int) -> dict[int, tuple[int, int]]:
    """One entry per (state, last_seen_ns) row, keyed by its client port;
    every other one in the table's IPv6 map (all-zero addresses: any key
    is one to a map)."""
    out = {}
    for i, (state, last_seen) in enumerate(rows):
        tab = fp.table(maps_of(table)[i % 2])
        k = tab.Key()
        k.proto = 17
        k.port_lo = socket.htons(port_base + i)
        k.port_hi = socket.htons(SERVER_PORT)
        v = tab.Leaf()
        v.state = state
        v.last_seen_ns = last_seen % (1 << 64)
        v.first_seen_ns = v.last_seen_ns
        tab[k] = v
        out[port_base + i] = (state, last_seen)
    return out


def test_both_sweeps_expire_exactly_what_ms_ct_expired_does(fastpath):
    """At the nanosecond boundary, on every state, in both tables: an entry
    whose signed age is its state's timeout stays, one nanosecond older goes,
    one from the future (a packet after the sweep read the clock) stays.
    Entries are written into the maps: no sleep can land on a boundary."""
    tmo = read_timeouts_ns(fastpath.table("ms_timeouts").map_fd)
    now = session_clock_ns()
    rows = []
    for st in BOUNDARY_STATES:
        t = int(tmo[st])
        rows += [(st, now - t), (st, now - t - 1), (st, now + 5 * 10**9), (st, now - 2 * t - 7),
                 (st, now - (1 << 63) - 1)]   # an age past 2^63 ns: negative when signed, stays

    def expired(state, last_seen):   # ms_ct_expired(), in Python
        age = (now - last_seen) % (1 << 64)
        age = age - (1 << 64) if age >= 1 << 63 else age
        return age > int(tmo[state])

    results = {}
    for m in ("kernel", "batch"):
        fastpath.reset()
        flows = write_entries(fastpath, "ms_flows", rows, 20_000)
        half = write_entries(fastpath, "ms_halfopen", rows, 30_000)
        pr = fastpath.table("ms_pressure")
        v = pr.Leaf()
        v.inserted, v.halfopen_inserted = len(flows), len(half)
        pr[pr.Key(0)] = v

        st = Sweeper.for_fastpath(fastpath, method=m).sweep(now_ns=now)

        assert st.method == m
        keep_f = {p for p, row in flows.items() if not expired(*row)}
        keep_h = {p for p, row in half.items() if not expired(*row)}
        assert client_ports(fastpath, "ms_flows") == keep_f
        assert client_ports(fastpath, "ms_halfopen") == keep_h
        assert (st.expired_flows, st.expired_halfopen) == (len(flows) - len(keep_f), len(half) - len(keep_h))
        p = pressure(fastpath)
        assert (p.deleted_user, p.entries) == (len(flows) - len(keep_f), len(keep_f))
        assert pressure_user(fastpath).halfopen_deleted == len(half) - len(keep_h)
        results[m] = (keep_f, keep_h)
    assert results["kernel"] == results["batch"]
    # the rule was exercised both ways on every state
    assert len(results["kernel"][0]) == 3 * len(BOUNDARY_STATES)


def test_batch_sweep_when_the_kernel_sweep_is_missing(tmp_path):
    """A build without the sweep program (as when this kernel or BCC cannot
    have it): the sweeper falls back by itself and says why; asking for the
    kernel sweep is an error that says the same."""
    main = tmp_path / "fastpath.c"
    main.write_text(MAIN_SOURCE.read_text().replace('#include "sweep.h"\n', ""))
    cfg = short_udp(0.3, flow_table_size=1024, halfopen_table_size=256)
    fp = FastPath(cfg, text=program_text(main))
    try:
        assert fp.sweep is None and "no function ms_sweep" in fp.sweep_error
        open_flow(fp, 6000)
        request(fp, 6001)
        time.sleep(0.5)
        st = Sweeper.for_fastpath(fp).sweep()
        assert (st.method, st.expired_flows, st.expired_halfopen) == ("batch", 1, 1)
        assert "no function ms_sweep" in st.kernel_unavailable
        with pytest.raises(MicrosegError, match="kernel sweep is not available.*no function ms_sweep"):
            Sweeper.for_fastpath(fp, method="kernel")
    finally:
        fp.close()


def test_linker_refuses_a_callback_that_uses_a_map():
    """What BCC 0.26 leaves undone outside the registered function: a map
    used in the callback keeps BCC's placeholder fd; the linker says so
    instead of loading a program that would use the wrong map."""
    from bcc import BPF

    text = r'''
#include <uapi/linux/bpf.h>
BPF_ARRAY(other, __u64, 1);
BPF_HASH(h, __u32, __u64, 16);
static long (*fe)(void *map, void *cb, void *ctx, __u64 flags) = (void *)BPF_FUNC_for_each_map_elem;
static noinline __attribute__((section(".bpf.fn.walk"))) long cb(void *map, void *key, void *value, void *ctx)
{
    __u32 z = 0;
    __u64 *o = other.lookup(&z);
    if (o)
        (*o)++;
    return 0;
}
int walk(void *ctx)
{
    long x = 0;
    fe((void *)bpf_pseudo_fd(1, 0x4d530001), cb, &x, 0);
    return 0;
}
'''
    b = BPF(text=text.encode())
    try:
        h = b[b"h"]
        with pytest.raises(LinkError, match="cb refers to a map"):
            link_with_callback(b, "walk", "cb", 31, {0x4D530001: h.map_fd}, {h.map_fd})
    finally:
        b.cleanup()


def test_small_batches_walk_and_delete_the_same(fastpath):
    fresh_flows, fresh_half = make_old_and_fresh(fastpath)
    st = Sweeper.for_fastpath(fastpath, batch=3, method="batch").sweep()
    assert (st.expired_flows, st.expired_halfopen, st.scanned) == (3, 3, 10)
    assert client_ports(fastpath, "ms_flows") == fresh_flows
    assert client_ports(fastpath, "ms_halfopen") == fresh_half


def test_sweeper_on_maps_found_by_id(fastpath, method):
    """The CLI's way: program id -> map ids -> fds, layouts from a compile;
    the kernel sweep compiled on its own and loaded with the build's maps."""
    types = layouts()  # compiles (a second or so): before the clock matters
    prog_id = bpfsys.prog_info_by_fd(fastpath.prog_fd(Direction.DIR_INGRESS)).id
    with AttachedBuild(prog_id) as build:
        with Sweeper.for_build(build, types, method=method) as sw:
            assert sw.capacity == fastpath.config.flow_table_size
            fresh_flows, fresh_half = make_old_and_fresh(fastpath)
            st = sw.sweep()
    assert st.method == method
    assert (st.expired_flows, st.expired_halfopen) == (3, 3)
    assert client_ports(fastpath, "ms_flows") == fresh_flows
    assert client_ports(fastpath, "ms_halfopen") == fresh_half
    assert pressure(fastpath).deleted_user == 3
    assert pressure_user(fastpath).halfopen_deleted == 3


def test_delete_goes_on_past_a_key_already_gone(fastpath):
    for p in (4000, 4001, 4002):
        open_flow(fastpath, p)
    tab = fastpath.table("ms_flows4")
    keys = sorted(tab.keys(), key=lambda k: bytes(k))
    missing = tab.Key()
    missing.proto = 17  # an all-zero key: no such session
    buf = np.frombuffer(b"".join(bytes(k) for k in (keys[0], missing, keys[1], keys[2])),
                        dtype=np.dtype((np.void, len(bytes(missing)))))
    assert Sweeper.for_fastpath(fastpath)._delete(tab.map_fd, buf.copy(), len(bytes(missing))) == (3, {1})
    assert len(tab) == 0


def test_alert_is_rearmed_when_usage_falls_under_the_threshold(fastpath, method):
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

    sw = Sweeper.for_fastpath(fastpath, method=method)
    st = sw.sweep()
    assert st.method == method
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


def test_bench_sweep_quick_runs(tmp_path):
    """bench/sweep.py checks its own sweeps (half deleted, counts agree, the
    method asked for is the one that ran) and prints both side by side."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "bench" / "sweep.py"
    # its sweepers' lock files go to this test's run directory
    r = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, MICROSEG_RUN=str(tmp_path / "run")))
    assert r.returncode == 0, r.stdout + r.stderr
    for m in ("kernel", "batch"):
        assert f"| {m} | half expired | 100,000 | 50,000 |" in r.stdout
        assert f"| {m} | nothing expired | 100,000 | 0 |" in r.stdout
    assert "| kernel floor | empty callback walk | 100,000 | 0 |" in r.stdout
    # the same walk in memory order visited every entry (the bench checks the count)
    assert "| kernel floor | memory-order walk (an ARRAY of as many entries) | 100,000 | 0 |" in r.stdout
    assert "Calico" in r.stdout
    # the slot-array experiment (bench/sweep_slots.py): every loop, every pass
    # (the bench checks each pass's counts, its end records and freed slots)
    for loop in ("bpf_loop", "bpf_iter_num", "bpf_iter_num, batched"):
        assert f"| slot array, {loop} | nothing expired | 100,000 | 0 |" in r.stdout
        assert f"| slot array, {loop} | half expired, records written | 100,000 | 50,000 |" in r.stdout
        assert f"| slot array, {loop} | all expired, records written | 100,000 | 100,000 |" in r.stdout
    assert "| hash walk (bpf/lib/sweep.h, today) | all expired, records written | 100,000 | 100,000 |" in r.stdout
    assert "| one session |" in r.stdout and "| all sessions in turn (grain never crossed) |" in r.stdout
