"""`microseg lab demo` / `make demo`: the product in miniature.

Builds the lab, writes a policy (HTTP from the clients inspected in hold
mode, ping allowed, everything else denied) and rules (SQL injection,
card numbers, a blocked host name), starts `microseg run` in the lab's
gateway (the live daemon: fast path attached on both interfaces, slow-path
workers, EVE to a file), sends real traffic through it (clean requests
over IPv4 and IPv6, ping, then a SQL injection, a card number posted, a
request for a blocked name), and shows what happened: the kernel's
counters, the sessions with their rules and inspection verdicts, the
alerts, and where the EVE went. Everything it creates is undone on the way
out, also when a step fails: the daemon stopped, the programs detached,
the lab and its files removed (the EVE file too, unless ``--eve PATH``
names where to keep it).
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from datapath.errors import MicrosegError

from .lab import GW_IFACES, SERVER_V4, SERVER_V6, HttpServer, Lab

MICROSEG = [sys.executable, "-m", "appliance.cli"]
PORT = 8080
# Bounds of the demo's waits: the daemon's start (it compiles the fast
# path, seconds on a busy machine), a client request (a held request the
# slow path blocks ends in a reset, long before this), the alerts reaching
# the EVE file (a worker writes them within a report period), the stop
# (workers drain their rings and log their flows first).
START_S = 120.0
CLIENT_S = 10
EVE_WAIT_S = 20.0
STOP_S = 30.0

POLICY = f"""# the demo's policy: HTTP inspected in hold mode (a request reaches the
# server only once the slow path let it go), ping allowed, the rest denied
groups:
  clients: [10.77.1.0/24, "fd77:1::/64"]
  servers: [10.77.2.0/24, "fd77:2::/64"]
defaults: {{ingress: deny, egress: deny}}
rules:
  - {{name: web, from: clients, to: servers, proto: tcp, ports: [{PORT}], action: inspect,
     inspect: {{what: [waf, dlp, dpi], mode: hold}}}}
  - {{name: ping, from: clients, to: servers, proto: icmp, action: allow}}     # ICMP and ICMPv6
"""
RULES = """waf:
  sets: {sqli: block}
dlp:
  - {name: no-cards, detectors: [credit_card], direction: both, action: block}
domains:
  - {name: blocked-names, match: [evil.example], fields: [http_host, tls_sni, dns_query], action: block}
"""
SQLI = "/items?id=1%27%20UNION%20SELECT%20password%20FROM%20users--"
CARD = "4111 1111 1111 1111"          # the card networks' published test number (passes Luhn)


def _step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def _curl(lab: Lab, url: str, *extra: str) -> tuple[bool, str]:
    """(answered 200, what happened) of one request from the client."""
    r = lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(CLIENT_S),
                             *extra, url], check=False, timeout=CLIENT_S + 10)
    if r.returncode == 0:
        return r.stdout.strip() == "200", f"HTTP {r.stdout.strip()}"
    return False, (r.stderr.strip().splitlines() or [f"curl exit {r.returncode}"])[-1].removeprefix("curl: ")


def _allowed(lab: Lab) -> None:
    checks = [(f"curl http://{SERVER_V4}:{PORT}/ (IPv4)", f"http://{SERVER_V4}:{PORT}/"),
              (f"curl http://[{SERVER_V6}]:{PORT}/ (IPv6)", f"http://[{SERVER_V6}]:{PORT}/")]
    for label, url in checks:
        ok, what = _curl(lab, url)
        print(f"    {label}: {'ok' if ok else 'FAILED'} ({what})")
        if not ok:
            raise MicrosegError(f"demo traffic failed: {label}: {what}")
    for addr in (SERVER_V4, SERVER_V6):
        r = lab.run(lab.client, ["ping", "-c", "3", "-i", "0.2", "-W", "2", addr], check=False)
        print(f"    ping -c 3 {addr}: {'ok' if r.returncode == 0 else 'FAILED'}")
        if r.returncode != 0:
            raise MicrosegError(f"demo traffic failed: ping {addr}: {r.stderr.strip() or r.stdout.strip()}")


# (what, port, curl arguments): each must be stopped by the slow path; the
# client's port names its flow in the EVE records.
ATTACKS = [
    ("a SQL injection", 45001, [f"http://{SERVER_V4}:{PORT}{SQLI}"]),
    ("a card number posted", 45002, ["--data", f"card={CARD}", f"http://{SERVER_V4}:{PORT}/checkout"]),
    ("a blocked name (Host: evil.example)", 45003, ["-H", "Host: evil.example", f"http://{SERVER_V4}:{PORT}/"]),
]


def _attacks(lab: Lab) -> None:
    for label, port, argv in ATTACKS:
        ok, what = _curl(lab, argv[-1], "--local-port", str(port), *argv[:-1])
        print(f"    {label}: {'REACHED THE SERVER' if ok else 'stopped'} ({what})")
        if ok:
            raise MicrosegError(f"demo: {label} was not stopped")


def _eve(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue            # a line being written
    return out


def _alerts(eve_path: Path) -> list[dict]:
    """The alerts of the attacks' flows, once each has one (bounded wait)."""
    want = {port for _, port, _ in ATTACKS}
    deadline = time.monotonic() + EVE_WAIT_S
    while True:
        alerts = [r for r in _eve(eve_path) if r.get("event_type") == "alert" and r.get("src_port") in want]
        if {r["src_port"] for r in alerts} >= want or time.monotonic() >= deadline:
            return alerts
        time.sleep(0.2)


def _print_alerts(alerts: list[dict]) -> None:
    labels = {port: label for label, port, _ in ATTACKS}
    for r in sorted(alerts, key=lambda r: r["src_port"]):
        a = r.get("alert", {})
        print(f"    {labels[r['src_port']]}: {a.get('action', '?')} by signature {a.get('signature_id', '?')} "
              f"\"{a.get('signature', '')}\" ({a.get('category', '')})")
    missing = {p for _, p, _ in ATTACKS} - {r["src_port"] for r in alerts}
    for p in sorted(missing):
        print(f"    {labels[p]}: no alert within {EVE_WAIT_S:g} s")
    if missing:
        raise MicrosegError("demo: an attack was stopped without an alert in the EVE log")


def _cli(*args: str) -> str:
    r = subprocess.run([*MICROSEG, *args], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise MicrosegError(f"microseg {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.rstrip()


def _start(lab: Lab, tmp: Path, log_path: Path) -> subprocess.Popen:
    with open(log_path, "w") as log:
        run = subprocess.Popen([*MICROSEG, "run", "--config", str(tmp / "run.yaml")], stdout=subprocess.PIPE,
                               stderr=log, text=True)
    # The daemon's one stdout line, or EOF when it ends; bounded by START_S.
    ready, _, _ = select.select([run.stdout], [], [], START_S)
    line = run.stdout.readline() if ready else ""
    if "microseg running" not in line:
        _stop(run)
        tail = "\n".join(log_path.read_text().splitlines()[-10:])
        raise MicrosegError(f"demo: `microseg run` did not start:\n{tail}")
    return run


def _stop(run: subprocess.Popen) -> None:
    if run.poll() is None:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(STOP_S)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait(5)
    if run.stdout:
        run.stdout.close()


def run_demo(eve: str | None = None) -> int:
    """``eve``: where to write the EVE log and keep it (default: a file in
    the demo's own temporary directory, removed at the end)."""
    tmp = Path(tempfile.mkdtemp(prefix="microseg-demo-"))
    eve_path = Path(os.path.abspath(eve)) if eve else tmp / "eve.json"
    try:
        _step("building lab (client -- gateway -- server in network namespaces)")
        with Lab() as lab:
            print(f"    namespaces: {', '.join(lab.namespaces)}")
            print(f"    files (policy, rules, run configuration, daemon log): {tmp}")
            (tmp / "policy.yaml").write_text(POLICY)
            (tmp / "rules.yaml").write_text(RULES)
            (tmp / "run.yaml").write_text(json.dumps({
                "netns": lab.gateway, "interfaces": list(GW_IFACES), "policy": str(tmp / "policy.yaml"),
                "rules": str(tmp / "rules.yaml"), "eve": {"file": {"path": str(eve_path)}},
                "slowpath": {"workers": 2}, "stats_interval_s": 3600}))
            _step(f"starting `microseg run` in {lab.gateway} (compiles the fast path, attaches it on clsact "
                  f"ingress + egress of {', '.join(GW_IFACES)}, forks 2 slow-path workers)")
            print("    policy: HTTP to port 8080 inspected (waf, dlp, dpi; hold mode), ping allowed, the rest "
                  "denied\n    rules: SQL injection blocked, card numbers blocked, evil.example blocked")
            run = _start(lab, tmp, tmp / "run.log")
            try:
                with HttpServer(lab, PORT):
                    _step("clean traffic from the client through the gateway")
                    _allowed(lab)
                    _step("traffic the slow path must stop")
                    _attacks(lab)
                    _step("alerts in the EVE log")
                    _print_alerts(_alerts(eve_path))
                _step("what the fast path counted, by hook and reason (microseg stats)")
                print(_cli("stats", "--netns", lab.gateway))
                _step("sessions, with their rule and inspection verdict (microseg sessions)")
                print(_cli("sessions", "--netns", lab.gateway))
            finally:
                _step("stopping `microseg run` and detaching")
                _stop(run)
                r = subprocess.run([*MICROSEG, "down", "--netns", lab.gateway, "--iface", *GW_IFACES],
                                   capture_output=True, text=True, timeout=120)
                for line in (r.stdout.strip() or r.stderr.strip()).splitlines()[-1:]:
                    print(f"    {line}")
            records = _eve(eve_path)
            kinds: dict[str, int] = {}
            for r in records:
                kinds[r.get("event_type", "?")] = kinds.get(r.get("event_type", "?"), 0) + 1
            _step(f"EVE: {len(records)} records went to {eve_path} ("
                  + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")"
                  + ("" if eve else "; removed with the demo's files (`microseg lab demo --eve PATH` keeps it)"))
            _step("removing lab")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _step("demo finished")
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
