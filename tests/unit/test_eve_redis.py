"""The Redis EVE sink against a real redis-server (Debian's package, which
scripts/setup-host.sh installs): each mode, batches whole and in order, the
collector down at start, stopped, stalled, refusing; the run configuration
that builds it.

Every test starts its own redis-server in a temporary directory (a Unix
socket, or a free loopback port), with persistence off, and stops it by PID
when it ends, failed or not. No system Redis is touched.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis

from appliance.daemon import eve_log
from appliance.runconfig import RunConfig
from datapath.configfile import load_model
from datapath.errors import UsageError
from slowpath import eve, eve_sinks

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# Deadlock guards, not timing bounds: a redis-server starts in milliseconds
# and every wait below ends on its condition long before these.
START_GUARD_S = 30.0
HANG_GUARD_S = 120.0
TS_TEXT = "2023-11-14T22:13:20.000000+0000"


class RedisServer:
    """A redis-server of the test's own: Unix socket (``unix=True``) or a
    free loopback port, no RDB or AOF, its files in ``workdir``."""

    def __init__(self, workdir: Path, unix: bool = True):
        self.dir = workdir
        self.unix = unix
        self.sock = str(workdir / "redis.sock") if unix else None
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return self.sock if self.unix else "127.0.0.1"

    def client(self) -> redis.Redis:
        if self.unix:
            return redis.Redis(unix_socket_path=self.sock, socket_timeout=START_GUARD_S)
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=START_GUARD_S)

    def start(self) -> "RedisServer":
        if not os.path.exists(REDIS_SERVER):
            pytest.fail("redis-server not found: scripts/setup-host.sh installs Debian's redis-server")
        for _ in range(5):                  # a free port can be taken between probe and bind
            if not self.unix and not self.port:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    self.port = s.getsockname()[1]
            args = [REDIS_SERVER, "--port", str(0 if self.unix else self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                    "--logfile", str(self.dir / "redis.log"), "--daemonize", "no"]
            if self.unix:
                args += ["--unixsocket", self.sock, "--unixsocketperm", "700"]
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            if self._wait_ready():
                return self
            self.stop()
            if self.unix:
                break
            self.port = 0
        log = (self.dir / "redis.log")
        pytest.fail(f"redis-server did not start: {log.read_text()[-2000:] if log.exists() else ''}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_GUARD_S
        c = self.client()
        try:
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if c.ping():
                        return True
                except redis.ConnectionError:
                    time.sleep(0.01)
            return False
        finally:
            c.close()

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        os.kill(p.pid, signal.SIGCONT)      # a paused server would hold SIGTERM pending
        p.terminate()
        try:
            p.wait(START_GUARD_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture
def workdir():
    # Short, so the socket path stays under sun_path's 108 bytes.
    d = Path(tempfile.mkdtemp(prefix="ms-redis-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def servers(workdir):
    """Start servers with servers(unix=...); all are stopped at the end."""
    started: list[RedisServer] = []

    def make(unix: bool = True, start: bool = True, sub: str = "") -> RedisServer:
        d = workdir / sub if sub else workdir
        d.mkdir(exist_ok=True)
        srv = RedisServer(d, unix)
        started.append(srv)
        return srv.start() if start else srv

    try:
        yield make
    finally:
        for srv in started:
            srv.stop()


@pytest.fixture
def fast_backoff(monkeypatch):
    # Reconnect within milliseconds so a test waits on its condition, not on the backoff.
    monkeypatch.setattr(eve_sinks, "REDIS_BACKOFF_MIN_S", 0.01)
    monkeypatch.setattr(eve_sinks, "REDIS_BACKOFF_MAX_S", 0.05)


def records(n: int, start: int = 0) -> list[dict]:
    """Numbered records (the number in stats.uptime): the sink carries any record."""
    return [{"timestamp": TS_TEXT, "event_type": "stats", "stats": {"uptime": i}}
            for i in range(start, start + n)]


def seqs(values) -> list[int]:
    return [json.loads(v)["stats"]["uptime"] for v in values]


def in_order(values: list[int]) -> bool:
    """Strictly increasing: in submission order, none twice."""
    return all(a < b for a, b in zip(values, values[1:]))


def returns(fn, *args, **kwargs) -> bool:
    """Run fn in a thread; True when it returned before the hang guard."""
    t = threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True)
    t.start()
    t.join(HANG_GUARD_S)
    return not t.is_alive()


def wait_for(cond, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# --- Modes ------------------------------------------------------------------------

@pytest.mark.parametrize("mode, oldest_first", [("list", False), ("lpush", False), ("rpush", True)])
def test_list_modes_deliver_batches_whole_and_in_order(servers, mode, oldest_first):
    srv = servers(unix=False)
    sink = eve_sinks.RedisSink(srv.host, srv.port, mode, "ms-eve")
    log = eve_sinks.EveLog([sink])
    n = 3 * eve_sinks.SINK_BATCH_RECORDS + 17        # several pipelined batches
    lines = [log.emit(r) for r in records(n)]
    assert log.flush(HANG_GUARD_S)
    got = srv.client().lrange("ms-eve", 0, -1)
    if not oldest_first:
        got.reverse()                                 # LPUSH: the newest is at the head
    # The JSON line without its newline, byte for byte, each once, in order.
    assert got == [line.rstrip(b"\n") for line in lines]
    c = sink.counters()
    assert c["sent"] == n and c["dropped"] == 0 and c["write_errors"] == 0 and c["connects"] == 1
    log.close()


def test_channel_mode_publishes_each_record_to_a_subscriber(servers):
    srv = servers()
    sub = srv.client().pubsub()
    sub.subscribe("ms-eve")
    assert sub.get_message(timeout=START_GUARD_S)["type"] == "subscribe"
    sink = eve_sinks.RedisSink(srv.host, mode="channel", key="ms-eve")
    log = eve_sinks.EveLog([sink])
    n = eve_sinks.SINK_BATCH_RECORDS + 44
    lines = [log.emit(r) for r in records(n)]
    assert log.flush(HANG_GUARD_S)
    got = []
    deadline = time.monotonic() + HANG_GUARD_S
    while len(got) < n and time.monotonic() < deadline:
        m = sub.get_message(timeout=1.0)
        if m and m["type"] == "message":
            got.append(m["data"])
    assert got == [line.rstrip(b"\n") for line in lines]
    assert sink.counters()["unheard"] == 0
    sub.unsubscribe("ms-eve")
    sub.close()
    wait_for(lambda: srv.client().pubsub_numsub("ms-eve")[0][1] == 0, "the subscriber to leave")
    log.emit(records(1, n)[0])                        # nobody listens: sent, and counted as unheard
    assert log.flush(HANG_GUARD_S)
    c = sink.counters()
    assert c["sent"] == n + 1 and c["unheard"] == 1 and c["dropped"] == 0
    log.close()


def test_stream_mode_adds_entries_with_an_eve_field(servers):
    srv = servers()
    sink = eve_sinks.RedisSink(srv.host, mode="stream", key="ms-eve")
    log = eve_sinks.EveLog([sink])
    n = eve_sinks.SINK_BATCH_RECORDS + 3
    lines = [log.emit(r) for r in records(n)]
    assert log.flush(HANG_GUARD_S)
    entries = srv.client().xrange("ms-eve")
    # Suricata's shape: one field, "eve", holding the JSON record.
    assert [fields for _, fields in entries] == [{b"eve": line.rstrip(b"\n")} for line in lines]
    assert sink.counters()["sent"] == n
    log.close()


def test_stream_maxlen_trims_the_oldest_entries(servers):
    srv = servers()
    sink = eve_sinks.RedisSink(srv.host, mode="xadd", key="ms-eve", stream_maxlen=10, stream_trim_exact=True)
    log = eve_sinks.EveLog([sink])
    log.emit_all(records(50))
    assert log.flush(HANG_GUARD_S)
    entries = srv.client().xrange("ms-eve")
    assert seqs(f[b"eve"] for _, f in entries) == list(range(40, 50))
    log.close()


def test_worker_lines_go_to_redis_as_they_came(servers):
    # emit_line: lines a slow-path worker process forwarded, already encoded.
    srv = servers()
    sink = eve_sinks.RedisSink(srv.host, mode="rpush", key="ms-eve")
    log = eve_sinks.EveLog([sink])
    line = eve.encode(records(1)[0])
    log.emit_line(line, "stats")
    assert log.flush(HANG_GUARD_S)
    assert srv.client().lrange("ms-eve", 0, -1) == [line.rstrip(b"\n")]
    log.close()


# --- When the collector is away -------------------------------------------------

def test_collector_down_at_start_then_up(servers, fast_backoff):
    # Records accepted while Redis is down are held (the queue and the batch
    # in hand) and delivered when it comes up; those past the queue's bound
    # are dropped and counted; records after it came up all arrive.
    srv = servers(start=False)
    sink = eve_sinks.RedisSink(srv.host, mode="rpush", key="ms-eve", queue_records=50)
    log = eve_sinks.EveLog([sink])
    assert returns(log.emit_all, records(200)), "emit_all waited on a collector that is down"
    wait_for(lambda: sink.counters()["write_errors"] >= 1, "a failed connect")
    c = sink.counters()
    assert c["sent"] == 0 and c["queue_full"] >= 200 - 2 * 50
    srv.start()
    assert log.flush(HANG_GUARD_S)
    c = sink.counters()
    held = c["sent"]
    assert 1 <= held <= 2 * 50 and held + c["dropped"] == 200
    assert c["dropped"] == c["queue_full"]            # nothing lost but what the bound refused
    # What was held (the batch in the worker's hand, then what the queue
    # took whenever it had room): each once, in order, the first one first.
    got = seqs(srv.client().lrange("ms-eve", 0, -1))
    assert len(got) == held and got[0] == 0 and in_order(got)
    log.emit_all(records(30, 1000))
    assert log.flush(HANG_GUARD_S)
    assert seqs(srv.client().lrange("ms-eve", 0, -1)) == got + list(range(1000, 1030))
    log.close()
    assert sink.counters()["connects"] == 1


def test_collector_stopped_mid_run_then_restarted(servers, fast_backoff):
    srv = servers()
    sink = eve_sinks.RedisSink(srv.host, mode="rpush", key="ms-eve", queue_records=40)
    log = eve_sinks.EveLog([sink])
    log.emit_all(records(10))
    assert log.flush(HANG_GUARD_S)
    assert seqs(srv.client().lrange("ms-eve", 0, -1)) == list(range(10))
    srv.stop()                                        # by PID; its data goes with it (no RDB)
    assert returns(log.emit_all, records(300, 100)), "emit_all waited on a stopped collector"
    wait_for(lambda: sink.counters()["write_errors"] >= 1, "a failed write")
    c = sink.counters()
    assert c["sent"] == 10 and c["queue_full"] >= 300 - 2 * 40      # bounded: the rest refused
    srv.start()                                       # a new server on the same socket
    assert log.flush(HANG_GUARD_S)
    c = sink.counters()
    after = seqs(srv.client().lrange("ms-eve", 0, -1))
    assert after and after[0] == 100 and in_order(after) and after[-1] < 400
    assert c["sent"] == 10 + len(after) and c["sent"] + c["dropped"] == 310
    assert c["connects"] == 2
    log.close()


def test_a_collector_that_stops_answering_costs_drops_not_waiting(servers, monkeypatch, fast_backoff):
    # A stalled Redis (SIGSTOP: the socket accepts, nothing answers) is a slow
    # collector: the write times out, records queue, then drop.
    monkeypatch.setattr(eve_sinks, "REDIS_SEND_TIMEOUT_S", 0.2)
    monkeypatch.setattr(eve_sinks, "REDIS_CONNECT_TIMEOUT_S", 0.2)
    srv = servers()
    sink = eve_sinks.RedisSink(srv.host, mode="list", key="ms-eve", queue_records=20)
    log = eve_sinks.EveLog([sink])
    log.emit_all(records(5))
    assert log.flush(HANG_GUARD_S)
    srv.pause()
    assert returns(log.emit_all, records(500, 5)), "emit_all waited on a stalled collector"
    wait_for(lambda: sink.counters()["write_errors"] >= 1, "a timed-out write")
    assert sink.counters()["queue_full"] >= 500 - 2 * 20
    assert returns(log.close, timeout=0.5), "close waited on a stalled collector"
    c = sink.counters()
    assert c["sent"] >= 5 and c["sent"] + c["dropped"] == 505 and c["queued"] == 0


def test_records_redis_refuses_are_counted_not_retried(servers):
    srv = servers()
    srv.client().set("ms-eve", "not a list")           # every LPUSH now answers WRONGTYPE
    sink = eve_sinks.RedisSink(srv.host, mode="list", key="ms-eve")
    log = eve_sinks.EveLog([sink])
    log.emit_all(records(7))
    assert log.flush(HANG_GUARD_S)
    c = sink.counters()
    assert c["refused"] == 7 and c["dropped"] == 7 and c["sent"] == 0 and c["write_errors"] >= 1
    assert "WRONGTYPE" in sink.last_error
    log.close()


def test_close_cuts_a_long_backoff_short(monkeypatch, workdir):
    monkeypatch.setattr(eve_sinks, "REDIS_BACKOFF_MIN_S", 3600.0)
    sink = eve_sinks.RedisSink(str(workdir / "nobody.sock"), mode="list", queue_records=10)
    log = eve_sinks.EveLog([sink])
    assert returns(log.emit_all, records(100))
    wait_for(lambda: sink.counters()["write_errors"] >= 1, "a failed connect")
    assert returns(log.close, timeout=0.5), "close waited out the reconnect backoff"
    c = sink.counters()
    assert c["sent"] == 0 and c["dropped"] == 100 and c["queued"] == 0


def test_redis_sink_rejects_bad_settings():
    with pytest.raises(ValueError, match="mode"):
        eve_sinks.RedisSink(mode="sadd")
    with pytest.raises(ValueError, match="key"):
        eve_sinks.RedisSink(key="")
    with pytest.raises(ValueError, match="stream_maxlen"):
        eve_sinks.RedisSink(stream_maxlen=-1)


# --- The run configuration ------------------------------------------------------

def write_config(tmp_path, eve_text: str) -> Path:
    f = tmp_path / "run.yaml"
    f.write_text("interfaces: [eth1]\neve:\n" + eve_text)
    return f


def test_eve_log_builds_the_redis_sink_from_the_run_config(servers, tmp_path):
    srv = servers(unix=False)
    f = write_config(tmp_path, f"  redis:\n    host: 127.0.0.1\n    port: {srv.port}\n"
                               "    mode: stream\n    key: gw1-eve\n    stream_maxlen: 500\n")
    cfg = load_model(f, RunConfig)
    log = eve_log(cfg)
    try:
        [sink] = log.sinks
        assert isinstance(sink, eve_sinks.RedisSink)
        assert (sink.host, sink.port, sink.command, sink.key, sink.stream_maxlen) == \
            ("127.0.0.1", srv.port, "xadd", "gw1-eve", 500)
        line = log.emit(records(1)[0])
        assert log.flush(HANG_GUARD_S)
        assert [f for _, f in srv.client().xrange("gw1-eve")] == [{b"eve": line.rstrip(b"\n")}]
    finally:
        log.close()


def test_redis_config_defaults_are_suricatas_but_the_key():
    cfg = RunConfig.model_validate({"interfaces": ["eth1"], "eve": {"redis": {}}})
    r = cfg.eve.redis
    assert (r.host, r.port, r.mode, r.stream_maxlen, r.stream_trim_exact) == \
        ("127.0.0.1", 6379, "list", 100_000, False)
    assert r.key == "microseg"


@pytest.mark.parametrize("text, line, needle", [
    ("  redis:\n    mode: sadd\n", 4, "eve.redis.mode"),
    ("  redis:\n    port: 70000\n", 4, "eve.redis.port"),
    ("  redis:\n    key: ''\n", 4, "eve.redis.key"),
    ("  redis:\n    stream_maxlen: -1\n", 4, "eve.redis.stream_maxlen"),
    ("  redis:\n    server: 10.0.0.1\n", 4, "eve.redis.server"),
    ("  redis:\n    host: h\n    username: u\n", 4, "username without password"),
])
def test_redis_config_errors_name_file_and_line(tmp_path, text, line, needle):
    f = write_config(tmp_path, text)
    with pytest.raises(UsageError) as ei:
        load_model(f, RunConfig)
    msg = str(ei.value)
    assert msg.startswith(f"{f}:{line}:"), msg
    assert needle in msg


# --- Where an operator sees the counters -----------------------------------------

def test_sink_counters_are_prometheus_series(servers):
    # The daemon registers EveSinkCollector(eve.counters) on its endpoint.
    from slowpath.metrics import EveSinkCollector, Metrics
    srv = servers()
    srv.client().set("taken", "not a list")
    good = eve_sinks.RedisSink(srv.host, mode="rpush", key="ms-eve")
    bad = eve_sinks.RedisSink(srv.host, mode="list", key="taken")
    log = eve_sinks.EveLog([good, bad])
    m = Metrics(slowpath=False, kernel=False)
    m.registry.register(EveSinkCollector(log.counters))
    value = m.registry.get_sample_value
    assert value("microseg_eve_records_total", {"sink": "redis_rpush", "outcome": "dropped"}) == 0
    log.emit_all(records(5))
    assert log.flush(HANG_GUARD_S)
    assert value("microseg_eve_records_total", {"sink": "redis_rpush", "outcome": "sent"}) == 5
    assert value("microseg_eve_records_total", {"sink": "redis_lpush", "outcome": "dropped"}) == 5
    assert value("microseg_eve_write_errors_total", {"sink": "redis_lpush"}) >= 1
    assert value("microseg_eve_queued_records", {"sink": "redis_rpush"}) == 0
    log.close()
