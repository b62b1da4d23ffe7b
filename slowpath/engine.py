"""The slow path's per-flow work: payload records in, verdicts and EVE out.

Sans-IO like the parsers: ``Engine.handle(record)`` takes one decoded
payload record (slowpath/records.py) and does everything it implies, through
the callables it was given: reassembly (TCP, per flow, capped), protocol
detection and parsing (slowpath/analyzer.py; the kernel's app id is a hint),
rules (slowpath/inspector.py) on the parser events, a verdict for the kernel
(``verdicts.verdict(key, code)``), TCP resets for a blocked flow
and the release of held payload (``injector``), and EVE records (``emit``). The asyncio daemon
(appliance/daemon.py) and `microseg replay` feed it the same way.

When a flow gets which verdict:
  * a rule hit with action block: BLOCK at once, and resets to both ends
    (async, or hold after a release: the numbers the kernel's session
    tracked; hold still holding: the first held byte, see inject.py);
  * a request or query that passed the rules: RELEASE (hold mode: let the
    held bytes go; either mode: inspection goes on up to the budget, which
    then ends it as a stream depth does, without counting a failure);
  * a TLS ClientHello that passed: RELEASE, then the ServerHello: ALLOW
    (the rest is encrypted);
  * a protocol without a parser, or none recognised: ALLOW;
  * the failure paths the slow path sees itself (a reassembly cap bit,
    the parser gave up) take their configured action: pass (RELEASE),
    bypass (ALLOW) or drop (BLOCK).
"""
from __future__ import annotations

import collections
import socket
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from datapath.config import FailureActions
from datapath.enums import FRAG, INSPECT, INSPECT_BITS, VerdictCode
from protocols import registry
from protocols.api import Direction
from protocols.grpc import is_grpc
from protocols.http import CODING_ANOMALIES
from slowpath import eve
from slowpath.analyzer import FlowAnalyzer
from datapath.flowevents import FlowEnd
from slowpath.flowend import EngineSide, flow_end_record
from slowpath.reassembly import FIN, RST, SYN, Data, Eof, ReassemblyBudget, ReassemblyLimits, StreamReassembler
from slowpath.records import InspRecord, RecordDecoder, session_ref

# Every TCP flow's reassembly limits (the defaults; frozen, so one is shared
# instead of one made per flow).
_REASSEMBLY_LIMITS = ReassemblyLimits()
# Closed flows remembered until the kernel reports their session's end
# (kernel_flow_records): a few hundred bytes each; a session forgotten past
# this is logged with the kernel's side only.
MAX_ENDED = 65_536
# Flows the engine tracks at once; past it the least recently seen one is
# closed (its EVE flow record says "forced"). Each costs a reassembler and
# parser state; 65,536 matches the kernel's verdict table.
MAX_FLOWS = 65_536
# A flow with no record for this long is closed (its kernel session may
# live on; a new record re-opens it, mid-stream).
IDLE_TIMEOUT_S = 120.0
# HTTP requests waiting for their response, per flow, for the EVE http
# record (pipelining is rarely deeper than a handful).
MAX_PENDING_HTTP = 32
# UDP datagrams the kernel handed off in IP fragments, being put back
# together, per flow; and the bytes one may grow to (a UDP datagram's most).
MAX_FRAG_DATAGRAMS = 16
MAX_DATAGRAM = 65_535
# Held records kept per flow for sending on at release: a request head and
# a few retransmissions of it; past this the client's own retransmission
# carries the rest.
MAX_HELD_RECORDS = 64
TCP_FIN, TCP_RST, TCP_ACK = 0x01, 0x04, 0x10
# A record's side (0, 1) as the parsers' Direction, without an enum call per record.
_DIRECTIONS = (Direction.TO_SERVER, Direction.TO_CLIENT)
_DECIDED = (VerdictCode.VERDICT_ALLOW, VerdictCode.VERDICT_BLOCK)
# The same members as plain module names for the per-record path: on Python
# 3.11 reading VerdictCode.VERDICT_X or Direction.TO_SERVER is a descriptor
# call (~0.25 us), a handful of them per record.
_ALLOW, _BLOCK, _RELEASE = VerdictCode.VERDICT_ALLOW, VerdictCode.VERDICT_BLOCK, VerdictCode.VERDICT_RELEASE
_TO_SERVER = Direction.TO_SERVER
# Records parsed in one run (Engine._handle_run): their events are all alive
# until the last is inspected, and a long run of them (a whole ring drain of
# one flow) costs the collector more than the run saves.
MAX_RUN_RECORDS = 32
# Verdicts under which a flow's records may be parsed in runs (Engine._run_end).
_RUN_VERDICTS = (None, _RELEASE)
# TCP flags that end in-order delivery (reassembly's segment() takes them).
_SYN_FIN_RST = SYN | FIN | RST
HOLD_ALL = INSPECT["HOLD_ALL"]   # the kernel holds every request of the flow (bpf/lib/inspect.h)
_IDENTIFY_ONLY = frozenset({"dpi"})
# A verdict's word in records and metrics ("allow"), by code: an Enum's
# .name is a descriptor call, made twice for every flow otherwise.
_VERDICT_WORDS = {c: c.name.removeprefix("VERDICT_").lower() for c in VerdictCode}


def _what_of(inspect: int) -> frozenset[str]:
    """The inspections (inspect.what) a record's MS_INSPECT_* bits ask for."""
    return frozenset(n for n, bit in INSPECT_BITS.items() if inspect & bit) or _IDENTIFY_ONLY


# _what_of() per MS_INSPECT_* value seen: a flow's opening looks it up
# (a few values per policy, at most 2**bits).
_WHAT: dict[int, frozenset[str]] = {}
# Application protocols on HTTP/2 framing (slowpath/analyzer.py names them).
H2_APPS = ("http2", "grpc")
HTTP_SWITCHING_PROTOCOLS = 101   # RFC 9110 15.2.2: the last HTTP/1.x answer on the connection
# Protocols whose naming field can take another value later on the same
# connection, and that field's domain-rule name: an HTTP keep-alive
# connection asks for other Hosts, a DNS forwarder sends every query from
# one 5-tuple. A TLS connection has one SNI; a QUIC client sends its
# ClientHello again after a Retry, or opens another connection on the
# 5-tuple (protocols/quic.py), and may name another server: read on to the
# ServerHello. SMTP turns into TLS after STARTTLS, MySQL after its
# SSLRequest, PostgreSQL after an SSLRequest answered 'S' (the analyzer reads
# the ClientHello that follows, TUNNEL_EVENTS): such a flow is read on while a
# tls_sni rule exists.
REPEATING_NAMES = {"http": "http_host", "dns": "dns_query", "quic": "tls_sni",
                   "http2": "http_host", "grpc": "http_host",   # HTTP/2: a Host per stream
                   "smtp": "tls_sni", "mysql": "tls_sni", "postgresql": "tls_sni"}
# Flows whose HTTP events are HTTP/2's (protocols/http2.py): their anomaly
# records name app_proto "http2", as Suricata's.
H2_APPS = frozenset({"http2", "grpc"})
# The event kinds Engine._log writes a record for or keeps something of (its
# branches, kind for kind: tests/unit/test_engine_fast_paths.py reads them
# from its source), and the kind prefixes it takes whole. Events of any other
# kind (redis_*, http_body, mysql_*, smtp_command, ...: ~60 % of the events
# an inspect-everything replay of the corpus gives _inspect) are not handed
# to _log: a call and its chain of kind tests each, for nothing.
_LOG_KINDS = frozenset({"http_request", "http_response", "http_anomaly", "http_message_end", "tls_client_hello",
                        "tls_server_hello", "dns_message", "grpc_call", "quic_client_hello", "quic_server_hello",
                        "smtp_message", "kafka_request", "kafka_response", "ssh_banner", "ssh_kexinit"})
_LOG_PREFIXES = ("mqtt_", "pgsql_")
# The event kinds _inspect decides a verdict on (its branches, kind for kind;
# Malformed's parser_error: Engine._unread_release): a flow whose protocol
# emits one of them is read on for it.
_VERDICT_KINDS = frozenset({"http_message_end", "http_anomaly", "dns_message", "tls_client_hello",
                            "quic_client_hello", "tls_server_hello", "quic_server_hello"})
# _LOG_KINDS / _LOG_PREFIXES' answer per kind seen (one dict lookup an
# event): as many entries as event kinds the parsers and plugins define.
_LOGGED: dict[str, bool] = {}


@dataclass
class EngineCounters:
    records: int = 0
    bytes: int = 0
    flows_opened: int = 0
    flows_closed: int = 0
    verdicts: collections.Counter = field(default_factory=collections.Counter)
    failures: collections.Counter = field(default_factory=collections.Counter)
    hits: collections.Counter = field(default_factory=collections.Counter)
    bad_records: int = 0
    injected: int = 0
    # Records of a flow already ALLOWed or BLOCKed (read no further): what the
    # kernel copied before the verdict reached it (in flight in the ring), or
    # the client's side of a bypassed flow whose rule holds every request.
    after_verdict: int = 0


@dataclass(slots=True, init=False)     # no per-flow __dict__: one object less to allocate and collect
class Flow:
    key: bytes
    info: eve.FlowInfo
    transport: str
    analyzer: FlowAnalyzer
    reasm: StreamReassembler | None
    inspector: object
    hold: bool
    first_ts_ns: int
    rule_id: int
    last_seen: float
    # The rule asks only to identify the flow (inspect what: [dpi]): once its
    # protocol and naming fields are known (FlowAnalyzer.identified), ALLOW
    # hands it to the kernel, as nDPI stops after identification.
    identify_only: bool = False
    # The rule's L7 allow-list (slowpath/l7allow.py RuleAllow; the inspector
    # is then its L7Inspector): the flow is read on to the budget, never let go early.
    l7: object = None
    # Not yet asked whether nothing reads its protocol's events
    # (Engine._unread_release, once, when the flow is identified); False
    # from the start for a flow with an allow-list or identify-only (its
    # own release, _identified).
    unread_check: bool = True
    verdict: VerdictCode | None = None
    verdict_latency_us: int | None = None   # first inspected byte (kernel clock) -> first verdict written
    next_seq: list = field(default_factory=lambda: [None, None])   # per side, for resets
    pkts: list = field(default_factory=lambda: [0, 0])
    bytes: list = field(default_factory=lambda: [0, 0])
    http_pending: collections.deque = field(default_factory=lambda: collections.deque(maxlen=MAX_PENDING_HTTP))
    http_tx: tuple | None = None     # (request, response) of the latest HTTP transaction: an alert's context
    # A response with a Content-Encoding: (request, response) logged at its
    # body's end, with what was decoded (eve.http_record's coding metadata).
    http_coded: tuple | None = None
    # Decoded request bodies: the request's stream offset -> its HttpMessageEnd,
    # until the request is logged (at most MAX_PENDING_HTTP).
    http_req_ends: dict = field(default_factory=dict)
    # gRPC calls whose response head came: stream id -> (request, response),
    # logged when the call ends (its GrpcCall: status from the trailers).
    grpc_calls: dict = field(default_factory=dict)
    tls_hello: object = None
    ssh: dict = field(default_factory=dict)   # (kind, direction) -> SshBanner / SshKexInit, until logged
    ssh_logged: bool = False
    pgsql: object = None     # eve.PgsqlLog: the PostgreSQL transaction being answered
    alerted: bool = False
    caps_seen: int = 0
    copied: list = field(default_factory=lambda: [0, 0])   # payload bytes the kernel copied, per side
    held: list = field(default_factory=list)               # hold mode: records the kernel dropped
    # hold mode, per side: seq of the first payload byte the kernel held
    # (dropped), which is what the other end still expects (for resets)
    held_from: list = field(default_factory=lambda: [None, None])
    # The rule holds every request (MS_INSPECT_HOLD_ALL: an L7 allow-list in
    # hold mode): after the first verdict the kernel still holds the
    # client's payload, and each piece goes on once checked (_send_checked).
    hold_all: bool = False
    # hold_all, after the first verdict: seq of the client's next byte the
    # server has not got (what went on ends there, in order), or None.
    sent_to: int | None = None
    eof: set = field(default_factory=set)
    frags: collections.OrderedDict = field(default_factory=collections.OrderedDict)

    def __init__(self, key: bytes, info: eve.FlowInfo, transport: str, analyzer: FlowAnalyzer,
                 reasm: StreamReassembler | None, inspector: object, hold: bool, first_ts_ns: int, rule_id: int,
                 last_seen: float, identify_only: bool = False, l7: object = None):
        # The fields above, each default as declared (tests/unit/
        # test_engine_fast_paths.py checks them against the declarations):
        # written out, not the dataclass's __init__, whose default_factory
        # calls (a function call per container, 13 a flow) cost ~1.5 us of
        # every flow's opening.
        self.key = key
        self.info = info
        self.transport = transport
        self.analyzer = analyzer
        self.reasm = reasm
        self.inspector = inspector
        self.hold = hold
        self.first_ts_ns = first_ts_ns
        self.rule_id = rule_id
        self.last_seen = last_seen
        self.identify_only = identify_only
        self.l7 = l7
        self.unread_check = l7 is None and not identify_only
        self.verdict = None
        self.verdict_latency_us = None
        self.next_seq = [None, None]
        self.pkts = [0, 0]
        self.bytes = [0, 0]
        self.http_pending = collections.deque(maxlen=MAX_PENDING_HTTP)
        self.http_tx = None
        self.http_coded = None
        self.http_req_ends = {}
        self.grpc_calls = {}
        self.tls_hello = None
        self.ssh = {}
        self.ssh_logged = False
        self.pgsql = None
        self.alerted = False
        self.caps_seen = 0
        self.copied = [0, 0]
        self.held = []
        self.held_from = [None, None]
        self.hold_all = False
        self.sent_to = None
        self.eof = set()
        self.frags = collections.OrderedDict()


def _seq_after(seq: int, ref: int | None) -> int:
    """How far ``seq`` is after ``ref`` in TCP sequence space (negative:
    before), modulo 2**32; 0 when ``ref`` is None."""
    if ref is None:
        return 0
    return ((seq - ref + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def _note_held(flow: Flow, rec: InspRecord) -> None:
    """Hold mode, no verdict yet: the kernel dropped this TCP payload, so
    the other end still expects its side's earliest held byte (a
    retransmission or reordering never lowers it)."""
    if not (flow.hold and flow.verdict is None and rec.data and rec.l4 == socket.IPPROTO_TCP):
        return
    first = flow.held_from[rec.side]
    if first is None or (rec.seq - first) & 0x80000000:   # rec.seq before first, modulo 2**32
        flow.held_from[rec.side] = rec.seq


def _take_request(flow: Flow, stream_id: int):
    """The pending request a response answers: HTTP/1 answers in order (the
    first), an HTTP/2 response its own stream's request."""
    pend = flow.http_pending
    if not pend:
        return None
    if not stream_id:
        return pend.popleft()
    for i, r in enumerate(pend):
        if r.stream_id == stream_id:
            del pend[i]
            return r
    return None


def _request_end(flow: Flow, req) -> object:
    """The decoded request body's HttpMessageEnd of ``req``, if any (taken)."""
    if req is None or not flow.http_req_ends:
        return None
    return flow.http_req_ends.pop(req.offset, None)


class Engine:
    # Consecutive records of one flow's side are parsed in one pass
    # (_handle_run); False: one at a time (the tests compare the two).
    record_runs = True

    def __init__(self, rules, emit, verdicts, *, failure_actions: FailureActions | None = None,
                 simulate: tuple[str, ...] = (), metrics=None, injector=None, plugins=None,
                 app_names: dict[int, str] | None = None, budget: ReassemblyBudget | None = None,
                 session_stats=None, inspect_budget: int | None = None,
                 clock=time.monotonic, wallclock=time.time, kernel_flow_records: bool = False, l7=None):
        self.rules = rules
        # The policy's L7 allow-lists (slowpath/l7allow.py L7Policy: rule id ->
        # RuleAllow); None: no rule has one. Replaced whole by set_l7().
        self.l7 = l7
        self.emit = emit
        self.verdicts = verdicts
        self.failure_actions = failure_actions or FailureActions()
        self.simulate = set(simulate)
        self.metrics = metrics
        self.injector = injector
        self.plugins = plugins
        self.app_names = app_names or {}
        self.budget = budget or ReassemblyBudget()
        # key -> (packets, bytes) per side from the kernel's session, for the
        # EVE flow record (the engine itself sees only inspected packets).
        self.session_stats = session_stats
        # The kernel's per-side inspection budget: once a side of a clean
        # (released) flow has sent that much, ALLOW ends the kernel's
        # per-packet verdict checks for the flow.
        self.inspect_budget = inspect_budget
        self.clock = clock
        self.wallclock = wallclock
        self.flows: collections.OrderedDict[bytes, Flow] = collections.OrderedDict()
        self.counters = EngineCounters()
        # kernel_flow_records: the kernel reports each session's end (struct
        # ms_flow_event) and the one flow record is written then, with the
        # kernel's counters (session_end); a flow closed here first is kept
        # in `ended` (flow id, app protocol, alerts, verdict) until then.
        self.kernel_flow_records = kernel_flow_records
        self.ended: collections.OrderedDict[bytes, EngineSide] = collections.OrderedDict()
        self._plugins_by_name = registry.by_name(plugins)
        # Engine._unread_release's answers: (the rules they were computed
        # for, {(app, inspect.what): release}): at most protocols x the 7
        # inspect.what sets. A reload replaces self.rules, and the next flow
        # identified computes them again.
        self._unread: tuple = (None, {})

    # -- records -----------------------------------------------------------
    def handle(self, rec: InspRecord) -> None:
        """One decoded payload record."""
        self.handle_batch((rec,))

    def handle_raw_batch(self, raws: Sequence[bytes], decoder: RecordDecoder) -> list[str]:
        """Raw records as the ring buffer hands them over, decoded in one
        pass (RecordDecoder.decode_many) and handled in order. Returns a
        message per record skipped as bad (counted in counters.bad_records)."""
        recs, bad = decoder.decode_many(raws)
        self.counters.bad_records += len(bad)
        self.handle_batch(recs)
        return bad

    def handle_raw(self, raw: bytes, decoder: RecordDecoder) -> str | None:
        """One raw record: what handle_raw_batch does with a batch of one,
        less the batch's lists, loop and run check. A replay drains the ring
        after every frame and a frame writes one record (4.11's capture:
        25,860 batches, every one of one record), so that bookkeeping was
        paid per record. The message of a record skipped as bad, else None."""
        rec = decoder.decode_one(raw)
        c = self.counters
        if rec is None:
            c.bad_records += 1
            return decoder.short(raw)
        self._handle(rec, self.flows, self.clock())
        c.records += 1
        c.bytes += len(rec.data)
        if self.metrics is not None:
            self.metrics.record_ringbuf(1)
        return None

    def handle_batch(self, recs: Iterable[InspRecord]) -> None:
        """Decoded records, in order: what handle() does for each, with the
        per-batch bookkeeping (metrics, the clock) done once."""
        c = self.counters
        now = self.clock()
        flows = self.flows
        if not isinstance(recs, (list, tuple)):
            recs = list(recs)
        n = len(recs)
        nbytes = 0
        i = 0
        while i < n:
            rec = recs[i]
            nbytes += len(rec.data)
            if self.record_runs and i + 1 < n and recs[i + 1].key == rec.key:
                j = self._run_end(recs, i, flows)
                if j > i + 1:
                    for r in recs[i + 1:j]:
                        nbytes += len(r.data)
                    self._handle_run(recs[i:j], flows, now)
                    i = j
                    continue
            self._handle(rec, flows, now)
            i += 1
        c.records += n
        c.bytes += nbytes
        if self.metrics is not None and n:
            self.metrics.record_ringbuf(n)

    def _run_end(self, recs: Sequence[InspRecord], i: int, flows: collections.OrderedDict) -> int:
        """The end (exclusive) of the run of records starting at ``recs[i]``
        that _handle_run may take together: in-order-looking TCP payload of
        one side of one open flow, still inspected, whose per-record work
        between parsing and the rules cannot differ from one record to the
        next (no hold, no allow-list, no identify-only release, no rule
        change, no budget reached within the run); i + 1: none."""
        rec = recs[i]
        flow = flows.get(rec.key)
        if (flow is None or flow.reasm is None or flow.hold or flow.l7 is not None or flow.identify_only
                or flow.verdict not in _RUN_VERDICTS or rec.inspect & HOLD_ALL or rec.rule_id != flow.rule_id
                or not rec.data or rec.tcp_flags & _SYN_FIN_RST or not flow.analyzer.decided
                or flow.analyzer.parser is None):
            return i + 1
        key, side, rule_id = rec.key, rec.side, rec.rule_id
        room = None if self.inspect_budget is None else self.inspect_budget - flow.copied[side] - len(rec.data)
        if room is not None and room <= 0:   # the budget's end (cut_head, ALLOW) is taken one record at a time
            return i + 1
        j, n = i + 1, min(len(recs), i + MAX_RUN_RECORDS)
        while j < n:
            r = recs[j]
            if (r.key != key or r.side != side or r.rule_id != rule_id or not r.data
                    or r.tcp_flags & _SYN_FIN_RST or r.inspect & HOLD_ALL):
                break
            if room is not None:
                room -= len(r.data)
                if room <= 0:
                    break
            j += 1
        return j

    def _handle_run(self, run: Sequence[InspRecord], flows: collections.OrderedDict, now: float) -> None:
        """Records of one run (_run_end): their bytes go to the reassembler
        and the parser in one pass (FlowAnalyzer.data_run, one list of events
        per record), then each record is handled as _handle does, in order,
        with its own events: its counters, next sequence numbers, rules and
        verdicts as if it had come alone, so an alert or a reset is about the
        record that carried the request it blocks. A record after a verdict
        that decided the flow is counted and not inspected, as alone; its
        bytes were parsed, but nothing reads a decided flow's parser."""
        flow = flows[run[0].key]
        d = _DIRECTIONS[run[0].side]
        in_order = flow.reasm.in_order
        chunks = []
        for rec in run:
            got = in_order(d, rec.seq, rec.tcp_flags, rec.data)
            if got is None:               # not the next bytes: this one and the rest one at a time
                break
            chunks.append(got)
        parsed = flow.analyzer.data_run(d, chunks) if chunks else []
        np, budget, key, side = len(parsed), self.inspect_budget, run[0].key, run[0].side
        pkts, nbytes, copied, next_seq = flow.pkts, flow.bytes, flow.copied, flow.next_seq
        if np:
            # The run's first record is handled inline (_run_end took the
            # flow open and undecided): the flow is the latest seen now, as
            # each inline record after it would make it again (nothing in
            # between touches another flow's place).
            flows.move_to_end(key)
            flow.last_seen = now
        for k, rec in enumerate(run):
            if k < np and flow.verdict not in _DECIDED and flows.get(key) is flow:
                # What _handle does with a parsed record of a run, less the
                # tests _run_end settled for the whole run: an open TCP flow
                # of this rule, no SYN/FIN/RST, nothing held, no allow-list,
                # not identify-only, this side short of the inspection
                # budget after the record (so no head is cut here). A
                # record after a verdict that decided the flow, or after
                # the flow was closed, takes _handle below. (Its place in
                # the flow table and last_seen: set above for the run.)
                pkts[side] += 1
                nbytes[side] += rec.orig_len
                copied[side] += len(rec.data)
                next_seq[side] = (rec.seq + rec.orig_len) & 0xFFFFFFFF
                if rec.tcp_flags & TCP_ACK:   # what the other side sends next
                    next_seq[1 - side] = rec.ack_seq
                flow.hold_all = False
                events = parsed[k]
                if events:
                    self._inspect(flow, events)
                elif flow.verdict is None or flow.verdict == _RELEASE:
                    self._no_events(flow, False)
                if (flow.verdict == _RELEASE and budget is not None
                        and max(copied) >= budget and flow.l7 is None):
                    self._verdict(flow, VerdictCode.VERDICT_ALLOW)   # the other side's depth reached
                if len(flow.eof) == 2:
                    self._close(flow, "closed")
            elif k < np:
                self._handle(rec, flows, now, parsed[k])
            elif k < len(chunks):         # delivered, not yet parsed (data_run stopped)
                self._handle(rec, flows, now, chunk=chunks[k])
            else:
                self._handle(rec, flows, now)

    def _no_events(self, flow: Flow, hold_all: bool) -> None:
        """A record of an undecided or released flow gave no events: a flow
        no parser reads, or whose parser has finished both directions, is
        let go."""
        an = flow.analyzer
        if flow.verdict is None and an.decided and an.parser is None:
            self._unreadable(flow)           # nothing this slow path can read
        elif an.finished and flow.l7 is None and not hold_all:
            # Encrypted both ways (SSH past its KEXINITs, TLS past its
            # ChangeCipherSpecs) or given up: no rule sees anything in the
            # rest (no events; DLP and WAF read HTTP messages), so the kernel
            # carries it, as a flow no parser reads. Not a flow with an
            # allow-list or holding every request: their rules decide.
            self._verdict(flow, VerdictCode.VERDICT_ALLOW)

    def _handle(self, rec: InspRecord, flows: collections.OrderedDict, now: float,
                parsed: list | None = None, chunk: bytes | None = None) -> None:
        """One record. ``parsed``: its events, parsed already (_handle_run);
        ``chunk``: its bytes, delivered in order by the reassembler already."""
        side = rec.side
        flow = flows.get(rec.key)
        if flow is None:
            if not rec.orig_len:
                # A bare FIN or RST of a flow not held here (closed already, and
                # this is a retransmission of its FIN): nothing to inspect, and
                # no verdict is waited for (the kernel holds payload only), so
                # opening a flow would only log an empty one.
                return
            flow = self._open(rec)
        else:
            flows.move_to_end(rec.key)
            if rec.rule_id != flow.rule_id:      # a new policy decided the session again
                self._rebind(flow, rec.rule_id)
        flow.last_seen = now
        flow.pkts[side] += 1
        flow.bytes[side] += rec.orig_len
        flow.copied[side] += len(rec.data)
        if rec.l4 == socket.IPPROTO_TCP:
            flags = rec.tcp_flags
            end = rec.seq + rec.orig_len + (1 if flags & TCP_FIN else 0)
            flow.next_seq[side] = end & 0xFFFFFFFF
            if flags & TCP_ACK:   # what the other side sends next
                flow.next_seq[1 - side] = rec.ack_seq
        hold_all = flow.hold_all = bool(rec.inspect & HOLD_ALL)   # a reload may change the rule
        each = hold_all and side == 0 and flow.verdict is not None     # the kernel holds every request
        if flow.verdict in _DECIDED:
            if each and flow.verdict == _ALLOW and rec.data and self.injector is not None:
                # Bypassed (a failure's action), and the kernel still holds the
                # client's side: everything goes on unread.
                self.injector.inject(flow.info, side, rec)
                self.counters.injected += 1
            self.counters.after_verdict += 1
            return                        # decided; a record in flight when the verdict was written
        if flow.hold and flow.verdict is None:
            _note_held(flow, rec)
            if rec.data and len(flow.held) < MAX_HELD_RECORDS:
                flow.held.append(rec)     # the kernel dropped it: ours to send on if allowed
        elif each and rec.data and len(flow.held) < MAX_HELD_RECORDS:
            flow.held.append(rec)         # held by the kernel until checked (_send_checked)
        if parsed is not None:
            events = parsed
        elif chunk is not None:
            events = flow.analyzer.data(_DIRECTIONS[side], chunk)
        else:
            events = self._parse(flow, rec)
        if (self.inspect_budget is not None and flow.copied[side] >= self.inspect_budget
                and flow.verdict in (None, _RELEASE) and not (hold_all and side == 0)):
            # (Not the client's side of a flow that holds every request:
            # the kernel copies all of it, the head's end is still to come.)
            # The kernel copies no more of this side: a message head still
            # incomplete is read as far as it goes (rules see its request
            # line), never left pending while the rest passes uncopied.
            cut = getattr(flow.analyzer.parser, "cut_head", None)
            if cut is not None:
                events += cut(_DIRECTIONS[side])
        if events:
            self._inspect(flow, events)
        elif flow.verdict is None or flow.verdict == _RELEASE:
            self._no_events(flow, hold_all)
        if flow.hold and flow.verdict is None and flow.held and flow.held[-1] is rec and flow.http_tx is None:
            self._pass_on_h2(flow, rec, events)
        if each and flow.verdict == _RELEASE and flow.held:
            self._send_checked(flow)
        elif (hold_all and side == 0 and flow.verdict is None and rec.data and flow.analyzer.decided
              and flow.analyzer.parser is not None):
            # A protocol the list reads, and the client's bytes so far passed
            # it: from here on each piece goes on once read (_send_checked).
            # Holding a request whole would stall its body once the client's
            # window is full (nothing acknowledged), and nothing ends this hold.
            self._verdict(flow, VerdictCode.VERDICT_RELEASE)
        if flow.identify_only and flow.verdict not in _DECIDED and self._identified(flow):
            # Identified (protocol and naming fields): nothing more to read.
            self._verdict(flow, VerdictCode.VERDICT_ALLOW)
        if (flow.verdict == _RELEASE and self.inspect_budget is not None
                and max(flow.copied) >= self.inspect_budget and flow.l7 is None):
            # A side inspected to the depth and nothing found: the kernel may
            # carry the flow alone (its per-packet verdict checks end).
            self._verdict(flow, VerdictCode.VERDICT_ALLOW)
        if len(flow.eof) == 2:
            self._close(flow, "closed")

    def _open(self, rec: InspRecord) -> Flow:
        if len(self.flows) >= MAX_FLOWS:
            _, oldest = self.flows.popitem(last=False)
            self._close(oldest, "forced", pop=False)
        what = _WHAT.get(rec.inspect)
        if what is None:
            what = _WHAT[rec.inspect] = _what_of(rec.inspect)
        kernel_app = self.app_names.get(rec.app)
        info = eve.FlowInfo(flow_id=eve.make_flow_id(rec.l4, rec.client[0], rec.client[1], rec.server[0],
                                                     rec.server[1], rec.ts_ns),
                            src_ip=rec.client[0], src_port=rec.client[1], dest_ip=rec.server[0],
                            dest_port=rec.server[1], proto=rec.l4, start=self.wallclock())
        inspector = self.rules.flow(what, http_anomaly=self.failure_actions.http_anomaly)
        allow = self.l7.get(rec.rule_id) if self.l7 else None
        if allow is not None:
            inspector = allow.inspector(inspector)
        transport = rec.transport
        flow = Flow(rec.key, info, transport, FlowAnalyzer(transport, self.plugins, kernel_app),
                    StreamReassembler(_REASSEMBLY_LIMITS, self.budget) if rec.l4 == socket.IPPROTO_TCP else None,
                    inspector, bool(rec.inspect & INSPECT["HOLD"]), rec.ts_ns, rec.rule_id, self.clock(),
                    identify_only=what == _IDENTIFY_ONLY and allow is None, l7=allow)
        self.flows[rec.key] = flow
        self.counters.flows_opened += 1
        _note_held(flow, rec)             # before a simulated failure below may block it
        if self.simulate:
            for kind in ("reassembly_cap", "parser_error", "decompression"):
                if kind in self.simulate:
                    self._failure(flow, kind)
        return flow

    def _parse(self, flow: Flow, rec: InspRecord) -> list:
        d = _DIRECTIONS[rec.side]
        an = flow.analyzer
        if flow.reasm is None:
            if rec.frag:
                whole = self._defrag(flow, rec)
                return an.datagram(d, whole) if whole is not None else []
            return an.datagram(d, rec.data)
        got = flow.reasm.in_order(d, rec.seq, rec.tcp_flags, rec.data)
        if got is not None:
            # The next bytes in order (most records): to the analyzer as
            # segment()'s one Data event would bring them. No cap is hit on
            # this path, so the cap check below has nothing to see.
            return an.data(d, got)
        out = []
        for ev in flow.reasm.segment(d, rec.seq, rec.tcp_flags, rec.data):
            t = type(ev)
            got = an.data(ev.direction, ev.data) if t is Data else an.stream_event(ev)   # in-order bytes: most
            if got:
                out += got
            if t is Eof:
                flow.eof.add(int(ev.direction))
        rc = flow.reasm.counters
        caps = rc.per_flow_cap_hits + rc.total_cap_hits
        if caps > flow.caps_seen:
            flow.caps_seen = caps
            if self.metrics is not None:
                self.metrics.record_reassembly_cap("flow" if flow.reasm.counters.per_flow_cap_hits else "total")
            self._failure(flow, "reassembly_cap")
        return out

    def _defrag(self, flow: Flow, rec: InspRecord) -> bytes | None:
        """A UDP datagram from its fragments' records (the first carries the
        UDP payload's start; a later one its IP-payload offset, of which the
        8-byte UDP header is not payload). None until complete."""
        key = (rec.side, rec.frag_id)
        st = flow.frags.get(key)
        if st is None:
            if len(flow.frags) >= MAX_FRAG_DATAGRAMS:
                flow.frags.popitem(last=False)
                self.counters.failures["fragments_dropped"] += 1
            st = flow.frags[key] = {"pieces": {}, "end": None}
        off = 0 if rec.frag & ~FRAG["MORE"] == FRAG["FIRST"] else rec.frag_off * 8 - 8
        if off < 0 or off + len(rec.data) > MAX_DATAGRAM:
            flow.frags.pop(key, None)
            return None
        st["pieces"].setdefault(off, rec.data)       # first wins, as in streams
        if not rec.frag & FRAG["MORE"]:
            st["end"] = off + len(rec.data)
        if st["end"] is None:
            return None
        buf, at = bytearray(), 0
        for o in sorted(st["pieces"]):
            if o > at:
                return None                            # a hole: wait
            piece = st["pieces"][o]
            buf += piece[at - o:]
            at = max(at, o + len(piece))
        if at < st["end"]:
            return None
        del flow.frags[key]
        return bytes(buf[:st["end"]])

    # -- rules and verdicts ------------------------------------------------
    def _inspect(self, flow: Flow, events: list) -> None:
        info = flow.info
        if info.app_proto != flow.analyzer.app:   # (_info's test, without the call when it holds)
            info = self._info(flow)
        release = False
        feed = flow.inspector.feed
        for ev in events:
            for hit in feed(ev):
                self.counters.hits[hit.category] += 1
                flow.alerted = True
                self.emit(eve.alert_record(info, hit, self.wallclock(), direction=hit.direction,
                                           reject_target="both" if hit.action == "block"
                                           and self.injector is not None and flow.transport == "tcp" else None,
                                           reject=("tcp-reset",) if hit.action == "block"
                                           and self.injector is not None and flow.transport == "tcp" else (),
                                           app_layer=self._alert_context(flow, ev), counters=self._counters(flow)))
                if hit.action == "block":
                    self._block(flow)
            kind = ev.kind
            if kind == "http_request" and not ev.anomalies:
                # What _log does with a request without anomalies (no
                # anomaly record to write), without the call: it waits for
                # its answer and is the flow's latest transaction.
                flow.http_pending.append(ev)
                flow.http_tx = (ev, None)
            elif kind != "http_message_end" or ev.content_encoding or flow.http_coded is not None:
                logged = _LOGGED.get(kind)
                if logged is None:
                    logged = _LOGGED[kind] = kind in _LOG_KINDS or kind.startswith(_LOG_PREFIXES)
                if logged:
                    self._log(flow, info, ev)     # (most message ends: nothing to log, _log's first test)
            if flow.verdict in _DECIDED:
                return
            if kind == "http_request":
                continue          # (most events: none of the kinds below, not tested one by one)
            if kind == "malformed":
                self._failure(flow, "parser_error")
            elif kind == "http_anomaly" and ev.name in CODING_ANOMALIES:
                self._failure(flow, "decompression")   # a body the rules cannot read decoded
            elif kind == "http_message_end" and ev.direction == _TO_SERVER:
                if flow.l7 is None:
                    if flow.verdict != _RELEASE or flow.identify_only:   # else _verdict has nothing to do
                        self._verdict(flow, _RELEASE)
                else:    # after the rest: a pipelined request in the same held bytes is checked first
                    release = True
            elif kind == "dns_message" and not ev.response:
                self._verdict(flow, VerdictCode.VERDICT_RELEASE)
            elif kind == "tls_client_hello" or kind == "quic_client_hello":
                self._verdict(flow, VerdictCode.VERDICT_RELEASE)   # on to the ServerHello (JA3S, version)
            elif (kind == "tls_server_hello" and not ev.hello_retry_request
                  or kind == "quic_server_hello" and not ev.hello.hello_retry_request):
                self._verdict(flow, VerdictCode.VERDICT_ALLOW)     # the rest is encrypted
        if release:
            self._verdict(flow, VerdictCode.VERDICT_RELEASE)
        an = flow.analyzer
        if an.decided and an.parser is None and flow.verdict is None:
            self._unreadable(flow)               # nothing this slow path can read
        elif flow.unread_check and an.identified:
            flow.unread_check = False            # asked once: at identification
            if flow.verdict not in _DECIDED and not flow.hold_all and self._unread_release(flow):
                self._verdict(flow, _ALLOW)      # nothing reads the rest: the kernel carries it

    def _unread_release(self, flow: Flow) -> bool:
        """True when nothing this engine runs reads any event the flow's
        protocol can emit, so the identified flow may be let go (ALLOW, the
        kernel bypasses it), as Suricata bypasses a flow no rule can match
        any more: none of its kinds (ProtocolPlugin.event_kinds) is written
        to EVE (_LOG_KINDS, _LOG_PREFIXES), read by the flow's inspector
        (RuleSet.kinds_read: WAF, DLP, domain rules) or decides a verdict
        (_VERDICT_KINDS); the protocol cannot turn into another one
        (ProtocolPlugin.switches: TLS after STARTTLS is read); the flow has
        no L7 allow-list (Flow.unread_check: it reads every kind).

        Malformed (parser_error) is the one event every protocol has: a
        released flow's later malformed stream is not seen. So a flow is
        released only while parser_error has its default action (None). That
        default, "what the WAF cannot read must not pass" (drop on a WAF
        flow, _failure), guards what the WAF reads, and a protocol none of
        whose events any rule reads is not read by it: a malformed Redis
        stream hides nothing from a rule. An operator who sets parser_error
        (e.g. drop, to keep malformed input from a backend) keeps every
        flow fully inspected.

        Computed once per (protocol, inspect.what) for the loaded rules; a
        reload (a new self.rules) starts over."""
        if self.failure_actions.parser_error is not None:
            return False
        rules, answers = self._unread
        if rules is not self.rules:
            rules, answers = self._unread = (self.rules, {})
        app, what = flow.analyzer.app, getattr(flow.inspector, "what", None)
        got = answers.get((app, what))
        if got is None:
            plugin = self._plugins_by_name.get(app)
            kinds = None if plugin is None or plugin.switches else plugin.event_kinds
            # (Rules or an inspector that cannot say what they read: read on.)
            read = getattr(rules, "kinds_read", None)
            got = (kinds is not None and read is not None and what is not None
                   and not any(k in _LOG_KINDS or k.startswith(_LOG_PREFIXES) or k in _VERDICT_KINDS
                               for k in kinds)
                   and kinds.isdisjoint(read(what)))
            answers[(app, what)] = got
        return got

    # -- L7 allow-lists ------------------------------------------------------
    def set_l7(self, l7) -> None:
        """A new policy's allow-lists (a reload): open flows take their
        rule's new list (or lose theirs) at once."""
        self.l7 = l7
        for flow in self.flows.values():
            self._rebind(flow, flow.rule_id)

    def _rebind(self, flow: Flow, rule_id: int) -> None:
        flow.rule_id = rule_id
        allow = self.l7.get(rule_id) if self.l7 else None
        if allow is flow.l7:
            return
        inner = flow.inspector.inner if flow.l7 is not None else flow.inspector
        flow.inspector = allow.inspector(inner) if allow is not None else inner
        flow.l7 = allow
        if allow is not None:
            flow.identify_only = False
            flow.unread_check = False            # its list reads every kind

    def _unreadable(self, flow: Flow) -> None:
        """No parser reads this flow: ALLOW, unless its rule has an
        allow-list (nothing unread can be allowed: BLOCK, with the alert)."""
        if flow.l7 is None:
            self._verdict(flow, VerdictCode.VERDICT_ALLOW)
            return
        hit = flow.inspector.unreadable(flow.analyzer.app)
        self.counters.hits[hit.category] += 1
        flow.alerted = True
        tcp = self.injector is not None and flow.transport == "tcp"
        self.emit(eve.alert_record(self._info(flow), hit, self.wallclock(), direction=hit.direction,
                                   reject_target="both" if tcp else None, reject=("tcp-reset",) if tcp else (),
                                   counters=self._counters(flow)))
        self._block(flow)

    def _alert_context(self, flow: Flow, ev=None) -> dict:
        """The app-layer object of the transaction a hit came from (``ev``,
        else the flow's latest), as Suricata's alerts carry it."""
        kind = getattr(ev, "kind", None)
        if kind == "dns_message":
            return {"dns": eve.dns_object(ev)}
        if kind == "tls_client_hello":
            return {"tls": eve.tls_object(ev)}
        if kind == "tls_server_hello":
            return {"tls": eve.tls_object(flow.tls_hello, ev)}
        if kind == "quic_client_hello":
            return {"quic": eve.quic_object(ev)}
        if flow.tls_hello is not None:
            return {"tls": eve.tls_object(flow.tls_hello)}
        req, resp = (ev, None) if kind == "http_request" else flow.http_tx or (None, None)
        if req is not None or resp is not None:
            return {"http": eve.http_object(req, resp)}
        return {}

    def _counters(self, flow: Flow) -> tuple:
        """(packets, bytes) per side: the kernel's session when it is there
        (the engine sees only the inspected packets)."""
        kernel = self.session_stats(flow.key) if self.session_stats else None
        return kernel if kernel is not None else (flow.pkts, flow.bytes)

    def _info(self, flow: Flow) -> eve.FlowInfo:
        app = flow.analyzer.app
        if flow.info.app_proto != app:
            # with_app: the tuple is the same, so what FlowInfo derived
            # from it (community_id, header_parts) is kept, not made again.
            flow.info = flow.info.with_app(app)
        return flow.info

    def _log(self, flow: Flow, info: eve.FlowInfo, ev) -> None:
        kind = ev.kind
        if kind == "http_message_end" and not ev.content_encoding and flow.http_coded is None:
            return           # most message ends: nothing to log (the branches below log none)
        # Every tolerated deviation of an inspected flow: an EVE anomaly
        # record (what it does to the flow came as a rule hit, inspector.py).
        for name in (ev.anomalies if kind in ("http_request", "http_response") else
                     (ev.name,) if kind == "http_anomaly" else ()):
            self.emit(eve.anomaly_record(info, name, self.wallclock(),
                                         app_proto="http2" if info.app_proto in H2_APPS else "http",
                                         direction=ev.direction))
        if kind == "http_request":       # (_inspect does the same itself for one without anomalies)
            flow.http_pending.append(ev)
            flow.http_tx = (ev, None)
        elif kind == "http_response":
            req = _take_request(flow, ev.stream_id)
            flow.http_tx = (req, ev)
            # 101 Switching Protocols is the request's final answer: the
            # request is logged with it whatever the connection speaks next.
            if ev.status >= 200 or ev.status == HTTP_SWITCHING_PROTOCOLS or req is None:
                if ev.stream_id and is_grpc(ev.content_type) and len(flow.grpc_calls) < MAX_PENDING_HTTP:
                    flow.grpc_calls[ev.stream_id] = (req, ev)   # logged at the call's end (grpc_call)
                elif ev.header("content-encoding") is not None:
                    flow.http_coded = (req, ev)     # logged at its body's end (below)
                else:
                    self.emit(eve.http_record(info, req, ev, self.wallclock(),
                                              request_end=_request_end(flow, req)))
            elif req is not None:
                flow.http_pending.appendleft(req)       # 1xx: the final answer is still to come
        elif kind == "http_message_end" and (ev.content_encoding or flow.http_coded is not None):
            if ev.direction == Direction.TO_SERVER:
                if ev.content_encoding and flow.http_pending and len(flow.http_req_ends) < MAX_PENDING_HTTP:
                    flow.http_req_ends[flow.http_pending[-1].offset] = ev
            elif flow.http_coded is not None:
                req, resp = flow.http_coded
                flow.http_coded = None
                self.emit(eve.http_record(info, req, resp, self.wallclock(),
                                          request_end=_request_end(flow, req), response_end=ev))
        elif kind == "tls_client_hello":
            flow.tls_hello = ev
        elif kind == "tls_server_hello":
            self.emit(eve.tls_record(info, flow.tls_hello, ev, self.wallclock()))
            flow.tls_hello = None
        elif kind == "dns_message":
            for r in eve.dns_records(info, ev, self.wallclock()):
                self.emit(r)
        elif kind == "grpc_call":
            req, resp = flow.grpc_calls.pop(ev.stream_id, (None, None))
            if req is None and resp is None:
                req = _take_request(flow, ev.stream_id)     # reset before any answer
            if req is not None or resp is not None:
                self.emit(eve.http_record(info, req, resp, self.wallclock(), grpc=ev))
        elif kind == "quic_client_hello" or kind == "quic_server_hello":
            self.emit(eve.quic_record(info, ev, self.wallclock()))
        elif kind == "smtp_message":
            self.emit(eve.smtp_record(info, ev, self.wallclock()))
        elif kind.startswith("mqtt_"):
            rec = eve.mqtt_record(info, ev, self.wallclock())
            if rec is not None:
                self.emit(rec)
        elif kind == "kafka_request" or kind == "kafka_response":
            self.emit(eve.kafka_record(info, ev, self.wallclock()))
        elif kind.startswith("pgsql_"):
            if flow.pgsql is None:
                flow.pgsql = eve.PgsqlLog()
            for obj in flow.pgsql.feed(ev):
                self.emit(eve.pgsql_record(info, obj, self.wallclock()))
        elif kind in ("ssh_banner", "ssh_kexinit") and not flow.ssh_logged:
            flow.ssh.setdefault((kind, ev.direction), ev)
            if len(flow.ssh) == 4:        # both banners and both KEXINITs: the handshake in the clear
                self._log_ssh(flow, info, self.wallclock())

    def _log_ssh(self, flow: Flow, info: eve.FlowInfo, now: float) -> None:
        """Suricata's ssh record, once per flow, with what was seen of the handshake."""
        if not flow.ssh:
            return
        self.emit(eve.ssh_record(info, {d: v for (k, d), v in flow.ssh.items() if k == "ssh_banner"},
                                 {d: v for (k, d), v in flow.ssh.items() if k == "ssh_kexinit"}, now))
        flow.ssh.clear()
        flow.ssh_logged = True

    def _failure(self, flow: Flow, kind: str) -> None:
        self.counters.failures[kind] += 1
        if self.metrics is not None:
            self.metrics.record_failure(kind)
        act = getattr(self.failure_actions, kind)
        if act is None:     # parser_error's default: what the WAF cannot read does not pass
            act = "drop" if "waf" in getattr(flow.inspector, "what", ()) else "bypass"
        code = {"pass": VerdictCode.VERDICT_RELEASE, "bypass": VerdictCode.VERDICT_ALLOW,
                "drop": VerdictCode.VERDICT_BLOCK}[act]
        if code == VerdictCode.VERDICT_BLOCK:
            self._block(flow)
        else:
            self._verdict(flow, code)

    def _block(self, flow: Flow) -> None:
        if flow.verdict == VerdictCode.VERDICT_BLOCK:
            return
        holding = flow.hold and flow.verdict is None   # no verdict has let the held payload go
        if flow.hold_all and flow.verdict == VerdictCode.VERDICT_RELEASE:
            # The client's side is still held: the server expects the first
            # byte not sent on; the server's side passed (the kernel's numbers).
            holding = True
            flow.held_from = [flow.sent_to, None]
        self._verdict(flow, VerdictCode.VERDICT_BLOCK)
        flow.held.clear()
        if self.injector is None or flow.transport != "tcp":
            return
        # Both ends get a reset in either mode; what each expects differs.
        if holding:
            self.injector.reset_held(flow.info, flow.key, list(flow.held_from), list(flow.next_seq))
        else:
            self.injector.reset_flow(flow.info, flow.key, list(flow.next_seq))

    def _identified(self, flow: Flow) -> bool:
        """Nothing more to read on an identify-only flow: its protocol and
        names are known, and no domain rule could match a later name on the
        same connection (REPEATING_NAMES: such a flow is read to its budget,
        or letting it go after its first name would let later names pass
        unchecked)."""
        if not flow.analyzer.identified:
            return False
        field = REPEATING_NAMES.get(flow.analyzer.app)
        return field is None or not any(field in d.fields for d in getattr(self.rules, "domains", ()))

    def _verdict(self, flow: Flow, code: VerdictCode) -> None:
        if code == _RELEASE and flow.identify_only and self._identified(flow):
            code = VerdictCode.VERDICT_ALLOW    # identified: bypass at once, not release then allow
        if flow.verdict == code or flow.verdict in _DECIDED:
            return
        first = flow.verdict is None
        flow.verdict = code
        written_ns = self.verdicts.verdict(flow.key, code)
        if code == VerdictCode.VERDICT_ALLOW:
            # The kernel copies no more of it: what reassembly buffered goes
            # back to the shared budget now, not when the flow times out, and
            # what waits for an answer that will not be read is logged now.
            if flow.reasm is not None:
                flow.reasm.close()
                flow.reasm = None
            self._log_unanswered(flow)
        if flow.held and code != VerdictCode.VERDICT_BLOCK:
            self._release_held(flow)
        self.counters.verdicts[code.name] += 1
        if self.metrics is not None:
            self.metrics.record_verdict(_VERDICT_WORDS[code])
            if first:   # kernel timestamp of the first inspected byte -> verdict map write
                self.metrics.observe_verdict_latency((written_ns - flow.first_ts_ns) / 1e9)
        if first:
            flow.verdict_latency_us = max(0, (written_ns - flow.first_ts_ns) // 1000)

    def _log_unanswered(self, flow: Flow) -> None:
        """EVE records of requests and ClientHellos whose answer was not
        seen, and of an SSH handshake seen in part."""
        if not flow.http_pending and flow.tls_hello is None and not flow.ssh and flow.http_coded is None \
                and not flow.grpc_calls and flow.pgsql is None:
            return
        info, now = self._info(flow), self.wallclock()
        if flow.pgsql is not None:           # a transaction the server had not finished answering
            for obj in flow.pgsql.flush():
                self.emit(eve.pgsql_record(info, obj, now))
        self._log_ssh(flow, info, now)
        if flow.http_coded is not None:      # its body never ended
            req, resp = flow.http_coded
            flow.http_coded = None
            self.emit(eve.http_record(info, req, resp, now, request_end=_request_end(flow, req)))
        for req, resp in flow.grpc_calls.values():      # calls whose end was not seen
            self.emit(eve.http_record(info, req, resp, now))
        flow.grpc_calls.clear()
        for req in flow.http_pending:
            self.emit(eve.http_record(info, req, None, now, request_end=_request_end(flow, req)))
        flow.http_pending.clear()
        flow.http_req_ends.clear()
        if flow.tls_hello is not None:
            self.emit(eve.tls_record(info, flow.tls_hello, None, now))
            flow.tls_hello = None

    def _pass_on_h2(self, flow: Flow, rec: InspRecord, events: list) -> None:
        """A held HTTP/2 flow before its first request: a held segment that
        starts no request (the connection preface, SETTINGS, WINDOW_UPDATE,
        PING, the server's frames) is sent on now, the hold kept. A gRPC
        client waits for the server's SETTINGS before its first HEADERS:
        holding the preface until a request was checked held both ends
        forever. A server acts on a stream only when its header block is
        complete, so the segment that completes the first request's HEADERS
        (an http_request event) and everything after it stay held until the
        request is checked (its body too, for the WAF)."""
        if flow.analyzer.app not in H2_APPS or self.injector is None:
            return
        if any(ev.kind == "http_request" for ev in events):
            return
        flow.held.pop()
        self.injector.inject(flow.info, rec.side, rec)
        self.counters.injected += 1
        if flow.held_from[rec.side] == rec.seq:      # the other end has these bytes now (for resets)
            flow.held_from[rec.side] = (rec.seq + len(rec.data)) & 0xFFFFFFFF

    def _release_held(self, flow: Flow) -> None:
        """Hold mode let go: send the held payload on now (each segment once,
        a retransmission's copy skipped) instead of waiting for the
        client's retransmission timer."""
        held, flow.held = flow.held, []
        if flow.hold_all and flow.transport == "tcp":
            # From here on each of the client's bytes goes on once: where the
            # server's next expected byte will be after these.
            flow.sent_to = flow.held_from[0]
            for rec in sorted((r for r in held if r.side == 0), key=lambda r: _seq_after(r.seq, flow.sent_to)):
                if flow.sent_to is None or _seq_after(rec.seq, flow.sent_to) <= 0:
                    end = (rec.seq + len(rec.data)) & 0xFFFFFFFF
                    if flow.sent_to is None or _seq_after(end, flow.sent_to) > 0:
                        flow.sent_to = end
        if self.injector is None:
            return
        seen = set()
        for rec in held:
            if (rec.side, rec.seq, len(rec.data)) in seen:
                continue
            seen.add((rec.side, rec.seq, len(rec.data)))
            self.injector.inject(flow.info, rec.side, rec)
            self.counters.injected += 1

    def _send_checked(self, flow: Flow) -> None:
        """Hold every request, after the first verdict: the client's held
        bytes the rules have read go on, in order and each byte once (a
        retransmission of what the server has is not sent again, a segment
        overlapping it is cut), so the server gets nothing unchecked: a
        request's bytes go on only after the record completing its head was
        read (a disallowed one blocks first). A segment after a hole waits
        for the bytes before it (the parser has not read it either)."""
        if flow.transport != "tcp":
            held, flow.held = flow.held, []      # datagrams: each one read whole
            for rec in held:
                if self.injector is not None:
                    self.injector.inject(flow.info, 0, rec)
                    self.counters.injected += 1
            return
        progress = True
        while progress and flow.held:
            progress = False
            for rec in list(flow.held):
                if flow.sent_to is None:
                    flow.sent_to = rec.seq
                ahead = _seq_after(rec.seq, flow.sent_to)
                if ahead > 0:
                    continue                     # after a hole: waits
                flow.held.remove(rec)
                progress = True
                if len(rec.data) + ahead <= 0:
                    continue                     # the server has all of it
                if ahead < 0:
                    rec = rec._replace(data=rec.data[-ahead:], seq=flow.sent_to)
                flow.sent_to = (rec.seq + len(rec.data)) & 0xFFFFFFFF
                if self.injector is not None:
                    self.injector.inject(flow.info, 0, rec)
                    self.counters.injected += 1
        flow.held_from[0] = flow.sent_to         # the server's next expected byte (for resets)

    # -- ends ----------------------------------------------------------------
    def _close(self, flow: Flow, reason: str, pop: bool = True) -> None:
        if pop:
            self.flows.pop(flow.key, None)
        if not flow.analyzer.decided:
            # Detection still waiting (a flow seen only mid-stream, or
            # cut short): settle on what there is, as the offline analysis
            # does, so the records below name the protocol.
            self._inspect(flow, flow.analyzer.settle())
        info = self._info(flow)
        now = self.wallclock()
        for hit in flow.inspector.close():    # a body cut short: its pending scans
            self.counters.hits[hit.category] += 1
            flow.alerted = True
            self.emit(eve.alert_record(info, hit, now, direction=hit.direction,
                                       app_layer=self._alert_context(flow), counters=self._counters(flow)))
        self._log_unanswered(flow)
        if flow.reasm is not None:
            flow.reasm.close()
        self.counters.flows_closed += 1
        verdict = _VERDICT_WORDS[flow.verdict] if flow.verdict else None
        if self.kernel_flow_records:
            self.ended[flow.key] = EngineSide(info, flow.alerted, verdict, flow.verdict_latency_us)
            self.ended.move_to_end(flow.key)
            if len(self.ended) > MAX_ENDED:
                self.ended.popitem(last=False)   # its session's record then has the kernel's side only
            return
        pkts, nbytes = flow.pkts, flow.bytes
        kernel = self.session_stats(flow.key) if self.session_stats else None
        if kernel is not None:
            pkts, nbytes = kernel
        self.emit(eve.flow_record(info, now, pkts_toserver=pkts[0], pkts_toclient=pkts[1],
                                  bytes_toserver=nbytes[0], bytes_toclient=nbytes[1],
                                  reason=reason if reason in ("forced", "shutdown") else "timeout",
                                  alerted=flow.alerted, rule_id=flow.rule_id,
                                  verdict=verdict, verdict_latency_us=flow.verdict_latency_us))

    def sweep(self) -> int:
        """Close flows idle past IDLE_TIMEOUT_S; returns how many."""
        now = self.clock()
        idle = [f for f in self.flows.values() if now - f.last_seen > IDLE_TIMEOUT_S]
        for f in idle:
            # Its kernel session may live on: let it go at kernel speed.
            self._verdict(f, VerdictCode.VERDICT_ALLOW)
            self._close(f, "timeout")
        return len(idle)

    def close_all(self, reason: str = "shutdown") -> None:
        for f in list(self.flows.values()):
            self._close(f, reason)

    def session_end(self, ev: FlowEnd, wall) -> None:
        """The kernel ended session ``ev`` (kernel_flow_records): its flow is
        closed here if open, and its one flow record written, with the
        kernel's counters and what this engine knew of it (nothing, if it
        never saw the session's payload or forgot it)."""
        ref = session_ref(ev.key, ev.cookie)
        flow = self.flows.get(ref)
        if flow is not None:
            self._close(flow, "closed")
        self.emit(flow_end_record(ev, wall, app_names=self.app_names, engine=self.ended.pop(ref, None)))
