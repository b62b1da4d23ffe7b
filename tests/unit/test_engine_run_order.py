"""Engine._handle_run sets a flow's place in the flow table (the most
recently seen last: the oldest go first when the table is full, and
close_all logs in that order) and its last_seen (idle timeouts) once per
run: as handling its records one at a time does, checked over seeded
batches of interleaved flows against runs off, with a clock that moves
every batch."""
from __future__ import annotations

import itertools
import random

from tests.unit.test_engine_fast_paths import ENGINE_RULES, _http_flow_records


def _table_after_each_batch(recs, runs: bool, batch: int) -> list:
    from slowpath.engine import Engine
    from slowpath.rulesfile import load_rules_text

    class Writer:
        def verdict(self, key, code):
            return 2_000_000

    tick = itertools.count(1)
    engine = Engine(load_rules_text(ENGINE_RULES, "rules.yaml"), lambda r: None, Writer(),
                    clock=lambda: float(next(tick)), wallclock=lambda: 2.0)
    engine.record_runs = runs
    seen = []
    for i in range(0, len(recs), batch):
        engine.handle_batch(recs[i:i + batch])
        seen.append([(k, f.last_seen) for k, f in engine.flows.items()])
    return seen


def test_runs_leave_the_flow_table_order_and_last_seen_of_one_record_at_a_time():
    rnd = random.Random(1404)
    for case in range(40):
        per_flow = [_http_flow_records(rnd, bytes([f]) * 40) for f in range(rnd.randrange(2, 5))]
        recs = []
        while any(per_flow):       # each flow's records in order, the flows in pieces
            f = rnd.choice([f for f in per_flow if f])
            n = rnd.randrange(1, 12)
            recs += f[:n]
            del f[:n]
        batch = rnd.choice((5, 16, 64))
        assert _table_after_each_batch(recs, True, batch) == _table_after_each_batch(recs, False, batch), case
