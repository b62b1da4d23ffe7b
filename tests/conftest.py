"""Shared fixtures.

The fast path is compiled once per test session (a BCC compile costs
seconds) and its maps are emptied before every test that uses it.
"""
from __future__ import annotations

import os

import pytest


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
