"""One owner per network namespace: a lock file with the owner's record.

/run/microseg/<namespace>.lock is held with flock(2) by whoever changes
what microseg runs in the namespace: `microseg run` for its whole life,
`up`, `down`, `deploy`, `rollback` and `policy apply` while they work. The
kernel releases a flock when its holder dies, however it dies, so a crashed
daemon never leaves the namespace locked; a stopped one removes the file.
The file holds a JSON record (PID, command, configuration, policy file,
reloads done), so whoever finds the namespace owned can say by whom, and a
command can go through a live daemon's reload path (policy apply: SIGHUP,
then the record says how the reload went).

Removing a lock file while others wait on it is safe because every
acquirer checks, once it holds the lock, that the path still names the
file it locked (else it locked a removed file, and tries again).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import time
from pathlib import Path

from . import attach
from .errors import MicrosegError

# A short command (`up` compiles a build) holds the lock for seconds, a
# minute on a loaded machine; another command waits this long for it.
SHORT_HOLD_WAIT_S = 300.0
# A record being written is read again after this pause (bounded retries).
RETRY_S = 0.05
# How long `policy apply` waits for a daemon's reload (a policy compile of
# 100k rules takes seconds; the daemon's worker thread may be busy).
RELOAD_WAIT_S = 120.0
DAEMON = "run"


class Owned(MicrosegError):
    """The namespace belongs to someone else."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


def run_dir() -> Path:
    return attach.RUN_DIR


def lock_path(netns: str | None, directory: Path | None = None) -> Path:
    return (directory or run_dir()) / f"{netns or 'host'}.lock"


def where(netns: str | None) -> str:
    return f"network namespace {netns}" if netns else "this network namespace"


def describe(record: dict) -> str:
    """'microseg run (pid 123, config /etc/microseg/run.yaml)'"""
    extra = f", config {record['config']}" if record.get("config") else ""
    return f"microseg {record.get('command', '?')} (pid {record.get('pid', '?')}{extra})"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


def _read(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


class NamespaceLock:
    """The owner lock of one namespace, held by this process."""

    def __init__(self, netns: str | None, directory: Path | None = None):
        self.netns = netns
        self.path = lock_path(netns, directory)
        self.fd: int | None = None
        self.record: dict = {}

    def try_acquire(self) -> dict | None:
        """Take the lock if free: None. Else the holder's record ({} while
        the holder is still writing it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                return _read(self.path) or {}
            try:
                st, now = os.fstat(fd), os.stat(self.path)
            except FileNotFoundError:
                now = None
            if now is not None and (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                self.fd = fd
                return None
            os.close(fd)        # locked a file its holder removed meanwhile: again

    def acquire(self, command: str, *, wait_s: float = SHORT_HOLD_WAIT_S, **fields) -> None:
        """Own the namespace, or raise Owned naming the owner. A live daemon
        is refused at once; a short command, or a daemon that is stopping
        (`systemctl restart`), is waited for up to ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            holder = self.try_acquire()
            if holder is None:
                self.write(pid=os.getpid(), command=command, netns=self.netns,
                           started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields)
                return
            if holder.get("command") == DAEMON and _alive(holder.get("pid")) and not holder.get("stopping"):
                raise Owned(f"{where(self.netns)} is owned by {describe(holder)}", holder)
            if time.monotonic() >= deadline:
                raise Owned(f"{where(self.netns)} is owned by {describe(holder)} (waited {wait_s:g} s)", holder)
            time.sleep(RETRY_S)

    def write(self, **fields) -> None:
        """Update the record (one write of the whole text; readers retry a
        torn one)."""
        self.record.update(fields)
        data = json.dumps(self.record).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        """Remove the file, then unlock: nothing is left behind."""
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "NamespaceLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(netns: str | None, directory: Path | None = None) -> dict | None:
    """The record of whoever holds the namespace now, or None (free)."""
    path = lock_path(netns, directory)
    deadline = time.monotonic() + 1.0
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            rec = _read(path)
            if rec or time.monotonic() >= deadline:
                return rec or {}
            time.sleep(RETRY_S)     # the holder is writing its record
            continue
        finally:
            os.close(fd)
        return None


def daemon(netns: str | None, directory: Path | None = None) -> dict | None:
    """The record of a live `microseg run` owning the namespace, or None."""
    rec = holder(netns, directory)
    if rec and rec.get("command") == DAEMON and _alive(rec.get("pid")):
        return rec
    return None


def reload_through(netns: str | None, record: dict, timeout: float = RELOAD_WAIT_S,
                   directory: Path | None = None) -> dict:
    """SIGHUP the daemon of ``record`` and wait for its record to show the
    reload done; returns that reload's result ({"n", "policy", ...})."""
    before = int(record.get("reloads", 0))
    os.kill(int(record["pid"]), signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = holder(netns, directory)
        if not rec or rec.get("pid") != record["pid"]:
            raise MicrosegError(f"{describe(record)} stopped before reloading")
        if int(rec.get("reloads", 0)) > before:
            return rec.get("last_reload", {})
        time.sleep(RETRY_S)
    raise MicrosegError(f"{describe(record)} did not finish reloading within {timeout:g} s (its log says why)")
