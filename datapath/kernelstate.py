"""What one build's maps hold now, as the kernel counts it: the reason
counters and the session tables' use. The one reader behind `microseg
status` / `stats` (an attached build's maps, opened by id:
sessions.AttachedBuild) and the Prometheus metrics (the daemon's own
FastPath, read at each scrape).

Both go through :class:`BuildMaps`: a map name -> its fd, its ctypes
layout (Key, Leaf) and its capacity, whichever way the build was opened.
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import bpfsys, pressure, sessions
from .counters import read_counters_fd
from .enums import reason_kind
from .errors import MicrosegError


@dataclass(frozen=True)
class BuildMaps:
    fd: Callable[[str], int]
    types: Mapping[str, tuple[type, type]]      # map name -> (Key, Leaf)

    @classmethod
    def of_fastpath(cls, fp) -> "BuildMaps":
        """A FastPath this process loaded (no compile: BCC's own types)."""
        return cls(lambda name: fp.table(name).map_fd, sessions.layouts_of(fp))

    @classmethod
    def of_build(cls, build: "sessions.AttachedBuild", types: Mapping[str, tuple[type, type]]) -> "BuildMaps":
        """An attached build, with the layouts of sessions.layouts() (checked first)."""
        build.check_layouts(types)
        return cls(build.fd, types)

    def leaf(self, name: str) -> type:
        return self.types[name][1]

    def capacity(self, name: str) -> int:
        """max_entries, as the kernel has it (the build may have been loaded by another process)."""
        return bpfsys.map_info_by_fd(self.fd(name)).max_entries


def counters(m: BuildMaps) -> dict:
    """{(Direction, Reason): (packets, bytes)}, summed over CPUs; zeros left out."""
    return read_counters_fd(m.fd("ms_counters"), m.leaf("ms_counters"), pressure.possible_cpus())


def counter_rows(counts: Mapping) -> dict[tuple[str, str, str], tuple[int, int]]:
    """counters() as {(hook, reason, kind): (pk, by)}, e.g.
    ("ingress", "DROP_POLICY_DENY", "DROP"): the labels of the metrics."""
    rows = {}
    for (direction, reason), value in counts.items():
        rows[(direction.name.removeprefix("DIR_").lower(), reason.name, reason_kind(reason))] = value
    return rows


def table_use(m: BuildMaps, walk: tuple[str, ...] = tuple(sessions.FAMILY_TABLES)) -> dict:
    """Use of both session tables. ms_flows: the kernel's own count (O(1)),
    and its pressure state; ms_halfopen (an LRU whose evictions the kernel
    does not count): entries and evictions from a walk. ``walk``: the
    tables walked for entries present and expired but not yet swept; a walk
    of half a million sessions takes seconds, so the metrics, read at every
    scrape, walk ms_halfopen only. Each table is its IPv4 and IPv6 maps
    together: ms_flows' capacity is the session limit (flow_table_size, the
    IPv4 map's size; the kernel counts both families against it), with the
    IPv6 map's own size as ipv6_capacity; ms_halfopen's the two maps' sum.

    "maps": each family's map on its own, {map: {table, family, entries,
    capacity, pct_used}}: a full IPv6 map refuses IPv6 promotions while
    the table's total is far from its limit, so an operator needs each
    map's use against its own size. The kernel counts the two flow maps
    together only (ms_pressure), so ms_flows6 is walked too (a batch walk:
    its size is an eighth of the IPv4 map's by default) and ms_flows4's
    entries are the kernel's total less those (exact when ``walk`` has
    ms_flows)."""
    fd, leaf = m.fd, m.leaf
    v4, v6 = sessions.FAMILY_TABLES["ms_flows"]
    pct = pressure.config_pressure_pct(fd("ms_config"), leaf("ms_config"))
    flows = pressure.read_pressure(fd("ms_pressure"), fd("ms_pressure_user"), leaf("ms_pressure"),
                                   leaf("ms_pressure_user"), m.capacity(v4), pct)
    out = {"ms_flows": {**flows.as_dict(), "ipv6_capacity": m.capacity(v6)}, "ms_halfopen": {}}
    tmo = sessions.read_timeouts_ns(fd("ms_timeouts"), leaf("ms_timeouts"))
    per_map: dict[str, int] = {}

    def count(name: str) -> tuple[int, int]:
        key, lf = m.types[name]
        p, e = sessions.census(fd(name), lf, ctypes.sizeof(key), tmo)
        per_map[name] = p
        return p, e

    for table in walk:
        present = expired = 0
        for name in sessions.FAMILY_TABLES[table]:
            p, e = count(name)
            present, expired = present + p, expired + e
        out[table].update(present=present, expired_unswept=expired)
    if v6 not in per_map:
        count(v6)
    per_map.setdefault(v4, max(flows.entries - per_map[v6], 0))
    out["maps"] = {}
    for table, names in sessions.FAMILY_TABLES.items():
        for name in names:
            if name in per_map:
                cap = m.capacity(name)
                out["maps"][name] = {"table": table, "family": map_family(name), "entries": per_map[name],
                                     "capacity": cap, "pct_used": 100.0 * per_map[name] / max(cap, 1)}
    h = out["ms_halfopen"]
    if "present" in h:
        cap = halfopen_capacity(m)
        h.update(entries=h["present"], capacity=cap, pct_used=100.0 * h["present"] / max(cap, 1),
                 evictions=pressure.halfopen_evictions(fd("ms_pressure"), fd("ms_pressure_user"),
                                                       leaf("ms_pressure"), leaf("ms_pressure_user"),
                                                       h["present"]))
    return out


def map_family(name: str) -> str:
    """"ipv4" or "ipv6": the family of a session map of sessions.FLOW_TABLES."""
    return "ipv4" if sessions.is_v4_map(name) else "ipv6"


def halfopen_capacity(m: BuildMaps) -> int:
    """Entries the half-open maps of both families hold together."""
    return sum(m.capacity(n) for n in sessions.FAMILY_TABLES["ms_halfopen"])


def map_type_name(map_type: int) -> str:
    """A BPF map type by name ("lru_hash", "array_of_maps"): BCC's table of
    the kernel's enum bpf_map_type, and bpfsys's constants for types newer
    than the BCC installed (BLOOM_FILTER); the number only for a type
    neither knows."""
    from bcc.table import map_type_name as bcc_names
    name = bcc_names.get(map_type)
    if name is None:
        name = next((k.removeprefix("BPF_MAP_TYPE_") for k, v in vars(bpfsys).items()
                     if k.startswith("BPF_MAP_TYPE_") and v == map_type), None)
    return name.lower() if name else str(map_type)


def slowpath_slots(m: BuildMaps, now_ns: int) -> list[dict]:
    """The slow-path workers as the kernel sees them: per worker slot of
    ms_slowpath that was ever used (a heartbeat, or a ring in
    ms_insp_rings), the pid that beat last, the heartbeat's age (None:
    stopped or never started: the kernel applies the slow-path-down action
    to that worker's flows) and its ring's unread bytes against its size.
    ``now_ns``: CLOCK_MONOTONIC_COARSE, the heartbeat's clock."""
    from .insp_rings import pending_bytes
    leaf = m.leaf("ms_slowpath")
    hb_fd = m.fd("ms_slowpath")
    try:
        rings_fd = m.fd("ms_insp_rings")
    except (KeyError, MicrosegError):
        rings_fd = None          # the perf buffer fallback: no worker rings
    out = []
    for i in range(m.capacity("ms_slowpath")):
        key = i.to_bytes(4, "little")
        raw = bpfsys.map_lookup(hb_fd, key, ctypes.sizeof(leaf))
        hb = leaf.from_buffer_copy(raw) if raw else leaf()
        ring = None
        if rings_fd is not None:
            # From user space a map-of-maps slot reads as its inner map's id.
            inner = bpfsys.map_lookup(rings_fd, key, 4)
            if inner is not None:
                fd = bpfsys.map_fd_by_id(int.from_bytes(inner, "little"))
                try:
                    ring = {"pending_bytes": pending_bytes(fd),
                            "size_bytes": bpfsys.map_info_by_fd(fd).max_entries}
                finally:
                    os.close(fd)
        if not hb.heartbeat_ns and not hb.pid and ring is None:
            continue
        out.append({"worker": i, "pid": int(hb.pid) or None,
                    "heartbeat_age_s": max(now_ns - int(hb.heartbeat_ns), 0) / 1e9 if hb.heartbeat_ns else None,
                    "ring": ring})
    return out


def metrics_reading(m: BuildMaps) -> dict:
    """What slowpath/metrics.py's kernel collector wants at a scrape."""
    use = table_use(m, walk=("ms_halfopen",))
    f, h = use["ms_flows"], use["ms_halfopen"]
    return {"counters": counter_rows(counters(m)),
            "sessions": {"ms_flows": f["entries"], "ms_halfopen": h["present"]},
            "capacity": {"ms_flows": f["capacity"], "ms_halfopen": halfopen_capacity(m)},
            "maps": {name: (u["table"], u["family"], u["entries"], u["capacity"])
                     for name, u in use["maps"].items()},
            "pressure_pct": f["pressure_pct"]}
