"""Kernel probes: ask the running kernel whether it can do something, by
doing it (create the map, load the program), never by its version number.

What both `microseg preflight` (datapath/preflight.py, the whole feature
matrix) and the build's fallback decisions (datapath/compat.py) ask. Every
probe returns (available, one line saying why) and never raises: any
failure becomes ``(False, reason)``.
"""
from __future__ import annotations

import ctypes
import errno as errno_mod
import functools
import os

from . import bpfsys

# The verifier's log for a probe program of a few instructions is a few
# lines; 64 KiB leaves room and stays under every kernel's log_size limit.
_LOG_SIZE = 64 * 1024

_EXIT = bpfsys.insn(0x95)        # BPF_JMP | BPF_EXIT


def _call(helper_id: int) -> bytes:
    return bpfsys.insn(0x85, imm=helper_id)  # BPF_JMP | BPF_CALL


def errno_text(e: OSError) -> str:
    name = errno_mod.errorcode.get(e.errno or 0, f"errno {e.errno}")
    return f"{name}: {os.strerror(e.errno)}" if e.errno else str(e)


def guarded(probe):
    """Turn any exception in a probe into (False, reason)."""
    @functools.wraps(probe)
    def wrapper(*args, **kwargs) -> tuple[bool, str]:
        try:
            return probe(*args, **kwargs)
        except OSError as e:
            return False, errno_text(e)
        except Exception as e:  # BCC and pyroute2 raise plain Exception subclasses
            return False, f"{type(e).__name__}: {e}"
    return wrapper


def load_raw_prog(insns: bytes, prog_type: int = bpfsys.BPF_PROG_TYPE_SCHED_CLS) -> tuple[int, str]:
    """BPF_PROG_LOAD of raw instructions with a verifier log.

    Returns (fd, log) on success, (-errno, log) when the kernel refuses;
    the caller closes a returned fd.
    """
    log = ctypes.create_string_buffer(_LOG_SIZE)
    try:
        fd = bpfsys.prog_load(insns, prog_type, log=log)
    except bpfsys.BpfError as e:
        return -(e.errno or 1), log.value.decode(errors="replace")
    return fd, log.value.decode(errors="replace")


@guarded
def probe_map(map_type: int, key_size: int, value_size: int, max_entries: int,
              flags: int = 0, map_extra: int = 0) -> tuple[bool, str]:
    """Can this kernel create a map of ``map_type`` with these parameters?"""
    desc = f"type {map_type}, key {key_size}, value {value_size}, max {max_entries}, flags {flags:#x}"
    if map_extra:
        desc += f", map_extra {map_extra}"
    try:
        fd = bpfsys.create_map(map_type, key_size, value_size, max_entries, flags, map_extra)
    except OSError as e:
        return False, f"BPF_MAP_CREATE({desc}): {errno_text(e)}"
    os.close(fd)
    return True, f"created ({desc})"


@guarded
def probe_helper(helper_id: int, prog_type: int = bpfsys.BPF_PROG_TYPE_SCHED_CLS) -> tuple[bool, str]:
    """Does the kernel know helper ``helper_id`` for ``prog_type``?

    The probe bpftool / libbpf use: load "call helper; exit" and read the
    verifier log. "invalid func" (id unknown to the kernel), "unknown func"
    and "program of this type cannot use helper" (known, not allowed for
    this program type) mean missing. Any other complaint (the arguments are
    garbage on purpose) means the verifier got past the helper lookup, so
    the helper exists.
    """
    fd, log = load_raw_prog(_call(helper_id) + _EXIT, prog_type)
    if fd >= 0:
        os.close(fd)
        return True, f"helper {helper_id}: program with the call loaded"
    # The verifier's verdict is its last line before the "processed N insns" summary.
    said = [ln for ln in log.splitlines() if ln.strip() and not ln.startswith("processed ")]
    last = said[-1] if said else ""
    for missing in ("invalid func ", "unknown func ", "program of this type cannot use helper "):
        if missing in log:
            return False, f"helper {helper_id}: verifier says {last!r}"
    if not log.strip():
        # Refused before the verifier ran (EPERM, ...): nothing learnt.
        return False, f"helper {helper_id}: cannot tell, load refused with {errno_text(OSError(-fd, ''))} and no verifier log"
    return True, f"helper {helper_id} known (verifier stopped later: {last!r})"


@functools.cache
def tcx() -> tuple[bool, str]:
    """Does the kernel have tcx hooks (6.6+)? Asked without changing
    anything: BPF_PROG_QUERY of the loopback's (ifindex 1 in every
    namespace) tcx ingress hook; a kernel without tcx refuses the attach
    type with EINVAL. Cached: asked once per process."""
    return _tcx()


@guarded
def _tcx() -> tuple[bool, str]:
    try:
        bpfsys.prog_query_tcx(1, bpfsys.BPF_TCX_INGRESS)
    except OSError as e:
        return False, f"BPF_PROG_QUERY(BPF_TCX_INGRESS): {errno_text(e)}"
    return True, "BPF_PROG_QUERY(BPF_TCX_INGRESS) answered"
