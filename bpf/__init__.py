"""The fast path's C sources, shipped as package data (no Python here).

``fastpath.c``, ``xdp_blocklist.c`` and ``lib/*.h`` are compiled by BCC at
run time; ``datapath/source.py`` finds this directory in a source checkout
and in an installed wheel alike. Making it a package is what puts the
sources into the wheel (``[tool.setuptools.package-data]`` in pyproject.toml).
"""
