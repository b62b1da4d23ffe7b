"""`microseg lab demo` / `make demo`: the product in miniature.

Builds the lab, compiles the fast path, attaches it on ingress and egress of
both gateway interfaces, sends real traffic through (curl over IPv4 and
IPv6, ping), prints what the fast path counted, detaches, and removes the
lab. Every step that creates something is undone on the way out, also when
a step fails.
"""
from __future__ import annotations

import sys

from datapath import attach
from datapath.counters import format_counters
from datapath.errors import MicrosegError
from datapath.flows import flow_records, format_flows
from datapath.loader import FastPath

from .lab import GW_IFACES, SERVER_V4, SERVER_V6, HttpServer, Lab


def _step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def _traffic(lab: Lab) -> None:
    checks = [
        ("curl http://%s:8080/ (IPv4)" % SERVER_V4,
         ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", f"http://{SERVER_V4}:8080/"]),
        ("curl http://[%s]:8080/ (IPv6)" % SERVER_V6,
         ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", f"http://[{SERVER_V6}]:8080/"]),
        ("ping -c 3 %s" % SERVER_V4, ["ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER_V4]),
        ("ping -c 3 %s" % SERVER_V6, ["ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER_V6]),
    ]
    for label, argv in checks:
        r = lab.run(lab.client, argv, check=False)
        ok = r.returncode == 0 and (not argv[0] == "curl" or r.stdout.strip() == "200")
        print(f"    {label}: {'ok' if ok else 'FAILED'}"
              + (f" (HTTP {r.stdout.strip()})" if argv[0] == "curl" else ""))
        if not ok:
            raise MicrosegError(f"demo traffic failed: {label}: {r.stderr.strip() or r.stdout.strip()}")


def run_demo() -> int:
    _step("building lab (client -- gateway -- server in network namespaces)")
    with Lab() as lab:
        print(f"    namespaces: {', '.join(lab.namespaces)}")
        _step("compiling the fast path with BCC")
        fp = FastPath()
        try:
            _step(f"attaching on clsact ingress + egress of {', '.join(GW_IFACES)} in {lab.gateway}")
            try:
                for a in attach.attach(fp, list(GW_IFACES), lab.gateway):
                    print(f"    {a.iface} {a.direction.removeprefix('DIR_').lower()}: prog id {a.prog_id}")
                _step("sending traffic from the client through the gateway")
                with HttpServer(lab):
                    _traffic(lab)
                _step("what the fast path counted, by hook and reason")
                print(format_counters(fp.counters()))
                _step("sessions seen")
                print(format_flows(flow_records(fp.table("ms_flows"))))
            finally:
                _step("detaching")
                n = attach.detach(list(GW_IFACES), lab.gateway)
                print(f"    removed {n} filters")
        finally:
            fp.close()
        _step("removing lab")
    _step("demo finished")
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
