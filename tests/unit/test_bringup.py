"""appliance/bringup.py, the one bring-up `up`, `deploy` and the daemon call:
its order (the policy is in the maps before anything is attached; the
stored copy names what was attached), and what a failure leaves (the
FastPath closed, nothing recorded). The kernel, the pinned state and the
stored copy are stand-ins here: the lab tests run the real thing."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from appliance import bringup


class FakeFastPath:
    def __init__(self, log):
        self.log = log
        self.closed = False

    def close(self):
        self.log.append("close")
        self.closed = True


class FakePolicyMaps:
    def __init__(self, log):
        self.log = log

    def seed_generation(self, gen):
        self.log.append(("seed", gen))

    def apply(self, pol):
        self.log.append(("apply", pol))
        return SimpleNamespace(gen=8, slot=1)


@pytest.fixture
def world(monkeypatch):
    """Every outside effect of bring_up, logged in order."""
    from datapath import attach, state
    from datapath.policy_maps import PolicyMaps

    log: list = []
    fp = FakeFastPath(log)
    monkeypatch.setattr(state, "load", lambda cfg, netns, record, fresh=False: (log.append(("load", fresh)) or
                                                                                 (fp, ["reused"])))
    monkeypatch.setattr(PolicyMaps, "for_fastpath", classmethod(lambda cls, f: FakePolicyMaps(log)))
    monkeypatch.setattr(bringup.pf, "last_generation", lambda netns: 7)
    monkeypatch.setattr(bringup.pf, "summary", lambda model, pol: {"rules": 1})
    monkeypatch.setattr(bringup.pf, "store_applied",
                        lambda netns, text, source, builds, summ, names=None: log.append(("record", source, builds)))

    def fake_attach(f, ifaces, netns, managed=None, mode=None):
        log.append(("attach", tuple(ifaces)))
        return [SimpleNamespace(iface=i, direction=d, prog_id=pid, name="microseg:x")
                for i in ifaces for d, pid in (("DIR_INGRESS", 41), ("DIR_EGRESS", 42))]
    monkeypatch.setattr(attach, "attach", fake_attach)
    import appliance.xdp
    monkeypatch.setattr(appliance.xdp, "sync_blocklist",
                        lambda cidrs, ifaces, netns, force_no_bloom=False: log.append(("blocklist", tuple(cidrs)))
                        or "blocklist line")
    return SimpleNamespace(log=log, fp=fp)


CONFIG = SimpleNamespace(compat=SimpleNamespace(bloom="auto"), attach=SimpleNamespace(mode="clsact"))
POLICY = bringup.Policy("model", SimpleNamespace(blocklist=["10.9.0.0/16"], rule_info={}), "text", "p.yaml")


def test_policy_applied_before_attach_and_recorded_after(world):
    lines = []
    b = bringup.bring_up(CONFIG, "ns", ["a", "b"], POLICY, fresh=True,
                         prepare=lambda b: world.log.append(("prepare", b.applied.gen)),
                         after=lambda b: world.log.append("after"), blocklist=lines.append)
    assert world.log == [("load", True), ("seed", 7), ("apply", POLICY.pol), ("prepare", 8), ("attach", ("a", "b")),
                         "close", ("record", "p.yaml", [{"prog_id": 41, "generation": 8, "slot": 1}]), "after",
                         ("blocklist", ("10.9.0.0/16",))]
    assert lines == ["blocklist line"] and b.fp is None and b.state_lines == ["reused"]


def test_keep_open_and_no_policy(world):
    b = bringup.bring_up(CONFIG, None, ["a"], None, keep_open=True, blocklist=lambda line: None)
    assert b.fp is world.fp and not world.fp.closed
    # no policy: nothing applied, recorded, or put in the blocklist
    assert world.log == [("load", False), ("seed", 7), ("attach", ("a",))]


def test_a_failed_rollout_records_nothing_and_closes(world):
    def rollout(b):
        raise RuntimeError("gate failed")
    with pytest.raises(RuntimeError, match="gate failed"):
        bringup.bring_up(CONFIG, "ns", ["a"], POLICY, rollout=rollout, keep_open=True,
                         blocklist=lambda line: None)
    assert world.fp.closed
    assert not [e for e in world.log if e[0] in ("record", "blocklist")]


def test_a_custom_rollout_is_what_gets_recorded(world):
    """deploy's canary: the build goes on one interface at a time."""
    from datapath import attach

    def rollout(b):
        return [a for i in b.ifaces for a in attach.attach(b.fp, [i], b.netns, managed=b.ifaces)]
    b = bringup.bring_up(CONFIG, "ns", ["c", "d"], POLICY, rollout=rollout)
    assert [e for e in world.log if e[0] == "attach"] == [("attach", ("c",)), ("attach", ("d",))]
    assert len(b.attached) == 4
