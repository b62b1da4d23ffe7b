"""FlowInspector's HTTP/1 response heads and its close() with nothing held
(no request body collected for the WAF, no DLP stream scanned) return at
once, without _end_message: the same hits, event by event, as calling it.

The reference inspector calls _end_message(TO_CLIENT) at every HTTP/1
response head and both _end_message calls at close(), as before the
shortcut, on the seeded sequences of test_inspector_message_end (bodies
with secrets and attacks cut in chunks, responses and ends missing)."""
from __future__ import annotations


import pytest

from protocols.api import Direction
from protocols.http import HttpBody, HttpMessageEnd, HttpRequest, HttpResponse
from slowpath.inspector import FlowInspector
from slowpath.rulesfile import load_rules
from tests.unit.test_inspector_message_end import EXAMPLE, assert_same_hits

C2S, S2C = Direction.TO_SERVER, Direction.TO_CLIENT
RESPONSE = HttpResponse(S2C, 200, "OK", "HTTP/1.1", "text/plain", (), "GET", None, False, (), 0)
REQUEST = HttpRequest(C2S, "GET", "/", "HTTP/1.1", "app.example", None, None, (("Host", "app.example"),),
                      None, False, (), 0)


@pytest.fixture(scope="module")
def rules():
    return load_rules(EXAMPLE)


class _Reference(FlowInspector):
    """Every HTTP/1 response head and every close through _end_message."""

    def feed(self, ev):
        if type(ev) is HttpResponse and not ev.stream_id:
            return self._end_message(S2C)
        return super().feed(ev)

    def close(self):
        out = self._end_message(C2S) + self._end_message(S2C)
        for sid in list(self._parked):
            self._use(sid)
            out += self._end_message(C2S) + self._end_message(S2C)
        return out


class _Spy(FlowInspector):
    calls = 0

    def _end_message(self, d):
        type(self).calls += 1
        return super()._end_message(d)


@pytest.mark.parametrize("what", [frozenset({"waf", "dlp", "dpi"}), frozenset({"dlp"}), frozenset({"waf"})])
def test_same_hits_event_by_event_as_calling_end_message(rules, what):
    assert_same_hits(rules, what, _Reference)


def test_a_response_head_and_a_close_with_nothing_held_call_nothing(rules):
    insp = _Spy(rules, frozenset({"waf", "dlp", "dpi"}))
    _Spy.calls = 0
    body = b"<html>hello</html>"
    for ev in (REQUEST, HttpMessageEnd(C2S, 0, 0), RESPONSE, HttpBody(S2C, body),
               HttpMessageEnd(S2C, len(body), len(body))):
        assert insp.feed(ev) == []
    assert insp.close() == []
    assert _Spy.calls == 1          # the response body's end only


def test_a_response_body_cut_short_is_still_judged_at_the_next_head_and_at_close(rules):
    """No end event for a body with a card at its end: the next response
    head judges it; at close() so does the flow's end."""
    card = b"pan=4111111111111111"
    for last in (RESPONSE, None):
        insp = FlowInspector(rules, frozenset({"dlp"}))
        insp.feed(RESPONSE)
        assert insp.feed(HttpBody(S2C, card)) == []
        got = insp.feed(last) if last is not None else insp.close()
        assert [h.category for h in got] == ["credit_card"], last
