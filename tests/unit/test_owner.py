"""The owner lock of a namespace (datapath/owner.py): one owner, named when
refused, released by a crash, no file left by a clean stop."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from datapath import owner

HOLDER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from datapath import owner
lock = owner.NamespaceLock("ns1", Path(sys.argv[2]))
lock.acquire(sys.argv[3], config="/etc/microseg/run.yaml")
print("held", flush=True)
time.sleep(600)
"""
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def holder_proc(tmp_path):
    procs = []

    def start(command: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLDER, REPO, str(tmp_path), command],
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p
    try:
        yield start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)


def test_a_second_owner_is_refused_naming_the_daemon(tmp_path, holder_proc):
    p = holder_proc("run")
    lock = owner.NamespaceLock("ns1", tmp_path)
    with pytest.raises(owner.Owned) as e:
        lock.acquire("run", wait_s=0)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"microseg run (pid {p.pid}, config /etc/microseg/run.yaml)" in msg and "ns1" in msg
    assert owner.daemon("ns1", tmp_path)["pid"] == p.pid
    # a daemon is refused at once, not waited for (waiting would hang here)
    with pytest.raises(owner.Owned):
        lock.acquire("up", wait_s=600)


def test_a_short_holder_is_waited_for_then_named(tmp_path, holder_proc):
    p = holder_proc("up")
    assert owner.daemon("ns1", tmp_path) is None          # held, but not by a daemon
    assert owner.holder("ns1", tmp_path)["command"] == "up"
    with pytest.raises(owner.Owned, match=f"microseg up \\(pid {p.pid}"):
        owner.NamespaceLock("ns1", tmp_path).acquire("run", wait_s=0.2)


def test_a_stopping_daemon_is_waited_for(tmp_path):
    a = owner.NamespaceLock("ns1", tmp_path)
    a.acquire("run")
    a.write(stopping=True)
    with pytest.raises(owner.Owned, match="waited"):
        owner.NamespaceLock("ns1", tmp_path).acquire("run", wait_s=0.2)
    a.release()


def test_a_killed_holder_releases_the_namespace(tmp_path, holder_proc):
    p = holder_proc("run")
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert (tmp_path / "ns1.lock").exists()              # a crash leaves the file ...
    assert owner.holder("ns1", tmp_path) is None          # ... but not the lock
    lock = owner.NamespaceLock("ns1", tmp_path)
    lock.acquire("run", wait_s=5)
    assert json.loads((tmp_path / "ns1.lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_release_leaves_no_file_and_the_next_owner_gets_it(tmp_path):
    a = owner.NamespaceLock("ns1", tmp_path)
    a.acquire("run", reloads=0)
    a.write(reloads=1, last_reload={"n": 1, "policy": "applied"})
    rec = owner.holder("ns1", tmp_path)
    assert rec["reloads"] == 1 and rec["last_reload"]["policy"] == "applied"
    a.release()
    assert list(tmp_path.iterdir()) == []
    b = owner.NamespaceLock("ns1", tmp_path)
    b.acquire("up")
    assert owner.holder("ns1", tmp_path)["command"] == "up"
    b.release()
    assert list(tmp_path.iterdir()) == []


def test_a_lock_on_a_removed_file_is_not_ownership(tmp_path):
    """A waiter that opened the file before its holder removed it must not
    believe it owns the namespace: it locks the file that is there now."""
    a = owner.NamespaceLock("ns1", tmp_path)
    a.acquire("up")
    stale = os.open(tmp_path / "ns1.lock", os.O_RDONLY)     # opened before the release
    a.release()
    b = owner.NamespaceLock("ns1", tmp_path)
    b.acquire("run", wait_s=1)
    assert os.fstat(b.fd).st_ino == os.stat(tmp_path / "ns1.lock").st_ino
    os.close(stale)
    c = owner.NamespaceLock("ns1", tmp_path)
    with pytest.raises(owner.Owned):
        c.acquire("run", wait_s=0)
    b.release()


def test_namespaces_are_separate(tmp_path):
    a = owner.NamespaceLock("ns1", tmp_path)
    b = owner.NamespaceLock("ns2", tmp_path)
    a.acquire("run")
    b.acquire("run")
    assert owner.holder(None, tmp_path) is None
    a.release()
    b.release()
