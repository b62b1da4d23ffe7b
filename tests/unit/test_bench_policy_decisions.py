"""bench/policy.py's count of the new flows microseg's policy decided, read
from `microseg stats --json` (a case's connections that reused a 5-tuple's
session entry skip the policy: the note says how many paid for it)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.policy import policy_decisions  # noqa: E402


def _stats(rows):
    return json.dumps({"netns": "gw", "prog_ids": [1], "counters": rows})


def test_counts_the_ingress_policy_allows_only():
    rows = [
        {"hook": "ingress", "reason": "PASS_FORWARD", "action": "pass", "packets": 1424554, "bytes": 1},
        {"hook": "ingress", "reason": "PASS_POLICY_ALLOW", "action": "pass", "packets": 14116, "bytes": 1},
        {"hook": "egress", "reason": "PASS_POLICY_ALLOW", "action": "pass", "packets": 3, "bytes": 1},
        {"hook": "egress", "reason": "PASS_SEEN_AT_INGRESS", "action": "pass", "packets": 1438670, "bytes": 1},
    ]
    assert policy_decisions(_stats(rows)) == 14116
    assert policy_decisions(_stats([])) == 0


@pytest.mark.parametrize("bad", ["", "not json", "{}", "[1, 2]"])
def test_unreadable_output_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="microseg stats --json"):
        policy_decisions(bad)


def test_the_connection_client_takes_its_source_addresses_in_turn():
    """bench/policy.py's CLIENT with a fifth argument: each connection from
    the next source address (loopback: 127.0.0.1 and 127.0.0.2)."""
    import socket
    import subprocess
    import threading

    from bench.policy import CLIENT

    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    peers = []

    def serve():
        for _ in range(4):
            c, addr = ls.accept()
            peers.append(addr[0])
            c.recv(1)
            c.sendall(b"a")
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        r = subprocess.run([sys.executable, "-c", CLIENT, "127.0.0.1", str(ls.getsockname()[1]), "4", "10",
                            "127.0.0.1,127.0.0.2"], capture_output=True, text=True, timeout=30)
        t.join(10)
    finally:
        ls.close()
    assert json.loads(r.stdout)["ok"] == 4, r.stderr
    assert peers == ["127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.2"]
