"""preflight: every probe asks the real kernel, and says so honestly.

These run as root on the development VMs (kernel 6.18), where every row is
available; the forced-missing tests patch one probe to show how a missing
feature is reported. Each probe that could be a constant True is also shown
to answer False for something the kernel cannot do.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from datapath import bpfsys, preflight, probes

OUR_NETNS_PREFIX = f"mspf{os.getpid()}"


def _our_netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(OUR_NETNS_PREFIX)]


@pytest.fixture(autouse=True)
def no_netns_left_behind():
    yield
    assert _our_netns() == [], "a preflight probe left its network namespace behind"


@pytest.fixture
def root():
    if os.geteuid() != 0:
        pytest.fail("preflight probes load BPF programs and create namespaces: run as root")


@pytest.fixture(scope="module")
def features():
    if os.geteuid() != 0:
        pytest.fail("preflight probes load BPF programs and create namespaces: run as root")
    return preflight.probe_all()


# -- what this kernel has ---------------------------------------------------

def test_every_row_available_on_this_kernel(features):
    missing = [(f.name, f.detail) for f in features if not f.available]
    assert missing == []
    assert preflight.exit_code(features) == 0
    assert all(f.fallback == "" for f in features)  # a fallback names what replaces a *missing* feature


def test_rows_carry_levels_and_both_versions(features):
    names = [f.name for f in features]
    assert len(names) == len(set(names))
    for f in features:
        assert f.level in (preflight.REQUIRED, preflight.RECOMMENDED, preflight.OPTIONAL)
        assert f.review_min and f.upstream_since
    by = {f.name: f for f in features}
    assert by["map RINGBUF"].upstream_since == "5.8" and by["map RINGBUF"].review_min == "5.10"
    assert by["map BLOOM_FILTER"].upstream_since == "5.16"
    assert by["helper bpf_timer_init"].review_min == "5.15"
    assert by["kernel version"].level == preflight.REQUIRED


@pytest.mark.parametrize("probe", [
    preflight.probe_kernel_version, preflight.probe_bpf_syscall, preflight.probe_jit,
    preflight.probe_btf_vmlinux, preflight.probe_clsact, preflight.probe_tail_call,
    preflight.probe_bloom_filter,
], ids=lambda p: p.__name__)
def test_each_probe_finds_this_kernels_feature(root, probe):
    ok, detail = probe()
    assert ok, detail


@pytest.mark.parametrize("args", [
    (bpfsys.BPF_MAP_TYPE_HASH, 4, 4, 1, 0),
    (bpfsys.BPF_MAP_TYPE_LRU_HASH, 4, 4, 16, 0),
    (bpfsys.BPF_MAP_TYPE_LRU_HASH, 4, 4, 16, bpfsys.BPF_F_NO_COMMON_LRU),
    (bpfsys.BPF_MAP_TYPE_LPM_TRIE, 8, 4, 1, bpfsys.BPF_F_NO_PREALLOC),
    (bpfsys.BPF_MAP_TYPE_RINGBUF, 0, 0, 4096, 0),
    (bpfsys.BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 1, 0),
], ids=["hash", "lru", "lru-no-common", "lpm", "ringbuf", "prog-array"])
def test_map_types_this_kernel_creates(root, args):
    ok, detail = probes.probe_map(*args)
    assert ok, detail


def test_bloom_filter_needs_map_extra_layout(root):
    # map_extra (hash count) lives at offset 64 of bpf_attr; 16 hashes is over
    # the kernel's limit of 15, so a correct layout gets EINVAL here while a
    # wrong one (map_extra ignored) would succeed.
    ok, detail = probes.probe_map(bpfsys.BPF_MAP_TYPE_BLOOM_FILTER, 0, 4, 64, map_extra=16)
    assert not ok and "EINVAL" in detail


def test_bloom_note_says_how_bcc_gets_the_map(root):
    ok, detail = preflight.probe_bloom_filter()
    assert ok
    if not preflight._bcc_has_bloom():
        assert "created with bpf()" in detail


# -- the probes discriminate --------------------------------------------------

def test_helper_probe_discriminates(root):
    ok, detail = probes.probe_helper(100000)
    assert not ok and "invalid func" in detail
    ok, detail = probes.probe_helper(bpfsys.BPF_FUNC_timer_init)
    assert ok, detail


def test_helper_not_allowed_for_program_type_counts_as_missing(root):
    # bpf_override_return (58) exists, but only kprobe programs may call it:
    # for a tc program the probe must say missing.
    ok, detail = probes.probe_helper(58, bpfsys.BPF_PROG_TYPE_SCHED_CLS)
    assert not ok and "cannot use helper" in detail


def test_map_probe_rejects_invalid_map_type(root):
    ok, detail = probes.probe_map(9999, 4, 4, 1)
    assert not ok
    assert "EINVAL" in detail


def test_tail_call_probe_sees_a_missed_tail_call(root, monkeypatch):
    # With the second program never put in the PROG_ARRAY, the entry
    # program falls through: the probe must say the tail call did not happen.
    src = preflight._TAIL_PROG.replace("mspf_jmp.call(skb, 0);", "mspf_jmp.call(skb, 1);")
    monkeypatch.setattr(preflight, "_TAIL_PROG", src)
    ok, detail = preflight.probe_tail_call()
    assert not ok and "did not happen" in detail


# -- failures become rows, never tracebacks ------------------------------------

def test_clsact_probe_removes_namespace_when_attach_fails(root, monkeypatch):
    import pyroute2

    seen = []

    class Failing:
        def __init__(self, netns=None, **kw):
            seen.append(netns)
            raise RuntimeError("synthetic netlink failure")

    monkeypatch.setattr(pyroute2, "IPRoute", Failing)
    ok, detail = preflight.probe_clsact()
    assert not ok and "synthetic netlink failure" in detail
    assert seen and seen[0].startswith(OUR_NETNS_PREFIX)  # it ran in its own namespace
    assert _our_netns() == []


# -- exit code, render, json ----------------------------------------------------

def test_missing_required_feature_fails_preflight(features, monkeypatch):
    monkeypatch.setattr(preflight, "probe_tail_call", lambda: (False, "forced missing"))
    feats = preflight.probe_all()
    row = next(f for f in feats if f.name == "PROG_ARRAY tail call")
    assert not row.available and row.level == preflight.REQUIRED
    assert preflight.exit_code(feats) == 1
    text = preflight.render(feats)
    line = next(ln for ln in text.splitlines() if "PROG_ARRAY tail call" in ln)
    assert line.startswith("MISSING") and "forced missing" in line
    assert "required feature(s) missing: PROG_ARRAY tail call" in text


def test_missing_optional_feature_names_fallback_and_passes(features, monkeypatch):
    monkeypatch.setattr(preflight, "probe_bloom_filter", lambda: (False, "forced missing"))
    feats = preflight.probe_all()
    row = next(f for f in feats if f.name == "map BLOOM_FILTER")
    assert not row.available and row.fallback == "LPM trie only, no pre-check"
    assert preflight.exit_code(feats) == 0
    assert "fallback: LPM trie only, no pre-check" in preflight.render(feats)


def test_render_has_every_feature_and_host_fact(features):
    host = preflight.host_facts()
    text = preflight.render(features, host)
    for f in features:
        assert f.name in text
    for h in host:
        assert h.name in text
    rows = [ln for ln in text.splitlines() if ln.startswith(("ok ", "MISSING "))]
    assert len(rows) == len(features)
    # aligned: the level column starts at the same offset on every row
    cols = {ln.index(f.level) for ln, f in zip(rows, features)}
    assert len(cols) == 1


def test_host_facts_as_root(root):
    host = {h.name: h for h in preflight.host_facts()}
    assert host["root"].ok
    assert host["CAP_BPF + CAP_NET_ADMIN"].ok
    assert host["kernel headers for BCC"].ok


def test_json_round_trip(features):
    doc = json.loads(preflight.to_json(features))
    assert [f["name"] for f in doc["features"]] == [f.name for f in features]
    assert set(doc["features"][0]) == {"name", "level", "review_min", "upstream_since",
                                        "available", "detail", "fallback"}
    assert doc["exit_code"] == 0
    assert doc["kernel"] == os.uname().release


