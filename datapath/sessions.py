"""Sessions as an operator sees them: `microseg sessions`, and the pieces the
sweeper and `status` share with it.

* ``layouts()``: the ctypes Key / Leaf types of the session and pressure
  maps, from BCC (bpf/lib/maps.h is the one definition). A process that has
  no FastPath of its own (the CLI reading an attached build) compiles
  maps.h once, without loading any program, and keeps the types.
* ``AttachedBuild``: the maps of a build attached in a namespace, opened by
  map id (the program that loaded them may be long gone).
* ``BatchWalker``: a whole map read through BPF_MAP_LOOKUP_BATCH into
  reusable numpy buffers, a batch at a time.
* ``Session`` records, filters (``SessionFilter``), conntrack -L style text.

Both tables are listed: ms_flows (flows that saw a reply; conntrack would
call them ASSURED: never evicted) and ms_halfopen (handshakes in progress,
unreplied UDP and ICMP echo; an LRU that a SYN flood churns). Each is two
maps, one per family (``FAMILY_TABLES``: IPv4 sessions under a 16-byte
key, bpf/lib/maps.h struct ms_flow_key4); listings widen IPv4 keys to the
canonical form (``widen_keys``) and name the table, not the map. An entry idle
past its state's timeout is gone as far as the kernel is concerned (the
next packet's lookup deletes it) and is not listed; it is counted in the
summary until the sweeper removes it.
"""
from __future__ import annotations

import ctypes
import functools
import ipaddress
import os
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from protocols import registry

from . import attach, bpfsys
from .compile import check_headers, compile_text
from .config import DatapathConfig
from .enums import CtState, InspState, VerdictCode
from .errors import MicrosegError, UsageError
from .flows import PROTO_NAMES, V4_MAPPED, addr_text, parse_proto
from .l7 import app_ids
from .policy_maps import POLICY_MAPS
from .policy_tables import POL
from .source import LIB_DIR, header_defines, inline_includes, program_text

# The session tables and the maps that hold them, IPv4 first (bpf/lib/maps.h).
FAMILY_TABLES = {"ms_flows": ("ms_flows4", "ms_flows6"), "ms_halfopen": ("ms_halfopen4", "ms_halfopen6")}
FLOW_TABLES = (*FAMILY_TABLES["ms_flows"], *FAMILY_TABLES["ms_halfopen"])
# A map keyed by the canonical key (struct ms_flow_key), for its ctypes type.
WIDE_KEY_MAP = "ms_flows6"
ICMP_PROTOS = (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6)
# Maps whose layouts user space reads or writes.
LAYOUT_MAPS = (*FLOW_TABLES, "ms_timeouts", "ms_pressure", "ms_pressure_user", "ms_config",
               "ms_counters", "ms_insp_scratch", "ms_verdicts", "ms_slowpath", "ms_syn_dst", "ms_syn_global",
               "ms_frags", "ms_pol_state")
# Layouts `microseg policy apply` writes with (datapath/policy_maps.py). Not in
# LAYOUT_MAPS: check_layouts() opens those in the attached build, and the
# inner-map templates among these are not part of one (PolicyMaps.for_build
# checks the rest).
POLICY_LAYOUT_MAPS = POLICY_MAPS
# Entries per BPF_MAP_LOOKUP_BATCH call: 65,536 sessions are ~9 MB of
# buffer (40-byte key + 96-byte value), few enough system calls that their
# cost vanishes (16 per million entries), small enough to stay in cache-
# friendly territory and to bound the sweeper's memory whatever the table size.
DEFAULT_BATCH = 65_536
# Map names in the kernel are cut to BPF_OBJ_NAME_LEN - 1 characters.
KERNEL_NAME_LEN = 15
# What the kernel's ms_timeout() falls back to for a state outside
# ms_timeouts (bpf/lib/conntrack.h); only a corrupt entry has one.
FALLBACK_TIMEOUT_NS = 30 * 1_000_000_000

# Small sizes for the layout-only compile: layouts do not depend on sizes,
# and BCC creates (and preallocates) every map when it compiles.
_LAYOUT_SIZES = dict(flow_table_size=1024, halfopen_table_size=256, frag_table_size=64,
                     syn_dst_table_size=64, iface_table_size=1)

_layout_cache: dict[str, tuple[type, type]] | None = None


# CLOCK_MONOTONIC_COARSE (Linux clock id 6; Python's time module has no name
# for it). The kernel stamps sessions with bpf_ktime_get_ns or its coarse
# twin (bpf/lib/conntrack.h ms_now()); the coarse clock lags the precise one
# by at most a tick, so judging by it never expires an entry before the
# kernel would, whichever of the two the kernel uses.
CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)


def session_clock_ns() -> int:
    """Now, on the clock session timestamps use (ns)."""
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)


def layouts() -> dict[str, tuple[type, type]]:
    """{map name: (Key, Leaf)} for LAYOUT_MAPS, compiled once per process.

    Compiles bpf/lib/maps.h alone (where every layout is defined: ~0.4 s,
    half the whole program's compile), and the whole program if maps.h
    ever stops compiling on its own. No program is loaded.
    """
    global _layout_cache
    if _layout_cache is None:
        check_headers()
        try:
            _layout_cache = _compile_layouts(inline_includes(LIB_DIR / "maps.h"))
        except MicrosegError:
            _layout_cache = _compile_layouts(program_text())
    return _layout_cache


def _compile_layouts(text: str) -> dict[str, tuple[type, type]]:
    bpf = compile_text(text, DatapathConfig(**_LAYOUT_SIZES).cflags(), what="BPF compile (for map layouts)")
    try:
        return {n: (bpf[n.encode()].Key, bpf[n.encode()].Leaf) for n in (*LAYOUT_MAPS, *POLICY_LAYOUT_MAPS)}
    finally:
        bpf.cleanup()


def layouts_of(fastpath) -> dict[str, tuple[type, type]]:
    """The same types from a FastPath this process loaded (no compile)."""
    return {n: (fastpath.table(n).Key, fastpath.table(n).Leaf) for n in (*LAYOUT_MAPS, *POLICY_LAYOUT_MAPS)}


def table_of(name: str) -> str:
    """The session table (FAMILY_TABLES key) a map of FLOW_TABLES belongs to."""
    return next(t for t, maps in FAMILY_TABLES.items() if name in maps)


def is_v4_map(name: str) -> bool:
    """Does session map ``name`` hold IPv4 sessions (16-byte keys)?"""
    return name in FLOW_TABLES and name.endswith("4")


def key4_of(key: bytes) -> bytes | None:
    """The IPv4 table's key (struct ms_flow_key4) of canonical key ``key``
    (struct ms_flow_key, 40 bytes), or None when it is an IPv6 session's.
    User space's one copy of bpf/lib/conntrack.h ms_key4_of: both addresses
    IPv4-mapped makes an IPv4 session."""
    key = bytes(key)
    if key[0:12] != V4_MAPPED or key[16:28] != V4_MAPPED:
        return None
    return key[12:16] + key[28:32] + key[32:37] + bytes(3)


def key_of4(key4: bytes) -> bytes:
    """The canonical key (struct ms_flow_key) of IPv4 key ``key4`` (key4_of's inverse)."""
    key4 = bytes(key4)
    return V4_MAPPED + key4[0:4] + V4_MAPPED + key4[4:8] + key4[8:13] + bytes(3)


def map_key(table: str, key: bytes) -> tuple[str, bytes]:
    """(map name, key bytes in that map) of canonical key ``key`` in
    session table ``table`` ("ms_flows" or "ms_halfopen")."""
    k4 = key4_of(key)
    v4, v6 = FAMILY_TABLES[table]
    return (v4, k4) if k4 is not None else (v6, bytes(key))


def session_items(fastpath):
    """(table, canonical key, value) of every session of a FastPath this
    process loaded, IPv4 keys widened (BCC's types; one lookup per entry:
    for a few sessions, not a table of millions, which read_map reads)."""
    wide = fastpath.table(WIDE_KEY_MAP).Key
    for name in FLOW_TABLES:
        widen = key_of4 if is_v4_map(name) else bytes
        for k, v in fastpath.table(name).items():
            yield table_of(name), wide.from_buffer_copy(widen(bytes(k))), v


def widen_keys(keys4: np.ndarray, wide_dtype: np.dtype) -> np.ndarray:
    """IPv4 table keys (a structured array of struct ms_flow_key4) as
    canonical keys (``wide_dtype``, struct ms_flow_key), IPv4-mapped."""
    out = np.zeros(len(keys4), dtype=wide_dtype)
    prefix = np.frombuffer(V4_MAPPED, dtype=np.uint8)
    for side in ("lo", "hi"):
        a = out[f"addr_{side}"]
        a[:, :12] = prefix
        a[:, 12:] = np.ascontiguousarray(keys4[f"addr_{side}"]).view(np.uint8).reshape(-1, 4)
        out[f"port_{side}"] = keys4[f"port_{side}"]
    out["proto"] = keys4["proto"]
    return out


# MS_FLOW_* flag bits of struct ms_flow.flags (MS_FLOW_MAX is the table size, not a flag).
FLOW_FLAGS = {k: v for k, v in header_defines("MS_FLOW_").items() if k != "MAX"}


# -- maps of an attached build ------------------------------------------------

def ingress_prog_ids(netns: str | None) -> list[int]:
    """Ingress program ids attached in ``netns``: one per build in use."""
    ids = []
    for a in attach.attached(netns):
        if a.direction == "DIR_INGRESS" and a.prog_id and a.prog_id not in ids:
            ids.append(a.prog_id)
    return ids


class AttachedBuild:
    """Map fds of one attached build, opened by id. Close when done."""

    def __init__(self, prog_id: int):
        self.prog_id = prog_id
        _, self.stage_ids, infos = bpfsys.build_maps(prog_id)
        self.infos = {m.name: m for m in infos}
        self._fds: dict[str, int] = {}

    def info(self, name: str) -> bpfsys.MapInfo:
        m = self.infos.get(name[:KERNEL_NAME_LEN])
        if m is None:
            raise MicrosegError(f"build {self.prog_id} has no map {name}: it was attached by an "
                                f"older microseg; run `microseg up` again")
        return m

    def fd(self, name: str) -> int:
        if name not in self._fds:
            self._fds[name] = bpfsys.map_fd_by_id(self.info(name).id)
        return self._fds[name]

    def check_layouts(self, types: dict[str, tuple[type, type]]) -> None:
        """Refuse to read a build whose map layouts differ from this version's."""
        for name in LAYOUT_MAPS:
            k, v = types[name]
            if issubclass(v, ctypes.Array):   # BCC types a per-CPU value as one slot per CPU
                v = v._type_
            m = self.info(name)
            if (m.key_size, m.value_size) != (ctypes.sizeof(k), ctypes.sizeof(v)):
                raise MicrosegError(
                    f"build {self.prog_id}: {name} holds {m.key_size}-byte keys and {m.value_size}-byte "
                    f"values, this microseg expects {ctypes.sizeof(k)} and {ctypes.sizeof(v)}; "
                    f"the attached build is from another version (run `microseg up` again)")

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "AttachedBuild":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_builds(netns: str | None) -> list[AttachedBuild]:
    builds = []
    try:
        for pid in ingress_prog_ids(netns):
            builds.append(AttachedBuild(pid))
    except OSError as e:
        for b in builds:
            b.close()
        raise MicrosegError(f"cannot read the attached build's maps: {e}")
    return builds


# -- reading ----------------------------------------------------------------

def read_timeouts_ns(fd: int, leaf_type: type = ctypes.c_uint64, states: int = 256) -> np.ndarray:
    """Per-state timeouts (int64 ns) for every possible u8 state value; a
    state the map does not hold gets the kernel's fallback."""
    out = np.full(states, FALLBACK_TIMEOUT_NS, dtype=np.int64)
    size = ctypes.sizeof(leaf_type)
    for st in range(len(CtState)):
        raw = bpfsys.map_lookup(fd, st.to_bytes(4, "little"), size)
        if raw is not None:
            out[st] = min(leaf_type.from_buffer_copy(raw).value, np.iinfo(np.int64).max)
    return out


def _field_format(leaf_type: type, name: str) -> tuple[str, int]:
    f = getattr(leaf_type, name)
    fmt = {1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}.get(f.size)
    if fmt is None:
        raise TypeError(f"{leaf_type.__name__}.{name}: {f.size}-byte field, expected an integer")
    return fmt, f.offset


def expiry_dtype(leaf_type: type) -> np.dtype:
    """A numpy view of a session value holding only what expiry reads; the
    offsets are BCC's (Leaf.last_seen_ns.offset, Leaf.state.offset, ...)."""
    names = ["last_seen_ns", "state", "flags"]
    fields = [_field_format(leaf_type, n) for n in names]
    return np.dtype({"names": names, "formats": [f for f, _ in fields],
                     "offsets": [o for _, o in fields], "itemsize": ctypes.sizeof(leaf_type)})


def effective_states(vals: np.ndarray) -> np.ndarray:
    """The state each session is in (conntrack.h ms_flow_state, the same
    rule): one whose end record went (MS_FLOW_LOGGED, set only on TIME_WAIT
    or CLOSE) is closed whatever state was stored after it; of a close's two
    crossing last ACKs, the one that saw only its half may store LAST_ACK
    after the other's TIME_WAIT."""
    st = vals["state"]
    closed = ((vals["flags"] & FLOW_FLAGS["LOGGED"]) != 0) & (st != CtState.CT_CLOSE)
    return np.where(closed, np.uint8(CtState.CT_TIME_WAIT), st).astype(st.dtype, copy=False)


class BatchWalker:
    """Walk a hash map a batch at a time into reusable numpy buffers.

    ``for n in walker:`` leaves the batch in ``walker.keys[:n]`` and
    ``walker.values[:n]`` (numpy void arrays, one element per entry, the
    key / value bytes as the kernel lays them out). Entries of batches
    already returned may be deleted while walking: a hash map's cursor is a
    bucket index.
    """

    def __init__(self, fd: int, key_size: int, value_size: int, batch: int = DEFAULT_BATCH):
        self.fd = fd
        self.batch = batch
        self.keys = np.zeros(batch, dtype=np.dtype((np.void, key_size)))
        self.values = np.zeros(batch, dtype=np.dtype((np.void, value_size)))
        self._cursor = np.zeros((2, bpfsys.BATCH_CURSOR_BYTES), dtype=np.uint8)

    def __iter__(self):
        kaddr, vaddr = self.keys.ctypes.data, self.values.ctypes.data
        cin, cout = self._cursor[0].ctypes.data, self._cursor[1].ctypes.data
        first = True
        while True:
            n, done = bpfsys.map_lookup_batch(self.fd, kaddr, vaddr, self.batch, 0 if first else cin, cout)
            if n:
                yield n
            if done:
                return
            self._cursor[0] = self._cursor[1]
            first = False


def read_map(fd: int, key_type: type, leaf_type: type, batch: int = DEFAULT_BATCH):
    """Every entry of a hash map: (keys, values) as structured numpy arrays
    whose dtypes numpy derives from the ctypes types."""
    kdt, vdt = np.dtype(key_type), np.dtype(leaf_type)
    w = BatchWalker(fd, kdt.itemsize, vdt.itemsize, batch)
    ks, vs = [], []
    for n in w:
        ks.append(w.keys[:n].copy())
        vs.append(w.values[:n].copy())
    if not ks:
        return np.zeros(0, kdt), np.zeros(0, vdt)
    return np.concatenate(ks).view(kdt), np.concatenate(vs).view(vdt)


# -- records ----------------------------------------------------------------

@dataclass
class Session:
    table: str            # ms_flows or ms_halfopen
    proto: str
    proto_num: int
    state: str            # CtState name without CT_
    src: str              # the endpoint that opened the flow
    sport: int
    dst: str
    dport: int
    timeout_s: float      # idle time left before the entry expires
    packets_orig: int
    bytes_orig: int
    packets_reply: int
    bytes_reply: int
    flags: list[str] = field(default_factory=list)
    age_s: float = 0.0    # since the first packet
    app: str = ""         # application protocol the L7 stage identified ("" not yet)
    rule_id: int = 0      # the policy rule that decided (0: default or no policy)
    rule: str = ""        # that rule's name, from the applied policy (with_rule_names; "" unnamed/unknown)
    inspection: str = ""  # an inspected flow's state (InspState name without INSP_: PENDING,
                          # RELEASED, DONE, BLOCKED); "" when the policy did not inspect it
    verdict_waiting: bool = False   # ``inspection`` is the slow path's verdict still in ms_verdicts:
                                    # the kernel merges it on the flow's next packet (a held flow the
                                    # slow path blocked and reset may send none)

    def as_dict(self) -> dict:
        return asdict(self)


def inspection_name(action: int, insp_state: int) -> str:
    """The inspection verdict of a session: its insp_state by name, only
    for a flow the policy inspects (the field means nothing otherwise)."""
    if action != POL["POL_INSPECT"]:
        return ""
    try:
        return InspState(insp_state).name.removeprefix("INSP_")
    except ValueError:
        return f"INSP_{insp_state}"


# A verdict waiting in ms_verdicts, as the inspection state it becomes when merged (inspect.h).
_VERDICT_STATE = {"VERDICT_BLOCK": "BLOCKED", "VERDICT_ALLOW": "DONE", "VERDICT_RELEASE": "RELEASED"}


def _waiting_verdict(s: Session, k, v, verdicts_fd: int, leaf: type) -> None:
    """An undecided inspected session whose verdict the slow path wrote and
    the kernel has not merged yet: shown as that verdict, said to wait."""
    raw = bpfsys.map_lookup(verdicts_fd, k.tobytes(), ctypes.sizeof(leaf))
    if raw is None:
        return
    sv = leaf.from_buffer_copy(raw)
    if int(sv.cookie) != int(v["cookie"]):
        return                      # written for an earlier connection of this 5-tuple
    try:
        state = _VERDICT_STATE.get(VerdictCode(int(sv.verdict)).name)
    except ValueError:
        return
    if state:
        s.inspection, s.verdict_waiting = state, True


def with_rule_names(listing: "Listing", names: dict[int, str]) -> "Listing":
    """Each session's rule name from ``names`` (rule id -> name, the
    applied policy's)."""
    for s in listing.sessions:
        s.rule = names.get(s.rule_id, "")
    return listing


def state_name(v: int) -> str:
    try:
        return CtState(v).name.removeprefix("CT_")
    except ValueError:
        return f"STATE_{v}"


def parse_state(text: str) -> int:
    t = text.strip().upper().removeprefix("CT_")
    for st in CtState:
        if st.name.removeprefix("CT_") == t:
            return int(st)
    names = ", ".join(s.name.removeprefix("CT_") for s in CtState if s)
    raise UsageError(f"--state {text!r}: not a session state (one of {names})")


def parse_net(opt: str, text: str) -> ipaddress.IPv6Network:
    """An address or CIDR, as an IPv6 network (IPv4 as IPv4-mapped, as keys hold it)."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise UsageError(f"{opt} {text!r}: not an IP address or CIDR") from None
    if net.version == 4:
        mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + net.network_address.packed)
        return ipaddress.IPv6Network((mapped, 96 + net.prefixlen))
    return net


def parse_port(text: str) -> int:
    try:
        p = int(text)
    except ValueError:
        p = -1
    if not 0 <= p <= 65535:
        raise UsageError(f"--port {text!r}: not a port number (0-65535)")
    return p


@dataclass
class SessionFilter:
    src: ipaddress.IPv6Network | None = None
    dst: ipaddress.IPv6Network | None = None
    port: int | None = None
    state: int | None = None
    proto: int | None = None

    @classmethod
    def from_args(cls, src=None, dst=None, port=None, state=None, proto=None) -> "SessionFilter":
        return cls(parse_net("--src", src) if src is not None else None,
                   parse_net("--dst", dst) if dst is not None else None,
                   parse_port(port) if port is not None else None,
                   parse_state(state) if state is not None else None,
                   parse_proto(proto) if proto is not None else None)


def _net_mask(addrs: np.ndarray, net: ipaddress.IPv6Network) -> np.ndarray:
    """Rows of ``addrs`` (n x 16 bytes) inside ``net``."""
    mask = np.frombuffer(net.netmask.packed, np.uint8)
    want = np.frombuffer(net.network_address.packed, np.uint8)
    return np.all((addrs & mask) == want, axis=1)


def select(keys: np.ndarray, vals: np.ndarray, now_ns: int, timeouts_ns: np.ndarray,
           flt: SessionFilter) -> tuple[np.ndarray, np.ndarray]:
    """(live, shown): boolean masks over one table's entries."""
    age = (np.uint64(now_ns) - vals["last_seen_ns"]).view(np.int64)
    states = effective_states(vals)
    live = age <= timeouts_ns[states]
    m = live.copy()
    if flt.proto is not None:
        m &= keys["proto"] == flt.proto
    if flt.state is not None:
        m &= states == flt.state
    if flt.port is not None:
        p = np.array([flt.port], dtype=">u2").view("<u2")[0]  # ports are stored in network order
        m &= (keys["port_lo"] == p) | (keys["port_hi"] == p)
    if flt.src is not None or flt.dst is not None:
        hi = (vals["initiator_is_hi"] != 0)[:, None]
        src = np.where(hi, keys["addr_hi"], keys["addr_lo"])
        dst = np.where(hi, keys["addr_lo"], keys["addr_hi"])
        if flt.src is not None:
            m &= _net_mask(src, flt.src)
        if flt.dst is not None:
            m &= _net_mask(dst, flt.dst)
    return live, m


def _ntohs(v) -> int:
    return int.from_bytes(int(v).to_bytes(2, "little"), "big")


def to_session(table: str, k, v, now_ns: int, timeouts_ns: np.ndarray) -> Session:
    lo = (addr_text(k["addr_lo"]), _ntohs(k["port_lo"]))
    hi = (addr_text(k["addr_hi"]), _ntohs(k["port_hi"]))
    src, dst = (hi, lo) if v["initiator_is_hi"] else (lo, hi)
    st = int(effective_states(v))
    # a packet after `now` was read (the coarse clock lags) leaves the full timeout
    left = (int(timeouts_ns[st]) - max(now_ns - int(v["last_seen_ns"]), 0)) / 1e9
    flags = []
    if int(v["packets"][1]) == 0:
        flags.append("UNREPLIED")
    if table == "ms_flows":
        flags.append("ASSURED")   # as in conntrack: saw its reply, never evicted
    for name, bit in FLOW_FLAGS.items():
        if int(v["flags"]) & bit:
            flags.append(name)
    proto = int(k["proto"])
    return Session(table, PROTO_NAMES.get(proto, str(proto)), proto, state_name(st),
                   src[0], src[1], dst[0], dst[1], max(left, 0.0),
                   int(v["packets"][0]), int(v["bytes"][0]), int(v["packets"][1]), int(v["bytes"][1]),
                   flags, max(now_ns - int(v["first_seen_ns"]), 0) / 1e9,
                   app_label(int(v["app"])), int(v["rule_id"]),
                   inspection=inspection_name(int(v["action"]), int(v["insp_state"])))


def app_label(app_id: int) -> str:
    """Name of an application protocol id as this host's plugins number it."""
    return "" if app_id == 0 else _app_names().get(app_id, f"app-{app_id}")


@functools.lru_cache(maxsize=1)
def _app_names() -> dict[int, str]:
    try:
        return {i: n for n, i in app_ids(list(registry.default_plugins())).items()}
    except Exception:   # a broken plugin must not hide the session listing
        return {}


@dataclass
class Listing:
    sessions: list[Session]
    total: int            # live entries in both tables
    expired: int          # idle past their timeout, not yet swept
    by_table: dict[str, int]

    def summary(self) -> dict:
        return {"shown": len(self.sessions), "total": self.total, "expired_unswept": self.expired,
                "by_state": dict(sorted(Counter(s.state for s in self.sessions).items())),
                "by_table": self.by_table}


def list_sessions(fds: dict[str, int], types: dict[str, tuple[type, type]], timeouts_fd: int,
                  flt: SessionFilter | None = None, now_ns: int | None = None,
                  verdicts_fd: int | None = None) -> Listing:
    """Sessions of both tables that pass ``flt``, oldest first. With
    ``verdicts_fd`` (ms_verdicts), an undecided inspected session shows the
    verdict waiting for it there."""
    flt = flt or SessionFilter()
    tmo = read_timeouts_ns(timeouts_fd, types["ms_timeouts"][1])
    now = session_clock_ns() if now_ns is None else now_ns
    out, total, expired, by_table = [], 0, 0, {}
    wide = np.dtype(types[FAMILY_TABLES["ms_flows"][1]][0])
    for name in FLOW_TABLES:
        table = table_of(name)
        keys, vals = read_map(fds[name], *types[name])
        if is_v4_map(name):
            keys = widen_keys(keys, wide)
        live, shown = select(keys, vals, now, tmo, flt)
        n_live = int(live.sum())
        total += n_live
        expired += len(keys) - n_live
        by_table[table] = by_table.get(table, 0) + n_live
        for i in np.flatnonzero(shown):
            s = to_session(table, keys[i], vals[i], now, tmo)
            if verdicts_fd is not None and s.inspection in ("PENDING", "RELEASED"):
                _waiting_verdict(s, keys[i], vals[i], verdicts_fd, types["ms_verdicts"][1])
            out.append((int(vals[i]["first_seen_ns"]), s))
    out.sort(key=lambda t: t[0])
    return Listing([s for _, s in out], total, expired, by_table)


def merge(listings: list[Listing]) -> Listing:
    """One listing of several builds' tables (a namespace normally has one)."""
    if len(listings) == 1:
        return listings[0]
    by_table: dict[str, int] = {}
    for li in listings:
        for k, v in li.by_table.items():
            by_table[k] = by_table.get(k, 0) + v
    return Listing([s for li in listings for s in li.sessions], sum(li.total for li in listings),
                   sum(li.expired for li in listings), by_table)


# -- text -------------------------------------------------------------------

def format_session(s: Session) -> str:
    """One line in the shape of `conntrack -L`: the original tuple, then the reply tuple."""
    flags = "".join(f" [{f}]" for f in s.flags)
    if s.proto_num in ICMP_PROTOS:  # the "ports" of an echo session are its id
        orig, repl = f"id={s.sport}", f"id={s.sport}"
    else:
        orig, repl = f"sport={s.sport} dport={s.dport}", f"sport={s.dport} dport={s.sport}"
    return (f"{s.proto:<8} {s.proto_num} {int(s.timeout_s)} {s.state} "
            f"src={s.src} dst={s.dst} {orig} packets={s.packets_orig} bytes={s.bytes_orig} "
            f"src={s.dst} dst={s.src} {repl} packets={s.packets_reply} bytes={s.bytes_reply}{flags}"
            f"{f' app={s.app}' if s.app else ''}{_rule_text(s)}"
            f"{f' inspect={s.inspection}' if s.inspection else ''}"
            f"{' (verdict waiting for the next packet)' if s.verdict_waiting else ''}")


def _rule_text(s: Session) -> str:
    """' rule=web(3)': the name and the id the kernel holds; the id alone
    for an unnamed rule."""
    if not s.rule_id:
        return ""
    return f" rule={s.rule}({s.rule_id})" if s.rule else f" rule={s.rule_id}"


def format_summary(listing: Listing) -> str:
    sm = listing.summary()
    states = ", ".join(f"{k} {v}" for k, v in sm["by_state"].items())
    shown = f"{sm['shown']} session{'s' if sm['shown'] != 1 else ''}"
    if sm["shown"] != sm["total"]:
        shown += f" shown of {sm['total']}"
    line = f"{shown}" + (f" ({states})" if states else "")
    line += f"; tables: ms_flows {sm['by_table'].get('ms_flows', 0)}, ms_halfopen {sm['by_table'].get('ms_halfopen', 0)}"
    if sm["expired_unswept"]:
        line += f"; {sm['expired_unswept']} expired, not yet swept"
    return line


def census(fd: int, leaf_type: type, key_size: int, timeouts_ns: np.ndarray,
           now_ns: int | None = None, batch: int = DEFAULT_BATCH) -> tuple[int, int]:
    """(entries present, of which expired) in one session table."""
    now = np.uint64(session_clock_ns() if now_ns is None else now_ns)
    w = BatchWalker(fd, key_size, ctypes.sizeof(leaf_type), batch)
    vals = w.values.view(expiry_dtype(leaf_type))
    present = expired = 0
    for n in w:
        v = vals[:n]
        present += n
        expired += int(np.count_nonzero((now - v["last_seen_ns"]).view(np.int64) > timeouts_ns[effective_states(v)]))
    return present, expired
