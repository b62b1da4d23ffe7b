"""The daemon's sweep schedule: a pass that kept expired sessions for a
full ring is followed soon by another (their records then fit), not a
whole sweep interval later."""
from appliance.daemon import DEFERRED_RESWEEP_S, next_sweep_delay
from datapath.sweeper import SweepStats


def _stats(deferred: int) -> SweepStats:
    return SweepStats(scanned=100, expired_flows=32, expired_halfopen=0, seconds=0.01, deferred=deferred)


def test_a_pass_that_kept_sessions_is_followed_soon():
    assert next_sweep_delay(_stats(68), 10.0) == DEFERRED_RESWEEP_S < 10.0


def test_otherwise_the_configured_interval():
    assert next_sweep_delay(_stats(0), 10.0) == 10.0


def test_never_later_than_the_configured_interval():
    assert next_sweep_delay(_stats(5), 0.1) == 0.1
