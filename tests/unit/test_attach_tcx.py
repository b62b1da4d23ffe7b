"""The `attach.mode` setting (datapath/config.py) and the refusal of tcx on
a kernel without it: one line naming the setting, before the compile and
before any change (appliance/bringup.py). The attach itself runs in the
lab: tests/e2e/test_tcx_lab.py."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from datapath import attach, probes
from datapath.config import DatapathConfig
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
