"""DLP detectors: what each finds in a body, and how its hit is masked.

Detectors (:data:`DETECTORS`) scan request and/or response bodies chunk by
chunk, keeping the last :data:`DLP_TAIL_BYTES` of each direction so a value
split across two HttpBody events is found once. What they see is what the
HTTP parser emits: at most protocols.http.MAX_BODY_EMIT_BYTES per message,
after chunked decoding but *not* decompressed (a gzip body is not readable
here). One hit per rule and detector per message; a hit's rule_id is the
detector's (credit_card 200001, us_ssn 200002, aws_access_key 200003,
pem_private_key 200004), its rule_name the DLP rule's.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable

import hyperscan

from protocols.api import Direction
from slowpath.hits import shown

# Bytes of each direction's body kept between chunks for DLP, so a value
# cut by a chunk boundary is seen whole. Must exceed the longest thing a
# detector matches (checked below): a PEM header, at most 69 bytes.
DLP_TAIL_BYTES = 128


@dataclass(frozen=True)
class Detector:
    """A named DLP detector. ``check`` takes a regex match and returns the
    text to log (masked where the value is sensitive), or None when the
    candidate is not the real thing (a failed Luhn check)."""
    name: str
    id: int
    regex: re.Pattern
    check: Callable[[re.Match], str | None]
    max_len: int                  # longest match, for DLP_TAIL_BYTES
    description: str


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number carries (ISO/IEC 7812)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Issuer prefixes (IIN ranges) and lengths of the card networks whose
# numbers leak in practice, from the networks' published ranges: (low, high)
# prefixes of equal width, lengths allowed.
CARD_RANGES: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),                 # Visa
    (51, 55, frozenset({16})),                       # Mastercard
    (2221, 2720, frozenset({16})),                   # Mastercard 2-series
    (34, 34, frozenset({15})), (37, 37, frozenset({15})),   # American Express
    (6011, 6011, frozenset(range(16, 20))),          # Discover
    (644, 649, frozenset(range(16, 20))), (65, 65, frozenset(range(16, 20))),
    (3528, 3589, frozenset(range(16, 20))),          # JCB
    (300, 305, frozenset(range(14, 20))), (36, 36, frozenset(range(14, 20))),   # Diners Club
    (38, 39, frozenset(range(16, 20))),
    (62, 62, frozenset(range(16, 20))),              # UnionPay
)


def card_brand_ok(digits: str) -> bool:
    n = len(digits)
    for lo, hi, lengths in CARD_RANGES:
        width = len(str(lo))
        if n in lengths and lo <= int(digits[:width]) <= hi:
            return True
    return False


def _mask_digits(text: str, keep: int = 4) -> str:
    """Every digit but the last ``keep`` as '*', separators kept."""
    total = sum(c.isdigit() for c in text)
    out, seen = [], 0
    for c in text:
        if c.isdigit():
            seen += 1
            out.append(c if seen > total - keep else "*")
        else:
            out.append(c)
    return "".join(out)


def _card(m: re.Match) -> str | None:
    text = m.group().decode("ascii")
    digits = text.replace(" ", "").replace("-", "")
    if not 13 <= len(digits) <= 19 or not card_brand_ok(digits) or not luhn_ok(digits):
        return None
    return _mask_digits(text)


def _ssn(m: re.Match) -> str | None:
    area, group, serial = (int(m.group(i)) for i in (1, 2, 3))
    # Never issued (SSA, "Social Security Number Randomization", 2011): area
    # 000, 666 and 900-999; group 00; serial 0000.
    if area == 0 or area == 666 or area >= 900 or group == 0 or serial == 0:
        return None
    return "***-**-" + m.group(3).decode()


def _as_is(m: re.Match) -> str | None:
    return shown(m.group())


DETECTORS: dict[str, Detector] = {d.name: d for d in (
    Detector("credit_card", 200001,
             # 13-19 digits, a space or dash allowed between any two; not
             # part of a longer digit run.
             re.compile(rb"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])"), _card, 37,
             "payment card numbers: known issuer prefix and length, Luhn-checked; logged with "
             "all but the last 4 digits masked"),
    Detector("us_ssn", 200002,
             re.compile(rb"(?<![0-9-])([0-9]{3})-([0-9]{2})-([0-9]{4})(?![0-9-])"), _ssn, 11,
             "US Social Security numbers written AAA-GG-SSSS, never-issued ranges excluded; "
             "logged as ***-**-SSSS"),
    Detector("aws_access_key", 200003,
             # AKIA: long-term IAM user keys; ASIA: temporary (STS) keys.
             re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"), _as_is, 20,
             "AWS access key ids (AKIA/ASIA + 16); the id is logged whole (it is not the secret, "
             "and it is what finds the key to revoke)"),
    Detector("pem_private_key", 200004,
             re.compile(rb"-----BEGIN (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY-----"), _as_is, 69,
             "PEM private keys (RSA, EC, DSA, OPENSSH, ENCRYPTED, PKCS#8); the header line is logged"),
)}
assert all(d.max_len < DLP_TAIL_BYTES for d in DETECTORS.values())


@dataclass(frozen=True)
class DlpRule:
    """A DLP rule of the rule file: which detectors, on which directions."""
    name: str
    detectors: tuple[str, ...]
    directions: frozenset[Direction]
    action: str
    severity: int


# --- Hyperscan prefilter ----------------------------------------------------------

# Off only for tests that compare hits with and without the prefilter; read
# when a rule set is built (slowpath/inspector.py RuleSet).
USE_PREFILTER = True

# PREFILTER: Hyperscan matches a superset of the pattern (it drops what it
# cannot do, e.g. the lookarounds), so a detector it does not report cannot
# match and its Python regex need not run; the regex and the check decide
# every hit, as without the prefilter. SINGLEMATCH: whether, not where, is
# all that is asked. (SOM_LEFTMOST is refused together with PREFILTER.)
_PREFILTER_FLAGS = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_SINGLEMATCH


class DlpPrefilter:
    """Which of a set of detectors may match a buffer, in one Hyperscan scan.

    Not thread-safe (one scratch space), as the WAF's databases: the slow
    path scans from one thread.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self._db = None
        # Detectors Hyperscan refuses even in prefilter mode always run their
        # regex (none of the built-in ones: each is compiled alone first).
        always = []
        ok = []
        for name in names:
            try:
                hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK).compile(
                    expressions=[DETECTORS[name].regex.pattern], ids=[0], flags=[_PREFILTER_FLAGS])
                ok.append(name)
            except hyperscan.error:
                always.append(name)
        self.always = frozenset(always)
        self._ids = tuple(ok)
        if ok:
            self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            self._db.compile(expressions=[DETECTORS[n].regex.pattern for n in ok],
                             ids=list(range(len(ok))), flags=[_PREFILTER_FLAGS] * len(ok))

    def candidates(self, buf: bytes) -> set[str]:
        """Detectors whose regex may match somewhere in ``buf`` (a superset)."""
        found = set(self.always)
        if self._db is not None and buf:
            ids = self._ids

            def on_match(i, _start, _end, _flags, _ctx):
                found.add(ids[i])

            self._db.scan(buf, match_event_handler=on_match)
        return found


def dlp_prefilter(names: tuple[str, ...]) -> DlpPrefilter | None:
    """The prefilter of a detector set, or None (no detectors, or switched off)."""
    if not names or not USE_PREFILTER:
        return None
    return _compiled_prefilter(names)


@functools.lru_cache(maxsize=16)   # one per direction of a rule set; a reload with the same detectors reuses it
def _compiled_prefilter(names: tuple[str, ...]) -> DlpPrefilter:
    return DlpPrefilter(names)
