"""One flow's application layer: which protocol it speaks, and its events.

Sans-IO like the parsers it drives: in-order stream bytes (from
slowpath/reassembly.py) or datagrams go in, parser events come out. The
protocol is chosen by the plugins' probes on the first bytes of each
direction (protocols/registry.py detect), so it does not depend on ports;
the kernel's guess (its app id, from the L7 signatures) is a hint that is
taken when the probes cannot decide. An HTTP CONNECT tunnel is followed: the
bytes after it are detected again (usually TLS), while the flow keeps the
protocol it was identified as.
"""
from __future__ import annotations

from protocols import registry
from protocols.api import CERTAIN, LIKELY, POSSIBLE, Direction, Event, Parser, ProtocolPlugin
from protocols.grpc import is_grpc
from protocols.http2 import HttpTwoParser

# Bytes of one direction kept while no probe is sure: enough for the
# longest first message a probe needs to see whole (a TLS ClientHello with a
# post-quantum key share is ~1.8 KB; HTTP request lines with long URIs).
DETECT_BUFFER_BYTES = 4096
# A probe at or above this confidence decides at once; below it (POSSIBLE)
# detection waits for more bytes or the other direction, and settles for
# the best guess when the buffer is full or the stream ends.
DECIDE_AT = LIKELY
# Events after which the connection carries another protocol: HTTP CONNECT's
# tunnel, MySQL's switch to TLS (SSLRequest), SMTP's STARTTLS answered 220,
# PostgreSQL's SSLRequest answered 'S'. What follows is detected again.
TUNNEL_EVENTS = ("http_tunnel", "mysql_tls", "smtp_starttls", "pgsql_tls")
# An HTTP/1.1 Upgrade to this protocol goes on as HTTP/2 (RFC 7540 3.2):
# the upgraded request is its stream 1, and the flow is HTTP/2 from then on.
H2C_UPGRADE = "h2c"


def _first_query(ev) -> str | None:
    return ev.questions[0].name if ev.questions else None


# What "identified" means (FlowAnalyzer.identified): detection has settled and
# the parser produced the event that carries the flow's naming fields. Each
# kind maps to (names key, how to read it from the event), or None when the
# event names nothing but still identifies the flow. For the protocols in
# _WAIT_FOR_NAMING only these kinds (and Malformed: nothing more can be read)
# identify; for any other protocol (SSH, MySQL, Redis, plugins) the parser's
# first event does, taking its names when it is listed here.
NAMING_EVENTS = {
    "http_request": ("host", lambda ev: ev.host),
    "http_response": None,                       # a flow picked up after its request
    "tls_client_hello": ("sni", lambda ev: ev.sni),
    "ssl2_client_hello": None,
    "tls_server_hello": None,                    # a flow whose ClientHello was not seen
    "quic_client_hello": ("sni", lambda ev: ev.sni),
    "quic_server_hello": None,
    "dns_message": ("dns_query", _first_query),
    "ssh_banner": ("ssh_banner", lambda ev: ev.raw),
    "mysql_greeting": ("mysql_server_version", lambda ev: ev.server_version),
    "redis_command": ("redis_command", lambda ev: ev.command),
    "kafka_request": ("kafka_client_id", lambda ev: ev.client_id),
    "kafka_response": None,                      # a flow picked up after its request
    "malformed": None,
}
_WAIT_FOR_NAMING = frozenset({"http", "tls", "dns", "quic", "http2", "grpc"})


class _Pending:
    """One direction's bytes held while detection waits, and the probes'
    verdict on them: a direction's bytes are rated again only when they grew
    (detection runs again when either direction gets more)."""
    __slots__ = ("data", "datagrams", "rated_at", "rated")

    def __init__(self) -> None:
        self.data = bytearray()
        self.datagrams: list[bytes] = []
        self.rated_at: int | None = None     # len(data) rated, -1: the first datagram
        self.rated: tuple[str | None, float] = (None, 0.0)


# Plugin tables shared by the analyzers built with one plugin list (a slow
# path builds one analyzer per flow): id(plugins) -> (plugins, by name,
# {transport: [(name, probe)]}). A few lists at most exist (the default, a
# test's own); the bound only keeps a caller that makes a list per flow from
# growing it.
_TABLES: dict[int, tuple] = {}
MAX_SHARED_TABLES = 16


def _tables(plugins) -> tuple:
    hit = _TABLES.get(id(plugins))
    if hit is not None and hit[0] is plugins:
        return hit
    if len(_TABLES) >= MAX_SHARED_TABLES:
        _TABLES.clear()
    listed = tuple(plugins)
    probes = {t: [(p.name, p.probe) for p in listed if t in p.transports] for t in ("tcp", "udp")}
    hit = _TABLES[id(plugins)] = (plugins, listed, {p.name: p for p in listed}, probes)
    return hit


_OTHER = (Direction.TO_CLIENT, Direction.TO_SERVER)
# A direction holding nothing (FlowAnalyzer._pending): one shared empty
# _Pending, never written (_pend replaces it before a byte is held).
_NONE_HELD = _Pending()


class FlowAnalyzer:
    def __init__(self, transport: str, plugins: list[ProtocolPlugin] | None = None,
                 kernel_app: str | None = None):
        self.transport = transport
        _, self.plugins, self._by_name, probes = _tables(
            plugins if plugins is not None else registry.default_plugins())
        self._probes = probes.get(transport, ())
        self._held = 0                       # bytes pending in both directions
        self.kernel_app = kernel_app
        self.app: str | None = None          # what the flow speaks (first decision)
        self.confidence = 0.0
        self.inner_app: str | None = None    # inside a tunnel (e.g. TLS in CONNECT)
        self.parser: Parser | None = None
        # Per direction: _NONE_HELD until a direction's bytes must wait
        # (_pend makes its own then): most flows are decided on their first
        # payload and never hold any (a slow path builds an analyzer per flow).
        self._pending = {Direction.TO_SERVER: _NONE_HELD, Direction.TO_CLIENT: _NONE_HELD}
        self._undecided = True
        self._tunnel = False
        self._named = False
        self._last_request = None            # the HTTP/1 request an h2c upgrade makes stream 1
        # Naming fields seen so far (NAMING_EVENTS): "host", "sni", "dns_query", ...
        self.names: dict[str, str] = {}

    @property
    def decided(self) -> bool:
        """Detection has settled (on a protocol, or on none)."""
        return not self._undecided

    @property
    def identified(self) -> bool:
        """The flow's protocol and naming fields are known (NAMING_EVENTS): a
        flow inspected only to identify it needs nothing more; the offline
        analysis (slowpath/offline.py, identify_only) and the engine for
        `what: [dpi]` flows stop parsing here. Also true once detection
        settled on nothing this slow path can read (no parser)."""
        return not self._undecided and (self.parser is None or self._named)

    @property
    def finished(self) -> bool:
        """Detection settled on a parser that will read nothing more of
        either direction (Parser.finished: encrypted from here on, or given
        up): the engine lets the flow go, as one no parser reads."""
        p = self.parser
        return (p is not None and not self._undecided and p.finished(Direction.TO_SERVER)
                and p.finished(Direction.TO_CLIENT))

    # -- input ---------------------------------------------------------------
    def data(self, direction: Direction, data: bytes) -> list[Event]:
        if not data:
            return []
        if self._undecided:
            held = self._pending
            if (held[Direction.TO_SERVER] is _NONE_HELD and held[Direction.TO_CLIENT] is _NONE_HELD
                    and len(data) < DETECT_BUFFER_BYTES):
                # A flow's first bytes (most flows are decided on them): rated
                # as they came, not copied into a buffer and out again; what
                # _detect and _flush would do with them held alone.
                data = bytes(data)
                name, conf = self._rate(data, direction)
                if conf >= DECIDE_AT:
                    self._decide(name, conf)
                    # (_flush would feed these bytes the same way; a tunnel
                    # starting in them cannot: it takes both directions.)
                    return self._feed(direction, data)
                pend = self._pending[direction] = _Pending()
                pend.data += data
                pend.rated_at, pend.rated = len(data), (name, conf)
                self._held += len(data)
                return []     # not full, and nothing the other way: _detect would wait
            pend = self._pend(direction)
            pend.data += data
            self._held += len(data)
            if not self._detect(direction, full=len(pend.data) >= DETECT_BUFFER_BYTES):
                return []
            return self._flush()
        return self._feed(direction, data)

    def data_run(self, direction: Direction, chunks: list[bytes]) -> list[list[Event]]:
        """data() of each of ``chunks`` (the next bytes of ``direction``, in
        order) in turn, each chunk's events in a list of its own: what as
        many data() calls give. It stops after a chunk that changed what the
        flow is known as (parser, detection, protocol, naming fields, a
        tunnel): a caller acting on each chunk's events in turn then reads
        that state as it was after the chunk; the chunks not taken go to
        data() one by one."""
        out = []
        state = (self.parser, self._undecided, self._named, self.app, self.inner_app, self._tunnel)
        decided = not self._undecided     # stays so while the loop goes on (else the state changed)
        for chunk in chunks:
            out.append(self._feed(direction, chunk) if decided and chunk else self.data(direction, chunk))
            if state != (self.parser, self._undecided, self._named, self.app, self.inner_app, self._tunnel):
                break
        return out

    def stream_event(self, ev) -> list[Event]:
        """One event of a flow's input: reassembly's Data / Gap / Eof
        (slowpath/reassembly.py) or a Datagram (slowpath/pcap.py)."""
        kind = type(ev).__name__
        if kind == "Data":
            return self.data(ev.direction, ev.data)
        if kind == "Datagram":
            return self.datagram(ev.direction, ev.payload)
        if kind == "Gap":
            return self.gap(ev.direction, ev.size)
        if kind == "Eof":
            return self.eof(ev.direction)
        raise TypeError(f"not a flow event: {ev!r}")

    def datagram(self, direction: Direction, payload: bytes) -> list[Event]:
        if self._undecided:
            self._pend(direction).datagrams.append(payload)
            self._held += len(payload)
            if not self._detect(direction, full=True, sample=payload):
                return []
            return self._flush()
        return self._feed(direction, payload)

    def gap(self, direction: Direction, size: int) -> list[Event]:
        if self._undecided or self.parser is None:
            return []
        out = self.parser.receive_gap(direction, size)
        if out and not self._named:
            self._note_names(out)
        return out

    def eof(self, direction: Direction) -> list[Event]:
        if self._undecided:
            # Stream over: settle for the best guess from what there is.
            self._detect(direction, full=True)
            out = self._flush() if not self._undecided else []
        else:
            out = []
        if self.parser is not None:
            tail = self.parser.receive_eof(direction)
            if tail and not self._named:
                self._note_names(tail)
            out += tail
        return out

    def settle(self) -> list[Event]:
        """The flow is over (both ends closed, timed out, or the capture
        ended): if detection is still waiting for bytes, settle on the best
        guess from what there is, as at the end of a stream, and parse what
        was buffered. A flow seen only mid-stream (application data whose
        start is not in the capture) is decided here. Both the offline
        analysis (analyse_flow) and the engine (at a flow's close) end a
        flow through this, so they name the same protocol."""
        out: list[Event] = []
        for d in Direction:
            if not self.decided:
                out += self.eof(d)
        return out

    def _pend(self, direction: Direction) -> _Pending:
        pend = self._pending[direction]
        if pend is _NONE_HELD:
            pend = self._pending[direction] = _Pending()
        return pend

    # -- detection -------------------------------------------------------------
    def _detect(self, direction: Direction, full: bool, sample: bytes | None = None) -> bool:
        best, conf = None, 0.0
        for d in (direction, _OTHER[direction]):
            if sample is not None and d == direction:
                name, c = self._rate(sample, d)
            else:
                pend = self._pending[d]
                if pend.datagrams:
                    at = -1
                elif pend.data:
                    at = len(pend.data)
                else:
                    continue
                if pend.rated_at != at:
                    pend.rated = self._rate(pend.datagrams[0] if at < 0 else bytes(pend.data), d)
                    pend.rated_at = at
                name, c = pend.rated
            if c > conf:
                best, conf = name, c
        if conf >= DECIDE_AT or (full and conf >= POSSIBLE):
            self._decide(best, conf)
            return True
        if full and self.kernel_app in self._by_name:
            self._decide(self.kernel_app, POSSIBLE)
            return True
        # Datagrams count too: a UDP flow nobody claims stops being probed
        # (and held) after a buffer's worth, as a stream does.
        if full and self._held >= DETECT_BUFFER_BYTES:
            self._decide(None, 0.0)   # a buffer's worth and nobody claims it: not ours to read
            return True
        return False

    def _rate(self, data: bytes, direction: Direction) -> tuple[str | None, float]:
        """registry.detect over this transport's probes: the highest rating,
        ties to the earlier plugin, so the first CERTAIN (the top of the
        scale, protocols/api.py) ends the search."""
        best, conf = None, 0.0
        for name, probe in self._probes:
            try:
                c = float(probe(data, direction))
            except Exception:   # a probe must not take detection down; it just does not match
                c = 0.0
            if c > conf:
                best, conf = name, c
                if c >= CERTAIN:
                    break
        return best, conf

    def _decide(self, name: str | None, conf: float) -> None:
        self._undecided = False
        self._named = False
        if self._tunnel:
            self.inner_app = name
        else:
            self.app, self.confidence = name, conf
        plugin = self._by_name.get(name) if name else None
        self.parser = plugin.parser_factory(self.transport) if plugin and plugin.parser_factory else None

    def _flush(self) -> list[Event]:
        out: list[Event] = []
        # The initiator's bytes first: request before response, as sent.
        for d in (Direction.TO_SERVER, Direction.TO_CLIENT):
            pend = self._pending[d]
            for dg in pend.datagrams:
                out += self._feed(d, dg)
            if pend.data:
                out += self._feed(d, bytes(pend.data))
            self._pending[d] = _NONE_HELD
        self._held = 0
        return out

    def _feed(self, direction: Direction, data: bytes) -> list[Event]:
        if self.parser is None:
            return []
        events = self.parser.receive_data(data, direction)
        if not self._named and events:
            self._note_names(events)
        for i, ev in enumerate(events):
            kind = ev.kind
            if kind == "http_request" or kind == "http_response":
                if kind == "http_request":
                    self._last_request = ev
                # A gRPC call on an HTTP/2 flow makes it a gRPC flow (grpc > http2).
                if ev.stream_id and self.app == "http2" and is_grpc(ev.content_type):
                    self.app = "grpc"
            elif kind in TUNNEL_EVENTS and not self._tunnel:
                self._tunnel = True
                if (kind == "http_tunnel" and ev.via == "upgrade" and "http2" in self._by_name
                        and ev.target.strip().lower() == H2C_UPGRADE):
                    # h2c: the same connection goes on in HTTP/2.
                    self.app = self.inner_app = "http2"
                    self.parser = HttpTwoParser(upgrade_request=self._last_request,
                                                offsets=(ev.to_server_offset, ev.to_client_offset))
                    tail = []
                    for d, b in ev.rest:
                        tail += self._feed(d, b)
                    return events[:i + 1] + tail
                # Everything after the tunnel's start is another protocol:
                # parse it afresh (the HTTP parser has stopped).
                self._undecided = True
                self.parser = None
                rest = getattr(ev, "rest", None)
                tail = []
                if rest:
                    for d, b in rest:
                        tail += self.data(d, b)
                return events[:i + 1] + tail
        return events

    def _asks_h2c(self, request) -> bool:
        """An HTTP/1 request offering the upgrade to HTTP/2 this slow path reads."""
        upgrade = request.header("upgrade")
        return (upgrade is not None and "http2" in self._by_name
                and H2C_UPGRADE in (t.strip().lower() for t in upgrade.split(",")))

    def _note_names(self, events: list[Event]) -> None:
        current = self.inner_app if self._tunnel else self.app
        listed = current in _WAIT_FOR_NAMING
        for ev in events:
            kind = ev.kind
            if kind in NAMING_EVENTS:
                how = NAMING_EVENTS[kind]
                if how is not None:
                    key, read = how
                    value = read(ev)
                    if value is not None:
                        self.names.setdefault(key, value)
                if kind == "http_request" and self._asks_h2c(ev):
                    # The answer decides what the flow speaks (101: HTTP/2,
                    # else HTTP/1): it, not this request, identifies the flow.
                    continue
                self._named = True
                return
            if not listed:
                self._named = True
                return


def analyse_flow(flow, plugins=None, kernel_app: str | None = None) -> tuple[FlowAnalyzer, list[Event]]:
    """A whole flow of a capture (slowpath/pcap.py Flow: its reassembled
    Data / Gap / Eof events, or Datagrams) through detection and the
    parser; at the end of the capture, detection settles on what it has."""
    an = FlowAnalyzer(flow.proto, plugins, kernel_app)
    events: list[Event] = []
    for ev in flow.events:
        events += an.stream_event(ev)
    return an, events + an.settle()
