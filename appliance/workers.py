"""`microseg run`'s slow-path workers: one process per CPU it may use.

The kernel spreads inspected flows over the workers by a hash of the
session (bpf/lib/inspect.h): worker ``i`` reads ring ``i`` of ms_insp_rings
and beats heartbeat slot ``i`` of ms_slowpath, so every record of a flow
reaches one process, where its reassembly and parser state live. Any
worker writes verdicts (ms_verdicts is one map). Each worker is a process
with its own uvloop loop and its own Engine; Python's GIL would otherwise
keep inspection on one core.

The daemon (appliance/daemon.py) stays the one owner of everything shared:
it forks the workers after bring-up (they inherit the build's map fds and
the compiled layouts, nothing is compiled twice), reads their EVE lines
(LoopForwardSink below sends them) and reports from one SOCK_SEQPACKET
socket each and writes the lines to its sinks, sums their metrics
(slowpath/metrics.py WorkerSeries), and restarts a worker that died. A dead
worker's heartbeat is set to 0 at once, so the kernel applies the
slow-path-down action to its flows only (not after the heartbeat timeout,
and not to the other workers' flows); records left in its ring are read by
the worker started in its place.

Messages from a worker: ``E`` + EVE lines (LoopForwardSink), ``M`` + JSON
report ({"metrics": snapshot, "stats": counters}). To a worker: ``R``
(reload the rules file).
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import logging
import mmap
import os
import re
import signal
import socket
import time
from collections.abc import Callable

import uvloop

# Imported here, in the daemon, before it forks: a worker starts with them
# loaded and beats its heartbeat at once (importing them in the child took
# longer than a short heartbeat timeout on a busy machine).
from appliance.priority import worker_affinity, worker_priority
from datapath.enums import INSPECT
from datapath.source import header_defines
from appliance.flowlog import worker_end
from slowpath.engine import Engine
from slowpath.eve_sinks import (FORWARD_LINE_MAX, FORWARD_MESSAGE_BYTES, FORWARD_TAG_EVE, SINK_CLOSE_TIMEOUT_S,
                                 SINK_QUEUE_RECORDS, EveLog)
from slowpath.inject import Injector
from slowpath.metrics import Metrics, snapshot
from slowpath.records import VerdictWriter, open_payload_channel, session_seq, session_stats
from slowpath.ringbuf import RingBuffer

log = logging.getLogger("microseg.run")

# A worker reports its metrics and counters this often: a scrape is at most
# this stale in its slow-path series.
REPORT_S = 1.0
# Records a worker takes from its ring per wakeup of its loop (then other
# callbacks, the heartbeat among them, get their turn).
RING_BATCH = 1024
# Largest message read from a worker: above eve_sinks.FORWARD_LINE_MAX, so
# one oversize-but-allowed line still fits.
MESSAGE_MAX = 256 * 1024
# A worker that dies is started again after this pause, doubled for each
# death within RESTART_WINDOW_S of the last start (up to the maximum): a
# worker crashing on every start must not spin the machine.
RESTART_MIN_S = 0.2
RESTART_MAX_S = 30.0
RESTART_WINDOW_S = 10.0
# How long a stopping worker may take to drain its ring, close its flows
# and send their EVE records, before it is killed.
STOP_TIMEOUT_S = 15.0
# How long a reload waits for every worker to say it has the new rules in
# force before the daemon logs the reload done anyway (with the workers
# still loading named): a worker compiles the rules file again, ~2.6 s of
# CPU for examples/rules.yaml, several times that on a loaded machine.
RELOAD_CONFIRM_S = 30.0
# A worker's EVE lines wait up to this long to go to the daemon together
# (LoopForwardSink): a send wakes the daemon, and one send per batch of
# records (one connection's at the lab's rate) was ~14% of a worker's
# samples under the lab benchmark (py-spy). 2 ms, measured against sending
# at once: daemon CPU per inspected connection -27%, worker -12%, hold
# verdict p99 no worse. 20 ms halved the daemon's CPU but made the hold
# verdict p99 several times worse: the daemon then took a CPU for
# milliseconds at a time, and the held request's worker waited for it
# (docs/performance.md 4.6.1). A full message (FORWARD_MESSAGE_BYTES) goes
# at once. Since the daemon sends session ends at most every
# FLOW_END_PAUSE_S (5 ms, appliance/flowlog.py) and the worker sends its
# pending lines with that wakeup (send_soon), a timer longer than that
# pause rarely fires under load: the lines go with the session-end wakeup
# instead of waking the daemon once more. 10 ms, A/B against 2 ms (same
# session, load 4-8, 3 interleaved runs each of 1 and 2 workers, now that
# the daemon's EVE sink no longer wakes per line): the daemon's wakeups per
# inspected connection 0.7 -> 0.3 (1 worker) and 0.8 -> 0.5 (2), its
# CPU per connection lower in 4 of the 6 pairs (medians 150 -> 111 us
# with 1 worker, 161 -> 139 with 2), hold verdict p99 within
# the run-to-run noise. Since inspected sessions' ends come through the
# worker's ring (bpf/lib/maps.h MS_CFG_WORKER_ENDS), not from the daemon,
# this timer sends the lines: 0.24 -> 0.11 sends per inspected connection
# in the lab (cProfile call counts, one run each); 5 ms instead, A/B in 6
# interleaved pairs (load 3-4.6): no difference resolved.
FORWARD_FLUSH_S = 0.010
# A worker that read records reads its ring again this long after its last
# read that found records, by a timer (Worker._after_read), and until then
# the kernel does not wake it for records no verdict waits on (a released
# flow's: an async connection's response and FINs;
# bpf/lib/maps.h MS_INSP_BUSY_POLL). An inspected HTTP connection woke the
# worker ~2.6 times in the lab; with the poll ~1.5, and the worker's CPU
# per inspected connection fell 494 -> 403 us (6 interleaved runs each,
# docs/performance.md 4.6.1). The cost: a request read in the same batch
# as the previous connection's deferred records waited for them (hold
# verdict p50 ~130 -> ~250 us in the lab; waiting_first handles it first:
# ~160 us). The bound is how much later
# such a record is read than at once: an async flow's DLP block on its
# response comes up to this much later (async lets packets through while
# the slow path reads them anyway). A poll that finds nothing is not
# repeated, so an idle worker sleeps.
POLL_S = 0.002
# ms_insp_busy's values (bpf/lib/maps.h)
BUSY = header_defines("MS_INSP_BUSY_")
_HOLD_ALL = INSPECT["HOLD_ALL"]   # the kernel holds each of the flow's requests (bpf/lib/inspect.h)
TAG_EVE, TAG_REPORT, TAG_RELOAD = b"E", b"M", b"R"
# daemon -> worker: kernel session-end records (struct ms_flow_event, one or
# more back to back) of sessions hashed to this worker (appliance/flowlog.py)
TAG_FLOW_END = b"F"
# daemon -> worker: a new policy's L7 allow-lists (slowpath/l7allow.py spec
# JSON) in a memfd passed with the message (SCM_RIGHTS): a policy's lists
# may be larger than one message; the worker compiles them and swaps them in.
TAG_L7 = b"P"
PR_SET_PDEATHSIG = 1
_EVENT_TYPE = re.compile(rb'"event_type":"([a-z_0-9]+)"')


# A benchmark's profiling switch (bench/slowpath.py --profile-run DIR sets
# it): the daemon's loop and each worker's run under cProfile, the stats
# written to DIR/<name>-<pid>.prof at exit. Unset: nothing is profiled.
PROFILE_ENV = "MICROSEG_BENCH_PROFILE"


def waiting_first(recs: list, flows) -> list:
    """A batch's records of flows a verdict may wait on first, then the
    others (a released flow's, its side not held: an async connection's
    response and FINs, which the kernel lets wait for POLL_S), each flow's
    records in their order. Such deferred records come in the same read as
    the next connection's request; handled first, their DLP scan and the
    flow's close delayed its verdict (hold p50 ~130 -> ~245 us in the lab,
    docs/performance.md 4.6.1). A flow waits if the engine has no verdict
    for it (new or pending) or it holds every request and a record is its
    client's; a flow with any waiting record goes first whole, so no
    flow's records are reordered (the kernel's test, bpf/lib/inspect.h
    `deferrable`, from the engine's side). Only records of different flows
    change places, and only when the batch mixes both kinds: one lookup
    per record and, then, two lists per batch."""
    if len(recs) < 2:
        return recs
    get, waiting, deferred = flows.get, set(), False
    for r in recs:
        f = get(r.key)
        if f is None or f.verdict is None or (r.inspect & _HOLD_ALL and not r.side):
            waiting.add(r.key)
        else:
            deferred = True
    if not waiting or not deferred:
        return recs
    first = [r for r in recs if r.key in waiting]
    if len(first) < len(recs):        # else the deferred ones were a waiting flow's own
        first.extend([r for r in recs if r.key not in waiting])
    return first


def profiled(name: str, fn: Callable[[], object]) -> object:
    """``fn()``, under cProfile when PROFILE_ENV names a directory."""
    where = os.environ.get(PROFILE_ENV)
    if not where:
        return fn()
    import cProfile
    prof = cProfile.Profile()
    try:
        return prof.runcall(fn)
    finally:
        prof.dump_stats(os.path.join(where, f"{name}-{os.getpid()}.prof"))


def default_workers() -> int:
    """The CPUs this process may run on (its affinity, as a container or a
    systemd CPUAffinity= gives it), not the machine's count."""
    return max(1, len(os.sched_getaffinity(0)))


class LoopForwardSink:
    """A worker's EVE lines to the daemon, sent from the worker's own event
    loop: lines submitted while batches of records are handled go out in
    one send per FORWARD_MESSAGE_BYTES, ``flush_s`` after the first of them
    (or at once when a message is full), from a callback the loop runs
    between batches, so verdicts are never behind them.

    Why not eve_sinks.ForwardSink (a writer thread): every submit woke the
    thread (a futex wake measured at ~130 us on this VM, on the worker's
    main thread) and the woken thread then took the GIL from the engine in
    the middle of a batch, delaying the verdicts after it. The daemon's
    socket is non-blocking here: a daemon that does not read makes lines
    wait (the loop retries when the socket is writable), then, past
    SINK_QUEUE_RECORDS, drop, counted, as a full sink queue does.
    """
    name = kind = "forward"

    def __init__(self, sock: socket.socket, *, queue_records: int = SINK_QUEUE_RECORDS,
                 flush_s: float = FORWARD_FLUSH_S):
        self.sock = sock
        self._max = queue_records
        self.flush_s = flush_s
        self._lines: list[bytes] = []
        self._bytes = 0                   # of the pending lines
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.sends = 0                    # messages sent
        self._waiting_writable = False
        self.sent = self.dropped = self.queue_full = self.write_errors = self.oversize = 0

    def attach(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Send from ``loop`` from now on (None: the loop is gone; close() sends the rest)."""
        if loop is None and self._waiting_writable and self._loop is not None:
            self._loop.remove_writer(self.sock.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting_writable = self._scheduled = False
        self._loop = loop
        if loop is not None and self._lines:
            self._schedule()

    def submit(self, line: bytes, record=None) -> bool:
        if len(line) > FORWARD_LINE_MAX:
            self.oversize += 1
            self.dropped += 1
            return False
        if len(self._lines) >= self._max:
            self.dropped += 1
            self.queue_full += 1
            return False
        self._lines.append(line)
        self._bytes += len(line)
        if self._loop is not None and not self._waiting_writable:
            self._schedule()
        return True

    def _schedule(self) -> None:
        """Send the pending lines flush_s after the first (at once when they fill a message)."""
        if self._scheduled:
            return
        if self._bytes >= FORWARD_MESSAGE_BYTES or not self.flush_s:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._scheduled = True
            self._loop.call_soon(self._send)
        elif self._timer is None:
            self._timer = self._loop.call_later(self.flush_s, self._send)

    def send_soon(self) -> None:
        """Send what is pending from the loop's next turn, not at the timer:
        for a caller that woke the worker anyway (the daemon's session
        ends), so the timer does not wake it once more for these lines."""
        if self._lines and self._loop is not None and not self._waiting_writable and not self._scheduled:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._scheduled = True
            self._loop.call_soon(self._send)

    def _messages(self):
        """(message, lines in it) of the pending lines, in order."""
        msg: list[bytes] = []
        size = 0
        for line in self._lines:
            if msg and size + len(line) > FORWARD_MESSAGE_BYTES:
                yield FORWARD_TAG_EVE + b"".join(msg), len(msg)
                msg, size = [], 0
            msg.append(line)
            size += len(line)
        if msg:
            yield FORWARD_TAG_EVE + b"".join(msg), len(msg)

    def _send(self) -> None:
        """From the loop: send what is pending without blocking; what the
        socket does not take waits until it is writable."""
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        done = 0
        try:
            for msg, n in self._messages():
                self.sock.send(msg)       # SOCK_SEQPACKET: the whole message or nothing
                self.sends += 1
                done += n
        except BlockingIOError:
            if not self._waiting_writable and self._loop is not None:
                self._waiting_writable = True
                self._loop.add_writer(self.sock.fileno(), self._writable)
        except OSError:                   # the daemon is gone: its death signal follows
            self.write_errors += 1
            self.dropped += len(self._lines) - done
            done = len(self._lines)
        self.sent += done
        del self._lines[:done]
        self._bytes = sum(map(len, self._lines))

    def _writable(self) -> None:
        self._loop.remove_writer(self.sock.fileno())
        self._waiting_writable = False
        self._send()

    def counters(self) -> dict:
        return {"sent": self.sent, "dropped": self.dropped, "queue_full": self.queue_full,
                "write_errors": self.write_errors, "queued": len(self._lines), "oversize": self.oversize}

    def flush(self, timeout: float = SINK_CLOSE_TIMEOUT_S) -> bool:
        """Send what is pending, blocking up to ``timeout`` (outside the loop)."""
        self.attach(None)
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        done = 0
        try:
            for msg, n in self._messages():
                self.sock.sendall(msg)
                done += n
        except OSError:
            self.write_errors += 1
        finally:
            self.sock.settimeout(old)
        self.sent += done
        del self._lines[:done]
        self._bytes = sum(map(len, self._lines))
        return not self._lines

    def close(self, timeout: float = SINK_CLOSE_TIMEOUT_S) -> None:
        if not self.flush(timeout):
            self.dropped += len(self._lines)
            self._lines.clear()
            self._bytes = 0


class AwakeFlag:
    """This worker's slot of ms_insp_busy (bpf/lib/maps.h), mapped into
    memory (the map is BPF_F_MMAPABLE): one aligned 8-byte store sets it,
    which x86-64 makes visible in order (slowpath/ringbuf.py says why that
    is enough there). Cleared at start: a worker killed while awake left
    its slot set, and the kernel would then never wake its replacement."""

    def __init__(self, map_fd: int, index: int):
        self._map = mmap.mmap(map_fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._slot = memoryview(self._map)[index * 8:index * 8 + 8].cast("Q")
        self.set(0)

    def set(self, value: int) -> None:
        self._slot[0] = value

    def get(self) -> int:
        return self._slot[0]


class Worker:
    """One worker process's slow path: its ring, its heartbeat, its Engine.
    Built in the child after the fork."""

    _flow_events = None     # the kernel's session ends' decoder (ctx.flow_events), when they are logged

    def __init__(self, index: int, ring_fd: int | None, ctx, sock: socket.socket):
        fp, cfg = ctx.fp, ctx.cfg
        self.index = index
        self.ctx = ctx
        self.sock = sock
        self.decoder = ctx.decoder
        self.writer = VerdictWriter(fp.table("ms_verdicts").map_fd, fp.table("ms_slowpath").map_fd,
                                    fp.table("ms_verdicts").Leaf, fp.table("ms_slowpath").Leaf, worker=index)
        self.writer.heartbeat(os.getpid())
        self.metrics = Metrics(kernel=False)
        self.forward = LoopForwardSink(sock)
        self.eve = EveLog([self.forward])
        self.injector = Injector(session_seq(fp), self._call_later)
        self.engine = Engine(ctx.rules, self.eve.emit, self.writer, failure_actions=cfg.datapath.failure_actions,
                             simulate=cfg.datapath.simulate, metrics=self.metrics, injector=self.injector,
                             plugins=fp.protocols, app_names={i: n for n, i in fp.l7.ids.items()},
                             session_stats=session_stats(fp), inspect_budget=cfg.datapath.inspect_budget,
                             kernel_flow_records=getattr(ctx, "flow_events", None) is not None,
                             l7=getattr(ctx, "l7", None))
        self._flow_events = getattr(ctx, "flow_events", None)
        self._busy = None
        if ring_fd is None:       # the perf buffer fallback: one worker, per-record reader
            self.ring, self.reader_class = open_payload_channel(fp)
        else:
            self.ring, self.reader_class = RingBuffer(ring_fd), None
            self._busy = AwakeFlag(fp.table("ms_insp_busy").map_fd, index)
        self._poll: asyncio.TimerHandle | None = None    # the due read (POLL_S)
        self.started = time.monotonic()
        self._lost_seen = 0

    def _call_later(self, delay: float, fn) -> None:
        asyncio.get_running_loop().call_later(delay, fn)

    def _records(self, raws: list[bytes]) -> None:
        """Records read from this worker's ring: payload records, and the
        kernel's session ends among them (MS_CFG_WORKER_ENDS). The payload
        records of the read first, in one batch (waiting_first: a request a
        verdict waits on is not delayed behind a closed flow's record),
        then the ends, in ring order: each after its session's records,
        which the kernel committed before it (a FIN's among them)."""
        dec = self._flow_events
        if dec is not None:
            payload, ends = [], []
            for raw in raws:
                end = worker_end(raw, dec.size)
                if end is None:
                    payload.append(raw)
                else:
                    ends.append(end)
            if ends:
                if payload:
                    self._payload(payload)
                self._session_ends(b"".join(ends))
                return
        self._payload(raws)

    def _payload(self, raws: list[bytes]) -> None:
        eng = self.engine
        recs, bad = self.decoder.decode_many(raws)      # Engine.handle_raw_batch's steps, reordered between
        eng.counters.bad_records += len(bad)
        eng.handle_batch(waiting_first(recs, eng.flows))
        if bad:
            self.metrics.record_ringbuf_lost("malformed", len(bad))
            log.warning("worker %d: %d bad payload records, the first: %s", self.index, len(bad), bad[0])

    def _readable(self) -> None:
        # Awake (ms_insp_busy): records committed while this runs wake no
        # one. After the flag is cleared the loop looks at the ring once
        # more before it sleeps (level-triggered epoll: the fd was just
        # reported, so its next wait polls it again), and the kernel
        # re-checks the flag after each commit (bpf/lib/inspect.h).
        busy = self._busy
        if busy is not None:
            busy.set(BUSY["AWAKE"])
        raws = None
        try:
            raws = self.ring.drain(RING_BATCH)
            if raws:
                self._records(raws)
        finally:
            if busy is not None:
                busy.set(self._after_read(bool(raws)))

    def _after_read(self, read: bool) -> int:
        """The ring's state after a read: a poll due POLL_S after the last
        read that found records, or asleep.

        Each such read moves the poll back: everything committed before it
        was read, so a record deferred since comes after it and is still
        read within POLL_S of its commit. A poll kept at POLL_S after the
        first read woke a worker that slept between connections closer
        together than POLL_S (~0.4 times per inspected connection in the
        lab) for records the next connection's wakeup reads anyway, and a
        worker woken from sleep runs its Python ~2x slower than a warm one
        (cold caches; docs/performance.md 4.6.1)."""
        if read:
            if self._poll is not None:
                self._poll.cancel()
            self._poll = asyncio.get_running_loop().call_later(POLL_S, self._polled)
        return BUSY["POLL"] if self._poll is not None else BUSY["ASLEEP"]

    def _polled(self) -> None:
        """POLL_S after a read: the records the kernel did not wake this
        worker for (nothing found: asleep, every record wakes it again)."""
        self._poll = None
        self._look()

    def _look(self) -> None:
        """A read not started by the ring's epoll event, and then one more
        look after the state's store: a record committed between the drain
        and that store saw the worker awake and woke no one. (A read from
        the epoll event needs no such look: level-triggered epoll polls the
        ring again before the loop sleeps.)"""
        self._readable()
        if self.ring.pending_bytes():
            asyncio.get_running_loop().call_soon(self._look)

    def report(self) -> None:
        c = self.engine.counters
        self.metrics.set_flows(len(self.engine.flows))
        self.metrics.set_queue_bytes(self.ring.pending_bytes())
        lost = getattr(self.ring, "lost", 0)        # the perf buffer fallback's lost samples (a ring full)
        if lost > self._lost_seen:
            self.metrics.record_ringbuf_lost("full", lost - self._lost_seen)
            self._lost_seen = lost
        stats = {"slowpath.records": c.records, "slowpath.bytes": c.bytes, "slowpath.flows": len(self.engine.flows),
                 **{f"slowpath.verdicts.{k.lower()}": v for k, v in c.verdicts.items()},
                 **{f"slowpath.failures.{k}": v for k, v in c.failures.items()},
                 **{f"slowpath.hits.{k}": v for k, v in c.hits.items()}}
        msg = TAG_REPORT + json.dumps({"metrics": snapshot(self.metrics.registry), "stats": stats}).encode()
        try:
            self.sock.sendall(msg)
        except OSError:
            pass            # the daemon is gone; the death signal follows

    async def _beating(self) -> None:
        period = self.ctx.cfg.datapath.heartbeat_timeout_s / 3
        while True:
            self.writer.heartbeat(os.getpid())
            await asyncio.sleep(period)

    async def _reporting(self) -> None:
        while True:
            await asyncio.sleep(REPORT_S)
            self.engine.sweep()
            self.report()

    def _control(self, stop: asyncio.Event) -> None:
        fds: list[int] = []
        try:
            msg, fds, _, _ = socket.recv_fds(self.sock, MESSAGE_MAX, 1)
        except BlockingIOError:
            return
        except OSError:
            msg = b""
        if fds:
            try:
                if msg[:1] == TAG_L7:
                    self._l7(fds[0])
            finally:
                for fd in fds:
                    os.close(fd)
            return
        if not msg:                  # the daemon closed its end: it is gone
            stop.set()
            return
        if msg[:1] == TAG_RELOAD:
            asyncio.get_running_loop().create_task(self._reload(msg[1:]))
        elif msg[:1] == TAG_FLOW_END:
            self._flow_ends(msg[1:])
            # their flow records (the last line of each connection) and
            # whatever else is pending go with this wakeup
            self.forward.send_soon()

    def _l7(self, fd: int) -> None:
        """A new policy's allow-lists (the daemon checked them before it
        applied the policy): compiled here, swapped in whole."""
        from slowpath.l7allow import L7Policy
        size = os.fstat(fd).st_size
        try:
            pol = L7Policy.from_spec(json.loads(os.pread(fd, size, 0)))
        except Exception as e:     # not expected: the daemon compiled the same text
            log.error("worker %d: L7 allow-lists not reloaded, the running ones stay: %s", self.index, e)
            return
        self.ctx.l7 = pol
        self.engine.set_l7(pol)

    def _flow_ends(self, body: bytes) -> None:
        """The kernel ended these sessions (the daemon forwards the ends
        that went to ms_events): their payload still in the ring first (a
        FIN's record may be there), then one flow record each."""
        self._records(self.ring.drain())
        self._session_ends(body)

    def _session_ends(self, body: bytes) -> None:
        """One flow record for each struct ms_flow_event in ``body``."""
        dec = self._flow_events
        for off in range(0, len(body) - dec.size + 1, dec.size):
            try:
                ev = dec.decode(body[off:off + dec.size])
            except ValueError as e:
                log.warning("worker %d: %s", self.index, e)
                continue
            if ev is not None:
                self.engine.session_end(ev, self.ctx.wall)

    def _pending_control(self) -> None:
        """Session ends the daemon sent before this worker stopped."""
        self.sock.setblocking(False)
        while True:
            try:
                msg = self.sock.recv(MESSAGE_MAX)
            except OSError:
                return
            if not msg:
                return
            if msg[:1] == TAG_FLOW_END:
                self._flow_ends(msg[1:])

    async def _reload(self, seq: bytes) -> None:
        """The rules file loaded again, then the daemon told so (its reload
        ``seq``): it logs the reload done only when every worker has said
        it, so what comes after the log line meets the new rules."""
        from datapath.errors import MicrosegError
        try:
            rules = await asyncio.get_running_loop().run_in_executor(None, self.ctx.load_rules, self.ctx.cfg.rules)
        except (MicrosegError, OSError) as e:   # the daemon checked the file; it changed since
            log.error("worker %d: rules not reloaded, the running ones stay: %s", self.index, e)
        else:
            self.engine.rules = rules
        try:
            self.sock.sendall(TAG_RELOAD + seq)
        except OSError:
            pass            # the daemon is gone, or waits out RELOAD_CONFIRM_S and says so

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)   # the daemon decides (a terminal's ^C hits all)
        self.sock.setblocking(False)
        self.forward.attach(loop)
        loop.add_reader(self.sock.fileno(), self._control, stop)
        if self.reader_class is None:
            loop.add_reader(self.ring.fileno(), self._readable)
            reader = None
        else:
            def one(raw: bytes) -> None:
                self._records([raw])
            reader = self.reader_class(self.ring, one)
            reader.start(loop)
        tasks = [asyncio.create_task(self._beating()), asyncio.create_task(self._reporting())]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            if self._poll is not None:
                self._poll.cancel()
                self._poll = None
            if self._busy is not None:      # no poll comes now: every record wakes (finish() drains)
                self._busy.set(BUSY["ASLEEP"])
            if reader is None:
                loop.remove_reader(self.ring.fileno())
            else:
                reader.stop()
            loop.remove_reader(self.sock.fileno())
            self.forward.attach(None)   # finish() sends the rest, blocking
            self.writer.stop()      # heartbeat 0: the kernel takes this worker's flows as down at once

    def finish(self) -> None:
        """After the loop: what is left in the ring, every flow closed (EVE
        flow records), a last report, the EVE lines sent."""
        self._records(self.ring.drain())
        self._pending_control()
        self.sock.setblocking(True)
        self.engine.close_all("shutdown")
        self.report()
        self.eve.close()
        self.injector.close()


def _child(index: int, ring_fd: int | None, ctx, sock: socket.socket, parent: int, close_fds: list[int]) -> int:
    """The forked worker's life; returns its exit status."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)     # the daemon gone: this worker goes too
    if os.getppid() != parent:                       # ... it went before the line above
        return 0
    for fd in close_fds:        # the daemon's listening metrics socket, the other workers' sockets
        try:
            os.close(fd)
        except OSError:
            pass
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)     # reloads come from the daemon, as a message
    # The fork happened inside the daemon's running loop: this process has
    # a copy of it, which must neither run nor be taken for the current one.
    asyncio._set_running_loop(None)
    worker_priority(index, ctx.cfg.slowpath.nice)   # appliance/priority.py: nice, own autogroup, short slice
    worker_affinity(index, ctx.cfg.slowpath.cpus)   # onto slowpath.cpus, if set
    w = Worker(index, ring_fd, ctx, sock)
    log.info("worker %d running (pid %d)", index, os.getpid())
    try:
        profiled(f"worker{index}", lambda: uvloop.run(w.run()))
    finally:
        w.finish()
    return 0


class WorkerSet:
    """The daemon's side: fork, watch (a pidfd per worker on the loop),
    restart, read, stop. ``on_eve(line, event_type)`` and
    ``on_report(index, report)`` take what workers send; ``on_exit(index,
    pid, status)`` is told of each death (the daemon sets that worker's
    heartbeat to 0 and retires its metrics)."""

    def __init__(self, ctx, ring_fds: list[int | None], *, on_eve: Callable[[bytes, str], None],
                 on_report: Callable[[int, dict], None], on_exit: Callable[[int, int, str], None],
                 close_in_child: Callable[[], list[int]] = lambda: []):
        self.ctx = ctx
        self.ring_fds = ring_fds
        self.on_eve, self.on_report, self.on_exit = on_eve, on_report, on_exit
        self.close_in_child = close_in_child
        self.pids: dict[int, int] = {}                 # index -> pid
        self._socks: dict[int, socket.socket] = {}
        self._pidfds: dict[int, int] = {}
        self._started: dict[int, float] = {}
        self._backoff: dict[int, float] = {}
        self.restarts = 0
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._reload_seq = 0
        self._reload_waiting: set[int] = set()        # workers that have not confirmed the last reload
        self._reloaded: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self.ring_fds)

    # -- starting ----------------------------------------------------------------
    def start_all(self) -> None:
        for i in range(len(self.ring_fds)):
            self._spawn(i)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch and read the workers from ``loop`` (the daemon's, once running)."""
        self.loop = loop
        for i in list(self.pids):
            self._watch(i)

    def _spawn(self, i: int) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        close = [mine.fileno(), *(s.fileno() for s in self._socks.values()), *self._pidfds.values(),
                 *self.close_in_child()]
        parent = os.getpid()
        # The daemon's objects (BCC, the compiled rules, the protocol
        # tables) go to the collector's permanent generation first: a
        # worker's collections then never walk them, so their pages stay
        # shared with the daemon instead of being copied into every worker.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                status = _child(i, self.ring_fds[i], self.ctx, theirs, parent, close)
            except BaseException:
                log.exception("worker %d failed", i)
            finally:
                os._exit(status)
        theirs.close()
        mine.setblocking(False)
        self.pids[i] = pid
        self._socks[i] = mine
        self._pidfds[i] = os.pidfd_open(pid)
        self._started[i] = time.monotonic()
        log.info("slow-path worker %d started (pid %d)", i, pid)
        if self.loop is not None:
            self._watch(i)

    def _watch(self, i: int) -> None:
        self.loop.add_reader(self._socks[i].fileno(), self._readable, i)
        self.loop.add_reader(self._pidfds[i], self._died, i)

    # -- reading -----------------------------------------------------------------
    def _readable(self, i: int) -> None:
        sock = self._socks.get(i)
        if sock is None:
            return
        for _ in range(64):          # a busy worker must not keep the loop in here
            try:
                msg = sock.recv(MESSAGE_MAX)
            except BlockingIOError:
                return
            except OSError:
                msg = b""
            if not msg:
                self.loop.remove_reader(sock.fileno())
                return
            self._message(i, msg)

    def _message(self, i: int, msg: bytes) -> None:
        tag, body = msg[:1], msg[1:]
        if tag == TAG_EVE:
            for line in body.splitlines(keepends=True):
                m = _EVENT_TYPE.search(line, 0, 200)
                self.on_eve(line, m.group(1).decode() if m else "")
        elif tag == TAG_REPORT:
            try:
                self.on_report(i, json.loads(body))
            except ValueError:
                log.warning("worker %d sent a report that is not JSON", i)
        elif tag == TAG_RELOAD and body == str(self._reload_seq).encode():
            self._confirmed(i)

    def _drain(self, i: int) -> None:
        """Whatever a worker sent before it ended."""
        sock = self._socks[i]
        sock.setblocking(False)
        while True:
            try:
                msg = sock.recv(MESSAGE_MAX)
            except OSError:
                return
            if not msg:
                return
            self._message(i, msg)

    # -- deaths --------------------------------------------------------------------
    def _died(self, i: int) -> None:
        pid = self.pids.pop(i, None)
        pidfd = self._pidfds.pop(i)
        self.loop.remove_reader(pidfd)
        os.close(pidfd)
        try:
            _, raw = os.waitpid(pid, 0)
        except ChildProcessError:
            raw = 0
        status = (f"killed by signal {signal.Signals(-os.waitstatus_to_exitcode(raw)).name}"
                  if os.WIFSIGNALED(raw) else f"exit status {os.waitstatus_to_exitcode(raw)}")
        self._drain(i)
        sock = self._socks.pop(i)
        try:
            self.loop.remove_reader(sock.fileno())
        except (ValueError, OSError):
            pass
        sock.close()
        self.on_exit(i, pid, status)
        self._confirmed(i)            # its successor starts from ctx.rules, the new ones
        if self.stopping:
            return
        quick = time.monotonic() - self._started.get(i, 0) < RESTART_WINDOW_S
        delay = min(RESTART_MAX_S, self._backoff.get(i, RESTART_MIN_S / 2) * 2) if quick else RESTART_MIN_S
        self._backoff[i] = delay
        log.error("slow-path worker %d (pid %d) ended: %s; its flows get the slowpath_down action until it "
                  "is started again in %.1f s", i, pid, status, delay)
        self.loop.call_later(delay, self._restart, i)

    def _restart(self, i: int) -> None:
        if self.stopping or i in self.pids:
            return
        self.restarts += 1
        self._spawn(i)

    # -- control -------------------------------------------------------------------
    def forward_flow_ends(self, i: int, raws: list[bytes]) -> int:
        """Hand kernel session-end records to worker ``i``, in as few
        messages as fit (FORWARD_MESSAGE_BYTES each: a send wakes the
        worker and costs this process ~100 us on a VM). Returns how many
        of ``raws``, from the first, it took: fewer when it cannot take
        them now (stopping, gone, its socket full), and the caller writes
        the rest's records itself."""
        sock = self._socks.get(i)
        if sock is None or self.stopping or i not in self.pids:
            return 0
        done = 0
        while done < len(raws):
            chunk, size = [], 0
            for raw in raws[done:]:
                if chunk and size + len(raw) > FORWARD_MESSAGE_BYTES:
                    break
                chunk.append(raw)
                size += len(raw)
            try:
                sock.send(TAG_FLOW_END + b"".join(chunk))
            except OSError:          # BlockingIOError included: never wait on a worker here
                break
            done += len(chunk)
        return done

    def send_l7(self, spec: dict) -> None:
        """A new policy's allow-lists to every worker (workers started from
        now on have them from ctx.l7)."""
        data = json.dumps(spec).encode()
        fd = os.memfd_create("microseg-l7", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            for i, sock in self._socks.items():
                try:
                    socket.send_fds(sock, [TAG_L7], [fd])
                except OSError as e:
                    log.error("worker %d: L7 allow-lists not sent: %s", i, e)
        finally:
            os.close(fd)

    async def reload(self, timeout: float = RELOAD_CONFIRM_S) -> list[int]:
        """Every running worker loads the rules file again (a worker started
        from now on has ctx.rules). Returns once each has said it is done
        (the new rules in force, or its old ones kept with the error
        logged) or has ended, or after ``timeout``: the workers that had
        not said so by then, which go on loading."""
        self._reload_seq += 1
        tag = TAG_RELOAD + str(self._reload_seq).encode()
        self._reload_waiting = set()
        for i, sock in self._socks.items():
            try:
                sock.send(tag)
            except OSError:              # gone (its death is being handled) or its socket full
                log.error("worker %d: reload not sent; it keeps its rules until it restarts", i)
                continue
            self._reload_waiting.add(i)
        self._reloaded = asyncio.Event()
        if self._reload_waiting:
            try:
                await asyncio.wait_for(self._reloaded.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        return sorted(self._reload_waiting)

    def _confirmed(self, i: int) -> None:
        self._reload_waiting.discard(i)
        if not self._reload_waiting and self._reloaded is not None:
            self._reloaded.set()

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to every worker, and wait (reading what they send) until
        they are gone; one that takes longer than ``timeout`` is killed."""
        self.stopping = True
        for pid in self.pids.values():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while self.pids and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for i, pid in list(self.pids.items()):
            log.error("slow-path worker %d (pid %d) did not stop within %.0f s: killed", i, pid, timeout)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self.pids and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
