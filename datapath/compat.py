"""Which kernel features a build uses, decided at load.

The probes `microseg preflight` also shows (datapath/probes.py) decide,
unless the configuration turns a feature off (DatapathConfig.compat), which
builds the fallback also where the kernel has the feature: how the tests
check that each fallback still loads and works.

| feature | kernel | fallback |
|---|---|---|
| BPF ring buffer (payload records, pressure alerts) | 5.8 | perf buffer per CPU (slowpath/perfbuf.py); pressure alerts only counted |
| BPF_F_NO_COMMON_LRU (per-CPU LRU lists, half-open table) | 4.10 | one shared LRU list |
| BLOOM_FILTER (XDP blocklist pre-check) | 5.16 | LPM trie only (datapath/blocklist.py) |
| bpf_ktime_get_coarse_ns (session clock) | 5.11 | bpf_ktime_get_ns (the precise clock) |
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import blocklist, bpfsys
from .probes import probe_helper, probe_map


@dataclass(frozen=True)
class Features:
    ringbuf: bool
    lru_per_cpu: bool
    bloom: bool
    coarse_clock: bool = True
    why: dict = field(default_factory=dict)   # feature -> one line: probed, or turned off

    def cflags(self) -> list[str]:
        out = []
        if not self.ringbuf:
            out.append("-DMS_NO_RINGBUF")
        if not self.lru_per_cpu:
            out.append("-DMS_LRU_COMMON")
        if not self.coarse_clock:
            out.append("-DMS_NO_COARSE_CLOCK")
        return out


def decide(compat) -> Features:
    why = {}

    def probe(name, setting, fn):
        if setting == "off":
            why[name] = "off in the configuration (compat)"
            return False
        ok, detail = fn()
        why[name] = ("kernel has it" if ok else "kernel lacks it") + (f": {detail}" if detail else "")
        return ok

    ringbuf = probe("ringbuf", compat.ringbuf,
                    lambda: probe_map(bpfsys.BPF_MAP_TYPE_RINGBUF, 0, 0, 4096))
    lru = probe("lru_per_cpu", compat.lru_per_cpu,
                lambda: probe_map(bpfsys.BPF_MAP_TYPE_LRU_HASH, 4, 4, 16, bpfsys.BPF_F_NO_COMMON_LRU))
    bloom = probe("bloom", compat.bloom, blocklist.bloom_support)
    coarse = probe("coarse_clock", compat.coarse_clock,
                   lambda: probe_helper(bpfsys.BPF_FUNC_ktime_get_coarse_ns))
    return Features(ringbuf, lru, bloom, coarse, why)
