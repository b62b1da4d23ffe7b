"""`microseg deploy` and `microseg rollback` (the work: appliance/deploy.py)."""
from __future__ import annotations

from appliance.commands.common import datapath_config, require_privileges
from appliance.ownership import own
from datapath.errors import UsageError


def cmd_deploy(args) -> int:
    require_privileges("deploying the fast path")
    from appliance import deploy
    from appliance import policyfile as pf
    from datapath import attach

    cfg = datapath_config(args)
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

