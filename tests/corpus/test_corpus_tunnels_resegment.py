"""`microseg replay` of a capture with TCP super-packets (larger than
BPF_PROG_TEST_RUN takes) inside tunnels: appliance/replay.py cuts the
innermost segment and rebuilds the tunnel around each piece, so the inner
flow's records, packet counts included, are the original capture's (before:
the tunnelled super-packets were counted too big and skipped, 4/4 packets
instead of 5/7 and the HTTP bodies cut)."""
from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

from tests.corpus.test_corpus_tunnels import CI, CORPUS
from tests.corpus.test_corpus_tunnels_replay import EVENT_TYPES, _fields
from tests.corpus.tunnel_captures import wrap

pytestmark = pytest.mark.skipif(not CI and not (CORPUS / "truth").is_dir(),
                                reason=f"corpus not found at {CORPUS}")

ORIGINAL = "sv-http-ipv6-base64.pcap"       # HTTP over IPv6, super-packets of ~5 KB
# An IPv4 tunnel (6in4), GRE with a checksum, VXLAN over IPv6, GENEVE.
TUNNELS = {"ipip4": ("ipip4", ()), "gre-key": ("gre-key", ()), "vxlan6": ("vxlan6", ()),
           "geneve": ("geneve", ())}


def _replay(fp, pcap: Path):
    """(ReplayResult, {flow: {event_type: [records]}}) of ``pcap`` with empty rules."""
    from appliance.daemon import empty_rules
    from appliance.replay import replay, replay_config
    from tests.corpus.test_corpus_replay import flow_of

    records: list[dict] = []
    try:
        fp.reset()
        fp.apply_runtime(replay_config())
        result = replay(pcap, fp, empty_rules(), records.append)
    finally:
        fp.reset()
        fp.apply_runtime(fp.config)
    flows = defaultdict(lambda: defaultdict(list))
    for r in records:
        if "src_port" in r:
            flows[flow_of(r)][r["event_type"]].append(r)
    return result, {f: _fields(r) for f, r in flows.items()}


def test_tunnelled_super_packets_replay_as_the_original(fastpath_build):
    from appliance.replay import MAX_TEST_RUN_FRAME
    from slowpath.pcap import ethernet_frames

    src = CORPUS / "pcaps" / ORIGINAL
    assert any(len(f) > MAX_TEST_RUN_FRAME for _, _, f in ethernet_frames(src)), \
        "the capture has no super-packet: nothing is tested"
    plain, want = _replay(fastpath_build, src)
    assert plain.resegmented > 0 and plain.too_big == 0 and any(v["http"] for v in want.values())
    bad = []
    with tempfile.TemporaryDirectory(prefix="microseg-tunnels-reseg-") as tmp:
        for name, (encap, outer) in TUNNELS.items():
            result, got = _replay(fastpath_build, wrap(src, Path(tmp) / f"{name}.pcap", encap, outer=outer))
            if (result.too_big, result.resegmented) != (0, plain.resegmented) or got != want:
                bad.append((name, f"too big {result.too_big}, resegmented {result.resegmented}",
                            {k: (want.get(k), got.get(k)) for k in set(want) | set(got) if want.get(k) != got.get(k)}))
    assert not bad, "\n".join(map(str, bad))
