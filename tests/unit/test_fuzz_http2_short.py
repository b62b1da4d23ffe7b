"""A short, deterministic run of bench/fuzz_http2.py (the full run is a
million inputs): h2-written conversations and hostile frame sequences (HPACK
bombs, table size updates, huge header lists, CONTINUATION floods, a
thousand streams, ...) mutated and fed in random splits to the parser the
plugin registry gives for 'http2'."""
import pytest

from bench.fuzz_http2 import MAX_PEAK_MB, run

pytest.importorskip("h2")


def test_short_fuzz_run_raises_nothing_and_stays_bounded():
    st = run(2500, seed=1616, hostile_every=25, trace_every=100)
    assert st.inputs == 2500 and st.hostile_inputs == 100
    assert not st.exceptions, st.examples
    assert not st.hangs and not st.violations, (st.hangs, st.violations)
    assert st.peak_mb < MAX_PEAK_MB and st.traced_inputs >= 100
    # the run reached the failure paths, not only clean streams
    assert st.malformed > 100
    assert st.anomalies["INVALID_FRAME_LENGTH"] > 10 and st.anomalies["RESYNCHRONISED"] > 10
    # ... and the valid conversations were understood
    assert st.events["http_request"] > 1000 and st.events["grpc_call"] > 100
