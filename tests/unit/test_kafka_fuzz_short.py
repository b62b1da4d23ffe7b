"""A short, deterministic run of bench/fuzz_kafka.py (the full run is a
million inputs): corpus Kafka streams mutated and re-chunked, crafted
requests and responses of old and flexible versions, hostile inputs and
random bytes, fed to the parser the plugin registry gives for 'kafka'."""
from bench.fuzz_kafka import MAX_PEAK_MB, run


def test_short_fuzz_run_raises_nothing_and_stays_bounded():
    st = run(1500, seed=1717, trace_every=50)
    assert st.inputs == 1500
    assert not st.exceptions, st.examples
    assert not st.hangs and not st.violations, (st.hangs, st.violations)
    assert st.peak_mb < MAX_PEAK_MB and st.traced_inputs == 30
    # the run reached the failure paths ...
    assert st.malformed > 100 and st.kinds["hostile"] > 10
    # ... and damaged conversations were still read
    assert st.events["kafka_request"] > 2000 and st.events["kafka_response"] > 500
