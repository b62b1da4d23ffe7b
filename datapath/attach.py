"""Attach and detach the fast path on TC clsact hooks, with pyroute2.

The programs go in as classic cls_bpf filters in direct-action mode (the
only TC attach BCC and pyroute2 offer here; DESIGN.md). Our filters are
recognised by a fixed priority and handle and a name prefix, so `down`
removes exactly what `up` added and nothing else. Attaching uses netlink
"replace": a filter already there is swapped for the new program in one
operation, so re-running `up` never leaves a moment without a program.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, asdict
from pathlib import Path

from pyroute2 import IPRoute, NetNS, netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.tcmsg import sched_bpf

from . import bpfsys, pins
from .blocklist import PROGRAM as XDP_PROG_NAME  # the kernel's name of our XDP program
from .enums import Direction
from .errors import MicrosegError, UsageError

# pyroute2 0.9 does not decode the kernel's TCA_BPF_FLAGS_GEN / TAG / ID
# attributes of a bpf filter (types 9-11, include/uapi/linux/pkt_cls.h);
# `status` needs the program id, so teach the decoder those three.
if not any(n == "TCA_BPF_ID" for n, _ in sched_bpf.options.nla_map):
    sched_bpf.options.nla_map = sched_bpf.options.nla_map + (
        ("TCA_BPF_FLAGS_GEN", "uint32"), ("TCA_BPF_TAG", "hex"), ("TCA_BPF_ID", "uint32"))

# Filter priority "MS" (0x4d53): distinctive, so an operator's own filters
# at the usual priorities (1, 49152) are never confused with ours.
FILTER_PRIO = 0x4D53
FILTER_HANDLE = 1
NAME_PREFIX = "microseg:"
PARENT = {Direction.DIR_INGRESS: 0xFFFFFFF2, Direction.DIR_EGRESS: 0xFFFFFFF3}
PARENT_STR = {Direction.DIR_INGRESS: "ffff:fff2", Direction.DIR_EGRESS: "ffff:fff3"}
TC_H_CLSACT = 0xFFFFFFF1
# microseg's run directory, the one definition every layer reads: the owner
# locks, the sweeper locks, the applied policy and layout records, and where
# `up` remembers the clsact qdiscs it created (so `down` removes those and
# leaves an operator's own clsact in place). MICROSEG_RUN moves it (tests).
RUN_DIR = Path(os.environ.get("MICROSEG_RUN", "/run/microseg"))


@dataclass
class Attached:
    iface: str
    ifindex: int
    direction: str
    prog_id: int
    name: str


@contextlib.contextmanager
def netlink(netns: str | None = None):
    """An rtnetlink socket in the host namespace or in ``netns``."""
    if netns is not None and netns not in pr_netns.listnetns():
        raise UsageError(f"network namespace '{netns}' does not exist")
    ipr = NetNS(netns) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _where(netns: str | None) -> str:
    return f" in network namespace '{netns}'" if netns else ""


def resolve(ipr, ifaces: list[str], netns: str | None = None) -> dict[str, int]:
    """Interface names -> ifindex; every unknown name is an error, before any change."""
    out, missing = {}, []
    for name in ifaces:
        idx = ipr.link_lookup(ifname=name)
        if idx:
            out[name] = idx[0]
        else:
            missing.append(name)
    if missing:
        raise UsageError(f"interface {', '.join(repr(m) for m in missing)} not found{_where(netns)}")
    return out


def _has_clsact(ipr, ifindex: int) -> bool:
    for q in ipr.get_qdiscs(ifindex):
        if q.get_attr("TCA_KIND") == "clsact":
            return True
    return False


def _state_file(netns: str | None) -> Path:
    return RUN_DIR / f"clsact-{netns or 'host'}.json"


def _load_state(netns):
    try:
        return json.loads(_state_file(netns).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(netns, state) -> None:
    f = _state_file(netns)
    f.parent.mkdir(parents=True, exist_ok=True)
    if state:
        f.write_text(json.dumps(state))
    else:
        f.unlink(missing_ok=True)


def attach(fastpath, ifaces: list[str], netns: str | None = None, managed: list[str] | None = None) -> list[Attached]:
    """Attach ingress and egress programs of ``fastpath`` to every interface.
    ``managed``: every interface the instance manages (default ``ifaces``):
    the egress program skips packets that entered through one of them,
    whichever build decided them there (a canary attaches one at a time)."""
    if not ifaces:
        raise UsageError("no interface given (--iface IF ...)")
    with netlink(netns) as ipr:
        idx = resolve(ipr, ifaces, netns)
        tab = fastpath.table("ms_ifaces")
        for name, i in resolve(ipr, managed or ifaces, netns).items():
            tab[tab.Key(i)] = tab.Leaf(0)
        progs = {d: (fn.fd, fn.name.decode() if isinstance(fn.name, bytes) else fn.name)
                 for d, fn in fastpath.fns.items()}
        mine = _replace_all(ipr, idx, progs, netns)
        if mine and getattr(fastpath, "stage_fns", None):
            ingress_id = next(a.prog_id for a in mine if a.direction == "DIR_INGRESS")
            pins.pin_build(fastpath, ingress_id, netns)
        pins.gc(netns, {a.prog_id for a in _list(ipr) if a.direction == "DIR_INGRESS"})
        return mine


def attach_progs(progs: dict, ifaces: list[str], netns: str | None = None) -> list[Attached]:
    """Attach programs given by fd: {Direction: (fd, name)} (a rollback to a
    pinned earlier build). The build's stage array must be pinned by the
    caller (its programs tail-call through it)."""
    with netlink(netns) as ipr:
        return _replace_all(ipr, resolve(ipr, ifaces, netns), progs, netns)


def _replace_all(ipr, idx: dict[str, int], progs: dict, netns) -> list[Attached]:
    """On each interface: clsact if missing (remembered as ours), then one
    netlink replace per direction: a packet meets the old program or the
    new one, never none."""
    state = _load_state(netns)
    for name, i in idx.items():
        if not _has_clsact(ipr, i):
            try:
                ipr.tc("add", "clsact", i)
            except NetlinkError as e:
                raise MicrosegError(f"cannot add clsact qdisc on '{name}'{_where(netns)}: {e.args[1] if len(e.args) > 1 else e}")
            state[name] = i
        for d, parent in PARENT_STR.items():
            fd, pname = progs[d]
            try:
                ipr.tc("replace-filter", "bpf", i, FILTER_HANDLE, fd=fd, name=f"{NAME_PREFIX}{pname}",
                       parent=parent, prio=FILTER_PRIO, classid=1, direct_action=True)
            except NetlinkError as e:
                raise MicrosegError(f"cannot attach {d.name} program on '{name}'{_where(netns)}: {e}")
    _save_state(netns, state)
    return [a for a in _list(ipr) if a.iface in idx]


def detach(ifaces: list[str], netns: str | None = None) -> int:
    """Remove our filters (and clsact qdiscs we created) from ``ifaces``.

    Returns how many filters were removed. Filters of others stay.
    """
    if not ifaces:
        raise UsageError("no interface given (--iface IF ...)")
    removed = 0
    with netlink(netns) as ipr:
        idx = resolve(ipr, ifaces, netns)
        state = _load_state(netns)
        for name, i in idx.items():
            for d, parent in PARENT.items():
                for f in _our_filters(ipr, i, parent):
                    ipr.tc("del-filter", "bpf", i, FILTER_HANDLE, parent=PARENT_STR[d], prio=FILTER_PRIO)
                    removed += 1
            if state.get(name) == i and _has_clsact(ipr, i):
                if not any(_all_filters(ipr, i, p) for p in PARENT.values()):
                    ipr.tc("del", "clsact", i)
            state.pop(name, None)
        _save_state(netns, state)
        pins.gc(netns, {a.prog_id for a in _list(ipr) if a.direction == "DIR_INGRESS"})
    return removed


def _all_filters(ipr, ifindex: int, parent: int):
    try:
        return [f for f in ipr.get_filters(ifindex, parent=parent) if f.get_attr("TCA_OPTIONS")]
    except NetlinkError:
        return []


def _our_filters(ipr, ifindex: int, parent: int):
    out = []
    for f in _all_filters(ipr, ifindex, parent):
        prio = f["info"] >> 16
        opts = f.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") or ""
        if f.get_attr("TCA_KIND") == "bpf" and prio == FILTER_PRIO and name.startswith(NAME_PREFIX):
            out.append(f)
    return out


def _list(ipr) -> list[Attached]:
    out = []
    for link in ipr.get_links():
        i = link["index"]
        ifname = link.get_attr("IFLA_IFNAME")
        for d, parent in PARENT.items():
            for f in _our_filters(ipr, i, parent):
                opts = f.get_attr("TCA_OPTIONS")
                out.append(Attached(ifname, i, d.name, opts.get_attr("TCA_BPF_ID") or 0,
                                    opts.get_attr("TCA_BPF_NAME")))
    return out


def attached(netns: str | None = None) -> list[Attached]:
    """Every microseg filter in the namespace."""
    with netlink(netns) as ipr:
        return _list(ipr)


def as_dicts(items: list[Attached]) -> list[dict]:
    return [asdict(a) for a in items]


# -- XDP (the blocklist layer) -------------------------------------------------
# An interface holds one XDP program per mode. Ours is recognised by the
# kernel's name of the program (datapath/blocklist.PROGRAM); a program of
# anyone else's is never replaced or removed. Attaching over our own
# program in the same mode is one netlink request: the kernel swaps the
# program, no packet sees none.

XDP_FLAGS_SKB_MODE = 1 << 1   # include/uapi/linux/if_link.h
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
# IFLA_XDP_ATTACHED as pyroute2 decodes it -> our mode name
_XDP_ATTACHED = {"xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload",
                 "xdpmulti": "multi"}


@dataclass
class XdpAttached:
    iface: str
    ifindex: int
    mode: str        # "native" | "generic" | "offload" | "multi"
    prog_id: int
    name: str        # the program's name in the kernel


def _prog_name(prog_id: int) -> str:
    try:
        fd = bpfsys.prog_fd_by_id(prog_id)
    except OSError:
        return ""
    try:
        return bpfsys.prog_info_by_fd(fd).name
    finally:
        os.close(fd)


def _xdp_of(ipr, ifindex: int, ifname: str) -> XdpAttached | None:
    link = ipr.get_links(ifindex)[0]
    x = link.get_attr("IFLA_XDP")
    if not x:
        return None
    mode = x.get_attr("IFLA_XDP_ATTACHED")
    pid = x.get_attr("IFLA_XDP_PROG_ID") or 0
    if not mode or not pid:
        return None
    return XdpAttached(ifname, ifindex, _XDP_ATTACHED.get(mode, str(mode)), pid, _prog_name(pid))


def _xdp_set(ipr, ifindex: int, fd: int, mode: str) -> None:
    ipr.link("set", index=ifindex,
             xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", XDP_MODE_FLAGS[mode])]})


def attach_xdp(prog_fd: int, iface: str, netns: str | None = None,
               mode: str = "auto") -> XdpAttached:
    """Attach an XDP program (the blocklist's) to ``iface``.

    ``mode``: "native" (in the driver; veth has it), "generic" (after the
    skb is built; every device), or "auto": the mode our program already
    runs in on the interface, else native, else generic. An XDP program of
    someone else's on the interface is an error, not replaced.
    """
    if mode not in ("auto", *XDP_MODE_FLAGS):
        raise UsageError(f"XDP mode {mode!r}: expected auto, native or generic")
    with netlink(netns) as ipr:
        i = resolve(ipr, [iface], netns)[iface]
        cur = _xdp_of(ipr, i, iface)
        if cur is not None and cur.name != XDP_PROG_NAME:
            raise MicrosegError(f"'{iface}'{_where(netns)} already runs XDP program {cur.prog_id} "
                                f"({cur.name or 'unnamed'}, {cur.mode}); not replacing it")
        if cur is not None and mode != "auto" and cur.mode != mode:
            raise MicrosegError(f"'{iface}'{_where(netns)} runs the blocklist in {cur.mode} mode; "
                                f"detach it before attaching in {mode} mode")
        if cur is not None:
            tries = [cur.mode]
        else:
            tries = ["native", "generic"] if mode == "auto" else [mode]
        errors = []
        for m in tries:
            try:
                _xdp_set(ipr, i, prog_fd, m)
            except NetlinkError as e:
                errors.append(f"{m}: {e}")
                continue
            got = _xdp_of(ipr, i, iface)
            if got is None:
                raise MicrosegError(f"XDP attach on '{iface}'{_where(netns)} reported success "
                                    f"but no program is attached")
            return got
        raise MicrosegError(f"cannot attach XDP on '{iface}'{_where(netns)}: {'; '.join(errors)}")


def detach_xdp(iface: str, netns: str | None = None) -> bool:
    """Remove our XDP program from ``iface``. False when none of ours was there."""
    with netlink(netns) as ipr:
        i = resolve(ipr, [iface], netns)[iface]
        cur = _xdp_of(ipr, i, iface)
        if cur is None or cur.name != XDP_PROG_NAME:
            return False
        if cur.mode not in XDP_MODE_FLAGS:
            raise MicrosegError(f"'{iface}'{_where(netns)}: blocklist attached in {cur.mode} mode, "
                                f"which microseg does not manage")
        try:
            _xdp_set(ipr, i, -1, cur.mode)
        except NetlinkError as e:
            raise MicrosegError(f"cannot detach XDP from '{iface}'{_where(netns)}: {e}")
        return True


def xdp_attached(iface: str, netns: str | None = None) -> XdpAttached | None:
    """The XDP program on ``iface`` (ours or not), or None."""
    with netlink(netns) as ipr:
        i = resolve(ipr, [iface], netns)[iface]
        return _xdp_of(ipr, i, iface)
