"""bench/peers.py's reading of `ndpiReader -v 2` and its agreement count
(no peers needed: the lines below are ndpiReader 4.2's format)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.peers import Ndpi, agreement, ndpi_app, parse_ndpi  # noqa: E402

NDPI_OUT = (
    "\nJA3 Host Stats: \n"
    "\t\t IP Address                  \t # JA3C     \n"
    "\t1\t 2a00:d40:1:3:7aac:c0ff:fea7:d4c \t 1      \n"
    "\t1\tTCP 10.0.0.1:51889 <-> 10.0.0.2:22 [proto: 7/HTTP][ClearText][Confidence: DPI]"
    "[cat: Web/5][15 pkts/828 bytes <-> 13 pkts/13351 bytes]\n"
    "\t2\tTCP [fd00::2]:37506 <-> [fd00::0:3]:443 [proto: 91.26/TLS.ntop][Encrypted]"
    "[Confidence: DPI][cat: Network/14]\n"
    "\t3\tTCP 10.0.0.5:60010 <-> 10.0.0.6:6379 [proto: 182/Redis][ClearText]"
    "[Confidence: Match by port][cat: Database/11]\n"
    "\t4\tUDP 10.0.0.7:5353 <-> 10.0.0.8:53 [proto: 5.126/DNS.Google][ClearText]"
    "[Confidence: DPI (partial)][cat: Web/5]\n"
    "Undetected flows:\n"
    "\t1\tTCP 10.0.0.9:34128 <-> 10.0.0.10:9092 [proto: 0/Unknown][ClearText]"
    "[Confidence: Unknown][1 pkts/187 bytes <-> 1 pkts/116 bytes]\n"
)


def flow(proto, client, server, app):
    return {"proto": proto, "client": list(client), "server": list(server), "app": app}


def test_parse_ndpi_reads_every_flow_line_and_only_those():
    got = parse_ndpi(NDPI_OUT)
    assert len(got) == 5
    by_name = {v["name"]: v for v in got.values()}
    assert by_name["HTTP"] == {"name": "HTTP", "confidence": "DPI", "app": "http"}
    assert by_name["TLS.ntop"]["app"] == "tls"
    assert by_name["Redis"]["confidence"] == "Match by port"
    assert by_name["DNS.Google"]["app"] == "dns"
    assert by_name["Unknown"]["app"] is None
    # IPv6 in brackets, written differently ("fd00::0:3"), is the same flow key
    assert ("tcp", frozenset({("fd00::2", 37506), ("fd00::3", 443)})) in got


def test_ndpi_names_map_to_microseg_names():
    assert ndpi_app("HTTP_Connect") == "http"
    assert ndpi_app("IMAPS") == "tls"
    assert ndpi_app("QUIC.Google") == "quic"
    assert ndpi_app("Nats") is None             # no parser in microseg
    # The parsers microseg gained since: nDPI's names for them.
    assert [ndpi_app(n) for n in ("SMTP", "PostgreSQL", "MongoDB", "MQTT")] == \
        ["smtp", "postgresql", "mongodb", "mqtt"]
    assert ndpi_app("Unknown") is None


def test_agreement_counts_both_seen_and_dpi_only():
    ours = [
        flow("tcp", ("10.0.0.2", 22), ("10.0.0.1", 51889), "http"),        # reversed order: same flow
        flow("tcp", ("fd00::2", 37506), ("fd00::3", 443), None),           # disagrees, DPI
        flow("tcp", ("10.0.0.5", 60010), ("10.0.0.6", 6379), "redis"),     # agrees, port guess
        flow("udp", ("10.0.0.7", 5353), ("10.0.0.8", 53), "dns"),          # agrees, DPI (partial)
        flow("tcp", ("10.0.0.9", 34128), ("10.0.0.10", 9092), None),       # agrees: neither knows it
        flow("udp", ("10.9.9.9", 1), ("10.9.9.8", 2), "dns"),              # nDPI does not see it
    ]
    a = agreement(parse_ndpi(NDPI_OUT), ours)
    assert (a["ndpi"], a["microseg"], a["both"], a["agree"]) == (5, 6, 5, 4)
    assert (a["dpi"], a["dpi_agree"]) == (3, 2)
    assert [(f["server"][1], n["name"]) for f, n in a["disagree"]] == [(443, "TLS.ntop")]


def test_http2_and_grpc_agree_with_ndpis_http():
    # nDPI 4.2 names HTTP/2 and gRPC "HTTP": the same protocol for the count.
    out = ("\t1\tTCP 10.0.1.1:5000 <-> 10.0.1.2:80 [proto: 7/HTTP][ClearText][Confidence: DPI]\n"
           "\t2\tTCP 10.0.1.3:5000 <-> 10.0.1.4:50051 [proto: 7/HTTP][ClearText][Confidence: DPI]\n"
           "\t3\tTCP 10.0.1.5:5000 <-> 10.0.1.6:80 [proto: 7/HTTP][ClearText][Confidence: DPI]\n")
    ours = [flow("tcp", ("10.0.1.1", 5000), ("10.0.1.2", 80), "http2"),
            flow("tcp", ("10.0.1.3", 5000), ("10.0.1.4", 50051), "grpc"),
            flow("tcp", ("10.0.1.5", 5000), ("10.0.1.6", 80), "tls")]
    a = agreement(parse_ndpi(out), ours)
    assert (a["both"], a["agree"], a["dpi_agree"]) == (3, 2, 2)


def test_baseline_replay_runs_from_its_tree(tmp_path, monkeypatch):
    """--baseline TREE: the replay readers of that tree run the same command
    with TREE first on PYTHONPATH (this tree's readers: the environment as
    it is), and are named apart in the rounds and the table."""
    import json as _json

    import bench.peers as peers
    calls = []

    def fake_run(cmd, stdout, env=None):
        calls.append((cmd, env))
        stdout.write(_json.dumps({"cpu_s": 1.5}).encode())
        return 0.0
    monkeypatch.setattr(peers, "run", fake_run)
    tree = tmp_path / "base"
    mine, base = peers.ReplayIdentify(), peers.ReplayIdentify(tree)
    assert mine.tree is None and base.short == "replay-dpi@baseline" and str(tree) in base.name
    assert base.name != mine.name and type(base).name == mine.name
    assert mine.cpu(tmp_path / "x.pcap", tmp_path) == base.cpu(tmp_path / "x.pcap", tmp_path) == 1.5
    (cmd_mine, env_mine), (cmd_base, env_base) = calls
    # The same command but for the EVE file: each tree writes its own, compared after the rounds.
    at = cmd_mine.index("--eve") + 1
    assert cmd_mine[:at] + cmd_mine[at + 1:] == cmd_base[:at] + cmd_base[at + 1:] and env_mine is None
    assert cmd_mine[at] == str(mine.eve(tmp_path)) != cmd_base[at] == str(base.eve(tmp_path))
    assert env_base["PYTHONPATH"] == str(tree)


def test_eve_check_ignores_flow_ids_and_latency_only(tmp_path):
    """eve_differences: two replays' EVE are the same when only their flow
    ids (renumbered by first appearance, so which records share a flow
    still counts) and verdict latencies differ; any other field, a key's
    order, a record's order or count is a difference."""
    import json as _json

    from bench.peers import eve_differences

    def write(name, recs):
        path = tmp_path / name
        path.write_text("".join(_json.dumps(r) + "\n" for r in recs))
        return path

    def flow(fid, lat, **extra):
        return {"timestamp": "t", "flow_id": fid, "event_type": "flow", **extra,
                "metadata": {"flowints": {"rule_id": 1, "verdict_latency_us": lat}}}
    base = [flow(11, 5), {"flow_id": 22, "event_type": "dns"}, flow(22, 7)]
    mine = [flow(98, 900), {"flow_id": 99, "event_type": "dns"}, flow(99, 3)]
    assert eve_differences(write("a", mine), write("b", base)) == (3, [])
    for changed in ([flow(98, 900), {"flow_id": 98, "event_type": "dns"}, flow(99, 3)],   # another flow's record
                    [flow(98, 900, app_proto="tls"), *mine[1:]],                         # a field more
                    [mine[0], {"event_type": "dns", "flow_id": 99}, mine[2]],           # keys reordered
                    mine[:2],                                                            # a record fewer
                    [mine[1], mine[0], mine[2]]):                                        # records reordered
        n, diffs = eve_differences(write("c", changed), write("b", base))
        assert diffs, changed


def test_ndpireader_leftovers_removed_unless_there_before(tmp_path, monkeypatch):
    """ndpiReader writes two files in /tmp on every run, `-h` included: the
    ones a run made go, one that was there before stays."""
    before, made = tmp_path / "ses_result.csv", tmp_path / "des_result.csv"
    before.write_text("someone else's")
    monkeypatch.setattr(Ndpi, "LEFTOVERS", (before, made))
    with Ndpi.leftovers_removed():
        made.write_text("")        # as the run writes them
        before.write_text("")
    assert not made.exists() and before.exists()
