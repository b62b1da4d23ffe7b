"""Python's view of the enums and bit flags shared with the kernel program.

The single source is the X-macro lists ``MS_ENUM_<NAME>(X)`` in bpf/lib/*.h
(see bpf/lib/enums.h), and for bit flags their ``#define MS_<SET>_<NAME>``
lines (DEFINE_SETS). This module reads them at import; nothing here is
typed twice. tests/datapath/test_enums_kernel.py compiles the values read here back into
C as static asserts, so a change on one side that the other does not see
fails the build of the test.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from .source import LIB_DIR, header_defines

_BLOCK = re.compile(r"#define\s+MS_ENUM_([A-Z0-9_]+)\(X\)((?:[^\n]*\\\n)*[^\n]*)")
_ENTRY = re.compile(r'X\(\s*(\w+)\s*,\s*(\d+)\s*,\s*(\w+)\s*,\s*"((?:[^"\\]|\\.)*)"\s*\)')


@dataclass(frozen=True)
class EnumEntry:
    name: str
    value: int
    kind: str
    description: str


def read_enum_lists(lib_dir: Path = LIB_DIR) -> dict[str, list[EnumEntry]]:
    """All MS_ENUM_* lists found in the headers of ``lib_dir``."""
    lists: dict[str, list[EnumEntry]] = {}
    for header in sorted(lib_dir.glob("*.h")):
        for m in _BLOCK.finditer(header.read_text()):
            name, body = m.group(1), m.group(2)
            if name in ("MEMBER", "COUNT"):
                continue
            entries = [EnumEntry(e[0], int(e[1]), e[2], e[3]) for e in _ENTRY.findall(body)]
            if not entries:
                raise ValueError(f"{header}: MS_ENUM_{name} has no X(...) entries")
            if name in lists:
                raise ValueError(f"{header}: MS_ENUM_{name} defined twice")
            lists[name] = entries
    return lists


_LISTS = read_enum_lists()


def _make(name: str, cname: str) -> type[enum.IntEnum]:
    entries = _LISTS[cname]
    cls = enum.IntEnum(name, [(e.name, e.value) for e in entries])
    cls._meta = {e.value: e for e in entries}  # type: ignore[attr-defined]
    return cls


def enum_list(cname: str) -> list[EnumEntry]:
    """The entries of MS_ENUM_<cname>, in order."""
    return list(_LISTS[cname])


Reason = _make("Reason", "REASON")
CtState = _make("CtState", "CT_STATE")
TcpEvent = _make("TcpEvent", "TCP_EVENT")
Stage = _make("Stage", "STAGE")
Direction = _make("Direction", "DIR")
App = _make("App", "APP")
FailKind = _make("FailKind", "FAIL")
FailAction = _make("FailAction", "FAIL_ACTION")
InspState = _make("InspState", "INSP_STATE")
VerdictCode = _make("VerdictCode", "VERDICT")
FlowEndReason = _make("FlowEndReason", "FLOW_END")   # struct ms_flow_event.reason (maps.h)
EventType = _make("EventType", "EVENT")             # ms_events record types (maps.h)

REASON_COUNT = len(Reason)
DIRECTION_COUNT = len(Direction)

# Bit flags and values #defined in bpf/lib/*.h that Python uses, by set:
# name without the prefix -> value. MS_FRAG_MAX is a table size the build
# sets (-DMS_FRAG_MAX), not a value of the set.
DEFINE_SETS = {
    "CFG": header_defines("MS_CFG_"),           # struct ms_config.flags (maps.h)
    "INSPECT": header_defines("MS_INSPECT_"),   # struct ms_verdict / ms_flow / ms_insp_hdr .inspect (maps.h)
    "FRAG": {k: v for k, v in header_defines("MS_FRAG_").items() if k != "MAX"},  # ms_insp_hdr.frag (parse.h)
}
CFG = DEFINE_SETS["CFG"]
# Slow-path workers the kernel can spread flows over (maps.h).
SLOWPATH_WORKERS_MAX = header_defines("MS_SLOWPATH_")["WORKERS_MAX"]
# ms_iface.flags, and the ifindexes the egress program's array covers (maps.h).
IFACE_MANAGED = header_defines("MS_IFACE_")["MANAGED"]
IFINDEX_DIRECT = header_defines("MS_IFINDEX_")["DIRECT"]
INSPECT = DEFINE_SETS["INSPECT"]
FRAG = DEFINE_SETS["FRAG"]
# What a rule inspects, by its policy keyword (`inspect: [dpi, waf, dlp]`).
INSPECT_BITS = {name: INSPECT[name.upper()] for name in ("dpi", "waf", "dlp")}


def reason_kind(r: int) -> str:
    """'PASS' or 'DROP'."""
    return Reason._meta[int(r)].kind  # type: ignore[attr-defined]


def reason_description(r: int) -> str:
    return Reason._meta[int(r)].description  # type: ignore[attr-defined]


def c_static_asserts() -> str:
    """C text asserting every value Python holds, for the cross-check test."""
    lines = []
    for cname, entries in _LISTS.items():
        # A program includes the headers it needs (the XDP blocklist is a
        # build of its own): each list is checked where it is defined.
        lines.append(f"#ifdef MS_ENUM_{cname}")
        for e in entries:
            lines.append(f'_Static_assert({e.name} == {e.value}, "{e.name} differs between C and Python");')
        lines.append(
            f'_Static_assert((0 MS_ENUM_{cname}(MS_ENUM_COUNT)) == {len(entries)}, '
            f'"MS_ENUM_{cname} entry count differs between C and Python");')
        lines.append("#endif")
    for prefix, values in DEFINE_SETS.items():
        for name, value in values.items():
            c = f"MS_{prefix}_{name}"
            lines.append(f'_Static_assert({c} == {value:#x}, "{c} differs between C and Python");')
    lo = sum(1 << e.value for e in _LISTS["REASON"] if e.kind == "DROP" and e.value < 64)
    hi = sum(1 << (e.value - 64) for e in _LISTS["REASON"] if e.kind == "DROP" and e.value >= 64)
    lines.append(f'_Static_assert(MS_REASON_DROPMASK_LO == {lo:#x}ULL, "drop kinds differ");')
    lines.append(f'_Static_assert(MS_REASON_DROPMASK_HI == {hi:#x}ULL, "drop kinds differ");')
    return "\n".join(lines) + "\n"
