"""A flow whose protocol's events nothing reads is let go (ALLOW: the kernel
bypasses it) once identified, as Suricata bypasses a flow no rule can match
any more (Engine._unread_release): a Redis flow under an inspect-everything
policy. Not when something reads its kinds (a rule, after a reload too), when
parser_error is set explicitly, or when the protocol can switch to another
one (MySQL's SSLRequest, PostgreSQL's, SMTP's STARTTLS: TLS follows).
Records are built here (no kernel), as in test_engine.py."""
from __future__ import annotations

import dataclasses
import importlib
from typing import ClassVar

import pytest

from datapath.config import FailureActions
from datapath.enums import VerdictCode as V
from protocols import registry
from protocols.api import CERTAIN, NO_MATCH, Event, Parser, ProtocolPlugin, event_kinds
from protocols.http import HttpBody
from slowpath.rulesfile import load_rules_text
from tests.unit.test_db_tls_engine import SESSIONS
from tests.unit.test_engine import DLP, DPI, WAF, Harness, rec
from tests.unit.test_engine_fast_paths import kinds_tested

EVERYTHING = WAF | DLP | DPI
REDIS = ("10.0.1.5", 6379)
CMD = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
REPLY = b"$5\r\nhello\r\n"


def test_redis_flow_under_inspect_everything_is_released_at_identification():
    h = Harness()
    h.engine.handle(rec(CMD, inspect=EVERYTHING, server=REDIS))
    assert h.codes() == [V.VERDICT_ALLOW]
    # What comes after (in flight when the verdict was written) is not read.
    h.engine.handle(rec(REPLY, side=1, inspect=EVERYTHING, server=REDIS))
    h.engine.handle(rec(CMD, seq=1001 + len(CMD), inspect=EVERYTHING, server=REDIS))
    assert h.engine.counters.after_verdict == 2
    h.engine.close_all("shutdown")
    (flow,) = [r for r in h.eve if r["event_type"] == "flow"]
    assert flow["app_proto"] == "redis" and {"inspection_verdict": "allow"} in flow["metadata"]["flowvars"]
    h.kinds()                                                    # every record fits the EVE schema


def test_an_explicit_parser_error_action_keeps_the_flow_inspected():
    h = Harness(failure_actions=FailureActions(parser_error="drop"))
    h.engine.handle(rec(CMD, inspect=EVERYTHING, server=REDIS))
    assert h.codes() == []
    h.engine.handle(rec(b"*x\r\n", seq=1001 + len(CMD), inspect=EVERYTHING, server=REDIS))
    assert h.codes() == [V.VERDICT_BLOCK]                        # the malformed stream is seen


def _switching_sessions():
    yield "mysql", SESSIONS["mysql"][0], SESSIONS["mysql"][1][:1]           # the server's greeting
    yield "postgresql", SESSIONS["postgresql"][0], SESSIONS["postgresql"][1][:1]   # the SSLRequest
    yield "smtp", ("10.0.1.5", 25), [(1, b"220 mx.example.org ESMTP\r\n"), (0, b"EHLO c\r\n")]


@pytest.mark.parametrize("name,server,steps", list(_switching_sessions()), ids=lambda v: v if isinstance(v, str) else "")
def test_a_protocol_that_can_switch_to_tls_is_not_released(name, server, steps):
    assert registry.by_name()[name].switches
    h = Harness("{}\n")              # no rule at all: only the switch keeps it read
    seq = {0: 1001, 1: 5001}
    for side, data in steps:
        h.engine.handle(rec(data, side, seq[side], inspect=EVERYTHING, server=server))
        seq[side] += len(data)
    flow, = h.engine.flows.values()
    assert flow.analyzer.app == name and flow.analyzer.identified
    assert V.VERDICT_ALLOW not in h.codes()


# A plugin whose parser hands its payload over as HttpBody events (as a
# protocol carrying documents might): DLP rules read them.
@dataclasses.dataclass(frozen=True)
class _Hello(Event):
    kind: ClassVar[str] = "blob_hello"


class _BlobParser(Parser):
    def receive_data(self, data, direction):
        return [_Hello(), HttpBody(direction, data)]


BLOB = ProtocolPlugin(name="blob", probe=lambda data, d: CERTAIN if data.startswith(b"BLOB") else NO_MATCH,
                      parser_factory=lambda transport: _BlobParser(),
                      event_kinds=event_kinds(_Hello, HttpBody))
DLP_RULE = "dlp:\n  - name: cards\n    detectors: [credit_card]\n"


def test_a_reload_that_adds_a_rule_reading_the_kinds_stops_further_releases():
    h = Harness("{}\n", plugins=[*registry.default_plugins(), BLOB])
    h.engine.handle(rec(b"BLOB one", inspect=DLP, key=b"a" * 40))
    assert h.codes(b"a" * 40) == [V.VERDICT_ALLOW]               # no DLP rule: nothing reads http_body
    h.engine.rules = load_rules_text(DLP_RULE, "rules.yaml")     # what a reload does (appliance/workers.py)
    h.engine.handle(rec(b"BLOB two", inspect=DLP, key=b"b" * 40))
    assert h.codes(b"b" * 40) == []                              # read on
    h.engine.handle(rec(b" 4111 1111 1111 1111 ok", seq=1001 + 8, inspect=DLP, key=b"b" * 40))
    assert h.codes(b"b" * 40) == [V.VERDICT_BLOCK]               # and the rule sees the card


def test_a_plugin_that_declares_no_kinds_is_never_released():
    plain = dataclasses.replace(BLOB, event_kinds=None)
    h = Harness("{}\n", plugins=[*registry.default_plugins(), plain])
    h.engine.handle(rec(b"BLOB one", inspect=DLP))
    assert h.codes() == []


def test_each_builtin_declares_the_kinds_of_the_events_its_module_defines():
    """One definition: an event class added to a parser's module without its
    kind in the plugin's event_kinds would let a flow go unread."""
    for name in registry.BUILTIN_MODULES:
        mod = importlib.import_module(name)
        defined = {c.kind for c in vars(mod).values()
                   if isinstance(c, type) and issubclass(c, Event) and c.__module__ == name and "kind" in vars(c)}
        assert defined <= mod.PLUGIN.event_kinds, (name, defined - mod.PLUGIN.event_kinds)


def test_verdict_kinds_are_the_kinds_inspect_decides_on():
    """engine._VERDICT_KINDS are the kinds Engine._inspect's branches test
    for, read from its source, less http_request (written to EVE, so never
    unread) and malformed (the parser_error rule): a branch added for another
    kind without it would let a flow of that protocol go before its verdict."""
    from slowpath import engine
    kinds, _ = kinds_tested(engine.Engine._inspect)
    assert kinds - {"http_request", "malformed"} == engine._VERDICT_KINDS
    assert "http_request" in engine._LOG_KINDS
