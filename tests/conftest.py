"""Shared fixtures.

The fast path is compiled once per test session (a BCC compile costs
seconds; under `make test` once per pytest-xdist worker) and its maps are
emptied before every test that uses it.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, settings

# Property tests judge behaviour, never speed: hypothesis' default 200 ms
# deadline per example and its too-slow health check are wall-clock
# assertions, and fail a correct parser when the machine is busy (a
# mutated-DNS example did so once under load). Tests' own @settings keep
# what they set and take these for the rest.
settings.register_profile("microseg", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("microseg")


def pytest_configure(config):
    config.addinivalue_line("markers", "lab: builds network namespaces and runs real clients")


@pytest.fixture(scope="session")
def fastpath_build():
    if os.geteuid() != 0:
        pytest.fail("datapath tests load BPF programs and need root (CAP_BPF, CAP_NET_ADMIN)")
    from datapath.loader import FastPath

    fp = FastPath()
    yield fp
    fp.close()


@pytest.fixture
def fastpath(fastpath_build):
    """The session's fast path with every map emptied."""
    fastpath_build.reset()
    return fastpath_build


class Microseg:
    """The CLI run as an operator runs it: a subprocess of its own, its run
    directory (MICROSEG_RUN: pinned-state records, applied policies, the
    owner lock) the test's own, so no two tests see each other's state."""

    COMMAND = [sys.executable, "-m", "appliance.cli"]

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.env = dict(os.environ, MICROSEG_RUN=str(run_dir))

    def __call__(self, *args, check=False, env=None, timeout=120):
        r = subprocess.run([*self.COMMAND, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                           env=self.env if env is None else env)
        if check:
            assert r.returncode == 0, r.stdout + r.stderr
        return r


@pytest.fixture
def microseg(tmp_path):
    """Runs `microseg ARGS...` (returns the CompletedProcess; check=True
    asserts exit 0) with the test's own run directory."""
    return Microseg(tmp_path / "run")
