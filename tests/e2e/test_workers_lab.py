"""`microseg run` with two slow-path workers (hold mode: a request reaches
the server only after a worker let it go): flows are inspected by both,
EVE from both reaches the one file whole, metrics are summed into one
series per name, and a killed worker is replaced while the other goes on.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.lab import SERVER_V4
from appliance.priority import format_cpulist
from appliance.runconfig import WORKER_NICE_DEFAULT
from labrun import running_daemon, wait_for
from labrun import workers_running as workers

pytestmark = pytest.mark.lab

PORT = 8080
METRICS = "127.0.0.1:19478"      # inside the lab gateway's namespace
POLICY = f"""
groups:
  clients: [10.77.1.0/24]
  servers: [10.77.2.0/24]
defaults: {{ingress: deny, egress: deny}}
rules:
  - {{name: web, from: clients, to: servers, proto: tcp, ports: [{PORT}], action: inspect,
     inspect: {{what: [waf, dlp, dpi], mode: hold}}}}
"""
RULES = "waf:\n  sets: {sqli: block}\n"
CLEAN = 16          # flows per round: all on one worker of two has a chance of 2 ** -15
SQLI = "/?id=1%27%20UNION%20SELECT%20password%20FROM%20users--"


def eve(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]   # every line whole JSON


def metric(lab, name: str) -> list[float]:
    text = lab.run(lab.gateway, ["curl", "-sS", f"http://{METRICS}/metrics"]).stdout
    return [float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]


def curl(lab, path, n, sport_base):
    codes = []
    for i in range(n):
        r = lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                                 "--local-port", str(sport_base + i), f"http://{SERVER_V4}:{PORT}{path}"],
                    check=False)
        codes.append(r.stdout if r.returncode == 0 else f"curl {r.returncode}")
    return codes


def http_ports(path: Path, since: int) -> set[int]:
    return {r["src_port"] for r in eve(path) if r["event_type"] == "http" and r["src_port"] >= since}


@pytest.fixture
def server(lab, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello\n")
    p = lab.popen(lab.server, [sys.executable, "-m", "http.server", "--bind", SERVER_V4, "--directory", str(www),
                               str(PORT)], stderr=subprocess.DEVNULL)
    try:
        wait_for("http.server", lambda: lab.run(lab.server, ["ss", "-Hltn", f"sport = :{PORT}"],
                                                check=False).stdout.strip(), 15)
        yield
    finally:
        p.kill()
        p.wait(5)


def assert_own_priority(pid: int) -> None:
    from appliance.priority import WORKER_SLICE_NS, autogroup, get_slice
    if Path(f"/proc/{pid}/autogroup").exists():
        name, nice = autogroup(pid)                 # the worker's setsid() made it one
        mine = autogroup()                          # None: this test runs in the boot session's group
        assert mine is None or name != mine[0]
        assert nice == WORKER_NICE_DEFAULT
    if get_slice()[1]:             # the kernel reports slices (6.12+)
        assert get_slice(pid)[1] == WORKER_SLICE_NS


def test_two_workers_share_the_flows_and_a_killed_one_is_replaced(lab, tmp_path, server):
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "rules.yaml").write_text(RULES)
    log, eve_path = tmp_path / "run.log", tmp_path / "eve.json"
    with running_daemon(lab, tmp_path, slowpath={"workers": 2}, metrics={"listen": METRICS}):
        first = wait_for("two workers", lambda: len(workers(log)) == 2 and workers(log))
        # ahead of ordinary processes (slowpath.nice): a held request waits for its worker
        assert [os.getpriority(os.PRIO_PROCESS, p) for p in first.values()] == [WORKER_NICE_DEFAULT] * 2
        # ... against every process, not only the daemon's session's: a
        # scheduling group (autogroup) of its own at that level, and a
        # short slice so a record's wakeup runs it at once (appliance/priority.py)
        for p in first.values():
            assert_own_priority(p)
        assert curl(lab, "/index.html", CLEAN, 41000) == ["200"] * CLEAN
        assert curl(lab, SQLI, 1, 41100)[0].startswith("curl")          # held, never reached the server
        # an answered request is logged with its answer (the held one at its flow's end)
        wait_for("an http record per answered request",
                 lambda: http_ports(eve_path, 41000) == set(range(41000, 41000 + CLEAN)))
        wait_for("the alert", lambda: [r["src_port"] for r in eve(eve_path) if r["event_type"] == "alert"] == [41100])
        # one series per name, summed over the workers
        wait_for("the workers' reports", lambda: metric(lab, "microseg_ringbuf_records_total") and
                 metric(lab, "microseg_ringbuf_records_total")[0] >= CLEAN + 1)
        (before,) = metric(lab, "microseg_ringbuf_records_total")

        os.kill(first[1], signal.SIGKILL)          # a child of the daemon this test started
        second = wait_for("worker 1 started again", lambda: workers(log).get(1) != first[1] and workers(log))
        assert second[0] == first[0]               # the other worker went on
        assert os.getpriority(os.PRIO_PROCESS, second[1]) == WORKER_NICE_DEFAULT     # its replacement too
        assert_own_priority(second[1])
        assert "slow-path worker 1 (pid %d) ended: killed by signal SIGKILL" % first[1] in log.read_text()
        assert curl(lab, "/index.html", CLEAN, 42000) == ["200"] * CLEAN
        assert curl(lab, SQLI, 1, 42100)[0].startswith("curl")
        wait_for("http records after the restart",
                 lambda: http_ports(eve_path, 42000) == set(range(42000, 42000 + CLEAN)))
        wait_for("the second alert", lambda: 42100 in {r["src_port"] for r in eve(eve_path)
                                                       if r["event_type"] == "alert"})
        wait_for("counters that never went back", lambda: metric(lab, "microseg_ringbuf_records_total")[0]
                 >= before + CLEAN + 1)
        assert len(metric(lab, "microseg_ringbuf_records_total")) == 1
    # stopped: the workers closed their flows, and their flow records reached the file
    flows = {r["src_port"] for r in eve(eve_path) if r["event_type"] == "flow"}
    assert set(range(42000, 42000 + CLEAN)) <= flows
    assert "stopped" in log.read_text()



def affinity_of(pid: int) -> set[tuple[int, ...]]:
    """The CPU sets of every thread of process ``pid``."""
    return {tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir(f"/proc/{pid}/task")}


def test_slowpath_cpus_pins_the_workers_and_their_replacements_not_the_daemon(lab, tmp_path):
    # the last CPU this test may use: the workers there, one by default
    # (one per CPU of the set), the daemon where it was started
    allowed = tuple(sorted(os.sched_getaffinity(0)))
    if len(allowed) < 2:
        pytest.skip("a machine with one CPU: nothing to keep apart")
    cpus = allowed[-1:]
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "rules.yaml").write_text(RULES)
    log = tmp_path / "run.log"
    with running_daemon(lab, tmp_path, slowpath={"cpus": format_cpulist(cpus)}, metrics=None) as run:
        first = wait_for("the worker", lambda: workers(log))
        assert list(first) == [0]                      # one worker: the set has one CPU
        assert affinity_of(first[0]) == {cpus}         # every thread of it
        assert affinity_of(run.pid) == {allowed}       # the daemon: not pinned
        os.kill(first[0], signal.SIGKILL)              # a child of the daemon this test started
        second = wait_for("worker 0 started again", lambda: workers(log).get(0) != first[0] and workers(log))
        assert affinity_of(second[0]) == {cpus}
        assert f"slow-path workers on CPUs {format_cpulist(cpus)} (slowpath.cpus)" in log.read_text()
