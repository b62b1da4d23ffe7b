"""The slow-path engine's work per connection, in process (issue 14 items
3 and 5): what a worker does for each short inspected connection besides
its records' bytes, without the kernel.

Each connection is a fresh key (a new client port): its records go through
Engine.handle_batch one at a time, as a worker's small batches bring them,
then its session end (Engine.session_end, kernel flow records on), every
EVE record encoded (eve.encode, as the worker's EveLog does), verdicts to
a writer that only returns a timestamp. Kinds:

  http  a GET, its 200 response, both FINs (the lab's connection; rules:
        examples/rules.yaml, inspect waf, dlp, dpi async)
  dns   a query and its answer over UDP (inspect dpi)
  tls   a ClientHello and a ServerHello (inspect dpi)

Microseconds of process CPU per connection, median of ``--rounds`` (the
process's objects frozen first, as a worker's are).

``--idle-us US``: the process sleeps US microseconds before every
``--per-wake`` K-th connection (the sleep is no CPU time), as a lab worker
sleeps between the connections of a sequential client: its Python then
runs cold. HTTP, 2026-12-07, load ~4: 117-130 us a connection hot; with
500 us of sleep before each connection 259, every 2nd 206, every 4th 151,
every 8th 128 (50 us: ~175, 5 ms: ~320; 8 MiB of memory touched between
connections instead of a sleep: ~270). A sequential client's worker wakes
once per connection, so it pays that ~130 us a wakeup on each
(docs/performance.md 4.6.1); concurrent clients' connections share wakeups.

    .venv/bin/python bench/engine_conn.py [--conns N] [--rounds N] [--kinds http,dns,tls]
                                          [--idle-us US [--per-wake K]] [--profile FILE]
"""
from __future__ import annotations

import argparse
import gc
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datapath.enums import INSPECT  # noqa: E402
from datapath.flowevents import FlowEnd  # noqa: E402
from slowpath import eve  # noqa: E402
from slowpath.engine import Engine  # noqa: E402
from slowpath.flowend import POL_INSPECT  # noqa: E402
from slowpath.records import InspRecord, session_ref  # noqa: E402
from slowpath.rulesfile import load_rules  # noqa: E402

RULES = Path(__file__).resolve().parent.parent / "examples" / "rules.yaml"
NS = 1_000_000_000
# Connections start a millisecond apart (the lab's rate is ~1,000 a second):
# records of one second share its timestamp text, as a worker's do.
CONN_GAP_NS = 1_000_000
TCP_FIN, TCP_ACK, TCP_PSH = 0x01, 0x10, 0x08
REQ = b"GET /index.html?item=%d HTTP/1.1\r\nHost: 10.77.2.2:8091\r\nAccept-Encoding: identity\r\n\r\n"
RESP = (b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.11.2\r\nDate: Mon, 07 Dec 2026 16:00:00 GMT\r\n"
        b"Content-type: text/html\r\nContent-Length: 22\r\nLast-Modified: Mon, 07 Dec 2026 15:00:00 GMT\r\n\r\n"
        b"<html>hello</html>\r\n\r\n")


def client_hello(sni: bytes) -> bytes:
    ext_sni = b"\x00\x00" + (len(sni) + 5).to_bytes(2, "big") + (len(sni) + 3).to_bytes(2, "big") + b"\x00" \
        + len(sni).to_bytes(2, "big") + sni
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + len(ext_sni).to_bytes(2, "big") \
        + ext_sni
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


def server_hello() -> bytes:
    ext = b"\x00\x2b\x00\x02\x03\x04"          # supported_versions: TLS 1.3
    body = b"\x03\x03" + bytes(range(32)) + b"\x00" + b"\x13\x01" + b"\x00" + len(ext).to_bytes(2, "big") + ext
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + len(hs).to_bytes(2, "big") + hs


def dns_message(name: bytes, qid: int, answer: bool) -> bytes:
    labels = b"".join(len(p).to_bytes(1, "big") + p for p in name.split(b".")) + b"\0"
    q = labels + b"\x00\x01\x00\x01"
    if not answer:
        return qid.to_bytes(2, "big") + bytes.fromhex("01000001000000000000") + q
    rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\x0a\x4d\x02\x02"
    return qid.to_bytes(2, "big") + bytes.fromhex("81800001000100000000") + q + rr


WAF, DLP, DPI = INSPECT["WAF"], INSPECT["DLP"], INSPECT["DPI"]
HTTP_INSPECT, DPI_INSPECT = WAF | DLP | DPI, DPI


class Verdicts:
    """A verdict writer that writes nothing (the engine's own cost only)."""

    def verdict(self, key, code):
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def connection(kind: str, i: int) -> tuple[list[InspRecord], FlowEnd]:
    """Connection ``i`` of ``kind``: its records in order and its session end."""
    sport = 10_000 + i % 50_000
    skey = i.to_bytes(8, "little") + bytes(32)
    cookie = i & 0xFFFFFFFF
    ref = session_ref(skey, cookie)
    client = ("10.77.1.%d" % (2 + i % 200), sport)
    t0 = 5 * NS + i * CONN_GAP_NS
    if kind == "http":
        server, l4, insp, rule = ("10.77.2.2", 8091), socket.IPPROTO_TCP, HTTP_INSPECT, 2
        req, resp = REQ % i, RESP
        sides = [(0, 1001, 5001, TCP_PSH | TCP_ACK, req), (1, 5001, 1001 + len(req), TCP_PSH | TCP_ACK, resp),
                 (0, 1001 + len(req), 5001 + len(resp), TCP_FIN | TCP_ACK, b""),
                 (1, 5001 + len(resp), 1002 + len(req), TCP_FIN | TCP_ACK, b"")]
        pkts, nbytes = (5, 4), (len(req), len(resp))
    elif kind == "dns":
        server, l4, insp, rule = ("10.77.2.53", 53), socket.IPPROTO_UDP, DPI_INSPECT, 3
        name = b"host%d.example.org" % (i % 1000)
        sides = [(0, 0, 0, 0, dns_message(name, i & 0xFFFF, False)), (1, 0, 0, 0, dns_message(name, i & 0xFFFF, True))]
        pkts, nbytes = (1, 1), (len(sides[0][4]), len(sides[1][4]))
    else:
        server, l4, insp, rule = ("10.77.2.3", 443), socket.IPPROTO_TCP, DPI_INSPECT, 4
        ch, sh = client_hello(b"www%d.example.org" % (i % 1000)), server_hello()
        sides = [(0, 1001, 5001, TCP_PSH | TCP_ACK, ch), (1, 5001, 1001 + len(ch), TCP_PSH | TCP_ACK, sh)]
        pkts, nbytes = (6, 5), (len(ch) + 500, len(sh) + 3000)
    recs = [InspRecord(ts_ns=t0 + k * 1000, key=ref, client=client, server=server, side=side, seq=seq, ack_seq=ack,
                       tcp_flags=flags, l4=l4, app=0, inspect=insp, rule_id=rule, hook=0, orig_len=len(data),
                       data=data) for k, (side, seq, ack, flags, data) in enumerate(sides)]
    end = FlowEnd(reason="closed", state="CT_TIME_WAIT" if l4 == socket.IPPROTO_TCP else "CT_ESTABLISHED",
                  proto=l4, client=client, server=server, first_seen_ns=t0, last_seen_ns=t0 + NS // 100,
                  packets=pkts, bytes=nbytes, rule_id=rule, cookie=cookie, pol_gen=1, action=POL_INSPECT,
                  inspect=insp, insp_state=2, app=0, flags=0, worker=0, key=skey)
    return recs, end


def wall(ns: int) -> float:
    return 1_796_000_000 + ns / NS


def make_engine(out: list | None = None):
    """An engine as a worker has it (kernel flow records), every EVE record
    encoded; ``out``: the encoded lines are kept there too."""
    rules = load_rules(RULES)
    if out is None:
        def emit(rec, _enc=eve.encode):
            _enc(rec)
    else:
        def emit(rec, _enc=eve.encode, _add=out.append):
            _add(_enc(rec))
    return Engine(rules, emit, Verdicts(), kernel_flow_records=True, wallclock=lambda: 1_796_000_100.0)


def run(engine: Engine, conns: list, idle_s: float = 0.0, per_wake: int = 1) -> None:
    """Each connection's records one batch each, then its session end;
    ``idle_s``: a sleep before every ``per_wake``-th connection."""
    handle, end = engine.handle_batch, engine.session_end
    for j, (recs, fe) in enumerate(conns):
        if idle_s and j % per_wake == 0:
            time.sleep(idle_s)
        for r in recs:
            handle((r,))
        end(fe, wall)


# Connections of each kind run once before the timed rounds: the first
# flows import parsers and compile the rules' patterns (~35 ms), no worker's
# steady state.
WARM_CONNS = 50


def bench(kinds: list[str], n: int, rounds: int, profile: str | None = None, idle_s: float = 0.0,
          per_wake: int = 1) -> dict[str, float]:
    results: dict[str, list[float]] = {k: [] for k in kinds}
    base = 1 << 20
    for kind in kinds:       # warm: imports, the rules' compiled patterns, caches
        run(make_engine(), [connection(kind, i) for i in range(WARM_CONNS)])
    for _ in range(rounds):
        for kind in kinds:
            conns = [connection(kind, base + i) for i in range(n)]
            base += n
            engine = make_engine()
            gc.collect()
            gc.freeze()
            prof = None
            if profile:
                import cProfile
                prof = cProfile.Profile()
                prof.enable()
            t0 = time.process_time()
            run(engine, conns, idle_s, per_wake)
            dt = time.process_time() - t0
            if prof is not None:
                prof.disable()
                prof.dump_stats(f"{profile}.{kind}")
            gc.unfreeze()
            results[kind].append(dt / n * 1e6)
    return {k: statistics.median(v) for k, v in results.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--kinds", default="http,dns,tls")
    p.add_argument("--idle-us", type=float, default=0.0, help="sleep before connections (not timed)")
    p.add_argument("--per-wake", type=int, default=1, help="connections per sleep with --idle-us")
    p.add_argument("--profile")
    a = p.parse_args(argv)
    if a.per_wake < 1 or a.idle_us < 0:
        p.error("--per-wake must be at least 1 and --idle-us not negative")
    kinds = a.kinds.split(",")
    for k, us in bench(kinds, a.conns, a.rounds, a.profile, a.idle_us / 1e6, a.per_wake).items():
        print(f"{k:5} {us:8.1f} us per connection")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
