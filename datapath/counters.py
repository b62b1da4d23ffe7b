"""Reason counters: what the fast path passed and dropped, and why."""
from __future__ import annotations

from .enums import Direction, Reason, reason_description, reason_kind
from .text import table


def format_counters(counts: dict) -> str:
    """Table of (direction, reason) -> packets, bytes, with each reason's meaning."""
    if not counts:
        return "  (no packets counted)"
    rows = [("hook", "action", "reason", "packets", "bytes", "meaning")]
    for (d, r), (pk, by) in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        rows.append((Direction(d).name.removeprefix("DIR_").lower(), reason_kind(r).lower(),
                     Reason(r).name, str(pk), str(by), reason_description(r)))
    return table(rows)
