"""Objects kept in bpffs so they outlive the process that loaded them.

The kernel empties a PROG_ARRAY when the last user-space reference to it
goes away (that is how it breaks reference cycles through tail calls), so
after `microseg up` exits, the stages of an attached build would vanish
and every packet would hit DROP_TAIL_CALL_MISSED. Pinning the stage array
in bpffs keeps a reference. Pins live under
/sys/fs/bpf/microseg/<namespace>/<ingress program id>/, one directory per
attached build, and are removed when no interface uses that build any more.
"""
from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

from . import bpfsys
from .errors import MicrosegError

BPFFS = Path(os.environ.get("MICROSEG_BPFFS", "/sys/fs/bpf"))


def _is_bpffs(path: Path) -> bool:
    want = str(path.resolve())
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == want and line.split()[2] == "bpf" for line in f)


def ensure_bpffs() -> Path:
    """Mount bpffs at /sys/fs/bpf when nothing is mounted there."""
    if not _is_bpffs(BPFFS):
        BPFFS.mkdir(parents=True, exist_ok=True)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"bpf", str(BPFFS).encode(), b"bpf", 0, None) != 0:
            err = ctypes.get_errno()
            raise MicrosegError(f"cannot mount bpffs at {BPFFS}: {os.strerror(err)}")
    return BPFFS


def ns_dir(netns: str | None) -> Path:
    return BPFFS / "microseg" / (netns or "host")


def pin_build(fastpath, build_id: int, netns: str | None) -> Path:
    """Pin the stage array of ``fastpath`` under its build directory."""
    ensure_bpffs()
    d = ns_dir(netns) / str(build_id)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    bpfsys.obj_pin(fastpath.table("ms_stages").map_fd, str(d / "ms_stages"))
    return d


def gc(netns: str | None, live_build_ids: set[int]) -> None:
    """Remove pins of builds no interface in the namespace uses any more."""
    d = ns_dir(netns)
    if not d.is_dir():
        return
    for sub in d.iterdir():
        # Build directories only: "state" (datapath/state.py) outlives builds.
        if sub.name.isdigit() and int(sub.name) not in live_build_ids:
            shutil.rmtree(sub, ignore_errors=True)
    if not any(d.iterdir()):
        d.rmdir()
        _remove_if_empty(d.parent)


def remove_namespace_pins(netns: str) -> None:
    shutil.rmtree(ns_dir(netns), ignore_errors=True)
    _remove_if_empty(ns_dir(netns).parent)


def _remove_if_empty(d: Path) -> None:
    """/sys/fs/bpf/microseg once no namespace has pins left in it."""
    try:
        d.rmdir()
    except OSError:
        pass   # not empty (another instance), or gone
