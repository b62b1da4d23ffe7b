"""Datapath configuration, validated.

Two kinds of setting: sizes, which are -D flags to the BPF compile
(bpf/lib/maps.h holds the defaults for a bare compile) and need a new
build to change; and runtime settings (timeouts, actions, budgets), which
live in config maps and change without reloading anything
(FastPath.apply_runtime).
"""
from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .enums import SLOWPATH_WORKERS_MAX

Action = Literal["drop", "pass"]
# Drop events (see DatapathConfig.drop_events_per_sec): 5 a second per
# (source, reason) shows a scan's first ports and its pace; a SIEM gets the
# rest as counts. 250 a second per CPU over every key: an EVE drop record
# costs the daemon ~0.2 ms of CPU to build and encode (Community ID, the
# JSON), so two CPUs at the cap keep it to a tenth of a core, and a SIEM to
# ~40 million records a day at worst.
DROP_EVENTS_PER_SEC = 5
DROP_EVENTS_CPU_PER_SEC = 250


def _cidr(v: str) -> str:
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError as e:
        raise ValueError(str(e)) from None
    return v


Cidr = Annotated[str, AfterValidator(_cidr)]


class Timeouts(BaseModel):
    """Idle timeouts in seconds. Defaults: the seed review for SYN_SENT,
    ESTABLISHED and TIME_WAIT; nf_conntrack's for the rest."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    syn_sent: float = Field(30, gt=0)
    syn_recv: float = Field(60, gt=0)
    established: float = Field(3600, gt=0)
    fin_wait: float = Field(120, gt=0)      # FIN_WAIT1, FIN_WAIT2, CLOSING
    close_wait: float = Field(60, gt=0)
    last_ack: float = Field(30, gt=0)
    time_wait: float = Field(120, gt=0)
    close: float = Field(10, gt=0)
    udp_unreplied: float = Field(30, gt=0)
    udp_replied: float = Field(120, gt=0)
    icmp: float = Field(30, gt=0)

    def by_state(self) -> dict[str, float]:
        return {
            "CT_NONE": self.close, "CT_SYN_SENT": self.syn_sent, "CT_SYN_RECV": self.syn_recv,
            "CT_ESTABLISHED": self.established, "CT_FIN_WAIT1": self.fin_wait,
            "CT_FIN_WAIT2": self.fin_wait, "CT_CLOSING": self.fin_wait,
            "CT_CLOSE_WAIT": self.close_wait, "CT_LAST_ACK": self.last_ack,
            "CT_TIME_WAIT": self.time_wait, "CT_CLOSE": self.close, "CT_SYN_SENT2": self.syn_sent,
            "CT_UDP_UNREPLIED": self.udp_unreplied, "CT_UDP_REPLIED": self.udp_replied,
            "CT_ICMP": self.icmp,
        }


FailAction = Literal["pass", "drop", "bypass"]
SIMULATED = ("ringbuf_full", "budget_exhausted", "slowpath_down", "reassembly_cap", "parser_error",
             "decompression")


class FailureActions(BaseModel):
    """What each failure of inspection does (Suricata's exception policies
    are the model): ``pass`` lets the packet through uninspected and keeps
    trying, ``drop`` drops it, ``bypass`` lets it through and stops
    inspecting the flow. A rule's ``inspect.on_failure`` overrides the
    first three for its flows. Defaults fail open: a gateway that stops
    forwarding when its inspector is slow is an outage; except that what
    the WAF cannot read (parser_error) or finds malformed (http_anomaly) is
    not let through a WAF-inspected flow."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    ringbuf_full: FailAction = "pass"          # kernel: a payload could not be copied
    # kernel: a side's budget used up without a verdict. "pass" lets the
    # packets through uncopied while the verdict is still awaited (a block
    # still cuts the flow); "bypass" gives up on the verdict.
    budget_exhausted: FailAction = "pass"
    slowpath_down: FailAction = "pass"         # kernel: heartbeat missing or stale
    reassembly_cap: FailAction = "bypass"      # slow path: a flow's or the total reassembly memory cap
    # slow path: the parser gave up on the flow. None (the default): drop
    # on a flow the WAF inspects (what it cannot read it must not let
    # through), bypass on the others; a value here applies to every flow.
    parser_error: FailAction | None = None
    # slow path: a tolerated deviation from the HTTP grammar in a request of
    # a WAF-inspected flow (protocols/http.py HttpAnomaly), as ModSecurity
    # CRS's protocol enforcement: block the flow, alert only, or pass (each
    # deviation is logged as an EVE anomaly record whatever this says).
    http_anomaly: Literal["block", "alert", "pass"] = "block"
    # slow path: a body's Content-Encoding could not be undone (not the coding
    # it claims, cut short, too many layers) or decoding hit the size or ratio
    # cap (a decompression bomb; protocols/content_coding.py). "pass": what was
    # decoded was inspected, the rest is not, later messages are; the anomaly
    # is logged, and a request's is also an http_anomaly on a WAF flow.
    decompression: FailAction = "pass"
    session_table_full: Literal["pass", "drop"] = "drop"   # kernel: new flows when ms_flows is full


class Compat(BaseModel):
    """Kernel features the build uses where the kernel has them ("auto",
    probed at load like `microseg preflight`) or never ("off": the fallback,
    also on a kernel that has the feature, to test it or to work around
    a kernel bug)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    ringbuf: Literal["auto", "off"] = "auto"        # 5.8; fallback: a perf buffer per CPU
    lru_per_cpu: Literal["auto", "off"] = "auto"    # 4.10 BPF_F_NO_COMMON_LRU; fallback: one LRU list
    bloom: Literal["auto", "off"] = "auto"          # 5.16 BLOOM_FILTER; fallback: XDP blocklist LPM only
    coarse_clock: Literal["auto", "off"] = "auto"   # 5.11 bpf_ktime_get_coarse_ns; fallback: bpf_ktime_get_ns


class Tunnels(BaseModel):
    """Tunnels the fast path decapsulates (bpf/lib/tunnel.h: IPIP, 6in4 and
    IPv6 in IPv6, GRE, VXLAN, GENEVE; two levels deep at most). ``decap``
    off: the outer packet is the flow (a GRE or UDP flow between the tunnel
    endpoints), as without this feature. ``policy``: the addresses a
    decapsulated flow's policy is decided on, the inner flow's (the
    default: the hosts that really talk, what a rule naming them means) or
    the outermost packet's (the tunnel endpoints: an overlay whose inner
    addresses the gateway's policy does not know); protocol and ports are
    the inner flow's either way, and the session, its tracking and its
    inspection are the inner flow's either way. ``short_quote_action``: an
    ICMP error quoting a tunnel packet too short to show its inner flow
    (RFC 792's IP header + 8 bytes) passes by default, so path MTU
    discovery over the tunnel works (bpf/lib/icmp.h)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    decap: bool = True
    policy: Literal["inner", "outer"] = "inner"
    short_quote_action: Action = "pass"


class Attach(BaseModel):
    """How the fast path goes onto the TC hooks. ``auto`` (the default):
    ``tcx`` where the kernel has it (6.6+, probed once: datapath/probes.py),
    else ``clsact``. ``tcx``: a bpf_link per hook, pinned in bpffs, without
    cls_bpf's filter walk (datapath/attach.py; ~1.4 us less per new
    connection through the lab gateway, docs/performance.md 4.3); a kernel
    without tcx is refused at `up` with one line naming this setting.
    ``clsact``: a cls_bpf filter on a clsact qdisc, every kernel this
    project supports (forces it where tcx exists too). Changing the mode of
    a running deployment (`up`, `deploy`) adds the new hook before it
    removes the old one."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["auto", "clsact", "tcx"] = "auto"


class DatapathConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- sizes (compile time) --------------------------------------------
    # Sessions: 524,288 is what Cilium and Calico default to. The limit on
    # sessions of both families together (the kernel counts them as one,
    # bpf/lib/conntrack.h ms_flows_full), and the IPv4 table's size.
    flow_table_size: int = Field(524_288, ge=1024, le=1 << 26)
    # Half-open and unreplied flows; a SYN flood churns only this LRU
    # (the IPv4 one; IPv6 has its own, below).
    halfopen_table_size: int = Field(65_536, ge=256, le=1 << 24)
    # The IPv6 session tables, each family's tables being its own (16-byte
    # IPv4 keys: bpf/lib/maps.h struct ms_flow_key4). None: an eighth of
    # flow_table_size and a quarter of halfopen_table_size, so that the
    # preallocated memory stays about what one 40-byte-key table took
    # (bench/memory.py); an IPv6-heavy site raises them. An IPv6 session
    # beyond flow6_table_size is refused as the full table refuses any.
    flow6_table_size: int | None = Field(None, ge=128, le=1 << 26)
    halfopen6_table_size: int | None = Field(None, ge=64, le=1 << 24)
    # First fragments remembered for their later fragments.
    frag_table_size: int = Field(8192, ge=64, le=1 << 20)
    # Destinations with their own SYN budget bucket (LRU).
    syn_dst_table_size: int = Field(65_536, ge=64, le=1 << 22)
    # Interfaces one instance manages (a gateway has a handful).
    iface_table_size: int = Field(64, ge=1, le=4096)
    # Ring buffer of payload records for the slow path (a power of two
    # pages): 8 MiB holds ~2,000 full 4 KiB records, a second of a busy
    # inspected link's first bytes.
    inspect_ring_bytes: int = Field(8 << 20, ge=1 << 16, le=1 << 30)
    # Verdicts written by the slow path and not yet merged by a packet.
    verdict_table_size: int = Field(65_536, ge=1024, le=1 << 22)
    # Drop events (EVE `drop` records): (source, reason) keys whose rate the
    # kernel follows at once (LRU), and the ring they go to user space on
    # (bpf/lib/maps.h ms_drop_limit, ms_drop_ring: 256 KiB is ~2,700 events).
    drop_log_table_size: int = Field(8192, ge=64, le=1 << 20)
    drop_ring_bytes: int = Field(256 << 10, ge=1 << 14, le=1 << 28)

    # -- runtime ----------------------------------------------------------
    timeouts: Timeouts = Timeouts()
    # Pick up TCP flows seen mid-stream (a restart without pinned maps).
    loose: bool = False
    invalid_action: Action = "drop"     # illegal TCP transition
    window_action: Action = "drop"      # segment outside the TCP window
    tailcall_action: Action = "drop"    # a stage program missing
    # New half-open flows per second (0: no limit), per destination and
    # for all together; burst is the bucket size.
    syn_dst_rate: int = Field(20_000, ge=0)
    syn_dst_burst: int = Field(40_000, ge=0)
    syn_global_rate: int = Field(200_000, ge=0)
    syn_global_burst: int = Field(400_000, ge=0)
    # Alert (ring buffer record) when the session table is this full.
    pressure_pct: int = Field(90, ge=1, le=100)
    # New flows from or to these networks still pass when the table is full.
    full_allowlist: tuple[Cidr, ...] = ()
    # Inspection: payload bytes copied per side of an inspected flow
    # (Suricata's stream depth; 16 KiB holds a request head and the start
    # of its body), and how stale the slow path's heartbeat may be.
    inspect_budget: int = Field(16_384, ge=0, le=1 << 30)
    heartbeat_timeout_s: float = Field(3.0, gt=0, le=3600)
    # Slow-path workers the kernel spreads inspected flows over (by a hash
    # of the session), each with its own ring buffer and heartbeat.
    # `microseg run` sets it from its `slowpath.workers` setting.
    slowpath_workers: int = Field(1, ge=1, le=SLOWPATH_WORKERS_MAX)
    # Payload records wake the reader (off for `microseg replay`, which
    # reads the ring after every packet itself: a wakeup costs more than
    # the rest of a recorded packet).
    ring_wakeup: bool = True
    # Inspected sessions' end records go into their worker's ring, after
    # their payload records, for the worker to log (bpf/lib/maps.h
    # MS_CFG_WORKER_ENDS); off: to ms_events, like every other session's.
    # `microseg run` turns it on: its workers read their rings.
    worker_flow_ends: bool = False
    failure_actions: FailureActions = FailureActions()
    tunnels: Tunnels = Tunnels()
    # Drop events per (source address, reason) per second: a scan's first
    # few show who and why, the rest are counted in the next event's
    # suppressed count (0: no drop events, counters only). And per CPU per
    # second over every key, so a flood from random sources (a new key per
    # packet) stays bounded.
    drop_events_per_sec: int = Field(DROP_EVENTS_PER_SEC, ge=0, le=1_000_000)
    drop_events_cpu_per_sec: int = Field(DROP_EVENTS_CPU_PER_SEC, ge=1, le=10_000_000)
    # Kernel features: where to fall back (compile time).
    compat: Compat = Compat()
    # TC hook kind the programs are attached with (not a compile setting).
    attach: Attach = Attach()
    # Failures to act out on purpose, to see what each does (SIMULATED).
    simulate: tuple[Literal[SIMULATED], ...] = ()  # type: ignore[valid-type]

    @property
    def flow6_size(self) -> int:
        """The IPv6 session table's size (flow6_table_size or its default)."""
        return self.flow6_table_size or max(self.flow_table_size // 8, 128)

    @property
    def halfopen6_size(self) -> int:
        """The IPv6 half-open table's size (halfopen6_table_size or its default)."""
        return self.halfopen6_table_size or max(self.halfopen_table_size // 4, 64)

    def state_map_sizes(self) -> dict[str, int]:
        """max_entries the configuration gives the sized state maps
        (datapath/state.py compares them with the pinned maps'; the others
        are fixed by the program)."""
        return {"ms_flows4": self.flow_table_size, "ms_halfopen4": self.halfopen_table_size,
                "ms_flows6": self.flow6_size, "ms_halfopen6": self.halfopen6_size,
                "ms_frags": self.frag_table_size, "ms_syn_dst": self.syn_dst_table_size,
                "ms_verdicts": self.verdict_table_size,
                "ms_insp_ring": ring_pages(self.inspect_ring_bytes) * 4096}

    def cflags(self) -> list[str]:
        return [
            f"-DMS_FLOW_MAX={self.flow_table_size}",
            f"-DMS_HALFOPEN_MAX={self.halfopen_table_size}",
            f"-DMS_FLOW6_MAX={self.flow6_size}",
            f"-DMS_HALFOPEN6_MAX={self.halfopen6_size}",
            f"-DMS_FRAG_MAX={self.frag_table_size}",
            f"-DMS_SYN_DST_MAX={self.syn_dst_table_size}",
            f"-DMS_IFACE_MAX={self.iface_table_size}",
            f"-DMS_INSP_RING_PAGES={ring_pages(self.inspect_ring_bytes)}",
            f"-DMS_VERDICT_MAX={self.verdict_table_size}",
            f"-DMS_DROP_LIMIT_MAX={self.drop_log_table_size}",
            f"-DMS_DROP_RING_PAGES={ring_pages(self.drop_ring_bytes)}",
        ]


def ring_pages(nbytes: int) -> int:
    """Pages of a BPF ring buffer holding at least ``nbytes``: the kernel
    wants a power of two number of pages."""
    pages = max(1, -(-nbytes // 4096))
    return 1 << (pages - 1).bit_length()
