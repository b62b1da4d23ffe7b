"""The lifecycle of `microseg run` and its neighbours (issue 12, items 2-4).

* A restart (SIGTERM, then start) under traffic: the programs stay attached
  while no daemon runs, so 50 live connections keep echoing through the gap
  and the new daemon's atomic replace, and a denied port stays denied
  throughout (probed during the gap).
* One owner per namespace: a second `run` refuses in one line naming the
  owner; `up` and `policy apply` of another file refuse in one line saying
  how; `policy apply` of the daemon's own file goes through its reload.
* The daemon notices its programs replaced by someone else, says so and
  exits non-zero.
* Nothing left behind by a stop and `down` but the applied policy record.
* `ip netns exec GW microseg up ...` pins in the system's bpffs: traffic
  passes after the command exits.

Every run directory is the test's own (MICROSEG_RUN), so
what is left behind is read from it alone.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.lab import GW_IFACES, SERVER_V4, Lab
from datapath import attach, bpfsys, pins, probes
from datapath.enums import Direction

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
MICROSEG = [sys.executable, "-m", "appliance.cli"]
ECHO_PORT, DENIED_PORT = 7007, 7008
CONNECTIONS = 50
HEARTBEAT_S = 1.0
METRICS_PORT = 19478          # inside the lab gateway's namespace
WAIT_S = 120.0                # bound of every wait on a condition (a daemon's start compiles)
GAP_PROBES = 3                # connection attempts to the denied port while no daemon runs

POLICY = f"""
groups:
  clients: [10.77.1.0/24]
  servers: [10.77.2.0/24]
defaults: {{ingress: deny, egress: deny}}
rules:
  - {{name: echo, from: clients, to: servers, proto: tcp, ports: [{ECHO_PORT}], action: inspect,
     inspect: {{what: [dpi], mode: async}}}}
"""
OPEN_DENIED = POLICY + f"""  - {{name: was-denied, from: clients, to: servers, proto: tcp, ports: [{DENIED_PORT}], action: allow}}
"""

# Echo server on both ports (the denied one must never see a connection).
SERVER = r"""
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port)); s.listen(512)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
def echo(c):
    while True:
        d = c.recv(65536)
        if not d:
            return
        c.sendall(d)
for p in sys.argv[2:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# N connections, each sending 16 bytes per round and reading them back
# (a lost connection: an error or no echo within the timeout); writes the
# number of finished rounds to argv[4] after each round; stops when stdin
# closes; prints {"rounds", "lost", "errors"}.
CLIENT = r"""
import json, os, select, socket, sys, time
host, port, n, progress = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
conns = []
for i in range(n):
    c = socket.create_connection((host, port), timeout=5)
    c.settimeout(30)
    conns.append(c)
print("connected", flush=True)
alive, errors, rounds = set(range(n)), [], 0
while alive:
    for i in sorted(alive):
        msg = b"%06d:%08d\n" % (i, rounds)
        try:
            conns[i].sendall(msg)
            got = b""
            while len(got) < len(msg):
                d = conns[i].recv(len(msg) - len(got))
                if not d:
                    raise ConnectionError("closed by the peer")
                got += d
            if got != msg:
                raise ValueError(f"echo {got!r} != {msg!r}")
        except Exception as e:
            alive.discard(i)
            errors.append(f"conn {i} round {rounds}: {type(e).__name__}: {e}")
    rounds += 1
    with open(progress + ".tmp", "w") as f:
        f.write(str(rounds))
    os.replace(progress + ".tmp", progress)
    if select.select([sys.stdin], [], [], 0.02)[0] and not sys.stdin.read(1):
        break
print(json.dumps({"rounds": rounds, "lost": n - len(alive), "errors": errors[:5]}), flush=True)
"""


def env_for(run_dir: Path) -> dict:
    return dict(os.environ, MICROSEG_RUN=str(run_dir),
                PYTHONPATH=str(REPO))


def wait_for(cond, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Run:
    """One `microseg run` in the lab gateway."""

    def __init__(self, lab: Lab, tmp: Path, name: str, *extra: str, config: str = "run.yaml"):
        self.lab, self.tmp, self.log = lab, tmp, tmp / f"{name}.log"
        self.proc = subprocess.Popen([*MICROSEG, "run", "--config", str(tmp / config), *extra],
                                     stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True,
                                     env=env_for(tmp / "run"), cwd=REPO)

    def started(self) -> "Run":
        line = self.proc.stdout.readline()
        assert "microseg running" in line, self.log.read_text()
        return self

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(60)


def cli(tmp: Path, *args, check=True, prefix=()) -> subprocess.CompletedProcess:
    r = subprocess.run([*prefix, *MICROSEG, *args], capture_output=True, text=True, timeout=300,
                       env=env_for(tmp / "run"), cwd=REPO)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def connects(lab: Lab, port: int) -> bool:
    r = lab.run(lab.client, [sys.executable, "-c",
                             f"import socket; socket.create_connection(('{SERVER_V4}', {port}), timeout=2)"],
                check=False)
    return r.returncode == 0


@pytest.fixture(scope="module")
def lab_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run-lifecycle")
    (tmp / "run").mkdir()
    (tmp / "policy.yaml").write_text(POLICY)
    with Lab() as lab:
        run_cfg = {
            "netns": lab.gateway, "interfaces": list(GW_IFACES), "policy": str(tmp / "policy.yaml"),
            "datapath": {"heartbeat_timeout_s": HEARTBEAT_S, "failure_actions": {"slowpath_down": "pass"}},
            "eve": {"file": {"path": str(tmp / "eve.json")}}, "metrics": {"listen": f"127.0.0.1:{METRICS_PORT}"},
            "stats_interval_s": 60}
        (tmp / "run.yaml").write_text(json.dumps(run_cfg))
        # The same with clsact forced (the default is tcx where the kernel has it).
        run_cfg["datapath"] = {**run_cfg["datapath"], "attach": {"mode": "clsact"}}
        (tmp / "run-clsact.yaml").write_text(json.dumps(run_cfg))
        server = lab.popen(lab.server, [sys.executable, "-c", SERVER, SERVER_V4, str(ECHO_PORT), str(DENIED_PORT)],
                           stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            yield lab, tmp
        finally:
            server.kill()
            server.wait(5)
            cli(tmp, "down", "--netns", lab.gateway, "--iface", *GW_IFACES, check=False)


def test_restart_under_traffic_loses_no_connection_and_the_denied_port_stays_denied(lab_env):
    lab, tmp = lab_env
    first = Run(lab, tmp, "first").started()
    progress = tmp / "progress"
    client = lab.popen(lab.client, [sys.executable, "-c", CLIENT, SERVER_V4, str(ECHO_PORT), str(CONNECTIONS),
                                    str(progress)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    second = None
    try:
        assert client.stdout.readline().strip() == "connected"
        wait_for(lambda: progress.exists() and int(progress.read_text()) >= 5, "rounds before the restart")
        assert not connects(lab, DENIED_PORT)
        assert first.stop() == 0, first.log.read_text()
        # The gap: no daemon. Traffic goes on, the denied port stays denied.
        at_stop = int(progress.read_text())
        gap_denied = [connects(lab, DENIED_PORT) for _ in range(GAP_PROBES)]
        wait_for(lambda: int(progress.read_text()) >= at_stop + 5, "rounds while no daemon runs")
        attached_in_gap = attach.attached(lab.gateway)
        second = Run(lab, tmp, "second")
        # while the second daemon compiles and replaces the programs
        during_start = []
        deadline = time.monotonic() + WAIT_S
        while second.proc.poll() is None and "running (pid" not in second.log.read_text():
            assert time.monotonic() < deadline, second.log.read_text()
            during_start.append(connects(lab, DENIED_PORT))
        second.started()
        at_start = int(progress.read_text())
        wait_for(lambda: int(progress.read_text()) >= at_start + 5, "rounds after the restart")
        client.stdin.close()
        res = json.loads(client.stdout.readline())
        print(f"\n  restart: {res['rounds']} rounds on {CONNECTIONS} connections, {res['lost']} lost; "
              f"denied port reached {sum(gap_denied + during_start)} of "
              f"{len(gap_denied) + len(during_start)} probes; {len(attached_in_gap)} programs attached "
              f"while no daemon ran")
        assert len(attached_in_gap) == 2 * len(GW_IFACES), attached_in_gap
        assert res["lost"] == 0, res["errors"]
        assert not any(gap_denied) and not any(during_start)
        log = second.log.read_text()
        assert "state: reused" in log, log
        assert not connects(lab, DENIED_PORT)
    finally:
        if client.poll() is None:
            client.kill()
        client.wait(10)
        if second is not None:
            second.stop()
        first.stop()


def test_one_owner_per_namespace(lab_env):
    lab, tmp = lab_env
    d = Run(lab, tmp, "owner").started()
    try:
        # a second run: one line naming the owner, nothing changed
        before = attach.attached(lab.gateway)
        r = cli(tmp, "run", "--config", str(tmp / "run.yaml"), check=False)
        assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
        assert f"microseg run (pid {d.proc.pid}" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert attach.attached(lab.gateway) == before and d.proc.poll() is None
        # up: refused in one line saying how
        r = cli(tmp, "up", "--netns", lab.gateway, "--iface", *GW_IFACES, check=False)
        assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
        assert f"pid {d.proc.pid}" in r.stderr and "restart it" in r.stderr, r.stderr
        assert attach.attached(lab.gateway) == before
        # deploy and down: refused in one line, nothing changed
        for args in (("deploy", "--soak", "1"), ("down",)):
            r = cli(tmp, *args, "--netns", lab.gateway, "--iface", *GW_IFACES, check=False)
            assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
            assert f"microseg run (pid {d.proc.pid}" in r.stderr, r.stderr
        assert attach.attached(lab.gateway) == before
        # policy apply of another file: refused, naming the daemon's file
        (tmp / "other.yaml").write_text(OPEN_DENIED)
        r = cli(tmp, "policy", "apply", str(tmp / "other.yaml"), "--netns", lab.gateway, check=False)
        assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
        assert str(tmp / "policy.yaml") in r.stderr and not connects(lab, DENIED_PORT)
        # policy apply of the daemon's own file: through its reload
        (tmp / "policy.yaml").write_text(OPEN_DENIED)
        try:
            r = cli(tmp, "policy", "apply", str(tmp / "policy.yaml"), "--netns", lab.gateway)
            assert f"through microseg run (pid {d.proc.pid}" in r.stdout, r.stdout
            assert connects(lab, DENIED_PORT)
        finally:
            (tmp / "policy.yaml").write_text(POLICY)
        cli(tmp, "policy", "apply", str(tmp / "policy.yaml"), "--netns", lab.gateway)
        assert not connects(lab, DENIED_PORT)
        # the takeover metric is there from the start, at 0
        text = lab.run(lab.gateway, ["curl", "-s", f"http://127.0.0.1:{METRICS_PORT}/metrics"]).stdout
        assert 'microseg_ownership_lost_total{what="programs"} 0.0' in text
        # the EVE sinks' counters (the file sink of run.yaml): nothing lost
        assert 'microseg_eve_records_total{outcome="dropped",sink="file"} 0.0' in text
        assert d.proc.poll() is None
    finally:
        d.stop()


def _detach_link(lab: Lab, iface: str, direction: Direction) -> None:
    """Someone else's hand on a tcx hook: our pinned link detached (the pin stays, defunct)."""
    [(_, i, _, _)] = [(a.iface, a.ifindex, a.direction, a.mode) for a in attach.attached(lab.gateway)
                      if a.iface == iface and a.direction == direction.name]
    fd = bpfsys.obj_get(str(attach._link_pin(lab.gateway, i, direction)))
    try:
        bpfsys.link_detach(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", ["clsact", "tcx"])
def test_the_daemon_notices_its_programs_replaced_and_exits_non_zero(lab_env, mode):
    lab, tmp = lab_env
    if mode == "tcx" and not probes.tcx()[0]:
        pytest.skip("the kernel has no tcx hooks (6.6+)")
    d = Run(lab, tmp, f"replaced-{mode}", config="run-clsact.yaml" if mode == "clsact" else "run.yaml").started()
    try:
        assert {a.mode for a in attach.attached(lab.gateway)} == {mode}
        # someone else's hand on the namespace: our ingress hook on gw-c removed
        if mode == "clsact":
            lab.run(lab.gateway, ["tc", "filter", "del", "dev", "gw-c", "ingress", "prio", str(attach.FILTER_PRIO)])
        else:
            _detach_link(lab, "gw-c", Direction.DIR_INGRESS)
        rc = d.proc.wait(WAIT_S)
        log = d.log.read_text()
        assert rc == 4, log
        lines = [x for x in log.splitlines() if "ownership lost" in x]
        assert len(lines) == 1 and "ingress program on gw-c is gone" in lines[0], log
    finally:
        d.stop()


def test_the_daemon_notices_its_heartbeat_map_unpinned_and_exits_non_zero(lab_env):
    """Someone re-made the pinned state under it (an old `up --fresh-state`,
    a hand in bpffs): the heartbeat it beats is no longer the one the next
    build would read."""
    from datapath import state
    lab, tmp = lab_env
    d = Run(lab, tmp, "unpinned").started()
    try:
        (state.state_dir(lab.gateway) / "ms_slowpath").unlink()
        rc = d.proc.wait(WAIT_S)
        log = d.log.read_text()
        assert rc == 4, log
        lines = [x for x in log.splitlines() if "ownership lost" in x]
        assert len(lines) == 1 and "ms_slowpath was removed" in lines[0], log
    finally:
        d.stop()


def test_stop_and_down_leave_nothing_behind(lab_env):
    lab, tmp = lab_env
    d = Run(lab, tmp, "litter").started()
    assert (tmp / "run" / f"{lab.gateway}.lock").exists()
    assert d.stop() == 0
    # stopped: the programs and the pinned state stay, the lock file does not
    assert not (tmp / "run" / f"{lab.gateway}.lock").exists()
    assert len(attach.attached(lab.gateway)) == 2 * len(GW_IFACES)
    assert not list((tmp / "run").glob("*.lock")), list((tmp / "run").iterdir())
    cli(tmp, "down", "--netns", lab.gateway, "--iface", *GW_IFACES)
    assert attach.attached(lab.gateway) == []
    assert not pins.ns_dir(lab.gateway).exists()
    left = sorted(str(p.relative_to(tmp / "run")) for p in (tmp / "run").rglob("*"))
    # the applied policy (`up` without --policy reuses it) and nothing else
    assert left == [lab.gateway, f"{lab.gateway}/policy.json", f"{lab.gateway}/policy.yaml"], left


def test_policy_apply_and_down_leave_only_the_applied_policy(lab_env):
    lab, tmp = lab_env
    ns_run = tmp / "run" / lab.gateway
    try:
        cli(tmp, "up", "--netns", lab.gateway, "--iface", *GW_IFACES)
        cli(tmp, "policy", "apply", str(tmp / "policy.yaml"), "--netns", lab.gateway)
        # apply without a daemon serialises on a lock file of its own
        assert (ns_run / ".lock").exists(), sorted(p.name for p in ns_run.iterdir())
    finally:
        cli(tmp, "down", "--netns", lab.gateway, "--iface", *GW_IFACES)
    assert attach.attached(lab.gateway) == []
    left = sorted(str(p.relative_to(tmp / "run")) for p in (tmp / "run").rglob("*"))
    # `down` removes what it owns; the applied policy stays for the next `up`
    assert left == [lab.gateway, f"{lab.gateway}/policy.json", f"{lab.gateway}/policy.yaml"], left


def test_detach_on_exit_detaches(lab_env):
    lab, tmp = lab_env
    d = Run(lab, tmp, "detach", "--detach-on-exit").started()
    assert len(attach.attached(lab.gateway)) == 2 * len(GW_IFACES)
    assert d.stop() == 0, d.log.read_text()
    assert attach.attached(lab.gateway) == []
    assert not (tmp / "run" / f"{lab.gateway}.lock").exists()
    cli(tmp, "down", "--netns", lab.gateway, "--iface", *GW_IFACES)


def test_up_through_ip_netns_exec_passes_traffic(lab_env):
    lab, tmp = lab_env
    try:
        r = cli(tmp, "up", "--iface", *GW_IFACES, "--policy", str(tmp / "policy.yaml"),
                prefix=("ip", "netns", "exec", lab.gateway))
        assert "attached" in r.stdout
        # pinned in the system's bpffs, under the namespace's name
        assert any((p / "ms_stages").exists() for p in pins.ns_dir(lab.gateway).iterdir() if p.name.isdigit())
        out = lab.run(lab.client, [sys.executable, "-c",
                                   f"import socket; c = socket.create_connection(('{SERVER_V4}', {ECHO_PORT}), "
                                   f"timeout=5); c.settimeout(5); c.sendall(b'ping'); print(c.recv(4).decode())"],
                      check=False)
        assert out.stdout.strip() == "ping", out.stderr
        assert not connects(lab, DENIED_PORT)
        st = json.loads(cli(tmp, "stats", "--netns", lab.gateway, "--json").stdout)
        missed = sum(x["packets"] for x in st["counters"] if x["reason"] == "DROP_TAIL_CALL_MISSED")
        assert missed == 0
    finally:
        cli(tmp, "down", "--netns", lab.gateway, "--iface", *GW_IFACES, check=False)
    assert not pins.ns_dir(lab.gateway).exists()


def test_a_container_without_the_hosts_bpffs_is_refused_in_one_line(tmp_path):
    """A container (its own PID and mount namespaces) whose /sys/fs/bpf is
    not a bpffs: a bpffs mounted there would vanish with the container and
    the programs left attached would lose their stage array. Refused,
    before any change. (Its own network namespace too: nothing it could
    reach is the host's.)"""
    (tmp_path / "run").mkdir()
    script = f"umount /sys/fs/bpf; cd {REPO} && exec {sys.executable} -m appliance.cli up --iface lo"
    r = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount", "--mount-proc", "sh", "-c", script],
                       capture_output=True, text=True, timeout=300, env=env_for(tmp_path / "run"))
    assert r.returncode != 0, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "is not a bpffs in this container" in r.stderr, r.stderr
    assert list((tmp_path / "run").iterdir()) == []
