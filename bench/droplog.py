"""What a dropped packet costs with the drop log (bpf/fastpath.c
ms_drop_log), next to the same drop without it.

A SYN to a port the policy denies (DROP_POLICY_DENY), run with
BPF_PROG_TEST_RUN ``--repeat`` times per measurement (the kernel reports the
mean of one run), rounds interleaved and the median reported, as
bench/fastpath.py does:

* ``drop-events-off``: drop events turned off (drop_events_per_sec 0): the
  drop as it was before the log (the reason counter only, plus one config
  lookup).
* ``drop-suppressed``: the default limit; all but the first few repetitions
  are over the key's per-second limit: the limiter's lookup and a counted
  suppression. This is the cost of every packet of a flood from one source.
* ``drop-emitted``: no limit in reach (drop_events_per_sec 1,000,000): every
  repetition writes an event to ms_drop_ring (reserve, fill, submit). The
  ring is read out between measurements and ``--emit-repeat`` stays under
  its capacity, so no repetition meets a full ring.
* ``drop-new-source``: a different source address per packet (a spoofed
  flood), default limits: under the per-CPU cap (250 a second) a drop
  inserts a limiter entry and writes an event; over it (most of the
  packets) it is counted without an entry. ``drop-new-source-sent``: the
  same with no cap in reach, every packet an insert and an event. Repeat 1,
  one call per source, the median of the per-call durations (baseline:
  ``drop-new-source-off``, the same packets with the events off;
  ``empty-repeat1``, call for call).

    .venv/bin/python bench/droplog.py [--repeat N] [--rounds N] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from appliance.policyfile import compile_text  # noqa: E402
from datapath import bpfsys  # noqa: E402
from datapath.config import DatapathConfig  # noqa: E402
from datapath.enums import Direction  # noqa: E402
from datapath.loader import TC_ACT_SHOT, FastPath  # noqa: E402
from datapath.policy_maps import PolicyMaps  # noqa: E402
from slowpath.ringbuf import RingBuffer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fastpath import MACS, SYN_OPTIONS, load_empty  # noqa: E402

DEFAULT_REPEAT, QUICK_REPEAT = 200_000, 20_000
DEFAULT_ROUNDS, QUICK_ROUNDS = 7, 3
# Under ms_drop_ring's capacity (256 KiB / 96-byte records: ~2,700).
EMIT_REPEAT = 2000
NEW_SOURCES, QUICK_NEW_SOURCES = 5000, 1000
POLICY = """
defaults: {ingress: allow, egress: allow}
rules:
  - {name: no-ssh, from: any, to: any, proto: tcp, ports: [22], action: deny}
"""


def syn(src: str) -> bytes:
    return bytes(Ether(**MACS) / IP(src=src, dst="10.0.0.2")
                 / TCP(sport=40000, dport=22, flags="S", seq=1000, options=SYN_OPTIONS))


def timed(fd: int, frame: bytes, repeat: int) -> tuple[int, int]:
    """(mean ns of one run, the program's return value)."""
    r = bpfsys.prog_test_run(fd, frame, repeat=repeat)
    return r.duration_ns, r.retval


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    repeat = args.repeat or (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    n_src = QUICK_NEW_SOURCES if args.quick else NEW_SOURCES
    if os.geteuid() != 0:
        print("bench/droplog.py loads BPF programs: run it as root", file=sys.stderr)
        return 1
    base = dict(syn_dst_rate=0, syn_global_rate=0)
    configs = {"drop-events-off": DatapathConfig(**base, drop_events_per_sec=0),
               "drop-suppressed": DatapathConfig(**base),
               "drop-emitted": DatapathConfig(**base, drop_events_per_sec=1_000_000,
                                              drop_events_cpu_per_sec=10_000_000)}
    empty_bpf, empty_fd = load_empty()
    fp = FastPath(DatapathConfig(**base))
    rb = RingBuffer(fp.table("ms_drop_ring").map_fd)
    try:
        PolicyMaps.for_fastpath(fp).apply(compile_text(POLICY, "policy.yaml")[1])
        ing = fp.prog_fd(Direction.DIR_INGRESS)
        frame = syn("10.9.0.1")
        sources = [syn(f"10.{8 + i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(n_src)]
        samples: dict[str, list[float]] = {"empty": [], **{k: [] for k in configs}, "empty-repeat1": [],
                                           "drop-new-source-off": [], "drop-new-source": [],
                                           "drop-new-source-sent": []}
        stats = fp.table("ms_drop_stats")
        for rnd in range(rounds):
            d, _ = timed(empty_fd, frame, repeat)
            samples["empty"].append(d)
            for name, cfg in configs.items():
                fp.apply_runtime(cfg)
                fp.table("ms_drop_limit").clear()
                n = EMIT_REPEAT if name == "drop-emitted" else repeat
                rb.drain()
                d, ret = timed(ing, frame, n)
                if ret != TC_ACT_SHOT:
                    raise SystemExit(f"{name}: action {ret}, expected a drop")
                samples[name].append(d)
            rb.drain()
            # a new source per packet, default limits, the per-CPU window
            # fresh; and the same packets with the events off
            d_e, d_s, d_o, d_n = [], [], [], []
            for cfg, out in ((configs["drop-suppressed"], d_s), (configs["drop-events-off"], d_o),
                             (configs["drop-emitted"], d_n)):
                fp.apply_runtime(cfg)
                fp.table("ms_drop_limit").clear()
                stats.clear()
                for i, f in enumerate(sources):
                    d_e.append(timed(empty_fd, f, 1)[0])
                    out.append(timed(ing, f, 1)[0])
                    if i % 1000 == 999:
                        rb.drain()
                rb.drain()
            samples["empty-repeat1"].append(statistics.median(d_e))
            samples["drop-new-source"].append(statistics.median(d_s))
            samples["drop-new-source-off"].append(statistics.median(d_o))
            samples["drop-new-source-sent"].append(statistics.median(d_n))
        print(f"repeat {repeat} (drop-emitted: {EMIT_REPEAT}), {rounds} rounds; new sources {n_src} (repeat 1)")
        print(f"{'case':<20} {'ns/pkt median':>14} {'min':>8} {'max':>8}")
        for name, xs in samples.items():
            print(f"{name:<20} {statistics.median(xs):>14.0f} {min(xs):>8.0f} {max(xs):>8.0f}")
        off = statistics.median(samples["drop-events-off"])
        for name in ("drop-suppressed", "drop-emitted"):
            print(f"{name} - drop-events-off: {statistics.median(samples[name]) - off:+.0f} ns per dropped packet")
        off1 = statistics.median(samples["drop-new-source-off"])
        for name in ("drop-new-source", "drop-new-source-sent"):
            print(f"{name} - drop-new-source-off: {statistics.median(samples[name]) - off1:+.0f} "
                  f"ns per dropped packet")
    finally:
        rb.close()
        fp.close()
        empty_bpf.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
