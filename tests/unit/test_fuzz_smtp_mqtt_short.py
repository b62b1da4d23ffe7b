"""A short, deterministic run of bench/fuzz_smtp_mqtt.py (the full run is a
million inputs a protocol): generated SMTP and MQTT conversations and hostile
inputs (lines past the cap, a client not waiting for 354 or STARTTLS's
answer, megabyte messages and PUBLISH payloads, 5-byte remaining lengths,
thousands of topics), mutated and fed in random splits, with gaps and ends,
to the parsers the plugin registry gives for 'smtp' and 'mqtt'."""
import pytest

from bench.fuzz_smtp_mqtt import MAX_PEAK_MB, run


@pytest.mark.parametrize("name,understood", [
    ("smtp", {"smtp_command": 2000, "smtp_reply": 2000, "smtp_message": 100, "smtp_starttls": 5}),
    ("mqtt", {"mqtt_connect": 200, "mqtt_publish": 200, "mqtt_subscribe": 100, "mqtt_suback": 50}),
])
def test_short_fuzz_run_raises_nothing_and_stays_bounded(name, understood):
    st = run(400, seed=1717, name=name, hostile_every=20, trace_every=50)
    assert st.inputs == 400 and st.hostile_inputs == 20
    assert not st.exceptions, st.examples
    assert not st.hangs and not st.violations, (st.hangs, st.violations)
    assert st.peak_mb < MAX_PEAK_MB and st.traced_inputs >= 20
    # the run reached the failure paths, not only clean streams ...
    assert st.malformed > 50
    # ... and the valid conversations were understood
    for kind, n in understood.items():
        assert st.events[kind] > n, (kind, st.events)
