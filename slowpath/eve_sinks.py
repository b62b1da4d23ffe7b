"""Where EVE lines go: sinks, each with a bounded queue and its own thread.

:class:`EveLog` serialises a record once (slowpath/eve.py ``encode``) and
hands the line to every sink: :class:`FileSink` (size-rotating,
``reopen()`` for logrotate), :class:`SyslogSink` (RFC 5424 over UDP, or over
TCP with RFC 6587 octet counting), :class:`StdoutSink`. A sink that cannot
keep up drops records and counts them; the caller never waits.
:class:`RedisSink` writes to a Redis list, channel or stream, as
Suricata's ``redis`` output.
"""
from __future__ import annotations

import collections
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path

from slowpath.eve import encode

log = logging.getLogger(__name__)

# --- Limits -------------------------------------------------------------------
# Records a sink queues while its I/O is slow (its worker may hold one more
# batch, at most as many again, while it waits on the write). At a few hundred bytes a record
# that is a few MB per sink, and about a second of a busy appliance's events:
# enough to ride out a syslog collector restarting, small enough that a dead
# one costs little memory. Past it new records are dropped and counted.
SINK_QUEUE_RECORDS = 10_000
# Records a sink worker takes per wakeup (one flush or one write() per batch).
SINK_BATCH_RECORDS = 256
# After a write the sink's thread waits this long for more records before it
# sleeps, and records submitted meanwhile do not wake it: under a steady
# stream it wakes at most once per linger, not once per record. Each wakeup
# (a futex wake from the submitter, a thread switch, the GIL handed over)
# cost the daemon ~100 us on this VM, and under the lab benchmark the file
# sink was woken for most of the ~2.5 EVE lines per inspected connection
# (docs/performance.md 4.6.1). A record reaches its sink this much later at
# most; flush() and close() cut the wait short.
SINK_LINGER_S = 0.01
# How long close() waits for queued records to be written before counting the
# rest as dropped.
SINK_CLOSE_TIMEOUT_S = 5.0

# FileSink defaults: 100 MiB x (1 + 5) files bounds the disk used at 600 MiB.
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_BACKUPS = 5
# Mode of a new log file: records hold URLs, host names and matched content.
FILE_MODE = 0o640

# SyslogSink: a connect or a send that takes longer than this is an outage.
SYSLOG_CONNECT_TIMEOUT_S = 2.0
SYSLOG_SEND_TIMEOUT_S = 2.0
# Reconnection backoff doubles from the first value to the second.
SYSLOG_BACKOFF_MIN_S = 0.5
SYSLOG_BACKOFF_MAX_S = 30.0
# Largest UDP payload over IPv4 (65535 - 8 UDP - 20 IP header). RFC 5426 only
# promises 480/1180 bytes reach every receiver, but rsyslog and syslog-ng take
# 64 KiB; a larger record cannot be sent in one datagram and is dropped
# (counted as oversize) rather than cut into invalid JSON.
SYSLOG_UDP_MAX_BYTES = 65507
# RFC 5424 section 6.2.1: PRI = facility * 8 + severity.
FACILITIES = {"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5,
              "lpr": 6, "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
              **{f"local{i}": 16 + i for i in range(8)}}
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
SEVERITY_INFO = 6
# An alert is what a SIEM pages on; a drop is worth noticing; the rest is
# metadata.
SYSLOG_SEVERITY = {"alert": SEVERITY_WARNING, "drop": SEVERITY_NOTICE}

# RedisSink: what a connect or a pipelined write may take before the
# collector counts as down (the same bounds as syslog's: close() waits one
# of them for a worker inside a write).
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SEND_TIMEOUT_S = 2.0
# Reconnection backoff doubles from the first value to the second (as
# SyslogSink's; Suricata retries once a second).
REDIS_BACKOFF_MIN_S = 0.5
REDIS_BACKOFF_MAX_S = 30.0
# Entries a stream keeps by default (XADD MAXLEN ~): a stream nobody trims
# grows until Redis runs out of memory. 100,000 records of a few hundred
# bytes is a few tens of MB, Suricata's default.
REDIS_STREAM_MAXLEN = 100_000
# mode -> command, with Suricata's aliases ("list" is LPUSH, as there).
REDIS_MODES = {"list": "lpush", "lpush": "lpush", "rpush": "rpush",
               "channel": "publish", "publish": "publish", "stream": "xadd", "xadd": "xadd"}
# The one field of a stream entry, Suricata's name ("XADD key * eve JSON").
REDIS_STREAM_FIELD = "eve"


# --- Sinks -------------------------------------------------------------------------
# Why not logging.handlers (QueueHandler -> bounded queue.Queue ->
# QueueListener -> RotatingFileHandler), measured with 200,000 records of
# 446 bytes on this 2-core VM (Python 3.11): 19 us of CPU per record as the
# library comes, 9 us with subclasses that skip the record copy and the two
# stat() calls per record, against 1.4 us here. The listener takes one
# record per wakeup and the handler flushes (one write(2)) per record, where
# this worker writes a batch of up to SINK_BATCH_RECORDS with one flush; the
# writer thread holds the GIL the slow path needs. Three behaviours would
# also need overriding: QueueListener.stop() joins without a timeout and
# raises queue.Full when the queue is full (close() here is bounded and
# counts what it leaves behind), RotatingFileHandler rolls over when a line
# would reach max_bytes (">=", so a file holds one line fewer) and rotates
# an empty file for a long line, and backupCount=0 appends forever instead
# of truncating. The rotation scheme (path -> path.1 ... path.N) is
# RotatingFileHandler's.
class Sink:
    """A destination with a bounded queue and a worker thread.

    ``submit`` never blocks: when the queue is full the record is dropped
    and counted. Subclasses implement ``_write_batch`` (in the worker
    thread) and ``_release``.
    """
    kind = "sink"

    def __init__(self, *, name: str | None = None, queue_records: int = SINK_QUEUE_RECORDS,
                 linger_s: float = SINK_LINGER_S):
        self.name = name or self.kind
        self._max = queue_records
        self.linger_s = linger_s
        self._buf: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._pending = 0           # submitted, not yet written or dropped
        self._idle = False          # the thread sleeps until a submit wakes it
        self._hurry = False         # flush()/close(): write now, no lingering
        self.wakeups = 0            # submits that woke the thread
        self._closed = False
        self._stop = threading.Event()
        self.sent = 0
        self.dropped = 0            # every record that will never be written
        self.queue_full = 0         # ... of which refused at submit
        self.write_errors = 0       # failed writes/sends (events, not records)
        self._thread = threading.Thread(target=self._run, name=f"eve-{self.name}", daemon=True)
        self._thread.start()

    def submit(self, line: bytes, record: Mapping | None = None) -> bool:
        with self._cv:
            if self._closed or len(self._buf) >= self._max:
                self.dropped += 1
                self.queue_full += not self._closed
                return False
            self._buf.append((line, record))
            self._pending += 1
            if self._idle:          # lingering or writing: it looks at the queue without a wakeup
                self._idle = False
                self.wakeups += 1
                self._cv.notify_all()
        return True

    def counters(self) -> dict:
        with self._cv:
            return {"sent": self.sent, "dropped": self.dropped, "queue_full": self.queue_full,
                    "write_errors": self.write_errors, "queued": len(self._buf)}

    def flush(self, timeout: float = SINK_CLOSE_TIMEOUT_S) -> bool:
        """Wait until every submitted record is written or dropped."""
        deadline = time.monotonic() + timeout
        with self._cv:
            if self._pending:
                self._hurry = True  # a lingering thread writes at once
                self._cv.notify_all()
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout: float = SINK_CLOSE_TIMEOUT_S) -> None:
        with self._cv:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        self._stop.set()            # interrupts a reconnect backoff
        with self._cv:
            self._cv.notify_all()
        # A worker inside a send or connect needs up to one socket timeout
        # to notice the stop; past that it is a daemon thread and is left.
        self._thread.join(max(max(SYSLOG_CONNECT_TIMEOUT_S, SYSLOG_SEND_TIMEOUT_S,
                                  REDIS_CONNECT_TIMEOUT_S, REDIS_SEND_TIMEOUT_S) + 0.5,
                              deadline - time.monotonic()))

    def _run(self) -> None:
        lingering = False
        while True:
            with self._cv:
                if lingering and not self._buf and not self._hurry and not self._stop.is_set():
                    # after a write: what comes within linger_s goes in the
                    # next batch, without waking this thread per record
                    deadline = time.monotonic() + self.linger_s
                    while not self._hurry and not self._stop.is_set():
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cv.wait(left)
                while not self._buf and not self._stop.is_set():
                    self._idle = True
                    self._cv.wait()
                self._idle = self._hurry = False
                if self._stop.is_set():
                    # Closing and the flush timed out: what is left is lost.
                    self.dropped += len(self._buf)
                    self._pending -= len(self._buf)
                    self._buf.clear()
                    self._cv.notify_all()
                    break
                batch = [self._buf.popleft() for _ in range(min(len(self._buf), SINK_BATCH_RECORDS))]
            try:
                sent, lost = self._write_batch(batch)
            except Exception:
                sent, lost = 0, len(batch)
                self.write_errors += 1
            with self._cv:
                self.sent += sent
                self.dropped += lost
                self._pending -= len(batch)
                self._cv.notify_all()
            lingering = self.linger_s > 0
        try:
            self._release()
        except Exception:
            pass

    def _write_batch(self, batch: list[tuple[bytes, Mapping | None]]) -> tuple[int, int]:
        raise NotImplementedError

    def _release(self) -> None:
        pass


class StdoutSink(Sink):
    """Lines to standard output (or any binary stream), e.g. under systemd."""
    kind = "stdout"

    def __init__(self, stream=None, **kw):
        self._stream = stream if stream is not None else sys.stdout.buffer
        super().__init__(**kw)

    def _write_batch(self, batch):
        try:
            self._stream.write(b"".join(line for line, _ in batch))
            self._stream.flush()
        except (OSError, ValueError):       # closed pipe, closed stream
            self.write_errors += 1
            return 0, len(batch)
        return len(batch), 0


class FileSink(Sink):
    """Append to ``path``; past ``max_bytes`` rename path -> path.1 -> ... ->
    path.<backups> (the oldest goes) and start a new file, as logging's
    RotatingFileHandler does. ``backups=0`` truncates instead, ``max_bytes=0``
    never rotates (leave it to logrotate and call ``reopen()`` on SIGHUP)."""
    kind = "file"

    def __init__(self, path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS, **kw):
        if max_bytes < 0 or backups < 0:
            raise ValueError("FileSink: max_bytes and backups must be >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.rotations = 0
        self._fh = None
        self._size = 0
        self._reopen = False
        super().__init__(**kw)

    def reopen(self) -> None:
        """Reopen the file before the next write (logrotate moved it).
        Only sets a flag, so it is safe to call from a signal handler."""
        self._reopen = True

    def counters(self) -> dict:
        c = super().counters()
        c["rotations"] = self.rotations
        return c

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        self._fh = os.fdopen(fd, "ab")
        self._size = os.fstat(fd).st_size

    def _close_file(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            finally:
                self._fh = None

    def _rotate(self) -> None:
        self._close_file()
        if self.backups:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            if self.path.exists():          # logrotate may have moved it already
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        elif self.path.exists():
            os.truncate(self.path, 0)
        self.rotations += 1
        self._open()

    def _write_batch(self, batch):
        sent = lost = 0
        for line, _ in batch:
            try:
                if self._reopen:
                    self._reopen = False
                    self._close_file()
                if self._fh is None:
                    self._open()
                # A line longer than max_bytes still goes out, alone in its file.
                if self.max_bytes and self._size and self._size + len(line) > self.max_bytes:
                    self._rotate()
                self._fh.write(line)
                self._size += len(line)
                sent += 1
            except OSError:
                self.write_errors += 1
                lost += 1
                self._close_file()          # try a fresh open with the next line
        if self._fh is not None:
            try:
                self._fh.flush()
            except OSError:
                # Buffered lines were counted sent; the loss shows as an error.
                self.write_errors += 1
                self._close_file()
        return sent, lost

    def _release(self) -> None:
        self._close_file()


def _syslog_token(text: str | None, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, or "-"."""
    if not text:
        return "-"
    token = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return token or "-"


def syslog_timestamp(ts: float | None = None) -> str:
    """RFC 5424 TIMESTAMP (RFC 3339, UTC, microseconds)."""
    micros = round((time.time() if ts is None else ts) * 1_000_000)
    secs, micros = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}Z"


class SyslogSink(Sink):
    """Records as RFC 5424 messages to a collector, over UDP or TCP.

    ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG``: MSGID is the
    event type, MSG the JSON record (ASCII-only JSON, so MSG-ANY of RFC 5424
    and no BOM). UDP sends one datagram per record (RFC 5426); TCP frames
    each message with RFC 6587 octet counting (``LEN SP MSG``), reconnects
    with a doubling backoff after an error, and holds the record it was
    sending meanwhile: new records queue, then drop, while the collector is
    away.
    """
    kind = "syslog"

    def __init__(self, host: str, port: int = 514, transport: str = "udp", app_name: str = "microseg",
                 facility: int | str = "local0", hostname: str | None = None, **kw):
        if transport not in ("udp", "tcp"):
            raise ValueError(f"SyslogSink: transport {transport!r}, expected 'udp' or 'tcp'")
        fac = FACILITIES.get(facility) if isinstance(facility, str) else facility
        if fac is None or not 0 <= fac <= 23:
            raise ValueError(f"SyslogSink: unknown facility {facility!r}")
        self.host, self.port, self.transport = host, port, transport
        self.facility = fac
        self.hostname = _syslog_token(hostname if hostname is not None else socket.gethostname(), 255)
        self.app_name = _syslog_token(app_name, 48)
        self.procid = _syslog_token(str(os.getpid()), 128)
        self.oversize = 0
        self.connects = 0
        self._sock: socket.socket | None = None
        self._addr = None
        self._backoff = 0.0
        self._next_connect = 0.0
        kw.setdefault("name", f"syslog_{transport}")
        super().__init__(**kw)

    def counters(self) -> dict:
        c = super().counters()
        c.update(oversize=self.oversize, connects=self.connects)
        return c

    def format(self, line: bytes, record: Mapping | None, ts: float | None = None) -> bytes:
        """The RFC 5424 message for one serialised record (no framing)."""
        event_type = str(record.get("event_type", "")) if isinstance(record, Mapping) else ""
        pri = self.facility * 8 + SYSLOG_SEVERITY.get(event_type, SEVERITY_INFO)
        header = (f"<{pri}>1 {syslog_timestamp(ts)} {self.hostname} {self.app_name} {self.procid} "
                  f"{_syslog_token(event_type, 32)} -")
        return header.encode("ascii") + b" " + line.rstrip(b"\n")

    def _write_batch(self, batch):
        sent = lost = 0
        for line, record in batch:
            msg = self.format(line, record)
            ok = self._send_udp(msg) if self.transport == "udp" else self._send_tcp(msg)
            sent += ok
            lost += not ok
        return sent, lost

    def _send_udp(self, msg: bytes) -> bool:
        if len(msg) > SYSLOG_UDP_MAX_BYTES:
            self.oversize += 1
            return False
        try:
            if self._sock is None:
                family, _, _, _, addr = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
                self._sock = socket.socket(family, socket.SOCK_DGRAM)
                self._addr = addr
            self._sock.sendto(msg, self._addr)
            return True
        except OSError:
            self.write_errors += 1
            self._drop_socket()
            return False

    def _send_tcp(self, msg: bytes) -> bool:
        frame = str(len(msg)).encode("ascii") + b" " + msg
        while not self._stop.is_set():
            if self._sock is None and not self._connect():
                # Wait out the backoff; close() cuts the wait short.
                self._stop.wait(max(0.0, self._next_connect - time.monotonic()))
                continue
            try:
                self._sock.sendall(frame)
                self._backoff = 0.0
                return True
            except OSError:
                # The collector may have seen part of the frame; a new
                # connection starts framing afresh, so the record is resent
                # whole on it.
                self.write_errors += 1
                self._drop_socket()
                self._arm_backoff()
        return False

    def _connect(self) -> bool:
        if time.monotonic() < self._next_connect:
            return False
        try:
            sock = socket.create_connection((self.host, self.port), timeout=SYSLOG_CONNECT_TIMEOUT_S)
        except OSError:
            self.write_errors += 1
            self._arm_backoff()
            return False
        sock.settimeout(SYSLOG_SEND_TIMEOUT_S)
        self._sock = sock
        self.connects += 1
        return True

    def _arm_backoff(self) -> None:
        self._backoff = min(max(self._backoff * 2, SYSLOG_BACKOFF_MIN_S), SYSLOG_BACKOFF_MAX_S)
        self._next_connect = time.monotonic() + self._backoff

    def _drop_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _release(self) -> None:
        self._drop_socket()


class RedisSink(Sink):
    """Records to Redis as Suricata's ``redis`` output writes them: ``LPUSH``
    (mode ``list``) or ``RPUSH`` onto a list, ``PUBLISH`` on a channel, or
    ``XADD key [MAXLEN ~ n] * eve JSON`` onto a stream; the value is the JSON
    record without its newline.

    One pipeline (one write, one read of the replies) per batch. When the
    connection fails the batch in hand is held and the whole batch is sent
    again on the next connection, after a doubling backoff, as SyslogSink
    holds its record: records queue, then drop (counted), while the
    collector is away, and the caller never waits. A batch that failed
    after Redis had applied part of it is sent again whole, so a consumer
    may see up to one batch twice after an outage (at least once). A
    command Redis refuses (WRONGTYPE, OOM at ``maxmemory``) loses that
    record, counted in ``dropped`` and ``write_errors``: sending it again
    would be refused again. ``host`` beginning with "/" is a Unix socket
    path (as Suricata's ``server``).
    """
    kind = "redis"

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, mode: str = "list", key: str = "microseg",
                 *, db: int = 0, username: str | None = None, password: str | None = None,
                 stream_maxlen: int = REDIS_STREAM_MAXLEN, stream_trim_exact: bool = False, **kw):
        import redis

        command = REDIS_MODES.get(mode)
        if command is None:
            raise ValueError(f"RedisSink: mode {mode!r}, expected one of {', '.join(REDIS_MODES)}")
        if not key:
            raise ValueError("RedisSink: key must not be empty")
        if stream_maxlen < 0:
            raise ValueError("RedisSink: stream_maxlen must be >= 0 (0: never trim)")
        self.host, self.port, self.mode, self.key = host, port, mode, key
        self.command = command
        self.stream_maxlen = stream_maxlen or None
        self.stream_trim_exact = stream_trim_exact
        self.connects = 0
        self.refused = 0            # records Redis answered with an error
        self.unheard = 0            # PUBLISHed while no client subscribed
        self.last_error = ""        # what the last failed write said (logged once per outage)
        self._down = False
        # Raised by a pipeline's execute: the connection (or its set-up:
        # AUTH, SELECT) failed, so nothing or only part was written.
        self._redis_errors = (redis.RedisError, OSError)
        self._backoff = 0.0
        where = ({"unix_socket_path": host} if host.startswith("/") else {"host": host, "port": port})
        # No retries inside the client: this worker owns the backoff, and a
        # client retrying with its own sleeps would hold the batch longer
        # than the sink's bounds say. The client's pool connects lazily, in
        # the worker (single_connection_client would connect here, in the
        # caller's thread); one thread uses it, so it holds one connection.
        self._client = redis.Redis(
            **where, db=db, username=username, password=password,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S, socket_timeout=REDIS_SEND_TIMEOUT_S,
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0), redis_connect_func=self._on_connect)
        kw.setdefault("name", f"redis_{command}")
        super().__init__(**kw)

    def counters(self) -> dict:
        c = super().counters()
        c.update(connects=self.connects, refused=self.refused)
        if self.command == "publish":
            c["unheard"] = self.unheard
        return c

    def _on_connect(self, conn) -> None:
        conn.on_connect()           # AUTH and SELECT, as the client does by default
        self.connects += 1

    def _write_batch(self, batch):
        values = [line.rstrip(b"\n") for line, _ in batch]
        while not self._stop.is_set():
            pipe = self._client.pipeline(transaction=False)
            for v in values:
                if self.command == "xadd":
                    pipe.xadd(self.key, {REDIS_STREAM_FIELD: v}, maxlen=self.stream_maxlen,
                              approximate=not self.stream_trim_exact)
                else:
                    getattr(pipe, self.command)(self.key, v)
            try:
                replies = pipe.execute(raise_on_error=False)
            except self._redis_errors as e:
                self.write_errors += 1
                self.last_error = str(e)
                if not self._down:      # once per outage, not once per retry
                    self._down = True
                    log.warning("EVE %s: %s; holding records and retrying", self.name, e)
                self._backoff = min(max(self._backoff * 2, REDIS_BACKOFF_MIN_S), REDIS_BACKOFF_MAX_S)
                # close() sets the stop event and cuts the wait short.
                self._stop.wait(self._backoff)
                continue
            finally:
                pipe.reset()
            self._backoff = 0.0
            if self._down:
                self._down = False
                log.info("EVE %s: writing again", self.name)
            refused = [r for r in replies if isinstance(r, Exception)]
            if refused:
                if str(refused[-1]) != self.last_error:
                    log.warning("EVE %s: Redis refused %d of %d records: %s", self.name, len(refused),
                                len(values), refused[-1])
                self.write_errors += 1
                self.refused += len(refused)
                self.last_error = str(refused[-1])
            if self.command == "publish":
                self.unheard += sum(r == 0 for r in replies if not isinstance(r, Exception))
            return len(values) - len(refused), len(refused)
        return 0, len(values)

    def _release(self) -> None:
        self._client.close()


# --- The log ---------------------------------------------------------------------
# --- Between processes ------------------------------------------------------------
# A slow-path worker process (appliance/workers.py) writes its EVE lines to
# the daemon through a SOCK_SEQPACKET socket; the daemon alone owns the
# sinks, so file rotation, syslog connections and their counters stay in
# one place and lines of different workers never interleave inside a line.
# A message is FORWARD_TAG_EVE followed by whole lines; messages stay below
# FORWARD_MESSAGE_BYTES (an AF_UNIX datagram must fit the socket's send
# buffer, ~208 KiB by default). A line larger than that alone is dropped and
# counted as oversize (EVE records are bounded far below it).
FORWARD_TAG_EVE = b"E"
FORWARD_MESSAGE_BYTES = 64 * 1024
FORWARD_LINE_MAX = 192 * 1024


class ForwardSink(Sink):
    """EVE lines to the daemon over a connected SOCK_SEQPACKET socket.
    A daemon that does not read makes the send block, the queue fill and
    records drop, counted, like any sink's."""
    kind = "forward"

    def __init__(self, sock: socket.socket, **kw):
        self.sock = sock
        self.oversize = 0
        super().__init__(**kw)

    def counters(self) -> dict:
        c = super().counters()
        c.update(oversize=self.oversize)
        return c

    def _write_batch(self, batch):
        sent = lost = 0
        msg: list[bytes] = []
        size = 0

        def send() -> int:
            try:
                self.sock.sendall(FORWARD_TAG_EVE + b"".join(msg))
                return len(msg)
            except OSError:
                self.write_errors += 1
                return -len(msg)

        for line, _ in batch:
            if len(line) > FORWARD_LINE_MAX:
                self.oversize += 1
                lost += 1
                continue
            if msg and size + len(line) > FORWARD_MESSAGE_BYTES:
                n = send()
                sent, lost = (sent + n, lost) if n >= 0 else (sent, lost - n)
                msg, size = [], 0
            msg.append(line)
            size += len(line)
        if msg:
            n = send()
            sent, lost = (sent + n, lost) if n >= 0 else (sent, lost - n)
        return sent, lost


class EveLog:
    """Serialise records once and hand each line to every sink."""

    def __init__(self, sinks: Iterable[Sink] = ()):
        self.sinks: list[Sink] = list(sinks)
        self.records = 0
        self.encode_errors = 0

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def emit(self, record: Mapping) -> bytes | None:
        """Write one record; returns its line (None if it could not be encoded)."""
        line = encode(record)
        if line is None:
            self.encode_errors += 1
            return None
        self.records += 1
        for sink in self.sinks:
            sink.submit(line, record)
        return line

    def emit_line(self, line: bytes, event_type: str = "") -> None:
        """An encoded line (ending in a newline) from a worker process: to
        every sink; ``event_type`` for the sinks that grade by it (syslog's
        severity)."""
        self.records += 1
        record = {"event_type": event_type}
        for sink in self.sinks:
            sink.submit(line, record)

    def emit_all(self, records: Iterable[Mapping]) -> int:
        return sum(self.emit(r) is not None for r in records)

    def counters(self) -> dict:
        """For stats_record: {"records": n, "encode_errors": n, "sinks": {name: {...}}}."""
        return {"records": self.records, "encode_errors": self.encode_errors,
                "sinks": {s.name: s.counters() for s in self.sinks}}

    def flush(self, timeout: float = SINK_CLOSE_TIMEOUT_S) -> bool:
        return all([s.flush(timeout) for s in self.sinks])

    def close(self, timeout: float = SINK_CLOSE_TIMEOUT_S) -> None:
        for s in self.sinks:
            s.close(timeout)
