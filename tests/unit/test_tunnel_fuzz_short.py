"""A short, deterministic run of bench/fuzz_tunnels.py's reader side (the
full run is a million inputs): valid and mutated IPIP / 6in4 / 4in6 / 6in6,
GRE, VXLAN and GENEVE frames, nested up to three deep, fed to
slowpath.pcap's per-frame decoder."""
from bench.fuzz_tunnels import MAX_PEAK_MB, run


def test_short_reader_fuzz_raises_nothing_and_stays_bounded():
    st = run(3000, seed=1717, trace_every=50)
    assert st.inputs == 3000
    assert not st.exceptions, st.examples
    assert not st.hangs and not st.violations, (st.hangs, st.violations)
    assert st.peak_mb < MAX_PEAK_MB and st.traced_inputs == 60
    # every kind of input was made ...
    assert min(st.kinds.values()) > 50 and len(st.kinds) == 6, st.kinds
    # ... valid frames through every tunnel decoded, damaged ones refused with a reason
    assert st.decoded > 1000
    assert st.malformed > 500 and st.undecodable["too many tunnels"] > 50
    for reason in ("gre header reserved flags set", "geneve options truncated", "vxlan header without the vni flag"):
        assert st.undecodable[reason] > 0, reason
