"""`microseg replay` on tunnelled copies of corpus captures (issue 17 item 5:
the fast path decapsulates IPIP / 6in4, GRE, VXLAN and GENEVE, bpf/lib/
tunnel.h, and the slow path reads the inner flow): the EVE records of every
inner flow are the records of the original capture's flow, with the inner
addresses, the same protocol, DNS queries, HTTP host / URL / status and TLS
SNI / JA3; no record names a tunnel endpoint. The pcap reader's side of the
same captures is tests/corpus/test_corpus_tunnels.py."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.corpus.test_corpus_tunnels import CI, CORPUS, OUTER_ADDRESSES
from tests.corpus.tunnel_captures import wrap

pytestmark = pytest.mark.skipif(not CI and not (CORPUS / "truth").is_dir(),
                                reason=f"corpus not found at {CORPUS}")

# DNS, HTTP and TLS (SNI) over IPv4, DNS over IPv4 and IPv6 with IP
# fragments inside the tunnel: few frames each, so the replays stay cheap;
# one encapsulation of each kind the kernel opens. (Not the IPv6 HTTP / TLS
# captures of test_corpus_tunnels.py: each has a TCP super-packet larger
# than BPF_PROG_TEST_RUN takes, which appliance/replay.py resegments in a
# plain frame but not inside a tunnel, so its flow loses those bytes.)
ORIGINALS = ("sv-dns-udp-eve-txt.pcap", "zeek-http-get.pcap", "ndpi-443-curl.pcap",
             "ndpi-dns_fragmented.pcap")
TUNNELS = {"ipip4": ("ipip4", ()), "gre-key": ("gre-key", ()), "gre-teb": ("gre-teb", ()),
           "vxlan": ("vxlan", ()), "geneve": ("geneve", ()), "geneve-ip": ("geneve-ip", ()),
           "vxlan-in-gre": ("vxlan", ("gre-key",))}
EVENT_TYPES = ("flow", "dns", "http", "tls")


def _fields(records: dict) -> dict:
    """What a flow's records say, without what the tunnel changes (the
    wire's bytes and the flow ids)."""
    out = {}
    for kind in EVENT_TYPES:
        recs = records.get(kind, [])
        if kind == "flow":
            out[kind] = sorted((r.get("app_proto"), r["flow"]["pkts_toserver"], r["flow"]["pkts_toclient"])
                               for r in recs)
        elif kind == "dns":
            out[kind] = [(r["dns"]["type"], r["dns"]["id"],
                          [(q["rrname"], q["rrtype"]) for q in r["dns"].get("queries", ())]) for r in recs]
        elif kind == "http":
            out[kind] = [(r["http"].get("hostname"), r["http"].get("url"), r["http"].get("status"))
                         for r in recs]
        else:
            out[kind] = [(r["tls"].get("sni"), (r["tls"].get("ja3") or {}).get("hash")) for r in recs]
    return out


@pytest.fixture(scope="module")
def replayed(fastpath_build):
    from tests.corpus.replayed import replay_by_flow

    fp = fastpath_build
    plain = replay_by_flow(fp, CORPUS / "pcaps", ORIGINALS, EVENT_TYPES)
    with tempfile.TemporaryDirectory(prefix="microseg-tunnels-replay-") as tmp:
        names = {}
        for orig in ORIGINALS:
            for name, (encap, outer) in TUNNELS.items():
                dst = wrap(CORPUS / "pcaps" / orig, Path(tmp) / f"{orig}.{name}.pcap", encap, outer=outer)
                names[dst.name] = (orig, name)
        tunnelled = replay_by_flow(fp, Path(tmp), names, EVENT_TYPES)
    return plain, {names[k]: v for k, v in tunnelled.items()}


def test_replay_reads_the_inner_flows_as_in_the_originals(replayed):
    plain, tunnelled = replayed
    named = 0
    bad = []
    for (orig, tunnel), flows in tunnelled.items():
        want = {f: _fields(r) for f, r in plain[orig].items()}
        got = {f: _fields(r) for f, r in flows.items()}
        for _, ends in got:
            assert not any(e.strip("[]").rsplit(":", 1)[0] in OUTER_ADDRESSES for e in ends), (orig, tunnel, ends)
        if got != want:
            bad.append((orig, tunnel, {k: (want.get(k), got.get(k)) for k in set(want) | set(got)
                                       if want.get(k) != got.get(k)}))
        named += sum(bool(v["dns"] or v["http"] or v["tls"]) for v in got.values())
    assert not bad, "\n".join(map(str, bad))
    assert named >= 5 * len(TUNNELS)
