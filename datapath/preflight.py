"""Kernel feature matrix for microseg, found by probing the running kernel.

Why probe instead of reading the version number: a version says what
upstream had at that release, not what this kernel has. Distributions
backport BPF features into old version numbers (RHEL 8's "4.18" kernels
carry much of 5.x BPF), and leave features out of new ones through their
configuration (this project's VMs run 6.18 without dummy links or
nftables flowtables). Privileges, lockdown and sysctls also decide what a
process may use. So each row below asks the kernel itself: create the map,
load the program, attach the filter, run the tail call. Only the "kernel
version" row reads the version, because the review sets 5.10 as the
supported floor.

Each row carries two versions: ``review_min``, the kernel the expert
review's compatibility table ties the feature to (5.4 basic eBPF + BTF;
5.10 LTS: BPF links, ring buffer; 5.15: iterators, bpf_timer; 5.16: bloom
filter; 6.1: kfuncs), and ``upstream_since``, the mainline release where
the feature first appeared.

Every probe is wrapped so that a failure of any kind becomes
``available=False`` with the reason (errno name, message), never a
traceback. The network probe works only inside a throwaway network
namespace that it creates and removes; nothing is attached to the host's
interfaces.
"""
from __future__ import annotations

import ctypes
import errno as errno_mod
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from . import blocklist, bpfsys, probes
from .attach import XDP_FLAGS_DRV_MODE
from .bpfsys import (BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC, BPF_FUNC_ktime_get_coarse_ns, BPF_FUNC_timer_init,
                     BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_BLOOM_FILTER, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LPM_TRIE,
                     BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_PROG_ARRAY, BPF_MAP_TYPE_RINGBUF, BPF_PROG_TYPE_SCHED_CLS,
                     BPF_PROG_TYPE_XDP)
from .compile import check_headers, compile_text, headers_dir, load_func
from .errors import MicrosegError
from .probes import errno_text, guarded, load_raw_prog, probe_helper, probe_map

REQUIRED = "required"
RECOMMENDED = "recommended"
OPTIONAL = "optional"

# The review's floor for a supported kernel.
MIN_KERNEL = (5, 10)


@dataclass
class Feature:
    name: str
    level: str           # "required" | "recommended" | "optional"
    review_min: str      # the expert review's compatibility table
    upstream_since: str  # mainline release that first had it
    available: bool
    detail: str
    fallback: str = ""   # what microseg does instead; set only when missing


@dataclass
class HostFact:
    """Something about this process or host, not about the kernel's features."""
    name: str
    ok: bool
    detail: str


_MOV64_R0_0 = bpfsys.insn(0xB7)  # BPF_ALU64 | BPF_MOV | BPF_K: r0 = 0
_EXIT = bpfsys.insn(0x95)        # BPF_JMP | BPF_EXIT


# -- probes: each returns (available, detail) and never raises ---------------
# (probe_map and probe_helper, which compat asks too, are in datapath/probes.py)

def _kernel_tuple(release: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


@guarded
def probe_kernel_version() -> tuple[bool, str]:
    release = os.uname().release
    ver = _kernel_tuple(release)
    if ver is None:
        return False, f"cannot parse kernel release {release!r}"
    floor = "%d.%d" % MIN_KERNEL
    if ver >= MIN_KERNEL:
        return True, f"{release} (>= {floor})"
    return False, f"{release} is older than {floor}, the supported floor"


@guarded
def probe_bpf_syscall() -> tuple[bool, str]:
    # The smallest thing bpf() can do: one 4-byte array slot.
    try:
        fd = bpfsys.create_map(BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    except OSError as e:
        hint = {errno_mod.EPERM: " (needs root or CAP_BPF)",
                errno_mod.ENOSYS: " (kernel built without CONFIG_BPF_SYSCALL)"}.get(e.errno, "")
        return False, f"BPF_MAP_CREATE(ARRAY): {errno_text(e)}{hint}"
    os.close(fd)
    return True, "BPF_MAP_CREATE(ARRAY) works"


@guarded
def probe_jit() -> tuple[bool, str]:
    # The sysctl can say 1 while the arch has no JIT, so the answer comes
    # from a loaded program; the sysctl is only shown.
    try:
        sysctl = Path("/proc/sys/net/core/bpf_jit_enable").read_text().strip()
    except OSError as e:
        sysctl = f"unreadable ({errno_text(e)})"
    fd, log = load_raw_prog(_MOV64_R0_0 + _EXIT)
    if fd < 0:
        return False, f"test program refused ({errno_text(OSError(-fd, ''))}); bpf_jit_enable={sysctl}"
    try:
        jited = bpfsys.prog_info_by_fd(fd).jited
    finally:
        os.close(fd)
    if jited:
        return True, f"test program JIT-compiled; bpf_jit_enable={sysctl}"
    return False, f"test program interpreted, not JIT-compiled; bpf_jit_enable={sysctl}"


@guarded
def probe_btf_vmlinux() -> tuple[bool, str]:
    p = Path("/sys/kernel/btf/vmlinux")
    if not p.exists():
        return False, f"{p} absent (kernel built without CONFIG_DEBUG_INFO_BTF)"
    return True, f"{p}, {p.stat().st_size} bytes"


# BCC-compiled probe programs. check_headers first, so a host without kernel
# headers gets that reason instead of a clang error.

_PASS_PROG = "int mspf_pass(struct __sk_buff *skb) { return 0; }"

# A tail call that happened returns TAIL_MARK from the second program; one
# that did not falls through and returns 1.
TAIL_MARK = 0x7E57
_TAIL_PROG = f"""
BPF_PROG_ARRAY(mspf_jmp, 1);
int mspf_entry(struct __sk_buff *skb) {{
    mspf_jmp.call(skb, 0);
    return 1;
}}
int mspf_target(struct __sk_buff *skb) {{ return {TAIL_MARK}; }}
"""


# A probe's failure shows this many lines of the compiler's or verifier's
# output: one row of the matrix, not a page.
_PROBE_TAIL_LINES = 4


def _bcc_compile(text: str):
    """Compile ``text`` with BCC; raise RuntimeError with the compiler's last lines."""
    return compile_text(text, what="BCC compile", error=RuntimeError, tail=_PROBE_TAIL_LINES)


def _bcc_load_cls(b, name: str):
    """load_func as SCHED_CLS; raise RuntimeError with the verifier's last lines."""
    return load_func(b, name, BPF_PROG_TYPE_SCHED_CLS, error=RuntimeError, tail=_PROBE_TAIL_LINES)


def _netns_name() -> str:
    # pid + random: two preflights at once, or a leftover from a killed one,
    # never collide.
    return f"mspf{os.getpid()}{secrets.token_hex(3)}"


_NETNS_DIR = Path("/var/run/netns")  # where `ip netns` and pyroute2 keep names


def _remove_netns(name: str) -> None:
    from pyroute2 import netns
    if (_NETNS_DIR / name).exists():
        netns.remove(name)


TCA_BPF_FLAG_ACT_DIRECT = 1


@guarded
def probe_clsact() -> tuple[bool, str]:
    """clsact qdisc + cls_bpf direct-action, tried in a throwaway namespace.

    A veth pair (dummy is not built into every kernel; it is not on these
    VMs) in a namespace of our own gets clsact and a bpf filter on ingress.
    The namespace goes away in ``finally`` whatever happened, and with it
    the link, the qdisc and the filter.
    """
    from pyroute2 import IPRoute, netns

    b = _bcc_compile(_PASS_PROG)
    name = _netns_name()
    created = False
    try:
        fn = _bcc_load_cls(b, "mspf_pass")
        if (_NETNS_DIR / name).exists():  # not ours: leave it alone
            return False, f"network namespace {name} already exists"
        created = True  # from here on a half-made namespace is ours to remove
        netns.create(name)
        with IPRoute(netns=name, flags=0) as ipr:
            if ipr.status.get("netns") != name:  # never touch the host's links
                return False, f"netlink socket is not in namespace {name}"
            ipr.link("add", ifname="mspf0", kind="veth", peer="mspf1")
            idx = ipr.link_lookup(ifname="mspf0")[0]
            ipr.tc("add", "clsact", idx)
            ipr.tc("add-filter", "bpf", idx, ":1", fd=fn.fd, name=fn.name,
                   parent="ffff:fff2", classid=1, direct_action=True)
            flags = [f.get_nested("TCA_OPTIONS", "TCA_BPF_FLAGS")
                     for f in ipr.get_filters(index=idx, parent="ffff:fff2")
                     if f.get("TCA_KIND") == "bpf"]
        if any(fl is not None and fl & TCA_BPF_FLAG_ACT_DIRECT for fl in flags):
            return True, "veth in a throwaway netns: clsact + bpf filter (direct-action) on ingress"
        return False, f"filter added but not reported as direct-action (TCA_BPF_FLAGS {flags})"
    finally:
        b.cleanup()
        if created:
            _remove_netns(name)


@guarded
def probe_tail_call() -> tuple[bool, str]:
    b = _bcc_compile(_TAIL_PROG)
    try:
        entry = _bcc_load_cls(b, "mspf_entry")
        target = _bcc_load_cls(b, "mspf_target")
        b[b"mspf_jmp"][ctypes.c_int(0)] = ctypes.c_int(target.fd)
        r = bpfsys.prog_test_run(entry.fd, bytes(64))
    finally:
        b.cleanup()
    if r.retval == TAIL_MARK:
        return True, f"test run returned {TAIL_MARK:#x} from the tail-called program"
    return False, f"test run returned {r.retval:#x}, not {TAIL_MARK:#x}: the tail call did not happen"


def _bcc_has_bloom() -> bool:
    try:
        import bcc.table
    except Exception:
        return False
    return hasattr(bcc.table, "BPF_MAP_TYPE_BLOOM_FILTER")


@guarded
def probe_bloom_filter() -> tuple[bool, str]:
    # key_size must be 0; map_extra is the number of hash functions (1..15).
    ok, detail = probe_map(BPF_MAP_TYPE_BLOOM_FILTER, 0, 4, 64, map_extra=3)
    if ok and not _bcc_has_bloom():
        detail += ("; BCC has no BLOOM_FILTER table type, so the map is created with bpf()"
                   " and its fd handed to the program")
    return ok, detail


@guarded
def probe_blocklist_precheck() -> tuple[bool, str]:
    """Which pre-check the XDP blocklist gets here (datapath/blocklist.py):
    the bloom filter needs BLOOM_FILTER maps as inner maps of an
    ARRAY_OF_MAPS (a new list is swapped in whole); without them every IP
    packet goes straight to the LPM trie."""
    ok, why = blocklist.bloom_support()
    if ok:
        return True, (f"in use: {blocklist.PATH_TEXT[blocklist.PATH_BLOOM]} ({why}; "
                      f"up to {blocklist.MAX_LENS} prefix lengths per family; "
                      f"config force_no_bloom selects the fallback)")
    return False, why


_MOV64_R0_XDP_PASS = bpfsys.insn(0xB7, imm=blocklist.XDP_PASS)  # r0 = XDP_PASS


@guarded
def probe_xdp_native_veth() -> tuple[bool, str]:
    """A pass-everything XDP program attached in native (driver) mode to a
    veth in a throwaway namespace, removed with the namespace."""
    from pyroute2 import IPRoute, netns

    fd, log = load_raw_prog(_MOV64_R0_XDP_PASS + _EXIT, BPF_PROG_TYPE_XDP)
    if fd < 0:
        return False, f"XDP program refused ({errno_text(OSError(-fd, ''))})"
    name = _netns_name()
    created = False
    try:
        if (_NETNS_DIR / name).exists():  # not ours: leave it alone
            return False, f"network namespace {name} already exists"
        created = True
        netns.create(name)
        with IPRoute(netns=name, flags=0) as ipr:
            if ipr.status.get("netns") != name:  # never touch the host's links
                return False, f"netlink socket is not in namespace {name}"
            ipr.link("add", ifname="mspf0", kind="veth", peer="mspf1")
            idx = ipr.link_lookup(ifname="mspf0")[0]
            ipr.link("set", index=idx, xdp={"attrs": [("IFLA_XDP_FD", fd),
                                                       ("IFLA_XDP_FLAGS", XDP_FLAGS_DRV_MODE)]})
            x = ipr.get_links(idx)[0].get_attr("IFLA_XDP")
            mode = x.get_attr("IFLA_XDP_ATTACHED") if x else None
        if mode == "xdp":
            return True, "veth in a throwaway netns: XDP program attached in native (driver) mode"
        return False, f"attach reported mode {mode!r}, not native"
    finally:
        os.close(fd)
        if created:
            _remove_netns(name)


# -- the matrix --------------------------------------------------------------

def _row(name, level, review_min, upstream, fallback, result) -> Feature:
    ok, detail = result
    return Feature(name, level, review_min, upstream, ok, detail, "" if ok else fallback)


def probe_all() -> list[Feature]:
    """Every row, probed now. Probes are looked up at call time (tests patch them)."""
    page = os.sysconf("SC_PAGE_SIZE")  # ring buffer size: a power-of-2 number of pages
    return [
        _row("kernel version", REQUIRED, "5.10", "-", "", probe_kernel_version()),
        _row("bpf() syscall", REQUIRED, "5.4", "3.18", "", probe_bpf_syscall()),
        _row("JIT", RECOMMENDED, "5.4", "3.16",
             "BPF interpreter (several times slower; set net.core.bpf_jit_enable=1)", probe_jit()),
        _row("BTF vmlinux", OPTIONAL, "5.4", "5.4",
             "none needed: BCC compiles against kernel headers, no CO-RE", probe_btf_vmlinux()),
        _row("clsact + cls_bpf direct-action", REQUIRED, "5.4", "4.5", "", probe_clsact()),
        _row("map HASH", REQUIRED, "5.4", "3.19", "",
             probe_map(BPF_MAP_TYPE_HASH, 4, 4, 1)),
        _row("map LRU_HASH", REQUIRED, "5.4", "4.10", "",
             probe_map(BPF_MAP_TYPE_LRU_HASH, 4, 4, 16)),
        _row("map LRU_HASH BPF_F_NO_COMMON_LRU", RECOMMENDED, "5.4", "4.10",
             "one LRU list shared by all CPUs (more contention when evicting)",
             probe_map(BPF_MAP_TYPE_LRU_HASH, 4, 4, 16, BPF_F_NO_COMMON_LRU)),
        # key: u32 prefix length + IPv4 address
        _row("map LPM_TRIE", REQUIRED, "5.4", "4.11", "",
             probe_map(BPF_MAP_TYPE_LPM_TRIE, 8, 4, 1, BPF_F_NO_PREALLOC)),
        _row("map RINGBUF", RECOMMENDED, "5.10", "5.8", "perf buffer (BPF_PERF_OUTPUT)",
             probe_map(BPF_MAP_TYPE_RINGBUF, 0, 0, max(page, 4096))),
        _row("map BLOOM_FILTER", OPTIONAL, "5.16", "5.16", "LPM trie only, no pre-check",
             probe_bloom_filter()),
        _row("map PROG_ARRAY", REQUIRED, "5.4", "4.2", "",
             probe_map(BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 1)),
        _row("PROG_ARRAY tail call", REQUIRED, "5.4", "4.2", "", probe_tail_call()),
        _row("helper bpf_ktime_get_coarse_ns (session clock)", RECOMMENDED, "5.10", "5.11",
             "bpf_ktime_get_ns (precise, ~27 ns more per packet)", probe_helper(BPF_FUNC_ktime_get_coarse_ns)),
        _row("helper bpf_timer_init", OPTIONAL, "5.15", "5.15",
             "user-space sweeper expires idle sessions (plus lazy expiry on lookup)",
             probe_helper(BPF_FUNC_timer_init)),
        # The review ties XDP to no kernel version (its section 9.5 only
        # sketches a blocklist at XDP); native XDP on veth is 4.19 upstream.
        _row("XDP native mode (veth)", OPTIONAL, "-", "4.19",
             "generic (SKB) mode XDP: the same drops, after the kernel has built the skb",
             probe_xdp_native_veth()),
        _row("XDP blocklist pre-check", OPTIONAL, "5.16", "5.16",
             "LPM trie only, no pre-check: every IP packet costs one LPM lookup",
             probe_blocklist_precheck()),
        _row("tcx links (attach.mode auto, the default)", OPTIONAL, "-", "6.6",
             "clsact + cls_bpf (auto falls back to it; ~1.4 us more a new connection)", probes.tcx()),
    ]


# -- facts about this process and host (shown, not part of the exit code) ---

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39
_CAPS_FACT = "CAP_BPF + CAP_NET_ADMIN"


def _cap_eff() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise OSError(errno_mod.ENOENT, "no CapEff line in /proc/self/status")


def host_facts() -> list[HostFact]:
    facts = [HostFact("root", os.geteuid() == 0, f"euid {os.geteuid()}")]
    try:
        eff = _cap_eff()
    except (OSError, ValueError) as e:
        facts.append(HostFact(_CAPS_FACT, False, f"cannot read CapEff: {e}"))
    else:
        def has(bit):
            return bool(eff >> bit & 1)
        # CAP_SYS_ADMIN stands in for CAP_BPF (which 5.8 split out of it),
        # and bpf() itself accepts it where it wants CAP_NET_ADMIN; but
        # attaching a tc filter goes through rtnetlink, which checks
        # CAP_NET_ADMIN alone, so SYS_ADMIN does not count for that half.
        bpf_ok = has(CAP_BPF) or has(CAP_SYS_ADMIN)
        net_ok = has(CAP_NET_ADMIN)
        facts.append(HostFact(_CAPS_FACT, bpf_ok and net_ok,
                              f"CapEff {eff:#x}: CAP_BPF {'yes' if has(CAP_BPF) else 'no'}, "
                              f"CAP_NET_ADMIN {'yes' if has(CAP_NET_ADMIN) else 'no'}, "
                              f"CAP_SYS_ADMIN {'yes' if has(CAP_SYS_ADMIN) else 'no'}"))
    try:
        check_headers()
    except MicrosegError as e:
        facts.append(HostFact("kernel headers for BCC", False, str(e)))
    else:
        d = headers_dir()
        facts.append(HostFact("kernel headers for BCC", True, f"{d} -> {d.resolve()}"))
    try:
        import bcc
        facts.append(HostFact("BCC", True, f"bcc {getattr(bcc, '__version__', '?')}, "
                              f"BLOOM_FILTER table type: {'yes' if _bcc_has_bloom() else 'no'}"))
    except Exception as e:
        facts.append(HostFact("BCC", False, f"cannot import bcc: {e}"))
    return facts


# -- output ------------------------------------------------------------------

def exit_code(features: list[Feature]) -> int:
    return 1 if any(f.level == REQUIRED and not f.available for f in features) else 0


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]


def render(features: list[Feature], host: list[HostFact] | None = None) -> str:
    """Host facts as a header, then one aligned row per feature."""
    host = host_facts() if host is None else host
    out = [f"kernel {os.uname().release} ({os.uname().machine})"]
    out += _table([[h.name, "yes" if h.ok else "NO", h.detail] for h in host])
    out.append("")
    rows = [["status", "feature", "level", "review", "upstream", "detail / fallback"]]
    for f in features:
        text = f.detail + (f"; fallback: {f.fallback}" if f.fallback else "")
        rows.append(["ok" if f.available else "MISSING", f.name, f.level,
                     f.review_min, f.upstream_since, text.replace("\n", " | ")])
    out += _table(rows)
    missing = [f.name for f in features if f.level == REQUIRED and not f.available]
    out.append("")
    if not all(h.ok for h in host if h.name == _CAPS_FACT):
        # Without privileges the kernel refuses bpf() whatever it supports.
        out.append("not privileged: MISSING rows may mean 'not permitted', not 'not supported'")
    out.append(f"required feature(s) missing: {', '.join(missing)}" if missing
               else "all required features present")
    return "\n".join(out)


def to_json(features: list[Feature], host: list[HostFact] | None = None) -> str:
    host = host_facts() if host is None else host
    return json.dumps({
        "kernel": os.uname().release,
        "host": [asdict(h) for h in host],
        "features": [asdict(f) for f in features],
        "exit_code": exit_code(features),
    }, indent=2)
