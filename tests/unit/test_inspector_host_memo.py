"""FlowInspector._request takes the last request's domain hits when the
request names its host by the same Host field (an origin-form target, not
CONNECT) in the same direction, without request_host. Over one flow's
requests mixing origin-form, absolute-form and CONNECT targets (whose
authority, not the Host field, names the host), methods in any case, and
Host fields that repeat or change, the hits are a fresh inspector's for
each request."""
from __future__ import annotations

import random

from protocols.api import Direction
from protocols.http import HttpRequest
from tests.unit.test_engine_fast_paths import ENGINE_RULES


def test_host_field_memo_gives_the_domain_hits_of_each_request():
    from slowpath.rulesfile import load_rules_text
    rules = load_rules_text(ENGINE_RULES, "rules.yaml")
    rnd = random.Random(1407)
    fi, host, d, blocked, memo = rules.flow(frozenset({"dpi"})), "shop.example", Direction.TO_SERVER, 0, 0
    targets = ("/p", "/", "http://evil.example/x", "http://shop.example/y", "evil.example:443", "shop.example:443",
               "*", "")
    for i in range(3000):
        r = rnd.random()
        if r < 0.2:
            host = rnd.choice(("shop.example", "evil.example", "EVIL.example:8080", "a.evil.example", None, "",
                               "u@evil.example", "[::1]:80"))
        elif r < 0.25:
            d = Direction(1 - d)
        method = rnd.choice(("GET", "GET", "GET", "POST", "CONNECT", "connect", "get"))
        target = "/p" if rnd.random() < 0.6 else rnd.choice(targets)
        ev = HttpRequest(d, method, target, "HTTP/1.1", host, None, None, (), None, False, (), 0)
        last = fi._last_host
        memo += bool(last[3] is not None and last[3] == host and last[1] == d and target[:1] == "/"
                     and method.upper() != "CONNECT")
        got = fi.feed(ev)
        assert got == rules.flow(frozenset({"dpi"})).feed(ev), (method, target, host, d)
        blocked += bool(got)
    assert 300 < blocked < 2700 and memo > 300
