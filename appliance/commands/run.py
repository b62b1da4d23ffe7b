"""`microseg run`: the live appliance (appliance/daemon.py)."""
from __future__ import annotations

from appliance.commands.common import require_privileges
from datapath.errors import UsageError


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

