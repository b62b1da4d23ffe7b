"""Where the CPU of a connection (or of a megabyte) goes through the lab
gateway: perf profiles of bench/policy.py's workloads, per filter.

bench/policy.py's ratios of connections per second move by more than the
differences between filters when the machine is shared; the CPU each filter
spends per connection moves much less. For each case (``no filter``,
``empty program`` (bench/policy.py's two-instruction program on tcx, where
microseg's programs attach), ``microseg, no policy``, ``microseg`` with bench/policy.py's allow-list,
``nftables-set``, ``nftables``; on the command line ``plain``,
``empty`` and ``microseg-nopolicy`` name the first three) this runs bench/policy.py's connection
client (or ``iperf3``) in the same lab, records ``perf record -e cpu-clock
-g`` on the CPU the client, the servers and the forwarding share (CONN_CPU),
and counts only the samples of the lab's own processes (the client and the
two servers: the gateway's forwarding runs in softirq on their stacks).
Printed per case, median over ``--rounds``, in microseconds of CPU per
connection (``--workload conn``) or per megabyte received (``iperf``):

* ``all``: everything those processes cost (both TCP stacks, the forwarding);
* ``tc hooks``: samples under ``tc_run`` (the clsact hooks: cls_bpf and
  every microseg program with the helpers and map code they call);
* ``netfilter``: samples under ``nf_hook_slow`` (conntrack, nftables);
* ``hooks``: samples under ``tc_run`` or in a BPF program: with tcx
  (``microseg``: the default attach setting, tcx where the kernel has it;
  ``microseg-clsact`` forces cls_bpf filters, `attach.mode: clsact`) the
  programs run from tcx's dispatcher, inlined into the device's receive and transmit paths,
  not under ``tc_run``; ``framework`` is ``hooks`` less the programs' own
  samples (cls_bpf's filter walk, tc_run; tcx's inlined dispatch is not
  a frame of its own and lands in neither);
* one line per BPF program (its samples, helpers included), then the
  heaviest leaf functions under the hooks;
* with ``--tasks``: the whole CPU by task (kworkers, ksoftirqd, RCU,
  the idle task "swapper", other processes), so work a connection leaves
  to other tasks, or time the CPU waits, shows, and the other tasks'
  samples in a BPF program or the receive path; ``--json FILE`` writes
  every round's numbers, every leaf of the lab's processes among them
  (hooks or not), for comparing two cases leaf by leaf: what a filter
  costs outside its programs (the stacks' code slowed by the programs'
  cache lines) shows only there.

Root only; perf (linux-perf) must be installed (`make bench-policy-perf`
installs it, then runs this). Traffic stays in the lab;
the lab, ``microseg up`` and nftables rulesets are undone in ``finally``
blocks, perf's data files are written to a temporary directory removed
afterwards.

    .venv/bin/python bench/policy_perf.py [--workload conn|iperf] [--cases ...] [--rounds N] [--seconds S]
        [--tasks [--json F]] [--sources N]

``--sources N``: the connection client takes N source addresses in turn,
so its connections are new 5-tuples (an insert into ms_halfopen, the move
into ms_flows, a policy lookup), not a reuse of the closed session of the
same tuple, which is what nearly all of a one-address run is
(bench/policy.py DEFAULT_SOURCES says why).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.lab import GW_IFACES, SERVER_V4, Lab  # noqa: E402
from bench import policy as bp  # noqa: E402

# Command-line names of bench/policy.py's cases ("microseg, no policy" has a comma).
CASES = {"plain": "no filter", "empty": "empty program", "microseg-nopolicy": "microseg, no policy", "microseg": "microseg",
         "microseg-clsact": "microseg (clsact)", "nftables-set": "nftables-set", "nftables": "nftables"}
DEFAULT_CASES = ("plain", "microseg", "nftables-set")
# 4999 Hz, not 5000: a sampling rate in step with the kernel's tick would
# sample the same phase of periodic work.
PERF_HZ = 4999
# perf starts this long after the workload and stops this long before its
# end: connection set-up and iperf3's slow start stay out of the profile.
SETTLE_S = 0.5
TAIL_S = 1.0
LEAVES_SHOWN = 12
MB = 1_000_000
# Kernel functions of the packet receive path: another task's sample in one
# of them is softirq work, perhaps the lab's packets, done on its time.
RECEIVE_PATH = ("__netif_receive_skb_core.constprop.0", "net_rx_action", "process_backlog")


# -- reading perf script -------------------------------------------------------------

def parse_script(script: str) -> list[tuple[str, int, list[str]]]:
    """(task name, pid, call chain) of every sample in the output of ``perf
    script -F comm,pid,ip,sym`` (or ``pid,ip,sym``: no task name). The task
    name is COMM without what follows a "/" (a kworker's or ksoftirqd's
    CPU; "swapper" is the idle task); the chain is leaf first, symbols
    without offsets."""
    out = []
    for block in script.split("\n\n"):
        lines = block.strip("\n").splitlines()
        head = lines[0].split() if lines else []
        if not head or not head[-1].isdigit():
            continue
        chain = []
        for line in lines[1:]:
            parts = line.split(None, 1)
            chain.append(re.sub(r"\+0x[0-9a-f]+$", "", parts[1].strip()) if len(parts) > 1 else "[unknown]")
        out.append((re.sub(r"/.*$", "", " ".join(head[:-1])), int(head[-1]), chain))
    return out


def samples(script: str, pids: set[int] | None) -> list[list[str]]:
    """Call chains of the samples of ``pids`` (None: every task) in perf
    script's output (parse_script)."""
    return [chain for _, pid, chain in parse_script(script) if pids is None or pid in pids]


def breakdown(chains: list[list[str]]) -> collections.Counter:
    """Sample counts: "all", "tc hooks", "netfilter", "prog NAME" (a BPF
    program with what it calls; NAME without the bpf_prog_<tag>_ prefix)
    and "leaf SYM" for the leaf functions of samples under the hooks."""
    c = collections.Counter()
    for chain in chains:
        c["all"] += 1
        in_tc = "tc_run" in chain
        in_nf = "nf_hook_slow" in chain
        c["tc hooks"] += in_tc
        c["netfilter"] += in_nf
        prog = next((s for s in chain if s.startswith("bpf_prog_")), None)
        c["hooks"] += in_tc or prog is not None
        if prog:
            c["prog " + prog.split("_", 3)[-1]] += 1
            c["programs"] += 1
        if (in_tc or in_nf or prog) and chain:
            leaf = chain[0]
            c["leaf " + (leaf.split("_", 3)[-1] + " (program)" if leaf.startswith("bpf_prog_") else leaf)] += 1
    return c


# -- measuring -----------------------------------------------------------------------

def profile(lab: Lab, argv: list[str], seconds: float, data: Path) -> tuple[str, str, int]:
    """Run ``argv`` in the client namespace with perf recording meanwhile;
    (the workload's stdout, perf script's output, the workload's pid)."""
    work = lab.popen(lab.client, ["taskset", "-c", str(bp.CONN_CPU), *argv], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(SETTLE_S)
        subprocess.run(["perf", "record", "-q", "-F", str(PERF_HZ), "-e", "cpu-clock", "-g", "-C", str(bp.CONN_CPU),
                        "-o", str(data), "--", "sleep", str(seconds - SETTLE_S - TAIL_S)],
                       capture_output=True, timeout=seconds + 30, check=True)
        out, _ = work.communicate(timeout=seconds + 30)
    finally:
        if work.poll() is None:
            work.kill()
            work.wait(5)
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,pid,ip,sym"], capture_output=True,
                            text=True, timeout=300).stdout
    data.unlink(missing_ok=True)
    return out, script, work.pid


def run_case(lab: Lab, args, case: str, workdir: Path, server_pids: list[int], tag: str) -> dict[str, float] | None:
    """One profile of ``case``: microseconds of CPU per connection or per MB, by breakdown key."""
    seconds = args.seconds
    if args.workload == "conn":
        argv = [sys.executable, "-c", bp.CLIENT, SERVER_V4, str(bp.CONN_PORT), str(10**9), str(seconds)]
        if args.sources > 1:
            argv.append(",".join(bp.client_sources(args.sources)))
    else:
        argv = ["iperf3", "-c", SERVER_V4, "-p", str(bp.IPERF_PORT), "-t", str(int(seconds)), "-J"]
    out, script, pid = profile(lab, argv, seconds, workdir / f"{tag}.data")
    try:
        d = json.loads(out)
    except ValueError:
        print(f"{CASES[case]}: the workload printed no result", file=sys.stderr)
        return None
    window = seconds - SETTLE_S - TAIL_S
    if args.workload == "conn":
        units = d["ok"] / d["seconds"] * window
        rate = f"{d['ok'] / d['seconds']:.0f} conn/s"
    else:
        units = d["end"]["sum_received"]["bytes"] / d["end"]["sum_received"]["seconds"] / MB * window
        rate = f"{d['end']['sum_received']['bits_per_second'] / 1e9:.2f} Gbit/s"
    parsed = parse_script(script)
    lab = {pid, *server_pids}
    lab_chains = [chain for _, p, chain in parsed if p in lab]
    counts = breakdown(lab_chains)
    if args.tasks:
        # The whole CPU, not only the lab's processes: work a connection
        # causes in other tasks (kworkers, ksoftirqd, RCU) and the CPU's
        # idle time (swapper), which the per-process columns cannot show.
        counts["cpu"] = len(parsed)
        for comm, _, _ in parsed:
            counts["task " + comm] += 1
        # Every leaf of the lab's processes, in the hooks or not: what a
        # filter costs outside its programs (the stacks' own code running
        # slower, other allocations) shows only against another case's.
        for chain in lab_chains:
            if chain:
                counts["lab leaf " + chain[0]] += 1
        # Other tasks' samples on the CPU, by the program or leaf they were in:
        # softirq work of the lab's packets done while another task was
        # current lands there.
        for comm, p, chain in parsed:
            if p in lab or not chain:
                continue
            prog = next((x for x in chain if x.startswith("bpf_prog_")), None)
            counts["other " + ("in " + prog.split("_", 3)[-1] if prog else
                               "net" if any(x in RECEIVE_PATH for x in chain) else "rest")] += 1
            counts[f"other pid {p} {comm}"] += 1
    print(f"  {CASES[case]}: {rate}", flush=True)
    return {k: n / PERF_HZ / units * 1e6 for k, n in counts.items()} if units > 0 else None


def with_filter(lab: Lab, case: str, workdir: Path, rules: int):
    """Set up ``case``'s filter in the gateway; returns its undo."""
    entries = bp.allow_list(rules)
    if case == "empty":
        hooks = bp.empty_hooks(lab.gateway, GW_IFACES)
        hooks.__enter__()
        return lambda: hooks.__exit__(None, None, None)
    down = [*bp.MICROSEG, "down", "--netns", lab.gateway, "--iface", *GW_IFACES]
    if case.startswith("microseg"):
        up = [*bp.MICROSEG, "up", "--netns", lab.gateway, "--iface", *GW_IFACES]
        if case == "microseg-clsact":
            cfg = workdir / "clsact.yaml"
            cfg.write_text(bp.CLSACT_SETTINGS)
            up += ["--config", str(cfg)]
        if case in ("microseg", "microseg-clsact"):
            pol = workdir / "policy.yaml"
            pol.write_text(bp.microseg_policy(entries))
            up += ["--policy", str(pol)]
        r = subprocess.run(up, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            subprocess.run(down, capture_output=True, timeout=120)
            raise SystemExit(f"microseg up failed: {r.stderr.strip()[-300:]}")
        return lambda: subprocess.run(down, capture_output=True, timeout=120)
    if case.startswith("nftables"):
        f = workdir / "rules.nft"
        f.write_text(bp.nft_set(entries) if case == "nftables-set" else bp.nft_linear(entries))
        flush = lambda: lab.run(lab.gateway, ["nft", "flush", "ruleset"], timeout=60, check=False)  # noqa: E731
        r = lab.run(lab.gateway, ["nft", "-f", str(f)], timeout=300, check=False)
        if r.returncode != 0:
            flush()
            raise SystemExit(f"nft -f failed: {r.stderr.strip()[-300:]}")
        return flush
    return lambda: None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("conn", "iperf"), default="conn")
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    ap.add_argument("--rules", type=int, default=10, help="allow-list entries (bench/policy.py's list)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, the cases interleaved in each")
    ap.add_argument("--tasks", action="store_true",
                    help="also the whole CPU by task (idle, kworkers, ksoftirqd included), and the lab's leaves "
                         "against the first case's (outside the hooks too)")
    ap.add_argument("--json", default=None, help="with --tasks: write every round's numbers (all keys) to this file")
    ap.add_argument("--sources", type=int, default=bp.DEFAULT_SOURCES,
                    help=f"client source addresses taken in turn (1-{bp.SOURCES_MAX}): new 5-tuples, not reused ones")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per profile (perf records 1.5 s less)")
    args = ap.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown case '{bad[0]}' (cases: {', '.join(CASES)})")
    if not 1 <= args.sources <= bp.SOURCES_MAX:
        ap.error(f"--sources: 1 to {bp.SOURCES_MAX}")
    if args.json and not args.tasks:
        ap.error("--json needs --tasks")
    if args.rounds < 1 or args.seconds < SETTLE_S + TAIL_S + 1:
        ap.error(f"--rounds must be positive and --seconds at least {SETTLE_S + TAIL_S + 1:g}")
    if os.geteuid() != 0:
        print("bench/policy_perf.py builds namespaces and runs perf on all of a CPU: run it as root", file=sys.stderr)
        return 1
    for tool in ("perf", "nft", "iperf3"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            print(f"bench/policy_perf.py needs {tool}", file=sys.stderr)
            return 1

    per = "connection" if args.workload == "conn" else "MB received"
    got: dict[str, list[dict[str, float]]] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory(prefix="ms-policy-perf-") as tmp, Lab() as lab:
        workdir = Path(tmp)
        procs = bp.servers(lab)
        for a in bp.client_sources(args.sources)[1:]:
            lab.run(lab.client, ["ip", "addr", "add", f"{a}/24", "dev", "eth0"])
        try:
            for r in range(args.rounds):
                print(f"round {r + 1}", flush=True)
                for case in cases:
                    undo = with_filter(lab, case, workdir, args.rules)
                    try:
                        res = run_case(lab, args, case, workdir, [p.pid for p in procs], f"r{r}")
                    finally:
                        undo()
                    if res:
                        got[case].append(res)
        finally:
            for p in procs:
                p.kill()
                p.wait(timeout=5)
    print()
    print(f"microseconds of CPU per {per} (CPU {bp.CONN_CPU}, the lab's processes only; perf cpu-clock at "
          f"{PERF_HZ} Hz; median of {args.rounds} round(s); {args.rules} rules; kernel {os.uname().release})")
    for case in cases:
        rs = got[case]
        if not rs:
            print(f"{CASES[case]}: no measurement")
            continue
        med = {k: statistics.median(r.get(k, 0.0) for r in rs) for k in set().union(*rs)}
        print(f"{CASES[case]}: all {med['all']:.1f}, tc hooks {med.get('tc hooks', 0):.2f}, "
              f"netfilter {med.get('netfilter', 0):.2f}, hooks {med.get('hooks', 0):.2f} = programs "
              f"{med.get('programs', 0):.2f} + framework {med.get('hooks', 0) - med.get('programs', 0):.2f}")
        for k in sorted((k for k in med if k.startswith("prog ")), key=lambda k: -med[k]):
            print(f"    {med[k]:7.2f}  {k}")
        leaves = sorted((k for k in med if k.startswith("leaf ")), key=lambda k: -med[k])[:LEAVES_SHOWN]
        for k in leaves:
            print(f"    {med[k]:7.2f}  {k}")
        if args.tasks:
            print(f"  the whole CPU {med.get('cpu', 0):.1f}, by task:")
            for k in sorted((k for k in med if k.startswith("task ")), key=lambda k: -med[k])[:LEAVES_SHOWN]:
                print(f"    {med[k]:7.2f}  {k}")
            print("  other tasks' samples in a BPF program or the receive path (the lab's packets handled "
                  "while another task was current would land here):")
            for k in sorted((k for k in med if k.startswith("other in ") or k == "other net"),
                            key=lambda k: -med[k])[:LEAVES_SHOWN]:
                print(f"    {med[k]:7.2f}  {k}")
    if args.tasks and len(cases) > 1 and got[cases[0]]:
        # Leaf by leaf against the first case, every sample of the lab's
        # processes: where a filter's extra CPU goes, in its programs or not.
        base = got[cases[0]]
        bmed = {k: statistics.median(r.get(k, 0.0) for r in base) for k in set().union(*base)}
        for case in cases[1:]:
            rs = got[case]
            if not rs:
                continue
            med = {k: statistics.median(r.get(k, 0.0) for r in rs) for k in set().union(*rs)}
            diff = {k[len("lab leaf "):]: med.get(k, 0.0) - bmed.get(k, 0.0)
                    for k in set(med) | set(bmed) if k.startswith("lab leaf ")}
            print(f"{CASES[case]} against {CASES[cases[0]]}: all {med['all'] - bmed['all']:+.2f}, outside the hooks "
                  f"{med['all'] - med.get('hooks', 0) - bmed['all'] + bmed.get('hooks', 0):+.2f}; the leaves "
                  f"that moved most (medians):")
            for k in sorted(diff, key=lambda k: -abs(diff[k]))[:LEAVES_SHOWN]:
                print(f"    {diff[k]:+7.2f}  {k}")
    if args.tasks and args.json:
        # Per case, per round: every key, for comparing leaves between cases.
        Path(args.json).write_text(json.dumps(got))
    return 0


if __name__ == "__main__":
    sys.exit(main())
