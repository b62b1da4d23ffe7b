"""Redis serialization protocol (RESP2 and RESP3): commands and replies.

A client sends each command as an array of bulk strings
(``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n``) or, typed by hand, as one inline
line (``PING\\r\\n``), and may pipeline many before reading a reply. The
server answers with one RESP value per command: simple strings, errors,
integers, bulk strings, arrays, and in RESP3 also null, double, boolean, blob
error, verbatim string, big number, map, set, attribute and push.

The parser reads values incrementally and keeps only short prefixes of
strings, so a 512 MB bulk string costs MAX_SUMMARY_BYTES of memory, not
512 MB. One event per top-level value: RedisCommand for the client,
RedisReply for the server.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import compress
from typing import ClassVar

from protocols.api import (CERTAIN, LIKELY, NO_MATCH, POSSIBLE, DIRECTIONS, Direction, Event, Malformed,
                           ProtocolPlugin, Signature, StreamParser, StreamSide, event_builder, event_kinds)

# Longest line we look through for its CR LF: a type byte plus a number, a
# simple string or error, or an inline command. Redis itself refuses inline
# requests over 64 KiB (PROTO_INLINE_MAX_SIZE) and its status and error lines
# are short, so a longer line is not Redis.
MAX_LINE_BYTES = 64 * 1024
# What one direction holds between calls: a line without its LF yet (shorter
# than MAX_LINE_BYTES) or a bulk string's closing CR LF; bulk bytes are read
# as they arrive, never held.
MAX_BUFFERED_BYTES = MAX_LINE_BYTES
# Redis rejects bulk strings over 512 MiB (proto-max-bulk-len default). We
# never buffer them (only MAX_SUMMARY_BYTES are kept), so this is a sanity
# bound on the declared length, not a memory bound.
MAX_BULK_BYTES = 512 * 1024 * 1024
# Elements declared by one aggregate. Elements are not stored, so this bounds
# a declared count, not memory: a million is far past any command or reply
# seen in practice (a huge MGET, a KEYS over a big database), and a larger
# count is far more likely garbage than Redis.
MAX_ELEMENTS = 1024 * 1024
# Aggregates inside aggregates. Real replies nest a few levels (XREAD, XINFO
# STREAM FULL, CLUSTER SHARDS reach about 6); 32 leaves headroom and bounds the
# parser's stack.
MAX_DEPTH = 32
# Arguments kept per command (the command name comes on top): enough for
# "SET key value" or "AUTH user pass"; argc still counts all of them.
MAX_ARGS_KEPT = 4
# Bytes kept of any string (a command name, an argument, a reply's value)
# for the event: a log line wants the start of a key, not the whole blob.
MAX_SUMMARY_BYTES = 256

_INT = re.compile(rb"-?[0-9]{1,19}")        # fits int64: Redis's own lengths and integers
_NUMBER = re.compile(rb"-?[0-9]+")
# One element of a reply's aggregate that _Side can take without the
# general line path (RedisParser._skim): a simple string or error (a line no
# longer than the general path accepts), an integer, a big number, a null, a
# boolean, a bulk string's header (group 1: its length) or an aggregate's
# header (groups 2 and 3: type byte, element count). Anything else (a double,
# a null bulk or array, an attribute, a streamed value, a malformed line)
# does not match and goes the general way, which judges it.
_ELEMENT = re.compile(
    rb"[+\-][^\n]{0,%d}\r\n|:-?[0-9]{1,19}\r\n|\(-?[0-9]+\r\n|_\r\n|#[tf]\r\n"
    rb"|\$([0-9]{1,19})\r\n|([*%%~>])([0-9]{1,7})\r\n" % (MAX_LINE_BYTES - 3))
# Bulk strings up to this long are whole tokens of _RUN (their length
# checked by the regex itself, one alternative per length): the names and
# words of a reply like COMMAND's are short; a longer one is taken by
# _ELEMENT's length path, one at a time.
MAX_TOKEN_BULK = 63


def _scalar_alts(max_bulk: int) -> bytes:
    """_ELEMENT's scalars as alternatives, bulk strings only up to
    ``max_bulk`` bytes (one alternative per length)."""
    return (rb"[+\-][^\n]{0,%d}\r\n|:-?[0-9]{1,19}\r\n|\(-?[0-9]+\r\n|_\r\n|#[tf]\r\n" % (MAX_LINE_BYTES - 3)
            + rb"|\$(?:" + rb"|".join(rb"%d\r\n(?s:.){%d}" % (k, k) for k in range(max_bulk + 1)) + rb")\r\n")


# _ELEMENT's elements as tokens that findall can list in one call: the same
# elements as _ELEMENT, but a bulk string only with its content and CR LF, at
# most MAX_TOKEN_BULK bytes. The scalars and an aggregate's header apart:
# _RUN lists a scalar as b"" (its only group unmatched: one shared empty
# bytes, nothing made per scalar) and an aggregate by its header.
_SCALAR_ALTS = _scalar_alts(MAX_TOKEN_BULK)
_AGGREGATE_HEAD = rb"[*%~>][0-9]{1,7}\r\n"
_HEAD = re.compile(_AGGREGATE_HEAD)
# An aggregate whose elements are all scalars (as _SCALAR_ALTS lists them,
# but bulk strings only up to MAX_LEAF_BULK bytes), whole, is one element of
# its parent and nothing else: _RUN lists it as a scalar (b""), so _walk
# counts it off with the scalars around it instead of opening and closing
# it, one loop step each (a COMMAND reply's flag, ACL
# category and tip arrays and its key specs' innermost maps: most of its
# ~5,800 aggregates). Up to MAX_LEAF_ELEMENTS elements (pairs for a map, as
# its header counts), one alternative per count; a longer one is listed by
# its header, as before. Empty ones too (`*0`: an element of its parent, as
# _walk takes it). Each scalar is an atomic group: it has one match at a
# position, and a leaf that fails (cut by the span's end, an element that is
# no scalar) is not tried again inside its elements. A leaf's elements are
# not looked at one by one, but the depth they sit at must be: a leaf found
# where MAX_DEPTH aggregates are open is refused as the general path refuses
# it. So leaves are listed only below that depth (_skim_elements: _RUN; at
# it, _RUN_PLAIN), and _walk stops a run where it opens the MAX_DEPTH-th
# aggregate.
# Eight: a COMMAND reply's flag arrays and key-spec maps have up to six.
MAX_LEAF_ELEMENTS = 8
# Fifteen: the words of a COMMAND reply's key specs ("lastkey", "keystep")
# are shorter. The bound keeps the pattern small: it holds the scalars once
# per element count, and compiling it with every bulk length up to
# MAX_TOKEN_BULK took ~85 ms at import against ~5 ms.
MAX_LEAF_BULK = 15
_LEAF_SCALAR_ALTS = _scalar_alts(MAX_LEAF_BULK)
_LEAF = (rb"[*~>](?:" + rb"|".join(rb"%d\r\n(?>%s){%d}" % (k, _LEAF_SCALAR_ALTS, k) if k else b"0\r\n"
                                   for k in range(MAX_LEAF_ELEMENTS + 1))
         + rb")|%(?:" + rb"|".join(rb"%d\r\n(?>%s){%d}" % (k, _LEAF_SCALAR_ALTS, 2 * k) if k else b"0\r\n"
                                   for k in range(MAX_LEAF_ELEMENTS + 1)) + rb")")
# Elements a _skim call takes one match at a time before it lists runs: a
# small reply (pipelined ones: a few elements each) ends within them, where
# a run would look past its end for nothing.
SINGLE_ELEMENTS = 8
# Bytes a run is first looked for in, doubled for each further run of the
# same call up to MAX_RUN_BYTES: a run is matched to its end whatever the
# reply needs, so an unbounded one would scan all the replies pipelined
# behind a small one (quadratic in the buffer); this way a call scans at
# most about twice what it takes, plus FIRST_RUN_BYTES.
FIRST_RUN_BYTES = 32
MAX_RUN_BYTES = 16 * 1024
# A run of tokens and what follows it, in one findall: per token b"" (a
# scalar) or an aggregate's header, then, where no token matches, one last
# match of everything left in the span (`.+` takes it without looking at
# it; told from a header by _HEAD.fullmatch). One pass over the run: a match
# of the run and a findall over it again (two passes) cost ~1.5x as much on
# a COMMAND reply.
_RUN = re.compile(rb"(?:" + _SCALAR_ALTS + rb"|" + _LEAF + rb")|(" + _AGGREGATE_HEAD + rb"|(?s:.+))")
_RUN_PLAIN = re.compile(rb"(?:" + _SCALAR_ALTS + rb")|(" + _AGGREGATE_HEAD + rb"|(?s:.+))")

# Elements a whole command may have to take RedisParser._command's path:
# commands are a few words (GET k, SET k v PX n). A command the path walks
# and then finds cut by the segment's end is walked again by the general
# path: this bounds that double work; a longer one (an MSET of many keys)
# goes the general way.
MAX_FAST_ELEMENTS = 16
_ARRAY_HEAD = re.compile(rb"\*([0-9]{1,7})\r\n")
_BULK_HEAD = re.compile(rb"\$([0-9]{1,10})\r\n")

# Type byte -> reply type name.
_STRINGS = {ord("$"): "bulk", ord("!"): "blob_error", ord("="): "verbatim"}
_AGGREGATES = {ord("*"): "array", ord("%"): "map", ord("~"): "set", ord(">"): "push",
               ord("|"): "attribute"}


@dataclass(frozen=True)
class RedisCommand(Event):
    kind: ClassVar[str] = "redis_command"
    command: str                  # upper-cased, at most MAX_SUMMARY_BYTES
    args: tuple[str, ...]         # the first MAX_ARGS_KEPT, each cut to MAX_SUMMARY_BYTES
    argc: int                     # command name included, as Redis counts
    inline: bool = False


@dataclass(frozen=True)
class RedisReply(Event):
    kind: ClassVar[str] = "redis_reply"
    type: str       # simple error integer bulk null double boolean blob_error verbatim bignum
                    # array map set push
    value: str | int | float | bool | None   # scalars and strings (cut); None for aggregates
    size: int | None = None       # bytes of a string, elements of an aggregate (pairs for map)


# The events made without the frozen dataclasses' __init__ (one each per
# command and reply: ~0.6 us of object.__setattr__ calls saved each).
_new_command = event_builder(RedisCommand)
_new_reply = event_builder(RedisReply)


def _text(raw: bytes) -> str:
    return bytes(raw[:MAX_SUMMARY_BYTES]).decode("utf-8", "backslashreplace")


class _Frame:
    """An aggregate whose elements are still being read."""
    __slots__ = ("type", "count", "remaining", "items")

    def __init__(self, type_: str, count: int, elements: int, keep_items: bool) -> None:
        self.type = type_
        self.count = count
        self.remaining = elements
        self.items: list[str] | None = [] if keep_items else None


_MAP = ord("%")      # a map's header counts pairs


def _walk(heads: list, rems: list[int], tokens, events: list[Event]) -> tuple[int, bool]:
    """Take whole reply elements, ``tokens`` (as _RUN lists them: b"" a
    scalar, else an aggregate's header), into the open aggregates (``rems``
    their remaining element counts, ``heads`` their _Frame or header; see
    RedisParser._skim) and emit the RedisReply of a top-level value they
    complete. Returns how many tokens were taken and whether to stop there:
    a top-level value ended (the tokens after it are the next reply's), an
    aggregate past MAX_ELEMENTS or MAX_DEPTH, left for the general path
    to judge, or the MAX_DEPTH-th aggregate opened (a leaf listed among the
    tokens after it as a scalar would sit at MAX_DEPTH, where it is refused:
    the caller lists the rest again without leaves).

    Steps go by aggregate, not by element: the aggregates' indices are
    listed in C (compress over the tokens, b"" being false), and the scalars
    up to the next aggregate are counted off in one subtraction."""
    n_tok = len(tokens)
    aggs = list(compress(range(n_tok), tokens))
    aggs.append(n_tok)          # a sentinel: no aggregate before the run's end
    i = k = 0
    while True:
        a = aggs[k]
        r = rems[-1]
        if i + r > a:           # the innermost aggregate does not end before the next header
            rems[-1] = r - (a - i)
            if a == n_tok:
                return n_tok, False
            head = tokens[a]
            n = int(head[1:-2])
            if n > MAX_ELEMENTS or len(rems) >= MAX_DEPTH:
                return a, True
            i = a + 1
            k += 1
            if n:
                rems.append(2 * n if head[0] == _MAP else n)
                heads.append(head)
                if len(rems) >= MAX_DEPTH:
                    return i, True
                continue
            r = rems[-1] - 1    # an empty aggregate is one element of its parent
            if r:
                rems[-1] = r
                continue
        else:
            i += r              # its last elements are scalars
        while True:             # the aggregate is whole: one element of its parent
            rems.pop()
            head = heads.pop()
            if head.__class__ is _Frame and head.type == "attribute":
                break           # metadata about the next value, not a value (as _complete)
            if not rems:        # the bottom one is _skim's caller's, a _Frame
                events.append(_new_reply(head.type, None, head.count))
                return i, True
            r = rems[-1] - 1
            if r:
                rems[-1] = r
                break
        if not rems:
            return i, True

class _Side(StreamSide):
    __slots__ = ("state", "stack", "bulk_left", "bulk_type", "bulk_len", "bulk_head")
    max_buffered = MAX_BUFFERED_BYTES

    def __init__(self, direction: Direction) -> None:
        super().__init__(direction)
        self.state = "line"         # line | bulk | crlf | done
        self.stack: list[_Frame] = []
        self.bulk_left = 0
        self.bulk_type = ""
        self.bulk_len = 0
        self.bulk_head = bytearray()

    @property
    def done(self) -> bool:
        return self.state == "done"


class RedisParser(StreamParser):
    def __init__(self) -> None:
        self._sides = {d: _Side(d) for d in DIRECTIONS}

    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        if not side.accept(data):
            return []
        events: list[Event] = []
        buf = side.buf
        pos = 0
        while side.state != "done":
            if side.state == "bulk":
                n = min(side.bulk_left, len(buf) - pos)
                room = MAX_SUMMARY_BYTES - len(side.bulk_head)
                if room > 0:
                    side.bulk_head += buf[pos:pos + min(n, room)]
                pos += n
                side.bulk_left -= n
                if side.bulk_left:
                    break
                side.state = "crlf"
            elif side.state == "crlf":
                if len(buf) - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    self._fail(side, direction, events, "bulk string not followed by CR LF",
                               side.offset + pos)
                    break
                pos += 2
                side.state = "line"
                self._complete(side, direction, side.bulk_type, _text(side.bulk_head),
                               side.bulk_len, events)
            else:
                if pos == len(buf):
                    # Everything taken (a segment of whole commands or
                    # replies, as most are): the paths below would each find
                    # nothing at the end and the line search no line end.
                    break
                if side.stack:
                    if direction == Direction.TO_CLIENT:
                        start = pos
                        pos = self._skim(side, buf, pos, events)
                        if pos != start:
                            continue
                else:
                    start = pos
                    pos = (self._command if direction == Direction.TO_SERVER else self._bulk_reply)(
                        buf, pos, events)
                    if pos != start:
                        continue
                nl = buf.find(b"\n", pos, pos + MAX_LINE_BYTES)
                if nl < 0:
                    if len(buf) - pos >= MAX_LINE_BYTES:
                        self._fail(side, direction, events,
                                   f"no line end within {MAX_LINE_BYTES} bytes", side.offset + pos)
                    break
                line = bytes(buf[pos:nl])
                at = side.offset + pos
                pos = nl + 1
                self._line(side, direction, line, at, events)
        side.consume(len(buf) if side.done else pos)
        return events

    def receive_eof(self, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        side.eof = True
        if side.state == "done":
            return []
        if side.state == "line" and not side.buf and not side.stack:
            return []
        side.state = "done"
        return [Malformed(direction, "stream ended inside a value", side.offset)]

    def receive_gap(self, direction: Direction, size: int) -> list[Event]:
        side = self._sides[direction]
        if side.state == "done":
            return []
        side.state = "done"
        return [Malformed(direction, f"gap of {size} bytes in the stream", -1)]

    @staticmethod
    def _skim(side: _Side, buf: bytearray, pos: int, events: list[Event]) -> int:
        """Inside a reply's aggregate, take whole elements in a tight loop
        (_skim_elements, _walk), nothing kept (a reply's elements are counted, not
        stored). Stops at the first element it cannot take whole (see
        _ELEMENT, or a bulk string not all in ``buf``) and returns the
        position reached; the general path goes on from there with the same
        state.

        The loop keeps the open aggregates as two lists, their remaining
        element counts (``rems``) and for each its _Frame or, for one opened
        here, its header token: a _Frame is made only for an aggregate still
        open when the loop stops, not for each of the thousands a COMMAND
        reply opens and closes (a _Frame per aggregate was ~1/3 of the
        parser's time on the corpus's 90 KB COMMAND reply)."""
        stack = side.stack
        heads: list = list(stack)
        rems = [f.remaining for f in stack]
        pos = RedisParser._skim_elements(heads, rems, buf, pos, events)
        for i, head in enumerate(heads):
            if head.__class__ is _Frame:
                head.remaining = rems[i]
            else:
                heads[i] = _Frame(_AGGREGATES[head[0]], int(head[1:-2]), rems[i], keep_items=False)
        stack[:] = heads
        return pos

    @staticmethod
    def _skim_elements(heads: list, rems: list[int], buf: bytearray, pos: int,
                       events: list[Event]) -> int:
        """_skim's loop: a run of short elements listed by one findall
        (_RUN) and taken by _walk, a bulk string longer than MAX_TOKEN_BULK
        by one match and skipped by its length, so a 90 KB COMMAND reply of
        thousands of elements costs a few regex calls per segment and a
        loop step per aggregate, not the general path's line handling.

        The open aggregates still need at least sum(rems) elements: when
        that is more than SINGLE_ELEMENTS the reply cannot end within the
        single matches, so the call starts with runs (a reply cut into
        segments, as the slow path gets it, paid SINGLE_ELEMENTS single
        matches a segment)."""
        singles = SINGLE_ELEMENTS if sum(rems) <= SINGLE_ELEMENTS else 0
        span = FIRST_RUN_BYTES
        # Leaves listed as scalars only below MAX_DEPTH (see _LEAF; _walk
        # ends the call where a run reaches it).
        run = _RUN if len(rems) < MAX_DEPTH else _RUN_PLAIN
        while True:
            if singles:
                # One element by _ELEMENT, as _RUN would list it.
                singles -= 1
                m = _ELEMENT.match(buf, pos)
                if m is None:
                    return pos
                kind = m.lastindex      # None: a one-line scalar; 1: a bulk string; 3: an aggregate
                if kind == 1:
                    n = int(m.group(1))
                    stop = m.end() + n
                    if n > MAX_BULK_BYTES or not buf.startswith(b"\r\n", stop):
                        return pos
                    end = stop + 2
                    tokens = (b"",)
                else:
                    end = m.end()
                    tokens = (m.group() if kind else b"",)
                taken, stopped = _walk(heads, rems, tokens, events)
                if taken:
                    pos = end
            else:
                # The run of whole tokens from pos (within span bytes) listed
                # in one call (_RUN: tokens back to back from pos, then the
                # rest of the span as one match, dropped). None there (a bulk
                # string over MAX_TOKEN_BULK, an element longer than span):
                # the next element goes the single way.
                end = min(pos + span, len(buf))
                tokens = run.findall(buf, pos, end)
                span = min(2 * span, MAX_RUN_BYTES)
                if tokens and tokens[-1] and not _HEAD.fullmatch(tokens[-1]):
                    end -= len(tokens.pop())
                if not tokens:
                    singles = 1
                    continue
                taken, stopped = _walk(heads, rems, tokens, events)
                if taken == len(tokens):
                    pos = end
                else:
                    # Stopped inside the run (once a reply, or at a limit):
                    # the taken tokens' bytes found again, one match each of
                    # the same pattern (at a token its alternatives match as
                    # findall's did), within the run's span (a leaf cut by
                    # it was listed by its header).
                    for _ in range(taken):
                        pos = run.match(buf, pos, end).end()
            if stopped:
                return pos

    @staticmethod
    def _command(buf: bytearray, pos: int, events: list[Event]) -> int:
        """A whole command at ``pos`` (an array of 1..MAX_FAST_ELEMENTS bulk
        strings, every byte of it in ``buf``) taken in one step: its event
        (as the general path's _line/_complete make it) and the position
        after it. Anything else, or a command not all here yet, returns
        ``pos``: the general path takes it and judges it. A pipelined
        client's GET/SET took ~3 general-path steps an element."""
        m = _ARRAY_HEAD.match(buf, pos)
        if m is None:
            return pos
        n = int(m.group(1))
        if not 0 < n <= MAX_FAST_ELEMENTS:
            return pos
        p = m.end()
        items: list[str] = []
        bulk, at_crlf = _BULK_HEAD.match, buf.startswith
        for _ in range(n):
            m = bulk(buf, p)
            if m is None:
                return pos
            k = int(m.group(1))
            start = m.end()
            if k > MAX_BULK_BYTES or not at_crlf(b"\r\n", start + k):
                return pos
            if len(items) <= MAX_ARGS_KEPT:
                items.append(_text(buf[start:start + min(k, MAX_SUMMARY_BYTES)]))
            p = start + k + 2
        events.append(_new_command(items[0].upper(), tuple(items[1:]), n))
        return p

    @staticmethod
    def _bulk_reply(buf: bytearray, pos: int, events: list[Event]) -> int:
        """A whole top-level bulk string reply at ``pos`` (GET's answer) in
        one step, as _command; anything else returns ``pos``."""
        m = _BULK_HEAD.match(buf, pos)
        if m is None:
            return pos
        k = int(m.group(1))
        start = m.end()
        if k > MAX_BULK_BYTES or not buf.startswith(b"\r\n", start + k):
            return pos
        events.append(_new_reply("bulk", _text(buf[start:start + min(k, MAX_SUMMARY_BYTES)]), k))
        return start + k + 2

    def _fail(self, side: _Side, direction: Direction, events: list[Event], reason: str,
              at: int) -> None:
        events.append(Malformed(direction, reason, at))
        side.state = "done"

    def _line(self, side: _Side, d: Direction, line: bytes, at: int, events: list[Event]) -> None:
        client = d == Direction.TO_SERVER
        if client and not side.stack and line[:1] != b"*":
            # Inline command: Redis splits on '\n' and drops an optional '\r'.
            words = line.rstrip(b"\r").split()
            if words:     # an empty line is ignored, as Redis does
                events.append(_new_command(_text(words[0]).upper(),
                                           tuple(_text(w) for w in words[1:1 + MAX_ARGS_KEPT]),
                                           len(words), inline=True))
            return
        if not line.endswith(b"\r"):
            return self._fail(side, d, events, "line not terminated by CR LF", at)
        t, rest = (line[0] if line else -1), line[1:-1]
        if client and t != ord("$" if side.stack else "*"):
            return self._fail(side, d, events, "command element is not a bulk string"
                              if side.stack else "command is not an array", at)
        if t in _STRINGS or t in _AGGREGATES:
            if not _INT.fullmatch(rest):
                why = "streamed RESP3 values are not supported" if rest == b"?" else "bad length"
                return self._fail(side, d, events, f"{chr(t)}: {why}", at)
            n = int(rest)
            if t in _STRINGS:
                if n == -1 and t == ord("$"):
                    if client:      # Redis refuses it ("invalid bulk length"); no command has it
                        return self._fail(side, d, events, "null bulk string in a command", at)
                    return self._complete(side, d, "null", None, None, events)
                if not 0 <= n <= MAX_BULK_BYTES:
                    return self._fail(side, d, events, f"string length {n} out of range", at)
                side.state = "bulk"
                side.bulk_left, side.bulk_len, side.bulk_type = n, n, _STRINGS[t]
                side.bulk_head = bytearray()
                return
            type_ = _AGGREGATES[t]
            if n == -1 and t == ord("*"):            # RESP2 null array
                if client:
                    return                           # Redis ignores it
                return self._complete(side, d, "null", None, None, events)
            if not 0 <= n <= MAX_ELEMENTS:
                return self._fail(side, d, events, f"{n} elements out of range", at)
            if len(side.stack) >= MAX_DEPTH:
                return self._fail(side, d, events, f"nested deeper than {MAX_DEPTH}", at)
            if n == 0:
                if not client:                       # Redis ignores an empty command
                    self._complete(side, d, type_, None, 0, events)
                return
            elements = 2 * n if type_ in ("map", "attribute") else n
            side.stack.append(_Frame(type_, n, elements, keep_items=client))
            return
        value: str | int | float | bool | None
        if t == ord("+"):
            type_, value = "simple", _text(rest)
        elif t == ord("-"):
            type_, value = "error", _text(rest)
        elif t == ord(":") and _INT.fullmatch(rest):
            type_, value = "integer", int(rest)
        elif t == ord("(") and _NUMBER.fullmatch(rest):
            type_, value = "bignum", _text(rest)
        elif t == ord("_") and not rest:
            type_, value = "null", None
        elif t == ord("#") and rest in (b"t", b"f"):
            type_, value = "boolean", rest == b"t"
        elif t == ord(","):
            try:
                type_, value = "double", float(rest)
            except ValueError:
                return self._fail(side, d, events, "bad double", at)
        else:
            return self._fail(side, d, events, f"bad RESP value starting {line[:1]!r}", at)
        self._complete(side, d, type_, value, None, events)

    def _complete(self, side: _Side, d: Direction, type_: str, value, size: int | None,
                  events: list[Event]) -> None:
        """A value ended: give it to its aggregate, or emit it at the top level."""
        while True:
            if type_ == "attribute":
                return      # RESP3 metadata about the next value, not a value itself
            if not side.stack:
                break
            frame = side.stack[-1]
            if frame.items is not None and len(frame.items) <= MAX_ARGS_KEPT:
                frame.items.append(value)
            frame.remaining -= 1
            if frame.remaining:
                return
            side.stack.pop()
            type_, value, size = frame.type, frame.items, frame.count
        if d == Direction.TO_SERVER:
            items = value or [""]
            events.append(_new_command(items[0].upper(), tuple(items[1:]), size or 0))
        else:
            events.append(_new_reply(type_, None if isinstance(value, list) else value, size))


# Commands that make a RESP array a Redis command beyond doubt (the common
# ones; an unknown name still gets LIKELY).
_KNOWN = frozenset(b"""
    APPEND AUTH BGSAVE BLPOP BRPOP CLIENT CLUSTER COMMAND CONFIG DBSIZE DECR DECRBY DEL DISCARD
    ECHO EVAL EVALSHA EXEC EXISTS EXPIRE EXPIREAT FLUSHALL FLUSHDB GET GETDEL GETEX GETSET HDEL
    HELLO HEXISTS HGET HGETALL HINCRBY HKEYS HLEN HMGET HMSET HSET HSETNX HVALS INCR INCRBY INFO
    KEYS LINDEX LLEN LPOP LPUSH LRANGE LREM LSET LTRIM MGET MONITOR MSET MULTI PERSIST PEXPIRE
    PING PSUBSCRIBE PTTL PUBLISH QUIT RENAME RPOP RPUSH SADD SCAN SCARD SCRIPT SELECT SET SETEX
    SETNX SISMEMBER SMEMBERS SREM SSCAN SUBSCRIBE TTL TYPE UNLINK UNSUBSCRIBE WATCH XADD XRANGE
    XREAD XREADGROUP ZADD ZCARD ZINCRBY ZRANGE ZRANGEBYSCORE ZREM ZREVRANGE ZSCORE
""".split())
# Inline commands people type at a Redis port. Words other protocols send
# first (GET of HTTP, QUIT/USER of FTP and POP3) are left out.
_INLINE = frozenset(b"PING AUTH HELLO SELECT INFO ECHO MONITOR DBSIZE FLUSHALL FLUSHDB KEYS "
                    b"CLIENT CONFIG COMMAND SUBSCRIBE PSUBSCRIBE".split())
# First replies that are Redis's own (an exact OK/PONG, its error prefixes).
_REPLIES = (b"+OK\r\n", b"+PONG\r\n", b"-ERR ", b"-NOAUTH ", b"-WRONGPASS ", b"-NOPERM ",
            b"-WRONGTYPE ", b"-MOVED ", b"-ASK ", b"-LOADING ", b"-BUSY ", b"-MISCONF ",
            b"-READONLY ", b"-NOSCRIPT ", b"-DENIED ")
_ARRAY_OF_BULK = re.compile(rb"\*([0-9]{1,7})\r\n\$([0-9]{1,9})\r\n")
_REPLY_START = re.compile(rb"(?:\$-?[0-9]{1,9}|[*%~>|][0-9]{1,7}|:-?[0-9]{1,19}|_)\r\n")


def probe(data: bytes, direction: Direction) -> float:
    """Rate the first bytes of one direction as Redis."""
    if direction == Direction.TO_SERVER:
        m = _ARRAY_OF_BULK.match(data)
        if m and int(m[1]) > 0:
            n = int(m[2])
            name = data[m.end():m.end() + n]
            if (len(name) == n and data[m.end() + n:m.end() + n + 2] == b"\r\n"
                    and name.upper() in _KNOWN):
                return CERTAIN
            return LIKELY
        nl = data.find(b"\n", 0, 1024)
        if nl > 0:
            words = data[:nl].rstrip(b"\r").split()
            if words and words[0].upper() in _INLINE:
                return LIKELY
        return NO_MATCH
    if data.startswith(_REPLIES):
        return LIKELY
    if _REPLY_START.match(data):
        return POSSIBLE
    return NO_MATCH


PLUGIN = ProtocolPlugin(
    name="redis",
    event_kinds=event_kinds(RedisCommand, RedisReply),
    probe=probe,
    parser_factory=lambda transport: RedisParser(),
    # Unmasked 5- and 6-byte signatures at offset 0: HTTP's methods use the
    # same (offset, mask) shapes, and the kernel pays per distinct shape
    # (bpf/lib/maps.h MS_L7_SHAPES), not per signature.
    signatures=(
        # A command array of 1..9 elements whose first is a bulk string.
        *(Signature(0, b"*%d\r\n$" % n) for n in range(1, 10)),
        Signature(0, b"PING\r\n"),
        Signature(0, b"ping\r\n"),
    ),
    transports=frozenset({"tcp"}),
    description="Redis RESP2/RESP3 commands (array and inline) and replies",
)
