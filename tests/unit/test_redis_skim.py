"""The Redis parser's fast walk through a reply's aggregates (RedisParser._skim)
gives exactly the events of the general line path, wherever the stream is
split, and takes a big nested reply (like COMMAND's ~90 KB) with a regex
match per element instead of the general path's line handling."""
from __future__ import annotations

import random

import pytest

from protocols import redis
from protocols.api import Direction

S = Direction.TO_CLIENT


def command_reply(n: int) -> bytes:
    """The shape of a COMMAND reply: an array of per-command arrays with
    nested flag arrays, integers, bulk strings and an empty array."""
    out = b"*%d\r\n" % n
    for i in range(n):
        name = b"cmd%d" % i
        out += (b"*7\r\n$%d\r\n%s\r\n:%d\r\n*2\r\n+write\r\n+denyoom\r\n:1\r\n:-1\r\n:1\r\n*0\r\n"
                % (len(name), name, -3 if i % 2 else 2))
    return out


MIXED = (b"+OK\r\n" + command_reply(50)
         + b"%2\r\n+a\r\n*2\r\n$3\r\nx\r\n\r\n,2.5\r\n+b\r\n_\r\n"      # bulk holding CR LF, a double, a null
         + b"*3\r\n$-1\r\n*-1\r\n#f\r\n"                                # null bulk / array inside
         + b"~2\r\n(123\r\n|1\r\n+k\r\n+v\r\n:5\r\n"                    # an attribute inside a set
         + b">2\r\n-ERR x\r\n$0\r\n\r\n" + b":7\r\n")
# The token path's edges (RedisParser._skim lists runs of whole elements with
# one findall): bulk strings at and past MAX_TOKEN_BULK, holding CR LF or a
# bare LF, empty; replies back to back (the first ends inside a run); a map,
# an attribute closing an aggregate, a long bulk between short ones, a map
# (two elements a pair), a set and a push inside an array.
T = redis.MAX_TOKEN_BULK
TOKENS = (b"*6\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\n\r\n\r\n$1\r\n\n\r\n$0\r\n\r\n"
          b"$200\r\n%s\r\n" % (T, b"a" * T, T + 1, b"b" * (T + 1), b"x\r\n" * 66 + b"yy")
          + b"*2\r\n:1\r\n:2\r\n*1\r\n+x\r\n%1\r\n+k\r\n*0\r\n"
          + b"*2\r\n:1\r\n|1\r\n+a\r\n+b\r\n*1\r\n*1\r\n*1\r\n:9\r\n:3\r\n"
          + b"*3\r\n%2\r\n+a\r\n:1\r\n+b\r\n*0\r\n~1\r\n+c\r\n>1\r\n#t\r\n")
BAD = [b"*2\r\n:1\r\n:1x\r\n", b"*1\r\n+no-cr\n", b"*1\r\n$3\r\nabcd\r\n", b"*1\r\n" * 40 + b":1\r\n",
       b"*1\r\n*%d\r\n" % (redis.MAX_ELEMENTS + 1), b"*1\r\n$%d\r\n" % (redis.MAX_BULK_BYTES + 1),
       b"*2\r\n,x\r\n:1\r\n", b"*2\r\n$5\r\nab\r\n:1\r\n\r\n", b"*2\r\n$1\r\nab\r\n:1\r\n"]


def feed(chunks, skim=True, monkeypatch=None):
    p = redis.RedisParser()
    if not skim:
        p._skim = lambda side, buf, pos, events: pos       # the general path only
    out = []
    for c in chunks:
        out += p.receive_data(c, S)
    return out


@pytest.mark.parametrize("data", [MIXED, TOKENS, *BAD])
def test_skim_equals_the_general_path_at_any_split(data):
    want = feed([data], skim=False)
    assert feed([data]) == want
    rnd = random.Random(len(data))
    for _ in range(30):
        cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(1, 12))))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        assert feed(parts) == want, cuts
    assert feed([data[i:i + 1] for i in range(len(data))]) == want


def test_big_reply_skips_the_line_path(monkeypatch):
    data = command_reply(2000)                                  # ~90 KB, ~26,000 elements
    assert len(data) > 80_000
    lines = []
    real = redis.RedisParser._line
    monkeypatch.setattr(redis.RedisParser, "_line",
                        lambda self, *a: (lines.append(1), real(self, *a))[1])
    ev = feed([data[i:i + 1448] for i in range(0, len(data), 1448)])
    assert [(e.type, e.size) for e in ev] == [("array", 2000)]
    # Only the top-level header and the elements cut by a segment boundary
    # take the general path (before: one call per element, ~26,000).
    assert len(lines) <= 1 + 2 * (len(data) // 1448 + 1)


def single_matches(monkeypatch) -> list[int]:
    """The positions the parser matches one element at a time at
    (redis._ELEMENT.match), recorded from now on."""
    seen: list[int] = []

    class Counting:
        def match(self, buf, pos, real=redis._ELEMENT.match):
            seen.append(pos)
            return real(buf, pos)

    monkeypatch.setattr(redis, "_ELEMENT", Counting())
    return seen


def test_big_reply_takes_runs_of_elements_not_one_at_a_time(monkeypatch):
    """Short elements are listed a run at a time (one findall), so a regex
    match per element is left for the first SINGLE_ELEMENTS of a _skim call
    and bulk strings over MAX_TOKEN_BULK (before: ~26,000 matches for this
    reply, one an element)."""
    data = command_reply(2000)
    one_at_a_time = single_matches(monkeypatch)
    ev = feed([data[i:i + 1448] for i in range(0, len(data), 1448)])
    assert [(e.type, e.size) for e in ev] == [("array", 2000)]
    # A call a segment: its first elements, and one try where its last run
    # stops at a cut element.
    assert len(one_at_a_time) <= (redis.SINGLE_ELEMENTS + 2) * (len(data) // 1448 + 1)


def run_bytes(buf, pos, endpos, tokens) -> int:
    """The bytes of a _RUN findall's tokens: its span, less its last match
    when that is the span's rest (taken by `.+` without being looked at:
    neither a scalar, listed as b"", nor an aggregate's header)."""
    end = min(endpos, len(buf))
    if tokens and tokens[-1] and not redis._HEAD.fullmatch(tokens[-1]):
        end -= len(tokens[-1])
    return end - pos


@pytest.mark.parametrize("elements", [1, 3, redis.SINGLE_ELEMENTS + 1, 40])
def test_pipelined_replies_are_not_scanned_past_again_and_again(monkeypatch, elements):
    """A run is matched to its end, not to the reply's: unbounded, each of
    many small pipelined replies would scan all those behind it (quadratic:
    ~11 s for 64 KB of them). Bounded (FIRST_RUN_BYTES, doubled per run, and
    none for the first SINGLE_ELEMENTS of a reply), the bytes runs scan stay
    within a few times the data."""
    reply = b"*%d\r\n" % elements + b":1\r\n" * elements
    data = reply * (60_000 // len(reply))
    scanned = []

    class Counting:
        def findall(self, buf, pos, endpos, real=redis._RUN.findall):
            tokens = real(buf, pos, endpos)
            scanned.append(run_bytes(buf, pos, endpos, tokens))
            return tokens

        match = redis._RUN.match      # the taken tokens of a run found again

    monkeypatch.setattr(redis, "_RUN", Counting())
    ev = feed([data])
    assert [(e.type, e.size) for e in ev] == [("array", elements)] * (len(data) // len(reply))
    assert sum(scanned) <= 3 * len(data)


def test_a_run_is_matched_once(monkeypatch):
    """Each element of a big reply is matched by a regex once: a run is
    listed by one findall (_RUN), not matched to its end and then listed
    again over the same bytes (before: ~2x the reply's bytes went through
    the regex engine, ~1.5x the time). Every compiled pattern of the module
    is counted, whatever it is called."""
    import re
    data = command_reply(2000)
    matched = []

    class Counting:
        def __init__(self, real):
            self.real = real

        def match(self, buf, pos=0, endpos=None):
            m = self.real.match(buf, pos) if endpos is None else self.real.match(buf, pos, endpos)
            matched.append(0 if m is None else m.end() - m.start())
            return m

        def findall(self, buf, pos=0, endpos=None):
            out = self.real.findall(buf, pos) if endpos is None else self.real.findall(buf, pos, endpos)
            matched.append(run_bytes(buf, pos, len(buf) if endpos is None else endpos, out))
            return out

        def __getattr__(self, name):
            return getattr(self.real, name)

    for name, value in vars(redis).copy().items():
        if isinstance(value, re.Pattern) and name != "_INT":
            monkeypatch.setattr(redis, name, Counting(value))
    ev = feed([data[i:i + 1448] for i in range(0, len(data), 1448)])
    assert [(e.type, e.size) for e in ev] == [("array", 2000)]
    assert sum(matched) <= 1.1 * len(data), (sum(matched), len(data))


F = redis.MAX_FAST_ELEMENTS
# Whole commands and top-level bulk replies (RedisParser._command,
# _bulk_reply) at their edges: arguments past MAX_ARGS_KEPT, a bulk holding
# CR LF, empty and past MAX_SUMMARY_BYTES, leading zeros, MAX_FAST_ELEMENTS
# and one more, an empty and a null array, an inline command between, and
# what the general path must judge (a bulk longer than said, a non-bulk
# element, a length of 11 digits).
COMMANDS = (b"*2\r\n$3\r\nGET\r\n$14\r\n:1:factorial_3\r\n"
            + b"*7\r\n$3\r\nset\r\n$1\r\nk\r\n$3\r\na\r\nb\r\n$0\r\n\r\n$300\r\n%s\r\n$2\r\nPX\r\n$05\r\n60000\r\n"
            % (b"v" * 300)
            + b"*%d\r\n" % F + b"$1\r\nx\r\n" * F + b"*%d\r\n" % (F + 1) + b"$1\r\ny\r\n" * (F + 1)
            + b"*0\r\n*-1\r\nPING\r\n*1\r\n$4\r\nPING\r\n")
COMMANDS_BAD = [b"*1\r\n$3\r\nabcd\r\n*1\r\n$1\r\nx\r\n", b"*2\r\n$3\r\nGET\r\n:1\r\n",
                b"*1\r\n$12345678901\r\n", b"*1\r\n$-1\r\n*1\r\n$1\r\nx\r\n"]
REPLIES = (b"$1\r\n6\r\n$-1\r\n+OK\r\n$0\r\n\r\n$4\r\na\r\nb\r\n$300\r\n%s\r\n$007\r\nabcdefg\r\n:3\r\n"
           b"*2\r\n$1\r\na\r\n$2\r\nbc\r\n|1\r\n+k\r\n+v\r\n$2\r\nok\r\n" % (b"w" * 300))
REPLIES_BAD = [b"$3\r\nabcd\r\n", b"$12345678901\r\n", b"$2\r\nab\n\r\n"]


def feed_dir(chunks, direction, fast=True):
    p = redis.RedisParser()
    if not fast:
        p._command = p._bulk_reply = lambda buf, pos, events: pos     # the general path only
    out = []
    for c in chunks:
        out += p.receive_data(c, direction)
    return out


@pytest.mark.parametrize("data,direction", [(COMMANDS, Direction.TO_SERVER), (REPLIES, S)]
                         + [(d, Direction.TO_SERVER) for d in COMMANDS_BAD] + [(d, S) for d in REPLIES_BAD])
def test_whole_values_equal_the_general_path_at_any_split(data, direction):
    want = feed_dir([data], direction, fast=False)
    assert want and feed_dir([data], direction) == want
    rnd = random.Random(len(data))
    for _ in range(30):
        cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(1, 12))))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        assert feed_dir(parts, direction) == want, cuts
    assert feed_dir([data[i:i + 1] for i in range(len(data))], direction) == want


def test_pipelined_gets_skip_the_line_path(monkeypatch):
    """A pipelined client's whole commands and the bulk strings answering
    them take one step each (before: the general path's line handling,
    _line, once per command and once per element)."""
    lines = []
    real = redis.RedisParser._line
    monkeypatch.setattr(redis.RedisParser, "_line", lambda self, *a: (lines.append(1), real(self, *a))[1])
    p = redis.RedisParser()
    ev = []
    for i in range(50):
        key = b"key:%d" % i
        ev += p.receive_data(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key), Direction.TO_SERVER)
        ev += p.receive_data(b"$%d\r\n%d\r\n" % (len(str(i)), i), S)
    assert [(e.command, e.args) for e in ev[::2]] == [("GET", (f"key:{i}",)) for i in range(50)]
    assert [(e.type, e.value, e.size) for e in ev[1::2]] == [("bulk", str(i), len(str(i))) for i in range(50)]
    assert lines == []


def test_a_null_bulk_in_a_command_is_malformed():
    """Redis refuses a null bulk string inside a command; the parser said
    so for none and, as a command's first element, raised AttributeError
    (None.upper())."""
    for data in (b"*1\r\n$-1\r\n", b"*2\r\n$3\r\nGET\r\n$-1\r\n"):
        ev = feed_dir([data], Direction.TO_SERVER)
        assert [e.kind for e in ev] == ["malformed"] and "null bulk" in ev[0].reason


def stack_of(p):
    return [(f.type, f.count, f.remaining) for f in p._sides[S].stack]


@pytest.mark.parametrize("data", [MIXED, TOKENS, command_reply(40)])
def test_open_aggregates_left_as_the_general_path_leaves_them(data):
    """_skim counts the aggregates it opens in plain lists and makes a
    _Frame only for those still open where it stops: at every cut the
    parser's stack (type, declared count, elements still due) is the
    general path's, so the next segment goes on from the same state."""
    for cut in range(1, len(data)):
        fast, slow = redis.RedisParser(), redis.RedisParser()
        slow._skim = lambda side, buf, pos, events: pos
        assert fast.receive_data(data[:cut], S) == slow.receive_data(data[:cut], S), cut
        assert stack_of(fast) == stack_of(slow), cut


def test_closed_aggregates_make_no_frame(monkeypatch):
    """An aggregate opened and closed inside one _skim call costs no _Frame
    (before: one each, ~2,000 here; a third of the parser's time on a
    COMMAND reply): only the top-level one, made by the general path, and
    those cut by the end of the data."""
    made = []
    real = redis._Frame.__init__
    monkeypatch.setattr(redis._Frame, "__init__", lambda self, *a, **k: (made.append(1), real(self, *a, **k))[1])
    data = command_reply(500)
    assert [(e.type, e.size) for e in feed([data])] == [("array", 500)]
    assert len(made) <= 2


def test_segments_inside_a_big_reply_start_with_runs(monkeypatch):
    """While the open aggregates still need more than SINGLE_ELEMENTS
    elements the reply cannot end within the single matches, so a segment
    in the middle of a big reply goes straight to runs (before: the first
    SINGLE_ELEMENTS of every segment matched one at a time, ~10 a segment)."""
    data = command_reply(2000)
    one_at_a_time = single_matches(monkeypatch)
    segments = [data[i:i + 1448] for i in range(0, len(data), 1448)]
    assert [(e.type, e.size) for e in feed(segments)] == [("array", 2000)]
    # A segment's single matches: the element its runs stop at (cut by the
    # segment's end) tried once, and once more with the next segment.
    assert len(one_at_a_time) <= redis.SINGLE_ELEMENTS + 2 * len(segments)


def random_value(r: random.Random, depth: int = 0) -> bytes:
    """A RESP reply value: scalars, bulk strings around MAX_TOKEN_BULK,
    arrays, maps, sets, pushes and attributes, nested, some empty."""
    kind = r.randrange(12 if depth < 5 else 6)
    if kind == 0:
        return b"+%s\r\n" % (b"s" * r.randrange(5))
    if kind == 1:
        return b":%d\r\n" % r.randrange(-9, 99)
    if kind == 2:
        n = r.choice([0, 1, 5, T - 1, T, T + 1, 200])
        return b"$%d\r\n%s\r\n" % (n, bytes(r.choice(b"ab\r\n") for _ in range(n)))
    if kind == 3:
        return r.choice([b"_\r\n", b"#t\r\n", b"(12\r\n", b",1.5\r\n", b"$-1\r\n", b"*-1\r\n"])
    if kind in (4, 5):
        return b"-ERR %d\r\n" % r.randrange(9)
    n = r.choice([0, 1, 2, 3, 9, 12])
    if kind == 6:
        return b"%%%d\r\n" % n + b"".join(random_value(r, depth + 1) for _ in range(2 * n))
    if kind == 7:
        return (b"|1\r\n+k\r\n" + random_value(r, depth + 1)) + random_value(r, depth + 1)
    head = r.choice(b"*~>")
    return b"%c%d\r\n" % (head, n) + b"".join(random_value(r, depth + 1) for _ in range(n))


@pytest.mark.parametrize("seed", range(40))
def test_random_replies_equal_the_general_path_at_random_splits(seed):
    r = random.Random(seed)
    data = b"".join(random_value(r) for _ in range(r.randrange(1, 6)))
    want = feed([data], skim=False)
    for _ in range(10):
        cuts = sorted(r.sample(range(1, len(data)), min(len(data) - 1, r.randint(0, 20))))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        assert feed(parts) == want, (seed, cuts)


def test_leaf_aggregates_are_listed_as_one_element(monkeypatch):
    """An aggregate of scalars alone (a COMMAND reply's flag arrays, its
    empty tip arrays) is listed by _RUN as one element of its parent, not
    opened and closed by _walk one loop step each: the walk sees the
    per-command arrays' headers, and a leaf's only where a run cannot hold
    it whole (cut by a segment's or a run's end, or matched singly:
    SINGLE_ELEMENTS), a few a segment (before: all 600)."""
    heads = []
    real = redis._walk
    monkeypatch.setattr(redis, "_walk", lambda h, r, tokens, ev: (heads.extend(t for t in tokens if t),
                                                                  real(h, r, tokens, ev))[1])
    data = command_reply(300)
    segments = [data[i:i + 1448] for i in range(0, len(data), 1448)]
    ev = feed(segments)
    assert [(e.type, e.size) for e in ev] == [("array", 300)]
    assert heads.count(b"*7\r\n") >= 300 - len(segments)
    leaves = heads.count(b"*2\r\n") + heads.count(b"*0\r\n")
    assert leaves <= 4 * len(segments)


LEAVES = (b"*2\r\n:1\r\n+a\r\n", b"*0\r\n", b"%1\r\n+k\r\n$1\r\nv\r\n", b"~1\r\n_\r\n", b">0\r\n",
          b"*%d\r\n" % redis.MAX_LEAF_ELEMENTS + b":1\r\n" * redis.MAX_LEAF_ELEMENTS,
          b"*%d\r\n" % (redis.MAX_LEAF_ELEMENTS + 1) + b":1\r\n" * (redis.MAX_LEAF_ELEMENTS + 1),
          *(b"*2\r\n$%d\r\n%s\r\n:1\r\n" % (n, b"\r\n" * (n // 2) + b"b" * (n % 2))
            for n in (redis.MAX_LEAF_BULK, redis.MAX_LEAF_BULK + 1)))


@pytest.mark.parametrize("leaf", LEAVES)
@pytest.mark.parametrize("depth", [redis.MAX_DEPTH - 2, redis.MAX_DEPTH - 1, redis.MAX_DEPTH])
def test_leaves_at_the_depth_limit_as_the_general_path(leaf, depth):
    """A leaf taken whole (MAX_LEAF_ELEMENTS) is still an aggregate opened
    at its depth: at MAX_DEPTH open aggregates it is refused ("nested
    deeper") as the general path refuses it, below that it is taken, with a
    scalar and a leaf after it and a second reply behind; at any split."""
    data = (b"*2\r\n" * depth + leaf + b":5\r\n" * (depth - 1) + b"*1\r\n" + leaf) * 2 + b"+OK\r\n"
    want = feed([data], skim=False)
    assert feed([data]) == want
    rnd = random.Random(depth)
    for _ in range(40):
        cuts = sorted(rnd.sample(range(1, len(data)), rnd.randint(1, 8)))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        assert feed(parts) == want, cuts


def test_a_segment_taken_whole_is_not_looked_at_again(monkeypatch):
    """A segment of whole commands (or whole replies) ends the loop where
    its last one ends: the fast paths are not tried again at the end of the
    data, nor a line end looked for there (before: one more _command or
    _bulk_reply call and a search a segment)."""
    calls = []
    for name in ("_command", "_bulk_reply"):
        real = getattr(redis.RedisParser, name)
        monkeypatch.setattr(redis.RedisParser, name,
                            staticmethod(lambda buf, pos, ev, real=real, name=name: (calls.append(name),
                                                                                   real(buf, pos, ev))[1]))
    p = redis.RedisParser()
    ev = p.receive_data(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n", Direction.TO_SERVER)
    ev += p.receive_data(b"$1\r\nv\r\n", S)
    assert [e.kind for e in ev] == ["redis_command", "redis_command", "redis_reply"]
    assert calls == ["_command", "_command", "_bulk_reply"]


def test_leaf_bulk_strings_are_short():
    """A leaf's bulk strings are at most MAX_LEAF_BULK bytes (a COMMAND
    reply's key-spec words), which keeps _RUN's pattern small (with every
    bulk length up to MAX_TOKEN_BULK it took ~85 ms to compile at import);
    an aggregate holding a longer one is listed by its header, its
    elements after it."""
    for n, want in ((redis.MAX_LEAF_BULK, [b""]), (redis.MAX_LEAF_BULK + 1, [b"*2\r\n", b"", b""])):
        assert redis._RUN.findall(b"*2\r\n$%d\r\n%s\r\n:1\r\n" % (n, b"x" * n)) == want
