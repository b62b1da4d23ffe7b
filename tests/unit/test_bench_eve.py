"""bench/eve.py runs end to end on a small EVE file: one round, this tree
against itself as the baseline, every event type of the file and both flow
record rows in the table, and its child reports what it timed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from slowpath import eve

ROOT = Path(__file__).resolve().parents[2]


def test_bench_eve_small_run(tmp_path, monkeypatch):
    info = eve.FlowInfo(1, "10.0.0.1", 1000, "10.0.0.2", 53, 17, "dns", start=1_700_000_000.0)
    recs = [eve.flow_record(info, 1_700_000_001.0, ct_state="CT_ESTABLISHED"),
            eve.anomaly_record(info, "ODD", 1_700_000_001.0, app_proto="dns")]
    path = tmp_path / "eve.json"
    path.write_bytes(b"".join(eve.encode(r) for r in recs))
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setattr("bench.eve.FLOW_ENDS", 50)
    from bench import eve as bench_eve
    out = bench_eve.child(str(path), 1)
    assert out["records"] == {"flow": 1, "anomaly": 1}
    assert {"encode flow", "encode anomaly", "encode (all)", "flow_end_record",
            "flow_end_record+engine"} <= set(out)
    assert all(v > 0 for k, v in out.items() if k != "records")
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "eve.py"), "--eve", str(path), "--rounds", "1",
                          "--repeat", "1", "--baseline", str(ROOT)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr
    for row in ("encode flow", "encode anomaly", "flow_end_record+engine"):
        assert row in res.stdout
    assert "ratio" in res.stdout
