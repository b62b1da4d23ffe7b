"""A fast path that cannot be built says why in one message: missing kernel
headers name the fix, a compile error carries the compiler's lines. (Both
stop before anything is loaded; the verifier's refusal, which needs a load,
is in tests/datapath/test_build_errors_kernel.py.)"""
from __future__ import annotations

import pytest

from datapath import compile as bpf_compile
from datapath.errors import MicrosegError
from datapath.loader import FastPath


def test_missing_headers_says_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(bpf_compile, "headers_dir", lambda: tmp_path / "nothing")
    with pytest.raises(MicrosegError, match=r"kernel headers missing: .* run `make setup`"):
        FastPath()


def test_compile_error_carries_compiler_lines():
    with pytest.raises(MicrosegError) as ei:
        FastPath(text="int tc_ingress(struct __sk_buff *skb) { return undefined_symbol; }\n")
    msg = str(ei.value)
    assert msg.startswith("BPF compile failed")
    assert "undefined_symbol" in msg
