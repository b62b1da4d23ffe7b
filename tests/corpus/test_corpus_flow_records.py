"""`microseg replay` with an allow-all policy (no inspection) logs one EVE
flow record per session of each corpus capture: the TCP and UDP flows the
capture reader finds (slowpath/pcap.py read_capture, the corpus truth's
flows), and the ICMP echo exchanges (counted here with scapy), each
record valid against Suricata's schema. Before the kernel's session-end
records, such a replay logged no session at all."""
from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest

from appliance.daemon import empty_rules
from appliance.replay import replay, replay_config
from slowpath.pcap import read_capture
from tests.eve_schemas import schema_errors

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(not CI and not (CORPUS / "truth").is_dir(),
                                reason=f"corpus not found at {CORPUS}")
ALLOW_ALL = "defaults: {ingress: allow, egress: allow}\nrules: []\n"
ECHO_REQUEST = {"ICMP": 8, "IPV6-ICMP": 128}


def endpoint(ip: str, port) -> str:
    ip = str(ipaddress.ip_address(ip))
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def unordered(key: str) -> tuple:
    proto, a, _, b = key.split()
    return (proto, *sorted((a, b)))


def echo_sessions(path: Path) -> set:
    """ICMP / ICMPv6 echo exchanges of a capture: (client, server, id) of
    each request seen (the kernel keys an echo session by them)."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
    from scapy.utils import PcapReader

    out = set()
    with PcapReader(str(path)) as r:
        for pkt in r:
            if IP in pkt and ICMP in pkt and pkt[ICMP].type == 8:
                out.add((pkt[IP].src, pkt[IP].dst, pkt[ICMP].id))
            elif IPv6 in pkt and ICMPv6EchoRequest in pkt:
                out.add((str(ipaddress.ip_address(pkt[IPv6].src)), str(ipaddress.ip_address(pkt[IPv6].dst)),
                         pkt[ICMPv6EchoRequest].id))
    return out


@pytest.fixture(scope="module")
def replayed(fastpath_build):
    fp = fastpath_build
    rules = empty_rules()
    out = {}
    try:
        for tf in sorted((CORPUS / "truth").glob("*.json")):
            truth = json.loads(tf.read_text())
            fp.reset()
            fp.apply_runtime(replay_config())
            records: list[dict] = []
            res = replay(CORPUS / truth["pcap"], fp, rules, records.append, policy_text=ALLOW_ALL,
                         policy_path="<allow all>")
            out[truth["pcap"]] = (truth, records, res)
    finally:
        fp.reset()
        fp.apply_runtime(fp.config)
    return out


def test_one_flow_record_per_session(replayed):
    wrong = []
    for pcap, (truth, records, res) in replayed.items():
        flows = [r for r in records if r["event_type"] == "flow"]
        assert res.flow_records == len(flows), pcap
        # Unordered endpoints: which side opened a flow the capture shows
        # mid-stream is a guess, the kernel's and the truth's may differ.
        got = sorted((r["proto"].lower(), *sorted((endpoint(r["src_ip"], r["src_port"]),
                                                   endpoint(r["dest_ip"], r["dest_port"]))))
                     for r in flows if r["proto"] in ("TCP", "UDP"))
        want = sorted(unordered(f.key) for f in read_capture(CORPUS / pcap).flows)
        assert sorted(unordered(k) for k in truth["flows"]) == want, pcap   # the reader agrees with the truth
        echo = sorted((r["src_ip"], r["dest_ip"]) for r in flows if r["proto"] in ECHO_REQUEST)
        want_echo = sorted((c, s) for c, s, _ in echo_sessions(CORPUS / pcap))
        if got != want or echo != want_echo or len(flows) != len(got) + len(echo):
            wrong.append((pcap, len(flows), len(want) + len(want_echo)))
    assert wrong == []
    assert sum(len(t["flows"]) for t, _, _ in replayed.values()) > 150


def test_flow_records_pass_suricatas_schema(replayed):
    bad = []
    for pcap, (_, records, _) in replayed.items():
        for r in records:
            if r["event_type"] == "flow":
                errs = schema_errors(r)
                if errs:
                    bad.append((pcap, errs[:2]))
    assert bad == []
