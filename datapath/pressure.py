"""Session table pressure, read as the kernel computes it, and map memory.

A hash map has no cheap size, so the kernel counts: ms_pressure (written by
the fast path only: inserts into ms_flows, its own lazy-expiry deletes,
refused inserts, alerts sent) and ms_pressure_user (written by the sweeper
only: its deletes and the alert generation; the batch sweep writes it from
user space, the kernel sweep of bpf/lib/sweep.h adds its deletes with an
atomic add, and both run under the sweeper's lock, datapath/sweeper.py). Entries in ms_flows are
``inserted - deleted(kernel) - deleted(user)``, exactly as
``ms_flows_entries()`` in bpf/lib/conntrack.h. The kernel alerts once per
crossing of ``pressure_pct``: it sends an alert when its ``alert_gen`` is
not yet ``gen + 1`` and sets it so; the sweeper bumps ``gen`` when usage is
back under the threshold, which re-arms the alert.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from . import bpfsys

# ringbuf: max_entries is the ring's size in bytes, not a count of entries
_NO_ENTRY_TYPES = {bpfsys.BPF_MAP_TYPE_RINGBUF}
# The seed review's per-entry overhead estimate for a BPF hash map (bytes
# beyond key and value: hash node, bucket, allocator), applied to every map.
REVIEW_OVERHEAD_BYTES = 64


@dataclass
class Pressure:
    inserted: int
    deleted_kernel: int
    deleted_user: int
    insert_failed: int
    alerts: int
    alert_gen: int
    gen: int
    capacity: int
    pressure_pct: int

    @property
    def entries(self) -> int:
        gone = self.deleted_kernel + self.deleted_user
        return self.inserted - gone if self.inserted > gone else 0

    @property
    def pct_used(self) -> float:
        return 100.0 * self.entries / self.capacity if self.capacity else 0.0

    @property
    def over_threshold(self) -> bool:
        # the kernel's test: entries * 100 >= MS_FLOW_MAX * pressure_pct
        return self.entries * 100 >= self.capacity * self.pressure_pct

    @property
    def alert_armed(self) -> bool:
        """Would the kernel send an alert on the next insert over the threshold?"""
        return self.alert_gen != self.gen + 1

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(entries=self.entries, pct_used=self.pct_used,
                 over_threshold=self.over_threshold, alert_armed=self.alert_armed)
        return d


def read_pressure(pressure_fd: int, pressure_user_fd: int, pressure_type: type, pressure_user_type: type,
                  capacity: int, pressure_pct: int) -> Pressure:
    pr = bpfsys.lookup_struct(pressure_fd, pressure_type)
    pu = bpfsys.lookup_struct(pressure_user_fd, pressure_user_type)
    return Pressure(pr.inserted, pr.deleted, pu.deleted, pr.insert_failed, pr.alerts, pr.alert_gen,
                    pu.gen, capacity, pressure_pct)


def possible_cpus() -> int:
    """CPUs a per-CPU map keeps a value for (the kernel's possible mask)."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            n = 0
            for part in f.read().strip().split(","):
                lo, _, hi = part.partition("-")
                n += int(hi or lo) - int(lo) + 1
            return n
    except (OSError, ValueError):
        return os.cpu_count() or 1


def review_estimate(m: bpfsys.MapInfo, ncpus: int | None = None) -> int | None:
    """The review's memory estimate: max_entries x (key + value + 64) bytes
    (value x CPUs for per-CPU maps); None for a ring buffer."""
    if m.type in _NO_ENTRY_TYPES:
        return None
    value = m.value_size
    if m.type in bpfsys.PERCPU_MAP_TYPES:
        value = ((value + 7) // 8 * 8) * (ncpus or possible_cpus())
    return m.max_entries * (m.key_size + value + REVIEW_OVERHEAD_BYTES)


def config_pressure_pct(config_fd: int, config_type: type) -> int:
    return int(bpfsys.lookup_struct(config_fd, config_type).pressure_pct)



def halfopen_evictions(pressure_fd: int, pressure_user_fd: int, pressure_type: type,
                       pressure_user_type: type, present: int) -> int:
    """LRU evictions of ms_halfopen: what went in and was not removed by the
    kernel (promotion, expiry, replacement) or the sweeper, and is not there."""
    pr = bpfsys.lookup_struct(pressure_fd, pressure_type)
    pu = bpfsys.lookup_struct(pressure_user_fd, pressure_user_type)
    return max(0, pr.halfopen_inserted - pr.halfopen_removed - pu.halfopen_deleted - present)
