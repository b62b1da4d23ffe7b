"""Real flows inside tunnels (issue 17 item 5, "the pcap reader and the slow
path decapsulate the same set"): corpus captures whose truth is known (DNS,
HTTP, TLS over IPv4 and IPv6, IP fragments) wrapped by
tests/corpus/tunnel_captures.py in IPIP / 6in4 / 4in6 / 6in6, GRE with and
without key (IP or Ethernet inside, over IPv4 or IPv6), VXLAN and GENEVE,
and read by slowpath/pcap.py (read_capture) and slowpath/offline.py
(analyze_capture). Inside a tunnel a flow must be what it is in the
original: the same inner addresses and ports, frames, events (so every field
the parsers read), protocol and names (Host, SNI, DNS query) as the truth
has them; the tunnel endpoints are in no flow."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from slowpath.offline import analyze_capture
from slowpath.pcap import read_capture
from tests.corpus.test_corpus_offline import first_name
from tests.corpus.tunnel_captures import ENCAPS, wrap

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(not CI and not (CORPUS / "truth").is_dir(),
                                reason=f"corpus not found at {CORPUS}")

# A DNS (two flows), an HTTP and a TLS (SNI) capture over IPv4; HTTP, TLS
# (and QUIC) over IPv6, as in the 6in4 capture; DNS over both
# families with IPv4 and IPv6 fragments (reassembled inside the tunnel).
ORIGINALS = ("sv-dns-udp-eve-txt.pcap", "zeek-http-get.pcap", "ndpi-443-curl.pcap",
             "sv-http-ipv6-base64.pcap", "ndpi-http_ipv6.pcap", "ndpi-dns_fragmented.pcap")
# Two tunnels, one in the other (slowpath/pcap.py MAX_TUNNELS): an overlay
# over a provider's link.
NESTED = {"vxlan-in-gre": ("vxlan", ("gre-key",)), "geneve-in-6in4": ("geneve", ("ipip4",))}
OUTER_ADDRESSES = ("192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2")


def _summary(cap):
    return [(f.key, f.first_frame, f.last_frame, f.packets, f.orientation, f.events, f.event_frames)
            for f in cap.flows]


def _results(path):
    return [(r.key, r.app, r.names, r.packets, r.identified) for r in analyze_capture(path)]


@pytest.fixture(scope="module")
def wrapped():
    """{(original, encapsulation): (original's read, tunnelled read,
    original's analysis, tunnelled analysis)}; the tunnelled captures are
    written to a private directory removed afterwards."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="microseg-tunnels-") as tmp:
        encaps = {e: (e, ()) for e in ENCAPS} | NESTED
        for orig in ORIGINALS:
            src = CORPUS / "pcaps" / orig
            base = (read_capture(src), _results(src))
            for name, (encap, outer) in encaps.items():
                dst = wrap(src, Path(tmp) / f"{orig}.{name}.pcap", encap, outer=outer)
                out[orig, name] = (base[0], read_capture(dst), base[1], _results(dst))
    return out


def test_every_flow_is_read_inside_every_tunnel_as_in_the_original(wrapped):
    assert len(wrapped) == len(ORIGINALS) * (len(ENCAPS) + len(NESTED))
    for (orig, encap), (plain, tun, _, _) in wrapped.items():
        assert tun.frames == plain.frames, (orig, encap)
        assert _summary(tun) == _summary(plain), (orig, encap)
        assert tun.undecodable == plain.undecodable, (orig, encap, tun.undecodable)
        assert tun.not_flow == plain.not_flow, (orig, encap, tun.not_flow)
        assert tun.fragments == plain.fragments, (orig, encap, tun.fragments)
        for f in tun.flows:
            assert f.client[0] not in OUTER_ADDRESSES and f.server[0] not in OUTER_ADDRESSES, f.key


def test_protocol_and_names_inside_tunnels_agree_with_the_original_and_the_truth(wrapped):
    compared = names = 0
    for (orig, encap), (_, _, plain, tun) in wrapped.items():
        assert tun == plain, (orig, encap)
        truth = json.loads((CORPUS / "truth" / f"{orig}.json").read_text())
        by_key = {r[0]: r for r in tun}
        for key, flow in truth["flows"].items():
            r = by_key.get(key)
            assert r is not None, (orig, encap, key, sorted(by_key))
            if flow["label"] in ("dns", "http", "tls"):
                compared += 1
                assert r[1] == flow["label"], (orig, encap, key, r)
                want = first_name(flow)
                if want is not None:
                    names += 1
                    assert r[2].get(want[0]) == want[1], (orig, encap, key, want, r[2])
    assert compared >= 30 * (len(ENCAPS) + len(NESTED)) and names >= 20 * (len(ENCAPS) + len(NESTED))
