"""Compressed HTTP bodies of the corpus against tshark's body pass
(truth ``tshark.http_content_encoding[]``): the encoded size, the decoded
size, whether it decompressed, and the decoded text's first 64 characters,
through microseg's parsers (read_capture + analyse_flow, as
slowpath/offline.py runs them). >= 99 % per field."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from protocols.api import Direction
from slowpath.analyzer import analyse_flow
from slowpath.pcap import read_capture

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
TARGET = 0.99
PREFIX_CHARS = 64       # the truth's decoded_prefix: the first 64 characters
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(not CI and not (CORPUS / "truth").is_dir(),
                                reason=f"corpus not found at {CORPUS}")
FIELDS = ("content_encoding", "encoded_bytes", "decoded_bytes", "decompressed", "decoded_prefix")


def unordered(key: str) -> tuple:
    proto, a, _, b = key.split()
    return proto, frozenset((a, b))


def prefix(body: bytes) -> str:
    """The first characters as tshark's body pass shows them: text, or
    "hex:..." when not printable."""
    text = body[:PREFIX_CHARS].decode("utf-8", "replace")[:PREFIX_CHARS]
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return text
    return "hex:" + body[:PREFIX_CHARS // 2].hex()


def messages(events) -> dict[str, list[dict]]:
    """Per direction ("request"/"response"), every message with a
    Content-Encoding field, in order, as the parser reported it."""
    out: dict[str, list[dict]] = {"request": [], "response": []}
    current: dict[Direction, dict | None] = {d: None for d in Direction}
    for ev in events:
        kind = ev.kind
        if kind in ("http_request", "http_response"):
            value = ev.header("content-encoding")
            current[ev.direction] = None if value is None else {"content_encoding": value, "body": b""}
        elif kind == "http_body" and current[ev.direction] is not None:
            current[ev.direction]["body"] += ev.data
        elif kind == "http_message_end" and current[ev.direction] is not None:
            m = current[ev.direction]
            current[ev.direction] = None
            m.update(encoded_bytes=ev.body_size,
                     decoded_bytes=ev.decoded_size if ev.decoded_size is not None else ev.body_size,
                     decompressed=ev.encoding_error is None and bool(ev.content_encoding),
                     decoded_prefix=prefix(m["body"]))
            out["request" if ev.direction == Direction.TO_SERVER else "response"].append(m)
    return out


def cases():
    for tf in sorted((CORPUS / "truth").glob("*.json")):
        truth = json.loads(tf.read_text())
        for key, flow in truth["flows"].items():
            items = (flow.get("tshark") or {}).get("http_content_encoding") or []
            items = [i for i in items if i["protocol"] == "http"]
            if items:
                yield truth["pcap"], key, items


@pytest.fixture(scope="module")
def tally():
    checked = {f: 0 for f in FIELDS}
    wrong: dict[str, list[str]] = {f: [] for f in FIELDS}
    n = 0
    for pcap, key, items in cases():
        flows = {unordered(f.key): f for f in read_capture(CORPUS / pcap).flows}
        _, events = analyse_flow(flows[unordered(key)])
        got = messages(events)
        seen = {"request": 0, "response": 0}
        for want in items:
            n += 1
            lst = got[want["direction"]]
            i = seen[want["direction"]]
            seen[want["direction"]] += 1
            mine = lst[i] if i < len(lst) else {}
            for f in FIELDS:
                if want.get(f) is None:         # tshark never completed that body
                    continue
                checked[f] += 1
                if mine.get(f) != want[f]:
                    wrong[f].append(f"{pcap} {key} {want['direction']} #{i}: {mine.get(f)!r} != {want[f]!r}")
    return n, checked, wrong


def test_the_corpus_has_compressed_bodies(tally):
    n, checked, _ = tally
    assert n >= 5 and all(checked[f] >= 5 for f in FIELDS)


@pytest.mark.parametrize("field", FIELDS)
def test_parsers_agree_with_the_truth(tally, field):
    _, checked, wrong = tally
    ok = checked[field] - len(wrong[field])
    assert ok / checked[field] >= TARGET, "\n".join(wrong[field])


# -- through `microseg replay` (the BPF program, the engine, EVE) ---------------
# EVE's http record says what was decoded (metadata, eve.http_coding_metadata):
# the codings, "ok" or why decoding stopped, the decoded length.
REPLAY_FIELDS = ("content_encoding", "decoded_bytes", "decompressed")


def _flow_of(rec: dict) -> tuple:
    import ipaddress

    def ep(ip, port):
        ip = str(ipaddress.ip_address(ip))
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return rec["proto"].lower(), frozenset((ep(rec["src_ip"], rec["src_port"]), ep(rec["dest_ip"], rec["dest_port"])))


def _coding(rec: dict, direction: str) -> dict | None:
    md = rec.get("metadata") or {}
    fv = {k: v for item in md.get("flowvars", ()) for k, v in item.items()}
    p = "http_request_" if direction == "request" else "http_"
    if p + "content_encoding" not in fv:
        return None
    return {"content_encoding": fv[p + "content_encoding"],
            "decoded_bytes": (md.get("flowints") or {}).get(p + "decoded_length"),
            "decompressed": fv[p + "content_decoding"] == "ok"}


@pytest.fixture(scope="module")
def replay_tally(fastpath_build):
    from appliance.daemon import empty_rules
    from appliance.replay import replay, replay_config
    from tests.eve_schemas import schema_errors

    fp = fastpath_build
    checked = {f: 0 for f in REPLAY_FIELDS}
    wrong: dict[str, list[str]] = {f: [] for f in REPLAY_FIELDS}
    try:
        for pcap, key, items in cases():
            fp.reset()
            fp.apply_runtime(replay_config())
            records: list[dict] = []
            replay(CORPUS / pcap, fp, empty_rules(), records.append)
            for r in records:
                assert not schema_errors(r), (pcap, r, schema_errors(r))
            http = [r for r in records if r["event_type"] == "http" and _flow_of(r) == unordered(key)]
            for direction in ("request", "response"):
                mine = [c for c in (_coding(r, direction) for r in http) if c is not None]
                for i, want in enumerate(i for i in items if i["direction"] == direction):
                    got = mine[i] if i < len(mine) else {}
                    for f in REPLAY_FIELDS:
                        if want.get(f) is None:
                            continue
                        checked[f] += 1
                        if got.get(f) != want[f]:
                            wrong[f].append(f"{pcap} {key} {direction} #{i}: {got.get(f)!r} != {want[f]!r}")
    finally:
        fp.reset()
        fp.apply_runtime(fp.config)
    return checked, wrong


@pytest.mark.parametrize("field", REPLAY_FIELDS)
def test_replay_agrees_with_the_truth(replay_tally, field):
    checked, wrong = replay_tally
    assert checked[field] >= 5
    assert (checked[field] - len(wrong[field])) / checked[field] >= TARGET, "\n".join(wrong[field])
