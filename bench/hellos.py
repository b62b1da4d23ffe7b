"""What a TLS hello and a DNS detection probe cost in user space, CPU time
per call, on the corpus's own inputs (../shared/corpus/pcaps):

* ``client_hello``: protocols/tls.py ``_client_hello`` (decoding, JA3 and
  its MD5, JA4, the event) on every ClientHello body the parsers meet in
  the corpus (TLS records and QUIC CRYPTO frames).
* ``client_hello record``: the same hellos through ``TlsParser`` in one TLS
  record each (record and handshake layers included).
* ``server_hello``: ``_server_hello`` (JA3S included).
* ``dns probe (dns)`` / ``(other)``: ``dns.probe`` on the first payloads
  detection handed it, split by whether it rated them CERTAIN.
* ``dns probe+parser``: a DNS flow's first message probed, then given to a
  new ``DnsParser``, as detection does.

The inputs are collected with this tree's parsers (analyze_capture over the
corpus, inspecting everything). ``--baseline TREE`` times another source
tree (e.g. a ``git archive`` of the commit before a change) in the same
rounds: one child process per tree a round, order rotated, medians.

    .venv/bin/python bench/hellos.py [--rounds N] [--repeat N] [--baseline TREE]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus" / "pcaps"
DEFAULT_ROUNDS = 5
DEFAULT_REPEAT = 40
# The script's own directory would shadow the tree's packages (bench/protocols.py).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def collect(path: Path) -> None:
    """Every hello body and DNS probe input the corpus gives, pickled."""
    from protocols import dns, tls
    from slowpath.offline import analyze_capture
    clients, servers, probes = [], [], []
    real_c, real_s, real_p = tls._client_hello, tls._server_hello, dns.probe

    def client(body, direction, record_version, retry, transport="t"):
        clients.append((bytes(body), int(direction), record_version, retry, transport))
        return real_c(body, direction, record_version, retry, transport)

    def server(body, direction):
        servers.append((bytes(body), int(direction)))
        return real_s(body, direction)

    def probe(data, direction):
        probes.append((bytes(data), int(direction)))
        return real_p(data, direction)

    tls._client_hello, tls._server_hello = client, server
    for plugin in __import__("protocols.registry", fromlist=["x"]).default_plugins():
        if plugin.name == "dns":
            object.__setattr__(plugin, "probe", probe)
    for pcap in sorted(CORPUS.glob("*")):
        analyze_capture(pcap, identify_only=False)
    path.write_bytes(pickle.dumps((clients, servers, probes)))


def child(path: Path, repeat: int) -> None:
    from protocols import dns, tls
    from protocols.api import CERTAIN, Direction
    clients, servers, probes = pickle.loads(path.read_bytes())
    clients = [(b, Direction(d), rv, r, t) for b, d, rv, r, t in clients]
    servers = [(b, Direction(d)) for b, d in servers]
    probes = [(b, Direction(d)) for b, d in probes]
    records = [b"\x16\x03\x01" + (len(b) + 4).to_bytes(2, "big") + b"\x01"
               + len(b).to_bytes(3, "big") + b for b, _, _, _, t in clients if t == "t"]
    dns_in = [(b, d) for b, d in probes if dns.probe(b, d) == CERTAIN]
    other = [(b, d) for b, d in probes if dns.probe(b, d) != CERTAIN]
    # Each probe's own framing: CERTAIN as one datagram means UDP.
    flows = [(b, d, "udp" if dns._rate(b, True) == CERTAIN else "tcp") for b, d in dns_in]

    def per_call(fn, n):
        t = time.process_time()
        for _ in range(repeat):
            fn()
        return (time.process_time() - t) / repeat / max(n, 1) * 1e6

    def ch():
        for a in clients:
            tls._client_hello(*a)

    def rec():
        for r in records:
            tls.TlsParser().receive_data(r, Direction.TO_SERVER)

    def sh():
        for a in servers:
            tls._server_hello(*a)

    def pd():
        for a in dns_in:
            dns.probe(*a)

    def po():
        for a in other:
            dns.probe(*a)

    def pp():
        for b, d, t in flows:
            dns.probe(b, d)
            dns.DnsParser(t).receive_data(b, d)

    print(json.dumps({
        "client_hello": per_call(ch, len(clients)),
        "client_hello record": per_call(rec, len(records)),
        "server_hello": per_call(sh, len(servers)),
        "dns probe (dns)": per_call(pd, len(dns_in)),
        "dns probe (other)": per_call(po, len(other)),
        "dns probe+parser": per_call(pp, len(flows)),
        "counts": [len(clients), len(records), len(servers), len(dns_in), len(other)],
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    ap.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    ap.add_argument("--baseline", type=Path)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:                       # the tree's modules come from PYTHONPATH
        child(args.child, args.repeat)
        return
    sys.path.insert(0, str(ROOT))
    trees = {"after": ROOT}
    if args.baseline:
        trees = {"before": args.baseline.resolve(), **trees}
    results: dict[str, list[dict]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.pickle"
        collect(inputs)
        names = list(trees)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                env = {**os.environ, "PYTHONPATH": str(trees[name])}
                out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                                      str(inputs), "--repeat", str(args.repeat)],
                                     cwd=trees[name], env=env, capture_output=True, text=True,
                                     check=True, timeout=600).stdout
                results[name].append(json.loads(out))
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
                f"{n} ch {results[n][-1]['client_hello']:.1f}" for n in order), flush=True)
    first = results[names[0]][0]
    print(f"inputs (ClientHellos, in records, ServerHellos, DNS probes CERTAIN, others): "
          f"{first['counts']}")
    print("| µs per call (median of %d rounds) | %s |%s" % (
        args.rounds, " | ".join(names), " ratio |" if len(names) == 2 else ""))
    print("|---|" + "---:|" * (len(names) + (len(names) == 2)))
    for key in first:
        if key == "counts":
            continue
        meds = [statistics.median(x[key] for x in results[n]) for n in names]
        ratio = f" {meds[0] / meds[1]:.2f}× |" if len(names) == 2 else ""
        print(f"| {key} | " + " | ".join(f"{m:.2f}" for m in meds) + " |" + ratio)


if __name__ == "__main__":
    main()
