"""A short, deterministic run of bench/fuzz_postgresql.py (the full run is a
million inputs): corpus and crafted PostgreSQL sessions mutated and cut at
random points, hostile inputs and random bytes, fed to the parser the plugin
registry gives for 'postgresql'."""
from bench.fuzz_postgresql import MAX_PEAK_MB, run


def test_short_fuzz_run_raises_nothing_and_stays_bounded():
    st = run(1200, seed=1717, trace_every=40)
    assert st.inputs == 1200
    assert not st.exceptions, st.examples
    assert not st.hangs and not st.violations, (st.hangs, st.violations)
    assert st.peak_mb < MAX_PEAK_MB and st.traced_inputs == 30
    # the run reached the failure paths ...
    assert st.malformed > 300
    assert sum(n for k, n in st.kinds.items() if k not in ("mutated", "random")) > 20
    # ... and damaged sessions were still read
    for kind in ("pgsql_startup", "pgsql_query", "pgsql_command_complete", "pgsql_ssl_response",
                 "pgsql_tls", "pgsql_auth_request"):
        assert st.events[kind] > 20, (kind, st.events)
