"""The `microseg` commands, one module per command group, and the parser
(parser.py) apart from them; appliance/cli.py is the entry point.

May import appliance and every layer below it (slowpath, datapath, protocols)."""
