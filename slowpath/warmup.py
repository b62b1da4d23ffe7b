"""Warm the slow path's code before the first real flow reaches it.

A Python process pays for a lot the first time a path runs: protocol
plugins imported and their dataclasses built, regexes compiled into
``re``'s cache, the first EVE records encoded, dpkt's packet classes set
up. In `microseg run` that bill went to the first inspected connection
each worker saw: its verdict came 2-5 ms late (14 ms once; the lab's
async verdict p50 is ~0.16 ms), and the first held request waited as
long. Taken from one connection in a few hundred, that alone put the
benchmark's verdict p99 over 1 ms (docs/performance.md 4.6.1).

``warm_up`` runs a few synthetic connections (an HTTP request and
response, inspected async and held, then their kernel session ends)
through a throwaway Engine with the real rules, plugins and allow-lists,
and nothing real behind it: no verdict map, no socket, no sink, no
metrics. The daemon calls it once before it forks its workers, so what it
loaded is shared by every worker, a restarted one too.
"""
from __future__ import annotations

import collections
import socket
import time

from datapath.enums import INSPECT, InspState
from datapath.flowevents import FlowEnd
from slowpath.eve_sinks import EveLog
from slowpath.flowend import POL_INSPECT
from slowpath.inject import Injector
from slowpath.records import InspRecord, session_ref

# Addresses from TEST-NET-1 and -2 (RFC 5737): nothing real has them, and
# no packet is sent to them anyway.
_CLIENT, _SERVER = "192.0.2.1", "198.51.100.1"
_REQUEST = (b"GET /index.html?item=1 HTTP/1.1\r\nHost: warm.example\r\nUser-Agent: microseg-warmup\r\n"
            b"Accept: */*\r\n\r\n")
_BODY = b"<html>" + b"catalogue " * 100 + b"</html>\n"
_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: warmup\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n"
             % len(_BODY)) + _BODY
_TCP_FIN_ACK, _TCP_PSH_ACK = 0x11, 0x18
# A kernel session key's length (struct ms_flow_key); the engine takes it as opaque bytes.
_KEY_BYTES = 40


class _NoVerdicts:
    def verdict(self, key, code) -> int:
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class _NoSocket:
    def sendto(self, data, addr) -> int:
        return len(data)

    def close(self) -> None:
        pass


class _BuildOnly(Injector):
    """Builds the packets (dpkt) a hold verdict sends, sends nothing."""

    def _sock(self, family: int):
        return _NoSocket()


def _connection(engine, port: int, inspect: int, wall) -> None:
    client, server = (_CLIENT, port), (_SERVER, 80)
    key = port.to_bytes(2, "big").rjust(_KEY_BYTES, b"\0")
    ref = session_ref(key, 1)
    c_seq, s_seq = 1001, 5001

    def rec(side, seq, ack, flags, data):
        return InspRecord(time.clock_gettime_ns(time.CLOCK_MONOTONIC), ref, client, server, side, seq & 0xFFFFFFFF,
                          ack & 0xFFFFFFFF, flags, socket.IPPROTO_TCP, 0, inspect, 0, 0, len(data), data)

    engine.handle_batch([rec(0, c_seq, s_seq, _TCP_PSH_ACK, _REQUEST)])
    c_end, s_end = c_seq + len(_REQUEST), s_seq + len(_RESPONSE)
    engine.handle_batch([rec(1, s_seq, c_end, _TCP_PSH_ACK, _RESPONSE),
                         rec(1, s_end, c_end, _TCP_FIN_ACK, b""),
                         rec(0, c_end, s_end + 1, _TCP_FIN_ACK, b"")])
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    engine.session_end(FlowEnd("closed", "CT_TIME_WAIT", socket.IPPROTO_TCP, client, server, now, now,
                               (4, 4), (len(_REQUEST), len(_RESPONSE)), 0, 1, 0, POL_INSPECT, inspect,
                               int(InspState.INSP_DONE), 0, 0, 0, key), wall)


def warm_up(rules, *, plugins=None, app_names=None, l7=None, inspect_budget=None, wall=None) -> dict:
    """Run the synthetic connections (see the module's doc) through a
    throwaway Engine; touches nothing outside this process. Returns what
    ran: verdicts by name, held records sent on (built only), EVE records
    by event type."""
    from slowpath.engine import Engine   # slowpath.engine imports much; callers have it loaded already
    every = INSPECT["DPI"] | INSPECT["WAF"] | INSPECT["DLP"]
    events: collections.Counter = collections.Counter()
    log = EveLog()

    def emit(record) -> None:
        events[record.get("event_type")] += 1
        log.emit(record)              # encoded, as the workers' EveLog does; no sink

    engine = Engine(rules, emit, _NoVerdicts(), injector=_BuildOnly(), plugins=plugins,
                    app_names=app_names, inspect_budget=inspect_budget, kernel_flow_records=True, l7=l7)
    wall = wall or (lambda ns: time.time())
    for n, inspect in enumerate((every, every | INSPECT["HOLD"])):
        _connection(engine, 40000 + n, inspect, wall)
    engine.close_all("shutdown")
    return {"verdicts": dict(engine.counters.verdicts), "injected": engine.counters.injected,
            "events": dict(events)}
