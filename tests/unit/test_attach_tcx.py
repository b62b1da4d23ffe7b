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


def test_setting_defaults_to_clsact_and_takes_tcx():
    assert DatapathConfig().attach.mode == "clsact"
    assert DatapathConfig(attach={"mode": "tcx"}).attach.mode == "tcx"
    with pytest.raises(ValidationError):
        DatapathConfig(attach={"mode": "tc"})


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
