"""The per-flow inspector: compiled rules applied to one flow's parser events.

Sans-IO like the parsers: a :class:`FlowInspector` takes the parser events of
one flow (protocols/http.py, tls.py, dns.py) and returns :class:`Hit` s. It
does no I/O and knows nothing of BPF or asyncio; the caller decides what a
``block`` hit does to the flow and writes the log.

A flow is inspected for what its policy rule asks (:meth:`RuleSet.flow`):
``waf`` runs the WAF, ``dlp`` the DLP rules, ``dpi`` the domain rules.

Severity follows Suricata: 1 is the most severe.
"""
from __future__ import annotations

import hyperscan

from protocols.api import Direction, Event, Malformed
from protocols.dns import DnsMessage
from protocols.http import HttpAnomalyEvent, HttpBody, HttpMessageEnd, HttpRequest, HttpResponse
from protocols.http2 import Http2RstStream
from protocols.quic import QuicClientHello
from protocols.tls import TlsClientHello
from slowpath import normalize
from slowpath.dlp import DETECTORS, DLP_TAIL_BYTES, DlpRule, dlp_prefilter
from slowpath.domains import DOMAIN_FIELDS, DomainIndex, DomainRule, request_host
from slowpath.hits import MAX_MATCHED_CHARS, RESERVED_IDS, Hit, shown
from slowpath.waf import (ANOMALY_BASE_ID, ANOMALY_IDS, ANOMALY_SEVERITY, BINARY_BODY_TYPES, MAX_MATCH_EVENTS,
                          MAX_WAF_BODY_BYTES, SCANNED_HEADERS, WAF_CATEGORIES, WAF_FIELDS, ActiveSignature,
                          compile_db, compile_prefilter, hs_flags, prefilter_clean)

# Direction.TO_SERVER as a module name: on Python 3.11 an enum member read
# through its class is a descriptor call (~0.25 us), twice per request here.
_TO_SERVER = Direction.TO_SERVER
_TO_CLIENT = Direction.TO_CLIENT
# The event types FlowInspector.feed reads (its branches, in their order:
# tests/unit/test_inspector_feed.py holds the two together); an event of
# any other type (Redis, MySQL, SMTP, Kafka, ...: ~half the events of an
# inspect-everything replay of the corpus) gives no hit and changes nothing,
# and is answered before the chain of isinstance tests.
FED_TYPES = (HttpBody, HttpRequest, HttpResponse, HttpMessageEnd, Http2RstStream, HttpAnomalyEvent, Malformed,
             TlsClientHello, QuicClientHello, DnsMessage)
# The kinds of FED_TYPES by what reads them (RuleSet.kinds_read): the WAF (its
# signatures and request anomalies) and DLP read HTTP messages, domain rules
# the naming events. Malformed is in neither: feed reads it only to end a
# message whose body the WAF or DLP holds, which only these HTTP kinds start.
# (feed takes its events by type, subclasses too: a plugin's event class
# derived from one of these keeps its base's kind, or kinds_read misses it.)
HTTP_KINDS = frozenset(t.kind for t in (HttpBody, HttpRequest, HttpResponse, HttpMessageEnd, Http2RstStream,
                                        HttpAnomalyEvent))
NAME_KINDS = frozenset(t.kind for t in (HttpRequest, TlsClientHello, QuicClientHello, DnsMessage))
# Whether an event type is (a subclass of) one of FED_TYPES, per type seen:
# as many entries as event classes the parsers and plugins define.
_FED: dict[type, bool] = {}
# What a policy rule's inspect.what may ask for.
WHAT = frozenset({"waf", "dlp", "dpi"})
# What a request's protocol anomaly may do on a WAF flow (the http_anomaly setting).
ANOMALY_ACTIONS = ("block", "alert", "pass")
# Scan results kept per rule set, for values up to MAX_CACHED_SCAN_BYTES:
# header values (User-Agent, Accept, a session's Cookie), query values and
# request hosts repeat across requests and connections, and a dict lookup
# costs far less than a scan with its Python callback. Bounds: about
# 4096 x 256 bytes; when full the cache starts over (a client churning it
# costs what no cache would).
MAX_CACHED_SCANS = 4096
MAX_CACHED_SCAN_BYTES = 256
# A request's whole header block (names and values) kept with its header
# hits when its text is at most this long: a client sends the same block
# with every request (the parser hands over one tuple per distinct block),
# and one lookup replaces a lookup per field. 4096 such blocks: about 8 MiB.
MAX_CACHED_BLOCK_CHARS = 2048


class RuleSet:
    """Loaded, validated and compiled rules. Build with slowpath/rulesfile.py's :func:`load_rules`.

    Not thread-safe: each Hyperscan database (one per WAF field) has one
    scratch space (shared by rule sets with the same WAF patterns), and the
    slow path scans from one thread.
    """

    def __init__(self, sigs: list[ActiveSignature], dlp: list[DlpRule], domains: list[DomainRule],
                 source: str = "") -> None:
        self.source = source
        self.waf = tuple(sigs)
        self.dlp = tuple(dlp)
        self.domains = tuple(domains)
        # Per field, which signatures (by index) apply.
        self._for_field = {f: tuple(i for i, a in enumerate(sigs) if f in a.sig.fields) for f in WAF_FIELDS}
        # One database per field, of that field's signatures only: a scan's
        # cost grows with the patterns in it (a query value, scanned for the
        # one "args" signature, is not run through the thirty URI ones).
        # Pattern ids are positions in _for_field[field].
        self._dbs = {f: compile_db(tuple(sigs[i].sig.pattern.encode("utf-8") for i in idx),
                                   tuple(hs_flags(sigs[i].som) for i in idx))
                     for f, idx in self._for_field.items() if idx}
        self._db = next(iter(self._dbs.values()), None)   # None: no WAF signature at all
        # A request's "uri" field and, when a signature reads "args", its
        # query values, joined by newlines and scanned once with all their
        # signatures (waf.compile_prefilter): no match, and no field has a
        # hit; else each is scanned alone as before. One scan instead of one
        # per field, and no per-field cache entries for the target's values
        # that change with every request. None: every field scanned alone.
        self._pre_args = bool(self._for_field["args"])
        pre = sorted(set(self._for_field["uri"]) | set(self._for_field["args"]))
        self._pre = compile_prefilter(tuple(sigs[i].sig.pattern.encode("utf-8") for i in pre)) if pre else None
        self._pre_cache: dict[bytes, bool] = {}    # joined fields -> no match
        # Detectors wanted per direction, each with the rules that asked.
        self._dlp_by_direction: dict[Direction, dict[str, list[DlpRule]]] = {d: {} for d in Direction}
        for r in dlp:
            for d in r.directions:
                for det in r.detectors:
                    self._dlp_by_direction[d].setdefault(det, []).append(r)
        self._no_dlp: dict[Direction, dict] = {d: {} for d in Direction}
        # Per direction, one Hyperscan scan of a chunk tells which detectors
        # may match it; only those run their regex (slowpath/dlp.py).
        self._dlp_prefilter = {d: dlp_prefilter(tuple(self._dlp_by_direction[d])) for d in Direction}
        self._domain_index = {f: DomainIndex() for f in DOMAIN_FIELDS}
        self._scan_cache: dict[tuple[str, bytes], list[tuple[ActiveSignature, bytes]]] = {}
        self._domain_cache: dict[tuple[str, str], list[DomainRule]] = {}
        self._header_cache: dict[tuple[str, str, Direction], list[Hit]] = {}   # (name, value, direction): hits
        # (the request's headers, direction): the hits of all its fields, in order
        self._block_cache: dict[tuple[tuple, Direction], list[Hit]] = {}
        for i, r in enumerate(domains):
            for f in r.fields:
                for p in r.patterns:
                    self._domain_index[f].add(p, i)

    def flow(self, what: frozenset[str] | set[str], http_anomaly: str = "block") -> "FlowInspector":
        """An inspector for one flow doing ``what`` ⊆ {"waf", "dlp", "dpi"} (the policy rule's
        inspect.what); ``http_anomaly`` (block, alert, pass) is what a request's protocol
        anomaly does on a flow with ``waf``."""
        # (One subset test of the frozenset the engine passes, not a set built
        # and subtracted per flow: called for every flow opened.)
        what = what if what.__class__ is frozenset else frozenset(what)
        if not what <= WHAT:
            raise ValueError(f"unknown inspection {sorted(what - WHAT)}: use {sorted(WHAT)}")
        if http_anomaly not in ANOMALY_ACTIONS:
            raise ValueError(f"http_anomaly {http_anomaly!r}: use one of {ANOMALY_ACTIONS}")
        return FlowInspector(self, what, http_anomaly)

    def kinds_read(self, what: frozenset[str]) -> frozenset[str]:
        """The event kinds a flow's inspector for ``what`` (RuleSet.flow) can
        get a hit from with these rules: HTTP_KINDS for the WAF (whose request
        anomalies are hits even without a signature) and for DLP with a rule,
        NAME_KINDS for domain rules. Any other event goes through feed
        unread (FED_TYPES)."""
        kinds = frozenset()
        if "waf" in what or ("dlp" in what and self.dlp):
            kinds |= HTTP_KINDS
        if "dpi" in what and self.domains:
            kinds |= NAME_KINDS
        return kinds

    def summary(self) -> dict:
        per = {c: sum(1 for a in self.waf if a.sig.category == c) for c in WAF_CATEGORIES}
        return {"waf_signatures": len(self.waf), "waf_by_category": per,
                "custom_signatures": sum(1 for a in self.waf if a.sig.id not in RESERVED_IDS),
                "dlp_rules": len(self.dlp), "domain_rules": len(self.domains),
                "domain_patterns": sum(len(r.patterns) for r in self.domains)}

    # -- scanning ----------------------------------------------------------------
    def scan_waf(self, wfield: str, data: bytes) -> list[tuple[ActiveSignature, bytes]]:
        """Signatures for ``wfield`` (uri, args, headers, body) that match
        ``data``, each once, with the text it matched."""
        if self._db is None or not data:
            return []
        if len(data) <= MAX_CACHED_SCAN_BYTES:
            key = (wfield, data)
            got = self._scan_cache.get(key)
            if got is None:
                if len(self._scan_cache) >= MAX_CACHED_SCANS:
                    self._scan_cache.clear()
                got = self._scan_cache[key] = self._scan(wfield, data)
            return got
        return self._scan(wfield, data)

    def request_clean(self, uri: bytes, args: list[bytes]) -> bool:
        """True when no "uri" signature can match ``uri`` and no "args" one
        any of ``args`` (the prefilter must exist: ``_pre``)."""
        data = b"\n".join((uri, *args)) if args and self._pre_args else uri
        got = self._pre_cache.get(data)
        if got is None:
            got = prefilter_clean(self._pre, data)
            if len(data) <= MAX_CACHED_SCAN_BYTES:
                if len(self._pre_cache) >= MAX_CACHED_SCANS:
                    self._pre_cache.clear()
                self._pre_cache[data] = got
        return got

    def _scan(self, wfield: str, data: bytes) -> list[tuple[ActiveSignature, bytes]]:
        db = self._dbs.get(wfield)
        if db is None:
            return []
        found: dict[int, tuple[int, int]] = {}
        try:
            db.scan(data, _on_match, 0, [found, 0])   # (handler, flags, context) by position: see waf.prefilter_clean
        except hyperscan.ScanTerminated:
            pass
        if not found:
            return []
        out = []
        sig_of = self._for_field[wfield]
        for idx in sorted(found):              # sig_of ascends: rule order, as one database gave
            a = self.waf[sig_of[idx]]
            start, end = found[idx]
            if not a.som:
                start = max(0, end - MAX_MATCHED_CHARS)
            out.append((a, data[start:end]))
        return out

    def match_domain(self, dfield: str, name: str) -> list[DomainRule]:
        key = (dfield, name)
        got = self._domain_cache.get(key)
        if got is None:
            if len(self._domain_cache) >= MAX_CACHED_SCANS:
                self._domain_cache.clear()
            got = [self.domains[i] for i in self._domain_index[dfield].match(name)]
            if len(name) <= MAX_CACHED_SCAN_BYTES:
                self._domain_cache[key] = got
        return got


def _on_match(idx: int, start: int, end: int, flags: int, matches: list) -> bool:
    """Hyperscan's match callback for RuleSet._scan: ``matches`` is [first
    (start, end) by pattern id, events so far]. One function for every scan
    (no closure made per scan)."""
    found = matches[0]
    if idx not in found:
        found[idx] = (start, end)
    matches[1] += 1
    return matches[1] >= MAX_MATCH_EVENTS       # True stops the scan


# Direction's members in order, iterated once: a flow's inspector makes a
# DLP stream per direction, and iterating the Enum class costs more than
# the streams.
_BOTH_DIRECTIONS = tuple(Direction)


class _DlpStream:
    """One direction's body, as DLP sees it across chunks."""
    __slots__ = ("tail", "base", "done", "reported", "used", "clean")

    def __init__(self) -> None:
        self.tail = b""        # the last DLP_TAIL_BYTES scanned
        self.base = 0          # body offset of tail[0]
        self.done = 0          # matches ending at or before this body offset were judged
        self.reported: set[tuple[str, str]] = set()   # (rule, detector) hit in this message
        # A chunk was scanned (_dlp_chunk, the one writer of the fields
        # above; it always keeps a tail): False while all four are as new,
        # so _end_message has nothing to do with this stream.
        self.used = False
        # The tail is the whole buffer the last chunk's scan read (none of
        # it cut off) and the prefilter ruled out every detector of the
        # direction in it: the message's final scan, of those same bytes,
        # can find nothing (_end_message skips it).
        self.clean = False


# A direction's stream before DLP scanned anything: one shared _DlpStream,
# never written (_dlp_chunk, the one writer, swaps in the direction's own
# first), as every _DlpStream is as new until then. Most flows (DNS, TLS, a
# bodiless request) never scan a body: no two objects and sets per flow.
_UNUSED_STREAM = _DlpStream()
_UNUSED_STREAMS = {d: _UNUSED_STREAM for d in _BOTH_DIRECTIONS}


class FlowInspector:
    """Rules applied to one flow's parser events. ``feed`` returns the hits
    an event completes; ``close`` those still pending when the flow ends."""

    def __init__(self, rules: RuleSet, what: frozenset[str], http_anomaly: str = "block") -> None:
        self.rules = rules
        self.what = what
        self._waf = "waf" in what and rules._db is not None
        # Protocol anomalies of requests become hits on a WAF flow (as
        # ModSecurity CRS's protocol enforcement), unless let pass.
        self._anomaly_action = http_anomaly if "waf" in what and http_anomaly != "pass" else None
        self._dpi = "dpi" in what and bool(rules.domains)
        self._dlp = rules._dlp_by_direction if "dlp" in what else rules._no_dlp
        self._dlp_prefilter = rules._dlp_prefilter
        self._streams = _UNUSED_STREAMS.copy()
        # The request whose body the WAF is collecting: None when none is;
        # b"" (armed, nothing yet: most requests have no body, so no buffer
        # is made for them, _waf_request); then a bytearray.
        self._body: bytearray | bytes | None = None
        self._body_type: str | None = None
        # HTTP/2 streams interleave: each stream has its own body state (the
        # three fields above), swapped in by _use; stream 0 (HTTP/1) is the
        # flow's own. A stream's state goes when both its messages ended or
        # it was reset (the parser bounds the streams open at once).
        self._sid = 0
        self._parked: dict[int, tuple] = {}
        # (headers, direction, hits) of the last request's header block
        # (_waf_request). The flow's last request event holds the same tuple
        # (the engine's http_tx), so keeping it here holds no more memory.
        self._last_block: tuple = (None, None, None)
        # (host, direction, hits, Host field or None) of the last request's host (_request).
        self._last_host: tuple = (None, None, None, None)
        self._ended: dict[int, int] = {}     # stream -> bit per direction whose message ended

    # -- input --------------------------------------------------------------------
    def feed(self, ev: Event) -> list[Hit]:
        # The two events of every HTTP/1 request first, by exact type (the
        # isinstance chain below costs a test per kind before theirs); the
        # same work as their branches below.
        t = type(ev)
        if t is HttpMessageEnd and not ev.stream_id:
            d = ev.direction
            if d == _TO_SERVER and self._body is not None and not self._body:
                self._body = None     # no body came: nothing to scan (_end_message's own first step)
            if (d != _TO_SERVER or self._body is None) and (not self._dlp[d] or not self._streams[d].used):
                return []        # nothing held for the message: what _end_message finds, less its call
            return self._end_message(d)
        if t is HttpRequest and not ev.stream_id and not self._sid:
            return self._request(ev)
        if t is HttpResponse and not ev.stream_id and not self._sid:
            # An HTTP/1 response head: the previous response's body, if one
            # is held, is judged (_end_message(TO_CLIENT), its branch below);
            # mostly none is (its end event judged it): nothing to call.
            if not self._dlp[_TO_CLIENT] or not self._streams[_TO_CLIENT].used:
                return []
            return self._end_message(_TO_CLIENT)
        fed = _FED.get(t)
        if fed is None:
            fed = _FED[t] = issubclass(t, FED_TYPES)
        if not fed:
            return []
        if isinstance(ev, HttpBody):
            if ev.stream_id != self._sid:
                self._use(ev.stream_id)
            out = self._dlp_chunk(ev.direction, ev.data, final=False) if self._dlp[ev.direction] else []
            if ev.direction == _TO_SERVER and self._body is not None:
                if self._body.__class__ is bytes:
                    self._body = bytearray()      # the first bytes of an armed body (b"")
                self._body += ev.data[:MAX_WAF_BODY_BYTES - len(self._body)]
                if len(self._body) >= MAX_WAF_BODY_BYTES:
                    out += self._waf_body()       # full: scan now; the rest goes unscanned
            return out
        if isinstance(ev, HttpRequest):
            if ev.stream_id != self._sid:
                self._use(ev.stream_id)
            return self._request(ev)
        if isinstance(ev, HttpResponse):
            if ev.stream_id != self._sid:
                self._use(ev.stream_id)
            return self._end_message(Direction.TO_CLIENT)
        if isinstance(ev, HttpMessageEnd):
            if not ev.stream_id:
                return self._end_message(ev.direction)
            return self._end_stream(ev.stream_id, 1 << ev.direction)
        if isinstance(ev, Http2RstStream):
            return self._end_stream(ev.stream_id, 3)
        if isinstance(ev, HttpAnomalyEvent):
            return self._anomalies((ev.name,), ev.direction)
        if isinstance(ev, Malformed):
            # The parser gave up inside a message: the WAF still reads the
            # part of the body it got (the flow's parser_error action follows).
            out = self._end_message(ev.direction)
            for sid in list(self._parked):       # and so of every HTTP/2 stream
                self._use(sid)
                out += self._end_message(ev.direction)
            return out
        if isinstance(ev, (TlsClientHello, QuicClientHello)):
            # QUIC's ClientHello is TLS's (RFC 9001): domain rules on the SNI apply alike.
            if self._dpi and ev.sni:
                return self._domain("tls_sni", ev.sni, ev.direction)
            return []
        if isinstance(ev, DnsMessage):
            if self._dpi and not ev.response:
                out = []
                for q in ev.questions:
                    out += self._domain("dns_query", q.name, ev.direction)
                return out
            return []
        return []

    def _request(self, ev: HttpRequest) -> list[Hit]:
        """A request head of the current stream."""
        # A body cut short by a gap: what is held of it is scanned now
        # (_end_message; most requests follow a message that ended: no call).
        if self._body is None and (not self._dlp[_TO_SERVER] or not self._streams[_TO_SERVER].used):
            out = []
        else:
            out = self._end_message(_TO_SERVER)
        if ev.anomalies:
            out += self._anomalies(ev.anomalies, ev.direction)
        if self._dpi:
            d, last = ev.direction, self._last_host
            # The Host field, when it is what names the host (request_host:
            # an origin-form target, not CONNECT); the same field as the last
            # request's in the same direction names the same host: its hits,
            # without request_host.
            field = ev.host if ev.uri[:1] == "/" and ev.method.upper() != "CONNECT" else None
            if field is not None and field == last[3] and d == last[1]:
                hits = last[2]
            else:
                host = request_host(ev)
                hits = None
                if host:
                    if last[0] == host and last[1] == d:
                        hits = last[2]        # the flow's requests name one host, mostly
                    else:
                        hits = self._domain("http_host", host, d)
                    self._last_host = (host, d, hits, field)
            if hits:
                out += hits
        if self._waf:
            out += self._waf_request(ev)
        return out

    def close(self) -> list[Hit]:
        """The flow ended: scan what is still held (an unfinished body)."""
        if self._body is None and not self._parked and not self._streams[_TO_SERVER].used \
                and not self._streams[_TO_CLIENT].used:
            return []    # nothing held (most flows: every message ended): what the calls below find
        out = self._end_message(Direction.TO_SERVER) + self._end_message(Direction.TO_CLIENT)
        for sid in list(self._parked):
            self._use(sid)
            out += self._end_message(Direction.TO_SERVER) + self._end_message(Direction.TO_CLIENT)
        return out

    # -- HTTP/2 streams ---------------------------------------------------------------
    def _use(self, sid: int) -> None:
        """Make ``sid``'s body state the current one (a new stream's is fresh)."""
        self._parked[self._sid] = (self._streams, self._body, self._body_type)
        got = self._parked.pop(sid, None)
        if got is None:
            got = (_UNUSED_STREAMS.copy(), None, None)
        self._streams, self._body, self._body_type = got
        self._sid = sid

    def _end_stream(self, sid: int, bits: int) -> list[Hit]:
        """Messages of stream ``sid`` ended (``bits``: one per direction; 3 for
        a reset); when both have, its state goes."""
        if sid != self._sid:
            self._use(sid)
        out = []
        for d in Direction:
            if bits & (1 << d):
                out += self._end_message(d)
        done = self._ended.pop(sid, 0) | bits
        if done == 3:
            self._use(0)
            self._parked.pop(sid, None)
        else:
            self._ended[sid] = done
        return out

    # -- WAF ----------------------------------------------------------------------
    def _anomalies(self, names, d: Direction) -> list[Hit]:
        """Hits for a request's protocol anomalies (responses' are only logged:
        a server's odd answer is not an attack on it)."""
        if not names or self._anomaly_action is None or d != Direction.TO_SERVER:
            return []
        return [Hit(ANOMALY_IDS.get(n, ANOMALY_BASE_ID), f"HTTP protocol anomaly {n}", "protocol",
                    self._anomaly_action, ANOMALY_SEVERITY, "http.protocol", shown(str(n)), d)
                for n in dict.fromkeys(names)]

    def _waf_request(self, ev: HttpRequest) -> list[Hit]:
        rs, d = self.rules, ev.direction
        out: list[Hit] = []
        uri, args = normalize.uri_and_args(ev.uri)
        if rs._pre is None or not rs.request_clean(uri, args):
            out += self._waf_hits("uri", "http.uri", uri, d)
            if rs._for_field["args"]:
                seen: set[int] = set()
                for v in args:
                    out += self._waf_hits("args", "http.args", v, d, seen)
        if rs._for_field["headers"]:
            last = self._last_block
            if last[0] is ev.headers and last[1] == d:
                # The same header block as this flow's last request (the
                # parser hands a client's repeated fields over as one
                # object, protocols/http.py _Block): its hits, no lookup.
                hits = last[2]
            else:
                hits = self._block_hits(ev.headers, d)
                self._last_block = (ev.headers, d, hits)
            if hits:
                out += hits
        ctype = (ev.content_type or "").lower()
        if rs._for_field["body"] and not ctype.startswith(BINARY_BODY_TYPES):
            self._body, self._body_type = b"", ev.content_type     # armed; a buffer when a body comes
        return out

    def _block_hits(self, headers, d: Direction) -> list[Hit]:
        """The hits of a request's header block, from the rule set's cache of blocks."""
        rs = self.rules
        block = (headers, d)
        hits = rs._block_cache.get(block)
        if hits is None:
            hits = self._header_hits(headers, d)
            if sum(len(n) + len(v) for n, v in headers) <= MAX_CACHED_BLOCK_CHARS:
                if len(rs._block_cache) >= MAX_CACHED_SCANS:
                    rs._block_cache.clear()
                rs._block_cache[block] = hits
        return hits

    def _header_hits(self, headers, d: Direction) -> list[Hit]:
        """The hits of a request's header fields, field by field, in order."""
        rs, out = self.rules, []
        cache = rs._header_cache
        for name, val in headers:
            key = (name, val, d)
            hits = cache.get(key)
            if hits is None:
                low = name.lower()
                hits = self._waf_hits("headers", f"http.header.{low}",
                                      normalize.value(val.encode("latin-1", "replace")), d) \
                    if low in SCANNED_HEADERS and val else []
                if len(val) <= MAX_CACHED_SCAN_BYTES:
                    if len(cache) >= MAX_CACHED_SCANS:
                        cache.clear()
                    cache[key] = hits
            if hits:
                out += hits
        return out

    def _waf_body(self) -> list[Hit]:
        body, ctype = bytes(self._body or b""), self._body_type
        self._body = None
        if not body:
            return []
        d = Direction.TO_SERVER
        out = self._waf_hits("body", "http.request_body", normalize.body(body, ctype), d)
        if "x-www-form-urlencoded" in (ctype or "").lower() and self.rules._for_field["args"]:
            seen: set[int] = set()
            for v in normalize.form_values(body):
                out += self._waf_hits("args", "http.args", v, d, seen)
        return out

    def _waf_hits(self, wfield: str, label: str, data: bytes, d: Direction,
                  seen: set[int] | None = None) -> list[Hit]:
        out = []
        for a, text in self.rules.scan_waf(wfield, data):
            if seen is not None:              # args: one hit per signature over all values
                if a.sig.id in seen:
                    continue
                seen.add(a.sig.id)
            out.append(Hit(a.sig.id, a.sig.name, a.sig.category, a.action, a.sig.severity, label,
                           shown(text), d))
        return out

    # -- DLP ----------------------------------------------------------------------
    def _end_message(self, d: Direction) -> list[Hit]:
        out = []
        if d == _TO_SERVER and self._body is not None:
            if self._body:
                out += self._waf_body()
            else:
                self._body = None     # no body came: nothing to scan (what _waf_body would find)
        if self._dlp[d]:
            st = self._streams[d]
            if st.clean:
                # The final scan would read the tail again, bytes the
                # prefilter already cleared of every detector (most response
                # bodies): no hit; the stream starts over as that scan's would.
                self._streams[d] = _UNUSED_STREAM
                return out
            if st.tail:
                out += self._dlp_chunk(d, b"", final=True)
            if st.base or st.done or st.reported:      # else it is as new: keep it
                self._streams[d] = _UNUSED_STREAM       # as new (_dlp_chunk makes its own when it scans)
        return out

    def _dlp_chunk(self, d: Direction, data: bytes, final: bool) -> list[Hit]:
        """Scan the kept tail plus ``data``. A match touching the end of what
        is known waits for the next chunk (more digits may follow) unless the
        message is over; one judged before is not judged again."""
        st = self._streams[d]
        buf = st.tail + data
        if not buf:
            return []
        if st is _UNUSED_STREAM:
            st = self._streams[d] = _DlpStream()    # the shared one is never written
        st.used = True
        # When the tail was cut from a longer body, its first byte only
        # serves as left context (a lookbehind sees it; no match starts there).
        pos = 1 if st.base > 0 else 0
        end_ok = len(buf) if final else len(buf) - 1
        label = "http.request_body" if d == Direction.TO_SERVER else "http.response_body"
        out = []
        # The prefilter scans the same buffer the regexes scan (a superset of
        # their matches): a detector it leaves out has no match in it.
        pf = self._dlp_prefilter[d]
        may = pf.candidates(buf) if pf is not None else None
        scanned = False        # a detector's regex ran (else the prefilter ruled them all out)
        for name, rules in self._dlp[d].items():
            if may is not None and name not in may:
                continue
            scanned = True
            det = DETECTORS[name]
            if all((r.name, name) in st.reported for r in rules):
                continue
            for m in det.regex.finditer(buf, pos):
                if st.base + m.end() <= st.done or m.end() > end_ok:
                    continue
                text = det.check(m)
                if text is None:
                    continue
                for r in rules:
                    if (r.name, name) not in st.reported:
                        st.reported.add((r.name, name))
                        out.append(Hit(det.id, r.name, name, r.action, r.severity, label,
                                       shown(text), d))
                break
        st.done = st.base + end_ok
        keep = min(len(buf), DLP_TAIL_BYTES)
        st.base += len(buf) - keep
        st.tail = buf[len(buf) - keep:]
        st.clean = not scanned and keep == len(buf)
        return out

    # -- domains ------------------------------------------------------------------
    def _domain(self, dfield: str, name: str, d: Direction) -> list[Hit]:
        rules = self.rules.match_domain(dfield, name)
        if not rules:            # most names: no list comprehension (a function call on 3.11) built
            return []
        return [Hit(r.id, r.name, "domain", r.action, r.severity, DOMAIN_FIELDS[dfield], shown(name), d)
                for r in rules]
