"""`microseg policy apply / explain / diff` against a lab, as an operator runs them.

`microseg up` attaches (a process that exits: the policy lives on in the
attached build's maps), `microseg policy apply` applies, and real clients
check it: curl to the allowed port works, to another port it is dropped; a
bad file changes nothing; explain and diff read the applied copy. (check,
explain --file and diff --against need no kernel: tests/unit/test_policy_cli.py.)
"""
from __future__ import annotations

import json

import pytest

from appliance.lab import CLIENT_V4, GW_IFACES, SERVER_V4, HttpServer


def write(tmp_path, text, name="policy.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return str(f)


# -- against a lab ----------------------------------------------------------------

LAB_POLICY = """\
groups:
  clients: [10.77.1.0/24, "fd77:1::/64"]
  servers: [10.77.2.0/24, "fd77:2::/64"]
defaults: {ingress: deny, egress: deny}
rules:
  - {name: web, from: clients, to: servers, proto: tcp, ports: [8080], action: allow}
"""
LAB_POLICY_WIDER = LAB_POLICY + "  - {name: alt, from: clients, to: servers, proto: tcp, ports: [8081], action: allow}\n"


def curl(lab, port, timeout=2):
    return lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(timeout),
                                f"http://{SERVER_V4}:{port}/"], check=False)


@pytest.mark.lab
def test_apply_explain_diff_in_the_lab(tmp_path, microseg, lab, attached):
    run = tmp_path / "run"
    good, wider = write(tmp_path, LAB_POLICY), write(tmp_path, LAB_POLICY_WIDER, "wider.yaml")
    bad = write(tmp_path, LAB_POLICY_WIDER.replace("ports: [8081]", "ports: [80811]"), "bad.yaml")
    with attached():
        with HttpServer(lab, 8080), HttpServer(lab, 8081):
            # before any policy: both ports answer
            assert curl(lab, 8081).stdout == "200"
            r = microseg("policy", "apply", good, "--netns", lab.gateway, check=True)
            assert "generation 1 (slot 0)" in r.stdout, r.stdout
            assert (run / lab.gateway / "policy.yaml").read_text() == LAB_POLICY
            meta = json.loads((run / lab.gateway / "policy.json").read_text())
            assert [b["generation"] for b in meta["builds"]] == [1]

            assert curl(lab, 8080).stdout == "200"
            blocked = curl(lab, 8081)
            assert blocked.returncode != 0 and blocked.stdout == "000"   # the SYN was dropped: timeout

            out = microseg("policy", "explain", CLIENT_V4, SERVER_V4, "tcp", "8080", "--netns", lab.gateway,
                           check=True).stdout
            assert "rule 1 web, line 6" in out and "generation 1" in out and "PASS_POLICY_ALLOW" in out
            assert "note:" not in out
            out = microseg("policy", "explain", CLIENT_V4, SERVER_V4, "tcp", "8081", "--netns", lab.gateway,
                           check=True).stdout
            assert "default ingress (defaults, line 4)" in out and "DROP_POLICY_DEFAULT" in out

            d = microseg("policy", "diff", wider, "--netns", lab.gateway, check=True).stdout
            assert "+ rule alt (line 7): clients -> servers tcp 8081 allow" in d

            # a bad file: exit 2, nothing applied, the old policy still decides
            r = microseg("policy", "apply", bad, "--netns", lab.gateway)
            assert r.returncode == 2 and f"{bad}:7: " in r.stderr and "80811" in r.stderr
            assert "Traceback" not in r.stderr and r.stdout == ""
            assert (run / lab.gateway / "policy.yaml").read_text() == LAB_POLICY
            assert curl(lab, 8080).stdout == "200"
            assert curl(lab, 8081).returncode != 0
            out = microseg("policy", "explain", CLIENT_V4, SERVER_V4, "tcp", "8080", "--netns", lab.gateway,
                           check=True).stdout
            assert "generation 1" in out and "note:" not in out

            # the wider policy: generation 2 in the other slot, 8081 opens
            r = microseg("policy", "apply", wider, "--netns", lab.gateway, check=True)
            assert "generation 2 (slot 1)" in r.stdout
            assert curl(lab, 8081).stdout == "200"
            assert curl(lab, 8080).stdout == "200"
            assert microseg("policy", "diff", wider, "--netns", lab.gateway,
                            check=True).stdout.endswith("no changes\n")


@pytest.mark.lab
def test_apply_needs_an_attached_build(tmp_path, microseg, lab):
    r = microseg("policy", "apply", write(tmp_path, LAB_POLICY), "--netns", lab.gateway)
    assert r.returncode != 0 and "not attached" in r.stderr and "Traceback" not in r.stderr
    # nothing recorded: the run directory (where the owner lock was taken and
    # removed again) holds no file
    assert not list((tmp_path / "run").rglob("*"))


@pytest.mark.lab
def test_up_enforces_the_policy_from_the_first_packet(tmp_path, microseg, lab, attached):
    """`up --policy` applies before attaching; a later `up` (an upgrade)
    carries the applied policy into the new build: never a window where
    everything passes."""
    good = write(tmp_path, LAB_POLICY)
    with attached("--policy", good) as r:
        assert "in force (generation 1)" in r.stdout
        with HttpServer(lab, 8080), HttpServer(lab, 8081):
            assert curl(lab, 8080).stdout == "200"
            assert curl(lab, 8081).returncode != 0
            r = microseg("up", "--netns", lab.gateway, "--iface", *GW_IFACES, check=True)
            # the generation goes on from the pinned state: sessions of
            # the old build are re-checked against it, never mistaken for
            # decisions of the new one
            assert "in force (generation 2)" in r.stdout and "state: reused" in r.stdout
            assert curl(lab, 8081).returncode != 0
            assert curl(lab, 8080).stdout == "200"


def test_up_refuses_a_bad_policy_before_touching_anything(tmp_path, microseg):
    bad = write(tmp_path, LAB_POLICY.replace("ports: [8080]", "ports: [0]"))
    r = microseg("up", "--netns", "ms-no-such-ns", "--iface", "x", "--policy", bad)
    assert r.returncode == 2 and f"{bad}:" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.lab
def test_blocklist_drops_at_xdp_and_follows_apply(tmp_path, microseg, lab, attached):
    """The policy's blocklist is dropped at XDP on the managed interfaces,
    before any rule; a later apply without it lifts it."""
    open_policy = LAB_POLICY.replace("defaults: {ingress: deny, egress: deny}",
                                     "defaults: {ingress: allow, egress: allow}")
    blocked = write(tmp_path, open_policy + f"blocklist: [{CLIENT_V4}/32]\n", "blocked.yaml")
    unblocked = write(tmp_path, open_policy, "open.yaml")
    with attached("--policy", blocked) as r:
        assert "XDP blocklist: 1 prefixes" in r.stdout, r.stdout
        ping = lab.run(lab.client, ["ping", "-c", "1", "-W", "1", SERVER_V4], check=False)
        assert ping.returncode != 0
        xdp = lab.run(lab.gateway, ["ip", "-d", "link", "show", "gw-c"]).stdout
        assert "xdp" in xdp
        r = microseg("policy", "apply", unblocked, "--netns", lab.gateway, check=True)
        assert "XDP blocklist: none" in r.stdout
        lab.run(lab.client, ["ping", "-c", "1", "-W", "2", SERVER_V4])
    assert "xdp" not in lab.run(lab.gateway, ["ip", "-d", "link", "show", "gw-c"]).stdout
