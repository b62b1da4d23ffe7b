"""Compile and load the fast path with BCC.

``FastPath`` owns one compiled build: its program fds (tc_ingress,
tc_egress), its maps (BCC tables, whose ctypes Key/Leaf types BCC derives
from bpf/lib/maps.h: the one definition of every layout), and a
``run()`` that executes a program on a packet through BPF_PROG_TEST_RUN.
Compiler and verifier failures become MicrosegError with the compiler's or
verifier's last lines, not a traceback.
"""
from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import bpfsys, tcp_fsm
from .config import DatapathConfig
from .enums import DIRECTION_COUNT, REASON_COUNT, CtState, Direction, Reason, Stage
from .errors import MicrosegError
from .source import MAIN_SOURCE, program_text

PROGRAMS = {Direction.DIR_INGRESS: "tc_ingress", Direction.DIR_EGRESS: "tc_egress"}
# Tail-call stages, by their slot in ms_stages (enum ms_stage).
STAGES = {Stage.STAGE_TCP: "ms_stage_tcp", Stage.STAGE_OTHER: "ms_stage_other",
          Stage.STAGE_ICMP_ERR: "ms_stage_icmp_err"}
RUNTIME_MAPS = ("ms_counters", "ms_flows", "ms_halfopen", "ms_ifaces", "ms_frags", "ms_syn_dst",
                "ms_syn_global", "ms_pressure", "ms_pressure_user", "ms_pol_state")
# How many lines of compiler / verifier output an error message carries:
# the verifier's conclusion is in its last lines.
_ERROR_TAIL_LINES = 12

TC_ACT_OK = 0
TC_ACT_SHOT = 2


def headers_dir() -> Path:
    return Path("/lib/modules") / os.uname().release / "build"


def check_headers() -> None:
    """BCC needs kernel headers; say how to get them when they are missing."""
    d = headers_dir()
    if not (d / "include").is_dir():
        raise MicrosegError(
            f"kernel headers missing: {d} does not exist; run `make setup` "
            f"(installs linux-headers-{os.uname().release} or links Debian's newest headers)")


@contextlib.contextmanager
def capture_stderr():
    """Collect what BCC's C++ side and the kernel loader print on fd 2."""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        box: dict[str, str] = {"text": ""}
        try:
            yield box
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode(errors="replace")


def error_tail(text: str, n: int = _ERROR_TAIL_LINES) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("HINT:")]
    return "\n".join("  " + ln for ln in lines[-n:])


@dataclass
class RunResult:
    action: int      # TC action the program returned
    duration_ns: int
    data: bytes


class FastPath:
    """One compiled and loaded build of the fast path."""

    def __init__(self, config: DatapathConfig | None = None, *, text: str | None = None,
                 main: Path = MAIN_SOURCE, programs: dict | None = None,
                 stages: dict | None = None):
        from bcc import BPF  # imported late: preflight and --help work without it

        self.config = config or DatapathConfig()
        check_headers()
        src = text if text is not None else program_text(main)
        with capture_stderr() as err:
            try:
                self.bpf = BPF(text=src.encode(), cflags=self.config.cflags())
            except Exception as e:  # BCC raises bare Exception
                failure = e
            else:
                failure = None
        if failure is not None:
            raise MicrosegError(f"BPF compile failed: {failure}\n{error_tail(err['text'])}")
        self.fns = {}
        self.stage_fns = {}
        wanted = [(self.fns, d, n) for d, n in (programs or PROGRAMS).items()]
        if programs is None or stages is not None:
            wanted += [(self.stage_fns, st, n) for st, n in (stages or STAGES).items()]
        for store, d, name in wanted:
            with capture_stderr() as err:
                try:
                    fn = self.bpf.load_func(name.encode(), BPF.SCHED_CLS)
                except Exception as e:
                    failure = e
                else:
                    failure = None
            if failure is not None:
                self.close()
                raise MicrosegError(f"BPF verifier rejected {name}: {failure}\n{error_tail(err['text'])}")
            store[d] = fn
        if self.stage_fns:
            arr = self.table("ms_stages")
            for st, fn in self.stage_fns.items():
                arr[ctypes.c_int(int(st))] = ctypes.c_int(fn.fd)
        if programs is None:
            self.apply_runtime(self.config)

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
        v.flags = ((1 if config.loose else 0) | (2 if config.invalid_action == "pass" else 0)
                   | (4 if config.window_action == "pass" else 0)
                   | (8 if config.tailcall_action == "pass" else 0))
        v.pressure_pct = config.pressure_pct
        v.syn_dst_rate, v.syn_dst_burst = config.syn_dst_rate, config.syn_dst_burst
        v.syn_global_rate, v.syn_global_burst = config.syn_global_rate, config.syn_global_burst
        c[ctypes.c_int(0)] = v
        allow = self.table("ms_full_allow")
        allow.clear()
        for cidr in config.full_allowlist:
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

    def counters(self) -> dict[tuple[Direction, Reason], tuple[int, int]]:
        """(direction, reason) -> (packets, bytes), summed over CPUs; zeros left out."""
        return read_counters(self.table("ms_counters"))

    def reset(self) -> None:
        """Empty every map, so each test starts from a clean kernel state."""
        for name in RUNTIME_MAPS:
            self.table(name).clear()  # arrays: zeroes every slot; hashes: deletes
        self.apply_runtime(self.config)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.bpf.cleanup()


def read_counters(tab) -> dict:
    out = {}
    for i in range(DIRECTION_COUNT * REASON_COUNT):
        vals = tab[tab.Key(i)]
        pk = sum(v.packets for v in vals)
        by = sum(v.bytes for v in vals)
        if pk:
            d, r = divmod(i, REASON_COUNT)
            out[(Direction(d), Reason(r))] = (pk, by)
    return out
