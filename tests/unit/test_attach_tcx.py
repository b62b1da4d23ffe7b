"""The `attach.mode` setting (datapath/config.py) and the refusal of tcx on
a kernel without it: one line naming the setting, before the compile and
before any change (appliance/bringup.py). The attach itself runs in the
lab: tests/e2e/test_tcx_lab.py."""
from __future__ import annotations

import contextlib

import pytest
from pydantic import ValidationError

from datapath import attach, probes
from datapath.config import DatapathConfig
from datapath.enums import Direction
from datapath.errors import UsageError


def test_setting_defaults_to_auto_and_takes_tcx_and_clsact():
    assert DatapathConfig().attach.mode == "auto"
    assert DatapathConfig(attach={"mode": "tcx"}).attach.mode == "tcx"
    assert DatapathConfig(attach={"mode": "clsact"}).attach.mode == "clsact"
    with pytest.raises(ValidationError):
        DatapathConfig(attach={"mode": "tc"})


@pytest.mark.parametrize("has_tcx, setting, mode", [
    (True, "auto", "tcx"), (False, "auto", "clsact"),          # the default follows the kernel
    (True, "clsact", "clsact"), (False, "clsact", "clsact"),   # clsact forced
    (True, "tcx", "tcx"),
])
def test_the_setting_resolves_to_tcx_where_the_kernel_has_it(monkeypatch, has_tcx, setting, mode):
    monkeypatch.setattr(probes, "tcx", lambda: (has_tcx, "probed"))
    assert attach.resolve_mode(setting) == mode


def test_bring_up_attaches_in_the_resolved_mode(monkeypatch):
    """The default setting reaches the attach as tcx (this kernel's probe
    answered yes) or clsact (no): never as "auto"."""
    from appliance import bringup
    from datapath import state
    from datapath.policy_maps import PolicyMaps

    class Stop(Exception):
        pass

    for has_tcx, want in ((True, "tcx"), (False, "clsact")):
        monkeypatch.setattr(probes, "tcx", lambda: (has_tcx, "probed"))
        modes = []
        monkeypatch.setattr(state, "load", lambda *a, **k: (Closing(), []))
        monkeypatch.setattr(PolicyMaps, "for_fastpath", staticmethod(lambda fp: Seeding()))

        def rollout(b):
            modes.append(b.attach_mode)
            raise Stop

        with pytest.raises(Stop):
            bringup.bring_up(DatapathConfig(), "ns", ["a"], None, rollout=rollout,
                             prepare=lambda b: None)
        assert modes == [want]


class Closing:
    def close(self):
        pass


class Seeding:
    def seed_generation(self, gen):
        pass


@pytest.fixture
def no_tcx(monkeypatch):
    monkeypatch.setattr(probes, "tcx", lambda: (False, "BPF_PROG_QUERY(BPF_TCX_INGRESS): EINVAL: Invalid argument"))


def test_kernel_without_tcx_is_one_line_naming_the_setting(no_tcx):
    with pytest.raises(UsageError) as e:
        attach.require_tcx()
    msg = str(e.value)
    assert "attach.mode" in msg and "tcx" in msg and "EINVAL" in msg and "\n" not in msg


def test_bring_up_refuses_before_loading_anything(no_tcx, monkeypatch):
    from appliance import bringup
    from datapath import state

    loads = []
    monkeypatch.setattr(state, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(UsageError, match="attach.mode"):
        bringup.bring_up(DatapathConfig(attach={"mode": "tcx"}), "ns", ["a"], None)
    assert loads == []


def test_unknown_mode_is_refused_before_any_change():
    with pytest.raises(UsageError, match="attach.mode 'tc'"):
        attach._replace_all(None, {"a": 1}, {}, "ns", "tc")


class FakeFastPath:
    fns: dict = {}

    def set_managed(self, ifindexes):
        pass


@pytest.fixture
def hooks_called(monkeypatch):
    """attach.attach with the kernel's hooks replaced by a log of which
    mode's replace and remove each interface got; ``pinned`` the ifindexes
    that already have a tcx link of ours."""
    log = {"tcx": [], "clsact": [], "pinned": set()}

    @contextlib.contextmanager
    def netlink(netns=None):
        yield None

    monkeypatch.setattr(attach, "netlink", netlink)
    monkeypatch.setattr(attach, "resolve", lambda ipr, names, netns=None: {n: 10 + k for k, n in enumerate(names)})
    monkeypatch.setattr(attach, "_tcx_pins", lambda netns: {(i, d): None for i in log["pinned"] for d in Direction})
    monkeypatch.setattr(attach, "_tcx_replace", lambda idx, progs, netns: log["tcx"].extend(idx))
    monkeypatch.setattr(attach, "_clsact_replace", lambda ipr, idx, progs, netns: log["clsact"].extend(idx))
    monkeypatch.setattr(attach, "_clsact_remove", lambda ipr, name, i, state: 0)
    monkeypatch.setattr(attach, "_tcx_remove", lambda i, netns: 0)
    monkeypatch.setattr(attach, "_load_state", lambda netns: {})
    monkeypatch.setattr(attach, "_save_state", lambda netns, state: None)
    monkeypatch.setattr(attach, "_list", lambda ipr, netns=None: [])
    monkeypatch.setattr(attach.pins, "gc", lambda netns, keep: None)
    return log


@pytest.mark.parametrize("has_tcx, want", [(True, "tcx"), (False, "clsact")])
def test_the_library_default_is_what_auto_resolves_to(monkeypatch, hooks_called, has_tcx, want):
    """attach.attach with no mode on fresh interfaces (bench/latency.py, the
    lab tests) attaches as `attach.mode: auto` does: tcx where the kernel
    has it. (Before: clsact on every fresh interface, whatever the kernel.)"""
    monkeypatch.setattr(probes, "tcx", lambda: (has_tcx, "probed"))
    attach.attach(FakeFastPath(), ["a", "b"], "ns")
    assert hooks_called[want] == ["a", "b"]
    assert hooks_called["tcx" if want == "clsact" else "clsact"] == []


@pytest.mark.parametrize("mode", ["clsact", "tcx"])
def test_an_explicit_mode_is_kept(monkeypatch, hooks_called, mode):
    monkeypatch.setattr(probes, "tcx", lambda: (True, "probed"))
    hooks_called["pinned"] = {10}       # "a" has a link of ours: an explicit mode moves it anyway
    attach.attach(FakeFastPath(), ["a", "b"], "ns", mode=mode)
    assert hooks_called[mode] == ["a", "b"]


def test_keep_leaves_each_interface_in_the_mode_it_has(monkeypatch, hooks_called):
    """`rollback` of a snapshot that recorded no modes (appliance/deploy.py)."""
    monkeypatch.setattr(probes, "tcx", lambda: (True, "probed"))
    hooks_called["pinned"] = {10}
    attach.attach(FakeFastPath(), ["a", "b"], "ns", mode=attach.KEEP)
    assert (hooks_called["tcx"], hooks_called["clsact"]) == (["a"], ["b"])


def test_an_unknown_mode_is_one_line(hooks_called):
    with pytest.raises(UsageError, match=r"attach.mode 'tc': expected one of auto, clsact, tcx"):
        attach.attach(FakeFastPath(), ["a"], "ns", mode="tc")


def test_default_attach_on_a_kernel_without_tcx_is_not_refused(no_tcx, hooks_called):
    attach.attach(FakeFastPath(), ["a"], "ns")
    assert hooks_called["clsact"] == ["a"]
