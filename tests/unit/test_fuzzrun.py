"""bench/fuzzrun.py, the runner of the bench/fuzz_*.py scripts, on a toy
target whose parser misbehaves on chosen inputs: what it must find, and
that a run in jobs finds the same as a run in one process."""
from __future__ import annotations

from bench import fuzzrun
from protocols.api import Direction, Malformed

RAISES, HANGS, NOT_EVENT, BIG = 3, 6, 7, 8
# Hang bound of the toy (wall clock): the hanging input costs this much.
HANG_SECONDS = 0.2


class Toy(fuzzrun.Target):
    name = "toy"
    max_input_seconds = HANG_SECONDS
    max_peak_mb = 1.0
    trace_every = 4          # 0, 4, 8: input 8 allocates over max_peak_mb

    def __init__(self, bad=(RAISES, HANGS, NOT_EVENT, BIG)) -> None:
        self.bad = bad

    def setup(self, seed):
        return None

    def build(self, ctx, index, seed):
        rng = fuzzrun.input_rng(seed, index)
        return ("odd" if index % 2 else "even"), (index, rng.randrange(1000))

    def feed(self, ctx, plan, st, index, verbose=False):
        i, value = plan
        if i in self.bad:
            if i == RAISES:
                raise ValueError(f"parser choked on {value}")
            if i == HANGS:
                while True:
                    pass
            if i == NOT_EVENT:
                st.count(["not an event"], index)
            if i == BIG:
                assert len(bytearray(3 << 20)) == 3 << 20     # held while tracemalloc watches
        st.count([Malformed(Direction.TO_SERVER, "toy", value)] if value % 2 else [], index)

    def report(self, st, seed):
        return f"toy: {st.inputs} inputs, {st.malformed} malformed\n" + "\n".join(fuzzrun.outcome_lines(st))


def test_a_raise_a_hang_a_non_event_and_a_peak_are_each_reported_with_their_input():
    st = fuzzrun.run(Toy(), 10, seed=5)
    assert st.inputs == 10 and st.kinds == {"even": 5, "odd": 5}
    [(where, n)] = st.exceptions.items()
    assert n == 1 and where.startswith("ValueError at test_fuzzrun.py:")
    assert len(st.examples) == 1 and st.examples[0].startswith("input 3: ValueError") \
        and "parser choked on" in st.examples[0]
    assert st.hangs == [HANGS]
    assert any(v.startswith("input 7: not an event") for v in st.violations), st.violations
    assert st.traced_inputs == 3 and st.peak_input == BIG and st.peak_mb > 2.5
    assert any(v.startswith("tracemalloc peak") for v in st.violations), st.violations
    assert not st.ok()
    expected = sum(fuzzrun.input_rng(5, i).randrange(1000) % 2 for i in range(10) if i not in (RAISES, HANGS))
    assert st.malformed == st.events["malformed"] == expected


def test_a_clean_target_passes_and_jobs_find_what_one_process_finds():
    assert fuzzrun.run(Toy(bad=()), 10, seed=5).ok()
    one = fuzzrun.run(Toy(bad=(RAISES,)), 40, seed=9, start=2)
    two = fuzzrun.run(Toy(bad=(RAISES,)), 40, seed=9, start=2, jobs=2)
    for st in (one, two):
        assert st.inputs == 40 and sum(st.exceptions.values()) == 1 and not st.hangs
    assert (two.kinds, two.events, two.malformed, two.exceptions, two.traced_inputs) == \
        (one.kinds, one.events, one.malformed, one.exceptions, one.traced_inputs)


def test_command_line_exit_status_and_only_replays_one_input_with_its_traceback(capsys):
    assert fuzzrun.main(Toy(bad=()), "toy", ["--inputs", "6", "--seed", "1"]) == 0
    assert "toy: 6 inputs" in capsys.readouterr().out
    assert fuzzrun.main(Toy(bad=(RAISES,)), "toy", ["--inputs", "6", "--seed", "1"]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert fuzzrun.main(Toy(bad=(RAISES,)), "toy", ["--seed", "1", "--only", str(RAISES)]) == 1
    out, err = capsys.readouterr()
    assert "toy: 1 inputs" in out and "Traceback" in err and "ValueError: parser choked on" in err


def test_slow_call_and_rss_bounds_are_violations():
    class Slow(Toy):
        max_call_seconds = 1.0
        max_rss_growth_mb = -1.0     # any growth, even none, is over it

        def feed(self, ctx, plan, st, index, verbose=False):
            st.call(2.5 if index == 4 else 0.0, index)

    st = fuzzrun.run(Slow(), 6, seed=1)
    assert any("slowest call 2.500 s > 1.0 s (input 4)" in v for v in st.violations), st.violations
    assert any(v.startswith("RSS grew") for v in st.violations), st.violations
