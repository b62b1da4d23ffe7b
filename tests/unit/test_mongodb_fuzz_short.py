"""A short, deterministic run of bench/fuzz_mongodb.py (the full run is a
million inputs): corpus MongoDB conversations and crafted messages
mutated, hostile inputs (lengths past the cap, a message longer than the
kept head, a zlib bomb, element floods) and random bytes, fed in random
slices to the parser the plugin registry gives for 'mongodb'."""
from bench.fuzz_mongodb import MAX_PEAK_MB, run


def test_short_fuzz_run_raises_nothing_and_stays_bounded():
    st = run(1500, seed=1717, trace_every=50)
    assert st.inputs == 1500
    assert not st.exceptions, st.examples
    assert not st.hangs and not st.violations, (st.hangs, st.violations, st.examples)
    assert st.peak_mb < MAX_PEAK_MB and st.traced_inputs == 30
    # the run reached the failure paths ...
    assert st.malformed > 200 and st.kinds["hostile"] > 50 and st.kinds["random"] > 50
    # ... and damaged-but-readable conversations were still understood
    assert st.events["mongodb_request"] > 500 and st.events["mongodb_response"] > 200
