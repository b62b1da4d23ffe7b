"""The slow path, measured: record throughput, inspected HTTP through the
lab against an allow rule, verdict latency, and what hold mode costs.

1. Records (in process, one CPU): ``--segments`` payload segments of one
   TCP flow (pipelined HTTP GETs) run through the real fast path with
   BPF_PROG_TEST_RUN under an inspect rule, then the ring buffer is drained
   three ways, each on a fresh flow: drain only (the baseline), drain and
   decode, drain, decode and the engine (reassembly, HTTP parsing, WAF and
   DLP rules, verdicts), through the batch calls the daemon's workers make
   (RecordDecoder.decode_many, Engine.handle_raw_batch), with the process's
   objects frozen first (gc.freeze) as a worker's are. Records per second,
   median of ``--rounds``.
2. Lab: `microseg run` in the lab gateway, python http.server behind it on
   three ports: an allow rule, inspect async (waf, dlp, dpi), inspect hold.
   A client makes ``--requests`` sequential GETs, a new connection each,
   per port and round (ports interleaved, order rotated per round): requests
   per second and the latency of each request (connect to last byte).
   Ratios are to the allow port measured in the same run: of the
   medians, and the median of each round's ratio. Between runs
   the slow path settles (settle()), so no run pays for the one before.
3. Verdict latency: from the EVE flow records the daemon wrote for the
   inspected connections (kernel timestamp of the first inspected byte to
   the verdict map write): p50, p99, p99.9.
4. The slow path's CPU (daemon, workers summed), voluntary context
   switches and minor page faults during the client runs, per inspected
   connection, from /proc (CPU time in schedstat's nanoseconds, cpu_of):
   the steadiest A/B measure on a busy machine. The daemon's event loop
   thread also has a row of its own: the rest of the daemon's CPU is its
   EVE sinks' writer threads.

Sections 2-4 run where the kernel places them unless told:
``--endpoints-cpus`` pins the client and the http.server processes (and so
the forwarding, softirq on the sender's CPU), ``--slowpath-cpus`` sets
`microseg run`'s slowpath.cpus, ``--slowpath-nice`` its slowpath.nice
(e.g. ``--endpoints-cpus 0 --slowpath-cpus 1``: inspection apart from the
connections' path). The output's "lab layout" line says which.

    .venv/bin/python bench/slowpath.py [--requests N] [--rounds N] [--segments N]
                                       [--only records|lab] [--cpu-time] [--profile FILE]
                                       [--endpoints-cpus CPULIST] [--slowpath-cpus CPULIST]
                                       [--slowpath-nice N]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.priority import check_usable, format_cpulist, parse_cpulist  # noqa: E402
from appliance.runconfig import WORKER_NICE_DEFAULT  # noqa: E402

ALLOW_PORT, ASYNC_PORT, HOLD_PORT = 8090, 8091, 8092
MODES = {ALLOW_PORT: "allow rule (no inspection)", ASYNC_PORT: "inspect, async", HOLD_PORT: "inspect, hold"}
POLICY = f"""
groups:
  clients: [10.77.1.0/24]
  servers: [10.77.2.0/24]
defaults: {{ingress: deny, egress: deny}}
rules:
  - {{name: allow, from: clients, to: servers, proto: tcp, ports: [{ALLOW_PORT}], action: allow}}
  - {{name: async, from: clients, to: servers, proto: tcp, ports: [{ASYNC_PORT}], action: inspect,
     inspect: {{what: [waf, dlp, dpi], mode: async}}}}
  - {{name: hold, from: clients, to: servers, proto: tcp, ports: [{HOLD_PORT}], action: inspect,
     inspect: {{what: [waf, dlp, dpi], mode: hold}}}}
"""
CLIENT = r"""
import http.client, json, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lat = []
t0 = time.perf_counter()
for i in range(n):
    s = time.perf_counter()
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", "/index.html?item=%d" % i)
    r = c.getresponse()
    r.read()
    c.close()
    lat.append(time.perf_counter() - s)
print(json.dumps({"total": time.perf_counter() - t0, "lat": lat}))
"""


# Section 1's traffic: one pipelined HTTP GET per payload segment, under a
# rule inspecting everything (waf, dlp, dpi). bench/slowpath_workers.py
# (section 1b) sends the same.
REQUEST = b"GET /catalog/item?id=%06d&sort=price HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: bench\r\n\r\n"
INSPECT_EVERYTHING = ("defaults: {ingress: allow, egress: allow}\nrules:\n"
                      "  - {from: any, to: any, proto: tcp, action: inspect, inspect: {what: [waf, dlp, dpi]}}\n")


class NoVerdicts:
    """A verdict writer that writes nothing: the flows stay inspected for the whole run."""

    def verdict(self, key, code):
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def send_http_flow(prog_fd: int, client: str, sport: int, segments: int, first: int = 0) -> None:
    """A handshake, then ``segments`` pipelined GETs from ``client``:``sport``
    to 10.0.0.2:80 through the program (BPF_PROG_TEST_RUN); the server
    acknowledges every 32nd, so the client's window moves on. ``first`` > 0:
    the flow was started by an earlier call that sent GETs 0..first-1; this
    one goes on from GET ``first`` (no handshake)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    from datapath import bpfsys
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    up, down = eth / IP(src=client, dst="10.0.0.2"), eth / IP(src="10.0.0.2", dst=client)
    for f in (up / TCP(sport=sport, dport=80, flags="S", seq=1000),
              down / TCP(sport=80, dport=sport, flags="SA", seq=5000, ack=1001),
              up / TCP(sport=sport, dport=80, flags="A", seq=1001, ack=5001))[:0 if first else 3]:
        bpfsys.prog_test_run(prog_fd, bytes(f))
    seq = 1001 + sum(len(REQUEST % i) for i in range(first))
    for i in range(first, segments):
        data = REQUEST % i
        bpfsys.prog_test_run(prog_fd, bytes(up / TCP(sport=sport, dport=80, flags="PA", seq=seq, ack=5001,
                                                     window=65535) / data))
        seq += len(data)
        if i % 32 == 31:
            bpfsys.prog_test_run(prog_fd, bytes(down / TCP(sport=80, dport=sport, flags="A", seq=5001, ack=seq,
                                                           window=65535)))


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


# -- 1. records -------------------------------------------------------------

def bench_records(segments: int, rounds: int, profile: str | None = None, clock=time.perf_counter) -> list[tuple]:
    from appliance.policyfile import compile_text
    from datapath.config import DatapathConfig
    from datapath.enums import Direction
    from datapath.loader import FastPath
    from datapath.policy_maps import PolicyMaps
    from datapath.sessions import WIDE_KEY_MAP, layouts_of
    from slowpath.engine import Engine
    from slowpath.records import RecordDecoder, VerdictWriter, record_type
    from slowpath.ringbuf import RingBuffer
    from slowpath.rulesfile import load_rules

    # Building 20,000 frames with scapy takes longer than a heartbeat period.
    fp = FastPath(DatapathConfig(inspect_budget=1 << 30, inspect_ring_bytes=64 << 20, heartbeat_timeout_s=3600))
    try:
        _, pol = compile_text(INSPECT_EVERYTHING, "<bench>")
        PolicyMaps.for_fastpath(fp).apply(pol)
        rules = load_rules(Path(__file__).resolve().parent.parent / "examples" / "rules.yaml")
        types = layouts_of(fp)
        dec = RecordDecoder(record_type({"ms_insp_scratch": (None, fp.table("ms_insp_scratch").Leaf)}),
                            types[WIDE_KEY_MAP][0])
        writer = VerdictWriter(fp.table("ms_verdicts").map_fd, fp.table("ms_slowpath").map_fd,
                               fp.table("ms_verdicts").Leaf, fp.table("ms_slowpath").Leaf)
        ring = RingBuffer(fp.table("ms_insp_ring").map_fd)
        ing = fp.prog_fd(Direction.DIR_INGRESS)

        def fill(sport: int) -> None:
            send_http_flow(ing, "10.0.0.1", sport, segments)

        results = {"drain": [], "drain + decode": [], "drain + decode + engine": []}
        sport = 20000
        for _ in range(rounds):
            for case in results:
                ring.drain()
                writer.heartbeat(1)
                sport += 1
                fill(sport)
                engine = Engine(rules, lambda r: None, NoVerdicts())
                # What exists now (BCC, scapy, the frames' leftovers, the
                # rules) to the collector's permanent generation, as
                # appliance/workers.py's WorkerSet freezes the daemon's
                # objects before it forks the workers: a worker's collections
                # never walk them. Without it this process's collections walk
                # a heap no worker has (measured 2026-12-07: 39,238 ->
                # 65,681 records/s for the engine case).
                gc.collect()
                gc.freeze()
                prof = None
                if profile and case.endswith("engine"):
                    import cProfile
                    prof = cProfile.Profile()
                    prof.enable()
                t0 = clock()
                raws = ring.drain()
                if case == "drain + decode":
                    dec.decode_many(raws)
                elif case.endswith("engine"):
                    engine.handle_raw_batch(raws, dec)   # what the daemon's workers call
                dt = clock() - t0
                if prof is not None:
                    prof.disable()
                    prof.dump_stats(profile)
                if len(raws) != segments:
                    moved = {r.name: v[0] for (d, r), v in fp.counters().items()}
                    raise SystemExit(f"{len(raws)} records for {segments} segments; kernel counted {moved}")
                results[case].append(len(raws) / dt)
        ring.close()
    finally:
        fp.close()
    base = statistics.median(results["drain"])
    return [(case, statistics.median(v), statistics.median(v) / base) for case, v in results.items()]


# -- 2. lab -----------------------------------------------------------------

# Between two client runs the slow path finishes what the last one left
# (an async run leaves records behind it): otherwise that work would be
# charged to the next port's run, the allow rule's among them. Settled:
# the EVE file has not grown for SETTLE_QUIET_S (the workers write an
# http record per request and a flow record per connection), or
# SETTLE_MAX_S passed.
SETTLE_QUIET_S = 0.3
SETTLE_MAX_S = 10.0


def settle(eve: Path) -> None:
    size = lambda: eve.stat().st_size if eve.exists() else 0   # noqa: E731
    deadline = time.monotonic() + SETTLE_MAX_S
    last, since = size(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < SETTLE_QUIET_S:
        time.sleep(0.05)
        now = size()
        if now != last:
            last, since = now, time.monotonic()

_CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = "/proc"


def _run_ns(task_dirs: list[str]) -> int | None:
    """Nanoseconds on a CPU of these /proc task directories (schedstat's
    first field, the scheduler's own clock), None where it is missing
    (a kernel without CONFIG_SCHED_INFO)."""
    total = 0
    for d in task_dirs:
        try:
            total += int(Path(f"{d}/schedstat").read_text().split()[0])
        except FileNotFoundError:
            if os.path.isdir(d):
                return None     # the thread is there, its schedstat is not: no such file on this kernel
            continue            # a thread that ended since its directory was listed
        except (OSError, IndexError, ValueError):
            continue            # a thread that ended meanwhile
    return total


def cpu_of(pid: int, where: str | None = None) -> tuple[float, int, int, float]:
    """(CPU seconds, voluntary context switches, minor page faults, of the
    CPU seconds those in the kernel) of process ``pid`` so far (all its
    threads), or of the one thread whose /proc directory is ``where``.

    The CPU seconds are schedstat's nanoseconds, summed over the threads:
    utime + stime come in ticks (10 ms here, ~17 us per inspected
    connection of a --quick run), too coarse to tell two trees apart in
    an A/B (docs/performance.md 4.6.1). A thread that ended during the run
    takes its time with it (the process's stat keeps it): the daemon's
    and the workers' threads live as long as they do. Where schedstat is
    missing, the ticks. The kernel's share is the ticks' stime either way,
    and includes the softirq work (packets through the lab, the BPF
    programs) that ran while the process was on the CPU: without
    CONFIG_IRQ_TIME_ACCOUNTING the tick charges it to the process it
    interrupted."""
    tasks = [where] if where else None
    where = where or f"{PROC}/{pid}"
    try:
        fields = Path(f"{where}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"{where}/status").read_text()
        if tasks is None:
            tasks = [f"{where}/task/{t}" for t in os.listdir(f"{where}/task")]
    except OSError:
        return 0.0, 0, 0, 0.0
    switches = next((int(line.split()[1]) for line in status.splitlines()
                     if line.startswith("voluntary_ctxt_switches")), 0)
    ns = _run_ns(tasks)
    sec = ns / 1e9 if ns is not None else (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return sec, switches, int(fields[7]), int(fields[12]) / _CLK_TCK


def slowpath_cpu(daemon: int) -> dict[str, tuple[float, int, int, float]]:
    """CPU seconds, voluntary context switches and minor page faults of
    `microseg run`'s daemon and of its workers (its children), summed."""
    kids = Path(f"/proc/{daemon}/task/{daemon}/children").read_text().split()
    work = [cpu_of(int(k)) for k in kids]
    # the daemon's main thread (its event loop) apart from its whole, so
    # what the EVE sinks' threads cost shows as the difference
    main = cpu_of(daemon, f"/proc/{daemon}/task/{daemon}")
    return {"daemon": cpu_of(daemon), "daemon's event loop thread": main,
            "workers": tuple(map(sum, zip(*work))) if work else (0.0, 0, 0, 0.0)}


@dataclass(frozen=True)
class Layout:
    """Where the lab's processes run. ``endpoints``: CPUs of the client and
    the http.server processes (taskset, as bench/policy.py's CONN_CPU; the
    forwarding through the gateway runs there too, as softirq of the
    sender); ``slowpath``: `microseg run`'s setting slowpath.cpus (the
    workers' CPUs);
    ``nice``: slowpath.nice. None: as the kernel places them (unpinned)
    and the setting's default."""
    endpoints: str | None = None
    slowpath: str | None = None
    nice: int | None = None

    def endpoint_prefix(self) -> list[str]:
        return ["taskset", "-c", self.endpoints] if self.endpoints else []

    def settings(self) -> dict:
        return {**({"cpus": self.slowpath} if self.slowpath else {}),
                **({"nice": self.nice} if self.nice is not None else {})}

    def describe(self) -> str:
        return (f"client and http.server on CPUs {self.endpoints or 'any (not pinned)'}; "
                f"slow-path workers (slowpath.cpus) on {self.slowpath or 'any (not pinned)'}; "
                f"slowpath.nice {WORKER_NICE_DEFAULT if self.nice is None else self.nice}")


def bench_lab(requests: int, rounds: int, workers: int, layout: Layout | None = None):
    """The lab run in a directory of its own, removed after it (also when
    the run fails)."""
    tmp = Path(tempfile.mkdtemp(prefix="ms-bench-slowpath-"))
    try:
        return _bench_lab_in(tmp, requests, rounds, workers, layout or Layout())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bench_lab_in(tmp: Path, requests: int, rounds: int, workers: int, layout: Layout):
    from appliance.lab import GW_IFACES, SERVER_V4, Lab

    (tmp / "www").mkdir()
    (tmp / "www" / "index.html").write_text("<html>" + "catalogue " * 100 + "</html>\n")
    (tmp / "policy.yaml").write_text(POLICY)
    eve = tmp / "eve.json"
    (tmp / "run.yaml").write_text("")
    samples = {p: {"rate": [], "lat": []} for p in MODES}
    with Lab() as lab:
        procs = []
        daemon = None
        try:
            for port in MODES:
                procs.append(lab.popen(lab.server, [*layout.endpoint_prefix(), sys.executable, "-m", "http.server",
                                                    "--bind", SERVER_V4,
                                                    "--directory", str(tmp / "www"), str(port)],
                                       stderr=subprocess.DEVNULL))
            for port in MODES:
                deadline = time.monotonic() + 15
                while not lab.run(lab.server, ["ss", "-Hltn", f"sport = :{port}"], check=False).stdout.strip():
                    if time.monotonic() > deadline:
                        raise SystemExit(f"http.server on {port} did not start")
                    time.sleep(0.05)
            (tmp / "run.yaml").write_text(json.dumps({
                "netns": lab.gateway, "interfaces": list(GW_IFACES), "policy": str(tmp / "policy.yaml"),
                "rules": str(Path(__file__).resolve().parent.parent / "examples" / "rules.yaml"),
                "eve": {"file": {"path": str(eve)}}, "metrics": None, "stats_interval_s": 3600,
                "slowpath": {"workers": workers, **layout.settings()}}))
            daemon = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--config", str(tmp / "run.yaml")],
                                      stdout=subprocess.PIPE, stderr=open(tmp / "run.log", "w"), text=True)
            if "microseg running" not in daemon.stdout.readline():
                raise SystemExit("microseg run did not start: " + (tmp / "run.log").read_text())
            ports = list(MODES)
            settle(eve)
            cpu0 = slowpath_cpu(daemon.pid)
            for rnd in range(rounds):
                for port in ports[rnd % 3:] + ports[:rnd % 3]:
                    r = lab.run(lab.client, [*layout.endpoint_prefix(), sys.executable, "-c", CLIENT, SERVER_V4,
                                             str(port), str(requests)],
                                timeout=600)
                    out = json.loads(r.stdout)
                    samples[port]["rate"].append(requests / out["total"])
                    samples[port]["lat"] += out["lat"]
                    settle(eve)
            cpu1 = slowpath_cpu(daemon.pid)
            cpu = {k: tuple(b - a for a, b in zip(cpu0[k], cpu1[k])) for k in cpu1}
        finally:
            if daemon is not None and daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(30)
            for p in procs:
                p.kill()
                p.wait(5)
    flows = [json.loads(x) for x in eve.read_text().splitlines() if '"event_type":"flow"' in x]
    # microseg's own numbers are in Suricata's metadata.flowints (slowpath/eve.py)
    ints = [f.get("metadata", {}).get("flowints", {}) for f in flows]
    vlat = {p: [n["verdict_latency_us"] for f, n in zip(flows, ints)
                if f["dest_port"] == p and "verdict_latency_us" in n] for p in (ASYNC_PORT, HOLD_PORT)}
    return samples, vlat, cpu


def cpulist_arg(value: str) -> str:
    """A --*-cpus value checked before any lab is built (the setting's own
    parser and check): argparse then names the option and the bad CPU."""
    try:
        cpus = parse_cpulist(value)
        check_usable(cpus)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return format_cpulist(cpus)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500, help="GETs per port and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--segments", type=int, default=20_000, help="payload records per drain measurement")
    ap.add_argument("--quick", action="store_true", help="100 requests, 3 rounds, 5,000 segments")
    ap.add_argument("--workers", default=f"1,{os.cpu_count() or 1}",
                    help="slow-path worker counts for sections 1b and 2-3, comma-separated (default 1,CPUs)")
    ap.add_argument("--only", choices=("records", "lab"), help="run section 1 (records) or sections 2-3 (lab) only")
    ap.add_argument("--endpoints-cpus", metavar="CPULIST", type=cpulist_arg,
                    help="sections 2-4: run the lab's client and http.server on these CPUs (taskset; default: "
                         "not pinned)")
    ap.add_argument("--slowpath-cpus", metavar="CPULIST", type=cpulist_arg,
                    help="sections 2-4: `microseg run`'s slowpath.cpus (default: not set, not pinned)")
    ap.add_argument("--slowpath-nice", type=int, metavar="N",
                    help=f"sections 2-4: `microseg run`'s slowpath.nice (default: its default, {WORKER_NICE_DEFAULT})")
    ap.add_argument("--profile", metavar="FILE",
                    help="section 1: write a cProfile of the engine case's last round to FILE "
                         "(pstats format; the rates are then the profiled ones)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="section 1: rates from this process's CPU time, not wall time (on a busy, shared machine)")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.rounds, args.segments = 100, 3, 5000
    if os.geteuid() != 0:
        print("bench/slowpath.py loads BPF programs and builds a lab: run it as root", file=sys.stderr)
        return 1
    print("microseg slow path")
    print(f"kernel {os.uname().release}; {args.rounds} rounds; medians")
    print()
    if args.only != "lab":
        print(f"1. payload records, one flow of {args.segments} HTTP request segments, in process"
              + (" (CPU time)" if args.cpu_time else ""))
        print()
        print("| case | records/s | ratio to drain only |")
        print("|---|---|---|")
        clock = time.process_time if args.cpu_time else time.perf_counter
        for case, rate, ratio in bench_records(args.segments, args.rounds, args.profile, clock):
            print(f"| {case} | {rate:,.0f} | {ratio:.2f} |")
        from bench.slowpath_workers import bench_workers, print_table
        counts = tuple(sorted({int(x) for x in args.workers.split(",")}))
        print()
        print_table(bench_workers(2 * args.segments, args.rounds, counts), 2 * args.segments, os.cpu_count())
    if args.only == "records":
        return 0
    layout = Layout(args.endpoints_cpus, args.slowpath_cpus, args.slowpath_nice)
    print(f"lab layout: {layout.describe()}")
    for workers in sorted({int(x) for x in args.workers.split(",")}):
        print()
        print(f"## {workers} slow-path worker{'s' if workers > 1 else ''} (`slowpath.workers: {workers}`)")
        lab_tables(args, *bench_lab(args.requests, args.rounds, workers, layout))
    return 0


def lab_tables(args, samples, vlat, cpu) -> None:
    base = statistics.median(samples[ALLOW_PORT]["rate"])
    base_p50 = statistics.median(samples[ALLOW_PORT]["lat"])
    print()
    print(f"2. HTTP through the lab gateway: {args.requests} sequential GETs per port and round, "
          f"a new connection each (python http.server)")
    print()
    print("| rule | requests/s | ratio | ratio per round (median) | latency p50 ms | p99 ms | p50 minus allow's, ms |")
    print("|---|---|---|---|---|---|---|")
    for port, name in MODES.items():
        s = samples[port]
        rate, p50 = statistics.median(s["rate"]), statistics.median(s["lat"])
        # each round's rate over the allow rule's in the same round (the two
        # runs minutes apart at most): steadier than the ratio of the
        # medians when the machine's load changes during the benchmark
        per_round = statistics.median(r / a for r, a in zip(s["rate"], samples[ALLOW_PORT]["rate"]))
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f} | {per_round:.2f} | {p50 * 1e3:.2f} "
              f"| {pct(s['lat'], 99) * 1e3:.2f} | {(p50 - base_p50) * 1e3:+.2f} |")
    print()
    print("3. verdict latency (kernel timestamp of the first inspected byte to the verdict map write)")
    print()
    print("| rule | flows | p50 us | p99 us | p99.9 us |")
    print("|---|---|---|---|---|")
    for port in (ASYNC_PORT, HOLD_PORT):
        v = vlat[port]
        if v:
            print(f"| {MODES[port]} | {len(v)} | {pct(v, 50)} | {pct(v, 99)} | {pct(v, 99.9)} |")
    # What the slow path cost, from /proc: less noisy than the rates on a
    # busy machine (a process's CPU time does not count the time it waited
    # for a CPU). Both processes also did a little for the allow rule's
    # connections (the daemon writes their flow records).
    inspected = 2 * args.requests * args.rounds
    print()
    print(f"4. slow-path CPU during the client runs, per inspected connection ({inspected} inspected, "
          f"{args.requests * args.rounds} allowed)")
    print()
    print("| process | CPU s | CPU us per inspected connection | of which in the kernel | voluntary context switches "
          "per inspected connection | minor page faults per inspected connection |")
    print("|---|---|---|---|---|---|")
    for name, (sec, sw, flt, ksec) in cpu.items():
        print(f"| {name} | {sec:.2f} | {sec / inspected * 1e6:,.0f} | {ksec / inspected * 1e6:,.0f} "
              f"| {sw / inspected:.1f} | {flt / inspected:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
