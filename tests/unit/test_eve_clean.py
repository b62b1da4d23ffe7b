"""slowpath.eve.encode's cleaning dispatches plain record parts on their
type first (_clean) and leaves the rest to the checks it always made
(_clean_any): the same JSON line as the cleaner before (kept here as the
reference) on seeded random records mixing everything a record may hold:
ASCII and non-ASCII strings, lone surrogates, bytes, enums, NaN and
infinities, tuples, sets, non-str and bool keys, dict subclasses, objects,
nesting past MAX_DEPTH."""
from __future__ import annotations

import collections
import enum
import json
import math
import random
from collections.abc import Mapping

from slowpath import eve


def _ref_clean_str(s: str) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _ref_clean(v, depth: int = 0):
    """slowpath/eve.py _clean as it was (one isinstance chain for everything)."""
    if v is None or isinstance(v, (bool, str)):
        return _ref_clean_str(v) if isinstance(v, str) else v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("utf-8", "backslashreplace")
    if isinstance(v, enum.Enum):
        return _ref_clean_str(v.name)
    if depth >= eve.MAX_DEPTH:
        return _ref_clean_str(repr(v)[:200])
    if isinstance(v, Mapping):
        return {_ref_clean_str(str(k)): _ref_clean(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_ref_clean(x, depth + 1) for x in v]
    try:
        return _ref_clean_str(str(v))
    except Exception:
        return "<unprintable>"


def _ref_encode(record) -> bytes:
    return json.dumps(_ref_clean(record), ensure_ascii=True, separators=(",", ":"),
                      allow_nan=False).encode("ascii") + b"\n"


class Color(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 7


class Obj:
    def __repr__(self):
        return "Obj()"


class Unprintable:
    def __str__(self):
        raise RuntimeError("no")


def _scalar(rng: random.Random):
    return rng.choice([
        lambda: "plain", lambda: "caf\u00e9 \u4e2d", lambda: "bad \udc80 surrogate", lambda: "\U0001f600",
        lambda: rng.randrange(-10**12, 10**12), lambda: True, lambda: False, lambda: None,
        lambda: rng.random(), lambda: math.nan, lambda: -math.inf, lambda: b"\xff\x00ab",
        lambda: bytearray(b"x\x80"), lambda: Color.RED, lambda: Level.HIGH, lambda: Obj(),
        lambda: Unprintable(), lambda: 2**70,
    ])()


def _value(rng: random.Random, depth: int):
    r = rng.random()
    if depth > 20 or r < 0.45:
        return _scalar(rng)
    n = rng.randrange(0, 5)
    if r < 0.75:
        keys = [rng.choice(["k", "src_ip", "h\u00e9", "\udcff", 1, 2.5, True, None, ("t", 1)]) for _ in range(n)]
        d = {k: _value(rng, depth + 1) for k in keys}
        return collections.OrderedDict(d) if rng.random() < 0.1 else d
    items = [_value(rng, depth + 1) for _ in range(n)]
    kind = rng.choice([list, list, tuple, lambda x: set(map(repr, x)), lambda x: frozenset(map(repr, x))])
    return kind(items)


def test_encode_same_as_the_reference_cleaner():
    rng = random.Random(1409)
    for i in range(3000):
        rec = {"event_type": "flow", "n": i, "body": _value(rng, 0)}
        assert eve.encode(rec) == _ref_encode(rec), rec


def test_nesting_past_max_depth_is_cut_the_same_way():
    deep: object = "leaf"
    for _ in range(eve.MAX_DEPTH + 5):
        deep = {"d": [deep]}
    assert eve.encode({"x": deep}) == _ref_encode({"x": deep})
