"""A blocked connection does not poison its ports (issue 12, found with item 5).

`microseg run` in the lab gateway with WAF block rules, async and hold. A
client's request with an SQL injection is blocked and both ends are reset;
the client then connects again from the SAME local port to the same server
(curl --local-port: a retry, or the kernel handing out that ephemeral port
again). That is a new connection: the policy decides it, the slow path
inspects it afresh, and a legitimate request on it is served. The old
connection is over; nothing of it reaches the server.

Before the fix the kernel kept the blocked session and dropped every packet
of its 5-tuple (a new SYN included) until the session's timeout (an hour
for ESTABLISHED); in hold mode the unmerged block verdict made the new
SYN pass as one on the old session and the handshake die out of window.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.lab import SERVER_V4, SERVER_V6, Lab
from labrun import running_daemon
from test_hold_reset_lab import CLIENT_TIMEOUT_S, RULES, SQLI, eve_records, reason_count, wait_for

pytestmark = pytest.mark.lab

ASYNC_PORT, HOLD_PORT = 8091, 8092
POLICY = f"""
groups:
  clients: [10.77.1.0/24, "fd77:1::/64"]
  servers: [10.77.2.0/24, "fd77:2::/64"]
defaults: {{ingress: deny, egress: deny}}
rules:
  - {{name: web-async, from: clients, to: servers, proto: tcp, ports: [{ASYNC_PORT}], action: inspect,
     inspect: {{what: [waf, dpi], mode: async}}}}
  - {{name: web-hold, from: clients, to: servers, proto: tcp, ports: [{HOLD_PORT}], action: inspect,
     inspect: {{what: [waf, dpi], mode: hold}}}}
"""
# Local ports the clients bind: below Linux's ephemeral range (32768-60999),
# so no other connection of the lab takes them; per test run, per case.
LOCAL_PORT_BASE = 20000 + os.getpid() % 10000

# One connection at a time (as test_hold_reset_lab's server), logging
# "open P", "request P PATH", "closed P eof|reset" (P: the client's port)
# to argv[2]. A request whose target holds "UNION" is never answered: in
# async mode the request reaches the server while the slow path decides, and
# an answer could beat the block verdict; unanswered, the client's end is
# decided by the block's reset alone.
SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
log = open(sys.argv[2], "a", buffering=1)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    port, buf, how = peer[1], b"", "eof"
    log.write(f"open {port}\n")
    try:
        while True:
            data = c.recv(65536)
            if not data:
                break
            buf += data
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                target = head.split(b" ")[1].decode(errors="replace")
                log.write(f"request {port} {target}\n")
                if "UNION" not in target:
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    except ConnectionResetError:
        how = "reset"
    c.close()
    log.write(f"closed {port} {how}\n")
"""


@pytest.fixture(scope="module")
def reuse_lab(tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("block-port-reuse-lab")
    (tmp / "policy.yaml").write_text(POLICY)
    (tmp / "rules.yaml").write_text(RULES)
    with Lab() as lab:
        procs = []
        try:
            for port in (ASYNC_PORT, HOLD_PORT):
                srv = lab.popen(lab.server, [sys.executable, "-c", SERVER, str(port), str(tmp / f"http-{port}.log")],
                                stdout=subprocess.PIPE, text=True)
                procs.append(srv)
                assert srv.stdout.readline().strip() == "ready"
            with running_daemon(lab, tmp):
                yield lab, tmp
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(5)


def curl_from(lab, local_port: int, url: str):
    """curl from a fixed local port; (exit code, HTTP status, local port, stderr)."""
    r = lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{local_port}",
                             "--local-port", str(local_port), "--max-time", str(CLIENT_TIMEOUT_S), url],
                check=False, timeout=CLIENT_TIMEOUT_S + 10)
    code, port = (r.stdout.split() + ["", ""])[:2]
    return r.returncode, code, int(port) if port.isdigit() else None, r.stderr


CASES = [("async", ASYNC_PORT, False), ("hold", HOLD_PORT, False), ("async", ASYNC_PORT, True),
         ("hold", HOLD_PORT, True)]


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{m}-{'ipv6' if v6 else 'ipv4'}" for m, _, v6 in CASES])
def test_a_new_connection_from_a_blocked_connections_port_is_served(reuse_lab, i):
    lab, tmp = reuse_lab
    mode, port, v6 = CASES[i]
    local = LOCAL_PORT_BASE + i
    base = f"http://[{SERVER_V6}]:{port}" if v6 else f"http://{SERVER_V4}:{port}"
    log = tmp / f"http-{port}.log"

    def server_log():
        return log.read_text().splitlines() if log.exists() else []

    rc, code, got_port, err = curl_from(lab, local, base + SQLI)
    assert rc == 56 and got_port == local, (rc, code, err)       # reset by the block, not its timeout
    wait_for("the server to see the reset", lambda: f"closed {local} reset" in server_log())
    alerts = wait_for("the block's alert", lambda: [a for a in eve_records(tmp, "alert")
                                                    if a["src_port"] == local and a["dest_port"] == port])
    assert alerts[0]["verdict"]["action"] == "drop"
    blocked_before = reason_count(lab, "DROP_INSPECT_BLOCKED")

    # The same client port again, to the same server: a new connection.
    rc, code, got_port, err = curl_from(lab, local, base + "/again.html")
    assert (rc, code, got_port) == (0, "200", local), (rc, code, err)
    assert f"request {local} /again.html" in server_log()
    # inspected afresh: the slow path logged the new request as its own flow
    wait_for("the new request in EVE", lambda: [h for h in eve_records(tmp, "http")
                                                 if h["src_port"] == local and h["http"]["url"] == "/again.html"])
    # nothing of the new connection was dropped as the old one's
    assert reason_count(lab, "DROP_INSPECT_BLOCKED") == blocked_before
    if mode == "hold":
        # the blocked request itself never reached the server
        assert not any(x.startswith(f"request {local} /items") for x in server_log())
