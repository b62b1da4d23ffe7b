"""appliance/priority.py: a worker's nice level counts against other
sessions' processes (its own autogroup) and its wakeups preempt (a short
slice). Each case runs in a child process: the calls change the caller."""
import os
import subprocess
import sys
from pathlib import Path

from appliance import priority

ROOT = str(Path(__file__).resolve().parents[2])
CHILD = r"""
import json, os, sys
from appliance.priority import autogroup, get_slice, worker_priority
worker_priority(0, int(sys.argv[1]))
print(json.dumps({"nice": os.getpriority(os.PRIO_PROCESS, 0), "sid": os.getsid(0), "pid": os.getpid(),
                  "autogroup": autogroup(), "attr": get_slice()}))
"""


def child(nice: int) -> dict:
    import json
    out = subprocess.run([sys.executable, "-c", CHILD, str(nice)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": ROOT}, check=True)
    return json.loads(out.stdout)


def test_worker_gets_its_own_session_group_at_its_nice_and_the_short_slice():
    # nice 5: no privilege needed, and not this process's own level
    got = child(5)
    assert got["nice"] == 5
    assert got["sid"] == got["pid"]                       # a session of its own
    if os.path.exists("/proc/self/autogroup"):            # a kernel with autogroups
        name, group_nice = got["autogroup"]                # setsid() made the worker one ...
        mine = priority.autogroup()                        # (None: this process is in the boot session's)
        assert mine is None or name != mine[0]             # ... not this (the daemon's) group
        assert group_nice == 5                             # the group weighs what the worker's nice says
    nice, slice_ns = got["attr"]
    assert nice == 5
    if priority.get_slice()[1]:                            # the kernel reports slices (6.12+)
        assert slice_ns == priority.WORKER_SLICE_NS


def test_a_failing_step_is_one_warning_and_the_rest_still_runs(monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(priority.os, "setpriority", lambda *a: calls.append("nice"))
    monkeypatch.setattr(priority, "own_autogroup", lambda nice: (_ for _ in ()).throw(PermissionError(13, "denied")))
    monkeypatch.setattr(priority, "set_slice", lambda nice: calls.append(("slice", nice)))
    with caplog.at_level("WARNING", logger="microseg.run"):
        priority.worker_priority(3, -10)
    assert calls == ["nice", ("slice", -10)]
    assert [r.getMessage() for r in caplog.records] == [
        "worker 3: its session's scheduling group not set to nice -10 (denied); other sessions' processes "
        "weigh as much as it"]


def test_autogroup_reads_none_for_the_boot_sessions_group(monkeypatch):
    # the kernel prints nothing for the group every process is in until an
    # ancestor calls setsid() (a CI runner's or a container's tree)
    files = {"/proc/1/autogroup": "", "/proc/2/autogroup": "/autogroup-354 nice -10\n"}
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: __import__("io").StringIO(files[p]) if p in files
                        else real_open(p, *a, **k))
    assert priority.autogroup(1) is None
    assert priority.autogroup(2) == ("/autogroup-354", -10)
    assert priority.autogroup(2**22 + 1) is None           # above any pid_max: no such process


def test_no_autogroup_file_is_nothing_to_do(tmp_path):
    assert priority.own_autogroup(-10, str(tmp_path / "absent")) is False
