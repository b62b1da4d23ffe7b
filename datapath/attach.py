"""Attach and detach the fast path on the TC hooks: tcx links (kernel 6.6+,
bpf() in datapath/bpfsys.py; the default where the kernel has them) or
clsact filters (pyroute2; elsewhere, or forced by `attach.mode: clsact`).

clsact: the programs go in as classic cls_bpf filters in direct-action mode
(the only TC attach BCC and pyroute2 offer; DESIGN.md). Our filters are
recognised by a fixed priority and handle and a name prefix, so `down`
removes exactly what `up` added and nothing else. Attaching uses netlink
"replace": a filter already there is swapped for the new program in one
operation, so re-running `up` never leaves a moment without a program.

tcx (the default where the kernel has it, `attach.mode` auto or tcx;
clsact forces filters): one bpf_link per interface and direction, no
qdisc and no cls_bpf filter walk (what Cilium uses on 6.6+). The links
are pinned in bpffs under the namespace's pin directory
(pins.ns_dir()/links), so they outlive the process and are ours by where
they are pinned; `up` again swaps the program of the pinned link
(BPF_LINK_UPDATE: atomic, the link stays), `down` detaches and unpins
them. The programs return TC_ACT_OK (0) or TC_ACT_SHOT (2), which tcx
reads as TCX_PASS and TCX_DROP, so the same programs run under both
modes. Switching an interface's mode adds the new hook before it removes
the old one, never a moment without a program (while both are there the
tcx program's verdict is final: the kernel runs the clsact filters only
when tcx says TCX_NEXT, which ours never do). `deploy` attaches its
canary in the setting's mode and its snapshot records each interface's
mode, which `rollback` puts back; `microseg run`'s ownership check lists
the pinned links of the namespace it is in.
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


# Attach modes (the `attach.mode` setting, datapath/config.py).
MODES = ("clsact", "tcx")
# The setting's default and attach()'s: tcx where the kernel has it, else
# clsact (resolve_mode, the one definition), so a caller that names no
# mode (bench/latency.py, the lab tests) runs what `microseg up` runs.
AUTO = "auto"
# Each interface in the mode it has (tcx where one of our links is pinned,
# else clsact): `rollback` of a deploy snapshot from before snapshots
# recorded modes, which must not move an interface between hooks.
KEEP = "keep"
TCX_TYPE = {Direction.DIR_INGRESS: bpfsys.BPF_TCX_INGRESS, Direction.DIR_EGRESS: bpfsys.BPF_TCX_EGRESS}
LINKS_DIR = "links"      # under pins.ns_dir(netns): our pinned tcx links


@dataclass
class Attached:
    iface: str
    ifindex: int
    direction: str
    prog_id: int
    name: str
    mode: str = "clsact"    # "clsact" (a cls_bpf filter) or "tcx" (a pinned bpf_link)


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


def attach(fastpath, ifaces: list[str], netns: str | None = None, managed: list[str] | None = None,
           mode: str | None = AUTO) -> list[Attached]:
    """Attach ingress and egress programs of ``fastpath`` to every interface.
    ``managed``: every interface the instance manages (default ``ifaces``):
    the egress program skips packets that entered through one of them,
    whichever build decided them there (a canary attaches one at a time).
    ``mode``: "clsact" or "tcx" (MODES); AUTO (or None) what `attach.mode:
    auto` resolves to (resolve_mode); KEEP the mode each interface has."""
    if not ifaces:
        raise UsageError("no interface given (--iface IF ...)")
    with netlink(netns) as ipr:
        idx = resolve(ipr, ifaces, netns)
        fastpath.set_managed(resolve(ipr, managed or ifaces, netns).values())
        progs = {d: (fn.fd, fn.name.decode() if isinstance(fn.name, bytes) else fn.name)
                 for d, fn in fastpath.fns.items()}
        mine = _replace_all(ipr, idx, progs, netns, mode)
        if mine and getattr(fastpath, "stage_fns", None):
            ingress_id = next(a.prog_id for a in mine if a.direction == "DIR_INGRESS")
            pins.pin_build(fastpath, ingress_id, netns)
        pins.gc(netns, {a.prog_id for a in _list(ipr, netns) if a.direction == "DIR_INGRESS"})
        return mine


def attach_progs(progs: dict, ifaces: list[str], netns: str | None = None,
                 mode: str | None = AUTO) -> list[Attached]:
    """Attach programs given by fd: {Direction: (fd, name)} (a rollback to a
    pinned earlier build). The build's stage array must be pinned by the
    caller (its programs tail-call through it)."""
    with netlink(netns) as ipr:
        return _replace_all(ipr, resolve(ipr, ifaces, netns), progs, netns, mode)


def _replace_all(ipr, idx: dict[str, int], progs: dict, netns, mode: str | None = AUTO) -> list[Attached]:
    """Each interface in ``mode`` (see attach()), then the other mode's
    hooks of ours removed from it."""
    if mode is None:
        mode = AUTO
    if mode not in (AUTO, KEEP, *MODES):
        raise UsageError(f"attach.mode {mode!r}: expected one of {', '.join((AUTO, *MODES))}")
    if mode != KEEP:
        mode = resolve_mode(mode)       # auto -> tcx or clsact; tcx refused where the kernel lacks it
    pinned = _tcx_pins(netns)
    tcx = {n: i for n, i in idx.items()
           if mode == "tcx" or (mode == KEEP and any(k[0] == i for k in pinned))}
    cls = {n: i for n, i in idx.items() if n not in tcx}
    if tcx:
        _tcx_replace(tcx, progs, netns)
    if cls:
        _clsact_replace(ipr, cls, progs, netns)
    # The new hook first, then the old one's removal: never a moment without a program.
    state = _load_state(netns)
    for name, i in tcx.items():
        _clsact_remove(ipr, name, i, state)
    _save_state(netns, state)
    for name, i in cls.items():
        _tcx_remove(i, netns)
    return [a for a in _list(ipr, netns) if a.iface in idx]


def _clsact_replace(ipr, idx: dict[str, int], progs: dict, netns) -> None:
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


def _clsact_remove(ipr, name: str, i: int, state: dict) -> int:
    """Our filters off interface ``i``, and the clsact qdisc if we added it
    and nobody else's filter is left on it. Returns how many filters."""
    removed = 0
    for d, parent in PARENT.items():
        for f in _our_filters(ipr, i, parent):
            ipr.tc("del-filter", "bpf", i, FILTER_HANDLE, parent=PARENT_STR[d], prio=FILTER_PRIO)
            removed += 1
    if state.get(name) == i and _has_clsact(ipr, i):
        if not any(_all_filters(ipr, i, p) for p in PARENT.values()):
            ipr.tc("del", "clsact", i)
    state.pop(name, None)
    return removed


# -- tcx -------------------------------------------------------------------------

@contextlib.contextmanager
def _in_netns(netns: str | None):
    """tcx's ifindex is the calling thread's namespace's: step into ``netns``
    for the bpf() calls that name one (pyroute2's setns stack)."""
    if netns is None:
        yield
        return
    pr_netns.pushns(netns)
    try:
        yield
    finally:
        pr_netns.popns()


def _pin_ns(netns: str | None) -> str | None:
    """The namespace name our links are pinned under: ``netns``, or for
    None the one this process is in (`ip netns exec NS`, and `microseg run`
    once inside its namespace, list NS's links as `--netns NS` does)."""
    return netns if netns is not None else pins.current_netns_name()


def _links_dir(netns: str | None) -> Path | None:
    """Where our tcx links are pinned; None when there is no bpffs of ours
    (nothing pinned: listing must not mount one)."""
    try:
        root = pins.root()
    except MicrosegError:
        return None
    return root / "microseg" / (_pin_ns(netns) or "host") / LINKS_DIR


def _link_pin(netns: str | None, ifindex: int, d: Direction) -> Path:
    return pins.ns_dir(_pin_ns(netns)) / LINKS_DIR / f"tcx-{ifindex}-{d.name.removeprefix('DIR_').lower()}"


def _tcx_pins(netns: str | None) -> dict[tuple[int, Direction], Path]:
    """(ifindex, direction) -> pin path of every tcx link of ours in ``netns``."""
    d = _links_dir(netns)
    out = {}
    if d is None or not d.is_dir():
        return out
    names = {dd.name.removeprefix("DIR_").lower(): dd for dd in TCX_TYPE}
    for p in d.iterdir():
        parts = p.name.split("-")
        if len(parts) == 3 and parts[0] == "tcx" and parts[1].isdigit() and parts[2] in names:
            out[(int(parts[1]), names[parts[2]])] = p
    return out


def resolve_mode(setting: str) -> str:
    """The `attach.mode` setting -> the mode to attach in: ``auto`` is tcx
    where the kernel has it (probed once per process), else clsact; an
    explicit tcx on a kernel without it is refused (require_tcx)."""
    if setting == AUTO:
        from . import probes
        return "tcx" if probes.tcx()[0] else "clsact"
    if setting == "tcx":
        require_tcx()
    return setting


def require_tcx() -> None:
    """One clear line (UsageError naming the setting) on a kernel without tcx."""
    from . import probes
    ok, why = probes.tcx()
    if not ok:
        raise UsageError(f"attach.mode: tcx needs tcx hooks (kernel 6.6+), which this kernel lacks ({why}); "
                         f"set attach.mode: clsact")


def _tcx_replace(idx: dict[str, int], progs: dict, netns) -> None:
    """One pinned link per interface and direction: the link already
    pinned gets the new program (BPF_LINK_UPDATE, atomic), else a new link
    is created and pinned."""
    pins.ensure_bpffs()
    (pins.ns_dir(_pin_ns(netns)) / LINKS_DIR).mkdir(parents=True, exist_ok=True)
    with _in_netns(netns):
        for name, i in idx.items():
            for d, at in TCX_TYPE.items():
                fd, _ = progs[d]
                path = _link_pin(netns, i, d)
                try:
                    if path.exists():
                        lfd = bpfsys.obj_get(str(path))
                        try:
                            info = bpfsys.link_info_by_fd(lfd)
                            if info.ifindex == i and info.attach_type == at:
                                bpfsys.link_update(lfd, fd)
                                continue
                        finally:
                            os.close(lfd)
                        path.unlink()       # a defunct link (its interface went away)
                    lfd = bpfsys.link_create_tcx(fd, i, at)
                    try:
                        bpfsys.obj_pin(lfd, str(path))
                    except OSError:
                        bpfsys.link_detach(lfd)     # never leave a link nobody can find
                        raise
                    finally:
                        os.close(lfd)
                except OSError as e:
                    raise MicrosegError(f"cannot attach {d.name} program on '{name}'{_where(netns)} "
                                        f"with tcx: {e}")


def _tcx_remove(ifindex: int | None, netns) -> int:
    """Detach and unpin our tcx links on ``ifindex`` (None: every one of
    ours in the namespace, defunct ones included). Returns how many live
    links were detached."""
    removed = 0
    for (i, d), path in _tcx_pins(netns).items():
        if ifindex is not None and i != ifindex:
            continue
        try:
            lfd = bpfsys.obj_get(str(path))
        except OSError:
            continue
        try:
            if bpfsys.link_info_by_fd(lfd).ifindex:
                removed += 1
            bpfsys.link_detach(lfd)
        except OSError:
            pass        # already defunct: the unpin frees it
        finally:
            os.close(lfd)
        path.unlink(missing_ok=True)
    d = _links_dir(netns)
    if d is not None and d.is_dir() and not any(d.iterdir()):
        d.rmdir()
    return removed


def _tcx_list(ifnames: dict[int, str], netns) -> list[Attached]:
    out = []
    for (i, d), path in sorted(_tcx_pins(netns).items(), key=lambda kv: (kv[0][0], kv[0][1].value)):
        try:
            lfd = bpfsys.obj_get(str(path))
        except OSError:
            continue
        try:
            info = bpfsys.link_info_by_fd(lfd)
        finally:
            os.close(lfd)
        if info.ifindex != i or i not in ifnames:
            continue        # defunct (its interface is gone): `down` or the next `up` unpins it
        out.append(Attached(ifnames[i], i, d.name, info.prog_id, f"{NAME_PREFIX}{_prog_name(info.prog_id)}", "tcx"))
    return out


def detach(ifaces: list[str], netns: str | None = None) -> int:
    """Remove our filters (and clsact qdiscs we created) from ``ifaces``.

    Returns how many filters (and tcx links) were removed. Those of others stay.
    """
    if not ifaces:
        raise UsageError("no interface given (--iface IF ...)")
    removed = 0
    with netlink(netns) as ipr:
        idx = resolve(ipr, ifaces, netns)
        state = _load_state(netns)
        for name, i in idx.items():
            removed += _tcx_remove(i, netns)
            removed += _clsact_remove(ipr, name, i, state)
        _save_state(netns, state)
        pins.gc(netns, {a.prog_id for a in _list(ipr, netns) if a.direction == "DIR_INGRESS"})
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


def _list(ipr, netns: str | None = None) -> list[Attached]:
    out = []
    ifnames = {}
    for link in ipr.get_links():
        i = link["index"]
        ifname = link.get_attr("IFLA_IFNAME")
        ifnames[i] = ifname
        for d, parent in PARENT.items():
            for f in _our_filters(ipr, i, parent):
                opts = f.get_attr("TCA_OPTIONS")
                out.append(Attached(ifname, i, d.name, opts.get_attr("TCA_BPF_ID") or 0,
                                    opts.get_attr("TCA_BPF_NAME")))
    return out + _tcx_list(ifnames, netns)


def attached(netns: str | None = None) -> list[Attached]:
    """Every microseg filter and tcx link in the namespace."""
    with netlink(netns) as ipr:
        return _list(ipr, netns)


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
