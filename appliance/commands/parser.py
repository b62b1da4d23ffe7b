"""The `microseg` command line: every command, its arguments and help.

Apart from the handlers (appliance/commands/<group>.py): a command's
``func`` names its handler as "module:function" in this package, imported
when that command runs, so `microseg --help` and each command's start-up
load only what they use.
"""
from __future__ import annotations

import argparse


def precedence() -> str:
    """The precedence paragraph of datapath/policy_compile.py, read without
    importing it (pydantic stays out of every other command's start-up)."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "datapath" / "policy_compile.py"
    try:
        doc = ast.get_docstring(ast.parse(src.read_text())) or ""
        return doc.split("Precedence\n----------\n")[1].split("\n\nCompilation")[0]
    except (OSError, IndexError, SyntaxError):
        return ""


class _Version(argparse.Action):
    """`microseg --version`: the installed package's version (pyproject.toml's,
    through importlib.metadata), looked up only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib import metadata
        try:
            version = metadata.version("microseg")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed: run `make setup`)"
        print(f"microseg {version}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="microseg", description="eBPF micro-segmentation and DPI for Linux gateways")
    p.add_argument("--version", action=_Version, help="print the version and exit")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("preflight", help="probe the running kernel for the features microseg uses")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="observe:cmd_preflight")

    for name, func, hlp in (("up", "updown:cmd_up", "attach the fast path (replaces a running one in place)"),
                            ("down", "updown:cmd_down", "detach the fast path (only microseg's filters)")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("--iface", nargs="+", required=True, metavar="IF")
        s.add_argument("--netns", help="network namespace of the interfaces (default: this one)")
        if name == "up":
            s.add_argument("--config", metavar="FILE",
                           help="datapath settings (YAML): table sizes, timeouts, actions, budgets")
            s.add_argument("--flow-table-size", type=int, help="sessions the table holds (default 524288)")
            s.add_argument("--policy", metavar="FILE",
                           help="policy to enforce from the first packet (default: the one last applied here)")
            s.add_argument("--fresh-state", action="store_true",
                           help="start with empty tables instead of the pinned sessions and counters")
        else:
            s.add_argument("--keep-state", action="store_true",
                           help="keep the pinned sessions and counters for the next `up`")
        s.set_defaults(func=func)

    s = sub.add_parser("status", help="what is attached where, program ids, session table use, map sizes")
    s.add_argument("--netns")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="observe:cmd_status")

    s = sub.add_parser("stats", help="packets passed and dropped, by hook and reason")
    s.add_argument("--netns", help="network namespace microseg is attached in (default: this one)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="observe:cmd_stats")

    s = sub.add_parser("sessions", help="list sessions (both tables), like conntrack -L")
    s.add_argument("--netns", help="network namespace microseg is attached in (default: this one)")
    s.add_argument("--src", metavar="ADDR[/LEN]", help="initiator address or network")
    s.add_argument("--dst", metavar="ADDR[/LEN]", help="responder address or network")
    s.add_argument("--port", metavar="PORT", help="either endpoint's port (ICMP: the echo id)")
    s.add_argument("--state", metavar="STATE", help="e.g. ESTABLISHED, TIME_WAIT, SYN_SENT, UDP_REPLIED")
    s.add_argument("--proto", metavar="PROTO", help="tcp, udp, icmp, icmpv6 or a number")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="observe:cmd_sessions")

    s = sub.add_parser("sweep", help="delete expired sessions now (one sweeper pass) and print what it did")
    s.add_argument("--netns", help="network namespace microseg is attached in (default: this one)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="observe:cmd_sweep")

    s = sub.add_parser("policy", help="L4 policy: check, explain, apply, diff a policy file",
                       description="L4 micro-segmentation policy (groups, rules, overrides, defaults).\n\n"
                       "Precedence\n" + precedence(), formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = s.add_subparsers(dest="policy_cmd", required=True)
    pc = psub.add_parser("check", help="validate and compile a policy file (no kernel needed)")
    pc.add_argument("file", metavar="FILE")
    pc.add_argument("--json", action="store_true")
    pe = psub.add_parser("explain", help="which rule decides a new flow, and how it was found")
    pe.add_argument("src", metavar="SRC")
    pe.add_argument("dst", metavar="DST")
    pe.add_argument("proto", metavar="PROTO", help="tcp, udp, icmp, icmpv6 or a number")
    pe.add_argument("port", metavar="PORT", help="destination port (ICMP: the echo id)")
    pe.add_argument("--sport", help="source port (default 0: only overrides for any source port match)")
    pe.add_argument("--hook", choices=("ingress", "egress"), default="ingress",
                    help="hook the flow is first seen on (its default applies)")
    src = pe.add_mutually_exclusive_group()
    src.add_argument("--file", metavar="FILE", help="explain from this file, not from the applied policy")
    src.add_argument("--netns", help="the policy applied in this network namespace (default: this one)")
    pe.add_argument("--json", action="store_true")
    pa = psub.add_parser("apply", help="check, compile and load a policy atomically (a bad file changes nothing)")
    pa.add_argument("file", metavar="FILE")
    pa.add_argument("--netns", help="network namespace microseg is attached in (default: this one)")
    pa.add_argument("--allow-empty", action="store_true",
                    help="apply a policy without rules, overrides or defaults (it denies every flow)")
    pd = psub.add_parser("diff", help="groups, defaults, rules and overrides added / removed / changed")
    pd.add_argument("file", metavar="FILE")
    dsrc = pd.add_mutually_exclusive_group()
    dsrc.add_argument("--netns", help="against the policy applied in this namespace (default: this one)")
    dsrc.add_argument("--against", metavar="OLD", help="against another file")
    pd.add_argument("--json", action="store_true")
    s.set_defaults(func="policy:cmd_policy")

    s = sub.add_parser("run", help="the live appliance: attach, inspect, log, serve metrics "
                                   "(SIGHUP reloads policy and rules; SIGTERM leaves the programs attached)")
    s.add_argument("--config", required=True, metavar="FILE", help="run configuration (YAML)")
    s.add_argument("--detach-on-exit", action="store_true",
                   help="detach the programs when stopped (default: they stay, as `microseg down` is what detaches)")
    s.set_defaults(func="run:cmd_run")

    s = sub.add_parser("deploy", help="new build (and policy): preflight, snapshot, verify, canary, gradual "
                                      "rollout with gates, automatic rollback")
    s.add_argument("--iface", nargs="+", required=True, metavar="IF")
    s.add_argument("--netns", help="network namespace of the interfaces (default: this one)")
    s.add_argument("--config", metavar="FILE", help="datapath settings (YAML)")
    s.add_argument("--policy", metavar="FILE", help="policy to deploy with the build (default: the applied one)")
    s.add_argument("--canary", metavar="IF", help="interface that gets the new build first (default: the first)")
    s.add_argument("--soak", type=float, default=10.0, metavar="S", help="seconds each step runs before its gates")
    s.add_argument("--min-packets", type=int, default=1, metavar="N",
                   help="traffic gate: packets the gateway must carry during a soak")
    s.add_argument("--max-drop-ratio", type=float, default=0.01, metavar="R",
                   help="drop gate: dropped / all packets during a soak (default 0.01)")
    s.add_argument("--max-verdict-p99-ms", type=float, metavar="MS",
                   help="latency gate: the slow path's verdict p99 (needs --metrics)")
    s.add_argument("--metrics", metavar="URL", help="the slow path's metrics endpoint, e.g. http://127.0.0.1:9477/")
    s.set_defaults(func="deploy:cmd_deploy")

    s = sub.add_parser("rollback", help="put the build and policy of the last deploy's snapshot back")
    s.add_argument("--netns", help="network namespace (default: this one)")
    s.set_defaults(func="deploy:cmd_rollback")

    s = sub.add_parser("replay", help="a capture through the real fast path and the slow path, EVE out")
    s.add_argument("pcap", metavar="PCAP")
    s.add_argument("--eve", required=True, metavar="OUT", help="EVE JSON lines file to write ('-': stdout)")
    s.add_argument("--policy", metavar="FILE", help="policy (default: inspect every flow)")
    s.add_argument("--rules", metavar="FILE", help="WAF / DLP / domain rules")
    s.add_argument("--config", metavar="FILE", help="datapath settings (failure actions, simulate, ...)")
    s.add_argument("--inspect-budget", type=int, metavar="BYTES",
                   help="payload bytes inspected per side of a flow (default 1 MiB)")
    s.add_argument("--json", action="store_true", help="the summary as JSON")
    s.set_defaults(func="replay:cmd_replay")

    s = sub.add_parser("lab", help="a client / gateway / server lab in network namespaces")
    labsub = s.add_subparsers(dest="lab_cmd", required=True)
    lu = labsub.add_parser("up", help="build a lab (prints its tag)")
    lu.add_argument("--tag", help="lab name (default: random)")
    ld = labsub.add_parser("down", help="remove a lab")
    ld.add_argument("--tag")
    ld.add_argument("--all", action="store_true", help="remove every microseg lab")
    ldemo = labsub.add_parser("demo", help="build a lab, run microseg in it, send clean traffic and attacks, show "
                                           "counters, sessions and alerts, clean up")
    ldemo.add_argument("--eve", metavar="PATH", help="write the demo's EVE log here and keep it (default: a "
                                                     "temporary file, removed at the end)")
    s.set_defaults(func="lab:cmd_lab")
    return p

