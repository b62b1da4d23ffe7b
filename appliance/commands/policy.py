"""`microseg policy check|explain|apply|diff` (policy files:
appliance/policyfile.py; model, checks and compiler: datapath/policy_model.py,
policy_check.py, policy_compile.py)."""
from __future__ import annotations

import json
import os
import sys

from appliance.commands.common import namespace_text, open_builds, require_privileges
from appliance.ownership import own
from appliance.xdp import sync_blocklist
from datapath.errors import MicrosegError, UsageError
from datapath.flows import parse_proto


def cmd_policy(args) -> int:
    return {"check": _policy_check, "explain": _policy_explain, "apply": _policy_apply,
            "diff": _policy_diff}[args.policy_cmd](args)


def _print_warnings(path, pol) -> None:
    for line, msg in pol.warnings:
        print(f"{path}:{line}: warning: {msg}", file=sys.stderr)


def _policy_check(args) -> int:
    from appliance import policyfile as pf

    model, pol, _ = pf.compile_file(args.file, allow_empty=True)     # warned, not refused: nothing is applied
    _print_warnings(args.file, pol)
    s = pf.summary(model, pol)
    print(json.dumps({"file": args.file, **s}, indent=2) if args.json else pf.summary_text(args.file, s))
    return 0


def _kernel_policy_states(netns) -> list[dict] | str:
    """Generation and slot of the policy each attached build holds, or why unknown."""
    from datapath import sessions
    from datapath.policy_maps import PolicyMaps

    try:
        builds = sessions.open_builds(netns)
    except (MicrosegError, OSError) as e:
        return str(e).splitlines()[0]
    if not builds:
        return f"microseg is not attached in {namespace_text(netns)}"
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
    proto = parse_proto(args.proto, "PROTO")
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
            where = f"none applied by microseg in {namespace_text(args.netns)}"
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
    if pol is not None:
        l7 = l7_allow_list(model, e)
        if l7 is not None:
            e["l7"] = l7
    if args.json:
        print(json.dumps({**e, "policy": where, "notes": notes}, indent=2))
    else:
        print(pf.explain_text(e, where))
        if e.get("l7"):
            print(l7_text(e["l7"]))
        for n in notes:
            print(n)
    return 0


def l7_entry_text(proto: str, entry) -> str:
    """One allow-list entry as `explain` shows it."""
    if proto in ("dns", "tls"):          # names
        return entry
    if proto == "grpc":
        return f"{entry.service}/{entry.method or '*'}"
    if proto == "kafka":
        return ", ".join([f"role {entry.role}" if entry.role else
                          f"api {entry.api_key}" if entry.api_key is not None else "any api",
                          f"version {entry.api_version}" if entry.api_version is not None else "any version",
                          f"client {entry.client_id}" if entry.client_id is not None else "any client",
                          f"topic {entry.topic}" if entry.topic is not None else "any topic"])
    parts = [f"method {entry.method}" if entry.method else "any method",
             f"path {entry.path}" if entry.path else "any path"]
    if entry.host:
        parts.append(f"host {entry.host}")
    for h in entry.headers or ():
        parts.append(f"header {h!r}")
    return ", ".join(parts)


def l7_allow_list(model, e: dict) -> dict | None:
    """The L7 allow-list of the rule that decides ``e`` (explain's result):
    {protocol: [{"line": n, "allow": text, "entry": fields}]}, the mode
    its flows are inspected in; None when that rule has none."""
    r = e.get("rule")
    if not r or r.get("kind") != "rule" or not 0 < r["id"] <= len(model.rules):
        return None
    i = r["id"] - 1
    rule = model.rules[i]
    if rule.l7 is None:
        return None
    out = {"mode": rule.effective_inspect().mode}
    for proto in rule.l7.protocols():
        out[proto] = [{"line": model.line("rules", i, "l7", proto, j), "allow": l7_entry_text(proto, x),
                       "entry": x if isinstance(x, str) else x.model_dump(exclude_none=True)}
                      for j, x in enumerate(getattr(rule.l7, proto))]
    return out


def l7_text(l7: dict) -> str:
    lines = []
    for proto in ("http", "grpc", "dns", "tls", "kafka"):
        for x in l7.get(proto, ()):
            lines.append(f"{'l7 allow:' if not lines else '':<13}{proto}: {x['allow']} (line {x['line']})")
    lines.append(f"{'':<13}any other request, query or protocol is blocked "
                 f"({'held: it never reaches the server' if l7['mode'] == 'hold' else 'async: the flow is reset'})")
    return "\n".join(lines)


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
    builds = open_builds(args.netns)
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
            pf.store_applied(args.netns, text, args.file, done, pf.summary(model, pol), pf.rule_names(pol))
        if lock is not None:
            lock.close()
    from datapath import attach

    managed = sorted({a.iface for a in attach.attached(args.netns)})
    if managed:
        print(sync_blocklist(list(getattr(pol, "blocklist", [])), managed, args.netns))
    s = pf.summary(model, pol)
    for d in done:
        print(f"applied {args.file} to build {d['prog_id']} in {namespace_text(args.netns)}: generation "
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
        against = (f"the policy applied in {namespace_text(args.netns)} ({applied.meta.get('applied_at', '?')}, "
                   f"from {applied.meta.get('file', '?')})" if applied
                   else f"no policy applied in {namespace_text(args.netns)}")
    lines = pf.diff(old, model)
    if args.json:
        print(json.dumps({"file": args.file, "against": against, "changes": lines}, indent=2))
        return 0
    print(f"{args.file} against {against}:")
    print("\n".join(f"  {ln}" for ln in lines) if lines else "  no changes")
    return 0

