"""L7 allow-lists: what a policy rule's flows may carry (its `l7:` list).

The policy model (datapath/policy_model.py L7Spec) says what a rule allows:
HTTP requests (method and path regexes, host, headers), gRPC calls
(service, method), DNS query names, TLS server names (SNI, over TCP or in
QUIC's Initial packets), Kafka requests (api, version, client id,
topics). :func:`compile_lists` turns the lists of a checked policy into
an :class:`L7Policy` (rule id -> RuleAllow), once per policy: each rule's
method and path regexes go into one Hyperscan database each (no
backtracking: a request cannot make a match slow; one scan per request
whatever the number of entries), its names into one Python regex of
literal labels and one-label runs.

The engine (slowpath/engine.py) wraps the per-flow inspector of a flow
whose rule has a list in an :class:`L7Inspector`: every request or query
the list does not allow, and every event of a protocol it does not name,
is a ``block`` hit whose signature names the rule and what did not match
("l7 allow-list of rule web: GET /admin not allowed").

The lists travel from the daemon to its workers as JSON (:func:`spec_of`,
L7Policy.from_spec): the same text compiled again in each worker.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import hyperscan

from datapath.policy_check import L7_HS_FLAGS, l7_expression, l7_name_regex
from protocols import kafka
from protocols.api import Direction
from slowpath.domains import request_host
from slowpath.hits import Hit, shown

# Signature ids of allow-list blocks, one per kind of mismatch, inside the
# range the built-ins reserve (slowpath/hits.py RESERVED_IDS; custom rules
# cannot take them). The rule is named in the signature text and the field.
L7_IDS = {"l7.http": 390001, "l7.grpc": 390002, "l7.dns": 390003, "l7.protocol": 390004,
          "l7.tls": 390006, "l7.kafka": 390007}
L7_CATEGORY = "l7-policy"
# A policy block is a decision, not a guess: Suricata's severity 2 (medium),
# below the attacks the WAF names (1).
L7_SEVERITY = 2
# (method, target) pairs remembered per rule with the entries they match:
# clients repeat the same few requests; a dict lookup is cheaper than two
# scans. When full it starts over (a client churning it costs what no cache would).
MAX_CACHED_REQUESTS = 4096
# Characters of a target kept for a cache key: longer targets are matched
# every time (they are rare, and would make the cache's memory unbounded).
MAX_CACHED_TARGET = 256
# Event kinds of each list's protocol family (an HTTP/2 or gRPC parser's
# events start with these too). Malformed input and anomalies are the
# parser_error / http_anomaly settings' business, never a protocol mismatch.
FAMILIES = {"http": ("http", "grpc"), "grpc": ("http", "grpc"), "dns": ("dns",),
            "tls": ("tls", "quic"), "kafka": ("kafka",)}
# The events naming a server a `tls` list checks: TLS's ClientHello and
# QUIC's (its TLS ClientHello, or Google QUIC's CHLO). Each one is checked
# (a second ClientHello after a HelloRetryRequest or a Retry too).
HELLO_KINDS = ("tls_client_hello", "quic_client_hello")
NEUTRAL_KINDS = ("malformed", "http_anomaly")
_HS_FLAGS = 0
for _f in L7_HS_FLAGS:
    _HS_FLAGS |= getattr(hyperscan, "HS_FLAG_" + _f)


def is_grpc(content_type: str | None) -> bool:
    """A gRPC request's content-type: application/grpc, application/grpc+proto, ..."""
    if not content_type:
        return False
    ct = content_type.strip().lower()
    return ct == "application/grpc" or ct.startswith(("application/grpc+", "application/grpc;"))


def grpc_call(target: str) -> tuple[str, str] | None:
    """(service, method) of a gRPC request target "/package.Service/Method"."""
    if not target.startswith("/"):
        return None
    service, sep, method = target[1:].partition("/")
    if not sep or not service or not method or "/" in method or "?" in method:
        return None
    return service, method


def normalise_target(target: str) -> str:
    """The request target a path pattern is matched against: the path of an
    absolute-form target, percent-escapes decoded once, dot segments
    resolved and repeated slashes merged (RFC 3986 5.2.4), so
    "/public/../admin" cannot pass as "/public/.*"; the query kept as sent."""
    if not target.startswith("/"):
        if "://" in target:                      # absolute-form: the path after the authority
            rest = target.split("://", 1)[1]
            cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
            target = rest[cut:]
            if not target.startswith("/"):
                target = "/" + target
        else:
            return target                        # "*" (OPTIONS), an authority (CONNECT): as sent
    path, sep, query = target.partition("?")
    path = unquote_to_bytes(path).decode("latin-1")
    out: list[str] = []
    for seg in path.split("/"):
        if seg == "..":
            if out:
                out.pop()
        elif seg and seg != ".":
            out.append(seg)
    norm = "/" + "/".join(out)
    if out and (path.endswith("/") or path.endswith("/.") or path.endswith("/..")):
        norm += "/"
    return norm + sep + query


def _database(patterns: list[str | None]):
    """(Hyperscan database, entry indexes of each of its pattern ids) of the
    entries' patterns (None: that entry has none); None when no entry has
    one. A pattern several entries share ("GET" in most) is compiled once:
    each match costs a Python callback."""
    entries: dict[str, list[int]] = {}
    for i, p in enumerate(patterns):
        if p is not None:
            entries.setdefault(p, []).append(i)
    if not entries:
        return None
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=[l7_expression(p) for p in entries], ids=list(range(len(entries))),
               flags=[_HS_FLAGS] * len(entries))
    return db, tuple(entries.values())


def _scan(compiled, data: bytes) -> set[int]:
    """Indexes of the entries whose pattern matches ``data`` whole."""
    db, of = compiled
    found: set[int] = set()

    def on_match(idx, start, end, flags, ctx):
        found.update(of[idx])

    db.scan(data, match_event_handler=on_match)
    return found


def _names_regex(patterns) -> re.Pattern | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{l7_name_regex(p)})" for p in patterns))


def _name(text: str | None) -> str:
    return (text or "").strip().lower().rstrip(".")


@dataclass(frozen=True)
class _HttpEntry:
    method: bool               # the entry has a method pattern (its id in the method database)
    path: bool
    host: re.Pattern | None
    headers: tuple[tuple[str, str | None], ...]    # (lower-cased name, value or None: present)


@dataclass(frozen=True)
class _KafkaEntry:
    apis: frozenset | None     # api keys (api_key, or role's set); None: any
    version: int | None
    client_id: str | None
    topic: str | None

    @classmethod
    def of(cls, e: dict) -> "_KafkaEntry":
        apis = kafka.ROLES[e["role"]] if e.get("role") else \
            frozenset({kafka.api_key_of(e["api_key"])}) if e.get("api_key") is not None else None
        return cls(apis, e.get("api_version"), e.get("client_id"), e.get("topic"))

    def allows_header(self, ev) -> bool:
        return ((self.apis is None or ev.api_key in self.apis)
                and (self.version is None or self.version == ev.api_version)
                and (self.client_id is None or self.client_id == ev.client_id))


class RuleAllow:
    """One rule's compiled allow-list. ``check_*`` return None when allowed,
    else (field, what did not match)."""

    def __init__(self, rule_id: int, label: str, spec: dict) -> None:
        self.rule_id = rule_id
        self.label = label
        self.protocols = tuple(p for p in ("http", "grpc", "dns", "tls", "kafka") if spec.get(p) is not None)
        http = spec.get("http") or []
        self._entries = tuple(_HttpEntry(e.get("method") is not None, e.get("path") is not None,
                                         _names_regex([e["host"]]) if e.get("host") else None,
                                         tuple(_header(h) for h in e.get("headers") or ()))
                              for e in http)
        self._methods = _database([e.get("method") for e in http])
        self._paths = _database([e.get("path") for e in http])
        # Entries a method or a path always matches (they have none).
        self._any_method = frozenset(i for i, e in enumerate(self._entries) if not e.method)
        self._any_path = frozenset(i for i, e in enumerate(self._entries) if not e.path)
        self._cache: dict[tuple[str, str], tuple[_HttpEntry, ...]] = {}
        # service -> None (every method) or the set of methods
        self._grpc: dict[str, set[str] | None] | None = None
        if spec.get("grpc") is not None:
            self._grpc = {}
            for g in spec["grpc"]:
                cur = self._grpc.get(g["service"], set())
                self._grpc[g["service"]] = None if cur is None or g.get("method") is None \
                    else cur | {g["method"]}
        self._dns = _names_regex(spec.get("dns"))
        self._tls = _names_regex(spec.get("tls"))
        self._kafka = tuple(_KafkaEntry.of(e) for e in spec.get("kafka") or ())
        self.families = tuple({k for p in self.protocols for k in FAMILIES[p]})

    # -- HTTP and gRPC ----------------------------------------------------------
    def _candidates(self, method: str, target: str) -> tuple[_HttpEntry, ...]:
        """Entries whose method and path patterns (those they have) match."""
        key = (method, target)
        got = self._cache.get(key)
        if got is not None:
            return got
        ps = self._any_path
        if self._paths is not None:
            ps = ps | _scan(self._paths, normalise_target(target).encode("latin-1", "replace"))
        if ps and self._methods is not None:
            ps = ps & (self._any_method | _scan(self._methods, method.encode("latin-1", "replace")))
        got = tuple(self._entries[i] for i in sorted(ps))
        if len(target) <= MAX_CACHED_TARGET:
            if len(self._cache) >= MAX_CACHED_REQUESTS:
                self._cache.clear()
            self._cache[key] = got
        return got

    def check_request(self, ev) -> tuple[str, str] | None:
        """An HTTP request (HTTP/1 or HTTP/2; a gRPC call is one too)."""
        call = grpc_call(ev.uri) if self._grpc is not None and is_grpc(ev.content_type) else None
        if call is not None:
            methods = self._grpc.get(call[0], ())
            if methods is None or call[1] in methods:
                return None
        if self._entries:
            host = None
            for e in self._candidates(ev.method, ev.uri):
                if e.host is not None:
                    if host is None:
                        host = _name(request_host(ev))
                    if not e.host.fullmatch(host):
                        continue
                if e.headers and not _has_headers(ev.headers, e.headers):
                    continue
                return None
        if call is not None:
            return "l7.grpc", f"gRPC {call[0]}/{call[1]} not allowed"
        if not self._entries:
            if is_grpc(ev.content_type):
                return "l7.grpc", f"{ev.method} {ev.uri} not allowed (not a gRPC call path)"
            return "l7.protocol", f"HTTP request {ev.method} {ev.uri} not allowed (the list allows only gRPC)"
        return "l7.http", f"{ev.method} {ev.uri} not allowed"

    # -- DNS ----------------------------------------------------------------------
    def check_query(self, ev) -> tuple[str, str] | None:
        """A DNS query: every question's name must be allowed."""
        if not ev.questions:
            return "l7.dns", "DNS query without a question not allowed"
        for q in ev.questions:
            name = _name(q.name)
            if not self._dns.fullmatch(name):
                return "l7.dns", f"DNS query {name or '.'} not allowed"
        return None

    # -- TLS and QUIC server names -------------------------------------------------
    def check_server_name(self, ev) -> tuple[str, str] | None:
        """A TLS or QUIC ClientHello: its server name (SNI) must be allowed
        (a hello without one is not: nothing names what it reaches)."""
        proto = "QUIC" if ev.kind == "quic_client_hello" else "TLS"
        name = _name(ev.sni)
        if not name:
            return "l7.tls", f"{proto} ClientHello without a server name not allowed"
        if not self._tls.fullmatch(name):
            return "l7.tls", f"{proto} server name {name} not allowed"
        return None

    # -- Kafka -----------------------------------------------------------------------
    def check_kafka(self, ev) -> tuple[str, str] | None:
        """A Kafka request (protocols/kafka.py KafkaRequest): an entry must
        allow its api, version and client id, and each topic it names needs
        an entry allowing it (as Cilium). A topic-naming request whose
        topics were not all read (a cut frame, a version that names topics
        by id), or that names none (Metadata of every topic), passes only
        an entry without a topic."""
        what = f"Kafka {ev.api_name} v{ev.api_version} from client {ev.client_id!r}"
        entries = [e for e in self._kafka if e.allows_header(ev)]
        if not entries:
            return "l7.kafka", f"{what} not allowed"
        if ev.api_key not in kafka.TOPIC_APIS or any(e.topic is None for e in entries):
            return None
        if not ev.topics or not ev.topics_complete:
            return "l7.kafka", f"{what} for {'topics not all read' if ev.topics else 'every topic'} not allowed"
        topics = {e.topic for e in entries}
        for t in ev.topics:
            if t not in topics:
                return "l7.kafka", f"{what} for topic {t} not allowed"
        return None

    # -- other protocols ------------------------------------------------------------
    def check_protocol(self, app: str | None) -> tuple[str, str]:
        return "l7.protocol", f"{app or 'an unrecognised protocol'} not allowed " \
                              f"(the list names {', '.join(self.protocols)})"

    def hit(self, field: str, what: str, matched: str, d: Direction) -> Hit:
        return Hit(L7_IDS[field], f"l7 allow-list of rule {self.label}: {what}", L7_CATEGORY, "block",
                   L7_SEVERITY, field, shown(matched), d)

    def inspector(self, inner) -> "L7Inspector":
        return L7Inspector(inner, self)


def _header(text: str) -> tuple[str, str | None]:
    name, sep, value = text.partition(":")
    return name.strip().lower(), value.strip() if sep else None


def _has_headers(fields, wanted) -> bool:
    have: dict[str, list[str]] = {}
    for name, value in fields:
        have.setdefault(name.lower(), []).append(value)
    for name, value in wanted:
        vals = have.get(name)
        if vals is None or (value is not None and value not in vals):
            return False
    return True


class L7Inspector:
    """A flow's inspector (slowpath/inspector.py FlowInspector) with its
    rule's allow-list in front: the inner one's hits, and a block hit for
    what the list does not allow. Anything else is the inner inspector's."""
    __slots__ = ("inner", "allow", "_blocked")

    def __init__(self, inner, allow: RuleAllow) -> None:
        self.inner = inner
        self.allow = allow
        self._blocked = False

    def __getattr__(self, name):          # what, and whatever else the engine asks of the inner one
        return getattr(self.inner, name)

    def feed(self, ev) -> list[Hit]:
        out = self.inner.feed(ev)
        if self._blocked:
            return out
        kind = ev.kind
        bad = None
        if not kind.startswith(self.allow.families):
            # A protocol the list does not name (an HTTP request or a DNS
            # query too, on a list without http/grpc or dns).
            if kind not in NEUTRAL_KINDS:
                bad = self.allow.check_protocol(kind.split("_", 1)[0])
                matched = kind
        elif kind == "http_request":
            if ev.direction == Direction.TO_SERVER:
                bad = self.allow.check_request(ev)
                matched = f"{ev.method} {ev.uri}"
        elif kind == "dns_message":
            if not ev.response:
                bad = self.allow.check_query(ev)
                matched = ",".join(q.name for q in ev.questions)
        elif kind in HELLO_KINDS:
            bad = self.allow.check_server_name(ev)
            matched = ev.sni or ""
        elif kind == "kafka_request":
            bad = self.allow.check_kafka(ev)
            matched = f"{ev.api_name} {','.join(ev.topics)}".rstrip()
        if bad is not None:
            self._blocked = True
            out = [*out, self.allow.hit(bad[0], bad[1], matched, ev.direction)]
        return out

    def unreadable(self, app: str | None, d: Direction = Direction.TO_SERVER) -> Hit:
        """The flow's protocol has no parser here (or none was recognised):
        nothing of it can be allowed."""
        self._blocked = True
        field, what = self.allow.check_protocol(app)
        return self.allow.hit(field, what, app or "unknown", d)

    def close(self) -> list[Hit]:
        return self.inner.close()


class L7Policy:
    """The allow-lists of one policy: rule id -> RuleAllow (rules without a
    list are absent)."""

    def __init__(self, rules: dict[int, RuleAllow] | None = None, spec: dict | None = None) -> None:
        self.rules = rules or {}
        self.spec = spec or {}

    def get(self, rule_id: int) -> RuleAllow | None:
        return self.rules.get(rule_id)

    def __bool__(self) -> bool:
        return bool(self.rules)

    @classmethod
    def from_spec(cls, spec: dict) -> "L7Policy":
        """Compile what spec_of() gave (keys may be strings, as JSON has them)."""
        rules = {int(rid): RuleAllow(int(rid), r["label"], r["l7"]) for rid, r in spec.items()}
        return cls(rules, {str(k): v for k, v in spec.items()})


def spec_of(model) -> dict:
    """A checked policy model's allow-lists, JSON-able: {rule id: {"label":
    name or "N", "l7": {...}}}. Rule ids are the compiler's (1-based file order)."""
    out = {}
    for i, r in enumerate(model.rules):
        if r.l7 is not None:
            out[str(i + 1)] = {"label": r.name or str(i + 1), "l7": r.l7.model_dump(exclude_none=True)}
    return out


def compile_lists(model) -> L7Policy:
    return L7Policy.from_spec(spec_of(model))
