"""bench/engine_conn.py: the sleeps that make the engine run cold as a lab
worker does (--idle-us, --per-wake)."""
from __future__ import annotations

import pytest

from bench import engine_conn


def test_run_sleeps_before_every_per_wake_th_connection_and_handles_them_all(monkeypatch):
    slept, handled, ended = [], [], []
    monkeypatch.setattr(engine_conn.time, "sleep", slept.append)

    class Engine:
        def handle_batch(self, recs):
            handled.extend(recs)

        def session_end(self, fe, wall):
            ended.append(fe)

    conns = [([f"req{i}", f"resp{i}"], f"end{i}") for i in range(10)]
    engine_conn.run(Engine(), conns, idle_s=0.0005, per_wake=4)
    assert slept == [0.0005] * 3                    # before connections 0, 4 and 8
    assert handled == [r for recs, _ in conns for r in recs] and ended == [fe for _, fe in conns]
    slept.clear()
    engine_conn.run(Engine(), conns)                # the default: no sleep
    assert slept == []


@pytest.mark.parametrize("args", [["--per-wake", "0"], ["--idle-us", "-1"]])
def test_bad_sleep_options_are_refused_by_name(args, capsys):
    with pytest.raises(SystemExit):
        engine_conn.main(args)
    assert args[0] in capsys.readouterr().err
