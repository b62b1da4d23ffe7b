"""The L7 allow-list matcher (slowpath/l7allow.py) on parser events:
method/path regexes (whole value), path normalisation, hosts and DNS names
with Cilium's matchPattern `*`, headers, gRPC service/method from an HTTP
request, other protocols. The engine's use of it: tests/unit/test_engine_l7.py."""
from __future__ import annotations

import types

import pytest

from protocols.api import Direction
from protocols.http import HttpRequest
from slowpath.l7allow import (L7_IDS, L7Policy, RuleAllow, grpc_call, is_grpc, normalise_target,
                              spec_of)

TO_SERVER = Direction.TO_SERVER


def req(method="GET", uri="/", host="www.example.com", headers=(), content_type=None) -> HttpRequest:
    fields = (("Host", host),) if host else ()
    if content_type:
        fields += (("Content-Type", content_type),)
    return HttpRequest(direction=TO_SERVER, method=method, uri=uri, version="HTTP/1.1", host=host,
                       user_agent=None, content_type=content_type, headers=fields + tuple(headers),
                       content_length=None, chunked=False, anomalies=(), offset=0)


def query(*names, response=False):
    return types.SimpleNamespace(kind="dns_message", direction=TO_SERVER, response=response,
                                 questions=[types.SimpleNamespace(name=n) for n in names])


WEB = {"http": [{"method": "GET", "path": "/public/.*"},
                {"method": "POST|PUT", "path": "/api/v[12]/.*", "host": "*.example.com",
                 "headers": ["X-Token", "X-Env: prod"]},
                {"path": "/health"}]}


def allowed(rule: RuleAllow, ev) -> bool:
    return rule.check_request(ev) is None


def test_method_and_path_match_the_whole_value():
    r = RuleAllow(1, "web", WEB)
    assert allowed(r, req("GET", "/public/a.css"))
    assert not allowed(r, req("GET", "/admin"))
    assert not allowed(r, req("GETX", "/public/a"))          # method: the whole value
    assert not allowed(r, req("get", "/public/a"))           # methods are case-sensitive (as Cilium)
    assert not allowed(r, req("GET", "/x/public/a"))         # path: anchored at the start
    assert allowed(r, req("DELETE", "/health"))              # no method: any method
    assert not allowed(r, req("GET", "/health?x=1"))         # the query is part of the target, as Cilium
    assert not allowed(r, req("GET", "/healthz"))            # anchored at the end
    assert r.check_request(req("GET", "/admin")) == ("l7.http", "GET /admin not allowed")


@pytest.mark.parametrize("target,norm", [
    ("/public/../admin", "/admin"), ("/public/%2e%2e/admin", "/admin"), ("//public///a", "/public/a"),
    ("/a/./b/", "/a/b/"), ("/../../etc/passwd", "/etc/passwd"), ("/p?q=/../x", "/p?q=/../x"),
    ("http://h.example/public/a?x", "/public/a?x"), ("http://h.example", "/"), ("*", "*"),
    ("/%70ublic/a", "/public/a"),
])
def test_normalise_target(target, norm):
    assert normalise_target(target) == norm


def test_traversal_out_of_an_allowed_prefix_is_not_allowed():
    r = RuleAllow(1, "web", WEB)
    assert not allowed(r, req("GET", "/public/../admin"))
    assert not allowed(r, req("GET", "/public/%2e%2e/admin"))
    assert allowed(r, req("GET", "/public/x/../y"))


def test_host_pattern_and_headers():
    r = RuleAllow(1, "web", WEB)
    ok = (("X-Token", "t"), ("X-Env", "prod"))
    assert allowed(r, req("POST", "/api/v1/items", "shop.example.com", ok))
    assert allowed(r, req("PUT", "/api/v2/items", "Shop.Example.COM:8080", ok))   # case, port dropped
    assert not allowed(r, req("POST", "/api/v1/items", "example.com", ok))         # `*.` needs a label
    assert not allowed(r, req("POST", "/api/v1/items", "a.b.example.com", ok))     # one label only
    assert not allowed(r, req("POST", "/api/v1/items", "shop.example.com", ok[:1]))   # X-Env missing
    assert not allowed(r, req("POST", "/api/v1/items", "shop.example.com", (("X-Token", "t"), ("X-Env", "dev"))))
    assert allowed(r, req("POST", "/api/v1/items", "shop.example.com", (("x-token", ""), ("x-env", "prod"))))


@pytest.mark.parametrize("pattern,name,ok", [
    ("example.com", "example.com", True), ("example.com", "EXAMPLE.com.", True),
    ("example.com", "www.example.com", False), ("*.example.com", "www.example.com", True),
    ("*.example.com", "example.com", False), ("*.example.com", "a.b.example.com", False),
    ("*.example.com", "wwwexample.com", False), ("api-*.example.com", "api-eu.example.com", True),
    ("api-*.example.com", "web.example.com", False), ("*", "anything.at.all", True),
    ("example.com", "exampleXcom", False),
])
def test_dns_names_follow_matchpattern(pattern, name, ok):
    r = RuleAllow(2, "resolver", {"dns": [pattern]})
    assert (r.check_query(query(name)) is None) is ok


def test_dns_every_question_must_be_allowed():
    r = RuleAllow(2, "resolver", {"dns": ["example.com", "*.example.com"]})
    assert r.check_query(query("example.com", "www.example.com")) is None
    assert r.check_query(query("example.com", "evil.test")) == ("l7.dns", "DNS query evil.test not allowed")
    assert r.check_query(query())[0] == "l7.dns"


def test_grpc_derived_from_the_http_request():
    assert is_grpc("application/grpc") and is_grpc("application/grpc+proto") and not is_grpc("application/json")
    assert grpc_call("/helloworld.Greeter/SayHello") == ("helloworld.Greeter", "SayHello")
    assert grpc_call("/a/b/c") is None and grpc_call("/nomethod") is None
    r = RuleAllow(1, "grpc", {"grpc": [{"service": "helloworld.Greeter", "method": "SayHello"},
                                       {"service": "grpc.health.v1.Health"}]})
    g = "application/grpc"
    assert allowed(r, req("POST", "/helloworld.Greeter/SayHello", content_type=g))
    assert allowed(r, req("POST", "/grpc.health.v1.Health/Watch", content_type="application/grpc+proto"))
    assert r.check_request(req("POST", "/helloworld.Greeter/Delete", content_type=g)) == \
        ("l7.grpc", "gRPC helloworld.Greeter/Delete not allowed")
    # The same path without a gRPC content-type is a plain HTTP request, which a gRPC-only list refuses.
    assert r.check_request(req("POST", "/helloworld.Greeter/SayHello"))[0] == "l7.protocol"
    # An http entry may allow a gRPC call too (it is an HTTP request).
    both = RuleAllow(1, "both", {"grpc": [{"service": "a.B", "method": "C"}], "http": [{"path": "/x.Y/.*"}]})
    assert allowed(both, req("POST", "/x.Y/Z", content_type=g))
    assert not allowed(both, req("POST", "/a.B/D", content_type=g))


def test_inspector_blocks_once_with_a_named_hit_and_keeps_inner_hits():
    class Inner:
        what = frozenset({"dpi"})

        def feed(self, ev):
            return ["inner"]

        def close(self):
            return ["closed"]

    insp = RuleAllow(3, "web", WEB).inspector(Inner())
    assert insp.what == frozenset({"dpi"}) and insp.close() == ["closed"]
    assert insp.feed(req("GET", "/public/a")) == ["inner"]
    out = insp.feed(req("GET", "/admin"))
    hit = out[1]
    assert out[0] == "inner" and hit.action == "block" and hit.rule_id == L7_IDS["l7.http"]
    assert hit.rule_name == "l7 allow-list of rule web: GET /admin not allowed"
    assert hit.field == "l7.http" and hit.matched == "GET /admin" and hit.category == "l7-policy"
    # a protocol the list does not name
    tls = types.SimpleNamespace(kind="tls_client_hello", direction=TO_SERVER)
    h = RuleAllow(3, "web", WEB).inspector(Inner()).feed(tls)[1]
    assert h.field == "l7.protocol" and h.rule_name == "l7 allow-list of rule web: tls not allowed (the list names http)"
    # DNS answers are not checked; a query is
    dns = RuleAllow(4, "4", {"dns": ["example.com"]}).inspector(Inner())
    assert dns.feed(query("evil.test", response=True)) == ["inner"]
    assert dns.feed(query("evil.test"))[1].rule_name == "l7 allow-list of rule 4: DNS query evil.test not allowed"


def test_policy_from_the_model_and_through_json(tmp_path):
    import json

    from appliance import policyfile as pf
    f = tmp_path / "p.yaml"
    f.write_text("groups: {a: [10.0.0.0/24]}\nrules:\n  - {from: a, to: a, proto: tcp, ports: [80], action: deny}\n"
                 "  - {name: web, from: a, to: a, proto: tcp, ports: [81], action: allow, "
                 "l7: {http: [{path: /ok}]}}\n")
    model, _, _ = pf.compile_file(f)
    spec = spec_of(model)
    assert list(spec) == ["2"] and spec["2"]["label"] == "web"
    pol = L7Policy.from_spec(json.loads(json.dumps(spec)))
    assert pol.get(1) is None and pol.get(2).label == "web"
    assert allowed(pol.get(2), req("GET", "/ok")) and not allowed(pol.get(2), req("GET", "/no"))


def hello(kind: str, sni: str | None):
    return types.SimpleNamespace(kind=kind, direction=TO_SERVER, sni=sni)


@pytest.mark.parametrize("kind,proto", [("tls_client_hello", "TLS"), ("quic_client_hello", "QUIC")])
def test_tls_server_names_of_tls_and_quic_hellos(kind, proto):
    r = RuleAllow(5, "sites", {"tls": ["example.com", "*.example.org"]})
    assert r.protocols == ("tls",)
    assert r.check_server_name(hello(kind, "example.com")) is None
    assert r.check_server_name(hello(kind, "EXAMPLE.com.")) is None          # case, trailing dot
    assert r.check_server_name(hello(kind, "a.example.org")) is None
    assert r.check_server_name(hello(kind, "a.b.example.org")) == (
        "l7.tls", f"{proto} server name a.b.example.org not allowed")
    assert r.check_server_name(hello(kind, "example.org")) is not None       # `*.` needs a label
    assert r.check_server_name(hello(kind, "evil.test")) == ("l7.tls", f"{proto} server name evil.test not allowed")
    assert r.check_server_name(hello(kind, None)) == (
        "l7.tls", f"{proto} ClientHello without a server name not allowed")


def test_inspector_with_a_tls_list_checks_each_hello_and_lets_the_rest_of_tls_and_quic_by():
    class Inner:
        def feed(self, ev):
            return []

    insp = RuleAllow(6, "sites", {"tls": ["example.com"]}).inspector(Inner())
    assert insp.feed(hello("quic_client_hello", "example.com")) == []
    for kind in ("quic_server_hello", "quic_retry", "tls_server_hello", "tls_alert", "quic_connection_close"):
        assert insp.feed(types.SimpleNamespace(kind=kind, direction=Direction.TO_CLIENT)) == [], kind
    (hit,) = insp.feed(hello("quic_client_hello", "evil.test"))     # a second hello (after a Retry) is checked too
    assert hit.rule_id == L7_IDS["l7.tls"] and hit.field == "l7.tls" and hit.matched == "evil.test"
    assert hit.rule_name == "l7 allow-list of rule sites: QUIC server name evil.test not allowed"
    # A tls list allows no HTTP, DNS or SSLv2 hello (no name): another protocol.
    for ev in (req("GET", "/"), query("example.com"), types.SimpleNamespace(kind="ssl2_client_hello",
                                                                           direction=TO_SERVER)):
        (hit,) = RuleAllow(6, "sites", {"tls": ["example.com"]}).inspector(Inner()).feed(ev)
        assert hit.field == "l7.protocol" and hit.rule_name.endswith("not allowed (the list names tls)")
    # Without a tls list, a hello stays a protocol the list does not name.
    (hit,) = RuleAllow(7, "web", WEB).inspector(Inner()).feed(hello("quic_client_hello", "example.com"))
    assert hit.field == "l7.protocol"
    assert hit.rule_name == "l7 allow-list of rule web: quic not allowed (the list names http)"
