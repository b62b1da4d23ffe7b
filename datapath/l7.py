"""Kernel L7 signatures from the protocol plugins (matching: bpf/lib/l7.h).

Each plugin's signatures (offset, up to 8 bytes, mask, side) become rows of
ms_l7_sigs keyed by (shape, side, transport, masked value), where a shape is
an (offset, mask) pair listed once in ms_l7_shapes. The kernel does one
lookup per shape, so the number of shapes, not of signatures, is its cost.
Application ids: the built-ins have fixed ids (MS_ENUM_APP, shared with C);
any other plugin gets the next free id from MS_APP_PLUGIN_FIRST, in registry
order, at load.
"""
from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass

from protocols.api import ProtocolPlugin, Signature

from .enums import enum_list
from .errors import MicrosegError
from .source import header_defines

BUILTIN_APP_IDS = {e.name.removeprefix("APP_").lower(): e.value for e in enum_list("APP") if e.value}


_DEFINES = header_defines("MS_")
PLUGIN_FIRST = _DEFINES["APP_PLUGIN_FIRST"]
MAX_SHAPES = _DEFINES["L7_SHAPES"]
MAX_SIGS = _DEFINES["L7_SIG_MAX"]
APP_MAX = 255   # struct ms_flow.app is one byte
TRANSPORTS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


class SignatureError(MicrosegError):
    """The plugins' signatures do not fit the kernel's table."""


def app_ids(plugins: list[ProtocolPlugin]) -> dict[str, int]:
    ids, nxt = {}, PLUGIN_FIRST
    for p in plugins:
        if p.name in BUILTIN_APP_IDS:
            ids[p.name] = BUILTIN_APP_IDS[p.name]
        else:
            if nxt > APP_MAX:
                raise SignatureError(f"protocol {p.name!r}: more than {APP_MAX - PLUGIN_FIRST + 1} plugins")
            ids[p.name] = nxt
            nxt += 1
    return ids


def app_name(app_id: int, plugins: list[ProtocolPlugin]) -> str:
    for name, i in app_ids(plugins).items():
        if i == app_id:
            return name
    return "unknown" if app_id == 0 else f"app-{app_id}"


def shape_of(sig: Signature) -> tuple[int, int, int, int]:
    """(offset, mask, end, masked value) as the kernel compares them: an
    8-byte little-endian load at offset, masked (bytes past the signature
    masked out)."""
    n = len(sig.value)
    mask = (sig.mask or b"\xff" * n).ljust(8, b"\0")
    m = int.from_bytes(mask, "little")
    v = int.from_bytes(sig.value.ljust(8, b"\0"), "little") & m
    return sig.offset, m, sig.offset + n, v


@dataclass(frozen=True)
class SignatureTable:
    shapes: tuple[tuple[int, int, int], ...]              # (offset, mask, end)
    rows: dict[tuple[int, int, int, int], tuple[int, str]]  # (value, shape, side, l4) -> (app, owner)
    sides: dict[int, int]                                 # app -> bit per side with signatures
    ids: dict[str, int]


def compile_signatures(plugins: list[ProtocolPlugin]) -> SignatureTable:
    ids = app_ids(plugins)
    shapes: list[tuple[int, int, int]] = []
    rows: dict = {}
    sides: dict[int, int] = {}
    for p in plugins:
        for sig in p.signatures:
            off, mask, end, value = shape_of(sig)
            # Same offset and mask, different length: one shape needs the
            # longer end only when the extra bytes are masked out anyway.
            shape = next((i for i, (o, m, e) in enumerate(shapes) if (o, m, e) == (off, mask, end)), None)
            if shape is None:
                if len(shapes) == MAX_SHAPES:
                    raise SignatureError(
                        f"protocol {p.name!r}: signature at offset {off} needs shape {len(shapes) + 1}; the "
                        f"kernel compares at most {MAX_SHAPES} distinct (offset, mask) shapes "
                        f"(MS_L7_SHAPES): reuse an offset and mask another protocol uses")
                shapes.append((off, mask, end))
                shape = len(shapes) - 1
            for t in sorted(p.transports):
                key = (value, shape, int(sig.direction), TRANSPORTS[t])
                if key in rows and rows[key][1] != p.name:
                    raise SignatureError(f"protocol {p.name!r}: signature {sig.value!r} at offset {off} is "
                                         f"also protocol {rows[key][1]!r}'s")
                rows[key] = (ids[p.name], p.name)
            sides[ids[p.name]] = sides.get(ids[p.name], 0) | (1 << int(sig.direction))
    if len(rows) > MAX_SIGS:
        raise SignatureError(f"{len(rows)} signature rows, the kernel table holds {MAX_SIGS} (MS_L7_SIG_MAX)")
    return SignatureTable(tuple(shapes), rows, sides, ids)


def identify(table: SignatureTable, payload: bytes, side: int, l4: int) -> int:
    """What the kernel stage returns for this first payload (its model)."""
    window = payload[:64].ljust(64, b"\0")
    n = min(len(payload), 64)
    for i, (off, mask, end) in enumerate(table.shapes):
        if end > n:
            continue
        v = int.from_bytes(window[off:off + 8], "little") & mask
        hit = table.rows.get((v, i, side, l4))
        if hit:
            return hit[0]
    return 0


def load(fastpath, table: SignatureTable) -> None:
    """Write the table into a loaded fast path's maps (replacing what was there)."""
    shapes = fastpath.table("ms_l7_shapes")
    for i in range(MAX_SHAPES):
        v = shapes.Leaf()
        if i < len(table.shapes):
            off, mask, end = table.shapes[i]
            v.mask, v.offset, v.end, v.used = mask, off, end, 1
        shapes[ctypes.c_int(i)] = v
    sigs = fastpath.table("ms_l7_sigs")
    sigs.clear()
    for (value, shape, side, l4), (app, _) in table.rows.items():
        k = sigs.Key()
        k.value, k.shape, k.side, k.l4 = value, shape, side, l4
        v = sigs.Leaf()
        v.app = app
        sigs[k] = v
    sides = fastpath.table("ms_l7_sides")
    for app in range(APP_MAX + 1):
        sides[ctypes.c_int(app)] = ctypes.c_uint8(table.sides.get(app, 0))
