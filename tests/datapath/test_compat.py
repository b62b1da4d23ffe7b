"""Every kernel-feature fallback, forced with the configuration switch on
this kernel (which has all the features), still loads and works: the
payload records come through a perf buffer, the half-open table has one
shared LRU list, the XDP blocklist has no bloom pre-check."""
from __future__ import annotations

import pytest

from appliance.policyfile import compile_text
from datapath import bpfsys
from datapath.config import Compat, DatapathConfig
from datapath.enums import CtState, Reason
from datapath.policy_maps import PolicyMaps
from datapath.sessions import WIDE_KEY_MAP, layouts_of
from packets_ct import TcpConn
from slowpath.records import RecordDecoder, VerdictWriter, open_payload_channel, record_type

POLICY = """
defaults: {ingress: allow, egress: allow}
rules:
  - {from: any, to: any, proto: tcp, ports: [80], action: inspect, inspect: {what: [dpi]}}
"""


@pytest.fixture(scope="module")
def fallback_build():
    from datapath.loader import FastPath
    fp = FastPath(DatapathConfig(compat=Compat(ringbuf="off", lru_per_cpu="off", bloom="off", coarse_clock="off")))
    yield fp
    fp.close()


def test_features_say_why(fallback_build):
    f = fallback_build.features
    assert (f.ringbuf, f.lru_per_cpu, f.bloom, f.coarse_clock) == (False, False, False, False)
    assert all("off in the configuration" in why for why in f.why.values())


def test_auto_uses_what_this_kernel_has(fastpath):
    f = fastpath.features
    assert f.ringbuf and f.lru_per_cpu and f.coarse_clock and "kernel has it" in f.why["ringbuf"]


def test_halfopen_lru_without_per_cpu_lists(fallback_build, fastpath):
    def flags(fp):
        return bpfsys.map_info_by_fd(fp.table("ms_halfopen4").map_fd).flags & bpfsys.map_info_by_fd(
            fp.table("ms_halfopen6").map_fd).flags
    assert flags(fastpath) & 2 and not flags(fallback_build) & 2      # BPF_F_NO_COMMON_LRU
    fallback_build.reset()
    c = TcpConn.make(fallback_build).handshake()
    assert c.state() == CtState.CT_ESTABLISHED


def test_payload_records_through_the_perf_buffer(fallback_build):
    fp = fallback_build
    fp.reset()
    _, pol = compile_text(POLICY, "compat.yaml")
    PolicyMaps.for_fastpath(fp).apply(pol)
    src, reader_class = open_payload_channel(fp)
    assert type(src).__name__ == "PerfBuffer"
    types = layouts_of(fp)
    dec = RecordDecoder(record_type({"ms_insp_scratch": (None, fp.table("ms_insp_scratch").Leaf)}),
                        types[WIDE_KEY_MAP][0])
    VerdictWriter(fp.table("ms_verdicts").map_fd, fp.table("ms_slowpath").map_fd,
                  fp.table("ms_verdicts").Leaf, fp.table("ms_slowpath").Leaf).heartbeat(1)
    c = TcpConn.make(fp, server=("10.0.0.2", 80))
    c.send("c", "S", Reason.PASS_POLICY_INSPECT)
    c.send("s", "SA")
    c.send("c", "A")
    c.send("c", "PA", Reason.PASS_INSPECT_COPIED, data=b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    try:
        recs = [dec.decode(r) for r in src.drain()]
        assert [r.data for r in recs] == [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"] and src.lost == 0
    finally:
        src.close()


def test_blocklist_without_bloom_filter():
    from datapath.blocklist import PATH_LPM, Blocklist, BlocklistConfig
    bl = Blocklist(BlocklistConfig(force_no_bloom=True))
    try:
        assert bl.path == PATH_LPM
    finally:
        bl.close()


def test_perf_buffer_reader_on_the_event_loop(fallback_build):
    """The daemon's path with the fallback: the CPU rings' fds on uvloop."""
    import asyncio
    import threading

    import uvloop
    fp = fallback_build
    fp.reset()
    _, pol = compile_text(POLICY, "compat.yaml")
    PolicyMaps.for_fastpath(fp).apply(pol)
    VerdictWriter(fp.table("ms_verdicts").map_fd, fp.table("ms_slowpath").map_fd,
                  fp.table("ms_verdicts").Leaf, fp.table("ms_slowpath").Leaf).heartbeat(1)
    src, reader_class = open_payload_channel(fp)
    got = []
    threads = threading.active_count()

    async def main():
        reader = reader_class(src, got.append)
        reader.start(asyncio.get_running_loop())
        c = TcpConn.make(fp, client=("10.0.0.1", 41000), server=("10.0.0.2", 80))
        c.send("c", "S", Reason.PASS_POLICY_INSPECT)
        c.send("s", "SA")
        c.send("c", "A")
        c.send("c", "PA", Reason.PASS_INSPECT_COPIED, data=b"x" * 100)
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        reader.stop()
    try:
        uvloop.run(main())
    finally:
        src.close()
    assert len(got) == 1 and threading.active_count() == threads
