"""`microseg deploy` and `microseg rollback`: a new build (and policy) put
in place the way the seed review's section 5 asks, as one command.

  1. preflight: every required kernel feature, or stop before anything;
  2. snapshot: the attached build's programs and its stage array pinned
     under bpffs (so they outlive being replaced), which interfaces, the
     applied policy; written before any change;
  3. compile and verify the new build (the verifier runs at load; pinned
     state reused or migrated, datapath/state.py) and apply the policy to it;
  4. canary: the new build on one interface; after a soak, the gates;
  5. gradual: the other interfaces one at a time, the gates after each;
  6. on any failed step: rollback to the snapshot on every interface
     already switched, and the command says which gate failed and why.

Gates (each measured over the soak, from the kernel's pinned counters or
the slow path's metrics endpoint):
  * traffic: at least ``min_packets`` packets went through the gateway
    (a canary that carries nothing has proven nothing);
  * drops: dropped / all packets at most ``max_drop_ratio``;
  * verdict latency: the slow path's p99 (from the histogram's buckets) at
    most ``max_verdict_p99_ms``, when a metrics URL is given.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from appliance import policyfile as pf
from datapath import attach, bpfsys, pins
from datapath.enums import Direction, Reason, reason_kind
from datapath.errors import MicrosegError

SNAPSHOT = "snapshot"


class GateFailed(MicrosegError):
    exit_code = 3


@dataclass(frozen=True)
class Gates:
    soak_s: float = 10.0
    min_packets: int = 1
    max_drop_ratio: float = 0.01
    max_verdict_p99_ms: float | None = None
    metrics_url: str | None = None


@dataclass
class Step:
    ifaces: list[str]
    packets: int = 0
    drops: int = 0
    verdict_p99_ms: float | None = None
    failed: str | None = None


@dataclass
class Result:
    steps: list[Step] = field(default_factory=list)
    rolled_back: bool = False
    lines: list[str] = field(default_factory=list)


def snap_dir(netns: str | None) -> Path:
    return pins.ns_dir(netns) / SNAPSHOT


def record_path(netns: str | None) -> Path:
    return pf.state_dir(netns) / "snapshot.json"


# -- snapshot and rollback ---------------------------------------------------

def snapshot(netns: str | None, ifaces: list[str]) -> dict:
    """Pin what is attached on ``ifaces`` now (one build) and record it."""
    now = [a for a in attach.attached(netns) if a.iface in ifaces]
    if not now:
        raise MicrosegError(f"nothing attached on {', '.join(ifaces)}: deploy needs a running build to fall "
                            f"back to (start with `microseg up`)")
    ids = {a.direction: a for a in now}
    builds = {a.prog_id for a in now if a.direction == "DIR_INGRESS"}
    if len(builds) != 1:
        raise MicrosegError(f"interfaces run different builds ({sorted(builds)}): finish or roll back the "
                            f"deploy in progress first")
    d = snap_dir(netns)
    shutil.rmtree(d, ignore_errors=True)
    pins.ensure_bpffs()
    d.mkdir(parents=True)
    progs = {}
    for direction, a in ids.items():
        fd = bpfsys.prog_fd_by_id(a.prog_id)
        try:
            bpfsys.obj_pin(fd, str(d / direction))
        finally:
            os.close(fd)
        progs[direction] = {"prog_id": a.prog_id, "name": a.name.removeprefix(attach.NAME_PREFIX)}
    _, stage_ids, maps = bpfsys.build_maps(ids["DIR_INGRESS"].prog_id)
    stages = next((m for m in maps if m.name == "ms_stages"), None)
    if stages is not None:
        fd = bpfsys.map_fd_by_id(stages.id)
        try:
            bpfsys.obj_pin(fd, str(d / "ms_stages"))
        finally:
            os.close(fd)
    applied = pf.read_applied(netns)
    rec = {"taken_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ifaces": sorted(ifaces), "progs": progs,
           # Each interface's attach mode: a deploy may move an interface
           # from clsact to tcx (the setting), and a rollback moves it back.
           "modes": {a.iface: a.mode for a in now},
           "policy_text": applied.text if applied else None,
           "policy_meta": applied.meta if applied else None}
    p = record_path(netns)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(rec, indent=1))
    return rec


def rollback(netns: str | None, ifaces: list[str] | None = None) -> list[str]:
    """Put the snapshot's build back on its interfaces (or ``ifaces``) and
    its policy record back; the snapshot stays for another rollback."""
    try:
        rec = json.loads(record_path(netns).read_text())
    except (OSError, ValueError):
        raise MicrosegError(f"no deploy snapshot for {netns or 'this namespace'} (nothing to roll back to)")
    d = snap_dir(netns)
    fds = {}
    try:
        progs = {}
        for direction, p in rec["progs"].items():
            fds[direction] = bpfsys.obj_get(str(d / direction))
            progs[Direction[direction]] = (fds[direction], p["name"])
        # Each interface back in the mode of the snapshot (a snapshot from
        # before modes were recorded: the mode each has now).
        by_mode: dict = {}
        for i in ifaces or rec["ifaces"]:
            by_mode.setdefault(rec.get("modes", {}).get(i) or attach.KEEP, []).append(i)
        done = []
        for mode, group in by_mode.items():
            done += attach.attach_progs(progs, group, netns, mode=mode)
        build = pins.ns_dir(netns) / str(rec["progs"]["DIR_INGRESS"]["prog_id"])
        if (d / "ms_stages").exists() and not (build / "ms_stages").exists():
            build.mkdir(parents=True, exist_ok=True)
            fd = bpfsys.obj_get(str(d / "ms_stages"))
            try:
                bpfsys.obj_pin(fd, str(build / "ms_stages"))
            finally:
                os.close(fd)
    finally:
        for fd in fds.values():
            os.close(fd)
    pins.gc(netns, {a.prog_id for a in attach.attached(netns) if a.direction == "DIR_INGRESS"})
    if rec.get("policy_text") is not None:
        meta = rec["policy_meta"] or {}
        pf.store_applied(netns, rec["policy_text"], meta.get("file", "<snapshot>"), meta.get("builds", []),
                         meta.get("summary", {}), meta.get("rule_names"))
    return [f"rolled back {a.iface} {a.direction.removeprefix('DIR_').lower()} to prog id {a.prog_id}"
            for a in done]


# -- gates -----------------------------------------------------------------------

def _totals(fp) -> tuple[int, int]:
    packets = drops = 0
    for (_, r), (pk, _) in fp.counters().items():
        packets += pk
        if reason_kind(Reason(r)) == "DROP":
            drops += pk
    return packets, drops


def _histogram(url: str) -> dict[float, float]:
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "microseg_verdict_latency_seconds":
            for s in fam.samples:
                if s.name.endswith("_bucket"):
                    out[float(s.labels["le"])] = s.value
    return out


def _p99_ms(before: dict, after: dict) -> float | None:
    """p99 of the observations between two scrapes: the upper bound of the
    bucket the 99th percentile falls in (what a histogram can say)."""
    les = sorted(after)
    delta = [(le, after[le] - before.get(le, 0.0)) for le in les]
    total = delta[-1][1] if delta else 0
    if total <= 0:
        return None
    for le, cum in delta:
        if cum >= 0.99 * total:
            return le * 1e3
    return float("inf")


def _gate(fp, gates: Gates, step: Step) -> None:
    hist0 = _histogram(gates.metrics_url) if gates.max_verdict_p99_ms is not None and gates.metrics_url else None
    p0, d0 = _totals(fp)
    time.sleep(gates.soak_s)
    p1, d1 = _totals(fp)
    step.packets, step.drops = p1 - p0, d1 - d0
    if step.packets < gates.min_packets:
        step.failed = (f"traffic: {step.packets} packets in {gates.soak_s:g} s, the gate wants at least "
                       f"{gates.min_packets}")
        return
    ratio = step.drops / step.packets
    if ratio > gates.max_drop_ratio:
        step.failed = (f"drops: {step.drops} of {step.packets} packets dropped ({ratio:.2%}), the gate allows "
                       f"{gates.max_drop_ratio:.2%}")
        return
    if hist0 is not None:
        step.verdict_p99_ms = _p99_ms(hist0, _histogram(gates.metrics_url))
        if step.verdict_p99_ms is not None and step.verdict_p99_ms > gates.max_verdict_p99_ms:
            step.failed = (f"verdict latency: p99 {step.verdict_p99_ms:g} ms, the gate allows "
                           f"{gates.max_verdict_p99_ms:g} ms")


# -- deploy ----------------------------------------------------------------------

def deploy(netns: str | None, ifaces: list[str], config, policy: tuple | None, gates: Gates,
           canary: str | None = None, say=print) -> Result:
    from appliance.bringup import Policy, bring_up
    from datapath import preflight

    res = Result()
    missing = [f.name for f in preflight.probe_all() if f.level == preflight.REQUIRED and not f.available]
    if missing:
        raise MicrosegError(f"preflight: required kernel features missing: {', '.join(missing)}")
    say("1/5 preflight: every required feature present")
    snap = snapshot(netns, ifaces)
    say(f"2/5 snapshot: build {snap['progs']['DIR_INGRESS']['prog_id']} on {', '.join(snap['ifaces'])} pinned")
    if policy is None and snap["policy_text"] is not None:
        model, pol = pf.compile_text(snap["policy_text"], snap["policy_meta"].get("file", "<applied>"))
        policy = (model, pol, snap["policy_text"], snap["policy_meta"].get("file", "<applied>"))

    def prepare(b):
        say(f"3/5 compiled and verified; state: {'; '.join(b.state_lines) or 'new'}"
            + (f"; policy generation {b.applied.gen}" if b.applied else ""))

    def rollout(b):
        """The canary, then the other interfaces one at a time, each step
        behind the gates; a failed gate rolls back what was switched."""
        first = canary or ifaces[0]
        order = [[first]] + [[i] for i in ifaces if i != first]
        switched: list[str] = []
        done = []
        for n, group in enumerate(order):
            step = Step(group)
            res.steps.append(step)
            attached = attach.attach(b.fp, group, netns, managed=ifaces, mode=b.attach_mode)
            done += attached
            switched += group
            _gate(b.fp, gates, step)
            what = "4/5 canary" if n == 0 else f"5/5 rollout {n}/{len(order) - 1}"
            if step.failed:
                say(f"{what} on {', '.join(group)}: gate failed: {step.failed}")
                res.lines += rollback(netns, switched)
                res.rolled_back = True
                for line in res.lines:
                    say(line)
                raise GateFailed(f"deploy stopped at the {what.split()[1]} on {', '.join(group)}: "
                                 f"{step.failed}; rolled back to build {snap['progs']['DIR_INGRESS']['prog_id']}")
            say(f"{what} on {', '.join(group)}: {step.packets} packets, {step.drops} dropped"
                + (f", verdict p99 {step.verdict_p99_ms:g} ms" if step.verdict_p99_ms is not None else "")
                + f" (prog id {attached[0].prog_id})")
        return done

    def after(b):
        say("done: every interface runs the new build (`microseg rollback` returns to the snapshot)")

    # The XDP blocklist stays as it is (blocklist=None): deploy replaces the tc build only.
    bring_up(config, netns, ifaces, Policy(*policy) if policy else None, prepare=prepare, rollout=rollout,
             after=after)
    return res
