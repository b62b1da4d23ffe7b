"""FlowInspector's HTTP/1 message ends and request heads with nothing
held (no body collected for the WAF, no DLP stream scanned) return at once,
without _end_message: the same hits, event by event, as calling it.

The reference inspector below calls _end_message at every HTTP/1 message
end and before every request head, as the inspector did before the
shortcut; seeded event sequences (bodies with card numbers and attacks at
their ends, cut in chunks, requests after bodies cut short by a gap, both
directions) must give the same hits after each event, not only in total
(close() scans what is left, so a missed flush would show only there)."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from protocols.api import Direction
from protocols.http import HttpBody, HttpMessageEnd, HttpRequest, HttpResponse
from slowpath.inspector import _TO_SERVER, FlowInspector
from slowpath.rulesfile import load_rules

C2S, S2C = Direction.TO_SERVER, Direction.TO_CLIENT
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rules.yaml"
SEEDS = 120
BODIES = [b"name=bob&card=4111 1111 1111 1111", b"plain text, nothing in it", b"q=1' union select a, b from users--",
          b"ssn 123-45-6789", b"x" * 300 + b"4111111111111111", b"", b"comment=<script>alert(1)</script>",
          b"AKIAIOSFODNN7EXAMPLE"]


class _Reference(FlowInspector):
    """Every HTTP/1 message end and request head through _end_message."""

    def feed(self, ev):
        if type(ev) is HttpMessageEnd and not ev.stream_id:
            return self._end_message(ev.direction)
        return super().feed(ev)

    def _request(self, ev):
        return self._end_message(_TO_SERVER) + super()._request(ev)


@pytest.fixture(scope="module")
def rules():
    return load_rules(EXAMPLE)


def _request(method: str, ctype: str | None) -> HttpRequest:
    headers = (("Host", "app.example"),) + ((("Content-Type", ctype),) if ctype else ())
    return HttpRequest(C2S, method, "/p?id=1", "HTTP/1.1", "app.example", None, ctype, headers,
                       None, False, (), 0)


def _events(rnd: random.Random) -> list:
    evs = []
    for _ in range(rnd.randint(1, 8)):
        body = rnd.choice(BODIES)
        post = rnd.random() < 0.6
        evs.append(_request("POST" if post else "GET",
                            rnd.choice(["application/x-www-form-urlencoded", "text/plain", "image/png", None])))
        if post and body:
            cut = rnd.randint(0, len(body))
            evs += [HttpBody(C2S, p) for p in (body[:cut], body[cut:]) if p]
        if rnd.random() < 0.8:            # else the next request comes after a gap: the body cut short
            evs.append(HttpMessageEnd(C2S, len(body) if post else 0, len(body) if post else 0))
        if rnd.random() < 0.7:
            answer = rnd.choice(BODIES)
            evs.append(HttpResponse(S2C, 200, "OK", "HTTP/1.1", "text/plain", (), "GET", None, False, (), 0))
            evs += [HttpBody(S2C, p) for p in (answer[:7], answer[7:]) if p]
            if rnd.random() < 0.9:
                evs.append(HttpMessageEnd(S2C, len(answer), len(answer)))
    return evs


def _per_event(insp, evs) -> list:
    return [list(insp.feed(ev)) for ev in evs] + [insp.close()]


def assert_same_hits(rules, what, reference: type) -> None:
    """FlowInspector and ``reference`` (a FlowInspector that takes a longer
    way) give the same hits event by event on SEEDS random sequences, and
    the sequences have hits before close()."""
    hits = 0
    for seed in range(SEEDS):
        evs = _events(random.Random(seed))
        fast = _per_event(FlowInspector(rules, what), evs)
        assert fast == _per_event(reference(rules, what), evs), seed
        hits += sum(len(h) for h in fast[:-1])
    assert hits > 0


@pytest.mark.parametrize("what", [frozenset({"waf", "dlp", "dpi"}), frozenset({"waf"}), frozenset({"dlp"})])
def test_message_ends_and_requests_give_the_hits_of_end_message(rules, what):
    assert_same_hits(rules, what, _Reference)


def test_a_secret_at_a_body_end_is_the_end_event_s_hit(rules):
    """The secret ends the body, so DLP waits for more of it until the end
    event: its hit comes with that event, in either direction."""
    for d, head, body, category in (
            (C2S, _request("POST", "text/plain"), b"key=AKIAIOSFODNN7EXAMPLE", "aws_access_key"),
            (S2C, HttpResponse(S2C, 200, "OK", "HTTP/1.1", "text/plain", (), "GET", None, False, (), 0),
             b"pan=4111111111111111", "credit_card")):
        insp = FlowInspector(rules, frozenset({"dlp"}))
        assert insp.feed(head) == []
        assert insp.feed(HttpBody(d, body)) == []
        assert [h.category for h in insp.feed(HttpMessageEnd(d, len(body), len(body)))] == [category], d


def test_flows_start_on_the_shared_unused_dlp_stream_and_never_write_it(rules):
    """A flow's DLP streams start as one shared, never-written _DlpStream
    (no objects per flow that scans no body); the first chunk scanned gets
    the direction its own. Were the shared one written, a card one flow
    reported would be skipped on the next (its ``reported`` set shared)."""
    from slowpath.inspector import _UNUSED_STREAM
    resp = HttpResponse(S2C, 200, "OK", "HTTP/1.1", "text/plain", (), "GET", None, False, (), 0)
    body = b"pan=4111111111111111 and more"
    for _ in range(3):
        insp = FlowInspector(rules, frozenset({"dlp"}))
        assert all(st is _UNUSED_STREAM for st in insp._streams.values())
        insp.feed(resp)
        assert [h.category for h in insp.feed(HttpBody(S2C, body))] == ["credit_card"]
        assert insp._streams[S2C] is not _UNUSED_STREAM and insp._streams[C2S] is _UNUSED_STREAM
        insp.feed(HttpMessageEnd(S2C, len(body), len(body)))
        insp.close()
    assert (_UNUSED_STREAM.tail, _UNUSED_STREAM.base, _UNUSED_STREAM.done, _UNUSED_STREAM.reported,
            _UNUSED_STREAM.used) == (b"", 0, 0, set(), False)


def test_flow_takes_any_set_of_known_inspections_and_names_unknown_ones(rules):
    """RuleSet.flow checks ``what`` with one subset test: a set, a list or a
    frozenset of known inspections gives an inspector doing those; an
    unknown one, or an unknown anomaly action, is a clear error."""
    for what in ({"waf", "dlp"}, ["dpi"], frozenset({"waf", "dlp", "dpi"}), frozenset()):
        insp = rules.flow(what)
        assert insp.what == frozenset(what) and type(insp.what) is frozenset
    with pytest.raises(ValueError, match=r"unknown inspection \['ids', 'zz'\]: use \['dlp', 'dpi', 'waf'\]"):
        rules.flow(frozenset({"waf", "zz", "ids"}))
    with pytest.raises(ValueError, match=r"unknown inspection \['x'\]"):
        rules.flow({"x"})
    with pytest.raises(ValueError, match="http_anomaly 'drop'"):
        rules.flow({"waf"}, http_anomaly="drop")
