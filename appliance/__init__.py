"""The appliance: what wires the layers below together. The `microseg`
command (cli.py, commands/), the one bring-up of a build (bringup.py) that
`up`, `deploy` and the daemon share, the daemon (daemon.py: `microseg run`)
and replay (replay.py), deploy and rollback, policy files and their stored
copy, run configuration, ownership of a namespace, the lab and demo.

Top layer: may import slowpath, datapath and protocols; nothing imports it.
"""
