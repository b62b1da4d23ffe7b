"""The slow path's rule file: its model, and the loader that validates and compiles it.

Rule file
---------
YAML; every section is optional::

    waf:
      # Built-in signature sets (below) and what a hit does: block, alert or
      # off. A set not listed is off.
      sets: {sqli: block, xss: block, traversal: block, cmdi: alert}
      # Custom signatures: Hyperscan regular expressions (PCRE syntax without
      # backreferences or lookaround), always caseless, '.' matching newlines.
      signatures:
        - id: 900001                 # signature id in logs; unique, not 100000-399999
          name: admin path
          pattern: "^/admin"
          fields: [uri]              # uri, args, headers, body (default [uri])
          action: block              # block | alert (default block)
          severity: 2                # 1 (high) .. 3 (low), as Suricata (default 2)
          category: custom           # optional label for the log (default custom)
    dlp:
      - name: no-cards-out
        detectors: [credit_card, us_ssn, aws_access_key, pem_private_key]
        direction: response          # request | response | both (default both)
        action: block                # default block
        severity: 1                  # default 1
    domains:
      - name: blocked
        id: 900100                   # optional: default 300000 + position in the list
        match: [evil.example, "*.malware.test"]
        fields: [http_host, tls_sni, dns_query]   # default: all three
        action: block                # default block
        severity: 2                  # default 2

:func:`load_rules` validates the whole file, compiles every WAF pattern into
one Hyperscan database and raises :class:`RulesError` listing every problem
as ``FILE:LINE: what is wrong``; loading is the validation.

What each section does: slowpath/waf.py, dlp.py, domains.py; how a flow is
inspected against the loaded :class:`~slowpath.inspector.RuleSet`: slowpath/inspector.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import hyperscan
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from datapath.configfile import (MAX_RULES_BYTES, FileErrors, duplicate_keys, node_line, parse_yaml, read_text,
                                  validation_errors)
from protocols.api import Direction
from slowpath.dlp import DETECTORS, DlpRule
from slowpath.domains import DOMAIN_DEFAULT_ID, DOMAIN_FIELDS, DomainRule, check_domain_pattern
from slowpath.hits import RESERVED_IDS
from slowpath.inspector import RuleSet
from slowpath.waf import BUILTIN_SIGNATURES, ActiveSignature, WafSignature, hs_check, hs_error


# --- The rule file's model -------------------------------------------------------

class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _none_is_default(cls, v, info):
    """An empty section (``dlp:`` with nothing under it) is YAML null: the default."""
    return v if v is not None else _DEFAULTS[info.field_name]()


class SignatureSpec(_Model):
    id: StrictInt = Field(ge=1, le=2**32 - 1)
    name: StrictStr = Field(min_length=1, max_length=100)
    pattern: StrictStr = Field(min_length=1, max_length=4096)
    fields: list[Literal["uri", "args", "headers", "body"]] = Field(default_factory=lambda: ["uri"],
                                                                    min_length=1)
    action: Literal["block", "alert"] = "block"
    severity: StrictInt = Field(2, ge=1, le=3)
    category: StrictStr = Field("custom", pattern=r"^[a-z][a-z0-9_-]{0,31}$")


class WafSpec(_Model):
    sets: dict[Literal["sqli", "xss", "traversal", "cmdi"], Literal["block", "alert", "off"]] = Field(
        default_factory=dict)
    signatures: list[SignatureSpec] = Field(default_factory=list)
    none_is_default = field_validator("sets", "signatures", mode="before")(_none_is_default)


class DlpSpec(_Model):
    name: StrictStr = Field(min_length=1, max_length=100)
    detectors: list[StrictStr] = Field(min_length=1)
    direction: Literal["request", "response", "both"] = "both"
    action: Literal["block", "alert"] = "block"
    severity: StrictInt = Field(1, ge=1, le=3)


class DomainSpec(_Model):
    name: StrictStr = Field(min_length=1, max_length=100)
    id: StrictInt | None = Field(None, ge=1, le=2**32 - 1)
    match: list[StrictStr] = Field(min_length=1)
    fields: list[Literal["http_host", "tls_sni", "dns_query"]] = Field(
        default_factory=lambda: list(DOMAIN_FIELDS), min_length=1)
    action: Literal["block", "alert"] = "block"
    severity: StrictInt = Field(2, ge=1, le=3)


class RulesSpec(_Model):
    waf: WafSpec = Field(default_factory=WafSpec)
    dlp: list[DlpSpec] = Field(default_factory=list)
    domains: list[DomainSpec] = Field(default_factory=list)
    none_is_default = field_validator("waf", "dlp", "domains", mode="before")(_none_is_default)


_DEFAULTS = {"sets": dict, "signatures": list, "waf": WafSpec, "dlp": list, "domains": list}


def where(loc: tuple) -> str:
    """A location in the file as an operator reads it: "dlp rule 2: detectors[1]"."""
    loc = tuple(p for p in loc if p != "[key]")
    heads = {("waf", "signatures"): "waf signature", ("dlp",): "dlp rule", ("domains",): "domain rule"}
    for prefix, label in heads.items():
        n = len(prefix)
        if loc[:n] == prefix and len(loc) > n and isinstance(loc[n], int):
            rest = "".join(f"[{p + 1}]" if isinstance(p, int) else f".{p}" for p in loc[n + 1:]).lstrip(".")
            head = f"{label} {loc[n] + 1}"
            return f"{head}: {rest}" if rest else head
    return ".".join(str(p) for p in loc) or "(top level)"


# --- Errors ----------------------------------------------------------------------

class RulesError(FileErrors):
    """A rule file that does not load: every problem as ``FILE:LINE: message``
    (a UsageError: the CLI prints it and exits 2)."""

    @classmethod
    def unreadable(cls, path, why: str) -> "RulesError":
        err = cls(path, [])
        err.args = (f"{path}: cannot read: {why}",)
        return err


# --- Loading ---------------------------------------------------------------------------

def load_rules(path: str | Path) -> RuleSet:
    """Load, validate and compile a rule file; RulesError lists every problem."""
    # size limit and encoding checked as for every file microseg reads
    return load_rules_text(read_text(path, MAX_RULES_BYTES, RulesError), path)


def load_rules_text(text: str, path: str | Path = "<rules>") -> RuleSet:
    """As :func:`load_rules`, from a text; ``path`` names it in errors."""
    try:
        root, data = parse_yaml(text, path)
    except FileErrors as e:
        # one line per error: some YAML messages span lines (a reader error
        # quotes the input on a second line)
        raise RulesError(path, [(line, " ".join(msg.split())) for line, msg in e.errors]) from None
    errors: list[tuple[int, str]] = []
    for loc, key, line, first in duplicate_keys(root):
        errors.append((line, f"{where((*loc, key))}: written twice (first on line {first}); "
                             f"YAML would keep only this one"))
    try:
        spec = RulesSpec.model_validate(data)
    except ValidationError as e:
        raise RulesError(path, errors + validation_errors(e, root, where)) from None

    def err(loc: tuple, msg: str) -> None:
        errors.append((node_line(root, loc), msg))

    sigs: list[ActiveSignature] = []
    for b in BUILTIN_SIGNATURES:
        act = spec.waf.sets.get(b.category, "off")
        if act != "off":
            sigs.append(ActiveSignature(b, act, True))

    ids: dict[int, int] = {}          # custom id -> line
    names: dict[str, int] = {}        # rule name -> line

    def unique(loc: tuple, label: str, rid: int | None, name: str) -> None:
        if rid is not None:
            if rid in RESERVED_IDS:
                err((*loc, "id"), f"{label}: id {rid}: {RESERVED_IDS.start}-{RESERVED_IDS.stop - 1} "
                                  f"are reserved for built-in signatures")
            elif rid in ids:
                err((*loc, "id"), f"{label}: duplicate id {rid} (first on line {ids[rid]})")
            else:
                ids[rid] = node_line(root, (*loc, "id"))
        if name in names:
            err((*loc, "name"), f"{label}: duplicate rule name {name!r} (first on line {names[name]})")
        else:
            names[name] = node_line(root, (*loc, "name"))

    for i, s in enumerate(spec.waf.signatures):
        loc = ("waf", "signatures", i)
        label = f"{where(loc)} ({s.name})"
        unique(loc, label, s.id, s.name)
        som, why = hs_check(s.pattern)
        if som is None:
            err((*loc, "pattern"), f"{label}: pattern: Hyperscan refuses {s.pattern!r}: {why}")
            continue
        sig = WafSignature(s.id, s.name, s.category, s.severity, s.pattern, frozenset(s.fields))
        sigs.append(ActiveSignature(sig, s.action, som))

    dlp: list[DlpRule] = []
    for i, r in enumerate(spec.dlp):
        loc = ("dlp", i)
        label = f"{where(loc)} ({r.name})"
        unique(loc, label, None, r.name)
        seen: list[str] = []
        for j, det in enumerate(r.detectors):
            if det not in DETECTORS:
                err((*loc, "detectors", j), f"{label}: detectors[{j + 1}]: unknown detector {det!r} "
                                            f"(known: {', '.join(DETECTORS)})")
            elif det in seen:
                err((*loc, "detectors", j), f"{label}: detectors[{j + 1}]: {det!r} is listed twice")
            else:
                seen.append(det)
        dirs = {"request": {Direction.TO_SERVER}, "response": {Direction.TO_CLIENT},
                "both": set(Direction)}[r.direction]
        dlp.append(DlpRule(r.name, tuple(seen), frozenset(dirs), r.action, r.severity))

    domains: list[DomainRule] = []
    for i, r in enumerate(spec.domains):
        loc = ("domains", i)
        label = f"{where(loc)} ({r.name})"
        unique(loc, label, r.id, r.name)
        for j, p in enumerate(r.match):
            why = check_domain_pattern(p)
            if why:
                err((*loc, "match", j), f"{label}: match[{j + 1}]: {why}")
        domains.append(DomainRule(r.id if r.id is not None else DOMAIN_DEFAULT_ID + i + 1, r.name,
                                  tuple(r.match), frozenset(r.fields), r.action, r.severity))

    if errors:
        raise RulesError(path, errors)
    try:
        return RuleSet(sigs, dlp, domains, source=str(path))
    except hyperscan.error as e:        # each pattern compiled alone; together they did not
        raise RulesError(path, [(node_line(root, ("waf",)),
                                 f"waf: Hyperscan cannot compile the signatures together: {hs_error(e)}")]) from None
