"""tcx in the lab, as an operator runs it: `microseg up` with the default
setting (`attach.mode: auto`, tcx on this kernel) attaches pinned tcx links
(no clsact qdisc, no cls_bpf filter), the policy passes and drops as with
clsact, `up` again swaps the program of the same link, `status` lists the
links, `attach: {mode: clsact}` moves the interfaces to clsact and the
default back to tcx, `down` leaves nothing pinned. Switching modes adds
the new hook before the old one goes (checked on the kernel's hooks at the
moment of each removal). (The refusal on a kernel without tcx and the
setting's resolution: tests/unit/test_attach_tcx.py.)
"""
from __future__ import annotations

import json

import pytest

from appliance.lab import CLIENT_V4, GW_IFACES, SERVER_V4, HttpServer
from datapath import attach, bpfsys, pins, probes
from datapath.enums import Direction

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(not probes.tcx()[0], reason="the kernel has no tcx hooks (6.6+)")]

POLICY = """\
groups:
  clients: [10.77.1.0/24]
  servers: [10.77.2.0/24]
defaults: {ingress: deny, egress: deny}
rules:
  - {name: web, from: clients, to: servers, proto: tcp, ports: [8080], action: allow}
"""


def curl(lab, port):
    return lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                                f"http://{SERVER_V4}:{port}/"], check=False)


def hooks(lab):
    """(iface, direction) -> [(prog id, link id)] on every tcx hook of the gateway's interfaces."""
    out = {}
    with attach.netlink(lab.gateway) as ipr:
        idx = attach.resolve(ipr, list(GW_IFACES), lab.gateway)
    with attach._in_netns(lab.gateway):
        for name, i in idx.items():
            for d, at in attach.TCX_TYPE.items():
                out[(name, d.name)] = bpfsys.prog_query_tcx(i, at)
    return out


def bpf_filters(lab):
    n = 0
    for iface in GW_IFACES:
        for hook in ("ingress", "egress"):
            r = lab.run(lab.gateway, ["tc", "-j", "filter", "show", "dev", iface, hook], check=False)
            n += sum(1 for f in json.loads(r.stdout or "[]") if f.get("kind") == "bpf" and "options" in f)
    return n


def test_tcx_up_policy_replace_status_switch_down(tmp_path, microseg, lab):
    clsact = tmp_path / "clsact.yaml"
    clsact.write_text("attach: {mode: clsact}\n")
    pol = tmp_path / "policy.yaml"
    pol.write_text(POLICY)
    links_dir = pins.ns_dir(lab.gateway) / attach.LINKS_DIR
    up = ["up", "--netns", lab.gateway, "--iface", *GW_IFACES]
    try:
        microseg(*up, "--policy", pol, check=True)
        first = hooks(lab)
        # One program, through one link, on each of the four hooks; no cls_bpf filter.
        assert all(len(v) == 1 for v in first.values()), first
        assert bpf_filters(lab) == 0
        assert len(list(links_dir.iterdir())) == 4
        mine = attach.attached(lab.gateway)
        assert sorted((a.iface, a.direction, a.mode) for a in mine) == sorted(
            (i, d.name, "tcx") for i in GW_IFACES for d in Direction)
        assert {(a.iface, a.direction): a.prog_id for a in mine} == {k: v[0][0] for k, v in first.items()}

        with HttpServer(lab, 8080), HttpServer(lab, 8081):
            assert curl(lab, 8080).stdout == "200"
            blocked = curl(lab, 8081)
            assert blocked.returncode != 0 and blocked.stdout == "000"   # the SYN was dropped

            st = json.loads(microseg("status", "--netns", lab.gateway, "--json", check=True).stdout)
            assert sorted((a["iface"], a["direction"], a["mode"]) for a in st["attached"]) == sorted(
                (i, d.name, "tcx") for i in GW_IFACES for d in Direction)

            # `up` again: the same links (ids), a new program in each.
            microseg(*up, check=True)
            second = hooks(lab)
            for k, [(prog, link)] in second.items():
                [(old_prog, old_link)] = first[k]
                assert link == old_link and prog != old_prog, (k, first[k], second[k])
            assert curl(lab, 8080).stdout == "200"
            assert curl(lab, 8081).stdout == "000"

            # `attach: {mode: clsact}` moves the interfaces to clsact: the
            # filters in, our links out.
            microseg(*up, "--config", clsact, check=True)
            assert all(v == [] for v in hooks(lab).values())
            assert bpf_filters(lab) == 4
            assert {a.mode for a in attach.attached(lab.gateway)} == {"clsact"}
            assert not links_dir.exists()
            assert curl(lab, 8081).stdout == "000"

            # And the default to tcx again, then `down` removes the links and unpins them.
            microseg(*up, check=True)
            assert bpf_filters(lab) == 0
            r = microseg("down", "--netns", lab.gateway, "--iface", *GW_IFACES, check=True)
            assert "removed 4" in r.stdout, r.stdout
        assert all(v == [] for v in hooks(lab).values())
        assert not links_dir.exists()
        assert attach.attached(lab.gateway) == []
    finally:
        microseg("down", "--netns", lab.gateway, "--iface", *GW_IFACES)


def test_switching_modes_adds_the_new_hook_before_removing_the_old(lab, fastpath, monkeypatch):
    """clsact -> tcx -> clsact on the gateway's interfaces: at the moment our
    filters come off an interface its tcx links already hold the program,
    and at the moment its links come off the filters are already there."""
    ifaces = list(GW_IFACES)
    with attach.netlink(lab.gateway) as ipr:
        idx = attach.resolve(ipr, ifaces, lab.gateway)
    seen = []
    clsact_remove, tcx_remove = attach._clsact_remove, attach._tcx_remove

    def on_tcx(i):
        with attach._in_netns(lab.gateway):
            return all(bpfsys.prog_query_tcx(i, at) for at in attach.TCX_TYPE.values())

    def checked_clsact_remove(ipr, name, i, state):
        seen.append(("clsact off", name, on_tcx(i)))
        return clsact_remove(ipr, name, i, state)

    def checked_tcx_remove(i, netns):
        with attach.netlink(lab.gateway) as ipr:
            filters = all(attach._our_filters(ipr, i, p) for p in attach.PARENT.values())
        seen.append(("tcx off", next(n for n, j in idx.items() if j == i), filters))
        return tcx_remove(i, netns)

    monkeypatch.setattr(attach, "_clsact_remove", checked_clsact_remove)
    monkeypatch.setattr(attach, "_tcx_remove", checked_tcx_remove)
    try:
        # No mode named: the library's default is `attach.mode: auto`'s, tcx here.
        attach.attach(fastpath, ifaces, lab.gateway)
        assert {a.mode for a in attach.attached(lab.gateway)} == {"tcx"}
        attach.attach(fastpath, ifaces, lab.gateway, mode="clsact")
        assert {a.mode for a in attach.attached(lab.gateway)} == {"clsact"}
        seen.clear()
        attach.attach(fastpath, ifaces, lab.gateway, mode="tcx")
        assert sorted(seen) == [("clsact off", n, True) for n in sorted(ifaces)]
        assert {a.mode for a in attach.attached(lab.gateway)} == {"tcx"}
        seen.clear()
        attach.attach(fastpath, ifaces, lab.gateway, mode="clsact")
        assert sorted(seen) == [("tcx off", n, True) for n in sorted(ifaces)]
        assert {a.mode for a in attach.attached(lab.gateway)} == {"clsact"}
        assert len(attach.attached(lab.gateway)) == 2 * len(ifaces)
    finally:
        monkeypatch.undo()
        attach.detach(ifaces, lab.gateway)
    assert attach.attached(lab.gateway) == []
