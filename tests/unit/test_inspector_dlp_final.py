"""A message's final DLP scan is skipped when it would read bytes the
prefilter already cleared (slowpath/inspector.py _DlpStream.clean): the
body's last chunk was kept whole as the tail and no detector of the
direction could match it, so scanning it again at the message's end finds
nothing. The common response body (no card, key or SSN in it) costs one
prefilter scan, not two; the hits stay those of the final scan every time."""
from __future__ import annotations


import pytest

from protocols.api import Direction
from protocols.http import HttpBody, HttpMessageEnd, HttpResponse
from slowpath.inspector import _UNUSED_STREAM, FlowInspector
from slowpath.rulesfile import load_rules
from tests.unit.test_inspector_message_end import EXAMPLE, assert_same_hits

S2C = Direction.TO_CLIENT
RESPONSE = HttpResponse(S2C, 200, "OK", "HTTP/1.1", "text/plain", (), "GET", None, False, (), 0)


@pytest.fixture(scope="module")
def rules():
    return load_rules(EXAMPLE)


class _AlwaysFinal(FlowInspector):
    """Every message end rescans its tail, as before the skip."""

    def _dlp_chunk(self, d, data, final):
        out = super()._dlp_chunk(d, data, final)
        st = self._streams[d]
        if st is not _UNUSED_STREAM:
            st.clean = False
        return out


class _Counting:
    """A prefilter that counts its scans (the real one's answers)."""

    def __init__(self, pf):
        self.pf, self.scans = pf, 0

    def candidates(self, buf):
        self.scans += 1
        return self.pf.candidates(buf)


def _count(insp: FlowInspector) -> _Counting:
    pf = _Counting(insp._dlp_prefilter[S2C])
    insp._dlp_prefilter = {**insp._dlp_prefilter, S2C: pf}
    return pf


def test_a_cleared_body_is_not_scanned_again_at_its_end(rules):
    insp = FlowInspector(rules, frozenset({"dlp"}))
    pf = _count(insp)
    body = b"<html>hello</html>\r\n"
    insp.feed(RESPONSE)
    assert insp.feed(HttpBody(S2C, body)) == []
    assert insp.feed(HttpMessageEnd(S2C, len(body), len(body))) == []
    assert pf.scans == 1
    assert insp._streams[S2C] is _UNUSED_STREAM       # as new for the next message
    # The next message's secret is still found, at its end.
    card = b"pan=4111111111111111"
    insp.feed(RESPONSE)
    assert insp.feed(HttpBody(S2C, card)) == []
    assert [h.category for h in insp.feed(HttpMessageEnd(S2C, len(card), len(card)))] == ["credit_card"]


def test_a_body_the_prefilter_may_match_or_cut_is_scanned_at_its_end(rules):
    """A card at the end (a detector may match): the final scan runs. A body
    longer than the tail: the tail is not what was scanned, the final runs."""
    for body in (b"order 4111111111111111", b"x" * 5000):
        insp = FlowInspector(rules, frozenset({"dlp"}))
        pf = _count(insp)
        insp.feed(RESPONSE)
        insp.feed(HttpBody(S2C, body))
        insp.feed(HttpMessageEnd(S2C, len(body), len(body)))
        assert pf.scans == 2, body[:20]


@pytest.mark.parametrize("what", [frozenset({"waf", "dlp", "dpi"}), frozenset({"dlp"})])
def test_same_hits_event_by_event_as_always_scanning_at_the_end(rules, what):
    assert_same_hits(rules, what, _AlwaysFinal)
