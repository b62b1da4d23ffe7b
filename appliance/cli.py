"""The `microseg` command.

Every failure an operator can cause (a missing interface, no privileges,
missing kernel headers, a compile or verifier error) ends in one line
``microseg: error: ...`` (plus the verifier's last lines where they help)
and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from appliance.ownership import own, settle_namespace
from appliance.xdp import sync_blocklist
from datapath.errors import MicrosegError, UsageError

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF = 12, 21, 39

MAP_TYPES = {1: "hash", 2: "array", 3: "prog_array", 5: "percpu_hash", 6: "percpu_array",
             9: "lru_hash", 10: "lru_percpu_hash", 11: "lpm_trie", 27: "ringbuf", 30: "bloom_filter"}


def effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def require_privileges(what: str) -> None:
    caps = effective_caps()
    has_bpf = bool(caps & (1 << CAP_BPF) or caps & (1 << CAP_SYS_ADMIN))
    has_net = bool(caps & (1 << CAP_NET_ADMIN))
    if not (has_bpf and has_net):
        missing = [n for n, ok in (("CAP_BPF", has_bpf), ("CAP_NET_ADMIN", has_net)) if not ok]
        raise MicrosegError(f"{what} needs root or {' and '.join(missing)} (running as uid {os.geteuid()})")


# -- commands --------------------------------------------------------------

def cmd_preflight(args) -> int:
    from datapath import preflight

    feats = preflight.probe_all()
    print(preflight.to_json(feats) if args.json else preflight.render(feats))
    return preflight.exit_code(feats)


def _config(args):
    """The datapath configuration: --config FILE, then --flow-table-size over it."""
    from datapath.config import DatapathConfig
    from pydantic import ValidationError

    from datapath.configfile import load_model

    cfg = load_model(args.config, DatapathConfig) if args.config else DatapathConfig()
    if getattr(args, "flow_table_size", None):
        try:
            cfg = DatapathConfig(**{**cfg.model_dump(), "flow_table_size": args.flow_table_size})
        except ValidationError as e:
            raise UsageError(f"--flow-table-size: {e.errors()[0]['msg']}")
    return cfg


def cmd_up(args) -> int:
    require_privileges("attaching the fast path")
    from appliance import policyfile as pf
    from appliance.bringup import Policy, applied_policy, bring_up
    from datapath import attach

    # Check the input first: a typo must fail before a compile and before any change.
    cfg = _config(args)
    if args.policy:
        policy = Policy(*pf.compile_file(args.policy), args.policy)
    else:
        # The new build starts with the policy in force, not with none:
        # attaching before applying would let everything pass meanwhile.
        policy = applied_policy(args.netns)
    with attach.netlink(args.netns) as ipr:
        attach.resolve(ipr, args.iface, args.netns)
    own(args.netns, "up")

    def prepare(b):
        for line in b.state_lines:
            print(f"state: {line}")

    def after(b):
        for a in b.attached:
            print(f"attached {a.name} on {a.iface} {a.direction.removeprefix('DIR_').lower()} (prog id {a.prog_id})")
        if policy:
            print(f"policy {policy.source} in force (generation {b.applied.gen})")
        else:
            print("no policy applied: every flow passes (apply one with `microseg policy apply FILE`)")

    bring_up(cfg, args.netns, args.iface, policy, fresh=args.fresh_state, prepare=prepare, after=after,
             blocklist=print)
    return 0


def cmd_down(args) -> int:
    require_privileges("detaching the fast path")
    from datapath import attach

    own(args.netns, "down")

    n = attach.detach(args.iface, args.netns)
    xdp = sum(attach.detach_xdp(i, args.netns) for i in args.iface)
    # Say only what was there: `down` on nothing is a no-op that says so
    # (exit 0, like any stop of what is stopped), not a claim of removals.
    if n or xdp:
        print(f"removed {n} microseg filter(s)" + (f" and {xdp} XDP blocklist(s)" if xdp else "")
              + f" from {', '.join(args.iface)}")
    else:
        print(f"nothing to detach: no microseg filter on {', '.join(args.iface)}")
    if not args.keep_state and not attach.attached(args.netns):
        from appliance import policyfile as pf
        from datapath import state
        record = pf.state_dir(args.netns) / state.LAYOUT_FILE
        if state.state_dir(args.netns).exists() or record.exists():
            state.remove(args.netns, record)
            print("removed the pinned state (sessions, counters); --keep-state keeps it for the next `up`")
        else:
            print("no pinned state to remove")
    return 0


def status_data(netns: str | None) -> dict:
    from datapath import attach, bpfsys, pressure

    items = attach.attached(netns)
    progs = {}
    ncpus = pressure.possible_cpus()
    for a in items:
        if a.prog_id and a.prog_id not in progs:
            try:
                prog, stage_ids, maps = bpfsys.build_maps(a.prog_id)
            except OSError as e:
                progs[a.prog_id] = {"error": str(e)}
                continue
            progs[a.prog_id] = {
                "name": prog.name, "tag": prog.tag, "jited": prog.jited, "stage_prog_ids": stage_ids,
                "maps": [{"id": m.id, "name": m.name, "type": MAP_TYPES.get(m.type, str(m.type)),
                          "key_size": m.key_size, "value_size": m.value_size,
                          "max_entries": m.max_entries, "memlock_bytes": m.memlock,
                          "estimate_bytes": pressure.review_estimate(m, ncpus)} for m in maps],
            }
            if a.direction == "DIR_INGRESS":
                progs[a.prog_id]["sessions"] = _sessions_status(a.prog_id)
    return {"netns": netns, "attached": attach.as_dicts(items), "programs": progs}


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
    print(table([("interface", "hook", "prog id", "filter")] +
                [(a["iface"], a["direction"].removeprefix("DIR_").lower(), a["prog_id"], a["name"])
                 for a in data["attached"]]))
    for pid, p in sorted(data["programs"].items()):
        if "error" in p:
            print(f"\nprogram {pid}: {p['error']}")
            continue
        print(f"\nprogram {pid} ({p['name']}, tag {p['tag']}, {'jited' if p['jited'] else 'interpreted'})")
        if "sessions" in p:
            print("sessions:")
            print(_format_sessions_status(p["sessions"]))
        print("maps (memlock: what the kernel charges; estimate: max entries x (key + value + 64)):")
        print(table([("map", "type", "key", "value", "max entries", "memlock", "estimate")] +
                    [(m["name"], m["type"], m["key_size"], m["value_size"], m["max_entries"],
                      _size(m["memlock_bytes"]), _size(m["estimate_bytes"]) if m["estimate_bytes"] is not None
                      else "-") for m in p["maps"]]))
    return 0


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
    alert = "armed" if f["alert_armed"] else "sent, re-armed when use falls under the threshold"
    return (table(rows) + f"\n  ms_flows entries = inserted {f['inserted']} - deleted by the kernel "
            f"{f['deleted_kernel']} - by the sweeper {f['deleted_user']}; alert at {f['pressure_pct']}% "
            f"({alert}); {f['present']} present in the map")


def _pct(p: float) -> str:
    return "<0.1%" if 0 < p < 0.1 else f"{p:.1f}%"


def cmd_sessions(args) -> int:
    require_privileges("reading sessions")
    from datapath import sessions

    flt = sessions.SessionFilter.from_args(args.src, args.dst, args.port, args.state, args.proto)
    builds = _open_builds(args.netns)
    try:
        types = sessions.layouts()
        listings = []
        for b in builds:
            b.check_layouts(types)
            fds = {n: b.fd(n) for n in sessions.FLOW_TABLES}
            listings.append(sessions.list_sessions(fds, types, b.fd("ms_timeouts"), flt))
    finally:
        for b in builds:
            b.close()
    listing = sessions.merge(listings)
    if args.json:
        print(json.dumps({"netns": args.netns, "prog_ids": [b.prog_id for b in builds],
                          "sessions": [s.as_dict() for s in listing.sessions],
                          "summary": listing.summary()}, indent=2))
        return 0
    for s in listing.sessions:
        print(sessions.format_session(s))
    print(sessions.format_summary(listing))
    return 0


def stats_data(netns: str | None) -> dict:
    """Reason counters of every attached build, summed: what was passed and
    dropped, by hook and reason."""
    from datapath import kernelstate, sessions

    builds = _open_builds(netns)
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


def cmd_deploy(args) -> int:
    require_privileges("deploying the fast path")
    from appliance import deploy
    from appliance import policyfile as pf
    from datapath import attach

    cfg = _config(args)
    policy = None
    if args.policy:
        model, pol, text = pf.compile_file(args.policy)
        policy = (model, pol, text, args.policy)
    if args.max_verdict_p99_ms is not None and not args.metrics:
        raise UsageError("--max-verdict-p99-ms needs --metrics URL (the slow path's metrics endpoint)")
    if args.canary and args.canary not in args.iface:
        raise UsageError(f"--canary {args.canary}: not one of --iface {' '.join(args.iface)}")
    if args.soak <= 0 or not 0 <= args.max_drop_ratio <= 1:
        raise UsageError("--soak must be positive and --max-drop-ratio within 0..1")
    with attach.netlink(args.netns) as ipr:
        attach.resolve(ipr, args.iface, args.netns)
    url = args.metrics.rstrip("/") + "/metrics" if args.metrics and not args.metrics.endswith("/metrics") \
        else args.metrics
    gates = deploy.Gates(args.soak, args.min_packets, args.max_drop_ratio, args.max_verdict_p99_ms, url)
    own(args.netns, "deploy")
    deploy.deploy(args.netns, args.iface, cfg, policy, gates, canary=args.canary)
    return 0


def cmd_rollback(args) -> int:
    require_privileges("rolling back")
    from appliance import deploy

    own(args.netns, "rollback")
    for line in deploy.rollback(args.netns):
        print(line)
    return 0


def cmd_run(args) -> int:
    require_privileges("running the appliance")
    from datapath.configfile import load_model
    from appliance.runconfig import RunConfig
    from appliance import daemon

    cfg = load_model(args.config, RunConfig)
    if cfg.netns is not None:
        # Entering a namespace by name creates it when it is missing
        # (pyroute2's setns): refuse here, before anything is made.
        from pyroute2 import netns as pr_netns
        if cfg.netns not in pr_netns.listnetns():
            raise UsageError(f"{args.config}: netns: network namespace '{cfg.netns}' does not exist "
                             f"(`microseg run` creates none; check the name with `ip netns list`)")
    return daemon.main(cfg, args.config, detach_on_exit=args.detach_on_exit)


def cmd_replay(args) -> int:
    require_privileges("loading the fast path for a replay")
    import tempfile

    from appliance import policyfile as pf
    from datapath.configfile import load_model
    from datapath.config import DatapathConfig
    from datapath.loader import FastPath
    from slowpath import eve_sinks
    from appliance.daemon import load_rules_file
    from slowpath.pcap import ETH_HEADER_LEN, PcapError
    from appliance.replay import replay, replay_config

    # Every input is checked before the compile.
    base = load_model(args.config, DatapathConfig) if args.config else None
    if args.inspect_budget is not None and args.inspect_budget < 0:
        raise UsageError("--inspect-budget: must be 0 or more")
    policy_text = None
    if args.policy:
        pf.compile_file(args.policy)
        policy_text = Path(args.policy).read_text()
    rules = load_rules_file(args.rules)
    if not Path(args.pcap).is_file():
        raise UsageError(f"{args.pcap}: no such capture file")
    # A replay's EVE is its own file, written beside the target and renamed
    # over it only when the replay succeeded: a failed replay leaves an
    # existing file as it was.
    part = None
    if args.eve != "-":
        target = Path(os.path.realpath(args.eve))
        if target.is_dir():
            raise UsageError(f"--eve {args.eve}: is a directory")
        try:
            fd, part = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            os.fchmod(fd, eve_sinks.FILE_MODE)
            os.close(fd)
        except OSError as e:
            raise UsageError(f"--eve {args.eve}: {e.strerror}")
    sink = eve_sinks.StdoutSink() if part is None else eve_sinks.FileSink(part, max_bytes=0)
    log = eve_sinks.EveLog([sink])
    try:
        fp = FastPath(replay_config(base, args.inspect_budget))
        try:
            res = replay(args.pcap, fp, rules, log.emit, policy_text=policy_text,
                         policy_path=args.policy or "<built-in: inspect everything>")
        except PcapError as e:
            raise UsageError(str(e))
        finally:
            fp.close()
        log.close()
        lost = sink.counters()
        if part is not None and (lost["dropped"] or lost["write_errors"]):
            raise MicrosegError(f"--eve {args.eve}: {lost['dropped']} records not written "
                                f"({lost['write_errors']} write errors); the file was left as it was")
        if part is not None:
            os.replace(part, target)
            part = None
    finally:
        log.close()
        if part is not None:
            Path(part).unlink(missing_ok=True)
    c = res.engine.counters
    summary = {"pcap": args.pcap, "frames": res.frames, "not_ethernet": res.not_ethernet,
               "too_short": res.too_short, "too_big": res.too_big, "resegmented": res.resegmented,
               "cut": None if res.cut is None else {"offset": res.cut.offset, "frame": res.cut.frame,
                                                    "message": str(res.cut)},
               "kernel": dict(sorted(res.reasons.items())), "records": res.records,
               "flows": c.flows_opened, "verdicts": dict(c.verdicts), "failures": dict(c.failures),
               "hits": dict(c.hits), "eve_records": res.eve_records, "eve": args.eve}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        out = sys.stderr if args.eve == "-" else sys.stdout
        print(f"{args.pcap}: {res.frames} frames, {res.records} payload records, {c.flows_opened} flows "
              f"inspected; {sum(c.hits.values())} rule hits; {res.eve_records} EVE records -> {args.eve}", file=out)
        if res.too_big or res.not_ethernet or res.too_short:
            print(f"  not run: {res.too_big} frames too large for BPF_PROG_TEST_RUN, "
                  f"{res.not_ethernet} of a link type without an Ethernet form, "
                  f"{res.too_short} shorter than an Ethernet header ({ETH_HEADER_LEN} bytes)", file=out)
        if res.resegmented:
            print(f"  {res.resegmented} captured TCP super-packets cut into wire-sized segments", file=out)
        for name, n in sorted(res.reasons.items()):
            print(f"  {name}: {n}", file=out)
    if res.cut is not None:
        # One line, after the summary: what was read ran, the rest is not there.
        print(f"warning: {res.cut}; replay stopped there, the summary covers the "
              f"{res.frames} frames before byte offset {res.cut.offset}", file=sys.stderr)
    return 0


def _open_builds(netns):
    from datapath import sessions

    builds = sessions.open_builds(netns)
    if not builds:
        where = f" in network namespace '{netns}'" if netns else ""
        raise MicrosegError(f"microseg is not attached to any interface{where}")
    return builds


def cmd_sweep(args) -> int:
    require_privileges("sweeping sessions")
    from datapath import sessions
    from datapath.sweeper import Sweeper

    builds = _open_builds(args.netns)
    out = []
    try:
        types = sessions.layouts()
        for b in builds:
            st = Sweeper.for_build(b, types).sweep()
            out.append({"prog_id": b.prog_id, "capacity": b.info("ms_flows").max_entries, **st.as_dict()})
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


def _size(n) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_lab(args) -> int:
    require_privileges("the lab")
    from appliance import lab as labmod

    if args.lab_cmd == "up":
        lab = labmod.Lab(args.tag) if args.tag else labmod.Lab()
        lab.up()
        print(f"lab {lab.tag} up: namespaces {', '.join(lab.namespaces)}; "
              f"gateway interfaces {', '.join(labmod.GW_IFACES)} in {lab.gateway}")
        return 0
    if args.lab_cmd == "down":
        tags = labmod.labs_present() if args.all else [args.tag]
        if not args.all and not args.tag:
            raise UsageError("lab down needs --tag TAG or --all")
        if not tags:
            print("no microseg labs: nothing to remove")    # --all on none: done, exit 0
            return 0
        for t in tags:
            lab = labmod.Lab(t)
            removed = lab.down()
            if not removed and not args.all:
                # a tag that names no lab is most likely a typo: the lab meant is still up
                raise UsageError(f"no lab '{t}' (none of {', '.join(lab.namespaces)} exists): nothing removed; "
                                 f"`microseg lab down --all` removes every lab")
            print(f"lab {t} removed: namespaces {', '.join(removed)}")
        return 0
    from appliance.demo import run_demo

    return run_demo()



# -- policy ----------------------------------------------------------------

def _precedence() -> str:
    """The precedence paragraph of datapath/policy_compile.py, read without
    importing it (pydantic stays out of every other command's start-up)."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "datapath" / "policy_compile.py"
    try:
        doc = ast.get_docstring(ast.parse(src.read_text())) or ""
        return doc.split("Precedence\n----------\n")[1].split("\n\nCompilation")[0]
    except (OSError, IndexError, SyntaxError):
        return ""


def _print_warnings(path, pol) -> None:
    for line, msg in pol.warnings:
        print(f"{path}:{line}: warning: {msg}", file=sys.stderr)


def cmd_policy(args) -> int:
    return {"check": _policy_check, "explain": _policy_explain, "apply": _policy_apply,
            "diff": _policy_diff}[args.policy_cmd](args)


def _policy_check(args) -> int:
    from appliance import policyfile as pf

    model, pol, _ = pf.compile_file(args.file, allow_empty=True)     # warned, not refused: nothing is applied
    _print_warnings(args.file, pol)
    s = pf.summary(model, pol)
    print(json.dumps({"file": args.file, **s}, indent=2) if args.json else pf.summary_text(args.file, s))
    return 0


def _where(netns) -> str:
    return f"network namespace {netns}" if netns else "this namespace"


def _kernel_policy_states(netns) -> list[dict] | str:
    """Generation and slot of the policy each attached build holds, or why unknown."""
    from datapath import sessions
    from datapath.policy_maps import PolicyMaps

    try:
        builds = sessions.open_builds(netns)
    except (MicrosegError, OSError) as e:
        return str(e).splitlines()[0]
    if not builds:
        return f"microseg is not attached in {_where(netns)}"
    out = []
    try:
        types = sessions.layouts()
        for b in builds:
            st = PolicyMaps.for_build(b, types).state()
            out.append({"prog_id": b.prog_id, "generation": st.gen, "slot": st.slot})
    except (MicrosegError, OSError) as e:
        return str(e).splitlines()[0]
    finally:
        for b in builds:
            b.close()
    return out


def _policy_explain(args) -> int:
    from appliance import policyfile as pf

    src, dst = pf.parse_addr(args.src, "SRC"), pf.parse_addr(args.dst, "DST")
    if ":" in src and ":" not in dst or ":" in dst and ":" not in src:
        raise UsageError(f"SRC {src} and DST {dst} are of different IP versions")
    proto = pf.parse_proto(args.proto)
    port = pf.parse_port(args.port, "PORT")
    # The kernel keys ICMP echo by its id, in both port fields.
    sport = pf.parse_port(args.sport, "--sport") if args.sport is not None else (port if proto in (1, 58) else 0)
    notes = []
    if args.file:
        model, pol, _ = pf.compile_file(args.file, allow_empty=True)
        where = f"{args.file} (not applied: read from the file)"
    else:
        applied = pf.read_applied(args.netns)
        kernel = _kernel_policy_states(args.netns) if os.geteuid() == 0 else "reading the kernel needs root"
        if applied is None:
            pol = None
            where = f"none applied by microseg in {_where(args.netns)}"
            if isinstance(kernel, list) and any(k["generation"] for k in kernel):
                notes.append(f"note: the kernel holds a policy (generations "
                             f"{', '.join(str(k['generation']) for k in kernel)}) that microseg has no copy of")
        else:
            model, pol = pf.compile_text(applied.text, applied.path)
            gens = {b["prog_id"]: b["generation"] for b in applied.meta.get("builds", [])}
            where = (f"{applied.path} (applied {applied.meta.get('applied_at', '?')} from "
                     f"{applied.meta.get('file', '?')}, generation "
                     f"{', '.join(str(g) for g in gens.values()) or '?'})")
            if isinstance(kernel, str):
                notes.append(f"note: not compared with the kernel: {kernel}")
            else:
                for k in kernel:
                    if k["generation"] == 0:
                        notes.append(f"note: build {k['prog_id']} holds no policy (generation 0): every flow "
                                     f"passes there, whatever this copy says (was the build replaced by "
                                     f"`microseg up`?); `microseg policy apply` the file again")
                    elif gens.get(k["prog_id"]) != k["generation"]:
                        notes.append(f"note: build {k['prog_id']} holds generation {k['generation']}, not the "
                                     f"stored copy's ({gens.get(k['prog_id'], 'never applied there')}); "
                                     f"`microseg policy apply` it again")
    e = pf.explain(pol, src, dst, proto, port, sport, args.hook)
    if args.json:
        print(json.dumps({**e, "policy": where, "notes": notes}, indent=2))
    else:
        print(pf.explain_text(e, where))
        for n in notes:
            print(n)
    return 0


def _policy_apply(args) -> int:
    require_privileges("applying a policy")
    from appliance import policyfile as pf
    from datapath import sessions
    from datapath.policy_maps import PolicyMaps

    # Check and compile first: a bad file changes nothing.
    model, pol, text = pf.compile_file(args.file, allow_empty=args.allow_empty)
    _print_warnings(args.file, pol)
    from appliance.ownership import apply_through_daemon
    from datapath import owner
    daemon = owner.daemon(args.netns)
    if daemon is not None:      # its reload path, or one line saying how
        for line in apply_through_daemon(args.netns, args.file, daemon):
            print(line)
        return 0
    own(args.netns, "policy apply")
    builds = _open_builds(args.netns)
    done = []
    lock = None
    try:
        types = sessions.layouts()
        maps = [(b, PolicyMaps.for_build(b, types)) for b in builds]   # every build checked first
        # One apply at a time per namespace: two would both build "generation
        # + 1" in the same spare slot, and the stored copy could name the loser.
        lock = pf.lock_applied(args.netns)
        for b, pm in maps:
            st = pm.apply(pol)
            done.append({"prog_id": b.prog_id, "generation": st.gen, "slot": st.slot})
    finally:
        for b in builds:
            b.close()
        if done:
            pf.store_applied(args.netns, text, args.file, done, pf.summary(model, pol))
        if lock is not None:
            lock.close()
    from datapath import attach

    managed = sorted({a.iface for a in attach.attached(args.netns)})
    if managed:
        print(sync_blocklist(list(getattr(pol, "blocklist", [])), managed, args.netns))
    s = pf.summary(model, pol)
    for d in done:
        print(f"applied {args.file} to build {d['prog_id']} in {_where(args.netns)}: generation "
              f"{d['generation']} (slot {d['slot']}); {s['rule_entries']} rule entries, "
              f"{s['exact_entries']} exact entries, {s['prefixes']} prefixes")
    return 0


def _policy_diff(args) -> int:
    from appliance import policyfile as pf

    model, _, _ = pf.compile_file(args.file, allow_empty=True)
    if args.against:
        old, _, _ = pf.compile_file(args.against, allow_empty=True)
        against = args.against
    else:
        applied = pf.read_applied(args.netns)
        old = pf.load_text(applied.text, applied.path) if applied else None
        against = (f"the policy applied in {_where(args.netns)} ({applied.meta.get('applied_at', '?')}, "
                   f"from {applied.meta.get('file', '?')})" if applied
                   else f"no policy applied in {_where(args.netns)}")
    lines = pf.diff(old, model)
    if args.json:
        print(json.dumps({"file": args.file, "against": against, "changes": lines}, indent=2))
        return 0
    print(f"{args.file} against {against}:")
    print("\n".join(f"  {ln}" for ln in lines) if lines else "  no changes")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="microseg", description="eBPF micro-segmentation and DPI for Linux gateways")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("preflight", help="probe the running kernel for the features microseg uses")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_preflight)

    for name, func, hlp in (("up", cmd_up, "attach the fast path (replaces a running one in place)"),
                            ("down", cmd_down, "detach the fast path (only microseg's filters)")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("--iface", nargs="+", required=True, metavar="IF")
        s.add_argument("--netns", help="network namespace of the interfaces (default: this one)")
        if name == "up":
            s.add_argument("--config", metavar="FILE",
                           help="datapath settings (YAML): table sizes, timeouts, actions, budgets")
            s.add_argument("--flow-table-size", type=int, help="sessions the table holds (default 524288)")
            s.add_argument("--policy", metavar="FILE",
                           help="policy to enforce from the first packet (default: the one last applied here)")
            s.add_argument("--fresh-state", action="store_true",
                           help="start with empty tables instead of the pinned sessions and counters")
        else:
            s.add_argument("--keep-state", action="store_true",
                           help="keep the pinned sessions and counters for the next `up`")
        s.set_defaults(func=func)

    s = sub.add_parser("status", help="what is attached where, program ids, session table use, map sizes")
    s.add_argument("--netns")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("stats", help="packets passed and dropped, by hook and reason")
    s.add_argument("--netns", help="network namespace microseg is attached in (default: this one)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("sessions", help="list sessions (both tables), like conntrack -L")
    s.add_argument("--netns", help="network namespace microseg is attached in (default: this one)")
    s.add_argument("--src", metavar="ADDR[/LEN]", help="initiator address or network")
    s.add_argument("--dst", metavar="ADDR[/LEN]", help="responder address or network")
    s.add_argument("--port", metavar="PORT", help="either endpoint's port (ICMP: the echo id)")
    s.add_argument("--state", metavar="STATE", help="e.g. ESTABLISHED, TIME_WAIT, SYN_SENT, UDP_REPLIED")
    s.add_argument("--proto", metavar="PROTO", help="tcp, udp, icmp, icmpv6 or a number")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sessions)

    s = sub.add_parser("sweep", help="delete expired sessions now (one sweeper pass) and print what it did")
    s.add_argument("--netns", help="network namespace microseg is attached in (default: this one)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("policy", help="L4 policy: check, explain, apply, diff a policy file",
                       description="L4 micro-segmentation policy (groups, rules, overrides, defaults).\n\n"
                       "Precedence\n" + _precedence(), formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = s.add_subparsers(dest="policy_cmd", required=True)
    pc = psub.add_parser("check", help="validate and compile a policy file (no kernel needed)")
    pc.add_argument("file", metavar="FILE")
    pc.add_argument("--json", action="store_true")
    pe = psub.add_parser("explain", help="which rule decides a new flow, and how it was found")
    pe.add_argument("src", metavar="SRC")
    pe.add_argument("dst", metavar="DST")
    pe.add_argument("proto", metavar="PROTO", help="tcp, udp, icmp, icmpv6 or a number")
    pe.add_argument("port", metavar="PORT", help="destination port (ICMP: the echo id)")
    pe.add_argument("--sport", help="source port (default 0: only overrides for any source port match)")
    pe.add_argument("--hook", choices=("ingress", "egress"), default="ingress",
                    help="hook the flow is first seen on (its default applies)")
    src = pe.add_mutually_exclusive_group()
    src.add_argument("--file", metavar="FILE", help="explain from this file, not from the applied policy")
    src.add_argument("--netns", help="the policy applied in this network namespace (default: this one)")
    pe.add_argument("--json", action="store_true")
    pa = psub.add_parser("apply", help="check, compile and load a policy atomically (a bad file changes nothing)")
    pa.add_argument("file", metavar="FILE")
    pa.add_argument("--netns", help="network namespace microseg is attached in (default: this one)")
    pa.add_argument("--allow-empty", action="store_true",
                    help="apply a policy without rules, overrides or defaults (it denies every flow)")
    pd = psub.add_parser("diff", help="groups, defaults, rules and overrides added / removed / changed")
    pd.add_argument("file", metavar="FILE")
    dsrc = pd.add_mutually_exclusive_group()
    dsrc.add_argument("--netns", help="against the policy applied in this namespace (default: this one)")
    dsrc.add_argument("--against", metavar="OLD", help="against another file")
    pd.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_policy)

    s = sub.add_parser("run", help="the live appliance: attach, inspect, log, serve metrics "
                                   "(SIGHUP reloads policy and rules; SIGTERM leaves the programs attached)")
    s.add_argument("--config", required=True, metavar="FILE", help="run configuration (YAML)")
    s.add_argument("--detach-on-exit", action="store_true",
                   help="detach the programs when stopped (default: they stay, as `microseg down` is what detaches)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("deploy", help="new build (and policy): preflight, snapshot, verify, canary, gradual "
                                      "rollout with gates, automatic rollback")
    s.add_argument("--iface", nargs="+", required=True, metavar="IF")
    s.add_argument("--netns", help="network namespace of the interfaces (default: this one)")
    s.add_argument("--config", metavar="FILE", help="datapath settings (YAML)")
    s.add_argument("--policy", metavar="FILE", help="policy to deploy with the build (default: the applied one)")
    s.add_argument("--canary", metavar="IF", help="interface that gets the new build first (default: the first)")
    s.add_argument("--soak", type=float, default=10.0, metavar="S", help="seconds each step runs before its gates")
    s.add_argument("--min-packets", type=int, default=1, metavar="N",
                   help="traffic gate: packets the gateway must carry during a soak")
    s.add_argument("--max-drop-ratio", type=float, default=0.01, metavar="R",
                   help="drop gate: dropped / all packets during a soak (default 0.01)")
    s.add_argument("--max-verdict-p99-ms", type=float, metavar="MS",
                   help="latency gate: the slow path's verdict p99 (needs --metrics)")
    s.add_argument("--metrics", metavar="URL", help="the slow path's metrics endpoint, e.g. http://127.0.0.1:9477/")
    s.set_defaults(func=cmd_deploy)

    s = sub.add_parser("rollback", help="put the build and policy of the last deploy's snapshot back")
    s.add_argument("--netns", help="network namespace (default: this one)")
    s.set_defaults(func=cmd_rollback)

    s = sub.add_parser("replay", help="a capture through the real fast path and the slow path, EVE out")
    s.add_argument("pcap", metavar="PCAP")
    s.add_argument("--eve", required=True, metavar="OUT", help="EVE JSON lines file to write ('-': stdout)")
    s.add_argument("--policy", metavar="FILE", help="policy (default: inspect every flow)")
    s.add_argument("--rules", metavar="FILE", help="WAF / DLP / domain rules")
    s.add_argument("--config", metavar="FILE", help="datapath settings (failure actions, simulate, ...)")
    s.add_argument("--inspect-budget", type=int, metavar="BYTES",
                   help="payload bytes inspected per side of a flow (default 1 MiB)")
    s.add_argument("--json", action="store_true", help="the summary as JSON")
    s.set_defaults(func=cmd_replay)

    s = sub.add_parser("lab", help="a client / gateway / server lab in network namespaces")
    labsub = s.add_subparsers(dest="lab_cmd", required=True)
    lu = labsub.add_parser("up", help="build a lab (prints its tag)")
    lu.add_argument("--tag", help="lab name (default: random)")
    ld = labsub.add_parser("down", help="remove a lab")
    ld.add_argument("--tag")
    ld.add_argument("--all", action="store_true", help="remove every microseg lab")
    labsub.add_parser("demo", help="build a lab, attach, send traffic, show counters, clean up")
    s.set_defaults(func=cmd_lab)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settle_namespace(args)
        return args.func(args)
    except MicrosegError as e:
        if callable(getattr(e, "lines", None)):
            # a file with errors (configfile.FileErrors): one "file:line: message" line each
            for line in e.lines():
                print(line, file=sys.stderr)
        else:
            print(f"microseg: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("microseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
