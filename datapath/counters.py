"""Reason counters: what the fast path passed and dropped, and why."""
from __future__ import annotations

import ctypes

from . import bpfsys
from .enums import DIRECTION_COUNT, REASON_COUNT, Direction, Reason, reason_description, reason_kind
from .text import table


def read_counters_fd(fd: int, leaf: type, ncpus: int) -> dict[tuple[Direction, Reason], tuple[int, int]]:
    """(hook, reason) -> (packets, bytes) summed over CPUs, from the per-CPU
    ``ms_counters`` array of an attached build (``leaf``: its BCC Leaf type).
    Zero rows are left out."""
    if issubclass(leaf, ctypes.Array):   # BCC types a per-CPU value as one slot per CPU
        leaf = leaf._type_
    stride = (ctypes.sizeof(leaf) + 7) // 8 * 8   # the kernel pads per-CPU values to 8 bytes
    out = {}
    for i in range(DIRECTION_COUNT * REASON_COUNT):
        raw = bpfsys.map_lookup(fd, i.to_bytes(4, "little"), stride * ncpus)
        if raw is None:
            continue
        vals = [leaf.from_buffer_copy(raw, c * stride) for c in range(ncpus)]
        pk = sum(v.packets for v in vals)
        if pk:
            d, r = divmod(i, REASON_COUNT)
            out[(Direction(d), Reason(r))] = (pk, sum(v.bytes for v in vals))
    return out


def format_counters(counts: dict) -> str:
    """Table of (direction, reason) -> packets, bytes, with each reason's meaning."""
    if not counts:
        return "  (no packets counted)"
    rows = [("hook", "action", "reason", "packets", "bytes", "meaning")]
    for (d, r), (pk, by) in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        rows.append((Direction(d).name.removeprefix("DIR_").lower(), reason_kind(r).lower(),
                     Reason(r).name, str(pk), str(by), reason_description(r)))
    return table(rows)
