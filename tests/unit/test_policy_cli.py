"""`microseg policy check / explain / diff / apply` as an operator runs them.

check, explain --file and diff --against need no kernel. The lab tests
(`microseg up`, `policy apply` against real clients) are in
tests/e2e/test_policy_cli_lab.py.
"""
from __future__ import annotations

import json

import pytest

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


def write(tmp_path, text, name="policy.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return str(f)


def test_help_prints_the_precedence(microseg):
    r = microseg("policy", "--help", check=True)
    assert "(source group, destination group), (source group, any)" in r.stdout
    assert "nested" in r.stdout


def test_check_ok_summary(microseg, tmp_path):
    f = write(tmp_path, POLICY)
    r = microseg("policy", "check", f, check=True)
    assert r.stdout.startswith(f"{f}: ok: 3 groups")
    assert "2 rules, 1 overrides" in r.stdout and "defaults: ingress deny, egress allow" in r.stdout
    d = json.loads(microseg("policy", "check", f, "--json", check=True).stdout)
    assert (d["groups"], d["rules"], d["overrides"], d["exact_entries"]) == (3, 2, 1, 1)
    assert d["rule_entries"] == 5 + 6      # web->db blocks; canary->db: its own 8050 + web's 5 blocks


def test_check_errors_one_line_each(microseg, tmp_path):
    bad = POLICY.replace("to: db\n    proto: tcp", "to: dbb\n    proto: tcp").replace(
        "ports: [8050]", "ports: [0]") + "  - {src: 10.0.1.6, dst: 10.0.2.9, proto: icmp, dport: 22, action: deny}\n"
    f = write(tmp_path, bad)
    r = microseg("policy", "check", f)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert [ln.split(":")[1] for ln in lines] == ["9", "16", "19"], lines
    assert all(ln.startswith(f"{f}:") for ln in lines)
    assert "unknown group 'dbb'" in lines[0] and "port 0" in lines[1] and "icmp" in lines[2]
    missing = microseg("policy", "check", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_explain_from_a_file(microseg, tmp_path):
    f = write(tmp_path, POLICY)
    out = microseg("policy", "explain", "10.0.1.200", "10.0.2.7", "tcp", "8051", "--file", f, check=True).stdout
    assert "10.0.1.200 in group canary (id 3, prefix 10.0.1.128/25)" in out
    assert "10.0.2.7 in group db (id 2, prefix 10.0.2.0/24)" in out
    assert "rule 1 web-to-db, line 7: web -> db tcp 5432,8000-8100 inspect (waf,dlp, hold) app tls log" in out
    assert "canary is nested in web" in out
    assert "the kernel counts PASS_POLICY_INSPECT" in out
    e = json.loads(microseg("policy", "explain", "10.0.1.200", "10.0.2.7", "tcp", "8050", "--file", f, "--json",
                       check=True).stdout)
    assert (e["rule"]["id"], e["rule"]["line"], e["action"], e["kernel_reason"]) == (2, 16, "deny", "DROP_POLICY_DENY")
    e = json.loads(microseg("policy", "explain", "10.0.1.5", "10.0.2.9", "tcp", "22", "--sport", "999", "--file", f,
                       "--json", check=True).stdout)
    assert (e["found_by"], e["rule"]["kind"], e["rule"]["id"], e["rule"]["line"]) == ("override", "override", 3, 18)
    out = microseg("policy", "explain", "192.0.2.1", "10.0.2.9", "udp", "53", "--hook", "egress", "--file", f,
              check=True).stdout
    assert "no group: the world" in out and "default egress (defaults, line 5)" in out
    assert "action:      allow; the kernel counts PASS_POLICY_DEFAULT" in out


@pytest.mark.parametrize("args, needle", [
    (("10.0.0.300", "10.0.0.1", "tcp", "80"), "SRC '10.0.0.300'"),
    (("10.0.0.1", "2001:db8::1", "tcp", "80"), "different IP versions"),
    (("10.0.0.1", "10.0.0.2", "sctpx", "80"), "protocol 'sctpx'"),
    (("10.0.0.1", "10.0.0.2", "tcp", "70000"), "PORT '70000'"),
])
def test_explain_bad_arguments(microseg, tmp_path, args, needle):
    r = microseg("policy", "explain", *args, "--file", write(tmp_path, POLICY))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("microseg: error: ") and needle in r.stderr


def test_diff_against_a_file(microseg, tmp_path):
    old = write(tmp_path, POLICY, "old.yaml")
    new = write(tmp_path, POLICY.replace("ports: [8050], action: deny", "ports: [8050], action: allow")
                .replace("  canary: [10.0.1.128/25]\n", "  canary: [10.0.1.128/25]\n  ops: [10.9.0.0/16]\n"),
                "new.yaml")
    out = microseg("policy", "diff", new, "--against", old, check=True).stdout.splitlines()
    assert out[0] == f"{new} against {old}:"
    assert "  + group ops: 10.9.0.0/16 (line 5)" in out
    assert "  ~ rule (line 17): canary -> db tcp 8050 deny  ->  canary -> db tcp 8050 allow" in out
    assert len(out) == 3
    same = microseg("policy", "diff", old, "--against", old, check=True).stdout
    assert same.endswith("no changes\n")


# -- an empty policy: warned by check (refused by what puts it in force:
# tests/e2e/test_cli_errors.py) --------------------------------------------------

EMPTY_POLICIES = ["", "# nothing yet\n", "{}\n", "groups:\n  web: [10.0.1.0/24]\n", "rules: []\ndefaults:\n"]


@pytest.mark.parametrize("text", EMPTY_POLICIES)
def test_empty_policy_check_warns(microseg, tmp_path, text):
    f = tmp_path / "empty.yaml"
    f.write_text(text)
    r = microseg("policy", "check", f)
    assert r.returncode == 0 and "ok" in r.stdout
    assert r.stderr.splitlines() == [f"{f}:1: warning: no rules, overrides or defaults: this policy denies "
                                     f"every flow"], r.stderr


def test_explicit_deny_all_is_not_warned(microseg, tmp_path):
    f = tmp_path / "deny.yaml"
    f.write_text("defaults: {ingress: deny, egress: deny}\n")
    r = microseg("policy", "check", f)
    assert r.returncode == 0 and r.stderr == ""
