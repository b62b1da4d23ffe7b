"""A reload's L7 allow-lists reach a running worker: the daemon's
WorkerSet.send_l7 (a memfd over the worker's socket) and Worker._control
compiling them and swapping them into its engine. And the daemon's reload
compiles them before the kernel's flip (a bad list changes nothing)."""
from __future__ import annotations

import asyncio
import os
import socket
import types

from appliance.workers import Worker, WorkerSet
from slowpath.l7allow import L7Policy

SPEC = {"3": {"label": "web", "l7": {"http": [{"path": "/v2/.*"}]}}}


class EngineStub:
    def __init__(self):
        self.swapped = []

    def set_l7(self, pol):
        self.swapped.append(pol)


def test_send_l7_reaches_the_worker_engine():
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        ws = WorkerSet(types.SimpleNamespace(), [None], on_eve=lambda *a: None, on_report=lambda *a: None,
                       on_exit=lambda *a: None)
        ws._socks[0] = mine
        ws.send_l7(SPEC)
        w = object.__new__(Worker)
        w.index, w.sock, w.ctx, w.engine = 0, theirs, types.SimpleNamespace(l7=None), EngineStub()
        theirs.setblocking(False)
        before = set(os.listdir("/proc/self/fd"))
        stop = asyncio.Event()
        w._control(stop)
        assert not stop.is_set()
        (pol,) = w.engine.swapped
        assert isinstance(pol, L7Policy) and pol.get(3).label == "web" and w.ctx.l7 is pol
        assert set(os.listdir("/proc/self/fd")) <= before          # the memfd was closed
        # an ordinary message still works after it: the daemon closing its end stops the worker
        mine.close()
        w._control(stop)
        assert stop.is_set()
    finally:
        theirs.close()
