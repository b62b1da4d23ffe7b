"""Objects kept in bpffs so they outlive the process that loaded them.

The kernel empties a PROG_ARRAY when the last user-space reference to it
goes away (that is how it breaks reference cycles through tail calls), so
after `microseg up` exits, the stages of an attached build would vanish
and every packet would hit DROP_TAIL_CALL_MISSED. Pinning the stage array
in bpffs keeps a reference. Pins live under
/sys/fs/bpf/microseg/<namespace>/<ingress program id>/, one directory per
attached build, and are removed when no interface uses that build any more.
The bpffs is always the system's (root(), enter_system_mount_ns()): a pin
in a bpffs private to one command would vanish with it.
"""
from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

from . import bpfsys
from .errors import MicrosegError

# The system's bpffs. MICROSEG_BPFFS names another one explicitly (tests).
SYSTEM_BPFFS = Path("/sys/fs/bpf")
CLONE_NEWNS = 0x00020000             # include/uapi/linux/sched.h
PROC_PID_INIT_INO = 0xEFFFFFFC       # include/linux/proc_ns.h: the initial PID namespace's inode
_root: Path | None = None


def _is_bpffs(path: Path, mounts: str = "/proc/self/mounts") -> bool:
    want = str(path.resolve()) if mounts == "/proc/self/mounts" else str(path)
    with open(mounts) as f:
        return any(line.split()[1] == want and line.split()[2] == "bpf" for line in f)


def _mount(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", str(path).encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise MicrosegError(f"cannot mount bpffs at {path}: {os.strerror(err)}")


def _ancestors() -> list[int]:
    """PID 1 first (the system's mount namespace), then this process's
    parents, nearest first."""
    out, pid = [], os.getppid()
    while pid > 1 and len(out) < MAX_ANCESTORS:
        out.append(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return [1, *out]


# A process tree deeper than this is not one a person started a command from.
MAX_ANCESTORS = 64


def enter_system_mount_ns() -> int | None:
    """Move this process into the system's mount namespace when the one it
    runs in has no bpffs of the system's at /sys/fs/bpf. `ip netns exec`
    gives its command a private /sys without bpffs: a bpffs mounted there
    would vanish with the command, and with it the pinned stage array
    (every tail call would then miss). The mount namespace entered is
    PID 1's when it can be read, else that of the nearest parent in
    another mount namespace (the shell `ip netns exec` was started from).
    Call before any thread is started (setns refuses a threaded process).
    Returns the PID whose namespace was entered, or None (nothing to do)."""
    if os.environ.get("MICROSEG_BPFFS"):
        return None
    ours = _is_bpffs(SYSTEM_BPFFS)
    try:
        me = os.stat("/proc/self/ns/mnt")
    except OSError:
        return None
    for pid in _ancestors():
        try:
            st = os.stat(f"/proc/{pid}/ns/mnt")
        except OSError:
            continue     # out of reach (a sandbox without ptrace rights over it)
        if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
            if pid == 1:
                return None
            continue
        try:
            theirs = _is_bpffs(SYSTEM_BPFFS, f"/proc/{pid}/mounts")
            same = ours and theirs and \
                os.stat(f"/proc/{pid}/root{SYSTEM_BPFFS}").st_dev == os.stat(SYSTEM_BPFFS).st_dev
        except OSError:
            continue
        if ours and (same or not theirs):
            return None     # this namespace was given the system's bpffs (a systemd sandbox, a container)
        cwd = os.getcwd()
        fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
        try:
            libc = ctypes.CDLL(None, use_errno=True)    # os.setns is Python 3.12+
            if libc.setns(fd, CLONE_NEWNS) != 0:
                raise MicrosegError(f"{SYSTEM_BPFFS} here is not the system's bpffs (`ip netns exec`?) and the "
                                    f"system's mount namespace cannot be entered "
                                    f"({os.strerror(ctypes.get_errno())}): use `--netns NS` instead of "
                                    f"`ip netns exec`")
        finally:
            os.close(fd)
        try:
            os.chdir(cwd)    # setns moved it to the namespace's root; relative paths stay valid
        except OSError:
            pass
        global _root
        _root = None
        return pid
    return None


def _in_initial_pid_ns() -> bool:
    try:
        return os.stat("/proc/self/ns/pid").st_ino == PROC_PID_INIT_INO
    except OSError:
        return True


def root() -> Path:
    """The bpffs pins go to: /sys/fs/bpf of the system's mount namespace
    (enter_system_mount_ns() moves there first), mounted when missing on a
    host. In a container (its own PID namespace) a missing bpffs is
    refused: one mounted in the container would vanish with it, and the
    programs it left attached would lose their stage array."""
    global _root
    if _root is not None:
        return _root
    r = Path(os.environ.get("MICROSEG_BPFFS") or SYSTEM_BPFFS)
    if not _is_bpffs(r):
        if r == SYSTEM_BPFFS and not _in_initial_pid_ns():
            raise MicrosegError(f"{SYSTEM_BPFFS} is not a bpffs in this container: pins made here would vanish "
                                f"with it; give it the host's {SYSTEM_BPFFS} (a hostPath or bind mount)")
        _mount(r)
    _root = r
    return r


def ensure_bpffs() -> Path:
    """The system's bpffs (see root()), mounted when missing."""
    return root()


def current_netns_name() -> str | None:
    """The name (/run/netns/NAME) of the network namespace this process is
    in, when it is not PID 1's: pins, locks and records of a namespace go
    by its name, so `ip netns exec NS microseg ...` and `microseg ...
    --netns NS` mean the same namespace. None: PID 1's namespace, or one
    without a name."""
    try:
        me = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    try:
        init = os.stat("/proc/1/ns/net")
        if (init.st_dev, init.st_ino) == (me.st_dev, me.st_ino):
            return None
    except OSError:
        pass
    try:
        names = sorted(os.listdir(NETNS_RUN_DIR))
    except OSError:
        return None
    for name in names:
        try:
            st = os.stat(os.path.join(NETNS_RUN_DIR, name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
            return name
    return None


# Where iproute2 (and pyroute2) bind-mount named network namespaces.
NETNS_RUN_DIR = "/run/netns"


def ns_dir(netns: str | None) -> Path:
    return root() / "microseg" / (netns or "host")


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
