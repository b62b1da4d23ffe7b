"""slowpath/warmup.py: the daemon's warm-up before it forks its workers
runs the engine's paths for real (verdicts, a held request built for
sending, EVE records), touches nothing outside its process, and leaves
nothing for a worker's first connection to load."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slowpath.rulesfile import load_rules_text
from slowpath.warmup import warm_up

ROOT = Path(__file__).resolve().parents[2]
# WAF and DLP rules as the lab's: examples/rules.yaml takes seconds to compile
RULES = """
waf:
  sets: {sqli: block, xss: block, traversal: block, cmdi: block}
dlp:
  - {name: no-cards-out, detectors: [credit_card], direction: response, action: block}
"""


def test_warm_up_runs_the_async_and_the_hold_path(monkeypatch):
    def no_socket(*a, **kw):
        raise AssertionError("warm_up opened a socket")
    monkeypatch.setattr("slowpath.inject.socket.socket", no_socket)
    done = warm_up(load_rules_text(RULES))
    # both requests checked and let go; the held one built for sending on
    assert done["verdicts"] == {"VERDICT_RELEASE": 2}
    assert done["injected"] == 1
    # an http record per request, a flow record per session end
    assert done["events"] == {"http": 2, "flow": 2}


# A connection through a fresh Engine after warm_up: every module it
# needs is loaded already (no rules: the WAF sets take seconds to compile
# in a fresh process) (before the warm-up existed, the first
# connection of a worker imported the protocol plugins and more, 2-5 ms
# of its verdict latency in the lab).
FIRST_CONNECTION = r"""
import sys, time
from slowpath.rulesfile import load_rules_text
from slowpath.warmup import warm_up, _connection
from slowpath.engine import Engine
from datapath.enums import INSPECT
rules = load_rules_text(sys.argv[1])
if sys.argv[2] == "warm":
    warm_up(rules)
before = set(sys.modules)
class NoVerdicts:
    def verdict(self, key, code):
        return time.monotonic_ns()
engine = Engine(rules, lambda r: None, NoVerdicts(), kernel_flow_records=True)
_connection(engine, 50000, INSPECT["DPI"] | INSPECT["WAF"] | INSPECT["DLP"], lambda ns: 0.0)
print(" ".join(sorted(set(sys.modules) - before)))
"""


@pytest.mark.parametrize("warm", ["warm", "cold"])
def test_first_connection_after_warm_up_loads_nothing(warm):
    out = subprocess.run([sys.executable, "-c", FIRST_CONNECTION, "{}\n", warm], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.split()
    if warm == "warm":
        assert loaded == []
    else:       # the check can fail: without the warm-up the first connection loads the plugins
        assert any(m.startswith("protocols.") for m in loaded), loaded
