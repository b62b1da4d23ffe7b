"""A short, deterministic run of bench/fuzz_quic.py (the full run is a
million inputs): corpus QUIC flows mutated, crafted Initials that decrypt
with damaged plaintext, hostile inputs and random datagrams, fed to the
parser the plugin registry gives for 'quic'."""
from bench.fuzz_quic import MAX_PEAK_MB, run


def test_short_fuzz_run_raises_nothing_and_stays_bounded():
    st = run(1500, seed=1717, trace_every=50)
    assert st.inputs == 1500
    assert not st.exceptions, st.examples
    assert not st.hangs and not st.violations, (st.hangs, st.violations)
    assert st.peak_mb < MAX_PEAK_MB and st.traced_inputs == 30
    # the run reached the failure paths ...
    assert st.malformed > 100 and st.undecryptable > 100 and st.kinds["hostile"] > 10
    # ... and damaged-but-decrypting handshakes were still understood
    assert st.events["quic_client_hello"] > 300 and st.events["quic_server_hello"] > 100
    assert st.events["quic_retry"] > 10 and st.events["quic_version_negotiation"] > 10
