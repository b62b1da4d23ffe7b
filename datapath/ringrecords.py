"""The ctypes type of a BPF ring buffer's records, as BCC describes them.

BCC reads the struct a program hands to ``ringbuf_reserve`` /
``ringbuf_output`` from the C source (bpf/lib/maps.h) and lists its fields
("name#type", arrays as "type[n]"); this turns that list into a
ctypes.Structure, so Python never re-declares a kernel record's layout.
BCC's own RingBuf.event() reads the same list but knows only u32-style names:
on the __u32 / __u64 fields of maps.h it prints "Type: '__u32' not
recognized" and calls sys.exit(1).
"""
from __future__ import annotations

import ctypes
import re

from .errors import MicrosegError

_CTYPES = {"__u8": ctypes.c_uint8, "__u16": ctypes.c_uint16, "__u32": ctypes.c_uint32,
           "__u64": ctypes.c_uint64, "__s8": ctypes.c_int8, "__s16": ctypes.c_int16,
           "__s32": ctypes.c_int32, "__s64": ctypes.c_int64, "__be16": ctypes.c_uint16,
           "__be32": ctypes.c_uint32, "int": ctypes.c_int32, "u32": ctypes.c_uint32,
           "u64": ctypes.c_uint64, "u8": ctypes.c_uint8, "u16": ctypes.c_uint16}
_ARRAY = re.compile(r"^(\w+)\s*\[(\d+)\]$")


def field_type(ctype: str):
    """The ctypes type of one BCC field description ("__u32", "__u8[16]")."""
    ctype = ctype.strip()
    m = _ARRAY.match(ctype)
    if m:
        return field_type(m.group(1)) * int(m.group(2))
    try:
        return _CTYPES[ctype]
    except KeyError:
        raise MicrosegError(f"ring buffer record: field type {ctype!r} has no ctypes equivalent") from None


def ringbuf_record_type(table, name: str = "RingbufRecord") -> type:
    """The record type of BCC table ``table`` (a ring buffer or perf output)."""
    from bcc.libbcc import lib

    n = lib.bpf_perf_event_fields(table.bpf.module, table._name)
    if n <= 0:
        raise MicrosegError(f"BCC found no record struct for {table._name.decode()!r} "
                            f"(no ringbuf_reserve / ringbuf_output of a struct in the program)")
    fields = []
    for i in range(n):
        fname, ctype = lib.bpf_perf_event_field(table.bpf.module, table._name, i).decode().split("#", 1)
        fields.append((fname, field_type(ctype)))
    return type(name, (ctypes.Structure,), {"_fields_": fields})
