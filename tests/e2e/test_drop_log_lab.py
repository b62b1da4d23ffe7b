"""What the policy denied, and why, in eve.json (issue 15 item 3).

`microseg run` in the lab gateway; a client connects to a port a rule
denies and to one only the default denies. Each shows up as a Suricata
`drop` record: the packet's tuple, the interface, the kernel's reason, the
rule, the count the rate limit suppressed; Suricata's own schema and the
project's overlay accept it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from appliance.lab import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, Lab
from labrun import running_daemon
from tests.eve_schemas import require_suricata, schema_errors
from test_hold_reset_lab import eve_records, wait_for

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
