"""preflight without a kernel: the attr layouts, the version floor, and how
a failing probe is reported (the probes against the real kernel are in
tests/datapath/test_preflight.py)."""
from __future__ import annotations

import os

from datapath import bpfsys, preflight, probes


def test_kernel_version_floor(monkeypatch):
    old = os.uname_result(("Linux", "h", "5.4.0-42-generic", "#1", "x86_64"))
    monkeypatch.setattr(preflight.os, "uname", lambda: old)
    ok, detail = preflight.probe_kernel_version()
    assert not ok and "5.10" in detail
    assert preflight._kernel_tuple("6.18.44-fc-v769") == (6, 18)
    assert preflight._kernel_tuple("garbage") is None


def test_probe_turns_exceptions_into_missing(monkeypatch):
    def boom(cmd, attr):
        raise ValueError("synthetic")
    monkeypatch.setattr(bpfsys, "sys_bpf", boom)
    ok, detail = probes.probe_map(bpfsys.BPF_MAP_TYPE_HASH, 4, 4, 1)
    assert not ok and "ValueError" in detail
    ok, detail = preflight.probe_bpf_syscall()
    assert not ok and "synthetic" in detail


def test_errno_is_named(monkeypatch):
    def eperm(cmd, attr):
        raise bpfsys.BpfError(1, "bpf cmd 0: Operation not permitted")
    monkeypatch.setattr(bpfsys, "sys_bpf", eperm)
    ok, detail = preflight.probe_bpf_syscall()
    assert not ok and "EPERM" in detail and "CAP_BPF" in detail


def test_attr_layouts_match_uapi():
    # offsets from include/uapi/linux/bpf.h (union bpf_attr)
    m = bpfsys._MapCreateAttr
    assert m.map_name.offset == 28 and m.map_extra.offset == 64
    p = bpfsys._ProgLoadAttr
    assert (p.insns.offset, p.license.offset, p.log_buf.offset, p.prog_name.offset,
            p.expected_attach_type.offset) == (8, 16, 32, 48, 68)
    assert len(bpfsys.insn(0x95)) == 8  # struct bpf_insn
