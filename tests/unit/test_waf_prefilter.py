"""The request prefilter (slowpath/waf.py compile_prefilter, RuleSet.request_clean)
gives the hits scanning each field alone gives: seeded requests (attacks,
percent/double/%u/overlong/plus encodings, anchored custom signatures, long
and many values, newlines inside values) through a rule set with the
prefilter and the same rules without it."""
from __future__ import annotations

import random

from protocols.api import Direction
from protocols.http import HttpMessageEnd, HttpRequest
from slowpath.rulesfile import load_rules_text
from slowpath.waf import compile_prefilter

# Built-in sets plus custom signatures whose meaning depends on where a
# field starts and ends (^, $, \b) or that read only "args" or only "uri".
RULES = r"""
waf:
  sets: {sqli: block, xss: block, traversal: block, cmdi: alert}
  signatures:
    - {id: 900001, name: admin path, pattern: "^/admin(?:/|$)", fields: [uri], action: block}
    - {id: 900002, name: php object, pattern: '^[oc]:\d+:"', fields: [args, body], action: block}
    - {id: 900003, name: value ends in exe, pattern: '\.exe$', fields: [args], action: alert}
    - {id: 900004, name: whole value, pattern: '^root$', fields: [args], action: alert}
    - {id: 900005, name: word, pattern: '\bdebug\b', fields: [uri, args], action: alert}
    - {id: 900006, name: not a word start, pattern: '\Bzz', fields: [args], action: alert}
    - {id: 900007, name: two lines, pattern: 'a\nb', fields: [args], action: alert}
"""

# Pieces a target's path and values are made of: plain text, attacks,
# each encoding the normaliser undoes, anchors' favourite values, separators.
PIECES = ["a", "id", "cat", "root", "debug", "zz", "xzz", "o:8:\"", "O:1:\"x", "c:2:\"", "run.exe", "exe",
          "admin", "/admin", "/admin/", "..", "../", "/etc/passwd", "%2e%2e%2f", "%252e%252e%252f",
          "%c0%af", "%u002e", "%uff1c", "<script>", "%3Cscript%3E", "' or 1=1--", "'+OR+'a'%3D'a",
          "union select", "union/**/select", ";ls", "|id", "$(id)", "%0a", "%0aid", "\n", "a%0Ab", "+",
          "%00", "\\", "//", "/./", "#", "é", "%e9", "sleep(5)", "onerror=", "javascript:alert(1)",
          "1", "000123", "price", "x" * 300, "&", "=", "?"]


def _target(rnd: random.Random) -> str:
    path = "/" + "".join(rnd.choice(PIECES) for _ in range(rnd.randrange(0, 4)))
    if rnd.random() < 0.1:
        path = rnd.choice(("http://h.example", "a", "")) + path
    if rnd.random() < 0.2:
        return path
    params = []
    for _ in range(rnd.randrange(0, 6 if rnd.random() < 0.95 else 80)):
        value = "".join(rnd.choice(PIECES) for _ in range(rnd.randrange(0, 3)))
        params.append(rnd.choice(("id", "q", "x", "")) + rnd.choice(("=", "=", "")) + value)
    return path + "?" + "&".join(params)


def _request(target: str) -> HttpRequest:
    return HttpRequest(Direction.TO_SERVER, "GET", target, "HTTP/1.1", "shop.example", None, None,
                       (("Host", "shop.example"), ("User-Agent", "bench")), None, False, (), 0)


def _hits(rules, targets) -> list:
    insp = rules.flow({"waf"})
    end = HttpMessageEnd(Direction.TO_SERVER, 0, 0)
    out = []
    for t in targets:
        out.append(insp.feed(_request(t)) + insp.feed(end))
    return out


def test_prefilter_gives_the_hits_of_each_field_alone():
    new, old = load_rules_text(RULES), load_rules_text(RULES)
    assert new._pre is not None
    old._pre = None                      # every field scanned alone, as before the prefilter
    rnd = random.Random(1407)
    targets = [_target(rnd) for _ in range(6000)]
    targets += ["/catalog/item?id=%06d&sort=price" % i for i in range(500)]
    got, want = _hits(new, targets), _hits(old, targets)
    for t, g, w in zip(targets, got, want):
        assert g == w, t
    hit = sum(1 for w in want if w)
    ids = {h.rule_id for w in want for h in w}
    # Both ways taken often, and the anchored custom signatures among the hits.
    assert 1000 < hit < len(targets) - 1000, hit
    assert {900001, 900002, 900003, 900004, 900005, 900006} <= ids, sorted(ids)
    # Clean requests were answered by one prefilter scan each: the per-field
    # cache saw none of the benchmark's changing values.
    assert not any(k[1].startswith(b"/catalog/item?id=") for k in new._scan_cache)


def test_prefilter_left_out_when_a_pattern_anchors_to_the_buffer():
    for p in (rb"\Aadmin", rb"admin\z", rb"admin\Z", rb"(?-m)^admin", rb"(?i-m)^admin", rb"(?^)^admin"):
        assert compile_prefilter((rb"union", p)) is None, p
    assert compile_prefilter((rb"union", rb"^admin$")) is not None
    rules = load_rules_text("waf:\n  signatures:\n"
                            "    - {id: 900010, name: a, pattern: '\\A/admin', fields: [uri]}\n"
                            "    - {id: 900011, name: b, pattern: '\\Ao:\\d', fields: [args]}\n")
    assert rules._pre is None
    insp = rules.flow({"waf"})
    assert [h.rule_id for h in insp.feed(_request("/admin"))] == [900010]
    assert insp.feed(_request("/x?q=admin")) == []
    # \A of a value that is not the joined buffer's first: found alone only
    assert [h.rule_id for h in insp.feed(_request("/x?a=1&b=o:8"))] == [900011]


def test_engine_with_prefilter_gives_the_same_eve_verdicts_and_resets(monkeypatch):
    """Seeded HTTP flows (attacks and blocked hosts mid-stream, hold and
    async, retransmissions, reordering) through the whole engine with the
    prefilter and without: the same EVE, verdicts, resets and counters."""
    import slowpath.rulesfile
    from tests.unit.test_engine_fast_paths import _http_flow_records, _run_engine
    load = slowpath.rulesfile.load_rules_text
    made = []

    def without_prefilter(*a, **kw):
        rules = load(*a, **kw)
        made.append(rules._pre)
        rules._pre = None
        return rules

    rnd = random.Random(1408)
    flows = blocked = 0
    for case in range(60):
        recs = []
        for f in range(rnd.randrange(1, 4)):
            recs += _http_flow_records(rnd, bytes([f]) * 40)
            flows += 1
        with_pre = _run_engine(recs, True)
        monkeypatch.setattr(slowpath.rulesfile, "load_rules_text", without_prefilter)
        alone = _run_engine(recs, True)
        monkeypatch.setattr(slowpath.rulesfile, "load_rules_text", load)
        assert with_pre == alone, case
        blocked += alone[3][2].get("VERDICT_BLOCK", 0)
    assert all(p is not None for p in made) and made
    assert 0.2 < blocked / flows < 0.9     # blocked flows (mid-stream) and clean ones both taken often
