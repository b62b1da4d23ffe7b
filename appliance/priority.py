"""A slow-path worker's scheduling: its nice level made to count, and a
short slice so a wakeup runs it at once.

Measured in the lab (bench/slowpath.py, docs/performance.md 4.6.1,
2026-12-07): the slowest 1 % of verdicts were not waiting on a timer or a
batch in the slow path; the kernel woke the worker 20-40 us after the
record's timestamp, and the worker then waited 4-14 ms for a CPU, at nice
-10, behind nice-0 processes. Two reasons, both fixed here:

* Autogroup (CONFIG_SCHED_AUTOGROUP, on by default where the cpu cgroup
  controller does not place the process: cgroup v1 at its root, a shell's
  session): the scheduler first shares the CPUs between sessions, and nice
  only ranks the processes within one. A worker in the daemon's session
  ranked ahead of the daemon alone; against every other session's process
  it weighed what a nice-0 one does. The worker starts a session of its
  own (setsid) and gives that session's group its nice level
  (/proc/self/autogroup), so the level holds against the whole machine.
  Where autogroup does not apply (a systemd service in its own cgroup)
  this changes nothing.
* EEVDF (Linux 6.6+) lets the running process finish its slice before a
  woken one of equal slice preempts it; it is then preempted at a tick
  (4 ms at HZ=250). A shorter slice than the running one's lets the woken
  worker preempt at once (Linux 6.12+ sched_setattr's sched_runtime for a
  SCHED_OTHER process; older kernels ignore the field). The slice does not
  change the worker's share of the CPU (its weight, from nice, does).

Each step that fails (no CAP_SYS_NICE, an old kernel, no /proc) is logged
in one line and the worker runs as it is.
"""
from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("microseg.run")

# A worker's slice: the kernel's smallest (it clamps sched_runtime to
# 0.1-100 ms). A worker handles a wakeup's records in ~0.15 ms and sleeps,
# so its slice rarely ends while it runs; what the short slice buys is the
# preemption of a running process with the default slice (0.75 ms x (1 +
# log2 CPUs)) when a record wakes the worker.
WORKER_SLICE_NS = 100_000
SCHED_OTHER = 0
# (sched_setattr, sched_getattr) by machine (the kernel's syscall tables)
_SYS_SCHED_ATTR = {"x86_64": (314, 315), "aarch64": (274, 275)}
AUTOGROUP = "/proc/self/autogroup"


class SchedAttr(ctypes.Structure):
    """struct sched_attr (include/uapi/linux/sched/types.h), SCHED_ATTR_SIZE_VER0."""
    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32), ("sched_flags", ctypes.c_uint64),
                ("sched_nice", ctypes.c_int32), ("sched_priority", ctypes.c_uint32),
                ("sched_runtime", ctypes.c_uint64), ("sched_deadline", ctypes.c_uint64),
                ("sched_period", ctypes.c_uint64)]


def set_slice(nice: int, slice_ns: int = WORKER_SLICE_NS) -> None:
    """This thread: SCHED_OTHER at ``nice`` with a slice of ``slice_ns``
    (sched_setattr(2)). OSError when the call fails."""
    attr = SchedAttr(size=ctypes.sizeof(SchedAttr), sched_policy=SCHED_OTHER, sched_nice=nice,
                     sched_runtime=slice_ns)
    _sched_attr(0, 0, ctypes.byref(attr), 0)       # this thread, flags 0


def get_slice(pid: int = 0) -> tuple[int, int]:
    """(nice, slice ns) of thread ``pid`` (0: this one) as sched_getattr(2)
    reports them; the slice is 0 before Linux 6.12."""
    attr = SchedAttr()
    _sched_attr(1, pid, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    return attr.sched_nice, attr.sched_runtime


def _sched_attr(which: int, *args) -> None:
    """sched_setattr (which 0) or sched_getattr (1) with ``args``."""
    nrs = _SYS_SCHED_ATTR.get(os.uname().machine)
    if nrs is None:
        raise OSError(0, f"no sched_setattr number known for {os.uname().machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    # variadic: every integer as a long, or its upper half is left undefined
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    if libc.syscall(ctypes.c_long(nrs[which]), *args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def autogroup(pid: int | str = "self") -> tuple[str, int] | None:
    """(name, nice) of process ``pid``'s autogroup, as /proc/PID/autogroup
    reads. None when the kernel has no autogroups, or when the process is
    in the boot session's group: the kernel prints nothing for that one (a
    process tree where no ancestor called setsid(), e.g. a container's or
    a CI runner's, is in it)."""
    try:
        fields = open(f"/proc/{pid}/autogroup").read().split()
    except FileNotFoundError:
        return None
    if len(fields) != 3 or fields[1] != "nice":
        return None
    return fields[0], int(fields[2])


def own_autogroup(nice: int, path: str = AUTOGROUP) -> bool:
    """A session of this process's own, whose autogroup gets ``nice``.
    False when the kernel has no autogroups (nothing to do: nice then
    ranks against every process). OSError when it cannot be set."""
    if not os.path.exists(path):
        return False
    if os.getsid(0) != os.getpid():
        os.setsid()
    with open(path, "w") as f:
        f.write(str(nice))
    return True


def worker_priority(index: int, nice: int) -> None:
    """A forked worker, before it reads its ring: nice level, its own
    autogroup at that level, the short slice (the module says why)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as e:         # EPERM/EACCES: no CAP_SYS_NICE (a container without it)
        log.warning("worker %d: slowpath.nice %d not set (%s); it runs at nice %d", index, nice,
                    os.strerror(e.errno), os.getpriority(os.PRIO_PROCESS, 0))
        nice = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        own_autogroup(nice)
    except OSError as e:
        log.warning("worker %d: its session's scheduling group not set to nice %d (%s); other sessions' "
                    "processes weigh as much as it", index, nice, e.strerror or e)
    try:
        set_slice(nice)
    except OSError as e:
        log.warning("worker %d: scheduling slice not shortened (%s); a record may wait for a tick to run it",
                    index, e.strerror or e)


# -- the CPUs the slow path runs on (setting slowpath.cpus) -----------------------
#
# Suricata's threading.cpu-affinity for an inline gateway: the forwarding
# (softirq, on the CPU of whoever sends) and the endpoints' processes on
# some CPUs, inspection on others, so a connection's ~0.4 ms of worker CPU
# does not land on the CPU its packets are forwarded on. Default: not
# pinned. Measured in the lab (bench/slowpath.py --quick, client and
# http.server on CPU 0, slowpath.cpus 1, 4 alternated rounds, load 2-4):
# * only the workers are pinned, not the daemon: with it on the set too,
#   hold fell from 0.58 to 0.50 of the allow rule (1 worker) and from 0.55
#   to 0.48 (2), async from 0.83 to 0.78 and 0.92 to 0.81. Its ~90 us per
#   connection (EVE lines, flow records) is off the verdict's path; on the
#   workers' CPUs it delays them.
# * every worker may run on every CPU of the set, not worker i on the i-th:
#   with 2 workers on CPUs 0-1 (CPU 0 shared with the endpoints), the held
#   verdict's p99 was 0.97 ms against 1.59 (13 rounds), the ratios the same
#   within the noise; the scheduler moves a worker off a CPU that is busy.

# A cpulist's size: Linux's CONFIG_NR_CPUS maximum (8192); a range beyond
# it is a typo, and expanding it would build a huge set.
CPU_MAX = 8192


def parse_cpulist(value: str | int | list | tuple) -> tuple[int, ...]:
    """Sorted CPUs of a Linux cpulist ("1", "2-3,6", cpuset(7)'s format
    without strides), a list of CPU numbers, or one number. ValueError
    naming the bad part."""
    if isinstance(value, bool):
        raise ValueError("a CPU list, not true/false")
    if isinstance(value, int):
        parts: list = [value]
    elif isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise ValueError(f"a CPU list (\"2-3,6\" or [2, 3, 6]), not {type(value).__name__}")
    cpus: set[int] = set()
    for p in parts:
        if isinstance(p, bool) or not isinstance(p, (int, str)):
            raise ValueError(f"{p!r} is not a CPU number")
        item = str(p).strip()
        lo, dash, hi = item.partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise ValueError(f"{item!r} is not a CPU number or range (\"2-3\")" if item else "an empty item") from None
        if first < 0 or last < first:
            raise ValueError(f"{item!r}: a range runs from a CPU to a higher one, from 0")
        if last >= CPU_MAX:
            raise ValueError(f"CPU {last}: above any Linux CPU number (< {CPU_MAX})")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError("an empty CPU list")
    return tuple(sorted(cpus))


def check_usable(cpus: tuple[int, ...], allowed: set[int] | None = None) -> None:
    """ValueError naming the first CPU of ``cpus`` this process may not run
    on (its affinity: a container's cpuset, systemd's CPUAffinity=)."""
    allowed = os.sched_getaffinity(0) if allowed is None else allowed
    bad = [c for c in cpus if c not in allowed]
    if bad:
        raise ValueError(f"CPU {bad[0]} is not one this process may run on (it may use "
                         f"{format_cpulist(allowed)})")


def format_cpulist(cpus) -> str:
    """The cpulist string of a set of CPUs ({0, 1, 2, 5} -> "0-2,5")."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def pin_process(cpus) -> None:
    """Every thread of this process onto ``cpus`` (sched_setaffinity is per
    thread; threads started later inherit the caller's)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass            # a thread that ended meanwhile


def worker_affinity(index: int, cpus: tuple[int, ...] | None) -> None:
    """A forked worker onto the CPUs of slowpath.cpus (None: not pinned); a
    failure (a CPU went offline since the setting was checked) is one
    warning and the worker runs where the daemon does."""
    if not cpus:
        return
    try:
        pin_process(set(cpus))
    except OSError as e:
        log.warning("worker %d: not pinned to CPUs %s of slowpath.cpus (%s); it runs on CPUs %s", index,
                    format_cpulist(cpus), e.strerror or e, format_cpulist(os.sched_getaffinity(0)))
