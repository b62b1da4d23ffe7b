"""The XDP blocklist: compile, load, fill and test bpf/xdp_blocklist.c.

Blocked prefixes (IPv4 and IPv6; IPv4 stored IPv4-mapped, as everywhere in
microseg) live in an LPM trie, which decides. In front of it, where the
kernel has BPF_MAP_TYPE_BLOOM_FILTER (5.16), a bloom filter answers "surely
not blocked" for most legitimate sources without the LPM walk. A bloom
filter tests exact keys and an LPM matches prefixes, so the bloom filter
holds every blocked prefix as (prefix length, network address), exactly as
the trie holds it, and a packet tests its source masked to each distinct
prefix length the list uses in the source's family (at most
MS_BL_MAX_LENS; a family with more goes straight to the LPM, and
``apply`` says so). Without BLOOM_FILTER, or with ``force_no_bloom``, the
program is built without the pre-check (the fallback): every IP packet
costs one LPM lookup.

``Blocklist.apply(cidrs)`` replaces the whole list atomically: it builds a
new trie and bloom filter beside the live ones, puts them in the spare
slot of the outer ARRAY_OF_MAPS, writes that slot's prefix lengths, and
then rewrites ms_bl_state to {spare slot, gen + 1} in one 8-byte write. A
packet sees the old list or the new one. (A bloom filter cannot delete, so
rebuilding beside is the only way to shrink the list anyway.) One caveat,
the same as the policy maps': a packet that read the state just before a
flip and is still running when the *next* apply refills its slot may see
that newer generation's maps; two applies within one packet's run time.

Layouts come from BCC's types of the maps in bpf/lib/blocklist.h (the
one definition); the bloom value size, needed before the compile, is read
from that header's MS_BL_KEY_SIZE, which the C side pins with a static
assert.
"""
from __future__ import annotations

import contextlib
import ctypes
import enum
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Iterable

from . import bpfsys
from .bpfsys import BPF_F_NO_PREALLOC, BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_BLOOM_FILTER, BPF_MAP_TYPE_LPM_TRIE
from .compile import check_headers, compile_text, load_func
from .enums import enum_list
from .errors import MicrosegError, UsageError
from .source import BPF_DIR, LIB_DIR, program_text

XDP_SOURCE = BPF_DIR / "xdp_blocklist.c"
HEADER = LIB_DIR / "blocklist.h"
PROGRAM = "xdp_blocklist"   # also the kernel's name of the loaded program

# enum xdp_action
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)

# Bloom filter sizing. The kernel sizes the bit array as max_entries *
# hashes * 7/5 bits (about n*k/ln 2, the optimum), rounded up to a power of
# two. Asking for BLOOM_OVERSIZE times the entries with BLOOM_HASHES hash
# functions gives >= 16.8 bits per prefix: a false positive rate of about
# (1 - e^(-3/16.8))^3 = 0.4% per test, so ~3% for a packet that tests all 8
# lengths, at a memory cost of ~2 bytes per prefix. Fewer hashes also means
# fewer jhash rounds per test, which is the pre-check's whole cost.
BLOOM_HASHES = 3
BLOOM_OVERSIZE = 4
BLOOM_MIN_ENTRIES = 64

BlReason = enum.IntEnum("BlReason", [(e.name, e.value) for e in enum_list("BL_REASON")])
BlReason._meta = {e.value: e for e in enum_list("BL_REASON")}  # type: ignore[attr-defined]
BL_REASON_COUNT = len(BlReason)

# IPv4-mapped IPv6 (RFC 4291 2.5.5.2): how IPv4 is keyed.
V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
FAM_V4MAPPED, FAM_V6 = 0, 1
F_BLOOM = {FAM_V4MAPPED: 0x01, FAM_V6: 0x02}   # MS_BL_F_BLOOM_V4 / _V6
FAMILY_NAMES = {FAM_V4MAPPED: "ipv4", FAM_V6: "ipv6"}


def _header_define(name: str) -> int:
    m = re.search(rf"^#define\s+{name}\s+(\d+)\s*$", HEADER.read_text(), re.M)
    if not m:
        raise MicrosegError(f"{HEADER}: no #define {name}")
    return int(m.group(1))


KEY_SIZE = _header_define("MS_BL_KEY_SIZE")    # sizeof(struct ms_bl_key)
MAX_LENS = _header_define("MS_BL_MAX_LENS")


def reason_kind(r: int) -> str:
    return BlReason._meta[int(r)].kind  # type: ignore[attr-defined]


def reason_description(r: int) -> str:
    return BlReason._meta[int(r)].description  # type: ignore[attr-defined]


# -- the list, planned in Python (no kernel needed) ----------------------------

def to_key_space(cidr) -> ipaddress.IPv6Network:
    """A CIDR in the LPM's key space: IPv4 as IPv4-mapped IPv6 (len + 96)."""
    net = cidr if isinstance(cidr, (ipaddress.IPv4Network, ipaddress.IPv6Network)) \
        else ipaddress.ip_network(str(cidr).strip(), strict=False)
    if net.version == 4:
        return ipaddress.IPv6Network(
            (b"\0" * 10 + b"\xff\xff" + net.network_address.packed, 96 + net.prefixlen))
    return net


def families(net: ipaddress.IPv6Network) -> set[int]:
    """Which sources a prefix can match: IPv4-mapped ones, other IPv6, or both
    (a short IPv6 prefix such as ::/0 covers the mapped range too)."""
    out = set()
    if net.subnet_of(V4_MAPPED) or V4_MAPPED.subnet_of(net):
        out.add(FAM_V4MAPPED)
    if not net.subnet_of(V4_MAPPED):
        out.add(FAM_V6)
    return out


@dataclass
class Plan:
    """A blocklist ready to write: prefixes and what the pre-check tests."""
    prefixes: list[ipaddress.IPv6Network]        # collapsed, in the key space
    lens: dict[int, list[int]]                   # family -> distinct lengths (key space)
    bloom: dict[int, bool]                       # family -> pre-check usable
    notes: list[str] = field(default_factory=list)


def plan(cidrs: Iterable, max_entries: int, max_lens: int = MAX_LENS) -> Plan:
    """Parse, map and collapse ``cidrs``; find each family's prefix lengths.

    Collapsing (covered prefixes dropped, adjacent ones merged) matches the
    same addresses with fewer entries and usually fewer distinct lengths,
    which is what the pre-check pays per packet.
    """
    nets = []
    for c in cidrs:
        try:
            nets.append(to_key_space(c))
        except ValueError as e:
            raise UsageError(f"blocklist: {c!r} is not a CIDR: {e}") from None
    prefixes = sorted(ipaddress.collapse_addresses(nets))
    if len(prefixes) > max_entries:
        raise UsageError(f"blocklist: {len(prefixes)} prefixes after aggregation, more than "
                         f"the configured maximum of {max_entries}")
    lens: dict[int, set[int]] = {FAM_V4MAPPED: set(), FAM_V6: set()}
    for p in prefixes:
        for fam in families(p):
            lens[fam].add(p.prefixlen)
    out = Plan(prefixes, {f: sorted(v) for f, v in lens.items()}, {})
    for fam, ls in out.lens.items():
        out.bloom[fam] = len(ls) <= max_lens
        if not out.bloom[fam]:
            out.notes.append(f"{FAMILY_NAMES[fam]}: {len(ls)} distinct prefix lengths, more than "
                             f"{max_lens}: bloom pre-check skipped, every {FAMILY_NAMES[fam]} "
                             f"packet goes to the LPM")
    return out


# -- kernel support ----------------------------------------------------------------

def bloom_support() -> tuple[bool, str]:
    """Can this kernel run the bloom pre-check? It needs BLOOM_FILTER maps
    as inner maps of an ARRAY_OF_MAPS (both 5.16). Never raises."""
    fds = []
    try:
        try:
            fds.append(bpfsys.create_map(BPF_MAP_TYPE_BLOOM_FILTER, 0, KEY_SIZE, BLOOM_MIN_ENTRIES,
                                         map_extra=BLOOM_HASHES, name="ms_bl_probe"))
        except OSError as e:
            return False, f"BPF_MAP_CREATE(BLOOM_FILTER): {os.strerror(e.errno) if e.errno else e}"
        try:
            fds.append(bpfsys.create_map(BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, 2,
                                         inner_map_fd=fds[0], name="ms_bl_probe_o"))
        except OSError as e:
            return False, (f"BLOOM_FILTER exists but not as an inner map of ARRAY_OF_MAPS: "
                           f"{os.strerror(e.errno) if e.errno else e}")
        return True, "BLOOM_FILTER maps work as inner maps of ARRAY_OF_MAPS"
    except Exception as e:  # preflight calls this: no traceback, ever
        return False, f"{type(e).__name__}: {e}"
    finally:
        for fd in fds:
            os.close(fd)


PATH_BLOOM = "bloom"
PATH_LPM = "lpm"
PATH_TEXT = {
    PATH_BLOOM: "bloom filter pre-check, then LPM trie",
    PATH_LPM: "LPM trie only (fallback, no pre-check)",
}


def choose_path(force_no_bloom: bool = False) -> tuple[str, str]:
    """(path, why): the pre-check this host gets."""
    if force_no_bloom:
        return PATH_LPM, "force_no_bloom set"
    ok, why = bloom_support()
    return (PATH_BLOOM, why) if ok else (PATH_LPM, why)


# -- the loaded program ------------------------------------------------------------

@dataclass(frozen=True)
class BlocklistConfig:
    max_entries: int = 65536        # prefixes per list (after aggregation)
    force_no_bloom: bool = False    # build the fallback even where the kernel has bloom filters

    def __post_init__(self):
        if not 1 <= self.max_entries <= 1 << 24:
            raise UsageError(f"blocklist max_entries {self.max_entries} outside 1..16777216")


@dataclass
class BlocklistState:
    gen: int
    slot: int
    prefixes: int
    lens: dict[str, list[str]]       # family -> prefix lengths the list uses ("/24", ...)
    precheck: dict[str, str]         # family -> "bloom" | "lpm"
    notes: list[str]


@dataclass
class XdpRunResult:
    action: int        # XDP_* the program returned
    duration_ns: int   # mean per repetition
    data: bytes


def _len_text(fam: int, n: int) -> str:
    """A key-space prefix length as an operator wrote it."""
    if fam == FAM_V4MAPPED:
        # below 96: an IPv6 prefix (::/0, ...) that covers every IPv4 address
        return f"/{n - 96}" if n >= 96 else f"/{n} (IPv6 prefix covering IPv4)"
    return f"/{n}"


class Blocklist:
    """One compiled and loaded build of the XDP blocklist.

    The pre-check path is fixed at build: the bloom filter where the kernel
    has it (``bloom_support``) unless ``config.force_no_bloom``, else the
    LPM-only fallback; ``path`` and ``path_why`` say which and why.
    ``text`` replaces the program's source (tests add static asserts).
    """

    def __init__(self, config: BlocklistConfig | None = None, *, text: str | None = None):
        self.config = config or BlocklistConfig()
        self.bpf = None
        self._bloom_tmpl = self._bloom_outer = -1
        check_headers()
        self.path, self.path_why = choose_path(self.config.force_no_bloom)
        cflags = [f"-DMS_BL_MAX={self.config.max_entries}"]
        if self.path == PATH_BLOOM:
            try:
                # The template only gives the outer array its inner maps' type.
                self._bloom_tmpl = bpfsys.create_map(BPF_MAP_TYPE_BLOOM_FILTER, 0, KEY_SIZE,
                                                     BLOOM_MIN_ENTRIES, map_extra=BLOOM_HASHES,
                                                     name="ms_bl_bloom_t")
                self._bloom_outer = bpfsys.create_map(BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, 2,
                                                      inner_map_fd=self._bloom_tmpl, name="ms_bl_bloom")
            except OSError as e:
                self.close()
                raise MicrosegError(f"cannot create the blocklist's bloom filter maps: {e}") from None
            cflags.append(f"-DMS_BL_BLOOM_FD={self._bloom_outer}")
        else:
            cflags.append("-DMS_BL_NO_BLOOM")
        try:
            src = text if text is not None else program_text(XDP_SOURCE)
        except OSError as e:   # a source file missing: said as the compile failing
            self.close()
            raise MicrosegError(f"XDP blocklist compile failed: {e}") from None
        try:
            self.bpf = compile_text(src, cflags, what="XDP blocklist compile")
            self.fn = load_func(self.bpf, PROGRAM, bpfsys.BPF_PROG_TYPE_XDP)
        except MicrosegError:
            self.close()
            raise
        key = self.table("ms_bl_lpm_t").Key
        if ctypes.sizeof(key) != KEY_SIZE:
            self.close()
            raise MicrosegError(f"struct ms_bl_key is {ctypes.sizeof(key)} bytes, MS_BL_KEY_SIZE {KEY_SIZE}")
        self._key_type = key
        self.max_lens = len(self.table("ms_bl_meta").Leaf().lens) // 2

    # -- program ---------------------------------------------------------
    @property
    def prog_fd(self) -> int:
        return self.fn.fd

    def run(self, packet: bytes, *, repeat: int = 1) -> XdpRunResult:
        r = bpfsys.prog_test_run_xdp(self.prog_fd, bytes(packet), repeat=repeat)
        return XdpRunResult(r.retval, r.duration_ns, r.data_out)

    # -- maps ------------------------------------------------------------
    def table(self, name: str):
        return self.bpf[name.encode()]

    def state(self) -> tuple[int, int]:
        """(slot, gen) of the live list; gen 0: none applied."""
        st = self.table("ms_bl_state")[ctypes.c_int(0)]
        return st.slot, st.gen

    def _key_bytes(self, net: ipaddress.IPv6Network) -> bytes:
        k = self._key_type()
        k.prefixlen = net.prefixlen
        k.addr = (ctypes.c_uint8 * 16)(*net.network_address.packed)
        return bytes(k)

    def apply(self, cidrs: Iterable) -> BlocklistState:
        """Make ``cidrs`` the whole blocklist, in one flip (see module doc)."""
        p = plan(cidrs, self.config.max_entries, self.max_lens)
        slot, gen = self.state()
        spare = 1 - slot if gen else 0
        keys = [self._key_bytes(n) for n in p.prefixes]
        made: list[int] = []
        try:
            lpm = bpfsys.create_map(BPF_MAP_TYPE_LPM_TRIE, KEY_SIZE, 1, max(len(keys), 1),
                                    BPF_F_NO_PREALLOC, name="ms_bl_lpm_i")
            made.append(lpm)
            for k in keys:
                bpfsys.map_update(lpm, k, b"\x01")
            bpfsys.map_update(self.table("ms_bl_lpm").map_fd, bytes(ctypes.c_uint32(spare)),
                              bytes(ctypes.c_uint32(lpm)))
            if self.path == PATH_BLOOM:
                bloom = bpfsys.create_map(BPF_MAP_TYPE_BLOOM_FILTER, 0, KEY_SIZE,
                                          max(len(keys) * BLOOM_OVERSIZE, BLOOM_MIN_ENTRIES),
                                          map_extra=BLOOM_HASHES, name="ms_bl_bloom_i")
                made.append(bloom)
                for k in keys:
                    bpfsys.map_update(bloom, None, k)
                bpfsys.map_update(self._bloom_outer, bytes(ctypes.c_uint32(spare)),
                                  bytes(ctypes.c_uint32(bloom)))
            mt = self.table("ms_bl_meta")
            meta = mt.Leaf()
            use = {f: self.path == PATH_BLOOM and p.bloom[f] for f in (FAM_V4MAPPED, FAM_V6)}
            meta.flags = sum(F_BLOOM[f] for f, on in use.items() if on)
            for f in (FAM_V4MAPPED, FAM_V6):
                ls = p.lens[f] if use[f] else []
                meta.nlens[f] = len(ls)
                for i, n in enumerate(ls):
                    meta.lens[f * self.max_lens + i] = n
            mt[ctypes.c_int(spare)] = meta
            st = self.table("ms_bl_state")
            v = st.Leaf()
            v.slot, v.gen = spare, gen + 1
            st[ctypes.c_int(0)] = v                      # the flip
        except OSError as e:
            raise MicrosegError(f"blocklist not applied (the live list is unchanged): {e}") from None
        finally:
            for fd in made:
                os.close(fd)   # the outer arrays hold their own references
        notes = list(p.notes)
        if self.path == PATH_LPM:
            notes.append(f"no bloom pre-check ({self.path_why}): every IP packet costs one LPM lookup")
        return BlocklistState(
            gen + 1, spare, len(p.prefixes),
            {FAMILY_NAMES[f]: [_len_text(f, n) for n in p.lens[f]] for f in (FAM_V4MAPPED, FAM_V6)},
            {FAMILY_NAMES[f]: PATH_BLOOM if use[f] else PATH_LPM for f in (FAM_V4MAPPED, FAM_V6)},
            notes)

    def counters(self) -> dict[BlReason, tuple[int, int]]:
        """reason -> (packets, bytes), summed over CPUs; zeros left out."""
        tab = self.table("ms_bl_counters")
        out = {}
        for r in BlReason:
            vals = tab[tab.Key(int(r))]
            pk = sum(v.packets for v in vals)
            if pk:
                out[r] = (pk, sum(v.bytes for v in vals))
        return out

    def reset_counters(self) -> None:
        self.table("ms_bl_counters").clear()

    def close(self) -> None:
        if self.bpf is not None:
            with contextlib.suppress(Exception):
                self.bpf.cleanup()
            self.bpf = None
        for attr in ("_bloom_outer", "_bloom_tmpl"):
            fd = getattr(self, attr, -1)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, -1)

    def __enter__(self) -> "Blocklist":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
