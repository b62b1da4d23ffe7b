"""The `microseg` command: the console script ``microseg =
"appliance.cli:main"``, and `python -m appliance.cli`.

The parser is appliance/commands/parser.py; each command group's handlers
are a module of appliance/commands/ (updown, observe, policy, run, deploy,
replay, lab), imported when one of its commands runs.

Every failure an operator can cause (a missing interface, no privileges,
missing kernel headers, a compile or verifier error) ends in one line
``microseg: error: ...`` (plus the verifier's last lines where they help)
and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import importlib
import sys

from appliance.commands.parser import build_parser
from appliance.ownership import settle_namespace
from datapath.errors import MicrosegError


def handler(func: str):
    """The parser's "module:function" -> that function of appliance/commands/."""
    module, _, name = func.partition(":")
    return getattr(importlib.import_module(f"appliance.commands.{module}"), name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settle_namespace(args)
        return handler(args.func)(args)
    except MicrosegError as e:
        if callable(getattr(e, "lines", None)):
            # a file with errors (configfile.FileErrors): one "file:line: message" line each
            for line in e.lines():
                print(line, file=sys.stderr)
        else:
            print(f"microseg: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("microseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
