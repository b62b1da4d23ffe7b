"""FlowInspector.feed answers an event of a type it does not read (a
Redis command, a MySQL query, ...) at once: nothing scanned, no hit, no
state changed, and without its chain of isinstance tests."""
from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

from protocols.api import Direction
from protocols.redis import RedisCommand, RedisReply
from slowpath import inspector
from slowpath.rulesfile import load_rules

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rules.yaml"


def test_fed_types_are_the_types_feed_reads():
    """FED_TYPES is exactly what feed's branches test for (read from its
    source): a branch for another type without it would never run."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(inspector.FlowInspector.feed)))
    named = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            arg = node.args[1]
            named.update(e.id for e in (arg.elts if isinstance(arg, ast.Tuple) else [arg]))
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.Is) and isinstance(node.left, ast.Name) \
                and node.left.id == "t":
            named.add(node.comparators[0].id)
    assert named == {t.__name__ for t in inspector.FED_TYPES}


def test_an_event_feed_does_not_read_is_answered_without_the_type_chain(monkeypatch):
    flow = load_rules(str(EXAMPLE)).flow({"waf", "dlp", "dpi"})
    tests = []
    monkeypatch.setattr(inspector, "isinstance", lambda o, t: (tests.append(t), isinstance(o, t))[1], raising=False)
    for ev in (RedisCommand("GET", ("card 4111 1111 1111 1111",), 2),
               RedisReply("bulk", "4111 1111 1111 1111", 19)):
        assert flow.feed(ev) == []
    assert tests == []
    assert flow.close() == []
