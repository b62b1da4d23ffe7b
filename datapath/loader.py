"""Compile and load the fast path with BCC.

``FastPath`` owns one compiled build: its program fds (tc_ingress,
tc_egress), its maps (BCC tables, whose ctypes Key/Leaf types BCC derives
from bpf/lib/maps.h: the one definition of every layout), and a
``run()`` that executes a program on a packet through BPF_PROG_TEST_RUN.
Compiler and verifier failures become MicrosegError with the compiler's or
verifier's last lines, not a traceback.

It also loads, when the kernel and the compiler allow, the kernel sweep
(bpf/lib/sweep.h) as ``FastPath.sweep`` (a ``SweepProgram``): a program
whose walk of a table calls back into a subprogram (bpf_for_each_map_elem).
BCC 0.26 compiles such a program but cannot load it (it loads one function
and never resolves the callback's address), so ``link_with_callback`` does
that part: it takes the function and its callback out of BCC's code,
turns the callback reference into a BPF_PSEUDO_FUNC load, and loads the
result with the BTF func_info the verifier asks of a callback. The same
program compiled on its own serves an attached build opened by id
(``compile_sweep``), with the build's map fds put in place of its own.
"""
from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from protocols import registry

from . import bpfsys, compat, l7, tcp_fsm
from .compile import compile_text, error_tail, load_func
from .config import DatapathConfig
from .counters import read_counters_fd
from .enums import CFG, IFACE_MANAGED, IFINDEX_DIRECT, CtState, Direction, FailAction, FailKind, Reason, Stage
from .errors import MicrosegError
from .pressure import possible_cpus
from .source import LIB_DIR, MAIN_SOURCE, inline_includes, program_text

PROGRAMS = {Direction.DIR_INGRESS: "tc_ingress", Direction.DIR_EGRESS: "tc_egress"}
# Tail-call stages, by their slot in ms_stages (enum ms_stage).
STAGES = {Stage.STAGE_TCP: "ms_stage_tcp", Stage.STAGE_OTHER: "ms_stage_other",
          Stage.STAGE_ICMP_ERR: "ms_stage_icmp_err", Stage.STAGE_L7: "ms_stage_l7"}
RUNTIME_MAPS = ("ms_counters", "ms_flows4", "ms_flows6", "ms_halfopen4", "ms_halfopen6", "ms_ifaces",
                "ms_iface_direct", "ms_frags", "ms_syn_dst", "ms_syn_global", "ms_pressure", "ms_pressure_user",
                "ms_pol_state", "ms_verdicts",
                "ms_slowpath", "ms_drop_limit", "ms_drop_stats",
                # its group cache is keyed by ms_pol_state's word, which a reset
                # zeroes: the next apply repeats a word an older policy had
                "ms_pol_scratch")
TC_ACT_OK = 0
TC_ACT_SHOT = 2


@dataclass
class RunResult:
    action: int      # TC action the program returned
    duration_ns: int
    data: bytes


class FastPath:
    """One compiled and loaded build of the fast path."""

    def __init__(self, config: DatapathConfig | None = None, *, text: str | None = None,
                 main: Path = MAIN_SOURCE, programs: dict | None = None,
                 stages: dict | None = None, protocols: list | None = None, pin_dir: Path | None = None):
        self.config = config or DatapathConfig()
        # Kernel L7 signatures, from the protocol plugins (built-ins and
        # installed ones unless ``protocols`` says otherwise): checked before
        # anything is compiled, written into the maps by apply_runtime().
        self.protocols = list(protocols) if protocols is not None else list(registry.default_plugins())
        self.l7 = l7.compile_signatures(self.protocols)
        # Kernel features, probed (or turned off by the configuration):
        # the fallbacks are compiled in where a feature is missing.
        self.features = compat.decide(self.config.compat)
        src = text if text is not None else program_text(main)
        # pin_dir: the state maps are pinned there (bpf/lib/maps.h
        # MS_STATE_TABLE; datapath/state.py decides what is reused).
        pin = [f'-DMS_PIN_DIR="{pin_dir}"'] if pin_dir is not None else []
        self.bpf = compile_text(src, self.config.cflags() + pin + self.features.cflags())
        self.fns = {}
        self.stage_fns = {}
        wanted = [(self.fns, d, n) for d, n in (programs or PROGRAMS).items()]
        if programs is None or stages is not None:
            wanted += [(self.stage_fns, st, n) for st, n in (stages or STAGES).items()]
        for store, d, name in wanted:
            try:
                store[d] = load_func(self.bpf, name, bpfsys.BPF_PROG_TYPE_SCHED_CLS)
            except MicrosegError:
                self.close()
                raise
        if self.stage_fns:
            arr = self.table("ms_stages")
            for st, fn in self.stage_fns.items():
                arr[ctypes.c_int(int(st))] = ctypes.c_int(fn.fd)
        if self.features.ringbuf and programs is None:
            # Worker 0 reads ms_insp_ring itself; further workers' rings are
            # put in their slots by datapath/insp_rings.py.
            bpfsys.map_update(self.table("ms_insp_rings").map_fd, (0).to_bytes(4, "little"),
                              self.table("ms_insp_ring").map_fd.to_bytes(4, "little"))
        if programs is None:
            self.apply_runtime(self.config)
        # The kernel sweep, when this kernel and this BCC can have it; the
        # sweeper falls back to its batch sweep otherwise (sweep_error says why).
        self.sweep: SweepProgram | None = None
        self.sweep_error: str | None = None
        if programs is None:
            try:
                self.sweep = SweepProgram(self.bpf)
            except (MicrosegError, OSError) as e:
                self.sweep_error = str(e)

    def apply_runtime(self, config: DatapathConfig) -> None:
        """Write the runtime settings into the config maps (no reload)."""
        self.runtime = config
        t = self.table("ms_timeouts")
        secs = config.timeouts.by_state()
        for st in CtState:
            t[ctypes.c_int(int(st))] = ctypes.c_uint64(int(secs[st.name] * 1e9))
        fsm = self.table("ms_tcp_fsm")
        for idx, val in tcp_fsm.table_bytes():
            fsm[ctypes.c_int(idx)] = ctypes.c_uint8(val)
        c = self.table("ms_config")
        v = c.Leaf()
        sim = set(config.simulate)
        on = {"LOOSE": config.loose, "INVALID_PASS": config.invalid_action == "pass",
              "WINDOW_PASS": config.window_action == "pass", "TAILCALL_PASS": config.tailcall_action == "pass",
              "SIM_RINGBUF_FULL": "ringbuf_full" in sim, "SIM_BUDGET": "budget_exhausted" in sim,
              "SIM_SLOWPATH_DOWN": "slowpath_down" in sim, "RING_NO_WAKEUP": not config.ring_wakeup,
              "TUN_NO_DECAP": not config.tunnels.decap, "TUN_POLICY_OUTER": config.tunnels.policy == "outer",
              "TUN_SHORT_QUOTE_DROP": config.tunnels.short_quote_action == "drop",
              "WORKER_ENDS": config.worker_flow_ends}
        v.flags = sum(CFG[name] for name, wanted in on.items() if wanted)
        v.insp_budget = config.inspect_budget
        v.workers = config.slowpath_workers
        v.drop_ev_rate, v.drop_ev_cpu_rate = config.drop_events_per_sec, config.drop_events_cpu_per_sec
        v.hb_timeout_ns = int(config.heartbeat_timeout_s * 1e9)
        fa = config.failure_actions
        for kind, act in ((FailKind.FAIL_RINGBUF_FULL, fa.ringbuf_full), (FailKind.FAIL_BUDGET, fa.budget_exhausted),
                          (FailKind.FAIL_SLOWPATH_DOWN, fa.slowpath_down)):
            v.fail_action[int(kind)] = int(FailAction["FAIL_" + act.upper()])
        v.pressure_pct = config.pressure_pct
        v.syn_dst_rate, v.syn_dst_burst = config.syn_dst_rate, config.syn_dst_burst
        v.syn_global_rate, v.syn_global_burst = config.syn_global_rate, config.syn_global_burst
        c[ctypes.c_int(0)] = v
        l7.load(self, self.l7)
        allow = self.table("ms_full_allow")
        allow.clear()
        everyone = ("0.0.0.0/0", "::/0") if config.failure_actions.session_table_full == "pass" else ()
        for cidr in (*config.full_allowlist, *everyone):
            net = ipaddress.ip_network(cidr, strict=False)
            k = allow.Key()
            if net.version == 4:
                addr = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + net.network_address.packed)
                k.prefixlen = 96 + net.prefixlen
            else:
                addr = net.network_address
                k.prefixlen = net.prefixlen
            k.addr = (ctypes.c_uint8 * 16)(*addr.packed)
            allow[k] = ctypes.c_uint8(1)

    # -- programs ---------------------------------------------------------
    def prog_fd(self, direction: Direction) -> int:
        return self.fns[direction].fd

    def run(self, packet: bytes, direction: Direction = Direction.DIR_INGRESS,
            *, repeat: int = 1, ingress_ifindex: int = 0) -> RunResult:
        """Run the ingress or egress program on ``packet`` (Ethernet frame)."""
        r = bpfsys.prog_test_run(self.prog_fd(direction), bytes(packet), repeat=repeat,
                                 ingress_ifindex=ingress_ifindex)
        return RunResult(r.retval, r.duration_ns, r.data_out)

    # -- maps -------------------------------------------------------------
    def table(self, name: str):
        return self.bpf[name.encode()]

    def set_managed(self, ifindexes) -> None:
        """Mark interfaces as managed (their ingress program decides, the
        egress program skips what came in through them): below
        IFINDEX_DIRECT in the direct-mapped array, the rest in the hash
        (bpf/lib/maps.h says why two)."""
        direct, rest = self.table("ms_iface_direct"), self.table("ms_ifaces")
        for i in ifindexes:
            if i < IFINDEX_DIRECT:
                direct[direct.Key(i)] = direct.Leaf(IFACE_MANAGED)
            else:
                rest[rest.Key(i)] = rest.Leaf(IFACE_MANAGED)

    def counters(self) -> dict[tuple[Direction, Reason], tuple[int, int]]:
        """(direction, reason) -> (packets, bytes), summed over CPUs; zeros left out."""
        tab = self.table("ms_counters")
        return read_counters_fd(tab.map_fd, tab.Leaf, possible_cpus())

    def reset(self) -> None:
        """Empty every map, so each test starts from a clean kernel state."""
        for name in RUNTIME_MAPS:
            self.table(name).clear()  # arrays: zeroes every slot; hashes: deletes
        self.apply_runtime(self.config)

    def close(self) -> None:
        if getattr(self, "sweep", None) is not None:
            self.sweep.close()
        with contextlib.suppress(Exception):
            self.bpf.cleanup()


# -- programs with a callback subprogram --------------------------------------
# BCC 0.26 compiles a program that passes a static function to a helper
# (bpf_for_each_map_elem, bpf_loop) but cannot load it: it loads the bytes of
# one registered function, leaves the reference to the callback unresolved
# (a plain `ld_imm64 rX, <offset>` where the kernel wants a BPF_PSEUDO_FUNC
# load), and passes no BTF func_info for the callback, which the verifier
# requires ("missing btf func_info"). The linker below does what libbpf
# does for such a program, for the one layout bpf/lib/sweep.h sets up: the
# callback is placed in the main function's section, right after it.

_BPF_PSEUDO_MAP_FD = 1
_BPF_PSEUDO_CALL = 1
_BPF_PSEUDO_FUNC = 4
_LD_IMM64 = 0x18
_CALL = 0x85
_EXIT = 0x95
_INSN = bpfsys.INSN
_INSN_BYTES = _INSN.size
# A callback longer than this is not what bpf/lib/sweep.h compiles to (its
# callback is about 20 instructions): stop walking rather than read on.
_MAX_CALLBACK_INSNS = 4096
# Verifier log for a refused program: its conclusion is at the end.
_VERIFIER_LOG_BYTES = 16 << 20


class LinkError(MicrosegError):
    """The compiled code is not laid out as link_with_callback expects."""


def _decode(raw: bytes) -> list[list[int]]:
    return [list(_INSN.unpack_from(raw, o)) for o in range(0, len(raw), _INSN_BYTES)]


def _encode(insns: list[list[int]]) -> bytes:
    return b"".join(_INSN.pack(*i) for i in insns)


def _ld_imm64_value(insns: list[list[int]], i: int) -> int:
    return (insns[i][3] & 0xFFFFFFFF) | ((insns[i + 1][3] & 0xFFFFFFFF) << 32)


def _is_relocation(insns: list[list[int]], i: int) -> bool:
    """An ld_imm64 left as the compiler emitted it for a relocation: no
    pseudo source, and a value that fits in 32 bits (LLVM loads such a
    constant with a plain mov; ld_imm64 is for wider ones)."""
    if insns[i][0] != _LD_IMM64 or insns[i][1] >> 4 or i + 1 >= len(insns):
        return False
    v = _ld_imm64_value(insns, i)
    return v < (1 << 31)


def _callback_insns(addr: int) -> list[list[int]]:
    """The instructions of the function at ``addr``: every one reachable from
    its first (the verifier refuses unreachable code, so that is the whole
    function), read one at a time so nothing past it is touched."""
    seen: set[int] = set()
    todo = [0]
    while todo:
        i = todo.pop()
        if i in seen:
            continue
        if not 0 <= i < _MAX_CALLBACK_INSNS:
            raise LinkError(f"callback: jump to instruction {i}, outside the callback")
        seen.add(i)
        code, _, off, imm = _INSN.unpack(ctypes.string_at(addr + i * _INSN_BYTES, _INSN_BYTES))
        cls, op = code & 0x07, code & 0xF0
        if code == _LD_IMM64:
            seen.add(i + 1)
            todo.append(i + 2)
        elif code == _EXIT:
            continue
        elif cls in (0x05, 0x06) and code != _CALL:   # BPF_JMP, BPF_JMP32
            if op == 0x00:                             # BPF_JA (JMP32: offset in imm)
                todo.append(i + 1 + (imm if cls == 0x06 else off))
            else:
                todo += [i + 1, i + 1 + off]
        else:
            todo.append(i + 1)
    n = max(seen) + 1
    if len(seen) != n:
        raise LinkError("callback: instructions that no path reaches")
    return _decode(ctypes.string_at(addr, n * _INSN_BYTES))


def _callback_btf(main_name: str, callback_name: str) -> tuple[bytes, int, int]:
    """A BTF blob with two FUNCs: the program (global, one pointer argument)
    and its callback (static, four pointer arguments: map, key, value, ctx),
    both returning long. Returns (blob, main's type id, callback's type id)."""
    strings = bytearray(b"\0")

    def name(s: str) -> int:
        off = len(strings)
        strings.extend(s.encode() + b"\0")
        return off

    def typ(name_off: int, kind: int, vlen: int, size_or_type: int) -> bytes:
        return struct.pack("<III", name_off, (kind << 24) | vlen, size_or_type)

    KIND_INT, KIND_PTR, KIND_FUNC, KIND_FUNC_PROTO = 1, 2, 12, 13
    LINKAGE_STATIC, LINKAGE_GLOBAL = 0, 1
    types = bytearray()
    types += typ(name("long"), KIND_INT, 0, 8) + struct.pack("<I", (1 << 24) | 64)  # 1: signed 64-bit
    types += typ(0, KIND_PTR, 0, 0)                                                 # 2: void *
    types += typ(0, KIND_FUNC_PROTO, 1, 1) + struct.pack("<II", name("ctx"), 2)     # 3: long (void *)
    types += typ(name(main_name), KIND_FUNC, LINKAGE_GLOBAL, 3)                      # 4
    params = ("map", "key", "value", "ctx")
    types += typ(0, KIND_FUNC_PROTO, len(params), 1)                                 # 5
    for p in params:
        types += struct.pack("<II", name(p), 2)
    types += typ(name(callback_name), KIND_FUNC, LINKAGE_STATIC, 5)                  # 6
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return bytes(header + types + strings), 4, 6


def _load_btf(blob: bytes) -> int:
    log = ctypes.create_string_buffer(1 << 16)
    try:
        return bpfsys.btf_load(blob, log)
    except bpfsys.BpfError as e:
        raise MicrosegError(f"BTF for the callback refused: {e.strerror}\n"
                            f"{error_tail(log.value.decode(errors='replace'))}") from None


def _prog_load(insns: bytes, prog_type: int, name: str, btf_fd: int,
               func_info: list[tuple[int, int]], flags: int = 0) -> int:
    load = dict(name=name, flags=flags, btf_fd=btf_fd, func_info=func_info)
    try:
        return bpfsys.prog_load(insns, prog_type, **load)
    except bpfsys.BpfError as first:
        # again with the verifier's log, to say why
        log = ctypes.create_string_buffer(_VERIFIER_LOG_BYTES)
        try:
            fd = bpfsys.prog_load(insns, prog_type, log=log, **load)
        except bpfsys.BpfError:
            raise MicrosegError(f"BPF verifier rejected {name}: {first.strerror}\n"
                                f"{error_tail(log.value.decode(errors='replace'))}") from None
        return fd  # refused without a log, loaded with one: take it


def link_with_callback(bpf, main: str, callback: str, prog_type: int, fd_map: dict[int, int],
                       allowed_fds: set[int], flags: int = 0, markers: frozenset[int] = frozenset()) -> int:
    """Load BCC function ``main`` with its static callback ``callback``
    (compiled into main's section, after it) as one program; returns its fd.

    ``fd_map`` replaces map fds in the code (BCC's own, or marker values)
    with the fds of the maps to use; every map the program ends up using
    must be in ``allowed_fds``. ``markers``: the marker values the callback
    may name a map by (the only maps it may use: BCC patches none there).
    """
    from bcc import lib

    start = lib.bpf_function_start(bpf.module, main.encode())
    size = lib.bpf_function_size(bpf.module, main.encode())
    if not start or not size:
        raise LinkError(f"the compiled program has no function {main}")
    prog = _decode(ctypes.string_at(start, size))
    n_main = len(prog)
    relocs = [i for i in range(n_main - 1) if _is_relocation(prog, i)]
    if not relocs:
        raise LinkError(f"{main} passes no callback")
    offsets = {_ld_imm64_value(prog, i) for i in relocs}
    if offsets != {size}:
        # the callback must follow main in its section; anything else is a
        # reference this linker does not know how to resolve
        raise LinkError(f"{main}: unresolved references to section offsets {sorted(offsets)}, "
                        f"expected only its callback at {size}")
    cb = _callback_insns(start + size)
    for i, ins in enumerate(cb):
        if ins[0] == _CALL and ins[1] >> 4 == _BPF_PSEUDO_CALL:
            raise LinkError(f"{callback} calls a subprogram")
        if ins[0] == _LD_IMM64 and ins[1] >> 4 == _BPF_PSEUDO_MAP_FD and ins[3] in markers:
            continue
        if ins[0] == _LD_IMM64 and (ins[1] >> 4 == _BPF_PSEUDO_MAP_FD or _is_relocation(cb, i)):
            raise LinkError(f"{callback} refers to a map or a global: BCC leaves those unpatched "
                            f"outside {main}; pass it through the callback's context")
    for ins in prog:
        if ins[0] == _CALL and ins[1] >> 4 == _BPF_PSEUDO_CALL:
            raise LinkError(f"{main} calls a subprogram other than through its callback")
    for i in relocs:
        prog[i][1] = (_BPF_PSEUDO_FUNC << 4) | (prog[i][1] & 0x0F)
        prog[i][3] = n_main - (i + 1)   # relative to the next instruction
        prog[i + 1][3] = 0
    code = prog + cb
    for i, ins in enumerate(code[:-1]):
        if ins[0] == _LD_IMM64 and ins[1] >> 4 == _BPF_PSEUDO_MAP_FD:
            ins[3] = fd_map.get(ins[3], ins[3])
            if ins[3] not in allowed_fds:
                raise LinkError(f"{main} uses map fd {ins[3]}, not one of the maps it was given")
    blob, main_tid, cb_tid = _callback_btf(main, callback)
    btf_fd = _load_btf(blob)
    try:
        return _prog_load(_encode(code), prog_type, main, btf_fd, [(0, main_tid), (n_main, cb_tid)], flags)
    finally:
        os.close(btf_fd)  # the program keeps its own reference


def syscall_test_run(prog_fd: int) -> int:
    """Run a BPF_PROG_TYPE_SYSCALL program once (no context); its return value."""
    attr = bpfsys._TestRunAttr()  # the uapi layout, declared once in bpfsys
    attr.prog_fd = prog_fd
    bpfsys.sys_bpf(bpfsys.BPF_PROG_TEST_RUN, attr)
    return attr.retval


# -- the kernel sweep ------------------------------------------------------------

SWEEP_PROGRAM = "ms_sweep"
SWEEP_CALLBACK = "ms_sweep_entry"
# Marker "fds" in bpf/lib/sweep.h (MS_SWEEP_MAP_*) for the tables it walks
# and the ring its callback writes session-end records to.
SWEEP_MARKERS = {"ms_flows4": 0x4D530001, "ms_halfopen4": 0x4D530002, "ms_events": 0x4D530003,
                 "ms_flows6": 0x4D530004, "ms_halfopen6": 0x4D530005}
# The maps of a build the sweep works on; ms_sweep_runs (its input and
# output) is the program's own.
SWEEP_MAPS = ("ms_flows4", "ms_flows6", "ms_halfopen4", "ms_halfopen6", "ms_timeouts", "ms_pressure_user",
              "ms_config", "ms_events", "ms_events_lost")
# Sizes for compiling the sweep on its own: its code does not depend on
# them, and BCC creates (and preallocates) every map of maps.h it compiles.
_SWEEP_COMPILE_SIZES = dict(flow_table_size=1024, halfopen_table_size=256, frag_table_size=64,
                            syn_dst_table_size=64, iface_table_size=1)


class SweepProgram:
    """The kernel sweep of bpf/lib/sweep.h, linked and loaded for one set of
    session maps: the BCC module's own (``map_fds`` None), or another
    build's (``map_fds``: SWEEP_MAPS name -> fd)."""

    def __init__(self, bpf, map_fds: dict[str, int] | None = None, *, owns_bpf: bool = False):
        from bcc import lib

        if not lib.bpf_function_start(bpf.module, SWEEP_PROGRAM.encode()):
            raise LinkError(f"the compiled program has no function {SWEEP_PROGRAM} (bpf/lib/sweep.h)")
        try:
            own = {n: bpf[n.encode()].map_fd for n in SWEEP_MAPS}
            self.runs = bpf[b"ms_sweep_runs"]
        except KeyError as e:  # BCC's way of saying "no such table"
            raise LinkError(f"the compiled program has no map {e.args[0] if e.args else ''}") from None
        fds = own if map_fds is None else {n: map_fds[n] for n in SWEEP_MAPS}
        fd_map = {own[n]: fds[n] for n in SWEEP_MAPS}
        fd_map.update({marker: fds[n] for n, marker in SWEEP_MARKERS.items()})
        self.fd = link_with_callback(bpf, SWEEP_PROGRAM, SWEEP_CALLBACK, bpfsys.BPF_PROG_TYPE_SYSCALL, fd_map,
                                     set(fds.values()) | {self.runs.map_fd}, bpfsys.BPF_F_SLEEPABLE,
                                     markers=frozenset(SWEEP_MARKERS.values()))
        self._bpf = bpf if owns_bpf else None

    def run(self, now_ns: int, *, defer: bool = False):
        """One sweep of both tables, judging expiry at ``now_ns`` (the session
        clock, sessions.session_clock_ns()). ``defer``: keep an expired
        session whose end record the full ms_events ring refused, for a
        later sweep (counted in ``deferred``), instead of deleting it with
        its record lost. Returns the run's record (ms_sweep_runs' Leaf:
        scanned_flows, expired_flows, ..., deferred)."""
        if now_ns <= 0:
            raise ValueError("the kernel sweep needs the session clock's now (> 0)")
        key = self.runs.Key(0)
        v = self.runs.Leaf()
        v.now_ns = now_ns
        v.defer = int(defer)
        self.runs[key] = v
        ret = syscall_test_run(self.fd)
        if ret != 0:
            raise MicrosegError(f"{SWEEP_PROGRAM} returned {ret}: a map it needs has no element 0"
                                if ret == 1 else f"{SWEEP_PROGRAM} returned {ret}")
        return self.runs[key]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._bpf is not None:
            with contextlib.suppress(Exception):
                self._bpf.cleanup()
            self._bpf = None


def compile_sweep(map_fds: dict[str, int], source: Path | None = None) -> SweepProgram:
    """The kernel sweep compiled on its own (bpf/lib/sweep.h) and loaded for
    the maps ``map_fds`` (SWEEP_MAPS name -> fd), e.g. those of an attached
    build opened by id. ``source``: another sweep.h (bench/sweep.py --ab
    compares another tree's)."""
    bpf = compile_text(inline_includes(source or LIB_DIR / "sweep.h"), DatapathConfig(**_SWEEP_COMPILE_SIZES).cflags(),
                       what=f"BPF compile ({source or 'sweep'})")
    try:
        return SweepProgram(bpf, map_fds, owns_bpf=True)
    except Exception:
        bpf.cleanup()
        raise
