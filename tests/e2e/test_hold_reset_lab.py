"""A block in hold mode resets both ends (issue 12, item 5).

`microseg run` in the lab gateway with hold-mode rules; the servers in the
server namespace serve one connection at a time, so a server left holding
a blocked connection would never serve the next client:

* an HTTP server (Python, below) that logs how each connection ended;
* `openssl s_server` without -www (one TLS session at a time).

A blocked request must end the client at once with a reset (curl exit code
56, not its own timeout 28), close the server's connection (it sees a
reset) and leave the server free for the next, legitimate client.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.lab import SERVER_V4, SERVER_V6, Lab
from labrun import running_daemon

pytestmark = pytest.mark.lab

MICROSEG = [sys.executable, "-m", "appliance.cli"]
HTTP_PORT, TLS_PORT = 8090, 8493
# Generous client timeouts: the assertion is on how the client ended (a
# reset), never on how long it took; these only bound a broken run.
CLIENT_TIMEOUT_S = 20
WAIT_S = 15.0   # bound of every wait on a condition below

POLICY = f"""
groups:
  clients: [10.77.1.0/24, "fd77:1::/64"]
  servers: [10.77.2.0/24, "fd77:2::/64"]
defaults: {{ingress: deny, egress: deny}}
rules:
  - {{name: web-hold, from: clients, to: servers, proto: tcp, ports: [{HTTP_PORT}], action: inspect,
     inspect: {{what: [waf, dpi], mode: hold}}}}
  - {{name: tls-hold, from: clients, to: servers, proto: tcp, ports: [{TLS_PORT}], action: inspect,
     inspect: {{what: [dpi], mode: hold}}}}
"""
RULES = """
waf:
  sets: {sqli: block, xss: block, traversal: block, cmdi: block}
domains:
  - {name: blocked, match: ["*.malware.test"], fields: [http_host, tls_sni], action: block}
"""
SQLI = "/items?id=1%27%20UNION%20SELECT%20password%20FROM%20users--"

# One connection at a time (the next accept only after this one ended),
# keep-alive, a fixed answer per request; logs "open P", "request P PATH",
# "closed P eof|reset" (P: the client's port) to the file argv[2].
ONE_AT_A_TIME_SERVER = r"""
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
                log.write(f"request {port} {head.split(b' ')[1].decode(errors='replace')}\n")
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    except ConnectionResetError:
        how = "reset"
    c.close()
    log.write(f"closed {port} {how}\n")
"""


def wait_for(what, cond, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def hold_lab(tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("hold-reset-lab")
    (tmp / "policy.yaml").write_text(POLICY)
    (tmp / "rules.yaml").write_text(RULES)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=lab",
                    "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")], check=True, capture_output=True)
    with Lab() as lab:
        procs = []
        try:
            http = lab.popen(lab.server, [sys.executable, "-c", ONE_AT_A_TIME_SERVER, str(HTTP_PORT),
                                          str(tmp / "http.log")], stdout=subprocess.PIPE, text=True)
            procs.append(http)
            assert http.stdout.readline().strip() == "ready"
            # no -www: s_server serves one session at a time, echoing, and
            # accepts the next only when that one has ended
            procs.append(lab.popen(lab.server, ["openssl", "s_server", "-accept", f"{SERVER_V4}:{TLS_PORT}",
                                                "-cert", str(tmp / "cert.pem"), "-key", str(tmp / "key.pem")],
                                   stdin=subprocess.PIPE, stdout=open(tmp / "s_server.log", "w"),
                                   stderr=subprocess.STDOUT))
            wait_for(f"s_server on {TLS_PORT}", lambda: lab.run(lab.server, ["ss", "-Hltn", f"sport = :{TLS_PORT}"],
                                                                check=False).stdout.strip())
            with running_daemon(lab, tmp):
                yield lab, tmp
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(5)


def http_log(tmp: Path) -> list[str]:
    return (tmp / "http.log").read_text().splitlines() if (tmp / "http.log").exists() else []


def eve_records(tmp: Path, event_type: str) -> list[dict]:
    """The EVE file so far (the sink writes from its own thread: callers
    wait for what they look for)."""
    path = tmp / "eve.json"
    lines = path.read_text().splitlines() if path.exists() else []
    out = []
    for x in lines:
        try:
            out.append(json.loads(x))
        except ValueError:
            continue            # a line being written
    return [r for r in out if r["event_type"] == event_type]


def established(lab, port: int) -> str:
    """The server namespace's established connections on ``port``."""
    return lab.run(lab.server, ["ss", "-Htn", "state", "established", f"( sport = :{port} )"]).stdout.strip()


def curl(lab, *urls: str):
    """curl in the client namespace; returns (exit code, local port of its
    last connection, stderr)."""
    r = lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{local_port}\n", "--max-time",
                             str(CLIENT_TIMEOUT_S), *urls], check=False, timeout=CLIENT_TIMEOUT_S * len(urls) + 10)
    ports = [p for p in r.stdout.split() if p.isdigit() and p != "0"]
    return r.returncode, int(ports[-1]) if ports else None, r.stderr


def reason_count(lab, reason: str) -> int:
    st = subprocess.run([*MICROSEG, "stats", "--netns", lab.gateway, "--json"], capture_output=True, text=True,
                        check=True)
    return {x["reason"]: x["packets"] for x in json.loads(st.stdout)["counters"]}.get(reason, 0)


def base(v6: bool) -> str:
    return f"http://[{SERVER_V6}]:{HTTP_PORT}" if v6 else f"http://{SERVER_V4}:{HTTP_PORT}"


def assert_served_next(lab, tmp, v6):
    """A legitimate client right after: served by the one-at-a-time server."""
    rc, port, err = curl(lab, base(v6) + "/next.html")
    assert rc == 0, (rc, err)
    assert f"request {port} /next.html" in http_log(tmp)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_blocked_request_resets_client_and_server(hold_lab, v6):
    lab, tmp = hold_lab
    sent_before = reason_count(lab, "PASS_SLOWPATH_SENT")
    rc, port, err = curl(lab, base(v6) + SQLI)
    # 56: "Recv failure: Connection reset by peer" -- not 28, its timeout
    assert rc == 56, (rc, err)
    assert "reset" in err.lower(), err
    assert port, "curl reported no local port"
    # both resets went out through the gateway's own filters
    assert reason_count(lab, "PASS_SLOWPATH_SENT") >= sent_before + 2
    # the server's side of that connection was reset, not left open ...
    wait_for("the server to see the reset", lambda: f"closed {port} reset" in http_log(tmp))
    assert not any(x.startswith(f"request {port} ") for x in http_log(tmp))   # ... and never got the request
    wait_for("no established connection on the server", lambda: not established(lab, HTTP_PORT))
    assert_served_next(lab, tmp, v6)
    mine = wait_for("the alert in EVE", lambda: [a for a in eve_records(tmp, "alert") if a["src_port"] == port])
    assert mine[0]["verdict"]["action"] == "drop" and mine[0]["alert"]["category"] == "sqli"


# In the client namespace: a client whose request is blocked, then the same
# request sent again on the same 5-tuple (a raw copy of the captured
# segment, as an attacker or a lost reset would have it). Prints how the
# connection ended and the client's port.
RESEND_CLIENT = r"""
import socket, sys, threading, time
from scapy.all import AsyncSniffer, IP, TCP, Raw, send
dst, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seen, ready = [], threading.Event()
sn = AsyncSniffer(iface="eth0", store=False, started_callback=ready.set,
                  lfilter=lambda p: TCP in p and p[TCP].dport == port and Raw in p, prn=seen.append)
sn.start()
assert ready.wait(10)
c = socket.create_connection((dst, port), timeout=30)
c.sendall(f"GET {path} HTTP/1.1\r\nHost: lab\r\n\r\n".encode())
try:
    how = "eof" if not c.recv(100) else "data"
except ConnectionResetError:
    how = "reset"
except socket.timeout:
    how = "timeout"
sport = c.getsockname()[1]
deadline = time.monotonic() + 10
while not seen and time.monotonic() < deadline:
    time.sleep(0.01)
sn.stop()
seg = seen[0]
send(IP(src=seg[IP].src, dst=dst) / TCP(sport=sport, dport=port, flags="PA", seq=seg[TCP].seq, ack=seg[TCP].ack)
     / Raw(bytes(seg[Raw].load)), verbose=0)
print(how, sport)
"""


def test_blocked_flow_stays_blocked_after_the_resets(hold_lab):
    """The resets end both sockets; the kernel's session still drops
    whatever else comes on that 5-tuple (the block verdict is merged on
    its next packet), so a resent request never reaches the server."""
    lab, tmp = hold_lab
    before = reason_count(lab, "DROP_INSPECT_BLOCKED")
    r = lab.run(lab.client, [sys.executable, "-c", RESEND_CLIENT, SERVER_V4, str(HTTP_PORT), SQLI],
                timeout=CLIENT_TIMEOUT_S + 30)
    how, port = r.stdout.split()
    assert how == "reset", r.stdout
    wait_for("the resent segment to be dropped as blocked",
             lambda: reason_count(lab, "DROP_INSPECT_BLOCKED") > before)
    wait_for("the server to see the reset", lambda: f"closed {port} reset" in http_log(tmp))
    assert not any(x.startswith(f"request {port} ") for x in http_log(tmp))
    assert_served_next(lab, tmp, False)


def s_client(lab, sni: str):
    # stdin at EOF: s_client ends once the handshake is done (or failed)
    return lab.run(lab.client, ["timeout", str(CLIENT_TIMEOUT_S), "openssl", "s_client", "-connect",
                                f"{SERVER_V4}:{TLS_PORT}", "-servername", sni, "-brief"],
                   check=False, timeout=CLIENT_TIMEOUT_S + 10, stdin=subprocess.DEVNULL)


def test_blocked_tls_client_hello_does_not_wedge_a_one_session_server(hold_lab):
    lab, tmp = hold_lab
    bad = s_client(lab, "c2.malware.test")
    assert bad.returncode not in (0, 124), (bad.returncode, bad.stderr)     # 124: timeout(1) ended it
    assert "CONNECTION ESTABLISHED" not in bad.stderr
    assert "reset by peer" in bad.stderr or "errno=104" in bad.stderr, bad.stderr
    wait_for("s_server to drop the blocked session", lambda: not established(lab, TLS_PORT))
    good = s_client(lab, "www.example.org")
    assert good.returncode != 124 and "CONNECTION ESTABLISHED" in good.stderr, (good.returncode, good.stderr)
