"""The CLI's side of one owner per namespace (datapath/owner.py).

`up`, `down`, `deploy` and `rollback` own the namespace while they work;
beside a live `microseg run` each refuses in one line saying how to do it
instead. `policy apply` of the daemon's own policy file goes through the
daemon's reload path (SIGHUP; the daemon's owner record says how the reload
went); of another file it refuses, naming the file the daemon reads.
"""
from __future__ import annotations

import atexit
import os

from datapath import owner, pins
from datapath.errors import MicrosegError

# Commands that pin objects in bpffs or own the namespace: they move into
# the system's mount namespace first (`ip netns exec` hides its bpffs).
PINNING_COMMANDS = ("up", "down", "run", "deploy", "rollback", "policy")

_HOW = {
    "up": "it loads and attaches its own build; change its configuration and restart it (its programs are "
          "replaced atomically), or stop it and `microseg down` before `microseg up`",
    "down": "stop it first (its programs stay attached when it stops), then `microseg down`",
    "deploy": "it runs its own build; upgrade by restarting it (`systemctl restart microseg`: the programs are "
              "replaced atomically, sessions kept), or stop it first",
    "rollback": "it runs its own build; stop it first",
}


def settle_namespace(args) -> None:
    """Before a command runs: a command without --netns inside a named
    network namespace (`ip netns exec NS microseg ...`) means that
    namespace, by its name (pins, locks and records go by it); and a
    command that pins objects works in the system's bpffs."""
    if hasattr(args, "netns") and args.netns is None:
        args.netns = pins.current_netns_name()
    if getattr(args, "cmd", None) in PINNING_COMMANDS and os.geteuid() == 0:
        pins.enter_system_mount_ns()


def own(netns: str | None, command: str) -> owner.NamespaceLock:
    """Hold the namespace's owner lock until this process exits (the file
    is removed then); refused in one line beside a live daemon."""
    lock = owner.NamespaceLock(netns)
    try:
        lock.acquire(command)
    except owner.Owned as e:
        how = _HOW.get(command, "stop it first")
        raise MicrosegError(f"{e}: {how}")
    atexit.register(lock.release)
    return lock


def apply_through_daemon(netns: str | None, path: str, daemon: dict) -> list[str]:
    """`policy apply FILE` beside a live daemon: its reload when FILE is the
    daemon's policy file, else refused saying how. Returns lines to print."""
    theirs = daemon.get("policy")
    who = owner.describe(daemon)
    if not theirs:
        raise MicrosegError(f"{owner.where(netns)} is owned by {who}, whose configuration has no policy file: "
                            f"add `policy: {os.path.abspath(path)}` to it and restart it")
    if os.path.realpath(path) != os.path.realpath(theirs):
        raise MicrosegError(f"{owner.where(netns)} is owned by {who}, which enforces {theirs}: write the new "
                            f"policy there and run `microseg policy apply {theirs}` (or `kill -HUP {daemon['pid']}`)")
    res = owner.reload_through(netns, daemon)
    status = res.get("policy", "?")
    if status != "applied":
        raise MicrosegError(f"{who}: policy {theirs} {status}")
    return [f"applied {path} through {who}: generation {res.get('generation', '?')} (reload {res.get('n', '?')}); "
            f"rules {res.get('rules', '?')}"]
