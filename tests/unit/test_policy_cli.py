"""`microseg policy check / explain / diff / apply` as an operator runs them.

check, explain --file and diff --against need no kernel. The lab test
attaches with `microseg up`, applies a policy with `microseg policy apply`
(a process that exits: the policy lives on in the attached build's maps),
and checks real clients: curl to the allowed port works, to another port
it is dropped; a bad file changes nothing; explain and diff read the
applied copy.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from appliance.lab import CLIENT_V4, GW_IFACES, SERVER_V4, HttpServer, Lab

MICROSEG = [sys.executable, "-m", "appliance.cli"]

POLICY = """\
groups:
  web: [10.0.1.0/24, "2001:db8:1::/64"]
  db: [10.0.2.0/24]
  canary: [10.0.1.128/25]
defaults: {ingress: deny, egress: allow}
rules:
  - name: web-to-db
    from: web
    to: db
    proto: tcp
    ports: [5432, "8000-8100"]
    action: inspect
    inspect: {what: [waf, dlp], mode: hold}
    app: tls
    log: true
  - {from: canary, to: db, proto: tcp, ports: [8050], action: deny}
overrides:
  - {src: 10.0.1.5, dst: 10.0.2.9, proto: tcp, dport: 22, sport: 0, action: deny}
"""


def cli(*args, env_run=None, check=False):
    env = dict(os.environ)
    if env_run is not None:
        env["MICROSEG_RUN"] = str(env_run)
    r = subprocess.run([*MICROSEG, *args], capture_output=True, text=True, timeout=120, env=env)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def write(tmp_path, text, name="policy.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return str(f)


def test_help_prints_the_precedence():
    r = cli("policy", "--help", check=True)
    assert "(source group, destination group), (source group, any)" in r.stdout
    assert "nested" in r.stdout


def test_check_ok_summary(tmp_path):
    f = write(tmp_path, POLICY)
    r = cli("policy", "check", f, check=True)
    assert r.stdout.startswith(f"{f}: ok: 3 groups")
    assert "2 rules, 1 overrides" in r.stdout and "defaults: ingress deny, egress allow" in r.stdout
    d = json.loads(cli("policy", "check", f, "--json", check=True).stdout)
    assert (d["groups"], d["rules"], d["overrides"], d["exact_entries"]) == (3, 2, 1, 1)
    assert d["rule_entries"] == 5 + 6      # web->db blocks; canary->db: its own 8050 + web's 5 blocks


def test_check_errors_one_line_each(tmp_path):
    bad = POLICY.replace("to: db\n    proto: tcp", "to: dbb\n    proto: tcp").replace(
        "ports: [8050]", "ports: [0]") + "  - {src: 10.0.1.6, dst: 10.0.2.9, proto: icmp, dport: 22, action: deny}\n"
    f = write(tmp_path, bad)
    r = cli("policy", "check", f)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert [ln.split(":")[1] for ln in lines] == ["9", "16", "19"], lines
    assert all(ln.startswith(f"{f}:") for ln in lines)
    assert "unknown group 'dbb'" in lines[0] and "port 0" in lines[1] and "icmp" in lines[2]
    missing = cli("policy", "check", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_explain_from_a_file(tmp_path):
    f = write(tmp_path, POLICY)
    out = cli("policy", "explain", "10.0.1.200", "10.0.2.7", "tcp", "8051", "--file", f, check=True).stdout
    assert "10.0.1.200 in group canary (id 3, prefix 10.0.1.128/25)" in out
    assert "10.0.2.7 in group db (id 2, prefix 10.0.2.0/24)" in out
    assert "rule 1 web-to-db, line 7: web -> db tcp 5432,8000-8100 inspect (waf,dlp, hold) app tls log" in out
    assert "canary is nested in web" in out
    assert "the kernel counts PASS_POLICY_INSPECT" in out
    e = json.loads(cli("policy", "explain", "10.0.1.200", "10.0.2.7", "tcp", "8050", "--file", f, "--json",
                       check=True).stdout)
    assert (e["rule"]["id"], e["rule"]["line"], e["action"], e["kernel_reason"]) == (2, 16, "deny", "DROP_POLICY_DENY")
    e = json.loads(cli("policy", "explain", "10.0.1.5", "10.0.2.9", "tcp", "22", "--sport", "999", "--file", f,
                       "--json", check=True).stdout)
    assert (e["found_by"], e["rule"]["kind"], e["rule"]["id"], e["rule"]["line"]) == ("override", "override", 3, 18)
    out = cli("policy", "explain", "192.0.2.1", "10.0.2.9", "udp", "53", "--hook", "egress", "--file", f,
              check=True).stdout
    assert "no group: the world" in out and "default egress (defaults, line 5)" in out
    assert "action:      allow; the kernel counts PASS_POLICY_DEFAULT" in out


@pytest.mark.parametrize("args, needle", [
    (("10.0.0.300", "10.0.0.1", "tcp", "80"), "SRC '10.0.0.300'"),
    (("10.0.0.1", "2001:db8::1", "tcp", "80"), "different IP versions"),
    (("10.0.0.1", "10.0.0.2", "sctpx", "80"), "protocol 'sctpx'"),
    (("10.0.0.1", "10.0.0.2", "tcp", "70000"), "PORT '70000'"),
])
def test_explain_bad_arguments(tmp_path, args, needle):
    r = cli("policy", "explain", *args, "--file", write(tmp_path, POLICY))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("microseg: error: ") and needle in r.stderr


def test_diff_against_a_file(tmp_path):
    old = write(tmp_path, POLICY, "old.yaml")
    new = write(tmp_path, POLICY.replace("ports: [8050], action: deny", "ports: [8050], action: allow")
                .replace("  canary: [10.0.1.128/25]\n", "  canary: [10.0.1.128/25]\n  ops: [10.9.0.0/16]\n"),
                "new.yaml")
    out = cli("policy", "diff", new, "--against", old, check=True).stdout.splitlines()
    assert out[0] == f"{new} against {old}:"
    assert "  + group ops: 10.9.0.0/16 (line 5)" in out
    assert "  ~ rule (line 17): canary -> db tcp 8050 deny  ->  canary -> db tcp 8050 allow" in out
    assert len(out) == 3
    same = cli("policy", "diff", old, "--against", old, check=True).stdout
    assert same.endswith("no changes\n")


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
def test_apply_explain_diff_in_the_lab(tmp_path):
    run = tmp_path / "run"
    good, wider = write(tmp_path, LAB_POLICY), write(tmp_path, LAB_POLICY_WIDER, "wider.yaml")
    bad = write(tmp_path, LAB_POLICY_WIDER.replace("ports: [8081]", "ports: [80811]"), "bad.yaml")
    with Lab() as lab:
        try:
            cli("up", "--netns", lab.gateway, "--iface", *GW_IFACES, check=True)
            with HttpServer(lab, 8080), HttpServer(lab, 8081):
                # before any policy: both ports answer
                assert curl(lab, 8081).stdout == "200"
                r = cli("policy", "apply", good, "--netns", lab.gateway, env_run=run, check=True)
                assert "generation 1 (slot 0)" in r.stdout, r.stdout
                assert (run / lab.gateway / "policy.yaml").read_text() == LAB_POLICY
                meta = json.loads((run / lab.gateway / "policy.json").read_text())
                assert [b["generation"] for b in meta["builds"]] == [1]

                assert curl(lab, 8080).stdout == "200"
                blocked = curl(lab, 8081)
                assert blocked.returncode != 0 and blocked.stdout == "000"   # the SYN was dropped: timeout

                out = cli("policy", "explain", CLIENT_V4, SERVER_V4, "tcp", "8080", "--netns", lab.gateway,
                          env_run=run, check=True).stdout
                assert "rule 1 web, line 6" in out and "generation 1" in out and "PASS_POLICY_ALLOW" in out
                assert "note:" not in out
                out = cli("policy", "explain", CLIENT_V4, SERVER_V4, "tcp", "8081", "--netns", lab.gateway,
                          env_run=run, check=True).stdout
                assert "default ingress (defaults, line 4)" in out and "DROP_POLICY_DEFAULT" in out

                d = cli("policy", "diff", wider, "--netns", lab.gateway, env_run=run, check=True).stdout
                assert "+ rule alt (line 7): clients -> servers tcp 8081 allow" in d

                # a bad file: exit 2, nothing applied, the old policy still decides
                r = cli("policy", "apply", bad, "--netns", lab.gateway, env_run=run)
                assert r.returncode == 2 and f"{bad}:7: " in r.stderr and "80811" in r.stderr
                assert "Traceback" not in r.stderr and r.stdout == ""
                assert (run / lab.gateway / "policy.yaml").read_text() == LAB_POLICY
                assert curl(lab, 8080).stdout == "200"
                assert curl(lab, 8081).returncode != 0
                out = cli("policy", "explain", CLIENT_V4, SERVER_V4, "tcp", "8080", "--netns", lab.gateway,
                          env_run=run, check=True).stdout
                assert "generation 1" in out and "note:" not in out

                # the wider policy: generation 2 in the other slot, 8081 opens
                r = cli("policy", "apply", wider, "--netns", lab.gateway, env_run=run, check=True)
                assert "generation 2 (slot 1)" in r.stdout
                assert curl(lab, 8081).stdout == "200"
                assert curl(lab, 8080).stdout == "200"
                assert cli("policy", "diff", wider, "--netns", lab.gateway, env_run=run,
                           check=True).stdout.endswith("no changes\n")
        finally:
            cli("down", "--netns", lab.gateway, "--iface", *GW_IFACES)


@pytest.mark.lab
def test_apply_needs_an_attached_build(tmp_path):
    with Lab() as lab:
        r = cli("policy", "apply", write(tmp_path, LAB_POLICY), "--netns", lab.gateway, env_run=tmp_path / "run")
        assert r.returncode != 0 and "not attached" in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "run").exists()


@pytest.mark.lab
def test_up_enforces_the_policy_from_the_first_packet(tmp_path):
    """`up --policy` applies before attaching; a later `up` (an upgrade)
    carries the applied policy into the new build: never a window where
    everything passes."""
    run = tmp_path / "run"
    good = write(tmp_path, LAB_POLICY)
    with Lab() as lab:
        try:
            r = cli("up", "--netns", lab.gateway, "--iface", *GW_IFACES, "--policy", good,
                    env_run=run, check=True)
            assert "in force (generation 1)" in r.stdout
            with HttpServer(lab, 8080), HttpServer(lab, 8081):
                assert curl(lab, 8080).stdout == "200"
                assert curl(lab, 8081).returncode != 0
                r = cli("up", "--netns", lab.gateway, "--iface", *GW_IFACES, env_run=run, check=True)
                # the generation goes on from the pinned state: sessions of
                # the old build are re-checked against it, never mistaken for
                # decisions of the new one
                assert "in force (generation 2)" in r.stdout and "state: reused" in r.stdout
                assert curl(lab, 8081).returncode != 0
                assert curl(lab, 8080).stdout == "200"
        finally:
            cli("down", "--netns", lab.gateway, "--iface", *GW_IFACES, env_run=run)


def test_up_refuses_a_bad_policy_before_touching_anything(tmp_path):
    bad = write(tmp_path, LAB_POLICY.replace("ports: [8080]", "ports: [0]"))
    r = cli("up", "--netns", "ms-no-such-ns", "--iface", "x", "--policy", bad)
    assert r.returncode == 2 and f"{bad}:" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.lab
def test_blocklist_drops_at_xdp_and_follows_apply(tmp_path):
    """The policy's blocklist is dropped at XDP on the managed interfaces,
    before any rule; a later apply without it lifts it."""
    run = tmp_path / "run"
    open_policy = LAB_POLICY.replace("defaults: {ingress: deny, egress: deny}",
                                     "defaults: {ingress: allow, egress: allow}")
    blocked = write(tmp_path, open_policy + f"blocklist: [{CLIENT_V4}/32]\n", "blocked.yaml")
    unblocked = write(tmp_path, open_policy, "open.yaml")
    with Lab() as lab:
        try:
            r = cli("up", "--netns", lab.gateway, "--iface", *GW_IFACES, "--policy", blocked,
                    env_run=run, check=True)
            assert "XDP blocklist: 1 prefixes" in r.stdout, r.stdout
            ping = lab.run(lab.client, ["ping", "-c", "1", "-W", "1", SERVER_V4], check=False)
            assert ping.returncode != 0
            xdp = lab.run(lab.gateway, ["ip", "-d", "link", "show", "gw-c"]).stdout
            assert "xdp" in xdp
            r = cli("policy", "apply", unblocked, "--netns", lab.gateway, env_run=run, check=True)
            assert "XDP blocklist: none" in r.stdout
            lab.run(lab.client, ["ping", "-c", "1", "-W", "2", SERVER_V4])
        finally:
            cli("down", "--netns", lab.gateway, "--iface", *GW_IFACES, env_run=run)
        assert "xdp" not in lab.run(lab.gateway, ["ip", "-d", "link", "show", "gw-c"]).stdout
