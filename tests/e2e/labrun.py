"""`microseg run` in a lab's gateway, for the lab tests that need the live
daemon: started from a run configuration written beside the test's files,
stopped (SIGTERM) and detached (`microseg down`) on the way out, also when
the test fails."""
from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from appliance.lab import GW_IFACES, Lab

MICROSEG = [sys.executable, "-m", "appliance.cli"]
STOP_WAIT_S = 30   # a stopping daemon drains its ring and logs its open flows first
# A worker's own line, logged once it has set its priority (nice, autogroup,
# slice: appliance/priority.py) and before it reads its ring. Not the
# daemon's "slow-path worker N started": that comes right after the fork,
# before the child has set anything, and a test reading the worker's
# priority on it raced the child (its autogroup nice was still 0 once).
WORKER_RUNNING = re.compile(r"\bworker (\d+) running \(pid (\d+)\)")


def wait_for(what, check, timeout=30.0):
    """``check()``'s first true value, polled until ``timeout``; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def workers_running(log: Path) -> dict[int, int]:
    """Worker index -> pid of its latest start, from the daemon's log: each
    worker counted once it runs with its priority set."""
    return {int(i): int(pid) for i, pid in WORKER_RUNNING.findall(log.read_text())}


@contextlib.contextmanager
def running_daemon(lab: Lab, tmp: Path, **config):
    """`microseg run` with ``tmp``/policy.yaml and rules.yaml, EVE to
    ``tmp``/eve.json and its log to ``tmp``/run.log; ``config`` adds or
    overrides run settings. Yields the daemon's Popen once it says it runs."""
    (tmp / "run.yaml").write_text(json.dumps({
        "netns": lab.gateway, "interfaces": list(GW_IFACES),
        "policy": str(tmp / "policy.yaml"), "rules": str(tmp / "rules.yaml"),
        "eve": {"file": {"path": str(tmp / "eve.json")}}, "stats_interval_s": 60, **config}))
    with open(tmp / "run.log", "w") as log:
        run = subprocess.Popen([*MICROSEG, "run", "--config", str(tmp / "run.yaml")], stdout=subprocess.PIPE,
                               stderr=log, text=True)
    try:
        line = run.stdout.readline()
        assert "microseg running" in line, (tmp / "run.log").read_text()
        yield run
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
            try:
                run.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait(5)
        subprocess.run([*MICROSEG, "down", "--netns", lab.gateway, "--iface", *GW_IFACES], capture_output=True)
