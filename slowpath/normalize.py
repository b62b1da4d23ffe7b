"""HTTP text as the WAF signatures see it: decoded the way servers decode it,
and the way attackers hope a monitor will not.

Every function here takes and returns bytes (the WAF database scans bytes)
and never raises on any input. What is done, in order:

1. Percent-decoding, repeated (:data:`MAX_DECODE_ROUNDS`). ``%XX`` and IIS's
   ``%uXXXX`` (the code point, as UTF-8) are decoded; an escape that is not
   one (``%zz``, a lone ``%``) stays as written, as servers leave it. In a
   query, ``+`` is a space (HTML form encoding), turned into one before the
   first round only: an encoded ``%2B`` is a real plus.
2. Overlong UTF-8 for ASCII characters (``%c0%af`` for ``/``: the IIS 4/5
   traversal of 2000, CVE-2000-0884) is folded to the ASCII character, in
   every round, since the overlong form is itself often percent-encoded.
3. NUL bytes are dropped (``<scr%00ipt>``: C-string based filters stop at
   the NUL, the browser or the shell does not).
4. Text with bytes above 0x7f is decoded as UTF-8 and NFKC-normalised, so
   full-width and other compatibility forms (``%uff1c`` is a full-width
   ``<``, which IIS's best-fit mapping turns into ``<``) match the ASCII
   signatures. Pure ASCII, the common case, skips this.
5. For paths (the URI and header values, not bodies): backslashes become
   ``/`` (Windows servers take both) and ``/./`` and ``//`` collapse to one
   ``/``. ``..`` segments are *kept*: they are what the traversal
   signatures look for.

Case is not folded here: every WAF pattern is compiled caseless, which is
the same for ASCII and keeps the matched text as the client sent it.
"""
from __future__ import annotations

import re
import unicodedata

# Percent-decoding rounds. Double encoding (``%252e%252e%252f``) is the
# classic evasion (CAPEC-120) against a filter that decodes once while a
# later layer decodes again; three rounds also undo triple encoding, and the
# loop stops early as soon as a round changes nothing (one cheap ``in``
# test for text without ``%``).
MAX_DECODE_ROUNDS = 3

# Query parameters scanned one by one (the "args" field). Real queries have
# a handful; the bound caps the scans one request costs. Parameters past it
# are still in the "uri" field, which holds the whole query.
MAX_ARGS = 64

_ESCAPE = re.compile(rb"%(?:([0-9A-Fa-f]{2})|[uU]([0-9A-Fa-f]{4}))")
# Overlong 2-byte (C0/C1 lead) and 3-byte (E0 followed by 80-9F) encodings.
# Only those decoding to ASCII matter: they are how "/" and "." are hidden.
_OVERLONG2 = re.compile(rb"[\xc0\xc1][\x80-\xbf]")
_OVERLONG3 = re.compile(rb"\xe0[\x80-\x81][\x80-\xbf]")
_SLASHES = re.compile(rb"/(?:\./|/)+")
_REPLACEMENT = "\ufffd".encode()
_ABSOLUTE = re.compile(rb"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
_JSON_ESCAPE = re.compile(rb"\\u([0-9A-Fa-f]{4})")


def _unescape(m: re.Match) -> bytes:
    if m.group(1) is not None:
        return bytes((int(m.group(1), 16),))
    cp = int(m.group(2), 16)
    if 0xD800 <= cp <= 0xDFFF:          # a lone surrogate has no UTF-8 form
        return _REPLACEMENT
    return chr(cp).encode()


def _fold2(m: re.Match) -> bytes:
    a, b = m.group()
    return bytes((((a & 0x1F) << 6) | (b & 0x3F),))


def _fold3(m: re.Match) -> bytes:
    _, b, c = m.group()
    cp = ((b & 0x3F) << 6) | (c & 0x3F)
    return bytes((cp,)) if cp < 0x80 else m.group()


def fold_overlong(data: bytes) -> bytes:
    """Overlong UTF-8 encodings of ASCII characters, as the ASCII byte."""
    if b"\xc0" in data or b"\xc1" in data:
        data = _OVERLONG2.sub(_fold2, data)
    if b"\xe0" in data:
        data = _OVERLONG3.sub(_fold3, data)
    return data


def url_decode(data: bytes, rounds: int = MAX_DECODE_ROUNDS) -> bytes:
    """Percent-decode (and fold overlong UTF-8) until nothing changes, at most ``rounds`` times."""
    data = fold_overlong(data)           # overlong bytes may also be sent raw
    for _ in range(rounds):
        if b"%" not in data:
            break
        new = fold_overlong(_ESCAPE.sub(_unescape, data))
        if new == data:
            break
        data = new
    return data


def _text_forms(data: bytes) -> bytes:
    """NUL dropped; non-ASCII text NFKC-normalised (full-width '<' is '<')."""
    if b"\x00" in data:
        data = data.replace(b"\x00", b"")
    if not data.isascii():
        text = data.decode("utf-8", "surrogateescape")
        norm = unicodedata.normalize("NFKC", text)
        if norm != text:
            data = norm.encode("utf-8", "surrogateescape")
            data = data.replace(b"\x00", b"")     # NFKC maps nothing to NUL; cheap to be sure
    return data


def _path_forms(data: bytes) -> bytes:
    if b"\\" in data:
        data = data.replace(b"\\", b"/")
    if b"//" in data or b"/./" in data:
        data = _SLASHES.sub(b"/", data)
    return data


# A byte or sequence some step of value() rewrites, in ASCII text ("+" only
# with form=True; taking the long way for it then changes nothing). Text
# that is ASCII and has none of them is its own normal form: most header
# values and query values are, and one search is all they cost.
_REWRITTEN = re.compile(rb"[%\x00\\+]|/\.?/")


def value(raw: bytes, *, form: bool = False, path: bool = True) -> bytes:
    """One value (a query parameter, a header value, a form field):
    ``form`` turns ``+`` into a space first; ``path`` applies the slash rules."""
    if raw.isascii() and _REWRITTEN.search(raw) is None:
        return raw
    return _value(raw, form, path)


def _value(raw: bytes, form: bool, path: bool) -> bytes:
    if form and b"+" in raw:
        raw = raw.replace(b"+", b" ")
    out = _text_forms(url_decode(raw))
    return _path_forms(out) if path else out


def split_target(target: str) -> tuple[bytes, bytes | None]:
    """(path, query or None) of a request target, as bytes. An absolute-form
    target (a request to a proxy) loses its scheme and authority, so the
    "uri" field is always path and query, whatever the form."""
    raw = target.encode("latin-1", "replace")
    m = _ABSOLUTE.match(raw)
    if m:
        raw = raw[m.end():] or b"/"
    raw = raw.split(b"#", 1)[0]          # a fragment is never meant to be sent; drop it if it was
    path, sep, query = raw.partition(b"?")
    return path, (query if sep else None)


def uri(target: str) -> bytes:
    """The "uri" field: path and query, each decoded (query with ``+`` as space)."""
    return uri_and_args(target)[0]


def args(target: str) -> list[bytes]:
    """The "args" field: each query parameter's value, decoded (first MAX_ARGS)."""
    return uri_and_args(target)[1]


# An origin-form target (RFC 9112 3.2.1: it starts with "/") with none of
# what split_target() cuts (a fragment's "#") or value() rewrites, anywhere
# in it (the path, the query and each parameter are parts of it, so none of
# them has any either): it is its own "uri" field, and its parameters'
# values are its "args", as sent. Most requests are such; one search then
# replaces the split and a search per part. (uri_and_args asks the same with
# substring tests; tests/unit/test_engine_fast_paths.py holds the two equal.)
_PLAIN_TARGET = re.compile(r"[\x00%\\+#]|/\.?/")


def uri_and_args(target: str) -> tuple[bytes, list[bytes]]:
    """uri(target) and args(target), the target split once."""
    # (_PLAIN_TARGET.search(target) is None, as one memchr-backed substring
    # test per character or pair: a third of the search's time on a
    # typical target; inline, no call: ~0.06 us less a request)
    if target[:1] == "/" and target.isascii() and not (
            "%" in target or "+" in target or "#" in target or "\\" in target or "\x00" in target
            or "//" in target or "/./" in target):
        raw = target.encode("ascii")
        query = raw.partition(b"?")[2]
        if not query:
            return raw, []
        if query.count(b"&") < MAX_ARGS:       # all its parameters are taken
            return raw, _QUERY_VALUES.findall(query)
        return raw, [v for part in query.split(b"&", MAX_ARGS)[:MAX_ARGS] if (v := part.partition(b"=")[2])]
    return _uri_and_args(target)


# The values of a plain query's parameters, in one C-level pass: each
# "&"-separated part's text after its first "=", the empty ones left out
# (what the split, partition and filter above give; half their time on a
# typical query).
_QUERY_VALUES = re.compile(rb"(?:^|&)[^&=]*=([^&]+)")


def _uri_and_args(target: str) -> tuple[bytes, list[bytes]]:
    """uri_and_args() of any target, each part decoded as it needs."""
    path, query = split_target(target)
    out = value(path)
    if query is not None:
        out += b"?" + value(query, form=True)
    return out, (form_values(query) if query else [])


def form_values(data: bytes) -> list[bytes]:
    """Values of an application/x-www-form-urlencoded text (first MAX_ARGS)."""
    out = []
    for part in data.split(b"&", MAX_ARGS)[:MAX_ARGS]:
        _, _, v = part.partition(b"=")
        if v:
            out.append(value(v, form=True))
    return out


def body(data: bytes, content_type: str | None) -> bytes:
    """A request body as the "body" field. Form posts are decoded like a
    query; JSON's ``\\uXXXX`` escapes are decoded (a JSON parser hands the
    application ``<``, not ``\\u003c``); anything else is scanned as sent.
    No slash rules: backslashes in bodies are mostly string escapes."""
    ct = (content_type or "").lower()
    if "x-www-form-urlencoded" in ct:
        return _text_forms(url_decode(data.replace(b"+", b" ")))
    if "json" in ct and b"\\u" in data:
        data = _JSON_ESCAPE.sub(lambda m: _unescape_json(int(m.group(1), 16)), data)
    return _text_forms(data)


def _unescape_json(cp: int) -> bytes:
    if 0xD800 <= cp <= 0xDFFF:          # half of a surrogate pair: not worth pairing up here
        return _REPLACEMENT
    return chr(cp).encode()
