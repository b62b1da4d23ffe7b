"""`microseg lab up|down|demo` (appliance/lab.py, appliance/demo.py)."""
from __future__ import annotations

from appliance.commands.common import require_privileges
from datapath.errors import UsageError


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

    return run_demo(getattr(args, "eve", None))

