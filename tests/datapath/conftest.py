"""Datapath tests run the real program in this process; what it writes to
the run directory (the sweeper's per-build lock files) goes to the test's
own directory, never to the system's /run/microseg."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def own_run_dir(tmp_path, monkeypatch):
    from datapath import attach

    monkeypatch.setattr(attach, "RUN_DIR", tmp_path / "run")


@pytest.fixture
def app_policy(fastpath):
    """The fast path with packets_ct.APP_POLICY applied."""
    from packets_ct import apply_app_policy

    return apply_app_policy(fastpath)
