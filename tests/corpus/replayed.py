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


def replayed_truth_flows(fp, corpus, truths, t, app: str, event_type: str):
    """For each (pcap, truth key, truth) of ``truths``: replay the captures
    (replay_by_flow, validating ``event_type`` and flow records), check in
    tally ``t`` that the flow's records name ``app`` and nothing else, and
    yield (where, truth, {event_type: [records]}) for the protocol's own
    comparisons."""
    from tests.corpus.test_corpus_replay import truth_flow

    by_pcap = defaultdict(list)
    for pcap, key, truth in truths:
        by_pcap[pcap].append((key, truth))
    replayed = replay_by_flow(fp, corpus, by_pcap, (event_type, "flow"))
    for pcap, flows in sorted(by_pcap.items()):
        ours = replayed[pcap]
        for key, truth in flows:
            where = f"{pcap} {key}"
            mine = ours.get(truth_flow(key), {})
            apps = {r.get("app_proto") for r in mine.get("flow", [])}
            t.check(where, "app_proto", app, apps.pop() if len(apps) == 1 else sorted(apps, key=str))
            yield where, truth, mine
