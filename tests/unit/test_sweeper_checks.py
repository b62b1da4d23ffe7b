"""The sweeper's own checks, without a kernel (its sweeps against the loaded
program are in tests/datapath/test_sweeper.py)."""
from __future__ import annotations

import pytest

from datapath.sweeper import Sweeper


def test_sweeper_needs_a_threshold():
    with pytest.raises(ValueError):
        Sweeper({}, 0, 0, 0, None, 1024, None, pressure_type=None, pressure_user_type=None)
