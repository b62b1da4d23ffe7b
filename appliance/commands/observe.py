"""What the kernel holds, read without changing it (but `sweep`, which
deletes expired sessions): `microseg preflight`, `status`, `stats`,
`sessions`, `sweep`. Session table use and reason counters come from
datapath/kernelstate.py, the reader the metrics use too."""
from __future__ import annotations

import json

from appliance.commands.common import open_builds, require_privileges
from datapath.errors import MicrosegError

def cmd_preflight(args) -> int:
    from datapath import preflight

    feats = preflight.probe_all()
    print(preflight.to_json(feats) if args.json else preflight.render(feats))
    return preflight.exit_code(feats)


def status_data(netns: str | None) -> dict:
    """What is attached, each program, each map once (a build's programs
    share their maps: ``maps`` by id, each naming the programs that use
    it), the session tables, and the slow path (the `microseg run` daemon
    owning the namespace, per the owner record, and its workers as the
    kernel's heartbeat and ring maps show them)."""
    from datapath import attach, bpfsys, kernelstate, pressure

    items = attach.attached(netns)
    progs, maps = {}, {}
    ncpus = pressure.possible_cpus()
    for a in items:
        if a.prog_id and a.prog_id not in progs:
            try:
                prog, stage_ids, infos = bpfsys.build_maps(a.prog_id)
            except OSError as e:
                progs[a.prog_id] = {"error": str(e)}
                continue
            progs[a.prog_id] = {"name": prog.name, "tag": prog.tag, "jited": prog.jited,
                                "stage_prog_ids": stage_ids, "map_ids": [m.id for m in infos]}
            for m in infos:
                if m.id in maps:
                    maps[m.id]["prog_ids"].append(a.prog_id)
                    continue
                maps[m.id] = {"id": m.id, "name": m.name, "type": kernelstate.map_type_name(m.type),
                              "key_size": m.key_size, "value_size": m.value_size,
                              "max_entries": m.max_entries, "memlock_bytes": m.memlock,
                              "estimate_bytes": pressure.review_estimate(m, ncpus), "prog_ids": [a.prog_id]}
            if a.direction == "DIR_INGRESS":
                progs[a.prog_id]["sessions"] = _sessions_status(a.prog_id)
                progs[a.prog_id]["slowpath_workers"] = _slowpath_slots(a.prog_id)
    return {"netns": netns, "attached": attach.as_dicts(items), "programs": progs,
            "maps": sorted(maps.values(), key=lambda m: (m["name"], m["id"])),
            "slowpath": _daemon_status(netns, progs)}


def _slowpath_slots(prog_id: int) -> list[dict] | dict:
    """Worker slots of one build (kernelstate.slowpath_slots), or {"error"}."""
    import time

    from datapath import kernelstate, sessions
    from slowpath.records import CLOCK_MONOTONIC_COARSE

    try:
        with sessions.AttachedBuild(prog_id) as b:
            m = kernelstate.BuildMaps.of_build(b, sessions.layouts())
            return kernelstate.slowpath_slots(m, time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE))
    except (MicrosegError, OSError) as e:
        return {"error": str(e).splitlines()[0]}


def _daemon_status(netns: str | None, progs: dict) -> dict:
    """The `microseg run` daemon of ``netns`` (datapath/owner.py's record)
    and its workers: each worker slot the kernel knows, with the pid the
    daemon started there."""
    from datapath import owner

    rec = owner.daemon(netns)
    slots = next((p["slowpath_workers"] for p in progs.values() if "slowpath_workers" in p), [])
    if rec is None:
        return {"daemon": None, "workers": slots}
    started = {int(i): pid for i, pid in (rec.get("worker_pids") or {}).items()}
    workers = []
    if isinstance(slots, dict):         # the maps could not be read: the record alone
        workers = [{"worker": i, "pid": pid, "error": slots["error"]} for i, pid in sorted(started.items())]
    else:
        for w in slots:
            if w["worker"] < int(rec.get("workers") or 0) or w["worker"] in started:
                workers.append({**w, "started_pid": started.get(w["worker"])})
    return {"daemon": {"pid": rec.get("pid"), "config": rec.get("config"), "policy": rec.get("policy"),
                       "started": rec.get("started"), "workers": rec.get("workers"),
                       "stopping": bool(rec.get("stopping")), "metrics": rec.get("metrics")},
            "workers": workers}


def _sessions_status(prog_id: int) -> dict:
    """Session table use of one build, as the kernel counts it, and the
    half-open table's entries (counted by walking it)."""
    from datapath import kernelstate, sessions

    try:
        with sessions.AttachedBuild(prog_id) as b:
            return kernelstate.table_use(kernelstate.BuildMaps.of_build(b, sessions.layouts()))
    except (MicrosegError, OSError) as e:
        return {"error": str(e).splitlines()[0]}


def cmd_status(args) -> int:
    require_privileges("reading fast path state")
    from datapath.text import table

    data = status_data(args.netns)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    where = f" in network namespace {args.netns}" if args.netns else ""
    if not data["attached"]:
        print(f"microseg is not attached to any interface{where}")
        return 0
    print(f"attached{where}:")
    print(table([("interface", "hook", "prog id", "filter", "mode")] +
                [(a["iface"], a["direction"].removeprefix("DIR_").lower(), a["prog_id"], a["name"], a["mode"])
                 for a in data["attached"]]))
    for pid, p in sorted(data["programs"].items()):
        if "error" in p:
            print(f"\nprogram {pid}: {p['error']}")
            continue
        print(f"\nprogram {pid} ({p['name']}, tag {p['tag']}, {'jited' if p['jited'] else 'interpreted'})")
        if "sessions" in p:
            print("sessions:")
            print(_format_sessions_status(p["sessions"]))
    print("\nslow path:")
    print(format_slowpath(data["slowpath"]))
    multi = len(data["programs"]) > 1
    print("\nmaps, each once (memlock: what the kernel charges; estimate: max entries x (key + value + 64)):")
    print(table([("map", "id", "type", "key", "value", "max entries", "memlock", "estimate")
                 + (("programs",) if multi else ())] +
                [(m["name"], m["id"], m["type"], m["key_size"], m["value_size"], m["max_entries"],
                  _size(m["memlock_bytes"]), _size(m["estimate_bytes"]) if m["estimate_bytes"] is not None
                  else "-") + ((",".join(map(str, m["prog_ids"])),) if multi else ()) for m in data["maps"]]))
    return 0


def format_slowpath(sp: dict) -> str:
    """The slow-path section of `microseg status`: the daemon, where its
    metrics listen (and in which network namespace that address is), and
    one row per worker."""
    from datapath.text import table

    d = sp.get("daemon")
    lines = []
    if d is None:
        lines.append("  no `microseg run` daemon owns this namespace (inspected flows get the slowpath_down "
                     "action when their worker's heartbeat is stale)")
    else:
        lines.append(f"  microseg run: pid {d['pid']}" + (f", config {d['config']}" if d.get("config") else "")
                     + (f", since {d['started']}" if d.get("started") else "")
                     + (", stopping" if d.get("stopping") else ""))
        lines.append(f"  workers: {d['workers'] if d.get('workers') is not None else '?'}")
        m = d.get("metrics")
        if m:
            ns = f"network namespace {m['netns']}" if m.get("netns") else "the host's network namespace"
            lines.append(f"  metrics: {m.get('url') or m.get('listen')} (in {ns})")
        else:
            lines.append("  metrics: off (no metrics.listen in the run configuration)")
    workers = sp.get("workers")
    if isinstance(workers, dict):
        lines.append(f"  (cannot read the workers' maps: {workers['error']})")
    elif workers:
        rows = [("worker", "pid", "heartbeat age", "ring pending", "ring size", "ring used")]
        for w in workers:
            ring = w.get("ring")
            age = w.get("heartbeat_age_s")
            rows.append((w["worker"], w.get("pid") or "-",
                         "stopped" if age is None else f"{age:.1f} s",
                         _size(ring["pending_bytes"]) if ring else "-", _size(ring["size_bytes"]) if ring else "-",
                         _pct(100.0 * ring["pending_bytes"] / max(ring["size_bytes"], 1)) if ring else "-"))
        lines.append(table(rows))
    elif d is not None:
        lines.append("  no worker slots in use")
    return "\n".join(lines)


def _session_limit(build) -> int:
    """The session limit of an attached build (its IPv4 session map's size,
    flow_table_size: the kernel counts both families against it)."""
    from datapath import sessions
    return build.info(sessions.FAMILY_TABLES["ms_flows"][0]).max_entries


def _format_sessions_status(s: dict) -> str:
    from datapath.text import table

    if "error" in s:
        return f"  (cannot read: {s['error']})"
    f, h = s["ms_flows"], s["ms_halfopen"]
    rows = [("table", "entries", "capacity", "used", "insert failures", "evictions", "alerts sent",
             "expired, unswept"),
            ("ms_flows", f["entries"], f["capacity"], _pct(f["pct_used"]), f["insert_failed"], "0 (never evicts)",
             f["alerts"], f["expired_unswept"]),
            ("ms_halfopen", h["entries"], h["capacity"], _pct(h["pct_used"]), "-", h.get("evictions", "?"), "-",
             h["expired_unswept"])]
    # Each family's map against its own size: a full IPv6 map refuses IPv6
    # sessions while the table's total is far from the limit.
    for name, u in sorted((s.get("maps") or {}).items(), key=lambda kv: (kv[1]["table"] != "ms_flows", kv[0])):
        rows.append((f"  {name} ({u['family'].replace('ipv', 'IPv')})", u["entries"], u["capacity"],
                     _pct(u["pct_used"]), "", "", "", ""))
    alert = "armed" if f["alert_armed"] else "sent, re-armed when use falls under the threshold"
    return (table(rows) + f"\n  ms_flows entries = inserted {f['inserted']} - deleted by the kernel "
            f"{f['deleted_kernel']} - by the sweeper {f['deleted_user']}; alert at {f['pressure_pct']}% "
            f"({alert}); {f['present']} present in the maps (IPv4 and IPv6; IPv6 at most "
            f"{f.get('ipv6_capacity', '?')})")


def _pct(p: float) -> str:
    return "<0.1%" if 0 < p < 0.1 else f"{p:.1f}%"


def _size(n) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_stats(args) -> int:
    require_privileges("reading fast path counters")
    from datapath.counters import format_counters
    from datapath.enums import reason_kind

    data = stats_data(args.netns)
    if args.json:
        rows = [{"hook": d.name.removeprefix("DIR_").lower(), "reason": r.name,
                 "action": reason_kind(r).lower(), "packets": pk, "bytes": by}
                for (d, r), (pk, by) in sorted(data["counters"].items())]
        print(json.dumps({"netns": args.netns, "prog_ids": data["prog_ids"], "counters": rows}, indent=2))
        return 0
    print(format_counters(data["counters"]))
    return 0


def stats_data(netns: str | None) -> dict:
    """Reason counters of every attached build, summed: what was passed and
    dropped, by hook and reason."""
    from datapath import kernelstate, sessions

    builds = open_builds(netns)
    total: dict = {}
    try:
        types = sessions.layouts()
        for b in builds:
            for k, (pk, by) in kernelstate.counters(kernelstate.BuildMaps.of_build(b, types)).items():
                p0, b0 = total.get(k, (0, 0))
                total[k] = (p0 + pk, b0 + by)
    finally:
        for b in builds:
            b.close()
    return {"prog_ids": [b.prog_id for b in builds], "counters": total}


def cmd_sessions(args) -> int:
    require_privileges("reading sessions")
    from datapath import sessions

    flt = sessions.SessionFilter.from_args(args.src, args.dst, args.port, args.state, args.proto)
    builds = open_builds(args.netns)
    try:
        types = sessions.layouts()
        listings = []
        for b in builds:
            b.check_layouts(types)
            fds = {n: b.fd(n) for n in sessions.FLOW_TABLES}
            listings.append(sessions.list_sessions(fds, types, b.fd("ms_timeouts"), flt,
                                                   verdicts_fd=b.fd("ms_verdicts")))
    finally:
        for b in builds:
            b.close()
    from appliance import policyfile as pf
    listing = sessions.with_rule_names(sessions.merge(listings), pf.applied_rule_names(args.netns))
    if args.json:
        print(json.dumps({"netns": args.netns, "prog_ids": [b.prog_id for b in builds],
                          "sessions": [s.as_dict() for s in listing.sessions],
                          "summary": listing.summary()}, indent=2))
        return 0
    for s in listing.sessions:
        print(sessions.format_session(s))
    print(sessions.format_summary(listing))
    return 0


def cmd_sweep(args) -> int:
    require_privileges("sweeping sessions")
    from datapath import sessions
    from datapath.sweeper import Sweeper

    builds = open_builds(args.netns)
    out = []
    try:
        types = sessions.layouts()
        for b in builds:
            st = Sweeper.for_build(b, types).sweep()
            out.append({"prog_id": b.prog_id, "capacity": _session_limit(b), **st.as_dict()})
    finally:
        for b in builds:
            b.close()
    if args.json:
        print(json.dumps({"netns": args.netns, "sweeps": out}, indent=2))
        return 0
    for d in out:
        print(f"build {d['prog_id']}: scanned {d['scanned']} (ms_flows {d['scanned_flows']}, "
              f"ms_halfopen {d['scanned_halfopen']}), expired ms_flows {d['expired_flows']}, "
              f"ms_halfopen {d['expired_halfopen']} in {d['seconds']:.3f} s (CPU {d['cpu_seconds']:.3f} s); "
              f"ms_flows entries now {d['entries_after']} of {d['capacity']}"
              + ("; pressure alert re-armed" if d["rearmed"] else ""))
    return 0

