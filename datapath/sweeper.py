"""The session sweeper.

Expiry in the kernel is lazy: a lookup that finds an entry idle past its
state's timeout deletes it. Flows nobody sends to again would stay for ever,
so something must sweep. Two ways, one chosen per Sweeper:

* ``kernel`` (preferred): one run of the sweep program of bpf/lib/sweep.h
  (datapath/loader.py SweepProgram) walks ms_flows and ms_halfopen (each
  its IPv4 and its IPv6 map, sessions.FAMILY_TABLES) with
  bpf_for_each_map_elem and deletes expired entries from inside the walk:
  one system call, nothing copied to user space. It needs the helper
  (kernel 5.13+), sleepable BPF_PROG_TYPE_SYSCALL programs (5.14+) and the
  loader's linking of the callback, which BCC 0.26 cannot do itself; when
  any of that is missing (FastPath.sweep_error, or the compile in
  for_build, says what) the sweeper falls back to
* ``batch``: it reads the four maps with BPF_MAP_LOOKUP_BATCH a batch at a
  time into numpy buffers, picks the expired entries with one vectorised
  test per batch, and deletes them with BPF_MAP_DELETE_BATCH.

SweepStats says which one ran (``method``) and, after a fallback, why the
kernel sweep could not (``kernel_unavailable``).

Expired means, in both, what the kernel's ms_ct_lookup() means:
``now - last_seen_ns > timeout[state]``, with ``now`` read once per sweep
from CLOCK_MONOTONIC_COARSE, the clock the kernel stamps sessions with
(bpf_ktime_get_coarse_ns; see sessions.session_clock_ns). The age is taken
as a signed difference, so an entry a packet refreshed after the sweep read
the clock is young, not 2^64 ns old.

Accounting. Every entry a sweep deletes from ms_flows is added to
``ms_pressure_user.deleted``, and every one it deletes from ms_halfopen to
``ms_pressure_user.halfopen_deleted`` (half-open LRU evictions are told
from the kernel's counts minus these): by the batch sweep after each
batch, by the kernel sweep with an atomic add after each table's walk. The
kernel counts its own lazy-expiry deletes in ms_pressure, and an entry
deleted by both (a packet's lazy expiry racing the sweep) is counted once:
the kernel's delete succeeds and the sweep's gets ENOENT.
When usage is back under ``pressure_pct`` after an alert, the sweeper bumps
``ms_pressure_user.gen``, which re-arms the kernel's once-per-crossing alert.
ms_pressure_user is written by the sweeper only (user space, or the sweep
program it runs), so sweeps of one build are serialised with a lock file
(/run/microseg/sweep-<map id>.lock, removed once the map is gone).

Layouts come from BCC's ctypes types (field offsets of ``last_seen_ns`` and
``state``), never from a copy of the struct. The sweeper works on map fds,
so it serves a FastPath in this process (``for_fastpath``: the kernel sweep
is part of that build) as well as an attached build opened by map id
(``for_build``: the sweep program is compiled on its own and loaded with the
build's map fds).

A race neither way can close: between finding an expired entry and
deleting it, the kernel may delete it lazily and a new flow with the same
5-tuple be promoted into its place within the same microseconds; the sweep
then removes that new session. Cilium's and Calico's sweepers share it.
The kernel sweep shrinks that window from a batch's round trip to a few
instructions.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import attach, bpfsys
from .errors import MicrosegError
from .loader import SWEEP_MAPS, SweepProgram, compile_sweep
from .pressure import config_pressure_pct, read_pressure
from .sessions import (DEFAULT_BATCH, FAMILY_TABLES, FLOW_FLAGS, FLOW_TABLES, BatchWalker, effective_states, expiry_dtype,
                       is_v4_map, key_of4, read_timeouts_ns, session_clock_ns, table_of)


@dataclass
class SweepStats:
    scanned: int            # entries read from both tables
    expired_flows: int      # deleted from ms_flows by this sweep
    expired_halfopen: int   # deleted from ms_halfopen by this sweep
    seconds: float          # wall time
    cpu_seconds: float = 0.0  # this process's CPU time (user + system)
    scanned_flows: int = 0
    scanned_halfopen: int = 0
    entries_after: int = 0  # ms_flows entries as the kernel counts them, after the sweep
    rearmed: bool = False   # the pressure alert was re-armed (gen bumped)
    method: str = "batch"   # which sweep ran: "kernel" (bpf/lib/sweep.h) or "batch" (user space)
    kernel_unavailable: str | None = None  # why the kernel sweep did not run, after a fallback
    deferred: int = 0       # expired sessions kept because the ring refused their end record

    def as_dict(self) -> dict:
        return asdict(self)


METHODS = ("auto", "kernel", "batch")


class Sweeper:
    def __init__(self, table_fds: dict[str, int], timeouts_fd: int, pressure_fd: int,
                 pressure_user_fd: int, leaf_type: type, capacity: int,
                 pressure_pct: int | None, *, pressure_type: type, pressure_user_type: type,
                 timeout_type: type = ctypes.c_uint64, config_fd: int | None = None,
                 config_type: type | None = None, batch: int = DEFAULT_BATCH,
                 lock_dir: Path | None = None, method: str = "auto",
                 kernel: SweepProgram | None = None, kernel_error: str | None = None,
                 owns_kernel: bool = False, on_ended=None, defer_full_ring: bool = False):
        """``table_fds``: the fd of each map of sessions.FLOW_TABLES (both
        families of ms_flows and ms_halfopen). ``capacity``: the session
        limit (flow_table_size). ``pressure_pct`` None: read it from the ms_config map (``config_fd``)
        at every sweep, so a runtime change applies.

        ``method``: "auto" runs the kernel sweep ``kernel`` (a SweepProgram
        loaded for these same maps) when there is one, else the batch sweep;
        "kernel" insists on the kernel sweep (MicrosegError, with
        ``kernel_error``, when there is none); "batch" always runs the batch
        sweep. ``owns_kernel``: close() closes ``kernel``.

        ``on_ended(entries)``: the batch sweep's session ends, a list of
        (key bytes, value bytes) of the entries it deleted whose end record
        the kernel did not send (MS_FLOW_LOGGED unset): the kernel sweep
        writes those to ms_events itself, the batch sweep cannot, so its
        caller writes their flow records (appliance/flowlog.py).

        ``defer_full_ring``: the caller reads ms_events (the daemon's flow
        log): a kernel sweep keeps an expired session whose end record the
        full ring refuses, for the next sweep, so a mass expiry loses no
        record; unless the table is over its pressure threshold, where
        room for new sessions comes first (deleted, record counted lost, as
        without a reader)."""
        if pressure_pct is None and (config_fd is None or config_type is None):
            raise ValueError("pressure_pct or config_fd and config_type needed")
        if method not in METHODS:
            raise ValueError(f"method {method!r}: one of {', '.join(METHODS)}")
        if method == "kernel" and kernel is None:
            raise MicrosegError(f"the kernel sweep is not available: {kernel_error or 'not loaded'}")
        self.method = method
        self.kernel = kernel if method != "batch" else None
        self.kernel_error = kernel_error if kernel is None else None
        self._owned_kernel = kernel if owns_kernel else None
        self.fds = {name: table_fds[name] for name in FLOW_TABLES}
        self.timeouts_fd, self.timeout_type = timeouts_fd, timeout_type
        self.pressure_fd, self.pressure_user_fd = pressure_fd, pressure_user_fd
        self.pressure_type, self.pressure_user_type = pressure_type, pressure_user_type
        self.config_fd, self.config_type = config_fd, config_type
        self.capacity, self._pressure_pct = capacity, pressure_pct
        self.key_sizes = {name: bpfsys.map_info_by_fd(fd).key_size for name, fd in self.fds.items()}
        self.value_size = ctypes.sizeof(leaf_type)
        self._vdt = expiry_dtype(leaf_type)
        self._pu_deleted_off = {"ms_flows": pressure_user_type.deleted.offset,
                                "ms_halfopen": pressure_user_type.halfopen_deleted.offset}
        self._pu_gen_off = pressure_user_type.gen.offset
        self._walkers = {name: BatchWalker(fd, self.key_sizes[name], self.value_size, batch)
                         for name, fd in self.fds.items()}
        self._lock_path = self._lock_file(lock_dir)
        self.on_ended = on_ended
        self.defer_full_ring = defer_full_ring
        self._flags_off = leaf_type.flags.offset
        self._logged = FLOW_FLAGS["LOGGED"]

    # -- construction ------------------------------------------------------
    @classmethod
    def for_fastpath(cls, fp, **kw) -> "Sweeper":
        """A sweeper over the maps of a FastPath loaded in this process; its
        kernel sweep is the one that build carries (FastPath.sweep)."""
        t = fp.table
        kw.setdefault("kernel", fp.sweep)
        kw.setdefault("kernel_error", fp.sweep_error)
        return cls({n: t(n).map_fd for n in FLOW_TABLES}, t("ms_timeouts").map_fd,
                   t("ms_pressure").map_fd, t("ms_pressure_user").map_fd,
                   t(FLOW_TABLES[0]).Leaf, fp.config.flow_table_size, None,
                   pressure_type=t("ms_pressure").Leaf, pressure_user_type=t("ms_pressure_user").Leaf,
                   timeout_type=t("ms_timeouts").Leaf, config_fd=t("ms_config").map_fd,
                   config_type=t("ms_config").Leaf, **kw)

    @classmethod
    def for_build(cls, build, types: dict[str, tuple[type, type]], **kw) -> "Sweeper":
        """A sweeper over an attached build (sessions.AttachedBuild), whose
        layouts must match ``types`` (sessions.layouts()). Unless ``method``
        is "batch", the kernel sweep is compiled (about a second) and loaded
        for the build's maps; close() unloads it."""
        build.check_layouts(types)
        if kw.get("method", "auto") != "batch" and "kernel" not in kw:
            try:
                kw["kernel"] = compile_sweep({n: build.fd(n) for n in SWEEP_MAPS})
                kw["owns_kernel"] = True
            except (MicrosegError, OSError) as e:
                kw["kernel_error"] = str(e)
        return cls({n: build.fd(n) for n in FLOW_TABLES}, build.fd("ms_timeouts"),
                   build.fd("ms_pressure"), build.fd("ms_pressure_user"),
                   types[FLOW_TABLES[0]][1], build.info(FAMILY_TABLES["ms_flows"][0]).max_entries, None,
                   pressure_type=types["ms_pressure"][1], pressure_user_type=types["ms_pressure_user"][1],
                   timeout_type=types["ms_timeouts"][1], config_fd=build.fd("ms_config"),
                   config_type=types["ms_config"][1], **kw)

    # -- the sweep ------------------------------------------------------------
    def pressure_pct(self) -> int:
        if self._pressure_pct is not None:
            return self._pressure_pct
        return config_pressure_pct(self.config_fd, self.config_type)

    def sweep(self, now_ns: int | None = None) -> SweepStats:
        """One pass over both tables. ``now_ns``: CLOCK_MONOTONIC_COARSE ns to
        judge expiry against (default: read once at the start of the pass)."""
        t0, c0 = time.perf_counter(), time.process_time()
        with self._locked():
            now = session_clock_ns() if now_ns is None else now_ns
            method, why = "batch", self.kernel_error
            deferred = 0
            if self.kernel is not None:
                try:
                    run = self.kernel.run(now, defer=self.defer_full_ring and not self._over_threshold())
                except (MicrosegError, OSError) as e:
                    if self.method == "kernel":
                        raise
                    why = f"kernel sweep failed, batch sweep ran: {e}"
                else:
                    method = "kernel"
                    scanned_f, del_f = int(run.scanned_flows), int(run.expired_flows)
                    scanned_h, del_h = int(run.scanned_halfopen), int(run.expired_halfopen)
                    deferred = int(run.deferred)
            if method == "batch":
                tmo = read_timeouts_ns(self.timeouts_fd, self.timeout_type)
                scanned_f = del_f = scanned_h = del_h = 0
                for name in FAMILY_TABLES["ms_flows"]:
                    n, d = self._sweep_table(name, now, tmo)
                    scanned_f, del_f = scanned_f + n, del_f + d
                for name in FAMILY_TABLES["ms_halfopen"]:
                    n, d = self._sweep_table(name, now, tmo)
                    scanned_h, del_h = scanned_h + n, del_h + d
            entries, rearmed = self._rearm()
        return SweepStats(scanned_f + scanned_h, del_f, del_h, time.perf_counter() - t0,
                          time.process_time() - c0, scanned_f, scanned_h, entries, rearmed,
                          method=method, kernel_unavailable=why if self.method != "batch" and method == "batch"
                          else None, deferred=deferred)

    def close(self) -> None:
        """Unload the kernel sweep this sweeper loaded (for_build)."""
        if self._owned_kernel is not None:
            self._owned_kernel.close()
            self._owned_kernel = None
        self.kernel = None

    def __enter__(self) -> "Sweeper":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _sweep_table(self, name: str, now: int, tmo: np.ndarray) -> tuple[int, int]:
        w = self._walkers[name]
        vals = w.values.view(self._vdt)
        now_u = np.uint64(now)
        scanned = deleted = 0
        for n in w:
            scanned += n
            v = vals[:n]
            # signed age: a refresh after `now` was read is young, not 2^64 ns old
            age = (now_u - v["last_seen_ns"]).view(np.int64)
            idx = np.flatnonzero(age > tmo[effective_states(v)])
            if idx.size:
                keys = w.keys[idx]
                gone, missed = self._delete(self.fds[name], keys, self.key_sizes[name])
                deleted += gone
                if gone:
                    self._add_user_deleted(table_of(name), gone)
                if self.on_ended is not None and gone:
                    values = [v.tobytes() for v in w.values[idx]]
                    # records name a session by its canonical key, whichever map held it
                    widen = key_of4 if is_v4_map(name) else bytes
                    ended = [(widen(keys[i].tobytes()), v) for i, v in enumerate(values)
                             if i not in missed and not v[self._flags_off] & self._logged]
                    if ended:
                        self.on_ended(ended)
        return scanned, deleted

    def _delete(self, fd: int, keys: np.ndarray, ks: int) -> tuple[int, set[int]]:
        """Delete ``keys`` (a contiguous array); returns how many this call
        removed, and the positions of those someone else removed first."""
        total, pos, n = 0, 0, len(keys)
        missed: set[int] = set()
        base = keys.ctypes.data
        while pos < n:
            done, err = bpfsys.map_delete_batch(fd, base + pos * ks, n - pos)
            total += done
            pos += done
            if err == 0:
                break
            if err != errno.ENOENT:
                raise bpfsys.BpfError(err, f"bpf map delete batch: {os.strerror(err)}")
            missed.add(pos)
            pos += 1  # the kernel's lazy expiry deleted this one first: it counted it (and sent its end)
        return total, missed

    # -- ms_pressure_user --------------------------------------------------
    def _read_user(self) -> bytearray:
        raw = bpfsys.map_lookup(self.pressure_user_fd, b"\0\0\0\0", ctypes.sizeof(self.pressure_user_type))
        if raw is None:
            raise MicrosegError("ms_pressure_user has no element 0")
        return bytearray(raw)

    def _write_user(self, raw: bytearray) -> None:
        bpfsys.map_update(self.pressure_user_fd, b"\0\0\0\0", bytes(raw))

    def _add_user_deleted(self, table: str, n: int) -> None:
        raw = self._read_user()
        field = ctypes.c_uint64.from_buffer(raw, self._pu_deleted_off[table])
        field.value += n
        del field
        self._write_user(raw)

    def _over_threshold(self) -> bool:
        return read_pressure(self.pressure_fd, self.pressure_user_fd, self.pressure_type,
                             self.pressure_user_type, self.capacity, self.pressure_pct()).over_threshold

    def _rearm(self) -> tuple[int, bool]:
        """Bump gen when usage is under the threshold and the alert of the
        current generation was sent. Returns (entries, re-armed)."""
        p = read_pressure(self.pressure_fd, self.pressure_user_fd, self.pressure_type,
                          self.pressure_user_type, self.capacity, self.pressure_pct())
        if p.over_threshold or p.alert_armed:
            return p.entries, False
        raw = self._read_user()
        field = ctypes.c_uint64.from_buffer(raw, self._pu_gen_off)
        field.value += 1
        del field
        self._write_user(raw)
        return p.entries, True

    # -- one sweeper per build ---------------------------------------------
    def _lock_file(self, lock_dir: Path | None) -> Path:
        if lock_dir is None:
            lock_dir = attach.RUN_DIR
        map_id = bpfsys.map_info_by_fd(self.pressure_user_fd).id
        return lock_dir / f"sweep-{map_id}.lock"

    @contextlib.contextmanager
    def _locked(self):
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
        _remove_stale_locks(self._lock_path.parent)


def _remove_stale_locks(lock_dir: Path) -> None:
    """Lock files of maps that no longer exist (their build was unloaded):
    nobody can sweep those maps again, so nobody can hold or want the lock."""
    for f in lock_dir.glob("sweep-*.lock"):
        map_id = f.name[len("sweep-"):-len(".lock")]
        if not map_id.isdigit():
            continue
        try:
            os.close(bpfsys.map_fd_by_id(int(map_id)))
        except bpfsys.BpfError as e:
            if e.errno == errno.ENOENT:
                f.unlink(missing_ok=True)
