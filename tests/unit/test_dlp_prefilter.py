"""DLP's Hyperscan prefilter (slowpath/dlp.py DlpPrefilter): which detectors
run their regex on a chunk. It must never change a hit: same hits, values and
order with and without it, whatever the body and however it is cut."""
from __future__ import annotations

import random

import pytest

from protocols.api import Direction
from protocols.http import HttpBody, HttpMessageEnd, HttpRequest, HttpResponse
from slowpath import dlp
from slowpath.dlp import CARD_RANGES, DETECTORS, DlpPrefilter, Detector, luhn_ok
from slowpath.rulesfile import load_rules_text

C2S, S2C = Direction.TO_SERVER, Direction.TO_CLIENT

# Several rules, detector subsets and directions: each direction has its own
# prefilter of its own detectors.
RULES = """dlp:
  - {name: cards, detectors: [credit_card], direction: both}
  - {name: ids, detectors: [us_ssn, aws_access_key], direction: request}
  - {name: out, detectors: [pem_private_key, credit_card, us_ssn], direction: response, action: alert}
"""
SEED = 20261207
TRIALS = 400          # bodies per direction; ~1 s together


def _load(monkeypatch, on: bool):
    monkeypatch.setattr(dlp, "USE_PREFILTER", on)
    return load_rules_text(RULES, "prefilter.yaml")


def _card(rng: random.Random, valid: bool) -> str:
    lo, hi, lengths = rng.choice(CARD_RANGES)
    prefix = str(rng.randint(lo, hi))
    n = rng.choice(sorted(lengths))
    body = prefix + "".join(rng.choice("0123456789") for _ in range(n - len(prefix) - 1))
    last = next(c for c in "0123456789" if luhn_ok(body + c) == valid)
    digits = body + last
    sep = rng.choice(["", "", " ", "-"])
    if sep:
        step = rng.choice([4, 3, 5])
        digits = sep.join(digits[i:i + step] for i in range(0, len(digits), step))
    return digits


def _value(rng: random.Random) -> str:
    k = rng.randrange(9)
    if k < 3:
        return _card(rng, valid=k != 0)
    if k == 3:
        return f"{rng.randint(0, 999):03d}-{rng.randint(0, 99):02d}-{rng.randint(0, 9999):04d}"
    if k == 4:
        return rng.choice(["AKIA", "ASIA", "AKIB"]) + "".join(
            rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(rng.choice([15, 16, 17])))
    if k == 5:
        kind = rng.choice(["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED ", "rsa "])
        return f"-----BEGIN {kind}PRIVATE KEY-----\nMIIE"
    if k == 6:
        return "".join(rng.choice("0123456789 -") for _ in range(rng.randint(5, 40)))
    if k == 7:
        return "-----BEGIN CERTIFICATE-----"
    return str(rng.randint(0, 10 ** rng.randint(1, 20)))


def _body(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(0, 6)):
        parts.append("".join(rng.choice("abcxyz =&:\n0123456789-AKS") for _ in range(rng.randint(0, 300))))
        parts.append(_value(rng))
    return "".join(parts).encode()


def _cuts(rng: random.Random, body: bytes) -> list[bytes]:
    if not body:
        return []
    cuts = sorted(rng.sample(range(1, len(body) + 1), min(len(body), rng.randint(0, 8))))
    out, prev = [], 0
    for c in cuts + [len(body)]:
        if c > prev:
            out.append(body[prev:c])
        prev = c
    return out


def _hits(rs, d: Direction, chunks: list[bytes]):
    insp = rs.flow({"dlp"})
    req = HttpRequest(C2S, "POST" if d == C2S else "GET", "/", "HTTP/1.1", "app.example", None,
                      None, (), None, False, (), 0)
    evs = [req]
    if d == S2C:
        evs += [HttpMessageEnd(C2S, 0, 0),
                HttpResponse(S2C, 200, "OK", "HTTP/1.1", "text/plain", (), "GET", None, False, (), 0)]
    evs += [HttpBody(d, c) for c in chunks]
    total = sum(map(len, chunks))
    evs.append(HttpMessageEnd(d, total, total))
    out = []
    for ev in evs:
        out += insp.feed(ev)
    return out + insp.close()


@pytest.mark.parametrize("d", [C2S, S2C])
def test_same_hits_with_and_without_prefilter(monkeypatch, d):
    with_pf, without = _load(monkeypatch, True), _load(monkeypatch, False)
    assert with_pf._dlp_prefilter[d] is not None and without._dlp_prefilter[d] is None
    rng = random.Random(SEED + int(d))
    seen = 0
    for _ in range(TRIALS):
        chunks = _cuts(rng, _body(rng))
        want = _hits(without, d, chunks)
        assert _hits(with_pf, d, chunks) == want, chunks
        seen += len(want)
    assert seen > TRIALS // 4          # the bodies do carry hits


def test_prefilter_keeps_every_detector_whose_regex_matches():
    """A detector left out while its regex matches would be a lost hit."""
    pf = DlpPrefilter(tuple(DETECTORS))
    rng = random.Random(SEED)
    checked = set()
    for _ in range(3000):
        buf = _body(rng)
        may = pf.candidates(buf)
        for name, det in DETECTORS.items():
            if det.regex.search(buf):
                assert name in may, (name, buf)
                checked.add(name)
    assert checked == set(DETECTORS)
    # And it does filter: nothing DLP-like, no detector runs.
    assert pf.candidates(b"hello world, nothing to see " * 100) == set()
    assert pf.candidates(b"card 4111 1111 1111 1111") == {"credit_card"}


def test_pattern_hyperscan_refuses_always_runs(monkeypatch):
    # "(?a)" is Python's; Hyperscan refuses it even in prefilter mode.
    odd = Detector("odd", 299999, __import__("re").compile(rb"(?a)zz"), lambda m: "zz", 2, "test")
    monkeypatch.setitem(DETECTORS, "odd", odd)
    pf = DlpPrefilter(("credit_card", "odd"))
    assert pf.always == {"odd"}
    assert pf.candidates(b"nothing") == {"odd"}
