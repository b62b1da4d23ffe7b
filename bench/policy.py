"""New TCP connections per second and throughput through the lab gateway:
no filter, microseg with a policy, and nftables with the same allow-list.

The lab (appliance.lab.Lab: client -- gateway -- server, namespaces of its
own) forwards between two veths. In the server namespace: a TCP server on
port 9000 (accept, read one byte, answer one byte, close) and ``iperf3 -s``.
From the client namespace:

* **new conn/s**: one client, one connection at a time: connect, send one
  byte, read the answer, close with SO_LINGER 0 (a RST: no TIME_WAIT, so
  source ports do not run out); at most ``--conns`` connections and
  ``--conn-seconds`` seconds per run; completed connections / seconds.
  Client and server run on one CPU (CONN_CPU), so everything a connection
  costs, the gateway's forwarding included, adds up on that CPU.
* **Gbit/s**: ``iperf3 -c ... -t --iperf-seconds`` (one TCP stream), the
  receiver's rate; client and server on that CPU too.

The cases, for each rule count of ``--rules`` (an allow-list of that many
entries: source network, destination host, TCP port, of which only the last
lets the benchmark's traffic through, so a matcher that walks the list pays
for all of it; everything else is dropped):

* ``no filter``: plain forwarding, measured before and after the others of
  its rule count; the ratios are to the median of both (same run);
* ``empty program``: a two-instruction TC program (``r0 = TC_ACT_OK;
  exit``) attached the way microseg's default attaches (tcx links, ingress
  and egress, on the same two gateway interfaces), at the first rule count:
  the cost of having the hooks at all, so the rows below it separate the
  hook's price from microseg's own work;
* ``microseg, no policy``: ``microseg up`` without a policy (every flow
  passes), once, at the first rule count: the fast path's own cost, so the
  next row's difference to it is the policy's;
* ``microseg``: ``microseg up --policy`` on the gateway's two interfaces, the
  allow-list as rules between CIDRs, default deny both ways, with the
  default attach setting (tcx links where the kernel has them, 6.6+; the
  mode is in the row's notes);
* ``microseg (clsact)`` (``--clsact``): the same with `attach.mode: clsact`
  (cls_bpf filters on a clsact qdisc): the A/B of the attach mode;
* ``nftables``: in the gateway's namespace, a forward chain (policy drop),
  ``ct state established,related accept`` first, then one rule per entry
  (conntrack: only a connection's first packet walks the rules);
* ``nftables-set``: the same chain with one rule matching the whole list in a
  concatenated interval set (``ip saddr . ip daddr . tcp dport``), the best
  nftables does with a long list.

Rounds, interleaved: for each rule count, ``--runs`` rounds; a round
measures no filter, then every case once (set up, one connection run and
one iperf3 run, undone), then no filter again; the order of the cases
turns by one each round, so no case always runs right after the baseline
or at the end. Every case gets exactly the same treatment. The table has
the medians of each case's runs and their ratio to no filter's median
("ratio"), and the median over rounds of the per-round paired ratio
("paired": the case's run over the mean of no filter's two runs of the
same round), which follows the machine's load drifting between rounds.
Every run is bounded
in time, and everything is undone in ``finally`` blocks (``microseg down``,
``nft flush ruleset`` in the gateway namespace, the lab's namespaces
removed). Root only; traffic only inside the lab.

    .venv/bin/python bench/policy.py [--rules 10,1000,10000] [--runs N] [--conns N] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.lab import CLIENT_V4, GW_IFACES, SERVER_V4, Lab, forget_namespace_state  # noqa: E402

MICROSEG = [sys.executable, "-m", "appliance.cli"]
CONN_PORT = 9000
IPERF_PORT = 5201
DEFAULT_RULES = (10, 1_000, 10_000)
DEFAULT_RUNS = 5
DEFAULT_CONNS = 20_000
# Client source addresses the connection runs take in turn (--sources). One
# address has only ~14,000 ports connect() picks from (one parity of
# ip_local_port_range): within a second of connections its 5-tuples come
# round again, and a SYN on a tuple whose closed session is still in
# ms_flows takes that entry over with its verdict (no insert, no policy
# lookup: conntrack.h, the port-reuse branch), which a gateway's new
# clients do not. 16 addresses give ~225,000 tuples, a 6 s run's worth of
# new ones at 20,000 connections/s, under ms_flows' default 524,288.
DEFAULT_SOURCES = 16
SOURCES_MAX = 200
DEFAULT_CONN_SECONDS = 10.0
DEFAULT_IPERF_SECONDS = 3
# CPUs: client and server share one, so everything a connection or a byte
# costs (both ends, and the gateway's forwarding in softirq, which runs
# where the packet was sent) is spent on one CPU and adds up, instead of
# depending on where the scheduler put the two ends (a wake-up across CPUs
# in this VM costs more than the forwarding: unpinned, the connection rate
# jumped between ~13k and ~28k/s from one run to the next) or on what else
# runs on the other CPU (iperf3 across two CPUs fell from 19 to 7 Gbit/s
# for minutes while the machine was shared).
CONN_CPU = 0
IPERF_CPUS = (0, 0)       # client, server
QUICK = dict(rules=(10,), runs=1, conns=300, conn_seconds=3.0, iperf_seconds=1)
CASES = ("no filter", "empty program", "microseg, no policy", "microseg", "microseg (clsact)", "nftables", "nftables-set")
# The `attach.mode` setting of the "microseg (clsact)" case (--clsact).
CLSACT_SETTINGS = "attach: {mode: clsact}\n"
# --only's names of the cases (one has a comma), as bench/policy_perf.py's.
SHORT = {"empty": "empty program", "microseg-nopolicy": "microseg, no policy", "microseg": "microseg",
         "microseg-clsact": "microseg (clsact)", "nftables": "nftables", "nftables-set": "nftables-set"}
# The cases run once, at the first rule count (they have no policy).
ONCE = ("empty program", "microseg, no policy")

# One connection at a time; prints {"ok", "failed", "seconds"} as JSON.
# An optional fifth argument, comma-separated source addresses, makes the
# connections take them in turn (--sources; DEFAULT_SOURCES says why).
# IP_BIND_ADDRESS_NO_PORT: bind the address only, connect() picks the port
# as it does without a bind.
CLIENT = r"""
import json, socket, struct, sys, time
host, port, count, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sources = sys.argv[5].split(",") if len(sys.argv) > 5 else []
linger = struct.pack("ii", 1, 0)
ok = failed = 0
start = time.perf_counter()
deadline = start + limit
while ok + failed < count and time.perf_counter() < deadline:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        if sources:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((sources[(ok + failed) % len(sources)], 0))
        s.connect((host, port))
        s.sendall(b"q")
        if s.recv(1) == b"a":
            ok += 1
        else:
            failed += 1
    except OSError:
        failed += 1
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.close()
print(json.dumps({"ok": ok, "failed": failed, "seconds": time.perf_counter() - start}))
"""

# Is a filter in place? A SYN to a port the allow-list does not name (and no
# server listens on): "refused" (a RST came back: it got through), or "dropped".
PROBE = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("dropped")
"""
PROBE_PORT = 9001

# Accept, read one byte, answer one, close; one connection at a time.
SERVER = r"""
import socket, sys
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", int(sys.argv[1])))
ls.listen(1024)
while True:
    c, _ = ls.accept()
    c.settimeout(2.0)
    try:
        if c.recv(1):
            c.sendall(b"a")
    except OSError:
        pass
    c.close()
"""


# -- the allow-list ------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    src: str        # CIDR
    dst: str        # one address
    ports: tuple[int, ...]


def allow_list(n: int) -> list[Entry]:
    """``n`` entries; only the last matches the benchmark's traffic."""
    if not 1 <= n <= 65_536:
        raise SystemExit("rule counts: 1 to 65536")
    base_src = int(ipaddress.IPv4Address("172.16.0.0"))
    out = []
    for i in range(n - 1):
        src = ipaddress.IPv4Network((base_src + i * 16, 28))
        dst = ipaddress.IPv4Address(f"192.168.{i // 256}.{i % 256}")
        out.append(Entry(str(src), str(dst), (1024 + i % 50_000,)))
    client_net = ipaddress.IPv4Network(f"{CLIENT_V4}/24", strict=False)
    out.append(Entry(str(client_net), SERVER_V4, (IPERF_PORT, CONN_PORT)))
    return out


def microseg_policy(entries: list[Entry]) -> str:
    lines = ["defaults: {ingress: deny, egress: deny}", "rules:"]
    for e in entries:
        ports = ", ".join(str(p) for p in e.ports)
        lines.append(f"  - {{from: {e.src}, to: {e.dst}/32, proto: tcp, ports: [{ports}], action: allow}}")
    return "\n".join(lines) + "\n"


def _ports(e: Entry) -> str:
    return str(e.ports[0]) if len(e.ports) == 1 else "{ " + ", ".join(map(str, e.ports)) + " }"


def nft_linear(entries: list[Entry]) -> str:
    rules = "\n".join(f"    ip saddr {e.src} ip daddr {e.dst} tcp dport {_ports(e)} accept" for e in entries)
    return ("table inet msbench {\n  chain forward {\n    type filter hook forward priority filter; policy drop;\n"
            "    ct state established,related accept\n" + rules + "\n  }\n}\n")


def nft_set(entries: list[Entry]) -> str:
    elems = ",\n      ".join(f"{e.src} . {e.dst} . {p}" for e in entries for p in e.ports)
    return ("table inet msbench {\n"
            "  set allow {\n    type ipv4_addr . ipv4_addr . inet_service\n    flags interval\n"
            f"    elements = {{\n      {elems}\n    }}\n  }}\n"
            "  chain forward {\n    type filter hook forward priority filter; policy drop;\n"
            "    ct state established,related accept\n"
            "    ip saddr . ip daddr . tcp dport @allow accept\n  }\n}\n")


# -- measuring -------------------------------------------------------------------------

@dataclass
class Result:
    conns: list[float] = field(default_factory=list)     # conn/s per run
    gbits: list[float] = field(default_factory=list)
    # Per round: this case's run over the mean of no filter's two runs of
    # the same round (None where a run is missing).
    conn_pairs: list[float] = field(default_factory=list)
    gbit_pairs: list[float] = field(default_factory=list)
    failed: int = 0
    notes: list[str] = field(default_factory=list)


def _empty_insns() -> bytes:
    """The empty program: r0 = 0 (TC_ACT_OK, let the packet through); exit."""
    from datapath import bpfsys
    BPF_ALU64_MOV_K, BPF_EXIT = 0xB7, 0x95
    return bpfsys.insn(BPF_ALU64_MOV_K, dst=0, imm=0) + bpfsys.insn(BPF_EXIT)


@contextlib.contextmanager
def empty_hooks(netns: str, ifaces: tuple[str, ...]):
    """The empty program on ``ifaces`` in ``netns``, ingress and egress, as
    tcx links held by this process only (not pinned: closing them detaches,
    so nothing outlives the benchmark even if it is killed)."""
    from datapath import attach, bpfsys
    fd = bpfsys.prog_load(_empty_insns(), bpfsys.BPF_PROG_TYPE_SCHED_CLS, name="ms_bench_empty")
    links: list[int] = []
    try:
        with attach.netlink(netns) as ipr:
            idx = attach.resolve(ipr, list(ifaces), netns)
        with attach._in_netns(netns):
            for i in idx.values():
                for at in (bpfsys.BPF_TCX_INGRESS, bpfsys.BPF_TCX_EGRESS):
                    links.append(bpfsys.link_create_tcx(fd, i, at))
        yield
    finally:
        for lfd in links:
            try:
                bpfsys.link_detach(lfd)
            except OSError:
                pass
            os.close(lfd)
        os.close(fd)


def policy_decisions(stats_json: str) -> int:
    """New flows microseg's policy decided (allowed: PASS_POLICY_ALLOW, at
    ingress), from ``microseg stats --json``: how many connections of a case
    paid for the policy, not took over a reused 5-tuple's closed session
    and its verdict (DEFAULT_SOURCES)."""
    try:
        rows = json.loads(stats_json)["counters"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"microseg stats --json: unreadable output ({e})") from None
    return sum(int(r["packets"]) for r in rows if r.get("reason") == "PASS_POLICY_ALLOW" and r.get("hook") == "ingress")


def client_sources(n: int) -> list[str]:
    """``n`` client addresses in the client's /24 (the lab's CLIENT_V4 first,
    then .10 up), all inside the allow-list's last entry."""
    if not 1 <= n <= SOURCES_MAX:
        raise ValueError(f"--sources: 1 to {SOURCES_MAX}, not {n}")
    net = CLIENT_V4.rsplit(".", 1)[0]
    return [CLIENT_V4] + [f"{net}.{10 + i}" for i in range(n - 1)]


class Bench:
    def __init__(self, lab: Lab, args, workdir: Path):
        self.lab, self.args, self.workdir = lab, args, workdir
        self.conns_made = 0     # connections the connection client completed, all runs

    def conn_rate(self, res: Result) -> float | None:
        a = self.args
        r = self.lab.run(self.lab.client, ["taskset", "-c", str(CONN_CPU), sys.executable, "-c", CLIENT,
                                           SERVER_V4, str(CONN_PORT), str(a.conns), str(a.conn_seconds),
                                           ",".join(client_sources(a.sources))],
                         timeout=a.conn_seconds + 15, check=False)
        try:
            d = json.loads(r.stdout)
        except ValueError:
            res.notes.append(f"connection client failed: {r.stderr.strip()[-200:]}")
            return None
        res.failed += d["failed"]
        self.conns_made += d["ok"]
        res.conns.append(d["ok"] / d["seconds"] if d["seconds"] > 0 else 0.0)
        return res.conns[-1]

    def throughput(self, res: Result) -> float | None:
        t = self.args.iperf_seconds
        r = self.lab.run(self.lab.client, ["taskset", "-c", str(IPERF_CPUS[0]), "iperf3", "-c", SERVER_V4, "-p", str(IPERF_PORT), "-t", str(t),
                                           "-J", "--connect-timeout", "3000"],
                         timeout=t + 20, check=False)
        try:
            d = json.loads(r.stdout)
            res.gbits.append(d["end"]["sum_received"]["bits_per_second"] / 1e9)
            return res.gbits[-1]
        except (ValueError, KeyError):
            res.notes.append(f"iperf3 failed: {(r.stdout + r.stderr).strip()[-200:]}")
            return None

    def probe(self) -> str:
        r = self.lab.run(self.lab.client, [sys.executable, "-c", PROBE, SERVER_V4, str(PROBE_PORT), "0.5"],
                         timeout=15, check=False)
        return r.stdout.strip() or "error"

    def measure(self, res: Result, filtered: bool = True) -> tuple[float | None, float | None]:
        """One run of each workload; (conn/s, Gbit/s)."""
        got = self.probe()
        want = "dropped" if filtered else "refused"
        if got != want:
            res.notes.append(f"a SYN to port {PROBE_PORT} (not in the allow-list) was {got}, "
                             f"expected {want}: the filter is not what this case measures")
            res.failed += 1
        return self.conn_rate(res), self.throughput(res)

    # -- the filters --------------------------------------------------------------
    @contextlib.contextmanager
    def case(self, case: str, entries: list[Entry], res: Result):
        """Set ``case`` up in the gateway for the duration; yields whether
        it filters (the probe's expectation), or None when setting up failed
        (noted in ``res``)."""
        if case == "no filter":
            yield False
        elif case == "empty program":
            with empty_hooks(self.lab.gateway, GW_IFACES):
                yield False
        elif case.startswith("microseg"):
            with self.microseg(None if case == "microseg, no policy" else entries, res,
                               clsact=case == "microseg (clsact)") as ok:
                yield (case != "microseg, no policy") if ok else None
        else:
            ruleset = nft_linear(entries) if case == "nftables" else nft_set(entries)
            with self.nft(ruleset, res, f"{case}-{len(entries)}") as ok:
                yield True if ok else None

    @contextlib.contextmanager
    def microseg(self, entries: list[Entry] | None, res: Result, clsact: bool = False):
        """``entries`` None: attached without a policy (every flow passes).
        ``clsact``: with the `attach.mode: clsact` setting (cls_bpf filters,
        not the default's tcx links)."""
        up = [*MICROSEG, "up", "--netns", self.lab.gateway, "--iface", *GW_IFACES]
        if clsact:
            cfg = self.workdir / "clsact.yaml"
            cfg.write_text(CLSACT_SETTINGS)
            up += ["--config", str(cfg)]
        if entries is not None:
            f = self.workdir / f"policy-{len(entries)}.yaml"
            f.write_text(microseg_policy(entries))
            up += ["--policy", str(f)]
        try:
            t0 = time.monotonic()
            r = subprocess.run(up, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                res.notes.append(f"microseg up failed: {r.stderr.strip()[-300:]}")
                yield False
                return
            if entries is None and "no policy applied" not in r.stdout:
                res.notes.append(f"microseg up found a policy to carry over: {r.stdout.strip()[-200:]}")
                res.failed += 1
            mode = "tcx" if ", tcx link)" in r.stdout else "clsact"
            res.notes.append(f"microseg up{' --policy' if entries is not None else ''} ({mode}): "
                             f"{time.monotonic() - t0:.1f} s")
            made = self.conns_made
            yield True
            if entries is not None:
                r = subprocess.run([*MICROSEG, "stats", "--json", "--netns", self.lab.gateway],
                                   capture_output=True, text=True, timeout=60)
                try:
                    res.notes.append(f"new flows the policy decided: {policy_decisions(r.stdout)} of "
                                     f"{self.conns_made - made} connections (and the probe and iperf3's)")
                except ValueError as e:
                    res.notes.append(str(e))
        finally:
            subprocess.run([*MICROSEG, "down", "--netns", self.lab.gateway, "--iface", *GW_IFACES],
                           capture_output=True, text=True, timeout=120)
            # `up` without --policy carries over the policy last applied in
            # the namespace: the next case (in interleaved rounds, maybe
            # "microseg, no policy") starts from none, as a fresh lab would.
            forget_namespace_state(self.lab.gateway)

    @contextlib.contextmanager
    def nft(self, ruleset: str, res: Result, name: str):
        f = self.workdir / f"{name}.nft"
        f.write_text(ruleset)
        try:
            t0 = time.monotonic()
            r = self.lab.run(self.lab.gateway, ["nft", "-f", str(f)], timeout=300, check=False)
            if r.returncode != 0:
                res.notes.append(f"nft -f failed: {r.stderr.strip()[-300:]}")
                yield False
                return
            res.notes.append(f"nft -f: {time.monotonic() - t0:.1f} s")
            yield True
        finally:
            self.lab.run(self.lab.gateway, ["nft", "flush", "ruleset"], timeout=60, check=False)


def servers(lab: Lab) -> list[subprocess.Popen]:
    procs = [lab.popen(lab.server, ["taskset", "-c", str(CONN_CPU), sys.executable, "-c", SERVER,
                                    str(CONN_PORT)]),
             lab.popen(lab.server, ["taskset", "-c", str(IPERF_CPUS[1]), "iperf3", "-s", "-p", str(IPERF_PORT)])]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = lab.run(lab.server, ["ss", "-Hltn"], check=False)
        if f":{CONN_PORT} " in r.stdout and f":{IPERF_PORT} " in r.stdout:
            return procs
        time.sleep(0.05)
    for p in procs:
        p.kill()
    raise SystemExit("the servers in the lab did not start")


def cases_for(n: int, args) -> list[str]:
    """The filtered cases of rule count ``n``, in CASES' order."""
    out = []
    for case in CASES[1:]:
        if case in ONCE and n != args.rules[0]:
            continue
        if case == "microseg (clsact)" and not args.clsact:
            continue
        if args.only and case not in args.only:
            continue
        out.append(case)
    return out


def _pair(x: float | None, b0: float | None, b1: float | None) -> float | None:
    bs = [b for b in (b0, b1) if b]
    return x / statistics.mean(bs) if x is not None and bs else None


def run(args) -> dict[tuple[str, int], Result]:
    results: dict[tuple[str, int], Result] = {}
    with tempfile.TemporaryDirectory(prefix="msbench-") as tmp, Lab() as lab:
        # Named so a caller can check that exactly these are gone afterwards.
        print(f"lab namespaces: {', '.join(lab.namespaces)}", flush=True)
        procs = servers(lab)
        for a in client_sources(args.sources)[1:]:
            lab.run(lab.client, ["ip", "addr", "add", f"{a}/24", "dev", "eth0"])
        try:
            b = Bench(lab, args, Path(tmp))
            # One connection run not recorded: the first run in a fresh lab
            # (cold caches, the servers' first accepts) came out at half the
            # next one's rate (4,110 then 11,795 conn/s in one --quick run).
            b.conn_rate(Result())
            for n in args.rules:
                entries = allow_list(n)
                base = results[("no filter", n)] = Result()
                cases = cases_for(n, args)
                for c in cases:
                    results[(c, n)] = Result()
                for rnd in range(args.runs):
                    # Turn the order by one each round: no case always
                    # runs next to the baseline or last.
                    k = rnd % len(cases) if cases else 0
                    order = cases[k:] + cases[:k]
                    print(f"{n} rules, round {rnd + 1}: {', '.join(order)}", flush=True)
                    bc0, bg0 = b.measure(base, filtered=False)
                    got = {}
                    for c in order:
                        res = results[(c, n)]
                        with b.case(c, entries, res) as filtered:
                            got[c] = b.measure(res, filtered=filtered) if filtered is not None else (None, None)
                    bc1, bg1 = b.measure(base, filtered=False)
                    for c, (cc, gg) in got.items():
                        pc, pg = _pair(cc, bc0, bc1), _pair(gg, bg0, bg1)
                        if pc is not None:
                            results[(c, n)].conn_pairs.append(pc)
                        if pg is not None:
                            results[(c, n)].gbit_pairs.append(pg)
        finally:
            for p in procs:
                p.kill()
                p.wait(timeout=5)
            # The lab's own namespace; leaving the Lab removes it anyway.
            lab.run(lab.gateway, ["nft", "flush", "ruleset"], timeout=60, check=False)
    return results


def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def table(results: dict[tuple[str, int], Result], rules: list[int]) -> str:
    out = ["| case | rules | new conn/s | ratio | paired | Gbit/s | ratio | paired |",
           "|---|---|---|---|---|---|---|---|"]
    f2 = lambda x: f"{x:.2f}" if x is not None else "-"  # noqa: E731
    for n in rules:
        base = results[("no filter", n)]
        bc, bg = _med(base.conns), _med(base.gbits)
        for case in CASES:
            r = results.get((case, n))
            if r is None:
                continue
            c, g = _med(r.conns), _med(r.gbits)
            cr = c / bc if c is not None and bc else None
            gr = g / bg if g is not None and bg else None
            pc, pg = (1.0, 1.0) if case == "no filter" else (_med(r.conn_pairs), _med(r.gbit_pairs))
            label = f"({n})" if case == "no filter" else ("-" if case in ONCE else str(n))
            out.append(f"| {case} | {label} | {f'{c:.0f}' if c is not None else '-'} | {f2(cr)} | {f2(pc)} | "
                       f"{f2(g)} | {f2(gr)} | {f2(pg)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", default=None, help="rule counts, comma-separated (default 10,1000,10000)")
    ap.add_argument("--runs", type=int, default=None, help=f"runs per case (default {DEFAULT_RUNS})")
    ap.add_argument("--conns", type=int, default=None, help=f"connections per run, at most (default {DEFAULT_CONNS})")
    ap.add_argument("--conn-seconds", type=float, default=None,
                    help=f"seconds per connection run, at most (default {DEFAULT_CONN_SECONDS:g})")
    ap.add_argument("--iperf-seconds", type=int, default=None, help=f"iperf3 -t (default {DEFAULT_IPERF_SECONDS})")
    ap.add_argument("--clsact", action="store_true",
                    help="also microseg with `attach.mode: clsact` (cls_bpf filters), after the default's row")
    ap.add_argument("--only", default=None,
                    help=f"comma-separated cases to run besides no filter (default all) of: {', '.join(SHORT)}")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    ap.add_argument("--sources", type=int, default=DEFAULT_SOURCES,
                    help=f"client source addresses the connections take in turn, 1-{SOURCES_MAX} (default "
                         f"{DEFAULT_SOURCES}: new 5-tuples; 1: the tuples come round and most connections reuse "
                         "a closed session's entry and verdict)")
    args = ap.parse_args(argv)
    if not 1 <= args.sources <= SOURCES_MAX:
        ap.error(f"--sources: 1 to {SOURCES_MAX}")
    q = QUICK if args.quick else {}
    args.rules = [int(x) for x in args.rules.split(",")] if args.rules else list(q.get("rules", DEFAULT_RULES))
    only = [c.strip() for c in args.only.split(",")] if args.only else []
    if any(c not in SHORT for c in only):
        ap.error(f"--only: cases are {', '.join(SHORT)}")
    args.only = [SHORT[c] for c in only] or None
    args.runs = args.runs or q.get("runs", DEFAULT_RUNS)
    args.conns = args.conns or q.get("conns", DEFAULT_CONNS)
    args.conn_seconds = args.conn_seconds or q.get("conn_seconds", DEFAULT_CONN_SECONDS)
    args.iperf_seconds = args.iperf_seconds or q.get("iperf_seconds", DEFAULT_IPERF_SECONDS)
    if min(args.runs, args.conns, args.iperf_seconds) < 1 or args.conn_seconds <= 0:
        ap.error("--runs, --conns, --conn-seconds and --iperf-seconds must be positive")
    if os.geteuid() != 0:
        print("bench/policy.py builds network namespaces and attaches BPF programs: run it as root",
              file=sys.stderr)
        return 1
    for tool in ("nft", "iperf3"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            print(f"bench/policy.py needs {tool}: run `make setup`", file=sys.stderr)
            return 1

    t0 = time.monotonic()
    results = run(args)
    print("microseg policy against nftables: the lab gateway (veth, 2 namespaces hops), "
          f"kernel {os.uname().release}")
    print(f"{args.runs} interleaved rounds (each: no filter, every case once in an order turned by one per round, "
          f"no filter again); medians; new conn/s: one client, connect + 1-byte request/response + "
          f"RST close, at most {args.conns} connections or {args.conn_seconds:g} s per run, from "
          f"{args.sources} source address(es) in turn, client and server "
          f"on CPU {CONN_CPU}; Gbit/s: iperf3 -t {args.iperf_seconds}, one stream, client on CPU "
          f"{IPERF_CPUS[0]}, server on CPU {IPERF_CPUS[1]} (a CPU's work, the forwarding included)")
    print("the allow-list's last entry lets the benchmark's traffic through; ratio: the case's median over no "
          "filter's median (same rule count); paired: median over rounds of the case's run over the mean of no "
          "filter's two runs in that round")
    print()
    print(table(results, args.rules))
    print()
    print("every run (new conn/s | Gbit/s | paired conn ratios | paired Gbit ratios):")
    for (case, n), r in results.items():
        print(f"  {case} {n}: {' '.join(f'{c:.0f}' for c in r.conns)} | {' '.join(f'{g:.2f}' for g in r.gbits)}"
              f" | {' '.join(f'{x:.2f}' for x in r.conn_pairs)} | {' '.join(f'{x:.2f}' for x in r.gbit_pairs)}")
    problems = []
    for (case, n), r in results.items():
        for note in r.notes:
            print(f"{case} {n}: {note}")
        if r.failed:
            problems.append(f"{case} {n}: {r.failed} connection(s) or probe(s) failed")
        want = 2 * args.runs if case == "no filter" else args.runs
        if len(r.conns) < want or len(r.gbits) < want:
            problems.append(f"{case} {n}: missing measurements")
    print(f"total {time.monotonic() - t0:.0f} s")
    for p in problems:
        print(f"WARNING: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
