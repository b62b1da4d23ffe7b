"""One bring-up of a build: the sequence `microseg up`, `microseg deploy` and
`microseg run` (appliance/daemon.py) share.

  load the pinned state (sessions, counters, verdicts, ring: reused or
  migrated, datapath/state.py) -> open the policy maps -> seed the policy
  generation past the last one applied here (a restart never reuses a
  generation a flow may still carry) -> apply the policy before any attach
  (attaching first would let every flow pass meanwhile) -> attach -> record
  what was applied (appliance/policyfile.py's stored copy, which `policy
  explain`, `deploy` and the next `up` read) -> the XDP blocklist.

What differs between the callers is passed in:
  * ``prepare(build)``: runs with the policy in the maps and nothing attached
    yet: `up` prints the state lines, `deploy` reports its step 3, the
    daemon sets up its slow path there (decoder, its own pinned ring, the
    heartbeat the kernel checks before it hands flows to the slow path).
  * ``rollout(build)``: how the build goes onto the interfaces; default all
    of them at once; `deploy` attaches a canary first, then the others one
    at a time, each behind its gates (a failed gate raises: nothing is
    recorded).
  * ``after(build)``: with the build attached and recorded (reporting).
  * ``blocklist(line)``: where the XDP blocklist's line goes; None leaves
    the blocklist as it is (`deploy` has always done so).
  * ``keep_open``: the daemon keeps its FastPath (it reads the ring and
    writes verdicts); `up` and `deploy` close it once attached: the filters
    hold the programs and maps from then on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from appliance import policyfile as pf


class Policy(NamedTuple):
    """A compiled policy and where it came from (the stored copy names it)."""
    model: Any
    pol: Any
    text: str
    source: str


@dataclass
class Build:
    """What one bring-up made: ``fp`` is None once closed."""
    fp: Any
    netns: str | None
    ifaces: list[str]
    policy: Policy | None
    state_lines: list[str]
    policy_maps: Any = None
    applied: Any = None                 # datapath.policy_maps state (gen, slot) of the policy, or None
    attached: list = field(default_factory=list)
    attach_mode: str | None = None      # "tcx" or "clsact" (the `attach.mode` setting resolved; None: attach's default, auto)


def applied_policy(netns: str | None) -> Policy | None:
    """The policy last applied in ``netns`` (its stored copy), compiled; None
    when none was. A new build starts with it rather than with none."""
    applied = pf.read_applied(netns)
    if applied is None:
        return None
    model, pol = pf.compile_text(applied.text, applied.path)
    return Policy(model, pol, applied.text, applied.meta.get("file", str(applied.path)))


def _attach_all(build: Build) -> list:
    from datapath import attach
    return attach.attach(build.fp, build.ifaces, build.netns, mode=build.attach_mode)


def record(build: Build) -> None:
    """The stored copy of the policy in force, naming the build (the first
    ingress program) and the generation it holds."""
    if build.policy is None:
        return
    model, pol, text, source = build.policy
    builds = [{"prog_id": a.prog_id, "generation": build.applied.gen, "slot": build.applied.slot}
              for a in build.attached if a.direction == "DIR_INGRESS"][:1]
    pf.store_applied(build.netns, text, source, builds, pf.summary(model, pol), pf.rule_names(pol))


def bring_up(config, netns: str | None, ifaces: list[str], policy: Policy | None, *, fresh: bool = False,
             prepare: Callable[[Build], None] | None = None,
             rollout: Callable[[Build], list] | None = None,
             after: Callable[[Build], None] | None = None,
             blocklist: Callable[[str], None] | None = None,
             keep_open: bool = False) -> Build:
    """Load, seed, apply, attach, record (see the module docstring). The
    FastPath is closed when this returns unless ``keep_open``, and always
    when it raises."""
    from appliance.xdp import sync_blocklist
    from datapath import state
    from datapath.policy_maps import PolicyMaps

    from datapath import attach
    mode = attach.resolve_mode(config.attach.mode)     # before the compile and before any change
    fp, lines = state.load(config, netns, pf.state_dir(netns) / state.LAYOUT_FILE, fresh=fresh)
    b = Build(fp, netns, list(ifaces), policy, lines, attach_mode=mode)
    try:
        b.policy_maps = PolicyMaps.for_fastpath(fp)
        b.policy_maps.seed_generation(pf.last_generation(netns))
        b.applied = b.policy_maps.apply(policy.pol) if policy else None
        if prepare is not None:
            prepare(b)
        b.attached = (rollout or _attach_all)(b)
    except BaseException:
        fp.close()
        raise
    if not keep_open:
        fp.close()          # the filters hold the programs and maps from here on
        b.fp = None
    record(b)
    if after is not None:
        after(b)
    if policy is not None and blocklist is not None:
        blocklist(sync_blocklist(list(getattr(policy.pol, "blocklist", [])), b.ifaces, netns,
                                 force_no_bloom=config.compat.bloom == "off"))
    return b
