"""gRPC through the live appliance: a grpcio server and client
(tests/e2e/servers/grpc_lab.py, service lab.Shop) across the lab's gateway,
`microseg run` inline, one port per policy rule:

- an allow rule without an allow-list: every method is served (the lab itself);
- an allow rule whose `l7:` grpc allow-list names GetItem and ListItems: those
  are served, DeleteItem is blocked before it reaches the server (hold, the
  allow-list's default) and logged as an alert naming the rule;
- an inspect rule (hold) without a list: calls served, each logged.

The server logs every call it receives. Each call is its own client process,
so its own connection.
"""
from __future__ import annotations

import json
import sys

import pytest

from appliance.lab import SERVER_V4, Lab
from tests.e2e.labrun import running_daemon, wait_for
from tests.e2e.servers import HERE, lab_server, log_lines

pytestmark = pytest.mark.lab

OPEN_PORT, LISTED_PORT, INSPECT_PORT = 50151, 50152, 50153
CLIENT_TIMEOUT_S = 30     # grpc_lab.py's own deadline is 10 s

POLICY = f"""
groups:
  clients: [10.77.1.0/24]
  servers: [10.77.2.0/24]
defaults: {{ingress: deny, egress: deny}}
rules:
  - {{name: grpc-open, from: clients, to: servers, proto: tcp, ports: [{OPEN_PORT}], action: allow}}
  - {{name: grpc-inspect, from: clients, to: servers, proto: tcp, ports: [{INSPECT_PORT}], action: inspect,
     inspect: {{what: [waf, dpi], mode: hold}}}}
  - name: grpc-shop-read
    from: clients
    to: servers
    proto: tcp
    ports: [{LISTED_PORT}]
    action: allow
    l7:
      grpc:
        - {{service: lab.Shop, method: GetItem}}
        - {{service: lab.Shop, method: ListItems}}
"""
RULES = """
waf:
  sets: {sqli: block}
"""


class GrpcLab:
    def __init__(self, lab: Lab, tmp):
        self.lab, self.tmp = lab, tmp

    def call(self, port: int, method: str, text: str) -> str:
        r = self.lab.run(self.lab.client, [sys.executable, str(HERE / "grpc_lab.py"), "call",
                                           f"{SERVER_V4}:{port}", method, text],
                         check=False, timeout=CLIENT_TIMEOUT_S)
        return r.stdout.strip() or f"ERROR exit {r.returncode}: {r.stderr.strip()[-300:]}"

    def served(self, port: int) -> list[str]:
        return log_lines(self.tmp / f"calls-{port}.log")

    def alerts(self, port: int) -> list[dict]:
        eve = self.tmp / "eve.json"
        recs = [json.loads(x) for x in eve.read_text().splitlines() if x.strip()] if eve.exists() else []
        return [r for r in recs if r["event_type"] == "alert" and r["dest_port"] == port]


@pytest.fixture(scope="module")
def grpclab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpc-lab")
    (tmp / "policy.yaml").write_text(POLICY)
    (tmp / "rules.yaml").write_text(RULES)
    with Lab() as lab:
        with lab_server(lab, tmp, "grpc_lab.py", "serve", SERVER_V4, str(OPEN_PORT),
                        str(tmp / f"calls-{OPEN_PORT}.log"), port=OPEN_PORT), \
             lab_server(lab, tmp, "grpc_lab.py", "serve", SERVER_V4, str(INSPECT_PORT),
                        str(tmp / f"calls-{INSPECT_PORT}.log"), port=INSPECT_PORT), \
             lab_server(lab, tmp, "grpc_lab.py", "serve", SERVER_V4, str(LISTED_PORT),
                        str(tmp / f"calls-{LISTED_PORT}.log"), port=LISTED_PORT), \
             running_daemon(lab, tmp):
            yield GrpcLab(lab, tmp)


def test_grpc_calls_through_an_allow_rule(grpclab):
    """The lab itself: unary and server-streaming calls over real HTTP/2."""
    assert grpclab.call(OPEN_PORT, "GetItem", "open-1") == "OK item:open-1"
    assert grpclab.call(OPEN_PORT, "DeleteItem", "open-2") == "OK deleted:open-2"
    assert grpclab.call(OPEN_PORT, "ListItems", "open-3") == "OK item0:open-3|item1:open-3|item2:open-3"
    assert {"GetItem open-1", "DeleteItem open-2", "ListItems open-3"} <= set(grpclab.served(OPEN_PORT))


def test_allow_list_serves_listed_methods_and_blocks_the_others(grpclab):
    assert grpclab.call(LISTED_PORT, "GetItem", "listed-1") == "OK item:listed-1"
    assert grpclab.call(LISTED_PORT, "ListItems", "listed-2") == "OK item0:listed-2|item1:listed-2|item2:listed-2"
    denied = grpclab.call(LISTED_PORT, "DeleteItem", "listed-3")
    assert denied.startswith("ERROR"), denied          # reset (UNAVAILABLE) or refused, never served
    served = grpclab.served(LISTED_PORT)
    assert {"GetItem listed-1", "ListItems listed-2"} <= set(served), served
    assert not [c for c in served if c.startswith("DeleteItem")], served   # hold: it never reached the server

    def alert():
        return [a for a in grpclab.alerts(LISTED_PORT) if "DeleteItem" in json.dumps(a)]
    (a,) = wait_for("the allow-list's alert on DeleteItem", alert)
    assert "grpc-shop-read" in json.dumps(a["alert"]), a       # it names the rule
    assert a["verdict"]["action"] == "drop", a
    # the listed methods raised nothing
    assert not [x for x in grpclab.alerts(LISTED_PORT) if "listed-1" in json.dumps(x) or "GetItem" in
                json.dumps(x.get("alert", {}))]
    # and the port goes on serving them
    assert grpclab.call(LISTED_PORT, "GetItem", "listed-4") == "OK item:listed-4"


def test_a_channels_later_denied_call_never_reaches_the_server(grpclab):
    """The denied call after an allowed one on the same channel (one
    HTTP/2 connection): the kernel holds every request of an allow-list
    rule in hold mode, so it never reaches the server (before: only the
    connection's first request was held, and the later call was served
    before the reset)."""
    lines = grpclab.call(LISTED_PORT, "GetItem,DeleteItem", "chan-1").splitlines()
    assert lines[0] == "OK item:chan-1" and lines[1].startswith("ERROR"), lines
    served = grpclab.served(LISTED_PORT)
    assert "GetItem chan-1" in served and "DeleteItem chan-1" not in served, served


def test_inspected_calls_are_served_and_logged_with_service_method_and_status(grpclab):
    """Through an inspect rule in hold mode (no allow-list): served, and each
    call is an http record (app_proto http2) with its gRPC service, method
    and status."""
    assert grpclab.call(INSPECT_PORT, "GetItem", "logged-1") == "OK item:logged-1"
    assert grpclab.call(INSPECT_PORT, "ListItems", "logged-2") == "OK item0:logged-2|item1:logged-2|item2:logged-2"

    def calls():
        eve = grpclab.tmp / "eve.json"
        recs = [json.loads(x) for x in eve.read_text().splitlines() if x.strip()] if eve.exists() else []
        out = []
        for r in recs:
            md = r.get("metadata", {})
            flowvars = {k: v for d in md.get("flowvars", []) for k, v in d.items()}
            if r["event_type"] == "http" and r["dest_port"] == INSPECT_PORT and \
                    flowvars.get("grpc_method") in ("GetItem", "ListItems"):
                out.append((r, flowvars, md.get("flowints", {})))
        return out
    got = wait_for("both gRPC calls' http records", lambda: len(calls()) >= 2 and calls())
    assert sorted(f["grpc_method"] for _, f, _ in got) == ["GetItem", "ListItems"], got
    for rec, flowvars, ints in got:
        assert rec["app_proto"] == "http2" and rec["http"]["url"] == "/lab.Shop/" + flowvars["grpc_method"], rec
        assert flowvars["grpc_service"] == "lab.Shop" and ints.get("grpc_status") == 0, rec
    assert {"GetItem logged-1", "ListItems logged-2"} <= set(grpclab.served(INSPECT_PORT))
