"""L7 allow-lists in the policy file (a rule's `l7:`): the model, `policy
check`'s errors with their lines, what the rule compiles to, `policy
explain`. The matcher is tests/unit/test_l7_allow.py; the engine's
verdicts and alerts tests/unit/test_engine_l7.py."""
from __future__ import annotations

import json

from appliance import policyfile as pf
from datapath.enums import INSPECT
from datapath.policy_tables import POL

POLICY = """\
groups:
  clients: [10.0.0.0/24]
  web: [10.0.1.0/24]
  dns: [10.0.2.0/24]
defaults: {ingress: deny, egress: deny}
rules:
  - name: web
    from: clients
    to: web
    proto: tcp
    ports: [80, 50051]
    action: allow
    l7:
      http:
        - {method: GET, path: "/public/.*"}
        - {method: "POST|PUT", path: "/api/v[12]/.*", host: "*.example.com", headers: ["X-Token", "X-Env: prod"]}
      grpc:
        - {service: helloworld.Greeter, method: SayHello}
        - {service: grpc.health.v1.Health}
  - name: resolver
    from: clients
    to: dns
    proto: udp
    ports: [53]
    action: inspect
    inspect: {what: [dpi], mode: async}
    l7:
      dns: [example.com, "*.example.com"]
"""


def write(tmp_path, text, name="policy.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return str(f)


def test_l7_rule_compiles_to_inspect_hold_by_default(tmp_path):
    model, pol, _ = pf.compile_file(write(tmp_path, POLICY))
    web, resolver = model.rules
    # `allow` with `l7`: its flows go to the slow path, held (the allow-list default).
    v = web.verdict(1)
    assert v.action == POL["POL_INSPECT"] and v.inspect & INSPECT["HOLD"]
    assert web.l7.protocols() == ("http", "grpc") and web.l7.http[1].headers == ["X-Token", "X-Env: prod"]
    # `inspect` with a mode written: the mode stays.
    v = resolver.verdict(2)
    assert v.action == POL["POL_INSPECT"] and not v.inspect & INSPECT["HOLD"]
    assert "l7 http[2] grpc[2]" in pol.rule_info[1].text and "(dpi, hold)" in pol.rule_info[1].text


def test_a_rule_without_l7_is_unchanged(tmp_path):
    model, _, _ = pf.compile_file(write(tmp_path, POLICY.split("    l7:\n")[0].replace("allow\n", "allow\n")
                                        .rstrip() + "\n"))
    v = model.rules[0].verdict(1)
    assert v.action == POL["POL_ALLOW"] and v.inspect == 0


BAD = [
    # (what replaces what in POLICY, expected line, words of the error)
    (("action: allow\n", "action: deny\n"), 13, "an allow-list on a rule that denies"),
    (('path: "/public/.*"', 'path: "/public/("'), 15, "l7.http[1].path: '/public/(': not a regular expression"),
    (('path: "/public/.*"', r'path: "(a)\\1"'), 15, "Back-references are unsupported"),
    (('method: GET,', 'metod: GET,'), 15, "l7.http[1].metod"),
    (('host: "*.example.com"', 'host: "example.com:80"'), 16, "l7.http[2].host"),
    (('"X-Token"', '"X Token"'), 16, "l7.http[2].headers[1]"),
    (("service: helloworld.Greeter", "service: hello world"), 18, "l7.grpc[1].service"),
    (("method: SayHello", "method: Say/Hello"), 18, "l7.grpc[1].method"),
    (('"*.example.com"]', '"*.exa mple.com"]'), 28, "l7.dns[2]"),
    (("proto: tcp\n    ports: [80, 50051]", "proto: udp\n    ports: [80, 50051]"), 14, "l7.http: needs proto tcp"),
    (("proto: udp\n    ports: [53]", "proto: icmp"), 27, "l7.dns: needs proto udp or tcp"),
    (("dns: [example.com, \"*.example.com\"]", "dns: []"), 28, "l7.dns: empty list"),
    (('- {method: GET, path: "/public/.*"}', "- {}"), 15, "no method, path, host or headers"),
    (("    l7:\n      dns", "    l7:\n      dnss"), 28, "l7.dnss"),
]


def test_check_errors_name_file_line_and_field(microseg, tmp_path):
    for (old, new), line, words in BAD:
        assert old in POLICY, old
        f = write(tmp_path, POLICY.replace(old, new, 1))
        r = microseg("policy", "check", f)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (new, r.stderr)
        got = [ln for ln in r.stderr.splitlines() if words in ln]
        assert got, (new, r.stderr)
        assert got[0].startswith(f"{f}:{line}: "), (new, got[0], line)


def test_inspect_on_an_allow_rule_needs_l7(microseg, tmp_path):
    f = write(tmp_path, POLICY.replace("    action: allow\n", "    action: allow\n    inspect: {mode: async}\n", 1))
    assert microseg("policy", "check", f).returncode == 0
    v = pf.compile_file(f)[0].rules[0].verdict(1)
    assert v.action == POL["POL_INSPECT"] and not v.inspect & INSPECT["HOLD"]
    no_l7 = "groups: {a: [10.0.0.0/24]}\nrules:\n  - {from: a, to: a, action: allow, inspect: {mode: hold}}\n"
    r = microseg("policy", "check", write(tmp_path, no_l7, "p2.yaml"))
    assert r.returncode == 2 and "inspect: only with action inspect, or allow with an l7" in r.stderr


def test_explain_shows_the_lists(microseg, tmp_path):
    f = write(tmp_path, POLICY)
    out = microseg("policy", "explain", "10.0.0.5", "10.0.1.5", "tcp", "80", "--file", f, check=True).stdout
    assert "l7 allow:    http: method GET, path /public/.* (line 15)" in out
    assert "http: method POST|PUT, path /api/v[12]/.*, host *.example.com, header 'X-Token', " \
           "header 'X-Env: prod' (line 16)" in out
    assert "grpc: helloworld.Greeter/SayHello (line 18)" in out and "grpc: grpc.health.v1.Health/* (line 19)" in out
    assert "is blocked (held: it never reaches the server)" in out
    e = json.loads(microseg("policy", "explain", "10.0.0.5", "10.0.2.5", "udp", "53", "--file", f, "--json",
                            check=True).stdout)
    assert e["l7"]["mode"] == "async"
    assert [(x["allow"], x["line"]) for x in e["l7"]["dns"]] == [("example.com", 28), ("*.example.com", 28)]
    # A rule without a list: no l7 in the answer.
    e = json.loads(microseg("policy", "explain", "10.0.0.5", "10.0.1.5", "tcp", "22", "--file", f, "--json",
                            check=True).stdout)
    assert "l7" not in e


def test_diff_sees_a_changed_list(microseg, tmp_path):
    old = write(tmp_path, POLICY, "old.yaml")
    new = write(tmp_path, POLICY.replace('path: "/public/.*"', 'path: "/static/.*"'), "new.yaml")
    out = microseg("policy", "diff", new, "--against", old, check=True).stdout
    assert "~ rule web (line 7): l7 allow-list changed" in out
    assert "no changes" in microseg("policy", "diff", old, "--against", old, check=True).stdout


SITES = POLICY + """\
  - name: sites
    from: clients
    to: web
    proto: udp
    ports: [443]
    action: allow
    l7:
      tls: [www.example.com, "*.example.org"]
"""
BAD_TLS = [
    (('tls: [www.example.com,', 'tls: [www.exa mple.com,'), 36, "l7.tls[1]: 'www.exa mple.com'"),
    (("proto: udp\n    ports: [443]", "proto: icmp"), 35, "l7.tls: needs proto udp or tcp"),
    (('tls: [www.example.com, "*.example.org"]', "tls: []"), 36, "l7.tls: empty list"),
]


def test_tls_list_checked_with_file_and_line(microseg, tmp_path):
    f = write(tmp_path, SITES)
    assert microseg("policy", "check", f).returncode == 0
    model, pol, _ = pf.compile_file(f)
    assert model.rules[2].l7.protocols() == ("tls",) and model.rules[2].verdict(3).inspect & INSPECT["HOLD_ALL"]
    assert "l7 tls[2]" in pol.rule_info[3].text
    for (old, new), line, words in BAD_TLS:
        assert old in SITES, old
        f = write(tmp_path, SITES.replace(old, new, 1))
        r = microseg("policy", "check", f)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (new, r.stderr)
        got = [ln for ln in r.stderr.splitlines() if words in ln]
        assert got and got[0].startswith(f"{f}:{line}: "), (new, r.stderr, line)


def test_explain_shows_a_tls_list(microseg, tmp_path):
    f = write(tmp_path, SITES)
    out = microseg("policy", "explain", "10.0.0.5", "10.0.1.5", "udp", "443", "--file", f, check=True).stdout
    assert "l7 allow:    tls: www.example.com (line 36)" in out and "tls: *.example.org (line 36)" in out
    e = json.loads(microseg("policy", "explain", "10.0.0.5", "10.0.1.5", "udp", "443", "--file", f, "--json",
                            check=True).stdout)
    assert e["l7"]["mode"] == "hold" and [x["allow"] for x in e["l7"]["tls"]] == ["www.example.com", "*.example.org"]
