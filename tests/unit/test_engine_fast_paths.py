"""The slow path's shortcuts for the common case give what the general code
gives: the plain-target shortcut of normalize.uri_and_args."""
from __future__ import annotations

import random

from slowpath import normalize

# Characters a target is drawn from: plain ones, and each one some step of
# normalisation looks at (escapes, "+", "#", NUL, backslash, dots, slashes,
# non-ASCII, control bytes, "?", "&", "=").
ALPHABET = "ab/?&=.%2e+#\\\x00\x01é~:;5A"


def _targets(n: int, seed: int):
    rnd = random.Random(seed)
    for _ in range(n):
        body = "".join(rnd.choice(ALPHABET) for _ in range(rnd.randrange(0, 24)))
        yield rnd.choice(("/", "", "http://h", "a")) + body


def test_plain_target_shortcut_matches_general_decoding():
    checked = plain = 0
    for target in _targets(20_000, 14):
        assert normalize.uri_and_args(target) == normalize._uri_and_args(target), target
        checked += 1
        plain += normalize._PLAIN_TARGET.search(target) is None and target[:1] == "/" and target.isascii()
    assert plain > 300 and checked - plain > 1000       # both ways taken often


def test_plain_target_examples():
    assert normalize.uri_and_args("/catalog/item?id=000123&sort=price") == \
        (b"/catalog/item?id=000123&sort=price", [b"000123", b"price"])
    assert normalize.uri_and_args("/p?") == (b"/p?", [])
    assert normalize.uri_and_args("/p?a&=v&b=") == (b"/p?a&=v&b=", [b"v"])
    many = "/p?" + "&".join(f"a{i}=v" for i in range(500))
    assert len(normalize.uri_and_args(many)[1]) == normalize.MAX_ARGS
    # not plain: decoded as before
    assert normalize.uri_and_args("/a//b?x=1+2") == (b"/a/b?x=1 2", [b"1 2"])
    assert normalize.uri_and_args("/a#frag") == (b"/a", [])
