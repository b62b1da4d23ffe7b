"""bench/slowpath.py's measures that need no lab: the slow path's CPU per
process from /proc."""
from __future__ import annotations

import os

from bench import slowpath as sp

# /proc/PID/stat after the ")" of the command: state, ppid, pgrp, session,
# tty_nr, tpgid, flags, minflt (7), cminflt, majflt, cmajflt, utime (11),
# stime (12), ...
STAT = "1 (python3) S 1 1 1 0 -1 4194560 35 0 0 0 {utime} {stime} 0 0 20 0 3 0 100 0 0\n"


def fake_process(root, pid, threads, utime=200, stime=100, switches=7):
    """A /proc/PID of ``threads`` {tid: schedstat ns or None (no file)}."""
    d = root / str(pid)
    (d / "task").mkdir(parents=True)
    (d / "stat").write_text(STAT.format(utime=utime, stime=stime))
    (d / "status").write_text(f"Name:\tpython3\nvoluntary_ctxt_switches:\t{switches}\n")
    for tid, ns in threads.items():
        (d / "task" / str(tid)).mkdir()
        (d / "task" / str(tid) / "stat").write_text(STAT.format(utime=utime, stime=stime))
        (d / "task" / str(tid) / "status").write_text(f"voluntary_ctxt_switches:\t{switches}\n")
        if ns is not None:
            (d / "task" / str(tid) / "schedstat").write_text(f"{ns} 5000 12\n")
    return d


def test_cpu_time_is_every_threads_nanoseconds_not_ticks(tmp_path, monkeypatch):
    # 10 ms ticks (utime + stime) put 1.234567 s and 1.3 s in the same
    # reading within a tick; schedstat's nanoseconds, summed over the
    # threads, do not (before: 3.0 s from the ticks below, 300 of them).
    monkeypatch.setattr(sp, "PROC", str(tmp_path))
    fake_process(tmp_path, 42, {42: 1_000_000_000, 43: 234_567_000})
    sec, switches, faults, ksec = sp.cpu_of(42)
    assert abs(sec - 1.234567) < 1e-9
    assert switches == 7 and faults == 35
    assert ksec == 100 / os.sysconf("SC_CLK_TCK")      # the kernel's share: stime's ticks


def test_one_threads_cpu_time_is_its_own(tmp_path):
    d = fake_process(tmp_path, 42, {42: 1_000_000_000, 43: 234_567_000})
    sec, *_ = sp.cpu_of(42, str(d / "task" / "43"))
    assert abs(sec - 0.234567) < 1e-9


def test_without_schedstat_the_ticks(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "PROC", str(tmp_path))
    fake_process(tmp_path, 42, {42: None})
    sec, *_ = sp.cpu_of(42)
    assert sec == 300 / os.sysconf("SC_CLK_TCK")


def test_a_process_gone_reads_as_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "PROC", str(tmp_path))
    assert sp.cpu_of(42) == (0.0, 0, 0, 0.0)


def test_this_process_reads_from_the_real_proc():
    sec, *_ = sp.cpu_of(os.getpid())
    assert sec > 0


def test_a_thread_that_ended_is_left_out_not_the_nanoseconds(tmp_path):
    # A thread listed, then gone before its schedstat was read: the other
    # threads' nanoseconds still count (before: the whole process fell back
    # to the ticks, as on a kernel without schedstat).
    d = fake_process(tmp_path, 42, {42: 1_000_000_000, 43: 234_567_000})
    tasks = [str(d / "task" / "42"), str(d / "task" / "43"), str(d / "task" / "44")]
    assert sp._run_ns(tasks) == 1_234_567_000


def test_the_lab_layout_pins_the_endpoints_and_sets_slowpath_cpus_and_says_so():
    default = sp.Layout()
    assert default.endpoint_prefix() == [] and default.settings() == {}       # today's: nothing pinned
    assert "not pinned" in default.describe()
    pinned = sp.Layout(endpoints="0", slowpath="1", nice=0)
    assert pinned.endpoint_prefix() == ["taskset", "-c", "0"]
    assert pinned.settings() == {"cpus": "1", "nice": 0}
    assert pinned.describe() == ("client and http.server on CPUs 0; slow-path workers (slowpath.cpus) on 1; "
                                 "slowpath.nice 0")


def test_a_bad_cpulist_is_refused_before_any_lab_with_the_option_named(capsys):
    # Before, taskset's refusal surfaced as "http.server on 8090 did not
    # start" after a lab was built; now argparse names the option and the value.
    import pytest
    for opt, bad, says in (("--endpoints-cpus", "9-x", "'9-x' is not a CPU number"),
                           ("--slowpath-cpus", str(os.cpu_count() + 64), "is not one this process may run on")):
        with pytest.raises(SystemExit) as e:
            sp.main(["--only", "lab", opt, bad])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"argument {opt}:" in err and says in err
    assert sp.cpulist_arg("1,0") == "0-1"      # normalised, as the setting's own parser reads it
