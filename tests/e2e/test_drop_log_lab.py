"""What the policy denied, and why, in eve.json (issue 15 item 3).

`microseg run` in the lab gateway; a client connects to a port a rule
denies and to one only the default denies. Each shows up as a Suricata
`drop` record: the packet's tuple, the interface, the kernel's reason, the
rule, the count the rate limit suppressed; Suricata's own schema and the
project's overlay accept it.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.lab import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, Lab
from labrun import running_daemon
from tests.eve_schemas import require_suricata, schema_errors
from datapath.config import DROP_EVENTS_PER_SEC
from test_hold_reset_lab import eve_records, reason_count, wait_for

pytestmark = pytest.mark.lab

DENIED_PORT, DEFAULT_PORT = 2222, 3333
POLICY = f"""
groups:
  clients: [10.77.1.0/24, "fd77:1::/64"]
  servers: [10.77.2.0/24, "fd77:2::/64"]
defaults: {{ingress: deny, egress: allow}}
rules:
  - {{name: no-telnet-like, from: clients, to: servers, proto: tcp, ports: [{DENIED_PORT}], action: deny}}
  - {{name: web, from: clients, to: servers, proto: tcp, ports: [80], action: allow}}
"""
CONNECT_S = 2


@pytest.fixture(scope="module")
def drop_lab(tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("drop-log-lab")
    (tmp / "policy.yaml").write_text(POLICY)
    (tmp / "rules.yaml").write_text("{}\n")
    with Lab() as lab:
        with running_daemon(lab, tmp):
            yield lab, tmp


def connect(lab, host: str, port: int) -> int:
    """curl to a port nothing answers through the gateway: its SYNs are dropped."""
    r = lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "--max-time", str(CONNECT_S),
                             f"http://{host}:{port}/" if ":" not in host else f"http://[{host}]:{port}/"],
                check=False, timeout=CONNECT_S + 10)
    return r.returncode


def drops_to(tmp, src: str, port: int) -> list[dict]:
    return [d for d in eve_records(tmp, "drop") if d.get("dest_port") == port and d.get("src_ip") == src]


def pktvars(rec: dict) -> dict:
    return {k: v for item in rec["metadata"]["pktvars"] for k, v in item.items()}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_denied_connection_is_a_drop_record_with_its_reason(drop_lab, v6):
    lab, tmp = drop_lab
    client, server = (CLIENT_V6, SERVER_V6) if v6 else (CLIENT_V4, SERVER_V4)
    assert connect(lab, server, DENIED_PORT) == 28          # timed out: the SYNs were dropped
    recs = wait_for("the denied SYN's drop record", lambda: drops_to(tmp, client, DENIED_PORT))
    require_suricata()
    for rec in recs:
        assert schema_errors(rec) == []        # Suricata's schema and the project's overlay
    rec = recs[0]
    assert rec["drop"]["reason"] == "DROP_POLICY_DENY" and rec["drop"]["syn"] is True
    assert (rec["dest_ip"], rec["proto"], rec["in_iface"]) == (server, "TCP", "gw-c")
    assert rec["verdict"] == {"action": "drop"}
    pv = pktvars(rec)
    assert (pv["hook"], pv["rule_id"], pv["rule"], pv["suppressed"]) == ("ingress", "1", "no-telnet-like", "0")
    # curl's SYN and its retransmissions: a handful, under the per-second limit or counted
    assert len(recs) <= CONNECT_S + 2

    assert connect(lab, server, DEFAULT_PORT) == 28
    rec = wait_for("the default-denied SYN's drop record", lambda: drops_to(tmp, client, DEFAULT_PORT))[0]
    assert schema_errors(rec) == []
    assert rec["drop"]["reason"] == "DROP_POLICY_DEFAULT" and "rule_id" not in pktvars(rec)


# Opens N connections at once without waiting (each sends its SYN, which
# the gateway drops), says so, and keeps them (their SYNs retransmitted)
# until its stdin closes.
FLOOD = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect((host, port))
    except BlockingIOError:
        pass
    socks.append(s)
print("sent", flush=True)
sys.stdin.read()
"""
FLOOD_SYNS = 200


@pytest.fixture(scope="module")
def flood_lab(tmp_path_factory):
    """A lab of its own: the flood's source and reason have no earlier drops."""
    tmp: Path = tmp_path_factory.mktemp("drop-log-flood-lab")
    (tmp / "policy.yaml").write_text(POLICY)
    (tmp / "rules.yaml").write_text("{}\n")
    with Lab() as lab:
        with running_daemon(lab, tmp):
            yield lab, tmp


def windows(recs: list[dict]) -> list[list[dict]]:
    """The records grouped as the kernel's per-key one-second windows: a
    window starts with the first record sent after the previous one ended."""
    from datetime import datetime
    out: list[list[dict]] = []
    start = None
    for r in recs:
        t = datetime.strptime(r["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
        if start is None or t - start >= 1.0:
            out.append([])
            start = t
        out[-1].append(r)
    return out


def test_a_scan_is_limited_per_second_and_the_rest_counted(flood_lab):
    lab, tmp = flood_lab
    flood = lab.popen(lab.client, [sys.executable, "-c", FLOOD, SERVER_V4, str(DENIED_PORT), str(FLOOD_SYNS)],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout.readline().strip() == "sent"
        # The SYNs' retransmissions (after ~1 s) open a new window: its first
        # record reports what the first window suppressed.
        wait_for("a record reporting suppressed drops",
                 lambda: any(int(pktvars(r)["suppressed"]) for r in drops_to(tmp, CLIENT_V4, DENIED_PORT)))
    finally:
        flood.stdin.close()
        flood.wait(10)
    recs = [r for r in eve_records(tmp, "drop") if r.get("src_ip") == CLIENT_V4]
    assert {r["drop"]["reason"] for r in recs} == {"DROP_POLICY_DENY"}
    for w in windows(recs):
        assert len(w) <= DROP_EVENTS_PER_SEC, [r["timestamp"] for r in w]
    reported = sum(1 + int(pktvars(r)["suppressed"]) for r in recs)
    # every SYN of the first wave is in a record or in a count; nothing is
    # reported that the kernel did not drop
    assert FLOOD_SYNS <= reported <= reason_count(lab, "DROP_POLICY_DENY")
    for r in recs:
        assert schema_errors(r) == []
