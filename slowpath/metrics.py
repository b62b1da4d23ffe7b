"""Prometheus metrics: what the slow path counts, and what the kernel counts.

:class:`Metrics` owns a registry of its own (not prometheus_client's global
one, so tests and several instances do not collide, and nothing a library
registers globally leaks onto the endpoint). Two sources feed it:

* The slow path records as it works: ring buffer records and losses,
  verdicts, failures by kind, reassembly cap hits, queued bytes, flows, and
  the verdict latency histogram.
* The kernel is read at scrape time: a ``kernel_reader()`` (the daemon's is
  datapath/kernelstate.py's metrics_reading, the reader `microseg status` uses)
  returns the reason counters and the session tables' sizes, and a custom
  collector turns them into ``microseg_packets_total``,
  ``microseg_bytes_total``, ``microseg_sessions`` and the table gauges.
  Reading at scrape time means the numbers are as fresh as the scrape and
  cost nothing between scrapes. A reader that raises (maps gone during a
  reload, a bad layout) costs that scrape its kernel series, never the
  scrape: ``microseg_kernel_read_errors_total`` counts the failures.

``Metrics.serve(addr, port)`` starts prometheus_client's own HTTP server
(a daemon thread) for the registry; the default address is loopback, as the
series name hosts' traffic (drop reasons, table sizes).

Default port 9477, configurable. Prometheus' wiki "Default port
allocations" hands exporters 9100-9999, and that range was reported fully
allocated in 2023, so no number in it is free on paper; 9477 is none of the
ports an appliance's neighbours use (Prometheus 9090, Pushgateway 9091,
Alertmanager 9093, node exporter 9100, blackbox exporter 9115).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from datapath.enums import VerdictCode

log = logging.getLogger(__name__)

DEFAULT_ADDR = "127.0.0.1"
DEFAULT_PORT = 9477

# Failures of inspection, as the failure actions name them
# (datapath/config.py FailureActions).
FAILURE_KINDS = ("ringbuf_full", "budget_exhausted", "slowpath_down", "reassembly_cap", "parser_error",
                 "session_table_full", "decompression")
# Which reassembly cap forced a gap (slowpath/reassembly.py): a flow's own
# byte cap, the budget shared by all flows, or too many segments queued
# behind one hole.
REASSEMBLY_SCOPES = ("flow", "total", "segments")
# Why payload records were lost between the kernel and the slow path:
# "full", records the perf buffer fallback dropped because a CPU's ring was
# full (its lost-sample count; the BPF ring buffer refuses a record in the
# kernel instead, counted as microseg_packets_total with reason
# *_INSPECT_RINGBUF_FULL); "malformed", records that did not decode.
RINGBUF_LOST_REASONS = ("full", "malformed")
# The verdicts the slow path writes, as microseg_slowpath_verdicts_total
# labels them ("allow", "block", "release": bpf/lib/maps.h's enum, through
# datapath/enums.py).
VERDICT_LABELS = tuple(v.name.removeprefix("VERDICT_").lower() for v in VerdictCode)

# Verdict latency, from the kernel timestamp of a flow's first inspected byte
# to the write of its verdict into the kernel's map. 1-2.5-5 steps per
# decade (Prometheus' own default buckets use that spacing): each bucket
# bounds a quantile to within a factor 2.5, for 18 series.
# Bottom, 10 us: a verdict needs a ring buffer wakeup and a Python parse,
# tens of microseconds at best, so the first bucket holds "as fast as it
# gets". Top, 5 s: held packets are long retransmitted by then (TCP's first
# RTO is 1 s, RFC 6298) and the inspection budget has decided for the
# slow path; anything slower is simply too late and lands in +Inf.
LATENCY_BUCKETS = (10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
                   1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
                   1.0, 2.5, 5.0)


class _KernelCollector:
    """Reads the kernel through ``reader`` on every scrape."""

    def __init__(self, reader: Callable[[], Mapping] | None):
        self._reader = reader
        self._errors = 0
        self._lock = threading.Lock()

    def describe(self):
        # Without describe(), registering would call collect() (and the
        # reader) once at start-up just to learn the names.
        return []

    def collect(self):
        families = []
        if self._reader is not None:
            try:
                families = self._families(self._reader())
            except Exception:
                log.warning("kernel metrics: the reader failed; this scrape has no kernel series",
                            exc_info=True)
                with self._lock:
                    self._errors += 1
        with self._lock:
            errors = self._errors
        yield CounterMetricFamily("microseg_kernel_read_errors",
                                  "Scrapes whose kernel read failed (their kernel series are missing)",
                                  value=errors)
        yield from families

    @staticmethod
    def _families(data: Mapping) -> list:
        # Built whole before anything is yielded: a malformed reply fails the
        # read (counted) instead of leaving half a set of series.
        packets = CounterMetricFamily("microseg_packets", "Packets the fast path decided on, by hook, "
                                      "reason and action (bpf/lib/reasons.h)", labels=["hook", "reason", "action"])
        nbytes = CounterMetricFamily("microseg_bytes", "Bytes of those packets", labels=["hook", "reason", "action"])
        for key, (pk, by) in (data.get("counters") or {}).items():
            hook, reason, kind = (str(k) for k in key)
            labels = [hook, reason, kind.lower()]
            packets.add_metric(labels, int(pk))
            nbytes.add_metric(labels, int(by))
        sessions = GaugeMetricFamily("microseg_sessions", "Entries in a session table", labels=["table"])
        capacity = GaugeMetricFamily("microseg_session_table_capacity", "Entries a session table can hold",
                                     labels=["table"])
        ratio = GaugeMetricFamily("microseg_session_table_used_ratio", "Entries over capacity (0..1)",
                                  labels=["table"])
        used = {str(t): int(n) for t, n in (data.get("sessions") or {}).items()}
        caps = {str(t): int(n) for t, n in (data.get("capacity") or {}).items()}
        for table, n in sorted(used.items()):
            sessions.add_metric([table], n)
        for table, n in sorted(caps.items()):
            capacity.add_metric([table], n)
            if n > 0 and table in used:
                ratio.add_metric([table], used[table] / n)
        # Each family's map on its own (kernelstate.table_use "maps"): new
        # series, so those of `table` keep their meaning (ms_flows: the
        # session limit both families count against; ms_halfopen: both maps)
        # and a sum over `table` in an existing dashboard counts nothing twice.
        labels = ["map", "table", "family"]
        m_entries = GaugeMetricFamily("microseg_session_map_entries",
                                      "Entries in one family's map of a session table", labels=labels)
        m_capacity = GaugeMetricFamily("microseg_session_map_capacity",
                                       "Entries one family's map can hold (full: that family's "
                                       "inserts are refused)", labels=labels)
        m_ratio = GaugeMetricFamily("microseg_session_map_used_ratio",
                                    "Entries over capacity of one family's map (0..1)", labels=labels)
        for name, (table, family, n, cap) in sorted((data.get("maps") or {}).items()):
            lab = [str(name), str(table), str(family)]
            m_entries.add_metric(lab, int(n))
            m_capacity.add_metric(lab, int(cap))
            if int(cap) > 0:
                m_ratio.add_metric(lab, int(n) / int(cap))
        out = [packets, nbytes, sessions, capacity, ratio, m_entries, m_capacity, m_ratio]
        if data.get("pressure_pct") is not None:
            out.append(GaugeMetricFamily(
                "microseg_session_table_pressure_threshold_ratio",
                "Fill of ms_flows past which the kernel raises a pressure alert (config pressure_pct / 100)",
                value=float(data["pressure_pct"]) / 100.0))
        return out

    @property
    def errors(self) -> int:
        with self._lock:
            return self._errors


class MetricsServer:
    """prometheus_client's HTTP server for one registry; ``close()`` stops it."""

    def __init__(self, httpd, thread: threading.Thread):
        self._httpd = httpd
        self._thread = thread

    def fileno(self) -> int:
        """The listening socket's fd."""
        return self._httpd.fileno()

    @property
    def address(self) -> str:
        return self._httpd.server_address[0]

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"

    def close(self, timeout: float = 5.0) -> None:
        self._httpd.shutdown()          # returns once serve_forever has stopped
        self._httpd.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_listen(text: str) -> tuple[str, int]:
    """"127.0.0.1:9477", "[::1]:9477" or "9477" (loopback) -> (addr, port)."""
    text = text.strip()
    if text.isdigit():
        addr, port_text = DEFAULT_ADDR, text
    elif text.startswith("["):
        addr, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"listen address {text!r}: expected [IPv6]:port")
    else:
        addr, sep, port_text = text.rpartition(":")
        if not sep or ":" in addr:
            raise ValueError(f"listen address {text!r}: expected host:port (IPv6 in brackets)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen address {text!r}: bad port")
    if not addr:
        raise ValueError(f"listen address {text!r}: no host")
    return addr, int(port_text)


def snapshot(registry: CollectorRegistry) -> list:
    """Every series of ``registry`` as plain data (JSON): a worker process
    sends its slow-path series to the daemon with it. ``_created`` samples
    are left out: a creation time does not sum across processes."""
    out = []
    for fam in registry.collect():
        samples = [[x.name, x.labels, x.value] for x in fam.samples if not x.name.endswith("_created")]
        out.append([fam.name, fam.type, fam.documentation, samples])
    return out


class EveSinkCollector:
    """The EVE sinks' own counters (slowpath/eve_sinks.py), read on every
    scrape from ``reader`` (the daemon's EveLog.counters): what each sink
    wrote, what it will never write, its failed writes and what it holds.
    A collector down or slow shows here before anyone misses its records."""

    def __init__(self, reader: Callable[[], Mapping]):
        self._reader = reader

    def describe(self):
        return []

    def collect(self):
        sinks = self._reader().get("sinks", {})
        records = CounterMetricFamily(
            "microseg_eve_records", "EVE records per sink: sent (written) or dropped (never to be: "
            "its queue was full, a write failed, the collector refused it)", labels=["sink", "outcome"])
        errors = CounterMetricFamily("microseg_eve_write_errors",
                                     "Failed writes and connects per EVE sink (events, not records)",
                                     labels=["sink"])
        queued = GaugeMetricFamily("microseg_eve_queued_records", "EVE records waiting in a sink's queue",
                                   labels=["sink"])
        for name, c in sorted(sinks.items()):
            records.add_metric([name, "sent"], c.get("sent", 0))
            records.add_metric([name, "dropped"], c.get("dropped", 0))
            errors.add_metric([name], c.get("write_errors", 0))
            queued.add_metric([name], c.get("queued", 0))
        yield from (records, errors, queued)


class WorkerSeries:
    """The slow-path series of several worker processes, summed: the one
    endpoint shows one microseg_ringbuf_records_total, not one per worker.
    Each worker reports a snapshot() now and then (``update``); a worker
    that ended (``retire``) keeps what its counters and histograms counted,
    so a restart does not move a counter backwards; its gauges go. Every
    series shows from the first scrape, at 0, as in one process."""

    def __init__(self):
        self._lock = threading.Lock()
        self._live: dict[int, list] = {}
        self._retired: dict[tuple, float] = {}
        self._zero = snapshot(Metrics(kernel=False).registry)

    def update(self, worker: int, snap: list) -> None:
        with self._lock:
            self._live[worker] = snap

    def retire(self, worker: int) -> None:
        with self._lock:
            snap = self._live.pop(worker, None)
            for name, kind, _, samples in snap or ():
                if kind in ("counter", "histogram"):
                    for sname, labels, value in samples:
                        key = (name, sname, tuple(sorted(labels.items())))
                        self._retired[key] = self._retired.get(key, 0.0) + value

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import Metric
        with self._lock:
            snaps = list(self._live.values())
            retired = dict(self._retired)
        sums: dict[tuple, float] = dict(retired)
        for snap in snaps:
            for name, _, _, samples in snap:
                for sname, labels, value in samples:
                    key = (name, sname, tuple(sorted(labels.items())))
                    sums[key] = sums.get(key, 0.0) + value
        for name, kind, doc, samples in self._zero:
            fam = Metric(name, doc, kind)
            for sname, labels, _ in samples:
                fam.add_sample(sname, labels, sums.get((name, sname, tuple(sorted(labels.items()))), 0.0))
            # label values only a worker has seen (a verdict name, a lost reason)
            seen = {(sname, tuple(sorted(labels.items()))) for sname, labels, _ in samples}
            for (fname, sname, labels), value in sorted(sums.items()):
                if fname == name and (sname, labels) not in seen:
                    fam.add_sample(sname, dict(labels), value)
            yield fam


class Metrics:
    """The appliance's metrics. Recording methods are thread-safe.

    ``slowpath``: this process inspects, so the slow-path series are its
    own. The daemon of several worker processes passes False and registers
    a WorkerSeries instead (``workers``), which sums theirs; the workers
    pass ``kernel=False`` (the daemon reads the kernel)."""

    def __init__(self, kernel_reader: Callable[[], Mapping] | None = None, *, slowpath: bool = True,
                 workers: WorkerSeries | None = None, kernel: bool = True):
        self.registry = CollectorRegistry()
        r = self.registry
        if workers is not None:
            r.register(workers)
        if slowpath:
            self._slowpath_series(r)
        self._kernel = _KernelCollector(kernel_reader)
        if kernel:
            r.register(self._kernel)

    def _slowpath_series(self, r: CollectorRegistry) -> None:
        self.ringbuf_records = Counter("microseg_ringbuf_records",
                                       "Records read from the kernel ring buffer", registry=r)
        self.ringbuf_lost = Counter("microseg_ringbuf_lost",
                                    "Ring buffer records lost, by reason", ["reason"], registry=r)
        self.slowpath_verdicts = Counter("microseg_slowpath_verdicts",
                                         "Verdicts the slow path wrote to the kernel", ["verdict"], registry=r)
        self.slowpath_failures = Counter("microseg_slowpath_failures",
                                         "Inspection failures, by kind (as the failure actions name them)",
                                         ["kind"], registry=r)
        self.reassembly_cap_hits = Counter("microseg_reassembly_cap_hits",
                                           "Gaps forced by a reassembly cap, by cap", ["scope"], registry=r)
        self.queue_bytes = Gauge("microseg_slowpath_queue_bytes",
                                 "Bytes of payload records waiting in the ring buffer for the slow path", registry=r)
        self.flows = Gauge("microseg_slowpath_flows", "Flows the slow path is inspecting", registry=r)
        self.verdict_latency = Histogram(
            "microseg_verdict_latency_seconds",
            "Kernel timestamp of a flow's first inspected byte to its verdict map write",
            buckets=LATENCY_BUCKETS, registry=r)
        # Every kind shows from the first scrape, at 0: rate() and alerts on
        # a kind that has not happened yet then work without "absent()".
        for kind in FAILURE_KINDS:
            self.slowpath_failures.labels(kind=kind)
        for scope in REASSEMBLY_SCOPES:
            self.reassembly_cap_hits.labels(scope=scope)
        for reason in RINGBUF_LOST_REASONS:
            self.ringbuf_lost.labels(reason=reason)
        for verdict in VERDICT_LABELS:
            self.slowpath_verdicts.labels(verdict=verdict)

    # -- recording -------------------------------------------------------------
    def record_ringbuf(self, n: int = 1) -> None:
        self.ringbuf_records.inc(n)

    def record_ringbuf_lost(self, reason: str, n: int = 1) -> None:
        """``reason``: one of RINGBUF_LOST_REASONS (every distinct value is
        a series, so never data)."""
        if reason not in RINGBUF_LOST_REASONS:
            raise ValueError(f"ring buffer lost reason {reason!r}: one of {RINGBUF_LOST_REASONS}")
        self.ringbuf_lost.labels(reason=reason).inc(n)

    def record_verdict(self, verdict: str) -> None:
        """``verdict``: the verdict's name ("allow", "block", ...): a fixed set."""
        self.slowpath_verdicts.labels(verdict=verdict).inc()

    def record_failure(self, kind: str, n: int = 1) -> None:
        if kind not in FAILURE_KINDS:
            raise ValueError(f"failure kind {kind!r}: one of {FAILURE_KINDS}")
        self.slowpath_failures.labels(kind=kind).inc(n)

    def record_reassembly_cap(self, scope: str, n: int = 1) -> None:
        if scope not in REASSEMBLY_SCOPES:
            raise ValueError(f"reassembly cap scope {scope!r}: one of {REASSEMBLY_SCOPES}")
        self.reassembly_cap_hits.labels(scope=scope).inc(n)

    def set_queue_bytes(self, n: int) -> None:
        self.queue_bytes.set(n)

    def set_flows(self, n: int) -> None:
        self.flows.set(n)

    def observe_verdict_latency(self, seconds: float) -> None:
        self.verdict_latency.observe(seconds)

    def observe_verdict_latency_ns(self, first_byte_ns: int, written_ns: int | None = None) -> bool:
        """Latency from the kernel's first-byte timestamp (bpf_ktime_get_ns,
        CLOCK_MONOTONIC) to ``written_ns`` (default: now, on the same clock).
        A negative span is a bug upstream: it is not observed (returns False)."""
        if written_ns is None:
            written_ns = time.monotonic_ns()        # CLOCK_MONOTONIC on Linux, as the kernel's
        span = written_ns - first_byte_ns
        if span < 0:
            return False
        self.verdict_latency.observe(span / 1e9)
        return True

    @property
    def kernel_read_errors(self) -> int:
        return self._kernel.errors

    # -- exposition ------------------------------------------------------------
    def serve(self, addr: str = DEFAULT_ADDR, port: int = DEFAULT_PORT) -> MetricsServer:
        """Serve /metrics on ``addr:port`` (port 0: any free port, see .port)."""
        httpd, thread = start_http_server(port, addr=addr, registry=self.registry)
        return MetricsServer(httpd, thread)

