"""The payload ring of each slow-path worker.

The kernel sends a session's payload records to the ring of the worker its
key hashes to (bpf/lib/inspect.h ms_insp_worker): slot ``i`` of the
ms_insp_rings array of maps. Slot 0 is the build's own ms_insp_ring (the
loader puts it there); this module makes the rings of workers 1..n-1, of
the same size, and puts them in their slots.

Like ms_insp_ring, they outlive a build: pinned beside the state maps as
``ms_insp_ring_w<i>``, a restarted daemon reads on where the last one
stopped, and records a killed worker had not read are still there for the
worker started in its place. A pinned ring of another size (the ring size
changed) is made anew, as the state module does with ms_insp_ring; rings of
workers beyond the new count are removed, and the unread bytes they held
are said in the lines returned.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import bpfsys
from .enums import SLOWPATH_WORKERS_MAX

PIN_PREFIX = "ms_insp_ring_w"


def pending_bytes(fd: int) -> int:
    """Unread bytes of a ring (producer minus consumer position), by mmap
    (read-only: the reader's position is not moved)."""
    import mmap
    page = mmap.PAGESIZE
    try:
        with mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=0) as c, \
                mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=page) as p:
            return int.from_bytes(p[:8], "little") - int.from_bytes(c[:8], "little")
    except (OSError, ValueError):
        return 0


class WorkerRings:
    """The rings of ``workers`` workers of a loaded build (``fastpath``),
    in their ms_insp_rings slots; ``fds[i]`` is worker i's ring. Rings
    1..n-1 are pinned in ``pin_dir`` when given (None: unpinned, for tests
    and benchmarks). ``close()`` closes the fds this object opened."""

    def __init__(self, fastpath, workers: int, pin_dir: Path | None = None):
        if not 1 <= workers <= SLOWPATH_WORKERS_MAX:
            raise ValueError(f"slow-path workers: {workers} is not 1..{SLOWPATH_WORKERS_MAX}")
        if workers > 1 and not fastpath.features.ringbuf:
            raise ValueError("slow-path workers: more than one needs BPF ring buffers (kernel 5.8); "
                             "this build uses the perf buffer fallback, which one worker reads")
        self.lines: list[str] = []
        self.fds: list[int] = []
        self._own: list[int] = []
        if not fastpath.features.ringbuf:
            return
        base = fastpath.table("ms_insp_ring").map_fd
        info = bpfsys.map_info_by_fd(base)
        slots = fastpath.table("ms_insp_rings").map_fd
        self.fds.append(base)
        try:
            for i in range(1, workers):
                fd = self._ring(i, info.max_entries, pin_dir)
                self._own.append(fd)
                self.fds.append(fd)
                bpfsys.map_update(slots, i.to_bytes(4, "little"), fd.to_bytes(4, "little"))
        except Exception:
            self.close()
            raise
        if pin_dir is not None:
            self._remove_beyond(workers, pin_dir)

    def _ring(self, i: int, size: int, pin_dir: Path | None) -> int:
        name = f"{PIN_PREFIX}{i}"
        path = pin_dir / name if pin_dir is not None else None
        if path is not None and path.exists():
            fd = bpfsys.obj_get(str(path))
            got = bpfsys.map_info_by_fd(fd)
            if got.type == bpfsys.BPF_MAP_TYPE_RINGBUF and got.max_entries == size:
                return fd
            lost = pending_bytes(fd) if got.type == bpfsys.BPF_MAP_TYPE_RINGBUF else 0
            os.close(fd)
            path.unlink()
            self.lines.append(f"{name}: {got.max_entries} bytes, the build's rings have {size}: made anew"
                              f" ({lost} unread bytes dropped)")
        fd = bpfsys.create_map(bpfsys.BPF_MAP_TYPE_RINGBUF, 0, 0, size, name=name)
        if path is not None:
            try:
                bpfsys.obj_pin(fd, str(path))
            except OSError:
                os.close(fd)
                raise
        return fd

    def _remove_beyond(self, workers: int, pin_dir: Path) -> None:
        for path in sorted(pin_dir.glob(f"{PIN_PREFIX}*")):
            idx = path.name[len(PIN_PREFIX):]
            if idx.isdigit() and int(idx) >= workers:
                try:
                    fd = bpfsys.obj_get(str(path))
                    lost = pending_bytes(fd)
                    os.close(fd)
                except OSError:
                    lost = 0
                path.unlink(missing_ok=True)
                self.lines.append(f"{path.name}: worker {idx} is no more (workers: {workers}): removed"
                                  f" ({lost} unread bytes dropped)")

    def unslot(self, fastpath) -> None:
        """Empty the slots of workers 1..n-1 (a build reused with one
        worker, as tests do: records of its flows must not go to rings
        nobody reads)."""
        slots = fastpath.table("ms_insp_rings").map_fd
        for i in range(1, len(self.fds)):
            bpfsys.map_delete(slots, i.to_bytes(4, "little"))

    def close(self) -> None:
        for fd in self._own:
            try:
                os.close(fd)
            except OSError:
                pass
        self._own.clear()
