"""Suricata EVE-compatible JSON records for SIEMs: building and serialising them.

One JSON object per line, with Suricata's field names and shapes, so a
pipeline built for Suricata's eve.json (Filebeat's Suricata module, Evebox,
Splunk/Elastic dashboards) reads microseg's records unchanged. What only
microseg knows (policy rule, policy generation, the kernel's reason) sits in
a ``microseg`` object, where an EVE consumer ignores it.

Builders (``flow_record``, ``alert_record``, ``http_record``,
``tls_record``, ``dns_records``, ``drop_record``, ``stats_record``,
``anomaly_record``) turn a :class:`FlowInfo` plus parser events
(protocols/*.py) into plain dicts. They are pure: no I/O; the timestamp is an
argument (now if omitted). :func:`encode` serialises a record to one line
(compact, ASCII-only JSON: valid UTF-8, non-ASCII as \\u escapes) and never
raises, whatever the strings hold. Where the lines go (file, syslog, stdout)
is slowpath/eve_sinks.py.

slowpath/eve_schema.json describes every record written here;
tests/unit/test_eve.py validates builder output against it.

Field choices follow Suricata 7's EVE (docs.suricata.io, "Eve JSON Format"):
``alert.action`` is "allowed"/"blocked" and the top-level ``verdict`` object
(Suricata 7) carries the final action ("alert", "pass", "drop"); DNS uses the
"v2" layout (one record per query, one per answer with an ``answers`` list);
TLS versions are spelled as Suricata spells them ("TLSv1", "TLS 1.2",
"UNDETERMINED"); ALPNs go in ``tls.client_alpns``/``tls.server_alpns`` as
newer Suricata logs them. ``drop.reason`` is the kernel's reason name
(bpf/lib/reasons.h), not Suricata's vocabulary ("decode error", "rules"...):
the kernel's names are more precise and no EVE consumer enumerates them.
"""
from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
import logging
import math
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import communityid

from datapath.enums import Reason, reason_description, reason_kind
from protocols.api import Direction
from protocols.dns import DnsMessage, DnsRecord
from protocols.http import HttpRequest, HttpResponse
from protocols.tls import TlsClientHello, TlsServerHello

SCHEMA_PATH = Path(__file__).with_name("eve_schema.json")

EVENT_TYPES = ("flow", "alert", "http", "tls", "dns", "drop", "stats", "anomaly")

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


# --- Community ID v1 ------------------------------------------------------------
# https://github.com/corelight/community-id-spec, computed by its reference
# implementation (the communityid package). One algorithm object per seed:
# it holds no per-flow state.
# The package logs every tuple and the bytes it hashes at INFO, the level
# the daemon logs at: four lines per flow that say nothing to an operator.
logging.getLogger(communityid.__name__).setLevel(logging.WARNING)


@lru_cache(maxsize=8)
def _community_id_algo(seed: int) -> communityid.CommunityID:
    return communityid.CommunityID(seed)


def community_id(proto: int, saddr: str, daddr: str, sport: int | None = None,
                 dport: int | None = None, *, seed: int = 0) -> str | None:
    """Community ID v1 of a flow, e.g. ``1:wCb3OG7yAFWelaUydu0D+125CLM=``.

    For ICMP (1) and ICMPv6 (58) ``sport``/``dport`` are the type and code.
    None when the protocol needs ports and they are missing (the spec lets a
    monitor omit what it cannot compute). Raises ValueError for addresses of
    different families or out-of-range values.
    """
    a, b = ipaddress.ip_address(saddr), ipaddress.ip_address(daddr)
    if a.version != b.version:
        raise ValueError(f"community_id: {saddr} and {daddr} are not the same address family")
    if not 0 <= proto <= 255 or not 0 <= seed <= 0xFFFF:
        raise ValueError(f"community_id: proto {proto} or seed {seed} out of range")
    if proto in communityid.PORT_PROTOS:
        if sport is None or dport is None:
            return None
    else:
        sport = dport = None            # the spec hashes no ports for other protocols
    try:
        tpl = communityid.FlowTuple(proto, a.packed, b.packed, sport, dport)
    except communityid.FlowTupleError as e:
        raise ValueError(f"community_id: {e}") from None
    cid = _community_id_algo(seed).calc(tpl)
    if cid is None:                     # the library could not pack the tuple
        raise ValueError(f"community_id: {_community_id_algo(seed).get_error()}")
    return cid


# --- Flows ----------------------------------------------------------------------
# EVE consumers written in JavaScript read integers as doubles; Suricata keeps
# its flow ids small for that reason, and so does make_flow_id.
_FLOW_ID_MASK = (1 << 53) - 1


def make_flow_id(proto: int, src_ip: str, src_port: int | None, dest_ip: str,
                 dest_port: int | None, start_ns: int) -> int:
    """A stable flow id (< 2**53) from the tuple and the flow's start time."""
    h = hashlib.blake2b(digest_size=8)
    for part in (proto, ipaddress.ip_address(src_ip).packed, src_port, ipaddress.ip_address(dest_ip).packed,
                 dest_port, start_ns):
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"|")
    return int.from_bytes(h.digest(), "big") & _FLOW_ID_MASK


@dataclass(frozen=True)
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

    def __post_init__(self):
        # Normalise the addresses once ("::ffff:0:1" spellings, zero padding):
        # the same flow must always print the same way.
        object.__setattr__(self, "src_ip", str(ipaddress.ip_address(self.src_ip)))
        object.__setattr__(self, "dest_ip", str(ipaddress.ip_address(self.dest_ip)))
        if ipaddress.ip_address(self.src_ip).version != ipaddress.ip_address(self.dest_ip).version:
            raise ValueError(f"FlowInfo: {self.src_ip} and {self.dest_ip} are not the same address family")
        if not 0 <= int(self.proto) <= 255:
            raise ValueError(f"FlowInfo: IP protocol {self.proto} out of range")

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    @cached_property                    # one SHA-1 per flow, not per record
    def community_id(self) -> str | None:
        if self.proto in _ICMP_PROTOS:
            return community_id(self.proto, self.src_ip, self.dest_ip, self.icmp_type, self.icmp_code)
        return community_id(self.proto, self.src_ip, self.dest_ip, self.src_port, self.dest_port)


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
    base = datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{micros:06d}+0000"


def _header(flow: FlowInfo | None, event_type: str, ts, *, direction=None,
            tx_id: int | None = None) -> dict:
    rec: dict[str, Any] = {"timestamp": format_timestamp(ts)}
    if flow is not None and flow.flow_id is not None:
        rec["flow_id"] = int(flow.flow_id)
    if flow is not None and flow.in_iface:
        rec["in_iface"] = flow.in_iface
    rec["event_type"] = event_type
    if flow is not None:
        rec["src_ip"] = flow.src_ip
        if flow.src_port is not None:
            rec["src_port"] = int(flow.src_port)
        rec["dest_ip"] = flow.dest_ip
        if flow.dest_port is not None:
            rec["dest_port"] = int(flow.dest_port)
        rec["proto"] = flow.proto_name
        if flow.proto in _ICMP_PROTOS:
            if flow.icmp_type is not None:
                rec["icmp_type"] = int(flow.icmp_type)
            if flow.icmp_code is not None:
                rec["icmp_code"] = int(flow.icmp_code)
        cid = flow.community_id
        if cid:
            rec["community_id"] = cid
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


def _microseg(rec: dict, **fields) -> None:
    """Add the microseg-only fields that have a value."""
    extra = {k: v for k, v in fields.items() if v is not None and v != ()}
    if extra:
        rec.setdefault("microseg", {}).update(extra)


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


def http_record(flow: FlowInfo, request: HttpRequest | None, response: HttpResponse | None = None,
                ts=None, *, length: int | None = None, tx_id: int | None = None) -> dict:
    """One HTTP transaction: the request head and, when seen, the response head.

    ``length`` is the response body size (HttpMessageEnd.body_size).
    """
    if request is None and response is None:
        raise ValueError("http_record needs a request or a response")
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
    rec = _header(flow, "http", ts, tx_id=tx_id)
    rec["http"] = http
    rec["app_proto"] = "http"
    anomalies = tuple(request.anomalies if request is not None else ()) + \
        tuple(response.anomalies if response is not None else ())
    _microseg(rec, anomalies=list(dict.fromkeys(anomalies)) or None)
    return rec


# Suricata's anomaly layer for an event its app-layer parser raised.
ANOMALY_LAYER_PARSER = "proto_parser"


def anomaly_record(flow: FlowInfo, event: str, ts=None, *, app_proto: str = "http",
                   layer: str = ANOMALY_LAYER_PARSER, direction=None, tx_id: int | None = None) -> dict:
    """Suricata's ``anomaly`` record for an application-layer event (a
    protocol deviation the parser tolerated, e.g. "METHOD_UNKNOWN").
    Nothing under ``microseg``: the record is Suricata's shape exactly."""
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


def tls_record(flow: FlowInfo, client_hello: TlsClientHello | None, server_hello: TlsServerHello | None = None,
               ts=None, *, tx_id: int | None = None) -> dict:
    """The handshake in the clear: SNI, negotiated version, JA3/JA3S/JA4, ALPNs."""
    if client_hello is None and server_hello is None:
        raise ValueError("tls_record needs a ClientHello or a ServerHello")
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
    rec = _header(flow, "tls", ts, tx_id=tx_id)
    rec["tls"] = tls
    rec["app_proto"] = "tls"
    return rec


def _dns_flags(msg: DnsMessage) -> int:
    # The header's second 16-bit word, rebuilt from the decoded bits (the Z
    # bit is not kept by the parser and is written as 0).
    return ((msg.response << 15) | ((msg.opcode & 0xF) << 11) | (msg.aa << 10) | (msg.tc << 9)
            | (msg.rd << 8) | (msg.ra << 7) | (msg.ad << 5) | (msg.cd << 4) | (msg.rcode & 0xF))


def _dns_rr(r: DnsRecord) -> dict:
    return {"rrname": r.name, "rrtype": r.type_name, "ttl": int(r.ttl), "rdata": r.data}


def dns_records(flow: FlowInfo, msg: DnsMessage, ts=None, *, tx_id: int | None = None) -> list[dict]:
    """Suricata's DNS "v2" records: one per question of a query, one per response."""
    out = []
    if not msg.response:
        # A query without questions still gets one record: it was seen.
        for q in msg.questions or (None,):
            dns: dict[str, Any] = {"type": "query", "id": msg.id}
            if q is not None:
                dns["rrname"] = q.name
                dns["rrtype"] = q.type_name
            dns["opcode"] = msg.opcode
            rec = _header(flow, "dns", ts, tx_id=tx_id)
            rec["dns"] = dns
            rec["app_proto"] = "dns"
            out.append(rec)
        return out
    dns = {"version": 2, "type": "answer", "id": msg.id, "flags": f"{_dns_flags(msg):x}", "qr": True}
    # Suricata writes a flag only when it is set.
    for name in ("aa", "tc", "rd", "ra"):
        if getattr(msg, name):
            dns[name] = True
    dns["opcode"] = msg.opcode
    if msg.questions:
        dns["rrname"] = msg.questions[0].name
        dns["rrtype"] = msg.questions[0].type_name
    dns["rcode"] = msg.rcode_name
    if msg.answers:
        dns["answers"] = [_dns_rr(r) for r in msg.answers]
    if msg.authority:
        dns["authorities"] = [_dns_rr(r) for r in msg.authority]
    rec = _header(flow, "dns", ts, tx_id=tx_id)
    rec["dns"] = dns
    rec["app_proto"] = "dns"
    return [rec]


def _attr(obj, name: str, default=None):
    """Read ``name`` from an object or a mapping (a rule hit may be either)."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _severity(v) -> int:
    if v is None:
        return DEFAULT_SEVERITY
    if isinstance(v, str):
        if v.strip().isdigit():
            v = int(v)
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


def alert_record(flow: FlowInfo, hit, ts=None, *, direction=None, tx_id: int | None = None,
                 policy_generation: int | None = None, reject_target: str | None = None,
                 reject: Iterable[str] = ()) -> dict:
    """A rule matched. ``hit`` has (as attributes or keys) ``rule_id``,
    ``rule_name``, ``category``, ``action``, ``severity`` and, optionally,
    ``field``, ``matched``, ``rev``. src/dest stay the flow's (initiator
    first, like every other record here); ``direction`` says which way the
    matching bytes went."""
    action = str(_attr(hit, "action", "alert") or "alert").lower()
    alert = {
        "action": "blocked" if action in _BLOCKING else "allowed",
        "gid": 1,
        "signature_id": int(_attr(hit, "rule_id", 0) or 0),
        "rev": int(_attr(hit, "rev", 1) or 1),
        "signature": _text(_attr(hit, "rule_name", "") or ""),
        "category": _text(_attr(hit, "category", "") or ""),
        "severity": _severity(_attr(hit, "severity")),
    }
    rec = _header(flow, "alert", ts, direction=direction, tx_id=tx_id)
    rec["alert"] = alert
    rec["verdict"] = verdict_for(action, reject_target=reject_target, reject=reject)
    _set_app_proto(rec, flow.app_proto)
    matched = _attr(hit, "matched")
    truncated = None
    if matched is not None:
        matched = _text(matched)
        if len(matched) > MATCHED_MAX_CHARS:
            matched, truncated = matched[:MATCHED_MAX_CHARS], True
    field = _attr(hit, "field")
    _microseg(rec, rule_id=alert["signature_id"], rule_action=action,
              field=None if field is None else _text(field), matched=matched,
              matched_truncated=truncated, policy_generation=policy_generation)
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
    _microseg(rec, reason=r.name, reason_description=reason_description(r),
              hook=None if hook is None else _hook(hook), rule_id=rule_id,
              policy_generation=policy_generation)
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
        "start": format_timestamp(start), "end": format_timestamp(end),
        "age": max(0, int(end - start)), "state": state, "reason": reason, "alerted": bool(alerted),
    }
    _set_app_proto(rec, flow.app_proto)
    _microseg(rec, ct_state=ct_state, rule_id=rule_id, policy_generation=policy_generation,
              inspection_verdict=verdict, verdict_latency_us=verdict_latency_us)
    return rec


def _nest(counters: Mapping) -> dict:
    """{"a.b": 1, "c": {"d": 2}} -> {"a": {"b": 1}, "c": {"d": 2}}.

    Values are numbers; a NaN or infinite one (a ratio of nothing) is left
    out, as there is no JSON number to write for it."""
    out: dict = {}
    for key, value in counters.items():
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if not isinstance(value, (int, float, Mapping)):
            raise ValueError(f"stats: {key!r} is {type(value).__name__}, not a number")
        if isinstance(value, bool):
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


def stats_record(counters: Mapping, ts=None, *, uptime: float = 0) -> dict:
    """Periodic counters, nested like Suricata's ``stats`` (dotted keys nest)."""
    stats = {"uptime": max(0, int(uptime))}
    stats.update(_nest(counters))
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
    """Make ``v`` something json.dumps writes as strict JSON, whatever it is."""
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


def encode(record: Mapping) -> bytes | None:
    """One record as one line of JSON (b"...\\n"); None only if even the
    cleaned record cannot be written (never seen: counted by EveLog)."""
    try:
        text = json.dumps(_clean(record), ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    except Exception:
        return None
    return text.encode("ascii") + b"\n"


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())
