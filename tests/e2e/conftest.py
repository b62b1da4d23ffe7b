"""Lab fixtures: namespaces built for one test and removed after it, also
when it fails."""
from __future__ import annotations

import contextlib

import pytest


@pytest.fixture
def lab():
    """A fresh lab (client, gateway, server namespaces), torn down after the test."""
    from appliance.lab import Lab

    with Lab() as built:
        yield built


@pytest.fixture
def attached(lab, microseg):
    """`with attached(*up_args) as up:` `microseg up` holds the lab's gateway
    interfaces inside the block (`up` is its CompletedProcess, exit 0
    asserted); `microseg down` runs on the way out, also on failure."""
    from appliance.lab import GW_IFACES

    @contextlib.contextmanager
    def attach(*up_args):
        try:
            yield microseg("up", "--netns", lab.gateway, "--iface", *GW_IFACES, *up_args, check=True)
        finally:
            microseg("down", "--netns", lab.gateway, "--iface", *GW_IFACES)

    return attach
