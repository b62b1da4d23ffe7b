"""protocols/tls.py's ClientHello decoded by offset (_client_hello_fields)
gives what the reader-based decoding of 3fd354e gave: the same event, field
for field (SNI, ALPN, versions, suites, extensions, groups, point formats,
signature algorithms, JA3 string and hash, JA4), or the same error message,
on seeded ClientHellos and seeded mutations of them (lengths off by one,
truncations, flipped bytes, duplicated and surplus extensions, GREASE).

The old module is 3fd354e's protocols/tls.py, read with `git show` into a
temporary module (skipped when the repository's history is not there). The
corpus's hellos are compared the same way in
tests/corpus/test_corpus_tls_hello_fast.py.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from protocols import tls
from protocols.api import Direction

REPO = Path(__file__).resolve().parents[2]
# The last commit whose ClientHello decoding was the _Reader walk throughout
# (and whose JA3/JA4 builders were the per-entry ones).
OLD_COMMIT = "3fd354e"
SEED = 1407
GREASE = [0x0A0A + 0x1010 * i for i in range(16)]


def load_module_at(commit: str, relpath: str, tmp_dir: Path):
    """The file ``relpath`` of ``commit`` as a module of its own, or None
    when the repository's history is not there."""
    try:
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{relpath}"],
                              capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    name = f"{Path(relpath).stem}_old_{commit}"
    path = tmp_dir / f"{name}.py"
    path.write_bytes(text)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod                # dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(name, None)
    return mod


def load_old(tmp_dir: Path):
    """3fd354e's protocols/tls.py as a module of its own, or None."""
    return load_module_at(OLD_COMMIT, "protocols/tls.py", tmp_dir)


@pytest.fixture(scope="module")
def old_tls(tmp_path_factory):
    mod = load_old(tmp_path_factory.mktemp("tls_old"))
    if mod is None:
        pytest.skip(f"git history with {OLD_COMMIT} not available")
    return mod


def outcome(mod, body: bytes, retry: bool = False, transport: str = "t"):
    """('ok', fields) or ('bad', message) of one module's _client_hello."""
    try:
        ev = mod._client_hello(body, Direction.TO_SERVER, 0x0301, retry, transport)
    except mod._Bad as e:
        return ("bad", str(e))
    return ("ok", {f.name: getattr(ev, f.name) for f in dataclasses.fields(ev)})


# --- Seeded ClientHellos ----------------------------------------------------
def u16s(values) -> bytes:
    return struct.pack(f">{len(values)}H", *values)


def vec(data: bytes, len_bytes: int) -> bytes:
    return len(data).to_bytes(len_bytes, "big") + data


def ext(kind: int, data: bytes) -> bytes:
    return struct.pack(">HH", kind, len(data)) + data


def some(rng: random.Random, pool, most: int, grease: bool) -> list[int]:
    out = rng.sample(pool, rng.randint(0, min(most, len(pool))))
    if grease and rng.random() < 0.5:
        out.insert(rng.randint(0, len(out)), rng.choice(GREASE))
    return out


def hello(rng: random.Random) -> bytes:
    """A well-formed ClientHello body with a random mix of what browsers,
    libraries and scanners send."""
    grease = rng.random() < 0.6
    suites = some(rng, list(range(1, 0x100)) + [0x1301, 0x1302, 0x1303, 0xC02B, 0xCCA9],
                  rng.choice([5, 20, 60, 400]), grease) or [0x1301]
    exts: list[bytes] = []
    kinds = []
    if rng.random() < 0.8:
        names = [(0, bytes(rng.choice(b"abcxyz.-09") for _ in range(rng.randint(0, 30))))]
        if rng.random() < 0.2:
            names.insert(0, (rng.randint(1, 255), b"other"))
        if rng.random() < 0.1:
            names.append((0, b"second.example"))
        if rng.random() < 0.05:
            names = []
        exts.append(ext(0, vec(b"".join(bytes([t]) + vec(n, 2) for t, n in names), 2)))
        kinds.append(0)
    if rng.random() < 0.7:
        protos = [rng.choice([b"h2", b"http/1.1", b"h3", b"\x00x", b"a\xff", b"x"])
                  for _ in range(rng.randint(1, 4))]
        exts.append(ext(16, vec(b"".join(vec(p, 1) for p in protos), 2)))
        kinds.append(16)
    if rng.random() < 0.8:
        exts.append(ext(10, vec(u16s(some(rng, [23, 24, 25, 29, 30, 0x11EC], 6, grease)), 2)))
        kinds.append(10)
    if rng.random() < 0.6:
        exts.append(ext(11, vec(bytes(rng.sample(range(3), rng.randint(0, 3))), 1)))
        kinds.append(11)
    if rng.random() < 0.8:
        exts.append(ext(13, vec(u16s(some(rng, [0x0403, 0x0804, 0x0401, 0x0503, 0x0805,
                                                   0x0806, 0x0601, 0x0201], 8, grease)), 2)))
        kinds.append(13)
    if rng.random() < 0.7:
        exts.append(ext(43, vec(u16s(some(rng, [0x0304, 0x0303, 0x0302, 0x7F1C], 4, grease)), 1)))
        kinds.append(43)
    for kind in rng.sample([5, 18, 21, 23, 27, 35, 45, 51, 17513, 65281, 0xFE0D, 0x3344],
                           rng.randint(0, 8)):
        exts.append(ext(kind, bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))))
        kinds.append(kind)
    if grease and rng.random() < 0.7:
        exts.insert(0, ext(rng.choice(GREASE), b""))
    rng.shuffle(exts)
    block = b"".join(exts)
    tail = vec(block, 2) if exts or rng.random() < 0.5 else b""
    return (rng.choice([0x0303, 0x0301, 0x0300, 0x0302]).to_bytes(2, "big")
            + bytes(rng.randrange(256) for _ in range(32))
            + vec(bytes(rng.randint(0, 32)), 1)
            + vec(u16s(suites), 2)
            + vec(bytes([0] + ([1] if rng.random() < 0.1 else [])), 1)
            + tail)


def mutate(rng: random.Random, body: bytes) -> bytes:
    b = bytearray(body)
    how = rng.randrange(7)
    if how == 0:                               # truncate
        return bytes(b[:rng.randrange(len(b))])
    if how == 1:                               # flip bytes
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if how == 2:                               # a byte more or less somewhere
        i = rng.randrange(len(b))
        return bytes(b[:i] + b[i + 1:]) if rng.random() < 0.5 else bytes(b[:i] + b"\x00" + b[i:])
    if how == 3:                               # trailing bytes
        return bytes(b) + bytes(rng.randint(1, 3))
    if how == 4:                               # a length field +-1 (any 2-byte run)
        i = rng.randrange(len(b) - 1)
        v = (b[i] << 8 | b[i + 1]) + rng.choice([-1, 1])
        b[i:i + 2] = (v & 0xFFFF).to_bytes(2, "big")
        return bytes(b)
    if how == 5:                               # session id length out of range
        b[34] = rng.choice([33, 255, b[34] + 1])
        return bytes(b)
    # An extension block with a duplicate, or more extensions than allowed.
    many = rng.choice([2, 127, 128, 129, 300])
    extra = b"".join(ext(0xF000 + (i if many > 2 else 0), b"") for i in range(many))
    return _with_exts(body, extra)


def _with_exts(body: bytes, extra: bytes) -> bytes:
    """body's hello with ``extra`` extensions in place of its own."""
    sid = body[34]
    pos = 35 + sid
    pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
    pos += 1 + body[pos]
    return body[:pos] + vec(extra, 2)


def test_seeded_hellos_and_mutations_decode_as_before(old_tls):
    rng = random.Random(SEED)
    fast = checked = 0
    for i in range(1500):
        body = hello(rng)
        transport = rng.choice("tq")
        for case in [body] + [mutate(rng, body) for _ in range(4)]:
            want = outcome(old_tls, case, i % 5 == 0, transport)
            got = outcome(tls, case, i % 5 == 0, transport)
            assert got == want, f"hello {i}: {case.hex()}"
            if tls._client_hello_fields(case) is None:
                checked += 1
            else:
                fast += 1
                assert want[0] == "ok"
    # Both paths ran: every unmutated hello went by offset, the broken ones
    # to the checked reader.
    assert fast >= 1500 and checked >= 1500, (fast, checked)


def test_fingerprint_builders_as_before(old_tls):
    """ja3_string / ja4 on lists with GREASE anywhere, empty lists, lists
    past JA4's 99 and the extensions JA4 leaves out."""
    rng = random.Random(SEED + 1)
    for _ in range(3000):
        def lst(most):
            # Now and then a value past 16 bits: ja4() is public.
            return [rng.choice(GREASE) if rng.random() < 0.15
                    else rng.randrange(0x20000 if rng.random() < 0.01 else 0x10000)
                    for _ in range(rng.randint(0, most))]
        exts = lst(30) + rng.sample([0, 16, 10, 13], rng.randint(0, 4))
        args = dict(legacy_version=rng.choice([0x0303, 0x0301, 0x7F00]), versions=lst(4),
                    ciphers=lst(rng.choice([3, 120])), extensions=tuple(exts), sig_algs=lst(10),
                    first_alpn=rng.choice([None, b"", b"h2", b"\x01x", b"q\xff"]),
                    transport=rng.choice("tq"))
        assert tls.ja4(**args) == old_tls.ja4(**args)
        j3 = (args["legacy_version"], args["ciphers"], exts, lst(8), bytes(lst(3) and [0, 1]))
        assert tls.ja3_string(*j3) == old_tls.ja3_string(*j3)
        assert tls.ja3s_string(0x0303, 0x1301, exts) == old_tls.ja3s_string(0x0303, 0x1301, exts)
