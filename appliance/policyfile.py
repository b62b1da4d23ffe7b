"""Policy files for the operator: load with line numbers, compile, explain,
keep a copy of what was applied, and diff against it.

``load()`` validates a file with pydantic (the model is datapath/policy_model.py,
the checks datapath/policy_check.py) and reports every error as ``file:line: message``
(FileErrors). What `microseg policy apply` loaded into a namespace is kept
under /run/microseg/<netns or host>/: policy.yaml (the file's text, so
`explain` and `diff` read exactly what was applied, line numbers included)
and policy.json (generation and slot per build, when, from which file).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from datapath import attach
from datapath.errors import MicrosegError, UsageError
from datapath.policy_compile import compile_policy, group_of, override_text, rule_text
from datapath.policy_model import PolicyError, PolicyFile, field_name
from datapath.flows import PROTO_NAMES
from datapath.policy_tables import (GROUP_ANY, POL, POL_NAMES, CompiledPolicy, Decision, Verdict,
                                    decide, no_gc)

from datapath.configfile import MAX_POLICY_BYTES, FileErrors, duplicate_keys, parse_yaml, read_text, validation_errors


def load_text(text: str, path: str | Path) -> PolicyFile:
    """Validate a policy text; FileErrors with every error, each with its line."""
    with no_gc():     # a long policy is millions of objects: no collections while they are made
        root, data = parse_yaml(text, path)
        try:
            model = PolicyFile.model_validate(data)
        except ValidationError as e:
            raise FileErrors(path, validation_errors(e, root, field_name)) from None
        model._root = root
        model._dup_keys = duplicate_keys(root)
    return model


def load(path: str | Path) -> PolicyFile:
    return load_text(read_text(path, MAX_POLICY_BYTES), path)


# A policy without rules, overrides or defaults denies every flow (the
# defaults' defaults are deny): on an inline gateway that is an outage, and
# an empty file (a failed copy, a wrong path in a template) is the usual way
# to get one. `check` warns; whatever puts a policy in force refuses it
# unless the operator says so (`policy apply --allow-empty`, or defaults
# written out).
EMPTY_POLICY = "no rules, overrides or defaults: this policy denies every flow"


def denies_all_unwritten(model: PolicyFile) -> bool:
    return not model.rules and not model.overrides and not model.defaults.model_fields_set


def compile_text(text: str, path: str | Path) -> tuple[PolicyFile, CompiledPolicy]:
    """Load and compile; FileErrors names every error's line."""
    with no_gc():     # one collection after both steps, not one after each
        model = load_text(text, path)
        try:
            pol = compile_policy(model, source=str(path))
        except PolicyError as e:
            raise FileErrors(path, e.errors) from None
    if denies_all_unwritten(model):
        pol.warnings.insert(0, (1, EMPTY_POLICY))
    return model, pol


def compile_file(path: str | Path, *, allow_empty: bool = False) -> tuple[PolicyFile, CompiledPolicy, str]:
    """Read (size and encoding checked: configfile.read_text), load and
    compile a policy file. A policy that denies every flow without saying so
    (EMPTY_POLICY) is refused unless ``allow_empty``: every caller that puts
    the policy in force (up, deploy, run, apply) leaves it False."""
    text = read_text(path, MAX_POLICY_BYTES)
    model, pol = compile_text(text, path)
    if not allow_empty and denies_all_unwritten(model):
        raise FileErrors(path, [(1, f"{EMPTY_POLICY}; refused (write `defaults: {{ingress: deny, egress: deny}}` "
                                    f"if that is meant, or `microseg policy apply --allow-empty`)")])
    return model, pol, text


def summary(model: PolicyFile, pol: CompiledPolicy) -> dict:
    named = [g for g in pol.group_names if g not in (0, GROUP_ANY) and not pol.group_names[g].startswith("cidr:")]
    return {
        "groups": len(named),
        "cidr_groups": len(pol.group_names) - 2 - len(named),
        "prefixes": len(pol.groups),
        "rules": len(model.rules),
        "overrides": len(model.overrides),
        "rule_entries": len(pol.rules),
        "exact_entries": len(pol.exact),
        "defaults": {h: POL_NAMES[v.action] for h, v in pol.defaults.items()},
    }


def summary_text(path, s: dict) -> str:
    return (f"{path}: ok: {s['groups']} groups ({s['cidr_groups']} more from CIDRs in rules, "
            f"{s['prefixes']} prefixes), {s['rules']} rules, {s['overrides']} overrides -> "
            f"{s['rule_entries']} rule entries, {s['exact_entries']} exact entries; defaults: "
            f"ingress {s['defaults']['ingress']}, egress {s['defaults']['egress']}")


# -- explain -----------------------------------------------------------------------

def parse_port(text: str | int, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if not 0 <= v <= 65535:
        raise UsageError(f"{what} {text!r}: a number 0-65535")
    return v


def parse_addr(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UsageError(f"{what} {text!r} is not an IPv4 or IPv6 address") from None


# Protocols the fast path decides flows of (bpf/fastpath.c: TCP, UDP, ICMP / ICMPv6 echo).
DECIDED_PROTOS = (6, 17, 1, 58)

REASONS = {  # the reason counter the kernel counts for a new flow's first packet (policy.h)
    ("allow", True): "PASS_POLICY_ALLOW", ("allow", False): "PASS_POLICY_DEFAULT",
    ("deny", True): "DROP_POLICY_DENY", ("deny", False): "DROP_POLICY_DEFAULT",
    ("inspect", True): "PASS_POLICY_INSPECT", ("inspect", False): "PASS_POLICY_INSPECT",
    ("none", True): "PASS_FORWARD", ("none", False): "PASS_FORWARD",
}
OTHER_L4 = "PASS_OTHER_L4"


def expected_reason(d: Decision) -> str:
    if d.how.startswith("not decided"):
        return OTHER_L4
    return REASONS[(POL_NAMES[d.verdict.action], d.verdict.rule_id != 0)]


def explain(pol: CompiledPolicy | None, src: str, dst: str, proto: int, dport: int,
            sport: int = 0, hook: str = "ingress") -> dict:
    """What decides a new flow, as a dict (`microseg policy explain --json`)."""
    d = decide(pol, src, dst, proto, dport, sport, hook)
    if pol is not None and proto not in DECIDED_PROTOS:
        d = Decision(Verdict(POL["POL_NONE"]), f"not decided: the fast path passes IP protocol {proto} "
                                               f"without a policy decision (PASS_OTHER_L4)")
    out = {"flow": {"src": src, "sport": sport, "dst": dst, "dport": dport, "proto": proto, "hook": hook},
           "action": POL_NAMES[d.verdict.action], "found_by": d.how, "kernel_reason": expected_reason(d),
           "rule": None}
    if pol is None:
        return out
    for side, addr in (("source", src), ("destination", dst)):
        gid, prefix = group_of(pol, addr)
        out[side] = {"address": addr, "group": pol.group_names.get(gid, str(gid)), "group_id": gid,
                     "prefix": prefix}
    v = d.verdict
    if v.rule_id:
        info = pol.rule_info.get(v.rule_id)
        r = {"id": v.rule_id, "name": info.name if info else "", "line": info.line if info else 0,
             "text": info.text if info else "", "kind": info.kind if info else "rule"}
        if info and info.kind == "rule":
            via = []
            for side, gid, written in (("source", d.sgroup, info.src_groups),
                                       ("destination", d.dgroup, info.dst_groups)):
                if GROUP_ANY in written or gid in written:
                    continue
                via.append(f"the {side} group {pol.group_names.get(gid, gid)} is nested in "
                           f"{' / '.join(pol.group_names[g] for g in written)}")
            r["inherited"] = via
        out["rule"] = r
    else:
        out["default_line"] = pol.default_lines.get(hook, 0)
    out["inspect"] = v.inspect
    out["app"] = v.app
    out["log"] = bool(v.log)
    return out


def explain_text(e: dict, where: str) -> str:
    f = e["flow"]
    pname = PROTO_NAMES.get(f["proto"], str(f["proto"]))

    def ep(a, p):
        return (f"[{a}]" if ":" in a else a) + f":{p}"
    lines = [f"flow:        {ep(f['src'], f['sport'])} -> {ep(f['dst'], f['dport'])} {pname}, "
             f"first seen on {f['hook']}",
             f"policy:      {where}"]
    if "source" in e:
        for side in ("source", "destination"):
            s = e[side]
            grp = f"group {s['group']} (id {s['group_id']}, prefix {s['prefix']})" if s["prefix"] else \
                "no group: the world (id 0)"
            lines.append(f"{side + ':':<13}{s['address']} in {grp}")
    how = e["found_by"]
    if e["rule"]:
        r = e["rule"]
        name = f" {r['name']}" if r["name"] else ""
        lines.append(f"found by:    {how}")
        lines.append(f"decided by:  {r['kind']} {r['id']}{name}, line {r['line']}: {r['text']}")
        for via in r.get("inherited", []):
            lines.append(f"             (applies because {via})")
    elif how.startswith("default"):
        ln = e.get("default_line")
        lines.append(f"found by:    no override or rule matches: {how}"
                     + (f" (defaults, line {ln})" if ln else " (not written: deny)"))
    elif how.startswith("not decided"):
        lines.append(f"found by:    {how}")
    else:
        lines.append(f"found by:    {how}: every flow passes")
    extra = []
    if e.get("inspect"):
        extra.append(f"inspect bits 0x{e['inspect']:02x}")
    if e.get("app"):
        extra.append(f"app id {e['app']}")
    if e.get("log"):
        extra.append("logged")
    lines.append(f"action:      {e['action']}" + (f" ({', '.join(extra)})" if extra else "")
                 + f"; the kernel counts {e['kernel_reason']}")
    return "\n".join(lines)


# -- what was applied --------------------------------------------------------------

def state_dir(netns: str | None) -> Path:
    return attach.RUN_DIR / (netns or "host")


@dataclass
class Applied:
    text: str
    meta: dict
    path: Path          # the stored copy (line numbers refer to it and to the original alike)


def read_applied(netns: str | None) -> Applied | None:
    d = state_dir(netns)
    try:
        text = (d / "policy.yaml").read_text()
        meta = json.loads((d / "policy.json").read_text())
    except (OSError, ValueError):
        return None
    return Applied(text, meta, d / "policy.yaml")


# `policy apply` without a daemon serialises on this file in state_dir().
APPLY_LOCK = ".lock"


def lock_applied(netns: str | None):
    """An exclusive lock on the namespace's policy state (held until closed)."""
    import fcntl

    d = state_dir(netns)
    d.mkdir(parents=True, exist_ok=True)
    f = open(d / APPLY_LOCK, "w")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def remove_apply_lock(netns: str | None) -> None:
    """Remove the apply lock file, and the namespace's directory if nothing
    else is in it (the applied policy, when there is one, stays). Only for
    a holder of the namespace's owner lock: every `policy apply` that takes
    this lock holds that one first, so none can be waiting on the file."""
    d = state_dir(netns)
    try:
        (d / APPLY_LOCK).unlink()
    except FileNotFoundError:
        pass
    try:
        d.rmdir()
    except OSError:         # not empty (the applied policy) or not there
        pass


def last_generation(netns: str | None) -> int:
    """The highest policy generation the applied record knows in ``netns``
    (0: none): where a new build's generations continue."""
    applied = read_applied(netns)
    if applied is None:
        return 0
    return max((int(b.get("generation", 0)) for b in applied.meta.get("builds", [])), default=0)


def store_applied(netns: str | None, text: str, source: str, builds: list[dict], summ: dict,
                  names: dict | None = None) -> Path:
    """Keep the applied text and where it went; written whole, then renamed.
    ``names``: rule id -> name (rule_names()), kept so `microseg sessions`
    names each session's rule without compiling the policy again."""
    d = state_dir(netns)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"file": os.path.abspath(source), "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "applied_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "netns": netns, "builds": builds,
            "summary": summ}
    if names is not None:
        meta["rule_names"] = {str(k): v for k, v in names.items()}
    for name, body in (("policy.yaml", text), ("policy.json", json.dumps(meta, indent=2) + "\n")):
        tmp = d / f".{name}.tmp"
        tmp.write_text(body)
        os.replace(tmp, d / name)
    return d


def rule_names(pol: CompiledPolicy) -> dict[int, str]:
    """Rule id -> name of a compiled policy's named rules and overrides."""
    return {rid: info.name for rid, info in pol.rule_info.items() if info.name}


def applied_rule_names(netns: str | None) -> dict[int, str]:
    """Rule id -> name of the policy applied in ``netns`` ({} without one):
    the stored names, or, for a record from before they were stored, the
    stored text compiled again. Never raises: names are a courtesy."""
    applied = read_applied(netns)
    if applied is None:
        return {}
    names = applied.meta.get("rule_names")
    try:
        if isinstance(names, dict):
            return {int(k): str(v) for k, v in names.items()}
        return rule_names(compile_text(applied.text, applied.path)[1])
    except (MicrosegError, ValueError, TypeError):
        return {}


# -- diff --------------------------------------------------------------------------

def _rule_key(r, i: int):
    """A rule's identity across versions: its name, else what it matches."""
    if r.name:
        return ("name", r.name)
    return ("match", tuple(r.ends("from")), tuple(r.ends("to")), r.proto, tuple(r.ports or ()))


def _ovr_key(o):
    if o.name:
        return ("name", o.name)
    return ("match", str(ipaddress.ip_address(o.src)), str(ipaddress.ip_address(o.dst)), o.proto, o.dport, o.sport)


def diff(old: PolicyFile | None, new: PolicyFile) -> list[str]:
    """Lines: '+' added, '-' removed, '~' changed (groups, defaults, rules, overrides)."""
    out = []
    og = old.groups if old else {}
    for name, members in new.groups.items():
        if name not in og:
            out.append(f"+ group {name}: {', '.join(members or [])} (line {new.line('groups', name, key=True)})")
        elif _norm(og[name]) != _norm(members):
            before, after = _norm(og[name]), _norm(members)
            ch = [f"+{m}" for m in after if m not in before] + [f"-{m}" for m in before if m not in after]
            out.append(f"~ group {name}: {' '.join(ch)} (line {new.line('groups', name, key=True)})")
    for name, members in og.items():
        if name not in new.groups:
            out.append(f"- group {name}: {', '.join(members or [])}")
    if old:
        for hook in ("ingress", "egress"):
            a, b = getattr(old.defaults, hook), getattr(new.defaults, hook)
            if a != b:
                out.append(f"~ default {hook}: {a} -> {b}")
    else:
        out.append(f"+ defaults: ingress {new.defaults.ingress}, egress {new.defaults.egress}")

    for kind, olds, news, key, text in (("rule", old.rules if old else [], new.rules, _rule_key, rule_text),
                                        ("override", old.overrides if old else [], new.overrides, _ovr_key,
                                         override_text)):
        sec = "rules" if kind == "rule" else "overrides"
        before = {key(r, i) if kind == "rule" else key(r): (i, r) for i, r in enumerate(olds)}
        after = {key(r, i) if kind == "rule" else key(r): (i, r) for i, r in enumerate(news)}
        for k, (i, r) in after.items():
            label = f"{kind} {r.name}" if r.name else kind
            line = new.line(sec, i)
            if k not in before:
                out.append(f"+ {label} (line {line}): {text(r)}")
            else:
                j, o = before[k]
                if text(o) != text(r):
                    out.append(f"~ {label} (line {line}): {text(o)}  ->  {text(r)}")
                elif getattr(o, "l7", None) != getattr(r, "l7", None):     # the text counts entries only
                    out.append(f"~ {label} (line {line}): l7 allow-list changed: {text(r)}")
        for k, (i, r) in before.items():
            if k not in after:
                label = f"{kind} {r.name}" if r.name else kind
                out.append(f"- {label} (was line {old.line(sec, i)}): {text(r)}")
    return out


def _norm(members) -> list[str]:
    out = []
    for m in members or []:
        try:
            out.append(str(ipaddress.ip_network(m, strict=False)))
        except ValueError:
            out.append(str(m))
    return out


__all__ = ["FileErrors", "POL", "load", "load_text", "compile_file", "compile_text", "explain",
           "explain_text", "diff", "read_applied", "store_applied", "summary", "summary_text",
           "rule_names", "applied_rule_names"]
