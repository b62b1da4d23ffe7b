"""Hot reload against a live connection, the way an operator does it.

One TCP connection through the lab gateway carries a request/response
exchange that the test steps by hand, so "the next packet" is well defined:
ten `microseg policy apply` runs that keep the connection allowed (by one
rule, then another, then both) must not disturb it; the first exchange after
an apply that denies it must not reach the server, and the kernel must count
the revocation.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from appliance.lab import GW_IFACES, SERVER_V4, Lab

pytestmark = pytest.mark.lab

MICROSEG = [sys.executable, "-m", "appliance.cli"]
PORT = 9090

HEAD = """\
groups:
  clients: [10.77.1.0/24, "fd77:1::/64"]
  servers: [10.77.2.0/24, "fd77:2::/64"]
defaults: {ingress: deny, egress: deny}
rules:
"""
BY_PORT = HEAD + f"  - {{name: by-port, from: clients, to: servers, proto: tcp, ports: [{PORT}], action: allow}}\n"
BY_RANGE = HEAD + '  - {name: by-range, from: clients, to: servers, proto: tcp, ports: ["9000-9100"], action: allow}\n'
BOTH = BY_PORT + "  - {name: other, from: clients, to: servers, proto: tcp, ports: [8080], action: allow}\n"
DENY = HEAD + f"  - {{name: closed, from: clients, to: servers, proto: tcp, ports: [{PORT}], action: deny}}\n"

# Server: count every byte it receives and echo it back; print the running
# total after each read so the test can see exactly what reached it.
SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); total = 0
while True:
    b = c.recv(4096)
    if not b:
        break
    total += len(b); print("got", total, flush=True); c.sendall(b)
"""

# Client: one connection for the whole test. Each line on stdin is one
# exchange: send 16 bytes, wait up to 1 s for the echo, print the outcome.
CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.settimeout(1.0)
port = c.getsockname()[1]
print("connected", port, flush=True)
n = 0
for _ in sys.stdin:
    n += 1
    msg = b"%015d\n" % n
    try:
        c.sendall(msg)
        got = b""
        while len(got) < len(msg):
            b = c.recv(len(msg) - len(got))
            if not b:
                raise ConnectionError("closed by peer")
            got += b
        print("ok" if got == msg else "mismatch", n, flush=True)
    except (OSError, ConnectionError) as e:
        print("fail", n, type(e).__name__, flush=True)
"""


def cli(*args, run_dir):
    env = dict(os.environ, MICROSEG_RUN=str(run_dir))
    r = subprocess.run([*MICROSEG, *args], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def revoked(lab, run_dir) -> int:
    """DROP_POLICY_REVOKED packets, as `microseg stats` reports them."""
    rows = json.loads(cli("stats", "--netns", lab.gateway, "--json", run_dir=run_dir))["counters"]
    return sum(r["packets"] for r in rows if r["reason"] == "DROP_POLICY_REVOKED")


def apply(tmp_path, lab, text, run_dir, n):
    f = tmp_path / f"policy-{n}.yaml"
    f.write_text(text)
    return cli("policy", "apply", str(f), "--netns", lab.gateway, run_dir=run_dir)


def line(proc) -> str:
    out = proc.stdout.readline()
    assert out, f"process {proc.args} ended: {proc.stderr.read() if proc.stderr else ''}"
    return out.strip()


def exchange(client) -> str:
    client.stdin.write("x\n")
    client.stdin.flush()
    return line(client)


def test_connection_survives_ten_reloads_and_stops_at_the_denying_one(tmp_path):
    run_dir = tmp_path / "run"
    with Lab() as lab:
        server = client = None
        try:
            cli("up", "--netns", lab.gateway, "--iface", *GW_IFACES, run_dir=run_dir)
            assert "generation 1" in apply(tmp_path, lab, BY_PORT, run_dir, 0)
            server = lab.popen(lab.server, [sys.executable, "-c", SERVER, SERVER_V4, str(PORT)],
                               stdout=subprocess.PIPE, text=True)
            assert line(server) == "listening"
            client = lab.popen(lab.client, [sys.executable, "-c", CLIENT, SERVER_V4, str(PORT)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert line(client).startswith("connected")
            assert exchange(client) == "ok 1"
            assert line(server) == "got 16"

            # Ten reloads that keep the flow allowed, each by a different
            # rule than the last: the connection keeps its session.
            keep = [BY_RANGE, BOTH, BY_PORT] * 4
            for i in range(10):
                out = apply(tmp_path, lab, keep[i], run_dir, i + 1)
                assert f"generation {i + 2}" in out, out
                assert exchange(client) == f"ok {i + 2}"
                assert line(server) == f"got {16 * (i + 2)}"
            revoked_before = revoked(lab, run_dir)

            # The denying reload: the very next segment is dropped, nothing
            # more reaches the server, and the kernel says why.
            assert "generation 12" in apply(tmp_path, lab, DENY, run_dir, 11)
            assert exchange(client) == "fail 12 TimeoutError"
            time.sleep(0.5)   # let retransmissions of segment 12 hit the gateway
            assert exchange(client) == "fail 13 TimeoutError"
            # One revocation: the session is removed with the first drop, and
            # the retransmissions are then new, non-SYN flows the policy denies.
            assert revoked(lab, run_dir) - revoked_before == 1
            server.kill()
            rest = server.stdout.read()
            assert "got" not in rest, rest   # nothing after exchange 11 reached the server
        finally:
            for p in (client, server):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait(5)
            subprocess.run([*MICROSEG, "down", "--netns", lab.gateway, "--iface", *GW_IFACES],
                           capture_output=True, env=dict(os.environ, MICROSEG_RUN=str(run_dir)))
