"""Lab servers the end-to-end tests start inside a lab's server namespace:
h2c_server.py (HTTP/2 cleartext, prior knowledge and Upgrade), grpc_lab.py
(a grpcio server and client), compressed_server.py (gzip / deflate / br
responses), quic_server.py (an aioquic echo server and client), tls_echo.py
(TLS over TCP, logging each ClientHello's SNI).
``lab_server`` starts one, waits for it to say ``ready`` and to listen,
and ends it by its PID on the way out, also when the test fails."""
from __future__ import annotations

import contextlib
import selectors
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
START_TIMEOUT_S = 30      # the compressed server compresses ~12 MiB twice before it listens
STOP_TIMEOUT_S = 5


@contextlib.contextmanager
def lab_server(lab, tmp: Path, script: str, *args: str, port: int, udp: bool = False):
    """``python servers/<script> *args`` in ``lab.server``; yields its Popen
    once it printed ``ready`` and something listens on ``port`` (TCP, or a
    bound UDP socket with ``udp``). Its stderr goes to ``tmp``/<script>-<port>.err."""
    err = open(tmp / f"{Path(script).stem}-{port}.err", "w")
    proc = lab.popen(lab.server, [sys.executable, str(HERE / script), *args], stdout=subprocess.PIPE,
                     stderr=err, text=True)
    try:
        _wait_ready(proc, tmp / f"{Path(script).stem}-{port}.err")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not lab.run(lab.server, ["ss", "-Hlun" if udp else "-Hltn", f"sport = :{port}"],
                          check=False).stdout.strip():
            assert time.monotonic() < deadline, f"{script}: nothing listens on {port} in {lab.server}"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(STOP_TIMEOUT_S)
        err.close()


def _wait_ready(proc: subprocess.Popen, err: Path) -> None:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(START_TIMEOUT_S):
            raise AssertionError(f"{proc.args}: not ready within {START_TIMEOUT_S} s: {err.read_text()}")
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"{proc.args}: {line!r} {err.read_text()}"
    finally:
        sel.close()


def log_lines(path: Path) -> list[str]:
    """The request log a server wrote (empty before its first request)."""
    return path.read_text().splitlines() if path.exists() else []
