"""`microseg up` and `microseg down`: attach the fast path (one bring-up,
appliance/bringup.py) and detach it."""
from __future__ import annotations

from appliance.commands.common import datapath_config, require_privileges
from appliance.ownership import own


def cmd_up(args) -> int:
    require_privileges("attaching the fast path")
    from appliance import policyfile as pf
    from appliance.bringup import Policy, applied_policy, bring_up
    from datapath import attach

    # Check the input first: a typo must fail before a compile and before any change.
    cfg = datapath_config(args)
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
            print(f"attached {a.name} on {a.iface} {a.direction.removeprefix('DIR_').lower()} (prog id {a.prog_id}"
                  + (", tcx link)" if a.mode == "tcx" else ")"))
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
        print(f"removed {n} microseg filter(s) or tcx link(s)" + (f" and {xdp} XDP blocklist(s)" if xdp else "")
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
        pf.remove_apply_lock(args.netns)
    return 0

