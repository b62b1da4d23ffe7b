"""Captures through `microseg replay` on the session's fast path, their EVE
records grouped by flow: what the per-protocol corpus tests compare with the
truth (one definition of the replay loop they share)."""
from __future__ import annotations

from collections import defaultdict

from tests.corpus.test_corpus_replay import flow_of
from tests.eve_schemas import schema_errors


def replay_by_flow(fp, corpus, pcaps, validate: tuple[str, ...]) -> dict:
    """{pcap: {flow (test_corpus_replay.flow_of): {event_type: [records]}}} for
    each capture, replayed with empty rules on ``fp`` (its maps reset before
    each and its configuration restored after). Records whose event_type is
    in ``validate`` must pass both EVE schemas."""
    from appliance.daemon import empty_rules
    from appliance.replay import replay, replay_config

    out = {}
    try:
        for pcap in sorted(pcaps):
            fp.reset()
            fp.apply_runtime(replay_config())
            records: list[dict] = []
            replay(corpus / pcap, fp, empty_rules(), records.append)
            ours = defaultdict(lambda: defaultdict(list))
            for r in records:
                if r["event_type"] in validate:
                    errors = schema_errors(r)
                    assert not errors, (pcap, r, errors)
                if "src_port" in r:
                    ours[flow_of(r)][r["event_type"]].append(r)
            out[pcap] = ours
    finally:
        fp.reset()
        fp.apply_runtime(fp.config)
    return out
