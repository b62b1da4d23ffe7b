"""Fuzz the SMTP and MQTT parsers through the plugin API (issue 17 item 6).

Each parser is the one the appliance uses: ``registry.by_name()[name]
.parser_factory('tcp')``, a fresh one per input. Inputs are:

- valid conversations built here: SMTP sessions (greeting, EHLO and its
  extensions, AUTH PLAIN/LOGIN exchanges, pipelined MAIL/RCPT/DATA, messages
  with headers and dot-stuffing, BDAT chunks, RSET/NOOP/VRFY, STARTTLS
  followed by TLS bytes, QUIT); MQTT 3.1 / 3.1.1 / 5.0 connections (CONNECT
  with will, user and password, v5 properties, CONNACK, PUBLISH at every
  QoS with acknowledgements, SUBSCRIBE/UNSUBSCRIBE and their acks, PING,
  DISCONNECT, AUTH);
- hostile ones: SMTP lines at and past MAX_LINE_BYTES, replies of
  thousands of lines, a client that never waits for 354 or the STARTTLS
  answer, multi-megabyte messages without line ends, BDAT sizes of 2^40;
  MQTT remaining lengths of 5 bytes and of 256 MB, thousands of topics in
  one SUBSCRIBE, property lengths past the packet, PUBLISH payloads of
  megabytes;

each mutated (bit flips, byte sets, truncation, insertion, deletion,
duplication, splicing) and fed in random splits, the two directions
interleaved, with an occasional gap and the connection's end.

What must hold: no exception (bad input is a Malformed event, never a
raise); no hang (CPU time per call and per input: an input over
MAX_INPUT_SECONDS of CPU is interrupted and counted); bounded memory (each
side's held bytes never above its ``max_buffered``, checked after every
call; tracemalloc's peak on the hostile inputs and a sample of the others;
RSS growth over the run). Exits 1 on any violation. Input i of a run is
reproducible: ``--seed S --only i``.

    .venv/bin/python bench/fuzz_smtp_mqtt.py                      # 1,000,000 inputs each
    .venv/bin/python bench/fuzz_smtp_mqtt.py --inputs 20000 --seed 7 --protocol smtp
    .venv/bin/python bench/fuzz_smtp_mqtt.py --jobs 2
"""
from __future__ import annotations

import base64
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fuzzrun  # noqa: E402
from protocols import smtp  # noqa: E402
from protocols.api import Direction  # noqa: E402

C, S = Direction.TO_SERVER, Direction.TO_CLIENT

# CPU seconds one input may take before it counts as a hang (and is
# interrupted): the largest hostile input (a few MB) is read in well under one.
MAX_INPUT_SECONDS = 10.0
# The most CPU one receive_* call may take: per-call work is bounded by
# the line and packet-head caps.
MAX_CALL_SECONDS = 2.0
# tracemalloc peak while the parser reads one input: its buffers (a 4 KiB
# line or 8 KiB packet head per side, a 16 KiB header block) and events,
# plus what one call briefly holds: the slice fed (up to a whole 3 MB
# hostile step) and its copy appended to the side's buffer before the
# parser consumes it (StreamSide.accept). What stays held between calls is
# checked exactly, against each side's max_buffered, after every call.
MAX_PEAK_MB = 8.0
# RSS the whole run may add (interpreter arenas, caches); a leak of a buffer
# per input would pass it within thousands of inputs.
MAX_RSS_GROWTH_MB = 256
HOSTILE_EVERY = 250           # one input in this many is a hostile one
TRACE_EVERY = 499             # and one in this many is traced (prime: not in step with the above)


# --- SMTP ---------------------------------------------------------------------------
def _word(rng: random.Random, n: int = 8) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randrange(1, n)))


def _addr(rng: random.Random) -> str:
    return f"{_word(rng)}@{_word(rng)}.{rng.choice(('org', 'com', 'net'))}"


def _message(rng: random.Random) -> bytes:
    head = [f"Subject: {_word(rng, 30)}", f"From: <{_addr(rng)}>", f"To: {_addr(rng)}",
            f"Message-Id: <{_word(rng)}@{_word(rng)}>", "Received: from x\r\n\tby y"]
    rng.shuffle(head)
    body = [rng.choice((".dot", "..", "", _word(rng, 70), "x" * rng.randrange(0, 1200)))
            for _ in range(rng.randrange(0, 30))]
    return ("\r\n".join(head) + "\r\n\r\n" + "\r\n".join(body) + "\r\n").encode()


def smtp_valid(rng: random.Random) -> list[tuple[Direction, bytes]]:
    out = [(S, b"220 mx.example.org ESMTP ready\r\n")]
    ehlo = rng.choice(("EHLO", "HELO", "ehlo"))
    out += [(C, f"{ehlo} {_word(rng)}.example\r\n".encode()),
            (S, b"250-mx\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n")]
    if rng.random() < 0.3:
        if rng.random() < 0.5:
            out += [(C, b"AUTH PLAIN " + base64.b64encode(b"\0u\0p") + b"\r\n"), (S, b"235 ok\r\n")]
        else:
            out += [(C, b"AUTH LOGIN\r\n"), (S, b"334 VXNlcm5hbWU6\r\n"), (C, b"dQ==\r\n"),
                    (S, b"334 UGFzc3dvcmQ6\r\n"), (C, b"cA==\r\n"), (S, b"235 ok\r\n")]
    for _ in range(rng.choice((1, 1, 2, 3))):
        rcpts = [_addr(rng) for _ in range(rng.randrange(1, 4))]
        cmds = f"MAIL FROM:<{_addr(rng)}> SIZE={rng.randrange(9999)}\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts)
        if rng.random() < 0.2:
            msg = _message(rng)
            cut = rng.randrange(len(msg) + 1)
            out += [(C, cmds.encode() + f"BDAT {cut}\r\n".encode() + msg[:cut]
                     + f"BDAT {len(msg) - cut} LAST\r\n".encode() + msg[cut:]),
                    (S, b"250 ok\r\n" * (len(rcpts) + 3))]
            continue
        if rng.random() < 0.6:      # pipelined
            out += [(C, cmds.encode() + b"DATA\r\n"), (S, b"250 ok\r\n" * (len(rcpts) + 1) + b"354 go\r\n")]
        else:
            for line in cmds.encode().split(b"\r\n")[:-1]:
                out += [(C, line + b"\r\n"), (S, rng.choice((b"250 ok\r\n", b"550 no\r\n")))]
            out += [(C, b"DATA\r\n"), (S, rng.choice((b"354 go\r\n", b"554 no valid recipients\r\n")))]
            if out[-1][1].startswith(b"554"):
                continue
        out += [(C, _message(rng) + b".\r\n"), (S, b"250 queued\r\n")]
        if rng.random() < 0.3:
            out += [(C, rng.choice((b"RSET\r\n", b"NOOP\r\n", b"VRFY x\r\n"))), (S, b"250 ok\r\n")]
    if rng.random() < 0.15:
        out += [(C, b"STARTTLS\r\n"), (S, b"220 go ahead\r\n"),
                (C, b"\x16\x03\x01\x00\x30" + rng.randbytes(48)), (S, b"\x16\x03\x03\x00\x10" + rng.randbytes(16))]
    else:
        out += [(C, b"QUIT\r\n"), (S, b"221 bye\r\n")]
    return out


def smtp_hostile(rng: random.Random) -> list[tuple[Direction, bytes]]:
    kind = rng.randrange(7)
    greet = (S, b"220 mx ESMTP\r\n")
    if kind == 0:
        n = smtp.MAX_LINE_BYTES + rng.randrange(-3, 4)
        return [greet, (C, b"MAIL FROM:<" + b"a" * n + b">\r\n")]
    if kind == 1:
        return [greet, (C, b"EHLO x\r\n"), (S, b"250-x\r\n" * rng.randrange(900, 1200) + b"250 y\r\n")]
    if kind == 2:
        return [greet, (C, b"DATA\r\n" + b"x" * rng.randrange(1, 3 * smtp.MAX_BUFFERED_BYTES))]
    if kind == 3:
        return [greet, (C, b"STARTTLS\r\n" + rng.randbytes(rng.randrange(1, 3 * smtp.MAX_BUFFERED_BYTES)))]
    if kind == 4:
        return [greet, (C, b"DATA\r\n"), (S, b"354 go\r\n"), (C, b"y" * rng.randrange(1 << 20, 3 << 20))]
    if kind == 5:
        return [greet, (C, f"BDAT {rng.choice((1 << 40, (1 << 40) + 1, 10 ** 14))} LAST\r\n".encode()
                        + rng.randbytes(100))]
    return [greet, (C, b"\r\n" * rng.randrange(1000, 5000)), (S, b"500 what\r\n" * 3000)]


# --- MQTT ---------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pkt(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _s(b: str | bytes) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return len(b).to_bytes(2, "big") + b


def _props(rng: random.Random, v5: bool) -> bytes:
    if not v5:
        return b""
    p = rng.choice((b"", b"\x11\x00\x00\x00\x3c", b"\x26" + _s("k") + _s("v"), b"\x01\x01\x03" + _s("text/plain")))
    return _varint(len(p)) + p


def mqtt_valid(rng: random.Random) -> list[tuple[Direction, bytes]]:
    level = rng.choice((3, 4, 4, 5))
    v5 = level == 5
    flags = 0x02 | rng.choice((0, 0x80 | 0x40, 0x80)) | rng.choice((0, 0x04 | (rng.randrange(3) << 3) | 0x20))
    body = _s("MQIsdp" if level == 3 else "MQTT") + bytes([level, flags]) + rng.randrange(65536).to_bytes(2, "big")
    body += _props(rng, v5) + _s(_word(rng, 23))
    if flags & 0x04:
        body += _props(rng, v5) + _s(_word(rng)) + _s(rng.randbytes(rng.randrange(50)))
    if flags & 0x80:
        body += _s(_word(rng))
    if flags & 0x40:
        body += _s(rng.randbytes(8))
    out = [(C, _pkt(0x10, body)), (S, _pkt(0x20, b"\x00" + bytes([rng.choice((0, 0, 5))]) + _props(rng, v5)))]
    pid = 1
    for _ in range(rng.randrange(1, 8)):
        op = rng.randrange(6)
        side, other = (C, S) if rng.random() < 0.6 else (S, C)
        if op <= 2:
            qos = rng.randrange(3)
            first = 0x30 | (qos << 1) | rng.randrange(2) | (8 if qos and rng.random() < 0.1 else 0)
            payload = rng.randbytes(rng.choice((0, 5, 100, 20000)))
            out.append((side, _pkt(first, _s(_word(rng) + "/" + _word(rng)) + (pid.to_bytes(2, "big") if qos else b"")
                                   + _props(rng, v5) + payload)))
            if qos == 1:
                out.append((other, _pkt(0x40, pid.to_bytes(2, "big"))))
            elif qos == 2:
                out += [(other, _pkt(0x50, pid.to_bytes(2, "big"))), (side, _pkt(0x62, pid.to_bytes(2, "big"))),
                        (other, _pkt(0x70, pid.to_bytes(2, "big")))]
        elif op == 3:
            topics = [_word(rng) + rng.choice(("/#", "/+", "")) for _ in range(rng.randrange(1, 5))]
            out.append((C, _pkt(0x82, pid.to_bytes(2, "big") + _props(rng, v5)
                                + b"".join(_s(t) + bytes([rng.randrange(3)]) for t in topics))))
            out.append((S, _pkt(0x90, pid.to_bytes(2, "big") + _props(rng, v5)
                                + bytes(rng.choice((0, 1, 2, 0x80)) for _ in topics))))
        elif op == 4:
            out.append((C, _pkt(0xA2, pid.to_bytes(2, "big") + _props(rng, v5) + _s(_word(rng)))))
            out.append((S, _pkt(0xB0, pid.to_bytes(2, "big") + (_props(rng, v5) + b"\x00" if v5 else b""))))
        else:
            out += [(C, b"\xc0\x00"), (S, b"\xd0\x00")]
        pid += 1
    if v5 and rng.random() < 0.2:
        out.append((C, _pkt(0xF0, b"\x18" + _props(rng, True))))
    if rng.random() < 0.7:
        out.append((C, _pkt(0xE0, (b"\x00" + _props(rng, True)) if v5 and rng.random() < 0.5 else b"")))
    return out


def mqtt_hostile(rng: random.Random) -> list[tuple[Direction, bytes]]:
    kind = rng.randrange(5)
    if kind == 0:
        return [(C, b"\x30\xff\xff\xff\xff\x7f" + rng.randbytes(100))]
    if kind == 1:       # a 256 MB PUBLISH declared, a few MB sent
        return [(C, b"\x30\xff\xff\xff\x7f" + _s("t") + rng.randbytes(rng.randrange(1 << 20, 3 << 20)))]
    if kind == 2:
        topics = b"".join(_s("t/" + str(i)) + b"\x01" for i in range(rng.randrange(1000, 6000)))
        return [(C, _pkt(0x82, b"\x00\x01" + topics))]
    if kind == 3:       # v5 property lengths past the packet
        c = _pkt(0x10, _s("MQTT") + b"\x05\x02\x00\x3c" + b"\xff\xff\xff\x7f" + _s("x"))
        return [(C, c), (S, _pkt(0x20, b"\x00\x00\xff\xff\x03"))]
    return [(C, _pkt(0x10, _s("MQTT") + b"\x04\xc2\x00\x3c" + _s("x" * 60000) + _s("u" * 5000)))]


GENERATORS = {"smtp": (smtp_valid, smtp_hostile), "mqtt": (mqtt_valid, mqtt_hostile)}


# --- mutation and feeding ------------------------------------------------------------
def mutate(data: bytes, rng: random.Random, other: bytes) -> bytes:
    if not data:
        return rng.randbytes(rng.randrange(1, 64))
    b = bytearray(data)
    op = rng.randrange(8)
    if fuzzrun.edit_anywhere(b, op, rng, (0, 0xFF, 0x7F, 0x80, 0x0A, 0x0D, 0x2E, 0x20, 0x2D), False):
        pass
    elif op == 3:
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.choice((rng.randbytes(rng.randrange(1, 40)), b"\r\n", b"\r\n.\r\n", b"\n", b"250-"))
    elif op == 5:
        at = rng.randrange(len(b))
        b[at:at] = b[at:at + rng.randrange(1, 200)]
    elif op == 6 and other:
        at = rng.randrange(len(b) + 1)
        o = rng.randrange(len(other))
        b[at:at] = other[o:o + rng.randrange(1, 300)]
    return bytes(b)


def make_input(name: str, rng: random.Random, hostile: bool) -> list[tuple[Direction, bytes]]:
    valid, bad = GENERATORS[name]
    steps = bad(rng) if hostile else valid(rng)
    if rng.random() < 0.7:
        blob = b"".join(d for _, d in steps)
        for _ in range(rng.choice((1, 1, 2, 4))):
            i = rng.randrange(len(steps))
            steps[i] = (steps[i][0], mutate(steps[i][1], rng, blob))
    return steps


@dataclass
class Stats(fuzzrun.Stats):
    bytes_fed: int = 0

    @property
    def hostile_inputs(self) -> int:
        return self.kinds["hostile"]


class SmtpMqttTarget(fuzzrun.Target):
    stats = Stats
    clock = "cpu"
    max_input_seconds = MAX_INPUT_SECONDS
    max_call_seconds = MAX_CALL_SECONDS
    max_peak_mb = MAX_PEAK_MB
    max_rss_growth_mb = MAX_RSS_GROWTH_MB
    trace_every = TRACE_EVERY
    trace_hostile = True

    def __init__(self, name: str = "smtp", hostile_every: int = HOSTILE_EVERY) -> None:
        super().__init__()
        self.name = self.protocol = name
        self.hostile_every = hostile_every

    def build(self, ctx, index: int, seed: int):
        rng = random.Random(f"{seed}:{self.name}:{index}")
        hostile = index % self.hostile_every == self.hostile_every - 1
        return ("hostile" if hostile else "valid"), (make_input(self.name, rng, hostile), rng)

    def feed(self, ctx, plan, st: Stats, index: int, verbose: bool = False) -> None:
        steps, rng = plan
        parser = ctx[0]("tcp")
        sides = getattr(parser, "_sides", {})
        seen_eof = set()
        for d, data in steps:
            if d in seen_eof:
                continue
            pos = 0
            while pos < len(data):
                n = rng.choice((1, 2, 7, 64, 1460, 65536, len(data)))
                t0 = time.thread_time()
                events = parser.receive_data(data[pos:pos + n], d)
                st.call(time.thread_time() - t0, index)
                pos += n
                st.count(events, index)
                for side in sides.values():
                    if len(side.buf) > side.max_buffered:
                        st.violations.append(f"input {index}: {side.direction.name} holds {len(side.buf)} bytes, "
                                             f"max_buffered {side.max_buffered}")
            st.bytes_fed += len(data)
            r = rng.random()
            if r < 0.02:
                parser.receive_gap(d, rng.randrange(1, 5000))
            elif r < 0.07:
                parser.receive_eof(d)
                seen_eof.add(d)

    def report(self, st: Stats, seed: int) -> str:
        lines = [f"{self.name}: {st.inputs:,} inputs ({st.hostile_inputs:,} hostile, {st.bytes_fed / 2 ** 20:.0f} MiB), "
                 f"{sum(st.exceptions.values())} exceptions, {len(st.hangs)} hangs, {len(st.violations)} violations, "
                 f"{st.malformed:,} malformed; peak {st.peak_mb:.2f} MB (traced {st.traced_inputs:,}), "
                 f"RSS +{st.rss_growth_mb:.0f} MB; slowest call {st.slowest_call[0] * 1000:.1f} ms CPU; "
                 f"{st.cpu_seconds:.0f} s CPU, {st.seconds:.0f} s wall; {'ok' if st.ok() else 'FAIL'}",
                 "  events: " + ", ".join(f"{k} {v:,}" for k, v in st.events.most_common())]
        lines += st.examples + [f"input {i}: over {MAX_INPUT_SECONDS} s of CPU" for i in st.hangs[:10]]
        lines += st.violations[:10]
        return "\n".join(lines)


def run(inputs: int, seed: int = 1, name: str = "smtp", hostile_every: int = HOSTILE_EVERY, **kw) -> Stats:
    """Inputs of ``seed``'s run of protocol ``name`` (fuzzrun.run's options)."""
    return fuzzrun.run(SmtpMqttTarget(name, hostile_every), inputs, seed, **kw)


def main(argv=None) -> int:
    ap = fuzzrun.arguments(SmtpMqttTarget(), __doc__, seed_default=1)
    ap.add_argument("--protocol", choices=("smtp", "mqtt", "both"), default="both")
    args = ap.parse_args(argv)
    bad = False
    for name in ("smtp", "mqtt") if args.protocol == "both" else (args.protocol,):
        st = fuzzrun.run_args(SmtpMqttTarget(name), args)
        print(SmtpMqttTarget(name).report(st, args.seed))
        bad |= not st.ok()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
