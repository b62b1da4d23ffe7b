"""Suricata EVE-compatible JSON records for SIEMs: building and serialising them.

One JSON object per line, with Suricata's field names and shapes, so a
pipeline built for Suricata's eve.json (Filebeat's Suricata module, Evebox,
Splunk/Elastic dashboards) reads microseg's records unchanged: every record
validates strictly against Suricata 8's own schema (etc/schema.json, where
an unknown field fails). What only microseg knows goes where that schema
leaves room, never in a top-level key of our own:

  * flow and app-layer records: ``metadata.flowints`` (numbers: ``rule_id``,
    ``policy_generation``, ``verdict_latency_us``) and ``metadata.flowvars``
    (strings, one ``{name: value}`` object each, as Suricata writes flow
    variables: ``inspection_verdict``, ``ct_state``); the inspection verdict
    also as Suricata's ``flow.action`` ("drop" for block, "pass" otherwise);
  * alerts: ``alert.metadata`` (Suricata's rule metadata, a list of strings
    per key: ``rule_action``, ``field``, ``matched``, ``matched_truncated``,
    ``policy_generation``); the rule's id and name are Suricata's
    ``signature_id`` and ``signature``;
  * drops: ``drop.reason`` (the kernel's reason name) and
    ``metadata.pktvars`` (``hook``, ``reason_description``, ``rule_id``,
    ``policy_generation``, strings);
  * stats: only Suricata's counter groups (STATS_GROUPS); the slow path's
    own counters without a Suricata name are in Prometheus only.

Builders (``flow_record``, ``alert_record``, ``http_record``,
``tls_record``, ``dns_records``, ``ssh_record``, ``drop_record``,
``stats_record``, ``anomaly_record``) turn a :class:`FlowInfo` plus parser events
(protocols/*.py) into plain dicts; ``http_object``, ``tls_object``,
``dns_object`` and ``ssh_object`` build the app-layer objects alone, for an
alert's context. They are pure: no I/O; the timestamp is an argument (now if
omitted). :func:`encode` serialises a record to one line (compact,
ASCII-only JSON: valid UTF-8, non-ASCII as \\u escapes) and never raises,
whatever the strings hold; a record of JSON's own types (what the builders
make) is written as it is, one that needs cleaning is cleaned first. Where
the lines go (file, syslog, stdout) is slowpath/eve_sinks.py.

slowpath/eve_schema.json is the project's overlay: stricter than Suricata's
(required fields, value patterns, what microseg's metadata holds), never
looser; tests/unit/test_eve.py validates builder output against both.

Field choices follow Suricata 8's EVE (docs.suricata.io, "Eve JSON Format"):
``alert.action`` is "allowed"/"blocked" and the top-level ``verdict`` object
carries the final action ("alert", "pass", "drop"); an alert carries the
flow's counters (``flow``), ``app_proto`` and the transaction's app-layer
object (``http``, ``tls``, ``dns``, ``ssh``) as Suricata's do by default; DNS
uses the "v3" layout, Suricata 8's default (one record per message,
``version`` 3, ``type`` "request" or "response", the questions in
``queries``, the answers in ``answers`` and ``grouped``); TLS versions are
spelled as Suricata spells them ("TLSv1", "TLS 1.2", "UNDETERMINED"); ALPNs go
in ``tls.client_alpns``/``tls.server_alpns`` as newer Suricata logs them.
``drop.reason`` is the kernel's reason name (bpf/lib/reasons.h), not
Suricata's vocabulary ("decode error", "rules"...): the kernel's names are
more precise and no EVE consumer enumerates them.
"""
from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
import json.encoder
import math
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from datapath.enums import Reason, reason_description, reason_kind
from protocols.api import Direction
from protocols.dns import DnsMessage, DnsRecord
from protocols.grpc import is_grpc, split_path
from protocols.http import HttpRequest, HttpResponse
from protocols.quic import QuicClientHello, QuicServerHello, version_name
from protocols.tls import TlsClientHello, TlsServerHello
from slowpath.community_id import community_id, packed_ip

SCHEMA_PATH = Path(__file__).with_name("eve_schema.json")

EVENT_TYPES = ("flow", "alert", "http", "tls", "dns", "ssh", "drop", "stats", "anomaly", "quic", "pgsql",
               "kafka", "smtp", "mqtt")
# The counter groups of Suricata's stats record (its schema refuses any
# other key under ``stats``): stats_record takes nothing else.
STATS_GROUPS = frozenset({"app_layer", "capture", "decoder", "defrag", "detect", "exception_policy",
                          "file_store", "firewall", "flow", "flow_bypassed", "ftp", "host", "http",
                          "ippair", "ips", "memcap", "pcap_log", "stream", "tcp"})
# The app-layer objects an alert may carry (Suricata's names): the builders below make them.
APP_LAYER_OBJECTS = ("http", "tls", "dns", "ssh", "quic")

# --- Limits -------------------------------------------------------------------
# Characters of a rule's matched value kept in an alert: it is an excerpt for
# the analyst, not the payload; the cap also keeps alert lines short.
MATCHED_MAX_CHARS = 256
# Nesting the serialiser follows before it writes repr() instead: records are
# three levels deep; only a caller's odd object (a cycle) goes further.
MAX_DEPTH = 16

# --- Names as Suricata writes them -------------------------------------------
# IANA keywords, upper case, as Suricata prints them ("IPV6-ICMP" included);
# other protocols are written as their number.
PROTO_NAMES = {socket.IPPROTO_ICMP: "ICMP", socket.IPPROTO_IGMP: "IGMP", socket.IPPROTO_TCP: "TCP",
               socket.IPPROTO_UDP: "UDP", socket.IPPROTO_GRE: "GRE", socket.IPPROTO_ESP: "ESP",
               socket.IPPROTO_AH: "AH", socket.IPPROTO_ICMPV6: "IPV6-ICMP", socket.IPPROTO_SCTP: "SCTP"}
_ICMP_PROTOS = frozenset({socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6})
_TLS_VERSIONS = {0x0002: "SSLv2", 0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLS 1.1",
                 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}
FLOW_STATES = ("new", "established", "closed", "bypassed")
FLOW_REASONS = ("timeout", "forced", "shutdown")
# Rule actions that stop traffic, and those that let it through without an
# alert's "just log it" meaning.
_BLOCKING = frozenset({"drop", "deny", "block", "reject"})
_PASSING = frozenset({"pass", "allow"})
# Suricata's severity runs from 1 (highest); 3 is its default.
DEFAULT_SEVERITY = 3
_SEVERITY_NAMES = {"critical": 1, "high": 1, "medium": 2, "low": 3, "info": 4}
# Fields Suricata's drop event carries about the dropped packet.
DROP_PACKET_FIELDS = ("len", "tos", "ttl", "ipid", "tcpseq", "tcpack", "tcpwin", "syn", "ack",
                      "psh", "rst", "urg", "fin", "tcpres", "tcpurgp", "udplen", "icmp_id",
                      "icmp_seq")
# Kernel session states (bpf/lib/maps.h MS_ENUM_CT_STATE) as Suricata's
# flow.state: before the handshake completes a flow is "new", after both
# FINs are acknowledged or a reset it is "closed".
_CT_NEW = frozenset({"CT_NONE", "CT_SYN_SENT", "CT_SYN_RECV", "CT_SYN_SENT2", "CT_UDP_UNREPLIED"})
_CT_CLOSED = frozenset({"CT_TIME_WAIT", "CT_CLOSE"})


# --- Flows ----------------------------------------------------------------------
# EVE consumers written in JavaScript read integers as doubles; Suricata keeps
# its flow ids small for that reason, and so does make_flow_id.
_FLOW_ID_MASK = (1 << 53) - 1


def make_flow_id(proto: int, src_ip: str, src_port: int | None, dest_ip: str,
                 dest_port: int | None, start_ns: int) -> int:
    """A stable flow id (< 2**53) from the tuple and the flow's start time."""
    # The parts, each followed by "|", hashed in one call (as many update()
    # calls of the same bytes would: the ids are the same).
    data = b"|".join((str(proto).encode(), packed_ip(src_ip), str(src_port).encode(), packed_ip(dest_ip),
                      str(dest_port).encode(), str(start_ns).encode(), b""))
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") & _FLOW_ID_MASK


# Addresses whose normal spelling is kept: a flow's record is built more than
# once (its engine flow, its session end, its alerts) and servers recur
# across flows; ipaddress parses one in ~3 us.
NORMAL_IP_CACHE = 16_384


@lru_cache(maxsize=NORMAL_IP_CACHE)
def _normal_ip(addr) -> tuple[str, int]:
    """(normal spelling, IP version) of an address; ValueError for a bad one."""
    if type(addr) is str:
        # An IPv4 address that inet_ntop prints back as it came is already
        # what ipaddress would print (dotted decimal, no leading zeros), in
        # two C calls instead of its parse: every new client of a replay.
        try:
            if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, addr)) == addr:
                return addr, 4
        except (OSError, ValueError):       # not IPv4 text, a NUL in it: ipaddress says what is wrong
            pass
    ip = ipaddress.ip_address(addr)
    return str(ip), ip.version


class _per_flow:
    """functools.cached_property without its lock: Python 3.11's takes an
    RLock on each first read (~1 us, twice a flow: community_id and
    header_parts of every session's flow record and every inspected flow).
    The value is a pure function of the flow's fields, so two threads
    computing it at once store the same thing. After the first read the
    instance's own attribute is found first (no __set__ here)."""

    def __init__(self, fn):
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


@dataclass(frozen=True, init=False)
class FlowInfo:
    """Who talked to whom: the part every record about a flow shares.

    ``src`` is the side that opened the flow. ``proto`` is the IP protocol
    number. For ICMP the ports are None and ``icmp_type``/``icmp_code`` say
    what the flow is. ``start`` is wall-clock seconds (time.time()) of the
    flow's first packet. ``flow_id`` may be None for a packet without a flow.
    """
    flow_id: int | None
    src_ip: str
    src_port: int | None
    dest_ip: str
    dest_port: int | None
    proto: int
    app_proto: str | None = None
    start: float | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    in_iface: str | None = None

    def __init__(self, flow_id: int | None, src_ip: str, src_port: int | None, dest_ip: str,
                 dest_port: int | None, proto: int, app_proto: str | None = None, start: float | None = None,
                 icmp_type: int | None = None, icmp_code: int | None = None, in_iface: str | None = None):
        # The dataclass's own __init__ for a frozen class sets each field by
        # object.__setattr__ (2.6 us a FlowInfo, one or more per flow and per
        # session's flow record); the fields go into __dict__ in one update
        # here (0.7 us), as with_app copies them. Same fields, same checks.
        # Normalise the addresses once ("::ffff:0:1" spellings, zero padding):
        # the same flow must always print the same way.
        src, src_v = _normal_ip(src_ip)
        dest, dest_v = _normal_ip(dest_ip)
        if src_v != dest_v:
            raise ValueError(f"FlowInfo: {src} and {dest} are not the same address family")
        if not 0 <= int(proto) <= 255:
            raise ValueError(f"FlowInfo: IP protocol {proto} out of range")
        self.__dict__.update(flow_id=flow_id, src_ip=src, src_port=src_port, dest_ip=dest, dest_port=dest_port,
                             proto=proto, app_proto=app_proto, start=start, icmp_type=icmp_type,
                             icmp_code=icmp_code, in_iface=in_iface)

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    @_per_flow                          # one SHA-1 per flow, not per record
    def community_id(self) -> str | None:
        if self.proto in _ICMP_PROTOS:
            return community_id(self.proto, self.src_ip, self.dest_ip, self.icmp_type, self.icmp_code)
        return community_id(self.proto, self.src_ip, self.dest_ip, self.src_port, self.dest_port)

    @_per_flow                          # once per flow, not per record
    def header_parts(self) -> tuple[dict, dict]:
        """What every record's header (_header) takes from the flow, the
        fields before ``event_type`` (flow_id, in_iface) and those after
        it (the tuple, proto, ICMP type and code, community_id), in
        Suricata's order."""
        head: dict[str, Any] = {}
        if self.flow_id is not None:
            head["flow_id"] = int(self.flow_id)
        if self.in_iface:
            head["in_iface"] = self.in_iface
        tail: dict[str, Any] = {"src_ip": self.src_ip}
        if self.src_port is not None:
            tail["src_port"] = int(self.src_port)
        tail["dest_ip"] = self.dest_ip
        if self.dest_port is not None:
            tail["dest_port"] = int(self.dest_port)
        tail["proto"] = self.proto_name
        if self.proto in _ICMP_PROTOS:
            if self.icmp_type is not None:
                tail["icmp_type"] = int(self.icmp_type)
            if self.icmp_code is not None:
                tail["icmp_code"] = int(self.icmp_code)
        cid = self.community_id
        if cid:
            tail["community_id"] = cid
        return head, tail

    def with_app(self, app_proto: str | None, start: float | None | type = ...) -> "FlowInfo":
        """This flow with another app protocol (and start, when given): the
        tuple is the same, so its checks and what was derived from it
        (community_id, header_parts) are kept, not made again as
        dataclasses.replace would."""
        new = object.__new__(FlowInfo)
        new.__dict__.update(self.__dict__)
        new.__dict__["app_proto"] = app_proto
        if start is not ...:
            new.__dict__["start"] = start
        return new


# --- Builders ---------------------------------------------------------------------
def format_timestamp(ts: float | datetime | None = None) -> str:
    """Suricata's timestamp: ``2026-11-27T19:40:54.123456+0000`` (always UTC)."""
    if ts is None:
        ts = time.time()
    if isinstance(ts, datetime):
        ts = ts.timestamp()
    # Whole microseconds first: float formatting of .9999995 would print 60 s.
    micros = round(ts * 1_000_000)
    secs, micros = divmod(micros, 1_000_000)
    return f"{_second_text(secs)}.{micros:06d}+0000"


# Whole seconds whose text is kept: a record has up to three timestamps, the
# records of a second share it, and datetime + strftime cost ~2 us a call.
SECOND_TEXT_CACHE = 4096


@lru_cache(maxsize=SECOND_TEXT_CACHE)
def _second_text(secs: int) -> str:
    return datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _header(flow: FlowInfo | None, event_type: str, ts, *, direction=None,
            tx_id: int | None = None) -> dict:
    if flow is None:
        rec: dict[str, Any] = {"timestamp": format_timestamp(ts), "event_type": event_type}
    else:
        head, tail = flow.header_parts
        rec = {"timestamp": format_timestamp(ts), **head, "event_type": event_type, **tail}
    if direction is not None:
        rec["direction"] = _direction(direction)
    if tx_id is not None:
        rec["tx_id"] = int(tx_id)
    return rec


def _direction(d) -> str:
    if isinstance(d, Direction):
        return "to_server" if d == Direction.TO_SERVER else "to_client"
    if d in ("to_server", "to_client"):
        return d
    raise ValueError(f"direction {d!r}: expected a protocols.api.Direction, 'to_server' or 'to_client'")


def _set_app_proto(rec: dict, app_proto: str | None) -> None:
    if app_proto:
        rec["app_proto"] = app_proto


def _metadata(rec: dict, *, ints: Mapping | None = None, flowvars: Mapping | None = None,
              pktvars: Mapping | None = None) -> None:
    """microseg's own fields in Suricata's ``metadata`` object, as Suricata
    writes its rule variables: ``flowints`` an object of unsigned integers,
    ``flowvars``/``pktvars`` a list of one-key objects whose value is a
    string. Fields without a value are left out; so is an empty group."""
    md: dict[str, Any] = {}
    got = {k: int(v) for k, v in (ints or {}).items() if v is not None}
    if got:
        md["flowints"] = got
    for group, fields in (("flowvars", flowvars), ("pktvars", pktvars)):
        items = [{k: _text(v)} for k, v in (fields or {}).items() if v is not None]
        if items:
            md[group] = items
    if md:
        rec.setdefault("metadata", {}).update(md)


def _text(v) -> str:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("utf-8", "backslashreplace")
    return str(v)


def _split_host(host: str) -> tuple[str, int | None]:
    """Host field -> (name, port): "[::1]:8080", "example.com:80", "example.com"."""
    host = host.strip()
    port_text = ""
    if host.startswith("["):
        end = host.find("]")
        if end > 0:
            name, rest = host[1:end], host[end + 1:]
            if rest.startswith(":"):
                port_text = rest[1:]
        else:
            name = host
    elif host.count(":") == 1:
        name, _, port_text = host.partition(":")
    else:
        name = host
    port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 and int(port_text) <= 65535 else None
    # libhtp (Suricata's HTTP parser) lower-cases the host and drops a trailing dot.
    return name.lower().rstrip("."), port


def http_object(request: HttpRequest | None, response: HttpResponse | None = None, *,
                length: int | None = None) -> dict:
    """Suricata's ``http`` object of a transaction: the request head and,
    when seen, the response head. ``length`` is the response body size."""
    if request is None and response is None:
        raise ValueError("http_object needs a request or a response")
    http: dict[str, Any] = {}
    if request is not None:
        if request.host is not None:
            name, port = _split_host(request.host)
            http["hostname"] = name
            if port is not None:
                http["http_port"] = port
        http["url"] = request.uri
        if request.user_agent is not None:
            http["http_user_agent"] = request.user_agent
    if response is not None and response.content_type is not None:
        http["http_content_type"] = response.content_type
    if request is not None:
        referer = request.header("referer")
        if referer is not None:
            http["http_refer"] = referer
        http["http_method"] = request.method
    http["protocol"] = request.version if request is not None else response.version
    if response is not None:
        http["status"] = int(response.status)
        location = response.header("location")
        if location is not None and 300 <= response.status < 400:
            http["redirect"] = location
    if length is not None:
        http["length"] = int(length)
    sid = _stream_id(request, response)
    if sid:
        # As Suricata's HTTP/2 logger (rust/src/http2/logger.rs): "version"
        # "2" and the stream in an "http2" object (its request/response
        # objects, SETTINGS/RST_STREAM/PRIORITY details, are left out: the
        # schema wants them non-empty and a transaction is logged at its
        # response head, before such frames).
        http["version"] = "2"
        http["http2"] = {"stream_id": sid}
    return http


def _stream_id(request, response) -> int:
    """The HTTP/2 stream of a transaction (0: HTTP/1). An h2c upgrade's
    stream 1 pairs the HTTP/1 request with an HTTP/2 response."""
    return (getattr(response, "stream_id", 0) or 0) or (getattr(request, "stream_id", 0) or 0)


def http_record(flow: FlowInfo, request: HttpRequest | None, response: HttpResponse | None = None,
                ts=None, *, length: int | None = None, tx_id: int | None = None,
                request_end=None, response_end=None, grpc=None) -> dict:
    """One HTTP transaction (http_object). The parser's anomalies are not
    repeated here: each is an ``anomaly`` record of its own, as Suricata's.
    ``request_end``/``response_end``: the bodies' HttpMessageEnd, for what
    their Content-Encoding decoding gave (http_coding_metadata)."""
    if request is None and response is None:
        raise ValueError("http_record needs a request or a response")
    rec = _header(flow, "http", ts, tx_id=tx_id)
    rec["http"] = http_object(request, response, length=length)
    # Suricata names an HTTP/2 transaction's app_proto "http2"; a gRPC call's
    # record is the same, with the call in metadata (grpc_metadata).
    rec["app_proto"] = "http2" if "http2" in rec["http"] else "http"
    if request_end is not None or response_end is not None:   # (without either it adds nothing: ~0.7 us)
        http_coding_metadata(rec, request_end, response_end)
    if grpc is not None or (request is not None and request.stream_id and is_grpc(request.content_type)):
        grpc_metadata(rec, grpc, request)
    return rec


def grpc_metadata(rec: dict, call, request: HttpRequest | None = None) -> None:
    """A gRPC call (protocols/grpc.py GrpcCall) in an http record's
    ``metadata``: Suricata has no gRPC logger and its http object no field
    for it. flowvars ``grpc_service``, ``grpc_method``, ``grpc_message``,
    ``grpc_encoding``; flowints ``grpc_status`` (absent: no status seen),
    ``grpc_request_messages``, ``grpc_response_messages``. A call whose end
    was not seen (``call`` None) has what its ``request`` says."""
    if call is not None:
        flowvars = {"grpc_service": call.service, "grpc_method": call.method,
                    "grpc_message": call.grpc_message or None, "grpc_encoding": call.grpc_encoding}
        ints = {"grpc_status": call.grpc_status, "grpc_request_messages": call.request_messages,
                "grpc_response_messages": call.response_messages}
    else:
        service, method = split_path(request.uri)
        flowvars = {"grpc_service": service, "grpc_method": method,
                    "grpc_encoding": request.header("grpc-encoding")}
        ints = {}
    before = rec.get("metadata", {})
    held_ints, held_vars = dict(before.get("flowints", {})), list(before.get("flowvars", []))
    _metadata(rec, ints=ints, flowvars=flowvars)
    md = rec.get("metadata")
    if md is not None:
        md["flowints"] = {**held_ints, **md.get("flowints", {})} if held_ints or "flowints" in md else {}
        if not md["flowints"]:
            del md["flowints"]
        if held_vars:
            md["flowvars"] = held_vars + md.get("flowvars", [])


def http_coding_metadata(rec: dict, request_end=None, response_end=None) -> None:
    """Which Content-Encoding each body was decoded from (protocols/
    content_coding.py), in ``metadata``: Suricata's http object has no field
    for it (its schema allows none; Suricata logs the header only among
    response_headers). flowvars ``http_content_encoding`` (the codings
    undone, in header order), ``http_content_decoding`` ("ok" or why it
    stopped: invalid, truncated, too-large, ratio, layers), flowints
    ``http_decoded_length``; the same with ``http_request_`` for the request body."""
    flowvars: dict[str, str] = {}
    ints: dict[str, int] = {}
    for prefix, end in (("http_request_", request_end), ("http_", response_end)):
        if end is None or not getattr(end, "content_encoding", ()):
            continue
        flowvars[prefix + "content_encoding"] = ", ".join(end.content_encoding)
        flowvars[prefix + "content_decoding"] = str(end.encoding_error) if end.encoding_error else "ok"
        if end.decoded_size is not None:
            ints[prefix + "decoded_length"] = end.decoded_size
    _metadata(rec, ints=ints, flowvars=flowvars)


# Suricata's anomaly layer for an event its app-layer parser raised.
ANOMALY_LAYER_PARSER = "proto_parser"


def anomaly_record(flow: FlowInfo, event: str, ts=None, *, app_proto: str = "http",
                   layer: str = ANOMALY_LAYER_PARSER, direction=None, tx_id: int | None = None) -> dict:
    """Suricata's ``anomaly`` record for an application-layer event (a
    protocol deviation the parser tolerated, e.g. "METHOD_UNKNOWN")."""
    rec = _header(flow, "anomaly", ts, direction=direction, tx_id=tx_id)
    rec["anomaly"] = {"type": "applayer", "event": _text(event), "layer": layer, "app_proto": app_proto}
    rec["app_proto"] = app_proto
    return rec


def tls_version_name(version: int | None) -> str:
    """A TLS version as Suricata logs it ("TLS 1.3", "TLSv1", "UNDETERMINED")."""
    if version is None:
        return "UNDETERMINED"
    if version in _TLS_VERSIONS:
        return _TLS_VERSIONS[version]
    if version >> 8 == 0x7F:
        return f"TLS 1.3 draft-{version & 0xFF}"
    return f"0x{version:04x}"


def tls_object(client_hello: TlsClientHello | None, server_hello: TlsServerHello | None = None) -> dict:
    """Suricata's ``tls`` object: the handshake in the clear (SNI, negotiated
    version, JA3/JA3S/JA4, ALPNs)."""
    if client_hello is None and server_hello is None:
        raise ValueError("tls_object needs a ClientHello or a ServerHello")
    tls: dict[str, Any] = {}
    if client_hello is not None and client_hello.sni is not None:
        tls["sni"] = client_hello.sni
    # Suricata reports what the server settled on; no ServerHello, no version.
    tls["version"] = tls_version_name(server_hello.version if server_hello is not None else None)
    if client_hello is not None:
        tls["ja3"] = {"hash": client_hello.ja3, "string": client_hello.ja3_string}
    if server_hello is not None:
        tls["ja3s"] = {"hash": server_hello.ja3s, "string": server_hello.ja3s_string}
    if client_hello is not None:
        tls["ja4"] = client_hello.ja4
        if client_hello.alpn:
            tls["client_alpns"] = list(client_hello.alpn)
    if server_hello is not None and server_hello.alpn is not None:
        tls["server_alpns"] = [server_hello.alpn]
    return tls


def tls_record(flow: FlowInfo, client_hello: TlsClientHello | None, server_hello: TlsServerHello | None = None,
               ts=None, *, tx_id: int | None = None) -> dict:
    """The handshake in the clear (tls_object)."""
    if client_hello is None and server_hello is None:
        raise ValueError("tls_record needs a ClientHello or a ServerHello")
    rec = _header(flow, "tls", ts, tx_id=tx_id)
    rec["tls"] = tls_object(client_hello, server_hello)
    rec["app_proto"] = "tls"
    return rec


# TLS extension names for the quic object's ``extensions`` (IANA registry);
# others are logged by number only, as Suricata does for types it does not know.
_TLS_EXTENSION_NAMES = {0: "server_name", 5: "status_request", 10: "supported_groups",
                        11: "ec_point_formats", 13: "signature_algorithms", 16: "alpn",
                        18: "signed_certificate_timestamp", 21: "padding", 23: "extended_master_secret",
                        27: "compress_certificate", 35: "session_ticket", 41: "pre_shared_key",
                        42: "early_data", 43: "supported_versions", 45: "psk_key_exchange_modes",
                        51: "key_share", 57: "quic_transport_parameters", 17513: "application_settings",
                        65037: "encrypted_client_hello", 65281: "renegotiation_info"}


def quic_object(hello: QuicClientHello | QuicServerHello) -> dict:
    """Suricata's ``quic`` object for one hello (protocols/quic.py
    QuicClientHello or QuicServerHello): version as Suricata writes it
    ("1", "6b3343cf", "Q025"), the client's sni, ua (Google QUIC), ja3 and
    ja4, the server's ja3s, and the hello's extensions (values for the
    server name and ALPN)."""
    out: dict[str, Any] = {"version": version_name(hello.version)}
    tls = hello.hello
    if hello.kind == "quic_client_hello":
        if hello.sni is not None:
            out["sni"] = hello.sni
        if hello.ua is not None:
            out["ua"] = hello.ua
        if tls is not None:
            out["ja3"] = {"hash": tls.ja3, "string": tls.ja3_string}
            out["ja4"] = tls.ja4
    elif tls is not None:
        out["ja3s"] = {"hash": tls.ja3s, "string": tls.ja3s_string}
    if tls is not None and tls.extensions:
        exts = []
        for t in tls.extensions:
            e: dict[str, Any] = {"type": int(t)}
            if t in _TLS_EXTENSION_NAMES:
                e["name"] = _TLS_EXTENSION_NAMES[t]
            values = ([hello.sni] if t == 0 and hello.sni else
                      list(tls.alpn) if t == 16 and hello.kind == "quic_client_hello" and tls.alpn else
                      [tls.alpn] if t == 16 and hello.kind == "quic_server_hello" and tls.alpn else [])
            if values:
                e["values"] = values
            exts.append(e)
        out["extensions"] = exts
    return out


def quic_record(flow: FlowInfo, hello: QuicClientHello | QuicServerHello, ts=None, *, tx_id: int | None = None) -> dict:
    """One QUIC hello (quic_object), in its direction."""
    rec = _header(flow, "quic", ts, direction=hello.direction, tx_id=tx_id)
    rec["quic"] = quic_object(hello)
    rec["app_proto"] = "quic"
    return rec


# --- SMTP and MQTT ---------------------------------------------------------------
def _angle(address: str | None) -> str | None:
    return None if address is None else f"<{address}>"


def smtp_record(flow: FlowInfo, msg, ts=None, *, tx_id: int | None = None) -> dict:
    """One mail transaction at its message's end (protocols/smtp.py
    SmtpMessage), as Suricata's SMTP logger writes it: ``smtp`` (helo,
    mail_from, rcpt_to: addresses in angle brackets) and ``email`` (status,
    from, to, subject, message_id, date from the headers read)."""
    rec = _header(flow, "smtp", ts, tx_id=tx_id)
    envelope: dict[str, Any] = {}
    if msg.helo:
        envelope["helo"] = msg.helo
    if msg.mail_from is not None:
        envelope["mail_from"] = _angle(msg.mail_from)
    if msg.rcpt_to:
        envelope["rcpt_to"] = [_angle(a) for a in msg.rcpt_to]
    rec["smtp"] = envelope
    email: dict[str, Any] = {"status": "PARSE_DONE"}
    if msg.from_ is not None:
        email["from"] = msg.from_
    if msg.to:
        email["to"] = [a.strip() for a in msg.to.split(",") if a.strip()] or [msg.to]
    for key in ("subject", "message_id", "date"):
        if getattr(msg, key) is not None:
            email[key] = getattr(msg, key)
    rec["email"] = email
    rec["app_proto"] = "smtp"
    return rec


# Suricata's mqtt object key per control packet type (protocols/mqtt.py TYPE_NAMES).
_MQTT_KEYS = {1: "connect", 2: "connack", 3: "publish", 4: "puback", 5: "pubrec", 6: "pubrel", 7: "pubcomp",
              8: "subscribe", 9: "suback", 10: "unsubscribe", 11: "unsuback", 12: "pingreq", 13: "pingresp",
              14: "disconnect"}


def mqtt_object(ev) -> dict | None:
    """Suricata's mqtt object for one control packet (protocols/mqtt.py
    events); None for a packet its schema has no key for (5.0's AUTH)."""
    key = _MQTT_KEYS.get(ev.type)
    if key is None:
        return None
    flags = ev.flags
    body: dict[str, Any] = {"qos": (flags >> 1) & 3, "retain": bool(flags & 1), "dup": bool(flags & 8)}
    kind = ev.kind
    if kind == "mqtt_connect":
        body.update(protocol_string=ev.protocol_name, protocol_version=ev.protocol_version,
                    flags={"username": ev.has_username, "password": ev.has_password, "will": ev.will,
                           "will_retain": ev.will_retain, "clean_session": ev.clean_session})
        if ev.client_id is not None:
            body["client_id"] = ev.client_id
        if ev.username is not None:
            body["username"] = ev.username
        if ev.will and ev.will_topic is not None:
            body["will"] = {"topic": ev.will_topic}
    elif kind == "mqtt_connack":
        body.update(session_present=ev.session_present, return_code=ev.return_code)
    elif kind == "mqtt_publish":
        if ev.topic is not None:
            body["topic"] = ev.topic
        if ev.packet_id is not None:
            body["message_id"] = ev.packet_id
        if ev.payload_length:
            body["skipped_length"] = ev.payload_length     # the payload is not read
    elif kind == "mqtt_subscribe":
        body["message_id"] = ev.packet_id
        if ev.topics:
            body["topics"] = ([{"topic": t, "qos": q} for t, q in ev.topics] if key == "subscribe"
                              else [t for t, _ in ev.topics])
    elif kind == "mqtt_suback":
        body["message_id"] = ev.packet_id
        if ev.codes:
            body["qos_granted" if key == "suback" else "reason_codes"] = list(ev.codes)
    elif kind == "mqtt_ack":
        if ev.packet_id is not None:
            body["message_id"] = ev.packet_id
        if ev.reason_code is not None:
            body["reason_code"] = ev.reason_code
    return {key: body}


def mqtt_record(flow: FlowInfo, ev, ts=None, *, tx_id: int | None = None) -> dict | None:
    """One MQTT control packet (mqtt_object), in its direction."""
    obj = mqtt_object(ev)
    if obj is None:
        return None
    rec = _header(flow, "mqtt", ts, direction=ev.direction, tx_id=tx_id)
    rec["mqtt"] = obj
    rec["app_proto"] = "mqtt"
    return rec


# --- PostgreSQL -------------------------------------------------------------------
# ParameterStatus names Suricata's pgsql logger writes in snake case (its
# schema lists them so); other names are written as the server sent them.
_PG_PARAMETER_NAMES = {"DateStyle": "date_style", "IntervalStyle": "interval_style", "TimeZone": "time_zone"}
# ParameterStatus entries kept in one transaction: a server sends about 14 at
# login and one per SET of a reported setting; more is not worth a log line.
MAX_PGSQL_PARAMETERS = 64
# Suricata's request messages for the requests without a body it logs.
_PG_MESSAGES = {"pgsql_ssl_request": "SSL Request", "pgsql_terminate": "termination_message"}


class PgsqlLog:
    """One PostgreSQL flow's parser events (protocols/postgresql.py) as
    Suricata's pgsql transactions: a request (SSLRequest, startup, simple
    query, cancel, terminate) and what the server answered up to its
    ReadyForQuery (or the SSL answer). ``feed`` returns the pgsql objects a
    event completes; ``flush`` the one still open when the flow ends."""
    __slots__ = ("tx_id", "request", "response")

    def __init__(self) -> None:
        self.tx_id = 0
        self.request: dict | None = None
        self.response: dict = {}

    def _close(self) -> list[dict]:
        if self.request is None and not self.response:
            return []
        obj: dict[str, Any] = {"tx_id": self.tx_id}
        if self.request is not None:
            obj["request"] = self.request
        if self.response:
            obj["response"] = self.response
        self.tx_id += 1
        self.request, self.response = None, {}
        return [obj]

    def _open(self, request: dict) -> list[dict]:
        out = self._close()
        self.request = request
        return out

    def feed(self, ev) -> list[dict]:
        kind = ev.kind
        resp = self.response
        if kind == "pgsql_ssl_request":
            return self._open({"message": "GSSENC Request" if ev.gss else _PG_MESSAGES[kind]})
        if kind == "pgsql_ssl_response":
            resp["ssl_accepted"] = bool(ev.accepted)
            return self._close()
        if kind == "pgsql_startup":
            req: dict[str, Any] = {"protocol_version": ev.protocol_version}
            params: dict[str, Any] = {}
            if ev.user is not None:
                params["user"] = ev.user
            optional = [{k: v} for k, v in ev.parameters if k != "user"]
            if optional:
                params["optional_parameters"] = optional
            if params:
                req["startup_parameters"] = params
            return self._open(req)
        if kind == "pgsql_query":
            return self._open({"simple_query": ev.query}) if ev.type == "simple" else []
        if kind == "pgsql_cancel_request":
            return self._open({"process_id": ev.process_id, "secret_key": ev.secret_key}) + self._close()
        if kind == "pgsql_terminate":
            return self._open({"message": _PG_MESSAGES[kind]}) + self._close()
        if kind == "pgsql_parameter_status":
            status = resp.setdefault("parameter_status", [])
            if len(status) < MAX_PGSQL_PARAMETERS:
                status.append({_PG_PARAMETER_NAMES.get(ev.name, ev.name): ev.value})
        elif kind == "pgsql_backend_key":
            resp["process_id"], resp["secret_key"] = ev.process_id, ev.secret_key
        elif kind == "pgsql_row_description":
            resp["field_count"] = ev.field_count
        elif kind == "pgsql_command_complete":
            resp["command_completed"] = ev.tag
            if ev.data_rows or "field_count" in resp:
                resp["data_rows"], resp["data_size"] = ev.data_rows, ev.data_size
        elif kind in ("pgsql_error", "pgsql_notice") and "code" not in resp:
            # The first report of a transaction (an error after a notice still wins).
            fields = dict(ev.fields)
            for key, code in (("severity_localizable", "S"), ("severity_non_localizable", "V"),
                              ("code", "C"), ("message", "M"), ("file", "F"), ("line", "L"),
                              ("routine", "R")):
                if code in fields:
                    resp[key] = fields[code]
        elif kind == "pgsql_error" and resp.get("severity_non_localizable") != "ERROR":
            fields = dict(ev.fields)
            for key, code in (("severity_localizable", "S"), ("severity_non_localizable", "V"),
                              ("code", "C"), ("message", "M")):
                if code in fields:
                    resp[key] = fields[code]
        elif kind == "pgsql_ready":
            return self._close()
        return []

    def flush(self) -> list[dict]:
        return self._close()


def pgsql_record(flow: FlowInfo, obj: Mapping, ts=None) -> dict:
    """One PostgreSQL transaction (a PgsqlLog object) as Suricata's pgsql record."""
    rec = _header(flow, "pgsql", ts)
    rec["pgsql"] = dict(obj)
    _set_app_proto(rec, flow.app_proto)
    return rec


def kafka_record(flow: FlowInfo, ev, ts=None) -> dict:
    """One Kafka request or response (protocols/kafka.py KafkaRequest /
    KafkaResponse), in its direction. Suricata has no kafka object (its
    schema allows none), so the fields go where its schema lets a record
    carry what only microseg knows: ``metadata`` flowints ``kafka_api_key``,
    ``kafka_api_version``, ``kafka_correlation_id`` and flowvars
    ``kafka_message`` (request, response, response_unmatched: its request
    was not seen), ``kafka_api``, ``kafka_client_id``, ``kafka_topics``
    (comma-separated), ``kafka_consumer_group``, ``kafka_error_codes``."""
    rec = _header(flow, "kafka", ts, direction=ev.direction)
    rec["app_proto"] = "kafka"
    request = ev.kind == "kafka_request"
    _metadata(rec, ints={"kafka_api_key": ev.api_key, "kafka_api_version": ev.api_version,
                         "kafka_correlation_id": ev.correlation_id if ev.correlation_id >= 0 else None},
              flowvars={"kafka_message": "request" if request else "response" if ev.decoded
                        else "response_unmatched",
                        "kafka_api": ev.api_name,
                        "kafka_client_id": ev.client_id if request else None,
                        "kafka_topics": ",".join(ev.topics) or None,
                        "kafka_consumer_group": ev.consumer_group if request else None,
                        "kafka_error_codes": None if request else ",".join(map(str, ev.error_codes)) or None})
    return rec


def _dns_flags(msg: DnsMessage) -> int:
    # The header's second 16-bit word, rebuilt from the decoded bits (the Z
    # bit is not kept by the parser and is written as 0).
    return ((msg.response << 15) | ((msg.opcode & 0xF) << 11) | (msg.aa << 10) | (msg.tc << 9)
            | (msg.rd << 8) | (msg.ra << 7) | (msg.ad << 5) | (msg.cd << 4) | (msg.rcode & 0xF))


# The answer types Suricata groups by type as strings (its ``grouped``
# format); SOA and SRV are grouped as objects, other types not at all.
_DNS_GROUPED_TEXT = frozenset({"A", "AAAA", "CNAME", "MX", "NS", "PTR", "TXT", "NULL"})
DNS_EVE_VERSION = 3          # Suricata 8's default DNS layout


def _dns_soa(data: str) -> dict | None:
    """"mname rname serial refresh retry expire minimum" -> Suricata's soa object."""
    parts = data.split()
    if len(parts) != 7 or not all(x.isdigit() for x in parts[2:]):
        return None
    return {"mname": parts[0], "rname": parts[1],
            **{k: int(v) for k, v in zip(("serial", "refresh", "retry", "expire", "minimum"), parts[2:])}}


def _dns_srv(data: str) -> dict | None:
    """"priority weight port target" -> Suricata's srv object."""
    parts = data.split()
    if len(parts) != 4 or not all(x.isdigit() for x in parts[:3]):
        return None
    return {"priority": int(parts[0]), "weight": int(parts[1]), "port": int(parts[2]), "name": parts[3]}


def _dns_rr(r: DnsRecord) -> dict:
    rr: dict[str, Any] = {"rrname": r.name, "rrtype": r.type_name, "ttl": int(r.ttl)}
    if r.data:
        rr["rdata"] = r.data
    if r.type_name == "SOA" and (soa := _dns_soa(r.data)) is not None:
        rr["soa"] = soa
    elif r.type_name == "SRV" and (srv := _dns_srv(r.data)) is not None:
        rr["srv"] = srv
    return rr


def _dns_grouped(answers: Iterable[DnsRecord]) -> dict:
    grouped: dict[str, list] = {}
    for r in answers:
        if r.type_name in _DNS_GROUPED_TEXT and r.data:
            grouped.setdefault(r.type_name, []).append(r.data)
        elif r.type_name == "SOA" and (soa := _dns_soa(r.data)) is not None:
            grouped.setdefault("SOA", []).append(soa)
        elif r.type_name == "SRV" and (srv := _dns_srv(r.data)) is not None:
            grouped.setdefault("SRV", []).append(srv)
    return grouped


def dns_object(msg: DnsMessage, *, tx_id: int | None = None) -> dict:
    """Suricata 8's ``dns`` object (EVE DNS v3) of one message: a request
    or a response, its header flags, its questions in ``queries``, its
    answers in ``answers`` (one object each) and ``grouped`` (by type), its
    authority section in ``authorities``."""
    dns: dict[str, Any] = {"version": DNS_EVE_VERSION, "type": "response" if msg.response else "request"}
    if tx_id is not None:
        dns["tx_id"] = int(tx_id)
    dns["id"] = msg.id
    dns["flags"] = f"{_dns_flags(msg):x}"
    # Suricata writes a flag only when it is set.
    for name in ("qr" if msg.response else None, "aa", "tc", "rd", "ra"):
        if name == "qr" or (name is not None and getattr(msg, name)):
            dns[name] = True
    dns["opcode"] = msg.opcode
    dns["rcode"] = msg.rcode_name
    if msg.questions:
        dns["queries"] = [{"rrname": q.name, "rrtype": q.type_name} for q in msg.questions]
    if msg.answers:
        dns["answers"] = [_dns_rr(r) for r in msg.answers]
        grouped = _dns_grouped(msg.answers)
        if grouped:
            dns["grouped"] = grouped
    if msg.authority:
        dns["authorities"] = [_dns_rr(r) for r in msg.authority]
    return dns


def dns_records(flow: FlowInfo, msg: DnsMessage, ts=None, *, tx_id: int | None = None) -> list[dict]:
    """Suricata 8's DNS records: one per message (dns_object). A list, so a
    caller logs whatever a message gives without knowing the layout."""
    rec = _header(flow, "dns", ts, tx_id=tx_id)
    rec["dns"] = dns_object(msg, tx_id=tx_id)
    rec["app_proto"] = "dns"
    return [rec]


_SSH_SIDES = {"client": Direction.TO_SERVER, "server": Direction.TO_CLIENT}


def ssh_record(flow: FlowInfo, banners: Mapping, kexinits: Mapping | None = None, ts=None) -> dict:
    """Suricata's ssh record: one per flow, the handshake in the clear (ssh_object)."""
    rec = _header(flow, "ssh", ts)
    rec["ssh"] = ssh_object(banners, kexinits)
    rec["app_proto"] = "ssh"
    return rec


def ssh_object(banners: Mapping, kexinits: Mapping | None = None) -> dict:
    """Suricata's ``ssh`` object from what was seen of the handshake,
    ``{Direction: SshBanner}`` and ``{Direction: SshKexInit}``
    (protocols/ssh.py): ``client``/``server`` with ``proto_version``,
    ``software_version`` and, when a KEXINIT was seen, ``hassh``."""
    ssh: dict[str, Any] = {}
    for side, d in _SSH_SIDES.items():
        b = banners.get(d)
        k = (kexinits or {}).get(d)
        if b is None and k is None:
            continue
        obj: dict[str, Any] = {}
        if b is not None:
            obj["proto_version"] = _text(b.proto_version)
            obj["software_version"] = _text(b.software)
        if k is not None:
            obj["hassh"] = {"hash": k.hassh, "string": k.hassh_algorithms}
        ssh[side] = obj
    return ssh


def _attr(obj, name: str, default=None):
    """Read ``name`` from an object or a mapping (a rule hit may be either)."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _severity(v) -> int:
    if v is None:
        return DEFAULT_SEVERITY
    if isinstance(v, str):
        s = v.strip()
        if s.isascii() and s.isdigit():    # str.isdigit is true for '²', which int() refuses
            v = int(s)
        else:
            return _SEVERITY_NAMES.get(v.strip().lower(), DEFAULT_SEVERITY)
    return min(max(int(v), 1), 255)


def verdict_for(action: str, *, reject_target: str | None = None, reject: Iterable[str] = ()) -> dict:
    """Suricata 7's ``verdict`` object for a rule action.

    Suricata's verdict action is "alert", "pass" or "drop"; a reject is a
    drop plus ``reject-target`` and the kinds of answer sent (``reject``:
    "tcp-reset", "icmp-prohib"). Those are only written when given: microseg
    does not claim to have sent a reset it did not send.
    """
    action = (action or "alert").lower()
    verdict: dict[str, Any] = {"action": "drop" if action in _BLOCKING else "pass" if action in _PASSING
                               else "alert"}
    if action == "reject" and reject_target is not None:
        verdict["reject-target"] = reject_target
        verdict["reject"] = list(reject)
    return verdict


def _alert_flow(flow: FlowInfo, counters) -> dict:
    """Suricata's ``flow`` object in an alert: the flow's counters so far,
    its start and its tuple as the flow saw it (initiator first)."""
    pkts, nbytes = counters if counters is not None else ((0, 0), (0, 0))
    out: dict[str, Any] = {"pkts_toserver": int(pkts[0]), "pkts_toclient": int(pkts[1]),
                           "bytes_toserver": int(nbytes[0]), "bytes_toclient": int(nbytes[1])}
    if flow.start is not None:
        out["start"] = format_timestamp(flow.start)
    out["src_ip"] = flow.src_ip
    out["dest_ip"] = flow.dest_ip
    if flow.src_port is not None:
        out["src_port"] = int(flow.src_port)
    if flow.dest_port is not None:
        out["dest_port"] = int(flow.dest_port)
    return out


def alert_record(flow: FlowInfo, hit, ts=None, *, direction=None, tx_id: int | None = None,
                 policy_generation: int | None = None, reject_target: str | None = None,
                 reject: Iterable[str] = (), app_layer: Mapping | None = None,
                 counters=None) -> dict:
    """A rule matched. ``hit`` has (as attributes or keys) ``rule_id``,
    ``rule_name``, ``category``, ``action``, ``severity`` and, optionally,
    ``field``, ``matched``, ``rev``. src/dest stay the flow's (initiator
    first, like every other record here); ``direction`` says which way the
    matching bytes went.

    The context Suricata's alerts carry by default: ``app_layer`` maps an
    app-layer object's name (APP_LAYER_OBJECTS) to the object of the
    transaction (http_object, tls_object, dns_object, ssh_object);
    ``counters`` is ``((pkts_toserver, pkts_toclient), (bytes_toserver,
    bytes_toclient))`` for the ``flow`` object. What the rule matched (field,
    text) goes in ``alert.metadata``."""
    action = str(_attr(hit, "action", "alert") or "alert").lower()
    alert: dict[str, Any] = {
        "action": "blocked" if action in _BLOCKING else "allowed",
        "gid": 1,
        "signature_id": int(_attr(hit, "rule_id", 0) or 0),
        "rev": int(_attr(hit, "rev", 1) or 1),
        "signature": _text(_attr(hit, "rule_name", "") or ""),
        "category": _text(_attr(hit, "category", "") or ""),
        "severity": _severity(_attr(hit, "severity")),
    }
    matched = _attr(hit, "matched")
    truncated = False
    if matched is not None:
        matched = _text(matched)
        if len(matched) > MATCHED_MAX_CHARS:
            matched, truncated = matched[:MATCHED_MAX_CHARS], True
    field = _attr(hit, "field")
    # Suricata's rule metadata: each key a list of strings.
    meta = {"rule_action": action, "field": None if field is None else _text(field), "matched": matched,
            "matched_truncated": "true" if truncated else None,
            "policy_generation": None if policy_generation is None else str(int(policy_generation))}
    alert["metadata"] = {k: [v] for k, v in meta.items() if v is not None}
    rec = _header(flow, "alert", ts, direction=direction, tx_id=tx_id)
    rec["alert"] = alert
    rec["verdict"] = verdict_for(action, reject_target=reject_target, reject=reject)
    for name, obj in (app_layer or {}).items():
        if name not in APP_LAYER_OBJECTS:
            raise ValueError(f"alert_record: app-layer object {name!r}: one of {APP_LAYER_OBJECTS}")
        if obj:
            rec[name] = obj
    _set_app_proto(rec, flow.app_proto)
    rec["flow"] = _alert_flow(flow, counters)
    return rec


def _reason(reason) -> Reason:
    if isinstance(reason, str):
        try:
            return Reason[reason]
        except KeyError:
            raise ValueError(f"unknown kernel reason {reason!r}") from None
    return Reason(int(reason))


def _hook(hook) -> str:
    if isinstance(hook, enum.Enum):     # datapath.enums.Direction: DIR_INGRESS / DIR_EGRESS
        return hook.name.removeprefix("DIR_").lower()
    return str(hook)


def drop_record(flow: FlowInfo | None, reason, ts=None, *, hook=None, direction=None,
                packet: Mapping | None = None, rule_id: int | None = None,
                policy_generation: int | None = None) -> dict:
    """The kernel dropped a packet. ``reason`` is a DROP reason (Reason member,
    number or name); ``flow`` is None when the packet had no usable tuple (a
    truncated header). ``packet`` may carry Suricata's packet fields
    (DROP_PACKET_FIELDS: len, ttl, tcpseq, syn, ...)."""
    r = _reason(reason)
    if reason_kind(r) != "DROP":
        raise ValueError(f"{r.name} is a pass reason, not a drop")
    drop: dict[str, Any] = {}
    for name in DROP_PACKET_FIELDS:
        if packet is not None and packet.get(name) is not None:
            value = packet[name]
            drop[name] = bool(value) if name in ("syn", "ack", "psh", "rst", "urg", "fin") else int(value)
    drop["reason"] = r.name
    rec = _header(flow, "drop", ts, direction=direction)
    rec["drop"] = drop
    rec["verdict"] = {"action": "drop"}
    if flow is not None:
        _set_app_proto(rec, flow.app_proto)
    _metadata(rec, pktvars={"hook": None if hook is None else _hook(hook),
                            "reason_description": reason_description(r), "rule_id": rule_id,
                            "policy_generation": policy_generation})
    return rec


# TCP flag bits (bpf/lib/maps.h struct ms_pkt.tcp_flags) as Suricata's drop fields.
_TCP_FLAG_FIELDS = (("fin", 0x01), ("syn", 0x02), ("rst", 0x04), ("psh", 0x08), ("ack", 0x10), ("urg", 0x20))


def kernel_drop_record(reason, ts=None, *, src_ip: str | None = None, dest_ip: str | None = None,
                       src_port: int | None = None, dest_port: int | None = None, proto: int = 0,
                       length: int | None = None, tcp_flags: int | None = None, tcpseq: int | None = None,
                       tcpack: int | None = None, tcpwin: int | None = None, icmp_type: int | None = None,
                       icmp_code: int | None = None, vlan: int | None = None, hook=None,
                       in_iface: str | None = None, rule_id: int | None = None, rule_name: str | None = None,
                       suppressed: int = 0) -> dict:
    """A drop event of the kernel (bpf/lib/maps.h struct ms_drop_event,
    decoded by appliance/droplog.py) as Suricata's ``drop`` record: the
    packet's own tuple (its source is ``src_ip``, whichever side opened the
    flow), Suricata's packet fields, and in ``metadata.pktvars`` beside the
    hook and rule the count of drops of the same (source, reason) the
    kernel's rate limit left unreported since the last record
    (``suppressed``); the rule's name as ``rule``, when it has one. No
    addresses (a truncated header): no tuple at all."""
    flow = None
    if src_ip is not None and dest_ip is not None:
        icmp = proto in _ICMP_PROTOS
        flow = FlowInfo(None, src_ip, None if icmp else src_port, dest_ip, None if icmp else dest_port, proto,
                        icmp_type=icmp_type if icmp else None, icmp_code=icmp_code if icmp else None,
                        in_iface=in_iface)
    packet: dict[str, Any] = {"len": length}
    if proto == socket.IPPROTO_TCP:
        packet.update(tcpseq=tcpseq, tcpack=tcpack, tcpwin=tcpwin)
        for name, bit in _TCP_FLAG_FIELDS:
            packet[name] = bool((tcp_flags or 0) & bit)
    elif proto in _ICMP_PROTOS and icmp_type in (0, 8, 128, 129):   # echo: the id is in the port
        packet["icmp_id"] = src_port
    rec = drop_record(flow, reason, ts, hook=hook, packet=packet, rule_id=rule_id or None)
    if flow is None and in_iface:
        rec["in_iface"] = in_iface
    if vlan:
        rec["vlan"] = [int(vlan)]
    pktvars = rec.setdefault("metadata", {}).setdefault("pktvars", [])
    if rule_name:
        pktvars.append({"rule": _text(rule_name)})
    pktvars.append({"suppressed": str(int(suppressed))})
    return rec


def flow_state_for(ct_state: str) -> str:
    """Suricata's flow.state for a kernel session state name (CT_*)."""
    if ct_state in _CT_NEW:
        return "new"
    if ct_state in _CT_CLOSED:
        return "closed"
    return "established"


def flow_record(flow: FlowInfo, end: float, *, pkts_toserver: int = 0, pkts_toclient: int = 0,
                bytes_toserver: int = 0, bytes_toclient: int = 0, state: str | None = None,
                reason: str = "timeout", alerted: bool = False, ct_state: str | None = None,
                rule_id: int | None = None, policy_generation: int | None = None,
                verdict: str | None = None, verdict_latency_us: int | None = None) -> dict:
    """A flow ended (or was evicted). ``end`` is wall-clock seconds of its
    last packet; the record's timestamp is ``end`` as well. ``state``
    defaults to what ``ct_state`` (a CT_* name) means, else "closed";
    ``reason``: "timeout" (expired), "forced" (evicted, flushed),
    "shutdown" (the appliance stopped)."""
    if state is None:
        state = flow_state_for(ct_state) if ct_state is not None else "closed"
    if state not in FLOW_STATES:
        raise ValueError(f"flow state {state!r}: one of {FLOW_STATES}")
    if reason not in FLOW_REASONS:
        raise ValueError(f"flow end reason {reason!r}: one of {FLOW_REASONS}")
    start = flow.start if flow.start is not None else end
    rec = _header(flow, "flow", end)
    rec["flow"] = {
        "pkts_toserver": int(pkts_toserver), "pkts_toclient": int(pkts_toclient),
        "bytes_toserver": int(bytes_toserver), "bytes_toclient": int(bytes_toclient),
        "start": format_timestamp(start), "end": rec["timestamp"],
        "age": max(0, int(end - start)), "state": state, "reason": reason, "alerted": bool(alerted),
    }
    if verdict is not None:
        # Suricata's flow action: what was done to the flow's packets.
        rec["flow"]["action"] = "drop" if verdict.lower() in _BLOCKING else "pass"
    _set_app_proto(rec, flow.app_proto)
    _metadata(rec, ints={"rule_id": rule_id, "policy_generation": policy_generation,
                         "verdict_latency_us": verdict_latency_us},
              flowvars={"inspection_verdict": verdict, "ct_state": ct_state})
    return rec


# Kernel session-end reasons (bpf/lib/maps.h MS_ENUM_FLOW_END, lower case)
# as Suricata's flow.reason: a session that ran its course (closed, or idle
# past its timeout) is "timeout", as Suricata logs a flow leaving its flow
# table; one the appliance cut short is "forced"; one still open when the
# tables were flushed, "shutdown". The kernel's own reason goes in
# metadata.flowvars (end_reason).
_END_REASONS = {"closed": "timeout", "timeout": "timeout", "swept": "timeout", "table_full": "forced",
                "revoked": "forced", "replaced": "forced", "app_mismatch": "forced", "shutdown": "shutdown"}
# Ends whose last packet the kernel dropped (the flow's action is "drop").
_DROPPING_ENDS = frozenset({"table_full", "revoked", "app_mismatch"})


def session_flow_record(flow: FlowInfo, end: float, *, end_reason: str, ct_state: str,
                        pkts: tuple[int, int], nbytes: tuple[int, int], alerted: bool = False,
                        blocked: bool = False, rule_id: int | None = None,
                        policy_generation: int | None = None, policy_action: str | None = None,
                        verdict: str | None = None, verdict_latency_us: int | None = None) -> dict:
    """The one flow record of a session the kernel ended (datapath/flowevents.py
    FlowEnd): ``end_reason`` the kernel's (closed, timeout, swept, ...),
    ``ct_state`` its last state (CT_*), counters per direction (index 0: to
    the server). ``blocked``: inspection blocked it; ``verdict`` the
    inspection verdict when there was one."""
    # flow_record's record, with the flow's action and the kernel's end
    # reason and policy action added, built in one go (one of these per
    # session: a replay of a capture writes thousands).
    start = flow.start if flow.start is not None else end
    rec = _header(flow, "flow", end)
    rec["flow"] = {
        "pkts_toserver": int(pkts[0]), "pkts_toclient": int(pkts[1]),
        "bytes_toserver": int(nbytes[0]), "bytes_toclient": int(nbytes[1]),
        "start": format_timestamp(start), "end": rec["timestamp"], "age": max(0, int(end - start)),
        "state": flow_state_for(ct_state) if ct_state is not None else "closed",
        "reason": _END_REASONS.get(end_reason, "forced"), "alerted": bool(alerted or blocked),
        "action": "drop" if blocked or end_reason in _DROPPING_ENDS else "pass",
    }
    if flow.app_proto:
        rec["app_proto"] = flow.app_proto
    # (Each field by hand, not through a comprehension or _text(): the
    # values are ints and strs, converted only when they are not.)
    ints: dict[str, int] = {}
    if rule_id is not None:
        ints["rule_id"] = int(rule_id)
    if policy_generation is not None:
        ints["policy_generation"] = int(policy_generation)
    if verdict_latency_us is not None:
        ints["verdict_latency_us"] = int(verdict_latency_us)
    md: dict[str, Any] = {"flowints": ints} if ints else {}
    flowvars = md["flowvars"] = []
    if verdict is not None:
        flowvars.append({"inspection_verdict": verdict if type(verdict) is str else _text(verdict)})
    if ct_state is not None:
        flowvars.append({"ct_state": ct_state if type(ct_state) is str else _text(ct_state)})
    flowvars.append({"end_reason": end_reason if type(end_reason) is str else _text(end_reason)})
    if policy_action is not None:
        flowvars.append({"policy_action": policy_action if type(policy_action) is str else _text(policy_action)})
    rec["metadata"] = md
    return rec

def _nest(counters: Mapping) -> dict:
    """{"a.b": 1, "c": {"d": 2}} -> {"a": {"b": 1}, "c": {"d": 2}}.

    Values are numbers, written as integers as Suricata's counters are; a
    NaN or infinite one (a ratio of nothing) is left out, as there is no
    JSON number to write for it."""
    out: dict = {}
    for key, value in counters.items():
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if not isinstance(value, (int, float, Mapping)):
            raise ValueError(f"stats: {key!r} is {type(value).__name__}, not a number")
        if isinstance(value, (bool, float)):
            value = int(value)
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"stats: {key!r} is both a counter and a group")
        value = _nest(value) if isinstance(value, Mapping) else value
        if isinstance(node.get(parts[-1]), dict) and isinstance(value, dict):
            node[parts[-1]].update(value)
        elif parts[-1] in node:
            raise ValueError(f"stats: {key!r} given twice or as both a counter and a group")
        else:
            node[parts[-1]] = value
    return out


# The slow path's counters (a worker's report, appliance/workers.py) that
# have a Suricata name: what the slow path decoded and the flows it holds.
_SLOWPATH_STATS = {"slowpath.records": "decoder.pkts", "slowpath.bytes": "decoder.bytes",
                   "slowpath.flows": "flow.active"}


def suricata_stats(slowpath: Mapping[str, int]) -> dict[str, int]:
    """The slow path's counters under Suricata's stats names, for
    stats_record: records and bytes inspected (``decoder.pkts``,
    ``decoder.bytes``), flows held (``flow.active``), rule hits of every
    category (``detect.alert``). The others have no Suricata name and are
    not in EVE: verdicts and failures are in Prometheus
    (microseg_slowpath_verdicts_total, microseg_slowpath_failures_total),
    hits per category in the alert records themselves."""
    out = {name: int(slowpath.get(key, 0)) for key, name in _SLOWPATH_STATS.items()}
    out["detect.alert"] = sum(int(v) for k, v in slowpath.items() if k.startswith("slowpath.hits."))
    return out


def stats_record(counters: Mapping, ts=None, *, uptime: float = 0) -> dict:
    """Periodic counters, nested like Suricata's ``stats`` (dotted keys nest).
    Only Suricata's counter groups (STATS_GROUPS): another is a ValueError."""
    stats = {"uptime": max(0, int(uptime))}
    nested = _nest(counters)
    unknown = sorted(set(nested) - STATS_GROUPS)
    if unknown:
        raise ValueError(f"stats: {', '.join(map(repr, unknown))} is not a Suricata stats group "
                         f"(one of {', '.join(sorted(STATS_GROUPS))})")
    stats.update(nested)
    rec = _header(None, "stats", ts)
    rec["stats"] = stats
    return rec


# --- Serialisation -----------------------------------------------------------------
def _clean_str(s: str) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        # Lone surrogates (from surrogateescape decoding, or random input)
        # are not Unicode: strict JSON parsers refuse their \\ud8xx escapes.
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _clean(v, depth: int = 0):
    """Make ``v`` something json.dumps writes as strict JSON, whatever it is.
    What records are made of (exact str, int, dict, list, None, bool) is
    dispatched on its type first: an ASCII string holds no lone surrogate;
    anything else takes _clean_any's checks in their order."""
    t = type(v)
    if t is str:
        return v if v.isascii() else _clean_str(v)
    if t is int or t is bool or v is None:
        return v
    if t is float:
        return v if math.isfinite(v) else None
    if depth < MAX_DEPTH:
        if t is dict:
            return {k if type(k) is str and k.isascii() else _clean_str(str(k)): _clean(x, depth + 1)
                    for k, x in v.items()}
        if t is list:
            return [_clean(x, depth + 1) for x in v]
    return _clean_any(v, depth)


def _clean_any(v, depth: int):
    if v is None or isinstance(v, (bool, str)):
        return _clean_str(v) if isinstance(v, str) else v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("utf-8", "backslashreplace")
    if isinstance(v, enum.Enum):
        return _clean_str(v.name)
    if depth >= MAX_DEPTH:
        return _clean_str(repr(v)[:200])
    if isinstance(v, Mapping):
        return {_clean_str(str(k)): _clean(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_clean(x, depth + 1) for x in v]
    try:
        return _clean_str(str(v))
    except Exception:
        return "<unprintable>"


def _not_json(o):
    raise TypeError(f"{type(o).__name__} is not a JSON type")


# The record's one serialiser, built once (json.dumps with keyword arguments
# builds a JSONEncoder and its C encoder on every call, ~1-2 us): compact,
# ASCII-only, no NaN; anything not of JSON's types raises (_not_json). No
# circular check: a cycle ends in RecursionError, and _encode_cleaned then
# cuts it at MAX_DEPTH. The pure-Python JSONEncoder stands in where the C
# one is missing (another interpreter).
_c_encoder = getattr(json.encoder, "c_make_encoder", None)
if _c_encoder is not None:
    _encode_raw = _c_encoder(None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",",
                             False, False, False)
    _dumps = lambda o: "".join(_encode_raw(o, 0))        # noqa: E731
else:                                                    # pragma: no cover
    _dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False,
                              check_circular=False, default=_not_json).encode
# What the serialiser writes for a record that needed cleaning and that it
# did not refuse: a surrogate's escape (a lone one is cleaned to its
# backslashreplace text; a pair of a character past U+FFFF is not, but the
# text cannot tell them apart cheaply and such records are rare) and a True,
# False or None key, which json writes as "true"/"false"/"null" and _clean
# as str(key). They are looked for by their ends (a quote inside a string
# is escaped, so only a key ends in '":'): a key like "true" or "construe"
# looks the same and that record takes the cleaning path, which writes it
# identically. Ends whose last characters are rarer in JSON text than '"'
# scan faster (the three: 1.7 against 2.8 us a record on a replay's, load 12).
_SURROGATE_ESCAPE = "\\ud"
_ODD_KEYS = ('rue":', 'lse":', 'ull":')


def _too_deep(v, depth: int) -> bool:
    """Whether a container json would write sits at MAX_DEPTH or deeper
    below ``v`` (at ``depth``), where _clean writes repr() instead; a
    subclass of dict or list (whose own items()/iteration json and _clean
    may read differently) counts as too deep, sending the record to be
    cleaned."""
    if depth >= MAX_DEPTH:
        return True
    t = type(v)
    if t is dict:
        items = v.values()
    elif t is list or t is tuple:
        items = v
    else:
        return True
    for x in items:
        if isinstance(x, (dict, list, tuple)) and _too_deep(x, depth + 1):
            return True
    return False


def _encode_cleaned(record: Mapping) -> bytes | None:
    try:
        text = _dumps(_clean(record))
    except Exception:
        return None
    return text.encode("ascii") + b"\n"


def encode(record: Mapping) -> bytes | None:
    """One record as one line of JSON (b"...\\n"); None only if even the
    cleaned record cannot be written (never seen: counted by EveLog).

    The line is the JSON of ``_clean(record)``. The builders' records need
    no cleaning (exact str, int, float, bool, None, dict, list), so the
    record is written as it is first and cleaned only when that write shows
    it needed it: a type JSON has no spelling for (bytes, an Enum, a set,
    a Mapping that is not a dict), a NaN or an infinity (refused), a
    surrogate or a bool/None key (seen in the text), more containers than
    MAX_DEPTH and one of them that deep (_too_deep). What the text cannot
    show, a subclass of str, int or float whose str() differs from its
    value used as a key (json writes the value, _clean str()), is not in
    any record the builders make."""
    try:
        text = _dumps(record)
    except Exception:
        return _encode_cleaned(record)
    if (_SURROGATE_ESCAPE in text or _ODD_KEYS[0] in text or _ODD_KEYS[1] in text or _ODD_KEYS[2] in text
            or (text.count("{") + text.count("[") > MAX_DEPTH and _too_deep(record, 0))):
        return _encode_cleaned(record)
    return text.encode("ascii") + b"\n"


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())
