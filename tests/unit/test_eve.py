"""slowpath/eve.py and eve_sinks.py: Suricata EVE records, Community ID, and the sinks.

Every builder's output is validated strictly against Suricata's own EVE schema
(../shared/reference, tests/eve_schemas.py) and the project's overlay,
slowpath/eve_schema.json. Parser
events come from the real parsers fed real bytes, so a change in an event's
fields shows up here. Syslog is checked over real UDP and TCP sockets on
127.0.0.1; nothing here needs privileges.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import socket
import struct
import threading
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import dpkt
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datapath.enums import CtState, Reason, reason_kind
from protocols.api import Direction
from protocols.dns import DnsMessage, DnsParser, DnsQuestion, DnsRecord
from protocols.http import HttpParser, HttpRequest, HttpResponse
from protocols.tls import TlsClientHello, TlsParser, TlsServerHello
from slowpath import eve, eve_sinks
from tests.eve_schemas import require_suricata, schema_errors

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
SCHEMA = eve.load_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
TS = 1_795_000_000.123456          # 2026-11-18T11:06:40Z, a wall-clock time in seconds

FLOW = eve.FlowInfo(flow_id=1_234_567, src_ip="10.1.0.5", src_port=51000, dest_ip="93.184.216.34",
                    dest_port=80, proto=6, app_proto="http", start=TS - 10)
UDP_FLOW = eve.FlowInfo(7, "10.1.0.5", 40123, "10.9.9.9", 53, 17, "dns", start=TS)
TLS_FLOW = eve.FlowInfo(8, "2001:db8::5", 50000, "2001:db8::443", 443, 6, "tls", start=TS)


def valid(record: dict) -> dict:
    """Validate against both schemas and through a serialise/parse round trip."""
    errors = schema_errors(record)
    assert not errors, "\n".join(errors)
    line = eve.encode(record)
    assert line is not None and line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == record
    return record


def test_schema_is_a_valid_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


# --- Community ID ----------------------------------------------------------------
# Published vectors: corelight/community-id-spec, baseline/README.md ("Default
# settings" and "A custom seed=1 value" tables, made by pycommunityid) and
# baseline/baseline_deflt.json (tuples from the repository's pcaps). For ICMP
# the two port columns are the type and the code.
V4 = ("1.2.3.4", "5.6.7.8")
V6 = ("fe80:0001:0203:0405:0607:0809:0A0B:0C0D", "fe80:1011:1213:1415:1617:1819:1A1B:1C1D")
SPEC_VECTORS = [
    # proto, saddr, daddr, sport, dport, seed, expected
    (6, *V4, 1122, 3344, 0, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
    (6, *V4[::-1], 3344, 1122, 0, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
    (17, *V4, 1122, 3344, 0, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="),
    (17, *V4[::-1], 3344, 1122, 0, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="),
    (132, *V4, 1122, 3344, 0, "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8="),
    (1, *V4, 8, 0, 0, "1:crodRHL2FEsHjbv3UkRrfbs4bZ0="),
    (1, *V4[::-1], 0, 0, 0, "1:crodRHL2FEsHjbv3UkRrfbs4bZ0="),
    (1, *V4, 11, 0, 0, "1:f/YiSyWqczrTgfUCZlBUnvHRcPk="),
    (58, *V6, 128, 0, 0, "1:0bf7hyMJUwt3fMED7z8LIfRpBeo="),
    (58, *V6[::-1], 129, 0, 0, "1:0bf7hyMJUwt3fMED7z8LIfRpBeo="),
    (58, *V6, 146, 0, 0, "1:fYC8+pz24E+EhANP1EZhpX0Dw10="),
    (46, *V4, None, None, 0, "1:ikv3kmf89luf73WPz1jOs49S768="),
    (46, *V4[::-1], None, None, 0, "1:ikv3kmf89luf73WPz1jOs49S768="),
    (46, *V6, None, None, 0, "1:wQ/2mwrnXP4lmJcHdGL5ePjR+e0="),
    (6, *V4, 1122, 3344, 1, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
    (17, *V4, 1122, 3344, 1, "1:OShq+iKDAMVouh/4bMxB9Sz4amw="),
    (132, *V4, 1122, 3344, 1, "1:uitchpn5MMGAQKBJh7bIr/bAr7s="),
    (1, *V4, 8, 0, 1, "1:9pr4ZGTICiuZoIh90RRYE2RyXpU="),
    (1, *V4, 11, 0, 1, "1:1DD7cWGC/Yg91YGsQeni8du3pIA="),
    (58, *V6, 128, 0, 1, "1:IO27GQzPuCtNnwFvjWALMHu5tJE="),
    (58, *V6, 146, 0, 1, "1:Cv4IKJe56BNkF0MBW2YxQ3Nwc3s="),
    (46, *V4, None, None, 1, "1:/buhqeOmaRCopOZFy9HnoJd5XW8="),
    (46, *V6, None, None, 1, "1:j6EyyfBzL4vWKHFXgUqb5Az3OxM="),
    # baseline_deflt.json
    (6, "2001:470:e5bf:dead:4957:2174:e82c:4887", "2607:f8b0:400c:c03::1a", 63943, 25, 0,
     "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="),
    (6, "128.232.110.120", "66.35.250.204", 34855, 80, 0, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (6, "66.35.250.204", "128.232.110.120", 80, 34855, 0, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (17, "8.8.8.8", "192.168.1.52", 53, 54585, 0, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
    (132, "192.168.170.56", "192.168.170.8", 7, 7, 0, "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 135, 0, 0, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 136, 0, 0, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
    (58, "3ffe:501:410:0:2c0:dfff:fe47:33e", "3ffe:507:0:1:200:86ff:fe05:80da", 1, 4, 0,
     "1:hLZd0XGWojozrvxqE0dWB1iM6R0="),
    (58, "fe80::200:86ff:fe05:80da", "ff02::2", 133, 0, 0, "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0="),
    (58, "fe80::260:97ff:fe07:69ea", "ff02::1", 134, 0, 0, "1:pkvHqCL88/tg1k4cPigmZXUtL00="),
    (1, "192.168.0.1", "192.168.0.89", 0, 0, 0, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
    (1, "10.0.0.1", "10.0.0.2", 11, 0, 0, "1:YHxtAirCG//0OzkcVAukqKQN9xM="),
    (46, "10.1.12.2", "10.1.12.1", None, None, 0, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw="),
]


@pytest.mark.parametrize("proto,saddr,daddr,sport,dport,seed,expected", SPEC_VECTORS)
def test_community_id_published_vectors(proto, saddr, daddr, sport, dport, seed, expected):
    assert eve.community_id(proto, saddr, daddr, sport, dport, seed=seed) == expected


def test_community_id_one_way_icmp_is_not_reordered():
    # Time exceeded (11) has no counterpart: which side sent it matters.
    a = eve.community_id(1, "10.0.0.9", "10.0.0.1", 11, 0)
    b = eve.community_id(1, "10.0.0.1", "10.0.0.9", 11, 0)
    assert a != b


def test_community_id_without_needed_ports_and_bad_input():
    assert eve.community_id(6, *V4) is None
    assert eve.community_id(1, *V4, 8, None) is None
    with pytest.raises(ValueError):
        eve.community_id(6, "1.2.3.4", "::1", 1, 2)
    with pytest.raises(ValueError):
        eve.community_id(6, *V4, 1, 70000)


def test_community_id_logs_nothing_at_the_daemons_level(caplog):
    # The daemon logs at INFO; the communityid package logs each tuple and
    # the bytes it hashes at INFO, which would be four lines per flow.
    caplog.set_level(logging.INFO)
    assert eve.community_id(6, "10.9.8.7", "10.9.8.6", 4242, 443)
    assert [r for r in caplog.records if r.name.startswith("communityid")] == []


def test_flow_info_community_id_and_flow_id():
    icmp = eve.FlowInfo(1, V6[1], None, V6[0], None, 58, icmp_type=129, icmp_code=0)
    assert icmp.community_id == "1:0bf7hyMJUwt3fMED7z8LIfRpBeo="
    fid = eve.make_flow_id(6, "10.0.0.1", 1, "10.0.0.2", 2, 123)
    assert 0 <= fid < 2**53
    assert fid == eve.make_flow_id(6, "10.0.0.1", 1, "10.0.0.2", 2, 123)
    assert fid != eve.make_flow_id(6, "10.0.0.1", 1, "10.0.0.2", 2, 124)
    with pytest.raises(ValueError):
        eve.FlowInfo(1, "10.0.0.1", 1, "::1", 2, 6)
    # Addresses are normalised: one flow prints one way.
    assert eve.FlowInfo(1, "2001:DB8:0::1", 1, "::ffff:1.2.3.4", 2, 6).src_ip == "2001:db8::1"


# --- Common fields -----------------------------------------------------------------
def test_timestamp_format_and_rounding():
    assert eve.format_timestamp(0) == "1970-01-01T00:00:00.000000+0000"
    assert eve.format_timestamp(1.9999996) == "1970-01-01T00:00:02.000000+0000"
    ts = eve.format_timestamp(datetime(2026, 11, 27, 19, 40, 54, 123456, tzinfo=timezone.utc))
    assert ts == "2026-11-27T19:40:54.123456+0000"


# --- HTTP ------------------------------------------------------------------------
def http_events(request: bytes, response: bytes = b""):
    p = HttpParser()
    events = p.receive_data(request, C) + (p.receive_data(response, S) if response else [])
    req = next((e for e in events if isinstance(e, HttpRequest)), None)
    resp = next((e for e in events if isinstance(e, HttpResponse)), None)
    return req, resp


def test_http_record_has_suricata_fields():
    req, resp = http_events(
        b"POST /login?next=%2F HTTP/1.1\r\nHost: WWW.Example.com:8080\r\nUser-Agent: curl/8.5\r\n"
        b"Referer: http://example.com/\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 302 Found\r\nLocation: /home\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello")
    rec = valid(eve.http_record(FLOW, req, resp, TS, length=5, tx_id=0))
    assert rec["event_type"] == "http" and rec["app_proto"] == "http" and rec["proto"] == "TCP"
    assert rec["timestamp"] == "2026-11-18T11:06:40.123456+0000"
    assert rec["flow_id"] == 1_234_567 and rec["tx_id"] == 0
    assert rec["community_id"].startswith("1:")
    assert rec["http"] == {
        "hostname": "www.example.com", "http_port": 8080, "url": "/login?next=%2F",
        "http_user_agent": "curl/8.5", "http_content_type": "text/html",
        "http_refer": "http://example.com/", "http_method": "POST", "protocol": "HTTP/1.1",
        "status": 302, "redirect": "/home", "length": 5}
    assert "microseg" not in rec


@pytest.mark.parametrize("host,name,port", [
    ("[2001:db8::1]:8443", "2001:db8::1", 8443), ("[::1]", "::1", None), ("a.example.", "a.example", None),
    ("x:99999", "x", None), ("2001:db8::1", "2001:db8::1", None)])
def test_http_host_split(host, name, port):
    assert eve._split_host(host) == (name, port)


def test_http_request_only_response_only_and_anomalies():
    req, _ = http_events(b"GET / HTTP/1.0\n\n")           # bare LF, no Host
    assert req.anomalies == ("LINE_TERMINATOR_BARE_LF",)
    rec = valid(eve.http_record(FLOW, req, None, TS))
    assert "hostname" not in rec["http"] and rec["http"]["protocol"] == "HTTP/1.0"
    # The anomaly is an anomaly record of its own (the engine writes it), not a field here.
    assert set(rec) == {"timestamp", "flow_id", "event_type", "src_ip", "src_port", "dest_ip", "dest_port",
                        "proto", "community_id", "http", "app_proto"}
    _, resp = http_events(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n")
    rec = valid(eve.http_record(FLOW, None, resp, TS))
    assert rec["http"] == {"protocol": "HTTP/1.1", "status": 204}
    with pytest.raises(ValueError):
        eve.http_record(FLOW, None, None, TS)


# --- TLS -------------------------------------------------------------------------
def _u8v(b: bytes) -> bytes:
    return bytes([len(b)]) + b


def _u16v(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def _ext(t: int, body: bytes = b"") -> bytes:
    return struct.pack(">H", t) + _u16v(body)


def _hs(msg_type: int, body: bytes) -> bytes:
    msg = bytes([msg_type]) + len(body).to_bytes(3, "big") + body
    return struct.pack(">BHH", 22, 0x0303, len(msg)) + msg


def tls_hellos():
    ch_exts = (_ext(0, _u16v(b"\x00" + _u16v(b"shop.example.org")))
               + _ext(10, _u16v(struct.pack(">HH", 29, 23))) + _ext(11, _u8v(b"\x00"))
               + _ext(13, _u16v(struct.pack(">HH", 0x0403, 0x0804)))
               + _ext(16, _u16v(_u8v(b"h2") + _u8v(b"http/1.1")))
               + _ext(43, _u8v(struct.pack(">HH", 0x0304, 0x0303))))
    ch = (struct.pack(">H", 0x0303) + bytes(32) + _u8v(b"") + _u16v(struct.pack(">HHH", 0x1301, 0x1302, 0xC02F))
          + _u8v(b"\x00") + _u16v(ch_exts))
    sh_exts = _ext(43, struct.pack(">H", 0x0304)) + _ext(16, _u16v(_u8v(b"h2")))
    sh = struct.pack(">H", 0x0303) + bytes(range(32)) + _u8v(b"") + struct.pack(">H", 0x1301) + b"\x00" + _u16v(sh_exts)
    p = TlsParser()
    client = next(e for e in p.receive_data(_hs(1, ch), C) if isinstance(e, TlsClientHello))
    server = next(e for e in p.receive_data(_hs(2, sh), S) if isinstance(e, TlsServerHello))
    return client, server


def test_tls_record_has_suricata_fields():
    client, server = tls_hellos()
    rec = valid(eve.tls_record(TLS_FLOW, client, server, TS))
    tls = rec["tls"]
    assert rec["app_proto"] == "tls" and rec["src_ip"] == "2001:db8::5"
    assert tls["sni"] == "shop.example.org" and tls["version"] == "TLS 1.3"
    assert tls["ja3"] == {"hash": hashlib.md5(client.ja3_string.encode()).hexdigest(), "string": client.ja3_string}
    assert tls["ja3"]["string"] == "771,4865-4866-49199,0-10-11-13-16-43,29-23,0"
    assert tls["ja3s"] == {"hash": server.ja3s, "string": "771,4865,43-16"}
    assert tls["ja4"] == client.ja4
    assert tls["client_alpns"] == ["h2", "http/1.1"] and tls["server_alpns"] == ["h2"]


def test_tls_without_server_hello_is_undetermined():
    client, _ = tls_hellos()
    rec = valid(eve.tls_record(TLS_FLOW, client, None, TS))
    assert rec["tls"]["version"] == "UNDETERMINED" and "ja3s" not in rec["tls"]


@pytest.mark.parametrize("version,name", [
    (None, "UNDETERMINED"), (0x0002, "SSLv2"), (0x0300, "SSLv3"), (0x0301, "TLSv1"), (0x0302, "TLS 1.1"),
    (0x0303, "TLS 1.2"), (0x0304, "TLS 1.3"), (0x7F1C, "TLS 1.3 draft-28"), (0xFB1A, "0xfb1a")])
def test_tls_version_names_as_suricata_writes_them(version, name):
    assert eve.tls_version_name(version) == name


# --- DNS -------------------------------------------------------------------------
def dns_message(msg: dpkt.dns.DNS, direction=S) -> DnsMessage:
    (event,) = DnsParser("udp").receive_data(bytes(msg), direction)
    assert isinstance(event, DnsMessage), event
    return event


def test_dns_query_is_one_v3_request_record():
    q = dpkt.dns.DNS(id=0x1F40, op=dpkt.dns.DNS_RD,
                     qd=[dpkt.dns.DNS.Q(name="twitter.com", type=dpkt.dns.DNS_A),
                         dpkt.dns.DNS.Q(name="twitter.com", type=dpkt.dns.DNS_AAAA)])
    (rec,) = [valid(r) for r in eve.dns_records(UDP_FLOW, dns_message(q, C), TS, tx_id=0)]
    # Suricata 8 (EVE DNS v3): "version" on requests too, the questions in "queries".
    assert rec["dns"] == {"version": 3, "type": "request", "tx_id": 0, "id": 8000, "flags": "100", "rd": True,
                          "opcode": 0, "rcode": "NOERROR",
                          "queries": [{"rrname": "twitter.com", "rrtype": "A"},
                                      {"rrname": "twitter.com", "rrtype": "AAAA"}]}
    assert rec["app_proto"] == "dns" and rec["proto"] == "UDP" and rec["tx_id"] == 0


def test_dns_response_v3_with_answers_and_grouped():
    a = dpkt.dns.DNS(id=45444, op=0x8180, qd=[dpkt.dns.DNS.Q(name="www.suricata-ids.org", type=1)], an=[
        dpkt.dns.DNS.RR(name="www.suricata-ids.org", type=dpkt.dns.DNS_CNAME, ttl=3324, cname="suricata-ids.org"),
        dpkt.dns.DNS.RR(name="suricata-ids.org", type=1, ttl=10, rdata=bytes([192, 0, 78, 24]))])
    (rec,) = eve.dns_records(UDP_FLOW, dns_message(a), TS)
    assert valid(rec)["dns"] == {
        "version": 3, "type": "response", "id": 45444, "flags": "8180", "qr": True, "rd": True, "ra": True,
        "opcode": 0, "rcode": "NOERROR", "queries": [{"rrname": "www.suricata-ids.org", "rrtype": "A"}],
        "answers": [
            {"rrname": "www.suricata-ids.org", "rrtype": "CNAME", "ttl": 3324, "rdata": "suricata-ids.org"},
            {"rrname": "suricata-ids.org", "rrtype": "A", "ttl": 10, "rdata": "192.0.78.24"}],
        "grouped": {"CNAME": ["suricata-ids.org"], "A": ["192.0.78.24"]}}


def test_dns_nxdomain_with_authority_and_aa():
    soa = dpkt.dns.DNS.RR(name="example.com", type=dpkt.dns.DNS_SOA, ttl=900, mname="ns.example.com",
                          rname="admin.example.com", serial=1, refresh=2, retry=3, expire=4, minimum=5)
    a = dpkt.dns.DNS(id=9, op=0x8583, qd=[dpkt.dns.DNS.Q(name="nope.example.com", type=1)], ns=[soa])
    (rec,) = eve.dns_records(UDP_FLOW, dns_message(a), TS)
    dns = valid(rec)["dns"]
    assert dns["rcode"] == "NXDOMAIN" and dns["aa"] is True and dns["flags"] == "8583"
    assert "answers" not in dns and dns["authorities"][0]["rrtype"] == "SOA"
    assert dns["authorities"][0]["soa"] == {"mname": "ns.example.com", "rname": "admin.example.com", "serial": 1,
                                            "refresh": 2, "retry": 3, "expire": 4, "minimum": 5}


# --- SSH -------------------------------------------------------------------------
def ssh_events():
    from protocols.ssh import SshBanner, SshKexInit, SshParser
    p = SshParser()
    kex = (bytes([20]) + bytes(16) + b"".join(_u32v(x) for x in (b"curve25519-sha256", b"ssh-ed25519",
           b"aes128-ctr", b"aes128-ctr", b"hmac-sha2-256", b"hmac-sha2-256", b"none", b"none", b"", b""))
           + b"\x00" + bytes(4))
    pkt = bytes([4]) + kex + bytes(4)
    wire = struct.pack(">I", len(pkt)) + pkt
    events = (p.receive_data(b"SSH-2.0-OpenSSH_9.6p1 Debian-4\r\n" + wire, C)
              + p.receive_data(b"SSH-2.0-dropbear_2022.83\r\n" + wire, S))
    banners = {e.direction: e for e in events if isinstance(e, SshBanner)}
    kexinits = {e.direction: e for e in events if isinstance(e, SshKexInit)}
    return banners, kexinits


def _u32v(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def test_ssh_record_has_suricata_fields():
    banners, kexinits = ssh_events()
    assert set(banners) == set(kexinits) == {C, S}
    rec = valid(eve.ssh_record(FLOW, banners, kexinits, TS))
    assert rec["event_type"] == "ssh" and rec["app_proto"] == "ssh"
    assert rec["ssh"]["client"]["proto_version"] == "2.0"
    assert rec["ssh"]["client"]["software_version"] == "OpenSSH_9.6p1"
    assert rec["ssh"]["server"]["software_version"] == "dropbear_2022.83"
    assert rec["ssh"]["client"]["hassh"] == {"hash": kexinits[C].hassh, "string": kexinits[C].hassh_algorithms}
    assert valid(eve.ssh_record(FLOW, {C: banners[C]}, None, TS))["ssh"] == {
        "client": {"proto_version": "2.0", "software_version": "OpenSSH_9.6p1"}}


# --- Alerts, drops, flows, stats ---------------------------------------------------
@pytest.mark.parametrize("action,alert_action,verdict", [
    ("alert", "allowed", "alert"), ("log", "allowed", "alert"), ("pass", "allowed", "pass"),
    ("allow", "allowed", "pass"), ("drop", "blocked", "drop"), ("deny", "blocked", "drop"),
    ("reject", "blocked", "drop"), ("DROP", "blocked", "drop")])
def test_alert_actions_and_verdicts(action, alert_action, verdict):
    hit = SimpleNamespace(rule_id=2001, rule_name="WAF: SQL injection in query", category="web-attack",
                          action=action, severity=2, field="http.uri", matched="' OR 1=1--")
    rec = valid(eve.alert_record(FLOW, hit, TS, direction=C, policy_generation=17))
    # microseg's own: Suricata's rule metadata (a list of strings per key).
    assert rec["alert"] == {"action": alert_action, "gid": 1, "signature_id": 2001, "rev": 1,
                            "signature": "WAF: SQL injection in query", "category": "web-attack", "severity": 2,
                            "metadata": {"rule_action": [action.lower()], "field": ["http.uri"],
                                         "matched": ["' OR 1=1--"], "policy_generation": ["17"]}}
    assert rec["verdict"] == {"action": verdict}
    assert rec["direction"] == "to_server" and rec["app_proto"] == "http"


def test_alert_from_a_mapping_with_odd_values():
    hit = {"rule_id": 5, "rule_name": b"bytes\xffname", "action": "reject", "severity": "high",
           "matched": b"\x00\xff" * 400}
    rec = valid(eve.alert_record(FLOW, hit, TS, reject_target="to_client", reject=["tcp-reset"]))
    assert rec["alert"]["signature"] == "bytes\\xffname" and rec["alert"]["severity"] == 1
    assert rec["alert"]["category"] == ""
    assert rec["verdict"] == {"action": "drop", "reject-target": "to_client", "reject": ["tcp-reset"]}
    meta = rec["alert"]["metadata"]
    assert len(meta["matched"][0]) == eve.MATCHED_MAX_CHARS and meta["matched_truncated"] == ["true"]
    assert valid(eve.alert_record(FLOW, {"rule_id": 1}, TS))["alert"]["severity"] == eve.DEFAULT_SEVERITY


def test_alert_carries_its_context_as_suricata_does():
    """Suricata's alerts carry the transaction's app-layer object, the flow's
    counters and tuple, app_proto and the verdict."""
    req, resp = http_events(b"GET /admin HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: sqlmap/1.7\r\n\r\n")
    hit = SimpleNamespace(rule_id=900003, rule_name="scanner user agent", category="recon", action="block",
                          severity=3, field="http.header.user-agent", matched="sqlmap", direction=C)
    rec = valid(eve.alert_record(FLOW, hit, TS, direction=C, app_layer={"http": eve.http_object(req)},
                                 counters=((3, 2), (420, 180))))
    assert rec["http"] == {"hostname": "shop.example", "url": "/admin", "http_user_agent": "sqlmap/1.7",
                           "http_method": "GET", "protocol": "HTTP/1.1"}
    assert rec["flow"] == {"pkts_toserver": 3, "pkts_toclient": 2, "bytes_toserver": 420, "bytes_toclient": 180,
                           "start": eve.format_timestamp(TS - 10), "src_ip": "10.1.0.5",
                           "dest_ip": "93.184.216.34", "src_port": 51000, "dest_port": 80}
    assert rec["app_proto"] == "http" and rec["verdict"] == {"action": "drop"}
    client, server = tls_hellos()
    rec = valid(eve.alert_record(TLS_FLOW, hit, TS, app_layer={"tls": eve.tls_object(client, server)}))
    assert rec["tls"]["sni"] == "shop.example.org" and rec["flow"]["pkts_toserver"] == 0
    q = dpkt.dns.DNS(id=7, op=dpkt.dns.DNS_RD, qd=[dpkt.dns.DNS.Q(name="evil.example", type=dpkt.dns.DNS_A)])
    rec = valid(eve.alert_record(UDP_FLOW, hit, TS, app_layer={"dns": eve.dns_object(dns_message(q, C))}))
    assert rec["dns"]["queries"] == [{"rrname": "evil.example", "rrtype": "A"}]
    banners, kexinits = ssh_events()
    rec = valid(eve.alert_record(FLOW, hit, TS, app_layer={"ssh": eve.ssh_object(banners, kexinits)}))
    assert rec["ssh"]["server"]["software_version"] == "dropbear_2022.83"
    with pytest.raises(ValueError):
        eve.alert_record(FLOW, hit, TS, app_layer={"mysql": {"command": "x"}})


def test_every_kernel_drop_reason_makes_a_valid_drop_record():
    drops = [r for r in Reason if reason_kind(r) == "DROP"]
    assert drops
    for r in drops:
        rec = valid(eve.drop_record(FLOW, r, TS, hook="ingress"))
        assert rec["drop"]["reason"] == r.name
        assert rec["metadata"]["pktvars"][0] == {"hook": "ingress"}
        assert rec["verdict"] == {"action": "drop"}
    with pytest.raises(ValueError):
        eve.drop_record(FLOW, "PASS_FORWARD", TS)
    with pytest.raises(ValueError):
        eve.drop_record(FLOW, "NO_SUCH_REASON", TS)


def test_drop_without_a_tuple_and_with_packet_fields():
    rec = valid(eve.drop_record(None, "DROP_IPV4_TRUNCATED", TS, hook="egress"))
    assert set(rec) == {"timestamp", "event_type", "drop", "verdict", "metadata"}
    rec = valid(eve.drop_record(FLOW, Reason.DROP_TCP_OUT_OF_WINDOW.value, TS, direction=S, rule_id=4,
                                packet={"len": 52, "ttl": 63, "tcpseq": 1, "syn": 0, "ack": 1, "bogus": 9}))
    assert rec["drop"] == {"len": 52, "ttl": 63, "tcpseq": 1, "syn": False, "ack": True,
                           "reason": "DROP_TCP_OUT_OF_WINDOW"}
    assert rec["direction"] == "to_client"
    assert rec["metadata"] == {"pktvars": [{"reason_description": eve.reason_description(
        Reason.DROP_TCP_OUT_OF_WINDOW)}, {"rule_id": "4"}]}


def test_flow_record_and_states_of_every_ct_state():
    rec = valid(eve.flow_record(FLOW, TS + 170.5, pkts_toserver=23, pkts_toclient=21, bytes_toserver=4884,
                                bytes_toclient=7392, reason="timeout", alerted=True, ct_state="CT_TIME_WAIT"))
    assert rec["timestamp"] == eve.format_timestamp(TS + 170.5)
    assert rec["flow"] == {"pkts_toserver": 23, "pkts_toclient": 21, "bytes_toserver": 4884,
                           "bytes_toclient": 7392, "start": eve.format_timestamp(TS - 10),
                           "end": eve.format_timestamp(TS + 170.5), "age": 180, "state": "closed",
                           "reason": "timeout", "alerted": True}
    assert rec["metadata"] == {"flowvars": [{"ct_state": "CT_TIME_WAIT"}]}
    rec = valid(eve.flow_record(FLOW, TS, rule_id=12, policy_generation=3, verdict="block",
                                verdict_latency_us=850))
    # microseg's own: Suricata's flow variables and the flow's action.
    assert rec["flow"]["action"] == "drop"
    assert rec["metadata"] == {"flowints": {"rule_id": 12, "policy_generation": 3, "verdict_latency_us": 850},
                               "flowvars": [{"inspection_verdict": "block"}]}
    assert valid(eve.flow_record(FLOW, TS, verdict="allow"))["flow"]["action"] == "pass"
    for ct in CtState:
        state = valid(eve.flow_record(UDP_FLOW, TS, ct_state=ct.name))["flow"]["state"]
        assert state in eve.FLOW_STATES
    assert eve.flow_state_for("CT_SYN_SENT") == "new"
    assert eve.flow_state_for("CT_ESTABLISHED") == "established"
    with pytest.raises(ValueError):
        eve.flow_record(FLOW, TS, reason="evicted")
    with pytest.raises(ValueError):
        eve.flow_record(FLOW, TS, state="half-open")


def test_stats_record_nests_dotted_names():
    rec = valid(eve.stats_record({"decoder.pkts": 10, "decoder.bytes": 0, "flow": {"active": 3},
                                  "detect.alert": 2}, TS, uptime=3600.7))
    assert rec["stats"] == {"uptime": 3600, "decoder": {"pkts": 10, "bytes": 0}, "flow": {"active": 3},
                            "detect": {"alert": 2}}
    with pytest.raises(ValueError):
        eve.stats_record({"flow": 1, "flow.active": 2}, TS)
    with pytest.raises(ValueError):
        eve.stats_record({"flow.active": "1"}, TS)
    assert valid(eve.stats_record({"flow.active": True, "flow.nan": float("nan"), "flow.inf": -float("inf")},
                                  TS))["stats"] == {"uptime": 0, "flow": {"active": 1}}


def test_stats_only_in_suricata_groups():
    """Suricata's stats schema has a fixed set of groups: ``slowpath`` is
    not one of them, so the slow path's counters go under Suricata's names."""
    with pytest.raises(ValueError, match="slowpath"):
        eve.stats_record({"slowpath.records": 1}, TS)
    counters = eve.suricata_stats({"slowpath.records": 40, "slowpath.bytes": 9000, "slowpath.flows": 3,
                                   "slowpath.verdicts.verdict_allow": 5, "slowpath.hits.sqli": 2,
                                   "slowpath.hits.domain": 1, "slowpath.failures.parser_error": 1})
    assert counters == {"decoder.pkts": 40, "decoder.bytes": 9000, "flow.active": 3, "detect.alert": 3}
    rec = valid(eve.stats_record(counters, TS, uptime=5))
    assert rec["stats"] == {"uptime": 5, "decoder": {"pkts": 40, "bytes": 9000}, "flow": {"active": 3},
                            "detect": {"alert": 3}}
    assert valid(eve.stats_record(eve.suricata_stats({}), TS))["stats"]["flow"] == {"active": 0}


def test_schema_rejects_what_it_should():
    good = eve.http_record(FLOW, *http_events(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), TS)
    VALIDATOR.validate(good)
    bad = [
        {**good, "event_type": "smtp"},
        {**good, "proto": "tcp"},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "http"},
        {k: v for k, v in good.items() if k != "dest_port"},
        {**good, "timestamp": "2026-11-18 06:13:20"},
        {**good, "microseg": {"rule_id": 1}},
        {**good, "metadata": {"flowints": {"unknown": 1}}},
        {**good, "metadata": {"flowvars": [{"inspection_verdict": "allow", "ct_state": "CT_CLOSE"}]}},
        {**good, "src_ip": "not-an-ip"},
        eve.stats_record({}, TS) | {"src_ip": "1.2.3.4"},
        eve.drop_record(None, "DROP_L2_TRUNCATED", TS) | {"verdict": {"action": "pass"}},
    ]
    for record in bad:
        assert not VALIDATOR.is_valid(record), record


def test_every_builder_passes_suricata_schema_strictly():
    """One record of every event type microseg writes, against Suricata's
    own schema alone (an unknown field anywhere fails it)."""
    suricata = require_suricata()
    req, resp = http_events(b"GET /x HTTP/1.1\r\nHost: a.example\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n")
    client, server = tls_hellos()
    q = dpkt.dns.DNS(id=1, op=dpkt.dns.DNS_RD, qd=[dpkt.dns.DNS.Q(name="a.example", type=dpkt.dns.DNS_A)])
    a = dpkt.dns.DNS(id=1, op=0x8180, qd=[dpkt.dns.DNS.Q(name="a.example", type=1)],
                     an=[dpkt.dns.DNS.RR(name="a.example", type=1, ttl=10, rdata=bytes([192, 0, 2, 1]))])
    banners, kexinits = ssh_events()
    hit = {"rule_id": 7, "rule_name": "r", "action": "block", "field": "http.uri", "matched": "/x"}
    records = {
        "http": eve.http_record(FLOW, req, resp, TS, tx_id=0),
        "tls": eve.tls_record(TLS_FLOW, client, server, TS),
        "dns query": eve.dns_records(UDP_FLOW, dns_message(q, C), TS)[0],
        "dns answer": eve.dns_records(UDP_FLOW, dns_message(a), TS)[0],
        "ssh": eve.ssh_record(FLOW, banners, kexinits, TS),
        "alert": eve.alert_record(FLOW, hit, TS, direction=C, policy_generation=2, reject_target="both",
                                  reject=["tcp-reset"], app_layer={"http": eve.http_object(req, resp)},
                                  counters=((1, 1), (60, 60))),
        "flow": eve.flow_record(FLOW, TS, rule_id=3, verdict="release", verdict_latency_us=9,
                                ct_state="CT_ESTABLISHED"),
        "drop": eve.drop_record(FLOW, "DROP_POLICY_DENY", TS, hook="ingress", rule_id=3, policy_generation=2,
                                packet={"len": 60, "syn": 1}),
        "stats": eve.stats_record(eve.suricata_stats({"slowpath.records": 1}), TS, uptime=1),
        "anomaly": eve.anomaly_record(FLOW, "METHOD_UNKNOWN", TS, direction=C),
        "quic": eve.quic_record(UDP_FLOW, quic_hello(), TS),
        "pgsql": eve.pgsql_record(eve.FlowInfo(9, "10.1.0.5", 40816, "10.1.0.6", 5432, 6, "postgresql"),
                                  {"tx_id": 0, "request": {"simple_query": "select 1"},
                                   "response": {"command_completed": "SELECT 1", "data_rows": 1}}, TS),
        **kafka_records(),
        **smtp_mqtt_records(),
    }
    assert {r["event_type"] for r in records.values()} == set(eve.EVENT_TYPES)
    for what, rec in records.items():
        rec = json.loads(eve.encode(rec))
        errors = [e.message for e in suricata.iter_errors(rec)]
        assert not errors, f"{what}: {errors}"
    # The yardstick bites: microseg's old top-level object fails it.
    assert not suricata.is_valid({**records["flow"], "microseg": {"rule_id": 3}})


def kafka_records() -> dict:
    """A Kafka request and its response (protocols/kafka.py) as EVE kafka records."""
    from tests.unit.test_kafka import produce_body, produce_response_body, request, response
    from protocols.kafka import KafkaParser
    p = KafkaParser()
    (req,) = p.receive_data(request(0, 9, 7, "app", produce_body(9, ["orders"])), C)
    (resp,) = p.receive_data(response(0, 9, 7, produce_response_body(9, ["orders"], error=6)), S)
    flow = eve.FlowInfo(9, "10.1.0.5", 40816, "10.1.0.7", 9092, 6, "kafka")
    return {"kafka request": eve.kafka_record(flow, req, TS), "kafka response": eve.kafka_record(flow, resp, TS)}


def smtp_mqtt_records() -> dict:
    """A mail transaction's smtp record and an MQTT CONNECT's mqtt record."""
    from protocols.mqtt import MqttConnect
    from protocols.smtp import SmtpMessage
    msg = SmtpMessage(120, "client.example", "a@example.org", ("b@example.net",), subject="hi",
                      from_="A <a@example.org>", to="b@example.net", message_id="<1@x>")
    conn = MqttConnect(C, 1, 0, "MQTT", 4, "sensor-7", "ops", True, True, True)
    return {"smtp": eve.smtp_record(FLOW, msg, TS, tx_id=0), "mqtt": eve.mqtt_record(FLOW, conn, TS)}


def quic_hello():
    """The ClientHello of RFC 9001 appendix A.2, through the QUIC parser."""
    from protocols.quic import QuicParser
    from tests.unit.test_quic import RFC_CLIENT_PROTECTED
    ev, = QuicParser().receive_data(RFC_CLIENT_PROTECTED, Direction.TO_SERVER)
    return ev


# --- Serialisation of odd values ------------------------------------------------------
def test_encode_never_raises_and_writes_one_ascii_line():
    cyclic: list = []
    cyclic.append(cyclic)
    odd = {"s": "a\nb\r\u2028\ud800\udfff\x00é", "b": b"\xff\xfe\n", "nan": float("nan"), "inf": float("inf"),
           "set": {1}, "obj": object(), "cycle": cyclic, 3: "int key", "enum": Direction.TO_CLIENT}
    line = eve.encode(odd)
    assert line.endswith(b"\n") and b"\n" not in line[:-1] and b"\r" not in line
    line.decode("ascii")
    back = json.loads(line)
    assert back["nan"] is None and back["inf"] is None and back["3"] == "int key"
    assert back["s"].startswith("a\nb\r\u2028") and "\\ud800" in back["s"] and back["s"].endswith("\x00é")
    assert back["b"] == "\\xff\\xfe\n" and back["enum"] == 1      # an IntEnum is its number


# --- Hypothesis: anything a packet can say still makes a valid single line -------------------
# Any code point, lone surrogates included, with the troublesome ones often.
ODD_TEXT = st.text(st.one_of(st.characters(exclude_categories=()),
                             st.sampled_from("\x00\n\r\t\"\\\u2028\ud800\udfff\x7f")), max_size=40)


@st.composite
def http_pair(draw):
    req = HttpRequest(direction=C, method=draw(ODD_TEXT), uri=draw(ODD_TEXT), version=draw(ODD_TEXT),
                      host=draw(st.none() | ODD_TEXT), user_agent=draw(st.none() | ODD_TEXT),
                      content_type=None, headers=tuple(draw(st.lists(st.tuples(ODD_TEXT, ODD_TEXT), max_size=3))),
                      content_length=None, chunked=False, anomalies=tuple(draw(st.lists(ODD_TEXT, max_size=2))),
                      offset=0)
    resp = draw(st.none() | st.builds(
        HttpResponse, direction=st.just(S), status=st.integers(100, 999), reason=ODD_TEXT, version=ODD_TEXT,
        content_type=st.none() | ODD_TEXT, headers=st.lists(st.tuples(ODD_TEXT, ODD_TEXT), max_size=3).map(tuple),
        request_method=st.none(), content_length=st.none(), chunked=st.just(False),
        anomalies=st.just(()), offset=st.just(0)))
    return req, resp


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8", "surrogatepass")).hexdigest()


@st.composite
def tls_pair(draw):
    ja3 = draw(ODD_TEXT)
    client = TlsClientHello(direction=C, record_version=0x0301, legacy_version=0x0303, versions=(), cipher_suites=(),
                            extensions=(), groups=(), ec_point_formats=(), sig_algs=(), sni=draw(st.none() | ODD_TEXT),
                            alpn=tuple(draw(st.lists(ODD_TEXT, max_size=3))), ja3_string=ja3, ja3=_md5(ja3),
                            ja4="t13d0000h2_000000000000_000000000000", hrr_retry=False)
    server = draw(st.none() | st.builds(
        TlsServerHello, direction=st.just(S), legacy_version=st.just(0x0303),
        selected_version=st.none() | st.integers(0, 0xFFFF), cipher_suite=st.integers(0, 0xFFFF),
        extensions=st.just(()), alpn=st.none() | ODD_TEXT, ja3s_string=st.just("771,4865,"),
        ja3s=st.just(_md5("771,4865,")), hello_retry_request=st.booleans()))
    return client, server


RR = st.builds(DnsRecord, name=ODD_TEXT, type=st.integers(0, 0xFFFF),
               type_name=st.sampled_from(["A", "TXT", "TYPE65280"]), rclass=st.just(1), ttl=st.integers(0, 2**32 - 1), rdlength=st.integers(0, 100), data=ODD_TEXT)
DNS_MSG = st.builds(
    DnsMessage, direction=st.just(S), id=st.integers(0, 0xFFFF), response=st.booleans(), opcode=st.integers(0, 15),
    opcode_name=st.just("QUERY"), aa=st.booleans(), tc=st.booleans(), rd=st.booleans(), ra=st.booleans(),
    ad=st.booleans(), cd=st.booleans(), rcode=st.integers(0, 15), rcode_name=st.sampled_from(["NOERROR", "RCODE12"]),
    questions=st.lists(st.builds(DnsQuestion, name=ODD_TEXT, type=st.integers(0, 0xFFFF), type_name=st.just("A"),
                                 qclass=st.just(1)), max_size=3).map(tuple),
    answers=st.lists(RR, max_size=3).map(tuple), authority=st.lists(RR, max_size=2).map(tuple),
    additional_count=st.integers(0, 3))
HIT = st.fixed_dictionaries({
    "rule_id": st.integers(0, 2**31), "rule_name": ODD_TEXT | st.binary(max_size=40), "category": ODD_TEXT,
    "action": st.sampled_from(["alert", "drop", "pass", "reject", "weird"]),
    "severity": st.none() | st.integers(-5, 300) | ODD_TEXT, "field": ODD_TEXT,
    "matched": st.binary(max_size=600) | ODD_TEXT})


def _check_line(record: dict) -> None:
    line = eve.encode(record)
    assert line is not None and line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line
    errors = schema_errors(json.loads(line))
    assert not errors, errors


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(http=http_pair(), tls=tls_pair(), dns=DNS_MSG, hit=HIT, iface=st.none() | ODD_TEXT,
       counters=st.dictionaries(st.sampled_from(["slowpath.records", "slowpath.bytes", "slowpath.flows",
                                                 "slowpath.hits.sqli", "slowpath.verdicts.verdict_allow"]),
                                st.integers(0, 2**63), max_size=5))
def test_random_strings_always_give_valid_single_line_json(http, tls, dns, hit, iface, counters):
    flow = eve.FlowInfo(1, "192.0.2.1", 1, "192.0.2.2", 2, 6, "http", start=TS, in_iface=iface)
    _check_line(eve.http_record(flow, *http, TS))
    _check_line(eve.tls_record(flow, *tls, TS))
    for rec in eve.dns_records(flow, dns, TS):
        _check_line(rec)
    _check_line(eve.alert_record(flow, hit, TS))
    _check_line(eve.stats_record(eve.suricata_stats(counters), TS))


# --- Sinks -------------------------------------------------------------------------
def records(n: int, pad: int = 0) -> list[dict]:
    """Stats records numbered by "flow.seq", about ``pad`` bytes longer than bare."""
    padding = {str(j): 0 for j in range(pad // 8)}
    return [eve.stats_record({"flow.seq": i, "decoder.pad": padding}, TS + i) for i in range(n)]


def seqs(path) -> list[int]:
    return [json.loads(line)["stats"]["flow"]["seq"] for line in path.read_bytes().splitlines()]


def test_file_sink_rotates_by_size_and_keeps_backups(tmp_path):
    path = tmp_path / "eve.json"
    line_len = len(eve.encode(records(1)[0]))
    sink = eve_sinks.FileSink(path, max_bytes=line_len * 3, backups=2)
    log = eve_sinks.EveLog([sink])
    assert log.emit_all(records(10)) == 10          # seq 0..9, 3 lines a file
    assert log.flush()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["eve.json", "eve.json.1", "eve.json.2"]
    assert seqs(path) == [9]
    assert seqs(tmp_path / "eve.json.1") == [6, 7, 8]
    assert seqs(tmp_path / "eve.json.2") == [3, 4, 5]           # 0..2 rotated away
    assert all(p.stat().st_size <= line_len * 3 for p in tmp_path.iterdir())
    assert sink.counters()["rotations"] == 3 and sink.sent == 10 and sink.dropped == 0
    log.close()


def test_file_sink_without_backups_truncates_and_long_lines_still_go_out(tmp_path):
    path = tmp_path / "eve.json"
    sink = eve_sinks.FileSink(path, max_bytes=200, backups=0)
    for rec in records(3, pad=300):                  # every line is longer than max_bytes
        sink.submit(eve.encode(rec), rec)
    assert sink.flush()
    assert [p.name for p in tmp_path.iterdir()] == ["eve.json"] and seqs(path) == [2]
    sink.close()


def test_file_sink_reopen_after_logrotate_moved_the_file(tmp_path):
    path = tmp_path / "eve.json"
    log = eve_sinks.EveLog([eve_sinks.FileSink(path, max_bytes=0)])
    log.emit_all(records(2))
    log.flush()
    path.rename(tmp_path / "eve.json.old")           # what logrotate does, then it sends SIGHUP
    log.sinks[0].reopen()
    log.emit(records(3)[2])
    log.flush()
    assert seqs(tmp_path / "eve.json.old") == [0, 1] and seqs(path) == [2]
    log.close()


def test_stdout_sink_and_its_counters():
    out = io.BytesIO()
    log = eve_sinks.EveLog([eve_sinks.StdoutSink(out)])
    log.emit_all(records(3))
    log.flush()
    assert [json.loads(x)["stats"]["flow"]["seq"] for x in out.getvalue().splitlines()] == [0, 1, 2]
    counters = log.counters()
    assert counters["records"] == 3 and counters["sinks"]["stdout"]["sent"] == 3
    log.close()
    assert not log.sinks[0].submit(b"{}\n") and log.sinks[0].dropped == 1     # closed


class BatchSink(eve_sinks.Sink):
    """Keeps the batches its thread was given."""
    kind = "batches"

    def __init__(self, **kw):
        self.batches: list[list[bytes]] = []
        super().__init__(**kw)

    def _write_batch(self, batch):
        self.batches.append([line for line, _ in batch])
        return len(batch), 0


def wait_for(cond, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def test_sink_after_a_write_takes_later_records_without_a_wakeup_each():
    # linger longer than the test: only flush() and close() end it
    sink = BatchSink(linger_s=60)
    try:
        sink.submit(b"a\n")
        assert sink.flush()
        woken = sink.wakeups
        with sink._cv:                # the thread sees all three or none of them
            for line in (b"b\n", b"c\n", b"d\n"):
                assert sink.submit(line)
        assert sink.wakeups == woken  # the thread is lingering: no wakeup per record
        assert sink.flush()           # flush cuts the linger short
        assert sink.batches == [[b"a\n"], [b"b\n", b"c\n", b"d\n"]]
        sink.submit(b"e\n")
    finally:
        sink.close()
    assert not sink._thread.is_alive()     # close() ended the linger too
    assert sink.batches[-1] == [b"e\n"] and sink.sent == 5 and sink.dropped == 0


def test_sink_asleep_is_woken_by_the_next_record():
    sink = BatchSink(linger_s=0.001)
    try:
        sink.submit(b"a\n")
        wait_for(lambda: sink._idle, "the thread went to sleep after its linger")
        woken = sink.wakeups
        sink.submit(b"b\n")          # no flush: the submit alone must get it written
        wait_for(lambda: sink.sent == 2, "the record after the sleep was written")
        assert sink.wakeups == woken + 1 and sink.batches == [[b"a\n"], [b"b\n"]]
    finally:
        sink.close()


MODULE_LOADED = time.time()
RFC5424 = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-) (.*)$", re.S)


def parse_5424(msg: bytes) -> dict:
    m = RFC5424.match(msg)
    assert m, msg[:200]
    pri, ts, host, app, procid, msgid, sd, body = m.groups()
    stamp = datetime.fromisoformat(ts.decode())
    assert stamp.tzinfo is not None and stamp.utcoffset().total_seconds() == 0
    # The stamp is the sending time: after this module was imported, not
    # after now (one second of slack for the format's resolution).
    assert MODULE_LOADED - 1 <= stamp.timestamp() <= time.time() + 1
    return {"facility": int(pri) // 8, "severity": int(pri) % 8, "host": host.decode(), "app": app.decode(),
            "procid": procid.decode(), "msgid": msgid.decode(), "record": json.loads(body)}


def test_syslog_udp_one_datagram_per_record():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(30)
    sink = eve_sinks.SyslogSink("127.0.0.1", server.getsockname()[1], "udp", hostname="gw 1\x00", facility="local3")
    log = eve_sinks.EveLog([sink])
    alert = eve.alert_record(FLOW, {"rule_id": 1, "rule_name": "r", "action": "drop"}, TS)
    http = eve.http_record(FLOW, *http_events(b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n"), TS)
    log.emit(alert)
    log.emit(http)
    got = [parse_5424(server.recvfrom(70000)[0]) for _ in range(2)]
    assert [g["record"] for g in got] == [alert, http]
    assert got[0]["facility"] == 19 and got[0]["severity"] == eve_sinks.SEVERITY_WARNING
    assert got[1]["severity"] == eve_sinks.SEVERITY_INFO
    assert {g["host"] for g in got} == {"gw1"} and {g["app"] for g in got} == {"microseg"}
    assert [g["msgid"] for g in got] == ["alert", "http"]
    assert got[0]["procid"].isdigit()
    # Too big for one datagram: dropped and counted, not cut into broken JSON.
    log.emit(records(1, pad=70_000)[0])
    assert log.flush()
    assert sink.oversize == 1 and sink.counters()["dropped"] == 1 and sink.sent == 2
    log.close()
    server.close()


def read_frames(conn: socket.socket, want: int, timeout: float = 30.0) -> list[bytes]:
    """RFC 6587 octet-counted frames: ``LEN SP MSG``, nothing between them."""
    buf, frames = b"", []
    deadline = time.monotonic() + timeout
    conn.settimeout(0.2)
    while len(frames) < want and time.monotonic() < deadline:
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        buf += chunk
        while True:
            m = re.match(rb"([1-9][0-9]*) ", buf)
            if not m or len(buf) < m.end() + int(m.group(1)):
                assert m or not buf or buf[:1].isdigit(), buf[:50]
                break
            n = int(m.group(1))
            frames.append(buf[m.end():m.end() + n])
            buf = buf[m.end() + n:]
    return frames


def test_syslog_tcp_octet_counting_frames():
    server = socket.create_server(("127.0.0.1", 0))
    sink = eve_sinks.SyslogSink("127.0.0.1", server.getsockname()[1], "tcp", app_name="ms", hostname="gw")
    log = eve_sinks.EveLog([sink])
    recs = records(20) + [eve.drop_record(FLOW, "DROP_POLICY_DENY", TS)]
    log.emit_all(recs)
    server.settimeout(30)
    conn, _ = server.accept()
    frames = read_frames(conn, len(recs))
    parsed = [parse_5424(f) for f in frames]
    assert [p["record"] for p in parsed] == recs
    assert parsed[-1]["msgid"] == "drop" and parsed[-1]["severity"] == eve_sinks.SEVERITY_NOTICE
    assert parsed[0]["facility"] == 16 and parsed[0]["app"] == "ms"
    assert log.flush() and sink.connects == 1 and sink.sent == len(recs)
    log.close()
    conn.close()
    server.close()


def test_syslog_tcp_reconnects_after_the_collector_drops_the_connection():
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)
    sink = eve_sinks.SyslogSink("127.0.0.1", server.getsockname()[1], "tcp", hostname="gw")
    log = eve_sinks.EveLog([sink])
    log.emit(records(1)[0])
    conn, _ = server.accept()
    assert len(read_frames(conn, 1)) == 1
    conn.close()                                     # collector restarts
    received: list[bytes] = []

    def second_connection():
        c, _ = server.accept()
        received.extend(read_frames(c, 1))
        c.close()

    t = threading.Thread(target=second_connection)
    t.start()
    deadline = time.monotonic() + 30
    seq = 1
    while not received and time.monotonic() < deadline:
        # The first send after the peer closed can still "succeed" into the
        # dead socket; the next ones fail and trigger the reconnect.
        log.emit(eve.stats_record({"flow.seq": seq}, TS))
        seq += 1
        time.sleep(0.05)
    t.join(30)
    assert received, "no record arrived on a second connection"
    assert sink.connects == 2 and sink.write_errors >= 1
    log.close(timeout=1)
    c = sink.counters()
    assert c["sent"] + c["dropped"] == seq            # every record is accounted for
    server.close()


# A deadlock guard, not a timing bound: the collectors below never answer
# (an hour-long backoff, a reader that never reads), so a caller that
# waited on them would still be waiting long after this.
HANG_GUARD_S = 120


def returns(fn, *args, **kwargs):
    """Run fn in a thread; True when it returned before the hang guard."""
    t = threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True)
    t.start()
    t.join(HANG_GUARD_S)
    return not t.is_alive()


def test_a_dead_collector_never_blocks_the_caller(monkeypatch):
    # An hour of backoff after the first refused connect: a submit that
    # waited for the worker would wait that hour.
    monkeypatch.setattr(eve_sinks, "SYSLOG_BACKOFF_MIN_S", 3600.0)
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                                    # nothing listens there now
    sink = eve_sinks.SyslogSink("127.0.0.1", port, "tcp", queue_records=50)
    log = eve_sinks.EveLog([sink])
    assert returns(log.emit_all, records(1000)), "emit_all waited on a dead collector"
    c = sink.counters()
    # What is held: the queue, plus the batch the worker took before it blocked.
    assert c["queue_full"] >= 1000 - 2 * 50 and c["sent"] == 0
    # close() cuts the hour-long backoff short.
    assert returns(log.close, timeout=0.5), "close waited out the reconnect backoff"
    c = sink.counters()
    assert c["dropped"] == 1000 and c["sent"] == 0 and c["queued"] == 0


def test_a_collector_that_stops_reading_costs_drops_not_waiting(monkeypatch):
    monkeypatch.setattr(eve_sinks, "SYSLOG_SEND_TIMEOUT_S", 0.2)
    server = socket.create_server(("127.0.0.1", 0))
    sink = eve_sinks.SyslogSink("127.0.0.1", server.getsockname()[1], "tcp", queue_records=20)
    log = eve_sinks.EveLog([sink])
    # ~8 MB: more than the socket buffers hold, and the server never reads.
    assert returns(log.emit_all, records(400, pad=20_000)), "emit_all waited on a stalled collector"
    assert sink.counters()["queue_full"] > 0
    log.close(timeout=0.5)
    c = sink.counters()
    assert c["sent"] + c["dropped"] == 400
    server.close()


def test_syslog_sink_rejects_bad_settings():
    with pytest.raises(ValueError):
        eve_sinks.SyslogSink("127.0.0.1", 514, "tls")
    with pytest.raises(ValueError):
        eve_sinks.SyslogSink("127.0.0.1", 514, facility="local9")
