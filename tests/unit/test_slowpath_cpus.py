"""Setting slowpath.cpus: a Linux cpulist or a list of numbers, checked
against the CPUs this process may use; a worker pinned to the set
(appliance/priority.py)."""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import priority
from appliance.runconfig import RunConfig, SlowpathConfig
from datapath.configfile import load_model
from datapath.errors import UsageError

ROOT = str(Path(__file__).resolve().parents[2])
ALLOWED = sorted(os.sched_getaffinity(0))
NOT_ALLOWED = max(ALLOWED) + 1          # a CPU number this process may not run on


@pytest.mark.parametrize("value, cpus", [
    ("1", (1,)), ("2-3,6", (2, 3, 6)), (" 6 , 0-1 ", (0, 1, 6)), ("1,1-2", (1, 2)),
    ([3, 1], (1, 3)), (["0-1", 4], (0, 1, 4)), (2, (2,)),
])
def test_a_cpulist_or_a_list_is_the_sorted_set(value, cpus):
    assert priority.parse_cpulist(value) == cpus


@pytest.mark.parametrize("value, needle", [
    ("0-", "'0-' is not a CPU number or range"), ("x", "'x' is not a CPU"), ("1,,2", "an empty item"),
    ("3-1", "'3-1': a range runs from a CPU to a higher one"), ("-1", "'-1' is not a CPU"),
    ("0-100000", "CPU 100000: above any Linux CPU number"), ([], "an empty CPU list"), (True, "a CPU list, not true/false"),
    ([1.5], "1.5 is not a CPU number"),
])
def test_a_bad_cpulist_says_what_is_wrong(value, needle):
    with pytest.raises(ValueError, match="^" + re.escape(needle)):
        priority.parse_cpulist(value)


def test_the_setting_takes_usable_cpus_and_defaults_to_not_pinned():
    assert SlowpathConfig().cpus is None
    assert SlowpathConfig(cpus=str(ALLOWED[-1])).cpus == (ALLOWED[-1],)
    assert SlowpathConfig(cpus=ALLOWED).cpus == tuple(ALLOWED)


@pytest.mark.parametrize("value, line, needle", [
    (f'"{ALLOWED[0]},{NOT_ALLOWED}"', 3, f"CPU {NOT_ALLOWED} is not one this process may run on"),
    (f"[{NOT_ALLOWED}]", 3, f"CPU {NOT_ALLOWED} is not one this process may run on"),
    ('"2-"', 3, "'2-' is not a CPU number or range"),
])
def test_a_bad_value_in_the_file_names_the_setting_line_and_cpu(tmp_path, value, line, needle):
    f = tmp_path / "run.yaml"
    f.write_text(f"interfaces: [eth0]\nslowpath:\n  cpus: {value}\n")
    with pytest.raises(UsageError) as ei:
        load_model(f, RunConfig)
    msg = str(ei.value)
    assert msg.startswith(f"{f}:{line}: slowpath.cpus: "), msg
    assert needle in msg


def test_format_cpulist_is_parse_cpulists_inverse():
    assert priority.format_cpulist({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert priority.parse_cpulist(priority.format_cpulist({0, 1, 2, 5, 7, 8})) == (0, 1, 2, 5, 7, 8)


CHILD = r"""
import json, os, sys, threading
from appliance.priority import worker_affinity
ev = threading.Event()
t = threading.Thread(target=ev.wait)        # a thread started before: pinned too
t.start()
worker_affinity(int(sys.argv[1]), tuple(json.loads(sys.argv[2])) or None)
tids = os.listdir("/proc/self/task")
print(json.dumps(sorted({tuple(sorted(os.sched_getaffinity(int(t)))) for t in tids})))
ev.set()
"""


def child(index: int, cpus: list[int]) -> list[list[int]]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(index), json.dumps(cpus)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": ROOT}, check=True)
    return json.loads(out.stdout)


def test_a_worker_and_every_thread_of_it_runs_on_the_set():
    assert child(0, [ALLOWED[-1]]) == [[ALLOWED[-1]]]
    assert child(1, ALLOWED[:1]) == [ALLOWED[:1]]
    assert child(0, []) == [ALLOWED]                   # not set: where it was


def test_a_cpu_gone_offline_is_a_warning_not_a_failure(monkeypatch, caplog):
    def offline(tid, cpus):
        raise OSError(22, "Invalid argument")
    monkeypatch.setattr(priority.os, "sched_setaffinity", offline)
    with caplog.at_level("WARNING", logger="microseg.run"):
        priority.worker_affinity(1, (0, 1))
    assert [r.getMessage() for r in caplog.records] == [
        f"worker 1: not pinned to CPUs 0-1 of slowpath.cpus (Invalid argument); it runs on CPUs "
        f"{priority.format_cpulist(os.sched_getaffinity(0))}"]
