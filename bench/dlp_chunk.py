"""Microseconds per 16 KiB body chunk through the DLP detectors, with and
without the Hyperscan prefilter (slowpath/dlp.py), interleaved rounds, medians.

    python bench/dlp_chunk.py [--rounds 15] [--chunks 200]

Bodies: "text" (JSON-ish, digits in ids and dates, no DLP value), "card"
(the same with one Luhn-valid card number per chunk; each chunk is
one whole response, so the card detector runs and hits every time) and "digits" (every
byte a digit, space or dash: the credit card regex's worst case).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocols.api import Direction  # noqa: E402
from protocols.http import HttpBody, HttpMessageEnd, HttpRequest, HttpResponse  # noqa: E402
from slowpath import dlp  # noqa: E402
from slowpath.rulesfile import load_rules_text  # noqa: E402

CHUNK = 16 * 1024          # the size the brief asks about (a typical socket read)
RULES = ("dlp:\n  - {name: leak, detectors: [credit_card, us_ssn, aws_access_key, pem_private_key],"
         " direction: both}\n")
C2S, S2C = Direction.TO_SERVER, Direction.TO_CLIENT


def bodies(rng: random.Random) -> dict[str, bytes]:
    rec = []
    while sum(map(len, rec)) < CHUNK:
        rec.append(f'{{"id": {rng.randint(1, 10**9)}, "name": "user{rng.randint(1, 9999)}", '
                   f'"created": "2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", '
                   f'"tags": ["a", "b"], "score": {rng.random():.4f}}},\n')
    text = "".join(rec).encode()[:CHUNK]
    card = text[:CHUNK // 2] + b" 4111 1111 1111 1111 " + text[CHUNK // 2 + 21:]
    digits = bytes(rng.choice(b"0123456789 -") for _ in range(CHUNK))
    return {"text": text, "card": card[:CHUNK], "digits": digits}


def per_chunk_us(rs, chunk: bytes, n: int) -> float:
    insp = rs.flow({"dlp"})
    for ev in (HttpRequest(C2S, "GET", "/", "HTTP/1.1", "h", None, None, (), None, False, (), 0),
               HttpMessageEnd(C2S, 0, 0),
               HttpResponse(S2C, 200, "OK", "HTTP/1.1", "text/plain", (), "GET", None, False, (), 0)):
        insp.feed(ev)
    # Each chunk a whole response (a hit is reported once per message: a
    # detector that hit would not run again in the same one).
    ev, end = HttpBody(S2C, chunk), HttpMessageEnd(S2C, len(chunk), len(chunk))
    t = time.perf_counter()
    for _ in range(n):
        insp.feed(ev)
        insp.feed(end)
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--chunks", type=int, default=200)
    a = ap.parse_args()
    rs = {}
    for on in (False, True):
        dlp.USE_PREFILTER = on
        rs[on] = load_rules_text(RULES, "bench.yaml")
    data = bodies(random.Random(1))
    res = {(k, on): [] for k in data for on in (False, True)}
    for r in range(a.rounds):
        for k, chunk in data.items():
            for on in ((False, True) if r % 2 else (True, False)):
                res[k, on].append(per_chunk_us(rs[on], chunk, a.chunks))
    print(f"us per {CHUNK // 1024} KiB chunk, median of {a.rounds} interleaved rounds x {a.chunks} chunks")
    for k in data:
        off, on = statistics.median(res[k, False]), statistics.median(res[k, True])
        print(f"  {k:7s} regexes only {off:8.1f}   prefilter {on:8.1f}   ratio {on / off:5.2f}")


if __name__ == "__main__":
    main()
