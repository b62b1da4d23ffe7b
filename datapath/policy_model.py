"""The policy file's model: what a policy file may say, as pydantic classes.

A policy file (YAML; loaded with line numbers by appliance/policyfile.py)
names groups of networks, per-hook defaults, rules between groups and exact
overrides. The model validates each field's type and form; what needs the
whole file (group names, addresses, ports, overlaps, nesting) is checked by
datapath/policy_check.py, and a checked model is compiled into kernel tables
by datapath/policy_compile.py, whose docstring states the precedence.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator

from .enums import INSPECT, INSPECT_BITS, enum_list
from .errors import UsageError
from .policy_tables import POL, Verdict

# enum ms_fail_action order (bpf/lib/maps.h): pass, drop, bypass.
FAIL_ACTIONS = tuple(e.name.removeprefix("FAIL_").lower() for e in enum_list("FAIL_ACTION"))


def app_ids() -> dict[str, int]:
    """Application protocols a rule may require (`app:`), name -> the id the
    kernel's L7 stage stores (struct ms_verdict.app): the built-in protocols
    and the installed plugins, as datapath/l7.py numbers them."""
    from protocols import registry

    from .l7 import app_ids as ids
    return ids(list(registry.default_plugins()))


def _none_empty(kind):
    def conv(v):
        return kind() if v is None else v
    return conv


class InspectSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    what: list[Literal["dpi", "waf", "dlp"]] = Field(default_factory=lambda: ["dpi"], min_length=1)
    mode: Literal["async", "hold"] = "async"
    # This rule's failure action (ring buffer full, budget used up, slow
    # path down); None: the configured failure_actions.
    on_failure: Literal["pass", "drop", "bypass"] | None = None

    def bits(self) -> int:
        b = 0
        for w in self.what:
            b |= INSPECT_BITS[w]
        if self.on_failure:
            b |= (1 + FAIL_ACTIONS.index(self.on_failure)) << INSPECT["FAIL_SHIFT"]
        return b | (INSPECT["HOLD"] if self.mode == "hold" else 0)


class HttpAllow(BaseModel):
    """One entry of a rule's HTTP allow-list (as Cilium's PortRuleHTTP): a
    request is allowed when every field the entry gives matches. Patterns
    are checked (and compiled) by datapath/policy_check.py; matched by
    slowpath/l7allow.py."""
    model_config = ConfigDict(extra="forbid")

    method: str | None = None          # a regex matched against the whole method ("GET", "GET|HEAD")
    path: str | None = None            # a regex matched against the whole normalised target ("/api/.*")
    host: str | None = None            # a name, or a pattern with `*` (as DNS matchPattern)
    headers: list[str] | None = None   # "Name" (present) or "Name: value" (present with that value)


class GrpcAllow(BaseModel):
    """One gRPC service, or one of its methods."""
    model_config = ConfigDict(extra="forbid")

    service: str                       # fully qualified: "package.Service"
    method: str | None = None          # None: every method of the service


class KafkaAllow(BaseModel):
    """One entry of a rule's Kafka allow-list (as Cilium's PortRuleKafka): a
    request is allowed when every field the entry gives matches; a request
    naming several topics needs each of them allowed. ``role`` stands for
    Cilium's sets of APIs (produce, consume) and excludes ``api_key``.
    Checked by datapath/policy_check.py; matched by slowpath/l7allow.py."""
    model_config = ConfigDict(extra="forbid")

    role: Literal["produce", "consume"] | None = None
    api_key: str | int | None = None   # an API's name ("Produce", "fetch") or number
    api_version: int | None = None
    client_id: str | None = None       # exact
    topic: str | None = None           # exact


class L7Spec(BaseModel):
    """A rule's L7 allow-list: what its flows may carry. What no list entry
    allows (and any protocol the lists do not name) is blocked."""
    model_config = ConfigDict(extra="forbid")

    http: list[HttpAllow] | None = None
    grpc: list[GrpcAllow] | None = None
    dns: list[str] | None = None       # query names, or patterns with `*` (as Cilium's matchPattern)
    # Server names (SNI) of TLS ClientHellos, over TCP or in QUIC's Initial
    # packets; names or `*` patterns as `dns` (Cilium's serverNames).
    tls: list[str] | None = None
    kafka: list[KafkaAllow] | None = None

    def protocols(self) -> tuple[str, ...]:
        return tuple(p for p in ("http", "grpc", "dns", "tls", "kafka") if getattr(self, p) is not None)


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ingress: Literal["allow", "deny"] = "deny"
    egress: Literal["allow", "deny"] = "deny"


Action = Literal["allow", "deny", "inspect"]


class _Decision(BaseModel):
    """Fields a rule and an override share: what they decide."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = None
    action: Action
    inspect: InspectSpec | None = None
    app: str | None = None
    log: bool = False

    @field_validator("app")
    @classmethod
    def _known_app(cls, v):
        if v is not None and v not in app_ids():
            raise ValueError(f"unknown application protocol {v!r} (known: {', '.join(app_ids())})")
        return v

    def effective_inspect(self) -> InspectSpec | None:
        """What inspection the rule's flows get: its `inspect:` (or the
        defaults) when it inspects; None when it does not."""
        l7 = getattr(self, "l7", None)
        if self.action == "deny" or (self.action != "inspect" and l7 is None):
            return None
        spec = self.inspect or InspectSpec()
        if l7 is not None and "mode" not in spec.model_fields_set:
            # An allow-list's default is hold: what it does not allow never
            # reaches the server (async lets the first packets through).
            spec = spec.model_copy(update={"mode": "hold"})
        return spec

    def verdict(self, rule_id: int) -> Verdict:
        spec = self.effective_inspect()
        # A rule with an L7 allow-list (allow or inspect) sends its flows to the slow path.
        action = "inspect" if spec is not None else self.action
        bits = spec.bits() if spec is not None else 0
        if spec is not None and spec.mode == "hold" and getattr(self, "l7", None) is not None:
            # Every request is checked before it reaches the server, not
            # only the first (the kernel holds the client's side throughout).
            bits |= INSPECT["HOLD_ALL"]
        return Verdict(POL["POL_" + action.upper()], rule_id, bits,
                       app_ids()[self.app] if self.app else 0, int(self.log))


class Rule(_Decision):
    src: str | list[str] = Field(alias="from")
    dst: str | list[str] = Field(alias="to")
    proto: Literal["tcp", "udp", "icmp", "any"] = "any"
    # Checked by check_policy (every bad port is reported, with its line).
    ports: list[int | str] | None = None
    # L7 allow-list (on allow and inspect rules; checked by check_policy).
    l7: L7Spec | None = None

    def ends(self, side: str) -> list[str]:
        v = self.src if side == "from" else self.dst
        return [v] if isinstance(v, str) else list(v)


class Override(_Decision):
    # Addresses and ports are checked by check_policy.
    src: str
    dst: str
    proto: Literal["tcp", "udp", "icmp"]
    dport: int
    sport: int = 0


class PolicyFile(BaseModel):
    """A policy file as written. ``line(*loc)`` finds where a value is."""
    model_config = ConfigDict(extra="forbid")

    groups: Annotated[dict[str, list[str] | None], BeforeValidator(_none_empty(dict))] = Field(default_factory=dict)
    defaults: Annotated[Defaults, BeforeValidator(_none_empty(dict))] = Field(default_factory=Defaults)
    rules: Annotated[list[Rule], BeforeValidator(_none_empty(list))] = Field(default_factory=list)
    overrides: Annotated[list[Override], BeforeValidator(_none_empty(list))] = Field(default_factory=list)
    # Sources dropped at XDP on the managed interfaces, before any session
    # or rule (datapath/blocklist.py).
    blocklist: Annotated[list[str], BeforeValidator(_none_empty(list))] = Field(default_factory=list)

    _root: Any = PrivateAttr(default=None)
    _dup_keys: list = PrivateAttr(default_factory=list)
    _keys: dict = PrivateAttr(default_factory=dict)    # id(mapping node) -> {key: (key node, value node)}

    def line(self, *loc, key: bool = False) -> int:
        """1-based line of the value at ``loc`` in the file (``key``: of its key;
        0: the model is not from a file)."""
        root = self._root         # private attributes are slow to reach: once per call
        if root is None:
            return 0
        mapping, sequence = _yaml_nodes()
        keys = self._keys
        node = root
        last = len(loc) - 1
        for n, part in enumerate(loc):
            if isinstance(node, mapping):
                # An index per mapping, made on first use: a policy's groups
                # are thousands of keys, and every member's line is asked for.
                index = keys.get(id(node))
                if index is None:
                    index = keys[id(node)] = {k.value: (k, v) for k, v in node.value}   # the last wins
                found = index.get(str(part))
                if found is None:
                    break
                node = found[0] if key and n == last else found[1]
            elif isinstance(node, sequence) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                break
        return node.start_mark.line + 1


_NODES: tuple = ()


def _yaml_nodes() -> tuple[type, type]:
    """(MappingNode, SequenceNode): a model from a file carries its YAML
    nodes; yaml is imported only when one does."""
    global _NODES
    if not _NODES:
        from yaml import MappingNode, SequenceNode
        _NODES = (MappingNode, SequenceNode)
    return _NODES


def field_name(loc: tuple) -> str:
    """A pydantic location as an operator reads it: rule 3: ports[2]."""
    if len(loc) >= 2 and loc[0] in ("rules", "overrides") and isinstance(loc[1], int):
        head = f"{'rule' if loc[0] == 'rules' else 'override'} {loc[1] + 1}"
        rest = "".join(f"[{p + 1}]" if isinstance(p, int) else f".{p}" for p in loc[2:]).lstrip(".")
        return f"{head}: {rest}" if rest else head
    return ".".join(str(p) for p in loc) or "(top level)"


class PolicyError(UsageError):
    """A policy that does not check: every error as (line, message)."""

    def __init__(self, errors: list[tuple[int, str]]):
        self.errors = sorted(set(errors))
        super().__init__("\n".join(f"line {ln}: {m}" for ln, m in self.errors))

