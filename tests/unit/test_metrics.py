"""slowpath/metrics.py: scraped over real HTTP on 127.0.0.1 and parsed back.

The endpoint is prometheus_client's own server on a port the kernel picks
(port 0); every check reads what a Prometheus server would read.
"""
from __future__ import annotations

import math
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from datapath.enums import Direction, Reason
from slowpath import metrics as m


def scrape(server: m.MetricsServer) -> dict:
    """{(sample name, frozenset of labels): value} from one scrape."""
    with urllib.request.urlopen(server.url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def served():
    created = []

    def make(reader=None):
        metrics = m.Metrics(kernel_reader=reader)
        server = metrics.serve("127.0.0.1", 0)
        created.append(server)
        return metrics, server

    yield make
    for server in created:
        server.close()


def test_slow_path_counters_move(served):
    metrics, server = served()
    assert server.address == "127.0.0.1" and server.port > 0
    before = scrape(server)
    assert value(before, "microseg_ringbuf_records_total") == 0
    # Every failure kind and cap scope is there from the first scrape, at 0.
    for kind in m.FAILURE_KINDS:
        assert value(before, "microseg_slowpath_failures_total", kind=kind) == 0
    for scope in m.REASSEMBLY_SCOPES:
        assert value(before, "microseg_reassembly_cap_hits_total", scope=scope) == 0
    for reason in m.RINGBUF_LOST_REASONS:
        assert value(before, "microseg_ringbuf_lost_total", reason=reason) == 0
    assert m.VERDICT_LABELS == ("allow", "block", "release")
    for verdict in m.VERDICT_LABELS:
        assert value(before, "microseg_slowpath_verdicts_total", verdict=verdict) == 0
    assert value(before, "microseg_slowpath_queue_bytes") == 0

    metrics.record_ringbuf(5)
    metrics.record_ringbuf()
    metrics.record_ringbuf_lost("full", 3)
    metrics.record_verdict("allow")
    metrics.record_verdict("allow")
    metrics.record_verdict("block")
    metrics.record_failure("parser_error")
    metrics.record_failure("session_table_full", 4)
    metrics.record_reassembly_cap("total")
    metrics.set_queue_bytes(17)
    metrics.set_flows(250)
    after = scrape(server)
    assert value(after, "microseg_ringbuf_records_total") == 6
    assert value(after, "microseg_ringbuf_lost_total", reason="full") == 3
    assert value(after, "microseg_slowpath_verdicts_total", verdict="allow") == 2
    assert value(after, "microseg_slowpath_verdicts_total", verdict="block") == 1
    assert value(after, "microseg_slowpath_verdicts_total", verdict="release") == 0
    assert value(after, "microseg_slowpath_failures_total", kind="parser_error") == 1
    assert value(after, "microseg_slowpath_failures_total", kind="session_table_full") == 4
    assert value(after, "microseg_slowpath_failures_total", kind="ringbuf_full") == 0
    assert value(after, "microseg_reassembly_cap_hits_total", scope="total") == 1
    assert value(after, "microseg_slowpath_queue_bytes") == 17
    assert value(after, "microseg_slowpath_flows") == 250
    metrics.set_queue_bytes(0)
    assert value(scrape(server), "microseg_slowpath_queue_bytes") == 0


def test_unknown_failure_kind_or_scope_is_refused():
    metrics = m.Metrics()
    with pytest.raises(ValueError):
        metrics.record_failure("disk_full")
    with pytest.raises(ValueError):
        metrics.record_reassembly_cap("global")
    with pytest.raises(ValueError):
        metrics.record_ringbuf_lost("some data")


def test_gauges_of_bytes_end_in_bytes():
    """Prometheus naming: a gauge whose unit is bytes says so in its name."""
    metrics = m.Metrics(kernel=False)
    gauges = [f.name for f in metrics.registry.collect() if f.type == "gauge"]
    assert gauges
    for name in gauges:
        doc = next(f.documentation for f in metrics.registry.collect() if f.name == name)
        if doc.lower().startswith("bytes"):
            assert name.endswith("_bytes"), name


def test_latency_histogram_buckets(served):
    metrics, server = served()
    assert m.LATENCY_BUCKETS[0] == 10e-6 and m.LATENCY_BUCKETS[-1] == 5.0
    assert list(m.LATENCY_BUCKETS) == sorted(set(m.LATENCY_BUCKETS))
    metrics.observe_verdict_latency(5e-6)           # under the first bucket
    metrics.observe_verdict_latency(300e-6)
    metrics.observe_verdict_latency(0.3)
    metrics.observe_verdict_latency(7.0)            # past the last: +Inf only
    assert metrics.observe_verdict_latency_ns(1_000_000, 1_000_000 + 2_000_000)   # 2 ms
    assert not metrics.observe_verdict_latency_ns(2_000, 1_000)                    # negative: ignored
    samples = scrape(server)
    name = "microseg_verdict_latency_seconds_bucket"
    les = sorted((float(dict(labels)["le"]), v) for (n, labels), v in samples.items() if n == name)
    assert [le for le, _ in les] == [*m.LATENCY_BUCKETS, math.inf]
    cumulative = dict(les)
    assert cumulative[10e-6] == 1
    assert cumulative[250e-6] == 1 and cumulative[500e-6] == 2
    assert cumulative[1e-3] == 2 and cumulative[2.5e-3] == 3
    assert cumulative[0.25] == 3 and cumulative[0.5] == 4
    assert cumulative[5.0] == 4 and cumulative[math.inf] == 5
    assert value(samples, "microseg_verdict_latency_seconds_count") == 5
    assert value(samples, "microseg_verdict_latency_seconds_sum") == pytest.approx(5e-6 + 300e-6 + 0.3 + 7.0 + 2e-3)


def test_latency_from_a_kernel_timestamp_now():
    import time

    metrics = m.Metrics()
    assert metrics.observe_verdict_latency_ns(time.monotonic_ns() - 1_000_000)     # 1 ms ago
    assert 1e-3 <= metrics.verdict_latency._sum.get() < 1.0


KERNEL = {
    "counters": {("ingress", "PASS_FORWARD", "PASS"): (1000, 640_000),
                 ("ingress", "DROP_POLICY_DENY", "DROP"): (12, 720),
                 ("egress", "PASS_FORWARD", "PASS"): (990, 1_200_000)},
    "sessions": {"ms_flows": 3000, "ms_halfopen": 40},
    "capacity": {"ms_flows": 12000, "ms_halfopen": 4096},
    "pressure_pct": 90,
}


def test_kernel_series_are_read_at_scrape_time(served):
    state = {"data": KERNEL, "calls": 0}

    def reader():
        state["calls"] += 1
        return state["data"]

    metrics, server = served(reader)
    assert state["calls"] == 0                      # registering did not read the kernel
    s = scrape(server)
    assert state["calls"] == 1
    assert value(s, "microseg_packets_total", hook="ingress", reason="DROP_POLICY_DENY", action="drop") == 12
    assert value(s, "microseg_bytes_total", hook="egress", reason="PASS_FORWARD", action="pass") == 1_200_000
    assert value(s, "microseg_sessions", table="ms_flows") == 3000
    assert value(s, "microseg_sessions", table="ms_halfopen") == 40
    assert value(s, "microseg_session_table_capacity", table="ms_flows") == 12000
    assert value(s, "microseg_session_table_used_ratio", table="ms_flows") == pytest.approx(0.25)
    assert value(s, "microseg_session_table_used_ratio", table="ms_halfopen") == pytest.approx(40 / 4096)
    assert value(s, "microseg_session_table_pressure_threshold_ratio") == pytest.approx(0.9)
    assert value(s, "microseg_kernel_read_errors_total") == 0
    # The next scrape sees the kernel's new numbers.
    state["data"] = {**KERNEL, "counters": {("ingress", "DROP_POLICY_DENY", "DROP"): (20, 1200)},
                     "sessions": {"ms_flows": 6000}}
    s = scrape(server)
    assert value(s, "microseg_packets_total", hook="ingress", reason="DROP_POLICY_DENY", action="drop") == 20
    assert value(s, "microseg_session_table_used_ratio", table="ms_flows") == pytest.approx(0.5)
    assert value(s, "microseg_session_table_used_ratio", table="ms_halfopen") is None   # no count, no ratio


def test_a_failing_reader_costs_its_series_not_the_scrape(served):
    state = {"fail": True}

    def reader():
        if state["fail"] == "garbage":
            return {"counters": {("ingress",): "x"}}
        if state["fail"]:
            raise OSError("map fd closed")
        return KERNEL

    metrics, server = served(reader)
    metrics.record_ringbuf(2)
    s = scrape(server)
    assert value(s, "microseg_kernel_read_errors_total") == 1
    assert value(s, "microseg_ringbuf_records_total") == 2          # the rest of the scrape is intact
    assert not any(name.startswith(("microseg_packets", "microseg_sessions")) for name, _ in s)
    state["fail"] = "garbage"                                        # a malformed reply counts too
    s = scrape(server)
    assert value(s, "microseg_kernel_read_errors_total") == 2
    assert not any(name.startswith("microseg_packets") for name, _ in s)
    state["fail"] = False
    s = scrape(server)
    assert value(s, "microseg_kernel_read_errors_total") == 2
    assert value(s, "microseg_sessions", table="ms_flows") == 3000
    assert metrics.kernel_read_errors == 2


def test_two_instances_do_not_share_a_registry(served):
    a, server_a = served()
    b, server_b = served()
    a.record_ringbuf(7)
    assert value(scrape(server_a), "microseg_ringbuf_records_total") == 7
    assert value(scrape(server_b), "microseg_ringbuf_records_total") == 0


def test_server_closes():
    metrics = m.Metrics()
    with metrics.serve("127.0.0.1", 0) as server:
        url = server.url
        assert scrape(server)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:9477", ("127.0.0.1", 9477)), ("[::1]:9100", ("::1", 9100)), ("9477", ("127.0.0.1", 9477)),
    ("0.0.0.0:0", ("0.0.0.0", 0)), ("localhost:8080", ("localhost", 8080))])
def test_parse_listen(text, expected):
    assert m.parse_listen(text) == expected


@pytest.mark.parametrize("text", ["::1:9477", "127.0.0.1", "127.0.0.1:99999", ":9477", "[::1]"])
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError):
        m.parse_listen(text)


def test_default_listen_address_is_loopback():
    assert (m.DEFAULT_ADDR, m.DEFAULT_PORT) == ("127.0.0.1", 9477)


def test_kernel_counter_rows_from_the_datapath_reader():
    from datapath.kernelstate import counter_rows
    rows = counter_rows({(Direction.DIR_INGRESS, Reason.DROP_POLICY_DENY): (3, 180),
                         (Direction.DIR_EGRESS, Reason.PASS_FORWARD): (9, 900)})
    assert rows == {("ingress", "DROP_POLICY_DENY", "DROP"): (3, 180), ("egress", "PASS_FORWARD", "PASS"): (9, 900)}


def test_each_familys_map_has_its_own_use_and_capacity(served):
    """A full IPv6 map shows as full (ratio 1.0) while the table's series
    (both families together) are far from their limit; the table series
    keep their values (existing dashboards)."""
    data = {**KERNEL, "maps": {"ms_flows4": ("ms_flows", "ipv4", 1000, 12000),
                               "ms_flows6": ("ms_flows", "ipv6", 1500, 1500),
                               "ms_halfopen4": ("ms_halfopen", "ipv4", 30, 4000),
                               "ms_halfopen6": ("ms_halfopen", "ipv6", 10, 96)}}
    metrics, server = served(lambda: data)
    s = scrape(server)
    assert value(s, "microseg_session_map_used_ratio", map="ms_flows6", table="ms_flows", family="ipv6") == 1.0
    assert value(s, "microseg_session_map_capacity", map="ms_flows6", table="ms_flows", family="ipv6") == 1500
    assert value(s, "microseg_session_map_entries", map="ms_flows4", table="ms_flows", family="ipv4") == 1000
    assert value(s, "microseg_session_map_capacity", map="ms_halfopen6", table="ms_halfopen",
                 family="ipv6") == 96
    assert value(s, "microseg_session_table_used_ratio", table="ms_flows") == pytest.approx(0.25)
    assert value(s, "microseg_session_table_capacity", table="ms_halfopen") == 4096
