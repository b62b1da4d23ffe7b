"""What every command group shares: the privilege check, the datapath
settings from --config / --flow-table-size, the attached builds."""
from __future__ import annotations

import os

from datapath.errors import MicrosegError, UsageError

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF = 12, 21, 39


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


def datapath_config(args):
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


def open_builds(netns):
    from datapath import sessions

    builds = sessions.open_builds(netns)
    if not builds:
        place = f" in network namespace '{netns}'" if netns else ""
        raise MicrosegError(f"microseg is not attached to any interface{place}")
    return builds


def namespace_text(netns) -> str:
    return f"network namespace {netns}" if netns else "this namespace"

