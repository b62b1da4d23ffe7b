"""A short, deterministic run of bench/fuzz_content.py (the full run is a
million inputs): mutated gzip/deflate/brotli streams and random bytes in
random splits through the decoder and the HTTP/1 parser, plus four bombs."""
from bench.fuzz_content import run


def test_short_fuzz_run_raises_nothing_and_stays_bounded():
    st = run(3000, seed=1616, http_every=5)
    assert st.inputs == 3000 and st.http_inputs == 600
    assert not st.exceptions, st.examples
    assert not st.violations, st.violations[:5]
    # the run did reach the failure paths, not only clean streams
    assert st.errors["invalid"] > 100 and st.errors["truncated"] > 100
    assert st.anomalies["GZIP_DECOMPRESSION_FAILED"] > 10
    # four bombs (20-50 MB decoded each uncapped) held to about the cap
    assert st.bomb_peak_mb < 16
