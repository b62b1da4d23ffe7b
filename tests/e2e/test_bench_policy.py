"""bench/policy.py --quick: one row per case, with numbers (no timing asserted).

The smallest run: 10 rules, one run per case, a few hundred connections and
a one-second iperf3 each; the lab is removed afterwards.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import netns as pr_netns

pytestmark = pytest.mark.lab

BENCH = Path(__file__).resolve().parents[2] / "bench" / "policy.py"
CASES = {"no filter", "empty program", "microseg, no policy", "microseg", "nftables", "nftables-set"}
# case | rules | conn/s | ratio | paired | Gbit/s | ratio | paired
ROW = re.compile(r"^\| ([a-z ,-]+) \| (?:\(10\)|10|-) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$")


def test_bench_policy_quick():
    r = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {m[1]: m.groups()[1:] for m in map(ROW.match, r.stdout.splitlines()) if m}
    assert set(rows) == CASES, r.stdout
    for case, (conns, cratio, cpaired, gbits, gratio, gpaired) in rows.items():
        assert int(conns) > 0 and float(gbits) > 0, (case, r.stdout)
    assert "WARNING" not in r.stderr
    # The bench's own lab is gone (other work may own other namespaces).
    m = re.search(r"^lab namespaces: (.+)$", r.stdout, re.M)
    assert m, r.stdout
    created = {n.strip() for n in m.group(1).split(",")}
    assert len(created) == 3 and not created & set(pr_netns.listnetns())
