"""Drop events: a dropped packet reaches ms_drop_ring (struct ms_drop_event),
rate-bounded in the kernel per (source address, reason), with what was not
sent counted and reported by the key's next event; a full ring is counted.

The limiter's one-second windows are not waited out: a test that needs the
next window moves the key's window start back in ms_drop_limit, which is
what the passing of a second does to it."""
from __future__ import annotations

import ctypes
import socket

import pytest
from scapy.layers.inet import IP, TCP

from appliance import droplog
from appliance.policyfile import compile_text
from datapath.config import DROP_EVENTS_PER_SEC, DatapathConfig
from datapath.enums import Direction, Reason
from datapath.policy_maps import PolicyMaps
from datapath.pressure import possible_cpus
from datapath.ringrecords import ringbuf_record_type
from packets_ct import ING, ether, expect, mapped
from slowpath.ringbuf import RingBuffer
from tests.eve_schemas import schema_errors

NSEC = 1_000_000_000

POLICY = """
defaults: {ingress: allow, egress: allow}
rules:
  - {name: no-ssh, from: any, to: any, proto: tcp, ports: [22], action: deny}
"""


def syn(src: str, dst: str = "10.2.0.10", sport: int = 40000, dport: int = 22, flags: str = "S") -> bytes:
    return bytes(ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=1000,
                                                     window=64240))


class Drops:
    """The session build's drop ring, read as the daemon reads it."""

    def __init__(self, fp):
        self.fp = fp
        table = fp.table("ms_drop_ring")
        self.decoder = droplog.DropDecoder(ringbuf_record_type(table, "ms_drop_event"))
        self.rb = RingBuffer(table.map_fd)
        self.rb.drain()            # what earlier tests' drops left

    def take(self) -> list[droplog.DropEvent]:
        return [self.decoder.decode(r) for r in self.rb.drain()]

    def stats(self) -> dict[str, int]:
        t = self.fp.table("ms_drop_stats")
        return droplog.read_drop_stats(t.map_fd, t.Leaf)

    def limiter(self, src: str, reason: Reason):
        t = self.fp.table("ms_drop_limit")
        k = t.Key()
        k.saddr = (ctypes.c_uint8 * 16)(*mapped(src))
        k.reason = int(reason)
        try:
            return k, t[k]
        except KeyError:
            return k, None

    def next_window(self, src: str, reason: Reason) -> None:
        """As if the key's second were over."""
        t = self.fp.table("ms_drop_limit")
        k, v = self.limiter(src, reason)
        assert v is not None
        v.window_ns = max(0, v.window_ns - 2 * NSEC)
        t[k] = v


@pytest.fixture
def drops(fastpath):
    PolicyMaps.for_fastpath(fastpath).apply(compile_text(POLICY, "policy.yaml")[1])
    # a flood of SYNs to one destination: the SYN budget is not under test
    fastpath.apply_runtime(DatapathConfig(syn_dst_rate=0, syn_global_rate=0))
    d = Drops(fastpath)
    try:
        yield d
    finally:
        d.rb.close()


def windows(events) -> int:
    """How many of the limiter's one-second windows the events span at most."""
    n, start = 0, None
    for ts in sorted(e.ts for e in events):
        if start is None or ts - start >= 1.0:
            n, start = n + 1, ts
    return n


def test_a_policy_denied_packet_emits_one_event(drops):
    frame = syn("10.1.1.10")
    expect(drops.fp, frame, Reason.DROP_POLICY_DENY)
    (ev,) = drops.take()
    assert ev.reason == Reason.DROP_POLICY_DENY and ev.hook == Direction.DIR_INGRESS
    assert (ev.src_ip, ev.src_port, ev.dest_ip, ev.dest_port, ev.proto) == \
        ("10.1.1.10", 40000, "10.2.0.10", 22, socket.IPPROTO_TCP)
    assert ev.tcp_flags == 0x02 and ev.tcpseq == 1000 and ev.tcpwin == 64240
    assert ev.length == len(frame)
    assert ev.rule_id == 1              # no-ssh, the policy's first rule
    assert ev.suppressed == 0
    assert drops.stats()["events"] == 1

    rec = droplog.drop_record(ev, "eth-test")
    assert schema_errors(rec) == []        # Suricata's schema and the project's overlay
    assert rec["event_type"] == "drop" and rec["drop"]["reason"] == "DROP_POLICY_DENY"
    assert rec["drop"]["syn"] is True and rec["drop"]["ack"] is False and rec["drop"]["len"] == len(frame)
    assert (rec["src_ip"], rec["dest_port"], rec["proto"], rec["in_iface"]) == ("10.1.1.10", 22, "TCP", "eth-test")
    assert {"suppressed": "0"} in rec["metadata"]["pktvars"]


def test_an_allowed_packet_emits_nothing(drops):
    expect(drops.fp, syn("10.1.1.10", dport=80), Reason.PASS_POLICY_DEFAULT)
    assert drops.take() == []


def test_a_flood_from_one_source_is_limited_and_the_next_event_counts_the_rest(drops):
    fp = drops.fp
    r = fp.run(syn("10.1.1.10"), ING, repeat=1000)
    assert r.action == 2
    got = drops.take()
    assert DROP_EVENTS_PER_SEC <= len(got) <= DROP_EVENTS_PER_SEC * windows(got)
    st = drops.stats()
    assert st["events"] == len(got) and st["events"] + st["suppressed"] == 1000
    _, lim = drops.limiter("10.1.1.10", Reason.DROP_POLICY_DENY)
    assert lim.suppressed == 1000 - len(got)

    drops.next_window("10.1.1.10", Reason.DROP_POLICY_DENY)
    expect(fp, syn("10.1.1.10", sport=40001), Reason.DROP_POLICY_DENY)
    (ev,) = drops.take()
    assert ev.suppressed == 1000 - len(got) and ev.src_port == 40001
    assert drops.limiter("10.1.1.10", Reason.DROP_POLICY_DENY)[1].suppressed == 0


def test_sources_and_reasons_are_limited_separately(drops):
    fp = drops.fp
    for src in ("10.1.1.10", "10.1.1.11"):
        fp.run(syn(src), ING, repeat=200)
    # another reason from the first source: a TCP segment of no session
    fp.run(syn("10.1.1.10", dport=80, flags="A"), ING, repeat=200)
    got = drops.take()
    by_key = {}
    for e in got:
        by_key.setdefault((e.src_ip, e.reason), []).append(e)
    assert set(by_key) == {("10.1.1.10", Reason.DROP_POLICY_DENY), ("10.1.1.11", Reason.DROP_POLICY_DENY),
                           ("10.1.1.10", Reason.DROP_TCP_NO_SESSION)}
    for evs in by_key.values():   # each key its own budget: a shared one would leave some with none
        assert DROP_EVENTS_PER_SEC <= len(evs) <= DROP_EVENTS_PER_SEC * windows(evs)
    assert drops.stats()["suppressed"] == 600 - len(got)


def test_a_full_ring_is_counted_and_reported_by_the_next_event(drops):
    fp = drops.fp
    fp.apply_runtime(DatapathConfig(syn_dst_rate=0, syn_global_rate=0, drop_events_per_sec=1_000_000,
                                    drop_events_cpu_per_sec=10_000_000))
    capacity = drops.rb.size // (ctypes.sizeof(drops.decoder.record) + 8)
    n = capacity + 500
    fp.run(syn("10.1.1.10"), ING, repeat=n)
    st = drops.stats()
    assert st["ring_full"] >= 500 and st["events"] + st["ring_full"] == n and st["suppressed"] == 0
    assert len(drops.take()) == st["events"]
    # each drop the ring could not take is in the key's count for its next event
    expect(fp, syn("10.1.1.10", sport=40001), Reason.DROP_POLICY_DENY)
    (ev,) = drops.take()
    assert ev.suppressed == st["ring_full"]


def test_no_events_when_turned_off(drops):
    fp = drops.fp
    fp.apply_runtime(DatapathConfig(syn_dst_rate=0, syn_global_rate=0, drop_events_per_sec=0))
    fp.run(syn("10.1.1.10"), ING, repeat=50)
    assert drops.take() == [] and drops.stats()["events"] == 0


def test_the_per_cpu_cap_bounds_a_flood_from_many_sources(drops):
    fp = drops.fp
    cap = 20
    fp.apply_runtime(DatapathConfig(syn_dst_rate=0, syn_global_rate=0, drop_events_cpu_per_sec=cap))
    for i in range(100):
        expect(fp, syn(f"10.7.0.{i + 1}"), Reason.DROP_POLICY_DENY)
    got = drops.take()
    st = drops.stats()
    assert len(got) <= cap * windows(got) * possible_cpus()   # the cap is per CPU
    assert st["cpu_capped"] == 100 - len(got) and st["events"] == len(got)


def test_replay_logs_every_drop_at_the_captures_time(fastpath, tmp_path):
    """`microseg replay`: a drop record per dropped frame (the capture runs
    far faster than it was captured: no per-second limit), stamped with the
    frame's capture time."""
    import dpkt

    from appliance.daemon import empty_rules
    from appliance.replay import replay, replay_config
    from slowpath.eve import format_timestamp

    path = tmp_path / "scan.pcap"
    t0 = 1_700_000_000.0
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f)
        for i in range(30):
            w.writepkt(syn("10.1.1.10", sport=41000 + i), ts=t0 + i * 0.01)
        w.writepkt(syn("10.1.1.10", dport=80), ts=t0 + 1)        # allowed by the default
    fastpath.apply_runtime(replay_config())
    records: list = []
    try:
        Drops(fastpath).rb.close()     # what earlier tests left, drained
        res = replay(path, fastpath, empty_rules(), records.append, policy_text=POLICY)
    finally:
        fastpath.reset()
        fastpath.apply_runtime(fastpath.config)
    got = [r for r in records if r["event_type"] == "drop"]
    assert res.drop_records == len(got) == 30
    for i, r in enumerate(got):
        assert schema_errors(r) == []
        assert (r["src_port"], r["dest_port"], r["drop"]["reason"]) == (41000 + i, 22, "DROP_POLICY_DENY")
        assert r["timestamp"] == format_timestamp(t0 + i * 0.01)
        assert {"rule": "no-ssh"} in r["metadata"]["pktvars"]
        assert "in_iface" not in r          # BPF_PROG_TEST_RUN's loopback is not the capture's interface


def test_the_daemons_reader_writes_records_and_counts(drops):
    """appliance/droplog.DropLog, as `microseg run` uses it: a record per
    event to its sink, the kernel's tallies as Prometheus counters."""
    from prometheus_client import CollectorRegistry, generate_latest

    fp = drops.fp
    out: list = []
    dl = droplog.DropLog(fp, out.append)
    try:
        dl.rule_names = {1: "no-ssh"}
        fp.run(syn("10.1.1.10"), ING, repeat=20)
        assert dl.drain() == DROP_EVENTS_PER_SEC == len(out)
        assert all(r["drop"]["reason"] == "DROP_POLICY_DENY" and {"rule": "no-ssh"} in r["metadata"]["pktvars"]
                   for r in out)
        reg = CollectorRegistry()
        reg.register(dl.collector())
        text = generate_latest(reg).decode()
        assert f'microseg_drop_events_total{{outcome="sent"}} {float(DROP_EVENTS_PER_SEC)}' in text
        assert f'microseg_drop_events_total{{outcome="suppressed"}} {float(20 - DROP_EVENTS_PER_SEC)}' in text
        assert 'microseg_drop_events_total{outcome="ring_full"} 0.0' in text
        assert f'microseg_drop_events_total{{outcome="records"}} {float(DROP_EVENTS_PER_SEC)}' in text
    finally:
        dl.close()
